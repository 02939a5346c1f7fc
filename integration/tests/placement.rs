//! Placement end to end: `cairn up --topology` / `--nodes`, apps placed by
//! the planner, the plan visible in `app placement -o json`, data really
//! landing on the planned node's disk, refusals that name what is missing,
//! `node fail` reports, and plans that survive a restart.

use std::collections::BTreeSet;
use std::ffi::OsStr;

use cairn_integration::{Node, have_tool, nats, qemu_io};
use serde_json::Value;

/// The issue's case: 4 nodes in 3 racks, two ssd disks each.
const TOPOLOGY: &str = r#"
kind: Topology
nodes:
  - {name: n1, rack: r1, datacenter: dc1, disks: [{name: ssd-a, media: ssd, capacity: 40Gi}, {name: ssd-b, media: ssd, capacity: 40Gi}]}
  - {name: n2, rack: r2, datacenter: dc1, disks: [{name: ssd-a, media: ssd, capacity: 40Gi}, {name: ssd-b, media: ssd, capacity: 40Gi}]}
  - {name: n3, rack: r3, datacenter: dc1, disks: [{name: ssd-a, media: ssd, capacity: 40Gi}, {name: ssd-b, media: ssd, capacity: 40Gi}]}
  - {name: n4, rack: r3, datacenter: dc1, disks: [{name: ssd-a, media: ssd, capacity: 40Gi}, {name: hdd-a, media: hdd, capacity: 400Gi}]}
"#;

const CASSANDRA: &str = r#"
apiVersion: cairn.dev/v1
kind: App
metadata: {name: cass}
spec:
  placement: {antiAffinity: rack, separateDisks: [commitlog, data], media: ssd}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: cassandra}
spec:
  replicas: 3
  serviceName: cassandra
  template: {spec: {containers: [{name: cassandra, image: "cassandra:4.1"}]}}
  volumeClaimTemplates:
    - metadata: {name: commitlog}
      spec: {resources: {requests: {storage: 2Gi}}}
    - metadata: {name: data}
      spec: {resources: {requests: {storage: 10Gi}}}
"#;

/// The disk (node, disk) of every slice of `volume`, from the placement list.
fn disks_of(placement: &Value, volume: &str) -> BTreeSet<(String, String)> {
    let v = placement
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == volume)
        .unwrap_or_else(|| panic!("{volume} is not placed: {placement}"));
    v["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap().to_owned(),
                s["disk"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn cassandra_replicas_get_their_own_racks_and_survive_any_single_failure() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cluster.yaml");
    std::fs::write(&topology, TOPOLOGY).unwrap();
    let manifest = dir.path().join("cassandra.yaml");
    std::fs::write(&manifest, CASSANDRA).unwrap();
    let data_dir = dir.path().join("data");
    let up = [OsStr::new("--topology"), topology.as_os_str()];
    let node = Node::start_with(&data_dir, &nats.url, &up);

    node.ok(&["app", "create", "-f", manifest.to_str().unwrap()]);
    let placement = node.json(&["app", "placement", "cass"]);
    let list = placement.as_array().unwrap();
    assert_eq!(list.len(), 6, "{placement}");
    let mut racks = BTreeSet::new();
    for ordinal in 0..3 {
        let replica = format!("cassandra-{ordinal}");
        let mine: Vec<&Value> = list.iter().filter(|v| v["replica"] == replica).collect();
        assert_eq!(mine.len(), 2);
        let slices: Vec<&Value> = mine
            .iter()
            .flat_map(|v| v["slices"].as_array().unwrap())
            .collect();
        let replica_racks: BTreeSet<&str> =
            slices.iter().map(|s| s["rack"].as_str().unwrap()).collect();
        assert_eq!(replica_racks.len(), 1, "one replica, one rack: {placement}");
        assert!(racks.insert(replica_racks.into_iter().next().unwrap().to_owned()));
        // commitlog and data on different ssd disks of one node.
        let commitlog = disks_of(&placement, &format!("cass/commitlog-cassandra-{ordinal}"));
        let data = disks_of(&placement, &format!("cass/data-cassandra-{ordinal}"));
        assert!(commitlog.is_disjoint(&data), "{commitlog:?} {data:?}");
        assert!(
            commitlog
                .iter()
                .chain(&data)
                .all(|(_, d)| d.starts_with("ssd")),
            "ssd only: {placement}"
        );
        let nodes: BTreeSet<&String> = commitlog.iter().chain(&data).map(|(n, _)| n).collect();
        assert_eq!(nodes.len(), 1, "a replica's volumes stay on one node");
        // 10 GiB of data is ten 1 GiB slices.
        let data_volume = mine
            .iter()
            .find(|v| v["volume"].as_str().unwrap().contains("data"));
        assert_eq!(data_volume.unwrap()["slices"].as_array().unwrap().len(), 10);
    }
    assert_eq!(racks.len(), 3);

    // The bytes go where the plan says.
    if have_tool("qemu-io") {
        let (n, d) = disks_of(&placement, "cass/data-cassandra-1")
            .into_iter()
            .next()
            .unwrap();
        let nodes_dir = data_dir.join("nodes");
        let target = nodes_dir.join(&n).join(&d);
        let before = (dir_bytes(&target), dir_bytes(&nodes_dir));
        let uri = node.nbd_uri("cass/data-cassandra-1");
        let out = qemu_io(&uri, "write -P 0x33 0 16M");
        assert!(out.status.success(), "{out:?}");
        let after = (dir_bytes(&target), dir_bytes(&nodes_dir));
        assert!(
            after.0 > before.0,
            "the write landed on {n}/{d}: {before:?} → {after:?}"
        );
        assert_eq!(
            after.1 - before.1,
            after.0 - before.0,
            "and on no other disk"
        );
    }

    // A fourth replica has no rack left, and the refusal says so.
    let out = node.cli(&["app", "scale", "cass", "--replicas", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cassandra-3") && err.contains("r1, r2, r3") && err.contains("no more racks"),
        "{err}"
    );
    assert_eq!(
        node.json(&["app", "get", "cass"])["volumes"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    // The plan and the node states survive a restart.
    assert!(node.stop().success());
    let node = Node::start_with(&data_dir, &nats.url, &up);
    assert_eq!(node.json(&["app", "placement", "cass"]), placement);

    // Losing any one node costs at most one replica.
    let nodes = node.json(&["node", "list"]);
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 4);
    let report = node.json(&["node", "fail", "n2"]);
    assert_eq!(report["lost_more_than_one_member"], false, "{report}");
    let lost: BTreeSet<&str> = report["impact"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["replica"].as_str().unwrap())
        .collect();
    assert!(lost.len() <= 1, "{report}");
    let failed = node.json(&["node", "list"]);
    let n2 = failed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n2")
        .unwrap();
    assert_eq!(n2["state"], "failed");
    let again = node.cli(&["node", "fail", "n2"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"));
    let missing = node.cli(&["node", "fail", "n9"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));
    assert!(node.ok(&["events", "verify"]).contains("ok"));
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let meta = e.metadata().unwrap();
                    if meta.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        meta.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The public Kubernetes Cassandra example, unchanged, on `--nodes 4`.
#[test]
fn the_public_cassandra_example_loads_and_is_placed_unchanged() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cassandra.yaml");
    let node = Node::start_with(
        &dir.path().join("data"),
        &nats.url,
        &[OsStr::new("--nodes"), OsStr::new("4")],
    );
    let created = node.json(&["app", "create", "-f", manifest, "--name", "k8s-demo"]);
    assert_eq!(
        created["volumes"],
        serde_json::json!([
            "k8s-demo/cassandra-data-cassandra-0",
            "k8s-demo/cassandra-data-cassandra-1",
            "k8s-demo/cassandra-data-cassandra-2"
        ])
    );
    let yaml = node.ok(&["app", "get", "k8s-demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: StorageClass") && yaml.contains("gcr.io/google-samples/cassandra:v13")
    );
    let placement = node.json(&["app", "placement", "k8s-demo"]);
    let nodes: BTreeSet<&str> = placement
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["slices"].as_array().unwrap())
        .map(|s| s["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "three replicas spread over three nodes: {placement}"
    );
    let listed = node.json(&["node", "list"]);
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 4);
}
