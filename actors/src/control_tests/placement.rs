//! The placement actor: plans go through one owner, so concurrent app
//! creates never overcommit a disk, and reservations are given back.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, create_body, one_disk_topology, refused};
use crate::placement::Pending;

/// Regression (issue 14, "Nothing serialises placement across apps"):
/// each app actor planned against usage that left out the other apps'
/// creates in flight, so racing creates could all be given the last free
/// disk. With one app in place (the gateway used to read every app's
/// state before routing, which let racing creates interleave there), four
/// apps that each need the 2 GiB left race: exactly one fits, the others
/// are refused, and nothing stays reserved.
#[actix_rt::test]
async fn concurrent_app_creates_never_overcommit_a_disk() {
    let plane = Plane::start_with(Some(&one_disk_topology("3Gi"))).await;
    plane
        .call("app", "create", create_body("base", 1, "1Gi"))
        .await
        .unwrap();
    let names = ["a1", "a2", "a3", "a4"];
    let results = join_all(
        names
            .iter()
            .map(|name| plane.call("app", "create", create_body(name, 1, "2Gi"))),
    )
    .await;
    let created: Vec<&str> = names
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(created.len(), 1, "{results:?}");
    for result in results.into_iter().filter(|r| r.is_err()) {
        let e = result.unwrap_err();
        assert_ne!(e.code, ErrorCode::Internal, "{e:?}");
    }
    let nodes = plane.call("node", "list", json!({})).await.unwrap();
    let placed = nodes["nodes"][0]["disks"][0]["placed_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(placed, 3 << 30, "{nodes}");
    let pending = plane
        .cluster
        .registry
        .placement()
        .send(Pending)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    plane.stop().await;
}

/// A refused or deleted app gives its slices back: after deleting the app
/// that holds the disk, another fits.
#[actix_rt::test]
async fn deleting_an_app_releases_its_slices() {
    let plane = Plane::start_with(Some(&one_disk_topology("2Gi"))).await;
    plane
        .call("app", "create", create_body("first", 1, "2Gi"))
        .await
        .unwrap();
    let full = plane
        .call("app", "create", create_body("second", 1, "2Gi"))
        .await;
    assert!(full.is_err(), "{full:?}");
    plane
        .call("app", "delete", json!({"name": "first"}))
        .await
        .unwrap();
    plane
        .call("app", "create", create_body("second", 1, "2Gi"))
        .await
        .unwrap();
    // Full again: a smaller one is refused too.
    let again = plane
        .call("app", "create", create_body("third", 1, "1Gi"))
        .await;
    let message = refused(again, full_code(&plane).await);
    assert!(!message.is_empty());
    plane.stop().await;
}

/// The code a full disk is refused with (whatever the planner says).
async fn full_code(plane: &Plane) -> ErrorCode {
    plane
        .call("app", "create", create_body("probe", 1, "2Gi"))
        .await
        .unwrap_err()
        .code
}
