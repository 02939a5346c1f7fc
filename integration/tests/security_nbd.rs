//! NBD access control end to end (issue 13, finding 9: "NBD has no access
//! control: NBD_OPT_LIST lists every tenant's exports; no handshake or idle
//! timeouts; 300 idle sockets locked real clients out").
//!
//! `cairn up` runs against a real nats-server with NBD on a loopback TCP
//! port, TLS on, and a client CA; certificates for the tenants `acme`,
//! `evil` and `default` come from rcgen, written as qemu's
//! `tls-creds-x509` wants them (`ca-cert.pem`, `client-cert.pem`,
//! `client-key.pem` per directory). The clients are the real ones: qemu-io
//! and libnbd's nbdinfo.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cairn_integration::{Node, cairn, have_tool, nats};

/// A CA and the certificates it signs, in qemu's directory layout.
struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    root: PathBuf,
}

impl Pki {
    fn new(root: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cairn NBD test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca_pem,
            root: root.to_owned(),
        }
    }

    /// Writes `DIR/ca-cert.pem`, `DIR/<role>-cert.pem`, `DIR/<role>-key.pem`
    /// for a certificate with common name `cn`; returns DIR.
    fn issue(&self, dir: &str, role: &str, cn: &str, names: &[&str]) -> PathBuf {
        let usage = if role == "server" {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        };
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let dir = self.root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca-cert.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join(format!("{role}-cert.pem")), cert.pem()).unwrap();
        let key_file = dir.join(format!("{role}-key.pem"));
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        dir
    }
}

fn free_port() -> u16 {
    cairn_actors::nats_server::free_port().expect("a free port")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// qemu-io over NBD with TLS, with the client certificate in `creds`.
fn qemu_io_tls(port: u16, creds: &Path, export: &str, command: &str) -> Output {
    Command::new("qemu-io")
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host=127.0.0.1,port={port},export={export},tls-creds=tls0"
        ))
        .args(["-c", command])
        .output()
        .expect("qemu-io runs")
}

fn verified(out: &Output) -> bool {
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("read ") && !stdout.contains("verification failed")
}

/// The export names nbdinfo lists over TLS with the client certificate in
/// `creds`.
fn nbdinfo_list(port: u16, creds: &Path) -> Vec<String> {
    let out = Command::new("nbdinfo")
        .args(["--list", "--json"])
        .arg(format!(
            "nbds://127.0.0.1:{port}/?tls-certificates={}",
            creds.display()
        ))
        .output()
        .expect("nbdinfo runs");
    assert!(out.status.success(), "nbdinfo --list: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = json["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// A TCP connection from source address `src` (any of 127/8 on Linux), so
/// an attacker's sockets come from another peer than the real client's.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> TcpStream {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream at once; the addresses
    // are valid sockaddr_in of `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        let from = sockaddr(SocketAddrV4::new(src, 0));
        assert_eq!(libc::bind(fd, (&raw const from).cast(), len), 0, "bind");
        let to = sockaddr(dst);
        let rc = libc::connect(fd, (&raw const to).cast(), len);
        assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
        s
    }
}

/// Whether the server closes `s` (EOF or reset), reading and discarding
/// its greeting, within 60 s.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

const NBD_REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;

#[test]
fn tls_client_certificates_confine_tenants_to_their_own_exports() {
    if !(have_tool("qemu-io") && have_tool("nbdinfo")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.issue("server", "server", "cairn", &["localhost", "127.0.0.1"]);
    let acme = pki.issue("acme", "client", "acme", &[]);
    let evil = pki.issue("evil", "client", "evil", &[]);
    let default = pki.issue("default", "client", "default", &[]);
    let nats = nats();
    let port = free_port();
    let tcp = SocketAddr::from(([127, 0, 0, 1], port));
    let file = |name: &str| server.join(name).into_os_string();
    let (cert, key, ca) = (
        file("server-cert.pem"),
        file("server-key.pem"),
        file("ca-cert.pem"),
    );
    let up_args: Vec<&OsStr> = vec![
        OsStr::new("--nbd-tls-cert"),
        &cert,
        OsStr::new("--nbd-tls-key"),
        &key,
        OsStr::new("--nbd-tls-client-ca"),
        &ca,
        // Shrunk so the idle-socket part runs quickly.
        OsStr::new("--nbd-handshake-timeout-ms"),
        OsStr::new("3000"),
        OsStr::new("--nbd-max-connections-per-peer"),
        OsStr::new("8"),
    ];
    let node = Node::start_nbd(
        &dir.path().join("data"),
        &nats.url,
        &[],
        Some(tcp),
        &up_args,
        &[],
    );
    node.ok(&[
        "--tenant", "acme", "volume", "create", "v1", "--size", "64Mi",
    ]);
    node.ok(&[
        "--tenant", "acme", "volume", "create", "v2", "--size", "64Mi",
    ]);
    node.ok(&[
        "--tenant", "evil", "volume", "create", "loot", "--size", "64Mi",
    ]);
    node.ok(&["volume", "create", "v1", "--size", "64Mi"]);

    // acme writes its v1 over TLS and reads it back.
    let out = qemu_io_tls(port, &acme, "v1", "write -P 0x5a 0 1M");
    assert!(out.status.success(), "acme write: {}", text(&out));
    node.ok(&["--tenant", "acme", "volume", "snapshot", "v1", "s1"]);
    assert!(verified(&qemu_io_tls(
        port,
        &acme,
        "v1",
        "read -P 0x5a 0 1M"
    )));
    // The default tenant's v1 is another volume: still zeroes.
    let out = qemu_io_tls(port, &default, "v1", "read -P 0 0 1M");
    assert!(verified(&out), "default read: {}", text(&out));

    // Each tenant lists only its own exports, under its own names.
    assert_eq!(nbdinfo_list(port, &acme), ["v1", "v1@s1", "v2"]);
    assert_eq!(nbdinfo_list(port, &evil), ["loot"]);
    assert_eq!(nbdinfo_list(port, &default), ["v1"]);

    // evil cannot open acme's v1, by its name or the engine's, and the
    // refusal reads like one for an export that does not exist.
    let refusal = |export: &str| {
        let out = qemu_io_tls(port, &evil, export, "read 0 512");
        assert!(
            !out.status.success(),
            "evil opened {export}: {}",
            text(&out)
        );
        text(&out).replace(export, "NAME")
    };
    let unknown = refusal("nothing-here");
    assert!(unknown.contains("no export named"), "{unknown}");
    assert_eq!(refusal("v1"), unknown);
    assert_eq!(refusal("acme:v1"), unknown);
    assert_eq!(refusal("v1@s1"), unknown);

    // Plain TCP is refused: a client without TLS gets nothing.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 512"])
        .arg(format!("nbd://127.0.0.1:{port}/v1"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain qemu-io: {}", text(&out));
    let out = Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain nbdinfo: {}", text(&out));
    // On the wire: NBD_OPT_LIST before STARTTLS gets NBD_REP_ERR_TLS_REQD.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(b"IHAVEOPT").unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    let kind = u32::from_be_bytes(reply[12..16].try_into().unwrap());
    assert_eq!(kind, NBD_REP_ERR_TLS_REQD);
    drop(s);

    // 300 idle sockets from another peer: all but its share are closed at
    // once, and a real client still gets in while the attacker holds them.
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut idle: Vec<TcpStream> = (0..300).map(|_| connect_from(attacker, dst)).collect();
    assert!(verified(&qemu_io_tls(
        port,
        &acme,
        "v1",
        "read -P 0x5a 0 1M"
    )));
    // And the server lets go of every one of them (the handshake timeout
    // closes those it accepted).
    for s in &mut idle {
        assert!(closed_by_server(s));
    }
    assert!(verified(&qemu_io_tls(
        port,
        &acme,
        "v1",
        "read -P 0x5a 0 1M"
    )));
    assert!(
        node.log()
            .contains("too many NBD connections from one peer")
    );
}

#[test]
fn nbd_over_tcp_without_tls_is_refused_at_start_up() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = cairn([
        OsStr::new("--nats"),
        OsStr::new(&nats.url),
        OsStr::new("up"),
        OsStr::new("--data-dir"),
        dir.path().as_os_str(),
        OsStr::new("--nbd"),
        OsStr::new(&format!("127.0.0.1:{port}")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs TLS"), "{stderr}");
    assert!(stderr.contains("--nbd-insecure-tcp"), "{stderr}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // With --nbd-insecure-tcp it serves, and says so.
    let tcp = SocketAddr::from(([127, 0, 0, 1], port));
    let node = Node::start_nbd(
        &dir.path().join("insecure"),
        &nats.url,
        &[],
        Some(tcp),
        &[OsStr::new("--nbd-insecure-tcp")],
        &[],
    );
    node.ok(&["volume", "create", "v", "--size", "16Mi"]);
    let out = cairn_integration::qemu_io(&format!("nbd://127.0.0.1:{port}/v"), "write 0 4k");
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.log().contains("without TLS"), "{}", node.log());
}

#[test]
fn the_unix_socket_has_mode_0660_and_the_operators_group() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    // The group by name, as an operator gives it: our own primary group.
    let group = Command::new("id").arg("-gn").output().unwrap();
    let group = String::from_utf8(group.stdout).unwrap().trim().to_owned();
    let node = Node::start_with(
        &dir.path().join("data"),
        &nats.url,
        &[OsStr::new("--nbd-socket-group"), OsStr::new(&group)],
    );
    let meta = std::fs::metadata(&node.nbd_socket).unwrap();
    let mode = meta.permissions().mode();
    assert_eq!(mode & 0o7777, 0o660, "{mode:o}");
    // SAFETY: getegid cannot fail.
    assert_eq!(meta.gid(), unsafe { libc::getegid() });
    node.ok(&["volume", "create", "v", "--size", "16Mi"]);
    if have_tool("qemu-io") {
        let out = cairn_integration::qemu_io(&node.nbd_uri("v"), "write 0 4k");
        assert!(out.status.success(), "{}", text(&out));
    }
}
