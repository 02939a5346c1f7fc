//! The placement planner: which disk holds each 1 GiB slice of an app's
//! volumes, given the cluster [`Topology`], what the disks already hold
//! ([`Usage`]) and what the app asks for ([`Request`]).
//!
//! # Model
//! - A volume is split into slices of [`SLICE_BYTES`] (the block engine's
//!   unit of placement); a slice is placed on one disk and reserves a whole
//!   slice there, even the last, partial one. A volume lives in one node's
//!   block pool, so all its slices are on one node; they may spread over
//!   several of that node's disks when no single disk has room.
//! - A [`ReplicaSet`] (a StatefulSet) has `replicas` replicas, each with one
//!   volume per [`Claim`], named as Kubernetes names PVCs:
//!   `<claim>-<set>-<ordinal>`, for replica `<set>-<ordinal>`.
//! - [`Constraints`] (the App document's `spec.placement`):
//!   - `antiAffinity: disk|node|rack|datacenter`: two replicas of one set
//!     never share a failure domain at that level: the disks (nodes, racks,
//!     datacenters) holding any slice of one replica hold no slice of
//!     another.
//!   - `separateDisks: [a, b]`: within one replica, the volumes of claims
//!     `a` and `b` share no disk.
//!   - `media`: every slice on a disk of that media (a claim's own `media`
//!     wins over it).
//!   - `affinity: node` (the default): all of a replica's volumes on one
//!     node (data locality); `affinity: none` lets each volume go its own
//!     way.
//! - Standalone volumes (PVCs outside a StatefulSet) only have their media.
//! - Failed nodes receive nothing. Capacity is never exceeded: a disk's used
//!   bytes plus its new slices stay within its capacity.
//!
//! # Algorithm
//! [`plan`] first runs cheap necessary checks that, when they fail, prove
//! the request impossible and say why in a person's terms (no disk of that
//! media; fewer usable racks than replicas; not enough free space of that
//! media; a replica or volume that no node could hold even alone). Then a
//! depth-first search places one *unit* at a time (a replica
//! under node affinity, else one volume), in request order. For each unit
//! it first tries, on every node, a greedy packing (largest volume first,
//! each whole on the disk it leaves least full, else spread over the
//! emptiest disks), best node first: spread replicas over nodes and racks,
//! then the lowest resulting peak disk fullness, then topology order. Only
//! when a later unit cannot be placed does it backtrack, and after the
//! greedy packings it enumerates every other split of the unit's slices over
//! each node's disks, so on small inputs the search is exhaustive: a refusal
//! means no placement exists. A step budget ([`MAX_SEARCH_STEPS`]) bounds
//! the work; running out is reported as such, never as impossibility.
//!
//! # Invariants
//! - Pure and deterministic: no IO, no clock, no randomness, no hash-map
//!   iteration order; the same inputs give the same plan.
//! - A returned plan meets every constraint above (the property test in
//!   `tests/placement.rs` checks each one independently, and checks every
//!   refusal against a brute-force search).

mod impact;
mod search;

use std::collections::BTreeMap;
use std::fmt;

use cairn_schema::names::check_label;
use cairn_schema::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

pub use crate::topology::{DiskId, Level, Media, Topology};
pub use impact::{Failure, Impact, LostVolume, SetLoss, failure_impact, replica_set_of};

/// The unit of placement: a volume's logical slice, as in the block engine
/// (defined once, in `cairn_schema::names`).
pub use cairn_schema::names::{SLICE_BYTES, slices_of};
/// Most volumes one request may place (replicas × claims + standalone).
pub const MAX_VOLUMES: usize = 4096;
/// Most claims a replica set may have.
pub const MAX_CLAIMS: usize = 64;
/// Most replicas a replica set may have (with or without claims).
pub const MAX_REPLICAS: u32 = 10_000;
/// Largest volume the planner accepts (the block engine's limit, 64 TiB).
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Work budget of one [`plan`] call: nodes examined plus packings tried.
pub const MAX_SEARCH_STEPS: u64 = 2_000_000;

/// Whether a replica's volumes stay on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// All of a replica's volumes on one node (data locality).
    #[default]
    Node,
    /// Each volume placed on its own.
    None,
}

/// A replica set's placement constraints: the App document's
/// `spec.placement`, in its spelling (`antiAffinity`, `separateDisks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constraints {
    #[serde(default)]
    pub anti_affinity: Option<Level>,
    /// Claims whose volumes, within one replica, share no disk.
    #[serde(default)]
    pub separate_disks: Vec<String>,
    /// Media for every claim that does not name its own.
    #[serde(default)]
    pub media: Option<Media>,
    #[serde(default)]
    pub affinity: Affinity,
}

/// A volume to place: a StatefulSet's `volumeClaimTemplate` or a standalone
/// PVC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub name: String,
    pub size_bytes: u64,
    /// What the volume is for (`wal`, `data`, …). Carried for people and
    /// for later I/O-aware placement; the planner does not weigh it yet.
    #[serde(default)]
    pub io_class: String,
    #[serde(default)]
    pub media: Option<Media>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub name: String,
    pub replicas: u32,
    pub claims: Vec<Claim>,
    #[serde(default)]
    pub placement: Constraints,
}

/// Everything one app needs placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub app: String,
    #[serde(default)]
    pub replica_sets: Vec<ReplicaSet>,
    /// Standalone volumes (PVCs outside any StatefulSet).
    #[serde(default)]
    pub volumes: Vec<Claim>,
}

/// A replica's name, as Kubernetes names StatefulSet pods.
pub fn replica_name(set: &str, ordinal: u32) -> String {
    format!("{set}-{ordinal}")
}

/// A replica's volume name, as Kubernetes names PVCs from templates.
pub fn volume_name(claim: &str, set: &str, ordinal: u32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// Where one slice is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePlacement {
    pub index: u32,
    pub node: String,
    pub disk: String,
    pub rack: String,
    pub datacenter: String,
}

impl SlicePlacement {
    pub fn disk_id(&self) -> DiskId {
        DiskId::new(&self.node, &self.disk)
    }
}

/// Where one volume's slices are. `replica` is `None` for a standalone
/// volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlacement {
    pub replica: Option<String>,
    pub volume: String,
    pub slices: Vec<SlicePlacement>,
}

/// An app's placement: replica → volume → slices. Serializes as the list
/// `cairn app placement A -o json` prints:
/// `[{"replica","volume","slices":[{"index","node","disk","rack","datacenter"}]}]`.
/// Volumes come in request order: replica sets, replicas by ordinal, claims,
/// then standalone volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Plan {
    pub volumes: Vec<VolumePlacement>,
}

impl Plan {
    pub fn volume(&self, name: &str) -> Option<&VolumePlacement> {
        self.volumes.iter().find(|v| v.volume == name)
    }
}

/// Bytes already used (or reserved) on each disk, so that a plan balances
/// against what is there. Disks not mentioned are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    used_bytes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Usage {
    pub fn new() -> Usage {
        Usage::default()
    }

    pub fn used_bytes(&self, node: &str, disk: &str) -> u64 {
        self.used_bytes
            .get(node)
            .and_then(|disks| disks.get(disk))
            .copied()
            .unwrap_or(0)
    }

    pub fn set_used_bytes(&mut self, node: &str, disk: &str, bytes: u64) {
        self.used_bytes
            .entry(node.to_owned())
            .or_default()
            .insert(disk.to_owned(), bytes);
    }

    /// Reserves a slice on every disk the plan names.
    pub fn add_plan(&mut self, plan: &Plan) {
        for slice in plan.volumes.iter().flat_map(|v| &v.slices) {
            let used = self
                .used_bytes
                .entry(slice.node.clone())
                .or_default()
                .entry(slice.disk.clone())
                .or_default();
            *used = used.saturating_add(SLICE_BYTES);
        }
    }

    /// Releases what [`Usage::add_plan`] reserved (an app deleted or
    /// re-planned).
    pub fn remove_plan(&mut self, plan: &Plan) {
        for slice in plan.volumes.iter().flat_map(|v| &v.slices) {
            if let Some(used) = self
                .used_bytes
                .get_mut(&slice.node)
                .and_then(|disks| disks.get_mut(&slice.disk))
            {
                *used = used.saturating_sub(SLICE_BYTES);
            }
        }
    }

    /// Every disk with a recorded use, by name.
    pub fn iter(&self) -> impl Iterator<Item = (DiskId, u64)> + '_ {
        self.used_bytes.iter().flat_map(|(node, disks)| {
            disks
                .iter()
                .map(move |(disk, used)| (DiskId::new(node, disk), *used))
        })
    }
}

/// The constraint a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "constraint", rename_all = "camelCase")]
pub enum Constraint {
    /// The request itself is malformed (bad name, unknown claim, size 0).
    Request,
    /// The topology is malformed.
    Topology,
    Media,
    AntiAffinity {
        level: Level,
    },
    SeparateDisks,
    Capacity,
    /// The search ran out of budget before finding a placement or proving
    /// there is none.
    SearchLimit,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Request => f.write_str("request"),
            Constraint::Topology => f.write_str("topology"),
            Constraint::Media => f.write_str("media"),
            Constraint::AntiAffinity { level } => write!(f, "antiAffinity: {level}"),
            Constraint::SeparateDisks => f.write_str("separateDisks"),
            Constraint::Capacity => f.write_str("capacity"),
            Constraint::SearchLimit => f.write_str("search limit"),
        }
    }
}

/// Why a request cannot be placed: the replica (and volume) concerned, the
/// constraint, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    #[serde(flatten)]
    pub constraint: Constraint,
    pub replica: Option<String>,
    pub volume: Option<String>,
    pub message: String,
}

impl Error {
    fn request(message: impl Into<String>) -> Error {
        Error {
            constraint: Constraint::Request,
            replica: None,
            volume: None,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let code = match error.constraint {
            Constraint::Request | Constraint::Topology => ErrorCode::InvalidArgument,
            Constraint::Capacity => ErrorCode::NoSpace,
            _ => ErrorCode::FailedPrecondition,
        };
        let details = serde_json::to_value(&error).unwrap_or_default();
        ApiError::new(code, error.message).with_details(details)
    }
}

/// Places every slice of `request` on `topology`, on top of `usage`.
pub fn plan(topology: &Topology, usage: &Usage, request: &Request) -> Result<Plan, Error> {
    topology.validate().map_err(|e| Error {
        constraint: Constraint::Topology,
        replica: None,
        volume: None,
        message: e.to_string(),
    })?;
    check_request(request)?;
    search::Search::new(topology, usage, request).run()
}

fn check_request(request: &Request) -> Result<(), Error> {
    let label =
        |what: &str, name: &str| check_label(what, name).map_err(|e| Error::request(e.message));
    let mut volume_names = BTreeMap::new();
    let mut n_volumes: usize = 0;
    let check_claim = |claim: &Claim, owner: &str| -> Result<(), Error> {
        if claim.size_bytes == 0 || claim.size_bytes > MAX_VOLUME_BYTES {
            return Err(Error::request(format!(
                "claim {} of {owner} has size {} bytes; a volume needs 1 byte to 64Ti",
                claim.name, claim.size_bytes
            )));
        }
        Ok(())
    };
    let mut set_names = BTreeMap::new();
    for set in &request.replica_sets {
        label("replica set", &set.name)?;
        if set_names.insert(set.name.as_str(), ()).is_some() {
            return Err(Error::request(format!(
                "replica set {} appears twice in app {}",
                set.name, request.app
            )));
        }
        if set.replicas > MAX_REPLICAS {
            return Err(Error::request(format!(
                "replica set {} has {} replicas; at most {MAX_REPLICAS} are supported",
                set.name, set.replicas
            )));
        }
        if set.claims.len() > MAX_CLAIMS {
            return Err(Error::request(format!(
                "replica set {} has {} claims; at most {MAX_CLAIMS} are supported",
                set.name,
                set.claims.len()
            )));
        }
        let mut claim_names = BTreeMap::new();
        for claim in &set.claims {
            label("claim", &claim.name)?;
            if claim_names.insert(claim.name.as_str(), ()).is_some() {
                return Err(Error::request(format!(
                    "replica set {} has two claims named {}",
                    set.name, claim.name
                )));
            }
            check_claim(claim, &format!("replica set {}", set.name))?;
        }
        for name in &set.placement.separate_disks {
            if !claim_names.contains_key(name.as_str()) {
                let known: Vec<&str> = set.claims.iter().map(|c| c.name.as_str()).collect();
                return Err(Error::request(format!(
                    "separateDisks of replica set {} names claim {name}, which it does not have (its claims: {})",
                    set.name,
                    known.join(", ")
                )));
            }
        }
        n_volumes =
            n_volumes.saturating_add((set.replicas as usize).saturating_mul(set.claims.len()));
        if n_volumes <= MAX_VOLUMES {
            for ordinal in 0..set.replicas {
                for claim in &set.claims {
                    volume_names.insert(volume_name(&claim.name, &set.name, ordinal), ());
                }
            }
        }
    }
    for claim in &request.volumes {
        label("volume", &claim.name)?;
        check_claim(claim, &format!("app {}", request.app))?;
        if volume_names.insert(claim.name.clone(), ()).is_some() {
            return Err(Error::request(format!(
                "volume {} of app {} appears twice (or clashes with a replica's volume)",
                claim.name, request.app
            )));
        }
        n_volumes += 1;
    }
    if n_volumes > MAX_VOLUMES {
        return Err(Error::request(format!(
            "app {} asks for {n_volumes} volumes; at most {MAX_VOLUMES} are placed at once",
            request.app
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, gib: u64) -> Claim {
        Claim {
            name: name.into(),
            size_bytes: gib << 30,
            io_class: "data".into(),
            media: None,
        }
    }

    #[test]
    fn constraints_read_the_app_documents_spelling() {
        let yaml = "antiAffinity: rack\nseparateDisks: [commitlog, data]\nmedia: ssd\n";
        let constraints: Constraints = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(
            constraints,
            Constraints {
                anti_affinity: Some(Level::Rack),
                separate_disks: vec!["commitlog".into(), "data".into()],
                media: Some(Media::Ssd),
                affinity: Affinity::Node,
            }
        );
        let none: Constraints = serde_yaml_ng::from_str("affinity: none").unwrap();
        assert_eq!(none.affinity, Affinity::None);
        assert!(serde_yaml_ng::from_str::<Constraints>("antiAfinity: rack").is_err());
    }

    #[test]
    fn malformed_requests_are_refused_as_such() {
        let topology = Topology::simulated(3);
        let base = Request {
            app: "shop".into(),
            replica_sets: vec![ReplicaSet {
                name: "db".into(),
                replicas: 2,
                claims: vec![claim("data", 1)],
                placement: Constraints::default(),
            }],
            volumes: vec![],
        };
        let mut cases = Vec::new();
        let mut r = base.clone();
        r.replica_sets[0].claims[0].size_bytes = 0;
        cases.push((r, "size 0"));
        let mut r = base.clone();
        r.replica_sets[0].placement.separate_disks = vec!["data".into(), "wal".into()];
        cases.push((r, "names claim wal"));
        let mut r = base.clone();
        r.replica_sets.push(r.replica_sets[0].clone());
        cases.push((r, "appears twice"));
        let mut r = base.clone();
        r.volumes.push(claim("data-db-1", 1));
        cases.push((r, "clashes"));
        let mut r = base.clone();
        r.replica_sets[0].replicas = 5000;
        cases.push((r, "at most"));
        let mut r = base.clone();
        r.replica_sets[0].replicas = u32::MAX;
        r.replica_sets[0].claims.clear();
        cases.push((r, "at most 10000 are supported"));
        let mut r = base.clone();
        r.replica_sets[0].claims.push(claim("data", 1));
        cases.push((r, "two claims named data"));
        for (request, want) in cases {
            let error = plan(&topology, &Usage::new(), &request).unwrap_err();
            assert_eq!(error.constraint, Constraint::Request, "{error}");
            assert!(error.message.contains(want), "{error} lacks {want:?}");
        }
    }

    #[test]
    fn usage_adds_and_removes_plans() {
        let topology = Topology::simulated(3);
        let request = Request {
            app: "a".into(),
            replica_sets: vec![],
            volumes: vec![claim("v", 3)],
        };
        let mut usage = Usage::new();
        let plan = plan(&topology, &usage, &request).unwrap();
        usage.add_plan(&plan);
        let total: u64 = usage.iter().map(|(_, used)| used).sum();
        assert_eq!(total, 3 * SLICE_BYTES);
        usage.remove_plan(&plan);
        assert!(usage.iter().all(|(_, used)| used == 0));
    }

    #[test]
    fn replicas_without_volumes_need_no_room() {
        let request = Request {
            app: "stateless".into(),
            replica_sets: vec![ReplicaSet {
                name: "web".into(),
                replicas: 5,
                claims: vec![],
                placement: Constraints {
                    anti_affinity: Some(Level::Rack),
                    ..Constraints::default()
                },
            }],
            volumes: vec![],
        };
        let plan = plan(&Topology::simulated(1), &Usage::new(), &request).unwrap();
        assert!(plan.volumes.is_empty());
    }

    /// One node of 8 disks of 100 GiB; claims of 350 GiB and 450 GiB kept
    /// apart need 4 + 5 disks. Total space suffices, so only the per-node
    /// disk count proves it impossible, without enumerating the splits.
    #[test]
    fn separate_volumes_needing_more_disks_than_a_node_has_are_refused_at_once() {
        let topology = Topology {
            nodes: vec![crate::topology::Node {
                name: "n1".into(),
                rack: "r1".into(),
                datacenter: "dc1".into(),
                failed: false,
                disks: (0..8)
                    .map(|i| crate::topology::Disk {
                        name: format!("d{i}"),
                        media: Media::Hdd,
                        capacity_bytes: 100 << 30,
                    })
                    .collect(),
            }],
        };
        let request = Request {
            app: "big".into(),
            replica_sets: vec![ReplicaSet {
                name: "db".into(),
                replicas: 1,
                claims: vec![claim("a", 350), claim("b", 450)],
                placement: Constraints {
                    separate_disks: vec!["a".into(), "b".into()],
                    ..Constraints::default()
                },
            }],
            volumes: vec![],
        };
        let error = search::Search::new(&topology, &Usage::new(), &request)
            .with_step_limit(10_000)
            .run()
            .unwrap_err();
        assert_eq!(error.constraint, Constraint::SeparateDisks, "{error}");
        assert!(
            error.message.contains("n1 (8 usable)") && error.message.contains("needs 9"),
            "{error}"
        );

        let mut fits = request.clone();
        fits.replica_sets[0].claims[1].size_bytes = 400 << 30;
        let plan = plan(&topology, &Usage::new(), &fits).unwrap();
        assert_eq!(plan.volumes[1].slices.len(), 400);
    }

    /// The last volume fits nowhere whatever the replicas before it do:
    /// refused at once with its own reason, not after trying every
    /// placement of 60 replicas.
    #[test]
    fn a_volume_that_fits_nowhere_is_refused_without_backtracking() {
        let request = Request {
            app: "shop".into(),
            replica_sets: vec![ReplicaSet {
                name: "db".into(),
                replicas: 60,
                claims: vec![claim("data", 1)],
                placement: Constraints::default(),
            }],
            volumes: vec![claim("huge", 400)],
        };
        let error = search::Search::new(&Topology::simulated(60), &Usage::new(), &request)
            .with_step_limit(100_000)
            .run()
            .unwrap_err();
        assert_eq!(error.constraint, Constraint::Capacity, "{error}");
        assert_eq!(error.volume.as_deref(), Some("huge"));
        assert!(
            error
                .message
                .starts_with("volume huge cannot be placed: nodes node-1 (300 GiB free)"),
            "{error}"
        );
    }

    #[test]
    fn running_out_of_steps_is_not_reported_as_impossible() {
        let request = Request {
            app: "a".into(),
            replica_sets: vec![],
            volumes: vec![claim("v", 1)],
        };
        let topology = Topology::simulated(3);
        let error = search::Search::new(&topology, &Usage::new(), &request)
            .with_step_limit(1)
            .run()
            .unwrap_err();
        assert_eq!(error.constraint, Constraint::SearchLimit);
        assert!(error.message.contains("none proven impossible"), "{error}");
    }

    #[test]
    fn errors_map_to_api_codes() {
        let error = Error {
            constraint: Constraint::AntiAffinity { level: Level::Rack },
            replica: Some("db-3".into()),
            volume: None,
            message: "m".into(),
        };
        let api: ApiError = error.into();
        assert_eq!(api.code, ErrorCode::FailedPrecondition);
        assert_eq!(api.details["constraint"], "antiAffinity");
        assert_eq!(api.details["level"], "rack");
        assert_eq!(api.details["replica"], "db-3");
    }
}
