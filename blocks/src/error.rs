//! The block engine's error type. Every variant carries the context a person
//! needs (volume, offset, path) and maps to one errno for the front-ends.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume {volume:?} not found")]
    VolumeNotFound { volume: String },
    #[error("snapshot {volume}@{snapshot} not found")]
    SnapshotNotFound { volume: String, snapshot: String },
    #[error("volume {volume:?} already exists")]
    VolumeExists { volume: String },
    #[error("snapshot {volume}@{snapshot} already exists")]
    SnapshotExists { volume: String, snapshot: String },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("range {offset}+{len} is outside volume {volume:?} of {size} bytes")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{export:?} is read-only")]
    ReadOnly { export: String },
    #[error("no space left on {path}")]
    NoSpace { path: PathBuf },
    #[error("data of {volume:?} at offset {offset} is corrupted: {reason}")]
    Corrupted {
        volume: String,
        offset: u64,
        reason: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "volume {volume:?} is encrypted and no key file is loaded (start `cairn up --key-file F`)"
    )]
    KeyRequired { volume: String },
    #[error("volume {volume:?} is encrypted with a different key than the one loaded")]
    KeyMismatch { volume: String },
    #[error("volume {volume:?} is under another fence")]
    Fenced { volume: String },
    #[error("{fence} has lapsed: its lease ended, or it was released")]
    FenceLapsed { fence: crate::fence::FenceId },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an io error, turning ENOSPC into [`Error::NoSpace`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// The errno a block front-end reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::OutOfRange { .. } | Error::InvalidName { .. } | Error::InvalidArgument(_) => {
                libc::EINVAL
            }
            Error::KeyRequired { .. } | Error::KeyMismatch { .. } => libc::EACCES,
            Error::ReadOnly { .. } => libc::EPERM,
            Error::NoSpace { .. } => libc::ENOSPC,
            Error::VolumeNotFound { .. } | Error::SnapshotNotFound { .. } => libc::ENOENT,
            Error::VolumeExists { .. } | Error::SnapshotExists { .. } => libc::EEXIST,
            Error::Corrupted { .. } | Error::Io { .. } => libc::EIO,
            Error::Fenced { .. } => libc::EBUSY,
            Error::FenceLapsed { .. } => libc::ESTALE,
        }
    }
}
