//! The driver's HTTP request reader, `driver::request_reader::RequestReader`
//! (`next_request`, then `read_from` the socket when it needs more, exactly
//! as `driver/request.rs` calls them), fed an arbitrary byte stream two ways:
//!
//! * whole: a socket that has the whole stream at once;
//! * chunked: the stream arriving in segments of arbitrary sizes (each a
//!   readable event, read until `WouldBlock`).
//!
//! Checks: no panic; both ways give the same requests (method, path, query,
//! the headers the driver uses, head bytes and body), then the same refusal
//! or, at end of stream, the same bytes pending; the reader never holds more
//! than `max_head + max_body` bytes; a body is exactly its `Content-Length`.
//!
//! (The driver stops after a request with `Connection: close`, a refusal or
//! an upgrade; here both ways go on to the end, which checks more of the
//! reader and changes nothing else.)
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | `max_head`: 64 + 16·b (`b` = 255: the default 8 KiB) |
//! | 1 | `max_body`: b bytes (255: the default 1 MiB) |
//! | 2 | k, then k bytes: sizes of successive segments (cycled; 0 = a wake-up with nothing new) |
//! | rest | the byte stream |
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;

mod common;
use common::{segments, Socket};
use switchboard::driver::request_reader::{Refusal, RequestReader};

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    keep_alive: bool,
    wants_websocket: bool,
    authorization: Option<String>,
    origin: Option<String>,
    content_type: Option<String>,
    head: Vec<u8>,
    body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    requests: Vec<Seen>,
    /// The refusal, or at end of stream the bytes of an incomplete request.
    end: Result<usize, Refusal>,
}

/// The driver's `read_request` for one readable event. `Ok(false)`: the
/// stream ended; `Err`: refused.
fn readable(
    reader: &mut RequestReader,
    socket: &mut Socket<'_>,
    bound: usize,
    out: &mut Vec<Seen>,
) -> Result<bool, Refusal> {
    loop {
        while let Some(r) = reader.next_request()? {
            let h = &r.head;
            assert_eq!(r.body().len(), h.content_length, "body of the wrong length");
            assert_eq!(r.head_bytes().len(), h.len);
            out.push(Seen {
                method: h.method.clone(),
                path: h.path.clone(),
                query: h.query.clone(),
                keep_alive: h.keep_alive,
                wants_websocket: h.wants_websocket,
                authorization: h.authorization.clone(),
                origin: h.origin.clone(),
                content_type: h.content_type.clone(),
                head: r.head_bytes().to_vec(),
                body: r.body().to_vec(),
            });
        }
        match reader.read_from(socket) {
            Ok(0) => return Ok(false),
            Ok(_) => assert!(
                reader.buffered() <= bound,
                "{} > {bound}",
                reader.buffered()
            ),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => panic!("read error {e}"),
        }
    }
}

fn run(segments: &[&[u8]], max_head: usize, max_body: usize) -> Outcome {
    let mut reader = RequestReader::new(max_head, max_body);
    let mut requests = Vec::new();
    let mut socket = Socket {
        arrived: &[],
        closed: false,
    };
    let bound = max_head + max_body;
    let mut go = || -> Result<usize, Refusal> {
        for segment in segments {
            socket.arrived = segment;
            readable(&mut reader, &mut socket, bound, &mut requests)?;
        }
        socket.closed = true;
        while readable(&mut reader, &mut socket, bound, &mut requests)? {}
        Ok(reader.buffered())
    };
    let end = go();
    Outcome { requests, end }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max_head = match data[0] {
        255 => 8192,
        b => 64 + 16 * b as usize,
    };
    let max_body = match data[1] {
        255 => 1 << 20,
        b => b as usize,
    };
    let k = (data[2] as usize).min(data.len() - 3);
    let sizes = &data[3..3 + k];
    let stream = &data[3 + k..];
    let segments = segments(stream, sizes);

    let whole = run(&[stream], max_head, max_body);
    let chunked = run(&segments, max_head, max_body);
    assert_eq!(
        whole, chunked,
        "whole vs chunked (sizes {sizes:?}, max_head {max_head}, max_body {max_body})"
    );
});
