// The JavaScript client's recovery in headless Chromium: an application
// keeps the list of a room's messages while a publisher keeps going and
// the client's connection is lost again and again; the list must end with
// every message exactly once, in order. Driven by tests/history.rs.
// Usage: node history_browser.mjs http://127.0.0.1:PORT API_KEY MODE
//   MODE cut:     the server API drops the client (4150, reconnect) 6 times
//   MODE restart: the daemon is killed and started again (prints KILL);
//                 run against a cluster node, whose history is in Redis
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const tools = process.env.BROWSER_TOOLS ?? new URL("../../scripts/browser-tools/", import.meta.url).pathname;
const { chromium } = createRequire(tools + "package.json")("playwright-core");

const [base, key, mode] = process.argv.slice(2);
const TOTAL = 400;
const lines = createInterface({ input: process.stdin });
const ask = (what) => {
  console.log(what);
  return new Promise((resolve) => lines.once("line", resolve));
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(base + "/healthz");
  await page.evaluate(
    async ({ ws, key, total }) => {
      const { Switchboard } = await import("/client.js");
      // The application: a message list, and what each `joined` said.
      window.list = [];
      window.joins = [];
      window.published = 0;
      const sb = new Switchboard(`${ws}/ws?user=reader`, { minDelay: 50, maxDelay: 300 });
      sb.on("message", (m) => list.push(m.data.n));
      sb.on("joined", (j) => joins.push({ recovered: j.recovered, epoch: j.epoch }));
      window.sb = sb;
      await new Promise((resolve) => sb.on("connected", resolve));
      await sb.join("feed");
      const api = (path, body) =>
        fetch(path, { method: "POST", headers: { Authorization: `Bearer ${key}` }, body: JSON.stringify(body) });
      // The publisher: the server API, each message retried until taken
      // (the daemon may be down), a few milliseconds apart.
      window.publishing = (async () => {
        for (let n = 0; n < total; n++) {
          for (;;) {
            try {
              const r = await api("/api/publish", { room: "feed", data: { n } });
              if (r.ok) break;
            } catch {}
            await new Promise((r) => setTimeout(r, 50));
          }
          window.published = n + 1;
          await new Promise((r) => setTimeout(r, 4));
        }
      })();
      window.cut = () => api("/api/disconnect", { user: "reader", code: 4150, reason: "cut" });
    },
    { ws: base.replace("http", "ws"), key, total: TOTAL },
  );
  const until = async (what, cond, ms = 30000) => {
    const end = Date.now() + ms;
    while (!(await page.evaluate(cond))) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  if (mode === "cut") {
    for (let i = 1; i <= 6; i++) {
      await until(`${i * 50} published`, `published >= ${i * 50}`);
      await page.evaluate(() => cut());
    }
  } else {
    await until("half published", `published >= ${TOTAL / 2}`);
    await ask("KILL");
  }
  await page.evaluate(() => publishing);
  await until("every message listed", `list.length >= ${TOTAL}`);
  await new Promise((r) => setTimeout(r, 300)); // nothing more comes
  const { list, joins } = await page.evaluate(() => ({ list, joins }));
  assert.deepEqual(list, [...Array(TOTAL).keys()], "every message once, in order");
  const rejoins = joins.slice(1);
  assert.ok(rejoins.length >= (mode === "cut" ? 6 : 1), JSON.stringify(joins));
  assert.ok(rejoins.every((j) => j.recovered === true && j.epoch === joins[0].epoch), JSON.stringify(joins));
  console.log("OK");
} finally {
  await browser.close();
  lines.close();
}
