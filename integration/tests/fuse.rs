//! The FUSE front-end end to end: `cairn up --fuse DIR`, a loop device on
//! `DIR/v`, ext4 made and filled through it, frozen with `fsfreeze` while
//! `cairn volume snapshot` runs, and checked with `fsck.ext4`. The snapshot
//! (`DIR/v@s1`) and a clone of it (`DIR/c1`) must mount and hold exactly the
//! files written before the freeze.
//!
//! Needs root, /dev/fuse, loop devices, util-linux, e2fsprogs and fuse3. It
//! skips without them unless `CAIRN_REQUIRE_TOOLS` is set, then it fails.
//! Whatever happens, the [`Cleanup`] guard thaws, unmounts and detaches
//! everything it set up.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_integration::{NatsServer, Node, have_tool, nats, noise};
use tempfile::TempDir;

const MIB: usize = 1 << 20;

/// Runs a program, panicking with its output when it fails; returns stdout.
fn run(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program for its side effect during cleanup; failures are ignored.
fn quietly(program: &str, args: &[&OsStr]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Whether `dir` is a mountpoint right now.
fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*dir))
}

/// Undoes, in reverse, everything a test set up outside its process.
struct Cleanup {
    fuse_dir: PathBuf,
    frozen: Option<PathBuf>,
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Cleanup {
    fn losetup(&mut self, file: &Path, read_only: bool) -> String {
        let mut args = vec![os("-f"), os("--show")];
        if read_only {
            args.push(os("-r"));
        }
        args.push(file.as_os_str());
        let dev = run("losetup", &args).trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        self.loops.push(dev.clone());
        dev
    }

    fn detach(&mut self, dev: &str) {
        self.loops.retain(|d| d != dev);
        run("losetup", &[os("-d"), os(dev)]);
    }

    fn mount(&mut self, dev: &str, dir: &Path, options: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = vec![];
        if let Some(options) = options {
            args.extend([os("-o"), os(options)]);
        }
        args.extend([os(dev), dir.as_os_str()]);
        run("mount", &args);
        self.mounts.push(dir.to_owned());
    }

    fn umount(&mut self, dir: &Path) {
        self.mounts.retain(|d| d != dir);
        run("umount", &[dir.as_os_str()]);
    }

    fn freeze(&mut self, dir: &Path) {
        run("fsfreeze", &[os("-f"), dir.as_os_str()]);
        self.frozen = Some(dir.to_owned());
    }

    fn thaw(&mut self) {
        if let Some(dir) = self.frozen.take() {
            run("fsfreeze", &[os("-u"), dir.as_os_str()]);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.frozen.take() {
            quietly("fsfreeze", &[os("-u"), dir.as_os_str()]);
        }
        for dir in self.mounts.drain(..).rev() {
            if !quietly("umount", &[dir.as_os_str()]) {
                quietly("umount", &[os("-l"), dir.as_os_str()]);
            }
        }
        for dev in self.loops.drain(..).rev() {
            quietly("losetup", &[os("-d"), os(&dev)]);
        }
        if is_mounted(&self.fuse_dir) {
            quietly(
                "fusermount3",
                &[os("-u"), os("-z"), self.fuse_dir.as_os_str()],
            );
        }
    }
}

/// Whether this machine can run the test: tools, devices and root. Skips
/// (false) only when CAIRN_REQUIRE_TOOLS is unset; otherwise it panics.
fn can_run() -> bool {
    let tools = [
        "losetup",
        "mount",
        "umount",
        "mkfs.ext4",
        "fsck.ext4",
        "fsfreeze",
        "fusermount3",
    ];
    if !tools.iter().all(|t| have_tool(t)) {
        return false;
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    for (ok, what) in [
        (Path::new("/dev/fuse").exists(), "/dev/fuse"),
        (Path::new("/dev/loop-control").exists(), "/dev/loop-control"),
        (root, "root"),
    ] {
        if !ok {
            assert!(
                std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none(),
                "{what} is required but missing"
            );
            eprintln!("skipping: {what} is missing");
            return false;
        }
    }
    true
}

/// A node with FUSE on `<tmp>/mnt` and volume `v` holding ext4 with known
/// files, snapshotted as `v@s1` while frozen, changed after the snapshot,
/// unmounted, detached and fsck-clean. Fields drop in order: the guard
/// first, the temp dir last.
struct Fixture {
    cleanup: Cleanup,
    node: Node,
    _nats: NatsServer,
    tmp: TempDir,
    /// The files (path relative to the ext4 root, content) as of `v@s1`.
    frozen_files: Vec<(&'static str, Vec<u8>)>,
}

impl Fixture {
    fn mnt(&self) -> PathBuf {
        self.tmp.path().join("mnt")
    }

    /// Loop-mounts an export read-only, checks it with fsck and compares
    /// its files with those of `v@s1`.
    fn check_frozen_image(&mut self, export: &str) {
        let file = self.mnt().join(export);
        let dev = self.cleanup.losetup(&file, true);
        run("fsck.ext4", &[os("-n"), os("-f"), os(&dev)]);
        let dir = self
            .tmp
            .path()
            .join(format!("ro-{}", export.replace('@', "-")));
        self.cleanup.mount(&dev, &dir, Some("ro,noload"));
        for (path, content) in &self.frozen_files {
            let got = std::fs::read(dir.join(path))
                .unwrap_or_else(|e| panic!("{export}: reading {path}: {e}"));
            assert!(
                got == *content,
                "{export}: {path} differs from what was written before the freeze"
            );
        }
        assert!(
            !dir.join("after.bin").exists(),
            "{export}: a file written after the snapshot is in it"
        );
        self.cleanup.umount(&dir);
        self.cleanup.detach(&dev);
    }
}

fn prepare() -> Option<Fixture> {
    if !can_run() {
        return None;
    }
    let nats = nats();
    let tmp = tempfile::tempdir().unwrap();
    // Canonical, so it matches /proc/self/mounts.
    let root = tmp.path().canonicalize().unwrap();
    let mnt = root.join("mnt");
    let node = Node::start_with(
        &root.join("data"),
        &nats.url,
        &[os("--fuse"), mnt.as_os_str()],
    );
    let mut cleanup = Cleanup {
        fuse_dir: mnt.clone(),
        frozen: None,
        mounts: Vec::new(),
        loops: Vec::new(),
    };
    assert!(
        is_mounted(&mnt),
        "cairn up --fuse mounted {}",
        mnt.display()
    );

    node.ok(&["volume", "create", "v", "--size", "256Mi"]);
    let dev = cleanup.losetup(&mnt.join("v"), false);
    run("mkfs.ext4", &[os("-q"), os(&dev)]);
    let ext = root.join("ext");
    cleanup.mount(&dev, &ext, None);

    let frozen_files = vec![
        ("a.bin", noise(1, 3 * MIB + 1234)),
        ("sub/b.bin", noise(2, 5 * MIB)),
        ("c.txt", b"written before the freeze\n".to_vec()),
    ];
    for (path, content) in &frozen_files {
        let path = ext.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }
    run("sync", &[]);
    cleanup.freeze(&ext);
    node.ok(&["volume", "snapshot", "v", "s1"]);
    cleanup.thaw();

    // Changes after the snapshot must not show in it.
    std::fs::write(ext.join("after.bin"), noise(3, 2 * MIB)).unwrap();
    std::fs::write(ext.join("c.txt"), b"written after the snapshot\n").unwrap();
    run("sync", &[]);
    cleanup.umount(&ext);
    run("fsck.ext4", &[os("-n"), os("-f"), os(&dev)]);
    cleanup.detach(&dev);

    Some(Fixture {
        cleanup,
        node,
        _nats: nats,
        tmp,
        frozen_files,
    })
}

#[test]
fn fuse_ext4_on_loop_survives_freeze_and_snapshot() {
    let Some(mut fx) = prepare() else {
        return;
    };
    let mnt = fx.mnt();
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["v", "v@s1"]);
    assert_eq!(
        std::fs::metadata(mnt.join("v@s1")).unwrap().len(),
        256 * MIB as u64
    );
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("v@s1"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    fx.check_frozen_image("v@s1");

    // A graceful stop unmounts.
    let Fixture { cleanup, node, .. } = fx;
    assert!(node.stop().success());
    assert!(
        !is_mounted(&mnt),
        "cairn stopped but {} is mounted",
        mnt.display()
    );
    drop(cleanup);
}

/// Needs `cairn volume clone V@S NEWV`: it fails until that command lands.
#[test]
fn fuse_clone_of_frozen_snapshot_mounts() {
    let Some(mut fx) = prepare() else {
        return;
    };
    fx.node.ok(&["volume", "clone", "v@s1", "c1"]);
    assert!(
        fx.mnt().join("c1").exists(),
        "the clone shows up in the mount"
    );
    fx.check_frozen_image("c1");
}
