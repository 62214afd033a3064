//! The client-frame reader `driver::rx::step`, fed an arbitrary byte stream
//! two ways:
//!
//! * whole: the stream in one buffer, stepped through to the end;
//! * chunked: the way the driver's `read_once` / `handle_frames` feed it — a
//!   small shared scratch buffer, bytes carried over from the handshake, a
//!   socket that returns arbitrary short reads, `Step::Incomplete` tails kept
//!   in `partial.frame` / `partial.need` and read straight into when the
//!   frame's length is known, and the `Partial` dropped whenever it is empty.
//!
//! Checks: no panic; `*pos` only moves forward and never past `data.len()`
//! (and by a whole frame on an event, not at all on `Incomplete`/`End`); an
//! incomplete header is shorter than `MAX_HEADER`; and both ways give the same
//! events, then the same first violation or the same pending tail.
//!
//! (The driver stops reading a connection at its Close event; here both ways
//! go on past it, which checks more of `step` and changes nothing else.)
//!
//! Input layout (so seeds are easy to write by hand):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0..2 | `max` (u16 LE; 0xFFFF means 1 MiB) |
//! | 2 | scratch size: 14 + b (255 means the driver's 64 KiB) |
//! | 3 | bytes of the stream that arrive with the handshake (carried; 254: as many as the scratch buffer holds, 255: all) |
//! | 4 | k, then k bytes: sizes of successive socket reads (cycled; 0 = a wake-up that reads nothing) |
//! | rest | the byte stream |
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::driver::rx::{step, Event, Partial, Step, Violation, MAX_HEADER};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

enum Owned {
    Event(Ev),
    Consumed,
    Incomplete(Option<usize>),
    End,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    /// The first violation, or the bytes of an incomplete frame left pending
    /// and whether the reader is at a message boundary.
    end: Result<(Vec<u8>, bool), Violation>,
}

/// One `step`, with the position checks, turned into an owned value.
fn checked_step(
    data: &mut [u8],
    pos: &mut usize,
    partial: &mut Partial,
    max: usize,
) -> Result<Owned, Violation> {
    let len = data.len();
    let before = *pos;
    assert!(before <= len, "pos {before} past len {len} before a step");
    let result = step(data, pos, partial, max).map(|s| match s {
        Step::Event(Event::Text(t)) => Owned::Event(Ev::Text(t.to_owned())),
        Step::Event(Event::Binary(b)) => Owned::Event(Ev::Binary(b.to_vec())),
        Step::Event(Event::Ping(p)) => {
            assert!(p.len() <= 125, "ping payload of {} bytes", p.len());
            Owned::Event(Ev::Ping(p.to_vec()))
        }
        Step::Event(Event::Pong) => Owned::Event(Ev::Pong),
        Step::Event(Event::Close(code)) => Owned::Event(Ev::Close(code)),
        Step::Consumed => Owned::Consumed,
        Step::Incomplete { total } => Owned::Incomplete(total),
        Step::End => Owned::End,
    });
    let after = *pos;
    assert!(after >= before, "pos moved back: {before} -> {after}");
    assert!(after <= len, "pos {after} past len {len}");
    match &result {
        Ok(Owned::Event(_) | Owned::Consumed) => {
            assert!(after >= before + 2, "a frame of {} bytes", after - before)
        }
        Ok(Owned::Incomplete(total)) => {
            assert_eq!(after, before, "pos moved on Incomplete");
            let have = len - before;
            assert!(have > 0, "Incomplete with no bytes");
            match *total {
                None => assert!(have < MAX_HEADER, "{have} bytes and still no header"),
                Some(t) => {
                    assert!(t > have, "Incomplete, but {t} <= {have} bytes are here");
                    assert!(t <= MAX_HEADER + max, "frame of {t} bytes passed max {max}");
                }
            }
        }
        Ok(Owned::End) => assert_eq!((before, after), (len, len), "End before the end"),
        Err(_) => {}
    }
    result
}

/// The driver's `handle_frames`: every complete frame in `data`; an
/// incomplete tail goes to `partial`.
fn handle_frames(
    data: &mut [u8],
    partial: &mut Partial,
    max: usize,
    events: &mut Vec<Ev>,
) -> Result<(), Violation> {
    let mut pos = 0;
    loop {
        match checked_step(data, &mut pos, partial, max)? {
            Owned::End => return Ok(()),
            Owned::Consumed => {}
            Owned::Event(e) => events.push(e),
            Owned::Incomplete(total) => {
                partial.frame = Vec::with_capacity(total.unwrap_or(MAX_HEADER));
                partial.frame.extend_from_slice(&data[pos..]);
                partial.need = total.unwrap_or(0);
                return Ok(());
            }
        }
    }
}

/// The whole stream in one buffer.
fn whole(stream: &[u8], max: usize) -> Outcome {
    let mut buf = stream.to_vec();
    let mut partial = Partial::default();
    let mut events = Vec::new();
    let end = handle_frames(&mut buf, &mut partial, max, &mut events)
        .map(|()| (partial.frame.clone(), partial.is_empty()));
    Outcome { events, end }
}

/// The driver's `read_once`: one read of at most what `socket` has (an empty
/// `socket` is `WouldBlock`).
fn read_once(
    rx: &mut Option<Box<Partial>>,
    scratch: &mut [u8],
    socket: &mut &[u8],
    max: usize,
    events: &mut Vec<Ev>,
) -> Result<(), Violation> {
    let mut partial = rx.take().map(|b| *b).unwrap_or_default();
    if partial.need > 0 {
        // A frame longer than what was read so far: read straight into it.
        let have = partial.frame.len();
        assert!(partial.need > have, "need {} <= have {have}", partial.need);
        let n = (partial.need - have).min(socket.len());
        partial.frame.extend_from_slice(&socket[..n]);
        *socket = &socket[n..];
        if partial.frame.len() == partial.need {
            let mut frame = std::mem::take(&mut partial.frame);
            partial.need = 0;
            handle_frames(&mut frame, &mut partial, max, events)?;
            assert!(partial.frame.is_empty(), "a whole frame left a tail");
        }
    } else if partial.frame.len() >= scratch.len() {
        // More came with the handshake than the scratch buffer holds: parse
        // it where it is (no read).
        let mut carried = std::mem::take(&mut partial.frame);
        handle_frames(&mut carried, &mut partial, max, events)?;
    } else {
        // Carried bytes (a partial header, or what came with the handshake)
        // go first, then what the socket has.
        let carried = partial.frame.len();
        scratch[..carried].copy_from_slice(&partial.frame);
        partial.frame = Vec::new();
        let n = (scratch.len() - carried).min(socket.len());
        scratch[carried..carried + n].copy_from_slice(&socket[..n]);
        *socket = &socket[n..];
        handle_frames(&mut scratch[..carried + n], &mut partial, max, events)?;
    }
    if !partial.is_empty() {
        *rx = Some(Box::new(partial));
    }
    Ok(())
}

/// The stream as the driver sees it: `carried` bytes with the handshake, the
/// rest in socket reads of the given sizes.
fn chunked(stream: &[u8], carried: usize, reads: &[u8], scratch_len: usize, max: usize) -> Outcome {
    let (tail, rest) = stream.split_at(carried);
    let mut rx = (!tail.is_empty()).then(|| Box::new(Partial::carrying(tail.to_vec())));
    let mut scratch = vec![0u8; scratch_len];
    // What one readable event finds in the socket.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut off = 0;
    for (i, &size) in reads.iter().cycle().enumerate() {
        if off >= rest.len() {
            break;
        }
        let size = if i > rest.len() + 64 { rest.len() } else { size as usize };
        let end = (off + size).min(rest.len());
        segments.push(&rest[off..end]);
        off = end;
    }
    if off < rest.len() {
        segments.push(&rest[off..]);
    }
    let mut events = Vec::new();
    let run = || -> Result<(), Violation> {
        for mut socket in segments {
            // Read until the socket is empty, then one more read that would block.
            loop {
                let was_empty = socket.is_empty();
                read_once(&mut rx, &mut scratch, &mut socket, max, &mut events)?;
                if was_empty {
                    break;
                }
            }
        }
        // No more data: a last wake-up handles bytes carried from the handshake.
        read_once(&mut rx, &mut scratch, &mut &[][..], max, &mut events)
    };
    let end = run().map(|()| match &rx {
        Some(p) => (p.frame.clone(), p.is_empty()),
        None => (Vec::new(), true),
    });
    Outcome { events, end }
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
    let reads = &data[5..5 + k];
    let stream = &data[5 + k..];
    let carried = match data[3] {
        // As many bytes as the scratch buffer holds, and more.
        255 => stream.len(),
        254 => scratch_len.min(stream.len()),
        b => (b as usize).min(stream.len()),
    };
    let reads: &[u8] = if reads.is_empty() { &[255] } else { reads };

    let a = whole(stream, max);
    let b = chunked(stream, carried, reads, scratch_len, max);
    assert_eq!(a, b, "whole vs chunked (reads {reads:?}, carried {carried}, scratch {scratch_len}, max {max})");
});
