//! Wires one all-in-one Cairn process: bus, journal, block pool, actors,
//! gateway, NBD server and FUSE mount. Used by `cairn up` and `cairn demo`.
//!
//! # Start-up
//! 0. Check the NBD access settings ([`crate::nbd_access`]): unsafe ones
//!    (TCP without TLS, TLS without a client CA, unless
//!    `--nbd-insecure-tcp`) stop start-up before anything is opened.
//! 1. Take the data dir's lock (one process per data dir).
//! 2. Connect the bus: the given NATS URL, else a private nats-server when
//!    one is installed, else the in-process bus (and say so).
//! 3. Open the journal: it rebuilds the state from its newest snapshot plus
//!    the records after it, checking their hash chain (see
//!    [`crate::journal`]); a damaged journal stops start-up here, before
//!    anything is deleted.
//! 4. Reconcile the block engine with the journal: remove orphans a crash
//!    left between an effect and its event (see [`crate::volume`]).
//! 5. Load the cluster key that seals secrets (`<data>/keys/cluster.key`,
//!    made at the first start; see [`crate::secrets`]) and resolve the
//!    hooks user (see [`crate::hooks`]).
//! 6. Start an actor per volume, the gateway, the NBD server and the FUSE
//!    mount (when asked for).
//!
//! # Shutdown
//! Stop taking requests, drain those in flight, unmount FUSE, checkpoint the
//! journal, flush every volume, stop the actors and wait (bounded) until
//! they let go of the journal, so its file is unlocked on return.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_blocks::fuse::{self, FuseHandle};
use cairn_blocks::nbd::{self, ListenAddr, NbdServerHandle};
use cairn_blocks::storage::Storage;
use cairn_blocks::{Pool, PoolOptions};
use cairn_placement::Topology;
use cairn_placement::topology::DEFAULT_DOMAIN;
use cairn_schema::event::{NodeDisk, NodeRegistered};
use cairn_schema::{VolumeState, World};
use tokio::sync::watch;

use crate::Limits;
use crate::bus::{self, Bus, NatsOptions};
use crate::client::Client;
use crate::gateway::Gateway;
use crate::journal::{self, Journal, RedbJournal};
use crate::nats_server::{self, NatsServer};
use crate::registry::Registry;
use crate::services::Services;
use crate::volume::engine_name;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} is in use by another cairn process")]
    Locked { path: PathBuf },
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// Start-up stops here: reconciling the block engine against a damaged
    /// journal would delete the volumes of the records it cannot trust.
    #[error(
        "{damage}; not starting, since reconciling the block engine against a damaged journal could delete data (`cairn events verify --data-dir {}` checks it offline)",
        data_dir.display()
    )]
    JournalDamaged {
        data_dir: PathBuf,
        damage: journal::Error,
    },
    #[error(transparent)]
    Blocks(#[from] cairn_blocks::Error),
    #[error(transparent)]
    Bus(#[from] bus::Error),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("nats-server: {0}")]
    NatsServer(std::io::Error),
    /// The NBD settings are unsafe or unusable (checked before anything
    /// starts).
    #[error("NBD: {0}")]
    NbdAccess(String),
    #[error("NBD server on {addr}: {source}")]
    Nbd {
        addr: String,
        source: std::io::Error,
    },
    /// The source's message names the directory.
    #[error("FUSE: {source}")]
    Fuse { source: std::io::Error },
    #[error("topology: {0}")]
    Topology(String),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::Error),
    #[error(transparent)]
    ClusterKey(#[from] crate::secrets::Error),
}

/// How to reach the bus.
#[derive(Debug, Clone)]
pub enum BusChoice {
    /// Connect to this NATS server.
    Nats(Box<NatsOptions>),
    /// Spawn a private nats-server if installed, else use the in-process bus.
    Auto,
    /// The in-process bus, always.
    Local,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bus: BusChoice,
    pub nbd: Option<ListenAddr>,
    /// Master key for `--encrypt` volumes: 32 raw bytes or 64 hex digits.
    pub key_file: Option<PathBuf>,
    /// Directories the block pool spreads its segments over (empty: the
    /// pool directory alone). Fixed when the pool is first created.
    pub disks: Vec<PathBuf>,
    /// Mount a FUSE filesystem here: one file per volume and snapshot.
    pub fuse: Option<PathBuf>,
    /// The cluster's nodes, racks and disks (`--topology`, `--nodes`); each
    /// node's disks become directories `nodes/<node>/<disk>` of the pool.
    /// Without one, this process is the only node. Fixed when the pool is
    /// first created.
    pub topology: Option<Topology>,
    pub limits: Limits,
    /// The operator's security settings; `mode` is set at start-up from the bus.
    pub security: crate::security::Security,
    /// The block pool's storage; `None`: files under the data dir. Tests
    /// give the in-memory twin ([`cairn_blocks::storage::MemStorage`]) to
    /// simulate power loss between two starts.
    pub storage: Option<PoolStorage>,
}

/// The block pool's [`Storage`] in a [`Config`] (a newtype, so `Config`
/// stays `Debug`).
#[derive(Clone)]
pub struct PoolStorage(pub Arc<dyn Storage>);

impl std::fmt::Debug for PoolStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolStorage(..)")
    }
}

/// Reads a volume key file: 32 raw bytes, or 64 hex digits (whitespace
/// around them is ignored).
pub fn read_key_file(path: &std::path::Path) -> Result<[u8; 32], Error> {
    let bad = |reason: String| Error::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "expected 32 raw bytes or 64 hex digits, found {} bytes",
            bytes.len()
        )));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex, &mut key).expect("checked hex");
    Ok(key)
}

pub struct Cluster {
    pub services: Services,
    pub registry: Arc<Registry>,
    pub nbd_addr: Option<ListenAddr>,
    /// The FUSE mountpoint (canonical), when one was asked for.
    pub fuse_dir: Option<PathBuf>,
    /// Set when this process spawned its own nats-server.
    pub nats_url: Option<String>,
    shutdown: watch::Sender<bool>,
    gateway: Option<tokio::task::JoinHandle<()>>,
    nbd: Option<NbdServerHandle>,
    fuse: Option<FuseHandle>,
    _nats_server: Option<NatsServer>,
    _lock: File,
}

/// Where a (simulated) node's disk lives: `DATA_DIR/nodes/NODE/DISK`,
/// absolute, so the pool finds it again from any working directory.
fn node_disk_dir(data_dir: &Path, node: &str, disk: &str) -> PathBuf {
    let base = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    base.join("nodes").join(node).join(disk)
}

/// The nodes this process registers: the topology's, or itself with its
/// pool's disks (ssd, the size of their filesystem, one shared rack).
fn node_registrations(config: &Config, pool: &Pool, local: &str) -> Vec<NodeRegistered> {
    match &config.topology {
        Some(topology) => topology
            .nodes
            .iter()
            .map(|n| NodeRegistered {
                node: n.name.clone(),
                rack: n.rack.clone(),
                datacenter: n.datacenter.clone(),
                disks: n
                    .disks
                    .iter()
                    .map(|d| NodeDisk {
                        name: d.name.clone(),
                        path: node_disk_dir(&config.data_dir, &n.name, &d.name)
                            .display()
                            .to_string(),
                        media: d.media.as_str().to_owned(),
                        capacity_bytes: d.capacity_bytes,
                    })
                    .collect(),
            })
            .collect(),
        None => vec![NodeRegistered {
            node: local.to_owned(),
            rack: DEFAULT_DOMAIN.to_owned(),
            datacenter: DEFAULT_DOMAIN.to_owned(),
            disks: pool
                .disk_usage()
                .into_iter()
                .map(|d| d.dir)
                .enumerate()
                .map(|(idx, dir)| NodeDisk {
                    name: format!("disk-{idx}"),
                    path: dir.display().to_string(),
                    media: "ssd".to_owned(),
                    capacity_bytes: crate::services::fs_space(&dir).map_or(0, |(total, _)| total),
                })
                .collect(),
        }],
    }
}

/// The name this node goes by: the host name, or `local`.
fn local_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned())
}

fn lock_data_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join("lock");
    let file = File::create(&path).map_err(|source| Error::DataDir {
        path: path.clone(),
        source,
    })?;
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked {
            path: dir.to_owned(),
        });
    }
    Ok(file)
}

/// Makes the block engine match the journal.
fn reconcile(pool: &Pool, world: &World) -> Result<(), Error> {
    let wanted: HashMap<String, &VolumeState> = world
        .volumes
        .iter()
        .map(|((tenant, name), s)| (engine_name(tenant, name), s))
        .collect();
    for name in pool.list_volumes() {
        match wanted.get(&name) {
            None => {
                tracing::warn!(volume = %name, "removing a volume the journal does not know (left by a crash)");
                pool.delete_volume(&name)?;
            }
            Some(state) => {
                for snap in pool.volume_info(&name)?.snapshots {
                    if !state.snapshots.contains_key(&snap.name) {
                        tracing::warn!(volume = %name, snapshot = %snap.name, "removing an unjournaled snapshot");
                        pool.delete_snapshot(&name, &snap.name)?;
                    }
                }
            }
        }
    }
    for (name, state) in &wanted {
        match pool.volume_info(name) {
            Ok(info) => {
                for snap in state.snapshots.keys() {
                    if !info.snapshots.iter().any(|s| &s.name == snap) {
                        tracing::error!(volume = %name, snapshot = %snap, "journaled snapshot is missing from the block engine");
                    }
                }
            }
            Err(e) => {
                tracing::error!(volume = %name, error = %e, "journaled volume is missing from the block engine")
            }
        }
    }
    Ok(())
}

impl Cluster {
    /// Starts on the data dir's `journal.redb`.
    pub async fn start(config: Config) -> Result<Cluster, Error> {
        Cluster::start_with(config, None).await
    }

    /// Starts on `journal` instead of the data dir's `journal.redb` (a
    /// test's [`crate::journal::MemJournal`] or
    /// [`crate::journal::FaultyJournal`]).
    pub async fn start_with_journal(
        config: Config,
        journal: Arc<dyn Journal>,
    ) -> Result<Cluster, Error> {
        Cluster::start_with(config, Some(journal)).await
    }

    async fn start_with(
        config: Config,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<Cluster, Error> {
        crate::failpoint::warn_if_requested();
        let limits = config.limits.sanitize();
        let mut security = config.security.clone().sanitize();
        // Refused settings stop start-up before anything is opened.
        let nbd_access = match &config.nbd {
            Some(addr) => {
                Some(crate::nbd_access::access(&security.nbd, addr).map_err(Error::NbdAccess)?)
            }
            None => None,
        };
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let lock = lock_data_dir(dir)?;

        let mut nats_server = None;
        let bus = match &config.bus {
            BusChoice::Nats(options) => Bus::connect(options).await?,
            BusChoice::Local => Bus::local(),
            BusChoice::Auto => match nats_server::find_binary() {
                Some(binary) => {
                    // With credentials: a tenant's user reaches only its
                    // own subjects, and no local user is every tenant.
                    let (server, users) = NatsServer::start_authenticated(
                        &binary,
                        dir,
                        Some(&dir.join("nats-server.log")),
                    )
                    .map_err(Error::NatsServer)?;
                    let bus = Bus::connect(&NatsOptions {
                        url: server.url.clone(),
                        user: Some(crate::nats_auth::SERVER_USER.to_owned()),
                        password: Some(users.server_password.clone()),
                        ..Default::default()
                    })
                    .await?;
                    nats_server = Some(server);
                    bus
                }
                None => {
                    tracing::warn!(
                        "nats-server is not installed: using the in-process bus; other processes cannot reach this cluster"
                    );
                    Bus::local()
                }
            },
        };
        security.mode = if bus.auth_required() {
            crate::security::Mode::Authenticated
        } else {
            tracing::warn!(
                "the bus asks for no authentication: a single-user deployment, every request is taken as the operator's (see SECURITY.md)"
            );
            crate::security::Mode::Open
        };

        // Opening rebuilds the state (newest snapshot + the records after
        // it, their chain checked).
        let journal: Arc<dyn Journal> = match journal {
            Some(journal) => journal,
            None => Arc::new(
                RedbJournal::open(&dir.join("journal.redb"), limits.journal).map_err(|damage| {
                    match damage {
                        journal::Error::Corrupted { .. } => Error::JournalDamaged {
                            data_dir: dir.clone(),
                            damage,
                        },
                        other => Error::Journal(other),
                    }
                })?,
            ),
        };
        let key = match &config.key_file {
            Some(path) => Some(read_key_file(path)?),
            None => None,
        };
        // With a topology, every node's disks are directories of this
        // one pool (the simulated, all-in-one form of `--nodes N`).
        let disks = match &config.topology {
            Some(topology) => {
                if !config.disks.is_empty() {
                    return Err(Error::Topology(
                        "give --disk or a topology (--topology/--nodes), not both".into(),
                    ));
                }
                topology
                    .disk_ids()
                    .map(|id| node_disk_dir(dir, &id.node, &id.disk))
                    .collect()
            }
            None => config.disks.clone(),
        };
        let mut pool_options = PoolOptions {
            key,
            disks,
            ..PoolOptions::default()
        };
        if let Some(storage) = &config.storage {
            pool_options.storage = storage.0.clone();
        }
        let pool = Arc::new(Pool::open_with(dir.join("pool"), pool_options)?);
        let world = journal.world()?;
        reconcile(&pool, &world)?;

        let local = local_node_name();
        let nodes = node_registrations(&config, &pool, &local);
        let mut disk_index = std::collections::BTreeMap::new();
        let pool_dirs: Vec<PathBuf> = pool.disk_usage().into_iter().map(|d| d.dir).collect();
        for n in &nodes {
            for d in &n.disks {
                if let Some(idx) = pool_dirs
                    .iter()
                    .position(|p| p.display().to_string() == d.path)
                {
                    disk_index.insert((n.node.clone(), d.name.clone()), idx as u16);
                }
            }
        }
        let data_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        let security = Arc::new(security);
        let hooks = crate::hooks::Hooks::new(
            Arc::new(crate::hooks::LocalRunner),
            security.clone(),
            &data_dir,
        )?;
        let secrets = crate::secrets::ClusterKey::load_or_create(&data_dir)?;
        let services = Services {
            journal,
            pool: pool.clone(),
            bus: bus.clone(),
            limits,
            node: local,
            disk_index: Arc::new(disk_index),
            data_dir: Arc::new(data_dir),
            security,
            hooks: Arc::new(hooks),
            secrets: Arc::new(secrets),
            nbd: Default::default(),
        };
        // The one owner of placement, seeded with every app's journaled slices.
        let placement = actix::Actor::start(crate::placement::PlacementActor::new(
            world.apps.iter(),
            services.limits.mailbox,
        ));
        let repos = actix::Actor::start(crate::repo_actor::RepoActor::new(
            world.repos.clone(),
            services.clone(),
        ));
        let workflows = actix::Actor::start(crate::workflow::WorkflowActor::new(
            &world,
            services.clone(),
        ));
        let registry = Arc::new(Registry::new(placement, repos, workflows));
        let world_workflows = world.workflows.clone();
        for ((tenant, name), state) in world.volumes {
            registry.start_volume(&tenant, &name, state, &services);
        }
        for ((tenant, name), state) in world.apps {
            // A placement not yet in a checkpoint is restored from the journal.
            for v in state.placement.values() {
                let engine = engine_name(&tenant, &cairn_schema::app::volume_name(&name, &v.pvc));
                let slices = services.slice_disks(v);
                if let Err(e) = pool.place_slices(&engine, &slices) {
                    tracing::warn!(volume = %engine, error = %e, "placement not restored");
                }
            }
            registry.start_app(&tenant, &name, state, &services);
        }
        for registration in nodes {
            let name = registration.node.clone();
            let node = registry.start_node(
                &name,
                world.nodes.get(&name).cloned().unwrap_or_default(),
                &services,
            );
            node.send(crate::node::Register(registration))
                .await
                .map_err(|e| bus::Error::Other(format!("node actor: {e}")))?
                .map_err(|e| {
                    bus::Error::Other(format!("registering node {name}: {}", e.message))
                })?;
        }
        // Nodes the journal knows but this start does not list stay known.
        for (name, state) in world.nodes {
            if registry.node(&name).is_none() {
                registry.start_node(&name, state, &services);
            }
        }

        let nbd = match (&config.nbd, nbd_access) {
            (Some(addr), Some(access)) => Some(
                nbd::serve_with(addr, pool.clone(), services.security.nbd.limits, access).map_err(
                    |source| Error::Nbd {
                        addr: addr.to_string(),
                        source,
                    },
                )?,
            ),
            _ => None,
        };

        let fuse = match &config.fuse {
            None => None,
            Some(dir) => {
                Some(fuse::mount(dir, pool.clone()).map_err(|source| Error::Fuse { source })?)
            }
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let gateway = Arc::new_cyclic(|me| Gateway {
            services: services.clone(),
            registry: registry.clone(),
            me: me.clone(),
            repos: Default::default(),
            tenant_slots: crate::gateway::TenantSlots::new(
                services.security.caps.requests_in_flight,
            ),
        });
        // Every workflow the journal says is running was cut short by the
        // last stop: it goes on (or compensates) from its journaled facts.
        gateway.resume_open_workflows(&world_workflows);
        // Subscribe before returning, so a request sent right after start is served.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let serve_bus = bus.clone();
        let task = tokio::task::spawn_local(async move {
            if let Err(e) = gateway.serve(serve_bus, shutdown_rx, ready_tx).await {
                tracing::error!(error = %e, "gateway stopped");
            }
        });
        ready_rx
            .await
            .map_err(|_| bus::Error::Other("gateway could not subscribe".into()))??;

        let nbd_addr = nbd.as_ref().map(|h| h.local_addr());
        if let Some(addr) = &nbd_addr {
            let _ = services.nbd.set(addr.clone());
        }
        let nats_url = nats_server.as_ref().map(|s| s.url.clone());
        let fuse_dir = fuse.as_ref().map(|h| h.mountpoint().to_owned());
        Ok(Cluster {
            services,
            registry,
            nbd_addr,
            fuse_dir,
            nats_url,
            shutdown,
            gateway: Some(task),
            nbd,
            fuse,
            _nats_server: nats_server,
            _lock: lock,
        })
    }

    /// A client on this cluster's bus, for the default tenant.
    pub fn client(&self) -> Client {
        Client::new(
            self.services.bus.clone(),
            cairn_schema::subject::DEFAULT_TENANT,
        )
    }

    /// Stops taking requests, drains those in flight, flushes every volume.
    pub async fn shutdown(self) {
        self.stop(true).await
    }

    /// Stops like a killed process, for tests that restart on the same data
    /// dir: requests stop and the actors let go of the journal and the
    /// pool, but neither the pool nor the journal is checkpointed or
    /// flushed here. (The redb journal still checkpoints when its last
    /// handle drops; the pool only stops its background thread, so a test
    /// on `MemStorage` then calls `crash` to lose what was not synced.)
    #[cfg(test)]
    pub(crate) async fn crash(self) {
        self.stop(false).await
    }

    /// Dies like a process killed while requests are under way (the
    /// journal twin hangs every append after a tear): nothing drains, the
    /// gateway task is dropped with its requests unanswered, the pool's
    /// maintenance stops, and whatever is stuck on the dead journal stays
    /// stuck, holding the old services, which do nothing more. Only for a
    /// journal without a file lock (the in-memory twin): nothing waits for
    /// the journal to be let go.
    #[cfg(test)]
    pub(crate) async fn abandon(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.gateway.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(nbd) = self.nbd.take() {
            nbd.shutdown();
        }
        self.services.pool.stop_background();
        self.registry.clear();
    }

    async fn stop(mut self, clean: bool) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.gateway.take() {
            let _ = task.await;
        }
        if let Some(nbd) = self.nbd.take() {
            nbd.shutdown();
        }
        if let Some(fuse) = self.fuse.take()
            && let Err(e) = fuse.unmount()
        {
            tracing::error!(error = %e, "FUSE unmount at shutdown failed");
        }
        // Final checkpoints: the next start replays neither log.
        if clean {
            self.services.journal.close();
            if let Err(e) = self.services.pool.close() {
                tracing::error!(error = %e, "closing the block pool failed");
            }
        }
        // Bounded: with NATS gone a flush would wait for a reconnect that
        // may never come, and a stop must not hang on it.
        let _ = tokio::time::timeout(BUS_FLUSH_TIMEOUT, self.services.bus.flush()).await;
        // Release the journal file before returning. The actors hold it
        // (through their services) until the arbiter polls them after their
        // addresses are gone; a start in this process right after (the
        // demo's restart, where the in-process bus awaits nothing before the
        // journal opens) would otherwise find redb's lock still held.
        let journal = self.services.journal.clone();
        self.registry.clear();
        drop(self);
        let deadline = std::time::Instant::now() + JOURNAL_RELEASE_TIMEOUT;
        while Arc::strong_count(&journal) > 1 {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    handles = Arc::strong_count(&journal) - 1,
                    "the journal is still held after shutdown (a task outlived the drain)"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// How long [`Cluster::shutdown`] waits for the bus to send what it holds.
const BUS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long [`Cluster::shutdown`] waits for the actors to let go of the
/// journal.
const JOURNAL_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
