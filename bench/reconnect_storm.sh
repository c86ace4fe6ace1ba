#!/usr/bin/env bash
# Reconnect storm: CONNS clients (default 10000) on node A, SIGTERM to A, every client
# reconnects to node B at once (no client-side backoff, the worst case). Measures the
# reconnect rate B sees with A's paced drain (--drain-period PERIOD, default 10s) and
# without (--drain-period off), ROUNDS rounds each (default 3), alternating; prints each
# round's JSON (corecast-load --storm-to) and the medians. Loopback only; every process
# started is stopped by its pid.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CONNS=${CONNS:-10000}
ROUNDS=${ROUNDS:-3}
PERIOD=${PERIOD:-10s}
OUT=${OUT:-$root/target/reconnect-storm}
mkdir -p "$OUT"
cargo build --release -q --bins -p corecast -p corecast-load
bin="$root/target/release/corecast"
load="$root/target/release/corecast-load"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
pids=()
stop_all() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap stop_all EXIT

round() { # $1 = drain period of node A, $2 = output file
  local pa pb a b
  pa=$(free_port); pb=$(free_port)
  "$bin" --listen "127.0.0.1:$pa" --shards 1 --drain-period "$1" --drain-timeout 30s >/dev/null 2>"$OUT/a.log" &
  a=$!; pids+=("$a")
  "$bin" --listen "127.0.0.1:$pb" --shards 1 >/dev/null 2>"$OUT/b.log" &
  b=$!; pids+=("$b")
  wait_port "$pa"; wait_port "$pb"
  "$load" --addr "127.0.0.1:$pa" --connections "$CONNS" --rate 0 --settle 1 \
    --storm-to "127.0.0.1:$pb" --storm-pid "$a" --storm-window 60 --json "$2" >/dev/null
  wait "$a" 2>/dev/null || true
  stop_all
}

for r in $(seq 1 "$ROUNDS"); do
  round "$PERIOD" "$OUT/paced-$r.json"
  round off "$OUT/unpaced-$r.json"
  echo "round $r: paced $(tr -d ' \n' <"$OUT/paced-$r.json")"
  echo "round $r: unpaced $(tr -d ' \n' <"$OUT/unpaced-$r.json")"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(kind, key):
    return statistics.median(json.load(open(f"{out}/{kind}-{r}.json"))[key] for r in range(1, rounds + 1))
for key in ["reconnected", "peak_per_sec_100ms", "peak_per_sec_1s", "last_end_ms", "last_reconnect_ms"]:
    p, u = med("paced", key), med("unpaced", key)
    ratio = f"{p / u:.3f}" if u else "-"
    print(f"{key:22} paced {p:12.1f}   unpaced {u:12.1f}   paced/unpaced {ratio}")
PY
