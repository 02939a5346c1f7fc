//! The client commands: connecting, dispatching each parsed command to its
//! group's module, and the helpers they share. Each client command sends
//! one request (a workflow command: one workflow, followed by id, see
//! [`follow`]) and prints the reply; errors print as
//! `error: <code>: <message>` on stderr with exit code 1.
//!
//! - [`args`]: the command line (clap).
//! - [`volume`], [`app`], [`workflow`], [`events`], [`node`], [`repo`],
//!   [`tenant`]: one module per command group.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cairn_actors::bus::Bus;
use cairn_actors::client::{self, Client};
use cairn_schema::subject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output::Format;

pub mod app;
mod args;
pub mod events;
pub mod follow;
pub mod node;
pub mod repo;
pub mod tenant;
pub mod volume;
pub mod workflow;

pub use args::*;

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
        }) => events::verify_offline(args.output, dir),
        Command::Tenant(TenantCommand::Add { name, data_dir }) => tenant::add(name, data_dir),
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
            let info: crate::up::ClusterInfo = serde_json::from_slice(&info).ok()?;
            info.nats_url
        })
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let mut options = args.nats.options(url.clone());
    // Replies come to the tenant's own inboxes, which its NATS user may read.
    options.inbox_prefix = Some(format!(
        "{}.{}",
        args.inbox_prefix.trim_end_matches('.'),
        args.tenant
    ));
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

async fn run_client(args: &Cli) -> anyhow::Result<i32> {
    let client = connect(args).await?;
    let fmt = args.output;
    match &args.command {
        Command::Up(_) | Command::Demo(_) | Command::Tenant(_) => {
            unreachable!("handled by run")
        }
        Command::Volume(cmd) => volume::run(&client, fmt, cmd).await,
        Command::App(cmd) => app::run(&client, fmt, cmd).await,
        Command::Workflow(cmd) => workflow::run(&client, fmt, cmd).await,
        Command::Repo(cmd) => repo::run(&client, fmt, cmd).await,
        Command::Node(cmd) => node::run(&client, fmt, cmd).await,
        Command::Events(args) => events::run(&client, fmt, args).await,
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

/// A reply read as its shared type (`cairn_schema::reply`), with the JSON
/// it came as: `-o json`/`-o yaml` print that JSON whole (fields this CLI
/// does not know included), tables read the typed body.
pub struct Reply<R> {
    pub body: R,
    pub raw: Value,
}

impl<R> Reply<R> {
    /// Prints the reply as JSON or YAML, or `table(&body)` as a table.
    pub fn print(&self, fmt: Format, table: impl FnOnce(&R) -> Vec<Vec<String>>) {
        crate::output::print(fmt, &self.raw, |_| table(&self.body));
    }
}

fn typed<R: DeserializeOwned>(kind: &str, verb: &str, raw: Value) -> anyhow::Result<Reply<R>> {
    let body = serde_json::from_value(raw.clone())
        .with_context(|| format!("the reply to {kind}.{verb} has an unexpected shape"))?;
    Ok(Reply { body, raw })
}

/// Sends `kind.verb` with a typed request body (`cairn_schema::command`)
/// and reads the reply as its typed form.
pub async fn call<R: DeserializeOwned>(
    client: &Client,
    kind: &str,
    verb: &str,
    body: &impl Serialize,
) -> anyhow::Result<Reply<R>> {
    let body = serde_json::to_value(body).expect("request bodies serialize");
    typed(kind, verb, client.call(kind, verb, &body).await?)
}

/// [`call`] on the operator's subject space.
pub async fn call_admin<R: DeserializeOwned>(
    client: &Client,
    kind: &str,
    verb: &str,
    body: &impl Serialize,
) -> anyhow::Result<Reply<R>> {
    let body = serde_json::to_value(body).expect("request bodies serialize");
    typed(kind, verb, client.call_admin(kind, verb, &body).await?)
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

/// How long `up` and the demo wait for in-flight work at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use cairn_schema::Command;
    use cairn_schema::command::{
        AppCloneBody, AppLogBody, AppSnapshotBody, EventsFilter, Size, VolumeCreateBody,
        WorkflowListBody,
    };

    use super::follow::WorkflowBody;
    use super::*;

    /// What the CLI serializes, the server parses: absent options go out
    /// as `null`, which the bodies' `#[serde(default)]` accept.
    fn accepted(kind: &str, verb: &str, body: &impl Serialize) {
        let bytes = serde_json::to_vec(body).unwrap();
        if let Err(e) = Command::parse(kind, verb, &bytes) {
            panic!(
                "{kind}.{verb} refused {}: {e:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn request_bodies_the_cli_builds_are_what_the_server_parses() {
        accepted(
            "volume",
            "create",
            &VolumeCreateBody {
                name: "v1".into(),
                size: Size::Text("1G".into()),
                compress: None,
                encrypt: false,
            },
        );
        let mut snapshot = AppSnapshotBody {
            name: "shop".into(),
            snapshot: "s1".into(),
            message: None,
            run_async: false,
            workflow: None,
        };
        let id = snapshot.prepare(true);
        assert!(id.starts_with("wf-"), "{id}");
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["async"], true);
        assert_eq!(json["workflow"], id.as_str());
        accepted("app", "snapshot", &snapshot);
        // A chosen id stays.
        assert_eq!(snapshot.prepare(false), id);
        accepted(
            "app",
            "clone",
            &AppCloneBody {
                name: "shop".into(),
                snapshot: "s1".into(),
                target: "dev".into(),
                set: vec!["replicas=1".into()],
                run_async: false,
                workflow: None,
            },
        );
        accepted(
            "app",
            "log",
            &AppLogBody {
                name: "shop".into(),
                limit: None,
            },
        );
        accepted(
            "workflow",
            "list",
            &WorkflowListBody {
                app: None,
                status: None,
                limit: Some(5),
            },
        );
        accepted("events", "list", &EventsFilter::default());
    }
}
