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
        "CREATED".into(),
    ]];
    for v in volumes {
        let allocated = v["allocated_bytes"]
            .as_u64()
            .map(cairn_schema::names::format_size)
            .unwrap_or("-".into());
        let snaps = v["snapshots"].as_array().map(|s| s.len()).unwrap_or(0);
        rows.push(vec![
            cell(&v["name"]),
            cell(&v["size"]),
            allocated,
            snaps.to_string(),
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
        "SEQ".into(),
    ]];
    for s in snapshots.as_array().into_iter().flatten() {
        let allocated = s["allocated_bytes"]
            .as_u64()
            .map(cairn_schema::names::format_size)
            .unwrap_or("-".into());
        rows.push(vec![
            cell(&s["name"]),
            cell(&s["created"]),
            allocated,
            cell(&s["seq"]),
        ]);
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
