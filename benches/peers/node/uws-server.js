#!/usr/bin/env node
// Benchmark peer: a room fan-out server on uWebSockets.js (npm package
// `uwebsockets`, a republish of the uWS.js binaries) that speaks the subset
// of switchboard's protocol that switchboard-load uses, so the same load tool
// can measure it.
//
//   node uws-server.js [IP:PORT]        (default 127.0.0.1:9001)
//
// - GET /ws/<room>?user=<id> and GET /ws?user=<id> upgrade; on open the server
//   sends {"type":"welcome","connection_id":"<n>","user":"<id>"} and joins the
//   room named in the URL, if any (a uWS topic subscription).
// - {"type":"message","room":R,"data":D} from a member of R is sent as
//   {"type":"message","room":R,"from":"<user>","data":D} to every other member
//   with uWS's own pub/sub (`ws.publish` from the sender's socket skips the
//   sender); otherwise the sender gets {"type":"error","code":"not_in_room"}
//   (or bad_json, bad_message, unknown_type).
// - GET /echo upgrades without a welcome and echoes every message.
// - Any other path: 404.
//
// Prints "listening on IP:PORT" on stderr once listening. Needs one file
// descriptor per connection: raise `ulimit -n` for tens of thousands.
"use strict";

const uWS = require("uwebsockets");

const [host, port] = splitAddr(process.argv[2] || "127.0.0.1:9001");

const ERR_BAD_JSON = '{"type":"error","code":"bad_json"}';
const ERR_BAD_MESSAGE = '{"type":"error","code":"bad_message"}';
const ERR_UNKNOWN_TYPE = '{"type":"error","code":"unknown_type"}';
const ERR_NOT_IN_ROOM = '{"type":"error","code":"not_in_room"}';

const common = {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  // No idle timeout and so no automatic pings (the load tool sends none).
  idleTimeout: 0,
  // Per-socket send buffer before publish/send skip a slow receiver. The
  // default (64 KiB) is meant for sparse traffic; a fan-out of 256 messages in
  // flight to 1,000 subscribers must not drop any.
  maxBackpressure: 16 * 1024 * 1024,
  closeOnBackpressureLimit: false,
};

let nextId = 0;

/** Upgrade with what the connection needs as its user data. */
function upgradeHub(res, req, context, room) {
  const id = ++nextId;
  const user = req.getQuery("user") || `anon-${id}`;
  res.upgrade(
    { id, user, room },
    req.getHeader("sec-websocket-key"),
    req.getHeader("sec-websocket-protocol"),
    req.getHeader("sec-websocket-extensions"),
    context,
  );
}

const hub = {
  ...common,
  open: (ws) => {
    const { id, user, room } = ws.getUserData();
    ws.send(JSON.stringify({ type: "welcome", connection_id: String(id), user }), false);
    if (room !== null) ws.subscribe(room);
  },
  message: (ws, message, isBinary) => {
    if (isBinary) return; // not part of the benchmarked subset
    let msg;
    try {
      msg = JSON.parse(Buffer.from(message).toString());
    } catch {
      ws.send(ERR_BAD_JSON, false);
      return;
    }
    if (msg === null || typeof msg !== "object") {
      ws.send(ERR_BAD_MESSAGE, false);
      return;
    }
    if (msg.type !== "message") {
      ws.send(ERR_UNKNOWN_TYPE, false);
      return;
    }
    if (typeof msg.room !== "string") {
      ws.send(ERR_BAD_MESSAGE, false);
      return;
    }
    const { user, room } = ws.getUserData();
    if (msg.room !== room) {
      ws.send(ERR_NOT_IN_ROOM, false);
      return;
    }
    const out = JSON.stringify({ type: "message", room, from: user, data: msg.data ?? null });
    ws.publish(room, out, false);
  },
  // Topic subscriptions end with the socket: nothing to clean up on close.
};

uWS
  .App()
  .ws("/ws", {
    ...hub,
    upgrade: (res, req, context) => upgradeHub(res, req, context, null),
  })
  .ws("/ws/:room", {
    ...hub,
    upgrade: (res, req, context) => {
      let room;
      try {
        room = decodeURIComponent(req.getParameter(0));
      } catch {
        res.writeStatus("404 Not Found").end();
        return;
      }
      upgradeHub(res, req, context, room);
    },
  })
  .ws("/echo", {
    ...common,
    message: (ws, message, isBinary) => {
      ws.send(message, isBinary);
    },
  })
  .any("/*", (res) => {
    res.writeStatus("404 Not Found").end();
  })
  .listen(host, port, (token) => {
    if (!token) {
      process.stderr.write(`cannot listen on ${host}:${port}\n`);
      process.exit(1);
    }
    const shown = host.includes(":") ? `[${host}]` : host;
    process.stderr.write(`listening on ${shown}:${uWS.us_socket_local_port(token)}\n`);
  });

function splitAddr(addr) {
  const at = addr.lastIndexOf(":");
  return [addr.slice(0, at).replace(/^\[|\]$/g, ""), Number(addr.slice(at + 1))];
}

process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
