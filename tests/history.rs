//! End to end on one node: room history and recovery against the real
//! daemon over loopback — every message exactly once, in order, across many
//! cut connections while a publisher keeps going; recovery refused whole
//! over the limits; a restart is a new epoch; the API and the counters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const API_KEY: &str = "api-key-0123456789abcdef";

fn join(c: &mut Client, room: &str, since: Option<&(String, u64)>) -> Value {
    join_since(c, room, since)
}

fn publish(server: &Server, room: &str, data: Value) {
    publish_at(server.addr, room, data);
}

fn publish_at(addr: SocketAddr, room: &str, data: Value) {
    support::publish_at(addr, API_KEY, room, data);
}

#[test]
fn every_message_arrives_once_and_in_order_across_many_cut_connections() {
    const TOTAL: u64 = 3000;
    let server = Server::start(&[
        "--history-size",
        "5000",
        "--api-key",
        API_KEY,
        "--rate-limit",
        "0",
        // A reader on a slow machine may fall far behind before a cut.
        "--max-recover",
        "5000",
    ]);
    let mut sub = server.joined("/ws?user=sub");
    let joined = join(&mut sub, "feed", None);
    let mut place = (joined["epoch"].as_str().unwrap().to_string(), 0u64);
    assert_eq!(joined["seq"], 0);
    // Nine of ten from a client, one through the API, about a second in
    // all: the subscriber's cuts and rejoins happen while messages come.
    let publisher = spawn_publisher(server.addr, server.addr, API_KEY, "feed", TOTAL, 10, 4);
    let mut seen = vec![false; TOTAL as usize];
    let cuts = read_across_cuts(sub, "feed", &mut place, &mut seen, 120, 0x2545_f491, |_| {
        server.joined("/ws?user=sub")
    });
    assert!(seen.iter().all(|&s| s), "every message arrived");
    assert!(cuts >= 20, "only {cuts} cuts");
    publisher.join().unwrap();
    let stats = server.stats_with_key(Some(API_KEY));
    assert!(
        stats["history"]["recovered"].as_u64().unwrap() >= 20,
        "{}",
        stats["history"]
    );
    assert_eq!(stats["history"]["not_recovered"], 0);
    assert_eq!(stats["history"]["messages"], TOTAL);
}

#[test]
fn a_gap_over_the_history_or_over_max_recover_is_not_recovered_and_nothing_is_replayed() {
    let server = Server::start(&[
        "--history-size",
        "10",
        "--max-recover",
        "5",
        "--api-key",
        API_KEY,
    ]);
    let mut ann = server.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", None);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    let mut seq = 0;
    let mut miss = |n: u64, ann: Client| {
        cut(ann);
        for _ in 0..n {
            publish(&server, "r", json!("x"));
        }
        let mut ann = server.joined("/ws?user=ann");
        let joined = join(&mut ann, "r", Some(&(epoch.clone(), seq)));
        seq += n;
        assert_eq!(joined["seq"], seq);
        (joined["recovered"].as_bool().unwrap(), ann)
    };
    let (recovered, mut ann) = miss(7, ann);
    assert!(!recovered, "7 missed, max-recover 5");
    ann.sync(); // nothing came between the joined and the pong
    let (recovered, mut ann) = miss(3, ann);
    assert!(recovered);
    for expected in 8..=10 {
        assert_eq!(ann.expect("message")["seq"], expected);
    }
    ann.sync();
    let (recovered, mut ann) = miss(12, ann);
    assert!(!recovered, "12 missed, 10 held");
    ann.sync();
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("switchboard_recoveries_total{recovered=\"false\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_recoveries_total{recovered=\"true\"} 1"));
    assert!(metrics.contains("switchboard_history_messages 10"));
}

#[test]
fn a_restart_is_a_new_epoch_and_recovery_says_so() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let flags = ["--history-size", "10", "--listen", listen.as_str()];
    let mut server = Server::start(&flags);
    let mut ann = server.joined("/ws?user=ann");
    let bob = server.joined("/ws/r?user=bob");
    let first = join(&mut ann, "r", None);
    drop(bob);
    server.signal_and_wait(libc::SIGTERM);
    let server = Server::start(&flags);
    let mut ann = server.joined("/ws?user=ann");
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let joined = join(&mut ann, "r", Some(&(epoch, 0)));
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_ne!(joined["epoch"], first["epoch"]);
    assert_eq!(joined["seq"], 0);
}

#[test]
fn the_history_request_and_the_api_give_the_latest_messages() {
    let server = Server::start(&[
        "--history-size",
        "5",
        "--history-rooms",
        "chat:*",
        "--api-key",
        API_KEY,
    ]);
    for i in 1..=7 {
        publish(&server, "chat:1", json!({"n": i}));
    }
    let mut ann = server.joined("/ws?user=ann");
    ann.send_json(json!({"type": "history", "room": "chat:1", "limit": 2, "ref": 1}));
    let h = ann.expect("history");
    assert_eq!((h["seq"].as_u64(), h["ref"].as_u64()), (Some(7), Some(1)));
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    assert_eq!(h["messages"][0]["data"], json!({"n": 6}));
    assert_eq!(h["truncated"], true);
    let e = ann.expect_error(json!({"type": "history", "room": "other"}), "no_history");
    assert!(e["message"].as_str().unwrap().contains("history"));
    let epoch = h["epoch"].as_str().unwrap();
    let path = format!("/api/history/chat%3A1?epoch={epoch}&seq=4");
    let (status, body) = server.api("GET", &path, Some(API_KEY), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.get("type").is_none());
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (seqs, body["truncated"].as_bool()),
        (vec![5, 6, 7], Some(false))
    );
    let (status, _) = server.api("GET", &path, None, "");
    assert_eq!(status, 401);
    let (status, body) = server.api("GET", "/api/history/other", Some(API_KEY), "");
    assert_eq!((status, body["error"].as_str()), (404, Some("no_history")));
    let (status, body) = server.api(
        "GET",
        "/api/history/chat:1?seq=x&epoch=e",
        Some(API_KEY),
        "",
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = server.api("GET", "/api/history/chat:1?seq=1", Some(API_KEY), "");
    assert_eq!(status, 400, "seq without epoch");
    let (status, _) = server.api("POST", "/api/history/chat:1", Some(API_KEY), "");
    assert_eq!(status, 405);
}

#[test]
fn the_js_client_in_chromium_loses_nothing_across_cut_connections() {
    support::need_browser_tools();
    support::drive_node(
        "history_browser.mjs",
        &[
            "--history-size",
            "1000",
            "--max-recover",
            "1000",
            "--api-key",
            API_KEY,
        ],
        &[API_KEY, "cut"],
    );
}

#[test]
fn the_rust_client_loses_nothing_across_cut_connections() {
    use switchboard::client::{Client as RustClient, ClientConfig, Event};
    const TOTAL: u64 = 600;
    let server = Server::start(&[
        "--history-size",
        "1000",
        "--max-recover",
        "1000",
        "--api-key",
        API_KEY,
    ]);
    let mut config = ClientConfig::new(server.url("/ws?user=reader"));
    config.min_delay = Duration::from_millis(20);
    config.max_delay = Duration::from_millis(200);
    let (reader, events) = RustClient::connect(config);
    let first = reader.join("feed").unwrap();
    assert_eq!(first["seq"], 0);
    let addr = server.addr;
    let publisher = std::thread::spawn(move || {
        for n in 0..TOTAL {
            publish_at(addr, "feed", json!({"n": n}));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut list = Vec::new();
    let mut rejoins = Vec::new();
    while (list.len() as u64) < TOTAL {
        let event = events.recv_timeout(WAIT).expect("an event");
        let Event::Message(m) = event else { continue };
        match m["type"].as_str() {
            Some("message") => {
                list.push(m["data"]["n"].as_u64().unwrap());
                if list.len() % 100 == 50 {
                    let body = r#"{"user":"reader","code":4150,"reason":"cut"}"#;
                    let (status, _) = server.api("POST", "/api/disconnect", Some(API_KEY), body);
                    assert_eq!(status, 200);
                }
            }
            Some("joined") => rejoins.push(m),
            _ => {}
        }
    }
    publisher.join().unwrap();
    assert_eq!(
        list,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // The first is the answer to `join` above, also given as an event.
    let rejoins = &rejoins[1..];
    assert!(rejoins.len() >= 5, "{rejoins:?}");
    assert!(
        rejoins
            .iter()
            .all(|j| j["recovered"] == true && j["epoch"] == first["epoch"]),
        "{rejoins:?}"
    );
    reader.close();
}
