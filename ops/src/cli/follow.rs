//! Following a workflow the CLI started, by its id, to its real outcome.
//!
//! A command that runs a workflow (`app snapshot`, `rollback`, `clone`,
//! `delete`, `push`, `pull`, `workflow run`) chooses the workflow's id
//! itself and sends the request and waits for the reply. The reply can be
//! lost: the server may be killed mid-saga and restarted, and the restarted
//! server resumes the saga from the journal but knows nothing of the
//! request. So while waiting, the CLI asks `workflow.show` for that id every
//! few seconds:
//!
//! - finished (completed, compensated, stuck): the request is sent again
//!   under the same request id and workflow id, which the gateway answers
//!   at once with the finished workflow's reply (or its error);
//! - unknown for several polls: the request never arrived, or arrived at a
//!   server that died before journaling it; it is sent again (the same ids
//!   make a copy that did arrive harmless);
//! - no answer: the server is gone; the CLI says so once on stderr and
//!   keeps polling.
//!
//! It ends with the workflow's reply or error, or at the deadline (the
//! `--timeout`, else an hour) with an error naming the workflow and how to
//! follow it: never a silent hang.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_actors::bus;
use cairn_actors::client::{self, Client};
use cairn_schema::ErrorCode;
use serde_json::Value;

use cairn_schema::command;
use cairn_schema::reply::WorkflowStartReply;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Reply, RunArgs, long, typed};
use crate::output::{self, Format};

/// How often `workflow.show` is asked while a reply is awaited.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long one `workflow.show` may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// Polls that find no workflow before the request is sent again.
const UNKNOWN_POLLS_BEFORE_RESEND: u32 = 3;
/// Polls between two sends for a finished workflow.
const FINISHED_POLLS_BEFORE_RESEND: u32 = 3;

/// A request in flight: whether it is the first send, and its reply.
type Pending = Pin<Box<dyn Future<Output = (bool, Result<Value, client::Error>)>>>;

/// A fresh workflow id in the gateway's own form (`wf-` and 12 hex digits).
pub fn new_workflow_id() -> String {
    let seed = cairn_actors::gateway::new_request_id();
    format!("wf-{}", &blake3::hash(seed.as_bytes()).to_hex()[..12])
}

/// The request body of a command that starts a workflow: it says whether
/// to wait, and may name the workflow's id.
pub trait WorkflowBody: Serialize {
    /// Sets `async`, and the workflow id unless one is set; returns the id.
    fn prepare(&mut self, run_async: bool) -> String;
}

macro_rules! workflow_bodies {
    ($($body:ty),* $(,)?) => {$(
        impl WorkflowBody for $body {
            fn prepare(&mut self, run_async: bool) -> String {
                self.run_async = run_async;
                self.workflow.get_or_insert_with(new_workflow_id).clone()
            }
        }
    )*};
}

workflow_bodies!(
    command::AppSnapshotBody,
    command::AppSnapshotRefBody,
    command::AppDeleteBody,
    command::AppCloneBody,
    command::AppPushBody,
    command::AppPullBody,
    command::WorkflowRunBody,
);

/// How a workflow command ended: started (`--async`) or finished.
pub enum Outcome<R> {
    Started(Reply<WorkflowStartReply>),
    Finished(Reply<R>),
}

impl<R> Outcome<R> {
    /// Prints the start reply, or `table` of the finished one.
    pub fn print(&self, fmt: Format, table: impl FnOnce(&R) -> Vec<Vec<String>>) {
        match self {
            Outcome::Started(reply) => reply.print(fmt, output::workflow_started_rows),
            Outcome::Finished(reply) => reply.print(fmt, table),
        }
    }
}

/// Sends `kind.verb` as a workflow: with `--async`, returns the start
/// reply; else the finished workflow's reply, followed by id (see the
/// module doc).
pub async fn call<R: DeserializeOwned>(
    client: &Client,
    kind: &str,
    verb: &str,
    mut body: impl WorkflowBody,
    run: &RunArgs,
) -> anyhow::Result<Outcome<R>> {
    let id = body.prepare(run.run_async);
    let body = serde_json::to_value(&body).expect("request bodies serialize");
    let client = long(client);
    if run.run_async {
        let raw = client.call(kind, verb, &body).await?;
        return Ok(Outcome::Started(typed(kind, verb, raw)?));
    }
    let raw = wait(&client, kind, verb, &body, &id).await?;
    Ok(Outcome::Finished(typed(kind, verb, raw)?))
}

/// Sends the request and waits for the workflow's outcome.
async fn wait(
    client: &Client,
    kind: &str,
    verb: &str,
    body: &Value,
    id: &str,
) -> anyhow::Result<Value> {
    let id = id.to_owned();
    let request_id = cairn_actors::gateway::new_request_id();
    let deadline = Instant::now() + client.timeout;
    let send = |first: bool| -> Pending {
        let mut c = client.clone();
        c.timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let (body, request_id) = (body.clone(), request_id.clone());
        let (kind, verb) = (kind.to_owned(), verb.to_owned());
        Box::pin(async move {
            (
                first,
                c.call_with_id(&kind, &verb, &body, &request_id).await,
            )
        })
    };
    let mut pending = send(true);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.tick().await;
    let mut unknown_polls = 0u32;
    let mut polls_since_send = 0u32;
    let mut out_of_touch = false;
    loop {
        tokio::select! {
            (first, reply) = &mut pending => match reply {
                Ok(reply) => return Ok(reply),
                Err(client::Error::Bus(bus::Error::Timeout { .. })) => {
                    return Err(timed_out(&id, client));
                }
                // Only the first send may say "nobody is serving": later
                // ones go out while the server may be restarting.
                Err(client::Error::Bus(_)) if !first => {
                    polls_since_send = FINISHED_POLLS_BEFORE_RESEND;
                    pending = Box::pin(futures::future::pending());
                }
                Err(e) => return Err(e.into()),
            },
            _ = ticker.tick() => {
                if Instant::now() >= deadline {
                    return Err(timed_out(&id, client));
                }
                polls_since_send += 1;
                match status(client, &id).await {
                    Ok(status) => {
                        if out_of_touch {
                            eprintln!("cairn: the server is back; workflow {id} is {status}");
                            out_of_touch = false;
                        }
                        unknown_polls = 0;
                        let finished = status != "running";
                        if finished && polls_since_send >= FINISHED_POLLS_BEFORE_RESEND {
                            // Its reply was lost: ask again for the answer.
                            polls_since_send = 0;
                            pending = send(false);
                        }
                    }
                    Err(client::Error::Api(e)) if e.code == ErrorCode::NotFound => {
                        unknown_polls += 1;
                        if unknown_polls >= UNKNOWN_POLLS_BEFORE_RESEND {
                            unknown_polls = 0;
                            polls_since_send = 0;
                            pending = send(false);
                        }
                    }
                    Err(e) => {
                        if !out_of_touch {
                            eprintln!(
                                "cairn: no answer from the server while workflow {id} runs ({e}); waiting for it to come back (`cairn workflow show {id}` follows it too)"
                            );
                            out_of_touch = true;
                        }
                    }
                }
            }
        }
    }
}

/// The workflow's status (`running`, `completed`, `compensated`, `stuck`).
async fn status(client: &Client, id: &str) -> Result<String, client::Error> {
    let mut c = client.clone();
    c.timeout = POLL_TIMEOUT;
    let body = command::WorkflowIdBody { id: id.to_owned() };
    let body = serde_json::to_value(&body).expect("request bodies serialize");
    let view: Value = c.call("workflow", "show", &body).await?;
    let view: cairn_schema::reply::WorkflowView =
        serde_json::from_value(view).map_err(|e| client::Error::BadReply(e.to_string()))?;
    Ok(view.status)
}

fn timed_out(id: &str, client: &Client) -> anyhow::Error {
    anyhow::anyhow!(
        "workflow {id} did not finish within {} s; it may still be running: `cairn workflow show {id}`",
        client.timeout.as_secs()
    )
}

/// `<app>@<snapshot>`.
pub fn split_source(source: &str) -> anyhow::Result<(&str, &str)> {
    source
        .split_once('@')
        .with_context(|| format!("expected <app>@<snapshot>, not {source:?}"))
}
