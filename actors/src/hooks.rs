//! App hooks: the commands an App document lists under `spec.hooks.<name>`
//! (`preSnapshot`, `postSnapshot`, `preRollback`, `postRollback`, or any name
//! a user workflow runs with `app.hook`), each
//! `{exec: [argv…], timeoutSeconds: N}`.
//!
//! Hooks run one after another. The first that exits non-zero fails the
//! step (`hook_failed`, with the end of its output); one that runs past its
//! timeout is killed with its whole process group (`deadline_exceeded`).
//! An app without hooks of that name succeeds at once.
//!
//! # Security
//! A hook is code a tenant wrote, run by the server, so:
//! - **Off unless granted.** The operator enables hooks per tenant
//!   ([`crate::security::Security::hooks`]: `cairn up --hooks TENANT` for
//!   any argv, `--hooks-config FILE` for argv-prefix allowlists), in every
//!   mode. Every hook of the name is checked before any runs; one not
//!   allowed fails the step with `permission_denied` and nothing runs
//!   ([`check_grant`]).
//! - **Step-only.** `app.hook` is refused unless a workflow step of the same
//!   tenant sends it ([`check_step_only`]).
//! - **Clean environment.** Only `CAIRN_APP`, `CAIRN_HOOK`, `CAIRN_TENANT`,
//!   `CAIRN_VOLUMES` (space-separated), `CAIRN_SNAPSHOT` (when there is one)
//!   and a fixed [`SAFE_PATH`]: nothing of the server's
//!   environment (its cloud credentials) reaches a hook.
//! - **Unprivileged.** With `--hooks-user USER` the child drops to that
//!   user's uid and gid, with no supplementary groups, before it runs.
//!   Running as root without one is warned about at start-up.
//! - **Confined to a scratch directory**, `<data>/hooks/<tenant>` (0700,
//!   owned by the hooks user), its working directory. The server opens it
//!   and the child enters it by descriptor (`fchdir`) after dropping to the
//!   hooks user, so the data dir can stay 0700: the hook is in its
//!   directory without being able to walk up to the rest of the data dir.
//! - **Bounded.** Its timeout (at most [`MAX_TIMEOUT`]); its output is read
//!   as it comes and only the last [`OUTPUT_TAIL`] bytes of each stream are
//!   kept, so a chatty hook costs no memory. The output goes only into the
//!   step's reply, which is that tenant's workflow view; the server logs
//!   none of it.
//! - **Few at once.** At most `caps.hooks_running` hooks of one tenant run
//!   at once; past it a step gets `resource_exhausted` (retryable, so the
//!   step backs off and tries again) instead of piling up.
//!
//! # Runners
//! [`HookRunner`] runs one decided [`HookSpec`]. [`LocalRunner`] runs it as
//! a child process of the server. A Kubernetes exec runner (run the argv in
//! the app's pod, which is where hooks belong in a real cluster) replaces
//! it behind the same trait; the tests use a twin that records what it was
//! asked to run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_schema::app::AppState;
use cairn_schema::reply::{HookReply, HookRun};
use cairn_schema::{ApiError, ErrorCode};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::security::{HookGrant, Security};

/// Default and largest hook timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output kept per stream of a hook (the end of it).
pub const OUTPUT_TAIL: usize = 2048;
/// Most hooks one name may list.
const MAX_HOOKS: usize = 32;
/// The only `PATH` a hook sees.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hooks user {user:?}: {reason}")]
    User { user: String, reason: String },
}

/// One hook as the App document gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// The hooks of one name in an app's App document.
pub fn hooks_of(state: &AppState, name: &str) -> Result<Vec<Hook>, ApiError> {
    let Some(doc) = state
        .objects
        .iter()
        .find(|o| o.kind == "App" && o.api_version.starts_with("cairn.dev/"))
    else {
        return Ok(Vec::new());
    };
    let value = doc.value();
    let Some(list) = value.pointer(&format!("/spec/hooks/{name}")) else {
        return Ok(Vec::new());
    };
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "app {}: spec.hooks.{name} {why}; each hook is {{exec: [argv…], timeoutSeconds: N}}",
            state.name
        ))
    };
    let items = list.as_array().ok_or_else(|| bad("is not a list"))?;
    if items.len() > MAX_HOOKS {
        return Err(bad("has too many hooks"));
    }
    items
        .iter()
        .map(|item| {
            let argv: Vec<String> = item
                .get("exec")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("has a hook without exec"))?
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("has an exec with a non-string argument"))?;
            if argv.is_empty() {
                return Err(bad("has an empty exec"));
            }
            let timeout = match item.get("timeoutSeconds") {
                None => DEFAULT_TIMEOUT,
                Some(v) => v
                    .as_f64()
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| bad("has a timeoutSeconds that is not a positive number"))?
                    .min(MAX_TIMEOUT),
            };
            Ok(Hook { argv, timeout })
        })
        .collect()
}

/// Whether `grant` lets `argv` run: any argv for [`HookGrant::Any`], else
/// one whose first words equal one of the prefixes, word for word (so
/// `[/bin/true]` allows `/bin/true` and `/bin/true x`, not `true` nor
/// `/bin/truex`).
pub fn allowed(grant: Option<&HookGrant>, argv: &[String]) -> bool {
    match grant {
        None => false,
        Some(HookGrant::Any) => true,
        Some(HookGrant::Prefixes(prefixes)) => prefixes
            .iter()
            .any(|p| !p.is_empty() && argv.len() >= p.len() && argv[..p.len()] == p[..]),
    }
}

/// Refuses, before anything runs, hooks `tenant` may not run.
pub fn check_grant(
    security: &Security,
    tenant: &str,
    app: &str,
    name: &str,
    hooks: &[Hook],
) -> Result<(), ApiError> {
    let grant = security.hook_grant(tenant);
    let Some(grant) = grant else {
        if hooks.is_empty() {
            return Ok(());
        }
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "hooks are off for tenant {tenant}: hook {name} of app {app} was not run; the \
                 operator enables them with `cairn up --hooks {tenant}` (any command) or \
                 `--hooks-config FILE` (argv allowlists per tenant)"
            ),
        ));
    };
    for h in hooks {
        if !allowed(Some(grant), &h.argv) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "hook {name} of app {app}: {:?} is not in tenant {tenant}'s hook allowlist \
                     (`cairn up --hooks-config FILE`); no hook of {name} was run",
                    h.argv
                ),
            ));
        }
    }
    Ok(())
}

/// `app.hook` is a step command: only a workflow of the same tenant runs
/// it. `parent` is the workflow whose step sent it (set in-process by the
/// saga, never from a request's headers); `parent_is_tenants` says whether
/// that workflow is one of `tenant`'s.
pub fn check_step_only(
    tenant: &str,
    parent: Option<&str>,
    parent_is_tenants: bool,
) -> Result<(), ApiError> {
    match parent {
        Some(_) if parent_is_tenants => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "app.hook is a workflow step command: it runs only as a step of one of tenant \
                 {tenant}'s workflows (app snapshot and rollback run hooks; `cairn workflow run` \
                 runs a definition with an app.hook step)"
            ),
        )),
    }
}

/// The unprivileged user hooks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl HookUser {
    /// Looks a user up by name, or by uid when `user` is a number
    /// (getpwnam_r / getpwuid_r).
    pub fn resolve(user: &str) -> Result<HookUser, Error> {
        let bad = |reason: String| Error::User {
            user: user.to_owned(),
            reason,
        };
        // SAFETY: getpw*_r write into `pwd` and `buf`, which we own and size;
        // the strings it points at live in `buf`, read before it drops.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut buf = vec![0 as libc::c_char; 16 << 10];
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = match user.parse::<u32>() {
                Ok(uid) => {
                    libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
                }
                Err(_) => {
                    let name =
                        std::ffi::CString::new(user).map_err(|_| bad("has a NUL byte".into()))?;
                    libc::getpwnam_r(
                        name.as_ptr(),
                        &mut pwd,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut result,
                    )
                }
            };
            if rc != 0 {
                return Err(bad(std::io::Error::from_raw_os_error(rc).to_string()));
            }
            if result.is_null() {
                return Err(bad("no such user".into()));
            }
            let name = std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
            if pwd.pw_uid == 0 {
                return Err(bad("is root; hooks run as an unprivileged user".into()));
            }
            Ok(HookUser {
                name,
                uid: pwd.pw_uid,
                gid: pwd.pw_gid,
            })
        }
    }
}

/// One hook, decided: what a runner runs.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub argv: Vec<String>,
    /// The whole environment of the hook.
    pub env: BTreeMap<String, String>,
    /// Its working directory (the tenant's scratch directory).
    pub dir: PathBuf,
    pub user: Option<HookUser>,
    pub timeout: Duration,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookExit {
    pub success: bool,
    /// `-1` when a signal ended it.
    pub exit_code: i32,
    /// How it ended, for messages (`exit status: 3`).
    pub status: String,
    /// The end of its standard output, then of its standard error.
    pub output: String,
}

/// Runs one hook. Errors: `hook_failed` (it could not start),
/// `deadline_exceeded` (it ran past its timeout and was killed).
pub trait HookRunner: Send + Sync {
    fn run(&self, spec: HookSpec) -> BoxFuture<'static, Result<HookExit, ApiError>>;
}

/// Runs hooks as child processes of the server, each in its own process
/// group (killed whole on timeout), with exactly the spec's environment.
#[derive(Debug, Default)]
pub struct LocalRunner;

impl HookRunner for LocalRunner {
    fn run(&self, spec: HookSpec) -> BoxFuture<'static, Result<HookExit, ApiError>> {
        Box::pin(run_local(spec))
    }
}

async fn run_local(spec: HookSpec) -> Result<HookExit, ApiError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let what = format!("{:?}", spec.argv);
    // Opened here (close-on-exec), entered in the child after it dropped
    // privileges: the hooks user needs no path to it, only the directory.
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&spec.dir)
        .map_err(|e| {
            ApiError::internal(format!("the hook's directory {}: {e}", spec.dir.display()))
        })?;
    let dir_fd = dir.as_raw_fd();
    let mut command = tokio::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &spec.user {
        // std clears the supplementary groups when it sets the uid.
        command.gid(user.gid).uid(user.uid);
    }
    // SAFETY: fchdir is async-signal-safe and touches no memory; `dir`
    // outlives the spawn, so the descriptor is open in the child.
    unsafe {
        command.pre_exec(move || {
            if libc::fchdir(dir_fd) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(dir);
    let mut child = spawned.map_err(|e| {
        ApiError::new(
            ErrorCode::HookFailed,
            format!("{what} could not start: {e}"),
        )
    })?;
    let group = child.id().map(|pid| pid as i32);
    let kill_group = || {
        if let Some(pgid) = group {
            // SAFETY: signalling the process group this hook leads; a group
            // id is not reused while any member lives.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    };
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let waited = tokio::time::timeout(spec.timeout, async {
        let (out, err, status) = tokio::join!(
            read_tail(stdout, OUTPUT_TAIL),
            read_tail(stderr, OUTPUT_TAIL),
            child.wait()
        );
        (status, out, err)
    })
    .await;
    // Whatever it left behind goes with it.
    kill_group();
    let (status, out, err) = match waited {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ApiError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "{what} ran past its timeout of {:?} and was killed",
                    spec.timeout
                ),
            ));
        }
    };
    let status = status.map_err(|e| {
        ApiError::new(
            ErrorCode::HookFailed,
            format!("{what}: waiting failed: {e}"),
        )
    })?;
    let mut output = out.text();
    let err = err.text();
    if !err.is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(&err);
    }
    Ok(HookExit {
        success: status.success(),
        exit_code: status.code().unwrap_or(-1),
        status: status.to_string(),
        output,
    })
}

/// The end of a stream: at most `keep` bytes, and how many were cut.
struct Tail {
    bytes: Vec<u8>,
    cut: u64,
}

impl Tail {
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).trim_end().to_owned();
        if self.cut == 0 {
            text
        } else {
            format!("[… {} bytes cut]{text}", self.cut)
        }
    }
}

/// Reads a stream to its end, keeping only its last `keep` bytes: memory
/// stays under `2 × keep + 4 KiB` whatever the stream's length.
async fn read_tail(mut stream: impl AsyncRead + Unpin, keep: usize) -> Tail {
    let mut bytes = Vec::with_capacity(2 * keep);
    let mut cut = 0u64;
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                if bytes.len() > 2 * keep {
                    let extra = bytes.len() - keep;
                    bytes.drain(..extra);
                    cut += extra as u64;
                }
            }
        }
    }
    if bytes.len() > keep {
        let extra = bytes.len() - keep;
        bytes.drain(..extra);
        cut += extra as u64;
    }
    Tail { bytes, cut }
}

/// The hooks service: grants, caps, scratch directories, and the runner.
pub struct Hooks {
    runner: Arc<dyn HookRunner>,
    security: Arc<Security>,
    /// The server runs as root (read once at start).
    root: bool,
    user: Option<HookUser>,
    /// `<data>/hooks`: a scratch directory per tenant below it.
    scratch_root: PathBuf,
    /// Hooks running per tenant.
    running: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("user", &self.user)
            .field("scratch_root", &self.scratch_root)
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// Resolves `security.hooks_user`, and warns when hooks would run as
    /// root.
    pub fn new(
        runner: Arc<dyn HookRunner>,
        security: Arc<Security>,
        data_dir: &Path,
    ) -> Result<Hooks, Error> {
        let user = security
            .hooks_user
            .as_deref()
            .map(HookUser::resolve)
            .transpose()?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root && user.is_none() && !security.hooks.is_empty() {
            tracing::warn!(
                "hooks are enabled and cairn runs as root without --hooks-user: hooks would run as root; give --hooks-user USER (see SECURITY.md)"
            );
        }
        Ok(Hooks {
            runner,
            security,
            root,
            user,
            scratch_root: data_dir.join("hooks"),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Where tenants are confined, a tenant's hook never runs as root: a
    /// server running as root needs `--hooks-user`. (With no
    /// authentication every client is the operator already, and a
    /// warning at start-up is all.)
    fn check_not_root(&self) -> Result<(), ApiError> {
        if self.root && self.user.is_none() && self.security.confined() {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "hooks would run as root: cairn runs as root without --hooks-user, and tenants' hooks \
                 never run as root where NATS authenticates them; the operator gives \
                 `cairn up --hooks-user USER` (see SECURITY.md)",
            ));
        }
        Ok(())
    }

    /// A tenant's scratch directory, made 0700 (and given to the hooks
    /// user) if missing. `<data>/hooks` itself is 0711: the hooks user can
    /// pass through it but not list the other tenants.
    fn scratch_dir(&self, tenant: &str) -> Result<PathBuf, ApiError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let failed = |e: std::io::Error| {
            ApiError::internal(format!("the hooks' scratch directory of {tenant}: {e}"))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.scratch_root)
            .map_err(failed)?;
        let dir = self.scratch_root.join(tenant);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e)),
        }
        let meta = std::fs::symlink_metadata(&dir).map_err(failed)?;
        if !meta.is_dir() {
            return Err(failed(std::io::Error::other("not a directory")));
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
        if let Some(user) = &self.user {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).map_err(failed)?;
        }
        Ok(dir)
    }

    /// A slot among `tenant`'s running hooks, or `resource_exhausted`.
    fn slot(&self, tenant: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let cap = self.security.caps.hooks_running;
        let semaphore = self
            .running
            .lock()
            .expect("hooks lock")
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(cap)))
            .clone();
        semaphore.try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "tenant {tenant} has {cap} hooks running, its limit (cairn up --tenant-hooks); \
                     the step tries again after its backoff"
                ),
            )
        })
    }

    /// Runs the hooks of `hook` for `tenant`'s app `state`, in order, if
    /// the tenant may run every one of them.
    pub async fn run(
        &self,
        tenant: &str,
        state: &AppState,
        hook: &str,
        snapshot: Option<&str>,
    ) -> Result<HookReply, ApiError> {
        let hooks = hooks_of(state, hook)?;
        check_grant(&self.security, tenant, &state.name, hook, &hooks)?;
        let mut ran = Vec::new();
        if !hooks.is_empty() {
            self.check_not_root()?;
            let _slot = self.slot(tenant)?;
            let dir = self.scratch_dir(tenant)?;
            let mut env = BTreeMap::from([
                ("PATH".to_owned(), SAFE_PATH.to_owned()),
                ("CAIRN_APP".to_owned(), state.name.clone()),
                ("CAIRN_HOOK".to_owned(), hook.to_owned()),
                ("CAIRN_TENANT".to_owned(), tenant.to_owned()),
                ("CAIRN_VOLUMES".to_owned(), state.volume_names().join(" ")),
            ]);
            if let Some(s) = snapshot {
                env.insert("CAIRN_SNAPSHOT".to_owned(), s.to_owned());
            }
            for h in hooks {
                let started = Instant::now();
                let what = format!("hook {hook} of app {} ({})", state.name, h.argv.join(" "));
                let exit = self
                    .runner
                    .run(HookSpec {
                        argv: h.argv.clone(),
                        env: env.clone(),
                        dir: dir.clone(),
                        user: self.user.clone(),
                        timeout: h.timeout.min(MAX_TIMEOUT),
                    })
                    .await
                    .map_err(|e| ApiError::new(e.code, format!("{what}: {}", e.message)))?;
                if !exit.success {
                    return Err(ApiError::new(
                        ErrorCode::HookFailed,
                        format!("{what} exited with {}: {}", exit.status, exit.output),
                    ));
                }
                ran.push(HookRun {
                    argv: h.argv,
                    exit_code: exit.exit_code,
                    duration_ms: started.elapsed().as_millis() as u64,
                    output: exit.output,
                });
            }
        }
        Ok(HookReply {
            name: state.name.clone(),
            hook: hook.to_owned(),
            ran,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_schema::app::parse_manifest;

    fn app(hooks: &str) -> AppState {
        let m = parse_manifest(
            &format!("apiVersion: cairn.dev/v1\nkind: App\nmetadata: {{name: a}}\nspec:\n  hooks:\n{hooks}"),
            None,
        )
        .unwrap();
        let mut s = AppState::default();
        s.apply(
            1,
            0,
            &cairn_schema::Event::AppCreated(cairn_schema::event::AppCreated {
                app: m.name,
                objects: m.objects,
                volumes: m.volumes,
            }),
        );
        s
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn security(grants: &[(&str, HookGrant)]) -> Arc<Security> {
        Arc::new(
            Security {
                hooks: grants
                    .iter()
                    .map(|(t, g)| ((*t).to_owned(), g.clone()))
                    .collect(),
                ..Security::default()
            }
            .sanitize(),
        )
    }

    /// The twin: records every spec, answers with a fixed exit, and can
    /// hold hooks until the test hands out permits (to fill the cap).
    #[derive(Default)]
    struct Twin {
        ran: Mutex<Vec<HookSpec>>,
        hold: Option<Arc<Semaphore>>,
    }

    impl HookRunner for Arc<Twin> {
        fn run(&self, spec: HookSpec) -> BoxFuture<'static, Result<HookExit, ApiError>> {
            self.ran.lock().unwrap().push(spec);
            let hold = self.hold.clone();
            Box::pin(async move {
                if let Some(h) = hold {
                    h.acquire().await.expect("never closed").forget();
                }
                Ok(HookExit {
                    success: true,
                    exit_code: 0,
                    status: "exit status: 0".into(),
                    output: "ok".into(),
                })
            })
        }
    }

    fn service(twin: &Arc<Twin>, security: Arc<Security>, dir: &Path) -> Hooks {
        Hooks::new(Arc::new(twin.clone()), security, dir).unwrap()
    }

    /// Where NATS authenticates tenants, a server running as root runs no
    /// tenant's hook without a hooks user; unconfined, or not root, it runs.
    #[tokio::test]
    async fn confined_tenants_hooks_never_run_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let twin = Arc::new(Twin::default());
        let state = app("    preSnapshot:\n      - exec: [/bin/true]\n");
        let mut confined = (*security(&[("acme", HookGrant::Any)])).clone();
        confined.mode = crate::security::Mode::Authenticated;
        let hooks = service(&twin, Arc::new(confined), dir.path());
        let result = hooks.run("acme", &state, "preSnapshot", None).await;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let e = result.unwrap_err();
            assert_eq!(e.code, ErrorCode::FailedPrecondition);
            assert!(e.message.contains("--hooks-user"), "{}", e.message);
            assert!(twin.ran.lock().unwrap().is_empty(), "nothing ran");
        } else {
            assert_eq!(result.unwrap().ran.len(), 1);
        }
        // With no authentication every client is the operator: it runs.
        let open = service(&twin, security(&[("acme", HookGrant::Any)]), dir.path());
        let ran = open.run("acme", &state, "preSnapshot", None).await.unwrap();
        assert_eq!(ran.ran.len(), 1);
    }

    #[test]
    fn allowlists_match_whole_words_from_the_start() {
        let grant = HookGrant::Prefixes(vec![argv(&["/bin/true"]), argv(&["psql", "-c"])]);
        assert!(allowed(Some(&grant), &argv(&["/bin/true"])));
        assert!(allowed(Some(&grant), &argv(&["/bin/true", "x"])));
        assert!(allowed(Some(&grant), &argv(&["psql", "-c", "select 1"])));
        assert!(!allowed(Some(&grant), &argv(&["psql", "-f", "x"])));
        assert!(!allowed(Some(&grant), &argv(&["true"])));
        assert!(!allowed(Some(&grant), &argv(&["/bin/truex"])));
        assert!(!allowed(
            Some(&grant),
            &argv(&["/bin/sh", "-c", "/bin/true"])
        ));
        assert!(allowed(Some(&HookGrant::Any), &argv(&["/bin/sh"])));
        assert!(!allowed(None, &argv(&["/bin/true"])));
        assert!(!allowed(
            Some(&HookGrant::Prefixes(vec![Vec::new()])),
            &argv(&["x"])
        ));
    }

    #[tokio::test]
    async fn hooks_are_off_unless_granted_and_nothing_runs_when_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let twin = Arc::new(Twin::default());
        let state =
            app("    preSnapshot:\n      - exec: [/bin/true]\n      - exec: [/bin/sh, -c, 'id']\n");

        let off = service(&twin, security(&[]), dir.path());
        let e = off
            .run("acme", &state, "preSnapshot", None)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(
            e.message.contains("acme") && e.message.contains("--hooks acme"),
            "{}",
            e.message
        );
        // An app without hooks of that name needs no grant.
        assert!(
            off.run("acme", &state, "postSnapshot", None)
                .await
                .unwrap()
                .ran
                .is_empty()
        );

        let only_true = service(
            &twin,
            security(&[("acme", HookGrant::Prefixes(vec![argv(&["/bin/true"])]))]),
            dir.path(),
        );
        let e = only_true
            .run("acme", &state, "preSnapshot", None)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("allowlist"), "{}", e.message);
        // Another tenant's grant is not this one's.
        let other = service(&twin, security(&[("other", HookGrant::Any)]), dir.path());
        assert!(
            other
                .run("acme", &state, "preSnapshot", None)
                .await
                .is_err()
        );
        assert!(twin.ran.lock().unwrap().is_empty(), "nothing ran");

        let any = service(&twin, security(&[("acme", HookGrant::Any)]), dir.path());
        let reply = any
            .run("acme", &state, "preSnapshot", Some("s1"))
            .await
            .unwrap();
        assert_eq!(reply.ran.len(), 2);
    }

    #[tokio::test]
    async fn hooks_get_a_clean_environment_and_the_tenants_scratch_dir() {
        let dir = tempfile::tempdir().unwrap();
        let twin = Arc::new(Twin::default());
        let hooks = service(&twin, security(&[("acme", HookGrant::Any)]), dir.path());
        let state = app("    preSnapshot:\n      - exec: [env]\n");
        hooks
            .run("acme", &state, "preSnapshot", Some("s1"))
            .await
            .unwrap();
        let ran = twin.ran.lock().unwrap();
        let spec = &ran[0];
        let keys: Vec<&str> = spec.env.keys().map(String::as_str).collect();
        assert!(
            keys.iter().all(|k| *k == "PATH" || k.starts_with("CAIRN_")),
            "{keys:?}"
        );
        assert_eq!(spec.env["PATH"], SAFE_PATH);
        assert_eq!(spec.env["CAIRN_APP"], "a");
        assert_eq!(spec.env["CAIRN_SNAPSHOT"], "s1");
        assert_eq!(spec.dir, dir.path().join("hooks").join("acme"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&spec.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn app_hook_is_refused_outside_a_step_of_the_same_tenant() {
        let e = check_step_only("acme", None, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message.contains("step"), "{}", e.message);
        // A parent that is not one of the tenant's workflows.
        assert!(check_step_only("acme", Some("wf-1"), false).is_err());
        assert!(check_step_only("acme", Some("wf-1"), true).is_ok());
    }

    #[tokio::test]
    async fn past_the_cap_a_hook_is_refused_as_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let release = Arc::new(Semaphore::new(0));
        let twin = Arc::new(Twin {
            ran: Mutex::default(),
            hold: Some(release.clone()),
        });
        let mut s = (*security(&[("acme", HookGrant::Any), ("beta", HookGrant::Any)])).clone();
        s.caps.hooks_running = 1;
        let hooks = Arc::new(service(&twin, Arc::new(s), dir.path()));
        let state = app("    preSnapshot:\n      - exec: [/bin/true]\n");
        let first = {
            let (hooks, state) = (hooks.clone(), state.clone());
            tokio::spawn(async move { hooks.run("acme", &state, "preSnapshot", None).await })
        };
        while twin.ran.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let e = hooks
            .run("acme", &state, "preSnapshot", None)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert!(cairn_workflows::retryable(e.code.as_str()));
        // Another tenant has its own slots.
        let second = {
            let (hooks, state) = (hooks.clone(), state.clone());
            tokio::spawn(async move { hooks.run("beta", &state, "preSnapshot", None).await })
        };
        while twin.ran.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        release.add_permits(3);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        // Its slot back, acme runs again.
        hooks
            .run("acme", &state, "preSnapshot", None)
            .await
            .unwrap();
        assert_eq!(twin.ran.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn the_local_runner_keeps_a_bounded_tail_and_kills_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |argv: &[&str], timeout: Duration| HookSpec {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::from([("PATH".to_owned(), SAFE_PATH.to_owned())]),
            dir: dir.path().to_owned(),
            user: None,
            timeout,
        };
        // 4 MiB of output: only the tail comes back.
        let exit = LocalRunner
            .run(spec(
                &[
                    "sh",
                    "-c",
                    "head -c 4194304 /dev/zero | tr '\\0' x; echo; echo the-end",
                ],
                DEFAULT_TIMEOUT,
            ))
            .await
            .unwrap();
        assert!(exit.success);
        assert!(
            exit.output.ends_with("the-end"),
            "{}",
            &exit.output[exit.output.len() - 20..]
        );
        assert!(
            exit.output.len() < OUTPUT_TAIL + 64,
            "{}",
            exit.output.len()
        );
        assert!(exit.output.starts_with("[… "), "says it was cut");

        let exit = LocalRunner
            .run(spec(
                &["sh", "-c", "pwd; echo oops >&2; exit 3"],
                DEFAULT_TIMEOUT,
            ))
            .await
            .unwrap();
        assert!(!exit.success);
        assert_eq!(exit.exit_code, 3);
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            exit.output,
            format!("{}\noops", canonical.display()),
            "cwd is the scratch dir, stderr after stdout"
        );
        // Nothing of this process's environment (HOME, CARGO_*) gets through.
        let exit = LocalRunner
            .run(spec(&["env"], DEFAULT_TIMEOUT))
            .await
            .unwrap();
        let names: Vec<&str> = exit
            .output
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| *k != "PWD")
            .collect();
        assert_eq!(names, ["PATH"], "{}", exit.output);

        let e = LocalRunner
            .run(spec(&["sleep", "5"], Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::DeadlineExceeded);
        let e = LocalRunner
            .run(spec(&["/nonexistent/hook"], DEFAULT_TIMEOUT))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::HookFailed);
    }

    #[tokio::test]
    async fn as_root_a_hook_runs_as_the_hooks_user_in_a_dir_it_could_not_walk_to() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: dropping privileges needs root");
            return;
        }
        let Ok(nobody) = HookUser::resolve("nobody") else {
            eprintln!("skipping: no user nobody");
            return;
        };
        // A 0700 root-owned data dir, as tempdir makes it.
        let data = tempfile::tempdir().unwrap();
        let mut s = (*security(&[("acme", HookGrant::Any)])).clone();
        s.hooks_user = Some("nobody".into());
        let hooks = Hooks::new(Arc::new(LocalRunner), Arc::new(s), data.path()).unwrap();
        let state =
            app("    whoami:\n      - exec: [sh, -c, 'id -u; id -G; ls .. || echo no-walk-up']\n");
        let reply = hooks.run("acme", &state, "whoami", None).await.unwrap();
        let out = &reply.ran[0].output;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], nobody.uid.to_string(), "{out}");
        assert_eq!(
            lines[1],
            nobody.gid.to_string(),
            "no supplementary groups: {out}"
        );
        assert!(out.contains("no-walk-up"), "{out}");
    }

    #[test]
    fn hook_definitions_are_checked() {
        let bad = app("    preSnapshot: [{timeoutSeconds: 3}]\n");
        assert_eq!(
            hooks_of(&bad, "preSnapshot").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let slow =
            app("    preSnapshot:\n      - exec: [sleep, '5']\n        timeoutSeconds: 999999\n");
        assert_eq!(
            hooks_of(&slow, "preSnapshot").unwrap()[0].timeout,
            MAX_TIMEOUT
        );
    }

    #[test]
    fn a_hooks_user_resolves_by_name_or_uid_and_root_is_refused() {
        assert!(HookUser::resolve("root").is_err());
        assert!(HookUser::resolve("0").is_err());
        assert!(HookUser::resolve("no-such-user-cairn").is_err());
        if let Ok(nobody) = HookUser::resolve("nobody") {
            assert_eq!(HookUser::resolve(&nobody.uid.to_string()).unwrap(), nobody);
        }
    }
}
