//! Hooks and secrets against a real `cairn up` on a private nats-server
//! (issue 13, findings 1 and 10):
//!
//! - hooks are off unless the operator grants them: an app snapshot whose
//!   pre-hook would touch a file fails `permission_denied` and the file is
//!   never made; with `--hooks-config` allowing only `[/bin/true]`, a
//!   `/bin/sh -c` hook is refused while `/bin/true` runs;
//! - with `--hooks default`, a hook's environment holds nothing of the
//!   server's (no `AWS_SECRET_ACCESS_KEY`, though `cairn up` has one), and it
//!   runs in the tenant's scratch directory;
//! - `app.hook` sent straight over NATS is refused, even where hooks are on;
//! - a Secret's values and a `secret: true` workflow param are in no file of
//!   the data dir (journal, WAL, state snapshots) nor in `events --json` or
//!   `events export`, while `app get -o yaml` shows the Secret to its
//!   tenant, `events verify` passes, and a push then pull through a file
//!   repo gives the Secret back.

use std::path::Path;

use cairn_integration::{Node, RawNats, have_tool, nats};
use serde_json::Value;

/// An app with one small volume, a Secret, and the given App `spec.hooks`.
fn manifest(name: &str, hooks: &str) -> String {
    format!(
        r#"apiVersion: cairn.dev/v1
kind: App
metadata: {{name: {name}}}
spec:
  hooks:
{hooks}
---
apiVersion: v1
kind: Secret
metadata: {{name: db-credentials}}
data: {{password: {DATA_B64}}}
stringData: {{token: {STRING_SECRET}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: plain-setting}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec: {{resources: {{requests: {{storage: 8Mi}}}}}}
"#
    )
}

/// A Secret's `stringData` value.
const STRING_SECRET: &str = "s3cr3t-string-value-7a91";
/// A Secret's `data` value: base64 of [`DATA_PLAIN`].
const DATA_B64: &str = "ZGF0YS1wbGFpbi12YWx1ZS01YzIy";
const DATA_PLAIN: &str = "data-plain-value-5c22";
/// A `secret: true` workflow param.
const PARAM_SECRET: &str = "paramsecret4d3f9e";
const AWS_SECRET: &str = "aws-server-credential-0b7e";

fn create_app(node: &Node, dir: &Path, name: &str, hooks: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest(name, hooks)).unwrap();
    node.ok(&["app", "create", "-f", file.to_str().unwrap()]);
}

fn snapshots(node: &Node, app: &str) -> usize {
    node.json(&["app", "snapshots", app])["snapshots"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn hooks_are_off_unless_granted_and_run_only_what_the_allowlist_names() {
    if !have_tool("nats-server") {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = dir.path().join("hook-ran");
    let touch = format!(
        "    preSnapshot: [{{exec: [/bin/sh, -c, 'touch {}']}}]",
        marker.display()
    );

    // (a) Off by default: refused, and nothing ran.
    let node = Node::start(&data, &nats.url);
    create_app(&node, dir.path(), "shell", &touch);
    let e = node.fails(&["app", "snapshot", "shell", "s1"]);
    assert!(e.contains("permission_denied"), "{e}");
    assert!(
        e.contains("tenant default") && e.contains("--hooks default"),
        "names the tenant and the flag: {e}"
    );
    assert!(!marker.exists(), "the hook must not have run");
    assert_eq!(snapshots(&node, "shell"), 0);
    // An app without hooks snapshots as before.
    create_app(&node, dir.path(), "plain", "    {}");
    node.ok(&["app", "snapshot", "plain", "s1"]);
    node.stop();

    // (b) An allowlist of [/bin/true]: /bin/sh -c is refused, /bin/true runs.
    let config = dir.path().join("hooks.yaml");
    std::fs::write(&config, "tenants:\n  default: [[/bin/true]]\n").unwrap();
    let node = Node::start_with(
        &data,
        &nats.url,
        &["--hooks-config".as_ref(), config.as_os_str()],
    );
    let e = node.fails(&["app", "snapshot", "shell", "s2"]);
    assert!(
        e.contains("permission_denied") && e.contains("allowlist"),
        "{e}"
    );
    assert!(!marker.exists(), "the refused hook must not have run");
    assert_eq!(snapshots(&node, "shell"), 0);
    create_app(
        &node,
        dir.path(),
        "allowed",
        "    preSnapshot: [{exec: [/bin/true]}]\n    postSnapshot: [{exec: [/bin/true, extra-arg]}]",
    );
    let snap = node.json(&["app", "snapshot", "allowed", "s1"]);
    assert_eq!(snap["snapshot"], "s1", "{snap}");
    assert_eq!(snapshots(&node, "allowed"), 1);
    assert!(node.ok(&["events", "verify"]).contains("intact"));
}

#[test]
fn a_granted_hook_sees_a_clean_environment_and_app_hook_is_step_only() {
    if !have_tool("nats-server") {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = dir.path().join("direct-hook-ran");
    // As root (CI's containers), hooks drop to `nobody`; the data dir is
    // 0700 (tempdir's mode), which the hook never needs to walk through.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nobody_uid = root
        .then(|| {
            let out = std::process::Command::new("id")
                .args(["-u", "nobody"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .flatten();
    let mut up_args: Vec<&std::ffi::OsStr> = vec!["--hooks".as_ref(), "default".as_ref()];
    if nobody_uid.is_some() {
        up_args.extend(["--hooks-user", "nobody"].map(std::ffi::OsStr::new));
    }
    let node = Node::start_full(
        &data,
        &nats.url,
        &[],
        &up_args,
        &[("AWS_SECRET_ACCESS_KEY", AWS_SECRET)],
    );
    create_app(
        &node,
        dir.path(),
        "shop",
        &format!(
            "    printenv: [{{exec: [sh, -c, 'env; echo cwd=$(pwd); echo uid=$(id -u)']}}]\n    direct: [{{exec: [touch, '{}']}}]",
            marker.display()
        ),
    );
    // (c) A user workflow runs the hook; its output is the workflow's.
    let wf = dir.path().join("printenv.yaml");
    std::fs::write(
        &wf,
        "kind: Workflow\nmetadata: {name: printenv}\nspec:\n  params: {app: null}\n  steps:\n    - name: env\n      run: app.hook\n      with: {name: \"${app}\", hook: printenv}\n",
    )
    .unwrap();
    let ran = node.json(&[
        "workflow",
        "run",
        wf.to_str().unwrap(),
        "--param",
        "app=shop",
    ]);
    let output = ran["output"]["ran"][0]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no hook output in {ran}"));
    assert!(output.contains("CAIRN_APP=shop"), "{output}");
    assert!(output.contains("CAIRN_HOOK=printenv"), "{output}");
    assert!(
        !output.contains("AWS_SECRET_ACCESS_KEY") && !output.contains(AWS_SECRET),
        "the server's environment leaked into a hook: {output}"
    );
    assert!(!output.contains("HOME="), "{output}");
    for line in output.lines().filter(|l| l.contains('=')) {
        let name = line.split('=').next().unwrap();
        assert!(
            ["PATH", "PWD", "cwd", "uid"].contains(&name) || name.starts_with("CAIRN_"),
            "unexpected variable {name} in a hook's environment: {output}"
        );
    }
    if let Some(uid) = &nobody_uid {
        assert!(
            output.contains(&format!("uid={uid}")),
            "runs as the hooks user: {output}"
        );
    }
    let scratch = data.join("hooks").join("default").canonicalize().unwrap();
    assert!(
        output.contains(&format!("cwd={}", scratch.display())),
        "runs in the tenant's scratch dir: {output}"
    );

    // (d) app.hook straight over NATS: refused, though hooks are on.
    let mut raw = RawNats::connect(&nats.url);
    let reply = raw.request(
        "cairn.v1.default.app.hook",
        &[],
        br#"{"name":"shop","hook":"direct"}"#,
    );
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    assert!(!marker.exists(), "a direct app.hook must not run anything");
    // Nor does a forged header make it a step.
    let reply = raw.request(
        "cairn.v1.default.app.hook",
        &[("Cairn-Request-Id", "wf-forged:0:0")],
        br#"{"name":"shop","hook":"direct"}"#,
    );
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    assert!(!marker.exists());
}

/// Every regular file under `dir` (the `cairn up` log included) that holds
/// one of `needles`, with the needle.
fn files_holding(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                for needle in needles {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(format!("{} holds {needle}", path.display()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn secrets_never_reach_the_journal_in_plaintext_but_come_back_to_their_tenant() {
    if !have_tool("nats-server") {
        return;
    }
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data, &nats.url);
    create_app(&node, dir.path(), "shop", "    {}");

    // Its tenant sees the Secret as written.
    let yaml = node.ok(&["-o", "yaml", "app", "get", "shop"]);
    assert!(
        yaml.contains(STRING_SECRET) && yaml.contains(DATA_B64),
        "{yaml}"
    );
    assert!(!yaml.contains("cairn-sealed"), "{yaml}");
    node.ok(&["app", "snapshot", "shop", "s1"]);

    // A workflow with a secret param: sealed in the journal, redacted in views.
    let wf = dir.path().join("with-secret.yaml");
    std::fs::write(
        &wf,
        r#"kind: Workflow
metadata: {name: with-secret}
spec:
  params:
    app: null
    token: {required: true, secret: true}
  steps:
    - name: ping
      run: system.ping
      with: {token: "${token}"}
    - name: check
      run: app.hook
      with: {name: "${app}", hook: "check-${token}"}
"#,
    )
    .unwrap();
    let token = format!("token={PARAM_SECRET}");
    let ran = node.json(&[
        "workflow",
        "run",
        wf.to_str().unwrap(),
        "--param",
        "app=shop",
        "--param",
        &token,
    ]);
    assert_eq!(ran["status"], "completed", "{ran}");
    let shown = ran.to_string();
    assert!(!shown.contains(PARAM_SECRET), "{shown}");
    assert_eq!(ran["params"]["token"], "<redacted>", "{ran}");
    let id = ran["id"].as_str().unwrap().to_owned();
    let shown = node.ok(&["-o", "json", "workflow", "show", &id]);
    assert!(
        !shown.contains(PARAM_SECRET) && shown.contains("<redacted>"),
        "{shown}"
    );

    // Push to a file repo in the data dir, pull as another app: the Secret
    // comes back intact.
    node.ok(&["repo", "add", "local"]);
    node.ok(&["app", "push", "shop@s1", "local"]);
    node.ok(&["app", "pull", "local", "shop@s1", "--as", "restored"]);
    let restored = node.ok(&["-o", "yaml", "app", "get", "restored"]);
    assert!(
        restored.contains(STRING_SECRET) && restored.contains(DATA_B64),
        "{restored}"
    );
    let original = node.json(&["app", "get", "shop"]);
    let pulled = node.json(&["app", "get", "restored"]);
    let secret_of = |app: &Value| {
        app["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "Secret")
            .cloned()
            .unwrap()
    };
    for field in ["data", "stringData"] {
        assert_eq!(
            secret_of(&pulled)[field],
            secret_of(&original)[field],
            "{pulled}"
        );
    }

    // Events as listed and exported: sealed, never plaintext.
    let secrets = [STRING_SECRET, DATA_B64, DATA_PLAIN, PARAM_SECRET];
    let events = node.ok(&["events", "--json"]);
    let export = dir.path().join("events.jsonl");
    node.ok(&["events", "export", export.to_str().unwrap()]);
    let exported = std::fs::read_to_string(&export).unwrap();
    for text in [&events, &exported] {
        for s in secrets {
            assert!(!text.contains(s), "{s} in the events");
        }
        assert!(text.contains("cairn-sealed:v1:"), "sealed values are there");
        assert!(text.contains("<redacted>"), "the secret param is redacted");
    }
    assert!(node.ok(&["events", "verify"]).contains("intact"));

    // Nothing in the data dir: journal, its WAL, state snapshots, anything.
    node.stop();
    let leaks = files_holding(&data, &secrets);
    assert!(leaks.is_empty(), "plaintext secrets on disk: {leaks:?}");
    for name in ["journal.redb", "journal.wal"] {
        assert!(data.join(name).exists(), "{name} was scanned");
    }
    let key = data.join("keys").join("cluster.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Restarted, the journal replays and verifies, and the Secret still
    // opens for its tenant.
    let node = Node::start(&data, &nats.url);
    assert!(node.ok(&["events", "verify"]).contains("intact"));
    let yaml = node.ok(&["-o", "yaml", "app", "get", "shop"]);
    assert!(yaml.contains(STRING_SECRET), "{yaml}");
}
