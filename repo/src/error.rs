//! `repo::Error`: every way a repository operation fails, with the object
//! (and offset) it concerns, and the stable [`ErrorCode`] the gateway
//! replies with ([`Error::code`]).
//!
//! Two rules: a key that does not open the repo is always [`Error::WrongKey`]
//! (checked against the config's key-check value before anything is
//! decrypted), never `Corrupted`; and an object store that stays unreachable
//! after its retries is [`Error::Unavailable`], so a saga can retry later.

use std::path::PathBuf;

use cairn_schema::{ApiError, ErrorCode};

use super::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid repository URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    /// The caller (a tenant) may not use this path, endpoint or
    /// credential: it is outside what the operator granted it.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("the key does not open repository {repo}: {reason}")]
    WrongKey { repo: String, reason: String },
    #[error("{repo} is not a Cairn repository (no config object); run init first")]
    NotARepo { repo: String },
    #[error("{repo} is already a Cairn repository")]
    AlreadyInitialized { repo: String },
    #[error("{repo}: repository format {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        repo: String,
        found: u32,
        supported: u32,
    },
    #[error("manifest {id:?} not found in {repo}")]
    ManifestNotFound { repo: String, id: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Stored data failed verification. `object` is the store key (for
    /// example `packs/3fa4…`), `offset` the byte in it where the bad blob
    /// starts, when known.
    #[error("{object}{}: corrupted: {reason}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Corrupted {
        object: String,
        offset: Option<u64>,
        reason: String,
    },
    /// A chunk a manifest references is in no pack.
    #[error("manifest {manifest}: chunk {chunk} of volume {volume:?} is in no pack")]
    MissingChunk {
        manifest: String,
        volume: String,
        chunk: String,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Blocks(#[from] cairn_blocks::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The API code of a block-engine error. The lowest crate that sees both
/// `blocks` and `schema` is this one, so the runtime's volume replies use
/// this table too (`cairn_actors::services::blocks_error`).
pub fn blocks_code(e: &cairn_blocks::Error) -> ErrorCode {
    use cairn_blocks::Error as B;
    match e {
        B::VolumeNotFound { .. } | B::SnapshotNotFound { .. } => ErrorCode::NotFound,
        B::VolumeExists { .. } | B::SnapshotExists { .. } => ErrorCode::AlreadyExists,
        B::InvalidName { .. } | B::OutOfRange { .. } | B::InvalidArgument(_) => {
            ErrorCode::InvalidArgument
        }
        B::ReadOnly { .. } | B::KeyRequired { .. } | B::KeyMismatch { .. } => {
            ErrorCode::FailedPrecondition
        }
        B::NoSpace { .. } => ErrorCode::NoSpace,
        B::Corrupted { .. } => ErrorCode::Corrupted,
        B::Fenced { .. } => ErrorCode::FailedPrecondition,
        B::FenceLapsed { .. } => ErrorCode::DeadlineExceeded,
        B::Io { .. } => ErrorCode::Internal,
    }
}

impl Error {
    /// The stable code at the API edge.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidUrl { .. } | Error::KeyFile { .. } | Error::InvalidArgument(_) => {
                ErrorCode::InvalidArgument
            }
            Error::NotPermitted(_) => ErrorCode::PermissionDenied,
            Error::WrongKey { .. } => ErrorCode::WrongKey,
            Error::NotARepo { .. } | Error::ManifestNotFound { .. } => ErrorCode::NotFound,
            Error::AlreadyInitialized { .. } => ErrorCode::AlreadyExists,
            Error::UnsupportedVersion { .. } => ErrorCode::FailedPrecondition,
            Error::Corrupted { .. } | Error::MissingChunk { .. } => ErrorCode::Corrupted,
            Error::Store(e) => match e {
                store::Error::NotFound { .. } => ErrorCode::NotFound,
                store::Error::Unavailable { .. } => ErrorCode::Unavailable,
                store::Error::Denied { .. } => ErrorCode::FailedPrecondition,
                store::Error::Oversized { .. } => ErrorCode::Corrupted,
                store::Error::Io { .. } => ErrorCode::Internal,
            },
            Error::Blocks(e) => blocks_code(e),
        }
    }

    /// The error as the gateway replies with it; `details.object` and
    /// `details.offset` name the bad object when there is one.
    pub fn to_api(&self) -> ApiError {
        let error = ApiError::new(self.code(), self.to_string());
        match self {
            Error::Corrupted { object, offset, .. } => {
                error.with_details(serde_json::json!({ "object": object, "offset": offset }))
            }
            _ => error,
        }
    }

    pub(crate) fn corrupted(
        object: impl Into<String>,
        offset: Option<u64>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupted {
            object: object.into(),
            offset,
            reason: reason.into(),
        }
    }
}
