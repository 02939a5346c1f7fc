//! Commands (imperative requests that may change state) and queries (that
//! never do), decoded from a subject's `<kind>.<verb>` and a JSON body.
//!
//! | subject suffix | body | meaning |
//! |---|---|---|
//! | `volume.create` | `{"name","size","compress"?,"encrypt"?}` (size: bytes or `"10G"`; compress: `lz4` (default), `zstd`, `none`) | create a thin volume |
//! | `volume.clone` | `{"name","snapshot","target"}` | new volume `target` sharing `name@snapshot` |
//! | `volume.rollback` | `{"name","snapshot"}` | make `name` read as `name@snapshot` again |
//! | `volume.diff` | `{"from","to"}` (`v`, `v@s`) | changed byte ranges |
//! | `volume.scrub` | `{"name"}` | verify every block; report bad ones |
//! | `volume.delete` | `{"name"}` | delete a volume and its snapshots |
//! | `volume.snapshot` | `{"name","snapshot"}` | freeze `name@snapshot` |
//! | `volume.snapshot-delete` | `{"name","snapshot"}` | delete one snapshot |
//! | `volume.list` | `{}` | every volume of the tenant |
//! | `volume.show` | `{"name"}` | one volume with its snapshots |
//! | `volume.snapshots` | `{"name"}` | the snapshots of one volume |
//! | `app.create` | `{"manifest","name"?}` (manifest: multi-document Kubernetes YAML) | create an app and its volumes |
//! | `app.get` | `{"name"}` | the stored objects, volumes and workloads |
//! | `app.list` | `{}` | every app of the tenant |
//! | `app.delete` | `{"name"}` | delete an app and its volumes |
//! | `app.scale` | `{"name","replicas","workload"?}` | change a StatefulSet's or Deployment's replicas |
//! | `app.config-set` | `{"name","configmap","key","value"}` | set one ConfigMap key |
//! | `app.log` | `{"name","limit"?}` | the app's history, newest first |
//! | `app.placement` | `{"name"}` | replica → volume → slices → disk, node, rack, datacenter |
//! | `node.list` | `{}` | the nodes and their disks |
//! | `node.fail` | `{"name"}` | mark a node failed; report what each app lost |
//! | `events.replay` | `{"at_seq"?,"at_ms"?,"app"?}` | the state as of a seq or time |
//! | `events.list` | `{"since_seq"?,"limit"?,"subject"?,"kind"?}` | journal records |
//! | `events.verify` | `{}` | check the hash chain and replayed state |
//! | `app.push` | `{"name","snapshot","repo"}` | push an app snapshot to a repository (a workflow) |
//! | `app.pull` | `{"repo","name","snapshot","target"?}` | create or repair an app from a repository (a workflow) |
//! | `repo.add` | `{"name","url","key_file"?,"passphrase_file"?}` | register (and create) a repository |
//! | `repo.list`, `repo.ls`, `repo.check`, `repo.prune`, `repo.remove` | `{"name",…}` | what a repository holds; verify it; drop old snapshots |
//! | `system.ping` | `{}` | liveness |
//!
//! The request bodies below are public and derive `JsonSchema`. Every
//! `kind.verb` that [`Command::parse`] accepts has a row in
//! [`crate::api::OPERATIONS`] naming its body and reply types; the AsyncAPI
//! document (`docs/asyncapi.yaml`) is generated from that table.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ApiError;
use crate::app::{AppCommand, parse_manifest};
use crate::names::{check_label, check_volume_name, parse_quantity};
use crate::repo::{RepoCommand, RepoKey, check_repo_url};

/// Largest number of records one `events.list` returns.
pub const MAX_EVENTS_PAGE: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeCommand {
    Create {
        name: String,
        size_bytes: u64,
        compression: String,
        encrypted: bool,
    },
    Delete {
        name: String,
    },
    /// Creates `target` from `name@snapshot`, sharing every block.
    Clone {
        name: String,
        snapshot: String,
        target: String,
    },
    Rollback {
        name: String,
        snapshot: String,
    },
    Snapshot {
        name: String,
        snapshot: String,
    },
    DeleteSnapshot {
        name: String,
        snapshot: String,
    },
}

impl VolumeCommand {
    /// The verb of its subject (`volume.<verb>`).
    pub fn verb(&self) -> &'static str {
        match self {
            VolumeCommand::Create { .. } => "create",
            VolumeCommand::Delete { .. } => "delete",
            VolumeCommand::Clone { .. } => "clone",
            VolumeCommand::Rollback { .. } => "rollback",
            VolumeCommand::Snapshot { .. } => "snapshot",
            VolumeCommand::DeleteSnapshot { .. } => "snapshot-delete",
        }
    }

    pub fn volume(&self) -> &str {
        match self {
            VolumeCommand::Create { name, .. }
            | VolumeCommand::Delete { name }
            | VolumeCommand::Rollback { name, .. }
            | VolumeCommand::Snapshot { name, .. }
            | VolumeCommand::DeleteSnapshot { name, .. } => name,
            // A clone is a fact about the new volume.
            VolumeCommand::Clone { target, .. } => target,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    AppGet {
        name: String,
    },
    AppList,
    AppLog {
        name: String,
        limit: u32,
    },
    AppPlacement {
        name: String,
    },
    NodeList,
    /// State as of a seq or a time (the last record at or before it).
    EventsReplay {
        at_seq: Option<u64>,
        at_ms: Option<u64>,
        app: Option<String>,
    },
    VolumeList,
    VolumeShow {
        name: String,
    },
    VolumeSnapshots {
        name: String,
    },
    VolumeDiff {
        from: String,
        to: String,
    },
    VolumeScrub {
        name: String,
    },
    EventsList(EventsFilter),
    EventsVerify,
    RepoList,
    AppSnapshots {
        name: String,
    },
    WorkflowList {
        app: Option<String>,
        status: Option<String>,
        limit: u32,
    },
    /// A workflow by id, or a built-in definition by name.
    WorkflowShow {
        id: String,
    },
    Ping,
}

/// The body of `events.list`: which journal records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsFilter {
    /// Start at this seq (1-based; the reply's `next_seq` continues a page).
    #[serde(default)]
    pub since_seq: u64,
    /// At most this many records (default 1000, at most 10000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Keep only records of this aggregate (`volume/v1`), or whose aggregate
    /// starts with it followed by `/`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Keep only events of this kind (`VolumeCreated`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Keep only records of this app: the app itself and its volumes
    /// (`app/<a>`, `volume/<a>/…`).
    #[serde(default)]
    pub app: Option<String>,
    /// List cluster-wide records (nodes) instead of the tenant's own.
    #[serde(default)]
    pub cluster: bool,
    /// Keep only records at or after this time (epoch ms).
    #[serde(default)]
    pub since_ms: Option<u64>,
}

impl EventsFilter {
    pub fn page_limit(&self) -> u32 {
        self.limit.unwrap_or(1000).clamp(1, MAX_EVENTS_PAGE)
    }

    pub fn matches(&self, aggregate: &str, kind: &str, time_ms: u64) -> bool {
        let subject_ok = self.subject.as_deref().is_none_or(|s| {
            aggregate == s
                || aggregate
                    .strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        let app_ok = self.app.as_deref().is_none_or(|a| {
            aggregate.strip_prefix("app/").is_some_and(|rest| rest == a)
                || aggregate
                    .strip_prefix("volume/")
                    .and_then(|rest| rest.strip_prefix(a))
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        subject_ok
            && app_ok
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.since_ms.is_none_or(|t| time_ms >= t)
    }
}

/// Where a workflow's definition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionSource {
    /// A built-in operation's definition, by name (`app-snapshot`).
    Builtin(String),
    /// A user's `kind: Workflow` YAML.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowCommand {
    /// Start a workflow; with `wait`, reply when it ends.
    Start {
        source: DefinitionSource,
        /// Parameter values as JSON.
        params: Vec<(String, serde_json::Value)>,
        wait: bool,
        /// A workflow id the caller chose (else one is made).
        id: Option<String>,
    },
    Resume {
        id: String,
    },
    Cancel {
        id: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Volume(VolumeCommand),
    App(AppCommand),
    Workflow(WorkflowCommand),
    /// Run one of an app's hooks (`spec.hooks.<hook>`), a workflow step.
    Hook {
        app: String,
        hook: String,
        snapshot: Option<String>,
    },
    /// Compact the block engine now: reclaim what deletes freed.
    Reclaim,
    /// Backup repositories, and the steps of push and pull.
    Repo(RepoCommand),
    /// Mark a node failed.
    NodeFail {
        name: String,
    },
    Query(Query),
}

// Request bodies. Each is public and derives `JsonSchema`: the API table in
// `api.rs` names them, and `docs/asyncapi.yaml` carries their schemas. Doc
// comments become the schemas' descriptions. Each is `Serialize` too: the
// CLI builds its requests from them, so a renamed field fails to compile
// there instead of at run time.

/// A body that names one volume or app.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// A volume (a DNS-1123 label, or `<app>/<pvc>`) for `volume.*`; an app
    /// (a DNS-1123 label) for `app.*`.
    pub name: String,
}

/// The body of `volume.create`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateBody {
    /// The new volume: a DNS-1123 label, or `<app>/<pvc>`.
    pub name: String,
    pub size: Size,
    /// `lz4` (the default), `zstd` or `none`.
    #[serde(default)]
    pub compress: Option<String>,
    /// Encrypt at rest with the key `cairn up --key-file` was given.
    #[serde(default)]
    pub encrypt: bool,
}

/// The body of `volume.clone`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCloneBody {
    /// The source volume.
    pub name: String,
    /// The snapshot of `name` to clone.
    pub snapshot: String,
    /// The new volume; it shares every block of `name@snapshot`.
    pub target: String,
}

/// The body of `volume.diff`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeDiffBody {
    /// An image: a volume `v` or a snapshot `v@s`.
    pub from: String,
    /// An image of the same lineage: `v` or `v@s`.
    pub to: String,
}

/// Checks `v` or `v@s`.
fn check_image(image: &str) -> Result<(), ApiError> {
    match image.split_once('@') {
        Some((v, s)) => {
            check_volume_name(v)?;
            check_label("snapshot", s)
        }
        None => check_volume_name(image),
    }
}

/// A size: a byte count, or a Kubernetes quantity as in a PVC (`10Gi` is
/// 10 × 2^30, `10G` is 10 × 10^9, `512Mi`, `1.5Gi`). Must be greater than
/// zero.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(#[schemars(range(min = 1))] u64),
    Text(
        #[schemars(regex(
            pattern = r"^\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE][+-]?[0-9]+)?\s*$"
        ))]
        String,
    ),
}

/// A body that names one snapshot of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The volume.
    pub name: String,
    /// The snapshot: a DNS-1123 label.
    pub snapshot: String,
}

/// A body with no fields: `{}`, or an empty message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

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

/// The body of `events.replay`: the state as of one point in the journal.
/// Give `at_seq` or `at_ms`, not both; with neither, the latest state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Fold the journal up to and including this seq.
    #[serde(default)]
    pub at_seq: Option<u64>,
    /// Fold the journal up to the last record at or before this time
    /// (epoch ms).
    #[serde(default)]
    pub at_ms: Option<u64>,
    /// Only this app and its volumes.
    #[serde(default)]
    pub app: Option<String>,
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

/// How a command that runs as a workflow is run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub run_async: bool,
    pub workflow: Option<String>,
}

macro_rules! run_options {
    ($($body:ident),*) => {$(
        impl $body {
            fn run(&self) -> RunOptions {
                RunOptions {
                    run_async: self.run_async,
                    workflow: self.workflow.clone(),
                }
            }
        }
    )*};
}
run_options!(
    AppPushBody,
    AppPullBody,
    AppSnapshotBody,
    AppSnapshotRefBody,
    AppDeleteBody,
    AppCloneBody,
    WorkflowRunBody
);

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

/// The body of `repo.add`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoAddBody {
    /// The repository's name here (a DNS-1123 label).
    pub name: String,
    /// `file:///abs/dir` or `s3://bucket[/prefix][?endpoint=…&region=…&path_style=true]`.
    /// A `secret_key` in the URL is kept out of the journal. Left out: a
    /// repository in the server's data dir (`<data-dir>/repos/<tenant>/<name>`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file (on the server) holding the repository key: 32 raw bytes or
    /// 64 hex digits. Without it and without `passphrase_file`, a new
    /// repository gets a new key file in the data dir.
    #[serde(default)]
    pub key_file: Option<String>,
    /// A file (on the server) whose first line is the passphrase (argon2id).
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// The body of `repo.remove`, `repo.check`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoNameBody {
    /// A registered repository.
    pub name: String,
}

/// The body of `repo.ls`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoLsBody {
    pub name: String,
    /// Only this app's snapshots.
    #[serde(default)]
    pub app: Option<String>,
}

/// The body of `repo.prune`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoPruneBody {
    pub name: String,
    /// Keep the newest N snapshots of every app (at least 1).
    pub keep_last: u32,
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

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("request body is not valid: {e}")))
}

/// Longest workflow id a caller may choose (it goes into snapshot names).
pub const MAX_WORKFLOW_ID: usize = 40;
/// Most params one workflow takes.
pub const MAX_PARAMS: usize = 64;
/// Most `--set` overrides one clone takes.
pub const MAX_OVERRIDES: usize = 64;

fn check_overrides(set: &[String]) -> Result<(), ApiError> {
    if set.len() > MAX_OVERRIDES {
        return Err(ApiError::invalid(format!(
            "at most {MAX_OVERRIDES} overrides"
        )));
    }
    if let Some(bad) = set.iter().find(|s| !s.contains('=')) {
        return Err(ApiError::invalid(format!(
            "override {bad:?} is not path=value"
        )));
    }
    Ok(())
}

fn start(
    source: DefinitionSource,
    params: Vec<(String, serde_json::Value)>,
    run: RunOptions,
) -> Result<Command, ApiError> {
    if let Some(id) = &run.workflow {
        check_label("workflow", id)?;
        if id.len() > MAX_WORKFLOW_ID {
            return Err(ApiError::invalid(format!(
                "a workflow id has at most {MAX_WORKFLOW_ID} characters"
            )));
        }
    }
    Ok(Command::Workflow(WorkflowCommand::Start {
        source,
        params,
        wait: !run.run_async,
        id: run.workflow,
    }))
}

/// A server-side file path from a request: absolute, bounded.
fn check_path(field: &str, path: String) -> Result<String, ApiError> {
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(ApiError::invalid(format!(
            "{field} must be an absolute path on the server (at most 1024 bytes), not {path:?}"
        )));
    }
    Ok(path)
}

fn builtin<const N: usize>(
    name: &str,
    params: [(&str, serde_json::Value); N],
    run: RunOptions,
) -> Result<Command, ApiError> {
    start(
        DefinitionSource::Builtin(name.to_owned()),
        params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        run,
    )
}

impl Command {
    /// The operator's commands: they touch the whole cluster (nodes) or
    /// read what is no one tenant's (cluster-wide events). Served on the
    /// admin subject space when the bus authenticates its users.
    pub fn operator_only(&self) -> bool {
        matches!(
            self,
            Command::NodeFail { .. }
                | Command::Query(Query::NodeList)
                | Command::Query(Query::EventsList(EventsFilter { cluster: true, .. }))
        )
    }

    /// Decodes and validates a request. Never panics on any input.
    pub fn parse(kind: &str, verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
        let cmd = match (kind, verb) {
            ("volume", "create") => {
                let b: VolumeCreateBody = body(bytes)?;
                check_volume_name(&b.name)?;
                let size_bytes = match b.size {
                    Size::Bytes(n) => n,
                    Size::Text(t) => parse_quantity(&t)?,
                };
                if size_bytes == 0 {
                    return Err(ApiError::invalid("size must be greater than zero"));
                }
                let compression = b.compress.unwrap_or_else(|| "lz4".to_owned());
                if !matches!(compression.as_str(), "lz4" | "zstd" | "none") {
                    return Err(ApiError::invalid(format!(
                        "compress must be lz4, zstd or none, not {compression:?}"
                    )));
                }
                Command::Volume(VolumeCommand::Create {
                    name: b.name,
                    size_bytes,
                    compression,
                    encrypted: b.encrypt,
                })
            }
            ("volume", "clone") => {
                let b: VolumeCloneBody = body(bytes)?;
                check_volume_name(&b.name)?;
                check_label("snapshot", &b.snapshot)?;
                check_volume_name(&b.target)?;
                Command::Volume(VolumeCommand::Clone {
                    name: b.name,
                    snapshot: b.snapshot,
                    target: b.target,
                })
            }
            ("volume", "diff") => {
                let b: VolumeDiffBody = body(bytes)?;
                check_image(&b.from)?;
                check_image(&b.to)?;
                Command::Query(Query::VolumeDiff {
                    from: b.from,
                    to: b.to,
                })
            }
            ("volume", "scrub") => {
                let b: NameBody = body(bytes)?;
                check_volume_name(&b.name)?;
                Command::Query(Query::VolumeScrub { name: b.name })
            }
            ("volume", "delete") => {
                let b: NameBody = body(bytes)?;
                check_volume_name(&b.name)?;
                Command::Volume(VolumeCommand::Delete { name: b.name })
            }
            ("volume", "snapshot") | ("volume", "snapshot-delete") | ("volume", "rollback") => {
                let b: SnapshotBody = body(bytes)?;
                check_volume_name(&b.name)?;
                check_label("snapshot", &b.snapshot)?;
                Command::Volume(if verb == "snapshot" {
                    VolumeCommand::Snapshot {
                        name: b.name,
                        snapshot: b.snapshot,
                    }
                } else if verb == "rollback" {
                    VolumeCommand::Rollback {
                        name: b.name,
                        snapshot: b.snapshot,
                    }
                } else {
                    VolumeCommand::DeleteSnapshot {
                        name: b.name,
                        snapshot: b.snapshot,
                    }
                })
            }
            ("volume", "list") => {
                body::<EmptyBody>(bytes)?;
                Command::Query(Query::VolumeList)
            }
            ("volume", "show") | ("volume", "snapshots") => {
                let b: NameBody = body(bytes)?;
                check_volume_name(&b.name)?;
                Command::Query(if verb == "show" {
                    Query::VolumeShow { name: b.name }
                } else {
                    Query::VolumeSnapshots { name: b.name }
                })
            }
            ("app", "create") => {
                let b: AppCreateBody = body(bytes)?;
                Command::App(AppCommand::Create(parse_manifest(
                    &b.manifest,
                    b.name.as_deref(),
                )?))
            }
            ("app", "get") => {
                let b: NameBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::Query(Query::AppGet { name: b.name })
            }
            ("app", "snapshot") => {
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
            ("app", "snapshot-delete") | ("app", "rollback") => {
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
            ("app", "delete") => {
                let b: AppDeleteBody = body(bytes)?;
                let run = b.run();
                check_label("app", &b.name)?;
                builtin("app-delete", [("app", b.name.into())], run)?
            }
            ("app", "clone") => {
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
            ("app", "snapshots") => {
                let b: NameBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::Query(Query::AppSnapshots { name: b.name })
            }
            ("app", "hook") => {
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
            ("app", "snapshot-take") => {
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
            ("app", "snapshot-drop") | ("app", "restore") => {
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
            ("app", "clone-create") => {
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
            ("app", "remove") => {
                let b: AppRemoveBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::App(AppCommand::Delete {
                    name: b.name,
                    missing_ok: b.missing_ok,
                })
            }
            ("repo", "add") => {
                let b: RepoAddBody = body(bytes)?;
                check_label("repo", &b.name)?;
                if let Some(url) = &b.url {
                    check_repo_url(url)?;
                }
                let key = match (b.key_file, b.passphrase_file) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::invalid(
                            "give key_file or passphrase_file, not both",
                        ));
                    }
                    (Some(f), None) => RepoKey::File(check_path("key_file", f)?),
                    (None, Some(f)) => RepoKey::PassphraseFile(check_path("passphrase_file", f)?),
                    (None, None) => RepoKey::Generate,
                };
                Command::Repo(RepoCommand::Add {
                    name: b.name,
                    url: b.url,
                    key,
                })
            }
            ("repo", "remove") | ("repo", "check") => {
                let b: RepoNameBody = body(bytes)?;
                check_label("repo", &b.name)?;
                Command::Repo(if verb == "remove" {
                    RepoCommand::Remove { name: b.name }
                } else {
                    RepoCommand::Check { name: b.name }
                })
            }
            ("repo", "list") => {
                body::<EmptyBody>(bytes)?;
                Command::Query(Query::RepoList)
            }
            ("repo", "ls") => {
                let b: RepoLsBody = body(bytes)?;
                check_label("repo", &b.name)?;
                if let Some(app) = &b.app {
                    check_label("app", app)?;
                }
                Command::Repo(RepoCommand::Ls {
                    name: b.name,
                    app: b.app,
                })
            }
            ("repo", "prune") => {
                let b: RepoPruneBody = body(bytes)?;
                check_label("repo", &b.name)?;
                if b.keep_last == 0 {
                    return Err(ApiError::invalid(
                        "keep_last must be at least 1 (prune never deletes every snapshot)",
                    ));
                }
                Command::Repo(RepoCommand::Prune {
                    name: b.name,
                    keep_last: b.keep_last,
                })
            }
            ("app", "push") => {
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
            ("app", "pull") => {
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
            ("app", "push-upload") => {
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
            ("app", "pull-import") => {
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
            ("app", "pull-data") => {
                let b: AppPullDataBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::Repo(RepoCommand::Download {
                    app: b.name,
                    workflow: b.workflow.unwrap_or_default(),
                })
            }
            ("app", "reclaim") => {
                body::<EmptyBody>(bytes)?;
                Command::Reclaim
            }
            ("workflow", "run") => {
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
            ("workflow", "list") => {
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
            ("workflow", "show") => {
                let b: WorkflowIdBody = body(bytes)?;
                check_label("workflow", &b.id)?;
                Command::Query(Query::WorkflowShow { id: b.id })
            }
            ("workflow", "resume") => {
                let b: WorkflowIdBody = body(bytes)?;
                check_label("workflow", &b.id)?;
                Command::Workflow(WorkflowCommand::Resume { id: b.id })
            }
            ("workflow", "cancel") => {
                let b: WorkflowCancelBody = body(bytes)?;
                check_label("workflow", &b.id)?;
                Command::Workflow(WorkflowCommand::Cancel {
                    id: b.id,
                    reason: b.reason.unwrap_or_else(|| "cancelled".into()),
                })
            }
            ("app", "list") => {
                body::<EmptyBody>(bytes)?;
                Command::Query(Query::AppList)
            }
            ("app", "scale") => {
                let b: AppScaleBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::App(AppCommand::Scale {
                    name: b.name,
                    workload: b.workload,
                    replicas: b.replicas,
                })
            }
            ("app", "config-set") => {
                let b: AppConfigSetBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::App(AppCommand::ConfigSet {
                    name: b.name,
                    configmap: b.configmap,
                    key: b.key,
                    value: b.value,
                })
            }
            ("app", "log") => {
                let b: AppLogBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::Query(Query::AppLog {
                    name: b.name,
                    limit: b.limit.unwrap_or(100).clamp(1, MAX_EVENTS_PAGE),
                })
            }
            ("node", "fail") => {
                let b: NameBody = body(bytes)?;
                check_label("node", &b.name)?;
                Command::NodeFail { name: b.name }
            }
            ("app", "placement") => {
                let b: NameBody = body(bytes)?;
                check_label("app", &b.name)?;
                Command::Query(Query::AppPlacement { name: b.name })
            }
            ("node", "list") => {
                body::<EmptyBody>(bytes)?;
                Command::Query(Query::NodeList)
            }
            ("events", "replay") => {
                let b: ReplayBody = body(bytes)?;
                if let Some(app) = &b.app {
                    check_label("app", app)?;
                }
                if b.at_seq.is_some() && b.at_ms.is_some() {
                    return Err(ApiError::invalid("give at_seq or at_ms, not both"));
                }
                Command::Query(Query::EventsReplay {
                    at_seq: b.at_seq,
                    at_ms: b.at_ms,
                    app: b.app,
                })
            }
            ("events", "list") => Command::Query(Query::EventsList(body(bytes)?)),
            ("events", "verify") => {
                body::<EmptyBody>(bytes)?;
                Command::Query(Query::EventsVerify)
            }
            ("system", "ping") => Command::Query(Query::Ping),
            _ => {
                return Err(ApiError::new(
                    crate::ErrorCode::UnknownCommand,
                    format!("there is no command {kind}.{verb}"),
                ));
            }
        };
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn volume_create_accepts_text_and_byte_sizes() {
        // Kubernetes quantities: `G` is 10^9, `Gi` 2^30 (issue 14).
        let c = Command::parse("volume", "create", br#"{"name":"v1","size":"1G"}"#).unwrap();
        assert!(matches!(
            c,
            Command::Volume(VolumeCommand::Create {
                size_bytes: 1_000_000_000,
                ..
            })
        ));
        let c = Command::parse("volume", "create", br#"{"name":"v1","size":"1Gi"}"#).unwrap();
        assert_eq!(
            c,
            Command::Volume(VolumeCommand::Create {
                name: "v1".into(),
                size_bytes: 1 << 30,
                compression: "lz4".into(),
                encrypted: false,
            })
        );
        let c = Command::parse(
            "volume",
            "create",
            br#"{"name":"shop/data-db-0","size":4096,"compress":"zstd","encrypt":true}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Volume(VolumeCommand::Create {
                name: "shop/data-db-0".into(),
                size_bytes: 4096,
                compression: "zstd".into(),
                encrypted: true,
            })
        );
    }

    #[test]
    fn bad_requests_get_codes() {
        let code = |k: &str, v: &str, b: &[u8]| Command::parse(k, v, b).unwrap_err().code;
        assert_eq!(
            code("volume", "create", b"{not json"),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code("volume", "create", br#"{"name":"BAD","size":"1G"}"#),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code("volume", "create", br#"{"name":"v","size":"0"}"#),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code("volume", "create", br#"{"name":"v","size":"1G","x":1}"#),
            ErrorCode::InvalidArgument
        );
        assert_eq!(code("volume", "explode", b"{}"), ErrorCode::UnknownCommand);
        assert_eq!(
            code(
                "volume",
                "create",
                br#"{"name":"v","size":"1G","compress":"gzip"}"#
            ),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code("volume", "diff", br#"{"from":"v@BAD","to":"v"}"#),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code("volume", "clone", br#"{"name":"v","snapshot":"s"}"#),
            ErrorCode::InvalidArgument
        );
        assert_eq!(code("nope", "list", b"{}"), ErrorCode::UnknownCommand);
    }

    #[test]
    fn empty_body_means_no_arguments() {
        assert_eq!(
            Command::parse("volume", "list", b"").unwrap(),
            Command::Query(Query::VolumeList)
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(kind in "[a-z]{0,8}", verb in "[a-z-]{0,10}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Command::parse(&kind, &verb, &bytes);
            let _ = Command::parse("volume", "create", &bytes);
        }
    }
}
