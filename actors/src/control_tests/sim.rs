//! Deterministic simulation of the control plane: seeded random command
//! sequences (volume and app commands, invalid requests among them) with
//! clean restarts and crashes in between, all in this process.
//!
//! # What runs
//! The whole control plane ([`Cluster::start`] on the in-process bus) with
//! its block pool on the in-memory storage twin
//! ([`MemStorage`], through [`Config::storage`]). A *restart* shuts the
//! cluster down cleanly; a *crash* stops it without checkpoints
//! ([`Cluster::crash`]) and then loses what the pool had not synced
//! ([`MemStorage::crash`]: unsynced writes dropped, reordered or torn)
//! before [`Cluster::start`] runs again on the same data dir and storage.
//! (The journal is the data dir's redb file, behind the fault injector: it still checkpoints when its
//! last handle drops, so a crash loses none of it; every append was durable
//! before its answer anyway.)
//! Some commands run while the pool's syncs fail ([`Faults`]) and are
//! followed by a crash: the process died between a block-engine effect and
//! its commit, which start-up reconciliation must clean up. In others one
//! journal commit of the command (the 1st, 2nd or 3rd append) fails, through
//! the fault injector around the redb journal ([`FaultyJournal`]): the
//! caller's own cleanup must leave nothing behind, and a workflow whose
//! fact failed to commit must still end (found: seed 18, a saga that
//! stopped on its first failed fact). Commands run
//! one at a time, so a run is a function of its seed, except *races*: one
//! command sent three times at once, whose copies all have one effect
//! (which copy wins may vary; what the plane holds after may not).
//!
//! # What is checked
//! After every step, after every restart and at the end:
//! 1. the fold of the journal from seq 1 ([`crate::journal::Journal::replay_full`])
//!    equals what the actors serve (`volume.list`, `app.list`, `app.get`,
//!    `app.snapshots`), and `events verify` says ok;
//! 2. the block engine's own volume list and each volume's snapshots
//!    (asked of the pool, not the journal) equal the journal's: no orphan,
//!    nothing missing;
//! 3. the [`Model`], built only from acknowledged replies, equals what the
//!    plane serves: an acknowledged command's effect survives restarts and
//!    crashes, and a refused one left nothing behind.
//!
//! # Replaying a failure
//! Every failure message starts with the seed and the last steps. The
//! fixed seeds run in CI; `simulation_random_seed` takes `CAIRN_SIM_SEED`
//! (and `CAIRN_SIM_STEPS`), else a random seed:
//! `CAIRN_SIM_SEED=… cargo test -p cairn-actors --lib simulation_random_seed`.
//! `CAIRN_SIM_TRACE=1` (with `--nocapture`) prints every step of a run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_blocks::storage::{Faults, MemStorage};
use cairn_schema::{ApiError, ErrorCode, World};
use serde_json::{Value, json};

use super::{api, config, create_body, one_disk_topology};
use crate::client::Client;
use crate::cluster::{Cluster, Config, PoolStorage};
use crate::journal::{Fault, FaultyJournal, RedbJournal};
use crate::volume::engine_name;

const TENANT: &str = "default";
const VOLUMES: [&str; 5] = ["v0", "v1", "v2", "v3", "v4"];
const VOLUME_SNAPSHOTS: [&str; 3] = ["s0", "s1", "s2"];
const APPS: [&str; 4] = ["a0", "a1", "a2", "a3"];
const APP_SNAPSHOTS: [&str; 3] = ["p0", "p1", "p2"];
const MODES: [&str; 4] = ["fast", "safe", "dev", "slow"];

/// The fixed seeds CI runs, each for [`CI_STEPS`] steps.
const CI_SEEDS: [u64; 3] = [1, 2, 3];
const CI_STEPS: usize = 40;

#[actix_rt::test]
async fn simulation_fixed_seeds() {
    for seed in CI_SEEDS {
        Sim::run(seed, CI_STEPS).await;
    }
}

/// A new seed each run unless `CAIRN_SIM_SEED` is set; the seed is printed
/// (cargo shows it when the test fails).
#[actix_rt::test]
async fn simulation_random_seed() {
    let seed = match std::env::var("CAIRN_SIM_SEED") {
        Ok(text) => text.trim().parse().expect("CAIRN_SIM_SEED is a u64"),
        Err(_) => fastrand::u64(..),
    };
    let steps = std::env::var("CAIRN_SIM_STEPS")
        .ok()
        .map(|s| s.trim().parse().expect("CAIRN_SIM_STEPS is a number"))
        .unwrap_or(CI_STEPS);
    Sim::run(seed, steps).await;
}

/// One command the simulation sends, with what it means for the model.
#[derive(Debug, Clone)]
enum Op {
    VolumeCreate {
        name: String,
        mib: u64,
    },
    VolumeDelete {
        name: String,
    },
    VolumeSnapshot {
        name: String,
        snapshot: String,
    },
    VolumeSnapshotDelete {
        name: String,
        snapshot: String,
    },
    VolumeClone {
        name: String,
        snapshot: String,
        target: String,
    },
    VolumeRollback {
        name: String,
        snapshot: String,
    },
    AppCreate {
        name: String,
        replicas: u32,
    },
    AppScale {
        name: String,
        replicas: u32,
    },
    AppConfigSet {
        name: String,
        mode: String,
    },
    AppSnapshot {
        name: String,
        snapshot: String,
    },
    AppSnapshotDelete {
        name: String,
        snapshot: String,
    },
    AppRollback {
        name: String,
        snapshot: String,
    },
    AppClone {
        name: String,
        snapshot: String,
        target: String,
        mode: Option<String>,
    },
    AppDelete {
        name: String,
    },
    /// A request that must be refused (with a client error, never
    /// `internal` or `unavailable`).
    Invalid {
        kind: &'static str,
        verb: &'static str,
        body: Value,
    },
}

impl Op {
    fn request(&self) -> (&'static str, &'static str, Value) {
        match self {
            Op::VolumeCreate { name, mib } => (
                "volume",
                "create",
                json!({"name": name, "size": format!("{mib}Mi")}),
            ),
            Op::VolumeDelete { name } => ("volume", "delete", json!({"name": name})),
            Op::VolumeSnapshot { name, snapshot } => (
                "volume",
                "snapshot",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::VolumeSnapshotDelete { name, snapshot } => (
                "volume",
                "snapshot-delete",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::VolumeClone {
                name,
                snapshot,
                target,
            } => (
                "volume",
                "clone",
                json!({"name": name, "snapshot": snapshot, "target": target}),
            ),
            Op::VolumeRollback { name, snapshot } => (
                "volume",
                "rollback",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::AppCreate { name, replicas } => {
                ("app", "create", create_body(name, *replicas, "1Mi"))
            }
            Op::AppScale { name, replicas } => {
                ("app", "scale", json!({"name": name, "replicas": replicas}))
            }
            Op::AppConfigSet { name, mode } => (
                "app",
                "config-set",
                json!({"name": name, "configmap": "settings", "key": "mode", "value": mode}),
            ),
            Op::AppSnapshot { name, snapshot } => (
                "app",
                "snapshot",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::AppSnapshotDelete { name, snapshot } => (
                "app",
                "snapshot-delete",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::AppRollback { name, snapshot } => (
                "app",
                "rollback",
                json!({"name": name, "snapshot": snapshot}),
            ),
            Op::AppClone {
                name,
                snapshot,
                target,
                mode,
            } => {
                let set: Vec<String> = mode.iter().map(|m| format!("settings.mode={m}")).collect();
                (
                    "app",
                    "clone",
                    json!({"name": name, "snapshot": snapshot, "target": target, "set": set}),
                )
            }
            Op::AppDelete { name } => ("app", "delete", json!({"name": name})),
            Op::Invalid { kind, verb, body } => (kind, verb, body.clone()),
        }
    }
}

/// What the acknowledged replies say the plane holds (standalone volumes
/// and apps of the one tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    volumes: BTreeMap<String, VolumeModel>,
    apps: BTreeMap<String, AppModel>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct VolumeModel {
    size_bytes: u64,
    snapshots: BTreeSet<String>,
}

/// An app's replica count and its `settings.mode`, now and in each snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AppModel {
    replicas: u32,
    mode: String,
    snapshots: BTreeMap<String, (u32, String)>,
}

impl Model {
    /// Folds in the effect of `op`, which the plane acknowledged with `reply`.
    fn apply(&mut self, op: &Op, reply: &Value) -> Result<(), String> {
        match op {
            Op::VolumeCreate { name, mib } => {
                self.volumes.insert(
                    name.clone(),
                    VolumeModel {
                        size_bytes: mib << 20,
                        snapshots: BTreeSet::new(),
                    },
                );
            }
            Op::VolumeDelete { name } => {
                self.volumes.remove(name);
            }
            Op::VolumeSnapshot { name, snapshot } => {
                self.volume(name)?.snapshots.insert(snapshot.clone());
            }
            Op::VolumeSnapshotDelete { name, snapshot } => {
                self.volume(name)?.snapshots.remove(snapshot);
            }
            Op::VolumeClone { name, target, .. } => {
                let size_bytes = self.volume(name)?.size_bytes;
                self.volumes.insert(
                    target.clone(),
                    VolumeModel {
                        size_bytes,
                        snapshots: BTreeSet::new(),
                    },
                );
            }
            Op::VolumeRollback { .. } => {}
            Op::AppCreate { name, replicas } => {
                self.apps.insert(
                    name.clone(),
                    AppModel {
                        replicas: *replicas,
                        mode: "fast".into(),
                        snapshots: BTreeMap::new(),
                    },
                );
            }
            Op::AppScale { name, replicas } => self.app(name)?.replicas = *replicas,
            Op::AppConfigSet { name, mode } => self.app(name)?.mode = mode.clone(),
            Op::AppSnapshot { name, snapshot } => {
                let app = self.app(name)?;
                let now = (app.replicas, app.mode.clone());
                app.snapshots.insert(snapshot.clone(), now);
            }
            Op::AppSnapshotDelete { name, snapshot } => {
                self.app(name)?.snapshots.remove(snapshot);
            }
            Op::AppRollback { name, snapshot } => {
                let app = self.app(name)?;
                let before = (app.replicas, app.mode.clone());
                let (replicas, mode) =
                    app.snapshots.get(snapshot).cloned().ok_or_else(|| {
                        format!("rolled back to {snapshot}, unknown to the model")
                    })?;
                if let Some(safety) = reply["safety_snapshot"].as_str() {
                    app.snapshots.insert(safety.to_owned(), before);
                }
                app.replicas = replicas;
                app.mode = mode;
            }
            Op::AppClone {
                name,
                snapshot,
                target,
                mode,
            } => {
                let (replicas, at) = self
                    .app(name)?
                    .snapshots
                    .get(snapshot)
                    .cloned()
                    .ok_or_else(|| format!("cloned {snapshot}, unknown to the model"))?;
                self.apps.insert(
                    target.clone(),
                    AppModel {
                        replicas,
                        mode: mode.clone().unwrap_or(at),
                        snapshots: BTreeMap::new(),
                    },
                );
            }
            Op::AppDelete { name } => {
                self.apps.remove(name);
            }
            Op::Invalid { .. } => return Err(format!("an invalid request was accepted: {reply}")),
        }
        Ok(())
    }

    /// Folds in what a refused `op` leaves behind: nothing, except the
    /// safety snapshot of an app rollback that failed after taking it (the
    /// `app-rollback` definition compensates it by restoring it, and keeps
    /// it).
    fn refused(&mut self, op: &Op, error: &ApiError) {
        let (kind, verb, body) = op.request();
        let Some(name) = body["name"]
            .as_str()
            .filter(|_| (kind, verb) == ("app", "rollback"))
        else {
            return;
        };
        // "workflow <id> (app-rollback) compensated: step <step> failed …"
        let mut words = error.message.split_whitespace();
        let (Some("workflow"), Some(id), Some("(app-rollback)")) =
            (words.next(), words.next(), words.next())
        else {
            return;
        };
        let step = error
            .message
            .split("step ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next());
        if step != Some("safety-snapshot")
            && let Some(app) = self.apps.get_mut(name)
        {
            let now = (app.replicas, app.mode.clone());
            app.snapshots.insert(format!("safety-{id}"), now);
        }
    }

    fn volume(&mut self, name: &str) -> Result<&mut VolumeModel, String> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| format!("volume {name} acknowledged but unknown to the model"))
    }

    fn app(&mut self, name: &str) -> Result<&mut AppModel, String> {
        self.apps
            .get_mut(name)
            .ok_or_else(|| format!("app {name} acknowledged but unknown to the model"))
    }
}

/// One simulation run.
struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    storage: MemStorage,
    dir: tempfile::TempDir,
    cluster: Option<Cluster>,
    /// The running cluster's journal: the data dir's redb file behind the
    /// fault injector, so a step can fail a commit.
    journal: Option<Arc<FaultyJournal<RedbJournal>>>,
    model: Model,
    /// Every step so far, for the failure message.
    trace: Vec<String>,
}

/// Fails the run with the seed and the last steps.
macro_rules! sim_fail {
    ($sim:expr, $($arg:tt)*) => {
        $sim.fail(format!($($arg)*))
    };
}

impl Sim {
    async fn run(seed: u64, steps: usize) {
        eprintln!(
            "cairn simulation: seed {seed}, {steps} steps (replay: CAIRN_SIM_SEED={seed} CAIRN_SIM_STEPS={steps} cargo test -p cairn-actors --lib simulation_random_seed)"
        );
        let storage = MemStorage::new(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sim = Sim {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            storage,
            dir,
            cluster: None,
            journal: None,
            model: Model::default(),
            trace: Vec::new(),
        };
        sim.start().await;
        for step in 0..steps {
            match sim.rng.u32(0..20) {
                0 => sim.restart(step, false).await,
                1 | 2 => sim.restart(step, true).await,
                3 => {
                    // A command whose pool syncs fail, then a crash: the
                    // process died between a block-engine effect and its
                    // commit (or before answering).
                    let fail_syncs = sim.rng.u32(1..=3);
                    sim.storage.set_faults(Faults {
                        fail_syncs,
                        no_space: false,
                    });
                    sim.command(step, true).await;
                    sim.storage.set_faults(Faults::default());
                    sim.restart(step, true).await;
                }
                4 | 5 => sim.race(step).await,
                6 => sim.failed_commit(step).await,
                _ => sim.command(step, false).await,
            }
            sim.check().await;
        }
        // The end: everything acknowledged survives one more crash.
        sim.restart(steps, true).await;
        sim.check().await;
        sim.cluster.take().expect("running").shutdown().await;
        let count = |what: &str| sim.trace.iter().filter(|t| t.contains(what)).count();
        let races = count(": 3 racing ");
        let acknowledged = sim
            .trace
            .iter()
            .filter(|t| t.contains(" -> ok ") && !t.contains(": 3 racing "))
            .count();
        eprintln!(
            "cairn simulation: seed {seed}: {} commands ({acknowledged} acknowledged), {races} races, {} clean restarts, {} crashes",
            sim.trace.len() - races - count(" + start"),
            count("shutdown + start"),
            count("crash + start"),
        );
        if std::env::var_os("CAIRN_SIM_TRACE").is_some() {
            eprintln!("{}", sim.trace.join("\n"));
        }
    }

    fn config(&self) -> Config {
        let mut config = config(
            self.dir.path().to_owned(),
            Some(one_disk_topology("1Ti").as_str()),
        );
        config.storage = Some(PoolStorage(Arc::new(self.storage.clone())));
        config
    }

    async fn start(&mut self) {
        let config = self.config();
        let journal = match RedbJournal::open(
            &config.data_dir.join("journal.redb"),
            config.limits.sanitize().journal,
        ) {
            Ok(j) => Arc::new(FaultyJournal::new(j)),
            Err(e) => sim_fail!(self, "the journal does not open: {e}"),
        };
        match Cluster::start_with_journal(config, journal.clone()).await {
            Ok(cluster) => {
                self.cluster = Some(cluster);
                self.journal = Some(journal);
            }
            Err(e) => sim_fail!(self, "the control plane does not start: {e}"),
        }
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("the cluster is running")
    }

    fn client(&self) -> Client {
        let mut client = Client::new(self.cluster().services.bus.clone(), TENANT);
        client.user = "sim".into();
        client
    }

    async fn call(&self, kind: &str, verb: &str, body: &Value) -> Result<Value, ApiError> {
        api(self.client().call(kind, verb, body).await)
    }

    /// A command under the request id `sim-<step>`: its workflow id (and
    /// so a rollback's safety snapshot name) follows from the seed too.
    async fn command_call(
        &self,
        step: usize,
        kind: &str,
        verb: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let id = format!("sim-{step}");
        api(self.client().call_with_id(kind, verb, body, &id).await)
    }

    /// A query that must succeed.
    async fn query(&self, kind: &str, verb: &str, body: Value) -> Value {
        match self.call(kind, verb, &body).await {
            Ok(reply) => reply,
            Err(e) => sim_fail!(self, "{kind}.{verb} {body} failed: {e:?}"),
        }
    }

    fn fail(&self, message: String) -> ! {
        let from = self.trace.len().saturating_sub(25);
        panic!(
            "simulation seed {seed} failed: {message}\n(replay: CAIRN_SIM_SEED={seed} cargo test -p cairn-actors --lib simulation_random_seed)\nlast steps:\n  {}",
            self.trace[from..].join("\n  "),
            seed = self.seed,
        );
    }

    /// A clean restart, or a crash: the actors stop with no checkpoint and
    /// the pool loses what it had not synced.
    async fn restart(&mut self, step: usize, crash: bool) {
        self.trace.push(format!(
            "{step}: {}",
            if crash {
                "crash + start"
            } else {
                "shutdown + start"
            }
        ));
        let cluster = self.cluster.take().expect("running");
        // Let go of the journal first: the stop waits for its last handle
        // (and redb's file lock goes with it).
        self.journal = None;
        let pool = Arc::downgrade(&cluster.services.pool);
        if crash {
            cluster.crash().await;
        } else {
            cluster.shutdown().await;
        }
        // Two pools on one storage would be two writers: the old one must
        // be gone before power is "lost" and the next one opens.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.strong_count() > 0 {
            if std::time::Instant::now() >= deadline {
                sim_fail!(self, "the stopped cluster still holds its pool");
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if crash {
            self.storage.crash();
        }
        self.start().await;
    }

    /// One random command whose `k`th journal append (1 to 3) fails to
    /// commit: it is refused or acknowledged (a retried step), and either
    /// way the caller's cleanup leaves the pool equal to the journal and
    /// nothing the model does not know of.
    async fn failed_commit(&mut self, step: usize) {
        let journal = self.journal.clone().expect("running");
        let k = self.rng.u64(1..=3);
        journal.inject_at(journal.appends() + k, Fault::FailCommit);
        self.trace
            .push(format!("{step}: commit {k} of the next command fails"));
        self.command(step, true).await;
        journal.clear_scheduled();
    }

    /// One random command; its acknowledged effect goes into the model.
    /// With `faulty`, the pool's syncs fail: any refusal is allowed, and
    /// an acknowledged effect must still survive.
    async fn command(&mut self, step: usize, faulty: bool) {
        let op = self.pick();
        let (kind, verb, body) = op.request();
        let result = self.command_call(step, kind, verb, &body).await;
        self.trace.push(format!(
            "{step}: {}{kind}.{verb} {body} -> {}",
            if faulty { "(faults) " } else { "" },
            match &result {
                Ok(reply) => format!("ok {reply}"),
                Err(e) => format!("{:?}: {}", e.code, e.message),
            }
        ));
        match result {
            Ok(reply) => {
                if let Err(e) = self.model.apply(&op, &reply) {
                    sim_fail!(self, "{e}");
                }
            }
            Err(e) if !faulty && matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable) => {
                sim_fail!(
                    self,
                    "{kind}.{verb} failed with {:?} and no fault injected",
                    e.code
                )
            }
            Err(e) => self.model.refused(&op, &e),
        }
    }

    /// One random command sent three times at once under different
    /// request ids (different clients racing). Only commands whose copies
    /// all have the same effect are raced (not an app rollback: each
    /// accepted copy takes its own safety snapshot); the effect counts
    /// once if any copy was acknowledged.
    async fn race(&mut self, step: usize) {
        let op = loop {
            let op = self.pick();
            if op.request().1 != "rollback" || op.request().0 != "app" {
                break op;
            }
        };
        let (kind, verb, body) = op.request();
        let client = self.client();
        let results = futures::future::join_all((0..3).map(|copy| {
            let id = format!("sim-{step}-{copy}");
            let (client, body) = (&client, &body);
            async move { api(client.call_with_id(kind, verb, body, &id).await) }
        }))
        .await;
        let outcomes: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(reply) => format!("ok {reply}"),
                Err(e) => format!("{:?}: {}", e.code, e.message),
            })
            .collect();
        self.trace.push(format!(
            "{step}: 3 racing {kind}.{verb} {body} -> {}",
            outcomes.join(" | ")
        ));
        for result in &results {
            if let Err(e) = result
                && matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable)
            {
                sim_fail!(self, "a racing {kind}.{verb} failed with {:?}", e.code);
            }
        }
        if let Some(reply) = results.iter().find_map(|r| r.as_ref().ok()) {
            if let Err(e) = self.model.apply(&op, reply) {
                sim_fail!(self, "{e}");
            }
        } else if let Some(Err(e)) = results.first() {
            self.model.refused(&op, e);
        }
    }

    /// Mostly a name the model knows (so commands mostly succeed), else any.
    fn name_from(&mut self, known: Vec<String>, all: &[&str]) -> String {
        if !known.is_empty() && self.rng.u32(0..8) != 0 {
            known[self.rng.usize(0..known.len())].clone()
        } else {
            all[self.rng.usize(0..all.len())].to_owned()
        }
    }

    fn volume_name(&mut self) -> String {
        let known = self.model.volumes.keys().cloned().collect();
        self.name_from(known, &VOLUMES)
    }

    fn app_name(&mut self) -> String {
        let known = self.model.apps.keys().cloned().collect();
        self.name_from(known, &APPS)
    }

    fn volume_snapshot(&mut self, volume: &str) -> String {
        let known = self
            .model
            .volumes
            .get(volume)
            .map(|v| v.snapshots.iter().cloned().collect())
            .unwrap_or_default();
        self.name_from(known, &VOLUME_SNAPSHOTS)
    }

    fn app_snapshot(&mut self, app: &str) -> String {
        let known = self
            .model
            .apps
            .get(app)
            .map(|a| a.snapshots.keys().cloned().collect())
            .unwrap_or_default();
        self.name_from(known, &APP_SNAPSHOTS)
    }

    fn pick(&mut self) -> Op {
        let any = |rng: &mut fastrand::Rng, all: &[&str]| all[rng.usize(0..all.len())].to_owned();
        match self.rng.u32(0..24) {
            0..=2 => Op::VolumeCreate {
                name: any(&mut self.rng, &VOLUMES),
                mib: self.rng.u64(1..=4),
            },
            3 => Op::VolumeDelete {
                name: self.volume_name(),
            },
            4 | 5 => {
                let name = self.volume_name();
                Op::VolumeSnapshot {
                    name,
                    snapshot: any(&mut self.rng, &VOLUME_SNAPSHOTS),
                }
            }
            6 => {
                let name = self.volume_name();
                let snapshot = self.volume_snapshot(&name);
                Op::VolumeSnapshotDelete { name, snapshot }
            }
            7 | 8 => {
                let name = self.volume_name();
                let snapshot = self.volume_snapshot(&name);
                Op::VolumeClone {
                    name,
                    snapshot,
                    target: any(&mut self.rng, &VOLUMES),
                }
            }
            9 => {
                let name = self.volume_name();
                let snapshot = self.volume_snapshot(&name);
                Op::VolumeRollback { name, snapshot }
            }
            10 | 11 => Op::AppCreate {
                name: any(&mut self.rng, &APPS),
                replicas: self.rng.u32(1..=3),
            },
            12 => Op::AppScale {
                name: self.app_name(),
                replicas: self.rng.u32(0..=3),
            },
            13 => Op::AppConfigSet {
                name: self.app_name(),
                mode: any(&mut self.rng, &MODES),
            },
            14 | 15 => {
                let name = self.app_name();
                Op::AppSnapshot {
                    name,
                    snapshot: any(&mut self.rng, &APP_SNAPSHOTS),
                }
            }
            16 => {
                let name = self.app_name();
                let snapshot = self.app_snapshot(&name);
                Op::AppSnapshotDelete { name, snapshot }
            }
            17 | 18 => {
                let name = self.app_name();
                let snapshot = self.app_snapshot(&name);
                Op::AppRollback { name, snapshot }
            }
            19 | 20 => {
                let name = self.app_name();
                let snapshot = self.app_snapshot(&name);
                let mode = self.rng.bool().then(|| any(&mut self.rng, &MODES));
                Op::AppClone {
                    name,
                    snapshot,
                    target: any(&mut self.rng, &APPS),
                    mode,
                }
            }
            21 => Op::AppDelete {
                name: self.app_name(),
            },
            _ => self.invalid(),
        }
    }

    /// A request the plane must refuse whatever its state.
    fn invalid(&mut self) -> Op {
        let volume = self.volume_name();
        let app = self.app_name();
        let (kind, verb, body) = match self.rng.u32(0..7) {
            0 => ("volume", "create", json!({"name": "v9", "size": 0})),
            1 => (
                "volume",
                "create",
                json!({"name": "Bad Name!", "size": "1Mi"}),
            ),
            2 => (
                "volume",
                "snapshot",
                json!({"name": volume, "snapshot": "../up"}),
            ),
            3 => ("app", "create", json!({"manifest": "kind: Nonsense\n"})),
            4 => (
                "app",
                "config-set",
                json!({"name": app, "configmap": "missing", "key": "k", "value": "v"}),
            ),
            5 => (
                "app",
                "rollback",
                json!({"name": app, "snapshot": "never-taken"}),
            ),
            _ => (
                "volume",
                "clone",
                json!({"name": volume, "snapshot": "never-taken", "target": "v9"}),
            ),
        };
        Op::Invalid { kind, verb, body }
    }

    /// The three checks of the module docs.
    async fn check(&self) {
        let verify = self.query("events", "verify", json!({})).await;
        if verify["ok"] != true {
            sim_fail!(self, "events verify: {verify}");
        }
        let world = match self.cluster().services.journal.replay_full() {
            Ok(full) => full.world,
            Err(e) => sim_fail!(self, "replaying the journal: {e}"),
        };
        self.check_served(&world).await;
        self.check_engine(&world);
        self.check_model().await;
    }

    /// (1) The fold of the journal equals what the actors serve.
    async fn check_served(&self, world: &World) {
        let listed = self.query("volume", "list", json!({})).await;
        let served: BTreeMap<String, Value> = listed["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let snapshots: Vec<Value> = v["snapshots"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| json!([s["name"], s["seq"]]))
                    .collect();
                let name = v["name"].as_str().unwrap_or_default().to_owned();
                let view = json!({"size_bytes": v["size_bytes"], "origin": v["origin"],
                    "rolled_back_to": v["rolled_back_to"], "snapshots": snapshots});
                (name, view)
            })
            .collect();
        let folded: BTreeMap<String, Value> = world
            .volumes
            .iter()
            .filter(|((tenant, _), state)| tenant == TENANT && state.exists())
            .map(|((_, name), state)| {
                let snapshots: Vec<Value> = state
                    .snapshots
                    .iter()
                    .map(|(s, meta)| json!([s, meta.seq]))
                    .collect();
                let view = json!({"size_bytes": state.size_bytes, "origin": state.origin,
                    "rolled_back_to": state.rolled_back_to, "snapshots": snapshots});
                (name.clone(), view)
            })
            .collect();
        if served != folded {
            sim_fail!(
                self,
                "volume.list differs from the journal's fold:\nserved {served:#?}\nfolded {folded:#?}"
            );
        }

        let listed = self.query("app", "list", json!({})).await;
        let mut served = BTreeMap::new();
        for app in listed["apps"].as_array().into_iter().flatten() {
            let name = app["name"].as_str().unwrap_or_default().to_owned();
            let got = self.query("app", "get", json!({"name": name})).await;
            if &got != app {
                sim_fail!(self, "app.get {name} differs from app.list:\n{got}\n{app}");
            }
            let snapshots = self.query("app", "snapshots", json!({"name": name})).await;
            // Served in the order they were taken; the fold keys them by name.
            let snapshots: BTreeSet<&str> = snapshots["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str())
                .collect();
            let volumes: Vec<Value> = app["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v["name"].clone())
                .collect();
            served.insert(
                name,
                json!({"created_seq": app["created_seq"], "updated_seq": app["updated_seq"],
                    "volumes": volumes, "snapshots": snapshots}),
            );
        }
        let folded: BTreeMap<String, Value> = world
            .apps
            .iter()
            .filter(|((tenant, _), state)| tenant == TENANT && state.created_seq != 0)
            .map(|((_, name), state)| {
                let volumes: Vec<String> = state
                    .volumes
                    .keys()
                    .map(|pvc| cairn_schema::app::volume_name(name, pvc))
                    .collect();
                let snapshots: Vec<&String> = state.snapshots.keys().collect();
                let view = json!({"created_seq": state.created_seq, "updated_seq": state.updated_seq,
                    "volumes": volumes, "snapshots": snapshots});
                (name.clone(), view)
            })
            .collect();
        if served != folded {
            sim_fail!(
                self,
                "app.list/app.snapshots differ from the journal's fold:\nserved {served:#?}\nfolded {folded:#?}"
            );
        }
    }

    /// (2) The block engine holds exactly the journal's volumes and
    /// snapshots.
    fn check_engine(&self, world: &World) {
        let pool = &self.cluster().services.pool;
        let engine: BTreeMap<String, BTreeSet<String>> = pool
            .list_volumes()
            .into_iter()
            .map(|name| {
                let snapshots = match pool.volume_info(&name) {
                    Ok(info) => info.snapshots.into_iter().map(|s| s.name).collect(),
                    Err(e) => sim_fail!(self, "the pool lists {name} but cannot describe it: {e}"),
                };
                (name, snapshots)
            })
            .collect();
        let journal: BTreeMap<String, BTreeSet<String>> = world
            .volumes
            .iter()
            .filter(|(_, state)| state.exists())
            .map(|((tenant, name), state)| {
                (
                    engine_name(tenant, name),
                    state.snapshots.keys().cloned().collect(),
                )
            })
            .collect();
        if engine != journal {
            let orphans: Vec<&String> = engine
                .keys()
                .filter(|n| !journal.contains_key(*n))
                .collect();
            let missing: Vec<&String> = journal
                .keys()
                .filter(|n| !engine.contains_key(*n))
                .collect();
            sim_fail!(
                self,
                "the block engine differs from the journal: orphans {orphans:?}, missing {missing:?}\nengine {engine:#?}\njournal {journal:#?}"
            );
        }
    }

    /// (3) What the acknowledged replies built equals what is served.
    async fn check_model(&self) {
        let listed = self.query("volume", "list", json!({})).await;
        let mut volumes = BTreeMap::new();
        for v in listed["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default();
            if name.contains('/') {
                continue; // an app's volume: the app's part of the model
            }
            volumes.insert(
                name.to_owned(),
                VolumeModel {
                    size_bytes: v["size_bytes"].as_u64().unwrap_or_default(),
                    snapshots: v["snapshots"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["name"].as_str().map(str::to_owned))
                        .collect(),
                },
            );
        }
        let listed = self.query("app", "list", json!({})).await;
        let mut apps = BTreeMap::new();
        for app in listed["apps"].as_array().into_iter().flatten() {
            let name = app["name"].as_str().unwrap_or_default().to_owned();
            let replicas = app["workloads"][0]["replicas"].as_u64().unwrap_or(u64::MAX) as u32;
            let mode = app["configmaps"]["settings"]["mode"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned();
            let listed = self.query("app", "snapshots", json!({"name": name})).await;
            let snapshots = listed["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let name = s["name"].as_str().unwrap_or_default().to_owned();
                    let replicas =
                        s["workloads"][0]["replicas"].as_u64().unwrap_or(u64::MAX) as u32;
                    // The model's value; a snapshot's ConfigMaps are checked
                    // through rollback and clone.
                    let mode = self
                        .model
                        .apps
                        .get(app["name"].as_str().unwrap_or_default())
                        .and_then(|a| a.snapshots.get(&name))
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default();
                    (name, (replicas, mode))
                })
                .collect();
            apps.insert(
                name,
                AppModel {
                    replicas,
                    mode,
                    snapshots,
                },
            );
        }
        let served = Model { volumes, apps };
        if served != self.model {
            sim_fail!(
                self,
                "the plane lost or invented an acknowledged effect:\nserved {served:#?}\nmodel {:#?}",
                self.model
            );
        }
    }
}
