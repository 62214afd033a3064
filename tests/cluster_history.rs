//! History and recovery in cluster mode, end to end: real `redis-server`
//! processes, two or three real daemons on loopback, real clients. Every
//! message exactly once and in order while a client's connection is cut
//! and it rejoins on another node; the limits; a killed node; a node that
//! lost messages on its Redis link fills the gap; Redis losing a room's
//! history is a new epoch; the history request and the API; the JS client
//! in Chromium across a daemon restart.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    cut, next_message, read_across_cuts, read_on, spawn_publisher, Client, Redis, Server,
};

const API_KEY: &str = "cluster-test-api-key-0123456789";

fn node(redis: &Redis, extra: &[&str]) -> Server {
    support::cluster_node(&redis.url(), API_KEY, extra)
}

fn join(c: &mut Client, room: &str, since: Option<&(String, u64)>) -> Value {
    support::join_since(c, room, since)
}

fn publish_at(addr: SocketAddr, room: &str, data: Value) {
    support::publish_at(addr, API_KEY, room, data);
}

#[test]
fn every_message_arrives_once_in_order_while_the_reader_moves_between_three_nodes() {
    const TOTAL: u64 = 1500;
    let redis = Redis::start();
    // A reader on a slow machine may fall far behind before a cut.
    let flags = [
        "--history-size",
        "5000",
        "--rate-limit",
        "0",
        "--max-recover",
        "5000",
    ];
    let nodes = [
        node(&redis, &flags),
        node(&redis, &flags),
        node(&redis, &flags),
    ];
    let mut reader = nodes[0].joined("/ws?user=reader");
    let joined = join(&mut reader, "feed", None);
    let mut place = (joined["epoch"].as_str().unwrap().to_string(), 0);
    // Four of five from a client on one node, one through another's API.
    let (ws, api) = (nodes[1].addr, nodes[2].addr);
    let publisher = spawn_publisher(ws, api, API_KEY, "feed", TOTAL, 5, 3);
    let mut seen = vec![false; TOTAL as usize];
    let cuts = read_across_cuts(
        reader,
        "feed",
        &mut place,
        &mut seen,
        80,
        0x9e37_79b9_7f4a_7c15,
        |cuts| nodes[cuts % 3].joined("/ws?user=reader"),
    );
    publisher.join().unwrap();
    assert!(seen.iter().all(|&s| s));
    assert!(cuts >= 15, "only {cuts} cuts");
}

#[test]
fn a_gap_over_the_history_or_max_recover_is_not_recovered() {
    let redis = Redis::start();
    let flags = ["--history-size", "10", "--max-recover", "5"];
    let (n1, n2) = (node(&redis, &flags), node(&redis, &flags));
    let mut ann = n1.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", None);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    let mut seq = 0;
    for (missed, recovers) in [(7, false), (3, true), (12, false)] {
        cut(ann);
        for _ in 0..missed {
            publish_at(n1.addr, "r", json!({"i": 0}));
        }
        ann = n2.joined("/ws?user=ann");
        let joined = join(&mut ann, "r", Some(&(epoch.clone(), seq)));
        seq += missed;
        assert_eq!(joined["seq"], seq, "{joined}");
        assert_eq!(joined["recovered"], recovers, "{missed} missed: {joined}");
        if recovers {
            for expected in seq - missed + 1..=seq {
                assert_eq!(next_message(&mut ann)["seq"], expected);
            }
        }
        ann.send_json(json!({"type": "ping"}));
        assert_eq!(ann.recv_json()["type"], "pong", "nothing else was replayed");
    }
    let stats = n2.stats_with_key(Some(API_KEY));
    assert_eq!(stats["history"]["recovered"], 1, "{}", stats["history"]);
    assert_eq!(stats["history"]["not_recovered"], 2);
}

#[test]
fn a_client_on_a_killed_node_recovers_on_another() {
    let redis = Redis::start();
    let flags = ["--history-size", "100"];
    let (mut n1, n2) = (node(&redis, &flags), node(&redis, &flags));
    let mut ann = n1.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", None);
    let mut place = (joined["epoch"].as_str().unwrap().to_string(), 0);
    publish_at(n2.addr, "r", json!({"i": 0}));
    let mut seen = vec![false; 10];
    read_on(&mut ann, &mut place, 1, &mut seen);
    n1.signal_and_wait(libc::SIGKILL);
    for i in 1..10 {
        publish_at(n2.addr, "r", json!({"i": i}));
    }
    let mut ann = n2.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", Some(&place));
    assert_eq!(joined["recovered"], true, "{joined}");
    read_on(&mut ann, &mut place, 9, &mut seen);
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn a_node_that_lost_messages_on_its_redis_link_fills_the_gap() {
    let redis = Redis::start();
    let flags = ["--history-size", "10000"];
    let (n1, n2) = (node(&redis, &flags), node(&redis, &flags));
    let mut ann = n1.joined("/ws?user=ann");
    let joined = join(&mut ann, "g", None);
    let mut place = (joined["epoch"].as_str().unwrap().to_string(), 0);
    const TOTAL: u64 = 600;
    let api = n2.addr;
    let publisher = std::thread::spawn(move || {
        for i in 0..TOTAL {
            publish_at(api, "g", json!({"i": i}));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut seen = vec![false; TOTAL as usize];
    read_on(&mut ann, &mut place, 50, &mut seen);
    // n1's subscriber link dropped mid-stream (the one with the most
    // channels: n2 holds no client): what is published until it is back
    // never reaches n1 on it.
    let list = redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let field = |line: &str, name: &str| -> u64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let n1_sub = list
        .lines()
        .max_by_key(|l| field(l, "sub="))
        .map(|l| field(l, "id="))
        .unwrap();
    let killed = redis.cli(&["CLIENT", "KILL", "ID", &n1_sub.to_string()]);
    assert_eq!(killed.trim(), "1", "{list}");
    read_on(&mut ann, &mut place, TOTAL - 50, &mut seen);
    publisher.join().unwrap();
    assert!(seen.iter().all(|&s| s));
    let stats = n1.stats_with_key(Some(API_KEY));
    assert!(
        stats["history"]["gaps_filled"].as_u64() >= Some(1),
        "{}",
        stats["history"]
    );
    assert_eq!(stats["history"]["gap_closes"], 0);
}

#[test]
fn redis_losing_the_history_is_a_new_epoch_and_members_rejoin() {
    let redis = Redis::start();
    let flags = ["--history-size", "100"];
    let (n1, n2) = (node(&redis, &flags), node(&redis, &flags));
    let mut ann = n1.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", None);
    let old = (joined["epoch"].as_str().unwrap().to_string(), 0);
    publish_at(n2.addr, "r", json!({"i": 0}));
    assert_eq!(next_message(&mut ann)["seq"], 1);
    let flushed = redis.cli(&["FLUSHALL"]);
    assert_eq!(flushed.trim(), "OK");
    publish_at(n2.addr, "r", json!({"i": 1}));
    assert_eq!(
        ann.close_code(),
        4103,
        "its place is of a history that is gone"
    );
    let mut ann = n1.joined("/ws?user=ann");
    let joined = join(&mut ann, "r", Some(&(old.0.clone(), 1)));
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_ne!(joined["epoch"].as_str(), Some(old.0.as_str()));
}

#[test]
fn the_history_request_and_the_api_read_from_redis() {
    let redis = Redis::start();
    let flags = ["--history-size", "5", "--history-rooms", "chat:*"];
    let (n1, n2) = (node(&redis, &flags), node(&redis, &flags));
    for i in 1..=7 {
        publish_at(n1.addr, "chat:1", json!({"n": i}));
    }
    let mut ann = n2.joined("/ws?user=ann");
    ann.send_json(json!({"type": "history", "room": "chat:1", "limit": 2, "ref": 1}));
    let h = ann.expect("history");
    assert_eq!(
        (h["seq"].as_u64(), h["ref"].as_u64()),
        (Some(7), Some(1)),
        "{h}"
    );
    let seqs = |h: &Value| -> Vec<u64> {
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&h), [6, 7]);
    assert_eq!(h["messages"][0]["data"], json!({"n": 6}));
    assert_eq!(h["truncated"], true);
    ann.send_json(json!({"type": "history", "room": "chat:1"}));
    let all = ann.expect("history");
    assert_eq!(
        (seqs(&all), all["truncated"].as_bool()),
        (vec![3, 4, 5, 6, 7], Some(false))
    );
    ann.send_json(json!({"type": "history", "room": "chat:2"}));
    assert!(ann.expect("history")["epoch"].is_null());
    let e = ann.expect_error(json!({"type": "history", "room": "other"}), "no_history");
    assert!(e["message"].is_string());
    let epoch = h["epoch"].as_str().unwrap();
    let path = format!("/api/history/chat%3A1?epoch={epoch}&seq=4");
    let (status, body) = n1.api("GET", &path, Some(API_KEY), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (seqs(&body), body["truncated"].as_bool()),
        (vec![5, 6, 7], Some(false))
    );
    let (status, body) = n1.api("GET", "/api/history/other", Some(API_KEY), "");
    assert_eq!((status, body["error"].as_str()), (404, Some("no_history")));
    let (status, _) = n1.api("GET", "/api/history/chat:1?seq=1", Some(API_KEY), "");
    assert_eq!(status, 400);
}

#[test]
fn the_js_client_in_chromium_loses_nothing_across_a_daemon_restart() {
    support::need_browser_tools();
    let redis = Redis::start();
    let url = redis.url();
    support::drive_node(
        "history_browser.mjs",
        &[
            "--cluster",
            &url,
            "--history-size",
            "1000",
            "--max-recover",
            "1000",
            "--api-key",
            API_KEY,
        ],
        &[API_KEY, "restart"],
    );
}
