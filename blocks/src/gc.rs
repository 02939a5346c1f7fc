//! Space accounting, compaction and scrubbing: everything that walks all
//! the trees of the pool.
//!
//! Compaction copies the live records of mostly-dead sealed segments to the
//! active segment (flagged *relocated*, so recovery never replays them as
//! writes), syncs them, repoints every tree in one pass (shared nodes are
//! rewritten once and stay shared), writes a checkpoint, and only then
//! deletes the old files. Writes go on meanwhile: they never land in a
//! sealed segment, and each volume is locked only while its trees are
//! repointed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::pool::{BadBlock, CompactStats, Inner, ScrubReport, SnapshotInfo, Volume, VolumeInfo};
use crate::record::{self, BLOCK, FLAG_RELOCATED, HEADER_LEN, Header};
use crate::segment::Segment;
use crate::tree::{Entry, Tree};
use crate::{Error, Result};

/// Every tree of a volume: the live one first, then its snapshots.
fn trees_of(vol: &Volume) -> Vec<(String, Tree)> {
    let st = vol.st.lock().unwrap();
    let mut out = vec![(vol.name.clone(), st.tree.clone())];
    for (name, s) in &st.snaps {
        out.push((format!("{}@{name}", vol.name), s.tree.clone()));
    }
    out
}

impl Inner {
    fn all_volumes(&self) -> Vec<Arc<Volume>> {
        self.catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .cloned()
            .collect()
    }

    /// Compacts sealed segments whose live bytes are below `threshold` of
    /// their length.
    pub fn compact(&self, threshold: f64) -> Result<CompactStats> {
        let _m = self.maintenance.lock().unwrap();
        // Capture the trees and the sealed segments at one instant, with no
        // write between taking its generation and updating its tree (a
        // record not yet in any tree would otherwise look dead).
        let (trees, sealed) = {
            let _w = self.quiesce.write().unwrap();
            let trees: Vec<Tree> = self
                .all_volumes()
                .iter()
                .flat_map(|v| trees_of(v).into_iter().map(|(_, t)| t))
                .collect();
            let active: HashSet<u32> = self.disks.iter().flat_map(|d| d.active_ids()).collect();
            let sealed: Vec<Arc<Segment>> = self
                .segments
                .map
                .read()
                .unwrap()
                .values()
                .filter(|s| s.sealed.load(Ordering::Acquire) && !active.contains(&s.id))
                .cloned()
                .collect();
            (trees, sealed)
        };
        // Live records per segment, each location counted once.
        let mut seen_nodes = HashSet::new();
        let mut seen_locs: HashSet<(u32, u32)> = HashSet::new();
        let mut live: HashMap<u32, Vec<Entry>> = HashMap::new();
        for tree in &trees {
            tree.for_each_unique(&mut seen_nodes, &mut |e| {
                if e.is_mapped() && seen_locs.insert(e.loc()) {
                    live.entry(e.seg).or_default().push(e);
                }
            });
        }
        drop((seen_nodes, trees));
        let victims: Vec<Arc<Segment>> = sealed
            .into_iter()
            .filter(|s| {
                let len = s.len.load(Ordering::Acquire);
                let used: u64 = live
                    .get(&s.id)
                    .map_or(0, |v| v.iter().map(|e| e.len as u64).sum());
                len == 0 || (used as f64) < threshold * len as f64
            })
            .collect();
        if victims.is_empty() {
            return Ok(CompactStats::default());
        }
        let mut stats = CompactStats::default();
        let mut moved: HashMap<(u32, u32), Entry> = HashMap::new();
        for seg in &victims {
            stats.bytes_freed += seg.len.load(Ordering::Acquire);
            let mut entries = live.remove(&seg.id).unwrap_or_default();
            entries.sort_by_key(|e| e.off);
            for batch in entries.chunks(256) {
                let mut buf = vec![];
                let mut offs = vec![];
                for e in batch {
                    let at = buf.len();
                    buf.resize(at + e.len as usize, 0);
                    seg.read(&mut buf[at..], e.off as u64)?;
                    // Mark it relocated; a record whose header is damaged is
                    // copied as it is and keeps failing its reads.
                    if let Some(mut h) = Header::read(&buf[at..]) {
                        h.flags |= FLAG_RELOCATED;
                        h.write(&mut buf[at..at + HEADER_LEN]);
                    }
                    offs.push((*e, at));
                }
                let disk = &self.disks[seg.disk as usize];
                let (dst, base) = {
                    let _q = self.quiesce.read().unwrap();
                    disk.append(
                        &*self.storage,
                        &self.segments,
                        self.opts.segment_bytes,
                        &buf,
                    )?
                };
                stats.bytes_moved += buf.len() as u64;
                for (e, at) in offs {
                    moved.insert(
                        e.loc(),
                        Entry {
                            seg: dst.id,
                            off: (base + at as u64) as u32,
                            ..e
                        },
                    );
                }
            }
        }
        self.flush_segments()?;
        // Repoint every tree; shared nodes once.
        let mut memo = HashMap::new();
        let remap = |e: Entry| {
            if e.is_mapped() {
                moved.get(&e.loc()).copied()
            } else {
                None
            }
        };
        for vol in self.all_volumes() {
            let mut st = vol.st.lock().unwrap();
            st.tree = st.tree.remap(&remap, &mut memo);
            for snap in st.snaps.values_mut() {
                snap.tree = snap.tree.remap(&remap, &mut memo);
            }
        }
        {
            let mut map = self.segments.map.write().unwrap();
            for seg in &victims {
                map.remove(&seg.id);
                self.disks[seg.disk as usize]
                    .used
                    .fetch_sub(seg.len.load(Ordering::Acquire), Ordering::Relaxed);
            }
        }
        stats.segments_freed = victims.len() as u64;
        self.checkpoint_locked(&victims)?;
        tracing::debug!(?stats, "compacted");
        Ok(stats)
    }
}

/// Volume facts, with the exclusive bytes of each snapshot: the records
/// that no other image (live volume, other snapshot, clone) references.
pub fn volume_info(inner: &Inner, name: &str) -> Result<VolumeInfo> {
    let vol = inner.volume(name)?;
    let (live, snaps) = {
        let st = vol.st.lock().unwrap();
        let snaps: Vec<(String, u64, Tree)> = st
            .snaps
            .iter()
            .map(|(n, s)| (n.clone(), s.created_ms, s.tree.clone()))
            .collect();
        (st.tree.clone(), snaps)
    };
    // Images of related volumes (clone sources and clones) can share
    // records with this one's.
    let mut related: Vec<Tree> = vec![];
    for other in inner.all_volumes() {
        let linked = other.id != vol.id
            && (other.origin.as_ref().is_some_and(|(src, _)| *src == vol.id)
                || vol.origin.as_ref().is_some_and(|(src, _)| *src == other.id));
        if linked {
            related.extend(trees_of(&other).into_iter().map(|(_, t)| t));
        }
    }
    // Image 0 is the live volume, then the snapshots.
    let images: Vec<&Tree> = std::iter::once(&live)
        .chain(snaps.iter().map(|s| &s.2))
        .collect();
    let exclusive_of = |i: usize| {
        let others: Vec<&Tree> = images
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .chain(related.iter())
            .collect();
        exclusive_bytes(images[i], &others)
    };
    let infos = snaps
        .iter()
        .enumerate()
        .map(|(i, (sname, created_ms, tree))| SnapshotInfo {
            name: sname.clone(),
            created_ms: *created_ms,
            allocated_bytes: tree.stored_bytes(),
            exclusive_bytes: exclusive_of(i + 1),
        })
        .collect();
    let origin = vol.origin.as_ref().map(|(src, snap)| {
        let src_name = inner
            .catalog
            .read()
            .unwrap()
            .by_id
            .get(src)
            .map_or_else(|| format!("#{src}"), |v| v.name.clone());
        format!("{src_name}@{snap}")
    });
    Ok(VolumeInfo {
        name: vol.name.clone(),
        size_bytes: vol.size,
        allocated_bytes: live.stored_bytes(),
        exclusive_bytes: exclusive_of(0),
        compression: vol.opts.compression,
        encrypted: vol.opts.encrypt,
        origin,
        snapshots: infos,
    })
}

/// Record bytes of `tree` that none of `others` references. Candidates come
/// from a diff against the first other image, so shared history is skipped.
fn exclusive_bytes(tree: &Tree, others: &[&Tree]) -> u64 {
    let Some((first, rest)) = others.split_first() else {
        return tree.stored_bytes();
    };
    let mut candidates = vec![];
    tree.diff(first, &mut |b| candidates.push(b));
    candidates
        .into_iter()
        .map(|b| (b, tree.get(b)))
        .filter(|(_, e)| e.is_mapped())
        .filter(|(b, e)| {
            rest.iter().all(|o| {
                let x = o.get(*b);
                !(x.is_mapped() && x.loc() == e.loc())
            })
        })
        .map(|(_, e)| e.len as u64)
        .sum()
}

/// Reads every distinct record of a volume's images and checks it.
pub fn scrub(inner: &Inner, name: &str) -> Result<ScrubReport> {
    let vol = inner.volume(name)?;
    let cipher = if vol.opts.encrypt {
        match (&inner.cipher, vol.key_check, inner.key_check) {
            (Some(c), Some(a), Some(b)) if a == b => Some(c),
            _ => None,
        }
    } else {
        None
    };
    let mut report = ScrubReport {
        volume: vol.name.clone(),
        checked_blocks: 0,
        bad_blocks: vec![],
    };
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    let mut block = vec![0u8; BLOCK];
    let mut raw = vec![];
    for (image, tree) in trees_of(&vol) {
        let mut items = vec![];
        tree.for_each_in(0, u64::MAX, &mut |i, e| {
            if e.is_mapped() && seen.insert(e.loc()) {
                items.push((i, e));
            }
        });
        for (lba, e) in items {
            report.checked_blocks += 1;
            let problem = match inner.segments.get(e.seg) {
                None => Some("segment is missing".to_owned()),
                Some(seg) => {
                    raw.resize(e.len as usize, 0);
                    match seg.read(&mut raw, e.off as u64) {
                        Err(err) => Some(err.to_string()),
                        // Without the key only the checksums can be checked.
                        Ok(()) if vol.opts.encrypt && cipher.is_none() => {
                            record::check_record(&raw).err().map(|d| d.to_string())
                        }
                        Ok(()) => record::decode_block(&raw, lba, cipher, &mut block)
                            .err()
                            .map(|d| d.to_string()),
                    }
                }
            };
            if let Some(reason) = problem {
                report.bad_blocks.push(BadBlock {
                    image: image.clone(),
                    offset: lba * BLOCK as u64,
                    reason,
                });
            }
        }
    }
    if vol.deleted.load(Ordering::Acquire) {
        return Err(Error::VolumeNotFound {
            volume: name.to_owned(),
        });
    }
    Ok(report)
}
