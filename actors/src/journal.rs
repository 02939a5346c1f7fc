//! The journal: the append-only, hash-chained event log in redb.
//!
//! # Group commit
//! One writer thread owns every write transaction. Callers hand it an
//! [`AppendRequest`] over a bounded channel; the thread drains whatever is
//! queued (up to [`Limits::max_batch`]), writes all of it in one redb
//! transaction, commits once (one fsync), then answers every caller. A caller
//! is answered only after its events are durable.
//!
//! # Tables
//! - `events`: seq → postcard [`EventRecord`].
//! - `requests`: request id → the reply first given to it (dedup, written in
//!   the same transaction as the events, so a retry after a restart still
//!   gets the first answer).
//!
//! # Invariants
//! - Seqs are gap-free from 1, and each record's `prev_hash` is its
//!   predecessor's `hash`.
//! - Nothing ever updates or deletes a row of `events`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cairn_schema::record::{ChainBreak, GENESIS_HASH, check_link};
use cairn_schema::{Event, EventRecord, Hash};
use redb::{
    Database, DatabaseError, Key, ReadOnlyDatabase, ReadOnlyTable, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, Value,
};
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::{fields, spans};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");

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

/// Journal bounds, validated in one place.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Appends queued for the writer before callers wait.
    pub queue: usize,
    /// Appends written by one transaction at most.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            queue: 4096,
            max_batch: 1024,
        }
    }
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

type Pending = (AppendRequest, oneshot::Sender<Result<Appended, Error>>);

/// A handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    pub fn open(path: &Path, limits: Limits) -> Result<Journal, Error> {
        let db = Database::create(path).map_err(|e| Error::storage(path, e))?;
        let txn = db.begin_write().map_err(|e| Error::storage(path, e))?;
        txn.open_table(EVENTS)
            .map_err(|e| Error::storage(path, e))?;
        txn.open_table(REQUESTS)
            .map_err(|e| Error::storage(path, e))?;
        txn.commit().map_err(|e| Error::storage(path, e))?;
        let db = Arc::new(db);
        let head = read_head(&db, path)?;
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let writer_db = db.clone();
        let writer_path = path.to_owned();
        let max_batch = limits.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("cairn-journal".into())
            .spawn(move || write_loop(&writer_db, &writer_path, rx, head, max_batch))
            .map_err(|e| Error::storage(path, e))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
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

    /// Opens `table` in a fresh read transaction.
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<ReadOnlyTable<K, V>, Error> {
        let path = &self.inner.path;
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| Error::storage(path, e))?;
        txn.open_table(table).map_err(|e| Error::storage(path, e))
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

    /// The reply stored for a request id, if any.
    pub fn lookup_request(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = &self.inner.path;
        let table = self.table(REQUESTS)?;
        Ok(table
            .get(id)
            .map_err(|e| Error::storage(path, e))?
            .map(|v| v.value().to_vec()))
    }

    /// Checks the whole hash chain. Returns the number of records, or the
    /// first break.
    pub fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error> {
        verify_table(&self.inner.path, &self.table(EVENTS)?)
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
/// the event decodes). Returns the number of records, or the first break.
fn verify_table(
    path: &Path,
    table: &ReadOnlyTable<u64, &[u8]>,
) -> Result<Result<u64, ChainBreak>, Error> {
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
    Ok(Ok(seq))
}

/// Checks a journal file offline, for auditors and for a data dir whose
/// `cairn up` will not start: the same checks as [`Journal::verify_chain`],
/// and the file is never written. A journal left open by a crash needs
/// redb's repair before it can be read; that repair runs on a private copy.
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
    verify_table(path, &table)
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
        verify_table(path, &table)
    })();
    let _ = std::fs::remove_file(&copy);
    result
}

fn read_head(db: &Database, path: &Path) -> Result<(u64, Hash), Error> {
    let txn = db.begin_read().map_err(|e| Error::storage(path, e))?;
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

fn write_loop(
    db: &Database,
    path: &Path,
    mut rx: mpsc::Receiver<Pending>,
    mut head: (u64, Hash),
    max_batch: usize,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let span = tracing::info_span!(
            spans::JOURNAL_COMMIT,
            { fields::JOURNAL_BATCH } = batch.len() as i64,
            { fields::JOURNAL_EVENTS } = tracing::field::Empty,
            { fields::JOURNAL_FIRST_SEQ } = tracing::field::Empty,
            { fields::JOURNAL_LAST_SEQ } = tracing::field::Empty,
        )
        .entered();
        match write_batch(db, path, head, &batch) {
            Ok((new_head, results)) => {
                // i64: OTLP integers are signed (see `crate::telemetry`).
                span.record(fields::JOURNAL_EVENTS, (new_head.0 - head.0) as i64);
                if new_head.0 > head.0 {
                    span.record(fields::JOURNAL_FIRST_SEQ, (head.0 + 1) as i64);
                    span.record(fields::JOURNAL_LAST_SEQ, new_head.0 as i64);
                }
                head = new_head;
                for ((_, done), result) in batch.into_iter().zip(results) {
                    let _ = done.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal commit failed");
                for (_, done) in batch {
                    let _ = done.send(Err(Error::storage(path, &e)));
                }
            }
        }
    }
}

fn write_batch(
    db: &Database,
    path: &Path,
    head: (u64, Hash),
    batch: &[Pending],
) -> Result<((u64, Hash), Vec<Appended>), Error> {
    let (mut seq, mut hash) = head;
    let time_ms = now_ms();
    let txn = db.begin_write().map_err(|e| Error::storage(path, e))?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut events = txn
            .open_table(EVENTS)
            .map_err(|e| Error::storage(path, e))?;
        let mut requests = txn
            .open_table(REQUESTS)
            .map_err(|e| Error::storage(path, e))?;
        for (request, _) in batch {
            let c = &request.causation;
            if c.dedup {
                if let Some(first) = requests
                    .get(c.id.as_str())
                    .map_err(|e| Error::storage(path, e))?
                {
                    results.push(Appended::Duplicate(first.value().to_vec()));
                    continue;
                }
                requests
                    .insert(c.id.as_str(), request.reply.as_slice())
                    .map_err(|e| Error::storage(path, e))?;
            }
            let mut records = Vec::with_capacity(request.events.len());
            for event in &request.events {
                seq += 1;
                let record =
                    EventRecord::seal(seq, time_ms, &c.tenant, &c.id, &c.user, event, hash);
                hash = record.hash;
                events
                    .insert(seq, record.encode().as_slice())
                    .map_err(|e| Error::storage(path, e))?;
                records.push(record);
            }
            results.push(Appended::Records(records));
        }
    }
    txn.commit().map_err(|e| Error::storage(path, e))?;
    Ok(((seq, hash), results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_schema::event::VolumeCreated;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_chain_dedup_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let journal = Journal::open(
            &path,
            Limits {
                queue: 8,
                max_batch: 16,
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
            journal.lookup_request("r7").unwrap().as_deref(),
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
}
