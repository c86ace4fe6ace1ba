#!/usr/bin/env bash
# Side-by-side: corecast vs Bun (uWebSockets) on the seed protocol, same tool, same run.
#
# Each server runs pinned to CPU 0 (corecast with --shards 1; also corecast --shards 2
# unpinned as a separate row), the load tool (corecast-load) pinned to CPU 1. For every
# server: idle RSS per connection at N connections, then broadcast fan-out at each rate.
# Results: target/compare/<server>-<rate>.json and a summary with ratios against Bun.
#
# Usage: N=10000 RATES="20 100 300" DURATION=5 bench/compare.sh
# Needs: cargo, npm (Bun is installed from the npm registry into target/bun).
set -euo pipefail
N=${N:-10000}
RATES=${RATES:-"20 100 300"}
DURATION=${DURATION:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/compare"
mkdir -p "$out"
cd "$root"
cargo build --release --bins -q

bun_dir="$root/target/bun"
bun="$bun_dir/node_modules/bun/bin/bun.exe"
if [ ! -x "$bun" ]; then
  mkdir -p "$bun_dir"
  (cd "$bun_dir" && npm install --no-audit --no-fund --silent bun@1 >/dev/null)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

server_pid=""
stop_server() { if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""; fi; }
trap stop_server EXIT

start_server() { # name port
  case "$1" in
    corecast-1) taskset -c 0 "$root/target/release/corecast" --listen "127.0.0.1:$2" --shards 1 >/dev/null 2>&1 & ;;
    corecast-2) "$root/target/release/corecast" --listen "127.0.0.1:$2" --shards 2 >/dev/null 2>&1 & ;;
    bun) PORT=$2 taskset -c 0 "$bun" run "$root/bench/servers/bun-seed.ts" >/dev/null 2>&1 & ;;
  esac
  server_pid=$!
  wait_port "$2"
}

for server in bun corecast-1 corecast-2; do
  for rate in 0 $RATES; do
    port=$(free_port)
    start_server "$server" "$port"
    taskset -c 1 "$root/target/release/corecast-load" --addr "127.0.0.1:$port" --connections "$N" \
      --publishers 1 --rate "$rate" --duration "$DURATION" --settle 2 --cpu 1 \
      --server-pid "$server_pid" --json "$out/$server-$rate.json" >/dev/null 2>"$out/$server-$rate.log" || true
    stop_server
  done
done

python3 - "$out" "$N" $RATES <<'PY'
import json, sys, os
out, n, rates = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(s, r):
    p = os.path.join(out, f"{s}-{r}.json")
    return json.load(open(p)) if os.path.exists(p) else None
servers = ["bun", "corecast-1", "corecast-2"]
print(f"N = {n} connections; load tool on CPU 1; bun and corecast-1 pinned to CPU 0")
print("idle RSS per connection (bytes):")
base = load("bun", 0)
for s in servers:
    r = load(s, 0)
    if r:
        ratio = r["server_rss_per_idle_conn_bytes"] / base["server_rss_per_idle_conn_bytes"] if base else float("nan")
        print(f"  {s:12} {r['server_rss_per_idle_conn_bytes']:>8}   x{ratio:.2f} vs bun")
for rate in rates:
    print(f"broadcast at {rate} msg/s (offered {int(rate)*(int(n)+1):,} deliveries/s):")
    b = load("bun", rate)
    for s in servers:
        r = load(s, rate)
        if not r: continue
        cpu = r["server_cpu_per_delivery_us"]; bcpu = b and b["server_cpu_per_delivery_us"]
        l = r["latency_us"]; bl = b and b["latency_us"]
        print(f"  {s:12} {r['deliveries_per_sec']:>10,.0f}/s ratio {r['delivery_ratio']:.4f}  "
              f"cpu/delivery {cpu} us (x{(cpu/bcpu if bcpu else float('nan')):.2f})  "
              f"p50 {l['p50']/1000:.1f} ms p99 {l['p99']/1000:.1f} ms (x{(l['p99']/bl['p99'] if bl and bl['p99'] else float('nan')):.2f})  "
              f"tool cpu {r['load_tool_cpu_share']:.2f}")
PY
