//! Workflows (sagas) as the journal knows them: [`WorkflowState`], the fold
//! of one workflow's events, and [`Progress`], the facts the pure saga
//! machine (`cairn_workflows::next`) reads. Pure, like the rest of the crate.
//!
//! A workflow's events live on aggregate `workflow/<id>`. The fold keeps
//! the pinned definition text, the parameters, every fact in order (so the
//! machine can be asked again after a crash), and a per-step view with
//! times, attempts and errors for `workflow show`.

use serde::{Deserialize, Serialize};

use crate::Event;

/// One fact about a saga's progress, in journal order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    StepStarted {
        step: usize,
        attempt: u32,
    },
    StepCompleted {
        step: usize,
    },
    StepFailed {
        step: usize,
        attempt: u32,
        error: String,
        /// False: fail for good now, whatever attempts are left.
        retryable: bool,
    },
    Cancelled,
    CompensationStarted {
        step: usize,
    },
    CompensationCompleted {
        step: usize,
    },
    CompensationFailed {
        step: usize,
        error: String,
    },
    /// An operator asked a stuck saga to try its compensations again.
    Resumed,
}

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Running,
    Completed,
    Compensated,
    /// A compensation kept failing; `workflow resume` tries again.
    Stuck,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Stuck => "stuck",
        }
    }

    pub fn parse(text: &str) -> Status {
        match text {
            "completed" => Status::Completed,
            "compensated" => Status::Compensated,
            "stuck" => Status::Stuck,
            _ => Status::Running,
        }
    }
}

/// What happened to one step, for `workflow show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub attempts: u32,
    /// `completed`, `failed`, `running`, `compensating`, `compensated` or
    /// empty (not reached).
    pub state: String,
    /// The last error (`code: message`).
    pub error: Option<String>,
    /// The command's reply (JSON text) once completed.
    pub result: Option<String>,
}

/// The fold of one workflow's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub id: String,
    pub name: String,
    pub definition: String,
    pub hash: String,
    pub params: Vec<(String, String)>,
    pub app: Option<String>,
    pub parent: Option<String>,
    pub started_seq: u64,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
    pub status: Option<Status>,
    pub failed_step: Option<u32>,
    pub error: Option<String>,
    pub progress: Vec<Progress>,
    /// By step index (grown as steps are reached).
    pub steps: Vec<StepRecord>,
}

impl WorkflowState {
    pub fn exists(&self) -> bool {
        self.started_seq != 0
    }

    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::Running)
    }

    fn step(&mut self, step: u32) -> &mut StepRecord {
        let i = step as usize;
        if self.steps.len() <= i {
            self.steps.resize(i + 1, StepRecord::default());
        }
        &mut self.steps[i]
    }

    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        self.updated_ms = time_ms;
        match event {
            Event::WorkflowStarted(e) => {
                *self = WorkflowState {
                    id: e.workflow.clone(),
                    name: e.name.clone(),
                    definition: e.definition.clone(),
                    hash: e.hash.clone(),
                    params: e.params.clone(),
                    app: e.app.clone(),
                    parent: e.parent.clone(),
                    started_seq: seq,
                    started_ms: time_ms,
                    updated_ms: time_ms,
                    ..WorkflowState::default()
                };
                self.status = Some(Status::Running);
            }
            Event::WorkflowStepStarted(e) => {
                let s = self.step(e.step);
                s.started_ms.get_or_insert(time_ms);
                s.attempts = s.attempts.max(e.attempt);
                s.state = "running".into();
                self.progress.push(Progress::StepStarted {
                    step: e.step as usize,
                    attempt: e.attempt,
                });
            }
            Event::WorkflowStepCompleted(e) => {
                let s = self.step(e.step);
                s.finished_ms = Some(time_ms);
                s.state = "completed".into();
                s.result = Some(e.result.clone());
                self.progress.push(Progress::StepCompleted {
                    step: e.step as usize,
                });
            }
            Event::WorkflowStepFailed(e) => {
                let s = self.step(e.step);
                s.finished_ms = Some(time_ms);
                s.state = "failed".into();
                s.error = Some(format!("{}: {}", e.code, e.error));
                self.progress.push(Progress::StepFailed {
                    step: e.step as usize,
                    attempt: e.attempt,
                    error: format!("{}: {}", e.code, e.error),
                    retryable: e.retryable,
                });
            }
            Event::WorkflowCancelled(_) => self.progress.push(Progress::Cancelled),
            Event::WorkflowCompensationStarted(e) => {
                self.step(e.step).state = "compensating".into();
                self.progress.push(Progress::CompensationStarted {
                    step: e.step as usize,
                });
            }
            Event::WorkflowCompensationCompleted(e) => {
                self.step(e.step).state = "compensated".into();
                self.progress.push(Progress::CompensationCompleted {
                    step: e.step as usize,
                });
            }
            Event::WorkflowCompensationFailed(e) => {
                let s = self.step(e.step);
                s.state = "compensation failed".into();
                s.error = Some(format!("{}: {}", e.code, e.error));
                self.progress.push(Progress::CompensationFailed {
                    step: e.step as usize,
                    error: format!("{}: {}", e.code, e.error),
                });
            }
            Event::WorkflowResumed(_) => {
                self.status = Some(Status::Running);
                self.finished_ms = None;
                self.progress.push(Progress::Resumed);
            }
            Event::WorkflowFinished(e) => {
                self.status = Some(Status::parse(&e.outcome));
                self.finished_ms = Some(time_ms);
                self.failed_step = e.failed_step;
                self.error = e.error.clone();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        WorkflowFinished, WorkflowStarted, WorkflowStepFailed, WorkflowStepStarted,
    };

    #[test]
    fn the_fold_keeps_facts_and_step_views() {
        let mut w = WorkflowState::default();
        let id = "wf-1".to_owned();
        w.apply(
            7,
            100,
            &Event::WorkflowStarted(WorkflowStarted {
                workflow: id.clone(),
                name: "n".into(),
                definition: "d".into(),
                hash: "h".into(),
                params: vec![],
                app: None,
                parent: None,
            }),
        );
        w.apply(
            8,
            110,
            &Event::WorkflowStepStarted(WorkflowStepStarted {
                workflow: id.clone(),
                step: 1,
                attempt: 1,
            }),
        );
        w.apply(
            9,
            120,
            &Event::WorkflowStepFailed(WorkflowStepFailed {
                workflow: id.clone(),
                step: 1,
                attempt: 1,
                code: "hook_failed".into(),
                error: "exit 3".into(),
                retryable: false,
            }),
        );
        assert_eq!(w.status(), Status::Running);
        w.apply(
            10,
            130,
            &Event::WorkflowFinished(WorkflowFinished {
                workflow: id,
                outcome: "compensated".into(),
                failed_step: Some(1),
                error: Some("hook_failed: exit 3".into()),
            }),
        );
        assert_eq!(w.status(), Status::Compensated);
        assert_eq!(w.steps.len(), 2);
        assert_eq!(w.steps[1].error.as_deref(), Some("hook_failed: exit 3"));
        assert_eq!(w.steps[1].started_ms, Some(110));
        assert_eq!(w.progress.len(), 2);
        assert_eq!(w.started_seq, 7);
    }
}
