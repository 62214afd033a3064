//! The cluster's RESP reader, `driver::cluster::resp::RespReader`
//! (`next_frame`, then `read_from` the socket when it needs more), fed an
//! arbitrary byte stream whole and in segments of arbitrary sizes.
//!
//! Checks: no panic; both ways give the same replies, then the same error
//! (not RESP, or a reply over the limit) or the same bytes pending; the
//! buffer never holds more than its limit.
//!
//! Input layout: byte 0 the limit (64 · (b + 1) bytes), byte 1 `k`, then `k`
//! segment sizes (cycled; 0 = a wake-up with nothing new), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::{segments, Socket};
use switchboard::driver::cluster::resp::{BytesFrame, RespError, RespReader};

#[derive(Debug, PartialEq)]
struct Outcome {
    replies: Vec<BytesFrame>,
    end: Result<usize, RespError>,
}

fn run(segments: &[&[u8]], max: usize) -> Outcome {
    let mut reader = RespReader::new(max);
    let mut replies = Vec::new();
    let mut socket = Socket {
        arrived: &[],
        closed: false,
    };
    let mut go = || -> Result<usize, RespError> {
        let mut readable = |socket: &mut Socket<'_>, replies: &mut Vec<BytesFrame>| loop {
            while let Some(frame) = reader.next_frame()? {
                replies.push(frame);
            }
            match reader.read_from(socket) {
                Ok(0) => return Ok(false),
                Ok(_) => assert!(reader.buffered() <= max, "{} > {max}", reader.buffered()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => panic!("read error {e}"),
            }
        };
        for segment in segments {
            socket.arrived = segment;
            readable(&mut socket, &mut replies)?;
        }
        socket.closed = true;
        while readable(&mut socket, &mut replies)? {}
        Ok(reader.buffered())
    };
    let end = go();
    Outcome { replies, end }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 64 * (data[0] as usize + 1);
    let k = (data[1] as usize).min(data.len() - 2);
    let sizes = &data[2..2 + k];
    let stream = &data[2 + k..];
    let whole = run(&[stream], max);
    let chunked = run(&segments(stream, sizes), max);
    assert_eq!(
        whole, chunked,
        "whole vs chunked (sizes {sizes:?}, max {max})"
    );
});
