//! Issue 13's findings on the NATS side, each as a regression test against
//! a real nats-server with per-tenant users: the embedded server's
//! generated credentials (12), operator commands kept from tenants (6),
//! credentials in the URL (11), request ids scoped by tenant (3), replies
//! only to inboxes (7), and one tenant unable to stall the others (5).
//!
//! The hooks, repository, NBD and secrets findings have their own files
//! (`security_hooks.rs`, `security_repo.rs`, `security_nbd.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_actors::bus::{Bus, NatsOptions};
use cairn_actors::client::{self, Client};
use cairn_integration::{NatsProcess, Node, cairn, cairn_bin};
use serde_json::{Value, json};

/// `cairn up` with no `--nats`: it spawns its own nats-server.
struct Embedded {
    data_dir: PathBuf,
    url: String,
    child: Child,
}

impl Embedded {
    fn start(data_dir: &Path, extra: &[&str]) -> Embedded {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::File::create(data_dir.join("cairn-up.log")).unwrap();
        let child = Command::new(cairn_bin())
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("CAIRN_NATS_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            if let Ok(bytes) = std::fs::read(data_dir.join("cluster.json"))
                && let Ok(info) = serde_json::from_slice::<Value>(&bytes)
                && let Some(url) = info["nats_url"].as_str()
            {
                break url.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "cairn up did not start: {}",
                std::fs::read_to_string(data_dir.join("cairn-up.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Embedded {
            data_dir: data_dir.to_owned(),
            url,
            child,
        }
    }

    /// The CLI as the operator on this host: it finds the generated users
    /// through `CAIRN_DATA_DIR`.
    fn operator(&self, args: &[&str]) -> Output {
        Command::new(cairn_bin())
            .env("CAIRN_DATA_DIR", &self.data_dir)
            .env_remove("CAIRN_NATS_URL")
            .args(args)
            .output()
            .unwrap()
    }

    /// `cairn tenant add NAME`, returning the tenant's URL with credentials.
    fn add_tenant(&self, name: &str) -> String {
        let out = self.operator(&["tenant", "add", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace()
            .find(|w| w.starts_with("nats://"))
            .unwrap_or_else(|| panic!("no URL in {text}"))
            .to_owned()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Finding 12: the spawned nats-server had no authentication, so any local
/// user was every tenant. Finding 6: any tenant could `node fail` a node.
/// Finding 11: credentials in the URL were ignored.
#[test]
fn the_embedded_nats_server_authenticates_and_confines_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let up = Embedded::start(&dir.path().join("data"), &[]);

    // No credentials: refused by NATS itself.
    let anonymous = cairn(["--nats", &up.url, "volume", "list"]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains("authorization"),
        "{}",
        text(&anonymous)
    );

    // Users are generated, private to the operator.
    use std::os::unix::fs::PermissionsExt as _;
    let users = up.data_dir.join("nats/users.json");
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let acme = up.add_tenant("acme");
    let evil = up.add_tenant("evil");
    assert!(acme.contains("acme:"), "credentials in the URL: {acme}");
    // Finding 11: the URL's credentials are used.
    let created = cairn([
        "--tenant", "acme", "--nats", &acme, "volume", "create", "a1", "--size", "64Mi",
    ]);
    assert!(created.status.success(), "{}", text(&created));

    // evil sees none of acme's volumes, and cannot act as acme: its NATS
    // user may not publish on acme's subjects.
    let listed = cairn([
        "--tenant", "evil", "--nats", &evil, "-o", "json", "volume", "list",
    ]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(!text(&listed).contains("a1"), "{}", text(&listed));
    let as_acme = cairn([
        "--tenant",
        "acme",
        "--nats",
        &evil,
        "--timeout",
        "3",
        "volume",
        "delete",
        "a1",
    ]);
    assert!(
        !as_acme.status.success(),
        "evil acted as acme: {}",
        text(&as_acme)
    );

    // Finding 6: node commands are the operator's.
    let fail = cairn([
        "--tenant",
        "evil",
        "--nats",
        &evil,
        "request",
        "node.fail",
        r#"{"name":"vm"}"#,
    ]);
    assert!(text(&fail).contains("permission_denied"), "{}", text(&fail));
    let fail_admin = cairn([
        "--tenant",
        "evil",
        "--nats",
        &evil,
        "--timeout",
        "3",
        "node",
        "fail",
        "vm",
    ]);
    assert!(!fail_admin.status.success(), "{}", text(&fail_admin));
    let nodes = up.operator(&["-o", "json", "node", "list"]);
    assert!(nodes.status.success(), "{}", text(&nodes));
    let nodes: Value = serde_json::from_slice(&nodes.stdout).unwrap();
    let states: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !states.is_empty() && states.iter().all(|s| *s != "failed"),
        "{nodes}"
    );

    // The operator acts for any tenant; acme's volume is still there.
    let volumes = up.operator(&["--tenant", "acme", "-o", "json", "volume", "list"]);
    assert!(text(&volumes).contains("a1"), "{}", text(&volumes));
}

/// A nats-server configured as the README shows: the `cairn` process, an
/// operator, and tenants confined to their own subjects.
fn tenant_nats(dir: &Path, tenants: &[&str]) -> (NatsProcess, BTreeMap<String, String>) {
    let mut users = vec![
        r#"{ user: cairn, password: cairn-pw }"#.to_owned(),
        r#"{ user: admin, password: admin-pw }"#.to_owned(),
    ];
    let mut passwords = BTreeMap::new();
    for t in tenants {
        users.push(format!(
            r#"{{ user: {t}, password: {t}-pw, permissions: {{ publish: ["cairn.v1.{t}.*.*"], subscribe: ["_INBOX.{t}.>", "cairn.v1.{t}.evt.>"] }} }}"#
        ));
        passwords.insert(t.to_string(), format!("{t}-pw"));
    }
    let config = format!(
        "authorization {{\n users = [\n {}\n ]\n}}",
        users.join("\n ")
    );
    (NatsProcess::start(dir, &config), passwords)
}

fn start_node(dir: &Path, nats: &NatsProcess, up_args: &[&str]) -> Node {
    let up_args: Vec<&std::ffi::OsStr> = up_args.iter().map(std::ffi::OsStr::new).collect();
    Node::start_opts(
        &dir.join("data"),
        &nats.url(),
        &[
            "--nats-user".as_ref(),
            "cairn".as_ref(),
            "--nats-password".as_ref(),
            "cairn-pw".as_ref(),
        ],
        &up_args,
    )
}

/// A client of the API acting for `tenant` with its own NATS user.
async fn tenant_client(nats: &NatsProcess, tenant: &str) -> Client {
    let bus = Bus::connect(&NatsOptions {
        url: format!("nats://{tenant}:{tenant}-pw@127.0.0.1:{}", nats.port),
        inbox_prefix: Some(format!("_INBOX.{tenant}")),
        ..Default::default()
    })
    .await
    .expect("the tenant connects with the credentials in its URL");
    let mut client = Client::new(bus, tenant);
    client.timeout = Duration::from_secs(20);
    client
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Finding 3: request-id dedup was global, so evil reusing acme's
/// `Cairn-Request-Id` got acme's reply.
#[test]
fn request_ids_are_scoped_by_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, _) = tenant_nats(dir.path(), &["acme", "evil"]);
    let _node = start_node(dir.path(), &nats, &[]);
    runtime().block_on(async {
        let acme = tenant_client(&nats, "acme").await;
        let evil = tenant_client(&nats, "evil").await;
        let first = acme
            .call_with_id(
                "volume",
                "create",
                &json!({"name": "secret-db", "size": "64M"}),
                "rid-1",
            )
            .await
            .unwrap();
        assert_eq!(first["name"], "secret-db", "{first}");
        // The same id from evil is evil's own request: it runs, and its
        // answer names evil's volume, never acme's.
        let reused = evil
            .call_with_id(
                "volume",
                "create",
                &json!({"name": "mine", "size": "64M"}),
                "rid-1",
            )
            .await
            .unwrap();
        assert_eq!(reused["name"], "mine", "evil got acme's reply: {reused}");
        // A retry within a tenant still returns the first answer.
        let retried = acme
            .call_with_id(
                "volume",
                "create",
                &json!({"name": "other", "size": "64M"}),
                "rid-1",
            )
            .await
            .unwrap();
        assert_eq!(retried["name"], "secret-db", "{retried}");
        let listed = evil.call("volume", "list", &json!({})).await.unwrap();
        assert!(!listed.to_string().contains("secret-db"), "{listed}");
    });
}

/// Finding 7: replies went to any subject the caller named, so evil could
/// inject messages into acme's event stream. A request whose reply is not
/// an inbox is not run at all.
#[test]
fn replies_go_only_to_inboxes() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, _) = tenant_nats(dir.path(), &["acme", "evil"]);
    let _node = start_node(dir.path(), &nats, &[]);
    runtime().block_on(async {
        let acme = tenant_client(&nats, "acme").await;
        let evil = tenant_client(&nats, "evil").await;
        let mut acme_events = acme
            .bus
            .subscribe("cairn.v1.acme.evt.>", None)
            .await
            .unwrap();
        acme.bus.flush().await.unwrap();
        let Bus::Nats { client: raw, .. } = &evil.bus else {
            panic!("a NATS bus")
        };
        // evil's user may publish on its own request subjects; the reply
        // subject is acme's event stream.
        raw.publish_with_reply(
            "cairn.v1.evil.volume.create",
            "cairn.v1.acme.evt.volume.VolumeDeleted",
            Bytes::from_static(br#"{"name":"planted","size":"64M"}"#),
        )
        .await
        .unwrap();
        raw.flush().await.unwrap();
        // The gateway keeps serving, and did not run evil's request.
        let listed = evil.call("volume", "list", &json!({})).await.unwrap();
        assert!(!listed.to_string().contains("planted"), "{listed}");
        // acme created a volume after: its stream shows that event and
        // nothing evil aimed at it.
        acme.call("volume", "create", &json!({"name": "a1", "size": "64M"}))
            .await
            .unwrap();
        let first = tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(&mut acme_events),
        )
        .await
        .expect("acme's own event arrives")
        .unwrap();
        let event: Value = serde_json::from_slice(&first.payload).unwrap();
        assert_eq!(event["kind"], "VolumeCreated", "{event}");
    });
}

/// Finding 5: one tenant stalled everyone: a global pool of in-flight
/// requests, global saga slots, a parse quadratic in nesting on the
/// gateway's thread, and a retry backoff of ten years.
#[test]
fn one_tenant_cannot_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, _) = tenant_nats(dir.path(), &["acme", "evil"]);
    let mut up_args = vec![
        "--tenant-requests",
        "3",
        "--tenant-sagas",
        "2",
        "--hooks",
        "acme",
        "--hooks",
        "evil",
    ];
    // Tenants' hooks never run as root where NATS authenticates them.
    if running_as_root() {
        up_args.extend(["--hooks-user", "nobody"]);
    }
    let _node = start_node(dir.path(), &nats, &up_args);
    // A workflow whose only step fails (a hook that exits 1, which is
    // retried), retried slowly: it holds a saga slot, and (run
    // synchronously) a request slot, for minutes.
    let stuck = r#"
apiVersion: cairn.dev/v1
kind: Workflow
metadata: {name: stuck}
spec:
  steps:
    - name: failing-hook
      run: app.hook
      with: {name: h, hook: fail}
      retry: {attempts: 100, backoff: 1h}
"#;
    let app = r#"
apiVersion: cairn.dev/v1
kind: App
metadata: {name: h}
spec:
  hooks:
    fail: [{exec: [/bin/false]}]
"#;
    runtime().block_on(async {
        let acme = tenant_client(&nats, "acme").await;
        let evil = tenant_client(&nats, "evil").await;
        for tenant in [&acme, &evil] {
            tenant
                .call("app", "create", &json!({"manifest": app}))
                .await
                .unwrap();
        }

        // A ten-year backoff is refused before anything runs.
        let parked = evil
            .call(
                "workflow",
                "run",
                &json!({"definition": stuck.replace("backoff: 1h", "backoff: 87600h"), "async": true}),
            )
            .await;
        match parked {
            Err(client::Error::Api(e)) => {
                assert_eq!(e.code.as_str(), "invalid_argument", "{e}");
                assert!(e.message.contains("at most 1h"), "{e}");
            }
            other => panic!("a ten-year backoff was accepted: {other:?}"),
        }

        // Deep nesting after a key: refused at once, not parsed.
        let deep = format!("a: {}", "[".repeat(200_000));
        match evil.call("app", "create", &json!({"manifest": deep, "name": "x"})).await {
            Err(client::Error::Api(e)) => {
                assert_eq!(e.code.as_str(), "invalid_argument", "{e}");
                assert!(e.message.contains("deep"), "{e}");
            }
            other => panic!("deep YAML was not refused: {other:?}"),
        }

        // evil's share of workflows: two run, the third is refused.
        for id in ["stuck-1", "stuck-2"] {
            evil.call(
                "workflow",
                "run",
                &json!({"definition": stuck, "async": true, "workflow": id}),
            )
            .await
            .unwrap();
        }
        match evil.call("workflow", "run", &json!({"definition": stuck, "async": true})).await {
            Err(client::Error::Api(e)) => {
                assert_eq!(e.code.as_str(), "resource_exhausted", "{e}");
                assert!(e.message.contains("evil"), "{e}");
            }
            other => panic!("a third workflow of evil ran: {other:?}"),
        }
        // acme's share is its own.
        let started = acme
            .call("workflow", "run", &json!({"definition": stuck, "async": true}))
            .await
            .unwrap();
        assert!(started["workflow"].is_string(), "{started}");

        // evil's share of requests in flight: three requests waiting for
        // its running workflows to end fill it; the fourth is refused at
        // once, while acme is served.
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let evil = evil.clone();
                tokio::spawn(async move {
                    evil.call(
                        "workflow",
                        "run",
                        &json!({"definition": stuck, "workflow": "stuck-1"}),
                    )
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut refused = None;
        for _ in 0..40 {
            match evil.call("volume", "list", &json!({})).await {
                Err(client::Error::Api(e)) if e.code.as_str() == "resource_exhausted" => {
                    refused = Some(e);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let refused = refused.expect("evil past its share of requests is refused");
        assert!(refused.message.contains("requests in flight"), "{refused}");
        let served = acme.call("volume", "list", &json!({})).await;
        assert!(served.is_ok(), "acme was stalled by evil: {served:?}");
        for w in waits {
            w.abort();
        }
    });
}

/// The `User` header is recorded as claimed, not as proven.
#[test]
fn a_client_set_user_is_journaled_as_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, _) = tenant_nats(dir.path(), &["acme"]);
    let _node = start_node(dir.path(), &nats, &[]);
    runtime().block_on(async {
        let mut acme = tenant_client(&nats, "acme").await;
        acme.user = "the-operator".into();
        acme.call("volume", "create", &json!({"name": "v1", "size": "64M"}))
            .await
            .unwrap();
        let events = acme.call("events", "list", &json!({})).await.unwrap();
        let users: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["user"].as_str())
            .collect();
        assert_eq!(users, ["claimed:the-operator"], "{events}");
    });
}

/// Finding 6 by another way in: a workflow step reached the gateway past
/// the subject check, so a tenant's workflow could fail a node, list the
/// nodes and read cluster-wide events. And finding 3 within a tenant: a
/// client request id shaped like a step's key (`W/run/0`) could answer
/// that step before it ran.
#[test]
fn tenant_workflows_cannot_run_operator_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (nats, _) = tenant_nats(dir.path(), &["evil"]);
    let node = start_node(dir.path(), &nats, &[]);
    let nodes = node.json(&["node", "list"]);
    let name = nodes["nodes"][0]["name"].as_str().unwrap().to_owned();
    runtime().block_on(async {
        let evil = tenant_client(&nats, "evil").await;
        let fail = format!("{{name: {name}}}");
        let steps = [
            ("node.fail", fail.as_str()),
            ("node.list", "{}"),
            ("events.list", "{cluster: true}"),
        ];
        for (n, (run, with)) in steps.iter().enumerate() {
            let definition = format!(
                "apiVersion: cairn.dev/v1\nkind: Workflow\nmetadata: {{name: sneak}}\nspec:\n  steps:\n    - name: operator\n      run: {run}\n      with: {with}\n"
            );
            let id = format!("sneak-{n}");
            let started = evil
                .call(
                    "workflow",
                    "run",
                    &json!({"definition": definition, "async": true, "workflow": id}),
                )
                .await
                .unwrap();
            assert_eq!(started["workflow"], id.as_str(), "{started}");
            let shown = ended_workflow(&evil, &id).await;
            assert_eq!(shown["failed_step"], "operator", "{run}: {shown}");
            let failure = shown["failure"].as_str().unwrap_or_default();
            assert!(
                failure.starts_with("permission_denied"),
                "{run} ran in a tenant's workflow: {shown}"
            );
        }

        // A request id with a '/' is refused before anything runs.
        let planted = evil
            .call_with_id(
                "volume",
                "create",
                &json!({"name": "planted", "size": "64Mi"}),
                "w1/run/0",
            )
            .await
            .unwrap_err();
        assert!(planted.to_string().contains("invalid_argument"), "{planted}");
        let listed = evil.call("volume", "list", &json!({})).await.unwrap();
        assert!(!listed.to_string().contains("planted"), "{listed}");
    });
    // The node was never failed: the operator still sees it ready.
    let nodes = node.json(&["node", "list"]);
    assert_eq!(nodes["nodes"][0]["state"], "ready", "{nodes}");
}

/// Polls `workflow.show` until the workflow is no longer running.
async fn ended_workflow(client: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = client
            .call("workflow", "show", &json!({ "id": id }))
            .await
            .unwrap();
        if shown["status"] != "running" {
            return shown;
        }
        assert!(Instant::now() < deadline, "{id} still running: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
