//! The walking-skeleton engine: one sparse file per volume, snapshots by a
//! copy of the allocated extents (O(bytes written), not O(1)).
//!
//! # Layout
//! ```text
//! <root>/volumes/<escaped volume>/data          the live volume (sparse)
//! <root>/volumes/<escaped volume>/size          logical size, decimal
//! <root>/volumes/<escaped volume>/snaps/<snap>  frozen copies (sparse)
//! ```
//! Volume names may contain `/` (`app/pvc`); on disk it is escaped as `%2F`.
//!
//! # Invariants
//! - A snapshot is taken with the volume's gate held for writing, so it
//!   captures one instant: no write is half in it.
//! - A file under `snaps/` is complete: it is copied to `snaps/.<snap>.tmp`,
//!   fsynced and renamed into place.
//! - `flush` fsyncs the data file; `fua` writes use `sync_data` before they
//!   return.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::{Device, Error, Result};

/// Copy granularity for snapshots; all-zero chunks are left as holes.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Largest volume the pool accepts (64 TiB).
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

/// A parsed export name: `v` or `v@s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportName {
    pub volume: String,
    pub snapshot: Option<String>,
}

impl ExportName {
    pub fn parse(name: &str) -> Result<ExportName> {
        match name.split_once('@') {
            None => Ok(ExportName {
                volume: name.to_owned(),
                snapshot: None,
            }),
            Some((volume, snapshot)) => Ok(ExportName {
                volume: volume.to_owned(),
                snapshot: Some(snapshot.to_owned()),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    /// Bytes actually allocated on disk for the live volume.
    pub allocated_bytes: u64,
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub allocated_bytes: u64,
}

/// One volume's open state.
struct Volume {
    name: String,
    dir: PathBuf,
    size_bytes: u64,
    data: File,
    /// Writers take it shared, snapshots exclusive: the I/O fence.
    gate: RwLock<()>,
}

/// A pool of volumes under one directory.
pub struct Pool {
    root: PathBuf,
    volumes: Mutex<BTreeMap<String, Arc<Volume>>>,
}

fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(name: &str) -> String {
    name.replace("%2F", "/").replace("%25", "%")
}

fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 253 {
        Some("longer than 253 bytes")
    } else if name.contains('@') {
        Some("'@' separates volume and snapshot")
    } else if name.starts_with('.') || name.contains("/.") || name.contains('\0') {
        Some("leading '.' or NUL")
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

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl Pool {
    /// Opens (creating if needed) a pool rooted at `root` and loads every
    /// volume found there.
    pub fn open(root: impl Into<PathBuf>) -> Result<Pool> {
        let root = root.into();
        let vols = root.join("volumes");
        fs::create_dir_all(&vols).map_err(|e| Error::io(&vols, e))?;
        let mut volumes = BTreeMap::new();
        for entry in fs::read_dir(&vols).map_err(|e| Error::io(&vols, e))? {
            let entry = entry.map_err(|e| Error::io(&vols, e))?;
            let dir = entry.path();
            let name = unescape(&entry.file_name().to_string_lossy());
            let size_path = dir.join("size");
            let Ok(size_text) = fs::read_to_string(&size_path) else {
                // A volume whose creation never finished: no size file yet.
                tracing::warn!(volume = %name, "removing half-created volume");
                let _ = fs::remove_dir_all(&dir);
                continue;
            };
            let size_bytes = size_text
                .trim()
                .parse::<u64>()
                .map_err(|e| Error::Corrupted {
                    volume: name.clone(),
                    offset: 0,
                    reason: format!("bad size file: {e}"),
                })?;
            let data_path = dir.join("data");
            let data = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&data_path)
                .map_err(|e| Error::io(&data_path, e))?;
            volumes.insert(
                name.clone(),
                Arc::new(Volume {
                    name,
                    dir,
                    size_bytes,
                    data,
                    gate: RwLock::new(()),
                }),
            );
        }
        Ok(Pool {
            root,
            volumes: Mutex::new(volumes),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.volumes
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::VolumeNotFound {
                volume: name.to_owned(),
            })
    }

    pub fn create_volume(&self, name: &str, size_bytes: u64) -> Result<()> {
        check_name(name)?;
        if size_bytes == 0 || size_bytes > MAX_VOLUME_BYTES {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                reason: "size must be 1 byte to 64 TiB",
            });
        }
        let mut volumes = self.volumes.lock().unwrap();
        if volumes.contains_key(name) {
            return Err(Error::VolumeExists {
                volume: name.to_owned(),
            });
        }
        let dir = self.root.join("volumes").join(escape(name));
        let snaps = dir.join("snaps");
        fs::create_dir_all(&snaps).map_err(|e| Error::io(&snaps, e))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(|e| Error::io(&data_path, e))?;
        data.set_len(size_bytes)
            .map_err(|e| Error::io(&data_path, e))?;
        data.sync_all().map_err(|e| Error::io(&data_path, e))?;
        // The size file is written last: its presence marks a complete volume.
        write_durably(&dir.join("size"), size_bytes.to_string().as_bytes())?;
        volumes.insert(
            name.to_owned(),
            Arc::new(Volume {
                name: name.to_owned(),
                dir,
                size_bytes,
                data,
                gate: RwLock::new(()),
            }),
        );
        Ok(())
    }

    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let volume =
            self.volumes
                .lock()
                .unwrap()
                .remove(name)
                .ok_or_else(|| Error::VolumeNotFound {
                    volume: name.to_owned(),
                })?;
        fs::remove_dir_all(&volume.dir).map_err(|e| Error::io(&volume.dir, e))
    }

    /// Freezes `volume` as `volume@snapshot`. Writes are fenced while it runs.
    pub fn snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        check_name(snapshot)?;
        if snapshot.contains('/') {
            return Err(Error::InvalidName {
                name: snapshot.to_owned(),
                reason: "'/' is not allowed",
            });
        }
        let vol = self.volume(volume)?;
        let target = vol.dir.join("snaps").join(snapshot);
        if target.exists() {
            return Err(Error::SnapshotExists {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
            });
        }
        let tmp = vol.dir.join("snaps").join(format!(".{snapshot}.tmp"));
        let _fence = vol.gate.write().unwrap();
        let result = copy_sparse(&vol.data, vol.size_bytes, &tmp).and_then(|()| {
            fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
            sync_dir(&vol.dir.join("snaps"))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        let vol = self.volume(volume)?;
        let path = vol.dir.join("snaps").join(snapshot);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::SnapshotNotFound {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
            }),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn snapshot_names(vol: &Volume) -> Result<Vec<String>> {
        let snaps = vol.dir.join("snaps");
        let mut names = Vec::new();
        for entry in fs::read_dir(&snaps).map_err(|e| Error::io(&snaps, e))? {
            let entry = entry.map_err(|e| Error::io(&snaps, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let vol = self.volume(name)?;
        let snapshots = Self::snapshot_names(&vol)?
            .into_iter()
            .map(|snap| SnapshotInfo {
                allocated_bytes: allocated(&vol.dir.join("snaps").join(&snap)),
                name: snap,
            })
            .collect();
        Ok(VolumeInfo {
            name: vol.name.clone(),
            size_bytes: vol.size_bytes,
            allocated_bytes: allocated(&vol.dir.join("data")),
            snapshots,
        })
    }

    pub fn list_volumes(&self) -> Vec<String> {
        self.volumes.lock().unwrap().keys().cloned().collect()
    }

    /// Opens `v` (read-write) or `v@s` (read-only) for a front-end.
    pub fn open_export(&self, export: &str) -> Result<Arc<dyn Device>> {
        let parsed = ExportName::parse(export)?;
        let vol = self.volume(&parsed.volume)?;
        match parsed.snapshot {
            None => Ok(Arc::new(LiveDevice {
                export: export.to_owned(),
                volume: vol,
            })),
            Some(snap) => {
                let path = vol.dir.join("snaps").join(&snap);
                let file = File::open(&path).map_err(|e| match e.kind() {
                    ErrorKind::NotFound => Error::SnapshotNotFound {
                        volume: parsed.volume.clone(),
                        snapshot: snap.clone(),
                    },
                    _ => Error::io(&path, e),
                })?;
                Ok(Arc::new(SnapshotDevice {
                    export: export.to_owned(),
                    size_bytes: vol.size_bytes,
                    file,
                }))
            }
        }
    }

    /// Every export name: each volume and each of its snapshots.
    pub fn export_names(&self) -> Vec<String> {
        let volumes: Vec<Arc<Volume>> = self.volumes.lock().unwrap().values().cloned().collect();
        let mut names = Vec::new();
        for vol in volumes {
            names.push(vol.name.clone());
            for snap in Self::snapshot_names(&vol).unwrap_or_default() {
                names.push(format!("{}@{}", vol.name, snap));
            }
        }
        names
    }

    /// Flushes every volume.
    pub fn flush_all(&self) -> Result<()> {
        let volumes: Vec<Arc<Volume>> = self.volumes.lock().unwrap().values().cloned().collect();
        for vol in volumes {
            vol.data
                .sync_data()
                .map_err(|e| Error::io(vol.dir.join("data"), e))?;
        }
        Ok(())
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

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().expect("a file path has a parent"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Copies the allocated extents of `src` into a new sparse file: it walks
/// the data regions with SEEK_DATA/SEEK_HOLE, so its cost follows the bytes
/// written, not the volume's size. All-zero chunks stay holes.
fn copy_sparse(src: &File, size_bytes: u64, dst_path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dst = File::create(dst_path).map_err(|e| Error::io(dst_path, e))?;
    dst.set_len(size_bytes)
        .map_err(|e| Error::io(dst_path, e))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let seek = |offset: u64, whence: i32| -> Result<Option<u64>> {
        // SAFETY: lseek on an fd we own; it only moves the file offset,
        // which positioned IO (pread/pwrite) never uses.
        let rc = unsafe { libc::lseek(src.as_raw_fd(), offset as libc::off_t, whence) };
        if rc >= 0 {
            return Ok(Some(rc as u64));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(Error::io(dst_path, err)),
        }
    };
    let mut offset = 0u64;
    while offset < size_bytes {
        let Some(data_start) = seek(offset, libc::SEEK_DATA)? else {
            break;
        };
        let data_end = seek(data_start, libc::SEEK_HOLE)?
            .unwrap_or(size_bytes)
            .min(size_bytes);
        let mut pos = data_start;
        while pos < data_end {
            let n = COPY_CHUNK_BYTES.min((data_end - pos) as usize);
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(|e| Error::io(dst_path, e))?;
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], pos)
                    .map_err(|e| Error::io(dst_path, e))?;
            }
            pos += n as u64;
        }
        offset = data_end;
    }
    dst.sync_all().map_err(|e| Error::io(dst_path, e))
}

fn check_range(name: &str, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            volume: name.to_owned(),
            offset,
            len,
            size,
        }),
    }
}

struct LiveDevice {
    export: String,
    volume: Arc<Volume>,
}

impl LiveDevice {
    fn data_path(&self) -> PathBuf {
        self.volume.dir.join("data")
    }

    fn sync(&self) -> Result<()> {
        self.volume
            .data
            .sync_data()
            .map_err(|e| Error::io(self.data_path(), e))
    }

    fn punch(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        check_range(&self.export, self.volume.size_bytes, offset, len)?;
        let _gate = self.volume.gate.read().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on an fd we own, with in-range arguments.
        let rc = unsafe {
            libc::fallocate(
                self.volume.data.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(Error::io(self.data_path(), std::io::Error::last_os_error()));
        }
        if fua {
            self.sync()?;
        }
        Ok(())
    }
}

impl Device for LiveDevice {
    fn name(&self) -> &str {
        &self.export
    }
    fn size(&self) -> u64 {
        self.volume.size_bytes
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(
            &self.export,
            self.volume.size_bytes,
            offset,
            buf.len() as u64,
        )?;
        self.volume
            .data
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(self.data_path(), e))
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        check_range(
            &self.export,
            self.volume.size_bytes,
            offset,
            buf.len() as u64,
        )?;
        let _gate = self.volume.gate.read().unwrap();
        self.volume
            .data
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(self.data_path(), e))?;
        if fua {
            self.sync()?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.punch(offset, len, fua)
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.punch(offset, len, false)
    }
    fn flush(&self) -> Result<()> {
        self.sync()
    }
}

struct SnapshotDevice {
    export: String,
    size_bytes: u64,
    file: File,
}

impl Device for SnapshotDevice {
    fn name(&self) -> &str {
        &self.export
    }
    fn size(&self) -> u64 {
        self.size_bytes
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.export, self.size_bytes, offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.export, e))
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> Result<()> {
        Err(Error::ReadOnly {
            export: self.export.clone(),
        })
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<()> {
        Err(Error::ReadOnly {
            export: self.export.clone(),
        })
    }
    fn trim(&self, _: u64, _: u64) -> Result<()> {
        Err(Error::ReadOnly {
            export: self.export.clone(),
        })
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_freezes_data_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create_volume("app/data-db-0", 8 << 20).unwrap();
        let live = pool.open_export("app/data-db-0").unwrap();
        live.write_at(&[0x5a; 4096], 4096, false).unwrap();
        pool.snapshot("app/data-db-0", "s1").unwrap();
        live.write_at(&[0x11; 4096], 4096, true).unwrap();
        drop(live);
        drop(pool);

        let pool = Pool::open(dir.path()).unwrap();
        assert_eq!(pool.list_volumes(), vec!["app/data-db-0".to_owned()]);
        let snap = pool.open_export("app/data-db-0@s1").unwrap();
        assert!(snap.read_only());
        let mut buf = [0u8; 4096];
        snap.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [0x5a; 4096]);
        assert!(matches!(
            snap.write_at(&buf, 0, false),
            Err(Error::ReadOnly { .. })
        ));
        let live = pool.open_export("app/data-db-0").unwrap();
        live.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [0x11; 4096]);
        assert_eq!(
            pool.export_names(),
            vec!["app/data-db-0".to_owned(), "app/data-db-0@s1".to_owned()]
        );
    }

    #[test]
    fn bad_input_is_refused_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        assert!(matches!(
            pool.create_volume("a@b", 1 << 20),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            pool.create_volume("", 1 << 20),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            pool.open_export("nope"),
            Err(Error::VolumeNotFound { .. })
        ));
        pool.create_volume("v", 1 << 20).unwrap();
        assert!(matches!(
            pool.create_volume("v", 1 << 20),
            Err(Error::VolumeExists { .. })
        ));
        assert!(matches!(
            pool.open_export("v@nope"),
            Err(Error::SnapshotNotFound { .. })
        ));
        let live = pool.open_export("v").unwrap();
        let mut buf = [0u8; 16];
        let err = live.read_at(&mut buf, (1 << 20) - 8).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        live.write_at(&[7; 8192], 0, false).unwrap();
        live.trim(0, 4096).unwrap();
        let mut page = [1u8; 8192];
        live.read_at(&mut page, 0).unwrap();
        assert!(page[..4096].iter().all(|&b| b == 0));
        assert!(page[4096..].iter().all(|&b| b == 7));
    }

    #[test]
    fn half_created_volume_is_discarded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("volumes/ghost/snaps")).unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        assert!(pool.list_volumes().is_empty());
        assert!(!dir.path().join("volumes/ghost").exists());
    }

    #[test]
    fn snapshot_copies_scattered_extents_of_a_large_thin_volume() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create_volume("big", 64 << 30).unwrap();
        let live = pool.open_export("big").unwrap();
        let spots = [
            0u64,
            4096 * 3,
            1 << 30,
            (37 << 30) + 12345,
            (64 << 30) - 4096,
        ];
        for (i, &spot) in spots.iter().enumerate() {
            live.write_at(&[i as u8 + 1; 4096], spot, false).unwrap();
        }
        pool.snapshot("big", "s").unwrap();
        let snap = pool.open_export("big@s").unwrap();
        let mut buf = [0u8; 4096];
        for (i, &spot) in spots.iter().enumerate() {
            snap.read_at(&mut buf, spot).unwrap();
            assert_eq!(buf, [i as u8 + 1; 4096], "extent at {spot}");
        }
        snap.read_at(&mut buf, 20 << 30).unwrap();
        assert_eq!(buf, [0; 4096], "holes stay zero");
        let info = pool.volume_info("big").unwrap();
        assert!(
            info.snapshots[0].allocated_bytes < 64 << 20,
            "the snapshot stays thin: {info:?}"
        );
    }
}
