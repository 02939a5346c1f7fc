//! `cairn app …`: apps from Kubernetes manifests, their history (snapshot,
//! rollback, clone, delete: workflows followed by id, see [`follow`]),
//! scale, config, placement, log. Requests are the shared body types of
//! `cairn_schema::command`, replies the shared types of
//! `cairn_schema::reply`.

use anyhow::Context;
use cairn_actors::client::Client;
use cairn_schema::command::{
    AppCloneBody, AppConfigSetBody, AppCreateBody, AppDeleteBody, AppLogBody, AppScaleBody,
    AppSnapshotBody, AppSnapshotRefBody, EmptyBody, NameBody,
};
use cairn_schema::reply::{
    AppCloneReply, AppConfigSetReply, AppCreateReply, AppDeleteReply, AppListReply, AppLogReply,
    AppPlacementReply, AppRollbackReply, AppScaleReply, AppSnapshotDeleteReply, AppSnapshotReply,
    AppSnapshotsReply, AppView,
};

use super::{AppCommand, AppConfigCommand, call, follow};
use crate::output::{self, Format};

fn name_body(name: &str) -> NameBody {
    NameBody {
        name: name.to_owned(),
    }
}

fn snapshot_ref(name: &str, snapshot: &str) -> AppSnapshotRefBody {
    AppSnapshotRefBody {
        name: name.to_owned(),
        snapshot: snapshot.to_owned(),
        run_async: false,
        workflow: None,
    }
}

/// `(workflow ID)`, or nothing when the reply names none.
fn workflow_note(workflow: &Option<String>) -> String {
    workflow
        .as_ref()
        .map(|w| format!(" (workflow {w})"))
        .unwrap_or_default()
}

pub async fn run(client: &Client, fmt: Format, cmd: &AppCommand) -> anyhow::Result<i32> {
    match cmd {
        AppCommand::Create { file, name } => {
            let manifest = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the manifest from stdin")?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let body = AppCreateBody {
                manifest,
                name: name.clone(),
            };
            let reply = call::<AppCreateReply>(client, "app", "create", &body).await?;
            reply.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "app {} created with {} objects",
                    r.name, r.objects
                )]];
                for v in &r.volumes {
                    rows.push(vec![format!("  volume {v}")]);
                }
                rows
            });
        }
        AppCommand::List => {
            let reply = call::<AppListReply>(client, "app", "list", &EmptyBody {}).await?;
            reply.print(fmt, |r| output::app_rows(&r.apps));
        }
        AppCommand::Get { name } => {
            let reply = call::<AppView>(client, "app", "get", &name_body(name)).await?;
            if fmt == Format::Yaml {
                // What is stored: the Kubernetes objects, one document each.
                for object in &reply.body.objects {
                    println!("---");
                    print!("{}", serde_yaml_ng::to_string(object)?);
                }
            } else {
                reply.print(fmt, output::app_detail_rows);
            }
        }
        AppCommand::Delete { name, run } => {
            let body = AppDeleteBody {
                name: name.clone(),
                run_async: false,
                workflow: None,
            };
            let outcome =
                follow::call::<AppDeleteReply>(client, "app", "delete", body, run).await?;
            outcome.print(fmt, |r| {
                vec![vec![format!(
                    "app {} deleted with {} volumes{}",
                    r.name,
                    r.volumes.len(),
                    workflow_note(&r.workflow)
                )]]
            });
        }
        AppCommand::Snapshot {
            name,
            snapshot,
            message,
            run,
        } => {
            let body = AppSnapshotBody {
                name: name.clone(),
                snapshot: snapshot.clone(),
                message: message.clone(),
                run_async: false,
                workflow: None,
            };
            let outcome =
                follow::call::<AppSnapshotReply>(client, "app", "snapshot", body, run).await?;
            outcome.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "app {} snapshotted as {}{}",
                    r.name,
                    r.snapshot,
                    workflow_note(&r.workflow)
                )]];
                for v in &r.volumes {
                    rows.push(vec![format!("  {v}@{}", r.snapshot)]);
                }
                rows
            });
        }
        AppCommand::Snapshots { name } => {
            let reply =
                call::<AppSnapshotsReply>(client, "app", "snapshots", &name_body(name)).await?;
            reply.print(fmt, output::app_snapshot_rows);
        }
        AppCommand::SnapshotDelete {
            name,
            snapshot,
            run,
        } => {
            let body = snapshot_ref(name, snapshot);
            let outcome =
                follow::call::<AppSnapshotDeleteReply>(client, "app", "snapshot-delete", body, run)
                    .await?;
            outcome.print(fmt, |r| {
                vec![vec![format!(
                    "snapshot {} of app {} deleted{}",
                    r.snapshot,
                    r.name,
                    workflow_note(&r.workflow)
                )]]
            });
        }
        AppCommand::Rollback {
            name,
            snapshot,
            run,
        } => {
            let body = snapshot_ref(name, snapshot);
            let outcome =
                follow::call::<AppRollbackReply>(client, "app", "rollback", body, run).await?;
            outcome.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "app {} rolled back to {}: data, config and metadata (safety snapshot {}, workflow {})",
                    r.name,
                    r.snapshot,
                    r.safety_snapshot.as_deref().unwrap_or("-"),
                    r.workflow.as_deref().unwrap_or("-")
                )]];
                for (what, volumes) in [
                    ("restored", &r.volumes),
                    ("retired", &r.retired),
                    ("deleted", &r.deleted),
                ] {
                    for v in volumes {
                        rows.push(vec![format!("  {what} {v}")]);
                    }
                }
                rows
            });
        }
        AppCommand::Clone {
            source,
            target,
            set,
            run,
        } => {
            let Some((app, snapshot)) = source.split_once('@') else {
                anyhow::bail!("the source is <app>@<snapshot>, not {source:?}");
            };
            let body = AppCloneBody {
                name: app.to_owned(),
                snapshot: snapshot.to_owned(),
                target: target.clone(),
                set: set.clone(),
                run_async: false,
                workflow: None,
            };
            let outcome = follow::call::<AppCloneReply>(client, "app", "clone", body, run).await?;
            outcome.print(fmt, |r| {
                let mut rows = vec![vec![format!(
                    "app {} cloned from {}@{}{}",
                    r.name,
                    r.source,
                    r.snapshot,
                    workflow_note(&r.workflow)
                )]];
                for v in &r.cloned {
                    rows.push(vec![format!("  {v} (thin clone)")]);
                }
                for v in &r.created {
                    rows.push(vec![format!("  {v} (new, empty)")]);
                }
                rows
            });
        }
        AppCommand::Push { source, repo, run } => {
            return super::repo::push(client, fmt, source, repo, run).await;
        }
        AppCommand::Pull {
            repo,
            source,
            target,
            run,
        } => {
            return super::repo::pull(client, fmt, repo, source, target.as_deref(), run).await;
        }
        AppCommand::Scale {
            name,
            replicas,
            workload,
        } => {
            let body = AppScaleBody {
                name: name.clone(),
                replicas: *replicas,
                workload: workload.clone(),
            };
            let reply = call::<AppScaleReply>(client, "app", "scale", &body).await?;
            reply.print(fmt, |r| {
                let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                vec![vec![format!(
                    "app {}: {} scaled from {} to {} replicas",
                    r.name,
                    or_dash(r.workload.clone()),
                    or_dash(r.from_replicas.map(|n| n.to_string())),
                    or_dash(r.replicas.map(|n| n.to_string()))
                )]]
            });
        }
        AppCommand::Config(AppConfigCommand::Set { name, assignment }) => {
            let Some((target, value)) = assignment.split_once('=') else {
                anyhow::bail!("expected <configmap>.<key>=<value>, not {assignment:?}");
            };
            // ConfigMap names may hold dots: split against the app's own.
            let app = call::<AppView>(client, "app", "get", &name_body(name)).await?;
            let configmaps: Vec<&str> = app.body.configmaps.keys().map(String::as_str).collect();
            let Some((configmap, key)) =
                cairn_schema::app::split_config_target(target, &configmaps)
            else {
                anyhow::bail!(
                    "{target:?} does not start with one of app {name}'s ConfigMaps ({}) followed by .<key>",
                    if configmaps.is_empty() {
                        "it has none".to_owned()
                    } else {
                        configmaps.join(", ")
                    }
                );
            };
            let body = AppConfigSetBody {
                name: name.clone(),
                configmap: configmap.to_owned(),
                key: key.to_owned(),
                value: value.to_owned(),
            };
            let reply = call::<AppConfigSetReply>(client, "app", "config-set", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!(
                    "app {}: {}.{} set to {:?}",
                    r.name, r.configmap, r.key, r.value
                )]]
            });
        }
        AppCommand::Placement { name } => {
            let reply =
                call::<AppPlacementReply>(client, "app", "placement", &name_body(name)).await?;
            // `-o json` prints the list of {"replica","volume","slices"}.
            match fmt {
                Format::Table => output::print_table(&output::placement_rows(&reply.body)),
                _ => output::print(fmt, &serde_json::to_value(&reply.body.volumes)?, |_| {
                    Vec::new()
                }),
            }
        }
        AppCommand::Log { name, limit } => {
            let body = AppLogBody {
                name: name.clone(),
                limit: Some(*limit),
            };
            let reply = call::<AppLogReply>(client, "app", "log", &body).await?;
            reply.print(fmt, output::log_rows);
        }
    }
    Ok(0)
}
