//! RESP2 to and from Redis without a socket: bytes in, complete replies out
//! ([`RespReader`]); commands appended to an output buffer
//! ([`encode_command`]). Parsing is `redis-protocol`'s; what is kept between
//! reads, and how much may be, is ours. Guarantees:
//!
//! * Bounded: at most `max` bytes are buffered; a reply that cannot fit is
//!   an error ([`RespError::TooLarge`]), never a growing buffer.
//! * The same replies whatever the read boundaries (fuzz target `resp`).
//! * A reply's bytes are split off the buffer, not copied (`Bytes`).

use std::io;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;
pub use redis_protocol::resp2::types::BytesFrame;

/// Bytes asked of the socket per read, at least.
const MIN_READ: usize = 16 * 1024;

/// Why a link's input cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP2: the link is out of step and must be dropped.
    Protocol(String),
    /// A reply longer than the buffer allows.
    TooLarge { max: usize },
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Protocol(why) => write!(f, "not RESP2: {why}"),
            RespError::TooLarge { max } => write!(f, "a reply longer than {max} bytes"),
        }
    }
}

/// The input side of one Redis connection.
#[derive(Debug)]
pub struct RespReader {
    buf: BytesMut,
    max: usize,
}

impl RespReader {
    /// A reader that buffers at most `max` bytes (the longest reply taken).
    pub fn new(max: usize) -> RespReader {
        RespReader {
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next complete reply among the bytes read so far; `Ok(None)` when
    /// more are needed (then call [`Self::read_from`]).
    pub fn next_frame(&mut self) -> Result<Option<BytesFrame>, RespError> {
        match decode_bytes_mut(&mut self.buf) {
            Ok(Some((frame, _, _))) => Ok(Some(frame)),
            Ok(None) if self.buf.len() >= self.max => Err(RespError::TooLarge { max: self.max }),
            Ok(None) => Ok(None),
            Err(e) => Err(RespError::Protocol(e.to_string())),
        }
    }

    /// One read from `src`, of at most what the buffer may still take.
    /// `Ok(0)` is the end of the stream. Call it after [`Self::next_frame`]
    /// answered `Ok(None)`.
    pub fn read_from(&mut self, src: &mut impl io::Read) -> io::Result<usize> {
        let len = self.buf.len();
        let room = MIN_READ.max(len).min(self.max.saturating_sub(len));
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "RESP reader full: next_frame reports it",
            ));
        }
        self.buf.resize(len + room, 0);
        let read = src.read(&mut self.buf[len..]);
        let n = read.as_ref().map_or(0, |&n| n.min(room));
        self.buf.truncate(len + n);
        read.map(|_| n)
    }

    /// Bytes read and not yet returned as a reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Append one command — an array of bulk strings, as Redis expects from
/// clients — to `out`. No allocation beyond `out`'s growth.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    let mut parts: [BorrowedFrame<'_>; 8] = std::array::from_fn(|_| BorrowedFrame::Null);
    let frames: Vec<BorrowedFrame<'_>>;
    let array: &[BorrowedFrame<'_>] = if args.len() <= parts.len() {
        for (slot, arg) in parts.iter_mut().zip(args) {
            *slot = BorrowedFrame::BulkString(arg);
        }
        &parts[..args.len()]
    } else {
        frames = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        &frames
    };
    extend_encode_borrowed(out, &BorrowedFrame::Array(array), false)
        .expect("an array of bulk strings always encodes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_io::Chunked;

    /// Every reply in `data` read `chunk` bytes at a time, then how it ended.
    fn replies(
        data: &[u8],
        chunk: usize,
        max: usize,
    ) -> (Vec<BytesFrame>, Result<usize, RespError>) {
        let mut reader = RespReader::new(max);
        let mut src = Chunked { data, chunk };
        let mut out = Vec::new();
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => {
                    if reader.read_from(&mut src).unwrap() == 0 {
                        return (out, Ok(reader.buffered()));
                    }
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn replies_come_out_the_same_at_any_read_size() {
        let data = b"+PONG\r\n-ERR unknown command\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*0\r\n\
            *3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$11\r\n{\"a\":\"b\r\n\"}\r\n\
            *2\r\n*1\r\n:1\r\n$0\r\n\r\n+PART";
        let whole = replies(data, usize::MAX, 1 << 20);
        assert_eq!(whole.0.len(), 8);
        assert_eq!(whole.0[0], BytesFrame::SimpleString("PONG".into()));
        assert_eq!(whole.0[3], BytesFrame::BulkString("hello".into()));
        assert_eq!(whole.0[4], BytesFrame::Null);
        match &whole.0[6] {
            BytesFrame::Array(parts) => {
                assert_eq!(parts[2], BytesFrame::BulkString("{\"a\":\"b\r\n\"}".into()))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(whole.1, Ok(5), "the incomplete last reply is kept");
        for chunk in 1..24 {
            assert_eq!(replies(data, chunk, 1 << 20), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn a_reply_over_the_limit_is_an_error_not_a_growing_buffer() {
        let mut data = b"$100000\r\n".to_vec();
        data.extend(vec![b'x'; 100_000]);
        data.extend(b"\r\n");
        let (got, end) = replies(&data, 4096, 64 * 1024);
        assert!(got.is_empty());
        assert_eq!(end, Err(RespError::TooLarge { max: 64 * 1024 }));
        assert_eq!(replies(&data, 4096, 200_000).0.len(), 1);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (_, end) = replies(b"HTTP/1.1 400 Bad Request\r\n\r\n", 7, 1024);
        assert!(matches!(end, Err(RespError::Protocol(_))), "{end:?}");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"PUBLISH", b"sb:room:a", b"{\"x\":1}"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$9\r\nsb:room:a\r\n$7\r\n{\"x\":1}\r\n"
        );
        let many: Vec<Vec<u8>> = (0..12).map(|i| format!("c{i}").into_bytes()).collect();
        let args: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        let mut out = BytesMut::new();
        encode_command(&mut out, &args);
        assert!(out.starts_with(b"*12\r\n$2\r\nc0\r\n"));
        let (frames, _) = replies(&out, usize::MAX, 1024);
        assert_eq!(frames.len(), 1);
    }
}
