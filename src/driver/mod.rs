//! The mio side: one thread, one `Poll`. Accepts, reads request heads, runs the
//! tungstenite handshake, reads frames into the hub, and writes what the hub
//! decided — each dirty connection flushed once per loop iteration (again in
//! the same iteration if input taken in during a long flush added to it).
//! The room frames one connection's read produces in a row are queued to
//! each member as one buffer when the read ends (the `burst` module).
//!
//! Bytes from the network are read by pure pieces that hold no socket and are
//! fuzzed as called here: [`request_reader`] (HTTP requests) and
//! [`rx`] (WebSocket frames). The driver only feeds them its sockets.
//!
//! One loop iteration: poll; connections with read budget left (`again`);
//! each event by token (`LISTENER`, `SIGNALS`, `WAKER`, or a connection's
//! slab key); deadlines; Redis links written; then every dirty connection
//! flushed, a long flush taking in what arrives meanwhile
//! ([`Driver::flush_dirty`]); Redis links written again if that queued more.
//!
//! Cluster mode (DESIGN.md §6) lives in [`cluster`]: per Redis shard a
//! command link and a subscriber link, sockets with tokens of their own
//! beside the three above, read by the pure RESP reader
//! ([`cluster::resp`], fuzzed) and written once per iteration after the
//! connections. Cluster effects stay values: the hub emits them as
//! `Output`s, and what Redis delivers goes back in through
//! `Hub::handle_cluster_*` calls, so the hub stays pure.

pub mod api;
mod burst;
pub mod cluster;
mod conn;
mod handle;
pub mod http;
mod outq;
mod request;
pub mod request_reader;
pub mod rx;
mod stats;
mod sys;
#[cfg(test)]
mod test_io;
pub mod tls;
mod ws;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use self::conn::{close_frame, Conn, State};
use self::handle::{Command, Commands};
pub use self::handle::{Handle, HandleError};
pub use self::outq::OutQueue;
use self::request_reader::RequestReader;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::{ChannelName, ClusterAnswer, ConnId, Handler, Hub, Output};
use crate::protocol::CloseReason;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
/// Commands a [`Handle`] may queue before its callers wait.
const COMMAND_QUEUE: usize = 4096;

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
/// Writes between two looks at the sockets during a long flush (see
/// [`Driver::flush_dirty`]). A poll that does not wait costs about half a
/// microsecond, 16 writes some 50: measured with `scripts/bench.sh ahead`,
/// every 8 or 16 writes takes in twice what every 64 does and 6 times
/// what every 256 does, at no cost to a message alone (README Performance).
const TAKE_IN_EVERY: usize = 16;
/// Most readiness events one look handles (the rest wait for the next).
const TAKE_IN_EVENTS: usize = 32;
/// Rounds of a flush: the connections that got more output during one are
/// written again in the next.
const FLUSH_ROUNDS: usize = 4;

/// What a read pass left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The socket may have more: read again (within the budget).
    More,
    /// A short read: the socket is drained unless the peer has closed
    /// (then its end of stream is still to be read).
    Drained,
    /// The read would block: nothing more is there.
    Blocked,
    /// The connection was closed or dropped.
    Stop,
}

/// Counters kept by the driver (the hub keeps its own).
#[derive(Debug, Default, Clone)]
pub struct DriverCounters {
    /// Looks at the sockets during a long flush that found input.
    pub take_ins: u64,
    /// Frames queued to clients (one per recipient).
    pub messages_out: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// WebSocket handshakes refused, by HTTP status.
    pub refused_by_status: BTreeMap<u16, u64>,
    /// Close frames sent by the server, by close code.
    pub closes_by_code: BTreeMap<u16, u64>,
    /// Close frames received from clients.
    pub client_closes: u64,
    /// SIGHUP reloads of the TLS files, and those that failed.
    pub tls_reloads: u64,
    pub tls_reload_failures: u64,
    /// Connections closed as slow consumers (4101).
    pub slow_consumer_closes: u64,
    /// Failed `accept` calls (out of descriptors or memory).
    pub accept_errors: u64,
    /// Server API requests answered.
    pub api_requests: u64,
    /// Loop iterations, and time spent working in them (not waiting in poll),
    /// bucketed for the `/metrics` histogram.
    pub loop_time: stats::Histogram,
}

/// The switchboard server: `Server::bind(config)?.run()`.
pub struct Server {
    config: Config,
    /// `--tls-cert`/`--tls-key`, loaded.
    tls: Option<Arc<rustls::ServerConfig>>,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    handle_signals: bool,
    handle: Handle,
    commands: Commands,
    handler: Option<Box<dyn Handler>>,
    node_id: Arc<str>,
}

/// The listening socket: `SO_REUSEADDR` (a restarted daemon binds at once),
/// `SO_REUSEPORT` with `--reuse-port` (several processes share one address,
/// the kernel spreading connections over them), non-blocking, and a backlog
/// of `--listen-backlog`: std's 128 loses SYNs in a burst of connects, and
/// each lost SYN is a one-second stall for its client.
fn listen(config: &Config) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(config.listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&config.listen.into())?;
    socket.listen(config.listen_backlog.min(i32::MAX as u32) as i32)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The machine's host name (`localhost` if it has none).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// `name` and eight random hex digits (from the kernel's random source;
/// the time and process id if it cannot be read).
fn node_id(name: &str) -> Arc<str> {
    let mut bytes = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
        .map(|()| u32::from_ne_bytes(bytes));
    let part = random.unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    });
    Arc::from(format!("{name}-{part:08x}"))
}

impl Server {
    /// Bind the listening socket (port 0 picks a free port).
    pub fn bind(config: Config) -> io::Result<Server> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key).map_err(io::Error::other)?),
            (None, None) => None,
            _ => {
                return Err(io::Error::other(
                    "tls_cert and tls_key go together: give both, or neither",
                ))
            }
        };
        let poll = Poll::new()?;
        let mut listener = listen(&config)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let local_addr = listener.local_addr()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let name = match &config.node_name {
            Some(name) => name.clone(),
            None => {
                // A host name may hold what keys must not: keep it safe.
                let host: String = hostname()
                    .chars()
                    .take(48)
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                format!("{host}:{}", local_addr.port())
            }
        };
        let node_id = node_id(&name);
        let (tx, commands) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        Ok(Server {
            config,
            tls,
            poll,
            listener,
            local_addr,
            handle_signals: false,
            handle: Handle { tx, waker },
            commands,
            handler: None,
            node_id,
        })
    }

    /// A [`Handle`] for other threads: publish, send, disconnect, shut down.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Install the host program's [`Handler`] (join authorization, custom
    /// message types).
    pub fn handler(mut self, handler: impl Handler + 'static) -> Self {
        self.handler = Some(Box::new(handler));
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This run's node id: `--node-name` (default the listen address) and a
    /// random part drawn at every start, so a restarted node is a new node.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Shut down gracefully on SIGINT/SIGTERM (the daemon turns this on).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Run until a shutdown signal or [`Handle::shutdown`]; returns once
    /// every client got its close.
    pub fn run(self) -> io::Result<()> {
        let now = Instant::now();
        let mut signals = None;
        if self.handle_signals {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut s = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            self.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            signals = Some(s);
        }
        let cluster = if self.config.cluster.is_empty() {
            None
        } else {
            Some(cluster::Cluster::new(
                &self.config,
                self.node_id.clone(),
                now,
            )?)
        };
        let mut hub = Hub::new(self.config.hub.clone(), now);
        hub.set_node_id(self.node_id.clone());
        let wall = std::time::SystemTime::now();
        let unix_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        hub.set_unix_time(now, unix_ms);
        // A restart is a new history epoch: this run's random part and start.
        let random = self.node_id.rsplit('-').next().unwrap_or("0");
        hub.set_history_epoch(&format!("{random}{unix_ms:x}"));
        if let Some(handler) = self.handler {
            hub.set_handler(handler);
        }
        let mut driver = Driver {
            hub,
            auth: Authenticator::new(
                self.config.auth,
                self.config.jwt_keys.clone(),
                self.config.jwt_leeway,
                self.config.hub.max_info_bytes,
            ),
            commands: self.commands,
            tls: self.tls,
            _handle: self.handle,
            clock: (now, wall),
            scratch: vec![0; SCRATCH],
            gather: Vec::with_capacity(outq::GATHER_MAX),
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
            peak_conns: 0,
            cluster,
            overview: None,
            // Small: what a look takes in is bounded, so the rest of a
            // fan-out is not held up by much other work.
            take_in_events: Some(Events::with_capacity(TAKE_IN_EVENTS)),
            reader: None,
            burst: None,
        };
        driver.run()
    }
}

struct Driver {
    config: Config,
    /// TLS settings for new connections (replaced on SIGHUP).
    tls: Option<Arc<rustls::ServerConfig>>,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    hub: Hub,
    auth: Authenticator,
    commands: Commands,
    /// Keeps the channel open while the server runs, so `Handle`s never see
    /// a closed channel before `run` returns.
    _handle: Handle,
    /// A monotonic and a wall-clock reading taken together (token times are
    /// Unix seconds; deadlines are `Instant`s).
    clock: (Instant, std::time::SystemTime),
    /// The one read buffer all sockets share (see `rx`).
    scratch: Vec<u8>,
    /// Shared buffer in which small queued frames are gathered for one send.
    gather: Vec<u8>,
    conns: Slab<Conn>,
    /// Connections with output queued and not yet flushed.
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
    /// Most sockets open since memory was last handed back (see
    /// `release_memory_after_load`).
    peak_conns: usize,
    /// Cluster mode: the Redis links.
    cluster: Option<cluster::Cluster>,
    /// The last `/api/overview` body: when it was built, for which `top`.
    /// Any number of dashboards polling cost one build a second.
    overview: Option<(Instant, usize, Vec<u8>)>,
    /// The events buffer of [`Driver::take_in`] (None while in use).
    take_in_events: Option<Events>,
    /// The connection whose input is being handled, while it is.
    reader: Option<ConnId>,
    /// Room frames from `reader`'s input not yet queued (see `burst`).
    burst: Option<burst::Burst>,
}

/// The name of a channel, as the hub takes it.
fn channel_name(channel: &crate::hub::cluster::Channel) -> ChannelName<'_> {
    use crate::hub::cluster::Channel;
    match channel {
        Channel::Room(room) => ChannelName::Room(room),
        Channel::User(user) => ChannelName::User(user),
        Channel::All => ChannelName::All,
    }
}

/// The remote address of connection `id`, if it is still open (a
/// `getpeername` call: for operators' views, not per message).
fn peer_addr(conns: &Slab<Conn>, id: ConnId) -> Option<String> {
    let conn = conns.get(id.index as usize).filter(|c| c.id == id)?;
    conn.tcp.peer_addr().ok().map(|a| a.to_string())
}

/// The slow-consumer rule: a connection may be given another frame unless
/// its queue already holds `cap` bytes (`--max-output-queue`), once the
/// socket has taken what it will take now. So one message the limits allow,
/// of any size, never makes a prompt reader "slow", and a queue holds at
/// most `cap` bytes plus one frame (or one burst of small frames, at most
/// 64 KiB: see `burst`).
#[inline]
fn queue_is_full(
    conn: &mut Conn,
    cap: usize,
    gather: &mut Vec<u8>,
    counters: &mut DriverCounters,
) -> bool {
    conn.out.len() >= cap && still_full_after_flush(conn, cap, gather, counters)
}

#[cold]
fn still_full_after_flush(
    conn: &mut Conn,
    cap: usize,
    gather: &mut Vec<u8>,
    counters: &mut DriverCounters,
) -> bool {
    // Flush even if blocked: its writable event may not have been handled
    // yet this iteration.
    conn.write_blocked = false;
    match conn.flush(gather) {
        Ok(written) => counters.bytes_out += written as u64,
        // A dead socket is no slow consumer: the flush at the end of the
        // iteration meets the same error and drops it.
        Err(_) => return false,
    }
    conn.out.len() >= cap
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
            self.hub.advance(now);
            for key in std::mem::take(&mut self.again) {
                self.conn_ready(key, now, true);
            }
            if let Some(c) = &mut self.cluster {
                for token in c.take_again() {
                    c.on_ready(self.poll.registry(), token, now);
                }
                self.drain_hub();
            }
            self.on_events(&events, now);
            self.on_deadlines(now);
            if let Some(c) = &mut self.cluster {
                self.hub.set_cluster_up(c.state() == "up");
                c.pump(&self.hub);
                c.flush(self.poll.registry(), now);
                self.drain_hub();
            }
            self.flush_dirty();
            if let Some(c) = &mut self.cluster {
                // What the flush caused (input taken in, connections
                // dropped) goes to Redis now, not at the next wake-up.
                c.flush(self.poll.registry(), Instant::now());
                self.drain_hub();
            }
            self.counters.loop_time.observe(now.elapsed());
            if let Some(at) = self.shutdown_at {
                let settled = self.cluster.as_ref().is_none_or(|c| c.settled());
                if (self.conns.is_empty() && settled) || now >= at {
                    log::info!("shutdown complete ({} connections left)", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    /// Hand every readiness event to its owner: the listener, signals,
    /// commands, a Redis link or a connection.
    fn on_events(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                SIGNALS => self.on_signal(now),
                WAKER => self.on_commands(now),
                token if self.cluster.as_ref().is_some_and(|c| c.owns(token)) => {
                    if let Some(c) = &mut self.cluster {
                        c.on_ready(self.poll.registry(), token, now);
                    }
                    self.drain_hub();
                }
                Token(key) => {
                    let peer_closed = event.is_read_closed() || event.is_error();
                    let readable = event.is_readable() || peer_closed;
                    if peer_closed {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.peer_closed = true;
                        }
                    }
                    if event.is_writable() || event.is_write_closed() || event.is_error() {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.write_blocked = false;
                        }
                    }
                    self.conn_ready(key, now, readable)
                }
            }
        }
    }

    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty()
            || !self.dirty.is_empty()
            || self.cluster.as_ref().is_some_and(|c| c.has_again())
        {
            return Some(Duration::ZERO);
        }
        let candidates = [
            self.hub.poll_timeout(),
            self.handshakes.front().map(|d| d.0),
            self.closings.front().map(|d| d.0),
            self.shutdown_at,
            self.accept_paused_until,
            self.cluster.as_ref().and_then(|c| c.poll_timeout()),
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
            let deadline = now + self.config.handshake_timeout;
            let reader = Box::new(RequestReader::new(
                self.config.max_request_head,
                self.config.max_request_body,
            ));
            let tls = match &self.tls {
                None => None,
                Some(config) => match tls::Tls::new(config.clone()) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        log::warn!("cannot start TLS for {addr}: {e}");
                        let _ = self.poll.registry().deregister(&mut tcp);
                        continue;
                    }
                },
            };
            entry.insert(Conn::new(tcp, tls, id, reader, deadline));
            self.handshakes.push_back((deadline, id));
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
        if got.contains(&signal_hook::consts::SIGHUP) {
            self.reload_tls();
        }
        if got.iter().any(|&s| s != signal_hook::consts::SIGHUP) {
            log::info!("signal {got:?}");
            self.begin_shutdown(now);
        }
    }

    /// SIGHUP: load the TLS certificate and key again; new handshakes get
    /// them, open connections keep theirs. A file that does not load is
    /// logged and the old ones stay.
    fn reload_tls(&mut self) {
        let (Some(cert), Some(key)) = (&self.config.tls_cert, &self.config.tls_key) else {
            log::info!("SIGHUP: no TLS to reload");
            return;
        };
        match tls::load(cert, key) {
            Ok(config) => {
                self.tls = Some(config);
                self.counters.tls_reloads += 1;
                log::info!("SIGHUP: TLS certificate and key reloaded");
            }
            Err(e) => {
                self.counters.tls_reload_failures += 1;
                log::error!("SIGHUP: the TLS certificate and key were not reloaded ({e}); the old ones stay");
            }
        }
    }

    /// Carry out everything the `Handle`s queued.
    fn on_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Publish { room, data } => {
                    self.hub.publish(&room, &data);
                }
                Command::PublishBinary { room, data } => {
                    self.hub.publish_binary(&room, &data);
                }
                Command::Send { user, data } => {
                    self.hub.send_to_user(&user, &data);
                }
                Command::Broadcast { data } => {
                    self.hub.broadcast(&data);
                }
                Command::Disconnect { user, code, reason } => {
                    self.hub.disconnect_user(&user, code, reason.as_deref());
                }
                Command::QueryUser { user, reply } if self.cluster.is_some() => {
                    let ask = cluster::Ask::User(user);
                    let c = self.cluster.as_mut().expect("cluster mode");
                    c.view(cluster::Waiter::User(reply), ask, now);
                }
                Command::QueryRoom { room, limit, reply } if self.cluster.is_some() => {
                    let ask = cluster::Ask::Room(room, limit.min(api::MAX_LISTED_USERS));
                    let c = self.cluster.as_mut().expect("cluster mode");
                    c.view(cluster::Waiter::Room(reply), ask, now);
                }
                Command::QueryUser { user, reply } => {
                    let mut view = self.hub.user_view(&user);
                    for c in &mut view.details {
                        c.remote_addr = peer_addr(&self.conns, c.id);
                    }
                    // Room for one answer: never blocks; a caller that
                    // dropped its receiver just does not get it.
                    let _ = reply.try_send(view);
                }
                Command::QueryRoom { room, limit, reply } => {
                    let limit = limit.min(api::MAX_LISTED_USERS);
                    let _ = reply.try_send(self.hub.room_view(&room, limit));
                }
                Command::Shutdown => self.begin_shutdown(now),
            }
            self.drain_hub();
        }
    }

    /// Unix seconds now (token expiry is in wall-clock time).
    fn wall_clock(&self) -> u64 {
        let (at, wall) = self.clock;
        let now = wall + Instant::now().saturating_duration_since(at);
        now.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The `Instant` of Unix time `unix` (clamped to the next few centuries).
    fn instant_at(&self, now: Instant, unix: u64) -> Instant {
        let wall_now = self.wall_clock();
        let ahead = unix.saturating_sub(wall_now).min(100 * 365 * 86_400);
        now + Duration::from_secs(ahead)
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_at.is_some() {
            return;
        }
        log::info!("shutting down, closing {} connections", self.conns.len());
        self.shutdown_at = Some(now + self.config.shutdown_timeout);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let handshaking: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Http { .. } | State::Waiting { .. }))
            .map(|(k, _)| k)
            .collect();
        for key in handshaking {
            self.drop_conn(key);
        }
        if let Some(c) = &mut self.cluster {
            c.begin_shutdown();
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
            // Read on once the answer is out (a response still being
            // written goes on: marked dirty below).
            State::Waiting { .. } => 3,
        };
        self.mark_dirty(key);
        if phase == 3 {
            return;
        }
        if !readable {
            return;
        }
        match phase {
            0 => self.read_request(key, now),
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

    /// Carry out every pending hub output, and hand the hub what the
    /// cluster gave back (which may cause more outputs).
    fn drain_hub(&mut self) {
        loop {
            while let Some(output) = self.hub.poll_output() {
                if !matches!(output, Output::Send { .. }) {
                    self.end_burst();
                }
                match output {
                    Output::Publish {
                        channel,
                        envelope,
                        reply,
                    } => match &mut self.cluster {
                        Some(c) => c.publish(channel, envelope, reply),
                        None => {
                            if let Some(p) = reply {
                                self.hub
                                    .handle_cluster_answer(p, ClusterAnswer::Unavailable);
                            }
                            self.hub
                                .handle_cluster_message(channel_name(&channel), &envelope);
                        }
                    },
                    Output::Subscribe(channel) => {
                        if let Some(c) = &mut self.cluster {
                            c.subscribe(&channel);
                        }
                    }
                    Output::Unsubscribe(channel) => {
                        if let Some(c) = &mut self.cluster {
                            c.unsubscribe(&channel);
                        }
                    }
                    Output::Presence(change) => match &mut self.cluster {
                        Some(c) => c.presence(change),
                        None => {
                            if let Some(p) = change.reply {
                                self.hub
                                    .handle_cluster_answer(p, ClusterAnswer::Unavailable);
                            }
                        }
                    },
                    Output::HistoryPublish { room, except, body } => match &mut self.cluster {
                        Some(c) => c.history_publish(room, except, body),
                        None => {
                            // No cluster (an embedding that set `cluster`
                            // by hand): delivered here, without a seq.
                            let frame = crate::protocol::text_frame(&body);
                            let envelope = crate::hub::cluster::frame_envelope(
                                self.hub.node_id(),
                                except,
                                &frame,
                            );
                            self.hub
                                .handle_cluster_message(ChannelName::Room(&room), &envelope);
                        }
                    },
                    Output::HistoryFill(gap) => match &mut self.cluster {
                        Some(c) => c.history_fill(gap),
                        None => self.hub.handle_history_fill(&gap, None),
                    },
                    Output::HistoryRead {
                        room,
                        since,
                        limit,
                        reply,
                    } => match &mut self.cluster {
                        Some(c) => c.history_read(&room, since, limit, reply),
                        None => self
                            .hub
                            .handle_cluster_answer(reply, ClusterAnswer::Unavailable),
                    },
                    Output::Query { room, reply } => match &mut self.cluster {
                        Some(c) => c.query(&room, reply),
                        None => self
                            .hub
                            .handle_cluster_answer(reply, ClusterAnswer::Unavailable),
                    },
                    Output::UserConns {
                        user,
                        connections,
                        claim,
                    } => match &mut self.cluster {
                        Some(c) => c.user_conns(&user, connections, claim),
                        None => {
                            if let Some(id) = claim {
                                self.hub.handle_cluster_claim(Instant::now(), id, true);
                            }
                        }
                    },
                    Output::Send { to, frame } => self.send(to, frame),
                    Output::Ping(id) => {
                        if let Some(key) = self.open_key(id) {
                            self.conns[key].out.push(Bytes::from_static(PING_FRAME));
                            self.mark_dirty(key);
                        }
                    }
                    Output::Close { conn, reason, text } => {
                        if let Some(key) = self.open_key(conn) {
                            log::info!(conn:% = conn, code = reason.code(); "{conn} closed by server: {reason}");
                            self.conns[key].in_hub = false;
                            self.close_socket(key, reason, text.as_deref());
                        }
                    }
                }
            }
            // Other input for the hub: a burst ends first.
            if let Some(event) = self.cluster.as_mut().and_then(|c| c.poll_event()) {
                self.end_burst();
                self.on_cluster_event(event);
                continue;
            }
            // What waited on a room's channel while a gap was filled: one
            // message per round, its outputs carried out before the next.
            if self.hub.has_waiting() {
                self.end_burst();
                if self.hub.handle_next_waiting() {
                    continue;
                }
            }
            if self.slow.is_empty() {
                return;
            }
            self.end_burst();
            for id in std::mem::take(&mut self.slow) {
                self.counters.slow_consumer_closes += 1;
                self.hub.close(id, CloseReason::SlowConsumer);
            }
        }
    }

    /// Hand the hub what the cluster gave back.
    fn on_cluster_event(&mut self, event: cluster::Event) {
        match event {
            cluster::Event::Message { channel, payload } => self
                .hub
                .handle_cluster_message(channel_name(&channel), &payload),
            cluster::Event::Answer(pending, answer) => {
                self.hub.handle_cluster_answer(pending, answer)
            }
            cluster::Event::Filled(gap, missed) => self.hub.handle_history_fill(&gap, missed),
            cluster::Event::Claim(id, granted) => {
                self.hub.handle_cluster_claim(Instant::now(), id, granted)
            }
            cluster::Event::Resync(shard, subscribe) => {
                if let Some(c) = &mut self.cluster {
                    c.resync(shard, &self.hub, subscribe);
                }
            }
            cluster::Event::View(waiter, view) => self.deliver_view(waiter, view),
            cluster::Event::LocalView(waiter, ask) => {
                let view = match ask {
                    cluster::Ask::User(user) => cluster::View::User(self.local_user_view(&user)),
                    cluster::Ask::Room(room, limit) => {
                        cluster::View::Room(self.hub.room_view(&room, limit))
                    }
                    cluster::Ask::History(room, ..) => cluster::View::History(room, None),
                };
                self.deliver_view(waiter, view);
            }
            cluster::Event::ViewQuery {
                shard,
                user,
                asker,
                qid,
            } => {
                let view = self.local_user_view(&user);
                let details = serde_json::to_vec(&view.details).expect("views serialize");
                if let Some(c) = &mut self.cluster {
                    c.answer_view(shard, &asker, qid, &details);
                }
            }
        }
    }

    /// This node's view of `user`, with each connection's remote address.
    fn local_user_view(&self, user: &str) -> crate::hub::UserView {
        let mut view = self.hub.user_view(user);
        for c in &mut view.details {
            c.remote_addr = peer_addr(&self.conns, c.id);
        }
        view
    }

    /// Hand a view to whoever waits for it.
    fn deliver_view(&mut self, waiter: cluster::Waiter, view: cluster::View) {
        use cluster::{View, Waiter};
        match (waiter, view) {
            // Room for one answer: never blocks; a caller that dropped its
            // receiver just does not get it.
            (Waiter::User(tx), View::User(v)) => drop(tx.try_send(v)),
            (Waiter::Room(tx), View::Room(v)) => drop(tx.try_send(v)),
            (Waiter::Http(id), View::History(room, page)) => {
                let (status, body) = match page {
                    Some(page) => (200, crate::hub::history_page_body(&room, &page)),
                    None => (
                        503,
                        br#"{"error":"unavailable","message":"the cluster could not be reached for the room's history"}"#.to_vec(),
                    ),
                };
                self.answer_waiting(id, status, &body, Instant::now());
            }
            (Waiter::Http(id), view) => {
                let body = match view {
                    View::User(v) => serde_json::to_vec(&v),
                    View::Room(v) => serde_json::to_vec(&v),
                    View::History(..) => unreachable!("answered above"),
                }
                .expect("views serialize");
                self.answer_waiting(id, 200, &body, Instant::now());
            }
            (_, view) => log::debug!("a view of the wrong kind: {view:?}"),
        }
    }

    /// Carry out `Output::Send`: at once, or as part of the reader's burst
    /// (see `burst`; it ends here when this frame cannot join it).
    fn send(&mut self, to: crate::hub::Target, frame: Bytes) {
        if burst::Burst::fits(to, &frame, self.reader) {
            let frame = match &mut self.burst {
                Some(b) => match b.add(to, frame) {
                    Ok(()) => return,
                    Err(frame) => frame,
                },
                None => frame,
            };
            self.end_burst();
            self.burst = Some(burst::Burst::new(to, frame));
        } else {
            self.end_burst();
            self.deliver(to, frame, 1);
        }
    }

    /// Queue the open burst, if any, to its recipients.
    fn end_burst(&mut self) {
        if let Some(b) = self.burst.take() {
            let (to, frame, messages) = b.finish();
            self.deliver(to, frame, messages);
        }
    }

    /// Queue one shared frame (carrying `messages` messages) to every
    /// recipient: O(recipients), no copy.
    fn deliver(&mut self, to: crate::hub::Target, frame: Bytes, messages: u64) {
        let Driver {
            hub,
            conns,
            dirty,
            slow,
            counters,
            config,
            gather,
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
            if queue_is_full(conn, cap, gather, counters) {
                if !slow.contains(&id) {
                    slow.push(id);
                }
                return;
            }
            conn.out.push(frame.clone());
            counters.messages_out += messages;
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
    fn close_socket(&mut self, key: usize, reason: CloseReason, text: Option<&str>) {
        let conn = &mut self.conns[key];
        if reason == CloseReason::SlowConsumer {
            conn.out.discard_unstarted();
        }
        conn.start_closing(close_frame(reason.code(), text.unwrap_or(reason.text())));
        *self
            .counters
            .closes_by_code
            .entry(reason.code())
            .or_default() += 1;
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
            log::info!(conn:% = conn.id; "{} disconnected", conn.id);
            self.hub.handle_closed(conn.id);
            self.drain_hub();
        }
        drop(conn);
        self.release_memory_after_load();
    }

    /// After a crowd leaves (connections down to a quarter of their peak, and
    /// the peak was big), give malloc's freed pages back to the system, so
    /// memory returns after load. O(1) unless it fires; it fires rarely.
    fn release_memory_after_load(&mut self) {
        let open = self.conns.len();
        if open > self.peak_conns {
            self.peak_conns = open;
        } else if (self.peak_conns >= 256 && open <= self.peak_conns / 4)
            || (open == 0 && self.peak_conns > 0)
        {
            self.peak_conns = open;
            self.conns.shrink_to_fit();
            self.dirty.shrink_to_fit();
            self.again.shrink_to_fit();
            self.handshakes.shrink_to_fit();
            self.closings.shrink_to_fit();
            self.hub.shrink_to_fit();
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory; no pointers change.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    fn on_deadlines(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.handshakes.front() {
            if at > now {
                break;
            }
            self.handshakes.pop_front();
            if let Some(key) = self.open_key(id) {
                let conn = &self.conns[key];
                // A keep-alive connection has a later deadline of its own.
                if matches!(conn.state, State::Http { .. }) && conn.http_deadline <= now {
                    log::debug!("{id} request timeout");
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
        if let Some(c) = &self.cluster {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                if c.summary_due(now) {
                    let summary = serde_json::to_vec(&self.node_summary(now)).expect("serializes");
                    if let Some(c) = &mut self.cluster {
                        c.set_summary(summary);
                    }
                }
                let c = self.cluster.as_mut().expect("cluster mode");
                c.on_timeout(self.poll.registry(), now);
                self.drain_hub();
            }
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
    /// Write every connection with output. A long flush (a fan-out to
    /// many) looks at the sockets every [`TAKE_IN_EVERY`] writes and reads
    /// what has arrived meanwhile ([`Driver::take_in`]): a message that
    /// comes in while the previous one is still being written joins the
    /// queues not written yet and leaves in the same write. Connections
    /// already written get another round, at most [`FLUSH_ROUNDS`] in all
    /// (then the loop goes on without waiting: `next_timeout` is zero).
    fn flush_dirty(&mut self) {
        for _ in 0..FLUSH_ROUNDS {
            let mut dirty = std::mem::take(&mut self.dirty);
            for (n, &key) in dirty.iter().enumerate() {
                if n > 0 && n % TAKE_IN_EVERY == 0 {
                    self.take_in();
                }
                self.flush_conn(key);
            }
            dirty.clear();
            if self.dirty.is_empty() {
                self.dirty = dirty;
                return;
            }
        }
    }

    /// Mid-flush: a poll that does not wait, and whatever it found handled
    /// at once (order per connection holds: queues only grow at the end).
    fn take_in(&mut self) {
        let Some(mut events) = self.take_in_events.take() else {
            return;
        };
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
            self.counters.take_ins += 1;
            let now = Instant::now();
            self.hub.advance(now);
            self.on_events(&events, now);
            // Commands that input queued for Redis (a publish, a join's
            // query; a link's setup once it connected) go out now.
            if let Some(c) = &mut self.cluster {
                c.flush(self.poll.registry(), now);
                self.drain_hub();
            }
        }
        self.take_in_events = Some(events);
    }

    fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        match conn.flush(&mut self.gather) {
            Ok(written) => self.counters.bytes_out += written as u64,
            Err(e) => {
                log::debug!("{} write failed: {e}", conn.id);
                self.drop_conn(key);
                return;
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
                return;
            }
            conn.interest = want;
        }
    }
}
