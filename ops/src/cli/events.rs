//! `cairn events …`: list, follow, verify (live or offline), replay and
//! export the journal. Requests and replies are the shared types of
//! `cairn_schema` (`EventsFilter` is the very filter the server applies).

use std::path::Path;

use anyhow::Context;
use cairn_actors::client::Client;
use cairn_schema::command::{EmptyBody, EventsFilter, MAX_EVENTS_PAGE, ReplayBody};
use cairn_schema::reply::{EventsListReply, ReplayReply, VerifyReply};
use cairn_schema::{EventView, subject};
use futures::StreamExt;

use super::{EventsAction, EventsArgs, Reply, call, call_admin};
use crate::output::{self, Format};

fn events_filter(args: &EventsArgs) -> anyhow::Result<EventsFilter> {
    if args.app.is_some() && args.volume.is_some() {
        anyhow::bail!("give --app or --volume, not both");
    }
    let mut filter = EventsFilter {
        subject: args.volume.as_ref().map(|v| format!("volume/{v}")),
        app: args.app.clone(),
        kind: args.kind.clone(),
        cluster: args.cluster,
        ..EventsFilter::default()
    };
    if let Some(since) = &args.since {
        if let Ok(seq) = since.parse::<u64>() {
            filter.since_seq = seq;
        } else {
            let ms = cairn_schema::time::parse_rfc3339_ms(since).with_context(|| {
                format!("--since {since:?} is neither a seq nor an RFC 3339 UTC time")
            })?;
            filter.since_ms = Some(ms);
        }
    }
    Ok(filter)
}

/// One page of `events.list` (the cluster's with `--cluster`).
async fn list(client: &Client, filter: &EventsFilter) -> anyhow::Result<EventsListReply> {
    let reply: Reply<EventsListReply> = if filter.cluster {
        call_admin(client, "events", "list", filter).await?
    } else {
        call(client, "events", "list", filter).await?
    };
    Ok(reply.body)
}

pub async fn run(client: &Client, fmt: Format, args: &EventsArgs) -> anyhow::Result<i32> {
    match &args.action {
        Some(EventsAction::Verify { .. }) => {
            let reply = call::<VerifyReply>(client, "events", "verify", &EmptyBody {}).await?;
            return Ok(print_verify(
                fmt,
                &reply,
                "hash chain intact, replayed state equals live state",
            ));
        }
        Some(EventsAction::Replay { at, app }) => {
            let mut body = ReplayBody {
                at_seq: None,
                at_ms: None,
                app: app.clone(),
            };
            if let Ok(seq) = at.parse::<u64>() {
                body.at_seq = Some(seq);
            } else {
                let ms = cairn_schema::time::parse_rfc3339_ms(at).with_context(|| {
                    format!("--at {at:?} is neither a seq nor an RFC 3339 UTC time")
                })?;
                body.at_ms = Some(ms);
            }
            let reply = call::<ReplayReply>(client, "events", "replay", &body).await?;
            reply.print(fmt, output::replay_rows);
            return Ok(0);
        }
        Some(EventsAction::Export { file: path }) => {
            return export(client, args, path.as_deref()).await;
        }
        None => {}
    }
    let mut filter = events_filter(args)?;
    // Subscribe first when following, so nothing falls between list and follow.
    let mut live = if args.follow {
        Some(
            client
                .bus
                .subscribe(&subject::events_wildcard(&client.tenant), None)
                .await?,
        )
    } else {
        None
    };
    let mut last_seq = 0u64;
    let mut rows_printed = false;
    loop {
        let reply = list(client, &filter).await?;
        print_events(fmt, args.json, &reply.events, !rows_printed);
        rows_printed |= !reply.events.is_empty();
        if let Some(e) = reply.events.last() {
            last_seq = e.seq;
        }
        if reply.events.is_empty() || reply.next_seq <= filter.since_seq {
            break;
        }
        filter.since_seq = reply.next_seq;
    }
    let Some(live) = live.as_mut() else {
        return Ok(0);
    };
    // The same filter the server applies to `events.list`.
    let wanted = events_filter(args)?;
    while let Some(message) = live.next().await {
        let Ok(event) = serde_json::from_slice::<EventView>(&message.payload) else {
            continue;
        };
        if event.seq > last_seq && wanted.matches(&event.subject, &event.kind, event.time_ms) {
            last_seq = event.seq;
            print_events(fmt, args.json, std::slice::from_ref(&event), false);
        }
    }
    Ok(0)
}

/// Writes every matching event as one JSON object per line.
async fn export(client: &Client, args: &EventsArgs, path: Option<&Path>) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let mut out: Box<dyn std::io::Write> = match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut filter = events_filter(args)?;
    filter.limit = Some(MAX_EVENTS_PAGE);
    let mut n = 0u64;
    loop {
        let reply = list(client, &filter).await?;
        for e in &reply.events {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
        n += reply.events.len() as u64;
        if reply.events.is_empty() || reply.next_seq <= filter.since_seq {
            break;
        }
        filter.since_seq = reply.next_seq;
    }
    out.flush()?;
    if let Some(p) = path {
        eprintln!("exported {n} events to {}", p.display());
    }
    Ok(0)
}

/// Prints a verify report; returns the exit code (1 when it failed).
fn print_verify(fmt: Format, reply: &Reply<VerifyReply>, ok_text: &str) -> i32 {
    let ok = reply.body.ok;
    reply.print(fmt, |r| {
        if ok {
            vec![vec![format!(
                "ok: {} records, {ok_text}",
                r.records.map_or_else(|| "-".into(), |n| n.to_string())
            )]]
        } else {
            vec![vec![format!(
                "FAILED at seq {}: {}",
                r.first_bad_seq
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                r.reason.as_deref().unwrap_or("-")
            )]]
        }
    });
    if ok { 0 } else { 1 }
}

/// `cairn events verify --data-dir D`: the journal file alone, read-only.
pub fn verify_offline(fmt: Format, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let path = data_dir.join("journal.redb");
    anyhow::ensure!(path.is_file(), "no journal at {}", path.display());
    let body = match cairn_actors::journal::verify_file(&path)? {
        Ok(records) => VerifyReply {
            ok: true,
            records: Some(records),
            first_bad_seq: None,
            reason: None,
        },
        Err(brk) => VerifyReply {
            ok: false,
            records: None,
            first_bad_seq: Some(brk.seq),
            reason: Some(brk.reason),
        },
    };
    // The offline report says so in its JSON form too.
    let mut raw = serde_json::to_value(&body)?;
    raw["offline"] = serde_json::Value::Bool(true);
    Ok(print_verify(
        fmt,
        &Reply { body, raw },
        "hash chain intact, every event decodes (offline: the live state is not compared)",
    ))
}

fn print_events(fmt: Format, json_lines: bool, events: &[EventView], header: bool) {
    if json_lines || fmt == Format::Json {
        for e in events {
            println!("{}", serde_json::to_string(e).expect("events serialize"));
        }
    } else if fmt == Format::Yaml {
        if !events.is_empty() {
            print!(
                "{}",
                serde_yaml_ng::to_string(events).expect("events are yaml")
            );
        }
    } else {
        let mut rows = output::event_rows(events);
        if !header {
            rows.remove(0);
        }
        output::print_table(&rows);
    }
}
