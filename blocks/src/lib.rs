//! Cairn's block engine: a pool of thin volumes with snapshots, and the
//! front-ends that serve them to real clients: NBD ([`nbd`]) and a FUSE
//! mount with one file per export ([`fuse`]).
//!
//! # Boundaries
//! This crate knows nothing of apps, actors, tenants or NATS. Callers name
//! volumes with opaque strings (the actors layer uses `<app>/<pvc>` or a bare
//! volume name) and snapshots with `volume@snapshot` export names.
//! It is the only crate that knows the on-disk layout.
//!
//! # Engine
//! The engine behind [`Pool`] is the walking-skeleton engine: one sparse file
//! per volume, and snapshots taken by a hole-skipping copy. The log-structured
//! engine of DESIGN.md replaces it behind the same API (see issue 3).

mod device;
mod error;
pub mod fuse;
pub mod nbd;
mod pool;

pub use device::Device;
pub use error::{Error, Result};
pub use pool::{ExportName, Pool, SnapshotInfo, VolumeInfo};

/// The block size the front-ends advertise as preferred. Requests of any
/// alignment still work.
pub const BLOCK_SIZE: u32 = 4096;
