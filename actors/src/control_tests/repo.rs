//! The repository actor through the gateway: add, list, ls, check, prune,
//! remove, each with an error reply; push and pull through their
//! workflows; racing adds of one name.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, create_body, refused};

#[actix_rt::test]
async fn every_repo_command_succeeds_and_refuses() {
    let plane = Plane::start().await;
    let added = plane
        .call("repo", "add", json!({"name": "r"}))
        .await
        .unwrap();
    assert_eq!(added["initialized"], true, "{added}");
    assert_eq!(added["key_generated"], true);
    // The same registration again is no change.
    plane
        .call("repo", "add", json!({"name": "r"}))
        .await
        .unwrap();
    refused(
        plane.call("repo", "add", json!({"name": "bad name"})).await,
        ErrorCode::InvalidArgument,
    );
    let list = plane.call("repo", "list", json!({})).await.unwrap();
    assert_eq!(list["repos"].as_array().unwrap().len(), 1, "{list}");
    // Another tenant sees none of it.
    let theirs = plane
        .call_as("other", "repo", "list", json!({}))
        .await
        .unwrap();
    assert_eq!(theirs["repos"], json!([]));
    refused(
        plane
            .call_as("other", "repo", "ls", json!({"name": "r"}))
            .await,
        ErrorCode::NotFound,
    );

    // Push an app snapshot, then pull it as a new app.
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .unwrap();
    plane
        .call("app", "snapshot", json!({"name": "shop", "snapshot": "s1"}))
        .await
        .unwrap();
    let pushed = plane
        .call(
            "app",
            "push",
            json!({"name": "shop", "snapshot": "s1", "repo": "r"}),
        )
        .await
        .unwrap();
    assert_eq!(pushed["repo"], "r", "{pushed}");
    refused(
        plane
            .call(
                "app",
                "push",
                json!({"name": "shop", "snapshot": "s1", "repo": "none"}),
            )
            .await,
        ErrorCode::NotFound,
    );
    let ls = plane
        .call("repo", "ls", json!({"name": "r"}))
        .await
        .unwrap();
    assert_eq!(ls["snapshots"].as_array().unwrap().len(), 1, "{ls}");
    let pulled = plane
        .call(
            "app",
            "pull",
            json!({"repo": "r", "name": "shop", "snapshot": "s1", "target": "copy"}),
        )
        .await
        .unwrap();
    assert_eq!(pulled["app"], "copy", "{pulled}");
    plane
        .call("app", "get", json!({"name": "copy"}))
        .await
        .unwrap();

    let check = plane
        .call("repo", "check", json!({"name": "r"}))
        .await
        .unwrap();
    assert_eq!(check["ok"], true, "{check}");
    let pruned = plane
        .call("repo", "prune", json!({"name": "r", "keep_last": 1}))
        .await
        .unwrap();
    assert_eq!(pruned["manifests_deleted"], json!([]), "{pruned}");

    plane
        .call("repo", "remove", json!({"name": "r"}))
        .await
        .unwrap();
    refused(
        plane.call("repo", "remove", json!({"name": "r"})).await,
        ErrorCode::NotFound,
    );
    refused(
        plane.call("repo", "check", json!({"name": "r"})).await,
        ErrorCode::NotFound,
    );
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}

/// Adds of one name race: one registration is journaled and every caller
/// gets an answer that is not an internal error.
#[actix_rt::test]
async fn racing_adds_of_one_repo() {
    let plane = Plane::start().await;
    let results =
        join_all((0..3).map(|_| plane.call("repo", "add", json!({"name": "same"})))).await;
    assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_ne!(result.code, ErrorCode::Internal, "{result:?}");
    }
    let list = plane.call("repo", "list", json!({})).await.unwrap();
    assert_eq!(list["repos"].as_array().unwrap().len(), 1, "{list}");
    let added = plane
        .call("events", "list", json!({"kind": "RepoAdded"}))
        .await
        .unwrap();
    assert_eq!(added["events"].as_array().unwrap().len(), 1, "{added}");
    plane.stop().await;
}
