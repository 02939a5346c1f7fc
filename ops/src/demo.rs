//! `cairn demo`: a guided tour on an all-in-one cluster with embedded
//! defaults. It starts a cluster in this process (with a private nats-server
//! when installed, else the in-process bus), drives it through the same API
//! the CLI uses and moves real bytes over NBD, walking the git-like story on
//! one app: create it from Kubernetes YAML, commit (an app snapshot with a
//! message), a bad upgrade (data, a ConfigMap value, the replica count),
//! reset (rollback: all three return), branch (a thin clone with `--set`,
//! zero bytes copied), the journal, a restart from it, then push, destroy
//! and pull. Every step is checked; the demo fails at the first check that
//! does not hold. Exit code 0 means every check held.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use cairn_actors::client::Client;
use cairn_actors::cluster::{BusChoice, Cluster};
use cairn_blocks::nbd::{ListenAddr, NbdClient};
use cairn_schema::ErrorCode;
use cairn_schema::command::{
    AppCloneBody, AppConfigSetBody, AppCreateBody, AppDeleteBody, AppLogBody, AppPullBody,
    AppPushBody, AppScaleBody, AppSnapshotBody, AppSnapshotRefBody, EmptyBody, NameBody,
    RepoAddBody,
};
use cairn_schema::reply::{
    AppCloneReply, AppConfigSetReply, AppCreateReply, AppDeleteReply, AppLogReply,
    AppRollbackReply, AppScaleReply, AppSnapshotReply, AppSnapshotsReply, AppView, PullReply,
    PushReply, RepoAddReply, VerifyReply, VolumeView,
};
use clap::Args;
use indicatif::HumanBytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::output;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data dir for the demo cluster (default: a fresh temporary dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const APP: &str = "shop";
/// The commit the story returns to.
const GOOD: &str = "v1";
const MESSAGE: &str = "known good: before the upgrade";
/// The dev branch: a thin clone of the commit.
const BRANCH: &str = "shop-dev";
/// The demo app: an ordinary Kubernetes manifest plus a `kind: App` document.
const SHOP_YAML: &str = r#"apiVersion: cairn.dev/v1
kind: App
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-config}
data: {max_connections: "100"}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, ports: [{port: 5432}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  template: {spec: {containers: [{name: postgres, image: "postgres:16"}]}}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {resources: {requests: {storage: 1Gi}}}
    - metadata: {name: wal}
      spec: {resources: {requests: {storage: 256Mi}}}
"#;
const MIB: usize = 1 << 20;

fn step(n: u32, title: &str, cli: &str) {
    println!();
    println!("==> step {n}: {title}");
    if !cli.is_empty() {
        println!("    $ {cli}");
    }
}

async fn start(dir: &std::path::Path) -> anyhow::Result<(Cluster, ListenAddr)> {
    let nbd = ListenAddr::Unix(dir.join("nbd.sock"));
    let cluster = Cluster::start(crate::up::cluster_config(
        dir.to_owned(),
        BusChoice::Auto,
        Some(nbd),
    ))
    .await
    .context("starting the demo cluster")?;
    let addr = cluster
        .nbd_addr
        .clone()
        .context("the NBD server is not running")?;
    Ok((cluster, addr))
}

fn nbd_pattern(addr: &ListenAddr, export: &str, op: &str, byte: u8) -> anyhow::Result<()> {
    let mut nbd =
        NbdClient::connect(addr, export).with_context(|| format!("NBD connect to {export}"))?;
    match op {
        "write" => {
            nbd.write(0, &vec![byte; MIB], false)?;
            nbd.flush()?;
        }
        _ => {
            let mut buf = vec![0u8; MIB];
            nbd.read(0, &mut buf)?;
            let found = buf.iter().find(|&&b| b != byte);
            ensure!(
                found.is_none(),
                "{export}: expected every byte to be {byte:#04x}, found {:#04x}",
                found.unwrap()
            );
        }
    }
    nbd.disconnect()?;
    Ok(())
}

/// Sends one request, built from its shared body type, and reads its
/// reply as the shared reply type `R`.
async fn call<R: DeserializeOwned>(
    client: &Client,
    kind: &str,
    verb: &str,
    body: &impl Serialize,
) -> anyhow::Result<R> {
    let body = serde_json::to_value(body).expect("request bodies serialize");
    let value = client
        .call(kind, verb, &body)
        .await
        .with_context(|| format!("{kind}.{verb}"))?;
    serde_json::from_value(value).with_context(|| format!("the reply to {kind}.{verb}"))
}

fn name(name: &str) -> NameBody {
    NameBody {
        name: name.to_owned(),
    }
}

fn replicas(app: &AppView) -> u32 {
    app.workloads.iter().map(|w| w.replicas).sum()
}

fn max_connections(app: &AppView) -> String {
    output::cell(&app.configmaps["db-config"]["max_connections"])
}

/// Checks the three things the upgrade changes: data, config, replicas.
async fn check_app(
    client: &Client,
    nbd: &ListenAddr,
    app: &str,
    data: u8,
    config: &str,
    want_replicas: u32,
) -> anyhow::Result<AppView> {
    let view = call::<AppView>(client, "app", "get", &name(app)).await?;
    nbd_pattern(nbd, &format!("{app}/data-db-0"), "read", data)?;
    ensure!(
        max_connections(&view) == config,
        "{app}: db-config.max_connections should be {config}, is {}",
        max_connections(&view)
    );
    ensure!(
        replicas(&view) == want_replicas,
        "{app}: expected {want_replicas} replicas, found {}",
        replicas(&view)
    );
    println!(
        "    check: {app}/data-db-0 reads {data:#04x}, max_connections={config}, replicas={want_replicas}"
    );
    Ok(view)
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    let (dir, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let base = std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id()));
            (base.clone(), Some(TempDir(base)))
        }
    };
    println!("Cairn demo: commit, reset, branch, push and pull a stateful app.");
    println!("Data dir: {}", dir.display());

    step(
        1,
        "start an all-in-one cluster (bus, journal, actors, block engine, NBD)",
        "cairn up --data-dir DIR",
    );
    let (cluster, nbd) = start(&dir).await?;
    let client = cluster.client();
    println!("    bus: {}", client.bus.describe());
    println!("    nbd: {nbd}");

    step(
        2,
        "an app from Kubernetes YAML: a StatefulSet with data and wal claims",
        "cairn app create -f shop.yaml",
    );
    let created = call::<AppCreateReply>(
        &client,
        "app",
        "create",
        &AppCreateBody {
            manifest: SHOP_YAML.to_owned(),
            name: None,
        },
    )
    .await?;
    println!("    volumes: {}", created.volumes.join(", "));
    let data = format!("{APP}/data-db-0");
    nbd_pattern(&nbd, &data, "write", 0x42)?;
    println!(
        "    wrote 1 MiB of 0x42 to {data} over NBD (qemu-io, fio, a filesystem would do the same)"
    );
    check_app(&client, &nbd, APP, 0x42, "100", 1).await?;

    step(
        3,
        "commit: snapshot the whole app at one instant (volumes, config, metadata)",
        &format!("cairn app snapshot {APP} {GOOD} -m \"{MESSAGE}\"; cairn app snapshots {APP}"),
    );
    let snapshot = call::<AppSnapshotReply>(
        &client,
        "app",
        "snapshot",
        &AppSnapshotBody {
            name: APP.into(),
            snapshot: GOOD.into(),
            message: Some(MESSAGE.into()),
            run_async: false,
            workflow: None,
        },
    )
    .await?;
    ensure!(
        snapshot.message == MESSAGE,
        "the snapshot's message is {:?}",
        snapshot.message
    );
    let snapshots = call::<AppSnapshotsReply>(&client, "app", "snapshots", &name(APP)).await?;
    output::print_table(&output::app_snapshot_rows(&snapshots));
    ensure!(
        snapshots
            .snapshots
            .iter()
            .any(|s| s.name == GOOD && s.message == MESSAGE),
        "app snapshots does not list {GOOD} with its message"
    );

    step(
        4,
        "a bad upgrade: it rewrites the data, changes a ConfigMap value and the replica count",
        &format!(
            "cairn app config set {APP} db-config.max_connections=5; cairn app scale {APP} --replicas 3"
        ),
    );
    nbd_pattern(&nbd, &data, "write", 0xa5)?;
    println!("    the upgrade wrote 0xa5 over {data}");
    call::<AppConfigSetReply>(
        &client,
        "app",
        "config-set",
        &AppConfigSetBody {
            name: APP.into(),
            configmap: "db-config".into(),
            key: "max_connections".into(),
            value: "5".into(),
        },
    )
    .await?;
    let scaled = call::<AppScaleReply>(
        &client,
        "app",
        "scale",
        &AppScaleBody {
            name: APP.into(),
            replicas: 3,
            workload: None,
        },
    )
    .await?;
    println!("    new volumes: {}", scaled.added.join(", "));
    let app = call::<AppView>(&client, "app", "get", &name(APP)).await?;
    output::print_table(&output::app_detail_rows(&app));
    check_app(&client, &nbd, APP, 0xa5, "5", 3).await?;

    step(
        5,
        "reset: roll the app back to the commit; data, config and replicas all return",
        &format!("cairn app rollback {APP} {GOOD}"),
    );
    let rolled = call::<AppRollbackReply>(
        &client,
        "app",
        "rollback",
        &AppSnapshotRefBody {
            name: APP.into(),
            snapshot: GOOD.into(),
            run_async: false,
            workflow: None,
        },
    )
    .await?;
    println!(
        "    restored {}; safety snapshot {} keeps the bad state",
        rolled.volumes.join(", "),
        rolled.safety_snapshot.as_deref().unwrap_or("-")
    );
    check_app(&client, &nbd, APP, 0x42, "100", 1).await?;

    step(
        6,
        "branch: a thin clone of the commit for dev, with a config override",
        &format!(
            "cairn app clone {APP}@{GOOD} {BRANCH} --set db-config.max_connections=10; cairn volume show {BRANCH}/data-db-0"
        ),
    );
    let cloned = call::<AppCloneReply>(
        &client,
        "app",
        "clone",
        &AppCloneBody {
            name: APP.into(),
            snapshot: GOOD.into(),
            target: BRANCH.into(),
            set: vec!["db-config.max_connections=10".into()],
            run_async: false,
            workflow: None,
        },
    )
    .await?;
    println!("    thin clones: {}", cloned.cloned.join(", "));
    check_app(&client, &nbd, BRANCH, 0x42, "10", 1).await?;
    let branch_data = format!("{BRANCH}/data-db-0");
    let volume = call::<VolumeView>(&client, "volume", "show", &name(&branch_data)).await?;
    let copied = volume.exclusive_bytes.context("exclusive bytes unknown")?;
    ensure!(
        copied == 0,
        "{branch_data} should share every byte with {APP}@{GOOD}, but {copied} bytes are its own"
    );
    println!(
        "    {branch_data}: {} of data referenced, {} copied (clone of {})",
        HumanBytes(volume.allocated_bytes.unwrap_or(0)),
        HumanBytes(copied),
        volume.origin.as_deref().unwrap_or("-")
    );

    step(
        7,
        "every change is an event in a hash-chained journal",
        &format!("cairn app log {APP}; cairn events verify"),
    );
    let log = call::<AppLogReply>(
        &client,
        "app",
        "log",
        &AppLogBody {
            name: APP.into(),
            limit: Some(6),
        },
    )
    .await?;
    output::print_table(&output::log_rows(&log));
    let verify = call::<VerifyReply>(&client, "events", "verify", &EmptyBody {}).await?;
    ensure!(verify.ok, "events verify failed: {:?}", verify.reason);
    println!(
        "    events verify: ok, {} records; replaying them gives the live state",
        verify.records.unwrap_or(0)
    );

    step(
        8,
        "restart: state is rebuilt from the journal, flushed data survives",
        "kill cairn; cairn up --data-dir DIR",
    );
    cluster.shutdown().await;
    drop(client);
    let (cluster, nbd) = start(&dir).await?;
    let client = cluster.client();
    check_app(&client, &nbd, APP, 0x42, "100", 1).await?;
    check_app(&client, &nbd, BRANCH, 0x42, "10", 1).await?;

    step(
        9,
        "push the commit to a backup repository, destroy the app, pull it back",
        &format!(
            "cairn repo add local; cairn app push {APP}@{GOOD} local; cairn app delete {BRANCH}; cairn app delete {APP}; cairn app pull local {APP}@{GOOD}"
        ),
    );
    // No URL: a repository in the data dir, with a key made for it.
    let repo = call::<RepoAddReply>(
        &client,
        "repo",
        "add",
        &RepoAddBody {
            name: "local".into(),
            url: None,
            key_file: None,
            passphrase_file: None,
        },
    )
    .await?;
    println!(
        "    repo local at {} (key {})",
        repo.repo.url, repo.repo.key_path
    );
    let pushed = call::<PushReply>(
        &client,
        "app",
        "push",
        &AppPushBody {
            name: APP.into(),
            snapshot: GOOD.into(),
            repo: "local".into(),
            run_async: false,
            workflow: None,
        },
    )
    .await?;
    println!(
        "    pushed {} of volumes: {} read, {} stored (zeros and repeats are not stored)",
        output::human(pushed.logical_bytes),
        output::human(pushed.read_bytes),
        output::human(pushed.uploaded_bytes)
    );
    for app in [BRANCH, APP] {
        call::<AppDeleteReply>(
            &client,
            "app",
            "delete",
            &AppDeleteBody {
                name: app.into(),
                run_async: false,
                workflow: None,
            },
        )
        .await?;
    }
    match call::<AppView>(&client, "app", "get", &name(APP)).await {
        Err(e) if is_not_found(&e) => {
            println!("    destroyed: {APP}, its volumes and snapshots are gone ({e:#})")
        }
        Err(e) => return Err(e),
        Ok(app) => anyhow::bail!("{APP} should be gone, found {app:?}"),
    }
    let pulled = call::<PullReply>(
        &client,
        "app",
        "pull",
        &AppPullBody {
            repo: "local".into(),
            name: APP.into(),
            snapshot: GOOD.into(),
            target: None,
            run_async: false,
            workflow: None,
        },
    )
    .await?;
    println!(
        "    pulled {APP}@{GOOD}: {} chunks written, every one verified",
        pulled.written_chunks
    );
    check_app(&client, &nbd, APP, 0x42, "100", 1).await?;
    cluster.shutdown().await;

    println!();
    println!("Demo complete: every check held.");
    println!(
        "Next: `cairn up`, then `cairn app create -f app.yaml` or `cairn volume create v1 --size 1G` from another shell."
    );
    Ok(0)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<cairn_actors::client::Error>(),
        Some(cairn_actors::client::Error::Api(api)) if api.code == ErrorCode::NotFound
    )
}

/// Removes the demo's temporary data dir when the demo ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
