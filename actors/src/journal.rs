//! The journal: the append-only, hash-chained event log in redb, and
//! periodic snapshots of the state it folds to.
//!
//! # Group commit
//! One writer thread owns every write transaction. Callers hand it an
//! [`AppendRequest`] over a bounded channel; the thread drains whatever is
//! queued (up to [`Limits::max_batch`]), writes all of it in one redb
//! transaction, makes it durable once (one append and one `fdatasync` of the
//! write-ahead log, see `journal/wal.rs`), commits it, then answers every caller. A
//! caller is answered only after its events are durable. Every
//! [`Limits::wal_bytes`] of log, a durable redb commit (a checkpoint) lets the
//! log start again; [`Journal::close`] checkpoints too.
//!
//! # Snapshots
//! The writer thread also keeps the [`World`] folded up to the head. It folds
//! a batch in after answering its callers (holding the `World`'s lock, so
//! [`Journal::world`] never misses an answered append): a caller waits for
//! the fsync, not for the fold. Once [`Limits::snapshot_every`] events have
//! been folded since the last snapshot, the next batch's transaction also
//! writes the `World` as it stood before that batch into `snapshots`, and
//! drops all but the newest [`Limits::snapshots_kept`]. [`Journal::open`]
//! loads the newest snapshot that decodes and folds only the records after
//! it, so start-up time is bounded by the snapshot interval (and the size of
//! the state), not by the length of the history.
//!
//! A snapshot is a cache. One that does not decode (written by another
//! `World` layout, or damaged) is skipped with a warning, for an older one or
//! a full replay; start-up never fails because of a snapshot.
//! [`Journal::replay_full`] never reads one to build the state, and checks the
//! newest against the full fold at its seq (`events verify` reports a
//! mismatch like a chain break). This module never looks inside `World`: it
//! folds with [`World::apply`] and stores postcard bytes.
//!
//! # Tables
//! - `events`: seq → postcard [`EventRecord`].
//! - `requests`: request id → the reply first given to it (dedup, written in
//!   the same transaction as the events, so a retry after a restart still
//!   gets the first answer).
//! - `snapshots`: seq → the `World` after records `1..=seq`, as
//!   `"CAIRNSNP"` ‖ format (u16 LE) ‖ postcard header (the `World` layout
//!   tag, seq, hash of record `seq`, blake3 of the body) ‖ body =
//!   postcard(`World`).
//!
//! - `journal.wal` (a file beside): the batches committed since the last
//!   checkpoint (`journal/wal.rs`).
//!
//! # Invariants
//! - Seqs are gap-free from 1, and each record's `prev_hash` is its
//!   predecessor's `hash`.
//! - Nothing ever updates or deletes a row of `events`.
//! - A snapshot at seq S is written by a transaction that commits records
//!   after S (or by `open`, at the head), so it is never ahead of the head,
//!   and it equals the fold of records `1..=S`.
//! - After any commit, at most `snapshots_kept` snapshots exist.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use cairn_schema::record::{ChainBreak, GENESIS_HASH, check_link};
use cairn_schema::{Event, EventRecord, Hash, World};
use redb::{
    Database, DatabaseError, Key, ReadOnlyDatabase, ReadOnlyTable, ReadTransaction,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use self::wal::{Frame, Wal};
use crate::telemetry::{fields, spans};

mod wal;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");

/// The first bytes of every snapshot row.
const SNAPSHOT_MAGIC: [u8; 8] = *b"CAIRNSNP";
/// The layout of a snapshot row around its body (magic, format, header).
const SNAPSHOT_FORMAT: u16 = 1;
/// Which `World` layout a snapshot body has: the version of the code that
/// wrote it. A snapshot written by another version is not trusted (it is
/// skipped, not an error); within one version, a body that does not decode
/// exactly (every byte consumed) is skipped too.
const WORLD_LAYOUT: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal {path}: {message}")]
    Storage { path: PathBuf, message: String },
    #[error("journal record {seq} is corrupted: {message}")]
    Corrupted { seq: u64, message: String },
    #[error("journal is shut down")]
    Closed,
}

impl Error {
    fn storage(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::Storage {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Journal bounds, validated in one place ([`crate::Limits::sanitize`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Appends queued for the writer before callers wait.
    pub queue: usize,
    /// Appends written by one transaction at most.
    pub max_batch: usize,
    /// Events appended between two snapshots of the folded state. Start-up
    /// folds about this many records after loading the newest snapshot.
    pub snapshot_every: u64,
    /// Snapshots kept (the newest); the transaction that writes a new one
    /// deletes the oldest beyond this.
    pub snapshots_kept: usize,
    /// Write-ahead log bytes between two checkpoints (durable redb
    /// commits). Bounds the log, and what start-up replays from it.
    pub wal_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            queue: 4096,
            max_batch: 1024,
            snapshot_every: 10_000,
            snapshots_kept: 2,
            wal_bytes: 16 << 20,
        }
    }
}

/// The key of a request id in the `requests` table: scoped by tenant, so
/// one tenant's id never finds another's reply. (A tenant label has no
/// `/`; the reserved tenants start with `_`.)
pub fn dedup_key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// Who and what caused an append.
#[derive(Debug, Clone, Default)]
pub struct Causation {
    pub tenant: String,
    pub user: String,
    /// Request id (or saga id). When `dedup` is set, the reply is stored
    /// under this id in the same transaction.
    pub id: String,
    pub dedup: bool,
}

/// One caller's events, committed atomically.
pub struct AppendRequest {
    pub causation: Causation,
    pub events: Vec<Event>,
    /// Stored under the request id when `causation.dedup` is set.
    pub reply: Vec<u8>,
}

/// What an append produced.
#[derive(Debug)]
pub enum Appended {
    Records(Vec<EventRecord>),
    /// The request id was seen before; here is the first reply.
    Duplicate(Vec<u8>),
}

/// One stored snapshot, as [`Journal::snapshots`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The state after records `1..=seq`.
    pub seq: u64,
    pub bytes: u64,
}

/// How [`Journal::open`] rebuilt the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Seq of the snapshot it started from (0: none, a full replay).
    pub snapshot_seq: u64,
    /// Records folded after that snapshot.
    pub folded: u64,
    /// Newer snapshots skipped because they did not decode.
    pub skipped_snapshots: u32,
    /// Write-ahead log frames applied (batches committed after the last
    /// checkpoint, before a crash), and the records they held.
    pub wal_frames: u64,
    pub wal_records: u64,
    pub elapsed_ms: u64,
}

/// How the newest snapshot compares with a full replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotCheck {
    /// There is no snapshot yet.
    Absent,
    /// It equals the fold of records `1..=seq`.
    Matches { seq: u64 },
    /// Written by another version of Cairn (another `World` layout):
    /// start-up skips it. Not a fault.
    Foreign { seq: u64, reason: String },
    /// Damaged, or not the fold of the records it claims to follow.
    Bad(ChainBreak),
}

/// The result of [`Journal::replay_full`].
#[derive(Debug, Clone)]
pub struct FullReplay {
    /// The fold of every record, from seq 1.
    pub world: World,
    pub snapshot: SnapshotCheck,
}

type Pending = (AppendRequest, oneshot::Sender<Result<Appended, Error>>);

/// The writer's `World`, folded up to the head.
type HeadWorld = Arc<Mutex<World>>;

/// A handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    world: HeadWorld,
    recovery: Recovery,
    tx: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.lock().unwrap().take();
        if let Some(writer) = self.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }
}

/// Applies the frames of the write-ahead log `log` that continue the chain
/// in `db`, in one durable commit; returns (frames, records) applied.
fn replay_wal(db: &Database, path: &Path, log: &[u8]) -> Result<(u64, u64), Error> {
    let storage = |e: &dyn std::fmt::Display| Error::storage(path, e);
    let (mut seq, mut hash) = {
        let txn = db.begin_read().map_err(|e| storage(&e))?;
        read_head(&txn, path)?
    };
    let mut apply = Vec::new();
    'frames: for frame in wal::frames(log) {
        if frame.after < seq {
            // Durable already: a frame of an earlier cycle (at or below the
            // last checkpoint), or one written before a durable commit.
            continue;
        }
        if frame.after > seq {
            tracing::error!(
                path = %path.display(),
                head = seq,
                frame_after = frame.after,
                "the write-ahead log continues a later head than the journal's: ignored from here"
            );
            break;
        }
        let mut records = Vec::with_capacity(frame.records.len());
        for bytes in &frame.records {
            let link = EventRecord::decode(bytes)
                .map_err(|e| ChainBreak {
                    seq: seq + 1,
                    reason: format!("does not decode: {e}"),
                })
                .and_then(|record| check_link(seq, &hash, &record).map(|()| record));
            match link {
                Ok(record) => {
                    (seq, hash) = (record.seq, record.hash);
                    records.push((record.seq, *bytes));
                }
                Err(brk) => {
                    tracing::error!(
                        path = %path.display(),
                        seq = brk.seq,
                        reason = %brk.reason,
                        "write-ahead log record refused: the log ends before it"
                    );
                    break 'frames;
                }
            }
        }
        apply.push((records, frame.requests));
    }
    if apply.is_empty() {
        return Ok((0, 0));
    }
    let txn = db.begin_write().map_err(|e| storage(&e))?;
    let mut n_records = 0;
    {
        let mut events = txn.open_table(EVENTS).map_err(|e| storage(&e))?;
        let mut requests = txn.open_table(REQUESTS).map_err(|e| storage(&e))?;
        for (records, replies) in &apply {
            for (seq, bytes) in records {
                events.insert(*seq, *bytes).map_err(|e| storage(&e))?;
                n_records += 1;
            }
            for (id, reply) in replies {
                requests.insert(*id, *reply).map_err(|e| storage(&e))?;
            }
        }
    }
    txn.commit().map_err(|e| storage(&e))?;
    tracing::warn!(
        path = %path.display(),
        frames = apply.len(),
        records = n_records,
        head = seq,
        "journal: batches committed after the last checkpoint replayed from the write-ahead log"
    );
    Ok((apply.len() as u64, n_records))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (or creates) the journal, rebuilds the state from the newest
    /// usable snapshot plus the records after it, and starts the writer.
    pub fn open(path: &Path, limits: Limits) -> Result<Journal, Error> {
        let started = Instant::now();
        let storage = |e: &dyn std::fmt::Display| Error::storage(path, e);
        let db = Database::create(path).map_err(|e| storage(&e))?;
        let txn = db.begin_write().map_err(|e| storage(&e))?;
        txn.open_table(EVENTS).map_err(|e| storage(&e))?;
        txn.open_table(REQUESTS).map_err(|e| storage(&e))?;
        txn.open_table(SNAPSHOTS).map_err(|e| storage(&e))?;
        txn.commit().map_err(|e| storage(&e))?;
        let (wal, log) = Wal::open(&path.with_extension("wal"), limits.wal_bytes.max(1))
            .map_err(|e| storage(&e))?;
        let (wal_frames, wal_records) = replay_wal(&db, path, &log)?;
        drop(log);
        let db = Arc::new(db);
        let (head, restored) = {
            let txn = db.begin_read().map_err(|e| storage(&e))?;
            let head = read_head(&txn, path)?;
            (head, restore(&txn, path, head.0)?)
        };
        let limits = Limits {
            queue: limits.queue.max(1),
            max_batch: limits.max_batch.max(1),
            snapshot_every: limits.snapshot_every.max(1),
            snapshots_kept: limits.snapshots_kept.max(1),
            wal_bytes: limits.wal_bytes.max(1),
        };
        let mut snapshot_seq = restored.snapshot_seq;
        if head.0 - snapshot_seq >= limits.snapshot_every {
            // A long tail (a first start after an upgrade, or skipped
            // snapshots): snapshot now, so the next start is quick.
            let txn = db.begin_write().map_err(|e| storage(&e))?;
            {
                let mut table = txn.open_table(SNAPSHOTS).map_err(|e| storage(&e))?;
                put_snapshot(&mut table, &restored.world, &head.1, limits.snapshots_kept)
                    .map_err(|e| storage(&e))?;
            }
            txn.commit().map_err(|e| storage(&e))?;
            snapshot_seq = head.0;
        }
        let recovery = Recovery {
            snapshot_seq: restored.snapshot_seq,
            folded: restored.folded,
            skipped_snapshots: restored.skipped,
            wal_frames,
            wal_records,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            path = %path.display(),
            head = head.0,
            snapshot_seq = recovery.snapshot_seq,
            folded = recovery.folded,
            skipped_snapshots = recovery.skipped_snapshots,
            wal_frames = recovery.wal_frames,
            elapsed_ms = recovery.elapsed_ms,
            "journal open"
        );
        let world: HeadWorld = Arc::new(Mutex::new(restored.world));
        let (tx, rx) = mpsc::channel(limits.queue);
        let writer = Writer {
            db: db.clone(),
            path: path.to_owned(),
            limits,
            head,
            world: world.clone(),
            snapshot_seq,
            wal,
            poisoned: None,
        };
        let writer = std::thread::Builder::new()
            .name("cairn-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| storage(&e))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
                world,
                recovery,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Appends events durably. Resolves after the commit.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, Error> {
        let (done_tx, done_rx) = oneshot::channel();
        let tx = self.inner.tx.lock().unwrap().clone().ok_or(Error::Closed)?;
        // A full queue makes this caller wait: that is the back-pressure.
        tx.send((request, done_tx))
            .await
            .map_err(|_| Error::Closed)?;
        done_rx.await.map_err(|_| Error::Closed)?
    }

    /// Stops taking appends, waits for those queued, checkpoints (so the next
    /// start replays no log) and stops the writer. Later appends fail with
    /// [`Error::Closed`]; reads keep working. Idempotent.
    pub fn close(&self) {
        self.inner.tx.lock().unwrap().take();
        if let Some(writer) = self.inner.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }

    /// How many handles share this journal (this one included). The redb
    /// file stays locked until the last one is dropped, so a restart in the
    /// same process waits for this to reach 1 (see `Cluster::shutdown`).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// How [`Journal::open`] rebuilt the state.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// The state folded up to the head (every committed record).
    pub fn world(&self) -> Result<World, Error> {
        Ok(self.inner.world.lock().unwrap().clone())
    }

    /// The state after records `1..=seq` (or up to the head, if `seq` is
    /// beyond it; the result's `seq` says where it stopped): the newest usable
    /// snapshot at or below `seq`, then the records after it.
    pub fn fold_to(&self, seq: u64) -> Result<World, Error> {
        let txn = self.read_txn()?;
        let head = read_head(&txn, &self.inner.path)?.0;
        Ok(restore(&txn, &self.inner.path, seq.min(head))?.world)
    }

    /// Folds every record from seq 1, ignoring snapshots, and checks the
    /// newest snapshot against the fold at its seq. One read transaction, so
    /// both describe the same instant.
    pub fn replay_full(&self) -> Result<FullReplay, Error> {
        let path = &self.inner.path;
        let storage = |e: &dyn std::fmt::Display| Error::storage(path, e);
        let txn = self.read_txn()?;
        let head = read_head(&txn, path)?.0;
        let events = txn.open_table(EVENTS).map_err(|e| storage(&e))?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| storage(&e))?;
        let mut world = World::default();
        let mut hash = GENESIS_HASH;
        let newest = snapshots
            .last()
            .map_err(|e| storage(&e))?
            .map(|(k, v)| (k.value(), v.value().to_vec()));
        let snapshot = match newest {
            None => SnapshotCheck::Absent,
            Some((seq, bytes)) => {
                hash = fold_range(&events, path, &mut world, hash, 1, seq.min(head))?;
                let bad = |reason: String| SnapshotCheck::Bad(ChainBreak { seq, reason });
                if seq > head {
                    bad(format!("snapshot at seq {seq} is ahead of the head {head}"))
                } else {
                    match decode_snapshot(seq, &bytes, &events) {
                        Ok((snap, _)) if snap == world => SnapshotCheck::Matches { seq },
                        Ok(_) => bad(format!(
                            "snapshot at seq {seq} differs from the fold of records 1..={seq}"
                        )),
                        Err(SnapshotFault::Foreign(reason)) => {
                            SnapshotCheck::Foreign { seq, reason }
                        }
                        Err(SnapshotFault::Damaged(reason)) => bad(reason),
                    }
                }
            }
        };
        let from = world.seq + 1;
        fold_range(&events, path, &mut world, hash, from, head)?;
        Ok(FullReplay { world, snapshot })
    }

    /// The stored snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let path = &self.inner.path;
        let table = self.table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| Error::storage(path, e))? {
            let (seq, bytes) = row.map_err(|e| Error::storage(path, e))?;
            out.push(SnapshotInfo {
                seq: seq.value(),
                bytes: bytes.value().len() as u64,
            });
        }
        Ok(out)
    }

    fn read_txn(&self) -> Result<ReadTransaction, Error> {
        self.inner
            .db
            .begin_read()
            .map_err(|e| Error::storage(&self.inner.path, e))
    }

    /// Opens `table` in a fresh read transaction.
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<ReadOnlyTable<K, V>, Error> {
        self.read_txn()?
            .open_table(table)
            .map_err(|e| Error::storage(&self.inner.path, e))
    }
    /// Records with seq in `from..` (at most `limit`), in order.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, Error> {
        let path = &self.inner.path;
        let table = self.table(EVENTS)?;
        let mut out = Vec::new();
        for row in table
            .range(from.max(1)..)
            .map_err(|e| Error::storage(path, e))?
            .take(limit)
        {
            let (seq, bytes) = row.map_err(|e| Error::storage(path, e))?;
            let seq = seq.value();
            let record = EventRecord::decode(bytes.value()).map_err(|e| Error::Corrupted {
                seq,
                message: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Visits every record in order; stops at the first error.
    pub fn scan(
        &self,
        mut visit: impl FnMut(EventRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        const PAGE: usize = 4096;
        let mut from = 1;
        loop {
            let page = self.read(from, PAGE)?;
            let n = page.len();
            for record in page {
                from = record.seq + 1;
                visit(record)?;
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// The reply stored for a tenant's request id, if any. Request ids are
    /// scoped by tenant: one tenant reusing another's id finds nothing.
    pub fn lookup_request(&self, tenant: &str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = &self.inner.path;
        let table = self.table(REQUESTS)?;
        Ok(table
            .get(dedup_key(tenant, id).as_str())
            .map_err(|e| Error::storage(path, e))?
            .map(|v| v.value().to_vec()))
    }

    /// Checks the whole hash chain. Returns the number of records, or the
    /// first break.
    pub fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error> {
        Ok(verify_table(&self.inner.path, &self.table(EVENTS)?)?.map(|(seq, _)| seq))
    }

    pub fn len(&self) -> Result<u64, Error> {
        let path = &self.inner.path;
        let table = self.table(EVENTS)?;
        table.len().map_err(|e| Error::storage(path, e))
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }
}

/// Checks every record of `table`: it decodes, is stored under its own seq,
/// and [`check_link`] holds (gap-free, linked, hash matches the contents,
/// the event decodes). Returns the number of records and the last one's
/// hash, or the first break.
fn verify_table(
    path: &Path,
    table: &ReadOnlyTable<u64, &[u8]>,
) -> Result<Result<(u64, Hash), ChainBreak>, Error> {
    let (mut seq, mut hash) = (0u64, GENESIS_HASH);
    for row in table.iter().map_err(|e| Error::storage(path, e))? {
        let (key, bytes) = row.map_err(|e| Error::storage(path, e))?;
        let broken = |reason: String| {
            Ok(Err(ChainBreak {
                seq: key.value(),
                reason,
            }))
        };
        let record = match EventRecord::decode(bytes.value()) {
            Ok(r) => r,
            Err(e) => return broken(format!("record does not decode: {e}")),
        };
        if record.seq != key.value() {
            return broken(format!(
                "stored under key {} but says seq {}",
                key.value(),
                record.seq
            ));
        }
        if let Err(b) = check_link(seq, &hash, &record) {
            return Ok(Err(b));
        }
        (seq, hash) = (record.seq, record.hash);
    }
    Ok(Ok((seq, hash)))
}

/// Checks a journal file offline, for auditors and for a data dir whose
/// `cairn up` will not start: the same checks as [`Journal::verify_chain`],
/// over the records in redb and then those only in the write-ahead log (what
/// the next start would replay from it), and no file is written. A journal
/// left open by a crash needs redb's repair before it can be read; that
/// repair runs on a private copy.
pub fn verify_file(path: &Path) -> Result<Result<u64, ChainBreak>, Error> {
    let db = match ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(DatabaseError::RepairAborted) => return verify_repaired_copy(path),
        Err(DatabaseError::DatabaseAlreadyOpen) => {
            return Err(Error::storage(
                path,
                "in use by a running cairn: ask it with `cairn events verify` (no --data-dir), or stop it first",
            ));
        }
        Err(e) => return Err(Error::storage(path, e)),
    };
    let txn = db.begin_read().map_err(|e| Error::storage(path, e))?;
    let table = txn
        .open_table(EVENTS)
        .map_err(|e| Error::storage(path, e))?;
    verify_with_wal(path, verify_table(path, &table)?)
}

/// Continues a check of the records in redb (ending at `checked`) with the
/// write-ahead log's records after them, as [`replay_wal`] would apply them.
fn verify_with_wal(
    path: &Path,
    checked: Result<(u64, Hash), ChainBreak>,
) -> Result<Result<u64, ChainBreak>, Error> {
    let (mut seq, mut hash) = match checked {
        Ok(head) => head,
        Err(brk) => return Ok(Err(brk)),
    };
    let log = match std::fs::read(path.with_extension("wal")) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::storage(path, e)),
    };
    for frame in wal::frames(&log) {
        if frame.after < seq {
            continue;
        }
        if frame.after > seq {
            return Ok(Err(ChainBreak {
                seq: seq + 1,
                reason: format!(
                    "missing: the write-ahead log continues after seq {}",
                    frame.after
                ),
            }));
        }
        for bytes in &frame.records {
            let record = match EventRecord::decode(bytes) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(Err(ChainBreak {
                        seq: seq + 1,
                        reason: format!("write-ahead log record does not decode: {e}"),
                    }));
                }
            };
            if let Err(brk) = check_link(seq, &hash, &record) {
                return Ok(Err(brk));
            }
            (seq, hash) = (record.seq, record.hash);
        }
    }
    Ok(Ok(seq))
}

fn verify_repaired_copy(path: &Path) -> Result<Result<u64, ChainBreak>, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let copy =
        std::env::temp_dir().join(format!("cairn-verify-{}-{nanos}.redb", std::process::id()));
    std::fs::copy(path, &copy).map_err(|e| Error::storage(path, e))?;
    let result = (|| {
        let db = Database::open(&copy).map_err(|e| {
            Error::storage(
                path,
                format!("corrupted: it was not closed cleanly, and redb's repair (which checks its page checksums) fails: {e}"),
            )
        })?;
        let txn = db.begin_read().map_err(|e| Error::storage(path, e))?;
        let table = txn
            .open_table(EVENTS)
            .map_err(|e| Error::storage(path, e))?;
        verify_with_wal(path, verify_table(path, &table)?)
    })();
    let _ = std::fs::remove_file(&copy);
    result
}

fn read_head(txn: &ReadTransaction, path: &Path) -> Result<(u64, Hash), Error> {
    let table = txn
        .open_table(EVENTS)
        .map_err(|e| Error::storage(path, e))?;
    match table.last().map_err(|e| Error::storage(path, e))? {
        None => Ok((0, GENESIS_HASH)),
        Some((seq, bytes)) => {
            let seq = seq.value();
            let record = EventRecord::decode(bytes.value()).map_err(|e| Error::Corrupted {
                seq,
                message: e.to_string(),
            })?;
            Ok((seq, record.hash))
        }
    }
}

/// Folds records `from..=to` into `world`, which must stand at `from - 1`,
/// whose record hashes to `prev_hash`. Checks the chain on the way (gap-free,
/// linked, each hash matches its record): a record that fails is
/// [`Error::Corrupted`], never folded. Returns the hash of record `to`.
fn fold_range(
    events: &impl ReadableTable<u64, &'static [u8]>,
    path: &Path,
    world: &mut World,
    prev_hash: Hash,
    from: u64,
    to: u64,
) -> Result<Hash, Error> {
    if from > to {
        return Ok(prev_hash);
    }
    let mut prev_hash = prev_hash;
    // One record, reused: its buffers are allocated once per replay.
    let mut record = EventRecord {
        seq: 0,
        time_ms: 0,
        tenant: String::new(),
        aggregate: String::new(),
        causation: String::new(),
        user: String::new(),
        tag: 0,
        payload: Vec::new(),
        prev_hash: GENESIS_HASH,
        hash: GENESIS_HASH,
    };
    for row in events
        .range(from..=to)
        .map_err(|e| Error::storage(path, e))?
    {
        let (key, bytes) = row.map_err(|e| Error::storage(path, e))?;
        let seq = key.value();
        let corrupted = |message: String| Error::Corrupted { seq, message };
        record
            .decode_into(bytes.value())
            .map_err(|e| corrupted(e.to_string()))?;
        if record.seq != seq || seq != world.seq + 1 {
            return Err(corrupted(format!(
                "stored under key {seq} as seq {}, after seq {}",
                record.seq, world.seq
            )));
        }
        if record.prev_hash != prev_hash {
            return Err(corrupted(
                "prev_hash does not match the previous record's hash".into(),
            ));
        }
        if record.compute_hash() != record.hash {
            return Err(corrupted(
                "hash does not match the record's contents".into(),
            ));
        }
        let event = record.event().map_err(|e| corrupted(e.to_string()))?;
        world.apply(&record, &event);
        prev_hash = record.hash;
    }
    if world.seq != to {
        return Err(Error::Corrupted {
            seq: world.seq + 1,
            message: format!("missing (the fold stops at {} of {to})", world.seq),
        });
    }
    Ok(prev_hash)
}

/// What [`restore`] produced.
struct Restored {
    world: World,
    snapshot_seq: u64,
    folded: u64,
    skipped: u32,
}

/// The state after records `1..=to`: the newest snapshot at or below `to`
/// that decodes, then the records after it.
fn restore(txn: &ReadTransaction, path: &Path, to: u64) -> Result<Restored, Error> {
    let storage = |e: &dyn std::fmt::Display| Error::storage(path, e);
    let events = txn.open_table(EVENTS).map_err(|e| storage(&e))?;
    let snapshots = txn.open_table(SNAPSHOTS).map_err(|e| storage(&e))?;
    let mut start = None;
    let mut skipped = 0;
    for row in snapshots.range(..=to).map_err(|e| storage(&e))?.rev() {
        let (key, bytes) = row.map_err(|e| storage(&e))?;
        let seq = key.value();
        match decode_snapshot(seq, bytes.value(), &events) {
            Ok(found) => {
                start = Some(found);
                break;
            }
            Err(fault) => {
                skipped += 1;
                tracing::warn!(
                    path = %path.display(),
                    seq,
                    reason = %fault,
                    "journal snapshot skipped: folding from an older one or from the first record"
                );
            }
        }
    }
    let (mut world, hash) = start.unwrap_or((World::default(), GENESIS_HASH));
    let snapshot_seq = world.seq;
    fold_range(&events, path, &mut world, hash, snapshot_seq + 1, to)?;
    Ok(Restored {
        folded: world.seq - snapshot_seq,
        snapshot_seq,
        world,
        skipped,
    })
}

/// The header between a snapshot row's format and its body.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader<'a> {
    layout: &'a str,
    seq: u64,
    /// Hash of record `seq`: ties the snapshot to this chain.
    head_hash: Hash,
    body_hash: Hash,
}

/// Why a snapshot row was not used.
#[derive(Debug)]
enum SnapshotFault {
    /// Another `World` layout wrote it.
    Foreign(String),
    Damaged(String),
}

impl std::fmt::Display for SnapshotFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFault::Foreign(reason) => write!(f, "another layout: {reason}"),
            SnapshotFault::Damaged(reason) => write!(f, "damaged: {reason}"),
        }
    }
}

fn encode_snapshot(world: &World, head_hash: &Hash) -> Vec<u8> {
    let body = postcard::to_stdvec(world).expect("worlds always encode");
    let header = SnapshotHeader {
        layout: WORLD_LAYOUT,
        seq: world.seq,
        head_hash: *head_hash,
        body_hash: *blake3::hash(&body).as_bytes(),
    };
    let mut row = Vec::with_capacity(body.len() + 128);
    row.extend_from_slice(&SNAPSHOT_MAGIC);
    row.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    row = postcard::to_extend(&header, row).expect("headers always encode");
    row.extend_from_slice(&body);
    row
}

/// Decodes the snapshot stored under `key`, checking it against the record
/// it claims to follow; returns it with that record's hash.
fn decode_snapshot(
    key: u64,
    row: &[u8],
    events: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<(World, Hash), SnapshotFault> {
    use SnapshotFault::{Damaged, Foreign};
    let rest = row
        .strip_prefix(&SNAPSHOT_MAGIC)
        .ok_or_else(|| Damaged("no snapshot magic".into()))?;
    let (format, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| Damaged("truncated".into()))?;
    let format = u16::from_le_bytes(*format);
    if format != SNAPSHOT_FORMAT {
        return Err(Foreign(format!(
            "snapshot format {format}, this version reads {SNAPSHOT_FORMAT}"
        )));
    }
    let (header, body) = postcard::take_from_bytes::<SnapshotHeader>(rest)
        .map_err(|e| Damaged(format!("header does not decode: {e}")))?;
    if header.layout != WORLD_LAYOUT {
        return Err(Foreign(format!(
            "written by version {}, this is {WORLD_LAYOUT}",
            header.layout
        )));
    }
    if header.seq != key {
        return Err(Damaged(format!(
            "stored under seq {key} but says seq {}",
            header.seq
        )));
    }
    if blake3::hash(body).as_bytes() != &header.body_hash {
        return Err(Damaged("body does not match its hash".into()));
    }
    let record_hash = match events.get(key) {
        Ok(Some(bytes)) => {
            EventRecord::decode(bytes.value())
                .map_err(|e| Damaged(format!("record {key} does not decode: {e}")))?
                .hash
        }
        Ok(None) => return Err(Damaged(format!("record {key} does not exist"))),
        Err(e) => return Err(Damaged(format!("record {key}: {e}"))),
    };
    if record_hash != header.head_hash {
        return Err(Damaged(format!(
            "record {key} has another hash than the snapshot follows"
        )));
    }
    // The body is what was written (the hash matched): a body that does not
    // decode exactly was written for another `World` layout.
    let (world, extra) = postcard::take_from_bytes::<World>(body)
        .map_err(|e| Foreign(format!("body does not decode: {e}")))?;
    if !extra.is_empty() {
        return Err(Foreign(format!(
            "{} bytes left after the body decoded",
            extra.len()
        )));
    }
    if world.seq != key {
        return Err(Damaged(format!(
            "body is the state at seq {}, not {key}",
            world.seq
        )));
    }
    Ok((world, record_hash))
}

/// Writes a snapshot of `world` (at `world.seq`, whose record hashes to
/// `head_hash`) and drops the oldest beyond `kept`.
fn put_snapshot(
    table: &mut redb::Table<u64, &'static [u8]>,
    world: &World,
    head_hash: &Hash,
    kept: usize,
) -> Result<(), redb::StorageError> {
    let row = encode_snapshot(world, head_hash);
    table.insert(world.seq, row.as_slice())?;
    while table.len()? > kept as u64 {
        table.pop_first()?;
    }
    Ok(())
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    limits: Limits,
    head: (u64, Hash),
    world: HeadWorld,
    /// Seq of the newest snapshot (0: none): the next one is due
    /// `snapshot_every` events after it.
    snapshot_seq: u64,
    wal: Wal,
    /// Set when the log may hold a frame that must not be replayed: every
    /// later append fails with this reason.
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.blocking_recv() {
            let mut requests = vec![first.0];
            let mut waiting = vec![first.1];
            while requests.len() < self.limits.max_batch {
                match rx.try_recv() {
                    Ok((request, done)) => {
                        requests.push(request);
                        waiting.push(done);
                    }
                    Err(_) => break,
                }
            }
            let span = tracing::info_span!(
                spans::JOURNAL_COMMIT,
                { fields::JOURNAL_BATCH } = requests.len() as i64,
                { fields::JOURNAL_EVENTS } = tracing::field::Empty,
                { fields::JOURNAL_FIRST_SEQ } = tracing::field::Empty,
                { fields::JOURNAL_LAST_SEQ } = tracing::field::Empty,
            )
            .entered();
            let before = self.head.0;
            // Held until the batch is folded in (and checkpointed, if due),
            // so `Journal::world` never misses an answered append, and a
            // caller that gets the world knows the writer is idle.
            let world = self.world.clone();
            let mut world = world.lock().unwrap();
            match self.write_batch(&requests, &world) {
                Ok(results) => {
                    // i64: OTLP integers are signed (see `crate::telemetry`).
                    let after = self.head.0;
                    span.record(fields::JOURNAL_EVENTS, (after - before) as i64);
                    if after > before {
                        span.record(fields::JOURNAL_FIRST_SEQ, (before + 1) as i64);
                        span.record(fields::JOURNAL_LAST_SEQ, after as i64);
                    }
                    // Answer first: callers wait for the commit, not for
                    // the fold, which works on copies of the records.
                    let mut committed = Vec::new();
                    let mut appended = Vec::new();
                    for (idx, result) in results.iter().enumerate() {
                        if let Appended::Records(records) = result {
                            committed.extend(records.iter().cloned());
                            appended.push(idx);
                        }
                    }
                    for (result, done) in results.into_iter().zip(waiting) {
                        let _ = done.send(Ok(result));
                    }
                    let mut records = committed.iter();
                    for idx in appended {
                        for event in &requests[idx].events {
                            let record = records.next().expect("one record per event");
                            world.apply(record, event);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal commit failed");
                    for done in waiting {
                        let _ = done.send(Err(Error::storage(&self.path, &e)));
                    }
                }
            }
            if self.wal.position() >= self.limits.wal_bytes {
                self.checkpoint();
            }
            drop(world);
        }
        self.checkpoint();
    }

    /// A durable redb commit of everything committed so far; then the log
    /// starts again. On an error the log keeps growing, and the next batch
    /// tries again.
    fn checkpoint(&mut self) {
        let _span = tracing::debug_span!(spans::JOURNAL_CHECKPOINT).entered();
        let committed = match self.db.begin_write() {
            Ok(txn) => txn.commit().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match committed {
            Ok(()) => self.wal.restart(),
            Err(e) => tracing::error!(
                error = %e,
                wal = %self.wal.path().display(),
                "journal checkpoint failed; the write-ahead log keeps growing"
            ),
        }
    }

    /// Writes one batch in one transaction, with a snapshot of `world` (the
    /// state at the head before this batch) when one is due.
    fn write_batch(
        &mut self,
        batch: &[AppendRequest],
        world: &World,
    ) -> Result<Vec<Appended>, Error> {
        let path = &self.path;
        let storage = |e: &dyn std::fmt::Display| Error::storage(path, e);
        if let Some(reason) = &self.poisoned {
            return Err(storage(reason));
        }
        let (mut seq, mut hash) = self.head;
        debug_assert_eq!(world.seq, seq, "the writer's world is at the head");
        let time_ms = now_ms();
        let mut txn = self.db.begin_write().map_err(|e| storage(&e))?;
        // Durable through the log, below; checkpoints make redb durable.
        txn.set_durability(redb::Durability::None)
            .map_err(|e| storage(&e))?;
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        let mut replies: Vec<(String, &[u8])> = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let snapshot = world.seq > self.snapshot_seq
            && world.seq - self.snapshot_seq >= self.limits.snapshot_every;
        {
            if snapshot {
                let mut table = txn.open_table(SNAPSHOTS).map_err(|e| storage(&e))?;
                put_snapshot(&mut table, world, &hash, self.limits.snapshots_kept)
                    .map_err(|e| storage(&e))?;
            }
            let mut events = txn.open_table(EVENTS).map_err(|e| storage(&e))?;
            let mut requests = txn.open_table(REQUESTS).map_err(|e| storage(&e))?;
            for request in batch {
                let c = &request.causation;
                if c.dedup {
                    let key = dedup_key(&c.tenant, &c.id);
                    if let Some(first) = requests.get(key.as_str()).map_err(|e| storage(&e))? {
                        results.push(Appended::Duplicate(first.value().to_vec()));
                        continue;
                    }
                    requests
                        .insert(key.as_str(), request.reply.as_slice())
                        .map_err(|e| storage(&e))?;
                    replies.push((key, request.reply.as_slice()));
                }
                let mut records = Vec::with_capacity(request.events.len());
                for event in &request.events {
                    seq += 1;
                    let record =
                        EventRecord::seal(seq, time_ms, &c.tenant, &c.id, &c.user, event, hash);
                    hash = record.hash;
                    let bytes = record.encode();
                    events
                        .insert(seq, bytes.as_slice())
                        .map_err(|e| storage(&e))?;
                    encoded.push(bytes);
                    records.push(record);
                }
                results.push(Appended::Records(records));
            }
        }
        // A batch of duplicates only changes nothing that must last.
        let logged = if encoded.is_empty() && replies.is_empty() {
            0
        } else {
            let frame = Frame {
                after: self.head.0,
                records: encoded.iter().map(Vec::as_slice).collect(),
                requests: replies.iter().map(|(k, r)| (k.as_str(), *r)).collect(),
            }
            .encode();
            // Dropping `txn` on an error aborts it.
            self.wal.append(&frame).map_err(|e| storage(&e))?;
            frame.len() as u64
        };
        if let Err(e) = txn.commit() {
            // Not committed: erase the frame, so a restart does not apply
            // what the callers are told failed (they undo their effects).
            if let Err(cancel) = self.wal.cancel(logged) {
                let reason = format!(
                    "a batch failed to commit ({e}) and its write-ahead log frame could not be \
                     erased ({cancel}): refusing appends until a restart"
                );
                tracing::error!(wal = %self.wal.path().display(), "{reason}");
                self.poisoned = Some(reason);
            }
            return Err(storage(&e));
        }
        if snapshot {
            self.snapshot_seq = world.seq;
        }
        self.head = (seq, hash);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_schema::event::{
        SnapshotDeleted, VolumeCreated, VolumeDeleted, VolumeRolledBack, VolumeSnapshotted,
    };

    fn create(name: &str, id: &str, dedup: bool) -> AppendRequest {
        AppendRequest {
            causation: Causation {
                tenant: "default".into(),
                user: "test".into(),
                id: id.into(),
                dedup,
            },
            events: vec![Event::VolumeCreated(VolumeCreated {
                volume: name.into(),
                size_bytes: 1,
                compression: "lz4".into(),
                encrypted: false,
            })],
            reply: format!("reply-{name}").into_bytes(),
        }
    }

    /// Finding 3 of issue 13: one tenant reused another's request id and
    /// got its reply.
    #[tokio::test]
    async fn request_ids_are_scoped_by_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.redb"), Limits::default()).unwrap();
        journal
            .append(create("v1", "shared-id", true))
            .await
            .unwrap();
        let mut evil = create("v2", "shared-id", true);
        evil.causation.tenant = "evil".into();
        evil.reply = b"evil's own reply".to_vec();
        let appended = journal.append(evil).await.unwrap();
        assert!(
            matches!(appended, Appended::Records(ref r) if r.len() == 1),
            "another tenant's id is not a duplicate: {appended:?}"
        );
        assert_eq!(
            journal
                .lookup_request("evil", "shared-id")
                .unwrap()
                .as_deref(),
            Some(&b"evil's own reply"[..])
        );
        assert_eq!(
            journal
                .lookup_request("default", "shared-id")
                .unwrap()
                .as_deref(),
            Some(&b"reply-v1"[..])
        );
        assert_eq!(journal.lookup_request("acme", "shared-id").unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_chain_dedup_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let journal = Journal::open(
            &path,
            Limits {
                queue: 8,
                max_batch: 16,
                ..Limits::default()
            },
        )
        .unwrap();
        let appends = (0..64).map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move {
                journal
                    .append(create(&format!("v{i}"), &format!("r{i}"), true))
                    .await
            })
        });
        for append in futures::future::join_all(appends).await {
            assert!(matches!(append.unwrap().unwrap(), Appended::Records(r) if r.len() == 1));
        }
        assert_eq!(journal.verify_chain().unwrap(), Ok(64));
        let again = journal.append(create("other", "r7", true)).await.unwrap();
        assert!(matches!(again, Appended::Duplicate(first) if first == b"reply-v7"));
        assert_eq!(journal.len().unwrap(), 64, "a duplicate appends nothing");
        drop(journal);

        let journal = Journal::open(&path, Limits::default()).unwrap();
        assert_eq!(
            journal.lookup_request("default", "r7").unwrap().as_deref(),
            Some(&b"reply-v7"[..])
        );
        journal.append(create("v64", "r64", false)).await.unwrap();
        assert_eq!(
            journal.verify_chain().unwrap(),
            Ok(65),
            "the chain continues across a reopen"
        );
        let seqs: Vec<u64> = journal
            .read(60, 100)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [60, 61, 62, 63, 64, 65]);
    }

    /// A small deterministic generator (xorshift64*), so a failing seed can
    /// be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Any volume event over a few names: the fold does not check the
    /// rules (deciders do), so every sequence is a valid history here.
    fn random_event(rng: &mut Rng) -> Event {
        let volume = format!("v{}", rng.below(4));
        let snapshot = format!("s{}", rng.below(3));
        match rng.below(6) {
            0 | 1 => Event::VolumeCreated(VolumeCreated {
                volume,
                size_bytes: rng.below(1 << 40),
                compression: "lz4".into(),
                encrypted: rng.below(2) == 1,
            }),
            2 => Event::VolumeSnapshotted(VolumeSnapshotted { volume, snapshot }),
            3 => Event::SnapshotDeleted(SnapshotDeleted { volume, snapshot }),
            4 => Event::VolumeRolledBack(VolumeRolledBack { volume, snapshot }),
            _ => Event::VolumeDeleted(VolumeDeleted { volume }),
        }
    }

    /// How a test damages the newest snapshot row.
    #[derive(Debug, Clone, Copy)]
    enum Damage {
        /// One body byte flipped (the body hash no longer matches).
        FlipByte,
        /// A well-formed row whose body is not a `World` of this layout,
        /// as a newer or older version would leave.
        OtherLayout,
        /// A row written by another snapshot format.
        OtherFormat,
    }

    /// Rewrites the newest snapshot row as `damage` says; returns its seq.
    fn damage_newest_snapshot(journal: &Journal, damage: Damage) -> Option<u64> {
        let txn = journal.inner.db.begin_write().unwrap();
        let seq = {
            let mut table = txn.open_table(SNAPSHOTS).unwrap();
            let (seq, mut row) = match table.last().unwrap() {
                Some((k, v)) => (k.value(), v.value().to_vec()),
                None => return None,
            };
            match damage {
                Damage::FlipByte => *row.last_mut().unwrap() ^= 0x40,
                Damage::OtherLayout => {
                    // What a World with one more field would leave behind:
                    // this layout's body plus bytes it does not expect.
                    let (header, body) = postcard::take_from_bytes::<SnapshotHeader>(
                        &row[SNAPSHOT_MAGIC.len() + 2..],
                    )
                    .unwrap();
                    let mut body = body.to_vec();
                    body.extend_from_slice(&[3, 1, 2, 3]);
                    let header = SnapshotHeader {
                        body_hash: *blake3::hash(&body).as_bytes(),
                        ..header
                    };
                    let mut new = SNAPSHOT_MAGIC.to_vec();
                    new.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
                    new = postcard::to_extend(&header, new).unwrap();
                    new.extend_from_slice(&body);
                    row = new;
                }
                Damage::OtherFormat => {
                    row[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 2]
                        .copy_from_slice(&(SNAPSHOT_FORMAT + 1).to_le_bytes());
                }
            }
            table.insert(seq, row.as_slice()).unwrap();
            seq
        };
        txn.commit().unwrap();
        Some(seq)
    }

    /// The files of a journal as a `kill -9` would leave them, copied to a
    /// fresh directory. The writer must be idle: [`Journal::world`] returns
    /// only then.
    fn crash_image(journal: &Journal, dir: &Path) -> PathBuf {
        journal.world().unwrap();
        let from = &journal.inner.path;
        let to = dir.join("journal.redb");
        std::fs::copy(from, &to).unwrap();
        std::fs::copy(from.with_extension("wal"), to.with_extension("wal")).unwrap();
        to
    }

    /// The newest snapshot row, as stored.
    fn newest_snapshot_row(journal: &Journal) -> Option<(u64, Vec<u8>)> {
        let table = journal.table(SNAPSHOTS).unwrap();
        let newest = table.last().unwrap();
        newest.map(|(k, v)| (k.value(), v.value().to_vec()))
    }

    /// Model test: random appends (single and concurrent), clean restarts,
    /// crashes (the files as a `kill -9` leaves them, with batches committed
    /// only through the write-ahead log) and damaged snapshots. After every
    /// step the state rebuilt at open (newest snapshot + tail), the writer's
    /// state, a full replay and `fold_to` at a random seq all equal the model
    /// (a plain fold of what was answered); snapshots never exceed
    /// `snapshots_kept`; a damaged snapshot is skipped at start-up and
    /// reported by `replay_full`. Returns the log frames replayed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_from_snapshot_and_tail_equals_full_replay() {
        let mut wal_frames = 0;
        for seed in 1..=12u64 {
            wal_frames += model_run(seed).await;
        }
        assert!(wal_frames > 0, "no crash left batches in the log");
    }

    async fn model_run(seed: u64) -> u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        let mut path = dirs[0].path().join("journal.redb");
        let limits = Limits {
            queue: 4,
            max_batch: 1 + rng.below(4) as usize,
            snapshot_every: 1 + rng.below(12),
            snapshots_kept: 1 + rng.below(3) as usize,
            // Checkpoint after every batch, every few, or never.
            wal_bytes: [1, 2048, 1 << 20][rng.below(3) as usize],
        };
        let ctx = format!("seed {seed}, {limits:?}");
        let mut journal = Journal::open(&path, limits).unwrap();
        // history[s] is the model World after records 1..=s.
        let mut history = vec![World::default()];
        // Every row the test damaged (a crash can bring an older one back
        // as the newest, when newer snapshots were not checkpointed).
        let mut damaged_rows: Vec<(u64, Vec<u8>)> = Vec::new();
        let is_damaged = |journal: &Journal, rows: &[(u64, Vec<u8>)]| {
            newest_snapshot_row(journal).is_some_and(|row| rows.contains(&row))
        };
        let (mut restarts, mut crashes, mut wal_frames) = (0, 0, 0);
        for step in 0..100 {
            let ctx = format!("{ctx}, step {step}");
            let damaged = is_damaged(&journal, &damaged_rows);
            match rng.below(12) {
                0 | 1 => {
                    let crash = rng.below(2) == 0;
                    if crash {
                        dirs.push(tempfile::tempdir().unwrap());
                        path = crash_image(&journal, dirs.last().unwrap().path());
                        crashes += 1;
                    }
                    drop(journal);
                    journal = Journal::open(&path, limits).unwrap();
                    restarts += 1;
                    let head = history.len() as u64 - 1;
                    let recovery = journal.recovery();
                    wal_frames += recovery.wal_frames;
                    assert!(crash || recovery.wal_frames == 0, "{ctx}: {recovery:?}");
                    assert_eq!(
                        recovery.snapshot_seq + recovery.folded,
                        head,
                        "{ctx}: {recovery:?}"
                    );
                    // After a crash, the newest snapshot may be an older
                    // one (newer ones were not checkpointed).
                    if damaged && !crash {
                        assert!(recovery.skipped_snapshots >= 1, "{ctx}: {recovery:?}");
                    } else if !crash {
                        assert_eq!(recovery.skipped_snapshots, 0, "{ctx}: {recovery:?}");
                    }
                    if !damaged && !crash {
                        // Written every `snapshot_every` events (or at open),
                        // of the state before the batch that writes it: the
                        // tail is shorter than that plus two batches. (A
                        // crash may lose snapshots not checkpointed yet.)
                        let batch_events = 4 * limits.max_batch as u64;
                        assert!(
                            recovery.folded < limits.snapshot_every + 2 * batch_events,
                            "{ctx}: {recovery:?}"
                        );
                    }
                }
                2 if !damaged => {
                    let how = match rng.below(3) {
                        0 => Damage::FlipByte,
                        1 => Damage::OtherLayout,
                        _ => Damage::OtherFormat,
                    };
                    if let Some(seq) = damage_newest_snapshot(&journal, how) {
                        let check = journal.replay_full().unwrap().snapshot;
                        match how {
                            Damage::FlipByte => assert!(
                                matches!(&check, SnapshotCheck::Bad(b) if b.seq == seq),
                                "{ctx}: {check:?}"
                            ),
                            Damage::OtherLayout | Damage::OtherFormat => assert!(
                                matches!(&check, SnapshotCheck::Foreign { seq: s, .. } if *s == seq),
                                "{ctx}: {check:?}"
                            ),
                        }
                        damaged_rows.extend(newest_snapshot_row(&journal));
                    }
                }
                3 => {
                    // Concurrent appends share commits.
                    let appends: Vec<_> = (0..1 + rng.below(6))
                        .map(|_| {
                            let events: Vec<Event> = (0..1 + rng.below(3))
                                .map(|_| random_event(&mut rng))
                                .collect();
                            let journal = journal.clone();
                            tokio::spawn(async move {
                                journal
                                    .append(AppendRequest {
                                        causation: Causation::default(),
                                        events,
                                        reply: vec![],
                                    })
                                    .await
                            })
                        })
                        .collect();
                    let mut records = Vec::new();
                    for append in futures::future::join_all(appends).await {
                        match append.unwrap().unwrap() {
                            Appended::Records(r) => records.extend(r),
                            Appended::Duplicate(_) => panic!("{ctx}: no dedup asked"),
                        }
                    }
                    records.sort_by_key(|r| r.seq);
                    fold_into_history(&mut history, &records, &ctx);
                }
                _ => {
                    let events: Vec<Event> = (0..1 + rng.below(4))
                        .map(|_| random_event(&mut rng))
                        .collect();
                    let appended = journal
                        .append(AppendRequest {
                            causation: Causation::default(),
                            events,
                            reply: vec![],
                        })
                        .await
                        .unwrap();
                    let Appended::Records(records) = appended else {
                        panic!("{ctx}: no dedup asked");
                    };
                    fold_into_history(&mut history, &records, &ctx);
                }
            }
            let damaged = is_damaged(&journal, &damaged_rows);
            let head = history.len() as u64 - 1;
            let model = history.last().unwrap();
            assert_eq!(&journal.world().unwrap(), model, "{ctx}: writer's state");
            let full = journal.replay_full().unwrap();
            assert_eq!(&full.world, model, "{ctx}: full replay");
            if !damaged {
                assert!(
                    matches!(
                        full.snapshot,
                        SnapshotCheck::Absent | SnapshotCheck::Matches { .. }
                    ),
                    "{ctx}: {:?}",
                    full.snapshot
                );
            }
            let at = rng.below(head + 2);
            let expected = &history[at.min(head) as usize];
            assert_eq!(
                &journal.fold_to(at).unwrap(),
                expected,
                "{ctx}: fold_to({at})"
            );
            let snapshots = journal.snapshots().unwrap();
            assert!(
                snapshots.len() <= limits.snapshots_kept,
                "{ctx}: {snapshots:?}"
            );
            assert!(
                snapshots.iter().all(|s| s.seq <= head),
                "{ctx}: {snapshots:?}"
            );
        }
        let head = history.len() as u64 - 1;
        assert!(
            head > 2 * limits.snapshot_every,
            "seed {seed}: too few events"
        );
        assert!(
            !journal.snapshots().unwrap().is_empty(),
            "seed {seed}: no snapshot after {head} events"
        );
        assert!(
            restarts > 0 && crashes > 0,
            "seed {seed}: {restarts} restarts, {crashes} crashes"
        );
        assert_eq!(journal.verify_chain().unwrap(), Ok(head), "seed {seed}");
        wal_frames
    }

    /// Rewrites record `seq` with its time moved by a millisecond: the bytes
    /// decode, but its hash no longer matches.
    fn tamper(journal: &Journal, seq: u64) {
        let txn = journal.inner.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(EVENTS).unwrap();
            let mut record = EventRecord::decode(table.get(seq).unwrap().unwrap().value()).unwrap();
            record.time_ms += 1;
            table.insert(seq, record.encode().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    /// Start-up checks the chain of the records it folds: a tampered record
    /// after the newest snapshot stops it; one before is past the snapshot
    /// (its state was checked when folded), and `verify_chain` names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_refuses_a_tampered_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let limits = Limits {
            snapshot_every: 10,
            ..Limits::default()
        };
        let journal = Journal::open(&path, limits).unwrap();
        for i in 0..25 {
            journal
                .append(create(&format!("v{i}"), &format!("r{i}"), false))
                .await
                .unwrap();
        }
        tamper(&journal, 5);
        drop(journal);
        let journal = Journal::open(&path, limits).unwrap();
        assert_eq!(journal.recovery().snapshot_seq, 20);
        assert!(matches!(journal.verify_chain().unwrap(), Err(b) if b.seq == 5));
        assert!(matches!(
            journal.replay_full(),
            Err(Error::Corrupted { seq: 5, .. })
        ));
        tamper(&journal, 23);
        drop(journal);
        match Journal::open(&path, limits) {
            Err(Error::Corrupted { seq, message }) => {
                assert_eq!(seq, 23, "{message}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a tampered tail must stop start-up"),
        }
    }

    /// Answered appends survive a crash through the write-ahead log alone
    /// (no checkpoint since), dedup replies included; a torn last frame loses
    /// only that batch, and the chain continues after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_keeps_every_answered_append() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            wal_bytes: 1 << 20,
            ..Limits::default()
        };
        let journal = Journal::open(&dir.path().join("journal.redb"), limits).unwrap();
        for i in 0..50 {
            let appended = journal
                .append(create(&format!("v{i}"), &format!("r{i}"), true))
                .await
                .unwrap();
            assert!(matches!(appended, Appended::Records(_)));
        }
        let crashed = tempfile::tempdir().unwrap();
        let path = crash_image(&journal, crashed.path());
        let expected = journal.world().unwrap();
        drop(journal);

        // A copy with the last frame torn, to open later.
        let torn = tempfile::tempdir().unwrap();
        let torn_path = torn.path().join("journal.redb");
        std::fs::copy(&path, &torn_path).unwrap();
        let log = std::fs::read(path.with_extension("wal")).unwrap();
        let frames: Vec<_> = wal::frames(&log).collect();
        assert_eq!(
            frames.len(),
            50,
            "one frame per batch, each batch one append"
        );
        let end: usize = frames.iter().map(|f| f.encode().len()).sum();
        let mut torn_log = log.clone();
        torn_log[end - 3..end].fill(0);
        std::fs::write(torn_path.with_extension("wal"), &torn_log).unwrap();

        // Checked offline, the log's records count (and no file is written).
        assert_eq!(verify_file(&path).unwrap(), Ok(50));
        assert_eq!(verify_file(&torn_path).unwrap(), Ok(49));
        let journal = Journal::open(&path, limits).unwrap();
        let recovery = journal.recovery();
        assert_eq!((recovery.wal_frames, recovery.wal_records), (50, 50));
        assert_eq!(journal.world().unwrap(), expected);
        assert_eq!(journal.verify_chain().unwrap(), Ok(50));
        assert_eq!(
            journal.lookup_request("default", "r49").unwrap().as_deref(),
            Some(&b"reply-v49"[..])
        );
        let again = journal.append(create("x", "r7", true)).await.unwrap();
        assert!(matches!(again, Appended::Duplicate(first) if first == b"reply-v7"));
        drop(journal);

        let journal = Journal::open(&torn_path, limits).unwrap();
        assert_eq!(journal.recovery().wal_records, 49, "the torn batch is lost");
        assert_eq!(journal.lookup_request("default", "r49").unwrap(), None);
        journal.append(create("v49", "r49", true)).await.unwrap();
        assert_eq!(journal.verify_chain().unwrap(), Ok(50));
        // A clean close checkpoints: the next start replays no log.
        journal.close();
        assert!(matches!(
            journal.append(create("late", "r-late", true)).await,
            Err(Error::Closed)
        ));
        drop(journal);
        let journal = Journal::open(&torn_path, limits).unwrap();
        assert_eq!(journal.recovery().wal_frames, 0);
        assert_eq!(journal.len().unwrap(), 50);
    }

    /// Appends the model states after each of `records` (in seq order).
    fn fold_into_history(history: &mut Vec<World>, records: &[EventRecord], ctx: &str) {
        for record in records {
            assert_eq!(record.seq, history.len() as u64, "{ctx}: gap-free seqs");
            let mut world = history.last().unwrap().clone();
            world.apply(record, &record.event().unwrap());
            history.push(world);
        }
    }

    /// Snapshots stay bounded however long the history grows, and start-up
    /// folds only the tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_bounded_and_start_up_folds_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let limits = Limits {
            snapshot_every: 10,
            snapshots_kept: 2,
            ..Limits::default()
        };
        let journal = Journal::open(&path, limits).unwrap();
        for i in 0..205 {
            journal
                .append(create(&format!("v{i}"), &format!("r{i}"), true))
                .await
                .unwrap();
        }
        let seqs: Vec<u64> = journal.snapshots().unwrap().iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [190, 200]);
        drop(journal);
        let journal = Journal::open(&path, limits).unwrap();
        let recovery = journal.recovery();
        assert_eq!((recovery.snapshot_seq, recovery.folded), (200, 5));
        assert_eq!(journal.world().unwrap().volumes.len(), 205);
        assert_eq!(
            journal.world().unwrap(),
            journal.replay_full().unwrap().world
        );
        // A snapshot the code cannot read (another World layout) is skipped
        // for the older one, and start-up rewrites a fresh one.
        damage_newest_snapshot(&journal, Damage::OtherLayout).unwrap();
        drop(journal);
        let journal = Journal::open(&path, limits).unwrap();
        let recovery = journal.recovery();
        assert_eq!(
            (
                recovery.snapshot_seq,
                recovery.folded,
                recovery.skipped_snapshots
            ),
            (190, 15, 1)
        );
        let seqs: Vec<u64> = journal.snapshots().unwrap().iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [200, 205], "rewritten at open: the tail was long");
        assert_eq!(
            journal.replay_full().unwrap().snapshot,
            SnapshotCheck::Matches { seq: 205 }
        );
    }
}
