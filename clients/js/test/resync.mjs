// corecast.js on Node's WebSocket (`node --experimental-websocket`) against one node the
// Rust test freezes, kills and restarts (a new epoch): a publish on the wire when the
// connection drops is rejected with `disconnected`; a publish made while disconnected is
// sent once after the reconnect; the lost history surfaces as a resync.
// Lines out: "ready", "sent", "rejected <code>", "queued", "attempt" (each connection the
// client opens), "resync <topic>", "done <json>".
// Lines in: "publish" (after the test froze the node).
import { createInterface } from "node:readline";
import { connect } from "../corecast.js";

const say = (line) => process.stdout.write(line + "\n");

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const until = async (what, check) => {
  while (!check()) await new Promise((r) => setTimeout(r, 10)); // polling, bounded by `limit`
};

const received = [];
const states = [];
const resyncs = [];
const limit = setTimeout(() => {
  say(`error timed out: states ${JSON.stringify(states)}, received ${JSON.stringify(received)}`);
  process.exit(2);
}, Number(process.env.LIMIT_MS ?? 60000));
// Node's WebSocket, reporting each connection attempt: the test restarts the node only
// after the client has been refused at least once.
class Reporting extends WebSocket {
  constructor(...args) {
    super(...args);
    say("attempt");
  }
}
const client = connect(process.env.URL, {
  user: "resync",
  backoff: { baseMs: 50, maxMs: 300 },
  WebSocket: Reporting,
});
client.on("state", (s) => states.push(s));
client.subscribe("t", (m) => received.push({ id: m.id, data: m.data }), {
  onResync: (r) => {
    resyncs.push(r.topic);
    say(`resync ${r.topic}`);
  },
});
await client.publish("t", "one");
await client.publish("t", "two");
await until("both events", () => received.length === 2);
say("ready");

if ((await lines.next()).value !== "publish") throw new Error("expected publish");
const inflight = client.publish("t", "inflight");
say("sent");
const code = await inflight.then(
  (id) => `resolved ${id}`,
  (e) => e.code,
);
say(`rejected ${code}`);
// Disconnected now: this one waits for the next connection and is sent once.
const queued = client.publish("t", "queued");
say("queued");
const queuedId = await queued;
await until("the queued event", () => received.some((m) => m.data === "queued"));
say(`done ${JSON.stringify({ received, states, resyncs, queuedId })}`);
client.close();
clearTimeout(limit);
process.exit(0);
