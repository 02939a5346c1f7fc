//! [`Access`]: which repository directories, key files and S3 locations a
//! caller may use, and how their files are opened.
//!
//! Who: the operator's settings come in through the [`Policy`] trait (the
//! runtime implements it for its `Security`; [`Grants`] is the plain-data
//! form). In an open deployment ([`Policy::confined`] false) every
//! request is the operator's, so any path and endpoint may be named (only
//! the data dir keeps its inner walls: a tenant's repos and key files stay
//! out of another tenant's `repos/` and `repo-keys/` and out of the
//! engine's files). When the bus authenticates its users, a tenant is
//! confined:
//! - every `file://` directory, key file and passphrase file resolves under
//!   one of the tenant's roots: `<data>/repos/<tenant>`,
//!   `<data>/repo-keys/<tenant>`, and the operator's `--repo-root
//!   TENANT=DIR`s. A path is checked lexically first (absolute, no `..`,
//!   under a root as written), so a path outside is refused without
//!   touching the filesystem; then symbolic links are resolved and the real
//!   path is checked again;
//! - an `s3://` location must lie under an operator's `--s3-allow` prefix
//!   or a `--s3-grant` of this tenant ([`S3Location::is_under`], compared
//!   structurally); the server's own S3 credentials are lent only under a
//!   grant, otherwise the URL must carry the tenant's own.
//!
//! Key and passphrase files, always (operator or tenant): the parent
//! directory is opened and its real path (`/proc/self/fd`) checked against
//! the roots, then the file is opened relative to it with
//! `O_NOFOLLOW | O_NONBLOCK` (a link is refused, a FIFO does not block), it
//! must be a regular file (`fstat` of the open descriptor) of at most
//! [`MAX_KEY_FILE_BYTES`], and errors never say anything about a file
//! outside the caller's roots (not whether it exists, nor its size).
//!
//! Everything here is blocking filesystem work: call it on a blocking
//! thread, never under a lock other requests wait for.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::error::{Error, Result};
use super::key::Key;
use super::store::ObjectStore;
use super::url::{RepoUrl, S3Location};

/// The operator's settings that bound what a tenant's repository requests
/// may reach. This crate reads them; it never decides them.
pub trait Policy {
    /// Whether the tenant rules apply (the bus proves who the tenant is).
    fn confined(&self) -> bool;
    /// Extra roots for `tenant`'s file repositories and key files
    /// (`--repo-root TENANT=DIR`), beyond its own dirs in the data dir.
    fn repo_roots(&self, tenant: &str) -> &[PathBuf];
    /// S3 URL prefixes any tenant may use with its own credentials
    /// (`--s3-allow`).
    fn s3_allow(&self) -> &[String];
    /// S3 URL prefixes `tenant` may use with the server's own credentials
    /// (`--s3-grant TENANT=URL_PREFIX`).
    fn s3_server_credentials(&self, tenant: &str) -> &[String];
}

/// A shared policy (the runtime keeps its settings in an `Arc`).
impl<P: Policy + ?Sized> Policy for Arc<P> {
    fn confined(&self) -> bool {
        (**self).confined()
    }
    fn repo_roots(&self, tenant: &str) -> &[PathBuf] {
        (**self).repo_roots(tenant)
    }
    fn s3_allow(&self) -> &[String] {
        (**self).s3_allow()
    }
    fn s3_server_credentials(&self, tenant: &str) -> &[String] {
        (**self).s3_server_credentials(tenant)
    }
}

/// A [`Policy`] as plain data (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub confined: bool,
    pub repo_roots: BTreeMap<String, Vec<PathBuf>>,
    pub s3_allow: Vec<String>,
    pub s3_server_credentials: BTreeMap<String, Vec<String>>,
}

impl Policy for Grants {
    fn confined(&self) -> bool {
        self.confined
    }
    fn repo_roots(&self, tenant: &str) -> &[PathBuf] {
        self.repo_roots.get(tenant).map_or(&[], Vec::as_slice)
    }
    fn s3_allow(&self) -> &[String] {
        &self.s3_allow
    }
    fn s3_server_credentials(&self, tenant: &str) -> &[String] {
        self.s3_server_credentials
            .get(tenant)
            .map_or(&[], Vec::as_slice)
    }
}

/// The largest key or passphrase file read: a key is 32 bytes or 64 hex
/// digits, a passphrase one line.
pub const MAX_KEY_FILE_BYTES: u64 = 4 << 10;

/// What one caller may reach.
#[derive(Debug, Clone)]
pub struct Access {
    tenant: String,
    data_dir: PathBuf,
    grant: Grant,
}

#[derive(Debug, Clone)]
enum Grant {
    /// A library caller (tests, the operator's own tools): any path.
    Anywhere,
    /// The operator: anywhere but other tenants' parts of the data dir.
    Open,
    /// A tenant proven by the bus.
    Confined {
        roots: Vec<PathBuf>,
        s3_allow: Vec<S3Location>,
        s3_server: Vec<S3Location>,
    },
}

/// Parses the operator's S3 prefixes; a malformed one allows nothing (the
/// flags are checked at start-up, so this only drops what cannot match).
fn s3_prefixes<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<S3Location> {
    texts
        .into_iter()
        .filter_map(|text| match RepoUrl::parse(text) {
            Ok(RepoUrl::S3(location)) => Some(location),
            _ => {
                tracing::warn!(prefix = %text, "not an s3:// prefix; it allows nothing");
                None
            }
        })
        .collect()
}

/// `path` with its longest existing ancestor resolved (links followed), so
/// a comparison of prefixes cannot be fooled by a link.
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = vec![];
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

impl Access {
    /// The access of `tenant`'s requests under the operator's settings.
    pub fn of(policy: &impl Policy, data_dir: &Path, tenant: &str) -> Access {
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        let grant = if policy.confined() {
            let mut roots = own_dirs(&data_dir, tenant).to_vec();
            roots.extend(policy.repo_roots(tenant).iter().cloned());
            Grant::Confined {
                roots,
                s3_allow: s3_prefixes(policy.s3_allow()),
                s3_server: s3_prefixes(policy.s3_server_credentials(tenant)),
            }
        } else {
            Grant::Open
        };
        Access {
            tenant: tenant.to_owned(),
            data_dir,
            grant,
        }
    }

    /// Any path, any endpoint (the safe-open rules still apply).
    pub fn anywhere() -> Access {
        Access {
            tenant: String::new(),
            data_dir: PathBuf::new(),
            grant: Grant::Anywhere,
        }
    }

    /// Whether the tenant rules apply.
    pub fn confined(&self) -> bool {
        matches!(self.grant, Grant::Confined { .. })
    }

    /// Checks a path a request names for a repository directory; returns
    /// it with links resolved (its missing tail kept).
    pub fn check_path(&self, path: &Path, what: &str) -> Result<PathBuf> {
        self.check_with(path, what, resolved)
    }

    /// Checks the path of a file that will be opened without following a
    /// link: only its directory is resolved.
    fn check_file_path(&self, path: &Path, what: &str) -> Result<PathBuf> {
        self.check_with(path, what, |path| match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => resolved(parent).join(name),
            _ => path.to_owned(),
        })
    }

    fn check_with(
        &self,
        path: &Path,
        what: &str,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<PathBuf> {
        let refuse = |why: String| {
            Err(Error::NotPermitted(format!(
                "{what} {}: {why}",
                path.display()
            )))
        };
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "{what} {}: must be an absolute path",
                path.display()
            )));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Error::InvalidArgument(format!(
                "{what} {}: must not contain '..'",
                path.display()
            )));
        }
        match &self.grant {
            Grant::Anywhere => Ok(resolve(path)),
            Grant::Open => {
                let (data, real) = (resolved(&self.data_dir), resolve(path));
                let own = own_dirs(&data, &self.tenant);
                if real.starts_with(&data) && !own.iter().any(|dir| real.starts_with(dir)) {
                    return refuse(format!(
                        "is inside the server's data dir, outside tenant {:?}'s repos/ and repo-keys/",
                        self.tenant
                    ));
                }
                Ok(real)
            }
            Grant::Confined { roots, .. } => {
                // Lexically first: nothing outside is even looked at.
                if !roots.iter().any(|root| path.starts_with(root)) {
                    return refuse(self.outside(roots));
                }
                let real = resolve(path);
                if !roots.iter().any(|root| real.starts_with(resolved(root))) {
                    return refuse(self.outside(roots));
                }
                Ok(real)
            }
        }
    }

    fn outside(&self, roots: &[PathBuf]) -> String {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "outside the directories granted to tenant {:?} ({})",
            self.tenant,
            roots.join(", ")
        )
    }

    /// Whether the real path of an open directory is under the roots.
    fn fd_under_roots(&self, dir: &File) -> bool {
        let Grant::Confined { roots, .. } = &self.grant else {
            return true;
        };
        let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
            return false;
        };
        roots.iter().any(|root| real.starts_with(resolved(root)))
    }

    /// Reads a key or passphrase file under the safe-open rules (see the
    /// module doc): at most [`MAX_KEY_FILE_BYTES`].
    pub fn read_small_file(&self, path: &Path, what: &str) -> Result<Vec<u8>> {
        let real = self.check_file_path(path, what)?;
        let fail = |reason: &str| Error::KeyFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(fail("is not a file"));
        };
        let dir = File::open(parent).map_err(|e| fail(&open_reason(&e)))?;
        if !self.fd_under_roots(&dir) {
            // Swapped for a link since it was checked.
            return Err(Error::NotPermitted(format!(
                "{what} {}: {}",
                path.display(),
                match &self.grant {
                    Grant::Confined { roots, .. } => self.outside(roots),
                    Grant::Open | Grant::Anywhere => String::new(),
                }
            )));
        }
        let name = std::ffi::CString::new(name.as_encoded_bytes())
            .map_err(|_| fail("has a NUL byte in its name"))?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: `dir` is an open descriptor and `name` a C string; the
        // returned descriptor is owned by the new `File`.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(fail(&open_reason(&std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata().map_err(|e| fail(&open_reason(&e)))?;
        if !meta.is_file() {
            return Err(fail("is not a regular file"));
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(fail(&format!(
                "is larger than the {MAX_KEY_FILE_BYTES} bytes a key file may hold"
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(&open_reason(&e)))?;
        if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(fail(&format!(
                "is larger than the {MAX_KEY_FILE_BYTES} bytes a key file may hold"
            )));
        }
        Ok(bytes)
    }

    /// The key a registration names: `kind` is `key-file` or
    /// `passphrase-file` (its first line).
    pub fn key(&self, kind: &str, path: &Path) -> Result<Key> {
        if kind == "passphrase-file" {
            let bytes = self.read_small_file(path, "passphrase file")?;
            let text = String::from_utf8(bytes).map_err(|_| Error::KeyFile {
                path: path.to_owned(),
                reason: "the passphrase is not UTF-8".into(),
            })?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if line.is_empty() {
                return Err(Error::KeyFile {
                    path: path.to_owned(),
                    reason: "has an empty first line".into(),
                });
            }
            Ok(Key::passphrase(line))
        } else {
            let bytes = self.read_small_file(path, "key file")?;
            Key::from_key_bytes(&bytes).map_err(|reason| Error::KeyFile {
                path: path.to_owned(),
                reason,
            })
        }
    }

    /// Checks `url` for this caller and opens its store. A file repo's
    /// directory is created when missing and checked again once it exists
    /// (links resolved), and the store works on its real path.
    pub fn open_store(&self, url: &RepoUrl) -> Result<Arc<dyn ObjectStore>> {
        match url {
            RepoUrl::File { path } => {
                let real = self.check_path(path, "repository directory")?;
                std::fs::create_dir_all(&real).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "repository directory {}: {}",
                        path.display(),
                        open_reason(&e)
                    ))
                })?;
                let real = self.check_path(&real, "repository directory")?;
                Ok(Arc::new(super::FileStore::open(real)?))
            }
            RepoUrl::S3(location) => {
                let server_credentials = self.check_s3(location)?;
                Ok(Arc::new(super::S3Store::with_credentials(
                    location.clone(),
                    server_credentials,
                )?))
            }
        }
    }

    /// Whether `location` is allowed; `Ok(true)` when the server's own
    /// credentials may serve it.
    pub fn check_s3(&self, location: &S3Location) -> Result<bool> {
        match &self.grant {
            Grant::Open | Grant::Anywhere => Ok(true),
            Grant::Confined {
                s3_allow,
                s3_server,
                ..
            } => {
                let granted = s3_server.iter().any(|p| location.is_under(p));
                if granted || s3_allow.iter().any(|p| location.is_under(p)) {
                    Ok(granted)
                } else {
                    Err(Error::NotPermitted(format!(
                        "{} is not under an S3 endpoint and bucket the operator allows (cairn up --s3-allow URL_PREFIX)",
                        RepoUrl::S3(location.clone())
                    )))
                }
            }
        }
    }
}

/// A tenant's own directories in the data dir.
fn own_dirs(data_dir: &Path, tenant: &str) -> [PathBuf; 2] {
    [
        data_dir.join("repos").join(tenant),
        data_dir.join("repo-keys").join(tenant),
    ]
}

/// Why a file could not be opened, in words that name no other file.
fn open_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "not found".into(),
        Some(libc::ELOOP) => "is a symbolic link (not followed)".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        Some(libc::ENOTDIR) => "a part of the path is not a directory".into(),
        Some(libc::EISDIR) => "is a directory".into(),
        _ => "cannot be read".into(),
    }
}
