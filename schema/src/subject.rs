//! NATS subject names and wildcard matching.
//!
//! - Requests: `cairn.v1.<tenant>.<kind>.<verb>`.
//! - Events: `cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>`.

use crate::ApiError;
use crate::names::check_label;

pub const PREFIX: &str = "cairn.v1";
pub const DEFAULT_TENANT: &str = "default";
/// The tenant of cluster-wide facts (nodes). Not a valid tenant label, so no
/// request subject can name it; every tenant sees its events.
pub const CLUSTER_TENANT: &str = "_cluster";
/// What the gateway subscribes to: exactly tenant, kind and verb.
pub const REQUEST_WILDCARD: &str = "cairn.v1.*.*.*";

pub fn request(tenant: &str, kind: &str, verb: &str) -> String {
    format!("{PREFIX}.{tenant}.{kind}.{verb}")
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
    check_label("tenant", tenant)?;
    Ok(RequestSubject {
        tenant: tenant.to_string(),
        kind: kind.to_string(),
        verb: verb.to_string(),
    })
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
