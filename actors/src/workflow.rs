//! The workflow actor: the one owner of the workflow aggregates
//! (`workflow/<id>`) of every tenant. Every workflow fact is journaled
//! through it: `WorkflowStarted` and `WorkflowResumed` for the gateway,
//! and each saga's progress facts ([`crate::saga`]); it folds each
//! committed record into its state and publishes it.
//!
//! # State
//! Every running workflow and the newest finished ones, folded from the
//! journal at start-up and after each commit ([`World::apply`] on
//! `workflow/` records only, so the same finished ones are forgotten).
//!
//! # Invariants
//! - A fact is folded into the state before its sender is answered, so a
//!   saga that journaled `WorkflowFinished` and then asks for its result
//!   reads it.
//! - [`Start`] decides: a workflow id that exists is never started again
//!   (the caller gets the existing workflow). Copies of one start are
//!   claimed in the registry before they get here
//!   ([`crate::registry::Registry::add_saga`]).
//! - Appends are not serialised: one workflow's facts come one at a time
//!   from its saga, and different workflows' appends share the journal's
//!   group commit.

use std::collections::BTreeMap;

use actix::prelude::*;
use cairn_schema::event::WorkflowStarted;
use cairn_schema::workflow::WorkflowState;
use cairn_schema::{ApiError, Event, EventRecord, World};

use crate::journal::{AppendRequest, Appended, Causation};
use crate::services::{Services, journal_error};

pub struct WorkflowActor {
    /// Holds only `workflows` and `finished_workflows`.
    world: World,
    services: Services,
}

impl WorkflowActor {
    /// The actor over the workflows the journal holds at start-up.
    pub fn new(world: &World, services: Services) -> WorkflowActor {
        WorkflowActor {
            world: World {
                workflows: world.workflows.clone(),
                finished_workflows: world.finished_workflows.clone(),
                ..World::default()
            },
            services,
        }
    }

    fn fold(&mut self, records: &[EventRecord]) {
        for record in records
            .iter()
            .filter(|r| r.aggregate.starts_with("workflow/"))
        {
            let event = record.event().expect("records this process wrote decode");
            self.world.apply(record, &event);
        }
    }
}

impl Actor for WorkflowActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.services.limits.mailbox);
    }
}

/// One workflow (`None`: never started, or finished and forgotten).
#[derive(Message)]
#[rtype(result = "Option<WorkflowState>")]
pub struct Get {
    pub tenant: String,
    pub id: String,
}

impl Handler<Get> for WorkflowActor {
    type Result = Option<WorkflowState>;

    fn handle(&mut self, msg: Get, _: &mut Self::Context) -> Self::Result {
        self.world.workflows.get(&(msg.tenant, msg.id)).cloned()
    }
}

/// Every workflow of one tenant, by id.
#[derive(Message)]
#[rtype(result = "BTreeMap<(String, String), WorkflowState>")]
pub struct List {
    pub tenant: String,
}

impl Handler<List> for WorkflowActor {
    type Result = MessageResult<List>;

    fn handle(&mut self, msg: List, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.world
                .workflows
                .iter()
                .filter(|((t, _), _)| *t == msg.tenant)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Journal `WorkflowStarted` unless the id exists; the workflow's state.
#[derive(Message)]
#[rtype(result = "Result<WorkflowState, ApiError>")]
pub struct Start {
    pub causation: Causation,
    pub started: WorkflowStarted,
}

impl Handler<Start> for WorkflowActor {
    type Result = ResponseActFuture<Self, Result<WorkflowState, ApiError>>;

    fn handle(&mut self, msg: Start, _: &mut Self::Context) -> Self::Result {
        let key = (msg.causation.tenant.clone(), msg.started.workflow.clone());
        if let Some(existing) = self.world.workflows.get(&key) {
            let existing = existing.clone();
            return Box::pin(fut::ready(Ok(existing)));
        }
        let append = record(
            self.services.clone(),
            msg.causation,
            Event::WorkflowStarted(msg.started),
        );
        Box::pin(append.into_actor(self).map(move |result, actor, _| {
            actor.fold(&result?);
            actor
                .world
                .workflows
                .get(&key)
                .cloned()
                .ok_or_else(|| ApiError::internal("a started workflow is not in the journal"))
        }))
    }
}

/// Journal one fact of a workflow (a saga's progress, a resume).
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Record {
    pub causation: Causation,
    pub event: Event,
}

impl Handler<Record> for WorkflowActor {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;

    fn handle(&mut self, msg: Record, _: &mut Self::Context) -> Self::Result {
        let append = record(self.services.clone(), msg.causation, msg.event);
        Box::pin(append.into_actor(self).map(|result, actor, _| {
            actor.fold(&result?);
            Ok(())
        }))
    }
}

/// Appends one workflow fact (not under a request id: a workflow's facts
/// are found by its id) and publishes it; the records (none for a
/// duplicate).
async fn record(
    services: Services,
    causation: Causation,
    event: Event,
) -> Result<Vec<EventRecord>, ApiError> {
    let appended = services
        .journal
        .append(AppendRequest {
            causation,
            events: vec![event],
            reply: Vec::new(),
        })
        .await
        .map_err(|e| journal_error(&e))?;
    match appended {
        Appended::Records(records) => {
            services.publish(&records).await;
            Ok(records)
        }
        Appended::Duplicate(_) => Ok(Vec::new()),
    }
}
