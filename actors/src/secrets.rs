//! Sealing secrets with the cluster key, so that no plaintext secret
//! reaches the journal (which is immutable, exported and published).
//!
//! # What is sealed
//! - Each value of a Kubernetes Secret's `data` and `stringData`, in every
//!   event that carries an app's objects (`AppCreated`, `AppSnapshotted`,
//!   `AppRolledBack`, `AppPulled`): the app actor seals the decided events
//!   before it appends them ([`ClusterKey::seal_events`]), and the gateway
//!   seals a clone's `--set Secret/…` overrides before the command is built
//!   ([`ClusterKey::seal_override`]).
//! - The value of a workflow param declared `secret: true`, in
//!   `WorkflowStarted` ([`ClusterKey::seal_param`]); the saga unseals it when
//!   it resolves its definition, so it still resumes after a crash.
//!
//! A sealed value is `cairn-sealed:v1:<base64(nonce ‖ ciphertext ‖ tag)>`
//! (XChaCha20-Poly1305, a random 24-byte nonce), sealing the JSON text of
//! the value (so a value comes back with its JSON type). The associated
//! data binds it to its purpose and its tenant: another tenant's sealed
//! value, pasted into a manifest, does not open ([`ErrorCode::PermissionDenied`]).
//! A value already sealed (one that opens) is kept as it is: snapshots,
//! rollbacks and clones copy sealed values, never seal them twice.
//!
//! # Where values are unsealed
//! Only where an app's objects go back to the tenant that owns them:
//! `app get`/`app list` (and `-o yaml`), `events replay`'s app views, and
//! the manifest of a push (the repository encrypts it with the repo key).
//! Event views, `events --json`, exports and the events published on NATS
//! show sealed values (and secret params as `<redacted>`,
//! [`cairn_schema::sealed`]).
//!
//! # The key
//! `<data>/keys/cluster.key`: 32 random bytes, mode 0600 in a 0700
//! directory, made once at the first start ([`ClusterKey::load_or_create`]).
//! The journal does not need it to replay or verify (folds keep sealed text
//! as it is); losing it loses the sealed values, not the journal.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cairn_schema::app::Object;
use cairn_schema::sealed::{SEALED_V1_PREFIX, is_sealed, is_sealed_param};
use cairn_schema::{ApiError, ErrorCode, Event};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::Value;

/// Where the key lives under the data dir.
pub const KEY_FILE: &str = "keys/cluster.key";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// The Secret fields whose values are sealed.
const SECRET_FIELDS: [&str; 2] = ["data", "stringData"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster key {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
}

/// What a sealed value protects: part of its associated data.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A value of a Secret's `data`/`stringData`.
    Object,
    /// A workflow param declared `secret: true`.
    Param,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Object => "object",
            Purpose::Param => "param",
        }
    }
}

/// The cluster key, ready to seal and open.
#[derive(Clone)]
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_bytes(key: &[u8; KEY_BYTES]) -> ClusterKey {
        ClusterKey {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Reads `<data>/keys/cluster.key`, making it first if there is none.
    /// The file is opened without following links, must be a regular file
    /// of exactly 32 bytes, and is made with mode 0600 (written to a
    /// temporary name, synced, then renamed, so a crash leaves no half key).
    pub fn load_or_create(data_dir: &Path) -> Result<ClusterKey, Error> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("KEY_FILE has a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => {
                let meta = file.metadata().map_err(io)?;
                if !meta.is_file() || meta.len() != KEY_BYTES as u64 {
                    return Err(Error::Bad {
                        path: path.clone(),
                        reason: format!("must be a regular file of {KEY_BYTES} bytes"),
                    });
                }
                let mut key = [0u8; KEY_BYTES];
                (&file).read_exact(&mut key).map_err(io)?;
                Ok(ClusterKey::from_bytes(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                crate::repo::random_bytes(&mut key);
                let tmp = dir.join("cluster.key.tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&tmp)
                    .map_err(io)?;
                file.write_all(&key).map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "made the cluster key that seals secrets in the journal");
                Ok(ClusterKey::from_bytes(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn aad(purpose: Purpose, tenant: &str) -> Vec<u8> {
        format!("cairn-sealed/v1\0{}\0{tenant}", purpose.as_str()).into_bytes()
    }

    fn seal(&self, purpose: Purpose, tenant: &str, value: &Value) -> String {
        let plaintext = serde_json::to_vec(value).expect("json values serialize");
        let mut nonce = [0u8; NONCE_BYTES];
        crate::repo::random_bytes(&mut nonce);
        let aad = ClusterKey::aad(purpose, tenant);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length we give it");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{SEALED_V1_PREFIX}{}", B64.encode(blob))
    }

    fn open(&self, purpose: Purpose, tenant: &str, text: &str) -> Result<Value, ApiError> {
        let refuse = |why: &str| {
            ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "a sealed value does not open with this cluster's key for tenant {tenant} ({why})"
                ),
            )
        };
        let encoded = text
            .strip_prefix(SEALED_V1_PREFIX)
            .ok_or_else(|| refuse("unknown version"))?;
        let blob = B64.decode(encoded).map_err(|_| refuse("not base64"))?;
        if blob.len() < NONCE_BYTES + 16 {
            return Err(refuse("too short"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let aad = ClusterKey::aad(purpose, tenant);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| refuse("sealed by another cluster or tenant, or altered"))?;
        serde_json::from_slice(&plaintext).map_err(|_| refuse("not JSON inside"))
    }

    /// Seals every plaintext value of the Secrets among `objects`; values
    /// already sealed must open (for this tenant) and are kept as they are.
    pub fn seal_objects(&self, tenant: &str, objects: &mut [Object]) -> Result<(), ApiError> {
        self.map_secret_values(objects, |value| match value.as_str() {
            Some(text) if is_sealed(text) => {
                self.open(Purpose::Object, tenant, text)?;
                Ok(None)
            }
            _ => Ok(Some(Value::String(self.seal(
                Purpose::Object,
                tenant,
                value,
            )))),
        })
    }

    /// The plaintext of every sealed Secret value among `objects`, for the
    /// tenant that owns them.
    pub fn unseal_objects(&self, tenant: &str, objects: &mut [Object]) -> Result<(), ApiError> {
        self.map_secret_values(objects, |value| match value.as_str() {
            Some(text) if is_sealed(text) => Ok(Some(self.open(Purpose::Object, tenant, text)?)),
            _ => Ok(None),
        })
    }

    /// Applies `f` to each value of each Secret's `data` and `stringData`;
    /// `Some` replaces it. An object is re-serialised only if one changed.
    fn map_secret_values(
        &self,
        objects: &mut [Object],
        f: impl Fn(&Value) -> Result<Option<Value>, ApiError>,
    ) -> Result<(), ApiError> {
        for object in objects.iter_mut().filter(|o| o.kind == "Secret") {
            let mut value = object.value();
            let mut changed = false;
            for field in SECRET_FIELDS {
                let Some(map) = value.get_mut(field).and_then(Value::as_object_mut) else {
                    continue;
                };
                for v in map.values_mut() {
                    if let Some(new) = f(v).map_err(|e| {
                        ApiError::new(e.code, format!("Secret {}: {}", object.name, e.message))
                    })? {
                        *v = new;
                        changed = true;
                    }
                }
            }
            if changed {
                object.json = serde_json::to_string(&value).expect("json values serialize");
            }
        }
        Ok(())
    }

    /// Seals the Secrets of every event that carries an app's objects.
    pub fn seal_events(&self, tenant: &str, events: &mut [Event]) -> Result<(), ApiError> {
        for event in events {
            let objects = match event {
                Event::AppCreated(e) => &mut e.objects,
                Event::AppSnapshotted(e) => &mut e.objects,
                Event::AppRolledBack(e) => &mut e.objects,
                Event::AppPulled(e) => &mut e.objects,
                _ => continue,
            };
            self.seal_objects(tenant, objects)?;
        }
        Ok(())
    }

    /// A secret param's value as `WorkflowStarted` records it: the JSON
    /// text of a sealed string.
    pub fn seal_param(&self, tenant: &str, value: &Value) -> String {
        Value::String(self.seal(Purpose::Param, tenant, value)).to_string()
    }

    /// A param's value from its journaled JSON text: sealed ones are opened.
    pub fn unseal_param(&self, tenant: &str, json_text: &str) -> Result<Value, ApiError> {
        let value: Value = serde_json::from_str(json_text).unwrap_or(Value::Null);
        match value.as_str() {
            Some(text) if is_sealed_param(json_text) => self.open(Purpose::Param, tenant, text),
            _ => Ok(value),
        }
    }

    /// A clone's override, sealed if it sets a Secret's value:
    /// `Secret/<name>.data.<key>=V` (or `.stringData.<key>`) becomes
    /// `…=cairn-sealed:v1:…`, so neither `AppCloned` nor the clone's
    /// objects hold the plaintext. Any other path into a Secret is refused.
    pub fn seal_override(&self, tenant: &str, text: &str) -> Result<String, ApiError> {
        let Some((path, raw)) = text.split_once('=') else {
            return Ok(text.to_owned());
        };
        let Some((target, field)) = path.split_once('.') else {
            return Ok(text.to_owned());
        };
        if !target.starts_with("Secret/") {
            return Ok(text.to_owned());
        }
        let secret_value = field
            .split_once('.')
            .is_some_and(|(f, key)| SECRET_FIELDS.contains(&f) && !key.is_empty());
        if !secret_value {
            return Err(ApiError::invalid(format!(
                "override {path:?}: a Secret is overridden one value at a time, as {target}.data.<key>=V or {target}.stringData.<key>=V"
            )));
        }
        if is_sealed(raw) {
            self.open(Purpose::Object, tenant, raw)?;
            return Ok(text.to_owned());
        }
        let value = cairn_schema::app_history::override_value(raw);
        Ok(format!(
            "{path}={}",
            self.seal(Purpose::Object, tenant, &value)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_schema::app::parse_manifest;
    use serde_json::json;

    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMg==}\nstringData: {token: s3cr3t-token, port: 5432}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: plain}\n";

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(&[7; 32])
    }

    fn objects() -> Vec<Object> {
        parse_manifest(SECRET, Some("a")).unwrap().objects
    }

    #[test]
    fn secret_values_seal_and_unseal_back_exactly() {
        let k = key();
        let plain = objects();
        let mut sealed = plain.clone();
        k.seal_objects("acme", &mut sealed).unwrap();
        let text: String = sealed.iter().map(|o| o.json.as_str()).collect();
        for secret in ["aHVudGVyMg==", "s3cr3t-token", "5432"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains(SEALED_V1_PREFIX));
        // The ConfigMap is not touched.
        assert_eq!(sealed[1], plain[1]);
        let mut opened = sealed.clone();
        k.unseal_objects("acme", &mut opened).unwrap();
        assert_eq!(opened, plain, "a round trip gives the same canonical JSON");
        assert_eq!(opened[0].value()["stringData"]["port"], json!(5432));
        // Another tenant cannot open them, nor can another cluster's key.
        let mut stolen = sealed.clone();
        let e = k.unseal_objects("evil", &mut stolen).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        let mut other = sealed;
        assert!(
            ClusterKey::from_bytes(&[8; 32])
                .unseal_objects("acme", &mut other)
                .is_err()
        );
    }

    #[test]
    fn sealed_values_are_not_sealed_twice() {
        let k = key();
        let mut once = objects();
        k.seal_objects("acme", &mut once).unwrap();
        let mut twice = once.clone();
        k.seal_objects("acme", &mut twice).unwrap();
        assert_eq!(
            once, twice,
            "sealing again leaves sealed values as they are"
        );
        // Another tenant's sealed value is refused, not wrapped.
        let mut foreign = once;
        let e = k.seal_objects("evil", &mut foreign).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn events_with_objects_are_sealed() {
        let k = key();
        let mut events = vec![Event::AppCreated(cairn_schema::event::AppCreated {
            app: "a".into(),
            objects: objects(),
            volumes: Vec::new(),
        })];
        k.seal_events("acme", &mut events).unwrap();
        let Event::AppCreated(created) = &events[0] else {
            unreachable!()
        };
        assert!(!created.objects[0].json.contains("s3cr3t-token"));
    }

    #[test]
    fn params_seal_and_unseal() {
        let k = key();
        let text = k.seal_param("acme", &json!("hunter2"));
        assert!(is_sealed_param(&text) && !text.contains("hunter2"));
        assert_eq!(k.unseal_param("acme", &text).unwrap(), json!("hunter2"));
        assert!(k.unseal_param("evil", &text).is_err());
        assert_eq!(k.unseal_param("acme", "\"plain\"").unwrap(), json!("plain"));
        assert_eq!(k.unseal_param("acme", "3").unwrap(), json!(3));
    }

    #[test]
    fn secret_overrides_are_sealed_and_other_paths_into_a_secret_refused() {
        let k = key();
        let sealed = k
            .seal_override("acme", "Secret/db.stringData.token=hunter2")
            .unwrap();
        assert!(sealed.starts_with("Secret/db.stringData.token=cairn-sealed:v1:"));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            k.seal_override("acme", &sealed).unwrap(),
            sealed,
            "already sealed"
        );
        assert_eq!(
            k.seal_override("acme", "cfg.a=1").unwrap(),
            "cfg.a=1",
            "not a Secret"
        );
        assert!(k.seal_override("acme", "Secret/db.data=x").is_err());
        assert!(k.seal_override("acme", "Secret/db.type=x").is_err());
    }

    #[test]
    fn the_key_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = a.seal_param("t", &json!("x"));
        let b = ClusterKey::load_or_create(dir.path()).unwrap();
        assert_eq!(b.unseal_param("t", &sealed).unwrap(), json!("x"));
        std::fs::write(&path, b"short").unwrap();
        assert!(ClusterKey::load_or_create(dir.path()).is_err());
    }
}
