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

/// The decided events of creating app `name` (1 replica of `storage`).
fn create_events(name: &str, storage: &str) -> Vec<cairn_schema::Event> {
    let body = serde_json::to_vec(&create_body(name, 1, storage)).unwrap();
    let cairn_schema::Command::App(command) =
        cairn_schema::Command::parse("app", "create", &body).unwrap()
    else {
        panic!("app.create parses into an app command");
    };
    cairn_schema::AppState::default()
        .decide(&command, &|_| false)
        .unwrap()
}

/// The actor alone: a reservation counts until it is settled or released.
#[actix_rt::test]
async fn a_reservation_counts_until_it_is_settled_or_released() {
    use crate::placement::{PlacementActor, Release, Reserve, Settle};
    use actix::Actor;
    let topology = cairn_placement::Topology::from_yaml(&one_disk_topology("2Gi")).unwrap();
    let actor = PlacementActor::new(std::iter::empty(), 16).start();
    let reserve = |name: &str| Reserve {
        tenant: "t".into(),
        before: cairn_schema::AppState::default(),
        events: create_events(name, "2Gi"),
        topology: topology.clone(),
    };
    let first = actor.send(reserve("a")).await.unwrap().unwrap();
    assert_ne!(first.ticket, 0);
    assert!(first.placed.is_some());
    // Not committed yet, but counted: the disk is full.
    assert!(actor.send(reserve("b")).await.unwrap().is_err());
    actor.send(Release(first.ticket)).await.unwrap();
    let second = actor.send(reserve("b")).await.unwrap().unwrap();
    // Settled: now held as b's placement, the reservation gone.
    let Some(cairn_schema::Event::AppPlaced(placed)) = second.placed else {
        panic!("an AppPlaced event");
    };
    actor
        .send(Settle {
            tenant: "t".into(),
            app: "b".into(),
            ticket: Some(second.ticket),
            placed: placed.volumes,
            rebuilt: false,
        })
        .await
        .unwrap();
    assert_eq!(actor.send(Pending).await.unwrap(), 0);
    assert!(actor.send(reserve("c")).await.unwrap().is_err());
    // b deleted: its placement is empty, the space free again.
    actor
        .send(Settle {
            tenant: "t".into(),
            app: "b".into(),
            ticket: None,
            placed: Vec::new(),
            rebuilt: false,
        })
        .await
        .unwrap();
    assert!(actor.send(reserve("c")).await.unwrap().is_ok());
}
