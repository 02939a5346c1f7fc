//! App hooks: the commands an App document lists under `spec.hooks.<name>`
//! (`preSnapshot`, `postSnapshot`, `preRollback`, `postRollback`, or any name
//! a user workflow runs with `app.hook`), each
//! `{exec: [argv…], timeoutSeconds: N}`.
//!
//! Hooks run one after another, in the environment of `cairn up` plus
//! `CAIRN_APP`, `CAIRN_HOOK`, `CAIRN_SNAPSHOT` (when there is one) and
//! `CAIRN_VOLUMES` (the app's volume names, space-separated). The first
//! that exits non-zero fails the step (`hook_failed`, with the end of its
//! output); one that runs past its timeout is killed (`deadline_exceeded`).
//! An app without hooks of that name succeeds at once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_schema::app::AppState;
use cairn_schema::reply::{HookReply, HookRun};
use cairn_schema::{ApiError, ErrorCode};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Default and largest hook timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output kept per hook (the end of it).
const OUTPUT_TAIL: usize = 2048;
/// Most hooks one name may list.
const MAX_HOOKS: usize = 32;

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

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..])
        .trim_end()
        .to_owned()
}

/// Runs the hooks of `hook` for `state`'s app, in order.
pub async fn run(
    state: &AppState,
    hook: &str,
    snapshot: Option<&str>,
) -> Result<HookReply, ApiError> {
    let hooks = hooks_of(state, hook)?;
    let mut ran = Vec::new();
    for h in hooks {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&h.argv[0]);
        command
            .args(&h.argv[1..])
            .env("CAIRN_APP", &state.name)
            .env("CAIRN_HOOK", hook)
            .env("CAIRN_VOLUMES", state.volume_names().join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(s) = snapshot {
            command.env("CAIRN_SNAPSHOT", s);
        }
        let what = format!("hook {hook} of app {} ({})", state.name, h.argv.join(" "));
        let mut child = command.spawn().map_err(|e| {
            ApiError::new(
                ErrorCode::HookFailed,
                format!("{what} could not start: {e}"),
            )
        })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let waited = tokio::time::timeout(h.timeout, async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, _, status) = tokio::join!(
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err),
                child.wait()
            );
            out.extend_from_slice(&err);
            (status, out)
        })
        .await;
        let (status, output) = match waited {
            Ok(done) => done,
            Err(_) => {
                let _ = child.kill().await;
                return Err(ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "{what} ran past its timeout of {:?} and was killed",
                        h.timeout
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
        let output = tail(&output);
        let exit_code = status.code().unwrap_or(-1);
        if !status.success() {
            return Err(ApiError::new(
                ErrorCode::HookFailed,
                format!("{what} exited with {status}: {output}"),
            ));
        }
        ran.push(HookRun {
            argv: h.argv,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
            output,
        });
    }
    Ok(HookReply {
        name: state.name.clone(),
        hook: hook.to_owned(),
        ran,
    })
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

    #[tokio::test]
    async fn hooks_run_in_order_and_fail_or_time_out_clearly() {
        let ok =
            app("    preSnapshot:\n      - exec: [sh, -c, 'echo $CAIRN_APP $CAIRN_SNAPSHOT']\n");
        let reply = run(&ok, "preSnapshot", Some("s1")).await.unwrap();
        assert_eq!(reply.ran.len(), 1);
        assert_eq!(reply.ran[0].output, "a s1");
        assert!(run(&ok, "postSnapshot", None).await.unwrap().ran.is_empty());

        let failing =
            app("    preSnapshot:\n      - exec: [sh, -c, 'echo frozen? no >&2; exit 3']\n");
        let e = run(&failing, "preSnapshot", None).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::HookFailed);
        assert!(e.message.contains("frozen? no"), "{}", e.message);

        let slow =
            app("    preSnapshot:\n      - exec: [sleep, '5']\n        timeoutSeconds: 0.2\n");
        let e = run(&slow, "preSnapshot", None).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::DeadlineExceeded);

        let bad = app("    preSnapshot: [{timeoutSeconds: 3}]\n");
        assert_eq!(
            run(&bad, "preSnapshot", None).await.unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
