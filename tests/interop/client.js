// Interop check with Node's `ws` library (used by tests/interop.rs).
// Usage: node client.js ws://127.0.0.1:PORT (or wss://localhost:PORT,
// trusting the certificate in the file named by INTEROP_CA) — exits 0 when
// every check passed.
"use strict";
const assert = require("node:assert/strict");
const WebSocket = require("ws");

function open(url) {
  const tls = url.startsWith("wss://") ? { ca: require("node:fs").readFileSync(process.env.INTEROP_CA) } : {};
  const ws = new WebSocket(url, tls);
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const m = isBinary ? data : JSON.parse(String(data));
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  ws.next = () =>
    new Promise((resolve, reject) => {
      if (queue.length) return resolve(queue.shift());
      const timer = setTimeout(() => reject(new Error("timed out waiting for a message")), 10000);
      waiters.push((m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
  return new Promise((resolve, reject) => {
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

async function main(base) {
  const ann = await open(`${base}/ws/room?user=node-ann`);
  assert.equal((await ann.next()).type, "welcome");
  assert.equal((await ann.next()).type, "joined");
  const bob = await open(`${base}/ws/room?user=node-bob`);
  await bob.next();
  await bob.next();
  assert.deepEqual(await ann.next(), { type: "user_joined", room: "room", user: "node-bob", members: 2 });
  bob.send(JSON.stringify({ type: "message", room: "room", data: [1, "two", { three: 3 }], echo: true }));
  const expected = { type: "message", room: "room", from: "node-bob", data: [1, "two", { three: 3 }] };
  assert.deepEqual(await ann.next(), expected);
  assert.deepEqual(await bob.next(), expected);
  const closed = new Promise((resolve) => bob.on("close", (code) => resolve(code)));
  bob.close(1000);
  assert.equal(await closed, 1000);
  assert.equal((await ann.next()).type, "user_left");
  ann.close();

  const echo = await open(`${base}/echo`);
  echo.send(Buffer.from([1, 2, 3]));
  assert.deepEqual([...(await echo.next())], [1, 2, 3]);
  echo.close();
  console.log("node ws interop: ok");
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
