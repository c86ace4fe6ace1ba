#!/usr/bin/env bash
# The Redis bridge under a flood of messages: its own redis-server on a free port (CPU 1,
# with the flooder), one corecast node --shards 1 on CPU 0 (shard and bridge thread share
# it). See bench/bridge_flood.py for what is measured.
# Usage: RATES="50000 100000 200000 300000 400000" bench/bridge_flood.sh
# CORECAST_BIN=/path/to/corecast runs another binary (another commit's build) instead of
# this tree's target/release/corecast; SKIP_BUILD=1 skips cargo.
set -euo pipefail
RATES=${RATES:-"50000 100000 200000 300000 400000 500000"}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --bin corecast -q
bin=${CORECAST_BIN:-"$root/target/release/corecast"}
[ -x "$bin" ] || { echo "not executable: $bin" >&2; exit 2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); hport=$(free_port)
taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
redis_pid=$!
trap 'kill $node_pid $redis_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
taskset -c 0 "$bin" --listen "127.0.0.1:$hport" --shards 1 \
  --redis "redis://127.0.0.1:$rport/0" ${NODE_ARGS:-} >/dev/null 2>&1 &
node_pid=$!
for _ in $(seq 1 200); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$hport/readyz', timeout=1)" 2>/dev/null && break
  sleep 0.05
done
taskset -c 1 python3 bench/bridge_flood.py "$rport" "$hport" "$node_pid" $RATES
