//! The gateway: decoding and refusing bad requests, routing to the
//! tenant's own aggregates only, dedup of retried requests, queries.

use bytes::Bytes;
use cairn_schema::{ApiError, ErrorCode};
use futures::future::join_all;
use serde_json::{Value, json};

use super::{Plane, refused};
use crate::client;

/// A raw request, as any NATS client could send it.
async fn raw(
    plane: &Plane,
    subject: &str,
    payload: &[u8],
    id: Option<&str>,
) -> Result<Value, ApiError> {
    plane
        .client("default")
        .call_raw(subject, Bytes::copy_from_slice(payload), id)
        .await
        .map_err(|e| match e {
            client::Error::Api(e) => e,
            other => panic!("not an API answer: {other}"),
        })
}

#[actix_rt::test]
async fn bad_requests_get_error_replies_and_the_gateway_keeps_serving() {
    let plane = Plane::start().await;
    let ping = plane.call("system", "ping", json!({})).await.unwrap();
    assert_eq!(ping["ok"], true);
    refused(
        plane.call("volume", "explode", json!({})).await,
        ErrorCode::UnknownCommand,
    );
    refused(
        raw(&plane, "cairn.v1.default.volume.create", b"{not json", None).await,
        ErrorCode::InvalidArgument,
    );
    refused(
        plane
            .call(
                "volume",
                "create",
                json!({"name": "v", "size": "1Mi", "extra": 1}),
            )
            .await,
        ErrorCode::InvalidArgument,
    );
    let big = vec![b' '; (1 << 20) + 1];
    refused(
        raw(&plane, "cairn.v1.default.volume.create", &big, None).await,
        ErrorCode::PayloadTooLarge,
    );
    let long_id = "x".repeat(crate::gateway::MAX_REQUEST_ID_BYTES + 1);
    refused(
        raw(
            &plane,
            "cairn.v1.default.system.ping",
            b"{}",
            Some(&long_id),
        )
        .await,
        ErrorCode::InvalidArgument,
    );
    // Still serving.
    plane.call("system", "ping", json!({})).await.unwrap();
    plane.stop().await;
}

#[actix_rt::test]
async fn a_tenant_sees_only_its_own_aggregates() {
    let plane = Plane::start().await;
    plane
        .call_as(
            "acme",
            "volume",
            "create",
            json!({"name": "v", "size": "1Mi"}),
        )
        .await
        .unwrap();
    let theirs = plane
        .call_as("other", "volume", "list", json!({}))
        .await
        .unwrap();
    assert_eq!(theirs["volumes"], json!([]));
    refused(
        plane
            .call_as("other", "volume", "delete", json!({"name": "v"}))
            .await,
        ErrorCode::NotFound,
    );
    // The same name is another volume in another tenant.
    plane
        .call_as(
            "other",
            "volume",
            "create",
            json!({"name": "v", "size": "2Mi"}),
        )
        .await
        .unwrap();
    let acme = plane
        .call_as("acme", "volume", "show", json!({"name": "v"}))
        .await
        .unwrap();
    assert_eq!(acme["size_bytes"], 1 << 20);
    let events = plane
        .call_as("other", "events", "list", json!({}))
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    plane.stop().await;
}

/// A retried request (same id) gets the first answer, also an error's
/// retry after the state changed gets a fresh decision only with a new id.
#[actix_rt::test]
async fn retries_get_the_first_answer() {
    let plane = Plane::start().await;
    let body = json!({"name": "v", "size": "1Mi"});
    let first = plane
        .call_with_id("volume", "create", body.clone(), "id-1")
        .await
        .unwrap();
    let again = plane
        .call_with_id("volume", "create", body.clone(), "id-1")
        .await
        .unwrap();
    assert_eq!(first, again);
    refused(
        plane.call_with_id("volume", "create", body, "id-2").await,
        ErrorCode::AlreadyExists,
    );
    // Racing retries of a delete: one delete, the same answer for all.
    let deletes = join_all(
        (0..4).map(|_| plane.call_with_id("volume", "delete", json!({"name": "v"}), "id-3")),
    )
    .await;
    for d in &deletes {
        assert_eq!(d.as_ref().unwrap(), deletes[0].as_ref().unwrap());
    }
    let events = plane
        .call("events", "list", json!({"kind": "VolumeDeleted"}))
        .await
        .unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    plane.stop().await;
}

#[actix_rt::test]
async fn queries_answer_from_the_actors_and_the_journal() {
    let plane = Plane::start().await;
    plane
        .call("volume", "create", json!({"name": "v", "size": "1Mi"}))
        .await
        .unwrap();
    plane
        .call("volume", "snapshot", json!({"name": "v", "snapshot": "s"}))
        .await
        .unwrap();
    let list = plane.call("volume", "list", json!({})).await.unwrap();
    assert_eq!(list["volumes"][0]["name"], "v");
    let diff = plane
        .call("volume", "diff", json!({"from": "v@s", "to": "v"}))
        .await
        .unwrap();
    assert_eq!(diff["changed_bytes"], 0);
    refused(
        plane
            .call("volume", "diff", json!({"from": "v@nope", "to": "v"}))
            .await,
        ErrorCode::NotFound,
    );
    let scrub = plane
        .call("volume", "scrub", json!({"name": "v"}))
        .await
        .unwrap();
    assert_eq!(scrub["bad_blocks"], json!([]));
    let created = plane
        .call("events", "list", json!({"kind": "VolumeCreated"}))
        .await
        .unwrap();
    let seq = created["events"][0]["seq"].as_u64().unwrap();
    let replay = plane
        .call("events", "replay", json!({"at_seq": seq}))
        .await
        .unwrap();
    assert_eq!(replay["at_seq"], seq, "{replay}");
    assert_eq!(replay["volumes"][0]["snapshots"], json!([]), "{replay}");
    let nodes = plane.call("node", "list", json!({})).await.unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    refused(
        plane.call("node", "fail", json!({"name": "ghost"})).await,
        ErrorCode::NotFound,
    );
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}
