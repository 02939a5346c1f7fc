//! I/O fences: the per-volume [`Gate`] every write passes, and leased
//! fences ([`Pool::fence`], [`Pool::snapshot_fenced`], [`Pool::unfence`])
//! that hold gates closed across separate requests, so a control plane can
//! snapshot volumes on several nodes at one instant: fence all, snapshot
//! all, unfence all.
//!
//! # The gate
//! Each volume has one [`Gate`]. Writes, trims, write-zeroes and flushes of
//! a writable export pass it *shared* ([`Gate::enter`]) for the whole
//! request. It is *closed* by one holder at a time:
//! - an in-call operation ([`Gate::close`]: snapshot, snapshot group,
//!   rollback, delete), released when its guard drops;
//! - a leased fence, released by [`Pool::unfence`] or by its lease ending.
//!
//! Closing first stops new entries, then waits for the requests inside to
//! leave (drains). Reads never pass the gate: they proceed during a fence
//! and see the volume as it was when the fence closed.
//!
//! # Expiry
//! No watchdog thread: a fence's deadline ([`Instant`], monotonic) is stored
//! in each of its gates, and a fence past its deadline counts as open to
//! everyone who looks. A writer waiting at a fenced gate waits with a
//! timeout that ends at the deadline, then reopens the gate itself. So no
//! writer waits past the lease, even if nobody ever calls `unfence`, and a
//! lapsed fence holds nothing. One exception, by design: a
//! [`Pool::snapshot_fenced`] that began before the deadline pins the fence
//! until it returns (one flush and one meta-log sync), because letting a
//! write in half-way would break the snapshot's single instant.
//!
//! # Invariants
//! - No fence outlives its lease, save for finishing the `snapshot_fenced`
//!   calls begun within it; `snapshot_fenced` is refused once the lease has
//!   ended.
//! - A volume is under at most one holder: a second fence over it is
//!   refused ([`Error::Fenced`]); an in-call operation waits for the fence
//!   to end (at most its lease).
//! - Nobody waits at a gate while holding another lock of the pool: the
//!   gate comes first in the lock order (`pool.rs`), so a writer blocked by
//!   a fence cannot block the fence holder's snapshot, a checkpoint or a
//!   compaction.
//! - Gates are closed in volume-name order (fences and in-call operations
//!   alike), so two closers never wait on each other in a cycle.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pool::{Pool, Volume};
use crate::{Error, Result};

/// The longest lease a fence may have.
pub const MAX_FENCE_LEASE: Duration = Duration::from_secs(60);

/// Names one fence of one pool. Ids are not reused within a process, and
/// carry a random part so an id from before a restart matches no new fence
/// (a late `unfence` of it is a harmless no-op).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FenceId(pub u64);

impl fmt::Display for FenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fence-{:016x}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Open,
    /// An in-call operation (snapshot, rollback, delete).
    Op,
    /// A leased fence. `pins` counts `snapshot_fenced` calls under way.
    Fence {
        id: FenceId,
        until: Instant,
        pins: u32,
    },
}

struct GateState {
    /// Requests inside (writes, trims, flushes).
    inside: usize,
    /// Threads waiting to enter or to close (for tests and diagnostics).
    waiting: usize,
    holder: Holder,
}

impl GateState {
    /// Reopens a fence whose lease has ended and that no snapshot pins.
    /// True when it did (the caller wakes the other waiters).
    fn lapse(&mut self, now: Instant, volume: &str) -> bool {
        if let Holder::Fence { id, until, pins: 0 } = self.holder
            && now >= until
        {
            tracing::warn!(%volume, fence = %id, "fence lease ended before unfence; I/O resumes");
            self.holder = Holder::Open;
            return true;
        }
        false
    }

    /// How long to wait for the holder to change, or `None` to wait for a
    /// notification (the holder releases explicitly).
    fn wait_for(&self, now: Instant) -> Option<Duration> {
        match self.holder {
            Holder::Fence { until, pins: 0, .. } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }
}

/// The per-volume I/O gate. See the module docs.
pub(crate) struct Gate {
    st: Mutex<GateState>,
    cv: Condvar,
}

/// A request inside the gate; leaving wakes a closer that drains.
pub(crate) struct Inside<'a>(&'a Gate);

/// An in-call operation's hold on a closed gate; dropping reopens it.
pub(crate) struct Closed<'a>(&'a Gate);

impl Gate {
    pub fn new() -> Gate {
        Gate {
            st: Mutex::new(GateState {
                inside: 0,
                waiting: 0,
                holder: Holder::Open,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (counted in `waiting`) until `ready` holds, lapsing expired
    /// fences on the way.
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, GateState>,
        volume: &str,
        ready: impl Fn(&GateState) -> bool,
    ) -> MutexGuard<'a, GateState> {
        st.waiting += 1;
        loop {
            let now = Instant::now();
            if st.lapse(now, volume) {
                self.cv.notify_all();
            }
            if ready(&st) {
                break;
            }
            st = match st.wait_for(now) {
                Some(d) => {
                    self.cv
                        .wait_timeout(st, d)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
        st.waiting -= 1;
        st
    }

    /// Enters for one request: waits while the gate is closed (never past a
    /// fence's lease, save a snapshot begun within it).
    pub fn enter(&self, volume: &str) -> Inside<'_> {
        let st = self.lock();
        let mut st = if st.holder == Holder::Open {
            st
        } else {
            self.wait_until(st, volume, |s| s.holder == Holder::Open)
        };
        st.inside += 1;
        Inside(self)
    }

    /// Closes the gate for an in-call operation: waits for any other holder
    /// to release (a fence: at most its lease), then for the requests
    /// inside to leave.
    pub fn close(&self, volume: &str) -> Closed<'_> {
        let st = self.lock();
        let mut st = self.wait_until(st, volume, |s| s.holder == Holder::Open);
        st.holder = Holder::Op;
        let _st = self.wait_until(st, volume, |s| s.inside == 0);
        Closed(self)
    }

    /// Claims the gate for fence `id` without draining it. Refused when
    /// another fence holds it; waits for an in-call operation to finish
    /// (one flush and one log sync), and is refused if `until` passed
    /// meanwhile.
    fn claim(&self, volume: &str, id: FenceId, until: Instant) -> Result<()> {
        let st = self.lock();
        let mut st = self.wait_until(st, volume, |s| s.holder != Holder::Op);
        match st.holder {
            Holder::Open if Instant::now() < until => {
                st.holder = Holder::Fence { id, until, pins: 0 };
                Ok(())
            }
            Holder::Fence { .. } => Err(Error::Fenced {
                volume: volume.to_owned(),
            }),
            _ => Err(Error::FenceLapsed { fence: id }),
        }
    }

    /// Waits for the requests inside to leave while fence `id` holds the
    /// gate. Fails when the fence lapsed first.
    fn drain(&self, volume: &str, id: FenceId) -> Result<()> {
        let st = self.lock();
        let st = self.wait_until(st, volume, |s| !s.is_held_by(id) || s.inside == 0);
        if st.is_held_by(id) {
            Ok(())
        } else {
            Err(Error::FenceLapsed { fence: id })
        }
    }

    /// Pins fence `id` for a snapshot: refused unless it holds the gate and
    /// its lease has not ended.
    fn pin(&self, id: FenceId) -> bool {
        let mut st = self.lock();
        match &mut st.holder {
            Holder::Fence {
                id: held,
                until,
                pins,
            } if *held == id && Instant::now() < *until => {
                *pins += 1;
                true
            }
            _ => false,
        }
    }

    fn unpin(&self, id: FenceId) {
        let mut st = self.lock();
        if let Holder::Fence { id: held, pins, .. } = &mut st.holder
            && *held == id
        {
            *pins -= 1;
            if *pins == 0 {
                self.cv.notify_all();
            }
        }
    }

    /// Reopens the gate if fence `id` holds it, after any snapshot under
    /// way finishes.
    fn release(&self, volume: &str, id: FenceId) {
        let st = self.lock();
        let mut st = self.wait_until(
            st,
            volume,
            |s| !matches!(s.holder, Holder::Fence { id: held, pins, .. } if held == id && pins > 0),
        );
        if st.is_held_by(id) {
            st.holder = Holder::Open;
            self.cv.notify_all();
        }
    }

    /// Threads waiting at this gate (to enter or to close).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

impl GateState {
    fn is_held_by(&self, id: FenceId) -> bool {
        matches!(self.holder, Holder::Fence { id: held, .. } if held == id)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.inside -= 1;
        if st.inside == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.holder = Holder::Open;
        self.0.cv.notify_all();
    }
}

/// One fence the pool handed out and nobody has released yet.
struct FenceRec {
    vols: Vec<Arc<Volume>>,
    until: Instant,
}

/// The pool's fences. At most one per volume is live, and lapsed ones are
/// dropped whenever a fence is taken, so this stays bounded by the number
/// of volumes.
pub(crate) struct Fences {
    /// High 32 bits of every id: random per pool instance.
    epoch: u64,
    next: u32,
    live: HashMap<FenceId, FenceRec>,
}

impl Fences {
    pub fn new() -> Fences {
        Fences {
            epoch: (fastrand::u32(..) as u64) << 32,
            next: 0,
            live: HashMap::new(),
        }
    }

    fn next_id(&mut self) -> FenceId {
        self.next = self.next.wrapping_add(1);
        FenceId(self.epoch | self.next as u64)
    }
}

impl Pool {
    fn fences(&self) -> MutexGuard<'_, Fences> {
        self.fences.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fences `volumes` for at most `lease` (1 ms ..= [`MAX_FENCE_LEASE`]):
    /// new writes, trims, write-zeroes and flushes of them wait, and this
    /// returns once the ones in flight have finished. Reads proceed.
    ///
    /// Refused: an unknown volume ([`Error::VolumeNotFound`]), a volume
    /// under another fence ([`Error::Fenced`]), an empty list or a lease out
    /// of bounds ([`Error::InvalidArgument`]), and a lease that ends before
    /// the volumes drain ([`Error::FenceLapsed`]). A refused fence holds
    /// nothing. The lease counts from the call.
    pub fn fence(&self, volumes: &[&str], lease: Duration) -> Result<FenceId> {
        if lease.is_zero() || lease > MAX_FENCE_LEASE {
            return Err(Error::InvalidArgument(format!(
                "a fence lease must be more than 0 and at most {MAX_FENCE_LEASE:?}, not {lease:?}"
            )));
        }
        if volumes.is_empty() {
            return Err(Error::InvalidArgument("a fence needs a volume".into()));
        }
        let until = Instant::now() + lease;
        let mut vols = volumes
            .iter()
            .map(|v| self.inner.volume(v))
            .collect::<Result<Vec<_>>>()?;
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        vols.dedup_by_key(|v| v.id);
        let id = {
            let mut fences = self.fences();
            let now = Instant::now();
            fences.live.retain(|_, f| f.until > now);
            fences.next_id()
        };
        let release = |claimed: &[Arc<Volume>]| {
            for v in claimed {
                v.gate.release(&v.name, id);
            }
        };
        // Claim every gate before draining any, so all stop admitting at
        // once; in name order, like every closer.
        for (i, vol) in vols.iter().enumerate() {
            if let Err(e) = vol.gate.claim(&vol.name, id, until) {
                release(&vols[..i]);
                return Err(e);
            }
        }
        for vol in &vols {
            let refused = if vol.deleted.load(Ordering::Acquire) {
                Err(Error::VolumeNotFound {
                    volume: vol.name.clone(),
                })
            } else {
                vol.gate.drain(&vol.name, id)
            };
            if let Err(e) = refused {
                release(&vols);
                return Err(e);
            }
        }
        self.fences().live.insert(id, FenceRec { vols, until });
        Ok(id)
    }

    /// Snapshots `(volume, snapshot)` items under fence `id` at one instant,
    /// the way [`Pool::snapshot_group`] does: one flush, then one logged
    /// batch. Every item's volume must be under the fence (a subset is
    /// fine). Refused with [`Error::FenceLapsed`] when the fence's lease has
    /// ended or it was released; nothing is snapshotted then.
    pub fn snapshot_fenced(&self, id: FenceId, items: &[(&str, &str)]) -> Result<()> {
        if items.is_empty() {
            return Err(Error::InvalidArgument("no snapshot to take".into()));
        }
        for (_, s) in items {
            crate::pool::check_name(s, "snapshot")?;
        }
        let fenced: Vec<Arc<Volume>> = {
            let mut fences = self.fences();
            let now = Instant::now();
            match fences.live.get(&id) {
                Some(f) if f.until > now => f.vols.clone(),
                Some(_) => {
                    fences.live.remove(&id);
                    return Err(Error::FenceLapsed { fence: id });
                }
                None => return Err(Error::FenceLapsed { fence: id }),
            }
        };
        let mut resolved = Vec::with_capacity(items.len());
        for (v, s) in items {
            let vol = fenced
                .iter()
                .find(|f| f.name == *v)
                .ok_or_else(|| Error::InvalidArgument(format!("volume {v:?} is not under {id}")))?;
            resolved.push((vol.clone(), *s));
        }
        // Unpinned on every way out, a panic included: a pin left behind
        // would hold the fence past its lease.
        struct Pins<'a>(FenceId, Vec<&'a Arc<Volume>>);
        impl Drop for Pins<'_> {
            fn drop(&mut self) {
                for v in &self.1 {
                    v.gate.unpin(self.0);
                }
            }
        }
        let mut pins = Pins(id, vec![]);
        for (vol, _) in &resolved {
            if pins.1.iter().any(|p| p.id == vol.id) {
                continue;
            }
            if !vol.gate.pin(id) {
                return Err(Error::FenceLapsed { fence: id });
            }
            pins.1.push(vol);
        }
        self.take_snapshots(&resolved)
    }

    /// Releases fence `id`: its volumes' writers resume. Idempotent: an id
    /// already released, lapsed or unknown (from before a restart) returns
    /// `Ok(())` as well, since in every case nothing is fenced by it. Waits
    /// for a `snapshot_fenced` under way on it to finish.
    pub fn unfence(&self, id: FenceId) -> Result<()> {
        let rec = self.fences().live.remove(&id);
        if let Some(rec) = rec {
            for vol in &rec.vols {
                vol.gate.release(&vol.name, id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
