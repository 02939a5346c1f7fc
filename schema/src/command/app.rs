//! Requests of kind `app`: their body types (create, scale, config-set, log,
//! the snapshot, rollback, clone and delete workflows, their step-only
//! commands, push and pull with their steps) and the `app.*` parse arm.

use super::*;

/// The body of `app.create`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppCreateBody {
    /// Multi-document Kubernetes YAML (JSON is YAML too): StatefulSets,
    /// Deployments, Services, ConfigMaps, Secrets, PVCs, any other kind kept
    /// as is, and an optional `kind: App` document (`apiVersion:
    /// cairn.dev/v1`) naming the app.
    pub manifest: String,
    /// The app's name (a DNS-1123 label); wins over the `kind: App`
    /// document's. One of the two must be given.
    #[serde(default)]
    pub name: Option<String>,
}

/// The body of `app.scale`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppScaleBody {
    /// The app.
    pub name: String,
    /// The new replica count (at most 1024).
    pub replicas: u32,
    /// The StatefulSet or Deployment; may be left out when the app has one.
    #[serde(default)]
    pub workload: Option<String>,
}

/// The body of `app.config-set`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfigSetBody {
    /// The app.
    pub name: String,
    /// One of the app's ConfigMaps.
    pub configmap: String,
    pub key: String,
    pub value: String,
}

/// The body of `app.log`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppLogBody {
    /// The app.
    pub name: String,
    /// At most this many entries (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The body of `app.snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSnapshotBody {
    /// The app.
    pub name: String,
    /// The new snapshot: a DNS-1123 label.
    pub snapshot: String,
    /// A note kept with it (`app snapshots`, `app log`).
    #[serde(default)]
    pub message: Option<String>,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out. A
    /// second start with an id in use answers with that workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.snapshot-delete`, `app.rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSnapshotRefBody {
    /// The app.
    pub name: String,
    /// One of its snapshots.
    pub snapshot: String,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out. A
    /// second start with an id in use answers with that workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.delete`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppDeleteBody {
    /// The app.
    pub name: String,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out. A
    /// second start with an id in use answers with that workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.clone`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppCloneBody {
    /// The source app.
    pub name: String,
    /// The snapshot of `name` to clone.
    pub snapshot: String,
    /// The new app (a DNS-1123 label).
    pub target: String,
    /// Overrides, `path=value`: `replicas=N`, `image=REF`,
    /// `<configmap>.<key>=V`, `<Kind>/<name>.<dotted.path>=V`.
    #[serde(default)]
    pub set: Vec<String>,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out. A
    /// second start with an id in use answers with that workflow.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.hook` (a workflow step): run the app's hooks of one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppHookBody {
    /// The app.
    pub name: String,
    /// The key under the App document's `spec.hooks` (`preSnapshot`,
    /// `postSnapshot`, or any of the app's own, like `upgrade`).
    pub hook: String,
    /// Passed to the hook as `CAIRN_SNAPSHOT`.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// The body of `app.snapshot-take` (a step of `app-snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSnapshotTakeBody {
    pub name: String,
    pub snapshot: String,
    #[serde(default)]
    pub message: Option<String>,
    /// The workflow taking it (so a retried step is recognised).
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.snapshot-drop`, `app.restore` (workflow steps).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSnapshotStepBody {
    pub name: String,
    pub snapshot: String,
    /// `app.snapshot-drop`: a snapshot that is not there is no error.
    #[serde(default)]
    pub missing_ok: bool,
}

/// The body of `app.remove` (a workflow step).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRemoveBody {
    pub name: String,
    /// An app that is not there is no error.
    #[serde(default)]
    pub missing_ok: bool,
}

/// The body of `app.clone-create` (a step of `app-clone`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppCloneCreateBody {
    pub name: String,
    pub snapshot: String,
    pub target: String,
    #[serde(default)]
    pub set: Vec<String>,
}

/// The body of `app.push`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPushBody {
    /// The app.
    pub name: String,
    /// The app snapshot to push.
    pub snapshot: String,
    /// A registered repository.
    pub repo: String,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out.
    /// Progress events name it.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.pull`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPullBody {
    /// A registered repository.
    pub repo: String,
    /// The app as it was pushed.
    pub name: String,
    /// Its snapshot to pull.
    pub snapshot: String,
    /// Pull as this app (default: `name`). An app that exists is repaired:
    /// rolled back to the pulled snapshot, after a safety snapshot.
    #[serde(default)]
    pub target: Option<String>,
    /// Reply at once with the workflow's id instead of waiting for its end.
    #[serde(default, rename = "async")]
    pub run_async: bool,
    /// The workflow's id (a DNS-1123 label); one is made when left out.
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.push-upload` (the step of `app-push`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPushUploadBody {
    pub name: String,
    pub snapshot: String,
    pub repo: String,
    /// The workflow pushing (progress events name it).
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.pull-import` (a step of `app-pull`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPullImportBody {
    pub repo: String,
    /// The app as pushed.
    pub name: String,
    pub snapshot: String,
    /// The app created or repaired.
    pub target: String,
    /// The target must not exist (`app-pull`): an app that appeared since
    /// the workflow started is refused, not silently repaired.
    #[serde(default)]
    pub create: bool,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// The body of `app.pull-data` (a step of `app-pull`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPullDataBody {
    /// The app `app.pull-import` made; its volumes get the manifest's data.
    pub name: String,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// Decodes and validates a `app.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "create" => {
            let b: AppCreateBody = body(bytes)?;
            Command::App(AppCommand::Create(parse_manifest(
                &b.manifest,
                b.name.as_deref(),
            )?))
        }
        "get" => {
            let b: NameBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::Query(Query::AppGet { name: b.name })
        }
        "snapshot" => {
            let b: AppSnapshotBody = body(bytes)?;
            let run = b.run();
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            builtin(
                "app-snapshot",
                [
                    ("app", b.name.into()),
                    ("snapshot", b.snapshot.into()),
                    ("message", b.message.unwrap_or_default().into()),
                ],
                run,
            )?
        }
        "snapshot-delete" | "rollback" => {
            let b: AppSnapshotRefBody = body(bytes)?;
            let run = b.run();
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            builtin(
                if verb == "rollback" {
                    "app-rollback"
                } else {
                    "app-snapshot-delete"
                },
                [("app", b.name.into()), ("snapshot", b.snapshot.into())],
                run,
            )?
        }
        "delete" => {
            let b: AppDeleteBody = body(bytes)?;
            let run = b.run();
            check_label("app", &b.name)?;
            builtin("app-delete", [("app", b.name.into())], run)?
        }
        "clone" => {
            let b: AppCloneBody = body(bytes)?;
            let run = b.run();
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_label("app", &b.target)?;
            check_overrides(&b.set)?;
            builtin(
                "app-clone",
                [
                    ("app", b.name.into()),
                    ("snapshot", b.snapshot.into()),
                    ("target", b.target.into()),
                    ("set", b.set.into()),
                ],
                run,
            )?
        }
        "snapshots" => {
            let b: NameBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::Query(Query::AppSnapshots { name: b.name })
        }
        "hook" => {
            let b: AppHookBody = body(bytes)?;
            check_label("app", &b.name)?;
            if b.hook.is_empty()
                || b.hook.len() > 63
                || !b
                    .hook
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(ApiError::invalid(format!(
                    "hook name {:?} is not valid",
                    b.hook
                )));
            }
            Command::Hook {
                app: b.name,
                hook: b.hook,
                snapshot: b.snapshot,
            }
        }
        "snapshot-take" => {
            let b: AppSnapshotTakeBody = body(bytes)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            Command::App(AppCommand::Snapshot {
                name: b.name,
                snapshot: b.snapshot,
                message: b.message.unwrap_or_default(),
                workflow: b.workflow.unwrap_or_default(),
            })
        }
        "snapshot-drop" | "restore" => {
            let b: AppSnapshotStepBody = body(bytes)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            Command::App(if verb == "restore" {
                AppCommand::Restore {
                    name: b.name,
                    snapshot: b.snapshot,
                }
            } else {
                AppCommand::SnapshotDrop {
                    name: b.name,
                    snapshot: b.snapshot,
                    dependants: Vec::new(),
                    missing_ok: b.missing_ok,
                }
            })
        }
        "clone-create" => {
            let b: AppCloneCreateBody = body(bytes)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_label("app", &b.target)?;
            check_overrides(&b.set)?;
            Command::App(AppCommand::CloneFrom {
                name: b.target,
                source: b.name,
                snapshot: b.snapshot,
                from: Box::default(),
                overrides: b.set,
            })
        }
        "remove" => {
            let b: AppRemoveBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::App(AppCommand::Delete {
                name: b.name,
                missing_ok: b.missing_ok,
            })
        }
        "push" => {
            let b: AppPushBody = body(bytes)?;
            let run = b.run();
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_label("repo", &b.repo)?;
            builtin(
                "app-push",
                [
                    ("app", b.name.into()),
                    ("snapshot", b.snapshot.into()),
                    ("repo", b.repo.into()),
                ],
                run,
            )?
        }
        "pull" => {
            let b: AppPullBody = body(bytes)?;
            let run = b.run();
            check_label("repo", &b.repo)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            let target = b.target.unwrap_or_else(|| b.name.clone());
            check_label("app", &target)?;
            builtin(
                "app-pull",
                [
                    ("repo", b.repo.into()),
                    ("app", b.name.into()),
                    ("snapshot", b.snapshot.into()),
                    ("target", target.into()),
                ],
                run,
            )?
        }
        "push-upload" => {
            let b: AppPushUploadBody = body(bytes)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_label("repo", &b.repo)?;
            Command::Repo(RepoCommand::Upload {
                repo: b.repo,
                app: b.name,
                snapshot: b.snapshot,
                workflow: b.workflow.unwrap_or_default(),
            })
        }
        "pull-import" => {
            let b: AppPullImportBody = body(bytes)?;
            check_label("repo", &b.repo)?;
            check_label("app", &b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_label("app", &b.target)?;
            Command::Repo(RepoCommand::Import {
                repo: b.repo,
                source: b.name,
                snapshot: b.snapshot,
                target: b.target,
                create: b.create,
                workflow: b.workflow.unwrap_or_default(),
            })
        }
        "pull-data" => {
            let b: AppPullDataBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::Repo(RepoCommand::Download {
                app: b.name,
                workflow: b.workflow.unwrap_or_default(),
            })
        }
        "reclaim" => {
            body::<EmptyBody>(bytes)?;
            Command::Reclaim
        }
        "list" => {
            body::<EmptyBody>(bytes)?;
            Command::Query(Query::AppList)
        }
        "scale" => {
            let b: AppScaleBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::App(AppCommand::Scale {
                name: b.name,
                workload: b.workload,
                replicas: b.replicas,
            })
        }
        "config-set" => {
            let b: AppConfigSetBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::App(AppCommand::ConfigSet {
                name: b.name,
                configmap: b.configmap,
                key: b.key,
                value: b.value,
            })
        }
        "log" => {
            let b: AppLogBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::Query(Query::AppLog {
                name: b.name,
                limit: b.limit.unwrap_or(100).clamp(1, MAX_EVENTS_PAGE),
            })
        }
        "placement" => {
            let b: NameBody = body(bytes)?;
            check_label("app", &b.name)?;
            Command::Query(Query::AppPlacement { name: b.name })
        }
        _ => return Err(unknown("app", verb)),
    };
    Ok(cmd)
}
