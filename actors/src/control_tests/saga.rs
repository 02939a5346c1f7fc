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
