//! The JavaScript client (`clients/js/switchboard.js`) in Node against the
//! real daemon: connect, join, messages, a refused request, the daemon
//! killed and restarted on the same port (reconnect and rejoin unaided),
//! close codes 4000 (final) and 4100 (reconnect), `close()`. And the file
//! as the daemon serves it at `/client.js`.

mod support;

use std::path::PathBuf;

use support::Server;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn client_js_is_served_with_an_etag() {
    let server = Server::start(&[]);
    let raw = server.http_raw("GET /client.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
    let file = std::fs::read_to_string(repo("clients/js/switchboard.js")).unwrap();
    assert_eq!(body, file, "the same file, embedded");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .expect("an ETag")
        .to_string();
    let again = server.http_raw(&format!(
        "GET /client.js HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ));
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    assert!(again.ends_with("\r\n\r\n"), "no body: {again}");
}

#[test]
fn js_client_reconnects_rejoins_and_honours_close_codes() {
    assert!(
        repo("tests/interop/node_modules/ws").exists(),
        "run scripts/test.sh (it installs the Node tools)"
    );
    support::drive_node("js_client.mjs", &[], &[]);
}

#[test]
fn js_client_in_headless_chromium() {
    support::need_browser_tools();
    // A short heartbeat, so the client's own timer finds a stopped daemon.
    support::drive_node(
        "js_browser.mjs",
        &["--ping-interval", "1", "--ping-timeout", "1"],
        &[],
    );
}
