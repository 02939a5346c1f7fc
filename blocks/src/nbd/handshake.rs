//! Option negotiation on the server side: the fixed-newstyle greeting,
//! option haggling (`NBD_OPT_EXPORT_NAME`, `LIST`, `INFO`, `GO`, `ABORT`),
//! FORCEDTLS and `NBD_OPT_STARTTLS`, and opening the export the
//! connection's identity is admitted to.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::protocol::*;
use super::server::{Limits, NbdServer};
use super::socket::{Incoming, Socket, Timed};
use super::{Identity, tls};
use crate::Device;

/// One connection during negotiation.
pub(super) struct Connection<'a, 's> {
    pub(super) r: BufReader<Box<dyn Incoming + 's>>,
    pub(super) w: BufWriter<Box<dyn Write + Send + 's>>,
    pub(super) server: &'a NbdServer,
    pub(super) peer: &'a str,
    pub(super) identity: Identity,
    /// The TCP socket while TLS is required and not yet started.
    pub(super) starttls: Option<TcpStream>,
    /// When negotiation must be over (the TLS handshake too).
    pub(super) deadline: Instant,
    /// TLS was started on this connection.
    pub(super) tls_active: bool,
    /// Keeps the TLS pump delivering until the connection is done.
    pub(super) pump: Option<tls::PumpGuard>,
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
    pub(super) fn negotiate(&mut self) -> io::Result<Option<Arc<dyn Device>>> {
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
