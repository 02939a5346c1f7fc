//! Credentials of the nats-server that `cairn up` spawns, so the embedded
//! default is not "any local user is every tenant".
//!
//! # State (in `<data>/nats/`, mode 0700)
//! - `users.json` (0600): the generated passwords of the principals: `cairn`
//!   (this process: everything), `admin` (the operator: everything, the
//!   admin subject space included) and one user per tenant, added on demand
//!   with `cairn tenant add NAME`; plus the port the server listens on.
//! - `nats-server.conf` (0600): rendered from `users.json` at every start
//!   and every `tenant add` (then the server is told to reload with SIGHUP,
//!   through the pid file `nats-server.pid`).
//!
//! A tenant's user may publish only `cairn.v1.<tenant>.<kind>.<verb>` (5
//! tokens: requests, not events) and subscribe only to its own inboxes
//! (`_INBOX.<tenant>.>`) and its own events. The CLI reads `users.json`
//! when it can (the operator, on this host) and picks the tenant's user, else
//! the admin.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The process's own NATS user.
pub const SERVER_USER: &str = "cairn";
/// The operator's NATS user.
pub const ADMIN_USER: &str = "admin";
/// Largest `users.json` read.
const MAX_USERS_BYTES: u64 = 1 << 20;

/// The generated principals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Users {
    pub port: u16,
    pub server_password: String,
    pub admin_password: String,
    /// Tenant → password.
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
}

/// The `<data>/nats` directory.
#[derive(Debug, Clone)]
pub struct AuthDir {
    dir: PathBuf,
}

/// A fresh password: 24 random bytes, hex.
fn new_password() -> String {
    let mut raw = [0u8; 24];
    crate::repo::random_bytes(&mut raw);
    hex::encode(raw)
}

/// Writes a file readable by its owner alone, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A JSON string literal (the config file's quoting: a password is hex, a
/// tenant a DNS label, so this only guards against surprises).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

impl Users {
    /// The nats-server configuration for these users.
    pub fn config(&self) -> String {
        let mut users = vec![
            format!(
                "    {{ user: {}, password: {} }}",
                quoted(SERVER_USER),
                quoted(&self.server_password)
            ),
            format!(
                "    {{ user: {}, password: {} }}",
                quoted(ADMIN_USER),
                quoted(&self.admin_password)
            ),
        ];
        for (tenant, password) in &self.tenants {
            users.push(format!(
                "    {{ user: {}, password: {}, permissions: {{ publish: [{}], subscribe: [{}, {}] }} }}",
                quoted(tenant),
                quoted(password),
                quoted(&format!("cairn.v1.{tenant}.*.*")),
                quoted(&format!("_INBOX.{tenant}.>")),
                quoted(&format!("cairn.v1.{tenant}.evt.>")),
            ));
        }
        format!(
            "# Written by cairn from users.json; edits are overwritten.\nlisten: \"127.0.0.1:{}\"\nauthorization {{\n  users = [\n{}\n  ]\n}}\n",
            self.port,
            users.join("\n")
        )
    }

    /// The user and password a client acting for `tenant` should use: the
    /// tenant's own, else the operator's.
    pub fn for_tenant(&self, tenant: &str) -> (String, String) {
        match self.tenants.get(tenant) {
            Some(password) => (tenant.to_owned(), password.clone()),
            None => (ADMIN_USER.to_owned(), self.admin_password.clone()),
        }
    }
}

impl AuthDir {
    pub fn new(data_dir: &Path) -> AuthDir {
        AuthDir {
            dir: data_dir.join("nats"),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("nats-server.pid")
    }

    fn users_path(&self) -> PathBuf {
        self.dir.join("users.json")
    }

    /// The users, if the file exists and this process may read it.
    pub fn load(&self) -> std::io::Result<Users> {
        let path = self.users_path();
        let file = std::fs::File::open(&path)?;
        let mut text = String::new();
        use std::io::Read as _;
        file.take(MAX_USERS_BYTES).read_to_string(&mut text)?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    }

    /// Loads the users, or makes them, for a server listening on `port`;
    /// writes the configuration.
    pub fn prepare(&self, port: u16) -> std::io::Result<Users> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut users = match self.load() {
            Ok(users) => users,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Users {
                port,
                server_password: new_password(),
                admin_password: new_password(),
                tenants: BTreeMap::new(),
            },
            Err(e) => return Err(e),
        };
        users.port = port;
        self.save(&users)?;
        Ok(users)
    }

    fn save(&self, users: &Users) -> std::io::Result<()> {
        write_private(
            &self.users_path(),
            &serde_json::to_vec_pretty(users).expect("users serialize"),
        )?;
        write_private(&self.config_path(), users.config().as_bytes())
    }

    /// Adds a tenant's user (or keeps the one it has) and tells the running
    /// server to reload. Returns its password.
    pub fn add_tenant(&self, tenant: &str) -> std::io::Result<String> {
        cairn_schema::names::check_label("tenant", tenant)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.message))?;
        // A tenant by one of these names would be a second NATS user of
        // the same name as Cairn's own or the operator's.
        if tenant == SERVER_USER || tenant == ADMIN_USER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tenant name {tenant:?} is reserved for Cairn's own NATS users"),
            ));
        }
        let mut users = self.load()?;
        let password = users
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(new_password)
            .clone();
        self.save(&users)?;
        self.reload()?;
        Ok(password)
    }

    /// SIGHUP to the server named by the pid file: it rereads its
    /// configuration.
    pub fn reload(&self) -> std::io::Result<()> {
        let text = std::fs::read_to_string(self.pid_path())?;
        let pid: i32 = text.trim().parse().map_err(|_| {
            std::io::Error::other(format!("{}: not a pid", self.pid_path().display()))
        })?;
        // SAFETY: a signal to a process whose pid the server wrote itself.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_private_and_tenants_confined() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::new(dir.path());
        let users = auth.prepare(4222).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for path in [auth.users_path(), auth.config_path()] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = std::fs::metadata(&auth.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            auth.prepare(4333).unwrap().admin_password,
            users.admin_password
        );
        assert!(auth.add_tenant("Bad Name").is_err());
        // Cairn's own users are not tenants: nothing is saved for them.
        for reserved in [SERVER_USER, ADMIN_USER] {
            let refused = auth.add_tenant(reserved).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
            assert!(refused.to_string().contains("reserved"), "{refused}");
        }
        assert!(auth.load().unwrap().tenants.is_empty());
        // No server runs: the user is saved, the reload fails.
        assert!(auth.add_tenant("acme").is_err());
        let users = auth.load().unwrap();
        assert!(users.tenants.contains_key("acme"));
        let config = users.config();
        assert!(config.contains("\"cairn.v1.acme.*.*\""), "{config}");
        assert!(config.contains("\"_INBOX.acme.>\""), "{config}");
        assert!(config.contains("127.0.0.1:4333"), "{config}");
        assert_eq!(users.for_tenant("acme").0, "acme");
        assert_eq!(users.for_tenant("other").0, ADMIN_USER);
    }
}
