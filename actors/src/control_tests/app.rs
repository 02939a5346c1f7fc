//! The app actor through the gateway: create, get, list, scale,
//! config-set and the app's history commands, each with an error reply,
//! and racing creates of one app.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, create_body, refused};

#[actix_rt::test]
async fn every_app_command_succeeds_and_refuses() {
    let plane = Plane::start().await;
    let created = plane
        .call("app", "create", create_body("shop", 2, "1Mi"))
        .await
        .unwrap();
    assert_eq!(
        created["volumes"],
        json!(["shop/data-db-0", "shop/data-db-1"])
    );
    refused(
        plane
            .call("app", "create", create_body("shop", 1, "1Mi"))
            .await,
        ErrorCode::AlreadyExists,
    );
    refused(
        plane
            .call("app", "create", json!({"manifest": "kind: Nonsense\n"}))
            .await,
        ErrorCode::InvalidArgument,
    );

    let got = plane
        .call("app", "get", json!({"name": "shop"}))
        .await
        .unwrap();
    assert_eq!(got["workloads"][0]["replicas"], 2);
    refused(
        plane.call("app", "get", json!({"name": "nope"})).await,
        ErrorCode::NotFound,
    );
    let list = plane.call("app", "list", json!({})).await.unwrap();
    assert_eq!(list["apps"].as_array().unwrap().len(), 1);

    let scaled = plane
        .call("app", "scale", json!({"name": "shop", "replicas": 3}))
        .await
        .unwrap();
    assert_eq!(scaled["added"], json!(["shop/data-db-2"]));
    refused(
        plane
            .call("app", "scale", json!({"name": "nope", "replicas": 3}))
            .await,
        ErrorCode::NotFound,
    );

    plane
        .call(
            "app",
            "config-set",
            json!({"name": "shop", "configmap": "settings", "key": "mode", "value": "safe"}),
        )
        .await
        .unwrap();
    let got = plane
        .call("app", "get", json!({"name": "shop"}))
        .await
        .unwrap();
    assert_eq!(got["configmaps"]["settings"]["mode"], "safe");
    refused(
        plane
            .call(
                "app",
                "config-set",
                json!({"name": "shop", "configmap": "missing", "key": "k", "value": "v"}),
            )
            .await,
        ErrorCode::NotFound,
    );

    // An app's volumes are the app's: not deletable one by one.
    refused(
        plane
            .call("volume", "delete", json!({"name": "shop/data-db-0"}))
            .await,
        ErrorCode::FailedPrecondition,
    );
    let log = plane
        .call("app", "log", json!({"name": "shop"}))
        .await
        .unwrap();
    assert!(!log["entries"].as_array().unwrap().is_empty());

    plane
        .call("app", "delete", json!({"name": "shop"}))
        .await
        .unwrap();
    refused(
        plane.call("app", "get", json!({"name": "shop"})).await,
        ErrorCode::NotFound,
    );
    assert!(
        plane.engine_volumes().is_empty(),
        "{:?}",
        plane.engine_volumes()
    );
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}

/// Different requests creating one app race: one creates it, the others
/// are refused, and the block engine holds one app's volumes.
#[actix_rt::test]
async fn racing_creates_of_one_app() {
    let plane = Plane::start().await;
    let results =
        join_all((0..4).map(|_| plane.call("app", "create", create_body("one", 1, "1Mi")))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for result in results.into_iter().filter(|r| r.is_err()) {
        refused(result, ErrorCode::AlreadyExists);
    }
    assert_eq!(plane.engine_volumes(), ["one/data-db-0"]);
    plane.stop().await;
}
