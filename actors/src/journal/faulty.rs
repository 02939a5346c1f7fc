//! [`FaultyJournal`]: a wrapper around any [`Journal`] that injects faults
//! into appends, at scheduled appends or at seeded random ones.
//!
//! # Faults
//! - [`Fault::FailCommit`]: the commit fails (for the redb journal: the
//!   log frame's write or `fdatasync`, or redb's commit, fails). The caller
//!   gets [`Error::Storage`]; nothing is appended, no request id is stored,
//!   and the next append works. The wrapper does not call the inner
//!   journal, which is exactly what the redb journal guarantees (its
//!   transaction is dropped, its frame erased or overwritten).
//! - [`Fault::Tear`]: the process dies while writing the batch's log
//!   frame. redb's own commits are transactional (copy-on-write pages, a
//!   checksummed header), so a torn write never shows inside
//!   `journal.redb`; batches reach it only through the write-ahead log
//!   (an in-memory commit) or a checkpoint (a durable commit, atomic). The
//!   one torn thing a crash leaves is therefore the last frame of
//!   `journal.wal`: a prefix of its bytes. Recovery reads frames up to the
//!   first that is cut short or fails its checksum, and the log continues
//!   from the last intact one; the torn batch was never answered and is
//!   lost. The twin models that by writing a prefix of the frame to its
//!   [`super::MemDisk`] and refusing everything after (the process is
//!   dead) until it is reopened. A prefix of the whole frame is the crash
//!   after the `fdatasync` but before the answer: the batch is durable and
//!   unanswered. Only journals that implement [`Tear`] can tear (the
//!   in-memory twin); the redb journal's torn log is tested on its file
//!   (`journal/tests.rs`).
//!
//! # Determinism
//! Faults come from a schedule (the n-th append through the wrapper) or
//! from a seeded generator, never from the clock or the OS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use cairn_schema::World;
use cairn_schema::record::ChainBreak;
use futures::future::BoxFuture;

use super::{
    AppendRequest, Appended, Error, FullReplay, Journal, MemJournal, Recovery, SnapshotInfo,
};
use cairn_schema::EventRecord;

/// One injected fault. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The commit fails; nothing is appended.
    FailCommit,
    /// A crash while writing the log frame: `keep_bytes` of it reach the
    /// disk.
    Tear { keep_bytes: usize },
}

/// A journal that can crash in the middle of writing an append's log frame.
pub trait Tear: Journal {
    /// Writes the first `keep_bytes` of `request`'s frame, then crashes:
    /// nothing is applied, and every later append fails with
    /// [`Error::Closed`] until the journal is reopened from its disk.
    /// Returns the error the (never answered) caller sees.
    fn append_torn(&self, request: AppendRequest, keep_bytes: usize) -> Error;
}

impl Tear for MemJournal {
    fn append_torn(&self, request: AppendRequest, keep_bytes: usize) -> Error {
        self.tear(request, keep_bytes)
    }
}

type TearFn<J> = fn(&J, AppendRequest, usize) -> Error;

/// The wrapper. See the module docs.
pub struct FaultyJournal<J> {
    inner: J,
    tear: Option<TearFn<J>>,
    plan: Mutex<Plan>,
    /// A frame was torn ([`Fault::Tear`]).
    torn: std::sync::atomic::AtomicBool,
    /// After a tear, appends never answer (see [`FaultyJournal::hang_when_torn`]).
    hang_when_torn: std::sync::atomic::AtomicBool,
}

struct Plan {
    /// Appends seen so far.
    appends: u64,
    /// Append number (1-based) → its fault.
    scheduled: BTreeMap<u64, Fault>,
    /// (seeded generator, one in how many appends fails its commit).
    random: Option<(fastrand::Rng, u64)>,
}

impl<J: Journal> FaultyJournal<J> {
    /// Wraps `inner`; no fault is planned yet. [`Fault::Tear`] needs
    /// [`FaultyJournal::tearing`].
    pub fn new(inner: J) -> FaultyJournal<J> {
        FaultyJournal {
            inner,
            tear: None,
            torn: Default::default(),
            hang_when_torn: Default::default(),
            plan: Mutex::new(Plan {
                appends: 0,
                scheduled: BTreeMap::new(),
                random: None,
            }),
        }
    }

    /// The journal underneath.
    pub fn inner(&self) -> &J {
        &self.inner
    }

    /// Injects `fault` into the `nth` append through this wrapper (1-based,
    /// counting every append since it was made).
    pub fn inject_at(&self, nth: u64, fault: Fault) {
        assert!(
            fault == Fault::FailCommit || self.tear.is_some(),
            "this journal cannot tear a frame: build the wrapper with `tearing`"
        );
        self.plan.lock().unwrap().scheduled.insert(nth, fault);
    }

    /// Drops every scheduled fault not reached yet.
    pub fn clear_scheduled(&self) {
        self.plan.lock().unwrap().scheduled.clear();
    }

    /// Injects `fault` into the next append.
    pub fn inject_next(&self, fault: Fault) {
        let next = self.plan.lock().unwrap().appends + 1;
        self.inject_at(next, fault);
    }

    /// Fails the commit of about one append in `one_in`, chosen by a
    /// generator seeded with `seed` (the same seed fails the same appends).
    pub fn fail_randomly(&self, seed: u64, one_in: u64) {
        self.plan.lock().unwrap().random = Some((fastrand::Rng::with_seed(seed), one_in.max(1)));
    }

    /// Makes a tear stop the process's journal for good, like the death it
    /// models: the torn append and every later one never answer, so no
    /// caller runs its after-a-failed-commit cleanup (a dead process runs
    /// nothing). Without it the torn append answers an error and later
    /// ones [`Error::Closed`], which tests of the journal itself check.
    /// A test then restarts from the disk once [`FaultyJournal::is_torn`].
    pub fn hang_when_torn(&self) {
        self.hang_when_torn
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a frame has been torn.
    pub fn is_torn(&self) -> bool {
        self.torn.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends seen so far (failed ones included).
    pub fn appends(&self) -> u64 {
        self.plan.lock().unwrap().appends
    }

    fn next_fault(&self) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        plan.appends += 1;
        let n = plan.appends;
        if let Some(fault) = plan.scheduled.remove(&n) {
            return Some(fault);
        }
        let (rng, one_in) = plan.random.as_mut()?;
        let one_in = *one_in;
        rng.u64(..)
            .is_multiple_of(one_in)
            .then_some(Fault::FailCommit)
    }
}

impl<J: Tear> FaultyJournal<J> {
    /// Wraps `inner`, which can also tear frames.
    pub fn tearing(inner: J) -> FaultyJournal<J> {
        FaultyJournal {
            tear: Some(|journal: &J, request, keep| journal.append_torn(request, keep)),
            ..FaultyJournal::new(inner)
        }
    }
}

impl<J: Journal> Journal for FaultyJournal<J> {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<Appended, Error>> {
        let hang = self
            .hang_when_torn
            .load(std::sync::atomic::Ordering::SeqCst);
        if hang && self.is_torn() {
            return Box::pin(std::future::pending());
        }
        match self.next_fault() {
            None => self.inner.append(request),
            Some(Fault::FailCommit) => Box::pin(std::future::ready(Err(Error::Storage {
                path: PathBuf::from("<faulty journal>"),
                message: "injected fault: the commit's fdatasync failed".into(),
            }))),
            Some(Fault::Tear { keep_bytes }) => {
                let tear = self.tear.expect("checked when injected");
                let error = tear(&self.inner, request, keep_bytes);
                self.torn.store(true, std::sync::atomic::Ordering::SeqCst);
                if hang {
                    Box::pin(std::future::pending())
                } else {
                    Box::pin(std::future::ready(Err(error)))
                }
            }
        }
    }

    fn close(&self) {
        self.inner.close()
    }

    fn recovery(&self) -> Recovery {
        self.inner.recovery()
    }

    fn world(&self) -> Result<World, Error> {
        self.inner.world()
    }

    fn fold_to(&self, seq: u64) -> Result<World, Error> {
        self.inner.fold_to(seq)
    }

    fn replay_full(&self) -> Result<FullReplay, Error> {
        self.inner.replay_full()
    }

    fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        self.inner.snapshots()
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, Error> {
        self.inner.read(from, limit)
    }

    fn lookup_request(&self, tenant: &str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner.lookup_request(tenant, id)
    }

    fn verify_chain(&self) -> Result<Result<u64, ChainBreak>, Error> {
        self.inner.verify_chain()
    }

    fn len(&self) -> Result<u64, Error> {
        self.inner.len()
    }
}
