//! The redb journal's tests: dedup scoped by tenant, group commit under
//! concurrency, the model test (random appends, restarts, crashes and
//! damaged snapshots against a plain fold), a tampered chain, crash recovery
//! through the write-ahead log (torn last frame included), and bounded
//! snapshots.

use std::path::{Path, PathBuf};

use cairn_schema::{Event, EventRecord, World};
use redb::ReadableTable;

use super::snapshots::{SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, SnapshotHeader};
use super::writer::{EVENTS, SNAPSHOTS};
use super::*;
use cairn_schema::event::{
    SnapshotDeleted, VolumeCreated, VolumeDeleted, VolumeRolledBack, VolumeSnapshotted,
};

fn create(name: &str, id: &str, dedup: bool) -> AppendRequest {
    AppendRequest {
        causation: Causation {
            tenant: "default".into(),
            user: "test".into(),
            id: id.into(),
            dedup,
        },
        events: vec![Event::VolumeCreated(VolumeCreated {
            volume: name.into(),
            size_bytes: 1,
            compression: "lz4".into(),
            encrypted: false,
        })],
        reply: format!("reply-{name}").into_bytes(),
    }
}

/// Finding 3 of issue 13: one tenant reused another's request id and
/// got its reply.
#[tokio::test]
async fn request_ids_are_scoped_by_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let journal = RedbJournal::open(&dir.path().join("journal.redb"), Limits::default()).unwrap();
    journal
        .append(create("v1", "shared-id", true))
        .await
        .unwrap();
    let mut evil = create("v2", "shared-id", true);
    evil.causation.tenant = "evil".into();
    evil.reply = b"evil's own reply".to_vec();
    let appended = journal.append(evil).await.unwrap();
    assert!(
        matches!(appended, Appended::Records(ref r) if r.len() == 1),
        "another tenant's id is not a duplicate: {appended:?}"
    );
    assert_eq!(
        journal
            .lookup_request("evil", "shared-id")
            .unwrap()
            .as_deref(),
        Some(&b"evil's own reply"[..])
    );
    assert_eq!(
        journal
            .lookup_request("default", "shared-id")
            .unwrap()
            .as_deref(),
        Some(&b"reply-v1"[..])
    );
    assert_eq!(journal.lookup_request("acme", "shared-id").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_chain_dedup_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let journal = RedbJournal::open(
        &path,
        Limits {
            queue: 8,
            max_batch: 16,
            ..Limits::default()
        },
    )
    .unwrap();
    let appends = (0..64).map(|i| {
        let journal = journal.clone();
        tokio::spawn(async move {
            journal
                .append(create(&format!("v{i}"), &format!("r{i}"), true))
                .await
        })
    });
    for append in futures::future::join_all(appends).await {
        assert!(matches!(append.unwrap().unwrap(), Appended::Records(r) if r.len() == 1));
    }
    assert_eq!(journal.verify_chain().unwrap(), Ok(64));
    let again = journal.append(create("other", "r7", true)).await.unwrap();
    assert!(matches!(again, Appended::Duplicate(first) if first == b"reply-v7"));
    assert_eq!(journal.len().unwrap(), 64, "a duplicate appends nothing");
    drop(journal);

    let journal = RedbJournal::open(&path, Limits::default()).unwrap();
    assert_eq!(
        journal.lookup_request("default", "r7").unwrap().as_deref(),
        Some(&b"reply-v7"[..])
    );
    journal.append(create("v64", "r64", false)).await.unwrap();
    assert_eq!(
        journal.verify_chain().unwrap(),
        Ok(65),
        "the chain continues across a reopen"
    );
    let seqs: Vec<u64> = journal
        .read(60, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [60, 61, 62, 63, 64, 65]);
}

/// A small deterministic generator (xorshift64*), so a failing seed can
/// be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Any volume event over a few names: the fold does not check the
/// rules (deciders do), so every sequence is a valid history here.
fn random_event(rng: &mut Rng) -> Event {
    let volume = format!("v{}", rng.below(4));
    let snapshot = format!("s{}", rng.below(3));
    match rng.below(6) {
        0 | 1 => Event::VolumeCreated(VolumeCreated {
            volume,
            size_bytes: rng.below(1 << 40),
            compression: "lz4".into(),
            encrypted: rng.below(2) == 1,
        }),
        2 => Event::VolumeSnapshotted(VolumeSnapshotted { volume, snapshot }),
        3 => Event::SnapshotDeleted(SnapshotDeleted { volume, snapshot }),
        4 => Event::VolumeRolledBack(VolumeRolledBack { volume, snapshot }),
        _ => Event::VolumeDeleted(VolumeDeleted { volume }),
    }
}

/// How a test damages the newest snapshot row.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One body byte flipped (the body hash no longer matches).
    FlipByte,
    /// A well-formed row whose body is not a `World` of this layout,
    /// as a newer or older version would leave.
    OtherLayout,
    /// A row written by another snapshot format.
    OtherFormat,
}

/// Rewrites the newest snapshot row as `damage` says; returns its seq.
fn damage_newest_snapshot(journal: &RedbJournal, damage: Damage) -> Option<u64> {
    let txn = journal.inner.db.begin_write().unwrap();
    let seq = {
        let mut table = txn.open_table(SNAPSHOTS).unwrap();
        let (seq, mut row) = match table.last().unwrap() {
            Some((k, v)) => (k.value(), v.value().to_vec()),
            None => return None,
        };
        match damage {
            Damage::FlipByte => *row.last_mut().unwrap() ^= 0x40,
            Damage::OtherLayout => {
                // What a World with one more field would leave behind:
                // this layout's body plus bytes it does not expect.
                let (header, body) =
                    postcard::take_from_bytes::<SnapshotHeader>(&row[SNAPSHOT_MAGIC.len() + 2..])
                        .unwrap();
                let mut body = body.to_vec();
                body.extend_from_slice(&[3, 1, 2, 3]);
                let header = SnapshotHeader {
                    body_hash: *blake3::hash(&body).as_bytes(),
                    ..header
                };
                let mut new = SNAPSHOT_MAGIC.to_vec();
                new.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
                new = postcard::to_extend(&header, new).unwrap();
                new.extend_from_slice(&body);
                row = new;
            }
            Damage::OtherFormat => {
                row[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 2]
                    .copy_from_slice(&(SNAPSHOT_FORMAT + 1).to_le_bytes());
            }
        }
        table.insert(seq, row.as_slice()).unwrap();
        seq
    };
    txn.commit().unwrap();
    Some(seq)
}

/// The files of a journal as a `kill -9` would leave them, copied to a
/// fresh directory. The writer must be idle: [`Journal::world`] returns
/// only then.
fn crash_image(journal: &RedbJournal, dir: &Path) -> PathBuf {
    journal.world().unwrap();
    let from = &journal.inner.path;
    let to = dir.join("journal.redb");
    std::fs::copy(from, &to).unwrap();
    std::fs::copy(from.with_extension("wal"), to.with_extension("wal")).unwrap();
    to
}

/// The newest snapshot row, as stored.
fn newest_snapshot_row(journal: &RedbJournal) -> Option<(u64, Vec<u8>)> {
    let table = journal.table(SNAPSHOTS).unwrap();
    let newest = table.last().unwrap();
    newest.map(|(k, v)| (k.value(), v.value().to_vec()))
}

/// Model test: random appends (single and concurrent), clean restarts,
/// crashes (the files as a `kill -9` leaves them, with batches committed
/// only through the write-ahead log) and damaged snapshots. After every
/// step the state rebuilt at open (newest snapshot + tail), the writer's
/// state, a full replay and `fold_to` at a random seq all equal the model
/// (a plain fold of what was answered); snapshots never exceed
/// `snapshots_kept`; a damaged snapshot is skipped at start-up and
/// reported by `replay_full`. Returns the log frames replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_tail_equals_full_replay() {
    let mut wal_frames = 0;
    for seed in 1..=12u64 {
        wal_frames += model_run(seed).await;
    }
    assert!(wal_frames > 0, "no crash left batches in the log");
}

async fn model_run(seed: u64) -> u64 {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut dirs = vec![tempfile::tempdir().unwrap()];
    let mut path = dirs[0].path().join("journal.redb");
    let limits = Limits {
        queue: 4,
        max_batch: 1 + rng.below(4) as usize,
        snapshot_every: 1 + rng.below(12),
        snapshots_kept: 1 + rng.below(3) as usize,
        // Checkpoint after every batch, every few, or never.
        wal_bytes: [1, 2048, 1 << 20][rng.below(3) as usize],
    };
    let ctx = format!("seed {seed}, {limits:?}");
    let mut journal = RedbJournal::open(&path, limits).unwrap();
    // history[s] is the model World after records 1..=s.
    let mut history = vec![World::default()];
    // Every row the test damaged (a crash can bring an older one back
    // as the newest, when newer snapshots were not checkpointed).
    let mut damaged_rows: Vec<(u64, Vec<u8>)> = Vec::new();
    let is_damaged = |journal: &RedbJournal, rows: &[(u64, Vec<u8>)]| {
        newest_snapshot_row(journal).is_some_and(|row| rows.contains(&row))
    };
    let (mut restarts, mut crashes, mut wal_frames) = (0, 0, 0);
    for step in 0..100 {
        let ctx = format!("{ctx}, step {step}");
        let damaged = is_damaged(&journal, &damaged_rows);
        match rng.below(12) {
            0 | 1 => {
                let crash = rng.below(2) == 0;
                if crash {
                    dirs.push(tempfile::tempdir().unwrap());
                    path = crash_image(&journal, dirs.last().unwrap().path());
                    crashes += 1;
                }
                drop(journal);
                journal = RedbJournal::open(&path, limits).unwrap();
                restarts += 1;
                let head = history.len() as u64 - 1;
                let recovery = journal.recovery();
                wal_frames += recovery.wal_frames;
                assert!(crash || recovery.wal_frames == 0, "{ctx}: {recovery:?}");
                assert_eq!(
                    recovery.snapshot_seq + recovery.folded,
                    head,
                    "{ctx}: {recovery:?}"
                );
                // After a crash, the newest snapshot may be an older
                // one (newer ones were not checkpointed).
                if damaged && !crash {
                    assert!(recovery.skipped_snapshots >= 1, "{ctx}: {recovery:?}");
                } else if !crash {
                    assert_eq!(recovery.skipped_snapshots, 0, "{ctx}: {recovery:?}");
                }
                if !damaged && !crash {
                    // Written every `snapshot_every` events (or at open),
                    // of the state before the batch that writes it: the
                    // tail is shorter than that plus two batches. (A
                    // crash may lose snapshots not checkpointed yet.)
                    let batch_events = 4 * limits.max_batch as u64;
                    assert!(
                        recovery.folded < limits.snapshot_every + 2 * batch_events,
                        "{ctx}: {recovery:?}"
                    );
                }
            }
            2 if !damaged => {
                let how = match rng.below(3) {
                    0 => Damage::FlipByte,
                    1 => Damage::OtherLayout,
                    _ => Damage::OtherFormat,
                };
                if let Some(seq) = damage_newest_snapshot(&journal, how) {
                    let check = journal.replay_full().unwrap().snapshot;
                    match how {
                        Damage::FlipByte => assert!(
                            matches!(&check, SnapshotCheck::Bad(b) if b.seq == seq),
                            "{ctx}: {check:?}"
                        ),
                        Damage::OtherLayout | Damage::OtherFormat => assert!(
                            matches!(&check, SnapshotCheck::Foreign { seq: s, .. } if *s == seq),
                            "{ctx}: {check:?}"
                        ),
                    }
                    damaged_rows.extend(newest_snapshot_row(&journal));
                }
            }
            3 => {
                // Concurrent appends share commits.
                let appends: Vec<_> = (0..1 + rng.below(6))
                    .map(|_| {
                        let events: Vec<Event> = (0..1 + rng.below(3))
                            .map(|_| random_event(&mut rng))
                            .collect();
                        let journal = journal.clone();
                        tokio::spawn(async move {
                            journal
                                .append(AppendRequest {
                                    causation: Causation::default(),
                                    events,
                                    reply: vec![],
                                })
                                .await
                        })
                    })
                    .collect();
                let mut records = Vec::new();
                for append in futures::future::join_all(appends).await {
                    match append.unwrap().unwrap() {
                        Appended::Records(r) => records.extend(r),
                        Appended::Duplicate(_) => panic!("{ctx}: no dedup asked"),
                    }
                }
                records.sort_by_key(|r| r.seq);
                fold_into_history(&mut history, &records, &ctx);
            }
            _ => {
                let events: Vec<Event> = (0..1 + rng.below(4))
                    .map(|_| random_event(&mut rng))
                    .collect();
                let appended = journal
                    .append(AppendRequest {
                        causation: Causation::default(),
                        events,
                        reply: vec![],
                    })
                    .await
                    .unwrap();
                let Appended::Records(records) = appended else {
                    panic!("{ctx}: no dedup asked");
                };
                fold_into_history(&mut history, &records, &ctx);
            }
        }
        let damaged = is_damaged(&journal, &damaged_rows);
        let head = history.len() as u64 - 1;
        let model = history.last().unwrap();
        assert_eq!(&journal.world().unwrap(), model, "{ctx}: writer's state");
        let full = journal.replay_full().unwrap();
        assert_eq!(&full.world, model, "{ctx}: full replay");
        if !damaged {
            assert!(
                matches!(
                    full.snapshot,
                    SnapshotCheck::Absent | SnapshotCheck::Matches { .. }
                ),
                "{ctx}: {:?}",
                full.snapshot
            );
        }
        let at = rng.below(head + 2);
        let expected = &history[at.min(head) as usize];
        assert_eq!(
            &journal.fold_to(at).unwrap(),
            expected,
            "{ctx}: fold_to({at})"
        );
        let snapshots = journal.snapshots().unwrap();
        assert!(
            snapshots.len() <= limits.snapshots_kept,
            "{ctx}: {snapshots:?}"
        );
        assert!(
            snapshots.iter().all(|s| s.seq <= head),
            "{ctx}: {snapshots:?}"
        );
    }
    let head = history.len() as u64 - 1;
    assert!(
        head > 2 * limits.snapshot_every,
        "seed {seed}: too few events"
    );
    assert!(
        !journal.snapshots().unwrap().is_empty(),
        "seed {seed}: no snapshot after {head} events"
    );
    assert!(
        restarts > 0 && crashes > 0,
        "seed {seed}: {restarts} restarts, {crashes} crashes"
    );
    assert_eq!(journal.verify_chain().unwrap(), Ok(head), "seed {seed}");
    wal_frames
}

/// Rewrites record `seq` with its time moved by a millisecond: the bytes
/// decode, but its hash no longer matches.
fn tamper(journal: &RedbJournal, seq: u64) {
    let txn = journal.inner.db.begin_write().unwrap();
    {
        let mut table = txn.open_table(EVENTS).unwrap();
        let mut record = EventRecord::decode(table.get(seq).unwrap().unwrap().value()).unwrap();
        record.time_ms += 1;
        table.insert(seq, record.encode().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Start-up checks the chain of the records it folds: a tampered record
/// after the newest snapshot stops it; one before is past the snapshot
/// (its state was checked when folded), and `verify_chain` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_a_tampered_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let limits = Limits {
        snapshot_every: 10,
        ..Limits::default()
    };
    let journal = RedbJournal::open(&path, limits).unwrap();
    for i in 0..25 {
        journal
            .append(create(&format!("v{i}"), &format!("r{i}"), false))
            .await
            .unwrap();
    }
    tamper(&journal, 5);
    drop(journal);
    let journal = RedbJournal::open(&path, limits).unwrap();
    assert_eq!(journal.recovery().snapshot_seq, 20);
    assert!(matches!(journal.verify_chain().unwrap(), Err(b) if b.seq == 5));
    assert!(matches!(
        journal.replay_full(),
        Err(Error::Corrupted { seq: 5, .. })
    ));
    tamper(&journal, 23);
    drop(journal);
    match RedbJournal::open(&path, limits) {
        Err(Error::Corrupted { seq, message }) => {
            assert_eq!(seq, 23, "{message}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a tampered tail must stop start-up"),
    }
}

/// Answered appends survive a crash through the write-ahead log alone
/// (no checkpoint since), dedup replies included; a torn last frame loses
/// only that batch, and the chain continues after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_keeps_every_answered_append() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        wal_bytes: 1 << 20,
        ..Limits::default()
    };
    let journal = RedbJournal::open(&dir.path().join("journal.redb"), limits).unwrap();
    for i in 0..50 {
        let appended = journal
            .append(create(&format!("v{i}"), &format!("r{i}"), true))
            .await
            .unwrap();
        assert!(matches!(appended, Appended::Records(_)));
    }
    let crashed = tempfile::tempdir().unwrap();
    let path = crash_image(&journal, crashed.path());
    let expected = journal.world().unwrap();
    drop(journal);

    // A copy with the last frame torn, to open later.
    let torn = tempfile::tempdir().unwrap();
    let torn_path = torn.path().join("journal.redb");
    std::fs::copy(&path, &torn_path).unwrap();
    let log = std::fs::read(path.with_extension("wal")).unwrap();
    let frames: Vec<_> = wal::frames(&log).collect();
    assert_eq!(
        frames.len(),
        50,
        "one frame per batch, each batch one append"
    );
    let end: usize = frames.iter().map(|f| f.encode().len()).sum();
    let mut torn_log = log.clone();
    torn_log[end - 3..end].fill(0);
    std::fs::write(torn_path.with_extension("wal"), &torn_log).unwrap();

    // Checked offline, the log's records count (and no file is written).
    assert_eq!(verify_file(&path).unwrap(), Ok(50));
    assert_eq!(verify_file(&torn_path).unwrap(), Ok(49));
    let journal = RedbJournal::open(&path, limits).unwrap();
    let recovery = journal.recovery();
    assert_eq!((recovery.wal_frames, recovery.wal_records), (50, 50));
    assert_eq!(journal.world().unwrap(), expected);
    assert_eq!(journal.verify_chain().unwrap(), Ok(50));
    assert_eq!(
        journal.lookup_request("default", "r49").unwrap().as_deref(),
        Some(&b"reply-v49"[..])
    );
    let again = journal.append(create("x", "r7", true)).await.unwrap();
    assert!(matches!(again, Appended::Duplicate(first) if first == b"reply-v7"));
    drop(journal);

    let journal = RedbJournal::open(&torn_path, limits).unwrap();
    assert_eq!(journal.recovery().wal_records, 49, "the torn batch is lost");
    assert_eq!(journal.lookup_request("default", "r49").unwrap(), None);
    journal.append(create("v49", "r49", true)).await.unwrap();
    assert_eq!(journal.verify_chain().unwrap(), Ok(50));
    // A clean close checkpoints: the next start replays no log.
    journal.close();
    assert!(matches!(
        journal.append(create("late", "r-late", true)).await,
        Err(Error::Closed)
    ));
    drop(journal);
    let journal = RedbJournal::open(&torn_path, limits).unwrap();
    assert_eq!(journal.recovery().wal_frames, 0);
    assert_eq!(journal.len().unwrap(), 50);
}

/// Appends the model states after each of `records` (in seq order).
fn fold_into_history(history: &mut Vec<World>, records: &[EventRecord], ctx: &str) {
    for record in records {
        assert_eq!(record.seq, history.len() as u64, "{ctx}: gap-free seqs");
        let mut world = history.last().unwrap().clone();
        world.apply(record, &record.event().unwrap());
        history.push(world);
    }
}

/// Snapshots stay bounded however long the history grows, and start-up
/// folds only the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_bounded_and_start_up_folds_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let limits = Limits {
        snapshot_every: 10,
        snapshots_kept: 2,
        ..Limits::default()
    };
    let journal = RedbJournal::open(&path, limits).unwrap();
    for i in 0..205 {
        journal
            .append(create(&format!("v{i}"), &format!("r{i}"), true))
            .await
            .unwrap();
    }
    let seqs: Vec<u64> = journal.snapshots().unwrap().iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [190, 200]);
    drop(journal);
    let journal = RedbJournal::open(&path, limits).unwrap();
    let recovery = journal.recovery();
    assert_eq!((recovery.snapshot_seq, recovery.folded), (200, 5));
    assert_eq!(journal.world().unwrap().volumes.len(), 205);
    assert_eq!(
        journal.world().unwrap(),
        journal.replay_full().unwrap().world
    );
    // A snapshot the code cannot read (another World layout) is skipped
    // for the older one, and start-up rewrites a fresh one.
    damage_newest_snapshot(&journal, Damage::OtherLayout).unwrap();
    drop(journal);
    let journal = RedbJournal::open(&path, limits).unwrap();
    let recovery = journal.recovery();
    assert_eq!(
        (
            recovery.snapshot_seq,
            recovery.folded,
            recovery.skipped_snapshots
        ),
        (190, 15, 1)
    );
    let seqs: Vec<u64> = journal.snapshots().unwrap().iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [200, 205], "rewritten at open: the tail was long");
    assert_eq!(
        journal.replay_full().unwrap().snapshot,
        SnapshotCheck::Matches { seq: 205 }
    );
}
