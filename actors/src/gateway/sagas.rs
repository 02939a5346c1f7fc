//! The gateway's workflow side: starting, resuming and cancelling sagas
//! (built-in operations and user workflows), the commands only workflow
//! steps use (`app.hook`, `app.reclaim`), and the workflow and app-snapshot
//! queries. Workflow facts are journaled and folded by their owner, the
//! workflow actor ([`crate::workflow`]); this module claims ids, resolves
//! definitions, launches saga actors and waits for their answers.
//!
//! # Secret params
//! A param declared `secret: true` is sealed in `WorkflowStarted`
//! ([`crate::secrets`]); the saga unseals it when it resolves the
//! definition it runs ([`running_definition_of`]), so it resumes after a
//! crash. Every view resolves the definition with the param `<redacted>`
//! instead ([`definition_of`]), so neither the params nor a step's `with`
//! show it.
//!
//! # Workflow ids
//! A start names its workflow with the caller's `workflow` id, else one
//! made from the request id (so a retried request, or a saga step run
//! again after a crash, finds the workflow it started), else a random one.
//! A start whose id is taken answers with that workflow.

use std::collections::BTreeMap;

use cairn_schema::command::{DefinitionSource, WorkflowCommand};
use cairn_schema::event::WorkflowStarted;
use cairn_schema::reply::{self, to_value};
use cairn_schema::time::format_rfc3339_ms;
use cairn_schema::workflow::{Status, WorkflowState};
use cairn_schema::{ApiError, AppCommand, Command, ErrorCode, Event};
use cairn_workflows::{Definition, builtin, definition};
use serde_json::Value;
use tokio::sync::watch;

use super::{Caller, Gateway, new_request_id};
use crate::journal::Causation;
use crate::saga::{CancelFlag, SagaActor, SagaHandle, SagaResult};
use crate::secrets::ClusterKey;
use cairn_schema::sealed::{REDACTED, is_sealed_param};

/// A claimed workflow id: the handle waiters get, and the sender its saga
/// answers through.
struct Reservation {
    handle: SagaHandle,
    tx: watch::Sender<Option<SagaResult>>,
}

/// Most sagas running at once.
pub const MAX_RUNNING_SAGAS: usize = 4096;
/// The deepest chain of workflows started by each other's steps (a root
/// workflow is depth 1).
pub const MAX_NESTING: usize = 8;
/// Dead space (of a segment) above which `app.reclaim` compacts it.
const RECLAIM_THRESHOLD: f64 = 0.25;

fn workflow_id(caller: &Caller, chosen: Option<String>) -> String {
    chosen.unwrap_or_else(|| {
        let seed = caller.request_id.clone().unwrap_or_else(new_request_id);
        format!("wf-{}", &blake3::hash(seed.as_bytes()).to_hex()[..12])
    })
}

/// The params as they may be shown: those declared `secret: true` (and
/// anything sealed) are `<redacted>`.
fn shown_params(state: &WorkflowState) -> Vec<(String, Value)> {
    let journaled: Vec<(String, Value)> = state
        .params
        .iter()
        .map(|(k, v)| {
            let value = if is_sealed_param(v) {
                Value::String(REDACTED.to_owned())
            } else {
                serde_json::from_str(v).unwrap_or(Value::Null)
            };
            (k.clone(), value)
        })
        .collect();
    match definition::parse(&state.definition) {
        Ok(template) => template.redact(&journaled),
        Err(_) => journaled,
    }
}

/// The definition a journaled workflow shows: its pinned text resolved
/// with its shown params, so no secret param appears in a step's `with`.
/// Step names, order and output are those of the running definition.
fn definition_of(state: &WorkflowState) -> Result<Definition, ApiError> {
    definition::parse(&state.definition)?.resolve(&state.id, &shown_params(state))
}

/// The definition a journaled workflow runs: its pinned text, resolved
/// again with its parameters, secret ones unsealed (pure but for the
/// unsealing, so the same as when it started); and the secret params'
/// values as text, for the saga to cut out of what it journals.
fn running_definition_of(
    state: &WorkflowState,
    tenant: &str,
    key: &ClusterKey,
) -> Result<(Definition, Vec<String>), ApiError> {
    let template = definition::parse(&state.definition)?;
    let mut secrets = Vec::new();
    let params = state
        .params
        .iter()
        .map(|(k, v)| {
            let value = key.unseal_param(tenant, v)?;
            if template.is_secret(k) || is_sealed_param(v) {
                secrets.push(match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
            Ok((k.clone(), value))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok((template.resolve(&state.id, &params)?, secrets))
}

/// The workflow actor is gone: only at shutdown.
fn workflow_actor_gone(e: actix::MailboxError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("workflow actor: {e}"))
}

fn rfc(ms: Option<u64>) -> Option<String> {
    ms.map(format_rfc3339_ms)
}

fn view(state: &WorkflowState, def: Option<&Definition>) -> reply::WorkflowView {
    let steps = def
        .map(|d| {
            d.steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let rec = state.steps.get(i).cloned().unwrap_or_default();
                    reply::WorkflowStepView {
                        index: i as u32,
                        name: s.name.clone(),
                        run: s.action.run.clone(),
                        with: s.action.with.clone(),
                        compensate: s.compensate.as_ref().map(|c| c.run.clone()),
                        state: if rec.state.is_empty() {
                            "pending".into()
                        } else {
                            rec.state.clone()
                        },
                        attempts: rec.attempts,
                        max_attempts: s.retry.max_attempts,
                        timeout_ms: s.timeout_ms,
                        started: rfc(rec.started_ms),
                        finished: rfc(rec.finished_ms),
                        duration_ms: rec
                            .started_ms
                            .zip(rec.finished_ms)
                            .map(|(a, b)| b.saturating_sub(a)),
                        error: rec.error.clone(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let step_name = |i: u32| {
        def.and_then(|d| d.steps.get(i as usize))
            .map(|s| s.name.clone())
    };
    let output = def.and_then(|d| {
        state
            .steps
            .get(d.output)
            .and_then(|s| s.result.as_deref())
            .and_then(|r| serde_json::from_str(r).ok())
    });
    reply::WorkflowView {
        id: state.id.clone(),
        name: state.name.clone(),
        description: def.map(|d| d.description.clone()).unwrap_or_default(),
        status: state.status().as_str().to_owned(),
        app: state.app.clone(),
        parent: state.parent.clone(),
        started: Some(format_rfc3339_ms(state.started_ms)),
        finished: rfc(state.finished_ms),
        duration_ms: state
            .finished_ms
            .map(|f| f.saturating_sub(state.started_ms)),
        hash: state.hash.clone(),
        params: shown_params(state).into_iter().collect(),
        failed_step: state.failed_step.and_then(step_name),
        failure: state.error.clone(),
        steps,
        output: if state.status() == Status::Completed {
            output
        } else {
            None
        },
        definition: state.definition.clone(),
    }
}

impl Gateway {
    /// Commands that are not journaled under their request id.
    pub(super) async fn dispatch_unjournaled(
        &self,
        tenant: &str,
        command: Command,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        match command {
            Command::Workflow(WorkflowCommand::Start {
                source,
                params,
                wait,
                id,
            }) => {
                self.start_workflow(tenant, source, params, wait, id, caller)
                    .await
            }
            Command::Workflow(WorkflowCommand::Resume { id }) => {
                self.resume_workflow(tenant, &id, caller).await
            }
            Command::Workflow(WorkflowCommand::Cancel { id, reason }) => {
                self.cancel_workflow(tenant, &id, &reason).await
            }
            Command::Hook {
                app,
                hook,
                snapshot,
            } => {
                // Only a step of one of this tenant's workflows runs hooks.
                let parent_is_tenants = match caller.parent.as_deref() {
                    Some(parent) => self.workflow_state(tenant, parent).await?.is_some(),
                    None => false,
                };
                crate::hooks::check_step_only(tenant, caller.parent.as_deref(), parent_is_tenants)?;
                let state = self.app_state(tenant, &app).await?;
                let reply = self
                    .services
                    .hooks
                    .run(tenant, &state, &hook, snapshot.as_deref())
                    .await?;
                Ok(to_value(&reply))
            }
            Command::Reclaim => {
                let stats = self
                    .services
                    .blocking(|pool| pool.compact(RECLAIM_THRESHOLD))
                    .await?;
                Ok(to_value(&reply::ReclaimReply {
                    segments_freed: stats.segments_freed,
                    bytes_freed: stats.bytes_freed,
                    bytes_moved: stats.bytes_moved,
                }))
            }
            _ => Err(ApiError::internal("not an unjournaled command")),
        }
    }

    /// Fills in what an app command needs from other aggregates: a clone's
    /// source snapshot, the clones that protect a snapshot.
    pub(super) async fn complete_app_command(
        &self,
        tenant: &str,
        command: &mut AppCommand,
    ) -> Result<(), ApiError> {
        match command {
            AppCommand::CloneFrom {
                source,
                snapshot,
                from,
                overrides,
                ..
            } => {
                let state = self.app_state(tenant, source).await?;
                let snap = state.snapshots.get(snapshot.as_str()).ok_or_else(|| {
                    ApiError::not_found(format!("app {source} has no snapshot {snapshot:?}"))
                })?;
                **from = snap.clone();
                // A `--set Secret/…` value is sealed before it is decided:
                // `AppCloned` records the overrides as given.
                for o in overrides.iter_mut() {
                    *o = self.services.secrets.seal_override(tenant, o)?;
                }
            }
            AppCommand::SnapshotDrop {
                name,
                snapshot,
                dependants,
                ..
            } => {
                *dependants = self.clones_of(tenant, name, snapshot).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Apps of the tenant cloned from `app@snapshot`.
    async fn clones_of(
        &self,
        tenant: &str,
        app: &str,
        snapshot: &str,
    ) -> Result<Vec<String>, ApiError> {
        let origin = Some((app.to_owned(), snapshot.to_owned()));
        Ok(self
            .all_apps()
            .await?
            .into_iter()
            .filter(|((t, _), s)| t == tenant && s.origin == origin)
            .map(|((_, name), _)| name)
            .collect())
    }

    pub(super) async fn app_snapshots(&self, tenant: &str, name: &str) -> Result<Value, ApiError> {
        let state = self.app_state(tenant, name).await?;
        let mut snapshots: Vec<_> = state.snapshots.values().collect();
        snapshots.sort_by_key(|s| s.seq);
        let mut views = Vec::new();
        for s in snapshots {
            let mut at = state.clone();
            at.objects = s.objects.clone();
            views.push(reply::AppSnapshotView {
                name: s.name.clone(),
                created: format_rfc3339_ms(s.created_ms),
                seq: s.seq,
                message: s.message.clone(),
                volumes: s
                    .volumes
                    .iter()
                    .map(|v| cairn_schema::app::volume_name(name, &v.pvc))
                    .collect(),
                workloads: at
                    .workloads()
                    .into_iter()
                    .map(|(kind, name, replicas)| reply::WorkloadView {
                        kind,
                        name,
                        replicas,
                    })
                    .collect(),
                workflow: s.workflow.clone(),
                clones: self.clones_of(tenant, name, &s.name).await?,
            });
        }
        Ok(to_value(&reply::AppSnapshotsReply {
            name: name.to_owned(),
            snapshots: views,
        }))
    }

    pub(super) async fn workflow_list(
        &self,
        tenant: &str,
        app: Option<&str>,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Value, ApiError> {
        let workflows = self
            .registry
            .workflows()
            .send(crate::workflow::List {
                tenant: tenant.to_owned(),
            })
            .await
            .map_err(workflow_actor_gone)?;
        let mut found: Vec<&WorkflowState> = workflows
            .iter()
            .filter(|((t, _), w)| {
                t == tenant
                    && app.is_none_or(|a| w.app.as_deref() == Some(a))
                    && status.is_none_or(|s| w.status().as_str() == s)
            })
            .map(|(_, w)| w)
            .collect();
        found.sort_by_key(|w| std::cmp::Reverse(w.started_seq));
        let workflows = found
            .into_iter()
            .take(limit as usize)
            .map(|w| {
                let def = definition_of(w).ok();
                reply::WorkflowSummary {
                    id: w.id.clone(),
                    name: w.name.clone(),
                    app: w.app.clone(),
                    status: w.status().as_str().to_owned(),
                    started: format_rfc3339_ms(w.started_ms),
                    finished: rfc(w.finished_ms),
                    duration_ms: w.finished_ms.map(|f| f.saturating_sub(w.started_ms)),
                    steps_completed: w.steps.iter().filter(|s| s.state == "completed").count()
                        as u32,
                    steps: def.as_ref().map_or(0, |d| d.steps.len() as u32),
                    failed_step: w.failed_step.and_then(|i| {
                        def.as_ref()
                            .and_then(|d| d.steps.get(i as usize))
                            .map(|s| s.name.clone())
                    }),
                    error: w.error.clone(),
                }
            })
            .collect();
        Ok(to_value(&reply::WorkflowListReply {
            workflows,
            builtins: builtin::BUILTINS
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .collect(),
        }))
    }

    /// Refuses a workflow whose step would start one more level below
    /// `parent` than [`MAX_NESTING`] allows.
    async fn check_nesting(&self, tenant: &str, parent: &str) -> Result<(), ApiError> {
        let mut depth = 1;
        let mut next = Some(parent.to_owned());
        while let Some(id) = next {
            depth += 1;
            if depth > MAX_NESTING {
                return Err(ApiError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "workflows nest at most {MAX_NESTING} deep (a step of {parent} would start level {depth})"
                    ),
                ));
            }
            next = self
                .workflow_state(tenant, &id)
                .await?
                .and_then(|state| state.parent);
        }
        Ok(())
    }

    /// A workflow as its owner, the workflow actor, holds it.
    async fn workflow_state(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<WorkflowState>, ApiError> {
        self.registry
            .workflows()
            .send(crate::workflow::Get {
                tenant: tenant.to_owned(),
                id: id.to_owned(),
            })
            .await
            .map_err(workflow_actor_gone)
    }

    pub(super) async fn workflow_show(&self, tenant: &str, id: &str) -> Result<Value, ApiError> {
        if let Some(state) = self.workflow_state(tenant, id).await? {
            return Ok(to_value(&view(&state, definition_of(&state).ok().as_ref())));
        }
        if let Some(text) = builtin::text(id) {
            let template = definition::parse(text)?;
            // Shown with placeholders for its params.
            let params: Vec<(String, Value)> = template
                .params
                .iter()
                .map(|p| (p.name.clone(), Value::String(format!("<{}>", p.name))))
                .collect();
            let def = template.resolve("<workflow.id>", &params)?;
            let state = WorkflowState {
                id: id.to_owned(),
                name: def.name.clone(),
                definition: text.to_owned(),
                hash: definition::hash(text),
                params: params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                ..WorkflowState::default()
            };
            let mut v = view(&state, Some(&def));
            v.status = "definition".into();
            v.started = None;
            return Ok(to_value(&v));
        }
        Err(ApiError::not_found(format!(
            "there is no workflow {id:?} (finished ones are forgotten after {}; built-ins: {})",
            cairn_schema::state::MAX_FINISHED_WORKFLOWS,
            builtin::BUILTINS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// A finished workflow's answer, from the journal: the output step's
    /// reply, or an error naming the step that failed.
    pub async fn saga_result(&self, tenant: &str, id: &str) -> SagaResult {
        let state = self
            .workflow_state(tenant, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("there is no workflow {id:?}")))?;
        let def = definition_of(&state)?;
        let details = |step: Option<String>| serde_json::json!({"workflow": id, "status": state.status().as_str(), "step": step});
        match state.status() {
            Status::Completed => {
                let mut out: Value = state
                    .steps
                    .get(def.output)
                    .and_then(|s| s.result.as_deref())
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or(Value::Null);
                if let Some(obj) = out.as_object_mut() {
                    if obj.contains_key("workflow") {
                        obj.insert("workflow".into(), Value::String(id.to_owned()));
                    }
                    if state.name == "app-rollback" && obj.contains_key("safety_snapshot") {
                        obj.insert(
                            "safety_snapshot".into(),
                            Value::String(format!("safety-{id}")),
                        );
                    }
                }
                if state.parent.is_none()
                    && !builtin::BUILTINS.iter().any(|(n, _)| *n == state.name)
                {
                    // A user workflow answers with its whole view.
                    return Ok(to_value(&view(&state, Some(&def))));
                }
                Ok(out)
            }
            Status::Running => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("workflow {id} is still running; see cairn workflow show {id}"),
            )),
            status => {
                let step = state
                    .failed_step
                    .and_then(|i| def.steps.get(i as usize))
                    .map(|s| s.name.clone());
                let error = state.error.clone().unwrap_or_default();
                // "code: message" as the step reported it.
                let code = error
                    .split_once(": ")
                    .and_then(|(c, _)| serde_json::from_value(Value::String(c.into())).ok())
                    .filter(|_| status == Status::Compensated && step.is_some())
                    .unwrap_or(ErrorCode::Aborted);
                let what = match (&step, status) {
                    (Some(s), Status::Compensated) => {
                        format!("step {s} failed ({error}); what it had done was undone")
                    }
                    (None, Status::Compensated) => {
                        "it was cancelled; what it had done was undone".to_owned()
                    }
                    (s, _) => format!(
                        "compensating step {} keeps failing ({error}); fix the cause, then cairn workflow resume {id}",
                        s.clone().unwrap_or_default()
                    ),
                };
                Err(ApiError::new(
                    code,
                    format!("workflow {id} ({}) {}: {what}", state.name, status.as_str()),
                )
                .with_details(details(step)))
            }
        }
    }

    /// Claims a workflow id in the registry: `Err` with the running
    /// saga's handle if it is taken. Whoever holds the claim starts it.
    fn reserve(&self, tenant: &str, id: &str) -> Result<Reservation, SagaHandle> {
        let (tx, rx) = watch::channel(None);
        let handle = SagaHandle {
            cancel: std::sync::Arc::new(CancelFlag::default()),
            done: rx,
        };
        if !self.registry.add_saga(tenant, id, handle.clone()) {
            return match self.registry.saga(tenant, id) {
                Some(h) => Err(h),
                // It ended between the two looks: claim again.
                None => self.reserve(tenant, id),
            };
        }
        let registry = self.registry.clone();
        let (t, i) = (tenant.to_owned(), id.to_owned());
        // The registry forgets the saga when it ends (or its start fails).
        let mut watch_done = handle.done.clone();
        actix_rt::spawn(async move {
            let _ = watch_done.changed().await;
            registry.remove_saga(&t, &i);
        });
        Ok(Reservation { handle, tx })
    }

    /// Starts the saga actor of a journaled workflow under a claim.
    fn launch(
        &self,
        tenant: &str,
        state: &WorkflowState,
        user: &str,
        r: Reservation,
    ) -> SagaHandle {
        use actix::Actor;
        let running = running_definition_of(state, tenant, &self.services.secrets);
        let (def, secrets) = match running {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(workflow = %state.id, error = %e, "a journaled workflow's definition does not resolve");
                let _ = r.tx.send(Some(Err(e)));
                return r.handle;
            }
        };
        SagaActor {
            tenant: tenant.to_owned(),
            id: state.id.clone(),
            user: user.to_owned(),
            definition: def,
            progress: state.progress.clone(),
            dispatch: self.me.clone(),
            workflows: self.registry.workflows().clone(),
            cancel: r.handle.cancel.clone(),
            done: Some(r.tx),
            secrets,
        }
        .start();
        r.handle
    }

    /// Starts (or finds) the saga of a journaled workflow.
    fn spawn_saga(&self, tenant: &str, state: &WorkflowState, user: &str) -> Option<SagaHandle> {
        match self.reserve(tenant, &state.id) {
            Ok(r) => Some(self.launch(tenant, state, user, r)),
            Err(running) => Some(running),
        }
    }

    /// At start-up: every running workflow goes on.
    pub fn resume_open_workflows(&self, workflows: &BTreeMap<(String, String), WorkflowState>) {
        for ((tenant, _), state) in workflows {
            if state.status() == Status::Running {
                tracing::info!(workflow = %state.id, name = %state.name, "resuming a workflow cut short by the last stop");
                self.spawn_saga(tenant, state, "cairn");
            }
        }
    }

    async fn wait_for(&self, tenant: &str, id: &str, handle: SagaHandle) -> SagaResult {
        let mut done = handle.done;
        loop {
            if let Some(result) = done.borrow().clone() {
                return result;
            }
            if done.changed().await.is_err() {
                // Stopped at shutdown.
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the server stopped while workflow {id} ran; it resumes at the next start"
                    ),
                ));
            }
            let _ = tenant;
        }
    }

    async fn start_workflow(
        &self,
        tenant: &str,
        source: DefinitionSource,
        params: Vec<(String, Value)>,
        wait: bool,
        chosen: Option<String>,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        // A pull into an app that exists is a repair (a rollback to the
        // pulled state, after a safety snapshot).
        let source = match source {
            DefinitionSource::Builtin(name) if name == "app-pull" => {
                let target = params
                    .iter()
                    .find(|(k, _)| k == "target")
                    .and_then(|(_, v)| v.as_str())
                    .unwrap_or_default();
                let exists = self.app_state(tenant, target).await.is_ok();
                DefinitionSource::Builtin(
                    if exists {
                        "app-pull-repair"
                    } else {
                        "app-pull"
                    }
                    .into(),
                )
            }
            other => other,
        };
        let text = match &source {
            DefinitionSource::Builtin(name) => builtin::text(name)
                .ok_or_else(|| ApiError::internal(format!("no built-in workflow {name}")))?
                .to_owned(),
            DefinitionSource::Text(t) => t.clone(),
        };
        let id = workflow_id(caller, chosen);
        let template = definition::parse(&text)?;
        let def = template.resolve(&id, &params)?;
        let reply_now = |status: &str| {
            Ok(to_value(&reply::WorkflowStartReply {
                workflow: id.clone(),
                name: def.name.clone(),
                status: status.to_owned(),
            }))
        };
        // Taken: the same request again, or a chosen id in use.
        if let Some(handle) = self.registry.saga(tenant, &id) {
            return if wait {
                self.wait_for(tenant, &id, handle).await
            } else {
                reply_now("running")
            };
        }
        if let Some(existing) = self.workflow_state(tenant, &id).await? {
            if existing.hash != definition::hash(&text) && caller.request_id.is_none() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "workflow id {id} is taken by another workflow ({})",
                        existing.name
                    ),
                ));
            }
            return match existing.status() {
                Status::Running => match self.spawn_saga(tenant, &existing, "cairn") {
                    Some(h) if wait => self.wait_for(tenant, &id, h).await,
                    _ => reply_now("running"),
                },
                s if wait => {
                    let _ = s;
                    self.saga_result(tenant, &id).await
                }
                s => reply_now(s.as_str()),
            };
        }
        if self.registry.running_sagas() >= MAX_RUNNING_SAGAS {
            return Err(ApiError::new(
                ErrorCode::ResourceExhausted,
                format!("{MAX_RUNNING_SAGAS} workflows are running; try again later"),
            ));
        }
        // One tenant's share, so it cannot take every slot. A nested
        // workflow that its parent waits for is not refused: the parent
        // holds a slot already and would otherwise fail half done; but
        // nesting is bounded in depth, so a workflow that runs itself
        // cannot chain slots without end. One started with `async` by a
        // step is a new root as far as slots go, and counts.
        if let Some(parent) = caller.parent.as_deref() {
            self.check_nesting(tenant, parent).await?;
        }
        let per_tenant = self.services.security.caps.sagas_running;
        let counted = caller.parent.is_none() || !wait;
        if counted && self.registry.running_sagas_of(tenant) >= per_tenant {
            return Err(ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "tenant {tenant} has {per_tenant} workflows running, its limit; try again when some have finished"
                ),
            ));
        }
        // Claim the id before journaling, so copies of one request racing
        // each other start one workflow; look at the journal again under
        // the claim (a copy may have started and finished it meanwhile).
        let reservation = match self.reserve(tenant, &id) {
            Ok(r) => r,
            Err(running) => {
                return if wait {
                    self.wait_for(tenant, &id, running).await
                } else {
                    reply_now("running")
                };
            }
        };
        if let Some(existing) = self.workflow_state(tenant, &id).await? {
            if existing.status() == Status::Running {
                let handle = self.launch(tenant, &existing, "cairn", reservation);
                return if wait {
                    self.wait_for(tenant, &id, handle).await
                } else {
                    reply_now("running")
                };
            }
            let result = self.saga_result(tenant, &id).await;
            let _ = reservation.tx.send(Some(result.clone()));
            return if wait {
                result
            } else {
                reply_now(existing.status().as_str())
            };
        }
        let app = params
            .iter()
            .find(|(k, _)| k == "app")
            .and_then(|(_, v)| v.as_str().map(str::to_owned));
        let user = caller.user.clone().unwrap_or_else(|| "anonymous".into());
        let started = WorkflowStarted {
            workflow: id.clone(),
            name: def.name.clone(),
            definition: text.clone(),
            hash: definition::hash(&text),
            // Secret params are sealed: the saga unseals them to run.
            params: params
                .iter()
                .map(|(k, v)| {
                    let text = if template.is_secret(k) {
                        self.services.secrets.seal_param(tenant, v)
                    } else {
                        v.to_string()
                    };
                    (k.clone(), text)
                })
                .collect(),
            app,
            parent: caller.parent.clone(),
        };
        // The workflow actor decides and journals the start.
        let started = self
            .registry
            .workflows()
            .send(crate::workflow::Start {
                causation: Causation {
                    tenant: tenant.to_owned(),
                    user: user.clone(),
                    id: id.clone(),
                    dedup: false,
                },
                started,
            })
            .await
            .map_err(workflow_actor_gone)
            .and_then(|r| r);
        let state = match started {
            Ok(state) => state,
            Err(e) => {
                let _ = reservation.tx.send(Some(Err(e.clone())));
                return Err(e);
            }
        };
        let handle = self.launch(tenant, &state, &user, reservation);
        if wait {
            self.wait_for(tenant, &id, handle).await
        } else {
            reply_now("running")
        }
    }

    async fn resume_workflow(
        &self,
        tenant: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        let state = self
            .workflow_state(tenant, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("there is no workflow {id:?}")))?;
        let handle = match (self.registry.saga(tenant, id), state.status()) {
            (Some(h), _) => Some(h),
            (None, Status::Running) => self.spawn_saga(tenant, &state, "cairn"),
            (None, Status::Stuck) => {
                self.registry
                    .workflows()
                    .send(crate::workflow::Record {
                        causation: Causation {
                            tenant: tenant.to_owned(),
                            user: caller.user.clone().unwrap_or_else(|| "anonymous".into()),
                            id: id.to_owned(),
                            dedup: false,
                        },
                        event: Event::WorkflowResumed(cairn_schema::event::WorkflowResumed {
                            workflow: id.to_owned(),
                        }),
                    })
                    .await
                    .map_err(workflow_actor_gone)??;
                let state = self
                    .workflow_state(tenant, id)
                    .await?
                    .ok_or_else(|| ApiError::internal("a resumed workflow is gone"))?;
                self.spawn_saga(tenant, &state, "cairn")
            }
            // Completed or compensated: nothing to resume.
            (None, _) => None,
        };
        if let Some(h) = handle {
            let _ = self.wait_for(tenant, id, h).await;
        }
        self.workflow_show(tenant, id).await
    }

    async fn cancel_workflow(
        &self,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<Value, ApiError> {
        let state = self
            .workflow_state(tenant, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("there is no workflow {id:?}")))?;
        let handle = match self.registry.saga(tenant, id) {
            Some(h) => Some(h),
            None if state.status() == Status::Running => self.spawn_saga(tenant, &state, "cairn"),
            // Finished (or stuck: it compensates already): nothing to cancel.
            None => None,
        };
        if let Some(h) = handle {
            h.cancel.request(reason);
            let _ = self.wait_for(tenant, id, h).await;
        }
        self.workflow_show(tenant, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLOAD: &str = r#"
kind: Workflow
metadata: {name: upload}
spec:
  params:
    app: null
    key: {required: true, secret: true}
  steps:
    - name: push
      run: app.hook
      with: {name: "${app}", hook: "upload-${key}"}
"#;

    #[test]
    fn secret_params_are_redacted_in_views_and_unsealed_to_run() {
        let key = ClusterKey::from_bytes(&[3; 32]);
        let state = WorkflowState {
            id: "wf-1".into(),
            name: "upload".into(),
            definition: UPLOAD.into(),
            hash: definition::hash(UPLOAD),
            params: vec![
                ("app".into(), "\"shop\"".into()),
                (
                    "key".into(),
                    key.seal_param("acme", &Value::from("hunter2")),
                ),
            ],
            ..WorkflowState::default()
        };
        let shown = view(&state, definition_of(&state).ok().as_ref());
        let text = serde_json::to_string(&shown).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(shown.params["key"], Value::from(REDACTED));
        assert_eq!(shown.params["app"], Value::from("shop"));
        assert_eq!(shown.steps[0].with["hook"], "upload-<redacted>");
        // The saga runs with the real value.
        let (running, secrets) = running_definition_of(&state, "acme", &key).unwrap();
        assert_eq!(running.steps[0].action.with["hook"], "upload-hunter2");
        assert_eq!(secrets, ["hunter2"]);
        // Not for another tenant.
        assert!(running_definition_of(&state, "evil", &key).is_err());
    }
}
