#!/usr/bin/env bash
# A join storm against 10,000 presence watchers, and its same-volume baseline (the same
# number of topic messages), same node, same run: one corecast node (release build, one
# shard pinned to CPU 0) on a redis-server this script starts on a free port (or the
# embedded bus with EMBEDDED=1), and examples/presence_storm.rs pinned to CPU 1. Rounds
# alternate the two modes; JSON lines go to bench/results/presence-<date>/. Every
# process started here is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
WATCHERS=${WATCHERS:-10000}
JOINERS=${JOINERS:-1000}
OVER=${OVER:-1}
OUT=bench/results/presence-$(date +%F)${SUFFIX:-}
mkdir -p "$OUT"
cargo build --release --bin corecast --example presence_storm >/dev/null 2>&1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
label=embedded
REDIS_ARGS=(--redis off)
STORM_ARGS=()
if [ "${EMBEDDED:-0}" != 1 ]; then
  label=redis
  RPORT=$(free_port)
  redis-server --port "$RPORT" --save '' --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_ARGS=(--redis "redis://127.0.0.1:$RPORT/0")
  STORM_ARGS=(--redis-addr "127.0.0.1:$RPORT")
fi
# Starts a node (one shard, CPU 0) with extra arguments on a free port: sets PORT and SERVER.
start_node() {
  PORT=$(free_port)
  taskset -c 0 target/release/corecast --listen 127.0.0.1:$PORT --shards 1 "${REDIS_ARGS[@]}" \
    "$@" >/dev/null 2>>"$OUT/server.log" &
  SERVER=$!
  PIDS+=($SERVER)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1 # waiting for the node to listen (bounded: 10 s)
  done
}
for round in $(seq "$ROUNDS"); do
  for mode in presence messages; do
    start_node --node-id storm --outbound-queue-limit 8MiB
    taskset -c 1 target/release/examples/presence_storm --addr 127.0.0.1:$PORT --mode $mode \
      --watchers "$WATCHERS" --joiners "$JOINERS" --over "$OVER" |
      sed "s/^{/{\"bus\":\"$label\",\"round\":$round,/" | tee -a "$OUT/$label.jsonl"
    kill $SERVER
    wait $SERVER 2>/dev/null || true
  done
done
if [ "$label" = redis ]; then
  start_node --node-id cost
  # Only the cost node runs now: the counts are its own.
  taskset -c 1 target/release/examples/presence_storm --addr 127.0.0.1:$PORT --mode cost \
    --joiners 200 "${STORM_ARGS[@]}" | tee -a "$OUT/cost.jsonl"
  kill $SERVER
  wait $SERVER 2>/dev/null || true
fi
python3 - "$OUT/$label.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(mode, key):
    return statistics.median(r[key] for r in rows if r["mode"] == mode and key in r)
for key in ["deliveries_per_s", "p50_ms", "p99_ms"]:
    p, m = med("presence", key), med("messages", key)
    print(f"{key}: presence {p:.1f}, messages {m:.1f}, presence/messages {p / m:.2f}x")
PY
