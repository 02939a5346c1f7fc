//! An app's history: the deciders of app snapshots, snapshot deletion,
//! rollback (restore) and thin clones, and the `--set` overrides of a clone.
//! Pure, like [`crate::app`], whose [`AppState`] they extend.
//!
//! # Invariants
//! - An app snapshot names every volume of the app at that instant; the
//!   volume snapshots it needs exist as long as it does. A volume that
//!   leaves the app (a rollback past a scale-out, a scale-in whose
//!   StatefulSet deletes PVCs) while a snapshot holds it is *retired* or
//!   kept, never deleted; it is deleted with the last snapshot holding it.
//! - A snapshot that clones depend on is protected: deleting it is refused
//!   and names the clones. (The block engine shares blocks by reference, so
//!   a clone never needs its source's data to stay; the protection keeps
//!   the lineage that `app log` shows whole.)
//! - A clone is a new app: its volumes are `VolumeCloned` from the source
//!   snapshot (no data copied), replicas added by an override are new empty
//!   volumes, and its objects have the source app's name rewritten.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::app::{
    AppSnapshot, AppState, Object, check_config_key, derive_volumes, split_config_target,
    volume_created, volume_name,
};
use crate::event::{
    AppCloned, AppCreated, AppPulled, AppRolledBack, AppSnapshotDeleted, AppSnapshotted,
    SnapshotDeleted, VolumeCloned, VolumeDeleted, VolumeRolledBack, VolumeSnapshotted,
};
use crate::{ApiError, ErrorCode, Event};

/// Largest number of snapshots one app keeps.
pub const MAX_APP_SNAPSHOTS: usize = 1024;

impl AppState {
    /// PVCs that some snapshot of the app holds.
    pub fn held_pvcs(&self) -> BTreeSet<String> {
        self.snapshots
            .values()
            .flat_map(|s| s.volumes.iter().map(|v| v.pvc.clone()))
            .collect()
    }

    /// The app's volumes not in `wanted`: (retired: some snapshot holds
    /// them, deleted: none does).
    fn leaving(&self, wanted: &BTreeSet<&str>) -> (Vec<String>, Vec<String>) {
        let held = self.held_pvcs();
        self.volumes
            .keys()
            .filter(|p| !wanted.contains(p.as_str()))
            .cloned()
            .partition(|pvc| held.contains(pvc))
    }

    pub(crate) fn decide_snapshot(
        &self,
        snapshot: &str,
        message: &str,
        workflow: &str,
    ) -> Result<Vec<Event>, ApiError> {
        if let Some(existing) = self.snapshots.get(snapshot) {
            if existing.workflow == workflow {
                // The same saga's step again (after a crash): done already.
                return Ok(Vec::new());
            }
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("app {} already has a snapshot {snapshot:?}", self.name),
            ));
        }
        if self.snapshots.len() >= MAX_APP_SNAPSHOTS {
            return Err(ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "app {} has {MAX_APP_SNAPSHOTS} snapshots; delete some first",
                    self.name
                ),
            ));
        }
        let mut events: Vec<Event> = self
            .volumes
            .keys()
            .map(|pvc| {
                Event::VolumeSnapshotted(VolumeSnapshotted {
                    volume: volume_name(&self.name, pvc),
                    snapshot: snapshot.to_owned(),
                })
            })
            .collect();
        events.push(Event::AppSnapshotted(AppSnapshotted {
            app: self.name.clone(),
            snapshot: snapshot.to_owned(),
            message: message.to_owned(),
            objects: self.objects.clone(),
            volumes: self.volumes.values().cloned().collect(),
            workflow: workflow.to_owned(),
        }));
        Ok(events)
    }

    pub(crate) fn decide_snapshot_drop(
        &self,
        snapshot: &str,
        dependants: &[String],
        missing_ok: bool,
    ) -> Result<Vec<Event>, ApiError> {
        let snap = match self.snapshot_or_not_found(snapshot) {
            Ok(snap) => snap,
            Err(_) if missing_ok => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !dependants.is_empty() {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "snapshot {snapshot} of app {} is protected: {} cloned from it ({}); delete {} first",
                    self.name,
                    if dependants.len() == 1 {
                        "an app was"
                    } else {
                        "apps were"
                    },
                    dependants.join(", "),
                    if dependants.len() == 1 { "it" } else { "them" },
                ),
            ));
        }
        let mut events = vec![Event::AppSnapshotDeleted(AppSnapshotDeleted {
            app: self.name.clone(),
            snapshot: snapshot.to_owned(),
        })];
        for v in &snap.volumes {
            if self.volumes.contains_key(&v.pvc) || self.retired.contains_key(&v.pvc) {
                events.push(Event::SnapshotDeleted(SnapshotDeleted {
                    volume: volume_name(&self.name, &v.pvc),
                    snapshot: snapshot.to_owned(),
                }));
            }
        }
        // Retired volumes no other snapshot holds go with it.
        let still_held: BTreeSet<&str> = self
            .snapshots
            .values()
            .filter(|s| s.name != snapshot)
            .flat_map(|s| s.volumes.iter().map(|v| v.pvc.as_str()))
            .collect();
        for pvc in self.retired.keys() {
            if !still_held.contains(pvc.as_str()) {
                events.push(Event::VolumeDeleted(VolumeDeleted {
                    volume: volume_name(&self.name, pvc),
                }));
            }
        }
        Ok(events)
    }

    fn snapshot_or_not_found(&self, snapshot: &str) -> Result<&AppSnapshot, ApiError> {
        self.snapshots.get(snapshot).ok_or_else(|| {
            let known: Vec<&str> = self.snapshots.keys().map(String::as_str).collect();
            ApiError::not_found(format!(
                "app {} has no snapshot {snapshot:?} (it has: {})",
                self.name,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    pub(crate) fn decide_restore(&self, snapshot: &str) -> Result<Vec<Event>, ApiError> {
        let snap = self.snapshot_or_not_found(snapshot)?;
        let mut events = Vec::new();
        for v in &snap.volumes {
            if !self.volumes.contains_key(&v.pvc) && !self.retired.contains_key(&v.pvc) {
                return Err(ApiError::internal(format!(
                    "volume {} of snapshot {snapshot} is gone",
                    volume_name(&self.name, &v.pvc)
                )));
            }
            events.push(Event::VolumeRolledBack(VolumeRolledBack {
                volume: volume_name(&self.name, &v.pvc),
                snapshot: snapshot.to_owned(),
            }));
        }
        let wanted: BTreeSet<&str> = snap.volumes.iter().map(|v| v.pvc.as_str()).collect();
        let (retired, deleted) = self.leaving(&wanted);
        events.push(Event::AppRolledBack(AppRolledBack {
            app: self.name.clone(),
            snapshot: snapshot.to_owned(),
            objects: snap.objects.clone(),
            volumes: snap.volumes.clone(),
            retired,
            deleted: deleted.clone(),
        }));
        events.extend(deleted.into_iter().map(|pvc| {
            Event::VolumeDeleted(VolumeDeleted {
                volume: volume_name(&self.name, &pvc),
            })
        }));
        Ok(events)
    }

    pub(crate) fn decide_clone(
        &self,
        name: &str,
        source: &str,
        snapshot: &str,
        from: &AppSnapshot,
        overrides: &[String],
        volume_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Event>, ApiError> {
        // An existing target is refused even when an earlier clone of the
        // same snapshot made it: that is another request (its overrides
        // would be dropped). The same step rerun after a crash never gets
        // here: its request id is journaled with its events, so dedup
        // answers it with the first reply.
        if self.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("app {name:?} already exists"),
            ));
        }
        let mut objects = rename_objects(
            &from.objects,
            source,
            name,
            ("cairn.dev/clone-of", format!("{source}@{snapshot}")),
        );
        apply_overrides(&mut objects, overrides)?;
        let volumes = derive_volumes(&objects)?;
        let had: BTreeSet<&str> = from.volumes.iter().map(|v| v.pvc.as_str()).collect();
        let mut events = Vec::new();
        for v in &volumes {
            let volume = volume_name(name, &v.pvc);
            if volume_exists(&volume) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("volume {volume:?} already exists; name the clone differently"),
                ));
            }
            if had.contains(v.pvc.as_str()) {
                events.push(Event::VolumeCloned(VolumeCloned {
                    volume,
                    source: volume_name(source, &v.pvc),
                    snapshot: snapshot.to_owned(),
                    size_bytes: v.size_bytes,
                }));
            } else {
                events.push(volume_created(&volume, v));
            }
        }
        events.push(Event::AppCreated(AppCreated {
            app: name.to_owned(),
            objects,
            volumes,
        }));
        events.push(Event::AppCloned(AppCloned {
            app: name.to_owned(),
            source: source.to_owned(),
            snapshot: snapshot.to_owned(),
            overrides: overrides.to_vec(),
        }));
        Ok(events)
    }
}

impl AppState {
    /// A pull: app `name` becomes the manifest's app snapshot `from`
    /// (objects renamed when `name` is not `source`). A new app is created
    /// with empty volumes; an existing one is reconciled like a restore
    /// (volumes it lacks are created, extra ones retired or deleted). The
    /// data is written by the next step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide_pull(
        &self,
        name: &str,
        repo: &str,
        manifest: &str,
        source: &str,
        from: &AppSnapshot,
        workflow: &str,
        volume_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Event>, ApiError> {
        if from.volumes.is_empty() && from.objects.is_empty() {
            return Err(ApiError::internal("the manifest was not read"));
        }
        let objects = if name == source {
            from.objects.clone()
        } else {
            rename_objects(
                &from.objects,
                source,
                name,
                (
                    "cairn.dev/pulled-from",
                    format!("{repo}:{source}@{}", from.name),
                ),
            )
        };
        let volumes = from.volumes.clone();
        let mut events = Vec::new();
        let pulled = |retired: Vec<String>, deleted: Vec<String>| {
            Event::AppPulled(AppPulled {
                app: name.to_owned(),
                repo: repo.to_owned(),
                manifest: manifest.to_owned(),
                source: source.to_owned(),
                snapshot: from.name.clone(),
                objects: objects.clone(),
                volumes: volumes.clone(),
                retired,
                deleted,
                workflow: workflow.to_owned(),
            })
        };
        if !self.exists() {
            for v in &volumes {
                let volume = volume_name(name, &v.pvc);
                if volume_exists(&volume) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("volume {volume:?} already exists; pull under another name (--as)"),
                    ));
                }
                events.push(volume_created(&volume, v));
            }
            events.push(Event::AppCreated(AppCreated {
                app: name.to_owned(),
                objects: objects.clone(),
                volumes: volumes.clone(),
            }));
            events.push(pulled(Vec::new(), Vec::new()));
            return Ok(events);
        }
        for v in &volumes {
            let have = self
                .volumes
                .get(&v.pvc)
                .or_else(|| self.retired.get(&v.pvc));
            match have {
                Some(have) if have.size_bytes != v.size_bytes => {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "volume {} is {} bytes here and {} bytes in the repo; volumes are \
                             not resized: pull under another name (--as)",
                            volume_name(name, &v.pvc),
                            have.size_bytes,
                            v.size_bytes
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    let volume = volume_name(name, &v.pvc);
                    if volume_exists(&volume) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!("volume {volume:?} exists outside app {name}"),
                        ));
                    }
                    events.push(volume_created(&volume, v));
                }
            }
        }
        let wanted: BTreeSet<&str> = volumes.iter().map(|v| v.pvc.as_str()).collect();
        let (retired, deleted) = self.leaving(&wanted);
        events.push(pulled(retired, deleted.clone()));
        events.extend(deleted.into_iter().map(|pvc| {
            Event::VolumeDeleted(VolumeDeleted {
                volume: volume_name(name, &pvc),
            })
        }));
        Ok(events)
    }
}

/// Label maps whose values name the app.
const LABEL_PATHS: &[&str] = &[
    "/metadata/labels",
    "/spec/selector/matchLabels",
    "/spec/selector",
    "/spec/template/metadata/labels",
];

/// The source app's objects for a clone: label values equal to the source
/// app's name become the clone's, the `kind: App` document is renamed, and
/// every object is annotated (`cairn.dev/clone-of: <source>@<snapshot>`).
fn rename_objects(
    objects: &[Object],
    source: &str,
    name: &str,
    annotation: (&str, String),
) -> Vec<Object> {
    objects
        .iter()
        .map(|o| {
            let mut value = o.value();
            for path in LABEL_PATHS {
                if let Some(map) = value.pointer_mut(path).and_then(Value::as_object_mut) {
                    for v in map.values_mut() {
                        if v.as_str() == Some(source) {
                            *v = Value::String(name.to_owned());
                        }
                    }
                }
            }
            let mut renamed = o.name.clone();
            if o.kind == "App" && o.api_version.starts_with("cairn.dev/") {
                renamed = name.to_owned();
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), Value::String(name.to_owned()));
                }
            }
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                let annotations = meta
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(a) = annotations.as_object_mut() {
                    a.insert(annotation.0.into(), Value::String(annotation.1.clone()));
                }
            }
            Object {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: renamed,
                json: serde_json::to_string(&value).expect("json values serialize"),
            }
        })
        .collect()
}

/// An override's value: JSON when it reads as a number, boolean or null,
/// else the text itself.
pub fn override_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(text.to_owned()),
    }
}

fn set_path(value: &mut Value, path: &str, new: Value) -> Result<(), String> {
    let mut at = value;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(format!("empty segment in path {path:?}"));
        }
        let last = i + 1 == parts.len();
        at = match at {
            Value::Array(items) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| format!("{part:?} is not an index into a list"))?;
                let len = items.len();
                items
                    .get_mut(idx)
                    .ok_or_else(|| format!("index {idx} is past the list's {len} items"))?
            }
            Value::Object(map) => map
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Default::default())),
            _ => return Err(format!("{part:?} is inside a value that is not an object")),
        };
        if last {
            *at = new;
            return Ok(());
        }
    }
    Ok(())
}

fn with_object(
    objects: &mut [Object],
    pred: impl Fn(&Object) -> bool,
) -> impl Iterator<Item = &mut Object> {
    objects.iter_mut().filter(move |o| pred(o))
}

fn update(o: &mut Object, f: impl FnOnce(&mut Value) -> Result<(), String>) -> Result<(), String> {
    let mut value = o.value();
    f(&mut value)?;
    o.json = serde_json::to_string(&value).expect("json values serialize");
    Ok(())
}

/// Applies `--set path=value` overrides:
/// - `replicas=N`: the one StatefulSet or Deployment (name it otherwise);
/// - `image=REF`: every container of every workload;
/// - `<configmap>.<key>=V`: one ConfigMap value;
/// - `<Kind>/<name>.<dotted.path>=V`: any field of any object (`0`, `1`…
///   index lists).
pub fn apply_overrides(objects: &mut [Object], overrides: &[String]) -> Result<(), ApiError> {
    for text in overrides {
        let bad = |why: String| ApiError::invalid(format!("override {text:?}: {why}"));
        let (path, raw) = text
            .split_once('=')
            .ok_or_else(|| bad("expected path=value".into()))?;
        let value = override_value(raw);
        let is_workload = |o: &Object| matches!(o.kind.as_str(), "StatefulSet" | "Deployment");
        if path == "replicas" {
            let n = value
                .as_u64()
                .filter(|n| *n <= crate::app::MAX_REPLICAS as u64)
                .ok_or_else(|| bad("replicas must be a number up to 1024".into()))?;
            let mut workloads: Vec<&mut Object> = with_object(objects, is_workload).collect();
            match workloads.as_mut_slice() {
                [one] => update(one, |v| set_path(v, "spec.replicas", Value::from(n))),
                [] => Err("the app has no StatefulSet or Deployment".into()),
                _ => Err("the app has several workloads: use <Kind>/<name>.spec.replicas=N".into()),
            }
            .map_err(bad)?;
        } else if path == "image" {
            let mut n = 0;
            for o in with_object(objects, is_workload) {
                update(o, |v| {
                    if let Some(cs) = v
                        .pointer_mut("/spec/template/spec/containers")
                        .and_then(Value::as_array_mut)
                    {
                        for c in cs {
                            if let Some(c) = c.as_object_mut() {
                                c.insert("image".into(), Value::String(raw.to_owned()));
                                n += 1;
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(&bad)?;
            }
            if n == 0 {
                return Err(bad("the app's workloads have no containers".into()));
            }
        } else if let Some((target, field)) = path.split_once('.')
            && let Some((kind, name)) = target.split_once('/')
        {
            let o = objects
                .iter_mut()
                .find(|o| o.kind == kind && o.name == name)
                .ok_or_else(|| bad(format!("the app has no {kind} {name:?}")))?;
            update(o, |v| set_path(v, field, value)).map_err(bad)?;
        } else {
            let configmaps: Vec<String> = objects
                .iter()
                .filter(|o| o.kind == "ConfigMap")
                .map(|o| o.name.clone())
                .collect();
            let names: Vec<&str> = configmaps.iter().map(String::as_str).collect();
            let (cm, key) = split_config_target(path, &names).ok_or_else(|| {
                bad(
                    "use replicas=N, image=REF, <configmap>.<key>=V or <Kind>/<name>.<path>=V"
                        .into(),
                )
            })?;
            check_config_key(key)?;
            let o = objects
                .iter_mut()
                .find(|o| o.kind == "ConfigMap" && o.name == cm)
                .expect("split_config_target found it");
            update(o, |v| {
                set_path(
                    v,
                    "data",
                    v.get("data")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default())),
                )?;
                if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
                    data.insert(key.to_owned(), Value::String(raw.to_owned()));
                }
                Ok(())
            })
            .map_err(bad)?;
        }
    }
    Ok(())
}
