//! The repository key: where it comes from ([`Key`]: a key file or a
//! passphrase), how it becomes the subkeys the format uses ([`Keys`]), and
//! sealing with XChaCha20-Poly1305.
//!
//! A master key of 32 bytes is the key file's content, or argon2id of the
//! passphrase with the salt and costs stored in the repo's `config` object
//! ([`KdfParams`]). The master key never touches the store; subkeys are
//! `blake3::derive_key(context, master ‖ repo_id)` for each purpose:
//! - chunk ids (keyed blake3 of a chunk's plaintext, so ids do not reveal
//!   content to someone holding the bucket but not the key);
//! - the AEAD key sealing chunks, pack indexes and manifests;
//! - manifest ids;
//! - the key check stored in `config`: a wrong key is refused before any
//!   object is decrypted ([`super::Error::WrongKey`]).
//!
//! A sealed blob is `nonce (24 random bytes) ‖ ciphertext ‖ tag (16)`, its
//! associated data binding it to what it is (a chunk's id, "index",
//! "manifest").

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Bytes a sealed blob adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_BYTES + 16;
const NONCE_BYTES: usize = 24;

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the user holds.
#[derive(Clone)]
pub enum Key {
    /// 32 bytes, as in `cairn up --key-file`.
    Raw([u8; 32]),
    /// Stretched with argon2id (parameters in the repo's config).
    Passphrase(String),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Raw(_) => f.write_str("Key::Raw(..)"),
            Key::Passphrase(_) => f.write_str("Key::Passphrase(..)"),
        }
    }
}

impl Key {
    /// Reads a key file: 32 raw bytes or 64 hex digits (surrounding
    /// whitespace ignored), the same format as `cairn up --key-file`. The
    /// file is opened without following a link, must be a regular file and
    /// small ([`super::Access::read_small_file`]).
    pub fn from_file(path: &Path) -> Result<Key> {
        super::Access::anywhere().key("key-file", path)
    }

    /// Parses a key file's content. The error does not say how long the
    /// content was (it may be some other file's).
    pub fn from_key_bytes(bytes: &[u8]) -> std::result::Result<Key, String> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Ok(Key::Raw(raw));
        }
        let parsed = std::str::from_utf8(bytes)
            .ok()
            .map(str::trim)
            .filter(|t| t.len() == 64)
            .and_then(unhex)
            .and_then(|v| <[u8; 32]>::try_from(v).ok());
        parsed
            .map(Key::Raw)
            .ok_or_else(|| "expected 32 raw bytes or 64 hex digits".to_owned())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key::Raw(bytes)
    }

    pub fn passphrase(passphrase: impl Into<String>) -> Key {
        Key::Passphrase(passphrase.into())
    }
}

/// Argon2id parameters, stored in the config of a passphrase repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// 16 random bytes, hex.
    pub salt: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// Fresh parameters with a random salt. The defaults (64 MiB, 3 passes)
    /// follow the argon2 RFC's second recommendation; tests pass less.
    pub fn new(m_cost_kib: u32, t_cost: u32) -> KdfParams {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt);
        KdfParams {
            algorithm: "argon2id".into(),
            salt: hex(&salt),
            m_cost_kib,
            t_cost,
            p_cost: 1,
        }
    }

    /// Refuses costs outside what `init` writes, before anything is
    /// allocated: the config is not authenticated, and argon2 allocates
    /// `m_cost_kib` KiB (a crafted 4 GiB aborted the process).
    pub fn check(&self) -> Result<()> {
        let in_range = super::KDF_M_COST_KIB.contains(&self.m_cost_kib)
            && super::KDF_T_COST.contains(&self.t_cost)
            && super::KDF_P_COST.contains(&self.p_cost);
        if !in_range {
            return Err(Error::corrupted(
                super::CONFIG_KEY,
                None,
                format!(
                    "kdf costs out of range (m_cost_kib {:?}, t_cost {:?}, p_cost {:?})",
                    super::KDF_M_COST_KIB,
                    super::KDF_T_COST,
                    super::KDF_P_COST
                ),
            ));
        }
        Ok(())
    }

    fn derive(&self, repo: &str, passphrase: &str) -> Result<[u8; 32]> {
        let bad = |reason: String| Error::UnsupportedVersion {
            repo: format!("{repo} (kdf: {reason})"),
            found: 0,
            supported: super::FORMAT_VERSION,
        };
        if self.algorithm != "argon2id" {
            return Err(bad(format!("unknown algorithm {:?}", self.algorithm)));
        }
        // The config is not authenticated: costs outside what `init` writes
        // could exhaust memory or time.
        self.check()?;
        let salt = unhex(&self.salt).ok_or_else(|| bad("salt is not hex".into()))?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| bad(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
            .map_err(|e| bad(e.to_string()))?;
        Ok(out)
    }
}

/// The subkeys of one repository, derived from the master key.
pub struct Keys {
    chunk_id: [u8; 32],
    manifest_id: [u8; 32],
    key_check: [u8; 32],
    aead: XChaCha20Poly1305,
}

impl Keys {
    /// Derives the subkeys. `kdf` is the config's (passphrase repos).
    pub fn derive(repo: &str, key: &Key, kdf: Option<&KdfParams>, repo_id: &[u8]) -> Result<Keys> {
        let master = match (key, kdf) {
            (Key::Raw(bytes), None) => *bytes,
            (Key::Passphrase(p), Some(kdf)) => kdf.derive(repo, p)?,
            (Key::Raw(_), Some(_)) => {
                return Err(Error::WrongKey {
                    repo: repo.to_owned(),
                    reason: "the repository is protected by a passphrase, not a key file".into(),
                });
            }
            (Key::Passphrase(_), None) => {
                return Err(Error::WrongKey {
                    repo: repo.to_owned(),
                    reason: "the repository is protected by a key file, not a passphrase".into(),
                });
            }
        };
        let mut material = master.to_vec();
        material.extend_from_slice(repo_id);
        let sub = |purpose: &str| blake3::derive_key(purpose, &material);
        Ok(Keys {
            chunk_id: sub("cairn repo v1 chunk id"),
            manifest_id: sub("cairn repo v1 manifest id"),
            key_check: sub("cairn repo v1 key check"),
            aead: XChaCha20Poly1305::new(&sub("cairn repo v1 aead").into()),
        })
    }

    /// The value `config` stores to recognise this key.
    pub fn key_check(&self, repo_id: &[u8]) -> String {
        hex(blake3::keyed_hash(&self.key_check, repo_id).as_bytes())
    }

    /// A chunk's id: keyed blake3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.chunk_id, data).as_bytes()
    }

    /// A manifest's id: keyed blake3 of its encoded plaintext, 16 bytes.
    pub fn manifest_id(&self, plain: &[u8]) -> String {
        hex(&blake3::keyed_hash(&self.manifest_id, plain).as_bytes()[..16])
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        random_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any length we produce");
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a sealed blob; `None` when it was altered (or sealed under
    /// another key or with other associated data).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
    }
}
