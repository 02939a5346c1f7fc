//! The redb journal: [`RedbJournal::open`] (redb's recovery, then the
//! write-ahead log's frames, then the state from the newest snapshot and the
//! tail), the writer thread that owns every write transaction (group
//! commit: one log frame, one `fdatasync` and one in-memory redb commit per
//! batch; a durable checkpoint every `wal_bytes`), and the reads.
//!
//! # State
//! - `Inner::db`: the redb database; readers open their own transactions.
//! - `Inner::world` ([`HeadWorld`]): the `World` folded to the head, owned by
//!   the writer thread (it folds a batch after answering it, holding the
//!   lock, so [`Journal::world`] never misses an answered append).
//! - [`Writer`]: the head (seq, hash), the last snapshot's seq, the open log.
//!
//! # Invariants
//! - One thread writes. Every append is durable (its frame synced) before
//!   its caller is answered and before redb shows its records to a reader.
//! - A batch that fails (its log append or its commit) has its frame
//!   erased before its callers hear of it; if that fails too, the process
//!   stops ([`stop_undecided`]): no caller is told an error for a batch a
//!   restart may find durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use cairn_schema::record::{ChainBreak, check_link};
use cairn_schema::{EventRecord, Hash, World};
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, Value,
};
use tokio::sync::{mpsc, oneshot};

use super::snapshots::{self, put_snapshot, restore};
use super::verify::{self, RedbRows, verify_rows};
use super::wal::{self, Frame, Wal};
use super::{
    AppendRequest, Appended, Error, FullReplay, Journal, Limits, Recovery, SnapshotInfo, dedup_key,
};
use crate::clock::{Clock, SystemClock};
use crate::telemetry::{fields, spans};
use futures::future::BoxFuture;

pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(super) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
pub(super) const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");

type Pending = (AppendRequest, oneshot::Sender<Result<Appended, Error>>);

/// The writer's `World`, folded up to the head.
type HeadWorld = Arc<Mutex<World>>;

/// A handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct RedbJournal {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) db: Arc<Database>,
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

/// The head (seq, hash) as `txn` sees it.
fn read_head(txn: &ReadTransaction, path: &Path) -> Result<(u64, Hash), Error> {
    let events = txn
        .open_table(EVENTS)
        .map_err(|e| Error::storage(path, e))?;
    verify::head(&RedbRows {
        table: &events,
        path,
    })
}

/// [`snapshots::restore`] over `txn`'s tables.
fn restore_at(txn: &ReadTransaction, path: &Path, to: u64) -> Result<snapshots::Restored, Error> {
    let storage = |e: redb::TableError| Error::storage(path, e);
    let events = txn.open_table(EVENTS).map_err(storage)?;
    let snaps = txn.open_table(SNAPSHOTS).map_err(storage)?;
    restore(
        &RedbRows {
            table: &events,
            path,
        },
        &RedbRows {
            table: &snaps,
            path,
        },
        path,
        to,
    )
}

impl RedbJournal {
    /// Opens (or creates) the journal, stamping records with the system
    /// clock; see [`RedbJournal::open_with`].
    pub fn open(path: &Path, limits: Limits) -> Result<RedbJournal, Error> {
        RedbJournal::open_with(path, limits, Arc::new(SystemClock))
    }

    /// Opens (or creates) the journal, rebuilds the state from the newest
    /// usable snapshot plus the records after it, and starts the writer,
    /// which stamps each batch's records with `clock`.
    pub fn open_with(
        path: &Path,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<RedbJournal, Error> {
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
            (head, restore_at(&txn, path, head.0)?)
        };
        let limits = limits.at_least_one();
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
            clock,
        };
        let writer = std::thread::Builder::new()
            .name("cairn-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| storage(&e))?;
        Ok(RedbJournal {
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

    fn read_txn(&self) -> Result<ReadTransaction, Error> {
        self.inner
            .db
            .begin_read()
            .map_err(|e| Error::storage(&self.inner.path, e))
    }

    /// Opens `table` in a fresh read transaction.
    pub(super) fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<ReadOnlyTable<K, V>, Error> {
        self.read_txn()?
            .open_table(table)
            .map_err(|e| Error::storage(&self.inner.path, e))
    }
}

impl Journal for RedbJournal {
    /// Appends events durably. Resolves after the commit.
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<Appended, Error>> {
        let tx = self.inner.tx.lock().unwrap().clone();
        Box::pin(async move {
            let (done_tx, done_rx) = oneshot::channel();
            let tx = tx.ok_or(Error::Closed)?;
            // A full queue makes this caller wait: that is the back-pressure.
            tx.send((request, done_tx))
                .await
                .map_err(|_| Error::Closed)?;
            done_rx.await.map_err(|_| Error::Closed)?
        })
    }

    /// Stops taking appends, waits for those queued, checkpoints (so the next
    /// start replays no log) and stops the writer. Later appends fail with
    /// [`Error::Closed`]; reads keep working. Idempotent.
    fn close(&self) {
        self.inner.tx.lock().unwrap().take();
        if let Some(writer) = self.inner.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }

    /// How [`RedbJournal::open`] rebuilt the state.
    fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// The state folded up to the head (every committed record).
    fn world(&self) -> Result<World, Error> {
        Ok(self.inner.world.lock().unwrap().clone())
    }

    /// The state after records `1..=seq` (or up to the head, if `seq` is
    /// beyond it; the result's `seq` says where it stopped): the newest usable
    /// snapshot at or below `seq`, then the records after it.
    fn fold_to(&self, seq: u64) -> Result<World, Error> {
        let txn = self.read_txn()?;
        let head = read_head(&txn, &self.inner.path)?.0;
        Ok(restore_at(&txn, &self.inner.path, seq.min(head))?.world)
    }

    /// Folds every record from seq 1, ignoring snapshots, and checks the
    /// newest snapshot against the fold at its seq. One read transaction, so
    /// both describe the same instant.
    fn replay_full(&self) -> Result<FullReplay, Error> {
        let path = &self.inner.path;
        let storage = |e: redb::TableError| Error::storage(path, e);
        let txn = self.read_txn()?;
        let head = read_head(&txn, path)?.0;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(storage)?;
        snapshots::replay_full(
            &RedbRows {
                table: &events,
                path,
            },
            &RedbRows {
                table: &snaps,
                path,
            },
            head,
        )
    }

    /// The stored snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
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

    /// Records with seq in `from..` (at most `limit`), in order.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, Error> {
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

    /// The reply stored for a tenant's request id, if any. Request ids are
    /// scoped by tenant: one tenant reusing another's id finds nothing.
    fn lookup_request(&self, tenant: &str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = &self.inner.path;
        let table = self.table(REQUESTS)?;
        Ok(table
            .get(dedup_key(tenant, id).as_str())
            .map_err(|e| Error::storage(path, e))?
            .map(|v| v.value().to_vec()))
    }

    /// Checks the whole hash chain. Returns the number of records, or the
    /// first break.
    fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error> {
        let events = self.table(EVENTS)?;
        let rows = RedbRows {
            table: &events,
            path: &self.inner.path,
        };
        Ok(verify_rows(&rows)?.map(|(seq, _)| seq))
    }

    fn len(&self) -> Result<u64, Error> {
        let path = &self.inner.path;
        let table = self.table(EVENTS)?;
        table.len().map_err(|e| Error::storage(path, e))
    }
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
    /// Stamps each batch's records.
    clock: Arc<dyn Clock>,
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
        let (mut seq, mut hash) = self.head;
        debug_assert_eq!(world.seq, seq, "the writer's world is at the head");
        let time_ms = self.clock.now_ms();
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
            // Dropping `txn` on an error aborts it. The frame may be
            // durable even so: it is erased before the callers hear of the
            // failure (they undo their effects), or the process stops.
            if let Err(e) = self.wal.append(&frame) {
                if let Err(erase) = self.wal.erase_at_position() {
                    stop_undecided(
                        self.wal.path(),
                        &format!(
                            "a write-ahead log append failed ({e}) and the frame could not be erased ({erase})"
                        ),
                    );
                }
                return Err(storage(&e));
            }
            frame.len() as u64
        };
        if let Err(e) = txn.commit() {
            // Not committed: erase the frame, so a restart does not apply
            // what the callers are told failed (they undo their effects).
            if let Err(cancel) = self.wal.cancel(logged) {
                stop_undecided(
                    self.wal.path(),
                    &format!(
                        "a batch failed to commit ({e}) and its write-ahead log frame could not be erased ({cancel})"
                    ),
                );
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

/// Stops the process when the journal cannot tell whether a batch is
/// durable: its frame is on disk, or may be, and could not be erased. To
/// answer the callers with an error would have them undo effects that a
/// restart then finds journaled (a snapshot in the journal and not in the
/// pool); to answer success would claim what may not last. A process that
/// stops runs no caller's cleanup, and the restart decides from the disk
/// (the frame is applied or it is not; start-up reconciliation removes
/// engine objects the journal does not have). This is the rule databases
/// follow after a failed fsync.
fn stop_undecided(wal: &std::path::Path, reason: &str) -> ! {
    tracing::error!(wal = %wal.display(), "{reason}: stopping, a restart decides from the disk");
    eprintln!(
        "cairn: journal {}: {reason}: stopping, a restart decides from the disk",
        wal.display()
    );
    std::process::abort()
}
