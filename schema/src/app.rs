//! Apps: what a Kubernetes manifest becomes, the app's state, its fold
//! ([`AppState::apply`]) and its decider ([`AppState::decide`]).
//!
//! # Manifest
//! `app.create` takes multi-document Kubernetes YAML. StatefulSet,
//! Deployment, Service, ConfigMap, Secret and PersistentVolumeClaim are
//! understood; every other kind is kept as opaque metadata. An optional
//! `kind: App` document (`apiVersion: cairn.dev/v1`) names the app and holds
//! Cairn's own settings (hooks, placement); it is stored like the rest.
//!
//! # Volumes
//! A PVC gives one volume; a StatefulSet's `volumeClaimTemplates` give one
//! per claim and replica, named as Kubernetes names them:
//! `<claim>-<statefulset>-<ordinal>`. The volume of PVC `p` in app `a` is
//! `a/p` everywhere (commands, NBD exports, FUSE files).
//!
//! # Scale-in
//! Like Kubernetes, scaling a StatefulSet in keeps the volumes of the
//! removed replicas (they come back on scale-out) unless the StatefulSet says
//! `persistentVolumeClaimRetentionPolicy.whenScaled: Delete`.
//!
//! Objects are stored as canonical JSON text (sorted keys), because the
//! journal's postcard encoding cannot hold free-form JSON values.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{
    AppConfigSet, AppCreated, AppDeleted, AppPlaced, AppScaled, PlacedVolume, VolumeCreated,
    VolumeDeleted,
};
use crate::names::{check_label, parse_quantity};
use crate::{ApiError, ErrorCode, Event};

/// Largest number of documents one manifest may hold.
pub const MAX_OBJECTS: usize = 256;
/// Largest replica count a scale or manifest may ask for.
pub const MAX_REPLICAS: u32 = 1024;
/// Default compression of app volumes.
pub const APP_VOLUME_COMPRESSION: &str = "lz4";

/// One Kubernetes object as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The whole object as canonical JSON.
    pub json: String,
}

impl Object {
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    fn from_value(value: Value) -> Result<Object, ApiError> {
        let text =
            |v: &Value, path: &str| v.pointer(path).and_then(Value::as_str).map(str::to_owned);
        let kind = text(&value, "/kind")
            .ok_or_else(|| ApiError::invalid("a manifest document has no kind"))?;
        let api_version = text(&value, "/apiVersion").unwrap_or_default();
        let name = text(&value, "/metadata/name").ok_or_else(|| {
            ApiError::invalid(format!("a {kind} in the manifest has no metadata.name"))
        })?;
        Ok(Object {
            api_version,
            kind,
            name,
            json: serde_json::to_string(&value).expect("json values serialize"),
        })
    }
}

/// One volume of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppVolume {
    /// The PVC name (`data-db-0`); the volume is `<app>/<pvc>`.
    pub pvc: String,
    /// The claim it comes from: the template name or the PVC itself.
    pub claim: String,
    /// The StatefulSet whose template made it, if any.
    pub workload: Option<String>,
    pub ordinal: Option<u32>,
    pub size_bytes: u64,
    pub storage_class: Option<String>,
}

/// A manifest, parsed and checked: what `app.create` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
}

/// Parses multi-document YAML (JSON is YAML too). `name` wins over the
/// `kind: App` document's name; one of them must be given.
pub fn parse_manifest(text: &str, name: Option<&str>) -> Result<Manifest, ApiError> {
    use serde::Deserialize as _;
    crate::yaml::check_nesting("the manifest", text)?;
    let mut objects = Vec::new();
    for (idx, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| {
            ApiError::invalid(format!(
                "manifest document {} is not valid YAML: {e}",
                idx + 1
            ))
        })?;
        match value {
            Value::Null => continue,
            Value::Object(_) => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "manifest document {} is not a Kubernetes object",
                    idx + 1
                )));
            }
        }
        if objects.len() == MAX_OBJECTS {
            return Err(ApiError::invalid(format!(
                "a manifest may hold at most {MAX_OBJECTS} objects"
            )));
        }
        objects.push(Object::from_value(value)?);
    }
    let app_doc = objects
        .iter()
        .find(|o| o.kind == "App" && o.api_version.starts_with("cairn.dev/"));
    let name = match (name, app_doc) {
        (Some(n), _) => n.to_owned(),
        (None, Some(doc)) => doc.name.clone(),
        (None, None) => {
            return Err(ApiError::invalid(
                "the app has no name: give one, or add a `kind: App` document (apiVersion cairn.dev/v1) with metadata.name",
            ));
        }
    };
    check_label("app", &name)?;
    let mut seen = BTreeSet::new();
    for o in &objects {
        if !seen.insert((o.kind.clone(), o.name.clone())) {
            return Err(ApiError::invalid(format!(
                "the manifest has two {} objects named {:?}",
                o.kind, o.name
            )));
        }
        match o.kind.as_str() {
            // These names become volume names, which are labels.
            "StatefulSet" | "PersistentVolumeClaim" => {
                check_label(&format!("{} name", o.kind), &o.name)?
            }
            "Deployment" | "Service" | "ConfigMap" | "Secret" => check_subdomain(&o.kind, &o.name)?,
            _ => {}
        }
    }
    let volumes = derive_volumes(&objects)?;
    Ok(Manifest {
        name,
        objects,
        volumes,
    })
}

/// Kubernetes object names are DNS-1123 subdomains: at most 253 characters
/// of `a-z`, `0-9`, `-` and `.`, starting and ending with an alphanumeric.
fn check_subdomain(kind: &str, name: &str) -> Result<(), ApiError> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{kind} name {name:?} is not a valid Kubernetes name (DNS-1123 subdomain)"
        )))
    }
}

/// The bytes a PVC spec (`spec.resources.requests.storage`, a Kubernetes
/// quantity) asks for. The app's volumes are created with this size and
/// the planner (`cairn_placement::app_placement`) reads the same, so a
/// volume is planned with exactly the slices it is created with.
pub fn storage_request(spec: &Value, what: &str) -> Result<u64, ApiError> {
    let storage = spec.pointer("/resources/requests/storage").ok_or_else(|| {
        ApiError::invalid(format!("{what} has no spec.resources.requests.storage"))
    })?;
    let text = match storage {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(ApiError::invalid(format!(
                "{what}: storage request is not a quantity"
            )));
        }
    };
    let bytes =
        parse_quantity(&text).map_err(|e| ApiError::invalid(format!("{what}: {}", e.message)))?;
    if bytes == 0 {
        return Err(ApiError::invalid(format!(
            "{what}: storage request must be more than 0"
        )));
    }
    Ok(bytes)
}

/// The replica count of a workload object (Kubernetes' default is 1).
pub fn replicas_of(object: &Value) -> Result<u32, ApiError> {
    match object.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= MAX_REPLICAS as u64)
            .map(|n| n as u32)
            .ok_or_else(|| ApiError::invalid(format!("spec.replicas must be 0..={MAX_REPLICAS}"))),
    }
}

/// The volumes of replica `ordinal` of a StatefulSet.
pub(crate) fn statefulset_volumes(
    sts: &Object,
    value: &Value,
    ordinal: u32,
) -> Result<Vec<AppVolume>, ApiError> {
    let templates = value
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for template in &templates {
        let claim = template
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "a volumeClaimTemplate of StatefulSet {} has no name",
                    sts.name
                ))
            })?;
        let what = format!("volumeClaimTemplate {claim} of StatefulSet {}", sts.name);
        let spec = template.get("spec").cloned().unwrap_or(Value::Null);
        let pvc = format!("{claim}-{}-{ordinal}", sts.name);
        check_label("PVC name", &pvc)?;
        out.push(AppVolume {
            pvc,
            claim: claim.to_owned(),
            workload: Some(sts.name.clone()),
            ordinal: Some(ordinal),
            size_bytes: storage_request(&spec, &what)?,
            storage_class: spec
                .get("storageClassName")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Ok(out)
}

pub(crate) fn derive_volumes(objects: &[Object]) -> Result<Vec<AppVolume>, ApiError> {
    let mut volumes = Vec::new();
    for o in objects {
        let value = o.value();
        match o.kind.as_str() {
            "PersistentVolumeClaim" => {
                let spec = value.get("spec").cloned().unwrap_or(Value::Null);
                volumes.push(AppVolume {
                    pvc: o.name.clone(),
                    claim: o.name.clone(),
                    workload: None,
                    ordinal: None,
                    size_bytes: storage_request(
                        &spec,
                        &format!("PersistentVolumeClaim {}", o.name),
                    )?,
                    storage_class: spec
                        .get("storageClassName")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
            "StatefulSet" => {
                for ordinal in 0..replicas_of(&value)? {
                    volumes.extend(statefulset_volumes(o, &value, ordinal)?);
                }
            }
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    for v in &volumes {
        if !seen.insert(v.pvc.clone()) {
            return Err(ApiError::invalid(format!(
                "two volumes would be named {:?}",
                v.pvc
            )));
        }
    }
    Ok(volumes)
}

/// What the journal says about one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub name: String,
    /// Seq of `AppCreated`; 0 while the app does not exist.
    pub created_seq: u64,
    pub created_ms: u64,
    /// Seq of the last event that changed it.
    pub updated_seq: u64,
    pub objects: Vec<Object>,
    /// By PVC name.
    pub volumes: BTreeMap<String, AppVolume>,
    /// Where each volume's slices are, by PVC name (from `AppPlaced`).
    pub placement: BTreeMap<String, PlacedVolume>,
    /// App snapshots, by name.
    pub snapshots: BTreeMap<String, AppSnapshot>,
    /// Volumes that left the app in a rollback but that snapshots still
    /// hold, by PVC name. Deleted with the last snapshot that holds them.
    pub retired: BTreeMap<String, AppVolume>,
    /// `(app, snapshot)` this app was cloned from.
    pub origin: Option<(String, String)>,
    /// The manifest the app was last pulled from (created or repaired).
    pub pulled: Option<Pulled>,
}

/// Where an app was pulled from (`AppPulled`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    pub repo: String,
    pub manifest: String,
    pub source: String,
    pub snapshot: String,
    pub workflow: String,
}

/// One app snapshot: the volumes' snapshots plus the objects (config and
/// metadata) as they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    pub name: String,
    pub seq: u64,
    pub created_ms: u64,
    pub message: String,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
    pub workflow: String,
}

/// Commands on an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCommand {
    Create(Manifest),
    /// Deletes the app, its volumes and their snapshots. `missing_ok`: an
    /// app that is not there is no error (compensations, retried steps).
    Delete {
        name: String,
        missing_ok: bool,
    },
    /// Fences every volume and snapshots them at one instant, with the
    /// objects (`app.snapshot-take`, a step of the `app-snapshot` saga).
    Snapshot {
        name: String,
        snapshot: String,
        message: String,
        workflow: String,
    },
    /// Deletes one app snapshot (`app.snapshot-drop`); one that is not there
    /// is no error. `dependants`: apps cloned from it (then it is refused).
    SnapshotDrop {
        name: String,
        snapshot: String,
        dependants: Vec<String>,
        missing_ok: bool,
    },
    /// Makes the app as it was at a snapshot: data, config, metadata and
    /// replicas (`app.restore`, a step of the `app-rollback` saga).
    Restore {
        name: String,
        snapshot: String,
    },
    /// Creates app `name` as a thin clone of `source@snapshot` with
    /// overrides (`app.clone-create`). `from` is the source snapshot, as the
    /// gateway read it.
    CloneFrom {
        name: String,
        source: String,
        snapshot: String,
        from: Box<AppSnapshot>,
        overrides: Vec<String>,
    },
    /// Creates app `name`, or repairs it, from a manifest pulled from a
    /// repository (`app.pull-import`, a step of `app-pull`). `from` is the
    /// manifest's app snapshot, as the gateway read it.
    Pull {
        name: String,
        repo: String,
        manifest: String,
        source: String,
        from: Box<AppSnapshot>,
        /// The app must not exist yet (else `already_exists`).
        create: bool,
        workflow: String,
    },
    Scale {
        name: String,
        workload: Option<String>,
        replicas: u32,
    },
    ConfigSet {
        name: String,
        configmap: String,
        key: String,
        value: String,
    },
}

impl AppCommand {
    /// The verb of its subject (`app.<verb>`).
    pub fn verb(&self) -> &'static str {
        match self {
            AppCommand::Create(_) => "create",
            AppCommand::Delete { .. } => "remove",
            AppCommand::Snapshot { .. } => "snapshot-take",
            AppCommand::SnapshotDrop { .. } => "snapshot-drop",
            AppCommand::Restore { .. } => "restore",
            AppCommand::CloneFrom { .. } => "clone-create",
            AppCommand::Pull { .. } => "pull-import",
            AppCommand::Scale { .. } => "scale",
            AppCommand::ConfigSet { .. } => "config-set",
        }
    }

    pub fn app(&self) -> &str {
        match self {
            AppCommand::Create(m) => &m.name,
            AppCommand::Delete { name, .. }
            | AppCommand::Snapshot { name, .. }
            | AppCommand::SnapshotDrop { name, .. }
            | AppCommand::Restore { name, .. }
            | AppCommand::CloneFrom { name, .. }
            | AppCommand::Pull { name, .. }
            | AppCommand::Scale { name, .. }
            | AppCommand::ConfigSet { name, .. } => name,
        }
    }
}

/// The volume name of PVC `pvc` of app `app`.
pub fn volume_name(app: &str, pvc: &str) -> String {
    format!("{app}/{pvc}")
}

impl AppState {
    pub fn exists(&self) -> bool {
        self.created_seq != 0
    }

    fn object(&self, kind: &str, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
    }

    fn object_mut(&mut self, kind: &str, name: &str) -> Option<&mut Object> {
        self.objects
            .iter_mut()
            .find(|o| o.kind == kind && o.name == name)
    }

    /// StatefulSets and Deployments: (kind, name, replicas).
    pub fn workloads(&self) -> Vec<(String, String, u32)> {
        self.objects
            .iter()
            .filter(|o| matches!(o.kind.as_str(), "StatefulSet" | "Deployment"))
            .map(|o| {
                (
                    o.kind.clone(),
                    o.name.clone(),
                    replicas_of(&o.value()).unwrap_or(1),
                )
            })
            .collect()
    }

    /// The volume names (`<app>/<pvc>`) of the app, in order.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes
            .keys()
            .map(|pvc| volume_name(&self.name, pvc))
            .collect()
    }

    /// Folds one event into the state.
    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        match event {
            Event::AppCreated(AppCreated {
                app,
                objects,
                volumes,
            }) => {
                *self = AppState {
                    name: app.clone(),
                    created_seq: seq,
                    created_ms: time_ms,
                    updated_seq: seq,
                    objects: objects.clone(),
                    volumes: volumes.iter().map(|v| (v.pvc.clone(), v.clone())).collect(),
                    ..AppState::default()
                };
            }
            Event::AppScaled(AppScaled {
                workload,
                kind,
                replicas,
                added,
                removed,
                ..
            }) => {
                if let Some(o) = self.object_mut(kind, workload) {
                    let mut value = o.value();
                    if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.insert("replicas".into(), Value::from(*replicas));
                    } else if let Some(obj) = value.as_object_mut() {
                        obj.insert("spec".into(), serde_json::json!({ "replicas": replicas }));
                    }
                    o.json = serde_json::to_string(&value).expect("json values serialize");
                }
                for v in added {
                    self.volumes.insert(v.pvc.clone(), v.clone());
                    self.retired.remove(&v.pvc);
                }
                for pvc in removed {
                    self.volumes.remove(pvc);
                    self.placement.remove(pvc);
                }
                self.updated_seq = seq;
            }
            Event::AppConfigSet(AppConfigSet {
                configmap,
                key,
                value,
                ..
            }) => {
                if let Some(o) = self.object_mut("ConfigMap", configmap) {
                    let mut object = o.value();
                    if let Some(obj) = object.as_object_mut() {
                        let data = obj
                            .entry("data")
                            .or_insert_with(|| Value::Object(Default::default()));
                        if let Some(data) = data.as_object_mut() {
                            data.insert(key.clone(), Value::String(value.clone()));
                        }
                    }
                    o.json = serde_json::to_string(&object).expect("json values serialize");
                }
                self.updated_seq = seq;
            }
            Event::AppPlaced(AppPlaced { volumes, .. }) => {
                for v in volumes {
                    self.placement.insert(v.pvc.clone(), v.clone());
                }
                self.updated_seq = seq;
            }
            Event::AppDeleted(AppDeleted { .. }) => *self = AppState::default(),
            Event::AppSnapshotted(e) => {
                self.snapshots.insert(
                    e.snapshot.clone(),
                    AppSnapshot {
                        name: e.snapshot.clone(),
                        seq,
                        created_ms: time_ms,
                        message: e.message.clone(),
                        objects: e.objects.clone(),
                        volumes: e.volumes.clone(),
                        workflow: e.workflow.clone(),
                    },
                );
                self.updated_seq = seq;
            }
            Event::AppSnapshotDeleted(e) => {
                self.snapshots.remove(&e.snapshot);
                let held = self.held_pvcs();
                self.retired.retain(|pvc, _| held.contains(pvc));
                self.updated_seq = seq;
            }
            Event::AppRolledBack(e) => {
                self.reset_to(&e.objects, &e.volumes, &e.retired, &e.deleted);
                self.updated_seq = seq;
            }
            Event::AppPulled(e) => {
                self.reset_to(&e.objects, &e.volumes, &e.retired, &e.deleted);
                self.pulled = Some(Pulled {
                    repo: e.repo.clone(),
                    manifest: e.manifest.clone(),
                    source: e.source.clone(),
                    snapshot: e.snapshot.clone(),
                    workflow: e.workflow.clone(),
                });
                self.updated_seq = seq;
            }
            Event::AppCloned(e) => {
                self.origin = Some((e.source.clone(), e.snapshot.clone()));
                self.updated_seq = seq;
            }
            _ => {}
        }
    }

    /// Objects and volumes become the given ones (a rollback, a pull);
    /// volumes that leave are `retired` (kept) or `deleted`.
    fn reset_to(
        &mut self,
        objects: &[Object],
        volumes: &[AppVolume],
        retired: &[String],
        deleted: &[String],
    ) {
        self.objects = objects.to_vec();
        let before = std::mem::take(&mut self.volumes);
        for v in volumes {
            self.retired.remove(&v.pvc);
            self.volumes.insert(v.pvc.clone(), v.clone());
        }
        for pvc in retired {
            if let Some(v) = before.get(pvc) {
                self.retired.insert(pvc.clone(), v.clone());
            }
        }
        for pvc in deleted {
            self.placement.remove(pvc);
        }
    }

    /// Decides which events a command produces, or why it is refused.
    /// `volume_exists` tells whether a volume name (`<app>/<pvc>`) is taken.
    pub fn decide(
        &self,
        command: &AppCommand,
        volume_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Event>, ApiError> {
        let missing = |name: &str| ApiError::not_found(format!("app {name:?} does not exist"));
        match command {
            AppCommand::Create(manifest) => {
                if self.exists() {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("app {:?} already exists", manifest.name),
                    ));
                }
                let mut events = Vec::new();
                for v in &manifest.volumes {
                    let volume = volume_name(&manifest.name, &v.pvc);
                    if volume_exists(&volume) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!(
                                "volume {volume:?} already exists; delete it or name the app differently"
                            ),
                        ));
                    }
                    events.push(volume_created(&volume, v));
                }
                events.push(Event::AppCreated(AppCreated {
                    app: manifest.name.clone(),
                    objects: manifest.objects.clone(),
                    volumes: manifest.volumes.clone(),
                }));
                Ok(events)
            }
            AppCommand::Delete { name, missing_ok } => {
                if !self.exists() {
                    return if *missing_ok {
                        Ok(Vec::new())
                    } else {
                        Err(missing(name))
                    };
                }
                let mut events = vec![Event::AppDeleted(AppDeleted { app: name.clone() })];
                events.extend(self.volumes.keys().chain(self.retired.keys()).map(|pvc| {
                    Event::VolumeDeleted(VolumeDeleted {
                        volume: volume_name(name, pvc),
                    })
                }));
                Ok(events)
            }
            AppCommand::Snapshot {
                name,
                snapshot,
                message,
                workflow,
            } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                self.decide_snapshot(snapshot, message, workflow)
            }
            AppCommand::SnapshotDrop {
                name,
                snapshot,
                dependants,
                missing_ok,
            } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                self.decide_snapshot_drop(snapshot, dependants, *missing_ok)
            }
            AppCommand::Restore { name, snapshot } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                self.decide_restore(snapshot)
            }
            AppCommand::CloneFrom {
                name,
                source,
                snapshot,
                from,
                overrides,
            } => self.decide_clone(name, source, snapshot, from, overrides, volume_exists),
            AppCommand::Pull {
                name,
                repo,
                manifest,
                source,
                from,
                create,
                workflow,
            } => {
                if *create && self.exists() {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "app {name:?} was created while this pull started; pull again to \
                             repair it, or pull under another name (--as)"
                        ),
                    ));
                }
                self.decide_pull(name, repo, manifest, source, from, workflow, volume_exists)
            }
            AppCommand::Scale {
                name,
                workload,
                replicas,
            } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                if *replicas > MAX_REPLICAS {
                    return Err(ApiError::invalid(format!(
                        "replicas must be at most {MAX_REPLICAS}"
                    )));
                }
                self.decide_scale(name, workload.as_deref(), *replicas, volume_exists)
            }
            AppCommand::ConfigSet {
                name,
                configmap,
                key,
                value,
            } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                if self.object("ConfigMap", configmap).is_none() {
                    let known: Vec<&str> = self
                        .objects
                        .iter()
                        .filter(|o| o.kind == "ConfigMap")
                        .map(|o| o.name.as_str())
                        .collect();
                    return Err(ApiError::not_found(format!(
                        "app {name} has no ConfigMap {configmap:?} (it has: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                check_config_key(key)?;
                Ok(vec![Event::AppConfigSet(AppConfigSet {
                    app: name.clone(),
                    configmap: configmap.clone(),
                    key: key.clone(),
                    value: value.clone(),
                })])
            }
        }
    }

    fn decide_scale(
        &self,
        name: &str,
        workload: Option<&str>,
        replicas: u32,
        volume_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Event>, ApiError> {
        let workloads = self.workloads();
        let names = || {
            workloads
                .iter()
                .map(|w| w.1.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (kind, wname, from) = match workload {
            Some(w) => workloads
                .iter()
                .find(|x| x.1 == w)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "app {name} has no StatefulSet or Deployment {w:?} (it has: {})",
                        names()
                    ))
                })?,
            None => match workloads.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!("app {name} has no StatefulSet or Deployment to scale"),
                    ));
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "app {name} has several workloads ({}); name one with --workload",
                        names()
                    )));
                }
            },
        };
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut events = Vec::new();
        if kind == "StatefulSet" {
            let object = self.object(&kind, &wname).expect("found above");
            let value = object.value();
            let delete_on_scale = value
                .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenScaled")
                .and_then(Value::as_str)
                == Some("Delete");
            for ordinal in from.min(replicas)..from.max(replicas) {
                for v in statefulset_volumes(object, &value, ordinal)? {
                    let kept = self.volumes.contains_key(&v.pvc);
                    let volume = volume_name(name, &v.pvc);
                    if replicas > from && !kept && self.retired.contains_key(&v.pvc) {
                        // Retired by a rollback, held by a snapshot: back in
                        // the app with the data it had (like a kept PVC).
                        added.push(v);
                    } else if replicas > from && !kept {
                        if volume_exists(&volume) {
                            return Err(ApiError::new(
                                ErrorCode::AlreadyExists,
                                format!("volume {volume:?} already exists outside the app"),
                            ));
                        }
                        events.push(volume_created(&volume, &v));
                        added.push(v);
                    } else if replicas < from
                        && kept
                        && delete_on_scale
                        && !self.held_pvcs().contains(&v.pvc)
                    {
                        events.push(Event::VolumeDeleted(VolumeDeleted { volume }));
                        removed.push(v.pvc);
                    }
                }
            }
        }
        events.push(Event::AppScaled(AppScaled {
            app: name.to_owned(),
            kind,
            workload: wname,
            from_replicas: from,
            replicas,
            added,
            removed,
        }));
        Ok(events)
    }
}

pub(crate) fn volume_created(volume: &str, v: &AppVolume) -> Event {
    Event::VolumeCreated(VolumeCreated {
        volume: volume.to_owned(),
        size_bytes: v.size_bytes,
        compression: APP_VOLUME_COMPRESSION.to_owned(),
        encrypted: false,
    })
}

/// ConfigMap keys: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub(crate) fn check_config_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "ConfigMap key {key:?} is not valid: use letters, digits, '-', '.' and '_'"
        )))
    }
}

/// Splits `<configmap>.<key>` given the ConfigMaps that exist: the longest
/// ConfigMap name that is followed by a dot wins (names may contain dots).
pub fn split_config_target<'a>(target: &'a str, configmaps: &[&str]) -> Option<(&'a str, &'a str)> {
    configmaps
        .iter()
        .filter(|cm| {
            target.len() > cm.len() + 1
                && target.starts_with(*cm)
                && target.as_bytes()[cm.len()] == b'.'
        })
        .max_by_key(|cm| cm.len())
        .map(|cm| (&target[..cm.len()], &target[cm.len() + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
apiVersion: cairn.dev/v1
kind: App
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: db-config}
data: {max_connections: "100"}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  template: {spec: {containers: [{name: pg, image: "postgres:16"}]}}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {resources: {requests: {storage: 1Gi}}}
    - metadata: {name: wal}
      spec: {resources: {requests: {storage: 256Mi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: uploads}
spec: {resources: {requests: {storage: 2Gi}}}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: db}
spec: {endpoints: [{port: metrics}]}
"#;

    fn run(
        state: &mut AppState,
        seq: &mut u64,
        cmd: &AppCommand,
        taken: &BTreeSet<String>,
    ) -> Result<Vec<Event>, ApiError> {
        let events = state.decide(cmd, &|v| taken.contains(v))?;
        for e in &events {
            *seq += 1;
            state.apply(*seq, *seq * 10, e);
        }
        Ok(events)
    }

    #[test]
    fn manifests_give_volumes_named_like_kubernetes() {
        let m = parse_manifest(SHOP, None).unwrap();
        assert_eq!(m.name, "shop");
        let pvcs: Vec<&str> = m.volumes.iter().map(|v| v.pvc.as_str()).collect();
        assert_eq!(
            pvcs,
            ["data-db-0", "wal-db-0", "data-db-1", "wal-db-1", "uploads"]
        );
        assert_eq!(m.volumes[1].size_bytes, 256 << 20);
        assert_eq!(m.objects.len(), 5, "unknown kinds are kept");
        assert_eq!(parse_manifest(SHOP, Some("other")).unwrap().name, "other");
    }

    #[test]
    fn bad_manifests_are_refused_with_reasons() {
        let err = |text: &str| parse_manifest(text, None).unwrap_err();
        assert!(
            err("kind: ConfigMap\nmetadata: {name: x}\n")
                .message
                .contains("no name")
        );
        assert!(err("{{{").message.contains("not valid YAML"));
        assert!(
            err("- a\n- b\n")
                .message
                .contains("not a Kubernetes object")
        );
        assert!(
            parse_manifest("kind: ConfigMap\nmetadata: {name: x}\n", Some("Bad_Name")).is_err()
        );
        let no_size =
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: p}\nspec: {}\n";
        assert!(
            parse_manifest(no_size, Some("a"))
                .unwrap_err()
                .message
                .contains("storage")
        );
        let twice =
            "kind: ConfigMap\nmetadata: {name: x}\n---\nkind: ConfigMap\nmetadata: {name: x}\n";
        assert!(
            parse_manifest(twice, Some("a"))
                .unwrap_err()
                .message
                .contains("two ConfigMap")
        );
    }

    #[test]
    fn create_scale_config_and_delete() {
        let manifest = parse_manifest(SHOP, None).unwrap();
        let (mut s, mut seq, mut taken) = (AppState::default(), 0, BTreeSet::new());
        let events = run(
            &mut s,
            &mut seq,
            &AppCommand::Create(manifest.clone()),
            &taken,
        )
        .unwrap();
        assert_eq!(events.len(), 6, "five volumes, then the app");
        assert_eq!(events[5].kind(), "AppCreated");
        taken.extend(s.volume_names());
        let again = run(
            &mut s,
            &mut seq,
            &AppCommand::Create(manifest.clone()),
            &taken,
        );
        assert_eq!(again.unwrap_err().code, ErrorCode::AlreadyExists);

        let scale = |n| AppCommand::Scale {
            name: "shop".into(),
            workload: None,
            replicas: n,
        };
        let events = run(&mut s, &mut seq, &scale(3), &taken).unwrap();
        let created: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::VolumeCreated(v) => Some(v.volume.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["shop/data-db-2", "shop/wal-db-2"]);
        assert_eq!(
            s.workloads(),
            [("StatefulSet".to_owned(), "db".to_owned(), 3)]
        );
        taken.extend(s.volume_names());
        // Scale-in keeps the volumes (Retain), scale-out reuses them.
        let events = run(&mut s, &mut seq, &scale(1), &taken).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(s.volumes.len(), 7);
        let events = run(&mut s, &mut seq, &scale(3), &taken).unwrap();
        assert_eq!(
            events.len(),
            1,
            "retained volumes come back without new ones"
        );

        let set = AppCommand::ConfigSet {
            name: "shop".into(),
            configmap: "db-config".into(),
            key: "max_connections".into(),
            value: "200".into(),
        };
        run(&mut s, &mut seq, &set, &taken).unwrap();
        let cm = s.object("ConfigMap", "db-config").unwrap().value();
        assert_eq!(cm["data"]["max_connections"], "200");
        let wrong = AppCommand::ConfigSet {
            name: "shop".into(),
            configmap: "nope".into(),
            key: "k".into(),
            value: "v".into(),
        };
        let e = run(&mut s, &mut seq, &wrong, &taken).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("db-config"), "{}", e.message);

        let events = run(
            &mut s,
            &mut seq,
            &AppCommand::Delete {
                name: "shop".into(),
                missing_ok: false,
            },
            &taken,
        )
        .unwrap();
        assert_eq!(events.len(), 1 + 7);
        assert!(!s.exists());
    }

    #[test]
    fn scale_in_deletes_volumes_when_the_policy_says_so() {
        let text = SHOP.replace(
            "  replicas: 2\n",
            "  replicas: 2\n  persistentVolumeClaimRetentionPolicy: {whenScaled: Delete}\n",
        );
        let manifest = parse_manifest(&text, None).unwrap();
        let (mut s, mut seq, taken) = (AppState::default(), 0, BTreeSet::new());
        run(&mut s, &mut seq, &AppCommand::Create(manifest), &taken).unwrap();
        let scale = AppCommand::Scale {
            name: "shop".into(),
            workload: Some("db".into()),
            replicas: 1,
        };
        let events = run(&mut s, &mut seq, &scale, &taken).unwrap();
        let deleted: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::VolumeDeleted(v) => Some(v.volume.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["shop/data-db-1", "shop/wal-db-1"]);
        assert!(!s.volumes.contains_key("data-db-1"));
    }

    /// A pull creates an app on an empty cluster (renamed with `--as`), and
    /// repairs an existing one: config back, extra replicas retired when a
    /// snapshot holds them; a volume of another size is refused.
    #[test]
    fn pull_creates_or_repairs_from_a_manifest() {
        let manifest = parse_manifest(SHOP, None).unwrap();
        let (mut source, mut seq) = (AppState::default(), 0);
        let none = BTreeSet::new();
        run(&mut source, &mut seq, &AppCommand::Create(manifest), &none).unwrap();
        let snap = |name: &str| AppCommand::Snapshot {
            name: "shop".into(),
            snapshot: name.into(),
            message: String::new(),
            workflow: "wf".into(),
        };
        run(&mut source, &mut seq, &snap("nightly"), &none).unwrap();
        let from = source.snapshots["nightly"].clone();
        let pull = |name: &str| AppCommand::Pull {
            name: name.into(),
            repo: "offsite".into(),
            manifest: "m1".into(),
            source: "shop".into(),
            from: Box::new(from.clone()),
            create: false,
            workflow: "wf-pull".into(),
        };

        // An empty cluster: the app is created, renamed, with empty volumes.
        let (mut copy, mut seq2) = (AppState::default(), 0);
        let events = run(&mut copy, &mut seq2, &pull("shop-dr"), &none).unwrap();
        let created = events
            .iter()
            .filter(|e| matches!(e, Event::VolumeCreated(_)))
            .count();
        assert_eq!(created, from.volumes.len());
        assert!(copy.exists());
        assert_eq!(copy.volumes.len(), from.volumes.len());
        assert_eq!(copy.pulled.as_ref().unwrap().manifest, "m1");
        let app_doc = copy.objects.iter().find(|o| o.kind == "App").unwrap();
        assert_eq!(app_doc.name, "shop-dr");
        assert!(app_doc.json.contains("cairn.dev/pulled-from"));
        // A name in use by another app's volume is refused.
        let taken: BTreeSet<String> = ["shop-x/data-db-0".to_owned()].into();
        let e = AppState::default().decide(&pull("shop-x"), &|v| taken.contains(v));
        assert_eq!(e.unwrap_err().code, ErrorCode::AlreadyExists);

        // Drift on the source, then a repair from its own push.
        let set = AppCommand::ConfigSet {
            name: "shop".into(),
            configmap: "db-config".into(),
            key: "max_connections".into(),
            value: "7".into(),
        };
        run(&mut source, &mut seq, &set, &none).unwrap();
        let scale = AppCommand::Scale {
            name: "shop".into(),
            workload: None,
            replicas: 3,
        };
        run(&mut source, &mut seq, &scale, &none).unwrap();
        run(&mut source, &mut seq, &snap("safety"), &none).unwrap();
        let events = run(&mut source, &mut seq, &pull("shop"), &none).unwrap();
        let pulled = events
            .iter()
            .find_map(|e| match e {
                Event::AppPulled(p) => Some(p),
                _ => None,
            })
            .unwrap();
        // db-2's volumes are held by the safety snapshot: retired, not deleted.
        assert_eq!(pulled.retired, vec!["data-db-2", "wal-db-2"]);
        assert!(pulled.deleted.is_empty());
        assert_eq!(source.objects, from.objects);
        assert_eq!(source.volumes.len(), from.volumes.len());
        assert!(source.retired.contains_key("data-db-2"));

        // A volume that is another size here: refused, nothing changes.
        let mut other = from.clone();
        other.volumes[0].size_bytes *= 2;
        let before = source.clone();
        let resized = AppCommand::Pull {
            name: "shop".into(),
            repo: "offsite".into(),
            manifest: "m2".into(),
            source: "shop".into(),
            from: Box::new(other),
            create: false,
            workflow: "wf-2".into(),
        };
        let e = source.decide(&resized, &|_| false).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert_eq!(source, before);

        // `app-pull` (create) never repairs an app that appeared meanwhile.
        let racing = AppCommand::Pull {
            name: "shop".into(),
            repo: "offsite".into(),
            manifest: "m2".into(),
            source: "shop".into(),
            from: Box::new(from.clone()),
            create: true,
            workflow: "wf-3".into(),
        };
        let e = source.decide(&racing, &|_| false).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(source, before);
    }

    #[test]
    fn config_targets_split_on_the_longest_configmap() {
        let cms = ["db", "db.conf"];
        assert_eq!(
            split_config_target("db.conf.max", &cms),
            Some(("db.conf", "max"))
        );
        assert_eq!(split_config_target("db.max", &cms), Some(("db", "max")));
        assert_eq!(split_config_target("other.max", &cms), None);
        assert_eq!(split_config_target("db.", &cms), None);
    }
}
