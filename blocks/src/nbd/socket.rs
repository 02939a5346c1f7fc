//! Sockets of the NBD server: one type over TCP and unix streams, a reader
//! with a deadline (the handshake and idle timeouts), the peer credentials
//! of a unix socket, and binding a unix socket with its mode and group set
//! before anyone can connect.
//!
//! # Deadlines
//! A connection's reader carries an optional deadline. Each read arms the
//! socket's `SO_RCVTIMEO` with the time left (re-armed only when it drifts
//! by more than a sixteenth, so a busy connection pays no extra syscall per
//! request) and returns `TimedOut` once the deadline has passed, however the
//! client trickles bytes. Writes are bounded per call by `SO_SNDTIMEO`,
//! which the server sets per phase.
//!
//! # Invariants
//! * A unix socket is bound inside a fresh private directory (mode 0700),
//!   given its mode and group there, then renamed into place: there is no
//!   moment when the socket is reachable with looser permissions.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One end of a connection.
#[derive(Debug)]
pub(super) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    pub(super) fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    pub(super) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(timeout),
            Socket::Unix(s) => s.set_write_timeout(timeout),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// The reading side of a connection, as the server drives it.
pub(super) trait Incoming: Read {
    /// Reads fail with `TimedOut` once `at` has passed; `None`: no deadline.
    fn set_deadline(&mut self, at: Option<Instant>);
    /// Bounds each write on the same socket (all its handles).
    fn set_write_timeout(&self, timeout: Duration);
}

impl<T: Incoming + ?Sized> Incoming for Box<T> {
    fn set_deadline(&mut self, at: Option<Instant>) {
        (**self).set_deadline(at)
    }
    fn set_write_timeout(&self, timeout: Duration) {
        (**self).set_write_timeout(timeout)
    }
}

/// A reader without a clock (a stream given to `serve_stream`).
pub(super) struct Untimed<R>(pub(super) R);

impl<R: Read> Read for Untimed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Incoming for Untimed<R> {
    fn set_deadline(&mut self, _at: Option<Instant>) {}
    fn set_write_timeout(&self, _timeout: Duration) {}
}

/// A socket reader with a deadline.
pub(super) struct Timed {
    sock: Socket,
    deadline: Option<Instant>,
    /// What `SO_RCVTIMEO` is set to now.
    armed: Option<Duration>,
}

impl Timed {
    pub(super) fn new(sock: Socket) -> Timed {
        Timed {
            sock,
            deadline: None,
            armed: None,
        }
    }
}

/// Whether an io error is a socket timeout (`EAGAIN` from `SO_RCVTIMEO`).
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(at) = self.deadline else {
                if self.armed.take().is_some() {
                    self.sock.set_read_timeout(None)?;
                }
                return self.sock.read(buf);
            };
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "NBD client too slow",
                ));
            }
            let drifted = self
                .armed
                .is_none_or(|armed| armed > left + left / 16 || armed < left / 2);
            if drifted {
                let timeout = left.max(Duration::from_millis(1));
                self.sock.set_read_timeout(Some(timeout))?;
                self.armed = Some(timeout);
            }
            match self.sock.read(buf) {
                // The loop checks the deadline again.
                Err(e) if is_timeout(&e) => {}
                other => return other,
            }
        }
    }
}

impl Incoming for Timed {
    fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
    }
    fn set_write_timeout(&self, timeout: Duration) {
        // A socket that refuses a timeout is closed already; the next write
        // says so.
        let _ = self.sock.set_write_timeout(Some(timeout));
    }
}

/// The peer's uid and gid on a unix socket (`SO_PEERCRED`).
pub(super) fn peer_credentials(s: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the fd is open for as long as `s` lives.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some((cred.uid, cred.gid))
}

/// Binds a unix socket at `path` with permission bits `mode` and, when
/// given, group `gid`; the socket appears at `path` only once both are set.
/// Fails with `AddrInUse` when `path` exists.
pub(super) fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    static STAGING: AtomicU64 = AtomicU64::new(0);
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} exists", path.display()),
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".nbd-{}-{}",
        std::process::id(),
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let socket = staging.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&socket, None, Some(gid))?;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} exists", path.display()),
            ));
        }
        std::fs::rename(&socket, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir(&staging);
    bound
}

/// The gid of a group given by name or number.
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: an all-zero `group` is a valid value for getgrnam_r to fill.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the length given; getgrnam_r writes
    // only into `entry`, `buf` and `found`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {group:?}"),
        ));
    }
    Ok(entry.gr_gid)
}
