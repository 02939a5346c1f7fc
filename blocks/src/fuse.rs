//! The FUSE front-end: a mount with one regular file per export, so that
//! loop devices, `dd`, `fio` and real filesystems can use volumes without an
//! NBD client.
//!
//! # Layout
//! ```text
//! DIR/v            volume v, read-write (mode 0600)
//! DIR/v@s          snapshot s of v, read-only (mode 0400)
//! DIR/app/pvc      volume "app/pvc": each '/' in a volume name is a directory
//! DIR/app/pvc@s    its snapshot s
//! ```
//! The tree is derived from [`Exports::export_names`] on every lookup and
//! every `opendir`, so volumes created or deleted after the mount show up
//! at once (entries and attributes are cached by the kernel for [`TTL`]; no
//! negative entries are cached). A name that cannot be a path (an empty or
//! `.`/`..` component, a snapshot name with '/') is left out of the tree. When a
//! volume `a` and a volume `a/b` both exist, the directory `a` wins and the
//! volume `a` is reachable over NBD only.
//!
//! # State
//! - The inode table maps (kind, path) to an inode number. Numbers are never
//!   reused within a mount, so a deleted and re-created name gets the same
//!   number back and a file never turns into a directory under the kernel's
//!   feet. It grows with the distinct names seen during the mount.
//! - Open files hold an `Arc<dyn Device>` in a handle table; an open
//!   directory holds the listing taken at `opendir`, so `readdir` offsets
//!   stay stable while volumes come and go.
//!
//! # I/O
//! Every open is `direct_io`: the kernel keeps no page cache for these files,
//! so what NBD clients write is what FUSE readers see, and a loop device or
//! an `O_DIRECT` reader is not cached twice. Reads past the end are short,
//! writes past the end fail with `ENOSPC` (as on a block device), and the
//! size never changes: `truncate` to another size fails with `EPERM` (use
//! `cairn volume resize`). `fsync` and a `close` after writes flush the
//! device; `fallocate` maps `PUNCH_HOLE` to trim and `ZERO_RANGE` to
//! write-zeroes. Snapshots refuse opens for writing with `EROFS`.
//!
//! # Invariants
//! - No lock is held across a `Device` call; devices are shared and take
//!   `&self`, and the session runs [`Limits::threads`] request threads.
//! - A request never allocates more than [`Limits::max_io_bytes`] (the kernel
//!   asks for at most 1 MiB anyway).
//! - Errors from the engine reach the caller as `Error::errno()`; nothing on
//!   an I/O path panics.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use tracing::{debug, warn};

use crate::Device;
use crate::nbd::Exports;

/// How long the kernel may cache an entry or an attribute.
pub const TTL: Duration = Duration::from_secs(1);

/// Resource bounds of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Threads reading requests from `/dev/fuse`.
    pub threads: usize,
    /// Largest READ or WRITE served in one request; longer reads are short.
    pub max_io_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            threads: 4,
            max_io_bytes: 32 << 20,
        }
    }
}

impl Limits {
    /// Clamps every bound into its sane range.
    pub fn sanitize(self) -> Limits {
        Limits {
            threads: self.threads.clamp(1, 64),
            max_io_bytes: self.max_io_bytes.clamp(4096, 32 << 20),
        }
    }
}

/// Mounts `exports` on `dir` (created if missing) with [`Limits::default`].
/// See [`mount_with`].
pub fn mount(dir: &Path, exports: Arc<dyn Exports>) -> io::Result<FuseHandle> {
    mount_with(dir, exports, Limits::default())
}

/// Mounts `exports` on `dir` and serves it on background threads until the
/// handle is unmounted or dropped. A dead FUSE mount left on `dir` by a
/// killed process ("transport endpoint is not connected") is detached first.
pub fn mount_with(dir: &Path, exports: Arc<dyn Exports>, limits: Limits) -> io::Result<FuseHandle> {
    let limits = limits.sanitize();
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("mounting FUSE on {}: {e}", dir.display()));
    clear_stale_mount(dir).map_err(context)?;
    std::fs::create_dir_all(dir).map_err(context)?;
    let mountpoint = dir.canonicalize().map_err(context)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("cairn".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(limits.threads);
    let fs = CairnFs::new(exports, limits);
    let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(context)?;
    debug!(mountpoint = %mountpoint.display(), "FUSE mounted");
    Ok(FuseHandle {
        mountpoint,
        session: Some(session),
    })
}

/// A running mount. Dropping it unmounts, like [`FuseHandle::unmount`].
#[derive(Debug)]
pub struct FuseHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl FuseHandle {
    /// The mounted directory (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the request threads to stop. When the mount
    /// is busy (a loop device or an open file still uses it), it is detached
    /// lazily instead: the directory empties at once, and the files in use
    /// keep working until they are closed or this process exits.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    "FUSE mount is busy (a loop device or an open file?): detaching it lazily"
                );
                detach(&self.mountpoint)
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("unmounting {}: {e}", self.mountpoint.display()),
            )),
        }
    }
}

impl Drop for FuseHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!(error = %e, "FUSE unmount failed");
        }
    }
}

/// `umount -l`: takes the mount out of the namespace now, frees it when the
/// last user is gone.
fn detach(dir: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("detaching {}: {e}", dir.display()),
        ))
    }
}

/// Detaches a FUSE mount whose server died (stat fails with ENOTCONN), so a
/// restarted process can mount on the same directory.
fn clear_stale_mount(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(dir = %dir.display(), "detaching a dead FUSE mount left by an earlier process");
            detach(dir)
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Dir,
    File,
}

impl Kind {
    fn file_type(self) -> FileType {
        match self {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        }
    }
}

/// Splits an export name into its directory components and its file name:
/// `app/pvc@s` → (["app"], "pvc@s"). None if it cannot be shown as a path.
fn export_path(export: &str) -> Option<(Vec<&str>, String)> {
    let (volume, snapshot) = match export.split_once('@') {
        Some((v, s)) => (v, Some(s)),
        None => (export, None),
    };
    let bad = |c: &str| c.is_empty() || c == "." || c == ".." || c.contains('\0');
    let mut components: Vec<&str> = volume.split('/').collect();
    if components.iter().any(|c| bad(c)) {
        return None;
    }
    let leaf = components.pop()?;
    let file = match snapshot {
        None => leaf.to_owned(),
        Some(s) if s.is_empty() || s.contains('/') || s.contains('\0') => return None,
        Some(s) => format!("{leaf}@{s}"),
    };
    if file.len() > 255 {
        return None;
    }
    Some((components, file))
}

/// The entries of directory `dir` ("" for the root; "app" for `app/…`) among
/// `exports`, sorted by name. A directory wins over a file of the same name.
fn children(exports: &[String], dir: &str) -> BTreeMap<String, Kind> {
    let dir_components: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    let mut out = BTreeMap::new();
    for export in exports {
        let Some((components, file)) = export_path(export) else {
            continue;
        };
        if !components.starts_with(&dir_components) {
            continue;
        }
        match components.get(dir_components.len()) {
            Some(sub) => {
                out.insert((*sub).to_owned(), Kind::Dir);
            }
            None => {
                out.entry(file).or_insert(Kind::File);
            }
        }
    }
    out
}

fn child_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    /// "" for the root, "app" for a directory, the export name for a file.
    path: String,
    parent: u64,
}

struct Inodes {
    by_key: HashMap<(Kind, String), u64>,
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl Inodes {
    fn new() -> Inodes {
        let root = Node {
            kind: Kind::Dir,
            path: String::new(),
            parent: INodeNo::ROOT.0,
        };
        Inodes {
            by_key: HashMap::from([((Kind::Dir, String::new()), INodeNo::ROOT.0)]),
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next: INodeNo::ROOT.0 + 1,
        }
    }

    fn get_or_insert(&mut self, kind: Kind, path: String, parent: u64) -> u64 {
        if let Some(&ino) = self.by_key.get(&(kind, path.clone())) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert((kind, path.clone()), ino);
        self.nodes.insert(ino, Node { kind, path, parent });
        ino
    }
}

// ---------------------------------------------------------------------------
// The filesystem
// ---------------------------------------------------------------------------

/// A directory's entries as of `opendir`: (inode, kind, name), `.` and `..`
/// first. A readdir offset is an index into it.
type Listing = Vec<(u64, Kind, String)>;

struct OpenFile {
    device: Arc<dyn Device>,
    /// Set by a write, cleared by a flush: `close` and `release` flush only
    /// when something was written.
    dirty: AtomicBool,
}

struct CairnFs {
    exports: Arc<dyn Exports>,
    limits: Limits,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_handle: AtomicU64,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The tables stay consistent even if a request thread panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(e: &crate::Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs an engine error at a level that matches its errno and converts it.
fn engine_error(op: &str, e: &crate::Error) -> Errno {
    match e.errno() {
        libc::EIO => warn!(op, error = %e, "FUSE request failed"),
        _ => debug!(op, error = %e, "FUSE request refused"),
    }
    errno(e)
}

impl CairnFs {
    fn new(exports: Arc<dyn Exports>, limits: Limits) -> CairnFs {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        CairnFs {
            exports,
            limits,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
            uid,
            gid,
        }
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        lock(&self.inodes)
            .nodes
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, kind: Kind, size: u64, read_only: bool) -> FileAttr {
        let (perm, nlink) = match (kind, read_only) {
            (Kind::Dir, _) => (0o755, 2),
            (Kind::File, false) => (0o600, 1),
            (Kind::File, true) => (0o400, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: kind.file_type(),
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: crate::BLOCK_SIZE,
            flags: 0,
        }
    }

    fn device_attr(&self, ino: u64, device: &dyn Device) -> FileAttr {
        self.attr(ino, Kind::File, device.size(), device.read_only())
    }

    /// Attributes of a node, opening the export for a file.
    fn node_attr(&self, ino: u64, node: &Node) -> Result<FileAttr, Errno> {
        match node.kind {
            Kind::Dir => Ok(self.attr(ino, Kind::Dir, 0, false)),
            Kind::File => {
                let device = self
                    .exports
                    .open_export(&node.path)
                    .map_err(|e| engine_error("getattr", &e))?;
                Ok(self.device_attr(ino, device.as_ref()))
            }
        }
    }

    fn open_file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn lookup_inner(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let name = std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::ENOENT)?;
        let listing = children(&self.exports.export_names(), &dir.path);
        let kind = *listing.get(name).ok_or(Errno::ENOENT)?;
        let path = child_path(&dir.path, name);
        let ino = lock(&self.inodes).get_or_insert(kind, path.clone(), parent.0);
        self.node_attr(
            ino,
            &Node {
                kind,
                path,
                parent: parent.0,
            },
        )
    }

    fn opendir_inner(&self, ino: INodeNo) -> Result<u64, Errno> {
        let dir = self.node(ino)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let listing = children(&self.exports.export_names(), &dir.path);
        let mut entries: Listing = vec![
            (ino.0, Kind::Dir, ".".to_owned()),
            (dir.parent, Kind::Dir, "..".to_owned()),
        ];
        {
            let mut inodes = lock(&self.inodes);
            for (name, kind) in listing {
                let child = inodes.get_or_insert(kind, child_path(&dir.path, &name), ino.0);
                entries.push((child, kind, name));
            }
        }
        let fh = self.new_handle();
        lock(&self.dirs).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    fn open_inner(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let device = self
            .exports
            .open_export(&node.path)
            .map_err(|e| engine_error("open", &e))?;
        let writing = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if writing && device.read_only() {
            return Err(Errno::EROFS);
        }
        if flags.0 & libc::O_TRUNC != 0 && writing && device.size() != 0 {
            return Err(Errno::EPERM);
        }
        let fh = self.new_handle();
        let file = OpenFile {
            device,
            dirty: AtomicBool::new(false),
        };
        lock(&self.files).insert(fh, Arc::new(file));
        Ok(fh)
    }

    fn read_inner(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.open_file(fh)?;
        let device_size = file.device.size();
        if offset >= device_size {
            return Ok(Vec::new());
        }
        let len = u64::from(size.min(self.limits.max_io_bytes)).min(device_size - offset);
        let mut buf = vec![0u8; len as usize];
        file.device
            .read_at(&mut buf, offset)
            .map_err(|e| engine_error("read", &e))?;
        Ok(buf)
    }

    fn write_inner(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        flags: OpenFlags,
    ) -> Result<u32, Errno> {
        let file = self.open_file(fh)?;
        if file.device.read_only() {
            return Err(Errno::EROFS);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let device_size = file.device.size();
        if offset >= device_size {
            return Err(Errno::ENOSPC);
        }
        let len = (data.len() as u64)
            .min(u64::from(self.limits.max_io_bytes))
            .min(device_size - offset) as usize;
        let fua = flags.0 & libc::O_DSYNC != 0;
        file.dirty.store(true, Ordering::Release);
        file.device
            .write_at(&data[..len], offset, fua)
            .map_err(|e| engine_error("write", &e))?;
        u32::try_from(len).map_err(|_| Errno::EINVAL)
    }

    /// Flushes the device if it was written through this handle (or always,
    /// for fsync).
    fn flush_inner(&self, fh: FileHandle, always: bool) -> Result<(), Errno> {
        let file = self.open_file(fh)?;
        let due = file.dirty.swap(false, Ordering::AcqRel) || (always && !file.device.read_only());
        if due && let Err(e) = file.device.flush() {
            file.dirty.store(true, Ordering::Release);
            return Err(engine_error("flush", &e));
        }
        Ok(())
    }

    fn fallocate_inner(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let file = self.open_file(fh)?;
        let device = &file.device;
        let size = device.size();
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > size && !keep_size {
            // It would have to grow the file.
            return Err(Errno::EFBIG);
        }
        let end = end.min(size);
        let op = mode & !libc::FALLOC_FL_KEEP_SIZE;
        if op != 0 && device.read_only() {
            return Err(Errno::EROFS);
        }
        let result = match op {
            // Plain allocation: a thin volume makes no promise of space.
            0 => return Ok(()),
            libc::FALLOC_FL_PUNCH_HOLE if offset < end => device.trim(offset, end - offset),
            libc::FALLOC_FL_ZERO_RANGE if offset < end => {
                device.write_zeroes(offset, end - offset, false)
            }
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => return Ok(()),
            _ => return Err(Errno::EOPNOTSUPP),
        };
        file.dirty.store(true, Ordering::Release);
        result.map_err(|e| engine_error("fallocate", &e))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr_inner(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return Err(Errno::EPERM);
        }
        let attr = match fh.and_then(|fh| self.open_file(fh).ok()) {
            Some(file) if node.kind == Kind::File => self.device_attr(ino.0, file.device.as_ref()),
            _ => self.node_attr(ino.0, &node)?,
        };
        match size {
            None => Ok(attr),
            Some(_) if node.kind == Kind::Dir => Err(Errno::EISDIR),
            Some(size) if size == attr.size => Ok(attr),
            Some(_) => Err(Errno::EPERM),
        }
    }

    fn statfs_inner(&self) -> (u64, u64) {
        let names = self.exports.export_names();
        let bytes: u64 = names
            .iter()
            .filter(|n| !n.contains('@'))
            .filter_map(|n| self.exports.open_export(n).ok())
            .map(|d| d.size())
            .fold(0u64, u64::saturating_add);
        (bytes / u64::from(crate::BLOCK_SIZE), names.len() as u64)
    }
}

impl Filesystem for CairnFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_inner(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = match fh.and_then(|fh| self.open_file(fh).ok()) {
            Some(file) => Ok(self.device_attr(ino.0, file.device.as_ref())),
            None => self.node(ino).and_then(|node| self.node_attr(ino.0, &node)),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Times are accepted and ignored: the files show the mount time.
        match self.setattr_inner(ino, mode, uid, gid, size, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let result = self.node(ino).and_then(|node| {
            if node.kind == Kind::File && mask.contains(AccessFlags::W_OK) {
                let device = self
                    .exports
                    .open_export(&node.path)
                    .map_err(|e| engine_error("access", &e))?;
                if device.read_only() {
                    return Err(Errno::EROFS);
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.opendir_inner(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(*ino), i as u64 + 1, kind.file_type(), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_inner(ino, flags) {
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_inner(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.write_inner(fh, offset, data, flags) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.flush_inner(fh, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.flush_inner(fh, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // A loop device is released without a close-time flush: flush here
        // so `losetup -d` leaves the data durable.
        let result = self.flush_inner(fh, false);
        lock(&self.files).remove(&fh.0);
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fallocate_inner(fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, files) = self.statfs_inner();
        reply.statfs(
            blocks,
            0,
            0,
            files,
            0,
            crate::BLOCK_SIZE,
            255,
            crate::BLOCK_SIZE,
        );
    }

    // Names come from the control plane (`cairn volume create`), never from
    // the filesystem: everything that would make or remove a name is refused.

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }
}

#[cfg(test)]
mod tests {
    //! Mounts a tiny in-memory `Exports` and drives it through std::fs and
    //! libc, as a loop device or `dd` would.

    use std::fs::OpenOptions;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::RwLock;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{Error, Result};

    struct MemDevice {
        name: String,
        read_only: bool,
        data: RwLock<Vec<u8>>,
        flushes: AtomicUsize,
        trims: AtomicUsize,
    }

    impl MemDevice {
        fn new(name: &str, size: usize, read_only: bool, fill: u8) -> Arc<MemDevice> {
            Arc::new(MemDevice {
                name: name.to_owned(),
                read_only,
                data: RwLock::new(vec![fill; size]),
                flushes: AtomicUsize::new(0),
                trims: AtomicUsize::new(0),
            })
        }

        fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
            let size = self.size();
            match offset.checked_add(len) {
                Some(end) if end <= size => Ok(offset as usize..end as usize),
                _ => Err(Error::OutOfRange {
                    volume: self.name.clone(),
                    offset,
                    len,
                    size,
                }),
            }
        }

        fn writable(&self) -> Result<()> {
            if self.read_only {
                return Err(Error::ReadOnly {
                    export: self.name.clone(),
                });
            }
            Ok(())
        }

        fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
            self.data.read().unwrap()[range].to_vec()
        }
    }

    impl Device for MemDevice {
        fn name(&self) -> &str {
            &self.name
        }
        fn size(&self) -> u64 {
            self.data.read().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let range = self.range(offset, buf.len() as u64)?;
            buf.copy_from_slice(&self.data.read().unwrap()[range]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
            self.writable()?;
            let range = self.range(offset, buf.len() as u64)?;
            self.data.write().unwrap()[range].copy_from_slice(buf);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
            self.writable()?;
            let range = self.range(offset, len)?;
            self.data.write().unwrap()[range].fill(0);
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64) -> Result<()> {
            self.trims.fetch_add(1, Ordering::Relaxed);
            self.write_zeroes(offset, len, false)
        }
        fn flush(&self) -> Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[derive(Default)]
    struct MemExports {
        devices: Mutex<BTreeMap<String, Arc<MemDevice>>>,
    }

    impl MemExports {
        fn add(&self, device: Arc<MemDevice>) -> Arc<MemDevice> {
            lock(&self.devices).insert(device.name.clone(), device.clone());
            device
        }
    }

    impl Exports for MemExports {
        fn open_export(&self, name: &str) -> Result<Arc<dyn Device>> {
            match lock(&self.devices).get(name) {
                Some(device) => Ok(device.clone()),
                None => Err(Error::VolumeNotFound {
                    volume: name.to_owned(),
                }),
            }
        }
        fn export_names(&self) -> Vec<String> {
            lock(&self.devices).keys().cloned().collect()
        }
    }

    /// Whether FUSE can be used here; panics instead of skipping when
    /// CAIRN_REQUIRE_TOOLS is set.
    fn have_fuse() -> bool {
        if Path::new("/dev/fuse").exists() {
            return true;
        }
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
            "/dev/fuse is required but missing"
        );
        eprintln!("skipping: /dev/fuse is missing");
        false
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn os_error(e: &io::Error) -> i32 {
        e.raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}"))
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn export_paths() {
        assert_eq!(export_path("v"), Some((vec![], "v".into())));
        assert_eq!(
            export_path("app/pvc@s"),
            Some((vec!["app"], "pvc@s".into()))
        );
        assert_eq!(export_path("a//b"), None);
        assert_eq!(export_path("../x"), None);
        assert_eq!(export_path("v@a/b"), None);
        let exports: Vec<String> = ["app", "app/pvc", "app/pvc@s", "v", "v@s", "x/y/z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let root: Vec<(String, Kind)> = children(&exports, "").into_iter().collect();
        assert_eq!(
            root,
            [
                ("app".to_owned(), Kind::Dir),
                ("v".to_owned(), Kind::File),
                ("v@s".to_owned(), Kind::File),
                ("x".to_owned(), Kind::Dir),
            ]
        );
        let app: Vec<String> = children(&exports, "app").into_keys().collect();
        assert_eq!(app, ["pvc", "pvc@s"]);
        let x_y: Vec<String> = children(&exports, "x/y").into_keys().collect();
        assert_eq!(x_y, ["z"]);
    }

    #[test]
    fn mount_serves_files_per_export() {
        if !have_fuse() {
            return;
        }
        let exports = Arc::new(MemExports::default());
        let v = exports.add(MemDevice::new("v", 4 * MIB, false, 0xaa));
        let snap = exports.add(MemDevice::new("v@s1", 4 * MIB, true, 0x55));
        let pvc = exports.add(MemDevice::new("app/pvc", MIB, false, 0));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        let handle = mount(&dir, exports.clone()).expect("mount");
        let dir = handle.mountpoint().to_owned();

        // Listing, including a volume name with a '/'.
        assert_eq!(names(&dir), ["app", "v", "v@s1"]);
        assert_eq!(names(&dir.join("app")), ["pvc"]);
        assert!(dir.join("app").is_dir());
        assert_eq!(
            std::fs::metadata(dir.join("v")).unwrap().len(),
            4 * MIB as u64
        );
        assert_eq!(
            std::fs::metadata(dir.join("app/pvc")).unwrap().len(),
            MIB as u64
        );

        // Write and read back through the kernel, unaligned and across pages.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("v"))
            .unwrap();
        let pattern: Vec<u8> = (0..3 * MIB + 123).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&pattern, 4097).unwrap();
        assert_eq!(v.bytes(4097..4097 + pattern.len()), pattern);
        assert_eq!(v.bytes(0..4097), vec![0xaa; 4097]);
        let mut back = vec![0u8; pattern.len()];
        file.read_exact_at(&mut back, 4097).unwrap();
        assert_eq!(back, pattern);
        let whole = std::fs::read(dir.join("v")).unwrap();
        assert_eq!(whole.len(), 4 * MIB);

        // Past the end: short read, ENOSPC write.
        let mut tail = [0u8; 16];
        assert_eq!(file.read_at(&mut tail, 4 * MIB as u64 - 8).unwrap(), 8);
        assert_eq!(file.read_at(&mut tail, 4 * MIB as u64).unwrap(), 0);
        let err = file.write_at(b"x", 4 * MIB as u64).unwrap_err();
        assert_eq!(os_error(&err), libc::ENOSPC);

        // fsync reaches Device::flush.
        let flushes = v.flushes.load(Ordering::Relaxed);
        file.sync_all().unwrap();
        assert!(v.flushes.load(Ordering::Relaxed) > flushes);

        // Punch a hole: a trim that reads back as zeroes.
        // SAFETY: fallocate on an fd we own.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                MIB as i64,
                MIB as i64,
            )
        };
        assert_eq!(rc, 0, "punch hole: {}", io::Error::last_os_error());
        assert_eq!(v.trims.load(Ordering::Relaxed), 1);
        assert_eq!(v.bytes(MIB..2 * MIB), vec![0; MIB]);
        assert_eq!(
            v.bytes(2 * MIB..2 * MIB + 16),
            pattern[2 * MIB - 4097..][..16]
        );
        // Zero a range.
        // SAFETY: as above.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                2 * MIB as i64,
                4096,
            )
        };
        assert_eq!(rc, 0, "zero range: {}", io::Error::last_os_error());
        assert_eq!(v.bytes(2 * MIB..2 * MIB + 4096), vec![0; 4096]);

        // The size is fixed: same-size truncate is fine, another size is not.
        file.set_len(4 * MIB as u64).unwrap();
        let err = file.set_len(MIB as u64).unwrap_err();
        assert_eq!(os_error(&err), libc::EPERM);
        drop(file);

        // O_DIRECT opens work; aligned I/O goes straight to the device.
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("app/pvc"))
            .unwrap();
        let mut aligned = AlignedPage([0u8; 4096]);
        aligned.0.fill(0x3c);
        direct.write_all_at(&aligned.0, 8192).unwrap();
        assert_eq!(pvc.bytes(8192..8192 + 4096), vec![0x3c; 4096]);
        aligned.0.fill(0);
        direct.read_exact_at(&mut aligned.0, 8192).unwrap();
        assert_eq!(aligned.0, [0x3c; 4096]);
        let flushes = pvc.flushes.load(Ordering::Relaxed);
        drop(direct);
        assert!(
            pvc.flushes.load(Ordering::Relaxed) > flushes,
            "close after a write flushes"
        );

        // Snapshots are read-only.
        let err = OpenOptions::new()
            .write(true)
            .open(dir.join("v@s1"))
            .unwrap_err();
        assert_eq!(os_error(&err), libc::EROFS);
        assert_eq!(
            std::fs::read(dir.join("v@s1")).unwrap(),
            vec![0x55; 4 * MIB]
        );
        assert_eq!(snap.flushes.load(Ordering::Relaxed), 0);

        // Names are made by the control plane, not by the filesystem.
        let err = std::fs::File::create(dir.join("new")).unwrap_err();
        assert_eq!(os_error(&err), libc::EPERM);
        let err = std::fs::remove_file(dir.join("v")).unwrap_err();
        assert_eq!(os_error(&err), libc::EPERM);

        // The listing is live.
        exports.add(MemDevice::new("w", MIB, false, 1));
        exports.add(MemDevice::new("app/other@s", MIB, true, 2));
        assert_eq!(names(&dir), ["app", "v", "v@s1", "w"]);
        assert_eq!(names(&dir.join("app")), ["other@s", "pvc"]);
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), vec![1; MIB]);
        lock(&exports.devices).remove("w");
        assert_eq!(names(&dir), ["app", "v", "v@s1"]);
        let err = std::fs::read(dir.join("w")).unwrap_err();
        assert_eq!(os_error(&err), libc::ENOENT);

        let stat = nix_statfs(&dir);
        assert_eq!(stat.f_bsize as u32, crate::BLOCK_SIZE);
        assert_eq!(stat.f_blocks, (5 * MIB / 4096) as u64);

        handle.unmount().expect("unmount");
        assert!(names(&dir).is_empty(), "the mountpoint is empty again");
    }

    #[test]
    fn busy_mount_is_detached_lazily() {
        if !have_fuse() {
            return;
        }
        let exports = Arc::new(MemExports::default());
        exports.add(MemDevice::new("v", MIB, false, 7));
        let tmp = tempfile::tempdir().unwrap();
        let handle = mount(tmp.path(), exports).expect("mount");
        let file = std::fs::File::open(tmp.path().join("v")).unwrap();
        handle
            .unmount()
            .expect("a busy mount is detached, not an error");
        assert!(names(tmp.path()).is_empty());
        // The open file keeps working until it is closed.
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [7; 4]);
    }

    #[repr(align(4096))]
    struct AlignedPage([u8; 4096]);

    fn nix_statfs(dir: &Path) -> libc::statfs {
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs writes into a zeroed struct we own.
        unsafe {
            let mut stat: libc::statfs = std::mem::zeroed();
            assert_eq!(libc::statfs(path.as_ptr(), &mut stat), 0);
            stat
        }
    }
}
