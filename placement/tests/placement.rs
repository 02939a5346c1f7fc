//! The placement planner against the cases and against a brute-force
//! oracle.
//!
//! The checker here restates every constraint from the planner's contract
//! (media, live nodes, capacity, one node per volume, affinity,
//! anti-affinity, separateDisks) without sharing code with the planner. The
//! property test plans random small requests on random small topologies:
//! every plan must pass the checker, and every refusal must be confirmed by
//! an exhaustive search that finds no placement at all.

use cairn_placement::placement::{
    self, Affinity, Claim, Constraint, Constraints, Failure, Level, Media, Plan, ReplicaSet,
    Request, SLICE_BYTES, Usage, failure_impact,
};
use cairn_placement::topology::{Disk, Node, Topology};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

// ---- an independent model of the constraints ----------------------------

struct FlatDisk {
    node: usize,
    rack: (String, String),
    datacenter: String,
    media: Media,
    capacity: u64,
    used: u64,
    live: bool,
}

struct FlatVol {
    name: String,
    replica: Option<String>,
    /// (set index, ordinal) for replica volumes.
    member: Option<(usize, u32)>,
    slices: u64,
    media: Option<Media>,
    separate: bool,
}

struct Model<'r> {
    request: &'r Request,
    disks: Vec<FlatDisk>,
    disk_names: Vec<(String, String)>,
    vols: Vec<FlatVol>,
}

impl<'r> Model<'r> {
    fn new(topology: &Topology, usage: &Usage, request: &'r Request) -> Model<'r> {
        let mut disks = Vec::new();
        let mut disk_names = Vec::new();
        for (n, node) in topology.nodes.iter().enumerate() {
            for disk in &node.disks {
                disks.push(FlatDisk {
                    node: n,
                    rack: (node.datacenter.clone(), node.rack.clone()),
                    datacenter: node.datacenter.clone(),
                    media: disk.media,
                    capacity: disk.capacity_bytes,
                    used: usage.used_bytes(&node.name, &disk.name),
                    live: !node.failed,
                });
                disk_names.push((node.name.clone(), disk.name.clone()));
            }
        }
        let mut vols = Vec::new();
        for (s, set) in request.replica_sets.iter().enumerate() {
            for ordinal in 0..set.replicas {
                for claim in &set.claims {
                    vols.push(FlatVol {
                        name: format!("{}-{}-{ordinal}", claim.name, set.name),
                        replica: Some(format!("{}-{ordinal}", set.name)),
                        member: Some((s, ordinal)),
                        slices: claim.size_bytes.div_ceil(GIB),
                        media: claim.media.or(set.placement.media),
                        separate: set.placement.separate_disks.contains(&claim.name),
                    });
                }
            }
        }
        for claim in &request.volumes {
            vols.push(FlatVol {
                name: claim.name.clone(),
                replica: None,
                member: None,
                slices: claim.size_bytes.div_ceil(GIB),
                media: claim.media,
                separate: false,
            });
        }
        Model {
            request,
            disks,
            disk_names,
            vols,
        }
    }

    fn set(&self, s: usize) -> &ReplicaSet {
        &self.request.replica_sets[s]
    }

    fn same_domain(&self, level: Level, a: usize, b: usize) -> bool {
        let (da, db) = (&self.disks[a], &self.disks[b]);
        match level {
            Level::Disk => a == b,
            Level::Node => da.node == db.node,
            Level::Rack => da.rack == db.rack,
            Level::Datacenter => da.datacenter == db.datacenter,
        }
    }

    /// Whether slice of `vol` may go on `disk`, given `placed` (vol, disk)
    /// pairs and `extra[disk]` slices already added. Err says which rule.
    fn fits(
        &self,
        vol: usize,
        disk: usize,
        placed: &[(usize, usize)],
        extra: &[u64],
    ) -> Result<(), String> {
        let v = &self.vols[vol];
        let d = &self.disks[disk];
        if !d.live {
            return Err(format!("{} on a failed node", v.name));
        }
        if v.media.is_some_and(|m| m != d.media) {
            return Err(format!("{} on {:?} media", v.name, d.media));
        }
        if d.used + (extra[disk] + 1) * SLICE_BYTES > d.capacity {
            return Err(format!("{} overfills disk {disk}", v.name));
        }
        for &(other, other_disk) in placed {
            let o = &self.vols[other];
            let od = &self.disks[other_disk];
            if other == vol && od.node != d.node {
                return Err(format!("{} spans two nodes", v.name));
            }
            let (Some((s, ord)), Some((os, oord))) = (v.member, o.member) else {
                continue;
            };
            if s != os {
                continue;
            }
            let set = self.set(s);
            if ord == oord {
                if set.placement.affinity == Affinity::Node && od.node != d.node {
                    return Err(format!("replica of {} spans two nodes", v.name));
                }
                if other != vol && v.separate && o.separate && other_disk == disk {
                    return Err(format!("{} and {} share a disk", v.name, o.name));
                }
            } else if let Some(level) = set.placement.anti_affinity
                && self.same_domain(level, disk, other_disk)
            {
                return Err(format!("{} and {} share a {level}", v.name, o.name));
            }
        }
        Ok(())
    }

    /// Checks a plan against every constraint.
    fn check(&self, topology: &Topology, plan: &Plan) -> Result<(), String> {
        if plan.volumes.len() != self.vols.len() {
            return Err(format!(
                "{} volumes planned, {} asked",
                plan.volumes.len(),
                self.vols.len()
            ));
        }
        let mut placed = Vec::new();
        let mut extra = vec![0u64; self.disks.len()];
        for (vol, (want, got)) in self.vols.iter().zip(&plan.volumes).enumerate() {
            if got.volume != want.name || got.replica != want.replica {
                return Err(format!(
                    "expected {} of {:?}, got {:?}",
                    want.name, want.replica, got
                ));
            }
            if got.slices.len() as u64 != want.slices {
                return Err(format!(
                    "{} has {} slices, needs {}",
                    want.name,
                    got.slices.len(),
                    want.slices
                ));
            }
            for (i, slice) in got.slices.iter().enumerate() {
                if slice.index as usize != i {
                    return Err(format!("{} slice {i} has index {}", want.name, slice.index));
                }
                let disk = self
                    .disk_names
                    .iter()
                    .position(|(n, d)| *n == slice.node && *d == slice.disk)
                    .ok_or_else(|| {
                        format!(
                            "{} on unknown disk {}/{}",
                            want.name, slice.node, slice.disk
                        )
                    })?;
                let node = topology.node(&slice.node).unwrap();
                if node.rack != slice.rack || node.datacenter != slice.datacenter {
                    return Err(format!(
                        "{} slice {i} has wrong rack or datacenter",
                        want.name
                    ));
                }
                self.fits(vol, disk, &placed, &extra)?;
                placed.push((vol, disk));
                extra[disk] += 1;
            }
        }
        Ok(())
    }

    /// Whether any placement exists, by exhaustive search (slices of one
    /// volume are interchangeable, so they take disks in ascending order).
    fn brute_force(&self) -> bool {
        let slices: Vec<usize> = self
            .vols
            .iter()
            .enumerate()
            .flat_map(|(v, vol)| std::iter::repeat_n(v, vol.slices as usize))
            .collect();
        let mut placed = Vec::new();
        let mut extra = vec![0u64; self.disks.len()];
        let mut budget: u64 = 50_000_000;
        let found = self.search(&slices, &mut placed, &mut extra, &mut budget);
        assert!(
            budget > 0,
            "brute force ran out of budget; shrink the generated inputs"
        );
        found
    }

    fn search(
        &self,
        slices: &[usize],
        placed: &mut Vec<(usize, usize)>,
        extra: &mut [u64],
        budget: &mut u64,
    ) -> bool {
        let Some(&vol) = slices.get(placed.len()) else {
            return true;
        };
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let free: u64 = self
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.live)
            .map(|(i, d)| d.capacity.saturating_sub(d.used + extra[i] * SLICE_BYTES) / SLICE_BYTES)
            .sum();
        if free < (slices.len() - placed.len()) as u64 {
            return false;
        }
        let lowest = match placed.last() {
            Some(&(prev_vol, prev_disk)) if prev_vol == vol => prev_disk,
            _ => 0,
        };
        for disk in lowest..self.disks.len() {
            if self.fits(vol, disk, placed, extra).is_err() {
                continue;
            }
            placed.push((vol, disk));
            extra[disk] += 1;
            if self.search(slices, placed, extra, budget) {
                return true;
            }
            placed.pop();
            extra[disk] -= 1;
        }
        false
    }
}

// ---- the Cassandra case ------------------------------------------

fn ssd_node(name: &str, rack: &str) -> Node {
    let disk = |name: &str, media| Disk {
        name: name.into(),
        media,
        capacity_bytes: 40 * GIB,
    };
    Node {
        name: name.into(),
        rack: rack.into(),
        datacenter: "dc1".into(),
        failed: false,
        disks: vec![
            disk("ssd1", Media::Ssd),
            disk("ssd2", Media::Ssd),
            disk("hdd1", Media::Hdd),
        ],
    }
}

/// 4 nodes in 3 racks: r3 has two nodes.
fn cassandra_topology() -> Topology {
    Topology {
        nodes: vec![
            ssd_node("n1", "r1"),
            ssd_node("n2", "r2"),
            ssd_node("n3", "r3"),
            ssd_node("n4", "r3"),
        ],
    }
}

fn cassandra(replicas: u32) -> Request {
    let claim = |name: &str, gib: u64, io_class: &str| Claim {
        name: name.into(),
        size_bytes: gib * GIB,
        io_class: io_class.into(),
        media: None,
    };
    Request {
        app: "cassandra".into(),
        replica_sets: vec![ReplicaSet {
            name: "cassandra".into(),
            replicas,
            claims: vec![claim("commitlog", 8, "wal"), claim("data", 30, "data")],
            placement: Constraints {
                anti_affinity: Some(Level::Rack),
                separate_disks: vec!["commitlog".into(), "data".into()],
                media: Some(Media::Ssd),
                affinity: Affinity::Node,
            },
        }],
        volumes: vec![],
    }
}

#[test]
fn cassandra_replicas_sit_on_their_own_racks_and_separate_ssds() {
    let topology = cassandra_topology();
    let request = cassandra(3);
    let plan = placement::plan(&topology, &Usage::new(), &request).unwrap();
    Model::new(&topology, &Usage::new(), &request)
        .check(&topology, &plan)
        .unwrap();

    let mut racks = Vec::new();
    for ordinal in 0..3 {
        let replica = format!("cassandra-{ordinal}");
        let volumes: Vec<_> = plan
            .volumes
            .iter()
            .filter(|v| v.replica.as_deref() == Some(&replica))
            .collect();
        assert_eq!(volumes.len(), 2);
        let mut replica_racks: Vec<&str> = volumes
            .iter()
            .flat_map(|v| v.slices.iter().map(|s| s.rack.as_str()))
            .collect();
        replica_racks.dedup();
        assert_eq!(replica_racks.len(), 1, "{replica} spans racks");
        racks.push(replica_racks[0].to_owned());

        let disks_of = |claim: &str| -> Vec<(String, String)> {
            let volume = plan.volume(&format!("{claim}-{replica}")).unwrap();
            let mut disks: Vec<_> = volume
                .slices
                .iter()
                .map(|s| (s.node.clone(), s.disk.clone()))
                .collect();
            disks.dedup();
            disks
        };
        let (commitlog, data) = (disks_of("commitlog"), disks_of("data"));
        assert!(
            commitlog.iter().all(|d| !data.contains(d)),
            "{replica}: commitlog and data share a disk"
        );
        for (node, disk) in commitlog.iter().chain(&data) {
            let media = topology
                .node(node)
                .unwrap()
                .disks
                .iter()
                .find(|d| d.name == *disk)
                .unwrap()
                .media;
            assert_eq!(media, Media::Ssd);
        }
    }
    racks.sort();
    assert_eq!(racks, ["r1", "r2", "r3"]);

    // Losing any one disk or node costs at most one replica.
    let plans = [("cassandra", &plan)];
    let mut failures = Vec::new();
    for node in &topology.nodes {
        failures.push(Failure::Node {
            node: node.name.clone(),
        });
        for disk in &node.disks {
            failures.push(Failure::Disk {
                node: node.name.clone(),
                disk: disk.name.clone(),
            });
        }
    }
    let mut losses = 0;
    for failure in &failures {
        let impact = failure_impact(plans, failure);
        assert!(!impact.lost_more_than_one_member(), "{impact}");
        assert!(impact.replica_sets.iter().all(|s| s.members.len() <= 1));
        losses += impact.volumes.len();
    }
    assert!(losses > 0, "some failure must hit some replica");
}

#[test]
fn a_fourth_cassandra_replica_is_refused_naming_the_racks() {
    let error = placement::plan(&cassandra_topology(), &Usage::new(), &cassandra(4)).unwrap_err();
    assert_eq!(
        error.constraint,
        Constraint::AntiAffinity { level: Level::Rack }
    );
    assert_eq!(error.replica.as_deref(), Some("cassandra-3"));
    assert_eq!(
        error.message,
        "replica cassandra-3 needs a rack other than r1, r2, r3; there are no more racks"
    );
}

#[test]
fn a_failed_node_takes_its_rack_out_and_the_message_says_so() {
    let mut topology = cassandra_topology();
    topology.set_failed("n1", true).unwrap();
    let error = placement::plan(&topology, &Usage::new(), &cassandra(3)).unwrap_err();
    assert_eq!(error.replica.as_deref(), Some("cassandra-2"));
    assert!(error.message.contains("other than r2, r3"), "{error}");
    assert!(
        error.message.contains("rack r1: node n1 is failed"),
        "{error}"
    );

    let plan = placement::plan(&topology, &Usage::new(), &cassandra(2)).unwrap();
    assert!(
        plan.volumes
            .iter()
            .flat_map(|v| &v.slices)
            .all(|s| s.node != "n1")
    );
}

#[test]
fn the_json_form_is_replica_volume_slices() {
    let plan = placement::plan(&cassandra_topology(), &Usage::new(), &cassandra(1)).unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    let first = &json[0];
    assert_eq!(first["replica"], "cassandra-0");
    assert_eq!(first["volume"], "commitlog-cassandra-0", "request order");
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["replica", "slices", "volume"]);
    let slice = first["slices"][0].as_object().unwrap();
    let keys: Vec<&str> = slice.keys().map(String::as_str).collect();
    assert_eq!(keys, ["datacenter", "disk", "index", "node", "rack"]);
    let back: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn plans_are_deterministic() {
    let topology = cassandra_topology();
    let mut usage_a = Usage::new();
    let mut usage_b = Usage::new();
    let disks: Vec<_> = topology.disk_ids().collect();
    for (i, disk) in disks.iter().enumerate() {
        usage_a.set_used_bytes(&disk.node, &disk.disk, (i as u64 % 5) * GIB);
    }
    for (i, disk) in disks.iter().enumerate().rev() {
        usage_b.set_used_bytes(&disk.node, &disk.disk, (i as u64 % 5) * GIB);
    }
    let first = placement::plan(&topology, &usage_a, &cassandra(3)).unwrap();
    for _ in 0..3 {
        assert_eq!(
            placement::plan(&topology, &usage_a, &cassandra(3)).unwrap(),
            first
        );
        assert_eq!(
            placement::plan(&topology, &usage_b, &cassandra(3)).unwrap(),
            first
        );
    }
}

#[test]
fn plans_balance_disk_use() {
    let topology = Topology::simulated(6);
    let mut usage = Usage::new();
    let request = |i: usize| Request {
        app: format!("app-{i}"),
        replica_sets: vec![ReplicaSet {
            name: "db".into(),
            replicas: 3,
            claims: vec![Claim {
                name: "data".into(),
                size_bytes: 5 * GIB,
                io_class: "data".into(),
                media: Some(Media::Ssd),
            }],
            placement: Constraints {
                anti_affinity: Some(Level::Node),
                ..Constraints::default()
            },
        }],
        volumes: vec![],
    };
    for i in 0..40 {
        let plan = placement::plan(&topology, &usage, &request(i)).unwrap();
        usage.add_plan(&plan);
    }
    let ssd_use: Vec<u64> = topology
        .disk_ids()
        .filter(|d| d.disk.starts_with("ssd"))
        .map(|d| usage.used_bytes(&d.node, &d.disk))
        .collect();
    let (min, max) = (
        *ssd_use.iter().min().unwrap(),
        *ssd_use.iter().max().unwrap(),
    );
    assert_eq!(ssd_use.iter().sum::<u64>(), 40 * 3 * 5 * GIB);
    assert!(
        max - min <= 5 * GIB,
        "ssd use spread {min}..{max}: {ssd_use:?}"
    );

    // Against a skewed start, new volumes go to the emptier disks.
    let mut skewed = Usage::new();
    skewed.set_used_bytes("node-1", "ssd-1", 90 * GIB);
    skewed.set_used_bytes("node-1", "ssd-2", 90 * GIB);
    let one = Request {
        app: "one".into(),
        replica_sets: vec![],
        volumes: vec![Claim {
            name: "v".into(),
            size_bytes: 5 * GIB,
            io_class: "data".into(),
            media: Some(Media::Ssd),
        }],
    };
    let plan = placement::plan(&topology, &skewed, &one).unwrap();
    assert_ne!(plan.volumes[0].slices[0].node, "node-1");
}

#[test]
fn a_volume_larger_than_any_disk_spreads_over_its_nodes_disks() {
    let topology = Topology {
        nodes: vec![Node {
            name: "n1".into(),
            rack: "r1".into(),
            datacenter: "dc1".into(),
            failed: false,
            disks: (1..=3)
                .map(|i| Disk {
                    name: format!("d{i}"),
                    media: Media::Hdd,
                    capacity_bytes: 2 * GIB,
                })
                .collect(),
        }],
    };
    let request = Request {
        app: "big".into(),
        replica_sets: vec![],
        volumes: vec![Claim {
            name: "v".into(),
            size_bytes: 5 * GIB + 1,
            io_class: "data".into(),
            media: None,
        }],
    };
    let plan = placement::plan(&topology, &Usage::new(), &request).unwrap();
    Model::new(&topology, &Usage::new(), &request)
        .check(&topology, &plan)
        .unwrap();
    assert_eq!(plan.volumes[0].slices.len(), 6);
}

#[test]
fn refusals_name_media_and_capacity() {
    let topology = cassandra_topology();
    let mut request = cassandra(1);
    request.replica_sets[0].placement.media = Some(Media::Nvme);
    let error = placement::plan(&topology, &Usage::new(), &request).unwrap_err();
    assert_eq!(error.constraint, Constraint::Media);
    assert_eq!(
        error.message,
        "claim commitlog of replica set cassandra needs an nvme disk; no live node has one"
    );

    let mut request = cassandra(1);
    request.replica_sets[0].claims[1].size_bytes = 400 * GIB;
    let error = placement::plan(&topology, &Usage::new(), &request).unwrap_err();
    assert_eq!(error.constraint, Constraint::Capacity);
    assert!(
        error
            .message
            .contains("needs 408 GiB on ssd disks but the live ssd disks have 320 GiB free"),
        "{error}"
    );

    // Fits the cluster, not one node: affinity keeps a replica on one node.
    let mut request = cassandra(1);
    request.replica_sets[0].claims[1].size_bytes = 60 * GIB;
    for anti_affinity in [Some(Level::Rack), None] {
        request.replica_sets[0].placement.anti_affinity = anti_affinity;
        let error = placement::plan(&topology, &Usage::new(), &request).unwrap_err();
        assert_eq!(error.constraint, Constraint::SeparateDisks, "{error}");
        assert_eq!(error.replica.as_deref(), Some("cassandra-0"));
        assert_eq!(
            error.message,
            "replica cassandra-0 cannot be placed: nodes n1 (2 usable), n2 (2 usable), n3 (2 usable), \
             n4 (2 usable) have too few usable disks to keep commitlog, data apart (separateDisks needs 3)"
        );
    }
}

// ---- random small cases against brute force -------------------------------

fn media_of(i: u8) -> Media {
    [Media::Ssd, Media::Hdd][i as usize % 2]
}

fn level_of(i: u8) -> Option<Level> {
    [
        None,
        Some(Level::Disk),
        Some(Level::Node),
        Some(Level::Rack),
        Some(Level::Datacenter),
    ][i as usize % 5]
}

prop_compose! {
    fn arb_node(i: usize)(
        rack in 0u8..3,
        dc in 0u8..2,
        failed in prop::bool::weighted(0.1),
        disks in prop::collection::vec((0u8..2, 1u64..=6), 1..=2),
    ) -> Node {
        Node {
            name: format!("n{i}"),
            rack: format!("r{rack}"),
            datacenter: format!("dc{dc}"),
            failed,
            disks: disks
                .into_iter()
                .enumerate()
                .map(|(d, (media, gib))| Disk { name: format!("d{d}"), media: media_of(media), capacity_bytes: gib * GIB })
                .collect(),
        }
    }
}

fn arb_topology() -> impl Strategy<Value = Topology> {
    (1usize..=5)
        .prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
        .prop_map(|nodes| Topology { nodes })
}

/// Half-GiB steps of prior use for each of up to 8 disks.
fn arb_usage() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..=3, 10)
}

fn arb_claim(name: &'static str) -> impl Strategy<Value = Claim> {
    (1u64..=4, prop::option::weighted(0.25, 0u8..2)).prop_map(move |(halves, media)| Claim {
        name: name.into(),
        size_bytes: halves * GIB / 2,
        io_class: "data".into(),
        media: media.map(media_of),
    })
}

fn arb_set(
    name: &'static str,
    max_replicas: u32,
    max_claims: usize,
) -> impl Strategy<Value = ReplicaSet> {
    (
        1..=max_replicas,
        prop::collection::vec(arb_claim("a"), 1..=max_claims),
        0u8..5,
        any::<bool>(),
        prop::option::weighted(0.2, 0u8..2),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            move |(replicas, mut claims, level, separate, media, affinity)| {
                if claims.len() == 2 {
                    claims[1].name = "b".into();
                }
                ReplicaSet {
                    name: name.into(),
                    replicas,
                    placement: Constraints {
                        anti_affinity: level_of(level),
                        separate_disks: if separate {
                            claims.iter().map(|c| c.name.clone()).collect()
                        } else {
                            vec![]
                        },
                        media: media.map(media_of),
                        affinity: if affinity {
                            Affinity::Node
                        } else {
                            Affinity::None
                        },
                    },
                    claims,
                }
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        arb_set("db", 4, 2),
        prop::option::weighted(0.3, arb_set("cache", 2, 1)),
        prop::option::weighted(0.3, arb_claim("scratch")),
    )
        .prop_map(|(db, cache, scratch)| Request {
            app: "app".into(),
            replica_sets: std::iter::once(db).chain(cache).collect(),
            volumes: scratch.into_iter().collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_plan_meets_every_constraint_and_every_refusal_is_real(
        topology in arb_topology(),
        used in arb_usage(),
        request in arb_request(),
    ) {
        let mut usage = Usage::new();
        for (disk, halves) in topology.disk_ids().zip(&used) {
            usage.set_used_bytes(&disk.node, &disk.disk, halves * GIB / 2);
        }
        let model = Model::new(&topology, &usage, &request);
        let outcome = placement::plan(&topology, &usage, &request);
        match outcome {
            Ok(plan) => {
                if let Err(broken) = model.check(&topology, &plan) {
                    return Err(TestCaseError::fail(format!("plan breaks a constraint: {broken}\n{plan:#?}")));
                }
                prop_assert_eq!(placement::plan(&topology, &usage, &request).unwrap(), plan);
            }
            Err(error) => {
                prop_assert_ne!(error.constraint, Constraint::SearchLimit, "{}", error);
                prop_assert_ne!(error.constraint, Constraint::Request, "{}", error);
                prop_assert!(!model.brute_force(), "refused, but brute force finds a placement: {}", error);
                if let Some(replica) = &error.replica {
                    prop_assert!(model.vols.iter().any(|v| v.replica.as_ref() == Some(replica)), "{}", error);
                }
                prop_assert!(!error.message.is_empty());
            }
        }
    }
}
