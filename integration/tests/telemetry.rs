//! Telemetry end to end: `cairn up` exports its spans over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and `--log-format json` turns its
//! stderr into JSON lines.
//!
//! The OTLP observer is a small HTTP/1.1 server of the test's own on a
//! loopback port it picks: it records each request, answers 200, and the test
//! decodes the bodies with `opentelemetry-proto`. The exporter under test is
//! the real one inside the real binary. Its batch delay is set to an hour,
//! so the spans can only arrive through the flush that SIGTERM triggers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_integration::{Node, cairn_bin, nats};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};

/// One HTTP request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// An OTLP/HTTP receiver on loopback; stops when dropped.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let received = received.clone();
                    std::thread::spawn(move || {
                        // A connection ends when the exporter closes it.
                        let _ = serve(stream, &received);
                    });
                }
            })
        };
        Receiver {
            addr,
            received,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive) until EOF.
fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let body = if let Some(len) = headers.get("content-length") {
            let mut body = vec![0; len.parse().expect("a numeric Content-Length")];
            reader.read_exact(&mut body)?;
            body
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            read_chunked(&mut reader)?
        } else {
            Vec::new()
        };
        received.lock().unwrap().push(Received {
            method,
            path,
            content_type: headers.remove("content-type").unwrap_or_default(),
            body,
        });
        // An empty ExportTraceServiceResponse: everything accepted.
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
        writer.flush()?;
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).expect("a hex chunk size");
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}

/// A span as the test looks at it.
#[derive(Debug)]
struct Exported {
    service: String,
    name: String,
    attributes: BTreeMap<String, Value>,
}

impl Exported {
    fn attr(&self, key: &str) -> &Value {
        self.attributes.get(key).unwrap_or(&Value::Null)
    }
}

fn value_of(value: &Option<AnyValue>) -> Value {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        other => json!(format!("{other:?}")),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, Value> {
    list.iter()
        .map(|kv| (kv.key.clone(), value_of(&kv.value)))
        .collect()
}

/// Decodes every request as an OTLP trace export and flattens the spans.
fn decode(requests: &[Received]) -> Vec<Exported> {
    let mut spans = Vec::new();
    for request in requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.content_type, "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(request.body.as_slice())
            .expect("the body is an OTLP ExportTraceServiceRequest");
        for resource_spans in export.resource_spans {
            let resource = attributes(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let service = resource["service.name"].as_str().unwrap().to_owned();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        service: service.clone(),
                        name: span.name,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
    }
    spans
}

/// `(batch, events, first_seq, last_seq)` of each `journal.commit` span, sorted.
fn commits(spans: &[Exported]) -> Vec<(Value, Value, Value, Value)> {
    let mut commits: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "journal.commit")
        .map(|s| {
            (
                s.attr("cairn.journal.batch").clone(),
                s.attr("cairn.journal.events").clone(),
                s.attr("cairn.journal.first_seq").clone(),
                s.attr("cairn.journal.last_seq").clone(),
            )
        })
        .collect();
    commits.sort_by_key(|c| c.2.as_i64());
    commits
}

fn has_command(spans: &[Exported], kind: &str, verb: &str) -> bool {
    spans.iter().any(|s| {
        s.name == "command"
            && s.attr("cairn.tenant") == "default"
            && s.attr("cairn.kind") == kind
            && s.attr("cairn.verb") == verb
    })
}

/// The exporter's environment: `endpoint`, `service` (empty means unset),
/// and nothing from the caller's own OTEL_* variables that could redirect it.
fn otel_env<'a>(endpoint: &'a str, service: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        // Empty means unset: only the endpoint above counts.
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ("OTEL_SERVICE_NAME", service),
        ("OTEL_RESOURCE_ATTRIBUTES", ""),
        // An hour: nothing is exported before the shutdown flush.
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ]
}

#[test]
fn spans_are_exported_over_otlp_and_flushed_at_shutdown() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();

    // First run: no service name given, so it is "cairn".
    let first_env = otel_env(&endpoint, "");
    let node = Node::start_env(dir.path(), &nats.url, &[], &first_env);
    node.ok(&["volume", "create", "v1", "--size", "1Gi"]);
    node.ok(&["volume", "snapshot", "v1", "s1"]);
    let refused = node.cli(&["volume", "create", "v1", "--size", "1Gi"]);
    assert!(!refused.status.success(), "v1 exists already");
    assert!(
        receiver.received().is_empty(),
        "nothing is exported before shutdown with an hour's batch delay"
    );
    let status = node.stop();
    assert!(status.success(), "cairn up exits 0 on SIGTERM: {status}");

    let first_requests = receiver.received();
    assert!(
        !first_requests.is_empty(),
        "the shutdown flush exported nothing; log:\n{}",
        std::fs::read_to_string(dir.path().join("cairn-up.log")).unwrap_or_default()
    );
    let spans = decode(&first_requests);
    assert!(spans.iter().all(|s| s.service == "cairn"), "{spans:#?}");
    assert!(has_command(&spans, "volume", "create"), "{spans:#?}");
    assert!(has_command(&spans, "volume", "snapshot"), "{spans:#?}");
    // The harness pings until the node answers.
    assert!(has_command(&spans, "system", "ping"), "{spans:#?}");
    // The node's registration at start-up, then one commit per accepted
    // command, each with one append and one event; the refused create never
    // reached the journal.
    assert_eq!(
        commits(&spans),
        [
            (json!(1), json!(1), json!(1), json!(1)),
            (json!(1), json!(1), json!(2), json!(2)),
            (json!(1), json!(1), json!(3), json!(3)),
        ],
        "{spans:#?}"
    );

    // Second run on the same data dir, with a service name: the journal
    // continues at seq 4 (the node is known already) and the spans carry
    // the name.
    let second_env = otel_env(&endpoint, "cairn-telemetry-test");
    let node = Node::start_env(dir.path(), &nats.url, &[], &second_env);
    node.ok(&["volume", "snapshot", "v1", "s2"]);
    assert!(node.stop().success());
    let second_requests = receiver.received().split_off(first_requests.len());
    let spans = decode(&second_requests);
    assert!(
        spans.iter().all(|s| s.service == "cairn-telemetry-test"),
        "{spans:#?}"
    );
    assert!(has_command(&spans, "volume", "snapshot"), "{spans:#?}");
    assert_eq!(
        commits(&spans),
        [(json!(1), json!(1), json!(4), json!(4))],
        "{spans:#?}"
    );
}

#[test]
fn log_format_json_prints_json_lines_on_stderr() {
    let nats = nats();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(cairn_bin())
        .args([
            "--log-format",
            "json",
            "--nats",
            &nats.url,
            "up",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--nbd")
        .arg(format!("unix:{}", dir.path().join("nbd.sock").display()))
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn up starts");
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let stdout = child.stdout.take().unwrap();
    let (up_tx, up_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "cairn is up" {
                let _ = up_tx.send(());
            }
        }
    });
    // A guard against a hang, not a timing assertion.
    let up = up_rx.recv_timeout(Duration::from_secs(60));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert!(
        up.is_ok(),
        "cairn up never said it was up; stderr:\n{stderr}"
    );
    assert!(status.success(), "{status}; stderr:\n{stderr}");

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    for line in &lines {
        assert!(
            line["timestamp"].is_string()
                && line["level"].is_string()
                && line["target"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"] == "shutting down: draining requests in flight"),
        "{stderr}"
    );
}
