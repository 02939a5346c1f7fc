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

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings
