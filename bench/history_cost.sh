#!/usr/bin/env bash
# What history costs Redis: CPU per publish of the history script (EVALSHA: offset, XADD
# MAXLEN, EXPIREs, PUBLISH) against a plain PUBLISH of the same payload, same Redis, same
# run, two subscribers on the channel (the fan-out is part of both). Commands are sent
# with `redis-cli --pipe`; Redis's own CPU (INFO cpu) is read around each batch.
#
# Usage: N=200000 ROUNDS=5 SIZE=100 bench/history_cost.sh
set -euo pipefail
N=${N:-200000}
ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-"$root/target/history-cost"}
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for _ in 1 2; do
  taskset -c 0 redis-cli -p "$port" subscribe corecast:topic:bench >/dev/null 2>&1 &
  pids+=($!)
done
# The publish script, as the node sends it (read from the source, not copied).
script=$(python3 - "$root/src/bus/redis/history.rs" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
# concat!(lua_new_epoch!(), r#"<body>"#): the shared Lua function, then the body.
function = re.search(r'macro_rules! lua_new_epoch \{\s*\(\) => \{\s*r#"(.*?)"#', src, re.S).group(1)
body = re.search(r'PUBLISH_SCRIPT: &str = concat!\(\s*lua_new_epoch!\(\),\s*r#"(.*?)"#', src, re.S).group(1)
print(function + body)
PY
)
sha=$(redis-cli -p "$port" script load "$script")
cpu() { redis-cli -p "$port" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
python3 - "$out" "$N" "$sha" "$SIZE" <<'PY'
import sys
out, n, sha, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def resp(*args):
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        b = a.encode()
        parts.append(f"${len(b)}\r\n{a}\r\n")
    return "".join(parts)
body = '"type":"message","topic":"bench","sender":"load","data":"' + "x" * 180 + '"}'
with open(f"{out}/script.resp", "w") as f:
    for _ in range(n):
        f.write(resp("EVALSHA", sha, "2", "corecast:history:topic:bench", "corecast:meta:topic:bench",
                     "corecast:topic:bench", body, size, "300", "86400"))
with open(f"{out}/publish.resp", "w") as f:
    payload = '{"id":"1764480000000000:12345",' + body
    for _ in range(n):
        f.write(resp("PUBLISH", "corecast:topic:bench", payload))
PY
for round in $(seq 1 "$ROUNDS"); do
  for kind in publish script; do
    before=$(cpu)
    taskset -c 0 redis-cli -p "$port" --pipe < "$out/$kind.resp" > "$out/$kind-r$round.pipe" 2>&1
    after=$(cpu)
    grep -q "errors: 0" "$out/$kind-r$round.pipe" || { echo "errors in $kind round $round:" >&2; cat "$out/$kind-r$round.pipe" >&2; exit 1; }
    python3 -c "print($after - $before)" > "$out/$kind-r$round.cpu"
  done
done
python3 - "$out" "$ROUNDS" "$N" "$SIZE" <<'PY'
import sys, statistics
out, rounds, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
us = {k: statistics.median(float(open(f"{out}/{k}-r{r}.cpu").read()) * 1e6 / n for r in range(1, rounds + 1))
      for k in ("publish", "script")}
print(f"Redis CPU per publish, {n} publishes x {rounds} rounds (median), 2 subscribers, history size {size}:")
print(f"  PUBLISH             {us['publish']:.2f} us")
print(f"  history script      {us['script']:.2f} us  (x{us['script'] / us['publish']:.2f})")
PY
