//! Secrets stay secret: with every secret set and the daemon logging at
//! `trace`, traffic that uses each of them (API calls with the key and
//! without, WebSocket connections with good, forged and expired tokens,
//! /stats and /metrics, shutdown) leaves no secret and no token in any log
//! line, page or error message; settings errors never echo a secret.

mod support;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::*;
use switchboard::auth::sign_hs256;

const API_KEY: &str = "apikey-SECRET-1-7f3a9c2e51d04b8a";
const JWT_SECRET: &str = "jwtsecret-SECRET-2-0123456789abcdef";
const KID_SECRET: &str = "kidsecret-SECRET-3-fedcba9876543210";
const SECRETS: [&str; 3] = [API_KEY, JWT_SECRET, KID_SECRET];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Fails if `text` holds any of `needles`, saying where.
fn assert_free_of(text: &str, needles: &[&str], what: &str) {
    for needle in needles {
        assert!(!text.contains(needle), "{what} reveals {needle:?}:\n{text}");
    }
}

#[test]
fn no_secret_or_token_in_logs_pages_or_errors_at_trace_level() {
    let kid_keys = format!("k1:{KID_SECRET}");
    let mut server = Server::start(&[
        "--log-level",
        "trace",
        "--api-key",
        API_KEY,
        "--metrics-require-key",
        "true",
        "--auth",
        "jwt",
        "--jwt-secret",
        JWT_SECRET,
        "--jwt-keys",
        &kid_keys,
    ]);
    let claims = json!({"sub": "ann", "exp": now() + 600, "rooms": ["r"], "broadcast": true});
    let good = sign_hs256(&claims, None, JWT_SECRET.as_bytes());
    let cat = json!({"sub": "cat", "exp": now() + 600, "rooms": ["r"]});
    let good_kid = sign_hs256(&cat, Some("k1"), KID_SECRET.as_bytes());
    let forged = sign_hs256(&claims, None, b"not-the-key-but-32-bytes-long!!!");
    let expired = sign_hs256(
        &json!({"sub": "bob", "exp": now() - 600}),
        None,
        JWT_SECRET.as_bytes(),
    );
    let tokens = [
        good.as_str(),
        good_kid.as_str(),
        forged.as_str(),
        expired.as_str(),
    ];

    // Tokens in the query and in the header; accepted and refused.
    let mut ann = server.joined(&format!("/ws/r?token={good}"));
    let mut ann2 = server.joined(&format!("/ws/r?token={good_kid}"));
    ann.expect("user_joined");
    let header = upgrade_request("/ws/r").replace(
        "\r\n\r\n",
        &format!("\r\nAuthorization: Bearer {good}\r\n\r\n"),
    );
    let mut raw = std::net::TcpStream::connect(server.addr).unwrap();
    raw.write_all(header.as_bytes()).unwrap();
    for token in [&forged, &expired] {
        let (status, body) = server.http(&upgrade_request(&format!("/ws/r?token={token}")));
        assert_eq!(status, 401);
        assert_free_of(&body, &SECRETS, "a 401 body");
        assert_free_of(&body, &tokens, "a 401 body");
    }
    ann.send_json(json!({"type":"message","room":"r","data":"hi"}));
    ann2.expect("message");
    ann.send_json(json!({"type":"broadcast","data":"all"}));
    ann2.expect("broadcast");

    // The server API and the pages, with the key and with wrong keys.
    let auth = format!("Authorization: Bearer {API_KEY}\r\n");
    let body = r#"{"room":"r","data":"from the backend"}"#;
    let publish = format!(
        "POST /api/publish HTTP/1.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(server.http(&publish).0, 200);
    let wrong = publish.replace(API_KEY, "apikey-wrong-guess-000000000000");
    assert_eq!(server.http(&wrong).0, 401);
    for page in ["/stats", "/metrics", "/api/rooms", "/api/users/ann"] {
        let (status, text) = server.http(&format!(
            "GET {page} HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"
        ));
        assert_eq!(status, 200, "{page}");
        assert_free_of(&text, &SECRETS, page);
        assert_free_of(&text, &tokens, page);
    }
    ann2.expect("message");
    drop(raw);
    ann.close();

    let status = server.signal_and_wait(libc::SIGTERM);
    assert!(status.success());
    let mut log = server.startup_log.clone();
    log.extend(server.log.try_iter());
    let log = log.join("\n");
    assert!(log.contains("settings:"), "the settings are logged:\n{log}");
    assert!(log.contains("<redacted>"), "redacted, not left out:\n{log}");
    assert!(
        log.contains("[TRACE]"),
        "the daemon logged at trace level:\n{log}"
    );
    assert_free_of(&log, &SECRETS, "the log");
    assert_free_of(&log, &tokens, "the log");
}

/// Run the daemon with `args` and `env`; it must refuse to start. Its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn settings_errors_never_echo_a_secret() {
    // Too short (a secret all the same: the message says why, not what).
    let short_key = "apikey-SHORT1";
    let err = refused(&["--api-key", short_key], &[]);
    assert!(err.contains("api-key"), "{err}");
    assert_free_of(&err, &[short_key], "an --api-key error");
    let short_jwt = "jwtsecret-SHORT-0123456789";
    let err = refused(&["--auth", "jwt", "--jwt-secret", short_jwt], &[]);
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(err.contains("RFC 7518"), "{err}");
    assert_free_of(&err, &[short_jwt], "a --jwt-secret error");
    let err = refused(
        &["--auth", "jwt", "--jwt-keys", &format!("k:{short_jwt}")],
        &[],
    );
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert_free_of(&err, &[short_jwt], "a --jwt-keys error");
    let err = refused(&[], &[("SWITCHBOARD_JWT_SECRET", short_jwt)]);
    assert_free_of(&err, &[short_jwt], "an environment error");
    // A flag that lost its value makes the next flag its value and the
    // secret a stray argument: still not echoed.
    let err = refused(&["--metrics-require-key", "--api-key", API_KEY], &[]);
    assert_free_of(&err, &SECRETS, "a stray-argument error");
    let err = refused(
        &["--auth", "jwt", "--jwt-keys", &format!("{short_jwt}:x")],
        &[],
    );
    assert!(err.contains("entry 1"), "{err}");
    assert_free_of(&err, &[short_jwt], "a --jwt-keys error");

    // A settings file whose syntax error sits on the line with the secret.
    let dir = std::env::temp_dir().join(format!("switchboard-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        format!("auth = \"jwt\"\njwt_secret = \"{JWT_SECRET}\n"),
    )
    .unwrap();
    let err = refused(&["--config", file.to_str().unwrap()], &[]);
    assert!(err.contains("line 2"), "{err}");
    assert_free_of(&err, &SECRETS, "a TOML error");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn contradicting_settings_are_refused_naming_both() {
    let err = refused(&["--jwt-secret", JWT_SECRET], &[]);
    assert!(
        err.contains("--auth") && err.contains("--jwt-secret"),
        "{err}"
    );
    assert_free_of(&err, &SECRETS, "a contradiction error");
    let err = refused(&["--metrics-require-key", "true"], &[]);
    assert!(
        err.contains("--metrics-require-key") && err.contains("--api-key"),
        "{err}"
    );
}

const REDIS_PASSWORD: &str = "redispass-SECRET-4-0a1b2c3d4e5f";

#[test]
fn the_redis_password_never_shows() {
    let port = support::free_port();
    let pass = format!(">{REDIS_PASSWORD}");
    let acl = ["--user", "app", "on", &pass, "~*", "&*", "+@all"];
    let _redis = Redis::start_with(port, &acl);
    let url = format!("redis://app:{REDIS_PASSWORD}@127.0.0.1:{port}");
    let mut server = Server::start(&["--log-level", "trace", "--cluster", &url]);
    let stats = server.wait_stats("cluster up", |s| s["cluster"]["state"] == "up");
    assert_free_of(&stats.to_string(), &[REDIS_PASSWORD], "/stats");
    let mut ann = server.joined("/ws/r?user=ann");
    ann.send_json(json!({"type":"message","room":"r","data":"hi","echo":true}));
    ann.expect("message");
    let metrics = server.get("/metrics").1;
    assert_free_of(&metrics, &[REDIS_PASSWORD], "/metrics");
    ann.close();
    // A wrong password: refused by Redis, and said so without it.
    let wrong = "redispass-WRONG-0000000000000";
    let bad = format!("redis://app:{wrong}@127.0.0.1:{port}");
    let mut refused_node = Server::start(&["--log-level", "trace", "--cluster", &bad]);
    let mut saw_refusal = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Ok(line) = refused_node
            .log
            .recv_timeout(std::time::Duration::from_millis(100))
        {
            let done = line.contains("WRONGPASS");
            saw_refusal.push(line);
            if done {
                break;
            }
        }
    }
    let text = saw_refusal.join("\n");
    assert!(text.contains("setup: WRONGPASS"), "{text}");
    let (status, body) = refused_node.get("/healthz");
    assert_eq!(status, 200);
    assert!(body.starts_with("degraded"), "{body}");
    refused_node.signal_and_wait(libc::SIGTERM);
    let mut all = refused_node.startup_log.clone();
    all.extend(saw_refusal);
    all.extend(refused_node.log.try_iter());
    assert_free_of(&all.join("\n"), &[wrong], "the log of a refused link");

    server.signal_and_wait(libc::SIGTERM);
    let mut log = server.startup_log.clone();
    log.extend(server.log.try_iter());
    let log = log.join("\n");
    assert!(log.contains("[TRACE]"), "{log}");
    assert!(log.contains("<redacted>"), "{log}");
    assert_free_of(&log, &[REDIS_PASSWORD], "the log");
    // A settings error about a Redis URL names its position, not the URL.
    let err = refused(
        &[
            "--cluster",
            &format!("redis://:{REDIS_PASSWORD}@h:notaport"),
        ],
        &[],
    );
    assert!(err.contains("URL 1"), "{err}");
    assert_free_of(&err, &[REDIS_PASSWORD], "a --cluster error");
}
