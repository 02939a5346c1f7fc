//! The volume actor: one per (tenant, volume). It owns the volume's state
//! (the fold of its events), decides commands, journals the events and
//! drives the block engine.
//!
//! # Effect order
//! Constructive effects (create, clone, snapshot) run *before* the event is
//! journaled, destructive ones (delete) *after*. A rollback also runs before
//! (it cannot be undone at this level; app rollbacks take a safety snapshot
//! first). So a crash in between
//! leaves at worst an orphan in the block engine, never a journaled fact
//! without its data; [`crate::cluster`] removes orphans at start-up.
//!
//! Commands are handled one at a time ([`AtomicResponse`]): `decide` always
//! sees the state left by the previous command. Inside that section a
//! command's request id is looked up again, so copies of one request that
//! raced past the gateway's dedup lookup together get the first answer
//! instead of, say, `already_exists`.

use actix::prelude::*;
use cairn_blocks::{Compression, VolumeOptions};
use cairn_schema::names::format_size;
use cairn_schema::time::format_rfc3339_ms;
use cairn_schema::{ApiError, VolumeCommand, VolumeState, reply};
use serde_json::Value;

use crate::journal::{AppendRequest, Appended, Causation};
use crate::services::{Services, journal_error};

/// Block-engine name of a tenant's volume: the bare name for the default
/// tenant, `<tenant>:<name>` otherwise. It is also the NBD export name.
pub fn engine_name(tenant: &str, volume: &str) -> String {
    if tenant == cairn_schema::subject::DEFAULT_TENANT {
        volume.to_owned()
    } else {
        format!("{tenant}:{volume}")
    }
}

/// Where other actors find a volume's actor (the registry implements it),
/// to tell it the facts they committed about its volume ([`Observe`]).
/// A trait, so the app actor does not import the registry that starts it.
pub trait Directory {
    /// The volume's actor, started with an empty state if it has none yet.
    fn volume_or_start(&self, tenant: &str, name: &str, services: &Services) -> Addr<VolumeActor>;
}

pub struct VolumeActor {
    tenant: String,
    state: VolumeState,
    services: Services,
}

impl VolumeActor {
    pub fn new(tenant: String, state: VolumeState, services: Services) -> VolumeActor {
        VolumeActor {
            tenant,
            state,
            services,
        }
    }
}

impl Actor for VolumeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.services.limits.mailbox);
    }
}

/// Run a command against this volume.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct Execute {
    pub command: VolumeCommand,
    pub causation: Causation,
    /// For a clone: the source volume's state.
    pub source: Option<VolumeState>,
}

/// Read the current state.
#[derive(Message)]
#[rtype(result = "VolumeState")]
pub struct Get;

impl Handler<Get> for VolumeActor {
    type Result = MessageResult<Get>;

    fn handle(&mut self, _: Get, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

/// Fold records another actor committed about this volume (an app creating,
/// scaling or deleting its volumes commits their events with its own).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe(pub Vec<cairn_schema::EventRecord>);

impl Handler<Observe> for VolumeActor {
    type Result = ();

    fn handle(&mut self, msg: Observe, _: &mut Self::Context) {
        for record in &msg.0 {
            let event = record.event().expect("records this process wrote decode");
            self.state.apply(record.seq, record.time_ms, &event);
        }
    }
}

/// The reply a command gets; also what dedup stores.
fn reply_for(command: &VolumeCommand) -> Value {
    match command {
        VolumeCommand::Create {
            name,
            size_bytes,
            compression,
            encrypted,
        } => reply::to_value(&reply::VolumeCreateReply {
            name: name.clone(),
            size_bytes: *size_bytes,
            size: format_size(*size_bytes),
            compression: compression.clone(),
            encrypted: *encrypted,
        }),
        VolumeCommand::Clone {
            name,
            snapshot,
            target,
        } => reply::to_value(&reply::VolumeCloneReply {
            name: target.clone(),
            origin: format!("{name}@{snapshot}"),
        }),
        VolumeCommand::Rollback { name, snapshot } => {
            reply::to_value(&reply::VolumeRollbackReply {
                name: name.clone(),
                rolled_back_to: snapshot.clone(),
            })
        }
        VolumeCommand::Delete { name } => reply::to_value(&reply::VolumeDeleteReply {
            name: name.clone(),
            deleted: true,
        }),
        VolumeCommand::Snapshot { name, snapshot } => reply::to_value(&reply::SnapshotReply {
            name: name.clone(),
            snapshot: snapshot.clone(),
            export: format!("{name}@{snapshot}"),
        }),
        VolumeCommand::DeleteSnapshot { name, snapshot } => {
            reply::to_value(&reply::SnapshotDeleteReply {
                name: name.clone(),
                snapshot: snapshot.clone(),
                deleted: true,
            })
        }
    }
}

impl Handler<Execute> for VolumeActor {
    type Result = AtomicResponse<Self, Result<Value, ApiError>>;

    fn handle(&mut self, msg: Execute, _: &mut Self::Context) -> Self::Result {
        crate::failpoint::hit(&format!("volume.execute.{}", msg.command.verb()));
        let decided = match &msg.source {
            Some(source) => self.state.decide_clone(&msg.command, source),
            None => self.state.decide(&msg.command),
        };
        let services = self.services.clone();
        let engine = engine_name(&self.tenant, msg.command.volume());
        let tenant = self.tenant.clone();
        let work = async move {
            // A copy of a request that raced its first attempt past the
            // gateway's lookup: commands here run one at a time, so the
            // first is journaled by now and its answer is the answer.
            if msg.causation.dedup
                && let Some(first) = services
                    .journal
                    .lookup_request(&msg.causation.tenant, &msg.causation.id)
                    .map_err(|e| journal_error(&e))?
            {
                return Ok((
                    Vec::new(),
                    serde_json::from_slice(&first).unwrap_or(Value::Null),
                ));
            }
            let events = decided?;
            let reply = reply_for(&msg.command);
            let command = msg.command.clone();
            // Constructive effects first.
            match &command {
                VolumeCommand::Create {
                    size_bytes,
                    compression,
                    encrypted,
                    ..
                } => {
                    let (engine, size) = (engine.clone(), *size_bytes);
                    let opts = VolumeOptions {
                        compression: Compression::parse(compression).unwrap_or_default(),
                        encrypt: *encrypted,
                    };
                    services
                        .blocking(move |pool| pool.create_volume_with(&engine, size, opts))
                        .await?;
                }
                VolumeCommand::Clone { name, snapshot, .. } => {
                    let source = engine_name(&tenant, name);
                    let (engine, snapshot) = (engine.clone(), snapshot.clone());
                    services
                        .blocking(move |pool| pool.clone_snapshot(&source, &snapshot, &engine))
                        .await?;
                }
                VolumeCommand::Rollback { snapshot, .. } => {
                    let (engine, snapshot) = (engine.clone(), snapshot.clone());
                    services
                        .blocking(move |pool| pool.rollback(&engine, &snapshot))
                        .await?;
                }
                VolumeCommand::Snapshot { snapshot, .. } => {
                    let (engine, snapshot) = (engine.clone(), snapshot.clone());
                    services
                        .blocking(move |pool| pool.snapshot(&engine, &snapshot))
                        .await?;
                }
                VolumeCommand::Delete { .. } | VolumeCommand::DeleteSnapshot { .. } => {}
            }
            let appended = services
                .journal
                .append(AppendRequest {
                    causation: msg.causation,
                    events,
                    reply: serde_json::to_vec(&reply).expect("replies serialize"),
                })
                .await;
            let records = match appended {
                Ok(Appended::Records(records)) => records,
                Ok(Appended::Duplicate(first)) => {
                    return Ok((
                        Vec::new(),
                        serde_json::from_slice(&first).unwrap_or(Value::Null),
                    ));
                }
                Err(e) => {
                    // Not journaled: undo the constructive effect.
                    let undo = command.clone();
                    let engine = engine.clone();
                    let _ = services
                        .blocking(move |pool| match undo {
                            VolumeCommand::Create { .. } | VolumeCommand::Clone { .. } => {
                                pool.delete_volume(&engine)
                            }
                            VolumeCommand::Snapshot { snapshot, .. } => {
                                pool.delete_snapshot(&engine, &snapshot)
                            }
                            _ => Ok(()),
                        })
                        .await;
                    return Err(journal_error(&e));
                }
            };
            // Destructive effects after.
            let destroyed = match &command {
                VolumeCommand::Delete { .. } => {
                    let engine = engine.clone();
                    services
                        .blocking(move |pool| pool.delete_volume(&engine))
                        .await
                }
                VolumeCommand::DeleteSnapshot { snapshot, .. } => {
                    let (engine, snapshot) = (engine.clone(), snapshot.clone());
                    services
                        .blocking(move |pool| pool.delete_snapshot(&engine, &snapshot))
                        .await
                }
                _ => Ok(()),
            };
            if let Err(e) = destroyed {
                // The fact stands; start-up reconciliation removes the leftovers.
                tracing::warn!(error = %e, volume = %engine, "space not reclaimed yet");
            }
            services.publish(&records).await;
            Ok((records, reply))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, actor, _| {
            let (records, reply) = result?;
            for record in &records {
                let event = record.event().expect("records this process wrote decode");
                actor.state.apply(record.seq, record.time_ms, &event);
            }
            Ok(reply)
        })))
    }
}

/// The view of a volume for list/show; `node` and `nbd` (where the volume
/// is served) are left for the caller that knows them.
pub fn view(state: &VolumeState, engine: Option<&cairn_blocks::VolumeInfo>) -> reply::VolumeView {
    let snapshots = state
        .snapshots
        .iter()
        .map(|(name, meta)| {
            let found = engine.and_then(|info| info.snapshots.iter().find(|s| &s.name == name));
            reply::SnapshotView {
                name: name.clone(),
                created: format_rfc3339_ms(meta.created_ms),
                seq: meta.seq,
                allocated_bytes: found.map(|s| s.allocated_bytes),
                exclusive_bytes: found.map(|s| s.exclusive_bytes),
            }
        })
        .collect();
    reply::VolumeView {
        name: state.name.clone(),
        size_bytes: state.size_bytes,
        size: format_size(state.size_bytes),
        allocated_bytes: engine.map(|i| i.allocated_bytes),
        exclusive_bytes: engine.map(|i| i.exclusive_bytes),
        compression: engine.map(|i| i.compression.as_str().to_owned()),
        encrypted: engine.map(|i| i.encrypted),
        origin: state.origin.clone(),
        rolled_back_to: state.rolled_back_to.clone(),
        created: format_rfc3339_ms(state.created_ms),
        snapshots,
        node: None,
        nbd: None,
    }
}
