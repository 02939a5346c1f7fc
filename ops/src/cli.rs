//! Argument parsing (clap) and the client commands. Each client command
//! sends one request and prints the reply; errors print as
//! `error: <code>: <message>` on stderr with exit code 1.

use std::path::PathBuf;
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
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process: bus, journal, actors, block engine, NBD (and FUSE with --fuse).
    Up(crate::up::UpArgs),
    /// A guided tour on an all-in-one cluster with embedded defaults.
    Demo(crate::demo::DemoArgs),
    /// Volumes: create, list, snapshot…
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// The event journal: list, follow, verify.
    Events(EventsArgs),
    /// Send a raw JSON request to `cairn.v1.<tenant>.<KIND>.<VERB>`.
    Request {
        /// `<kind>.<verb>`, e.g. `volume.list`.
        command: String,
        /// JSON body.
        #[arg(default_value = "{}")]
        body: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin volume.
    Create {
        name: String,
        /// Size, e.g. 10G, 512Mi or a byte count.
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

async fn connect(args: &Cli) -> anyhow::Result<Client> {
    let url = args
        .nats
        .url
        .clone()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    // The error says what failed (refused, authorization, TLS) and which
    // option to fix.
    let bus = Bus::connect(&args.nats.options(url)).await?;
    Ok(Client::new(bus, args.tenant.clone()))
}

async fn run_client(args: &Cli) -> anyhow::Result<i32> {
    let client = connect(args).await?;
    let fmt = args.output;
    match &args.command {
        Command::Up(_) | Command::Demo(_) => unreachable!("handled by run"),
        Command::Volume(cmd) => volume(&client, fmt, cmd).await,
        Command::Events(events) => self::events(&client, fmt, events).await,
        Command::Request { command, body } => {
            let (kind, verb) = command
                .split_once('.')
                .context("the command is <kind>.<verb>")?;
            let subject = subject::request(&client.tenant, kind, verb);
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

fn events_filter(args: &EventsArgs) -> anyhow::Result<Value> {
    let subject = match (&args.app, &args.volume) {
        (Some(_), Some(_)) => anyhow::bail!("give --app or --volume, not both"),
        (Some(app), None) => Some(format!("app/{app}")),
        (None, Some(volume)) => Some(format!("volume/{volume}")),
        (None, None) => None,
    };
    let mut filter = json!({ "subject": subject, "kind": args.kind });
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
        let reply = client.call("events", "list", &filter).await?;
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
                serde_yaml::to_string(events).expect("json values are yaml")
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
