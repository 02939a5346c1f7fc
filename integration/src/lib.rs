//! Test harness for end-to-end tests: builds the `cairn` binary, starts a
//! private nats-server per test on a free loopback port, runs `cairn up` as a
//! child process (optionally with extra `up` arguments such as `--fuse DIR`
//! and environment variables such as `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! drives it with the CLI, a raw NATS client and real NBD clients (qemu-io),
//! and kills it with SIGKILL when asked. [`NatsProcess`] runs a nats-server
//! from a config file the test writes (auth, TLS, payload limits) on a port
//! it keeps, so a test can kill it and start it again on the same port;
//! [`NatsCluster`] joins three of them by routes.
//!
//! Every server a test starts is stopped when its guard drops.

use std::ffi::{OsStr, OsString};
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

/// Path of the `cairn` binary, built once per test process, with the
/// `failpoints` feature (tests arm `CAIRN_FAILPOINTS`; a default build,
/// like every release binary, has none).
pub fn cairn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "cairn-ops",
                "--bin",
                "cairn",
                "--features",
                "failpoints",
            ])
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
    /// Global NATS options (auth, TLS) given to `cairn up` and every CLI call.
    pub nats_args: Vec<OsString>,
    pub nbd_socket: PathBuf,
    /// `--nbd` when it is not the unix socket `nbd_socket` (a TCP address).
    pub nbd_tcp: Option<std::net::SocketAddr>,
    child: Option<Child>,
}

impl Node {
    pub fn start(data_dir: &Path, nats_url: &str) -> Node {
        Node::start_with(data_dir, nats_url, &[])
    }

    /// Like [`Node::start`], with extra `cairn up` arguments, e.g.
    /// `["--fuse", DIR]`.
    pub fn start_with(data_dir: &Path, nats_url: &str, up_args: &[&OsStr]) -> Node {
        Node::start_full(data_dir, nats_url, &[], up_args, &[])
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
        Node::start_full(data_dir, nats_url, &[], up_args, env)
    }

    /// Like [`Node::start_with`], with global NATS options, e.g.
    /// `["--nats-user", U, "--nats-password", P]`, given to `cairn up` and
    /// to every [`Node::cli`] call.
    pub fn start_opts(
        data_dir: &Path,
        nats_url: &str,
        nats_args: &[&OsStr],
        up_args: &[&OsStr],
    ) -> Node {
        Node::start_full(data_dir, nats_url, nats_args, up_args, &[])
    }

    /// Every option at once: NATS options, `up` arguments, environment.
    pub fn start_full(
        data_dir: &Path,
        nats_url: &str,
        nats_args: &[&OsStr],
        up_args: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Node {
        Node::start_nbd(data_dir, nats_url, nats_args, None, up_args, env)
    }

    /// Like [`Node::start_full`], serving NBD on TCP address `nbd_tcp`
    /// (when given) instead of the unix socket; `up_args` then carry its TLS
    /// (or `--nbd-insecure-tcp`) flags.
    pub fn start_nbd(
        data_dir: &Path,
        nats_url: &str,
        nats_args: &[&OsStr],
        nbd_tcp: Option<std::net::SocketAddr>,
        up_args: &[&OsStr],
        env: &[(&str, &str)],
    ) -> Node {
        let nbd_socket = data_dir.join("nbd.sock");
        let nbd = match nbd_tcp {
            Some(addr) => addr.to_string(),
            None => format!("unix:{}", nbd_socket.display()),
        };
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("cairn-up.log"))
            .unwrap();
        let child = Command::new(cairn_bin())
            .args(["--nats", nats_url])
            .args(nats_args)
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .arg("--nbd")
            .arg(nbd)
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
            nats_args: nats_args.iter().map(|a| a.to_os_string()).collect(),
            nbd_socket,
            nbd_tcp,
            child: Some(child),
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let nbd_ready = match self.nbd_tcp {
                Some(addr) => TcpStream::connect(addr).is_ok(),
                None => self.nbd_socket.exists(),
            };
            if self.cli(&["request", "system.ping"]).status.success() && nbd_ready {
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
            .args(&self.nats_args)
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

    /// Runs `cairn -o json ARGS…` and parses stdout, panicking with stderr
    /// on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("-o json prints JSON")
    }

    /// Runs a command that must fail (the test fails otherwise); returns
    /// its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "cairn {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
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

/// Runs `cairn ARGS…` with nothing added (no `--nats`): for tests of the
/// options themselves, e.g. wrong credentials. Fails the test if it has not
/// exited within 120 s (a hang is a bug too), killing it.
pub fn cairn<I: AsRef<OsStr>>(args: impl IntoIterator<Item = I>) -> Output {
    let mut child = Command::new(cairn_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn runs");
    // Drain both pipes on threads so a chatty child cannot block on them.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cairn did not exit within 120 s; stderr:\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Deterministic, incompressible bytes: a different stream per seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
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
        self.request_many(subject, headers, payload, 1).remove(0)
    }

    /// Publishes the same request `n` times back to back (each with its own
    /// inbox) before reading any reply; returns the replies in send order.
    pub fn request_many(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        n: usize,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let sid = self.next_sid;
            self.next_sid += 1;
            let inbox = format!("_INBOX.raw.{sid}");
            out.extend(format!("SUB {inbox} {sid}\r\nUNSUB {sid} 1\r\n").bytes());
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
            inboxes.push(inbox);
        }
        self.writer.write_all(&out).unwrap();
        let mut replies: Vec<Option<Vec<u8>>> = vec![None; n];
        while replies.iter().any(Option::is_none) {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (inbox, body) = match parts.first().copied() {
                Some("PING") => {
                    self.writer.write_all(b"PONG\r\n").unwrap();
                    continue;
                }
                Some("MSG") => {
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    (parts[1].to_owned(), self.read_body(len, 0))
                }
                Some("HMSG") => {
                    let total: usize = parts.last().unwrap().parse().unwrap();
                    let header_len: usize = parts[parts.len() - 2].parse().unwrap();
                    (parts[1].to_owned(), self.read_body(total, header_len))
                }
                Some("-ERR") => panic!("nats error: {line}"),
                _ => continue,
            };
            let i = inboxes
                .iter()
                .position(|b| *b == inbox)
                .unwrap_or_else(|| panic!("a reply on an unknown inbox {inbox}"));
            replies[i] = Some(body);
        }
        replies.into_iter().map(Option::unwrap).collect()
    }

    fn read_body(&mut self, total: usize, skip: usize) -> Vec<u8> {
        let mut body = vec![0u8; total + 2];
        self.reader.read_exact(&mut body).unwrap();
        body.truncate(total);
        body.split_off(skip)
    }

    /// Publishes without a reply subject: nobody can answer it.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out).unwrap();
    }

    /// Sends a request and parses the JSON reply.
    pub fn json(&mut self, subject: &str, payload: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&self.request(subject, &[], payload)).expect("replies are JSON")
    }
}

/// A nats-server run from a config file the test writes (authorization, TLS,
/// `max_payload`…), listening on a loopback port it keeps across
/// [`NatsProcess::restart`]. Killed when dropped.
pub struct NatsProcess {
    pub port: u16,
    dir: PathBuf,
    config: String,
    n_starts: u32,
    child: Option<Child>,
}

impl NatsProcess {
    /// Starts nats-server on a free port with `config` (nats-server config
    /// syntax; `listen` is added here) written into `dir`.
    pub fn start(dir: &Path, config: &str) -> NatsProcess {
        let port = cairn_actors::nats_server::free_port().expect("a free port");
        let mut nats = NatsProcess {
            port,
            dir: dir.to_owned(),
            config: config.to_owned(),
            n_starts: 0,
            child: None,
        };
        nats.start_again();
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (after [`NatsProcess::kill`]) on the same
    /// port and config.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let binary = cairn_actors::nats_server::find_binary()
            .expect("nats-server is installed (the test command installs it)");
        self.n_starts += 1;
        let conf = self.dir.join("nats-server.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{}\n{}\n", self.port, self.config),
        )
        .unwrap();
        let log_path = self.dir.join(format!("nats-server-{}.log", self.n_starts));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "nats-server exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// `kill -9` the server: every client connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new one on the same port and config.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nats-servers joined by routes on loopback (a NATS cluster), each
/// a [`NatsProcess`] with its own dir, client port, route port and
/// monitoring port. Killing one leaves the other two serving; clients given
/// [`NatsCluster::urls`] reconnect to a survivor.
pub struct NatsCluster {
    pub servers: Vec<NatsProcess>,
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts `n` servers under `dir` and waits until every one has routes
    /// to all the others (so interest anywhere reaches everywhere).
    pub fn start(dir: &Path, n: usize) -> NatsCluster {
        let port = || cairn_actors::nats_server::free_port().expect("a free port");
        let route_ports: Vec<u16> = (0..n).map(|_| port()).collect();
        let monitor_ports: Vec<u16> = (0..n).map(|_| port()).collect();
        let servers = (0..n)
            .map(|i| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                let config = format!(
                    "server_name: n{i}\nhttp: 127.0.0.1:{}\ncluster {{\n  name: cairn-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    monitor_ports[i],
                    route_ports[i],
                    routes.join(", ")
                );
                let server_dir = dir.join(format!("nats-{i}"));
                std::fs::create_dir_all(&server_dir).unwrap();
                NatsProcess::start(&server_dir, &config)
            })
            .collect();
        let cluster = NatsCluster {
            servers,
            monitor_ports,
        };
        cluster.wait_routed();
        cluster
    }

    /// Every server's client URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsProcess::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits (bounded) until each running server reports a route to every
    /// other running server (`/routez` of its monitoring port).
    pub fn wait_routed(&self) {
        let running: Vec<usize> = (0..self.servers.len())
            .filter(|i| self.servers[*i].child.is_some())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        for &i in &running {
            loop {
                let routes = http_get_json(self.monitor_ports[i], "/routez")
                    .and_then(|v| v["num_routes"].as_u64())
                    .unwrap_or(0);
                if routes as usize >= running.len() - 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nats-server n{i} has {routes} routes, not {}, after 30 s",
                    running.len() - 1
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// GET `path` from a loopback HTTP port and parse the body as JSON
/// (`None` when the server does not answer or the body is not JSON).
fn http_get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

pub const S3_ACCESS: &str = "cairn-test";
pub const S3_SECRET: &str = "cairn-test-secret";
pub const S3_BUCKET: &str = "backups";
/// A private s3s-fs (S3-compatible server, from crates.io) on a loopback
/// port of its own, serving `root`; killed when dropped.
pub struct S3sFs {
    pub root: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl S3sFs {
    pub fn start(root: &Path) -> S3sFs {
        std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
        let port = cairn_actors::nats_server::free_port().unwrap();
        let mut server = S3sFs {
            root: root.to_owned(),
            port,
            child: None,
        };
        server.start_again();
        server
    }

    pub fn start_again(&mut self) {
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS, "--secret-key", S3_SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs listens on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!(
            "s3://{S3_BUCKET}/cairn?endpoint=http://127.0.0.1:{}&access_key={S3_ACCESS}&secret_key={S3_SECRET}&max_attempts=2",
            self.port
        )
    }

    /// Where s3s-fs keeps an object's bytes.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(S3_BUCKET).join("cairn").join(key)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.kill();
    }
}
