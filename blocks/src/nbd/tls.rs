//! TLS for NBD over TCP (`NBD_OPT_STARTTLS`): rustls on the ring provider,
//! configurations from PEM files, and the pump that carries one upgraded
//! connection.
//!
//! # Shape
//! A connection's thread negotiates in plain text until the client sends
//! `NBD_OPT_STARTTLS` and gets `NBD_REP_ACK`. The TCP socket then moves to
//! the server's small tokio runtime (one thread, made only when TLS is on),
//! which runs the TLS handshake within what is left of the handshake
//! timeout, reads the client certificate's subject common name, and from
//! then on pumps bytes between the TLS stream and one end of a unix socket
//! pair. The connection's thread goes on with the other end exactly as with
//! a plain socket: the rest of negotiation, the transmission pipeline and
//! its timeouts do not know TLS is there.
//!
//! # Invariants
//! * A pump ends when the connection's thread is done with it (its
//!   [`PumpGuard`] dropped): after at most `linger` to deliver the last
//!   replies, the TCP socket is closed even if the client stopped reading.
//! * A client certificate, when the configuration asks for one, is verified
//!   by rustls against the client CA before its common name is read.
//! * Dropping the runtime never blocks (it may be dropped inside another
//!   runtime): it is shut down in the background.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncWriteExt, BufReader as AsyncBufReader};
use tracing::debug;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no PEM private key found")]
    NoKey { what: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// The ring provider, on purpose (no aws-lc in the build); later rustls
/// releases deprecate it for lacking post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| Error::NoKey {
        what: what.to_owned(),
    })
}

fn roots(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|e| Error::Invalid {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn invalid(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Invalid {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// A server configuration from PEM bytes: the certificate chain, its key,
/// and, when given, the CA that client certificates must chain to (a client
/// certificate is then required).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let what = "NBD TLS server certificate";
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid(what))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let what = "NBD TLS client CA";
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, what)?),
                provider(),
            )
            .build()
            .map_err(|e| Error::Invalid {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certificates(cert_pem, what)?, private_key(key_pem, what)?)
        .map_err(invalid(what))?;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// [`server_config`] from PEM files.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let ca = client_ca.map(read).transpose()?;
    server_config(&read(cert)?, &read(key)?, ca.as_deref())
}

/// A client configuration from PEM bytes: the CA that signs the server's
/// certificate and, optionally, the client's certificate and key.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let what = "NBD TLS client";
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid(what))?
        .with_root_certificates(roots(ca_pem, "NBD TLS CA")?);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, what)?, private_key(key, what)?)
            .map_err(invalid(what))?,
    };
    Ok(Arc::new(config))
}

/// What a client needs to start TLS: its configuration and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The subject common name of the first (leaf) certificate, if it parses
/// and has one.
fn common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The server side: a TLS acceptor and the runtime its pumps run on.
pub(super) struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An upgraded connection, as its thread sees it.
pub(super) struct Upgraded {
    /// The plain end of the pump: NBD from here on.
    pub(super) stream: UnixStream,
    pub(super) common_name: Option<String>,
    pub(super) guard: PumpGuard,
}

/// Held by the connection's thread; dropping it lets the pump finish.
pub(super) struct PumpGuard {
    _done: tokio::sync::oneshot::Sender<()>,
}

impl Acceptor {
    pub(super) fn new(config: Arc<rustls::ServerConfig>) -> io::Result<Acceptor> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nbd-tls")
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            runtime: Some(runtime),
        })
    }

    /// Runs the TLS handshake on `tcp`, to finish by `deadline`, and starts
    /// its pump. `linger` bounds how long the pump still delivers replies
    /// once the connection's thread is done.
    pub(super) fn upgrade(
        &self,
        tcp: TcpStream,
        deadline: Instant,
        linger: Duration,
    ) -> io::Result<Upgraded> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| io::Error::other("the NBD TLS runtime is gone"))?;
        let (ours, theirs) = UnixStream::pair()?;
        tcp.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        let (result_tx, result_rx) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let acceptor = self.acceptor.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        runtime.spawn(async move {
            let setup = async {
                let tcp = tokio::net::TcpStream::from_std(tcp)?;
                let plain = tokio::net::UnixStream::from_std(theirs)?;
                let tls = acceptor.accept(tcp).await?;
                io::Result::Ok((tls, plain))
            };
            let (tls, plain) = match tokio::time::timeout(left, setup).await {
                Ok(Ok(streams)) => streams,
                Ok(Err(e)) => {
                    let _ = result_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = result_tx.send(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )));
                    return;
                }
            };
            let cn = common_name(tls.get_ref().1.peer_certificates());
            if result_tx.send(Ok(cn)).is_ok() {
                pump(tls, plain, done_rx, linger).await;
            }
        });
        let common_name = result_rx
            .recv()
            .map_err(|_| io::Error::other("the NBD TLS runtime stopped"))??;
        Ok(Upgraded {
            stream: ours,
            common_name,
            guard: PumpGuard { _done: done_tx },
        })
    }
}

/// Moves bytes both ways until the server's side is done. The client
/// closing (or failing) closes the plain end's write side, so the
/// connection's thread sees EOF; the server's side closing ends the TLS
/// session (close_notify) and the pump.
async fn pump(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    plain: tokio::net::UnixStream,
    done: tokio::sync::oneshot::Receiver<()>,
    linger: Duration,
) {
    const BUFFER: usize = 256 * 1024;
    let (tls_r, mut tls_w) = tokio::io::split(tls);
    let (plain_r, mut plain_w) = plain.into_split();
    let up = async {
        let mut from_client = AsyncBufReader::with_capacity(BUFFER, tls_r);
        if let Err(e) = tokio::io::copy_buf(&mut from_client, &mut plain_w).await {
            debug!(error = %e, "NBD TLS client side ended");
        }
        let _ = plain_w.shutdown().await;
        std::future::pending::<()>().await
    };
    let down = async {
        let mut from_server = AsyncBufReader::with_capacity(BUFFER, plain_r);
        let _ = tokio::io::copy_buf(&mut from_server, &mut tls_w).await;
        let _ = tls_w.shutdown().await;
    };
    tokio::pin!(down);
    tokio::select! {
        () = &mut down => {}
        () = up => {}
        _ = done => {
            let _ = tokio::time::timeout(linger, &mut down).await;
        }
    }
}

/// A blocking TLS client stream shared by a reader and a writer half (the
/// client does one request at a time, so they never wait on each other).
#[derive(Clone)]
pub(super) struct ClientStream(
    Arc<Mutex<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
);

impl ClientStream {
    /// Runs the TLS handshake on `tcp` (after the server acknowledged
    /// `NBD_OPT_STARTTLS`).
    pub(super) fn connect(tls: &ClientTls, mut tcp: TcpStream) -> io::Result<ClientStream> {
        let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(ClientStream(Arc::new(Mutex::new(
            rustls::StreamOwned::new(conn, tcp),
        ))))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lock().read(buf)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}
