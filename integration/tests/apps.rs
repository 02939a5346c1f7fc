//! Apps end to end, against a real nats-server and real NBD clients: an app
//! made from Kubernetes YAML, its volumes served as `<app>/<pvc>`, scale,
//! config drift, history (`app log`, `events replay --at`, `events export`),
//! restart, tenancy, bad input, and an actor that panics being rebuilt from
//! the journal.

use std::ffi::OsStr;

use cairn_integration::{Node, have_tool, nats, qemu_io, verified};
use serde_json::Value;

const SHOP: &str = r#"
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
metadata: {name: db}
spec: {clusterIP: None, ports: [{port: 5432}]}
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
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}
    - metadata: {name: wal}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: db}
spec: {endpoints: [{port: metrics}]}
"#;

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_app_from_kubernetes_yaml_lives_scales_drifts_and_keeps_its_history() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &nats.url);
    let manifest = dir.path().join("shop.yaml");
    std::fs::write(&manifest, SHOP).unwrap();

    let created = node.json(&["app", "create", "-f", manifest.to_str().unwrap()]);
    assert_eq!(
        created["volumes"],
        serde_json::json!([
            "shop/data-db-0",
            "shop/wal-db-0",
            "shop/data-db-1",
            "shop/wal-db-1"
        ])
    );
    let app = node.json(&["app", "get", "shop"]);
    assert_eq!(app["workloads"][0]["replicas"], 2);
    assert_eq!(app["objects"].as_array().unwrap().len(), 6);
    let yaml = node.ok(&["app", "get", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ServiceMonitor"),
        "unknown kinds are kept:\n{yaml}"
    );
    assert!(yaml.contains("image: postgres:16"));

    // The volumes are real block devices, exported as <app>/<pvc>.
    if have_tool("qemu-io") {
        let uri = node.nbd_uri("shop/data-db-1");
        assert!(qemu_io(&uri, "write -P 0x5a 0 1M").status.success());
        assert!(verified(&qemu_io(&uri, "read -P 0x5a 0 1M")));
        assert!(verified(&qemu_io(
            &node.nbd_uri("shop/wal-db-0"),
            "read -P 0 0 1M"
        )));
    }

    let scaled = node.json(&["app", "scale", "shop", "--replicas", "3"]);
    assert_eq!(
        scaled["added"],
        serde_json::json!(["shop/data-db-2", "shop/wal-db-2"])
    );
    let volumes = node.json(&["volume", "list"]);
    assert_eq!(names(&volumes["volumes"]).len(), 6);
    // Scale-in keeps the volumes, like Kubernetes' default retention.
    node.ok(&["app", "scale", "shop", "--replicas", "1"]);
    let app = node.json(&["app", "get", "shop"]);
    let retained: Vec<bool> = app["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["retained"].as_bool().unwrap())
        .collect();
    assert_eq!(retained.iter().filter(|r| **r).count(), 4);
    node.ok(&["app", "scale", "shop", "--replicas", "2"]);

    node.ok(&[
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=250",
    ]);
    let app = node.json(&["app", "get", "shop"]);
    assert_eq!(app["configmaps"]["db-config"]["max_connections"], "250");

    // History: the log, newest first, and time travel to before the drift.
    let log = node.json(&["app", "log", "shop"]);
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "AppConfigSet");
    assert_eq!(*kinds.last().unwrap(), "VolumeCreated");
    assert!(kinds.contains(&"AppCreated") && kinds.contains(&"AppScaled"));
    let created_seq = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "AppCreated")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let then = node.json(&[
        "events",
        "replay",
        "--at",
        &created_seq.to_string(),
        "--app",
        "shop",
    ]);
    assert_eq!(then["at_seq"], created_seq);
    assert_eq!(then["app"]["workloads"][0]["replicas"], 2);
    assert_eq!(
        then["app"]["configmaps"]["db-config"]["max_connections"],
        "100"
    );
    assert_eq!(names(&then["volumes"]).len(), 4);
    let time = then["at_time"].as_str().unwrap();
    let by_time = node.json(&["events", "replay", "--at", time]);
    assert!(by_time["at_seq"].as_u64().unwrap() >= created_seq);
    let before = node.fails(&["events", "replay", "--at", "0", "--app", "shop"]);
    assert!(before.contains("not_found"), "{before}");

    let lines = node.ok(&["events", "--app", "shop", "--json"]);
    let export = dir.path().join("events.jsonl");
    node.ok(&["events", "export", export.to_str().unwrap()]);
    let exported = std::fs::read_to_string(&export).unwrap();
    let seqs: Vec<u64> = exported
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in journal order");
    assert_eq!(
        lines.lines().count(),
        seqs.len(),
        "every event so far is the app's"
    );
    // Node facts are cluster-wide: not in a tenant's list, but in --cluster.
    let cluster = node.ok(&["events", "--cluster", "--json"]);
    assert_eq!(
        cluster.lines().count(),
        1,
        "the node registered itself once"
    );
    assert!(cluster.contains("NodeRegistered"));

    // An app's volumes are the app's: no deleting them behind its back.
    let refused = node.fails(&["volume", "delete", "shop/data-db-0"]);
    assert!(refused.contains("failed_precondition"), "{refused}");
    let refused = node.fails(&["volume", "create", "shop/extra", "--size", "1Mi"]);
    assert!(refused.contains("failed_precondition"), "{refused}");

    // A restart rebuilds the same app from the journal.
    let data_dir = node.data_dir.clone();
    let status = node.stop();
    assert!(status.success());
    let node = Node::start(&data_dir, &nats.url);
    let again = node.json(&["app", "get", "shop"]);
    assert_eq!(again["configmaps"], app["configmaps"]);
    assert_eq!(again["volumes"], app["volumes"]);
    if have_tool("qemu-io") {
        assert!(verified(&qemu_io(
            &node.nbd_uri("shop/data-db-1"),
            "read -P 0x5a 0 1M"
        )));
    }
    assert!(node.ok(&["events", "verify"]).contains("ok"));

    let deleted = node.json(&["app", "delete", "shop"]);
    assert_eq!(deleted["volumes"].as_array().unwrap().len(), 6);
    assert!(names(&node.json(&["volume", "list"])["volumes"]).is_empty());
    assert!(
        node.json(&["app", "list"])["apps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    if have_tool("qemu-io") {
        assert!(
            !qemu_io(&node.nbd_uri("shop/data-db-1"), "read 0 4k")
                .status
                .success()
        );
    }
    assert!(node.ok(&["events", "verify"]).contains("ok"));
    // The history outlives the app.
    assert!(
        !node.json(&["app", "log", "shop"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_app_input_gets_codes_and_changes_nothing() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &nats.url);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cases = [
        ("broken.yaml", "kind: [unclosed", "invalid_argument"),
        (
            "noname.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "invalid_argument",
        ),
        (
            "badname.yaml",
            &SHOP.replace("name: shop}", "name: Shop_1}"),
            "invalid_argument",
        ),
        (
            "nosize.yaml",
            &SHOP.replace("storage: 16Mi", "storage: lots"),
            "invalid_argument",
        ),
    ];
    for (file, text, code) in cases {
        let err = node.fails(&["app", "create", "-f", &write(file, text)]);
        assert!(err.contains(code), "{file}: {err}");
    }
    assert!(
        node.json(&["app", "list"])["apps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(names(&node.json(&["volume", "list"])["volumes"]).is_empty());

    for args in [
        &["app", "get", "nope"][..],
        &["app", "delete", "nope"],
        &["app", "scale", "nope", "--replicas", "2"],
        &["app", "log", "nope"],
    ] {
        assert!(node.fails(args).contains("not_found"), "{args:?}");
    }
    node.ok(&["app", "create", "-f", &write("shop.yaml", SHOP)]);
    let again = node.fails(&["app", "create", "-f", &write("shop.yaml", SHOP)]);
    assert!(again.contains("already_exists"), "{again}");
    let err = node.fails(&["app", "config", "set", "shop", "nope.key=1"]);
    assert!(
        err.contains("db-config"),
        "the error names the ConfigMaps there are: {err}"
    );
    let err = node.fails(&[
        "app",
        "scale",
        "shop",
        "--replicas",
        "2",
        "--workload",
        "web",
    ]);
    assert!(err.contains("not_found") && err.contains("db"), "{err}");
    let err = node.fails(&["request", "app.scale", r#"{"name":"shop","replicas":-1}"#]);
    assert!(err.contains("invalid_argument"), "{err}");
    // Nothing above changed the app, and the server still answers.
    let app = node.json(&["app", "get", "shop"]);
    assert_eq!(app["workloads"][0]["replicas"], 2);
    assert!(node.ok(&["events", "verify"]).contains("ok"));
}

#[test]
fn tenants_see_only_their_own_apps() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &nats.url);
    let manifest = dir.path().join("shop.yaml");
    std::fs::write(&manifest, SHOP).unwrap();
    let path = manifest.to_str().unwrap();
    node.ok(&["--tenant", "acme", "app", "create", "-f", path]);
    node.ok(&["--tenant", "umbrella", "app", "create", "-f", path]);
    node.ok(&[
        "--tenant",
        "umbrella",
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=1",
    ]);

    let acme = node.json(&["--tenant", "acme", "app", "get", "shop"]);
    assert_eq!(acme["configmaps"]["db-config"]["max_connections"], "100");
    assert!(
        node.json(&["app", "list"])["apps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(node.fails(&["app", "get", "shop"]).contains("not_found"));
    let events = node.ok(&["--tenant", "acme", "events", "--json"]);
    assert!(!events.is_empty());
    assert!(
        events.lines().all(|l| l.contains("\"tenant\":\"acme\"")),
        "{events}"
    );
    assert!(node.ok(&["events", "--json"]).trim().is_empty());
    node.ok(&["--tenant", "acme", "app", "delete", "shop"]);
    let umbrella = node.json(&["--tenant", "umbrella", "volume", "list"]);
    assert_eq!(
        names(&umbrella["volumes"]).len(),
        4,
        "one tenant's delete leaves the other's app"
    );
    assert!(node.ok(&["events", "verify"]).contains("ok"));
}

#[test]
fn a_panicking_actor_is_rebuilt_from_the_journal_and_the_process_keeps_serving() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_env(
        &dir.path().join("data"),
        &nats.url,
        &[] as &[&OsStr],
        &[(
            "CAIRN_FAILPOINTS",
            "app.execute.config-set=panic-once,volume.execute.snapshot=panic-once",
        )],
    );
    let manifest = dir.path().join("shop.yaml");
    std::fs::write(&manifest, SHOP).unwrap();
    node.ok(&["app", "create", "-f", manifest.to_str().unwrap()]);
    node.ok(&["app", "scale", "shop", "--replicas", "3"]);

    let err = node.fails(&[
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=7",
    ]);
    assert!(err.contains("rebuilt from the journal"), "{err}");
    // The new actor holds the journaled state, and takes commands.
    let app = node.json(&["app", "get", "shop"]);
    assert_eq!(app["workloads"][0]["replicas"], 3);
    assert_eq!(app["configmaps"]["db-config"]["max_connections"], "100");
    node.ok(&[
        "app",
        "config",
        "set",
        "shop",
        "db-config.max_connections=7",
    ]);

    node.ok(&["volume", "create", "solo", "--size", "1Mi"]);
    let err = node.fails(&["volume", "snapshot", "solo", "s1"]);
    assert!(err.contains("rebuilt from the journal"), "{err}");
    node.ok(&["volume", "snapshot", "solo", "s1"]);
    let solo = node.json(&["volume", "show", "solo"]);
    assert_eq!(names(&solo["snapshots"]), ["s1"]);
    assert!(node.ok(&["events", "verify"]).contains("ok"));
    assert!(node.log().contains("failpoint"), "the panic is in the log");
}
