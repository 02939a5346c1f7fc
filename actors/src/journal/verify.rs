//! Checking the hash chain: the checked fold every recovery and replay uses
//! ([`fold_range`]), the whole-chain check behind `events verify`
//! ([`verify_rows`]), and the offline check of a journal file
//! ([`verify_file`]) that never writes it.
//!
//! # Rows
//! Every check reads records through [`Rows`] (seq → encoded
//! [`EventRecord`]), which the redb tables ([`RedbRows`]) and the in-memory
//! twin's map both implement: the twin folds, restores and verifies with
//! this same code, so it cannot drift from the redb journal's semantics.
//!
//! # Invariants
//! - A record that fails a check (decodes, stored under its own seq,
//!   gap-free, linked to its predecessor, hash matches its contents, event
//!   decodes) is never folded: the fold stops with [`Error::Corrupted`].
//! - The offline check opens the file read-only; a journal left open by a
//!   crash is repaired on a private copy, never in place.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_schema::record::{ChainBreak, GENESIS_HASH, check_link};
use cairn_schema::{EventRecord, Hash, World};
use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::writer::EVENTS;
use super::{Error, wal};

/// Sees one row (seq, bytes); returns `Ok(false)` to stop.
pub(super) type Visit<'a> = dyn FnMut(u64, &[u8]) -> Result<bool, Error> + 'a;

/// Ordered rows keyed by seq: the `events` rows (encoded records) or the
/// `snapshots` rows. A visitor returns `Ok(false)` to stop early.
pub(super) trait Rows {
    /// Rows with seq in `from..=to`, oldest first.
    fn visit(&self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), Error>;
    /// Rows with seq at or below `to`, newest first.
    fn visit_rev(&self, to: u64, visit: &mut Visit<'_>) -> Result<(), Error>;
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, Error>;

    /// The row with the highest seq.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let mut last = None;
        self.visit_rev(u64::MAX, &mut |seq, bytes| {
            last = Some((seq, bytes.to_vec()));
            Ok(false)
        })?;
        Ok(last)
    }
}

/// A redb table of `u64 → bytes`, read as [`Rows`]; `path` names the file
/// in errors.
pub(super) struct RedbRows<'a, T> {
    pub table: &'a T,
    pub path: &'a Path,
}

impl<T: ReadableTable<u64, &'static [u8]>> Rows for RedbRows<'_, T> {
    fn visit(&self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        if from > to {
            return Ok(());
        }
        let storage = |e: redb::StorageError| Error::storage(self.path, e);
        for row in self.table.range(from..=to).map_err(storage)? {
            let (key, bytes) = row.map_err(storage)?;
            if !visit(key.value(), bytes.value())? {
                break;
            }
        }
        Ok(())
    }

    fn visit_rev(&self, to: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        let storage = |e: redb::StorageError| Error::storage(self.path, e);
        for row in self.table.range(..=to).map_err(storage)?.rev() {
            let (key, bytes) = row.map_err(storage)?;
            if !visit(key.value(), bytes.value())? {
                break;
            }
        }
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .table
            .get(seq)
            .map_err(|e| Error::storage(self.path, e))?
            .map(|v| v.value().to_vec()))
    }
}

impl Rows for BTreeMap<u64, Vec<u8>> {
    fn visit(&self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        if from > to {
            return Ok(());
        }
        for (seq, bytes) in self.range(from..=to) {
            if !visit(*seq, bytes)? {
                break;
            }
        }
        Ok(())
    }

    fn visit_rev(&self, to: u64, visit: &mut Visit<'_>) -> Result<(), Error> {
        for (seq, bytes) in self.range(..=to).rev() {
            if !visit(*seq, bytes)? {
                break;
            }
        }
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, Error> {
        Ok(BTreeMap::get(self, &seq).cloned())
    }
}

/// Checks every record of `events`: it decodes, is stored under its own
/// seq, and [`check_link`] holds (gap-free, linked, hash matches the
/// contents, the event decodes). Returns the number of records and the last
/// one's hash, or the first break.
pub(super) fn verify_rows(events: &impl Rows) -> Result<Result<(u64, Hash), ChainBreak>, Error> {
    let (mut seq, mut hash) = (0u64, GENESIS_HASH);
    let mut broken = None;
    events.visit(0, u64::MAX, &mut |key, bytes| {
        let record = match EventRecord::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                broken = Some(ChainBreak {
                    seq: key,
                    reason: format!("record does not decode: {e}"),
                });
                return Ok(false);
            }
        };
        if record.seq != key {
            broken = Some(ChainBreak {
                seq: key,
                reason: format!("stored under key {key} but says seq {}", record.seq),
            });
            return Ok(false);
        }
        if let Err(b) = check_link(seq, &hash, &record) {
            broken = Some(b);
            return Ok(false);
        }
        (seq, hash) = (record.seq, record.hash);
        Ok(true)
    })?;
    Ok(match broken {
        Some(b) => Err(b),
        None => Ok((seq, hash)),
    })
}

/// Checks a journal file offline, for auditors and for a data dir whose
/// `cairn up` will not start: the same checks as [`super::Journal::verify_chain`],
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
    let rows = RedbRows {
        table: &table,
        path,
    };
    verify_with_wal(path, verify_rows(&rows)?)
}

/// Continues a check of the records in redb (ending at `checked`) with the
/// write-ahead log's records after them, as the journal's recovery would
/// apply them.
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
    // Unique within the process (pid) and across calls (counter); a stale
    // copy of an earlier process with this pid is overwritten.
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = std::env::temp_dir().join(format!("cairn-verify-{}-{n}.redb", std::process::id()));
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
        let rows = RedbRows {
            table: &table,
            path,
        };
        verify_with_wal(path, verify_rows(&rows)?)
    })();
    let _ = std::fs::remove_file(&copy);
    result
}

/// Folds records `from..=to` into `world`, which must stand at `from - 1`,
/// whose record hashes to `prev_hash`. Checks the chain on the way (gap-free,
/// linked, each hash matches its record): a record that fails is
/// [`Error::Corrupted`], never folded. Returns the hash of record `to`.
pub(super) fn fold_range(
    events: &impl Rows,
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
    events.visit(from, to, &mut |seq, bytes| {
        let corrupted = |message: String| Error::Corrupted { seq, message };
        record
            .decode_into(bytes)
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
        Ok(true)
    })?;
    if world.seq != to {
        return Err(Error::Corrupted {
            seq: world.seq + 1,
            message: format!("missing (the fold stops at {} of {to})", world.seq),
        });
    }
    Ok(prev_hash)
}

/// The head of `events`: the last record's seq and hash ((0, genesis) when
/// empty).
pub(super) fn head(events: &impl Rows) -> Result<(u64, Hash), Error> {
    match events.last()? {
        None => Ok((0, GENESIS_HASH)),
        Some((seq, bytes)) => {
            let record = EventRecord::decode(&bytes).map_err(|e| Error::Corrupted {
                seq,
                message: e.to_string(),
            })?;
            Ok((seq, record.hash))
        }
    }
}
