#!/usr/bin/env bash
# Saga benchmark: app snapshot latency (p50, p99) of a 3-volume app while fio
# writes to one of its volumes over NBD, on 1 GiB and on 1 TiB volumes; the
# rate of metadata-only snapshot sagas (an app with no volumes, 8 clients at
# once); and the time to clone a 1 TiB app. Latencies are the server's own
# (a workflow's started..finished in the journal, `workflow show`), so the
# CLI's process start is not counted; the rate is end to end through the
# CLI. Prints a table and writes target/bench-sagas.md. Not a test: nothing
# here asserts a time.
#
# Knobs: BENCH_SNAPSHOTS (default 50), BENCH_META (default 400), CAIRN_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
for tool in nats-server fio; do
  command -v $tool >/dev/null || { echo "bench-sagas: $tool is missing (run ops/scripts/install-deps.sh)" >&2; exit 1; }
done
if [ -z "${CAIRN_BIN:-}" ]; then
  cargo build --release --locked --bin cairn
  CAIRN_BIN="$target/release/cairn"
fi
n=${BENCH_SNAPSHOTS:-50}
meta=${BENCH_META:-400}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
# Thin provisioning: the planner counts claims against declared capacity, so
# the 1 TiB app needs a topology whose disks say they are big enough.
cat >"$dir/topology.yaml" <<YAML
apiVersion: cairn.dev/v1
kind: Topology
nodes:
  - {name: n1, rack: r1, datacenter: dc1, disks: [{name: d1, media: ssd, capacity: 8Ti}, {name: d2, media: ssd, capacity: 8Ti}]}
YAML
"$CAIRN_BIN" up --data-dir "$dir/data" --nbd "unix:$dir/nbd.sock" --topology "$dir/topology.yaml" >"$dir/up.log" 2>&1 &
for _ in $(seq 100); do grep -q "CAIRN_NATS_URL" "$dir/up.log" 2>/dev/null && break; sleep 0.1; done
export CAIRN_NATS_URL=$(grep -o "nats://[0-9.:]*" "$dir/up.log" | head -1)
cairn() { "$CAIRN_BIN" "$@"; }

app() { # name size
  cat >"$dir/$1.yaml" <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  volumeClaimTemplates:
    - {metadata: {name: data}, spec: {resources: {requests: {storage: $2}}}}
    - {metadata: {name: wal}, spec: {resources: {requests: {storage: $2}}}}
    - {metadata: {name: logs}, spec: {resources: {requests: {storage: $2}}}}
YAML
  cairn app create -f "$dir/$1.yaml" --name "$1" >/dev/null
}

percentiles() { # file of numbers -> "p50 p99 max"
  sort -n "$1" | awk '{a[NR]=$1} END {p50=a[int(NR*0.5+0.5)]; p99=a[int(NR*0.99+0.5)]; if (p99=="") p99=a[NR]; print p50, p99, a[NR]}'
}

declare -A result
for size in 1Gi 1Ti; do
  name="a$(echo $size | tr 'A-Z' 'a-z')"
  app "$name" "$size"
  fio --name=load --ioengine=nbd --uri="nbd+unix:///$name/data-db-0?socket=$dir/nbd.sock" \
    --rw=randwrite --bs=4k --iodepth=8 --size=256M --time_based --runtime=600 \
    >"$dir/fio-$name.log" 2>&1 &
  fio_pid=$!
  sleep 2
  : >"$dir/lat-$name"
  for i in $(seq "$n"); do
    wf=$(cairn -o json app snapshot "$name" "s$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workflow"])')
    cairn -o json workflow show "$wf" | python3 -c 'import json,sys; print(json.load(sys.stdin)["duration_ms"])' >>"$dir/lat-$name"
  done
  kill $fio_pid 2>/dev/null || true
  wait $fio_pid 2>/dev/null || true
  result[$size]=$(percentiles "$dir/lat-$name")
done

# The clone of the 1 TiB app (3 volumes), server side.
wf=$(cairn -o json app clone "a1ti@s1" big-clone | python3 -c 'import json,sys; print(json.load(sys.stdin)["workflow"])')
clone_ms=$(cairn -o json workflow show "$wf" | python3 -c 'import json,sys; print(json.load(sys.stdin)["duration_ms"])')
clone_alloc=$(cairn -o json volume show big-clone/data-db-0 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("allocated_bytes"))')

# Metadata-only sagas: an app with a ConfigMap and no volumes.
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n' >"$dir/meta.yaml"
cairn app create -f "$dir/meta.yaml" --name meta >/dev/null
start=$(date +%s.%N)
seq "$meta" | xargs -P 8 -I{} "$CAIRN_BIN" app snapshot meta m{} >/dev/null
end=$(date +%s.%N)
rate=$(python3 -c "print(round($meta/($end-$start), 1))")
# Server-side saga time of those (journal started..finished).
cairn -o json workflow list --app meta --limit 10000 \
  | python3 -c 'import json,sys; print("\n".join(str(w["duration_ms"]) for w in json.load(sys.stdin)["workflows"]))' >"$dir/lat-meta"
meta_lat=$(percentiles "$dir/lat-meta")

read -r g50 g99 gmax <<<"${result[1Gi]}"
read -r t50 t99 tmax <<<"${result[1Ti]}"
read -r m50 m99 mmax <<<"$meta_lat"
out="$root/target/bench-sagas.md"
mkdir -p "$root/target"
{
  echo "# bench-sagas ($(date -u +%FT%TZ), $(nproc) cores)"
  echo
  echo "| what | p50 ms | p99 ms | max ms | target |"
  echo "|---|---|---|---|---|"
  echo "| app snapshot, 3 x 1 GiB volumes, fio randwrite on one ($n) | $g50 | $g99 | $gmax | p99 < 50 |"
  echo "| app snapshot, 3 x 1 TiB volumes, fio randwrite on one ($n) | $t50 | $t99 | $tmax | p99 < 50, same as 1 GiB |"
  echo "| metadata-only snapshot saga, server side ($meta, 8 CLI clients) | $m50 | $m99 | $mmax | |"
  echo
  echo "- metadata-only snapshot sagas through the CLI, 8 at once: **$rate sagas/s** (target >= 1000; each is a CLI process start plus a NATS round trip plus 8 journaled facts)"
  echo "- clone of the 1 TiB app (3 volumes), server side: **$clone_ms ms** (target < 100); allocated bytes of a cloned volume: $clone_alloc"
} | tee "$out"
