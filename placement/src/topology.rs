//! The cluster as the placement planner sees it: nodes in racks in
//! datacenters, each with disks of a media class and a capacity.
//!
//! A topology comes from a `kind: Topology` YAML document (`cairn up
//! --topology cluster.yaml`, see [`Topology::from_yaml`]) or is simulated for
//! `cairn up --nodes N` ([`Topology::simulated`]). It is plain data: the
//! planner reads it, `cairn node fail` flips a node's `failed` flag.
//!
//! # Failure domains
//! A disk belongs to one node, a node to one rack, a rack to one datacenter.
//! A rack is identified by its datacenter *and* its name, so `r1` in `dc1`
//! and `r1` in `dc2` are two racks.
//!
//! # Invariants (checked by [`Topology::validate`])
//! - At least one node; node names are unique DNS labels; each node has at
//!   least one disk; disk names are unique labels within their node.
//! - Every disk holds at least one slice ([`crate::placement::SLICE_BYTES`]).

use std::collections::BTreeSet;
use std::fmt;

use cairn_schema::names::{check_label, parse_quantity};
use cairn_schema::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::placement::SLICE_BYTES;

/// Capacity of each disk of a simulated node.
pub const SIMULATED_DISK_BYTES: u64 = 100 << 30;
/// Racks a simulated cluster spreads its nodes over.
pub const SIMULATED_RACKS: usize = 3;
/// Most nodes a topology may have.
pub const MAX_NODES: usize = 10_000;
/// Most disks a node may have.
pub const MAX_DISKS_PER_NODE: usize = 256;

/// A topology that cannot be used, or a YAML document that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("topology document is not valid YAML for kind: Topology: {message}")]
    Yaml { message: String },
    #[error("topology: {message}")]
    Invalid { message: String },
    #[error("topology has no node named {node:?}")]
    NoSuchNode { node: String },
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let code = match error {
            Error::NoSuchNode { .. } => ErrorCode::NotFound,
            _ => ErrorCode::InvalidArgument,
        };
        ApiError::new(code, error.to_string())
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid {
        message: message.into(),
    }
}

/// A disk's media class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    Ssd,
    Hdd,
    Nvme,
}

impl Media {
    pub const ALL: [Media; 3] = [Media::Ssd, Media::Hdd, Media::Nvme];

    pub fn as_str(self) -> &'static str {
        match self {
            Media::Ssd => "ssd",
            Media::Hdd => "hdd",
            Media::Nvme => "nvme",
        }
    }
}

impl fmt::Display for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure-domain level, from the smallest to the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Disk,
    Node,
    Rack,
    Datacenter,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Disk => "disk",
            Level::Node => "node",
            Level::Rack => "rack",
            Level::Datacenter => "datacenter",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub media: Media,
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub rack: String,
    pub datacenter: String,
    /// Set by `cairn node fail`: nothing new is placed here, and what is
    /// placed here counts as lost.
    #[serde(default)]
    pub failed: bool,
    pub disks: Vec<Disk>,
}

/// A disk by name: the node's name and the disk's name within it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DiskId {
    pub node: String,
    pub disk: String,
}

impl DiskId {
    pub fn new(node: impl Into<String>, disk: impl Into<String>) -> DiskId {
        DiskId {
            node: node.into(),
            disk: disk.into(),
        }
    }
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.disk)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: Vec<Node>,
}

/// The YAML document, before validation. Capacities are quantities.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    kind: String,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    metadata: Option<serde_yaml_ng::Value>,
    nodes: Vec<NodeDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeDocument {
    name: String,
    #[serde(default)]
    rack: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default)]
    failed: bool,
    disks: Vec<DiskDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskDocument {
    name: String,
    media: Media,
    capacity: Quantity,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    Bytes(u64),
    Text(String),
}

/// The rack or datacenter of a node whose document leaves it out. Missing
/// labels are taken as one shared domain, the cautious reading: the planner
/// will not claim two nodes are independent when nobody said so.
pub const DEFAULT_DOMAIN: &str = "default";

impl Topology {
    /// Parses and validates a `kind: Topology` document:
    ///
    /// ```yaml
    /// kind: Topology
    /// nodes:
    ///   - {name: n1, rack: r1, datacenter: dc1, disks: [{name: d1, media: ssd, capacity: 40Gi}]}
    /// ```
    ///
    /// `apiVersion` (if given) must be `cairn.dev/v1`. `rack` and
    /// `datacenter` default to [`DEFAULT_DOMAIN`]. Capacities are Kubernetes
    /// quantities (`40Gi`, `1Ti`, `500G`) or plain byte counts.
    pub fn from_yaml(text: &str) -> Result<Topology, Error> {
        let document: Document = serde_yaml_ng::from_str(text).map_err(|e| Error::Yaml {
            message: e.to_string(),
        })?;
        let _ = document.metadata;
        if document.kind != "Topology" {
            return Err(invalid(format!(
                "kind is {:?}; a topology document has kind: Topology",
                document.kind
            )));
        }
        if let Some(version) = document.api_version
            && version != "cairn.dev/v1"
        {
            return Err(invalid(format!(
                "apiVersion is {version:?}; expected cairn.dev/v1"
            )));
        }
        let mut nodes = Vec::with_capacity(document.nodes.len());
        for node in document.nodes {
            let mut disks = Vec::with_capacity(node.disks.len());
            for disk in node.disks {
                let capacity_bytes = match disk.capacity {
                    Quantity::Bytes(bytes) => bytes,
                    Quantity::Text(text) => parse_quantity(&text).map_err(|e| {
                        invalid(format!(
                            "disk {} of node {}: capacity: {}",
                            disk.name, node.name, e.message
                        ))
                    })?,
                };
                disks.push(Disk {
                    name: disk.name,
                    media: disk.media,
                    capacity_bytes,
                });
            }
            nodes.push(Node {
                name: node.name,
                rack: node.rack.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned()),
                datacenter: node.datacenter.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned()),
                failed: node.failed,
                disks,
            });
        }
        let topology = Topology { nodes };
        topology.validate()?;
        Ok(topology)
    }

    /// The cluster `cairn up --nodes N` simulates: nodes `node-1` … `node-N`
    /// spread round-robin over [`SIMULATED_RACKS`] racks (`rack-1` …) in one
    /// datacenter (`dc-1`), so rack anti-affinity works for up to three
    /// replicas on any N ≥ 3 and a fourth is refused, as on a real
    /// three-rack (or three-zone) cluster. Each node has two ssd disks and
    /// one hdd disk (`ssd-1`, `ssd-2`, `hdd-1`) of [`SIMULATED_DISK_BYTES`]
    /// each, so a replica can keep its WAL and its data on separate ssds.
    ///
    /// `n` is clamped to 1..=[`MAX_NODES`].
    pub fn simulated(n: usize) -> Topology {
        let n = n.clamp(1, MAX_NODES);
        let disk = |name: &str, media| Disk {
            name: name.to_owned(),
            media,
            capacity_bytes: SIMULATED_DISK_BYTES,
        };
        Topology {
            nodes: (1..=n)
                .map(|i| Node {
                    name: format!("node-{i}"),
                    rack: format!("rack-{}", (i - 1) % SIMULATED_RACKS + 1),
                    datacenter: "dc-1".to_owned(),
                    failed: false,
                    disks: vec![
                        disk("ssd-1", Media::Ssd),
                        disk("ssd-2", Media::Ssd),
                        disk("hdd-1", Media::Hdd),
                    ],
                })
                .collect(),
        }
    }

    /// Checks the invariants in the module doc.
    pub fn validate(&self) -> Result<(), Error> {
        if self.nodes.is_empty() {
            return Err(invalid("it has no nodes"));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(invalid(format!(
                "it has {} nodes; at most {MAX_NODES} are supported",
                self.nodes.len()
            )));
        }
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            check_label("node", &node.name).map_err(|e| invalid(e.message))?;
            if !names.insert(node.name.as_str()) {
                return Err(invalid(format!("node {} appears twice", node.name)));
            }
            for (what, value) in [("rack", &node.rack), ("datacenter", &node.datacenter)] {
                if value.trim().is_empty() || value.len() > 253 {
                    return Err(invalid(format!(
                        "node {} has an empty or overlong {what} name",
                        node.name
                    )));
                }
            }
            if node.disks.is_empty() {
                return Err(invalid(format!("node {} has no disks", node.name)));
            }
            if node.disks.len() > MAX_DISKS_PER_NODE {
                return Err(invalid(format!(
                    "node {} has {} disks; at most {MAX_DISKS_PER_NODE} are supported",
                    node.name,
                    node.disks.len()
                )));
            }
            let mut disk_names = BTreeSet::new();
            for disk in &node.disks {
                check_label("disk", &disk.name).map_err(|e| invalid(e.message))?;
                if !disk_names.insert(disk.name.as_str()) {
                    return Err(invalid(format!(
                        "node {} has two disks named {}",
                        node.name, disk.name
                    )));
                }
                if disk.capacity_bytes < SLICE_BYTES {
                    return Err(invalid(format!(
                        "disk {} of node {} has {} bytes; a disk must hold at least one 1Gi slice",
                        disk.name, node.name, disk.capacity_bytes
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Marks a node failed (`cairn node fail`) or live again.
    pub fn set_failed(&mut self, node: &str, failed: bool) -> Result<(), Error> {
        let entry = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| Error::NoSuchNode {
                node: node.to_owned(),
            })?;
        entry.failed = failed;
        Ok(())
    }

    /// Every disk, in topology order.
    pub fn disk_ids(&self) -> impl Iterator<Item = DiskId> + '_ {
        self.nodes.iter().flat_map(|node| {
            node.disks
                .iter()
                .map(move |disk| DiskId::new(&node.name, &disk.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
kind: Topology
apiVersion: cairn.dev/v1
nodes:
  - {name: n1, rack: r1, datacenter: dc1, disks: [{name: d1, media: ssd, capacity: 40Gi}, {name: d2, media: hdd, capacity: 1Ti}]}
  - name: n2
    rack: r2
    datacenter: dc1
    failed: true
    disks:
      - {name: d1, media: nvme, capacity: 2147483648}
  - {name: n3, disks: [{name: d1, media: ssd, capacity: 500G}]}
"#;

    #[test]
    fn parses_a_topology_document() {
        let topology = Topology::from_yaml(CLUSTER).unwrap();
        assert_eq!(topology.nodes.len(), 3);
        let n1 = topology.node("n1").unwrap();
        assert_eq!((n1.rack.as_str(), n1.datacenter.as_str()), ("r1", "dc1"));
        assert_eq!(n1.disks[0].capacity_bytes, 40 << 30);
        assert_eq!(n1.disks[1].media, Media::Hdd);
        assert_eq!(n1.disks[1].capacity_bytes, 1 << 40);
        let n2 = topology.node("n2").unwrap();
        assert!(n2.failed);
        assert_eq!(n2.disks[0].capacity_bytes, 2 << 30);
        let n3 = topology.node("n3").unwrap();
        assert_eq!(n3.rack, DEFAULT_DOMAIN);
        assert_eq!(n3.disks[0].capacity_bytes, 500_000_000_000);
        assert_eq!(
            topology
                .disk_ids()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["n1/d1", "n1/d2", "n2/d1", "n3/d1"]
        );
    }

    #[test]
    fn refuses_bad_documents_with_the_reason() {
        let cases = [
            ("kind: App\nnodes: []", "kind is \"App\""),
            ("kind: Topology\nnodes: []", "no nodes"),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d1, media: tape, capacity: 1Gi}]}]",
                "tape",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d1, media: ssd, capcity: 1Gi}]}]",
                "capcity",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d1, media: ssd, capacity: 1Gb}]}]",
                "capacity",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d1, media: ssd, capacity: 100Mi}]}]",
                "at least one 1Gi slice",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: []}]",
                "node n1 has no disks",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d, media: ssd, capacity: 1Gi}]}, {name: n1, disks: [{name: d, media: ssd, capacity: 1Gi}]}]",
                "node n1 appears twice",
            ),
            (
                "kind: Topology\nnodes: [{name: n1, disks: [{name: d, media: ssd, capacity: 1Gi}, {name: d, media: hdd, capacity: 1Gi}]}]",
                "two disks named d",
            ),
            (
                "kind: Topology\nnodes: [{name: N_1, disks: [{name: d, media: ssd, capacity: 1Gi}]}]",
                "not a valid name",
            ),
            (
                "kind: Topology\napiVersion: v2\nnodes: [{name: n1, disks: [{name: d, media: ssd, capacity: 1Gi}]}]",
                "apiVersion",
            ),
        ];
        for (text, want) in cases {
            let error = Topology::from_yaml(text).expect_err(text).to_string();
            assert!(error.contains(want), "{text:?}: {error:?} lacks {want:?}");
        }
    }

    #[test]
    fn simulated_nodes_spread_over_three_racks() {
        let topology = Topology::simulated(4);
        topology.validate().unwrap();
        let racks: Vec<&str> = topology.nodes.iter().map(|n| n.rack.as_str()).collect();
        assert_eq!(racks, ["rack-1", "rack-2", "rack-3", "rack-1"]);
        assert!(topology.nodes.iter().all(|n| {
            n.disks.iter().filter(|d| d.media == Media::Ssd).count() == 2
                && n.disks
                    .iter()
                    .all(|d| d.capacity_bytes == SIMULATED_DISK_BYTES)
        }));
        assert_eq!(Topology::simulated(0).nodes.len(), 1);
    }

    #[test]
    fn failing_a_node_flips_its_flag() {
        let mut topology = Topology::simulated(2);
        topology.set_failed("node-2", true).unwrap();
        assert!(topology.node("node-2").unwrap().failed);
        assert!(!topology.node("node-1").unwrap().failed);
        assert_eq!(
            topology.set_failed("node-9", true),
            Err(Error::NoSuchNode {
                node: "node-9".into()
            })
        );
    }
}
