//! The on-disk record: every block, trim and flush marker appended to a
//! segment. Pure encoding and decoding; no IO.
//!
//! ```text
//! 0  magic   u32  "CBLK"
//! 4  kind    u8   1 data, 2 trim, 3 flush marker
//! 5  flags   u8   bits 0-1 compression (0 none, 1 lz4, 2 zstd),
//!                 bit 2 encrypted, bit 3 relocated by compaction
//! 6  -       u16
//! 8  plen    u32  payload bytes
//! 12 -       u32
//! 16 volume  u64  id of the volume that wrote it
//! 24 lba     u64  block index (trim: first block)
//! 32 generation     u64  pool-wide generation, unique and increasing
//! 40 psum    u64  blake3(payload)[..8]
//! 48 hsum    u64  blake3(bytes 0..48)[..8]
//! 56 payload      data: the (compressed, encrypted) block; trim: count u64
//! ```
//! Two checksums let recovery tell a torn tail (bad header: stop) from a bad
//! payload behind a good header (skip by length, and the block reads as EIO).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const BLOCK: usize = 4096;
pub const HEADER_LEN: usize = 56;
const MAGIC: u32 = u32::from_le_bytes(*b"CBLK");
pub const KIND_DATA: u8 = 1;
pub const KIND_TRIM: u8 = 2;
pub const KIND_FLUSH: u8 = 3;
pub const FLAG_ENCRYPTED: u8 = 1 << 2;
pub const FLAG_RELOCATED: u8 = 1 << 3;
/// Largest payload a record may claim (a block, plus AEAD tag, with slack).
pub const MAX_PAYLOAD: u32 = (BLOCK + 256) as u32;
/// Compressed blocks are kept only when they save at least this much.
const MIN_SAVING: usize = 512;

/// How a volume compresses its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    fn bits(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u8,
    pub plen: u32,
    pub volume: u64,
    pub lba: u64,
    pub generation: u64,
    pub psum: u64,
}

impl Header {
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.plen as usize
    }

    pub fn relocated(&self) -> bool {
        self.flags & FLAG_RELOCATED != 0
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.kind;
        out[5] = self.flags;
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&self.plen.to_le_bytes());
        out[12..16].fill(0);
        out[16..24].copy_from_slice(&self.volume.to_le_bytes());
        out[24..32].copy_from_slice(&self.lba.to_le_bytes());
        out[32..40].copy_from_slice(&self.generation.to_le_bytes());
        out[40..48].copy_from_slice(&self.psum.to_le_bytes());
        let hsum = sum(&out[0..48]);
        out[48..56].copy_from_slice(&hsum.to_le_bytes());
    }

    /// Parses and checks a header; None if it is not a valid one.
    pub fn read(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        if u32_at(0) != MAGIC || u64_at(48) != sum(&bytes[0..48]) {
            return None;
        }
        let header = Header {
            kind: bytes[4],
            flags: bytes[5],
            plen: u32_at(8),
            volume: u64_at(16),
            lba: u64_at(24),
            generation: u64_at(32),
            psum: u64_at(40),
        };
        let sane = matches!(header.kind, KIND_DATA | KIND_TRIM | KIND_FLUSH)
            && header.plen <= MAX_PAYLOAD
            && header.generation != 0;
        sane.then_some(header)
    }

    /// The AEAD nonce: unique because generations are never reused.
    fn nonce(&self) -> XNonce {
        let mut n = [0u8; 24];
        n[0..8].copy_from_slice(&self.generation.to_le_bytes());
        n[8..16].copy_from_slice(&self.volume.to_le_bytes());
        n[16..24].copy_from_slice(&self.lba.to_le_bytes());
        XNonce::from(n)
    }

    /// Associated data: the block's identity, so a record moved to another
    /// address fails to decrypt.
    fn aad(&self) -> [u8; 24] {
        let mut a = [0u8; 24];
        a[0..8].copy_from_slice(&self.volume.to_le_bytes());
        a[8..16].copy_from_slice(&self.lba.to_le_bytes());
        a[16..24].copy_from_slice(&self.generation.to_le_bytes());
        a
    }
}

/// A 64-bit blake3 checksum.
pub fn sum(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[0..8].try_into().unwrap())
}

/// The data key, derived from the pool's master key.
pub struct Cipher(XChaCha20Poly1305);

impl Cipher {
    pub fn new(master: &[u8; 32]) -> Cipher {
        let key = blake3::derive_key("cairn blocks 2026 volume data key", master);
        Cipher(XChaCha20Poly1305::new(&key.into()))
    }

    /// A fingerprint of the master key stored with encrypted volumes, so a
    /// wrong key is reported as such instead of as corruption.
    pub fn check_value(master: &[u8; 32]) -> [u8; 16] {
        let v = blake3::derive_key("cairn blocks 2026 key check", master);
        v[0..16].try_into().unwrap()
    }
}

/// Appends one data record for `block` to `out`.
pub fn encode_block(
    out: &mut Vec<u8>,
    volume: u64,
    lba: u64,
    generation: u64,
    block: &[u8],
    compression: Compression,
    cipher: Option<&Cipher>,
) -> Result<(), &'static str> {
    debug_assert_eq!(block.len(), BLOCK);
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    let mut flags = 0u8;
    let compressed = match compression {
        _ if !likely_compressible(block) => None,
        Compression::None => None,
        Compression::Lz4 => Some(lz4_flex::block::compress(block)),
        Compression::Zstd => zstd::bulk::compress(block, 1).ok(),
    };
    match compressed {
        Some(c) if c.len() + MIN_SAVING <= BLOCK => {
            flags |= compression.bits();
            out.extend_from_slice(&c);
        }
        _ => out.extend_from_slice(block),
    }
    let mut header = Header {
        kind: KIND_DATA,
        flags,
        plen: 0,
        volume,
        lba,
        generation,
        psum: 0,
    };
    if let Some(cipher) = cipher {
        header.flags |= FLAG_ENCRYPTED;
        // In place, then the tag after the ciphertext: no second buffer.
        let tag = cipher
            .0
            .encrypt_in_place_detached(
                &header.nonce(),
                &header.aad(),
                &mut out[start + HEADER_LEN..],
            )
            .map_err(|_| "encryption failed")?;
        out.extend_from_slice(&tag);
    }
    header.plen = (out.len() - start - HEADER_LEN) as u32;
    header.psum = sum(&out[start + HEADER_LEN..]);
    header.write(&mut out[start..start + HEADER_LEN]);
    Ok(())
}

/// A cheap early-abort test, as filesystems do before compressing: 512
/// sampled bytes of random (incompressible) data show about 221 distinct
/// values, text and structured data far fewer. Blocks above the threshold
/// skip the compressor, which would spend most of the write path's CPU
/// only to store them raw.
fn likely_compressible(block: &[u8]) -> bool {
    let mut seen = [false; 256];
    let mut distinct = 0u32;
    // An odd stride: data built from 8-byte words shows its full variety.
    for b in block.iter().step_by(7).take(512) {
        if !seen[*b as usize] {
            seen[*b as usize] = true;
            distinct += 1;
        }
    }
    distinct < 200
}

/// Appends a marker record (trim of `count` blocks, or a flush marker).
pub fn encode_marker(
    out: &mut Vec<u8>,
    kind: u8,
    volume: u64,
    lba: u64,
    generation: u64,
    count: u64,
) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    let payload = count.to_le_bytes();
    out.extend_from_slice(&payload);
    let header = Header {
        kind,
        flags: 0,
        plen: payload.len() as u32,
        volume,
        lba,
        generation,
        psum: sum(&payload),
    };
    header.write(&mut out[start..start + HEADER_LEN]);
}

/// Why a record could not be turned back into a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadHeader,
    BadChecksum,
    WrongAddress { lba: u64 },
    NeedKey,
    Decrypt,
    Decompress,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadHeader => write!(f, "record header checksum mismatch"),
            DecodeError::BadChecksum => write!(f, "block checksum mismatch"),
            DecodeError::WrongAddress { lba } => write!(f, "record belongs to block {lba}"),
            DecodeError::NeedKey => write!(f, "block is encrypted and no key is loaded"),
            DecodeError::Decrypt => write!(f, "authenticated decryption failed"),
            DecodeError::Decompress => write!(f, "decompression failed"),
        }
    }
}

/// Checks a whole record's header and payload checksums (no key needed).
pub fn check_record(rec: &[u8]) -> Result<Header, DecodeError> {
    let header = Header::read(rec).ok_or(DecodeError::BadHeader)?;
    let payload = rec
        .get(HEADER_LEN..header.record_len())
        .ok_or(DecodeError::BadChecksum)?;
    if sum(payload) != header.psum {
        return Err(DecodeError::BadChecksum);
    }
    Ok(header)
}

/// Decodes a data record into `out` (one block), checking everything.
pub fn decode_block(
    rec: &[u8],
    lba: u64,
    cipher: Option<&Cipher>,
    out: &mut [u8],
) -> Result<(), DecodeError> {
    let header = check_record(rec)?;
    if header.kind != KIND_DATA || header.lba != lba {
        return Err(DecodeError::WrongAddress { lba: header.lba });
    }
    let stored = &rec[HEADER_LEN..header.record_len()];
    // Only an encrypted payload needs a private copy (to decrypt into).
    let decrypted;
    let payload: &[u8] = if header.flags & FLAG_ENCRYPTED != 0 {
        let cipher = cipher.ok_or(DecodeError::NeedKey)?;
        let mut copy = stored.to_vec();
        cipher
            .0
            .decrypt_in_place(&header.nonce(), &header.aad(), &mut copy)
            .map_err(|_| DecodeError::Decrypt)?;
        decrypted = copy;
        &decrypted
    } else {
        stored
    };
    match header.flags & 3 {
        0 if payload.len() == BLOCK => out.copy_from_slice(payload),
        1 => {
            let n = lz4_flex::block::decompress_into(payload, out)
                .map_err(|_| DecodeError::Decompress)?;
            if n != BLOCK {
                return Err(DecodeError::Decompress);
            }
        }
        2 => {
            let v = zstd::bulk::decompress(payload, BLOCK).map_err(|_| DecodeError::Decompress)?;
            if v.len() != BLOCK {
                return Err(DecodeError::Decompress);
            }
            out.copy_from_slice(&v);
        }
        _ => return Err(DecodeError::Decompress),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(compression: Compression, cipher: Option<&Cipher>, block: &[u8]) -> Vec<u8> {
        let mut rec = vec![];
        encode_block(&mut rec, 7, 42, 9, block, compression, cipher).unwrap();
        let mut out = vec![0u8; BLOCK];
        decode_block(&rec, 42, cipher, &mut out).unwrap();
        assert_eq!(out, block);
        rec
    }

    #[test]
    fn every_codec_round_trips_and_compression_saves() {
        let text: Vec<u8> = (0..BLOCK).map(|i| b"cairn "[i % 6]).collect();
        let noise: Vec<u8> = (0..BLOCK as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let key = Cipher::new(&[3u8; 32]);
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let rec = roundtrip(c, None, &text);
            if c != Compression::None {
                assert!(rec.len() < BLOCK / 2, "{c:?} saved nothing");
            }
            roundtrip(c, Some(&key), &text);
            roundtrip(c, Some(&key), &noise);
        }
    }

    #[test]
    fn noise_skips_the_compressor_and_text_does_not() {
        let noise: Vec<u8> = (0..BLOCK as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8 ^ (i >> 3) as u8)
            .collect();
        let mut rec = vec![];
        encode_block(&mut rec, 1, 0, 1, &noise, Compression::Lz4, None).unwrap();
        assert_eq!(rec.len(), HEADER_LEN + BLOCK);
        assert!(!likely_compressible(&noise));
        let text: Vec<u8> = b"INSERT INTO t VALUES (42, 'cairn');\n"
            .iter()
            .cycle()
            .take(BLOCK)
            .copied()
            .collect();
        assert!(likely_compressible(&text));
    }

    #[test]
    fn flipped_bytes_and_wrong_keys_are_caught() {
        let block = vec![0xabu8; BLOCK];
        let key = Cipher::new(&[1u8; 32]);
        let mut rec = vec![];
        encode_block(&mut rec, 1, 5, 2, &block, Compression::Lz4, Some(&key)).unwrap();
        let mut out = vec![0u8; BLOCK];
        let wrong = Cipher::new(&[2u8; 32]);
        assert_eq!(
            decode_block(&rec, 5, Some(&wrong), &mut out),
            Err(DecodeError::Decrypt)
        );
        assert_eq!(
            decode_block(&rec, 5, None, &mut out),
            Err(DecodeError::NeedKey)
        );
        assert_eq!(
            decode_block(&rec, 6, Some(&key), &mut out),
            Err(DecodeError::WrongAddress { lba: 5 })
        );
        for i in [0, 20, HEADER_LEN + 3, rec.len() - 1] {
            let mut bad = rec.clone();
            bad[i] ^= 1;
            assert!(
                decode_block(&bad, 5, Some(&key), &mut out).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn plaintext_is_not_on_disk_when_encrypted() {
        let block: Vec<u8> = b"SECRET-PATTERN-"
            .iter()
            .cycle()
            .take(BLOCK)
            .copied()
            .collect();
        let key = Cipher::new(&[9u8; 32]);
        let mut rec = vec![];
        encode_block(&mut rec, 1, 0, 1, &block, Compression::None, Some(&key)).unwrap();
        assert!(!rec.windows(14).any(|w| w == b"SECRET-PATTERN"));
    }
}
