//! The journal's write-ahead log: `journal.wal`, next to `journal.redb`.
//!
//! # Why
//! redb makes a transaction durable by writing each changed page where it
//! lives and then fsyncing the file. A commit of one batch changes 5–10
//! scattered pages (the events leaf, the requests leaf, the table roots, the
//! allocator state, the header), and on the disks we run on an fsync costs
//! about 50 µs per scattered page: 300–600 µs per commit, against 100–150 µs
//! for one contiguous append. So the writer makes a batch durable by
//! appending it here (one write, one `fdatasync`), then commits it to redb
//! without durability (in memory, visible to readers). Once the log holds
//! [`super::Limits::wal_bytes`], a durable redb commit (a checkpoint) makes
//! redb hold everything by itself, and the log starts again at offset 0.
//!
//! # Frame
//! `"CJWF"` ‖ body length (u32 LE) ‖ the first 16 bytes of blake3(body) ‖
//! body = postcard([`Frame`]): the seq it follows, the batch's records
//! exactly as stored in `events`, and its (request id, reply) pairs.
//!
//! # Recovery
//! At open, after redb's own recovery (back to its last durable commit), the
//! journal reads the intact frames from offset 0 (a torn or damaged frame
//! ends the log). A frame that follows a seq below the head is durable
//! already (stale bytes of an earlier cycle, whose records are all at or
//! below the last checkpoint) and is skipped. One that follows the head is
//! applied if its records link to the head's hash and check like `events
//! verify` checks them; the first that does not ends the log. What was
//! applied is committed durably, and the log starts again at 0.
//!
//! # Invariants
//! - A frame is on disk before its records are visible in redb and before
//!   any caller is answered. A frame whose batch then fails to commit is
//!   erased before its callers hear of it.
//! - Every record committed since the last checkpoint is in a frame between
//!   offset 0 and the write position, in seq order, with no gap.
//! - Bytes past the write position belong to earlier cycles: their records
//!   are at or below the last checkpoint's head.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: [u8; 4] = *b"CJWF";
/// The log grows by a quarter of its checkpoint size at a time, within these
/// bounds, written as zeros: an append then overwrites bytes the file already
/// has, so its `fdatasync` need not also write the inode (the file size) on
/// every frame.
const GROW_BYTES_MIN: u64 = 64 << 10;
const GROW_BYTES_MAX: u64 = 4 << 20;
const CHECKSUM_BYTES: usize = 16;
const HEADER_BYTES: usize = MAGIC.len() + 4 + CHECKSUM_BYTES;

/// One batch, as logged.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Frame<'a> {
    /// Seq of the record this batch follows (the head before it).
    pub after: u64,
    /// Encoded [`cairn_schema::EventRecord`]s, in seq order.
    #[serde(borrow)]
    pub records: Vec<&'a [u8]>,
    /// (request id, reply) for each deduplicated request of the batch.
    #[serde(borrow)]
    pub requests: Vec<(&'a str, &'a [u8])>,
}

impl Frame<'_> {
    /// The frame as written to the log.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("frames always encode");
        let len = u32::try_from(body.len()).expect("a batch is far below 4 GiB");
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&blake3::hash(&body).as_bytes()[..CHECKSUM_BYTES]);
        out.extend_from_slice(&body);
        out
    }
}

/// The whole, intact frames at the start of `log`, in order. Stops at the
/// first that is cut short, damaged or not a frame.
pub(super) fn frames(log: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let mut rest = log;
    std::iter::from_fn(move || {
        let (header, after) = rest.split_at_checked(HEADER_BYTES)?;
        let (magic, header) = header.split_at(MAGIC.len());
        let (len, checksum) = header.split_at(4);
        if magic != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (body, after) = after.split_at_checked(len)?;
        if &blake3::hash(body).as_bytes()[..CHECKSUM_BYTES] != checksum {
            return None;
        }
        let frame = postcard::from_bytes(body).ok()?;
        rest = after;
        Some(frame)
    })
}

/// The open log and its write position.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    position: u64,
    /// The file's length.
    len: u64,
    grow_bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path`, to be checkpointed every
    /// `checkpoint_bytes`; returns it, positioned at 0, with everything the
    /// file held.
    pub fn open(path: &Path, checkpoint_bytes: u64) -> std::io::Result<(Wal, Vec<u8>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut log = Vec::new();
        file.read_to_end(&mut log)?;
        let wal = Wal {
            file,
            path: path.to_owned(),
            position: 0,
            len: log.len() as u64,
            grow_bytes: (checkpoint_bytes / 4).clamp(GROW_BYTES_MIN, GROW_BYTES_MAX),
        };
        Ok((wal, log))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written since the last restart.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Writes `frame` at the write position and waits until it is on disk.
    /// On an error the position stays, so the next frame overwrites this one.
    pub fn append(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let end = self.position + frame.len() as u64;
        if end > self.len {
            // Zeros end the log for a reader (no magic), like a torn frame.
            let grown = end.next_multiple_of(self.grow_bytes);
            let zeros = vec![0; (grown - self.len) as usize];
            self.file.write_all_at(&zeros, self.len)?;
            self.len = grown;
        }
        self.file.write_all_at(frame, self.position)?;
        self.file.sync_data()?;
        self.position += frame.len() as u64;
        Ok(())
    }

    /// Takes back the last frame appended (`len` bytes): its batch was not
    /// committed. The frame is erased on disk (its magic zeroed, then synced)
    /// before anyone hears of the failure, so a crash cannot bring it back;
    /// the next frame takes its place.
    pub fn cancel(&mut self, len: u64) -> std::io::Result<()> {
        self.position -= len;
        if len > 0 {
            self.erase_at_position()?;
        }
        Ok(())
    }

    /// Erases whatever frame starts at the write position (its magic
    /// zeroed, then synced): after an [`Wal::append`] that failed, the
    /// frame may be on disk in part or whole (a failed `fdatasync` says
    /// nothing about which), and its callers are about to hear it failed.
    pub fn erase_at_position(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&[0; MAGIC.len()], self.position)?;
        self.file.sync_data()
    }

    /// Starts again at offset 0, after a checkpoint made redb hold every
    /// logged record.
    pub fn restart(&mut self) {
        self.position = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(records: &[&[u8]], requests: &[(&str, &[u8])]) -> Vec<u8> {
        Frame {
            after: 0,
            records: records.to_vec(),
            requests: requests.to_vec(),
        }
        .encode()
    }

    #[test]
    fn frames_stop_at_the_first_torn_or_damaged_one() {
        let a = frame_bytes(&[b"r1", b"r2"], &[("id-1", b"reply")]);
        let b = frame_bytes(&[b"r3"], &[]);
        let c = frame_bytes(&[b"r4"], &[("id-4", b"")]);
        let log = [a.as_slice(), &b, &c].concat();
        let whole: Vec<_> = frames(&log).map(|f| f.records.concat()).collect();
        assert_eq!(whole, [b"r1r2".to_vec(), b"r3".to_vec(), b"r4".to_vec()]);
        let first = frames(&log).next().unwrap();
        assert_eq!(first.requests, [("id-1", &b"reply"[..])]);
        // Torn anywhere in the last frame: the others stay.
        for cut in 1..c.len() {
            assert_eq!(frames(&log[..log.len() - cut]).count(), 2, "cut {cut}");
        }
        // A flipped byte in the middle frame ends the log there.
        for at in 0..b.len() {
            let mut damaged = log.clone();
            damaged[a.len() + at] ^= 0x01;
            assert_eq!(frames(&damaged).count(), 1, "flip at {at}");
        }
        assert_eq!(frames(&[]).count(), 0);
        assert_eq!(frames(&[0; 64]).count(), 0);
    }

    #[test]
    fn appends_land_at_the_position_and_cancel_erases_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.wal");
        let (mut wal, log) = Wal::open(&path, 1 << 20).unwrap();
        assert!(log.is_empty());
        let a = frame_bytes(&[b"a"], &[]);
        let b = frame_bytes(&[b"b"], &[]);
        wal.append(&a).unwrap();
        wal.append(&b).unwrap();
        wal.cancel(b.len() as u64).unwrap();
        let (_, log) = Wal::open(&path, 1 << 20).unwrap();
        assert_eq!(frames(&log).count(), 1, "a cancelled frame is gone on disk");
        let c = frame_bytes(&[b"c"], &[]);
        wal.append(&c).unwrap();
        assert_eq!(wal.position(), (a.len() + c.len()) as u64);
        drop(wal);
        let (mut wal, log) = Wal::open(&path, 1 << 20).unwrap();
        let records: Vec<_> = frames(&log).map(|f| f.records.concat()).collect();
        assert_eq!(records, [b"a".to_vec(), b"c".to_vec()]);
        // After a restart, new frames overwrite from 0; stale ones follow.
        wal.restart();
        wal.append(&b).unwrap();
        let (_, log) = Wal::open(&path, 1 << 20).unwrap();
        let records: Vec<_> = frames(&log).map(|f| f.records.concat()).collect();
        assert_eq!(records, [b"b".to_vec(), b"c".to_vec()]);
    }
}
