//! End-to-end: token auth, origins, the server API, /stats and /metrics
//! behind the API key, against the real daemon.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use switchboard::auth::sign_hs256;

const SECRET: &str = "test-secret-0123456789-abcdefghijk";
const API_KEY: &str = "api-key-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    sign_hs256(&claims, None, SECRET.as_bytes())
}

fn jwt_server(extra: &[&str]) -> Server {
    let mut flags = vec!["--auth", "jwt", "--jwt-secret", SECRET];
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

fn status_of(server: &Server, path: &str) -> u16 {
    match Client::try_connect(server.addr, path) {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn tokens_are_required_and_checked() {
    let server = jwt_server(&[]);
    assert_eq!(status_of(&server, "/ws"), 401, "no token");
    match Client::try_connect(server.addr, "/ws") {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer",
                "RFC 6750 challenge"
            )
        }
        Ok(_) => panic!("expected 401, got 101"),
        Err(e) => panic!("expected 401, got {e}"),
    }
    assert_eq!(
        status_of(&server, "/ws?user=ann"),
        401,
        "?user= is not enough"
    );
    let forged = sign_hs256(
        &json!({"sub":"ann","exp":now() + 60}),
        None,
        b"wrong-secret-0123456",
    );
    assert_eq!(
        status_of(&server, &format!("/ws?token={forged}")),
        401,
        "bad signature"
    );
    let expired = token(json!({"sub":"ann","exp":now() - 60}));
    assert_eq!(
        status_of(&server, &format!("/ws?token={expired}")),
        401,
        "expired"
    );
    assert_eq!(status_of(&server, "/ws?token=not.a.jwt"), 401, "malformed");
    let good = token(json!({"sub":"ann","exp":now() + 60}));
    let mut c = server.client(&format!("/ws?token={good}&user=mallory"));
    assert_eq!(
        c.expect("welcome")["user"],
        "ann",
        "the token's sub wins over ?user="
    );
    assert_eq!(server.stats_with_key(None)["total_connections"], 1);
}

#[test]
fn bearer_header_works_too() {
    let server = jwt_server(&[]);
    let good = token(json!({"sub":"bea","exp":now() + 60}));
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(server.url("/ws")).unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {good}").parse().unwrap());
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client::client(req, stream).unwrap();
    let mut c = Client { ws };
    assert_eq!(c.expect("welcome")["user"], "bea");
}

#[test]
fn room_grants_and_broadcast_permission() {
    let server = jwt_server(&[]);
    let limited = token(json!({"sub":"ann","exp":now() + 60,"rooms":["chat:*","lobby"]}));
    let mut c = server.joined(&format!("/ws?token={limited}"));
    c.send_json(json!({"type":"join","room":"chat:7"}));
    c.expect("joined");
    c.send_json(json!({"type":"join","room":"lobby"}));
    c.expect("joined");
    c.expect_error(json!({"type":"join","room":"admin","ref":1}), "forbidden");
    c.expect_error(json!({"type":"presence","room":"admin"}), "forbidden");
    c.expect_error(json!({"type":"broadcast","data":1}), "forbidden");
    // A URL room that is not granted: connected, told why, not joined.
    let mut d = server.client(&format!("/ws/admin?token={limited}"));
    d.expect("welcome");
    assert_eq!(d.expect("error")["code"], "forbidden");
    let wide = token(json!({"sub":"boss","exp":now() + 60,"broadcast":true}));
    let mut b = server.joined(&format!("/ws?token={wide}"));
    b.send_json(json!({"type":"broadcast","data":"hello all"}));
    assert_eq!(c.expect("broadcast")["data"], "hello all");
}

#[test]
fn token_expiring_while_connected_closes_4001() {
    let server = jwt_server(&["--jwt-leeway", "0"]);
    let short = token(json!({"sub":"ann","exp":now() + 2}));
    let mut c = server.joined(&format!("/ws/r?token={short}"));
    assert_eq!(c.ended(), Ended::Close(4001, "token expired".into()));
    server.wait_stats_with_key(None, "expired connection removed", |s| {
        s["total_connections"] == 0
    });
}

#[test]
fn origin_allow_list() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://app.example,https://admin.example",
    ]);
    let try_origin = |origin: &str| {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(server.url("/ws")).unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        let stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client::client(req, stream) {
            Ok(_) => 101,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                r.status().as_u16()
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(try_origin("https://app.example"), 101);
    assert_eq!(try_origin("https://evil.example"), 403);
    assert_eq!(
        status_of(&server, "/ws"),
        101,
        "non-browser clients send no Origin"
    );
}

/// One HTTP request with the API key (or none); returns (status, JSON body).
fn api(server: &Server, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    server.api(method, path, key, body)
}

#[test]
fn every_api_endpoint_needs_the_key() {
    let server = Server::start(&["--api-key", API_KEY]);
    let endpoints = [
        ("POST", "/api/publish", r#"{"room":"r","data":1}"#),
        ("POST", "/api/send", r#"{"user":"u","data":1}"#),
        ("POST", "/api/broadcast", r#"{"data":1}"#),
        ("POST", "/api/disconnect", r#"{"user":"u"}"#),
        ("POST", "/api/batch", r#"{"ops":[]}"#),
        ("GET", "/api/rooms", ""),
        ("GET", "/api/rooms/r", ""),
        ("GET", "/api/users/u", ""),
        ("GET", "/stats", ""),
    ];
    for (method, path, body) in endpoints {
        let (status, json) = api(&server, method, path, None, body);
        assert_eq!(status, 401, "{method} {path} without a key");
        assert_eq!(json["error"], "unauthorized");
        assert_eq!(
            api(&server, method, path, Some("wrong-key-0123456789"), body).0,
            401
        );
        assert_eq!(
            api(&server, method, path, Some(API_KEY), body).0,
            200,
            "{method} {path}"
        );
    }
    assert_eq!(server.get("/healthz").0, 200, "healthz stays open");
    assert_eq!(server.get("/metrics").0, 200, "metrics open by default");
}

#[test]
fn api_publish_send_broadcast_disconnect_reach_clients() {
    let server = Server::start(&["--api-key", API_KEY]);
    let mut ann = server.joined("/ws/news?user=ann");
    let mut ann2 = server.joined("/ws?user=ann");
    let mut bob = server.joined("/ws/news?user=bob");
    ann.expect("user_joined");
    let (status, r) = api(
        &server,
        "POST",
        "/api/publish",
        Some(API_KEY),
        r#"{"room":"news","data":{"headline":"hi"}}"#,
    );
    assert_eq!((status, r["delivered"].as_u64()), (200, Some(2)));
    for c in [&mut ann, &mut bob] {
        let m = c.expect("message");
        assert_eq!(
            (m["room"].as_str(), m["data"]["headline"].as_str()),
            (Some("news"), Some("hi"))
        );
        assert!(m["from"].is_null());
    }
    let (_, r) = api(
        &server,
        "POST",
        "/api/send",
        Some(API_KEY),
        r#"{"user":"ann","data":"psst"}"#,
    );
    assert_eq!(r["delivered"], 2);
    for c in [&mut ann, &mut ann2] {
        let p = c.expect("private");
        assert_eq!(
            (p["data"].as_str(), p["from"].is_null()),
            (Some("psst"), true)
        );
    }
    let (_, r) = api(
        &server,
        "POST",
        "/api/broadcast",
        Some(API_KEY),
        r#"{"data":"all"}"#,
    );
    assert_eq!(r["delivered"], 3);
    for c in [&mut ann, &mut ann2, &mut bob] {
        assert_eq!(c.expect("broadcast")["data"], "all");
    }
    // Binary publish: raw body, room in the query.
    let req = format!(
        "POST /api/publish?room=news HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\x01\x02\x03"
    );
    assert_eq!(server.http(&req).0, 200);
    for c in [&mut ann, &mut bob] {
        match c.recv() {
            tungstenite::Message::Binary(b) => assert_eq!(&b[..], &[1, 2, 3]),
            other => panic!("{other:?}"),
        }
    }
    // Views.
    let (_, rooms) = api(&server, "GET", "/api/rooms", Some(API_KEY), "");
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1);
    let (_, room) = api(&server, "GET", "/api/rooms/news", Some(API_KEY), "");
    assert_eq!(
        (room["members"].as_u64(), room["connections"].as_u64()),
        (Some(2), Some(2))
    );
    let (_, user) = api(&server, "GET", "/api/users/ann", Some(API_KEY), "");
    assert_eq!(
        (user["online"].as_bool(), user["connections"].as_u64()),
        (Some(true), Some(2))
    );
    // Batch.
    let batch = r#"{"ops":[{"op":"publish","room":"news","data":1},{"op":"send","user":"nobody","data":2},{"op":"nope"}]}"#;
    let (_, r) = api(&server, "POST", "/api/batch", Some(API_KEY), batch);
    let results = r["results"].as_array().unwrap();
    assert_eq!(
        (
            results[0]["delivered"].as_u64(),
            results[1]["delivered"].as_u64()
        ),
        (Some(2), Some(0))
    );
    assert_eq!(results[2]["ok"], false);
    bob.expect("message");
    ann.expect("message");
    // Disconnect every device of ann with a custom code.
    let (_, r) = api(
        &server,
        "POST",
        "/api/disconnect",
        Some(API_KEY),
        r#"{"user":"ann","code":4009,"reason":"account suspended"}"#,
    );
    assert_eq!(r["disconnected"], 2);
    assert_eq!(ann.ended(), Ended::Close(4009, "account suspended".into()));
    assert_eq!(ann2.close_code(), 4009);
    assert_eq!(bob.expect("user_left")["user"], "ann");
}

#[test]
fn api_errors_are_json_4xx_and_bodies_are_capped() {
    let server = Server::start(&["--api-key", API_KEY, "--max-request-body", "1024"]);
    let (s, r) = api(&server, "POST", "/api/publish", Some(API_KEY), "{nope");
    assert_eq!((s, r["error"].as_str()), (400, Some("bad_json")));
    let (s, r) = api(
        &server,
        "POST",
        "/api/publish",
        Some(API_KEY),
        r#"{"data":1}"#,
    );
    assert_eq!((s, r["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(
        api(&server, "GET", "/api/publish", Some(API_KEY), "").0,
        405
    );
    assert_eq!(
        api(&server, "GET", "/api/nothing", Some(API_KEY), "").0,
        404
    );
    // Over the cap: 413 at once, without the server reading the body.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!("POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 100000000\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let (status, body) = parse_http(&got);
    assert_eq!(status, 413);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "body_too_large"
    );
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(&["--api-key", API_KEY]);
    let _c = server.joined("/ws/k?user=k");
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = r#"{"room":"k","data":1}"#;
    let one = format!(
        "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Two pipelined requests, then a third after reading the answers.
    s.write_all(format!("{one}{one}").as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("HTTP/1.1 200").count() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("Connection: keep-alive"));
    s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
}

#[test]
fn metrics_behind_the_key_when_asked() {
    let server = Server::start(&["--api-key", API_KEY, "--metrics-require-key", "true"]);
    assert_eq!(server.get("/metrics").0, 401);
    let (status, _) = server.http(&format!(
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(status, 200);
}
