#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust:
# installs what is missing (idempotently), then runs fmt, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/../.."

"$(dirname "$0")/install-deps.sh"

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
# CAIRN_REQUIRE_TOOLS makes a test fail, not skip, when a tool it needs is missing.
CAIRN_REQUIRE_TOOLS=1 cargo test --workspace --locked
echo "==> fuzz (short, bounded)"
./ops/scripts/fuzz.sh
