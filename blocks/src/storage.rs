//! The engine's only door to the disk: [`Storage`] and [`StorageFile`].
//! [`FsStorage`] is the real filesystem; [`MemStorage`] is an in-memory twin
//! for model tests that remembers what was synced and, on [`MemStorage::crash`],
//! keeps a random subset of the unsynced writes (some torn). It can also fail
//! `sync` and return ENOSPC on demand.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file the engine reads and appends to at explicit offsets.
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// Directory-level operations.
pub trait Storage: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names directly in `dir` (empty when it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` read-write, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reads a whole file, or None when it does not exist.
    fn read_all(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let file = match self.open(path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; file.size()? as usize];
        let n = file.read_at(&mut buf, 0)?;
        buf.truncate(n);
        Ok(Some(buf))
    }
    /// Writes a whole file atomically and durably (tmp, sync, rename, sync dir).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let file = self.open(&tmp, true)?;
        file.truncate(0)?;
        file.write_all_at(bytes, 0)?;
        file.sync()?;
        drop(file);
        self.rename(&tmp, path)?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

struct FsFile(File);

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut names = vec![];
        for entry in entries {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(FsFile(file)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn read_all(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Fault switches of a [`MemStorage`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// The next `n` syncs fail with EIO (and make nothing durable).
    pub fail_syncs: u32,
    /// Writes fail with ENOSPC while set.
    pub no_space: bool,
}

#[derive(Default)]
struct MemFileState {
    /// Content as of the last successful sync.
    durable: Vec<u8>,
    /// Content as readers see it now.
    current: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
}

struct MemFile {
    state: Mutex<MemFileState>,
    shared: Arc<Mutex<MemShared>>,
}

struct MemShared {
    faults: Faults,
    /// Deterministic per seed, so a failing seed replays.
    rng: fastrand::Rng,
}

/// The in-memory twin of [`FsStorage`]. Directory operations are durable at
/// once; file data is durable only after `sync`.
#[derive(Clone)]
pub struct MemStorage {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<MemFile>>>>,
    shared: Arc<Mutex<MemShared>>,
}

impl MemStorage {
    pub fn new(seed: u64) -> MemStorage {
        MemStorage {
            files: Arc::default(),
            shared: Arc::new(Mutex::new(MemShared {
                faults: Faults::default(),
                rng: fastrand::Rng::with_seed(seed),
            })),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().unwrap().faults = faults;
    }

    /// Simulates power loss: every file goes back to its synced content plus
    /// a random subset of the unsynced writes, in any order, some of them
    /// torn (only a prefix lands).
    pub fn crash(&self) {
        let files = self.files.lock().unwrap();
        let mut shared = self.shared.lock().unwrap();
        for file in files.values() {
            let mut st = file.state.lock().unwrap();
            let mut content = st.durable.clone();
            let pending = std::mem::take(&mut st.pending);
            for (offset, bytes) in pending {
                let roll = shared.rng.u64(0..4);
                let keep = match roll {
                    0 => 0,
                    1 => shared.rng.usize(0..=bytes.len()),
                    _ => bytes.len(),
                };
                let end = offset as usize + keep;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset as usize..end].copy_from_slice(&bytes[..keep]);
            }
            st.current = content.clone();
            st.durable = content;
        }
    }

    /// Flips one byte of a file's content (durable and current): bit rot.
    pub fn corrupt(&self, path: &Path, offset: u64) {
        let files = self.files.lock().unwrap();
        let file = files.get(path).expect("file to corrupt exists");
        let mut st = file.state.lock().unwrap();
        let i = offset as usize;
        st.current[i] ^= 0x5a;
        if i < st.durable.len() {
            st.durable[i] ^= 0x5a;
        }
    }

    /// Every file path, for tests that pick a victim.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.lock().unwrap().keys().cloned().collect()
    }
}

impl StorageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.state.lock().unwrap();
        let start = (offset as usize).min(st.current.len());
        let n = buf.len().min(st.current.len() - start);
        buf[..n].copy_from_slice(&st.current[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.shared.lock().unwrap().faults.no_space {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut st = self.state.lock().unwrap();
        let end = offset as usize + buf.len();
        if st.current.len() < end {
            st.current.resize(end, 0);
        }
        st.current[offset as usize..end].copy_from_slice(buf);
        st.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        {
            let mut shared = self.shared.lock().unwrap();
            if shared.faults.fail_syncs > 0 {
                shared.faults.fail_syncs -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let mut st = self.state.lock().unwrap();
        st.durable = st.current.clone();
        st.pending.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.current.resize(len as usize, 0);
        // Truncation is metadata: treat it as durable at once.
        st.durable.truncate(len as usize);
        st.pending.retain(|(off, _)| *off < len);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(self
            .files
            .lock()
            .unwrap()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get(path) {
            return Ok(f.clone());
        }
        if !create {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if self.shared.lock().unwrap().faults.no_space {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let file = Arc::new(MemFile {
            state: Mutex::default(),
            shared: self.shared.clone(),
        });
        files.insert(path.to_owned(), file.clone());
        Ok(file)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.files
            .lock()
            .unwrap()
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = self.files.lock().unwrap();
        let f = files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        files.insert(to.to_owned(), f);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
