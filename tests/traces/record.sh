#!/bin/bash
# Records tests/traces/recorded-*.csv: real workloads in their own cgroups, measured by a real
# godwit agent (release build, eBPF probes, 1 s interval) through its API, written by
# `godwit-sim record`. Needs root (BPF, cgroups), stress-ng, redis-server and redis-benchmark.
# Only loopback traffic. Every process and cgroup it starts is removed on exit.
#
#   sudo tests/traces/record.sh [SECONDS]      # default 300
#
# Workloads (all at once, each in its own cgroup, so each is a "container" to the agent):
#   cpu-phases  stress-ng --cpu 1 at 20..90% load, changing every 30 s (a compressed day)
#   cpu-burst   stress-ng --cpu 1 at 10% with 20 s bursts to 85% every minute
#   redis       redis-server with an append-only file (dirty pages), fed by redis-bench
#   redis-bench redis-benchmark SET/GET with 1..50 clients in 30 s phases, idle phases between
set -euo pipefail

SECONDS_TOTAL=${1:-300}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/tests/traces/recorded-workloads.csv"
PORT=19762
REDIS_PORT=16390
V2=/sys/fs/cgroup/unified
[ -f "$V2/cgroup.procs" ] || V2=/sys/fs/cgroup
V1MEM=/sys/fs/cgroup/memory
[ -f "$V1MEM/cgroup.procs" ] || V1MEM=
PREFIX=godwit-sim-rec
GROUPS_=(cpu-phases cpu-burst redis redis-bench)
TMP=$(mktemp -d /tmp/godwit-sim-rec.XXXXXX)
PIDS=()

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for g in "${GROUPS_[@]}"; do
        d="$V2/$PREFIX-$g"
        [ -d "$d" ] || continue
        echo 1 > "$d/cgroup.kill" 2>/dev/null
        for pid in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for g in "${GROUPS_[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            rmdir "$V2/$PREFIX-$g" 2>/dev/null && break
            sleep 0.2
        done
        [ -n "$V1MEM" ] && rmdir "$V1MEM/$PREFIX-$g" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Runs "$@" inside cgroup $1 (v2 for CPU, v1 memory for memory figures on hybrid hosts).
in_cgroup() {
    local g=$1; shift
    bash -c 'echo $$ > "$0/cgroup.procs"; [ -n "$1" ] && echo $$ > "$1/cgroup.procs"; shift; exec "$@"' \
        "$V2/$PREFIX-$g" "${V1MEM:+$V1MEM/$PREFIX-$g}" "$@"
}

for g in "${GROUPS_[@]}"; do
    mkdir "$V2/$PREFIX-$g"
    [ -n "$V1MEM" ] && mkdir "$V1MEM/$PREFIX-$g"
done

cargo build --release -q -p godwit -p godwit-tests --bin godwit --bin godwit-sim \
    --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release"

cat > "$TMP/godwit.toml" <<CFG
[node]
data_dir = "$TMP"
[api]
listen = "127.0.0.1:$PORT"
[probe]
interval_ms = 1000
CFG
"$BIN/godwit" agent --config "$TMP/godwit.toml" 2> "$TMP/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
    sleep 0.2
done

# cpu-phases: a compressed day of 30 s phases.
( loads=(20 35 55 75 90 80 60 40 25 50 85 45)
  i=0; end=$((SECONDS + SECONDS_TOTAL + 5))
  while [ $SECONDS -lt $end ]; do
      in_cgroup cpu-phases stress-ng --cpu 1 --cpu-load "${loads[$((i % ${#loads[@]}))]}" \
          --timeout 30s --quiet || true
      i=$((i + 1))
  done ) &
PIDS+=($!)

# cpu-burst: 40 s at 10%, 20 s at 85%.
( end=$((SECONDS + SECONDS_TOTAL + 5))
  while [ $SECONDS -lt $end ]; do
      in_cgroup cpu-burst stress-ng --cpu 1 --cpu-load 10 --timeout 40s --quiet || true
      in_cgroup cpu-burst stress-ng --cpu 1 --cpu-load 85 --timeout 20s --quiet || true
  done ) &
PIDS+=($!)

# redis with an fsync'd append-only file, and its client in phases.
in_cgroup redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly yes --appendfsync everysec --dir "$TMP" --daemonize no > "$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping > /dev/null 2>&1 && break
    sleep 0.1
done
( clients=(1 5 20 50 0 10 30 0 2 40)
  i=0; end=$((SECONDS + SECONDS_TOTAL + 5))
  while [ $SECONDS -lt $end ]; do
      c=${clients[$((i % ${#clients[@]}))]}
      if [ "$c" = 0 ]; then
          sleep 30
      else
          in_cgroup redis-bench timeout 30 redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" \
              -q -t set,get -n 100000000 -c "$c" -d 2048 -r 200000 > /dev/null 2>&1 || true
      fi
      i=$((i + 1))
  done ) &
PIDS+=($!)

sleep 2
"$BIN/godwit-sim" record --addr "127.0.0.1:$PORT" --seconds "$SECONDS_TOTAL" \
    --match "/$PREFIX-" --out "$OUT"
sed -i "s|,$PREFIX-|,|" "$OUT"
echo "agent log: $(grep -c . "$TMP/agent.log") lines; first: $(head -1 "$TMP/agent.log")"
