//! Replies: the JSON body every successful request gets back, one type per
//! shape. The actors build these (never ad-hoc JSON), so the schemas in
//! `docs/asyncapi.yaml`, generated from these types, are what clients get.
//!
//! A failed request gets [`ErrorReply`] instead, whatever its kind and verb.
//!
//! # Contract
//! Field names are the wire format: the CLI (`ops/src/output.rs`) and every
//! other client read them. Add fields, never rename or remove one. An
//! `Option` field is always present and `null` when unknown, unless it says
//! otherwise.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ApiError, EventView};

/// The body of a reply, as JSON.
pub fn to_value<T: Serialize>(reply: &T) -> serde_json::Value {
    serde_json::to_value(reply).expect("replies serialize")
}

/// Every failed request: `{"error":{"code","message","details"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorReply {
    pub error: ApiError,
}

/// `system.ping`: the server is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PingReply {
    /// Always true.
    pub ok: bool,
    /// The server's version.
    pub version: String,
}

/// `volume.create`: the volume as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeCreateReply {
    pub name: String,
    pub size_bytes: u64,
    /// `size_bytes` for people: `1.0 GiB`.
    pub size: String,
    /// `lz4`, `zstd` or `none`.
    pub compression: String,
    pub encrypted: bool,
}

/// `volume.clone`: the new volume and what it shares blocks with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeCloneReply {
    /// The new volume.
    pub name: String,
    /// The snapshot it was cloned from: `v@s`.
    pub origin: String,
}

/// `volume.rollback`: the volume reads as the snapshot again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeRollbackReply {
    pub name: String,
    /// The snapshot it was rolled back to.
    pub rolled_back_to: String,
}

/// `volume.delete`: the volume and its snapshots are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeDeleteReply {
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// `volume.snapshot`: the snapshot exists and is served read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotReply {
    /// The volume.
    pub name: String,
    pub snapshot: String,
    /// Its NBD export and FUSE file name: `v@s`.
    pub export: String,
}

/// `volume.snapshot-delete`: the snapshot is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotDeleteReply {
    /// The volume.
    pub name: String,
    pub snapshot: String,
    /// Always true.
    pub deleted: bool,
}

/// One volume as `volume.show` and `volume.list` report it: the control
/// plane's state plus what the block engine measures. Engine figures are
/// `null` when the engine could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeView {
    pub name: String,
    pub size_bytes: u64,
    /// `size_bytes` for people: `1.0 GiB`.
    pub size: String,
    /// Stored bytes the volume references, shared ones included.
    pub allocated_bytes: Option<u64>,
    /// Stored bytes only the volume references (near zero for a fresh clone).
    pub exclusive_bytes: Option<u64>,
    /// `lz4`, `zstd` or `none`.
    pub compression: Option<String>,
    pub encrypted: Option<bool>,
    /// `v@s` this volume was cloned from.
    pub origin: Option<String>,
    /// The snapshot of the last rollback.
    pub rolled_back_to: Option<String>,
    /// RFC 3339 (UTC, milliseconds).
    pub created: String,
    /// In name order.
    pub snapshots: Vec<SnapshotView>,
    /// The node that holds and serves the volume.
    pub node: Option<String>,
    /// A URI an NBD client opens (`nbd+unix:///V?socket=PATH`,
    /// `nbds://HOST:PORT/V`); a snapshot is the export `V@S` beside it.
    /// Absent when NBD is off.
    pub nbd: Option<String>,
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotView {
    pub name: String,
    /// RFC 3339 (UTC, milliseconds).
    pub created: String,
    /// The journal seq of the event that took it.
    pub seq: u64,
    /// Stored bytes the snapshot references.
    pub allocated_bytes: Option<u64>,
    /// Stored bytes only this snapshot holds: what deleting it frees.
    pub exclusive_bytes: Option<u64>,
}

/// `volume.list`: every volume of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeListReply {
    pub volumes: Vec<VolumeView>,
}

/// `volume.snapshots`: the snapshots of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotsReply {
    /// The volume.
    pub name: String,
    pub snapshots: Vec<SnapshotView>,
}

/// `volume.diff`: the byte ranges that differ between two images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiffReply {
    pub from: String,
    pub to: String,
    /// The sum of the extents' lengths.
    pub changed_bytes: u64,
    /// Sorted by offset, not overlapping.
    pub extents: Vec<Extent>,
}

/// A changed byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// `volume.scrub`: every block of a volume and its snapshots, verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScrubReply {
    pub volume: String,
    pub checked_blocks: u64,
    /// Empty when all is well.
    pub bad_blocks: Vec<BadBlock>,
}

/// One block that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BadBlock {
    /// The image that references it: `v` or `v@s`.
    pub image: String,
    /// Byte offset in that image.
    pub offset: u64,
    pub reason: String,
}

/// `events.list`: one page of journal records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventsListReply {
    pub events: Vec<EventView>,
    /// The `since_seq` that continues after this page.
    pub next_seq: u64,
}

/// `events.verify`: the hash chain and the replayed state, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyReply {
    /// True when the chain is intact and the live state equals the replay.
    pub ok: bool,
    /// Records checked; `null` when the chain is broken.
    pub records: Option<u64>,
    /// The first record that breaks the chain. Absent unless it is broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// What is wrong. Absent when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `app.create`: the app and the volumes made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppCreateReply {
    pub name: String,
    /// How many Kubernetes objects the manifest held.
    pub objects: u64,
    /// The volumes created: `<app>/<pvc>`.
    pub volumes: Vec<String>,
}

/// `app.delete`: the app and its volumes are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppDeleteReply {
    pub name: String,
    /// False only when `missing_ok` was given and there was no such app.
    pub deleted: bool,
    /// The volumes deleted with it.
    pub volumes: Vec<String>,
    /// The workflow that ran it (`null` for a bare `app.remove` step).
    #[serde(default)]
    pub workflow: Option<String>,
}

/// `app.scale`: a workload's new replica count and the volumes that came
/// and went. The workload fields are `null` when nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppScaleReply {
    pub name: String,
    /// The StatefulSet or Deployment scaled.
    pub workload: Option<String>,
    pub from_replicas: Option<u32>,
    pub replicas: Option<u32>,
    /// Volumes created for new replicas.
    pub added: Vec<String>,
    /// Volumes deleted (a scale-in keeps them unless the StatefulSet's
    /// `persistentVolumeClaimRetentionPolicy.whenScaled` is `Delete`).
    pub removed: Vec<String>,
}

/// `app.config-set`: the key as set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppConfigSetReply {
    pub name: String,
    pub configmap: String,
    pub key: String,
    pub value: String,
}

/// One app as `app.get` and `app.list` report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppView {
    pub name: String,
    /// RFC 3339 (UTC, milliseconds).
    pub created: String,
    /// The journal seq of `AppCreated`.
    pub created_seq: u64,
    /// The journal seq of the last event that changed the app.
    pub updated_seq: u64,
    pub workloads: Vec<WorkloadView>,
    pub volumes: Vec<AppVolumeView>,
    /// Each ConfigMap's `data`, by ConfigMap name.
    pub configmaps: BTreeMap<String, serde_json::Value>,
    /// Every stored Kubernetes object, as JSON.
    pub objects: Vec<serde_json::Value>,
}

/// A StatefulSet or Deployment of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadView {
    /// `StatefulSet` or `Deployment`.
    pub kind: String,
    pub name: String,
    pub replicas: u32,
}

/// One volume of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppVolumeView {
    /// The volume: `<app>/<pvc>`.
    pub name: String,
    /// The PVC name, as Kubernetes derives it (`data-db-0`).
    pub pvc: String,
    /// The claim it comes from: the template name or the PVC itself.
    pub claim: String,
    /// The StatefulSet whose template made it.
    pub workload: Option<String>,
    pub ordinal: Option<u32>,
    pub size_bytes: u64,
    /// `size_bytes` for people: `1.0 GiB`.
    pub size: String,
    pub storage_class: Option<String>,
    /// Kept after a scale-in: its ordinal is at or past the replicas.
    pub retained: bool,
}

/// `app.list`: every app of the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppListReply {
    pub apps: Vec<AppView>,
}

/// `app.log`: the app's history (its events and its volumes'), newest
/// first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppLogReply {
    pub name: String,
    pub entries: Vec<EventView>,
}

/// `node.list`: the nodes and their disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeListReply {
    pub nodes: Vec<NodeView>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    pub name: String,
    /// `ready` or `failed`.
    pub state: String,
    pub rack: String,
    pub datacenter: String,
    /// When the node (last) registered itself (RFC 3339).
    pub registered: String,
    pub disks: Vec<DiskView>,
    /// Where the node serves NBD (`unix:PATH` or `HOST:PORT`, as
    /// `cairn up --nbd` takes it); absent for a node that serves none (NBD
    /// off, or a node `--nodes`/`--topology` only simulates).
    pub nbd: Option<String>,
}

/// One disk (a directory) of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiskView {
    pub name: String,
    /// The directory.
    pub path: String,
    /// `ssd`, `hdd` or `nvme`.
    pub media: String,
    pub capacity_bytes: u64,
    /// What the planner placed here: 1 GiB per slice.
    pub placed_bytes: u64,
    /// Bytes of segment files on it (live and not yet compacted); `null`
    /// when this process does not hold that disk.
    pub used_bytes: Option<u64>,
}

/// `app.placement`: replica → volume → slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppPlacementReply {
    pub name: String,
    pub volumes: Vec<VolumePlacementView>,
}

/// Where one volume's slices are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumePlacementView {
    /// `<statefulset>-<ordinal>`; `null` for a standalone PVC.
    pub replica: Option<String>,
    /// `<app>/<pvc>`.
    pub volume: String,
    pub slices: Vec<SliceView>,
}

/// Where one 1 GiB slice is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SliceView {
    pub index: u32,
    pub node: String,
    pub disk: String,
    pub rack: String,
    pub datacenter: String,
}

/// `node.fail`: what the failure cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeFailReply {
    pub node: String,
    pub failed: bool,
    /// Whether any replica set lost more than one member (placement
    /// constraints are there to prevent it).
    pub lost_more_than_one_member: bool,
    /// `{"failure","volumes":[{"app","replica","volume","slices"}],"replica_sets":[{"app","replica_set","members"}]}`;
    /// other tenants' apps appear as `(tenant T)`.
    pub impact: serde_json::Value,
    /// The same, for people.
    pub report: String,
}

/// `events.replay`: the state as of a seq or a time. With `app` in the
/// request: that app (`app`) and its volumes; without: every app (`apps`)
/// and volume of the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplayReply {
    /// The last record folded (0 for none).
    pub at_seq: u64,
    /// That record's time, RFC 3339.
    pub at_time: String,
    /// The app asked for. Absent without `app` in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppView>,
    /// Every app. Absent with `app` in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<AppView>>,
    /// Volumes as the journal knows them; engine figures are `null`.
    pub volumes: Vec<VolumeView>,
}

/// `app.snapshot` (and its step `app.snapshot-take`): the app snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotReply {
    pub name: String,
    pub snapshot: String,
    pub message: String,
    /// Every volume, snapshotted at one instant.
    pub volumes: Vec<String>,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// `app.snapshot-delete` (and its step `app.snapshot-drop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotDeleteReply {
    pub name: String,
    pub snapshot: String,
    /// False when there was no such snapshot (`missing_ok`).
    pub deleted: bool,
    /// Volumes the snapshot alone still held, deleted with it.
    pub volumes_deleted: Vec<String>,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// `app.rollback` (and its step `app.restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppRollbackReply {
    pub name: String,
    pub snapshot: String,
    /// Volumes now reading as the snapshot.
    pub volumes: Vec<String>,
    /// Volumes of replicas added since the snapshot: out of the app, kept
    /// while a snapshot (the safety snapshot) holds them.
    pub retired: Vec<String>,
    /// Volumes of such replicas that no snapshot held: deleted.
    pub deleted: Vec<String>,
    /// The snapshot taken first (`null` for a bare `app.restore` step).
    #[serde(default)]
    pub safety_snapshot: Option<String>,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// `app.clone` (and its step `app.clone-create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppCloneReply {
    /// The new app.
    pub name: String,
    pub source: String,
    pub snapshot: String,
    /// Volumes sharing the snapshot's blocks.
    pub cloned: Vec<String>,
    /// New, empty volumes (replicas an override added).
    pub created: Vec<String>,
    #[serde(default)]
    pub workflow: Option<String>,
}

/// `app.snapshots`: an app's snapshots, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotsReply {
    pub name: String,
    pub snapshots: Vec<AppSnapshotView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppSnapshotView {
    pub name: String,
    /// RFC 3339.
    pub created: String,
    pub seq: u64,
    pub message: String,
    pub volumes: Vec<String>,
    /// Replicas of each workload at the snapshot.
    pub workloads: Vec<WorkloadView>,
    pub workflow: String,
    /// Apps cloned from it (it cannot be deleted while there are any).
    pub clones: Vec<String>,
}

/// `app.hook`: the hooks that ran, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HookReply {
    pub name: String,
    pub hook: String,
    pub ran: Vec<HookRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HookRun {
    pub argv: Vec<String>,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// The end of its standard output and error.
    pub output: String,
}

/// `app.reclaim`: what compaction gave back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReclaimReply {
    pub segments_freed: u64,
    pub bytes_freed: u64,
    pub bytes_moved: u64,
}

/// One registered repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoView {
    pub name: String,
    /// Secrets redacted.
    pub url: String,
    /// `key-file` or `passphrase-file`.
    pub key_kind: String,
    /// The key's (or passphrase's) file on the server.
    pub key_path: String,
    pub added: String,
}

/// `repo.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoAddReply {
    pub repo: RepoView,
    /// True when this created the repository.
    pub initialized: bool,
    /// True when this created the key file too: keep a copy, the data
    /// cannot be read without it.
    pub key_generated: bool,
    pub chunk_bytes: u64,
    pub pack_bytes: u64,
}

/// `repo.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoListReply {
    pub repos: Vec<RepoView>,
}

/// `repo.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoRemoveReply {
    pub name: String,
    /// Always true: the repository's contents are never deleted by this.
    pub contents_kept: bool,
}

/// One volume of a pushed app snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoVolumeView {
    pub name: String,
    pub size_bytes: u64,
    /// Chunks that are not holes, in bytes.
    pub data_bytes: u64,
}

/// One pushed app snapshot (a manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoSnapshotView {
    pub manifest: String,
    pub app: String,
    pub snapshot: String,
    pub created: String,
    pub parent: Option<String>,
    pub volumes: Vec<RepoVolumeView>,
    pub logical_bytes: u64,
    /// Pack bytes its push added to the repository.
    pub added_bytes: u64,
}

/// `repo.ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoLsReply {
    pub name: String,
    pub snapshots: Vec<RepoSnapshotView>,
    /// Pack bytes stored.
    pub stored_bytes: u64,
}

/// One damaged object found by `repo.check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoProblem {
    /// Store key (`packs/…`, `manifests/…`).
    pub object: String,
    pub offset: Option<u64>,
    /// Names the chunk, when one is to blame.
    pub reason: String,
}

/// `repo.check`: `ok` is false when any object is damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoCheckReply {
    pub name: String,
    pub ok: bool,
    pub packs: u64,
    pub chunks: u64,
    pub manifests: u64,
    pub bytes_read: u64,
    pub problems: Vec<RepoProblem>,
}

/// `repo.prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RepoPruneReply {
    pub name: String,
    pub manifests_kept: u64,
    pub manifests_deleted: Vec<String>,
    pub packs_kept: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    /// Store bytes before minus after.
    pub freed_bytes: i64,
}

/// `app.push-upload` (and a waited `app.push`'s `result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushReply {
    pub app: String,
    pub snapshot: String,
    pub repo: String,
    pub manifest: String,
    /// The manifest this push was incremental to.
    pub parent: Option<String>,
    /// Volumes read only where they changed since the parent.
    pub incremental_volumes: Vec<String>,
    pub logical_bytes: u64,
    /// Bytes read from the volumes.
    pub read_bytes: u64,
    /// Pack bytes uploaded.
    pub uploaded_bytes: u64,
    pub new_chunks: u64,
    /// Chunks read that the repository held already.
    pub dedup_chunks: u64,
    /// Chunks taken from the parent without reading.
    pub reused_chunks: u64,
    pub packs_uploaded: u64,
    pub elapsed_ms: u64,
    /// The workflow, when `app.push` ran it.
    pub workflow: Option<String>,
}

/// `app.pull-data` (and a waited `app.pull`'s `result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PullReply {
    pub app: String,
    pub repo: String,
    pub manifest: String,
    pub volumes: Vec<String>,
    pub logical_bytes: u64,
    pub written_chunks: u64,
    /// Chunks that already matched (a repair).
    pub unchanged_chunks: u64,
    /// Pack bytes fetched (each chunk verified).
    pub fetched_bytes: u64,
    pub elapsed_ms: u64,
    /// The workflow, when `app.pull` ran it.
    pub workflow: Option<String>,
}

/// `app.pull-import`: the app as created or repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PullImportReply {
    pub app: String,
    pub manifest: String,
    /// True when the app was created, false when repaired.
    pub created: bool,
    pub volumes_created: Vec<String>,
    pub volumes_deleted: Vec<String>,
}

/// Published on `cairn.v1.<tenant>.evt.progress.<workflow>` while a push or
/// pull moves data (not journaled, no `seq`; a few per second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferProgress {
    /// Always `TransferProgress`.
    pub kind: String,
    pub workflow: String,
    /// `push` or `pull`.
    pub op: String,
    pub app: String,
    pub repo: String,
    /// The volume being read or written.
    pub volume: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Pack bytes stored (push) or fetched (pull).
    pub transferred_bytes: u64,
    pub elapsed_ms: u64,
    /// True on the last one.
    pub finished: bool,
}

/// `workflow.show`, `workflow.run` (waited), `workflow.resume`,
/// `workflow.cancel`: one workflow, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowView {
    /// The workflow's id; for a built-in definition shown by name, its name.
    pub id: String,
    pub name: String,
    pub description: String,
    /// `running`, `completed`, `compensated`, `stuck`; `definition` for a
    /// built-in shown by name.
    pub status: String,
    pub app: Option<String>,
    pub parent: Option<String>,
    /// RFC 3339.
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
    /// blake3 of the definition text.
    pub hash: String,
    pub params: BTreeMap<String, serde_json::Value>,
    /// The name of the step that failed, if one did.
    pub failed_step: Option<String>,
    /// Why it failed (`code: message`). Not named `error`: a reply with an
    /// `error` key is an error reply.
    pub failure: Option<String>,
    pub steps: Vec<WorkflowStepView>,
    /// The output step's reply, once completed.
    pub output: Option<serde_json::Value>,
    /// The pinned definition text.
    pub definition: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStepView {
    pub index: u32,
    pub name: String,
    /// The API command, `kind.verb`.
    pub run: String,
    pub with: serde_json::Value,
    /// The compensation's command, if any.
    pub compensate: Option<String>,
    /// `pending`, `running`, `completed`, `failed`, `compensating`,
    /// `compensated`, `compensation failed`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

/// `workflow.list`: workflows, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowListReply {
    pub workflows: Vec<WorkflowSummary>,
    /// The built-in definitions (`workflow show <name>` prints one).
    pub builtins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowSummary {
    pub id: String,
    pub name: String,
    pub app: Option<String>,
    pub status: String,
    pub started: String,
    pub finished: Option<String>,
    pub duration_ms: Option<u64>,
    pub steps_completed: u32,
    pub steps: u32,
    pub failed_step: Option<String>,
    pub error: Option<String>,
}

/// `app.snapshot`, `workflow.run` (and the other workflow starts) with
/// `async`: the workflow's id, to follow with `workflow.show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStartReply {
    pub workflow: String,
    pub name: String,
    pub status: String,
}
