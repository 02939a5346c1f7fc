//! `cairn demo` is the README's first command: it must run to the end and
//! exit 0 on an empty data dir, with every check inside it holding, both
//! with a private nats-server and on a machine without one (the in-process
//! bus, where the restart step must release the journal before reopening).

use std::path::Path;
use std::process::{Command, Output};

use cairn_integration::cairn_bin;

fn run_demo(data: &Path, configure: impl FnOnce(&mut Command)) -> String {
    let mut command = Command::new(cairn_bin());
    command.arg("demo").arg("--data-dir").arg(data);
    configure(&mut command);
    let out: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Demo complete: every check held."),
        "{stdout}"
    );
    for step in 1..=9 {
        assert!(
            stdout.contains(&format!("==> step {step}:")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(data.join("journal.redb").exists());
    // The git-like story, each step shown.
    for shown in [
        "cairn app snapshot shop v1 -m",
        "known good: before the upgrade",
        "check: shop/data-db-0 reads 0xa5, max_connections=5, replicas=3",
        "cairn app rollback shop v1",
        "check: shop-dev/data-db-0 reads 0x42, max_connections=10, replicas=1",
        "0 B copied",
        "cairn app pull local shop@v1",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not shown:\n{stdout}");
    }
    stdout
}

#[test]
fn demo_exits_zero_on_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    run_demo(&dir.path().join("demo-data"), |_| {});
}

/// The first hour on a fresh machine: no nats-server anywhere the demo
/// looks (an empty PATH, and `CAIRN_NATS_SERVER` set but empty, since
/// `/usr/sbin` is searched too), so it falls back to the in-process bus.
#[test]
fn demo_exits_zero_without_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let stdout = run_demo(&dir.path().join("demo-data"), |command| {
        command
            .env("PATH", &empty_path)
            .env(cairn_actors::nats_server::BINARY_ENV, "");
    });
    assert!(stdout.contains("bus: in-process bus"), "{stdout}");
}
