//! One ordered output queue per connection, shared by tungstenite's own frames
//! (pongs) and fan-out frames. Shared frames are queued by reference count,
//! never copied; the queue is drained with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

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
    /// (without error) on `WouldBlock`.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { self.front_written } else { 0 };
                slices[i] = IoSlice::new(&f[start..]);
                n += 1;
            }
            let written = match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.consume(written);
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

    /// A writer that accepts at most `cap` bytes per call and `budget` in all.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
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
        let mut w = Trickle {
            got: Vec::new(),
            cap: 5,
            budget: 100,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 100);
        assert_eq!(q.len(), total - 100);
        w.budget = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.got, expect);
    }

    #[test]
    fn discard_keeps_a_started_frame_whole() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        q.push(Bytes::from_static(b"ghi"));
        let mut w = Trickle {
            got: Vec::new(),
            cap: 2,
            budget: 2,
        };
        q.write_to(&mut w).unwrap();
        q.discard_unstarted();
        assert_eq!(q.len(), 4);
        q.push(Bytes::from_static(b"X"));
        w.budget = usize::MAX;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"abcdefX");
    }
}
