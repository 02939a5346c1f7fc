//! Placing apps: the bridge between what the journal knows (`schema`'s app
//! and node states and events) and the planner ([`crate::placement`]).
//!
//! - [`topology_of`]: the cluster as the journal describes it (registered
//!   nodes, their failed flags).
//! - [`request_for`]: what an app's Kubernetes objects ask for: one replica
//!   set per StatefulSet (its `volumeClaimTemplates` as claims), its
//!   standalone PVCs, and the `kind: App` document's `spec.placement`.
//! - [`place`]: given the events an app command decided, the `AppPlaced`
//!   event for the volumes it creates. On scale-out the existing replicas
//!   stay where they are: the new ones are planned with the whole set and
//!   then checked against the old ones' failure domains, and refused (never
//!   placed against the constraints) when they would share one.
//!
//! Pure, like the rest of this crate.

use std::collections::{BTreeMap, BTreeSet};

use cairn_schema::app::{AppState, Object, replicas_of, storage_request};
use cairn_schema::event::{AppPlaced, PlacedSlice, PlacedVolume};
use cairn_schema::state::NodeState;
use cairn_schema::{ApiError, ErrorCode, Event};
use serde_json::Value;

use crate::placement::{
    Claim, Constraints, Level, Plan, ReplicaSet, Request, SlicePlacement, Usage, VolumePlacement,
    plan,
};
use crate::topology::{Disk, Media, Node, Topology};

/// The topology of the registered nodes, in name order.
pub fn topology_of(nodes: &BTreeMap<String, NodeState>) -> Topology {
    Topology {
        nodes: nodes
            .values()
            .map(|n| Node {
                name: n.name.clone(),
                rack: n.rack.clone(),
                datacenter: n.datacenter.clone(),
                failed: n.failed,
                disks: n
                    .disks
                    .iter()
                    .map(|d| Disk {
                        name: d.name.clone(),
                        media: parse_media(&d.media).unwrap_or(Media::Ssd),
                        capacity_bytes: d.capacity_bytes,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn parse_media(text: &str) -> Option<Media> {
    Media::ALL.into_iter().find(|m| m.as_str() == text)
}

/// A claim's size, read exactly as the app's volume was created
/// ([`storage_request`]); a manifest the app decider accepted has one.
fn storage_bytes(spec: Option<&Value>) -> u64 {
    spec.and_then(|s| storage_request(s, "claim").ok())
        .unwrap_or(0)
}

/// The `kind: App` document's `spec.placement`, if any.
fn constraints(objects: &[Object]) -> Result<Constraints, ApiError> {
    let Some(app) = objects
        .iter()
        .find(|o| o.kind == "App" && o.api_version.starts_with("cairn.dev/"))
    else {
        return Ok(Constraints::default());
    };
    match app.value().pointer("/spec/placement") {
        None | Some(Value::Null) => Ok(Constraints::default()),
        Some(p) => serde_json::from_value(p.clone()).map_err(|e| {
            ApiError::invalid(format!(
                "spec.placement of the App document is not valid: {e} \
                 (expected antiAffinity: disk|node|rack|datacenter, separateDisks: [claims], media: ssd|hdd|nvme, affinity: node|none)"
            ))
        }),
    }
}

/// What an app's objects ask the planner for.
pub fn request_for(app: &str, objects: &[Object]) -> Result<Request, ApiError> {
    let placement = constraints(objects)?;
    let mut request = Request {
        app: app.to_owned(),
        replica_sets: Vec::new(),
        volumes: Vec::new(),
    };
    for o in objects {
        let value = o.value();
        match o.kind.as_str() {
            "StatefulSet" => {
                let templates = value
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let claims = templates
                    .iter()
                    .filter_map(|t| {
                        let name = t.pointer("/metadata/name")?.as_str()?.to_owned();
                        Some(Claim {
                            io_class: name.clone(),
                            name,
                            size_bytes: storage_bytes(t.get("spec")),
                            media: None,
                        })
                    })
                    .collect();
                request.replica_sets.push(ReplicaSet {
                    name: o.name.clone(),
                    replicas: replicas_of(&value)?,
                    claims,
                    placement: placement.clone(),
                });
            }
            "PersistentVolumeClaim" => request.volumes.push(Claim {
                name: o.name.clone(),
                size_bytes: storage_bytes(value.get("spec")),
                io_class: "data".to_owned(),
                media: placement.media,
            }),
            _ => {}
        }
    }
    Ok(request)
}

/// An app's placement as a plan (rack and datacenter from `topology`).
pub fn plan_of(app: &AppState, topology: &Topology) -> Plan {
    let node = |name: &str| topology.nodes.iter().find(|n| n.name == name);
    Plan {
        volumes: app
            .placement
            .values()
            .map(|v| VolumePlacement {
                replica: v.replica.clone(),
                volume: v.pvc.clone(),
                slices: v
                    .slices
                    .iter()
                    .map(|s| SlicePlacement {
                        index: s.index,
                        node: s.node.clone(),
                        disk: s.disk.clone(),
                        rack: node(&s.node).map(|n| n.rack.clone()).unwrap_or_default(),
                        datacenter: node(&s.node)
                            .map(|n| n.datacenter.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What every placed app holds on each disk.
pub fn usage_of<'a>(apps: impl IntoIterator<Item = &'a AppState>, topology: &Topology) -> Usage {
    let mut usage = Usage::new();
    for app in apps {
        usage.add_plan(&plan_of(app, topology));
    }
    usage
}

fn placed(v: &VolumePlacement) -> PlacedVolume {
    PlacedVolume {
        replica: v.replica.clone(),
        pvc: v.volume.clone(),
        slices: v
            .slices
            .iter()
            .map(|s| PlacedSlice {
                index: s.index,
                node: s.node.clone(),
                disk: s.disk.clone(),
            })
            .collect(),
    }
}

/// The failure domain of a slice at `level`.
fn domain(s: &SlicePlacement, level: Level) -> String {
    match level {
        Level::Disk => format!("disk {}/{}", s.node, s.disk),
        Level::Node => format!("node {}", s.node),
        Level::Rack => format!("rack {}/{}", s.datacenter, s.rack),
        Level::Datacenter => format!("datacenter {}", s.datacenter),
    }
}

/// The `AppPlaced` event for the volumes `events` create for app `before`
/// (its state before them), or none when they create no app volume.
/// `usage` is every app's use, this one's included.
pub fn place(
    before: &AppState,
    events: &[Event],
    topology: &Topology,
    usage: &Usage,
) -> Result<Option<Event>, ApiError> {
    // The app's objects after the command, and the PVCs it creates.
    let mut after = before.clone();
    for (i, e) in events.iter().enumerate() {
        after.apply(u64::MAX - 1 - i as u64, 0, e);
    }
    let new_pvcs: BTreeSet<String> = events
        .iter()
        .flat_map(|e| match e {
            Event::AppCreated(c) => c.volumes.iter().map(|v| v.pvc.clone()).collect(),
            Event::AppScaled(s) => s.added.iter().map(|v| v.pvc.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    if new_pvcs.is_empty() {
        return Ok(None);
    }
    let app = after.name.clone();
    let request = request_for(&app, &after.objects)?;
    // Plan the whole app on top of what every app (this one included) holds
    // now: conservative on capacity, since its kept volumes count twice.
    let whole = plan(topology, usage, &request).map_err(ApiError::from)?;
    let old = plan_of(before, topology);
    let kept: BTreeSet<&str> = old.volumes.iter().map(|v| v.volume.as_str()).collect();
    let new: Vec<&VolumePlacement> = whole
        .volumes
        .iter()
        .filter(|v| new_pvcs.contains(&v.volume) && !kept.contains(v.volume.as_str()))
        .collect();
    check_against_kept(&request, &old, &new)?;
    Ok(Some(Event::AppPlaced(AppPlaced {
        app,
        volumes: new.into_iter().map(placed).collect(),
    })))
}

/// New replicas must not share an anti-affinity domain with replicas that
/// stay where they are.
fn check_against_kept(
    request: &Request,
    old: &Plan,
    new: &[&VolumePlacement],
) -> Result<(), ApiError> {
    for set in &request.replica_sets {
        let Some(level) = set.placement.anti_affinity else {
            continue;
        };
        let in_set = |v: &&VolumePlacement| {
            v.replica
                .as_deref()
                .is_some_and(|r| crate::placement::replica_set_of(r) == set.name)
        };
        let mut taken: BTreeMap<String, String> = BTreeMap::new();
        for v in old.volumes.iter().filter(|v| in_set(v)) {
            for s in &v.slices {
                taken.insert(domain(s, level), v.replica.clone().unwrap_or_default());
            }
        }
        for v in new.iter().filter(|v| in_set(v)) {
            for s in &v.slices {
                let d = domain(s, level);
                if let Some(owner) = taken.get(&d)
                    && Some(owner.as_str()) != v.replica.as_deref()
                {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "replica {} would share {d} with replica {owner}, which stays where it is \
                             (antiAffinity: {level}); add capacity in another {level} or scale in first",
                            v.replica.as_deref().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
