//! `cairn demo` is the README's first command: it must run to the end and
//! exit 0 on an empty data dir, with every check inside it holding.

use cairn_integration::cairn_bin;

#[test]
fn demo_exits_zero_on_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let out = std::process::Command::new(cairn_bin())
        .arg("demo")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Demo complete: every check held."),
        "{stdout}"
    );
    for step in 1..=8 {
        assert!(
            stdout.contains(&format!("==> step {step}:")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(data.join("journal.redb").exists());
}
