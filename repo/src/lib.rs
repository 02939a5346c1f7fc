//! The backup repository: app snapshots pushed from the block pool to an
//! object store (a directory or an S3 bucket) and pulled back, content
//! addressed, deduplicated, compressed and encrypted. The byte format is in
//! `docs/repo-format.md`; this doc is the API.
//!
//! # API
//! - Where: [`RepoUrl::parse`] (`file:///abs/dir`,
//!   `s3://bucket/prefix?endpoint=…&region=…&path_style=true`), then
//!   [`RepoUrl::open_store`] → `Arc<dyn ObjectStore>`. Stores:
//!   [`FileStore`], [`S3Store`], and [`MemStore`] (the fault-injecting
//!   twin, tests only).
//! - Who: [`Key::from_file`] (32 raw bytes or 64 hex digits, as `cairn up
//!   --key-file`), [`Key::passphrase`] (argon2id; salt and costs kept in the
//!   repo's `config`).
//! - [`Repo::init`]`(store, &key, InitOptions)`, [`Repo::open`]`(store,
//!   &key)`: a key that does not match the config's key check is
//!   [`Error::WrongKey`] (code `wrong_key`) before anything is decrypted.
//! - [`Repo::push`]`(&pool, &PushRequest, &progress) -> PushReport`: reads
//!   each `volume@snapshot` through `Pool::open_export`, writes packs, then
//!   the manifest, last.
//! - [`Repo::pull`]`(&pool, manifest_id, &targets, PullMode, &progress) ->
//!   PullReport`: creates the volumes (or, in [`PullMode::Repair`], rewrites
//!   only the chunks of existing volumes that differ).
//! - [`Repo::list`], [`Repo::find`], [`Repo::latest`], [`Repo::manifest`]:
//!   what the repo holds.
//! - [`Repo::check`] → [`CheckReport`] (every bad object by name and
//!   offset); [`Repo::prune`]`(keep_last)` → [`PruneReport`].
//! - Every error is an [`Error`] with a stable [`Error::code`]
//!   (`cairn_schema::ErrorCode`) and [`Error::to_api`] for replies.
//!
//! Everything is blocking (the block engine is): run it on a blocking
//! thread (`spawn_blocking`, a saga step's worker). The S3 store brings its
//! own runtime.
//!
//! # Invariants
//! - A manifest is written after every pack it references has been stored,
//!   so a repo never references a missing chunk; a crash or a dead store
//!   mid-push leaves only packs, which the next push finds and reuses
//!   (resumable, nothing uploaded twice).
//! - Every chunk read back is authenticated (AEAD, bound to its id) and
//!   re-hashed to its id; a failure is [`Error::Corrupted`] naming the
//!   object and the offset, never data.
//! - Memory: at most three packs (built, queued, uploading), a few chunks,
//!   one manifest's chunk list, and the [`ChunkIndex`] (≈100 bytes per
//!   stored chunk). Never a whole volume.
//! - Pushes and prune of one repository must not overlap (prune could
//!   delete a pack a concurrent push just deduplicated against); the caller
//!   (the saga layer) serialises them per repository.
//!
//! # Files
//! `access.rs` (who may use which paths, key files and S3 locations, under
//! the operator's [`Policy`]; the safe open of key files), `error.rs`
//! (errors and codes), `url.rs`, `store.rs` (the trait), `file_store.rs`,
//! `s3_store.rs`, `mem_store.rs`, `key.rs` (keys, KDF, sealing),
//! `format.rs` (config, packs, manifests; pure), `index.rs` (chunk → pack),
//! `push.rs`, `pull.rs`, `check.rs`, `prune.rs`, `tests.rs` and
//! `security_tests.rs`; `tests/repo_fuzz.rs` fuzzes the readers and
//! `examples/bench_push.rs` is Cairn's side of `just bench-push`.
//!
//! # Architecture invariant
//! Depends on `blocks` and `schema` only: it knows nothing of actors,
//! tenants' identities or the bus (the caller says who may reach what).

mod access;
mod check;
mod error;
mod file_store;
mod format;
mod index;
mod key;
mod mem_store;
mod prune;
mod pull;
mod push;
mod s3_store;
pub mod store;
mod url;

#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use cairn_blocks::clock::{Clock, SystemClock};
use serde::Serialize;

pub use access::{Access, Grants, MAX_KEY_FILE_BYTES, Policy};
pub use check::{CheckReport, Problem};
pub use error::{Error, Result, blocks_code};
pub use file_store::FileStore;
pub use format::{
    Bounds, CONFIG_KEY, ChunkRef, Config, FORMAT_VERSION, IndexEntry, MANIFESTS, MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES, MAX_MANIFEST_BYTES, MAX_MANIFEST_OBJECT, MAX_PACK_ENTRIES, Manifest, PACKS,
    PackWriter, VolumeEntry,
};
pub use index::ChunkIndex;
pub use key::{KdfParams, Key, Keys, SEAL_OVERHEAD};
pub use mem_store::{Faults, MemStore};
pub use prune::PruneReport;
pub use pull::{PullMode, PullReport};
pub use push::{Progress, PushReport, PushRequest};
pub use s3_store::S3Store;
pub use store::{ObjectInfo, ObjectStore};
pub use url::{Endpoint, RepoUrl, S3Location};

pub use key::random_bytes;
use key::{hex, unhex};

/// What the format supports; [`InitOptions::sanitize`] clamps into these
/// and [`Repo::open`] refuses a config outside them (it is not
/// authenticated, so an edited one must not exhaust memory or time).
pub const CHUNK_BYTES: std::ops::RangeInclusive<u64> = 64 << 10..=16 << 20;
pub const PACK_BYTES: std::ops::RangeInclusive<u64> = 256 << 10..=1 << 30;
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// Argon2id memory, KiB: at most 256 MiB, whatever an (unauthenticated)
/// config asks for.
pub const KDF_M_COST_KIB: std::ops::RangeInclusive<u32> = 8..=256 << 10;
pub const KDF_T_COST: std::ops::RangeInclusive<u32> = 1..=16;
/// Argon2id lanes: one (the only value `init` writes).
pub const KDF_P_COST: std::ops::RangeInclusive<u32> = 1..=1;

/// How [`Repo::init`] lays out a new repository (fixed afterwards).
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Chunk size: a power of two, 64 KiB..=16 MiB (default 1 MiB).
    pub chunk_bytes: u64,
    /// Pack size target: 256 KiB..=1 GiB (default 32 MiB).
    pub pack_bytes: u64,
    /// zstd level for chunks, 1..=19 (default 3).
    pub zstd_level: i32,
    /// Argon2id memory for passphrase keys, KiB (default 64 MiB).
    pub kdf_m_cost_kib: u32,
    /// Argon2id passes (default 3).
    pub kdf_t_cost: u32,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            chunk_bytes: 1 << 20,
            pack_bytes: 32 << 20,
            zstd_level: 3,
            kdf_m_cost_kib: 64 << 10,
            kdf_t_cost: 3,
        }
    }
}

impl InitOptions {
    /// Clamps every field into the range the format supports.
    pub fn sanitize(mut self) -> InitOptions {
        let clamp = |v: u64, r: &std::ops::RangeInclusive<u64>| v.clamp(*r.start(), *r.end());
        self.chunk_bytes = clamp(self.chunk_bytes, &CHUNK_BYTES)
            .next_power_of_two()
            .min(*CHUNK_BYTES.end());
        self.pack_bytes = clamp(self.pack_bytes, &PACK_BYTES);
        self.zstd_level = self
            .zstd_level
            .clamp(*ZSTD_LEVELS.start(), *ZSTD_LEVELS.end());
        self.kdf_m_cost_kib = self
            .kdf_m_cost_kib
            .clamp(*KDF_M_COST_KIB.start(), *KDF_M_COST_KIB.end());
        self.kdf_t_cost = self
            .kdf_t_cost
            .clamp(*KDF_T_COST.start(), *KDF_T_COST.end());
        self
    }
}

/// One manifest as [`Repo::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestSummary {
    pub id: String,
    pub app: String,
    pub snapshot: String,
    pub created_ms: u64,
    pub parent: Option<String>,
    pub volumes: Vec<VolumeSummary>,
    /// Sum of the volumes' sizes.
    pub logical_bytes: u64,
    /// Pack bytes the push of this snapshot added to the repo.
    pub added_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSummary {
    pub name: String,
    pub snapshot: String,
    pub size: u64,
    /// Chunks that are not holes, times the chunk size.
    pub data_bytes: u64,
}

impl ManifestSummary {
    fn of(id: &str, m: &Manifest) -> ManifestSummary {
        ManifestSummary {
            id: id.to_owned(),
            app: m.app.clone(),
            snapshot: m.snapshot.clone(),
            created_ms: m.created_ms,
            parent: m.parent.clone(),
            volumes: m
                .volumes
                .iter()
                .map(|v| VolumeSummary {
                    name: v.name.clone(),
                    snapshot: v.snapshot.clone(),
                    size: v.size,
                    data_bytes: v
                        .chunks
                        .iter()
                        .filter(|c| matches!(c, ChunkRef::Data(_)))
                        .count() as u64
                        * v.chunk_bytes,
                })
                .collect(),
            logical_bytes: m.logical_bytes(),
            added_bytes: m.added_bytes,
        }
    }
}

/// [`Repo::list_all`]: readable manifests, and (key, why) of unreadable ones.
pub type Listing = (Vec<ManifestSummary>, Vec<(String, Error)>);

/// An open repository: its store, config and subkeys.
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    config: Config,
    keys: Keys,
    /// Stamps `created_ms` of the config and of manifests.
    clock: Arc<dyn Clock>,
}

impl Repo {
    /// Writes a new repository's `config` into an empty store.
    pub fn init(store: Arc<dyn ObjectStore>, key: &Key, opts: InitOptions) -> Result<Repo> {
        Repo::init_with_clock(store, key, opts, Arc::new(SystemClock))
    }

    /// [`Repo::init`] with the clock that stamps the config's and the
    /// manifests' creation times (a `ManualClock` in tests).
    pub fn init_with_clock(
        store: Arc<dyn ObjectStore>,
        key: &Key,
        opts: InitOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Repo> {
        let opts = opts.sanitize();
        let name = store.describe();
        if store.head(CONFIG_KEY)?.is_some() {
            return Err(Error::AlreadyInitialized { repo: name });
        }
        let mut repo_id = [0u8; 16];
        random_bytes(&mut repo_id);
        let kdf = match key {
            Key::Raw(_) => None,
            Key::Passphrase(_) => Some(KdfParams::new(opts.kdf_m_cost_kib, opts.kdf_t_cost)),
        };
        let keys = Keys::derive(&name, key, kdf.as_ref(), &repo_id)?;
        let config = Config {
            format: format::FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            repo_id: hex(&repo_id),
            chunk_bytes: opts.chunk_bytes,
            pack_bytes: opts.pack_bytes,
            zstd_level: opts.zstd_level,
            kdf,
            key_check: keys.key_check(&repo_id),
            created_ms: clock.now_ms(),
        };
        let text = serde_json::to_vec_pretty(&config).expect("config encodes");
        store.put(CONFIG_KEY, Bytes::from(text))?;
        Ok(Repo {
            store,
            config,
            keys,
            clock,
        })
    }

    /// The same repository with another clock for manifest times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Repo {
        self.clock = clock;
        self
    }

    /// Opens an existing repository; the key must pass the key check.
    pub fn open(store: Arc<dyn ObjectStore>, key: &Key) -> Result<Repo> {
        let name = store.describe();
        let text = match store.get(CONFIG_KEY, MAX_CONFIG_BYTES) {
            Ok(text) => text,
            Err(store::Error::NotFound { .. }) => return Err(Error::NotARepo { repo: name }),
            Err(store::Error::Oversized { reason, .. }) => {
                return Err(Error::corrupted(CONFIG_KEY, None, reason));
            }
            Err(e) => return Err(e.into()),
        };
        let config: Config = serde_json::from_slice(&text)
            .map_err(|e| Error::corrupted(CONFIG_KEY, None, format!("config: {e}")))?;
        if config.format != format::FORMAT_NAME {
            return Err(Error::NotARepo { repo: name });
        }
        if config.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                repo: name,
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        let repo_id = unhex(&config.repo_id)
            .ok_or_else(|| Error::corrupted(CONFIG_KEY, None, "repo_id is not hex"))?;
        let chunk_ok =
            config.chunk_bytes.is_power_of_two() && CHUNK_BYTES.contains(&config.chunk_bytes);
        let pack_ok = PACK_BYTES.contains(&config.pack_bytes);
        let zstd_ok = ZSTD_LEVELS.contains(&config.zstd_level);
        if !chunk_ok || !pack_ok || !zstd_ok {
            return Err(Error::corrupted(
                CONFIG_KEY,
                None,
                "chunk size, pack size or zstd level out of range",
            ));
        }
        if let Some(kdf) = &config.kdf {
            kdf.check()?;
        }
        let keys = Keys::derive(&name, key, config.kdf.as_ref(), &repo_id)?;
        if keys.key_check(&repo_id) != config.key_check {
            return Err(Error::WrongKey {
                repo: name,
                reason: match key {
                    Key::Raw(_) => "the key file is not this repository's key".into(),
                    Key::Passphrase(_) => "the passphrase is not this repository's".into(),
                },
            });
        }
        Ok(Repo {
            store,
            config,
            keys,
            clock: Arc::new(SystemClock),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The subkeys: whoever holds the repository's key can seal any object
    /// (tests craft hostile repositories with them).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads every pack's index (see [`ChunkIndex`]).
    pub fn chunk_index(&self) -> Result<ChunkIndex> {
        ChunkIndex::load(&*self.store, &self.keys, &Bounds::of(&self.config))
    }

    /// Reads and opens one manifest.
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "manifest id {id:?} is not 32 hex digits"
            )));
        }
        let object = format!("{MANIFESTS}{id}");
        match self.store.get(&object, MAX_MANIFEST_OBJECT) {
            Ok(sealed) => Manifest::open(&self.keys, &Bounds::of(&self.config), id, &sealed),
            Err(store::Error::NotFound { .. }) => Err(Error::ManifestNotFound {
                repo: self.store.describe(),
                id: id.to_owned(),
            }),
            Err(store::Error::Oversized { reason, .. }) => {
                Err(Error::corrupted(object, None, reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every readable manifest, oldest first (by creation time, then id).
    /// A manifest that cannot be read (damaged, a foreign key under
    /// `manifests/`, a newer format) is skipped with a warning, so one bad
    /// object does not stop every push and pull; [`Repo::check`] reports it.
    pub fn list(&self) -> Result<Vec<ManifestSummary>> {
        let (manifests, unreadable) = self.list_all()?;
        for (key, e) in unreadable {
            tracing::warn!(object = %key, error = %e, "repo: manifest skipped");
        }
        Ok(manifests)
    }

    /// Readable manifests, oldest first, and the keys of unreadable ones
    /// with why. A store failure is an error.
    pub fn list_all(&self) -> Result<Listing> {
        let mut out = vec![];
        let mut unreadable = vec![];
        store::for_each_object(&*self.store, MANIFESTS, |object| -> Result<()> {
            let id = &object.key[MANIFESTS.len()..];
            match self.manifest(id) {
                Ok(m) => out.push(ManifestSummary::of(id, &m)),
                // Deleted by a prune meanwhile.
                Err(Error::ManifestNotFound { .. }) => {}
                Err(
                    e @ (Error::Corrupted { .. }
                    | Error::InvalidArgument(_)
                    | Error::UnsupportedVersion { .. }),
                ) => unreadable.push((object.key.clone(), e)),
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok((out, unreadable))
    }

    /// The manifest of `app@snapshot` (the newest, if pushed twice).
    pub fn find(&self, app: &str, snapshot: &str) -> Result<Option<ManifestSummary>> {
        Ok(self
            .list()?
            .into_iter()
            .rev()
            .find(|m| m.app == app && m.snapshot == snapshot))
    }

    /// The newest manifest of `app`: the parent for its next push.
    pub fn latest(&self, app: &str) -> Result<Option<ManifestSummary>> {
        Ok(self.list()?.into_iter().rev().find(|m| m.app == app))
    }
}
