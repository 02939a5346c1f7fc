//! Explaining a refusal: why a unit fits nowhere, node by node, in the
//! order a person would fix it, grouped into one message.

use std::collections::BTreeMap;

use super::{Reason, Search};
use crate::placement::{Affinity, Constraint, Error, replica_name};
use crate::topology::{Level, Media};

/// Names listed in a message before "and N more".
const NAMES_SHOWN: usize = 6;

impl Search<'_> {
    /// Why unit `u` fits nowhere in the current state.
    pub(super) fn explain(&self, u: usize) -> Error {
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
    pub(super) fn node_reason(&self, u: usize, node: usize) -> Reason {
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
    pub(super) fn describe(&self, u: usize, reasons: &[(usize, Reason)]) -> String {
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
pub(super) fn names(items: &[String]) -> String {
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
