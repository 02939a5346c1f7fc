# The menu. The README's two commands are the way in; everything else is here.

# List the recipes.
default:
    @just --list

# The guided tour on an all-in-one cluster.
demo:
    cargo run --release -- demo

# Run every role in one process on ./cairn-data.
up *ARGS:
    cargo run --release -- up {{ARGS}}

# The whole suite: installs missing tools, then fmt, clippy and every test.
test:
    ./ops/scripts/test.sh

# Install the system tools the tests use (idempotent).
deps:
    ./ops/scripts/install-deps.sh

# Unit and model tests only (no external servers).
test-unit:
    cargo test --workspace --exclude cairn-integration

# End-to-end tests against real nats-server and NBD clients.
test-integration:
    CAIRN_REQUIRE_TOOLS=1 cargo test -p cairn-integration

# Block I/O: fio against cairn, qemu-nbd raw and qcow2; writes
# target/bench-blocks.md. BENCH_SECONDS=3 for a quick look.
bench-blocks:
    ./ops/scripts/bench-blocks.sh

# Placement planner: 1,000 apps x 3 replicas x 2 volumes on 100 nodes; prints
# the time and the max/min disk use against a first-fit baseline.
bench-placement:
    cargo run --release -p cairn-placement --example bench_placement

# Command round trip (vs a bare NATS echo), journal replay (vs a raw redb
# scan) and restart time with 1M events; writes target/bench-commands.md.
# BENCH_SECONDS=2 BENCH_EVENTS=100000 for a quick look.
bench-commands:
    ./ops/scripts/bench-commands.sh

# App snapshot latency (p50/p99, 3 volumes under fio, 1 GiB and 1 TiB),
# metadata-only saga rate, 1 TiB clone time; writes target/bench-sagas.md.
bench-sagas:
    ./ops/scripts/bench-sagas.sh

# Backup repository: push (full and after a 1% change) and pull of a 2 GiB
# volume, Cairn vs restic backup/restore to the same s3s-fs server; writes
# target/bench-push.md. BENCH_SIZE_MIB=256 for a quick look.
bench-push:
    ./ops/scripts/bench-push.sh

# Fuzz the NBD request parser, whole NBD client conversations and the API's
# request decoder on structured requests (stable toolchain, installs
# cargo-fuzz if missing). FUZZ_SECONDS=600 for longer; FUZZ_TARGETS picks.
fuzz:
    ./ops/scripts/fuzz.sh

# Regenerate docs/asyncapi.yaml (the NATS API: subjects, payload schemas)
# from the Rust types; a unit test fails while it is stale.
api-docs:
    UPDATE_API_DOCS=1 cargo test -p cairn-schema --lib api::

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings
