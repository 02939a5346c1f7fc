//! The block engine end to end, through `cairn up` and real clients:
//! qemu-img convert and compare, qemu-io patterns, nbdcopy, nbdinfo and fio
//! with `--verify` over its nbd engine; snapshots, thin clones, rollback and
//! diff from the CLI; a flipped byte on disk (EIO, scrub); encryption at
//! rest (no plaintext on disk, no key no data); and a full disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_integration::{Node, have_tool, nats, qemu_io, verified};
use serde_json::Value;
use tempfile::TempDir;

const MIB: usize = 1 << 20;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw image with text, noise, zeros and a hole, `mib` MiB long.
fn make_image(path: &Path, mib: usize, salt: u32) {
    let mut data = vec![0u8; mib * MIB];
    for (i, chunk) in data.chunks_mut(MIB).enumerate() {
        match i % 4 {
            0 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = b"cairn block test "[(j + salt as usize) % 17]),
            1 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = ((j as u32 ^ salt).wrapping_mul(2654435761) >> 13) as u8),
            _ => {}
        }
    }
    std::fs::write(path, data).unwrap();
}

fn show(node: &Node, volume: &str) -> Value {
    serde_json::from_str(&node.ok(&["-o", "json", "volume", "show", volume])).unwrap()
}

fn compare(a: &str, b: &str) -> bool {
    run("qemu-img", &["compare", "-f", "raw", "-F", "raw", a, b])
        .status
        .success()
}

fn tools(names: &[&str]) -> bool {
    names.iter().all(|t| have_tool(t))
}

#[test]
fn real_clients_snapshots_clones_rollback_and_diff() {
    if !tools(&["qemu-img", "qemu-io", "nbdcopy", "nbdinfo", "fio"]) {
        return;
    }
    let nats = nats();
    let tmp = TempDir::new().unwrap();
    let node = Node::start(&tmp.path().join("data"), &nats.url);
    node.ok(&["volume", "create", "v", "--size", "64Mi"]);

    // qemu-img convert in, compare out.
    let src = tmp.path().join("src.raw");
    make_image(&src, 64, 1);
    let src = src.to_str().unwrap();
    let v = node.nbd_uri("v");
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &v],
    );
    assert!(compare(src, &v), "the volume differs from what was written");

    // Snapshot, clone; then change the source.
    node.ok(&["volume", "snapshot", "v", "s1"]);
    node.ok(&["volume", "clone", "v@s1", "c1"]);
    let clone = show(&node, "c1");
    assert_eq!(clone["origin"], "v@s1");
    assert_eq!(
        clone["exclusive_bytes"], 0,
        "a fresh clone owns no blocks: {clone}"
    );
    let out = qemu_io(&v, "write -P 0x5a 1M 2M");
    assert!(out.status.success(), "{out:?}");
    assert!(verified(&qemu_io(&v, "read -P 0x5a 1M 2M")));
    assert!(compare(src, &node.nbd_uri("v@s1")), "the snapshot changed");
    assert!(compare(src, &node.nbd_uri("c1")), "the clone changed");
    assert!(!compare(src, &v));

    // Writes to the clone stay in the clone.
    assert!(
        qemu_io(&node.nbd_uri("c1"), "write -P 0x11 40M 64k")
            .status
            .success()
    );
    assert!(verified(&qemu_io(
        &node.nbd_uri("c1"),
        "read -P 0x11 40M 64k"
    )));
    assert!(compare(src, &node.nbd_uri("v@s1")));
    let clone = show(&node, "c1");
    let own = clone["exclusive_bytes"].as_u64().unwrap();
    assert!(
        own > 0 && own <= 128 * 1024,
        "clone owns {own} bytes after 64 KiB"
    );

    // nbdcopy the clone's snapshot view out, nbdinfo sees a read-only export.
    let copy = tmp.path().join("copy.raw");
    run_ok("nbdcopy", &[&node.nbd_uri("v@s1"), copy.to_str().unwrap()]);
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(src).unwrap());
    let info = run_ok("nbdinfo", &["--json", &node.nbd_uri("v@s1")]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");

    // The diff names exactly the rewritten range.
    let diff: Value =
        serde_json::from_str(&node.ok(&["-o", "json", "volume", "diff", "v@s1", "v"])).unwrap();
    assert_eq!(diff["changed_bytes"], 2 * MIB as u64, "{diff}");
    assert_eq!(diff["extents"][0]["offset"], MIB as u64);

    // Rollback brings the snapshot's bytes back.
    node.ok(&["volume", "rollback", "v", "s1"]);
    assert!(compare(src, &v), "rollback did not restore the snapshot");
    assert_eq!(show(&node, "v")["rolled_back_to"], "s1");

    // A 10-deep clone chain still reads the original bytes.
    let mut prev = "c1".to_owned();
    for i in 2..=10 {
        node.ok(&["volume", "snapshot", &prev, "s"]);
        let next = format!("c{i}");
        node.ok(&["volume", "clone", &format!("{prev}@s"), &next]);
        prev = next;
    }
    let tip = node.nbd_uri(&prev);
    assert!(verified(&qemu_io(&tip, "read -P 0x11 40M 64k")));
    assert!(verified(&qemu_io(&tip, "read -P 0 63M 1M")));

    // fio writes and verifies through its nbd engine.
    let fio = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", node.nbd_uri("c1")),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            // Else fio leaves verify state files in the working directory.
            "--verify_state_save=0",
        ],
    );
    let text = String::from_utf8_lossy(&fio.stdout);
    assert!(
        fio.status.success() && !text.contains("verify: bad"),
        "fio verify failed:\n{text}{}",
        String::from_utf8_lossy(&fio.stderr)
    );

    // A 1 GiB and a 1 TiB volume with the same data cost the same.
    for (name, size) in [("small", "1G"), ("huge", "1T")] {
        node.ok(&["volume", "create", name, "--size", size]);
        let uri = node.nbd_uri(name);
        run_ok(
            "qemu-img",
            &["convert", "-n", "-f", "raw", "-O", "raw", src, &uri],
        );
        node.ok(&["volume", "snapshot", name, "s"]);
    }
    assert_eq!(
        show(&node, "small")["allocated_bytes"],
        show(&node, "huge")["allocated_bytes"]
    );
    // Discarding all of the 1 TiB volume (as mkfs does) costs what is
    // mapped; the snapshot keeps its data.
    // (qemu-io caps one discard at 2 GiB: send 1024 of 1 GiB each.)
    let huge = node.nbd_uri("huge");
    let mut args = vec!["-f".to_owned(), "raw".to_owned()];
    for g in 0..1024 {
        args.push("-c".into());
        args.push(format!("discard {g}G 1G"));
    }
    args.push(huge);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("qemu-io", &args);
    assert_eq!(show(&node, "huge")["allocated_bytes"], 0);
    // (Only the written 64 MiB: a whole-image compare would read 1 TiB.)
    let head = tmp.path().join("huge-head.raw");
    run_ok(
        "qemu-img",
        &[
            "dd",
            "-f",
            "raw",
            "-O",
            "raw",
            "bs=1M",
            "count=64",
            &format!("if={}", node.nbd_uri("huge@s")),
            &format!("of={}", head.display()),
        ],
    );
    assert_eq!(std::fs::read(&head).unwrap(), std::fs::read(src).unwrap());

    // Everything survives a kill -9 (each step above flushed or snapshotted).
    node.ok(&["volume", "snapshot", "v", "before-kill"]);
    let data_dir = node.data_dir.clone();
    node.kill9();
    let node = Node::start(&data_dir, &nats.url);
    assert!(compare(src, &node.nbd_uri("v")));
    assert!(compare(src, &node.nbd_uri("v@s1")));
    assert!(verified(&qemu_io(
        &node.nbd_uri(&prev),
        "read -P 0x11 40M 64k"
    )));
    let scrub = node.cli(&["volume", "scrub", "v"]);
    assert!(scrub.status.success(), "{scrub:?}");
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("pool/segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_flipped_byte_is_an_io_error_and_scrub_names_it() {
    if !tools(&["qemu-io"]) {
        return;
    }
    let nats = nats();
    let tmp = TempDir::new().unwrap();
    let node = Node::start(&tmp.path().join("data"), &nats.url);
    node.ok(&[
        "volume",
        "create",
        "v",
        "--size",
        "16M",
        "--compress",
        "none",
    ]);
    let v = node.nbd_uri("v");
    assert!(qemu_io(&v, "write -P 0x61 0 1M").status.success());
    assert!(qemu_io(&v, "write -P 0x62 4M 1M").status.success());
    let data_dir = node.data_dir.clone();
    assert!(node.stop().success());

    // Flip one byte inside the payload of the first record (block 0).
    let seg = &segments(&data_dir)[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let i = bytes
        .iter()
        .position(|b| *b == 0x61)
        .expect("block 0 is on disk")
        + 100;
    bytes[i] ^= 0xff;
    std::fs::write(seg, bytes).unwrap();

    let node = Node::start(&data_dir, &nats.url);
    let out = qemu_io(&v, "read -P 0x61 0 4k");
    assert!(!verified(&out), "a corrupt block was read as good data");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    // Other blocks still read, and the server still serves.
    assert!(verified(&qemu_io(&v, "read -P 0x61 4k 1020k")));
    assert!(verified(&qemu_io(&v, "read -P 0x62 4M 1M")));
    let scrub = node.cli(&["-o", "json", "volume", "scrub", "v"]);
    assert_eq!(scrub.status.code(), Some(1), "scrub must fail: {scrub:?}");
    let report: Value = serde_json::from_slice(&scrub.stdout).unwrap();
    assert_eq!(
        report["bad_blocks"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["bad_blocks"][0]["offset"], 0);
    node.ok(&["request", "system.ping"]);
}

#[test]
fn encrypted_volumes_need_their_key() {
    if !tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let nats = nats();
    let tmp = TempDir::new().unwrap();
    let data_dir = tmp.path().join("data");
    let key = tmp.path().join("volume.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let other_key = tmp.path().join("other.key");
    std::fs::write(&other_key, [7u8; 32]).unwrap();
    let with_key = |k: &Path| {
        Node::start_with(
            &data_dir,
            &nats.url,
            &["--key-file".as_ref(), k.as_os_str()],
        )
    };

    let node = with_key(&key);
    node.ok(&["volume", "create", "secret", "--size", "8Mi", "--encrypt"]);
    node.ok(&["volume", "create", "plain", "--size", "8Mi"]);
    let text: Vec<u8> = b"CAIRN-SECRET-TEXT "
        .iter()
        .cycle()
        .take(4 * MIB)
        .copied()
        .collect();
    let src = tmp.path().join("secret.raw");
    std::fs::write(&src, &text).unwrap();
    for v in ["secret", "plain"] {
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                src.to_str().unwrap(),
                &node.nbd_uri(v),
            ],
        );
    }
    assert!(compare(src.to_str().unwrap(), &node.nbd_uri("secret")));
    assert_eq!(show(&node, "secret")["encrypted"], true);
    assert!(node.stop().success());

    // The plain volume's text is on disk (lz4 keeps literals); the secret's is not.
    let needle = b"CAIRN-SECRET-TEXT";
    let found = |v: &[u8]| v.windows(needle.len()).filter(|w| w == needle).count();
    let on_disk: usize = segments(&data_dir)
        .iter()
        .map(|p| found(&std::fs::read(p).unwrap()))
        .sum();
    assert!(
        on_disk > 0,
        "the unencrypted control volume should leave text"
    );
    assert!(
        on_disk < 1000,
        "encrypted blocks leak plaintext ({on_disk} hits)"
    );

    // Without the key, or with another one: a clear refusal, data intact.
    for wrong in [None, Some(&other_key)] {
        let node = match wrong {
            None => Node::start(&data_dir, &nats.url),
            Some(k) => with_key(k),
        };
        let out = qemu_io(&node.nbd_uri("secret"), "read 0 4k");
        assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("error"));
        let create = node.cli(&["volume", "create", "s2", "--size", "1Mi", "--encrypt"]);
        if wrong.is_none() {
            // No key loaded: encryption is refused, with a code.
            assert!(!create.status.success());
            assert!(
                String::from_utf8_lossy(&create.stderr).contains("failed_precondition"),
                "{create:?}"
            );
        } else {
            // Another key is loaded: new volumes use it; old ones stay sealed.
            assert!(create.status.success(), "{create:?}");
            node.ok(&["volume", "delete", "s2"]);
        }
        assert!(compare(src.to_str().unwrap(), &node.nbd_uri("plain")));
        node.ok(&["request", "system.ping"]);
        assert!(node.stop().success());
    }
    let node = with_key(&key);
    assert!(compare(src.to_str().unwrap(), &node.nbd_uri("secret")));
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_keeps_data() {
    if !tools(&["qemu-io"]) {
        return;
    }
    // A 48 MiB tmpfs as the data dir: the disk fills long before the volume.
    let tmp = TempDir::new().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=48m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    );
    if !mounted.status.success() {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
            "cannot mount a tmpfs (root needed): {mounted:?}"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let nats = nats();
    let node = Node::start(&mnt.join("data"), &nats.url);
    node.ok(&[
        "volume",
        "create",
        "v",
        "--size",
        "1G",
        "--compress",
        "none",
    ]);
    let v = node.nbd_uri("v");
    assert!(qemu_io(&v, "write -P 0x33 0 4M").status.success());
    assert!(qemu_io(&v, "flush").status.success());
    // Far more than fits.
    let out = qemu_io(&v, "write -P 0x44 8M 200M");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("No space left on device") || text.contains("error"),
        "a write past a full disk must fail: {text}"
    );
    // The data written before is intact and the node still serves.
    assert!(verified(&qemu_io(&v, "read -P 0x33 0 4M")));
    node.ok(&["volume", "show", "v"]);
    node.ok(&["request", "system.ping"]);
}

#[test]
fn slices_spread_over_several_disks() {
    if !tools(&["qemu-io"]) {
        return;
    }
    let nats = nats();
    let tmp = TempDir::new().unwrap();
    let (d0, d1) = (tmp.path().join("disk0"), tmp.path().join("disk1"));
    let args = [
        "--disk".as_ref(),
        d0.as_os_str(),
        "--disk".as_ref(),
        d1.as_os_str(),
    ];
    let data_dir = tmp.path().join("data");
    let node = Node::start_with(&data_dir, &nats.url, &args);
    node.ok(&["volume", "create", "v", "--size", "3Gi"]);
    let v = node.nbd_uri("v");
    // One write in each of the first two 1 GiB slices.
    assert!(qemu_io(&v, "write -P 0x71 0 1M").status.success());
    assert!(qemu_io(&v, "write -P 0x72 1G 1M").status.success());
    let seg_bytes = |d: &Path| -> u64 {
        std::fs::read_dir(d.join("segments"))
            .map(|it| it.map(|e| e.unwrap().metadata().unwrap().len()).sum())
            .unwrap_or(0)
    };
    assert!(seg_bytes(&d0) > 0, "slice 0 is not on disk0");
    assert!(seg_bytes(&d1) > 0, "slice 1 is not on disk1");
    assert!(node.stop().success());
    // The pool remembers its disks: restart without the flags.
    let node = Node::start(&data_dir, &nats.url);
    assert!(verified(&qemu_io(&node.nbd_uri("v"), "read -P 0x71 0 1M")));
    assert!(verified(&qemu_io(&node.nbd_uri("v"), "read -P 0x72 1G 1M")));
}
