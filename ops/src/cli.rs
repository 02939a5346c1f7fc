//! Argument parsing (clap) and the client commands. Each client command
//! sends one request and prints the reply; errors print as
//! `error: <code>: <message>` on stderr with exit code 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cairn_actors::bus::{Bus, NatsOptions};
use cairn_actors::client::{self, Client};
use cairn_schema::subject;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::output::{self, Format};

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
    /// NATS URL of the cluster.
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
    Repo(crate::transfer::RepoCommand),
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

/// Runs the parsed command; returns the exit code.
pub async fn run(args: Cli) -> i32 {
    let result = match &args.command {
        Command::Up(up) => crate::up::run(&args, up).await,
        Command::Demo(demo) => crate::demo::run(demo).await,
        Command::Events(EventsArgs {
            action: Some(EventsAction::Verify {
                data_dir: Some(dir),
            }),
            ..
        }) => verify_offline(args.output, dir),
        Command::Tenant(TenantCommand::Add { name, data_dir }) => tenant_add(name, data_dir),
        _ => run_client(&args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<client::Error>() {
                Some(client::Error::Api(api)) => eprintln!("error: {}: {}", api.code, api.message),
                _ => eprintln!("error: {e:#}"),
            }
            1
        }
    }
}

/// The data dir the CLI looks in for the cluster's URL and, when this user
/// may read them, the embedded nats-server's credentials.
fn local_data_dir() -> PathBuf {
    std::env::var_os("CAIRN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./cairn-data"))
}

async fn connect(args: &Cli) -> anyhow::Result<Client> {
    cairn_schema::names::check_label("tenant", &args.tenant)
        .map_err(|e| anyhow::anyhow!("--tenant: {}", e.message))?;
    let data_dir = local_data_dir();
    let url = args
        .nats
        .url
        .clone()
        .or_else(|| {
            // `cairn up` records where it listens.
            let info = std::fs::read(data_dir.join("cluster.json")).ok()?;
            let info: Value = serde_json::from_slice(&info).ok()?;
            info["nats_url"].as_str().map(str::to_owned)
        })
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let mut options = args.nats.options(url.clone());
    // Replies come to the tenant's own inboxes, which its NATS user may read.
    options.inbox_prefix = Some(format!("_INBOX.{}", args.tenant));
    let no_credentials = options.user.is_none()
        && options.token.is_none()
        && options.nkey_seed.is_none()
        && options.creds_file.is_none()
        && cairn_actors::bus::split_url_credentials(&url)
            == cairn_actors::bus::UrlCredentials {
                url: url.clone(),
                ..Default::default()
            };
    if no_credentials
        && let Ok(users) = cairn_actors::nats_auth::AuthDir::new(&data_dir).load()
        && url.ends_with(&format!(":{}", users.port))
    {
        // The embedded nats-server of this host's `cairn up`, and we may
        // read its users: act as the tenant's user, else the operator.
        let (user, password) = users.for_tenant(&args.tenant);
        options.user = Some(user);
        options.password = Some(password);
    }
    // The error says what failed (refused, authorization, TLS) and which
    // option to fix.
    let bus = Bus::connect(&options).await?;
    let mut client = Client::new(bus, args.tenant.clone());
    if let Some(secs) = args.timeout {
        client.timeout = std::time::Duration::from_secs(secs.max(1));
    }
    let _ = TIMEOUT_GIVEN.set(args.timeout.is_some());
    Ok(client)
}

/// `cairn tenant add NAME`: a NATS user for a tenant on the embedded
/// nats-server, which is told to reload.
fn tenant_add(name: &str, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let auth = cairn_actors::nats_auth::AuthDir::new(data_dir);
    let users = auth.load().with_context(|| {
        format!(
            "reading the embedded nats-server's users in {} (is this the data dir of a `cairn up` that spawned its own nats-server, and are you its operator?)",
            data_dir.display()
        )
    })?;
    let password = auth
        .add_tenant(name)
        .with_context(|| format!("adding tenant {name}"))?;
    println!(
        "tenant {name}: NATS user {name} (publishes cairn.v1.{name}.<kind>.<verb>, reads its own inboxes and events)"
    );
    println!(
        "  cairn --tenant {name} --nats nats://{name}:{password}@127.0.0.1:{} volume list",
        users.port
    );
    Ok(0)
}

async fn run_client(args: &Cli) -> anyhow::Result<i32> {
    let client = connect(args).await?;
    let fmt = args.output;
    match &args.command {
        Command::Up(_) | Command::Demo(_) | Command::Tenant(_) => {
            unreachable!("handled by run")
        }
        Command::Volume(cmd) => volume(&client, fmt, cmd).await,
        Command::App(cmd) => app(&client, fmt, cmd).await,
        Command::Workflow(cmd) => workflow(&client, fmt, cmd).await,
        Command::Repo(cmd) => crate::transfer::repo(&client, fmt, cmd).await,
        Command::Node(NodeCommand::List) => {
            let reply = client.call_admin("node", "list", &json!({})).await?;
            output::print(fmt, &reply, output::node_rows);
            Ok(0)
        }
        Command::Node(NodeCommand::Fail { name }) => {
            let reply = client
                .call_admin("node", "fail", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |r| {
                output::cell(&r["report"])
                    .lines()
                    .map(|l| vec![l.to_owned()])
                    .collect()
            });
            // A replica set that lost two members is what placement must prevent.
            Ok(if reply["lost_more_than_one_member"] == true {
                2
            } else {
                0
            })
        }
        Command::Events(events) => self::events(&client, fmt, events).await,
        Command::Request {
            admin,
            command,
            body,
        } => {
            let (kind, verb) = command
                .split_once('.')
                .context("the command is <kind>.<verb>")?;
            let subject = if *admin {
                subject::admin_request(kind, verb)
            } else {
                subject::request(&client.tenant, kind, verb)
            };
            let reply = client
                .call_raw(&subject, Bytes::from(body.clone().into_bytes()), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
            Ok(0)
        }
    }
}

async fn volume(client: &Client, fmt: Format, cmd: &VolumeCommand) -> anyhow::Result<i32> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            compress,
            encrypt,
        } => {
            let mut body = json!({ "name": name, "size": size, "encrypt": encrypt });
            if let Some(c) = compress {
                body["compress"] = json!(c);
            }
            let reply = client.call("volume", "create", &body).await?;
            output::print(fmt, &reply, |r| {
                vec![vec![format!(
                    "volume {} created ({})",
                    output::cell(&r["name"]),
                    output::cell(&r["size"])
                )]]
            });
        }
        VolumeCommand::Clone { source, target } => {
            let Some((name, snapshot)) = source.split_once('@') else {
                anyhow::bail!("the source must be V@S (a snapshot), not {source:?}");
            };
            let body = json!({ "name": name, "snapshot": snapshot, "target": target });
            let reply = client.call("volume", "clone", &body).await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!("volume {target} cloned from {source}")]]
            });
        }
        VolumeCommand::Rollback { name, snapshot } => {
            let body = json!({ "name": name, "snapshot": snapshot });
            let reply = client.call("volume", "rollback", &body).await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!(
                    "volume {name} rolled back to {name}@{snapshot}"
                )]]
            });
        }
        VolumeCommand::Diff { from, to } => {
            let reply = client
                .call("volume", "diff", &json!({ "from": from, "to": to }))
                .await?;
            output::print(fmt, &reply, output::diff_rows);
        }
        VolumeCommand::Scrub { name } => {
            let reply = client
                .call("volume", "scrub", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, output::scrub_rows);
            let bad = reply["bad_blocks"].as_array().map_or(0, Vec::len);
            return Ok(if bad == 0 { 0 } else { 1 });
        }
        VolumeCommand::List => {
            let reply = client.call("volume", "list", &json!({})).await?;
            output::print(fmt, &reply, |r| {
                output::volume_rows(r["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        VolumeCommand::Show { name } => {
            let reply = client
                .call("volume", "show", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |r| {
                let mut rows = output::volume_rows(std::slice::from_ref(r));
                rows.push(vec![]);
                rows.extend(output::snapshot_rows(&r["snapshots"]));
                rows
            });
        }
        VolumeCommand::Delete { name } => {
            let reply = client
                .call("volume", "delete", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!("volume {name} deleted")]]
            });
        }
        VolumeCommand::Snapshot { name, snapshot } => {
            let reply = client
                .call(
                    "volume",
                    "snapshot",
                    &json!({ "name": name, "snapshot": snapshot }),
                )
                .await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!("snapshot {name}@{snapshot} created")]]
            });
        }
        VolumeCommand::Snapshots { name } => {
            let reply = client
                .call("volume", "snapshots", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, |r| output::snapshot_rows(&r["snapshots"]));
        }
        VolumeCommand::SnapshotDelete { name, snapshot } => {
            let reply = client
                .call(
                    "volume",
                    "snapshot-delete",
                    &json!({ "name": name, "snapshot": snapshot }),
                )
                .await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!("snapshot {name}@{snapshot} deleted")]]
            });
        }
    }
    Ok(0)
}

async fn app(client: &Client, fmt: Format, cmd: &AppCommand) -> anyhow::Result<i32> {
    match cmd {
        AppCommand::Create { file, name } => {
            let manifest = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("reading the manifest from stdin")?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let reply = client
                .call(
                    "app",
                    "create",
                    &json!({ "manifest": manifest, "name": name }),
                )
                .await?;
            output::print(fmt, &reply, |r| {
                let mut rows = vec![vec![format!(
                    "app {} created with {} objects",
                    output::cell(&r["name"]),
                    output::cell(&r["objects"])
                )]];
                for v in r["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![format!("  volume {}", output::cell(v))]);
                }
                rows
            });
        }
        AppCommand::List => {
            let reply = client.call("app", "list", &json!({})).await?;
            output::print(fmt, &reply, |r| {
                output::app_rows(r["apps"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        AppCommand::Get { name } => {
            let reply = client.call("app", "get", &json!({ "name": name })).await?;
            if fmt == Format::Yaml {
                // What is stored: the Kubernetes objects, one document each.
                for object in reply["objects"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    println!("---");
                    print!("{}", serde_yaml_ng::to_string(object)?);
                }
            } else {
                output::print(fmt, &reply, output::app_detail_rows);
            }
        }
        AppCommand::Delete { name, run } => {
            let reply =
                crate::follow::call(client, "app", "delete", json!({ "name": name }), run).await?;
            output::print(fmt, &reply, |r| {
                if run.run_async {
                    return output::workflow_started_rows(r);
                }
                vec![vec![format!(
                    "app {name} deleted with {} volumes (workflow {})",
                    r["volumes"].as_array().map_or(0, Vec::len),
                    output::cell(&r["workflow"])
                )]]
            });
        }
        AppCommand::Snapshot {
            name,
            snapshot,
            message,
            run,
        } => {
            let body = json!({ "name": name, "snapshot": snapshot, "message": message });
            let reply = crate::follow::call(client, "app", "snapshot", body, run).await?;
            output::print(fmt, &reply, |r| {
                if run.run_async {
                    return output::workflow_started_rows(r);
                }
                let mut rows = vec![vec![format!(
                    "app {name} snapshotted as {snapshot} (workflow {})",
                    output::cell(&r["workflow"])
                )]];
                for v in r["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![format!("  {}@{snapshot}", output::cell(v))]);
                }
                rows
            });
        }
        AppCommand::Snapshots { name } => {
            let reply = client
                .call("app", "snapshots", &json!({ "name": name }))
                .await?;
            output::print(fmt, &reply, output::app_snapshot_rows);
        }
        AppCommand::SnapshotDelete {
            name,
            snapshot,
            run,
        } => {
            let body = json!({ "name": name, "snapshot": snapshot });
            let reply = crate::follow::call(client, "app", "snapshot-delete", body, run).await?;
            output::print(fmt, &reply, |r| {
                if run.run_async {
                    return output::workflow_started_rows(r);
                }
                vec![vec![format!(
                    "snapshot {snapshot} of app {name} deleted (workflow {})",
                    output::cell(&r["workflow"])
                )]]
            });
        }
        AppCommand::Rollback {
            name,
            snapshot,
            run,
        } => {
            let body = json!({ "name": name, "snapshot": snapshot });
            let reply = crate::follow::call(client, "app", "rollback", body, run).await?;
            output::print(fmt, &reply, |r| {
                if run.run_async {
                    return output::workflow_started_rows(r);
                }
                let mut rows = vec![vec![format!(
                    "app {name} rolled back to {snapshot}: data, config and metadata (safety snapshot {}, workflow {})",
                    output::cell(&r["safety_snapshot"]),
                    output::cell(&r["workflow"])
                )]];
                for (what, key) in [
                    ("restored", "volumes"),
                    ("retired", "retired"),
                    ("deleted", "deleted"),
                ] {
                    for v in r[key].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                        rows.push(vec![format!("  {what} {}", output::cell(v))]);
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
            let body = json!({ "name": app, "snapshot": snapshot, "target": target, "set": set });
            let reply = crate::follow::call(client, "app", "clone", body, run).await?;
            output::print(fmt, &reply, |r| {
                if run.run_async {
                    return output::workflow_started_rows(r);
                }
                let mut rows = vec![vec![format!(
                    "app {target} cloned from {source} (workflow {})",
                    output::cell(&r["workflow"])
                )]];
                for v in r["cloned"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![format!("  {} (thin clone)", output::cell(v))]);
                }
                for v in r["created"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    rows.push(vec![format!("  {} (new, empty)", output::cell(v))]);
                }
                rows
            });
        }
        AppCommand::Push { source, repo, run } => {
            return crate::transfer::push(client, fmt, source, repo, run).await;
        }
        AppCommand::Pull {
            repo,
            source,
            target,
            run,
        } => {
            return crate::transfer::pull(client, fmt, repo, source, target.as_deref(), run).await;
        }
        AppCommand::Scale {
            name,
            replicas,
            workload,
        } => {
            let body = json!({ "name": name, "replicas": replicas, "workload": workload });
            let reply = client.call("app", "scale", &body).await?;
            output::print(fmt, &reply, |r| {
                vec![vec![format!(
                    "app {name}: {} scaled from {} to {} replicas",
                    output::cell(&r["workload"]),
                    output::cell(&r["from_replicas"]),
                    output::cell(&r["replicas"])
                )]]
            });
        }
        AppCommand::Config(AppConfigCommand::Set { name, assignment }) => {
            let Some((target, value)) = assignment.split_once('=') else {
                anyhow::bail!("expected <configmap>.<key>=<value>, not {assignment:?}");
            };
            // ConfigMap names may hold dots: split against the app's own.
            let app = client.call("app", "get", &json!({ "name": name })).await?;
            let configmaps: Vec<&str> = app["configmaps"]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
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
            let body = json!({ "name": name, "configmap": configmap, "key": key, "value": value });
            let reply = client.call("app", "config-set", &body).await?;
            output::print(fmt, &reply, |_| {
                vec![vec![format!(
                    "app {name}: {configmap}.{key} set to {value:?}"
                )]]
            });
        }
        AppCommand::Placement { name } => {
            let reply = client
                .call("app", "placement", &json!({ "name": name }))
                .await?;
            // `-o json` prints the list of {"replica","volume","slices"}.
            match fmt {
                Format::Table => output::print_table(&output::placement_rows(&reply)),
                _ => output::print(fmt, &reply["volumes"], |_| Vec::new()),
            }
        }
        AppCommand::Log { name, limit } => {
            let reply = client
                .call("app", "log", &json!({ "name": name, "limit": limit }))
                .await?;
            output::print(fmt, &reply, output::log_rows);
        }
    }
    Ok(0)
}

/// Workflows may run for as long as their hooks: wait up to an hour
/// (unless `--timeout` says otherwise).
pub(crate) fn long(client: &Client) -> Client {
    let mut c = client.clone();
    if !TIMEOUT_GIVEN.get().copied().unwrap_or(false) {
        c.timeout = std::time::Duration::from_secs(3600);
    }
    c
}

/// Whether `--timeout` (or `CAIRN_TIMEOUT`) was given.
static TIMEOUT_GIVEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

pub(crate) fn with_run(mut body: Value, run: &RunArgs) -> Value {
    body["async"] = Value::Bool(run.run_async);
    body
}

async fn workflow(client: &Client, fmt: Format, cmd: &WorkflowCommand) -> anyhow::Result<i32> {
    let reply = match cmd {
        WorkflowCommand::Run { file, params, run } => {
            let definition = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut map = serde_json::Map::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--param {p:?} is not k=v"))?;
                let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
                map.insert(k.to_owned(), value);
            }
            let body = json!({ "definition": definition, "params": map });
            let reply = crate::follow::call(client, "workflow", "run", body, run).await?;
            if run.run_async {
                output::print(fmt, &reply, output::workflow_started_rows);
                return Ok(0);
            }
            reply
        }
        WorkflowCommand::List { app, status, limit } => {
            let body = json!({ "app": app, "status": status, "limit": limit });
            let reply = client.call("workflow", "list", &body).await?;
            output::print(fmt, &reply, output::workflow_list_rows);
            return Ok(0);
        }
        WorkflowCommand::Show { id } => {
            client
                .call("workflow", "show", &json!({ "id": id }))
                .await?
        }
        WorkflowCommand::Resume { id } => {
            long(client)
                .call("workflow", "resume", &json!({ "id": id }))
                .await?
        }
        WorkflowCommand::Cancel { id, reason } => {
            long(client)
                .call("workflow", "cancel", &json!({ "id": id, "reason": reason }))
                .await?
        }
    };
    output::print(fmt, &reply, output::workflow_rows);
    // A run that did not complete is a failure for scripts (show, resume
    // and cancel did what they were asked whatever the status).
    let run = matches!(cmd, WorkflowCommand::Run { .. });
    Ok(match reply["status"].as_str() {
        Some("completed") => 0,
        _ if run => 1,
        _ => 0,
    })
}

fn events_filter(args: &EventsArgs) -> anyhow::Result<Value> {
    if args.app.is_some() && args.volume.is_some() {
        anyhow::bail!("give --app or --volume, not both");
    }
    let subject = args.volume.as_ref().map(|v| format!("volume/{v}"));
    let mut filter = json!({
        "subject": subject,
        "app": args.app,
        "kind": args.kind,
        "cluster": args.cluster,
    });
    if let Some(since) = &args.since {
        if let Ok(seq) = since.parse::<u64>() {
            filter["since_seq"] = json!(seq);
        } else {
            let ms = cairn_schema::time::parse_rfc3339_ms(since).with_context(|| {
                format!("--since {since:?} is neither a seq nor an RFC 3339 UTC time")
            })?;
            filter["since_ms"] = json!(ms);
        }
    }
    Ok(filter)
}

async fn events(client: &Client, fmt: Format, args: &EventsArgs) -> anyhow::Result<i32> {
    if let Some(EventsAction::Verify { .. }) = args.action {
        let reply = client.call("events", "verify", &json!({})).await?;
        return Ok(print_verify(
            fmt,
            &reply,
            "hash chain intact, replayed state equals live state",
        ));
    }
    match &args.action {
        Some(EventsAction::Replay { at, app }) => {
            let mut body = json!({ "app": app });
            if let Ok(seq) = at.parse::<u64>() {
                body["at_seq"] = json!(seq);
            } else {
                let ms = cairn_schema::time::parse_rfc3339_ms(at).with_context(|| {
                    format!("--at {at:?} is neither a seq nor an RFC 3339 UTC time")
                })?;
                body["at_ms"] = json!(ms);
            }
            let reply = client.call("events", "replay", &body).await?;
            output::print(fmt, &reply, output::replay_rows);
            return Ok(0);
        }
        Some(EventsAction::Export { file: path }) => {
            return export(client, args, path.as_deref()).await;
        }
        _ => {}
    }
    let mut filter = events_filter(args)?;
    // Subscribe first when following, so nothing falls between list and follow.
    let mut live = if args.follow {
        Some(
            client
                .bus
                .subscribe(&subject::events_wildcard(&client.tenant), None)
                .await?,
        )
    } else {
        None
    };
    let mut last_seq = 0u64;
    let mut rows_printed = false;
    loop {
        let reply = if args.cluster {
            client.call_admin("events", "list", &filter).await?
        } else {
            client.call("events", "list", &filter).await?
        };
        let events = reply["events"].as_array().cloned().unwrap_or_default();
        print_events(fmt, args.json, &events, !rows_printed);
        rows_printed |= !events.is_empty();
        if let Some(seq) = events.last().and_then(|e| e["seq"].as_u64()) {
            last_seq = seq;
        }
        let next = reply["next_seq"].as_u64().unwrap_or(0);
        if events.is_empty() || next <= filter["since_seq"].as_u64().unwrap_or(0) {
            break;
        }
        filter["since_seq"] = json!(next);
    }
    let Some(live) = live.as_mut() else {
        return Ok(0);
    };
    // The same filter the server applies to `events.list`.
    let wanted: cairn_schema::command::EventsFilter = serde_json::from_value(events_filter(args)?)?;
    while let Some(message) = live.next().await {
        let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        let seq = event["seq"].as_u64().unwrap_or(0);
        let matches = wanted.matches(
            event["subject"].as_str().unwrap_or(""),
            event["kind"].as_str().unwrap_or(""),
            event["time_ms"].as_u64().unwrap_or(0),
        );
        if seq > last_seq && matches {
            last_seq = seq;
            print_events(fmt, args.json, &[event], false);
        }
    }
    Ok(0)
}

/// Writes every matching event as one JSON object per line.
async fn export(client: &Client, args: &EventsArgs, path: Option<&Path>) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let mut out: Box<dyn std::io::Write> = match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut filter = events_filter(args)?;
    filter["limit"] = json!(cairn_schema::command::MAX_EVENTS_PAGE);
    let mut n = 0u64;
    loop {
        let reply = client.call("events", "list", &filter).await?;
        let events = reply["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
        n += events.len() as u64;
        let next = reply["next_seq"].as_u64().unwrap_or(0);
        if events.is_empty() || next <= filter["since_seq"].as_u64().unwrap_or(0) {
            break;
        }
        filter["since_seq"] = json!(next);
    }
    out.flush()?;
    if let Some(p) = path {
        eprintln!("exported {n} events to {}", p.display());
    }
    Ok(0)
}

/// Prints a verify report; returns the exit code (1 when it failed).
fn print_verify(fmt: Format, reply: &Value, ok_text: &str) -> i32 {
    let ok = reply["ok"].as_bool().unwrap_or(false);
    output::print(fmt, reply, |r| {
        if ok {
            vec![vec![format!(
                "ok: {} records, {ok_text}",
                output::cell(&r["records"])
            )]]
        } else {
            vec![vec![format!(
                "FAILED at seq {}: {}",
                output::cell(&r["first_bad_seq"]),
                output::cell(&r["reason"])
            )]]
        }
    });
    if ok { 0 } else { 1 }
}

/// `cairn events verify --data-dir D`: the journal file alone, read-only.
fn verify_offline(fmt: Format, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let path = data_dir.join("journal.redb");
    anyhow::ensure!(path.is_file(), "no journal at {}", path.display());
    let reply = match cairn_actors::journal::verify_file(&path)? {
        Ok(records) => json!({ "ok": true, "records": records, "offline": true }),
        Err(brk) => json!({
            "ok": false,
            "records": Value::Null,
            "first_bad_seq": brk.seq,
            "reason": brk.reason,
            "offline": true,
        }),
    };
    Ok(print_verify(
        fmt,
        &reply,
        "hash chain intact, every event decodes (offline: the live state is not compared)",
    ))
}

fn print_events(fmt: Format, json_lines: bool, events: &[Value], header: bool) {
    if json_lines || fmt == Format::Json {
        for e in events {
            println!(
                "{}",
                serde_json::to_string(e).expect("json values serialize")
            );
        }
    } else if fmt == Format::Yaml {
        if !events.is_empty() {
            print!(
                "{}",
                serde_yaml_ng::to_string(events).expect("json values are yaml")
            );
        }
    } else {
        let mut rows = output::event_rows(events);
        if !header {
            rows.remove(0);
        }
        output::print_table(&rows);
    }
}

/// How long `up` and the demo wait for in-flight work at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
