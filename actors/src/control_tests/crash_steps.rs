//! A crash at each saga step of every built-in app workflow: for each
//! journal append the operation makes (its app commits and every saga
//! fact), the process dies while writing that append's log frame, either
//! before any of it is durable (`Tear { keep_bytes: 0 }`: the outcome is
//! not journaled) or after all of it is (the whole frame: journaled but
//! never answered). The plane restarts on the same journal disk and data
//! dir; the workflow must end completed or compensated (bounded wait),
//! the journal's fold must equal what the actors serve, and the block
//! pool's own volumes and snapshots must equal the journal's.
//! app-push, app-pull and app-pull-repair need a repository and are not
//! covered here.
//!
//! The process dies at the tear: the twin then answers no append again
//! ([`FaultyJournal::hang_when_torn`](crate::journal::FaultyJournal::hang_when_torn)),
//! so no caller runs the cleanup it runs after a failed commit, and the
//! plane is abandoned undrained ([`Plane::restart`]). An earlier version
//! answered the torn append with an error instead, and app-snapshot's 5th
//! append then left a journaled snapshot missing from the pool: the
//! caller removed the engine snapshot of a commit that was durable. The
//! real journal has the same rule now: a batch whose frame may be durable
//! is erased before its callers hear of a failure, or the process stops
//! (`journal/writer.rs`, `stop_undecided`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Plane, create_body};
use crate::journal::Fault;
use crate::volume::engine_name;

/// How long a restarted workflow may take to end before the test fails.
const SETTLE: Duration = Duration::from_secs(20);

struct Case {
    definition: &'static str,
    verb: &'static str,
    body: fn() -> Value,
}

const CASES: &[Case] = &[
    Case {
        definition: "app-snapshot",
        verb: "snapshot",
        body: || json!({"name": "shop", "snapshot": "s2"}),
    },
    Case {
        definition: "app-rollback",
        verb: "rollback",
        body: || json!({"name": "shop", "snapshot": "s1"}),
    },
    Case {
        definition: "app-clone",
        verb: "clone",
        body: || json!({"name": "shop", "snapshot": "s1", "target": "branch"}),
    },
    Case {
        definition: "app-snapshot-delete",
        verb: "snapshot-delete",
        body: || json!({"name": "shop", "snapshot": "s1"}),
    },
    Case {
        definition: "app-delete",
        verb: "delete",
        body: || json!({"name": "shop"}),
    },
];

/// A plane with app `shop` and its snapshot `s1`.
async fn prepared() -> Plane {
    let plane = Plane::start().await;
    plane
        .call("app", "create", create_body("shop", 1, "1Mi"))
        .await
        .expect("app create");
    plane
        .call("app", "snapshot", json!({"name": "shop", "snapshot": "s1"}))
        .await
        .expect("app snapshot s1");
    plane
}

/// Journal appends the operation makes when nothing fails.
async fn appends_of(case: &Case) -> u64 {
    let plane = prepared().await;
    let before = plane.journal.appends();
    plane
        .call_with_id("app", case.verb, (case.body)(), "op")
        .await
        .unwrap_or_else(|e| panic!("{}: the clean run fails: {e:?}", case.definition));
    let n = plane.journal.appends() - before;
    plane.stop().await;
    n
}

async fn crash_at_every_step(case: &Case) {
    let steps = appends_of(case).await;
    assert!(steps > 0, "{}: no append", case.definition);
    for k in 1..=steps {
        for keep in [0, usize::MAX] {
            let at = format!("{} append {k}/{steps} keep {keep}", case.definition);
            let plane = prepared().await;
            let n = plane.journal.appends() + k;
            plane.journal.inject_at(n, Fault::Tear { keep_bytes: keep });
            plane.journal.hang_when_torn();
            // The process dies at the tear: the dead journal answers
            // nothing more, so no caller cleans up after it; the plane is
            // restarted as soon as the frame is torn.
            {
                let call = plane.call_with_id("app", case.verb, (case.body)(), "op");
                tokio::pin!(call);
                let deadline = tokio::time::Instant::now() + SETTLE;
                let mut answered = false;
                while !plane.journal.is_torn() {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{at}: the append never came"
                    );
                    tokio::select! {
                        _ = &mut call, if !answered => answered = true,
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            }
            let plane = plane.restart().await;
            settle(&plane, &at).await;
            check(&plane, &at).await;
            plane.stop().await;
        }
    }
}

/// Waits (bounded) until no workflow is running, then asserts each ended
/// completed or compensated.
async fn settle(plane: &Plane, at: &str) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let list = plane
            .call("workflow", "list", json!({}))
            .await
            .unwrap_or_else(|e| panic!("{at}: workflow list: {e:?}"));
        let statuses: Vec<(String, String)> = list["workflows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| (w["id"].to_string(), w["status"].to_string()))
            .collect();
        let open: Vec<_> = statuses
            .iter()
            .filter(|(_, s)| s != "\"completed\"" && s != "\"compensated\"")
            .collect();
        if open.is_empty() {
            return;
        }
        if open.iter().any(|(_, s)| s == "\"stuck\"") || tokio::time::Instant::now() >= deadline {
            panic!("{at}: workflows did not end completed or compensated: {statuses:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fold equals what is served; the pool equals the fold.
async fn check(plane: &Plane, at: &str) {
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{at}: events verify: {verify}");
    let world = plane
        .cluster
        .services
        .journal
        .replay_full()
        .unwrap_or_else(|e| panic!("{at}: replay: {e}"))
        .world;

    let listed = plane.call("volume", "list", json!({})).await.unwrap();
    let served: BTreeMap<String, BTreeSet<String>> = listed["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let snaps = v["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect();
            (v["name"].as_str().unwrap_or_default().to_owned(), snaps)
        })
        .collect();
    let folded: BTreeMap<String, BTreeSet<String>> = world
        .volumes
        .iter()
        .filter(|((tenant, _), state)| tenant == "default" && state.exists())
        .map(|((_, name), state)| (name.clone(), state.snapshots.keys().cloned().collect()))
        .collect();
    assert_eq!(served, folded, "{at}: volume.list differs from the fold");

    let listed = plane.call("app", "list", json!({})).await.unwrap();
    let mut served = BTreeMap::new();
    for app in listed["apps"].as_array().into_iter().flatten() {
        let name = app["name"].as_str().unwrap_or_default().to_owned();
        let snaps = plane
            .call("app", "snapshots", json!({"name": name}))
            .await
            .unwrap();
        let snaps: BTreeSet<String> = snaps["snapshots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        served.insert(name, snaps);
    }
    let folded: BTreeMap<String, BTreeSet<String>> = world
        .apps
        .iter()
        .filter(|((tenant, _), state)| tenant == "default" && state.created_seq != 0)
        .map(|((_, name), state)| (name.clone(), state.snapshots.keys().cloned().collect()))
        .collect();
    assert_eq!(
        served, folded,
        "{at}: app list/snapshots differ from the fold"
    );

    let pool = &plane.cluster.services.pool;
    let engine: BTreeMap<String, BTreeSet<String>> = pool
        .list_volumes()
        .into_iter()
        .map(|name| {
            let info = pool
                .volume_info(&name)
                .unwrap_or_else(|e| panic!("{at}: the pool cannot describe {name}: {e}"));
            (name, info.snapshots.into_iter().map(|s| s.name).collect())
        })
        .collect();
    let journal: BTreeMap<String, BTreeSet<String>> = world
        .volumes
        .iter()
        .filter(|(_, state)| state.exists())
        .map(|((tenant, name), state)| {
            (
                engine_name(tenant, name),
                state.snapshots.keys().cloned().collect(),
            )
        })
        .collect();
    assert_eq!(
        engine, journal,
        "{at}: the block pool differs from the journal"
    );
}

#[actix_rt::test]
async fn crash_at_each_step_of_app_snapshot() {
    crash_at_every_step(&CASES[0]).await;
}

#[actix_rt::test]
async fn crash_at_each_step_of_app_rollback() {
    crash_at_every_step(&CASES[1]).await;
}

#[actix_rt::test]
async fn crash_at_each_step_of_app_clone() {
    crash_at_every_step(&CASES[2]).await;
}

#[actix_rt::test]
async fn crash_at_each_step_of_app_snapshot_delete() {
    crash_at_every_step(&CASES[3]).await;
}

#[actix_rt::test]
async fn crash_at_each_step_of_app_delete() {
    crash_at_every_step(&CASES[4]).await;
}
