//! The depth-first search over units: greedy packings first, then every
//! other split of a unit over a node's eligible disks ([`Compositions`]),
//! under a step budget.

use std::collections::BTreeMap;

use super::{Flow, Packing, Reason, Score, Search};
use crate::placement::SLICE_BYTES;

const PPM: u128 = 1_000_000;

impl<'a> Search<'a> {
    pub(super) fn solve(&mut self, u: usize) -> Flow {
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
    pub(super) fn node_reason_simple(&self, u: usize, node: usize) -> Option<Reason> {
        if !self.cluster.node_live[node] {
            return Some(Reason::Failed);
        }
        let unit = &self.units[u];
        self.node_domain_taken(unit.set, unit.ordinal, node)
    }

    /// The greedy packing of unit `u` on `node` and its score, if it fits.
    pub(super) fn greedy(&self, u: usize, node: usize) -> Option<(Packing, Score)> {
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
    pub(super) fn each_packing(
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
