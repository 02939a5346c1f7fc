//! Cairn's runtime: the only crate where side effects happen.
//!
//! - [`journal`]: the `Journal` trait: the hash-chained redb event log with
//!   group commit, its in-memory twin and a fault-injecting wrapper.
//! - [`clock`]: wall-clock time behind a trait (re-exported from
//!   `cairn_blocks::clock`), with a manual twin for tests.
//! - [`bus`]: NATS (or the in-process twin) for commands and events.
//! - [`volume`]: the volume actor (actix), one per volume.
//! - [`app`]: the app actor, one per app; commits an app's events with its
//!   volumes' events.
//! - [`placement`]: the one owner of slice placement (plans and
//!   reservations), so concurrent app creates never overcommit a disk.
//! - [`node`]: the node actor; registers the node and its disks.
//! - [`failpoint`]: test-only failure injection (`CAIRN_FAILPOINTS`), compiled
//!   only with the `failpoints` cargo feature.
//! - [`registry`]: finds actors by name (dashmap).
//! - [`repo`]: the backup repository library, re-exported from its own
//!   crate `cairn-repo` (push and pull app snapshots to S3 or a directory).
//! - [`dispatch`]: the `Dispatch` trait saga steps run commands through.
//! - [`repo_actor`]: the owner of repository registrations and push
//!   records; [`workflow`]: the owner of workflow aggregates (every
//!   workflow fact is journaled through it).
//! - [`gateway`]: decodes requests from the bus, routes them, replies.
//! - [`cluster`]: wires everything for `cairn up` and `cairn demo`, rebuilds
//!   state from the journal at start-up and reconciles the block engine.
//! - [`nats_server`]: spawns a private nats-server when one is installed.
//! - [`telemetry`]: span names and `cairn.*` span field names.
//! - [`security`]: the operator's settings; [`hooks`]: app hooks under
//!   them; [`secrets`]: the cluster key that seals secrets in the journal.
//!
//! # Architecture invariant
//! Deciding is pure (`cairn_schema`); this crate only carries out what the
//! deciders return, in the order the volume actor documents.

pub mod app;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod dispatch;
pub mod failpoint;
pub mod gateway;
pub mod hooks;
pub mod journal;
pub mod nats_auth;
pub mod nats_server;
pub mod nbd_access;
pub mod node;
pub mod placement;
pub mod registry;
pub mod repo_actor;
pub mod saga;
pub mod secrets;
pub mod security;
pub mod services;
pub mod telemetry;
pub mod volume;
pub mod workflow;

#[cfg(test)]
mod control_tests;

pub use cairn_blocks::clock;
pub use cairn_repo as repo;

/// Runtime bounds, validated in one place ([`Limits::sanitize`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages queued in one actor's mailbox.
    pub mailbox: usize,
    /// Requests the gateway works on at once.
    pub max_in_flight: usize,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    pub journal: journal::Limits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            mailbox: 256,
            max_in_flight: 1024,
            max_request_bytes: 1 << 20,
            journal: journal::Limits::default(),
        }
    }
}

impl Limits {
    /// Clamps every bound into a range that works.
    pub fn sanitize(mut self) -> Limits {
        self.mailbox = self.mailbox.clamp(1, 1 << 16);
        self.max_in_flight = self.max_in_flight.clamp(1, 1 << 16);
        self.max_request_bytes = self.max_request_bytes.clamp(1024, 64 << 20);
        self.journal.queue = self.journal.queue.clamp(1, 1 << 20);
        self.journal.max_batch = self.journal.max_batch.clamp(1, 1 << 16);
        self.journal.snapshot_every = self.journal.snapshot_every.clamp(1, 1 << 32);
        self.journal.snapshots_kept = self.journal.snapshots_kept.clamp(1, 16);
        self.journal.wal_bytes = self.journal.wal_bytes.clamp(64 << 10, 1 << 30);
        self
    }
}
