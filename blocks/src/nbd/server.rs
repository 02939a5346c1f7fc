//! The server: its [`Limits`] and [`Access`], the listener and accept loop,
//! the per-peer and total connection bounds, and the thread each connection
//! runs (negotiation in `handshake`, then transmission in `transmit`).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::handshake::Connection;
use super::protocol::*;
use super::socket::{self, Incoming, Socket, Timed, Untimed};
use super::{Admission, Identity, OpenAdmission, tls, transmit};
use crate::Device;

/// How exports are looked up by name.
pub trait Exports: Send + Sync + 'static {
    /// Opens an export by name (`v` or `v@s`). Err(Error::VolumeNotFound/SnapshotNotFound) if unknown.
    fn open_export(&self, name: &str) -> crate::Result<Arc<dyn Device>>;
    /// Every export name, for NBD_OPT_LIST.
    fn export_names(&self) -> Vec<String>;
}

/// Resource bounds of a server, clamped by [`Limits::sanitize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest READ or WRITE payload (advertised as the maximum block size).
    pub max_request_bytes: u32,
    /// Largest option data accepted during negotiation.
    pub max_option_bytes: u32,
    /// Connections beyond this many are closed as soon as accepted.
    pub max_connections: usize,
    /// TCP connections from one IP address beyond this many are closed as
    /// soon as accepted, so one peer cannot take every slot.
    pub max_connections_per_peer: usize,
    /// Negotiation (TLS included) must end within this, from accept.
    pub handshake_timeout: Duration,
    /// A connection in transmission with no request in flight and none
    /// arriving for this long is closed; a reply write blocked this long
    /// fails the connection.
    pub idle_timeout: Duration,
    /// Worker threads per connection that run requests concurrently (started
    /// on demand).
    pub max_workers_per_connection: usize,
    /// Requests a connection reads ahead of its answers; when reached, the
    /// connection stops reading until one is answered.
    pub max_in_flight_requests: usize,
    /// READ and WRITE payload bytes a connection holds for requests in flight
    /// (one request larger than this is still served, alone).
    pub max_in_flight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 32 << 20,
            max_option_bytes: 64 << 10,
            max_connections: 256,
            max_connections_per_peer: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_workers_per_connection: 8,
            max_in_flight_requests: 64,
            max_in_flight_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// Shortest timeout accepted (tests shrink timeouts to this order).
    pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
    /// Longest handshake timeout accepted.
    pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Longest idle timeout accepted.
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Raises every bound that must be at least one to one, and keeps the
    /// timeouts and the per-peer bound in range.
    pub fn sanitize(mut self) -> Limits {
        self.max_request_bytes = self.max_request_bytes.max(1);
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_peer =
            self.max_connections_per_peer.clamp(1, self.max_connections);
        self.handshake_timeout = self
            .handshake_timeout
            .clamp(Limits::MIN_TIMEOUT, Limits::MAX_HANDSHAKE_TIMEOUT);
        self.idle_timeout = self
            .idle_timeout
            .clamp(Limits::MIN_TIMEOUT, Limits::MAX_IDLE_TIMEOUT);
        self.max_workers_per_connection = self.max_workers_per_connection.max(1);
        self.max_in_flight_requests = self.max_in_flight_requests.max(1);
        self
    }
}

/// Who may connect and what they see: the admission hook, TLS for TCP, and
/// the unix socket's permissions.
#[derive(Clone)]
pub struct Access {
    /// Maps a connection's identity and requested names to exports.
    pub admission: Arc<dyn Admission>,
    /// TLS for TCP connections; with it, TCP clients must start TLS before
    /// any other option (FORCEDTLS). Unused on a unix socket.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Permission bits of the unix socket.
    pub socket_mode: u32,
    /// Group of the unix socket; `None`: the process's.
    pub socket_group: Option<u32>,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            admission: Arc::new(OpenAdmission),
            tls: None,
            socket_mode: 0o660,
            socket_group: None,
        }
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("socket_mode", &format_args!("{:#o}", self.socket_mode))
            .field("socket_group", &self.socket_group)
            .finish_non_exhaustive()
    }
}

/// The state one listening server shares between its connection threads.
pub struct NbdServer {
    pub(super) exports: Arc<dyn Exports>,
    pub(super) limits: Limits,
    pub(super) admission: Arc<dyn Admission>,
    /// Set on a TCP server with TLS.
    pub(super) tls: Option<tls::Acceptor>,
    active: AtomicUsize,
    /// Live TCP connections per peer address.
    peers: Mutex<HashMap<IpAddr, usize>>,
}

/// Binds `addr` and serves `exports` on it until the handle is shut down or
/// dropped, to every client alike ([`Access::default`]). See
/// [`NbdServer::serve`].
pub fn serve(
    addr: &ListenAddr,
    exports: Arc<dyn Exports>,
    limits: Limits,
) -> io::Result<NbdServerHandle> {
    NbdServer::serve(addr, exports, limits, Access::default())
}

/// Like [`serve`], with an admission hook, TLS and socket permissions.
pub fn serve_with(
    addr: &ListenAddr,
    exports: Arc<dyn Exports>,
    limits: Limits,
    access: Access,
) -> io::Result<NbdServerHandle> {
    NbdServer::serve(addr, exports, limits, access)
}

/// Serves one connection that is already open, over any byte stream: the
/// handshake, then transmission, until the client leaves. `r` and `w` are
/// the two directions of the same stream. This is what each accepted socket
/// runs (without timeouts, TLS or admission: every export is open); it
/// exists on its own for fuzzing and for inetd-style use.
pub fn serve_stream<R: Read, W: Write + Send>(
    exports: Arc<dyn Exports>,
    limits: Limits,
    r: R,
    w: W,
) -> io::Result<()> {
    let server = NbdServer {
        exports,
        limits: limits.sanitize(),
        admission: Arc::new(OpenAdmission),
        tls: None,
        active: AtomicUsize::new(1),
        peers: Mutex::default(),
    };
    server.run_connection(
        Box::new(Untimed(r)),
        Box::new(w),
        "stream",
        Identity::Stream,
        None,
    )
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl NbdServer {
    /// Binds `addr` now (so bind errors are returned), then accepts on a
    /// background thread, one thread per connection. A stale unix socket file
    /// (one nobody answers on) is replaced; a live one is `AddrInUse`. A unix
    /// socket gets `access.socket_mode` and `access.socket_group` before it
    /// appears at its path.
    pub fn serve(
        addr: &ListenAddr,
        exports: Arc<dyn Exports>,
        limits: Limits,
        access: Access,
    ) -> io::Result<NbdServerHandle> {
        let limits = limits.sanitize();
        let (listener, local) = match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let local = l.local_addr()?;
                (Listener::Tcp(l), ListenAddr::Tcp(local))
            }
            ListenAddr::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    if UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a live server", path.display()),
                        ));
                    }
                    debug!(path = %path.display(), "removing stale NBD socket");
                    std::fs::remove_file(path)?;
                }
                (
                    Listener::Unix(socket::bind_unix(
                        path,
                        access.socket_mode,
                        access.socket_group,
                    )?),
                    ListenAddr::Unix(path.clone()),
                )
            }
        };
        let tls = match (&listener, access.tls) {
            (Listener::Tcp(_), Some(config)) => Some(tls::Acceptor::new(config)?),
            _ => None,
        };
        let server = Arc::new(NbdServer {
            exports,
            limits,
            admission: access.admission,
            tls,
            active: AtomicUsize::new(0),
            peers: Mutex::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop) = (server.clone(), stop.clone());
            thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || server.accept_loop(listener, &stop))?
        };
        info!(addr = %local, tls = server.tls.is_some(), "NBD server listening");
        Ok(NbdServerHandle {
            addr: local,
            stop,
            thread: Some(thread),
            server,
        })
    }

    fn accept_loop(self: Arc<Self>, listener: Listener, stop: &AtomicBool) {
        loop {
            let accepted = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, peer)| Accepted::Tcp(s, peer)),
                Listener::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
            };
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match accepted {
                Ok(stream) => self.spawn_connection(stream),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "NBD accept failed");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        debug!("NBD accept loop stopped");
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a connection from `ip`; false when that peer is at its bound.
    fn admit_peer(&self, ip: IpAddr) -> bool {
        let mut peers = self.peers();
        let count = peers.entry(ip).or_insert(0);
        if *count >= self.limits.max_connections_per_peer {
            return false;
        }
        *count += 1;
        true
    }

    fn release_peer(&self, ip: IpAddr) {
        let mut peers = self.peers();
        if let Some(count) = peers.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                peers.remove(&ip);
            }
        }
    }

    fn spawn_connection(self: &Arc<Self>, stream: Accepted) {
        let accepted_at = Instant::now();
        if self.active.fetch_add(1, Ordering::SeqCst) >= self.limits.max_connections {
            self.active.fetch_sub(1, Ordering::SeqCst);
            warn!(
                max = self.limits.max_connections,
                "too many NBD connections; refusing one"
            );
            return;
        }
        let peer_ip = match &stream {
            Accepted::Tcp(_, peer) => Some(peer.ip().to_canonical()),
            Accepted::Unix(_) => None,
        };
        if let Some(ip) = peer_ip
            && !self.admit_peer(ip)
        {
            self.active.fetch_sub(1, Ordering::SeqCst);
            warn!(
                peer = %ip,
                max = self.limits.max_connections_per_peer,
                "too many NBD connections from one peer; refusing one"
            );
            return;
        }
        let guard = ActiveGuard {
            server: self.clone(),
            peer_ip,
        };
        let spawned = thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                let server = &guard.server;
                if let Err(e) = server.accepted(stream, accepted_at) {
                    debug!(error = %e, "NBD connection ended with an error");
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot spawn an NBD connection thread");
        }
    }

    /// Serves one accepted socket on its own thread.
    fn accepted(&self, stream: Accepted, accepted_at: Instant) -> io::Result<()> {
        let (sock, peer, identity, starttls) = match stream {
            Accepted::Tcp(s, peer) => {
                let _ = s.set_nodelay(true);
                let addr = peer.ip().to_canonical();
                let starttls = match self.tls {
                    Some(_) => Some(s.try_clone()?),
                    None => None,
                };
                (
                    Socket::Tcp(s),
                    peer.to_string(),
                    Identity::Tcp { addr },
                    starttls,
                )
            }
            Accepted::Unix(s) => {
                let cred = socket::peer_credentials(&s);
                let identity = Identity::Local {
                    uid: cred.map(|c| c.0),
                    gid: cred.map(|c| c.1),
                };
                (Socket::Unix(s), "unix".to_owned(), identity, None)
            }
        };
        let mut reader = Timed::new(sock.try_clone()?);
        reader.set_deadline(Some(accepted_at + self.limits.handshake_timeout));
        reader.set_write_timeout(self.limits.handshake_timeout);
        self.run_connection(Box::new(reader), Box::new(sock), &peer, identity, starttls)
    }

    fn run_connection<'a>(
        &self,
        r: Box<dyn Incoming + 'a>,
        w: Box<dyn Write + Send + 'a>,
        peer: &str,
        identity: Identity,
        starttls: Option<TcpStream>,
    ) -> io::Result<()> {
        let mut conn = Connection {
            r: BufReader::with_capacity(IO_BUFFER, r),
            w: BufWriter::with_capacity(IO_BUFFER, w),
            server: self,
            peer,
            identity,
            starttls,
            deadline: Instant::now() + self.limits.handshake_timeout,
            tls_active: false,
            pump: None,
        };
        debug!(peer, "NBD connection opened");
        let result = match conn.negotiate() {
            Ok(Some(device)) => {
                let Connection { mut r, w, pump, .. } = conn;
                r.get_mut().set_deadline(None);
                r.get_ref().set_write_timeout(self.limits.idle_timeout);
                let served = transmit::serve(&mut r, w, &*device, &self.limits, peer);
                // The socket ends close before the pump is told to finish.
                drop(r);
                drop(pump);
                served
            }
            Ok(None) => Ok(()),
            Err(e) if socket::is_timeout(&e) => {
                info!(peer, "NBD negotiation timed out; closing");
                Ok(())
            }
            Err(e) => Err(e),
        };
        debug!(peer, "NBD connection closed");
        result
    }

    pub(super) fn transmission_flags(device: &dyn Device) -> u16 {
        let mut flags =
            NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
        if device.read_only() {
            flags |= NBD_FLAG_READ_ONLY;
        } else {
            flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
        }
        flags
    }
}

/// Counts a live connection (and its peer's); decrements on drop (even if
/// the thread panics or never starts).
struct ActiveGuard {
    server: Arc<NbdServer>,
    peer_ip: Option<IpAddr>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.peer_ip {
            self.server.release_peer(ip);
        }
        self.server.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running server. Shutting it down (or dropping it) stops accepting; live
/// connections finish on their own.
pub struct NbdServerHandle {
    addr: ListenAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    server: Arc<NbdServer>,
}

impl NbdServerHandle {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> ListenAddr {
        self.addr.clone()
    }

    /// Connections being served right now.
    pub fn active_connections(&self) -> usize {
        self.server.active.load(Ordering::SeqCst)
    }

    /// Stops accepting and removes the unix socket file.
    pub fn shutdown(mut self) {
        self.stop_listener();
    }

    fn stop_listener(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection of our own.
        let woke = match &self.addr {
            ListenAddr::Tcp(a) => {
                let mut target = *a;
                if target.ip().is_unspecified() {
                    target.set_ip(match target.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
            }
            ListenAddr::Unix(path) => UnixStream::connect(path).is_ok(),
        };
        if woke {
            let _ = thread.join();
        } else {
            warn!(addr = %self.addr, "cannot wake the NBD accept thread; leaving it behind");
        }
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
        info!(addr = %self.addr, "NBD server stopped");
    }
}

impl Drop for NbdServerHandle {
    fn drop(&mut self) {
        self.stop_listener();
    }
}
