//! NATS subject names and wildcard matching.
//!
//! - Requests: `cairn.v1.<tenant>.<kind>.<verb>`.
//! - The operator's requests (nodes, tenant credentials, cluster events):
//!   `cairn.v1._admin.<kind>.<verb>`. `_admin` is not a valid tenant label,
//!   so no tenant's `cairn.v1.<tenant>.>` permission reaches it.
//! - Events: `cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>`.
//! - Replies go only to inbox subjects (`_INBOX.` by default), never under
//!   `cairn.`.

use crate::ApiError;
use crate::names::check_label;

pub const PREFIX: &str = "cairn.v1";
pub const DEFAULT_TENANT: &str = "default";
/// The tenant of cluster-wide facts (nodes). Not a valid tenant label, so no
/// request subject can name it; every tenant sees its events.
pub const CLUSTER_TENANT: &str = "_cluster";
/// The operator's subject space: the third token of admin requests. Not a
/// valid tenant label.
pub const ADMIN_SPACE: &str = "_admin";
/// What the gateway subscribes to: exactly tenant, kind and verb.
pub const REQUEST_WILDCARD: &str = "cairn.v1.*.*.*";

pub fn request(tenant: &str, kind: &str, verb: &str) -> String {
    format!("{PREFIX}.{tenant}.{kind}.{verb}")
}

/// An operator's request subject: `cairn.v1._admin.<kind>.<verb>`.
pub fn admin_request(kind: &str, verb: &str) -> String {
    format!("{PREFIX}.{ADMIN_SPACE}.{kind}.{verb}")
}

/// Whether a reply subject is one the gateway may publish to: it starts
/// with the inbox prefix and lies nowhere under `cairn.` (so no caller can
/// aim a reply into another tenant's event stream).
pub fn reply_allowed(reply: &str, inbox_prefix: &str) -> bool {
    reply.starts_with(inbox_prefix)
        && !reply.starts_with("cairn.")
        && reply.len() <= 256
        && !reply.contains(['*', '>', ' ', '\t', '\r', '\n'])
}

/// `volume/v1` + `VolumeCreated` → `cairn.v1.default.evt.volume.VolumeCreated`.
pub fn event(tenant: &str, aggregate: &str, kind: &str) -> String {
    let aggregate_kind = aggregate.split('/').next().unwrap_or("unknown");
    format!("{PREFIX}.{tenant}.evt.{aggregate_kind}.{kind}")
}

/// Where a push's or pull's progress is published (not journaled).
pub fn progress(tenant: &str, workflow: &str) -> String {
    format!("{PREFIX}.{tenant}.evt.progress.{workflow}")
}

/// The subject that matches every event of a tenant.
pub fn events_wildcard(tenant: &str) -> String {
    format!("{PREFIX}.{tenant}.evt.>")
}

/// A parsed request subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSubject {
    /// The tenant, or [`ADMIN_SPACE`] for the operator's requests.
    pub tenant: String,
    pub kind: String,
    pub verb: String,
}

pub fn parse_request(subject: &str) -> Result<RequestSubject, ApiError> {
    let rest = subject
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| ApiError::invalid(format!("subject {subject:?} is not under {PREFIX}")))?;
    let parts: Vec<&str> = rest.split('.').collect();
    let [tenant, kind, verb] = parts.as_slice() else {
        return Err(ApiError::invalid(format!(
            "subject {subject:?} is not {PREFIX}.<tenant>.<kind>.<verb>"
        )));
    };
    if *tenant != ADMIN_SPACE {
        check_label("tenant", tenant)?;
    }
    Ok(RequestSubject {
        tenant: tenant.to_string(),
        kind: kind.to_string(),
        verb: verb.to_string(),
    })
}

impl RequestSubject {
    /// Whether this is the operator's subject space.
    pub fn is_admin(&self) -> bool {
        self.tenant == ADMIN_SPACE
    }
}

/// NATS wildcard matching: `*` matches one token, a final `>` one or more.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(p) = pattern_tokens.next() {
        if p == ">" && pattern_tokens.peek().is_none() {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_subjects_parse() {
        let s = parse_request("cairn.v1.default.volume.create").unwrap();
        assert_eq!(
            (s.tenant.as_str(), s.kind.as_str(), s.verb.as_str()),
            ("default", "volume", "create")
        );
        assert!(parse_request("cairn.v1.default.volume").is_err());
        assert!(parse_request("other.v1.default.volume.create").is_err());
        assert!(parse_request("cairn.v1.BAD.volume.create").is_err());
        assert!(parse_request("cairn.v1._cluster.node.fail").is_err());
        let admin = parse_request(&admin_request("node", "fail")).unwrap();
        assert!(admin.is_admin());
        assert!(!s.is_admin());
    }

    #[test]
    fn replies_go_only_to_inboxes() {
        assert!(reply_allowed("_INBOX.abc.def", "_INBOX."));
        assert!(!reply_allowed(
            "cairn.v1.acme.evt.volume.VolumeCreated",
            "_INBOX."
        ));
        assert!(!reply_allowed("cairn.v1.acme.evt.x", "cairn."));
        assert!(!reply_allowed("other.subject", "_INBOX."));
        assert!(!reply_allowed("_INBOX.>", "_INBOX."));
        assert!(!reply_allowed(
            &format!("_INBOX.{}", "x".repeat(300)),
            "_INBOX."
        ));
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches(REQUEST_WILDCARD, "cairn.v1.default.volume.create"));
        assert!(!matches(
            REQUEST_WILDCARD,
            "cairn.v1.default.evt.volume.VolumeCreated"
        ));
        assert!(matches(
            "cairn.v1.default.evt.>",
            "cairn.v1.default.evt.volume.VolumeCreated"
        ));
        assert!(!matches("cairn.v1.default.evt.>", "cairn.v1.default.evt"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert_eq!(
            event("t", "volume/shop/data-0", "VolumeCreated"),
            "cairn.v1.t.evt.volume.VolumeCreated"
        );
    }
}
