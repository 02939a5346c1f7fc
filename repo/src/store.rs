//! The [`ObjectStore`] trait: the little a backup repository needs from a
//! place that keeps named byte objects (a directory, an S3 bucket, memory).
//!
//! The trait is blocking, like the block engine it copies from: call it from
//! a blocking thread (`tokio::task::spawn_blocking`, a saga step's worker).
//! [`super::S3Store`] runs its async client on a private runtime, so it may
//! be called from anywhere, including a thread inside another runtime.
//!
//! Contract every implementation keeps (one suite in `repo/tests.rs` runs
//! against each):
//! - `put` is atomic: a reader sees the whole new object or the previous
//!   state, never a torn one, also after a crash.
//! - keys are `/`-separated ASCII (`config`, `packs/<hex>`,
//!   `manifests/<hex>`); `list_page` returns keys in byte order, strictly
//!   after `after`, at most `max` of them, so listing is paginated and its
//!   memory bounded by the caller.
//! - a missing object is [`Error::NotFound`]; a store that stays unreachable
//!   after the implementation's retries is [`Error::Unavailable`].
//! - reads are bounded by the caller: `get` takes the largest size it
//!   accepts and an object above it is [`Error::Oversized`] before its
//!   bytes are collected; `get_range` never returns more than `len` bytes
//!   (a store that answers with more is [`Error::Oversized`] too). A
//!   repository's bytes come from outside: no read allocates what the
//!   object (or a server) claims, only what the caller asked for.

use bytes::Bytes;

/// An object-store failure, with the operation and key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{store}: object {key:?} not found")]
    NotFound { store: String, key: String },
    /// Unreachable or failing after retries (connection refused, timeouts,
    /// 5xx): retry later.
    #[error("{store}: {op} {key:?} failed after retries, the store is unavailable: {reason}")]
    Unavailable {
        store: String,
        op: &'static str,
        key: String,
        reason: String,
    },
    /// Refused (credentials, permissions, a missing bucket).
    #[error("{store}: {op} {key:?} refused: {reason}")]
    Denied {
        store: String,
        op: &'static str,
        key: String,
        reason: String,
    },
    /// The object (or the server's answer) is larger than the caller
    /// accepts: a damaged or hostile store.
    #[error("{store}: {op} {key:?}: {reason}")]
    Oversized {
        store: String,
        op: &'static str,
        key: String,
        reason: String,
    },
    #[error("{store}: {op} {key:?}: {reason}")]
    Io {
        store: String,
        op: &'static str,
        key: String,
        reason: String,
    },
}

impl Error {
    /// An object (or an answer) above the `max` bytes a reader accepts.
    pub fn oversized(store: String, op: &'static str, key: &str, max: u64) -> Error {
        Error::Oversized {
            store,
            op,
            key: key.to_owned(),
            reason: format!("larger than the {max} bytes accepted for it"),
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// Objects a store keeps, by key.
pub trait ObjectStore: Send + Sync {
    /// A name for messages: the repository URL without credentials.
    fn describe(&self) -> String;
    /// Writes `key` atomically (whole object or nothing), replacing it.
    fn put(&self, key: &str, data: Bytes) -> Result<(), Error>;
    /// The whole object, if it holds at most `max` bytes (else
    /// [`Error::Oversized`], without reading it).
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, Error>;
    /// `len` bytes from `offset`; fewer only at the object's end, never
    /// more. The caller bounds `len`.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error>;
    /// The object's size, or `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<u64>, Error>;
    /// Up to `max` objects whose key starts with `prefix` and sorts strictly
    /// after `after`, in key order.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, Error>;
    /// Deletes `key`; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> Result<(), Error>;
}

/// Objects listed per page by [`for_each_object`].
pub const LIST_PAGE: usize = 1000;

/// Calls `f` on every object under `prefix`, a page at a time, until a
/// page comes back empty (a server may return short pages before the end).
pub fn for_each_object<E: From<Error>>(
    store: &dyn ObjectStore,
    prefix: &str,
    mut f: impl FnMut(ObjectInfo) -> Result<(), E>,
) -> Result<(), E> {
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(prefix, after.as_deref(), LIST_PAGE)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.key.clone());
        for object in page {
            f(object)?;
        }
    }
}
