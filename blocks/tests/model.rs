//! Model-based property test of the pool: random sequences of writes
//! (aligned and not), trims, flushes, snapshots (plain, and under a leased
//! fence over one or two volumes), clones, rollbacks,
//! deletes, compactions, checkpoints, injected faults (failed syncs, a full
//! disk) and crashes, run over the in-memory storage twin and checked
//! against a plain in-memory model after every step.
//!
//! After a crash each block must read as its value at the last successful
//! flush or as one written after it: never older, never torn, never EIO.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_blocks::storage::{Faults, MemStorage};
use cairn_blocks::{Compression, Device, Pool, PoolOptions, VolumeOptions};
use proptest::prelude::*;

const BLOCK: usize = 4096;
const BLOCKS: usize = 40;
/// Not a multiple of the block size, so the last block is partial.
const SIZE: usize = BLOCKS * BLOCK - 1000;
const NAMES: [&str; 3] = ["a", "b", "app/c"];
const SNAPS: [&str; 2] = ["s1", "s2"];
/// Fences in the model are always released by the step that takes them.
const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Op {
    Create {
        v: usize,
        compression: u8,
        encrypt: bool,
    },
    Write {
        v: usize,
        offset: usize,
        len: usize,
        seed: u8,
        fua: bool,
    },
    Zero {
        v: usize,
        block: usize,
        n: usize,
    },
    Flush {
        fail: bool,
    },
    NoSpaceWrite {
        v: usize,
        block: usize,
    },
    Snapshot {
        v: usize,
        s: usize,
    },
    /// Fence `v` and `w`, snapshot both as `s`, unfence.
    FencedSnapshot {
        v: usize,
        w: usize,
        s: usize,
    },
    DeleteSnapshot {
        v: usize,
        s: usize,
    },
    Clone {
        v: usize,
        s: usize,
        new: usize,
    },
    Rollback {
        v: usize,
        s: usize,
    },
    Delete {
        v: usize,
    },
    Compact,
    Checkpoint,
    Crash,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize, 0..3u8, any::<bool>()).prop_map(|(v, compression, encrypt)| Op::Create { v, compression, encrypt }),
        8 => (0..3usize, 0..SIZE, 1..3 * BLOCK, any::<u8>(), any::<bool>())
            .prop_map(|(v, offset, len, seed, fua)| Op::Write { v, offset, len: len.min(SIZE - offset), seed, fua }),
        2 => (0..3usize, 0..BLOCKS - 1, 1..4usize).prop_map(|(v, block, n)| Op::Zero { v, block, n }),
        3 => any::<bool>().prop_map(|fail| Op::Flush { fail }),
        1 => (0..3usize, 0..BLOCKS - 1).prop_map(|(v, block)| Op::NoSpaceWrite { v, block }),
        2 => (0..3usize, 0..2usize).prop_map(|(v, s)| Op::Snapshot { v, s }),
        2 => (0..3usize, 0..3usize, 0..2usize).prop_map(|(v, w, s)| Op::FencedSnapshot { v, w, s }),
        1 => (0..3usize, 0..2usize).prop_map(|(v, s)| Op::DeleteSnapshot { v, s }),
        1 => (0..3usize, 0..2usize, 0..3usize).prop_map(|(v, s, new)| Op::Clone { v, s, new }),
        1 => (0..3usize, 0..2usize).prop_map(|(v, s)| Op::Rollback { v, s }),
        1 => (0..3usize).prop_map(|v| Op::Delete { v }),
        1 => Just(Op::Compact),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

/// One volume in the model: per block, the values it may read as after a
/// crash (first: as of the last flush; last: current).
#[derive(Clone, Debug)]
struct MVol {
    blocks: Vec<Vec<Vec<u8>>>,
    snaps: BTreeMap<String, Vec<Vec<u8>>>,
}

impl MVol {
    fn new() -> MVol {
        MVol {
            blocks: vec![vec![vec![0u8; BLOCK]]; BLOCKS],
            snaps: BTreeMap::new(),
        }
    }
    fn current(&self) -> Vec<Vec<u8>> {
        self.blocks
            .iter()
            .map(|h| h.last().unwrap().clone())
            .collect()
    }
    fn settle(&mut self) {
        for h in &mut self.blocks {
            let last = h.pop().unwrap();
            *h = vec![last];
        }
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        let mut cur = self.current().concat();
        cur[offset..offset + data.len()].copy_from_slice(data);
        for (i, h) in self.blocks.iter_mut().enumerate() {
            let new = cur[i * BLOCK..(i + 1) * BLOCK].to_vec();
            if *h.last().unwrap() != new {
                h.push(new);
            }
        }
    }
}

struct Harness {
    storage: MemStorage,
    pool: Option<Pool>,
    model: BTreeMap<String, MVol>,
}

fn options(storage: &MemStorage) -> PoolOptions {
    PoolOptions {
        disks: vec![PathBuf::from("/pool/d0"), PathBuf::from("/pool/d1")],
        segment_bytes: 48 << 10,
        checkpoint_bytes: 1 << 40,
        key: Some([7u8; 32]),
        background: false,
        storage: Arc::new(storage.clone()),
        clock: Arc::new(cairn_blocks::clock::SystemClock),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    // A mix of compressible runs and noise, never all zero.
    (0..len)
        .map(|i| {
            if seed.is_multiple_of(3) {
                seed | 1
            } else {
                ((i as u32)
                    .wrapping_mul(2654435761)
                    .rotate_left(seed as u32 % 31)
                    >> 11) as u8
                    | 1
            }
        })
        .collect()
}

impl Harness {
    fn pool(&self) -> &Pool {
        self.pool.as_ref().unwrap()
    }

    fn open(&mut self) {
        self.pool = Some(Pool::open_with("/pool", options(&self.storage)).expect("pool opens"));
    }

    fn dev(&self, export: &str) -> Arc<dyn Device> {
        self.pool().open_export(export).expect("export opens")
    }

    fn check(&self, after_crash: bool) -> Result<(), TestCaseError> {
        let mut names = self.pool().list_volumes();
        names.sort();
        let mut want: Vec<String> = self.model.keys().cloned().collect();
        want.sort();
        prop_assert_eq!(&names, &want);
        for (name, mv) in &self.model {
            let dev = self.dev(name);
            prop_assert_eq!(dev.size(), SIZE as u64);
            let mut buf = vec![0u8; BLOCKS * BLOCK];
            dev.read_at(&mut buf[..SIZE], 0)
                .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            for (i, h) in mv.blocks.iter().enumerate() {
                let got = &buf[i * BLOCK..(i + 1) * BLOCK];
                let end = if i == BLOCKS - 1 { BLOCK - 1000 } else { BLOCK };
                if after_crash {
                    prop_assert!(
                        h.iter().any(|v| v[..end] == got[..end]),
                        "{} block {} reads a value that was never written since the last flush",
                        name,
                        i
                    );
                } else {
                    prop_assert!(
                        h.last().unwrap()[..end] == got[..end],
                        "{} block {} differs",
                        name,
                        i
                    );
                }
            }
            let info = self.pool().volume_info(name).unwrap();
            let snaps: Vec<String> = info.snapshots.iter().map(|s| s.name.clone()).collect();
            prop_assert_eq!(snaps, mv.snaps.keys().cloned().collect::<Vec<_>>());
            for (s, blocks) in &mv.snaps {
                let dev = self.dev(&format!("{name}@{s}"));
                dev.read_at(&mut buf[..SIZE], 0)
                    .map_err(|e| TestCaseError::fail(format!("{name}@{s}: {e}")))?;
                prop_assert!(
                    buf[..SIZE] == blocks.concat()[..SIZE],
                    "{}@{} differs",
                    name,
                    s
                );
            }
            let scrub = self.pool().scrub(name).unwrap();
            prop_assert!(
                scrub.bad_blocks.is_empty(),
                "scrub of {}: {:?}",
                name,
                scrub.bad_blocks
            );
        }
        Ok(())
    }

    /// After a crash, the model collapses to what was actually read.
    fn adopt_reads(&mut self) {
        let names: Vec<String> = self.model.keys().cloned().collect();
        for name in names {
            let dev = self.dev(&name);
            let mut buf = vec![0u8; BLOCKS * BLOCK];
            dev.read_at(&mut buf[..SIZE], 0).unwrap();
            let mv = self.model.get_mut(&name).unwrap();
            for (i, h) in mv.blocks.iter_mut().enumerate() {
                let mut v = buf[i * BLOCK..(i + 1) * BLOCK].to_vec();
                if i == BLOCKS - 1 {
                    // The tail past the end is not addressable: keep the model's.
                    let end = BLOCK - 1000;
                    let prev = h.iter().find(|x| x[..end] == v[..end]).unwrap().clone();
                    v = prev;
                }
                *h = vec![v];
            }
        }
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let pool = self.pool.as_ref().unwrap();
        match op {
            Op::Create {
                v,
                compression,
                encrypt,
            } => {
                let name = NAMES[v];
                let opts = VolumeOptions {
                    compression: [Compression::None, Compression::Lz4, Compression::Zstd]
                        [compression as usize],
                    encrypt,
                };
                let r = pool.create_volume_with(name, SIZE as u64, opts);
                prop_assert_eq!(
                    r.is_ok(),
                    !self.model.contains_key(name),
                    "create {}: {:?}",
                    name,
                    r
                );
                if r.is_ok() {
                    self.model.insert(name.to_owned(), MVol::new());
                }
            }
            Op::Write {
                v,
                offset,
                len,
                seed,
                fua,
            } => {
                let name = NAMES[v];
                if !self.model.contains_key(name) {
                    return Ok(());
                }
                let data = pattern(seed, len);
                self.dev_write(name, &data, offset, fua)?;
                self.model.get_mut(name).unwrap().write(offset, &data);
            }
            Op::Zero { v, block, n } => {
                let name = NAMES[v];
                if !self.model.contains_key(name) {
                    return Ok(());
                }
                let (offset, len) = (block * BLOCK, (n * BLOCK).min(SIZE - block * BLOCK));
                self.dev(name).trim(offset as u64, len as u64).unwrap();
                self.model
                    .get_mut(name)
                    .unwrap()
                    .write(offset, &vec![0u8; len]);
            }
            Op::Flush { fail } => {
                if fail {
                    self.storage.set_faults(Faults {
                        fail_syncs: 1,
                        no_space: false,
                    });
                }
                let r = pool.flush_all();
                self.storage.set_faults(Faults::default());
                if r.is_ok() {
                    self.model.values_mut().for_each(MVol::settle);
                }
            }
            Op::NoSpaceWrite { v, block } => {
                let name = NAMES[v];
                if !self.model.contains_key(name) {
                    return Ok(());
                }
                self.storage.set_faults(Faults {
                    fail_syncs: 0,
                    no_space: true,
                });
                let r = self
                    .dev(name)
                    .write_at(&pattern(9, BLOCK), (block * BLOCK) as u64, false);
                self.storage.set_faults(Faults::default());
                prop_assert!(r.is_err(), "a write on a full disk must fail");
                prop_assert_eq!(r.unwrap_err().errno(), libc::ENOSPC);
            }
            Op::Snapshot { v, s } => {
                let (name, snap) = (NAMES[v], SNAPS[s]);
                let Some(mv) = self.model.get(name) else {
                    return Ok(());
                };
                let fresh = !mv.snaps.contains_key(snap);
                let r = pool.snapshot(name, snap);
                prop_assert_eq!(r.is_ok(), fresh, "snapshot {}@{}: {:?}", name, snap, r);
                if r.is_ok() {
                    let mv = self.model.get_mut(name).unwrap();
                    mv.settle();
                    let cur = mv.current();
                    mv.snaps.insert(snap.to_owned(), cur);
                }
            }
            Op::FencedSnapshot { v, w, s } => {
                let snap = SNAPS[s];
                let mut vols = vec![NAMES[v], NAMES[w]];
                vols.dedup();
                let exist = vols.iter().all(|n| self.model.contains_key(*n));
                let r = pool.fence(&vols, LEASE);
                prop_assert_eq!(r.is_ok(), exist, "fence {:?}: {:?}", vols, r);
                let Ok(id) = r else {
                    return Ok(());
                };
                // Reads (and scrubs) proceed under the fence.
                self.check(false)?;
                let fresh = vols
                    .iter()
                    .all(|n| !self.model[*n].snaps.contains_key(snap));
                let items: Vec<(&str, &str)> = vols.iter().map(|n| (*n, snap)).collect();
                let r = pool.snapshot_fenced(id, &items);
                prop_assert_eq!(r.is_ok(), fresh, "snapshot {:?}: {:?}", items, r);
                pool.unfence(id).unwrap();
                pool.unfence(id).unwrap();
                // Nothing stays fenced: the same volumes can be fenced again.
                let again = pool.fence(&vols, LEASE).unwrap();
                pool.unfence(again).unwrap();
                if r.is_ok() {
                    for n in vols {
                        let mv = self.model.get_mut(n).unwrap();
                        mv.settle();
                        let cur = mv.current();
                        mv.snaps.insert(snap.to_owned(), cur);
                    }
                }
            }
            Op::DeleteSnapshot { v, s } => {
                let (name, snap) = (NAMES[v], SNAPS[s]);
                let Some(mv) = self.model.get_mut(name) else {
                    return Ok(());
                };
                let r = pool.delete_snapshot(name, snap);
                prop_assert_eq!(r.is_ok(), mv.snaps.remove(snap).is_some());
            }
            Op::Clone { v, s, new } => {
                let (name, snap, new) = (NAMES[v], SNAPS[s], NAMES[new]);
                let Some(src) = self
                    .model
                    .get(name)
                    .and_then(|m| m.snaps.get(snap))
                    .cloned()
                else {
                    prop_assert!(pool.clone_snapshot(name, snap, new).is_err());
                    return Ok(());
                };
                let r = pool.clone_snapshot(name, snap, new);
                prop_assert_eq!(r.is_ok(), !self.model.contains_key(new), "clone: {:?}", r);
                if r.is_ok() {
                    let mut mv = MVol::new();
                    mv.blocks = src.into_iter().map(|b| vec![b]).collect();
                    self.model.insert(new.to_owned(), mv);
                }
            }
            Op::Rollback { v, s } => {
                let (name, snap) = (NAMES[v], SNAPS[s]);
                let Some(mv) = self.model.get_mut(name) else {
                    return Ok(());
                };
                let r = pool.rollback(name, snap);
                prop_assert_eq!(r.is_ok(), mv.snaps.contains_key(snap));
                if let Some(blocks) = mv.snaps.get(snap).cloned() {
                    // A rollback flushes first, so nothing older can return.
                    mv.blocks = blocks.into_iter().map(|b| vec![b]).collect();
                    self.model.values_mut().for_each(MVol::settle);
                }
            }
            Op::Delete { v } => {
                let name = NAMES[v];
                let r = pool.delete_volume(name);
                prop_assert_eq!(r.is_ok(), self.model.remove(name).is_some());
            }
            Op::Compact => {
                pool.compact(0.9).unwrap();
            }
            Op::Checkpoint => {
                pool.checkpoint().unwrap();
                self.model.values_mut().for_each(MVol::settle);
            }
            Op::Crash => {
                drop(self.pool.take());
                self.storage.crash();
                self.open();
                self.check(true)?;
                self.adopt_reads();
            }
            Op::Reopen => {
                self.pool().close().unwrap();
                drop(self.pool.take());
                self.model.values_mut().for_each(MVol::settle);
                self.open();
            }
        }
        self.check(false)
    }

    fn dev_write(
        &self,
        name: &str,
        data: &[u8],
        offset: usize,
        fua: bool,
    ) -> Result<(), TestCaseError> {
        self.dev(name)
            .write_at(data, offset as u64, fua)
            .map_err(|e| TestCaseError::fail(format!("write {name}: {e}")))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn pool_matches_the_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let storage = MemStorage::new(seed);
        let mut h = Harness { storage, pool: None, model: BTreeMap::new() };
        h.open();
        for op in ops {
            h.step(op)?;
        }
    }
}

/// Racing creates of one name: exactly one wins, before and after a crash.
#[test]
fn racing_creates_log_one_volume() {
    let storage = MemStorage::new(1);
    let pool = Arc::new(Pool::open_with("/pool", options(&storage)).unwrap());
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                s.spawn(move || pool.create_volume("x", 1 << 20).is_ok() as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);
    let group = pool.snapshot_group(&[("x", "s"), ("x", "s")]);
    assert!(group.is_err(), "one snapshot name twice in a group");
    drop(pool);
    storage.crash();
    let pool = Pool::open_with("/pool", options(&storage)).unwrap();
    assert_eq!(pool.list_volumes(), vec!["x".to_owned()]);
    assert!(pool.volume_info("x").unwrap().snapshots.is_empty());
}

/// Pinned slices are written to their disk, and the pin survives a close
/// and a reopen (it is in the checkpoint).
#[test]
fn placed_slices_go_to_their_disk() {
    let storage = MemStorage::new(2);
    let pool = Pool::open_with("/pool", options(&storage)).unwrap();
    pool.create_volume("p", 3 << 30).unwrap();
    pool.place_slices("p", &[(0, 1), (1, 1), (2, 0)]).unwrap();
    assert!(pool.place_slices("p", &[(0, 9)]).is_err(), "no disk 9");
    assert!(pool.place_slices("nope", &[(0, 0)]).is_err());
    let dev = pool.open_export("p").unwrap();
    dev.write_at(&pattern(5, 4096), 0, false).unwrap();
    dev.write_at(&pattern(6, 4096), 1 << 30, false).unwrap();
    dev.flush().unwrap();
    let used: Vec<u64> = pool.disk_usage().iter().map(|d| d.used_bytes).collect();
    assert_eq!(used[0], 0, "nothing was placed on disk 0 yet: {used:?}");
    assert!(used[1] > 0);
    pool.close().unwrap();
    drop((dev, pool));
    let pool = Pool::open_with("/pool", options(&storage)).unwrap();
    assert_eq!(pool.slice_disks("p").unwrap(), [(0, 1), (1, 1), (2, 0)]);
}

/// A manual clock drives snapshot creation times (and a restart keeps them).
#[test]
fn snapshot_times_come_from_the_pool_clock() {
    let storage = MemStorage::new(1);
    let clock = Arc::new(cairn_blocks::clock::ManualClock::new(1_700_000_000_000));
    let opts = PoolOptions {
        clock: clock.clone(),
        ..options(&storage)
    };
    let pool = Pool::open_with("/pool", opts.clone()).unwrap();
    pool.create_volume("v", 1 << 20).unwrap();
    pool.snapshot("v", "a").unwrap();
    clock.advance(std::time::Duration::from_secs(90));
    pool.snapshot("v", "b").unwrap();
    let times = |pool: &Pool| -> Vec<(String, u64)> {
        let info = pool.volume_info("v").unwrap();
        info.snapshots
            .iter()
            .map(|s| (s.name.clone(), s.created_ms))
            .collect()
    };
    let expected = vec![
        ("a".to_owned(), 1_700_000_000_000),
        ("b".to_owned(), 1_700_000_090_000),
    ];
    assert_eq!(times(&pool), expected);
    drop(pool);
    let pool = Pool::open_with("/pool", opts).unwrap();
    assert_eq!(times(&pool), expected);
}
