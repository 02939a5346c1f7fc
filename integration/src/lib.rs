//! Test harness for end-to-end tests: builds the `cairn` binary, starts a
//! private nats-server per test on a free loopback port, runs `cairn up` as a
//! child process (optionally with extra `up` arguments such as `--fuse DIR`
//! and environment variables such as `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! drives it with the CLI, a raw NATS client and real NBD clients (qemu-io),
//! and kills it with SIGKILL when asked.
//!
//! Every server a test starts is stopped when its guard drops.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use cairn_actors::nats_server::NatsServer;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ sits in the workspace")
        .to_owned()
}

/// Path of the `cairn` binary, built once per test process.
pub fn cairn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "cairn-ops", "--bin", "cairn"])
            .current_dir(workspace())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building cairn failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        target.join("debug").join("cairn")
    })
    .clone()
}

/// Whether an external tool is installed; tests that need it say so and skip
/// only when `CAIRN_REQUIRE_TOOLS` is unset (CI sets it, so CI never skips).
pub fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
            "{name} is required but not installed"
        );
        eprintln!("skipping: {name} is not installed");
    }
    found
}

/// Starts a private nats-server for one test.
pub fn nats() -> NatsServer {
    let binary = cairn_actors::nats_server::find_binary()
        .expect("nats-server is installed (the test command installs it)");
    NatsServer::start(&binary, None).expect("nats-server starts")
}

/// A `cairn up` child process.
pub struct Node {
    pub data_dir: PathBuf,
    pub nats_url: String,
    pub nbd_socket: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn start(data_dir: &Path, nats_url: &str) -> Node {
        Node::start_with(data_dir, nats_url, &[])
    }

    /// Like [`Node::start`], with extra `cairn up` arguments, e.g.
    /// `["--fuse", DIR]`.
    pub fn start_with(data_dir: &Path, nats_url: &str, up_args: &[&OsStr]) -> Node {
        Node::start_env(data_dir, nats_url, up_args, &[])
    }

    /// Like [`Node::start_with`], with environment variables set for the
    /// `cairn up` child only (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`); the CLI
    /// children and the test process keep their own environment.
    pub fn start_env(
        data_dir: &Path,
        nats_url: &str,
        up_args: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Node {
        let nbd_socket = data_dir.join("nbd.sock");
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("cairn-up.log"))
            .unwrap();
        let child = Command::new(cairn_bin())
            .args(["--nats", nats_url, "up", "--data-dir"])
            .arg(data_dir)
            .arg("--nbd")
            .arg(format!("unix:{}", nbd_socket.display()))
            .args(up_args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cairn up starts");
        let mut node = Node {
            data_dir: data_dir.to_owned(),
            nats_url: nats_url.to_owned(),
            nbd_socket,
            child: Some(child),
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.cli(&["request", "system.ping"]).status.success() && self.nbd_socket.exists() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cairn up exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "cairn up not ready within 60 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("cairn-up.log")).unwrap_or_default()
    }

    /// Runs `cairn --nats URL ARGS…`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(cairn_bin())
            .arg("--nats")
            .arg(&self.nats_url)
            .args(args)
            .output()
            .expect("cairn runs")
    }

    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The NBD URI qemu understands for an export.
    pub fn nbd_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_socket.display())
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs qemu-io with one command against an NBD URI. Snapshot exports
/// (`v@s`) are opened read-only (`-r`), as qemu requires for them.
pub fn qemu_io(uri: &str, command: &str) -> Output {
    let mut cmd = Command::new("qemu-io");
    if uri.contains('@') {
        cmd.arg("-r");
    }
    cmd.args(["-f", "raw", "-c", command, uri])
        .output()
        .expect("qemu-io runs")
}

/// Whether a qemu-io pattern read succeeded and verified.
pub fn verified(out: &Output) -> bool {
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("read ") && !stdout.contains("verification failed")
}

/// A minimal NATS client written against the text protocol: proof that any
/// NATS client, not only Cairn's own, can drive the API.
pub struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_sid: u32,
}

impl RawNats {
    pub fn connect(url: &str) -> RawNats {
        let addr = url.trim_start_matches("nats://");
        let stream = TcpStream::connect(addr).expect("connect to nats");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "expected INFO, got {info:?}");
        let mut writer = stream;
        writer.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\n").unwrap();
        RawNats {
            reader,
            writer,
            next_sid: 1,
        }
    }

    /// Publishes `payload` with optional headers and returns the reply body.
    pub fn request(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.raw.{sid}");
        let mut out = format!("SUB {inbox} {sid}\r\nUNSUB {sid} 1\r\n").into_bytes();
        if headers.is_empty() {
            out.extend(format!("PUB {subject} {inbox} {}\r\n", payload.len()).bytes());
        } else {
            let mut h = String::from("NATS/1.0\r\n");
            for (k, v) in headers {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
            h.push_str("\r\n");
            out.extend(
                format!(
                    "HPUB {subject} {inbox} {} {}\r\n",
                    h.len(),
                    h.len() + payload.len()
                )
                .bytes(),
            );
            out.extend(h.bytes());
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out).unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.first().copied() {
                Some("PING") => self.writer.write_all(b"PONG\r\n").unwrap(),
                Some("MSG") => {
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    return self.read_body(len, 0);
                }
                Some("HMSG") => {
                    let total: usize = parts.last().unwrap().parse().unwrap();
                    let header_len: usize = parts[parts.len() - 2].parse().unwrap();
                    return self.read_body(total, header_len);
                }
                Some("-ERR") => panic!("nats error: {line}"),
                _ => {}
            }
        }
    }

    fn read_body(&mut self, total: usize, skip: usize) -> Vec<u8> {
        let mut body = vec![0u8; total + 2];
        self.reader.read_exact(&mut body).unwrap();
        body.truncate(total);
        body.split_off(skip)
    }

    /// Sends a request and parses the JSON reply.
    pub fn json(&mut self, subject: &str, payload: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&self.request(subject, &[], payload)).expect("replies are JSON")
    }
}
