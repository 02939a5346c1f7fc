//! `cairn up`: runs every role in one process until SIGINT or SIGTERM, then
//! drains the requests in flight and flushes every volume.

use std::path::PathBuf;

use anyhow::Context;
use cairn_actors::cluster::{BusChoice, Cluster, Config};
use cairn_blocks::nbd::ListenAddr;
use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the journal, the block pool and the sockets live.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
    pub data_dir: PathBuf,
    /// NBD listen address: `unix:PATH` or `HOST:PORT` (default: unix socket in the data dir).
    #[arg(long)]
    pub nbd: Option<String>,
    /// Mount a FUSE filesystem on DIR (created if missing): one file per
    /// volume (`DIR/V`, `DIR/APP/PVC`) and per snapshot (`DIR/V@S`, read-only).
    #[arg(long, value_name = "DIR")]
    pub fuse: Option<PathBuf>,
    /// Never spawn nats-server; use the in-process bus (only this process can send commands).
    #[arg(long, conflicts_with = "url")]
    pub in_process_bus: bool,
    /// Master key for `volume create --encrypt`: a file of 32 raw bytes or 64 hex digits.
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// A directory (a disk) for the block pool's segments; repeat to spread
    /// 1 GiB slices over several. Default: inside the data dir. Only used
    /// when the pool is created; afterwards the pool remembers its disks.
    #[arg(long = "disk", value_name = "DIR")]
    pub disks: Vec<PathBuf>,
    /// The cluster's nodes, racks, datacenters and disks: a `kind: Topology`
    /// YAML file. Each node's disks become directories of this process's
    /// pool (`DATA_DIR/nodes/NODE/DISK`). Fixed at the first start.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nodes", "disks"])]
    pub topology: Option<PathBuf>,
    /// Simulate N nodes in 3 racks, each with two ssd disks and one hdd.
    #[arg(long, value_name = "N", conflicts_with = "disks")]
    pub nodes: Option<usize>,
    #[command(flatten)]
    pub security: crate::security_args::SecurityArgs,
}

pub fn cluster_config(data_dir: PathBuf, bus: BusChoice, nbd: Option<ListenAddr>) -> Config {
    Config {
        data_dir,
        bus,
        nbd,
        key_file: None,
        disks: vec![],
        fuse: None,
        topology: None,
        limits: cairn_actors::Limits::default(),
        security: cairn_actors::security::Security::default(),
        storage: None,
    }
}

pub async fn run(cli: &Cli, args: &UpArgs) -> anyhow::Result<i32> {
    let nbd = match &args.nbd {
        Some(text) => text
            .parse::<ListenAddr>()
            .map_err(|e| anyhow::anyhow!("--nbd {text:?}: {e}"))?,
        None => ListenAddr::Unix(std::path::absolute(args.data_dir.join("nbd.sock"))?),
    };
    let bus = match (&cli.nats.url, args.in_process_bus) {
        (Some(url), _) => BusChoice::Nats(Box::new(cli.nats.options(url.clone()))),
        (None, true) => BusChoice::Local,
        (None, false) => BusChoice::Auto,
    };
    let mut config = cluster_config(args.data_dir.clone(), bus, Some(nbd));
    config.key_file = args.key_file.clone();
    config.disks = args
        .disks
        .iter()
        .map(std::path::absolute)
        .collect::<Result<_, _>>()?;
    config.fuse = args.fuse.clone();
    config.security = args.security.to_security()?;
    config.topology = match (&args.topology, args.nodes) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(
                cairn_placement::Topology::from_yaml(&text)
                    .with_context(|| format!("--topology {}", file.display()))?,
            )
        }
        (None, Some(n)) => Some(cairn_placement::Topology::simulated(n)),
        (None, None) => None,
    };
    let cluster = Cluster::start(config)
        .await
        .with_context(|| format!("starting cairn in {}", args.data_dir.display()))?;
    // Before saying it is up: from here a signal means a graceful stop
    // (drain, flush, export the last spans), never the default kill.
    let signals = Signals::install()?;
    let url = cluster.nats_url.clone().or(cli.nats.url.clone());
    let nbd_addr = cluster
        .nbd_addr
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    println!("cairn is up");
    println!("  data dir: {}", args.data_dir.display());
    match &url {
        Some(url) => {
            println!("  nats:     {url}");
            println!("  export CAIRN_NATS_URL={url}");
            if cli.nats.url.is_none() {
                let data_dir = std::path::absolute(&args.data_dir)?;
                println!(
                    "  auth:     generated NATS users in {}/nats (0600); the CLI uses them with",
                    data_dir.display()
                );
                println!(
                    "            export CAIRN_DATA_DIR={}   (cairn tenant add NAME: a tenant's own user)",
                    data_dir.display()
                );
            }
        }
        None => println!(
            "  bus:      in-process (nats-server not installed; only this process can send commands)"
        ),
    }
    println!("  nbd:      {nbd_addr}   e.g. qemu-io -f raw 'nbd+unix:///VOLUME?socket=PATH'");
    if let Some(dir) = &cluster.fuse_dir {
        println!(
            "  fuse:     {}   e.g. losetup -f --show {}/VOLUME",
            dir.display(),
            dir.display()
        );
    }
    let info = ClusterInfo {
        nats_url: url,
        nbd: nbd_addr,
        fuse: cluster.fuse_dir.clone(),
        pid: std::process::id(),
    };
    std::fs::write(
        args.data_dir.join("cluster.json"),
        serde_json::to_vec_pretty(&info)?,
    )?;

    signals.wait().await;
    tracing::info!("shutting down: draining requests in flight");
    let drained = tokio::time::timeout(crate::cli::DRAIN_TIMEOUT, cluster.shutdown()).await;
    if drained.is_err() {
        tracing::warn!("drain timed out");
    }
    Ok(0)
}

/// `DATA_DIR/cluster.json`: where a running `cairn up` listens, for the CLI
/// on the same host (and for scripts).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    /// The NATS URL, when there is one (not with the in-process bus).
    pub nats_url: Option<String>,
    pub nbd: String,
    pub fuse: Option<PathBuf>,
    pub pid: u32,
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
