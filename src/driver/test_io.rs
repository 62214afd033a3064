//! Test sources for the pure readers (`rx`, `request_reader`).

use std::io;

/// A source that returns at most `chunk` bytes per read, then end of stream.
pub struct Chunked<'a> {
    pub data: &'a [u8],
    pub chunk: usize,
}

impl io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
