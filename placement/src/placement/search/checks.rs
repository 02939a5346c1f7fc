//! The early, necessary checks [`Search::run`] makes before searching:
//! media, anti-affinity domains, capacity per media, and whether each unit
//! fits some node on its own. Each refuses with a clear reason; none
//! refuses what is possible.

use std::collections::BTreeMap;

use super::explanations::names;
use super::{Reason, Search};
use crate::placement::{Affinity, Constraint, Error, replica_name};
use crate::topology::{Level, Media};

/// Splits the early check may try per node, and in all, before it gives a
/// node the benefit of the doubt.
const PRECHECK_STEPS_PER_NODE: u64 = 2_000;
const PRECHECK_STEPS_MAX: u64 = 100_000;

impl Search<'_> {
    fn live_disks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.cluster.disk_node.len())
            .filter(|&d| self.cluster.node_live[self.cluster.disk_node[d]])
    }

    pub(super) fn failed_nodes(&self) -> Vec<String> {
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
    pub(super) fn check_media(&self) -> Result<(), Error> {
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
    pub(super) fn check_anti_affinity(&mut self) -> Result<(), Error> {
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
    pub(super) fn check_capacity(&self) -> Result<(), Error> {
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
    pub(super) fn check_units_alone(&mut self) -> Result<(), Error> {
        for u in 0..self.units.len() {
            let fits_somewhere =
                (0..self.cluster.n_nodes()).any(|node| self.node_can_hold(u, node).is_ok());
            if !fits_somewhere {
                return Err(self.explain(u));
            }
        }
        Ok(())
    }
}
