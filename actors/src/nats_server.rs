//! Spawns a private `nats-server` on a free loopback port, for `cairn up`
//! and `cairn demo` when no `--nats` URL is given. The child dies with us
//! (PR_SET_PDEATHSIG), so `kill -9` of cairn leaves no stray server.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    pub url: String,
    pub port: u16,
}

/// Names the nats-server binary to use instead of searching for one; set
/// but empty, it means "none is installed" (how tests hide an installed one).
pub const BINARY_ENV: &str = "CAIRN_NATS_SERVER";

/// The nats-server binary, if one is installed: `$CAIRN_NATS_SERVER` when
/// set, else the first on `PATH`, `/usr/sbin` or `/usr/local/sbin`.
pub fn find_binary() -> Option<std::path::PathBuf> {
    if let Some(chosen) = std::env::var_os(BINARY_ENV) {
        let chosen = std::path::PathBuf::from(chosen);
        return chosen.is_file().then_some(chosen);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts `binary` on a free port, without authentication (tests and
    /// benchmarks that bring their own), and waits until it accepts
    /// connections.
    pub fn start(binary: &Path, log_file: Option<&Path>) -> std::io::Result<NatsServer> {
        let port = free_port()?;
        let mut command = Command::new(binary);
        command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        NatsServer::spawn(command, port, log_file)
    }

    /// Starts `binary` on a free port with generated credentials in
    /// `<data>/nats` (see [`crate::nats_auth`]): the embedded default of
    /// `cairn up`. Returns the server and the users.
    pub fn start_authenticated(
        binary: &Path,
        data_dir: &Path,
        log_file: Option<&Path>,
    ) -> std::io::Result<(NatsServer, crate::nats_auth::Users)> {
        let port = free_port()?;
        let auth = crate::nats_auth::AuthDir::new(data_dir);
        let users = auth.prepare(port)?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(auth.config_path())
            .arg("-P")
            .arg(auth.pid_path());
        Ok((NatsServer::spawn(command, port, log_file)?, users))
    }

    fn spawn(
        mut command: Command,
        port: u16,
        log_file: Option<&Path>,
    ) -> std::io::Result<NatsServer> {
        command.stdin(Stdio::null());
        match log_file {
            Some(path) => {
                let log = std::fs::File::create(path)?;
                command.stdout(log.try_clone()?).stderr(log);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // SAFETY: prctl is async-signal-safe and touches only this child.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc_prctl_pdeathsig();
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(NatsServer {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                });
            }
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "nats-server exited at start: {status}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(std::io::Error::other(
                    "nats-server did not listen within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn libc_prctl_pdeathsig() {
    // SAFETY: a plain syscall with constant arguments, in the forked child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
