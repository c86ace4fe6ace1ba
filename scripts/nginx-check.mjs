// The client half of scripts/nginx-check.sh: real WebSocket clients (clients/js/corecast.js
// on Node's WebSocket) through nginx to three nodes. Proves that clients through nginx
// reach users on every node, and that when a node is killed (SIGKILL) its clients
// reconnect through nginx and recover every event exactly once, in order.
// Every wait is bounded (LIMIT_MS for the whole run).

import { connect } from "../clients/js/corecast.js";

const lb = process.env.LB; // ws://127.0.0.1:PORT (nginx)
const nodes = JSON.parse(process.env.NODES); // [{ addr, pid }]
const CLIENTS = 9;
const EVENTS = 200;
const started = Date.now();
const limit = setTimeout(() => fail("timed out"), Number(process.env.LIMIT_MS ?? 60000));

function fail(why) {
  console.error(`nginx-check: FAILED: ${why}`);
  process.exit(1);
}
const log = (line) => console.log(`nginx-check: ${line} (${Date.now() - started} ms)`);

async function until(what, check, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) fail(`waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 20)); // polling interval, not synchronisation
  }
}

async function healthz(addr) {
  const answer = await fetch(`http://${addr}/healthz`);
  return answer.json();
}

// 1. Clients through nginx, all subscribed to one topic.
const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const client = connect(lb, { user: `u${i}`, backoff: { baseMs: 50, maxMs: 500 } });
  const entry = { client, received: [], states: [], directs: [] };
  client.on("state", (s) => entry.states.push(s));
  client.on("direct", (m) => entry.directs.push(m.data));
  client.subscribe("room", (m) => entry.received.push(m.data));
  clients.push(entry);
  // least_conn: each new socket goes to the node with the fewest, so wait for this one.
  await until(`client ${i} open`, () => client.state === "open");
}

// 2. They are spread over every node.
const spread = await until("clients on every node", async () => {
  const counts = await Promise.all(nodes.map(async (n) => (await healthz(n.addr)).connections));
  return counts.every((c) => c >= 1) && counts.reduce((a, b) => a + b, 0) >= CLIENTS ? counts : null;
});
log(`connections per node through nginx: ${spread.join(", ")}`);

// 3. A publish through nginx reaches every client on every node; a direct message too.
await clients[0].client.publish("room", "hello");
await until("hello everywhere", () => clients.every((c) => c.received.includes("hello")));
await clients[1].client.direct(`u${CLIENTS - 1}`, "psst");
await until("the direct message", () => clients[CLIENTS - 1].directs.includes("psst"));
log("a publish and a direct message crossed nodes through nginx");

// 4. Kill a node that has clients, mid-stream; publish from a node that survives.
const victim = nodes[1];
const publisher = connect(`ws://${nodes[0].addr}`, { user: "publisher" });
await until("publisher open", () => publisher.state === "open");
for (let i = 0; i < EVENTS; i++) {
  if (i === EVENTS / 4) {
    process.kill(victim.pid, "SIGKILL");
    log(`killed node ${victim.addr} (pid ${victim.pid}) after ${i} events`);
  }
  try {
    await publisher.publish("room", i);
  } catch (e) {
    fail(`publish ${i}: ${e.code} ${e.message}`);
  }
}
const expected = JSON.stringify(["hello", ...Array.from({ length: EVENTS }, (_, i) => i)]);
await until("every event at every client", () =>
  clients.every((c) => c.received.length >= EVENTS + 1),
);
for (const [i, c] of clients.entries()) {
  if (JSON.stringify(c.received) !== expected) {
    fail(`client u${i} got ${c.received.length} events, not each once in order: ${JSON.stringify(c.received.slice(0, 12))}...`);
  }
}
const moved = clients.filter((c) => c.states.join(",").includes("open,connecting,open")).length;
if (moved === 0) fail("no client was on the killed node");
const counts = await Promise.all([nodes[0], nodes[2]].map(async (n) => (await healthz(n.addr)).connections));
log(`${moved} clients of the killed node reconnected through nginx and recovered; every client got all ${EVENTS + 1} events once, in order; survivors now hold ${counts.join(" + ")} connections`);
for (const c of clients) c.client.close();
publisher.close();
clearTimeout(limit);
log("OK");
