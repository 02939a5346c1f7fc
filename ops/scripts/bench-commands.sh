#!/usr/bin/env bash
# Command path benchmark (integration/examples/bench_commands.rs): durable
# commands over NATS against a bare async-nats echo responder at concurrency
# 1 and 64, a full journal replay of BENCH_EVENTS records against a raw redb
# scan of the same table, and restart time (process start to the first
# answered ping) with that journal. Prints a table and writes it to
# target/bench-commands.md. Ratios count; absolute numbers on a 2-core noisy
# machine don't.
#
# Knobs:
#   BENCH_COMMANDS  commands to drive, space-separated; the first also drives
#                   the replay and restart phases and the targets
#                   (default "app.config-set volume.snapshot")
#   BENCH_SECONDS   length of each measured phase (default 5)
#   BENCH_EVENTS    journal length for the replay and restart phases (default 1000000)
#   BENCH_DIR       scratch directory (default: a fresh one under $TMPDIR)
#   CAIRN_BIN       use this cairn binary instead of building one
# Needs nats-server (ops/scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

command -v nats-server >/dev/null || { echo "bench-commands: nats-server is missing (run ops/scripts/install-deps.sh)" >&2; exit 1; }

if [ -z "${CAIRN_BIN:-}" ]; then
  echo "==> cargo build --release --bin cairn"
  cargo build --release --locked --bin cairn
  CAIRN_BIN="$target/release/cairn"
fi
echo "==> cargo build --release --example bench_commands"
cargo build --release --locked -p cairn-integration --example bench_commands
CAIRN_BIN=$(realpath "$CAIRN_BIN") BENCH_OUT="$root/target/bench-commands.md" \
  "$target/release/examples/bench_commands"
