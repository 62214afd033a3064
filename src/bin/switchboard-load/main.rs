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
//!     [--conns N] [--room NAME] [--payload BYTES] [--in-flight K] [--ahead]
//!     [--messages M] [--rate PER_SEC] [--hold SECS] [--duration SECS]
//!     [--rooms R] [--seed S] [--connect-window C] [--sources S] [--busy-poll]
//!     [--subscribers-on IP:PORT,IP:PORT…] [--wait-joined] [--tls-ca FILE]
//! ```
//!
//! `--tls-ca FILE`: every connection speaks TLS (`wss://`, server name
//! `localhost`), trusting the PEM certificate(s) in FILE.
//!
//! Modes:
//!
//! - `idle`: open N connections to `/ws?user=u<i>` (or, with
//!   `--idle-rooms R`, `/ws/idle-<i mod R>?user=u<i>`), wait for each one's
//!   `welcome`, then hold them for `--hold` seconds (default 10) answering
//!   pings. `READY` is printed on stderr once every connection is open, so a
//!   script can read the server's `VmRSS` while they are held.
//! - `fanout`: N subscribers join `/ws/<room>?user=u<i>` (room default
//!   `bench`), then one publisher (`/ws/<room>?user=publisher`) sends M
//!   messages (default 20000) of about `--payload` bytes of JSON (default 64),
//!   `{"type":"message","room":…,"data":{"seq":S,"t":NANOS,"pad":"xx…"}}`,
//!   with at most K (`--in-flight`, default 1) outstanding; a message is
//!   complete once every subscriber has it. With `--ahead` the publisher
//!   sends message k+1 as soon as message k reached its first subscriber
//!   (still at most K outstanding): the steady stream of a busy room, where
//!   the next message arrives while the server is still sending the last. Subscribers check that `seq`
//!   arrives in order with none missing. Reports deliveries per second.
//! - `latency`: like fanout, but the publisher sends `--rate` messages per
//!   second (default 100) for `--duration` seconds (default 10). `t` in each
//!   message is nanoseconds since this tool's start; each delivery records
//!   `now - t`. Reports percentiles in microseconds per message at its last
//!   subscriber, and over all deliveries.
//! - `echo`: N connections to `/echo`, each keeping one text message of
//!   `--payload` bytes in flight for `--duration` seconds; reports round trips
//!   per second.
//! - `joins`: N connections (`/ws?user=j<i>`, spread over `--subscribers-on`
//!   if given), each joining room `j<i mod R>` (`--rooms`, default 50) and
//!   leaving it again, one request in flight, for `--duration` seconds;
//!   reports join/leave pairs per second (in cluster mode: the cost of the
//!   presence scripts) and the time from `join` to `left`.
//! - `chat`: N connections in rooms of `--room-size` (default 10), connection
//!   `i` at `/ws/chat-<i / S>?user=c<i>`; together they send `--rate`
//!   messages per second (default N: one a second each), in turn, for
//!   `--duration` seconds, each to its own room (so S-1 deliveries), with
//!   `"t"` in it; consecutive messages go to different rooms (a room hears
//!   one every rooms/rate seconds, its members in turn); `--churn` connections a second close and reconnect to their
//!   room (a leave and a join). Reports deliveries per second and the
//!   latency of every delivery: the chat workload most users have, where
//!   parsing, routing and per-message costs weigh more than fan-out.
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

mod conn;
mod framing;
mod load;
mod net;
mod report;
mod soak;
mod tls;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;

use crate::load::Load;
use crate::net::raise_fd_limit;

const HELP: &str = "\
switchboard-load: load generator for a switchboard server on loopback

usage: switchboard-load --server 127.0.0.1:8080 --mode idle|fanout|latency|echo|soak [options]

  --conns N            connections (idle, echo, soak) or subscribers (fanout, latency)
                       [100; soak: 5000]
  --room NAME          room for fanout and latency [bench]
  --payload BYTES      approximate size of each message sent [64]
  --in-flight K        fanout: messages outstanding at once [1]
  --ahead              fanout: send the next message as soon as the previous one reached
                       its first subscriber (a steady stream), still at most K outstanding
  --messages M         fanout: messages to publish [20000]
  --rate PER_SEC       latency: messages published per second [100];
                       soak: operations per second over all clients [2000]; chat: messages
                       per second from all connections together [one a second each]
  --hold SECS          idle: how long to hold the connections [10]
  --duration SECS      latency, echo, chat, soak: how long to send [10; soak: 120]
  --rooms R            soak: rooms soak-0 ..= soak-<R-1> [50]
  --idle-rooms R       idle: connection i joins /ws/idle-<i mod R> (0: no room) [0]
  --room-size S        chat: connections per room (/ws/chat-<i / S>) [10]
  --churn R            chat: reconnects per second, round-robin (a leave and a join) [0]
  --seed S             soak: seed of the random schedule [1]
  --connect-window C   connection attempts in flight at once [500]
  --sources S          spread sockets over 127.a.b.1 ..= 127.a.b.S [8]
                       (a.b new for each run)
  --subscribers-on A,B connections (all but the fanout/latency publisher) go
                       to these servers, round-robin (a cluster's nodes); the
                       publisher to --server
  --wait-joined        fanout, latency: start once every connection has its
                       `joined` (cluster mode), not just its `welcome`
  --busy-poll          poll without sleeping (spins its core): on loopback
                       the server's send pays for waking a sleeping reader,
                       which separate client machines would not charge it
  -h, --help           print this help

Prints one JSON object on stdout at the end; progress and READY on stderr.
";

/// Failure messages printed on stderr before going quiet.
const MAX_LOGGED: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Idle,
    Fanout,
    Latency,
    Echo,
    Soak,
    Joins,
    Chat,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Fanout => "fanout",
            Mode::Latency => "latency",
            Mode::Echo => "echo",
            Mode::Soak => "soak",
            Mode::Joins => "joins",
            Mode::Chat => "chat",
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
    /// Fanout: publish the next message once the previous one reached its
    /// first subscriber (capped by `in_flight`).
    ahead: bool,
    messages: u64,
    rate: f64,
    hold: Duration,
    duration: Duration,
    connect_window: usize,
    sources: u8,
    busy_poll: bool,
    /// Servers the connections spread over, round-robin (empty: `server`);
    /// the fanout/latency publisher always uses `server`.
    subscribers_on: Vec<SocketAddr>,
    /// Subscribers and publisher are ready at `joined`, not `welcome`.
    wait_joined: bool,
    rooms: u32,
    /// Idle: rooms the connections join in turn (`/ws/idle-<i mod R>`); 0: none.
    idle_rooms: u32,
    /// Chat: connections per room.
    room_size: usize,
    /// Chat: reconnects per second (a leave and a join each).
    churn: f64,
    seed: u64,
    /// `--tls-ca`: connect over TLS with these settings.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
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
        ahead: false,
        messages: 20_000,
        rate: 100.0,
        hold: Duration::from_secs(10),
        duration: Duration::from_secs(10),
        connect_window: 500,
        sources: 8,
        busy_poll: false,
        subscribers_on: Vec::new(),
        wait_joined: false,
        rooms: 50,
        idle_rooms: 0,
        room_size: 10,
        churn: 0.0,
        seed: 1,
        tls: None,
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
                    "joins" => Mode::Joins,
                    "chat" => Mode::Chat,
                    "soak" => Mode::Soak,
                    other => {
                        return Err(format!(
                    "--mode {other:?}: expected idle, fanout, latency, echo, joins, chat or soak"
                ))
                    }
                })
            }
            Long("conns") => conns = Some(number(&mut parser, "conns", 1)?),
            Long("room") => opts.room = string(&mut parser, "room")?,
            Long("payload") => opts.payload = number(&mut parser, "payload", 1)?,
            Long("in-flight") => opts.in_flight = number(&mut parser, "in-flight", 1)?,
            Long("ahead") => opts.ahead = true,
            Long("messages") => opts.messages = number(&mut parser, "messages", 1)?,
            Long("rate") => rate = Some(number(&mut parser, "rate", 0.001)?),
            Long("hold") => opts.hold = seconds(&mut parser, "hold")?,
            Long("duration") => duration = Some(seconds(&mut parser, "duration")?),
            Long("rooms") => opts.rooms = number(&mut parser, "rooms", 1)?,
            Long("idle-rooms") => opts.idle_rooms = number(&mut parser, "idle-rooms", 0)?,
            Long("room-size") => opts.room_size = number(&mut parser, "room-size", 2)?,
            Long("churn") => opts.churn = number(&mut parser, "churn", 0.0)?,
            Long("seed") => opts.seed = number(&mut parser, "seed", 0)?,
            Long("connect-window") => {
                opts.connect_window = number(&mut parser, "connect-window", 1)?
            }
            Long("sources") => opts.sources = number(&mut parser, "sources", 1)?,
            Long("busy-poll") => opts.busy_poll = true,
            Long("wait-joined") => opts.wait_joined = true,
            Long("tls-ca") => opts.tls = Some(tls::config(&string(&mut parser, "tls-ca")?)?),
            Long("subscribers-on") => {
                opts.subscribers_on = string(&mut parser, "subscribers-on")?
                    .split(',')
                    .map(parse_server)
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    opts.server = server.ok_or("--server IP:PORT is required")?;
    opts.mode =
        mode.ok_or("--mode is required (idle, fanout, latency, echo, joins, chat or soak)")?;
    let soak = opts.mode == Mode::Soak;
    opts.conns = conns.unwrap_or(if soak { 5000 } else { 100 });
    opts.rate = rate.unwrap_or(match opts.mode {
        Mode::Soak => 2000.0,
        // One message a second per connection.
        Mode::Chat => opts.conns as f64,
        _ => 100.0,
    });
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
