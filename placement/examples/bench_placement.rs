//! Placement benchmark (`just bench-placement`): plans 1,000 apps × 3
//! replicas × 2 volumes on a 100-node topology, one app after another on top
//! of what the earlier ones use, and prints the time taken and the balance
//! (max/min disk use) for the planner and for a first-fit baseline that
//! honours the same constraints.
//!
//! The cluster: 100 nodes in 10 racks across 2 datacenters, each node with
//! four 512 GiB ssd disks. Each app is a Cassandra-like StatefulSet: a
//! `commitlog` claim of 1–4 GiB and a `data` claim of 10–50 GiB, on ssd,
//! rack anti-affinity, the two claims on separate disks. Sizes come from a
//! fixed-seed generator, so every run plans the same apps (about half the
//! cluster's capacity).
//!
//! A benchmark, not a test: it asserts nothing about time.

use std::time::Instant;

use cairn_placement::placement::{
    self, Affinity, Claim, Constraints, Level, Media, Plan, ReplicaSet, Request, SLICE_BYTES, Usage,
};
use cairn_placement::topology::{Disk, Node, Topology};

const N_APPS: usize = 1000;
const N_NODES: usize = 100;
const N_RACKS: usize = 10;
const DISKS_PER_NODE: usize = 4;
const DISK_BYTES: u64 = 512 << 30;
const GIB: u64 = 1 << 30;

/// A fixed-seed xorshift generator (no dependency, same numbers every run).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn topology() -> Topology {
    Topology {
        nodes: (0..N_NODES)
            .map(|i| {
                let rack = i % N_RACKS;
                Node {
                    name: format!("node-{i}"),
                    rack: format!("rack-{rack}"),
                    datacenter: format!("dc-{}", rack * 2 / N_RACKS),
                    failed: false,
                    disks: (0..DISKS_PER_NODE)
                        .map(|d| Disk {
                            name: format!("ssd-{d}"),
                            media: Media::Ssd,
                            capacity_bytes: DISK_BYTES,
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

fn apps() -> Vec<Request> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..N_APPS)
        .map(|i| {
            let claim = |name: &str, gib: u64, io_class: &str| Claim {
                name: name.into(),
                size_bytes: gib * GIB,
                io_class: io_class.into(),
                media: None,
            };
            let commitlog = 1 + rng.below(4);
            let data = 10 + rng.below(41);
            Request {
                app: format!("app-{i}"),
                replica_sets: vec![ReplicaSet {
                    name: "db".into(),
                    replicas: 3,
                    claims: vec![
                        claim("commitlog", commitlog, "wal"),
                        claim("data", data, "data"),
                    ],
                    placement: Constraints {
                        anti_affinity: Some(Level::Rack),
                        separate_disks: vec!["commitlog".into(), "data".into()],
                        media: Some(Media::Ssd),
                        affinity: Affinity::Node,
                    },
                }],
                volumes: vec![],
            }
        })
        .collect()
}

/// The baseline: each replica on the first node (in topology order) whose
/// rack holds no other replica of the app, each volume whole on the first
/// disk of that node with room that its sibling does not use.
fn first_fit(topology: &Topology, apps: &[Request]) -> Vec<u64> {
    let mut used = vec![0u64; N_NODES * DISKS_PER_NODE];
    for app in apps {
        let set = &app.replica_sets[0];
        let mut racks_taken: Vec<&str> = Vec::new();
        for _ordinal in 0..set.replicas {
            let mut placed = false;
            for (n, node) in topology.nodes.iter().enumerate() {
                if racks_taken.contains(&node.rack.as_str()) {
                    continue;
                }
                let mut trial = Vec::new();
                for claim in &set.claims {
                    let bytes = claim.size_bytes.div_ceil(SLICE_BYTES) * SLICE_BYTES;
                    let disk = (0..DISKS_PER_NODE)
                        .map(|d| n * DISKS_PER_NODE + d)
                        .find(|&d| {
                            used[d] + bytes <= DISK_BYTES && !trial.iter().any(|&(t, _)| t == d)
                        });
                    match disk {
                        Some(d) => trial.push((d, bytes)),
                        None => break,
                    }
                }
                if trial.len() == set.claims.len() {
                    for (d, bytes) in trial {
                        used[d] += bytes;
                    }
                    racks_taken.push(&node.rack);
                    placed = true;
                    break;
                }
            }
            assert!(placed, "first fit could not place {}", app.app);
        }
    }
    used
}

fn report(name: &str, seconds: f64, used: &[u64]) {
    let max = *used.iter().max().unwrap();
    let min = *used.iter().min().unwrap();
    let mean = used.iter().sum::<u64>() as f64 / used.len() as f64;
    let ratio = if min == 0 {
        "inf (an empty disk)".to_owned()
    } else {
        format!("{:.3}", max as f64 / min as f64)
    };
    println!(
        "{name:<10} {:>9.1} ms   disk use GiB: min {:>4} mean {:>6.1} max {:>4}   max/min {ratio}",
        seconds * 1e3,
        min / GIB,
        mean / GIB as f64,
        max / GIB,
    );
}

fn main() {
    let topology = topology();
    let apps = apps();
    let demand: u64 = apps
        .iter()
        .flat_map(|a| &a.replica_sets)
        .map(|s| {
            s.claims
                .iter()
                .map(|c| c.size_bytes.div_ceil(SLICE_BYTES))
                .sum::<u64>()
                * s.replicas as u64
        })
        .sum();
    println!(
        "placing {N_APPS} apps x 3 replicas x 2 volumes ({demand} slices) on {N_NODES} nodes, {N_RACKS} racks, {} disks of {} GiB ({:.0}% full after)",
        N_NODES * DISKS_PER_NODE,
        DISK_BYTES / GIB,
        demand as f64 * 100.0 / (N_NODES * DISKS_PER_NODE) as f64 / (DISK_BYTES / GIB) as f64
    );

    let started = Instant::now();
    let mut usage = Usage::new();
    let mut plans: Vec<Plan> = Vec::with_capacity(apps.len());
    for app in &apps {
        let plan =
            placement::plan(&topology, &usage, app).unwrap_or_else(|e| panic!("{}: {e}", app.app));
        usage.add_plan(&plan);
        plans.push(plan);
    }
    let planner_seconds = started.elapsed().as_secs_f64();
    let planned: Vec<u64> = topology
        .disk_ids()
        .map(|d| usage.used_bytes(&d.node, &d.disk))
        .collect();
    let slices: usize = plans
        .iter()
        .flat_map(|p| &p.volumes)
        .map(|v| v.slices.len())
        .sum();
    assert_eq!(slices as u64, demand, "every slice placed");

    let started = Instant::now();
    let baseline = first_fit(&topology, &apps);
    let first_fit_seconds = started.elapsed().as_secs_f64();
    assert_eq!(baseline.iter().sum::<u64>(), demand * SLICE_BYTES);

    report("planner", planner_seconds, &planned);
    report("first-fit", first_fit_seconds, &baseline);
}
