//! The walking-skeleton path of issue 2, end to end: `cairn up` against a
//! real nats-server, volumes created from the CLI, bytes moved with qemu-io
//! over NBD, a snapshot served read-only, `kill -9` and a restart that
//! rebuilds everything from the journal, and bad input answered with
//! structured errors while the server keeps serving.

use cairn_integration::{Node, RawNats, have_tool, nats, qemu_io, verified};
use serde_json::Value;

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[test]
fn skeleton_path_survives_kill_9() {
    if !have_tool("qemu-io") {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &nats.url);

    node.ok(&["volume", "create", "v1", "--size", "1Gi"]);
    let w = qemu_io(&node.nbd_uri("v1"), "write -P 0x5a 0 1M");
    assert!(
        w.status.success(),
        "qemu-io write: {}",
        String::from_utf8_lossy(&w.stderr)
    );
    let f = qemu_io(&node.nbd_uri("v1"), "flush");
    assert!(f.status.success());
    let r = qemu_io(&node.nbd_uri("v1"), "read -P 0x5a 0 1M");
    assert!(verified(&r), "read back: {r:?}");
    // `volume show` says where the volume is served, as a URI a client
    // opens, and which node holds it.
    let shown = node.json(&["volume", "show", "v1"]);
    let uri = shown["nbd"]
        .as_str()
        .unwrap_or_else(|| panic!("no nbd URI: {shown}"));
    assert!(uri.starts_with("nbd+unix:///v1?socket="), "{uri}");
    let r = qemu_io(uri, "read -P 0x5a 0 1M");
    assert!(verified(&r), "read through the shown URI: {r:?}");
    let nodes = node.json(&["node", "list"]);
    assert_eq!(shown["node"], nodes["nodes"][0]["name"], "{shown}");
    let served = nodes["nodes"][0]["nbd"].as_str().unwrap_or_default();
    assert!(
        served.starts_with("unix:") && uri.ends_with(&served["unix:".len()..]),
        "node list names the socket the URI opens: {served} vs {uri}"
    );

    node.ok(&["volume", "snapshot", "v1", "s1"]);
    let w = qemu_io(&node.nbd_uri("v1"), "write -P 0x11 0 64k");
    assert!(w.status.success());
    let r = qemu_io(&node.nbd_uri("v1@s1"), "read -P 0x5a 0 1M");
    assert!(verified(&r), "snapshot reads the frozen data: {r:?}");
    // Opened read-write, the snapshot export is refused.
    let w = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x22 0 4k",
            &node.nbd_uri("v1@s1"),
        ])
        .output()
        .unwrap();
    assert!(!w.status.success(), "a snapshot export must refuse writes");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("Permission denied"),
        "{w:?}"
    );

    let events = json_lines(&node.ok(&["events", "--json"]));
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["VolumeCreated", "VolumeSnapshotted"]);
    // Seq 1 is the node registering itself (a cluster-wide fact).
    assert_eq!(events[0]["seq"], 2);
    assert_eq!(events[1]["seq"], 3);
    assert_eq!(events[1]["prev_hash"], events[0]["hash"]);
    let table = node.ok(&["events"]);
    assert!(
        table.starts_with("SEQ")
            && table.contains("VolumeSnapshotted")
            && table.contains("volume/v1"),
        "{table}"
    );

    // Flushed before the kill: must survive it.
    node.kill9();
    let node = Node::start(dir.path(), &nats.url);
    let list: Value = serde_json::from_str(&node.ok(&["-o", "json", "volume", "list"])).unwrap();
    let names: Vec<&str> = list["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v1"]);
    let snaps = node.ok(&["volume", "snapshots", "v1"]);
    assert!(
        snaps.lines().nth(1).is_some_and(|l| l.starts_with("s1 ")),
        "{snaps}"
    );
    assert!(
        verified(&qemu_io(&node.nbd_uri("v1"), "read -P 0x5a 64k 960k")),
        "after restart"
    );
    assert!(
        verified(&qemu_io(&node.nbd_uri("v1"), "read -P 0x11 0 64k")),
        "after restart"
    );
    assert!(
        verified(&qemu_io(&node.nbd_uri("v1@s1"), "read -P 0x5a 0 1M")),
        "snapshot after restart"
    );
    // And the check can fail: a wrong pattern is reported as such.
    assert!(!verified(&qemu_io(
        &node.nbd_uri("v1"),
        "read -P 0x77 0 4k"
    )));
    let verify = node.ok(&["events", "verify"]);
    // Two volume events and the node's registration.
    assert!(verify.starts_with("ok: 3 records"), "{verify}");
    assert!(node.stop().success());
}

#[test]
fn bad_input_gets_structured_errors_and_the_server_keeps_serving() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &nats.url);
    let mut raw = RawNats::connect(&nats.url);
    let code = |reply: &Value| reply["error"]["code"].as_str().map(str::to_owned);

    let reply = raw.json("cairn.v1.default.volume.create", b"{not json");
    assert_eq!(code(&reply).as_deref(), Some("invalid_argument"), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid")
    );
    let reply = raw.json("cairn.v1.default.volume.show", br#"{"name":"ghost"}"#);
    assert_eq!(code(&reply).as_deref(), Some("not_found"), "{reply}");
    let reply = raw.json(
        "cairn.v1.default.volume.snapshot",
        br#"{"name":"ghost","snapshot":"s1"}"#,
    );
    assert_eq!(code(&reply).as_deref(), Some("not_found"), "{reply}");
    let reply = raw.json(
        "cairn.v1.default.volume.create",
        br#"{"name":"Bad_Name","size":"1G"}"#,
    );
    assert_eq!(code(&reply).as_deref(), Some("invalid_argument"), "{reply}");
    assert_eq!(reply["error"]["details"]["field"], "volume");
    let reply = raw.json("cairn.v1.default.volume.frobnicate", b"{}");
    assert_eq!(code(&reply).as_deref(), Some("unknown_command"), "{reply}");
    let reply = raw.json(
        "cairn.v1.default.volume.create",
        br#"{"name":"v1","size":"lots"}"#,
    );
    assert_eq!(code(&reply).as_deref(), Some("invalid_argument"), "{reply}");

    // Still serving, and valid requests from the raw client work too.
    let reply = raw.json(
        "cairn.v1.default.volume.create",
        br#"{"name":"v1","size":"1M"}"#,
    );
    assert_eq!(reply["name"], "v1", "{reply}");
    let reply = raw.json(
        "cairn.v1.default.volume.create",
        br#"{"name":"v1","size":"1M"}"#,
    );
    assert_eq!(code(&reply).as_deref(), Some("already_exists"), "{reply}");

    // A retried request (same id) gets the first answer, not already_exists.
    let body = br#"{"name":"v2","size":"1M"}"#;
    let first = raw.request(
        "cairn.v1.default.volume.create",
        &[("Cairn-Request-Id", "retry-1")],
        body,
    );
    let again = raw.request(
        "cairn.v1.default.volume.create",
        &[("Cairn-Request-Id", "retry-1")],
        body,
    );
    assert_eq!(first, again);
    assert_eq!(
        serde_json::from_slice::<Value>(&again).unwrap()["name"],
        "v2"
    );

    // The CLI prints the code and exits non-zero.
    let out = node.cli(&["volume", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // Tenants are separate: another tenant sees none of default's volumes.
    let reply = raw.json("cairn.v1.acme.volume.list", b"{}");
    assert_eq!(reply["volumes"], serde_json::json!([]), "{reply}");
    let listed = node.ok(&["volume", "list"]);
    assert!(listed.contains("v1") && listed.contains("v2"), "{listed}");
    let events = node.ok(&["events", "--json"]);
    assert_eq!(
        events.lines().count(),
        2,
        "only the two creates are facts: {events}"
    );
    assert!(node.stop().success());
}
