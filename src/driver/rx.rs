//! Reading client frames without a per-connection buffer.
//!
//! The driver reads every socket into one shared scratch buffer and parses
//! the frames there in place (headers with tungstenite's `FrameHeader`,
//! close codes with its `CloseCode`): an unfragmented message is unmasked
//! where it lies and handed to the hub as a borrowed `&str` or `&[u8]` — no
//! copy, no allocation. Only what cannot finish in this read (a partial frame,
//! a fragmented message) is kept per connection in a [`Partial`], and it is
//! dropped as soon as the connection is back at a message boundary — so an
//! idle connection holds no read buffer at all, and a buffer that grew for a
//! large message is released once that message is done.

use std::io::{self, Cursor};

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest frame header a client can send (2 + 8 length + 4 mask).
pub const MAX_HEADER: usize = 14;

/// What a complete frame or message means for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// Answer with a Pong carrying the same payload.
    Ping(&'a [u8]),
    Pong,
    /// The client's close (a valid code, or none); answer and close.
    Close(Option<u16>),
}

/// Why a connection must be failed, with its RFC 6455 close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: a frame breaks the protocol (the text says how).
    Protocol(&'static str),
    /// 1009: a frame or message over the size limit.
    TooBig,
    /// 1007: text that is not UTF-8.
    InvalidUtf8,
}

/// State that outlives one read: an incomplete frame and an open fragmented
/// message. Empty (and holding no memory) at every message boundary.
#[derive(Debug, Default)]
pub struct Partial {
    /// Bytes of a frame not yet complete (its header may be incomplete too).
    frame: Vec<u8>,
    /// Total length of that frame once its header is known; 0 while unknown.
    need: usize,
    /// While `need` is known: how much of `frame` has arrived (the rest of
    /// `frame`, sized once to `need`, is being read into).
    filled: usize,
    /// Payload gathered so far of a fragmented message.
    message: Vec<u8>,
    /// Opcode of the open fragmented message (1 text, 2 binary), 0 if none.
    message_op: u8,
    /// How much of a fragmented text message is known to be valid UTF-8, so
    /// invalid text fails at the fragment that carries it, not at the end.
    utf8_valid: usize,
    /// The previous event handed out `message`: clear it before going on.
    message_done: bool,
}

impl Partial {
    /// Nothing is pending: the connection is at a message boundary.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty() && (self.message_op == 0 || self.message_done)
    }

    /// Validate the new part of an open text message; a sequence cut at the
    /// fragment's end may still complete in the next one.
    fn check_text_so_far(&mut self) -> Result<(), Violation> {
        if self.message_op != 1 {
            return Ok(());
        }
        match std::str::from_utf8(&self.message[self.utf8_valid..]) {
            Ok(_) => self.utf8_valid = self.message.len(),
            Err(e) if e.error_len().is_none() => self.utf8_valid += e.valid_up_to(),
            Err(_) => return Err(Violation::InvalidUtf8),
        }
        Ok(())
    }

    fn finish_message(&mut self) {
        if self.message_done {
            self.message_done = false;
            self.message_op = 0;
            self.utf8_valid = 0;
            self.message = Vec::new();
        }
    }
}

/// The read side of one open WebSocket, as the driver keeps it: the
/// [`Partial`] state, boxed, and absent (one null pointer) while the
/// connection is at a message boundary.
///
/// A read is two steps, so the socket's borrow ends before the events are
/// handled: [`FrameReader::fill`] reads once, then [`Fill::parse`] hands
/// every complete event to the caller and gives the reader back.
#[derive(Debug, Default)]
pub struct FrameReader(Option<Box<Partial>>);

impl FrameReader {
    /// A reader that parses `bytes` (data sent right behind the handshake
    /// request) before anything it reads.
    pub fn carrying(bytes: Vec<u8>) -> FrameReader {
        if bytes.is_empty() {
            return FrameReader(None);
        }
        FrameReader(Some(Box::new(Partial {
            frame: bytes,
            ..Partial::default()
        })))
    }

    /// Nothing is pending and no memory is held.
    pub fn is_idle(&self) -> bool {
        self.0.is_none()
    }

    /// Bytes held: an incomplete frame and an open fragmented message.
    pub fn buffered(&self) -> usize {
        self.0.as_ref().map_or(0, |p| {
            let frame = if p.need > 0 { p.filled } else { p.frame.len() };
            frame + p.message.len()
        })
    }

    /// Read once from `src`: into `scratch` behind any carried bytes, or
    /// straight into a frame whose length is known and longer than what has
    /// arrived. End of stream is an `UnexpectedEof` error, except right
    /// behind carried bytes: those are parsed first ([`Fill::at_eof`]).
    /// `WouldBlock` and `Interrupted` are not errors (a [`Fill`] with
    /// nothing new). `scratch` holds at least [`MAX_HEADER`] bytes.
    pub fn fill(&mut self, src: &mut impl io::Read, scratch: &mut [u8]) -> io::Result<Fill> {
        debug_assert!(
            scratch.len() >= MAX_HEADER,
            "a scratch buffer shorter than a header"
        );
        // Work on a plain value; keep the box (if any) to put it back in,
        // so a frame arriving over many reads is not re-boxed every read.
        let mut boxed = self.0.take();
        let mut partial = boxed.as_deref_mut().map(std::mem::take).unwrap_or_default();
        let mut eof = false;
        let mut blocked = false;
        let (input, more) = if partial.need > 0 {
            // A frame bigger than what was read so far: read straight into
            // it (sized once, so a frame trickling in is not re-zeroed per read).
            if partial.frame.len() < partial.need {
                partial.frame.resize(partial.need, 0);
            }
            let missing = partial.need - partial.filled;
            match src.read(&mut partial.frame[partial.filled..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) if n >= missing => {
                    partial.need = 0;
                    partial.filled = 0;
                    (Input::Owned(std::mem::take(&mut partial.frame)), true)
                }
                // A short read emptied the socket: the next data raises a new edge.
                Ok(n) => {
                    partial.filled += n;
                    (Input::Nothing, false)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    (Input::Nothing, false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (Input::Nothing, true),
                Err(e) => return Err(e),
            }
        } else if partial.frame.len() >= scratch.len() {
            // More was carried than the scratch buffer holds (the driver's
            // never is: it carries less than a request head): parse it where
            // it is. It holds a header, so this leaves a complete frame
            // parsed or a frame of known length (`need`), never a loop.
            (Input::Owned(std::mem::take(&mut partial.frame)), true)
        } else {
            // Carried bytes (a partial header, or data that came with the
            // handshake) go first, then what the socket has.
            let carried = partial.frame.len();
            scratch[..carried].copy_from_slice(&partial.frame);
            partial.frame = Vec::new();
            let room = scratch.len() - carried;
            match src.read(&mut scratch[carried..]) {
                // Frames that came with the handshake are handled even if the
                // peer closed right behind them; then the connection ends.
                Ok(0) if carried > 0 => {
                    eof = true;
                    (Input::Scratch(carried), false)
                }
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => (Input::Scratch(carried + n.min(room)), n >= room),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    (Input::Scratch(carried), false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (Input::Scratch(carried), true),
                Err(e) => return Err(e),
            }
        };
        Ok(Fill {
            partial,
            boxed,
            input,
            more,
            eof,
            blocked,
        })
    }
}

/// Where the bytes of one read are.
#[derive(Debug)]
enum Input {
    /// `scratch[..n]`: carried bytes, then what was read.
    Scratch(usize),
    /// One whole frame read into its own buffer, or carried bytes too many
    /// for the scratch buffer.
    Owned(Vec<u8>),
    /// Nothing new to parse.
    Nothing,
}

/// One read's bytes, waiting to be parsed, and the reader's state meanwhile.
#[derive(Debug)]
pub struct Fill {
    partial: Partial,
    boxed: Option<Box<Partial>>,
    input: Input,
    more: bool,
    eof: bool,
    blocked: bool,
}

impl Fill {
    /// The socket may hold more: read again (the read filled its buffer, or
    /// was interrupted).
    pub fn more(&self) -> bool {
        self.more
    }

    /// The read would have blocked: nothing more is in the socket now.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// The peer closed right behind the bytes of this fill: parse them,
    /// then end the connection.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Hand every complete event to `on_event` (which answers whether to go
    /// on), keep an incomplete tail, and give the reader back. `Ok(None)`:
    /// `on_event` stopped (the connection is closing; its reader is dropped).
    /// `scratch` must be the buffer given to [`FrameReader::fill`].
    pub fn parse(
        mut self,
        scratch: &mut [u8],
        max: usize,
        mut on_event: impl FnMut(Event<'_>) -> bool,
    ) -> Result<Option<FrameReader>, Violation> {
        let mut owned: Vec<u8>;
        let data: &mut [u8] = match self.input {
            Input::Scratch(n) => &mut scratch[..n],
            Input::Owned(bytes) => {
                owned = bytes;
                &mut owned
            }
            Input::Nothing => &mut [],
        };
        let partial = &mut self.partial;
        let mut pos = 0;
        loop {
            match step(data, &mut pos, partial, max)? {
                Step::End => break,
                Step::Consumed => {}
                Step::Incomplete { total } => {
                    partial.frame = Vec::with_capacity(total.unwrap_or(MAX_HEADER));
                    partial.frame.extend_from_slice(&data[pos..]);
                    partial.need = total.unwrap_or(0);
                    partial.filled = partial.frame.len();
                    break;
                }
                Step::Event(event) => {
                    if !on_event(event) {
                        return Ok(None);
                    }
                }
            }
        }
        // Let a finished fragmented message go before deciding what to keep.
        self.partial.finish_message();
        if self.partial.is_empty() {
            return Ok(Some(FrameReader(None)));
        }
        Ok(Some(FrameReader(Some(match self.boxed {
            Some(mut b) => {
                *b = self.partial;
                b
            }
            None => Box::new(self.partial),
        }))))
    }
}

/// The outcome of looking at the bytes at `data[*pos..]`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A complete frame produced this event.
    Event(Event<'a>),
    /// A complete frame was consumed with nothing to report (a fragment).
    Consumed,
    /// `data[*pos..]` is the start of a frame; `total` is its full length if
    /// the header is complete. The caller keeps these bytes in `Partial`.
    Incomplete { total: Option<usize> },
    /// No bytes left.
    End,
}

/// Parse the next frame in `data[*pos..]`, unmasking its payload in place.
/// `max` bounds both a single frame and a whole message.
pub fn step<'a>(
    data: &'a mut [u8],
    pos: &mut usize,
    partial: &'a mut Partial,
    max: usize,
) -> Result<Step<'a>, Violation> {
    partial.finish_message();
    if *pos >= data.len() {
        return Ok(Step::End);
    }
    let mut cursor = Cursor::new(&data[*pos..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(Step::Incomplete { total: None }),
        Err(_) => return Err(Violation::Protocol("reserved opcode")),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(Violation::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let Some(mask) = header.mask else {
        return Err(Violation::Protocol("client frames must be masked"));
    };
    if len > max as u64 {
        return Err(Violation::TooBig);
    }
    let header_len = cursor.position() as usize;
    let total = header_len + len as usize;
    if data.len() - *pos < total {
        return Ok(Step::Incomplete { total: Some(total) });
    }
    let start = *pos + header_len;
    *pos += total;
    let payload = &mut data[start..start + len as usize];
    apply_mask(payload, mask);
    match header.opcode {
        OpCode::Control(ctl) => {
            if !header.is_final {
                return Err(Violation::Protocol("fragmented control frame"));
            }
            if payload.len() > 125 {
                return Err(Violation::Protocol("control frame over 125 bytes"));
            }
            match ctl {
                Control::Ping => Ok(Step::Event(Event::Ping(payload))),
                Control::Pong => Ok(Step::Event(Event::Pong)),
                Control::Close => close_event(payload),
                Control::Reserved(_) => Err(Violation::Protocol("reserved opcode")),
            }
        }
        OpCode::Data(Data::Continue) => {
            if partial.message_op == 0 {
                return Err(Violation::Protocol("continuation without a message"));
            }
            if partial.message.len() + payload.len() > max {
                return Err(Violation::TooBig);
            }
            partial.message.extend_from_slice(payload);
            if !header.is_final {
                partial.check_text_so_far()?;
                return Ok(Step::Consumed);
            }
            partial.message_done = true;
            message_event(partial.message_op, &partial.message)
        }
        OpCode::Data(data_op) => {
            let op = match data_op {
                Data::Text => 1,
                Data::Binary => 2,
                _ => return Err(Violation::Protocol("reserved opcode")),
            };
            if partial.message_op != 0 {
                return Err(Violation::Protocol("new message inside a fragmented one"));
            }
            if header.is_final {
                return message_event(op, payload);
            }
            partial.message_op = op;
            partial.message.extend_from_slice(payload);
            partial.check_text_so_far()?;
            Ok(Step::Consumed)
        }
    }
}

fn message_event(op: u8, payload: &[u8]) -> Result<Step<'_>, Violation> {
    if op == 2 {
        return Ok(Step::Event(Event::Binary(payload)));
    }
    match std::str::from_utf8(payload) {
        Ok(text) => Ok(Step::Event(Event::Text(text))),
        Err(_) => Err(Violation::InvalidUtf8),
    }
}

fn close_event(payload: &[u8]) -> Result<Step<'_>, Violation> {
    match payload.len() {
        0 => Ok(Step::Event(Event::Close(None))),
        1 => Err(Violation::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() || !(1000..5000).contains(&code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Violation::InvalidUtf8);
            }
            Ok(Step::Event(Event::Close(Some(code))))
        }
    }
}

/// XOR `buf` with the 4-byte mask, eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_io::Chunked;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A masked client frame, as a browser would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        let mut body = payload.to_vec();
        apply_mask(&mut body, MASK);
        out.extend_from_slice(&body);
        out
    }

    /// Every event in `data`, as owned values, read `chunk` bytes at a time
    /// through the driver's own `FrameReader` (scratch buffer of 64 bytes,
    /// so frames also go the read-straight-into-the-frame way).
    fn events(data: &[u8], chunk: usize, max: usize) -> Result<Vec<String>, Violation> {
        let mut reader = FrameReader::default();
        let mut src = Chunked { data, chunk };
        let mut scratch = [0u8; 64];
        let mut out = Vec::new();
        loop {
            let fill = match reader.fill(&mut src, &mut scratch) {
                Ok(fill) => fill,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                    return Ok(out);
                }
            };
            let eof = fill.at_eof();
            reader = fill
                .parse(&mut scratch, max, |e| {
                    out.push(format!("{e:?}"));
                    true
                })?
                .expect("never stopped");
            if eof {
                return Ok(out);
            }
        }
    }

    #[test]
    fn end_of_stream_after_part_of_a_frame_ends_the_reading() {
        // A header cut short, a frame cut short, then EOF: no events, and
        // the reader stops (it once re-parsed the carried bytes forever).
        assert_eq!(events(&[0x81], 1, 100).unwrap(), Vec::<String>::new());
        let mut cut = frame(true, 1, b"hello");
        cut.truncate(8);
        for chunk in 1..cut.len() {
            assert_eq!(events(&cut, chunk, 100).unwrap(), Vec::<String>::new());
        }
        let mut reader = FrameReader::carrying(vec![0x81]);
        let fill = reader.fill(&mut &[][..], &mut [0u8; 64]).unwrap();
        assert!(fill.at_eof() && !fill.more());
    }

    #[test]
    fn frames_carried_from_the_handshake_are_parsed_before_end_of_stream() {
        let mut carried = frame(true, 1, b"first");
        carried.extend(frame(true, 1, b"second"));
        carried.push(0x81);
        let mut reader = FrameReader::carrying(carried);
        let mut scratch = [0u8; 64];
        let fill = reader.fill(&mut &[][..], &mut scratch).unwrap();
        assert!(fill.at_eof(), "the peer is gone");
        let mut seen = Vec::new();
        fill.parse(&mut scratch, 100, |e| {
            seen.push(format!("{e:?}"));
            true
        })
        .unwrap();
        assert_eq!(seen, [r#"Text("first")"#, r#"Text("second")"#]);
    }

    #[test]
    fn a_frame_trickling_in_is_sized_once() {
        let data = frame(true, 2, &[9; 300]);
        let mut reader = FrameReader::default();
        let mut scratch = [0u8; 16];
        let mut src = Chunked {
            data: &data,
            chunk: 1,
        };
        let mut got = None;
        while got.is_none() {
            let fill = reader.fill(&mut src, &mut scratch).unwrap();
            reader = fill
                .parse(&mut scratch, 1000, |e| {
                    got = Some(format!("{e:?}"));
                    true
                })
                .unwrap()
                .unwrap();
            if let Some(p) = &reader.0 {
                if p.need > 0 {
                    assert!(p.frame.len() == p.need || p.frame.len() == p.filled);
                    assert_eq!(reader.buffered(), p.filled);
                }
            }
        }
        assert!(got.unwrap().starts_with("Binary([9, 9"));
        assert!(reader.is_idle());
    }

    #[test]
    fn whole_and_split_frames_give_the_same_events() {
        let mut data = frame(true, 1, b"hello");
        data.extend(frame(true, 2, &[0, 1, 2]));
        data.extend(frame(true, 9, b"p"));
        data.extend(frame(false, 1, "hé".as_bytes()));
        data.extend(frame(true, 10, b""));
        data.extend(frame(true, 0, "llo".as_bytes()));
        data.extend(frame(true, 1, &vec![b'x'; 300]));
        data.extend(frame(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']));
        let whole = events(&data, data.len(), 1 << 20).unwrap();
        assert_eq!(whole[0], r#"Text("hello")"#);
        assert_eq!(whole[1], "Binary([0, 1, 2])");
        assert_eq!(whole[2], "Ping([112])");
        assert_eq!(whole[3], "Pong");
        assert_eq!(whole[4], r#"Text("héllo")"#);
        assert_eq!(whole[6], "Close(Some(1000))");
        for chunk in [1, 2, 3, 7, 13, 64] {
            assert_eq!(
                events(&data, chunk, 1 << 20).unwrap(),
                whole,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn partial_state_is_released_at_message_boundaries() {
        let mut p = Partial::default();
        let mut data = frame(false, 2, &[1; 10]);
        data.extend(frame(true, 0, &[2; 10]));
        let mut pos = 0;
        assert_eq!(
            step(&mut data, &mut pos, &mut p, 100).unwrap(),
            Step::Consumed
        );
        assert!(!p.is_empty());
        assert!(
            matches!(step(&mut data, &mut pos, &mut p, 100).unwrap(), Step::Event(Event::Binary(b)) if b.len() == 20)
        );
        assert!(p.is_empty());
        assert_eq!(step(&mut data, &mut pos, &mut p, 100).unwrap(), Step::End);
        assert_eq!(p.message.capacity(), 0, "message buffer freed");
    }

    #[test]
    fn violations_have_their_codes() {
        let v = |data: Vec<u8>| events(&data, data.len(), 1000).unwrap_err();
        let mut unmasked = frame(true, 1, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(
            v(unmasked),
            Violation::Protocol("client frames must be masked")
        );
        let mut rsv = frame(true, 1, b"hi");
        rsv[0] |= 0x40;
        assert!(matches!(v(rsv), Violation::Protocol(_)));
        assert!(matches!(v(frame(true, 3, b"")), Violation::Protocol(_)));
        assert!(matches!(v(frame(true, 0xb, b"")), Violation::Protocol(_)));
        assert!(matches!(v(frame(false, 9, b"")), Violation::Protocol(_)));
        assert!(matches!(
            v(frame(true, 9, &[0; 126])),
            Violation::Protocol(_)
        ));
        assert!(matches!(v(frame(true, 0, b"x")), Violation::Protocol(_)));
        let mut nested = frame(false, 1, b"a");
        nested.extend(frame(true, 1, b"b"));
        assert!(matches!(v(nested), Violation::Protocol(_)));
        assert_eq!(v(frame(true, 1, &[0xff, 0xfe])), Violation::InvalidUtf8);
        assert_eq!(v(frame(true, 2, &[0; 1001])), Violation::TooBig);
        let mut two = frame(false, 2, &[0; 600]);
        two.extend(frame(true, 0, &[0; 600]));
        assert_eq!(v(two), Violation::TooBig);
        assert!(matches!(v(frame(true, 8, &[3])), Violation::Protocol(_)));
        assert!(
            matches!(v(frame(true, 8, &[0x03, 0xed])), Violation::Protocol(_)),
            "1005"
        );
        assert!(
            matches!(v(frame(true, 8, &[0x13, 0x88])), Violation::Protocol(_)),
            "5000"
        );
        assert_eq!(
            v(frame(true, 8, &[0x03, 0xe8, 0xff])),
            Violation::InvalidUtf8
        );
    }

    #[test]
    fn invalid_text_fails_at_its_fragment() {
        let mut p = Partial::default();
        // "é" split across fragments is fine...
        let mut ok = frame(false, 1, &[b'a', 0xc3]);
        ok.extend(frame(true, 0, &[0xa9]));
        assert_eq!(events(&ok, ok.len(), 100).unwrap(), [r#"Text("aé")"#]);
        // ...but bytes that can never be UTF-8 fail before the message ends.
        let mut bad = frame(false, 1, b"ok");
        bad.extend(frame(false, 0, &[0xf4, 0x90, 0x80, 0x80]));
        let mut pos = 0;
        assert_eq!(
            step(&mut bad, &mut pos, &mut p, 100).unwrap(),
            Step::Consumed
        );
        assert_eq!(
            step(&mut bad, &mut pos, &mut p, 100),
            Err(Violation::InvalidUtf8)
        );
    }

    #[test]
    fn huge_length_claims_fail_before_any_payload() {
        let mut data = vec![0x82, 0xff];
        data.extend_from_slice(&(1u64 << 63).to_be_bytes());
        data.extend_from_slice(&MASK);
        let mut p = Partial::default();
        assert_eq!(
            step(&mut data, &mut 0, &mut p, 1 << 20),
            Err(Violation::TooBig)
        );
    }

    #[test]
    fn incomplete_reports_the_total_once_the_header_is_known() {
        let data = frame(true, 2, &[7; 1000]);
        let mut p = Partial::default();
        let mut head = data[..3].to_vec();
        assert_eq!(
            step(&mut head, &mut 0, &mut p, 1 << 20).unwrap(),
            Step::Incomplete { total: None }
        );
        let mut more = data[..500].to_vec();
        assert_eq!(
            step(&mut more, &mut 0, &mut p, 1 << 20).unwrap(),
            Step::Incomplete {
                total: Some(data.len())
            }
        );
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        for len in 0..40 {
            let mut buf: Vec<u8> = (0..len as u8).collect();
            let expect: Vec<u8> = buf
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            apply_mask(&mut buf, MASK);
            assert_eq!(buf, expect);
        }
    }
}
