//! End-to-end: hostile handshakes and frames, floods, dead peers, running out
//! of descriptors. Each checks the bad client gets its documented answer and
//! that everyone else is still served.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::*;

/// A client in another room that must keep being served.
fn bystander(server: &Server) -> Client {
    server.joined("/ws/elsewhere?user=bystander")
}

#[test]
fn raw_garbage_instead_of_http_gets_400() {
    let server = Server::start(&[]);
    let mut other = bystander(&server);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0xff, b'\r', b'\n', b'\r', b'\n',
    ])
    .unwrap();
    let (status, _) = parse_http(&read_all(&mut s));
    assert_eq!(status, 400);
    other.sync();
}

#[test]
fn endless_request_line_gets_431() {
    let server = Server::start(&[]);
    let mut other = bystander(&server);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let line = vec![b'A'; 64 * 1024];
    let _ = s.write_all(&line); // the server may close before taking all of it
    let (status, _) = parse_http(&read_all(&mut s));
    assert_eq!(status, 431);
    other.sync();
}

#[test]
fn huge_headers_get_431() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let header = format!(
        "GET /ws HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let _ = s.write_all(header.as_bytes());
    assert_eq!(parse_http(&read_all(&mut s)).0, 431);
}

#[test]
fn hundred_kilobyte_room_name_never_gets_101() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(upgrade_request(&format!("/ws/{}", "r".repeat(100_000))).as_bytes());
    let (status, _) = parse_http(&read_all(&mut s));
    assert!((400..500).contains(&status), "got {status}");
    // Within the head limit but over the room-name limit: 400.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(upgrade_request(&format!("/ws/{}", "r".repeat(2_000))).as_bytes())
        .unwrap();
    assert_eq!(parse_http(&read_all(&mut s)).0, 400);
    assert_eq!(server.stats()["total_connections"], 0);
}

#[test]
fn frames_sent_right_behind_the_handshake_are_all_delivered() {
    // A client that does not wait for the 101, with more frames behind its
    // request than the driver's 64 KiB scratch buffer holds: some arrive
    // with the head, the rest are read from the socket.
    let server = Server::start(&[]);
    let mut listener = server.joined("/ws/early?user=listener");
    let big = format!(
        r#"{{"type":"message","room":"early","data":"{}"}}"#,
        "x".repeat(40_000)
    );
    let mut frames = client_frame(0x1, big.as_bytes());
    frames.extend(client_frame(0x1, big.as_bytes()));
    frames.extend(client_frame(
        0x1,
        br#"{"type":"message","room":"early","data":"last"}"#,
    ));
    assert!(frames.len() > 64 * 1024);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut eager = upgrade_request("/ws/early?user=eager").into_bytes();
    eager.extend_from_slice(&frames);
    s.write_all(&eager).unwrap();
    listener.expect("user_joined");
    for _ in 0..2 {
        let m = listener.expect("message");
        assert_eq!(m["data"].as_str().map(str::len), Some(40_000));
    }
    assert_eq!(listener.expect("message")["data"], "last");
    listener.sync();
}

#[test]
fn frames_right_behind_a_handshake_then_fin_are_handled_and_the_socket_dropped() {
    // The client writes its request, a frame and a byte of the next frame,
    // then shuts its side: the whole frame is delivered, the cut one is
    // not, and the connection goes at once (it once spun re-reading the
    // carried byte until a heartbeat ended it).
    let server = Server::start(&[]);
    let mut listener = server.joined("/ws/fin?user=listener");
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut bytes = upgrade_request("/ws/fin?user=leaver").into_bytes();
    bytes.extend(client_frame(
        0x1,
        br#"{"type":"message","room":"fin","data":"last words"}"#,
    ));
    bytes.push(0x81);
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    listener.expect("user_joined");
    assert_eq!(listener.expect("message")["data"], "last words");
    assert_eq!(listener.expect("user_left")["user"], "leaver");
    server.wait_stats("leaver dropped", |s| s["total_connections"] == 1);
    // One byte of a header and FIN, after the handshake: dropped too.
    let mut s = raw_ws(server.addr, "/ws/fin?user=cut");
    listener.expect("user_joined");
    s.write_all(&[0x82]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(listener.expect("user_left")["user"], "cut");
    server.wait_stats("cut dropped", |s| s["total_connections"] == 1);
    // More than one read of frames behind the handshake, then FIN: the
    // reads resumed after the upgrade still know the peer has closed.
    let mut s = TcpStream::connect(server.addr).unwrap();
    let mut bytes = upgrade_request("/ws/fin?user=big").into_bytes();
    let text = format!(
        r#"{{"type":"message","room":"fin","data":"{}"}}"#,
        "b".repeat(600)
    );
    for _ in 0..4 {
        bytes.extend(client_frame(0x1, text.as_bytes()));
    }
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    listener.expect("user_joined");
    for _ in 0..4 {
        listener.expect("message");
    }
    assert_eq!(listener.expect("user_left")["user"], "big");
    server.wait_stats("big dropped", |s| s["total_connections"] == 1);
    listener.sync();
}

#[test]
fn pings_whose_pongs_are_never_read_end_in_4101() {
    // Pongs count against the output queue like any output.
    let server = Server::start(&["--max-output-queue", "65536", "--rate-limit", "0"]);
    let mut other = bystander(&server);
    let mut s = raw_ws(server.addr, "/ws?user=pinger");
    let ping = client_frame(0x9, &[b'p'; 125]);
    let mut burst = Vec::new();
    for _ in 0..1000 {
        burst.extend_from_slice(&ping);
    }
    // Bounded by time, not by bytes: kernels with large socket buffers
    // absorb more pongs before the server's queue fills.
    let deadline = std::time::Instant::now() + WAIT;
    while server.stats()["slow_consumer_closes"] == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a pinger that never reads was never closed"
        );
        if s.write_all(&burst).is_err() {
            break;
        }
    }
    server.wait_stats("pinger closed", |s| s["slow_consumer_closes"] == 1);
    other.sync();
}

#[test]
fn a_handshake_with_a_body_is_refused() {
    // A body on a GET upgrade has no meaning: it is neither dropped nor
    // taken for frames.
    let server = Server::start(&[]);
    let request =
        upgrade_request("/ws/r?user=u").replace("\r\n\r\n", "\r\nContent-Length: 4\r\n\r\nabcd");
    let (status, body) = server.http(&request);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no body"), "{body}");
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn frame_claiming_2_pow_63_bytes_closes_1009() {
    let server = Server::start(&[]);
    let mut other = bystander(&server);
    let mut s = raw_ws(server.addr, "/ws?user=liar");
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).unwrap();
    assert_eq!(close_code_in(&read_all(&mut s)), Some(1009));
    other.sync();
    server.wait_stats("liar removed", |s| s["total_connections"] == 1);
}

#[test]
fn fragmented_and_interleaved_frames_are_assembled() {
    let server = Server::start(&[]);
    let mut listener = server.joined("/ws/f?user=listener");
    let mut s = raw_ws(server.addr, "/ws/f?user=raw");
    listener.expect("user_joined");
    let text = r#"{"type":"message","room":"f","data":"in three parts"}"#;
    let (a, rest) = text.split_at(10);
    let (b, c) = rest.split_at(15);
    let mut first = client_frame(0x1, a.as_bytes());
    first[0] &= 0x7f; // not final
    let mut middle = client_frame(0x0, b.as_bytes());
    middle[0] &= 0x7f;
    let ping = client_frame(0x9, b"hi"); // control frames may come in between
    let last = client_frame(0x0, c.as_bytes());
    // Byte by byte, the worst case for the reader.
    for byte in [first, ping, middle, last].concat() {
        s.write_all(&[byte]).unwrap();
    }
    assert_eq!(listener.expect("message")["data"], "in three parts");
}

#[test]
fn flood_of_10000_messages_is_delivered_in_order_or_closed() {
    let server = Server::start(&[]);
    let mut other = bystander(&server);
    let mut reader = server.joined("/ws/flood?user=reader");
    let mut flooder = server.joined("/ws/flood?user=flooder");
    reader.expect("user_joined");
    let sender = std::thread::spawn(move || {
        for i in 0..10_000 {
            let msg = json!({"type":"message","room":"flood","data":i}).to_string();
            if flooder.ws.write(tungstenite::Message::text(msg)).is_err() {
                break;
            }
        }
        let _ = flooder.ws.flush();
        flooder
    });
    // Meanwhile a client in another room is served.
    other.sync();
    let mut next = 0;
    let outcome = loop {
        match reader.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("message") => {
                        assert_eq!(v["data"], next, "in order, none missing");
                        next += 1;
                        if next == 10_000 {
                            break "all delivered";
                        }
                    }
                    Some("user_left") => break "flooder closed",
                    other => panic!("unexpected {other:?}: {v}"),
                }
            }
            Ok(_) => {}
            Err(e) => panic!("reader failed: {e}"),
        }
    };
    let mut flooder = sender.join().unwrap();
    if outcome == "flooder closed" {
        let code = flooder.close_code();
        assert_ne!(code, 1000, "a flooder is closed with a non-1000 code");
    }
    other.sync();
}

#[test]
fn over_the_rate_limit_errors_then_closes_4102() {
    let server = Server::start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
        "--rate-limit-close-after",
        "20",
    ]);
    let mut other = bystander(&server);
    let mut c = server.joined("/ws?user=fast");
    for _ in 0..200 {
        c.ws.write(tungstenite::Message::text(r#"{"type":"ping"}"#))
            .unwrap();
    }
    c.ws.flush().unwrap();
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match (v["type"].as_str(), v["code"].as_str()) {
                    (Some("pong"), _) => pongs += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    _ => panic!("{v}"),
                }
            }
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 4102);
    assert!((5..=7).contains(&pongs), "burst honoured: {pongs}");
    assert_eq!(
        limited, 20,
        "each refused message is answered, never dropped silently"
    );
    other.sync();
    let s = server.stats();
    assert_eq!(s["rate_limit_closes"], 1);
}

#[test]
fn abandoned_connections_are_cleaned_up() {
    let server = Server::start(&["--ping-interval", "0.5", "--ping-timeout", "0.5"]);
    // 2,000 connections: a third end with EOF, a third with RST, a third go silent.
    let mut silent = Vec::new();
    for i in 0..2000 {
        let s = raw_ws(server.addr, &format!("/ws/ghosts?user=g{i}"));
        match i % 3 {
            0 => drop(s),
            1 => {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on our own open socket.
                unsafe {
                    use std::os::fd::AsRawFd;
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as u32,
                    );
                }
                drop(s); // RST
            }
            _ => silent.push(s),
        }
    }
    // EOF and RST peers go at once; only the silent ones wait for the heartbeat.
    let s = server.wait_stats("all ghosts gone", |s| s["total_connections"] == 0);
    assert_eq!(s["rooms"], json!({}));
    assert_eq!(s["total_users"], 0);
    assert_eq!(s["connections_by_user"], json!({}));
    let timeouts = s["heartbeat_timeouts"].as_u64().unwrap();
    assert!(
        (666..=667).contains(&timeouts),
        "only the silent third timed out: {s}"
    );
    let mut other = bystander(&server);
    other.sync();
    drop(silent);
}

#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    // A tiny descriptor allowance: accept() soon fails with EMFILE.
    let server = Server::start_with_fd_limit(&["--handshake-timeout", "30"], Some(40));
    let mut other = bystander(&server);
    let mut extra = Vec::new();
    for _ in 0..60 {
        // The kernel completes these in the backlog; the server cannot accept them all.
        if let Ok(s) = TcpStream::connect(server.addr) {
            extra.push(s);
        }
    }
    server_log_contains(&server, "pausing accepts");
    other.sync(); // existing clients are still served
    other.send_json(json!({"type":"message","room":"elsewhere","data":1,"echo":true}));
    assert_eq!(other.expect("message")["data"], 1);
    drop(extra); // descriptors free up
    let mut fresh = server.joined("/ws?user=fresh");
    fresh.sync();
    let s = server.stats();
    assert!(s["accept_errors"].as_u64().unwrap() >= 1);
    server_log_contains(&server, "accepting connections again");
}

/// Wait for a line containing `needle` in the server's log.
fn server_log_contains(server: &Server, needle: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => continue,
            Err(_) => panic!("server never logged {needle:?}"),
        }
    }
}

#[test]
fn slow_reader_memory_stays_bounded_and_others_are_served() {
    let server = Server::start(&["--max-output-queue", "131072"]);
    let mut fast = server.joined("/ws/s?user=fast");
    // A member that reads everything, on its own thread, all along (a
    // client that stopped reading too would race the slow one to 4101).
    let mut watcher = server.joined("/ws/s?user=watcher");
    fast.expect("user_joined");
    let mut slow = raw_ws(server.addr, "/ws/s?user=slow"); // never reads
    fast.expect("user_joined");
    watcher.expect("user_joined");
    let counting = std::thread::spawn(move || {
        let mut messages = 0u32;
        loop {
            let v = watcher.recv_json();
            if v["type"] == "message" {
                if v["data"] == "end" {
                    return messages;
                }
                messages += 1;
            }
        }
    });
    let payload = "z".repeat(4000);
    let mut sent = 0;
    loop {
        let stats = server.stats();
        // The server never holds more than the cap per connection (+ one frame).
        let queued = stats["queued_bytes"].as_u64().unwrap();
        assert!(queued <= 2 * (131_072 + 4_100), "queued {queued} bytes");
        if stats["slow_consumer_closes"] == 1 {
            break;
        }
        for _ in 0..20 {
            fast.send_json(json!({"type":"message","room":"s","data":payload}));
            sent += 1;
        }
        assert!(sent < 20_000, "slow consumer never closed");
    }
    fast.send_json(json!({"type":"message","room":"s","data":"end"}));
    // The reading member got every message, in spite of the slow one.
    assert_eq!(counting.join().unwrap(), sent);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    assert_eq!(close_code_in(&got), Some(4101));
}

#[test]
fn a_burst_of_connects_waits_in_the_accept_queue() {
    // 600 connects while the server cannot accept (stopped): the kernel
    // completes them all into the accept queue (`--listen-backlog`, 4096 by
    // default). With std's backlog of 128 the SYNs past it would be dropped
    // and each of those clients would stall a second or more (checked:
    // `--listen-backlog 128` fails here at connect 129).
    let server = Server::start(&[]);
    let pid = server.child.id() as i32;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The kernel caps any backlog at net.core.somaxconn (4096 by default
    // since Linux 5.4): a burst past it would test the machine, not us.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let size = 600.min(somaxconn);
    let mut burst = Vec::new();
    for i in 0..size {
        match TcpStream::connect_timeout(&server.addr, Duration::from_millis(500)) {
            Ok(s) => burst.push(s),
            Err(e) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
                panic!("connect {i} of the burst did not complete: {e}");
            }
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for s in &mut burst {
        s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    }
    for s in &mut burst {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
    }
    assert_eq!(server.stats()["total_connections"], size);
}

#[test]
fn a_reader_that_stalls_then_resumes_gets_everything_in_order() {
    // The stalled reader's socket fills, the server's writes to it stop
    // (and are not retried until the kernel says it is writable again),
    // and once it reads, every message arrives, in order.
    let server = Server::start(&["--max-output-queue", "33554432", "--rate-limit", "0"]);
    let mut stalled = server.joined("/ws/r?user=stalled");
    let mut publisher = server.joined("/ws/r?user=publisher");
    stalled.expect("user_joined");
    let pad = "p".repeat(4000);
    let total = 3000; // 12 MB: more than the loopback socket buffers hold
    for n in 0..total {
        publisher.send_json(json!({"type":"message","room":"r","data":{"n":n,"pad":pad}}));
    }
    publisher.sync();
    let stats = server.wait_stats("output queued behind a full socket", |s| {
        s["queued_bytes"].as_u64().unwrap() > 0
    });
    assert_eq!(stats["slow_consumer_closes"], 0);
    for n in 0..total {
        let v = stalled.expect("message");
        assert_eq!(v["data"]["n"], n);
    }
    let stats = server.wait_stats("queue drained", |s| s["queued_bytes"] == 0);
    assert_eq!(stats["slow_consumer_closes"], 0);
}
