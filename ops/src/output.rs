//! Printing replies as a table (for people), JSON or YAML (`-o`). Tables
//! read the shared reply types of `cairn_schema::reply`, so a renamed
//! field fails to compile here; JSON and YAML print the reply as it came
//! (raw numbers, fields this CLI does not know included). Byte counts are
//! humanized (indicatif's `HumanBytes`) wherever a person reads them.

use cairn_schema::EventView;
use cairn_schema::reply::{
    AppLogReply, AppPlacementReply, AppSnapshotsReply, AppView, DiffReply, NodeListReply,
    ReplayReply, ScrubReply, SnapshotView, VolumeView, WorkflowListReply, WorkflowStartReply,
    WorkflowView,
};
use indicatif::HumanBytes;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` for the table form.
pub fn print(format: Format, value: &Value, table: impl FnOnce(&Value) -> Vec<Vec<String>>) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("json values serialize")
        ),
        Format::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(value).expect("json values are yaml")
        ),
        Format::Table => print_table(&table(value)),
    }
}

/// Prints rows with aligned columns; the first row is the header. A row
/// of one cell (a title or a note) does not widen the columns.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| r.len() > 1)
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// A byte count for a person (`20.75 KiB`), with indicatif's `HumanBytes`;
/// `-` when unknown. JSON and YAML output keep the raw numbers.
pub fn bytes(value: &Value) -> String {
    match (value.as_u64(), value.as_i64()) {
        (Some(n), _) => HumanBytes(n).to_string(),
        (None, Some(n)) => format!("-{}", HumanBytes(n.unsigned_abs())),
        _ => "-".into(),
    }
}

/// A cell from a JSON field: strings bare, null as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A byte count for a person.
pub fn human(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// An optional value, `-` when absent.
fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn volume_rows(volumes: &[VolumeView]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "SIZE".into(),
        "ALLOCATED".into(),
        "EXCLUSIVE".into(),
        "SNAPSHOTS".into(),
        "OPTIONS".into(),
        "CREATED".into(),
    ]];
    for v in volumes {
        let mut options = vec![];
        if let Some(c) = &v.compression {
            options.push(c.clone());
        }
        if v.encrypted == Some(true) {
            options.push("encrypted".into());
        }
        if let Some(o) = &v.origin {
            options.push(format!("clone of {o}"));
        }
        rows.push(vec![
            v.name.clone(),
            human(v.size_bytes),
            or_dash(v.allocated_bytes.map(human)),
            or_dash(v.exclusive_bytes.map(human)),
            v.snapshots.len().to_string(),
            options.join(","),
            v.created.clone(),
        ]);
    }
    rows
}

pub fn snapshot_rows(snapshots: &[SnapshotView]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "CREATED".into(),
        "ALLOCATED".into(),
        "EXCLUSIVE".into(),
        "SEQ".into(),
    ]];
    for s in snapshots {
        rows.push(vec![
            s.name.clone(),
            s.created.clone(),
            or_dash(s.allocated_bytes.map(human)),
            or_dash(s.exclusive_bytes.map(human)),
            s.seq.to_string(),
        ]);
    }
    rows
}

/// `volume diff`: one row per changed range.
pub fn diff_rows(reply: &DiffReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["OFFSET".into(), "LENGTH".into()]];
    for e in &reply.extents {
        rows.push(vec![e.offset.to_string(), human(e.len)]);
    }
    rows.push(vec![format!(
        "{} changed in {} ranges",
        human(reply.changed_bytes),
        reply.extents.len()
    )]);
    rows
}

/// `volume scrub`: a summary line, then one row per bad block.
pub fn scrub_rows(reply: &ScrubReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![format!(
        "{}: {} blocks checked, {} bad",
        reply.volume,
        reply.checked_blocks,
        reply.bad_blocks.len()
    )]];
    if !reply.bad_blocks.is_empty() {
        rows.push(vec!["IMAGE".into(), "OFFSET".into(), "REASON".into()]);
        for b in &reply.bad_blocks {
            rows.push(vec![
                b.image.clone(),
                b.offset.to_string(),
                b.reason.clone(),
            ]);
        }
    }
    rows
}

pub fn event_rows(events: &[EventView]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SEQ".into(),
        "TIME".into(),
        "KIND".into(),
        "SUBJECT".into(),
        "HASH".into(),
        "WHAT".into(),
    ]];
    for e in events {
        rows.push(vec![
            e.seq.to_string(),
            e.time.clone(),
            e.kind.clone(),
            e.subject.clone(),
            e.hash.chars().take(12).collect(),
            event_summary(e),
        ]);
    }
    rows
}

pub fn app_rows(apps: &[AppView]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "WORKLOADS".into(),
        "VOLUMES".into(),
        "CREATED".into(),
    ]];
    for a in apps {
        let workloads: Vec<String> = a
            .workloads
            .iter()
            .map(|w| format!("{}/{}×{}", w.kind, w.name, w.replicas))
            .collect();
        rows.push(vec![
            a.name.clone(),
            if workloads.is_empty() {
                "-".into()
            } else {
                workloads.join(",")
            },
            a.volumes.len().to_string(),
            a.created.clone(),
        ]);
    }
    rows
}

/// `app get` as a table: workloads, volumes and ConfigMap keys.
pub fn app_detail_rows(app: &AppView) -> Vec<Vec<String>> {
    let mut rows = app_rows(std::slice::from_ref(app));
    rows.push(vec![]);
    rows.push(vec![
        "VOLUME".into(),
        "CLAIM".into(),
        "SIZE".into(),
        "STATE".into(),
    ]);
    for v in &app.volumes {
        let state = if v.retained {
            "retained (scaled in)"
        } else {
            "in use"
        };
        rows.push(vec![
            v.name.clone(),
            v.claim.clone(),
            human(v.size_bytes),
            state.into(),
        ]);
    }
    if !app.configmaps.is_empty() {
        rows.push(vec![]);
        rows.push(vec!["CONFIG".into(), "VALUE".into()]);
        for (cm, data) in &app.configmaps {
            for (key, value) in data.as_object().into_iter().flatten() {
                rows.push(vec![format!("{cm}.{key}"), cell(value)]);
            }
        }
    }
    rows
}

/// One line saying what an event did. The payload is read as JSON: events
/// of kinds this CLI does not know still print (as their kind).
pub fn event_summary(e: &EventView) -> String {
    let d = &e.data;
    let list = |v: &Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| cell(x.get("pvc").unwrap_or(x)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    match e.kind.as_str() {
        "AppCreated" => format!(
            "created with {} objects and {} volumes",
            d["objects"].as_array().map_or(0, Vec::len),
            d["volumes"].as_array().map_or(0, Vec::len)
        ),
        "AppScaled" => {
            let mut s = format!(
                "scaled {} {} from {} to {} replicas",
                cell(&d["workload_kind"]),
                cell(&d["workload"]),
                cell(&d["from_replicas"]),
                cell(&d["replicas"])
            );
            if d["added"].as_array().is_some_and(|a| !a.is_empty()) {
                s += &format!(" (+{})", list(&d["added"]));
            }
            if d["removed"].as_array().is_some_and(|a| !a.is_empty()) {
                s += &format!(" (-{})", list(&d["removed"]));
            }
            s
        }
        "AppConfigSet" => format!(
            "set {}.{} = {}",
            cell(&d["configmap"]),
            cell(&d["key"]),
            cell(&d["value"])
        ),
        "AppDeleted" => "deleted".into(),
        "VolumeCreated" => format!(
            "volume {} created ({})",
            cell(&d["volume"]),
            bytes(&d["size_bytes"])
        ),
        "VolumeCloned" => format!(
            "volume {} cloned from {}@{}",
            cell(&d["volume"]),
            cell(&d["source"]),
            cell(&d["snapshot"])
        ),
        "VolumeDeleted" => format!("volume {} deleted", cell(&d["volume"])),
        "VolumeSnapshotted" => format!("snapshot {}@{}", cell(&d["volume"]), cell(&d["snapshot"])),
        "SnapshotDeleted" => format!(
            "snapshot {}@{} deleted",
            cell(&d["volume"]),
            cell(&d["snapshot"])
        ),
        "VolumeRolledBack" => format!(
            "volume {} rolled back to {}",
            cell(&d["volume"]),
            cell(&d["snapshot"])
        ),
        "NodeRegistered" => format!(
            "node {} registered (rack {}, datacenter {}, {} disks)",
            cell(&d["node"]),
            cell(&d["rack"]),
            cell(&d["datacenter"]),
            d["disks"].as_array().map_or(0, Vec::len)
        ),
        "NodeFailed" => format!("node {} marked failed", cell(&d["node"])),
        "AppPlaced" => {
            let nodes: std::collections::BTreeSet<String> = d["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|v| v["slices"].as_array().cloned().unwrap_or_default())
                .map(|s| cell(&s["node"]))
                .collect();
            format!(
                "placed {} volumes on {}",
                d["volumes"].as_array().map_or(0, Vec::len),
                nodes.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
        "AppSnapshotted" => format!(
            "snapshot {} of {} volumes{}",
            cell(&d["snapshot"]),
            d["volumes"].as_array().map_or(0, Vec::len),
            match d["message"].as_str() {
                Some(m) if !m.is_empty() => format!(": {m}"),
                _ => String::new(),
            }
        ),
        "AppSnapshotDeleted" => format!("snapshot {} deleted", cell(&d["snapshot"])),
        "AppRolledBack" => {
            let mut s = format!("rolled back to {}", cell(&d["snapshot"]));
            if d["retired"].as_array().is_some_and(|a| !a.is_empty()) {
                s += &format!(" (retired {})", list(&d["retired"]));
            }
            if d["deleted"].as_array().is_some_and(|a| !a.is_empty()) {
                s += &format!(" (deleted {})", list(&d["deleted"]));
            }
            s
        }
        "AppCloned" => format!(
            "cloned from {}@{}",
            cell(&d["source"]),
            cell(&d["snapshot"])
        ),
        "WorkflowStarted" => format!(
            "workflow {} ({}) started",
            cell(&d["workflow"]),
            cell(&d["name"])
        ),
        "WorkflowFinished" => format!("workflow {} {}", cell(&d["workflow"]), cell(&d["outcome"])),
        other => other.to_owned(),
    }
}

/// `app snapshots`.
pub fn app_snapshot_rows(reply: &AppSnapshotsReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SNAPSHOT".into(),
        "CREATED".into(),
        "VOLUMES".into(),
        "REPLICAS".into(),
        "CLONES".into(),
        "MESSAGE".into(),
    ]];
    for s in &reply.snapshots {
        let replicas: Vec<String> = s
            .workloads
            .iter()
            .map(|w| format!("{}={}", w.name, w.replicas))
            .collect();
        rows.push(vec![
            s.name.clone(),
            s.created.clone(),
            s.volumes.len().to_string(),
            replicas.join(","),
            s.clones.join(","),
            s.message.clone(),
        ]);
    }
    rows
}

/// A workflow started with `--async`.
pub fn workflow_started_rows(reply: &WorkflowStartReply) -> Vec<Vec<String>> {
    vec![vec![format!(
        "workflow {} ({}) {}; follow it with: cairn workflow show {}",
        reply.workflow, reply.name, reply.status, reply.workflow
    )]]
}

/// `workflow list`.
pub fn workflow_list_rows(reply: &WorkflowListReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "ID".into(),
        "NAME".into(),
        "APP".into(),
        "STATUS".into(),
        "STEPS".into(),
        "STARTED".into(),
        "MS".into(),
        "FAILED STEP".into(),
    ]];
    for w in &reply.workflows {
        rows.push(vec![
            w.id.clone(),
            w.name.clone(),
            or_dash(w.app.as_ref()),
            w.status.clone(),
            format!("{}/{}", w.steps_completed, w.steps),
            w.started.clone(),
            or_dash(w.duration_ms),
            or_dash(w.failed_step.as_ref()),
        ]);
    }
    rows.push(vec![format!(
        "built-in definitions: {}",
        reply.builtins.join(", ")
    )]);
    rows
}

/// `workflow show`: a header, then one row per step.
pub fn workflow_rows(w: &WorkflowView) -> Vec<Vec<String>> {
    let mut rows = vec![vec![format!(
        "workflow {} ({}) {}{}",
        w.id,
        w.name,
        w.status,
        match w.duration_ms {
            Some(ms) => format!(" in {ms} ms"),
            None => String::new(),
        }
    )]];
    match (&w.failed_step, &w.failure) {
        (Some(step), failure) => rows.push(vec![format!(
            "failed at step {step}: {}",
            or_dash(failure.as_ref())
        )]),
        (None, Some(failure)) => rows.push(vec![format!("error: {failure}")]),
        (None, None) => {}
    }
    rows.push(vec![
        "#".into(),
        "STEP".into(),
        "RUN".into(),
        "STATE".into(),
        "ATTEMPTS".into(),
        "STARTED".into(),
        "MS".into(),
        "COMPENSATE".into(),
        "ERROR".into(),
    ]);
    for s in &w.steps {
        rows.push(vec![
            s.index.to_string(),
            s.name.clone(),
            s.run.clone(),
            s.state.clone(),
            format!("{}/{}", s.attempts, s.max_attempts),
            or_dash(s.started.as_ref()),
            or_dash(s.duration_ms),
            or_dash(s.compensate.as_ref()),
            or_dash(s.error.as_ref()),
        ]);
    }
    rows
}

/// `app log`: newest first, one line per event, like `git log --oneline`.
pub fn log_rows(reply: &AppLogReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SEQ".into(),
        "TIME".into(),
        "BY".into(),
        "WHAT".into(),
    ]];
    for e in &reply.entries {
        rows.push(vec![
            e.seq.to_string(),
            e.time.clone(),
            e.user.clone(),
            event_summary(e),
        ]);
    }
    rows
}

pub fn node_rows(reply: &NodeListReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NODE".into(),
        "STATE".into(),
        "RACK".into(),
        "DC".into(),
        "DISK".into(),
        "MEDIA".into(),
        "CAPACITY".into(),
        "PLACED".into(),
        "WRITTEN".into(),
    ]];
    for n in &reply.nodes {
        for d in &n.disks {
            rows.push(vec![
                n.name.clone(),
                n.state.clone(),
                n.rack.clone(),
                n.datacenter.clone(),
                d.name.clone(),
                d.media.clone(),
                human(d.capacity_bytes),
                human(d.placed_bytes),
                or_dash(d.used_bytes.map(human)),
            ]);
        }
    }
    rows
}

/// `app placement`: one row per slice.
pub fn placement_rows(reply: &AppPlacementReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "REPLICA".into(),
        "VOLUME".into(),
        "SLICE".into(),
        "NODE".into(),
        "DISK".into(),
        "RACK".into(),
        "DC".into(),
    ]];
    for v in &reply.volumes {
        for s in &v.slices {
            rows.push(vec![
                or_dash(v.replica.as_ref()),
                v.volume.clone(),
                s.index.to_string(),
                s.node.clone(),
                s.disk.clone(),
                s.rack.clone(),
                s.datacenter.clone(),
            ]);
        }
    }
    rows
}

/// `events replay`: what existed at that point.
pub fn replay_rows(reply: &ReplayReply) -> Vec<Vec<String>> {
    let mut rows = vec![vec![format!(
        "state as of seq {} ({})",
        reply.at_seq, reply.at_time
    )]];
    rows.push(vec![]);
    match (&reply.app, &reply.apps) {
        (Some(app), _) => rows.extend(app_detail_rows(app)),
        (None, apps) => rows.extend(app_rows(apps.as_deref().unwrap_or(&[]))),
    }
    rows.push(vec![]);
    rows.push(vec!["VOLUME".into(), "SIZE".into(), "SNAPSHOTS".into()]);
    for v in &reply.volumes {
        let snaps: Vec<&str> = v.snapshots.iter().map(|s| s.name.as_str()).collect();
        rows.push(vec![v.name.clone(), human(v.size_bytes), snaps.join(",")]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use cairn_schema::reply::WorkflowView;

    use super::*;

    #[test]
    fn byte_counts_are_for_people_in_tables() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(21_248), "20.75 KiB");
        assert_eq!(human(1 << 30), "1.00 GiB");
        assert_eq!(bytes(&Value::from(-2048i64)), "-2.00 KiB");
        assert_eq!(bytes(&Value::Null), "-");
    }

    /// `workflow show` once read an `error` field the reply does not have
    /// (it is `failure`), so a failed workflow printed no reason.
    #[test]
    fn workflow_show_prints_why_it_failed() {
        let view: WorkflowView = serde_json::from_value(serde_json::json!({
            "id": "wf-1", "name": "app-snapshot", "description": "", "status": "compensated",
            "app": "shop", "parent": null, "started": null, "finished": null,
            "duration_ms": 12, "hash": "", "params": {}, "failed_step": "take",
            "failure": "unavailable: the pool is busy", "steps": [], "output": null,
            "definition": ""
        }))
        .unwrap();
        let rows = workflow_rows(&view);
        assert_eq!(
            rows[1],
            vec!["failed at step take: unavailable: the pool is busy".to_owned()]
        );
    }
}
