//! `just bench-commands`: the command path against its peers, in one run,
//! printing ratios (DESIGN.md, "How we measure"). Not a test: it asserts no
//! timing, it reports whether the targets were met.
//!
//! 1. **Round trip.** Durable commands per second and p50/p99 latency at
//!    concurrency 1 and 64 over NATS, against a bare async-nats echo
//!    responder (a child process that replies with the request body) on the
//!    same nats-server, driven by the same client code with the same
//!    requests. Each of the 64 workers owns one aggregate (app or volume),
//!    because an actor handles one command at a time.
//! 2. **Replay.** The journal is padded to `BENCH_EVENTS` records through the
//!    journal API (the same events the command would journal, in a mix that
//!    keeps the state bounded), then a full replay (decode + fold into
//!    `World`) is timed against a raw redb scan of the same table (iterate
//!    `events`, touch every byte). Best of 3, warm page cache.
//! 3. **Restart.** Time from spawning `cairn up` on that data dir to its first
//!    answered `system.ping`: after a SIGTERM (snapshots on), after a
//!    `kill -9`, and with the snapshots deleted (a full replay).
//!
//! Writes the tables to `BENCH_OUT` (default `target/bench-commands.md`).
//!
//! Environment: `CAIRN_BIN` (a release `cairn`, required), `BENCH_COMMANDS`
//! (space-separated, first one drives the replay and restart phases; default
//! `app.config-set volume.snapshot`), `BENCH_SECONDS` (per measured phase,
//! default 5), `BENCH_EVENTS` (default 1000000), `BENCH_DIR` (scratch
//! directory, default a temporary one).
//!
//! `bench_commands echo URL` is the echo responder itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use cairn_actors::bus::{self, Bus, NatsOptions, REQUEST_ID_HEADER, USER_HEADER};
use cairn_actors::journal::{self, AppendRequest, Appended, Causation, Journal, RedbJournal};
use cairn_schema::Event;
use cairn_schema::event::{AppConfigSet, SnapshotDeleted, VolumeSnapshotted};
use futures::StreamExt;
use serde_json::{Value, json};

/// Aggregates the benchmark owns: one per worker at concurrency 64.
const AGGREGATES: usize = 64;
const CONCURRENCIES: [usize; 2] = [1, 64];
const WARM_UP: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
const SNAPSHOTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("snapshots");

/// An app with one ConfigMap and no volumes: `app.config-set` on it touches
/// the journal only.
const MANIFEST: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: fast
";

/// The command a benchmark run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `app.config-set`: decide, journal, publish; no block-engine work.
    ConfigSet,
    /// `volume.snapshot`: also a block-engine snapshot (a metadata fsync).
    VolumeSnapshot,
}

impl Workload {
    fn parse(name: &str) -> anyhow::Result<Workload> {
        match name {
            "app.config-set" => Ok(Workload::ConfigSet),
            "volume.snapshot" => Ok(Workload::VolumeSnapshot),
            _ => bail!("unknown bench command {name:?}: app.config-set or volume.snapshot"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::ConfigSet => "app.config-set",
            Workload::VolumeSnapshot => "volume.snapshot",
        }
    }

    fn aggregate(worker: usize) -> String {
        format!("bench{worker}")
    }

    /// Creates the aggregates the workers use.
    async fn setup(self, bus: &Bus) -> anyhow::Result<()> {
        for worker in 0..AGGREGATES {
            let name = Workload::aggregate(worker);
            let (subject, body) = match self {
                Workload::ConfigSet => (
                    "cairn.v1.default.app.create",
                    json!({ "name": name, "manifest": MANIFEST }),
                ),
                Workload::VolumeSnapshot => (
                    "cairn.v1.default.volume.create",
                    json!({ "name": name, "size": "1G" }),
                ),
            };
            let id = format!("bench-setup-{}-{worker}", self.name());
            call(bus, subject, &id, json_bytes(&body)).await?;
        }
        Ok(())
    }

    /// The `index`th request of a worker in a phase named `phase`.
    fn request(self, phase: &str, worker: usize, index: u64) -> (&'static str, Bytes) {
        let name = Workload::aggregate(worker);
        match self {
            Workload::ConfigSet => (
                "cairn.v1.default.app.config-set",
                json_bytes(&json!({
                    "name": name,
                    "configmap": "settings",
                    "key": format!("key{}", index % 16),
                    "value": format!("{phase}-{index}"),
                })),
            ),
            Workload::VolumeSnapshot => (
                "cairn.v1.default.volume.snapshot",
                json_bytes(&json!({ "name": name, "snapshot": format!("{phase}-{index}") })),
            ),
        }
    }

    /// The `index`th padding event: what the command journals, in a mix that
    /// keeps the state bounded (a snapshot is deleted right after it is
    /// taken, since the block engine never saw it).
    fn pad_event(self, index: u64) -> Event {
        let worker = (index / 2) as usize % AGGREGATES;
        let volume = Workload::aggregate(worker);
        match self {
            Workload::ConfigSet => Event::AppConfigSet(AppConfigSet {
                app: Workload::aggregate(index as usize % AGGREGATES),
                configmap: "settings".into(),
                key: format!("key{}", index % 16),
                value: format!("pad-{index}"),
            }),
            Workload::VolumeSnapshot if index.is_multiple_of(2) => {
                Event::VolumeSnapshotted(VolumeSnapshotted {
                    volume,
                    snapshot: format!("pad-{}", index / 2),
                })
            }
            Workload::VolumeSnapshot => Event::SnapshotDeleted(SnapshotDeleted {
                volume,
                snapshot: format!("pad-{}", index / 2),
            }),
        }
    }
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("json values serialize"))
}

/// Sends one request and fails on an error reply.
async fn call(bus: &Bus, subject: &str, id: &str, body: Bytes) -> anyhow::Result<Value> {
    let headers = [(REQUEST_ID_HEADER, id), (USER_HEADER, "bench")];
    let reply = bus
        .request(subject, &headers, body, REQUEST_TIMEOUT)
        .await?;
    let value: Value = serde_json::from_slice(&reply).context("reply is not JSON")?;
    if value.get("error").is_some() {
        bail!("{subject} failed: {value}");
    }
    Ok(value)
}

struct Config {
    cairn_bin: PathBuf,
    workloads: Vec<Workload>,
    seconds: f64,
    events: u64,
    out: PathBuf,
    dir: PathBuf,
    _scratch: Option<tempfile::TempDir>,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cairn_bin =
            PathBuf::from(var("CAIRN_BIN").context("set CAIRN_BIN to a release cairn")?);
        let workloads = var("BENCH_COMMANDS")
            .unwrap_or_else(|| "app.config-set volume.snapshot".into())
            .split_whitespace()
            .map(Workload::parse)
            .collect::<anyhow::Result<Vec<_>>>()?;
        ensure!(!workloads.is_empty(), "BENCH_COMMANDS is empty");
        let seconds: f64 = var("BENCH_SECONDS").as_deref().unwrap_or("5").parse()?;
        let events: u64 = var("BENCH_EVENTS")
            .as_deref()
            .unwrap_or("1000000")
            .parse()?;
        let out = var("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| cairn_integration::workspace().join("target/bench-commands.md"));
        let (dir, scratch) = match var("BENCH_DIR") {
            Some(dir) => (PathBuf::from(dir), None),
            None => {
                let scratch = tempfile::Builder::new()
                    .prefix("bench-commands.")
                    .tempdir_in(std::env::temp_dir())?;
                (scratch.path().to_owned(), Some(scratch))
            }
        };
        Ok(Config {
            cairn_bin,
            workloads,
            seconds,
            events,
            out,
            dir,
            _scratch: scratch,
        })
    }
}

/// One measured phase.
#[derive(Debug, Clone, Copy)]
struct Stats {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    completed: u64,
}

/// Runs `concurrency` workers, each sending its next request as soon as the
/// previous one is answered, for `seconds` after a warm-up.
async fn drive(
    bus: &Bus,
    workload: Workload,
    phase: &str,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Stats> {
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let until = measure_from + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let bus = bus.clone();
            let phase = phase.to_owned();
            tokio::spawn(async move {
                let mut latencies_us: Vec<u32> = Vec::new();
                let mut index = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        return anyhow::Ok(latencies_us);
                    }
                    let (subject, body) = workload.request(&phase, worker, index);
                    // Unique per workload too: a reused id would be
                    // answered from the dedup table.
                    let id = format!("{}-{phase}-{worker}-{index}", workload.name());
                    call(&bus, subject, &id, body).await?;
                    if sent >= measure_from {
                        latencies_us.push(sent.elapsed().as_micros() as u32);
                    }
                    index += 1;
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker??);
    }
    let elapsed = Instant::now().duration_since(measure_from).as_secs_f64();
    ensure!(!all.is_empty(), "no request completed in {phase}");
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize] as f64;
    Ok(Stats {
        per_second: all.len() as f64 / elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
        completed: all.len() as u64,
    })
}

/// The echo responder: subscribes where the gateway does and replies with
/// the request body, one message after another.
fn echo(url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await?;
        let mut requests = client
            .subscribe(cairn_schema::subject::REQUEST_WILDCARD)
            .await?;
        client.flush().await?;
        println!("ready");
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                client.publish(reply, message.payload).await?;
            }
        }
        anyhow::Ok(())
    })
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&mut self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// SIGTERM, then wait (SIGKILL after 60 s).
    fn stop(mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!("cairn up did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Children die with the benchmark, even when it is killed: they inherit
/// its descriptors (a `flock` on the build lock, for one).
fn die_with_parent(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn spawn_echo(url: &str) -> anyhow::Result<Proc> {
    let mut child = die_with_parent(&mut Command::new(std::env::current_exe()?))
        .args(["echo", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    ensure!(
        line.trim() == "ready",
        "echo responder did not start: {line:?}"
    );
    Ok(Proc(child))
}

fn spawn_cairn(config: &Config, url: &str, data: &Path, log_name: &str) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(config.dir.join(log_name))?;
    let child = die_with_parent(&mut Command::new(&config.cairn_bin))
        .args(["--nats", url, "up", "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", config.cairn_bin.display()))?;
    Ok(Proc(child))
}

/// Pings until answered; returns the time since `since`.
async fn wait_ping(bus: &Bus, cairn: &mut Proc, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(120);
    loop {
        let reply = bus
            .request(
                "cairn.v1.default.system.ping",
                &[],
                Bytes::from_static(b"{}"),
                Duration::from_millis(500),
            )
            .await;
        match reply {
            Ok(_) => return Ok(since.elapsed()),
            Err(bus::Error::NoResponders { .. } | bus::Error::Timeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = cairn.0.try_wait()? {
            bail!("cairn up exited with {status}");
        }
        ensure!(Instant::now() < deadline, "cairn up did not answer a ping");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Appends padding events until the journal holds `events` records.
async fn pad(path: &Path, workload: Workload, events: u64) -> anyhow::Result<(u64, Duration)> {
    const PER_APPEND: u64 = 1000;
    let started = Instant::now();
    let journal = RedbJournal::open(path, journal::Limits::default())?;
    let before = journal.len()?;
    let mut head = before;
    while head < events {
        let mut n = (events - head).min(PER_APPEND);
        if workload == Workload::VolumeSnapshot {
            // Whole pairs, so no snapshot is left that the engine lacks.
            n = n.next_multiple_of(2);
        }
        let request = AppendRequest {
            causation: Causation {
                tenant: cairn_schema::subject::DEFAULT_TENANT.into(),
                user: "bench".into(),
                id: format!("bench-pad-{head}"),
                dedup: false,
            },
            // Indexed from the first padding event: pairs stay whole.
            events: (head - before..head - before + n)
                .map(|i| workload.pad_event(i))
                .collect(),
            reply: Vec::new(),
        };
        match journal.append(request).await? {
            Appended::Records(records) => head += records.len() as u64,
            Appended::Duplicate(_) => bail!("padding was deduplicated"),
        }
    }
    Ok((head - before, started.elapsed()))
}

/// Iterates the `events` table and touches every byte; returns (rows, bytes).
fn raw_scan(path: &Path) -> anyhow::Result<(u64, u64, Duration)> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let table = txn.open_table(EVENTS)?;
    let started = Instant::now();
    let (mut rows, mut bytes, mut sum) = (0u64, 0u64, 0u64);
    for row in table.iter()? {
        let (key, value) = row?;
        let value = value.value();
        sum = value.iter().fold(sum.wrapping_add(key.value()), |s, b| {
            s.wrapping_add(*b as u64)
        });
        rows += 1;
        bytes += value.len() as u64;
    }
    let elapsed = started.elapsed();
    std::hint::black_box(sum);
    Ok((rows, bytes, elapsed))
}

/// Iterates the `events` table and decodes every record and its event, as a
/// replay does, without folding: the decoding part of a replay.
fn decode_only(path: &Path) -> anyhow::Result<Duration> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let table = txn.open_table(EVENTS)?;
    let started = Instant::now();
    let mut record: Option<cairn_schema::EventRecord> = None;
    let mut sum = 0u64;
    for row in table.iter()? {
        let (_, value) = row?;
        match &mut record {
            Some(record) => record.decode_into(value.value())?,
            None => record = Some(cairn_schema::EventRecord::decode(value.value())?),
        }
        let record = record.as_ref().expect("decoded");
        sum = sum.wrapping_add(record.event()?.tag() as u64);
    }
    let elapsed = started.elapsed();
    std::hint::black_box(sum);
    Ok(elapsed)
}

/// Deletes every snapshot row (to time a start-up that replays everything).
fn drop_snapshots(path: &Path) -> anyhow::Result<()> {
    let db = redb::Database::open(path)?;
    let txn = db.begin_write()?;
    txn.open_table(SNAPSHOTS)?.retain(|_, _| false)?;
    txn.commit()?;
    Ok(())
}

fn best<T>(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<(Duration, T)>,
) -> anyhow::Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let (took, value) = f()?;
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, value));
        }
    }
    Ok(best.expect("runs > 0"))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// The last "journal open" line of a cairn log, if any.
fn journal_open_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains("journal open"))
        .map(|l| strip_ansi(l.trim()))
        .unwrap_or_else(|| "(no `journal open` line in the log)".into())
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("echo") {
        return echo(args.get(2).context("echo URL")?);
    }
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&config))
}

async fn run(config: &Config) -> anyhow::Result<()> {
    let nats = cairn_integration::nats();
    let bus = Bus::connect(&NatsOptions {
        url: nats.url.clone(),
        name: Some("bench-commands".into()),
        ..NatsOptions::default()
    })
    .await?;
    let data = config.dir.join("cairn");
    let journal_path = data.join("journal.redb");
    let mut out = vec![
        "# bench-commands".to_owned(),
        String::new(),
        format!(
            "Commit: {}. {} s per measured phase after {} ms of warm-up; one async-nats client \
             (current-thread runtime) for every target; nats-server {}; {} cores.",
            git_head(),
            config.seconds,
            WARM_UP.as_millis(),
            nats_version(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ),
        String::new(),
        "## Round trip over NATS: durable commands vs a bare echo responder".to_owned(),
        String::new(),
        "| command | concurrency | echo req/s | cairn cmd/s | cairn/echo | echo p50 µs | cairn p50 µs \
         | p50 cairn/echo | echo p99 µs | cairn p99 µs |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];

    // Echo first, then cairn, so they never share the subjects.
    let mut echo_stats = Vec::new();
    {
        let _echo = spawn_echo(&nats.url)?;
        for &workload in &config.workloads {
            for concurrency in CONCURRENCIES {
                let phase = format!("echo{concurrency}");
                let stats = drive(&bus, workload, &phase, concurrency, config.seconds).await?;
                eprintln!("echo  {:16} c={concurrency:<3} {stats:?}", workload.name());
                echo_stats.push(stats);
            }
        }
    }

    eprintln!("==> cairn up in {}", data.display());
    let started = Instant::now();
    let mut cairn = spawn_cairn(config, &nats.url, &data, "cairn-up-0.log")?;
    wait_ping(&bus, &mut cairn, started).await?;
    let mut targets = Vec::new();
    for (w, &workload) in config.workloads.iter().enumerate() {
        workload.setup(&bus).await?;
        for (c, concurrency) in CONCURRENCIES.into_iter().enumerate() {
            let phase = format!("c{concurrency}");
            let stats = drive(&bus, workload, &phase, concurrency, config.seconds).await?;
            eprintln!("cairn {:16} c={concurrency:<3} {stats:?}", workload.name());
            let echo = echo_stats[w * CONCURRENCIES.len() + c];
            out.push(format!(
                "| {} | {concurrency} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
                workload.name(),
                echo.per_second,
                stats.per_second,
                stats.per_second / echo.per_second,
                echo.p50_us,
                stats.p50_us,
                stats.p50_us / echo.p50_us,
                echo.p99_us,
                stats.p99_us,
            ));
            if w == 0 {
                targets.push((concurrency, stats, echo));
            }
        }
    }
    let verify = call(
        &bus,
        "cairn.v1.default.events.verify",
        "bench-verify",
        Bytes::from_static(b"{}"),
    )
    .await?;
    ensure!(verify["ok"] == true, "events verify failed: {verify}");
    out.push(String::new());
    out.push(format!(
        "Each command is journaled (group commit: one write-ahead-log append and fdatasync per \
         batch, before the reply) and published as an event. `events verify` after the run: ok, \
         {} records.",
        verify["records"]
    ));
    cairn.stop()?;

    // ---- replay -----------------------------------------------------------
    let workload = config.workloads[0];
    eprintln!(
        "==> padding the journal to {} events ({})",
        config.events,
        workload.name()
    );
    let (padded, pad_time) = pad(&journal_path, workload, config.events).await?;
    eprintln!("    {padded} events in {:.1} s", pad_time.as_secs_f64());
    let (scan_time, (rows, bytes)) = best(3, || {
        let (rows, bytes, took) = raw_scan(&journal_path)?;
        Ok((took, (rows, bytes)))
    })?;
    let (decode_time, ()) = best(3, || Ok((decode_only(&journal_path)?, ())))?;
    let journal = RedbJournal::open(&journal_path, journal::Limits::default())?;
    let recovery = journal.recovery();
    let (replay_time, replayed_seq) = best(3, || {
        let started = Instant::now();
        let full = journal.replay_full()?;
        Ok((started.elapsed(), full.world.seq))
    })?;
    ensure!(
        replayed_seq == rows,
        "replayed {replayed_seq} of {rows} records"
    );
    let (tail_time, _) = best(3, || {
        let started = Instant::now();
        let world = journal.fold_to(u64::MAX)?;
        Ok((started.elapsed(), world.seq))
    })?;
    let snapshots = journal.snapshots()?;
    drop(journal);
    let per_second = |d: Duration| rows as f64 / d.as_secs_f64();
    let replay_ratio = scan_time.as_secs_f64() / replay_time.as_secs_f64();
    out.extend([
        String::new(),
        format!("## Replay of {rows} events ({} MB in `events`)", bytes / 1_000_000),
        String::new(),
        format!(
            "Padding: {padded} `{}` events appended through the journal API in {:.1} s. Best of 3, warm page cache.",
            workload.name(),
            pad_time.as_secs_f64()
        ),
        String::new(),
        "| pass | ms | events/s | speed vs raw scan |".to_owned(),
        "|---|---:|---:|---:|".to_owned(),
        format!(
            "| raw redb scan (iterate `events`, touch every byte) | {:.0} | {:.0} | 1.00 |",
            ms(scan_time),
            per_second(scan_time)
        ),
        format!(
            "| decode only (records and events, no fold) | {:.0} | {:.0} | {:.2} |",
            ms(decode_time),
            per_second(decode_time),
            scan_time.as_secs_f64() / decode_time.as_secs_f64()
        ),
        format!(
            "| full replay (decode + fold into `World`, from seq 1) | {:.0} | {:.0} | {replay_ratio:.2} |",
            ms(replay_time),
            per_second(replay_time)
        ),
        format!(
            "| newest snapshot + tail (`Journal::fold_to(head)`) | {:.1} | - | - |",
            ms(tail_time)
        ),
        String::new(),
        format!(
            "Snapshots: {:?} (seq, bytes). Journal open in process: from the snapshot at seq {}, \
             {} records folded, {} ms.",
            snapshots.iter().map(|s| (s.seq, s.bytes)).collect::<Vec<_>>(),
            recovery.snapshot_seq,
            recovery.folded,
            recovery.elapsed_ms
        ),
    ]);

    // ---- restart ----------------------------------------------------------
    eprintln!("==> restarts");
    let mut graceful = Vec::new();
    for run in 0..3 {
        let log = format!("cairn-up-restart-{run}.log");
        let started = Instant::now();
        let mut cairn = spawn_cairn(config, &nats.url, &data, &log)?;
        graceful.push(wait_ping(&bus, &mut cairn, started).await?);
        cairn.stop()?;
    }
    let graceful_log = journal_open_line(&config.dir.join("cairn-up-restart-2.log"));
    let restart = median(graceful.clone());
    // Crash: kill -9 while serving, then start again.
    let started = Instant::now();
    let mut cairn = spawn_cairn(config, &nats.url, &data, "cairn-up-crash-0.log")?;
    wait_ping(&bus, &mut cairn, started).await?;
    cairn.signal(libc::SIGKILL);
    drop(cairn);
    let started = Instant::now();
    let mut cairn = spawn_cairn(config, &nats.url, &data, "cairn-up-crash-1.log")?;
    let after_crash = wait_ping(&bus, &mut cairn, started).await?;
    cairn.stop()?;
    // No snapshot: everything is folded at start-up.
    drop_snapshots(&journal_path)?;
    let started = Instant::now();
    let mut cairn = spawn_cairn(config, &nats.url, &data, "cairn-up-nosnap.log")?;
    let no_snapshot = wait_ping(&bus, &mut cairn, started).await?;
    cairn.stop()?;
    let no_snapshot_log = journal_open_line(&config.dir.join("cairn-up-nosnap.log"));
    out.extend([
        String::new(),
        format!("## Restart with {rows} events: process start to the first answered ping"),
        String::new(),
        "| start-up | ms |".to_owned(),
        "|---|---:|".to_owned(),
        format!(
            "| after SIGTERM, snapshots on (median of 3: {}) | {:.0} |",
            graceful
                .iter()
                .map(|d| format!("{:.0}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", "),
            ms(restart)
        ),
        format!("| after kill -9, snapshots on | {:.0} |", ms(after_crash)),
        format!(
            "| snapshots deleted (full replay) | {:.0} |",
            ms(no_snapshot)
        ),
        String::new(),
        format!("Log, snapshots on: `{graceful_log}`"),
        String::new(),
        format!("Log, snapshots deleted: `{no_snapshot_log}`"),
    ]);

    // ---- targets ----------------------------------------------------------
    let (_, c1, echo1) = targets[0];
    let (_, c64, _) = targets[1];
    let p50_ratio = c1.p50_us / echo1.p50_us;
    out.extend([
        String::new(),
        format!("## Targets (`{}`)", config.workloads[0].name()),
        String::new(),
        "| target | measured | met |".to_owned(),
        "|---|---:|---|".to_owned(),
        format!(
            "| p50 at concurrency 1 ≤ 2× the echo | {p50_ratio:.2}× ({:.0} µs vs {:.0} µs) | {} |",
            c1.p50_us,
            echo1.p50_us,
            yes(p50_ratio <= 2.0)
        ),
        format!(
            "| ≥ 20000 durable commands/s at concurrency 64 | {:.0}/s ({} commands) | {} |",
            c64.per_second,
            c64.completed,
            yes(c64.per_second >= 20_000.0)
        ),
        format!(
            "| replay ≥ 0.5× the raw scan speed | {replay_ratio:.2}× | {} |",
            yes(replay_ratio >= 0.5)
        ),
        format!(
            "| restart < 1 s with {rows} events | {:.0} ms | {} |",
            ms(restart),
            yes(restart < Duration::from_secs(1))
        ),
    ]);
    let text = out.join("\n") + "\n";
    if let Some(parent) = config.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&config.out, &text)?;
    println!("{text}");
    eprintln!("==> wrote {}", config.out.display());
    Ok(())
}

fn git_head() -> String {
    Command::new("git")
        .args(["log", "-1", "--format=%h %s"])
        .current_dir(cairn_integration::workspace())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let line = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            line.chars().take(72).collect()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn nats_version() -> String {
    cairn_actors::nats_server::find_binary()
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
