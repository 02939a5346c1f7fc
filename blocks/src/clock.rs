//! Wall-clock time behind a trait, so tests can move it.
//!
//! [`Clock`] is what stamps time onto durable facts: the block engine's
//! snapshot creation times, and (through `cairn-actors`, which re-exports
//! this module) the journal's record times. [`SystemClock`] reads the
//! system time; [`ManualClock`] is the twin a test sets and advances, so
//! timestamps (and the record hashes that cover them) are deterministic.
//!
//! # Why here
//! `blocks` is the lowest crate that does IO and that every effectful crate
//! depends on (`actors` depends on it; `schema` and `workflows` are pure and
//! take time as a field or return delays as numbers). The trait could live
//! in a pure crate, but its system implementation could not, and splitting
//! the two would buy nothing: nothing pure needs the trait.
//!
//! # Invariants
//! - Only wall-clock time goes through [`Clock`]. Timeouts and latency
//!   measurements use `std::time::Instant` (monotonic, never stored).
//! - A [`ManualClock`] never moves by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told: the twin for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_ms` (milliseconds since the Unix epoch).
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock to `now_ms` (backwards too: wall clocks do).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        clock.set(500);
        assert_eq!(clock.now_ms(), 500);
    }

    #[test]
    fn the_system_clock_is_past_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
