//! `cairn app push`, `cairn app pull` and `cairn repo …`: the client side of
//! backup repositories. Push and pull run as workflows; while one runs, its
//! progress (`evt.progress.<workflow>`) is drawn as a progress bar on a
//! terminal (bytes, throughput, ETA) and as plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_actors::client::Client;
use cairn_schema::subject;
use clap::Subcommand;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cli::{RunArgs, long};
use crate::follow::split_source;
use crate::output::{self, Format, bytes};

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register a backup repository; an empty one is initialised. Without
    /// URL: a repository in the server's data dir. Without a key: a new
    /// repository gets a new key file (printed; keep a copy).
    Add {
        name: String,
        /// file:///abs/dir or s3://bucket[/prefix][?endpoint=URL&region=R&path_style=true].
        #[arg(value_name = "URL")]
        location: Option<String>,
        /// The repository key: 32 raw bytes or 64 hex digits.
        #[arg(long, conflicts_with = "passphrase_file")]
        key_file: Option<std::path::PathBuf>,
        /// A file whose first line is the passphrase (argon2id).
        #[arg(long)]
        passphrase_file: Option<std::path::PathBuf>,
    },
    /// The registered repositories.
    List,
    /// The app snapshots a repository holds.
    Ls {
        name: String,
        #[arg(long)]
        app: Option<String>,
    },
    /// Read and verify everything; exits 3 when something is damaged.
    Check { name: String },
    /// Keep the newest N snapshots of every app; free what nothing needs.
    Prune {
        name: String,
        #[arg(long)]
        keep_last: u32,
    },
    /// Forget a registration (the repository's contents stay).
    Remove { name: String },
}

fn absolute(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(path)
        .with_context(|| format!("resolving {}", path.display()))?
        .display()
        .to_string())
}

pub async fn repo(client: &Client, fmt: Format, cmd: &RepoCommand) -> anyhow::Result<i32> {
    match cmd {
        RepoCommand::Add {
            name,
            location,
            key_file,
            passphrase_file,
        } => {
            let mut body = json!({ "name": name, "url": location });
            if let Some(k) = key_file {
                body["key_file"] = absolute(k)?.into();
            }
            if let Some(p) = passphrase_file {
                body["passphrase_file"] = absolute(p)?.into();
            }
            let reply = long(client).call("repo", "add", &body).await?;
            output::print(fmt, &reply, |r| {
                let mut rows = vec![vec![format!(
                    "repo {name} {} at {}",
                    if r["initialized"] == true {
                        "created"
                    } else {
                        "registered"
                    },
                    output::cell(&r["repo"]["url"])
                )]];
                if r["key_generated"] == true {
                    rows.push(vec![format!(
                        "  new key: {} (keep a copy: nothing in the repo can be read without it)",
                        output::cell(&r["repo"]["key_path"])
                    )]);
                }
                rows
            });
        }
        RepoCommand::List => {
            let reply = client.call("repo", "list", &json!({})).await?;
            output::print(fmt, &reply, |r| {
                let mut rows = vec![vec!["NAME".into(), "URL".into(), "KEY".into()]];
                for repo in r["repos"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![
                        output::cell(&repo["name"]),
                        output::cell(&repo["url"]),
                        format!(
                            "{} {}",
                            output::cell(&repo["key_kind"]),
                            output::cell(&repo["key_path"])
                        ),
                    ]);
                }
                rows
            });
        }
        RepoCommand::Ls { name, app } => {
            let reply = long(client)
                .call("repo", "ls", &json!({ "name": name, "app": app }))
                .await?;
            output::print(fmt, &reply, |r| {
                let mut rows = vec![vec![
                    "APP@SNAPSHOT".into(),
                    "CREATED".into(),
                    "VOLUMES".into(),
                    "SIZE".into(),
                    "ADDED".into(),
                    "MANIFEST".into(),
                ]];
                for s in r["snapshots"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![
                        format!(
                            "{}@{}",
                            output::cell(&s["app"]),
                            output::cell(&s["snapshot"])
                        ),
                        output::cell(&s["created"]),
                        s["volumes"].as_array().map_or(0, Vec::len).to_string(),
                        bytes(&s["logical_bytes"]),
                        bytes(&s["added_bytes"]),
                        output::cell(&s["manifest"]),
                    ]);
                }
                rows.push(vec![format!("stored: {}", bytes(&r["stored_bytes"]))]);
                rows
            });
        }
        RepoCommand::Check { name } => {
            let reply = long(client)
                .call("repo", "check", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |r| {
                let mut rows = vec![vec![format!(
                    "repo {name}: {} ({} packs, {} chunks, {} manifests, {} read)",
                    if r["ok"] == true { "ok" } else { "DAMAGED" },
                    output::cell(&r["packs"]),
                    output::cell(&r["chunks"]),
                    output::cell(&r["manifests"]),
                    bytes(&r["bytes_read"])
                )]];
                for p in r["problems"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![format!(
                        "  {} at {}: {}",
                        output::cell(&p["object"]),
                        output::cell(&p["offset"]),
                        output::cell(&p["reason"])
                    )]);
                }
                rows
            });
            return Ok(if reply["ok"] == true { 0 } else { 3 });
        }
        RepoCommand::Prune { name, keep_last } => {
            let reply = long(client)
                .call(
                    "repo",
                    "prune",
                    &json!({ "name": name, "keep_last": keep_last }),
                )
                .await?;
            output::print(fmt, &reply, |r| {
                vec![vec![format!(
                    "repo {name}: kept {} snapshots, deleted {}; packs: {} kept, {} deleted, {} repacked; {} freed",
                    output::cell(&r["manifests_kept"]),
                    r["manifests_deleted"].as_array().map_or(0, Vec::len),
                    output::cell(&r["packs_kept"]),
                    output::cell(&r["packs_deleted"]),
                    output::cell(&r["packs_repacked"]),
                    bytes(&r["freed_bytes"])
                )]]
            });
        }
        RepoCommand::Remove { name } => {
            let reply = client
                .call("repo", "remove", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!(
                    "repo {name} forgotten (its contents are kept)"
                )]]
            });
        }
    }
    Ok(0)
}

/// A byte count for a person.
fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// A readable workflow id: `<op>-<app>-<8 random characters>`.
fn workflow_id(op: &str, app: &str) -> String {
    let id = cairn_actors::gateway::new_request_id();
    let short: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let mut name = format!("{op}-{app}");
    name.truncate(40);
    format!("{name}-{}", short.to_ascii_lowercase())
}

/// Draws the workflow's progress until dropped.
struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow_progress(
    client: &Client,
    workflow: &str,
    what: String,
) -> anyhow::Result<Progress> {
    let mut messages = client
        .bus
        .subscribe(&subject::progress(&client.tenant, workflow), None)
        .await?;
    let _ = client.bus.flush().await;
    let terminal = std::io::stderr().is_terminal();
    let task = tokio::spawn(async move {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("template parses")
                .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar
        });
        let mut last_line: Option<Instant> = None;
        while let Some(m) = messages.next().await {
            let Ok(p) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            let done = p["done_bytes"].as_u64().unwrap_or(0);
            let total = p["total_bytes"].as_u64().unwrap_or(0);
            let moved = p["transferred_bytes"].as_u64().unwrap_or(0);
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(done);
                    if p["finished"] == true {
                        bar.finish_and_clear();
                    }
                }
                None => {
                    let due = last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                    if due || p["finished"] == true {
                        last_line = Some(Instant::now());
                        let secs = p["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
                        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                        eprintln!(
                            "{what}: {} / {} ({}%), {}/s, {} {}",
                            human(done),
                            human(total),
                            (done * 100).checked_div(total).unwrap_or(100),
                            human(rate as u64),
                            human(moved),
                            if p["op"] == "push" {
                                "stored"
                            } else {
                                "fetched"
                            }
                        );
                    }
                }
            }
        }
    });
    Ok(Progress { task })
}

/// Calls `app.<verb>` (workflow `id`), showing the workflow's progress
/// until the reply comes, unless the run is `--async`.
async fn call_following(
    client: &Client,
    verb: &str,
    id: &str,
    label: String,
    body: Value,
    run: &RunArgs,
) -> anyhow::Result<Value> {
    let progress = if run.run_async {
        None
    } else {
        Some(follow_progress(client, id, label).await?)
    };
    let reply = crate::follow::call(client, "app", verb, body, run).await;
    drop(progress);
    reply
}

pub async fn push(
    client: &Client,
    fmt: Format,
    source: &str,
    repo: &str,
    run: &RunArgs,
) -> anyhow::Result<i32> {
    let (app, snapshot) = split_source(source)?;
    let id = workflow_id("push", app);
    let body = json!({ "name": app, "snapshot": snapshot, "repo": repo, "workflow": id });
    let reply = call_following(client, "push", &id, format!("push {source}"), body, run).await?;
    output::print(fmt, &reply, |r| {
        if run.run_async {
            return output::workflow_started_rows(r);
        }
        let secs = r["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        vec![
            vec![format!(
                "pushed {source} to {repo} as manifest {} (workflow {})",
                output::cell(&r["manifest"]),
                output::cell(&r["workflow"])
            )],
            vec![format!(
                "  {} of volumes, {} read, {} uploaded in {} packs, {secs:.1}s{}",
                bytes(&r["logical_bytes"]),
                bytes(&r["read_bytes"]),
                bytes(&r["uploaded_bytes"]),
                output::cell(&r["packs_uploaded"]),
                match (r["parent"].as_str(), r["incremental_volumes"].as_array()) {
                    (Some(p), Some(diffed)) if !diffed.is_empty() => {
                        format!(" (incremental to {p}: {} volumes diffed)", diffed.len())
                    }
                    (Some(p), _) => format!(" (read whole, deduplicated against {p})"),
                    (None, _) => " (full)".into(),
                }
            )],
        ]
    });
    Ok(0)
}

pub async fn pull(
    client: &Client,
    fmt: Format,
    repo: &str,
    source: &str,
    target: Option<&str>,
    run: &RunArgs,
) -> anyhow::Result<i32> {
    let (app, snapshot) = split_source(source)?;
    let target = target.unwrap_or(app);
    let id = workflow_id("pull", target);
    let body = json!({
        "repo": repo, "name": app, "snapshot": snapshot, "target": target, "workflow": id
    });
    let reply = call_following(client, "pull", &id, format!("pull {source}"), body, run).await?;
    output::print(fmt, &reply, |r| {
        if run.run_async {
            return output::workflow_started_rows(r);
        }
        let secs = r["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        let mut rows = vec![
            vec![format!(
                "pulled {source} from {repo} into app {target} (workflow {})",
                output::cell(&r["workflow"])
            )],
            vec![format!(
                "  {} of volumes: {} chunks written, {} unchanged, {} fetched and verified, {secs:.1}s",
                bytes(&r["logical_bytes"]),
                output::cell(&r["written_chunks"]),
                output::cell(&r["unchanged_chunks"]),
                bytes(&r["fetched_bytes"])
            )],
        ];
        for v in r["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            rows.push(vec![format!("  {}", output::cell(v))]);
        }
        rows
    });
    Ok(0)
}
