//! [`Repo::push`]: one app snapshot from the block pool into the repo.
//!
//! For each volume, the chunks to read are chosen first:
//! - with a parent manifest whose volume has the same size and chunk size
//!   and whose pool snapshot (`volume@parent_snapshot`) still exists, with
//!   the creation time the parent recorded (not a later one of that name), only
//!   chunks overlapping `Pool::diff(parent, this)` are read; every other
//!   chunk reuses the parent's reference (when that chunk is still stored);
//! - otherwise only chunks the snapshot ever wrote (`Pool::allocated`) are
//!   read; the others are holes.
//!
//! A chunk read is a hole when all zero (not stored), known when its id is
//! in the [`ChunkIndex`] or in a pack not yet confirmed (deduplicated), and
//! new otherwise. Three threads overlap: this one reads, hashes and
//! deduplicates; a sealer compresses (skipping data a sample shows to be
//! incompressible), seals and packs new chunks ([`SEAL_QUEUE`] chunks
//! queued); an uploader stores full packs (one in flight). A pack's chunks
//! enter the index when its put returns. After the last pack is confirmed, the manifest is written: a
//! push that fails leaves packs, never a manifest that references missing
//! data, and the next push lists those packs and uploads only the rest.

use std::collections::HashSet;
use std::sync::mpsc;

use bytes::Bytes;
use cairn_blocks::Pool;

use super::Repo;
use super::error::{Error, Result};
use super::format::{self, ChunkRef, IndexEntry, MANIFESTS, Manifest, PackWriter, VolumeEntry};

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub app: String,
    pub snapshot: String,
    /// (pool volume, pool snapshot) pairs: `volume@snapshot` is read.
    pub volumes: Vec<(String, String)>,
    /// The app's config and metadata, stored as they are.
    pub meta: serde_json::Value,
    /// Manifest id to be incremental to (usually [`Repo::latest`]).
    pub parent: Option<String>,
}

/// Reported after every chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The volume being read (`name@snapshot`), or being written on pull.
    pub volume: String,
    /// Bytes of all volumes dealt with so far, and in total.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Pack bytes confirmed stored (push) or fetched (pull).
    pub transferred_bytes: u64,
    /// Packs confirmed stored (push).
    pub packs: u64,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    pub manifest_id: String,
    /// The parent actually used (`None` when the given one was missing).
    pub parent: Option<String>,
    pub logical_bytes: u64,
    /// Bytes read from the pool.
    pub read_bytes: u64,
    /// Volumes read only where they differ from the parent's snapshot.
    pub incremental_volumes: Vec<String>,
    /// Chunks taken from the parent without reading.
    pub reused_chunks: u64,
    pub hole_chunks: u64,
    /// Chunks read that the repo already held.
    pub dedup_chunks: u64,
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_chunk_bytes: u64,
    /// Pack bytes stored (what the store's traffic and size grew by).
    pub uploaded_bytes: u64,
    pub packs_uploaded: u64,
}

type Upload = (String, Bytes, Vec<IndexEntry>);

/// New chunks queued for the sealer (each up to `chunk_bytes`).
pub const SEAL_QUEUE: usize = 8;

struct Packer {
    /// Ids queued, in the sealer's pack, or in packs not yet confirmed.
    pending: HashSet<[u8; 32]>,
    to_sealer: Option<mpsc::SyncSender<([u8; 32], Vec<u8>)>>,
    confirmed: mpsc::Receiver<Result<(String, u64, Vec<IndexEntry>)>>,
    index: super::ChunkIndex,
    report: PushReport,
}

/// The sealer thread: compresses and seals chunks into packs, hands full
/// packs (and the last one) to the uploader. Stops when the uploader does.
fn seal_packs(
    repo: &Repo,
    chunks: mpsc::Receiver<([u8; 32], Vec<u8>)>,
    to_uploader: mpsc::SyncSender<Upload>,
) {
    let mut writer = PackWriter::new();
    for (id, data) in chunks {
        let sealed = format::seal_chunk(&repo.keys, &id, &data, repo.config.zstd_level);
        writer.add(id, &sealed, data.len());
        if writer.is_full(repo.config.pack_bytes) {
            let (key, bytes, entries) = std::mem::take(&mut writer).finish(&repo.keys);
            if to_uploader
                .send((key, Bytes::from(bytes), entries))
                .is_err()
            {
                return;
            }
        }
    }
    if !writer.is_empty() {
        let (key, bytes, entries) = writer.finish(&repo.keys);
        let _ = to_uploader.send((key, Bytes::from(bytes), entries));
    }
}

impl Packer {
    fn known(&self, id: &[u8; 32]) -> bool {
        self.index.contains(id) || self.pending.contains(id)
    }

    fn confirm(&mut self, done: Result<(String, u64, Vec<IndexEntry>)>) -> Result<()> {
        let (key, size, entries) = done?;
        for entry in &entries {
            self.pending.remove(&entry.id);
        }
        self.index.add_pack(key, size, &entries);
        self.report.uploaded_bytes += size;
        self.report.packs_uploaded += 1;
        Ok(())
    }

    /// Takes in the uploader's confirmations so far.
    fn poll(&mut self) -> Result<()> {
        while let Ok(done) = self.confirmed.try_recv() {
            self.confirm(done)?;
        }
        Ok(())
    }

    fn add(&mut self, id: [u8; 32], data: &[u8]) -> Result<()> {
        self.pending.insert(id);
        self.report.new_chunks += 1;
        self.report.new_chunk_bytes += data.len() as u64;
        let sender = self.to_sealer.as_ref().expect("sender lives until finish");
        if sender.send((id, data.to_vec())).is_err() {
            // The sealer stopped because the uploader did: report why.
            while let Ok(done) = self.confirmed.recv() {
                self.confirm(done)?;
            }
            return Err(Error::InvalidArgument(
                "push: the uploader stopped without an error".into(),
            ));
        }
        self.poll()
    }

    /// Flushes the sealer's last pack and waits for every confirmation.
    fn finish(&mut self) -> Result<()> {
        self.to_sealer = None;
        while let Ok(done) = self.confirmed.recv() {
            self.confirm(done)?;
        }
        Ok(())
    }
}

impl Repo {
    /// Pushes `request.volumes` as `request.app@request.snapshot`; returns
    /// once the manifest is stored.
    pub fn push(
        &self,
        pool: &Pool,
        request: &PushRequest,
        progress: &dyn Fn(&Progress),
    ) -> Result<PushReport> {
        let parent = match &request.parent {
            None => None,
            Some(id) => match self.manifest(id) {
                Ok(m) => Some((id.clone(), m)),
                Err(Error::ManifestNotFound { .. }) => {
                    tracing::warn!(parent = %id, "parent manifest is gone; pushing in full");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let devices = request
            .volumes
            .iter()
            .map(|(v, s)| pool.open_export(&format!("{v}@{s}")))
            .collect::<Result<Vec<_>, _>>()?;
        let total_bytes: u64 = devices.iter().map(|d| d.size()).sum();
        let index = self.chunk_index()?;
        let (to_uploader, from_pusher) = mpsc::sync_channel::<Upload>(1);
        let (to_sealer, from_packer) = mpsc::sync_channel(SEAL_QUEUE);
        let (to_pusher, confirmed) = mpsc::channel();
        let store = self.store.clone();
        std::thread::scope(|scope| {
            scope.spawn(move || seal_packs(self, from_packer, to_uploader));
            scope.spawn(move || {
                for (key, bytes, entries) in from_pusher {
                    let size = bytes.len() as u64;
                    let result = store.put(&key, bytes).map_err(Error::from);
                    let failed = result.is_err();
                    let _ = to_pusher.send(result.map(|()| (key, size, entries)));
                    if failed {
                        return;
                    }
                }
            });
            let mut packer = Packer {
                pending: HashSet::new(),
                to_sealer: Some(to_sealer),
                confirmed,
                index,
                report: PushReport {
                    parent: parent.as_ref().map(|(id, _)| id.clone()),
                    logical_bytes: total_bytes,
                    ..PushReport::default()
                },
            };
            let result = self.push_volumes(
                pool,
                request,
                &devices,
                parent.as_ref(),
                total_bytes,
                &mut packer,
                progress,
            );
            // Stop the sealer, then the uploader (dropping the senders),
            // whatever happened.
            packer.to_sealer = None;
            let (volumes, mut report) = result.map(|v| (v, std::mem::take(&mut packer.report)))?;
            let manifest = Manifest {
                version: format::FORMAT_VERSION,
                app: request.app.clone(),
                snapshot: request.snapshot.clone(),
                created_ms: self.clock.now_ms(),
                parent: report.parent.clone(),
                meta: request.meta.clone(),
                volumes,
                added_bytes: report.uploaded_bytes,
            };
            let (id, sealed) = manifest.seal(&self.keys)?;
            self.store
                .put(&format!("{MANIFESTS}{id}"), Bytes::from(sealed))?;
            report.manifest_id = id;
            Ok(report)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn push_volumes(
        &self,
        pool: &Pool,
        request: &PushRequest,
        devices: &[std::sync::Arc<dyn cairn_blocks::Device>],
        parent: Option<&(String, Manifest)>,
        total_bytes: u64,
        packer: &mut Packer,
        progress: &dyn Fn(&Progress),
    ) -> Result<Vec<VolumeEntry>> {
        let chunk_bytes = self.config.chunk_bytes;
        let mut buf = vec![0u8; chunk_bytes as usize];
        let mut done_bytes = 0;
        let mut volumes = vec![];
        for ((name, snapshot), device) in request.volumes.iter().zip(devices) {
            let size = device.size();
            let n_chunks = size.div_ceil(chunk_bytes);
            let export = format!("{name}@{snapshot}");
            // Chunks that may differ from the parent's; None = all of them.
            let created = |snapshot: &str| -> Option<u64> {
                let info = pool.volume_info(name).ok()?;
                info.snapshots
                    .iter()
                    .find(|s| s.name == snapshot)
                    .map(|s| s.created_ms)
            };
            let snapshot_created_ms = created(snapshot).unwrap_or(0);
            // The parent's entry, if its pool snapshot is still the same one.
            let base = parent.and_then(|(_, m)| {
                m.volumes.iter().find(|v| {
                    &v.name == name
                        && v.size == size
                        && v.chunk_bytes == chunk_bytes
                        && created(&v.snapshot) == Some(v.snapshot_created_ms)
                })
            });
            let to_dirty = |extents: Vec<cairn_blocks::Extent>| {
                let mut dirty = vec![false; n_chunks as usize];
                for e in extents {
                    let first = e.offset / chunk_bytes;
                    let last = (e.offset + e.len).div_ceil(chunk_bytes).min(n_chunks);
                    for d in &mut dirty[first as usize..last as usize] {
                        *d = true;
                    }
                }
                dirty
            };
            // Incremental: chunks that changed since the parent's snapshot.
            let changed: Option<Vec<bool>> = base.and_then(|base| {
                pool.diff(&format!("{name}@{}", base.snapshot), &export)
                    .ok()
                    .map(to_dirty)
            });
            let incremental = changed.is_some();
            if incremental {
                packer.report.incremental_volumes.push(name.clone());
            }
            // Full: chunks never written are holes, read from nowhere.
            let dirty = changed.or_else(|| pool.allocated(&export).ok().map(to_dirty));
            let mut chunks = Vec::with_capacity(n_chunks as usize);
            for i in 0..n_chunks {
                let offset = i * chunk_bytes;
                let len = chunk_bytes.min(size - offset) as usize;
                let reuse = match (&dirty, base) {
                    (Some(dirty), Some(base)) if incremental && !dirty[i as usize] => {
                        match base.chunks[i as usize] {
                            ChunkRef::Hole => Some(ChunkRef::Hole),
                            ChunkRef::Data(id) if packer.known(&id) => Some(ChunkRef::Data(id)),
                            ChunkRef::Data(_) => None,
                        }
                    }
                    (Some(dirty), _) if !incremental && !dirty[i as usize] => Some(ChunkRef::Hole),
                    _ => None,
                };
                let chunk = match reuse {
                    Some(ChunkRef::Hole) if !incremental => {
                        packer.report.hole_chunks += 1;
                        ChunkRef::Hole
                    }
                    Some(chunk) => {
                        packer.report.reused_chunks += 1;
                        chunk
                    }
                    None => {
                        let data = &mut buf[..len];
                        device.read_at(data, offset)?;
                        packer.report.read_bytes += len as u64;
                        if is_zero(data) {
                            packer.report.hole_chunks += 1;
                            ChunkRef::Hole
                        } else {
                            let id = self.keys.chunk_id(data);
                            if packer.known(&id) {
                                packer.report.dedup_chunks += 1;
                            } else {
                                packer.add(id, data)?;
                            }
                            ChunkRef::Data(id)
                        }
                    }
                };
                chunks.push(chunk);
                done_bytes += len as u64;
                packer.poll()?;
                progress(&Progress {
                    volume: export.clone(),
                    done_bytes,
                    total_bytes,
                    transferred_bytes: packer.report.uploaded_bytes,
                    packs: packer.report.packs_uploaded,
                });
            }
            volumes.push(VolumeEntry {
                name: name.clone(),
                snapshot: snapshot.clone(),
                snapshot_created_ms,
                size,
                chunk_bytes,
                chunks,
            });
        }
        packer.finish()?;
        Ok(volumes)
    }
}

pub(crate) fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed blocks vectorises; the early exit is per block.
    let mut blocks = data.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}
