//! Stable error codes at the API edge and the error body every reply uses:
//! `{"error":{"code":"not_found","message":"…","details":{…}}}`.
//!
//! Codes are part of the public contract: add new ones, never rename.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad JSON, a bad name, a missing field.
    InvalidArgument,
    /// The subject names a kind or verb that does not exist.
    UnknownCommand,
    /// The named volume, snapshot or app does not exist.
    NotFound,
    /// The volume, snapshot or app to create exists already.
    AlreadyExists,
    /// The request is valid but the current state forbids it.
    FailedPrecondition,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// Stored data failed verification.
    Corrupted,
    /// A disk is full; nothing was changed.
    NoSpace,
    /// A dependency (journal, bus, store) is not reachable; retry later.
    Unavailable,
    /// A bug: the server broke one of its own invariants.
    Internal,
    /// A limit was reached (snapshots per app, workflows running).
    ResourceExhausted,
    /// An app hook (`spec.hooks`) exited non-zero.
    HookFailed,
    /// A step or hook ran past its timeout.
    DeadlineExceeded,
    /// A workflow failed or was cancelled, and was compensated: what it
    /// had done is undone. `details` name the workflow and the failed step.
    Aborted,
    /// The key given does not open the encrypted store (a backup
    /// repository): nothing was read or changed.
    WrongKey,
    /// The caller may not do this: the operator has not granted it (hooks
    /// off for the tenant, an argv outside its allowlist), or the command
    /// is only for a workflow's steps. Nothing ran.
    PermissionDenied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Corrupted => "corrupted",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::HookFailed => "hook_failed",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Aborted => "aborted",
            ErrorCode::WrongKey => "wrong_key",
            ErrorCode::PermissionDenied => "permission_denied",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error half of every reply. Also what a decider returns as a rejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// For people; may change between versions.
    pub message: String,
    /// Structured context, e.g. `{"field":"volume","value":"BAD"}` for a bad
    /// name. Absent when there is none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// The reply body: `{"error":{…}}`.
    pub fn to_reply(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }

    /// Reads an error back out of a reply body, if it is one.
    pub fn from_reply(reply: &serde_json::Value) -> Option<ApiError> {
        reply
            .get("error")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
    }
}
