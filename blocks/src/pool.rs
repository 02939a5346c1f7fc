//! The log-structured pool: thin volumes over one or more disks, with O(1)
//! snapshots, clones and rollbacks. See `blocks/docs/design.md` for the
//! on-disk format and the crash analysis.
//!
//! # Shape
//! - A volume is a [`Tree`] (block index → record location) plus named
//!   snapshot trees. Snapshot, clone and rollback clone a tree: O(1).
//! - A write encodes blocks into records (checksummed, compressed,
//!   optionally encrypted), appends them to the segment of the disk its
//!   1 GiB slice is placed on, then points the tree at them.
//! - Metadata operations (create, delete, snapshot, clone, rollback) are
//!   appended to `meta.log` and synced before they return. A checkpoint
//!   writes every tree; recovery loads it and replays, in generation order,
//!   the meta log and the segment tails written after it.
//!
//! # Invariants
//! - Generations are unique and increase; a tree entry is only replaced by
//!   one with a higher generation, so live state equals replayed state.
//! - Writers hold the volume's `gate` (entered, for the whole request) and
//!   `quiesce` (shared) from taking a generation until the tree points at
//!   the record. A checkpoint takes `quiesce` exclusively; snapshots,
//!   rollbacks, deletes and leased fences close the `gate` (the I/O fence,
//!   `fence.rs`). Flushes of a writable export enter the gate too.
//! - Lock order: gate → rmw → quiesce → catalog → volume state →
//!   segments/disk writer → meta log. The gate is first because a fence
//!   holds it across requests: a writer waiting at a fenced gate holds no
//!   other lock, so it cannot stall the fence holder's `snapshot_fenced`
//!   (which takes `quiesce`) behind a checkpoint waiting for `quiesce`.
//!   The fence registry (`Pool::fences`) is never held while waiting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::fence::{Fences, Gate, Inside};

use serde::{Deserialize, Serialize};

use crate::record::{self, BLOCK, Cipher, Compression, HEADER_LEN, KIND_TRIM};
use crate::segment::{Disk, Segment, Segments};
use crate::storage::{FsStorage, Storage};
use crate::tree::{Entry, Tree};
use crate::{Device, Error, Result};

/// Largest volume the pool accepts (64 TiB).
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Bytes per slice, the unit of placement: slice `s` of a volume holds its
/// bytes `s * SLICE_BYTES ..`, and a volume of `n` bytes has
/// `n.div_ceil(SLICE_BYTES)` slices. The control plane's
/// `cairn_schema::names::SLICE_BYTES` must equal it (blocks knows nothing of
/// schema, so `cairn-actors`, which sees both, asserts it at compile time).
pub const SLICE_BYTES: u64 = 1 << 30;
/// Blocks per slice.
pub const SLICE_BLOCKS: u64 = SLICE_BYTES / BLOCK as u64;
const SLICE_SHIFT: u32 = 18;
const _: () = assert!(SLICE_BLOCKS == 1 << SLICE_SHIFT);

/// How a pool is opened.
#[derive(Clone)]
pub struct PoolOptions {
    /// Directories holding segments; empty means the pool root alone.
    pub disks: Vec<PathBuf>,
    /// A segment is rolled when it would grow past this.
    pub segment_bytes: u64,
    /// A checkpoint is written after this many appended bytes.
    pub checkpoint_bytes: u64,
    /// Master key for encrypted volumes.
    pub key: Option<[u8; 32]>,
    /// Run checkpoints and compaction on a background thread.
    pub background: bool,
    pub storage: Arc<dyn Storage>,
    /// Stamps snapshot creation times.
    pub clock: Arc<dyn Clock>,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            disks: vec![],
            segment_bytes: 64 << 20,
            checkpoint_bytes: 256 << 20,
            key: None,
            background: true,
            storage: Arc::new(FsStorage),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Per-volume settings chosen at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VolumeOptions {
    pub compression: Compression,
    pub encrypt: bool,
}

/// A parsed export name: `v` or `v@s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportName {
    pub volume: String,
    pub snapshot: Option<String>,
}

impl ExportName {
    pub fn parse(name: &str) -> Result<ExportName> {
        Ok(match name.split_once('@') {
            None => ExportName {
                volume: name.to_owned(),
                snapshot: None,
            },
            Some((volume, snapshot)) => ExportName {
                volume: volume.to_owned(),
                snapshot: Some(snapshot.to_owned()),
            },
        })
    }
}

/// One disk of the pool, as [`Pool::disk_usage`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub dir: PathBuf,
    /// Bytes of segment files on it (live and not yet compacted).
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    /// Record bytes the live volume references (shared ones included).
    pub allocated_bytes: u64,
    /// Bytes only the live volume references: for a fresh clone, near zero.
    pub exclusive_bytes: u64,
    pub compression: Compression,
    pub encrypted: bool,
    /// `v@s` this volume was cloned from.
    pub origin: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub created_ms: u64,
    /// Record bytes the snapshot references.
    pub allocated_bytes: u64,
    /// Bytes only this snapshot holds: what deleting it frees.
    pub exclusive_bytes: u64,
}

/// A changed byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// One block that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadBlock {
    /// `v` or `v@s` that references it.
    pub image: String,
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    pub volume: String,
    pub checked_blocks: u64,
    pub bad_blocks: Vec<BadBlock>,
}

#[derive(Clone)]
pub(crate) struct Snap {
    pub id: u64,
    pub created_ms: u64,
    pub tree: Tree,
}

pub(crate) struct VolState {
    pub tree: Tree,
    pub placement: BTreeMap<u32, u16>,
    pub snaps: BTreeMap<String, Snap>,
}

pub(crate) struct Volume {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub opts: VolumeOptions,
    pub key_check: Option<[u8; 16]>,
    pub origin: Option<(u64, String)>,
    pub gate: Gate,
    rmw: Mutex<()>,
    pub st: Mutex<VolState>,
    pub deleted: AtomicBool,
}

impl Volume {
    pub fn new(
        id: u64,
        name: String,
        size: u64,
        opts: VolumeOptions,
        key_check: Option<[u8; 16]>,
        origin: Option<(u64, String)>,
        st: VolState,
    ) -> Volume {
        Volume {
            id,
            name,
            size,
            opts,
            key_check,
            origin,
            gate: Gate::new(),
            rmw: Mutex::new(()),
            st: Mutex::new(st),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK as u64)
    }
}

/// Volumes by name and by id.
#[derive(Default)]
pub(crate) struct Catalog {
    pub by_name: BTreeMap<String, Arc<Volume>>,
    pub by_id: HashMap<u64, Arc<Volume>>,
}

/// A metadata operation, as logged in `meta.log` and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MetaOp {
    CreateVolume {
        id: u64,
        name: String,
        size: u64,
        opts: VolumeOptions,
        key_check: Option<[u8; 16]>,
    },
    DeleteVolume {
        id: u64,
    },
    Snapshot {
        volume: u64,
        name: String,
        id: u64,
        created_ms: u64,
    },
    DeleteSnapshot {
        volume: u64,
        name: String,
    },
    Clone {
        source: u64,
        snapshot: String,
        id: u64,
        name: String,
    },
    Rollback {
        volume: u64,
        snapshot: String,
    },
}

/// What the pool shares with its devices and background thread.
pub(crate) struct Inner {
    pub root: PathBuf,
    pub opts: PoolOptions,
    pub storage: Arc<dyn Storage>,
    pub disks: Vec<Disk>,
    pub segments: Segments,
    pub catalog: RwLock<Catalog>,
    pub generation: AtomicU64,
    pub next_volume: AtomicU64,
    pub quiesce: RwLock<()>,
    pub meta: Mutex<crate::checkpoint::MetaLog>,
    pub cipher: Option<Cipher>,
    pub key_check: Option<[u8; 16]>,
    /// Bytes appended since the last checkpoint.
    pub since_checkpoint: AtomicU64,
    /// Serializes checkpoints and compactions.
    pub maintenance: Mutex<()>,
}

struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// A pool of volumes. See the module docs.
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
    background: Mutex<Option<Background>>,
    /// Leased fences handed out and not yet released (`fence.rs`).
    pub(crate) fences: Mutex<Fences>,
}

pub(crate) fn check_name(name: &str, what: &'static str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 253 {
        Some("longer than 253 bytes")
    } else if name.contains('@') {
        Some("'@' separates volume and snapshot")
    } else if name.starts_with('.') || name.contains("/.") || name.contains('\0') {
        Some("leading '.' or NUL")
    } else if what == "snapshot" && name.contains('/') {
        Some("'/' is not allowed in a snapshot name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Pool {
    /// Opens (creating if needed) a pool on the filesystem at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Pool> {
        Pool::open_with(root, PoolOptions::default())
    }

    /// Opens a pool: loads the last checkpoint, replays what came after it,
    /// and writes a fresh checkpoint.
    pub fn open_with(root: impl Into<PathBuf>, opts: PoolOptions) -> Result<Pool> {
        let inner = Arc::new(crate::checkpoint::recover(root.into(), opts.clone())?);
        let pool = Pool {
            inner,
            background: Mutex::new(None),
            fences: Mutex::new(Fences::new()),
        };
        if opts.background {
            pool.start_background();
        }
        Ok(pool)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Pins slices of a volume to disks (indexes into [`PoolOptions::disks`]):
    /// later writes to slice `s` go to its disk. Blocks already written stay
    /// where they are. A placement reaches the checkpoint with the volume;
    /// the control plane re-applies its plan at start-up, so one lost to a
    /// crash before the next checkpoint is restored.
    pub fn place_slices(&self, volume: &str, slices: &[(u32, u16)]) -> Result<()> {
        let n_disks = self.inner.disks.len();
        if let Some((slice, disk)) = slices.iter().find(|(_, d)| *d as usize >= n_disks) {
            return Err(Error::InvalidArgument(format!(
                "slice {slice} of {volume} placed on disk {disk}, but the pool has {n_disks}"
            )));
        }
        let vol = self.inner.volume(volume)?;
        let mut st = vol.st.lock().unwrap();
        for (slice, disk) in slices {
            st.placement.insert(*slice, *disk);
        }
        Ok(())
    }

    /// Where each slice of a volume that has a disk lives: (slice, disk).
    pub fn slice_disks(&self, volume: &str) -> Result<Vec<(u32, u16)>> {
        let vol = self.inner.volume(volume)?;
        let st = vol.st.lock().unwrap();
        Ok(st.placement.iter().map(|(s, d)| (*s, *d)).collect())
    }

    /// Each disk's directory and the bytes its live segments hold.
    pub fn disk_usage(&self) -> Vec<DiskUsage> {
        self.inner
            .disks
            .iter()
            .map(|d| DiskUsage {
                dir: d.dir.clone(),
                used_bytes: d.used.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn start_background(&self) {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-blocks-maint".into())
            .spawn(move || {
                let mut ticks = 0u64;
                loop {
                    let (lock, cv) = &*stop2;
                    let guard = lock.lock().unwrap();
                    let (guard, _) = cv.wait_timeout(guard, Duration::from_millis(250)).unwrap();
                    if *guard {
                        return;
                    }
                    drop(guard);
                    let Some(inner) = weak.upgrade() else { return };
                    ticks += 1;
                    let due = inner.since_checkpoint.load(Ordering::Relaxed)
                        >= inner.opts.checkpoint_bytes;
                    if due && let Err(e) = inner.checkpoint() {
                        tracing::warn!(error = %e, "background checkpoint failed");
                    }
                    if ticks.is_multiple_of(40)
                        && let Err(e) = inner.compact(0.5)
                    {
                        tracing::warn!(error = %e, "background compaction failed");
                    }
                }
            })
            .ok();
        *self.background.lock().unwrap() = Some(Background { stop, thread });
    }

    /// Stops the background maintenance thread (compaction, checkpoints)
    /// and waits for it; the pool still serves requests.
    pub fn stop_background(&self) {
        if let Some(mut bg) = self.background.lock().unwrap().take() {
            *bg.stop.0.lock().unwrap() = true;
            bg.stop.1.notify_all();
            if let Some(t) = bg.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Stops maintenance and writes a final checkpoint, so the next open
    /// replays nothing.
    pub fn close(&self) -> Result<()> {
        self.stop_background();
        self.inner.checkpoint()
    }

    pub fn create_volume(&self, name: &str, size_bytes: u64) -> Result<()> {
        self.create_volume_with(name, size_bytes, VolumeOptions::default())
    }

    pub fn create_volume_with(&self, name: &str, size: u64, opts: VolumeOptions) -> Result<()> {
        check_name(name, "volume")?;
        if size == 0 || size > MAX_VOLUME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "volume size must be 1 byte to 64 TiB, not {size}"
            )));
        }
        let key_check = if opts.encrypt {
            Some(self.inner.key_check.ok_or_else(|| Error::KeyRequired {
                volume: name.to_owned(),
            })?)
        } else {
            None
        };
        let inner = &self.inner;
        let _q = inner.quiesce.read().unwrap();
        // A taken name is refused by `check_meta`, under the meta-log lock.
        let id = inner.next_volume.fetch_add(1, Ordering::AcqRel);
        inner.log_and_apply(MetaOp::CreateVolume {
            id,
            name: name.to_owned(),
            size,
            opts,
            key_check,
        })
    }

    /// Deletes a volume and its snapshots. Clones keep their data.
    /// Waits for a fence on it to end (at most its lease).
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let vol = inner.volume(name)?;
        let _fence = vol.gate.close(&vol.name);
        let _q = inner.quiesce.read().unwrap();
        inner.log_and_apply(MetaOp::DeleteVolume { id: vol.id })
    }

    /// Freezes `volume` as `volume@snapshot`. O(1) in the volume's size.
    pub fn snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        self.snapshot_group(&[(volume, snapshot)])
    }

    /// Snapshots several volumes at one instant: every volume's I/O is
    /// fenced before the first snapshot is taken (a consistency group).
    /// The fence lasts this call; a volume under a leased fence
    /// ([`Pool::fence`]) is waited for (at most its lease). Across requests,
    /// use [`Pool::fence`], [`Pool::snapshot_fenced`] and [`Pool::unfence`].
    pub fn snapshot_group(&self, items: &[(&str, &str)]) -> Result<()> {
        let inner = &self.inner;
        let mut vols = vec![];
        for (v, s) in items {
            check_name(s, "snapshot")?;
            let vol = inner.volume(v)?;
            if vol.st.lock().unwrap().snaps.contains_key(*s) {
                return Err(Error::SnapshotExists {
                    volume: (*v).to_owned(),
                    snapshot: (*s).to_owned(),
                });
            }
            vols.push((vol, *s));
        }
        let mut order: Vec<usize> = (0..vols.len()).collect();
        order.sort_by(|a, b| vols[*a].0.name.cmp(&vols[*b].0.name));
        order.dedup_by(|a, b| vols[*a].0.id == vols[*b].0.id);
        let _fences: Vec<_> = order
            .iter()
            .map(|i| vols[*i].0.gate.close(&vols[*i].0.name))
            .collect();
        self.take_snapshots(&vols)
    }

    /// Flushes, then logs and applies one `Snapshot` per item in one batch.
    /// The caller holds every item's gate closed (by a call or a fence).
    pub(crate) fn take_snapshots(&self, items: &[(Arc<Volume>, &str)]) -> Result<()> {
        let inner = &self.inner;
        let _q = inner.quiesce.read().unwrap();
        inner.flush_segments()?;
        let created_ms = inner.opts.clock.now_ms();
        let ops: Vec<MetaOp> = items
            .iter()
            .map(|(vol, s)| MetaOp::Snapshot {
                volume: vol.id,
                name: (*s).to_owned(),
                id: inner.next_volume.fetch_add(1, Ordering::AcqRel),
                created_ms,
            })
            .collect();
        inner.log_and_apply_many(ops)
    }

    pub fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        let inner = &self.inner;
        let _q = inner.quiesce.read().unwrap();
        let vol = inner.volume(volume)?;
        inner.snap(&vol, snapshot)?;
        inner.log_and_apply(MetaOp::DeleteSnapshot {
            volume: vol.id,
            name: snapshot.to_owned(),
        })
    }

    /// Creates `new` sharing every block of `volume@snapshot`: no data is
    /// copied, and the clone does not depend on the snapshot staying.
    pub fn clone_snapshot(&self, volume: &str, snapshot: &str, new: &str) -> Result<()> {
        check_name(new, "volume")?;
        let inner = &self.inner;
        let _q = inner.quiesce.read().unwrap();
        let vol = inner.volume(volume)?;
        inner.log_and_apply(MetaOp::Clone {
            source: vol.id,
            snapshot: snapshot.to_owned(),
            id: inner.next_volume.fetch_add(1, Ordering::AcqRel),
            name: new.to_owned(),
        })
    }

    /// Makes `volume` read as `volume@snapshot` again. O(1). Waits for a
    /// fence on it to end (at most its lease).
    pub fn rollback(&self, volume: &str, snapshot: &str) -> Result<()> {
        let inner = &self.inner;
        let vol = inner.volume(volume)?;
        inner.snap(&vol, snapshot)?;
        let _fence = vol.gate.close(&vol.name);
        let _q = inner.quiesce.read().unwrap();
        inner.flush_segments()?;
        inner.log_and_apply(MetaOp::Rollback {
            volume: vol.id,
            snapshot: snapshot.to_owned(),
        })
    }

    /// Byte ranges that differ between two images (`v`, `v@s`). Costs
    /// O(changed extents) when they share history.
    pub fn diff(&self, from: &str, to: &str) -> Result<Vec<Extent>> {
        let (a, size_a) = self.inner.image_tree(from)?;
        let (b, size_b) = self.inner.image_tree(to)?;
        Ok(extents_between(&a, &b, size_a.max(size_b)))
    }

    /// Byte ranges of an image (`v`, `v@s`) that were ever written (and not
    /// trimmed): everything else reads as zeros. Costs O(written extents).
    pub fn allocated(&self, image: &str) -> Result<Vec<Extent>> {
        let (tree, size) = self.inner.image_tree(image)?;
        let empty = crate::tree::Tree::new(size.div_ceil(BLOCK as u64));
        Ok(extents_between(&empty, &tree, size))
    }

    /// Reads and verifies every block the volume and its snapshots hold.
    pub fn scrub(&self, volume: &str) -> Result<ScrubReport> {
        crate::gc::scrub(&self.inner, volume)
    }

    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        crate::gc::volume_info(&self.inner, name)
    }

    pub fn list_volumes(&self) -> Vec<String> {
        self.inner
            .catalog
            .read()
            .unwrap()
            .by_name
            .keys()
            .cloned()
            .collect()
    }

    /// Opens `v` (read-write) or `v@s` (read-only) for a front-end.
    pub fn open_export(&self, export: &str) -> Result<Arc<dyn Device>> {
        let parsed = ExportName::parse(export)?;
        let vol = self.inner.volume(&parsed.volume)?;
        if let Some(snap) = &parsed.snapshot {
            self.inner.snap(&vol, snap)?;
        }
        Ok(Arc::new(VolumeDevice {
            inner: self.inner.clone(),
            vol,
            snapshot: parsed.snapshot,
            export: export.to_owned(),
        }))
    }

    /// Every export name: each volume and each of its snapshots.
    pub fn export_names(&self) -> Vec<String> {
        let vols: Vec<Arc<Volume>> = self
            .inner
            .catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .cloned()
            .collect();
        let mut names = vec![];
        for vol in vols {
            names.push(vol.name.clone());
            for snap in vol.st.lock().unwrap().snaps.keys() {
                names.push(format!("{}@{snap}", vol.name));
            }
        }
        names
    }

    /// Makes every acknowledged write durable.
    pub fn flush_all(&self) -> Result<()> {
        self.inner.flush_segments()
    }

    /// Writes a checkpoint now (normally done in the background).
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Reclaims segments whose live share is below `threshold` (0..1).
    pub fn compact(&self, threshold: f64) -> Result<CompactStats> {
        self.inner.compact(threshold)
    }
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactStats {
    pub segments_freed: u64,
    pub bytes_freed: u64,
    pub bytes_moved: u64,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_background();
    }
}

impl crate::nbd::Exports for Pool {
    fn open_export(&self, name: &str) -> Result<Arc<dyn Device>> {
        Pool::open_export(self, name)
    }
    fn export_names(&self) -> Vec<String> {
        Pool::export_names(self)
    }
}

impl Inner {
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.catalog
            .read()
            .unwrap()
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::VolumeNotFound {
                volume: name.to_owned(),
            })
    }

    pub fn snap(&self, vol: &Volume, snapshot: &str) -> Result<Snap> {
        vol.st
            .lock()
            .unwrap()
            .snaps
            .get(snapshot)
            .cloned()
            .ok_or_else(|| Error::SnapshotNotFound {
                volume: vol.name.clone(),
                snapshot: snapshot.to_owned(),
            })
    }

    fn image_tree(&self, image: &str) -> Result<(Tree, u64)> {
        let parsed = ExportName::parse(image)?;
        let vol = self.volume(&parsed.volume)?;
        let tree = match &parsed.snapshot {
            Some(s) => self.snap(&vol, s)?.tree,
            None => vol.st.lock().unwrap().tree.clone(),
        };
        Ok((tree, vol.size))
    }

    fn next_gen(&self, n: u64) -> u64 {
        self.generation.fetch_add(n, Ordering::AcqRel)
    }

    pub fn log_and_apply(&self, op: MetaOp) -> Result<()> {
        self.log_and_apply_many(vec![op])
    }

    /// Appends the operations to the meta log (one sync), then applies them.
    /// The caller holds `quiesce` shared.
    pub fn log_and_apply_many(&self, ops: Vec<MetaOp>) -> Result<()> {
        let mut meta = self.meta.lock().unwrap();
        // Checked again under the meta lock: two racing creates of one name
        // must not both be logged.
        {
            let catalog = self.catalog.read().unwrap();
            let mut batch = std::collections::HashSet::new();
            for op in &ops {
                check_meta(&catalog, op)?;
                if let MetaOp::Snapshot { volume, name, .. } = op
                    && !batch.insert((*volume, name.clone()))
                {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot {name:?} is named twice in one group"
                    )));
                }
            }
        }
        let recs: Vec<(u64, MetaOp)> = ops.into_iter().map(|op| (self.next_gen(1), op)).collect();
        meta.append(&recs)?;
        let mut catalog = self.catalog.write().unwrap();
        for (_, op) in recs {
            apply_meta(&mut catalog, op)?;
        }
        Ok(())
    }

    /// Syncs every dirty segment, then marks the flush in each disk's
    /// active segment.
    pub fn flush_segments(&self) -> Result<()> {
        let segs: Vec<Arc<Segment>> = self
            .segments
            .map
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let mut synced = false;
        for seg in segs {
            synced |= seg.sync()?;
        }
        if synced {
            let generation = self.next_gen(1);
            for disk in &self.disks {
                disk.mark_flushed(generation);
            }
        }
        Ok(())
    }

    fn cipher_for(&self, vol: &Volume) -> Result<Option<&Cipher>> {
        if !vol.opts.encrypt {
            return Ok(None);
        }
        match (&self.cipher, vol.key_check, self.key_check) {
            (Some(c), Some(want), Some(have)) if want == have => Ok(Some(c)),
            (None, _, _) => Err(Error::KeyRequired {
                volume: vol.name.clone(),
            }),
            _ => Err(Error::KeyMismatch {
                volume: vol.name.clone(),
            }),
        }
    }

    /// The disk a slice writes to: where it already is, or the least used.
    fn disk_for(&self, vol: &Volume, slice: u32) -> u16 {
        let mut st = vol.st.lock().unwrap();
        if let Some(d) = st.placement.get(&slice) {
            return *d;
        }
        let disk = self
            .disks
            .iter()
            .min_by_key(|d| (d.used.load(Ordering::Relaxed), d.index))
            .map(|d| d.index)
            .unwrap_or(0);
        st.placement.insert(slice, disk);
        disk
    }

    /// Writes whole blocks starting at block `first`. All-zero blocks
    /// become trims. The caller is inside the volume's gate.
    fn write_blocks(
        &self,
        vol: &Volume,
        _inside: &Inside,
        first: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<()> {
        let _q = self.quiesce.read().unwrap();
        if vol.deleted.load(Ordering::Acquire) {
            return Err(Error::VolumeNotFound {
                volume: vol.name.clone(),
            });
        }
        let cipher = self.cipher_for(vol)?;
        let count = (data.len() / BLOCK) as u64;
        let mut done = 0u64;
        while done < count {
            let lba = first + done;
            let slice = (lba >> SLICE_SHIFT) as u32;
            let in_slice = (SLICE_BLOCKS - (lba & (SLICE_BLOCKS - 1))).min(count - done);
            let chunk = &data[(done as usize) * BLOCK..((done + in_slice) as usize) * BLOCK];
            self.write_slice(vol, lba, chunk, slice, cipher, fua)?;
            done += in_slice;
        }
        Ok(())
    }

    fn write_slice(
        &self,
        vol: &Volume,
        first: u64,
        data: &[u8],
        slice: u32,
        cipher: Option<&Cipher>,
        fua: bool,
    ) -> Result<()> {
        let disk = &self.disks[self.disk_for(vol, slice) as usize];
        let blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
        // Runs of zero blocks become one trim record each.
        let mut runs: Vec<(u64, u64, bool)> = vec![];
        for (i, b) in blocks.iter().enumerate() {
            let zero = b.iter().all(|x| *x == 0);
            match runs.last_mut() {
                Some((_, n, z)) if *z == zero => *n += 1,
                _ => runs.push((first + i as u64, 1, zero)),
            }
        }
        let records: u64 = runs.iter().map(|(_, n, z)| if *z { 1 } else { *n }).sum();
        let mut generation = self.next_gen(records);
        let mut buf = Vec::with_capacity(data.len() + records as usize * HEADER_LEN);
        // (lba, count, generation, offset in buf, len); len 0 marks a trim.
        let mut placed: Vec<(u64, u64, u64, usize, usize)> = vec![];
        for (start, n, zero) in runs {
            if zero {
                let at = buf.len();
                record::encode_marker(&mut buf, KIND_TRIM, vol.id, start, generation, n);
                placed.push((start, n, generation, at, 0));
                generation += 1;
                continue;
            }
            for lba in start..start + n {
                let at = buf.len();
                let i = (lba - first) as usize;
                record::encode_block(
                    &mut buf,
                    vol.id,
                    lba,
                    generation,
                    blocks[i],
                    vol.opts.compression,
                    cipher,
                )
                .map_err(|e| Error::Corrupted {
                    volume: vol.name.clone(),
                    offset: lba * BLOCK as u64,
                    reason: e.to_owned(),
                })?;
                placed.push((lba, 1, generation, at, buf.len() - at));
                generation += 1;
            }
        }
        let (seg, base) = disk.append(
            &*self.storage,
            &self.segments,
            self.opts.segment_bytes,
            &buf,
        )?;
        self.since_checkpoint
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if fua {
            seg.sync()?;
        }
        let mut st = vol.st.lock().unwrap();
        for (lba, n, generation, at, len) in placed {
            if len == 0 {
                apply_trim(&mut st.tree, lba, lba + n, generation);
                continue;
            }
            let entry = Entry {
                generation,
                seg: seg.id,
                off: (base + at as u64) as u32,
                len: len as u32,
            };
            if st.tree.get(lba).generation < generation {
                st.tree.set(lba, entry);
            }
        }
        Ok(())
    }

    /// Discards whole blocks `first..first+count`: one trim record per
    /// slice, and tombstones only where the tree has entries, so trimming a
    /// whole 1 TiB volume (mkfs does) costs what is mapped, not its size.
    /// The caller is inside the volume's gate.
    fn trim_blocks(
        &self,
        vol: &Volume,
        _inside: &Inside,
        first: u64,
        count: u64,
        fua: bool,
    ) -> Result<()> {
        let _q = self.quiesce.read().unwrap();
        if vol.deleted.load(Ordering::Acquire) {
            return Err(Error::VolumeNotFound {
                volume: vol.name.clone(),
            });
        }
        let end = first + count;
        let mut lba = first;
        while lba < end {
            let slice = (lba >> SLICE_SHIFT) as u32;
            let n = (SLICE_BLOCKS - (lba & (SLICE_BLOCKS - 1))).min(end - lba);
            let generation = self.next_gen(1);
            let mut rec = Vec::with_capacity(HEADER_LEN + 8);
            record::encode_marker(&mut rec, KIND_TRIM, vol.id, lba, generation, n);
            // A trim does not place a slice: it goes where the slice is, or
            // to the first disk when the slice was never written.
            let disk = vol
                .st
                .lock()
                .unwrap()
                .placement
                .get(&slice)
                .copied()
                .unwrap_or(0);
            let (seg, _) = self.disks[disk as usize].append(
                &*self.storage,
                &self.segments,
                self.opts.segment_bytes,
                &rec,
            )?;
            if fua {
                seg.sync()?;
            }
            apply_trim(&mut vol.st.lock().unwrap().tree, lba, lba + n, generation);
            lba += n;
        }
        Ok(())
    }

    /// Reads whole blocks `first..first+n` of the live tree or a snapshot.
    fn read_blocks(
        &self,
        vol: &Volume,
        snapshot: Option<&str>,
        first: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let n = (out.len() / BLOCK) as u64;
        let cipher_needed;
        let located: Vec<(Entry, Option<Arc<Segment>>)> = {
            let st = vol.st.lock().unwrap();
            if vol.deleted.load(Ordering::Acquire) {
                return Err(Error::VolumeNotFound {
                    volume: vol.name.clone(),
                });
            }
            let tree = match snapshot {
                None => &st.tree,
                Some(s) => {
                    &st.snaps
                        .get(s)
                        .ok_or_else(|| Error::SnapshotNotFound {
                            volume: vol.name.clone(),
                            snapshot: s.to_owned(),
                        })?
                        .tree
                }
            };
            let segs = self.segments.map.read().unwrap();
            let mut v = Vec::with_capacity(n as usize);
            let mut any = false;
            for b in first..first + n {
                let e = tree.get(b);
                if e.is_mapped() {
                    any = true;
                    v.push((e, segs.get(&e.seg).cloned()));
                } else {
                    v.push((e, None));
                }
            }
            cipher_needed = any;
            v
        };
        let cipher = if cipher_needed {
            self.cipher_for(vol)?
        } else {
            None
        };
        let mut i = 0usize;
        let mut raw = vec![];
        while i < located.len() {
            let (e, seg) = &located[i];
            let Some(seg) = seg else {
                if e.is_mapped() {
                    return Err(self.corrupt(vol, first + i as u64, "segment is missing".into()));
                }
                out[i * BLOCK..(i + 1) * BLOCK].fill(0);
                i += 1;
                continue;
            };
            // Coalesce records that sit back to back in one segment.
            let mut j = i + 1;
            let mut end = e.off as u64 + e.len as u64;
            while j < located.len()
                && let (ej, Some(sj)) = &located[j]
                && sj.id == seg.id
                && ej.off as u64 == end
            {
                end += ej.len as u64;
                j += 1;
            }
            raw.resize((end - e.off as u64) as usize, 0);
            seg.read(&mut raw, e.off as u64).map_err(|err| match err {
                Error::Corrupted { reason, .. } => self.corrupt(vol, first + i as u64, reason),
                other => other,
            })?;
            let mut at = 0usize;
            for k in i..j {
                let ek = located[k].0;
                let rec = &raw[at..at + ek.len as usize];
                let lba = first + k as u64;
                record::decode_block(rec, lba, cipher, &mut out[k * BLOCK..(k + 1) * BLOCK])
                    .map_err(|d| self.corrupt(vol, lba, d.to_string()))?;
                at += ek.len as usize;
            }
            i = j;
        }
        Ok(())
    }

    fn corrupt(&self, vol: &Volume, lba: u64, reason: String) -> Error {
        tracing::error!(volume = %vol.name, offset = lba * BLOCK as u64, %reason, "bad block");
        Error::Corrupted {
            volume: vol.name.clone(),
            offset: lba * BLOCK as u64,
            reason,
        }
    }
}

/// Refuses an operation the catalog contradicts (a name taken, a volume or
/// snapshot gone), before it is logged.
fn check_meta(catalog: &Catalog, op: &MetaOp) -> Result<()> {
    let volume = |id: &u64| {
        catalog
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Error::VolumeNotFound {
                volume: format!("#{id}"),
            })
    };
    let snapshot = |id: &u64, snap: &str| -> Result<()> {
        let vol = volume(id)?;
        let found = vol.st.lock().unwrap().snaps.contains_key(snap);
        if found {
            Ok(())
        } else {
            Err(Error::SnapshotNotFound {
                volume: vol.name.clone(),
                snapshot: snap.to_owned(),
            })
        }
    };
    match op {
        MetaOp::CreateVolume { name, .. } | MetaOp::Clone { name, .. }
            if catalog.by_name.contains_key(name) =>
        {
            Err(Error::VolumeExists {
                volume: name.clone(),
            })
        }
        MetaOp::Clone {
            source,
            snapshot: s,
            ..
        } => snapshot(source, s),
        MetaOp::CreateVolume { .. } => Ok(()),
        MetaOp::DeleteVolume { id } => volume(id).map(|_| ()),
        MetaOp::Snapshot {
            volume: id, name, ..
        } => {
            let vol = volume(id)?;
            if vol.st.lock().unwrap().snaps.contains_key(name) {
                return Err(Error::SnapshotExists {
                    volume: vol.name.clone(),
                    snapshot: name.clone(),
                });
            }
            Ok(())
        }
        MetaOp::DeleteSnapshot { volume: id, name } => snapshot(id, name),
        MetaOp::Rollback {
            volume: id,
            snapshot: s,
        } => snapshot(id, s),
    }
}

/// Tombstones every entry in `start..end` older than `generation`. Blocks
/// never written stay empty (they read as zeroes either way), so the cost
/// follows the mapped blocks, not the range.
pub(crate) fn apply_trim(tree: &mut Tree, start: u64, end: u64, generation: u64) {
    let mut older = vec![];
    tree.for_each_in(start, end, &mut |i, e| {
        if e.generation < generation {
            older.push(i);
        }
    });
    for i in older {
        tree.set(i, Entry::tombstone(generation));
    }
}

/// Applies one metadata operation to the catalog. Used live (after the
/// operation is logged) and by recovery, so both build the same state.
pub(crate) fn apply_meta(catalog: &mut Catalog, op: MetaOp) -> Result<()> {
    let missing = |id: u64| Error::Corrupted {
        volume: format!("#{id}"),
        offset: 0,
        reason: "meta log names an unknown volume".into(),
    };
    match op {
        MetaOp::CreateVolume {
            id,
            name,
            size,
            opts,
            key_check,
        } => {
            let st = VolState {
                tree: Tree::new(size.div_ceil(BLOCK as u64)),
                placement: BTreeMap::new(),
                snaps: BTreeMap::new(),
            };
            let vol = Arc::new(Volume::new(
                id,
                name.clone(),
                size,
                opts,
                key_check,
                None,
                st,
            ));
            catalog.by_name.insert(name, vol.clone());
            catalog.by_id.insert(id, vol);
        }
        MetaOp::DeleteVolume { id } => {
            let vol = catalog.by_id.remove(&id).ok_or_else(|| missing(id))?;
            vol.deleted.store(true, Ordering::Release);
            catalog.by_name.remove(&vol.name);
        }
        MetaOp::Snapshot {
            volume,
            name,
            id,
            created_ms,
        } => {
            let vol = catalog.by_id.get(&volume).ok_or_else(|| missing(volume))?;
            let mut st = vol.st.lock().unwrap();
            let tree = st.tree.clone();
            st.snaps.insert(
                name,
                Snap {
                    id,
                    created_ms,
                    tree,
                },
            );
        }
        MetaOp::DeleteSnapshot { volume, name } => {
            let vol = catalog.by_id.get(&volume).ok_or_else(|| missing(volume))?;
            vol.st.lock().unwrap().snaps.remove(&name);
        }
        MetaOp::Clone {
            source,
            snapshot,
            id,
            name,
        } => {
            let src = catalog.by_id.get(&source).ok_or_else(|| missing(source))?;
            let (tree, placement) = {
                let st = src.st.lock().unwrap();
                let snap = st.snaps.get(&snapshot).ok_or_else(|| missing(source))?;
                (snap.tree.clone(), st.placement.clone())
            };
            let st = VolState {
                tree,
                placement,
                snaps: BTreeMap::new(),
            };
            let vol = Arc::new(Volume::new(
                id,
                name.clone(),
                src.size,
                src.opts,
                src.key_check,
                Some((source, snapshot)),
                st,
            ));
            catalog.by_name.insert(name, vol.clone());
            catalog.by_id.insert(id, vol);
        }
        MetaOp::Rollback { volume, snapshot } => {
            let vol = catalog.by_id.get(&volume).ok_or_else(|| missing(volume))?;
            let mut st = vol.st.lock().unwrap();
            let tree = st
                .snaps
                .get(&snapshot)
                .ok_or_else(|| missing(volume))?
                .tree
                .clone();
            st.tree = tree;
        }
    }
    Ok(())
}

/// A byte range `(offset, len)`, when present.
type Piece = Option<(u64, u64)>;

/// An open export: a volume (read-write) or a snapshot (read-only).
struct VolumeDevice {
    inner: Arc<Inner>,
    vol: Arc<Volume>,
    snapshot: Option<String>,
    export: String,
}

impl VolumeDevice {
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.vol.size)
        {
            return Err(Error::OutOfRange {
                volume: self.export.clone(),
                offset,
                len,
                size: self.vol.size,
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.snapshot.is_some() {
            return Err(Error::ReadOnly {
                export: self.export.clone(),
            });
        }
        Ok(())
    }

    /// Applies `patch` to the bytes `offset..offset+len`, which lie inside
    /// one block, by read-modify-write.
    fn patch_block(
        &self,
        inside: &Inside,
        offset: u64,
        fua: bool,
        patch: &dyn Fn(&mut [u8]),
    ) -> Result<()> {
        let lba = offset / BLOCK as u64;
        let _rmw = self.vol.rmw.lock().unwrap();
        let mut block = vec![0u8; BLOCK];
        self.inner.read_blocks(&self.vol, None, lba, &mut block)?;
        patch(&mut block);
        self.inner.write_blocks(&self.vol, inside, lba, &block, fua)
    }

    /// Splits `offset..offset+len` into a partial head, whole blocks and a
    /// partial tail.
    fn split(offset: u64, len: u64) -> (Piece, Piece, Piece) {
        let b = BLOCK as u64;
        let end = offset + len;
        let first_full = offset.div_ceil(b) * b;
        let last_full = end / b * b;
        if first_full >= last_full {
            // No whole block: one or two partial pieces.
            if offset / b == (end.saturating_sub(1)) / b || len == 0 {
                return (Some((offset, len)), None, None);
            }
            let cut = first_full;
            return (Some((offset, cut - offset)), None, Some((cut, end - cut)));
        }
        let head = (offset < first_full).then(|| (offset, first_full - offset));
        let tail = (last_full < end).then(|| (last_full, end - last_full));
        (head, Some((first_full, last_full - first_full)), tail)
    }

    fn write_range(&self, offset: u64, len: u64, data: Option<&[u8]>, fua: bool) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // One pass of the gate for the whole request, so a fence sees all
        // of its pieces or none.
        let entered = self.vol.gate.enter(&self.vol.name);
        let (head, middle, tail) = Self::split(offset, len);
        let bytes =
            |at: u64, n: u64| data.map(|d| &d[(at - offset) as usize..(at - offset + n) as usize]);
        for piece in [head, tail].into_iter().flatten() {
            let (at, n) = piece;
            let inside = (at % BLOCK as u64) as usize;
            let src = bytes(at, n);
            self.patch_block(&entered, at, fua, &|block: &mut [u8]| match src {
                Some(s) => block[inside..inside + s.len()].copy_from_slice(s),
                None => block[inside..inside + n as usize].fill(0),
            })?;
        }
        if let Some((at, n)) = middle {
            let lba = at / BLOCK as u64;
            match bytes(at, n) {
                Some(s) => self.inner.write_blocks(&self.vol, &entered, lba, s, fua)?,
                None => self
                    .inner
                    .trim_blocks(&self.vol, &entered, lba, n / BLOCK as u64, fua)?,
            }
        }
        Ok(())
    }
}

impl Device for VolumeDevice {
    fn name(&self) -> &str {
        &self.export
    }
    fn size(&self) -> u64 {
        self.vol.size
    }
    fn read_only(&self) -> bool {
        self.snapshot.is_some()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let b = BLOCK as u64;
        let first = offset / b;
        let last = (offset + buf.len() as u64 - 1) / b;
        let aligned = offset.is_multiple_of(b) && buf.len().is_multiple_of(BLOCK);
        if aligned {
            return self
                .inner
                .read_blocks(&self.vol, self.snapshot.as_deref(), first, buf);
        }
        let mut tmp = vec![0u8; ((last - first + 1) * b) as usize];
        self.inner
            .read_blocks(&self.vol, self.snapshot.as_deref(), first, &mut tmp)?;
        let skip = (offset - first * b) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.write_range(offset, buf.len() as u64, Some(buf), fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.write_range(offset, len, None, fua)
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_range(offset, len, None, false)
    }
    /// A writable export's flush waits at the gate like a write, so a
    /// fenced volume's flushes wait for the fence too.
    fn flush(&self) -> Result<()> {
        let _inside = self
            .snapshot
            .is_none()
            .then(|| self.vol.gate.enter(&self.vol.name));
        self.inner.flush_segments()
    }
}

/// The byte ranges where two trees map different blocks, merged.
fn extents_between(a: &crate::tree::Tree, b: &crate::tree::Tree, size: u64) -> Vec<Extent> {
    let mut extents: Vec<Extent> = vec![];
    a.diff(b, &mut |block| {
        let offset = block * BLOCK as u64;
        if offset >= size {
            return;
        }
        let len = (BLOCK as u64).min(size - offset);
        match extents.last_mut() {
            Some(last) if last.offset + last.len == offset => last.len += len,
            _ => extents.push(Extent { offset, len }),
        }
    });
    extents
}
