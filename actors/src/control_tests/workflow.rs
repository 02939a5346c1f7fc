//! The workflow actor through the gateway: run, show, list, resume and
//! cancel, each with an error reply; a failing step compensates; racing
//! starts of one workflow id start it once.

use cairn_schema::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use super::{Plane, refused};

/// Makes a volume, then (if `fail`) clones from a snapshot that does not
/// exist, so the first step is compensated by deleting the volume.
const MAKE_VOLUME: &str = r#"
apiVersion: cairn.dev/v1
kind: Workflow
metadata: {name: make-volume}
spec:
  params:
    name: {required: true}
    source: {default: "nothing"}
  output: create
  steps:
    - name: create
      run: volume.create
      with: {name: "${name}", size: "1Mi"}
      compensate: {run: volume.delete, with: {name: "${name}"}}
    - name: check
      run: volume.clone
      with: {name: "${name}", snapshot: "${source}", target: "${name}-copy"}
      compensate: {run: volume.delete, with: {name: "${name}-copy"}}
"#;

#[actix_rt::test]
async fn workflows_run_show_list_and_refuse() {
    let plane = Plane::start().await;
    // The clone step fails (no such snapshot): the volume is deleted again.
    let failed = plane
        .call(
            "workflow",
            "run",
            json!({"definition": MAKE_VOLUME, "params": {"name": "w1"}, "workflow": "wf-fail"}),
        )
        .await;
    let message = refused(failed, ErrorCode::NotFound);
    assert!(message.contains("undone"), "{message}");
    assert!(
        plane.engine_volumes().is_empty(),
        "{:?}",
        plane.engine_volumes()
    );
    let shown = plane
        .call("workflow", "show", json!({"id": "wf-fail"}))
        .await
        .unwrap();
    assert_eq!(shown["status"], "compensated", "{shown}");
    assert_eq!(shown["failed_step"], "check");

    // Given a snapshot, it completes; its output is the create step's reply.
    plane
        .call("volume", "create", json!({"name": "src", "size": "1Mi"}))
        .await
        .unwrap();
    plane
        .call(
            "volume",
            "snapshot",
            json!({"name": "src", "snapshot": "s"}),
        )
        .await
        .unwrap();
    let done = plane
        .call(
            "workflow",
            "run",
            json!({"definition": MAKE_VOLUME.replace("${name}\", snapshot", "src\", snapshot"),
                   "params": {"name": "w2", "source": "s"}, "workflow": "wf-ok"}),
        )
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let list = plane.call("workflow", "list", json!({})).await.unwrap();
    let ids: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wf-ok", "wf-fail"], "{list}");
    let completed = plane
        .call("workflow", "list", json!({"status": "completed"}))
        .await
        .unwrap();
    assert_eq!(completed["workflows"].as_array().unwrap().len(), 1);

    refused(
        plane
            .call("workflow", "show", json!({"id": "wf-none"}))
            .await,
        ErrorCode::NotFound,
    );
    refused(
        plane
            .call("workflow", "resume", json!({"id": "wf-none"}))
            .await,
        ErrorCode::NotFound,
    );
    refused(
        plane
            .call("workflow", "cancel", json!({"id": "wf-none"}))
            .await,
        ErrorCode::NotFound,
    );
    // Finished: resume and cancel only show it.
    let resumed = plane
        .call("workflow", "resume", json!({"id": "wf-ok"}))
        .await
        .unwrap();
    assert_eq!(resumed["status"], "completed");
    let cancelled = plane
        .call("workflow", "cancel", json!({"id": "wf-ok"}))
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "completed");
    // A taken id with another definition is refused.
    let other = MAKE_VOLUME.replace("make-volume", "other");
    refused(
        plane
            .client("default")
            .call_raw(
                "cairn.v1.default.workflow.run",
                serde_json::to_vec(
                    &json!({"definition": other, "params": {"name": "x"}, "workflow": "wf-ok"}),
                )
                .unwrap()
                .into(),
                None,
            )
            .await
            .map_err(|e| match e {
                crate::client::Error::Api(e) => e,
                e => panic!("{e}"),
            }),
        ErrorCode::AlreadyExists,
    );
    refused(
        plane
            .call("workflow", "run", json!({"definition": "kind: Workflow\n"}))
            .await,
        ErrorCode::InvalidArgument,
    );
    let verify = plane.call("events", "verify", json!({})).await.unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    plane.stop().await;
}

/// Starts of one workflow id race (retries of one request): one workflow
/// runs, every caller gets its answer, its volume is made once.
#[actix_rt::test]
async fn racing_starts_of_one_workflow() {
    let plane = Plane::start().await;
    plane
        .call("volume", "create", json!({"name": "src", "size": "1Mi"}))
        .await
        .unwrap();
    plane
        .call(
            "volume",
            "snapshot",
            json!({"name": "src", "snapshot": "s"}),
        )
        .await
        .unwrap();
    let body = json!({
        "definition": MAKE_VOLUME.replace("${name}\", snapshot", "src\", snapshot"),
        "params": {"name": "once", "source": "s"},
    });
    let results =
        join_all((0..4).map(|_| plane.call_with_id("workflow", "run", body.clone(), "start-1")))
            .await;
    for result in &results {
        assert_eq!(result.as_ref().unwrap(), results[0].as_ref().unwrap());
    }
    let list = plane.call("workflow", "list", json!({})).await.unwrap();
    assert_eq!(list["workflows"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(plane.engine_volumes(), ["once", "once-copy", "src"]);
    plane.stop().await;
}

/// A workflow whose step starts the same workflow again chains at most
/// `MAX_NESTING` of them, each waiting for the next: the start one level
/// deeper is refused (`resource_exhausted`), the chain unwinds, and no
/// workflow is left running or holding a slot.
#[actix_rt::test]
async fn workflows_nest_at_most_max_nesting_deep() {
    use crate::gateway::MAX_NESTING;
    let plane = Plane::start().await;
    let definition = r#"apiVersion: cairn.dev/v1
kind: Workflow
metadata: {name: again}
spec:
  params:
    def: {required: true}
  steps:
    - name: again
      run: workflow.run
      with: {definition: "${def}", params: {def: "${def}"}}
      retry: {attempts: 1}
"#;
    let top = plane
        .call(
            "workflow",
            "run",
            json!({"definition": definition, "params": {"def": definition}}),
        )
        .await;
    assert!(top.is_err(), "the chain cannot complete: {top:?}");
    let list = plane.call("workflow", "list", json!({})).await.unwrap();
    let all = list["workflows"].as_array().unwrap();
    assert_eq!(all.len(), MAX_NESTING, "{list}");
    let mut refused_deeper = 0;
    for w in all {
        let id = w["id"].as_str().unwrap();
        let shown = plane
            .call("workflow", "show", json!({ "id": id }))
            .await
            .unwrap();
        assert_ne!(shown["status"], "running", "{shown}");
        // Each level fails with the reason of the level below it.
        let failure = shown["failure"].as_str().unwrap_or_default();
        let reason = format!("workflows nest at most {MAX_NESTING} deep");
        assert!(failure.contains(&reason), "{failure}");
        if failure.starts_with(&format!("resource_exhausted: {reason}")) {
            refused_deeper += 1;
        }
    }
    assert_eq!(refused_deeper, 1, "only the deepest was refused: {list}");
    plane.stop().await;
}
