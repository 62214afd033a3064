//! The driver's frame reader, `driver::rx::FrameReader` (`fill` once, then
//! `Fill::parse`, exactly as `driver/ws.rs` calls them), fed an arbitrary
//! byte stream two ways:
//!
//! * whole: a socket that has the whole stream at once, read into the
//!   driver's 64 KiB scratch buffer;
//! * chunked: bytes carried over from the handshake, then the rest arriving
//!   in segments of arbitrary sizes (each a readable event, read until the
//!   reader says the socket is drained), with a scratch buffer of any size
//!   from 14 bytes up, so frames also take the read-straight-into-the-frame
//!   path.
//!
//! Checks: no panic; the whole way gives the events and violation of a
//! reference (`rx::step` over the whole stream in one buffer, checking that
//! each step moves forward within the buffer by at least a frame header);
//! both ways give the same events, then the same violation or, at end of
//! stream, the same number of bytes pending and the same "idle"; pending
//! bytes stay bounded by the message limit (plus what was carried); end of
//! stream ends the reading.
//!
//! (The driver stops reading a connection at its Close event; here both ways
//! go on past it, which checks more of the reader and changes nothing else.)
//!
//! Input layout (so seeds are easy to write by hand):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0..2 | `max` (u16 LE; 0xFFFF means 1 MiB) |
//! | 2 | scratch size: 14 + b (255 means the driver's 64 KiB) |
//! | 3 | bytes of the stream that arrive with the handshake (carried; 254: as many as the scratch buffer holds, 255: all) |
//! | 4 | k, then k bytes: sizes of successive segments (cycled; 0 = a wake-up with nothing new) |
//! | rest | the byte stream |
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;

mod common;
use common::{segments, Socket};
use switchboard::driver::rx::{step, Event, FrameReader, Partial, Step, Violation, MAX_HEADER};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    /// The first violation, or at end of stream: bytes pending, and idle.
    end: Result<(usize, bool), Violation>,
}

fn owned(event: Event<'_>) -> Ev {
    match event {
        Event::Text(t) => Ev::Text(t.to_owned()),
        Event::Binary(b) => Ev::Binary(b.to_vec()),
        Event::Ping(p) => {
            assert!(p.len() <= 125, "ping payload of {} bytes", p.len());
            Ev::Ping(p.to_vec())
        }
        Event::Pong => Ev::Pong,
        Event::Close(code) => Ev::Close(code),
    }
}

/// The driver's `read_frames` for one readable event: read until drained.
/// `Ok(false)`: end of stream.
fn readable(
    reader: &mut FrameReader,
    socket: &mut Socket<'_>,
    scratch: &mut [u8],
    max: usize,
    bound: usize,
    events: &mut Vec<Ev>,
) -> Result<bool, Violation> {
    loop {
        let fill = match reader.fill(socket, scratch) {
            Ok(fill) => fill,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                return Ok(false);
            }
        };
        let (more, eof) = (fill.more(), fill.at_eof());
        *reader = fill
            .parse(scratch, max, |e| {
                events.push(owned(e));
                true
            })?
            .expect("the callback never stops");
        assert!(
            reader.buffered() <= bound,
            "{} bytes pending, bound {bound}",
            reader.buffered()
        );
        if eof {
            return Ok(false);
        }
        if !more {
            return Ok(true);
        }
    }
}

/// Run a connection: `carried` bytes with the handshake, then `segments`,
/// then end of stream.
fn run(carried: &[u8], segments: &[&[u8]], scratch_len: usize, max: usize) -> Outcome {
    let mut reader = FrameReader::carrying(carried.to_vec());
    let mut scratch = vec![0u8; scratch_len];
    let mut events = Vec::new();
    // A frame and a fragmented message, each at most `max` (plus a header),
    // or what came with the handshake.
    let bound = carried.len() + 2 * (max + MAX_HEADER);
    let mut socket = Socket {
        arrived: &[],
        closed: false,
    };
    let mut go = || -> Result<(usize, bool), Violation> {
        let mut pass = |socket: &mut Socket<'_>, events: &mut Vec<Ev>, reader: &mut FrameReader| {
            readable(reader, socket, &mut scratch, max, bound, events)
        };
        // The driver's first look after the upgrade, before any new data.
        pass(&mut socket, &mut events, &mut reader)?;
        for segment in segments {
            socket.arrived = segment;
            pass(&mut socket, &mut events, &mut reader)?;
            assert!(socket.arrived.is_empty(), "a drained socket still had data");
        }
        socket.closed = true;
        let (pending, idle) = (reader.buffered(), reader.is_idle());
        // End of stream ends the reading in the pass that meets it.
        let more = pass(&mut socket, &mut events, &mut reader)?;
        assert!(!more, "the reader goes on after end of stream");
        Ok((pending, idle))
    };
    let end = go();
    Outcome { events, end }
}

/// The reference: `rx::step` over the whole stream in one buffer, with the
/// position checks of every step. Events, then the violation if any.
fn reference(stream: &[u8], max: usize) -> (Vec<Ev>, Option<Violation>) {
    let mut data = stream.to_vec();
    let len = data.len();
    let mut partial = Partial::default();
    let mut events = Vec::new();
    let mut pos = 0;
    loop {
        let before = pos;
        let step = step(&mut data, &mut pos, &mut partial, max);
        assert!(
            pos >= before && pos <= len,
            "pos {before} -> {pos} of {len}"
        );
        match step {
            Ok(Step::Event(e)) => {
                assert!(pos >= before + 2, "an event from {} bytes", pos - before);
                events.push(owned(e));
            }
            Ok(Step::Consumed) => assert!(pos >= before + 2),
            Ok(Step::Incomplete { total }) => {
                assert_eq!(pos, before, "pos moved on Incomplete");
                let have = len - before;
                match total {
                    None => assert!(have > 0 && have < MAX_HEADER, "{have} bytes, no header"),
                    Some(t) => assert!(t > have && t <= MAX_HEADER + max, "total {t}, have {have}"),
                }
                return (events, None);
            }
            Ok(Step::End) => {
                assert_eq!(pos, len);
                return (events, None);
            }
            Err(v) => return (events, Some(v)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let max = match u16::from_le_bytes([data[0], data[1]]) {
        0xFFFF => 1 << 20,
        m => m as usize,
    };
    let scratch_len = match data[2] {
        255 => 64 * 1024,
        b => MAX_HEADER + b as usize,
    };
    let k = (data[4] as usize).min(data.len() - 5);
    let sizes = &data[5..5 + k];
    let stream = &data[5 + k..];
    let carried = match data[3] {
        255 => stream.len(),
        254 => scratch_len.min(stream.len()),
        b => (b as usize).min(stream.len()),
    };
    let (tail, rest) = stream.split_at(carried);
    let segments = segments(rest, sizes);

    let (events, violation) = reference(stream, max);
    let whole = run(&[], &[stream], 64 * 1024, max);
    assert_eq!(whole.events, events, "FrameReader vs step");
    assert_eq!(whole.end.err(), violation, "FrameReader vs step");
    let chunked = run(tail, &segments, scratch_len, max);
    assert_eq!(
        whole, chunked,
        "whole vs chunked (sizes {sizes:?}, carried {carried}, scratch {scratch_len}, max {max})"
    );
});
