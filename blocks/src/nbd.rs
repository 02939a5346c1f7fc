//! The NBD front-end: a user-space Network Block Device server speaking the
//! fixed-newstyle protocol, and a small blocking client for demos and benches.
//!
//! # Protocol subset
//! * Handshake: fixed newstyle only (`NBD_FLAG_FIXED_NEWSTYLE`, with
//!   `NBD_FLAG_NO_ZEROES` offered). Clients that do not set
//!   `NBD_FLAG_C_FIXED_NEWSTYLE` are disconnected.
//! * Options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`, `NBD_OPT_LIST`,
//!   `NBD_OPT_INFO` and `NBD_OPT_GO` (replying `NBD_INFO_EXPORT` and
//!   `NBD_INFO_BLOCK_SIZE`, plus `NBD_INFO_NAME` when asked), and
//!   `NBD_OPT_STARTTLS` on a TCP server given a TLS configuration. Every
//!   other option (structured replies, meta contexts, extended headers) gets
//!   `NBD_REP_ERR_UNSUP` and negotiation goes on. No default export (an
//!   empty name is an unknown export).
//! * TLS (module `tls`): a TCP server with a TLS configuration runs the
//!   protocol's FORCEDTLS mode: before `NBD_OPT_STARTTLS` every option but
//!   `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD` and `NBD_OPT_EXPORT_NAME`
//!   closes the connection; a second `NBD_OPT_STARTTLS` is
//!   `NBD_REP_ERR_INVALID`. The unix socket never uses TLS (its file mode
//!   and group are its access control); a server without TLS answers
//!   `NBD_OPT_STARTTLS` with `NBD_REP_ERR_UNSUP`.
//! * Admission (module `admission`): each connection has an [`Identity`]
//!   (unix peer credentials, TCP peer, TLS client certificate's common
//!   name); the server's [`Admission`] maps a requested name to the export
//!   to open and filters `NBD_OPT_LIST`.
//! * Transmission: simple replies only. `READ`, `WRITE`, `DISC`, `FLUSH`,
//!   `TRIM` and `WRITE_ZEROES`, with `FUA` honoured; anything else is
//!   answered with `EINVAL`. Requests of one connection run concurrently and
//!   may be answered out of order (the cookie pairs them), as the protocol
//!   allows; see the `transmit` module for the pipeline and what `FLUSH` covers.
//!
//! # State per connection
//! One std thread per connection owns a buffered reader over the socket and
//! runs the handshake. In transmission it becomes the reader of the
//! connection's pipeline (module `transmit`): it parses requests and hands
//! them to a bounded pool of worker threads that run them against the opened
//! [`Device`] and write replies through one shared, buffered writer.
//! Payload buffers are allocated per request and bounded per connection by
//! [`Limits::max_in_flight_bytes`].
//!
//! # Invariants
//! * Every connection is bounded in time and number: negotiation (TLS
//!   included) must end within [`Limits::handshake_timeout`]; in
//!   transmission a connection with no request in flight and none arriving
//!   for [`Limits::idle_timeout`] is closed, and a write blocked that long
//!   fails it; at most [`Limits::max_connections`] connections, and
//!   [`Limits::max_connections_per_peer`] from one IP address, are served
//!   (others are closed at accept).
//! * An export another identity may not open and an export that does not
//!   exist get the same reply.
//! * Nothing is ever allocated from an unchecked client length: option data
//!   is bounded by [`Limits::max_option_bytes`] and payloads by
//!   [`Limits::max_request_bytes`]. Larger options are skipped by streaming
//!   them into a sink; a larger `WRITE` closes the connection (its payload
//!   cannot be skipped safely) and a larger `READ` fails with `EINVAL`.
//! * Client input never panics the server. A protocol violation (bad magic,
//!   oversized write) ends that connection only; device errors become an
//!   errno in the reply and the connection goes on. Other connections, which
//!   share nothing but the `Device`, are never affected.
//! * Range checks happen before the device is touched: out-of-range reads get
//!   `EINVAL`, out-of-range writes, trims and zeroing get `ENOSPC`, and any
//!   modification of a read-only export gets `EPERM` (after a `WRITE` payload
//!   has been consumed, so the stream stays in sync).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::Device;

mod admission;
mod socket;
pub mod tls;
mod transmit;

pub use admission::{Admission, Identity, OpenAdmission};
pub use socket::group_id;
use socket::{Incoming, Socket, Timed, Untimed};
pub use tls::ClientTls;

// ---------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------

/// `"NBDMAGIC"`, the first thing a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: newstyle negotiation, and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const NBD_OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple transmission reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server to client).
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client to server).
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Options.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;

/// Option reply types.
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
/// Set in every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

/// Information types of `NBD_REP_INFO`.
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Command flags.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;

/// Error values of transmission replies (fixed by the protocol; equal to the
/// Linux errno values but not to every platform's).
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header.
const SIMPLE_REPLY_LEN: usize = 16;
/// The protocol's bound on strings (export names, error messages).
const MAX_STRING: usize = 4096;
/// Socket buffer size of each direction of a connection.
const IO_BUFFER: usize = 256 * 1024;

/// Maps a libc errno to the protocol's error value (unknown ones to `EIO`).
fn nbd_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM => NBD_EPERM,
        libc::EIO => NBD_EIO,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::ENOTSUP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

/// Maps a protocol error value back to a libc errno (unknown ones to `EIO`).
fn errno_from_nbd(error: u32) -> i32 {
    match error {
        NBD_EPERM => libc::EPERM,
        NBD_ENOMEM => libc::ENOMEM,
        NBD_EINVAL => libc::EINVAL,
        NBD_ENOSPC => libc::ENOSPC,
        NBD_EOVERFLOW => libc::EOVERFLOW,
        NBD_ENOTSUP => libc::ENOTSUP,
        NBD_ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

// ---------------------------------------------------------------------------
// Pure parsing
// ---------------------------------------------------------------------------

/// A transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    /// Any command this server does not implement (answered with `EINVAL`).
    Other(u16),
}

impl Command {
    pub fn from_wire(kind: u16) -> Command {
        match kind {
            NBD_CMD_READ => Command::Read,
            NBD_CMD_WRITE => Command::Write,
            NBD_CMD_DISC => Command::Disconnect,
            NBD_CMD_FLUSH => Command::Flush,
            NBD_CMD_TRIM => Command::Trim,
            NBD_CMD_WRITE_ZEROES => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disconnect => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::Other(other) => other,
        }
    }
}

/// A parsed transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    /// Opaque to the server; echoed in the reply (called "handle" in older
    /// versions of the protocol).
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn fua(&self) -> bool {
        self.flags & NBD_CMD_FLAG_FUA != 0
    }

    /// The wire form, as [`parse_request`] reads it.
    pub fn to_bytes(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A request header the server cannot make sense of; the connection cannot
/// be resynchronised and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
}

/// Parses a transmission request header. Pure and total: any 28 bytes give
/// a request or an error.
pub fn parse_request(header: &[u8; REQUEST_LEN]) -> Result<Request, ProtocolError> {
    let [m0, m1, m2, m3, f0, f1, t0, t1, rest @ ..] = *header;
    let magic = u32::from_be_bytes([m0, m1, m2, m3]);
    if magic != NBD_REQUEST_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let [
        c0,
        c1,
        c2,
        c3,
        c4,
        c5,
        c6,
        c7,
        o0,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
        o7,
        l0,
        l1,
        l2,
        l3,
    ] = rest;
    Ok(Request {
        flags: u16::from_be_bytes([f0, f1]),
        command: Command::from_wire(u16::from_be_bytes([t0, t1])),
        cookie: u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
        offset: u64::from_be_bytes([o0, o1, o2, o3, o4, o5, o6, o7]),
        length: u32::from_be_bytes([l0, l1, l2, l3]),
    })
}

/// A bounds-checked big-endian reader over option data.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, PartialEq, Eq)]
struct InfoRequest {
    name: String,
    infos: Vec<u16>,
}

fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let mut c = Cursor(data);
    let name_len = usize::try_from(c.u32()?).ok()?;
    let name = std::str::from_utf8(c.take(name_len)?).ok()?.to_owned();
    let count = usize::from(c.u16()?);
    let infos = (0..count).map(|_| c.u16()).collect::<Option<Vec<_>>>()?;
    c.0.is_empty().then_some(InfoRequest { name, infos })
}

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// Cuts `msg` to the protocol's string bound, on a char boundary.
fn bounded(msg: &str) -> &str {
    if msg.len() <= MAX_STRING {
        return msg;
    }
    let mut end = MAX_STRING;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Where a server listens or a client connects: `HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NBD address {input:?}: {reason} (expected HOST:PORT or unix:PATH)")]
pub struct ParseListenAddrError {
    input: String,
    reason: String,
}

impl FromStr for ListenAddr {
    type Err = ParseListenAddrError;

    /// Parses `unix:PATH` or `HOST:PORT`. A host name is resolved now; when
    /// it has several addresses the first IPv4 one wins.
    fn from_str(s: &str) -> Result<ListenAddr, ParseListenAddrError> {
        let err = |reason: String| ParseListenAddrError {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty socket path".into()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let addrs: Vec<SocketAddr> = s
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .map(|a| ListenAddr::Tcp(*a))
            .ok_or_else(|| err("resolves to no address".into()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

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
    exports: Arc<dyn Exports>,
    limits: Limits,
    admission: Arc<dyn Admission>,
    /// Set on a TCP server with TLS.
    tls: Option<tls::Acceptor>,
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

    fn transmission_flags(device: &dyn Device) -> u16 {
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

/// One connection during negotiation.
struct Connection<'a, 's> {
    r: BufReader<Box<dyn Incoming + 's>>,
    w: BufWriter<Box<dyn Write + Send + 's>>,
    server: &'a NbdServer,
    peer: &'a str,
    identity: Identity,
    /// The TCP socket while TLS is required and not yet started.
    starttls: Option<TcpStream>,
    /// When negotiation must be over (the TLS handshake too).
    deadline: Instant,
    /// TLS was started on this connection.
    tls_active: bool,
    /// Keeps the TLS pump delivering until the connection is done.
    pump: Option<tls::PumpGuard>,
}

/// What the client asked for by `NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO` or
/// `NBD_OPT_GO`, once admitted and opened.
type Opened = Result<Arc<dyn Device>, String>;

impl Connection<'_, '_> {
    fn limits(&self) -> &Limits {
        &self.server.limits
    }

    /// Opens what the client calls `requested`, as its identity may. An
    /// export it may not open and one that does not exist give the same
    /// message.
    fn open(&self, requested: &str) -> Opened {
        let refused = || format!("no export named {:?}", bounded(requested));
        let Some(name) = self.server.admission.resolve(&self.identity, requested) else {
            debug!(peer = self.peer, requested, identity = ?self.identity, "export not admitted");
            return Err(refused());
        };
        self.server.exports.open_export(&name).map_err(|e| {
            debug!(peer = self.peer, requested, export = name, error = %e, "cannot open export");
            refused()
        })
    }

    /// Answers `NBD_OPT_STARTTLS` on a connection that must start TLS, and
    /// moves the connection onto the TLS pump. False: close.
    fn start_tls(&mut self, option: u32, data: &[u8]) -> io::Result<bool> {
        if !data.is_empty() {
            self.option_error(
                option,
                NBD_REP_ERR_INVALID,
                "NBD_OPT_STARTTLS takes no data",
            )?;
            return Ok(true);
        }
        self.option_reply(option, NBD_REP_ACK, &[])?;
        self.w.flush()?;
        if !self.r.buffer().is_empty() {
            warn!(
                peer = self.peer,
                "NBD client sent data before the TLS handshake; closing"
            );
            return Ok(false);
        }
        let (Some(tcp), Some(acceptor)) = (self.starttls.take(), &self.server.tls) else {
            return Ok(false);
        };
        let Identity::Tcp { addr } = self.identity else {
            return Ok(false);
        };
        let upgraded = match acceptor.upgrade(tcp, self.deadline, self.limits().handshake_timeout) {
            Ok(upgraded) => upgraded,
            Err(e) => {
                info!(peer = self.peer, error = %e, "NBD TLS handshake failed; closing");
                return Ok(false);
            }
        };
        let stream = upgraded.stream;
        let mut reader = Timed::new(Socket::Unix(stream.try_clone()?));
        reader.set_deadline(Some(self.deadline));
        reader.set_write_timeout(self.limits().handshake_timeout);
        self.r = BufReader::with_capacity(IO_BUFFER, Box::new(reader));
        self.w = BufWriter::with_capacity(IO_BUFFER, Box::new(stream));
        self.pump = Some(upgraded.guard);
        self.tls_active = true;
        debug!(peer = self.peer, common_name = ?upgraded.common_name, "NBD TLS started");
        self.identity = Identity::Tls {
            addr,
            common_name: upgraded.common_name,
        };
        Ok(true)
    }

    fn option_reply(&mut self, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
        let len =
            u32::try_from(data.len()).map_err(|_| io::Error::other("option reply too long"))?;
        self.w.write_all(&NBD_OPT_REPLY_MAGIC.to_be_bytes())?;
        self.w.write_all(&option.to_be_bytes())?;
        self.w.write_all(&reply.to_be_bytes())?;
        self.w.write_all(&len.to_be_bytes())?;
        self.w.write_all(data)
    }

    fn option_error(&mut self, option: u32, reply: u32, msg: &str) -> io::Result<()> {
        debug!(
            peer = self.peer,
            option,
            reply = reply & !NBD_REP_FLAG_ERROR,
            msg,
            "NBD option refused"
        );
        self.option_reply(option, reply, bounded(msg).as_bytes())
    }

    /// Runs the handshake and option haggling. `Some(device)` means the
    /// client entered transmission on it; `None` means close.
    fn negotiate(&mut self) -> io::Result<Option<Arc<dyn Device>>> {
        self.w.write_all(&NBDMAGIC.to_be_bytes())?;
        self.w.write_all(&IHAVEOPT.to_be_bytes())?;
        self.w
            .write_all(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes())?;
        self.w.flush()?;

        let mut flags = [0u8; 4];
        self.r.read_exact(&mut flags)?;
        let client_flags = u32::from_be_bytes(flags);
        if client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0 {
            debug!(peer = self.peer, "client is not fixed-newstyle; closing");
            return Ok(None);
        }
        if client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
            debug!(
                peer = self.peer,
                client_flags, "unknown client flags; closing"
            );
            return Ok(None);
        }
        let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;

        loop {
            self.w.flush()?;
            let mut header = [0u8; 16];
            self.r.read_exact(&mut header)?;
            let mut c = Cursor(&header);
            let (magic, option, len) = match (c.u64(), c.u32(), c.u32()) {
                (Some(m), Some(o), Some(l)) => (m, o, l),
                _ => return Ok(None),
            };
            if magic != IHAVEOPT {
                warn!(peer = self.peer, magic, "bad option magic; closing");
                return Ok(None);
            }
            let tls_required = self.starttls.is_some();
            if len > self.limits().max_option_bytes {
                if option == NBD_OPT_EXPORT_NAME {
                    warn!(
                        peer = self.peer,
                        len, "oversized NBD_OPT_EXPORT_NAME; closing"
                    );
                    return Ok(None);
                }
                io::copy(&mut (&mut self.r).take(u64::from(len)), &mut io::sink())?;
                if tls_required {
                    self.option_error(option, NBD_REP_ERR_TLS_REQD, "start TLS first")?;
                } else {
                    self.option_error(option, NBD_REP_ERR_TOO_BIG, "option data too large")?;
                }
                continue;
            }
            // Bounded by max_option_bytes above.
            let mut data = vec![0u8; len as usize];
            self.r.read_exact(&mut data)?;

            if tls_required {
                match option {
                    NBD_OPT_STARTTLS => {
                        if !self.start_tls(option, &data)? {
                            return Ok(None);
                        }
                        continue;
                    }
                    NBD_OPT_ABORT => {}
                    NBD_OPT_EXPORT_NAME => {
                        // It cannot be refused; the protocol says to close.
                        info!(peer = self.peer, "NBD_OPT_EXPORT_NAME before TLS; closing");
                        return Ok(None);
                    }
                    _ => {
                        self.option_error(option, NBD_REP_ERR_TLS_REQD, "start TLS first")?;
                        continue;
                    }
                }
            }

            match option {
                NBD_OPT_EXPORT_NAME => {
                    let Ok(name) = String::from_utf8(data) else {
                        warn!(peer = self.peer, "export name is not UTF-8; closing");
                        return Ok(None);
                    };
                    let device = match self.open(&name) {
                        Ok(device) => device,
                        Err(msg) => {
                            // The protocol gives no way to refuse EXPORT_NAME but closing.
                            info!(peer = self.peer, msg, "cannot open export; closing");
                            return Ok(None);
                        }
                    };
                    self.w.write_all(&device.size().to_be_bytes())?;
                    self.w
                        .write_all(&NbdServer::transmission_flags(&*device).to_be_bytes())?;
                    if !no_zeroes {
                        self.w.write_all(&[0u8; 124])?;
                    }
                    self.w.flush()?;
                    return Ok(Some(device));
                }
                NBD_OPT_ABORT => {
                    self.option_reply(option, NBD_REP_ACK, &[])?;
                    self.w.flush()?;
                    return Ok(None);
                }
                NBD_OPT_LIST => {
                    if !data.is_empty() {
                        self.option_error(
                            option,
                            NBD_REP_ERR_INVALID,
                            "NBD_OPT_LIST takes no data",
                        )?;
                        continue;
                    }
                    let names = self
                        .server
                        .admission
                        .visible(&self.identity, self.server.exports.export_names());
                    for name in names {
                        if name.len() > MAX_STRING {
                            continue;
                        }
                        let mut reply = Vec::with_capacity(4 + name.len());
                        reply.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        reply.extend_from_slice(name.as_bytes());
                        self.option_reply(option, NBD_REP_SERVER, &reply)?;
                    }
                    self.option_reply(option, NBD_REP_ACK, &[])?;
                }
                NBD_OPT_INFO | NBD_OPT_GO => {
                    if let Some(device) = self.info(option, &data)?
                        && option == NBD_OPT_GO
                    {
                        self.w.flush()?;
                        return Ok(Some(device));
                    }
                }
                NBD_OPT_STARTTLS if self.tls_active => {
                    self.option_error(option, NBD_REP_ERR_INVALID, "TLS is already on")?
                }
                _ => self.option_error(option, NBD_REP_ERR_UNSUP, "option not supported")?,
            }
        }
    }

    /// Answers `NBD_OPT_INFO` / `NBD_OPT_GO`; returns the opened device on
    /// success (after the final ACK).
    fn info(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Arc<dyn Device>>> {
        let Some(request) = parse_info_request(data) else {
            self.option_error(
                option,
                NBD_REP_ERR_INVALID,
                "malformed NBD_OPT_INFO/GO request",
            )?;
            return Ok(None);
        };
        if request.name.is_empty() {
            self.option_error(
                option,
                NBD_REP_ERR_UNKNOWN,
                "there is no default export; name one",
            )?;
            return Ok(None);
        }
        let device = match self.open(&request.name) {
            Ok(device) => device,
            Err(msg) => {
                self.option_error(option, NBD_REP_ERR_UNKNOWN, &msg)?;
                return Ok(None);
            }
        };

        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&device.size().to_be_bytes());
        export.extend_from_slice(&NbdServer::transmission_flags(&*device).to_be_bytes());
        self.option_reply(option, NBD_REP_INFO, &export)?;

        if request.infos.contains(&NBD_INFO_NAME) {
            let mut name = Vec::with_capacity(2 + request.name.len());
            name.extend_from_slice(&NBD_INFO_NAME.to_be_bytes());
            name.extend_from_slice(request.name.as_bytes());
            self.option_reply(option, NBD_REP_INFO, &name)?;
        }

        // Servers may always send block sizes. Preferred must be a power of
        // two no larger than the maximum.
        let max = self.limits().max_request_bytes;
        let preferred = if max >= crate::BLOCK_SIZE {
            crate::BLOCK_SIZE
        } else {
            1 << max.ilog2()
        };
        let mut sizes = Vec::with_capacity(14);
        sizes.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
        for v in [1u32, preferred, max] {
            sizes.extend_from_slice(&v.to_be_bytes());
        }
        self.option_reply(option, NBD_REP_INFO, &sizes)?;
        self.option_reply(option, NBD_REP_ACK, &[])?;
        Ok(Some(device))
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

type ClientReader = BufReader<Box<dyn Read + Send>>;
type ClientWriter = BufWriter<Box<dyn Write + Send>>;

/// A blocking NBD client: one request in flight at a time, simple replies.
pub struct NbdClient {
    r: ClientReader,
    w: ClientWriter,
    size: u64,
    flags: u16,
    max_payload: usize,
    next_cookie: u64,
}

/// Largest option reply the client accepts.
const CLIENT_MAX_OPTION_REPLY: u32 = 1 << 20;
/// Trims and zeroings are sent in pieces of at most this many bytes.
const CLIENT_MAX_RANGE: u64 = 1 << 30;

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Connects and does the fixed-newstyle handshake; with `tls`, starts TLS
/// (`NBD_OPT_STARTTLS`, then the TLS handshake) before anything else.
fn client_handshake(
    addr: &ListenAddr,
    tls: Option<&ClientTls>,
) -> io::Result<(ClientReader, ClientWriter)> {
    let mut tcp = None;
    let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match addr {
        ListenAddr::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            tcp = Some(s.try_clone()?);
            (Box::new(s.try_clone()?), Box::new(s))
        }
        ListenAddr::Unix(p) => {
            let s = UnixStream::connect(p)?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
    };
    let (mut r, mut w) = (
        BufReader::with_capacity(IO_BUFFER, r),
        BufWriter::with_capacity(IO_BUFFER, w),
    );
    let mut hello = [0u8; 18];
    r.read_exact(&mut hello)?;
    let mut c = Cursor(&hello);
    if c.u64() != Some(NBDMAGIC) || c.u64() != Some(IHAVEOPT) {
        return Err(bad_data("not a newstyle NBD server"));
    }
    let flags = c.u16().unwrap_or(0);
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad_data("NBD server is not fixed-newstyle"));
    }
    let no_zeroes = if flags & NBD_FLAG_NO_ZEROES != 0 {
        NBD_FLAG_C_NO_ZEROES
    } else {
        0
    };
    w.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | no_zeroes).to_be_bytes())?;
    let Some(tls) = tls else {
        return Ok((r, w));
    };
    let tcp = tcp.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "TLS is for TCP addresses only")
    })?;
    send_option(&mut w, NBD_OPT_STARTTLS, &[])?;
    read_option_reply(&mut r, NBD_OPT_STARTTLS)?;
    if !r.buffer().is_empty() {
        return Err(bad_data("NBD server sent data before the TLS handshake"));
    }
    let stream = tls::ClientStream::connect(tls, tcp)?;
    Ok((
        BufReader::with_capacity(IO_BUFFER, Box::new(stream.clone())),
        BufWriter::with_capacity(IO_BUFFER, Box::new(stream)),
    ))
}

fn send_option(w: &mut ClientWriter, option: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&option.to_be_bytes())?;
    w.write_all(&(data.len() as u32).to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

/// Reads one option reply: its type and data. Error replies become errors.
fn read_option_reply(r: &mut ClientReader, option: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; 20];
    r.read_exact(&mut header)?;
    let mut c = Cursor(&header);
    let (magic, opt, reply, len) = (c.u64(), c.u32(), c.u32().unwrap_or(0), c.u32().unwrap_or(0));
    if magic != Some(NBD_OPT_REPLY_MAGIC) || opt != Some(option) || len > CLIENT_MAX_OPTION_REPLY {
        return Err(bad_data("malformed NBD option reply"));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    if reply & NBD_REP_FLAG_ERROR == 0 {
        return Ok((reply, data));
    }
    let kind = match reply {
        NBD_REP_ERR_UNKNOWN => io::ErrorKind::NotFound,
        NBD_REP_ERR_UNSUP => io::ErrorKind::Unsupported,
        NBD_REP_ERR_POLICY | NBD_REP_ERR_TLS_REQD => io::ErrorKind::PermissionDenied,
        NBD_REP_ERR_INVALID => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    Err(io::Error::new(
        kind,
        format!("NBD server: {}", String::from_utf8_lossy(&data)),
    ))
}

/// Lists the server's exports with `NBD_OPT_LIST`.
pub fn list_exports(addr: &ListenAddr) -> io::Result<Vec<String>> {
    list_exports_with(addr, None)
}

/// [`list_exports`], over TLS when `tls` is given.
pub fn list_exports_with(addr: &ListenAddr, tls: Option<&ClientTls>) -> io::Result<Vec<String>> {
    let (mut r, mut w) = client_handshake(addr, tls)?;
    send_option(&mut w, NBD_OPT_LIST, &[])?;
    let mut names = Vec::new();
    loop {
        match read_option_reply(&mut r, NBD_OPT_LIST)? {
            (NBD_REP_ACK, _) => break,
            (NBD_REP_SERVER, data) => {
                let mut c = Cursor(&data);
                let name = c.u32().and_then(|n| c.take(usize::try_from(n).ok()?));
                let name = name.ok_or_else(|| bad_data("malformed NBD_REP_SERVER"))?;
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            _ => {}
        }
    }
    // Be polite; the answer does not matter.
    if send_option(&mut w, NBD_OPT_ABORT, &[]).is_ok() {
        let _ = read_option_reply(&mut r, NBD_OPT_ABORT);
    }
    Ok(names)
}

impl NbdClient {
    /// Connects and enters transmission on `export` with `NBD_OPT_GO`. An
    /// unknown export is `NotFound` with the server's message.
    pub fn connect(addr: &ListenAddr, export: &str) -> io::Result<NbdClient> {
        NbdClient::connect_with(addr, export, None)
    }

    /// [`NbdClient::connect`], over TLS when `tls` is given.
    pub fn connect_with(
        addr: &ListenAddr,
        export: &str,
        tls: Option<&ClientTls>,
    ) -> io::Result<NbdClient> {
        let (mut r, mut w) = client_handshake(addr, tls)?;
        let mut data = Vec::with_capacity(8 + export.len());
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
        send_option(&mut w, NBD_OPT_GO, &data)?;
        let (mut export_info, mut max_payload) = (None, 32usize << 20);
        loop {
            let (reply, data) = read_option_reply(&mut r, NBD_OPT_GO)?;
            let mut c = Cursor(&data);
            match (reply, c.u16()) {
                (NBD_REP_ACK, _) => break,
                (NBD_REP_INFO, Some(NBD_INFO_EXPORT)) => export_info = c.u64().zip(c.u16()),
                (NBD_REP_INFO, Some(NBD_INFO_BLOCK_SIZE)) => {
                    if let Some(max) = c.u32().and(c.u32()).and(c.u32()) {
                        max_payload = usize::try_from(max).unwrap_or(usize::MAX).max(1);
                    }
                }
                _ => {}
            }
        }
        let (size, flags) =
            export_info.ok_or_else(|| bad_data("NBD server sent no NBD_INFO_EXPORT"))?;
        Ok(NbdClient {
            r,
            w,
            size,
            flags,
            max_payload,
            next_cookie: 1,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.flags & NBD_FLAG_READ_ONLY != 0
    }

    /// Sends one request and waits for its simple reply header.
    fn request(
        &mut self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.w.write_all(&req.to_bytes())?;
        self.w.write_all(payload)?;
        self.w.flush()?;
        let mut reply = [0u8; SIMPLE_REPLY_LEN];
        self.r.read_exact(&mut reply)?;
        let mut c = Cursor(&reply);
        let (magic, error, got) = (c.u32(), c.u32().unwrap_or(0), c.u64());
        if magic != Some(NBD_SIMPLE_REPLY_MAGIC) || got != Some(cookie) {
            return Err(bad_data("malformed NBD reply"));
        }
        match error {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(errno_from_nbd(e))),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, in pieces the server accepts.
    pub fn read(&mut self, mut offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for chunk in buf.chunks_mut(self.max_payload) {
            self.request(Command::Read, 0, offset, chunk.len() as u32, &[])?;
            self.r.read_exact(chunk)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn write(&mut self, mut offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        let flags = if fua { NBD_CMD_FLAG_FUA } else { 0 };
        for chunk in buf.chunks(self.max_payload) {
            self.request(Command::Write, flags, offset, chunk.len() as u32, chunk)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.request(Command::Flush, 0, 0, 0, &[])
    }

    fn ranged(&mut self, command: Command, mut offset: u64, mut len: u64) -> io::Result<()> {
        while len > 0 {
            let piece = len.min(CLIENT_MAX_RANGE);
            self.request(command, 0, offset, piece as u32, &[])?;
            (offset, len) = (offset + piece, len - piece);
        }
        Ok(())
    }

    pub fn trim(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.ranged(Command::Trim, offset, len)
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.ranged(Command::WriteZeroes, offset, len)
    }

    /// Sends `NBD_CMD_DISC` (the server flushes) and closes.
    pub fn disconnect(mut self) -> io::Result<()> {
        let req = Request {
            flags: 0,
            command: Command::Disconnect,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        self.w.write_all(&req.to_bytes())?;
        self.w.flush()
    }
}

#[cfg(test)]
mod access_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// An in-memory device twin.
    pub(super) struct MemDevice {
        pub(super) name: String,
        pub(super) data: Mutex<Vec<u8>>,
        pub(super) read_only: bool,
    }

    impl Device for MemDevice {
        fn name(&self) -> &str {
            &self.name
        }
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
            let data = self.data.lock().unwrap();
            let start = offset as usize;
            buf.copy_from_slice(&data[start..start + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> crate::Result<()> {
            if self.read_only {
                return Err(Error::ReadOnly {
                    export: self.name.clone(),
                });
            }
            let mut data = self.data.lock().unwrap();
            let start = offset as usize;
            data[start..start + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> crate::Result<()> {
            let mut data = self.data.lock().unwrap();
            data[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64) -> crate::Result<()> {
            self.write_zeroes(offset, len, false)
        }
        fn flush(&self) -> crate::Result<()> {
            Ok(())
        }
    }

    pub(super) struct MemExports(pub(super) BTreeMap<String, Arc<dyn Device>>);

    impl Exports for MemExports {
        fn open_export(&self, name: &str) -> crate::Result<Arc<dyn Device>> {
            match self.0.get(name) {
                Some(d) => Ok(d.clone()),
                None => Err(Error::VolumeNotFound {
                    volume: name.to_owned(),
                }),
            }
        }
        fn export_names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    pub(super) const DISK_SIZE: usize = 4 << 20;

    fn exports() -> Arc<MemExports> {
        let mut map: BTreeMap<String, Arc<dyn Device>> = BTreeMap::new();
        for (name, size, read_only) in [("disk", DISK_SIZE, false), ("disk@snap", 64 << 10, true)] {
            let data = Mutex::new((0..size).map(|i| (i % 251) as u8).collect());
            map.insert(
                name.to_owned(),
                Arc::new(MemDevice {
                    name: name.to_owned(),
                    data,
                    read_only,
                }),
            );
        }
        Arc::new(MemExports(map))
    }

    fn tcp_server(limits: Limits) -> NbdServerHandle {
        serve(&"127.0.0.1:0".parse().unwrap(), exports(), limits).unwrap()
    }

    pub(super) fn errno(e: &io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    fn round_trip(addr: &ListenAddr) {
        let mut c = NbdClient::connect(addr, "disk").unwrap();
        assert_eq!(c.size(), DISK_SIZE as u64);
        assert!(!c.read_only());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        c.write(4099, &data, false).unwrap();
        c.write(0, b"hello", true).unwrap();
        c.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        c.read(4099, &mut back).unwrap();
        assert_eq!(back, data);
        let mut hello = [0u8; 5];
        c.read(0, &mut hello).unwrap();
        assert_eq!(&hello, b"hello");
        c.trim(4096, 8192).unwrap();
        c.write_zeroes(20_000, 1000).unwrap();
        let mut z = vec![1u8; 8192];
        c.read(4096, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        c.read(20_000, &mut z[..1000]).unwrap();
        assert!(z[..1000].iter().all(|&b| b == 0));
        c.disconnect().unwrap();
    }

    #[test]
    fn round_trip_over_tcp() {
        let server = tcp_server(Limits::default());
        let addr = server.local_addr();
        assert!(matches!(addr, ListenAddr::Tcp(a) if a.port() != 0));
        round_trip(&addr);
        // Display and FromStr agree.
        assert_eq!(addr.to_string().parse::<ListenAddr>().unwrap(), addr);
        server.shutdown();
        assert!(NbdClient::connect(&addr, "disk").is_err());
    }

    #[test]
    fn round_trip_over_unix_and_socket_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        // A stale socket file is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let addr = ListenAddr::Unix(path.clone());
        let server = serve(&addr, exports(), Limits::default()).unwrap();
        assert_eq!(server.local_addr(), addr);
        // A live one is not.
        let err = serve(&addr, exports(), Limits::default()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        round_trip(&addr);
        assert_eq!(format!("{addr}").parse::<ListenAddr>().unwrap(), addr);
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn small_max_request_splits_client_io() {
        let server = tcp_server(Limits {
            max_request_bytes: 4096,
            ..Limits::default()
        });
        let mut c = NbdClient::connect(&server.local_addr(), "disk").unwrap();
        let data = vec![0xabu8; 10_000];
        c.write(1, &data, false).unwrap();
        let mut back = vec![0u8; 10_000];
        c.read(1, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn read_only_export_refuses_modification() {
        let server = tcp_server(Limits::default());
        let mut c = NbdClient::connect(&server.local_addr(), "disk@snap").unwrap();
        assert!(c.read_only());
        assert_eq!(
            errno(&c.write(0, &[1; 4096], false).unwrap_err()),
            Some(libc::EPERM)
        );
        assert_eq!(errno(&c.trim(0, 4096).unwrap_err()), Some(libc::EPERM));
        assert_eq!(
            errno(&c.write_zeroes(0, 4096).unwrap_err()),
            Some(libc::EPERM)
        );
        let mut buf = [0u8; 16];
        c.read(1, &mut buf).unwrap();
        assert_eq!(buf[0], 1);
        c.flush().unwrap();
        c.disconnect().unwrap();
    }

    #[test]
    fn out_of_range_requests_fail_and_connection_survives() {
        let server = tcp_server(Limits::default());
        let mut c = NbdClient::connect(&server.local_addr(), "disk").unwrap();
        let size = c.size();
        let mut buf = [0u8; 100];
        assert_eq!(
            errno(&c.read(size - 10, &mut buf).unwrap_err()),
            Some(libc::EINVAL)
        );
        assert_eq!(
            errno(&c.read(u64::MAX - 10, &mut buf).unwrap_err()),
            Some(libc::EINVAL)
        );
        assert_eq!(
            errno(&c.write(size - 10, &[7; 100], false).unwrap_err()),
            Some(libc::ENOSPC)
        );
        assert_eq!(errno(&c.trim(size, 1).unwrap_err()), Some(libc::ENOSPC));
        assert_eq!(
            errno(&c.write_zeroes(u64::MAX, 2).unwrap_err()),
            Some(libc::ENOSPC)
        );
        c.write(size - 100, &[7; 100], false).unwrap();
        c.read(size - 100, &mut buf).unwrap();
        assert_eq!(buf, [7; 100]);
    }

    /// Handshake by hand with NBD_OPT_EXPORT_NAME; returns the raw stream in
    /// transmission.
    fn raw_export(addr: &ListenAddr, name: &str) -> TcpStream {
        let ListenAddr::Tcp(a) = addr else {
            panic!("tcp only")
        };
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(
            u16::from_be_bytes([hello[16], hello[17]]),
            NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
        );
        s.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        raw_option(&mut s, NBD_OPT_EXPORT_NAME, name.as_bytes());
        let mut info = [0u8; 10];
        s.read_exact(&mut info).unwrap();
        let size = u64::from_be_bytes(info[..8].try_into().unwrap());
        assert_eq!(size, DISK_SIZE as u64);
        s
    }

    fn raw_option(s: &mut TcpStream, option: u32, data: &[u8]) {
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&option.to_be_bytes()).unwrap();
        s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
        s.write_all(data).unwrap();
    }

    fn raw_option_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            NBD_OPT_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let reply = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        (opt, reply, data)
    }

    pub(super) fn assert_closed(s: &mut TcpStream) {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("connection still sends data"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    #[test]
    fn bad_magic_closes_only_that_connection() {
        let server = tcp_server(Limits::default());
        let addr = server.local_addr();
        let mut good = NbdClient::connect(&addr, "disk").unwrap();
        let mut bad = raw_export(&addr, "disk");
        let mut header = Request {
            flags: 0,
            command: Command::Read,
            cookie: 9,
            offset: 0,
            length: 8,
        }
        .to_bytes();
        header[0] ^= 0xff;
        bad.write_all(&header).unwrap();
        assert_closed(&mut bad);
        let mut buf = [0u8; 8];
        good.read(0, &mut buf).unwrap();
        good.write(0, &buf, false).unwrap();
        NbdClient::connect(&addr, "disk").unwrap().flush().unwrap();
    }

    #[test]
    fn oversized_requests() {
        let server = tcp_server(Limits {
            max_request_bytes: 4096,
            ..Limits::default()
        });
        let addr = server.local_addr();
        // An oversized read fails without killing the connection.
        let mut s = raw_export(&addr, "disk");
        s.write_all(
            &Request {
                flags: 0,
                command: Command::Read,
                cookie: 42,
                offset: 0,
                length: 1 << 30,
            }
            .to_bytes(),
        )
        .unwrap();
        // An unknown command is EINVAL too.
        s.write_all(
            &Request {
                flags: 0,
                command: Command::Other(77),
                cookie: 43,
                offset: 0,
                length: 0,
            }
            .to_bytes(),
        )
        .unwrap();
        // Both fail with EINVAL, answered in either order.
        let mut cookies = [raw_reply(&mut s), raw_reply(&mut s)];
        cookies.sort();
        assert_eq!(cookies, [(NBD_EINVAL, 42), (NBD_EINVAL, 43)]);
        // An oversized write closes it.
        s.write_all(
            &Request {
                flags: 0,
                command: Command::Write,
                cookie: 44,
                offset: 0,
                length: 1 << 30,
            }
            .to_bytes(),
        )
        .unwrap();
        assert_closed(&mut s);
        NbdClient::connect(&addr, "disk").unwrap().flush().unwrap();
    }

    #[test]
    fn oversized_and_unknown_options_are_refused() {
        let server = tcp_server(Limits {
            max_option_bytes: 1024,
            ..Limits::default()
        });
        let ListenAddr::Tcp(a) = server.local_addr() else {
            unreachable!()
        };
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        raw_option(&mut s, NBD_OPT_GO, &vec![0u8; 100_000]);
        assert_eq!(raw_option_reply(&mut s).1, NBD_REP_ERR_TOO_BIG);
        raw_option(&mut s, NBD_OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(raw_option_reply(&mut s).1, NBD_REP_ERR_UNSUP);
        raw_option(&mut s, NBD_OPT_LIST, b"x");
        assert_eq!(raw_option_reply(&mut s).1, NBD_REP_ERR_INVALID);
        raw_option(&mut s, NBD_OPT_INFO, &[0, 0, 0, 9, b'd']);
        assert_eq!(raw_option_reply(&mut s).1, NBD_REP_ERR_INVALID);
        // INFO on a real export, asking for its name.
        let mut info = 4u32.to_be_bytes().to_vec();
        info.extend_from_slice(b"disk");
        info.extend_from_slice(&1u16.to_be_bytes());
        info.extend_from_slice(&NBD_INFO_NAME.to_be_bytes());
        raw_option(&mut s, NBD_OPT_INFO, &info);
        let mut seen = Vec::new();
        loop {
            let (opt, reply, data) = raw_option_reply(&mut s);
            assert_eq!(opt, NBD_OPT_INFO);
            if reply == NBD_REP_ACK {
                break;
            }
            assert_eq!(reply, NBD_REP_INFO);
            seen.push(u16::from_be_bytes([data[0], data[1]]));
            if seen.last() == Some(&NBD_INFO_NAME) {
                assert_eq!(&data[2..], b"disk");
            }
        }
        assert_eq!(seen, [NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]);
        raw_option(&mut s, NBD_OPT_ABORT, &[]);
        assert_eq!(
            raw_option_reply(&mut s),
            (NBD_OPT_ABORT, NBD_REP_ACK, vec![])
        );
        assert_closed(&mut s);
    }

    #[test]
    fn list_and_unknown_export() {
        let server = tcp_server(Limits::default());
        let addr = server.local_addr();
        assert_eq!(list_exports(&addr).unwrap(), ["disk", "disk@snap"]);
        let err = NbdClient::connect(&addr, "nope").err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(
            NbdClient::connect(&addr, "").err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn connection_limit() {
        let server = tcp_server(Limits {
            max_connections: 1,
            ..Limits::default()
        });
        let addr = server.local_addr();
        let first = NbdClient::connect(&addr, "disk").unwrap();
        assert!(NbdClient::connect(&addr, "disk").is_err());
        first.disconnect().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match NbdClient::connect(&addr, "disk") {
                Ok(c) => break c.disconnect().unwrap(),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("no connection after the first closed: {e}"),
            }
        }
    }

    #[test]
    fn parse_request_fields_and_bad_magic() {
        let req = Request {
            flags: NBD_CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 512,
        };
        assert_eq!(parse_request(&req.to_bytes()), Ok(req));
        assert!(req.fua());
        let mut bytes = req.to_bytes();
        bytes[6..8].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(parse_request(&bytes).unwrap().command, Command::Other(9));
        assert_eq!(
            parse_request(&[0; REQUEST_LEN]),
            Err(ProtocolError::BadMagic(0))
        );
    }

    proptest::proptest! {
        /// The fuzz target nbd_request in miniature, so `cargo test` covers
        /// it on any toolchain: any 28 bytes parse, and a parsed request
        /// writes back to the same bytes.
        #[test]
        fn parse_request_is_total_and_round_trips(
            mut header in proptest::array::uniform28(proptest::num::u8::ANY),
            real_magic: bool,
        ) {
            if real_magic {
                header[..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
            }
            match parse_request(&header) {
                Ok(req) => proptest::prop_assert_eq!(req.to_bytes(), header),
                Err(ProtocolError::BadMagic(magic)) => {
                    proptest::prop_assert!(!real_magic);
                    proptest::prop_assert_eq!(&magic.to_be_bytes()[..], &header[..4]);
                }
            }
        }
    }

    #[test]
    fn parse_info_request_is_strict() {
        let mut good = 2u32.to_be_bytes().to_vec();
        good.extend_from_slice(b"ab\0\x01\0\x03");
        assert_eq!(
            parse_info_request(&good),
            Some(InfoRequest {
                name: "ab".into(),
                infos: vec![3]
            })
        );
        assert_eq!(parse_info_request(&good[..good.len() - 1]), None);
        good.push(0);
        assert_eq!(parse_info_request(&good), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse_info_request(&[]), None);
    }

    #[test]
    fn listen_addr_parsing() {
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "unix:/run/x.sock"
                .parse::<ListenAddr>()
                .unwrap()
                .to_string(),
            "unix:/run/x.sock"
        );
        let ListenAddr::Tcp(a) = "localhost:10809".parse::<ListenAddr>().unwrap() else {
            panic!()
        };
        assert!(a.ip().is_loopback() && a.port() == 10809);
        assert_eq!(
            "[::1]:5".parse::<ListenAddr>().unwrap().to_string(),
            "[::1]:5"
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("no-port".parse::<ListenAddr>().is_err());
        assert!("localhost:99999".parse::<ListenAddr>().is_err());
    }

    fn unix_server() -> (tempfile::TempDir, PathBuf, NbdServerHandle) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let server = serve(
            &ListenAddr::Unix(path.clone()),
            exports(),
            Limits::default(),
        )
        .unwrap();
        (dir, path, server)
    }

    #[test]
    fn qemu_io_round_trip() {
        let qemu_io = std::path::Path::new("/usr/bin/qemu-io");
        if !qemu_io.exists() {
            eprintln!("skipping: {} not installed", qemu_io.display());
            return;
        }
        let (_dir, path, _server) = unix_server();
        let url = format!("nbd+unix:///disk?socket={}", path.display());
        for cmd in ["write -P 0x5a 0 1M", "read -P 0x5a 0 1M"] {
            let out = std::process::Command::new(qemu_io)
                .args(["-f", "raw", "-c", cmd, &url])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "qemu-io {cmd}: {text}");
            assert!(
                !text.contains("Pattern verification failed"),
                "qemu-io {cmd}: {text}"
            );
            assert!(!text.contains("failed"), "qemu-io {cmd}: {text}");
        }
    }

    #[test]
    fn nbdinfo_lists_exports() {
        let nbdinfo = std::path::Path::new("/usr/bin/nbdinfo");
        if !nbdinfo.exists() {
            eprintln!("skipping: {} not installed", nbdinfo.display());
            return;
        }
        let (_dir, path, _server) = unix_server();
        let url = format!("nbd+unix:///?socket={}", path.display());
        let out = std::process::Command::new(nbdinfo)
            .args(["--list", &url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "nbdinfo: {text}");
        assert!(
            text.contains("disk") && text.contains("disk@snap"),
            "nbdinfo: {text}"
        );
    }

    /// A device whose 1-byte reads return only once `need` of them are
    /// running at the same time (or fail with EIO after 10 s), so a server
    /// that serves one connection's requests one by one cannot pass.
    struct Rendezvous {
        inner: MemDevice,
        need: usize,
        arrived: Mutex<usize>,
        all_here: std::sync::Condvar,
    }

    impl Device for Rendezvous {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
            if buf.len() == 1 {
                let mut arrived = self.arrived.lock().unwrap();
                *arrived += 1;
                self.all_here.notify_all();
                let (arrived, timeout) = self
                    .all_here
                    .wait_timeout_while(arrived, Duration::from_secs(10), |n| *n < self.need)
                    .unwrap();
                if timeout.timed_out() {
                    return Err(Error::Io {
                        path: format!("rendezvous of {} reads, {} came", self.need, *arrived)
                            .into(),
                        source: io::ErrorKind::TimedOut.into(),
                    });
                }
            }
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> crate::Result<()> {
            self.inner.write_at(buf, offset, fua)
        }
        fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> crate::Result<()> {
            self.inner.write_zeroes(offset, len, fua)
        }
        fn trim(&self, offset: u64, len: u64) -> crate::Result<()> {
            self.inner.trim(offset, len)
        }
        fn flush(&self) -> crate::Result<()> {
            self.inner.flush()
        }
    }

    /// Reads one simple reply header: (error, cookie).
    fn raw_reply(s: &mut TcpStream) -> (u32, u64) {
        let mut reply = [0u8; SIMPLE_REPLY_LEN];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            NBD_SIMPLE_REPLY_MAGIC
        );
        (
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
        )
    }

    /// Sends `requests` (with their payloads) from a thread of their own, so
    /// that back-pressure on the socket cannot deadlock the test.
    fn send_pipelined(s: &TcpStream, requests: Vec<(Request, Vec<u8>)>) -> JoinHandle<()> {
        let mut w = BufWriter::new(s.try_clone().unwrap());
        thread::spawn(move || {
            for (req, payload) in requests {
                w.write_all(&req.to_bytes()).unwrap();
                w.write_all(&payload).unwrap();
            }
            w.flush().unwrap();
        })
    }

    fn request(command: Command, cookie: u64, offset: u64, length: u32) -> Request {
        Request {
            flags: 0,
            command,
            cookie,
            offset,
            length,
        }
    }

    #[test]
    fn one_connection_runs_requests_concurrently() {
        let need = 4;
        let device = Rendezvous {
            inner: MemDevice {
                name: "disk".into(),
                data: Mutex::new(vec![7u8; DISK_SIZE]),
                read_only: false,
            },
            need,
            arrived: Mutex::new(0),
            all_here: std::sync::Condvar::new(),
        };
        let exports = MemExports(BTreeMap::from([(
            "disk".to_owned(),
            Arc::new(device) as Arc<dyn Device>,
        )]));
        let limits = Limits {
            max_workers_per_connection: need,
            ..Limits::default()
        };
        let server = serve(&"127.0.0.1:0".parse().unwrap(), Arc::new(exports), limits).unwrap();
        let mut s = raw_export(&server.local_addr(), "disk");
        let reads = (0..need as u64)
            .map(|i| (request(Command::Read, i, i, 1), vec![]))
            .collect();
        // One write(2) of all headers, so the server reads them in one go and
        // none is run inline by the reader (it would block the others).
        send_pipelined(&s, reads).join().unwrap();
        let mut cookies = Vec::new();
        for _ in 0..need {
            let (error, cookie) = raw_reply(&mut s);
            assert_eq!(error, 0, "read {cookie} failed: not run concurrently");
            let mut byte = [0u8];
            s.read_exact(&mut byte).unwrap();
            assert_eq!(byte, [7]);
            cookies.push(cookie);
        }
        cookies.sort();
        assert_eq!(cookies, [0, 1, 2, 3]);
    }

    /// The data block `i` is written with in the pipelined tests.
    fn block(i: u64) -> Vec<u8> {
        (0..4096u64).map(|j| (i * 31 + j * 7 + 1) as u8).collect()
    }

    #[test]
    fn many_pipelined_requests_under_back_pressure_keep_data() {
        // Tight limits so the reader blocks on the in-flight bounds.
        let server = tcp_server(Limits {
            max_workers_per_connection: 3,
            max_in_flight_requests: 5,
            max_in_flight_bytes: 3 * 4096,
            ..Limits::default()
        });
        let addr = server.local_addr();
        let n_blocks = 300u64;
        let mut s = raw_export(&addr, "disk");

        // Writes, some with FUA, then a flush; every one is answered once.
        let mut writes: Vec<(Request, Vec<u8>)> = (0..n_blocks)
            .map(|i| {
                let mut req = request(Command::Write, i, i * 4096, 4096);
                if i % 7 == 0 {
                    req.flags = NBD_CMD_FLAG_FUA;
                }
                (req, block(i))
            })
            .collect();
        writes.push((request(Command::Flush, n_blocks, 0, 0), vec![]));
        let sender = send_pipelined(&s, writes);
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..=n_blocks {
            let (error, cookie) = raw_reply(&mut s);
            assert_eq!(error, 0, "request {cookie}");
            assert!(answered.insert(cookie), "cookie {cookie} answered twice");
        }
        sender.join().unwrap();
        assert_eq!(answered.len() as u64, n_blocks + 1);

        // Reads of every block, and of odd ranges across blocks, pipelined;
        // each reply carries its own data whatever the order.
        let mut expected = BTreeMap::new();
        let mut reads = Vec::new();
        for i in 0..n_blocks {
            expected.insert(i, block(i));
            reads.push((request(Command::Read, i, i * 4096, 4096), vec![]));
        }
        for (k, i) in (0..n_blocks - 1).step_by(13).enumerate() {
            let cookie = 1000 + k as u64;
            let offset = i * 4096 + 1000;
            let mut want = block(i)[1000..].to_vec();
            want.extend_from_slice(&block(i + 1)[..3000]);
            expected.insert(cookie, want);
            reads.push((request(Command::Read, cookie, offset, 6096), vec![]));
        }
        // An out-of-range read fails alone.
        reads.push((request(Command::Read, 9999, DISK_SIZE as u64, 1), vec![]));
        let sender = send_pipelined(&s, reads);
        for _ in 0..=expected.len() {
            let (error, cookie) = raw_reply(&mut s);
            if cookie == 9999 {
                assert_eq!(error, NBD_EINVAL);
                continue;
            }
            assert_eq!(error, 0, "read {cookie}");
            let want = expected
                .remove(&cookie)
                .expect("unknown or repeated cookie");
            let mut data = vec![0u8; want.len()];
            s.read_exact(&mut data).unwrap();
            assert!(data == want, "read {cookie} returned wrong data");
        }
        assert!(expected.is_empty());
        sender.join().unwrap();
    }

    #[test]
    fn disconnect_answers_requests_in_flight_first() {
        let server = tcp_server(Limits {
            max_workers_per_connection: 4,
            ..Limits::default()
        });
        let addr = server.local_addr();
        let mut s = raw_export(&addr, "disk");
        let n_blocks = 64u64;
        let mut requests: Vec<(Request, Vec<u8>)> = (0..n_blocks)
            .map(|i| (request(Command::Write, i, (i + 100) * 4096, 4096), block(i)))
            .collect();
        requests.push((request(Command::Disconnect, 0, 0, 0), vec![]));
        send_pipelined(&s, requests).join().unwrap();
        let mut cookies = Vec::new();
        for _ in 0..n_blocks {
            let (error, cookie) = raw_reply(&mut s);
            assert_eq!(error, 0);
            cookies.push(cookie);
        }
        cookies.sort();
        assert_eq!(cookies, (0..n_blocks).collect::<Vec<_>>());
        assert_closed(&mut s);
        let mut c = NbdClient::connect(&addr, "disk").unwrap();
        for i in 0..n_blocks {
            let mut data = vec![0u8; 4096];
            c.read((i + 100) * 4096, &mut data).unwrap();
            assert!(data == block(i), "block {i}");
        }
    }

    #[test]
    fn concurrent_clients_see_their_own_data() {
        let server = tcp_server(Limits::default());
        let addr = server.local_addr();
        let clients: Vec<_> = (0..6u64)
            .map(|k| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let mut c = NbdClient::connect(&addr, "disk").unwrap();
                    let base = k * (DISK_SIZE as u64 / 8);
                    for i in 0..40 {
                        c.write(base + i * 4096, &block(k * 1000 + i), i % 5 == 0)
                            .unwrap();
                    }
                    c.flush().unwrap();
                    for i in 0..40 {
                        let mut data = vec![0u8; 4096];
                        c.read(base + i * 4096, &mut data).unwrap();
                        assert!(data == block(k * 1000 + i), "client {k} block {i}");
                    }
                    c.disconnect().unwrap();
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    }
}
