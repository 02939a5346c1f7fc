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
//! ([`Compositions`]). Together these are all placements of the unit that
//! are valid given the units before it, so an exhausted search proves there
//! is no plan.

use std::collections::BTreeMap;
use std::ops::Range;

use super::MAX_SEARCH_STEPS;
use super::{
    Affinity, Constraint, Error, Plan, Request, SLICE_BYTES, SlicePlacement, Usage,
    VolumePlacement, replica_name, slices_of, volume_name,
};
use crate::topology::{Level, Media, Topology};

/// Splits the early check may try per node, and in all, before it gives a
/// node the benefit of the doubt.
const PRECHECK_STEPS_PER_NODE: u64 = 2_000;
const PRECHECK_STEPS_MAX: u64 = 100_000;
/// Names listed in a message before "and N more".
const NAMES_SHOWN: usize = 6;
const PPM: u128 = 1_000_000;

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

    // ---- early, necessary checks ---------------------------------------

    fn live_disks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.cluster.disk_node.len())
            .filter(|&d| self.cluster.node_live[self.cluster.disk_node[d]])
    }

    fn failed_nodes(&self) -> Vec<String> {
        (0..self.cluster.n_nodes())
            .filter(|&n| !self.cluster.node_live[n])
            .map(|n| self.cluster.node_name(n).to_owned())
            .collect()
    }

    fn failed_note(&self, media: Option<Media>) -> String {
        let failed: Vec<String> = (0..self.cluster.n_nodes())
            .filter(|&n| {
                !self.cluster.node_live[n]
                    && self.cluster.node_disks[n]
                        .clone()
                        .any(|d| media.is_none_or(|m| self.cluster.disk_media[d] == m))
            })
            .map(|n| self.cluster.node_name(n).to_owned())
            .collect();
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (failed: {})", names(&failed))
        }
    }

    /// Every volume's media exists on some live node.
    fn check_media(&self) -> Result<(), Error> {
        for vol in &self.vols {
            let Some(media) = vol.media else { continue };
            if self
                .live_disks()
                .any(|d| self.cluster.disk_media[d] == media)
            {
                continue;
            }
            let (what, replica) = match vol.set {
                Some(set) => (
                    format!(
                        "claim {} of replica set {}",
                        self.sets[set].claim_names[vol.claim], self.sets[set].name
                    ),
                    Some(replica_name(&self.sets[set].name, vol.ordinal)),
                ),
                None => (format!("volume {}", vol.name), None),
            };
            return Err(Error {
                constraint: Constraint::Media,
                replica,
                volume: Some(vol.name.clone()),
                message: format!(
                    "{what} needs an {media} disk; no live node has one{}",
                    self.failed_note(Some(media))
                ),
            });
        }
        Ok(())
    }

    /// Each set with anti-affinity has a usable domain for every replica.
    fn check_anti_affinity(&mut self) -> Result<(), Error> {
        for set in 0..self.sets.len() {
            let Some(level) = self.sets[set].level else {
                continue;
            };
            let replicas = self.sets[set].replicas;
            let Some(unit) = self
                .units
                .iter()
                .position(|u| u.set == Some(set) && u.ordinal == 0)
            else {
                continue;
            };
            let n_domains = self.cluster.domain_count(level);
            // For each domain: usable, or why not (one reason per node).
            let mut usable = vec![false; n_domains];
            let mut why_not: Vec<Vec<(usize, Reason)>> = vec![Vec::new(); n_domains];
            let whole_replica = self.sets[set].affinity == Affinity::Node && level >= Level::Node;
            let set_vols: Vec<usize> = (0..self.vols.len())
                .filter(|&v| self.vols[v].set == Some(set))
                .collect();
            for node in 0..self.cluster.n_nodes() {
                if whole_replica {
                    let domain = self.cluster.domain_of_node(level, node);
                    if usable[domain] {
                        continue;
                    }
                    match self.node_can_hold(unit, node) {
                        Ok(()) => usable[domain] = true,
                        Err(reason) => why_not[domain].push((node, reason)),
                    }
                } else {
                    for disk in self.cluster.node_disks[node].clone() {
                        let fits = self.cluster.node_live[node]
                            && self.free(disk) > 0
                            && set_vols.iter().any(|&v| {
                                self.vols[v]
                                    .media
                                    .is_none_or(|m| m == self.cluster.disk_media[disk])
                            });
                        if fits {
                            usable[self.cluster.domain_of_disk(level, disk)] = true;
                        }
                    }
                }
            }
            let n_usable = usable.iter().filter(|&&u| u).count();
            // With no usable domain at all, anti-affinity is not what stops
            // the first replica; the search explains that case better.
            if n_usable >= replicas as usize || n_usable == 0 {
                continue;
            }
            let mut usable_names: Vec<String> = (0..n_domains)
                .filter(|&d| usable[d])
                .map(|d| self.cluster.domain_name(level, d))
                .collect();
            usable_names.sort();
            let set_name = self.sets[set].name.clone();
            let replica = replica_name(&set_name, n_usable as u32);
            // Describe the reasons with the names of the replica refused.
            let unit = self
                .units
                .iter()
                .position(|u| u.set == Some(set) && u.ordinal == n_usable as u32)
                .unwrap_or(unit);
            let mut message = format!(
                "replica {replica} needs a {level} other than {}; there are no more {level}s",
                names(&usable_names)
            );
            let unusable: Vec<usize> = (0..n_domains).filter(|&d| !usable[d]).collect();
            if whole_replica && !unusable.is_empty() {
                let texts: Vec<String> = unusable
                    .iter()
                    .map(|&domain| {
                        let why = self.describe(unit, &why_not[domain]);
                        if level == Level::Node {
                            why
                        } else {
                            let name = self.cluster.domain_name(level, domain);
                            format!("{level} {name}: {why}")
                        }
                    })
                    .collect();
                message.push_str(" that can hold it: ");
                message.push_str(&texts.join("; "));
            } else if !unusable.is_empty() {
                let mut unusable_names: Vec<String> = unusable
                    .iter()
                    .map(|&d| self.cluster.domain_name(level, d))
                    .collect();
                unusable_names.sort();
                message.push_str(&format!(
                    " with free space of a media it may use on a live node ({} {} none)",
                    names(&unusable_names),
                    if unusable_names.len() == 1 {
                        "has"
                    } else {
                        "have"
                    }
                ));
            }
            return Err(Error {
                constraint: Constraint::AntiAffinity { level },
                replica: Some(replica),
                volume: None,
                message,
            });
        }
        Ok(())
    }

    /// Whether a node alone could take a unit in the current state: the
    /// greedy packing, else a bounded exhaustive look. Out of budget counts
    /// as yes (this check must never refuse what is possible).
    fn node_can_hold(&mut self, unit: usize, node: usize) -> Result<(), Reason> {
        if let Some(reason) = self.node_reason_simple(unit, node) {
            return Err(reason);
        }
        if self.greedy(unit, node).is_some() {
            return Ok(());
        }
        let reason = self.node_reason(unit, node);
        if reason != Reason::NoArrangement {
            return Err(reason);
        }
        let stop_at = (self.steps + PRECHECK_STEPS_PER_NODE).min(PRECHECK_STEPS_MAX);
        let mut found = false;
        let out_of_steps = self.each_packing(unit, node, stop_at, &mut |_, _| {
            found = true;
            false
        });
        if found || out_of_steps {
            Ok(())
        } else {
            Err(self.node_reason(unit, node))
        }
    }

    /// Enough free space of each media for the whole request.
    fn check_capacity(&self) -> Result<(), Error> {
        let mut need: BTreeMap<Option<Media>, u64> = BTreeMap::new();
        for vol in &self.vols {
            *need.entry(vol.media).or_default() += vol.slices;
        }
        let free_of = |media: Option<Media>| -> u64 {
            self.live_disks()
                .filter(|&d| media.is_none_or(|m| self.cluster.disk_media[d] == m))
                .map(|d| self.free(d))
                .sum()
        };
        let total: u64 = need.values().sum();
        let mut checks: Vec<(Option<Media>, u64)> = need
            .iter()
            .filter_map(|(m, n)| m.map(|m| (Some(m), *n)))
            .collect();
        checks.push((None, total));
        for (media, slices) in checks {
            let free = free_of(media);
            if slices > free {
                let kind = media.map(|m| format!("{m} ")).unwrap_or_default();
                return Err(Error {
                    constraint: Constraint::Capacity,
                    replica: None,
                    volume: None,
                    message: format!(
                        "app {} needs {slices} GiB on {kind}disks but the live {kind}disks have {free} GiB free{}; add {kind}disks or shrink the claims",
                        self.request.app,
                        self.failed_note(media)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Each unit fits some node on its own. Placing other units only takes
    /// room and domains away, so a unit that fits nowhere now never will;
    /// saying so here spares the search from backtracking over every
    /// placement of the units before it.
    fn check_units_alone(&mut self) -> Result<(), Error> {
        for u in 0..self.units.len() {
            let fits_somewhere =
                (0..self.cluster.n_nodes()).any(|node| self.node_can_hold(u, node).is_ok());
            if !fits_somewhere {
                return Err(self.explain(u));
            }
        }
        Ok(())
    }

    // ---- the search ----------------------------------------------------

    fn solve(&mut self, u: usize) -> Flow {
        if u == self.units.len() {
            return Flow::Found;
        }
        self.steps += self.cluster.n_nodes() as u64;
        if self.steps > self.step_limit {
            return Flow::Limit;
        }
        let mut candidates: Vec<(Score, usize, Packing)> = Vec::new();
        for node in 0..self.cluster.n_nodes() {
            if let Some((packing, score)) = self.greedy(u, node) {
                candidates.push((score, node, packing));
            }
        }
        candidates.sort_by_key(|(score, _, _)| *score);
        let mut tried_any = !candidates.is_empty();
        for (_, _, packing) in &candidates {
            self.apply(packing);
            let flow = self.solve(u + 1);
            if flow != Flow::NotFound {
                return flow;
            }
            self.undo(packing);
        }
        // Every other split, node by node; the greedy ones were tried above.
        let mut greedy_on_node: Vec<Option<Packing>> = vec![None; self.cluster.n_nodes()];
        for (_, node, mut packing) in candidates {
            packing.sort_unstable();
            greedy_on_node[node] = Some(packing);
        }
        for (node, seen) in greedy_on_node.into_iter().enumerate() {
            // Every other reason is a proof that no split fits this node.
            if self.node_reason(u, node) != Reason::NoArrangement {
                continue;
            }
            let mut flow = Flow::NotFound;
            let out_of_steps =
                self.each_packing(u, node, self.step_limit, &mut |search, packing| {
                    tried_any = true;
                    let mut sorted = packing.clone();
                    sorted.sort_unstable();
                    if seen.as_ref() == Some(&sorted) {
                        return true;
                    }
                    search.apply(packing);
                    flow = search.solve(u + 1);
                    if flow != Flow::NotFound {
                        return false;
                    }
                    search.undo(packing);
                    true
                });
            if out_of_steps {
                return Flow::Limit;
            }
            if flow != Flow::NotFound {
                return flow;
            }
        }
        if !tried_any && self.deepest.as_ref().is_none_or(|(d, _)| u > *d) {
            let error = self.explain(u);
            self.deepest = Some((u, error));
        }
        Flow::NotFound
    }

    /// Reasons a node cannot take a unit that need no packing: failed, its
    /// domain taken.
    fn node_reason_simple(&self, u: usize, node: usize) -> Option<Reason> {
        if !self.cluster.node_live[node] {
            return Some(Reason::Failed);
        }
        let unit = &self.units[u];
        self.node_domain_taken(unit.set, unit.ordinal, node)
    }

    /// The greedy packing of unit `u` on `node` and its score, if it fits.
    fn greedy(&self, u: usize, node: usize) -> Option<(Packing, Score)> {
        if self.node_reason_simple(u, node).is_some() {
            return None;
        }
        let unit = &self.units[u];
        let disks = self.cluster.node_disks[node].clone();
        let mut extra = vec![0u64; disks.len()];
        let mut packing: Packing = Vec::with_capacity(unit.vols.len());
        for &vol in &unit.vols {
            let need = self.vols[vol].slices;
            let mut eligible: Vec<(usize, u64)> = Vec::new();
            for disk in disks.clone() {
                let free = self.free(disk) - extra[disk - disks.start];
                let sibling_here = self
                    .separate_siblings(vol)
                    .any(|w| packing.iter().any(|&(pv, pd, _)| pv == w && pd == disk));
                if free > 0 && !sibling_here && self.disk_allowed(vol, disk) {
                    eligible.push((disk, free));
                }
            }
            let fullness = |disk: usize, add: u64| -> u64 {
                let used = self.used[disk] as u128
                    + (extra[disk - disks.start] + add) as u128 * SLICE_BYTES as u128;
                (used * PPM / self.cluster.disk_capacity[disk] as u128) as u64
            };
            let whole = eligible
                .iter()
                .filter(|&&(_, free)| free >= need)
                .min_by_key(|&&(disk, _)| (fullness(disk, need), disk));
            if let Some(&(disk, _)) = whole {
                packing.push((vol, disk, need));
                extra[disk - disks.start] += need;
                continue;
            }
            // Spill over the emptiest disks, as few as possible.
            eligible.sort_by_key(|&(disk, free)| (std::cmp::Reverse(free), disk));
            let mut left = need;
            for (disk, free) in eligible {
                let take = free.min(left);
                packing.push((vol, disk, take));
                extra[disk - disks.start] += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                return None;
            }
        }
        let peak = packing
            .iter()
            .map(|&(_, disk, _)| {
                let used = self.used[disk] as u128
                    + extra[disk - disks.start] as u128 * SLICE_BYTES as u128;
                (used * PPM / self.cluster.disk_capacity[disk] as u128) as u64
            })
            .max()
            .unwrap_or(0);
        let (node_shared, rack_shared) = match unit.set {
            Some(set) => {
                let own = |on_node: &dyn Fn(usize) -> bool| -> u32 {
                    self.replica_vols(set, unit.ordinal)
                        .map(|w| {
                            self.placed[w]
                                .iter()
                                .filter(|&&(d, _)| on_node(self.cluster.disk_node[d]))
                                .count() as u32
                        })
                        .sum()
                };
                let rack = self.cluster.node_rack[node];
                let node_refs = self.set_node_refs[set][node] - own(&|n| n == node);
                let rack_refs =
                    self.set_rack_refs[set][rack] - own(&|n| self.cluster.node_rack[n] == rack);
                (node_refs > 0, rack_refs > 0)
            }
            None => (false, false),
        };
        Some((packing, (node_shared, rack_shared, peak, node)))
    }

    /// Calls `visit` with every valid packing of unit `u` on `node` (the
    /// node is live and its domain free), in a fixed order, until `visit`
    /// returns false. Each split looked at, valid or not, is a step; returns
    /// true if it stopped because `self.steps` reached `stop_at`.
    fn each_packing(
        &mut self,
        u: usize,
        node: usize,
        stop_at: u64,
        visit: &mut dyn FnMut(&mut Search<'a>, &Packing) -> bool,
    ) -> bool {
        let disks = self.cluster.node_disks[node].clone();
        let vols = self.units[u].vols.clone();
        // Per volume: the disks it may use and a composition of its slices
        // over them.
        let mut options: Vec<(Vec<usize>, Compositions)> = Vec::with_capacity(vols.len());
        for &vol in &vols {
            let eligible: Vec<usize> = disks
                .clone()
                .filter(|&d| self.free(d) > 0 && self.disk_allowed(vol, d))
                .collect();
            let bounds: Vec<u64> = eligible.iter().map(|&d| self.free(d)).collect();
            match Compositions::first(bounds, self.vols[vol].slices) {
                Some(parts) => options.push((eligible, parts)),
                None => return false,
            }
        }
        loop {
            if self.steps >= stop_at {
                return true;
            }
            self.steps += 1;
            if let Some(packing) = self.packing_if_valid(&vols, &options)
                && !visit(self, &packing)
            {
                return false;
            }
            // Advance the odometer: last volume fastest.
            let mut i = vols.len();
            loop {
                if i == 0 {
                    return false;
                }
                i -= 1;
                if options[i].1.advance() {
                    break;
                }
                options[i].1.reset();
            }
        }
    }

    /// The packing the compositions describe, if the volumes fit together
    /// (shared disks' capacity, `separateDisks` within the unit).
    fn packing_if_valid(
        &self,
        vols: &[usize],
        options: &[(Vec<usize>, Compositions)],
    ) -> Option<Packing> {
        let mut packing: Packing = Vec::new();
        for (i, &vol) in vols.iter().enumerate() {
            let (eligible, parts) = &options[i];
            for (k, &count) in parts.parts.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let disk = eligible[k];
                for &(other, other_disk, _) in &packing {
                    if other_disk == disk && self.separate_siblings(vol).any(|w| w == other) {
                        return None;
                    }
                }
                packing.push((vol, disk, count));
            }
        }
        let mut per_disk: BTreeMap<usize, u64> = BTreeMap::new();
        for &(_, disk, count) in &packing {
            *per_disk.entry(disk).or_default() += count;
        }
        per_disk
            .iter()
            .all(|(&disk, &count)| count <= self.free(disk))
            .then_some(packing)
    }

    // ---- explaining a refusal ------------------------------------------

    /// Why unit `u` fits nowhere in the current state.
    fn explain(&self, u: usize) -> Error {
        let mut reasons: Vec<(usize, Reason)> = Vec::new();
        for node in 0..self.cluster.n_nodes() {
            let reason = self.node_reason(u, node);
            reasons.push((node, reason));
        }
        let unit = &self.units[u];
        let (replica, volume, who) = match unit.set {
            Some(set) => {
                let replica = replica_name(&self.sets[set].name, unit.ordinal);
                if unit.vols.len() == 1 && self.sets[set].affinity == Affinity::None {
                    let volume = self.vols[unit.vols[0]].name.clone();
                    let who = format!("volume {volume} of replica {replica}");
                    (Some(replica), Some(volume), who)
                } else {
                    (Some(replica.clone()), None, format!("replica {replica}"))
                }
            }
            None => {
                let volume = self.vols[unit.vols[0]].name.clone();
                (None, Some(volume.clone()), format!("volume {volume}"))
            }
        };
        let level = unit.set.and_then(|s| self.sets[s].level);
        let taken: Vec<&(usize, Reason)> = reasons
            .iter()
            .filter(|(_, r)| matches!(r, Reason::DomainTaken { .. }))
            .collect();
        let others: Vec<(usize, Reason)> = reasons
            .iter()
            .filter(|(_, r)| !matches!(r, Reason::DomainTaken { .. } | Reason::Failed))
            .cloned()
            .collect();
        let has = |pred: &dyn Fn(&Reason) -> bool| reasons.iter().any(|(_, r)| pred(r));
        let constraint = if !taken.is_empty() || has(&|r| *r == Reason::DisksTaken) {
            Constraint::AntiAffinity {
                level: level.expect("only sets with anti-affinity take domains"),
            }
        } else if has(&|r| matches!(r, Reason::TooFewDisks { .. })) {
            Constraint::SeparateDisks
        } else if has(&|r| matches!(r, Reason::NoMedia { .. }))
            && !has(&|r| matches!(r, Reason::NoSpace { .. } | Reason::NoArrangement))
        {
            Constraint::Media
        } else {
            Constraint::Capacity
        };
        let mut message = String::new();
        if let (Some(level), false) = (level, taken.is_empty()) {
            let mut domains: Vec<String> = taken
                .iter()
                .map(|(_, r)| match r {
                    Reason::DomainTaken { domain, .. } => self.cluster.domain_name(level, *domain),
                    _ => unreachable!(),
                })
                .collect();
            domains.sort();
            domains.dedup();
            message.push_str(&format!(
                "{who} needs a {level} other than {}",
                names(&domains)
            ));
            if others.is_empty() {
                message.push_str(&format!("; there are no more {level}s"));
            } else {
                message.push_str(&format!(
                    "; on the other {level}s: {}",
                    self.describe(u, &others)
                ));
            }
        } else {
            message.push_str(&format!(
                "{who} cannot be placed: {}",
                self.describe(u, &others)
            ));
        }
        let failed = self.failed_nodes();
        if !failed.is_empty() {
            message.push_str(&format!(" (failed: {})", names(&failed)));
        }
        Error {
            constraint,
            replica,
            volume,
            message,
        }
    }

    /// The first reason (in the order a person would fix them) why `node`
    /// cannot take unit `u`. Every reason but `NoArrangement` is a proof
    /// that no packing of the unit fits the node; `NoArrangement` means
    /// none of these cheap proofs applies (the node may well fit).
    fn node_reason(&self, u: usize, node: usize) -> Reason {
        if let Some(reason) = self.node_reason_simple(u, node) {
            return reason;
        }
        let vols = self.units[u].vols.clone();
        let disks = self.cluster.node_disks[node].clone();
        for &vol in &vols {
            if let Some(media) = self.vols[vol].media
                && !disks.clone().any(|d| self.cluster.disk_media[d] == media)
            {
                return Reason::NoMedia { media };
            }
        }
        let media_ok = |search: &Search, vol: usize, d: usize| {
            search.vols[vol]
                .media
                .is_none_or(|m| m == search.cluster.disk_media[d])
        };
        for &vol in &vols {
            if !disks
                .clone()
                .any(|d| media_ok(self, vol, d) && self.disk_allowed(vol, d))
                && disks.clone().any(|d| media_ok(self, vol, d))
            {
                let set = self.vols[vol].set;
                if set.is_some_and(|s| self.sets[s].level == Some(Level::Disk)) {
                    return Reason::DisksTaken;
                }
            }
        }
        let separate: Vec<usize> = vols
            .iter()
            .copied()
            .filter(|&v| self.vols[v].separate)
            .collect();
        if separate.len() > 1 {
            let have = disks
                .clone()
                .filter(|&d| self.free(d) > 0 && separate.iter().any(|&v| self.disk_allowed(v, d)))
                .count();
            if have < separate.len() {
                return Reason::TooFewDisks {
                    have,
                    need: separate.len(),
                };
            }
        }
        let mut need: BTreeMap<Option<Media>, u64> = BTreeMap::new();
        for &vol in &vols {
            *need.entry(self.vols[vol].media).or_default() += self.vols[vol].slices;
        }
        let total: u64 = need.values().sum();
        let mut checks: Vec<(Option<Media>, u64)> = need
            .iter()
            .filter_map(|(m, n)| m.map(|m| (Some(m), *n)))
            .collect();
        checks.push((None, total));
        for (media, slices) in checks {
            let free: u64 = disks
                .clone()
                .filter(|&d| media.is_none_or(|m| self.cluster.disk_media[d] == m))
                .filter(|&d| {
                    vols.iter()
                        .any(|&v| media_ok(self, v, d) && self.disk_allowed(v, d))
                })
                .map(|d| self.free(d))
                .sum();
            if slices > free {
                return Reason::NoSpace {
                    media,
                    need: slices,
                    free,
                };
            }
        }
        // A volume too big for any one disk needs several, which the other
        // separate volumes then cannot use.
        if separate.len() > 1 {
            let mut union: Vec<usize> = Vec::new();
            let mut need = 0;
            for &vol in &separate {
                let mut frees: Vec<u64> = disks
                    .clone()
                    .filter(|&d| self.free(d) > 0 && self.disk_allowed(vol, d))
                    .inspect(|&d| {
                        if !union.contains(&d) {
                            union.push(d);
                        }
                    })
                    .map(|d| self.free(d))
                    .collect();
                frees.sort_unstable_by(|a, b| b.cmp(a));
                let mut covered = 0;
                let mut n_disks = 0;
                for free in frees {
                    if covered >= self.vols[vol].slices {
                        break;
                    }
                    covered += free;
                    n_disks += 1;
                }
                need += n_disks.max(1);
            }
            if need > union.len() {
                return Reason::TooFewDisks {
                    have: union.len(),
                    need,
                };
            }
        }
        Reason::NoArrangement
    }

    /// "a-db-0 (2 GiB), b-db-0 (1 GiB ssd)": what a unit needs.
    fn unit_sizes(&self, u: usize) -> String {
        let mut vols = self.units[u].vols.clone();
        vols.sort_unstable();
        let parts: Vec<String> = vols
            .iter()
            .map(|&v| {
                let vol = &self.vols[v];
                let media = vol.media.map(|m| format!(" {m}")).unwrap_or_default();
                format!("{} ({} GiB{media})", vol.name, vol.slices)
            })
            .collect();
        parts.join(", ")
    }

    /// Groups per-node reasons into one sentence part.
    fn describe(&self, u: usize, reasons: &[(usize, Reason)]) -> String {
        let unit = &self.units[u];
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (node, reason) in reasons {
            let name = self.cluster.node_name(*node).to_owned();
            let (key, item) = match reason {
                Reason::Failed => ("is failed".to_owned(), name),
                Reason::DomainTaken { domain, ordinal } => {
                    let set = unit.set.expect("a taken domain belongs to a set");
                    let level = self.sets[set].level.expect("set with anti-affinity");
                    (
                        format!(
                            "is in a {level} that holds another replica (antiAffinity: {level})"
                        ),
                        format!(
                            "{name} ({level} {} holds {})",
                            self.cluster.domain_name(level, *domain),
                            replica_name(&self.sets[set].name, *ordinal)
                        ),
                    )
                }
                Reason::NoMedia { media } => (format!("has no {media} disk"), name),
                Reason::DisksTaken => (
                    "has every suitable disk holding another replica (antiAffinity: disk)"
                        .to_owned(),
                    name,
                ),
                Reason::TooFewDisks { have, need } => {
                    let set = unit.set.expect("separateDisks belongs to a set");
                    (
                        format!(
                            "has too few usable disks to keep {} apart (separateDisks needs {need})",
                            self.sets[set].separate_names.join(", ")
                        ),
                        format!("{name} ({have} usable)"),
                    )
                }
                Reason::NoSpace { media, need, free } => {
                    let kind = media.map(|m| format!("{m} ")).unwrap_or_default();
                    (
                        format!("lacks room for {need} GiB on {kind}disks it may use"),
                        format!("{name} ({free} GiB free)"),
                    )
                }
                Reason::NoArrangement => {
                    let separate = unit.vols.iter().any(|&v| self.vols[v].separate);
                    let free: Vec<String> = self.cluster.node_disks[*node]
                        .clone()
                        .map(|d| {
                            let local = d - self.cluster.node_disks[*node].start;
                            format!(
                                "{} {} GiB {}",
                                self.cluster.topology.nodes[*node].disks[local].name,
                                self.free(d),
                                self.cluster.disk_media[d]
                            )
                        })
                        .collect();
                    (
                        format!(
                            "cannot split its free space to fit {}{}",
                            self.unit_sizes(u),
                            if separate { " on separate disks" } else { "" }
                        ),
                        format!("{name} (free: {})", free.join(", ")),
                    )
                }
            };
            groups.entry(key).or_default().push(item);
        }
        groups
            .into_iter()
            .map(|(key, items)| {
                let noun = if items.len() == 1 { "node" } else { "nodes" };
                let key = if items.len() == 1 {
                    key
                } else {
                    key.replacen("is ", "are ", 1)
                        .replacen("has ", "have ", 1)
                        .replacen("lacks ", "lack ", 1)
                };
                format!("{noun} {} {key}", names(&items))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// "a, b, c" or "a, b, c, d, e, f and 3 more".
fn names(items: &[String]) -> String {
    if items.len() <= NAMES_SHOWN {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..NAMES_SHOWN].join(", "),
            items.len() - NAMES_SHOWN
        )
    }
}

/// Every way to split `total` slices over disks with `bounds` free slices
/// each, in decreasing lexicographic order (the first fills the first disk
/// as far as it goes).
#[derive(Debug, Clone)]
struct Compositions {
    bounds: Vec<u64>,
    parts: Vec<u64>,
    first: Vec<u64>,
}

impl Compositions {
    fn first(bounds: Vec<u64>, total: u64) -> Option<Compositions> {
        let mut parts = vec![0; bounds.len()];
        let mut left = total;
        for (part, &bound) in parts.iter_mut().zip(&bounds) {
            *part = bound.min(left);
            left -= *part;
        }
        (left == 0).then(|| Compositions {
            first: parts.clone(),
            bounds,
            parts,
        })
    }

    /// Moves to the next composition; false (and unchanged) after the last.
    fn advance(&mut self) -> bool {
        let mut suffix_sum = 0;
        let mut suffix_cap = 0u64;
        for i in (0..self.parts.len()).rev() {
            if self.parts[i] > 0 && suffix_sum < suffix_cap {
                self.parts[i] -= 1;
                let mut left = suffix_sum + 1;
                for j in i + 1..self.parts.len() {
                    self.parts[j] = self.bounds[j].min(left);
                    left -= self.parts[j];
                }
                return true;
            }
            suffix_sum += self.parts[i];
            suffix_cap = suffix_cap.saturating_add(self.bounds[i]);
        }
        false
    }

    fn reset(&mut self) {
        self.parts.clone_from(&self.first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositions_enumerate_every_bounded_split_once() {
        for (bounds, total) in [
            (vec![2, 1, 3], 3),
            (vec![1, 1, 1, 1], 2),
            (vec![5], 5),
            (vec![0, 2, 2], 3),
            (vec![3, 3], 0),
        ] {
            let mut expected = Vec::new();
            let mut parts = vec![0u64; bounds.len()];
            // Brute force: every vector within the bounds with the sum.
            loop {
                if parts.iter().sum::<u64>() == total {
                    expected.push(parts.clone());
                }
                let mut i = 0;
                while i < parts.len() && parts[i] == bounds[i] {
                    parts[i] = 0;
                    i += 1;
                }
                if i == parts.len() {
                    break;
                }
                parts[i] += 1;
            }
            let mut seen = Vec::new();
            let mut c = Compositions::first(bounds.clone(), total).unwrap();
            loop {
                seen.push(c.parts.clone());
                if !c.advance() {
                    break;
                }
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), seen.len(), "{bounds:?}: a split came twice");
            expected.sort();
            assert_eq!(sorted, expected, "{bounds:?} {total}");
            assert!(seen.windows(2).all(|w| w[0] > w[1]), "decreasing order");
        }
        assert!(Compositions::first(vec![1, 1], 3).is_none());
    }
}
