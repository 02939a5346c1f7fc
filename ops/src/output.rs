//! Printing replies as a table (for people), JSON or YAML (`-o`).

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

pub fn volume_rows(volumes: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "SIZE".into(),
        "ALLOCATED".into(),
        "SNAPSHOTS".into(),
        "OPTIONS".into(),
        "CREATED".into(),
    ]];
    for v in volumes {
        let allocated = bytes(&v["allocated_bytes"]);
        let snaps = v["snapshots"].as_array().map(|s| s.len()).unwrap_or(0);
        let mut options = vec![];
        if let Some(c) = v["compression"].as_str() {
            options.push(c.to_owned());
        }
        if v["encrypted"] == Value::Bool(true) {
            options.push("encrypted".into());
        }
        if let Some(o) = v["origin"].as_str() {
            options.push(format!("clone of {o}"));
        }
        rows.push(vec![
            cell(&v["name"]),
            bytes(&v["size_bytes"]),
            allocated,
            snaps.to_string(),
            options.join(","),
            cell(&v["created"]),
        ]);
    }
    rows
}

pub fn snapshot_rows(snapshots: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "CREATED".into(),
        "ALLOCATED".into(),
        "EXCLUSIVE".into(),
        "SEQ".into(),
    ]];
    let size = bytes;
    for s in snapshots.as_array().into_iter().flatten() {
        rows.push(vec![
            cell(&s["name"]),
            cell(&s["created"]),
            size(&s["allocated_bytes"]),
            size(&s["exclusive_bytes"]),
            cell(&s["seq"]),
        ]);
    }
    rows
}

/// `volume diff`: one row per changed range.
pub fn diff_rows(reply: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["OFFSET".into(), "LENGTH".into()]];
    for e in reply["extents"].as_array().into_iter().flatten() {
        rows.push(vec![cell(&e["offset"]), cell(&e["len"])]);
    }
    rows.push(vec![format!(
        "{} changed in {} ranges",
        bytes(&reply["changed_bytes"]),
        rows.len() - 1
    )]);
    rows
}

/// `volume scrub`: a summary line, then one row per bad block.
pub fn scrub_rows(reply: &Value) -> Vec<Vec<String>> {
    let bad = reply["bad_blocks"].as_array().cloned().unwrap_or_default();
    let mut rows = vec![vec![format!(
        "{}: {} blocks checked, {} bad",
        cell(&reply["volume"]),
        cell(&reply["checked_blocks"]),
        bad.len()
    )]];
    if !bad.is_empty() {
        rows.push(vec!["IMAGE".into(), "OFFSET".into(), "REASON".into()]);
        for b in &bad {
            rows.push(vec![
                cell(&b["image"]),
                cell(&b["offset"]),
                cell(&b["reason"]),
            ]);
        }
    }
    rows
}

pub fn event_rows(events: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SEQ".into(),
        "TIME".into(),
        "KIND".into(),
        "SUBJECT".into(),
        "HASH".into(),
        "WHAT".into(),
    ]];
    for e in events {
        let hash = e["hash"]
            .as_str()
            .map(|h| h.chars().take(12).collect())
            .unwrap_or_default();
        rows.push(vec![
            cell(&e["seq"]),
            cell(&e["time"]),
            cell(&e["kind"]),
            cell(&e["subject"]),
            hash,
            event_summary(e),
        ]);
    }
    rows
}

pub fn app_rows(apps: &[Value]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "NAME".into(),
        "WORKLOADS".into(),
        "VOLUMES".into(),
        "CREATED".into(),
    ]];
    for a in apps {
        let workloads: Vec<String> = a["workloads"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|w| {
                format!(
                    "{}/{}×{}",
                    cell(&w["kind"]),
                    cell(&w["name"]),
                    cell(&w["replicas"])
                )
            })
            .collect();
        rows.push(vec![
            cell(&a["name"]),
            if workloads.is_empty() {
                "-".into()
            } else {
                workloads.join(",")
            },
            a["volumes"].as_array().map_or(0, Vec::len).to_string(),
            cell(&a["created"]),
        ]);
    }
    rows
}

/// `app get` as a table: workloads, volumes and ConfigMap keys.
pub fn app_detail_rows(app: &Value) -> Vec<Vec<String>> {
    let mut rows = app_rows(std::slice::from_ref(app));
    rows.push(vec![]);
    rows.push(vec![
        "VOLUME".into(),
        "CLAIM".into(),
        "SIZE".into(),
        "STATE".into(),
    ]);
    for v in app["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let state = if v["retained"].as_bool() == Some(true) {
            "retained (scaled in)"
        } else {
            "in use"
        };
        rows.push(vec![
            cell(&v["name"]),
            cell(&v["claim"]),
            bytes(&v["size_bytes"]),
            state.into(),
        ]);
    }
    if let Some(cms) = app["configmaps"].as_object().filter(|m| !m.is_empty()) {
        rows.push(vec![]);
        rows.push(vec!["CONFIG".into(), "VALUE".into()]);
        for (cm, data) in cms {
            for (key, value) in data.as_object().into_iter().flatten() {
                rows.push(vec![format!("{cm}.{key}"), cell(value)]);
            }
        }
    }
    rows
}

/// One line saying what an event did, from its JSON view.
pub fn event_summary(e: &Value) -> String {
    let d = &e["data"];
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
    match e["kind"].as_str().unwrap_or("") {
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
pub fn app_snapshot_rows(reply: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SNAPSHOT".into(),
        "CREATED".into(),
        "VOLUMES".into(),
        "REPLICAS".into(),
        "CLONES".into(),
        "MESSAGE".into(),
    ]];
    for s in reply["snapshots"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let replicas = s["workloads"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|w| format!("{}={}", cell(&w["name"]), cell(&w["replicas"])))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        rows.push(vec![
            cell(&s["name"]),
            cell(&s["created"]),
            s["volumes"].as_array().map_or(0, Vec::len).to_string(),
            replicas,
            s["clones"]
                .as_array()
                .map(|c| c.iter().map(cell).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            cell(&s["message"]),
        ]);
    }
    rows
}

/// A workflow started with `--async`.
pub fn workflow_started_rows(reply: &Value) -> Vec<Vec<String>> {
    vec![vec![format!(
        "workflow {} ({}) {}; follow it with: cairn workflow show {}",
        cell(&reply["workflow"]),
        cell(&reply["name"]),
        cell(&reply["status"]),
        cell(&reply["workflow"])
    )]]
}

/// `workflow list`.
pub fn workflow_list_rows(reply: &Value) -> Vec<Vec<String>> {
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
    for w in reply["workflows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        rows.push(vec![
            cell(&w["id"]),
            cell(&w["name"]),
            cell(&w["app"]),
            cell(&w["status"]),
            format!("{}/{}", cell(&w["steps_completed"]), cell(&w["steps"])),
            cell(&w["started"]),
            cell(&w["duration_ms"]),
            cell(&w["failed_step"]),
        ]);
    }
    rows.push(vec![format!(
        "built-in definitions: {}",
        reply["builtins"]
            .as_array()
            .map(|b| b.iter().map(cell).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    )]);
    rows
}

/// `workflow show`: a header, then one row per step.
pub fn workflow_rows(w: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![format!(
        "workflow {} ({}) {}{}",
        cell(&w["id"]),
        cell(&w["name"]),
        cell(&w["status"]),
        match w["duration_ms"].as_u64() {
            Some(ms) => format!(" in {ms} ms"),
            None => String::new(),
        }
    )]];
    if let Some(step) = w["failed_step"].as_str() {
        rows.push(vec![format!(
            "failed at step {step}: {}",
            cell(&w["error"])
        )]);
    } else if let Some(e) = w["error"].as_str() {
        rows.push(vec![format!("error: {e}")]);
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
    for s in w["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        rows.push(vec![
            cell(&s["index"]),
            cell(&s["name"]),
            cell(&s["run"]),
            cell(&s["state"]),
            format!("{}/{}", cell(&s["attempts"]), cell(&s["max_attempts"])),
            cell(&s["started"]),
            cell(&s["duration_ms"]),
            cell(&s["compensate"]),
            cell(&s["error"]),
        ]);
    }
    rows
}

/// `app log`: newest first, one line per event, like `git log --oneline`.
pub fn log_rows(reply: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "SEQ".into(),
        "TIME".into(),
        "BY".into(),
        "WHAT".into(),
    ]];
    for e in reply["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        rows.push(vec![
            cell(&e["seq"]),
            cell(&e["time"]),
            cell(&e["user"]),
            event_summary(e),
        ]);
    }
    rows
}

pub fn node_rows(reply: &Value) -> Vec<Vec<String>> {
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
    let size = bytes;
    for n in reply["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        for d in n["disks"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            rows.push(vec![
                cell(&n["name"]),
                cell(&n["state"]),
                cell(&n["rack"]),
                cell(&n["datacenter"]),
                cell(&d["name"]),
                cell(&d["media"]),
                size(&d["capacity_bytes"]),
                size(&d["placed_bytes"]),
                size(&d["used_bytes"]),
            ]);
        }
    }
    rows
}

/// `app placement`: one row per slice.
pub fn placement_rows(reply: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "REPLICA".into(),
        "VOLUME".into(),
        "SLICE".into(),
        "NODE".into(),
        "DISK".into(),
        "RACK".into(),
        "DC".into(),
    ]];
    for v in reply["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        for s in v["slices"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            rows.push(vec![
                cell(&v["replica"]),
                cell(&v["volume"]),
                cell(&s["index"]),
                cell(&s["node"]),
                cell(&s["disk"]),
                cell(&s["rack"]),
                cell(&s["datacenter"]),
            ]);
        }
    }
    rows
}

/// `events replay`: what existed at that point.
pub fn replay_rows(reply: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![vec![format!(
        "state as of seq {} ({})",
        cell(&reply["at_seq"]),
        cell(&reply["at_time"])
    )]];
    rows.push(vec![]);
    if reply["app"].is_object() {
        rows.extend(app_detail_rows(&reply["app"]));
    } else {
        rows.extend(app_rows(
            reply["apps"].as_array().map(Vec::as_slice).unwrap_or(&[]),
        ));
    }
    rows.push(vec![]);
    rows.push(vec!["VOLUME".into(), "SIZE".into(), "SNAPSHOTS".into()]);
    for v in reply["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let snaps: Vec<String> = v["snapshots"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|s| cell(&s["name"]))
            .collect();
        rows.push(vec![cell(&v["name"]), cell(&v["size"]), snaps.join(",")]);
    }
    rows
}
