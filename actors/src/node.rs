//! The node actor: one per node (in one process, this one). It owns the
//! node's state (the fold of its `node/<name>` events) and registers the node
//! and its disks in the journal at start-up, once per change of disks.
//!
//! Node events are cluster-wide: they carry the reserved tenant
//! [`cairn_schema::subject::CLUSTER_TENANT`], and every tenant sees them.

use actix::prelude::*;
use cairn_schema::event::NodeRegistered;
use cairn_schema::state::NodeState;
use cairn_schema::subject::CLUSTER_TENANT;
use cairn_schema::{ApiError, Event, EventRecord};

use crate::journal::{AppendRequest, Appended, Causation};
use crate::services::{Services, journal_error};

pub struct NodeActor {
    state: NodeState,
    services: Services,
}

impl NodeActor {
    pub fn new(state: NodeState, services: Services) -> NodeActor {
        NodeActor { state, services }
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.services.limits.mailbox);
    }
}

/// Read the current state.
#[derive(Message)]
#[rtype(result = "NodeState")]
pub struct Get;

impl Handler<Get> for NodeActor {
    type Result = MessageResult<Get>;

    fn handle(&mut self, _: Get, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

type Committed = Result<Vec<EventRecord>, ApiError>;

impl NodeActor {
    /// Journals the decided events as cluster-wide facts, publishes them and
    /// folds them into the state; answers with the records.
    fn commit(
        &self,
        decided: Result<Vec<Event>, ApiError>,
        mut causation: Causation,
    ) -> AtomicResponse<Self, Committed> {
        causation.tenant = CLUSTER_TENANT.to_owned();
        // A node command's reply is built from the records; none is stored.
        causation.dedup = false;
        let services = self.services.clone();
        let work = async move {
            let events = decided?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let appended = services
                .journal
                .append(AppendRequest {
                    causation,
                    events,
                    reply: Vec::new(),
                })
                .await
                .map_err(|e| journal_error(&e))?;
            let records = match appended {
                Appended::Records(records) => records,
                Appended::Duplicate(_) => Vec::new(),
            };
            services.publish(&records).await;
            Ok(records)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |result: Committed, actor, _| {
                let records = result?;
                for record in &records {
                    let event = record.event().expect("records this process wrote decode");
                    actor.state.apply(record.seq, record.time_ms, &event);
                }
                Ok(records)
            },
        )))
    }
}

/// Make the journal know this node as described.
#[derive(Message)]
#[rtype(result = "Committed")]
pub struct Register(pub NodeRegistered);

impl Handler<Register> for NodeActor {
    type Result = AtomicResponse<Self, Committed>;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        let events = self.state.decide_register(&msg.0);
        let causation = Causation {
            tenant: CLUSTER_TENANT.to_owned(),
            user: "cairn".to_owned(),
            id: format!("start-{}", msg.0.node),
            dedup: false,
        };
        self.commit(Ok(events), causation)
    }
}

/// Mark this node failed (`cairn node fail`).
#[derive(Message)]
#[rtype(result = "Committed")]
pub struct Fail {
    pub causation: Causation,
}

impl Handler<Fail> for NodeActor {
    type Result = AtomicResponse<Self, Committed>;

    fn handle(&mut self, msg: Fail, _: &mut Self::Context) -> Self::Result {
        self.commit(self.state.decide_fail(), msg.causation)
    }
}
