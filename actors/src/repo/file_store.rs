//! [`FileStore`]: an object store in a local directory (`file:///abs/dir`),
//! the embedded default (a repo in the data dir).
//!
//! Layout: key `a/b` is the file `DIR/a/b`. A put writes `DIR/.tmp/<random>`,
//! fsyncs it, renames it over the target and fsyncs the target's directory,
//! so after a crash the object is either the old one or the new one. Files
//! left in `.tmp` by a crash are never listed; [`FileStore::open`] removes
//! those older than an hour. Listing reads the directories under the prefix
//! and sorts the keys (one page holds at most `max` keys; the directory
//! walk itself is O(objects under the prefix), which the repo keeps small:
//! few, large packs).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::store::{Error, ObjectInfo, ObjectStore};

const TMP_DIR: &str = ".tmp";
/// Age after which a file in `.tmp` is taken for a crash's leftover.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens (creating it when missing) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileStore, Error> {
        let store = FileStore { root: root.into() };
        let tmp = store.root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| store.io("open", "", e))?;
        // Another process (or this one) may be writing into `.tmp` right
        // now: only files untouched for an hour are crash leftovers.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(store)
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
            } else if key.starts_with(prefix) {
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
        let dir = path.parent().expect("keys live under the root").to_owned();
        fs::create_dir_all(&dir).map_err(|e| self.io("put", key, e))?;
        let mut nonce = [0u8; 12];
        super::key::random_bytes(&mut nonce);
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(nonce.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
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

    fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let path = self.path("get", key)?;
        fs::read(path).map_err(|e| self.io("get", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let path = self.path("get", key)?;
        let mut file = fs::File::open(path).map_err(|e| self.io("get", key, e))?;
        let size = file.metadata().map_err(|e| self.io("get", key, e))?.len();
        let len = len.min(size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| self.io("get", key, e))?;
        Ok(buf)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, Error> {
        let path = self.path("head", key)?;
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("head", key, e)),
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
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("delete", key, e)),
        }
        let dir = path.parent().expect("keys live under the root");
        sync_dir(dir).map_err(|e| self.io("delete", key, e))
    }
}
