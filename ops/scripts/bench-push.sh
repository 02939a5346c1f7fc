#!/usr/bin/env bash
# Push and pull benchmark: Cairn's backup repository against restic backup
# and restore, on the same data, to the same S3 server (a private s3s-fs on
# loopback), in one run. Prints a table and writes target/bench-push.md.
# Ratios count; absolute numbers on a 2-core noisy machine don't.
#
# Data: a BENCH_SIZE_MIB volume (default 2048): the first half random, a
# quarter zeros (never written: a hole for Cairn, a sparse region for
# restic's file), a quarter one random MiB repeated. Cairn reads it from
# its block pool (volume@snapshot); restic reads the same bytes from a raw
# file. Steps, each timed:
#   1. full push (Cairn) / first backup (restic)
#   2. after rewriting 1% of the volume (one extent): incremental push from
#      the block diff / second backup (restic rereads and rechunks the file)
#   3. pull of the first snapshot into a new volume / restore to a directory;
#      both are verified (outside the timing). Cairn's pull includes the
#      pool flush; restic's restore is shown without and with an fsync of
#      the restored file.
# Stored bytes are what each repository holds on the S3 server's disk.
# Needs: s3s-fs, restic, python3 (ops/scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
BENCH_SIZE_MIB=${BENCH_SIZE_MIB:-2048}

for tool in s3s-fs restic python3; do
  command -v "$tool" >/dev/null || { echo "bench-push: $tool is missing (run ops/scripts/install-deps.sh)" >&2; exit 1; }
done

echo "==> cargo build --release --example bench_push"
cargo build --release --locked -p cairn-repo --example bench_push
bench="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_push"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-push.XXXXXX")
s3pid=""
cleanup() {
  if [ -n "$s3pid" ]; then
    kill "$s3pid" 2>/dev/null || true
    wait "$s3pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/s3s.log" 2>&1 &
s3pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
cairn_url="s3://bench/cairn?endpoint=http://127.0.0.1:$port"
export RESTIC_REPOSITORY="s3:http://127.0.0.1:$port/bench/restic" RESTIC_PASSWORD=bench

now() { date +%s.%N; }
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print($1)"; }

echo "==> data: $BENCH_SIZE_MIB MiB (½ random, ¼ zeros, ¼ repeated)"
"$bench" make "$work" "$BENCH_SIZE_MIB" >/dev/null
sum_s1=$(sha256sum "$work/vol.img" | cut -d' ' -f1)
restic init -q >/dev/null

echo "==> full push / first backup"
cairn_push=$("$bench" push "$work" "$cairn_url" s1 | json 'd["seconds"]')
t=$(now); restic backup -q --json "$work/vol.img" >"$work/restic1.json"; restic_push=$(python3 -c "print($(now)-$t)")
restic_s1=$(json 'd["snapshot_id"]' <"$work/restic1.json")
cairn_bytes1=$(du -sb "$work/s3/bench/cairn" | cut -f1)
restic_bytes1=$(du -sb "$work/s3/bench/restic" | cut -f1)

echo "==> 1% changed: incremental push / second backup"
"$bench" modify "$work" >/dev/null
cairn_push2=$("$bench" push "$work" "$cairn_url" s2 | json 'd["seconds"]')
t=$(now); restic backup -q --json "$work/vol.img" >"$work/restic2.json"; restic_push2=$(python3 -c "print($(now)-$t)")
cairn_bytes2=$(du -sb "$work/s3/bench/cairn" | cut -f1)
restic_bytes2=$(du -sb "$work/s3/bench/restic" | cut -f1)

echo "==> pull / restore of the first snapshot"
cairn_pull=$("$bench" pull "$work" "$cairn_url" s1 | json 'd["seconds"]')
rm -f "$work/vol.img" # room for the restore
t=$(now); restic restore -q "$restic_s1" --target "$work/restore"; restic_pull=$(python3 -c "print($(now)-$t)")
restored=$(find "$work/restore" -name vol.img)
# Cairn's pull ends durable (the pool is flushed); restic's restore ends in
# the page cache. The second row adds the fsync that makes it durable too.
t=$(now); sync "$restored"; restic_fsync=$(python3 -c "print($(now)-$t)")
[ "$(sha256sum "$restored" | cut -d' ' -f1)" = "$sum_s1" ] || { echo "bench-push: restic restored other bytes" >&2; exit 1; }

out="$root/target/bench-push.md"
mkdir -p "$root/target"
python3 - "$out" <<PY
import sys
size = $BENCH_SIZE_MIB << 20
rows = [
    ("full push / backup (s)", $cairn_push, $restic_push),
    ("1% incremental push / backup (s)", $cairn_push2, $restic_push2),
    ("pull / restore (s)", $cairn_pull, $restic_pull),
    ("pull / restore + fsync (s)", $cairn_pull, $restic_pull + $restic_fsync),
    ("stored after first (MiB)", $cairn_bytes1 / 2**20, $restic_bytes1 / 2**20),
    ("stored after second (MiB)", $cairn_bytes2 / 2**20, $restic_bytes2 / 2**20),
    ("added by the 1% push (MiB)", ($cairn_bytes2 - $cairn_bytes1) / 2**20, ($restic_bytes2 - $restic_bytes1) / 2**20),
]
lines = [
    f"# bench-push: Cairn repo vs restic, {size >> 20} MiB volume (½ random, ¼ zeros, ¼ repeated), same s3s-fs server",
    "",
    "| measure | cairn | restic | cairn / restic |",
    "|---|---:|---:|---:|",
]
for name, c, r in rows:
    ratio = c / r if r else float("nan")
    lines.append(f"| {name} | {c:.2f} | {r:.2f} | {ratio:.2f} |")
lines += ["", "Both pulls verified byte for byte. Lower is better everywhere; ratios count, absolute times on a 2-core noisy machine don't."]
text = "\n".join(lines) + "\n"
open(sys.argv[1], "w").write(text)
print(text)
PY
echo "==> wrote $out"
