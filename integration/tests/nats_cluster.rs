//! Cairn on a 3-server NATS cluster (routes on loopback): `cairn up` and
//! the CLI are given all three URLs, and each server in turn is killed with
//! SIGKILL. The control plane keeps answering through a survivor, no
//! acknowledged volume is lost, the data written over NBD reads back, and
//! the journal verifies.

use std::time::{Duration, Instant};

use cairn_integration::{NatsCluster, Node, have_tool, qemu_io, verified};
use serde_json::Value;

/// Retries `args` until it succeeds (bounded): right after a server dies
/// the CLI or the gateway may still be reconnecting. A retried create
/// whose first try was applied but unanswered is refused as
/// `already_exists`, which counts as done only on a retry.
fn ok_eventually(node: &Node, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tries = 0;
    loop {
        tries += 1;
        let out = node.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() || (tries > 1 && stderr.contains("already_exists")) {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "cairn {args:?} still failing after 60 s ({tries} tries): {stderr}\nlog:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn volume_names(node: &Node) -> Vec<String> {
    let listed: Value =
        serde_json::from_str(&ok_eventually(node, &["-o", "json", "volume", "list"])).unwrap();
    let mut names: Vec<String> = listed["volumes"]
        .as_array()
        .expect("a volume list")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn control_rides_through_the_loss_of_each_nats_server_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(dir.path(), 3);
    let urls = cluster.urls();
    let node = Node::start(&dir.path().join("data"), &urls);
    node.ok(&["volume", "create", "v0", "--size", "4Mi"]);
    let with_qemu = have_tool("qemu-io");
    if with_qemu {
        // 0xa5 over the first 64 KiB.
        let out = qemu_io(&node.nbd_uri("v0"), "write -P 0xa5 0 64k");
        assert!(out.status.success(), "{out:?}");
    }

    let mut expected = vec!["v0".to_owned()];
    for down in 0..cluster.servers.len() {
        cluster.servers[down].kill();
        let name = format!("v{}", down + 1);
        ok_eventually(&node, &["volume", "create", &name, "--size", "4Mi"]);
        expected.push(name);
        assert_eq!(volume_names(&node), expected, "with server n{down} down");
        if with_qemu {
            let out = qemu_io(&node.nbd_uri("v0"), "read -P 0xa5 0 64k");
            assert!(verified(&out), "v0's data with n{down} down: {out:?}");
        }
        cluster.servers[down].start_again();
        cluster.wait_routed();
    }

    let verify = ok_eventually(&node, &["events", "verify"]);
    assert!(verify.starts_with("ok: "), "{verify}");
    // Everything acknowledged is journaled: a restart serves the same list.
    assert!(node.stop().success());
    let node = Node::start(&dir.path().join("data"), &urls);
    assert_eq!(volume_names(&node), expected);
    assert!(node.stop().success());
}
