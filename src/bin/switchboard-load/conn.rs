//! One client connection: its socket, state and buffers, the HTTP upgrade,
//! and the handling of each frame it receives.

use std::fmt;
use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::framing::{
    find, is_type, parse_header, push_frame, RxBuf, TxBuf, OP_BINARY, OP_CLOSE, OP_CONTINUATION,
    OP_PING, OP_PONG, OP_TEXT,
};
use crate::load::Shared;
use crate::net::connect_done;
use crate::MAX_LOGGED;

/// Largest HTTP response head accepted during the upgrade.
const MAX_HEAD: usize = 16 * 1024;

/// The RFC 6455 sample nonce and the accept value the server must answer.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
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
pub(crate) enum Role {
    /// Idle mode: a connection that is only held.
    Holder,
    Subscriber,
    Publisher,
    Echo,
    /// Soak mode: a churning client.
    Soak,
    /// Joins mode: joins and leaves a room, one request at a time.
    Joiner,
    /// Chat mode: sends to its room and receives the others' messages.
    Chatter,
}

/// What a connection knows about its part in the run.
pub(crate) struct Peer {
    pub(crate) role: Role,
    /// Got its welcome (hub) or its 101 (`/echo`).
    pub(crate) ready: bool,
    /// Subscribers: the next `seq` expected.
    pub(crate) expected: u64,
    /// Echo: when the message in flight was sent (ns since the epoch).
    pub(crate) sent_at: u64,
    /// Echo: a message is in flight.
    pub(crate) waiting: bool,
    /// Was ready, then lost.
    pub(crate) dropped: bool,
    /// Which connection attempt of this slot this is (bumped at each start),
    /// so timers left from an earlier one are ignored.
    pub(crate) gen: u32,
    /// Soak: the user number (the id is `s<user>`).
    pub(crate) user: u64,
    /// Soak: the room named in the current URL (`/ws/soak-<k>`), if any.
    pub(crate) url_room: Option<u32>,
    /// Soak: rooms joined, as the server sees them once it has read what was
    /// sent.
    pub(crate) joined: Vec<u32>,
    /// Soak: replies still due (`joined`, `left`, `presence`, `pong`, or an
    /// `error` in their place).
    pub(crate) awaiting: u32,
    /// Soak: our close frame is sent; waiting for the server's.
    pub(crate) closing: bool,
}

pub(crate) struct Conn {
    pub(crate) stream: Option<TcpStream>,
    /// `--tls-ca`: the connection's TLS state.
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    pub(crate) state: State,
    pub(crate) rx: RxBuf,
    pub(crate) tx: TxBuf,
    pub(crate) peer: Peer,
}

impl Conn {
    pub(crate) fn new(role: Role) -> Conn {
        Conn {
            stream: None,
            tls: None,
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

    pub(crate) fn is_live(&self) -> bool {
        self.state == State::Open && self.peer.ready
    }

    /// Handle a readiness event: finish connecting, read, answer, flush.
    /// `peer_closed`: the event says the peer has closed (read on to the end).
    pub(crate) fn on_event(
        &mut self,
        idx: usize,
        s: &mut Shared,
        peer_closed: bool,
    ) -> Result<(), Why> {
        if self.state == State::Connecting {
            let Some(stream) = self.stream.as_ref() else {
                return Ok(());
            };
            if !connect_done(stream).map_err(Why::Connect)? {
                return Ok(());
            }
            self.state = State::Upgrading;
            let path = match self.peer.role {
                Role::Holder if s.opts.idle_rooms > 0 => {
                    format!("/ws/idle-{}?user=u{idx}", idx % s.opts.idle_rooms as usize)
                }
                Role::Holder => format!("/ws?user=u{idx}"),
                Role::Subscriber => format!("/ws/{}?user=u{idx}", s.opts.room),
                Role::Publisher => format!("/ws/{}?user=publisher", s.opts.room),
                Role::Echo => "/echo".to_string(),
                Role::Joiner => format!("/ws?user=j{idx}"),
                Role::Chatter => format!("/ws/chat-{}?user=c{idx}", idx / s.opts.room_size),
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
            self.read(s, peer_closed)?;
            self.flush()?;
        }
        Ok(())
    }

    /// Read until the socket is drained, handling every complete frame. A
    /// short read of plain TCP means it is (more data raises another edge),
    /// so the read that would only say "would block" is not made, unless the
    /// peer has closed (its end of stream raises no further edge).
    fn read(&mut self, s: &mut Shared, peer_closed: bool) -> Result<(), Why> {
        loop {
            self.rx.make_room()?;
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            let buf = &mut self.rx.buf[self.rx.end..];
            let room = buf.len();
            let read = match self.tls.as_deref_mut() {
                Some(tls) => crate::tls::read(stream, tls, buf),
                None => stream.read(buf),
            };
            let n = match read {
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
            if n < room && self.tls.is_none() && !peer_closed {
                return Ok(());
            }
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
    pub(crate) fn flush(&mut self) -> Result<(), Why> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let tx = &mut self.tx;
        while tx.pos < tx.buf.len() {
            let rest = &tx.buf[tx.pos..];
            let written = match self.tls.as_deref_mut() {
                Some(tls) => crate::tls::write(stream, tls, rest),
                None => stream.write(rest),
            };
            match written {
                Ok(0) => return Err(Why::Eof),
                Ok(n) => tx.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Why::Io(e)),
            }
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            crate::tls::flush(stream, tls).map_err(Why::Io)?;
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
        // With --wait-joined a connection to `/ws/<room>` is ready once it
        // is in the room (in cluster mode `joined` follows `welcome` after a
        // round trip to Redis; the peers send no `joined`).
        let in_room = s.opts.wait_joined && matches!(peer.role, Role::Subscriber | Role::Publisher);
        if is_type(text, if in_room { b"joined" } else { b"welcome" }) {
            peer.ready = true;
            s.on_ready(peer.role);
        }
        return;
    }
    if peer.role == Role::Joiner {
        s.on_joins(peer, tx, text, now_ns);
        return;
    }
    if peer.role == Role::Subscriber && is_type(text, b"message") {
        s.on_delivery(peer, text, now_ns);
    }
    if peer.role == Role::Chatter && is_type(text, b"message") {
        s.on_chat(text, now_ns);
    }
}

/// Why a connection ended.
pub(crate) enum Why {
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
