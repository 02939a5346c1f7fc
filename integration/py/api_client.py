"""A NATS client nobody on the Cairn team wrote (nats-py from PyPI) drives
Cairn's API from the checked-in AsyncAPI document alone.

It reads docs/asyncapi.yaml, sends every request/reply operation's example
in document order (the order of the table in schema/src/api.rs), and checks
every reply against the operation's reply schema with the `jsonschema`
package. Then it sends bad requests (malformed JSON, an unknown verb, an
invalid name, ...) and checks the error replies against the error schema and
their codes; it retries a command with a Cairn-Request-Id and expects the
first reply back; and it checks every event Cairn published against the
event channel whose address it arrived on.

Prints `ok <operation>` per operation, names every mismatch, and exits 1 if
there was any.

Usage: api_client.py --nats nats://127.0.0.1:4222 --doc docs/asyncapi.yaml
"""

import argparse
import asyncio
import json
import sys
import uuid

import nats
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOC_URI = "urn:cairn:asyncapi"
REQUEST_TIMEOUT_S = 30.0
EVENTS_WAIT_S = 10.0


class Api:
    """The AsyncAPI document, with reference resolution and validators."""

    def __init__(self, doc):
        self.doc = doc
        resource = Resource(contents=doc, specification=DRAFT7)
        self.registry = Registry().with_resource(DOC_URI, resource)

    def resolve(self, node):
        """Follows `$ref`s (local to the document) to the node they name.
        Returns (pointer, node); pointer is the last reference followed."""
        pointer = None
        while isinstance(node, dict) and "$ref" in node:
            pointer = node["$ref"]
            if not pointer.startswith("#/"):
                raise ValueError(f"reference {pointer} is not local")
            node = self.doc
            for token in pointer[2:].split("/"):
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return pointer, node

    def validator(self, message_pointer):
        """A validator for the payload of the message at `message_pointer`."""
        schema = {"$ref": f"{DOC_URI}{message_pointer}/payload"}
        return Draft7Validator(schema, registry=self.registry)

    def message_pointer(self, reference):
        pointer, _ = self.resolve(reference)
        return pointer

    def operations(self, action):
        """(id, operation) pairs with the given action, in document order."""
        return [
            (op_id, op)
            for op_id, op in self.doc["operations"].items()
            if op["action"] == action
        ]


class Checker:
    """Collects mismatches, each naming what did not match."""

    def __init__(self):
        self.failures = []

    def fail(self, where, what):
        self.failures.append(f"{where}: {what}")
        print(f"MISMATCH {where}: {what}", flush=True)

    def validate(self, where, validator, instance, what):
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        for error in errors:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            self.fail(where, f"{what} does not match its schema at {path}: {error.message}")
        return not errors


async def request(nc, subject, payload, headers=None):
    msg = await nc.request(subject, payload, timeout=REQUEST_TIMEOUT_S, headers=headers)
    return json.loads(msg.data)


async def run(args):
    with open(args.doc, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    api = Api(doc)
    check = Checker()
    if doc.get("asyncapi") != "3.0.0":
        check.fail("document", f"asyncapi is {doc.get('asyncapi')!r}, not 3.0.0")
    error_validator = api.validator("#/components/messages/error")

    nc = await nats.connect(args.nats, name="cairn-nats-py-client-test")
    events = []

    async def on_event(msg):
        events.append(msg)

    await nc.subscribe(f"cairn.v1.{args.tenant}.evt.>", cb=on_event)
    await nc.flush()

    def address(channel):
        return channel["address"].replace("{tenant}", args.tenant)

    # Every documented request, in document order.
    operations = api.operations("receive")
    if not operations:
        check.fail("document", "has no request/reply operations")
    headers = {"Cairn-User": "nats-py"}
    reply_pointer = {}
    for op_id, op in operations:
        _, channel = api.resolve(op["channel"])
        request_pointer = api.message_pointer(op["messages"][0])
        _, request_message = api.resolve(op["messages"][0])
        examples = request_message.get("examples") or []
        if not examples:
            check.fail(op_id, "the request message has no example")
            continue
        example = examples[0]["payload"]
        if not check.validate(op_id, api.validator(request_pointer), example, "the example request"):
            continue
        reply_pointers = [api.message_pointer(m) for m in op["reply"]["messages"]]
        success = [p for p in reply_pointers if p != "#/components/messages/error"]
        if len(success) != 1 or "#/components/messages/error" not in reply_pointers:
            check.fail(op_id, f"reply messages are {reply_pointers}, expected one reply and error")
            continue
        reply_pointer[op_id] = success[0]
        try:
            reply = await request(nc, address(channel), json.dumps(example).encode(), headers)
        except Exception as e:  # noqa: BLE001 - any failure is a mismatch to report
            check.fail(op_id, f"request failed: {type(e).__name__}: {e}")
            continue
        step_only = op.get("summary", "").startswith("Workflow step only:")
        if step_only:
            # Only a workflow step may send it: a direct request must be refused.
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else None
            if code != "permission_denied":
                check.fail(op_id, f"a step-only command sent directly got {json.dumps(reply)}")
            elif check.validate(op_id, error_validator, reply, "the error reply"):
                print(f"ok {op_id}", flush=True)
            continue
        if isinstance(reply, dict) and "error" in reply:
            check.validate(op_id, error_validator, reply, "the error reply")
            check.fail(op_id, f"the example was refused: {json.dumps(reply)}")
            continue
        if check.validate(op_id, api.validator(success[0]), reply, f"the reply {json.dumps(reply)}"):
            print(f"ok {op_id}", flush=True)

    commands = {op_id: api.resolve(op["channel"])[1] for op_id, op in operations}

    def subject_of(op_id):
        if op_id in commands:
            return address(commands[op_id])
        kind, verb = op_id.split(".", 1)
        return f"cairn.v1.{args.tenant}.{kind}.{verb}"

    # Bad requests: each gets an error reply with the expected code.
    bad_requests = [
        ("malformed JSON", "volume.create", b'{"name": "x", "size": ', "invalid_argument"),
        ("not an object", "volume.show", b"[1, 2]", "invalid_argument"),
        ("unknown verb", "volume.explode", b"{}", "unknown_command"),
        ("unknown kind", "teapot.list", b"{}", "unknown_command"),
        ("invalid name", "volume.show", b'{"name": "Not_A_Label"}', "invalid_argument"),
        ("missing field", "volume.snapshot", b'{"name": "db"}', "invalid_argument"),
        ("unknown field", "volume.list", b'{"everything": true}', "invalid_argument"),
        ("zero size", "volume.create", b'{"name": "z", "size": 0}', "invalid_argument"),
        ("no such volume", "volume.show", b'{"name": "no-such-volume"}', "not_found"),
    ]
    for what, op_id, body, code in bad_requests:
        where = f"bad request ({what}) on {op_id}"
        try:
            reply = await request(nc, subject_of(op_id), body)
        except Exception as e:  # noqa: BLE001
            check.fail(where, f"request failed: {type(e).__name__}: {e}")
            continue
        if check.validate(where, error_validator, reply, f"the reply {json.dumps(reply)}"):
            got = reply["error"]["code"]
            if got != code:
                check.fail(where, f"error code is {got}, expected {code}")
            else:
                print(f"ok {where} -> {code}", flush=True)
    # An invalid name says which field it was.
    reply = await request(nc, subject_of("volume.show"), b'{"name": "Not_A_Label"}')
    details = reply.get("error", {}).get("details")
    if details != {"field": "volume", "value": "Not_A_Label"}:
        check.fail("bad request (invalid name)", f"details are {details!r}")

    # A retried command with the same request id gets the first reply.
    request_id = uuid.uuid4().hex
    body = json.dumps({"name": "retried", "size": "1M"}).encode()
    retry_headers = {"Cairn-Request-Id": request_id, "Cairn-User": "nats-py"}
    first = await request(nc, subject_of("volume.create"), body, retry_headers)
    second = await request(nc, subject_of("volume.create"), body, retry_headers)
    if "error" in first:
        check.fail("retry with Cairn-Request-Id", f"the first attempt failed: {first}")
    elif first != second:
        check.fail("retry with Cairn-Request-Id", f"replies differ: {first} then {second}")
    else:
        print("ok retry with Cairn-Request-Id gets the first reply", flush=True)

    # Every event: published on a documented channel, matching its schema,
    # and the same records events.list returns.
    listed = await request(nc, subject_of("events.list"), b'{"limit": 10000}')
    records = listed.get("events", [])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTS_WAIT_S
    while len(events) < len(records) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    event_channels = {}
    for op_id, op in api.operations("send"):
        _, channel = api.resolve(op["channel"])
        event_channels[address(channel)] = api.message_pointer(op["messages"][0])
    published_seqs = []
    progress_prefix = f"cairn.v1.{args.tenant}.evt.progress."
    progress_seen = 0
    for msg in events:
        if msg.subject.startswith(progress_prefix):
            # Push/pull progress: not journaled (no seq), its own channel.
            progress_seen += 1
            pointer = event_channels.get(progress_prefix + "{workflow}")
            if pointer is None:
                check.fail("events", f"published on {msg.subject}, which no channel documents")
            else:
                check.validate(f"progress on {msg.subject}", api.validator(pointer), json.loads(msg.data), "the progress")
            continue
        pointer = event_channels.get(msg.subject)
        if pointer is None:
            check.fail("events", f"published on {msg.subject}, which no channel documents")
            continue
        event = json.loads(msg.data)
        published_seqs.append(event.get("seq"))
        check.validate(f"event on {msg.subject}", api.validator(pointer), event, "the event")
    listed_seqs = [r.get("seq") for r in records]
    if sorted(published_seqs) != listed_seqs:
        check.fail("events", f"published seqs {sorted(published_seqs)} but events.list has {listed_seqs}")
    # Listed records, the tenant's and the cluster's (nodes), match the
    # schema of their kind's event message.
    kind_pointer = {}
    for op_id, op in api.operations("send"):
        pointer, message = api.resolve(op["messages"][0])
        kind_pointer[message["name"]] = pointer
    cluster = await request(nc, subject_of("events.list"), b'{"cluster": true, "limit": 10000}')
    if "events.list" in reply_pointer:
        check.validate(
            "events.list (cluster)", api.validator(reply_pointer["events.list"]), cluster, "the reply"
        )
    cluster_records = cluster.get("events", [])
    if not any(r.get("kind") == "NodeRegistered" for r in cluster_records):
        check.fail("events.list (cluster)", "no NodeRegistered record")
    kind_pointer.pop("TransferProgress", None)
    for record in records + cluster_records:
        kind = record.get("kind")
        where = f"listed event {record.get('seq')} ({kind})"
        if kind not in kind_pointer:
            check.fail(where, "no event channel documents this kind")
        else:
            check.validate(where, api.validator(kind_pointer[kind]), record, "the record")
    if progress_seen == 0:
        check.fail("events", "app.push and app.pull published no progress")
    created = [r for r in records if r.get("data", {}).get("volume") == "retried"]
    if len(created) != 1:
        check.fail("retry with Cairn-Request-Id", f"journaled {len(created)} events, expected 1")
    if not records:
        check.fail("events", "events.list returned none")
    else:
        print(
            f"ok {len(published_seqs)} events match their channels, "
            f"{len(records) + len(cluster_records)} listed records their kinds",
            flush=True,
        )

    await nc.close()
    if check.failures:
        print(f"{len(check.failures)} mismatches:", file=sys.stderr)
        for failure in check.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(f"all {len(operations)} operations match the document", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True, help="NATS URL")
    parser.add_argument("--doc", required=True, help="path of docs/asyncapi.yaml")
    parser.add_argument("--tenant", default="default", help="tenant to use")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
