//! Sealed values: how a secret looks once the runtime has sealed it with
//! the cluster key, so that no plaintext secret reaches the journal.
//!
//! A sealed value is the text `cairn-sealed:v1:<base64>` (see
//! `cairn_actors::secrets` for the crypto). It replaces:
//! - each value of a Kubernetes Secret's `data` and `stringData` in the
//!   stored objects (`AppCreated`, `AppSnapshotted`, `AppRolledBack`,
//!   `AppPulled`);
//! - the value of a workflow param declared `secret: true` in
//!   `WorkflowStarted` (as a JSON string).
//!
//! This module is pure: it only recognises and redacts sealed values. The
//! folds keep them as they are, so the journal replays and verifies
//! without the cluster key.

use crate::Event;

/// What every sealed value starts with.
pub const SEALED_PREFIX: &str = "cairn-sealed:";
/// The prefix of the current version (XChaCha20-Poly1305, base64 of
/// `nonce ‖ ciphertext ‖ tag`).
pub const SEALED_V1_PREFIX: &str = "cairn-sealed:v1:";
/// How a secret is shown where its value is not handed back.
pub const REDACTED: &str = "<redacted>";

/// Whether `text` is a sealed value (of any version).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

/// Whether a param's JSON text is a sealed value (a JSON string).
pub fn is_sealed_param(json_text: &str) -> bool {
    json_text
        .strip_prefix('"')
        .is_some_and(|rest| rest.starts_with(SEALED_PREFIX))
}

/// The event as shown at the edge (`events --json`, exports, the events
/// published on NATS): sealed workflow params become `"<redacted>"`.
/// Sealed Secret values stay sealed (ciphertext, not plaintext).
pub fn redact_event(event: &mut Event) {
    if let Event::WorkflowStarted(started) = event {
        for (_, value) in &mut started.params {
            if is_sealed_param(value) {
                *value = format!("\"{REDACTED}\"");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::WorkflowStarted;

    #[test]
    fn sealed_params_are_redacted_in_the_event_view() {
        let mut event = Event::WorkflowStarted(WorkflowStarted {
            workflow: "wf".into(),
            name: "w".into(),
            definition: String::new(),
            hash: String::new(),
            params: vec![
                ("app".into(), "\"shop\"".into()),
                ("key".into(), format!("\"{SEALED_V1_PREFIX}AAAA\"")),
            ],
            app: None,
            parent: None,
        });
        redact_event(&mut event);
        let Event::WorkflowStarted(s) = &event else {
            unreachable!()
        };
        assert_eq!(s.params[0].1, "\"shop\"");
        assert_eq!(s.params[1].1, "\"<redacted>\"");
        assert!(is_sealed("cairn-sealed:v1:x") && !is_sealed("hunter2"));
    }
}
