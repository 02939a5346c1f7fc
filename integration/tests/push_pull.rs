//! Push and pull through Cairn itself, as a platform engineer would: the
//! `cairn` CLI against `cairn up` on a private nats-server, an S3 repository
//! on a private `s3s-fs`, data written and compared over NBD with
//! qemu-io/qemu-img. The site burns down (the data dir is deleted), a fresh
//! Cairn pulls the app back whole; drift is repaired in place; a dead S3, a
//! wrong key, a missing snapshot and a corrupted pack are clear errors that
//! change nothing. Skips without s3s-fs or qemu, unless `CAIRN_REQUIRE_TOOLS`.

use std::path::Path;
use std::process::Command;

use cairn_integration::{Node, S3_SECRET, S3sFs, have_tool, nats, noise, qemu_io};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn manifest() -> &'static str {
    r#"
apiVersion: cairn.dev/v1
kind: App
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-config}
data: {max_connections: "100"}
---
apiVersion: v1
kind: Secret
metadata: {name: db-password}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Service
metadata: {name: db, labels: {app: shop}}
spec: {ports: [{port: 5432}], selector: {app: shop}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, labels: {app: shop}}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: pg, image: "postgres:16"}]}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {resources: {requests: {storage: 24Mi}}}
"#
}

/// Writes a volume whole: random, zero and repeated regions.
fn fill(node: &Node, export: &str, seed: u64, dir: &Path) {
    let mut data = noise(seed, 8 * MIB);
    data.extend(std::iter::repeat_n(0u8, 8 * MIB));
    let block = noise(seed + 100, 64 << 10);
    while data.len() < 24 * MIB {
        data.extend_from_slice(&block);
    }
    let file = dir.join(format!("fill-{seed}.raw"));
    std::fs::write(&file, &data).unwrap();
    let out = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&file)
        .arg(node.nbd_uri(export))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Copies an export into a local file.
fn save(node: &Node, export: &str, to: &Path) {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(node.nbd_uri(export))
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `qemu-img compare` of a saved file and an export.
fn same(node: &Node, file: &Path, export: &str) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(file)
        .arg(node.nbd_uri(export))
        .output()
        .unwrap();
    out.status.success()
}

/// The app's objects (config and metadata) as `app get` shows them.
fn objects(node: &Node, app: &str) -> Value {
    node.json(&["app", "get", app])["objects"].clone()
}

fn tools() -> bool {
    have_tool("s3s-fs") && have_tool("qemu-img") && have_tool("qemu-io")
}

#[test]
fn an_app_pushed_to_s3_is_pulled_whole_into_a_fresh_cairn_and_repairs_drift() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3sFs::start(&dir.path().join("s3"));
    let nats = nats();
    let key = dir.path().join("offsite.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let key = key.to_str().unwrap();
    let url = s3.url();

    // Site one: an app with data, config drift from the manifest, a snapshot.
    let site1 = dir.path().join("site1");
    let node = Node::start(&site1, &nats.url);
    let app_file = dir.path().join("shop.yaml");
    std::fs::write(&app_file, manifest()).unwrap();
    node.ok(&["app", "create", "-f", app_file.to_str().unwrap()]);
    fill(&node, "shop/data-db-0", 1, dir.path());
    fill(&node, "shop/data-db-1", 2, dir.path());
    node.ok(&[
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=250",
    ]);
    node.ok(&[
        "app",
        "snapshot",
        "shop",
        "nightly",
        "-m",
        "before the fire",
    ]);

    let added = node.ok(&["repo", "add", "offsite", &url, "--key-file", key]);
    assert!(added.contains("created"), "{added}");
    // The secret key never reaches the journal or the listing.
    let listed = node.json(&["repo", "list"]);
    let shown = listed["repos"][0]["url"].as_str().unwrap();
    assert!(
        shown.contains("REDACTED") && !shown.contains(S3_SECRET),
        "{shown}"
    );
    let journal = node.ok(&["events", "--json"]);
    assert!(journal.contains("RepoAdded") && !journal.contains(S3_SECRET));

    let out = node.cli(&["app", "push", "shop@nightly", "offsite"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    // Not a terminal: progress comes as plain lines.
    assert!(stderr.contains("push shop@nightly:"), "{stderr}");
    let pushed = String::from_utf8_lossy(&out.stdout);
    assert!(
        pushed.contains("pushed shop@nightly to offsite"),
        "{pushed}"
    );
    let ls = node.json(&["repo", "ls", "offsite"]);
    assert_eq!(ls["snapshots"].as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls["snapshots"][0]["volumes"].as_array().unwrap().len(), 2);
    let flows = node.json(&["workflow", "list", "--app", "shop"]);
    let push_flow = flows["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "app-push")
        .unwrap_or_else(|| panic!("no app-push workflow in {flows}"));
    assert_eq!(push_flow["status"], "completed", "{push_flow}");

    let saved0 = dir.path().join("db-0.raw");
    let saved1 = dir.path().join("db-1.raw");
    save(&node, "shop/data-db-0@nightly", &saved0);
    save(&node, "shop/data-db-1@nightly", &saved1);
    let objects_before = objects(&node, "shop");

    // The fire: the node and its whole data dir are gone.
    node.stop();
    std::fs::remove_dir_all(&site1).unwrap();

    // Site two: a fresh Cairn that never saw the app.
    let site2 = dir.path().join("site2");
    let node = Node::start(&site2, &nats.url);
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "77".repeat(32)).unwrap();
    let e = node.fails(&[
        "repo",
        "add",
        "offsite",
        &url,
        "--key-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(e.contains("wrong_key"), "{e}");
    assert_eq!(node.json(&["repo", "list"])["repos"], Value::Array(vec![]));
    let added = node.ok(&["repo", "add", "offsite", &url, "--key-file", key]);
    assert!(added.contains("registered"), "{added}");

    let e = node.fails(&["app", "pull", "offsite", "shop@no-such"]);
    assert!(e.contains("not_found"), "{e}");
    assert!(node.fails(&["app", "get", "shop"]).contains("not_found"));

    let out = node.cli(&["app", "pull", "offsite", "shop@nightly"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pull failed: {stderr}");
    assert!(stderr.contains("pull shop@nightly:"), "{stderr}");
    assert!(same(&node, &saved0, "shop/data-db-0"), "db-0 differs");
    assert!(same(&node, &saved1, "shop/data-db-1"), "db-1 differs");
    assert_eq!(objects(&node, "shop"), objects_before);
    let snaps = node.json(&["app", "snapshots", "shop"]);
    assert!(snaps.to_string().contains("nightly"), "{snaps}");

    // Drift on site two: data, config and replicas; a pull repairs all.
    let junk = qemu_io(&node.nbd_uri("shop/data-db-0"), "write -P 0x66 4M 2M");
    assert!(junk.status.success());
    node.ok(&[
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=5",
    ]);
    node.ok(&["app", "scale", "shop", "--replicas", "3"]);
    assert!(!same(&node, &saved0, "shop/data-db-0"));
    let repaired = node.json(&["app", "pull", "offsite", "shop@nightly"]);
    // Only the chunks the junk write touched are fetched again.
    let written = repaired["written_chunks"].as_u64().unwrap();
    let unchanged = repaired["unchanged_chunks"].as_u64().unwrap();
    assert!(written > 0 && unchanged > written, "{repaired}");
    assert!(same(&node, &saved0, "shop/data-db-0"), "db-0 not repaired");
    assert!(same(&node, &saved1, "shop/data-db-1"));
    assert_eq!(objects(&node, "shop"), objects_before);
    let snaps = node.json(&["app", "snapshots", "shop"]).to_string();
    assert!(snaps.contains("safety-pull-shop-"), "{snaps}");

    // A dead S3: a clear error, the cluster keeps serving, and the push
    // completes once the server is back; the repo checks clean.
    node.ok(&["app", "snapshot", "shop", "after-repair"]);
    let packs_dir = s3.object_path("packs");
    let first_packs: Vec<_> = std::fs::read_dir(&packs_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    s3.kill();
    let e = node.fails(&["app", "push", "shop@after-repair", "offsite"]);
    assert!(e.contains("unavailable"), "{e}");
    node.ok(&["request", "system.ping"]);
    s3.start_again();
    let pushed = node.json(&["app", "push", "shop@after-repair", "offsite"]);
    // The repaired data is nightly's: every chunk is already in the repo.
    assert!(pushed["parent"].is_string(), "{pushed}");
    assert_eq!(pushed["new_chunks"], 0, "{pushed}");
    assert!(node.ok(&["repo", "check", "offsite"]).contains(": ok"));

    // A flipped byte in a pack: check and pull name the chunk, and the
    // failed pull leaves no app behind.
    let pack = &first_packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(pack, &bytes).unwrap();
    let out = node.cli(&["repo", "check", "offsite"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("DAMAGED") && report.contains("chunk "),
        "{report}"
    );
    let e = node.fails(&[
        "app",
        "pull",
        "offsite",
        "shop@nightly",
        "--as",
        "shop-copy",
    ]);
    assert!(e.contains("corrupted") && e.contains("chunk "), "{e}");
    assert!(
        node.fails(&["app", "get", "shop-copy"])
            .contains("not_found")
    );

    let verify = node.cli(&["events", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}
