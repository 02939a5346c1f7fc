//! Durability of the pool's metadata: the meta log, checkpoints, and
//! recovery.
//!
//! - `meta.log`: framed records `[len u32][sum u64][postcard (generation, MetaOp)]`,
//!   appended and synced before a metadata operation returns. A bad frame
//!   ends the log (a torn tail).
//! - `checkpoint`: `"CAIRNCK1"`, blake3 of the body, postcard body: every
//!   tree (shared nodes once), the segment table with each segment's length
//!   at capture, and the generation it covers.
//! - Recovery: load the checkpoint, scan each segment from its checkpointed
//!   length (new segments from 0), read the meta log, sort everything newer
//!   than the checkpoint by generation and apply it. Then write a new
//!   checkpoint, so recovery work is bounded by one checkpoint interval.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::pool::{
    Catalog, Inner, MetaOp, PoolOptions, Snap, VolState, Volume, VolumeOptions, apply_meta,
};
use crate::record::{BLOCK, Cipher, KIND_DATA, KIND_TRIM};
use crate::segment::{self, Disk, Segment, Segments};
use crate::storage::{Storage, StorageFile};
use crate::tree::{self, Entry, NodeRec, NodeTable, Tree};
use crate::{Error, Result};

const CHECKPOINT_MAGIC: &[u8; 8] = b"CAIRNCK1";
const FRAME_HEADER: usize = 12;
/// Largest meta record accepted when reading the log back.
const MAX_META_RECORD: usize = 1 << 20;

/// The append-only log of metadata operations since the last checkpoint.
pub struct MetaLog {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    end: u64,
}

impl MetaLog {
    /// Appends records and syncs; on failure the log is cut back.
    pub fn append(&mut self, recs: &[(u64, MetaOp)]) -> Result<()> {
        let mut buf = vec![];
        for rec in recs {
            frame(&mut buf, rec)?;
        }
        let result = self
            .file
            .write_all_at(&buf, self.end)
            .and_then(|()| self.file.sync());
        if let Err(e) = result {
            let _ = self.file.truncate(self.end);
            return Err(Error::io(&self.path, e));
        }
        self.end += buf.len() as u64;
        Ok(())
    }
}

fn frame(buf: &mut Vec<u8>, rec: &(u64, MetaOp)) -> Result<()> {
    let body = postcard::to_stdvec(rec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crate::record::sum(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

/// Reads whole frames; stops at the first bad one. Returns them and the end
/// of the last good frame.
fn read_meta(bytes: &[u8]) -> (Vec<(u64, MetaOp)>, u64) {
    let mut out = vec![];
    let mut pos = 0usize;
    while let Some(h) = bytes.get(pos..pos + FRAME_HEADER) {
        let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
        let sum = u64::from_le_bytes(h[4..12].try_into().unwrap());
        if len > MAX_META_RECORD {
            break;
        }
        let Some(body) = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
            break;
        };
        if crate::record::sum(body) != sum {
            break;
        }
        let Ok(rec) = postcard::from_bytes::<(u64, MetaOp)>(body) else {
            break;
        };
        out.push(rec);
        pos += FRAME_HEADER + len;
    }
    (out, pos as u64)
}

#[derive(Serialize, Deserialize)]
struct SnapRec {
    name: String,
    id: u64,
    created_ms: u64,
    root: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct VolRec {
    id: u64,
    name: String,
    size: u64,
    opts: VolumeOptions,
    key_check: Option<[u8; 16]>,
    origin: Option<(u64, String)>,
    root: Option<u32>,
    placement: Vec<(u32, u16)>,
    snaps: Vec<SnapRec>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointBody {
    version: u32,
    /// Every generation up to this one is reflected in the trees.
    generation: u64,
    next_volume: u64,
    next_segment: u32,
    disks: Vec<PathBuf>,
    /// (segment id, disk, length at capture).
    segments: Vec<(u32, u16, u64)>,
    nodes: Vec<NodeRec>,
    volumes: Vec<VolRec>,
}

fn checkpoint_path(root: &Path) -> PathBuf {
    root.join("checkpoint")
}

fn meta_path(root: &Path) -> PathBuf {
    root.join("meta.log")
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Corrupted {
        volume: String::new(),
        offset: 0,
        reason: format!("{what}: {reason}"),
    }
}

fn load_checkpoint(storage: &dyn Storage, root: &Path) -> Result<Option<CheckpointBody>> {
    let path = checkpoint_path(root);
    let Some(bytes) = storage.read_all(&path).map_err(|e| Error::io(&path, e))? else {
        return Ok(None);
    };
    if bytes.len() < 40 || &bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(corrupt("checkpoint", "bad magic"));
    }
    let body = &bytes[40..];
    if blake3::hash(body).as_bytes() != &bytes[8..40] {
        return Err(corrupt("checkpoint", "checksum mismatch"));
    }
    postcard::from_bytes(body)
        .map(Some)
        .map_err(|e| corrupt("checkpoint", e))
}

/// One thing to replay, ordered by generation.
enum Replay {
    Data {
        volume: u64,
        lba: u64,
        entry: Entry,
    },
    Trim {
        volume: u64,
        lba: u64,
        count: u64,
        generation: u64,
    },
    Meta(MetaOp),
}

/// Opens the pool at `root`: see the module docs.
pub fn recover(root: PathBuf, mut opts: PoolOptions) -> Result<Inner> {
    // Offsets in the map are 32-bit.
    opts.segment_bytes = opts.segment_bytes.clamp(16 << 10, 1 << 30);
    let storage = opts.storage.clone();
    storage
        .create_dir_all(&root)
        .map_err(|e| Error::io(&root, e))?;
    let ckpt = load_checkpoint(&*storage, &root)?;
    let disk_dirs: Vec<PathBuf> = match &ckpt {
        Some(c) => c.disks.clone(),
        None if opts.disks.is_empty() => vec![root.clone()],
        None => opts.disks.clone(),
    };
    let disks: Vec<Disk> = disk_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| Disk::new(i as u16, d.clone()))
        .collect();
    for d in &disks {
        let dir = segment::segment_dir(&d.dir);
        storage
            .create_dir_all(&dir)
            .map_err(|e| Error::io(&dir, e))?;
    }

    // The checkpointed state.
    let mut catalog = Catalog::default();
    let (ckpt_gen, mut next_volume, ckpt_next_seg, ckpt_segs) = match &ckpt {
        Some(c) => {
            let nodes = tree::build_nodes(&c.nodes).map_err(|e| corrupt("checkpoint", e))?;
            for v in &c.volumes {
                let blocks = v.size.div_ceil(BLOCK as u64);
                let tree =
                    Tree::import(&nodes, v.root, blocks).map_err(|e| corrupt("checkpoint", e))?;
                let mut snaps = BTreeMap::new();
                for s in &v.snaps {
                    let tree = Tree::import(&nodes, s.root, blocks)
                        .map_err(|e| corrupt("checkpoint", e))?;
                    snaps.insert(
                        s.name.clone(),
                        Snap {
                            id: s.id,
                            created_ms: s.created_ms,
                            tree,
                        },
                    );
                }
                let st = VolState {
                    tree,
                    placement: v.placement.iter().copied().collect(),
                    snaps,
                };
                let vol = Arc::new(Volume::new(
                    v.id,
                    v.name.clone(),
                    v.size,
                    v.opts,
                    v.key_check,
                    v.origin.clone(),
                    st,
                ));
                catalog.by_name.insert(v.name.clone(), vol.clone());
                catalog.by_id.insert(v.id, vol);
            }
            let segs: HashMap<u32, (u16, u64)> = c
                .segments
                .iter()
                .map(|(id, d, len)| (*id, (*d, *len)))
                .collect();
            (c.generation, c.next_volume, c.next_segment, segs)
        }
        None => (0, 1, 0, HashMap::new()),
    };

    // Segment tails.
    let mut replay: Vec<(u64, Replay)> = vec![];
    let mut max_gen = ckpt_gen;
    let mut next_seg = ckpt_next_seg;
    let segments = Segments::default();
    for disk in &disks {
        let dir = segment::segment_dir(&disk.dir);
        for name in storage.list(&dir).map_err(|e| Error::io(&dir, e))? {
            let Some(id) = segment::parse_segment_name(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let from = match ckpt_segs.get(&id) {
                Some((_, len)) => *len,
                None if id >= ckpt_next_seg => 0,
                None => {
                    // Freed by a compaction whose checkpoint landed.
                    let _ = storage.remove(&path);
                    continue;
                }
            };
            let file = storage
                .open(&path, false)
                .map_err(|e| Error::io(&path, e))?;
            let (recs, end) = segment::scan(&*file, from).map_err(|e| Error::io(&path, e))?;
            for r in recs {
                let h = r.header;
                max_gen = max_gen.max(h.generation);
                if h.generation <= ckpt_gen || h.relocated() {
                    continue;
                }
                let item = match h.kind {
                    KIND_DATA => Replay::Data {
                        volume: h.volume,
                        lba: h.lba,
                        entry: Entry {
                            generation: h.generation,
                            seg: id,
                            off: r.off as u32,
                            len: h.record_len() as u32,
                        },
                    },
                    KIND_TRIM => {
                        let mut count = [0u8; 8];
                        file.read_at(&mut count, r.off + crate::record::HEADER_LEN as u64)
                            .map_err(|e| Error::io(&path, e))?;
                        Replay::Trim {
                            volume: h.volume,
                            lba: h.lba,
                            count: u64::from_le_bytes(count),
                            generation: h.generation,
                        }
                    }
                    _ => continue,
                };
                replay.push((h.generation, item));
            }
            disk.used.fetch_add(end, Ordering::Relaxed);
            next_seg = next_seg.max(id + 1);
            segments.map.write().unwrap().insert(
                id,
                Arc::new(Segment {
                    id,
                    disk: disk.index,
                    path,
                    file,
                    len: AtomicU64::new(end),
                    dirty: AtomicBool::new(false),
                    sealed: AtomicBool::new(true),
                }),
            );
        }
    }
    segments.next_id.store(next_seg, Ordering::Release);

    // The meta log.
    let mpath = meta_path(&root);
    let mfile = storage
        .open(&mpath, true)
        .map_err(|e| Error::io(&mpath, e))?;
    let mlen = mfile.size().map_err(|e| Error::io(&mpath, e))?;
    let mut mbytes = vec![0u8; mlen as usize];
    mfile
        .read_at(&mut mbytes, 0)
        .map_err(|e| Error::io(&mpath, e))?;
    let (metas, mend) = read_meta(&mbytes);
    for (generation, op) in metas {
        max_gen = max_gen.max(generation);
        if generation > ckpt_gen {
            replay.push((generation, Replay::Meta(op)));
        }
    }
    if mend < mlen {
        mfile.truncate(mend).map_err(|e| Error::io(&mpath, e))?;
    }

    replay.sort_by_key(|(generation, _)| *generation);
    let replayed = replay.len();
    for (_, item) in replay {
        match item {
            Replay::Meta(op) => {
                if let MetaOp::CreateVolume { id, .. }
                | MetaOp::Clone { id, .. }
                | MetaOp::Snapshot { id, .. } = &op
                {
                    next_volume = next_volume.max(id + 1);
                }
                apply_meta(&mut catalog, op)?;
            }
            Replay::Data { volume, lba, entry } => {
                let Some(vol) = catalog.by_id.get(&volume) else {
                    continue;
                };
                if lba >= vol.blocks() {
                    continue;
                }
                let disk = segments.get(entry.seg).map(|s| s.disk).unwrap_or(0);
                let mut st = vol.st.lock().unwrap();
                st.placement.entry((lba >> 18) as u32).or_insert(disk);
                if st.tree.get(lba).generation < entry.generation {
                    st.tree.set(lba, entry);
                }
            }
            Replay::Trim {
                volume,
                lba,
                count,
                generation,
            } => {
                let Some(vol) = catalog.by_id.get(&volume) else {
                    continue;
                };
                let end = lba.saturating_add(count).min(vol.blocks());
                crate::pool::apply_trim(&mut vol.st.lock().unwrap().tree, lba, end, generation);
            }
        }
    }
    if replayed > 0 {
        tracing::info!(replayed, "recovered the pool from its logs");
    }

    let cipher = opts.key.as_ref().map(Cipher::new);
    let key_check = opts.key.as_ref().map(Cipher::check_value);
    let inner = Inner {
        root,
        storage: storage.clone(),
        disks,
        segments,
        catalog: RwLock::new(catalog),
        generation: AtomicU64::new(max_gen + 1),
        next_volume: AtomicU64::new(next_volume),
        quiesce: RwLock::new(()),
        meta: Mutex::new(MetaLog {
            path: mpath,
            file: mfile,
            end: mend,
        }),
        cipher,
        key_check,
        since_checkpoint: AtomicU64::new(0),
        maintenance: Mutex::new(()),
        opts,
    };
    inner.checkpoint()?;
    Ok(inner)
}

impl Inner {
    /// Writes a checkpoint of every tree, then drops the meta records it
    /// covers.
    pub fn checkpoint(&self) -> Result<()> {
        let _m = self.maintenance.lock().unwrap();
        self.checkpoint_locked(&[])
    }

    /// Checkpoint with `maintenance` held; deletes `doomed` segment files
    /// once the checkpoint no longer references them.
    pub fn checkpoint_locked(&self, doomed: &[Arc<Segment>]) -> Result<()> {
        struct Captured {
            vol: Arc<Volume>,
            tree: Tree,
            placement: Vec<(u32, u16)>,
            snaps: Vec<(String, Snap)>,
        }
        let (generation, next_volume, segs, vols) = {
            let _w = self.quiesce.write().unwrap();
            let generation = self.generation.load(Ordering::Acquire) - 1;
            let segs: Vec<(u32, u16, u64)> = self
                .segments
                .map
                .read()
                .unwrap()
                .values()
                .map(|s| (s.id, s.disk, s.len.load(Ordering::Acquire)))
                .collect();
            let vols: Vec<Captured> = self
                .catalog
                .read()
                .unwrap()
                .by_name
                .values()
                .map(|vol| {
                    let st = vol.st.lock().unwrap();
                    Captured {
                        vol: vol.clone(),
                        tree: st.tree.clone(),
                        placement: st.placement.iter().map(|(a, b)| (*a, *b)).collect(),
                        snaps: st
                            .snaps
                            .iter()
                            .map(|(n, s)| (n.clone(), s.clone()))
                            .collect(),
                    }
                })
                .collect();
            self.since_checkpoint.store(0, Ordering::Relaxed);
            (
                generation,
                self.next_volume.load(Ordering::Acquire),
                segs,
                vols,
            )
        };
        // Everything the trees point at must be durable first.
        self.flush_segments()?;
        let mut table = NodeTable::default();
        let volumes: Vec<VolRec> = vols
            .iter()
            .map(|c| VolRec {
                id: c.vol.id,
                name: c.vol.name.clone(),
                size: c.vol.size,
                opts: c.vol.opts,
                key_check: c.vol.key_check,
                origin: c.vol.origin.clone(),
                root: c.tree.export(&mut table),
                placement: c.placement.clone(),
                snaps: c
                    .snaps
                    .iter()
                    .map(|(name, s)| SnapRec {
                        name: name.clone(),
                        id: s.id,
                        created_ms: s.created_ms,
                        root: s.tree.export(&mut table),
                    })
                    .collect(),
            })
            .collect();
        let body = CheckpointBody {
            version: 1,
            generation,
            next_volume,
            next_segment: self.segments.next_id.load(Ordering::Acquire),
            disks: self.disks.iter().map(|d| d.dir.clone()).collect(),
            segments: segs,
            nodes: std::mem::take(&mut table.nodes),
            volumes,
        };
        let body = postcard::to_stdvec(&body).map_err(|e| corrupt("checkpoint", e))?;
        let mut bytes = Vec::with_capacity(body.len() + 40);
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        let path = checkpoint_path(&self.root);
        self.storage
            .write_atomic(&path, &bytes)
            .map_err(|e| Error::io(&path, e))?;
        self.trim_meta_log(generation)?;
        for seg in doomed {
            if let Err(e) = self.storage.remove(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "cannot remove a freed segment");
            }
        }
        Ok(())
    }

    /// Rewrites the meta log without the records a checkpoint covers.
    fn trim_meta_log(&self, upto: u64) -> Result<()> {
        let mut meta = self.meta.lock().unwrap();
        let mut bytes = vec![0u8; meta.end as usize];
        meta.file
            .read_at(&mut bytes, 0)
            .map_err(|e| Error::io(&meta.path, e))?;
        let (recs, _) = read_meta(&bytes);
        let mut keep = vec![];
        for rec in recs.iter().filter(|(g, _)| *g > upto) {
            frame(&mut keep, rec)?;
        }
        if keep.len() as u64 == meta.end {
            return Ok(());
        }
        self.storage
            .write_atomic(&meta.path, &keep)
            .map_err(|e| Error::io(&meta.path, e))?;
        meta.file = self
            .storage
            .open(&meta.path, false)
            .map_err(|e| Error::io(&meta.path, e))?;
        meta.end = keep.len() as u64;
        Ok(())
    }
}
