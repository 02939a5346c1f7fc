//! The journal: the append-only, hash-chained event log in redb, and
//! periodic snapshots of the state it folds to.
//!
//! # One trait, three implementations
//! Callers (the actors, the gateway, start-up) hold an
//! `Arc<dyn Journal>`. [`RedbJournal`] is the real one (the rest of this
//! doc describes it). [`MemJournal`] is its in-memory twin: the same
//! records, hash chain, dedup, snapshots and checks (it folds, restores and
//! verifies with the same code), durable only in a [`MemDisk`] that
//! survives a simulated crash. [`FaultyJournal`] wraps either and injects
//! a failed commit, or a torn write-ahead-log frame (see `faulty.rs` for
//! what "torn" means for redb and how the twin models it).
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
//! drops all but the newest [`Limits::snapshots_kept`]. [`RedbJournal::open`]
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
//! # Files
//! - this file: the vocabulary every journal shares (requests, replies,
//!   limits, errors, what recovery and verification report);
//! - `writer.rs`: the redb journal: open and recovery, the writer thread
//!   and group commit, reads;
//! - `wal.rs`: the write-ahead log's frames and file;
//! - `verify.rs`: the hash-chain checks (the checked fold, `verify_chain`,
//!   the offline `verify_file`);
//! - `snapshots.rs`: the snapshot row format, restoring the state from the
//!   newest usable snapshot, and checking one against a full fold.
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

use cairn_schema::record::ChainBreak;
use cairn_schema::{Event, EventRecord, World};
use futures::future::BoxFuture;

mod faulty;
mod memory;
mod snapshots;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod twin_tests;
mod verify;
mod wal;
mod writer;

pub use faulty::{Fault, FaultyJournal, Tear};
pub use memory::{MemDisk, MemJournal};
pub use verify::verify_file;
pub use writer::RedbJournal;

/// The event log, as every caller sees it. Object safe: callers hold an
/// `Arc<dyn Journal>`.
///
/// Every implementation keeps the same contract: seqs gap-free from 1, each
/// record chained to its predecessor by hash, a request id (scoped by
/// tenant, [`dedup_key`]) and its reply stored with the events of the same
/// append, snapshots that are caches of the fold, and an append answered
/// only once durable.
pub trait Journal: Send + Sync {
    /// Appends events durably (atomically: all or none). Resolves after the
    /// commit; a request id seen before gets [`Appended::Duplicate`].
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<Appended, Error>>;

    /// Stops taking appends, waits for those queued and makes everything
    /// durable on its own (a checkpoint). Later appends fail with
    /// [`Error::Closed`]; reads keep working. Idempotent.
    fn close(&self);

    /// How opening rebuilt the state.
    fn recovery(&self) -> Recovery;

    /// The state folded up to the head (every committed record).
    fn world(&self) -> Result<World, Error>;

    /// The state after records `1..=seq` (or up to the head, if `seq` is
    /// beyond it; the result's `seq` says where it stopped): the newest
    /// usable snapshot at or below `seq`, then the records after it.
    fn fold_to(&self, seq: u64) -> Result<World, Error>;

    /// Folds every record from seq 1, ignoring snapshots, and checks the
    /// newest snapshot against the fold at its seq, both at one instant.
    fn replay_full(&self) -> Result<FullReplay, Error>;

    /// The stored snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error>;

    /// Records with seq in `from..` (at most `limit`), in order.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, Error>;

    /// The reply stored for a tenant's request id, if any. Request ids are
    /// scoped by tenant: one tenant reusing another's id finds nothing.
    fn lookup_request(&self, tenant: &str, id: &str) -> Result<Option<Vec<u8>>, Error>;

    /// Checks the whole hash chain. Returns the number of records, or the
    /// first break.
    fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error>;

    /// The number of records.
    fn len(&self) -> Result<u64, Error>;

    fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Visits every record in order; stops at the first error.
    fn scan(&self, visit: &mut dyn FnMut(EventRecord) -> Result<(), Error>) -> Result<(), Error> {
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
}

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
    pub(crate) fn storage(path: &Path, e: impl std::fmt::Display) -> Error {
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

impl Limits {
    /// Every bound at least 1 (a journal works with any limits; the
    /// operator's are clamped by [`crate::Limits::sanitize`]).
    pub(crate) fn at_least_one(self) -> Limits {
        Limits {
            queue: self.queue.max(1),
            max_batch: self.max_batch.max(1),
            snapshot_every: self.snapshot_every.max(1),
            snapshots_kept: self.snapshots_kept.max(1),
            wal_bytes: self.wal_bytes.max(1),
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

/// How the journal rebuilt its state at open.
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
