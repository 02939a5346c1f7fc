//! Cairn's pure workflow core: saga definitions as data ([`definition`]:
//! the `kind: Workflow` format, parameters, and the built-in operations in
//! [`builtin`]), and the saga state machine that, given a definition and the
//! progress recorded so far, says what to do next. The placement planner is
//! its own crate, `cairn-placement`.
//!
//! # Model
//! A saga is a list of steps. Each step runs one API command (`kind.verb`
//! with JSON arguments), may name a compensation, retries with exponential
//! backoff up to `max_attempts`, and has a timeout. Progress is a list of
//! [`Progress`] facts (journaled by the runtime in `actors/`, folded by
//! `cairn_schema::workflow`). [`next`] folds them and returns one
//! [`Effect`]: run a step (again), wait, compensate a completed step, or
//! finish.
//!
//! # Invariants
//! - Pure and deterministic: the same definition and progress always give the
//!   same effect. So after a crash, replaying the journal and calling `next`
//!   resumes exactly where the saga stood.
//! - A step that was started but neither completed nor failed is run again
//!   with the same idempotency key: the runtime's request-id dedup makes the
//!   second run return the first answer.
//! - Once a step fails for good (its attempts are used up, or its error is
//!   not retryable) or the saga is cancelled, the completed steps are
//!   compensated in reverse order, each until it succeeds once.
//! - A compensation that keeps failing (its step's attempts, again) leaves
//!   the saga [`Outcome::Stuck`]; [`Progress::Resumed`] gives it its
//!   attempts back.

pub mod builtin;
pub mod definition;

pub use cairn_schema::workflow::Progress;
pub use definition::{Action, Definition, Retry, Step};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    /// A step failed for good (or the saga was cancelled) and every completed
    /// step was compensated.
    Compensated {
        failed_step: Option<usize>,
        error: String,
    },
    /// The compensation of `step` failed on every attempt: an operator
    /// looks, then resumes (tries again) the saga.
    Stuck {
        step: usize,
        error: String,
    },
}

impl Outcome {
    /// As `WorkflowFinished.outcome` stores it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Compensated { .. } => "compensated",
            Outcome::Stuck { .. } => "stuck",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// Run step `step`, attempt `attempt`, under `idempotency_key`.
    Run {
        step: usize,
        attempt: u32,
        idempotency_key: String,
    },
    /// Wait, then run the next attempt.
    Wait {
        step: usize,
        attempt: u32,
        delay_ms: u64,
    },
    /// Compensate completed step `step` (after `delay_ms`: 0 on the first
    /// try, backing off after failures).
    Compensate {
        step: usize,
        delay_ms: u64,
        idempotency_key: String,
    },
    Finish(Outcome),
}

/// The idempotency key of a step's run (the same for every attempt).
pub fn run_key(saga_id: &str, step: usize) -> String {
    format!("{saga_id}/run/{step}")
}

pub fn compensate_key(saga_id: &str, step: usize) -> String {
    format!("{saga_id}/compensate/{step}")
}

/// Error codes worth another attempt (a hook may pass once what it waits
/// for is ready); the rest fail a step at once.
pub fn retryable(code: &str) -> bool {
    matches!(
        code,
        "unavailable"
            | "internal"
            | "deadline_exceeded"
            | "no_space"
            | "resource_exhausted"
            | "hook_failed"
    )
}

/// What to do next, given everything that happened so far.
pub fn next(definition: &Definition, saga_id: &str, progress: &[Progress]) -> Effect {
    let n = definition.steps.len();
    let mut completed = vec![false; n];
    let mut compensated = vec![false; n];
    let mut attempts = vec![0u32; n];
    let mut compensation_failures = vec![0u32; n];
    let mut open_run: Option<(usize, u32)> = None;
    let mut open_compensation: Option<usize> = None;
    let mut failure: Option<(Option<usize>, String)> = None;
    let mut stuck: Option<(usize, String)> = None;
    for fact in progress {
        match fact {
            Progress::StepStarted { step, attempt } if *step < n => {
                attempts[*step] = attempts[*step].max(*attempt);
                open_run = Some((*step, *attempt));
            }
            Progress::StepCompleted { step } if *step < n => {
                completed[*step] = true;
                open_run = None;
            }
            Progress::StepFailed {
                step,
                attempt,
                error,
                retryable,
            } if *step < n => {
                open_run = None;
                let used_up = *attempt >= definition.steps[*step].retry.max_attempts.max(1);
                if (used_up || !retryable) && failure.is_none() {
                    failure = Some((Some(*step), error.clone()));
                }
            }
            Progress::Cancelled if failure.is_none() => {
                failure = Some((None, "cancelled".into()));
            }
            Progress::CompensationStarted { step } if *step < n => open_compensation = Some(*step),
            Progress::CompensationCompleted { step } if *step < n => {
                compensated[*step] = true;
                open_compensation = None;
            }
            Progress::CompensationFailed { step, error } if *step < n => {
                open_compensation = None;
                compensation_failures[*step] += 1;
                if compensation_failures[*step] >= definition.steps[*step].retry.max_attempts.max(1)
                {
                    stuck = Some((*step, error.clone()));
                }
            }
            Progress::Resumed => {
                compensation_failures.iter_mut().for_each(|f| *f = 0);
                stuck = None;
            }
            // Facts about steps the definition does not have: ignored (a
            // definition is pinned, so only a damaged journal has them).
            _ => {}
        }
    }
    if let Some((failed_step, error)) = failure {
        if let Some((step, error)) = stuck {
            return Effect::Finish(Outcome::Stuck { step, error });
        }
        let pending = open_compensation.or_else(|| {
            (0..n).rev().find(|&s| {
                completed[s] && !compensated[s] && definition.steps[s].compensate.is_some()
            })
        });
        return match pending {
            Some(step) => Effect::Compensate {
                step,
                delay_ms: match compensation_failures[step] {
                    0 => 0,
                    f => definition.steps[step].retry.delay_ms(f + 1),
                },
                idempotency_key: compensate_key(saga_id, step),
            },
            None => Effect::Finish(Outcome::Compensated { failed_step, error }),
        };
    }
    if let Some((step, attempt)) = open_run {
        return Effect::Run {
            step,
            attempt,
            idempotency_key: run_key(saga_id, step),
        };
    }
    match (0..n).find(|&s| !completed[s]) {
        None => Effect::Finish(Outcome::Completed),
        Some(step) if attempts[step] == 0 => Effect::Run {
            step,
            attempt: 1,
            idempotency_key: run_key(saga_id, step),
        },
        Some(step) => {
            let attempt = attempts[step] + 1;
            Effect::Wait {
                step,
                attempt,
                delay_ms: definition.steps[step].retry.delay_ms(attempt),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn definition(n: usize, max_attempts: u32) -> Definition {
        Definition {
            name: "test".into(),
            description: String::new(),
            output: n.saturating_sub(1),
            steps: (0..n)
                .map(|i| Step {
                    name: format!("s{i}"),
                    action: Action {
                        run: "volume.snapshot".into(),
                        with: serde_json::json!({ "i": i }),
                    },
                    compensate: (i % 2 == 0).then(|| Action {
                        run: "volume.snapshot-delete".into(),
                        with: Default::default(),
                    }),
                    retry: Retry {
                        max_attempts,
                        backoff_ms: 100,
                        max_backoff_ms: 1000,
                    },
                    timeout_ms: 1000,
                })
                .collect(),
        }
    }

    /// Drives a saga to its end; `fails(step, attempt)` decides failures.
    /// Returns every fact and the effect that produced each one.
    fn drive(def: &Definition, fails: impl Fn(usize, u32) -> bool) -> (Vec<Progress>, Outcome) {
        drive_with(def, fails, |_, _| false, |_, _| false)
    }

    /// As [`drive`]; also `permanent(step, attempt)` makes a failure not
    /// retryable and `comp_fails(step, n)` fails the n-th compensation try.
    fn drive_with(
        def: &Definition,
        fails: impl Fn(usize, u32) -> bool,
        permanent: impl Fn(usize, u32) -> bool,
        comp_fails: impl Fn(usize, u32) -> bool,
    ) -> (Vec<Progress>, Outcome) {
        let mut progress = Vec::new();
        let mut comp_tries = vec![0u32; def.steps.len()];
        loop {
            match next(def, "saga", &progress) {
                Effect::Run { step, attempt, .. } | Effect::Wait { step, attempt, .. } => {
                    progress.push(Progress::StepStarted { step, attempt });
                    progress.push(if fails(step, attempt) {
                        Progress::StepFailed {
                            step,
                            attempt,
                            error: format!("s{step} broke"),
                            retryable: !permanent(step, attempt),
                        }
                    } else {
                        Progress::StepCompleted { step }
                    });
                }
                Effect::Compensate { step, .. } => {
                    comp_tries[step] += 1;
                    progress.push(Progress::CompensationStarted { step });
                    progress.push(if comp_fails(step, comp_tries[step]) {
                        Progress::CompensationFailed {
                            step,
                            error: "down".into(),
                        }
                    } else {
                        Progress::CompensationCompleted { step }
                    });
                }
                Effect::Finish(outcome) => return (progress, outcome),
            }
            assert!(progress.len() < 1000, "saga does not terminate");
        }
    }

    #[test]
    fn happy_path_runs_every_step_once() {
        let def = definition(3, 3);
        let (progress, outcome) = drive(&def, |_, _| false);
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            progress
                .iter()
                .filter(|p| matches!(p, Progress::StepCompleted { .. }))
                .count(),
            3
        );
    }

    #[test]
    fn a_failing_step_compensates_completed_steps_in_reverse() {
        let def = definition(4, 2);
        let (progress, outcome) = drive(&def, |step, _| step == 3);
        assert_eq!(
            outcome,
            Outcome::Compensated {
                failed_step: Some(3),
                error: "s3 broke".into()
            }
        );
        let compensated: Vec<usize> = progress
            .iter()
            .filter_map(|p| match p {
                Progress::CompensationCompleted { step } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(
            compensated,
            [2, 0],
            "steps with a compensation, newest first"
        );
    }

    #[test]
    fn retries_back_off_then_succeed() {
        let def = definition(1, 3);
        assert_eq!(
            next(
                &def,
                "x",
                &[
                    Progress::StepStarted {
                        step: 0,
                        attempt: 1
                    },
                    Progress::StepFailed {
                        step: 0,
                        attempt: 1,
                        error: "e".into(),
                        retryable: true,
                    }
                ]
            ),
            Effect::Wait {
                step: 0,
                attempt: 2,
                delay_ms: 100
            }
        );
        let (_, outcome) = drive(&def, |_, attempt| attempt < 3);
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            Retry {
                max_attempts: 9,
                backoff_ms: 100,
                max_backoff_ms: 350
            }
            .delay_ms(4),
            350
        );
    }

    #[test]
    fn cancel_compensates_and_a_crash_mid_step_reruns_it_with_the_same_key() {
        let def = definition(2, 3);
        let crashed = [Progress::StepStarted {
            step: 0,
            attempt: 1,
        }];
        assert_eq!(
            next(&def, "x", &crashed),
            Effect::Run {
                step: 0,
                attempt: 1,
                idempotency_key: "x/run/0".into()
            }
        );
        let cancelled = [
            Progress::StepStarted {
                step: 0,
                attempt: 1,
            },
            Progress::StepCompleted { step: 0 },
            Progress::Cancelled,
        ];
        assert_eq!(
            next(&def, "x", &cancelled),
            Effect::Compensate {
                step: 0,
                delay_ms: 0,
                idempotency_key: "x/compensate/0".into()
            }
        );
    }

    #[test]
    fn a_permanent_error_fails_at_once_and_a_failing_compensation_gets_stuck_until_resumed() {
        let def = definition(3, 3);
        let mut progress = vec![
            Progress::StepStarted {
                step: 0,
                attempt: 1,
            },
            Progress::StepCompleted { step: 0 },
            Progress::StepStarted {
                step: 1,
                attempt: 1,
            },
            Progress::StepFailed {
                step: 1,
                attempt: 1,
                error: "not_found: gone".into(),
                retryable: false,
            },
        ];
        assert!(matches!(
            next(&def, "x", &progress),
            Effect::Compensate {
                step: 0,
                delay_ms: 0,
                ..
            }
        ));
        for attempt in 1..=3 {
            progress.push(Progress::CompensationStarted { step: 0 });
            progress.push(Progress::CompensationFailed {
                step: 0,
                error: "unavailable: down".into(),
            });
            let effect = next(&def, "x", &progress);
            if attempt < 3 {
                assert!(
                    matches!(effect, Effect::Compensate { step: 0, delay_ms, .. } if delay_ms > 0),
                    "{effect:?}"
                );
            } else {
                assert_eq!(
                    effect,
                    Effect::Finish(Outcome::Stuck {
                        step: 0,
                        error: "unavailable: down".into()
                    })
                );
            }
        }
        progress.push(Progress::Resumed);
        assert!(matches!(
            next(&def, "x", &progress),
            Effect::Compensate {
                step: 0,
                delay_ms: 0,
                ..
            }
        ));
        progress.push(Progress::CompensationStarted { step: 0 });
        progress.push(Progress::CompensationCompleted { step: 0 });
        assert_eq!(
            next(&def, "x", &progress),
            Effect::Finish(Outcome::Compensated {
                failed_step: Some(1),
                error: "not_found: gone".into()
            })
        );
    }

    proptest! {
        /// For every prefix of a run with random failures, `next` on the
        /// prefix gives the effect that the recorded history continued with:
        /// a crash at any point resumes or compensates exactly as before.
        #[test]
        fn every_prefix_resumes_the_same_way(n in 1usize..6, max_attempts in 1u32..4, seed in any::<u64>()) {
            let def = definition(n, max_attempts);
            let fails = |step: usize, attempt: u32| (seed >> ((step * 3 + attempt as usize) % 64)) & 1 == 1;
            let comp_fails = |step: usize, n: u32| (seed >> ((step * 5 + n as usize + 17) % 64)) & 3 == 3;
            let permanent = |step: usize, attempt: u32| (seed >> ((step * 7 + attempt as usize + 31) % 64)) & 7 == 7;
            let (progress, outcome) = drive_with(&def, fails, permanent, comp_fails);
            for cut in 0..progress.len() {
                let effect = next(&def, "saga", &progress[..cut]);
                let expected_fact = &progress[cut];
                let consistent = match (&effect, expected_fact) {
                    (Effect::Run { step, attempt, .. }, Progress::StepStarted { step: s, attempt: a })
                    | (Effect::Wait { step, attempt, .. }, Progress::StepStarted { step: s, attempt: a }) => step == s && attempt == a,
                    (Effect::Run { step, .. }, Progress::StepCompleted { step: s } | Progress::StepFailed { step: s, .. }) => step == s,
                    (Effect::Compensate { step, .. }, Progress::CompensationStarted { step: s } | Progress::CompensationCompleted { step: s } | Progress::CompensationFailed { step: s, .. }) => step == s,
                    _ => false,
                };
                prop_assert!(consistent, "cut {cut}: {effect:?} vs {expected_fact:?}");
            }
            prop_assert_eq!(next(&def, "saga", &progress), Effect::Finish(outcome.clone()));
            if let Outcome::Stuck { step, .. } = outcome {
                // Stuck only after the step's compensation failed on every attempt.
                let failures = progress.iter().filter(|p| matches!(p, Progress::CompensationFailed { step: s, .. } if *s == step)).count();
                prop_assert_eq!(failures as u32, def.steps[step].retry.max_attempts);
            }
            if let Outcome::Compensated { .. } = outcome {
                // Every completed step with a compensation was compensated exactly once.
                for (i, step) in def.steps.iter().enumerate() {
                    let done = progress.contains(&Progress::StepCompleted { step: i });
                    let comp = progress.iter().filter(|p| **p == Progress::CompensationCompleted { step: i }).count();
                    prop_assert_eq!(comp, usize::from(done && step.compensate.is_some()));
                }
            }
        }
    }
}
