//! The volume actor through the gateway: create, snapshot, clone,
//! rollback, snapshot-delete and delete, each with an error reply, and
//! racing copies of one request.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, refused};

#[actix_rt::test]
async fn every_volume_command_succeeds_and_refuses() {
    let plane = Plane::start().await;
    let created = plane
        .call("volume", "create", json!({"name": "v", "size": "1Mi"}))
        .await
        .unwrap();
    assert_eq!(created["name"], "v");
    assert_eq!(created["size_bytes"], 1 << 20);
    refused(
        plane
            .call("volume", "create", json!({"name": "v", "size": "1Mi"}))
            .await,
        ErrorCode::AlreadyExists,
    );
    refused(
        plane
            .call("volume", "create", json!({"name": "w", "size": 0}))
            .await,
        ErrorCode::InvalidArgument,
    );

    plane
        .call("volume", "snapshot", json!({"name": "v", "snapshot": "s1"}))
        .await
        .unwrap();
    refused(
        plane
            .call("volume", "snapshot", json!({"name": "v", "snapshot": "s1"}))
            .await,
        ErrorCode::AlreadyExists,
    );
    refused(
        plane
            .call(
                "volume",
                "snapshot",
                json!({"name": "nope", "snapshot": "s1"}),
            )
            .await,
        ErrorCode::NotFound,
    );

    plane
        .call(
            "volume",
            "clone",
            json!({"name": "v", "snapshot": "s1", "target": "c"}),
        )
        .await
        .unwrap();
    refused(
        plane
            .call(
                "volume",
                "clone",
                json!({"name": "v", "snapshot": "missing", "target": "c2"}),
            )
            .await,
        ErrorCode::NotFound,
    );

    plane
        .call("volume", "rollback", json!({"name": "v", "snapshot": "s1"}))
        .await
        .unwrap();
    refused(
        plane
            .call("volume", "rollback", json!({"name": "v", "snapshot": "s9"}))
            .await,
        ErrorCode::NotFound,
    );

    let snapshots = plane
        .call("volume", "snapshots", json!({"name": "v"}))
        .await
        .unwrap();
    assert_eq!(snapshots["snapshots"].as_array().unwrap().len(), 1);
    plane
        .call(
            "volume",
            "snapshot-delete",
            json!({"name": "v", "snapshot": "s1"}),
        )
        .await
        .unwrap();

    plane
        .call("volume", "delete", json!({"name": "c"}))
        .await
        .unwrap();
    refused(
        plane.call("volume", "delete", json!({"name": "c"})).await,
        ErrorCode::NotFound,
    );
    refused(
        plane.call("volume", "show", json!({"name": "c"})).await,
        ErrorCode::NotFound,
    );
    // The block engine agrees with the journal.
    assert_eq!(plane.engine_volumes(), ["v"]);
    plane.stop().await;
}

/// Copies of one request (same request id) racing each other get one
/// answer and make one volume; different requests for one name make one
/// volume and the rest are refused.
#[actix_rt::test]
async fn racing_volume_creates() {
    let plane = Plane::start().await;
    let body = json!({"name": "r", "size": "1Mi"});
    let copies =
        join_all((0..4).map(|_| plane.call_with_id("volume", "create", body.clone(), "req-1")))
            .await;
    for copy in &copies {
        assert_eq!(copy.as_ref().unwrap(), copies[0].as_ref().unwrap());
    }
    let ids: Vec<String> = (0..4).map(|i| format!("req-s-{i}")).collect();
    let others =
        join_all(ids.iter().map(|id| {
            plane.call_with_id("volume", "create", json!({"name": "s", "size": "1Mi"}), id)
        }))
        .await;
    assert_eq!(others.iter().filter(|r| r.is_ok()).count(), 1, "{others:?}");
    for other in others.into_iter().filter(|r| r.is_err()) {
        refused(other, ErrorCode::AlreadyExists);
    }
    assert_eq!(plane.engine_volumes(), ["r", "s"]);
    plane.stop().await;
}
