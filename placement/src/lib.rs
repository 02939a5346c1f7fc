//! Cairn's placement planner: which disk holds each slice of an app's
//! volumes. Pure, like `schema`: no IO, no clock, no randomness.
//!
//! - [`topology`]: the cluster ([`Topology`]: nodes, racks, datacenters,
//!   disks with media and capacity), from the `kind: Topology` YAML document
//!   or simulated for `--nodes N`.
//! - [`placement`]: the planner ([`plan`] over a [`Request`] and the
//!   [`Usage`] of the disks gives a [`Plan`] or a [`PlacementError`] a person
//!   can act on), and `failure_impact` for `cairn node fail`.
//! - [`app_placement`]: the bridge from the journal's app and node states to
//!   the planner, and the `AppPlaced` event for an app command's new volumes.
//!
//! # Invariants
//! - Deterministic: the same topology, usage and request always give the
//!   same plan, so replaying the journal gives the same placements.
//! - A plan never puts a slice on a failed node or over a disk's capacity,
//!   and keeps every volume on one node; a refusal other than `SearchLimit`
//!   means no placement exists.

pub mod app_placement;
pub mod placement;
pub mod topology;

pub use placement::{Error as PlacementError, Plan, Request, Usage, plan};
pub use topology::Topology;
