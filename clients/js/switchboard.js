// switchboard client: one ES module, no dependencies, no build step.
// Served by the daemon at GET /client.js (the same file, embedded).
//
//   import { Switchboard } from "/client.js";
//   const sb = new Switchboard("ws://127.0.0.1:8080/ws", { token, getToken, WebSocket });
//   sb.on("message", (m) => console.log(m.room, m.from, m.data));
//   await sb.join("lobby");
//   sb.send("lobby", { text: "hi" });
//
// Reconnects by itself (exponential backoff with full jitter, reset only by
// a `welcome`), joins its rooms again after every reconnect (in rooms with
// history with `since`, so what was missed is replayed and nothing is seen
// twice; `joined.recovered === false` means reload), and detects a dead
// connection from the server's heartbeat settings. See README "Clients"
// and "History and recovery" for the whole contract.

/** Close codes after which the client does not reconnect. */
const FINAL = new Set([1000, 1002, 1003, 1007, 1009]);
/** Error codes of a failed rejoin after which the room is kept. */
const TRANSIENT = new Set(["timeout", "disconnected", "not_connected", "unavailable", "rate_limited"]);

export class Switchboard {
  /**
   * @param {string} url `ws://host:port/ws` (or `/ws/<room>`)
   * @param {object} [options]
   * @param {string} [options.token] sent as `?token=`
   * @param {() => Promise<string>} [options.getToken] asked for a new token
   *   after 4001 (token expired) and after a connection that ended before
   *   its `welcome` (a browser does not show a 401), then the client
   *   reconnects
   * @param {number} [options.minDelay] first reconnect delay, ms (500)
   * @param {number} [options.maxDelay] longest reconnect delay, ms (20000)
   * @param {number} [options.requestTimeout] ms a request waits (10000)
   * @param {number} [options.connectTimeout] ms from opening a socket to
   *   its `welcome` before it is given up and retried (10000)
   * @param {Function} [options.WebSocket] constructor (Node: `ws`)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.token = options.token;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 20000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket");
    this.state = "disconnected";
    this.welcome = null;
    this.rooms = new Set();
    /** Rooms with history: room -> { epoch, seq } last seen, and whether
     * the last `joined` said that epoch (`current`). */
    this.places = new Map();
    this.handlers = new Map();
    this.pending = new Map();
    this.nextRef = 1;
    this.attempt = 0;
    this.ws = null;
    this.closed = false;
    this.timers = { retry: null, ping: null, dead: null, connect: null };
    this.lastHeard = 0;
    this.browser = typeof window !== "undefined" && typeof window.addEventListener === "function";
    if (this.browser) {
      this.onOnline = () => {
        if (this.state === "disconnected" && !this.closed) this.connectNow();
      };
      this.onOffline = () => this.drop(4190, "offline");
      this.onVisible = () => {
        if (document.visibilityState === "visible") this.checkAlive();
      };
      window.addEventListener("online", this.onOnline);
      window.addEventListener("offline", this.onOffline);
      document.addEventListener("visibilitychange", this.onVisible);
    }
    this.connect();
  }

  /** Listen to `event`; returns a function that stops listening. */
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return () => this.handlers.get(event)?.delete(fn);
  }

  emit(event, value) {
    for (const fn of [...(this.handlers.get(event) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  setState(to) {
    if (this.state === to) return;
    const from = this.state;
    this.state = to;
    this.emit("state", { from, to });
  }

  connect() {
    if (this.closed) return;
    this.welcomed = false;
    this.setState("connecting");
    let url = this.url;
    if (this.token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    const ws = new this.WebSocket(url);
    this.ws = ws;
    // Every handler checks that its socket is still the current one: a
    // late event from an old socket never touches the new one.
    ws.onmessage = (e) => {
      if (this.ws === ws) this.onFrame(e.data);
    };
    ws.onclose = (e) => {
      if (this.ws === ws) this.onClose(e.code, e.reason);
    };
    ws.onerror = () => {};
    // A server that accepts but never says welcome (stopped, or a silent
    // network) is given up like a dead one.
    clearTimeout(this.timers.connect);
    this.timers.connect = setTimeout(() => {
      if (this.ws === ws && this.state === "connecting") this.drop(4190, "connect timed out");
    }, this.connectTimeout);
  }

  connectNow() {
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.connect();
  }

  onFrame(data) {
    this.lastHeard = Date.now();
    this.armDeadTimer();
    if (typeof data !== "string") {
      this.emit("binary", data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "welcome") {
      this.welcome = msg;
      this.welcomed = true;
      this.attempt = 0;
      clearTimeout(this.timers.connect);
      this.setState("connected");
      // The rooms as they were: a join made in a `connected` handler is
      // not sent twice.
      const again = [...this.rooms];
      this.emit("connected", msg);
      this.armPing();
      for (const room of again) {
        this.request(this.joinMessage(room)).catch((e) => {
          // Refused (forbidden, a cap…): forgotten, not asked again after
          // every reconnect. Transient failures keep the room.
          if (!TRANSIENT.has(e.code)) this.forget(room);
          this.emit("rejoin_failed", { room, error: e });
        });
      }
    }
    if (!this.notePlace(msg)) return; // a message seen before the reconnect
    if (msg.ref !== undefined && this.pending.has(msg.ref)) {
      const p = this.pending.get(msg.ref);
      this.pending.delete(msg.ref);
      clearTimeout(p.timer);
      if (msg.type === "error") {
        // Answered through the promise, not also as an `error` event.
        const err = new Error(msg.message);
        err.code = msg.code;
        p.reject(err);
        return;
      } else {
        p.resolve(msg);
      }
    }
    this.emit(msg.type, msg);
  }

  /** `join`, with `since` once the room's place is known. */
  joinMessage(room) {
    const place = this.places.get(room);
    return place ? { type: "join", room, since: { epoch: place.epoch, seq: place.seq } } : { type: "join", room };
  }

  /** Keep each room's place; false for a room message already seen. */
  notePlace(msg) {
    if (!this.rooms.has(msg.room)) return true;
    const place = this.places.get(msg.room);
    if (msg.type === "joined") {
      // Without an epoch (no history, or the cluster could not be asked)
      // the place stays for the next rejoin, but what comes is not counted
      // against it. Recovered: the replay that follows moves it on.
      // Otherwise (a first join, or not recoverable) it is the room's latest.
      if (msg.epoch === undefined) {
        if (place && msg.recovered === false) place.current = false;
      } else if (msg.recovered === true && place && place.epoch === msg.epoch) {
        place.current = true;
      } else {
        this.places.set(msg.room, { epoch: msg.epoch, seq: msg.seq, current: true });
      }
    } else if (msg.type === "message" && msg.seq !== undefined && place?.current) {
      if (msg.seq <= place.seq) return false;
      place.seq = msg.seq;
    }
    return true;
  }

  forget(room) {
    this.rooms.delete(room);
    this.places.delete(room);
  }

  /** Interval (ms) after which silence is answered with a ping, and the
   * whole time (ms) after which silence means a dead connection. */
  heartbeat() {
    const hb = this.welcome?.heartbeat;
    const interval = (hb?.ping_interval ?? 30) * 1000;
    return { interval, dead: interval + (hb?.ping_timeout ?? 10) * 1000 };
  }

  armPing() {
    clearInterval(this.timers.ping);
    const { interval } = this.heartbeat();
    this.timers.ping = setInterval(() => {
      if (this.state !== "connected") return;
      if (Date.now() - this.lastHeard >= interval) this.raw({ type: "ping" });
    }, Math.max(250, interval / 2));
    this.armDeadTimer();
  }

  armDeadTimer() {
    if (this.state !== "connected") return;
    clearTimeout(this.timers.dead);
    this.timers.dead = setTimeout(() => this.drop(4190, "no heartbeat"), this.heartbeat().dead);
  }

  checkAlive() {
    if (this.state === "connected" && Date.now() - this.lastHeard >= this.heartbeat().dead) {
      this.drop(4190, "no heartbeat");
    }
  }

  /** Give up on the current socket and reconnect (as after a 1006). */
  drop(code, reason) {
    const ws = this.ws;
    if (!ws || this.closed) return;
    this.ws = null;
    try {
      ws.close();
    } catch {}
    this.onClose(code, reason);
  }

  onClose(code, reason) {
    this.ws = null;
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.connect);
    this.failPending("disconnected");
    // Expired, or refused before the welcome (perhaps a 401, which a
    // browser reports as 1006): ask for a token before the next attempt.
    const expired = (code === 4001 || !this.welcomed) && Boolean(this.options.getToken);
    const willReconnect =
      !this.closed && !FINAL.has(code) && (expired || code < 4000 || code >= 4100);
    this.setState("disconnected");
    this.emit("disconnected", { code, reason, willReconnect });
    if (!willReconnect) return;
    if (expired) {
      Promise.resolve(this.options.getToken())
        .then((token) => {
          this.token = token;
          this.schedule();
        })
        .catch(() => this.schedule());
      return;
    }
    this.schedule();
  }

  /** Exponential backoff with full jitter, counted until a `welcome`. */
  schedule() {
    if (this.closed) return;
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    const delay = Math.min(this.maxDelay, this.minDelay + Math.random() * cap);
    this.attempt += 1;
    this.timers.retry = setTimeout(() => {
      this.timers.retry = null;
      this.connect();
    }, delay);
  }

  failPending(why) {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      const err = new Error(why);
      err.code = why;
      p.reject(err);
    }
    this.pending.clear();
  }

  raw(obj) {
    if (this.state !== "connected" || !this.ws) {
      const err = new Error("not connected");
      err.code = "not_connected";
      throw err;
    }
    this.ws.send(JSON.stringify(obj));
  }

  /** Send `obj` with a `ref`; resolves with the reply that carries it,
   * rejects on an `error` reply (`.code`), a disconnect or the timeout. */
  request(obj) {
    return new Promise((resolve, reject) => {
      const ref = this.nextRef++;
      try {
        this.raw({ ...obj, ref });
      } catch (e) {
        reject(e);
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        const err = new Error("timed out");
        err.code = "timeout";
        reject(err);
      }, this.requestTimeout);
      this.pending.set(ref, { resolve, reject, timer });
    });
  }

  /** Join `room` (and again after every reconnect); the `joined` reply. */
  join(room) {
    this.rooms.add(room);
    return this.request(this.joinMessage(room)).catch((e) => {
      // Refused: not remembered. Not connected (or a passing failure):
      // remembered, joined at the next welcome.
      if (!TRANSIENT.has(e.code)) this.forget(room);
      throw e;
    });
  }

  leave(room) {
    this.forget(room);
    return this.request({ type: "leave", room });
  }

  /** A room message; `{ echo: true }` sends it back to this connection too. */
  send(room, data, options = {}) {
    this.raw(options.echo ? { type: "message", room, data, echo: true } : { type: "message", room, data });
  }

  private(user, data) {
    this.raw({ type: "private", to: user, data });
  }

  broadcast(data) {
    this.raw({ type: "broadcast", data });
  }

  /** Close with 1000; no reconnect; every timer and listener removed. */
  close() {
    this.closed = true;
    clearTimeout(this.timers.retry);
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.connect);
    if (this.browser) {
      window.removeEventListener("online", this.onOnline);
      window.removeEventListener("offline", this.onOffline);
      document.removeEventListener("visibilitychange", this.onVisible);
    }
    this.failPending("closed");
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000);
      } catch {}
    }
    this.setState("disconnected");
    this.handlers.clear();
  }
}
