//! What a node or disk failure costs (`cairn node fail N`): which volumes
//! lose slices, which replicas lose data, and whether any replica set lost
//! more than one member — the case anti-affinity exists to prevent.
//!
//! A replica is a member that lost data when any slice of any of its volumes
//! sat on the failed node or disk; its replica set is the replica name
//! without the trailing `-<ordinal>`, as Kubernetes names StatefulSet pods.
//! Pure: it reads plans and returns a report.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Plan;

/// What failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Failure {
    Node { node: String },
    Disk { node: String, disk: String },
}

impl Failure {
    fn hits(&self, node: &str, disk: &str) -> bool {
        match self {
            Failure::Node { node: failed } => failed == node,
            Failure::Disk {
                node: failed_node,
                disk: failed_disk,
            } => failed_node == node && failed_disk == disk,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Node { node } => write!(f, "node {node}"),
            Failure::Disk { node, disk } => write!(f, "disk {node}/{disk}"),
        }
    }
}

/// A volume that lost slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostVolume {
    pub app: String,
    pub replica: Option<String>,
    pub volume: String,
    /// Indices of the lost slices, ascending.
    pub slices: Vec<u32>,
}

/// A replica set with members that lost data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLoss {
    pub app: String,
    pub replica_set: String,
    /// The replicas that lost data, in name order.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    pub failure: Failure,
    pub volumes: Vec<LostVolume>,
    pub replica_sets: Vec<SetLoss>,
}

impl Impact {
    /// The replica sets that lost more than one member.
    pub fn sets_losing_more_than_one(&self) -> impl Iterator<Item = &SetLoss> {
        self.replica_sets.iter().filter(|s| s.members.len() > 1)
    }

    pub fn lost_more_than_one_member(&self) -> bool {
        self.sets_losing_more_than_one().next().is_some()
    }
}

impl fmt::Display for Impact {
    /// The report `cairn node fail` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.volumes.is_empty() {
            return write!(f, "{} failed: no volume had slices there", self.failure);
        }
        writeln!(f, "{} failed:", self.failure)?;
        for lost in &self.volumes {
            let owner = lost
                .replica
                .as_deref()
                .map(|r| format!(" (replica {r})"))
                .unwrap_or_default();
            writeln!(
                f,
                "  app {}: volume {}{owner} lost {} slice(s)",
                lost.app,
                lost.volume,
                lost.slices.len()
            )?;
        }
        match self.sets_losing_more_than_one().collect::<Vec<_>>() {
            worst if worst.is_empty() => {
                write!(f, "no replica set lost more than one member")
            }
            worst => {
                let list: Vec<String> = worst
                    .iter()
                    .map(|s| format!("{}/{} ({})", s.app, s.replica_set, s.members.join(", ")))
                    .collect();
                write!(
                    f,
                    "replica sets that lost more than one member: {}",
                    list.join("; ")
                )
            }
        }
    }
}

/// The replica set of a replica named `<set>-<ordinal>`.
pub fn replica_set_of(replica: &str) -> &str {
    match replica.rsplit_once('-') {
        Some((set, ordinal))
            if !set.is_empty()
                && !ordinal.is_empty()
                && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
        {
            set
        }
        _ => replica,
    }
}

/// What `failure` costs the apps whose plans are given as `(app, plan)`.
pub fn failure_impact<'p>(
    plans: impl IntoIterator<Item = (&'p str, &'p Plan)>,
    failure: &Failure,
) -> Impact {
    let mut volumes = Vec::new();
    let mut sets: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (app, plan) in plans {
        for volume in &plan.volumes {
            let slices: Vec<u32> = volume
                .slices
                .iter()
                .filter(|s| failure.hits(&s.node, &s.disk))
                .map(|s| s.index)
                .collect();
            if slices.is_empty() {
                continue;
            }
            if let Some(replica) = &volume.replica {
                let members = sets
                    .entry((app.to_owned(), replica_set_of(replica).to_owned()))
                    .or_default();
                if !members.contains(replica) {
                    members.push(replica.clone());
                }
            }
            let mut slices = slices;
            slices.sort_unstable();
            volumes.push(LostVolume {
                app: app.to_owned(),
                replica: volume.replica.clone(),
                volume: volume.volume.clone(),
                slices,
            });
        }
    }
    let replica_sets = sets
        .into_iter()
        .map(|((app, replica_set), mut members)| {
            members.sort();
            SetLoss {
                app,
                replica_set,
                members,
            }
        })
        .collect();
    Impact {
        failure: failure.clone(),
        volumes,
        replica_sets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{SlicePlacement, VolumePlacement};

    fn slice(index: u32, node: &str, disk: &str) -> SlicePlacement {
        SlicePlacement {
            index,
            node: node.into(),
            disk: disk.into(),
            rack: "r".into(),
            datacenter: "dc".into(),
        }
    }

    fn volume(replica: Option<&str>, name: &str, slices: Vec<SlicePlacement>) -> VolumePlacement {
        VolumePlacement {
            replica: replica.map(str::to_owned),
            volume: name.into(),
            slices,
        }
    }

    #[test]
    fn replica_sets_come_from_pod_names() {
        assert_eq!(replica_set_of("cassandra-3"), "cassandra");
        assert_eq!(replica_set_of("db-1-0"), "db-1");
        assert_eq!(replica_set_of("web"), "web");
        assert_eq!(replica_set_of("web-x"), "web-x");
        assert_eq!(replica_set_of("-1"), "-1");
    }

    #[test]
    fn a_node_failure_reports_losses_and_multi_member_sets() {
        let shop = Plan {
            volumes: vec![
                volume(
                    Some("db-0"),
                    "data-db-0",
                    vec![slice(0, "n1", "d1"), slice(1, "n2", "d1")],
                ),
                volume(Some("db-1"), "data-db-1", vec![slice(0, "n1", "d2")]),
                volume(Some("db-2"), "data-db-2", vec![slice(0, "n3", "d1")]),
                volume(
                    None,
                    "uploads",
                    vec![slice(0, "n1", "d1"), slice(1, "n1", "d1")],
                ),
            ],
        };
        let blog = Plan {
            volumes: vec![volume(
                Some("wp-0"),
                "data-wp-0",
                vec![slice(0, "n2", "d1")],
            )],
        };
        let plans = [("shop", &shop), ("blog", &blog)];
        let node = failure_impact(plans, &Failure::Node { node: "n1".into() });
        let lost: Vec<(&str, &[u32])> = node
            .volumes
            .iter()
            .map(|v| (v.volume.as_str(), v.slices.as_slice()))
            .collect();
        assert_eq!(
            lost,
            [
                ("data-db-0", &[0][..]),
                ("data-db-1", &[0]),
                ("uploads", &[0, 1])
            ]
        );
        assert!(node.lost_more_than_one_member());
        assert_eq!(node.replica_sets[0].members, ["db-0", "db-1"]);
        assert!(node.to_string().contains("shop/db (db-0, db-1)"), "{node}");

        let disk = failure_impact(
            plans,
            &Failure::Disk {
                node: "n2".into(),
                disk: "d1".into(),
            },
        );
        assert_eq!(disk.volumes.len(), 2);
        assert!(!disk.lost_more_than_one_member());
        assert_eq!(disk.replica_sets.len(), 2, "db in shop, wp in blog");

        let none = failure_impact(plans, &Failure::Node { node: "n9".into() });
        assert!(none.volumes.is_empty() && !none.lost_more_than_one_member());
    }
}
