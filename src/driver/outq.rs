//! One ordered output queue per connection, shared by tungstenite's own frames
//! (pongs) and fan-out frames. Shared frames are queued by reference count,
//! never copied into the queue. Draining it, runs of small frames are
//! gathered into one buffer and sent with one plain `send` (the kernel copies
//! one segment instead of walking an iovec per frame, and 256 frames need
//! one call instead of four of at most 64 iovecs); large frames go out from
//! where they are with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

/// Most bytes gathered for one `send` (about one loopback segment); the
/// driver's gather buffer is this big.
pub const GATHER_MAX: usize = 64 * 1024;

/// Frames at least this big are not copied into the gather buffer: for them
/// the copy costs more than the kernel's per-iovec step, and 64 of them
/// carry 128 KiB or more in one vectored call.
const GATHER_FRAME_MAX: usize = 2 * 1024;

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Unwritten bytes in the queue.
    bytes: usize,
}

impl OutQueue {
    /// Unwritten bytes queued.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Queue a shared frame (a reference-count increment).
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drop everything not yet started, keeping a partly written front frame
    /// so the stream stays well-framed (used before a slow consumer's close).
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.front_written > 0);
        while self.frames.len() > keep {
            let f = self.frames.pop_back().expect("len checked");
            self.bytes -= f.len();
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// Write as much as the socket takes. Returns bytes written; stops
    /// (without error) on `WouldBlock`. `gather` is scratch space (any
    /// contents; left with capacity for `GATHER_MAX` bytes).
    pub fn write_to(&mut self, w: &mut impl Write, gather: &mut Vec<u8>) -> io::Result<usize> {
        let mut total = 0;
        while let Some(front) = self.frames.front() {
            let front = &front[self.front_written..];
            let small = |f: &[u8]| f.len() < GATHER_FRAME_MAX;
            let mut requested = 0;
            let result = if self.frames.len() == 1 {
                // One frame (a fan-out's burst, usually): straight from it.
                requested = front.len();
                w.write(front)
            } else if small(front) && small(&self.frames[1]) {
                // A run of small frames: copy it into one buffer, one send.
                gather.clear();
                gather.extend_from_slice(front);
                for f in self.frames.iter().skip(1) {
                    if !small(f) || gather.len() + f.len() > GATHER_MAX {
                        break;
                    }
                    gather.extend_from_slice(f);
                }
                requested = gather.len();
                w.write(gather)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                    let start = if i == 0 { self.front_written } else { 0 };
                    slices[i] = IoSlice::new(&f[start..]);
                    requested += slices[i].len();
                    n += 1;
                }
                w.write_vectored(&slices[..n])
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // Never count more than was offered (the queue's byte count
                // must not underflow, whatever a writer claims).
                Ok(k) => k.min(requested),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.consume(written);
            if written < requested {
                // The socket buffer is full: a writable edge follows when it
                // drains, so don't spend a call to hear EAGAIN.
                break;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // A burst grew the ring: give the memory back once it has drained.
            self.frames = VecDeque::new();
        }
        Ok(total)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.frames.front().expect("wrote more than queued");
            let left = front.len() - self.front_written;
            if n >= left {
                n -= left;
                self.front_written = 0;
                self.frames.pop_front();
            } else {
                self.front_written += n;
                n = 0;
            }
        }
    }
}

/// Appending through `Write` copies (used for tungstenite's own small frames).
impl Write for OutQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in: takes at most `cap` bytes per call and `budget`
    /// in all (then `WouldBlock`); counts calls.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
        calls: usize,
        /// Largest single call, in bytes offered.
        largest: usize,
    }

    impl Trickle {
        fn new(cap: usize, budget: usize) -> Trickle {
            Trickle {
                got: Vec::new(),
                cap,
                budget,
                calls: 0,
                largest: 0,
            }
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            self.largest = self.largest.max(bufs.iter().map(|b| b.len()).sum());
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut room = self.cap.min(self.budget);
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(room);
                self.got.extend_from_slice(&b[..k]);
                room -= k;
                n += k;
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Call `write_to` until the queue is empty, refilling the budget.
    fn drain(q: &mut OutQueue, w: &mut Trickle, per_call: usize) {
        let mut gather = Vec::new();
        while !q.is_empty() {
            w.budget = per_call;
            q.write_to(w, &mut gather).unwrap();
            assert!(gather.capacity() <= 2 * GATHER_MAX);
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..200u8 {
            let f = Bytes::from(vec![i; (i as usize % 7) + 1]);
            expect.extend_from_slice(&f);
            q.push(f);
        }
        let total = q.len();
        let mut w = Trickle::new(5, 100);
        // A short write means a full socket buffer: the call ends there.
        assert_eq!(q.write_to(&mut w, &mut Vec::new()).unwrap(), 5);
        assert_eq!(q.len(), total - 5);
        drain(&mut q, &mut w, 100);
        assert_eq!(w.got, expect);
    }

    #[test]
    fn small_frames_leave_in_one_send_and_big_ones_uncopied() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        // 256 small frames (more than one iovec array holds), a big one,
        // then small ones again.
        let sizes = (0..256)
            .map(|i| 60 + i % 50)
            .chain([GATHER_FRAME_MAX * 3])
            .chain((0..40).map(|i| 10 + i));
        for (i, len) in sizes.enumerate() {
            let f = Bytes::from(vec![i as u8; len]);
            expect.extend_from_slice(&f);
            q.push(f);
        }
        let mut w = Trickle::new(usize::MAX, usize::MAX);
        q.write_to(&mut w, &mut Vec::new()).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.got, expect);
        // One send for the 256 small frames, one vectored write for the big
        // frame and the small ones behind it.
        assert_eq!(w.calls, 2);
    }

    #[test]
    fn a_long_run_of_small_frames_goes_out_in_bounded_sends() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..2000u32 {
            let f = Bytes::from(vec![i as u8; 100]);
            expect.extend_from_slice(&f);
            q.push(f);
        }
        let mut w = Trickle::new(usize::MAX, usize::MAX);
        let mut gather = Vec::new();
        q.write_to(&mut w, &mut gather).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.got, expect);
        // 200,000 bytes in sends of at most GATHER_MAX: four calls.
        assert_eq!(w.largest, GATHER_MAX / 100 * 100);
        assert_eq!(w.calls, 4);
        assert!(gather.capacity() <= 2 * GATHER_MAX);
    }

    #[test]
    fn would_block_after_progress_keeps_the_rest() {
        let mut q = OutQueue::default();
        for i in 0..1000u32 {
            q.push(Bytes::from(vec![i as u8; 100]));
        }
        // The socket takes exactly one full gather, then would block.
        let mut w = Trickle::new(usize::MAX, GATHER_MAX / 100 * 100);
        let written = q.write_to(&mut w, &mut Vec::new()).unwrap();
        assert_eq!(written, GATHER_MAX / 100 * 100);
        assert_eq!(q.len(), 100_000 - written);
        assert_eq!(w.calls, 2, "a full send, then the EAGAIN that ends it");
        drain(&mut q, &mut w, usize::MAX);
        assert_eq!(w.got.len(), 100_000);
    }

    #[test]
    fn split_writes_keep_order_across_gathered_and_vectored() {
        for cap in [1, 7, 333, 5000, GATHER_MAX + 3] {
            let mut q = OutQueue::default();
            let mut expect = Vec::new();
            let sizes = [100, 200, GATHER_FRAME_MAX + 1, 50, 50, GATHER_MAX, 7, 9];
            for (i, len) in sizes.into_iter().enumerate() {
                let f = Bytes::from(vec![i as u8 + 1; len]);
                expect.extend_from_slice(&f);
                q.push(f);
            }
            let mut w = Trickle::new(cap, 0);
            drain(&mut q, &mut w, 1000);
            assert_eq!(w.got, expect, "cap {cap}");
        }
    }

    #[test]
    fn discard_keeps_a_started_frame_whole() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        q.push(Bytes::from_static(b"ghi"));
        let mut w = Trickle::new(2, 2);
        q.write_to(&mut w, &mut Vec::new()).unwrap();
        q.discard_unstarted();
        assert_eq!(q.len(), 4);
        q.push(Bytes::from_static(b"X"));
        drain(&mut q, &mut w, 2);
        assert_eq!(w.got, b"abcdefX");
    }
}
