//! The first hour's rough edges, pinned: the CLI follows a workflow by its
//! id to its real outcome when the server dies mid-saga and comes back
//! (never a silent hang), and `cairn up` stops promptly on SIGTERM when its
//! NATS server is already gone.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_integration::{Node, cairn_bin, nats};

const SHOP: &str = r#"apiVersion: cairn.dev/v1
kind: App
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-config}
data: {max_connections: "100"}
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
      spec: {resources: {requests: {storage: 64Mi}}}
"#;

/// `cairn app snapshot` hung for ten minutes after its server was killed
/// and restarted mid-saga, although the resumed saga had long finished.
#[test]
fn app_snapshot_ends_in_the_workflow_outcome_after_a_server_restart() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let manifest = dir.path().join("shop.yaml");
    std::fs::write(&manifest, SHOP).unwrap();
    // The server dies (like kill -9) right after the snapshot is taken.
    let node = Node::start_env(
        &data,
        &nats.url,
        &[],
        &[("CAIRN_FAILPOINTS", "saga.after.app-snapshot.take=abort")],
    );
    node.ok(&["app", "create", "-f", manifest.to_str().unwrap()]);
    let started = Instant::now();
    let mut cli = Command::new(cairn_bin())
        .args([
            "--nats", &nats.url, "app", "snapshot", "shop", "s1", "-m", "nightly",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the abort, then restart: the saga resumes from the journal.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node
        .log()
        .contains("failpoint saga.after.app-snapshot.take hit")
    {
        assert!(Instant::now() < deadline, "no abort:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill9();
    let node = Node::start(&data, &nats.url);
    // The CLI ends on its own, well before its hour-long default wait.
    let status = loop {
        if let Some(status) = cli.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = cli.kill();
            let _ = cli.wait();
            panic!("cairn app snapshot still waits 120 s after the restart");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    cli.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    cli.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("app shop snapshotted as s1"),
        "{stdout}\n{stderr}"
    );
    let snapshots = node.ok(&["app", "snapshots", "shop"]);
    assert!(
        snapshots.contains("s1") && snapshots.contains("nightly"),
        "{snapshots}"
    );
}

/// With a server that never comes back, the CLI ends at its `--timeout`
/// with an error that names the workflow.
#[test]
fn app_snapshot_times_out_clearly_when_the_server_stays_away() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let manifest = dir.path().join("shop.yaml");
    std::fs::write(&manifest, SHOP).unwrap();
    let node = Node::start_env(
        &data,
        &nats.url,
        &[],
        &[("CAIRN_FAILPOINTS", "saga.after.app-snapshot.take=abort")],
    );
    node.ok(&["app", "create", "-f", manifest.to_str().unwrap()]);
    let out = node.cli(&["--timeout", "8", "app", "snapshot", "shop", "s1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not finish within 8 s") && stderr.contains("cairn workflow show"),
        "{stderr}"
    );
    node.kill9();
}

/// SIGTERM with NATS already gone: `cairn up` stops without waiting out
/// its 30 s drain timeout.
#[test]
fn up_exits_promptly_on_sigterm_when_nats_is_gone() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &nats.url);
    drop(nats);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = node.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(20),
        "cairn up took {took:?} to stop with NATS gone"
    );
}
