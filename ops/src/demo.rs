//! `cairn demo`: a guided tour on an all-in-one cluster with embedded
//! defaults. It starts a cluster in this process (with a private nats-server
//! when installed), drives it through the same API the CLI uses, moves real
//! bytes over NBD, creates an app from Kubernetes YAML, scales it, drifts
//! its config and travels back in its history, restarts the cluster from its
//! journal, pushes the app to a repository in the data dir and pulls it back
//! as a new app, and checks every step. Exit code 0 means every check held.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use cairn_actors::client::Client;
use cairn_actors::cluster::{BusChoice, Cluster};
use cairn_blocks::nbd::{ListenAddr, NbdClient};
use clap::Args;
use serde_json::{Value, json};

use crate::output;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data dir for the demo cluster (default: a fresh temporary dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const VOLUME: &str = "pg-data";
const APP: &str = "shop";
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

async fn show_volumes(client: &Client) -> anyhow::Result<Vec<Value>> {
    let reply = client.call("volume", "list", &json!({})).await?;
    let volumes = reply["volumes"].as_array().cloned().unwrap_or_default();
    output::print_table(&output::volume_rows(&volumes));
    Ok(volumes)
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    let (dir, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let base = std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id()));
            (base.clone(), Some(TempDir(base)))
        }
    };
    println!("Cairn demo: a git-like workflow for the volumes of stateful apps.");
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
        "create a 1 GiB thin volume",
        &format!("cairn volume create {VOLUME} --size 1G"),
    );
    client
        .call("volume", "create", &json!({ "name": VOLUME, "size": "1G" }))
        .await?;
    show_volumes(&client).await?;

    step(
        3,
        "write 1 MiB of 0x5a over NBD and flush",
        &format!("qemu-io -f raw -c 'write -P 0x5a 0 1M' 'nbd+unix:///{VOLUME}?socket=…'"),
    );
    nbd_pattern(&nbd, VOLUME, "write", 0x5a)?;
    println!("    written and flushed");

    step(
        4,
        "snapshot it before a risky upgrade",
        &format!("cairn volume snapshot {VOLUME} before-upgrade"),
    );
    client
        .call(
            "volume",
            "snapshot",
            &json!({ "name": VOLUME, "snapshot": "before-upgrade" }),
        )
        .await?;
    let snaps = client
        .call("volume", "snapshots", &json!({ "name": VOLUME }))
        .await?;
    output::print_table(&output::snapshot_rows(&snaps["snapshots"]));

    step(5, "the 'upgrade' overwrites the data with 0xa5", "");
    nbd_pattern(&nbd, VOLUME, "write", 0xa5)?;
    nbd_pattern(&nbd, VOLUME, "read", 0xa5)?;
    println!("    live volume {VOLUME} now reads 0xa5");
    nbd_pattern(&nbd, &format!("{VOLUME}@before-upgrade"), "read", 0x5a)?;
    println!("    read-only export {VOLUME}@before-upgrade still reads 0x5a");
    let mut ro = NbdClient::connect(&nbd, &format!("{VOLUME}@before-upgrade"))?;
    let refused = ro.write(0, &[0u8; 512], false).is_err();
    ensure!(refused, "a write to a snapshot export must be refused");
    ro.disconnect()?;
    println!("    and it refuses writes");

    step(
        6,
        "bad input gets a structured error, and the server keeps serving",
        "cairn volume show no-such-volume",
    );
    match client
        .call("volume", "show", &json!({ "name": "no-such-volume" }))
        .await
    {
        Err(cairn_actors::client::Error::Api(e)) => {
            println!("    {}", serde_json::to_string(&e.to_reply())?)
        }
        other => anyhow::bail!("expected a not_found error, got {other:?}"),
    }
    let subject = cairn_schema::subject::request("default", "volume", "create");
    match client
        .call_raw(&subject, bytes::Bytes::from_static(b"{not json"), None)
        .await
    {
        Err(cairn_actors::client::Error::Api(e)) => {
            println!("    {}", serde_json::to_string(&e.to_reply())?)
        }
        other => anyhow::bail!("expected an invalid_argument error, got {other:?}"),
    }

    step(
        7,
        "every change is an event in a hash-chained journal",
        "cairn events",
    );
    let events = client.call("events", "list", &json!({})).await?;
    output::print_table(&output::event_rows(
        events["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    ));
    let verify = client.call("events", "verify", &json!({})).await?;
    ensure!(verify["ok"] == true, "events verify failed: {verify}");
    println!(
        "    $ cairn events verify  ->  ok, {} records",
        verify["records"]
    );

    step(
        8,
        "an app from Kubernetes YAML: a StatefulSet with data and wal claims",
        "cairn app create -f shop.yaml",
    );
    let created = client
        .call("app", "create", &json!({ "manifest": SHOP_YAML }))
        .await?;
    println!("    volumes: {}", created["volumes"]);
    let data = format!("{APP}/data-db-0");
    nbd_pattern(&nbd, &data, "write", 0x42)?;
    nbd_pattern(&nbd, &data, "read", 0x42)?;
    println!("    wrote 1 MiB of 0x42 to {data} over NBD");

    step(
        9,
        "scale out and change a config value; the app keeps its history",
        &format!(
            "cairn app scale {APP} --replicas 2; cairn app config set {APP} db-config.max_connections=250"
        ),
    );
    let scaled = client
        .call("app", "scale", &json!({ "name": APP, "replicas": 2 }))
        .await?;
    println!("    new volumes: {}", scaled["added"]);
    let before = client.call("app", "get", &json!({ "name": APP })).await?["updated_seq"]
        .as_u64()
        .context("updated_seq")?;
    client
        .call(
            "app",
            "config-set",
            &json!({ "name": APP, "configmap": "db-config", "key": "max_connections", "value": "250" }),
        )
        .await?;
    let app = client.call("app", "get", &json!({ "name": APP })).await?;
    output::print_table(&output::app_detail_rows(&app));
    println!();
    println!("    $ cairn app log {APP}");
    let log = client
        .call("app", "log", &json!({ "name": APP, "limit": 5 }))
        .await?;
    output::print_table(&output::log_rows(&log));
    println!();
    println!("    $ cairn events replay --at {before} --app {APP}   (time travel)");
    let then = client
        .call("events", "replay", &json!({ "at_seq": before, "app": APP }))
        .await?;
    let old = &then["app"]["configmaps"]["db-config"]["max_connections"];
    ensure!(
        old == "100",
        "the replayed config should read 100, got {old}"
    );
    println!("    at seq {before}, db-config.max_connections was {old}; now it is 250");

    step(
        10,
        "restart: state is rebuilt from the journal, flushed data survives",
        "kill cairn; cairn up --data-dir DIR",
    );
    cluster.shutdown().await;
    let (cluster, nbd) = start(&dir).await?;
    let client = cluster.client();
    let volumes = show_volumes(&client).await?;
    ensure!(
        volumes.len() == 5 && volumes.iter().any(|v| v["name"] == VOLUME),
        "the volumes did not survive the restart"
    );
    let app = client.call("app", "get", &json!({ "name": APP })).await?;
    ensure!(
        app["configmaps"]["db-config"]["max_connections"] == "250",
        "the app's config did not survive the restart"
    );
    nbd_pattern(&nbd, &data, "read", 0x42)?;
    nbd_pattern(&nbd, VOLUME, "read", 0xa5)?;
    nbd_pattern(&nbd, &format!("{VOLUME}@before-upgrade"), "read", 0x5a)?;
    println!("    {VOLUME} reads 0xa5 and {VOLUME}@before-upgrade reads 0x5a after the restart");
    let verify = client.call("events", "verify", &json!({})).await?;
    ensure!(
        verify["ok"] == true,
        "events verify failed after restart: {verify}"
    );

    step(
        11,
        "push the app to a backup repository and pull it back as a new app",
        &format!(
            "cairn app snapshot {APP} nightly; cairn repo add local; cairn app push {APP}@nightly local; cairn app pull local {APP}@nightly --as {APP}-restored"
        ),
    );
    client
        .call(
            "app",
            "snapshot",
            &json!({ "name": APP, "snapshot": "nightly" }),
        )
        .await?;
    // No URL: a repository in the data dir, with a key made for it.
    let repo = client
        .call("repo", "add", &json!({ "name": "local" }))
        .await?;
    println!(
        "    repo local at {} (key {})",
        repo["repo"]["url"].as_str().unwrap_or("?"),
        repo["repo"]["key_path"].as_str().unwrap_or("?")
    );
    let pushed = client
        .call(
            "app",
            "push",
            &json!({ "name": APP, "snapshot": "nightly", "repo": "local" }),
        )
        .await?;
    println!(
        "    pushed {} of volumes: {} read, {} bytes stored (zeros and repeats are not stored)",
        output::cell(&pushed["logical_bytes"]),
        output::cell(&pushed["read_bytes"]),
        output::cell(&pushed["uploaded_bytes"])
    );
    let restored = format!("{APP}-restored");
    let pulled = client
        .call(
            "app",
            "pull",
            &json!({ "repo": "local", "name": APP, "snapshot": "nightly", "target": restored }),
        )
        .await?;
    println!(
        "    pulled into {restored}: {} chunks written, every one verified",
        output::cell(&pulled["written_chunks"])
    );
    nbd_pattern(&nbd, &format!("{restored}/data-db-0"), "read", 0x42)?;
    let copy = client
        .call("app", "get", &json!({ "name": restored }))
        .await?;
    ensure!(
        copy["configmaps"]["db-config"]["max_connections"] == "250",
        "the pulled app's config differs: {copy}"
    );
    println!("    {restored}/data-db-0 reads 0x42 and its config matches");
    cluster.shutdown().await;

    println!();
    println!("Demo complete: every check held.");
    println!(
        "Next: `cairn up`, then `cairn volume create v1 --size 1G` or `cairn app create -f app.yaml` from another shell."
    );
    Ok(0)
}

/// Removes the demo's temporary data dir when the demo ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
