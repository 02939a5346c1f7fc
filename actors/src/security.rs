//! The operator's security settings, in one place: who may run hooks and
//! which, where a tenant's file repositories and key files may live, which
//! S3 endpoints a tenant may reach, how NBD clients are admitted, and the
//! per-tenant bounds on work in flight.
//!
//! # Principals
//! - **The operator** (admin): runs `cairn up` / `cairn control`, sets these
//!   settings as plain flags, and sends cluster commands (`node.*`, tenant
//!   credentials) on the admin subject space `cairn.v1._admin.<kind>.<verb>`,
//!   which no tenant's NATS permissions reach.
//! - **Tenants**: confined by NATS permissions to `cairn.v1.<tenant>.>`;
//!   Cairn enforces the rest (this file's settings).
//! - **Cairn's own processes**: the gateway and the sagas it runs.
//!
//! # Who is the operator
//! [`Mode::Open`]: the NATS server asks for no authentication, so every
//! client could publish anything anyway; every request is taken as the
//! operator's and start-up says so. [`Mode::Authenticated`]: the server
//! requires authentication (its INFO says `auth_required`), so the subject's
//! tenant is a proven boundary and the tenant rules apply. The nats-server
//! that `cairn up` spawns always requires authentication.
//!
//! Everything here is plain data, validated once by [`Security::sanitize`]
//! and shared read-only through `Services`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Whether the subject's tenant is proven by NATS authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No authentication on the bus (or the in-process bus): a single-user
    /// deployment, every request is the operator's.
    #[default]
    Open,
    /// The bus authenticates its users: tenants are confined.
    Authenticated,
}

/// Hooks a tenant may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookGrant {
    /// Any argv (`--hooks TENANT`).
    Any,
    /// Only argvs that start with one of these prefixes (`--hooks-config`).
    Prefixes(Vec<Vec<String>>),
}

/// Bounds on one tenant's concurrent work, so one tenant cannot stall the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCaps {
    /// Requests of one tenant the gateway works on at once.
    pub requests_in_flight: usize,
    /// Workflows of one tenant running at once.
    pub sagas_running: usize,
    /// Hooks of one tenant running at once.
    pub hooks_running: usize,
}

impl Default for TenantCaps {
    fn default() -> TenantCaps {
        TenantCaps {
            requests_in_flight: 64,
            sagas_running: 256,
            hooks_running: 4,
        }
    }
}

/// How NBD clients are admitted.
#[derive(Debug, Clone, Default)]
pub struct NbdSecurity {
    /// Group owning the unix socket (mode 0660); `None`: the process's group.
    pub socket_group: Option<String>,
    /// Server certificate and key (PEM) for NBD over TCP (TLS required).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; a client certificate's
    /// common name is the tenant it acts for.
    pub tls_client_ca: Option<PathBuf>,
    /// Serve TCP without TLS (or TLS without a client CA) anyway, every
    /// client as the operator (loopback benchmarks); said at start-up.
    pub insecure_tcp: bool,
    /// Timeouts and connection bounds of the NBD server (handshake and
    /// idle timeouts, connections per peer), clamped by its `sanitize`.
    pub limits: cairn_blocks::nbd::Limits,
}

/// The operator's settings.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Set at start-up from the bus (see [`Mode`]).
    pub mode: Mode,
    /// Reply subjects must start with this (`_INBOX.` by default).
    pub inbox_prefix: String,
    /// Tenants allowed to run hooks, and which (absent: hooks are off).
    pub hooks: BTreeMap<String, HookGrant>,
    /// Run hooks as this unprivileged user (`--hooks-user`).
    pub hooks_user: Option<String>,
    /// Extra roots for a tenant's file repositories and key files
    /// (`--repo-root TENANT=DIR`), beyond `<data>/repos/<tenant>` and
    /// `<data>/repo-keys/<tenant>`.
    pub repo_roots: BTreeMap<String, Vec<PathBuf>>,
    /// S3 URL prefixes (`s3://bucket/prefix?endpoint=…`, compared on the
    /// endpoint and bucket) any tenant may use with its own credentials
    /// (`--s3-allow URL_PREFIX`).
    pub s3_allow: Vec<String>,
    /// S3 URL prefixes a tenant may use with the server's own credentials
    /// (`--s3-grant TENANT=URL_PREFIX`).
    pub s3_server_credentials: BTreeMap<String, Vec<String>>,
    pub nbd: NbdSecurity,
    pub caps: TenantCaps,
}

/// What the repository library reads of the operator's settings.
impl cairn_repo::Policy for Security {
    fn confined(&self) -> bool {
        Security::confined(self)
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

/// The default reply-subject prefix: what NATS clients use for inboxes.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX.";

impl Security {
    /// Clamps and fills what was left unset.
    pub fn sanitize(mut self) -> Security {
        if self.inbox_prefix.is_empty() || self.inbox_prefix.starts_with("cairn.") {
            self.inbox_prefix = DEFAULT_INBOX_PREFIX.to_owned();
        }
        self.caps.requests_in_flight = self.caps.requests_in_flight.clamp(1, 1 << 14);
        self.caps.sagas_running = self.caps.sagas_running.clamp(1, 1 << 14);
        self.caps.hooks_running = self.caps.hooks_running.clamp(1, 256);
        self
    }

    /// Whether the tenant rules apply (the bus proves the tenant).
    pub fn confined(&self) -> bool {
        self.mode == Mode::Authenticated
    }

    /// The hooks `tenant` may run, if any.
    pub fn hook_grant(&self, tenant: &str) -> Option<&HookGrant> {
        self.hooks.get(tenant)
    }
}

/// Splits `TENANT=VALUE` (the form of `--repo-root` and `--s3-grant`).
pub fn split_grant(text: &str) -> Result<(String, String), String> {
    let (tenant, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not TENANT=VALUE"))?;
    cairn_schema::names::check_label("tenant", tenant).map_err(|e| e.message)?;
    if value.is_empty() {
        return Err(format!("{text:?} has an empty value"));
    }
    Ok((tenant.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_split_and_check_the_tenant() {
        assert_eq!(
            split_grant("acme=/srv/backups").unwrap(),
            ("acme".to_owned(), "/srv/backups".to_owned())
        );
        assert!(split_grant("acme").is_err());
        assert!(split_grant("acme=").is_err());
        assert!(split_grant("Bad Tenant=/x").is_err());
    }

    #[test]
    fn sanitize_refuses_a_cairn_inbox() {
        let s = Security {
            inbox_prefix: "cairn.v1.acme.".into(),
            ..Security::default()
        }
        .sanitize();
        assert_eq!(s.inbox_prefix, DEFAULT_INBOX_PREFIX);
        assert!(!s.confined());
    }
}
