//! Saga actors through the gateway: the built-in app workflows
//! (snapshot, rollback, clone, snapshot-delete) each succeed and refuse,
//! and racing snapshots of one app.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, create_body, refused};

#[actix_rt::test]
async fn app_history_workflows_succeed_and_refuse() {
    let plane = Plane::start().await;
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .unwrap();
    let snap = plane
        .call(
            "app",
            "snapshot",
            json!({"name": "shop", "snapshot": "s1", "message": "first"}),
        )
        .await
        .unwrap();
    assert_eq!(snap["snapshot"], "s1");
    assert!(snap["workflow"].is_string(), "{snap}");
    refused(
        plane
            .call("app", "snapshot", json!({"name": "nope", "snapshot": "s1"}))
            .await,
        ErrorCode::NotFound,
    );

    plane
        .call(
            "app",
            "config-set",
            json!({"name": "shop", "configmap": "settings", "key": "mode", "value": "broken"}),
        )
        .await
        .unwrap();
    let rolled = plane
        .call("app", "rollback", json!({"name": "shop", "snapshot": "s1"}))
        .await
        .unwrap();
    assert!(rolled["safety_snapshot"].is_string(), "{rolled}");
    let got = plane
        .call("app", "get", json!({"name": "shop"}))
        .await
        .unwrap();
    assert_eq!(got["configmaps"]["settings"]["mode"], "fast");
    refused(
        plane
            .call("app", "rollback", json!({"name": "shop", "snapshot": "s9"}))
            .await,
        ErrorCode::NotFound,
    );

    let cloned = plane
        .call(
            "app",
            "clone",
            json!({"name": "shop", "snapshot": "s1", "target": "branch", "set": ["settings.mode=dev"]}),
        )
        .await
        .unwrap();
    assert_eq!(cloned["name"], "branch", "{cloned}");
    let branch = plane
        .call("app", "get", json!({"name": "branch"}))
        .await
        .unwrap();
    assert_eq!(branch["configmaps"]["settings"]["mode"], "dev");
    refused(
        plane
            .call(
                "app",
                "clone",
                json!({"name": "shop", "snapshot": "s9", "target": "b2"}),
            )
            .await,
        ErrorCode::NotFound,
    );
    // A snapshot a clone depends on is not deleted.
    let held = plane
        .call(
            "app",
            "snapshot-delete",
            json!({"name": "shop", "snapshot": "s1"}),
        )
        .await;
    assert!(held.is_err(), "{held:?}");
    plane
        .call("app", "delete", json!({"name": "branch"}))
        .await
        .unwrap();
    plane
        .call(
            "app",
            "snapshot-delete",
            json!({"name": "shop", "snapshot": "s1"}),
        )
        .await
        .unwrap();
    let snapshots = plane
        .call("app", "snapshots", json!({"name": "shop"}))
        .await
        .unwrap();
    let names: Vec<&str> = snapshots["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"s1"), "{snapshots}");
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}

/// Snapshots of one app under one name race: one is taken, the others
/// are refused or answered with the same snapshot; no workflow is left
/// running.
#[actix_rt::test]
async fn racing_app_snapshots() {
    let plane = Plane::start().await;
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .unwrap();
    let results = join_all((0..3).map(|_| {
        plane.call(
            "app",
            "snapshot",
            json!({"name": "shop", "snapshot": "same"}),
        )
    }))
    .await;
    assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_ne!(result.code, ErrorCode::Internal, "{result:?}");
    }
    let snapshots = plane
        .call("app", "snapshots", json!({"name": "shop"}))
        .await
        .unwrap();
    assert_eq!(
        snapshots["snapshots"].as_array().unwrap().len(),
        1,
        "{snapshots}"
    );
    let running = plane
        .call("workflow", "list", json!({"status": "running"}))
        .await
        .unwrap();
    assert_eq!(running["workflows"], json!([]), "{running}");
    plane.stop().await;
}

/// Found by the simulation (seed 104): a second `app clone` of the same
/// snapshot into an app an earlier clone made was answered as done and
/// did nothing (its `--set` silently dropped). It is refused, and the
/// existing app is left as it was (the clone step's compensation does not
/// remove it).
#[actix_rt::test]
async fn second_clone_into_an_existing_clone_is_refused() {
    let plane = Plane::start().await;
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .unwrap();
    plane
        .call("app", "snapshot", json!({"name": "shop", "snapshot": "s1"}))
        .await
        .unwrap();
    let clone = |mode: &str| json!({"name": "shop", "snapshot": "s1", "target": "branch", "set": [format!("settings.mode={mode}")]});
    plane.call("app", "clone", clone("dev")).await.unwrap();
    let again = plane.call("app", "clone", clone("safe")).await;
    assert!(again.is_err(), "{again:?}");
    let branch = plane
        .call("app", "get", json!({"name": "branch"}))
        .await
        .unwrap();
    assert_eq!(branch["configmaps"]["settings"]["mode"], "dev");
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}

/// A failed commit of one of a saga's own facts (found by the simulation,
/// seed 18): the saga stopped as if the server had, and the workflow stayed
/// `running` with no one driving it until the next start (the CLI was told
/// `unavailable`). Now the fact is journaled again after a backoff, so a
/// commit failing at any one of the workflow's appends still ends it
/// completed, with the snapshot in the pool and the journal.
#[actix_rt::test]
async fn a_failed_commit_of_a_saga_fact_is_tried_again() {
    let plane = Plane::start().await;
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .unwrap();
    let before = plane.journal.appends();
    plane
        .call("app", "snapshot", json!({"name": "shop", "snapshot": "s0"}))
        .await
        .unwrap();
    let appends = plane.journal.appends() - before;
    assert!(appends >= 3, "a snapshot saga journals several facts");
    for k in 1..=appends {
        let snapshot = format!("s{k}");
        plane.journal.inject_at(
            plane.journal.appends() + k,
            crate::journal::Fault::FailCommit,
        );
        let reply = plane
            .call(
                "app",
                "snapshot",
                json!({"name": "shop", "snapshot": snapshot}),
            )
            .await;
        // The first append starts the workflow: failing it refuses the
        // start (`unavailable`, nothing begun), and the client tries again.
        // A later one is the app's own (the step is retried) or a fact of
        // the saga's (journaled again): either way the workflow ends.
        let reply = match reply {
            Err(e) if k == 1 => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                let snaps = plane
                    .call("app", "snapshots", json!({"name": "shop"}))
                    .await
                    .unwrap();
                assert!(
                    !snaps.to_string().contains(&format!("\"{snapshot}\"")),
                    "{snaps}"
                );
                plane
                    .call(
                        "app",
                        "snapshot",
                        json!({"name": "shop", "snapshot": snapshot}),
                    )
                    .await
            }
            other => other,
        };
        let reply = reply.unwrap_or_else(|e| panic!("append {k}/{appends} failed: {e:?}"));
        assert_eq!(reply["snapshot"], snapshot.as_str(), "{reply}");
        plane.journal.clear_scheduled();
    }
    let list = plane.call("workflow", "list", json!({})).await.unwrap();
    for w in list["workflows"].as_array().unwrap() {
        assert_eq!(w["status"], "completed", "{w}");
    }
    let snaps = plane
        .call("app", "snapshots", json!({"name": "shop"}))
        .await
        .unwrap();
    assert_eq!(
        snaps["snapshots"].as_array().unwrap().len() as u64,
        appends + 1,
        "{snaps}"
    );
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}
