#!/usr/bin/env python3
"""How many Redis messages per second the Redis bridge takes in before fred reports
`Lagged`, and the bridge thread's CPU per message.

Publishes `{"sender","text"}` payloads on `ws_broadcast` at a stepped rate (pipelined
PUBLISH on one raw connection, replies read and discarded by a thread), and per step reads
the node's /healthz (`bridge.messages_in`, `bridge.lagged`) and the CPU time of its
`redis-bridge` thread from /proc. bench/bridge_flood.sh starts Redis and the node.

Usage: bridge_flood.py REDIS_PORT NODE_HTTP_PORT NODE_PID RATE [RATE ...]
"""

import json
import os
import socket
import sys
import threading
import time
import urllib.request

STEP_SECONDS = 3.0
TICK = 0.005
TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.load(r)["bridge"]


def bridge_ticks(pid: int) -> int:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() != "redis-bridge":
                continue
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    raise SystemExit("no redis-bridge thread in the node")


def main() -> None:
    redis_port, http_port, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rates = [int(r) for r in sys.argv[4:]]
    payload = json.dumps({"sender": "flood", "text": "x" * 40}).encode()
    command = resp(b"PUBLISH", b"ws_broadcast", payload)
    sock = socket.create_connection(("127.0.0.1", redis_port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            if not sock.recv(1 << 20):
                return

    threading.Thread(target=drain, daemon=True).start()
    print(f"payload {len(payload)} B; steps of {STEP_SECONDS:.0f} s")
    print(f"{'offered/s':>10} {'sent/s':>10} {'bridge in/s':>12} {'lagged':>8} {'reconnects':>10} {'bridge cpu/msg':>15}")
    results = []
    for rate in rates:
        before, ticks_before = health(http_port), bridge_ticks(pid)
        start = time.monotonic()
        sent, owed = 0, 0.0
        while (now := time.monotonic()) - start < STEP_SECONDS:
            owed = rate * (now - start) - sent
            n = int(owed)
            if n > 0:
                sock.sendall(command * n)
                sent += n
            time.sleep(TICK)
        elapsed = time.monotonic() - start
        # Let the bridge finish what Redis already sent it.
        time.sleep(1.0)
        after, ticks_after = health(http_port), bridge_ticks(pid)
        got = after["messages_in"] - before["messages_in"]
        lagged = after["lagged"] - before["lagged"]
        reconnects = after["reconnects"] - before["reconnects"]
        cpu_us = (ticks_after - ticks_before) / TICKS_PER_SEC * 1e6 / max(got, 1)
        row = {"offered": rate, "sent_per_s": sent / elapsed, "bridge_in_per_s": got / elapsed,
               "lagged": lagged, "reconnects": reconnects, "bridge_cpu_us_per_msg": cpu_us}
        results.append(row)
        print(f"{rate:>10,} {sent / elapsed:>10,.0f} {got / elapsed:>12,.0f} {lagged:>8} {reconnects:>10} {cpu_us:>12.2f} us")
    stop.set()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
