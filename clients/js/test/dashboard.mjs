// Loads the dashboard (`GET /`) of a node in headless Debian Chromium and checks that it
// shows the cluster and moves with real load. Talks to the Rust test over stdin/stdout:
//   out "figures <json>"   what the page shows once every node reported
//   in  "load"             the test has started a load
//   out "moving <json>"    the numbers the page shows under load
//   out "chat"             a message typed into the chat pane came back through it
//   out "done"             the screenshot is saved at $SCREENSHOT
// Every wait is bounded; the browser is closed on every path.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const url = process.env.PAGE; // http://127.0.0.1:PORT/?key=...
const nodes = Number(process.env.NODES_EXPECTED);
const chat = process.env.CHAT_TEXT;
const say = (line) => process.stdout.write(line + "\n");
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
const timer = setTimeout(() => {
  say("error timed out");
  browser.close().finally(() => process.exit(2));
}, 60000);
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on("pageerror", (e) => say(`error page: ${e}`));
  await page.goto(url);
  // The figures of one render, once it shows `want.nodes` nodes and more than
  // `want.deliveries` deliveries/s (a node whose figures are late drops out of a
  // render, so the figures are read together, in the page).
  const figuresWhen = async (want) => {
    const handle = await page.waitForFunction(
      (want) => {
        const read = (name) => document.querySelector(`[data-metric="${name}"]`).textContent;
        const number = (name) => Number(read(name).replace(/[^0-9.]/g, "") || "0");
        const figures = {
          nodes: number("nodes"),
          connections: number("connections"),
          deliveries_per_s: number("deliveries_per_s"),
          redis: read("redis"),
        };
        const ready = figures.nodes === want.nodes && figures.deliveries_per_s > want.deliveries;
        return ready && figures;
      },
      want,
      { timeout: 20000, polling: 200 },
    );
    return handle.jsonValue();
  };
  say(`figures ${JSON.stringify(await figuresWhen({ nodes, deliveries: -1 }))}`);
  const go = await lines.next();
  if (go.value !== "load") throw new Error(`expected "load", got ${go.value}`);
  const moving = await figuresWhen({ nodes, deliveries: 1000 });
  say(`moving ${JSON.stringify(moving)}`);
  await page.locator('[data-role="chat-input"]').fill(chat);
  await page.locator('[data-role="chat-input"]').press("Enter");
  await page.locator('[data-role="chat-log"]', { hasText: chat }).waitFor({ timeout: 20000 });
  say("chat");
  // A fuller chart for the wall screen: three more seconds of load drawn.
  const chart = '[data-role="chart"]';
  const renders = Number(await page.locator(chart).getAttribute("data-rendered"));
  await page.waitForFunction(
    ([sel, n]) => Number(document.querySelector(sel).dataset.rendered) >= n,
    [chart, renders + 3],
    { timeout: 20000 },
  );
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  say("done");
} catch (e) {
  say(`error ${String(e?.stack ?? e).replace(/\n\s*/g, " | ")}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  input.close();
  await browser.close();
}
