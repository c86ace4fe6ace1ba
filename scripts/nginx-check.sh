#!/usr/bin/env bash
# nginx in front of corecast, for real: starts a Redis, three corecast nodes and nginx
# (deploy/nginx/corecast.conf, its upstream rewritten to the nodes' loopback addresses) on
# free ports, then runs scripts/nginx-check.mjs: clients through nginx reach users on
# every node, and a node killed behind nginx loses none of its clients' events.
#
# Needs redis-server, nginx and Node.js (`apt-get install -y redis-server nginx nodejs`).
# Everything it starts is stopped by pid on exit; nothing binds outside 127.0.0.1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/target/nginx-check"
rm -rf "$work" && mkdir -p "$work/logs"
cd "$root"
profile=${NGINX_CHECK_PROFILE:-ci}
cargo build --profile "$profile" -q --bin corecast
bin="$root/target/$profile/corecast"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

pids=()
# TERM first (nginx's master then stops its workers; a KILLed master would orphan them),
# KILL whatever is still there after 5 s.
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nginx-check: nothing listens on port $1" >&2; return 1
}
# A node with --redis takes clients once its bridge is ready (before, upgrades get 503).
wait_ready() {
  for _ in $(seq 1 400); do
    python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$1/readyz', timeout=1).status == 200 else 1)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nginx-check: the node on port $1 never became ready" >&2; return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/logs/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"

nodes_json="["
upstream=""
for n in 1 2 3; do
  port=$(free_port)
  "$bin" --listen "127.0.0.1:$port" --shards 1 --node-id "nginx-n$n" \
    --redis "redis://127.0.0.1:$redis_port/0" --history-size 1000 --drain-period off \
    >"$work/logs/node$n.out" 2>"$work/logs/node$n.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
  wait_ready "$port"
  nodes_json+="{\"addr\":\"127.0.0.1:$port\",\"pid\":$pid}"
  [ "$n" -lt 3 ] && nodes_json+=","
  upstream+="    server 127.0.0.1:$port max_fails=1 fail_timeout=5s;\n"
done
nodes_json+="]"

# The reference config, with the three example nodes replaced by ours and a free port.
lb_port=$(free_port)
awk -v servers="$upstream" '
  /^    server 10\.0\.0\.1[1-3]:8080/ { if (!done) { printf "%s", servers; done = 1 } next }
  { print }
' deploy/nginx/corecast.conf | sed "s/^    listen 80;/    listen 127.0.0.1:$lb_port;/" >"$work/corecast.conf"
grep -q "listen 127.0.0.1:$lb_port;" "$work/corecast.conf"
[ "$(grep -c '^    server 127.0.0.1:' "$work/corecast.conf")" -eq 3 ]
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
error_log $work/logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log $work/logs/nginx-access.log;
    client_body_temp_path $work/tmp-body;
    proxy_temp_path $work/tmp-proxy;
    fastcgi_temp_path $work/tmp-fastcgi;
    uwsgi_temp_path $work/tmp-uwsgi;
    scgi_temp_path $work/tmp-scgi;
    include $work/corecast.conf;
}
CONF
"$nginx_bin" -t -p "$work" -c "$work/nginx.conf" -g 'daemon off; pid nginx.pid;' 2>&1 | sed 's/^/nginx: /'
"$nginx_bin" -p "$work" -c "$work/nginx.conf" -g 'daemon off; pid nginx.pid;' &
pids+=($!)
wait_port "$lb_port"
echo "nginx-check: redis :$redis_port, nodes $nodes_json, nginx :$lb_port"

LB="ws://127.0.0.1:$lb_port" NODES="$nodes_json" LIMIT_MS=60000 \
  node --experimental-websocket --no-warnings "$root/scripts/nginx-check.mjs"
