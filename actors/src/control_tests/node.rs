//! The node actor alone: it registers its node once per change of disks
//! (a restart on the same disks journals nothing), `node.fail` journals one
//! fact however many copies race, and a node failed once refuses a second
//! failure with a code while the fact stands across a restart.

use futures::future::join_all;
use serde_json::{Value, json};

use super::{Plane, refused};
use cairn_schema::ErrorCode;

/// How many cluster-wide events of `kind` the journal holds.
async fn count(plane: &Plane, kind: &str) -> usize {
    let events = plane
        .call("events", "list", json!({"kind": kind, "cluster": true}))
        .await
        .unwrap();
    events["events"].as_array().unwrap().len()
}

async fn only_node(plane: &Plane) -> Value {
    let nodes = plane.call("node", "list", json!({})).await.unwrap();
    let all = nodes["nodes"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{nodes}");
    all[0].clone()
}

#[actix_rt::test]
async fn a_node_registers_once_per_change_of_disks() {
    let plane = Plane::start().await;
    assert_eq!(count(&plane, "NodeRegistered").await, 1);
    let node = only_node(&plane).await;
    assert_eq!(node["state"], "ready", "{node}");
    assert!(!node["disks"].as_array().unwrap().is_empty(), "{node}");
    let plane = plane.restart().await;
    assert_eq!(
        count(&plane, "NodeRegistered").await,
        1,
        "the same disks again: nothing new to journal"
    );
    assert_eq!(only_node(&plane).await["state"], "ready");
    plane.stop().await;
}

#[actix_rt::test]
async fn racing_fails_of_one_node_journal_one_fact() {
    let plane = Plane::start().await;
    let name = only_node(&plane).await["name"].as_str().unwrap().to_owned();
    let results =
        join_all((0..4).map(|_| plane.call("node", "fail", json!({ "name": name.clone() })))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        refused(r, ErrorCode::FailedPrecondition);
    }
    assert_eq!(count(&plane, "NodeFailed").await, 1);
    assert_eq!(only_node(&plane).await["state"], "failed");

    // The fact outlives the process; a later failure is refused again.
    let plane = plane.restart().await;
    assert_eq!(only_node(&plane).await["state"], "failed");
    refused(
        plane.call("node", "fail", json!({ "name": name })).await,
        ErrorCode::FailedPrecondition,
    );
    assert_eq!(count(&plane, "NodeFailed").await, 1);
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}
