#!/usr/bin/env bash
# Cross-node fan-out, same tool, same run: N connections spread over 2 nodes on one
# Redis, publishers on the first node, next to the same load on one node with the
# embedded bus, and the same 2-node scenario with the FastAPI design (the baseline this
# replaces, tests/python/fastapi_node.py).
#
# Layout on this 2-CPU machine: every server process on CPU 0 (corecast --shards 1, so its
# shard and its bridge thread both run there; each FastAPI node is one process), Redis and
# the load tool on CPU 1. So the servers share one core in every configuration.
# Every Redis here is the script's own redis-server on a free port.
#
# A config name ending in `-nohistory` runs corecast with `--history-size 0` (no event ids,
# no history: plain PUBLISH instead of the history script), to measure what history costs;
# one ending in `-streams` runs it with `--delivery streams` (XREAD instead of Pub/Sub).
# For Redis configs, Redis's own CPU (INFO cpu) is sampled around each run.
#
# Usage: N=10000 RATES="2 20 100" FASTAPI_RATES="2 20" DURATION=5 ROUNDS=3 bench/cluster.sh
#        CONFIGS="embedded embedded-nohistory redis-2 redis-2-nohistory" bench/cluster.sh
# Results: target/cluster/<config>-<rate>-r<round>.json and a summary with ratios against
# the embedded single node.
#
# Other binaries: CORECAST_BIN=/path/to/corecast runs that binary instead of this tree's
# target/release/corecast (LOAD_BIN likewise for corecast-load; SKIP_BUILD=1 skips cargo).
# Before/after a change, in one campaign: build the old commit elsewhere and give every
# binary a label,
#   BINS="before=/old/target/release/corecast after=target/release/corecast" \
#   CONFIGS="embedded redis-2" RATES="2 50" DURATION=10 ROUNDS=3 bench/cluster.sh
# Each corecast config then runs once per binary, as <config>@<label> (files
# <config>@<label>-<rate>-r<round>.json), the binaries back to back for every config and
# rate; the order of the binaries alternates per round (ALTERNATE=0 keeps it). The summary
# adds the ratios of each label against the first (medians of the rounds), and
# summary.json holds the raw figures. `uptime` before each round goes to loadavg.txt.
set -euo pipefail
N=${N:-10000}
RATES=${RATES:-"2 20 100"}
FASTAPI_RATES=${FASTAPI_RATES:-"2 20"}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-"embedded redis-2 fastapi-redis-2"}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-"$root/target/cluster"}
mkdir -p "$out"
cd "$root"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --workspace --bins -q
venv="$root/target/py-venv-bench"
if [[ " $CONFIGS " == *" fastapi-redis-2 "* ]] && [ ! -x "$venv/bin/uvicorn" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q fastapi uvicorn redis websockets
fi
bin=${CORECAST_BIN:-"$root/target/release/corecast"}
load_bin=${LOAD_BIN:-"$root/target/release/corecast-load"}
# BINS="label=path ...": labels and binaries, in order (the first is the base of the ratios).
labels=(); declare -A bin_of=()
for spec in ${BINS:-}; do
  [[ "$spec" == *=* ]] || { echo "BINS entries are label=path: $spec" >&2; exit 2; }
  labels+=("${spec%%=*}"); bin_of[${spec%%=*}]=${spec#*=}
done
for l in "${labels[@]}"; do [ -x "${bin_of[$l]}" ] || { echo "not executable: ${bin_of[$l]}" >&2; exit 2; }; done
[ -x "$bin" ] || [ ${#labels[@]} -gt 0 ] || { echo "not executable: $bin" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_until() { # what command...
  local what=$1; shift
  for _ in $(seq 1 400); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "timed out: $what" >&2; return 1
}
ready() { python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$1/readyz', timeout=1).status == 200 else 1)"; }
numsub_is() { [ "$(redis-cli -p "$1" pubsub numsub ws_broadcast | tail -1)" = "$2" ]; }

pids=()
stop_all() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
             for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done; pids=(); }
trap stop_all EXIT

start_redis() { # port
  taskset -c 1 redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  pids+=($!)
  wait_until "redis on $1" redis-cli -p "$1" ping
}

redis_cpu() { # port -> used_cpu_sys + used_cpu_user of that Redis, in seconds
  redis-cli -p "$1" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'
}

server_cpu() { # pids... -> utime + stime of those processes, in seconds
  local t=0 p f
  for p in "$@"; do f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue; set -- $f; t=$((t + ${12} + ${13})); done
  python3 -c "print($t / $(getconf CLK_TCK))"
}

start_config() { # config -> sets addrs, first_pid, server_pids, redis_port
  local extra=()
  case "$1" in *-nohistory) extra=(--history-size 0) ;; *-streams) extra=(--delivery streams) ;; esac
  redis_port=""
  local base=${1%-nohistory}; base=${base%-streams}
  case "$base" in
    embedded)
      local port; port=$(free_port)
      taskset -c 0 "$bin" --listen "127.0.0.1:$port" --shards 1 "${extra[@]}" >/dev/null 2>&1 &
      pids+=($!); first_pid=$!; server_pids=($!)
      wait_until "corecast on $port" ready "$port"
      addrs="127.0.0.1:$port" ;;
    redis-2)
      local rport a b; rport=$(free_port); a=$(free_port); b=$(free_port)
      start_redis "$rport"; redis_port=$rport
      taskset -c 0 "$bin" --listen "127.0.0.1:$a" --shards 1 --redis "redis://127.0.0.1:$rport/0" --node-id a "${extra[@]}" >/dev/null 2>&1 &
      pids+=($!); first_pid=$!; server_pids=($!)
      taskset -c 0 "$bin" --listen "127.0.0.1:$b" --shards 1 --redis "redis://127.0.0.1:$rport/0" --node-id b "${extra[@]}" >/dev/null 2>&1 &
      pids+=($!); server_pids+=($!)
      wait_until "node a ready" ready "$a"; wait_until "node b ready" ready "$b"
      addrs="127.0.0.1:$a,127.0.0.1:$b" ;;
    fastapi-redis-2)
      local rport a b; rport=$(free_port); a=$(free_port); b=$(free_port)
      start_redis "$rport"
      for p in "$a" "$b"; do
        REDIS_URL="redis://127.0.0.1:$rport/0" taskset -c 0 "$venv/bin/python" -m uvicorn fastapi_node:app \
          --app-dir "$root/tests/python" --host 127.0.0.1 --port "$p" --log-level warning --ws-ping-interval 0 \
          >/dev/null 2>&1 &
        pids+=($!)
      done
      first_pid=${pids[1]}; server_pids=("${pids[@]:1}")
      wait_until "fastapi nodes subscribed" numsub_is "$rport" 2
      wait_until "fastapi a" bash -c "exec 3<>/dev/tcp/127.0.0.1/$a"; wait_until "fastapi b" bash -c "exec 3<>/dev/tcp/127.0.0.1/$b"
      addrs="127.0.0.1:$a,127.0.0.1:$b" ;;
  esac
}

run_names=() # what the summary reads: config, or config@label with BINS
for config in $CONFIGS; do
  if [ ${#labels[@]} -gt 0 ] && [ "$config" != fastapi-redis-2 ]; then
    for l in "${labels[@]}"; do run_names+=("$config@$l"); done
  else
    run_names+=("$config")
  fi
done

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: $(uptime)" | tee -a "$out/loadavg.txt" >&2
  order=("${labels[@]}")
  if [ "${ALTERNATE:-1}" = 1 ] && [ $((round % 2)) = 0 ] && [ ${#order[@]} -gt 1 ]; then
    order=(); for ((i = ${#labels[@]} - 1; i >= 0; i--)); do order+=("${labels[$i]}"); done
  fi
  for config in $CONFIGS; do
    rates=$RATES; [ "$config" = fastapi-redis-2 ] && rates=$FASTAPI_RATES
    runs_of=("")
    [ ${#order[@]} -gt 0 ] && [ "$config" != fastapi-redis-2 ] && runs_of=("${order[@]}")
    for rate in $rates; do
      for label in "${runs_of[@]}"; do
        name=$config
        if [ -n "$label" ]; then bin=${bin_of[$label]}; name="$config@$label"; fi
        start_config "$config"
        [ -n "$redis_port" ] && cpu_before=$(redis_cpu "$redis_port")
        procs_before=$(server_cpu "${server_pids[@]}")
        # --server-pid: the first node's own CPU over the publish window (the process CPU
        # beside the core time, which counts whatever else ran on CPU 0).
        taskset -c 1 "$load_bin" --addr "$addrs" --connections "$N" \
          --publishers 1 --rate "$rate" --duration "$DURATION" --settle 2 --cpu 1 --max-drain 10 \
          --server-cpus 0 --server-pid "$first_pid" --json "$out/$name-$rate-r$round.json" \
          >/dev/null 2>"$out/$name-$rate-r$round.log" || true
        # Every server process's CPU over the whole run (connecting included).
        echo "{\"server_procs_cpu_secs\": $(python3 -c "print($(server_cpu "${server_pids[@]}") - $procs_before)")}" \
          > "$out/$name-$rate-r$round.procs.json"
        if [ -n "$redis_port" ]; then
          cpu_after=$(redis_cpu "$redis_port")
          echo "{\"redis_cpu_secs\": $(python3 -c "print($cpu_after - $cpu_before)")}" > "$out/$name-$rate-r$round.redis.json"
        fi
        stop_all
      done
    done
  done
done

frates=""; [[ " $CONFIGS " == *" fastapi-redis-2 "* ]] && frates=$FASTAPI_RATES
all_rates=$(printf '%s\n' $RATES $frates | sort -n | uniq | tr '\n' ' ')
python3 - "$out" "$ROUNDS" "$N" "${run_names[*]}" "${labels[*]:-}" $all_rates <<'PY'
import json, sys, os, statistics
out, rounds, n, configs, labels, rates = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(),
                                          sys.argv[5].split(), sys.argv[6:])
def load(p):
    r = json.load(open(p))
    q = p[:-len(".json")] + ".procs.json"
    if os.path.exists(q) and r.get("received"):
        r["procs_cpu_per_delivery_us"] = json.load(open(q))["server_procs_cpu_secs"] * 1e6 / r["received"]
    return r
def runs(c, r):
    return [load(p) for k in range(1, rounds + 1)
            if os.path.exists(p := os.path.join(out, f"{c}-{r}-r{k}.json"))]
def redis_us(c, r):
    vals = []
    for k in range(1, rounds + 1):
        p, q = os.path.join(out, f"{c}-{r}-r{k}.redis.json"), os.path.join(out, f"{c}-{r}-r{k}.json")
        if os.path.exists(p) and os.path.exists(q) and json.load(open(q))["sent"]:
            vals.append(json.load(open(p))["redis_cpu_secs"] * 1e6 / json.load(open(q))["sent"])
    return statistics.median(vals) if vals else None
def med(rs, f):
    vals = [v for v in (f(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None
def ratio(a, b):
    return f"x{a / b:.2f}" if a is not None and b else "  -  "
print(f"{n} connections (split over the nodes), 1 publisher on the first node; servers on CPU 0,"
      f" Redis and the load tool on CPU 1; median of {rounds} round(s); ratios vs embedded"
      + (" (of the same binary)" if labels else ""))
fields = {"dps": lambda r: r["deliveries_per_sec"], "core": lambda r: r.get("server_core_per_delivery_us"),
          "p50": lambda r: r["latency_us"]["p50"], "p99": lambda r: r["latency_us"]["p99"],
          "cpu_first": lambda r: r.get("server_cpu_per_delivery_us"), "procs": lambda r: r.get("procs_cpu_per_delivery_us")}
for rate in rates:
    print(f"broadcast at {rate} msg/s (offered {int(rate) * (n + 1):,} deliveries/s):")
    for c in configs:
        rs = runs(c, rate)
        if not rs:
            continue
        emb = "embedded" + (c[c.index("@"):] if "@" in c else "")
        base = {k: med(runs(emb, rate), f) for k, f in fields.items()}
        m = {k: med(rs, f) for k, f in fields.items()}
        core = f"{m['core']:.3f}" if m["core"] is not None else "-"
        print(f"  {c:16} {m['dps']:>10,.0f}/s ({ratio(m['dps'], base['dps'])})  delivered {min(r['delivery_ratio'] for r in rs):.4f}"
              f"  core/delivery {core} us ({ratio(m['core'], base['core'])})"
              f"  p50 {m['p50'] / 1000:.2f} ms ({ratio(m['p50'], base['p50'])})  p99 {m['p99'] / 1000:.2f} ms ({ratio(m['p99'], base['p99'])})  [{len(rs)} runs]")
    # What history (ids, the history script) costs: each config against its -nohistory twin;
    # and what streams mode costs against Pub/Sub.
    for c in configs:
        if c.endswith("-streams") and c[:-8] in configs and runs(c, rate) and runs(c[:-8], rate):
            on = {k: med(runs(c, rate), f) for k, f in fields.items()}
            off = {k: med(runs(c[:-8], rate), f) for k, f in fields.items()}
            ru_on, ru_off = redis_us(c, rate), redis_us(c[:-8], rate)
            redis = f"  Redis CPU/publish {ru_on:.1f} us vs {ru_off:.1f} us ({ratio(ru_on, ru_off)})" if ru_on and ru_off else ""
            print(f"  streams/pubsub, {c}: deliveries/s {ratio(on['dps'], off['dps'])}  core/delivery {ratio(on['core'], off['core'])}"
                  f"  p50 {ratio(on['p50'], off['p50'])}  p99 {ratio(on['p99'], off['p99'])}{redis}")
        twin = c + "-nohistory"
        if c.endswith("-nohistory") or twin not in configs or not runs(c, rate) or not runs(twin, rate):
            continue
        on = {k: med(runs(c, rate), f) for k, f in fields.items()}
        off = {k: med(runs(twin, rate), f) for k, f in fields.items()}
        ru_on, ru_off = redis_us(c, rate), redis_us(twin, rate)
        redis = f"  Redis CPU/publish {ru_on:.1f} us vs {ru_off:.1f} us ({ratio(ru_on, ru_off)})" if ru_on and ru_off else ""
        print(f"  history on/off, {c}: deliveries/s {ratio(on['dps'], off['dps'])}  core/delivery {ratio(on['core'], off['core'])}"
              f"  p99 {ratio(on['p99'], off['p99'])}{redis}")
# Each label against the first (BINS): same config, same rate, medians of the rounds.
summary = {"n": n, "rounds": rounds, "labels": labels, "runs": {}}
for rate in rates:
    for c in configs:
        rs = runs(c, rate)
        if rs:
            summary["runs"][f"{c}-{rate}"] = {k: [f(r) for r in rs] for k, f in fields.items()} | {
                "delivered": [r["delivery_ratio"] for r in rs], "redis_us_per_publish": redis_us(c, rate)}
if len(labels) > 1:
    first = labels[0]
    plain = []
    for c in configs:
        if "@" in c and c.split("@")[0] not in plain:
            plain.append(c.split("@")[0])
    for rate in rates:
        print(f"{'/'.join(labels[1:])} vs {first}, broadcast at {rate} msg/s (offered {int(rate) * (n + 1):,} deliveries/s):")
        for c in plain:
            b = {k: med(runs(f"{c}@{first}", rate), f) for k, f in fields.items()}
            for l in labels[1:]:
                a = {k: med(runs(f"{c}@{l}", rate), f) for k, f in fields.items()}
                if a["dps"] is None or b["dps"] is None:
                    continue
                print(f"  {c:16} {l}: deliveries/s {ratio(a['dps'], b['dps'])}  core/delivery {ratio(a['core'], b['core'])}"
                      f"  p50 {ratio(a['p50'], b['p50'])}  p99 {ratio(a['p99'], b['p99'])}"
                      f"  first node cpu/delivery {ratio(a['cpu_first'], b['cpu_first'])}"
                      f"  server processes cpu/delivery {ratio(a['procs'], b['procs'])}")
                summary.setdefault("ratios", {})[f"{c}-{rate}-{l}/{first}"] = {
                    k: (a[k] / b[k] if a[k] is not None and b[k] else None) for k in fields}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
