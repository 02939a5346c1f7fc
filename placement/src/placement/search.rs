//! The planner's search: an index of the topology by number, the search
//! state (bytes used per disk, where each volume's slices went, which replica
//! owns each failure domain), the necessary checks that refuse early with a
//! clear reason, and the depth-first search over units.
//!
//! # State
//! `used[disk]` counts bytes, `placed[vol]` lists `(disk, slices)` in the
//! order they were put, and `owner[set][domain]` is the ordinal of the
//! replica holding that domain and how many `(vol, disk)` entries hold it.
//! [`Search::put`] and [`Search::take`] are exact inverses, so backtracking
//! restores the state bit for bit.
//!
//! # Completeness
//! For each unit the search tries every node's greedy packing, then every
//! other way to split each volume's slices over the node's eligible disks
//! ([`Compositions`](solver::Compositions)). Together these are all
//! placements of the unit that are valid given the units before it, so an
//! exhausted search proves there is no plan.
//!
//! # Map
//! This file holds the index and the state; the rest is by job:
//! - `checks`: the early, necessary checks.
//! - `solver`: the depth-first search and the packings it tries.
//! - `explanations`: why a unit fits nowhere, as a message.

use std::collections::BTreeMap;
use std::ops::Range;

use super::MAX_SEARCH_STEPS;
use super::{
    Affinity, Constraint, Error, Plan, Request, SLICE_BYTES, SlicePlacement, Usage,
    VolumePlacement, replica_name, slices_of, volume_name,
};
use crate::topology::{Level, Media, Topology};

mod checks;
mod explanations;
mod solver;

/// The topology by number.
struct Cluster<'t> {
    topology: &'t Topology,
    disk_node: Vec<usize>,
    disk_media: Vec<Media>,
    disk_capacity: Vec<u64>,
    node_disks: Vec<Range<usize>>,
    node_live: Vec<bool>,
    node_rack: Vec<usize>,
    node_dc: Vec<usize>,
    rack_names: Vec<String>,
    dc_names: Vec<String>,
}

impl<'t> Cluster<'t> {
    fn new(topology: &'t Topology) -> Cluster<'t> {
        let mut cluster = Cluster {
            topology,
            disk_node: Vec::new(),
            disk_media: Vec::new(),
            disk_capacity: Vec::new(),
            node_disks: Vec::new(),
            node_live: Vec::new(),
            node_rack: Vec::new(),
            node_dc: Vec::new(),
            rack_names: Vec::new(),
            dc_names: Vec::new(),
        };
        let mut racks: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut dcs: BTreeMap<&str, usize> = BTreeMap::new();
        let mut rack_dcs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for node in &topology.nodes {
            let n_racks = racks.len();
            let rack = *racks
                .entry((node.datacenter.as_str(), node.rack.as_str()))
                .or_insert(n_racks);
            if rack == n_racks {
                rack_dcs
                    .entry(node.rack.as_str())
                    .or_default()
                    .push(node.datacenter.as_str());
            }
            let n_dcs = dcs.len();
            let dc = *dcs.entry(node.datacenter.as_str()).or_insert(n_dcs);
            if dc == n_dcs {
                cluster.dc_names.push(node.datacenter.clone());
            }
            let node_idx = cluster.node_disks.len();
            let first = cluster.disk_node.len();
            for disk in &node.disks {
                cluster.disk_node.push(node_idx);
                cluster.disk_media.push(disk.media);
                cluster.disk_capacity.push(disk.capacity_bytes);
            }
            cluster.node_disks.push(first..cluster.disk_node.len());
            cluster.node_live.push(!node.failed);
            cluster.node_rack.push(rack);
            cluster.node_dc.push(dc);
        }
        cluster.rack_names = vec![String::new(); racks.len()];
        for ((dc, rack), idx) in racks {
            // A rack name used in several datacenters is shown with its
            // datacenter, so a message never lists "r1, r1".
            cluster.rack_names[idx] = if rack_dcs[rack].len() > 1 {
                format!("{rack} in {dc}")
            } else {
                rack.to_owned()
            };
        }
        cluster
    }

    fn n_nodes(&self) -> usize {
        self.node_disks.len()
    }

    fn domain_count(&self, level: Level) -> usize {
        match level {
            Level::Disk => self.disk_node.len(),
            Level::Node => self.n_nodes(),
            Level::Rack => self.rack_names.len(),
            Level::Datacenter => self.dc_names.len(),
        }
    }

    fn domain_of_disk(&self, level: Level, disk: usize) -> usize {
        match level {
            Level::Disk => disk,
            _ => self.domain_of_node(level, self.disk_node[disk]),
        }
    }

    /// The node's domain; for `Level::Disk` there is none (`usize::MAX`).
    fn domain_of_node(&self, level: Level, node: usize) -> usize {
        match level {
            Level::Disk => usize::MAX,
            Level::Node => node,
            Level::Rack => self.node_rack[node],
            Level::Datacenter => self.node_dc[node],
        }
    }

    fn domain_name(&self, level: Level, domain: usize) -> String {
        match level {
            Level::Disk => self.disk_name(domain),
            Level::Node => self.node_name(domain).to_owned(),
            Level::Rack => self.rack_names[domain].clone(),
            Level::Datacenter => self.dc_names[domain].clone(),
        }
    }

    fn node_name(&self, node: usize) -> &str {
        &self.topology.nodes[node].name
    }

    fn disk_name(&self, disk: usize) -> String {
        let node = self.disk_node[disk];
        let local = disk - self.node_disks[node].start;
        format!(
            "{}/{}",
            self.node_name(node),
            self.topology.nodes[node].disks[local].name
        )
    }

    fn slice(&self, disk: usize, index: u32) -> SlicePlacement {
        let node = &self.topology.nodes[self.disk_node[disk]];
        let local = disk - self.node_disks[self.disk_node[disk]].start;
        SlicePlacement {
            index,
            node: node.name.clone(),
            disk: node.disks[local].name.clone(),
            rack: node.rack.clone(),
            datacenter: node.datacenter.clone(),
        }
    }
}

/// One volume to place.
struct Vol {
    set: Option<usize>,
    ordinal: u32,
    claim: usize,
    name: String,
    slices: u64,
    media: Option<Media>,
    /// Named in its set's `separateDisks`.
    separate: bool,
}

struct Set {
    name: String,
    level: Option<Level>,
    affinity: Affinity,
    replicas: u32,
    claim_names: Vec<String>,
    separate_names: Vec<String>,
    /// Index of the volume of claim 0 of replica 0.
    first_vol: usize,
}

/// What the search places in one step: a whole replica (node affinity) or
/// one volume.
struct Unit {
    set: Option<usize>,
    ordinal: u32,
    /// Largest first (the greedy order), then request order.
    vols: Vec<usize>,
}

/// `(vol, disk, slices)` for each part of a unit's placement.
type Packing = Vec<(usize, usize, u64)>;

/// How the greedy packing of a unit on a node ranks: spread a set's
/// replicas over nodes and racks first, then keep the fullest touched disk
/// as empty as possible, then topology order.
type Score = (bool, bool, u64, usize);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flow {
    Found,
    NotFound,
    Limit,
}

/// Why a node cannot take a unit (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    Failed,
    /// The node's domain holds another replica of the set.
    DomainTaken {
        domain: usize,
        ordinal: u32,
    },
    /// No disk of this media on the node.
    NoMedia {
        media: Media,
    },
    /// Every disk of the right media holds another replica (disk level).
    DisksTaken,
    /// Fewer usable disks than volumes that must not share one.
    TooFewDisks {
        have: usize,
        need: usize,
    },
    /// Not enough free slices of this media (or of any, when `None`).
    NoSpace {
        media: Option<Media>,
        need: u64,
        free: u64,
    },
    /// Enough space in total, but no split of it meets the constraints.
    NoArrangement,
}

pub(super) struct Search<'a> {
    cluster: Cluster<'a>,
    request: &'a Request,
    vols: Vec<Vol>,
    sets: Vec<Set>,
    units: Vec<Unit>,
    used: Vec<u64>,
    placed: Vec<Vec<(usize, u64)>>,
    owner: Vec<Vec<(u32, u32)>>,
    set_node_refs: Vec<Vec<u32>>,
    set_rack_refs: Vec<Vec<u32>>,
    steps: u64,
    step_limit: u64,
    deepest: Option<(usize, Error)>,
}

impl<'a> Search<'a> {
    pub(super) fn new(topology: &'a Topology, usage: &Usage, request: &'a Request) -> Search<'a> {
        let cluster = Cluster::new(topology);
        let mut used = Vec::with_capacity(cluster.disk_node.len());
        for node in &topology.nodes {
            for disk in &node.disks {
                used.push(usage.used_bytes(&node.name, &disk.name));
            }
        }
        let mut vols = Vec::new();
        let mut sets = Vec::new();
        let mut units = Vec::new();
        for (set_idx, set) in request.replica_sets.iter().enumerate() {
            let first_vol = vols.len();
            for ordinal in 0..set.replicas {
                let unit_vols = vols.len()..vols.len() + set.claims.len();
                for (claim_idx, claim) in set.claims.iter().enumerate() {
                    vols.push(Vol {
                        set: Some(set_idx),
                        ordinal,
                        claim: claim_idx,
                        name: volume_name(&claim.name, &set.name, ordinal),
                        slices: slices_of(claim.size_bytes),
                        media: claim.media.or(set.placement.media),
                        separate: set.placement.separate_disks.contains(&claim.name),
                    });
                }
                match set.placement.affinity {
                    // A replica without volumes has nothing to place.
                    _ if set.claims.is_empty() => {}
                    Affinity::Node => units.push(Unit {
                        set: Some(set_idx),
                        ordinal,
                        vols: unit_vols.collect(),
                    }),
                    Affinity::None => units.extend(unit_vols.map(|vol| Unit {
                        set: Some(set_idx),
                        ordinal,
                        vols: vec![vol],
                    })),
                }
            }
            let mut separate_names: Vec<String> = set.placement.separate_disks.clone();
            separate_names.dedup();
            sets.push(Set {
                name: set.name.clone(),
                level: set.placement.anti_affinity,
                affinity: set.placement.affinity,
                replicas: set.replicas,
                claim_names: set.claims.iter().map(|c| c.name.clone()).collect(),
                separate_names,
                first_vol,
            });
        }
        for claim in &request.volumes {
            units.push(Unit {
                set: None,
                ordinal: 0,
                vols: vec![vols.len()],
            });
            vols.push(Vol {
                set: None,
                ordinal: 0,
                claim: 0,
                name: claim.name.clone(),
                slices: slices_of(claim.size_bytes),
                media: claim.media,
                separate: false,
            });
        }
        for unit in &mut units {
            unit.vols
                .sort_by_key(|&v| std::cmp::Reverse(vols[v].slices));
        }
        let owner = sets
            .iter()
            .map(|s| match s.level {
                Some(level) => vec![(0, 0); cluster.domain_count(level)],
                None => Vec::new(),
            })
            .collect();
        let set_node_refs = vec![vec![0; cluster.n_nodes()]; sets.len()];
        let set_rack_refs = vec![vec![0; cluster.rack_names.len()]; sets.len()];
        Search {
            placed: vec![Vec::new(); vols.len()],
            cluster,
            request,
            vols,
            sets,
            units,
            used,
            owner,
            set_node_refs,
            set_rack_refs,
            steps: 0,
            step_limit: MAX_SEARCH_STEPS,
            deepest: None,
        }
    }

    /// Shrinks the step budget, so tests reach the limit quickly.
    #[cfg(test)]
    pub(super) fn with_step_limit(mut self, step_limit: u64) -> Search<'a> {
        self.step_limit = step_limit;
        self
    }

    pub(super) fn run(mut self) -> Result<Plan, Error> {
        self.check_media()?;
        self.check_anti_affinity()?;
        self.check_capacity()?;
        self.check_units_alone()?;
        match self.solve(0) {
            Flow::Found => Ok(self.plan()),
            Flow::NotFound => Err(self
                .deepest
                .take()
                .map(|(_, error)| error)
                .expect("an exhausted search records the unit it could not place")),
            Flow::Limit => {
                let closest = self
                    .deepest
                    .take()
                    .map(|(_, e)| format!("; the furthest attempt stopped at: {}", e.message))
                    .unwrap_or_default();
                Err(Error {
                    constraint: Constraint::SearchLimit,
                    replica: None,
                    volume: None,
                    message: format!(
                        "no placement for app {} found within {MAX_SEARCH_STEPS} search steps, and none proven impossible{closest}; relax a constraint or add disks",
                        self.request.app
                    ),
                })
            }
        }
    }

    fn plan(&self) -> Plan {
        let volumes = self
            .vols
            .iter()
            .enumerate()
            .map(|(v, vol)| {
                let mut slices = Vec::with_capacity(vol.slices as usize);
                for &(disk, count) in &self.placed[v] {
                    for _ in 0..count {
                        slices.push(self.cluster.slice(disk, slices.len() as u32));
                    }
                }
                debug_assert_eq!(slices.len() as u64, vol.slices);
                VolumePlacement {
                    replica: vol
                        .set
                        .map(|s| replica_name(&self.sets[s].name, vol.ordinal)),
                    volume: vol.name.clone(),
                    slices,
                }
            })
            .collect();
        Plan { volumes }
    }

    // ---- state -------------------------------------------------------

    fn free(&self, disk: usize) -> u64 {
        self.cluster.disk_capacity[disk].saturating_sub(self.used[disk]) / SLICE_BYTES
    }

    fn put(&mut self, vol: usize, disk: usize, count: u64) {
        self.used[disk] += count * SLICE_BYTES;
        assert!(
            self.used[disk] <= self.cluster.disk_capacity[disk],
            "placement overfills a disk"
        );
        self.placed[vol].push((disk, count));
        if let Some(set) = self.vols[vol].set {
            let node = self.cluster.disk_node[disk];
            if let Some(level) = self.sets[set].level {
                let domain = self.cluster.domain_of_disk(level, disk);
                let entry = &mut self.owner[set][domain];
                assert!(entry.1 == 0 || entry.0 == self.vols[vol].ordinal);
                *entry = (self.vols[vol].ordinal, entry.1 + 1);
            }
            self.set_node_refs[set][node] += 1;
            self.set_rack_refs[set][self.cluster.node_rack[node]] += 1;
        }
    }

    fn take(&mut self, vol: usize) {
        let (disk, count) = self.placed[vol].pop().expect("take after put");
        self.used[disk] -= count * SLICE_BYTES;
        if let Some(set) = self.vols[vol].set {
            let node = self.cluster.disk_node[disk];
            if let Some(level) = self.sets[set].level {
                let domain = self.cluster.domain_of_disk(level, disk);
                self.owner[set][domain].1 -= 1;
            }
            self.set_node_refs[set][node] -= 1;
            self.set_rack_refs[set][self.cluster.node_rack[node]] -= 1;
        }
    }

    fn apply(&mut self, packing: &Packing) {
        for &(vol, disk, count) in packing {
            self.put(vol, disk, count);
        }
    }

    fn undo(&mut self, packing: &Packing) {
        for &(vol, _, _) in packing.iter().rev() {
            self.take(vol);
        }
    }

    /// The volumes of one replica of a set, in claim order.
    fn replica_vols(&self, set: usize, ordinal: u32) -> Range<usize> {
        let n_claims = self.sets[set].claim_names.len();
        let first = self.sets[set].first_vol + ordinal as usize * n_claims;
        first..first + n_claims
    }

    /// The volumes of the same replica named in `separateDisks`, other than
    /// `vol` itself.
    fn separate_siblings(&self, vol: usize) -> impl Iterator<Item = usize> + '_ {
        let v = &self.vols[vol];
        let range = match (v.separate, v.set) {
            (true, Some(set)) => self.replica_vols(set, v.ordinal),
            _ => 0..0,
        };
        range.filter(move |&w| w != vol && self.vols[w].separate)
    }

    /// Why the replica may not use `node`: its domain (anti-affinity at node
    /// level and above) holds another replica of the set.
    fn node_domain_taken(&self, set: Option<usize>, ordinal: u32, node: usize) -> Option<Reason> {
        let set = set?;
        let level = self.sets[set].level.filter(|&l| l >= Level::Node)?;
        let domain = self.cluster.domain_of_node(level, node);
        let (holder, refs) = self.owner[set][domain];
        (refs > 0 && holder != ordinal).then_some(Reason::DomainTaken {
            domain,
            ordinal: holder,
        })
    }

    /// Whether `vol` may use `disk` given what is placed, ignoring capacity
    /// and the node domain (checked per node) and the volumes of its own
    /// unit not yet placed.
    fn disk_allowed(&self, vol: usize, disk: usize) -> bool {
        let v = &self.vols[vol];
        if v.media.is_some_and(|m| m != self.cluster.disk_media[disk]) {
            return false;
        }
        if let Some(set) = v.set
            && self.sets[set].level == Some(Level::Disk)
        {
            let (holder, refs) = self.owner[set][disk];
            if refs > 0 && holder != v.ordinal {
                return false;
            }
        }
        self.separate_siblings(vol)
            .all(|w| self.placed[w].iter().all(|&(d, _)| d != disk))
    }
}
