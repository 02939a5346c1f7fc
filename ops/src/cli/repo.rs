//! `cairn app push`, `cairn app pull` and `cairn repo …`: the client side of
//! backup repositories. Push and pull run as workflows; while one runs, its
//! progress (`evt.progress.<workflow>`) is drawn as a progress bar on a
//! terminal (bytes, throughput, ETA) and as plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_actors::client::Client;
use cairn_schema::command::{
    AppPullBody, AppPushBody, EmptyBody, RepoAddBody, RepoLsBody, RepoNameBody, RepoPruneBody,
};
use cairn_schema::reply::{
    PullReply, PushReply, RepoAddReply, RepoCheckReply, RepoListReply, RepoLsReply, RepoPruneReply,
    RepoRemoveReply, TransferProgress,
};
use cairn_schema::subject;
use clap::Subcommand;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::follow::{self, Outcome, WorkflowBody, split_source};
use super::{RunArgs, call, long};
use crate::output::{Format, human};

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

pub async fn run(client: &Client, fmt: Format, cmd: &RepoCommand) -> anyhow::Result<i32> {
    let long = long(client);
    match cmd {
        RepoCommand::Add {
            name,
            location,
            key_file,
            passphrase_file,
        } => {
            let body = RepoAddBody {
                name: name.clone(),
                url: location.clone(),
                key_file: key_file.as_deref().map(absolute).transpose()?,
                passphrase_file: passphrase_file.as_deref().map(absolute).transpose()?,
            };
            let reply = call::<RepoAddReply>(&long, "repo", "add", &body).await?;
            reply.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "repo {} {} at {}",
                    r.repo.name,
                    if r.initialized {
                        "created"
                    } else {
                        "registered"
                    },
                    r.repo.url
                )]];
                if r.key_generated {
                    rows.push(vec![format!(
                        "  new key: {} (keep a copy: nothing in the repo can be read without it)",
                        r.repo.key_path
                    )]);
                }
                rows
            });
        }
        RepoCommand::List => {
            let reply = call::<RepoListReply>(client, "repo", "list", &EmptyBody {}).await?;
            reply.print(fmt, |r| {
                let mut rows = vec![vec!["NAME".into(), "URL".into(), "KEY".into()]];
                for repo in &r.repos {
                    rows.push(vec![
                        repo.name.clone(),
                        repo.url.clone(),
                        format!("{} {}", repo.key_kind, repo.key_path),
                    ]);
                }
                rows
            });
        }
        RepoCommand::Ls { name, app } => {
            let body = RepoLsBody {
                name: name.clone(),
                app: app.clone(),
            };
            let reply = call::<RepoLsReply>(&long, "repo", "ls", &body).await?;
            reply.print(fmt, |r| {
                let mut rows = vec![vec![
                    "APP@SNAPSHOT".into(),
                    "CREATED".into(),
                    "VOLUMES".into(),
                    "SIZE".into(),
                    "ADDED".into(),
                    "MANIFEST".into(),
                ]];
                for s in &r.snapshots {
                    rows.push(vec![
                        format!("{}@{}", s.app, s.snapshot),
                        s.created.clone(),
                        s.volumes.len().to_string(),
                        human(s.logical_bytes),
                        human(s.added_bytes),
                        s.manifest.clone(),
                    ]);
                }
                rows.push(vec![format!("stored: {}", human(r.stored_bytes))]);
                rows
            });
        }
        RepoCommand::Check { name } => {
            let body = RepoNameBody { name: name.clone() };
            let reply = call::<RepoCheckReply>(&long, "repo", "check", &body).await?;
            reply.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "repo {}: {} ({} packs, {} chunks, {} manifests, {} read)",
                    r.name,
                    if r.ok { "ok" } else { "DAMAGED" },
                    r.packs,
                    r.chunks,
                    r.manifests,
                    human(r.bytes_read)
                )]];
                for p in &r.problems {
                    rows.push(vec![format!(
                        "  {} at {}: {}",
                        p.object,
                        p.offset.map_or_else(|| "-".into(), |o| o.to_string()),
                        p.reason
                    )]);
                }
                rows
            });
            return Ok(if reply.body.ok { 0 } else { 3 });
        }
        RepoCommand::Prune { name, keep_last } => {
            let body = RepoPruneBody {
                name: name.clone(),
                keep_last: *keep_last,
            };
            let reply = call::<RepoPruneReply>(&long, "repo", "prune", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!(
                    "repo {}: kept {} snapshots, deleted {}; packs: {} kept, {} deleted, {} repacked; {} freed",
                    r.name,
                    r.manifests_kept,
                    r.manifests_deleted.len(),
                    r.packs_kept,
                    r.packs_deleted,
                    r.packs_repacked,
                    signed(r.freed_bytes)
                )]]
            });
        }
        RepoCommand::Remove { name } => {
            let body = RepoNameBody { name: name.clone() };
            let reply = call::<RepoRemoveReply>(client, "repo", "remove", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!(
                    "repo {} forgotten (its contents are kept)",
                    r.name
                )]]
            });
        }
    }
    Ok(0)
}

/// A signed byte count (a repack can grow the repository).
fn signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", human(n.unsigned_abs()))
    } else {
        human(n as u64)
    }
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
            let Ok(p) = serde_json::from_slice::<TransferProgress>(&m.payload) else {
                continue;
            };
            let (done, total, moved) = (p.done_bytes, p.total_bytes, p.transferred_bytes);
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(done);
                    if p.finished {
                        bar.finish_and_clear();
                    }
                }
                None => {
                    let due = last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                    if due || p.finished {
                        last_line = Some(Instant::now());
                        let secs = p.elapsed_ms as f64 / 1000.0;
                        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                        eprintln!(
                            "{what}: {} / {} ({}%), {}/s, {} {}",
                            human(done),
                            human(total),
                            (done * 100).checked_div(total).unwrap_or(100),
                            human(rate as u64),
                            human(moved),
                            if p.op == "push" { "stored" } else { "fetched" }
                        );
                    }
                }
            }
        }
    });
    Ok(Progress { task })
}

/// Calls `app.<verb>` as workflow `id`, showing the workflow's progress
/// until it ends, unless the run is `--async`.
async fn call_following<R: DeserializeOwned>(
    client: &Client,
    verb: &str,
    label: String,
    mut body: impl WorkflowBody,
    run: &RunArgs,
) -> anyhow::Result<Outcome<R>> {
    let id = body.prepare(run.run_async);
    let progress = if run.run_async {
        None
    } else {
        Some(follow_progress(client, &id, label).await?)
    };
    let reply = follow::call(client, "app", verb, body, run).await;
    drop(progress);
    reply
}

/// How a push or pull went: parent, incremental volumes.
fn push_basis(r: &PushReply) -> String {
    match (&r.parent, r.incremental_volumes.len()) {
        (Some(p), n) if n > 0 => format!(" (incremental to {p}: {n} volumes diffed)"),
        (Some(p), _) => format!(" (read whole, deduplicated against {p})"),
        (None, _) => " (full)".into(),
    }
}

pub async fn push(
    client: &Client,
    fmt: Format,
    source: &str,
    repo: &str,
    run: &RunArgs,
) -> anyhow::Result<i32> {
    let (app, snapshot) = split_source(source)?;
    let body = AppPushBody {
        name: app.to_owned(),
        snapshot: snapshot.to_owned(),
        repo: repo.to_owned(),
        run_async: false,
        workflow: Some(workflow_id("push", app)),
    };
    let outcome =
        call_following::<PushReply>(client, "push", format!("push {source}"), body, run).await?;
    outcome.print(fmt, |r| {
        let secs = r.elapsed_ms as f64 / 1000.0;
        vec![
            vec![format!(
                "pushed {source} to {repo} as manifest {} (workflow {})",
                r.manifest,
                r.workflow.as_deref().unwrap_or("-")
            )],
            vec![format!(
                "  {} of volumes, {} read, {} uploaded in {} packs, {secs:.1}s{}",
                human(r.logical_bytes),
                human(r.read_bytes),
                human(r.uploaded_bytes),
                r.packs_uploaded,
                push_basis(r)
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
    let body = AppPullBody {
        repo: repo.to_owned(),
        name: app.to_owned(),
        snapshot: snapshot.to_owned(),
        target: Some(target.to_owned()),
        run_async: false,
        workflow: Some(workflow_id("pull", target)),
    };
    let outcome =
        call_following::<PullReply>(client, "pull", format!("pull {source}"), body, run).await?;
    outcome.print(fmt, |r| {
        let secs = r.elapsed_ms as f64 / 1000.0;
        let mut rows = vec![
            vec![format!(
                "pulled {source} from {repo} into app {target} (workflow {})",
                r.workflow.as_deref().unwrap_or("-")
            )],
            vec![format!(
                "  {} of volumes: {} chunks written, {} unchanged, {} fetched and verified, {secs:.1}s",
                human(r.logical_bytes),
                r.written_chunks,
                r.unchanged_chunks,
                human(r.fetched_bytes)
            )],
        ];
        for v in &r.volumes {
            rows.push(vec![format!("  {v}")]);
        }
        rows
    });
    Ok(0)
}
