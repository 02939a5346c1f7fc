//! The saga actor: one per running workflow. It drives the pure machine
//! ([`cairn_workflows::next`]) and does what it says: journal the fact that
//! a step (or compensation) starts (through the workflow actor,
//! [`crate::workflow`]), run the step's API command through a
//! [`Dispatch`] (the gateway) under the step's idempotency key, journal how it ended, repeat,
//! until the machine says the workflow is finished.
//!
//! # Invariants
//! - A fact is journaled *before* the effect it announces (StepStarted
//!   before the command) and *after* the effect it reports (StepCompleted).
//!   So after a crash the journal's facts, folded, tell `next` what to do:
//!   an open step runs again under the same key, and the request-id dedup
//!   of the command it runs returns the first answer if it had finished.
//! - Nothing of a saga lives only in memory except the cancel flag: a saga
//!   whose process died is resumed at start-up from the journal
//!   ([`crate::cluster`]).
//! - Steps run one at a time; a cancel is seen between steps (a running
//!   step ends first, or times out) and during backoff waits.
//!
//! Secret params: the saga runs with their values (the gateway unseals
//! them), and cuts them out of every step result and error it journals.
//!
//! Failpoints: `saga.before.<definition>.<step>` and
//! `saga.after.<definition>.<step>` (before the command runs, and after it
//! ran but before its completion is journaled), for the crash tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use cairn_schema::event::{
    WorkflowCancelled, WorkflowCompensationCompleted, WorkflowCompensationFailed,
    WorkflowCompensationStarted, WorkflowFinished, WorkflowStepCompleted, WorkflowStepFailed,
    WorkflowStepStarted,
};
use cairn_schema::workflow::Progress;
use cairn_schema::{ApiError, Command, ErrorCode, Event};
use cairn_workflows::{Action, Definition, Effect, Outcome, next, retryable};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::dispatch::{Caller, Dispatch};
use crate::journal::Causation;
use crate::workflow::{self, WorkflowActor};

/// How a finished saga answers: the output step's reply, or why not.
pub type SagaResult = Result<Value, ApiError>;

/// A running saga, as the registry holds it.
#[derive(Clone)]
pub struct SagaHandle {
    pub cancel: Arc<CancelFlag>,
    /// `Some` once the saga finished (or stopped at shutdown: `None` stays).
    pub done: watch::Receiver<Option<SagaResult>>,
}

/// Set by `workflow cancel`; the saga looks between steps.
#[derive(Default)]
pub struct CancelFlag {
    requested: AtomicBool,
    reason: std::sync::Mutex<String>,
    wake: Notify,
}

impl CancelFlag {
    pub fn request(&self, reason: &str) {
        *self.reason.lock().unwrap() = reason.to_owned();
        self.requested.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    fn requested(&self) -> Option<String> {
        self.requested
            .load(Ordering::Acquire)
            .then(|| self.reason.lock().unwrap().clone())
    }
}

/// Everything a saga needs to run.
pub struct SagaActor {
    pub tenant: String,
    pub id: String,
    pub user: String,
    pub definition: Definition,
    pub progress: Vec<Progress>,
    /// Runs the steps' commands (the gateway); weak, so a saga never keeps
    /// a stopped gateway alive.
    pub dispatch: std::sync::Weak<dyn Dispatch>,
    /// The owner of the workflow aggregates: every fact goes through it.
    pub workflows: Addr<WorkflowActor>,
    pub cancel: Arc<CancelFlag>,
    pub done: Option<watch::Sender<Option<SagaResult>>>,
    /// The values of its params declared `secret: true`, as text: cut out
    /// of every step result and error it journals.
    pub secrets: Vec<String>,
}

impl Actor for SagaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let runner = Runner {
            tenant: self.tenant.clone(),
            id: self.id.clone(),
            user: self.user.clone(),
            definition: self.definition.clone(),
            progress: std::mem::take(&mut self.progress),
            dispatch: self.dispatch.clone(),
            workflows: self.workflows.clone(),
            cancel: self.cancel.clone(),
            secrets: std::mem::take(&mut self.secrets),
        };
        let done = self.done.take();
        ctx.spawn(
            async move {
                let result = runner.run().await;
                if let (Some(result), Some(done)) = (result, done) {
                    let _ = done.send(Some(result));
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

struct Runner {
    tenant: String,
    id: String,
    user: String,
    definition: Definition,
    progress: Vec<Progress>,
    dispatch: std::sync::Weak<dyn Dispatch>,
    workflows: Addr<WorkflowActor>,
    cancel: Arc<CancelFlag>,
    secrets: Vec<String>,
}

/// Secret values shorter than this are not cut out of results (they would
/// cut common words); the params themselves are sealed whatever their length.
const MIN_REDACTED_LEN: usize = 4;

/// How many times a saga tries to journal one of its facts.
const RECORD_ATTEMPTS: u32 = 6;
/// The first wait between two of those tries (doubled each time: about 3 s
/// in all).
const RECORD_BACKOFF: Duration = Duration::from_millis(50);

/// The journal or the dispatcher went away (shutdown): stop; the saga is
/// resumed at the next start.
struct Stopped;

impl Runner {
    /// Drives the saga to its end. `None`: stopped by a shutdown.
    async fn run(mut self) -> Option<SagaResult> {
        self.drive().await.ok()
    }

    async fn drive(&mut self) -> Result<SagaResult, Stopped> {
        loop {
            if let Some(reason) = self.cancel.requested()
                && !self.progress.contains(&Progress::Cancelled)
                && !matches!(
                    next(&self.definition, &self.id, &self.progress),
                    Effect::Finish(_)
                )
            {
                self.record(Event::WorkflowCancelled(WorkflowCancelled {
                    workflow: self.id.clone(),
                    reason,
                }))
                .await?;
                self.progress.push(Progress::Cancelled);
            }
            match next(&self.definition, &self.id, &self.progress) {
                Effect::Run {
                    step,
                    attempt,
                    idempotency_key,
                } => {
                    if !self.is_open_run(step, attempt) {
                        self.record(Event::WorkflowStepStarted(WorkflowStepStarted {
                            workflow: self.id.clone(),
                            step: step as u32,
                            attempt,
                        }))
                        .await?;
                        self.progress.push(Progress::StepStarted { step, attempt });
                    }
                    let s = &self.definition.steps[step];
                    let point = format!("{}.{}", self.definition.name, s.name);
                    crate::failpoint::hit(&format!("saga.before.{point}"));
                    let outcome = self
                        .execute(&s.action.clone(), &idempotency_key, s.timeout_ms)
                        .await?;
                    crate::failpoint::hit(&format!("saga.after.{point}"));
                    match outcome {
                        Ok(reply) => {
                            self.record(Event::WorkflowStepCompleted(WorkflowStepCompleted {
                                workflow: self.id.clone(),
                                step: step as u32,
                                result: self.redact(reply.to_string()),
                            }))
                            .await?;
                            self.progress.push(Progress::StepCompleted { step });
                        }
                        Err(mut e) => {
                            e.message = self.redact(e.message);
                            let code = e.code.as_str().to_owned();
                            let retry = retryable(&code);
                            self.record(Event::WorkflowStepFailed(WorkflowStepFailed {
                                workflow: self.id.clone(),
                                step: step as u32,
                                attempt,
                                code: code.clone(),
                                error: e.message.clone(),
                                retryable: retry,
                            }))
                            .await?;
                            self.progress.push(Progress::StepFailed {
                                step,
                                attempt,
                                error: format!("{code}: {}", e.message),
                                retryable: retry,
                            });
                        }
                    }
                }
                Effect::Wait {
                    step,
                    attempt,
                    delay_ms,
                } => {
                    self.sleep(delay_ms).await;
                    if self.cancel.requested().is_some() {
                        continue;
                    }
                    self.record(Event::WorkflowStepStarted(WorkflowStepStarted {
                        workflow: self.id.clone(),
                        step: step as u32,
                        attempt,
                    }))
                    .await?;
                    self.progress.push(Progress::StepStarted { step, attempt });
                }
                Effect::Compensate {
                    step,
                    delay_ms,
                    idempotency_key,
                } => {
                    self.sleep(delay_ms).await;
                    if self.progress.last() != Some(&Progress::CompensationStarted { step }) {
                        self.record(Event::WorkflowCompensationStarted(
                            WorkflowCompensationStarted {
                                workflow: self.id.clone(),
                                step: step as u32,
                            },
                        ))
                        .await?;
                        self.progress.push(Progress::CompensationStarted { step });
                    }
                    let s = &self.definition.steps[step];
                    let action = s.compensate.clone().expect("the machine compensates these");
                    crate::failpoint::hit(&format!(
                        "saga.compensate.{}.{}",
                        self.definition.name, s.name
                    ));
                    match self
                        .execute(&action, &idempotency_key, s.timeout_ms)
                        .await?
                    {
                        Ok(_) => {
                            self.record(Event::WorkflowCompensationCompleted(
                                WorkflowCompensationCompleted {
                                    workflow: self.id.clone(),
                                    step: step as u32,
                                },
                            ))
                            .await?;
                            self.progress.push(Progress::CompensationCompleted { step });
                        }
                        Err(mut e) => {
                            e.message = self.redact(e.message);
                            self.record(Event::WorkflowCompensationFailed(
                                WorkflowCompensationFailed {
                                    workflow: self.id.clone(),
                                    step: step as u32,
                                    code: e.code.as_str().to_owned(),
                                    error: e.message.clone(),
                                },
                            ))
                            .await?;
                            self.progress.push(Progress::CompensationFailed {
                                step,
                                error: format!("{}: {}", e.code, e.message),
                            });
                        }
                    }
                }
                Effect::Finish(outcome) => {
                    let (failed_step, error) = match &outcome {
                        Outcome::Completed => (None, None),
                        Outcome::Compensated { failed_step, error } => {
                            (failed_step.map(|s| s as u32), Some(error.clone()))
                        }
                        Outcome::Stuck { step, error } => (Some(*step as u32), Some(error.clone())),
                    };
                    self.record(Event::WorkflowFinished(WorkflowFinished {
                        workflow: self.id.clone(),
                        outcome: outcome.name().to_owned(),
                        failed_step,
                        error,
                    }))
                    .await?;
                    let dispatch = self.dispatch.upgrade().ok_or(Stopped)?;
                    return Ok(dispatch.workflow_result(&self.tenant, &self.id).await);
                }
            }
        }
    }

    /// `text` with every secret param's value replaced by `<redacted>`: a
    /// step's reply or error may echo what it was given.
    fn redact(&self, text: String) -> String {
        self.secrets
            .iter()
            .filter(|s| s.len() >= MIN_REDACTED_LEN)
            .fold(text, |t, s| {
                t.replace(s.as_str(), cairn_schema::sealed::REDACTED)
            })
    }

    /// The last run fact is `StepStarted { step, attempt }` with no end yet.
    fn is_open_run(&self, step: usize, attempt: u32) -> bool {
        self.progress
            .iter()
            .rev()
            .find(|p| {
                matches!(
                    p,
                    Progress::StepStarted { .. }
                        | Progress::StepCompleted { .. }
                        | Progress::StepFailed { .. }
                )
            })
            .is_some_and(|p| *p == Progress::StepStarted { step, attempt })
    }

    async fn sleep(&self, ms: u64) {
        if ms == 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = self.cancel.wake.notified() => {}
        }
    }

    /// Journals one of the saga's facts. A commit that fails (the journal
    /// answers an error only for a batch that is not durable) is tried
    /// again with backoff, [`RECORD_ATTEMPTS`] times in all, so one failed
    /// commit does not leave the workflow running with no one driving it
    /// until the next start; after that, or at a shutdown, it stops.
    async fn record(&self, event: Event) -> Result<(), Stopped> {
        let mut backoff = RECORD_BACKOFF;
        for attempt in 1..=RECORD_ATTEMPTS {
            // A stopped gateway means a shutdown: no more facts.
            self.dispatch.upgrade().ok_or(Stopped)?;
            let recorded = self
                .workflows
                .send(workflow::Record {
                    causation: Causation {
                        tenant: self.tenant.clone(),
                        user: self.user.clone(),
                        id: self.id.clone(),
                        dedup: false,
                    },
                    event: event.clone(),
                })
                .await;
            match recorded {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(workflow = %self.id, error = %e, attempt, "the journal refused the workflow's next fact; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Ok(Err(e)) => {
                    tracing::warn!(workflow = %self.id, error = %e, "workflow paused: the journal refused its next fact");
                    return Err(Stopped);
                }
                Err(e) => {
                    tracing::warn!(workflow = %self.id, error = %e, "workflow paused: the workflow actor is gone");
                    return Err(Stopped);
                }
            }
        }
        Err(Stopped)
    }

    /// Runs one API command as a step: `Err(Stopped)` only if the
    /// dispatcher is gone.
    async fn execute(
        &self,
        action: &Action,
        key: &str,
        timeout_ms: u64,
    ) -> Result<SagaResult, Stopped> {
        let dispatch = self.dispatch.upgrade().ok_or(Stopped)?;
        let Some((kind, verb)) = action.run.split_once('.') else {
            return Ok(Err(ApiError::invalid(format!(
                "{:?} is not a kind.verb command",
                action.run
            ))));
        };
        let with = if action.with.is_null() {
            &serde_json::json!({})
        } else {
            &action.with
        };
        let body = serde_json::to_vec(with).expect("json values serialize");
        let command = match Command::parse(kind, verb, &body) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let caller = Caller {
            request_id: Some(key.to_owned()),
            user: Some(self.user.clone()),
            parent: Some(self.id.clone()),
        };
        let run = dispatch.dispatch(&self.tenant, command, &caller);
        Ok(
            match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "{} ran past the step's timeout of {timeout_ms} ms",
                        action.run
                    ),
                )),
            },
        )
    }
}
