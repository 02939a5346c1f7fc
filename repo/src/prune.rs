//! [`Repo::prune`]: keeps the newest `keep_last` manifests of each app,
//! deletes the others, then deletes packs no manifest references and
//! repacks packs that are partly garbage.
//!
//! Order, for crash safety: manifests are deleted first (a crash leaves
//! unreferenced packs, which the next prune removes); a repacked pack's
//! chunks are stored in a new pack before the old one is deleted (a crash
//! leaves duplicates, harmless). Blobs are copied sealed as they are (a
//! blob's seal binds it to its chunk id, not to its pack) after being
//! verified. Memory: the set of referenced chunk ids, one pack read and one
//! being written. Must not overlap a push to the same repository.

use std::collections::HashSet;

use bytes::Bytes;
use serde::Serialize;

use super::error::{Error, Result};
use super::format::{self, MANIFESTS, PACKS, PackWriter};
use super::index::read_pack_index;
use super::{ChunkRef, Repo, store};

/// A pack is repacked when more than this share of its blob bytes is
/// garbage (and deleted when all of it is).
pub const REPACK_GARBAGE_PERCENT: u64 = 10;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub manifests_kept: u64,
    pub manifests_deleted: Vec<String>,
    pub packs_kept: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Store bytes before minus after.
    pub freed_bytes: i64,
}

impl Repo {
    pub fn prune(&self, keep_last: usize) -> Result<PruneReport> {
        if keep_last == 0 {
            return Err(Error::InvalidArgument(
                "prune: keep_last must be at least 1".into(),
            ));
        }
        let mut report = PruneReport::default();
        // Newest first per app; everything past keep_last goes.
        let (mut all, unreadable) = self.list_all()?;
        // A manifest it cannot read may reference any pack: deleting
        // "unreferenced" data could destroy that snapshot.
        if let Some((key, e)) = unreadable.into_iter().next() {
            return Err(Error::corrupted(
                key,
                None,
                format!(
                    "prune refused: this manifest cannot be read ({e}); run repo check, then \
                     delete the object by hand if it is not wanted"
                ),
            ));
        }
        all.sort_by(|a, b| (&a.app, b.created_ms, &b.id).cmp(&(&b.app, a.created_ms, &a.id)));
        let mut kept: Vec<String> = vec![];
        let mut seen_app: Option<String> = None;
        let mut n = 0;
        for m in all {
            if seen_app.as_deref() != Some(&m.app) {
                seen_app = Some(m.app.clone());
                n = 0;
            }
            n += 1;
            if n <= keep_last {
                kept.push(m.id);
            } else {
                self.store.delete(&format!("{MANIFESTS}{}", m.id))?;
                report.manifests_deleted.push(m.id);
            }
        }
        report.manifests_kept = kept.len() as u64;
        let mut referenced: HashSet<[u8; 32]> = HashSet::new();
        for id in &kept {
            for volume in self.manifest(id)?.volumes {
                referenced.extend(volume.chunks.iter().filter_map(|c| match c {
                    ChunkRef::Data(id) => Some(*id),
                    ChunkRef::Hole => None,
                }));
            }
        }
        let mut writer = PackWriter::new();
        // Old packs whose live blobs sit in `writer`, deleted once it is stored.
        let mut superseded: Vec<String> = vec![];
        // Chunks already kept or copied: a duplicate is not copied again.
        let mut placed: HashSet<[u8; 32]> = HashSet::new();
        let mut before = 0u64;
        let mut after = 0u64;
        let mut packs = vec![];
        store::for_each_object(&*self.store, PACKS, |o| -> Result<()> {
            packs.push(o);
            Ok(())
        })?;
        for pack in packs {
            before += pack.size;
            let entries = match read_pack_index(
                &*self.store,
                &self.keys,
                &format::Bounds::of(&self.config),
                &pack.key,
                pack.size,
            ) {
                Ok(entries) => entries,
                Err(Error::Corrupted { .. }) => {
                    // Left for `check` to report and a person to decide.
                    tracing::warn!(pack = %pack.key, "prune: unreadable pack index; pack kept");
                    report.packs_kept += 1;
                    after += pack.size;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let blob_bytes: u64 = entries.iter().map(|e| e.len as u64).sum();
            let live: Vec<_> = entries
                .iter()
                .filter(|e| referenced.contains(&e.id) && !placed.contains(&e.id))
                .collect();
            let live_bytes: u64 = live.iter().map(|e| e.len as u64).sum();
            if live.is_empty() {
                self.store.delete(&pack.key)?;
                report.packs_deleted += 1;
            } else if (blob_bytes - live_bytes) * 100 <= blob_bytes * REPACK_GARBAGE_PERCENT {
                placed.extend(live.iter().map(|e| e.id));
                report.packs_kept += 1;
                after += pack.size;
            } else {
                let max = format::Bounds::of(&self.config).max_pack_bytes();
                let bytes = self.store.get(&pack.key, max)?;
                for entry in live {
                    let blob = bytes
                        .get(entry.offset as usize..(entry.offset + entry.len) as usize)
                        .ok_or_else(|| {
                            Error::corrupted(
                                &pack.key,
                                Some(entry.offset as u64),
                                "pack is shorter than its index says",
                            )
                        })?;
                    format::open_chunk(&self.keys, &pack.key, entry.offset as u64, entry, blob)?;
                    writer.add(entry.id, blob, entry.raw_len as usize);
                    placed.insert(entry.id);
                    // Sealed at the entry cap even mid-pack; this pack is
                    // deleted only once all its live blobs are stored.
                    if writer.n_entries() >= format::MAX_PACK_ENTRIES {
                        after += self.store_pack(
                            std::mem::take(&mut writer),
                            &mut superseded,
                            &mut report,
                        )?;
                    }
                }
                superseded.push(pack.key.clone());
                report.packs_repacked += 1;
                if writer.is_full(self.config.pack_bytes) {
                    after +=
                        self.store_pack(std::mem::take(&mut writer), &mut superseded, &mut report)?;
                }
            }
        }
        after += self.store_pack(writer, &mut superseded, &mut report)?;
        report.freed_bytes = before as i64 - after as i64;
        Ok(report)
    }

    /// Stores a repacked pack, then deletes the packs it replaces.
    fn store_pack(
        &self,
        writer: PackWriter,
        superseded: &mut Vec<String>,
        report: &mut PruneReport,
    ) -> Result<u64> {
        let mut size = 0;
        if !writer.is_empty() {
            let (key, bytes, _) = writer.finish(&self.keys);
            size = bytes.len() as u64;
            self.store.put(&key, Bytes::from(bytes))?;
            report.packs_written += 1;
        }
        for old in superseded.drain(..) {
            self.store.delete(&old)?;
        }
        Ok(size)
    }
}
