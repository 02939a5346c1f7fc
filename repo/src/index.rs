//! [`ChunkIndex`]: which pack holds each chunk, rebuilt from the store by
//! listing `packs/` and reading every pack's index (its tail: one ranged
//! read per pack, two when the index is larger than [`TAIL_READ`]).
//!
//! This is the one structure whose size grows with the repository: about
//! 100 bytes per stored chunk (a 32-byte id, a 48-byte location, hash-map
//! overhead: ~100 MiB per TiB at 1 MiB chunks). Everything
//! else a push, pull, check or prune holds is bounded by a pack or a
//! manifest.
//!
//! Rebuilding from the packs themselves, not from a separate index object,
//! is what makes a push resumable: a pack that reached the store before a
//! crash is found again, and its chunks are not uploaded twice. A pack whose
//! index cannot be read is set aside in [`ChunkIndex::bad_packs`] (its
//! chunks count as missing, so a push uploads them again; `check` reports
//! it).

use std::collections::HashMap;

use super::error::{Error, Result};
use super::format::{self, Bounds, IndexEntry, PACK_TRAILER, PACKS};
use super::key::Keys;
use super::store::{self, ObjectStore};

/// Bytes read from a pack's end, hoping to get the trailer and the index in
/// one request.
pub const TAIL_READ: u64 = 64 << 10;
/// Pack indexes read at once.
pub const LOAD_THREADS: usize = 4;

/// A chunk's place: pack number (into [`ChunkIndex::packs`]) and blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub entry: IndexEntry,
}

#[derive(Default)]
pub struct ChunkIndex {
    /// Pack object keys and sizes, in listing order.
    pub packs: Vec<(String, u64)>,
    chunks: HashMap<[u8; 32], Location>,
    /// Packs whose index could not be read, with why.
    pub bad_packs: Vec<(String, Error)>,
}

/// Reads and opens the index of pack `key` of `size` bytes.
/// `size` is the listing's (a store may lie): every read is checked
/// against what was asked, and the trailer's lengths are bounded before
/// the index is read.
pub fn read_pack_index(
    store: &dyn ObjectStore,
    keys: &Keys,
    bounds: &Bounds,
    key: &str,
    size: u64,
) -> Result<Vec<IndexEntry>> {
    let tail_len = size.min(TAIL_READ);
    let tail = store.get_range(key, size - tail_len, tail_len)?;
    if tail.len() as u64 != tail_len {
        return Err(Error::corrupted(
            key,
            None,
            "pack is shorter than its listed size",
        ));
    }
    let (offset, len) = format::parse_trailer(key, size, &tail)?;
    let index_end = size - PACK_TRAILER as u64;
    let sealed = if offset >= size - tail_len {
        let start = (offset - (size - tail_len)) as usize;
        tail[start..start + len as usize].to_vec()
    } else {
        let sealed = store.get_range(key, offset, len)?;
        if sealed.len() as u64 != len {
            return Err(Error::corrupted(
                key,
                Some(offset),
                "pack is shorter than its trailer says",
            ));
        }
        sealed
    };
    debug_assert_eq!(offset + len, index_end);
    format::open_index(keys, bounds, key, offset, size, &sealed)
}

impl ChunkIndex {
    /// Lists and reads every pack. Store errors stop it; a damaged pack is
    /// only set aside.
    pub fn load(store: &dyn ObjectStore, keys: &Keys, bounds: &Bounds) -> Result<ChunkIndex> {
        let mut listed = vec![];
        store::for_each_object(store, PACKS, |object| -> Result<()> {
            listed.push(object);
            Ok(())
        })?;
        // Reads are latency-bound: LOAD_THREADS at once, each on a stripe.
        let read: Vec<Vec<(usize, Result<Vec<IndexEntry>>)>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..LOAD_THREADS)
                .map(|t| {
                    let listed = &listed;
                    scope.spawn(move || {
                        (t..listed.len())
                            .step_by(LOAD_THREADS)
                            .map(|i| {
                                let object = &listed[i];
                                (
                                    i,
                                    read_pack_index(store, keys, bounds, &object.key, object.size),
                                )
                            })
                            .collect()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("index readers do not panic"))
                .collect()
        });
        let mut read: Vec<(usize, Result<Vec<IndexEntry>>)> = read.into_iter().flatten().collect();
        read.sort_by_key(|(i, _)| *i);
        let mut index = ChunkIndex::default();
        for ((_, result), object) in read.into_iter().zip(listed) {
            match result {
                Ok(entries) => index.add_pack(object.key, object.size, &entries),
                Err(e @ Error::Corrupted { .. }) => {
                    tracing::warn!(pack = %object.key, error = %e, "pack index unreadable; its chunks count as missing");
                    index.bad_packs.push((object.key, e));
                }
                Err(Error::Store(store::Error::NotFound { .. })) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(index)
    }

    /// Records a pack and its chunks (a chunk already known keeps its first
    /// place).
    pub fn add_pack(&mut self, key: String, size: u64, entries: &[IndexEntry]) {
        let pack = u32::try_from(self.packs.len()).expect("fewer than 2^32 packs");
        self.packs.push((key, size));
        for entry in entries {
            self.chunks.entry(entry.id).or_insert(Location {
                pack,
                entry: *entry,
            });
        }
    }

    pub fn get(&self, id: &[u8; 32]) -> Option<Location> {
        self.chunks.get(id).copied()
    }

    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.chunks.contains_key(id)
    }

    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    pub fn pack_key(&self, pack: u32) -> &str {
        &self.packs[pack as usize].0
    }

    /// Bytes of every readable pack.
    pub fn stored_bytes(&self) -> u64 {
        self.packs.iter().map(|(_, size)| size).sum()
    }
}
