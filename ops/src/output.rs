//! Printing replies as a table (for people), JSON or YAML (`-o`).

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
            serde_yaml::to_string(value).expect("json values are yaml")
        ),
        Format::Table => print_table(&table(value)),
    }
}

/// Prints rows with aligned columns; the first row is the header.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
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
        let allocated = v["allocated_bytes"]
            .as_u64()
            .map(cairn_schema::names::format_size)
            .unwrap_or("-".into());
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
            cell(&v["size"]),
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
    let size = |v: &Value| {
        v.as_u64()
            .map(cairn_schema::names::format_size)
            .unwrap_or("-".into())
    };
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
        reply["changed_bytes"]
            .as_u64()
            .map(cairn_schema::names::format_size)
            .unwrap_or_default(),
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
        ]);
    }
    rows
}
