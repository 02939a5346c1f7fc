//! The blocking client: [`NbdClient`] (one request in flight, simple
//! replies) and [`list_exports`], for demos, benches and tests, with
//! optional TLS.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use super::protocol::*;
use super::{ClientTls, tls};

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
