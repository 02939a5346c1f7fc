//! The gateway's backup-repository commands (the repository IO; the
//! registrations and push records are decided, journaled and folded by
//! their owner, [`crate::repo_actor`]): `repo.add/remove/list/ls/
//! check/prune`, and the workflow steps that move data, `app.push-upload`,
//! `app.pull-import` and `app.pull-data` (the built-in `app-push`,
//! `app-pull` and `app-pull-repair` workflows run them).
//!
//! # Invariants
//! - A registration is journaled only after the store was opened (or
//!   initialised) with its key: a wrong key is `wrong_key` and writes
//!   nothing, neither to the journal nor to the store.
//! - One operation at a time per repository ([`Repos::lock`]): pushes and
//!   prunes never overlap (a prune could delete a pack a push just
//!   deduplicated against).
//! - Every path, key file and S3 location a request names goes through
//!   [`repo::Access`] for its tenant: confined to the tenant's roots and the
//!   operator's S3 allowlist when the bus authenticates tenants, and never
//!   into another tenant's part of the data dir; key files are opened
//!   without following links, regular and small. Checked again each time
//!   a registration is opened (a restart, a grant withdrawn).
//! - No server-wide lock is held while a file or a store is read: `repo
//!   add`s are serialised per store location (two names for one empty URL
//!   cannot both initialise it), and the key is read before that turn.
//! - The journaled URL has no secret (`redact_url`); the whole URL, when it
//!   carries one, is kept in `<data-dir>/repo-keys/<tenant>/<name>.url`
//!   (mode 0600) beside generated keys.
//! - Repository IO and block-engine IO run on blocking threads; progress
//!   goes to the bus through a bounded channel (dropped when full, never
//!   blocking the transfer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_schema::app::{AppCommand, volume_name};
use cairn_schema::event::AppPushed;
use cairn_schema::reply::{self, to_value};
use cairn_schema::repo::{PushedApp, RepoCommand, RepoKey, RepoState, missing_repo, redact_url};
use cairn_schema::time::format_rfc3339_ms;
use cairn_schema::{ApiError, ErrorCode, subject};
use dashmap::DashMap;
use serde_json::Value;

use super::Gateway;
use crate::journal::Causation;
use crate::repo::{self, InitOptions, Key, PullMode, PushRequest, Repo, RepoUrl};
use crate::repo_actor::{self, Registration};
use crate::volume::engine_name;

/// Open repositories and their locks, by (tenant, name).
#[derive(Default)]
pub struct Repos {
    open: DashMap<(String, String), Arc<Repo>>,
    locks: DashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// One `repo add` at a time per store location: two names added for
    /// the same empty URL at once would both initialise it (check, then
    /// put), and the second config would lock the first key out.
    adding: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Repos {
    /// Waits for the repository's turn.
    async fn lock(&self, tenant: &str, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .entry((tenant.to_owned(), name.to_owned()))
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// The repository actor is gone: only at shutdown.
fn repo_actor_gone(e: actix::MailboxError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("repository actor: {e}"))
}

fn repo_error(e: repo::Error) -> ApiError {
    e.to_api()
}

/// Runs blocking repository work off the async threads. Work that holds a
/// repository's turn moves the guard into `work`: if the caller's future is
/// dropped (a step's timeout), the turn is kept until the work ends.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("repository task failed: {e}")))?
}

/// Where `repo add` keeps what it must not journal.
fn private_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("repo-keys").join(tenant)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |e: std::io::Error| ApiError::internal(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The whole URL of a registration: the journaled one, or the private copy
/// when the journaled one was redacted.
fn full_url(data_dir: &Path, tenant: &str, state: &RepoState) -> Result<String, ApiError> {
    if state.url.contains(cairn_schema::repo::REDACTED) {
        let path = private_dir(data_dir, tenant).join(format!("{}.url", state.name));
        std::fs::read_to_string(&path).map_err(|e| {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "repo {}: the URL's secret is not on this server ({}: {e}); add the repo again",
                    state.name,
                    path.display()
                ),
            )
        })
    } else {
        Ok(state.url.clone())
    }
}

fn view(state: &RepoState) -> reply::RepoView {
    reply::RepoView {
        name: state.name.clone(),
        url: state.url.clone(),
        key_kind: state.key_kind.clone(),
        key_path: state.key_path.clone(),
        added: format_rfc3339_ms(state.added_ms),
    }
}

/// Publishes transfer progress for one workflow, at most a few times a
/// second, without ever blocking the transfer.
struct ProgressSink {
    tx: tokio::sync::mpsc::Sender<reply::TransferProgress>,
    template: reply::TransferProgress,
    started: Instant,
    last: std::sync::Mutex<Option<Instant>>,
}

const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl ProgressSink {
    fn report(&self, p: &repo::Progress, finished: bool) {
        if self.template.workflow.is_empty() {
            return;
        }
        {
            let mut last = self.last.lock().expect("progress lock");
            let due = last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
            if !due && !finished {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut message = self.template.clone();
        message.volume = p.volume.clone();
        message.done_bytes = if finished {
            p.total_bytes
        } else {
            p.done_bytes
        };
        message.total_bytes = p.total_bytes;
        message.transferred_bytes = p.transferred_bytes;
        message.elapsed_ms = self.started.elapsed().as_millis() as u64;
        message.finished = finished;
        let _ = self.tx.try_send(message);
    }
}

impl Gateway {
    fn progress_sink(
        &self,
        tenant: &str,
        workflow: &str,
        op: &str,
        app: &str,
        repo: &str,
    ) -> Arc<ProgressSink> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<reply::TransferProgress>(16);
        let bus = self.services.bus.clone();
        let subject = subject::progress(tenant, workflow);
        actix_rt::spawn(async move {
            while let Some(message) = rx.recv().await {
                let body = serde_json::to_vec(&message).expect("progress serializes");
                if let Err(e) = bus.publish(&subject, Bytes::from(body)).await {
                    tracing::debug!(error = %e, "progress not published");
                }
            }
        });
        Arc::new(ProgressSink {
            tx,
            template: reply::TransferProgress {
                kind: "TransferProgress".into(),
                workflow: workflow.to_owned(),
                op: op.to_owned(),
                app: app.to_owned(),
                repo: repo.to_owned(),
                volume: String::new(),
                done_bytes: 0,
                total_bytes: 0,
                transferred_bytes: 0,
                elapsed_ms: 0,
                finished: false,
            },
            started: Instant::now(),
            last: std::sync::Mutex::new(None),
        })
    }

    /// A registration, as its owner (the repository actor) holds it.
    async fn repo_state(&self, tenant: &str, name: &str) -> Result<RepoState, ApiError> {
        self.registry
            .repos()
            .send(repo_actor::Get {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
            })
            .await
            .map_err(repo_actor_gone)?
            .ok_or_else(|| missing_repo(name))
    }

    /// Has the repository actor decide, journal and apply a command.
    async fn execute_repo(
        &self,
        registration: Registration,
        causation: Causation,
        reply: Value,
    ) -> Result<Value, ApiError> {
        self.registry
            .repos()
            .send(repo_actor::Execute {
                registration,
                causation,
                reply,
            })
            .await
            .map_err(repo_actor_gone)?
    }

    /// What `tenant`'s requests may reach.
    fn access(&self, tenant: &str) -> repo::Access {
        repo::Access::of(&self.services.security, &self.services.data_dir, tenant)
    }

    /// The open repository of a registration (opened once, then cached).
    async fn open_repo(&self, tenant: &str, state: &RepoState) -> Result<Arc<Repo>, ApiError> {
        let key = (tenant.to_owned(), state.name.clone());
        if let Some(repo) = self.repos.open.get(&key) {
            return Ok(repo.clone());
        }
        let url = full_url(&self.services.data_dir, tenant, state)?;
        let state = state.clone();
        let access = self.access(tenant);
        let repo = blocking(move || {
            let key = access
                .key(&state.key_kind, Path::new(&state.key_path))
                .map_err(repo_error)?;
            let store = RepoUrl::parse(&url)
                .and_then(|u| access.open_store(&u))
                .map_err(repo_error)?;
            Repo::open(store, &key).map_err(repo_error)
        })
        .await?;
        let repo = Arc::new(repo);
        self.repos.open.insert(key, repo.clone());
        Ok(repo)
    }

    pub(super) async fn repo_list(&self, tenant: &str) -> Result<Value, ApiError> {
        let repos = self
            .registry
            .repos()
            .send(repo_actor::List {
                tenant: Some(tenant.to_owned()),
            })
            .await
            .map_err(repo_actor_gone)?;
        Ok(to_value(&reply::RepoListReply {
            repos: repos.values().map(view).collect(),
        }))
    }

    /// Runs one repository command (the generic path looked its request id
    /// up already).
    pub(super) async fn dispatch_repo(
        &self,
        tenant: &str,
        command: RepoCommand,
        causation: Causation,
    ) -> Result<Value, ApiError> {
        match command {
            RepoCommand::Add { name, url, key } => {
                self.repo_add(tenant, &name, url, key, causation).await
            }
            RepoCommand::Remove { name } => {
                // No lock is made for a name that is not registered.
                self.repo_state(tenant, &name).await?;
                let _turn = self.repos.lock(tenant, &name).await;
                self.repos.open.remove(&(tenant.to_owned(), name.clone()));
                let reply = to_value(&reply::RepoRemoveReply {
                    name: name.clone(),
                    contents_kept: true,
                });
                self.execute_repo(Registration::Remove { name }, causation, reply)
                    .await
            }
            RepoCommand::Ls { name, app } => {
                let state = self.repo_state(tenant, &name).await?;
                let repo = self.open_repo(tenant, &state).await?;
                let (snapshots, stored_bytes) = blocking(move || {
                    let list = repo.list().map_err(repo_error)?;
                    let mut stored = 0u64;
                    repo::store::for_each_object(&**repo.store(), repo::PACKS, |o| {
                        stored += o.size;
                        Ok::<(), repo::Error>(())
                    })
                    .map_err(repo_error)?;
                    Ok((list, stored))
                })
                .await?;
                Ok(to_value(&reply::RepoLsReply {
                    name,
                    stored_bytes,
                    snapshots: snapshots
                        .into_iter()
                        .filter(|m| app.as_ref().is_none_or(|a| &m.app == a))
                        .map(|m| reply::RepoSnapshotView {
                            manifest: m.id,
                            app: m.app,
                            snapshot: m.snapshot,
                            created: format_rfc3339_ms(m.created_ms),
                            parent: m.parent,
                            volumes: m
                                .volumes
                                .into_iter()
                                .map(|v| reply::RepoVolumeView {
                                    name: v.name,
                                    size_bytes: v.size,
                                    data_bytes: v.data_bytes,
                                })
                                .collect(),
                            logical_bytes: m.logical_bytes,
                            added_bytes: m.added_bytes,
                        })
                        .collect(),
                }))
            }
            RepoCommand::Check { name } => {
                let state = self.repo_state(tenant, &name).await?;
                let repo = self.open_repo(tenant, &state).await?;
                let turn = self.repos.lock(tenant, &name).await;
                let report = blocking(move || {
                    let _turn = turn;
                    repo.check().map_err(repo_error)
                })
                .await?;
                Ok(to_value(&reply::RepoCheckReply {
                    name,
                    ok: report.is_ok(),
                    packs: report.packs,
                    chunks: report.chunks,
                    manifests: report.manifests,
                    bytes_read: report.bytes_read,
                    problems: report
                        .problems
                        .into_iter()
                        .map(|p| reply::RepoProblem {
                            object: p.object,
                            offset: p.offset,
                            reason: p.reason,
                        })
                        .collect(),
                }))
            }
            RepoCommand::Prune { name, keep_last } => {
                let state = self.repo_state(tenant, &name).await?;
                let repo = self.open_repo(tenant, &state).await?;
                let turn = self.repos.lock(tenant, &name).await;
                let report = blocking(move || {
                    let _turn = turn;
                    repo.prune(keep_last as usize).map_err(repo_error)
                })
                .await?;
                Ok(to_value(&reply::RepoPruneReply {
                    name,
                    manifests_kept: report.manifests_kept,
                    manifests_deleted: report.manifests_deleted,
                    packs_kept: report.packs_kept,
                    packs_deleted: report.packs_deleted,
                    packs_repacked: report.packs_repacked,
                    freed_bytes: report.freed_bytes,
                }))
            }
            RepoCommand::Upload {
                repo,
                app,
                snapshot,
                workflow,
            } => {
                self.push_upload(tenant, &repo, &app, &snapshot, &workflow, causation)
                    .await
            }
            RepoCommand::Import {
                repo,
                source,
                snapshot,
                target,
                create,
                workflow,
            } => {
                let state = self.repo_state(tenant, &repo).await?;
                let opened = self.open_repo(tenant, &state).await?;
                let (s, sn) = (source.clone(), snapshot.clone());
                let (id, pushed) = blocking(move || {
                    let found = opened.find(&s, &sn).map_err(repo_error)?.ok_or_else(|| {
                        ApiError::not_found(format!(
                            "repo {} has no snapshot {s}@{sn} (cairn repo ls {})",
                            state.name, state.name
                        ))
                    })?;
                    let manifest = opened.manifest(&found.id).map_err(repo_error)?;
                    Ok((found.id, PushedApp::from_meta(&manifest.meta)?))
                })
                .await?;
                let command = AppCommand::Pull {
                    name: target,
                    repo,
                    manifest: id,
                    source,
                    from: Box::new(pushed.snapshot()),
                    create,
                    workflow,
                };
                self.dispatch_app(tenant, command, causation).await
            }
            RepoCommand::Download { app, workflow } => {
                self.pull_data(tenant, &app, &workflow).await
            }
        }
    }

    async fn repo_add(
        &self,
        tenant: &str,
        name: &str,
        url: Option<String>,
        key: RepoKey,
        causation: Causation,
    ) -> Result<Value, ApiError> {
        cairn_schema::names::check_label("repo", name)?;
        let _turn = self.repos.lock(tenant, name).await;
        let data_dir = self.services.data_dir.clone();
        let url = url.unwrap_or_else(|| {
            format!(
                "file://{}",
                data_dir.join("repos").join(tenant).join(name).display()
            )
        });
        let redacted = redact_url(&url);
        let private = private_dir(&data_dir, tenant);
        let (key_kind, key_path) = match &key {
            RepoKey::File(p) | RepoKey::PassphraseFile(p) => (key.kind(), p.clone()),
            RepoKey::Generate => (
                key.kind(),
                private.join(format!("{name}.key")).display().to_string(),
            ),
        };
        // Refused before any IO when the name is taken by another.
        self.registry
            .repos()
            .send(repo_actor::CheckAdd {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                url: redacted.clone(),
                key_kind,
                key_path: key_path.clone(),
            })
            .await
            .map_err(repo_actor_gone)??;
        let generate = matches!(key, RepoKey::Generate);
        let access = self.access(tenant);
        // The paths are checked, the store opened and the key read here,
        // holding only this registration's turn.
        let (u, kp, kk) = (url.clone(), key_path.clone(), key_kind.to_owned());
        let (store, given_key) = blocking(move || {
            let parsed = RepoUrl::parse(&u).map_err(repo_error)?;
            let kp = Path::new(&kp);
            let given_key = if generate && !kp.exists() {
                None
            } else {
                Some(access.key(&kk, kp).map_err(repo_error)?)
            };
            let store = access.open_store(&parsed).map_err(repo_error)?;
            Ok((store, given_key))
        })
        .await?;
        // Then one add at a time for this store location.
        let location = store.describe();
        let adding = self
            .repos
            .adding
            .entry(location.clone())
            .or_default()
            .clone();
        let adding_turn = adding.lock_owned().await;
        let (u, kp) = (url.clone(), key_path.clone());
        let result = blocking(move || {
            let _adding_turn = adding_turn;
            let exists = store
                .head(repo::CONFIG_KEY)
                .map_err(|e| repo_error(e.into()))?
                .is_some();
            if exists {
                let Some(key) = given_key else {
                    return Err(ApiError::invalid(format!(
                        "{} holds a repository already: give its key_file or passphrase_file",
                        redact_url(&u)
                    )));
                };
                return Ok((Repo::open(store, &key).map_err(repo_error)?, false, false));
            }
            let mut key_generated = false;
            let key = match given_key {
                Some(key) => key,
                None => {
                    let mut raw = [0u8; 32];
                    repo::random_bytes(&mut raw);
                    let hex = hex::encode(raw);
                    write_private(Path::new(&kp), format!("{hex}\n").as_bytes())?;
                    key_generated = true;
                    Key::from_bytes(raw)
                }
            };
            match Repo::init(store, &key, InitOptions::default()) {
                Ok(r) => Ok((r, true, key_generated)),
                Err(e) => {
                    if key_generated {
                        let _ = std::fs::remove_file(&kp);
                    }
                    Err(repo_error(e))
                }
            }
        })
        .await;
        self.repos
            .adding
            .remove_if(&location, |_, lock| Arc::strong_count(lock) == 1);
        let (opened, initialized, key_generated) = result?;
        if redacted != url {
            write_private(&private.join(format!("{name}.url")), url.as_bytes())?;
        }
        let config = opened.config().clone();
        self.repos
            .open
            .insert((tenant.to_owned(), name.to_owned()), Arc::new(opened));
        let state = RepoState {
            name: name.to_owned(),
            url: redacted.clone(),
            key_kind: key_kind.to_owned(),
            key_path: key_path.clone(),
            added_seq: 0,
            added_ms: 0,
        };
        let mut shown = view(&state);
        shown.added = format_rfc3339_ms(crate::clock::Clock::now_ms(&crate::clock::SystemClock));
        let reply = to_value(&reply::RepoAddReply {
            repo: shown,
            initialized,
            key_generated,
            chunk_bytes: config.chunk_bytes,
            pack_bytes: config.pack_bytes,
        });
        let registration = Registration::Add {
            name: name.to_owned(),
            url: redacted,
            key_kind,
            key_path,
            initialized,
        };
        self.execute_repo(registration, causation, reply).await
    }

    async fn push_upload(
        &self,
        tenant: &str,
        repo_name: &str,
        app: &str,
        snapshot: &str,
        workflow: &str,
        causation: Causation,
    ) -> Result<Value, ApiError> {
        let state = self.app_state(tenant, app).await?;
        let mut snap = state.snapshots.get(snapshot).cloned().ok_or_else(|| {
            ApiError::not_found(format!("app {app} has no snapshot {snapshot:?}"))
        })?;
        // The repo holds the real objects (its manifest is sealed with the
        // repo key), so a pull gives the Secrets back anywhere.
        self.services
            .secrets
            .unseal_objects(tenant, &mut snap.objects)?;
        let registration = self.repo_state(tenant, repo_name).await?;
        let opened = self.open_repo(tenant, &registration).await?;
        let turn = self.repos.lock(tenant, repo_name).await;
        let mut manifest_volumes = BTreeMap::new();
        let mut volumes = Vec::new();
        for v in &snap.volumes {
            let engine = engine_name(tenant, &volume_name(app, &v.pvc));
            manifest_volumes.insert(v.pvc.clone(), engine.clone());
            volumes.push((engine, snapshot.to_owned()));
        }
        let meta = serde_json::to_value(PushedApp::of(app, &snap, manifest_volumes))
            .expect("metadata serializes");
        let sink = self.progress_sink(tenant, workflow, "push", app, repo_name);
        let pool = self.services.pool.clone();
        let (a, s) = (app.to_owned(), snapshot.to_owned());
        let started = Instant::now();
        let report = blocking(move || {
            let _turn = turn;
            let parent = opened.latest(&a).map_err(repo_error)?.map(|m| m.id);
            let request = PushRequest {
                app: a,
                snapshot: s,
                volumes,
                meta,
                parent,
            };
            let last = std::sync::Mutex::new(repo::Progress::default());
            let report = opened
                .push(&pool, &request, &|p| {
                    sink.report(p, false);
                    *last.lock().expect("progress lock") = p.clone();
                })
                .map_err(repo_error)?;
            sink.report(&last.into_inner().expect("progress lock"), true);
            Ok(report)
        })
        .await?;
        let reply = to_value(&reply::PushReply {
            app: app.to_owned(),
            snapshot: snapshot.to_owned(),
            repo: repo_name.to_owned(),
            manifest: report.manifest_id.clone(),
            parent: report.parent.clone(),
            incremental_volumes: report.incremental_volumes.clone(),
            logical_bytes: report.logical_bytes,
            read_bytes: report.read_bytes,
            uploaded_bytes: report.uploaded_bytes,
            new_chunks: report.new_chunks,
            dedup_chunks: report.dedup_chunks,
            reused_chunks: report.reused_chunks,
            packs_uploaded: report.packs_uploaded,
            elapsed_ms: started.elapsed().as_millis() as u64,
            workflow: None,
        });
        let pushed = Registration::Pushed(AppPushed {
            app: app.to_owned(),
            snapshot: snapshot.to_owned(),
            repo: repo_name.to_owned(),
            manifest: report.manifest_id,
            parent: report.parent,
            logical_bytes: report.logical_bytes,
            uploaded_bytes: report.uploaded_bytes,
            workflow: workflow.to_owned(),
        });
        self.execute_repo(pushed, causation, reply).await
    }

    async fn pull_data(&self, tenant: &str, app: &str, workflow: &str) -> Result<Value, ApiError> {
        let state = self.app_state(tenant, app).await?;
        let pulled = state.pulled.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("app {app} was not pulled from a repo (app.pull-import first)"),
            )
        })?;
        let registration = self.repo_state(tenant, &pulled.repo).await?;
        let opened = self.open_repo(tenant, &registration).await?;
        let turn = self.repos.lock(tenant, &pulled.repo).await;
        let sink = self.progress_sink(tenant, workflow, "pull", app, &pulled.repo);
        let pool = self.services.pool.clone();
        let (t, a, id) = (tenant.to_owned(), app.to_owned(), pulled.manifest.clone());
        let present: Vec<String> = state.volumes.keys().cloned().collect();
        let started = Instant::now();
        let (report, volumes) = blocking(move || {
            let _turn = turn;
            let manifest = opened.manifest(&id).map_err(repo_error)?;
            let pushed = PushedApp::from_meta(&manifest.meta)?;
            let mut targets = Vec::new();
            let mut names = Vec::new();
            for v in &pushed.volumes {
                if !present.contains(&v.pvc) {
                    return Err(ApiError::new(
                        ErrorCode::FailedPrecondition,
                        format!("app {a} has no volume {} of the pulled snapshot", v.pvc),
                    ));
                }
                let volume = volume_name(&a, &v.pvc);
                targets.push((
                    pushed.manifest_volumes[&v.pvc].clone(),
                    engine_name(&t, &volume),
                ));
                names.push(volume);
            }
            let last = std::sync::Mutex::new(repo::Progress::default());
            let report = opened
                .pull(&pool, &id, &targets, PullMode::Repair, &|p| {
                    sink.report(p, false);
                    *last.lock().expect("progress lock") = p.clone();
                })
                .map_err(repo_error)?;
            sink.report(&last.into_inner().expect("progress lock"), true);
            Ok((report, names))
        })
        .await?;
        Ok(to_value(&reply::PullReply {
            app: app.to_owned(),
            repo: pulled.repo,
            manifest: pulled.manifest,
            volumes,
            logical_bytes: report.logical_bytes,
            written_chunks: report.written_chunks,
            unchanged_chunks: report.unchanged_chunks,
            fetched_bytes: report.fetched_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            workflow: None,
        }))
    }
}
