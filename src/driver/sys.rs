//! Socket writes through `send`/`sendmsg` rather than `write`/`writev`: the
//! socket calls skip the VFS file-position lock and iterator checks, which
//! is measurable when one message goes out as one syscall per recipient.

use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;

/// A `Write` over a connected socket that sends with `MSG_NOSIGNAL`.
pub struct SocketWriter<'a, S: AsRawFd>(pub &'a S);

impl<S: AsRawFd> Write for SocketWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is open for the
        // lifetime of the borrow.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.len() == 1 {
            return self.write(&bufs[0]);
        }
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the msghdr
        // only points at `bufs`, which outlives the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
