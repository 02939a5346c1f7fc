//! The command line: every argument, flag and subcommand (clap). Parsing
//! only; [`super`] runs what was parsed.

use std::path::PathBuf;

use cairn_actors::bus::NatsOptions;
use cairn_schema::subject;
use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "A git-like workflow for stateful applications: snapshot, roll back, clone, push and pull."
)]
pub struct Cli {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The tenant whose apps and volumes this command sees.
    #[arg(long, global = true, env = "CAIRN_TENANT", default_value = subject::DEFAULT_TENANT)]
    pub tenant: String,
    /// Replies come to `<PREFIX>.<tenant>.…`: the server's `--reply-prefix`
    /// (without its final dot), and what the tenant's NATS user may read.
    #[arg(
        long,
        global = true,
        env = "CAIRN_INBOX_PREFIX",
        default_value = "_INBOX"
    )]
    pub inbox_prefix: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Seconds to wait for a reply: 60 for plain commands; commands that
    /// run a workflow wait up to an hour unless this says otherwise.
    #[arg(long, global = true, env = "CAIRN_TIMEOUT")]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How to reach NATS. Auth and TLS options are passed through to the client.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS URL of the cluster; a comma-separated list names several
    /// servers of one NATS cluster (the client fails over between them).
    #[arg(long = "nats", global = true, env = "CAIRN_NATS_URL")]
    pub url: Option<String>,
    #[arg(long, global = true, env = "CAIRN_NATS_USER", hide = true)]
    pub nats_user: Option<String>,
    #[arg(long, global = true, env = "CAIRN_NATS_PASSWORD", hide = true)]
    pub nats_password: Option<String>,
    #[arg(long, global = true, env = "CAIRN_NATS_TOKEN", hide = true)]
    pub nats_token: Option<String>,
    #[arg(long, global = true, env = "CAIRN_NATS_NKEY_SEED", hide = true)]
    pub nats_nkey_seed: Option<String>,
    #[arg(long, global = true, env = "CAIRN_NATS_CREDS", hide = true)]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, global = true, env = "CAIRN_NATS_TLS_CA", hide = true)]
    pub nats_tls_ca: Option<PathBuf>,
    #[arg(long, global = true, env = "CAIRN_NATS_TLS_CERT", hide = true)]
    pub nats_tls_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "CAIRN_NATS_TLS_KEY", hide = true)]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    pub fn options(&self, url: String) -> NatsOptions {
        NatsOptions {
            url,
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            nkey_seed: self.nats_nkey_seed.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca_file: self.nats_tls_ca.clone(),
            tls_cert_file: self.nats_tls_cert.clone(),
            tls_key_file: self.nats_tls_key.clone(),
            name: Some("cairn-cli".into()),
            inbox_prefix: None,
        }
    }
}

// Parsed once per process: `up`'s many flags (security settings included)
// make its variant large, which costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process: bus, journal, actors, block engine, NBD (and FUSE with --fuse).
    Up(Box<crate::up::UpArgs>),
    /// A guided tour on an all-in-one cluster with embedded defaults.
    Demo(crate::demo::DemoArgs),
    /// Volumes: create, list, snapshot…
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Apps: whole applications from Kubernetes manifests.
    #[command(subcommand)]
    App(AppCommand),
    /// Nodes and their disks.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Workflows (sagas): the built-in operations and your own.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Backup repositories (file:// or s3://) that apps are pushed to and
    /// pulled from.
    #[command(subcommand)]
    Repo(super::repo::RepoCommand),
    /// The event journal: list, follow, verify, replay, export.
    Events(EventsArgs),
    /// Tenants' NATS users on the nats-server `cairn up` spawned (run on the
    /// cluster's host, as the operator).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Send a raw JSON request to `cairn.v1.<tenant>.<KIND>.<VERB>`.
    Request {
        /// Send it on the operator's subject space `cairn.v1._admin.…`.
        #[arg(long)]
        admin: bool,
        /// `<kind>.<verb>`, e.g. `volume.list`.
        command: String,
        /// JSON body.
        #[arg(default_value = "{}")]
        body: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Give a tenant its own NATS user (or print the one it has): it may
    /// send requests for that tenant only, and read only its own events.
    Add {
        name: String,
        /// The data dir of the `cairn up` whose nats-server to change.
        #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin volume.
    Create {
        name: String,
        /// Size as a Kubernetes quantity: 10Gi (10 × 2^30), 10G (10 × 10^9), 512Mi, or a byte count.
        #[arg(long)]
        size: String,
        /// Block compression: lz4 (default, kept only where it saves space), zstd or none.
        #[arg(long, value_parser = ["lz4", "zstd", "none"])]
        compress: Option<String>,
        /// Encrypt at rest (AEAD) with the key file `cairn up --key-file` loaded.
        #[arg(long)]
        encrypt: bool,
    },
    /// Create NEWV from V@S without copying data (export `NEWV`).
    Clone {
        /// The snapshot to clone: V@S.
        source: String,
        target: String,
    },
    /// Make V read as V@S again (O(1); later snapshots are kept).
    Rollback { name: String, snapshot: String },
    /// Changed byte ranges between two images (V@A V@B, or V@A V for the live volume).
    Diff { from: String, to: String },
    /// Read and verify every block of V and its snapshots; exits 1 when one is bad.
    Scrub { name: String },
    /// List volumes.
    List,
    /// Show one volume with its snapshots.
    Show { name: String },
    /// Delete a volume and its snapshots.
    Delete { name: String },
    /// Freeze a volume as a read-only snapshot (NBD export `V@S`).
    Snapshot { name: String, snapshot: String },
    /// List a volume's snapshots.
    Snapshots { name: String },
    /// Delete one snapshot.
    SnapshotDelete { name: String, snapshot: String },
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app from multi-document Kubernetes YAML (StatefulSet,
    /// Deployment, Service, ConfigMap, Secret, PVC, and an optional
    /// `kind: App`); its volumes are `<app>/<pvc>`.
    Create {
        /// The manifest file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The app's name (default: the `kind: App` document's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List apps.
    List,
    /// Show an app; `-o yaml` prints the stored Kubernetes objects.
    Get { name: String },
    /// Delete an app, its volumes and snapshots (a workflow; reclaims space).
    Delete {
        name: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Snapshot the whole app at one instant: volumes, config, metadata.
    Snapshot {
        name: String,
        snapshot: String,
        /// A note kept with the snapshot.
        #[arg(short = 'm', long)]
        message: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// List an app's snapshots.
    Snapshots { name: String },
    /// Delete an app snapshot (refused while clones depend on it).
    SnapshotDelete {
        name: String,
        snapshot: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Roll the app back to a snapshot: data, config, metadata and replicas
    /// (a safety snapshot is taken first).
    Rollback {
        name: String,
        snapshot: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Thin-clone APP@SNAPSHOT into a new app (no data copied).
    Clone {
        /// `<app>@<snapshot>`.
        source: String,
        target: String,
        /// Overrides: replicas=N, image=REF, <configmap>.<key>=V,
        /// <Kind>/<name>.<path>=V.
        #[arg(long = "set")]
        set: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Push APP@SNAPSHOT to a repository: incremental, deduplicated,
    /// compressed, encrypted (a workflow; progress on stderr).
    Push {
        /// `<app>@<snapshot>`.
        source: String,
        /// A registered repository (`cairn repo add`).
        repo: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Pull APP@SNAPSHOT from a repository: creates the app (data, config,
    /// metadata), or repairs it when it exists (a rollback to the pulled
    /// state, after a safety snapshot).
    Pull {
        repo: String,
        /// `<app>@<snapshot>` as pushed.
        source: String,
        /// Pull as this app instead.
        #[arg(long = "as")]
        target: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Set a StatefulSet's or Deployment's replicas (volumes follow).
    Scale {
        name: String,
        #[arg(long)]
        replicas: u32,
        /// Which workload, when the app has several.
        #[arg(long)]
        workload: Option<String>,
    },
    /// Change the app's configuration.
    #[command(subcommand)]
    Config(AppConfigCommand),
    /// Where each replica's volumes' slices are: disk, node, rack, datacenter.
    Placement { name: String },
    /// The app's history, newest first.
    Log {
        name: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// How a command that runs as a workflow runs.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Print the workflow id and return at once (follow it with
    /// `cairn workflow show ID`).
    #[arg(long = "async")]
    pub run_async: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Run a `kind: Workflow` file; exits non-zero if it fails (after
    /// compensating what it had done).
    Run {
        file: PathBuf,
        /// A parameter, `k=v` (v is JSON when it parses as JSON).
        #[arg(long = "param")]
        params: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// List workflows, newest first, and the built-in definitions.
    List {
        #[arg(long)]
        app: Option<String>,
        /// running, completed, compensated or stuck.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a workflow step by step (or a built-in definition, by name).
    Show { id: String },
    /// Continue a workflow (a stuck one tries its compensations again).
    Resume { id: String },
    /// Cancel a running workflow: what it did is compensated.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppConfigCommand {
    /// Set one ConfigMap key: `cairn app config set A <configmap>.<key>=<value>`.
    Set { name: String, assignment: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their disks' capacity and use.
    List,
    /// Mark a node failed: nothing new goes there; reports which apps lost
    /// what, and whether a replica set lost more than one member.
    Fail { name: String },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub action: Option<EventsAction>,
    /// Keep following new events.
    #[arg(long)]
    pub follow: bool,
    /// Only events of this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Only events of this volume.
    #[arg(long)]
    pub volume: Option<String>,
    /// Only events of this kind, e.g. VolumeCreated.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events at or after this seq, or this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Cluster-wide events (nodes) instead of the tenant's own.
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Check the hash chain and that replaying the journal gives the live state.
    Verify {
        /// Check the journal file in this data dir offline instead (read-only,
        /// no NATS, no running cairn needed; the live state is not compared).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the state as of a seq or an RFC 3339 time (time travel).
    Replay {
        /// A seq, or a time like 2026-11-22T10:00:00Z.
        #[arg(long)]
        at: String,
        /// Only this app and its volumes.
        #[arg(long)]
        app: Option<String>,
    },
    /// Write every event (of this tenant) as JSON lines.
    Export {
        /// The file to write (default: stdout).
        file: Option<PathBuf>,
    },
}
