// The dashboard (GET /dashboard) in headless Chromium against a daemon
// started with an API key; driven by tests/pages.rs.
// Usage: node dashboard_browser.mjs http://127.0.0.1:PORT KEY
// Checks the key prompt (kept for the tab only), the numbers against
// /stats, the rates while a client sends, the drill-down into a room and a
// user, and the actions with their confirmation (publish reaches the
// members, cancel does nothing, disconnect closes with 4000). Prints OK and
// exits 0 when every check passed. With SCREENSHOT_DIR set it saves
// dashboard.png there.
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const tools = process.env.BROWSER_TOOLS ?? new URL("../../scripts/browser-tools/", import.meta.url).pathname;
const { chromium } = createRequire(tools + "package.json")("playwright-core");

const [base, key] = process.argv.slice(2);
const stats = async () => (await fetch(base + "/stats", { headers: { Authorization: "Bearer " + key } })).json();
const metric = (page, name) =>
  page.$eval(`[data-metric="${name}"]`, (e) => (e.dataset.value === undefined ? null : Number(e.dataset.value)));
async function until(what, check, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const errors = [];
try {
  // The clients: four users, ann on two devices, two rooms.
  const clients = await browser.newPage();
  clients.on("pageerror", (e) => errors.push(e));
  await clients.goto(base + "/healthz");
  await clients.evaluate(async (ws) => {
    window.got = {};
    window.closes = {};
    const open = (name, path) =>
      new Promise((resolve, reject) => {
        const s = new WebSocket(ws + path);
        got[name] = [];
        s.onmessage = (m) => got[name].push(JSON.parse(m.data));
        s.onclose = (e) => (closes[name] = e.code);
        s.onerror = reject;
        s.onopen = () => resolve(s);
      });
    window.socks = {
      ann1: await open("ann1", "/ws/lobby?user=ann"),
      ann2: await open("ann2", "/ws/ops?user=ann"),
      bob: await open("bob", "/ws/lobby?user=bob"),
      cy: await open("cy", "/ws/lobby?user=cy"),
      dee: await open("dee", "/ws/ops?user=dee"),
    };
  }, base.replace("http", "ws"));

  // The key is asked for; a wrong one is refused; it stays in this tab.
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const dash = await context.newPage();
  dash.on("pageerror", (e) => errors.push(e));
  await dash.goto(base + "/dashboard");
  await dash.waitForSelector('[data-testid="keybox"].open', { timeout: 10000 });
  await dash.fill('[data-testid="key"]', "wrong");
  await dash.click('[data-testid="key-ok"]');
  await dash.waitForSelector('[data-testid="keybox"].open', { timeout: 10000 });
  assert.equal(await dash.textContent("#key-msg"), "That key was refused.");
  await dash.fill('[data-testid="key"]', key);
  await dash.click('[data-testid="key-ok"]');
  await until("live", async () => (await dash.textContent('[data-testid="status"]')) === "live");
  const storage = await dash.evaluate(() => [sessionStorage.getItem("switchboard.apiKey"), localStorage.length]);
  assert.deepEqual(storage, [key, 0]);

  // The numbers are /stats' numbers.
  await until("5 connections", async () => (await metric(dash, "connections")) === 5);
  const s = await stats();
  assert.deepEqual(
    [await metric(dash, "connections"), await metric(dash, "users"), await metric(dash, "rooms")],
    [s.total_connections, s.total_users, s.total_rooms],
  );
  assert.deepEqual([s.total_connections, s.total_users, s.total_rooms], [5, 4, 2]);
  const rooms = await dash.$$eval('[data-testid="rooms"] tr', (rs) => rs.map((r) => [r.dataset.room, r.cells[1].textContent]));
  assert.deepEqual(rooms, [["lobby", "3"], ["ops", "2"]]);
  const users = await dash.$$eval('[data-testid="users"] tr', (rs) => rs.map((r) => r.dataset.user));
  assert.equal(users[0], "ann");

  // Rates while bob sends 50 messages a second to lobby (two recipients).
  const before = await stats();
  const t0 = Date.now();
  await clients.evaluate(() => {
    let n = 0;
    window.sender = setInterval(() => socks.bob.send(JSON.stringify({ type: "message", room: "lobby", data: n++ })), 20);
  });
  // Until the dashboard's rates agree (within a factor of two) with what
  // /stats' own counters say over the same stretch.
  let seen = "";
  await until("rates that agree with /stats", async () => {
    await new Promise((r) => setTimeout(r, 1000));
    const rateIn = await metric(dash, "messages_in_per_s");
    const rateOut = await metric(dash, "messages_out_per_s");
    const after = await stats();
    const secs = (Date.now() - t0) / 1000;
    const statsIn = (after.messages_in - before.messages_in) / secs;
    const statsOut = (after.messages_out - before.messages_out) / secs;
    seen = `in ${rateIn}/s vs /stats ${statsIn}/s, out ${rateOut}/s vs ${statsOut}/s`;
    const near = (a, b) => a > 0.5 * b && a < 2 * b;
    // Two deliveries per message (ann and cy; not bob's own).
    return secs > 2 && near(rateIn, statsIn) && near(rateOut, statsOut) && statsOut > 1.5 * statsIn;
  }, 20000).catch((e) => {
    throw new Error(`${e.message}: ${seen}`);
  });
  await clients.evaluate(() => clearInterval(sender));
  assert.match(await dash.textContent("#peak"), /^peak /);

  // Drill-down into lobby; publish after the confirmation.
  await dash.click('[data-testid="rooms"] tr[data-room="lobby"]');
  await dash.waitForSelector('[data-testid="detail"] tr[data-user="cy"]', { timeout: 10000 });
  const members = await dash.$$eval('[data-testid="detail"] tbody tr', (rs) => rs.map((r) => r.dataset.user).sort());
  assert.deepEqual(members, ["ann", "bob", "cy"]);
  await dash.fill('[data-testid="publish-data"]', '{"text":"hello from the dashboard"}');
  await dash.click('[data-testid="publish"]');
  await dash.waitForSelector('[data-testid="confirm"].open');
  await dash.click('[data-testid="confirm-yes"]');
  await until("delivered", async () => (await dash.textContent('[data-testid="detail"] .msg')) === "delivered to 3 connection(s)");
  const published = await until("the publish at cy", () =>
    clients.evaluate(() => got.cy.find((m) => m.type === "message" && m.from === null)),
  );
  assert.deepEqual(published, { type: "message", room: "lobby", from: null, data: { text: "hello from the dashboard" } });
  if (process.env.SCREENSHOT_DIR) await dash.screenshot({ path: process.env.SCREENSHOT_DIR + "/dashboard.png", fullPage: true });

  // Drill-down into ann (two devices); cancel does nothing; confirm closes both with 4000.
  await dash.click('[data-testid="users"] tr[data-user="ann"]');
  await until("ann's devices", async () => (await dash.$$('[data-testid="detail"] tr[data-connection]')).length === 2);
  await dash.click('[data-testid="disconnect"]');
  await dash.waitForSelector('[data-testid="confirm"].open');
  await dash.click('[data-testid="confirm-no"]');
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(await clients.evaluate(() => closes), {});
  await dash.click('[data-testid="disconnect"]');
  await dash.click('[data-testid="confirm-yes"]');
  await until("closed", async () => (await dash.textContent('[data-testid="detail"] .msg')) === "closed 2 connection(s)");
  await until("4000", () => clients.evaluate(() => closes.ann1 === 4000 && closes.ann2 === 4000));
  await until("3 connections", async () => (await metric(dash, "connections")) === 3);

  // Another tab of the same browser asks for the key again (it was kept
  // in this tab's sessionStorage, nowhere shared).
  const other = await context.newPage();
  await other.goto(base + "/dashboard");
  await other.waitForSelector('[data-testid="keybox"].open', { timeout: 10000 });

  assert.deepEqual(errors, []);
  console.log("OK");
} finally {
  await browser.close();
}
