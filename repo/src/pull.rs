//! [`Repo::pull`]: one manifest from the repo into the block pool.
//!
//! [`PullMode::Create`] creates each target volume (`Pool::create_volume`,
//! default volume options, so a taken name fails before anything is
//! written) and writes every data chunk; holes are skipped (a new volume
//! reads as zeroes). To pull into volumes with other options (compression,
//! encryption, placement), create them first and pull with
//! [`PullMode::Repair`]. If the pull
//! fails, the volumes it created are deleted again. [`PullMode::Repair`]
//! works on existing volumes of the same size: it reads each chunk locally,
//! hashes it, and fetches and writes only chunks whose content differs (a
//! hole becomes `write_zeroes`).
//!
//! Reads are coalesced: consecutive chunks stored back to back in one pack
//! are fetched with one ranged read of up to [`MAX_READ_BYTES`], by
//! [`FETCH_THREADS`] worker threads that also authenticate and write them
//! (chunks land in any order; memory: a few runs per thread). Every chunk
//! is authenticated and re-hashed before it is written; a bad one stops the
//! pull with [`Error::Corrupted`] naming the pack and the offset.

use std::sync::{Arc, mpsc};

use cairn_blocks::{Device, Pool};

use super::Repo;
use super::error::{Error, Result};
use super::format::{self, ChunkRef, VolumeEntry};
use super::index::{ChunkIndex, Location};
use super::push::{Progress, is_zero};

/// Largest single ranged read from a pack.
pub const MAX_READ_BYTES: u64 = 8 << 20;
/// Fetcher threads: object stores answer each request after a fixed
/// latency (tens of ms on S3), so reads are issued in parallel.
pub const FETCH_THREADS: usize = 4;
/// Runs queued between the planner and the workers.
pub const RUNS_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// Create the target volumes; they must not exist.
    Create,
    /// Rewrite only the chunks of existing volumes that differ.
    Repair,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullReport {
    /// (manifest volume, pool volume) pairs written.
    pub volumes: Vec<(String, String)>,
    pub logical_bytes: u64,
    pub written_chunks: u64,
    pub hole_chunks: u64,
    /// Repair: chunks that already matched.
    pub unchanged_chunks: u64,
    /// Pack bytes fetched.
    pub fetched_bytes: u64,
}

struct Ctx<'a> {
    repo: &'a Repo,
    index: &'a ChunkIndex,
    manifest_id: &'a str,
    report: PullReport,
    done_bytes: u64,
    total_bytes: u64,
}

impl Repo {
    /// Pulls manifest `manifest_id`. `targets` maps manifest volume names to
    /// pool volume names; empty means every volume under its own name.
    pub fn pull(
        &self,
        pool: &Pool,
        manifest_id: &str,
        targets: &[(String, String)],
        mode: PullMode,
        progress: &dyn Fn(&Progress),
    ) -> Result<PullReport> {
        let manifest = self.manifest(manifest_id)?;
        let plan: Vec<(&VolumeEntry, String)> = if targets.is_empty() {
            manifest
                .volumes
                .iter()
                .map(|v| (v, v.name.clone()))
                .collect()
        } else {
            targets
                .iter()
                .map(|(source, target)| {
                    manifest
                        .volumes
                        .iter()
                        .find(|v| &v.name == source)
                        .map(|v| (v, target.clone()))
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "manifest {manifest_id} has no volume {source:?}"
                            ))
                        })
                })
                .collect::<Result<_>>()?
        };
        let index = self.chunk_index()?;
        let mut ctx = Ctx {
            repo: self,
            index: &index,
            manifest_id,
            report: PullReport::default(),
            done_bytes: 0,
            total_bytes: plan.iter().map(|(v, _)| v.size).sum(),
        };
        let mut created: Vec<String> = vec![];
        let result = (|| {
            for (volume, target) in &plan {
                let device = match mode {
                    PullMode::Create => {
                        pool.create_volume(target, volume.size)?;
                        created.push(target.clone());
                        pool.open_export(target)?
                    }
                    PullMode::Repair => {
                        let device = pool.open_export(target)?;
                        if device.size() != volume.size {
                            return Err(Error::InvalidArgument(format!(
                                "repair: volume {target:?} has {} bytes, the manifest's {:?} has {}",
                                device.size(),
                                volume.name,
                                volume.size
                            )));
                        }
                        device
                    }
                };
                // Chunks the target never wrote read as zeros: not read.
                let written: Option<Vec<bool>> = match mode {
                    PullMode::Create => None,
                    PullMode::Repair => pool.allocated(target).ok().map(|extents| {
                        let n = volume.chunks.len();
                        let mut written = vec![false; n];
                        for e in extents {
                            let first = (e.offset / volume.chunk_bytes) as usize;
                            let last =
                                ((e.offset + e.len).div_ceil(volume.chunk_bytes) as usize).min(n);
                            for w in &mut written[first.min(last)..last] {
                                *w = true;
                            }
                        }
                        written
                    }),
                };
                ctx.pull_volume(volume, target, &device, mode, written.as_deref(), progress)?;
                device.flush()?;
                ctx.report
                    .volumes
                    .push((volume.name.clone(), target.clone()));
                ctx.report.logical_bytes += volume.size;
            }
            Ok(())
        })();
        if let Err(e) = result {
            for target in created {
                if let Err(cleanup) = pool.delete_volume(&target) {
                    tracing::warn!(volume = %target, error = %cleanup, "could not delete a partly pulled volume");
                }
            }
            return Err(e);
        }
        Ok(ctx.report)
    }
}

/// What the planner found without fetching.
#[derive(Default)]
struct Planned {
    hole_chunks: u64,
    unchanged_chunks: u64,
    zeroed_chunks: u64,
}

/// What the planner sends the workers.
enum Item {
    /// Consecutive blobs of one pack: fetch and open them.
    Run(Vec<(u64, Location)>),
    /// A chunk whose id the planner sent a moment ago (repeated data): a
    /// worker copies it from the shared cache, fetching only on a miss.
    Repeat(u64, Location),
}

/// Decoded chunks of one item (chunk index, id, data), and the pack bytes
/// fetched for them.
type Fetched = Result<(Vec<(u64, [u8; 32], Arc<Vec<u8>>)>, u64)>;

/// Distinct recent chunk ids the planner remembers and the workers cache.
pub const REPEAT_CACHE_CHUNKS: usize = 8;

impl Ctx<'_> {
    /// Two stages joined by a bounded channel (at most [`RUNS_IN_FLIGHT`]
    /// runs queued): the planner walks the chunk list (and, repairing,
    /// reads and hashes local chunks); [`FETCH_THREADS`] workers read runs,
    /// authenticate their chunks and write them (each chunk lands once, in
    /// whatever order). This thread only tallies and reports progress. A
    /// repeated chunk missing from the shared cache of recent chunks (its
    /// first copy still in flight) is fetched again.
    fn pull_volume(
        &mut self,
        volume: &VolumeEntry,
        target: &str,
        device: &Arc<dyn Device>,
        mode: PullMode,
        written: Option<&[bool]>,
        progress: &dyn Fn(&Progress),
    ) -> Result<()> {
        let chunk_bytes = volume.chunk_bytes;
        let (run_tx, run_rx) = mpsc::sync_channel::<Item>(RUNS_IN_FLIGHT);
        let (done_tx, done_rx) = mpsc::sync_channel::<Result<Done>>(RUNS_IN_FLIGHT * FETCH_THREADS);
        let (repo, index, manifest_id) = (self.repo, self.index, self.manifest_id);
        let base = self.done_bytes;
        let cache = RecentChunks::default();
        std::thread::scope(|scope| {
            let planner = scope.spawn(move || {
                plan(
                    repo,
                    index,
                    manifest_id,
                    volume,
                    (device, mode, written),
                    run_tx,
                )
            });
            // Shared by the workers and dropped with the last one, so the
            // planner stops when they all have.
            let run_rx = Arc::new(std::sync::Mutex::new(run_rx));
            for _ in 0..FETCH_THREADS {
                let (run_rx, done_tx, cache) = (run_rx.clone(), done_tx.clone(), &cache);
                scope.spawn(move || {
                    loop {
                        let Ok(item) = run_rx.lock().unwrap().recv() else {
                            return;
                        };
                        let done = write_item(repo, index, device, chunk_bytes, cache, item);
                        let failed = done.is_err();
                        if done_tx.send(done).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            drop((done_tx, run_rx));
            let mut written = Ok(());
            for done in done_rx.iter() {
                match done {
                    Ok(done) => {
                        self.report.fetched_bytes += done.fetched_bytes;
                        self.report.written_chunks += done.chunks;
                        self.done_bytes = self.done_bytes.max(base + done.end);
                        progress(&Progress {
                            volume: target.to_owned(),
                            done_bytes: self.done_bytes,
                            total_bytes: self.total_bytes,
                            transferred_bytes: self.report.fetched_bytes,
                            packs: 0,
                        });
                    }
                    Err(e) => {
                        // Dropping the receiver stops the workers, then the
                        // planner.
                        written = Err(e);
                        break;
                    }
                }
            }
            drop(done_rx);
            let planned = planner.join().expect("the planner does not panic");
            written?;
            let planned = planned?;
            self.report.hole_chunks += planned.hole_chunks;
            self.report.unchanged_chunks += planned.unchanged_chunks;
            self.report.written_chunks += planned.zeroed_chunks;
            self.done_bytes = base + volume.size;
            Ok(())
        })
    }
}

/// The last [`REPEAT_CACHE_CHUNKS`] chunks the workers decoded, shared so
/// that repeated data is fetched and opened once.
#[derive(Default)]
struct RecentChunks(std::sync::Mutex<std::collections::VecDeque<Chunk>>);

/// A chunk's id and its plaintext.
type Chunk = ([u8; 32], Arc<Vec<u8>>);

impl RecentChunks {
    fn get(&self, id: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let recent = self.0.lock().unwrap();
        recent
            .iter()
            .find(|(have, _)| have == id)
            .map(|(_, data)| data.clone())
    }

    fn put(&self, id: [u8; 32], data: Arc<Vec<u8>>) {
        let mut recent = self.0.lock().unwrap();
        if recent.len() == REPEAT_CACHE_CHUNKS {
            recent.pop_front();
        }
        recent.push_back((id, data));
    }
}

/// What a worker reports for one item.
struct Done {
    chunks: u64,
    fetched_bytes: u64,
    /// End offset of the highest chunk written.
    end: u64,
}

/// Fetches (or takes from the cache), opens and writes one item's chunks.
fn write_item(
    repo: &Repo,
    index: &ChunkIndex,
    device: &Arc<dyn Device>,
    chunk_bytes: u64,
    cache: &RecentChunks,
    item: Item,
) -> Result<Done> {
    let (chunks, fetched_bytes) = match item {
        Item::Run(run) => fetch(repo, index, &run)?,
        Item::Repeat(i, place) => match cache.get(&place.entry.id) {
            Some(data) => (vec![(i, place.entry.id, data)], 0),
            None => fetch(repo, index, &[(i, place)])?,
        },
    };
    let mut done = Done {
        chunks: 0,
        fetched_bytes,
        end: 0,
    };
    for (i, id, data) in chunks {
        device.write_at(&data, i * chunk_bytes, false)?;
        done.chunks += 1;
        done.end = done.end.max(i * chunk_bytes + data.len() as u64);
        cache.put(id, data);
    }
    Ok(done)
}

/// Walks a volume's chunks and sends runs of blobs to fetch: consecutive
/// blobs of one pack, up to [`MAX_READ_BYTES`].
fn plan(
    repo: &Repo,
    index: &ChunkIndex,
    manifest_id: &str,
    volume: &VolumeEntry,
    (device, mode, written): (&Arc<dyn Device>, PullMode, Option<&[bool]>),
    runs: mpsc::SyncSender<Item>,
) -> Result<Planned> {
    let chunk_bytes = volume.chunk_bytes;
    let mut planned = Planned::default();
    let mut local = vec![0u8; chunk_bytes as usize];
    let mut run: Vec<(u64, Location)> = vec![];
    // Ids recently sent to fetch (the workers cache the same few).
    let mut recent: std::collections::VecDeque<[u8; 32]> = std::collections::VecDeque::new();
    for (i, chunk) in volume.chunks.iter().enumerate() {
        let i = i as u64;
        let offset = i * chunk_bytes;
        let len = chunk_bytes.min(volume.size - offset);
        let local_data = &mut local[..len as usize];
        // A chunk the target never wrote is zeros: nothing to read, and no
        // data chunk can match it (zero chunks are holes in a manifest).
        let local_written = mode == PullMode::Repair && written.is_none_or(|w| w[i as usize]);
        if local_written {
            device.read_at(local_data, offset)?;
        }
        match chunk {
            ChunkRef::Hole => {
                planned.hole_chunks += 1;
                if local_written && !is_zero(local_data) {
                    device.write_zeroes(offset, len, false)?;
                    planned.zeroed_chunks += 1;
                }
            }
            ChunkRef::Data(id) => {
                if local_written && repo.keys.chunk_id(local_data) == *id {
                    planned.unchanged_chunks += 1;
                    continue;
                }
                let place = index.get(id).ok_or_else(|| Error::MissingChunk {
                    manifest: manifest_id.to_owned(),
                    volume: volume.name.clone(),
                    chunk: super::key::hex(id),
                })?;
                if recent.contains(id) {
                    if !run.is_empty() && runs.send(Item::Run(std::mem::take(&mut run))).is_err() {
                        return Ok(planned);
                    }
                    if runs.send(Item::Repeat(i, place)).is_err() {
                        return Ok(planned);
                    }
                    continue;
                }
                if recent.len() == REPEAT_CACHE_CHUNKS {
                    recent.pop_front();
                }
                recent.push_back(*id);
                let joins = run.last().is_some_and(|(_, last)| {
                    let start = run[0].1.entry.offset as u64;
                    last.pack == place.pack
                        && last.entry.offset + last.entry.len == place.entry.offset
                        && (place.entry.offset + place.entry.len) as u64 - start <= MAX_READ_BYTES
                });
                if !joins
                    && !run.is_empty()
                    && runs.send(Item::Run(std::mem::take(&mut run))).is_err()
                {
                    // The workers stopped; the caller reports why.
                    return Ok(planned);
                }
                run.push((i, place));
            }
        }
    }
    if !run.is_empty() {
        let _ = runs.send(Item::Run(run));
    }
    Ok(planned)
}

/// Reads a run of blobs with one request and opens each.
fn fetch(repo: &Repo, index: &ChunkIndex, run: &[(u64, Location)]) -> Fetched {
    let (Some((_, first)), Some((_, last))) = (run.first(), run.last()) else {
        return Ok((vec![], 0));
    };
    let pack = index.pack_key(first.pack);
    let start = first.entry.offset as u64;
    let end = (last.entry.offset + last.entry.len) as u64;
    let bytes = repo.store.get_range(pack, start, end - start)?;
    if bytes.len() as u64 != end - start {
        return Err(Error::corrupted(
            pack,
            Some(bytes.len() as u64 + start),
            "pack is shorter than its index says",
        ));
    }
    let mut chunks = Vec::with_capacity(run.len());
    for (i, place) in run {
        let from = (place.entry.offset as u64 - start) as usize;
        let sealed = &bytes[from..from + place.entry.len as usize];
        let data = format::open_chunk(
            &repo.keys,
            pack,
            place.entry.offset as u64,
            &place.entry,
            sealed,
        )?;
        chunks.push((*i, place.entry.id, Arc::new(data)));
    }
    Ok((chunks, bytes.len() as u64))
}
