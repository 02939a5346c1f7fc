//! [`MemJournal`], the in-memory twin of the redb journal, so tests can run
//! the whole control plane without files.
//!
//! # State
//! - [`MemDisk`]: the only durable state, shared with whoever holds a clone
//!   (a test keeps one to "restart" on). It holds write-ahead-log frames in
//!   exactly the `journal.wal` format (`wal.rs`), one per append that
//!   changed something, and is never checkpointed.
//! - The live tables (`events`, `requests`, `snapshots` as maps), the head
//!   and the `World` folded to it, behind one mutex: an append is one
//!   critical section (a batch of one).
//!
//! # Semantics kept identical
//! Records are sealed the same way (`EventRecord::seal`, time from the
//! [`Clock`]), so with the same clock and the same appends a `MemJournal`
//! and a [`super::RedbJournal`] hold byte-identical records. Dedup keys are
//! [`dedup_key`]. Snapshots are written by the same rule (when
//! `snapshot_every` events were folded since the last, the state before the
//! next append, pruned to `snapshots_kept`), in the same row format, and
//! read, restored and checked by the same code (`snapshots.rs`,
//! `verify.rs`).
//!
//! # Recovery
//! [`MemJournal::open`] reads the disk's intact frames exactly as the redb
//! journal reads its log: frames stop at the first torn or damaged one
//! ([`super::wal::frames`]), a frame whose records do not link to the head
//! ends the log, and the bytes from there on are cut off (the redb journal
//! restarts its log at offset 0 after replay; either way the next frame
//! follows the last intact one). Snapshots live in memory only: a reopen
//! folds from seq 1 (a snapshot is a cache), then writes one if
//! `snapshot_every` records were folded, as the redb journal does.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_schema::record::{ChainBreak, GENESIS_HASH, check_link};
use cairn_schema::{EventRecord, Hash, World};
use futures::future::BoxFuture;

use super::snapshots::{self, encode_snapshot, restore};
use super::verify::verify_rows;
use super::wal::{self, Frame};
use super::{
    AppendRequest, Appended, Error, FullReplay, Journal, Limits, Recovery, SnapshotInfo, dedup_key,
};
use crate::clock::Clock;

/// What errors and logs call the twin's "file".
fn path() -> &'static Path {
    Path::new("<memory journal>")
}

/// The twin's durable bytes: write-ahead-log frames. Cheap to clone; clones
/// share the bytes, so a test can drop a journal and open another on them.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    log: Arc<Mutex<Vec<u8>>>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// A copy of the bytes on the disk.
    pub fn bytes(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }

    /// Replaces the bytes on the disk (to damage them in a test).
    pub fn set_bytes(&self, bytes: Vec<u8>) {
        *self.log.lock().unwrap() = bytes;
    }

    fn write(&self, bytes: &[u8]) {
        self.log.lock().unwrap().extend_from_slice(bytes);
    }

    fn truncate(&self, len: usize) {
        self.log.lock().unwrap().truncate(len);
    }
}

/// The in-memory journal. See the module docs.
pub struct MemJournal {
    disk: MemDisk,
    limits: Limits,
    clock: Arc<dyn Clock>,
    recovery: Recovery,
    state: Mutex<State>,
}

struct State {
    events: BTreeMap<u64, Vec<u8>>,
    requests: HashMap<String, Vec<u8>>,
    snapshots: BTreeMap<u64, Vec<u8>>,
    head: (u64, Hash),
    world: World,
    /// Seq of the newest snapshot (0: none).
    snapshot_seq: u64,
    /// `close` was called: appends fail with [`Error::Closed`].
    closed: bool,
    /// A simulated crash (a torn frame): appends fail until a reopen.
    crashed: bool,
}

/// One append, worked out but not yet applied.
struct Prepared {
    result: Appended,
    /// The frame to log (`None`: a duplicate, nothing to make durable).
    frame: Option<Vec<u8>>,
    records: Vec<(EventRecord, Vec<u8>)>,
    reply: Option<(String, Vec<u8>)>,
}

impl MemJournal {
    /// A fresh journal on an empty disk.
    pub fn new(limits: Limits, clock: Arc<dyn Clock>) -> MemJournal {
        MemJournal::open(&MemDisk::new(), limits, clock).expect("an empty disk always opens")
    }

    /// Opens the journal held by `disk`: replays its intact frames (see the
    /// module docs) and cuts off what follows them.
    pub fn open(
        disk: &MemDisk,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<MemJournal, Error> {
        let started = Instant::now();
        let limits = limits.at_least_one();
        let log = disk.bytes();
        let mut events = BTreeMap::new();
        let mut requests = HashMap::new();
        let (mut seq, mut hash) = (0, GENESIS_HASH);
        let (mut intact, mut wal_frames, mut wal_records) = (0, 0, 0);
        'frames: for frame in wal::frames(&log) {
            let frame_bytes = frame.encode().len();
            if frame.after < seq {
                intact += frame_bytes;
                continue;
            }
            if frame.after > seq {
                tracing::error!(
                    head = seq,
                    frame_after = frame.after,
                    "memory journal: the log continues a later head: ignored from here"
                );
                break;
            }
            let (mut s, mut h) = (seq, hash);
            let mut batch = Vec::with_capacity(frame.records.len());
            for bytes in &frame.records {
                let link = EventRecord::decode(bytes)
                    .map_err(|e| ChainBreak {
                        seq: s + 1,
                        reason: format!("does not decode: {e}"),
                    })
                    .and_then(|record| check_link(s, &h, &record).map(|()| record));
                match link {
                    Ok(record) => {
                        (s, h) = (record.seq, record.hash);
                        batch.push((record.seq, bytes.to_vec()));
                    }
                    Err(brk) => {
                        tracing::error!(
                            seq = brk.seq,
                            reason = %brk.reason,
                            "memory journal: log record refused: the log ends before it"
                        );
                        break 'frames;
                    }
                }
            }
            (seq, hash) = (s, h);
            wal_records += batch.len() as u64;
            events.extend(batch);
            for (key, reply) in &frame.requests {
                requests.insert((*key).to_owned(), reply.to_vec());
            }
            wal_frames += 1;
            intact += frame_bytes;
        }
        disk.truncate(intact);
        let restored = restore(&events, &BTreeMap::new(), path(), seq)?;
        let mut snapshots = BTreeMap::new();
        let mut snapshot_seq = 0;
        if seq >= limits.snapshot_every {
            snapshots.insert(seq, encode_snapshot(&restored.world, &hash));
            snapshot_seq = seq;
        }
        let recovery = Recovery {
            snapshot_seq: 0,
            folded: restored.folded,
            skipped_snapshots: 0,
            wal_frames,
            wal_records,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        Ok(MemJournal {
            disk: disk.clone(),
            limits,
            clock,
            recovery,
            state: Mutex::new(State {
                events,
                requests,
                snapshots,
                head: (seq, hash),
                world: restored.world,
                snapshot_seq,
                closed: false,
                crashed: false,
            }),
        })
    }

    /// The disk this journal writes to.
    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }

    /// Works out `request` against `state` without changing anything.
    fn prepare(&self, state: &State, request: &AppendRequest) -> Prepared {
        let c = &request.causation;
        let mut reply = None;
        if c.dedup {
            let key = dedup_key(&c.tenant, &c.id);
            if let Some(first) = state.requests.get(&key) {
                return Prepared {
                    result: Appended::Duplicate(first.clone()),
                    frame: None,
                    records: Vec::new(),
                    reply: None,
                };
            }
            reply = Some((key, request.reply.clone()));
        }
        let time_ms = self.clock.now_ms();
        let (mut seq, mut hash) = state.head;
        let mut records = Vec::with_capacity(request.events.len());
        for event in &request.events {
            seq += 1;
            let record = EventRecord::seal(seq, time_ms, &c.tenant, &c.id, &c.user, event, hash);
            hash = record.hash;
            let bytes = record.encode();
            records.push((record, bytes));
        }
        let frame = (!records.is_empty() || reply.is_some()).then(|| {
            Frame {
                after: state.head.0,
                records: records.iter().map(|(_, b)| b.as_slice()).collect(),
                requests: reply
                    .iter()
                    .map(|(k, r): &(String, Vec<u8>)| (k.as_str(), r.as_slice()))
                    .collect(),
            }
            .encode()
        });
        Prepared {
            result: Appended::Records(records.iter().map(|(r, _)| r.clone()).collect()),
            frame,
            records,
            reply,
        }
    }

    /// Applies a prepared append whose frame is on the disk: the snapshot
    /// that is due (of the state before it), its rows, its fold.
    fn apply(&self, state: &mut State, request: &AppendRequest, prepared: Prepared) -> Appended {
        if state.world.seq > state.snapshot_seq
            && state.world.seq - state.snapshot_seq >= self.limits.snapshot_every
        {
            let row = encode_snapshot(&state.world, &state.head.1);
            state.snapshots.insert(state.world.seq, row);
            while state.snapshots.len() > self.limits.snapshots_kept {
                state.snapshots.pop_first();
            }
            state.snapshot_seq = state.world.seq;
        }
        if let Some((key, reply)) = prepared.reply {
            state.requests.insert(key, reply);
        }
        for ((record, bytes), event) in prepared.records.into_iter().zip(&request.events) {
            state.world.apply(&record, event);
            state.head = (record.seq, record.hash);
            state.events.insert(record.seq, bytes);
        }
        prepared.result
    }

    /// The crash of [`super::Tear::append_torn`].
    pub(super) fn tear(&self, request: AppendRequest, keep_bytes: usize) -> Error {
        let mut state = self.state.lock().unwrap();
        if state.closed || state.crashed {
            return Error::Closed;
        }
        let prepared = self.prepare(&state, &request);
        if let Some(frame) = &prepared.frame {
            self.disk.write(&frame[..keep_bytes.min(frame.len())]);
        }
        state.crashed = true;
        Error::Storage {
            path: path().to_owned(),
            message: format!(
                "simulated crash while writing the log frame ({keep_bytes} bytes written)"
            ),
        }
    }
}

impl Journal for MemJournal {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<Appended, Error>> {
        let result = (|| {
            let mut state = self.state.lock().unwrap();
            if state.closed || state.crashed {
                return Err(Error::Closed);
            }
            let prepared = self.prepare(&state, &request);
            if let Some(frame) = &prepared.frame {
                self.disk.write(frame);
            }
            Ok(self.apply(&mut state, &request, prepared))
        })();
        Box::pin(std::future::ready(result))
    }

    fn close(&self) {
        // Every frame is on the disk already; there is nothing to checkpoint.
        self.state.lock().unwrap().closed = true;
    }

    fn recovery(&self) -> Recovery {
        self.recovery
    }

    fn world(&self) -> Result<World, Error> {
        Ok(self.state.lock().unwrap().world.clone())
    }

    fn fold_to(&self, seq: u64) -> Result<World, Error> {
        let state = self.state.lock().unwrap();
        let to = seq.min(state.head.0);
        Ok(restore(&state.events, &state.snapshots, path(), to)?.world)
    }

    fn replay_full(&self) -> Result<FullReplay, Error> {
        let state = self.state.lock().unwrap();
        snapshots::replay_full(&state.events, &state.snapshots, state.head.0)
    }

    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let state = self.state.lock().unwrap();
        Ok(state
            .snapshots
            .iter()
            .map(|(seq, row)| SnapshotInfo {
                seq: *seq,
                bytes: row.len() as u64,
            })
            .collect())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, Error> {
        let state = self.state.lock().unwrap();
        state
            .events
            .range(from.max(1)..)
            .take(limit)
            .map(|(seq, bytes)| {
                EventRecord::decode(bytes).map_err(|e| Error::Corrupted {
                    seq: *seq,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    fn lookup_request(&self, tenant: &str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let state = self.state.lock().unwrap();
        Ok(state.requests.get(&dedup_key(tenant, id)).cloned())
    }

    fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error> {
        let state = self.state.lock().unwrap();
        Ok(verify_rows(&state.events)?.map(|(seq, _)| seq))
    }

    fn len(&self) -> Result<u64, Error> {
        Ok(self.state.lock().unwrap().events.len() as u64)
    }
}
