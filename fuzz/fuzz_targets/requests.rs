//! The driver's HTTP request reader, `driver::request_reader::RequestReader`
//! (`next_request`, then `read_from` the socket when it needs more, exactly
//! as `driver/request.rs` calls them), fed an arbitrary byte stream two ways:
//!
//! * whole: a socket that has the whole stream at once;
//! * chunked: the stream arriving in segments of arbitrary sizes (each a
//!   readable event, read until `WouldBlock`).
//!
//! Checks: no panic; the whole way gives what a reference gives (requests
//! cut from the whole stream with `http::parse_head` alone); both ways give
//! the same requests (method, path, query, the headers the driver uses, head
//! bytes and body), then the same refusal or, at end of stream, the same
//! bytes pending; the reader never holds more than `max_head + max_body`
//! bytes; a body is exactly its `Content-Length`.
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
use switchboard::driver::http::{parse_head, Parse, RequestHead};
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

impl Seen {
    fn new(h: &RequestHead, head: &[u8], body: &[u8]) -> Seen {
        Seen {
            method: h.method.clone(),
            path: h.path.clone(),
            query: h.query.clone(),
            keep_alive: h.keep_alive,
            wants_websocket: h.wants_websocket,
            authorization: h.authorization.clone(),
            origin: h.origin.clone(),
            content_type: h.content_type.clone(),
            head: head.to_vec(),
            body: body.to_vec(),
        }
    }
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
            out.push(Seen::new(h, r.head_bytes(), r.body()));
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

/// The reference: requests cut from the whole stream by `parse_head` alone
/// (a head looked for in at most `max_head` bytes, then its body), with
/// the refusals' rules written out once more.
fn reference(stream: &[u8], max_head: usize, max_body: usize) -> Outcome {
    let mut requests = Vec::new();
    let mut rest = stream;
    let end = loop {
        let window = &rest[..rest.len().min(max_head)];
        let h = match parse_head(window) {
            Parse::Partial if window.len() >= max_head => break Err(Refusal::HeadTooLarge),
            Parse::Partial => break Ok(rest.len()),
            Parse::Bad(431, _) => break Err(Refusal::TooManyHeaders),
            Parse::Bad(_, why) => break Err(Refusal::Malformed(why)),
            Parse::Complete(h) => h,
        };
        if h.chunked {
            break Err(Refusal::LengthRequired);
        }
        if h.content_length > max_body {
            break Err(Refusal::BodyTooLarge { max_body });
        }
        if h.wants_websocket && h.method == "GET" && h.content_length > 0 {
            break Err(Refusal::UpgradeWithBody);
        }
        let total = h.len + h.content_length;
        if rest.len() < total {
            break Ok(rest.len());
        }
        requests.push(Seen::new(&h, &rest[..h.len], &rest[h.len..total]));
        rest = &rest[total..];
    };
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
    assert_eq!(
        whole,
        reference(stream, max_head, max_body),
        "reader vs reference"
    );
    let chunked = run(&segments, max_head, max_body);
    assert_eq!(
        whole, chunked,
        "whole vs chunked (sizes {sizes:?}, max_head {max_head}, max_body {max_body})"
    );
});
