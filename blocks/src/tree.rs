//! A persistent radix map from block index to [`Entry`] with structural
//! sharing: cloning a [`Tree`] is O(1) (one `Arc` bump), and a write after a
//! clone copies only the path from the root to one leaf. Snapshots, clones
//! and rollbacks are tree clones; [`Tree::diff`] skips every subtree the two
//! trees share, so it costs O(changed leaves), not O(size).
//!
//! Invariants:
//! - A node reachable from two trees is never mutated (`Arc::make_mut`
//!   copies it first).
//! - `mapped`/`stored` count the entries with `len > 0` and their record
//!   bytes; tombstones (`len == 0`, `generation > 0`) record a trim's generation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Bits of the block index consumed per level.
const FAN_BITS: u32 = 6;
/// Children per node.
pub const FAN: usize = 1 << FAN_BITS;

/// Where one block's newest record lives. `generation == 0` means never written;
/// `len == 0` with `generation > 0` is a trim tombstone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub generation: u64,
    pub seg: u32,
    pub off: u32,
    /// Whole record length (header + payload); 0 for a tombstone.
    pub len: u32,
}

impl Entry {
    pub const EMPTY: Entry = Entry {
        generation: 0,
        seg: 0,
        off: 0,
        len: 0,
    };

    pub fn tombstone(generation: u64) -> Entry {
        Entry {
            generation,
            ..Entry::EMPTY
        }
    }

    /// True when the block has data (reads are not zero by omission).
    pub fn is_mapped(&self) -> bool {
        self.len > 0
    }

    /// The record's place: segment and offset.
    pub fn loc(&self) -> (u32, u32) {
        (self.seg, self.off)
    }
}

/// A tree node (opaque outside this module).
#[derive(Clone)]
pub enum Node {
    Inner(Box<[Option<Arc<Node>>; FAN]>),
    Leaf(Box<[Entry; FAN]>),
}

impl Node {
    fn empty(level: u8) -> Node {
        if level == 0 {
            Node::Leaf(Box::new([Entry::EMPTY; FAN]))
        } else {
            Node::Inner(Box::new(std::array::from_fn(|_| None)))
        }
    }
}

/// A block map. Cheap to clone; clones share every node until written.
#[derive(Clone)]
pub struct Tree {
    root: Option<Arc<Node>>,
    /// Levels below the root (0: the root is a leaf).
    levels: u8,
    mapped: u64,
    stored: u64,
}

fn slot(index: u64, level: u8) -> usize {
    ((index >> (FAN_BITS * level as u32)) as usize) & (FAN - 1)
}

impl Tree {
    /// A tree able to index `blocks` blocks.
    pub fn new(blocks: u64) -> Tree {
        let mut levels = 0u8;
        while (FAN as u128) << (FAN_BITS * levels as u32) < blocks as u128 {
            levels += 1;
        }
        Tree {
            root: None,
            levels,
            mapped: 0,
            stored: 0,
        }
    }

    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// Blocks with data.
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped
    }

    /// Record bytes the mapped blocks occupy (shared ones included).
    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }

    /// True when both trees are the very same version (no write in between).
    pub fn same_as(&self, other: &Tree) -> bool {
        match (&self.root, &other.root) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    pub fn get(&self, index: u64) -> Entry {
        let mut node = match &self.root {
            Some(n) => n,
            None => return Entry::EMPTY,
        };
        let mut level = self.levels;
        loop {
            match &**node {
                Node::Leaf(entries) => return entries[slot(index, 0)],
                Node::Inner(children) => match &children[slot(index, level)] {
                    Some(child) => {
                        node = child;
                        level -= 1;
                    }
                    None => return Entry::EMPTY,
                },
            }
        }
    }

    /// Sets one entry, copying shared nodes on the way; returns the old one.
    pub fn set(&mut self, index: u64, entry: Entry) -> Entry {
        if self.root.is_none() && entry == Entry::EMPTY {
            return Entry::EMPTY;
        }
        let levels = self.levels;
        let mut node = self
            .root
            .get_or_insert_with(|| Arc::new(Node::empty(levels)));
        let mut level = levels;
        let old = loop {
            match Arc::make_mut(node) {
                Node::Leaf(entries) => {
                    let cell = &mut entries[slot(index, 0)];
                    break std::mem::replace(cell, entry);
                }
                Node::Inner(children) => {
                    let below = level - 1;
                    node = children[slot(index, level)]
                        .get_or_insert_with(|| Arc::new(Node::empty(below)));
                    level = below;
                }
            }
        };
        if old.is_mapped() {
            self.mapped -= 1;
            self.stored -= old.len as u64;
        }
        if entry.is_mapped() {
            self.mapped += 1;
            self.stored += entry.len as u64;
        }
        old
    }

    /// Calls `f(index, entry)` for every non-empty entry (tombstones
    /// included) with `start <= index < end`, in index order.
    pub fn for_each_in(&self, start: u64, end: u64, f: &mut dyn FnMut(u64, Entry)) {
        if let Some(root) = &self.root {
            walk(root, self.levels, 0, start, end, f);
        }
    }

    /// Indexes whose entries differ between `self` and `other`, in order.
    /// Shared subtrees are skipped, so the cost follows what changed.
    pub fn diff(&self, other: &Tree, f: &mut dyn FnMut(u64)) {
        let levels = self.levels.max(other.levels);
        let a = self.lift(levels);
        let b = other.lift(levels);
        diff_nodes(a.as_ref(), b.as_ref(), levels, 0, f);
    }

    /// The root seen as a tree of `levels` levels (a shallower tree is the
    /// left-most subtree of a deeper one).
    fn lift(&self, levels: u8) -> Option<Arc<Node>> {
        let mut node = self.root.clone()?;
        for level in self.levels + 1..=levels {
            let mut parent = Node::empty(level);
            if let Node::Inner(children) = &mut parent {
                children[0] = Some(node);
            }
            node = Arc::new(parent);
        }
        Some(node)
    }

    /// Calls `f` once per distinct node of this tree not yet in `seen`
    /// (by address), for each of its entries. Lets callers count shared
    /// structure once across many trees.
    pub fn for_each_unique(&self, seen: &mut HashSet<usize>, f: &mut dyn FnMut(Entry)) {
        if let Some(root) = &self.root {
            unique(root, seen, f);
        }
    }

    /// A copy with entries rewritten by `f` (None: unchanged). Subtrees
    /// without a rewritten entry are kept shared, and `memo` (keyed by node
    /// address) makes nodes shared between trees stay shared.
    pub fn remap(
        &self,
        f: &dyn Fn(Entry) -> Option<Entry>,
        memo: &mut HashMap<usize, Arc<Node>>,
    ) -> Tree {
        let root = self.root.as_ref().map(|r| remap_node(r, f, memo));
        Tree {
            root,
            levels: self.levels,
            mapped: self.mapped,
            stored: self.stored,
        }
    }

    /// Writes the distinct nodes of this tree into `table`; returns the
    /// root's id.
    pub fn export(&self, table: &mut NodeTable) -> Option<u32> {
        self.root.as_ref().map(|r| table.add(r))
    }

    /// Rebuilds a tree exported with [`Tree::export`].
    pub fn import(
        nodes: &[Arc<Node>],
        root: Option<u32>,
        blocks: u64,
    ) -> Result<Tree, &'static str> {
        let mut tree = Tree::new(blocks);
        if let Some(id) = root {
            let node = nodes.get(id as usize).ok_or("root id out of range")?;
            tree.root = Some(node.clone());
            let (mut mapped, mut stored) = (0u64, 0u64);
            // Count every entry, shared or not: walk without dedup.
            tree.for_each_in(0, u64::MAX, &mut |_, e| {
                if e.is_mapped() {
                    mapped += 1;
                    stored += e.len as u64;
                }
            });
            tree.mapped = mapped;
            tree.stored = stored;
        }
        Ok(tree)
    }
}

fn walk(node: &Node, level: u8, base: u64, start: u64, end: u64, f: &mut dyn FnMut(u64, Entry)) {
    let span = 1u64 << (FAN_BITS * level as u32);
    match node {
        Node::Leaf(entries) => {
            for (i, e) in entries.iter().enumerate() {
                let idx = base + i as u64;
                if e.generation != 0 && idx >= start && idx < end {
                    f(idx, *e);
                }
            }
        }
        Node::Inner(children) => {
            for (i, child) in children.iter().enumerate() {
                let child_base = base + i as u64 * span;
                let Some(child) = child else { continue };
                if child_base >= end || child_base.saturating_add(span) <= start {
                    continue;
                }
                walk(child, level - 1, child_base, start, end, f);
            }
        }
    }
}

fn diff_nodes(
    a: Option<&Arc<Node>>,
    b: Option<&Arc<Node>>,
    level: u8,
    base: u64,
    f: &mut dyn FnMut(u64),
) {
    if let (Some(x), Some(y)) = (a, b)
        && Arc::ptr_eq(x, y)
    {
        return;
    }
    let span = 1u64 << (FAN_BITS * level as u32);
    let empty_leaf = [Entry::EMPTY; FAN];
    match (a.map(|n| &**n), b.map(|n| &**n)) {
        (None, None) => {}
        (x, y) if level == 0 => {
            let xa = match x {
                Some(Node::Leaf(e)) => &**e,
                _ => &empty_leaf,
            };
            let ya = match y {
                Some(Node::Leaf(e)) => &**e,
                _ => &empty_leaf,
            };
            for i in 0..FAN {
                // A tombstone and a never-written block both read as zeroes.
                let (p, q) = (xa[i], ya[i]);
                let same = p == q || (!p.is_mapped() && !q.is_mapped());
                if !same {
                    f(base + i as u64);
                }
            }
        }
        (x, y) => {
            for i in 0..FAN {
                let cx = match x {
                    Some(Node::Inner(c)) => c[i].as_ref(),
                    _ => None,
                };
                let cy = match y {
                    Some(Node::Inner(c)) => c[i].as_ref(),
                    _ => None,
                };
                diff_nodes(cx, cy, level - 1, base + i as u64 * span, f);
            }
        }
    }
}

fn unique(node: &Arc<Node>, seen: &mut HashSet<usize>, f: &mut dyn FnMut(Entry)) {
    if !seen.insert(Arc::as_ptr(node) as usize) {
        return;
    }
    match &**node {
        Node::Leaf(entries) => entries
            .iter()
            .filter(|e| e.generation != 0)
            .for_each(|e| f(*e)),
        Node::Inner(children) => children.iter().flatten().for_each(|c| unique(c, seen, f)),
    }
}

fn remap_node(
    node: &Arc<Node>,
    f: &dyn Fn(Entry) -> Option<Entry>,
    memo: &mut HashMap<usize, Arc<Node>>,
) -> Arc<Node> {
    let key = Arc::as_ptr(node) as usize;
    if let Some(done) = memo.get(&key) {
        return done.clone();
    }
    let out = match &**node {
        Node::Leaf(entries) => {
            let mut changed = None::<Box<[Entry; FAN]>>;
            for (i, e) in entries.iter().enumerate() {
                if let Some(new) = f(*e) {
                    changed.get_or_insert_with(|| entries.clone())[i] = new;
                }
            }
            match changed {
                Some(c) => Arc::new(Node::Leaf(c)),
                None => node.clone(),
            }
        }
        Node::Inner(children) => {
            let mut changed = None::<Box<[Option<Arc<Node>>; FAN]>>;
            for (i, child) in children.iter().enumerate() {
                if let Some(child) = child {
                    let new = remap_node(child, f, memo);
                    if !Arc::ptr_eq(&new, child) {
                        changed.get_or_insert_with(|| children.clone())[i] = Some(new);
                    }
                }
            }
            match changed {
                Some(c) => Arc::new(Node::Inner(c)),
                None => node.clone(),
            }
        }
    };
    memo.insert(key, out.clone());
    out
}

/// A node as stored in a checkpoint: only the non-empty slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeRec {
    Inner(Vec<(u8, u32)>),
    Leaf(Vec<(u8, Entry)>),
}

/// Distinct nodes of many trees, children before parents, so shared
/// structure is written (and read back) once.
#[derive(Default)]
pub struct NodeTable {
    ids: HashMap<usize, u32>,
    pub nodes: Vec<NodeRec>,
    /// Keeps the nodes alive so addresses stay unique while exporting.
    pinned: Vec<Arc<Node>>,
}

impl NodeTable {
    fn add(&mut self, node: &Arc<Node>) -> u32 {
        let key = Arc::as_ptr(node) as usize;
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let rec = match &**node {
            Node::Leaf(entries) => NodeRec::Leaf(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.generation != 0)
                    .map(|(i, e)| (i as u8, *e))
                    .collect(),
            ),
            Node::Inner(children) => NodeRec::Inner(
                children
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.as_ref().map(|c| (i as u8, self.add(c))))
                    .collect(),
            ),
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(rec);
        self.ids.insert(key, id);
        self.pinned.push(node.clone());
        id
    }
}

/// Turns checkpointed nodes back into shared nodes. Every child id must
/// precede its parent.
pub fn build_nodes(recs: &[NodeRec]) -> Result<Vec<Arc<Node>>, &'static str> {
    let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(recs.len());
    for rec in recs {
        let node = match rec {
            NodeRec::Leaf(slots) => {
                let mut entries = Box::new([Entry::EMPTY; FAN]);
                for (i, e) in slots {
                    *entries.get_mut(*i as usize).ok_or("slot out of range")? = *e;
                }
                Node::Leaf(entries)
            }
            NodeRec::Inner(slots) => {
                let mut children: Box<[Option<Arc<Node>>; FAN]> =
                    Box::new(std::array::from_fn(|_| None));
                for (i, id) in slots {
                    let child = nodes.get(*id as usize).ok_or("child after parent")?;
                    *children.get_mut(*i as usize).ok_or("slot out of range")? =
                        Some(child.clone());
                }
                Node::Inner(children)
            }
        };
        nodes.push(Arc::new(node));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(generation: u64) -> Entry {
        Entry {
            generation,
            seg: 1,
            off: generation as u32 * 100,
            len: 100,
        }
    }

    #[test]
    fn clone_shares_until_written() {
        let mut a = Tree::new(1 << 28);
        a.set(5, e(1));
        a.set(1 << 27, e(2));
        let snap = a.clone();
        assert!(snap.same_as(&a));
        a.set(5, e(3));
        assert_eq!(snap.get(5), e(1));
        assert_eq!(a.get(5), e(3));
        let mut changed = vec![];
        a.diff(&snap, &mut |i| changed.push(i));
        assert_eq!(changed, vec![5]);
        assert_eq!(a.mapped_blocks(), 2);
        assert_eq!(a.stored_bytes(), 200);
    }

    #[test]
    fn export_import_keeps_sharing() {
        let mut a = Tree::new(4096);
        for i in 0..300 {
            a.set(i, e(i + 1));
        }
        let b = a.clone();
        a.set(7, Entry::tombstone(999));
        let mut table = NodeTable::default();
        let ra = a.export(&mut table);
        let rb = b.export(&mut table);
        let nodes = build_nodes(&table.nodes).unwrap();
        let a2 = Tree::import(&nodes, ra, 4096).unwrap();
        let b2 = Tree::import(&nodes, rb, 4096).unwrap();
        assert_eq!(a2.get(7), Entry::tombstone(999));
        assert_eq!(b2.get(7), e(8));
        assert_eq!(a2.mapped_blocks(), 299);
        let mut changed = vec![];
        a2.diff(&b2, &mut |i| changed.push(i));
        assert_eq!(changed, vec![7]);
    }

    #[test]
    fn remap_preserves_sharing() {
        let mut a = Tree::new(4096);
        for i in 0..200 {
            a.set(i, e(i + 1));
        }
        let b = a.clone();
        let mut memo = HashMap::new();
        let f = |x: Entry| (x.generation == 10).then_some(Entry { seg: 9, ..x });
        let a2 = a.remap(&f, &mut memo);
        let b2 = b.remap(&f, &mut memo);
        assert!(a2.same_as(&b2));
        assert_eq!(a2.get(9).seg, 9);
        assert_eq!(a.get(9).seg, 1);
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u64..5000, 0u64..4), 1..200)) {
            let mut tree = Tree::new(5000);
            let mut model = std::collections::BTreeMap::new();
            let mut snaps = vec![];
            for (n, (idx, op)) in ops.into_iter().enumerate() {
                let generation = n as u64 + 1;
                match op {
                    0 | 1 => { tree.set(idx, e(generation)); model.insert(idx, e(generation)); }
                    2 => { tree.set(idx, Entry::tombstone(generation)); model.insert(idx, Entry::tombstone(generation)); }
                    _ => snaps.push((tree.clone(), model.clone())),
                }
            }
            for (snap, m) in snaps.iter().chain(std::iter::once(&(tree.clone(), model.clone()))) {
                let mut seen = std::collections::BTreeMap::new();
                snap.for_each_in(0, u64::MAX, &mut |i, x| { seen.insert(i, x); });
                prop_assert_eq!(&seen, m);
                let mut d = vec![];
                snap.diff(&tree, &mut |i| d.push(i));
                let expect: Vec<u64> = (0..5000).filter(|i| {
                    let (p, q) = (snap.get(*i), tree.get(*i));
                    p != q && (p.is_mapped() || q.is_mapped())
                }).collect();
                prop_assert_eq!(d, expect);
            }
        }
    }
}
