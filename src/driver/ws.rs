//! The WebSocket read path of the driver: socket → shared scratch buffer →
//! frames parsed in place (`rx`) → hub.

use std::io;
use std::time::Instant;

use super::conn::{close_reply, control_frame, State};
use super::rx::{self, Event, Partial, Step, Violation};
use super::{Driver, Flow, READ_BUDGET};
use crate::protocol::CloseReason;

impl Driver {
    /// Read from the socket into the shared scratch buffer and handle every
    /// complete frame there, up to the read budget.
    pub(super) fn read_frames(&mut self, key: usize, now: Instant) {
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
        // Work on a plain value; keep the box (if any) to put it back in,
        // so a frame arriving over many reads is not re-boxed every read.
        let mut boxed = rx.take();
        let mut partial = boxed.as_deref_mut().map(std::mem::take).unwrap_or_default();
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
        } else if partial.frame.len() >= scratch.len() {
            // More came with the handshake (a request body, pipelined data)
            // than the scratch buffer holds: parse it where it is.
            let mut carried = std::mem::take(&mut partial.frame);
            match self.handle_frames(key, now, &mut carried, &mut partial) {
                Flow::Stop => Flow::Stop,
                _ => Flow::More,
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
                *rx = Some(match boxed {
                    Some(mut b) => {
                        *b = partial;
                        b
                    }
                    None => Box::new(partial),
                });
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
                    self.counters.client_closes += 1;
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
}
