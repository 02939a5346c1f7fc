//! The placement actor: the one owner of where app volumes' slices go.
//!
//! Every app command that creates volumes (create, scale-out, clone, pull)
//! asks this actor for its `AppPlaced` event ([`Reserve`]). The actor
//! plans it with the pure planner ([`cairn_placement::app_placement::place`])
//! against its own view of the cluster's use and reserves the slices at
//! once, so the next plan, for any app, counts them. Plans are made one at
//! a time (the actor's mailbox is the queue).
//!
//! # State
//! - `committed`: per (tenant, app), the slices its journaled state holds
//!   (`AppState::placement`), seeded from the journal at start-up and
//!   replaced by the app actor after each of its commits ([`Settle`]).
//! - `pending`: reservations handed out whose command has not committed
//!   yet, by ticket.
//!
//! # Invariants
//! - A reservation is counted until its app actor settles it: with the
//!   app's committed placement after the commit ([`Settle`]), or by
//!   releasing it when the command failed ([`Release`]). A slice is never
//!   missing from the view between a plan and its commit, so two
//!   concurrent app creates cannot both be given the last free space.
//! - An app actor that died is rebuilt from the journal and settles with
//!   the journal's placement, dropping its reservations ([`Settle`] with no
//!   ticket): a reservation is never kept for a command that will not
//!   commit, except until then (conservative: refuses, never overcommits).
//! - Pure decisions only: the topology comes with each request (the node
//!   actors own it), and this actor does no IO.

use std::collections::BTreeMap;

use actix::prelude::*;
use cairn_placement::app_placement::{place, usage_of};
use cairn_placement::{Topology, Usage};
use cairn_schema::app::AppState;
use cairn_schema::event::PlacedVolume;
use cairn_schema::{ApiError, Event};

type Key = (String, String);

/// The placement view of the whole cluster.
#[derive(Default)]
pub struct PlacementActor {
    committed: BTreeMap<Key, Vec<PlacedVolume>>,
    pending: BTreeMap<u64, (Key, Vec<PlacedVolume>)>,
    next_ticket: u64,
    mailbox: usize,
}

impl PlacementActor {
    /// The view at start-up: every existing app's journaled placement.
    pub fn new<'a>(
        apps: impl IntoIterator<Item = (&'a Key, &'a AppState)>,
        mailbox: usize,
    ) -> PlacementActor {
        PlacementActor {
            committed: apps
                .into_iter()
                .filter(|(_, state)| state.exists())
                .map(|(key, state)| (key.clone(), placed_of(state)))
                .collect(),
            pending: BTreeMap::new(),
            next_ticket: 1,
            mailbox,
        }
    }

    /// What every app holds or has reserved, on each disk.
    fn usage(&self, topology: &Topology) -> Usage {
        let holders: Vec<AppState> = self
            .committed
            .values()
            .chain(self.pending.values().map(|(_, placed)| placed))
            .map(|placed| AppState {
                placement: placed
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("{i}"), p.clone()))
                    .collect(),
                ..AppState::default()
            })
            .collect();
        usage_of(holders.iter(), topology)
    }
}

/// The slices an app's journaled state holds (none once it is deleted).
pub fn placed_of(state: &AppState) -> Vec<PlacedVolume> {
    if state.exists() {
        state.placement.values().cloned().collect()
    } else {
        Vec::new()
    }
}

impl Actor for PlacementActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox.max(1));
    }
}

/// Plan the volumes an app command's events create and reserve them.
#[derive(Message)]
#[rtype(result = "Result<Reservation, ApiError>")]
pub struct Reserve {
    pub tenant: String,
    /// The app's state before the command.
    pub before: AppState,
    /// The command's decided events.
    pub events: Vec<Event>,
    pub topology: Topology,
}

/// A plan held for one command until its app actor settles it.
#[derive(Debug)]
pub struct Reservation {
    /// 0: nothing was reserved (the command creates no app volume).
    pub ticket: u64,
    /// The `AppPlaced` event to journal with the command's events.
    pub placed: Option<Event>,
}

impl Handler<Reserve> for PlacementActor {
    type Result = Result<Reservation, ApiError>;

    fn handle(&mut self, msg: Reserve, _: &mut Self::Context) -> Self::Result {
        let usage = self.usage(&msg.topology);
        let placed = place(&msg.before, &msg.events, &msg.topology, &usage)?;
        let Some(Event::AppPlaced(p)) = &placed else {
            return Ok(Reservation { ticket: 0, placed });
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let key = (msg.tenant, p.app.clone());
        self.pending.insert(ticket, (key, p.volumes.clone()));
        Ok(Reservation { ticket, placed })
    }
}

/// An app's commit landed: its placement is now `placed` (its state's
/// after the commit), and its reservation `ticket` (if any) is used up.
/// With `ticket: None` and `rebuilt: true` (an app actor rebuilt from the
/// journal) every reservation of the app is dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub tenant: String,
    pub app: String,
    pub ticket: Option<u64>,
    pub placed: Vec<PlacedVolume>,
    pub rebuilt: bool,
}

impl Handler<Settle> for PlacementActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) {
        let key = (msg.tenant, msg.app);
        if let Some(ticket) = msg.ticket {
            self.pending.remove(&ticket);
        }
        if msg.rebuilt {
            self.pending.retain(|_, (k, _)| *k != key);
        }
        if msg.placed.is_empty() {
            self.committed.remove(&key);
        } else {
            self.committed.insert(key, msg.placed);
        }
    }
}

/// A command that reserved failed before its commit: give the slices back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub u64);

impl Handler<Release> for PlacementActor {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Self::Context) {
        self.pending.remove(&msg.0);
    }
}

/// The number of reservations not settled yet (tests check none leak).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Pending;

impl Handler<Pending> for PlacementActor {
    type Result = usize;

    fn handle(&mut self, _: Pending, _: &mut Self::Context) -> usize {
        self.pending.len()
    }
}
