//! One Redis connection in the mio loop: a non-blocking socket, the bytes
//! it still has to write, a bounded [`RespReader`] and, for a command
//! link, what to do with each reply in order.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::{BytesFrame, RespReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Down,
    /// TCP connect in progress.
    Connecting,
    /// Connected; setup replies (AUTH, SELECT, script loading) due.
    Handshake,
    Up,
}

pub struct Link<R> {
    token: Token,
    tcp: Option<TcpStream>,
    pub state: LinkState,
    /// Bytes to write (commands are appended, written once per iteration).
    pub out: BytesMut,
    reader: RespReader,
    reply_max: usize,
    /// What each reply due is for, in order (command links).
    pub replies: VecDeque<R>,
    /// Setup replies still due before the link is up.
    pub handshake_left: usize,
}

impl<R> Link<R> {
    pub fn new(token: Token, reply_max: usize) -> Link<R> {
        Link {
            token,
            tcp: None,
            state: LinkState::Down,
            out: BytesMut::new(),
            reader: RespReader::new(reply_max),
            reply_max,
            replies: VecDeque::new(),
            handshake_left: 0,
        }
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// Start connecting; `setup` is written first, and `steps` replies are
    /// due before the link is up.
    pub fn open(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        setup: &[u8],
        steps: usize,
    ) -> io::Result<()> {
        self.close(registry);
        let mut tcp = TcpStream::connect(addr)?;
        registry.register(
            &mut tcp,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.tcp = Some(tcp);
        self.state = LinkState::Connecting;
        self.out.extend_from_slice(setup);
        self.handshake_left = steps;
        Ok(())
    }

    /// The socket is ready: finish connecting if it was.
    pub fn on_ready(&mut self) -> Result<(), String> {
        if self.state != LinkState::Connecting {
            return Ok(());
        }
        let Some(tcp) = &self.tcp else {
            return Ok(());
        };
        if let Ok(Some(e)) | Err(e) = tcp.take_error() {
            return Err(format!("cannot connect: {e}"));
        }
        match tcp.peer_addr() {
            Ok(_) => {
                let _ = tcp.set_nodelay(true);
                self.state = if self.handshake_left == 0 {
                    LinkState::Up
                } else {
                    LinkState::Handshake
                };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(format!("cannot connect: {e}")),
        }
    }

    /// The next complete reply, reading the socket as needed; `Ok(None)`
    /// when it has nothing more now.
    pub fn next_frame(&mut self) -> Result<Option<BytesFrame>, String> {
        if matches!(self.state, LinkState::Down | LinkState::Connecting) {
            return Ok(None);
        }
        let Some(tcp) = &mut self.tcp else {
            return Ok(None);
        };
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match self.reader.read_from(tcp) {
                Ok(0) => return Err("Redis closed the connection".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Write what is queued, until done or the socket is full.
    pub fn flush(&mut self, _registry: &Registry) -> Result<(), String> {
        if matches!(self.state, LinkState::Down | LinkState::Connecting) {
            return Ok(());
        }
        let Some(tcp) = &mut self.tcp else {
            return Ok(());
        };
        while !self.out.is_empty() {
            match tcp.write(&self.out) {
                Ok(0) => return Err("Redis closed the connection".into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        // Give back the memory of a burst.
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Drop the connection; returns the replies that will never come.
    pub fn close(&mut self, registry: &Registry) -> Vec<R> {
        if let Some(mut tcp) = self.tcp.take() {
            let _ = registry.deregister(&mut tcp);
        }
        self.state = LinkState::Down;
        self.out = BytesMut::new();
        self.reader = RespReader::new(self.reply_max);
        self.handshake_left = 0;
        self.replies.drain(..).collect()
    }
}
