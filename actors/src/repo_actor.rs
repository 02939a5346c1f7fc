//! The repository actor: the one owner of the backup-repository
//! registrations (`repo/<name>` aggregates) of every tenant, and the writer
//! of push records (`AppPushed`).
//!
//! It decides with the pure deciders of [`cairn_schema::repo`]
//! (`decide_add`, `decide_remove`), journals, folds the records into its
//! state and publishes them, like the volume and app actors. The
//! repository IO (opening or initialising a store with its key, pushing
//! chunks) is the gateway's effect *before* the fact: a registration is
//! journaled only after its store opened with its key
//! ([`crate::gateway`]'s `repos.rs`).
//!
//! # State
//! Every tenant's registrations, folded from the journal at start-up and
//! after each commit ([`World::apply`] on `repo/` records only).
//!
//! # Invariants
//! - One command at a time ([`AtomicResponse`]): `decide_add` counts a
//!   tenant's registrations against its cap with no other add in flight.
//! - A command whose request id the journal has seen gets the first
//!   answer (`Appended::Duplicate`), never a second record.
//! - The journal never holds a key or a URL secret: the gateway hands in
//!   the redacted URL and the key's path.

use std::collections::BTreeMap;

use actix::prelude::*;
use cairn_schema::event::AppPushed;
use cairn_schema::repo::{RepoState, decide_add, decide_remove};
use cairn_schema::{ApiError, Event, World};
use serde_json::Value;

use crate::journal::{AppendRequest, Appended, Causation};
use crate::services::{Services, journal_error};

type Key = (String, String);

pub struct RepoActor {
    /// Holds only `repos`: the fold of the `repo/` records.
    world: World,
    services: Services,
}

impl RepoActor {
    /// The actor over the registrations the journal holds at start-up.
    pub fn new(repos: BTreeMap<Key, RepoState>, services: Services) -> RepoActor {
        RepoActor {
            world: World {
                repos,
                ..World::default()
            },
            services,
        }
    }

    fn existing(&self, tenant: &str, name: &str) -> Option<&RepoState> {
        self.world.repos.get(&(tenant.to_owned(), name.to_owned()))
    }

    fn count(&self, tenant: &str) -> usize {
        self.world.repos.keys().filter(|(t, _)| t == tenant).count()
    }
}

impl Actor for RepoActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.services.limits.mailbox);
    }
}

/// One registration (`None` if it is not registered).
#[derive(Message)]
#[rtype(result = "Option<RepoState>")]
pub struct Get {
    pub tenant: String,
    pub name: String,
}

impl Handler<Get> for RepoActor {
    type Result = Option<RepoState>;

    fn handle(&mut self, msg: Get, _: &mut Self::Context) -> Self::Result {
        self.existing(&msg.tenant, &msg.name).cloned()
    }
}

/// Every registration of one tenant, by name; or of every tenant with
/// `tenant: None` (`events verify` compares them with a replay).
#[derive(Message)]
#[rtype(result = "BTreeMap<(String, String), RepoState>")]
pub struct List {
    pub tenant: Option<String>,
}

impl Handler<List> for RepoActor {
    type Result = MessageResult<List>;

    fn handle(&mut self, msg: List, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.world
                .repos
                .iter()
                .filter(|((t, _), _)| msg.tenant.as_ref().is_none_or(|want| want == t))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// A registration the journal would take, decided before any IO: refuses
/// a name taken by another URL or key, or a tenant at its cap.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct CheckAdd {
    pub tenant: String,
    pub name: String,
    pub url: String,
    pub key_kind: &'static str,
    pub key_path: String,
}

impl Handler<CheckAdd> for RepoActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: CheckAdd, _: &mut Self::Context) -> Self::Result {
        decide_add(
            self.existing(&msg.tenant, &msg.name),
            self.count(&msg.tenant),
            &msg.name,
            &msg.url,
            msg.key_kind,
            &msg.key_path,
            false,
        )
        .map(|_| ())
    }
}

/// What a repository command journals.
#[derive(Debug, Clone)]
pub enum Registration {
    /// Register `name` (its store opened, or initialised when
    /// `initialized`): `RepoAdded`, or nothing if it is registered so.
    Add {
        name: String,
        /// Redacted: no secret.
        url: String,
        key_kind: &'static str,
        key_path: String,
        initialized: bool,
    },
    /// `RepoRemoved` (the contents stay in the store).
    Remove { name: String },
    /// A push that stored its manifest: `AppPushed`.
    Pushed(AppPushed),
}

/// Decide, journal, apply and publish one repository command; the answer
/// is `reply` (or the first answer to the same request).
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct Execute {
    pub registration: Registration,
    pub causation: Causation,
    pub reply: Value,
}

impl Handler<Execute> for RepoActor {
    type Result = AtomicResponse<Self, Result<Value, ApiError>>;

    fn handle(&mut self, msg: Execute, _: &mut Self::Context) -> Self::Result {
        let tenant = msg.causation.tenant.clone();
        let decided = match &msg.registration {
            Registration::Add {
                name,
                url,
                key_kind,
                key_path,
                initialized,
            } => decide_add(
                self.existing(&tenant, name),
                self.count(&tenant),
                name,
                url,
                key_kind,
                key_path,
                *initialized,
            ),
            Registration::Remove { name } => decide_remove(self.existing(&tenant, name), name),
            Registration::Pushed(pushed) => Ok(vec![Event::AppPushed(pushed.clone())]),
        };
        let services = self.services.clone();
        let work = async move {
            let events = decided?;
            if events.is_empty() {
                return Ok((Vec::new(), msg.reply));
            }
            let appended = services
                .journal
                .append(AppendRequest {
                    causation: msg.causation,
                    events,
                    reply: serde_json::to_vec(&msg.reply).expect("replies serialize"),
                })
                .await
                .map_err(|e| journal_error(&e))?;
            match appended {
                Appended::Records(records) => {
                    services.publish(&records).await;
                    Ok((records, msg.reply))
                }
                Appended::Duplicate(first) => Ok((
                    Vec::new(),
                    serde_json::from_slice(&first).unwrap_or(Value::Null),
                )),
            }
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |result: Result<_, ApiError>, actor, _| {
                let (records, reply) = result?;
                for record in records.iter().filter(|r| r.aggregate.starts_with("repo/")) {
                    let event = record.event().expect("records this process wrote decode");
                    actor.world.apply(record, &event);
                }
                Ok(reply)
            },
        )))
    }
}
