//! `--tls-ca FILE`: connections speak TLS (`wss://`), trusting the
//! certificate(s) in FILE, with the server name `localhost`. The same
//! non-blocking sockets, a `rustls::ClientConnection` between them and the
//! tool's buffers.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The client settings: the CA file's certificates trusted, TLS 1.3 and
/// 1.2, ALPN `http/1.1`.
pub(crate) fn config(ca: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--tls-ca {ca}: {e}"))? {
        let cert = cert.map_err(|e| format!("--tls-ca {ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("--tls-ca {ca}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn connection(config: &Arc<ClientConfig>) -> io::Result<Box<ClientConnection>> {
    let name = ServerName::try_from("localhost").expect("a valid name");
    ClientConnection::new(config.clone(), name)
        .map(Box::new)
        .map_err(io::Error::other)
}

/// Plaintext from the connection: what rustls holds, else records from the
/// socket (answering the handshake). `WouldBlock` when there is none;
/// `Ok(0)` at the end.
pub(crate) fn read(
    sock: &mut TcpStream,
    tls: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if tls.read_tls(sock)? == 0 {
            // The end: what rustls still holds was read above.
            return Ok(0);
        }
        tls.process_new_packets().map_err(io::Error::other)?;
        flush(sock, tls)?;
    }
}

/// Encrypt `buf` and send what the socket takes; `WouldBlock` while
/// earlier records still wait.
pub(crate) fn write(
    sock: &mut TcpStream,
    tls: &mut ClientConnection,
    buf: &[u8],
) -> io::Result<usize> {
    if !flush(sock, tls)? {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = tls.writer().write(buf)?;
    flush(sock, tls)?;
    if n == 0 && !buf.is_empty() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(n)
}

/// Send waiting records; `Ok(true)` when none is left.
pub(crate) fn flush(sock: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
