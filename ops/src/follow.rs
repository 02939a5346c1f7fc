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
use serde_json::{Value, json};

use crate::cli::{RunArgs, long, with_run};

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

/// The workflow id a body names, choosing one when it names none.
pub fn workflow_id_of(body: &mut Value) -> String {
    match body["workflow"].as_str() {
        Some(id) => id.to_owned(),
        None => {
            let id = new_workflow_id();
            body["workflow"] = json!(id);
            id
        }
    }
}

/// Sends `kind.verb` as a workflow and returns its reply: with `--async`,
/// the start reply; else the finished workflow's, followed by id (see the
/// module doc).
pub async fn call(
    client: &Client,
    kind: &str,
    verb: &str,
    mut body: Value,
    run: &RunArgs,
) -> anyhow::Result<Value> {
    let client = long(client);
    let id = workflow_id_of(&mut body);
    let body = with_run(body, run);
    if run.run_async {
        return Ok(client.call(kind, verb, &body).await?);
    }
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
                    return Err(timed_out(&id, &client));
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
                    return Err(timed_out(&id, &client));
                }
                polls_since_send += 1;
                match status(&client, &id).await {
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
    let view: Value = c.call("workflow", "show", &json!({ "id": id })).await?;
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
