#!/usr/bin/env bash
# RFC 6455 conformance: runs Autobahn|Testsuite (`wstest -m fuzzingclient`, cases 1.* to
# 10.*; 12.*/13.* are permessage-deflate, which corecast does not offer) against a corecast
# node's echo endpoint, then fails on any FAILED, WRONG CODE or UNCLEAN case, and on
# NON-STRICT too unless ALLOW_NON_STRICT=1.
#
# The suite runs only on CPython 2.7: it is installed into target/autobahn from the pinned
# scripts/autobahn/requirements-py27.txt with the interpreter at $PYENV_ROOT/versions/2.7.18
# (override with PY27=/path/to/python2.7). Reports: target/autobahn/reports/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/target/autobahn"
mkdir -p "$work"
py27=${PY27:-${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7}

if [ ! -x "$work/venv27/bin/wstest" ]; then
  [ -x "$py27" ] || { echo "autobahn: no Python 2.7 at $py27 (set PY27)" >&2; exit 2; }
  echo "== installing Autobahn|Testsuite (Python 2.7) into $work"
  python3 -m venv "$work/tools"
  "$work/tools/bin/pip" install -q 'virtualenv<20.22'
  "$work/tools/bin/virtualenv" -q -p "$py27" "$work/venv27"
  "$work/venv27/bin/pip" install -q -r "$root/scripts/autobahn/requirements-py27.txt" 2>&1 | grep -v DEPRECATION || true
fi

cd "$root"
# AUTOBAHN_PROFILE=ci (what .ci/run uses) builds an optimized binary without LTO, in a
# fraction of the release build's time; the protocol behaviour under test is the same.
profile=${AUTOBAHN_PROFILE:-release}
cargo build --profile "$profile" -q --bin corecast
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Limits sized for the suite: 9.* sends 16 MiB messages, some in 64-byte fragments.
"$root/target/$profile/corecast" --listen "127.0.0.1:$port" --shards 1 --echo-path /echo \
  --max-message-size 16MiB --outbound-queue-limit 64MiB --max-fragments 1000000 \
  --max-control-frames-per-sec 1000 --ping-interval off --app-ping-interval off \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

rm -rf "$work/reports"
cat >"$work/spec.json" <<JSON
{"options": {"failByDrop": false}, "outdir": "$work/reports",
 "servers": [{"agent": "corecast", "url": "ws://127.0.0.1:$port/echo"}],
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
started=$(date +%s.%N)
(cd "$work" && ./venv27/bin/wstest -m fuzzingclient -s spec.json >"$work/wstest.log" 2>&1)
elapsed=$(python3 -c "import time; print('%.1f' % (time.time() - $started))")

python3 - "$work/reports/index.json" "$elapsed" "${ALLOW_NON_STRICT:-0}" <<'PY'
import json, sys, collections
index, elapsed, allow_non_strict = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3] == "1"
results = index["corecast"]
groups = collections.defaultdict(collections.Counter)
bad = []
for case, r in results.items():
    groups[case.split(".")[0]][r["behavior"]] += 1
    failing = {"FAILED", "WRONG CODE", "UNCLEAN"} | (set() if allow_non_strict else {"NON-STRICT"})
    if r["behavior"] in failing or r["behaviorClose"] in {"FAILED", "WRONG CODE", "UNCLEAN"}:
        bad.append((case, r["behavior"], r["behaviorClose"]))
print(f"Autobahn|Testsuite: {len(results)} cases in {elapsed} s")
for g in sorted(groups, key=int):
    print(f"  {g:>2}.*  " + "  ".join(f"{k} {v}" for k, v in sorted(groups[g].items())))
total = collections.Counter()
for c in groups.values():
    total.update(c)
print("  total " + "  ".join(f"{k} {v}" for k, v in sorted(total.items())))
for case, behavior, close in sorted(bad, key=lambda x: [int(p) for p in x[0].split(".")]):
    print(f"  FAIL {case}: {behavior} (close: {close})")
sys.exit(1 if bad else 0)
PY
