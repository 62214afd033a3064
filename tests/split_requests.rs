//! End-to-end: every kind of request the port serves gets the same answer
//! however its bytes are cut into TCP segments — whole, one byte at a time,
//! head then (after a pause) body, or at random points — and the daemon
//! survives each one. (A `POST /api/publish` whose body came in a later
//! segment than its head once panicked the request reader; these tests catch
//! that class of bug on every route family.)
//!
//! Each test runs its cases against one daemon and goes on after a failure
//! (restarting the daemon if it died), so a failing run lists every case and
//! way that failed, with the daemon's panic message when it died.

mod support;

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tungstenite::Message;

const API_KEY: &str = "split-key-0123456789abcdef";
/// Small limits keep the 413 and 431 cases short (the head limit's minimum
/// is 512; the body limit has none).
const MAX_HEAD: usize = 1024;
const MAX_BODY: usize = 1024;
/// A hub client in room `split` that receives what the API cases deliver.
const LISTENER: &str = "/ws/split?user=listener";
/// The pause after each byte when sending one byte at a time...
const BYTE_PAUSE: Duration = Duration::from_millis(1);
/// ...shortened for long requests so none takes much more than this.
const BYTEWISE_BUDGET: Duration = Duration::from_millis(400);
/// The pause between a head and its body.
const HEAD_PAUSE: Duration = Duration::from_millis(100);
/// Random splits per case, each with its own seed.
const RANDOM_SPLITS: u64 = 3;

fn flags() -> [String; 6] {
    [
        "--api-key".into(),
        API_KEY.into(),
        "--max-request-body".into(),
        MAX_BODY.to_string(),
        "--max-request-head".into(),
        MAX_HEAD.to_string(),
    ]
}

// ---------------------------------------------------------------- requests

/// One HTTP/1.1 request: `headers` (without CRLF), a `Content-Length` when
/// there is a body, and `Connection: close` when it is the `last` on its
/// connection (the others are kept alive).
fn request(method: &str, target: &str, headers: &[&str], body: &[u8], last: bool) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: split\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if last {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn bearer() -> String {
    format!("Authorization: Bearer {API_KEY}")
}

/// A `GET` with the API key.
fn get(path: &str, last: bool) -> Vec<u8> {
    request("GET", path, &[&bearer()], b"", last)
}

/// A `POST` of a JSON body with the API key.
fn post_json(path: &str, body: &str, last: bool) -> Vec<u8> {
    let headers = [bearer(), "Content-Type: application/json".into()];
    request(
        "POST",
        path,
        &headers.each_ref().map(String::as_str),
        body.as_bytes(),
        last,
    )
}

/// A binary publish: raw body, room in the query.
fn post_binary(room: &str, body: &[u8], last: bool) -> Vec<u8> {
    let headers = [bearer(), "Content-Type: application/octet-stream".into()];
    let target = format!("/api/publish?room={room}");
    request(
        "POST",
        &target,
        &headers.each_ref().map(String::as_str),
        body,
        last,
    )
}

/// Where each request head in `bytes` ends (just past its blank line),
/// skipping `Content-Length` bodies.
fn head_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 0;
    while let Some(end) = find(&bytes[pos..], b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[pos..pos + end]);
        let body = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        pos += end + 4;
        ends.push(pos);
        pos = (pos + body).min(bytes.len());
    }
    ends
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------- cases

/// How an answer is compared between ways.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Byte for byte (after taking out a `welcome`'s connection id).
    Exact,
    /// `/stats`: the counters and uptime change; compare the JSON keys.
    StatsJson,
    /// `/metrics`: the samples change; compare the metric families.
    Metrics,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// The status of each response, in order (101 for an upgrade).
    statuses: Vec<u16>,
    /// After a 101: server frames to read before sending our close.
    frames: usize,
    /// Messages the listener receives from one exchange.
    delivers: usize,
    shape: Shape,
}

impl Case {
    fn http(name: &str, bytes: Vec<u8>, statuses: &[u16]) -> Case {
        Case {
            name: name.into(),
            bytes,
            statuses: statuses.to_vec(),
            frames: 0,
            delivers: 0,
            shape: Shape::Exact,
        }
    }

    /// An upgrade followed by one masked client frame; `frames` server frames
    /// are expected before we close.
    fn upgrade(name: &str, path: &str, frame: Vec<u8>, frames: usize) -> Case {
        let mut bytes = upgrade_request(path).into_bytes();
        bytes.extend(frame);
        Case {
            frames,
            ..Case::http(name, bytes, &[101])
        }
    }

    fn delivering(self, delivers: usize) -> Case {
        Case { delivers, ..self }
    }

    fn shaped(self, shape: Shape) -> Case {
        Case { shape, ..self }
    }
}

// -------------------------------------------------------------------- ways

/// How the bytes of a case are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// One write.
    Whole,
    /// One write per byte (TCP_NODELAY), a short pause after each.
    Bytewise,
    /// Up to the end of each head, a pause, then the rest (a request with no
    /// body: cut in the middle of its head).
    HeadThenBody,
    /// Cut at 2–5 points from a PRNG seeded by the case and this seed.
    Random(u64),
}

impl fmt::Display for Way {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Way::Whole => write!(f, "whole"),
            Way::Bytewise => write!(f, "byte by byte"),
            Way::HeadThenBody => write!(f, "head, pause, body"),
            Way::Random(seed) => write!(f, "random split #{seed}"),
        }
    }
}

fn ways() -> impl Iterator<Item = Way> {
    [Way::Whole, Way::Bytewise, Way::HeadThenBody]
        .into_iter()
        .chain((1..=RANDOM_SPLITS).map(Way::Random))
}

impl Way {
    /// The writes: the end offset of each chunk and the pause after it.
    fn chunks(self, case: &Case) -> Vec<(usize, Duration)> {
        let len = case.bytes.len();
        let cuts_then_rest = |cuts: Vec<(usize, Duration)>| {
            let mut chunks: Vec<_> = cuts.into_iter().filter(|&(c, _)| c < len).collect();
            chunks.push((len, Duration::ZERO));
            chunks
        };
        match self {
            Way::Whole => vec![(len, Duration::ZERO)],
            Way::Bytewise => {
                let pause = BYTE_PAUSE.min(BYTEWISE_BUDGET / len as u32);
                (1..=len).map(|end| (end, pause)).collect()
            }
            Way::HeadThenBody => {
                let ends = head_ends(&case.bytes);
                let mut cuts: Vec<usize> = ends.iter().copied().filter(|&e| e < len).collect();
                if cuts.is_empty() {
                    cuts.push(ends.first().copied().unwrap_or(len) / 2);
                }
                cuts_then_rest(cuts.into_iter().map(|c| (c, HEAD_PAUSE)).collect())
            }
            Way::Random(seed) => {
                let mut rng = XorShift::new(fnv1a(case.name.as_bytes()) ^ seed);
                let mut cuts: Vec<usize> = (0..2 + rng.below(4))
                    .map(|_| 1 + rng.below(len - 1))
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                let pauses = cuts.iter().map(|&c| {
                    let pause = Duration::from_millis(1 + rng.below(15) as u64);
                    (c, pause)
                });
                cuts_then_rest(pauses.collect())
            }
        }
    }
}

/// xorshift64: small, deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` for picking cut points.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ----------------------------------------------------------------- answers

/// What came back, normalised for comparison: the statuses and a readable
/// line per status line, header, body and frame.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    statuses: Vec<u16>,
    lines: Vec<String>,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            write!(f, " (nothing)")?;
        }
        for line in &self.lines {
            write!(f, "\n      {line}")?;
        }
        Ok(())
    }
}

/// Send `case` the given way on a fresh connection and read the whole answer.
fn exchange(addr: SocketAddr, case: &Case, way: Way) -> Answer {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            return Answer {
                statuses: vec![],
                lines: vec![format!("connect failed: {e}")],
            }
        }
    };
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut start = 0;
    for (end, pause) in way.chunks(case) {
        // A refusal (400, 413, 431) may come before all is sent; the server
        // drains the rest, but stop writing if it has gone.
        if s.write_all(&case.bytes[start..end]).is_err() {
            break;
        }
        start = end;
        std::thread::sleep(pause);
    }
    let mut raw = Vec::new();
    if case.frames > 0 {
        read_until(&mut s, &mut raw, |raw| frames_after_101(raw) >= case.frames);
        let _ = s.write_all(&client_frame(0x8, &1000u16.to_be_bytes()));
    }
    raw.extend(read_all(&mut s));
    describe(&raw, case.shape)
}

/// Read into `raw` until `done(raw)`, EOF, an error or the read timeout.
fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut buf = [0u8; 4096];
    while !done(raw) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// Complete server frames after a `101` head (0 before or without one).
fn frames_after_101(raw: &[u8]) -> usize {
    // The 101 may follow keep-alive responses pipelined before it.
    let Some(at) = find(raw, b"HTTP/1.1 101 ") else {
        return 0;
    };
    match find(&raw[at..], b"\r\n\r\n") {
        Some(end) => server_frames(&raw[at + end + 4..]).0.len(),
        None => 0,
    }
}

/// A frame from the server.
struct Frame {
    /// FIN, RSV and opcode bits.
    first: u8,
    /// A server must not mask; the describer flags it.
    masked: bool,
    payload: Vec<u8>,
}

/// Parse server frames: each complete one, and how many bytes are left over.
fn server_frames(mut bytes: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    while let Some(&[first, second]) = bytes.get(..2) {
        let (mut hdr, len): (usize, usize) = match second & 0x7f {
            126 if bytes.len() >= 4 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
            127 if bytes.len() >= 10 => (
                10,
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            ),
            126 | 127 => break,
            n => (2, n as usize),
        };
        let masked = second & 0x80 != 0;
        if masked {
            hdr += 4;
        }
        let Some(payload) = bytes.get(hdr..hdr.saturating_add(len)) else {
            break;
        };
        frames.push(Frame {
            first,
            masked,
            payload: payload.to_vec(),
        });
        bytes = &bytes[hdr + len..];
    }
    (frames, bytes.len())
}

/// Turn the raw answer into comparable lines.
fn describe(raw: &[u8], shape: Shape) -> Answer {
    let mut answer = Answer {
        statuses: vec![],
        lines: vec![],
    };
    let mut rest = raw;
    while !rest.is_empty() {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            answer
                .lines
                .push(format!("incomplete head: {:?}", lossy(rest)));
            break;
        };
        let head = lossy(&rest[..end]);
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        answer.statuses.push(status);
        answer.lines.push(status_line.to_string());
        let mut body_len = 0;
        for header in lines {
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            if name.eq_ignore_ascii_case("content-length") {
                body_len = value.trim().parse().unwrap_or(0);
                if shape != Shape::Exact {
                    continue; // the body's length changes with its counters
                }
            }
            answer.lines.push(header.to_string());
        }
        if status == 101 {
            describe_frames(rest, &mut answer.lines);
            break;
        }
        let body = &rest[..body_len.min(rest.len())];
        rest = &rest[body.len()..];
        answer.lines.push(describe_body(body, shape));
        if body.len() < body_len {
            answer.lines.push(format!(
                "body cut short: {} of {body_len} bytes",
                body.len()
            ));
        }
    }
    answer
}

fn describe_body(body: &[u8], shape: Shape) -> String {
    let text = lossy(body);
    match shape {
        Shape::Exact => format!("body {:?}", blank_varying(&text)),
        Shape::StatsJson => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                format!("JSON with keys {keys:?}")
            }
            _ => format!("not a JSON object: {text:?}"),
        },
        Shape::Metrics => {
            let mut families: Vec<&str> =
                text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
            families.sort_unstable();
            format!("metric families {families:?}")
        }
    }
}

fn describe_frames(bytes: &[u8], lines: &mut Vec<String>) {
    let (frames, left) = server_frames(bytes);
    for Frame {
        first,
        masked,
        payload,
    } in frames
    {
        let flags = match (first & 0xf0, masked) {
            (0x80, false) => String::new(),
            (bits, masked) => format!("(flags {bits:#x}, masked {masked}) "),
        };
        lines.push(match first & 0x0f {
            0x1 => format!("{flags}text {}", blank_varying(&lossy(&payload))),
            0x2 => format!("{flags}binary {payload:?}"),
            0x8 => match payload.get(..2) {
                Some(&[a, b]) => format!(
                    "{flags}close {} {:?}",
                    u16::from_be_bytes([a, b]),
                    lossy(&payload[2..])
                ),
                _ => format!("{flags}close {payload:?}"),
            },
            op => format!("{flags}opcode {op:#x} {payload:?}"),
        });
    }
    if left > 0 {
        lines.push(format!("{left} bytes of an incomplete frame"));
    }
}

/// A `welcome` carries a per-connection id: blank it (the rest stays as sent).
/// `text` with what differs from run to run blanked: connection ids,
/// times (Unix ms) and the client's address.
fn blank_varying(text: &str) -> String {
    let mut out = text.to_string();
    for (key, quoted) in [
        ("connection_id", true),
        ("remote_addr", true),
        ("connected_at", false),
        ("last_seen", false),
        ("since", false),
    ] {
        let pattern = if quoted {
            format!(r#""{key}":""#)
        } else {
            format!(r#""{key}":"#)
        };
        let mut from = 0;
        while let Some(at) = out[from..].find(&pattern) {
            let start = from + at + pattern.len();
            let len = if quoted {
                out[start..].find('"')
            } else {
                out[start..].find(|c: char| !c.is_ascii_digit())
            }
            .unwrap_or(out.len() - start);
            out.replace_range(start..start + len, "<blanked>");
            from = start;
        }
    }
    out
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// --------------------------------------------------------------------- rig

/// One daemon (restarted if a case kills it) with a listener in room
/// `split`, and the failures so far.
struct Rig {
    server: Server,
    listener: Client,
    exchanges: usize,
    failures: Vec<String>,
}

impl Rig {
    fn start() -> Rig {
        let (server, listener) = Self::daemon();
        Rig {
            server,
            listener,
            exchanges: 0,
            failures: vec![],
        }
    }

    fn daemon() -> (Server, Client) {
        let flags = flags();
        let server = Server::start(&flags.each_ref().map(String::as_str));
        let listener = server.joined(LISTENER);
        (server, listener)
    }

    fn restart(&mut self) {
        (self.server, self.listener) = Self::daemon();
    }

    /// Every way for every case; then fail with the full list, if any.
    fn run(cases: Vec<Case>) {
        let started = Instant::now();
        let mut rig = Rig::start();
        for case in &cases {
            rig.check(case);
        }
        assert!(
            rig.failures.is_empty(),
            "{} of {} exchanges failed ({:.1?}):\n\n{}",
            rig.failures.len(),
            rig.exchanges,
            started.elapsed(),
            rig.failures.join("\n\n")
        );
    }

    /// Send `case` every way: the daemon must live, each answer must have the
    /// expected statuses and match the whole write's, and the listener must
    /// get the same messages.
    fn check(&mut self, case: &Case) {
        let mut whole: Option<Answer> = None;
        for way in ways() {
            self.exchanges += 1;
            let mut answer = exchange(self.server.addr, case, way);
            if let Some(death) = self.death() {
                self.failures.push(format!(
                    "{} — {way}: the daemon died: {death}\n    answer:{answer}",
                    case.name
                ));
                self.restart();
                continue;
            }
            match self.listener_got(case.delivers) {
                Ok(lines) => answer.lines.extend(lines),
                Err(e) => {
                    self.failures
                        .push(format!("{} — {way}: listener: {e}", case.name));
                    self.restart();
                    continue;
                }
            }
            if answer.statuses != case.statuses {
                self.failures.push(format!(
                    "{} — {way}: statuses {:?}, expected {:?}; answer:{answer}",
                    case.name, answer.statuses, case.statuses
                ));
            } else if let Some(whole) = whole.as_ref().filter(|w| **w != answer) {
                self.failures.push(format!(
                    "{} — {way}: answered differently\n    whole:{whole}\n    {way}:{answer}",
                    case.name
                ));
            }
            if way == Way::Whole {
                whole = Some(answer);
            }
        }
    }

    /// `None` while the daemon answers `GET /healthz` with 200; otherwise
    /// what happened to it (exit status and panic message).
    fn death(&mut self) -> Option<String> {
        if let Some(status) = self.server.child.try_wait().unwrap() {
            return Some(self.obituary(status));
        }
        let health = healthz(self.server.addr);
        if health == Ok(200) {
            return None;
        }
        // Its sockets close a moment before its exit status is ready.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Some(status) = self.server.child.try_wait().unwrap() {
                return Some(self.obituary(status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(format!(
            "GET /healthz gave {health:?} and the process is still running"
        ))
    }

    /// The exit status and the panic lines of the daemon's log.
    fn obituary(&self, status: ExitStatus) -> String {
        let mut log = Vec::new();
        while let Ok(line) = self.server.log.recv_timeout(Duration::from_secs(1)) {
            log.push(line);
        }
        let panic: Vec<String> = log
            .into_iter()
            .skip_while(|l| !l.contains("panicked"))
            .take(2)
            .collect();
        if panic.is_empty() {
            format!("{status}, no panic in its log")
        } else {
            format!("{status}: {}", panic.join(" "))
        }
    }

    /// The `n` messages the listener got, then nothing more before a ping's pong.
    fn listener_got(&mut self, n: usize) -> Result<Vec<String>, String> {
        let ws = &mut self.listener.ws;
        let got = (0..n)
            .map(|_| next_message(ws))
            .collect::<Result<Vec<_>, _>>()?;
        let sync = r#"{"type":"ping","ref":"sync"}"#;
        ws.send(Message::text(sync)).map_err(|e| e.to_string())?;
        let after = next_message(ws)?;
        if after != r#"listener got text {"type":"pong","ref":"sync"}"# {
            return Err(format!("expected {n} message(s), then got {after}"));
        }
        Ok(got)
    }
}

/// The listener's next data message, described.
fn next_message(ws: &mut tungstenite::WebSocket<TcpStream>) -> Result<String, String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(format!("listener got text {}", t.as_str())),
            Ok(Message::Binary(b)) => return Ok(format!("listener got binary {:?}", &b[..])),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(c)) => return Err(format!("closed: {c:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The status of a fresh `GET /healthz`.
fn healthz(addr: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    match parse_http(&read_all(&mut s)) {
        (200, body) if body == "ok\n" => Ok(200),
        (status, body) => Err(format!("{status} {body:?}")),
    }
}

// ------------------------------------------------------------------- tests

#[test]
fn plain_routes_answer_the_same_whole_bytewise_and_split() {
    Rig::run(vec![
        Case::http("GET /healthz", get("/healthz", true), &[200]),
        Case::http("GET /stats", get("/stats", true), &[200]).shaped(Shape::StatsJson),
        Case::http("GET /metrics", get("/metrics", true), &[200]).shaped(Shape::Metrics),
    ]);
}

#[test]
fn api_endpoints_answer_the_same_whole_bytewise_and_split() {
    let largest = {
        let frame = r#"{"room":"split","data":""}"#;
        let pad = "x".repeat(MAX_BODY - frame.len());
        format!(r#"{{"room":"split","data":"{pad}"}}"#)
    };
    assert_eq!(largest.len(), MAX_BODY);
    let batch = r#"{"ops":[{"op":"publish","room":"split","data":1},{"op":"send","user":"listener","data":2},{"op":"fly"}]}"#;
    Rig::run(vec![
        Case::http(
            "POST /api/publish (JSON)",
            post_json(
                "/api/publish",
                r#"{"room":"split","data":{"text":"hello, split"}}"#,
                true,
            ),
            &[200],
        )
        .delivering(1),
        Case::http(
            "POST /api/publish (binary)",
            post_binary("split", b"\x00\x01\xff\r\n\r\nbinary", true),
            &[200],
        )
        .delivering(1),
        Case::http(
            "POST /api/publish (body of exactly --max-request-body)",
            post_json("/api/publish", &largest, true),
            &[200],
        )
        .delivering(1),
        Case::http(
            "POST /api/send",
            post_json("/api/send", r#"{"user":"listener","data":"psst"}"#, true),
            &[200],
        )
        .delivering(1),
        Case::http(
            "POST /api/broadcast",
            post_json("/api/broadcast", r#"{"data":"everyone"}"#, true),
            &[200],
        )
        .delivering(1),
        Case::http(
            "POST /api/disconnect",
            post_json(
                "/api/disconnect",
                r#"{"user":"nobody","code":4009,"reason":"bye"}"#,
                true,
            ),
            &[200],
        ),
        Case::http(
            "POST /api/batch",
            post_json("/api/batch", batch, true),
            &[200],
        )
        .delivering(2),
        Case::http("GET /api/rooms", get("/api/rooms", true), &[200]),
        Case::http(
            "GET /api/rooms/<room>",
            get("/api/rooms/split", true),
            &[200],
        ),
        Case::http(
            "GET /api/users/<id>",
            get("/api/users/listener", true),
            &[200],
        ),
    ]);
}

#[test]
fn refusals_answer_the_same_whole_bytewise_and_split() {
    let with_tail = |mut bytes: Vec<u8>, tail: &[u8]| {
        bytes.extend_from_slice(tail);
        bytes
    };
    let key = bearer();
    let pad = format!("X-Pad: {}", "p".repeat(MAX_HEAD));
    Rig::run(vec![
        Case::http(
            "400 malformed head",
            b"GET /healthz HTTP/1.1\r\nHost split\r\nConnection: close\r\n\r\n".to_vec(),
            &[400],
        ),
        Case::http(
            "400 invalid Content-Length",
            with_tail(
                request(
                    "POST",
                    "/api/publish",
                    &[&key, "Content-Length: lots"],
                    b"",
                    true,
                ),
                br#"{"room":"split","data":1}"#,
            ),
            &[400],
        ),
        Case::http(
            "400 API body not JSON",
            post_json("/api/publish", "{nope", true),
            &[400],
        ),
        Case::http(
            "401 API without the key",
            request(
                "POST",
                "/api/publish",
                &[],
                br#"{"room":"split","data":1}"#,
                true,
            ),
            &[401],
        ),
        Case::http("404 unknown path", get("/nope", true), &[404]),
        Case::http(
            "404 unknown API endpoint",
            get("/api/nothing", true),
            &[404],
        ),
        Case::http(
            "405 POST with a body to /healthz",
            request("POST", "/healthz", &[], b"hello", true),
            &[405],
        ),
        Case::http(
            "405 DELETE /api/publish",
            request("DELETE", "/api/publish", &[&key], b"", true),
            &[405],
        ),
        Case::http(
            "411 chunked body",
            with_tail(
                request(
                    "POST",
                    "/api/publish",
                    &[&key, "Transfer-Encoding: chunked"],
                    b"",
                    true,
                ),
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            &[411],
        ),
        Case::http(
            "413 body over --max-request-body",
            with_tail(
                request(
                    "POST",
                    "/api/publish",
                    &[&key, &format!("Content-Length: {}", MAX_BODY + 1)],
                    b"",
                    true,
                ),
                &[b'x'; 100],
            ),
            &[413],
        ),
        Case::http(
            "426 plain GET to a WebSocket route",
            get("/ws/split", true),
            &[426],
        ),
        Case::http(
            "431 head over --max-request-head",
            request("GET", "/healthz", &[&pad], b"", true),
            &[431],
        ),
    ]);
}

#[test]
fn websocket_upgrades_answer_the_same_whole_bytewise_and_split() {
    Rig::run(vec![
        // welcome, joined, then the pong to our ping.
        Case::upgrade(
            "upgrade /ws/<room> then a ping",
            "/ws/wsroom?user=wsuser",
            client_frame(0x1, br#"{"type":"ping","ref":"split"}"#),
            3,
        ),
        Case::upgrade(
            "upgrade /echo then a text frame",
            "/echo",
            client_frame(0x1, "split écho".as_bytes()),
            1,
        ),
        Case::upgrade(
            "upgrade /echo then a binary frame",
            "/echo",
            client_frame(0x2, b"\x00\r\n\r\n\xff"),
            1,
        ),
    ]);
}

#[test]
fn pipelined_keep_alive_requests_answer_the_same_whole_bytewise_and_split() {
    Rig::run(vec![
        Case::http(
            "two pipelined: publish, healthz",
            [
                post_json("/api/publish", r#"{"room":"split","data":"one"}"#, false),
                get("/healthz", true),
            ]
            .concat(),
            &[200, 200],
        )
        .delivering(1),
        Case::http(
            "three pipelined: send, binary publish, user view",
            [
                post_json("/api/send", r#"{"user":"listener","data":"two"}"#, false),
                post_binary("split", b"\x03\x02\x01", false),
                get("/api/users/listener", true),
            ]
            .concat(),
            &[200, 200, 200],
        )
        .delivering(2),
        Case::http(
            "three pipelined: healthz, batch, rooms view",
            [
                get("/healthz", false),
                post_json(
                    "/api/batch",
                    r#"{"ops":[{"op":"broadcast","data":3}]}"#,
                    false,
                ),
                get("/api/rooms", true),
            ]
            .concat(),
            &[200, 200, 200],
        )
        .delivering(1),
        Case {
            frames: 1,
            ..Case::http(
                "pipelined: healthz, then an upgrade to /echo and a frame",
                [
                    get("/healthz", false),
                    upgrade_request("/echo").into_bytes(),
                    client_frame(0x1, b"after keep-alive"),
                ]
                .concat(),
                &[200, 101],
            )
        },
    ]);
}
