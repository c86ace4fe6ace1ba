// corecast.js refreshes its connection token before it expires (Node's WebSocket, a node
// with JWT authentication). TOKENS: the tokens the token function hands out, in turn.
// Lines out: "refreshed <exp> <calls>" then "done <json>".
import { connect } from "../corecast.js";

const say = (line) => process.stdout.write(line + "\n");
const limit = setTimeout(() => {
  say("error timed out");
  process.exit(2);
}, 60000);
const tokens = process.env.TOKENS.split(",");
let calls = 0;
const states = [];
const client = connect(process.env.URL, {
  user: "refresher",
  token: async () => tokens[Math.min(calls++, tokens.length - 1)],
});
client.on("state", (s) => states.push(s));
client.on("error", (e) => say(`error ${JSON.stringify(e)}`));
const refreshed = await new Promise((resolve) => client.on("refreshed", resolve));
say(`refreshed ${refreshed.exp} ${calls}`);
say(`done ${JSON.stringify({ states, calls })}`);
client.close();
clearTimeout(limit);
process.exit(0);
