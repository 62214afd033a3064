//! Client-side WebSocket framing: read and write buffers, server frame
//! headers, masked client frames, and byte-level peeks into JSON text frames.

use crate::conn::Why;

/// Largest frame payload accepted from the server.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Initial per-connection read buffer (grows only for larger frames).
pub(crate) const RX_INITIAL: usize = 2048;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Bytes read and not yet consumed: `buf[start..end]`.
#[derive(Default)]
pub(crate) struct RxBuf {
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl RxBuf {
    /// Make sure `buf[end..]` is not empty: compact, or grow for a large frame.
    pub(crate) fn make_room(&mut self) -> Result<(), Why> {
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
pub(crate) struct TxBuf {
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
}

pub(crate) struct FrameHeader {
    pub(crate) opcode: u8,
    pub(crate) fin: bool,
    /// Header bytes.
    pub(crate) len: usize,
    /// Payload bytes.
    pub(crate) payload: usize,
}

/// Parse a server frame header; `None` if more bytes are needed.
pub(crate) fn parse_header(b: &[u8]) -> Result<Option<FrameHeader>, Why> {
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
pub(crate) fn push_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
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
pub(crate) fn is_type(text: &[u8], name: &[u8]) -> bool {
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
pub(crate) fn string_after<'a>(text: &'a [u8], key: &[u8], within: usize) -> Option<&'a [u8]> {
    let at = find(&text[..text.len().min(within)], key)? + key.len();
    let rest = &text[at..];
    let len = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..len])
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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
pub(crate) fn number_after(text: &[u8], from: usize, key: &[u8]) -> Option<(u64, usize)> {
    digits_at(text, from + find(text.get(from..)?, key)? + key.len())
}

/// The unsigned integer starting at `text[at]`, and where it ends.
pub(crate) fn digits_at(text: &[u8], at: usize) -> Option<(u64, usize)> {
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
