//! The control plane over a failing journal: a commit that fails leaves no
//! fact and no data behind, and a retry under the same request id works.

use cairn_schema::ErrorCode;
use serde_json::json;

use super::{Plane, refused};
use crate::journal::{Fault, Journal};

#[actix_rt::test]
async fn a_failed_commit_leaves_nothing_and_a_retry_works() {
    let plane = Plane::start().await;
    let before = plane.journal.len().unwrap();
    plane.journal.inject_next(Fault::FailCommit);
    let body = json!({"name": "v", "size": "1Mi"});
    refused(
        plane
            .call_with_id("volume", "create", body.clone(), "create-v")
            .await,
        ErrorCode::Unavailable,
    );
    assert_eq!(plane.journal.len().unwrap(), before, "no fact journaled");
    assert!(
        !plane.engine_volumes().contains(&"v".to_owned()),
        "the volume created before the commit is removed: {:?}",
        plane.engine_volumes()
    );
    plane
        .call_with_id("volume", "create", body, "create-v")
        .await
        .expect("the retry is a new attempt, not a duplicate of a failure");
    assert!(plane.engine_volumes().contains(&"v".to_owned()));
    assert_eq!(plane.journal.verify_chain().unwrap(), Ok(before + 1));
    plane.stop().await;
}
