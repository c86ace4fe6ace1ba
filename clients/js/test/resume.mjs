// Drives corecast.js in headless Debian Chromium (playwright-core, no browser download).
// Started by the Rust integration test `browser::...` with the nodes' addresses; it talks
// to the test over stdout, one line per fact:
//   "ready <id>"  the page is subscribed, and its own publish was stored with this id
//   "count <n>"   the page has received n messages on the topic
//   "state <s>"   the client's state changed
//   "result <json>" the messages received, then the script exits
// Every wait is bounded; the browser is closed on every path.

import { chromium } from "playwright-core";

const nodes = process.env.NODES.split(","); // http://127.0.0.1:PORT,...
const topic = process.env.TOPIC;
const expect = Number(process.env.EXPECT);
const limitMs = Number(process.env.LIMIT_MS ?? 60000);

const say = (line) => process.stdout.write(line + "\n");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
let page;
const timer = setTimeout(async () => {
  const seen = await page?.evaluate(() => JSON.stringify(window.__seen)).catch(() => null);
  say(`error timed out; the page had ${seen}`);
  browser.close().finally(() => process.exit(2));
}, limitMs);
try {
  page = await browser.newPage();
  page.on("console", (m) => {
    const text = m.text();
    if (/^(count|state|ready|resync) /.test(text)) say(text);
  });
  page.on("pageerror", (e) => say(`error page: ${e}`));
  // A page the first node serves (its dashboard): Chromium blocks WebSockets to loopback
  // from pages it does not consider local. The module comes from the node itself.
  const origin = nodes[0];
  await page.goto(`${origin}/`);
  const wsUrls = nodes.map((n) => n.replace(/^http/, "ws"));
  const result = await page.evaluate(
    async ({ wsUrls, topic, expect }) => {
      const { connect } = await import("/corecast.js");
      const received = [];
      const states = [];
      const resyncs = [];
      window.__seen = { received, states, resyncs };
      const client = connect(wsUrls, { user: "browser", backoff: { baseMs: 50, maxMs: 500 } });
      client.on("state", (s) => {
        states.push(s);
        console.log(`state ${s}`);
      });
      let done;
      const finished = new Promise((resolve) => (done = resolve));
      client.subscribe(
        topic,
        (m) => {
          received.push({ id: m.id, data: m.data });
          console.log(`count ${received.length}`);
          if (received.length >= expect) done();
        },
        { onResync: (r) => resyncs.push(r) },
      );
      // Requests go one at a time: the receipt comes after `subscribed`.
      const id = await client.publish(topic, "hello");
      console.log(`ready ${id}`);
      await finished;
      client.close();
      return { received, states, resyncs, state: client.state, publishedId: id };
    },
    { wsUrls, topic, expect },
  );
  say(`result ${JSON.stringify(result)}`);
} catch (e) {
  say(`error ${String(e?.stack ?? e).replace(/\n\s*/g, " | ")}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}
