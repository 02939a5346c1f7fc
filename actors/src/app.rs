//! The app actor: one per (tenant, app). It owns the app's state (the fold
//! of its events), decides app commands, and commits the app's event
//! together with its volumes' events in one journal transaction, so an app
//! and its volumes never disagree in the journal.
//!
//! # Effect order
//! Same rule as [`crate::volume`]: volumes an app command creates are made in
//! the block engine *before* the commit (and removed again if the commit
//! fails); volumes it deletes are removed *after*. Once committed, the
//! volume actors are told the new facts ([`Observe`]) before the reply, so
//! the next command sees them.
//!
//! # Secrets
//! The decided events' Secret values are sealed with the cluster key
//! before they are journaled ([`crate::secrets`]): the state holds them
//! sealed, as the journal does; [`view`] shows what it is given, and the
//! gateway unseals for the owning tenant before it calls it.
//!
//! Commands are handled one at a time ([`AtomicResponse`]), and inside that
//! section a command's request id is looked up again, so copies of one
//! request that raced past the gateway's dedup lookup get the first answer.

use std::collections::BTreeSet;
use std::sync::Weak;

use actix::prelude::*;
use cairn_blocks::{Compression, VolumeOptions};
use cairn_placement::Topology;
use cairn_schema::app::{AppCommand, AppState, volume_name};
use cairn_schema::event::PlacedVolume;
use cairn_schema::names::format_size;
use cairn_schema::time::format_rfc3339_ms;
use cairn_schema::{ApiError, Event, reply};
use serde_json::{Value, json};

use crate::journal::{AppendRequest, Appended, Causation};
use crate::placement::{self, PlacementActor};
use crate::services::{Services, journal_error};
use crate::volume::{self, Observe, engine_name};

pub struct AppActor {
    tenant: String,
    state: AppState,
    services: Services,
    /// The volume actors (the registry). Weak: the registry owns this
    /// actor's address, and a cycle would keep both (and the journal) alive
    /// after the cluster shuts down.
    registry: Weak<dyn volume::Directory>,
    /// The one owner of placement: plans and reserves the slices of the
    /// volumes this app creates, and is told the app's placement after
    /// each commit.
    placement: Addr<PlacementActor>,
}

impl AppActor {
    pub fn new(
        tenant: String,
        state: AppState,
        services: Services,
        registry: Weak<dyn volume::Directory>,
        placement: Addr<PlacementActor>,
    ) -> AppActor {
        AppActor {
            tenant,
            state,
            services,
            registry,
            placement,
        }
    }
}

impl Actor for AppActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.services.limits.mailbox);
    }
}

/// Run a command against this app.
#[derive(Message)]
#[rtype(result = "Result<Value, ApiError>")]
pub struct Execute {
    pub command: AppCommand,
    pub causation: Causation,
    /// The tenant's existing volume names (for create and scale).
    pub taken: BTreeSet<String>,
    /// The cluster, for commands that create volumes (create, scale-out,
    /// clone, pull): their slices are planned and reserved by the
    /// placement actor.
    pub placing: Option<Topology>,
}

/// Read the current state.
#[derive(Message)]
#[rtype(result = "AppState")]
pub struct Get;

impl Handler<Get> for AppActor {
    type Result = MessageResult<Get>;

    fn handle(&mut self, _: Get, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

/// The reply a command gets; also what dedup stores.
fn reply_for(state: &AppState, command: &AppCommand, events: &[Event]) -> Value {
    let volumes = |created: bool| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::VolumeCreated(v) if created => Some(v.volume.clone()),
                Event::VolumeDeleted(v) if !created => Some(v.volume.clone()),
                _ => None,
            })
            .collect()
    };
    match command {
        AppCommand::Create(m) => reply::to_value(&reply::AppCreateReply {
            name: m.name.clone(),
            objects: m.objects.len() as u64,
            volumes: volumes(true),
        }),
        AppCommand::Delete { name, .. } => reply::to_value(&reply::AppDeleteReply {
            name: name.clone(),
            deleted: !events.is_empty(),
            volumes: volumes(false),
            workflow: None,
        }),
        AppCommand::Snapshot {
            name,
            snapshot,
            message,
            workflow,
        } => reply::to_value(&reply::AppSnapshotReply {
            name: name.clone(),
            snapshot: snapshot.clone(),
            message: message.clone(),
            volumes: match events.iter().find_map(|e| match e {
                Event::AppSnapshotted(s) => Some(s),
                _ => None,
            }) {
                Some(s) => s
                    .volumes
                    .iter()
                    .map(|v| volume_name(name, &v.pvc))
                    .collect(),
                // Taken already by this workflow (a retried step).
                None => state
                    .snapshots
                    .get(snapshot)
                    .map(|s| {
                        s.volumes
                            .iter()
                            .map(|v| volume_name(name, &v.pvc))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            workflow: (!workflow.is_empty()).then(|| workflow.clone()),
        }),
        AppCommand::SnapshotDrop { name, snapshot, .. } => {
            reply::to_value(&reply::AppSnapshotDeleteReply {
                name: name.clone(),
                snapshot: snapshot.clone(),
                deleted: !events.is_empty(),
                volumes_deleted: volumes(false),
                workflow: None,
            })
        }
        AppCommand::Restore { name, snapshot } => {
            let rolled = events.iter().find_map(|e| match e {
                Event::AppRolledBack(r) => Some(r),
                _ => None,
            });
            reply::to_value(&reply::AppRollbackReply {
                name: name.clone(),
                snapshot: snapshot.clone(),
                volumes: rolled
                    .map(|r| {
                        r.volumes
                            .iter()
                            .map(|v| volume_name(name, &v.pvc))
                            .collect()
                    })
                    .unwrap_or_default(),
                retired: rolled
                    .map(|r| r.retired.iter().map(|p| volume_name(name, p)).collect())
                    .unwrap_or_default(),
                deleted: volumes(false),
                safety_snapshot: None,
                workflow: None,
            })
        }
        AppCommand::CloneFrom {
            name,
            source,
            snapshot,
            ..
        } => reply::to_value(&reply::AppCloneReply {
            name: name.clone(),
            source: source.clone(),
            snapshot: snapshot.clone(),
            cloned: events
                .iter()
                .filter_map(|e| match e {
                    Event::VolumeCloned(c) => Some(c.volume.clone()),
                    _ => None,
                })
                .collect(),
            created: volumes(true),
            workflow: None,
        }),
        AppCommand::Pull { name, manifest, .. } => reply::to_value(&reply::PullImportReply {
            app: name.clone(),
            manifest: manifest.clone(),
            created: events.iter().any(|e| matches!(e, Event::AppCreated(_))),
            volumes_created: volumes(true),
            volumes_deleted: volumes(false),
        }),
        AppCommand::Scale { name, .. } => {
            let scaled = events.iter().find_map(|e| match e {
                Event::AppScaled(s) => Some(s),
                _ => None,
            });
            reply::to_value(&reply::AppScaleReply {
                name: name.clone(),
                workload: scaled.map(|s| s.workload.clone()),
                from_replicas: scaled.map(|s| s.from_replicas),
                replicas: scaled.map(|s| s.replicas),
                added: volumes(true),
                removed: volumes(false),
            })
        }
        AppCommand::ConfigSet {
            name,
            configmap,
            key,
            value,
        } => reply::to_value(&reply::AppConfigSetReply {
            name: name.clone(),
            configmap: configmap.clone(),
            key: key.clone(),
            value: value.clone(),
        }),
    }
}

impl Handler<Execute> for AppActor {
    type Result = AtomicResponse<Self, Result<Value, ApiError>>;

    fn handle(&mut self, msg: Execute, _: &mut Self::Context) -> Self::Result {
        crate::failpoint::hit(&format!("app.execute.{}", msg.command.verb()));
        let decided = self
            .state
            .decide(&msg.command, &|v: &str| msg.taken.contains(v));
        let services = self.services.clone();
        let registry = self.registry.clone();
        let placement = self.placement.clone();
        let tenant = self.tenant.clone();
        let state = self.state.clone();
        let work = async move {
            // A copy of a request that raced its first attempt past the
            // gateway's lookup: as in the volume actor, the first is
            // journaled by now and its answer is the answer.
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
            let mut events = decided?;
            // The slices of the volumes it creates: planned and reserved by
            // the one placement owner, released unless the commit lands.
            let mut ticket = None;
            if let Some(topology) = msg.placing
                && !events.is_empty()
            {
                let reservation = placement
                    .send(placement::Reserve {
                        tenant: tenant.clone(),
                        before: state.clone(),
                        events: events.clone(),
                        topology,
                    })
                    .await
                    .map_err(|e| ApiError::internal(format!("placement actor: {e}")))??;
                if reservation.ticket != 0 {
                    ticket = Some(reservation.ticket);
                }
                events.extend(reservation.placed);
            }
            let committed = commit(
                &services,
                &tenant,
                &state,
                &msg.command,
                msg.causation,
                events,
            )
            .await;
            match &committed {
                Ok((records, _)) if !records.is_empty() || ticket.is_some() => {
                    // The app's placement now, the reservation used up.
                    let mut after = state.clone();
                    for record in records.iter().filter(|r| r.aggregate.starts_with("app/")) {
                        let event = record.event().expect("records this process wrote decode");
                        after.apply(record.seq, record.time_ms, &event);
                    }
                    let settle = placement::Settle {
                        tenant: tenant.clone(),
                        app: msg.command.app().to_owned(),
                        ticket,
                        placed: placement::placed_of(&after),
                        rebuilt: false,
                    };
                    if placement.send(settle).await.is_err() {
                        tracing::error!("placement actor gone");
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(ticket) = ticket {
                        placement.do_send(placement::Release(ticket));
                    }
                }
            }
            let (records, reply) = committed?;
            // Tell the volume actors before replying (no registry: shutting down).
            if let Some(registry) = registry.upgrade() {
                for record in &records {
                    if let Some(volume) = record.aggregate.strip_prefix("volume/") {
                        let actor = registry.volume_or_start(&tenant, volume, &services);
                        if actor.send(Observe(vec![record.clone()])).await.is_err() {
                            // Its dead address stays: the gateway rebuilds it
                            // from the journal (this record included) when it
                            // next fails to reach it.
                            tracing::error!(volume, "volume actor gone");
                        }
                    }
                }
            }
            services.publish(&records).await;
            Ok::<_, ApiError>((records, reply))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, actor, _| {
            let (records, reply) = result?;
            for record in records.iter().filter(|r| r.aggregate.starts_with("app/")) {
                let event = record.event().expect("records this process wrote decode");
                actor.state.apply(record.seq, record.time_ms, &event);
            }
            Ok(reply)
        })))
    }
}

/// Seals, carries out the effects around the commit and journals one
/// command's events: `(records, reply)`; no records when nothing changed
/// or the request was answered before.
async fn commit(
    services: &Services,
    tenant: &str,
    state: &AppState,
    command: &AppCommand,
    causation: Causation,
    mut events: Vec<Event>,
) -> Result<(Vec<cairn_schema::EventRecord>, Value), ApiError> {
    // No Secret value reaches the journal in plaintext.
    services.secrets.seal_events(tenant, &mut events)?;
    let reply = reply_for(state, command, &events);
    if events.is_empty() {
        // Nothing to change (a step that already happened, an
        // absent app or snapshot with `missing_ok`).
        return Ok((Vec::new(), reply));
    }
    // Constructive effects first: volumes created or cloned,
    // snapshots taken, rollbacks (the saga's safety snapshot covers
    // those); undone if the commit fails.
    let mut undo = Undo::default();
    if let Err(e) = effects_before_commit(services, tenant, &events, &mut undo).await {
        undo.run(services).await;
        return Err(e);
    }
    let appended = services
        .journal
        .append(AppendRequest {
            causation,
            events,
            reply: serde_json::to_vec(&reply).expect("replies serialize"),
        })
        .await;
    let records = match appended {
        Ok(Appended::Records(records)) => records,
        Ok(Appended::Duplicate(first)) => {
            undo.run(services).await;
            return Ok((
                Vec::new(),
                serde_json::from_slice(&first).unwrap_or(Value::Null),
            ));
        }
        Err(e) => {
            undo.run(services).await;
            return Err(journal_error(&e));
        }
    };
    // Destructive effects after: the volumes and snapshots this
    // command deleted. The fact stands if one fails; start-up
    // reconciliation removes the leftovers.
    for record in &records {
        let (engine, snapshot) = match record.event() {
            Ok(Event::VolumeDeleted(v)) => (engine_name(tenant, &v.volume), None),
            Ok(Event::SnapshotDeleted(s)) => (engine_name(tenant, &s.volume), Some(s.snapshot)),
            _ => continue,
        };
        let name = engine.clone();
        let done = services
            .blocking(move |pool| match &snapshot {
                Some(s) => pool.delete_snapshot(&name, s),
                None => pool.delete_volume(&name),
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, volume = %engine, "space not reclaimed yet");
        }
    }
    Ok((records, reply))
}

/// The app part of an app volume's name (`shop` of `shop/data-db-0`).
fn tenant_app(volume: &str) -> String {
    volume
        .split_once('/')
        .map_or(volume, |(app, _)| app)
        .to_owned()
}

/// The view of an app for get and list. `replicas` per workload come
/// from the stored objects; a volume whose ordinal is at or past its
/// StatefulSet's replicas is `retained` (kept after a scale-in).
pub fn view(state: &AppState) -> reply::AppView {
    let workloads = state.workloads();
    let volumes = state
        .volumes
        .values()
        .map(|v| {
            let retained = match (&v.workload, v.ordinal) {
                (Some(w), Some(ordinal)) => workloads
                    .iter()
                    .any(|(_, name, replicas)| name == w && ordinal >= *replicas),
                _ => false,
            };
            reply::AppVolumeView {
                name: volume_name(&state.name, &v.pvc),
                pvc: v.pvc.clone(),
                claim: v.claim.clone(),
                workload: v.workload.clone(),
                ordinal: v.ordinal,
                size_bytes: v.size_bytes,
                size: format_size(v.size_bytes),
                storage_class: v.storage_class.clone(),
                retained,
            }
        })
        .collect();
    let configmaps = state
        .objects
        .iter()
        .filter(|o| o.kind == "ConfigMap")
        .map(|o| {
            (
                o.name.clone(),
                o.value().get("data").cloned().unwrap_or(json!({})),
            )
        })
        .collect();
    reply::AppView {
        name: state.name.clone(),
        created: format_rfc3339_ms(state.created_ms),
        created_seq: state.created_seq,
        updated_seq: state.updated_seq,
        workloads: workloads
            .into_iter()
            .map(|(kind, name, replicas)| reply::WorkloadView {
                kind,
                name,
                replicas,
            })
            .collect(),
        volumes,
        configmaps,
        objects: state.objects.iter().map(|o| o.value()).collect(),
    }
}

/// What to take back if a command's commit fails.
#[derive(Default)]
struct Undo {
    /// Engine names of volumes created or cloned.
    volumes: Vec<String>,
    /// (engine volume, snapshot) taken.
    snapshots: Vec<(String, String)>,
}

impl Undo {
    async fn run(self, services: &Services) {
        let Undo { volumes, snapshots } = self;
        let _ = services
            .blocking(move |pool| {
                for (v, s) in &snapshots {
                    let _ = pool.delete_snapshot(v, s);
                }
                for v in &volumes {
                    let _ = pool.delete_volume(v);
                }
                Ok(())
            })
            .await;
    }
}

/// The block-engine effects an app command's events need before they are
/// committed: volumes created (placed) or cloned, the snapshots of an app
/// snapshot (one fenced group), rollbacks. Recorded in `undo` as they
/// happen.
async fn effects_before_commit(
    services: &Services,
    tenant: &str,
    events: &[Event],
    undo: &mut Undo,
) -> Result<(), ApiError> {
    let placed: Vec<PlacedVolume> = events
        .iter()
        .flat_map(|e| match e {
            Event::AppPlaced(p) => p.volumes.clone(),
            _ => Vec::new(),
        })
        .collect();
    let slices_of = |volume: &str| {
        placed
            .iter()
            .find(|p| volume_name(&tenant_app(volume), &p.pvc) == volume)
            .map(|p| services.slice_disks(p))
            .unwrap_or_default()
    };
    let mut group: Vec<(String, String)> = Vec::new();
    for event in events {
        match event {
            Event::VolumeCreated(v) => {
                let slices = slices_of(&v.volume);
                let name = engine_name(tenant, &v.volume);
                let size = v.size_bytes;
                let opts = VolumeOptions {
                    compression: Compression::parse(&v.compression).unwrap_or_default(),
                    encrypt: v.encrypted,
                };
                let n = name.clone();
                services
                    .blocking(move |pool| {
                        pool.create_volume_with(&n, size, opts)?;
                        // Before any write: every slice lands where planned.
                        pool.place_slices(&n, &slices).inspect_err(|_| {
                            let _ = pool.delete_volume(&n);
                        })
                    })
                    .await?;
                undo.volumes.push(name);
            }
            Event::VolumeCloned(c) => {
                let slices = slices_of(&c.volume);
                let name = engine_name(tenant, &c.volume);
                let source = engine_name(tenant, &c.source);
                let snapshot = c.snapshot.clone();
                let n = name.clone();
                services
                    .blocking(move |pool| {
                        pool.clone_snapshot(&source, &snapshot, &n)?;
                        // New writes go where planned; shared blocks stay.
                        pool.place_slices(&n, &slices).inspect_err(|_| {
                            let _ = pool.delete_volume(&n);
                        })
                    })
                    .await?;
                undo.volumes.push(name);
            }
            Event::VolumeSnapshotted(s) => {
                group.push((engine_name(tenant, &s.volume), s.snapshot.clone()));
            }
            Event::VolumeRolledBack(r) => {
                let name = engine_name(tenant, &r.volume);
                let snapshot = r.snapshot.clone();
                services
                    .blocking(move |pool| pool.rollback(&name, &snapshot))
                    .await?;
            }
            _ => {}
        }
    }
    if !group.is_empty() {
        crate::failpoint::hit("app.snapshot.before-fence");
        let items = group.clone();
        services
            .blocking(move |pool| {
                let refs: Vec<(&str, &str)> = items
                    .iter()
                    .map(|(v, s)| (v.as_str(), s.as_str()))
                    .collect();
                pool.snapshot_group(&refs)
            })
            .await?;
        undo.snapshots.extend(group);
        crate::failpoint::hit("app.snapshot.after-fence");
    }
    Ok(())
}
