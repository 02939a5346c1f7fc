//! The wire protocol: constants, the request header and its parsing, the
//! option-data helpers both ends use, errno mapping, and the address syntax
//! ([`ListenAddr`]) servers listen on and clients connect to. Pure: no
//! sockets, no threads.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

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
pub(super) const SIMPLE_REPLY_LEN: usize = 16;
/// The protocol's bound on strings (export names, error messages).
pub(super) const MAX_STRING: usize = 4096;
/// Socket buffer size of each direction of a connection.
pub(super) const IO_BUFFER: usize = 256 * 1024;

/// Maps a libc errno to the protocol's error value (unknown ones to `EIO`).
pub(super) fn nbd_errno(errno: i32) -> u32 {
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
pub(super) fn errno_from_nbd(error: u32) -> i32 {
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
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InfoRequest {
    pub(super) name: String,
    pub(super) infos: Vec<u16>,
}

pub(super) fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let mut c = Cursor(data);
    let name_len = usize::try_from(c.u32()?).ok()?;
    let name = std::str::from_utf8(c.take(name_len)?).ok()?.to_owned();
    let count = usize::from(c.u16()?);
    let infos = (0..count).map(|_| c.u16()).collect::<Option<Vec<_>>>()?;
    c.0.is_empty().then_some(InfoRequest { name, infos })
}

pub(super) fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// Cuts `msg` to the protocol's string bound, on a char boundary.
pub(super) fn bounded(msg: &str) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
