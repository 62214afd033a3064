//! The mio side: one thread, one `Poll`. Accepts, reads request heads, runs the
//! tungstenite handshake, reads frames into the hub, and writes what the hub
//! decided — each dirty connection flushed once per loop iteration.

mod conn;
pub mod http;
mod outq;
mod rx;
mod sys;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::handshake::server::{NoCallback, ServerHandshake};
use tungstenite::handshake::HandshakeError;
use tungstenite::Error as WsError;

use self::conn::{close_frame, close_reply, control_frame, Conn, State};
pub use self::outq::OutQueue;
use self::rx::{Event, Partial, Step, Violation};
use crate::config::Config;
use crate::hub::{ConnId, Hub, Kind, OpenRequest, Output};
use crate::protocol::CloseReason;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Messages read from one connection per readiness event before the loop
/// moves on to others (fairness); the rest is read on the next iteration.
const READ_BUDGET: usize = 256;
/// Handshaking connections allowed beyond `max_connections` before new
/// sockets are closed at accept (bounds descriptors and memory).
const HANDSHAKE_SLACK: usize = 1024;
/// How long accepting pauses after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The shared read buffer: every socket is read into it, frames parsed in place.
const SCRATCH: usize = 64 * 1024;
/// A protocol Ping with an empty payload.
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// What a read pass left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The socket may have more: read again (within the budget).
    More,
    /// The socket is drained; wait for the next readiness event.
    Drained,
    /// The connection was closed or dropped.
    Stop,
}

/// Counters kept by the driver (the hub keeps its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverCounters {
    /// Frames queued to clients (one per recipient).
    pub messages_out: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Handshakes refused with an HTTP error.
    pub handshakes_refused: u64,
    /// Connections closed as slow consumers (4101).
    pub slow_consumer_closes: u64,
    /// Failed `accept` calls (out of descriptors or memory).
    pub accept_errors: u64,
}

/// The switchboard server: `Server::bind(config)?.run()`.
pub struct Server {
    config: Config,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    handle_signals: bool,
}

impl Server {
    /// Bind the listening socket (port 0 picks a free port).
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        Ok(Server {
            config,
            poll,
            listener,
            local_addr,
            handle_signals: false,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shut down gracefully on SIGINT/SIGTERM (the daemon turns this on).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Run until a shutdown signal; returns once every client got its close.
    pub fn run(self) -> io::Result<()> {
        let now = Instant::now();
        let mut signals = None;
        if self.handle_signals {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let mut s = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
            self.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            signals = Some(s);
        }
        let mut driver = Driver {
            hub: Hub::new(self.config.hub.clone(), now),
            scratch: vec![0; SCRATCH],
            config: self.config,
            poll: self.poll,
            listener: Some(self.listener),
            signals,
            conns: Slab::new(),
            dirty: Vec::new(),
            slow: Vec::new(),
            again: Vec::new(),
            handshakes: VecDeque::new(),
            closings: VecDeque::new(),
            generation: 0,
            counters: DriverCounters::default(),
            shutdown_at: None,
            accept_paused_until: None,
            accept_failing: false,
        };
        driver.run()
    }
}

struct Driver {
    config: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    hub: Hub,
    /// The one read buffer all sockets share (see `rx`).
    scratch: Vec<u8>,
    conns: Slab<Conn>,
    /// Connections with output queued this iteration (flushed once each).
    dirty: Vec<usize>,
    /// Recipients found over their output cap during a fan-out.
    slow: Vec<ConnId>,
    /// Connections that used their read budget and have more to read.
    again: Vec<usize>,
    /// Handshake deadlines, in order (one fixed timeout, so a FIFO).
    handshakes: VecDeque<(Instant, ConnId)>,
    /// Close deadlines, in order (one fixed timeout, so a FIFO).
    closings: VecDeque<(Instant, ConnId)>,
    generation: u32,
    counters: DriverCounters,
    shutdown_at: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Accepting failed (e.g. out of descriptors) and has not succeeded since.
    accept_failing: bool,
}

impl Driver {
    fn run(&mut self) -> io::Result<()> {
        log::info!(
            "switchboard listening on {} (max {} connections, {} per user, ping every {:?})",
            self.listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?
                .expect("bound"),
            self.config.max_connections,
            self.config.hub.max_connections_per_user,
            self.config.hub.ping_interval,
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for key in std::mem::take(&mut self.again) {
                self.conn_ready(key, now, true);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    Token(key) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.conn_ready(key, now, readable)
                    }
                }
            }
            self.on_deadlines(now);
            self.flush_dirty();
            if let Some(at) = self.shutdown_at {
                if self.conns.is_empty() || now >= at {
                    log::info!("shutdown complete ({} connections left)", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let candidates = [
            self.hub.poll_timeout(),
            self.handshakes.front().map(|d| d.0),
            self.closings.front().map(|d| d.0),
            self.shutdown_at,
            self.accept_paused_until,
        ];
        let next = candidates.into_iter().flatten().min()?;
        // Round up to the next millisecond so we never wake just before a deadline.
        Some(next.saturating_duration_since(now) + Duration::from_micros(999))
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let (mut tcp, addr) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOMEM: the backlog stays readable, so
                    // retrying now would spin. Pause, then try again; say so
                    // once per episode, not once per retry.
                    if !self.accept_failing {
                        log::warn!("accept failed ({e}); pausing accepts, retrying every {ACCEPT_BACKOFF:?}");
                        self.accept_failing = true;
                    }
                    self.counters.accept_errors += 1;
                    self.pause_accepting(now);
                    return;
                }
            };
            if self.accept_failing {
                self.accept_failing = false;
                log::warn!("accepting connections again");
            }
            if self.conns.len() >= self.config.max_connections + HANDSHAKE_SLACK {
                log::warn!("refusing {addr}: {} sockets open", self.conns.len());
                continue;
            }
            let _ = tcp.set_nodelay(true);
            self.generation = self.generation.wrapping_add(1);
            let entry = self.conns.vacant_entry();
            let id = ConnId {
                index: entry.key() as u32,
                generation: self.generation,
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut tcp, Token(entry.key()), Interest::READABLE)
            {
                log::warn!("cannot register {addr}: {e}");
                continue;
            }
            log::trace!("{id} accepted from {addr}");
            entry.insert(Conn::new(tcp, id));
            self.handshakes
                .push_back((now + self.config.handshake_timeout, id));
        }
    }

    fn pause_accepting(&mut self, now: Instant) {
        if let Some(l) = &mut self.listener {
            let _ = self.poll.registry().deregister(l);
        }
        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
    }

    fn on_signal(&mut self, now: Instant) {
        let Some(signals) = &mut self.signals else {
            return;
        };
        let got: Vec<i32> = signals.pending().collect();
        if got.is_empty() || self.shutdown_at.is_some() {
            return;
        }
        log::info!(
            "signal {got:?}: shutting down, closing {} connections",
            self.conns.len()
        );
        self.shutdown_at = Some(now + self.config.shutdown_timeout);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let handshaking: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Http { .. }))
            .map(|(k, _)| k)
            .collect();
        for key in handshaking {
            self.drop_conn(key);
        }
        self.hub.close_all(CloseReason::GoingAway);
        self.drain_hub();
    }

    /// A socket event (or leftover read budget). Writable-only events just
    /// mark the connection dirty: the flush at the end of the iteration writes.
    fn conn_ready(&mut self, key: usize, now: Instant, readable: bool) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let phase = match conn.state {
            State::Http { .. } => 0,
            State::Open { .. } => 1,
            State::Closing { .. } => 2,
        };
        self.mark_dirty(key);
        if !readable {
            return;
        }
        match phase {
            0 => self.read_head(key, now),
            1 => self.read_frames(key, now),
            _ => {
                if self.conns[key].drain_input() {
                    self.drop_conn(key);
                }
            }
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Read a request head until it is complete, malformed or too large.
    fn read_head(&mut self, key: usize, now: Instant) {
        let max = self.config.max_request_head;
        loop {
            let conn = &mut self.conns[key];
            let State::Http { buf } = &mut conn.state else {
                return;
            };
            let len = buf.len();
            if len >= max {
                self.respond(key, http::text_response(431, "request head too large"));
                return;
            }
            let want = (len * 2).clamp(1024, max);
            buf.resize(want, 0);
            let read = io::Read::read(&mut conn.tcp, &mut buf[len..]);
            buf.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return self.drop_conn(key),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_conn(key),
            }
            match http::parse_head(buf) {
                http::Parse::Partial => continue,
                http::Parse::Bad(status, why) => {
                    return self.respond(key, http::text_response(status, why))
                }
                http::Parse::Complete(head) => {
                    let State::Http { buf } =
                        std::mem::replace(&mut conn.state, State::Closing { write_shut: false })
                    else {
                        unreachable!()
                    };
                    return self.on_request(key, head, buf, now);
                }
            }
        }
    }

    /// Queue an HTTP response and close after it.
    fn respond(&mut self, key: usize, response: Bytes) {
        let conn = &mut self.conns[key];
        conn.start_closing(response);
        let deadline = Instant::now() + self.config.close_timeout;
        self.closings.push_back((deadline, conn.id));
    }

    fn refuse(&mut self, key: usize, status: u16, why: &str) {
        self.counters.handshakes_refused += 1;
        log::debug!("{} refused with {status}: {why}", self.conns[key].id);
        self.respond(key, http::text_response(status, why));
    }

    fn on_request(&mut self, key: usize, head: http::RequestHead, buf: Vec<u8>, now: Instant) {
        let route = http::route(&head.path);
        if head.method != "GET" {
            let status = if route == http::Route::NotFound {
                404
            } else {
                405
            };
            return self.respond(key, http::text_response(status, "only GET is served here"));
        }
        let (kind, room) = match route {
            http::Route::Healthz => return self.respond(key, http::text_response(200, "ok")),
            http::Route::Stats => {
                let body = self.stats_json(now);
                return self.respond(key, http::response(200, "application/json", "", &body));
            }
            http::Route::NotFound => {
                return self.respond(key, http::text_response(404, "not found"))
            }
            http::Route::BadPath => {
                return self.refuse(key, 400, "room name is not valid percent-encoded UTF-8")
            }
            http::Route::Echo => (Kind::Echo, None),
            http::Route::Hub { room } => (Kind::Hub, room),
        };
        if !head.wants_websocket {
            self.counters.handshakes_refused += 1;
            return self.respond(
                key,
                http::response(
                    426,
                    "text/plain; charset=utf-8",
                    "Upgrade: websocket\r\n",
                    b"this is a WebSocket endpoint: connect with a WebSocket client\n",
                ),
            );
        }
        if let Some(room) = &room {
            if room.len() > self.config.hub.max_room_name_len {
                return self.refuse(key, 400, "room name too long");
            }
        }
        let identity = match crate::auth::identify(&head, self.config.hub.max_user_id_len) {
            Ok(identity) => identity,
            Err(r) => return self.refuse(key, r.status, &r.message),
        };
        if self.hub.registry().len() >= self.config.max_connections {
            return self.refuse(key, 503, "server at its connection limit, try again later");
        }
        let max_message = if kind == Kind::Echo {
            self.config.echo_max_message_size
        } else {
            self.config.hub.max_message_size
        };
        let accept = match run_handshake(&buf[..head.len]) {
            Ok(response) => response,
            Err((status, extra, why)) => {
                self.counters.handshakes_refused += 1;
                let body = format!("{why}\n");
                return self.respond(
                    key,
                    http::response(status, "text/plain; charset=utf-8", extra, body.as_bytes()),
                );
            }
        };
        let tail = buf[head.len..].to_vec();
        drop(buf);
        let conn = &mut self.conns[key];
        conn.out.push(accept);
        conn.max_message = max_message;
        let rx = (!tail.is_empty()).then(|| Box::new(Partial::carrying(tail)));
        conn.set_state(State::Open { rx });
        let id = conn.id;
        let req = OpenRequest {
            user: identity.user.as_deref(),
            room: room.as_deref(),
            kind,
        };
        match self.hub.handle_open(now, id, req) {
            Ok(()) => {
                conn.in_hub = true;
                log::info!(
                    "{id} open {} user={} room={}",
                    head.path,
                    identity.user.as_deref().unwrap_or("(anonymous)"),
                    room.as_deref().unwrap_or("-")
                );
                self.drain_hub();
                // Frames that arrived with the head are already buffered.
                if !self.again.contains(&key) {
                    self.again.push(key);
                }
            }
            Err(reason) => {
                log::info!("{id} refused after handshake: {reason}");
                self.close_socket(key, reason);
            }
        }
    }

    /// Read from the socket into the shared scratch buffer and handle every
    /// complete frame there, up to the read budget.
    fn read_frames(&mut self, key: usize, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..READ_BUDGET {
            match self.read_once(key, now, &mut scratch) {
                Flow::More => continue,
                Flow::Drained | Flow::Stop => {
                    self.scratch = scratch;
                    return;
                }
            }
        }
        self.scratch = scratch;
        self.again.push(key);
    }

    /// One read syscall and the frames it completed.
    fn read_once(&mut self, key: usize, now: Instant, scratch: &mut [u8]) -> Flow {
        let Some(conn) = self.conns.get_mut(key) else {
            return Flow::Stop;
        };
        let State::Open { rx } = &mut conn.state else {
            return Flow::Stop;
        };
        let mut partial = rx.take().map(|b| *b).unwrap_or_default();
        let flow = if partial.need > 0 {
            // A frame bigger than what was read so far: read straight into it.
            let missing = partial.need - partial.frame.len();
            let have = partial.frame.len();
            partial.frame.resize(partial.need, 0);
            let read = io::Read::read(&mut conn.tcp, &mut partial.frame[have..]);
            partial.frame.truncate(have + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return self.peer_gone(key, "EOF"),
                Ok(n) if partial.frame.len() == partial.need => {
                    let mut frame = std::mem::take(&mut partial.frame);
                    partial.need = 0;
                    match self.handle_frames(key, now, &mut frame, &mut partial) {
                        Flow::Stop => Flow::Stop,
                        _ if n < missing => Flow::Drained,
                        _ => Flow::More,
                    }
                }
                Ok(n) if n < missing => Flow::Drained,
                Ok(_) => Flow::More,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flow::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Flow::More,
                Err(e) => return self.peer_gone(key, &e.to_string()),
            }
        } else {
            // Carried bytes (a partial header, or data that came with the
            // handshake) go first, then what the socket has.
            let carried = partial.frame.len();
            scratch[..carried].copy_from_slice(&partial.frame);
            partial.frame = Vec::new();
            let (n, flow) = match io::Read::read(&mut conn.tcp, &mut scratch[carried..]) {
                Ok(0) => return self.peer_gone(key, "EOF"),
                // A short read emptied the socket: the next data raises a new edge.
                Ok(n) if carried + n < scratch.len() => (n, Flow::Drained),
                Ok(n) => (n, Flow::More),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Flow::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Flow::More),
                Err(e) => return self.peer_gone(key, &e.to_string()),
            };
            match self.handle_frames(key, now, &mut scratch[..carried + n], &mut partial) {
                Flow::Stop => Flow::Stop,
                _ => flow,
            }
        };
        if flow != Flow::Stop && !partial.is_empty() {
            if let Some(State::Open { rx }) = self.conns.get_mut(key).map(|c| &mut c.state) {
                *rx = Some(Box::new(partial));
            }
        }
        flow
    }

    /// Handle every complete frame in `data`; keep an incomplete tail in `partial`.
    fn handle_frames(
        &mut self,
        key: usize,
        now: Instant,
        data: &mut [u8],
        partial: &mut Partial,
    ) -> Flow {
        let id = self.conns[key].id;
        let max = self.conns[key].max_message;
        let mut pos = 0;
        loop {
            let step = match rx::step(data, &mut pos, partial, max) {
                Ok(step) => step,
                Err(v) => {
                    self.on_violation(key, v);
                    return Flow::Stop;
                }
            };
            match step {
                Step::End => return Flow::More,
                Step::Consumed => {}
                Step::Incomplete { total } => {
                    partial.frame = Vec::with_capacity(total.unwrap_or(rx::MAX_HEADER));
                    partial.frame.extend_from_slice(&data[pos..]);
                    partial.need = total.unwrap_or(0);
                    return Flow::More;
                }
                Step::Event(Event::Text(text)) => self.hub.handle_text(now, id, text),
                Step::Event(Event::Binary(bytes)) => self.hub.handle_binary(now, id, bytes),
                Step::Event(Event::Ping(payload)) => {
                    self.conns[key].out.push(control_frame(0xA, payload));
                    self.hub.handle_activity(now, id);
                }
                Step::Event(Event::Pong) => self.hub.handle_activity(now, id),
                Step::Event(Event::Close(code)) => {
                    log::info!("{id} closed by client ({code:?})");
                    let conn = &mut self.conns[key];
                    conn.in_hub = false;
                    conn.start_closing(close_reply(code));
                    self.closings
                        .push_back((now + self.config.close_timeout, id));
                    self.hub.handle_closed(id);
                    self.drain_hub();
                    return Flow::Stop;
                }
            }
            self.drain_hub();
            if !matches!(
                self.conns.get(key).map(|c| &c.state),
                Some(State::Open { .. })
            ) {
                return Flow::Stop;
            }
        }
    }

    fn peer_gone(&mut self, key: usize, why: &str) -> Flow {
        log::debug!("{} gone: {why}", self.conns[key].id);
        self.drop_conn(key);
        Flow::Stop
    }

    fn on_violation(&mut self, key: usize, v: Violation) {
        let id = self.conns[key].id;
        let reason = match v {
            Violation::Protocol(_) => CloseReason::ProtocolError,
            Violation::TooBig => CloseReason::MessageTooBig,
            Violation::InvalidUtf8 => CloseReason::InvalidUtf8,
        };
        log::info!("{id} closing: {v:?} ({reason})");
        self.hub.close(id, reason);
        self.drain_hub();
    }

    /// Carry out every pending hub output.
    fn drain_hub(&mut self) {
        loop {
            while let Some(output) = self.hub.poll_output() {
                match output {
                    Output::Send { to, frame } => self.deliver(to, frame),
                    Output::Ping(id) => {
                        if let Some(key) = self.open_key(id) {
                            self.conns[key].out.push(Bytes::from_static(PING_FRAME));
                            self.mark_dirty(key);
                        }
                    }
                    Output::Close { conn, reason } => {
                        if let Some(key) = self.open_key(conn) {
                            log::info!("{conn} closed by server: {reason}");
                            self.conns[key].in_hub = false;
                            self.close_socket(key, reason);
                        }
                    }
                }
            }
            if self.slow.is_empty() {
                return;
            }
            for id in std::mem::take(&mut self.slow) {
                self.counters.slow_consumer_closes += 1;
                self.hub.close(id, CloseReason::SlowConsumer);
            }
        }
    }

    /// Queue one shared frame to every recipient: O(recipients), no copy.
    fn deliver(&mut self, to: crate::hub::Target, frame: Bytes) {
        let Driver {
            hub,
            conns,
            dirty,
            slow,
            counters,
            config,
            ..
        } = self;
        let cap = config.max_output_queue;
        hub.for_each_recipient(to, |id| {
            let Some(conn) = conns.get_mut(id.index as usize) else {
                return;
            };
            if conn.id != id || !matches!(conn.state, State::Open { .. }) {
                return;
            }
            if conn.out.len() + frame.len() > cap {
                // Before calling it slow, give the socket what it will take now.
                if let Ok((_, written)) = conn.flush() {
                    counters.bytes_out += written as u64;
                }
                if conn.out.len() + frame.len() > cap {
                    if !slow.contains(&id) {
                        slow.push(id);
                    }
                    return;
                }
            }
            conn.out.push(frame.clone());
            counters.messages_out += 1;
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(id.index as usize);
            }
        });
    }

    /// The slab key of `id` if it is still that connection.
    fn open_key(&self, id: ConnId) -> Option<usize> {
        let key = id.index as usize;
        self.conns.get(key).filter(|c| c.id == id).map(|_| key)
    }

    /// Send a close frame with `reason` and move to `Closing`.
    fn close_socket(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.conns[key];
        if reason == CloseReason::SlowConsumer {
            conn.out.discard_unstarted();
        }
        conn.start_closing(close_frame(reason.code(), reason.text()));
        let id = conn.id;
        self.mark_dirty(key);
        self.closings
            .push_back((Instant::now() + self.config.close_timeout, id));
    }

    /// Forget a socket at once (closing the descriptor removes it from epoll).
    fn drop_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        if conn.in_hub {
            log::info!("{} disconnected", conn.id);
            self.hub.handle_closed(conn.id);
            self.drain_hub();
        }
    }

    fn on_deadlines(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.handshakes.front() {
            if at > now {
                break;
            }
            self.handshakes.pop_front();
            if let Some(key) = self.open_key(id) {
                if matches!(self.conns[key].state, State::Http { .. }) {
                    log::debug!("{id} handshake timeout");
                    self.drop_conn(key);
                }
            }
        }
        while let Some(&(at, id)) = self.closings.front() {
            if at > now {
                break;
            }
            self.closings.pop_front();
            if let Some(key) = self.open_key(id) {
                if matches!(self.conns[key].state, State::Closing { .. }) {
                    self.drop_conn(key);
                }
            }
        }
        if self.hub.poll_timeout().is_some_and(|t| t <= now) {
            self.hub.handle_timeout(now);
            self.drain_hub();
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            if let Some(l) = &mut self.listener {
                if let Err(e) = self
                    .poll
                    .registry()
                    .register(l, LISTENER, Interest::READABLE)
                {
                    log::warn!("cannot resume accepting: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Write every dirty connection once; fix its poll interest.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            match conn.flush() {
                Ok((_, written)) => self.counters.bytes_out += written as u64,
                Err(e) => {
                    log::debug!("{} write failed: {e}", conn.id);
                    self.drop_conn(key);
                    continue;
                }
            }
            let conn = &mut self.conns[key];
            let want = conn.wanted_interest();
            if want != conn.interest {
                if let Err(e) = self
                    .poll
                    .registry()
                    .reregister(&mut conn.tcp, Token(key), want)
                {
                    log::debug!("{} reregister failed: {e}", conn.id);
                    self.drop_conn(key);
                    continue;
                }
                conn.interest = want;
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn stats_json(&self, now: Instant) -> Vec<u8> {
        use serde_json::{json, Map, Value};
        let reg = self.hub.registry();
        let by_user: Map<String, Value> = reg
            .users()
            .map(|u| (u.name.to_string(), json!(u.conns.len())))
            .collect();
        let rooms: Map<String, Value> = reg
            .rooms()
            .map(|r| (r.name.to_string(), json!(r.users.len())))
            .collect();
        let hub = self.hub.counters();
        let echo = reg.sessions().filter(|s| s.kind == Kind::Echo).count();
        let queued_bytes: usize = self.conns.iter().map(|(_, c)| c.out.len()).sum();
        let handshaking = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Http { .. }))
            .count();
        let stats = json!({
            "total_connections": reg.len(),
            "echo_connections": echo,
            "handshaking": handshaking,
            "total_users": reg.user_count(),
            "total_rooms": reg.room_count(),
            "connections_by_user": by_user,
            "rooms": rooms,
            "messages_in": hub.messages_in,
            "bytes_in": hub.bytes_in,
            "messages_out": self.counters.messages_out,
            "bytes_out": self.counters.bytes_out,
            "queued_bytes": queued_bytes,
            "errors_sent": hub.errors_sent,
            "connections_opened": hub.connections_opened,
            "heartbeat_timeouts": hub.heartbeat_timeouts,
            "rate_limited": hub.rate_limited,
            "rate_limit_closes": hub.rate_limit_closes,
            "slow_consumer_closes": self.counters.slow_consumer_closes,
            "handshakes_refused": self.counters.handshakes_refused,
            "accept_errors": self.counters.accept_errors,
            "uptime_seconds": self.hub.uptime(now).as_secs_f64(),
        });
        serde_json::to_vec(&stats).expect("stats serialize")
    }
}

/// Run tungstenite's server handshake over a complete request head held in
/// memory. Returns the `101` response bytes, or the HTTP error to send.
fn run_handshake(head: &[u8]) -> Result<Bytes, (u16, &'static str, String)> {
    let stream = MemStream {
        input: io::Cursor::new(head),
        output: Vec::with_capacity(160),
    };
    match ServerHandshake::start(stream, NoCallback, None).handshake() {
        Ok(ws) => Ok(Bytes::from(ws.into_inner().output)),
        Err(HandshakeError::Failure(WsError::Protocol(e))) => {
            use tungstenite::error::ProtocolError as P;
            match e {
                P::MissingSecWebSocketVersionHeader => Err((
                    426,
                    "Sec-WebSocket-Version: 13\r\n",
                    format!("{e}: only version 13 is supported"),
                )),
                _ => Err((400, "", e.to_string())),
            }
        }
        Err(HandshakeError::Failure(e)) => Err((400, "", e.to_string())),
        Err(HandshakeError::Interrupted(_)) => Err((400, "", "incomplete request".into())),
    }
}

/// The whole request head in, the response out: the handshake never waits on
/// the socket (the head was gathered without blocking; the response is queued).
struct MemStream<'a> {
    input: io::Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl io::Read for MemStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl io::Write for MemStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
