//! Snapshot and clone latency in process, without the CLI's start-up cost:
//! a 1 GiB and a 1 TiB thin volume, each with the same 64 MiB written, then
//! 100 snapshots and 100 clones of each. Prints the mean and worst latency
//! and the allocated bytes. A benchmark, not a test: run it with
//! `cargo run --release -p cairn-blocks --example snapshot_latency [DIR]`
//! (`just bench-blocks` runs it).

use std::time::{Duration, Instant};

use cairn_blocks::{Pool, PoolOptions};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("cairn-snaplat-{}", std::process::id()))
        });
    let _ = std::fs::remove_dir_all(&dir);
    let pool = Pool::open_with(
        &dir,
        PoolOptions {
            background: false,
            ..PoolOptions::default()
        },
    )
    .expect("pool opens");
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    println!("| volume | written | snapshot mean | snapshot max | clone mean | allocated bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, size) in [("gib", 1u64 << 30), ("tib", 1u64 << 40)] {
        pool.create_volume(name, size).unwrap();
        let dev = pool.open_export(name).unwrap();
        for i in 0..64u64 {
            // Spread the 64 MiB over the volume so the tree is as deep as it gets.
            let offset = (size / 64) * i;
            dev.write_at(&data, offset, false).unwrap();
        }
        dev.flush().unwrap();
        let mut snaps = vec![];
        for i in 0..100 {
            // One block changes between snapshots, as under a live workload.
            dev.write_at(&data[..4096], 4096 * i, false).unwrap();
            let t = Instant::now();
            pool.snapshot(name, &format!("s{i}")).unwrap();
            snaps.push(t.elapsed());
        }
        let mut clones = vec![];
        for i in 0..100 {
            let t = Instant::now();
            pool.clone_snapshot(name, &format!("s{i}"), &format!("{name}-c{i}"))
                .unwrap();
            clones.push(t.elapsed());
        }
        let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
        let info = pool.volume_info(name).unwrap();
        println!(
            "| {} | 64 MiB | {:.3} ms | {:.3} ms | {:.3} ms | {} |",
            if size == 1 << 30 { "1 GiB" } else { "1 TiB" },
            mean(&snaps).as_secs_f64() * 1e3,
            snaps.iter().max().unwrap().as_secs_f64() * 1e3,
            mean(&clones).as_secs_f64() * 1e3,
            info.allocated_bytes
        );
    }
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
}
