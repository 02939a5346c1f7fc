//! The gateway: takes requests off the bus, decodes and validates them,
//! routes them to actors or answers queries, and replies with JSON.
//!
//! - Requests arrive on `cairn.v1.<tenant>.<kind>.<verb>` (queue group
//!   `cairn-gateway`). The tenant comes from the subject, and a request only
//!   ever sees that tenant's volumes.
//! - Every failure is a reply `{"error":{"code","message","details"}}`; the
//!   gateway never panics on input and keeps serving.
//! - At most [`crate::Limits::max_in_flight`] requests run at once; the
//!   subscription is not read while that many are open (back-pressure).
//! - On shutdown it stops taking requests, then waits for those in flight.
//! - It never writes the journal or folds state: each aggregate's owner
//!   (volume, app, node, repo, workflow actor; placement for slices)
//!   decides, journals and applies, and the gateway replies with its
//!   answer. It reads the journal only for dedup lookups and queries.
//! - Saga steps come back in through [`crate::dispatch::Dispatch`], which
//!   the gateway implements.

use std::sync::Arc;

use bytes::Bytes;
use cairn_schema::command::EventsFilter;
use std::collections::{BTreeMap, BTreeSet};

use cairn_schema::reply::{self, to_value};
use cairn_schema::time::format_rfc3339_ms;
use cairn_schema::{
    ApiError, AppCommand, AppState, Command, ErrorCode, Query, VolumeCommand, VolumeState, World,
    subject,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::bus::{Bus, BusMessage, REQUEST_ID_HEADER, USER_HEADER};
use crate::journal::{self, Causation, SnapshotCheck};
use crate::registry::Registry;
use crate::services::{Services, journal_error};
use crate::volume::{self, Execute, Get, engine_name};
use crate::{app, node};
use cairn_placement::placement::{Failure, failure_impact};
use cairn_placement::{Plan, Topology, app_placement};
use cairn_schema::state::NodeState;

/// Span field names; they live in [`crate::telemetry::fields`].
pub use crate::telemetry::fields;

mod admission;
mod repos;
mod sagas;

pub use admission::TenantSlots;

pub use repos::Repos;
pub use sagas::{MAX_NESTING, MAX_RUNNING_SAGAS};

pub struct Gateway {
    pub services: Services,
    pub registry: Arc<Registry>,
    /// This gateway, for the sagas it starts (they run its commands).
    pub me: std::sync::Weak<Gateway>,
    /// Open backup repositories and their locks.
    pub repos: Repos,
    /// Each tenant's share of the requests in flight.
    pub tenant_slots: TenantSlots,
}

pub use crate::dispatch::Caller;

/// Saga steps run through the gateway, as requests from the bus do.
impl crate::dispatch::Dispatch for Gateway {
    fn dispatch<'a>(
        &'a self,
        tenant: &'a str,
        command: Command,
        caller: &'a Caller,
    ) -> futures::future::LocalBoxFuture<'a, crate::dispatch::Reply> {
        Box::pin(Gateway::dispatch(self, tenant, command, caller))
    }

    fn workflow_result<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
    ) -> futures::future::LocalBoxFuture<'a, crate::dispatch::Reply> {
        Box::pin(self.saga_result(tenant, id))
    }
}

impl Gateway {
    /// Serves requests from `bus` until `shutdown` turns true, then drains.
    /// `ready` is answered once the subscription is in place.
    pub async fn serve(
        self: Arc<Self>,
        bus: Bus,
        mut shutdown: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<Result<(), crate::bus::Error>>,
    ) -> Result<(), crate::bus::Error> {
        let mut requests = match bus
            .subscribe(subject::REQUEST_WILDCARD, Some("cairn-gateway"))
            .await
        {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(crate::bus::Error::Other(e.to_string())));
                return Err(e);
            }
        };
        let _ = bus.flush().await;
        let max = self.services.limits.max_in_flight;
        let in_flight = Arc::new(Semaphore::new(max));
        loop {
            let message = tokio::select! {
                m = requests.next() => match m { Some(m) => m, None => break },
                _ = shutdown.changed() => break,
            };
            // A reply may only go to an inbox: never into a subject under
            // `cairn.` (another tenant's event stream). Such a request is
            // not run at all.
            if let Some(reply) = &message.reply
                && !subject::reply_allowed(reply, &self.services.security.inbox_prefix)
            {
                tracing::warn!(subject = %message.subject, reply = %reply, "request dropped: its reply subject is not an inbox");
                continue;
            }
            // One tenant's requests are bounded on their own, so a tenant
            // that fills its share gets `resource_exhausted` at once and
            // the shared pool stays open for the others.
            let tenant_permit = match self.tenant_slots.acquire(&message.subject) {
                Ok(permit) => permit,
                Err(refusal) => {
                    let bus = bus.clone();
                    actix_rt::spawn(async move {
                        reply_with(&bus, message.reply.as_deref(), &refusal.to_reply()).await;
                    });
                    continue;
                }
            };
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closes");
            let gateway = self.clone();
            let bus = bus.clone();
            actix_rt::spawn(async move {
                gateway.answer(&bus, message).await;
                drop(permit);
                drop(tenant_permit);
            });
        }
        drop(requests);
        // Drain: every permit back means every request answered.
        let _all = in_flight.acquire_many(max as u32).await;
        Ok(())
    }

    async fn answer(&self, bus: &Bus, message: BusMessage) {
        let caller = Caller {
            request_id: message.header(REQUEST_ID_HEADER).map(str::to_owned),
            // Recorded as claimed, not as proven: any client can set it.
            user: message.header(USER_HEADER).map(claimed_user),
            parent: None,
        };
        let span = tracing::info_span!(
            crate::telemetry::spans::COMMAND,
            { fields::TENANT } = tracing::field::Empty,
            { fields::KIND } = tracing::field::Empty,
            { fields::VERB } = tracing::field::Empty,
            { fields::REQUEST_ID } = caller.request_id.as_deref().unwrap_or(""),
        );
        let result = self
            .dispatch_raw(&message.subject, &message.payload, &caller)
            .instrument(span)
            .await;
        let body = match result {
            Ok(value) => value,
            Err(e) => {
                tracing::debug!(subject = %message.subject, code = %e.code, "request refused: {}", e.message);
                e.to_reply()
            }
        };
        reply_with(bus, message.reply.as_deref(), &body).await;
    }

    async fn dispatch_raw(
        &self,
        subject_text: &str,
        payload: &Bytes,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        let limit = self.services.limits.max_request_bytes;
        if payload.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body is {} bytes; the limit is {limit}",
                    payload.len()
                ),
            ));
        }
        if let Some(id) = &caller.request_id
            && (id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES)
        {
            return Err(ApiError::invalid(format!(
                "the {REQUEST_ID_HEADER} header must be 1 to {MAX_REQUEST_ID_BYTES} bytes"
            )));
        }
        // Workflow steps run under `<workflow>/run/<n>` and
        // `<workflow>/compensate/<n>`: a client id with a '/' could answer
        // a step before it runs (finding 3), so '/' is the steps' alone.
        if let Some(id) = &caller.request_id
            && id.contains('/')
        {
            return Err(ApiError::invalid(format!(
                "the {REQUEST_ID_HEADER} header may not contain '/': it is reserved for workflow steps"
            )));
        }
        let parsed = subject::parse_request(subject_text)?;
        let span = tracing::Span::current();
        span.record(fields::TENANT, parsed.tenant.as_str());
        span.record(fields::KIND, parsed.kind.as_str());
        span.record(fields::VERB, parsed.verb.as_str());
        // A large body (YAML above all) is decoded off the gateway's
        // thread, so one tenant's slow parse never stalls the others.
        let command = if payload.len() > INLINE_PARSE_BYTES {
            let (kind, verb, body) = (parsed.kind.clone(), parsed.verb.clone(), payload.clone());
            tokio::task::spawn_blocking(move || Command::parse(&kind, &verb, &body))
                .await
                .map_err(|e| ApiError::internal(format!("request decoding failed: {e}")))??
        } else {
            Command::parse(&parsed.kind, &parsed.verb, payload)?
        };
        self.authorize(&parsed, &command)?;
        self.dispatch(&parsed.tenant, command, caller).await
    }

    /// The operator's commands are served only on the admin subject space
    /// (when the bus proves who is a tenant), and the admin space serves
    /// nothing else.
    fn authorize(
        &self,
        parsed: &subject::RequestSubject,
        command: &Command,
    ) -> Result<(), ApiError> {
        let (kind, verb) = (&parsed.kind, &parsed.verb);
        if parsed.is_admin()
            && !command.operator_only()
            && !matches!(command, Command::Query(Query::Ping))
        {
            return Err(ApiError::invalid(format!(
                "{kind}.{verb} is a tenant's command: send it on {}",
                subject::request("<tenant>", kind, verb)
            )));
        }
        Ok(())
    }

    /// The operator's commands run only for the admin space when the bus
    /// proves who is a tenant, whichever way they arrive (a request on a
    /// tenant's subject, or a step of a tenant's workflow, which reaches
    /// [`Gateway::dispatch`] without passing [`Gateway::authorize`]).
    fn authorize_tenant(&self, tenant: &str, command: &Command) -> Result<(), ApiError> {
        if command.operator_only()
            && tenant != subject::ADMIN_SPACE
            && self.services.security.confined()
        {
            return Err(ApiError::denied(format!(
                "tenant {tenant} may not run the operator's commands (node.*, cluster-wide events), in a workflow step or otherwise: they are served only on {} (`cairn` sends them there with the operator's credentials)",
                subject::admin_request("<kind>", "<verb>")
            )));
        }
        Ok(())
    }

    /// Runs one decoded command for a tenant.
    pub async fn dispatch(
        &self,
        tenant: &str,
        command: Command,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        self.authorize_tenant(tenant, &command)?;
        let causation = match &command {
            Command::Query(_) => None,
            // Not journaled under the request id: a workflow start finds
            // its workflow by id (made from the request id), a hook runs
            // again, compaction is idempotent.
            Command::Workflow(_) | Command::Hook { .. } | Command::Reclaim => {
                return self.dispatch_unjournaled(tenant, command, caller).await;
            }
            _ => {
                let journal = &self.services.journal;
                if let Some(id) = &caller.request_id
                    && let Some(first) = journal
                        .lookup_request(tenant, id)
                        .map_err(|e| journal_error(&e))?
                {
                    return Ok(serde_json::from_slice(&first).unwrap_or(Value::Null));
                }
                Some(Causation {
                    tenant: tenant.to_owned(),
                    user: caller.user.clone().unwrap_or_else(|| "anonymous".into()),
                    dedup: caller.request_id.is_some(),
                    id: caller.request_id.clone().unwrap_or_else(new_request_id),
                })
            }
        };
        match (command, causation) {
            (Command::Volume(command), Some(causation)) => {
                self.check_app_namespace(tenant, &command).await?;
                let source = match &command {
                    VolumeCommand::Clone { name, .. } => {
                        Some(self.volume_state(tenant, name).await?)
                    }
                    _ => None,
                };
                let name = command.volume().to_owned();
                let actor = self.registry.volume_or_start(tenant, &name, &self.services);
                let sent = actor
                    .send(Execute {
                        command,
                        causation,
                        source,
                    })
                    .await;
                match sent {
                    Ok(result) => result,
                    Err(e) => Err(self.rebuild_volume(tenant, &name, e).await),
                }
            }
            (Command::App(command), Some(causation)) => {
                self.dispatch_app(tenant, command, causation).await
            }
            (Command::Repo(command), Some(causation)) => {
                self.dispatch_repo(tenant, command, causation).await
            }
            (Command::NodeFail { name }, Some(causation)) => {
                let actor = self
                    .registry
                    .node(&name)
                    .ok_or_else(|| ApiError::not_found(format!("node {name:?} does not exist")))?;
                actor.send(node::Fail { causation }).await.map_err(|e| {
                    ApiError::new(ErrorCode::Unavailable, format!("node actor {name}: {e}"))
                })??;
                self.failure_report(tenant, &name).await
            }
            (Command::Query(query), _) => self.query(tenant, query).await,
            (_, None) => Err(ApiError::internal("a command without causation")),
            (Command::Workflow(_) | Command::Hook { .. } | Command::Reclaim, _) => {
                Err(ApiError::internal("dispatched above"))
            }
        }
    }

    /// Runs one app command through the app's actor.
    async fn dispatch_app(
        &self,
        tenant: &str,
        mut command: AppCommand,
        causation: Causation,
    ) -> Result<Value, ApiError> {
        self.complete_app_command(tenant, &mut command).await?;
        let taken = match &command {
            AppCommand::Create(_)
            | AppCommand::Scale { .. }
            | AppCommand::CloneFrom { .. }
            | AppCommand::Pull { .. } => self.volume_names(tenant).await?,
            _ => BTreeSet::new(),
        };
        // Planned and reserved by the placement actor, against its own
        // view of every app's slices (reservations included).
        let placing = match &command {
            AppCommand::Create(_)
            | AppCommand::Scale { .. }
            | AppCommand::CloneFrom { .. }
            | AppCommand::Pull { .. } => Some(self.topology().await?),
            _ => None,
        };
        let name = command.app().to_owned();
        let actor = self.registry.app_or_start(tenant, &name, &self.services);
        let sent = actor
            .send(app::Execute {
                command,
                causation,
                taken,
                placing,
            })
            .await;
        match sent {
            Ok(result) => result,
            Err(e) => Err(self.rebuild_app(tenant, &name, e).await),
        }
    }

    /// Every registered node's state, by name.
    async fn node_states(&self) -> Result<BTreeMap<String, NodeState>, ApiError> {
        let mut nodes = BTreeMap::new();
        for (name, actor) in self.registry.nodes() {
            let state = actor.send(node::Get).await.map_err(|e| {
                ApiError::new(ErrorCode::Unavailable, format!("node actor {name}: {e}"))
            })?;
            nodes.insert(name, state);
        }
        Ok(nodes)
    }

    /// The cluster as the planner sees it.
    async fn topology(&self) -> Result<Topology, ApiError> {
        Ok(app_placement::topology_of(&self.node_states().await?))
    }

    /// Every live app of every tenant (placement is cluster-wide).
    async fn all_apps(&self) -> Result<Vec<((String, String), AppState)>, ApiError> {
        let mut apps = Vec::new();
        for ((tenant, name), _) in self.registry.all_apps() {
            match self.app_state(&tenant, &name).await {
                Ok(state) => apps.push(((tenant, name), state)),
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(apps)
    }

    /// What a failed node cost: every app's lost volumes, and whether a
    /// replica set lost more than one member. Other tenants' apps are
    /// counted but not named.
    async fn failure_report(&self, tenant: &str, node: &str) -> Result<Value, ApiError> {
        let topology = self.topology().await?;
        let apps = self.all_apps().await?;
        let plans: Vec<(String, Plan)> = apps
            .iter()
            .map(|((t, name), state)| {
                let shown = if t == tenant || tenant == subject::ADMIN_SPACE {
                    name.clone()
                } else {
                    format!("(tenant {t})")
                };
                (shown, app_placement::plan_of(state, &topology))
            })
            .collect();
        let impact = failure_impact(
            plans.iter().map(|(name, plan)| (name.as_str(), plan)),
            &Failure::Node {
                node: node.to_owned(),
            },
        );
        Ok(to_value(&reply::NodeFailReply {
            node: node.to_owned(),
            failed: true,
            lost_more_than_one_member: impact.lost_more_than_one_member(),
            impact: to_value(&impact),
            report: impact.to_string(),
        }))
    }

    /// Volume names under `<app>/` belong to that app: they are created and
    /// deleted only through it.
    async fn check_app_namespace(
        &self,
        tenant: &str,
        command: &VolumeCommand,
    ) -> Result<(), ApiError> {
        let name = command.volume();
        let Some((app, pvc)) = name.split_once('/') else {
            return Ok(());
        };
        let state = match self.app_state(tenant, app).await {
            Ok(state) => state,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let refuse = |what: &str| {
            Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("volume {name} belongs to app {app}: {what}"),
            ))
        };
        match command {
            VolumeCommand::Create { .. } | VolumeCommand::Clone { .. } => {
                refuse("names under an app are made by the app (cairn app create, cairn app scale)")
            }
            VolumeCommand::Delete { .. } if state.volumes.contains_key(pvc) => {
                refuse("delete the app or scale it in instead")
            }
            _ => Ok(()),
        }
    }

    /// Every existing volume name of a tenant.
    async fn volume_names(&self, tenant: &str) -> Result<BTreeSet<String>, ApiError> {
        let mut names = BTreeSet::new();
        for (name, actor) in self.registry.volumes_of(tenant) {
            let state = match actor.send(Get).await {
                Ok(state) => state,
                Err(e) => self.rebuild_volume_state(tenant, &name, e).await?,
            };
            if state.exists() {
                names.insert(name);
            }
        }
        Ok(names)
    }

    /// The state of every aggregate at the journal's head, to rebuild an
    /// actor from: the journal keeps it folded, so this costs a copy, not a
    /// replay of the history.
    pub(crate) fn journal_state(&self) -> Result<World, ApiError> {
        self.services.journal.world().map_err(|e| journal_error(&e))
    }

    /// A volume actor died (it panicked): start a new one from the journal.
    async fn rebuild_volume_state(
        &self,
        tenant: &str,
        name: &str,
        cause: actix::MailboxError,
    ) -> Result<VolumeState, ApiError> {
        tracing::error!(volume = name, tenant, error = %cause, "volume actor died; rebuilding it from the journal");
        let world = self.journal_state()?;
        let key = (tenant.to_owned(), name.to_owned());
        let state = world.volumes.get(&key).cloned().unwrap_or_default();
        self.registry
            .start_volume(tenant, name, state.clone(), &self.services);
        Ok(state)
    }

    async fn rebuild_volume(
        &self,
        tenant: &str,
        name: &str,
        cause: actix::MailboxError,
    ) -> ApiError {
        match self.rebuild_volume_state(tenant, name, cause).await {
            Ok(_) => actor_failed("volume", name),
            Err(e) => e,
        }
    }

    /// An app actor died (it panicked): start a new one from the journal.
    async fn rebuild_app_state(
        &self,
        tenant: &str,
        name: &str,
        cause: actix::MailboxError,
    ) -> Result<AppState, ApiError> {
        tracing::error!(app = name, tenant, error = %cause, "app actor died; rebuilding it from the journal");
        let world = self.journal_state()?;
        let key = (tenant.to_owned(), name.to_owned());
        let state = world.apps.get(&key).cloned().unwrap_or_default();
        // Whatever the dead actor had reserved will not commit.
        let settled = self
            .registry
            .placement()
            .send(crate::placement::Settle {
                tenant: tenant.to_owned(),
                app: name.to_owned(),
                ticket: None,
                placed: crate::placement::placed_of(&state),
                rebuilt: true,
            })
            .await;
        if settled.is_err() {
            tracing::error!("placement actor gone");
        }
        self.registry
            .start_app(tenant, name, state.clone(), &self.services);
        Ok(state)
    }

    async fn rebuild_app(&self, tenant: &str, name: &str, cause: actix::MailboxError) -> ApiError {
        match self.rebuild_app_state(tenant, name, cause).await {
            Ok(_) => actor_failed("app", name),
            Err(e) => e,
        }
    }

    pub(crate) async fn app_state(&self, tenant: &str, name: &str) -> Result<AppState, ApiError> {
        let missing = || ApiError::not_found(format!("app {name:?} does not exist"));
        let actor = self.registry.app(tenant, name).ok_or_else(missing)?;
        let state = match actor.send(app::Get).await {
            Ok(state) => state,
            Err(e) => self.rebuild_app_state(tenant, name, e).await?,
        };
        if state.exists() {
            Ok(state)
        } else {
            Err(missing())
        }
    }

    /// An app as its tenant sees it: its Secrets unsealed. Only for
    /// replies to the tenant that owns the app.
    fn app_view(&self, tenant: &str, state: &AppState) -> Result<reply::AppView, ApiError> {
        let mut shown = state.clone();
        self.services
            .secrets
            .unseal_objects(tenant, &mut shown.objects)?;
        Ok(app::view(&shown))
    }

    async fn volume_state(&self, tenant: &str, name: &str) -> Result<VolumeState, ApiError> {
        let missing = || ApiError::not_found(format!("volume {name:?} does not exist"));
        let actor = self.registry.volume(tenant, name).ok_or_else(missing)?;
        let state = match actor.send(Get).await {
            Ok(state) => state,
            Err(e) => self.rebuild_volume_state(tenant, name, e).await?,
        };
        if state.exists() {
            Ok(state)
        } else {
            Err(missing())
        }
    }

    async fn volume_view(&self, tenant: &str, state: &VolumeState) -> reply::VolumeView {
        let engine = engine_name(tenant, &state.name);
        let info = self
            .services
            .blocking(move |pool| pool.volume_info(&engine))
            .await
            .ok();
        reply::VolumeView {
            node: Some(self.services.node.clone()),
            nbd: self.services.nbd_uri(tenant, &state.name),
            ..volume::view(state, info.as_ref())
        }
    }

    async fn query(&self, tenant: &str, query: Query) -> Result<Value, ApiError> {
        match query {
            Query::Ping => Ok(to_value(&reply::PingReply {
                ok: true,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
            Query::VolumeList => {
                let mut volumes = Vec::new();
                for name in self.volume_names(tenant).await? {
                    if let Ok(state) = self.volume_state(tenant, &name).await {
                        volumes.push(self.volume_view(tenant, &state).await);
                    }
                }
                Ok(to_value(&reply::VolumeListReply { volumes }))
            }
            Query::AppGet { name } => {
                let state = self.app_state(tenant, &name).await?;
                Ok(to_value(&self.app_view(tenant, &state)?))
            }
            Query::AppList => {
                let mut apps = Vec::new();
                for (name, _) in self.registry.apps_of(tenant) {
                    if let Ok(state) = self.app_state(tenant, &name).await {
                        apps.push(self.app_view(tenant, &state)?);
                    }
                }
                Ok(to_value(&reply::AppListReply { apps }))
            }
            Query::AppLog { name, limit } => self.app_log(tenant, &name, limit),
            Query::AppPlacement { name } => {
                let state = self.app_state(tenant, &name).await?;
                let plan = app_placement::plan_of(&state, &self.topology().await?);
                let volumes = plan
                    .volumes
                    .into_iter()
                    .map(|v| reply::VolumePlacementView {
                        replica: v.replica,
                        volume: cairn_schema::app::volume_name(&name, &v.volume),
                        slices: v
                            .slices
                            .into_iter()
                            .map(|s| reply::SliceView {
                                index: s.index,
                                node: s.node,
                                disk: s.disk,
                                rack: s.rack,
                                datacenter: s.datacenter,
                            })
                            .collect(),
                    })
                    .collect();
                Ok(to_value(&reply::AppPlacementReply { name, volumes }))
            }
            Query::NodeList => Ok(to_value(&self.nodes().await?)),
            Query::AppSnapshots { name } => self.app_snapshots(tenant, &name).await,
            Query::WorkflowList { app, status, limit } => {
                self.workflow_list(tenant, app.as_deref(), status.as_deref(), limit)
                    .await
            }
            Query::WorkflowShow { id } => self.workflow_show(tenant, &id).await,
            Query::EventsReplay { at_seq, at_ms, app } => {
                self.replay_at(tenant, at_seq, at_ms, app.as_deref())
            }
            Query::VolumeShow { name } => {
                let state = self.volume_state(tenant, &name).await?;
                Ok(to_value(&self.volume_view(tenant, &state).await))
            }
            Query::VolumeSnapshots { name } => {
                let state = self.volume_state(tenant, &name).await?;
                let view = self.volume_view(tenant, &state).await;
                Ok(to_value(&reply::SnapshotsReply {
                    name,
                    snapshots: view.snapshots,
                }))
            }
            Query::VolumeDiff { from, to } => {
                for image in [&from, &to] {
                    let (vol, snap) = match image.split_once('@') {
                        Some((v, s)) => (v, Some(s)),
                        None => (image.as_str(), None),
                    };
                    let state = self.volume_state(tenant, vol).await?;
                    if let Some(s) = snap
                        && !state.snapshots.contains_key(s)
                    {
                        return Err(ApiError::not_found(format!(
                            "snapshot {image} does not exist"
                        )));
                    }
                }
                let (a, b) = (engine_image(tenant, &from), engine_image(tenant, &to));
                let extents = self
                    .services
                    .blocking(move |pool| pool.diff(&a, &b))
                    .await?;
                let changed_bytes: u64 = extents.iter().map(|e| e.len).sum();
                let extents = extents
                    .iter()
                    .map(|e| reply::Extent {
                        offset: e.offset,
                        len: e.len,
                    })
                    .collect();
                Ok(to_value(&reply::DiffReply {
                    from,
                    to,
                    changed_bytes,
                    extents,
                }))
            }
            Query::VolumeScrub { name } => {
                self.volume_state(tenant, &name).await?;
                let engine = engine_name(tenant, &name);
                let report = self
                    .services
                    .blocking(move |pool| pool.scrub(&engine))
                    .await?;
                let bad_blocks = report
                    .bad_blocks
                    .into_iter()
                    .map(|bad| reply::BadBlock {
                        image: public_image(tenant, &bad.image),
                        offset: bad.offset,
                        reason: bad.reason,
                    })
                    .collect();
                Ok(to_value(&reply::ScrubReply {
                    volume: name,
                    checked_blocks: report.checked_blocks,
                    bad_blocks,
                }))
            }
            Query::EventsList(filter) => self.events(tenant, &filter),
            Query::EventsVerify => self.verify().await,
            Query::RepoList => self.repo_list(tenant).await,
        }
    }

    fn events(&self, tenant: &str, filter: &EventsFilter) -> Result<Value, ApiError> {
        const PAGE: usize = 4096;
        let limit = filter.page_limit() as usize;
        let mut out = Vec::new();
        let mut from = filter.since_seq.max(1);
        let mut last_seq = 0;
        let wanted_tenant = if filter.cluster {
            subject::CLUSTER_TENANT
        } else {
            tenant
        };
        'pages: loop {
            let page = self
                .services
                .journal
                .read(from, PAGE)
                .map_err(|e| journal_error(&e))?;
            let n = page.len();
            for record in page {
                from = record.seq + 1;
                last_seq = record.seq;
                if record.tenant != wanted_tenant {
                    continue;
                }
                let view = record.view();
                if filter.matches(&record.aggregate, &view.kind, record.time_ms) {
                    out.push(view);
                    if out.len() == limit {
                        break 'pages;
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
        Ok(to_value(&reply::EventsListReply {
            events: out,
            next_seq: last_seq + 1,
        }))
    }

    /// The app's history, newest first: its own events and its volumes'.
    fn app_log(&self, tenant: &str, name: &str, limit: u32) -> Result<Value, ApiError> {
        let filter = EventsFilter {
            app: Some(name.to_owned()),
            ..EventsFilter::default()
        };
        let mut entries = std::collections::VecDeque::new();
        self.services
            .journal
            .scan(&mut |record| {
                if record.tenant == tenant && filter.matches(&record.aggregate, "", record.time_ms)
                {
                    if entries.len() == limit as usize {
                        entries.pop_front();
                    }
                    entries.push_back(record.view());
                }
                Ok(())
            })
            .map_err(|e| journal_error(&e))?;
        if entries.is_empty() {
            return Err(ApiError::not_found(format!(
                "app {name:?} has no history (it never existed)"
            )));
        }
        Ok(to_value(&reply::AppLogReply {
            name: name.to_owned(),
            entries: entries.into_iter().rev().collect(),
        }))
    }

    /// The state as of a seq or a time: the journal folded up to the last
    /// record at or before it.
    fn replay_at(
        &self,
        tenant: &str,
        at_seq: Option<u64>,
        at_ms: Option<u64>,
        app: Option<&str>,
    ) -> Result<Value, ApiError> {
        const PAGE: usize = 4096;
        let mut world = World::default();
        let mut at_time_ms = 0;
        if let (Some(seq), None) = (at_seq, at_ms) {
            // From the newest snapshot at or below the seq, not from seq 1.
            let journal = &self.services.journal;
            world = journal.fold_to(seq).map_err(|e| journal_error(&e))?;
            if let Some(last) = journal
                .read(world.seq, 1)
                .map_err(|e| journal_error(&e))?
                .first()
                .filter(|r| r.seq == world.seq)
            {
                at_time_ms = last.time_ms;
            }
        }
        let past = |r: &cairn_schema::EventRecord| {
            at_seq.is_some_and(|s| r.seq > s) || at_ms.is_some_and(|t| r.time_ms > t)
        };
        'pages: loop {
            let page = self
                .services
                .journal
                .read(world.seq + 1, PAGE)
                .map_err(|e| journal_error(&e))?;
            let n = page.len();
            for record in page {
                if past(&record) {
                    break 'pages;
                }
                let event = record.event().map_err(|e| {
                    journal_error(&journal::Error::Corrupted {
                        seq: record.seq,
                        message: e.to_string(),
                    })
                })?;
                at_time_ms = record.time_ms;
                world.apply(&record, &event);
            }
            if n < PAGE {
                break;
            }
        }
        let volumes = |prefix: Option<&str>| -> Vec<reply::VolumeView> {
            world
                .volumes_of(tenant)
                .filter(|v| {
                    prefix
                        .is_none_or(|p| v.name.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
                })
                .map(|v| volume::view(v, None))
                .collect()
        };
        let mut out = reply::ReplayReply {
            at_seq: world.seq,
            at_time: format_rfc3339_ms(at_time_ms),
            app: None,
            apps: None,
            volumes: volumes(app),
        };
        match app {
            Some(name) => {
                let state = world
                    .apps
                    .get(&(tenant.to_owned(), name.to_owned()))
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "app {name:?} did not exist at seq {}",
                            world.seq
                        ))
                    })?;
                out.app = Some(self.app_view(tenant, state)?);
            }
            None => {
                let apps = world
                    .apps
                    .iter()
                    .filter(|((t, _), _)| t == tenant)
                    .map(|(_, s)| self.app_view(tenant, s))
                    .collect::<Result<_, _>>()?;
                out.apps = Some(apps);
            }
        }
        Ok(to_value(&out))
    }

    /// The nodes, each with its disks: capacity, what the planner placed
    /// there, and (on this node) the bytes written.
    async fn nodes(&self) -> Result<reply::NodeListReply, ApiError> {
        let written: BTreeMap<String, u64> = self
            .services
            .pool
            .disk_usage()
            .into_iter()
            .map(|d| (d.dir.display().to_string(), d.used_bytes))
            .collect();
        let nodes = self.node_states().await?;
        let topology = app_placement::topology_of(&nodes);
        let usage =
            app_placement::usage_of(self.all_apps().await?.iter().map(|(_, a)| a), &topology);
        let nodes = nodes
            .into_values()
            .map(|n| reply::NodeView {
                state: if n.failed { "failed" } else { "ready" }.to_owned(),
                rack: n.rack,
                datacenter: n.datacenter,
                registered: format_rfc3339_ms(n.registered_ms),
                disks: n
                    .disks
                    .into_iter()
                    .map(|d| reply::DiskView {
                        placed_bytes: usage.used_bytes(&n.name, &d.name),
                        used_bytes: written.get(&d.path).copied(),
                        name: d.name,
                        path: d.path,
                        media: d.media,
                        capacity_bytes: d.capacity_bytes,
                    })
                    .collect(),
                nbd: (n.name == self.services.node)
                    .then(|| self.services.nbd.get().map(ToString::to_string))
                    .flatten(),
                name: n.name,
            })
            .collect();
        Ok(reply::NodeListReply { nodes })
    }

    /// Checks the hash chain, that the newest snapshot equals the full fold
    /// at its seq, and that a full replay (from the first record, not from a
    /// snapshot) gives the state the live actors hold.
    async fn verify(&self) -> Result<Value, ApiError> {
        let journal = &self.services.journal;
        let records = match journal.verify_chain().map_err(|e| journal_error(&e))? {
            Ok(n) => n,
            Err(brk) => {
                return Ok(to_value(&reply::VerifyReply {
                    ok: false,
                    records: None,
                    first_bad_seq: Some(brk.seq),
                    reason: Some(brk.reason),
                }));
            }
        };
        let full = journal.replay_full().map_err(|e| journal_error(&e))?;
        if let SnapshotCheck::Bad(brk) = full.snapshot {
            // A snapshot is state start-up would trust: report it like a
            // chain break.
            return Ok(to_value(&reply::VerifyReply {
                ok: false,
                records: Some(records),
                first_bad_seq: Some(brk.seq),
                reason: Some(brk.reason),
            }));
        }
        let replayed = full.world;
        let mut live = World::default();
        for ((tenant, name), _) in self.registry.all_volumes() {
            if let Ok(state) = self.volume_state(&tenant, &name).await {
                live.volumes.insert((tenant, name), state);
            }
        }
        for ((tenant, name), _) in self.registry.all_apps() {
            if let Ok(state) = self.app_state(&tenant, &name).await {
                live.apps.insert((tenant, name), state);
            }
        }
        for (name, actor) in self.registry.nodes() {
            if let Ok(state) = actor.send(node::Get).await {
                live.nodes.insert(name, state);
            }
        }
        // Registrations live in their owner, the repository actor.
        live.repos = self
            .registry
            .repos()
            .send(crate::repo_actor::List { tenant: None })
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("repository actor: {e}")))?;
        if let Some(reason) = first_difference(&live, &replayed) {
            return Ok(to_value(&reply::VerifyReply {
                ok: false,
                records: Some(records),
                first_bad_seq: None,
                reason: Some(reason),
            }));
        }
        Ok(to_value(&reply::VerifyReply {
            ok: true,
            records: Some(records),
            first_bad_seq: None,
            reason: None,
        }))
    }
}

/// The first aggregate whose live state differs from the replayed one.
fn first_difference(live: &World, replayed: &World) -> Option<String> {
    fn diff<S: PartialEq>(
        what: &str,
        live: &std::collections::BTreeMap<(String, String), S>,
        replayed: &std::collections::BTreeMap<(String, String), S>,
    ) -> Option<String> {
        let keys: BTreeSet<&(String, String)> = live.keys().chain(replayed.keys()).collect();
        keys.into_iter().find_map(|key| {
            let (tenant, name) = key;
            match (live.get(key), replayed.get(key)) {
                (Some(a), Some(b)) if a == b => None,
                (Some(_), Some(_)) => Some(format!(
                    "live state of {what} {tenant}/{name} differs from the replayed journal"
                )),
                (Some(_), None) => Some(format!(
                    "{what} {tenant}/{name} is live but not in the journal"
                )),
                (None, _) => Some(format!(
                    "{what} {tenant}/{name} is in the journal but not live"
                )),
            }
        })
    }
    diff("volume", &live.volumes, &replayed.volumes)
        .or_else(|| diff("app", &live.apps, &replayed.apps))
        .or_else(|| diff("repo", &live.repos, &replayed.repos))
}

/// What a command gets when its actor died handling it.
fn actor_failed(kind: &str, name: &str) -> ApiError {
    ApiError::internal(format!(
        "the actor of {kind} {name} failed while handling this command and was rebuilt from the \
         journal; nothing was committed unless `cairn events` shows it; retry with the same request id"
    ))
}

/// Request bodies above this many bytes are decoded on a blocking thread.
const INLINE_PARSE_BYTES: usize = 16 << 10;
/// The longest `Cairn-Request-Id` accepted.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The longest claimed user name kept (the `Cairn-User` header).
const MAX_CLAIMED_USER_BYTES: usize = 64;

/// How a client-set user name is recorded: as claimed, not as proven (any
/// client can set the header), and bounded.
fn claimed_user(user: &str) -> String {
    let mut end = user.len().min(MAX_CLAIMED_USER_BYTES);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    format!("claimed:{}", &user[..end])
}

/// Publishes a reply, when the request asked for one.
async fn reply_with(bus: &Bus, reply: Option<&str>, body: &Value) {
    if let Some(reply) = reply {
        let bytes = Bytes::from(serde_json::to_vec(body).expect("json values serialize"));
        if let Err(e) = bus.publish(reply, bytes).await {
            tracing::warn!(error = %e, "reply not sent");
        }
    }
}

/// A fresh request id for commands sent without one.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = blake3::hash(format!("{nanos}-{}-{n}", std::process::id()).as_bytes());
    cairn_schema::record::hex(&h.as_bytes()[..12])
}

/// The engine name of an image (`v` or `v@s`) of a tenant.
fn engine_image(tenant: &str, image: &str) -> String {
    match image.split_once('@') {
        Some((v, s)) => format!("{}@{s}", engine_name(tenant, v)),
        None => engine_name(tenant, image),
    }
}

/// The tenant's name for an engine image.
fn public_image(tenant: &str, image: &str) -> String {
    let prefix = format!("{tenant}:");
    image.strip_prefix(&prefix).unwrap_or(image).to_owned()
}
