//! The documented API, driven by a client nobody here wrote: nats-py from
//! PyPI runs `integration/py/api_client.py` against `cairn up` on a private
//! nats-server. The script reads only the checked-in `docs/asyncapi.yaml`,
//! sends every operation's example in table order, validates every reply
//! and every published event against the document's JSON Schemas (the
//! `jsonschema` package), and checks the error codes of bad requests.
//!
//! The Python packages live in a venv that `ops/scripts/install-deps.sh`
//! makes at `target/py-venv` (or `$CAIRN_PY_VENV`). Without it the test
//! skips, unless `CAIRN_REQUIRE_TOOLS` is set, when it fails.

use std::path::PathBuf;
use std::process::Command;

use cairn_integration::{Node, nats, workspace};
use cairn_schema::api::OPERATIONS;

/// The venv's python, if it has the client's packages.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("CAIRN_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target").join("py-venv"));
    let python = venv.join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", "import nats, jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
            "no Python venv with nats-py and jsonschema at {}; run ops/scripts/install-deps.sh",
            venv.display()
        );
        eprintln!(
            "skipping: no Python venv at {} (ops/scripts/install-deps.sh makes it)",
            venv.display()
        );
        return None;
    }
    Some(python)
}

#[test]
fn nats_py_sends_every_documented_operation_and_replies_match_the_schemas() {
    let Some(python) = python() else {
        return;
    };
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    // Three simulated nodes, so node names are known (`node.fail` names one).
    let node = Node::start_with(
        dir.path(),
        &nats.url,
        &[std::ffi::OsStr::new("--nodes"), std::ffi::OsStr::new("3")],
    );

    // A tenant other than the CLI's, so the `{tenant}` parameter is real.
    let out = Command::new(&python)
        .arg(workspace().join("integration/py/api_client.py"))
        .args(["--nats", &nats.url, "--tenant", "acme", "--doc"])
        .arg(workspace().join("docs/asyncapi.yaml"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the nats-py client found mismatches ({}):\n{stdout}\n{stderr}\ncairn up log:\n{}",
        out.status,
        node.log()
    );
    // The script ran every operation of the table, not just some.
    for op in OPERATIONS {
        let line = format!("ok {}", op.id());
        assert!(
            stdout.lines().any(|l| l == line),
            "{} was not checked:\n{stdout}",
            op.id()
        );
    }
    assert!(
        stdout.contains("match their channels"),
        "events were not checked:\n{stdout}"
    );
}
