// The JavaScript client in headless Chromium (playwright-core driving
// Debian's chromium), loaded from the daemon's own GET /client.js; driven
// by tests/js_client.rs. Usage: node js_browser.mjs http://127.0.0.1:PORT
// Prints KILL (kill the daemon, wait, start it again on the same port),
// STOP (SIGSTOP it) and CONT (SIGCONT it), each time waiting for a line on
// stdin; prints OK and exits 0 when every check passed.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

// playwright-core lives in scripts/browser-tools (installed by scripts/test.sh).
const tools = process.env.BROWSER_TOOLS ?? new URL("../../scripts/browser-tools/", import.meta.url).pathname;
const { chromium } = createRequire(tools + "package.json")("playwright-core");

const base = process.argv[2];
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
  const first = await page.evaluate(async (ws) => {
    const { Switchboard } = await import("/client.js");
    window.log = [];
    const make = (user) => {
      const sb = new Switchboard(`${ws}/ws?user=${user}`, { minDelay: 100, maxDelay: 1000 });
      sb.on("state", (s) => window.log.push({ user, to: s.to, at: Date.now() }));
      return sb;
    };
    window.once = (sb, event, timeout = 10000) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${event}`)), timeout);
        const off = sb.on(event, (v) => {
          clearTimeout(timer);
          off();
          resolve(v);
        });
      });
    window.ann = make("ann");
    window.bob = make("bob");
    await Promise.all([once(ann, "connected"), once(bob, "connected")]);
    await ann.join("lobby");
    const arrived = once(ann, "user_joined");
    await bob.join("lobby");
    const joinedUser = (await arrived).user;
    const got = once(ann, "message");
    bob.send("lobby", "hi");
    const message = await got;
    let refused = null;
    try {
      await ann.request({ type: "message", room: "nope", data: 1 });
    } catch (e) {
      refused = e.code;
    }
    return { joinedUser, from: message.from, data: message.data, refused, state: ann.state };
  }, base.replace("http", "ws"));
  assert.deepEqual(first, { joinedUser: "bob", from: "bob", data: "hi", refused: "not_in_room", state: "connected" });

  // The daemon killed, down for a while, back on the same port.
  await page.evaluate(() => {
    window.back = Promise.all([once(ann, "joined", 30000), once(bob, "joined", 30000)]);
    window.downAt = Date.now();
  });
  await ask("KILL");
  const again = await page.evaluate(async () => {
    await back;
    const attempts = log.filter((l) => l.user === "ann" && l.to === "connecting" && l.at > downAt).map((l) => l.at);
    const got = once(ann, "message");
    bob.send("lobby", "after");
    return { data: (await got).data, attempts };
  });
  assert.equal(again.data, "after");
  // Down about 2 s with 100 ms .. 1 s backoff: a few attempts, spread out.
  assert.ok(again.attempts.length >= 2 && again.attempts.length <= 12, String(again.attempts.length));
  const gaps = again.attempts.slice(1).map((t, i) => t - again.attempts[i]);
  assert.ok(gaps.every((g) => g >= 90), gaps.join(","));

  // A stopped daemon: the client's own timer (2 s here) finds it dead.
  await page.evaluate(() => {
    window.dead = once(ann, "disconnected", 15000);
  });
  await ask("STOP");
  const dead = await page.evaluate(async () => {
    const d = await dead;
    window.alive = once(ann, "connected", 20000);
    return d;
  });
  assert.equal(dead.willReconnect, true);
  await ask("CONT");
  await page.evaluate(() => alive);

  // 4000: no reconnect. 4100: reconnects.
  const closes = await page.evaluate(async (api) => {
    const gone = once(ann, "disconnected");
    await fetch(api + "/disconnect", { method: "POST", body: JSON.stringify({ user: "ann", code: 4000 }) });
    const a = await gone;
    await new Promise((r) => setTimeout(r, 1500));
    const stayed = ann.state;
    const dropped = once(bob, "disconnected");
    const back = once(bob, "connected");
    await fetch(api + "/disconnect", { method: "POST", body: JSON.stringify({ user: "bob", code: 4100 }) });
    const b = await dropped;
    await back;
    // close(): nothing more.
    bob.close();
    const before = log.length;
    await new Promise((r) => setTimeout(r, 1500));
    return { a: [a.code, a.willReconnect], stayed, b: [b.code, b.willReconnect], after: log.length - before, state: bob.state };
  }, base + "/api");
  assert.deepEqual(closes, { a: [4000, false], stayed: "disconnected", b: [4100, true], after: 0, state: "disconnected" });
  console.log("OK");
} finally {
  await browser.close();
  lines.close();
}
