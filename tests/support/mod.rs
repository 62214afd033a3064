//! Shared end-to-end harness: starts the real `switchboard` binary on a free
//! loopback port and gives real WebSocket clients (tungstenite, blocking,
//! with read timeouts so a missing message fails the test instead of hanging).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running daemon; killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// What the server logged up to and including its "listening on" line.
    pub startup_log: Vec<String>,
}

impl Server {
    /// Start with extra flags (e.g. `&["--ping-interval", "0.2"]`).
    pub fn start(flags: &[&str]) -> Server {
        Self::start_with_fd_limit(flags, None)
    }

    /// Start with the open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_fd_limit(flags: &[&str], nofile: Option<u64>) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["--listen", "127.0.0.1:0", "--log-level", "info"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut startup_log = Vec::new();
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server printed its address");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                startup_log.push(line);
                break addr;
            }
            startup_log.push(line);
        };
        Server {
            child,
            addr,
            log: rx,
            startup_log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connect a WebSocket client to `path` (e.g. "/ws/lobby?user=ann").
    pub fn client(&self, path: &str) -> Client {
        Client::connect(self.addr, path)
    }

    /// Connect to a hub route and read the `welcome`.
    pub fn joined(&self, path: &str) -> Client {
        let mut c = self.client(path);
        let w = c.recv_json();
        assert_eq!(w["type"], "welcome", "{w}");
        if path.starts_with("/ws/") {
            let j = c.recv_json();
            assert_eq!(j["type"], "joined", "{j}");
        }
        c
    }

    /// A plain HTTP/1.1 request; returns (status, body).
    pub fn http(&self, request: &str) -> (u16, String) {
        parse_http(self.http_raw(request).as_bytes())
    }

    /// Send one request on a fresh connection; the whole response as text.
    pub fn http_raw(&self, request: &str) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        ))
    }

    /// A server API request (JSON body, `key` as the bearer token); the
    /// status and the body as JSON (`null` if it is not JSON).
    pub fn api(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, body) = self.http(&req);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn stats(&self) -> Value {
        self.stats_with_key(None)
    }

    /// `/stats`, with `Authorization: Bearer KEY` when a key is given.
    pub fn stats_with_key(&self, key: Option<&str>) -> Value {
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let (status, body) = self.http(&format!(
            "GET /stats HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
        ));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn wait_stats_with_key(
        &self,
        key: Option<&str>,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats_with_key(key);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Poll /stats until `pred` holds (the server's view catches up with the test).
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_stats_with_key(None, what, pred)
    }

    /// Send a signal and wait for the exit status (bounded).
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The upgrade request a browser would send, for raw-socket tests.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A raw TCP connection that has completed the upgrade (the 101 head read).
pub fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(upgrade_request(path).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101 response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Read everything until EOF (bounded by the read timeout).
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The close code in the first close frame of raw server output, if any.
pub fn close_code_in(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let (op, len7) = (bytes[i] & 0x0f, (bytes[i + 1] & 0x7f) as usize);
        let (hdr, len) = match len7 {
            126 => (4, u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(bytes[i + 2..i + 10].try_into().ok()?) as usize,
            ),
            n => (2, n),
        };
        if op == 0x8 {
            let code = bytes.get(i + hdr..i + hdr + 2)?;
            return (len >= 2).then(|| u16::from_be_bytes([code[0], code[1]]));
        }
        i += hdr + len;
    }
    None
}

/// A blocking WebSocket client with read timeouts.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

/// What a client saw when waiting for the connection to end.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Close(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::try_connect(addr, path).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr, path: &str) -> Result<Client, tungstenite::Error> {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tungstenite::client::client(url, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => unreachable!("blocking stream"),
        })?;
        Ok(Client { ws })
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    pub fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Send `msgs` as text frames in one write: the daemon reads them as one
    /// input (a burst, for room messages).
    pub fn send_in_one_write(&mut self, msgs: &[Value]) {
        let mut write = Vec::new();
        for m in msgs {
            write.extend(client_frame(0x1, m.to_string().as_bytes()));
        }
        self.ws.get_mut().write_all(&write).unwrap();
    }

    /// The next data message (pings are answered by tungstenite and skipped).
    pub fn recv(&mut self) -> Message {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(m) => return m,
                Err(e) => panic!("expected a message, got error {e}"),
            }
        }
    }

    /// The next text message, as raw text.
    pub fn recv_text(&mut self) -> String {
        match self.recv() {
            Message::Text(t) => t.as_str().to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub fn recv_json(&mut self) -> Value {
        let text = self.recv_text();
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("invalid JSON from server ({e}): {text}"))
    }

    /// The next message of this `type`, failing on anything else first.
    pub fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv_json();
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// Send `v` and expect an `error` with `code`.
    pub fn expect_error(&mut self, v: Value, code: &str) -> Value {
        self.send_json(v);
        let e = self.expect("error");
        assert_eq!(e["code"], code, "{e}");
        e
    }

    /// Round trip an application ping: everything sent before it has been processed.
    pub fn sync(&mut self) {
        self.send_json(serde_json::json!({"type": "ping", "ref": "sync"}));
        let p = self.expect("pong");
        assert_eq!(p["ref"], "sync");
    }

    /// Assert nothing arrives for `d` (used after a sync on another client).
    /// Protocol pings are answered and ignored.
    pub fn expect_silence(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                other => panic!("expected silence, got {other:?}"),
            }
        }
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    }

    /// Read until the connection ends; report the close code.
    pub fn ended(&mut self) -> Ended {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => {
                    return Ended::Close(u16::from(f.code), f.reason.as_str().to_string())
                }
                Ok(Message::Close(None)) => return Ended::Close(1005, String::new()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection did not end within {WAIT:?}")
                }
                Err(_) => return Ended::Dropped,
            }
        }
    }

    pub fn close_code(&mut self) -> u16 {
        match self.ended() {
            Ended::Close(code, _) => code,
            Ended::Dropped => panic!("connection dropped without a close frame"),
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
        while self.ws.read().is_ok() {}
    }
}

/// A loopback port free right now (for servers that must be restarted on
/// the same port, or share one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free loopback port, no persistence; killed on
/// drop. (The README's test command installs Debian's `redis-server`.)
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        // Two tests may be handed the same free port at once: the Redis
        // that loses the race exits, and its test tries another port.
        for _ in 0..5 {
            if let Some(redis) = Self::try_start(free_port(), &[]) {
                return redis;
            }
        }
        panic!("redis-server could not listen on a free port");
    }

    /// A Redis on `port` (a restarted one: same port, empty).
    pub fn start_on(port: u16) -> Redis {
        Self::start_with(port, &[])
    }

    /// A Redis on `port` with extra settings (e.g. `--requirepass`).
    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        Self::try_start(port, extra)
            .unwrap_or_else(|| panic!("redis-server could not listen on port {port}"))
    }

    /// Start one and wait until it answers on `port` as itself (its
    /// `process_id`), not another test's Redis that holds the port; `None`
    /// if it exited (the port was taken).
    fn try_start(port: u16, extra: &[&str]) -> Option<Redis> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/test.sh, which installs it)");
        let mine = format!("process_id:{}", child.id());
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_string());
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            let mut cli = Command::new("redis-cli");
            cli.args(["-p", &port.to_string()]);
            if let Some(pw) = &password {
                cli.env("REDISCLI_AUTH", pw);
            }
            let info = cli.args(["INFO", "server"]).output();
            if info.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&mine)) {
                return Some(Redis { child, port });
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Run a command with `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop it (SIGKILL) and wait.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails with what to run when the headless Chromium tools are missing.
pub fn need_browser_tools() {
    assert!(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/browser-tools/node_modules/playwright-core")
            .exists(),
        "run scripts/test.sh (it installs playwright-core and chromium)"
    );
}

/// Run `tests/interop/<script>` in Node against a daemon (started with
/// `flags`) on a fixed port, with the base URL and `args`, doing what it
/// asks on its stdout: KILL (kill, wait 2 s, start again on the same
/// port), STOP, CONT; each answered with a line on its stdin. Passes when
/// it prints OK and exits 0.
pub fn drive_node(script: &str, flags: &[&str], args: &[&str]) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["--listen", listen.as_str()];
    all.extend_from_slice(flags);
    let flags = all;
    let mut server = Server::start(&flags);
    let mut node = Command::new("node")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/interop/{script}")),
        )
        .arg(format!("http://{listen}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    // Drained as it comes, so a chatty script never fills the pipe.
    let stderr = node.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = node.kill();
            let _ = node.wait();
            panic!(
                "node said {seen:?}, then nothing\n{}",
                errors.join().unwrap_or_default()
            );
        };
        seen.push(line.clone());
        match line.as_str() {
            "KILL" => {
                server.signal_and_wait(libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(2000));
                server = Server::start(&flags);
            }
            "STOP" => unsafe {
                libc::kill(server.child.id() as i32, libc::SIGSTOP);
            },
            "CONT" => unsafe {
                libc::kill(server.child.id() as i32, libc::SIGCONT);
            },
            "OK" => break,
            _ => continue,
        }
        writeln!(stdin, "done").unwrap();
    }
    let status = node.wait().unwrap();
    assert!(
        status.success(),
        "{seen:?}\n{}",
        errors.join().unwrap_or_default()
    );
    drop(server);
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (made by the
/// test with rcgen), written to `dir` as `<name>.crt` and `<name>.key`.
pub fn tls_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls::pki_types::CertificateDer<'static>,
) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.der().clone())
}

/// A fresh directory for a test's files.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Join `room` with `since` (`(epoch, seq)`, if any) and return the
/// `joined`, past presence events.
pub fn join_since(c: &mut Client, room: &str, since: Option<&(String, u64)>) -> Value {
    let mut msg = serde_json::json!({"type": "join", "room": room});
    if let Some((epoch, seq)) = since {
        msg["since"] = serde_json::json!({"epoch": epoch, "seq": seq});
    }
    c.send_json(msg);
    loop {
        let v = c.recv_json();
        if v["type"] == "joined" {
            return v;
        }
        assert!(
            matches!(v["type"].as_str(), Some("user_joined" | "user_left")),
            "{v}"
        );
    }
}

/// The next room message, past presence events.
pub fn next_message(c: &mut Client) -> Value {
    loop {
        let m = c.recv_json();
        match m["type"].as_str() {
            Some("user_joined" | "user_left") => continue,
            _ => {
                assert_eq!(m["type"], "message", "{m}");
                return m;
            }
        }
    }
}

/// Drop the TCP connection without a close frame, like a lost network.
pub fn cut(c: Client) {
    let _ = c.ws.get_ref().shutdown(std::net::Shutdown::Both);
}

/// `POST /api/publish` of `data` to `room` on the daemon at `addr` (from
/// any thread), with the API key `key`; the call must succeed.
pub fn publish_at(addr: SocketAddr, key: &str, room: &str, data: Value) {
    let body = serde_json::json!({"room": room, "data": data}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let (status, r) = parse_http(&raw);
    assert_eq!(status, 200, "{r}");
}

/// A cluster node over the Redis at `url` with the API key `key`, waited
/// on until its shards are up.
pub fn cluster_node(url: &str, key: &str, extra: &[&str]) -> Server {
    let mut flags = vec!["--cluster", url, "--api-key", key];
    flags.extend_from_slice(extra);
    let server = Server::start(&flags);
    wait_cluster_up(&server, key);
    server
}

/// Until the node says its cluster is up.
pub fn wait_cluster_up(server: &Server, key: &str) {
    server.wait_stats_with_key(Some(key), "cluster up", |s| s["cluster"]["state"] == "up");
}

/// A publisher on a thread of its own: `total` messages `{"i": i}` to
/// `room`, sent by a client of the daemon at `ws` (user `pub`), every
/// `api_every`-th through the server API of the daemon at `api` instead,
/// with a 1 ms pause every `pause_every`. It ends once every message was
/// handled (a pong after the last).
pub fn spawn_publisher(
    ws: SocketAddr,
    api: SocketAddr,
    key: &'static str,
    room: &'static str,
    total: u64,
    api_every: u64,
    pause_every: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut p = Client::connect(ws, &format!("/ws/{room}?user=pub"));
        assert_eq!(p.expect("welcome")["user"], "pub");
        p.expect("joined");
        for i in 0..total {
            let data = serde_json::json!({"i": i});
            if i % api_every == api_every - 1 {
                publish_at(api, key, room, data);
            } else {
                p.send_json(serde_json::json!({"type": "message", "room": room, "data": data}));
            }
            if i % pause_every == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Everything sent was handled once the pong comes (the API's
        // messages reach this member too).
        p.send_json(serde_json::json!({"type": "ping"}));
        while p.recv_json()["type"] != "pong" {}
    })
}

/// Read `n` room messages, each the next `seq` after `place`, marking
/// each `data.i` in `seen` (a message seen twice fails).
pub fn read_on(c: &mut Client, place: &mut (String, u64), n: u64, seen: &mut [bool]) {
    for _ in 0..n {
        let m = next_message(c);
        let seq = m["seq"]
            .as_u64()
            .expect("messages of a room with history have a seq");
        assert_eq!(seq, place.1 + 1, "after {} came {m}", place.1);
        let i = m["data"]["i"].as_u64().unwrap() as usize;
        assert!(!seen[i], "message {i} arrived twice");
        seen[i] = true;
        place.1 = seq;
    }
}

/// Read `room` from `place` to message `seen.len()`, losing the
/// connection (no close frame) after a random 1 to `most` messages each
/// time and rejoining with `since` on `reconnect(cuts so far)`: every
/// rejoin must recover, in the same epoch. Returns how many cuts there were.
pub fn read_across_cuts(
    mut reader: Client,
    room: &str,
    place: &mut (String, u64),
    seen: &mut [bool],
    most: u64,
    mut random: u64,
    mut reconnect: impl FnMut(usize) -> Client,
) -> usize {
    let total = seen.len() as u64;
    let mut cuts = 0;
    loop {
        random = random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let take = (1 + (random >> 33) % most).min(total - place.1);
        read_on(&mut reader, place, take, seen);
        if place.1 == total {
            return cuts;
        }
        cut(reader);
        cuts += 1;
        reader = reconnect(cuts);
        let joined = join_since(&mut reader, room, Some(place));
        assert_eq!(joined["recovered"], true, "cut {cuts}: {joined}");
        assert_eq!(joined["epoch"].as_str(), Some(place.0.as_str()));
    }
}
