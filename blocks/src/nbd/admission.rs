//! Who an NBD client is, and which exports it may see and open: the
//! server's generic admission hook.
//!
//! The block engine knows nothing of tenants. The server only learns a
//! connection's [`Identity`] (the unix socket's peer credentials, the TCP
//! peer, or the verified TLS client certificate's subject common name) and
//! asks an [`Admission`] supplied by its owner two questions: which export a
//! requested name opens for this identity, and which names this identity
//! sees in `NBD_OPT_LIST`.
//!
//! # Invariants
//! * A name the admission refuses and a name no export has get the same
//!   reply (`NBD_REP_ERR_UNKNOWN` with the same message shape), so a client
//!   cannot tell "exists but not yours" from "does not exist".
//! * The identity is fixed before any export is named: over TCP with TLS,
//!   only after the TLS handshake (every earlier option is refused).

use std::net::IpAddr;

/// Who is on the other end of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A peer on the unix socket, with its credentials (`SO_PEERCRED`) when
    /// the kernel gave them. Reaching the socket at all takes the file's
    /// permissions (mode 0660 and its group).
    Local { uid: Option<u32>, gid: Option<u32> },
    /// A TCP peer without TLS (only on a server the operator started with
    /// TLS off).
    Tcp { addr: IpAddr },
    /// A TCP peer after `NBD_OPT_STARTTLS`. `common_name` is the subject
    /// common name of its client certificate, verified against the server's
    /// client CA; `None` when the server asks for no client certificate.
    Tls {
        addr: IpAddr,
        common_name: Option<String>,
    },
    /// A stream handed to [`super::serve_stream`] (fuzzing, inetd-style use).
    Stream,
}

/// Maps identities to exports. Implemented by the server's owner (the
/// runtime maps a certificate's common name to a tenant); must be cheap, it
/// runs on a connection's thread during negotiation.
pub trait Admission: Send + Sync + 'static {
    /// The export name to open (as [`super::Exports::open_export`] knows
    /// it) when `identity` asks for `requested`; `None` when it may not
    /// (the client is told the export does not exist).
    fn resolve(&self, identity: &Identity, requested: &str) -> Option<String>;

    /// The names `identity` sees in `NBD_OPT_LIST`, given every export's
    /// name; each must resolve back to the same export.
    fn visible(&self, identity: &Identity, names: Vec<String>) -> Vec<String>;
}

/// Every client sees and opens every export under its own name: what a
/// server without an owner's policy does (tests, fuzzing, a private socket).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAdmission;

impl Admission for OpenAdmission {
    fn resolve(&self, _identity: &Identity, requested: &str) -> Option<String> {
        Some(requested.to_owned())
    }

    fn visible(&self, _identity: &Identity, names: Vec<String>) -> Vec<String> {
        names
    }
}
