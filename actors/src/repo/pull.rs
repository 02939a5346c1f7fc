//! [`Repo::pull`]: one manifest from the repo into the block pool.
//!
//! [`PullMode::Create`] creates each target volume (`Pool::create_volume`,
//! so a taken name fails before anything is written) and writes every data
//! chunk; holes are skipped (a new volume reads as zeroes). If the pull
//! fails, the volumes it created are deleted again. [`PullMode::Repair`]
//! works on existing volumes of the same size: it reads each chunk locally,
//! hashes it, and fetches and writes only chunks whose content differs (a
//! hole becomes `write_zeroes`).
//!
//! Reads are coalesced: consecutive chunks stored back to back in one pack
//! are fetched with one ranged read of up to [`MAX_READ_BYTES`]. Every chunk
//! is authenticated and re-hashed before it is written; a bad one stops the
//! pull with [`Error::Corrupted`] naming the pack and the offset.

use std::sync::Arc;

use cairn_blocks::{Device, Pool};

use super::Repo;
use super::error::{Error, Result};
use super::format::{self, ChunkRef, VolumeEntry};
use super::index::{ChunkIndex, Location};
use super::push::{Progress, is_zero};

/// Largest single ranged read from a pack.
pub const MAX_READ_BYTES: u64 = 16 << 20;

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
                ctx.pull_volume(volume, target, &device, mode, progress)?;
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

impl Ctx<'_> {
    fn pull_volume(
        &mut self,
        volume: &VolumeEntry,
        target: &str,
        device: &Arc<dyn Device>,
        mode: PullMode,
        progress: &dyn Fn(&Progress),
    ) -> Result<()> {
        let chunk_bytes = volume.chunk_bytes;
        let mut local = vec![0u8; chunk_bytes as usize];
        // (chunk number, place) of consecutive blobs of one pack.
        let mut run: Vec<(u64, Location)> = vec![];
        for (i, chunk) in volume.chunks.iter().enumerate() {
            let i = i as u64;
            let offset = i * chunk_bytes;
            let len = chunk_bytes.min(volume.size - offset);
            let local_data = &mut local[..len as usize];
            if mode == PullMode::Repair {
                device.read_at(local_data, offset)?;
            }
            match chunk {
                ChunkRef::Hole => {
                    self.report.hole_chunks += 1;
                    if mode == PullMode::Repair && !is_zero(local_data) {
                        device.write_zeroes(offset, len, false)?;
                        self.report.written_chunks += 1;
                    }
                }
                ChunkRef::Data(id) => {
                    if mode == PullMode::Repair && self.repo.keys.chunk_id(local_data) == *id {
                        self.report.unchanged_chunks += 1;
                    } else {
                        let place = self.index.get(id).ok_or_else(|| Error::MissingChunk {
                            manifest: self.manifest_id.to_owned(),
                            volume: volume.name.clone(),
                            chunk: super::key::hex(id),
                        })?;
                        let joins = run.last().is_some_and(|(_, last)| {
                            let start = run[0].1.entry.offset as u64;
                            last.pack == place.pack
                                && last.entry.offset + last.entry.len == place.entry.offset
                                && (place.entry.offset + place.entry.len) as u64 - start
                                    <= MAX_READ_BYTES
                        });
                        if !joins {
                            self.fetch(&mut run, chunk_bytes, device)?;
                        }
                        run.push((i, place));
                    }
                }
            }
            self.done_bytes += len;
            progress(&Progress {
                volume: target.to_owned(),
                done_bytes: self.done_bytes,
                total_bytes: self.total_bytes,
                transferred_bytes: self.report.fetched_bytes,
                packs: 0,
            });
        }
        self.fetch(&mut run, chunk_bytes, device)
    }

    /// Reads a run of blobs with one request and writes their chunks.
    fn fetch(
        &mut self,
        run: &mut Vec<(u64, Location)>,
        chunk_bytes: u64,
        device: &Arc<dyn Device>,
    ) -> Result<()> {
        let (Some((_, first)), Some((_, last))) = (run.first(), run.last()) else {
            return Ok(());
        };
        let pack = self.index.pack_key(first.pack);
        let start = first.entry.offset as u64;
        let end = (last.entry.offset + last.entry.len) as u64;
        let bytes = self.repo.store.get_range(pack, start, end - start)?;
        if bytes.len() as u64 != end - start {
            return Err(Error::corrupted(
                pack,
                Some(bytes.len() as u64 + start),
                "pack is shorter than its index says",
            ));
        }
        self.report.fetched_bytes += bytes.len() as u64;
        for (i, place) in run.iter() {
            let from = (place.entry.offset as u64 - start) as usize;
            let sealed = &bytes[from..from + place.entry.len as usize];
            let data = format::open_chunk(
                &self.repo.keys,
                pack,
                place.entry.offset as u64,
                &place.entry,
                sealed,
            )?;
            device.write_at(&data, i * chunk_bytes, false)?;
            self.report.written_chunks += 1;
        }
        run.clear();
        Ok(())
    }
}
