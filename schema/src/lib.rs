//! Cairn's vocabulary, shared by every other crate: names, commands, events,
//! state folds and deciders, the journal record and its hash chain, subjects,
//! error codes, the typed replies ([`reply`]) and the API table that the
//! AsyncAPI document is generated from ([`api`]).
//!
//! # Architecture invariant
//! This crate does no IO, reads no clock and has no async code. Time enters
//! only as a field the journal fills in. Event tags are explicit and never
//! reused (see [`event`]).

pub mod api;
pub mod app;
pub mod app_history;
pub mod command;
pub mod error;
pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod names;
pub mod record;
pub mod reply;
pub mod repo;
pub mod sealed;
pub mod state;
pub mod subject;
pub mod time;
pub mod workflow;
pub mod yaml;

pub use app::{AppCommand, AppState};
pub use command::{Command, Query, VolumeCommand};
pub use error::{ApiError, ErrorCode};
pub use event::Event;
pub use record::{EventRecord, EventView, Hash};
pub use state::{VolumeState, World};
