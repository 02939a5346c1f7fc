//! Regression test for issue 14's size bug: a PVC of `storage: 1050M` was
//! created as a 2-slice volume (the app decider read `M` as 2^20) but
//! planned as 1 slice (the planner read it as 10^6), so its second slice
//! landed wherever the pool liked. Every size now goes through one
//! Kubernetes quantity parser: for each size below, the slices the planner
//! places equal the slices of the volume the block engine creates.

use std::collections::BTreeSet;

use cairn_blocks::{Pool, PoolOptions};
use cairn_placement::app_placement::place;
use cairn_placement::{Topology, Usage};
use cairn_schema::Event;
use cairn_schema::app::{AppCommand, AppState, parse_manifest};

fn manifest(storage: &str) -> String {
    format!(
        r#"
apiVersion: cairn.dev/v1
kind: App
metadata: {{name: sized}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  replicas: 1
  template: {{spec: {{containers: [{{name: pg, image: "postgres:16"}}]}}}}
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec: {{resources: {{requests: {{storage: "{storage}"}}}}}}
"#
    )
}

#[test]
fn planned_slices_equal_created_slices() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open_with(
        dir.path(),
        PoolOptions {
            background: false,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let topology = Topology::simulated(3);
    let cases: &[(&str, u64)] = &[
        ("1050M", 1),
        ("1Gi", 1),
        ("1G", 1),
        ("1100Mi", 2),
        ("3Gi", 3),
        ("3221225473", 4), // 3Gi + 1
    ];
    for (i, (storage, want_slices)) in cases.iter().enumerate() {
        let app = AppState::default();
        let manifest = parse_manifest(&manifest(storage), None).unwrap();
        let events = app
            .decide(&AppCommand::Create(manifest), &|_| false)
            .unwrap();
        let created: Vec<(String, u64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::VolumeCreated(v) => Some((v.volume.clone(), v.size_bytes)),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{storage}: one volume");
        let (volume, size_bytes) = &created[0];
        let engine_name = format!("v{i}");
        pool.create_volume(&engine_name, *size_bytes).unwrap();
        let engine_bytes = pool.volume_info(&engine_name).unwrap().size_bytes;
        let created_slices = engine_bytes.div_ceil(cairn_blocks::SLICE_BYTES);

        let Some(Event::AppPlaced(placed)) =
            place(&app, &events, &topology, &Usage::default()).unwrap()
        else {
            panic!("{storage}: no AppPlaced");
        };
        let planned: BTreeSet<u32> = placed
            .volumes
            .iter()
            .filter(|v| v.pvc == volume.split_once('/').unwrap().1)
            .flat_map(|v| v.slices.iter().map(|s| s.index))
            .collect();
        assert_eq!(
            planned.len() as u64,
            created_slices,
            "{storage}: planned {planned:?}, the engine's volume has {created_slices} slices"
        );
        assert_eq!(
            planned,
            (0..created_slices as u32).collect(),
            "{storage}: every slice planned once"
        );
        assert_eq!(created_slices, *want_slices, "{storage}");
    }
}
