//! End-to-end: limits, heartbeats, bad input, HTTP routes and shutdown.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::*;
use tungstenite::Message;

#[test]
fn connections_per_user_capped_with_1008() {
    let server = Server::start(&["--max-connections-per-user", "2"]);
    let _a = server.joined("/ws?user=u");
    let b = server.joined("/ws?user=u");
    let mut c = server.client("/ws?user=u");
    assert_eq!(
        c.ended(),
        Ended::Close(1008, "Connection limit reached".into())
    );
    let _other = server.joined("/ws?user=v");
    b.close();
    server.wait_stats("one closed", |s| s["connections_by_user"]["u"] == 1);
    let _d = server.joined("/ws?user=u");
    let s = server.stats();
    assert_eq!(s["connections_by_user"]["u"], 2);
}

#[test]
fn total_connections_refused_with_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let _a = server.joined("/ws");
    let _b = server.joined("/ws");
    match Client::try_connect(server.addr, "/ws") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn rooms_per_connection_capped() {
    let server = Server::start(&["--max-rooms-per-connection", "2"]);
    let mut c = server.joined("/ws");
    for r in ["a", "b"] {
        c.send_json(json!({"type":"join","room":r}));
        c.expect("joined");
    }
    c.expect_error(json!({"type":"join","room":"c"}), "too_many_rooms");
    c.sync();
}

#[test]
fn room_name_and_user_id_length() {
    let server = Server::start(&["--max-room-name-len", "8", "--max-user-id-len", "4"]);
    let mut c = server.joined("/ws");
    c.expect_error(
        json!({"type":"join","room":"123456789"}),
        "room_name_too_long",
    );
    c.expect_error(json!({"type":"join","room":""}), "bad_message");
    match Client::try_connect(server.addr, "/ws/123456789") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    for path in [
        "/ws?user=toolong",
        "/ws?user=anon-1",
        "/ws?user=",
        "/ws?user=%zz",
    ] {
        match Client::try_connect(server.addr, path) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400, "{path}"),
            other => panic!("{path}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
    c.sync();
}

#[test]
fn oversized_message_closes_1009_others_unaffected() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let mut ok = server.joined("/ws/r?user=ok");
    let mut big = server.joined("/ws/r?user=big");
    ok.expect("user_joined");
    let data = "x".repeat(2000);
    big.send_json(json!({"type":"message","room":"r","data":data}));
    assert_eq!(big.close_code(), 1009);
    assert_eq!(ok.expect("user_left")["user"], "big");
    ok.sync();
}

#[test]
fn slow_consumer_closed_with_4101() {
    let server = Server::start(&["--max-output-queue", "65536"]);
    let mut fast = server.joined("/ws/r?user=fast");
    // The slow client never reads after joining.
    let slow = server.joined("/ws/r?user=slow");
    fast.expect("user_joined");
    let data = "y".repeat(8000);
    let mut closed = false;
    for _ in 0..2000 {
        fast.send_json(json!({"type":"message","room":"r","data":data}));
        let s = server.stats();
        if s["slow_consumer_closes"] == 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "slow consumer was not closed");
    assert_eq!(fast.expect("user_left")["user"], "slow");
    fast.sync();
    let mut slow = slow;
    slow.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(slow.ended(), Ended::Close(4101, "slow consumer".into()));
}

/// Small room messages sent in one write reach the room as one burst; a
/// member that burst finds over its cap is closed with 4101 at once, not
/// whenever the hub next has something else to do (the sender is quiet
/// after, and the heartbeat is 30 s away).
#[test]
fn a_slow_consumer_found_by_a_burst_is_closed_at_once() {
    let cap = 65536;
    let server = Server::start(&["--max-output-queue", &cap.to_string(), "--rate-limit", "0"]);
    let mut fast = server.joined("/ws/r?user=fast");
    // The slow client never reads after joining.
    let slow = server.joined("/ws/r?user=slow");
    fast.expect("user_joined");
    let data = "y".repeat(1500);
    let batch = vec![json!({"type":"message","room":"r","data":data}); 16];
    let mut over = false;
    for _ in 0..2000 {
        fast.send_in_one_write(&batch);
        if over {
            // The queue was over the cap before this burst: it is refused,
            // and the member closed now.
            server.wait_stats("slow consumer closed", |s| s["slow_consumer_closes"] == 1);
            let mut slow = slow;
            slow.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
            assert_eq!(slow.ended(), Ended::Close(4101, "slow consumer".into()));
            assert_eq!(fast.expect("user_left")["user"], "slow");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
        let s = server.stats();
        assert_eq!(
            s["slow_consumer_closes"], 0,
            "closed before its queue was over the cap"
        );
        over = s["queued_bytes"].as_u64().unwrap() >= cap;
    }
    panic!("the slow member's queue never went over the cap");
}

#[test]
fn one_allowed_message_bigger_than_the_output_queue_is_delivered() {
    // The output queue holds 1 MiB (the default); /echo allows 4 MiB and the
    // hub 2 MiB. A prompt reader gets each whole message, one after another,
    // and is never called a slow consumer: a frame is always taken onto an
    // empty queue.
    let server = Server::start(&[
        "--echo-max-message-size",
        "4194304",
        "--max-message-size",
        "2097152",
    ]);
    let mut echo = server.client("/echo");
    for i in 0..3u8 {
        let big = vec![b'a' + i; 3 << 20];
        echo.ws.send(Message::binary(big.clone())).unwrap();
        match echo.recv() {
            Message::Binary(back) => assert!(back[..] == big[..], "echo {i} differs"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    let mut sender = server.joined("/ws/big?user=sender");
    let mut reader = server.joined("/ws/big?user=reader");
    sender.expect("user_joined");
    let data = "z".repeat(1536 * 1024);
    for _ in 0..2 {
        sender.send_json(json!({"type":"message","room":"big","data":data}));
        let m = reader.expect("message");
        assert_eq!(m["data"].as_str().map(str::len), Some(data.len()));
    }
    assert_eq!(server.stats()["slow_consumer_closes"], 0);
    reader.sync();
    reader.close();
    assert_eq!(sender.expect("user_left")["user"], "reader");
    // A member that never reads such frames is still a slow consumer.
    let idle = server.joined("/ws/big?user=idle");
    sender.expect("user_joined");
    let deadline = std::time::Instant::now() + WAIT;
    while server.stats()["slow_consumer_closes"] == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a reader that never reads 1.5 MiB frames was never closed"
        );
        sender.send_json(json!({"type":"message","room":"big","data":data}));
    }
    assert_eq!(sender.expect("user_left")["user"], "idle");
    drop(idle);
}

#[test]
fn heartbeat_pings_then_closes_silent_client_4100() {
    let server = Server::start(&["--ping-interval", "0.2", "--ping-timeout", "0.2"]);
    let mut watcher = server.joined("/ws/r?user=watcher");
    // A raw client that completes the handshake and then never answers anything.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(
        b"GET /ws/r?user=mute HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    assert_eq!(watcher.expect("user_joined")["user"], "mute");
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = raw.read_to_end(&mut got);
        got
    });
    // Reading keeps the watcher alive: tungstenite answers the server's pings.
    assert_eq!(watcher.expect("user_left")["user"], "mute");
    let got = reader.join().unwrap();
    let ping = [0x89u8, 0x00];
    assert!(
        got.windows(2).any(|w| w == ping),
        "a protocol ping was sent"
    );
    let close_4100 = [0x88u8, 19, 0x10, 0x04];
    assert!(
        got.windows(4).any(|w| w == close_4100),
        "close 4100 was sent"
    );
    // The watcher, reading, answers pings and stays through several intervals.
    watcher.expect_silence(Duration::from_millis(800));
    watcher.sync();
    let s = server.stats();
    assert_eq!(s["total_connections"], 1);
    assert_eq!(s["heartbeat_timeouts"], 1);
}

#[test]
fn bad_input_gets_errors_and_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut other = server.joined("/ws/r?user=other");
    let mut c = server.joined("/ws/r?user=c");
    other.expect("user_joined");
    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_json"),
        ("[1,2,3]", "bad_message"),
        ("\"just a string\"", "bad_message"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"room":"r"}"#, "bad_message"),
        (r#"{"type":"join"}"#, "bad_message"),
        (r#"{"type":"join","room":42}"#, "bad_message"),
        (r#"{"type":"message","room":"r"}"#, "bad_message"),
        (
            r#"{"type":"message","room":"nope","data":1}"#,
            "not_in_room",
        ),
        (
            r#"{"type":"private","to":"ghost","data":1}"#,
            "user_offline",
        ),
    ];
    for (input, code) in cases {
        c.send_text(input);
        let e = c.expect("error");
        assert_eq!(e["code"], *code, "input {input}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    c.send_text(&deep);
    assert_eq!(c.expect("error")["code"], "bad_json");
    let deep_data = format!(r#"{{"type":"message","room":"r","data":{deep}}}"#);
    c.send_text(&deep_data);
    assert_eq!(
        c.expect("error")["code"],
        "bad_json",
        "nesting over serde_json's limit"
    );
    c.send_text(r#"{"type":"message","room":"r","data":1e999999}"#);
    assert_eq!(
        c.expect("error")["code"],
        "bad_message",
        "infinite numbers never pass on"
    );
    c.send_json(json!({"type":"message","room":"r","data":"still works"}));
    assert_eq!(other.expect("message")["data"], "still works");
}

#[test]
fn protocol_violations_close_only_that_connection() {
    let server = Server::start(&[]);
    let mut other = server.joined("/ws/r?user=other");
    // Invalid UTF-8 in a text frame → 1007.
    let mut bad = server.joined("/ws/r?user=bad");
    other.expect("user_joined");
    let frame = tungstenite::protocol::frame::Frame::message(
        vec![0xffu8, 0xfe],
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    bad.ws.write(tungstenite::Message::Frame(frame)).unwrap();
    bad.ws.flush().unwrap();
    assert_eq!(bad.close_code(), 1007);
    assert_eq!(other.expect("user_left")["user"], "bad");
    // An unmasked client frame → 1002.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(
        b"GET /ws?user=raw HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    raw.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(
        got.windows(4).any(|w| w == [0x88, 16, 0x03, 0xea]),
        "close 1002 sent"
    );
    other.sync();
}

#[test]
fn http_routes() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(server.get("/nope").0, 404);
    let (status, body) = server.get("/ws/room");
    assert_eq!(status, 426);
    assert!(!body.is_empty());
    let plain_get = server.http_raw("GET /ws/room HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        plain_get.contains("\r\nUpgrade: websocket\r\n"),
        "{plain_get}"
    );
    assert_eq!(server.get("/echo").0, 426);
    assert_eq!(
        server
            .http("POST /healthz HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .0,
        405
    );
    assert_eq!(server.http("garbage\r\n\r\n").0, 400);
    let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
    assert_eq!(server.http(&huge).0, 431);
    let bad_version =
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let response = server.http_raw(bad_version);
    assert_eq!(parse_http(response.as_bytes()).0, 426);
    assert!(
        response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{response}"
    );
    let bad_key = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(server.http(bad_key).0, 400);
    let s = server.stats();
    assert_eq!(s["total_connections"], 0);
}

#[test]
fn handshake_deadline_drops_slow_requests() {
    let server = Server::start(&["--handshake-timeout", "0.3"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    // The server closes the socket (EOF: `Ok`); without the deadline this
    // would end in the read timeout instead (`Err(WouldBlock)`).
    let ended = s.read_to_end(&mut buf);
    assert!(
        ended.is_ok(),
        "dropped by the server, not timed out: {ended:?}"
    );
    assert!(started.elapsed() < WAIT);
    assert!(buf.is_empty(), "no response to an incomplete request");
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut a = server.joined("/ws/r?user=a");
    let mut b = server.client("/echo");
    let status = server.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert_eq!(a.close_code(), 1001);
    assert_eq!(b.close_code(), 1001);
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "stopped accepting"
    );
}

#[test]
fn invalid_settings_are_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--ping-interval", "often"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ping-interval"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-connections-per-user"));
}
