// The JavaScript client (clients/js/switchboard.js) in Node, with the `ws`
// package as its WebSocket, against a real daemon (driven by tests/js_client.rs).
// Usage: node js_client.mjs http://127.0.0.1:PORT — prints KILL when the
// daemon should be killed and started again on the same port, then waits for
// a line on stdin; prints OK and exits 0 when every check passed.
import assert from "node:assert/strict";
import net from "node:net";
import { createInterface } from "node:readline";
import WebSocket from "ws";
import { Switchboard } from "../../clients/js/switchboard.js";

const base = process.argv[2];
const ws = base.replace("http", "ws");
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

function once(sb, event, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeout} ms`)), timeout);
    const off = sb.on(event, (v) => {
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

async function api(path, body) {
  const r = await fetch(base + "/api" + path, { method: "POST", body: JSON.stringify(body) });
  assert.equal(r.status, 200, await r.text());
}

const options = { WebSocket, minDelay: 100, maxDelay: 1000 };
const ann = new Switchboard(`${ws}/ws?user=ann`, options);
assert.equal(ann.state, "connecting");
const welcome = await once(ann, "connected");
assert.equal(welcome.user, "ann");
assert.equal(ann.state, "connected");
const joined = await ann.join("lobby");
assert.equal(joined.type, "joined");
assert.equal(joined.room, "lobby");

const bob = new Switchboard(`${ws}/ws?user=bob`, options);
await once(bob, "connected");
const arrived = once(ann, "user_joined");
await bob.join("lobby");
assert.equal((await arrived).user, "bob");
const got = once(ann, "message");
bob.send("lobby", { text: "hi" });
const m = await got;
assert.deepEqual([m.from, m.data.text], ["bob", "hi"]);

// A request refused: rejected with the error's code, and not also emitted
// as an `error` event.
const errorEvents = [];
ann.on("error", (e) => errorEvents.push(e));
await assert.rejects(ann.request({ type: "message", room: "nope", data: 1 }), (e) => e.code === "not_in_room");
// A refused join is not remembered (not joined again after a reconnect).
await assert.rejects(ann.join("r".repeat(200)), (e) => e.code === "room_name_too_long");
assert.deepEqual([...ann.rooms], ["lobby"]);
assert.deepEqual(errorEvents, []);
// echo: the sender gets its own message too.
const own = once(bob, "message");
const seen = once(ann, "message");
bob.send("lobby", "mine", { echo: true });
assert.deepEqual([(await own).from, (await own).data], ["bob", "mine"]);
assert.equal((await seen).data, "mine");
// Sends while not connected reject at once.
const states = [];
ann.on("state", (s) => states.push(s.to));

// The daemon dies and comes back on the same port: both reconnect and
// rejoin unaided, and get what is published after.
const annBack = once(ann, "connected", 20000);
const bobBack = once(bob, "connected", 20000);
const annRejoined = once(ann, "joined", 20000);
const bobRejoined = once(bob, "joined", 20000);
console.log("KILL");
await nextLine();
await Promise.all([annBack, bobBack, annRejoined, bobRejoined]);
assert.ok(states.includes("disconnected") && states.at(-1) === "connected", states.join(","));
const after = once(ann, "message");
bob.send("lobby", "after the restart");
assert.equal((await after).data, "after the restart");

// Closed by the server with 4000: no reconnect.
const gone = once(ann, "disconnected");
await api("/disconnect", { user: "ann", code: 4000, reason: "kicked" });
const d = await gone;
assert.deepEqual([d.code, d.willReconnect], [4000, false]);
await new Promise((r) => setTimeout(r, 1500));
assert.equal(ann.state, "disconnected");
assert.throws(() => ann.send("lobby", 1), (e) => e.code === "not_connected");

// Closed with 4100 (the heartbeat class): reconnects.
const dropped = once(bob, "disconnected");
const bobAgain = once(bob, "connected");
await api("/disconnect", { user: "bob", code: 4100 });
assert.equal((await dropped).willReconnect, true);
await bobAgain;

// A server that accepts but never answers the handshake: given up after
// connectTimeout (4190) and tried again, with backoff; getToken is asked
// before each new attempt (a browser cannot tell such a failure from a 401).
const silent = net.createServer((socket) => {
  accepted.push(socket);
});
const accepted = [];
await new Promise((r) => silent.listen(0, "127.0.0.1", r));
let tokensAsked = 0;
const stuck = new Switchboard(`ws://127.0.0.1:${silent.address().port}/ws`, {
  WebSocket,
  getToken: async () => `t${++tokensAsked}`,
  connectTimeout: 300,
  minDelay: 100,
  maxDelay: 200,
});
const gaveUp = await once(stuck, "disconnected", 5000);
assert.deepEqual([gaveUp.code, gaveUp.willReconnect], [4190, true]);
await once(stuck, "disconnected", 5000);
assert.ok(accepted.length >= 2, String(accepted.length));
assert.ok(tokensAsked >= 2, String(tokensAsked));
stuck.close();
for (const socket of accepted) socket.destroy();
silent.close();

// close(): 1000, nothing more; the process can exit (no timer left).
ann.close();
bob.close();
lines.close();
assert.equal(bob.state, "disconnected");
console.log("OK");
