//! Control-plane tests without processes: the whole control plane (bus,
//! journal, block pool, gateway, actors) runs in this test's process, on
//! the in-process bus, with its data dir in a tempdir. No nats-server, no
//! `cairn` binary, no qemu.
//!
//! [`Plane`] is the shared harness; one file per actor holds its tests:
//! every command's success and an error reply, and racing requests.
//! Tests never assert timings: racing requests are started together and
//! only their outcomes are checked. The journal is the in-memory twin
//! behind the fault-injecting wrapper ([`Plane::journal`]), so a test can
//! fail a commit; the block pool is on disk in the tempdir.

mod app;
mod crash_steps;
mod gateway;
mod journal_faults;
mod node;
mod placement;
mod repo;
mod saga;
mod sim;
mod volume;
mod workflow;

use std::path::PathBuf;
use std::sync::Arc;

use cairn_schema::{ApiError, ErrorCode};
use serde_json::{Value, json};

use crate::client::{self, Client};
use crate::clock::SystemClock;
use crate::cluster::{BusChoice, Cluster, Config};
use crate::journal::{FaultyJournal, MemJournal};

/// One in-process control plane and its data dir.
pub struct Plane {
    pub cluster: Cluster,
    /// The plane's journal: inject faults here.
    pub journal: Arc<FaultyJournal<MemJournal>>,
    topology: Option<String>,
    _dir: tempfile::TempDir,
}

/// One node `n1` in rack `r1`, with one ssd disk `d1` of `capacity`.
pub fn one_disk_topology(capacity: &str) -> String {
    format!(
        "kind: Topology\nnodes:\n  - {{name: n1, rack: r1, datacenter: dc1, disks: [{{name: d1, media: ssd, capacity: {capacity}}}]}}\n"
    )
}

impl Plane {
    /// A control plane with no topology (this process is the only node).
    pub async fn start() -> Plane {
        Plane::start_with(None).await
    }

    /// A control plane with the `kind: Topology` document `topology`.
    pub async fn start_with(topology: Option<&str>) -> Plane {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path().to_owned(), topology);
        let journal = Arc::new(FaultyJournal::tearing(MemJournal::new(
            config.limits.journal,
            Arc::new(SystemClock),
        )));
        let cluster = Cluster::start_with_journal(config, journal.clone())
            .await
            .expect("the control plane starts");
        Plane {
            cluster,
            journal,
            topology: topology.map(str::to_owned),
            _dir: dir,
        }
    }

    /// Kills the control plane like a crashed process (no checkpoints) and
    /// starts a new one on the same data dir and the same journal
    /// `MemDisk`: the journal keeps only what reached that disk (a torn
    /// last frame is dropped), start-up reconciles the pool with it and
    /// resumes open workflows. The new wrapper has no faults planned.
    pub async fn restart(self) -> Plane {
        let Plane {
            cluster,
            journal,
            topology,
            _dir: dir,
        } = self;
        // Abandoned, not drained: a request stuck on a journal that died
        // at a tear is never answered, as in a killed process.
        cluster.abandon().await;
        let config = config(dir.path().to_owned(), topology.as_deref());
        let reopened = MemJournal::open(
            journal.inner().disk(),
            config.limits.journal,
            Arc::new(SystemClock),
        )
        .expect("the journal's disk reopens after a crash");
        drop(journal);
        let journal = Arc::new(FaultyJournal::tearing(reopened));
        let cluster = Cluster::start_with_journal(config, journal.clone())
            .await
            .expect("the control plane restarts after a crash");
        Plane {
            cluster,
            journal,
            topology,
            _dir: dir,
        }
    }

    pub fn client(&self, tenant: &str) -> Client {
        let mut client = Client::new(self.cluster.services.bus.clone(), tenant);
        client.user = "tester".into();
        client
    }

    /// One command of the default tenant, as a reply or an [`ApiError`].
    pub async fn call(&self, kind: &str, verb: &str, body: Value) -> Result<Value, ApiError> {
        self.call_as("default", kind, verb, body).await
    }

    /// One command of `tenant`.
    pub async fn call_as(
        &self,
        tenant: &str,
        kind: &str,
        verb: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        api(self.client(tenant).call(kind, verb, &body).await)
    }

    /// One command under a chosen request id (a retry reuses it).
    pub async fn call_with_id(
        &self,
        kind: &str,
        verb: &str,
        body: Value,
        id: &str,
    ) -> Result<Value, ApiError> {
        api(self
            .client("default")
            .call_with_id(kind, verb, &body, id)
            .await)
    }

    /// The block engine's own volume names (not the journal's view).
    pub fn engine_volumes(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cluster
            .services
            .pool
            .list_volumes()
            .into_iter()
            .collect();
        names.sort();
        names
    }

    pub async fn stop(self) {
        let Plane {
            cluster,
            journal,
            _dir: dir,
            ..
        } = self;
        // The shutdown waits until nothing else holds the journal: this
        // handle would hold it to the end of the wait.
        drop(journal);
        cluster.shutdown().await;
        drop(dir);
    }
}

fn config(data_dir: PathBuf, topology: Option<&str>) -> Config {
    Config {
        data_dir,
        bus: BusChoice::Local,
        nbd: None,
        key_file: None,
        disks: Vec::new(),
        fuse: None,
        topology: topology
            .map(|t| cairn_placement::Topology::from_yaml(t).expect("test topology parses")),
        limits: crate::Limits::default(),
        security: crate::security::Security::default(),
        storage: None,
    }
}

fn api(result: Result<Value, client::Error>) -> Result<Value, ApiError> {
    result.map_err(|e| match e {
        client::Error::Api(e) => e,
        other => panic!("not an API answer: {other}"),
    })
}

/// Asserts `result` is an error with `code`, and returns its message.
#[track_caller]
pub fn refused(result: Result<Value, ApiError>, code: ErrorCode) -> String {
    match result {
        Err(e) if e.code == code => e.message,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// An app manifest: one StatefulSet `db` of `replicas`, each with a
/// `data` claim of `storage`, and a ConfigMap `settings`.
pub fn manifest(name: &str, replicas: u32, storage: &str) -> String {
    format!(
        r#"apiVersion: cairn.dev/v1
kind: App
metadata: {{name: {name}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: fast}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  replicas: {replicas}
  serviceName: db
  template: {{spec: {{containers: [{{name: db, image: "postgres:16"}}]}}}}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec: {{resources: {{requests: {{storage: {storage}}}}}}}
"#
    )
}

/// The body of `app.create` for [`manifest`].
pub fn create_body(name: &str, replicas: u32, storage: &str) -> Value {
    json!({"manifest": manifest(name, replicas, storage)})
}
