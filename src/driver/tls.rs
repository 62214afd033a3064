//! TLS on the same port and in the same loop: `rustls` is sans-I/O, like
//! the hub, so a TLS connection is the same non-blocking socket with a
//! `rustls::ServerConnection` between it and the readers and writers the
//! driver already has. `wss://` and `https://` (every HTTP route) are served
//! from the one port; the plaintext frame of a fan-out is still encoded
//! once, and each recipient's encryption is the one cost TLS adds.
//!
//! rustls's unbuffered API: the connection's buffers are the driver's own,
//! and each is freed once empty, so an idle TLS connection holds rustls's
//! state alone (about 3.6 KB above a plain one), no read or write buffer.
//!
//! Provider: `ring` (builds without CMake or a C toolchain beyond `cc`),
//! TLS 1.2 and 1.3, ALPN `http/1.1`. The certificate and key are PEM files
//! (the chain in the certificate file); SIGHUP loads them again for new
//! handshakes, and a bad new file leaves the old ones in use.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::ServerConfig;

use super::sys::SocketWriter;

/// Ciphertext one connection may have waiting for its socket before more
/// is refused (the output queue keeps the rest): bounded memory for a slow
/// reader, whatever is queued for it.
const BUFFER_LIMIT: usize = 32 * 1024;

/// Load the certificate chain and key and build the server's TLS settings.
/// The error names the file and what is wrong with it, never its content.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let name = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {}", name(cert), pem_error(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {}", name(cert), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            name(cert)
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {}", name(key), pem_error(&e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no PEM item of that kind in it".into(),
        Error::Io(e) => e.to_string(),
        // Never the file's content: a key file's would be the secret.
        _ => "not valid PEM".into(),
    }
}

/// The answer to a plain HTTP request on the TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 45\r\nConnection: close\r\n\r\n\
this port speaks TLS: use https:// or wss://\n";

/// Bytes read from the socket at a time (into the stack; only what a
/// partial record needs is kept).
const READ_SIZE: usize = 16 * 1024;

/// One connection's TLS state (boxed in the connection: plain connections
/// pay one pointer for it). rustls's unbuffered API: the buffers are ours,
/// and each is freed as soon as it is empty, so an idle connection holds
/// only rustls's own state (keys, handshake leftovers), no buffer.
pub struct Tls {
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Encoded records not written yet; `sent` of them are.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes not handed to a reader yet; `taken` of them are.
    plain: Vec<u8>,
    taken: usize,
    /// rustls failed (a bad record, a failed handshake): it is not called
    /// again (it asks that), and every later call gets this.
    dead: Option<String>,
    /// No more data will come (close_notify, or the peer's TCP end).
    eof: bool,
    /// The peer's TCP end was read.
    tcp_eof: bool,
    /// close_notify is wanted, or was encoded.
    closing: bool,
    closed: bool,
    /// The first bytes were looked at (a TLS record, or plain HTTP?).
    looked: bool,
    /// An error met after some plaintext was read: reported by the next
    /// read, so what was read is not lost.
    failed: Option<io::Error>,
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Tls {
    pub fn new(config: Arc<ServerConfig>) -> io::Result<Box<Tls>> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Box::new(Tls {
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            taken: 0,
            dead: None,
            eof: false,
            tcp_eof: false,
            closing: false,
            closed: false,
            looked: false,
            failed: None,
        }))
    }

    /// Ciphertext (handshake records, alerts, encrypted data) waiting for
    /// the socket.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Write waiting ciphertext; `Ok(true)` once none is left.
    pub fn flush(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while self.sent < self.outgoing.len() {
            match SocketWriter(tcp).write(&self.outgoing[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Nothing waits: no buffer is kept.
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(true)
    }

    /// Drive rustls over what was received: decrypt records into `plain`,
    /// encode handshake records into `outgoing`, and (once the handshake
    /// is done) encrypt what of `send` fits under [`BUFFER_LIMIT`] and
    /// close_notify if asked. Returns how much of `send` was encrypted.
    fn process(&mut self, send: &[u8]) -> io::Result<usize> {
        if let Some(why) = &self.dead {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let mut encrypted = 0;
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let mut again = true;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => return Err(self.die(e)),
            };
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut failed = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        return Err(self.die(e));
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut room = 4096;
                    loop {
                        let start = self.outgoing.len();
                        self.outgoing.resize(start + room, 0);
                        match encode.encode(&mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(e)) => {
                                self.outgoing.truncate(start);
                                room = e.required_size;
                            }
                            Err(e) => return Err(self.stop(invalid(e))),
                        }
                    }
                }
                // Sent by the next flush (ours to do, in order).
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake => again = false,
                ConnectionState::PeerClosed => self.eof = true,
                ConnectionState::Closed => {
                    self.eof = true;
                    again = false;
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    again = false;
                    while encrypted < send.len() && self.outgoing.len() - self.sent < BUFFER_LIMIT {
                        let chunk = &send[encrypted..send.len().min(encrypted + 16 * 1024)];
                        let start = self.outgoing.len();
                        self.outgoing.resize(start + chunk.len() + 256, 0);
                        let n = match traffic.encrypt(chunk, &mut self.outgoing[start..]) {
                            Ok(n) => n,
                            Err(e) => return Err(self.stop(invalid(e))),
                        };
                        self.outgoing.truncate(start + n);
                        encrypted += chunk.len();
                    }
                    if self.closing && !self.closed {
                        let start = self.outgoing.len();
                        self.outgoing.resize(start + 256, 0);
                        let n = match traffic.queue_close_notify(&mut self.outgoing[start..]) {
                            Ok(n) => n,
                            Err(e) => return Err(self.stop(invalid(e))),
                        };
                        self.outgoing.truncate(start + n);
                        self.closed = true;
                    }
                }
                // Early data is off (0-RTT is never offered).
                _ => again = false,
            }
            self.incoming.drain(..discard);
            if !again {
                break;
            }
        }
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        } else if self.incoming.capacity() > 2 * self.incoming.len() + 1024 {
            // A partial record waits: keep its bytes, not a read's worth.
            self.incoming.shrink_to_fit();
        }
        Ok(encrypted)
    }

    /// An error of ours while rustls was mid-step (its discard not
    /// applied): rustls is not called again, like after its own errors.
    fn stop(&mut self, e: io::Error) -> io::Error {
        self.dead = Some(e.to_string());
        e
    }

    /// rustls failed (a bad record, a failed handshake): it is not called
    /// again. (The alert it may have queued is not fetched: a further call
    /// could deframe the same bad bytes and report them twice, which
    /// rustls does not allow, so the peer sees the end of the connection.)
    fn die(&mut self, e: rustls::Error) -> io::Error {
        let why = e.to_string();
        log::debug!("TLS failed: {why}");
        self.dead = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Read plaintext: what was decrypted, then the socket's records
    /// (answering the handshake as it goes), until `buf` is full or the
    /// socket has nothing more. So, as with a plain socket, a short read
    /// means the socket is drained (the driver relies on it: the next data
    /// raises a new edge). `WouldBlock` when nothing at all came; `Ok(0)`
    /// at the end (close_notify, or the peer's FIN).
    pub fn read(&mut self, tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed.is_none() && self.taken == self.plain.len() {
            if let Some(why) = &self.dead {
                return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
            }
        }
        let mut got = 0;
        loop {
            if self.taken < self.plain.len() {
                let n = (self.plain.len() - self.taken).min(buf.len() - got);
                buf[got..got + n].copy_from_slice(&self.plain[self.taken..self.taken + n]);
                self.taken += n;
                got += n;
                if self.taken == self.plain.len() {
                    self.plain = Vec::new();
                    self.taken = 0;
                }
                if got == buf.len() {
                    return Ok(got);
                }
            }
            // An error met after some plaintext: that first, the error
            // with the next read.
            if let Some(e) = self.failed.take() {
                if got > 0 {
                    self.failed = Some(e);
                    return Ok(got);
                }
                return Err(e);
            }
            if self.eof || self.tcp_eof {
                self.eof = true;
                return Ok(got);
            }
            if !self.looked {
                let mut first = [0u8; 1];
                match tcp.peek(&mut first) {
                    Ok(0) => return Ok(0),
                    Ok(_) => self.looked = true,
                    Err(e) => return Err(e),
                }
                // A TLS connection starts with a handshake record (22);
                // a letter is a plain HTTP request on the TLS port: told
                // so in plain HTTP, then closed.
                if first[0].is_ascii_alphabetic() {
                    let _ = SocketWriter(&*tcp).write(PLAIN_HTTP_ANSWER);
                    // Read what came (a request head), so closing sends a
                    // FIN after the answer, not a reset.
                    let mut sink = [0u8; 4096];
                    for _ in 0..4 {
                        if !matches!(tcp.read(&mut sink), Ok(n) if n > 0) {
                            break;
                        }
                    }
                    let _ = tcp.shutdown(std::net::Shutdown::Write);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "plain HTTP on the TLS port",
                    ));
                }
            }
            let mut chunk = [0u8; READ_SIZE];
            match tcp.read(&mut chunk) {
                Ok(0) => self.tcp_eof = true,
                Ok(n) => self.incoming.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = Some(e);
                    continue;
                }
            }
            // Decrypt what came; an error (the alert queued) is reported
            // once what was decrypted before it has been read.
            if let Err(e) = self.process(&[]) {
                self.failed = Some(e);
            }
            // Handshake answers, alerts: out now if the socket takes them,
            // else with the next flush (WRITABLE is asked for).
            if let Err(e) = self.flush(tcp) {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Encrypt `buf` and send it, until all of it is sent or the socket is
    /// full (at most [`BUFFER_LIMIT`] of ciphertext waits). So, as with a
    /// plain socket, a short write means the socket is full (the driver
    /// waits for its WRITABLE edge). `WouldBlock` while earlier ciphertext
    /// still waits, or before the handshake is done.
    fn write(&mut self, tcp: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        if !self.flush(tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut sent = 0;
        while sent < buf.len() {
            let n = self.process(&buf[sent..])?;
            sent += n;
            if !self.flush(tcp)? || n == 0 {
                break;
            }
        }
        if sent == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(sent)
    }

    /// The peer ended the TLS stream (close_notify, or its TCP end), or it
    /// failed: no more data will come, though no edge may announce it.
    pub fn ended(&self) -> bool {
        // An error held back behind plaintext counts too: no edge may come
        // to have it read.
        self.eof || self.failed.is_some() || self.dead.is_some()
    }

    /// Queue close_notify (sent by the next flush).
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            let _ = self.process(&[]);
        }
    }
}

/// A connection's byte stream: the socket, or the socket through TLS.
pub struct Io<'a> {
    pub tcp: &'a mut TcpStream,
    pub tls: Option<&'a mut Tls>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.read(self.tcp, buf),
            None => self.tcp.read(buf),
        }
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.write(self.tcp, buf),
            None => SocketWriter(&*self.tcp).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.tls {
            // Slice after slice: short only once the socket is full (the
            // output queue then waits for WRITABLE, which comes only after
            // EAGAIN).
            Some(tls) => {
                let mut total = 0;
                for b in bufs.iter().filter(|b| !b.is_empty()) {
                    match tls.write(self.tcp, b) {
                        Ok(n) => {
                            total += n;
                            if n < b.len() {
                                break;
                            }
                        }
                        // (An error after some was written: the next
                        // write meets it again.)
                        Err(_) if total > 0 => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(total)
            }
            None => SocketWriter(&*self.tcp).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
