//! Cairn's side of `just bench-push` (`ops/scripts/bench-push.sh` drives it
//! step by step, running restic on the same data in between). Each step
//! prints one JSON line on stdout.
//!
//! ```text
//! bench_push make   DIR SIZE_MIB   pool in DIR/pool, volume bench/data@s1
//!                                  (½ random, ¼ zeros, ¼ one repeated MiB),
//!                                  and the same bytes in DIR/vol.img
//! bench_push push   DIR URL SNAP   push bench/data@SNAP (parent: the latest)
//! bench_push modify DIR            rewrite 1% (one extent) in the volume and
//!                                  in vol.img, snapshot s2
//! bench_push pull   DIR URL SNAP   pull bench@SNAP into a new volume, then
//!                                  compare it with bench/data@SNAP
//! ```
//! The repo key is fixed (a benchmark, not a secret); `URL` is a repo URL
//! (`s3://…` or `file:///…`), initialised by the first push.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use cairn_blocks::Pool;
use cairn_repo::{InitOptions, Key, PullMode, PushRequest, Repo, RepoUrl};

const MIB: u64 = 1 << 20;
const VOLUME: &str = "bench/data";

fn noise(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

fn pool(dir: &Path) -> Pool {
    Pool::open(dir.join("pool")).expect("pool opens")
}

fn repo(url: &str) -> Repo {
    let store = RepoUrl::parse(url)
        .expect("url")
        .open_store()
        .expect("store");
    let key = Key::from_bytes([0x42; 32]);
    match Repo::open(store.clone(), &key) {
        Ok(repo) => repo,
        Err(cairn_repo::Error::NotARepo { .. }) => {
            Repo::init(store, &key, InitOptions::default()).expect("init")
        }
        Err(e) => panic!("{e}"),
    }
}

fn make(dir: &Path, size_mib: u64) {
    let pool = pool(dir);
    let size = size_mib * MIB;
    pool.create_volume(VOLUME, size).unwrap();
    let device = pool.open_export(VOLUME).unwrap();
    let mut image = std::fs::File::create(dir.join("vol.img")).unwrap();
    image.set_len(size).unwrap();
    let mut repeated = vec![0u8; MIB as usize];
    noise(u64::MAX, &mut repeated);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut offset = 0;
    while offset < size {
        let len = (4 * MIB).min(size - offset) as usize;
        let data = &mut buf[..len];
        if offset < size / 2 {
            noise(offset / MIB + 1, data);
        } else if offset < size / 4 * 3 {
            offset += len as u64;
            continue; // zeros: never written, a hole in both
        } else {
            for piece in data.chunks_mut(MIB as usize) {
                piece.copy_from_slice(&repeated[..piece.len()]);
            }
        }
        device.write_at(data, offset, false).unwrap();
        image.seek(SeekFrom::Start(offset)).unwrap();
        image.write_all(data).unwrap();
        offset += len as u64;
    }
    device.flush().unwrap();
    image.sync_all().unwrap();
    pool.snapshot(VOLUME, "s1").unwrap();
    pool.close().unwrap();
    println!(
        "{}",
        serde_json::json!({ "step": "make", "size_bytes": size })
    );
}

fn modify(dir: &Path) {
    let pool = pool(dir);
    let device = pool.open_export(VOLUME).unwrap();
    let size = device.size();
    let mut data = vec![0u8; (size / 100) as usize];
    noise(7777, &mut data);
    // Inside the random half, off chunk alignment by 12 blocks.
    let offset = size / 8 + 12 * 4096;
    device.write_at(&data, offset, false).unwrap();
    device.flush().unwrap();
    let mut image = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("vol.img"))
        .unwrap();
    image.seek(SeekFrom::Start(offset)).unwrap();
    image.write_all(&data).unwrap();
    image.sync_all().unwrap();
    pool.snapshot(VOLUME, "s2").unwrap();
    pool.close().unwrap();
    println!(
        "{}",
        serde_json::json!({ "step": "modify", "changed_bytes": data.len() })
    );
}

fn push(dir: &Path, url: &str, snapshot: &str) {
    let pool = pool(dir);
    let repo = repo(url);
    let parent = repo.latest("bench").unwrap().map(|m| m.id);
    let start = Instant::now();
    let report = repo
        .push(
            &pool,
            &PushRequest {
                app: "bench".into(),
                snapshot: snapshot.into(),
                volumes: vec![(VOLUME.into(), snapshot.into())],
                meta: serde_json::json!({}),
                parent,
            },
            &|_| {},
        )
        .unwrap();
    let seconds = start.elapsed().as_secs_f64();
    pool.close().unwrap();
    println!(
        "{}",
        serde_json::json!({ "step": "push", "snapshot": snapshot, "seconds": seconds, "report": report })
    );
}

fn pull(dir: &Path, url: &str, snapshot: &str) {
    let pool = pool(dir);
    let repo = repo(url);
    let manifest = repo.find("bench", snapshot).unwrap().expect("pushed");
    let target = format!("restore/{snapshot}");
    let start = Instant::now();
    let report = repo
        .pull(
            &pool,
            &manifest.id,
            &[(VOLUME.into(), target.clone())],
            PullMode::Create,
            &|_| {},
        )
        .unwrap();
    pool.flush_all().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    // Verify outside the timing.
    let (a, b) = (
        pool.open_export(&format!("{VOLUME}@{snapshot}")).unwrap(),
        pool.open_export(&target).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 4 * MIB as usize], vec![0u8; 4 * MIB as usize]);
    let mut offset = 0;
    while offset < a.size() {
        let len = (4 * MIB).min(a.size() - offset) as usize;
        a.read_at(&mut x[..len], offset).unwrap();
        b.read_at(&mut y[..len], offset).unwrap();
        assert!(x[..len] == y[..len], "pulled bytes differ at {offset}");
        offset += len as u64;
    }
    pool.delete_volume(&target).unwrap();
    pool.close().unwrap();
    println!(
        "{}",
        serde_json::json!({ "step": "pull", "snapshot": snapshot, "seconds": seconds, "verified": true, "report": report })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: bench_push make DIR SIZE_MIB | push DIR URL SNAP | modify DIR | pull DIR URL SNAP");
            std::process::exit(2)
        })
    };
    let dir = Path::new(arg(1));
    match arg(0) {
        "make" => make(dir, arg(2).parse().expect("SIZE_MIB")),
        "push" => push(dir, arg(2), arg(3)),
        "modify" => modify(dir),
        "pull" => pull(dir, arg(2), arg(3)),
        other => panic!("unknown step {other}"),
    }
}
