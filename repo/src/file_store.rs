//! [`FileStore`]: an object store in a local directory (`file:///abs/dir`),
//! the embedded default (a repo in the data dir).
//!
//! Layout: key `a/b` is the file `DIR/a/b`. A put writes `DIR/.tmp/<random>`,
//! fsyncs it, renames it over the target and fsyncs the target's directory,
//! so after a crash the object is either the old one or the new one. Files
//! left in `.tmp` by a crash are never listed. Listing reads the directories
//! under the prefix and sorts the keys (one page holds at most `max` keys;
//! the directory walk itself is O(objects under the prefix), which the repo
//! keeps small: few, large packs).
//!
//! # Safety rules (the directory may be shared with whoever wrote the repo)
//! - Nothing is swept in a directory Cairn did not make: [`FileStore::open`]
//!   removes stale files from `.tmp` only when Cairn created that `.tmp`
//!   (it holds the [`TMP_MARKER`] file), and only files named as Cairn names
//!   them (24 hex digits), regular files older than an hour. A `.tmp` that
//!   is a link or a file is refused.
//! - Reads never follow a symbolic link below the root: each component is
//!   opened with `O_NOFOLLOW` relative to its parent (`openat`), the object
//!   must be a regular file, and `get` checks its size before reading.
//!   Listing skips links. Puts and deletes refuse a linked directory.
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::store::{Error, ObjectInfo, ObjectStore};

const TMP_DIR: &str = ".tmp";
/// The file that says Cairn made `.tmp` (and may sweep it).
pub const TMP_MARKER: &str = ".cairn-tmp";
/// Length of the names of Cairn's temp files (12 random bytes, hex).
const TMP_NAME_LEN: usize = 24;
/// Age after which a file in `.tmp` is taken for a crash's leftover.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens (creating it when missing) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileStore, Error> {
        let store = FileStore { root: root.into() };
        fs::create_dir_all(&store.root).map_err(|e| store.io("open", "", e))?;
        let tmp = store.root.join(TMP_DIR);
        let ours = match fs::symlink_metadata(&tmp) {
            Ok(meta) if meta.is_dir() => {
                fs::symlink_metadata(tmp.join(TMP_MARKER)).is_ok_and(|m| m.is_file())
            }
            Ok(_) => {
                return Err(Error::Io {
                    store: store.describe(),
                    op: "open",
                    key: TMP_DIR.into(),
                    reason: "is not a directory (a link or a file): refusing to use it".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&tmp)
                    .and_then(|()| fs::File::create(tmp.join(TMP_MARKER)).map(drop))
                    .map_err(|e| store.failed("open", TMP_DIR, e))?;
                true
            }
            Err(e) => return Err(store.failed("open", TMP_DIR, e)),
        };
        if ours {
            store.sweep_tmp(&tmp);
        }
        Ok(store)
    }

    /// Removes Cairn's own crash leftovers from `.tmp`. Another process (or
    /// this one) may be writing there right now: only files untouched for
    /// an hour are leftovers.
    fn sweep_tmp(&self, tmp: &Path) {
        let Ok(entries) = fs::read_dir(tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let cairns = name.len() == TMP_NAME_LEN
                && name
                    .as_encoded_bytes()
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
            if !cairns {
                continue;
            }
            // `DirEntry::metadata` does not follow links.
            let stale = entry
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .is_some_and(|m| {
                    m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_TMP)
                });
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Opens object `key` for reading without following any link below the
    /// root; it must be a regular file.
    fn open_object(&self, op: &'static str, key: &str) -> Result<fs::File, Error> {
        use std::os::fd::{AsRawFd, FromRawFd};
        self.path(op, key)?;
        let mut dir = fs::File::open(&self.root).map_err(|e| self.failed(op, key, e))?;
        let parts: Vec<&str> = key.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let name = std::ffi::CString::new(*part).expect("checked keys have no NUL");
            let flags = libc::O_RDONLY
                | libc::O_NOFOLLOW
                | libc::O_CLOEXEC
                | if last {
                    libc::O_NONBLOCK
                } else {
                    libc::O_DIRECTORY
                };
            // SAFETY: `dir` is an open descriptor and `name` a C string;
            // the returned descriptor is owned by the new `File`.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                return Err(
                    if e.raw_os_error() == Some(libc::ELOOP)
                        || e.raw_os_error() == Some(libc::ENOTDIR)
                    {
                        self.failed(op, key, std::io::Error::other("a link or not a directory"))
                    } else {
                        self.io(op, key, e)
                    },
                );
            }
            // SAFETY: `fd` was just opened and is owned by nobody else.
            dir = unsafe { fs::File::from_raw_fd(fd) };
        }
        let meta = dir.metadata().map_err(|e| self.failed(op, key, e))?;
        if !meta.is_file() {
            return Err(self.failed(op, key, std::io::Error::other("not a regular file")));
        }
        Ok(dir)
    }

    /// Refuses a put or delete whose directories below the root are links.
    fn check_dirs(&self, op: &'static str, key: &str) -> Result<(), Error> {
        let mut dir = self.root.clone();
        let parts: Vec<&str> = key.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if !meta.is_dir() => {
                    return Err(self.failed(
                        op,
                        key,
                        std::io::Error::other("a directory of the key is a link or a file"),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(self.failed(op, key, e)),
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf, Error> {
        let valid = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            });
        if !valid {
            return Err(Error::Io {
                store: self.describe(),
                op,
                key: key.to_owned(),
                reason: "invalid object key".into(),
            });
        }
        Ok(self.root.join(key))
    }

    /// A failure of `op` on `key`; a missing file is [`Error::NotFound`].
    fn io(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                store: self.describe(),
                key: key.to_owned(),
            }
        } else {
            self.failed(op, key, e)
        }
    }

    /// A failure of `op` on `key`, whatever the cause (for operations where
    /// a missing file does not mean a missing object).
    fn failed(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        Error::Io {
            store: self.describe(),
            op,
            key: key.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Lists files under `dir`. A directory or file that vanished meanwhile
    /// is skipped; any other read error fails the listing (a listing that
    /// silently missed objects would make prune delete live data).
    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        out: &mut Vec<ObjectInfo>,
    ) -> Result<(), Error> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.failed("list", rel, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| self.failed("list", rel, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Descend only where keys can still start with the prefix.
            let shared = key.len().min(prefix.len());
            if key.as_bytes()[..shared] != prefix.as_bytes()[..shared] {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.failed("list", &key, e)),
            };
            if meta.is_dir() {
                self.walk(&entry.path(), &key, prefix, out)?;
            } else if meta.is_file() && key.starts_with(prefix) {
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                });
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl ObjectStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), Error> {
        let path = self.path("put", key)?;
        self.check_dirs("put", key)?;
        let dir = path.parent().expect("keys live under the root").to_owned();
        fs::create_dir_all(&dir).map_err(|e| self.io("put", key, e))?;
        let mut nonce = [0u8; 12];
        super::key::random_bytes(&mut nonce);
        let tmp = self.root.join(TMP_DIR).join(hex::encode(nonce));
        let result = (|| {
            let mut file = fs::File::create_new(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // Never `NotFound`: the object's absence is not what failed.
        result.map_err(|e| self.failed("put", key, e))
    }

    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, Error> {
        let file = self.open_object("get", key)?;
        let size = file.metadata().map_err(|e| self.io("get", key, e))?.len();
        if size > max {
            return Err(Error::oversized(self.describe(), "get", key, max));
        }
        let mut buf = Vec::with_capacity(size as usize);
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.io("get", key, e))?;
        if buf.len() as u64 > max {
            return Err(Error::oversized(self.describe(), "get", key, max));
        }
        Ok(buf)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut file = self.open_object("get", key)?;
        let size = file.metadata().map_err(|e| self.io("get", key, e))?.len();
        let len = len.min(size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| self.io("get", key, e))?;
        Ok(buf)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.open_object("head", key) {
            Ok(file) => Ok(Some(
                file.metadata().map_err(|e| self.io("head", key, e))?.len(),
            )),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, Error> {
        let mut all = vec![];
        self.walk(&self.root, "", prefix, &mut all)?;
        all.retain(|o| after.is_none_or(|a| o.key.as_str() > a));
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all.truncate(max);
        Ok(all)
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        let path = self.path("delete", key)?;
        self.check_dirs("delete", key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("delete", key, e)),
        }
        let dir = path.parent().expect("keys live under the root");
        sync_dir(dir).map_err(|e| self.io("delete", key, e))
    }
}
