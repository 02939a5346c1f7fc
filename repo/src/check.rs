//! [`Repo::check`]: reads and verifies every pack and every manifest, and
//! reports each bad object by name (and offset inside it).
//!
//! Per pack (one in memory at a time): its name is the blake3 of its bytes,
//! its trailer and sealed index open, and every blob opens and hashes to its
//! id. Then per manifest: it opens (authenticated, hashes to its id) and
//! every chunk it references is in a pack that verified. A store error
//! (unreachable) stops the check; damage never does.

use std::collections::HashSet;

use serde::Serialize;

use super::error::{Error, Result};
use super::format::{self, MANIFESTS, PACK_TRAILER, PACKS};
use super::key::hex;
use super::{ChunkRef, Repo, store};

/// One bad object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Store key (`packs/…`, `manifests/…`).
    pub object: String,
    /// Byte offset inside it, when one blob is to blame.
    pub offset: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub packs: u64,
    pub chunks: u64,
    pub manifests: u64,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn bad(&mut self, e: Error) {
        match e {
            Error::Corrupted {
                object,
                offset,
                reason,
            } => self.problems.push(Problem {
                object,
                offset,
                reason,
            }),
            other => self.problems.push(Problem {
                object: String::new(),
                offset: None,
                reason: other.to_string(),
            }),
        }
    }
}

impl Repo {
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut good: HashSet<[u8; 32]> = HashSet::new();
        store::for_each_object(&*self.store, PACKS, |object| -> Result<()> {
            let max = format::Bounds::of(&self.config).max_pack_bytes();
            let bytes = match self.store.get(&object.key, max) {
                Ok(bytes) => bytes,
                Err(store::Error::NotFound { .. }) => return Ok(()),
                Err(store::Error::Oversized { reason, .. }) => {
                    report.packs += 1;
                    report.problems.push(Problem {
                        object: object.key.clone(),
                        offset: None,
                        reason,
                    });
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            report.packs += 1;
            report.bytes_read += bytes.len() as u64;
            let before = report.problems.len();
            self.check_pack(&object.key, &bytes, &mut good, &mut report);
            let named = &object.key[PACKS.len()..];
            if report.problems.len() == before && blake3::hash(&bytes).to_hex().as_str() != named {
                report.problems.push(Problem {
                    object: object.key.clone(),
                    offset: None,
                    reason: "content does not hash to the pack's name".into(),
                });
            }
            Ok(())
        })?;
        store::for_each_object(&*self.store, MANIFESTS, |object| -> Result<()> {
            let id = &object.key[MANIFESTS.len()..];
            let manifest = match self.manifest(id) {
                Ok(m) => m,
                Err(Error::ManifestNotFound { .. }) => return Ok(()),
                Err(e @ (Error::Corrupted { .. } | Error::InvalidArgument(_))) => {
                    report.manifests += 1;
                    report.problems.push(Problem {
                        object: object.key.clone(),
                        offset: None,
                        reason: match e {
                            Error::Corrupted { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    });
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            report.manifests += 1;
            let missing = manifest
                .volumes
                .iter()
                .flat_map(|v| v.chunks.iter().map(move |c| (v, c)))
                .filter_map(|(v, c)| match c {
                    ChunkRef::Data(id) if !good.contains(id) => Some((v, id)),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if let Some((volume, id)) = missing.first() {
                report.problems.push(Problem {
                    object: object.key.clone(),
                    offset: None,
                    reason: format!(
                        "{} referenced chunks are missing or damaged (first: {} of volume {:?})",
                        missing.len(),
                        hex(&id[..8]),
                        volume.name
                    ),
                });
            }
            Ok(())
        })?;
        Ok(report)
    }

    fn check_pack(
        &self,
        key: &str,
        bytes: &[u8],
        good: &mut HashSet<[u8; 32]>,
        report: &mut CheckReport,
    ) {
        let size = bytes.len() as u64;
        if !bytes.starts_with(format::PACK_MAGIC) {
            report.bad(Error::corrupted(key, Some(0), "bad pack magic"));
        }
        let (offset, len) = match format::parse_trailer(key, size, bytes) {
            Ok(t) => t,
            Err(e) => return report.bad(e),
        };
        debug_assert_eq!(offset + len + PACK_TRAILER as u64, size);
        let sealed = &bytes[offset as usize..(offset + len) as usize];
        let bounds = format::Bounds::of(&self.config);
        let entries = match format::open_index(&self.keys, &bounds, key, offset, size, sealed) {
            Ok(entries) => entries,
            Err(e) => return report.bad(e),
        };
        for entry in entries {
            report.chunks += 1;
            let blob = &bytes[entry.offset as usize..(entry.offset + entry.len) as usize];
            match format::open_chunk(&self.keys, key, entry.offset as u64, &entry, blob) {
                Ok(_) => {
                    good.insert(entry.id);
                }
                Err(e) => report.bad(e),
            }
        }
    }
}
