//! Unit tests of leased fences over the in-memory storage twin. No test
//! asserts a duration: writers are seen waiting through the gate's waiter
//! count, and outcomes are checked after releases and joins.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::mpsc;
use std::thread;

use super::*;
use crate::storage::MemStorage;
use crate::{Device, PoolOptions};

const LONG: Duration = MAX_FENCE_LEASE;
const SIZE: u64 = 1 << 20;

fn pool(seed: u64, volumes: &[&str]) -> Arc<Pool> {
    let opts = PoolOptions {
        background: false,
        storage: Arc::new(MemStorage::new(seed)),
        ..PoolOptions::default()
    };
    let pool = Pool::open_with("/pool", opts).unwrap();
    for v in volumes {
        pool.create_volume(v, SIZE).unwrap();
    }
    Arc::new(pool)
}

fn block(fill: u8) -> Vec<u8> {
    vec![fill; 4096]
}

fn first_byte(pool: &Pool, export: &str) -> u8 {
    let mut b = [0u8; 1];
    pool.open_export(export)
        .unwrap()
        .read_at(&mut b, 0)
        .unwrap();
    b[0]
}

/// Waits until `n` threads wait at `volume`'s gate. Bounded: a thread
/// that never gets there is a failure, not a hang.
fn await_waiters(pool: &Pool, volume: &str, n: usize) {
    let vol = pool.inner.volume(volume).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vol.gate.waiting() < n {
        assert!(
            Instant::now() < deadline,
            "{n} waiters never reached {volume}'s gate"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn spawn_write(
    dev: &Arc<dyn Device>,
    fill: u8,
) -> (thread::JoinHandle<Result<()>>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let dev = dev.clone();
    let h = thread::spawn(move || {
        let r = dev.write_at(&block(fill), 0, false);
        let _ = tx.send(());
        r
    });
    (h, rx)
}

#[test]
fn a_writer_blocked_by_a_fence_lands_after_the_fenced_snapshot() {
    let pool = pool(1, &["v"]);
    let dev = pool.open_export("v").unwrap();
    dev.write_at(&block(1), 0, false).unwrap();
    let id = pool.fence(&["v"], LONG).unwrap();
    let (writer, done) = spawn_write(&dev, 2);
    await_waiters(&pool, "v", 1);
    assert_eq!(first_byte(&pool, "v"), 1, "reads proceed during a fence");
    pool.snapshot_fenced(id, &[("v", "s")]).unwrap();
    assert!(done.try_recv().is_err(), "the writer waits while fenced");
    pool.unfence(id).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(
        first_byte(&pool, "v@s"),
        1,
        "the write acknowledged before the fence"
    );
    assert_eq!(
        first_byte(&pool, "v"),
        2,
        "the blocked write, after unfence"
    );
}

#[test]
fn a_lapsed_fence_releases_writers_and_refuses_snapshots() {
    let pool = pool(2, &["v"]);
    let dev = pool.open_export("v").unwrap();
    let id = pool.fence(&["v"], Duration::from_millis(20)).unwrap();
    // Nobody unfences: the writer gets in only once the lease has ended.
    let (writer, _) = spawn_write(&dev, 2);
    writer.join().unwrap().unwrap();
    let r = pool.snapshot_fenced(id, &[("v", "s")]);
    assert!(
        matches!(r, Err(Error::FenceLapsed { fence }) if fence == id),
        "{r:?}"
    );
    assert!(pool.volume_info("v").unwrap().snapshots.is_empty());
    pool.unfence(id).unwrap();
    let again = pool.fence(&["v"], LONG).unwrap();
    assert_ne!(again, id);
    pool.unfence(again).unwrap();
}

#[test]
fn a_lapsed_fence_releases_flushes_and_in_call_operations() {
    let pool = pool(3, &["v"]);
    let dev = pool.open_export("v").unwrap();
    let id = pool.fence(&["v"], Duration::from_millis(20)).unwrap();
    let flusher = thread::spawn(move || dev.flush());
    let snapper = {
        let pool = pool.clone();
        thread::spawn(move || pool.snapshot("v", "t"))
    };
    flusher.join().unwrap().unwrap();
    snapper.join().unwrap().unwrap();
    assert!(pool.snapshot_fenced(id, &[("v", "u")]).is_err());
}

#[test]
fn a_second_fence_over_a_fenced_volume_is_refused_and_holds_nothing() {
    let pool = pool(4, &["a", "b", "c"]);
    let f = pool.fence(&["b"], LONG).unwrap();
    // "a" is claimed first (name order), then "b" refuses: "a" is let go.
    let r = pool.fence(&["b", "a"], LONG);
    assert!(
        matches!(&r, Err(Error::Fenced { volume }) if volume == "b"),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().errno(), libc::EBUSY);
    let g = pool.fence(&["a", "c"], LONG).unwrap();
    let r = pool.snapshot_fenced(f, &[("a", "x")]);
    assert!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "a is under g: {r:?}"
    );
    let r = pool.snapshot_fenced(g, &[("a", "x"), ("b", "x")]);
    assert!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "b is under f: {r:?}"
    );
    assert!(
        pool.volume_info("a").unwrap().snapshots.is_empty(),
        "nothing taken"
    );
    pool.snapshot_fenced(g, &[("c", "x")]).unwrap();
    pool.unfence(f).unwrap();
    pool.unfence(g).unwrap();
    let h = pool.fence(&["a", "b", "c"], LONG).unwrap();
    pool.unfence(h).unwrap();
}

#[test]
fn unknown_volumes_empty_lists_and_bad_leases_are_refused() {
    let pool = pool(5, &["v"]);
    let r = pool.fence(&["v", "nope"], LONG);
    assert!(
        matches!(&r, Err(Error::VolumeNotFound { volume }) if volume == "nope"),
        "{r:?}"
    );
    for lease in [Duration::ZERO, MAX_FENCE_LEASE + Duration::from_millis(1)] {
        let r = pool.fence(&["v"], lease);
        assert!(
            matches!(r, Err(Error::InvalidArgument(_))),
            "{lease:?}: {r:?}"
        );
    }
    assert!(matches!(
        pool.fence(&[], LONG),
        Err(Error::InvalidArgument(_))
    ));
    let id = pool.fence(&["v", "v"], MAX_FENCE_LEASE).unwrap();
    assert!(matches!(
        pool.snapshot_fenced(id, &[]),
        Err(Error::InvalidArgument(_))
    ));
    let r = pool.snapshot_fenced(id, &[("v", "bad@name")]);
    assert!(matches!(r, Err(Error::InvalidName { .. })), "{r:?}");
    pool.unfence(id).unwrap();
}

#[test]
fn unfence_is_idempotent_and_a_released_fence_takes_no_snapshot() {
    let pool = pool(6, &["v"]);
    let id = pool.fence(&["v"], LONG).unwrap();
    pool.snapshot_fenced(id, &[("v", "one")]).unwrap();
    let r = pool.snapshot_fenced(id, &[("v", "one")]);
    assert!(matches!(r, Err(Error::SnapshotExists { .. })), "{r:?}");
    pool.snapshot_fenced(id, &[("v", "two")]).unwrap();
    pool.unfence(id).unwrap();
    pool.unfence(id).unwrap();
    pool.unfence(FenceId(0x1234)).unwrap();
    let r = pool.snapshot_fenced(id, &[("v", "three")]);
    assert!(matches!(r, Err(Error::FenceLapsed { .. })), "{r:?}");
    assert_eq!(r.unwrap_err().errno(), libc::ESTALE);
    // Released means released: a write does not wait.
    pool.open_export("v")
        .unwrap()
        .write_at(&block(3), 0, true)
        .unwrap();
    let snaps: Vec<String> = pool
        .volume_info("v")
        .unwrap()
        .snapshots
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(snaps, ["one", "two"]);
}

#[test]
fn flushes_and_in_call_operations_wait_for_unfence() {
    let pool = pool(7, &["v"]);
    let dev = pool.open_export("v").unwrap();
    dev.write_at(&block(1), 0, false).unwrap();
    let id = pool.fence(&["v"], LONG).unwrap();
    let flusher = {
        let dev = dev.clone();
        thread::spawn(move || dev.flush())
    };
    let snapper = {
        let pool = pool.clone();
        thread::spawn(move || pool.snapshot("v", "after"))
    };
    await_waiters(&pool, "v", 2);
    // A snapshot export is read-only: its flush does not wait.
    pool.snapshot_fenced(id, &[("v", "under")]).unwrap();
    pool.open_export("v@under").unwrap().flush().unwrap();
    assert!(!flusher.is_finished() && !snapper.is_finished());
    pool.unfence(id).unwrap();
    flusher.join().unwrap().unwrap();
    snapper.join().unwrap().unwrap();
    assert_eq!(pool.volume_info("v").unwrap().snapshots.len(), 2);
}

/// The lock order: a writer waiting at a fenced gate holds no pool lock,
/// so a checkpoint (which takes `quiesce` exclusively) and compaction
/// finish, and the fence holder's snapshot still goes through.
#[test]
fn a_waiting_writer_blocks_neither_maintenance_nor_the_fence_holder() {
    let pool = pool(8, &["v"]);
    let dev = pool.open_export("v").unwrap();
    dev.write_at(&block(1), 0, false).unwrap();
    let id = pool.fence(&["v"], LONG).unwrap();
    let (writer, done) = spawn_write(&dev, 2);
    let (partial, _) = {
        let (tx, rx) = mpsc::channel();
        let dev = dev.clone();
        (
            thread::spawn(move || {
                let r = dev.write_at(&[9u8; 100], 10, false);
                let _ = tx.send(());
                r
            }),
            rx,
        )
    };
    await_waiters(&pool, "v", 2);
    let checkpoint = {
        let pool = pool.clone();
        thread::spawn(move || pool.checkpoint())
    };
    checkpoint.join().unwrap().unwrap();
    pool.compact(0.5).unwrap();
    pool.snapshot_fenced(id, &[("v", "s")]).unwrap();
    assert!(
        done.try_recv().is_err(),
        "the writer still waits for the fence"
    );
    pool.unfence(id).unwrap();
    writer.join().unwrap().unwrap();
    partial.join().unwrap().unwrap();
    assert_eq!(first_byte(&pool, "v@s"), 1);
}

/// A writer alternates sequence numbers on two volumes (`a` first, then
/// `b`), so any instant sees `a == b` or `a == b + 1`. Every fenced
/// snapshot pair (and every `snapshot_group`) must be such an instant.
#[test]
fn a_fence_over_two_volumes_snapshots_one_instant() {
    let pool = pool(9, &["a", "b"]);
    let (da, db) = (
        pool.open_export("a").unwrap(),
        pool.open_export("b").unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU32::new(0));
    let writer = {
        let (stop, progress) = (stop.clone(), progress.clone());
        thread::spawn(move || {
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut buf = vec![0u8; 4096];
                buf[..4].copy_from_slice(&n.to_le_bytes());
                da.write_at(&buf, 0, false).unwrap();
                db.write_at(&buf, 0, false).unwrap();
                progress.store(n, Ordering::Release);
            }
        })
    };
    let seq = |export: &str| {
        let mut b = [0u8; 4];
        pool.open_export(export)
            .unwrap()
            .read_at(&mut b, 0)
            .unwrap();
        u32::from_le_bytes(b)
    };
    let rounds: u32 = 24;
    let mut last = 0;
    for i in 0..rounds {
        // The writer moves between every two snapshots.
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress.load(Ordering::Acquire) <= last {
            assert!(Instant::now() < deadline, "the writer stalled");
            thread::yield_now();
        }
        last = progress.load(Ordering::Acquire);
        let s = format!("s{i}");
        if i % 3 == 2 {
            pool.snapshot_group(&[("a", &s), ("b", &s)]).unwrap();
        } else {
            let id = pool.fence(&["b", "a"], LONG).unwrap();
            pool.snapshot_fenced(id, &[("a", &s), ("b", &s)]).unwrap();
            pool.unfence(id).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut prev = 0;
    for i in 0..rounds {
        let (a, b) = (seq(&format!("a@s{i}")), seq(&format!("b@s{i}")));
        assert!(a == b || a == b + 1, "s{i} is not one instant: a={a} b={b}");
        assert!(a >= prev, "s{i} went back in time: {a} after {prev}");
        assert!(
            b > i,
            "s{i} was taken after the writer's pair {}: b={b}",
            i + 1
        );
        prev = a;
    }
}

/// A snapshot under way pins its fence: writers stay out past the deadline
/// until it finishes, and no new snapshot may start after the deadline.
#[test]
fn a_pinned_fence_holds_past_its_deadline_until_unpinned() {
    let gate = Arc::new(Gate::new());
    let id = FenceId(1);
    let until = Instant::now() + Duration::from_millis(20);
    gate.claim("v", id, until).unwrap();
    gate.drain("v", id).unwrap();
    assert!(gate.pin(id));
    let writer = {
        let gate = gate.clone();
        thread::spawn(move || drop(gate.enter("v")))
    };
    while Instant::now() < until || gate.waiting() < 1 {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(!writer.is_finished(), "pinned past its deadline");
    assert!(!gate.pin(id), "no new snapshot after the deadline");
    gate.unpin(id);
    writer.join().unwrap();
    assert!(matches!(
        gate.claim("v", FenceId(2), Instant::now() + LONG),
        Ok(())
    ));
}

/// Unfence waits for a snapshot under way, then reopens.
#[test]
fn a_release_waits_for_the_snapshot_under_way() {
    let gate = Arc::new(Gate::new());
    let id = FenceId(7);
    gate.claim("v", id, Instant::now() + LONG).unwrap();
    assert!(gate.pin(id));
    let releaser = {
        let gate = gate.clone();
        thread::spawn(move || gate.release("v", id))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while gate.waiting() < 1 {
        assert!(Instant::now() < deadline, "release never waited");
        thread::sleep(Duration::from_millis(1));
    }
    assert!(gate.lock().is_held_by(id), "still fenced while pinned");
    gate.unpin(id);
    releaser.join().unwrap();
    assert_eq!(gate.lock().holder, Holder::Open);
    // Another fence's id releases nothing.
    gate.claim("v", FenceId(8), Instant::now() + LONG).unwrap();
    gate.release("v", id);
    assert!(gate.lock().is_held_by(FenceId(8)));
}
