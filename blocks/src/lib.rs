//! Cairn's block engine: a log-structured pool of thin volumes with O(1)
//! snapshots, clones and rollbacks, and the front-ends that serve them to
//! real clients: NBD ([`nbd`]) and a FUSE mount with one file per export
//! ([`fuse`]).
//!
//! # Boundaries
//! This crate knows nothing of apps, actors, tenants or NATS. Callers name
//! volumes with opaque strings (the actors layer uses `<app>/<pvc>` or a bare
//! volume name) and snapshots with `volume@snapshot` export names.
//! It is the only crate that knows the on-disk layout (`docs/design.md`).
//!
//! # Map
//! - [`pool`]: the public API, volumes, the read and write paths.
//! - [`fence`]: the per-volume I/O gate and leased fences (consistency
//!   groups across requests).
//! - `tree`: the persistent block map (structural sharing).
//! - `record`: the on-disk record, checksums, compression, encryption.
//! - `segment`: disks, append-only segment files, tail scanning.
//! - `checkpoint`: the meta log, checkpoints and recovery.
//! - `gc`: compaction, space accounting and scrubbing.
//! - [`storage`]: the IO trait, with an in-memory fault-injecting twin.
//! - [`clock`]: wall-clock time behind a trait, with a manual twin.

mod checkpoint;
pub mod clock;
mod device;
mod error;
pub mod fence;
pub mod fuse;
mod gc;
pub mod nbd;
pub mod pool;
pub mod record;
mod segment;
pub mod storage;
pub mod tree;

pub use device::Device;
pub use error::{Error, Result};
pub use fence::{FenceId, MAX_FENCE_LEASE};
pub use pool::{
    BadBlock, CompactStats, DiskUsage, ExportName, Extent, Pool, PoolOptions, SLICE_BYTES,
    ScrubReport, SnapshotInfo, VolumeInfo, VolumeOptions,
};
pub use record::Compression;

/// The block size the front-ends advertise as preferred. Requests of any
/// alignment still work.
pub const BLOCK_SIZE: u32 = 4096;
