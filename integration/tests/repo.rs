//! The backup repository against a real S3 server: `s3s-fs` (from
//! crates.io, `ops/scripts/install-deps.sh` installs it) on a loopback port
//! each test picks, with a real block pool in a temporary directory. Round
//! trip (bytes, and `qemu-img compare` over NBD when qemu-img is there), an
//! incremental push after changing 1% of a volume, the server killed
//! mid-push and restarted, a corrupted pack byte, a wrong key, a dead
//! endpoint. Skips when s3s-fs is missing, unless `CAIRN_REQUIRE_TOOLS=1`.

use std::process::Command;
use std::sync::{Arc, Mutex};

use cairn_actors::repo::{InitOptions, Key, ObjectStore, PullMode, PushRequest, Repo, RepoUrl};
use cairn_blocks::{Pool, PoolOptions};
use cairn_integration::{S3_SECRET, S3sFs, have_tool, noise};
use cairn_schema::ErrorCode;

const MIB: u64 = 1 << 20;

fn store(server: &S3sFs) -> Arc<dyn ObjectStore> {
    RepoUrl::parse(&server.url()).unwrap().open_store().unwrap()
}

fn setup() -> Option<(tempfile::TempDir, S3sFs, Pool)> {
    if !have_tool("s3s-fs") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = S3sFs::start(&dir.path().join("s3"));
    let pool = Pool::open_with(dir.path().join("pool"), PoolOptions::default()).unwrap();
    Some((dir, server, pool))
}

fn key() -> Key {
    Key::from_bytes([7u8; 32])
}

fn options(chunk_bytes: u64, pack_bytes: u64) -> InitOptions {
    InitOptions {
        chunk_bytes,
        pack_bytes,
        zstd_level: 1,
        ..InitOptions::default()
    }
}

fn write(pool: &Pool, volume: &str, offset: u64, data: &[u8]) {
    let device = pool.open_export(volume).unwrap();
    for (i, piece) in data.chunks(4 << 20).enumerate() {
        device
            .write_at(piece, offset + i as u64 * (4 << 20), false)
            .unwrap();
    }
}

fn read_all(pool: &Pool, export: &str) -> Vec<u8> {
    let device = pool.open_export(export).unwrap();
    let mut buf = vec![0u8; device.size() as usize];
    device.read_at(&mut buf, 0).unwrap();
    buf
}

/// Pulls `id`'s volume `v` into a new volume `w`; it must read as `export`.
fn assert_pulls_back(repo: &Repo, pool: &Pool, id: &str, export: &str) {
    repo.pull(
        pool,
        id,
        &[("v".into(), "w".into())],
        PullMode::Create,
        &|_| {},
    )
    .unwrap();
    assert!(
        read_all(pool, "w") == read_all(pool, export),
        "w differs from {export}"
    );
}

fn push(
    repo: &Repo,
    pool: &Pool,
    app: &str,
    volume: &str,
    snapshot: &str,
    parent: Option<String>,
) -> cairn_actors::repo::Result<cairn_actors::repo::PushReport> {
    repo.push(
        pool,
        &PushRequest {
            app: app.into(),
            snapshot: snapshot.into(),
            volumes: vec![(volume.into(), snapshot.into())],
            meta: serde_json::json!({ "app": app }),
            parent,
        },
        &|_| {},
    )
}

#[test]
fn a_volume_round_trips_through_s3() {
    let Some((dir, server, pool)) = setup() else {
        return;
    };
    // 64 MiB: 24 random, 16 zero, 24 of one repeated MiB.
    pool.create_volume("shop/data-db-0", 64 * MIB).unwrap();
    write(&pool, "shop/data-db-0", 0, &noise(1, 24 * MIB as usize));
    let repeated = noise(2, MIB as usize);
    for i in 40..64 {
        write(&pool, "shop/data-db-0", i * MIB, &repeated);
    }
    pool.snapshot("shop/data-db-0", "s1").unwrap();
    // 20 MiB packs: the first goes up as a multipart upload.
    let repo = Repo::init(store(&server), &key(), options(MIB, 20 * MIB)).unwrap();
    let report = push(&repo, &pool, "shop", "shop/data-db-0", "s1", None).unwrap();
    assert_eq!(report.hole_chunks, 16, "{report:?}");
    assert_eq!(report.new_chunks, 25, "{report:?}");
    assert_eq!(report.dedup_chunks, 23, "{report:?}");
    assert!(report.uploaded_bytes < 26 * MIB, "{report:?}");
    assert!(report.packs_uploaded >= 2, "{report:?}");

    // Another process's view: open afresh, list, pull under a new name.
    let repo = Repo::open(store(&server), &key()).unwrap();
    let listed = repo.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].app.as_str(), listed[0].snapshot.as_str()),
        ("shop", "s1")
    );
    assert_eq!(listed[0].logical_bytes, 64 * MIB);
    let pulled = repo
        .pull(
            &pool,
            &report.manifest_id,
            &[("shop/data-db-0".into(), "copy/data-db-0".into())],
            PullMode::Create,
            &|_| {},
        )
        .unwrap();
    assert_eq!(pulled.written_chunks, 48);
    assert!(read_all(&pool, "shop/data-db-0@s1") == read_all(&pool, "copy/data-db-0"));
    assert!(repo.check().unwrap().is_ok());

    if have_tool("qemu-img") {
        let socket = dir.path().join("nbd.sock");
        let pool = Arc::new(pool);
        let nbd = cairn_blocks::nbd::serve(
            &cairn_blocks::nbd::ListenAddr::Unix(socket.clone()),
            pool.clone(),
            cairn_blocks::nbd::Limits::default(),
        )
        .unwrap();
        let uri = |export: &str| format!("nbd+unix:///{export}?socket={}", socket.display());
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(uri("shop/data-db-0@s1"))
            .arg(uri("copy/data-db-0"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img compare: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        nbd.shutdown();
    }
}

#[test]
fn an_incremental_push_after_changing_one_percent_uploads_under_two() {
    let Some((_dir, server, pool)) = setup() else {
        return;
    };
    // 256 KiB chunks: one extent of 1% touches at most 4 of the 256 chunks.
    let size = 64 * MIB;
    pool.create_volume("v", size).unwrap();
    write(&pool, "v", 0, &noise(3, size as usize));
    pool.snapshot("v", "s1").unwrap();
    let repo = Repo::init(store(&server), &key(), options(256 << 10, 32 * MIB)).unwrap();
    let first = push(&repo, &pool, "a", "v", "s1", None).unwrap();
    // 1% of the volume, one extent at an unaligned (4 KiB) offset.
    let changed = size / 100;
    write(
        &pool,
        "v",
        37 * MIB + 12 * 4096,
        &noise(4, changed as usize),
    );
    pool.snapshot("v", "s2").unwrap();
    let second = push(&repo, &pool, "a", "v", "s2", Some(first.manifest_id)).unwrap();
    assert_eq!(second.incremental_volumes, vec!["v".to_string()]);
    assert!(second.read_bytes <= size / 50, "{second:?}");
    assert!(
        second.uploaded_bytes <= size / 50,
        "uploaded {} of {size}: {second:?}",
        second.uploaded_bytes
    );
    assert_pulls_back(&repo, &pool, &second.manifest_id, "v@s2");
}

#[test]
fn killing_s3_mid_push_then_resuming_uploads_only_what_is_missing() {
    let Some((_dir, server, pool)) = setup() else {
        return;
    };
    pool.create_volume("v", 48 * MIB).unwrap();
    write(&pool, "v", 0, &noise(5, 48 * MIB as usize));
    pool.snapshot("v", "s1").unwrap();
    let repo = Repo::init(store(&server), &key(), options(MIB, 4 * MIB)).unwrap();
    let server = Mutex::new(server);
    let failed = repo
        .repo_push_with_kill(&pool, &server)
        .expect_err("the push fails once the server is gone");
    assert_eq!(failed.code(), ErrorCode::Unavailable, "{failed}");
    assert!(failed.to_string().contains("unavailable"), "{failed}");
    assert!(repo.list().is_err(), "still down");

    let mut server = server.into_inner().unwrap();
    server.start_again();
    let repo = Repo::open(store(&server), &key()).unwrap();
    assert!(repo.list().unwrap().is_empty(), "no manifest was written");
    let stored = repo.chunk_index().unwrap();
    assert!(
        stored.n_chunks() >= 12,
        "three packs of four chunks made it"
    );
    let resumed = push(&repo, &pool, "a", "v", "s1", None).unwrap();
    assert_eq!(
        resumed.dedup_chunks as usize,
        stored.n_chunks(),
        "{resumed:?}"
    );
    assert_eq!(
        resumed.new_chunks as usize,
        48 - stored.n_chunks(),
        "{resumed:?}"
    );
    assert!(
        resumed.uploaded_bytes < (48 - stored.n_chunks() as u64 + 1) * MIB,
        "{resumed:?}"
    );
    assert_pulls_back(&repo, &pool, &resumed.manifest_id, "v@s1");
    // The server's puts are atomic: no torn pack was left behind.
    let check = repo.check().unwrap();
    assert!(check.is_ok(), "{check:?}");
}

/// The push of `v@s1` whose progress callback kills the server once three
/// packs are stored.
trait PushWithKill {
    fn repo_push_with_kill(
        &self,
        pool: &Pool,
        server: &Mutex<S3sFs>,
    ) -> cairn_actors::repo::Result<cairn_actors::repo::PushReport>;
}

impl PushWithKill for Repo {
    fn repo_push_with_kill(
        &self,
        pool: &Pool,
        server: &Mutex<S3sFs>,
    ) -> cairn_actors::repo::Result<cairn_actors::repo::PushReport> {
        self.push(
            pool,
            &PushRequest {
                app: "a".into(),
                snapshot: "s1".into(),
                volumes: vec![("v".into(), "s1".into())],
                meta: serde_json::Value::Null,
                parent: None,
            },
            &|progress| {
                if progress.packs >= 3 {
                    server.lock().unwrap().kill();
                }
            },
        )
    }
}

#[test]
fn a_corrupted_pack_byte_is_named_by_check_and_by_pull() {
    let Some((_dir, server, pool)) = setup() else {
        return;
    };
    pool.create_volume("v", 8 * MIB).unwrap();
    write(&pool, "v", 0, &noise(6, 8 * MIB as usize));
    pool.snapshot("v", "s1").unwrap();
    let repo = Repo::init(store(&server), &key(), options(MIB, 32 * MIB)).unwrap();
    let report = push(&repo, &pool, "a", "v", "s1", None).unwrap();
    let index = repo.chunk_index().unwrap();
    assert_eq!(index.packs.len(), 1);
    let pack = index.packs[0].0.clone();
    // Flip one byte of the third chunk's blob, on the server's disk.
    let path = server.object_path(&pack);
    let mut bytes = std::fs::read(&path).unwrap();
    let third = 8 + 2 * (MIB + 41) + 1000;
    bytes[third as usize] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();

    let check = repo.check().unwrap();
    assert!(!check.is_ok());
    let bad = &check.problems[0];
    assert_eq!(bad.object, pack, "{check:?}");
    assert_eq!(bad.offset, Some(8 + 2 * (MIB + 41)), "{check:?}");
    let e = repo
        .pull(
            &pool,
            &report.manifest_id,
            &[("v".into(), "w".into())],
            PullMode::Create,
            &|_| {},
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted);
    let message = e.to_string();
    assert!(
        message.contains(&pack) && message.contains(&format!("offset {}", 8 + 2 * (MIB + 41))),
        "{message}"
    );
}

#[test]
fn a_wrong_key_and_a_dead_endpoint_are_clear_errors() {
    let Some((_dir, mut server, _pool)) = setup() else {
        return;
    };
    Repo::init(store(&server), &key(), InitOptions::default()).unwrap();
    let e = Repo::open(store(&server), &Key::from_bytes([8u8; 32]))
        .err()
        .unwrap();
    assert_eq!(e.code(), ErrorCode::WrongKey);
    assert!(e.to_string().contains("not this repository's key"), "{e}");
    let missing = RepoUrl::parse(&server.url().replace("/cairn?", "/elsewhere?")).unwrap();
    let e = Repo::open(missing.open_store().unwrap(), &key())
        .err()
        .unwrap();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
    let bad_secret = RepoUrl::parse(&server.url().replace(S3_SECRET, "nope")).unwrap();
    let e = Repo::open(bad_secret.open_store().unwrap(), &key())
        .err()
        .unwrap();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
    server.kill();
    let e = Repo::open(store(&server), &key()).err().unwrap();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("127.0.0.1:{}", server.port)),
        "{e}"
    );
}
