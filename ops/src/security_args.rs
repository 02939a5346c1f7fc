//! The operator's security flags of `cairn up` (and later `cairn control`),
//! turned into [`cairn_actors::security::Security`]. Thin: it parses and
//! checks shapes; the actors enforce.

use std::path::PathBuf;

use anyhow::Context;
use cairn_actors::security::{HookGrant, NbdSecurity, Security, split_grant};
use clap::Args;

#[derive(Debug, Args, Default)]
pub struct SecurityArgs {
    /// Let TENANT's App documents run hooks (any argv); repeat per tenant.
    /// Without this (or --hooks-config), hooks are off for everyone.
    #[arg(long = "hooks", value_name = "TENANT")]
    pub hooks: Vec<String>,
    /// Hooks per tenant with argv allowlists: YAML `tenants: {acme:
    /// [[/usr/bin/psql], [sh, -c]]}`; a hook runs only when its argv starts
    /// with one of its tenant's prefixes.
    #[arg(long, value_name = "FILE")]
    pub hooks_config: Option<PathBuf>,
    /// Run hooks as this unprivileged user (name or uid; not root), with its
    /// primary group and no supplementary groups. Resolved at start-up.
    /// Without it, a cairn running as root warns that hooks would run as root.
    #[arg(long, value_name = "USER")]
    pub hooks_user: Option<String>,
    /// Grant TENANT a directory for file repositories and key files, beyond
    /// DATA_DIR/repos/TENANT and DATA_DIR/repo-keys/TENANT; repeatable.
    #[arg(long = "repo-root", value_name = "TENANT=DIR")]
    pub repo_roots: Vec<String>,
    /// An S3 URL prefix (`s3://bucket[/prefix]?endpoint=URL`) any tenant may
    /// use with its own credentials; repeatable. Without one, no s3:// repo.
    #[arg(long = "s3-allow", value_name = "URL_PREFIX")]
    pub s3_allow: Vec<String>,
    /// Let TENANT use the server's own S3 credentials for repos under
    /// URL_PREFIX; repeatable.
    #[arg(long = "s3-grant", value_name = "TENANT=URL_PREFIX")]
    pub s3_grants: Vec<String>,
    /// Group of the NBD unix socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub nbd_socket_group: Option<String>,
    /// Server certificate (PEM) for NBD over TCP, which requires TLS.
    #[arg(long, value_name = "FILE", requires = "nbd_tls_key")]
    pub nbd_tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "nbd_tls_cert")]
    pub nbd_tls_key: Option<PathBuf>,
    /// CA (PEM) of client certificates; a client certificate's common name
    /// is the tenant whose exports it sees.
    #[arg(long, value_name = "FILE")]
    pub nbd_tls_client_ca: Option<PathBuf>,
    /// Serve NBD over TCP without TLS, or with TLS but no client CA, every
    /// client as the operator (loopback benchmarks only).
    #[arg(long)]
    pub nbd_insecure_tcp: bool,
    /// An NBD client must finish negotiation (TLS included) within this.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub nbd_handshake_timeout_ms: u64,
    /// An NBD connection with no request in flight for this long is closed.
    #[arg(long, value_name = "MS", default_value_t = 600_000)]
    pub nbd_idle_timeout_ms: u64,
    /// NBD connections served at once from one IP address.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub nbd_max_connections_per_peer: usize,
    /// Requests of one tenant worked on at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub tenant_requests: usize,
    /// Workflows of one tenant running at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub tenant_sagas: usize,
    /// Hooks of one tenant running at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub tenant_hooks: usize,
    /// Replies go only to subjects that start with this (clients' inboxes);
    /// a request asking for any other reply subject, or one under `cairn.`,
    /// is not run. Clients of the `cairn` CLI then need `--inbox-prefix`.
    #[arg(long, value_name = "PREFIX", default_value = cairn_actors::security::DEFAULT_INBOX_PREFIX)]
    pub reply_prefix: String,
}

/// A `--reply-prefix`: plain subject tokens ending in a dot, never under
/// `cairn.` (the API's own subjects).
fn check_reply_prefix(prefix: &str) -> anyhow::Result<()> {
    let tokens = prefix.strip_suffix('.').unwrap_or(prefix);
    anyhow::ensure!(
        !tokens.is_empty()
            && tokens.len() < 128
            && tokens.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }),
        "--reply-prefix {prefix:?}: subject tokens of letters, digits, '_' and '-', separated by dots (such as _INBOX.)"
    );
    anyhow::ensure!(
        tokens != "cairn" && !tokens.starts_with("cairn."),
        "--reply-prefix {prefix:?}: replies may not go under cairn. (the API's own subjects)"
    );
    Ok(())
}

/// The `--hooks-config` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksConfig {
    tenants: std::collections::BTreeMap<String, Vec<Vec<String>>>,
}

/// An S3 prefix of `--s3-allow`/`--s3-grant`: an `s3://` URL without
/// credentials (it is compared on endpoint, bucket and key prefix).
fn check_s3_prefix(text: &str) -> anyhow::Result<()> {
    match cairn_actors::repo::RepoUrl::parse(text)? {
        cairn_actors::repo::RepoUrl::S3(location) => {
            anyhow::ensure!(
                location.access_key.is_none(),
                "an allowed prefix carries no credentials"
            );
            Ok(())
        }
        cairn_actors::repo::RepoUrl::File { .. } => {
            anyhow::bail!("not an s3:// URL (file repositories are granted with --repo-root)")
        }
    }
}

impl SecurityArgs {
    pub fn to_security(&self) -> anyhow::Result<Security> {
        let mut security = Security::default();
        for tenant in &self.hooks {
            cairn_schema::names::check_label("tenant", tenant)
                .map_err(|e| anyhow::anyhow!("--hooks {tenant:?}: {}", e.message))?;
            security.hooks.insert(tenant.clone(), HookGrant::Any);
        }
        if let Some(file) = &self.hooks_config {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--hooks-config {}", file.display()))?;
            let config: HooksConfig = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("--hooks-config {}", file.display()))?;
            for (tenant, prefixes) in config.tenants {
                cairn_schema::names::check_label("tenant", &tenant).map_err(|e| {
                    anyhow::anyhow!("--hooks-config {}: {}", file.display(), e.message)
                })?;
                if prefixes.iter().any(Vec::is_empty) {
                    anyhow::bail!(
                        "--hooks-config {}: tenant {tenant} has an empty argv prefix (use --hooks {tenant} to allow any)",
                        file.display()
                    );
                }
                match security.hooks.get_mut(&tenant) {
                    Some(HookGrant::Any) => {}
                    Some(HookGrant::Prefixes(list)) => list.extend(prefixes),
                    None => {
                        security.hooks.insert(tenant, HookGrant::Prefixes(prefixes));
                    }
                }
            }
        }
        security.hooks_user = self.hooks_user.clone();
        for grant in &self.repo_roots {
            let (tenant, dir) =
                split_grant(grant).map_err(|e| anyhow::anyhow!("--repo-root {e}"))?;
            let dir = std::path::absolute(&dir).with_context(|| format!("--repo-root {grant}"))?;
            security.repo_roots.entry(tenant).or_default().push(dir);
        }
        for prefix in &self.s3_allow {
            check_s3_prefix(prefix).with_context(|| format!("--s3-allow {prefix}"))?;
        }
        security.s3_allow = self.s3_allow.clone();
        for grant in &self.s3_grants {
            let (tenant, prefix) =
                split_grant(grant).map_err(|e| anyhow::anyhow!("--s3-grant {e}"))?;
            check_s3_prefix(&prefix).with_context(|| format!("--s3-grant {grant}"))?;
            security
                .s3_server_credentials
                .entry(tenant)
                .or_default()
                .push(prefix);
        }
        security.nbd = NbdSecurity {
            socket_group: self.nbd_socket_group.clone(),
            tls_cert: self.nbd_tls_cert.clone(),
            tls_key: self.nbd_tls_key.clone(),
            tls_client_ca: self.nbd_tls_client_ca.clone(),
            insecure_tcp: self.nbd_insecure_tcp,
            limits: cairn_blocks::nbd::Limits {
                handshake_timeout: std::time::Duration::from_millis(self.nbd_handshake_timeout_ms),
                idle_timeout: std::time::Duration::from_millis(self.nbd_idle_timeout_ms),
                max_connections_per_peer: self.nbd_max_connections_per_peer,
                ..cairn_blocks::nbd::Limits::default()
            },
        };
        security.caps.requests_in_flight = self.tenant_requests;
        security.caps.sagas_running = self.tenant_sagas;
        security.caps.hooks_running = self.tenant_hooks;
        check_reply_prefix(&self.reply_prefix)?;
        security.inbox_prefix = if self.reply_prefix.ends_with('.') {
            self.reply_prefix.clone()
        } else {
            format!("{}.", self.reply_prefix)
        };
        Ok(security)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_prefix(prefix: &str) -> anyhow::Result<Security> {
        SecurityArgs {
            reply_prefix: prefix.to_owned(),
            ..SecurityArgs::default()
        }
        .to_security()
    }

    #[test]
    fn reply_prefixes_are_plain_tokens_outside_cairn() {
        assert_eq!(with_prefix("_INBOX.").unwrap().inbox_prefix, "_INBOX.");
        assert_eq!(with_prefix("_R.acme").unwrap().inbox_prefix, "_R.acme.");
        for bad in [
            "",
            ".",
            "cairn.",
            "cairn.v1.acme.",
            "_INBOX.*",
            "a..b",
            "a b.",
        ] {
            let e = with_prefix(bad).unwrap_err().to_string();
            assert!(e.contains("--reply-prefix"), "{bad:?}: {e}");
        }
    }
}
