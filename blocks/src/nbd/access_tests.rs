//! Tests of who gets in and for how long: STARTTLS in FORCEDTLS mode, the
//! client certificate as the identity the admission hook sees, the unix
//! socket's mode and group, the handshake and idle timeouts and the
//! per-peer connection limit (with shrunk limits). Each pins a hole of the
//! server before it had access control ("300 idle sockets locked real
//! clients out", "NBD_OPT_LIST lists every tenant's exports").

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::tests::{DISK_SIZE, MemDevice, MemExports, assert_closed};
use super::*;
use crate::Device;

// ---------------------------------------------------------------------------
// Certificates and the admission of the tests
// ---------------------------------------------------------------------------

/// A CA, a server certificate for `localhost`/`127.0.0.1`, and client
/// certificates it signs on demand.
struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    server: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nbd test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let issuer = rcgen::Issuer::new(params, key);
        let server = issue(
            &issuer,
            "server",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        Pki {
            issuer,
            ca_pem,
            server,
        }
    }

    /// A client certificate whose subject common name is `cn`: (cert, key).
    fn client(&self, cn: &str) -> (String, String) {
        issue(
            &self.issuer,
            cn,
            &[],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn server_config(&self, client_ca: bool) -> Arc<rustls::ServerConfig> {
        let ca = client_ca.then_some(self.ca_pem.as_bytes());
        tls::server_config(self.server.0.as_bytes(), self.server.1.as_bytes(), ca).unwrap()
    }

    fn client_tls(&self, cert: Option<&(String, String)>) -> ClientTls {
        let client = cert.map(|(c, k)| (c.as_bytes(), k.as_bytes()));
        ClientTls {
            config: tls::client_config(self.ca_pem.as_bytes(), client).unwrap(),
            server_name: ServerName::try_from("localhost").unwrap(),
        }
    }
}

fn issue(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: &str,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A TLS client whose certificate's common name is `c` sees and opens only
/// exports named `c:NAME`, as `NAME`; everyone else sees everything. The
/// identities it was asked about are kept for the test to inspect.
#[derive(Default)]
struct Prefixed {
    seen: Mutex<Vec<Identity>>,
}

impl Prefixed {
    fn prefix(&self, identity: &Identity) -> Option<Option<String>> {
        self.seen.lock().unwrap().push(identity.clone());
        match identity {
            Identity::Tls { common_name, .. } => {
                Some(common_name.as_ref().map(|cn| format!("{cn}:")))
            }
            _ => None,
        }
    }
}

impl Admission for Prefixed {
    fn resolve(&self, identity: &Identity, requested: &str) -> Option<String> {
        match self.prefix(identity) {
            None => Some(requested.to_owned()),
            Some(None) => None,
            Some(Some(_)) if requested.contains(':') => None,
            Some(Some(prefix)) => Some(format!("{prefix}{requested}")),
        }
    }

    fn visible(&self, identity: &Identity, names: Vec<String>) -> Vec<String> {
        match self.prefix(identity) {
            None => names,
            Some(None) => Vec::new(),
            Some(Some(prefix)) => names
                .iter()
                .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
                .collect(),
        }
    }
}

fn mem_exports(names: &[&str]) -> Arc<MemExports> {
    let mut map: BTreeMap<String, Arc<dyn Device>> = BTreeMap::new();
    for name in names {
        map.insert(
            (*name).to_owned(),
            Arc::new(MemDevice {
                name: (*name).to_owned(),
                data: Mutex::new(vec![0u8; DISK_SIZE]),
                read_only: name.contains('@'),
            }),
        );
    }
    Arc::new(MemExports(map))
}

fn tls_server(
    pki: &Pki,
    client_ca: bool,
    exports: Arc<MemExports>,
    admission: Arc<dyn Admission>,
    limits: Limits,
) -> NbdServerHandle {
    let access = Access {
        admission,
        tls: Some(pki.server_config(client_ca)),
        ..Access::default()
    };
    serve_with(&"127.0.0.1:0".parse().unwrap(), exports, limits, access).unwrap()
}

// ---------------------------------------------------------------------------
// Raw protocol helpers over any stream
// ---------------------------------------------------------------------------

fn tcp_addr(addr: &ListenAddr) -> SocketAddr {
    match addr {
        ListenAddr::Tcp(a) => *a,
        ListenAddr::Unix(_) => panic!("tcp only"),
    }
}

/// Connects, reads the greeting and sends the client flags.
fn greeted(addr: &ListenAddr) -> TcpStream {
    let mut s = TcpStream::connect(tcp_addr(addr)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    s
}

fn send_raw_option(s: &mut impl Write, option: u32, data: &[u8]) {
    s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&option.to_be_bytes()).unwrap();
    s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
    s.write_all(data).unwrap();
    s.flush().unwrap();
}

/// One option reply: (option, reply type, data).
fn read_raw_reply(s: &mut impl Read) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[..8], &NBD_OPT_REPLY_MAGIC.to_be_bytes());
    let word = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap());
    let mut data = vec![0u8; word(16) as usize];
    s.read_exact(&mut data).unwrap();
    (word(8), word(12), data)
}

fn go_data(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    data
}

/// A TCP connection from source address `src` (any of 127/8 on Linux).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    let SocketAddr::V4(dst) = dst else {
        panic!("ipv4 only")
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket; the addresses are valid sockaddr_in of `len`
    // bytes; the fd is owned by the TcpStream from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        let from = sockaddr(SocketAddrV4::new(src, 0));
        let rc = libc::bind(fd, (&raw const from).cast(), len);
        assert_eq!(rc, 0, "bind {src}: {}", io::Error::last_os_error());
        let to = sockaddr(dst);
        let rc = libc::connect(fd, (&raw const to).cast(), len);
        assert_eq!(rc, 0, "connect {dst}: {}", io::Error::last_os_error());
        s
    }
}

/// Whether the server closes `s` (EOF or reset) before anything else
/// arrives, waiting at most 20 s.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

// ---------------------------------------------------------------------------
// STARTTLS and identities
// ---------------------------------------------------------------------------

#[test]
fn tls_server_refuses_every_option_before_starttls() {
    let pki = Pki::new();
    let exports = mem_exports(&["disk"]);
    let server = tls_server(
        &pki,
        true,
        exports,
        Arc::new(OpenAdmission),
        Limits::default(),
    );
    let addr = server.local_addr();

    // Before STARTTLS: LIST, GO and INFO are TLS_REQD, also oversized ones;
    // STARTTLS with data is INVALID; ABORT is acknowledged.
    let mut s = greeted(&addr);
    for option in [NBD_OPT_LIST, NBD_OPT_STRUCTURED_REPLY] {
        send_raw_option(&mut s, option, &[]);
        assert_eq!(read_raw_reply(&mut s).1, NBD_REP_ERR_TLS_REQD);
    }
    for option in [NBD_OPT_GO, NBD_OPT_INFO] {
        send_raw_option(&mut s, option, &go_data("disk"));
        assert_eq!(read_raw_reply(&mut s).1, NBD_REP_ERR_TLS_REQD);
    }
    send_raw_option(&mut s, NBD_OPT_GO, &vec![0u8; 100_000]);
    assert_eq!(read_raw_reply(&mut s).1, NBD_REP_ERR_TLS_REQD);
    send_raw_option(&mut s, NBD_OPT_STARTTLS, b"x");
    assert_eq!(read_raw_reply(&mut s).1, NBD_REP_ERR_INVALID);
    send_raw_option(&mut s, NBD_OPT_ABORT, &[]);
    assert_eq!(read_raw_reply(&mut s), (NBD_OPT_ABORT, NBD_REP_ACK, vec![]));
    assert_closed(&mut s);

    // EXPORT_NAME cannot be refused: the connection is closed.
    let mut s = greeted(&addr);
    send_raw_option(&mut s, NBD_OPT_EXPORT_NAME, b"disk");
    assert_closed(&mut s);

    // The plain client is told TLS is required.
    let err = list_exports(&addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(NbdClient::connect(&addr, "disk").is_err());

    // After STARTTLS, a second one is INVALID and options work.
    let mut s = greeted(&addr);
    send_raw_option(&mut s, NBD_OPT_STARTTLS, &[]);
    assert_eq!(
        read_raw_reply(&mut s),
        (NBD_OPT_STARTTLS, NBD_REP_ACK, vec![])
    );
    let cert = pki.client("acme");
    let mut tls = tls::ClientStream::connect(&pki.client_tls(Some(&cert)), s).unwrap();
    send_raw_option(&mut tls, NBD_OPT_STARTTLS, &[]);
    assert_eq!(read_raw_reply(&mut tls).1, NBD_REP_ERR_INVALID);
    send_raw_option(&mut tls, NBD_OPT_LIST, &[]);
    assert_eq!(read_raw_reply(&mut tls).1, NBD_REP_SERVER);
    assert_eq!(read_raw_reply(&mut tls).1, NBD_REP_ACK);
}

#[test]
fn a_client_certificate_sees_and_opens_only_its_own_exports() {
    let pki = Pki::new();
    let exports = mem_exports(&["disk", "acme:disk", "acme:disk@snap", "evil:other"]);
    let admission = Arc::new(Prefixed::default());
    let server = tls_server(
        &pki,
        true,
        exports.clone(),
        admission.clone(),
        Limits::default(),
    );
    let addr = server.local_addr();
    let (acme, evil) = (pki.client("acme"), pki.client("evil"));
    let (acme, evil) = (pki.client_tls(Some(&acme)), pki.client_tls(Some(&evil)));

    assert_eq!(
        list_exports_with(&addr, Some(&acme)).unwrap(),
        ["disk", "disk@snap"]
    );
    assert_eq!(list_exports_with(&addr, Some(&evil)).unwrap(), ["other"]);
    assert!(admission.seen.lock().unwrap().iter().any(|i| matches!(
        i,
        Identity::Tls { addr, common_name: Some(cn) } if addr.is_loopback() && cn == "acme"
    )));

    // acme's "disk" is the engine's "acme:disk".
    let mut c = NbdClient::connect_with(&addr, "disk", Some(&acme)).unwrap();
    c.write(4096, &[0x5a; 8192], true).unwrap();
    let mut back = [0u8; 8192];
    c.read(4096, &mut back).unwrap();
    assert_eq!(back, [0x5a; 8192]);
    c.disconnect().unwrap();
    let mut engine = [0u8; 8192];
    exports.0["acme:disk"].read_at(&mut engine, 4096).unwrap();
    assert_eq!(engine, [0x5a; 8192]);
    exports.0["disk"].read_at(&mut engine, 4096).unwrap();
    assert_eq!(engine, [0; 8192]);

    // evil cannot open acme's export, by its name or the engine's, and
    // cannot tell it from one that does not exist.
    let refusal = |name: &str| {
        let err = NbdClient::connect_with(&addr, name, Some(&evil))
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        err.to_string().replace(name, "NAME")
    };
    let unknown = refusal("nope");
    assert_eq!(refusal("disk"), unknown);
    assert_eq!(refusal("acme:disk"), unknown);
    assert_eq!(refusal("disk@snap"), unknown);
    NbdClient::connect_with(&addr, "other", Some(&evil))
        .unwrap()
        .disconnect()
        .unwrap();

    // Without a certificate, or with one from another CA, nothing opens.
    assert!(NbdClient::connect_with(&addr, "disk", Some(&pki.client_tls(None))).is_err());
    let stranger = Pki::new();
    let forged = stranger.client("acme");
    let forged = ClientTls {
        config: tls::client_config(
            pki.ca_pem.as_bytes(),
            Some((forged.0.as_bytes(), forged.1.as_bytes())),
        )
        .unwrap(),
        server_name: ServerName::try_from("localhost").unwrap(),
    };
    assert!(NbdClient::connect_with(&addr, "disk", Some(&forged)).is_err());
    assert!(list_exports_with(&addr, Some(&forged)).is_err());
}

#[test]
fn tls_without_client_ca_has_no_common_name() {
    let pki = Pki::new();
    let admission = Arc::new(Prefixed::default());
    let server = tls_server(
        &pki,
        false,
        mem_exports(&["disk", "acme:disk"]),
        admission.clone(),
        Limits::default(),
    );
    let addr = server.local_addr();
    // The Prefixed admission gives an anonymous TLS client nothing.
    assert!(
        list_exports_with(&addr, Some(&pki.client_tls(None)))
            .unwrap()
            .is_empty()
    );
    assert!(admission.seen.lock().unwrap().iter().any(|i| matches!(
        i,
        Identity::Tls {
            common_name: None,
            ..
        }
    )));
}

#[test]
fn unix_socket_has_mode_0660_its_group_and_peer_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    // SAFETY: getegid and getuid cannot fail.
    let (gid, uid) = unsafe { (libc::getegid(), libc::getuid()) };
    let admission = Arc::new(Prefixed::default());
    let access = Access {
        admission: admission.clone(),
        socket_group: Some(gid),
        ..Access::default()
    };
    let addr = ListenAddr::Unix(path.clone());
    let server = serve_with(&addr, mem_exports(&["disk"]), Limits::default(), access).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid);
    // Nothing is left behind next to it.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    // The unix peer is local, with our uid, and sees everything.
    assert_eq!(list_exports(&addr).unwrap(), ["disk"]);
    assert!(admission.seen.lock().unwrap().contains(&Identity::Local {
        uid: Some(uid),
        gid: Some(gid)
    }));
    drop(server);
    assert!(!path.exists());
    assert!(group_id("0").is_ok_and(|g| g == 0));
    assert!(group_id("no-such-group-for-cairn").is_err());
}

// ---------------------------------------------------------------------------
// Timeouts and the per-peer limit
// ---------------------------------------------------------------------------

fn short(limits: Limits) -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..limits
    }
}

#[test]
fn silent_clients_are_closed_after_the_handshake_timeout() {
    let server = serve(
        &"127.0.0.1:0".parse().unwrap(),
        mem_exports(&["disk"]),
        short(Limits::default()),
    )
    .unwrap();
    let addr = server.local_addr();
    // Says nothing after the greeting.
    let mut silent = greeted(&addr);
    assert!(closed_by_server(&mut silent));
    // Trickles an option one byte at a time, each within the timeout.
    let mut trickle = greeted(&addr);
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&NBD_OPT_LIST.to_be_bytes());
    option.extend_from_slice(&1000u32.to_be_bytes());
    let mut closed = false;
    for byte in option.iter().chain(&[0u8; 1000]) {
        if trickle.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(closed || closed_by_server(&mut trickle));
    // Over TLS too: STARTTLS acknowledged, then no TLS handshake.
    let pki = Pki::new();
    let server = tls_server(
        &pki,
        true,
        mem_exports(&["disk"]),
        Arc::new(OpenAdmission),
        short(Limits::default()),
    );
    let mut s = greeted(&server.local_addr());
    send_raw_option(&mut s, NBD_OPT_STARTTLS, &[]);
    assert_eq!(read_raw_reply(&mut s).1, NBD_REP_ACK);
    assert!(closed_by_server(&mut s));
    // And the server still serves.
    let cert = pki.client("acme");
    NbdClient::connect_with(
        &server.local_addr(),
        "disk",
        Some(&pki.client_tls(Some(&cert))),
    )
    .unwrap()
    .disconnect()
    .unwrap();
}

/// A device whose reads wait until the test opens the gate.
struct Gated {
    inner: MemDevice,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Device for Gated {
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
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
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
        Ok(())
    }
}

#[test]
fn idle_connections_are_closed_but_busy_ones_are_not() {
    let gated = Arc::new(Gated {
        inner: MemDevice {
            name: "slow".into(),
            data: Mutex::new(vec![7u8; 1 << 20]),
            read_only: false,
        },
        open: Mutex::new(false),
        opened: Condvar::new(),
    });
    let mut map: BTreeMap<String, Arc<dyn Device>> = BTreeMap::new();
    map.insert("slow".into(), gated.clone());
    map.insert("disk".into(), mem_exports(&["disk"]).0["disk"].clone());
    let server = serve(
        &"127.0.0.1:0".parse().unwrap(),
        Arc::new(MemExports(map)),
        short(Limits::default()),
    )
    .unwrap();
    let addr = server.local_addr();

    // A client that stops sending is closed.
    let mut idle = NbdClient::connect(&addr, "disk").unwrap();
    idle.write(0, &[1; 512], false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.active_connections() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(idle.flush().is_err(), "the idle connection still serves");

    // A request that runs longer than the idle timeout keeps its connection.
    let mut busy = NbdClient::connect(&addr, "slow").unwrap();
    let opener = {
        let gated = gated.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(1000));
            *gated.open.lock().unwrap() = true;
            gated.opened.notify_all();
        })
    };
    let mut buf = [0u8; 4096];
    busy.read(0, &mut buf).unwrap();
    assert_eq!(buf, [7; 4096]);
    opener.join().unwrap();
    busy.read(4096, &mut buf).unwrap();
    busy.disconnect().unwrap();
}

#[test]
fn idle_sockets_of_one_peer_do_not_lock_out_another() {
    let server = serve(
        &"127.0.0.1:0".parse().unwrap(),
        mem_exports(&["disk"]),
        Limits {
            max_connections: 8,
            max_connections_per_peer: 2,
            handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    )
    .unwrap();
    let addr = server.local_addr();
    let dst = tcp_addr(&addr);
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    // Two idle sockets hold the attacker's share; the rest are closed at once.
    let mut held: Vec<TcpStream> = (0..2).map(|_| greeted_from(attacker, dst)).collect();
    for _ in 0..10 {
        let mut extra = connect_from(attacker, dst);
        assert!(closed_by_server(&mut extra));
    }
    // Another peer gets in while the attacker still holds its sockets.
    let mut c = NbdClient::connect(&addr, "disk").unwrap();
    c.write(0, b"still here", true).unwrap();
    c.disconnect().unwrap();
    // When the attacker lets one go, it may connect again.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = connect_from(attacker, dst);
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut hello = [0u8; 18];
        if s.read_exact(&mut hello).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker's slot never came back"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn greeted_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    let mut s = connect_from(src, dst);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s
}

#[test]
fn limits_sanitize_keeps_bounds_in_range() {
    let limits = Limits {
        max_connections: 0,
        max_connections_per_peer: 1000,
        handshake_timeout: Duration::ZERO,
        idle_timeout: Duration::from_secs(u64::MAX / 4),
        ..Limits::default()
    }
    .sanitize();
    assert_eq!(limits.max_connections, 1);
    assert_eq!(limits.max_connections_per_peer, 1);
    assert_eq!(limits.handshake_timeout, Limits::MIN_TIMEOUT);
    assert_eq!(limits.idle_timeout, Limits::MAX_IDLE_TIMEOUT);
}
