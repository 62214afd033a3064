//! TLS on the same port and in the same loop: `rustls` is sans-I/O, like
//! the hub, so a TLS connection is the same non-blocking socket with a
//! `rustls::ServerConnection` between it and the readers and writers the
//! driver already has. `wss://` and `https://` (every HTTP route) are served
//! from the one port; the plaintext frame of a fan-out is still encoded
//! once, and each recipient's encryption is the one cost TLS adds.
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
use rustls::{ServerConfig, ServerConnection};

use super::sys::SocketWriter;

/// Ciphertext and plaintext rustls may hold for one connection before a
/// write is refused (the output queue keeps the rest): bounded memory for a
/// slow reader, whatever is queued for it.
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

/// One connection's TLS state (boxed in the connection: plain connections
/// pay one pointer for it).
pub struct Tls {
    conn: ServerConnection,
    /// The peer's TCP end was read: no more TLS records will come.
    eof: bool,
    /// The first bytes were looked at (a TLS record, or plain HTTP?).
    looked: bool,
    /// An error met after some plaintext was read: reported by the next
    /// read, so what was read is not lost.
    failed: Option<io::Error>,
}

impl Tls {
    pub fn new(config: Arc<ServerConfig>) -> io::Result<Box<Tls>> {
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(Box::new(Tls {
            conn,
            eof: false,
            looked: false,
            failed: None,
        }))
    }

    /// Ciphertext (handshake records, alerts, encrypted data) waiting for
    /// the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Write waiting ciphertext; `Ok(true)` once none is left.
    pub fn flush(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SocketWriter(tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Read plaintext: what rustls holds, then the socket's records
    /// (answering the handshake as it goes), until `buf` is full or the
    /// socket has nothing more. So, as with a plain socket, a short read
    /// means the socket is drained (the driver relies on it: the next data
    /// raises a new edge). `WouldBlock` when nothing at all came; `Ok(0)`
    /// at the end (close_notify, or the peer's FIN).
    pub fn read(&mut self, tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut got = 0;
        // An error after some plaintext: that first, the error next time.
        let fail = |this: &mut Tls, got: usize, e: io::Error| {
            if got > 0 {
                this.failed = Some(e);
                Ok(got)
            } else {
                Err(e)
            }
        };
        loop {
            match self.conn.reader().read(&mut buf[got..]) {
                Ok(0) if got < buf.len() => {
                    // close_notify: the end (the readers ask `ended`).
                    self.eof = true;
                    return Ok(got);
                }
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        return Ok(got);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP end without close_notify: the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.eof = true;
                    return Ok(got);
                }
                Err(e) => return fail(self, got, e),
            }
            if self.eof {
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
            match self.conn.read_tls(tcp) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Ok(got),
                Err(e) => return fail(self, got, e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Garbage, a bad handshake, a bad record: the alert goes
                // out (if the socket takes it), then the end.
                let _ = self.flush(tcp);
                return fail(self, got, io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake answers, key updates: out now if the socket takes
            // them, else with the next flush (WRITABLE is asked for).
            if let Err(e) = self.flush(tcp) {
                return fail(self, got, e);
            }
        }
    }

    /// Encrypt `buf` and send it, until all of it is sent or the socket is
    /// full (rustls keeps at most [`BUFFER_LIMIT`] of ciphertext). So, as
    /// with a plain socket, a short write means the socket is full (the
    /// driver waits for its WRITABLE edge). `WouldBlock` while earlier
    /// ciphertext is still waiting.
    fn write(&mut self, tcp: &TcpStream, buf: &[u8]) -> io::Result<usize> {
        if !self.flush(tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut sent = 0;
        while sent < buf.len() {
            let n = self.conn.writer().write(&buf[sent..])?;
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

    /// The peer ended the TLS stream (close_notify, or its TCP end): no
    /// more data will come, though no edge may announce it.
    pub fn ended(&self) -> bool {
        self.eof
    }

    /// Queue close_notify (sent by the next flush).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
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
