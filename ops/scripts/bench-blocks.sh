#!/usr/bin/env bash
# Block I/O benchmark: fio (nbd engine, one connection per job) against Cairn's
# NBD server and against qemu-nbd over a raw file and over a qcow2 file on the
# same filesystem, with the same jobs, in one run. Then the same Cairn jobs
# after 100 snapshots and on the tip of a 10-deep clone chain, and snapshot
# latency on a 1 GiB and a 1 TiB volume. Prints a table and writes it to
# target/bench-blocks.md. Ratios count; absolute numbers on a 2-core noisy
# machine don't.
#
# Jobs (each time-based, BENCH_SECONDS long, over the first BENCH_SIZE bytes
# of a 4 GiB export, after one sequential 1 MiB write pass over that range):
#   randread  4 KiB iodepth 32      randwrite 4 KiB iodepth 32 (+ end_fsync)
#   seqread   1 MiB iodepth 8       seqwrite  1 MiB iodepth 8  (+ end_fsync)
# Fairness: qemu-nbd runs with --cache=writeback --aio=threads, i.e. through
# the page cache like Cairn's engine, and flushes only on NBD_CMD_FLUSH. Write
# jobs end with a flush (end_fsync=1), so every target pays for durability
# once per job. qcow2 is created with default options (64 KiB clusters,
# metadata preallocation off), so first writes allocate clusters, as Cairn's
# thin volumes do.
#
# Knobs:
#   BENCH_SECONDS   runtime of each fio job (default 10)
#   BENCH_SIZE      I/O range of every job (default 1G)
#   BENCH_SNAPSHOTS snapshots taken before the "after snapshots" row (default 100)
#   BENCH_CHAIN     depth of the clone chain (default 10)
#   CAIRN_BIN       use this cairn binary instead of building one
# It also runs blocks/examples/snapshot_latency (snapshot and clone latency
# in process, 1 GiB vs 1 TiB volumes).
# Needs: fio with the nbd engine, qemu-nbd, qemu-img, nats-server (cairn up
# spawns it), python3. ops/scripts/install-deps.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_SIZE=${BENCH_SIZE:-1G}
BENCH_SNAPSHOTS=${BENCH_SNAPSHOTS:-100}
BENCH_CHAIN=${BENCH_CHAIN:-10}
VOLUME_SIZE=4G

for tool in fio qemu-nbd qemu-img python3; do
  command -v "$tool" >/dev/null || { echo "bench-blocks: $tool is missing (run ops/scripts/install-deps.sh)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-blocks: this fio has no nbd engine" >&2; exit 1; }

if [ -z "${CAIRN_BIN:-}" ]; then
  echo "==> cargo build --release --bin cairn"
  cargo build --release --locked --bin cairn
  CAIRN_BIN="${CARGO_TARGET_DIR:-$root/target}/release/cairn"
fi
CAIRN_BIN=$(realpath "$CAIRN_BIN")

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-blocks.XXXXXX")
pids=()
stop() { # PID: TERM (KILL after 5 s), then whatever children it left (nats-server)
  local pid=$1 children child
  children=$(pgrep -P "$pid" 2>/dev/null || true)
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for child in $children; do kill "$child" 2>/dev/null || true; done
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT: until something accepts on 127.0.0.1:PORT (30 s)
  for _ in $(seq 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-blocks: nothing listens on port $1" >&2
  return 1
}

results=$work/results.tsv
: >"$results"

# fio_job TARGET ROW URI NAME RW BS IODEPTH [EXTRA...]: runs one job and
# appends "row target name value unit" to the results.
fio_job() {
  local target=$1 row=$2 uri=$3 name=$4 rw=$5 bs=$6 depth=$7
  shift 7
  local out=$work/fio-$row-$target-$name.json
  fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
    --iodepth="$depth" --size="$BENCH_SIZE" --time_based --runtime="$BENCH_SECONDS" \
    --output-format=json --output="$out" "$@" >/dev/null
  python3 - "$out" "$row" "$target" "$name" >>"$results" <<'EOF'
import json, sys
out, row, target, name = sys.argv[1:]
job = json.load(open(out))["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
if name.startswith("seq"):
    print(f"{row}\t{target}\t{name}\t{side['bw_bytes'] / 1e6:.1f}\tMB/s")
else:
    print(f"{row}\t{target}\t{name}\t{side['iops']:.0f}\tIOPS")
EOF
  tail -n 1 "$results" | awk -F'\t' '{ printf "    %-8s %-7s %-11s %10s %s\n", $1, $2, $3, $4, $5 }'
}

# run_jobs TARGET ROW URI PRECONDITION(yes|no)
run_jobs() {
  local target=$1 row=$2 uri=$3
  if [ "$4" = yes ]; then
    echo "  $target: preconditioning $BENCH_SIZE (sequential 1 MiB writes)"
    fio --name=precondition --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
      --size="$BENCH_SIZE" --end_fsync=1 --output="$work/precondition.txt" >/dev/null
  fi
  fio_job "$target" "$row" "$uri" randread randread 4k 32
  fio_job "$target" "$row" "$uri" seqread read 1M 8
  fio_job "$target" "$row" "$uri" randwrite randwrite 4k 32 --end_fsync=1
  fio_job "$target" "$row" "$uri" seqwrite write 1M 8 --end_fsync=1
}

# ---------------------------------------------------------------------------
# qemu-nbd: raw and qcow2 files in the same directory as Cairn's data.
# ---------------------------------------------------------------------------
start_qemu() { # FORMAT FILE; sets $port
  port=$(free_port)
  qemu-nbd -f "$1" --cache=writeback --aio=threads --shared=4 --persistent \
    -b 127.0.0.1 -p "$port" -x v "$2" >"$work/qemu-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { cat "$work/qemu-$1.log" >&2; exit 1; }
}

echo "==> qemu-nbd raw"
qemu-img create -q -f raw "$work/disk.raw" "$VOLUME_SIZE"
start_qemu raw "$work/disk.raw"
run_jobs raw fresh "nbd://127.0.0.1:$port/v" yes
stop "${pids[-1]}"
rm -f "$work/disk.raw"

echo "==> qemu-nbd qcow2"
qemu-img create -q -f qcow2 "$work/disk.qcow2" "$VOLUME_SIZE"
start_qemu qcow2 "$work/disk.qcow2"
run_jobs qcow2 fresh "nbd://127.0.0.1:$port/v" yes
stop "${pids[-1]}"
rm -f "$work/disk.qcow2"

# ---------------------------------------------------------------------------
# Cairn
# ---------------------------------------------------------------------------
echo "==> cairn up"
nbd_port=$(free_port)
"$CAIRN_BIN" up --data-dir "$work/cairn" --nbd "127.0.0.1:$nbd_port" --nbd-insecure-tcp >"$work/cairn.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -s "$work/cairn/cluster.json" ] && break; sleep 0.1; done
[ -s "$work/cairn/cluster.json" ] || { cat "$work/cairn.log" >&2; echo "bench-blocks: cairn up did not start" >&2; exit 1; }
CAIRN_NATS_URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats_url"] or "")' "$work/cairn/cluster.json")
[ -n "$CAIRN_NATS_URL" ] || { echo "bench-blocks: cairn up has no NATS URL (is nats-server installed?)" >&2; exit 1; }
export CAIRN_NATS_URL
wait_port "$nbd_port"
cairn() { "$CAIRN_BIN" "$@" >/dev/null; }
uri() { echo "nbd://127.0.0.1:$nbd_port/$1"; }

cairn volume create v --size "$VOLUME_SIZE"
run_jobs cairn fresh "$(uri v)" yes

now_ns() { date +%s%N; }

echo "==> $BENCH_SNAPSHOTS snapshots of v"
t0=$(now_ns)
for i in $(seq "$BENCH_SNAPSHOTS"); do cairn volume snapshot v "s$i"; done
snapshots_ms=$(( ($(now_ns) - t0) / 1000000 ))
echo "  took ${snapshots_ms} ms"
run_jobs cairn snapshots "$(uri v)" no

clone_depth=""
if "$CAIRN_BIN" volume clone --help >/dev/null 2>&1; then
  echo "==> clone chain of depth $BENCH_CHAIN"
  cairn volume snapshot v base
  parent=v@base
  for i in $(seq "$BENCH_CHAIN"); do
    cairn volume clone "$parent" "c$i"
    cairn volume snapshot "c$i" s
    parent="c$i@s"
  done
  clone_depth=$BENCH_CHAIN
  run_jobs cairn clone "$(uri "c$BENCH_CHAIN")" no
else
  echo "clone: not available"
fi

# Snapshot latency: wall time of the CLI call (process start, NATS round
# trip, the snapshot itself), minus a `system.ping` call as the baseline.
echo "==> snapshot latency"
median_ms() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.1f}")' "$@"; }
time_ms() { local t; t=$(now_ns); "$@" >/dev/null; echo "$(( ($(now_ns) - t) / 1000 ))" | awk '{ printf "%.3f", $1 / 1000 }'; }
pings=()
for _ in $(seq 5); do pings+=("$(time_ms "$CAIRN_BIN" request system.ping)"); done
ping_ms=$(median_ms "${pings[@]}")
: >"$work/latency.tsv"
for size in 1G 1T; do
  name=lat-${size,,}
  cairn volume create "$name" --size "$size"
  # 16 MiB at the start and at the end, so a copy has something to copy.
  bytes=$(python3 -c "print({'G': 1 << 30, 'T': 1 << 40}['${size: -1}'] * ${size%?})")
  for offset in 0 $((bytes - (16 << 20))); do
    fio --name=fill --ioengine=nbd --uri="$(uri "$name")" --rw=write --bs=1M --iodepth=8 \
      --offset="$offset" --size=16M --end_fsync=1 --output="$work/fill.txt" >/dev/null
  done
  samples=()
  for i in $(seq 5); do samples+=("$(time_ms "$CAIRN_BIN" volume snapshot "$name" "l$i")"); done
  snap_ms=$(median_ms "${samples[@]}")
  echo "$size $snap_ms" >>"$work/latency.tsv"
  echo "  $size: snapshot ${snap_ms} ms (ping ${ping_ms} ms)"
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
mkdir -p "$root/target"
report=$root/target/bench-blocks.md
BENCH_ENGINE=$(git -C "$root" log -1 --format='%h %s' 2>/dev/null || echo unknown)
export BENCH_SECONDS BENCH_SIZE BENCH_SNAPSHOTS VOLUME_SIZE BENCH_ENGINE clone_depth ping_ms snapshots_ms
python3 - "$results" "$work/latency.tsv" "$report" <<'EOF'
import collections, os, sys
results, latency, report = sys.argv[1:]
env = os.environ
values, units = collections.defaultdict(dict), {}
for line in open(results):
    row, target, job, value, unit = line.rstrip("\n").split("\t")
    values[(row, job)][target] = float(value)
    units[job] = unit
jobs = ["randwrite", "randread", "seqwrite", "seqread"]
names = {"randwrite": "4 KiB randwrite qd32", "randread": "4 KiB randread qd32",
         "seqwrite": "1 MiB seq write qd8", "seqread": "1 MiB seq read qd8"}

def fmt(v):
    return "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"

def lost(x, fresh):
    return "-" if x is None or not fresh else f"{(fresh - x) / fresh * 100:.0f}%"

depth = env["clone_depth"]
snapshots = int(env["BENCH_SNAPSHOTS"])
ping = float(env["ping_ms"])
out = [
    "# bench-blocks",
    "",
    f"fio {env['BENCH_SECONDS']} s per job over the first {env['BENCH_SIZE']} of a "
    f"{env['VOLUME_SIZE']} export (nbd engine, one connection per job); qemu-nbd "
    "--cache=writeback --aio=threads; write jobs end with a flush.",
    f"Engine: {env['BENCH_ENGINE']}",
    "",
    "| job | unit | cairn | qemu raw | qemu qcow2 | cairn/raw | cairn/qcow2 |",
    "|---|---|---:|---:|---:|---:|---:|",
]
for job in jobs:
    v = values.get(("fresh", job), {})
    c, r, q = v.get("cairn"), v.get("raw"), v.get("qcow2")
    out.append(f"| {names[job]} | {units.get(job, '')} | {fmt(c)} | {fmt(r)} | {fmt(q)} "
               f"| {ratio(c, r)} | {ratio(c, q)} |")
out += [
    "",
    f"| cairn job | unit | fresh | after {snapshots} snapshots | % lost "
    f"| clone tip (depth {depth or 'n/a'}) | % lost |",
    "|---|---|---:|---:|---:|---:|---:|",
]
for job in jobs:
    fresh = values.get(("fresh", job), {}).get("cairn")
    snap = values.get(("snapshots", job), {}).get("cairn")
    clone = values.get(("clone", job), {}).get("cairn")
    clone_cell = fmt(clone) if depth else "clone: not available"
    out.append(f"| {names[job]} | {units.get(job, '')} | {fmt(fresh)} | {fmt(snap)} "
               f"| {lost(snap, fresh)} | {clone_cell} | {lost(clone, fresh)} |")
out += [
    "",
    "Snapshot latency: wall time of `cairn volume snapshot` (process start, NATS round trip, "
    f"snapshot), median of 5, minus the median of 5 `cairn request system.ping` ({ping:.1f} ms). "
    "Each volume holds 16 MiB at its start and 16 MiB at its end.",
    "",
    "| volume | snapshot (ms) | minus ping (ms) |",
    "|---|---:|---:|",
]
for line in open(latency):
    size, ms = line.split()
    out.append(f"| {size} | {float(ms):.1f} | {float(ms) - ping:.1f} |")
total = int(env["snapshots_ms"])
out += [
    "",
    f"Taking the {snapshots} snapshots of the benchmarked volume ({env['BENCH_SIZE']} written) "
    f"took {total} ms ({total / max(snapshots, 1):.0f} ms each, CLI included).",
]
text = "\n".join(out) + "\n"
open(report, "w").write(text)
print(text)
EOF
echo "==> in-process snapshot and clone latency (no CLI, no NATS)"
(cd "$root" && cargo run --release --locked -q -p cairn-blocks --example snapshot_latency "$work/snaplat") \
  | tee -a "$report"
echo "==> wrote $report"
