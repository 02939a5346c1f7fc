//! How an actor runs an API command without knowing who serves it.
//!
//! A saga step is an ordinary API command ([`cairn_schema::Command`]). The
//! saga actor ([`crate::saga`]) hands it to a [`Dispatch`], which the
//! gateway implements, so `saga.rs` never names the gateway and the
//! actors' modules import each other in one direction only:
//! `gateway → {saga, app, volume, node, placement, registry} → dispatch`.
//!
//! # Invariants
//! - A [`Dispatch`] runs the command exactly as a request from the bus
//!   with the same tenant, request id and user would run (dedup included),
//!   so a step rerun after a crash gets the first answer.
//! - The saga holds the dispatcher weakly: once the gateway is gone
//!   (shutdown) a step is not started, and the saga stops to be resumed at
//!   the next start.

use cairn_schema::{ApiError, Command};
use futures::future::LocalBoxFuture;
use serde_json::Value;

/// Who sent a request, from its headers.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub request_id: Option<String>,
    pub user: Option<String>,
    /// The workflow whose step sent it, if one did.
    pub parent: Option<String>,
}

/// A command's answer: the reply body, or the error the caller gets.
pub type Reply = Result<Value, ApiError>;

/// Runs decoded commands for a tenant; the gateway is the one in production,
/// tests may put a recording twin in its place.
pub trait Dispatch: 'static {
    /// Runs one command as `caller` for `tenant`.
    fn dispatch<'a>(
        &'a self,
        tenant: &'a str,
        command: Command,
        caller: &'a Caller,
    ) -> LocalBoxFuture<'a, Reply>;

    /// A finished workflow's answer, read from the journal.
    fn workflow_result<'a>(&'a self, tenant: &'a str, id: &'a str) -> LocalBoxFuture<'a, Reply>;
}
