//! The control plane's robustness against a real nats-server: a NATS
//! restart in the middle of a run, NATS auth and TLS passed through,
//! `kill -9` during a burst of concurrent commands, a tampered journal, and
//! bad input that never stops the gateway.
//!
//! The promise checked throughout: a command is either answered or never
//! accepted. A command that got a success reply is in the journal (its
//! request id is the event's causation), and a retry with the same request
//! id gets the first answer.
//!
//! Clients here retry a command whose reply did not come (timeout, no
//! responders, connection down) with the same request id until it is
//! answered, bounded by a deadline so that a broken build fails instead of
//! hanging.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_actors::bus::{Bus, NatsOptions};
use cairn_actors::client::{self, Client};
use cairn_integration::{NatsProcess, Node, RawNats, cairn};
use serde_json::{Value, json};

/// How long a client keeps retrying one command before the test fails.
const RETRY_DEADLINE: Duration = Duration::from_secs(180);

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client of our own (async-nats underneath, so it reconnects by itself).
async fn connect(url: &str) -> Client {
    let bus = Bus::connect(&NatsOptions {
        url: url.to_owned(),
        name: Some("control-test".into()),
        ..Default::default()
    })
    .await
    .expect("the test client connects");
    let mut client = Client::new(bus, "default");
    // Short, so that a lost reply is retried soon; a slow answer that
    // misses it is retried too and must then get the first answer.
    client.timeout = Duration::from_secs(3);
    client
}

/// One command of a test workload.
#[derive(Debug, Clone)]
struct Step {
    request_id: String,
    verb: &'static str,
    body: Value,
    /// The event kind a success must have journaled under the request id.
    kind: &'static str,
}

impl Step {
    fn new(request_id: String, verb: &'static str, body: Value) -> Step {
        let kind = match verb {
            "create" => "VolumeCreated",
            "snapshot" => "VolumeSnapshotted",
            "delete" => "VolumeDeleted",
            other => panic!("no event kind known for {other}"),
        };
        Step {
            request_id,
            verb,
            body,
            kind,
        }
    }
}

/// What sending one step until it was answered gave.
#[derive(Debug, Clone)]
struct Outcome {
    reply: Value,
    /// Tries without a reply before the answer.
    n_unanswered: usize,
}

/// Sends `step` under its request id until a reply comes. A reply that is
/// an error fails the test: every workload here is valid, so a command must
/// never be refused because a retry raced its own first attempt.
async fn send_until_answered(client: &Client, step: &Step) -> Outcome {
    send_counting(client, step, &AtomicUsize::new(0)).await
}

/// [`send_until_answered`], adding every try without a reply to `unanswered`.
async fn send_counting(client: &Client, step: &Step, unanswered: &AtomicUsize) -> Outcome {
    let deadline = Instant::now() + RETRY_DEADLINE;
    let mut n_unanswered = 0;
    loop {
        match client
            .call_with_id("volume", step.verb, &step.body, &step.request_id)
            .await
        {
            Ok(reply) => {
                return Outcome {
                    reply,
                    n_unanswered,
                };
            }
            Err(client::Error::Api(e)) if e.code.as_str() == "unavailable" => {}
            Err(client::Error::Api(e)) => panic!(
                "{} {} ({}) was refused after {n_unanswered} unanswered tries: {e}",
                step.verb, step.body, step.request_id
            ),
            Err(client::Error::Bus(_)) => {}
            Err(e) => panic!("{}: {e}", step.request_id),
        }
        n_unanswered += 1;
        unanswered.fetch_add(1, Ordering::SeqCst);
        assert!(
            Instant::now() < deadline,
            "{} ({}) got no reply within {RETRY_DEADLINE:?}",
            step.verb,
            step.request_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The journal as `cairn events --json` prints it, grouped by causation.
fn events_by_causation(node: &Node) -> BTreeMap<String, Vec<Value>> {
    let mut by_causation: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in json_lines(&node.ok(&["events", "--json"])) {
        let causation = event["causation"].as_str().unwrap().to_owned();
        by_causation.entry(causation).or_default().push(event);
    }
    by_causation
}

/// The promise: every answered step is journaled once under its request id
/// with the right event, nothing else of the workload is journaled, and a
/// retry of every request id now gets the first answer.
fn check_answered_steps_are_journaled(
    node: &Node,
    url: &str,
    answered: &BTreeMap<String, (Step, Outcome)>,
) {
    let journal = events_by_causation(node);
    for (id, (step, _)) in answered {
        let events = journal.get(id).unwrap_or_else(|| {
            panic!(
                "{id} ({} {}) was answered but is not in the journal",
                step.verb, step.body
            )
        });
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, [step.kind], "{id}: journaled once, as {}", step.kind);
        let name = step.body["name"].as_str().unwrap();
        assert_eq!(events[0]["subject"], format!("volume/{name}"), "{id}");
    }
    let rt = runtime();
    rt.block_on(async {
        let client = connect(url).await;
        for (id, (step, first)) in answered {
            let again = send_until_answered(&client, step).await;
            assert_eq!(
                again.reply, first.reply,
                "a retry of {id} must get the first answer"
            );
        }
    });
    let after = events_by_causation(node);
    assert_eq!(
        after.values().map(Vec::len).sum::<usize>(),
        journal.values().map(Vec::len).sum::<usize>(),
        "retries of answered requests journal nothing"
    );
}

/// Volume names (with their snapshots) as `volume list` shows them.
fn volumes(node: &Node) -> BTreeMap<String, BTreeSet<String>> {
    let list: Value = serde_json::from_str(&node.ok(&["-o", "json", "volume", "list"])).unwrap();
    list["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let snaps = v["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect();
            (v["name"].as_str().unwrap().to_owned(), snaps)
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + RETRY_DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RETRY_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nats_restart_mid_run_loses_no_accepted_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsProcess::start(dir.path(), "");
    let url = nats.url();
    let node = Node::start(&dir.path().join("data"), &url);
    node.ok(&["volume", "create", "before", "--size", "1Mi"]);

    const N_SENDERS: usize = 3;
    const STEPS_AFTER_RESTART: usize = 10;
    let n_answered = Arc::new(AtomicUsize::new(0));
    let n_unanswered = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(BTreeMap::new()));
    let rt = runtime();
    let senders: Vec<_> = (0..N_SENDERS)
        .map(|sender| {
            let (url, n_answered, n_unanswered, restarted, answered) = (
                url.clone(),
                n_answered.clone(),
                n_unanswered.clone(),
                restarted.clone(),
                answered.clone(),
            );
            rt.spawn(async move {
                let client = connect(&url).await;
                let mut after_restart = 0;
                for i in 0.. {
                    let was_restarted = restarted.load(Ordering::SeqCst);
                    if after_restart == STEPS_AFTER_RESTART {
                        break;
                    }
                    let name = format!("s{sender}-v{i}");
                    let step = Step::new(
                        format!("restart-{sender}-{i}"),
                        "create",
                        json!({ "name": name, "size": "1M" }),
                    );
                    let outcome = send_counting(&client, &step, &n_unanswered).await;
                    n_answered.fetch_add(1, Ordering::SeqCst);
                    if was_restarted {
                        after_restart += 1;
                    }
                    answered
                        .lock()
                        .unwrap()
                        .insert(step.request_id.clone(), (step, outcome));
                }
            })
        })
        .collect();

    wait_until("15 commands answered before the restart", || {
        n_answered.load(Ordering::SeqCst) >= 15
    });
    // Down until N_SENDERS tries went unanswered, so commands are in flight
    // across the outage whatever the machine's speed.
    nats.kill();
    wait_until("tries go unanswered during the outage", || {
        n_unanswered.load(Ordering::SeqCst) >= N_SENDERS
    });
    nats.start_again();
    restarted.store(true, Ordering::SeqCst);
    for sender in senders {
        rt.block_on(sender).expect("a sender panicked");
    }

    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let n_interrupted = answered
        .values()
        .filter(|(_, o)| o.n_unanswered > 0)
        .count();
    assert!(
        n_interrupted > 0,
        "some command must have been in flight across the outage"
    );
    eprintln!(
        "{} commands answered, {n_interrupted} of them after tries without a reply",
        answered.len()
    );
    check_answered_steps_are_journaled(&node, &url, &answered);

    // The CLI, connecting afresh, is answered too, and the state is whole.
    node.ok(&["volume", "create", "after", "--size", "1Mi"]);
    let names: BTreeSet<String> = volumes(&node).into_keys().collect();
    let mut expected: BTreeSet<String> = answered
        .values()
        .map(|(s, _)| s.body["name"].as_str().unwrap().to_owned())
        .collect();
    expected.extend(["before".to_owned(), "after".to_owned()]);
    assert_eq!(names, expected);
    let verify = node.ok(&["events", "verify"]);
    assert!(verify.starts_with("ok: "), "{verify}");
    assert!(node.stop().success());
}

#[test]
fn duplicates_of_a_request_in_flight_get_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), "");
    let node = Node::start(&dir.path().join("data"), &nats.url());
    let mut raw = RawNats::connect(&nats.url());
    // Each request is sent 8 times at once under one id, as a client that
    // retries too early would: the copies race the first through the gateway.
    let app = json!({
        "manifest": "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\n\
            spec:\n  replicas: 1\n  serviceName: db\n  volumeClaimTemplates:\n\
            \x20   - metadata: {name: data}\n\
            \x20     spec: {resources: {requests: {storage: 1Mi}}}\n",
        "name": "dupapp",
    })
    .to_string();
    let cases = [
        (
            "volume.create",
            r#"{"name":"dup","size":"1M"}"#.to_owned(),
            "VolumeCreated",
        ),
        (
            "volume.snapshot",
            r#"{"name":"dup","snapshot":"s1"}"#.to_owned(),
            "VolumeSnapshotted",
        ),
        (
            "volume.snapshot-delete",
            r#"{"name":"dup","snapshot":"s1"}"#.to_owned(),
            "SnapshotDeleted",
        ),
        (
            "volume.delete",
            r#"{"name":"dup"}"#.to_owned(),
            "VolumeDeleted",
        ),
        ("app.create", app, "AppCreated"),
        (
            "app.scale",
            r#"{"name":"dupapp","workload":"db","replicas":2}"#.to_owned(),
            "AppScaled",
        ),
        (
            "app.delete",
            r#"{"name":"dupapp"}"#.to_owned(),
            "AppDeleted",
        ),
    ];
    // app.delete runs as a workflow: its copies find the one workflow (its
    // id comes from the request id), whose step journals the app's events
    // under the step's idempotency key, and whose own facts go under its id.
    let mut causation_of: BTreeMap<String, String> = BTreeMap::new();
    for (command, body, _) in &cases {
        let id = format!("dup-{command}");
        let replies = raw.request_many(
            &format!("cairn.v1.default.{command}"),
            &[("Cairn-Request-Id", &id)],
            body.as_bytes(),
            8,
        );
        let first: Value = serde_json::from_slice(&replies[0]).unwrap();
        assert!(first.get("error").is_none(), "{command}: {first}");
        let causation = match first["workflow"].as_str() {
            Some(wf) => format!("{wf}/run/0"),
            None => id.clone(),
        };
        causation_of.insert(id.clone(), causation);
        for reply in &replies[1..] {
            let reply: Value = serde_json::from_slice(reply).unwrap();
            assert_eq!(reply, first, "{command}: every copy gets the first answer");
        }
    }
    // Each request journaled once: one event of its kind under its id (an
    // app command also journals its volumes' events under the same id).
    let journal = events_by_causation(&node);
    for (command, _, kind) in &cases {
        let id = format!("dup-{command}");
        let causation = &causation_of[&id];
        let events = journal
            .get(causation)
            .unwrap_or_else(|| panic!("{id} not journaled (under {causation})"));
        let n_of_kind = events.iter().filter(|e| e["kind"] == *kind).count();
        assert_eq!(n_of_kind, 1, "{id}: {events:?}");
    }
    let workflows: Vec<&String> = journal
        .keys()
        .filter(|k| k.starts_with("wf-") && !k.contains('/'))
        .collect();
    assert_eq!(workflows.len(), 1, "one app.delete workflow: {journal:?}");
    assert_eq!(
        journal[workflows[0]]
            .iter()
            .filter(|e| e["kind"] == "WorkflowStarted")
            .count(),
        1
    );
    assert_eq!(journal.len(), cases.len() + 1, "{journal:?}");
    assert!(node.stop().success());
}

#[test]
fn bad_input_gets_its_error_code_and_the_next_command_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    // nats-server's default max_payload (1 MiB) equals cairn's request
    // limit; raise it so that an oversized body reaches the gateway.
    let nats = NatsProcess::start(dir.path(), "max_payload: 8MB");
    let node = Node::start(&dir.path().join("data"), &nats.url());
    let mut raw = RawNats::connect(&nats.url());
    let code = |reply: &Value| reply["error"]["code"].as_str().map(str::to_owned);
    let mut n_good = 0;
    let mut next_command_is_answered = |raw: &mut RawNats| {
        n_good += 1;
        let reply = raw.json(
            "cairn.v1.default.volume.create",
            format!(r#"{{"name":"good-{n_good}","size":"1M"}}"#).as_bytes(),
        );
        assert_eq!(reply["name"], format!("good-{n_good}"), "{reply}");
    };

    let limit = 1 << 20;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("volume.create", vec![b' '; 2 * limit], "payload_too_large"),
        ("volume.create", vec![b'{'; limit + 1], "payload_too_large"),
        (
            "volume.create",
            vec![0xff, 0xfe, 0x00, 0x80],
            "invalid_argument",
        ),
        ("volume.create", b"[1,2,3]".to_vec(), "invalid_argument"),
        ("volume.create", b"42".to_vec(), "invalid_argument"),
        ("volume.create", b"{}".to_vec(), "invalid_argument"),
        (
            "volume.create",
            br#"{"name":"v","size":"1M","extra":{"#.to_vec(),
            "invalid_argument",
        ),
        (
            "volume.create",
            format!(r#"{{"name":"{}","size":"1M"}}"#, "a".repeat(300)).into_bytes(),
            "invalid_argument",
        ),
        (
            "volume.create",
            br#"{"name":"../etc","size":"1M"}"#.to_vec(),
            "invalid_argument",
        ),
        (
            "volume.create",
            b"{\"name\":\"a\\u0000b\",\"size\":\"1M\"}".to_vec(),
            "invalid_argument",
        ),
        (
            "volume.create",
            br#"{"name":"huge","size":"99999999999999999999P"}"#.to_vec(),
            "invalid_argument",
        ),
        (
            "volume.create",
            br#"{"name":"zero","size":0}"#.to_vec(),
            "invalid_argument",
        ),
        (
            "volume.snapshot",
            br#"{"name":"good-1","snapshot":"Bad Snap"}"#.to_vec(),
            "invalid_argument",
        ),
        ("volume.frobnicate", b"{}".to_vec(), "unknown_command"),
        ("gizmo.create", b"{}".to_vec(), "unknown_command"),
        ("Bad_Kind.list", b"{}".to_vec(), "unknown_command"),
    ];
    next_command_is_answered(&mut raw);
    for (command, body, expected) in &cases {
        let reply = raw.json(&format!("cairn.v1.default.{command}"), body);
        assert_eq!(
            code(&reply).as_deref(),
            Some(*expected),
            "{command} with {:?}…: {reply}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        next_command_is_answered(&mut raw);
    }
    // A bad tenant in the subject.
    let reply = raw.json("cairn.v1.Bad_Tenant.volume.list", b"{}");
    assert_eq!(code(&reply).as_deref(), Some("invalid_argument"), "{reply}");
    // A body of exactly the limit is accepted (whitespace pads valid JSON).
    let mut body = br#"{"name":"at-limit","size":"1M"}"#.to_vec();
    body.resize(limit, b' ');
    let reply = raw.json("cairn.v1.default.volume.create", &body);
    assert_eq!(reply["name"], "at-limit", "{reply}");
    next_command_is_answered(&mut raw);

    // Garbage published without a reply subject gets no answer and breaks
    // nothing; neither does a burst of bad requests.
    for i in 0..50 {
        raw.publish(
            "cairn.v1.default.volume.create",
            format!("{{not json {i}").as_bytes(),
        );
    }
    for i in 0..50 {
        let reply = raw.json(
            "cairn.v1.default.volume.delete",
            format!("[{i}]").as_bytes(),
        );
        assert_eq!(code(&reply).as_deref(), Some("invalid_argument"), "{reply}");
    }
    next_command_is_answered(&mut raw);

    // Nothing bad was journaled: only the good creates.
    let events = json_lines(&node.ok(&["events", "--json"]));
    let mut created: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "VolumeCreated", "{e}");
            e["subject"]
                .as_str()
                .unwrap()
                .trim_start_matches("volume/")
                .to_owned()
        })
        .collect();
    created.sort();
    let mut expected: Vec<String> = (1..=n_good).map(|i| format!("good-{i}")).collect();
    expected.push("at-limit".into());
    expected.sort();
    assert_eq!(created, expected);
    assert!(node.stop().success());
}

/// One client's commands for the burst: create, snapshot and, every other
/// volume, delete; all valid in order, so each must end answered with
/// success.
fn burst_steps(client_idx: usize, n_volumes: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for j in 0..n_volumes {
        let name = format!("c{client_idx}-v{j}");
        let id = |what: &str| format!("burst-{client_idx}-{j}-{what}");
        steps.push(Step::new(
            id("create"),
            "create",
            json!({ "name": name, "size": "4M" }),
        ));
        steps.push(Step::new(
            id("snapshot"),
            "snapshot",
            json!({ "name": name, "snapshot": "s1" }),
        ));
        if j % 2 == 1 {
            steps.push(Step::new(id("delete"), "delete", json!({ "name": name })));
        }
    }
    steps
}

#[test]
fn kill_9_during_a_burst_loses_no_answered_command() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), "");
    let url = nats.url();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir, &url);

    const N_CLIENTS: usize = 5;
    const N_VOLUMES: usize = 20;
    let workloads: Vec<Vec<Step>> = (0..N_CLIENTS).map(|c| burst_steps(c, N_VOLUMES)).collect();
    let n_steps: usize = workloads.iter().map(Vec::len).sum();
    assert!(n_steps >= 200, "{n_steps}");
    let n_answered = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Mutex::new(BTreeMap::new()));
    let rt = runtime();
    let clients: Vec<_> = workloads
        .iter()
        .cloned()
        .map(|steps| {
            let (url, n_answered, answered) = (url.clone(), n_answered.clone(), answered.clone());
            rt.spawn(async move {
                let client = connect(&url).await;
                for step in steps {
                    let outcome = send_until_answered(&client, &step).await;
                    n_answered.fetch_add(1, Ordering::SeqCst);
                    answered
                        .lock()
                        .unwrap()
                        .insert(step.request_id.clone(), (step, outcome));
                }
            })
        })
        .collect();

    wait_until("80 commands answered", || {
        n_answered.load(Ordering::SeqCst) >= 80
    });
    let at_kill = n_answered.load(Ordering::SeqCst);
    node.kill9();
    assert!(at_kill < n_steps, "the kill must land mid-burst");
    // Every client's next command now goes unanswered until the restart.
    let node = Node::start(&data_dir, &url);
    for client in clients {
        rt.block_on(client).expect("a client panicked");
    }

    let answered = std::mem::take(&mut *answered.lock().unwrap());
    assert_eq!(answered.len(), n_steps, "every command ends answered");
    let n_interrupted = answered
        .values()
        .filter(|(_, o)| o.n_unanswered > 0)
        .count();
    assert!(n_interrupted > 0, "some command was cut by the kill");
    let n_orphans = node.log().matches("removing").count();
    eprintln!(
        "{n_steps} commands, {at_kill} answered before the kill, {n_interrupted} retried, \
         {n_orphans} orphans removed at restart"
    );
    check_answered_steps_are_journaled(&node, &url, &answered);

    // The block engine agrees with the journal: odd volumes deleted, every
    // other one has its snapshot, and nothing a crash left half-done.
    let expected: BTreeMap<String, BTreeSet<String>> = (0..N_CLIENTS)
        .flat_map(|c| (0..N_VOLUMES).step_by(2).map(move |j| format!("c{c}-v{j}")))
        .map(|name| (name, BTreeSet::from(["s1".to_owned()])))
        .collect();
    assert_eq!(volumes(&node), expected);
    let verify = node.ok(&["events", "verify"]);
    assert!(verify.starts_with("ok: "), "{verify}");
    // And it all survives one more restart, replayed from the journal alone.
    assert!(node.stop().success());
    let node = Node::start(&data_dir, &url);
    assert_eq!(volumes(&node), expected);
    let verify = node.ok(&["events", "verify"]);
    assert!(verify.starts_with("ok: "), "{verify}");
    assert!(node.stop().success());
}

/// Flips the low bit of the last byte of every copy of `needle` in `file`
/// (redb keeps stale copies of rewritten pages; flipping them all makes sure
/// the live one is hit). Returns how many copies there were.
fn flip_every_copy(file: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let starts: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    for start in &starts {
        bytes[start + needle.len() - 1] ^= 1;
    }
    std::fs::write(file, bytes).unwrap();
    starts.len()
}

/// `cairn up` on `data_dir` is expected to refuse to start: returns its
/// stderr (it fails the test if it starts and keeps running).
fn up_refuses(data_dir: &Path, url: &str) -> String {
    let nbd = format!("unix:{}", data_dir.join("nbd.sock").display());
    let out = cairn([
        OsStr::new("--nats"),
        OsStr::new(url),
        OsStr::new("up"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
        OsStr::new("--nbd"),
        OsStr::new(&nbd),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_tampered_journal_is_named_by_verify_and_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), "");
    let url = nats.url();
    let data_dir = dir.path().join("data");
    let journal = data_dir.join("journal.redb");
    let offline_verify = |fmt: &str| {
        cairn([
            OsStr::new("-o"),
            OsStr::new(fmt),
            OsStr::new("events"),
            OsStr::new("verify"),
            OsStr::new("--data-dir"),
            data_dir.as_os_str(),
        ])
    };
    let node = Node::start(&data_dir, &url);
    for name in ["alpha", "beta", "tamper-me-q", "gamma"] {
        node.ok(&["volume", "create", name, "--size", "1Mi"]);
    }
    node.ok(&["volume", "snapshot", "alpha", "s1"]);
    let events = json_lines(&node.ok(&["events", "--json"]));
    assert_eq!(events[2]["subject"], "volume/tamper-me-q");
    // Seq 1 is the node registering itself.
    assert_eq!(events[2]["seq"], 4);
    // While cairn runs, the offline check says to ask it instead.
    let busy = offline_verify("table");
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use by a running cairn"),
        "{busy:?}"
    );
    assert!(node.stop().success());

    let intact = offline_verify("table");
    assert!(intact.status.success(), "{intact:?}");
    assert!(
        String::from_utf8_lossy(&intact.stdout).starts_with("ok: 6 records"),
        "{intact:?}"
    );
    let pristine = std::fs::read(&journal).unwrap();

    // 1. Tampered after a clean stop: redb opens the file without checking
    //    its page checksums, so the hash chain is what catches it.
    assert!(flip_every_copy(&journal, b"volume/tamper-me-q") >= 1);
    let table = offline_verify("table");
    assert_eq!(table.status.code(), Some(1), "{table:?}");
    assert_eq!(
        String::from_utf8_lossy(&table.stdout).trim(),
        "FAILED at seq 4: hash does not match the record's contents"
    );
    let json_report = offline_verify("json");
    assert_eq!(json_report.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json_report.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], 4);
    // Start-up refuses, naming the record, before reconciling anything:
    // reconciling against the damaged record would have deleted the volume.
    let refused = up_refuses(&data_dir, &url);
    assert!(
        refused.contains("journal record 4 is corrupted") && refused.contains("not starting"),
        "{refused}"
    );
    // Nothing was deleted: with the byte put back, every volume is there.
    std::fs::write(&journal, &pristine).unwrap();
    let node = Node::start(&data_dir, &url);
    let names: Vec<String> = volumes(&node).into_keys().collect();
    assert_eq!(names, ["alpha", "beta", "gamma", "tamper-me-q"]);
    node.ok(&["volume", "create", "delta", "--size", "1Mi"]);

    // 2. Tampered after a crash: redb must repair the file on open, its
    //    repair checks page checksums, and they fail. Both the offline check
    //    and start-up say the journal is corrupted; neither panics.
    node.kill9();
    let crashed_journal = std::fs::read(&journal).unwrap();
    assert!(flip_every_copy(&journal, b"volume/tamper-me-q") >= 1);
    let crashed = offline_verify("table");
    assert_eq!(crashed.status.code(), Some(1), "{crashed:?}");
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        stderr.contains("journal.redb: corrupted") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let refused = up_refuses(&data_dir, &url);
    assert!(refused.contains("corrupted"), "{refused}");

    // And an untampered journal left by a crash verifies offline (redb's
    // repair runs on a private copy; the file itself is not written).
    std::fs::write(&journal, &crashed_journal).unwrap();
    let node = Node::start(&data_dir, &url);
    node.ok(&["volume", "create", "epsilon", "--size", "1Mi"]);
    node.kill9();
    let before = std::fs::read(&journal).unwrap();
    let after_crash = offline_verify("table");
    assert!(after_crash.status.success(), "{after_crash:?}");
    assert!(
        String::from_utf8_lossy(&after_crash.stdout).starts_with("ok: 8 records"),
        "{after_crash:?}"
    );
    assert!(
        std::fs::read(&journal).unwrap() == before,
        "verify wrote the journal"
    );
}

/// `cairn ARGS…` with string arguments.
fn cairn_args(args: &[String]) -> std::process::Output {
    cairn(args.iter().map(OsStr::new))
}

/// Runs nats-server with `config`; `cairn up` and the CLI connect with the
/// `good` options and a command works. Each `bad` option set makes the CLI
/// fail at once with exit code 1 and an error containing its text.
fn check_nats_options(config: &str, good: &[String], bad: &[(Vec<String>, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), config);
    let url = nats.url();
    let good_os: Vec<&OsStr> = good.iter().map(OsStr::new).collect();
    let node = Node::start_opts(&dir.path().join("data"), &url, &good_os, &[]);
    node.ok(&["volume", "create", "v1", "--size", "1Mi"]);
    let listed = node.ok(&["volume", "list"]);
    assert!(listed.contains("v1"), "{listed}");
    for (options, expected) in bad {
        let mut args = vec!["--nats".to_owned(), url.clone()];
        args.extend(options.iter().cloned());
        args.extend(["volume".to_owned(), "list".to_owned()]);
        let out = cairn_args(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{options:?} -> {}", stderr.trim());
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{options:?}");
        assert!(
            stderr.contains(expected) && stderr.contains("error: "),
            "{options:?} must fail with {expected:?}: {stderr}"
        );
    }
    // `cairn up` with the first bad option set does not start either.
    if let Some((options, expected)) = bad.first() {
        let mut args = vec!["--nats".to_owned(), url.clone()];
        args.extend(options.iter().cloned());
        args.extend(["up", "--data-dir"].map(str::to_owned));
        args.push(dir.path().join("other").display().to_string());
        let out = cairn_args(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "up {options:?}: {stderr}");
        assert!(stderr.contains(expected), "up {options:?}: {stderr}");
    }
    assert!(node.stop().success());
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

const REFUSED: &str = "authorization violation";

#[test]
fn nats_user_and_password_are_passed_through() {
    check_nats_options(
        r#"authorization { user: cairn, password: "s3cret-pw" }"#,
        &strings(&["--nats-user", "cairn", "--nats-password", "s3cret-pw"]),
        &[
            (
                strings(&["--nats-user", "cairn", "--nats-password", "wrong"]),
                REFUSED,
            ),
            (vec![], REFUSED),
            (
                strings(&["--nats-user", "cairn"]),
                "give --nats-user and --nats-password together",
            ),
        ],
    );
}

#[test]
fn nats_token_is_passed_through() {
    check_nats_options(
        r#"authorization { token: "tok-5e1f" }"#,
        &strings(&["--nats-token", "tok-5e1f"]),
        &[
            (strings(&["--nats-token", "tok-wrong"]), REFUSED),
            (vec![], REFUSED),
        ],
    );
}

#[test]
fn nats_nkey_is_passed_through() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    check_nats_options(
        &format!(
            "authorization {{ users: [ {{ nkey: {} }} ] }}",
            user.public_key()
        ),
        &strings(&["--nats-nkey-seed", &user.seed().unwrap()]),
        &[
            (
                strings(&["--nats-nkey-seed", &stranger.seed().unwrap()]),
                REFUSED,
            ),
            (vec![], REFUSED),
            (
                strings(&["--nats-nkey-seed", "SUNOTASEED"]),
                "check --nats-nkey-seed",
            ),
        ],
    );
}

/// A test CA and certificates it signs, written as PEM files into a dir.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_file: std::path::PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("cairn test CA {name}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            ca_file,
        }
    }

    /// Issues a certificate for `names` (an IP address becomes an IP SAN);
    /// returns the (cert, key) PEM files.
    fn issue(
        &self,
        dir: &Path,
        file_stem: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file_stem);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{file_stem}.pem")),
            dir.join(format!("{file_stem}-key.pem")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

const TLS_HINT: &str = "check --nats-tls-ca, --nats-tls-cert and --nats-tls-key";

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn nats_tls_is_passed_through() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "good");
    let other_ca = TestCa::new(certs.path(), "other");
    let (cert, key) = ca.issue(
        certs.path(),
        "server",
        &["127.0.0.1", "localhost"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    check_nats_options(
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?} }}",
            path_str(&cert),
            path_str(&key)
        ),
        &strings(&["--nats-tls-ca", &path_str(&ca.ca_file)]),
        &[
            // A server certificate from a CA we were not told to trust.
            (
                strings(&["--nats-tls-ca", &path_str(&other_ca.ca_file)]),
                "invalid peer certificate",
            ),
            (vec![], TLS_HINT),
            (
                strings(&["--nats-tls-ca", "/nonexistent/ca.pem"]),
                "/nonexistent/ca.pem",
            ),
        ],
    );
}

#[test]
fn nats_mutual_tls_is_passed_through() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "good");
    let other_ca = TestCa::new(certs.path(), "other");
    let (server_cert, server_key) = ca.issue(
        certs.path(),
        "server",
        &["127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
    let (cert, key) = ca.issue(certs.path(), "client", &["cairn"], client_auth.clone());
    let (stranger_cert, stranger_key) =
        other_ca.issue(certs.path(), "stranger", &["cairn"], client_auth);
    let ca_arg = path_str(&ca.ca_file);
    check_nats_options(
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
            path_str(&server_cert),
            path_str(&server_key),
            ca_arg
        ),
        &strings(&[
            "--nats-tls-ca",
            &ca_arg,
            "--nats-tls-cert",
            &path_str(&cert),
            "--nats-tls-key",
            &path_str(&key),
        ]),
        &[
            // No client certificate: the server ends the handshake.
            (strings(&["--nats-tls-ca", &ca_arg]), TLS_HINT),
            // A client certificate from a CA the server does not trust.
            (
                strings(&[
                    "--nats-tls-ca",
                    &ca_arg,
                    "--nats-tls-cert",
                    &path_str(&stranger_cert),
                    "--nats-tls-key",
                    &path_str(&stranger_key),
                ]),
                TLS_HINT,
            ),
            (
                strings(&[
                    "--nats-tls-ca",
                    &ca_arg,
                    "--nats-tls-cert",
                    &path_str(&cert),
                ]),
                "give --nats-tls-cert and --nats-tls-key together",
            ),
        ],
    );
}

/// A NATS JWT (v2, `ed25519-nkey`) with `claims` (issuer and subject added
/// here), signed by `issuer`: built by hand from nkeys and base64url JSON.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{:X}", iat ^ subject.len() as u64),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

/// A user's creds file: its JWT and its nkey seed, in the decorated format.
fn creds_file(path: &Path, account: &nkeys::KeyPair) -> std::path::PathBuf {
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        "cairn-user",
        json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

#[test]
fn nats_creds_are_passed_through() {
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "cairn-test-operator",
        json!({ "type": "operator", "version": 2 }),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "cairn",
        json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account", "version": 2,
        }),
    );
    let operator_file = dir.path().join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let good = creds_file(&dir.path().join("good.creds"), &account);
    // A user of an account the server does not know.
    let stranger = creds_file(
        &dir.path().join("stranger.creds"),
        &nkeys::KeyPair::new_account(),
    );
    check_nats_options(
        &format!(
            "operator: {:?}\nresolver: MEMORY\nresolver_preload: {{ {}: {:?} }}",
            path_str(&operator_file),
            account.public_key(),
            account_jwt
        ),
        &strings(&["--nats-creds", &path_str(&good)]),
        &[
            (strings(&["--nats-creds", &path_str(&stranger)]), REFUSED),
            (vec![], REFUSED),
            (
                strings(&["--nats-creds", "/nonexistent/user.creds"]),
                "--nats-creds /nonexistent/user.creds",
            ),
        ],
    );
}
