//! Snapshots of the folded state: the row format, restoring the state after
//! records `1..=seq` from the newest usable snapshot plus the records after
//! it, and checking the newest snapshot against a full fold.
//!
//! # Row
//! `"CAIRNSNP"` ‖ format (u16 LE) ‖ postcard [`SnapshotHeader`] (the `World`
//! layout tag, seq, hash of record `seq`, blake3 of the body) ‖ body =
//! postcard(`World`).
//!
//! # Invariants
//! - A snapshot is a cache: one that does not decode, was written by another
//!   layout, or does not follow the record it names is skipped (logged),
//!   never an error; start-up then folds from an older one or from seq 1.
//! - This module never looks inside `World`: it folds with [`World::apply`]
//!   (through [`fold_range`]) and stores postcard bytes.
//! - Both the redb journal and the in-memory twin restore through
//!   [`restore`] and check through [`replay_full`], over [`Rows`].

use std::path::Path;

use cairn_schema::record::{ChainBreak, GENESIS_HASH};
use cairn_schema::{EventRecord, Hash, World};
use redb::ReadableTableMetadata;
use serde::{Deserialize, Serialize};

use super::verify::{Rows, fold_range};
use super::{Error, FullReplay, SnapshotCheck};

/// The first bytes of every snapshot row.
pub(super) const SNAPSHOT_MAGIC: [u8; 8] = *b"CAIRNSNP";
/// The layout of a snapshot row around its body (magic, format, header).
pub(super) const SNAPSHOT_FORMAT: u16 = 1;
/// Which `World` layout a snapshot body has: the version of the code that
/// wrote it. A snapshot written by another version is not trusted (it is
/// skipped, not an error); within one version, a body that does not decode
/// exactly (every byte consumed) is skipped too.
const WORLD_LAYOUT: &str = env!("CARGO_PKG_VERSION");

/// What [`restore`] produced.
pub(super) struct Restored {
    pub world: World,
    pub snapshot_seq: u64,
    pub folded: u64,
    pub skipped: u32,
}

/// The state after records `1..=to`: the newest snapshot at or below `to`
/// that decodes, then the records after it. `path` names the journal in
/// logs.
pub(super) fn restore(
    events: &impl Rows,
    snapshots: &impl Rows,
    path: &Path,
    to: u64,
) -> Result<Restored, Error> {
    let mut start = None;
    let mut skipped = 0;
    snapshots.visit_rev(to, &mut |seq, bytes| {
        match decode_snapshot(seq, bytes, events) {
            Ok(found) => {
                start = Some(found);
                return Ok(false);
            }
            Err(fault) => {
                skipped += 1;
                tracing::warn!(
                    path = %path.display(),
                    seq,
                    reason = %fault,
                    "journal snapshot skipped: folding from an older one or from the first record"
                );
            }
        }
        Ok(true)
    })?;
    let (mut world, hash) = start.unwrap_or((World::default(), GENESIS_HASH));
    let snapshot_seq = world.seq;
    fold_range(events, &mut world, hash, snapshot_seq + 1, to)?;
    Ok(Restored {
        folded: world.seq - snapshot_seq,
        snapshot_seq,
        world,
        skipped,
    })
}

/// Folds every record from seq 1 up to `head`, ignoring snapshots, and
/// checks the newest snapshot against the fold at its seq. The caller reads
/// both from one instant (one read transaction, or one lock).
pub(super) fn replay_full(
    events: &impl Rows,
    snapshots: &impl Rows,
    head: u64,
) -> Result<FullReplay, Error> {
    let mut world = World::default();
    let mut hash = GENESIS_HASH;
    let snapshot = match snapshots.last()? {
        None => SnapshotCheck::Absent,
        Some((seq, bytes)) => {
            hash = fold_range(events, &mut world, hash, 1, seq.min(head))?;
            let bad = |reason: String| SnapshotCheck::Bad(ChainBreak { seq, reason });
            if seq > head {
                bad(format!("snapshot at seq {seq} is ahead of the head {head}"))
            } else {
                match decode_snapshot(seq, &bytes, events) {
                    Ok((snap, _)) if snap == world => SnapshotCheck::Matches { seq },
                    Ok(_) => bad(format!(
                        "snapshot at seq {seq} differs from the fold of records 1..={seq}"
                    )),
                    Err(SnapshotFault::Foreign(reason)) => SnapshotCheck::Foreign { seq, reason },
                    Err(SnapshotFault::Damaged(reason)) => bad(reason),
                }
            }
        }
    };
    let from = world.seq + 1;
    fold_range(events, &mut world, hash, from, head)?;
    Ok(FullReplay { world, snapshot })
}

/// The header between a snapshot row's format and its body.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotHeader<'a> {
    pub layout: &'a str,
    pub seq: u64,
    /// Hash of record `seq`: ties the snapshot to this chain.
    pub head_hash: Hash,
    pub body_hash: Hash,
}

/// Why a snapshot row was not used.
#[derive(Debug)]
enum SnapshotFault {
    /// Another `World` layout wrote it.
    Foreign(String),
    Damaged(String),
}

impl std::fmt::Display for SnapshotFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFault::Foreign(reason) => write!(f, "another layout: {reason}"),
            SnapshotFault::Damaged(reason) => write!(f, "damaged: {reason}"),
        }
    }
}

pub(super) fn encode_snapshot(world: &World, head_hash: &Hash) -> Vec<u8> {
    let body = postcard::to_stdvec(world).expect("worlds always encode");
    let header = SnapshotHeader {
        layout: WORLD_LAYOUT,
        seq: world.seq,
        head_hash: *head_hash,
        body_hash: *blake3::hash(&body).as_bytes(),
    };
    let mut row = Vec::with_capacity(body.len() + 128);
    row.extend_from_slice(&SNAPSHOT_MAGIC);
    row.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    row = postcard::to_extend(&header, row).expect("headers always encode");
    row.extend_from_slice(&body);
    row
}

/// Decodes the snapshot stored under `key`, checking it against the record
/// it claims to follow; returns it with that record's hash.
fn decode_snapshot(
    key: u64,
    row: &[u8],
    events: &impl Rows,
) -> Result<(World, Hash), SnapshotFault> {
    use SnapshotFault::{Damaged, Foreign};
    let rest = row
        .strip_prefix(&SNAPSHOT_MAGIC)
        .ok_or_else(|| Damaged("no snapshot magic".into()))?;
    let (format, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| Damaged("truncated".into()))?;
    let format = u16::from_le_bytes(*format);
    if format != SNAPSHOT_FORMAT {
        return Err(Foreign(format!(
            "snapshot format {format}, this version reads {SNAPSHOT_FORMAT}"
        )));
    }
    let (header, body) = postcard::take_from_bytes::<SnapshotHeader>(rest)
        .map_err(|e| Damaged(format!("header does not decode: {e}")))?;
    if header.layout != WORLD_LAYOUT {
        return Err(Foreign(format!(
            "written by version {}, this is {WORLD_LAYOUT}",
            header.layout
        )));
    }
    if header.seq != key {
        return Err(Damaged(format!(
            "stored under seq {key} but says seq {}",
            header.seq
        )));
    }
    if blake3::hash(body).as_bytes() != &header.body_hash {
        return Err(Damaged("body does not match its hash".into()));
    }
    let record_hash = match events.get(key) {
        Ok(Some(bytes)) => {
            EventRecord::decode(&bytes)
                .map_err(|e| Damaged(format!("record {key} does not decode: {e}")))?
                .hash
        }
        Ok(None) => return Err(Damaged(format!("record {key} does not exist"))),
        Err(e) => return Err(Damaged(format!("record {key}: {e}"))),
    };
    if record_hash != header.head_hash {
        return Err(Damaged(format!(
            "record {key} has another hash than the snapshot follows"
        )));
    }
    // The body is what was written (the hash matched): a body that does not
    // decode exactly was written for another `World` layout.
    let (world, extra) = postcard::take_from_bytes::<World>(body)
        .map_err(|e| Foreign(format!("body does not decode: {e}")))?;
    if !extra.is_empty() {
        return Err(Foreign(format!(
            "{} bytes left after the body decoded",
            extra.len()
        )));
    }
    if world.seq != key {
        return Err(Damaged(format!(
            "body is the state at seq {}, not {key}",
            world.seq
        )));
    }
    Ok((world, record_hash))
}

/// Writes a snapshot of `world` (at `world.seq`, whose record hashes to
/// `head_hash`) and drops the oldest beyond `kept`.
pub(super) fn put_snapshot(
    table: &mut redb::Table<u64, &'static [u8]>,
    world: &World,
    head_hash: &Hash,
    kept: usize,
) -> Result<(), redb::StorageError> {
    let row = encode_snapshot(world, head_hash);
    table.insert(world.seq, row.as_slice())?;
    while table.len()? > kept as u64 {
        table.pop_first()?;
    }
    Ok(())
}
