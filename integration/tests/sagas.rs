//! App snapshot, rollback, thin clone and user workflows end to end: a real
//! `cairn up` (with its own nats-server), the CLI, and qemu-io as the NBD
//! client that writes and checks the data.
//!
//! - rollback brings both volumes (`data` and `wal`) and the config back;
//!   a clone reads the snapshot while its source changes; a protected
//!   snapshot refuses deletion;
//! - a failing pre-hook and a failing user-workflow step compensate;
//! - 50 app snapshots under a writer that alternates sequence numbers on two
//!   volumes are each a consistent cut;
//! - `kill -9` (an `abort` failpoint) at each saga step, then a restart:
//!   every workflow ends completed or compensated, nothing stays fenced or
//!   orphaned, and `events verify` passes.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use cairn_integration::{Node, have_tool, nats, qemu_io};
use serde_json::Value;

fn require_tools() -> bool {
    for tool in ["nats-server", "qemu-io"] {
        if !have_tool(tool) {
            assert!(
                std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
                "{tool} is missing"
            );
            eprintln!("skipping: {tool} is not installed");
            return false;
        }
    }
    true
}

/// A database-like app: one StatefulSet with `data` and `wal` claims.
fn manifest(name: &str, hooks: &str) -> String {
    format!(
        r#"apiVersion: cairn.dev/v1
kind: App
metadata: {{name: {name}}}
spec:
  hooks:
{hooks}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: db-config, labels: {{app: {name}}}}}
data: {{max_connections: "100"}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, labels: {{app: {name}}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: db, image: "postgres:15"}}]}}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec: {{resources: {{requests: {{storage: 16Mi}}}}}}
    - metadata: {{name: wal}}
      spec: {{resources: {{requests: {{storage: 8Mi}}}}}}
"#
    )
}

fn create_app(node: &Node, name: &str, hooks: &str) {
    let file = node.data_dir.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest(name, hooks)).unwrap();
    node.ok(&["app", "create", "-f", file.to_str().unwrap()]);
}

fn write(node: &Node, export: &str, pattern: u8, len: &str) {
    let out = qemu_io(
        &node.nbd_uri(export),
        &format!("write -P {pattern} 0 {len}"),
    );
    assert!(out.status.success(), "write {export}: {out:?}");
}

/// True if `export` reads `pattern` over its first `len` bytes.
fn reads(node: &Node, export: &str, pattern: u8, len: &str) -> bool {
    let out = qemu_io(&node.nbd_uri(export), &format!("read -P {pattern} 0 {len}"));
    out.status.success()
        && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
}

/// The first byte of an export.
fn first_byte(node: &Node, export: &str) -> u8 {
    let out = qemu_io(&node.nbd_uri(export), "read -v 0 1");
    assert!(out.status.success(), "read {export}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().expect("a dump line");
    u8::from_str_radix(line.split_whitespace().nth(1).expect("a byte"), 16).unwrap()
}

fn snapshot_names(node: &Node, app: &str) -> BTreeSet<String> {
    node.json(&["app", "snapshots", app])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rollback_restores_both_volumes_and_config_and_a_clone_keeps_the_snapshot() {
    if !require_tools() {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &nats.url);
    create_app(&node, "pg", "    {}");
    write(&node, "pg/data-db-0", 0xaa, "1M");
    write(&node, "pg/wal-db-0", 0xbb, "1M");
    let snap = node.json(&["app", "snapshot", "pg", "s1", "-m", "known patterns"]);
    assert_eq!(snap["volumes"].as_array().unwrap().len(), 2);
    let workflow = snap["workflow"].as_str().unwrap().to_owned();

    // Drift: data on both volumes, config, replicas.
    write(&node, "pg/data-db-0", 0xcc, "1M");
    write(&node, "pg/wal-db-0", 0xdd, "1M");
    node.ok(&[
        "app",
        "config",
        "set",
        "pg",
        "db-config.max_connections=500",
    ]);
    node.ok(&["app", "scale", "pg", "--replicas", "2"]);

    let rolled = node.json(&["app", "rollback", "pg", "s1"]);
    assert_eq!(rolled["retired"].as_array().unwrap().len(), 2, "{rolled}");
    assert!(reads(&node, "pg/data-db-0", 0xaa, "1M"));
    assert!(reads(&node, "pg/wal-db-0", 0xbb, "1M"));
    let app = node.json(&["app", "get", "pg"]);
    assert_eq!(app["configmaps"]["db-config"]["max_connections"], "100");
    assert_eq!(app["workloads"][0]["replicas"], 1);
    assert_eq!(app["volumes"].as_array().unwrap().len(), 2);
    // The safety snapshot holds the drifted state, replicas included.
    let safety = rolled["safety_snapshot"].as_str().unwrap();
    assert!(snapshot_names(&node, "pg").contains(safety));
    assert!(reads(&node, &format!("pg/data-db-0@{safety}"), 0xcc, "1M"));

    // Every step of the snapshot workflow is on record.
    let shown = node.json(&["workflow", "show", &workflow]);
    assert_eq!(shown["status"], "completed");
    let steps: Vec<&str> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["completed"; 3]);

    // A thin clone: overrides applied, data shared, independent of writes.
    let clone = node.json(&[
        "app",
        "clone",
        "pg@s1",
        "pg-dev",
        "--set",
        "db-config.max_connections=5",
    ]);
    assert_eq!(clone["cloned"].as_array().unwrap().len(), 2, "{clone}");
    write(&node, "pg/data-db-0", 0xee, "1M");
    assert!(reads(&node, "pg-dev/data-db-0", 0xaa, "1M"));
    assert!(reads(&node, "pg-dev/wal-db-0", 0xbb, "1M"));
    let dev = node.json(&["app", "get", "pg-dev"]);
    assert_eq!(dev["configmaps"]["db-config"]["max_connections"], "5");
    let shown = node.json(&["volume", "show", "pg-dev/data-db-0"]);
    assert!(
        shown["allocated_bytes"].as_u64().unwrap_or(0) < 64 << 10,
        "a clone copies nothing: {shown}"
    );

    // The clone protects its source snapshot.
    let e = failed(&node.cli(&["app", "snapshot-delete", "pg", "s1"]));
    assert!(e.contains("protected") && e.contains("pg-dev"), "{e}");
    assert!(snapshot_names(&node, "pg").contains("s1"));
    node.ok(&["app", "delete", "pg-dev"]);
    node.ok(&["app", "snapshot-delete", "pg", "s1"]);
    node.ok(&["app", "snapshot-delete", "pg", safety]);
    assert!(snapshot_names(&node, "pg").is_empty());
    // The retired replicas went with the last snapshot that held them.
    let volumes = node.json(&["volume", "list"]);
    let names: Vec<&str> = volumes["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg/data-db-0", "pg/wal-db-0"]);
    assert!(node.ok(&["events", "verify"]).contains("intact"));
}

#[test]
fn failing_hooks_and_steps_compensate_and_say_which_step() {
    if !require_tools() {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    // Hooks are off unless the operator grants them to the tenant.
    let node = Node::start_with(
        dir.path(),
        &nats.url,
        &["--hooks".as_ref(), "default".as_ref()],
    );
    let thawed = dir.path().join("thawed");
    create_app(
        &node,
        "pg",
        &format!(
            "    preSnapshot: [{{exec: [sh, -c, 'exit 3']}}]\n    postSnapshot: [{{exec: [touch, '{}']}}]\n    validate: [{{exec: [sh, -c, 'echo not ready; exit 1']}}]",
            thawed.display()
        ),
    );
    let e = failed(&node.cli(&["app", "snapshot", "pg", "s1"]));
    assert!(e.contains("hook_failed") && e.contains("pre-hooks"), "{e}");
    assert!(snapshot_names(&node, "pg").is_empty());

    // A user workflow whose second step fails: the first is compensated.
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        r#"kind: Workflow
metadata: {name: snap-and-check}
spec:
  params: {app: null}
  steps:
    - name: snapshot
      run: app.snapshot-take
      with: {name: "${app}", snapshot: "checked-${workflow.id}"}
      compensate: {run: app.snapshot-drop, with: {name: "${app}", snapshot: "checked-${workflow.id}"}}
    - name: validate
      run: app.hook
      with: {name: "${app}", hook: validate}
      retry: {attempts: 2, backoff: 10ms}
"#,
    )
    .unwrap();
    let out = node.cli(&[
        "workflow",
        "run",
        file.to_str().unwrap(),
        "--param",
        "app=pg",
    ]);
    let e = failed(&out);
    assert!(e.contains("validate") && e.contains("not ready"), "{e}");
    assert!(snapshot_names(&node, "pg").is_empty(), "compensated");
    let list = node.json(&["workflow", "list", "--app", "pg"]);
    let statuses: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["compensated", "compensated"]);
    let id = list["workflows"][0]["id"].as_str().unwrap();
    let shown = node.json(&["workflow", "show", id]);
    assert_eq!(shown["failed_step"], "validate");
    assert_eq!(shown["steps"][1]["attempts"], 2);
    assert_eq!(shown["steps"][0]["state"], "compensated");
    // A missing param is refused before anything runs.
    let e = failed(&node.cli(&["workflow", "run", file.to_str().unwrap()]));
    assert!(e.contains("needs param \"app\""), "{e}");
}

#[test]
fn fifty_app_snapshots_under_writes_are_consistent_cuts() {
    if !require_tools() {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &nats.url);
    create_app(&node, "pg", "    {}");
    let (a, b) = ("pg/data-db-0", "pg/wal-db-0");
    write(&node, a, 0, "4k");
    write(&node, b, 0, "4k");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ua, ub) = (node.nbd_uri(a), node.nbd_uri(b));
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Sequence n goes to data first, then to wal: any instant
            // sees data == wal or data == wal + 1 (mod 256).
            let mut n: u32 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let p = (n % 256) as u8;
                for uri in [&ua, &ub] {
                    let out = qemu_io(uri, &format!("write -P {p} 0 4k"));
                    assert!(out.status.success(), "{out:?}");
                }
            }
            n
        })
    };
    for i in 0..50 {
        node.ok(&["app", "snapshot", "pg", &format!("c{i}")]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..50 {
        let da = first_byte(&node, &format!("{a}@c{i}"));
        let db = first_byte(&node, &format!("{b}@c{i}"));
        assert!(
            da == db || da == db.wrapping_add(1),
            "snapshot c{i} is not one instant: data has {da}, wal has {db}"
        );
        seen.insert(da);
    }
    eprintln!(
        "{writes} writes; the snapshots saw {} distinct sequence numbers",
        seen.len()
    );
    assert!(seen.len() > 1, "the writer ran during the snapshots");
}

/// Waits until no workflow runs.
fn settle(node: &Node) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = node.json(&["workflow", "list"]);
        let all = list["workflows"].as_array().unwrap().clone();
        if all.iter().all(|w| w["status"] != "running") {
            return all;
        }
        assert!(Instant::now() < deadline, "workflows still running: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill_9_at_each_saga_step_leaves_every_workflow_ended_and_nothing_orphaned() {
    if !require_tools() {
        return;
    }
    let nats = nats();
    // (failpoint, the command it interrupts)
    let cases: &[(&str, &[&str])] = &[
        (
            "saga.before.app-snapshot.pre-hooks",
            &["app", "snapshot", "pg", "k1"],
        ),
        (
            "saga.before.app-snapshot.take",
            &["app", "snapshot", "pg", "k2"],
        ),
        ("app.snapshot.after-fence", &["app", "snapshot", "pg", "k3"]),
        (
            "saga.after.app-snapshot.take",
            &["app", "snapshot", "pg", "k4"],
        ),
        (
            "saga.before.app-snapshot.post-hooks",
            &["app", "snapshot", "pg", "k5"],
        ),
        (
            "saga.before.app-rollback.restore",
            &["app", "rollback", "pg", "base"],
        ),
        (
            "saga.after.app-rollback.restore",
            &["app", "rollback", "pg", "base"],
        ),
        (
            "saga.before.app-clone.clone",
            &["app", "clone", "pg@base", "pg-c1"],
        ),
        (
            "saga.after.app-clone.clone",
            &["app", "clone", "pg@base", "pg-c2"],
        ),
        (
            "saga.before.app-snapshot-delete.reclaim",
            &["app", "snapshot-delete", "pg", "k1"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    {
        let node = Node::start(dir.path(), &nats.url);
        create_app(&node, "pg", "    {}");
        write(&node, "pg/data-db-0", 0x11, "64k");
        node.ok(&["app", "snapshot", "pg", "base"]);
        node.stop();
    }
    for (failpoint, command) in cases {
        let spec = format!("{failpoint}=abort");
        let node = Node::start_env(dir.path(), &nats.url, &[], &[("CAIRN_FAILPOINTS", &spec)]);
        // The server dies mid-workflow: the CLI gives up after 5 s.
        let mut args = vec!["--timeout", "5"];
        args.extend_from_slice(command);
        let out = node.cli(&args);
        assert!(
            !out.status.success(),
            "{failpoint}: the process should have died mid-workflow: {out:?}"
        );
        node.kill9();
        let node = Node::start(dir.path(), &nats.url);
        let workflows = settle(&node);
        for w in &workflows {
            assert!(
                matches!(w["status"].as_str(), Some("completed" | "compensated")),
                "{failpoint}: {w}"
            );
        }
        // Nothing fenced: every volume takes a write.
        let volumes = node.json(&["volume", "list"]);
        let names: Vec<String> = volumes["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        for v in &names {
            let out = qemu_io(&node.nbd_uri(v), "write -P 7 1M 4k");
            assert!(
                out.status.success(),
                "{failpoint}: {v} is not writable: {out:?}"
            );
        }
        // Nothing orphaned: every volume belongs to an app, and every app
        // snapshot has all its volume snapshots (and no others exist).
        let apps = node.json(&["app", "list"]);
        let mut owned = BTreeSet::new();
        for app in apps["apps"].as_array().unwrap() {
            let name = app["name"].as_str().unwrap();
            for v in app["volumes"].as_array().unwrap() {
                owned.insert(v["name"].as_str().unwrap().to_owned());
            }
            let snaps = node.json(&["app", "snapshots", name]);
            for s in snaps["snapshots"].as_array().unwrap() {
                for v in s["volumes"].as_array().unwrap() {
                    let v = v.as_str().unwrap();
                    let listed = node.json(&["volume", "snapshots", v]);
                    assert!(
                        listed["snapshots"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x["name"] == s["name"]),
                        "{failpoint}: {v}@{} is missing",
                        s["name"]
                    );
                }
            }
        }
        for v in &names {
            assert!(
                owned.contains(v),
                "{failpoint}: volume {v} belongs to no app"
            );
        }
        assert!(
            node.ok(&["events", "verify"]).contains("intact"),
            "{failpoint}: events verify"
        );
        node.stop();
    }
}
