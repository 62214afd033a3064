//! A blocking Rust client that reconnects by itself: one I/O thread owns the
//! socket (tungstenite's blocking client), the application talks to it
//! through a cloneable [`ClientHandle`] and receives [`Event`]s from a
//! channel. The same policy as the JavaScript client (README "Clients"):
//! exponential backoff with full jitter reset only by a `welcome`, rooms
//! joined again after every reconnect (with `since` in rooms with history,
//! so what was missed is replayed, and a repeated message is dropped),
//! close-code classes, and its own dead-connection timeout from the
//! `welcome`'s heartbeat settings.
//!
//! ```no_run
//! use switchboard::client::{Client, ClientConfig, Event};
//! let (client, events) = Client::connect(ClientConfig::new("ws://127.0.0.1:8080/ws?user=ann"));
//! client.join("lobby").unwrap();
//! client.send("lobby", &serde_json::json!({"text": "hi"})).unwrap();
//! for event in events {
//!     if let Event::Message(m) = event {
//!         println!("{m}");
//!     }
//! }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Asked for a new token after a close with 4001 (token expired), on the
/// client's I/O thread; `None` makes that close final.
#[derive(Clone)]
pub struct TokenSource(pub Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// How a [`Client`] connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws...` (with `?user=` or `?token=` as the server wants).
    pub url: String,
    /// First reconnect delay.
    pub min_delay: Duration,
    /// Longest reconnect delay.
    pub max_delay: Duration,
    /// How long a request waits for its reply.
    pub request_timeout: Duration,
    /// How long a TCP connect and handshake may take.
    pub connect_timeout: Duration,
    /// After 4001 (token expired): a new token for `?token=`, then the
    /// client reconnects. Without it 4001 is final.
    pub get_token: Option<TokenSource>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            get_token: None,
        }
    }
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    Disconnected,
}

/// What the client tells the application.
#[derive(Debug, Clone)]
pub enum Event {
    State(State),
    /// The `welcome` of a new connection.
    Connected(Value),
    /// The connection ended; `will_reconnect` says whether it tries again.
    Disconnected {
        code: u16,
        reason: String,
        will_reconnect: bool,
    },
    /// Any other server message (`message`, `private`, `user_joined`, …).
    Message(Value),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server answered with an `error` (its code and message).
    Refused { code: String, message: String },
    /// Not connected now (nothing is queued).
    NotConnected,
    /// No reply within the request timeout.
    Timeout,
    /// The connection ended before the reply.
    Disconnected,
    /// The client was closed.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused { code, message } => write!(f, "{code}: {message}"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for ClientError {}

type Reply = Sender<Result<Value, ClientError>>;

enum Command {
    Send(Value),
    Request(Value, Reply),
    Join(String, Reply),
    Leave(String, Reply),
    Close,
}

/// The application's side of a client: cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub struct ClientHandle {
    tx: Sender<Command>,
    timeout: Duration,
}

/// Starts clients.
pub struct Client;

impl Client {
    /// Start connecting (on a thread of its own); events come on the
    /// receiver until the client is closed or gives up.
    pub fn connect(config: ClientConfig) -> (ClientHandle, Receiver<Event>) {
        let (tx, commands) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let timeout = config.request_timeout;
        let _thread: JoinHandle<()> = std::thread::Builder::new()
            .name("switchboard-client".into())
            .spawn(move || IoThread::new(config, commands, events_tx).run())
            .expect("spawn the client thread");
        (ClientHandle { tx, timeout }, events)
    }
}

impl ClientHandle {
    fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<Value, ClientError> {
        let (reply, answer) = mpsc::channel();
        self.tx.send(make(reply)).map_err(|_| ClientError::Closed)?;
        match answer.recv_timeout(self.timeout + Duration::from_secs(1)) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        }
    }

    /// Join `room` (and again after every reconnect); the `joined` reply.
    pub fn join(&self, room: &str) -> Result<Value, ClientError> {
        self.ask(|r| Command::Join(room.to_string(), r))
    }

    /// Leave `room` (and forget it); the `left` reply.
    pub fn leave(&self, room: &str) -> Result<Value, ClientError> {
        self.ask(|r| Command::Leave(room.to_string(), r))
    }

    /// Any request: a `ref` is added; the reply that carries it.
    pub fn request(&self, message: Value) -> Result<Value, ClientError> {
        self.ask(|r| Command::Request(message, r))
    }

    /// A room message (fire and forget; sent only while connected).
    pub fn send(&self, room: &str, data: &Value) -> Result<(), ClientError> {
        self.fire(json!({"type": "message", "room": room, "data": data}))
    }

    pub fn private(&self, user: &str, data: &Value) -> Result<(), ClientError> {
        self.fire(json!({"type": "private", "to": user, "data": data}))
    }

    pub fn broadcast(&self, data: &Value) -> Result<(), ClientError> {
        self.fire(json!({"type": "broadcast", "data": data}))
    }

    fn fire(&self, message: Value) -> Result<(), ClientError> {
        self.tx
            .send(Command::Send(message))
            .map_err(|_| ClientError::Closed)
    }

    /// Close with 1000 and stop; the event channel then ends.
    pub fn close(&self) {
        let _ = self.tx.send(Command::Close);
    }
}

/// The reconnect delay before attempt `attempt` (0-based): `min(max, min +
/// random(0, min(max, min·2^attempt)))`, with `random01` in `[0, 1)`.
pub fn backoff(attempt: u32, min: Duration, max: Duration, random01: f64) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    (min + cap.mul_f64(random01.clamp(0.0, 1.0))).min(max)
}

/// `url` with its `token` query parameter set to `token` (replaced if
/// there is one, appended otherwise), percent-encoded.
pub fn with_token(url: &str, token: &str) -> String {
    let mut encoded = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && *p != "token" && !p.starts_with("token="))
        .map(str::to_string)
        .collect();
    params.push(format!("token={encoded}"));
    format!("{base}?{}", params.join("&"))
}

/// Whether a close with `code` is followed by a reconnect.
pub fn reconnects_after(code: u16) -> bool {
    !matches!(code, 1000 | 1002 | 1003 | 1007 | 1009 | 4000..=4099)
}

/// The reconnect schedule, pure: the time comes in as an argument (so its
/// rules are tested with a fake clock) and the randomness from a seeded
/// xorshift. Only a `welcome` resets it: a server that accepts and closes
/// at once still gets growing delays, never a storm.
#[derive(Debug, Clone)]
pub struct Reconnect {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Reconnect {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Reconnect {
        Reconnect {
            min,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// A `welcome` arrived: the next drop starts from the shortest delay.
    pub fn welcomed(&mut self) {
        self.attempt = 0;
    }

    /// The connection ended with `code` at `now`: when to try again, or
    /// `None` when this close is final.
    pub fn next_attempt(&mut self, code: u16, now: Instant) -> Option<Instant> {
        if !reconnects_after(code) {
            return None;
        }
        Some(self.retry(now))
    }

    /// When to try again whatever the close (a refreshed token after 4001).
    pub fn retry(&mut self, now: Instant) -> Instant {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let random01 = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let delay = backoff(self.attempt, self.min, self.max, random01);
        self.attempt = self.attempt.saturating_add(1);
        now + delay
    }
}

/// The rooms a client is in and, in rooms with history, its place in each
/// (`epoch`, last `seq` seen): sent as `since` when it joins again, and
/// what tells a message already seen from a new one.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: BTreeMap<String, Option<Place>>,
}

#[derive(Debug)]
struct Place {
    epoch: String,
    seq: u64,
    /// The last `joined` said this epoch: messages are counted against
    /// it. After a `joined` without one (the cluster could not be asked)
    /// the place is only what the next rejoin sends as `since`.
    current: bool,
}

impl Rooms {
    /// Remember `room` (its place, if known, is kept).
    pub fn add(&mut self, room: &str) {
        self.rooms.entry(room.to_string()).or_insert(None);
    }

    /// Forget `room` and its place: a later join starts afresh.
    pub fn remove(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    pub fn names(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// Where the client is in `room`'s history, if it has one.
    pub fn place(&self, room: &str) -> Option<(&str, u64)> {
        self.rooms
            .get(room)
            .and_then(|p| p.as_ref())
            .map(|p| (p.epoch.as_str(), p.seq))
    }

    /// The `join` for `room`: with `since` once its place is known.
    pub fn join_message(&self, room: &str) -> Value {
        match self.place(room) {
            Some((epoch, seq)) => {
                json!({"type": "join", "room": room, "since": {"epoch": epoch, "seq": seq}})
            }
            None => json!({"type": "join", "room": room}),
        }
    }

    /// Note a server message; `false` for a room message already seen (a
    /// replay overlapping what arrived), which the application should not
    /// get again.
    pub fn on_server(&mut self, v: &Value) -> bool {
        let Some(Some(room)) = v["room"].as_str().map(|r| self.rooms.get_mut(r)) else {
            return true;
        };
        match v["type"].as_str() {
            Some("joined") => {
                // Without an epoch (no history, or the cluster could not
                // be asked) the place stays for the next rejoin, but what
                // comes is not counted against it (its epoch is unknown).
                let (Some(epoch), Some(seq)) = (v["epoch"].as_str(), v["seq"].as_u64()) else {
                    if let Some(p) = room.as_mut().filter(|_| v["recovered"] == false) {
                        p.current = false;
                    }
                    return true;
                };
                // Recovered: the missed messages follow and move the place
                // on. Otherwise (first join, or not recoverable) the place
                // is the room's latest.
                match room {
                    Some(p) if v["recovered"] == true && p.epoch == epoch => p.current = true,
                    _ => {
                        *room = Some(Place {
                            epoch: epoch.to_string(),
                            seq,
                            current: true,
                        })
                    }
                }
                true
            }
            Some("message") => match (v["seq"].as_u64(), room.as_mut()) {
                (Some(seq), Some(p)) if p.current && seq <= p.seq => false,
                (Some(seq), Some(p)) if p.current => {
                    p.seq = seq;
                    true
                }
                _ => true,
            },
            _ => true,
        }
    }
}

/// How often the I/O thread looks at its commands and timers.
const TICK: Duration = Duration::from_millis(20);

struct IoThread {
    config: ClientConfig,
    commands: Receiver<Command>,
    events: Sender<Event>,
    rooms: Rooms,
    pending: HashMap<u64, (Reply, Instant)>,
    next_ref: u64,
    reconnect: Reconnect,
}

/// Why a connection could not be opened.
enum Open {
    /// `401` at the handshake: the token is missing, wrong or expired.
    Unauthorized,
    Failed,
}

/// How a connection ended.
enum End {
    Closed(u16, String),
    Stop,
}

impl IoThread {
    fn new(config: ClientConfig, commands: Receiver<Command>, events: Sender<Event>) -> IoThread {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        IoThread {
            reconnect: Reconnect::new(config.min_delay, config.max_delay, seed),
            config,
            commands,
            events,
            rooms: Rooms::default(),
            pending: HashMap::new(),
            next_ref: 1,
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn run(mut self) {
        loop {
            self.emit(Event::State(State::Connecting));
            let end = match self.open() {
                Ok(ws) => self.serve(ws),
                // The token was refused at the handshake (expired while
                // disconnected): the same as an expiry while connected.
                Err(Open::Unauthorized) => End::Closed(4001, "token refused (401)".into()),
                Err(Open::Failed) => End::Closed(1006, "connect failed".into()),
            };
            self.fail_pending(ClientError::Disconnected);
            let (code, reason) = match end {
                End::Stop => {
                    self.emit(Event::State(State::Disconnected));
                    return;
                }
                End::Closed(code, reason) => (code, reason),
            };
            let next = match &self.config.get_token {
                // Expired: a new token, then a reconnect like any other.
                Some(source) if code == 4001 => (source.0)().map(|token| {
                    self.config.url = with_token(&self.config.url, &token);
                    self.reconnect.retry(Instant::now())
                }),
                _ => self.reconnect.next_attempt(code, Instant::now()),
            };
            self.emit(Event::State(State::Disconnected));
            self.emit(Event::Disconnected {
                code,
                reason,
                will_reconnect: next.is_some(),
            });
            let Some(at) = next else {
                self.wait_for_close();
                return;
            };
            if self.idle_until(at) {
                self.emit(Event::State(State::Disconnected));
                return;
            }
        }
    }

    /// While not connected: refuse sends, wait until `until`; true on close.
    fn idle_until(&mut self, until: Instant) -> bool {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.commands.recv_timeout(left) {
                Ok(Command::Close) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(cmd) => self.refuse(cmd),
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// After a final close: answer commands until closed.
    fn wait_for_close(&mut self) {
        while let Ok(cmd) = self.commands.recv() {
            if matches!(cmd, Command::Close) {
                return;
            }
            self.refuse(cmd);
        }
    }

    fn refuse(&mut self, cmd: Command) {
        match cmd {
            Command::Join(room, reply) => {
                self.rooms.add(&room);
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Command::Leave(room, reply) => {
                self.rooms.remove(&room);
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Command::Request(_, reply) => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
            Command::Send(_) | Command::Close => {}
        }
    }

    fn open(&self) -> Result<WebSocket<TcpStream>, Open> {
        let connect = || -> io::Result<TcpStream> {
            let rest = self
                .config
                .url
                .strip_prefix("ws://")
                .ok_or_else(|| io::Error::other("only ws:// URLs"))?;
            let hostport = rest.split('/').next().unwrap_or(rest);
            let addr = hostport
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::other("no address"))?;
            let stream = TcpStream::connect_timeout(&addr, self.config.connect_timeout)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.config.connect_timeout))?;
            Ok(stream)
        };
        let stream = connect().map_err(|_| Open::Failed)?;
        let (ws, _) = match tungstenite::client::client(self.config.url.as_str(), stream) {
            Ok(done) => done,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)))
                if r.status() == 401 =>
            {
                return Err(Open::Unauthorized)
            }
            Err(_) => return Err(Open::Failed),
        };
        ws.get_ref()
            .set_read_timeout(Some(TICK))
            .map_err(|_| Open::Failed)?;
        Ok(ws)
    }

    fn send_json(ws: &mut WebSocket<TcpStream>, v: &Value) -> bool {
        ws.send(Message::text(v.to_string())).is_ok()
    }

    fn serve(&mut self, mut ws: WebSocket<TcpStream>) -> End {
        let mut connected = false;
        let mut heard = Instant::now();
        let mut pinged = false;
        let (mut interval, mut dead) = (Duration::from_secs(30), Duration::from_secs(40));
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    heard = Instant::now();
                    pinged = false;
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if v["type"] == "welcome" {
                        connected = true;
                        self.reconnect.welcomed();
                        let secs = |k: &str, d: f64| {
                            Duration::from_secs_f64(v["heartbeat"][k].as_f64().unwrap_or(d))
                        };
                        interval = secs("ping_interval", 30.0);
                        dead = interval + secs("ping_timeout", 10.0);
                        self.emit(Event::State(State::Connected));
                        self.emit(Event::Connected(v.clone()));
                        for room in self.rooms.names() {
                            let mut join = self.rooms.join_message(&room);
                            join["ref"] = json!(self.next_ref);
                            self.next_ref += 1;
                            Self::send_json(&mut ws, &join);
                        }
                        continue;
                    }
                    if !self.rooms.on_server(&v) {
                        continue; // seen before the connection was lost
                    }
                    if let Some(r) = v.get("ref").and_then(Value::as_u64) {
                        if let Some((reply, _)) = self.pending.remove(&r) {
                            let result = if v["type"] == "error" {
                                Err(ClientError::Refused {
                                    code: v["code"].as_str().unwrap_or("").into(),
                                    message: v["message"].as_str().unwrap_or("").into(),
                                })
                            } else {
                                Ok(v.clone())
                            };
                            let _ = reply.send(result);
                        }
                    }
                    self.emit(Event::Message(v));
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_string())
                    });
                    let _ = ws.flush();
                    return End::Closed(code, reason);
                }
                Ok(_) => {
                    heard = Instant::now();
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return End::Closed(1006, "connection lost".into()),
            }
            // Commands.
            while let Ok(cmd) = self.commands.try_recv() {
                let ok = match cmd {
                    Command::Close => {
                        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        }));
                        let _ = ws.flush();
                        return End::Stop;
                    }
                    cmd if !connected => {
                        self.refuse(cmd);
                        true
                    }
                    Command::Send(v) => Self::send_json(&mut ws, &v),
                    Command::Request(mut v, reply) => self.send_request(&mut ws, &mut v, reply),
                    Command::Join(room, reply) => {
                        self.rooms.add(&room);
                        let mut v = self.rooms.join_message(&room);
                        self.send_request(&mut ws, &mut v, reply)
                    }
                    Command::Leave(room, reply) => {
                        self.rooms.remove(&room);
                        let mut v = json!({"type": "leave", "room": room});
                        self.send_request(&mut ws, &mut v, reply)
                    }
                };
                if !ok {
                    return End::Closed(1006, "connection lost".into());
                }
            }
            // Timers: request timeouts, our ping, the dead-connection limit.
            let now = Instant::now();
            let timeout = self.config.request_timeout;
            self.pending.retain(|_, (reply, at)| {
                let late = now.saturating_duration_since(*at) >= timeout;
                if late {
                    let _ = reply.send(Err(ClientError::Timeout));
                }
                !late
            });
            if connected {
                let silent = now.saturating_duration_since(heard);
                if silent >= dead {
                    return End::Closed(4190, "no heartbeat".into());
                }
                if silent >= interval && !pinged {
                    pinged = true;
                    Self::send_json(&mut ws, &json!({"type": "ping"}));
                }
            }
        }
    }

    fn send_request(&mut self, ws: &mut WebSocket<TcpStream>, v: &mut Value, reply: Reply) -> bool {
        let r = self.next_ref;
        self.next_ref += 1;
        v["ref"] = json!(r);
        self.pending.insert(r, (reply, Instant::now()));
        Self::send_json(ws, v)
    }

    fn fail_pending(&mut self, why: ClientError) {
        for (_, (reply, _)) in self.pending.drain() {
            let _ = reply.send(Err(why.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_between_min_and_the_growing_cap() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(20));
        assert_eq!(backoff(0, min, max, 0.0), min);
        assert_eq!(
            backoff(0, min, max, 0.999_999),
            Duration::from_millis(1000) - Duration::from_nanos(500)
        );
        assert_eq!(backoff(3, min, max, 0.5), Duration::from_millis(500 + 2000));
        // The cap grows to max and stays there, whatever the attempt.
        assert_eq!(backoff(10, min, max, 1.0), max);
        assert_eq!(backoff(200, min, max, 0.25), Duration::from_millis(5500));
        for a in 0..40 {
            for r in [0.0, 0.3, 0.7, 0.99] {
                let d = backoff(a, min, max, r);
                assert!(d >= min && d <= max, "{a} {r} {d:?}");
            }
        }
    }

    /// The schedule with a fake clock: each delay within full jitter of the
    /// growing cap, no storm from a server that closes before `welcome`, a
    /// `welcome` starting again from `min`, final codes ending it.
    #[test]
    fn reconnect_schedule_with_a_fake_clock() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(20));
        let start = Instant::now();
        for seed in [1, 7, 0xdead_beef, u64::MAX] {
            let mut r = Reconnect::new(min, max, seed);
            let mut now = start;
            // Twelve drops in a row with no welcome (a server that closes
            // right after the handshake): the delays grow to the cap.
            let mut total = Duration::ZERO;
            for attempt in 0..12u32 {
                let at = r.next_attempt(1006, now).expect("1006 reconnects");
                let delay = at - now;
                let cap = min.saturating_mul(1 << attempt).min(max);
                assert!(
                    delay >= min && delay <= (min + cap).min(max),
                    "{attempt}: {delay:?}"
                );
                total += delay;
                now = at;
            }
            // At least min each, and far fewer than a tight loop would make.
            assert!(total >= min * 12, "{total:?}");
            // A welcome: the next drop is at most min + min away again.
            r.welcomed();
            let delay = r.next_attempt(1012, now).unwrap() - now;
            assert!(delay >= min && delay <= min * 2, "{delay:?}");
            // Final codes: no attempt at all.
            for code in [1000, 1002, 4000, 4001] {
                assert_eq!(r.next_attempt(code, now), None, "{code}");
            }
        }
        // Different seeds spread the same attempt apart (jitter).
        let firsts: Vec<_> = (1..20u64)
            .map(|seed| {
                Reconnect::new(min, max, seed * 7919)
                    .next_attempt(1006, start)
                    .unwrap()
            })
            .collect();
        assert!(firsts.iter().any(|t| *t != firsts[0]));
    }

    #[test]
    fn a_new_token_replaces_the_old_one_in_the_url() {
        assert_eq!(with_token("ws://h/ws", "a.b_c"), "ws://h/ws?token=a.b_c");
        assert_eq!(
            with_token("ws://h/ws/r?token=old&user=x", "new"),
            "ws://h/ws/r?user=x&token=new"
        );
        assert_eq!(
            with_token("ws://h/ws?tokenish=1", "a+b/="),
            "ws://h/ws?tokenish=1&token=a%2Bb%2F%3D"
        );
    }

    #[test]
    fn rooms_remember_their_place_and_drop_what_was_seen() {
        let mut rooms = Rooms::default();
        rooms.add("r");
        assert_eq!(
            rooms.join_message("r"),
            json!({"type": "join", "room": "r"})
        );
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "epoch": "e", "seq": 4})));
        let message = |seq| json!({"type": "message", "room": "r", "seq": seq, "data": 1});
        assert!(rooms.on_server(&message(5)));
        assert_eq!(rooms.place("r"), Some(("e", 5)));
        assert_eq!(
            rooms.join_message("r")["since"],
            json!({"epoch": "e", "seq": 5})
        );
        // Recovered: the place stays until the replay moves it; a message
        // seen twice is dropped.
        let recovered =
            json!({"type": "joined", "room": "r", "epoch": "e", "seq": 7, "recovered": true});
        assert!(rooms.on_server(&recovered));
        assert_eq!(rooms.place("r"), Some(("e", 5)));
        assert!(!rooms.on_server(&message(5)));
        assert!(rooms.on_server(&message(6)) && rooms.on_server(&message(7)));
        assert!(!rooms.on_server(&message(7)));
        // Not recovered: the place is the room's latest, in its epoch.
        let lost =
            json!({"type": "joined", "room": "r", "epoch": "f", "seq": 2, "recovered": false});
        assert!(rooms.on_server(&lost));
        assert_eq!(rooms.place("r"), Some(("f", 2)));
        // Other rooms and messages without seq pass; leaving forgets.
        assert!(rooms.on_server(&json!({"type": "message", "room": "x", "seq": 1})));
        assert!(rooms.on_server(&json!({"type": "message", "room": "r", "data": 1})));
        rooms.remove("r");
        rooms.add("r");
        assert_eq!(rooms.place("r"), None);
        // A room without history has no place; a joined without an epoch
        // (the cluster could not be asked) leaves a place as it is.
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "members": 1})));
        assert_eq!(
            rooms.join_message("r"),
            json!({"type": "join", "room": "r"})
        );
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "epoch": "g", "seq": 1})));
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "recovered": false})));
        assert_eq!(rooms.place("r"), Some(("g", 1)));
        // … and what comes then (of an epoch not known) is neither dropped
        // nor counted.
        assert!(rooms.on_server(&json!({"type": "message", "room": "r", "seq": 1})));
        assert!(rooms.on_server(&json!({"type": "message", "room": "r", "seq": 9})));
        assert_eq!(rooms.place("r"), Some(("g", 1)));
        // A joined without an epoch that is no failed recovery (a room
        // without history here) changes nothing.
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "epoch": "h", "seq": 3})));
        assert!(rooms.on_server(&json!({"type": "joined", "room": "r", "members": 2})));
        assert!(!rooms.on_server(&json!({"type": "message", "room": "r", "seq": 3})));
    }

    #[test]
    fn close_codes_decide_the_reconnect() {
        for code in [1000, 1002, 1003, 1007, 1009, 4000, 4001, 4003, 4099] {
            assert!(!reconnects_after(code), "{code}");
        }
        for code in [1001, 1006, 1008, 1011, 1012, 1013, 4100, 4101, 4190, 4199] {
            assert!(reconnects_after(code), "{code}");
        }
    }
}
