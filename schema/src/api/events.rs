//! The event table: [`EventDoc`], one event kind as published on
//! `cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>`, and [`EVENTS`], one
//! row per [`Event`] variant (payload type, cluster-wide or not, example).

use super::{SchemaFn, schema};
use crate::Event;
use crate::event::{
    AppCloned, AppConfigSet, AppCreated, AppDeleted, AppPlaced, AppPulled, AppPushed,
    AppRolledBack, AppScaled, AppSnapshotDeleted, AppSnapshotted, NodeFailed, NodeRegistered,
    RepoAdded, RepoRemoved, SnapshotDeleted, VolumeCloned, VolumeCreated, VolumeDeleted,
    VolumeRolledBack, VolumeSnapshotted, WorkflowCancelled, WorkflowCompensationCompleted,
    WorkflowCompensationFailed, WorkflowCompensationStarted, WorkflowFinished, WorkflowResumed,
    WorkflowStarted, WorkflowStepCompleted, WorkflowStepFailed, WorkflowStepStarted,
};

/// One event kind, published on
/// `cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>` once journaled.
#[derive(Clone, Copy)]
pub struct EventDoc {
    /// The payload type; its name is the event kind.
    pub payload: SchemaFn,
    /// A fact about the cluster (nodes), journaled and published under the
    /// reserved tenant [`crate::subject::CLUSTER_TENANT`] instead of a tenant's.
    pub cluster_wide: bool,
    /// The event as JSON (`{"kind":…, …payload}`). Its kind and aggregate
    /// give the subject.
    pub example: &'static str,
}

impl EventDoc {
    /// The example, decoded. Panics on a bad row (a unit test runs them all).
    pub fn event(&self) -> Event {
        serde_json::from_str(self.example)
            .unwrap_or_else(|e| panic!("event example {} is not an Event: {e}", self.example))
    }

    /// The aggregate kind (`volume`), the subject token before the kind.
    pub fn aggregate_kind(&self) -> String {
        let aggregate = self.event().aggregate();
        aggregate.split('/').next().unwrap_or_default().to_owned()
    }
}

/// Every event kind [`Event`] has (a test checks none is missing).
pub const EVENTS: &[EventDoc] = &[
    EventDoc {
        payload: schema::<VolumeCreated>,
        cluster_wide: false,
        example: r#"{"kind":"VolumeCreated","volume":"db","size_bytes":10737418240,"compression":"zstd","encrypted":false}"#,
    },
    EventDoc {
        payload: schema::<VolumeSnapshotted>,
        cluster_wide: false,
        example: r#"{"kind":"VolumeSnapshotted","volume":"db","snapshot":"before-upgrade"}"#,
    },
    EventDoc {
        payload: schema::<VolumeCloned>,
        cluster_wide: false,
        example: r#"{"kind":"VolumeCloned","volume":"db-copy","source":"db","snapshot":"before-upgrade","size_bytes":10737418240}"#,
    },
    EventDoc {
        payload: schema::<VolumeRolledBack>,
        cluster_wide: false,
        example: r#"{"kind":"VolumeRolledBack","volume":"db","snapshot":"before-upgrade"}"#,
    },
    EventDoc {
        payload: schema::<SnapshotDeleted>,
        cluster_wide: false,
        example: r#"{"kind":"SnapshotDeleted","volume":"db","snapshot":"before-upgrade"}"#,
    },
    EventDoc {
        payload: schema::<VolumeDeleted>,
        cluster_wide: false,
        example: r#"{"kind":"VolumeDeleted","volume":"db"}"#,
    },
    EventDoc {
        payload: schema::<AppCreated>,
        cluster_wide: false,
        example: concat!(
            r#"{"kind":"AppCreated","app":"shop","objects":[{"api_version":"v1","kind":"ConfigMap","#,
            r#""name":"db-config","json":"{\"apiVersion\":\"v1\",\"data\":{\"max_connections\":\"100\"},"#,
            r#"\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"db-config\"}}"}],"#,
            r#""volumes":[{"pvc":"data-db-0","claim":"data","workload":"db","ordinal":0,"#,
            r#""size_bytes":67108864,"storage_class":null}]}"#,
        ),
    },
    EventDoc {
        payload: schema::<AppScaled>,
        cluster_wide: false,
        example: concat!(
            r#"{"kind":"AppScaled","app":"shop","workload_kind":"StatefulSet","workload":"db","#,
            r#""from_replicas":1,"replicas":2,"added":[{"pvc":"data-db-1","claim":"data","#,
            r#""workload":"db","ordinal":1,"size_bytes":67108864,"storage_class":null}],"removed":[]}"#,
        ),
    },
    EventDoc {
        payload: schema::<AppConfigSet>,
        cluster_wide: false,
        example: r#"{"kind":"AppConfigSet","app":"shop","configmap":"db-config","key":"max_connections","value":"200"}"#,
    },
    EventDoc {
        payload: schema::<AppDeleted>,
        cluster_wide: false,
        example: r#"{"kind":"AppDeleted","app":"shop"}"#,
    },
    EventDoc {
        payload: schema::<NodeRegistered>,
        cluster_wide: true,
        example: concat!(
            r#"{"kind":"NodeRegistered","node":"node-1","rack":"rack-1","datacenter":"dc-1","#,
            r#""disks":[{"name":"ssd-1","path":"/var/lib/cairn/nodes/node-1/ssd-1","#,
            r#""media":"ssd","capacity_bytes":107374182400}]}"#,
        ),
    },
    EventDoc {
        payload: schema::<NodeFailed>,
        cluster_wide: true,
        example: r#"{"kind":"NodeFailed","node":"node-3"}"#,
    },
    EventDoc {
        payload: schema::<AppPlaced>,
        cluster_wide: false,
        example: concat!(
            r#"{"kind":"AppPlaced","app":"shop","volumes":[{"replica":"db-0","pvc":"data-db-0","#,
            r#""slices":[{"index":0,"node":"node-1","disk":"ssd-1"}]}]}"#,
        ),
    },
    EventDoc {
        payload: schema::<AppSnapshotted>,
        cluster_wide: false,
        example: concat!(
            r#"{"kind":"AppSnapshotted","app":"shop","snapshot":"before-upgrade","message":"","objects":[],"#,
            r#""volumes":[{"pvc":"data-db-0","claim":"data","workload":"db","ordinal":0,"size_bytes":1073741824,"storage_class":null}],"workflow":"wf-1"}"#,
        ),
    },
    EventDoc {
        payload: schema::<AppSnapshotDeleted>,
        cluster_wide: false,
        example: r#"{"kind":"AppSnapshotDeleted","app":"shop","snapshot":"before-upgrade"}"#,
    },
    EventDoc {
        payload: schema::<AppRolledBack>,
        cluster_wide: false,
        example: r#"{"kind":"AppRolledBack","app":"shop","snapshot":"before-upgrade","objects":[],"volumes":[],"retired":["data-db-1"],"deleted":[]}"#,
    },
    EventDoc {
        payload: schema::<AppCloned>,
        cluster_wide: false,
        example: r#"{"kind":"AppCloned","app":"shop-dev","source":"shop","snapshot":"before-upgrade","overrides":["replicas=1"]}"#,
    },
    EventDoc {
        payload: schema::<WorkflowStarted>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowStarted","workflow":"wf-1","name":"app-snapshot","definition":"kind: Workflow","hash":"ab12","params":[["app","\"shop\""]],"app":"shop","parent":null}"#,
    },
    EventDoc {
        payload: schema::<WorkflowStepStarted>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowStepStarted","workflow":"wf-1","step":0,"attempt":1}"#,
    },
    EventDoc {
        payload: schema::<WorkflowStepCompleted>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowStepCompleted","workflow":"wf-1","step":0,"result":"{}"}"#,
    },
    EventDoc {
        payload: schema::<WorkflowStepFailed>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowStepFailed","workflow":"wf-1","step":0,"attempt":1,"code":"hook_failed","error":"exit status: 3","retryable":false}"#,
    },
    EventDoc {
        payload: schema::<WorkflowCancelled>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowCancelled","workflow":"wf-1","reason":"cancelled"}"#,
    },
    EventDoc {
        payload: schema::<WorkflowCompensationStarted>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowCompensationStarted","workflow":"wf-1","step":1}"#,
    },
    EventDoc {
        payload: schema::<WorkflowCompensationCompleted>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowCompensationCompleted","workflow":"wf-1","step":1}"#,
    },
    EventDoc {
        payload: schema::<WorkflowCompensationFailed>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowCompensationFailed","workflow":"wf-1","step":1,"code":"unavailable","error":"journal closed"}"#,
    },
    EventDoc {
        payload: schema::<WorkflowResumed>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowResumed","workflow":"wf-1"}"#,
    },
    EventDoc {
        payload: schema::<WorkflowFinished>,
        cluster_wide: false,
        example: r#"{"kind":"WorkflowFinished","workflow":"wf-1","outcome":"completed","failed_step":null,"error":null}"#,
    },
    EventDoc {
        payload: schema::<RepoAdded>,
        cluster_wide: false,
        example: r#"{"kind":"RepoAdded","repo":"offsite","url":"s3://backups/cairn?endpoint=http://127.0.0.1:9000","key_kind":"key-file","key_path":"/etc/cairn/offsite.key","initialized":true}"#,
    },
    EventDoc {
        payload: schema::<RepoRemoved>,
        cluster_wide: false,
        example: r#"{"kind":"RepoRemoved","repo":"offsite"}"#,
    },
    EventDoc {
        payload: schema::<AppPushed>,
        cluster_wide: false,
        example: r#"{"kind":"AppPushed","app":"shop","snapshot":"nightly","repo":"offsite","manifest":"8d3f0c1e2b4a59687d6e5f4a3b2c1d0e","parent":null,"logical_bytes":1073741824,"uploaded_bytes":52428800,"workflow":"push-1"}"#,
    },
    EventDoc {
        payload: schema::<AppPulled>,
        cluster_wide: false,
        example: r#"{"kind":"AppPulled","app":"shop","repo":"offsite","manifest":"8d3f0c1e2b4a59687d6e5f4a3b2c1d0e","source":"shop","snapshot":"nightly","objects":[],"volumes":[],"retired":[],"deleted":[],"workflow":"pull-1"}"#,
    },
];
