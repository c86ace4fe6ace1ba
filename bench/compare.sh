#!/usr/bin/env bash
# Side-by-side on the seed protocol, same tool, same run: corecast vs Bun (uWebSockets),
# Node.js + ws, and the FastAPI design corecast replaces.
#
# Each server runs pinned to CPU 0 (corecast with --shards 1; corecast --shards 2 on both
# CPUs is an extra row; corecast-1-sendmsg is corecast --shards 1 with io_uring batching
# off, the same binary's baseline), the load tool (corecast-load) pinned to CPU 1. For
# every server and every N: idle RSS per connection, then broadcast fan-out at each rate
# (open loop), ROUNDS times with the servers interleaved (this machine is shared and
# noisy: the summary shows the median of the rounds). Process CPU (utime+stime) and core
# time (everything that ran on the server's CPUs, softirq included) are both reported.
# Results: target/compare/<server>-<N>-<rate>-r<round>.json and a summary with ratios
# against Bun.
#
# Usage: NS="1000 10000" RATES="20 100 300" DURATION=5 ROUNDS=1 \
#        SERVERS="bun corecast-1 corecast-2 node fastapi" bench/compare.sh
# Before/after a change, in one campaign: build the old commit's binary elsewhere and
#   BEFORE_BIN=/path/to/old/corecast SERVERS="corecast-before corecast-1" BASE=corecast-before \
#   NS=10000 RATES="2 50" NS_IDLE= ROUNDS=5 DURATION=10 bench/compare.sh
# (corecast-before is that binary with --shards 1, corecast-before-2 with --shards 2 on both
# CPUs; ratios are against BASE, default bun).
# Needs: cargo, npm, python3 (Bun and ws from the npm registry into target/, FastAPI and
# uvicorn from PyPI into target/fastapi-venv).
set -euo pipefail
NS=${NS:-${N:-10000}}
RATES=${RATES:-"20 100 300"}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-1}
SERVERS=${SERVERS:-"bun corecast-1 corecast-2 node fastapi"}
# Idle memory only, at these N: 19800 is just under this machine's per-process
# open-files limit (20000) for the server; the load tool spreads it over 2 processes.
NS_IDLE=${NS_IDLE-"19800"}
BASE=${BASE:-bun}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-"$root/target/compare"}
mkdir -p "$out"
cd "$root"
cargo build --release --workspace --bins -q

bun_dir="$root/target/bun"
bun="$bun_dir/node_modules/bun/bin/bun.exe"
if [[ " $SERVERS " == *" bun "* ]] && [ ! -x "$bun" ]; then
  mkdir -p "$bun_dir"
  (cd "$bun_dir" && npm install --no-audit --no-fund --silent bun@1 >/dev/null)
fi
node_dir="$root/target/node-ws"
if [[ " $SERVERS " == *" node "* ]] && [ ! -d "$node_dir/node_modules/ws" ]; then
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --no-audit --no-fund --silent ws@8 >/dev/null)
fi
fastapi_venv="$root/target/fastapi-venv"
if [[ " $SERVERS " == *" fastapi "* ]] && [ ! -x "$fastapi_venv/bin/uvicorn" ]; then
  python3 -m venv "$fastapi_venv"
  "$fastapi_venv/bin/pip" install -q fastapi 'uvicorn[standard]'
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
    corecast-before) taskset -c 0 "${BEFORE_BIN:?set BEFORE_BIN to the baseline binary}" --listen "127.0.0.1:$2" \
        --shards 1 >/dev/null 2>&1 & ;;
    corecast-before-2) "${BEFORE_BIN:?set BEFORE_BIN to the baseline binary}" --listen "127.0.0.1:$2" \
        --shards 2 >/dev/null 2>&1 & ;;
    corecast-1-sendmsg) taskset -c 0 "$root/target/release/corecast" --listen "127.0.0.1:$2" --shards 1 \
        --send-batch 0 >/dev/null 2>&1 & ;;
    corecast-2) "$root/target/release/corecast" --listen "127.0.0.1:$2" --shards 2 >/dev/null 2>&1 & ;;
    bun) PORT=$2 taskset -c 0 "$bun" run "$root/bench/servers/bun-seed.ts" >/dev/null 2>&1 & ;;
    node) PORT=$2 NODE_PATH="$node_dir/node_modules" taskset -c 0 node "$root/bench/servers/node-ws-seed.js" >/dev/null 2>&1 & ;;
    fastapi) (cd "$root/bench/servers" && exec taskset -c 0 "$fastapi_venv/bin/uvicorn" fastapi_seed:app \
        --host 127.0.0.1 --port "$2" --log-level warning --ws-ping-interval 0) >/dev/null 2>&1 & ;;
  esac
  server_pid=$!
  wait_port "$2"
}

cpus_of() { case "$1" in corecast-2|corecast-before-2) echo 0,1 ;; *) echo 0 ;; esac; }

for round in $(seq 1 "$ROUNDS"); do
  for n in $NS; do
    for rate in 0 $RATES; do
      for server in $SERVERS; do
        port=$(free_port)
        start_server "$server" "$port"
        taskset -c 1 "$root/target/release/corecast-load" --addr "127.0.0.1:$port" --connections "$n" \
          --publishers 1 --rate "$rate" --duration "$DURATION" --settle 2 --cpu 1 --max-drain 10 \
          --server-pid "$server_pid" --server-cpus "$(cpus_of "$server")" \
          --json "$out/$server-$n-$rate-r$round.json" >/dev/null 2>"$out/$server-$n-$rate-r$round.log" || true
        stop_server
      done
    done
  done
  for n in $NS_IDLE; do
    for server in $SERVERS; do
      port=$(free_port)
      start_server "$server" "$port"
      taskset -c 1 "$root/target/release/corecast-load" --addr "127.0.0.1:$port" --connections "$n" \
        --publishers 1 --rate 0 --settle 3 --sources 4 --server-pid "$server_pid" \
        --json "$out/$server-$n-0-r$round.json" >/dev/null 2>"$out/$server-$n-0-r$round.log" || true
      stop_server
    done
  done
done

python3 - "$out" "$NS $NS_IDLE" "$SERVERS" "$ROUNDS" "$BASE" $RATES <<'PY'
import json, sys, os, statistics
out, ns, servers, rounds, base_name, rates = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
def runs(s, n, r):
    found = []
    for k in range(1, rounds + 1):
        p = os.path.join(out, f"{s}-{n}-{r}-r{k}.json")
        if os.path.exists(p):
            found.append(json.load(open(p)))
    return found
def med(rs, get):
    vals = [v for v in (get(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None
def ratio(a, b):
    return f"x{a / b:.2f}" if a is not None and b else "  -  "
print(f"load tool pinned to CPU 1; every server but corecast-2 pinned to CPU 0; median of {rounds} round(s); ratios vs {base_name}")
for n in ns:
    print(f"\n== N = {n} connections")
    print("idle RSS per connection (bytes):")
    rss = lambda r: r["server_rss_per_idle_conn_bytes"]
    base = med(runs(base_name, n, 0), rss)
    for s in servers:
        v = med(runs(s, n, 0), rss)
        if v is not None:
            print(f"  {s:19} {v:>8.0f}  {ratio(v, base)} vs {base_name}")
    for rate in rates:
        if not any(runs(s, n, rate) for s in servers):
            continue
        print(f"broadcast at {rate} msg/s (offered {int(rate) * (int(n) + 1):,} deliveries/s):")
        b = runs(base_name, n, rate)
        fields = {
            "dps": lambda r: r["deliveries_per_sec"],
            "delivered": lambda r: r["delivery_ratio"],
            "cpu": lambda r: r["server_cpu_per_delivery_us"],
            "core": lambda r: r.get("server_core_per_delivery_us"),
            "p50": lambda r: r["latency_us"]["p50"],
            "p99": lambda r: r["latency_us"]["p99"],
            "tool": lambda r: r["load_tool_cpu_share"],
        }
        bm = {k: med(b, f) for k, f in fields.items()}
        for s in servers:
            rs = runs(s, n, rate)
            if not rs:
                continue
            m = {k: med(rs, f) for k, f in fields.items()}
            core = f"{m['core']:.3f}" if m["core"] is not None else "-"
            print(f"  {s:19} {m['dps']:>10,.0f}/s ({ratio(m['dps'], bm['dps'])})  delivered {min(r['delivery_ratio'] for r in rs):.4f}"
                  f"  cpu/delivery {m['cpu']:.3f} us ({ratio(m['cpu'], bm['cpu'])})  core/delivery {core} us ({ratio(m['core'], bm['core'])})"
                  f"  p50 {m['p50'] / 1000:.1f} ms  p99 {m['p99'] / 1000:.1f} ms ({ratio(m['p99'], bm['p99'])})"
                  f"  tool cpu {m['tool']:.2f}  [{len(rs)} runs]")
PY
