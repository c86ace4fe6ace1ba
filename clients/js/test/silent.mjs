// corecast.js gives up on a connection that never opens (Node's WebSocket): URLS lists a
// listener that accepts TCP and never answers the upgrade, then a real node; with a short
// connectTimeoutMs the client abandons the first and opens the second.
// Lines out: "attempt <url>" (each connection the client opens), "done <json>".
import { connect } from "../corecast.js";

const say = (line) => process.stdout.write(line + "\n");
const limit = setTimeout(() => {
  say("error timed out");
  process.exit(2);
}, 20000);
class Reporting extends WebSocket {
  constructor(url, ...rest) {
    super(url, ...rest);
    say(`attempt ${new URL(url).host}`);
  }
}
const states = [];
const client = connect(process.env.URLS.split(","), {
  user: "patient",
  connectTimeoutMs: Number(process.env.CONNECT_TIMEOUT_MS),
  backoff: { baseMs: 20, maxMs: 50 },
  WebSocket: Reporting,
});
client.on("state", (s) => states.push(s));
const id = await client.broadcast("through");
say(`done ${JSON.stringify({ states, id })}`);
client.close();
clearTimeout(limit);
process.exit(0);
