//! The repository's objects, byte for byte (`docs/repo-format.md` is the
//! prose version): the `config` object, pack files and manifests. Pure:
//! encoding and decoding only, no store access.
//!
//! Invariants kept here:
//! - a pack's name is the blake3 of its bytes, so any change to a pack is
//!   visible without the key;
//! - every blob is sealed with associated data naming what it is (a chunk's
//!   id, the index, a manifest's id), so blobs cannot be swapped;
//! - a chunk's plaintext hashes (keyed) to its id, checked on every read;
//! - every length read from the store is bounded before it allocates
//!   ([`Bounds`]): a manifest decompresses to at most [`MAX_MANIFEST_BYTES`]
//!   (its frame must declare its size), a chunk to at most the config's
//!   chunk size, a pack index holds at most [`MAX_PACK_ENTRIES`] entries,
//!   and a trailer pointing outside those limits is `Corrupted` before
//!   anything is read. A repository's key does not make its bytes trusted:
//!   whoever holds the key (a tenant) can craft any of them.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::key::{KdfParams, Keys, hex};

/// The `format` field of every config.
pub const FORMAT_NAME: &str = "cairn-repo";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The store key of the config object.
pub const CONFIG_KEY: &str = "config";
/// Pack objects live under this prefix.
pub const PACKS: &str = "packs/";
/// Manifest objects live under this prefix.
pub const MANIFESTS: &str = "manifests/";

pub const PACK_MAGIC: &[u8; 8] = b"CRNPACK1";
pub const PACK_END_MAGIC: &[u8; 8] = b"CRNPKEND";
/// index offset (u64 LE) ‖ index length (u32 LE) ‖ [`PACK_END_MAGIC`].
pub const PACK_TRAILER: usize = 8 + 4 + 8;
const INDEX_AAD: &[u8] = b"cairn pack index";
const MANIFEST_AAD: &[u8] = b"cairn manifest ";

/// The largest manifest plaintext (its decompressed size) read or written.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest sealed manifest object read (compressed, plus overhead).
pub const MAX_MANIFEST_OBJECT: u64 = MAX_MANIFEST_BYTES + (1 << 20);
/// The largest `config` object read.
pub const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Chunks per pack: a pack is sealed when it holds this many, whatever its
/// size, so an index stays below [`MAX_INDEX_BYTES`].
pub const MAX_PACK_ENTRIES: usize = 1 << 20;
/// Bytes of one index entry, postcard-encoded, at most (a 32-byte id and
/// three varint u32s).
const INDEX_ENTRY_BYTES_MAX: u64 = 32 + 3 * 5;
/// The largest sealed index a pack may have.
pub const MAX_INDEX_BYTES: u64 =
    MAX_PACK_ENTRIES as u64 * INDEX_ENTRY_BYTES_MAX + 16 + super::key::SEAL_OVERHEAD as u64;

/// Limits on what one repository's objects may hold, from its (checked)
/// config: what readers allocate at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The config's chunk size: a chunk's plaintext is at most this.
    pub chunk_bytes: u64,
    /// The config's pack size target.
    pub pack_bytes: u64,
}

impl Bounds {
    pub fn of(config: &Config) -> Bounds {
        Bounds {
            chunk_bytes: config.chunk_bytes,
            pack_bytes: config.pack_bytes,
        }
    }

    /// A sealed chunk: codec byte, at most `chunk_bytes` (raw when zstd
    /// does not shrink it), seal overhead.
    pub fn max_sealed_chunk(&self) -> u64 {
        self.chunk_bytes + 1 + super::key::SEAL_OVERHEAD as u64
    }

    /// The largest pack object: push seals a pack at `pack_bytes` (one
    /// chunk over at most); prune's repacking may add one old pack's live
    /// blobs before it checks, so twice that, plus the index and framing.
    pub fn max_pack_bytes(&self) -> u64 {
        let blobs = 2 * (self.pack_bytes + self.max_sealed_chunk());
        PACK_MAGIC.len() as u64 + blobs + MAX_INDEX_BYTES + PACK_TRAILER as u64
    }
}

/// Codec byte in front of a chunk's plaintext before sealing.
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// The plaintext `config` object (JSON): what is needed before the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    pub version: u32,
    /// 16 random bytes, hex; mixed into every subkey.
    pub repo_id: String,
    /// Volumes are cut into chunks of this many bytes at aligned offsets.
    pub chunk_bytes: u64,
    /// A pack is sealed once it holds this many bytes.
    pub pack_bytes: u64,
    pub zstd_level: i32,
    /// Present for passphrase repos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// keyed blake3 (key-check subkey) of the repo id, hex.
    pub key_check: String,
    pub created_ms: u64,
}

/// Where a chunk lives inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: [u8; 32],
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub len: u32,
    /// Length of the chunk's plaintext.
    pub raw_len: u32,
}

/// A chunk of a volume: all zeroes (a hole, not stored) or stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRef {
    Hole,
    Data([u8; 32]),
}

/// One volume of an app snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// The volume's name in the pool when pushed (`<app>/<pvc>`).
    pub name: String,
    /// The pool snapshot it was read from (`name@snapshot`).
    pub snapshot: String,
    /// That pool snapshot's creation time: a later push diffs against
    /// `name@snapshot` only while the pool's snapshot of that name is still
    /// this one (names can be reused after a delete).
    pub snapshot_created_ms: u64,
    pub size: u64,
    pub chunk_bytes: u64,
    /// One entry per chunk, `size.div_ceil(chunk_bytes)` of them.
    pub chunks: Vec<ChunkRef>,
}

/// One app snapshot in the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub app: String,
    pub snapshot: String,
    pub created_ms: u64,
    /// The manifest this push was incremental to.
    pub parent: Option<String>,
    /// The app's config and metadata, opaque to the repository.
    #[serde(with = "json_text")]
    pub meta: serde_json::Value,
    pub volumes: Vec<VolumeEntry>,
    /// Bytes of packs the push that wrote this manifest added.
    pub added_bytes: u64,
}

/// postcard cannot hold a free-form JSON value: it is kept as its text.
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

impl Manifest {
    /// Logical bytes of every volume.
    pub fn logical_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.size).sum()
    }

    /// Encodes and seals; returns (id, object bytes). A manifest above
    /// [`MAX_MANIFEST_BYTES`] (about 2 TiB of volumes at 1 MiB chunks) is
    /// refused: no reader would open it.
    pub fn seal(&self, keys: &Keys) -> Result<(String, Vec<u8>)> {
        let plain = postcard::to_allocvec(self).expect("manifests encode");
        if plain.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the snapshot's manifest would take {} bytes, above the {MAX_MANIFEST_BYTES} a manifest may hold (use larger chunks)",
                plain.len()
            )));
        }
        let id = keys.manifest_id(&plain);
        let packed = zstd::bulk::compress(&plain, 3).expect("zstd compresses in memory");
        let sealed = keys.seal(&packed, &manifest_aad(&id));
        Ok((id, sealed))
    }

    /// Opens a manifest object read from `manifests/<id>`.
    pub fn open(keys: &Keys, bounds: &Bounds, id: &str, sealed: &[u8]) -> Result<Manifest> {
        let object = format!("{MANIFESTS}{id}");
        let bad = |reason: &str| Error::corrupted(object.clone(), None, reason);
        let packed = keys
            .open(sealed, &manifest_aad(id))
            .ok_or_else(|| bad("authentication failed (altered, or not this manifest)"))?;
        let plain = decompress_manifest(&packed).map_err(|reason| bad(&reason))?;
        if keys.manifest_id(&plain) != id {
            return Err(bad("content does not hash to the manifest's id"));
        }
        let manifest: Manifest =
            postcard::from_bytes(&plain).map_err(|e| bad(&format!("decode: {e}")))?;
        if manifest.version != FORMAT_VERSION {
            return Err(bad(&format!("manifest version {}", manifest.version)));
        }
        for volume in &manifest.volumes {
            if volume.chunk_bytes != bounds.chunk_bytes {
                return Err(bad(&format!(
                    "volume {:?}: chunk size {} is not the repository's {}",
                    volume.name, volume.chunk_bytes, bounds.chunk_bytes
                )));
            }
            if volume.chunks.len() as u64 != volume.size.div_ceil(volume.chunk_bytes) {
                return Err(bad(&format!(
                    "volume {:?}: chunk list does not match its size",
                    volume.name
                )));
            }
        }
        Ok(manifest)
    }
}

/// A manifest's zstd frame, decompressed only when it declares its size
/// and that size is at most [`MAX_MANIFEST_BYTES`]: the output buffer is
/// that size and decompression fails rather than grow it (a bomb is
/// `Corrupted`, never an allocation).
fn decompress_manifest(packed: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let declared = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(n)) => n,
        Ok(None) => return Err("zstd frame does not declare its size".into()),
        Err(_) => return Err("not a zstd frame".into()),
    };
    if declared > MAX_MANIFEST_BYTES {
        return Err(format!(
            "declares {declared} bytes, above the {MAX_MANIFEST_BYTES} a manifest may hold"
        ));
    }
    let plain =
        zstd::bulk::decompress(packed, declared as usize).map_err(|e| format!("zstd: {e}"))?;
    if plain.len() as u64 != declared {
        return Err("zstd frame is shorter than it declares".into());
    }
    Ok(plain)
}

fn manifest_aad(id: &str) -> Vec<u8> {
    [MANIFEST_AAD, id.as_bytes()].concat()
}

/// Seals a chunk: `codec ‖ payload`, zstd when that is smaller.
pub fn seal_chunk(keys: &Keys, id: &[u8; 32], data: &[u8], zstd_level: i32) -> Vec<u8> {
    let mut plain = Vec::with_capacity(data.len() + 1);
    let attempt = if incompressible(data) {
        Err(std::io::Error::other("sampled as incompressible"))
    } else {
        zstd::bulk::compress(data, zstd_level)
    };
    match attempt {
        Ok(packed) if packed.len() < data.len() => {
            plain.push(CODEC_ZSTD);
            plain.extend_from_slice(&packed);
        }
        _ => {
            plain.push(CODEC_RAW);
            plain.extend_from_slice(data);
        }
    }
    keys.seal(&plain, id)
}

/// Bytes of each of the three samples [`incompressible`] compresses.
const SAMPLE_BYTES: usize = 8 << 10;

/// Whether samples of the chunk (start, middle, end) do not shrink by 3%
/// under fast zstd: then compressing the whole chunk is skipped. Chunks
/// under 64 KiB are always tried.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 64 << 10 {
        return false;
    }
    let mut sample = Vec::with_capacity(3 * SAMPLE_BYTES);
    for start in [0, data.len() / 2, data.len() - SAMPLE_BYTES] {
        sample.extend_from_slice(&data[start..start + SAMPLE_BYTES]);
    }
    match zstd::bulk::compress(&sample, 1) {
        Ok(packed) => packed.len() * 100 > sample.len() * 97,
        Err(_) => false,
    }
}

/// Opens a sealed chunk read from `object` at `offset` and checks that its
/// plaintext is the chunk `id`.
pub fn open_chunk(
    keys: &Keys,
    object: &str,
    offset: u64,
    entry: &IndexEntry,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::corrupted(object, Some(offset), reason);
    let plain = keys.open(sealed, &entry.id).ok_or_else(|| {
        bad(format!(
            "chunk {}: authentication failed",
            hex(&entry.id[..8])
        ))
    })?;
    // `open_index` bounded `raw_len` by the chunk size; this is its pair.
    if entry.raw_len as u64 > *super::CHUNK_BYTES.end() {
        return Err(bad(format!(
            "chunk {}: larger than any chunk",
            hex(&entry.id[..8])
        )));
    }
    let data = match plain.split_first() {
        Some((&CODEC_RAW, data)) => data.to_vec(),
        Some((&CODEC_ZSTD, packed)) => zstd::bulk::decompress(packed, entry.raw_len as usize)
            .map_err(|e| bad(format!("chunk {}: zstd: {e}", hex(&entry.id[..8]))))?,
        _ => return Err(bad("unknown chunk codec".into())),
    };
    if data.len() != entry.raw_len as usize || keys.chunk_id(&data) != entry.id {
        return Err(bad(format!(
            "chunk {}: content does not hash to its id",
            hex(&entry.id[..8])
        )));
    }
    Ok(data)
}

/// Builds one pack in memory: header, sealed chunks, sealed index, trailer.
pub struct PackWriter {
    bytes: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl Default for PackWriter {
    fn default() -> PackWriter {
        PackWriter::new()
    }
}

impl PackWriter {
    pub fn new() -> PackWriter {
        PackWriter {
            bytes: PACK_MAGIC.to_vec(),
            entries: vec![],
        }
    }

    pub fn add(&mut self, id: [u8; 32], sealed: &[u8], raw_len: usize) {
        let offset = u32::try_from(self.bytes.len()).expect("packs stay below 4 GiB");
        self.bytes.extend_from_slice(sealed);
        self.entries.push(IndexEntry {
            id,
            offset,
            len: sealed.len() as u32,
            raw_len: raw_len as u32,
        });
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn n_entries(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the pack must be sealed now: it reached `pack_bytes`, or
    /// [`MAX_PACK_ENTRIES`] chunks.
    pub fn is_full(&self, pack_bytes: u64) -> bool {
        self.bytes.len() as u64 >= pack_bytes || self.entries.len() >= MAX_PACK_ENTRIES
    }

    /// Seals the index and the trailer; returns (object key, bytes,
    /// entries).
    pub fn finish(mut self, keys: &Keys) -> (String, Vec<u8>, Vec<IndexEntry>) {
        let index = postcard::to_allocvec(&self.entries).expect("index encodes");
        let sealed = keys.seal(&index, INDEX_AAD);
        let index_offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(&sealed);
        self.bytes.extend_from_slice(&index_offset.to_le_bytes());
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(PACK_END_MAGIC);
        assert!(
            self.bytes.len() < u32::MAX as usize,
            "packs stay below 4 GiB"
        );
        let name = format!("{PACKS}{}", blake3::hash(&self.bytes).to_hex());
        (name, self.bytes, self.entries)
    }
}

/// Parses a pack's trailer from its last bytes: (index offset, length).
pub fn parse_trailer(object: &str, size: u64, tail: &[u8]) -> Result<(u64, u64)> {
    let bad = |reason: &str| {
        Error::corrupted(
            object,
            Some(size.saturating_sub(PACK_TRAILER as u64)),
            reason,
        )
    };
    if tail.len() < PACK_TRAILER || size < (PACK_MAGIC.len() + PACK_TRAILER) as u64 {
        return Err(bad("too short for a pack"));
    }
    let t = &tail[tail.len() - PACK_TRAILER..];
    if &t[12..20] != PACK_END_MAGIC {
        return Err(bad("bad pack trailer magic"));
    }
    let offset = u64::from_le_bytes(t[0..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(t[8..12].try_into().expect("4 bytes")) as u64;
    // Unauthenticated: checked arithmetic, a crafted offset must not wrap.
    let end = offset.checked_add(len + PACK_TRAILER as u64);
    if offset < PACK_MAGIC.len() as u64 || end != Some(size) {
        return Err(bad("pack trailer points outside the pack"));
    }
    // Packs stay below 4 GiB (entries hold u32 offsets), indexes below
    // MAX_INDEX_BYTES: checked before the index is read.
    if size >= u32::MAX as u64 {
        return Err(bad("pack is larger than 4 GiB"));
    }
    if len > MAX_INDEX_BYTES {
        return Err(bad("pack index is larger than any index"));
    }
    Ok((offset, len))
}

/// Opens a pack's sealed index.
pub fn open_index(
    keys: &Keys,
    bounds: &Bounds,
    object: &str,
    offset: u64,
    size: u64,
    sealed: &[u8],
) -> Result<Vec<IndexEntry>> {
    let bad = |reason: &str| Error::corrupted(object, Some(offset), reason);
    let plain = keys
        .open(sealed, INDEX_AAD)
        .ok_or_else(|| bad("pack index: authentication failed"))?;
    let entries: Vec<IndexEntry> =
        postcard::from_bytes(&plain).map_err(|_| bad("pack index does not decode"))?;
    if entries.len() > MAX_PACK_ENTRIES {
        return Err(bad("pack index has more entries than a pack holds"));
    }
    for entry in &entries {
        if (entry.offset as u64) < PACK_MAGIC.len() as u64
            || entry.offset as u64 + entry.len as u64 > offset
        {
            return Err(bad("pack index entry points outside the pack's blobs"));
        }
        if entry.raw_len as u64 > bounds.chunk_bytes || entry.len as u64 > bounds.max_sealed_chunk()
        {
            return Err(bad(
                "pack index entry is larger than the repository's chunks",
            ));
        }
    }
    debug_assert!(offset <= size);
    Ok(entries)
}
