//! The WebSocket read path of the driver: socket → shared scratch buffer →
//! frames parsed in place (`rx`) → hub.

use std::io;
use std::time::Instant;

use super::conn::{close_reply, control_frame, State};
use super::rx::{Event, Violation};
use super::{queue_is_full, Driver, Flow, READ_BUDGET};
use crate::hub::ConnId;
use crate::protocol::CloseReason;

impl Driver {
    /// Handle what connection `key` sent (up to the read budget). Room
    /// frames its messages produce one after another are queued as one
    /// burst when its input ends (see `burst`).
    pub(super) fn read_frames(&mut self, key: usize, now: Instant) {
        self.reader = self.conns.get(key).map(|c| c.id);
        self.read_budget(key, now);
        self.reader = None;
        self.end_burst();
        if !self.slow.is_empty() {
            // Members the burst found over their cap are closed now, as
            // any frame's delivery would have them closed (drain_hub).
            self.drain_hub();
        }
    }

    /// Read from the socket into the shared scratch buffer and handle every
    /// complete frame there, up to the read budget. Once the peer has
    /// closed, a short read goes on to the end of stream: data and FIN that
    /// arrived together raise one edge, and it would otherwise go unseen.
    fn read_budget(&mut self, key: usize, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..READ_BUDGET {
            match self.read_once(key, now, &mut scratch) {
                Flow::More => continue,
                Flow::Drained if self.conns.get(key).is_some_and(|c| c.peer_closed) => continue,
                Flow::Drained | Flow::Blocked | Flow::Stop => {
                    self.scratch = scratch;
                    return;
                }
            }
        }
        self.scratch = scratch;
        self.again.push(key);
    }

    /// One read syscall and the frames it completed (the reading and parsing
    /// are `rx::FrameReader`'s: pure, fuzzed as called here).
    fn read_once(&mut self, key: usize, now: Instant, scratch: &mut [u8]) -> Flow {
        let Some(conn) = self.conns.get_mut(key) else {
            return Flow::Stop;
        };
        let State::Open { rx } = &mut conn.state else {
            return Flow::Stop;
        };
        let mut io = super::tls::Io {
            tcp: &mut conn.tcp,
            tls: conn.tls.as_deref_mut(),
        };
        let fill = match rx.fill(&mut io, scratch) {
            Ok(fill) => fill,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return self.peer_gone(key, "EOF")
            }
            Err(e) => return self.peer_gone(key, &e.to_string()),
        };
        let eof = fill.at_eof();
        // TLS: the peer's close_notify (or end) was read, and no edge may
        // come to say so: read on to the end like after a FIN.
        if conn.tls.as_ref().is_some_and(|t| t.ended()) {
            conn.peer_closed = true;
        }
        let flow = if fill.more() {
            Flow::More
        } else if fill.blocked() {
            Flow::Blocked
        } else {
            Flow::Drained
        };
        let (id, max) = (conn.id, conn.max_message);
        match fill.parse(scratch, max, |event| self.on_event(key, id, now, event)) {
            Err(v) => {
                self.on_violation(key, v);
                Flow::Stop
            }
            Ok(None) => Flow::Stop,
            Ok(Some(_)) if eof => self.peer_gone(key, "EOF"),
            Ok(Some(reader)) => match self.conns.get_mut(key).map(|c| &mut c.state) {
                Some(State::Open { rx }) => {
                    *rx = reader;
                    flow
                }
                _ => Flow::Stop,
            },
        }
    }

    /// One complete frame's event; `false` once the connection is no longer open.
    fn on_event(&mut self, key: usize, id: ConnId, now: Instant, event: Event<'_>) -> bool {
        match event {
            Event::Text(text) => self.hub.handle_text(now, id, text),
            Event::Binary(bytes) => self.hub.handle_binary(now, id, bytes),
            Event::Ping(payload) => {
                let conn = &mut self.conns[key];
                let cap = self.config.max_output_queue;
                if queue_is_full(conn, cap, &mut self.gather, &mut self.counters) {
                    // Pings whose pongs are never read fill the queue like
                    // any other output.
                    self.counters.slow_consumer_closes += 1;
                    self.hub.close(id, CloseReason::SlowConsumer);
                } else {
                    conn.out.push(control_frame(0xA, payload));
                    self.hub.handle_activity(now, id);
                }
            }
            Event::Pong => self.hub.handle_activity(now, id),
            Event::Close(code) => {
                log::info!(conn:% = id, code = code.unwrap_or(1005); "{id} closed by client ({code:?})");
                self.counters.client_closes += 1;
                let conn = &mut self.conns[key];
                conn.in_hub = false;
                conn.start_closing(close_reply(code));
                self.closings
                    .push_back((now + self.config.close_timeout, id));
                self.hub.handle_closed(id);
                self.drain_hub();
                return false;
            }
        }
        self.drain_hub();
        matches!(
            self.conns.get(key).map(|c| &c.state),
            Some(State::Open { .. })
        )
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
        log::info!(conn:% = id, code = reason.code(); "{id} closing: {v:?} ({reason})");
        self.hub.close(id, reason);
        self.drain_hub();
    }
}
