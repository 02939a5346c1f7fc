//! Structured and mutation fuzzing of the repository's readers (issue 13:
//! "the repo readers: config, manifest, pack trailer and index"), with
//! proptest: whoever holds a repository and its key can write any bytes
//! and seal any plaintext, so each reader is fed well-formed objects with
//! hostile fields, then byte-level mutations of them, through the public
//! API (`Repo::open`, `manifest`, `list`, `chunk_index`, `check`, `prune`).
//!
//! Asserted for every case: no panic, every error has a stable code, and
//! no single allocation is larger than [`LARGEST_ALLOCATION`] (a counting
//! global allocator in this test binary records the largest request).
//!
//! A cargo-fuzz target is not built: it would compile this crate's whole
//! dependency tree (aws-sdk-s3 and its TLS stack among it) a second time
//! with coverage instrumentation, in a workspace of its own, which CI on
//! two cores cannot afford (`ops/scripts/fuzz.sh` runs the targets of
//! `blocks` and `schema` on stable);
//! `PROPTEST_CASES=10000 cargo test -p cairn-repo --test repo_fuzz` runs
//! longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_repo::{
    self as repo, ChunkRef, IndexEntry, InitOptions, Key, MAX_MANIFEST_BYTES, Manifest, MemStore,
    ObjectStore, Repo, VolumeEntry,
};
use proptest::prelude::*;

/// Records the largest single allocation.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest allocation any reader may make: a manifest's plaintext
/// (64 MiB) and some slack. Everything a hostile object claims (4 GiB
/// KDFs, chunks, indexes; 8 GiB manifests) is far above.
const LARGEST_ALLOCATION: usize = MAX_MANIFEST_BYTES as usize + (16 << 20);

fn assert_bounded(what: &str) {
    let largest = LARGEST.swap(0, Ordering::Relaxed);
    assert!(
        largest <= LARGEST_ALLOCATION,
        "{what}: an allocation of {largest} bytes"
    );
}

fn options() -> InitOptions {
    InitOptions {
        chunk_bytes: 64 << 10,
        pack_bytes: 256 << 10,
        zstd_level: 1,
        kdf_m_cost_kib: 8,
        kdf_t_cost: 1,
    }
}

fn new_repo(key: &Key) -> (Arc<MemStore>, Repo) {
    let store = Arc::new(MemStore::new());
    let repo = Repo::init(store.clone(), key, options()).unwrap();
    (store, repo)
}

/// Byte-level mutations: flips, truncation, insertion.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            return;
        }
        match m {
            Mutation::Flip(at, x) => {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
            Mutation::Insert(at, b) => {
                let at = at % bytes.len();
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
}

/// A KDF field: small and valid, or outside what the format allows.
fn kdf_value(valid: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        valid.prop_map(serde_json::Value::from),
        (300u64 << 10..=u32::MAX as u64).prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        ".{0,8}".prop_map(serde_json::Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!({})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_reader_survives_hostile_configs(
        passphrase in any::<bool>(),
        field in prop::sample::select(vec![
            "format", "version", "repo_id", "chunk_bytes", "pack_bytes", "zstd_level",
            "kdf", "key_check", "created_ms",
        ]),
        value in any_json(),
        m_cost in kdf_value(8..=64),
        t_cost in kdf_value(1..=2),
        p_cost in kdf_value(1..=1),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let key = if passphrase { Key::passphrase("pw") } else { Key::from_bytes([9; 32]) };
        let (store, _) = new_repo(&key);
        let mut config: serde_json::Value =
            serde_json::from_slice(&store.get(repo::CONFIG_KEY, 1 << 20).unwrap()).unwrap();
        config[field] = value;
        if passphrase && config["kdf"].is_object() {
            config["kdf"]["m_cost_kib"] = m_cost;
            config["kdf"]["t_cost"] = t_cost;
            config["kdf"]["p_cost"] = p_cost;
        }
        let mut bytes = serde_json::to_vec(&config).unwrap();
        mutate(&mut bytes, &mutations);
        store.put(repo::CONFIG_KEY, Bytes::from(bytes)).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        if let Err(e) = Repo::open(store, &key) {
            let _ = e.code();
        }
        assert_bounded("config");
    }

    #[test]
    fn manifest_reader_survives_hostile_manifests(
        volumes in prop::collection::vec(
            (any::<u64>(), prop_oneof![Just(64u64 << 10), any::<u64>()], 0usize..32, any::<bool>()),
            0..4,
        ),
        meta in prop_oneof![Just("{}".to_owned()), "[ -~]{0,64}"],
        declared in prop_oneof![Just(None), (0u64..=16 << 30).prop_map(Some)],
        mutations in prop::collection::vec(mutation(), 0..4),
        compressed_mutations in prop::collection::vec(mutation(), 0..2),
    ) {
        let key = Key::from_bytes([9; 32]);
        let (store, repo) = new_repo(&key);
        let manifest = Manifest {
            version: repo::FORMAT_VERSION,
            app: "a".into(),
            snapshot: "s".into(),
            created_ms: 0,
            parent: None,
            meta: serde_json::Value::Null,
            volumes: volumes
                .iter()
                .map(|(size, chunk_bytes, n, hole)| VolumeEntry {
                    name: "v".into(),
                    snapshot: "v@s".into(),
                    snapshot_created_ms: 0,
                    size: *size,
                    chunk_bytes: *chunk_bytes,
                    chunks: vec![if *hole { ChunkRef::Hole } else { ChunkRef::Data([1; 32]) }; *n],
                })
                .collect(),
            added_bytes: 0,
        };
        let mut plain = postcard::to_allocvec(&manifest).unwrap();
        // The meta field is JSON text: replace it with arbitrary text by
        // re-encoding with a raw string where the Null's text was.
        if let Some(at) = plain.windows(5).position(|w| w == b"\x04null") {
            let mut text = vec![meta.len() as u8];
            text.extend_from_slice(meta.as_bytes());
            plain.splice(at..at + 5, text);
        }
        mutate(&mut plain, &mutations);
        let mut packed = match declared {
            // A frame that declares `n` bytes of zeros in RLE blocks.
            Some(n) => rle_frame(n),
            None => zstd::bulk::compress(&plain, 1).unwrap(),
        };
        mutate(&mut packed, &compressed_mutations);
        let id = repo.keys().manifest_id(&plain);
        let aad = format!("cairn manifest {id}");
        let sealed = repo.keys().seal(&packed, aad.as_bytes());
        store.put(&format!("{}{id}", repo::MANIFESTS), Bytes::from(sealed)).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        if let Err(e) = repo.manifest(&id) {
            let _ = e.code();
        }
        let _ = repo.list().unwrap();
        let _ = repo.check().unwrap();
        assert_bounded("manifest");
    }

    #[test]
    fn pack_reader_survives_hostile_trailers_and_indexes(
        entries in prop::collection::vec(
            (any::<u32>(), any::<u32>(), prop_oneof![Just(5u32), Just(64 << 10), any::<u32>()]),
            0..8,
        ),
        blob_bytes in 0usize..4096,
        trailer in prop_oneof![
            Just(None),
            (any::<u64>(), any::<u32>()).prop_map(Some),
        ],
        mutations in prop::collection::vec(mutation(), 0..4),
        listed_extra in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
    ) {
        let key = Key::from_bytes([9; 32]);
        let (store, repo) = new_repo(&key);
        let mut bytes = b"CRNPACK1".to_vec();
        // One genuine sealed chunk, then filler.
        let id = [2u8; 32];
        let chunk = repo.keys().seal(&[0, 1, 2, 3, 4, 5], &id);
        bytes.extend_from_slice(&chunk);
        bytes.resize(bytes.len() + blob_bytes, 0);
        let mut index: Vec<IndexEntry> = vec![IndexEntry {
            id,
            offset: 8,
            len: chunk.len() as u32,
            raw_len: 5,
        }];
        index.extend(entries.iter().map(|(offset, len, raw_len)| IndexEntry {
            id: [3; 32],
            offset: *offset,
            len: *len,
            raw_len: *raw_len,
        }));
        let sealed = repo
            .keys()
            .seal(&postcard::to_allocvec(&index).unwrap(), b"cairn pack index");
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(&sealed);
        let (offset, len) = trailer.unwrap_or((offset, sealed.len() as u32));
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(b"CRNPKEND");
        mutate(&mut bytes, &mutations);
        let name = format!("{}{}", repo::PACKS, blake3::hash(&bytes).to_hex());
        let store: Arc<dyn ObjectStore> = if listed_extra == 0 {
            store.put(&name, Bytes::from(bytes)).unwrap();
            store
        } else {
            // A store whose listing claims a larger object than it holds.
            Arc::new(Lying { inner: store, extra: listed_extra, name: name.clone(), bytes })
        };
        let repo = Repo::open(store, &key).unwrap();
        LARGEST.store(0, Ordering::Relaxed);
        let index = repo.chunk_index().unwrap();
        let _ = index.n_chunks();
        let report = repo.check().unwrap();
        let _ = report.is_ok();
        match repo.prune(1) {
            Ok(_) => {}
            Err(e) => { let _ = e.code(); }
        }
        assert_bounded("pack");
    }
}

/// A zstd frame of RLE blocks declaring and holding `n` zero bytes
/// (truncated after 64 blocks: the reader must decide from the header).
fn rle_frame(n: u64) -> Vec<u8> {
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x38];
    frame.extend_from_slice(&n.to_le_bytes());
    let block = 128u64 << 10;
    let mut left = n;
    for _ in 0..64 {
        if left == 0 {
            break;
        }
        let size = left.min(block);
        left -= size;
        let header = ((size as u32) << 3) | (1 << 1) | u32::from(left == 0);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

/// A store that lists one pack as larger than it is, and answers its
/// reads from the real bytes.
struct Lying {
    inner: Arc<MemStore>,
    extra: u64,
    name: String,
    bytes: Vec<u8>,
}

impl ObjectStore for Lying {
    fn describe(&self) -> String {
        "lying://".into()
    }
    fn put(&self, key: &str, data: Bytes) -> Result<(), repo::store::Error> {
        self.inner.put(key, data)
    }
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, repo::store::Error> {
        if key == self.name {
            if self.bytes.len() as u64 > max {
                return Err(repo::store::Error::oversized(
                    self.describe(),
                    "get",
                    key,
                    max,
                ));
            }
            return Ok(self.bytes.clone());
        }
        self.inner.get(key, max)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, repo::store::Error> {
        if key == self.name {
            let start = (offset as usize).min(self.bytes.len());
            let end = (offset.saturating_add(len) as usize).min(self.bytes.len());
            return Ok(self.bytes[start..end].to_vec());
        }
        self.inner.get_range(key, offset, len)
    }
    fn head(&self, key: &str) -> Result<Option<u64>, repo::store::Error> {
        if key == self.name {
            return Ok(Some(self.bytes.len() as u64 + self.extra));
        }
        self.inner.head(key)
    }
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<repo::ObjectInfo>, repo::store::Error> {
        let mut page = self.inner.list_page(prefix, after, max)?;
        if self.name.starts_with(prefix) && after.is_none_or(|a| self.name.as_str() > a) {
            page.push(repo::ObjectInfo {
                key: self.name.clone(),
                size: self.bytes.len() as u64 + self.extra,
            });
            page.sort_by(|a, b| a.key.cmp(&b.key));
            page.truncate(max);
        }
        Ok(page)
    }
    fn delete(&self, key: &str) -> Result<(), repo::store::Error> {
        self.inner.delete(key)
    }
}
