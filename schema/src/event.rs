//! Events: past-tense facts, appended to the journal and never changed.
//!
//! # Tags
//! Each variant has an explicit numeric tag, stored in the journal next to
//! the postcard-encoded payload. A tag is never reused, even after a variant
//! is retired: the table in [`events!`] is append-only. JSON (at the edge)
//! names the variant by its `kind` string instead.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::{AppVolume, Object};

/// A volume came into being, with its block-engine settings. *Since v0.2
/// (tag 5); tag 1 events of v0.1 are upcast to it on decode.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeCreated {
    pub volume: String,
    pub size_bytes: u64,
    /// `lz4`, `zstd` or `none`.
    pub compression: String,
    pub encrypted: bool,
}

/// Version 1 of [`VolumeCreated`] (tag 1, retired for writing in v0.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeCreatedV1 {
    pub volume: String,
    pub size_bytes: u64,
}

impl From<VolumeCreatedV1> for VolumeCreated {
    fn from(v1: VolumeCreatedV1) -> VolumeCreated {
        // v0.1 volumes were uncompressed sparse files; the v0.2 engine
        // compresses with lz4 by default, which is what they get on upgrade.
        VolumeCreated {
            volume: v1.volume,
            size_bytes: v1.size_bytes,
            compression: "lz4".to_owned(),
            encrypted: false,
        }
    }
}

/// A volume was created from a snapshot of another, sharing its blocks.
/// *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeCloned {
    pub volume: String,
    pub source: String,
    pub snapshot: String,
    pub size_bytes: u64,
}

/// A volume was made to read as one of its snapshots again. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeRolledBack {
    pub volume: String,
    pub snapshot: String,
}

/// A volume and all its snapshots were removed. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeDeleted {
    pub volume: String,
}

/// A volume was frozen as a named, read-only snapshot. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSnapshotted {
    pub volume: String,
    pub snapshot: String,
}

/// One snapshot of a volume was removed. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotDeleted {
    pub volume: String,
    pub snapshot: String,
}

/// An app came into being from a manifest. Its volumes' `VolumeCreated`
/// events precede it in the same commit. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppCreated {
    pub app: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
}

/// A workload's replica count changed. `added` volumes' `VolumeCreated`
/// events precede it in the same commit, `removed` ones' `VolumeDeleted`
/// follow it. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppScaled {
    pub app: String,
    /// `StatefulSet` or `Deployment`. In JSON `workload_kind`, because
    /// `kind` is the event's own tag there (postcard, in the journal, has
    /// no names, so the rename changes no stored byte).
    #[serde(rename = "workload_kind")]
    pub kind: String,
    pub workload: String,
    pub from_replicas: u32,
    pub replicas: u32,
    pub added: Vec<AppVolume>,
    /// PVC names.
    pub removed: Vec<String>,
}

/// One key of one of an app's ConfigMaps was set. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppConfigSet {
    pub app: String,
    pub configmap: String,
    pub key: String,
    pub value: String,
}

/// An app was removed; its volumes' `VolumeDeleted` events follow it in the
/// same commit. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppDeleted {
    pub app: String,
}

/// A node joined the cluster, or came back with different disks or labels.
/// Node events belong to no tenant (see
/// [`crate::subject::CLUSTER_TENANT`]). *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRegistered {
    pub node: String,
    pub rack: String,
    pub datacenter: String,
    pub disks: Vec<NodeDisk>,
}

/// One disk of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeDisk {
    pub name: String,
    /// Its directory on the node.
    pub path: String,
    /// `ssd`, `hdd` or `nvme`.
    pub media: String,
    pub capacity_bytes: u64,
}

/// A node was marked failed (`cairn node fail`): nothing new is placed on
/// it, and what it held counts as lost. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeFailed {
    pub node: String,
}

/// Where an app's volumes' slices were placed (by the planner), for the
/// volumes it names; later events replace a volume's entry. *Since v0.2.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppPlaced {
    pub app: String,
    pub volumes: Vec<PlacedVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlacedVolume {
    /// `<statefulset>-<ordinal>`, or none for a standalone PVC.
    pub replica: Option<String>,
    pub pvc: String,
    pub slices: Vec<PlacedSlice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlacedSlice {
    pub index: u32,
    pub node: String,
    pub disk: String,
}

/// An app snapshot: every volume of the app fenced at one instant and
/// snapshotted (their `VolumeSnapshotted` events precede this one in the
/// same commit), with the app's objects (config and metadata) as they were.
/// *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotted {
    pub app: String,
    pub snapshot: String,
    pub message: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
    /// The workflow that took it.
    pub workflow: String,
}

/// An app snapshot was removed. Its volumes' `SnapshotDeleted` events follow
/// in the same commit, and `VolumeDeleted` for retired volumes no snapshot
/// needs any more. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotDeleted {
    pub app: String,
    pub snapshot: String,
}

/// An app was made as it was at one of its snapshots: objects (config and
/// metadata) and volumes. The `VolumeRolledBack` events of its volumes
/// precede this one in the same commit. `retired` volumes (replicas added
/// since the snapshot) leave the app but are kept while a snapshot holds
/// them; `deleted` ones were held by none. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppRolledBack {
    pub app: String,
    pub snapshot: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
    /// PVC names.
    pub retired: Vec<String>,
    /// PVC names.
    pub deleted: Vec<String>,
}

/// An app was created as a thin clone of another app's snapshot; its
/// `AppCreated` and its volumes' `VolumeCloned` events precede this one in
/// the same commit. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppCloned {
    pub app: String,
    pub source: String,
    pub snapshot: String,
    /// The `--set` overrides applied, as given.
    pub overrides: Vec<String>,
}

/// A backup repository was registered under a name (`repo add`): its
/// location and where its key comes from. The store was opened (or
/// initialised) with that key before this was written. *Since v0.4.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoAdded {
    pub repo: String,
    /// `file:///dir` or `s3://bucket/prefix?…`, secrets removed.
    pub url: String,
    /// `key-file` or `passphrase-file`.
    pub key_kind: String,
    /// The file holding the key or passphrase, on the server.
    pub key_path: String,
    /// True when `repo add` created the repository (and, without a key
    /// file, its key).
    pub initialized: bool,
}

/// A repository's registration was removed (its contents stay). *Since
/// v0.4.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoRemoved {
    pub repo: String,
}

/// An app snapshot was pushed: its manifest is stored in the repository.
/// *Since v0.4.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppPushed {
    pub app: String,
    pub snapshot: String,
    pub repo: String,
    pub manifest: String,
    /// The manifest this push was incremental to.
    pub parent: Option<String>,
    pub logical_bytes: u64,
    pub uploaded_bytes: u64,
    pub workflow: String,
}

/// An app was made from a pulled manifest: created (its `AppCreated` and
/// `VolumeCreated` events precede this one) or repaired (`VolumeCreated`
/// for volumes it lacked precede it, `VolumeDeleted` for `deleted` ones
/// follow). Objects and volumes become the manifest's; the data is written
/// by the workflow's next step. *Since v0.4.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppPulled {
    pub app: String,
    pub repo: String,
    pub manifest: String,
    /// The app and snapshot as pushed.
    pub source: String,
    pub snapshot: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
    /// PVC names that left the app but that snapshots hold.
    pub retired: Vec<String>,
    /// PVC names that left the app and were deleted.
    pub deleted: Vec<String>,
    pub workflow: String,
}

/// A workflow (saga) began. Its definition is pinned: the text as given
/// and its blake3 hash, with the parameters it was started with. *Since
/// v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStarted {
    pub workflow: String,
    /// The definition's name (`app-snapshot`, or a user workflow's).
    pub name: String,
    pub definition: String,
    /// blake3 of `definition`, hex.
    pub hash: String,
    pub params: Vec<(String, String)>,
    /// The app it works on, if one (for `app log` and listing).
    pub app: Option<String>,
    /// The workflow whose step started this one, if any.
    pub parent: Option<String>,
}

/// A step's attempt began. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStepStarted {
    pub workflow: String,
    pub step: u32,
    pub attempt: u32,
}

/// A step succeeded; `result` is its command's JSON reply. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStepCompleted {
    pub workflow: String,
    pub step: u32,
    pub result: String,
}

/// A step's attempt failed. `retryable`: the error may pass on another
/// attempt (else the workflow compensates at once). *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStepFailed {
    pub workflow: String,
    pub step: u32,
    pub attempt: u32,
    pub code: String,
    pub error: String,
    pub retryable: bool,
}

/// A workflow was cancelled (`workflow cancel`); it compensates. *Since
/// v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowCancelled {
    pub workflow: String,
    pub reason: String,
}

/// The compensation of a completed step began. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowCompensationStarted {
    pub workflow: String,
    pub step: u32,
}

/// The compensation of a step succeeded. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowCompensationCompleted {
    pub workflow: String,
    pub step: u32,
}

/// The compensation of a step failed. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowCompensationFailed {
    pub workflow: String,
    pub step: u32,
    pub code: String,
    pub error: String,
}

/// `workflow resume` asked a stuck workflow to try again. *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowResumed {
    pub workflow: String,
}

/// A workflow ended: `completed`, `compensated` (a step failed or it was
/// cancelled, and every completed step was undone) or `stuck` (a
/// compensation kept failing; `workflow resume` tries again). *Since v0.3.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowFinished {
    pub workflow: String,
    pub outcome: String,
    pub failed_step: Option<u32>,
    pub error: Option<String>,
}

/// Errors decoding a stored event.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event tag {0}")]
    UnknownTag(u16),
    #[error("event payload with tag {tag} does not decode: {source}")]
    Payload { tag: u16, source: postcard::Error },
}

macro_rules! events {
    ($( $tag:literal => $variant:ident ),* $(,)?) => {
        /// Every event Cairn records. JSON form: `{"kind":"VolumeCreated", …fields}`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "kind")]
        pub enum Event {
            $( $variant($variant), )*
        }

        impl Event {
            /// The stable tag stored in the journal.
            pub fn tag(&self) -> u16 {
                match self { $( Event::$variant(_) => $tag, )* }
            }

            /// The variant name, used in subjects and JSON.
            pub fn kind(&self) -> &'static str {
                match self { $( Event::$variant(_) => stringify!($variant), )* }
            }

            /// The payload bytes stored in the journal (postcard).
            pub fn encode(&self) -> Vec<u8> {
                let bytes = match self {
                    $( Event::$variant(e) => postcard::to_stdvec(e), )*
                };
                bytes.expect("events always encode")
            }

            /// Decodes a stored payload, upcasting retired versions.
            pub fn decode(tag: u16, payload: &[u8]) -> Result<Event, CodecError> {
                if let Some(event) = upcast(tag, payload)? {
                    return Ok(event);
                }
                match tag {
                    $( $tag => postcard::from_bytes(payload)
                        .map(Event::$variant)
                        .map_err(|source| CodecError::Payload { tag, source }), )*
                    other => Err(CodecError::UnknownTag(other)),
                }
            }

            /// Every (tag, kind) pair, for docs and the tag-uniqueness test.
            pub const TAGS: &'static [(u16, &'static str)] = &[ $( ($tag, stringify!($variant)), )* ];
        }
    };
}

// Append-only. Never renumber, never reuse a retired tag (see RETIRED_TAGS).
events! {
    2 => VolumeDeleted,
    3 => VolumeSnapshotted,
    4 => SnapshotDeleted,
    5 => VolumeCreated,
    6 => VolumeCloned,
    7 => VolumeRolledBack,
    8 => AppCreated,
    9 => AppScaled,
    10 => AppConfigSet,
    11 => AppDeleted,
    12 => NodeRegistered,
    13 => NodeFailed,
    14 => AppPlaced,
    15 => AppSnapshotted,
    16 => AppSnapshotDeleted,
    17 => AppRolledBack,
    18 => AppCloned,
    19 => WorkflowStarted,
    20 => WorkflowStepStarted,
    21 => WorkflowStepCompleted,
    22 => WorkflowStepFailed,
    23 => WorkflowCancelled,
    24 => WorkflowCompensationStarted,
    25 => WorkflowCompensationCompleted,
    26 => WorkflowCompensationFailed,
    27 => WorkflowResumed,
    28 => WorkflowFinished,
    29 => RepoAdded,
    30 => RepoRemoved,
    31 => AppPushed,
    32 => AppPulled,
}

/// Tags no longer written, still decoded through [`upcast`].
pub const RETIRED_TAGS: &[(u16, &str)] = &[(1, "VolumeCreatedV1")];

/// Decodes a retired tag into the current event, or None for live tags.
fn upcast(tag: u16, payload: &[u8]) -> Result<Option<Event>, CodecError> {
    let event = match tag {
        1 => postcard::from_bytes::<VolumeCreatedV1>(payload)
            .map(|v1| Event::VolumeCreated(v1.into()))
            .map_err(|source| CodecError::Payload { tag, source })?,
        _ => return Ok(None),
    };
    Ok(Some(event))
}

impl Event {
    /// The aggregate this event belongs to, e.g. `volume/v1`.
    pub fn aggregate(&self) -> String {
        match self {
            Event::VolumeCreated(VolumeCreated { volume, .. })
            | Event::VolumeDeleted(VolumeDeleted { volume })
            | Event::VolumeSnapshotted(VolumeSnapshotted { volume, .. })
            | Event::SnapshotDeleted(SnapshotDeleted { volume, .. })
            | Event::VolumeCloned(VolumeCloned { volume, .. })
            | Event::VolumeRolledBack(VolumeRolledBack { volume, .. }) => {
                format!("volume/{volume}")
            }
            Event::AppCreated(AppCreated { app, .. })
            | Event::AppScaled(AppScaled { app, .. })
            | Event::AppConfigSet(AppConfigSet { app, .. })
            | Event::AppDeleted(AppDeleted { app })
            | Event::AppPlaced(AppPlaced { app, .. })
            | Event::AppSnapshotted(AppSnapshotted { app, .. })
            | Event::AppSnapshotDeleted(AppSnapshotDeleted { app, .. })
            | Event::AppRolledBack(AppRolledBack { app, .. })
            | Event::AppCloned(AppCloned { app, .. })
            | Event::AppPushed(AppPushed { app, .. })
            | Event::AppPulled(AppPulled { app, .. }) => format!("app/{app}"),
            Event::RepoAdded(RepoAdded { repo, .. }) | Event::RepoRemoved(RepoRemoved { repo }) => {
                format!("repo/{repo}")
            }
            Event::WorkflowStarted(WorkflowStarted { workflow, .. })
            | Event::WorkflowStepStarted(WorkflowStepStarted { workflow, .. })
            | Event::WorkflowStepCompleted(WorkflowStepCompleted { workflow, .. })
            | Event::WorkflowStepFailed(WorkflowStepFailed { workflow, .. })
            | Event::WorkflowCancelled(WorkflowCancelled { workflow, .. })
            | Event::WorkflowCompensationStarted(WorkflowCompensationStarted {
                workflow, ..
            })
            | Event::WorkflowCompensationCompleted(WorkflowCompensationCompleted {
                workflow,
                ..
            })
            | Event::WorkflowCompensationFailed(WorkflowCompensationFailed { workflow, .. })
            | Event::WorkflowResumed(WorkflowResumed { workflow })
            | Event::WorkflowFinished(WorkflowFinished { workflow, .. }) => {
                format!("workflow/{workflow}")
            }
            Event::NodeRegistered(NodeRegistered { node, .. })
            | Event::NodeFailed(NodeFailed { node }) => format!("node/{node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique() {
        let mut tags: Vec<u16> = Event::TAGS
            .iter()
            .chain(RETIRED_TAGS)
            .map(|(t, _)| *t)
            .collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), Event::TAGS.len() + RETIRED_TAGS.len());
    }

    #[test]
    fn payloads_round_trip_and_unknown_tags_fail() {
        let e = Event::VolumeSnapshotted(VolumeSnapshotted {
            volume: "v1".into(),
            snapshot: "s1".into(),
        });
        assert_eq!(Event::decode(e.tag(), &e.encode()).unwrap(), e);
        assert!(matches!(
            Event::decode(999, &e.encode()),
            Err(CodecError::UnknownTag(999))
        ));
        assert!(Event::decode(5, &[0xff]).is_err());
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "VolumeSnapshotted");
    }

    /// `AppScaled` has a field called `kind`; in JSON it must not clash
    /// with the event's `kind` tag (it did: the tag was overwritten and the
    /// JSON did not decode).
    #[test]
    fn app_scaled_json_keeps_its_tag_and_round_trips() {
        let e = Event::AppScaled(AppScaled {
            app: "shop".into(),
            kind: "StatefulSet".into(),
            workload: "db".into(),
            from_replicas: 1,
            replicas: 2,
            added: Vec::new(),
            removed: Vec::new(),
        });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "AppScaled");
        assert_eq!(json["workload_kind"], "StatefulSet");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
        assert_eq!(Event::decode(e.tag(), &e.encode()).unwrap(), e);
    }

    /// A v0.1 `VolumeCreated` (tag 1), as journals of that version hold it:
    /// checked-in bytes, so a change to the upcast path cannot go unnoticed.
    #[test]
    fn golden_v1_volume_created_upcasts() {
        let golden = include_str!("../tests/golden/event-1-VolumeCreatedV1.hex").trim();
        let bytes: Vec<u8> = hex::decode(golden).unwrap();
        let event = Event::decode(1, &bytes).unwrap();
        assert_eq!(
            event,
            Event::VolumeCreated(VolumeCreated {
                volume: "db".into(),
                size_bytes: 1 << 30,
                compression: "lz4".into(),
                encrypted: false,
            })
        );
        assert_eq!(event.tag(), 5);
    }

    /// One sample of every live event kind.
    fn samples() -> Vec<Event> {
        use crate::app::{AppVolume, Object};
        let volume = AppVolume {
            pvc: "data-db-0".into(),
            claim: "data".into(),
            workload: Some("db".into()),
            ordinal: Some(0),
            size_bytes: 1 << 30,
            storage_class: None,
        };
        vec![
            Event::VolumeDeleted(VolumeDeleted { volume: "v".into() }),
            Event::VolumeSnapshotted(VolumeSnapshotted {
                volume: "v".into(),
                snapshot: "s".into(),
            }),
            Event::SnapshotDeleted(SnapshotDeleted {
                volume: "v".into(),
                snapshot: "s".into(),
            }),
            Event::VolumeCreated(VolumeCreated {
                volume: "v".into(),
                size_bytes: 1 << 30,
                compression: "zstd".into(),
                encrypted: true,
            }),
            Event::VolumeCloned(VolumeCloned {
                volume: "c".into(),
                source: "v".into(),
                snapshot: "s".into(),
                size_bytes: 1 << 30,
            }),
            Event::VolumeRolledBack(VolumeRolledBack {
                volume: "v".into(),
                snapshot: "s".into(),
            }),
            Event::AppCreated(AppCreated {
                app: "shop".into(),
                objects: vec![Object {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "c".into(),
                    json: r#"{"kind":"ConfigMap"}"#.into(),
                }],
                volumes: vec![volume.clone()],
            }),
            Event::AppScaled(AppScaled {
                app: "shop".into(),
                kind: "StatefulSet".into(),
                workload: "db".into(),
                from_replicas: 1,
                replicas: 2,
                added: vec![volume],
                removed: vec!["wal-db-3".into()],
            }),
            Event::AppConfigSet(AppConfigSet {
                app: "shop".into(),
                configmap: "c".into(),
                key: "k".into(),
                value: "v".into(),
            }),
            Event::AppDeleted(AppDeleted { app: "shop".into() }),
            Event::NodeRegistered(NodeRegistered {
                node: "n1".into(),
                rack: "r1".into(),
                datacenter: "dc1".into(),
                disks: vec![NodeDisk {
                    name: "d0".into(),
                    path: "/d0".into(),
                    media: "ssd".into(),
                    capacity_bytes: 40 << 30,
                }],
            }),
            Event::NodeFailed(NodeFailed { node: "n1".into() }),
            Event::AppPlaced(AppPlaced {
                app: "shop".into(),
                volumes: vec![PlacedVolume {
                    replica: Some("db-0".into()),
                    pvc: "data-db-0".into(),
                    slices: vec![PlacedSlice {
                        index: 0,
                        node: "n1".into(),
                        disk: "d0".into(),
                    }],
                }],
            }),
            Event::AppSnapshotted(AppSnapshotted {
                app: "shop".into(),
                snapshot: "s".into(),
                message: "before upgrade".into(),
                objects: vec![Object {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "c".into(),
                    json: r#"{"kind":"ConfigMap"}"#.into(),
                }],
                volumes: vec![AppVolume {
                    pvc: "wal-db-0".into(),
                    claim: "wal".into(),
                    workload: Some("db".into()),
                    ordinal: Some(0),
                    size_bytes: 1 << 30,
                    storage_class: Some("fast".into()),
                }],
                workflow: "wf-1".into(),
            }),
            Event::AppSnapshotDeleted(AppSnapshotDeleted {
                app: "shop".into(),
                snapshot: "s".into(),
            }),
            Event::AppRolledBack(AppRolledBack {
                app: "shop".into(),
                snapshot: "s".into(),
                objects: vec![],
                volumes: vec![],
                retired: vec!["data-db-2".into()],
                deleted: vec!["data-db-3".into()],
            }),
            Event::AppCloned(AppCloned {
                app: "shop-dev".into(),
                source: "shop".into(),
                snapshot: "s".into(),
                overrides: vec!["replicas=1".into()],
            }),
            Event::WorkflowStarted(WorkflowStarted {
                workflow: "wf-1".into(),
                name: "app-snapshot".into(),
                definition: "kind: Workflow".into(),
                hash: "ab".into(),
                params: vec![("app".into(), "shop".into())],
                app: Some("shop".into()),
                parent: None,
            }),
            Event::WorkflowStepStarted(WorkflowStepStarted {
                workflow: "wf-1".into(),
                step: 1,
                attempt: 2,
            }),
            Event::WorkflowStepCompleted(WorkflowStepCompleted {
                workflow: "wf-1".into(),
                step: 1,
                result: "{}".into(),
            }),
            Event::WorkflowStepFailed(WorkflowStepFailed {
                workflow: "wf-1".into(),
                step: 0,
                attempt: 1,
                code: "hook_failed".into(),
                error: "exit 1".into(),
                retryable: false,
            }),
            Event::WorkflowCancelled(WorkflowCancelled {
                workflow: "wf-1".into(),
                reason: "by admin".into(),
            }),
            Event::WorkflowCompensationStarted(WorkflowCompensationStarted {
                workflow: "wf-1".into(),
                step: 1,
            }),
            Event::WorkflowCompensationCompleted(WorkflowCompensationCompleted {
                workflow: "wf-1".into(),
                step: 1,
            }),
            Event::WorkflowCompensationFailed(WorkflowCompensationFailed {
                workflow: "wf-1".into(),
                step: 1,
                code: "unavailable".into(),
                error: "down".into(),
            }),
            Event::WorkflowResumed(WorkflowResumed {
                workflow: "wf-1".into(),
            }),
            Event::WorkflowFinished(WorkflowFinished {
                workflow: "wf-1".into(),
                outcome: "compensated".into(),
                failed_step: Some(0),
                error: Some("exit 1".into()),
            }),
            Event::RepoAdded(RepoAdded {
                repo: "offsite".into(),
                url: "s3://b/p?endpoint=http://h:9000".into(),
                key_kind: "key-file".into(),
                key_path: "/k".into(),
                initialized: true,
            }),
            Event::RepoRemoved(RepoRemoved {
                repo: "offsite".into(),
            }),
            Event::AppPushed(AppPushed {
                app: "shop".into(),
                snapshot: "s".into(),
                repo: "offsite".into(),
                manifest: "00ff".into(),
                parent: Some("00fe".into()),
                logical_bytes: 1 << 30,
                uploaded_bytes: 1 << 20,
                workflow: "wf-1".into(),
            }),
            Event::AppPulled(AppPulled {
                app: "shop2".into(),
                repo: "offsite".into(),
                manifest: "00ff".into(),
                source: "shop".into(),
                snapshot: "s".into(),
                objects: vec![],
                volumes: vec![],
                retired: vec!["data-db-2".into()],
                deleted: vec![],
                workflow: "wf-2".into(),
            }),
        ]
    }

    /// Every live event kind has checked-in bytes
    /// (`tests/golden/event-<tag>-<Kind>.hex`) that must still decode to the
    /// same event, and that the current encoder must still produce. A change
    /// to an event's fields fails here: give the new shape a new tag and
    /// upcast the old one (see [`upcast`]) instead. New kinds: run once
    /// with `UPDATE_GOLDEN=1` to write their files.
    #[test]
    fn golden_files_pin_every_event_layout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let samples = samples();
        assert_eq!(
            samples.len(),
            Event::TAGS.len(),
            "one sample per event kind"
        );
        for event in samples {
            let path = dir.join(format!("event-{}-{}.hex", event.tag(), event.kind()));
            let bytes = event.encode();
            if std::env::var_os("UPDATE_GOLDEN").is_some() && !path.exists() {
                std::fs::write(&path, crate::record::hex(&bytes) + "\n").unwrap();
            }
            let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!("{} is missing (UPDATE_GOLDEN=1 writes it)", path.display())
            });
            let golden = golden.trim();
            let stored: Vec<u8> = hex::decode(golden).unwrap();
            assert_eq!(
                Event::decode(event.tag(), &stored).unwrap(),
                event,
                "{} no longer decodes to its sample",
                path.display()
            );
            assert_eq!(
                stored,
                bytes,
                "{} no longer encodes the same",
                path.display()
            );
        }
    }
}
