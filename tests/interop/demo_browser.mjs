// The demo page (GET /demo) in headless Chromium: two tabs, ann and bob,
// chat through the daemon the page came from. Usage:
//   node demo_browser.mjs http://127.0.0.1:PORT [ws://HOST:PORT/ws]
// The optional second argument is passed to the page as ?server= (to try
// the page from a static server against a daemon elsewhere). Prints KILL
// (kill the daemon, wait, start it again on the same port) and waits for a
// line on stdin; prints OK and exits 0 when every check passed. With
// SCREENSHOT_DIR set, saves ann's tab as demo.png after the chat.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const tools = process.env.BROWSER_TOOLS ?? new URL("../../scripts/browser-tools/", import.meta.url).pathname;
const { chromium } = createRequire(tools + "package.json")("playwright-core");

const [base, server] = process.argv.slice(2);
if (!base) {
  console.error("usage: node demo_browser.mjs http://127.0.0.1:PORT [ws://HOST:PORT/ws]");
  process.exit(2);
}
setTimeout(() => {
  console.error("demo test: not done within 85 s");
  process.exit(1);
}, 85000).unref();

const lines = createInterface({ input: process.stdin });
const ask = (what) => {
  console.log(what);
  return new Promise((resolve) => lines.once("line", resolve));
};

const errors = [];
const T = 10000;
const id = (testid) => `[data-testid="${testid}"]`;

/** Wait (at most T) until `fn(arg)` is truthy in `page`; fail saying `what`. */
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: T, polling: 50 });
  } catch (e) {
    const badge = await page.textContent(id("badge")).catch(() => "?");
    throw new Error(`${page.user}: ${what} (not within ${T} ms; badge ${badge}; ${e.message.split("\n")[0]})`);
  }
  if (errors.length) throw new Error("page error: " + errors.join("; "));
}

const badgeIs = (page, state) =>
  until(page, `badge ${state}`, (s) => document.querySelector('[data-testid="badge"]').textContent === s, state);
const users = (page, list) =>
  until(
    page,
    `presence lists exactly ${list}`,
    (want) => [...document.querySelectorAll('[data-testid="presence"] [data-user]')].map((e) => e.dataset.user).join() === want,
    list.join(),
  );
const hasMessage = (page, room, from, text) =>
  until(
    page,
    `a message in ${room} from ${from}: ${text}`,
    ([room, from, text]) =>
      [...document.querySelectorAll(`[data-testid="messages"] [data-room="${room}"][data-from="${from}"]`)].some((e) =>
        e.textContent.includes(text),
      ),
    [room, from, text],
  );
const say = async (page, text) => {
  await page.fill(id("text"), text);
  await page.click(id("send"));
};
const join = async (page, room) => {
  await page.fill(id("room-input"), room);
  await page.click(id("join"));
  await until(page, `${room} listed and current`, (r) => document.querySelector(`[data-testid="rooms"] [data-room="${r}"].current`), room);
};
const show = (page, room) => page.click(`${id("rooms")} [data-room="${room}"]`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
  const open = async (user) => {
    const page = await context.newPage();
    page.user = user;
    page.on("pageerror", (e) => errors.push(`${user}: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && console.error(`${user} console: ${m.text()}`));
    const query = new URLSearchParams({ user });
    if (server) query.set("server", server);
    await page.goto(`${base}/demo?${query}`);
    return page;
  };
  const ann = await open("ann");
  const bob = await open("bob");
  const both = [ann, bob];

  // Connected, as the names given, in the lobby, seeing each other.
  for (const page of both) {
    await badgeIs(page, "connected");
    if ((await page.inputValue(id("name"))) !== page.user) throw new Error(`${page.user}: name field not ${page.user}`);
    await until(page, "in lobby", () => document.querySelector('[data-testid="rooms"] [data-room="lobby"].current'));
    await users(page, ["ann", "bob"]);
  }

  // Typing, then a message each way in the lobby.
  await bob.fill(id("text"), "hel");
  await until(ann, "typing indicator naming bob", () => /\bbob\b.*typing/.test(document.querySelector('[data-testid="typing"]').textContent));
  await say(ann, "hello bob");
  await hasMessage(bob, "lobby", "ann", "hello bob");
  await hasMessage(ann, "lobby", "ann", "hello bob"); // echoed to the sender
  await say(bob, "hi ann! shall we move to ops?");
  await hasMessage(ann, "lobby", "bob", "shall we move to ops");

  // A second room: bob first, then ann; a message there stays there.
  await join(bob, "ops");
  await join(ann, "ops");
  await users(ann, ["ann", "bob"]);
  await users(bob, ["ann", "bob"]);
  await say(bob, "deploy is <b>green</b>");
  await hasMessage(ann, "ops", "bob", "deploy is <b>green</b>"); // as text
  if (await ann.$(`${id("messages")} li > span b`)) throw new Error("ann: message text was parsed as HTML");
  if (await ann.$(`${id("messages")} [data-room="lobby"][data-from="bob"]:has-text("deploy is")`)) {
    throw new Error("ann: the ops message also shows in lobby");
  }

  // A private message, picked from the presence list.
  await bob.click(`${id("presence")} [data-user="ann"]`);
  if ((await bob.inputValue(id("private-to"))) !== "ann") throw new Error("bob: clicking ann did not fill private-to");
  await bob.fill(id("private-text"), "psst, coffee?");
  await bob.click(id("private-send"));
  await until(ann, "a private from bob", () =>
    [...document.querySelectorAll('[data-testid="privates"] [data-from="bob"]')].some((e) => e.textContent.includes("psst, coffee?")),
  );
  await until(bob, "his own private shown", () => document.querySelector('[data-testid="privates"] [data-from="bob"][data-to="ann"]'));

  // Back in the lobby, ann sees one unread message in ops.
  await show(ann, "lobby");
  await users(ann, ["ann", "bob"]);
  await say(bob, "rollout at 3?");
  await hasMessage(ann, "ops", "bob", "rollout at 3?");
  await until(ann, "one unread in ops", () => document.querySelector('[data-testid="rooms"] [data-room="ops"] .unread').textContent === "1");
  await show(bob, "lobby");
  await bob.fill(id("text"), "see y");
  await until(ann, "bob typing in the lobby", () => /bob is typing/.test(document.querySelector('[data-testid="typing"]').textContent));
  if (process.env.SCREENSHOT_DIR) await ann.screenshot({ path: `${process.env.SCREENSHOT_DIR}/demo.png` });

  // The daemon killed and started again: both tabs see it, reconnect,
  // rejoin both rooms, and know who is there again.
  const nodes = [];
  for (const page of both) {
    nodes.push(await page.textContent(id("node")));
    await page.evaluate(() => {
      const badge = document.querySelector('[data-testid="badge"]');
      window.badgeLog = [];
      new MutationObserver(() => window.badgeLog.push(badge.textContent)).observe(badge, { childList: true, characterData: true, subtree: true });
    });
  }
  await ask("KILL");
  for (const [i, page] of both.entries()) {
    await until(page, "badge reconnecting after the kill", () => window.badgeLog.some((s) => s === "reconnecting" || s === "connecting"));
    await badgeIs(page, "connected");
    const node = await page.textContent(id("node"));
    if (node === nodes[i] || !node) throw new Error(`${page.user}: node id not renewed after the restart (${node})`);
    const rooms = await page.$$eval(`${id("rooms")} [data-room]`, (items) => items.map((e) => e.dataset.room).join());
    if (rooms !== "lobby,ops") throw new Error(`${page.user}: rooms after restart: ${rooms}`);
  }
  await show(bob, "lobby");
  await users(ann, ["ann", "bob"]);
  await users(bob, ["ann", "bob"]);
  await say(bob, "back after the restart");
  await hasMessage(ann, "lobby", "bob", "back after the restart");
  await show(ann, "ops");
  await users(ann, ["ann", "bob"]);
  await say(ann, "ops still works");
  await hasMessage(bob, "ops", "ann", "ops still works");

  // A new name: a new connection in the same rooms; the old name leaves.
  await ann.fill(id("name"), "ann2");
  await ann.press(id("name"), "Enter");
  await badgeIs(ann, "connected");
  await users(bob, ["ann2", "bob"]);
  await say(bob, "welcome ann2");
  await hasMessage(ann, "lobby", "bob", "welcome ann2");
  if (errors.length) throw new Error("page error: " + errors.join("; "));
  console.log("OK");
} catch (e) {
  failed = true;
  console.error("demo test failed:", e.message);
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
