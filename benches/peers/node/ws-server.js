#!/usr/bin/env node
// Benchmark peer: a room fan-out server on Node.js and the `ws` package that
// speaks the subset of switchboard's protocol that switchboard-load uses, so
// the same load tool can measure it.
//
//   node ws-server.js [IP:PORT]        (default 127.0.0.1:9001)
//
// - GET /ws/<room>?user=<id> and GET /ws?user=<id> upgrade; on open the server
//   sends {"type":"welcome","connection_id":"<n>","user":"<id>"} and joins the
//   room named in the URL, if any.
// - {"type":"message","room":R,"data":D} from a member of R is sent as
//   {"type":"message","room":R,"from":"<user>","data":D} to every other member
//   (encoded once, to one Buffer shared by every send); otherwise the sender
//   gets {"type":"error","code":"not_in_room"} (or bad_json, bad_message,
//   unknown_type).
// - GET /echo upgrades without a welcome and echoes every message.
// - Any other path: 404.
//
// Prints "listening on IP:PORT" on stderr once listening. Needs one file
// descriptor per connection: raise `ulimit -n` for tens of thousands.
"use strict";

const http = require("http");
const { WebSocketServer } = require("ws");

const [host, port] = splitAddr(process.argv[2] || "127.0.0.1:9001");

const MAX_PAYLOAD = 64 * 1024;
const ERR_BAD_JSON = '{"type":"error","code":"bad_json"}';
const ERR_BAD_MESSAGE = '{"type":"error","code":"bad_message"}';
const ERR_UNKNOWN_TYPE = '{"type":"error","code":"unknown_type"}';
const ERR_NOT_IN_ROOM = '{"type":"error","code":"not_in_room"}';
const AS_TEXT = { binary: false };

/** room name -> Set of sockets */
const rooms = new Map();
let nextId = 0;

const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
// ws's server defaults: no permessage-deflate; sockets get TCP_NODELAY.
const wss = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_PAYLOAD,
  clientTracking: false,
  perMessageDeflate: false,
});

server.on("upgrade", (req, socket, head) => {
  const route = parseRoute(req.url);
  if (route === null) {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (route.echo) {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
    } else {
      openHub(ws, route);
    }
  });
});

function openHub(ws, { room, user }) {
  const id = ++nextId;
  if (!user) user = `anon-${id}`;
  ws.send(JSON.stringify({ type: "welcome", connection_id: String(id), user }));
  if (room !== null) {
    let members = rooms.get(room);
    if (members === undefined) rooms.set(room, (members = new Set()));
    members.add(ws);
  }
  ws.on("message", (data, isBinary) => {
    if (isBinary) return; // not part of the benchmarked subset
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch {
      ws.send(ERR_BAD_JSON);
      return;
    }
    if (msg === null || typeof msg !== "object") {
      ws.send(ERR_BAD_MESSAGE);
      return;
    }
    if (msg.type !== "message") {
      ws.send(ERR_UNKNOWN_TYPE);
      return;
    }
    if (typeof msg.room !== "string") {
      ws.send(ERR_BAD_MESSAGE);
      return;
    }
    if (msg.room !== room) {
      ws.send(ERR_NOT_IN_ROOM);
      return;
    }
    const out = Buffer.from(
      JSON.stringify({ type: "message", room, from: user, data: msg.data ?? null }),
    );
    for (const member of rooms.get(room)) {
      if (member !== ws && member.readyState === 1) member.send(out, AS_TEXT);
    }
  });
  ws.on("close", () => {
    if (room === null) return;
    const members = rooms.get(room);
    if (members === undefined) return;
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  });
  ws.on("error", () => {});
}

/** "/ws/<room>?user=<id>", "/ws?user=<id>" or "/echo" -> route; else null. */
function parseRoute(url) {
  const q = url.indexOf("?");
  const path = q === -1 ? url : url.slice(0, q);
  if (path === "/echo") return { echo: true };
  let room;
  if (path === "/ws") {
    room = null;
  } else if (path.startsWith("/ws/") && path.length > 4 && path.indexOf("/", 4) === -1) {
    try {
      room = decodeURIComponent(path.slice(4));
    } catch {
      return null;
    }
  } else {
    return null;
  }
  const user = q === -1 ? null : new URLSearchParams(url.slice(q + 1)).get("user");
  return { echo: false, room, user };
}

function splitAddr(addr) {
  const at = addr.lastIndexOf(":");
  return [addr.slice(0, at).replace(/^\[|\]$/g, ""), Number(addr.slice(at + 1))];
}

server.listen({ host, port, backlog: 4096 }, () => {
  const a = server.address();
  const shown = a.family === "IPv6" ? `[${a.address}]` : a.address;
  process.stderr.write(`listening on ${shown}:${a.port}\n`);
});

process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
