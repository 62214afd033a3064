//! One socket and its state machine: `Http` (reading a request head) →
//! `Open` (a WebSocket in the hub) → `Closing` (flush, half-close, drain to EOF).
//! Plain HTTP requests go from `Http` straight to `Closing` with the response queued.

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::Instant;

use bytes::Bytes;
use mio::net::TcpStream;
use mio::Interest;

use super::outq::OutQueue;
use super::request_reader::RequestReader;
use super::rx::FrameReader;
use super::tls::{Io, Tls};
use crate::hub::ConnId;

/// Where a connection is in its life.
pub enum State {
    /// Reading an HTTP request (boxed: the state of every open connection
    /// stays one pointer wide).
    Http { reader: Box<RequestReader> },
    /// A WebSocket registered with the hub; `rx` holds a frame or message
    /// that is not complete yet (nothing at a message boundary).
    Open { rx: FrameReader },
    /// A close frame or an HTTP response is queued: flush it, half-close,
    /// read and discard until the peer closes or the deadline passes.
    Closing { write_shut: bool },
    /// An API request waits for the cluster's answer (a view); nothing
    /// more is read until it is sent.
    Waiting {
        reader: Box<RequestReader>,
        keep_alive: bool,
    },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Http { .. } => "http",
            State::Open { .. } => "open",
            State::Closing { .. } => "closing",
            State::Waiting { .. } => "waiting",
        }
    }
}

pub struct Conn {
    pub tcp: TcpStream,
    /// With `--tls-cert`: the connection's TLS state.
    pub tls: Option<Box<Tls>>,
    pub id: ConnId,
    pub state: State,
    pub out: OutQueue,
    /// Interest currently registered with the poller.
    pub interest: Interest,
    /// In the driver's dirty list (a flush is pending).
    pub dirty: bool,
    /// The socket took only part of the last write: its buffer is full, and
    /// writing again before a writable event would only copy the queue into
    /// the gather buffer to hear `EAGAIN` (a reader that never reads would
    /// cost that on every frame it is sent).
    pub write_blocked: bool,
    /// The hub knows this connection (it reached `Open`).
    pub in_hub: bool,
    /// An event saw the peer's FIN (or an error): a short read does not mean
    /// the socket is drained, the end is still to be read. Sticky, so reads
    /// resumed later (read budget, after an upgrade) know it too.
    pub peer_closed: bool,
    /// Largest message this connection may send (route-dependent).
    pub max_message: usize,
    /// While in `Http`: the next request must be complete by then.
    pub http_deadline: Instant,
}

impl Conn {
    pub fn new(
        tcp: TcpStream,
        tls: Option<Box<Tls>>,
        id: ConnId,
        reader: Box<RequestReader>,
        http_deadline: Instant,
    ) -> Conn {
        Conn {
            tcp,
            tls,
            id,
            state: State::Http { reader },
            out: OutQueue::default(),
            interest: Interest::READABLE,
            dirty: false,
            write_blocked: false,
            in_hub: false,
            peer_closed: false,
            max_message: 0,
            http_deadline,
        }
    }

    pub fn set_state(&mut self, state: State) {
        log::debug!("{} {} => {}", self.id, self.state.name(), state.name());
        self.state = state;
    }

    /// Queue `bytes` (a close frame or an HTTP response) and start closing.
    pub fn start_closing(&mut self, last: Bytes) {
        self.out.push(last);
        self.set_state(State::Closing { write_shut: false });
    }

    /// Write what is queued (`gather`: the driver's shared scratch buffer);
    /// returns the bytes written. A closing connection half-closes once
    /// everything is out.
    pub fn flush(&mut self, gather: &mut Vec<u8>) -> io::Result<usize> {
        if self.write_blocked {
            return Ok(0);
        }
        let mut io = Io {
            tcp: &mut self.tcp,
            tls: self.tls.as_deref_mut(),
        };
        let written = self.out.write_to(&mut io, gather)?;
        // Handshake records or an alert may wait with no frame queued.
        let tls_done = match &mut self.tls {
            Some(tls) => tls.flush(&self.tcp)?,
            None => true,
        };
        // `write_to` stops with output left only when the socket is full;
        // WRITABLE interest is registered while output is pending, and the
        // kernel raises that edge once the buffer drains.
        self.write_blocked = !self.out.is_empty() || !tls_done;
        if self.out.is_empty() && tls_done {
            if let State::Closing { write_shut } = &mut self.state {
                if !*write_shut {
                    // TLS: close_notify first, then the TCP half-close.
                    if let Some(tls) = &mut self.tls {
                        tls.close();
                        if !tls.flush(&self.tcp)? {
                            self.write_blocked = true;
                            return Ok(written);
                        }
                    }
                    *write_shut = true;
                    // The peer sees our close (or response) and then EOF; we
                    // keep reading so unread input never turns into a RST.
                    let _ = self.tcp.shutdown(Shutdown::Write);
                }
            }
        }
        Ok(written)
    }

    /// While closing: read and discard. `true` when the peer has closed (EOF or error).
    pub fn drain_input(&mut self) -> bool {
        let mut scratch = [0u8; 4096];
        loop {
            match self.tcp.read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// The interest this connection needs now: readable always (to see the
    /// peer close), writable only while output is pending.
    pub fn wanted_interest(&self) -> Interest {
        if self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.wants_write()) {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }
}

/// A control frame (server frames are unmasked) with this payload.
pub fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut w = crate::protocol::FrameWriter::text(payload.len());
    w.payload().extend_from_slice(payload);
    w.finish_with_opcode(opcode)
}

/// A close frame: code and reason (cut to the 123 bytes a control frame allows).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut w = crate::protocol::FrameWriter::text(2 + end);
    w.payload().extend_from_slice(&code.to_be_bytes());
    w.payload().extend_from_slice(&reason.as_bytes()[..end]);
    w.finish_with_opcode(0x8)
}

/// The reply to a client's close: the same code, or an empty close.
pub fn close_reply(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => close_frame(code, ""),
        None => control_frame(0x8, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_to_a_valid_control_frame() {
        // 60 four-byte characters (what a `Handle::disconnect` may pass) is
        // 240 bytes: over the 125-byte control-frame payload limit.
        let reason = "🦀".repeat(60);
        let frame = close_frame(4000, &reason);
        assert_eq!(frame[0], 0x88);
        let len = frame[1] as usize;
        assert!(len <= 125, "control payload {len} bytes");
        assert_eq!(&frame[2..4], &4000u16.to_be_bytes());
        assert!(
            std::str::from_utf8(&frame[4..]).is_ok(),
            "cut on a character boundary"
        );
        assert_eq!(
            close_frame(1000, "bye")[..],
            [0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']
        );
        assert_eq!(close_reply(None)[..], [0x88, 0]);
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn connection_state_stays_small() {
        // Every open connection carries one: two words, as before `Waiting`.
        assert!(
            std::mem::size_of::<super::State>() <= 16,
            "{}",
            std::mem::size_of::<super::State>()
        );
    }
}
