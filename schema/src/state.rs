//! Aggregate state, its fold ([`VolumeState::apply`]) and its decider
//! ([`VolumeState::decide`]), and [`World`], the fold of the whole journal.
//! All of it is pure and synchronous.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::event::{
    NodeDisk, NodeRegistered, SnapshotDeleted, VolumeCloned, VolumeCreated, VolumeDeleted,
    VolumeRolledBack, VolumeSnapshotted,
};
use crate::repo::RepoState;
use crate::workflow::WorkflowState;
use crate::{ApiError, ErrorCode, Event, EventRecord, VolumeCommand};

/// The fold of the whole journal: every aggregate's state, keyed by
/// (tenant, name). Replaying the journal into a `World` gives exactly the
/// state the live actors hold (`events verify` checks this).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Seq of the last record folded in (0: none).
    pub seq: u64,
    pub volumes: BTreeMap<(String, String), VolumeState>,
    pub apps: BTreeMap<(String, String), AppState>,
    /// Nodes by name (cluster-wide).
    pub nodes: BTreeMap<String, NodeState>,
    /// Workflows (sagas) by (tenant, id): every running one, and the newest
    /// [`MAX_FINISHED_WORKFLOWS`] finished ones.
    pub workflows: BTreeMap<(String, String), WorkflowState>,
    /// Finished workflows, oldest first (what is forgotten first).
    pub finished_workflows: VecDeque<(String, String)>,
    /// Registered backup repositories by (tenant, name).
    pub repos: BTreeMap<(String, String), RepoState>,
}

/// Finished workflows the folded state remembers; older ones are still in
/// the journal (`events --kind WorkflowFinished`).
pub const MAX_FINISHED_WORKFLOWS: usize = 4096;

/// What the journal says about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub registered_seq: u64,
    pub registered_ms: u64,
    pub rack: String,
    pub datacenter: String,
    pub disks: Vec<NodeDisk>,
    pub failed: bool,
}

impl NodeState {
    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        match event {
            Event::NodeRegistered(NodeRegistered {
                node,
                rack,
                datacenter,
                disks,
            }) => {
                *self = NodeState {
                    name: node.clone(),
                    registered_seq: seq,
                    registered_ms: time_ms,
                    rack: rack.clone(),
                    datacenter: datacenter.clone(),
                    disks: disks.clone(),
                    failed: self.failed,
                };
            }
            Event::NodeFailed(_) => self.failed = true,
            _ => {}
        }
    }

    /// The events that make the journal know this node as `registered`
    /// says: none if it already does.
    pub fn decide_register(&self, registered: &NodeRegistered) -> Vec<Event> {
        let same = self.registered_seq != 0
            && self.rack == registered.rack
            && self.datacenter == registered.datacenter
            && self.disks == registered.disks;
        if same {
            Vec::new()
        } else {
            vec![Event::NodeRegistered(registered.clone())]
        }
    }

    pub fn decide_fail(&self) -> Result<Vec<Event>, ApiError> {
        if self.registered_seq == 0 {
            return Err(ApiError::not_found(format!(
                "node {:?} does not exist",
                self.name
            )));
        }
        if self.failed {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("node {} is already marked failed", self.name),
            ));
        }
        Ok(vec![Event::NodeFailed(crate::event::NodeFailed {
            node: self.name.clone(),
        })])
    }
}

impl World {
    /// Folds one record (already decoded into `event`) into the world.
    pub fn apply(&mut self, record: &EventRecord, event: &Event) {
        self.seq = record.seq;
        if let Some(name) = record.aggregate.strip_prefix("volume/") {
            let key = (record.tenant.clone(), name.to_owned());
            let state = self.volumes.entry(key).or_default();
            state.apply(record.seq, record.time_ms, event);
            if !state.exists() {
                let key = (record.tenant.clone(), name.to_owned());
                self.volumes.remove(&key);
            }
        } else if let Some(name) = record.aggregate.strip_prefix("node/") {
            self.nodes
                .entry(name.to_owned())
                .or_default()
                .apply(record.seq, record.time_ms, event);
        } else if let Some(id) = record.aggregate.strip_prefix("workflow/") {
            let key = (record.tenant.clone(), id.to_owned());
            let state = self.workflows.entry(key.clone()).or_default();
            let was_finished = state.finished_ms.is_some();
            state.apply(record.seq, record.time_ms, event);
            let finished = state.finished_ms.is_some();
            if finished && !was_finished {
                self.finished_workflows.push_back(key);
                while self.finished_workflows.len() > MAX_FINISHED_WORKFLOWS {
                    if let Some(old) = self.finished_workflows.pop_front()
                        && self
                            .workflows
                            .get(&old)
                            .is_some_and(|w| w.finished_ms.is_some())
                    {
                        self.workflows.remove(&old);
                    }
                }
            } else if !finished && was_finished {
                // Resumed: running again, no longer among the finished.
                self.finished_workflows.retain(|k| k != &key);
            }
        } else if let Some(name) = record.aggregate.strip_prefix("repo/") {
            let key = (record.tenant.clone(), name.to_owned());
            let state = self.repos.entry(key.clone()).or_default();
            state.apply(record.seq, record.time_ms, event);
            if !state.exists() {
                self.repos.remove(&key);
            }
        } else if let Some(name) = record.aggregate.strip_prefix("app/") {
            let key = (record.tenant.clone(), name.to_owned());
            let state = self.apps.entry(key).or_default();
            state.apply(record.seq, record.time_ms, event);
            if !state.exists() {
                let key = (record.tenant.clone(), name.to_owned());
                self.apps.remove(&key);
            }
        }
    }

    /// The volumes of one tenant, in name order.
    pub fn volumes_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a VolumeState> + 'a {
        self.volumes
            .iter()
            .filter(move |((t, _), _)| t == tenant)
            .map(|(_, state)| state)
    }
}

/// What the journal says about one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub name: String,
    pub size_bytes: u64,
    /// Seq of the event that created it; 0 while the volume does not exist.
    pub created_seq: u64,
    pub created_ms: u64,
    pub compression: String,
    pub encrypted: bool,
    /// `volume@snapshot` this volume was cloned from.
    pub origin: Option<String>,
    /// The snapshot of the last rollback, if any.
    pub rolled_back_to: Option<String>,
    pub snapshots: BTreeMap<String, SnapshotMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub seq: u64,
    pub created_ms: u64,
}

impl VolumeState {
    pub fn exists(&self) -> bool {
        self.created_seq != 0
    }

    /// Folds one event (recorded at `seq`, `time_ms`) into the state.
    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        match event {
            Event::VolumeCreated(VolumeCreated {
                volume,
                size_bytes,
                compression,
                encrypted,
            }) => {
                *self = VolumeState {
                    name: volume.clone(),
                    size_bytes: *size_bytes,
                    created_seq: seq,
                    created_ms: time_ms,
                    compression: compression.clone(),
                    encrypted: *encrypted,
                    ..VolumeState::default()
                };
            }
            Event::VolumeCloned(VolumeCloned {
                volume,
                source,
                snapshot,
                size_bytes,
            }) => {
                *self = VolumeState {
                    name: volume.clone(),
                    size_bytes: *size_bytes,
                    created_seq: seq,
                    created_ms: time_ms,
                    origin: Some(format!("{source}@{snapshot}")),
                    ..VolumeState::default()
                };
            }
            Event::VolumeRolledBack(VolumeRolledBack { snapshot, .. }) => {
                self.rolled_back_to = Some(snapshot.clone());
            }
            Event::VolumeDeleted(VolumeDeleted { .. }) => *self = VolumeState::default(),
            Event::VolumeSnapshotted(VolumeSnapshotted { snapshot, .. }) => {
                self.snapshots.insert(
                    snapshot.clone(),
                    SnapshotMeta {
                        seq,
                        created_ms: time_ms,
                    },
                );
            }
            Event::SnapshotDeleted(SnapshotDeleted { snapshot, .. }) => {
                self.snapshots.remove(snapshot);
            }
            // Facts about other aggregates.
            _ => {}
        }
    }

    /// Decides which events a command produces, or why it is refused.
    pub fn decide(&self, command: &VolumeCommand) -> Result<Vec<Event>, ApiError> {
        let missing = |name: &str| ApiError::not_found(format!("volume {name:?} does not exist"));
        match command {
            VolumeCommand::Create {
                name,
                size_bytes,
                compression,
                encrypted,
            } => {
                if self.exists() {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("volume {name:?} already exists"),
                    ));
                }
                Ok(vec![Event::VolumeCreated(VolumeCreated {
                    volume: name.clone(),
                    size_bytes: *size_bytes,
                    compression: compression.clone(),
                    encrypted: *encrypted,
                })])
            }
            VolumeCommand::Delete { name } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                Ok(vec![Event::VolumeDeleted(VolumeDeleted {
                    volume: name.clone(),
                })])
            }
            VolumeCommand::Snapshot { name, snapshot } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                if self.snapshots.contains_key(snapshot) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("snapshot {name}@{snapshot} already exists"),
                    ));
                }
                Ok(vec![Event::VolumeSnapshotted(VolumeSnapshotted {
                    volume: name.clone(),
                    snapshot: snapshot.clone(),
                })])
            }
            VolumeCommand::DeleteSnapshot { name, snapshot } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                if !self.snapshots.contains_key(snapshot) {
                    return Err(ApiError::not_found(format!(
                        "snapshot {name}@{snapshot} does not exist"
                    )));
                }
                Ok(vec![Event::SnapshotDeleted(SnapshotDeleted {
                    volume: name.clone(),
                    snapshot: snapshot.clone(),
                })])
            }
            VolumeCommand::Rollback { name, snapshot } => {
                if !self.exists() {
                    return Err(missing(name));
                }
                if !self.snapshots.contains_key(snapshot) {
                    return Err(ApiError::not_found(format!(
                        "snapshot {name}@{snapshot} does not exist"
                    )));
                }
                Ok(vec![Event::VolumeRolledBack(VolumeRolledBack {
                    volume: name.clone(),
                    snapshot: snapshot.clone(),
                })])
            }
            VolumeCommand::Clone { .. } => Err(ApiError::new(
                ErrorCode::Internal,
                "a clone is decided with its source: use decide_clone",
            )),
        }
    }

    /// Decides a clone into this (target) volume from `source`'s snapshot.
    pub fn decide_clone(
        &self,
        command: &VolumeCommand,
        source: &VolumeState,
    ) -> Result<Vec<Event>, ApiError> {
        let VolumeCommand::Clone {
            name,
            snapshot,
            target,
        } = command
        else {
            return self.decide(command);
        };
        if !source.exists() {
            return Err(ApiError::not_found(format!(
                "volume {name:?} does not exist"
            )));
        }
        if !source.snapshots.contains_key(snapshot) {
            return Err(ApiError::not_found(format!(
                "snapshot {name}@{snapshot} does not exist"
            )));
        }
        if self.exists() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("volume {target:?} already exists"),
            ));
        }
        Ok(vec![Event::VolumeCloned(VolumeCloned {
            volume: target.clone(),
            source: name.clone(),
            snapshot: snapshot.clone(),
            size_bytes: source.size_bytes,
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut VolumeState, seq: &mut u64, cmd: VolumeCommand) -> Result<(), ApiError> {
        for e in state.decide(&cmd)? {
            *seq += 1;
            state.apply(*seq, *seq * 10, &e);
        }
        Ok(())
    }

    #[test]
    fn lifecycle_follows_the_rules() {
        let (mut s, mut seq) = (VolumeState::default(), 0);
        let snap = |n: &str| VolumeCommand::Snapshot {
            name: "v1".into(),
            snapshot: n.into(),
        };
        assert_eq!(
            run(&mut s, &mut seq, snap("s1")).unwrap_err().code,
            ErrorCode::NotFound
        );
        run(
            &mut s,
            &mut seq,
            VolumeCommand::Create {
                name: "v1".into(),
                size_bytes: 1 << 30,
                compression: "lz4".into(),
                encrypted: false,
            },
        )
        .unwrap();
        let again = run(
            &mut s,
            &mut seq,
            VolumeCommand::Create {
                name: "v1".into(),
                size_bytes: 1,
                compression: "lz4".into(),
                encrypted: false,
            },
        );
        assert_eq!(again.unwrap_err().code, ErrorCode::AlreadyExists);
        run(&mut s, &mut seq, snap("s1")).unwrap();
        assert_eq!(
            run(&mut s, &mut seq, snap("s1")).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(s.snapshots.keys().collect::<Vec<_>>(), ["s1"]);
        let clone = VolumeCommand::Clone {
            name: "v1".into(),
            snapshot: "s1".into(),
            target: "c1".into(),
        };
        let mut c = VolumeState::default();
        let events = c.decide_clone(&clone, &s).unwrap();
        c.apply(99, 990, &events[0]);
        assert_eq!(c.origin.as_deref(), Some("v1@s1"));
        assert_eq!(c.size_bytes, 1 << 30);
        assert_eq!(
            c.decide_clone(&clone, &s).unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        let rollback = |snap: &str| VolumeCommand::Rollback {
            name: "v1".into(),
            snapshot: snap.into(),
        };
        assert_eq!(
            run(&mut s, &mut seq, rollback("nope")).unwrap_err().code,
            ErrorCode::NotFound
        );
        run(&mut s, &mut seq, rollback("s1")).unwrap();
        assert_eq!(s.rolled_back_to.as_deref(), Some("s1"));
        run(
            &mut s,
            &mut seq,
            VolumeCommand::DeleteSnapshot {
                name: "v1".into(),
                snapshot: "s1".into(),
            },
        )
        .unwrap();
        assert!(s.snapshots.is_empty());
        run(
            &mut s,
            &mut seq,
            VolumeCommand::Delete { name: "v1".into() },
        )
        .unwrap();
        assert!(!s.exists());
        assert_eq!(s.size_bytes, 0);
    }
}
