//! Backup repositories as the journal knows them: the registrations
//! (`repo add`), the commands on repositories, the decider of a
//! registration, and the app snapshot as a repository manifest carries it
//! ([`PushedApp`]). Pure: the repository's bytes live in `cairn-actors`.
//!
//! # Invariants
//! - A registration names where the key comes from (a file on the server),
//!   never the key, and its journaled URL never carries a secret
//!   ([`redact_url`]).
//! - The manifest's metadata ([`PushedApp`]) is enough to rebuild the app on
//!   a cluster that never saw it: objects, volumes (with sizes), and which
//!   manifest volume holds which PVC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::app::{AppSnapshot, AppVolume, Object};
use crate::event::{RepoAdded, RepoRemoved};
use crate::names::check_label;
use crate::{ApiError, ErrorCode, Event};

/// Largest number of repositories one tenant registers.
pub const MAX_REPOS: usize = 64;

/// One registered repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoState {
    pub name: String,
    pub url: String,
    pub key_kind: String,
    pub key_path: String,
    pub added_seq: u64,
    pub added_ms: u64,
}

impl RepoState {
    pub fn exists(&self) -> bool {
        self.added_seq != 0
    }

    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        match event {
            Event::RepoAdded(e) => {
                *self = RepoState {
                    name: e.repo.clone(),
                    url: e.url.clone(),
                    key_kind: e.key_kind.clone(),
                    key_path: e.key_path.clone(),
                    added_seq: seq,
                    added_ms: time_ms,
                }
            }
            Event::RepoRemoved(_) => *self = RepoState::default(),
            _ => {}
        }
    }
}

/// Where a repository's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoKey {
    /// 32 raw bytes or 64 hex digits in a file.
    File(String),
    /// A passphrase in a file (its first line), through argon2id.
    PassphraseFile(String),
    /// No key given: a new repository gets a new key file in the data dir.
    Generate,
}

impl RepoKey {
    pub fn kind(&self) -> &'static str {
        match self {
            RepoKey::File(_) | RepoKey::Generate => "key-file",
            RepoKey::PassphraseFile(_) => "passphrase-file",
        }
    }
}

/// Commands on repositories, and the workflow steps that move data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoCommand {
    Add {
        name: String,
        /// None: a repository in the data dir.
        url: Option<String>,
        key: RepoKey,
    },
    Remove {
        name: String,
    },
    /// The manifests a repository holds (optionally one app's).
    Ls {
        name: String,
        app: Option<String>,
    },
    /// Read and verify everything.
    Check {
        name: String,
    },
    Prune {
        name: String,
        keep_last: u32,
    },
    /// `app.push-upload` (a step of `app-push`).
    Upload {
        repo: String,
        app: String,
        snapshot: String,
        workflow: String,
    },
    /// `app.pull-import` (a step of `app-pull`): the app command is made
    /// once the gateway has read the manifest.
    Import {
        repo: String,
        source: String,
        snapshot: String,
        target: String,
        /// Refuse an existing target (see `AppPullImportBody::create`).
        create: bool,
        workflow: String,
    },
    /// `app.pull-data` (a step of `app-pull`): write the pulled manifest's
    /// chunks into the app's volumes.
    Download {
        app: String,
        workflow: String,
    },
}

impl RepoCommand {
    /// The repository it works on, when it names one.
    pub fn repo(&self) -> Option<&str> {
        match self {
            RepoCommand::Add { name, .. }
            | RepoCommand::Remove { name }
            | RepoCommand::Ls { name, .. }
            | RepoCommand::Check { name }
            | RepoCommand::Prune { name, .. } => Some(name),
            RepoCommand::Upload { repo, .. } | RepoCommand::Import { repo, .. } => Some(repo),
            RepoCommand::Download { .. } => None,
        }
    }
}

/// Checks a repository URL as the API takes it: `file:///abs` or
/// `s3://bucket[/prefix][?…]`.
pub fn check_repo_url(url: &str) -> Result<(), ApiError> {
    if url.len() > 2048 {
        return Err(ApiError::invalid("a repo URL has at most 2048 characters"));
    }
    let ok = url.starts_with("file:///") || url.starts_with("s3://");
    if !ok {
        return Err(ApiError::invalid(format!(
            "repo URL {:?} is neither file:///<absolute dir> nor s3://<bucket>[/<prefix>]",
            redact_url(url)
        )));
    }
    Ok(())
}

/// The URL as it may be journaled and shown: a `secret_key` query value is
/// replaced by [`REDACTED`] (the server keeps the whole URL in a private
/// file of its data dir).
pub fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("secret_key", _)) => format!("secret_key={REDACTED}"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

/// What stands for a secret in a journaled URL.
pub const REDACTED: &str = "REDACTED";

/// Decides `repo add` once the store has been opened (or created) with the
/// key: `initialized` says which.
pub fn decide_add(
    existing: Option<&RepoState>,
    count: usize,
    name: &str,
    url: &str,
    key_kind: &str,
    key_path: &str,
    initialized: bool,
) -> Result<Vec<Event>, ApiError> {
    check_label("repo", name)?;
    if let Some(r) = existing.filter(|r| r.exists()) {
        if r.url == url && r.key_path == key_path {
            return Ok(Vec::new());
        }
        return Err(ApiError::new(
            ErrorCode::AlreadyExists,
            format!("repo {name:?} is already registered (as {})", r.url),
        ));
    }
    if count >= MAX_REPOS {
        return Err(ApiError::new(
            ErrorCode::ResourceExhausted,
            format!("at most {MAX_REPOS} repos per tenant"),
        ));
    }
    Ok(vec![Event::RepoAdded(RepoAdded {
        repo: name.to_owned(),
        url: url.to_owned(),
        key_kind: key_kind.to_owned(),
        key_path: key_path.to_owned(),
        initialized,
    })])
}

pub fn decide_remove(existing: Option<&RepoState>, name: &str) -> Result<Vec<Event>, ApiError> {
    match existing.filter(|r| r.exists()) {
        Some(_) => Ok(vec![Event::RepoRemoved(RepoRemoved {
            repo: name.to_owned(),
        })]),
        None => Err(missing_repo(name)),
    }
}

pub fn missing_repo(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "repo {name:?} is not registered (cairn repo add {name} URL)"
    ))
}

/// What a manifest's `meta` holds: the app snapshot, and which manifest
/// volume is which PVC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedApp {
    pub format: String,
    pub app: String,
    pub snapshot: String,
    pub message: String,
    pub created_ms: u64,
    pub objects: Vec<Object>,
    pub volumes: Vec<AppVolume>,
    /// PVC → the manifest volume's name.
    pub manifest_volumes: BTreeMap<String, String>,
}

pub const PUSHED_APP_FORMAT: &str = "cairn.app-snapshot/v1";

impl PushedApp {
    pub fn of(app: &str, snap: &AppSnapshot, manifest_volumes: BTreeMap<String, String>) -> Self {
        PushedApp {
            format: PUSHED_APP_FORMAT.into(),
            app: app.to_owned(),
            snapshot: snap.name.clone(),
            message: snap.message.clone(),
            created_ms: snap.created_ms,
            objects: snap.objects.clone(),
            volumes: snap.volumes.clone(),
            manifest_volumes,
        }
    }

    /// Reads it back from a manifest's metadata, checking that every volume
    /// has its data in the manifest.
    pub fn from_meta(meta: &serde_json::Value) -> Result<PushedApp, ApiError> {
        let pushed: PushedApp = serde_json::from_value(meta.clone()).map_err(|e| {
            ApiError::new(
                ErrorCode::Corrupted,
                format!("the manifest's app metadata does not decode: {e}"),
            )
        })?;
        if pushed.format != PUSHED_APP_FORMAT {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the manifest's app metadata is {:?}; this Cairn reads {PUSHED_APP_FORMAT}",
                    pushed.format
                ),
            ));
        }
        if let Some(v) = pushed
            .volumes
            .iter()
            .find(|v| !pushed.manifest_volumes.contains_key(&v.pvc))
        {
            return Err(ApiError::new(
                ErrorCode::Corrupted,
                format!("the manifest has no data for volume {:?}", v.pvc),
            ));
        }
        Ok(pushed)
    }

    /// As an app snapshot (for the app's decider).
    pub fn snapshot(&self) -> AppSnapshot {
        AppSnapshot {
            name: self.snapshot.clone(),
            seq: 0,
            created_ms: self.created_ms,
            message: self.message.clone(),
            objects: self.objects.clone(),
            volumes: self.volumes.clone(),
            workflow: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_secrets_redacted() {
        assert!(check_repo_url("file:///var/backups").is_ok());
        assert!(check_repo_url("s3://b/p?endpoint=http://127.0.0.1:9000&path_style=true").is_ok());
        assert!(check_repo_url("http://x").is_err());
        assert!(check_repo_url("file://relative").is_err());
        assert_eq!(
            redact_url("s3://b?access_key=a&secret_key=b&region=x"),
            "s3://b?access_key=a&secret_key=REDACTED&region=x"
        );
        assert_eq!(redact_url("file:///r"), "file:///r");
    }

    #[test]
    fn add_is_idempotent_and_bounded() {
        let events = decide_add(None, 0, "off", "file:///r", "key-file", "/k", true).unwrap();
        let mut state = RepoState::default();
        state.apply(5, 9, &events[0]);
        assert!(state.exists());
        assert_eq!(state.url, "file:///r");
        // The same registration again: nothing to do.
        let again = decide_add(Some(&state), 1, "off", "file:///r", "key-file", "/k", false);
        assert_eq!(again.unwrap(), Vec::new());
        let other = decide_add(Some(&state), 1, "off", "file:///s", "key-file", "/k", false);
        assert_eq!(other.unwrap_err().code, ErrorCode::AlreadyExists);
        let full = decide_add(None, MAX_REPOS, "x", "file:///r", "key-file", "/k", true);
        assert_eq!(full.unwrap_err().code, ErrorCode::ResourceExhausted);
        assert_eq!(
            decide_add(None, 0, "Bad Name", "file:///r", "key-file", "/k", true)
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
        let removed = decide_remove(Some(&state), "off").unwrap();
        state.apply(6, 10, &removed[0]);
        assert!(!state.exists());
        assert_eq!(
            decide_remove(Some(&state), "off").unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn pushed_app_round_trips_and_is_checked() {
        let snap = AppSnapshot {
            name: "s1".into(),
            volumes: vec![AppVolume {
                pvc: "data-db-0".into(),
                claim: "data".into(),
                workload: Some("db".into()),
                ordinal: Some(0),
                size_bytes: 1 << 20,
                storage_class: None,
            }],
            ..AppSnapshot::default()
        };
        let map = BTreeMap::from([("data-db-0".to_owned(), "t/shop/data-db-0".to_owned())]);
        let meta = serde_json::to_value(PushedApp::of("shop", &snap, map)).unwrap();
        let back = PushedApp::from_meta(&meta).unwrap();
        assert_eq!(back.snapshot().volumes, snap.volumes);
        let mut broken = meta.clone();
        broken["manifest_volumes"] = serde_json::json!({});
        assert_eq!(
            PushedApp::from_meta(&broken).unwrap_err().code,
            ErrorCode::Corrupted
        );
        let mut newer = meta;
        newer["format"] = "cairn.app-snapshot/v9".into();
        assert_eq!(
            PushedApp::from_meta(&newer).unwrap_err().code,
            ErrorCode::FailedPrecondition
        );
    }
}
