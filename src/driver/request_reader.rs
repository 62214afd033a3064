//! Reading HTTP requests without a socket: bytes in, complete requests (head
//! and body) or a refusal out.
//!
//! The driver hands [`RequestReader::read_from`] its socket and asks
//! [`RequestReader::next_request`] for what arrived; the fuzz target
//! `requests` hands it the same bytes whole and in arbitrary chunks and
//! demands the same requests either way. Guarantees:
//!
//! * Bounded: a head is read up to `max_head` bytes and no further (431), a
//!   body is never read past its `Content-Length`, and a `Content-Length`
//!   over `max_body` is refused from the head alone (413), so the buffer is
//!   at most `max_head + max_body` bytes.
//! * Pipelining: bytes after a complete request stay in the reader for the
//!   next one (or, after an upgrade, become the first WebSocket frames).
//! * The same requests and the same refusal whatever the read boundaries.

use std::io;

use super::http::{self, Parse, RequestHead};

/// The smallest read: a typical request head fits in one.
const MIN_READ: usize = 1024;

/// A complete request: its head, parsed, and its bytes (head then body).
#[derive(Debug)]
pub struct Request {
    pub head: RequestHead,
    bytes: Vec<u8>,
}

impl Request {
    /// The request line and headers, up to and including the blank line.
    pub fn head_bytes(&self) -> &[u8] {
        &self.bytes[..self.head.len]
    }

    /// The body (`Content-Length` bytes; empty without one).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.head.len..]
    }
}

/// Why a request is refused: the response says it and the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not HTTP/1.x, or a malformed request line or header.
    Malformed(&'static str),
    /// 431: more headers than we parse.
    TooManyHeaders,
    /// 431: the head is longer than `max_head` bytes.
    HeadTooLarge,
    /// 411: `Transfer-Encoding` (only `Content-Length` bodies are read).
    LengthRequired,
    /// 413: `Content-Length` over `max_body`; refused without reading it.
    BodyTooLarge { max_body: usize },
    /// 400: a WebSocket handshake with a body (it has no meaning there);
    /// refused without reading it.
    UpgradeWithBody,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Malformed(_) | Refusal::UpgradeWithBody => 400,
            Refusal::TooManyHeaders | Refusal::HeadTooLarge => 431,
            Refusal::LengthRequired => 411,
            Refusal::BodyTooLarge { .. } => 413,
        }
    }

    /// The complete response (it closes the connection).
    pub fn response(self) -> bytes::Bytes {
        let json = |code: &str, message: &str| {
            let body = http::json_error(code, message);
            http::response(self.status(), "application/json", "", &body, false)
        };
        match self {
            Refusal::Malformed(why) => http::text_response(400, "", why),
            Refusal::TooManyHeaders => http::text_response(431, "", "too many headers"),
            Refusal::HeadTooLarge => http::text_response(431, "", "request head too large"),
            Refusal::UpgradeWithBody => {
                http::text_response(400, "", "a WebSocket handshake carries no body")
            }
            Refusal::LengthRequired => json("length_required", "send a Content-Length body"),
            Refusal::BodyTooLarge { max_body } => json(
                "body_too_large",
                &format!("request bodies are limited to {max_body} bytes"),
            ),
        }
    }
}

/// What is kept of a connection's HTTP input between reads.
#[derive(Debug)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// The head of the request being gathered, once complete (its body is
    /// still arriving), so it is parsed once, not once per read. Boxed: a
    /// reader waiting for its first byte stays small.
    head: Option<Box<RequestHead>>,
    max_head: usize,
    max_body: usize,
}

impl RequestReader {
    /// A reader for heads of at most `max_head` bytes and bodies of at most
    /// `max_body`.
    pub fn new(max_head: usize, max_body: usize) -> RequestReader {
        RequestReader {
            buf: Vec::new(),
            head: None,
            max_head,
            max_body,
        }
    }

    /// The next complete request among the bytes read so far; `Ok(None)`
    /// when more bytes are needed (then call [`Self::read_from`]).
    pub fn next_request(&mut self) -> Result<Option<Request>, Refusal> {
        let head = match self.head.take() {
            Some(head) => *head,
            None => match http::parse_head(&self.buf) {
                Parse::Partial if self.buf.len() >= self.max_head => {
                    return Err(Refusal::HeadTooLarge)
                }
                Parse::Partial => return Ok(None),
                Parse::Bad(431, _) => return Err(Refusal::TooManyHeaders),
                Parse::Bad(_, why) => return Err(Refusal::Malformed(why)),
                Parse::Complete(head) if head.len > self.max_head => {
                    return Err(Refusal::HeadTooLarge)
                }
                Parse::Complete(head) if head.chunked => return Err(Refusal::LengthRequired),
                Parse::Complete(head) if head.content_length > self.max_body => {
                    return Err(Refusal::BodyTooLarge {
                        max_body: self.max_body,
                    })
                }
                Parse::Complete(head)
                    if head.wants_websocket && head.method == "GET" && head.content_length > 0 =>
                {
                    return Err(Refusal::UpgradeWithBody)
                }
                Parse::Complete(head) => head,
            },
        };
        // Both terms are bounded (the head by `max_head`, the body by
        // `max_body`); saturating all the same, whatever the settings.
        let total = head.len.saturating_add(head.content_length);
        if self.buf.len() < total {
            self.head = Some(Box::new(head));
            return Ok(None);
        }
        let rest = self.buf.split_off(total);
        let bytes = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Request { head, bytes }))
    }

    /// One read from `src`, of at most what the request being gathered may
    /// still need: up to `max_head` bytes while its head is incomplete, then
    /// exactly the rest of its body. `Ok(0)` is the end of the stream.
    /// Call it only after [`Self::next_request`] answered `Ok(None)`.
    pub fn read_from(&mut self, src: &mut impl io::Read) -> io::Result<usize> {
        let limit = match &self.head {
            Some(head) => head.len.saturating_add(head.content_length),
            None => self.max_head,
        };
        let len = self.buf.len();
        // Grow geometrically (few reads for a big body), never past `limit`.
        let target = len.saturating_mul(2).max(MIN_READ).min(limit);
        if target <= len {
            // `next_request` would have answered: nothing more may be read.
            debug_assert!(false, "RequestReader::read_from before next_request");
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request reader: read before next_request",
            ));
        }
        self.buf.resize(target, 0);
        let read = src.read(&mut self.buf[len..]);
        let n = match &read {
            Ok(n) => (*n).min(target - len),
            Err(_) => 0,
        };
        self.buf.truncate(len + n);
        read.map(|_| n)
    }

    /// Bytes read past the last complete request (pipelined requests, or the
    /// first frames of a client that did not wait for its `101`).
    pub fn into_rest(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes held (read, not yet returned as a request).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_io::Chunked;

    /// Method, path and body of one request.
    type Seen = (String, String, Vec<u8>);

    /// Every request until EOF (then the bytes left) or a refusal.
    fn requests(
        data: &[u8],
        chunk: usize,
        max_head: usize,
        max_body: usize,
    ) -> (Vec<Seen>, Result<usize, Refusal>) {
        let mut reader = RequestReader::new(max_head, max_body);
        let mut src = Chunked { data, chunk };
        let mut out = Vec::new();
        loop {
            match reader.next_request() {
                Ok(Some(r)) => out.push((
                    r.head.method.clone(),
                    r.head.path.clone(),
                    r.body().to_vec(),
                )),
                Ok(None) => {
                    if reader.read_from(&mut src).unwrap() == 0 {
                        return (out, Ok(reader.buffered()));
                    }
                }
                Err(refusal) => return (out, Err(refusal)),
            }
        }
    }

    #[test]
    fn a_body_after_its_head_in_a_later_read_is_read() {
        // The head and a short body (under the 1 KiB minimum read) in two
        // reads: the read limit is below the minimum read size.
        let head = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n";
        let body = br#"{"room":"a","data":1}         "#;
        let mut reader = RequestReader::new(8192, 1 << 20);
        let mut src = Chunked {
            data: head,
            chunk: usize::MAX,
        };
        assert_eq!(reader.read_from(&mut src).unwrap(), head.len());
        assert!(reader.next_request().unwrap().is_none());
        let mut src = Chunked {
            data: body,
            chunk: usize::MAX,
        };
        assert_eq!(reader.read_from(&mut src).unwrap(), body.len());
        let request = reader.next_request().unwrap().expect("complete");
        assert_eq!(request.body(), body);
        assert_eq!(request.head_bytes(), head);
    }

    #[test]
    fn pipelined_requests_come_out_the_same_at_any_chunk_size() {
        let data = b"GET /healthz HTTP/1.1\r\n\r\n\
            POST /api/send HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            GET /stats HTTP/1.1\r\nConnection: close\r\n\r\nGET /x";
        let whole = requests(data, usize::MAX, 8192, 1024);
        assert_eq!(whole.0.len(), 3);
        assert_eq!(whole.0[1].2, b"hello");
        assert_eq!(whole.1, Ok(6), "the incomplete fourth request is kept");
        for chunk in 1..40 {
            assert_eq!(requests(data, chunk, 8192, 1024), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn a_body_is_never_read_past_its_length() {
        let data = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        let head = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut reader = RequestReader::new(8192, 1024);
        let mut src = Chunked {
            data: &data[..head],
            chunk: usize::MAX,
        };
        reader.read_from(&mut src).unwrap();
        assert!(reader.next_request().unwrap().is_none());
        // Exactly the 3 body bytes are asked for, whatever the source has.
        let mut src = Chunked {
            data: &data[head..],
            chunk: usize::MAX,
        };
        assert_eq!(reader.read_from(&mut src).unwrap(), 3);
        assert_eq!(reader.next_request().unwrap().unwrap().body(), b"abc");
    }

    #[test]
    fn refusals_are_decided_from_the_head() {
        let refusal = |data: &[u8]| {
            for chunk in [1, 7, usize::MAX] {
                let (_, end) = requests(data, chunk, 1024, 100);
                assert!(end.is_err(), "{:?}", String::from_utf8_lossy(data));
                assert_eq!(end, requests(data, usize::MAX, 1024, 100).1);
            }
            requests(data, usize::MAX, 1024, 100)
                .1
                .unwrap_err()
                .status()
        };
        assert_eq!(
            refusal(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            400
        );
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            413
        );
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            refusal(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(refusal(long.as_bytes()), 431);
        let many: String = (0..60).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            refusal(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
        assert_eq!(
            refusal(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
    }

    #[test]
    fn memory_is_bounded_by_the_limits() {
        let mut reader = RequestReader::new(1024, 100);
        let endless = vec![b'a'; 1 << 20];
        let mut src = Chunked {
            data: b"GET / HTTP/1.1\r\nX: ",
            chunk: usize::MAX,
        };
        reader.read_from(&mut src).unwrap();
        let mut src = Chunked {
            data: &endless,
            chunk: usize::MAX,
        };
        while matches!(reader.next_request(), Ok(None)) {
            reader.read_from(&mut src).unwrap();
        }
        assert!(reader.buffered() <= 1024);
    }
}
