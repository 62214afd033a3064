//! End-to-end: connection info (`?info=` or the token's `info` claim),
//! connection times, presence with details and the server API's detailed
//! user and room views, against the real daemon.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use switchboard::auth::sign_hs256;

const SECRET: &str = "test-secret-0123456789-abcdefghijk";
const API_KEY: &str = "api-key-0123456789abcdef";

fn now_ms() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(d.as_millis()).unwrap()
}

/// Percent-encode every byte that is not unreserved (RFC 3986 §2.3).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `info` as a query value.
fn info_q(info: &Value) -> String {
    enc(&info.to_string())
}

/// A JSON object whose text is exactly `n` bytes: `{"p":"xxx…"}`.
fn object_of_len(n: usize) -> String {
    let s = format!(r#"{{"p":"{}"}}"#, "x".repeat(n - 8));
    assert_eq!(s.len(), n);
    s
}

/// A Unix-ms timestamp that is an integer, not in the future, within a minute.
fn assert_recent(t: &Value, what: &str) -> u64 {
    let ms = t
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: not a Unix-ms integer: {t}"));
    let now = now_ms();
    assert!(ms <= now && now - ms < 60_000, "{what} = {ms}, now = {now}");
    ms
}

fn has_key(v: &Value, key: &str) -> bool {
    v.as_object().is_some_and(|o| o.contains_key(key))
}

/// Connect, read the `welcome` (and the `joined` of a `/ws/<room>` path).
fn connect(server: &Server, path: &str) -> (Client, Value) {
    let mut c = server.client(path);
    let w = c.expect("welcome");
    if path.starts_with("/ws/") {
        c.expect("joined");
    }
    (c, w)
}

/// `details` has one entry per listed user, in the same order.
fn assert_details_follow_users(reply: &Value) {
    let users = reply["users"].as_array().expect("users list");
    let details = reply["details"].as_array().expect("details list");
    assert_eq!(details.len(), users.len(), "{reply}");
    for (d, u) in details.iter().zip(users) {
        assert_eq!(&d["user"], u, "{reply}");
    }
}

/// The `details` entry for `user`.
fn detail_of<'a>(reply: &'a Value, user: &str) -> &'a Value {
    reply["details"]
        .as_array()
        .expect("details list")
        .iter()
        .find(|d| d["user"] == user)
        .unwrap_or_else(|| panic!("no details for {user}: {reply}"))
}

/// The per-connection entry of a user view with this `connection_id`.
fn conn_detail<'a>(view: &'a Value, id: &Value) -> &'a Value {
    view["details"]
        .as_array()
        .expect("details list")
        .iter()
        .find(|d| &d["connection_id"] == id)
        .unwrap_or_else(|| panic!("no connection {id}: {view}"))
}

fn presence_details(c: &mut Client, room: &str) -> Value {
    c.send_json(json!({"type":"presence","room":room,"details":true}));
    let p = c.expect("presence");
    assert_details_follow_users(&p);
    p
}

/// `GET path` with the API key; the JSON body of a 200.
fn api_get(server: &Server, path: &str) -> Value {
    let (status, body) = server.http(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[test]
fn info_from_the_query_is_echoed_in_welcome_and_shown_in_presence_details() {
    let server = Server::start(&[]);
    let info = json!({"name":"Ann","avatar":"a.png"});
    let mut ann = server.client(&format!("/ws/lobby?user=ann&info={}", info_q(&info)));
    let w = ann.expect("welcome");
    assert_eq!(w["user"], "ann");
    assert_eq!(w["info"], info, "{w}");
    let ann_at = assert_recent(&w["connected_at"], "ann's connected_at");
    let j = ann.expect("joined");
    assert!(!has_key(&j, "details"), "a URL join has no details: {j}");

    let mut bob = server.client("/ws/lobby?user=bob");
    let wb = bob.expect("welcome");
    assert!(!has_key(&wb, "info"), "no info, no key: {wb}");
    assert_recent(&wb["connected_at"], "bob's connected_at");
    bob.expect("joined");
    let uj = ann.expect("user_joined");
    assert_eq!(uj["user"], "bob");
    assert!(!has_key(&uj, "info"), "bob has no info: {uj}");

    bob.send_json(json!({"type":"presence","room":"lobby","details":true,"ref":7}));
    let p = bob.expect("presence");
    assert_eq!(p["room"], "lobby");
    assert_eq!(p["members"], 2);
    assert_eq!(p["truncated"], false);
    assert_eq!(p["ref"], 7);
    assert_eq!(p["users"].as_array().map(Vec::len), Some(2), "{p}");
    assert_details_follow_users(&p);
    let a = detail_of(&p, "ann");
    assert_eq!(a["info"], info, "{p}");
    assert_eq!(a["connections"], 1);
    let ann_since = assert_recent(&a["since"], "ann's since");
    assert!(ann_since >= ann_at, "joined after connecting: {p} vs {w}");
    let b = detail_of(&p, "bob");
    assert!(!has_key(b, "info"), "{p}");
    assert_eq!(b["connections"], 1);
    let bob_since = assert_recent(&b["since"], "bob's since");
    assert!(bob_since >= ann_since, "bob entered after ann: {p}");

    // Without "details": true the reply keeps its old shape.
    bob.send_json(json!({"type":"presence","room":"lobby","ref":8}));
    let p = bob.expect("presence");
    assert_eq!(
        (p["members"].as_u64(), p["ref"].as_u64()),
        (Some(2), Some(8))
    );
    assert!(!has_key(&p, "details"), "{p}");
    bob.send_json(json!({"type":"presence","room":"lobby","details":false}));
    let p = bob.expect("presence");
    assert!(!has_key(&p, "details"), "{p}");

    // A room nobody is in: empty details.
    bob.send_json(json!({"type":"presence","room":"nowhere","details":true}));
    let p = bob.expect("presence");
    assert_eq!(p["members"], 0);
    assert_eq!(p["details"], json!([]), "{p}");
}

#[test]
fn user_joined_carries_the_info_of_a_user_who_has_one() {
    let server = Server::start(&[]);
    let (mut ann, _) = connect(&server, "/ws/r?user=ann");
    let bob_info = json!({"name":"Bob","color":"blue"});
    let (mut bob, wb) = connect(
        &server,
        &format!("/ws/r?user=bob&info={}", info_q(&bob_info)),
    );
    assert_eq!(wb["info"], bob_info);
    let uj = ann.expect("user_joined");
    assert_eq!(
        (uj["room"].as_str(), uj["user"].as_str()),
        (Some("r"), Some("bob"))
    );
    assert_eq!(uj["members"], 2);
    assert_eq!(uj["info"], bob_info, "{uj}");

    // Joining by a message announces the info too.
    let carol_info = json!({"name":"Carol","tags":["x",1]});
    let (mut carol, _) = connect(
        &server,
        &format!("/ws?user=carol&info={}", info_q(&carol_info)),
    );
    carol.send_json(json!({"type":"join","room":"r","ref":1}));
    let j = carol.expect("joined");
    assert_eq!(j["members"], 3);
    assert!(!has_key(&j, "details"), "{j}");
    for c in [&mut ann, &mut bob] {
        let uj = c.expect("user_joined");
        assert_eq!(uj["user"], "carol");
        assert_eq!(uj["info"], carol_info, "{uj}");
    }
}

#[test]
fn bad_info_is_refused_at_the_handshake_with_400() {
    let server = Server::start(&["--max-info-bytes", "64"]);
    let refused = |path: &str, why: &str| {
        let (status, body) = server.http(&upgrade_request(path));
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body.contains("info"), "{why}: the body names info: {body}");
    };
    refused("/ws?user=u&info=%7Bnope", "not JSON");
    refused(&format!("/ws?user=u&info={}", enc("[1]")), "an array");
    refused(&format!("/ws?user=u&info={}", enc("\"x\"")), "a string");
    refused(&format!("/ws?user=u&info={}", enc("42")), "a number");
    let big = object_of_len(100);
    refused(&format!("/ws?user=u&info={}", enc(&big)), "100 bytes");
    refused(
        &format!("/ws/r?user=u&info={}", enc(&big)),
        "100 bytes, URL room",
    );
    let just_over = object_of_len(65);
    refused(&format!("/ws?user=u&info={}", enc(&just_over)), "65 bytes");
    assert_eq!(server.stats()["total_connections"], 0);

    // Within the limit (and at it) the connection opens with its info.
    let mut open = Vec::new();
    for n in [60, 64] {
        let text = object_of_len(n);
        let (c, w) = connect(&server, &format!("/ws?user=u{n}&info={}", enc(&text)));
        let info: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(w["info"], info, "{n} bytes");
        open.push(c);
    }
    assert_eq!(server.get("/healthz").0, 200, "the daemon still serves");
    assert_eq!(server.stats()["total_connections"], 2);
}

#[test]
fn token_info_claim_is_trusted_and_query_info_refused_with_jwt() {
    let server = Server::start(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--max-info-bytes",
        "64",
    ]);
    let exp = now_ms() / 1000 + 600;
    let token = |claims: Value| sign_hs256(&claims, None, SECRET.as_bytes());

    let good = token(json!({"sub":"cat","exp":exp,"info":{"name":"Cat"}}));
    let (_cat, w) = connect(&server, &format!("/ws?token={good}"));
    assert_eq!(w["user"], "cat");
    assert_eq!(w["info"], json!({"name":"Cat"}), "{w}");
    assert_recent(&w["connected_at"], "connected_at");

    let plain = token(json!({"sub":"dog","exp":exp}));
    let (_dog, w) = connect(&server, &format!("/ws?token={plain}"));
    assert!(!has_key(&w, "info"), "no claim, no info: {w}");

    let big: Value = serde_json::from_str(&object_of_len(100)).unwrap();
    for (bad, why) in [
        (json!("nope"), "a string"),
        (json!([1]), "an array"),
        (big, "over --max-info-bytes"),
    ] {
        let t = token(json!({"sub":"cat","exp":exp,"info":bad}));
        let (status, body) = server.http(&upgrade_request(&format!("/ws?token={t}")));
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains("info"), "{why}: the body names info: {body}");
    }

    // Info comes from the token only.
    let query = format!(
        "/ws?token={good}&info={}",
        info_q(&json!({"name":"Mallory"}))
    );
    let (status, body) = server.http(&upgrade_request(&query));
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.stats()["total_connections"], 2);
}

#[test]
fn most_recently_opened_connection_gives_the_users_info() {
    let server = Server::start(&[]);
    let info_a = json!({"device":"A"});
    let info_b = json!({"device":"B"});
    let (_ann1, _) = connect(&server, &format!("/ws/r?user=ann&info={}", info_q(&info_a)));
    let (ann2, _) = connect(&server, &format!("/ws/r?user=ann&info={}", info_q(&info_b)));
    let (mut watcher, _) = connect(&server, "/ws?user=watcher");

    let p = presence_details(&mut watcher, "r");
    assert_eq!(p["members"], 1);
    let ann = detail_of(&p, "ann");
    assert_eq!(ann["info"], info_b, "the newest connection's info: {p}");
    assert_eq!(ann["connections"], 2);
    let since = assert_recent(&ann["since"], "since");

    ann2.close();
    server.wait_stats("ann's second connection gone", |s| {
        s["connections_by_user"]["ann"] == 1
    });
    let p = presence_details(&mut watcher, "r");
    let ann = detail_of(&p, "ann");
    assert_eq!(ann["info"], info_a, "back to the one still open: {p}");
    assert_eq!(ann["connections"], 1);
    assert_eq!(ann["since"], since, "the first connection is still there");

    // A newer connection without info (even outside the room) leaves the user without.
    let (ann3, _) = connect(&server, "/ws?user=ann");
    let p = presence_details(&mut watcher, "r");
    let ann = detail_of(&p, "ann");
    assert!(!has_key(ann, "info"), "the newest connection has none: {p}");
    assert_eq!(ann["connections"], 1, "ann3 is not in r");

    ann3.close();
    server.wait_stats("ann's third connection gone", |s| {
        s["connections_by_user"]["ann"] == 1
    });
    let p = presence_details(&mut watcher, "r");
    assert_eq!(detail_of(&p, "ann")["info"], info_a, "{p}");
}

#[test]
fn details_are_bounded_by_the_member_list_limit() {
    let server = Server::start(&["--member-list-limit", "2"]);
    let _a = server.joined("/ws/big?user=a");
    let _b = server.joined("/ws/big?user=b");
    let mut c = server.joined("/ws?user=c");
    c.send_json(json!({"type":"join","room":"big","details":true,"ref":"j"}));
    let j = c.expect("joined");
    assert_eq!(j["room"], "big");
    assert_eq!(j["ref"], "j");
    assert_eq!(j["members"], 3);
    assert_eq!(j["truncated"], true);
    assert_eq!(j["users"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["details"].as_array().map(Vec::len), Some(2), "{j}");
    assert_details_follow_users(&j);
    for d in j["details"].as_array().unwrap() {
        assert_eq!(d["connections"], 1, "{j}");
        assert_recent(&d["since"], "since");
    }

    let p = presence_details(&mut c, "big");
    assert_eq!(p["members"], 3);
    assert_eq!(p["truncated"], true);
    assert_eq!(p["details"].as_array().map(Vec::len), Some(2), "{p}");
}

#[test]
fn api_user_view_lists_each_connection_with_times_rooms_address_and_route() {
    let server = Server::start(&["--api-key", API_KEY]);
    let info = json!({"name":"Ann","device":"phone"});
    let (mut a1, w1) = connect(
        &server,
        &format!("/ws/alpha?user=ann&info={}", info_q(&info)),
    );
    let (mut a2, w2) = connect(&server, "/ws?user=ann");
    a2.send_json(json!({"type":"join","room":"beta"}));
    a2.expect("joined");

    let view = api_get(&server, "/api/users/ann");
    assert_eq!(view["user"], "ann");
    assert_eq!(view["online"], true);
    assert_eq!(view["connections"], 2);
    let mut rooms: Vec<&str> = view["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rooms.sort_unstable();
    assert_eq!(rooms, ["alpha", "beta"], "{view}");
    assert_eq!(view["details"].as_array().map(Vec::len), Some(2), "{view}");

    let d1 = conn_detail(&view, &w1["connection_id"]);
    let d2 = conn_detail(&view, &w2["connection_id"]);
    for (d, w, c, what) in [(d1, &w1, &a1, "first"), (d2, &w2, &a2, "second")] {
        let at = assert_recent(&d["connected_at"], "connected_at");
        assert_eq!(
            d["connected_at"], w["connected_at"],
            "{what}: as in welcome"
        );
        let seen = assert_recent(&d["last_seen"], "last_seen");
        assert!(seen >= at, "{what}: last_seen {seen} < connected_at {at}");
        assert_eq!(d["route"], "/ws", "{what}: {d}");
        let addr = d["remote_addr"].as_str().expect("remote_addr");
        assert!(addr.starts_with("127.0.0.1:"), "{what}: {addr}");
        let local = c.ws.get_ref().local_addr().unwrap().to_string();
        assert_eq!(addr, local, "{what}: the client's own address");
    }
    assert_eq!(d1["rooms"], json!(["alpha"]), "{view}");
    assert_eq!(d1["url_room"], "alpha", "{view}");
    assert_eq!(d1["info"], info, "{view}");
    assert_eq!(d2["rooms"], json!(["beta"]), "{view}");
    assert!(
        has_key(d2, "url_room") && d2["url_room"].is_null(),
        "{view}"
    );
    assert!(!has_key(d2, "info"), "{view}");

    // A frame on the first connection moves its last_seen, not the other's.
    let seen1 = d1["last_seen"].as_u64().unwrap();
    let seen2 = d2["last_seen"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    a1.sync();
    let view = api_get(&server, "/api/users/ann");
    let d1 = conn_detail(&view, &w1["connection_id"]);
    let d2 = conn_detail(&view, &w2["connection_id"]);
    assert!(d1["last_seen"].as_u64().unwrap() > seen1, "{view}");
    assert_eq!(d2["last_seen"].as_u64(), Some(seen2), "{view}");

    // Leaving the URL room: url_room goes back to null.
    a1.send_json(json!({"type":"leave","room":"alpha"}));
    a1.expect("left");
    let view = api_get(&server, "/api/users/ann");
    let d1 = conn_detail(&view, &w1["connection_id"]);
    assert!(
        has_key(d1, "url_room") && d1["url_room"].is_null(),
        "{view}"
    );
    assert_eq!(d1["rooms"], json!([]), "{view}");

    let nobody = api_get(&server, "/api/users/nobody");
    assert_eq!(nobody["online"], false);
    assert_eq!(nobody["connections"], 0);
    assert_eq!(nobody["details"], json!([]), "{nobody}");
}

#[test]
fn api_room_view_lists_users_with_info_and_connection_counts() {
    let server = Server::start(&["--api-key", API_KEY]);
    let old = json!({"v":1});
    let new = json!({"v":2});
    let (_a1, _) = connect(&server, &format!("/ws/room?user=ann&info={}", info_q(&old)));
    let (_a2, _) = connect(&server, &format!("/ws/room?user=ann&info={}", info_q(&new)));
    let (_b, _) = connect(&server, "/ws/room?user=bob");

    let view = api_get(&server, "/api/rooms/room");
    assert_eq!(view["room"], "room");
    assert_eq!(view["members"], 2);
    assert_eq!(view["connections"], 3);
    assert_eq!(view["truncated"], false);
    assert_details_follow_users(&view);
    assert_eq!(view["details"].as_array().map(Vec::len), Some(2), "{view}");
    let ann = detail_of(&view, "ann");
    assert_eq!(ann["connections"], 2);
    assert_eq!(ann["info"], new, "the newest connection's info: {view}");
    let ann_since = assert_recent(&ann["since"], "ann's since");
    let bob = detail_of(&view, "bob");
    assert_eq!(bob["connections"], 1);
    assert!(!has_key(bob, "info"), "{view}");
    let bob_since = assert_recent(&bob["since"], "bob's since");
    assert!(ann_since <= bob_since, "ann entered first: {view}");

    let view = api_get(&server, "/api/rooms/room?limit=1");
    assert_eq!(view["members"], 2);
    assert_eq!(view["truncated"], true);
    assert_eq!(view["users"].as_array().map(Vec::len), Some(1), "{view}");
    assert_details_follow_users(&view);

    let empty = api_get(&server, "/api/rooms/empty");
    assert_eq!(empty["members"], 0);
    assert_eq!(empty["details"], json!([]), "{empty}");
}
