//! `switchboard-load`: a load generator for a switchboard server on loopback.
//!
//! One thread and one mio `Poll` drive every socket. Sockets are non-blocking;
//! the HTTP upgrade and the WebSocket framing are done by hand, and received
//! frames are parsed in place in a per-connection read buffer, so receiving a
//! frame allocates nothing. Client frames are masked (RFC 6455) with a cheap
//! xorshift key, and server Pings are answered with Pongs.
//!
//! ```text
//! switchboard-load --server 127.0.0.1:8080 --mode idle|fanout|latency|echo|soak
//!     [--conns N] [--room NAME] [--payload BYTES] [--in-flight K]
//!     [--messages M] [--rate PER_SEC] [--hold SECS] [--duration SECS]
//!     [--rooms R] [--seed S] [--connect-window C] [--sources S] [--busy-poll]
//! ```
//!
//! Modes:
//!
//! - `idle`: open N connections to `/ws?user=u<i>`, wait for each one's
//!   `welcome`, then hold them for `--hold` seconds (default 10) answering
//!   pings. `READY` is printed on stderr once every connection is open, so a
//!   script can read the server's `VmRSS` while they are held.
//! - `fanout`: N subscribers join `/ws/<room>?user=u<i>` (room default
//!   `bench`), then one publisher (`/ws/<room>?user=publisher`) sends M
//!   messages (default 20000) of about `--payload` bytes of JSON (default 64),
//!   `{"type":"message","room":…,"data":{"seq":S,"t":NANOS,"pad":"xx…"}}`,
//!   with at most K (`--in-flight`, default 1) outstanding; a message is
//!   complete once every subscriber has it. Subscribers check that `seq`
//!   arrives in order with none missing. Reports deliveries per second.
//! - `latency`: like fanout, but the publisher sends `--rate` messages per
//!   second (default 100) for `--duration` seconds (default 10). `t` in each
//!   message is nanoseconds since this tool's start; each delivery records
//!   `now - t`. Reports percentiles in microseconds per message at its last
//!   subscriber, and over all deliveries.
//! - `echo`: N connections to `/echo`, each keeping one text message of
//!   `--payload` bytes in flight for `--duration` seconds; reports round trips
//!   per second.
//! - `soak`: churn for `--duration` seconds (default 120) with about N clients
//!   (default 5000). Client `i` connects as `s<i>` (to `/ws` or, half of the
//!   time, `/ws/soak-<k>`), and then, on a random schedule, does one of: join
//!   a random room of `soak-0 ..= soak-<R-1>` (`--rooms`, default 50; at
//!   most 4 joined at once), leave one, send a small `message` or `typing` to
//!   a joined room, ask `presence`, send a `private` to another connected
//!   client's user, send an application `ping`, or disconnect — half of the
//!   disconnects with a clean close handshake (1000), half by resetting the
//!   socket (`SO_LINGER` 0) — and reconnect after 20–500 ms as the same user
//!   or a new one. Operations across all clients are held to `--rate` per
//!   second (default 2000) by a token bucket; each client's mean interval is
//!   `N / rate` (at least 2 ms, well under the server's per-connection limit).
//!   The random choices come from an xorshift generator seeded by `--seed`
//!   (default 1). Every operation carries `"ref":<op number>`, so an `error`
//!   reply names the operation it refuses; replies due (`joined`, `left`,
//!   `presence`, `pong`) are counted per connection and must all arrive before
//!   the server's answer to a clean close. At the end the clients stop, wait
//!   (up to 5 s) for their replies, then all close cleanly. Reports operations
//!   by kind, frames received by type, `error` replies by code (and by
//!   `code/operation`), server-initiated closes by code, connections lost
//!   without a close, handshake failures, and reconnects.
//!
//! Connections are opened at most `--connect-window` (default 500) at a time
//! so the server's accept backlog is not overrun, from source addresses
//! 127.a.b.1 ..= 127.a.b.S (`--sources`, default 8) so ephemeral ports last,
//! with `a.b` picked afresh for each run so no connection steps over the
//! previous run's TIME_WAIT 4-tuples.
//! Only loopback servers (127.0.0.0/8, `::1`) are accepted. The soft open-file
//! limit is raised to the hard limit at start.
//!
//! Output: exactly one JSON object on stdout at the end; it has an `error`
//! field (and the exit status is 1) when the run could not complete. Progress
//! goes to stderr. For example, memory per idle connection:
//!
//! ```text
//! switchboard-load --server 127.0.0.1:8080 --mode idle --conns 10000 --hold 30 2>&1 |
//!     while read -r line; do
//!         [ "$line" = READY ] && grep VmRSS /proc/$SERVER_PID/status; echo "$line"
//!     done
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::ffi::c_void;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

const HELP: &str = "\
switchboard-load: load generator for a switchboard server on loopback

usage: switchboard-load --server 127.0.0.1:8080 --mode idle|fanout|latency|echo|soak [options]

  --conns N            connections (idle, echo, soak) or subscribers (fanout, latency)
                       [100; soak: 5000]
  --room NAME          room for fanout and latency [bench]
  --payload BYTES      approximate size of each message sent [64]
  --in-flight K        fanout: messages outstanding at once [1]
  --messages M         fanout: messages to publish [20000]
  --rate PER_SEC       latency: messages published per second [100];
                       soak: operations per second over all clients [2000]
  --hold SECS          idle: how long to hold the connections [10]
  --duration SECS      latency, echo, soak: how long to send [10; soak: 120]
  --rooms R            soak: rooms soak-0 ..= soak-<R-1> [50]
  --seed S             soak: seed of the random schedule [1]
  --connect-window C   connection attempts in flight at once [500]
  --sources S          spread sockets over 127.a.b.1 ..= 127.a.b.S [8]
                       (a.b new for each run)
  --busy-poll          poll without sleeping (spins its core): on loopback
                       the server's send pays for waking a sleeping reader,
                       which separate client machines would not charge it
  -h, --help           print this help

Prints one JSON object on stdout at the end; progress and READY on stderr.
";

/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 16 * 1024;
/// Largest frame payload accepted from the server.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Initial per-connection read buffer (grows only for larger frames).
const RX_INITIAL: usize = 2048;
/// Deadline from starting a connection to its welcome (or 101 on `/echo`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the publisher's welcome and the first message, so presence
/// events caused by the joins are drained first.
const SETTLE: Duration = Duration::from_millis(200);
/// How long the latency mode waits for outstanding messages after sending.
const DRAIN: Duration = Duration::from_secs(2);
/// A fanout run without any completed message for this long is abandoned.
const STALL: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The RFC 6455 sample nonce and the accept value the server must answer.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Failure messages printed on stderr before going quiet.
const MAX_LOGGED: u32 = 10;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Idle,
    Fanout,
    Latency,
    Echo,
    Soak,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Fanout => "fanout",
            Mode::Latency => "latency",
            Mode::Echo => "echo",
            Mode::Soak => "soak",
        }
    }

    /// Fanout and latency add a publisher after the subscribers.
    fn publishes(self) -> bool {
        matches!(self, Mode::Fanout | Mode::Latency)
    }
}

#[derive(Debug)]
struct Opts {
    server: SocketAddr,
    mode: Mode,
    conns: usize,
    room: String,
    payload: usize,
    in_flight: u64,
    messages: u64,
    rate: f64,
    hold: Duration,
    duration: Duration,
    connect_window: usize,
    sources: u8,
    busy_poll: bool,
    rooms: u32,
    seed: u64,
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("switchboard-load: {msg}\n(see --help)");
            println!("{}", json!({ "error": msg }));
            return ExitCode::from(2);
        }
    };
    let limit = raise_fd_limit();
    let needed = opts.conns as libc::rlim_t + 64;
    if limit < needed {
        eprintln!("warning: open-file limit {limit} is below the {needed} descriptors needed");
    }
    let mut load = match Load::new(opts) {
        Ok(load) => load,
        Err(e) => {
            let msg = format!("cannot create the poller: {e}");
            eprintln!("switchboard-load: {msg}");
            println!("{}", json!({ "error": msg }));
            return ExitCode::FAILURE;
        }
    };
    load.run();
    let (report, ok) = load.report();
    println!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------
// Command line

fn parse_args() -> Result<Option<Opts>, String> {
    use lexopt::prelude::*;
    let mut server = None;
    let mut mode = None;
    let mut opts = Opts {
        server: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        mode: Mode::Idle,
        conns: 100,
        room: "bench".into(),
        payload: 64,
        in_flight: 1,
        messages: 20_000,
        rate: 100.0,
        hold: Duration::from_secs(10),
        duration: Duration::from_secs(10),
        connect_window: 500,
        sources: 8,
        busy_poll: false,
        rooms: 50,
        seed: 1,
    };
    let (mut conns, mut rate, mut duration) = (None, None, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("server") => server = Some(parse_server(&string(&mut parser, "server")?)?),
            Long("mode") => {
                mode = Some(match string(&mut parser, "mode")?.as_str() {
                    "idle" => Mode::Idle,
                    "fanout" => Mode::Fanout,
                    "latency" => Mode::Latency,
                    "echo" => Mode::Echo,
                    "soak" => Mode::Soak,
                    other => {
                        return Err(format!(
                            "--mode {other:?}: expected idle, fanout, latency, echo or soak"
                        ))
                    }
                })
            }
            Long("conns") => conns = Some(number(&mut parser, "conns", 1)?),
            Long("room") => opts.room = string(&mut parser, "room")?,
            Long("payload") => opts.payload = number(&mut parser, "payload", 1)?,
            Long("in-flight") => opts.in_flight = number(&mut parser, "in-flight", 1)?,
            Long("messages") => opts.messages = number(&mut parser, "messages", 1)?,
            Long("rate") => rate = Some(number(&mut parser, "rate", 0.001)?),
            Long("hold") => opts.hold = seconds(&mut parser, "hold")?,
            Long("duration") => duration = Some(seconds(&mut parser, "duration")?),
            Long("rooms") => opts.rooms = number(&mut parser, "rooms", 1)?,
            Long("seed") => opts.seed = number(&mut parser, "seed", 0)?,
            Long("connect-window") => {
                opts.connect_window = number(&mut parser, "connect-window", 1)?
            }
            Long("sources") => opts.sources = number(&mut parser, "sources", 1)?,
            Long("busy-poll") => opts.busy_poll = true,
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    opts.server = server.ok_or("--server IP:PORT is required")?;
    opts.mode = mode.ok_or("--mode is required (idle, fanout, latency, echo or soak)")?;
    let soak = opts.mode == Mode::Soak;
    opts.conns = conns.unwrap_or(if soak { 5000 } else { 100 });
    opts.rate = rate.unwrap_or(if soak { 2000.0 } else { 100.0 });
    opts.duration = duration.unwrap_or(Duration::from_secs(if soak { 120 } else { 10 }));
    let room_ok = !opts.room.is_empty()
        && opts.room.len() <= 128
        && opts
            .room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    if !room_ok {
        return Err(format!(
            "--room {:?}: use 1 to 128 characters from A-Z a-z 0-9 - _ . ~",
            opts.room
        ));
    }
    Ok(Some(opts))
}

fn string(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let value = parser.value().map_err(|e| e.to_string())?;
    value
        .into_string()
        .map_err(|_| format!("--{flag}: not valid UTF-8"))
}

fn number<T>(parser: &mut lexopt::Parser, flag: &str, min: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let text = string(parser, flag)?;
    let n: T = text
        .parse()
        .map_err(|e| format!("--{flag} {text:?}: {e}"))?;
    if n < min {
        return Err(format!("--{flag} {text}: must be at least {min}"));
    }
    Ok(n)
}

fn seconds(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let secs: f64 = number(parser, flag, 0.0)?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("--{flag} {secs}: {e}"))
}

fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.strip_prefix("localhost:") {
        Some(port) => {
            let port: u16 = port
                .parse()
                .map_err(|e| format!("--server {text:?}: {e}"))?;
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        }
        None => text
            .parse::<SocketAddr>()
            .map_err(|e| format!("--server {text:?}: {e} (expected IP:PORT)"))?,
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--server {addr}: only loopback targets (127.0.0.0/8 or ::1) are allowed"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("--server {addr}: port 0"));
    }
    Ok(addr)
}

// ---------------------------------------------------------------------------
// Connections

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not started yet.
    Idle,
    /// `connect` in progress.
    Connecting,
    /// Request written, waiting for the 101 response head.
    Upgrading,
    /// WebSocket frames flowing.
    Open,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Idle mode: a connection that is only held.
    Holder,
    Subscriber,
    Publisher,
    Echo,
    /// Soak mode: a churning client.
    Soak,
}

/// Bytes read and not yet consumed: `buf[start..end]`.
#[derive(Default)]
struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RxBuf {
    /// Make sure `buf[end..]` is not empty: compact, or grow for a large frame.
    fn make_room(&mut self) -> Result<(), Why> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return Ok(());
        }
        if self.buf.len() > MAX_FRAME + 14 {
            return Err(Why::Protocol("frame too large"));
        }
        let grown = (self.buf.len() * 2).max(RX_INITIAL);
        self.buf.resize(grown, 0);
        Ok(())
    }
}

/// Bytes to write: `buf[pos..]`.
#[derive(Default)]
struct TxBuf {
    buf: Vec<u8>,
    pos: usize,
}

/// What a connection knows about its part in the run.
struct Peer {
    role: Role,
    /// Got its welcome (hub) or its 101 (`/echo`).
    ready: bool,
    /// Subscribers: the next `seq` expected.
    expected: u64,
    /// Echo: when the message in flight was sent (ns since the epoch).
    sent_at: u64,
    /// Echo: a message is in flight.
    waiting: bool,
    /// Was ready, then lost.
    dropped: bool,
    /// Which connection attempt of this slot this is (bumped at each start),
    /// so timers left from an earlier one are ignored.
    gen: u32,
    /// Soak: the user number (the id is `s<user>`).
    user: u64,
    /// Soak: the room named in the current URL (`/ws/soak-<k>`), if any.
    url_room: Option<u32>,
    /// Soak: rooms joined, as the server sees them once it has read what was
    /// sent.
    joined: Vec<u32>,
    /// Soak: replies still due (`joined`, `left`, `presence`, `pong`, or an
    /// `error` in their place).
    awaiting: u32,
    /// Soak: our close frame is sent; waiting for the server's.
    closing: bool,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    rx: RxBuf,
    tx: TxBuf,
    peer: Peer,
}

impl Conn {
    fn new(role: Role) -> Conn {
        Conn {
            stream: None,
            state: State::Idle,
            rx: RxBuf::default(),
            tx: TxBuf::default(),
            peer: Peer {
                role,
                ready: false,
                expected: 0,
                sent_at: 0,
                waiting: false,
                dropped: false,
                gen: 0,
                user: 0,
                url_room: None,
                joined: Vec::new(),
                awaiting: 0,
                closing: false,
            },
        }
    }

    fn is_live(&self) -> bool {
        self.state == State::Open && self.peer.ready
    }

    /// Handle a readiness event: finish connecting, read, answer, flush.
    fn on_event(&mut self, idx: usize, s: &mut Shared) -> Result<(), Why> {
        if self.state == State::Connecting {
            let Some(stream) = self.stream.as_ref() else {
                return Ok(());
            };
            if !connect_done(stream).map_err(Why::Connect)? {
                return Ok(());
            }
            self.state = State::Upgrading;
            let path = match self.peer.role {
                Role::Holder => format!("/ws?user=u{idx}"),
                Role::Subscriber => format!("/ws/{}?user=u{idx}", s.opts.room),
                Role::Publisher => format!("/ws/{}?user=publisher", s.opts.room),
                Role::Echo => "/echo".to_string(),
                Role::Soak => match self.peer.url_room {
                    Some(k) => format!("/ws/soak-{k}?user=s{}", self.peer.user),
                    None => format!("/ws?user=s{}", self.peer.user),
                },
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                s.opts.server
            );
            self.tx.buf.extend_from_slice(request.as_bytes());
        }
        if matches!(self.state, State::Upgrading | State::Open) {
            self.flush()?;
            self.read(s)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Read until the socket would block, handling every complete frame.
    fn read(&mut self, s: &mut Shared) -> Result<(), Why> {
        loop {
            self.rx.make_room()?;
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            let n = match stream.read(&mut self.rx.buf[self.rx.end..]) {
                Ok(0) => return Err(Why::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Why::Io(e)),
            };
            self.rx.end += n;
            if self.state == State::Upgrading && !self.upgrade(s)? {
                continue;
            }
            let now_ns = s.now_ns();
            process_frames(&mut self.rx, &mut self.tx, &mut self.peer, s, now_ns)?;
        }
    }

    /// Look for the end of the response head; `Ok(true)` once upgraded.
    fn upgrade(&mut self, s: &mut Shared) -> Result<bool, Why> {
        let got = &self.rx.buf[..self.rx.end];
        let Some(head_len) = find(got, b"\r\n\r\n") else {
            if got.len() > MAX_HEAD {
                return Err(Why::Protocol("response head too large"));
            }
            return Ok(false);
        };
        let head = &got[..head_len];
        let status = head
            .get(9..12)
            .filter(|_| head.starts_with(b"HTTP/1."))
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or(Why::Protocol("malformed response status line"))?;
        if status != 101 {
            return Err(Why::Upgrade(status));
        }
        if find(head, WS_ACCEPT).is_none() {
            return Err(Why::Protocol("wrong Sec-WebSocket-Accept"));
        }
        self.rx.start = head_len + 4;
        self.state = State::Open;
        if self.peer.role == Role::Echo {
            // `/echo` sends no welcome: the upgrade is the whole handshake.
            self.peer.ready = true;
            s.on_ready(self.peer.role);
        }
        Ok(true)
    }

    /// Write what is queued until done or the socket would block.
    fn flush(&mut self) -> Result<(), Why> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let tx = &mut self.tx;
        while tx.pos < tx.buf.len() {
            match stream.write(&tx.buf[tx.pos..]) {
                Ok(0) => return Err(Why::Eof),
                Ok(n) => tx.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Why::Io(e)),
            }
        }
        if tx.pos == tx.buf.len() {
            tx.buf.clear();
            tx.pos = 0;
        } else if tx.pos > 64 * 1024 && tx.pos * 2 > tx.buf.len() {
            tx.buf.drain(..tx.pos);
            tx.pos = 0;
        }
        Ok(())
    }
}

/// Handle every complete frame in `rx`, in place.
fn process_frames(
    rx: &mut RxBuf,
    tx: &mut TxBuf,
    peer: &mut Peer,
    s: &mut Shared,
    now_ns: u64,
) -> Result<(), Why> {
    loop {
        let avail = &rx.buf[rx.start..rx.end];
        let Some(header) = parse_header(avail)? else {
            return Ok(());
        };
        let total = header.len + header.payload;
        if avail.len() < total {
            return Ok(());
        }
        let payload = &avail[header.len..total];
        match header.opcode {
            OP_TEXT if header.fin => on_text(peer, tx, s, payload, now_ns),
            OP_TEXT | OP_BINARY | OP_CONTINUATION => s.other_frames += 1,
            OP_PING => {
                let mask = s.mask();
                push_frame(&mut tx.buf, OP_PONG, payload, mask);
                s.pings += 1;
            }
            OP_PONG => {}
            OP_CLOSE => {
                let (code, reply) = match payload {
                    [hi, lo, ..] => (u16::from_be_bytes([*hi, *lo]), &payload[..2]),
                    _ => (1005, &payload[..0]),
                };
                if !peer.closing {
                    let mask = s.mask();
                    push_frame(&mut tx.buf, OP_CLOSE, reply, mask);
                }
                rx.start += total;
                return Err(Why::Closed(code));
            }
            _ => return Err(Why::Protocol("unknown opcode")),
        }
        rx.start += total;
    }
}

fn on_text(peer: &mut Peer, tx: &mut TxBuf, s: &mut Shared, text: &[u8], now_ns: u64) {
    if peer.role == Role::Echo {
        s.on_echo(peer, tx, text, now_ns);
        return;
    }
    if peer.role == Role::Soak {
        s.on_soak_text(peer, text);
        return;
    }
    if is_type(text, b"error") {
        s.error_frames += 1;
        if s.logged < MAX_LOGGED {
            s.logged += 1;
            eprintln!("server error: {}", String::from_utf8_lossy(text));
        }
        return;
    }
    if !peer.ready {
        if is_type(text, b"welcome") {
            peer.ready = true;
            s.on_ready(peer.role);
        }
        return;
    }
    if peer.role == Role::Subscriber && is_type(text, b"message") {
        s.on_delivery(peer, text, now_ns);
    }
}

struct FrameHeader {
    opcode: u8,
    fin: bool,
    /// Header bytes.
    len: usize,
    /// Payload bytes.
    payload: usize,
}

/// Parse a server frame header; `None` if more bytes are needed.
fn parse_header(b: &[u8]) -> Result<Option<FrameHeader>, Why> {
    let [b0, b1, ..] = *b else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Why::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(Why::Protocol("masked frame from the server"));
    }
    let (len, payload) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(&[hi, lo]) => (4, u16::from_be_bytes([hi, lo]) as usize),
            _ => return Ok(None),
        },
        127 => {
            let Some(bytes) = b.get(2..10) else {
                return Ok(None);
            };
            let mut n = [0u8; 8];
            n.copy_from_slice(bytes);
            (
                10,
                usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
            )
        }
        n => (2, n as usize),
    };
    if payload > MAX_FRAME {
        return Err(Why::Protocol("frame too large"));
    }
    Ok(Some(FrameHeader {
        opcode: b0 & 0x0f,
        fin: b0 & 0x80 != 0,
        len,
        payload,
    }))
}

/// Append one masked client frame.
fn push_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    buf.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        buf.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.push(0x80 | 126);
        buf.extend_from_slice(&short.to_be_bytes());
    } else {
        buf.push(0x80 | 127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(&mask);
    let start = buf.len();
    buf.extend_from_slice(payload);
    for (i, b) in buf[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Is `text` a JSON object whose `type` is `name`? (The server writes `type`
/// first; the search is bounded to the start of the frame.)
fn is_type(text: &[u8], name: &[u8]) -> bool {
    const KEY: &[u8] = b"\"type\":\"";
    // Every server message of these peers starts with `{"type":"`.
    let at = if text.starts_with(b"{\"type\":\"") {
        1
    } else {
        let head = &text[..text.len().min(32)];
        let Some(at) = find(head, KEY) else {
            return false;
        };
        at
    };
    let rest = &text[at + KEY.len()..];
    rest.starts_with(name) && rest.get(name.len()) == Some(&b'"')
}

/// The string value right after `key` (which ends with the opening quote) in
/// the first `within` bytes of `text`.
fn string_after<'a>(text: &'a [u8], key: &[u8], within: usize) -> Option<&'a [u8]> {
    let at = find(&text[..text.len().min(within)], key)? + key.len();
    let rest = &text[at..];
    let len = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..len])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // Runs several times per received frame, on short texts and needles
    // that start with a quote: testing two bytes inline before comparing
    // the rest beats a `windows` walk (a memcmp call per position) and
    // building a memmem searcher or calling memchr per quote.
    let [a, b, ..] = *needle else {
        return hay.iter().position(|&c| Some(&c) == needle.first());
    };
    let last = hay.len().checked_sub(needle.len())?;
    (0..=last).find(|&i| hay[i] == a && hay[i + 1] == b && hay[i..].starts_with(needle))
}

/// The unsigned integer right after `key` in `text[from..]`, and where it ends.
fn number_after(text: &[u8], from: usize, key: &[u8]) -> Option<(u64, usize)> {
    digits_at(text, from + find(text.get(from..)?, key)? + key.len())
}

/// The unsigned integer starting at `text[at]`, and where it ends.
fn digits_at(text: &[u8], at: usize) -> Option<(u64, usize)> {
    let digits = text
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = text[at..at + digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, at + digits))
}

/// Why a connection ended.
enum Why {
    Connect(io::Error),
    Io(io::Error),
    Eof,
    Upgrade(u16),
    Closed(u16),
    Timeout,
    Protocol(&'static str),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Connect(e) => write!(f, "connect: {e}"),
            Why::Io(e) => write!(f, "io: {e}"),
            Why::Eof => f.write_str("eof"),
            Why::Upgrade(status) => write!(f, "upgrade refused: HTTP {status}"),
            Why::Closed(code) => write!(f, "closed by server: {code}"),
            Why::Timeout => f.write_str("handshake timeout"),
            Why::Protocol(what) => write!(f, "protocol: {what}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The run

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Opening the main connections (subscribers, holders or echo clients).
    Connect,
    /// Opening the publisher.
    Publisher,
    Settle(Instant),
    Run,
    /// Latency: sending is over, waiting for the last deliveries.
    Drain(Instant),
    /// Idle: holding the connections.
    Hold(Instant),
    /// Soak: every client was asked to close; waiting for the server's
    /// answers until then.
    Closing(Instant),
    Done,
}

/// Everything but the sockets: counters, the run's state and its results.
struct Shared {
    opts: Opts,
    epoch: Instant,
    phase: Phase,
    rng: u64,

    connecting: usize,
    connected: usize,
    failed: usize,
    dropped: usize,
    connect_s: f64,
    open_at_end: usize,
    fail_reasons: BTreeMap<String, u64>,
    drop_reasons: BTreeMap<String, u64>,
    close_codes: BTreeMap<u16, u64>,
    logged: u32,
    pings: u64,
    error_frames: u64,
    other_frames: u64,
    unparsed: u64,
    /// Where `"seq":` sat in the last delivery: every delivery of a run has
    /// the same envelope, so this is checked before searching.
    seq_at: usize,

    run_start: Option<Instant>,
    end_at: Option<Instant>,
    /// Fanout: when the last message completed.
    done_at: Option<Instant>,
    last_progress: Instant,
    /// Subscribers every message must reach (those open when the run began).
    need: u32,
    /// Subscribers lost during the run.
    dead: u32,
    sent: u64,
    /// Messages `0..completed` reached every subscriber.
    completed: u64,
    /// Per message: subscribers that got it (or were lost).
    counts: Vec<u32>,
    /// Per message: the latest delivery's latency (ns).
    max_lat: Vec<u64>,
    deliveries: u64,
    lost: u64,
    reordered: u64,
    bogus: u64,
    undelivered_to_dropped: u64,
    frame_len: usize,
    scratch: Vec<u8>,

    echo_msg: Vec<u8>,
    round_trips: u64,
    bad_echo: u64,

    hist: Histogram,
    next_progress: Instant,
    error: Option<String>,

    soak: Soak,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A cheap masking key (xorshift64).
    fn mask(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_le_bytes()
    }

    fn on_ready(&mut self, role: Role) {
        self.connecting -= 1;
        if role == Role::Soak {
            self.soak.live += 1;
            self.soak.peak_live = self.soak.peak_live.max(self.soak.live);
            if self.phase != Phase::Connect {
                self.soak.reconnects += 1;
                return;
            }
        }
        if role != Role::Publisher {
            self.connected += 1;
        }
    }

    fn on_delivery(&mut self, peer: &mut Peer, text: &[u8], now_ns: u64) {
        const SEQ: &[u8] = b"\"seq\":";
        if !text.get(self.seq_at..).is_some_and(|t| t.starts_with(SEQ)) {
            let from = find(text, b"\"data\":").unwrap_or(0);
            let Some(at) = find(&text[from..], SEQ) else {
                self.unparsed += 1;
                return;
            };
            self.seq_at = from + at;
        }
        let Some((seq, after)) = digits_at(text, self.seq_at + SEQ.len()) else {
            self.unparsed += 1;
            return;
        };
        self.deliveries += 1;
        // `"t"` follows `"seq"` in what the publisher sends.
        let t = match text.get(after..) {
            Some(rest) if rest.starts_with(b",\"t\":") => digits_at(text, after + 5),
            _ => number_after(text, after, b"\"t\":"),
        };
        if let Some((t, _)) = t {
            let latency = now_ns.saturating_sub(t);
            self.hist.record(latency);
            if let Some(max) = self.max_lat.get_mut(seq as usize) {
                *max = (*max).max(latency);
            }
        }
        if seq >= self.sent {
            self.bogus += 1;
        } else if seq == peer.expected {
            peer.expected += 1;
            self.account(seq);
        } else if seq > peer.expected {
            self.lost += seq - peer.expected;
            for missing in peer.expected..=seq {
                self.account(missing);
            }
            peer.expected = seq + 1;
        } else {
            self.reordered += 1;
        }
    }

    /// One more subscriber is done with message `seq`.
    fn account(&mut self, seq: u64) {
        self.counts[seq as usize] += 1;
        let before = self.completed;
        while self.completed < self.sent && self.counts[self.completed as usize] >= self.need {
            self.completed += 1;
        }
        if self.completed != before {
            let now = Instant::now();
            self.last_progress = now;
            if self.opts.mode == Mode::Fanout && self.completed == self.opts.messages {
                self.done_at = Some(now);
            }
        }
    }

    /// A subscriber was lost mid-run: it no longer holds messages back.
    fn subscriber_lost(&mut self, expected: u64) {
        self.dead += 1;
        self.undelivered_to_dropped += self.sent - expected.min(self.sent);
        for seq in expected..self.sent {
            self.account(seq);
        }
    }

    /// Append the next published message to the publisher's output.
    fn publish(&mut self, tx: &mut TxBuf) {
        let seq = self.sent;
        let t = self.now_ns();
        self.scratch.clear();
        write!(
            self.scratch,
            r#"{{"type":"message","room":"{}","data":{{"seq":{seq},"t":{t},"pad":""#,
            self.opts.room
        )
        .expect("writing to a Vec");
        let pad = self.opts.payload.saturating_sub(self.scratch.len() + 3);
        self.scratch.resize(self.scratch.len() + pad, b'x');
        self.scratch.extend_from_slice(b"\"}}");
        let mask = self.mask();
        push_frame(&mut tx.buf, OP_TEXT, &self.scratch, mask);
        self.frame_len = self.scratch.len();
        self.counts.push(self.dead);
        self.max_lat.push(0);
        self.sent += 1;
    }

    fn echo_send(&mut self, peer: &mut Peer, tx: &mut TxBuf, now_ns: u64) {
        let mask = self.mask();
        push_frame(&mut tx.buf, OP_TEXT, &self.echo_msg, mask);
        peer.sent_at = now_ns;
        peer.waiting = true;
    }

    fn on_echo(&mut self, peer: &mut Peer, tx: &mut TxBuf, text: &[u8], now_ns: u64) {
        if !peer.waiting {
            self.bad_echo += 1;
            return;
        }
        peer.waiting = false;
        if text != self.echo_msg.as_slice() {
            self.bad_echo += 1;
        }
        self.round_trips += 1;
        self.hist.record(now_ns.saturating_sub(peer.sent_at));
        if self.phase == Phase::Run {
            self.echo_send(peer, tx, now_ns);
        }
    }
}

struct Load {
    poll: Poll,
    conns: Vec<Conn>,
    s: Shared,
    /// Main connections are `0..main`; the publisher, if any, is `main`.
    main: usize,
    next_open: usize,
    open_limit: usize,
    /// Handshake deadlines in start order (one fixed timeout, so a FIFO),
    /// with the attempt (`Peer::gen`) each is for.
    deadlines: VecDeque<(Instant, usize, u32)>,
    sources: Vec<Option<IpAddr>>,
}

impl Load {
    fn new(opts: Opts) -> io::Result<Load> {
        let role = match opts.mode {
            Mode::Idle => Role::Holder,
            Mode::Fanout | Mode::Latency => Role::Subscriber,
            Mode::Echo => Role::Echo,
            Mode::Soak => Role::Soak,
        };
        let main = opts.conns;
        let mut conns: Vec<Conn> = (0..main).map(|_| Conn::new(role)).collect();
        if opts.mode.publishes() {
            conns.push(Conn::new(Role::Publisher));
        }
        let sources = match opts.server.ip() {
            IpAddr::V4(_) => {
                // A fresh /24 of 127.0.0.0/8 for each run: the 4-tuples of a
                // run just before are still in TIME_WAIT, and a connect that
                // must step over them is several times slower, which would
                // measure the previous run instead of the server.
                let [a, b] = fresh_subnet();
                (1..=opts.sources)
                    .map(|k| Some(IpAddr::V4(Ipv4Addr::new(127, a, b, k))))
                    .collect()
            }
            IpAddr::V6(_) => vec![None],
        };
        let now = Instant::now();
        let echo_msg = vec![b'x'; opts.payload];
        if opts.mode == Mode::Soak {
            for (i, conn) in conns.iter_mut().enumerate() {
                conn.peer.user = i as u64;
            }
        }
        let soak = Soak::new(&opts, now);
        let s = Shared {
            epoch: now,
            phase: Phase::Connect,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
            connecting: 0,
            connected: 0,
            failed: 0,
            dropped: 0,
            connect_s: 0.0,
            open_at_end: 0,
            fail_reasons: BTreeMap::new(),
            drop_reasons: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            logged: 0,
            pings: 0,
            error_frames: 0,
            other_frames: 0,
            unparsed: 0,
            seq_at: 0,
            run_start: None,
            end_at: None,
            done_at: None,
            last_progress: now,
            need: 0,
            dead: 0,
            sent: 0,
            completed: 0,
            counts: Vec::new(),
            max_lat: Vec::new(),
            deliveries: 0,
            lost: 0,
            reordered: 0,
            bogus: 0,
            undelivered_to_dropped: 0,
            frame_len: 0,
            scratch: Vec::with_capacity(opts.payload + 128),
            echo_msg,
            round_trips: 0,
            bad_echo: 0,
            hist: Histogram::new(),
            next_progress: now + PROGRESS_EVERY,
            error: None,
            soak,
            opts,
        };
        Ok(Load {
            poll: Poll::new()?,
            conns,
            s,
            main,
            next_open: 0,
            open_limit: main,
            deadlines: VecDeque::new(),
            sources,
        })
    }

    fn run(&mut self) {
        eprintln!(
            "{} against {}: {} connections",
            self.s.opts.mode.name(),
            self.s.opts.server,
            self.main
        );
        let mut events = Events::with_capacity(4096);
        self.tick(Instant::now());
        while self.s.phase != Phase::Done {
            let timeout = if self.s.opts.busy_poll {
                Duration::ZERO
            } else {
                self.timeout(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.s.error = Some(format!("poll failed: {e}"));
                break;
            }
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            self.tick(Instant::now());
        }
        self.s.open_at_end = if self.s.opts.mode == Mode::Soak {
            // Soak: anything not closed by now did not close cleanly.
            self.conns
                .iter()
                .filter(|c| matches!(c.state, State::Connecting | State::Upgrading | State::Open))
                .count()
        } else {
            self.conns[..self.main]
                .iter()
                .filter(|c| c.is_live())
                .count()
        };
        self.close_all();
    }

    fn on_event(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let was_ready = conn.peer.ready;
        let result = conn.on_event(idx, &mut self.s);
        let became_ready = !was_ready && conn.peer.ready;
        let (role, gen) = (conn.peer.role, conn.peer.gen);
        match result {
            Err(why) => self.fail(idx, why),
            Ok(()) if became_ready && role == Role::Soak => match self.s.phase {
                Phase::Run => self.s.soak.schedule_op(idx, gen, Instant::now()),
                Phase::Closing(_) => self.soak_close(idx, Instant::now()),
                _ => {}
            },
            Ok(()) => {}
        }
    }

    /// Start connections while the window allows.
    fn open_more(&mut self, now: Instant) {
        while self.s.connecting < self.s.opts.connect_window && self.next_open < self.open_limit {
            let idx = self.next_open;
            self.next_open += 1;
            self.start_conn(idx, now);
        }
    }

    /// Start connection attempt number `gen + 1` of slot `idx`.
    fn start_conn(&mut self, idx: usize, now: Instant) {
        self.s.connecting += 1;
        let conn = &mut self.conns[idx];
        conn.peer.gen = conn.peer.gen.wrapping_add(1);
        if conn.peer.role == Role::Soak {
            self.s.soak.prepare(&mut conn.peer, self.s.opts.rooms);
        }
        let gen = conn.peer.gen;
        let source = self.sources[(idx + gen as usize - 1) % self.sources.len()];
        conn.state = State::Connecting;
        let role = conn.peer.role;
        let started = connect_from(source, self.s.opts.server).and_then(|std| {
            let mut stream = TcpStream::from_std(std);
            // Idle holders only ever send pongs: spare the connect rate a syscall.
            if role != Role::Holder {
                stream.set_nodelay(true)?;
            }
            self.poll.registry().register(
                &mut stream,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match started {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.rx.buf = vec![0; RX_INITIAL];
                self.deadlines
                    .push_back((now + HANDSHAKE_TIMEOUT, idx, gen));
            }
            Err(e) => self.fail(idx, Why::Connect(e)),
        }
    }

    /// Close a connection and account for it.
    fn fail(&mut self, idx: usize, why: Why) {
        let conn = &mut self.conns[idx];
        if matches!(conn.state, State::Idle | State::Closed) {
            return;
        }
        if let Some(stream) = conn.stream.as_mut() {
            // Best effort: a close reply or pong may still be queued.
            let _ = stream.write(&conn.tx.buf[conn.tx.pos..]);
        }
        conn.stream = None;
        conn.state = State::Closed;
        conn.rx = RxBuf::default();
        conn.tx = TxBuf::default();
        if conn.peer.role == Role::Soak {
            self.soak_lost(idx, why);
            return;
        }
        let s = &mut self.s;
        let reason = why.to_string();
        if let Why::Closed(code) = why {
            *s.close_codes.entry(code).or_default() += 1;
        }
        if s.logged < MAX_LOGGED {
            s.logged += 1;
            eprintln!("connection {idx} ({:?}): {reason}", conn.peer.role);
        }
        if conn.peer.ready {
            conn.peer.dropped = true;
            s.dropped += 1;
            *s.drop_reasons.entry(reason.clone()).or_default() += 1;
            match conn.peer.role {
                Role::Subscriber if s.run_start.is_some() => s.subscriber_lost(conn.peer.expected),
                Role::Publisher => s.error = Some(format!("publisher connection lost: {reason}")),
                _ => {}
            }
        } else {
            s.connecting -= 1;
            *s.fail_reasons.entry(reason.clone()).or_default() += 1;
            if conn.peer.role == Role::Publisher {
                s.error = Some(format!("publisher could not connect: {reason}"));
            } else {
                s.failed += 1;
            }
        }
    }

    /// Timers, phase changes, publishing and progress, after each poll.
    fn tick(&mut self, now: Instant) {
        while let Some(&(deadline, idx, gen)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let conn = &self.conns[idx];
            let handshaking = matches!(conn.state, State::Connecting | State::Upgrading);
            if conn.peer.gen == gen && handshaking && !conn.peer.ready {
                self.fail(idx, Why::Timeout);
            }
        }
        self.open_more(now);
        match self.s.phase {
            Phase::Connect if self.next_open == self.open_limit && self.s.connecting == 0 => {
                self.connected(now)
            }
            Phase::Run | Phase::Drain(_) | Phase::Closing(_) if self.s.opts.mode == Mode::Soak => {
                self.soak_tick(now)
            }
            Phase::Publisher if self.conns[self.main].is_live() => {
                self.s.phase = Phase::Settle(now + SETTLE);
            }
            Phase::Settle(at) if now >= at => self.start_run(now),
            Phase::Run => self.run_step(now),
            Phase::Drain(at) if self.s.completed == self.s.sent || now >= at => {
                self.s.phase = Phase::Done;
            }
            Phase::Hold(at) if now >= at => {
                self.s.end_at = Some(now);
                self.s.phase = Phase::Done;
            }
            _ => {}
        }
        if self.s.error.is_some() {
            self.s.phase = Phase::Done;
        }
        if now >= self.s.next_progress && self.s.phase != Phase::Done {
            self.s.next_progress = now + PROGRESS_EVERY;
            self.progress(now);
        }
    }

    /// Every main connection is open or failed.
    fn connected(&mut self, now: Instant) {
        let s = &mut self.s;
        s.connect_s = (now - s.epoch).as_secs_f64();
        eprintln!(
            "connected {}/{} ({} failed) in {:.2}s",
            s.connected, self.main, s.failed, s.connect_s
        );
        if s.connected == 0 && s.opts.mode != Mode::Idle {
            s.error = Some("no connection could be opened".into());
            return;
        }
        eprintln!("READY");
        match s.opts.mode {
            Mode::Idle => s.phase = Phase::Hold(now + s.opts.hold),
            Mode::Echo | Mode::Soak => self.start_run(now),
            Mode::Fanout | Mode::Latency => {
                s.phase = Phase::Publisher;
                self.open_limit += 1;
                self.open_more(now);
            }
        }
    }

    fn start_run(&mut self, now: Instant) {
        self.s.phase = Phase::Run;
        self.s.run_start = Some(now);
        self.s.last_progress = now;
        match self.s.opts.mode {
            Mode::Fanout | Mode::Latency => {
                let live = self.conns[..self.main]
                    .iter()
                    .filter(|c| c.is_live())
                    .count();
                self.s.need = live as u32;
                if live == 0 {
                    self.s.error = Some("every subscriber was lost before the run".into());
                    return;
                }
                eprintln!("publishing to {live} subscribers");
            }
            Mode::Echo => {
                for idx in 0..self.main {
                    let conn = &mut self.conns[idx];
                    if !conn.is_live() {
                        continue;
                    }
                    let now_ns = self.s.now_ns();
                    self.s.echo_send(&mut conn.peer, &mut conn.tx, now_ns);
                    if let Err(why) = conn.flush() {
                        self.fail(idx, why);
                    }
                }
            }
            Mode::Soak => {
                let s = &mut self.s;
                s.soak.refilled = now;
                eprintln!(
                    "soak: {} clients, {} rooms, {} operations/s, one per client every {:.1} ms on average",
                    s.connected,
                    s.opts.rooms,
                    s.opts.rate,
                    s.soak.interval.as_secs_f64() * 1000.0
                );
                for (idx, conn) in self.conns.iter().enumerate() {
                    if conn.is_live() {
                        s.soak.schedule_op(idx, conn.peer.gen, now);
                    } else if conn.state == State::Closed {
                        // Could not connect at first: try again during the run.
                        s.soak.schedule_reconnect(idx, conn.peer.gen, now);
                    }
                }
            }
            Mode::Idle => {}
        }
        self.run_step(now);
    }

    fn run_step(&mut self, now: Instant) {
        let s = &mut self.s;
        let start = s.run_start.unwrap_or(now);
        match s.opts.mode {
            Mode::Fanout => {
                self.publish(now);
                let s = &mut self.s;
                if s.completed >= s.opts.messages {
                    s.end_at = Some(s.done_at.unwrap_or(now));
                    s.phase = Phase::Done;
                } else if now - s.last_progress > STALL {
                    s.end_at = Some(now);
                    s.error = Some(format!(
                        "stalled: no message completed for {}s ({} of {} complete)",
                        STALL.as_secs(),
                        s.completed,
                        s.opts.messages
                    ));
                }
            }
            Mode::Latency => {
                if now >= start + s.opts.duration {
                    s.end_at = Some(now);
                    s.phase = Phase::Drain(now + DRAIN);
                } else {
                    self.publish(now);
                }
            }
            Mode::Echo => {
                if now >= start + s.opts.duration {
                    s.end_at = Some(now);
                    s.phase = Phase::Done;
                }
            }
            Mode::Idle | Mode::Soak => {}
        }
    }

    /// When the latency publisher's next message is due.
    fn next_send(&self) -> Instant {
        let start = self.s.run_start.unwrap_or(self.s.epoch);
        start + Duration::from_secs_f64(self.s.sent as f64 / self.s.opts.rate)
    }

    /// Queue what the publisher may send now, and write it.
    fn publish(&mut self, now: Instant) {
        let idx = self.main;
        if !self.conns[idx].is_live() {
            return;
        }
        let due = self.next_send();
        let Load { conns, s, .. } = self;
        let conn = &mut conns[idx];
        match s.opts.mode {
            Mode::Fanout => {
                while s.sent < s.opts.messages && s.sent - s.completed < s.opts.in_flight {
                    s.publish(&mut conn.tx);
                }
            }
            Mode::Latency => {
                let mut due = due;
                while due <= now {
                    s.publish(&mut conn.tx);
                    due = s.run_start.unwrap_or(now)
                        + Duration::from_secs_f64(s.sent as f64 / s.opts.rate);
                }
            }
            Mode::Idle | Mode::Echo | Mode::Soak => {}
        }
        if let Err(why) = conn.flush() {
            self.fail(idx, why);
        }
    }

    fn timeout(&self, now: Instant) -> Duration {
        let mut next = self.s.next_progress;
        if let Some(&(deadline, _, _)) = self.deadlines.front() {
            next = next.min(deadline);
        }
        if self.s.opts.mode == Mode::Soak {
            if let Some(at) = self.s.soak.next_timer(self.s.opts.rate) {
                next = next.min(at);
            }
        }
        match self.s.phase {
            Phase::Settle(at) | Phase::Drain(at) | Phase::Hold(at) | Phase::Closing(at) => {
                next = next.min(at)
            }
            Phase::Run => {
                let start = self.s.run_start.unwrap_or(now);
                match self.s.opts.mode {
                    Mode::Latency => {
                        next = next.min(self.next_send()).min(start + self.s.opts.duration)
                    }
                    Mode::Echo | Mode::Soak => next = next.min(start + self.s.opts.duration),
                    Mode::Fanout | Mode::Idle => {}
                }
            }
            _ => {}
        }
        next.saturating_duration_since(now)
    }

    fn progress(&self, now: Instant) {
        let s = &self.s;
        let at = (now - s.epoch).as_secs_f64();
        match s.phase {
            Phase::Connect | Phase::Publisher => eprintln!(
                "[{at:.1}s] connecting: {} open, {} failed, {} in flight, {} to go",
                s.connected,
                s.failed,
                s.connecting,
                self.open_limit - self.next_open
            ),
            Phase::Run | Phase::Drain(_) | Phase::Closing(_) => match s.opts.mode {
                Mode::Echo => eprintln!("[{at:.1}s] echo: {} round trips", s.round_trips),
                Mode::Soak => {
                    let k = &s.soak;
                    let ops: u64 = k.ops.iter().sum();
                    let received: u64 = k.received.iter().sum();
                    let errors: u64 = k.errors.values().sum();
                    let unexpected: u64 = k.unexpected_closes.values().sum::<u64>()
                        + k.unexpected_drops.values().sum::<u64>();
                    let phase = match s.phase {
                        Phase::Run => "run",
                        Phase::Drain(_) => "drain",
                        _ => "closing",
                    };
                    eprintln!(
                        "[{at:.1}s] soak {phase}: {} live, {} in handshake, {ops} ops, \
                         {received} received, {} reconnects, {errors} error replies, \
                         {unexpected} unexpected closes",
                        k.live, s.connecting, k.reconnects
                    );
                }
                _ => eprintln!(
                    "[{at:.1}s] {}: {} sent, {} complete, {} deliveries, {} lost",
                    s.opts.mode.name(),
                    s.sent,
                    s.completed,
                    s.deliveries,
                    s.lost
                ),
            },
            Phase::Hold(until) => eprintln!(
                "[{at:.1}s] holding {} connections ({} dropped, {:.0}s left)",
                s.connected - s.dropped,
                s.dropped,
                until.saturating_duration_since(now).as_secs_f64()
            ),
            Phase::Settle(_) | Phase::Done => {}
        }
    }

    /// Say goodbye (close 1000) on every open socket, then drop them all.
    fn close_all(&mut self) {
        for conn in &mut self.conns {
            if conn.state == State::Open {
                let mask = self.s.mask();
                push_frame(&mut conn.tx.buf, OP_CLOSE, &1000u16.to_be_bytes(), mask);
                let _ = conn.flush();
            }
            conn.stream = None;
            conn.state = State::Closed;
        }
    }

    fn report(&self) -> (String, bool) {
        let s = &self.s;
        let o = &s.opts;
        let mut r = Report::default();
        r.add("mode", o.mode.name());
        r.add("server", o.server.to_string());
        r.add("conns", o.conns);
        if o.busy_poll {
            r.add("busy_poll", true);
        }
        r.add("connected", s.connected);
        r.add("failed", s.failed);
        r.add("connect_s", round(s.connect_s, 3));
        let elapsed = match (s.run_start, s.end_at) {
            (Some(start), Some(end)) => (end - start).as_secs_f64(),
            _ => 0.0,
        };
        let per_sec = |n: u64| {
            if elapsed > 0.0 {
                round(n as f64 / elapsed, 1)
            } else {
                0.0
            }
        };
        match o.mode {
            Mode::Idle => {
                r.add("hold_s", round(o.hold.as_secs_f64(), 3));
                r.add("open_at_end", s.open_at_end);
            }
            Mode::Fanout | Mode::Latency => {
                // Messages a subscriber still connected never got are lost too.
                let tail: u64 = self.conns[..self.main]
                    .iter()
                    .filter(|c| c.peer.ready && !c.peer.dropped)
                    .map(|c| s.sent.saturating_sub(c.peer.expected))
                    .sum();
                r.add("subscribers", s.need);
                r.add("payload_bytes", s.frame_len);
                if o.mode == Mode::Fanout {
                    r.add("messages", o.messages);
                    r.add("in_flight", o.in_flight);
                } else {
                    r.add("rate", o.rate);
                    r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                }
                r.add("messages_sent", s.sent);
                r.add("messages_completed", s.completed);
                r.add("deliveries", s.deliveries);
                r.add("expected_deliveries", u64::from(s.need) * s.sent);
                r.add("deliveries_per_sec", per_sec(s.deliveries));
                r.add("messages_per_sec", per_sec(s.completed));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("lost", s.lost + tail);
                r.add("reordered", s.reordered);
                r.add("subscribers_dropped", s.dead);
                r.add("undelivered_to_dropped", s.undelivered_to_dropped);
                let mut per_message = s.max_lat[..s.completed as usize].to_vec();
                per_message.sort_unstable();
                r.add_object("latency_last_subscriber_us", sorted_summary(&per_message));
                r.add_object("latency_all_deliveries_us", s.hist.summary());
                if s.bogus > 0 || s.unparsed > 0 {
                    r.add("bogus_seq", s.bogus);
                    r.add("unparsed", s.unparsed);
                }
            }
            Mode::Echo => {
                r.add("payload_bytes", o.payload);
                r.add("duration_s", round(o.duration.as_secs_f64(), 3));
                r.add("elapsed_s", round(elapsed, 3));
                r.add("round_trips", s.round_trips);
                r.add("round_trips_per_sec", per_sec(s.round_trips));
                r.add_object("rtt_us", s.hist.summary());
                r.add("bad_echo", s.bad_echo);
            }
            Mode::Soak => self.soak_report(&mut r, elapsed),
        }
        if o.mode != Mode::Soak {
            r.add("dropped", s.dropped);
        }
        r.add("pings_answered", s.pings);
        r.add("error_frames", s.error_frames);
        if s.other_frames > 0 {
            r.add("other_frames", s.other_frames);
        }
        if o.mode != Mode::Soak {
            r.add("close_codes", &s.close_codes);
            r.add("fail_reasons", &s.fail_reasons);
            r.add("drop_reasons", &s.drop_reasons);
        }
        if let Some(e) = &s.error {
            r.add("error", e);
        }
        (r.finish(), s.error.is_none())
    }
}

// ---------------------------------------------------------------------------
// Soak

/// Most rooms a soak client is in at once, so room fan-out stays bounded.
const SOAK_MAX_JOINED: usize = 4;
/// Shortest mean interval between one soak client's operations: 500/s, half
/// the server's default per-connection rate limit.
const SOAK_MIN_INTERVAL: Duration = Duration::from_millis(2);
/// Reconnect delay after a disconnect: at least this, plus up to the jitter.
const SOAK_RECONNECT_MIN_MS: u64 = 20;
const SOAK_RECONNECT_JITTER_MS: u64 = 480;
/// How long a clean close waits for the server's close frame.
const SOAK_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// After the run: how long to wait for replies due and handshakes under way.
const SOAK_DRAIN: Duration = Duration::from_secs(5);
/// Then: how long to wait for the server to answer every final close.
const SOAK_CLOSING: Duration = Duration::from_secs(5);
/// Server frame types counted by name; anything else counts as `other`.
const SOAK_RX_TYPES: [&str; 12] = [
    "welcome",
    "joined",
    "left",
    "message",
    "private",
    "broadcast",
    "user_joined",
    "user_left",
    "typing",
    "presence",
    "pong",
    "error",
];

/// What a soak client does next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Join,
    Leave,
    Message,
    Typing,
    Presence,
    Private,
    Ping,
    /// Clean close handshake (1000), then reconnect.
    Close,
    /// Drop the socket with an RST (`SO_LINGER` 0), then reconnect.
    Reset,
}

impl Op {
    /// In the order of `WEIGHTS`; an operation's `ref` is its index here.
    const ALL: [Op; 9] = [
        Op::Join,
        Op::Leave,
        Op::Message,
        Op::Typing,
        Op::Presence,
        Op::Private,
        Op::Ping,
        Op::Close,
        Op::Reset,
    ];
    /// Percent chance of each operation.
    const WEIGHTS: [u64; 9] = [16, 12, 18, 10, 10, 12, 16, 3, 3];

    fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Leave => "leave",
            Op::Message => "message",
            Op::Typing => "typing",
            Op::Presence => "presence",
            Op::Private => "private",
            Op::Ping => "ping",
            Op::Close => "close",
            Op::Reset => "reset",
        }
    }

    /// Does the server answer it (with its reply, or an `error` instead)?
    fn replied(self) -> bool {
        matches!(self, Op::Join | Op::Leave | Op::Presence | Op::Ping)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    /// The client's next operation.
    Op,
    /// Reconnect after a disconnect.
    Reconnect,
    /// The server did not answer our close in time.
    CloseTimeout,
}

/// Soak mode's schedule and counters.
struct Soak {
    /// xorshift64* state, from `--seed`.
    rng: u64,
    /// When each client's next step is due, with the attempt (`Peer::gen`)
    /// it is for; entries for an earlier attempt are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, u32, Timer)>>,
    /// Mean interval between one client's operations.
    interval: Duration,
    /// Token bucket holding all clients to `--rate` operations per second.
    tokens: f64,
    burst: f64,
    refilled: Instant,
    /// The next new user number (`s<n>`) for a reconnect as a new user.
    next_user: u64,
    /// Counter put in each `message` / `private` payload.
    sent: u64,
    live: usize,
    peak_live: usize,
    ops: [u64; Op::ALL.len()],
    received: [u64; SOAK_RX_TYPES.len() + 1],
    errors: BTreeMap<String, u64>,
    errors_by_op: BTreeMap<String, u64>,
    reconnect_attempts: u64,
    reconnects: u64,
    handshake_failures: BTreeMap<String, u64>,
    /// Close frames the server sent on its own, by code.
    unexpected_closes: BTreeMap<u16, u64>,
    /// Connections lost without a close frame, not by our doing.
    unexpected_drops: BTreeMap<String, u64>,
    /// The server's answers to our close frames, by code.
    close_replies: BTreeMap<u16, u64>,
    /// Our close got no close frame back, but the connection ended.
    closes_without_reply: BTreeMap<String, u64>,
    close_timeouts: u64,
    /// Clean closes completed in the final closing phase.
    final_closes: u64,
    /// Replies still due when the server answered a clean close.
    replies_missing: u64,
    /// Replies still due on connections we reset (or lost): not an anomaly.
    replies_abandoned: u64,
    /// `joined`/`left`/`presence`/`pong` with no request of ours waiting.
    unsolicited_replies: u64,
    frames_before_welcome: u64,
}

impl Soak {
    fn new(opts: &Opts, now: Instant) -> Soak {
        // splitmix64 of the seed, so that small seeds give unrelated streams.
        let mut z = opts.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let interval = Duration::try_from_secs_f64(opts.conns as f64 / opts.rate)
            .unwrap_or(Duration::MAX)
            .max(SOAK_MIN_INTERVAL);
        Soak {
            rng: z.max(1),
            timers: BinaryHeap::new(),
            interval,
            tokens: 0.0,
            burst: (opts.rate / 10.0).max(1.0),
            refilled: now,
            next_user: opts.conns as u64,
            sent: 0,
            live: 0,
            peak_live: 0,
            ops: [0; Op::ALL.len()],
            received: [0; SOAK_RX_TYPES.len() + 1],
            errors: BTreeMap::new(),
            errors_by_op: BTreeMap::new(),
            reconnect_attempts: 0,
            reconnects: 0,
            handshake_failures: BTreeMap::new(),
            unexpected_closes: BTreeMap::new(),
            unexpected_drops: BTreeMap::new(),
            close_replies: BTreeMap::new(),
            closes_without_reply: BTreeMap::new(),
            close_timeouts: 0,
            final_closes: 0,
            replies_missing: 0,
            replies_abandoned: 0,
            unsolicited_replies: 0,
            frames_before_welcome: 0,
        }
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (near enough: `n` is small).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick_op(&mut self) -> Op {
        let mut roll = self.below(Op::WEIGHTS.iter().sum());
        for (op, weight) in Op::ALL.into_iter().zip(Op::WEIGHTS) {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        Op::Ping
    }

    /// The next operation of a client: uniform in `0 .. 2 * interval` from now.
    fn schedule_op(&mut self, idx: usize, gen: u32, now: Instant) {
        let fraction = self.below(1 << 20) as f64 / f64::from(1 << 20);
        let at = now + self.interval.mul_f64(2.0 * fraction);
        self.timers.push(Reverse((at, idx, gen, Timer::Op)));
    }

    fn schedule_reconnect(&mut self, idx: usize, gen: u32, now: Instant) {
        let ms = SOAK_RECONNECT_MIN_MS + self.below(SOAK_RECONNECT_JITTER_MS);
        let at = now + Duration::from_millis(ms);
        self.timers.push(Reverse((at, idx, gen, Timer::Reconnect)));
    }

    /// Take one operation's token if the bucket has one.
    fn take_token(&mut self, now: Instant, rate: f64) -> bool {
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the first timer is due (an operation also waits for a token).
    fn next_timer(&self, rate: f64) -> Option<Instant> {
        let &Reverse((at, _, _, timer)) = self.timers.peek()?;
        if timer == Timer::Op && self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
            return Some(at.max(self.refilled + wait));
        }
        Some(at)
    }

    /// Fresh per-connection state for a new attempt: maybe a new user, maybe
    /// a room in the URL (its `joined` is then due).
    fn prepare(&mut self, peer: &mut Peer, rooms: u32) {
        peer.ready = false;
        peer.closing = false;
        peer.awaiting = 0;
        peer.joined.clear();
        peer.url_room = None;
        if peer.gen > 1 && self.below(2) == 0 {
            peer.user = self.next_user;
            self.next_user += 1;
        }
        if self.below(2) == 0 {
            let room = self.below(u64::from(rooms)) as u32;
            peer.url_room = Some(room);
            peer.joined.push(room);
            peer.awaiting = 1;
        }
    }

    /// A reply to one of our requests arrived.
    fn reply(&mut self, peer: &mut Peer) {
        if peer.awaiting > 0 {
            peer.awaiting -= 1;
        } else {
            self.unsolicited_replies += 1;
        }
    }
}

impl Shared {
    fn on_soak_text(&mut self, peer: &mut Peer, text: &[u8]) {
        let kind = string_after(text, b"\"type\":\"", 32);
        let slot = kind
            .and_then(|t| SOAK_RX_TYPES.iter().position(|n| n.as_bytes() == t))
            .unwrap_or(SOAK_RX_TYPES.len());
        self.soak.received[slot] += 1;
        if !peer.ready {
            if kind == Some(b"welcome") {
                peer.ready = true;
                self.on_ready(Role::Soak);
            } else {
                self.soak.frames_before_welcome += 1;
            }
            return;
        }
        match kind.unwrap_or_default() {
            b"joined" | b"left" | b"presence" | b"pong" => self.soak.reply(peer),
            b"error" => {
                self.error_frames += 1;
                let code = string_after(text, b"\"code\":\"", text.len()).unwrap_or(b"?");
                let code = String::from_utf8_lossy(code);
                let op = number_after(text, 0, b"\"ref\":")
                    .and_then(|(n, _)| Op::ALL.get(usize::try_from(n).ok()?).copied());
                if op.is_some_and(Op::replied) {
                    self.soak.reply(peer);
                }
                let op_name = op.map_or("?", Op::name);
                *self
                    .soak
                    .errors_by_op
                    .entry(format!("{code}/{op_name}"))
                    .or_default() += 1;
                *self.soak.errors.entry(code.into_owned()).or_default() += 1;
                if self.logged < MAX_LOGGED {
                    self.logged += 1;
                    eprintln!(
                        "s{}: server error: {}",
                        peer.user,
                        String::from_utf8_lossy(text)
                    );
                }
            }
            _ => {}
        }
    }
}

impl Load {
    /// Soak timers, operations and phase changes.
    fn soak_tick(&mut self, now: Instant) {
        let run = self.s.phase == Phase::Run;
        while let Some(&Reverse((at, idx, gen, timer))) = self.s.soak.timers.peek() {
            if at > now {
                break;
            }
            let conn = &self.conns[idx];
            let current = conn.peer.gen == gen;
            let valid = match timer {
                Timer::Op => run && current && conn.is_live() && !conn.peer.closing,
                Timer::Reconnect => run && current && conn.state == State::Closed,
                Timer::CloseTimeout => current && conn.state == State::Open && conn.peer.closing,
            };
            if valid && timer == Timer::Op && !self.s.soak.take_token(now, self.s.opts.rate) {
                break;
            }
            self.s.soak.timers.pop();
            if !valid {
                continue;
            }
            match timer {
                Timer::Op => self.soak_op(idx, now),
                Timer::Reconnect => {
                    self.s.soak.reconnect_attempts += 1;
                    self.start_conn(idx, now);
                }
                Timer::CloseTimeout => self.fail(idx, Why::Timeout),
            }
        }
        match self.s.phase {
            Phase::Run => {
                let start = self.s.run_start.unwrap_or(now);
                if now >= start + self.s.opts.duration {
                    self.s.end_at = Some(now);
                    self.s.phase = Phase::Drain(now + SOAK_DRAIN);
                    eprintln!("soak: run over; waiting for replies due and handshakes");
                }
            }
            Phase::Drain(at) => {
                let busy = self.s.connecting > 0
                    || self
                        .conns
                        .iter()
                        .any(|c| c.state == State::Open && (c.peer.awaiting > 0 || c.peer.closing));
                if !busy || now >= at {
                    if busy {
                        eprintln!(
                            "soak: still busy after {}s; closing anyway",
                            SOAK_DRAIN.as_secs()
                        );
                    }
                    eprintln!("soak: closing every client");
                    self.s.phase = Phase::Closing(now + SOAK_CLOSING);
                    for idx in 0..self.conns.len() {
                        let conn = &self.conns[idx];
                        if conn.is_live() && !conn.peer.closing {
                            self.soak_close(idx, now);
                        }
                    }
                }
            }
            Phase::Closing(at) => {
                let open = self
                    .conns
                    .iter()
                    .any(|c| matches!(c.state, State::Connecting | State::Upgrading | State::Open));
                if !open || now >= at {
                    self.s.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    /// Do one random operation on client `idx`, and schedule its next one.
    fn soak_op(&mut self, idx: usize, now: Instant) {
        let Load { conns, s, .. } = self;
        let rooms = s.opts.rooms;
        let max_joined = SOAK_MAX_JOINED.min(rooms as usize);
        let k = &mut s.soak;
        let joined = conns[idx].peer.joined.len();
        let mut op = match k.pick_op() {
            Op::Join if joined >= max_joined => Op::Leave,
            Op::Leave | Op::Message | Op::Typing if joined == 0 => Op::Join,
            op => op,
        };
        let mut to = None;
        if op == Op::Private {
            for _ in 0..4 {
                let j = k.below(conns.len() as u64) as usize;
                let other = &conns[j].peer;
                if j != idx && conns[j].is_live() && !other.closing {
                    to = Some(other.user);
                    break;
                }
            }
            if to.is_none() {
                op = Op::Ping;
            }
        }
        k.ops[op as usize] += 1;
        match op {
            Op::Close => return self.soak_close(idx, now),
            Op::Reset => return self.soak_reset(idx, now),
            _ => {}
        }
        let peer = &mut conns[idx].peer;
        let (user, r) = (peer.user, op as usize);
        k.sent += 1;
        let n = k.sent;
        let w = &mut s.scratch;
        w.clear();
        let written = match op {
            Op::Join => {
                let room = k.below(u64::from(rooms)) as u32;
                if !peer.joined.contains(&room) {
                    peer.joined.push(room);
                }
                peer.awaiting += 1;
                write!(w, r#"{{"type":"join","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Leave => {
                let at = k.below(joined as u64) as usize;
                let room = peer.joined.swap_remove(at);
                peer.awaiting += 1;
                write!(w, r#"{{"type":"leave","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Message => {
                let room = peer.joined[k.below(joined as u64) as usize];
                write!(
                    w,
                    r#"{{"type":"message","room":"soak-{room}","data":{{"from":{user},"n":{n}}},"ref":{r}}}"#
                )
            }
            Op::Typing => {
                let room = peer.joined[k.below(joined as u64) as usize];
                write!(w, r#"{{"type":"typing","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Presence => {
                let room = k.below(u64::from(rooms));
                peer.awaiting += 1;
                write!(w, r#"{{"type":"presence","room":"soak-{room}","ref":{r}}}"#)
            }
            Op::Private => {
                let to = to.unwrap_or_default();
                write!(
                    w,
                    r#"{{"type":"private","to":"s{to}","data":{{"from":{user},"n":{n}}},"ref":{r}}}"#
                )
            }
            Op::Ping | Op::Close | Op::Reset => {
                peer.awaiting += 1;
                write!(w, r#"{{"type":"ping","ref":{r}}}"#)
            }
        };
        written.expect("writing to a Vec");
        let mask = s.mask();
        let conn = &mut conns[idx];
        push_frame(&mut conn.tx.buf, OP_TEXT, &s.scratch, mask);
        let gen = conn.peer.gen;
        match conn.flush() {
            Ok(()) => s.soak.schedule_op(idx, gen, now),
            Err(why) => self.fail(idx, why),
        }
    }

    /// Start a clean close (1000); the server's close frame ends it.
    fn soak_close(&mut self, idx: usize, now: Instant) {
        let mask = self.s.mask();
        let conn = &mut self.conns[idx];
        push_frame(&mut conn.tx.buf, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        conn.peer.closing = true;
        let at = now + SOAK_CLOSE_TIMEOUT;
        let entry = (at, idx, conn.peer.gen, Timer::CloseTimeout);
        self.s.soak.timers.push(Reverse(entry));
        if let Err(why) = conn.flush() {
            self.fail(idx, why);
        }
    }

    /// Drop the socket with an RST, without a close frame, and reconnect later.
    fn soak_reset(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        if let Some(stream) = conn.stream.take() {
            set_linger_zero(&stream);
        }
        conn.state = State::Closed;
        conn.rx = RxBuf::default();
        conn.tx = TxBuf::default();
        let peer = &mut conn.peer;
        let k = &mut self.s.soak;
        k.live -= 1;
        k.replies_abandoned += u64::from(peer.awaiting);
        peer.ready = false;
        peer.awaiting = 0;
        peer.joined.clear();
        k.schedule_reconnect(idx, peer.gen, now);
    }

    /// A soak connection ended (its socket is already dropped): account for
    /// it, and reconnect later if the run is still on.
    fn soak_lost(&mut self, idx: usize, why: Why) {
        let s = &mut self.s;
        let k = &mut s.soak;
        let peer = &mut self.conns[idx].peer;
        let reason = why.to_string();
        let mut unexpected = true;
        if let (Why::Closed(code), false) = (&why, peer.closing) {
            *k.unexpected_closes.entry(*code).or_default() += 1;
        }
        if !peer.ready {
            s.connecting -= 1;
            if s.phase == Phase::Connect {
                s.failed += 1;
            }
            *k.handshake_failures.entry(reason.clone()).or_default() += 1;
        } else {
            k.live -= 1;
            if peer.closing {
                match why {
                    Why::Closed(code) => {
                        *k.close_replies.entry(code).or_default() += 1;
                        if matches!(s.phase, Phase::Closing(_)) {
                            k.final_closes += 1;
                        }
                        unexpected = code != 1000;
                    }
                    Why::Timeout => k.close_timeouts += 1,
                    _ => *k.closes_without_reply.entry(reason.clone()).or_default() += 1,
                }
                k.replies_missing += u64::from(peer.awaiting);
                unexpected |= peer.awaiting > 0;
            } else {
                if !matches!(why, Why::Closed(_)) {
                    *k.unexpected_drops.entry(reason.clone()).or_default() += 1;
                }
                k.replies_abandoned += u64::from(peer.awaiting);
            }
        }
        if unexpected && s.logged < MAX_LOGGED {
            s.logged += 1;
            eprintln!(
                "connection {idx} (s{}, {} replies due, closing: {}): {reason}",
                peer.user, peer.awaiting, peer.closing
            );
        }
        peer.ready = false;
        peer.closing = false;
        peer.awaiting = 0;
        peer.joined.clear();
        if s.phase == Phase::Run {
            k.schedule_reconnect(idx, peer.gen, Instant::now());
        }
    }

    fn soak_report(&self, r: &mut Report, elapsed: f64) {
        let s = &self.s;
        let o = &s.opts;
        let k = &s.soak;
        let per_sec = |n: u64| {
            if elapsed > 0.0 {
                round(n as f64 / elapsed, 1)
            } else {
                0.0
            }
        };
        r.add("rooms", o.rooms);
        r.add("rate", o.rate);
        r.add("seed", o.seed);
        r.add("duration_s", round(o.duration.as_secs_f64(), 3));
        r.add("elapsed_s", round(elapsed, 3));
        r.add(
            "op_interval_ms",
            round(k.interval.as_secs_f64() * 1000.0, 3),
        );
        let ops: u64 = k.ops.iter().sum();
        r.add("operations", ops);
        r.add("operations_per_sec", per_sec(ops));
        let mut by_kind = Report::default();
        for (op, n) in Op::ALL.into_iter().zip(k.ops) {
            by_kind.add(op.name(), n);
        }
        r.add_object("operations_by_kind", by_kind);
        let received: u64 = k.received.iter().sum();
        r.add("received", received);
        r.add("received_per_sec", per_sec(received));
        let mut by_type = Report::default();
        for (name, n) in SOAK_RX_TYPES.into_iter().zip(k.received) {
            by_type.add(name, n);
        }
        by_type.add("other", k.received[SOAK_RX_TYPES.len()]);
        r.add_object("received_by_type", by_type);
        r.add("error_replies", &k.errors);
        r.add("error_replies_by_op", &k.errors_by_op);
        r.add("reconnect_attempts", k.reconnect_attempts);
        r.add("reconnects", k.reconnects);
        r.add("users", k.next_user);
        r.add("peak_live", k.peak_live);
        r.add("handshake_failures", &k.handshake_failures);
        r.add("unexpected_close_codes", &k.unexpected_closes);
        r.add("unexpected_drops", &k.unexpected_drops);
        r.add("close_replies", &k.close_replies);
        r.add("closes_without_reply", &k.closes_without_reply);
        r.add("close_timeouts", k.close_timeouts);
        r.add("final_clean_closes", k.final_closes);
        r.add("unclosed_at_end", s.open_at_end);
        r.add("replies_missing", k.replies_missing);
        r.add("replies_abandoned", k.replies_abandoned);
        r.add("unsolicited_replies", k.unsolicited_replies);
        r.add("frames_before_welcome", k.frames_before_welcome);
    }
}

/// A JSON object that keeps its keys in insertion order.
#[derive(Default)]
struct Report(Vec<(&'static str, String)>);

impl Report {
    fn add(&mut self, key: &'static str, value: impl serde::Serialize) {
        let json = serde_json::to_string(&value).unwrap_or_else(|_| "null".into());
        self.0.push((key, json));
    }

    fn add_object(&mut self, key: &'static str, object: Report) {
        self.0.push((key, object.finish()));
    }

    fn finish(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn micros(ns: u64) -> f64 {
    round(ns as f64 / 1000.0, 1)
}

/// p50/p99/p999/max (µs) of sorted nanosecond samples, nearest rank.
fn sorted_summary(sorted: &[u64]) -> Report {
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        micros(sorted[rank.min(sorted.len()) - 1])
    };
    let mut r = Report::default();
    if let Some(&max) = sorted.last() {
        r.add("p50", at(0.50));
        r.add("p99", at(0.99));
        r.add("p999", at(0.999));
        r.add("max", micros(max));
    }
    r.add("count", sorted.len());
    r
}

/// Log-linear histogram of nanoseconds: 64 buckets per power of two
/// (under 1.6% error), fixed size, no allocation per sample.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 6;
    const SUB: u64 = 1 << Self::SUB_BITS;
    const BUCKETS: usize = (2 * Self::SUB + (63 - Self::SUB_BITS as u64) * Self::SUB) as usize;

    fn new() -> Histogram {
        Histogram {
            counts: vec![0; Self::BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * Self::SUB {
            return v as usize;
        }
        let shift = u64::from(63 - v.leading_zeros() - Self::SUB_BITS);
        let mantissa = (v >> shift) - Self::SUB;
        (2 * Self::SUB + (shift - 1) * Self::SUB + mantissa) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * Self::SUB {
            return i;
        }
        let shift = (i - 2 * Self::SUB) / Self::SUB + 1;
        let mantissa = (i - 2 * Self::SUB) % Self::SUB + Self::SUB;
        (mantissa << shift) + (1 << (shift - 1))
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Report {
        let mut r = Report::default();
        if self.total > 0 {
            r.add("p50", micros(self.quantile(0.50)));
            r.add("p99", micros(self.quantile(0.99)));
            r.add("p999", micros(self.quantile(0.999)));
            r.add("max", micros(self.max));
        }
        r.add("count", self.total);
        r
    }
}

// ---------------------------------------------------------------------------
// Sockets

/// Raise the soft open-file limit to the hard limit; returns the soft limit.
fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            } else {
                eprintln!("warning: could not raise the open-file limit");
            }
        }
    }
    lim.rlim_cur
}

/// The middle two octets of a 127.a.b.0/24 not used by a recent run: from
/// the clock and the process id (127.0.0.0/24 itself is left alone).
fn fresh_subnet() -> [u8; 2] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 20) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let a = 1 + (x % 254) as u8;
    let b = ((x >> 8) % 256) as u8;
    [a, b]
}

/// Start a non-blocking connect to `dst` from `src` (any port).
fn connect_from(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2), non-blocking from the start (no fcntl calls);
    // the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = socket.as_raw_fd();
    if let Some(src) = src {
        #[cfg(target_os = "linux")]
        {
            // Pick the port at connect time, by the whole 4-tuple.
            let one: libc::c_int = 1;
            // SAFETY: the option value is a live c_int of the given size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const c_void,
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let (addr, len) = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: `addr` is a valid socket address of `len` bytes.
        if unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (addr, len) = sockaddr(dst);
    // SAFETY: `addr` is a valid socket address of `len` bytes.
    if unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(std::net::TcpStream::from(socket))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any address.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Make closing `stream` reset the connection (RST) instead of a FIN.
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a live `linger` of the given size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Has a non-blocking connect finished? `Err` if it failed.
fn connect_done(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}
