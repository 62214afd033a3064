//! TLS on the one port (`--tls-cert`, `--tls-key`): `wss://` and `https://`
//! with real rustls clients and a certificate made by the test (rcgen);
//! bad files refused at start; garbage, plain HTTP and a stalled handshake
//! on the TLS port; the certificate reloaded on SIGHUP under traffic.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use support::Server;
use tungstenite::{Message, WebSocket};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    support::tls_certificate(dir, name)
}

fn temp_dir(tag: &str) -> PathBuf {
    support::temp_dir(&format!("tls-{tag}"))
}

fn client_config(
    trusted: &CertificateDer<'static>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to the daemon (handshake done).
fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(support::WAIT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn wss(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> WebSocket<TlsStream> {
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _) = tungstenite::client::client(url, stream).expect("WebSocket over TLS");
    ws
}

fn recv_json(ws: &mut WebSocket<TlsStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next message of this type (presence events that are not asked
/// for are skipped).
fn expect(ws: &mut WebSocket<TlsStream>, ty: &str) -> Value {
    loop {
        let v = recv_json(ws);
        if v["type"] != ty && matches!(v["type"].as_str(), Some("user_joined" | "user_left")) {
            continue;
        }
        assert_eq!(v["type"], ty, "{v}");
        return v;
    }
}

fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> (String, Option<Vec<u8>>) {
    let mut s = tls_connect(addr, config).expect("TLS handshake");
    let alpn = s.conn.alpn_protocol().map(<[u8]>::to_vec);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // Ok, not UnexpectedEof: the server ends with close_notify.
    s.read_to_end(&mut raw).expect("a clean TLS end");
    (String::from_utf8_lossy(&raw).into_owned(), alpn)
}

fn tls_server(cert: &Path, key: &Path, extra: &[&str]) -> Server {
    let mut flags = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

#[test]
fn wss_and_https_share_the_port_over_tls_1_2_and_1_3() {
    let dir = temp_dir("both");
    let (cert, key, der) = certificate(&dir, "a");
    let server = tls_server(&cert, &key, &[]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(&der, Some(version));
        let mut ann = wss(server.addr, config.clone(), "/ws/lobby?user=ann");
        assert_eq!(expect(&mut ann, "welcome")["user"], "ann");
        expect(&mut ann, "joined");
        let mut bob = wss(server.addr, config.clone(), "/ws/lobby?user=bob");
        expect(&mut bob, "welcome");
        expect(&mut bob, "joined");
        assert_eq!(expect(&mut ann, "user_joined")["user"], "bob");
        let big = "x".repeat(60_000); // several TLS records (16 KB each)
        bob.send(Message::text(
            json!({"type": "message", "room": "lobby", "data": big}).to_string(),
        ))
        .unwrap();
        bob.send(Message::text(
            json!({"type": "message", "room": "lobby", "data": "small"}).to_string(),
        ))
        .unwrap();
        assert_eq!(
            expect(&mut ann, "message")["data"],
            big,
            "a message of many records"
        );
        assert_eq!(expect(&mut ann, "message")["data"], "small");
        let (response, alpn) = https_get(server.addr, config, "/healthz");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok\n"), "{response}");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        ann.close(None).unwrap();
        let _ = ann.flush();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn run(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_files_are_refused_at_start_naming_the_file() {
    let dir = temp_dir("bad");
    let (cert, key, _) = certificate(&dir, "a");
    let missing = dir.join("missing.crt");
    let garbage = dir.join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let listen = "127.0.0.1:0";
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            "missing.crt",
        ),
        (
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                garbage.to_str().unwrap(),
            ],
            "garbage.key",
        ),
        (
            &[
                "--tls-cert",
                key.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            "no PEM",
        ),
        (&["--tls-cert", cert.to_str().unwrap()], "--tls-key"),
    ];
    for (flags, named) in cases {
        for check in [false, true] {
            let mut args = vec!["--listen", listen];
            if check {
                args.push("--check-config");
            }
            args.extend_from_slice(flags);
            let (code, err) = run(&args);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains(named), "{named} not in: {err}");
            assert!(
                !err.contains("not base64 at all"),
                "a key file's content was shown: {err}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbage_plain_http_and_a_stalled_handshake_are_closed_and_others_are_served() {
    let dir = temp_dir("hostile");
    let (cert, key, der) = certificate(&dir, "a");
    let server = tls_server(&cert, &key, &["--handshake-timeout", "0.5"]);
    let config = client_config(&der, None);
    // Plain HTTP on the TLS port: told so, then closed.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(support::WAIT)).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("TLS"), "{text}");
    // Garbage instead of a ClientHello: closed (an alert at most).
    let mut junk = TcpStream::connect(server.addr).unwrap();
    junk.set_read_timeout(Some(support::WAIT)).unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xfe])
        .unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    let _ = junk.read_to_end(&mut raw);
    // Closed at once (rustls sends an alert when it has one for the error).
    assert!(
        raw.is_empty() || raw[0] == 0x15,
        "at most a TLS alert: {raw:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "at once, not at the deadline"
    );
    // A handshake that stalls half-way: dropped at the deadline.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.set_read_timeout(Some(support::WAIT)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    let _ = stalled.read_to_end(&mut raw);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // A client the server cannot serve (ALPN h2 only) is refused.
    let mut h2_only = (*client_config(&der, None)).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    assert!(tls_connect(server.addr, Arc::new(h2_only)).is_err());
    // Meanwhile and after, TLS clients are served.
    let mut ann = wss(server.addr, config.clone(), "/ws?user=ann");
    expect(&mut ann, "welcome");
    let (response, _) = https_get(server.addr, config, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_a_connection() {
    let dir = temp_dir("reload");
    let (cert, key, first) = certificate(&dir, "live");
    let mut server = tls_server(&cert, &key, &[]);
    let old = client_config(&first, None);
    let mut ann = wss(server.addr, old.clone(), "/ws/r?user=ann");
    expect(&mut ann, "welcome");
    expect(&mut ann, "joined");
    let mut bob = wss(server.addr, old.clone(), "/ws/r?user=bob");
    expect(&mut bob, "welcome");
    expect(&mut bob, "joined");
    expect(&mut ann, "user_joined");
    // A new certificate in the same files, then SIGHUP, while bob talks.
    let (_, _, second) = certificate(&dir, "next");
    std::fs::copy(dir.join("next.crt"), &cert).unwrap();
    std::fs::copy(dir.join("next.key"), &key).unwrap();
    for i in 0..50 {
        if i == 25 {
            unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
        }
        bob.send(Message::text(
            json!({"type": "message", "room": "r", "data": i}).to_string(),
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(4));
    }
    for i in 0..50 {
        assert_eq!(
            expect(&mut ann, "message")["data"],
            i,
            "the open connection goes on"
        );
    }
    // New handshakes get the new certificate; the old one is refused.
    let deadline = Instant::now() + support::WAIT;
    while tls_connect(server.addr, client_config(&second, None)).is_err() {
        assert!(Instant::now() < deadline, "the new certificate never came");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        tls_connect(server.addr, old).is_err(),
        "the old certificate still served"
    );
    // A bad new file: logged, and the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + support::WAIT;
    loop {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line about the reload");
        if line.contains("not reloaded") {
            assert!(line.contains("live.crt"), "{line}");
            break;
        }
    }
    let mut carl = wss(server.addr, client_config(&second, None), "/ws/r?user=carl");
    expect(&mut carl, "welcome");
    bob.send(Message::text(
        json!({"type": "message", "room": "r", "data": "still"}).to_string(),
    ))
    .unwrap();
    assert_eq!(expect(&mut ann, "message")["data"], "still");
    server.signal_and_wait(libc::SIGTERM);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_that_only_listens_gets_every_message_big_and_small() {
    let dir = temp_dir("listen");
    let (cert, key, der) = certificate(&dir, "a");
    let server = tls_server(&cert, &key, &[]);
    let config = client_config(&der, None);
    // Ann never writes: nothing she sends can wake her connection up.
    let mut ann = wss(server.addr, config.clone(), "/ws/r?user=ann");
    expect(&mut ann, "welcome");
    expect(&mut ann, "joined");
    let mut bob = wss(server.addr, config, "/ws/r?user=bob");
    expect(&mut bob, "welcome");
    expect(&mut bob, "joined");
    let big = "y".repeat(20_000);
    for i in 0..40 {
        let data = if i % 2 == 0 {
            json!(i)
        } else {
            json!(format!("{i}{big}"))
        };
        bob.send(Message::text(
            json!({"type": "message", "room": "r", "data": data}).to_string(),
        ))
        .unwrap();
    }
    for i in 0..40 {
        let m = expect(&mut ann, "message");
        match i % 2 {
            0 => assert_eq!(m["data"], i),
            _ => assert_eq!(
                m["data"].as_str().map(str::len),
                Some(20_000 + i.to_string().len())
            ),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_tls_reader_that_never_reads_is_closed_as_a_slow_consumer() {
    let dir = temp_dir("slow");
    let (cert, key, der) = certificate(&dir, "a");
    let server = tls_server(&cert, &key, &["--max-output-queue", "262144"]);
    let config = client_config(&der, None);
    let mut ann = wss(server.addr, config.clone(), "/ws/r?user=ann");
    expect(&mut ann, "welcome");
    expect(&mut ann, "joined");
    let mut bob = wss(server.addr, config.clone(), "/ws/r?user=bob");
    expect(&mut bob, "welcome");
    expect(&mut bob, "joined");
    // Ann stops reading; bob sends far more than her queue and the
    // sockets' buffers hold.
    let chunk = "z".repeat(60_000);
    let mut closed = false;
    for _ in 0..400 {
        bob.send(Message::text(
            json!({"type": "message", "room": "r", "data": chunk}).to_string(),
        ))
        .unwrap();
        let (stats, _) = https_get(server.addr, config.clone(), "/stats");
        if stats.contains("\"slow_consumer_closes\":1") {
            closed = true;
            break;
        }
    }
    assert!(closed, "the reader that never reads was not closed");
    // Bob, who reads, is still served.
    bob.send(Message::text(json!({"type": "ping", "ref": 1}).to_string()))
        .unwrap();
    assert_eq!(expect(&mut bob, "pong")["ref"], 1);
    drop(ann);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_bytes_before_and_after_the_handshake_never_stop_the_daemon() {
    let dir = temp_dir("hostile-many");
    let (cert, key, der) = certificate(&dir, "a");
    let server = tls_server(&cert, &key, &[]);
    let config = client_config(&der, None);
    let mut random = 0x853c_49e6_748f_ea9b_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    for i in 0..240 {
        let len = (next() % 400) as usize;
        let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let record_type = [20u8, 21, 22, 23, 24][(next() % 5) as usize];
        let result = match i % 3 {
            // Garbage, or a handshake record header and garbage, instead of a ClientHello.
            0 => TcpStream::connect(server.addr).and_then(|mut s| s.write_all(&garbage)),
            1 => TcpStream::connect(server.addr).and_then(|mut s| {
                s.write_all(&[22, 3, (next() % 5) as u8])?;
                s.write_all(&garbage)
            }),
            // A good handshake, then garbage or a bad record on the wire.
            _ => tls_connect(server.addr, config.clone()).and_then(|mut s| {
                s.write_all(b"GET /heal")?;
                s.flush()?;
                s.sock.write_all(&[record_type, 3, 3])?;
                s.sock.write_all(&garbage)
            }),
        };
        drop(result);
    }
    let (response, _) = https_get(server.addr, config, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    std::fs::remove_dir_all(&dir).unwrap();
}
