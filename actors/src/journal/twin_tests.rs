//! Tests of the journal twins: the in-memory journal holds exactly what the
//! redb journal holds for the same appends (and the same clock), the faulty
//! wrapper's failed commit changes nothing, and a torn frame is recovered
//! from by the twin exactly as the redb journal recovers from it.

use std::sync::Arc;
use std::time::Duration;

use cairn_schema::Event;
use cairn_schema::event::{VolumeCreated, VolumeDeleted, VolumeSnapshotted};

use super::*;
use crate::clock::ManualClock;

const T0: u64 = 1_700_000_000_000;

fn request(tenant: &str, id: &str, dedup: bool, events: Vec<Event>) -> AppendRequest {
    AppendRequest {
        causation: Causation {
            tenant: tenant.into(),
            user: "test".into(),
            id: id.into(),
            dedup,
        },
        events,
        reply: format!("reply-{tenant}-{id}").into_bytes(),
    }
}

fn created(name: &str) -> Event {
    Event::VolumeCreated(VolumeCreated {
        volume: name.into(),
        size_bytes: 1 << 30,
        compression: "lz4".into(),
        encrypted: false,
    })
}

/// A fixed sequence: single and multi-event appends, dedup and not, two
/// tenants, a duplicate, a cross-tenant reuse of an id.
fn script() -> Vec<AppendRequest> {
    let mut out = Vec::new();
    for i in 0..30 {
        let tenant = if i % 3 == 0 { "acme" } else { "default" };
        let name = format!("v{i}");
        let events = match i % 4 {
            0 => vec![created(&name)],
            1 => vec![
                created(&name),
                Event::VolumeSnapshotted(VolumeSnapshotted {
                    volume: name.clone(),
                    snapshot: "s".into(),
                }),
            ],
            2 => vec![
                created(&name),
                Event::VolumeDeleted(VolumeDeleted { volume: name }),
            ],
            _ => vec![created(&name)],
        };
        out.push(request(tenant, &format!("r{i}"), i % 5 != 4, events));
    }
    // A duplicate, and the same id under another tenant.
    out.push(request("default", "r1", true, vec![created("dup")]));
    out.push(request("evil", "r1", true, vec![created("evil")]));
    out
}

fn limits() -> Limits {
    Limits {
        snapshot_every: 7,
        snapshots_kept: 2,
        ..Limits::default()
    }
}

/// What a journal answers, as comparable values.
fn answer(appended: Result<Appended, Error>) -> String {
    match appended {
        Ok(Appended::Records(records)) => format!("{records:?}"),
        Ok(Appended::Duplicate(reply)) => format!("duplicate {reply:?}"),
        Err(e) => format!("error {e}"),
    }
}

/// Everything a reader can see of a journal.
fn view(journal: &dyn Journal) -> String {
    let head = journal.len().unwrap();
    let folds: Vec<_> = (0..=head + 1)
        .map(|seq| journal.fold_to(seq).unwrap())
        .collect();
    let lookups: Vec<_> = ["default", "acme", "evil"]
        .iter()
        .flat_map(|t| (0..31).map(move |i| (t, i)))
        .map(|(t, i)| journal.lookup_request(t, &format!("r{i}")).unwrap())
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        journal.read(0, usize::MAX).unwrap(),
        journal.world().unwrap(),
        journal.verify_chain().unwrap(),
        journal
            .snapshots()
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect::<Vec<_>>(),
        journal.replay_full().unwrap(),
        folds,
        lookups,
    )
}

/// The same appends on the same clock give the same records (byte for
/// byte: the hashes match), replies, state, snapshots, folds and lookups,
/// and the same after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_journal_holds_what_the_redb_journal_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let clock = Arc::new(ManualClock::new(T0));
    let redb = RedbJournal::open_with(&path, limits(), clock.clone()).unwrap();
    let memory = MemJournal::new(limits(), clock.clone());
    for (i, (a, b)) in script().into_iter().zip(script()).enumerate() {
        clock.advance(Duration::from_millis(250));
        let (a, b) = (answer(redb.append(a).await), answer(memory.append(b).await));
        assert_eq!(a, b, "append {i}");
        assert!(!a.starts_with("error"), "append {i}: {a}");
    }
    assert_eq!(view(&redb), view(&memory));
    assert!(!memory.snapshots().unwrap().is_empty());
    assert_eq!(
        memory.read(1, 1).unwrap()[0].time_ms,
        T0 + 250,
        "the clock stamps records"
    );

    let disk = memory.disk().clone();
    drop(memory);
    drop(redb);
    let redb = RedbJournal::open_with(&path, limits(), clock.clone()).unwrap();
    let memory = MemJournal::open(&disk, limits(), clock.clone()).unwrap();
    assert_eq!(redb.world().unwrap(), memory.world().unwrap());
    assert_eq!(
        memory.recovery().wal_records,
        memory.len().unwrap(),
        "every record came back from the twin's disk"
    );
    // The chain continues alike after the reopen.
    clock.advance(Duration::from_secs(1));
    let next = || request("default", "after", true, vec![created("after")]);
    assert_eq!(
        answer(redb.append(next()).await),
        answer(memory.append(next()).await)
    );
    assert_eq!(
        redb.read(0, usize::MAX).unwrap(),
        memory.read(0, usize::MAX).unwrap()
    );
    assert_eq!(
        answer(memory.append(next()).await),
        answer(redb.append(next()).await),
        "a duplicate after the reopen"
    );
}

/// A failed commit answers an error and changes nothing (no record, no
/// stored reply, no state); the next append works and the chain continues,
/// and a retry of the failed request is not a duplicate. On both journals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_the_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let path = dir.path().join("journal.redb");
    failed_commit_case(FaultyJournal::new(
        RedbJournal::open_with(&path, limits(), clock.clone()).unwrap(),
    ))
    .await;
    failed_commit_case(FaultyJournal::new(MemJournal::new(limits(), clock))).await;
}

async fn failed_commit_case<J: Journal>(journal: FaultyJournal<J>) {
    let mut script = script().into_iter();
    for request in script.by_ref().take(5) {
        journal.append(request).await.unwrap();
    }
    let before = view(&journal);
    let failing = || request("default", "boom", true, vec![created("boom")]);
    journal.inject_next(Fault::FailCommit);
    let failed = journal.append(failing()).await;
    assert!(matches!(failed, Err(Error::Storage { .. })), "{failed:?}");
    assert_eq!(journal.appends(), 6);
    assert_eq!(view(&journal), before, "nothing changed");
    assert_eq!(journal.lookup_request("default", "boom").unwrap(), None);
    let retried = journal.append(failing()).await.unwrap();
    assert!(matches!(retried, Appended::Records(ref r) if r.len() == 1));
    for request in script {
        journal.append(request).await.unwrap();
    }
    let head = journal.len().unwrap();
    assert_eq!(journal.verify_chain().unwrap(), Ok(head));
}

/// Seeded random failures fail the same appends for the same seed, and
/// every failure leaves the journal as it was.
#[tokio::test]
async fn random_failures_are_seeded() {
    let failures = |seed| async move {
        let journal = FaultyJournal::new(MemJournal::new(limits(), Arc::new(ManualClock::new(T0))));
        journal.fail_randomly(seed, 3);
        let mut failed = Vec::new();
        for (i, request) in script().into_iter().enumerate() {
            let len = journal.len().unwrap();
            if journal.append(request).await.is_err() {
                assert_eq!(journal.len().unwrap(), len);
                failed.push(i);
            }
        }
        assert_eq!(journal.verify_chain().unwrap(), Ok(journal.len().unwrap()));
        failed
    };
    let first = failures(7).await;
    assert!(!first.is_empty() && first.len() < script().len());
    assert_eq!(first, failures(7).await);
    assert_ne!(first, failures(8).await);
}

/// A crash while writing the 4th append's frame, torn at every length:
/// the twin refuses appends until reopened, the reopen drops the torn
/// frame (or keeps the batch when the whole frame landed) and the chain
/// continues. The redb journal, given the same bytes as its
/// `journal.wal`, recovers to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_frame_is_recovered_like_the_redb_journal_does() {
    let clock = Arc::new(ManualClock::new(T0));
    let whole = {
        let memory = MemJournal::new(limits(), clock.clone());
        for request in script().into_iter().take(3) {
            memory.append(request).await.unwrap();
        }
        let before = memory.disk().bytes().len();
        memory.append(script().remove(3)).await.unwrap();
        memory.disk().bytes().len() - before
    };
    for keep in [0, 1, 3, 4, 8, 24, whole / 2, whole - 1, whole, whole + 10] {
        let journal = FaultyJournal::tearing(MemJournal::new(limits(), clock.clone()));
        for request in script().into_iter().take(3) {
            journal.append(request).await.unwrap();
        }
        let before = journal.world().unwrap();
        journal.inject_next(Fault::Tear { keep_bytes: keep });
        assert!(journal.append(script().remove(3)).await.is_err());
        let after_crash = journal.append(script().remove(4)).await;
        assert!(matches!(after_crash, Err(Error::Closed)), "{after_crash:?}");
        let disk = journal.inner().disk().clone();
        let torn = disk.bytes();

        let reopened = MemJournal::open(&disk, limits(), clock.clone()).unwrap();
        let landed = keep >= whole;
        assert_eq!(reopened.recovery().wal_frames, if landed { 4 } else { 3 });
        if !landed {
            assert_eq!(reopened.world().unwrap(), before, "keep {keep}");
            assert_eq!(reopened.lookup_request("acme", "r3").unwrap(), None);
        }
        assert!(disk.bytes().len() <= torn.len(), "the torn tail is cut off");

        // The redb journal, with the same bytes as its log.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        drop(RedbJournal::open_with(&path, limits(), clock.clone()).unwrap());
        std::fs::write(path.with_extension("wal"), &torn).unwrap();
        let redb = RedbJournal::open_with(&path, limits(), clock.clone()).unwrap();
        assert_eq!(redb.recovery().wal_frames, reopened.recovery().wal_frames);
        assert_eq!(
            redb.world().unwrap(),
            reopened.world().unwrap(),
            "keep {keep}"
        );

        // Both go on from the same head.
        let next = || request("default", "next", true, vec![created("next")]);
        assert_eq!(
            answer(reopened.append(next()).await),
            answer(redb.append(next()).await)
        );
        let head = reopened.len().unwrap();
        assert_eq!(reopened.verify_chain().unwrap(), Ok(head));
        assert_eq!(redb.verify_chain().unwrap(), Ok(head));
        let again = MemJournal::open(&disk, limits(), clock.clone()).unwrap();
        assert_eq!(again.world().unwrap(), reopened.world().unwrap());
    }
}
