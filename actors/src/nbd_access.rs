//! Who reaches which volume over NBD: the operator's [`NbdSecurity`]
//! turned into the block engine's NBD [`Access`], and the tenant mapping
//! behind its admission hook.
//!
//! # Identities
//! - **The unix socket** (mode 0660, group `--nbd-socket-group`) is the
//!   local operator: it sees and opens every export under its engine name
//!   (`v` for the default tenant's volume, `acme:v` for acme's).
//! - **A TLS client certificate** whose subject common name is a tenant
//!   (`acme`) acts for that tenant: it sees and opens only the tenant's
//!   exports, under their tenant-local names (`v1`, `v1@s1`; the server maps
//!   them to `acme:v1`). `default` is the default tenant. A common name that
//!   is not a valid tenant name sees nothing.
//! - **Unauthenticated TCP** (no TLS, or TLS without a client CA) exists
//!   only when the operator said `--nbd-insecure-tcp`; such a client is the
//!   operator, and start-up says so.
//!
//! # Invariants
//! - TCP without TLS is refused at start-up unless `--nbd-insecure-tcp`; so
//!   is TLS without `--nbd-tls-client-ca` (nothing would authenticate a
//!   client).
//! - A tenant-local name never contains `:`, so no tenant names another's
//!   engine volume; refused and unknown names look the same to the client
//!   (the NBD server gives both one reply).

use std::sync::Arc;

use cairn_blocks::nbd::{self, Access, Admission, Identity, ListenAddr};

use crate::security::NbdSecurity;
use crate::volume::engine_name;

/// Maps NBD identities to tenants (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantAdmission;

/// Whose exports an identity works with.
#[derive(Debug, PartialEq, Eq)]
enum Principal<'a> {
    Operator,
    Tenant(&'a str),
    Nobody,
}

fn principal(identity: &Identity) -> Principal<'_> {
    match identity {
        Identity::Local { .. } | Identity::Tcp { .. } | Identity::Stream => Principal::Operator,
        Identity::Tls {
            common_name: None, ..
        } => Principal::Operator,
        Identity::Tls {
            common_name: Some(cn),
            ..
        } => {
            if cairn_schema::names::check_label("tenant", cn).is_ok() {
                Principal::Tenant(cn)
            } else {
                Principal::Nobody
            }
        }
    }
}

/// The tenant-local name of engine export `name`, if it is `tenant`'s.
fn local_name<'n>(tenant: &str, name: &'n str) -> Option<&'n str> {
    if tenant == cairn_schema::subject::DEFAULT_TENANT {
        return (!name.contains(':')).then_some(name);
    }
    name.strip_prefix(tenant)?
        .strip_prefix(':')
        .filter(|rest| !rest.contains(':'))
}

impl Admission for TenantAdmission {
    fn resolve(&self, identity: &Identity, requested: &str) -> Option<String> {
        match principal(identity) {
            Principal::Operator => Some(requested.to_owned()),
            Principal::Nobody => None,
            Principal::Tenant(_) if requested.is_empty() || requested.contains(':') => None,
            Principal::Tenant(tenant) => Some(engine_name(tenant, requested)),
        }
    }

    fn visible(&self, identity: &Identity, names: Vec<String>) -> Vec<String> {
        match principal(identity) {
            Principal::Operator => names,
            Principal::Nobody => Vec::new(),
            Principal::Tenant(tenant) => names
                .iter()
                .filter_map(|name| local_name(tenant, name).map(str::to_owned))
                .collect(),
        }
    }
}

/// Builds the NBD server's access rules for `addr` from the operator's
/// settings, or says why they are unsafe or unusable.
pub fn access(settings: &NbdSecurity, addr: &ListenAddr) -> Result<Access, String> {
    let mut access = Access {
        admission: Arc::new(TenantAdmission),
        ..Access::default()
    };
    let tls_files = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--nbd-tls-cert and --nbd-tls-key go together".into()),
    };
    if tls_files.is_none() && settings.tls_client_ca.is_some() {
        return Err("--nbd-tls-client-ca needs --nbd-tls-cert and --nbd-tls-key".into());
    }
    match addr {
        ListenAddr::Unix(_) => {
            if tls_files.is_some() {
                tracing::warn!("NBD serves a unix socket: the --nbd-tls-* files are not used");
            }
            if let Some(group) = &settings.socket_group {
                let gid = nbd::group_id(group)
                    .map_err(|e| format!("--nbd-socket-group {group:?}: {e}"))?;
                access.socket_group = Some(gid);
            }
        }
        ListenAddr::Tcp(_) => {
            if settings.socket_group.is_some() {
                tracing::warn!("NBD serves TCP: --nbd-socket-group is not used");
            }
            match tls_files {
                None if !settings.insecure_tcp => {
                    return Err(format!(
                        "NBD over TCP ({addr}) needs TLS: give --nbd-tls-cert, --nbd-tls-key and --nbd-tls-client-ca, or --nbd-insecure-tcp to serve every TCP client as the operator"
                    ));
                }
                None => tracing::warn!(
                    %addr,
                    "NBD over TCP without TLS (--nbd-insecure-tcp): every client that reaches this address reads and writes every volume"
                ),
                Some((cert, key)) => {
                    let ca = settings.tls_client_ca.as_deref();
                    if ca.is_none() && !settings.insecure_tcp {
                        return Err("NBD TLS without --nbd-tls-client-ca authenticates no client: give a client CA (a client certificate's common name is its tenant), or --nbd-insecure-tcp to serve every TLS client as the operator".into());
                    }
                    if ca.is_none() {
                        tracing::warn!(
                            %addr,
                            "NBD TLS without client certificates (--nbd-insecure-tcp): every TLS client reads and writes every volume"
                        );
                    }
                    access.tls = Some(
                        nbd::tls::server_config_from_files(cert, key, ca)
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
        }
    }
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn cert(cn: &str) -> Identity {
        Identity::Tls {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            common_name: Some(cn.to_owned()),
        }
    }

    fn engine_names() -> Vec<String> {
        [
            "v1",
            "v1@s1",
            "app/data-db-0",
            "acme:v1",
            "acme:v1@s1",
            "acme:app/pvc",
            "evil:x",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_tenant_sees_and_opens_only_its_own_exports_under_local_names() {
        let a = TenantAdmission;
        assert_eq!(
            a.visible(&cert("acme"), engine_names()),
            ["v1", "v1@s1", "app/pvc"]
        );
        assert_eq!(
            a.resolve(&cert("acme"), "v1@s1").as_deref(),
            Some("acme:v1@s1")
        );
        assert_eq!(a.resolve(&cert("acme"), "evil:x"), None);
        assert_eq!(a.resolve(&cert("acme"), ""), None);
        assert_eq!(a.visible(&cert("evil"), engine_names()), ["x"]);
        // `default` is the default tenant: engine names without a tenant.
        assert_eq!(
            a.visible(&cert("default"), engine_names()),
            ["v1", "v1@s1", "app/data-db-0"]
        );
        assert_eq!(a.resolve(&cert("default"), "v1").as_deref(), Some("v1"));
        assert_eq!(a.resolve(&cert("default"), "acme:v1"), None);
        // Not a tenant name: nothing.
        for cn in ["_cluster", "Acme", "a:b", ""] {
            assert!(a.visible(&cert(cn), engine_names()).is_empty(), "{cn}");
            assert_eq!(a.resolve(&cert(cn), "v1"), None, "{cn}");
        }
    }

    #[test]
    fn the_unix_socket_is_the_operator() {
        let local = Identity::Local {
            uid: Some(0),
            gid: Some(0),
        };
        assert_eq!(
            TenantAdmission.visible(&local, engine_names()),
            engine_names()
        );
        assert_eq!(
            TenantAdmission.resolve(&local, "acme:v1").as_deref(),
            Some("acme:v1")
        );
    }

    #[test]
    fn tcp_without_tls_or_client_ca_is_refused_unless_insecure() {
        let tcp: ListenAddr = "127.0.0.1:10809".parse().unwrap();
        let err = access(&NbdSecurity::default(), &tcp).unwrap_err();
        assert!(err.contains("--nbd-insecure-tcp"), "{err}");
        let insecure = NbdSecurity {
            insecure_tcp: true,
            ..NbdSecurity::default()
        };
        assert!(access(&insecure, &tcp).unwrap().tls.is_none());
        let no_ca = NbdSecurity {
            tls_cert: Some("/nonexistent/cert.pem".into()),
            tls_key: Some("/nonexistent/key.pem".into()),
            ..NbdSecurity::default()
        };
        let err = access(&no_ca, &tcp).unwrap_err();
        assert!(err.contains("--nbd-tls-client-ca"), "{err}");
        let ca_alone = NbdSecurity {
            tls_client_ca: Some("/nonexistent/ca.pem".into()),
            ..NbdSecurity::default()
        };
        assert!(access(&ca_alone, &tcp).is_err());
        // The unix socket needs none of it.
        let unix = ListenAddr::Unix("/tmp/x.sock".into());
        let a = access(&NbdSecurity::default(), &unix).unwrap();
        assert_eq!(a.socket_mode, 0o660);
        let bad_group = NbdSecurity {
            socket_group: Some("no-such-group-for-cairn".into()),
            ..NbdSecurity::default()
        };
        assert!(access(&bad_group, &unix).is_err());
    }
}
