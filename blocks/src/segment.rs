//! Segments and disks. A disk is a directory; each disk appends records
//! through a few *streams*, each with one active segment file at a time
//! (`<disk>/segments/<id>.seg`), rolled to a new one when full. Several
//! streams let concurrent writers copy into the page cache in parallel;
//! recovery orders records by generation, not by file. A failed append is cut back off the file
//! and seals the segment, so a segment is always a run of whole records
//! followed, after a crash, by at most a torn tail.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::record::{self, HEADER_LEN, Header, KIND_FLUSH};
use crate::storage::{Storage, StorageFile};
use crate::{Error, Result};

/// Append streams per disk.
const STREAMS: usize = 4;

/// One append-only segment file.
pub struct Segment {
    pub id: u32,
    pub disk: u16,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes of whole records in the file.
    pub len: AtomicU64,
    /// Written since the last successful sync.
    pub dirty: AtomicBool,
    /// No longer appended to: a compaction candidate.
    pub sealed: AtomicBool,
}

impl Segment {
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self
            .file
            .read_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))?;
        if n < buf.len() {
            return Err(Error::Corrupted {
                volume: String::new(),
                offset,
                reason: format!("segment {} ends before the record", self.path.display()),
            });
        }
        Ok(())
    }

    /// Syncs if dirty. On failure it stays dirty.
    pub fn sync(&self) -> Result<bool> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        self.file.sync().map_err(|e| {
            self.dirty.store(true, Ordering::Release);
            Error::io(&self.path, e)
        })?;
        Ok(true)
    }
}

/// The segment table shared by every disk.
#[derive(Default)]
pub struct Segments {
    pub map: RwLock<std::collections::HashMap<u32, Arc<Segment>>>,
    pub next_id: AtomicU32,
}

impl Segments {
    pub fn get(&self, id: u32) -> Option<Arc<Segment>> {
        self.map.read().unwrap().get(&id).cloned()
    }
}

struct Writer {
    active: Option<Arc<Segment>>,
    pos: u64,
}

/// One directory of the pool.
pub struct Disk {
    pub index: u16,
    pub dir: PathBuf,
    streams: Vec<Mutex<Writer>>,
    next_stream: AtomicU32,
    /// Bytes in this disk's segments (for placing new slices).
    pub used: AtomicU64,
}

pub fn segment_dir(disk_dir: &Path) -> PathBuf {
    disk_dir.join("segments")
}

pub fn segment_path(disk_dir: &Path, id: u32) -> PathBuf {
    segment_dir(disk_dir).join(format!("{id:08x}.seg"))
}

pub fn parse_segment_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok())?
}

impl Disk {
    pub fn new(index: u16, dir: PathBuf) -> Disk {
        Disk {
            index,
            dir,
            streams: (0..STREAMS)
                .map(|_| {
                    Mutex::new(Writer {
                        active: None,
                        pos: 0,
                    })
                })
                .collect(),
            next_stream: AtomicU32::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// The segments being appended to.
    pub fn active_ids(&self) -> Vec<u32> {
        self.streams
            .iter()
            .filter_map(|w| w.lock().unwrap().active.as_ref().map(|s| s.id))
            .collect()
    }

    /// A free stream if there is one, else the next in turn.
    fn stream(&self) -> std::sync::MutexGuard<'_, Writer> {
        for w in &self.streams {
            if let Ok(guard) = w.try_lock() {
                return guard;
            }
        }
        let i = self.next_stream.fetch_add(1, Ordering::Relaxed) as usize % self.streams.len();
        self.streams[i].lock().unwrap()
    }

    /// Appends `bytes` (whole records) and returns where they landed.
    pub fn append(
        &self,
        storage: &dyn Storage,
        segments: &Segments,
        segment_bytes: u64,
        bytes: &[u8],
    ) -> Result<(Arc<Segment>, u64)> {
        let mut w = self.stream();
        let full = w
            .active
            .as_ref()
            .is_none_or(|_| w.pos > 0 && w.pos + bytes.len() as u64 > segment_bytes);
        if full {
            if let Some(old) = w.active.take() {
                old.sealed.store(true, Ordering::Release);
            }
            let id = segments.next_id.fetch_add(1, Ordering::AcqRel);
            let dir = segment_dir(&self.dir);
            let path = segment_path(&self.dir, id);
            let file = storage
                .open(&path, true)
                .and_then(|f| storage.sync_dir(&dir).map(|()| f))
                .map_err(|e| Error::io(&path, e))?;
            let seg = Arc::new(Segment {
                id,
                disk: self.index,
                path,
                file,
                len: AtomicU64::new(0),
                dirty: AtomicBool::new(false),
                sealed: AtomicBool::new(false),
            });
            segments.map.write().unwrap().insert(id, seg.clone());
            w.active = Some(seg);
            w.pos = 0;
        }
        let seg = w
            .active
            .clone()
            .expect("an active segment was just ensured");
        let at = w.pos;
        if let Err(e) = seg.file.write_all_at(bytes, at) {
            // Cut the partial append off and never append here again, so the
            // segment stays a run of whole records.
            let _ = seg.file.truncate(at);
            seg.sealed.store(true, Ordering::Release);
            w.active = None;
            return Err(Error::io(&seg.path, e));
        }
        w.pos += bytes.len() as u64;
        seg.len.store(w.pos, Ordering::Release);
        seg.dirty.store(true, Ordering::Release);
        self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((seg, at))
    }

    /// Appends a flush marker without marking the segment dirty: it becomes
    /// durable with the next sync, and tells recovery that everything before
    /// it had been synced.
    pub fn mark_flushed(&self, generation: u64) {
        let mut rec = Vec::with_capacity(HEADER_LEN + 8);
        record::encode_marker(&mut rec, KIND_FLUSH, 0, 0, generation, 0);
        for stream in &self.streams {
            let mut w = stream.lock().unwrap();
            let Some(seg) = w.active.clone() else {
                continue;
            };
            if seg.file.write_all_at(&rec, w.pos).is_ok() {
                w.pos += rec.len() as u64;
                seg.len.store(w.pos, Ordering::Release);
            } else {
                let _ = seg.file.truncate(w.pos);
            }
        }
    }
}

/// A record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct Scanned {
    pub off: u64,
    pub header: Header,
    /// False when the payload checksum failed.
    pub intact: bool,
}

/// Reads the records of a segment from `from`: stops at the first bad
/// header (a torn tail). Records with a bad payload after the last flush
/// marker are dropped (they were never promised durable); before it they
/// are kept, so the block reads as EIO rather than as older data.
/// Returns the records and the end of the last whole record.
pub fn scan(file: &dyn StorageFile, from: u64) -> std::io::Result<(Vec<Scanned>, u64)> {
    let len = file.size()?;
    let mut buf = vec![0u8; len.saturating_sub(from) as usize];
    let n = file.read_at(&mut buf, from)?;
    buf.truncate(n);
    let mut out = vec![];
    let mut pos = 0usize;
    let mut last_flush = None;
    while let Some(header) = buf.get(pos..pos + HEADER_LEN).and_then(Header::read) {
        let end = pos + header.record_len();
        let Some(payload) = buf.get(pos + HEADER_LEN..end) else {
            break;
        };
        let intact = record::sum(payload) == header.psum;
        if header.kind == KIND_FLUSH && intact {
            last_flush = Some(out.len());
        }
        out.push(Scanned {
            off: from + pos as u64,
            header,
            intact,
        });
        pos = end;
    }
    let keep_bad_before = last_flush.unwrap_or(0);
    let mut i = 0;
    out.retain(|r| {
        let keep = r.intact || i < keep_bad_before;
        i += 1;
        keep
    });
    Ok((out, from + pos as u64))
}
