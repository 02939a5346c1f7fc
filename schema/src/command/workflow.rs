//! Requests of kind `workflow`: their body types (`workflow.run`, `list`,
//! `show`, `resume`, `cancel`) and the `workflow.*` parse arm.

use super::*;

/// The body of `workflow.run`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRunBody {
    /// A `kind: Workflow` YAML document.
    pub definition: String,
    /// Values for the definition's `spec.params`.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out. A
    /// second start with an id in use answers with that workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `workflow.show`, `workflow.resume`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowIdBody {
    /// A workflow id (`workflow.show` also takes a built-in definition's
    /// name, like `app-snapshot`).
    pub id: String,
}

/// The body of `workflow.cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCancelBody {
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of `workflow.list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowListBody {
    /// Only this app's workflows.
    #[serde(default)]
    pub app: Option<String>,
    /// Only `running`, `completed`, `compensated` or `stuck` ones.
    #[serde(default)]
    pub status: Option<String>,
    /// At most this many, newest first (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Decodes and validates a `workflow.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "run" => {
            let b: WorkflowRunBody = body(bytes)?;
            let run = b.run();
            if b.params.len() > MAX_PARAMS {
                return Err(ApiError::invalid(format!("at most {MAX_PARAMS} params")));
            }
            start(
                DefinitionSource::Text(b.definition),
                b.params.into_iter().collect(),
                run,
            )?
        }
        "list" => {
            let b: WorkflowListBody = body(bytes)?;
            if let Some(status) = &b.status
                && !matches!(
                    status.as_str(),
                    "running" | "completed" | "compensated" | "stuck"
                )
            {
                return Err(ApiError::invalid(format!(
                    "status must be running, completed, compensated or stuck, not {status:?}"
                )));
            }
            Command::Query(Query::WorkflowList {
                app: b.app,
                status: b.status,
                limit: b.limit.unwrap_or(100).clamp(1, MAX_EVENTS_PAGE),
            })
        }
        "show" => {
            let b: WorkflowIdBody = body(bytes)?;
            check_label("workflow", &b.id)?;
            Command::Query(Query::WorkflowShow { id: b.id })
        }
        "resume" => {
            let b: WorkflowIdBody = body(bytes)?;
            check_label("workflow", &b.id)?;
            Command::Workflow(WorkflowCommand::Resume { id: b.id })
        }
        "cancel" => {
            let b: WorkflowCancelBody = body(bytes)?;
            check_label("workflow", &b.id)?;
            Command::Workflow(WorkflowCommand::Cancel {
                id: b.id,
                reason: b.reason.unwrap_or_else(|| "cancelled".into()),
            })
        }
        _ => return Err(unknown("workflow", verb)),
    };
    Ok(cmd)
}
