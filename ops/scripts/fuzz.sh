#!/usr/bin/env bash
# Fuzzes for a short, bounded time on the stable toolchain: the NBD request
# parser (blocks:nbd_request), whole NBD client conversations, option
# negotiation included (blocks:nbd_connection), and the API's request
# decoder on structured, mutated requests of every operation
# (schema:command_parse). Installs cargo-fuzz when missing.
# Exits non-zero when a target crashes; the input is left under
# <crate>/fuzz/artifacts/<target>/ (replay from <crate>/:
# cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-...).
#
# Knobs: FUZZ_SECONDS (per target; default 10 for the tiny parser, 30 for
# the others), FUZZ_RUNS (per-target cap, default 5000000), FUZZ_TARGETS
# (default "blocks:nbd_request blocks:nbd_connection schema:command_parse").
#
# Stable toolchain: libFuzzer's coverage instrumentation (-Cpasses=sancov-module,
# -Cllvm-args=...) is stable; only the sanitizers (-Zsanitizer) are not, so we
# run with `-s none` (no AddressSanitizer; the code under test is safe Rust).
set -euo pipefail
cd "$(dirname "$0")/../.."

declare -A default_seconds=([nbd_request]=10 [nbd_connection]=30)
FUZZ_RUNS=${FUZZ_RUNS:-5000000}
FUZZ_TARGETS=${FUZZ_TARGETS:-"blocks:nbd_request blocks:nbd_connection schema:command_parse"}
# The newest cargo-fuzz that builds with rustc 1.95 and our lock file.
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

root=$(pwd)
for entry in $FUZZ_TARGETS; do
  # cargo-fuzz finds <crate>/fuzz as the `fuzz` directory of <crate>/.
  crate=${entry%%:*}
  target=${entry#*:}
  [ "$crate" != "$entry" ] || crate=blocks
  cd "$root/$crate"
  seconds=${FUZZ_SECONDS:-${default_seconds[$target]:-30}}
  echo "==> fuzzing $crate:$target for ${seconds}s (at most $FUZZ_RUNS runs)"
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  # -a: debug assertions and overflow checks on. New inputs go to the first
  # corpus directory (git-ignored); the committed seeds are read only.
  cargo fuzz run -s none -a "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -runs="$FUZZ_RUNS" -max_len=16384 \
    -print_final_stats=1
done
echo "==> fuzz: no crash"
