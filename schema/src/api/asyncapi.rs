//! The AsyncAPI 3.0.0 generator: [`asyncapi`] builds the document from
//! [`OPERATIONS`] and [`EVENTS`] (channels, operations, messages, and the
//! draft-07 schemas `schemars` derives under `components.schemas`), and
//! [`asyncapi_yaml`] renders it as the text `docs/asyncapi.yaml` holds.

use std::collections::BTreeMap;

use schemars::SchemaGenerator;
use schemars::generate::{Contract, SchemaSettings};
use serde_json::{Value, json};
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::{EVENTS, OPERATIONS, REQUEST_ID_HEADER, SchemaFn, USER_HEADER, schema};
use crate::record::{EventRecord, GENESIS_HASH};
use crate::reply::{ErrorReply, TransferProgress};
use crate::subject;

/// Where the generated schemas live in the document.
const SCHEMAS_PATH: &str = "/components/schemas";

/// The time the event examples carry: 2026-01-01T00:00:00Z.
const EXAMPLE_TIME_MS: u64 = 1_767_225_600_000;

const DESCRIPTION: &str = "\
Cairn's control plane over NATS. A client sends a request with a JSON body to
`cairn.v1.<tenant>.<kind>.<verb>` and gets one JSON reply on its reply subject:
the operation's reply on success, `{\"error\":{\"code\",\"message\",\"details\"?}}`
on failure (the codes are stable; see `ErrorCode`). An empty body means `{}`;
unknown fields are refused.

A tenant (a DNS-1123 label) only ever sees its own volumes and events; the
CLI uses `default`.

Commands that change state may carry a `Cairn-Request-Id` header: a retry
with the same id gets the first reply and changes nothing again. Once a
command's events are journaled they are published on
`cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>`.

Generated from the Rust types (schema/src/api.rs); do not edit by hand.
";

fn text(s: &str) -> Yaml {
    Yaml::String(s.to_owned())
}

fn map<const N: usize>(entries: [(&str, Yaml); N]) -> Yaml {
    let mut mapping = Mapping::new();
    for (key, value) in entries {
        mapping.insert(text(key), value);
    }
    Yaml::Mapping(mapping)
}

fn reference(path: &str) -> Yaml {
    map([("$ref", text(path))])
}

fn yaml(value: &Value) -> Yaml {
    serde_yaml_ng::to_value(value).expect("json values are yaml")
}

fn insert(mapping: &mut Yaml, key: &str, value: Yaml) {
    let Yaml::Mapping(m) = mapping else {
        unreachable!("only mappings are built here")
    };
    m.insert(text(key), value);
}

/// Collects schemas under one contract, for one part of the document.
struct Schemas {
    generator: SchemaGenerator,
}

impl Schemas {
    fn new(contract: Contract) -> Schemas {
        let settings = SchemaSettings::draft07().with(|s| {
            s.definitions_path = SCHEMAS_PATH.into();
            s.contract = contract;
        });
        Schemas {
            generator: settings.into_generator(),
        }
    }

    fn add(&mut self, schema: SchemaFn) -> Value {
        schema(&mut self.generator).to_value()
    }

    /// Moves the collected definitions into `into`; a name generated under
    /// both contracts must mean the same schema.
    fn drain_into(mut self, into: &mut BTreeMap<String, Value>) {
        for (name, schema) in self.generator.take_definitions(true) {
            if let Some(other) = into.get(&name) {
                assert_eq!(
                    other, &schema,
                    "schema {name} differs between requests and replies; give one of them its own type"
                );
            }
            into.insert(name, schema);
        }
    }
}

/// The schema of one event kind as published: an [`crate::EventView`] whose
/// `kind` is that kind and whose `data` is that payload.
fn event_view_schema(kind: &str, payload: &Value, view: &Value) -> Value {
    json!({
        "description": format!("A `{kind}` event as published and as listed by `events.list`."),
        "allOf": [
            view,
            {
                "type": "object",
                "properties": {
                    "kind": { "const": kind },
                    "data": {
                        "allOf": [
                            payload,
                            {
                                "type": "object",
                                "properties": { "kind": { "const": kind } },
                                "required": ["kind"]
                            }
                        ]
                    }
                }
            }
        ]
    })
}

fn headers_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            REQUEST_ID_HEADER: {
                "type": "string",
                "description": "Idempotency key of a command: a retry with the same id is answered with the first reply and not carried out again. Queries ignore it."
            },
            USER_HEADER: {
                "type": "string",
                "description": "Who is asking; recorded as the `user` of the events the command causes (`anonymous` when absent)."
            }
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#{SCHEMAS_PATH}/{name}") })
}

/// `evt.progress.<workflow>`: push and pull progress, not journaled.
fn progress_channel(
    replies: &mut Schemas,
    channels: &mut Mapping,
    operations: &mut Mapping,
    messages: &mut Mapping,
) {
    let payload = replies.add(schema::<TransferProgress>);
    let example = json!({
        "kind": "TransferProgress", "workflow": "push-shop-1", "op": "push", "app": "shop",
        "repo": "local", "volume": "shop/data-db-0@before-upgrade", "done_bytes": 1048576,
        "total_bytes": 4194304, "transferred_bytes": 524288, "elapsed_ms": 120, "finished": false
    });
    messages.insert(
        text("evt.progress"),
        map([
            ("name", text("TransferProgress")),
            ("title", text("Push or pull progress")),
            ("payload", yaml(&payload)),
            (
                "examples",
                Yaml::Sequence(vec![map([
                    ("name", text("example")),
                    ("payload", yaml(&example)),
                ])]),
            ),
        ]),
    );
    channels.insert(
        text("evt.progress"),
        map([
            ("address", text(&subject::progress("{tenant}", "{workflow}"))),
            (
                "description",
                text("Progress of a running push or pull, a few messages a second; not journaled, so no `seq`."),
            ),
            (
                "parameters",
                map([
                    ("tenant", reference("#/components/parameters/tenant")),
                    (
                        "workflow",
                        map([("description", text("The push or pull workflow's id."))]),
                    ),
                ]),
            ),
            (
                "messages",
                map([("progress", reference("#/components/messages/evt.progress"))]),
            ),
        ]),
    );
    operations.insert(
        text("evt.progress"),
        map([
            ("action", text("send")),
            ("summary", text("Push and pull progress.")),
            ("channel", reference("#/channels/evt.progress")),
            (
                "messages",
                Yaml::Sequence(vec![reference("#/channels/evt.progress/messages/progress")]),
            ),
            (
                "tags",
                Yaml::Sequence(vec![map([("name", text("events"))])]),
            ),
        ]),
    );
}

/// The AsyncAPI 3.0.0 document of the whole API.
pub fn asyncapi() -> Yaml {
    let mut requests = Schemas::new(Contract::Deserialize);
    let mut replies = Schemas::new(Contract::Serialize);
    let error_reply = replies.add(schema::<ErrorReply>);
    let event_view = replies.add(schema::<crate::EventView>);

    let mut channels = Mapping::new();
    let mut operations = Mapping::new();
    let mut messages = Mapping::new();
    let mut extra_schemas = BTreeMap::new();
    extra_schemas.insert("RequestHeaders".to_owned(), headers_schema());
    let tenant_parameter = || map([("tenant", reference("#/components/parameters/tenant"))]);

    messages.insert(
        text("error"),
        map([
            ("name", text("error")),
            ("title", text("Error reply")),
            ("summary", text("The reply to any request that failed.")),
            ("payload", yaml(&error_reply)),
        ]),
    );

    for op in OPERATIONS {
        let id = op.id();
        let request_schema = requests.add(op.request);
        let reply_schema = replies.add(op.reply);
        let example: Value = serde_json::from_str(op.example)
            .unwrap_or_else(|e| panic!("example of {id} is not JSON: {e}"));
        let request_message = format!("{id}.request");
        let reply_message = format!("{id}.reply");
        messages.insert(
            text(&request_message),
            map([
                ("name", text(&request_message)),
                ("title", text(&format!("{id} request"))),
                ("headers", yaml(&schema_ref("RequestHeaders"))),
                ("payload", yaml(&request_schema)),
                (
                    "examples",
                    Yaml::Sequence(vec![map([
                        ("name", text("example")),
                        ("payload", yaml(&example)),
                    ])]),
                ),
            ]),
        );
        messages.insert(
            text(&reply_message),
            map([
                ("name", text(&reply_message)),
                ("title", text(&format!("{id} reply"))),
                ("payload", yaml(&reply_schema)),
            ]),
        );
        let reply_channel = format!("{id}.reply");
        channels.insert(
            text(&id),
            map([
                (
                    "address",
                    text(&subject::request("{tenant}", op.kind, op.verb)),
                ),
                ("parameters", tenant_parameter()),
                (
                    "messages",
                    map([(
                        "request",
                        reference(&format!("#/components/messages/{request_message}")),
                    )]),
                ),
            ]),
        );
        channels.insert(
            text(&reply_channel),
            map([
                ("address", Yaml::Null),
                (
                    "description",
                    text("The requester's reply subject (a NATS inbox)."),
                ),
                (
                    "messages",
                    map([
                        (
                            "reply",
                            reference(&format!("#/components/messages/{reply_message}")),
                        ),
                        ("error", reference("#/components/messages/error")),
                    ]),
                ),
            ]),
        );
        operations.insert(
            text(&id),
            map([
                ("action", text("receive")),
                ("summary", text(op.summary)),
                ("channel", reference(&format!("#/channels/{id}"))),
                (
                    "messages",
                    Yaml::Sequence(vec![reference(&format!(
                        "#/channels/{id}/messages/request"
                    ))]),
                ),
                (
                    "reply",
                    map([
                        ("channel", reference(&format!("#/channels/{reply_channel}"))),
                        (
                            "messages",
                            Yaml::Sequence(vec![
                                reference(&format!("#/channels/{reply_channel}/messages/reply")),
                                reference(&format!("#/channels/{reply_channel}/messages/error")),
                            ]),
                        ),
                    ]),
                ),
                ("tags", Yaml::Sequence(vec![map([("name", text(op.kind))])])),
            ]),
        );
    }

    progress_channel(&mut replies, &mut channels, &mut operations, &mut messages);

    for doc in EVENTS {
        let event = doc.event();
        let kind = event.kind();
        let aggregate_kind = doc.aggregate_kind();
        let payload = replies.add(doc.payload);
        let view_name = format!("{kind}Event");
        extra_schemas.insert(
            view_name.clone(),
            event_view_schema(kind, &payload, &event_view),
        );
        let id = format!("evt.{aggregate_kind}.{kind}");
        let message = format!("evt.{kind}");
        let (tenant, example_tenant) = if doc.cluster_wide {
            (subject::CLUSTER_TENANT, subject::CLUSTER_TENANT)
        } else {
            ("{tenant}", subject::DEFAULT_TENANT)
        };
        let example = EventRecord::seal(
            1,
            EXAMPLE_TIME_MS,
            example_tenant,
            "4f1c2a9e0b7d3c5a6e8f9012",
            "alice",
            &event,
            GENESIS_HASH,
        )
        .view();
        let example = serde_json::to_value(example).expect("views serialize");
        messages.insert(
            text(&message),
            map([
                ("name", text(kind)),
                ("title", text(&format!("{kind} event"))),
                ("payload", yaml(&schema_ref(&view_name))),
                (
                    "examples",
                    Yaml::Sequence(vec![map([
                        ("name", text("example")),
                        ("payload", yaml(&example)),
                    ])]),
                ),
            ]),
        );
        let mut channel = map([
            (
                "address",
                text(&subject::event(tenant, &event.aggregate(), kind)),
            ),
            (
                "messages",
                map([(
                    "event",
                    reference(&format!("#/components/messages/{message}")),
                )]),
            ),
        ]);
        if doc.cluster_wide {
            insert(
                &mut channel,
                "description",
                text(&format!(
                    "Cluster-wide: journaled under the reserved tenant `{}`, which every tenant may read (`events.list` with `cluster`).",
                    subject::CLUSTER_TENANT
                )),
            );
        } else {
            insert(&mut channel, "parameters", tenant_parameter());
        }
        channels.insert(text(&id), channel);
        let mut operation = map([
            ("action", text("send")),
            ("channel", reference(&format!("#/channels/{id}"))),
            (
                "messages",
                Yaml::Sequence(vec![reference(&format!("#/channels/{id}/messages/event"))]),
            ),
            (
                "tags",
                Yaml::Sequence(vec![map([("name", text("events"))])]),
            ),
        ]);
        if let Some(summary) = payload_description(&replies, &payload) {
            insert(&mut operation, "summary", text(&summary));
        }
        operations.insert(text(&id), operation);
    }

    let mut schemas = BTreeMap::new();
    requests.drain_into(&mut schemas);
    replies.drain_into(&mut schemas);
    for (name, schema) in extra_schemas {
        assert!(
            schemas.insert(name.clone(), schema).is_none(),
            "schema name {name} is taken by a Rust type"
        );
    }
    let schemas: Mapping = schemas
        .iter()
        .map(|(name, schema)| (text(name), yaml(schema)))
        .collect();

    map([
        ("asyncapi", text("3.0.0")),
        (
            "info",
            map([
                ("title", text("Cairn control plane")),
                ("version", text(env!("CARGO_PKG_VERSION"))),
                ("description", text(DESCRIPTION)),
                (
                    "license",
                    map([
                        ("name", text("Apache-2.0")),
                        ("url", text("https://www.apache.org/licenses/LICENSE-2.0")),
                    ]),
                ),
            ]),
        ),
        ("defaultContentType", text("application/json")),
        (
            "servers",
            map([(
                "local",
                map([
                    ("host", text("127.0.0.1:4222")),
                    ("protocol", text("nats")),
                    (
                        "description",
                        text("The NATS server `cairn up` uses (`--nats URL` or `CAIRN_NATS_URL`)."),
                    ),
                ]),
            )]),
        ),
        ("channels", Yaml::Mapping(channels)),
        ("operations", Yaml::Mapping(operations)),
        (
            "components",
            map([
                ("schemas", Yaml::Mapping(schemas)),
                ("messages", Yaml::Mapping(messages)),
                (
                    "parameters",
                    map([(
                        "tenant",
                        map([
                            (
                                "description",
                                text("The tenant: a DNS-1123 label. The CLI uses `default`."),
                            ),
                            ("default", text(subject::DEFAULT_TENANT)),
                            (
                                "examples",
                                Yaml::Sequence(vec![text(subject::DEFAULT_TENANT)]),
                            ),
                        ]),
                    )]),
                ),
            ]),
        ),
    ])
}

/// The description of a `$ref`-ed schema collected so far, on one line.
fn payload_description(schemas: &Schemas, reference: &Value) -> Option<String> {
    let name = reference["$ref"].as_str()?.rsplit('/').next()?;
    let description = schemas.generator.definitions().get(name)?["description"].as_str()?;
    Some(description.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The AsyncAPI document as YAML text: what `docs/asyncapi.yaml` holds.
pub fn asyncapi_yaml() -> String {
    let header = "# Generated from schema/src/api.rs by `just api-docs`; do not edit.\n";
    format!(
        "{header}{}",
        serde_yaml_ng::to_string(&asyncapi()).expect("the document serializes")
    )
}
