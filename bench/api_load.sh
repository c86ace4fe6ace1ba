#!/usr/bin/env bash
# The server API against WebSocket publishes, same node, same run: one corecast node
# (release build, one shard, pinned to CPU 0, embedded bus or --redis URL given as $1)
# and the closed-loop client (examples/api_load.rs) pinned to CPU 1. Rounds alternate
# the two modes; the JSON lines go to bench/results/api-<date>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-8}
DURATION=${DURATION:-5}
REDIS=${1:-off}
OUT=bench/results/api-$(date +%F)
mkdir -p "$OUT"
cargo build --release --bin corecast --example api_load >/dev/null 2>&1
KEY=bench-key-$$
PORT=$((20000 + RANDOM % 20000))
CORECAST_API_KEY=$KEY taskset -c 0 target/release/corecast --listen 127.0.0.1:$PORT --shards 1 \
  --redis "$REDIS" --node-id api-bench >/dev/null 2>"$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1 # waiting for the node to listen (bounded: 10 s)
done
label=$([ "$REDIS" = off ] && echo embedded || echo redis)
for round in $(seq "$ROUNDS"); do
  for mode in api ws; do
    taskset -c 1 target/release/examples/api_load --addr 127.0.0.1:$PORT --api-key "$KEY" \
      --mode $mode --connections "$CONNS" --duration "$DURATION" |
      sed "s/^{/{\"bus\":\"$label\",\"round\":$round,/" | tee -a "$OUT/$label.jsonl"
  done
done
kill $SERVER
wait $SERVER 2>/dev/null || true
python3 - "$OUT/$label.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(mode, key):
    return statistics.median(r[key] for r in rows if r["mode"] == mode)
for key in ["publishes_per_s", "p50_us", "p99_us"]:
    api, ws = med("api", key), med("ws", key)
    print(f"{key}: api {api:.0f}, websocket {ws:.0f}, api/websocket {api / ws:.2f}x")
PY
