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

// One module per kind: its request bodies and its parse arm. The bodies are
// re-exported, so their paths stay `cairn_schema::command::…`.
mod app;
mod events;
mod node;
mod repo;
mod volume;
mod workflow;

pub use app::*;
pub use events::*;
pub use repo::*;
pub use volume::*;
pub use workflow::*;

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
// there instead of at run time. The shared bodies are here; each kind's
// own bodies sit with its parse arm in `command/<kind>.rs`.

/// A body that names one volume or app.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// A volume (a DNS-1123 label, or `<app>/<pvc>`) for `volume.*`; an app
    /// (a DNS-1123 label) for `app.*`.
    pub name: String,
}

/// A body with no fields: `{}`, or an empty message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

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

/// The refusal of a `kind.verb` no parse arm knows.
fn unknown(kind: &str, verb: &str) -> ApiError {
    ApiError::new(
        crate::ErrorCode::UnknownCommand,
        format!("there is no command {kind}.{verb}"),
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
        let cmd = match kind {
            "volume" => volume::parse(verb, bytes)?,
            "app" => app::parse(verb, bytes)?,
            "repo" => repo::parse(verb, bytes)?,
            "workflow" => workflow::parse(verb, bytes)?,
            "node" => node::parse(verb, bytes)?,
            "events" => events::parse(verb, bytes)?,
            "system" if verb == "ping" => Command::Query(Query::Ping),
            _ => return Err(unknown(kind, verb)),
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
