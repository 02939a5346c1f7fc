//! End-to-end tests of the server and the client: round trips over TCP
//! and unix sockets, limits, malformed input, pipelining, and interop with
//! `qemu-io` and `nbdinfo` when installed.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::*;
use crate::{Device, Error};

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
                    path: format!("rendezvous of {} reads, {} came", self.need, *arrived).into(),
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
