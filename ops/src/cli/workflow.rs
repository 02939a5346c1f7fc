//! `cairn workflow …`: run a `kind: Workflow` file (followed by id, see
//! [`follow`]), list, show, resume and cancel workflows.

use anyhow::Context;
use cairn_actors::client::Client;
use cairn_schema::command::{
    WorkflowCancelBody, WorkflowIdBody, WorkflowListBody, WorkflowRunBody,
};
use cairn_schema::reply::{WorkflowListReply, WorkflowView};
use serde_json::Value;

use super::{Reply, WorkflowCommand, call, follow, long};
use crate::output::{self, Format};

pub async fn run(client: &Client, fmt: Format, cmd: &WorkflowCommand) -> anyhow::Result<i32> {
    let reply: Reply<WorkflowView> = match cmd {
        WorkflowCommand::Run { file, params, run } => {
            let definition = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut map = std::collections::BTreeMap::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--param {p:?} is not k=v"))?;
                let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
                map.insert(k.to_owned(), value);
            }
            let body = WorkflowRunBody {
                definition,
                params: map,
                run_async: false,
                workflow: None,
            };
            match follow::call::<WorkflowView>(client, "workflow", "run", body, run).await? {
                follow::Outcome::Started(started) => {
                    started.print(fmt, output::workflow_started_rows);
                    return Ok(0);
                }
                follow::Outcome::Finished(reply) => reply,
            }
        }
        WorkflowCommand::List { app, status, limit } => {
            let body = WorkflowListBody {
                app: app.clone(),
                status: status.clone(),
                limit: Some(*limit),
            };
            let reply = call::<WorkflowListReply>(client, "workflow", "list", &body).await?;
            reply.print(fmt, output::workflow_list_rows);
            return Ok(0);
        }
        WorkflowCommand::Show { id } => {
            let body = WorkflowIdBody { id: id.clone() };
            call(client, "workflow", "show", &body).await?
        }
        WorkflowCommand::Resume { id } => {
            let body = WorkflowIdBody { id: id.clone() };
            call(&long(client), "workflow", "resume", &body).await?
        }
        WorkflowCommand::Cancel { id, reason } => {
            let body = WorkflowCancelBody {
                id: id.clone(),
                reason: reason.clone(),
            };
            call(&long(client), "workflow", "cancel", &body).await?
        }
    };
    reply.print(fmt, output::workflow_rows);
    // A run that did not complete is a failure for scripts (show, resume
    // and cancel did what they were asked whatever the status).
    let run = matches!(cmd, WorkflowCommand::Run { .. });
    Ok(match reply.body.status.as_str() {
        "completed" => 0,
        _ if run => 1,
        _ => 0,
    })
}
