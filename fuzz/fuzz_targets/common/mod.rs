//! What the stream-reader targets share: a non-blocking socket and the
//! cutting of a stream into the segments that arrive as readable events.

use std::io;

/// A non-blocking socket: what has arrived so far, `WouldBlock` when that is
/// read, end of stream once `closed`.
pub struct Socket<'a> {
    pub arrived: &'a [u8],
    pub closed: bool,
}

impl io::Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.arrived.is_empty() {
            return if self.closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.arrived.len());
        buf[..n].copy_from_slice(&self.arrived[..n]);
        self.arrived = &self.arrived[n..];
        Ok(n)
    }
}

/// `stream` cut into segments of the given sizes (cycled; 0 is a wake-up
/// with nothing new). Bounded: past a while, the rest arrives at once.
pub fn segments<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let sizes: &[u8] = if sizes.is_empty() { &[255] } else { sizes };
    let mut out = Vec::new();
    let mut off = 0;
    for (i, &size) in sizes.iter().cycle().enumerate() {
        if off >= stream.len() {
            break;
        }
        let size = if i > stream.len() + 64 {
            stream.len()
        } else {
            size as usize
        };
        let end = (off + size).min(stream.len());
        out.push(&stream[off..end]);
        off = end;
    }
    out
}
