//! The pages the daemon serves, in headless Chromium against the real
//! daemon: `/dashboard` (numbers against `/stats`, rates, drill-down,
//! actions with their confirmation, the API key kept per tab) and `/demo`
//! (two tabs chatting across a daemon restart). And their HTTP answers.

mod support;

use std::path::Path;

use support::Server;

#[test]
fn pages_are_served_self_contained_with_an_etag() {
    let server = Server::start(&["--api-key", "a-key-of-sixteen-chars"]);
    for (path, file) in [
        ("/dashboard", "src/pages/dashboard.html"),
        ("/demo", "src/pages/demo.html"),
    ] {
        let raw = server.http_raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        // Open without the key: the page holds no secret, it asks for one.
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("Content-Type: text/html; charset=utf-8"),
            "{head}"
        );
        assert!(
            head.contains("Content-Security-Policy: default-src 'none'"),
            "{head}"
        );
        assert!(head.contains("frame-ancestors 'none'"), "{head}");
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert_eq!(body, text, "{path}: the same file, embedded");
        // Nothing from elsewhere: no external script, style, font or image.
        for outside in ["http://", "https://", "//cdn", "@import"] {
            assert!(!body.contains(outside), "{path} refers to {outside}");
        }
        let etag = head.lines().find_map(|l| l.strip_prefix("ETag: ")).unwrap();
        let again = server.http_raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        ));
        assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    }
    // The overview behind the key; a bounded top list.
    assert_eq!(server.get("/api/overview").0, 401);
    let (status, body) = server.http(
        "GET /api/overview?top=100000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer a-key-of-sixteen-chars\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"], 0);
    assert_eq!(v["cluster"]["state"], "off");
}

#[test]
fn overview_lists_the_busiest_rooms_and_users() {
    let server = Server::start(&[]);
    let mut clients = Vec::new();
    for (user, room) in [
        ("ann", "a"),
        ("ann", "b"),
        ("ann", "c"),
        ("bob", "a"),
        ("cy", "a"),
        ("cy", "b"),
    ] {
        clients.push(server.joined(&format!("/ws/{room}?user={user}")));
    }
    let (status, body) = server.get("/api/overview?top=2");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["top_rooms"],
        serde_json::json!([{"room":"a","members":3},{"room":"b","members":2}])
    );
    assert_eq!(
        v["top_users"],
        serde_json::json!([{"user":"ann","connections":3},{"user":"cy","connections":2}])
    );
    assert_eq!(
        (
            v["connections"].as_u64(),
            v["users"].as_u64(),
            v["rooms"].as_u64()
        ),
        (Some(6), Some(3), Some(3))
    );
    assert_eq!(v["node"], server.stats()["node"]);
    assert_eq!(v["nodes"], serde_json::json!([]));
}

#[test]
fn dashboard_in_headless_chromium() {
    support::need_browser_tools();
    let key = "dashboard-test-key-0123456789";
    support::drive_node("dashboard_browser.mjs", &["--api-key", key], &[key]);
}

#[test]
fn demo_in_headless_chromium() {
    support::need_browser_tools();
    // Two tabs chatting; the daemon killed and restarted under them.
    support::drive_node("demo_browser.mjs", &[], &[]);
}
