//! Cluster mode end to end: real `redis-server` processes and two or three
//! real daemons on loopback, real WebSocket clients. One test per rule of
//! issue 11 (cross-node routing, presence, the cap, one order, dead nodes,
//! Redis down, deaf subscribers, shards, SO_REUSEPORT).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Client, Redis, Server};

const API_KEY: &str = "cluster-test-api-key-0123456789";

/// A node of the cluster over `urls`, waited on until its shards are up.
fn node(urls: &str, extra: &[&str]) -> Server {
    support::cluster_node(urls, API_KEY, extra)
}

fn wait_up(server: &Server) {
    support::wait_cluster_up(server, API_KEY);
}

/// Until every node counts `n` live nodes.
fn wait_nodes(nodes: &[&Server], n: u64) {
    for s in nodes {
        s.wait_stats_with_key(Some(API_KEY), "live nodes", |st| {
            st["cluster"]["nodes"] == n
        });
    }
}

fn api(server: &Server, path: &str, body: &str) -> Value {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = server.http(&req);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metrics(server: &Server) -> String {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n");
    server.http(&req).1
}

fn join(c: &mut Client, room: &str) -> Value {
    c.send_json(json!({"type": "join", "room": room}));
    c.expect("joined")
}

/// Round trip a ping, skipping presence events before the pong.
fn settle(c: &mut Client) {
    c.send_json(json!({"type": "ping", "ref": "settle"}));
    assert_eq!(next_data(c)["type"], "pong");
}

/// The next message that is not a presence event.
fn next_data(c: &mut Client) -> Value {
    loop {
        let v = c.recv_json();
        if v["type"] != "user_joined" && v["type"] != "user_left" {
            return v;
        }
    }
}

#[test]
fn messages_typing_private_broadcast_and_the_api_cross_nodes() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut ann = n1.joined("/ws?user=ann");
    let mut bob = n2.joined("/ws?user=bob");
    let mut bob2 = n1.joined("/ws?user=bob");
    join(&mut ann, "r");
    let j = join(&mut bob, "r");
    assert_eq!(j["members"], 2, "{j}");
    assert_eq!(ann.expect("user_joined")["user"], "bob");

    ann.send_json(json!({"type": "message", "room": "r", "data": {"n": 1}}));
    let m = bob.expect("message");
    assert_eq!(
        (m["from"].as_str(), m["data"]["n"].as_i64()),
        (Some("ann"), Some(1))
    );
    bob.send_json(json!({"type": "typing", "room": "r"}));
    assert_eq!(ann.expect("typing")["user"], "bob");

    // A private reaches every device, on both nodes; none to the sender.
    ann.send_json(json!({"type": "private", "to": "bob", "data": "psst"}));
    for c in [&mut bob, &mut bob2] {
        let p = c.expect("private");
        assert_eq!(
            (p["from"].as_str(), p["data"].as_str()),
            (Some("ann"), Some("psst"))
        );
    }
    // Offline everywhere: user_offline, with the ref.
    ann.send_json(json!({"type": "private", "to": "nobody", "data": 1, "ref": 7}));
    let e = ann.expect("error");
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_i64()),
        (Some("user_offline"), Some(7))
    );

    bob.send_json(json!({"type": "broadcast", "data": "all"}));
    assert_eq!(ann.expect("broadcast")["data"], "all");
    assert_eq!(bob2.expect("broadcast")["data"], "all");

    // The server API on either node reaches clients on both.
    api(&n2, "/api/publish", r#"{"room":"r","data":"from-api"}"#);
    for c in [&mut ann, &mut bob] {
        let m = c.expect("message");
        assert_eq!(
            (m["data"].as_str(), m["from"].is_null()),
            (Some("from-api"), true)
        );
    }
    api(&n2, "/api/send", r#"{"user":"ann","data":"direct"}"#);
    assert_eq!(ann.expect("private")["data"], "direct");
    api(&n1, "/api/broadcast", r#"{"data":"b"}"#);
    for c in [&mut ann, &mut bob, &mut bob2] {
        assert_eq!(c.expect("broadcast")["data"], "b");
    }
    api(
        &n2,
        "/api/disconnect",
        r#"{"user":"bob","code":4005,"reason":"bye"}"#,
    );
    assert_eq!(bob.close_code(), 4005);
    assert_eq!(bob2.close_code(), 4005);
    let left = ann.expect("user_left");
    assert_eq!(
        (left["user"].as_str(), left["members"].as_u64()),
        (Some("bob"), Some(1))
    );
    ann.sync();
}

#[test]
fn presence_is_per_user_over_the_whole_cluster() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut ann = n1.joined("/ws/room?user=ann&info=%7B%22name%22%3A%22Ann%22%7D");
    let mut bob = n2.client("/ws/room?user=bob");
    bob.expect("welcome");
    let j = bob.expect("joined");
    assert_eq!(j["members"], 2, "{j}");
    let mut users: Vec<String> = j["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    let e = ann.expect("user_joined");
    assert_eq!(
        (e["user"].as_str(), e["members"].as_u64()),
        (Some("bob"), Some(2))
    );

    // presence with details sees every node: connections, since, info.
    bob.send_json(json!({"type": "presence", "room": "room", "details": true, "ref": 1}));
    let p = bob.expect("presence");
    assert_eq!(
        (p["members"].as_u64(), p["ref"].as_i64()),
        (Some(2), Some(1))
    );
    let ann_detail = p["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == "ann")
        .cloned()
        .unwrap();
    assert_eq!(ann_detail["connections"], 1);
    assert_eq!(ann_detail["info"]["name"], "Ann");
    assert!(ann_detail["since"].as_u64().unwrap() > 1_600_000_000_000);

    // Bob's second device, on the other node: no second user_joined.
    let mut bob2 = n1.client("/ws/room?user=bob");
    bob2.expect("welcome");
    assert_eq!(bob2.expect("joined")["members"], 2);
    bob.send_json(json!({"type": "presence", "room": "room", "details": true}));
    let p = bob.expect("presence");
    let bob_detail = p["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(bob_detail["connections"], 2, "{p}");
    // One device leaves: bob is still there.
    bob.send_json(json!({"type": "leave", "room": "room", "ref": 2}));
    let l = bob.expect("left");
    assert_eq!(
        (l["members"].as_u64(), l["ref"].as_i64()),
        (Some(2), Some(2))
    );
    ann.sync();
    // The last one closes: one user_left, on the other node.
    bob2.close();
    let e = ann.expect("user_left");
    assert_eq!(
        (e["user"].as_str(), e["members"].as_u64()),
        (Some("bob"), Some(1))
    );
    ann.send_json(json!({"type": "presence", "room": "room"}));
    assert_eq!(ann.expect("presence")["users"], json!(["ann"]));
    ann.expect_silence(Duration::from_millis(300));
    drop(bob);

    // Everyone gone: Redis holds no presence.
    ann.close();
    let deadline = Instant::now() + support::WAIT;
    loop {
        let keys = redis.cli(&["--scan", "--pattern", "switchboard:r*"]);
        if keys.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "presence left in Redis: {keys}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_per_user_cap_counts_every_node() {
    let redis = Redis::start();
    let flags = ["--max-connections-per-user", "2"];
    let (n1, n2) = (node(&redis.url(), &flags), node(&redis.url(), &flags));
    let _a = n1.joined("/ws?user=cap");
    let _b = n2.joined("/ws?user=cap");
    let mut third = n1.client("/ws/r?user=cap");
    assert_eq!(third.close_code(), 1008);
    let mut fourth = n2.client("/ws?user=cap");
    assert_eq!(fourth.close_code(), 1008);
    // One closes: there is room again, on either node.
    drop(_b);
    let deadline = Instant::now() + support::WAIT;
    loop {
        let mut c = n2.client("/ws?user=cap");
        if c.recv_json()["type"] == "welcome" {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_member_sees_one_order() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut senders = [n1.joined("/ws/o?user=s1"), n2.joined("/ws/o?user=s2")];
    let mut readers = [
        n1.joined("/ws/o?user=r1"),
        n2.joined("/ws/o?user=r2"),
        n2.joined("/ws/o?user=r3"),
    ];
    for c in senders.iter_mut().chain(readers.iter_mut()) {
        settle(c);
    }
    const N: usize = 300;
    for i in 0..N {
        for (s, c) in senders.iter_mut().enumerate() {
            c.send_json(json!({"type": "message", "room": "o", "data": [s, i]}));
        }
    }
    let mut seen: Vec<Vec<(u64, u64)>> = Vec::new();
    for r in readers.iter_mut() {
        let mut got = Vec::new();
        while got.len() < 2 * N {
            let m = next_data(r);
            assert_eq!(m["type"], "message", "{m}");
            got.push((
                m["data"][0].as_u64().unwrap(),
                m["data"][1].as_u64().unwrap(),
            ));
        }
        for s in 0..2 {
            let mine: Vec<u64> = got.iter().filter(|m| m.0 == s).map(|m| m.1).collect();
            assert_eq!(
                mine,
                (0..N as u64).collect::<Vec<_>>(),
                "sender {s} out of order"
            );
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "two members saw different orders");
    assert_eq!(seen[0], seen[2], "two members saw different orders");
}

/// A node dies (`signal`): within `within`, its users who have no device
/// elsewhere are announced gone, and presence stops listing them.
fn node_death(signal: i32, within: Duration) {
    let redis = Redis::start();
    let n1 = node(&redis.url(), &[]);
    let mut n2 = node(&redis.url(), &[]);
    wait_nodes(&[&n1, &n2], 2);
    let mut ann = n1.joined("/ws/d?user=ann");
    let mut carl = n1.joined("/ws/d?user=carl");
    let _bob = n2.joined("/ws/d?user=bob");
    let _carl2 = n2.joined("/ws/d?user=carl");
    assert_eq!(ann.expect("user_joined")["user"], "carl");
    assert_eq!(ann.expect("user_joined")["user"], "bob");
    carl.expect("user_joined");
    let start = Instant::now();
    n2.signal_and_wait(signal);
    let e = ann.expect("user_left");
    assert_eq!(
        (e["user"].as_str(), e["members"].as_u64()),
        (Some("bob"), Some(2))
    );
    assert!(
        start.elapsed() < within,
        "user_left after {:?}",
        start.elapsed()
    );
    ann.send_json(json!({"type": "presence", "room": "d", "details": true}));
    let p = ann.expect("presence");
    let mut users: Vec<&str> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "carl"], "{p}");
    let carl_detail = p["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == "carl")
        .unwrap();
    assert_eq!(carl_detail["connections"], 1, "{p}");
    // No second user_left, and none for carl (still on n1).
    ann.expect_silence(Duration::from_millis(1500));
    wait_nodes(&[&n1], 1);
}

#[test]
fn a_killed_node_is_forgotten_within_15_seconds() {
    node_death(libc::SIGKILL, Duration::from_secs(15));
}

#[test]
fn a_stopped_node_is_forgotten_within_5_seconds() {
    node_death(libc::SIGTERM, Duration::from_secs(5));
}

#[test]
fn redis_down_then_back() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut ann = n1.joined("/ws/x?user=ann");
    let mut amy = n1.joined("/ws/x?user=amy");
    let bob = n2.joined("/ws/x?user=bob");
    ann.expect("user_joined");
    ann.expect("user_joined");
    amy.expect("user_joined");

    redis.stop();
    n1.wait_stats_with_key(Some(API_KEY), "cluster down", |s| {
        s["cluster"]["state"] == "down"
    });
    let (status, body) = n1.get("/healthz");
    assert_eq!(status, 200);
    assert!(body.starts_with("degraded"), "{body}");
    // Local members still hear each other.
    ann.send_json(json!({"type": "message", "room": "x", "data": "local"}));
    assert_eq!(next_data(&mut amy)["data"], "local");
    // While it is down, bob leaves and dan arrives on n2.
    drop(bob);
    let mut dan = n2.joined("/ws/x?user=dan");

    let _redis = Redis::start_on(port);
    wait_up(&n1);
    wait_up(&n2);
    assert_eq!(n1.get("/healthz").1, "ok\n");
    // Re-asserted presence: bob gone, dan there, over the whole cluster.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ann.send_json(json!({"type": "presence", "room": "x"}));
        let p = next_data(&mut ann);
        let mut users: Vec<&str> = p["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        users.sort();
        if users == ["amy", "ann", "dan"] {
            break;
        }
        assert!(Instant::now() < deadline, "presence not right again: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And messages cross nodes again.
    ann.send_json(json!({"type": "message", "room": "x", "data": "again"}));
    assert_eq!(next_data(&mut dan)["data"], "again");
    let m = metrics(&n1);
    assert!(m.contains("switchboard_cluster_reconnects_total"), "{m}");
    let reconnects = n1.stats_with_key(Some(API_KEY))["cluster"]["reconnects"]
        .as_u64()
        .unwrap();
    assert!(reconnects >= 1);
}

#[test]
fn a_killed_subscriber_connection_is_recovered() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut ann = n1.joined("/ws/k?user=ann");
    let mut bob = n2.joined("/ws/k?user=bob");
    ann.expect("user_joined");
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "{killed}");
    n1.wait_stats_with_key(Some(API_KEY), "a reconnect", |s| {
        s["cluster"]["reconnects"].as_u64() >= Some(1)
    });
    wait_up(&n1);
    wait_up(&n2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        i += 1;
        bob.send_json(json!({"type": "message", "room": "k", "data": i}));
        ann.send_json(json!({"type": "ping", "ref": i}));
        let v = next_data(&mut ann);
        if v["type"] == "message" {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy to Redis that can silently swallow what Redis sends on the
/// second connection it carries (a node's subscriber link).
struct Proxy {
    port: u16,
    swallow: Arc<AtomicBool>,
}

fn proxy(redis_port: u16) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let swallow = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let flag = swallow.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                continue;
            };
            let nth = count.fetch_add(1, Ordering::SeqCst);
            let pipe = |mut from: TcpStream, mut to: TcpStream, gate: Option<Arc<AtomicBool>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if gate.as_ref().is_some_and(|g| g.load(Ordering::SeqCst)) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            pipe(
                client.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                None,
            );
            let gate = (nth == 1).then(|| flag.clone());
            pipe(upstream, client, gate);
        }
    });
    Proxy { port, swallow }
}

#[test]
fn a_deaf_subscriber_is_detected_and_recovered() {
    let redis = Redis::start();
    let p = proxy(redis.port);
    let n1 = node(&format!("redis://127.0.0.1:{}", p.port), &[]);
    let n2 = node(&redis.url(), &[]);
    let mut ann = n1.joined("/ws/deaf?user=ann");
    let mut bob = n2.joined("/ws/deaf?user=bob");
    ann.expect("user_joined");
    // The subscriber link of n1 stays open but hears nothing any more.
    p.swallow.store(true, Ordering::SeqCst);
    let s = n1.wait_stats_with_key(Some(API_KEY), "deafness noticed", |s| {
        s["cluster"]["deaf"].as_u64() >= Some(1)
    });
    assert!(s["cluster"]["deaf"].as_u64().unwrap() >= 1);
    assert!(metrics(&n1).contains("switchboard_cluster_deaf_total 1"));
    wait_up(&n1);
    bob.send_json(json!({"type": "message", "room": "deaf", "data": "heard"}));
    assert_eq!(next_data(&mut ann)["data"], "heard");
}

#[test]
fn two_shards_share_the_rooms() {
    let (r1, r2) = (Redis::start(), Redis::start());
    let urls = format!("{},{}", r1.url(), r2.url());
    let (n1, n2) = (node(&urls, &[]), node(&urls, &[]));
    let rooms: Vec<String> = (0..8).map(|i| format!("room{i}")).collect();
    let mut ann = n1.joined("/ws?user=ann");
    let mut bob = n2.joined("/ws?user=bob");
    for room in &rooms {
        join(&mut ann, room);
        let j = join(&mut bob, room);
        assert_eq!(j["members"], 2, "{j}");
        assert_eq!(ann.expect("user_joined")["room"], room.as_str());
    }
    for room in &rooms {
        ann.send_json(json!({"type": "message", "room": room, "data": room}));
        let m = bob.expect("message");
        assert_eq!(m["data"], room.as_str());
    }
    // Both Redis servers hold some of the rooms.
    for r in [&r1, &r2] {
        let keys = r.cli(&["--scan", "--pattern", "switchboard:ru:*"]);
        assert!(!keys.trim().is_empty(), "a shard holds no room");
    }
    // Private messages go through the user's shard.
    ann.send_json(json!({"type": "private", "to": "bob", "data": 1}));
    assert_eq!(bob.expect("private")["data"], 1);
}

#[test]
fn two_processes_share_one_port_with_reuse_port() {
    let redis = Redis::start();
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = redis.url();
    let flags = [
        "--listen",
        listen.as_str(),
        "--reuse-port",
        "true",
        "--cluster",
        &url,
    ];
    let a = Server::start(&flags);
    let first = a.wait_stats("cluster up", |s| s["cluster"]["state"] == "up");
    let b = Server::start(&flags);
    assert_eq!(a.addr, b.addr);
    // The port is shared: wait until a request lands on the second process
    // and finds it up too.
    let deadline = Instant::now() + support::WAIT;
    loop {
        let s = b.stats();
        if s["node"] != first["node"] && s["cluster"]["state"] == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second process never answered up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every connection lands on one of the two (their welcomes name it),
    // and all are in one room whichever process holds them.
    let mut nodes = std::collections::HashMap::new();
    let mut clients = Vec::new();
    for i in 0..32 {
        let mut c = a.client(&format!("/ws/shared?user=u{i}"));
        let w = c.expect("welcome");
        *nodes
            .entry(w["node"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        let j = next_data(&mut c);
        assert_eq!(
            (j["type"].as_str(), j["members"].as_u64()),
            (Some("joined"), Some(i + 1)),
            "{j}"
        );
        clients.push((w["node"].as_str().unwrap().to_string(), c));
    }
    assert_eq!(nodes.len(), 2, "the kernel spread nothing: {nodes:?}");
    let first_node = clients[0].0.clone();
    let other = clients.iter().position(|(n, _)| *n != first_node).unwrap();
    clients[0]
        .1
        .send_json(json!({"type": "message", "room": "shared", "data": "across"}));
    assert_eq!(next_data(&mut clients[other].1)["data"], "across");
    drop(b);
}

#[test]
fn a_join_sent_before_the_welcome_is_kept_for_after_it() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut bob = n2.joined("/ws/early?user=bob");
    // Right after the handshake, before the welcome can have come.
    let mut ann = n1.client("/ws?user=ann");
    ann.send_json(json!({"type": "join", "room": "early", "ref": 1}));
    assert_eq!(ann.expect("welcome")["user"], "ann");
    let j = ann.expect("joined");
    assert_eq!(
        (j["members"].as_u64(), j["ref"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(bob.expect("user_joined")["user"], "ann");
}

#[test]
fn anonymous_users_on_two_nodes_are_two_users() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut a = n1.client("/ws/anon");
    let mut b = n2.client("/ws/anon");
    let ua = a.expect("welcome")["user"].as_str().unwrap().to_string();
    let ub = b.expect("welcome")["user"].as_str().unwrap().to_string();
    assert_ne!(ua, ub);
    // Two users in the room, whichever joined first; each gets its
    // `joined` before anything of the room.
    assert_eq!(next_data(&mut a)["type"], "joined");
    assert_eq!(next_data(&mut b)["type"], "joined");
    for (c, other) in [(&mut a, &ub), (&mut b, &ua)] {
        settle(c);
        c.send_json(json!({"type": "presence", "room": "anon"}));
        let p = next_data(c);
        assert_eq!(p["members"], 2, "{p}");
        assert!(
            p["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == other.as_str()),
            "{p}"
        );
    }
}

#[test]
fn a_node_taken_for_dead_comes_back_with_its_users() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut ann = n1.joined("/ws/z?user=ann");
    let mut bob = n2.joined("/ws/z?user=bob");
    ann.expect("user_joined");
    // n2 freezes past the dead-node timeout: the others forget bob.
    unsafe { libc::kill(n2.child.id() as i32, libc::SIGSTOP) };
    let e = ann.expect("user_left");
    assert_eq!(e["user"], "bob");
    unsafe { libc::kill(n2.child.id() as i32, libc::SIGCONT) };
    // Back: it finds itself forgotten (or its subscriber deaf, having
    // missed its own heartbeats) and says again what it holds.
    let e = ann.expect("user_joined");
    assert_eq!(e["user"], "bob");
    bob.send_json(json!({"type": "message", "room": "z", "data": "back"}));
    assert_eq!(next_data(&mut ann)["data"], "back");
}

fn get(server: &Server, path: &str) -> Value {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = server.http(&req);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn user_and_room_views_see_every_node() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    let mut a1 = n1.joined("/ws/v?user=ann&info=%7B%22n%22%3A1%7D");
    let mut a2 = n2.joined("/ws/w?user=ann");
    let mut bob = n2.joined("/ws/v?user=bob");
    a1.expect("user_joined");
    for c in [&mut a1, &mut a2, &mut bob] {
        settle(c);
    }
    let u = get(&n2, "/api/users/ann");
    assert_eq!(
        (u["online"].as_bool(), u["connections"].as_u64()),
        (Some(true), Some(2)),
        "{u}"
    );
    assert_eq!(u["rooms"], json!(["v", "w"]));
    let mut nodes: Vec<&str> = u["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 2, "one connection on each node: {u}");
    let on_n1 = u["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["url_room"] == "v")
        .unwrap();
    assert_eq!(on_n1["info"]["n"], 1);
    assert!(on_n1["remote_addr"].as_str().unwrap().starts_with("127."));
    let nobody = get(&n1, "/api/users/nobody");
    assert_eq!(
        (nobody["online"].as_bool(), nobody["connections"].as_u64()),
        (Some(false), Some(0))
    );

    let r = get(&n1, "/api/rooms/v?limit=1");
    assert_eq!(
        (r["members"].as_u64(), r["connections"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(
        (
            r["users"].as_array().unwrap().len(),
            r["truncated"].as_bool()
        ),
        (1, Some(true))
    );
    let r = get(&n2, "/api/rooms/v");
    let ann = r["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == "ann")
        .unwrap();
    assert_eq!(
        (ann["connections"].as_u64(), ann["info"]["n"].as_i64()),
        (Some(1), Some(1)),
        "{r}"
    );

    // The embedding Handle answers the same, from a node of its own.
    let mut config = switchboard::Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.cluster = vec![switchboard::config::RedisUrl::parse(&redis.url()).unwrap()];
    config.hub.cluster = true;
    let server = switchboard::Server::bind(config).unwrap();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());
    let deadline = Instant::now() + support::WAIT;
    let view = loop {
        let view = handle
            .user("ann")
            .unwrap()
            .recv_timeout(support::WAIT)
            .unwrap();
        if view.connections == 2 {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the embedded node never saw the cluster: {view:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(view.details.iter().all(|d| !d.node.is_empty()));
    let room = handle
        .room("v", 10)
        .unwrap()
        .recv_timeout(support::WAIT)
        .unwrap();
    assert_eq!((room.members, room.connections), (2, 2));
    handle.shutdown().unwrap();
    thread.join().unwrap().unwrap();
}

#[test]
fn a_big_node_reasserts_everything_after_redis_restarts() {
    let mut redis = Redis::start();
    let port = redis.port;
    // A small link budget, so the re-assertion must be paced.
    let small = ["--cluster-max-pending", "65536"];
    let (n1, n2) = (node(&redis.url(), &small), node(&redis.url(), &small));
    const ROOMS: usize = 20;
    const PER_ROOM: usize = 15;
    let mut clients = Vec::new();
    for i in 0..ROOMS * PER_ROOM {
        let info = format!("%7B%22pad%22%3A%22{}%22%7D", "x".repeat(200));
        clients.push(n1.joined(&format!("/ws/big{}?user=u{i}&info={info}", i % ROOMS)));
    }
    let mut watcher = n2.joined("/ws/big0?user=watcher");
    settle(&mut watcher);
    redis.stop();
    n1.wait_stats_with_key(Some(API_KEY), "cluster down", |s| {
        s["cluster"]["state"] == "down"
    });
    let _redis = Redis::start_on(port);
    wait_up(&n1);
    wait_up(&n2);
    let deadline = Instant::now() + Duration::from_secs(10);
    for room in 0..ROOMS {
        loop {
            let r = get(&n2, &format!("/api/rooms/big{room}"));
            let want = PER_ROOM + usize::from(room == 0);
            if r["members"].as_u64() == Some(want as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "room big{room} not re-asserted: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Everyone leaves: nothing is left in Redis.
    drop(clients);
    drop(watcher);
    let deadline = Instant::now() + support::WAIT;
    loop {
        let keys = _redis.cli(&["--scan", "--pattern", "switchboard:r*"]);
        if keys.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "presence left in Redis: {keys}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn concurrent_joins_on_two_nodes_announce_everyone_exactly_once() {
    let redis = Redis::start();
    let (n1, n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    const N: usize = 20;
    // Connect all at once (URL room: the join starts at the handshake).
    let mut clients: Vec<Client> = (0..N)
        .map(|i| {
            let n = if i % 2 == 0 { &n1 } else { &n2 };
            n.client(&format!("/ws/race?user=r{i}"))
        })
        .collect();
    let everyone: std::collections::BTreeSet<String> = (0..N).map(|i| format!("r{i}")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.expect("welcome")["user"], format!("r{i}"));
        // `joined` before anything of the room.
        let j = c.expect("joined");
        let listed: std::collections::BTreeSet<String> = j["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect();
        assert!(listed.contains(&format!("r{i}")), "{j}");
        // Everyone not listed is announced, once; nobody listed is.
        let mut announced = std::collections::BTreeSet::new();
        while listed.len() + announced.len() < N {
            let e = c.expect("user_joined");
            let user = e["user"].as_str().unwrap().to_string();
            assert!(!listed.contains(&user), "r{i}: {user} listed and announced");
            assert!(
                announced.insert(user.clone()),
                "r{i}: {user} announced twice"
            );
        }
        let seen: std::collections::BTreeSet<String> = listed.union(&announced).cloned().collect();
        assert_eq!(seen, everyone, "r{i}");
    }
    for c in &mut clients {
        c.expect_silence(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_node_in_thousands_of_rooms_is_forgotten_everywhere() {
    let redis = Redis::start();
    let many = ["--max-rooms-per-connection", "2000", "--rate-limit", "0"];
    let n1 = node(&redis.url(), &[]);
    let mut n2 = node(&redis.url(), &many);
    const ROOMS: usize = 1500;
    let mut big = n2.client("/ws?user=big");
    let dead = big.expect("welcome")["node"].as_str().unwrap().to_string();
    for r in 0..ROOMS {
        big.send_json(json!({"type": "join", "room": format!("k{r}")}));
    }
    for _ in 0..ROOMS {
        assert_eq!(next_data(&mut big)["type"], "joined");
    }
    let mut first = n1.joined("/ws/k0?user=w1");
    let mut last = n1.joined(&format!("/ws/k{}?user=w2", ROOMS - 1));
    n2.signal_and_wait(libc::SIGKILL);
    let start = Instant::now();
    for w in [&mut first, &mut last] {
        let e = w.expect("user_left");
        assert_eq!(e["user"], "big");
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    // Every room of the dead node is gone from Redis, and so is the node.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = redis.cli(&["HLEN", &format!("switchboard:nr:{dead}")]);
        let nodes = redis.cli(&["ZCARD", "switchboard:nodes"]);
        if left.trim() == "0" && nodes.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {left} rooms, {nodes} nodes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stopped_node_announces_a_user_with_two_devices_once() {
    let redis = Redis::start();
    let n1 = node(&redis.url(), &[]);
    let mut n2 = node(&redis.url(), &[]);
    let mut ann = n1.joined("/ws/two?user=ann");
    let _d1 = n2.joined("/ws/two?user=bob");
    let _d2 = n2.joined("/ws/two?user=bob");
    assert_eq!(ann.expect("user_joined")["user"], "bob");
    n2.signal_and_wait(libc::SIGTERM);
    let e = ann.expect("user_left");
    assert_eq!(
        (e["user"].as_str(), e["members"].as_u64()),
        (Some("bob"), Some(1))
    );
    // Never announced again, nor twice.
    ann.expect_silence(Duration::from_millis(1500));
    assert!(redis
        .cli(&["--scan", "--pattern", "switchboard:uc:*"])
        .contains("uc:ann"));
    assert!(!redis
        .cli(&["--scan", "--pattern", "switchboard:uc:*"])
        .contains("uc:bob"));
}

/// `/api/overview` on any node lists every live node with its own figures
/// (what the dashboard's node table shows), and forgets a node that left.
#[test]
fn the_overview_lists_every_node() {
    let redis = Redis::start();
    let (n1, mut n2) = (node(&redis.url(), &[]), node(&redis.url(), &[]));
    wait_nodes(&[&n1, &n2], 2);
    let _a = n1.joined("/ws/a?user=ann");
    let _b = n2.joined("/ws/b?user=bob");
    let _c = n2.joined("/ws/b?user=cy");
    let ids = [
        n1.stats_with_key(Some(API_KEY))["node"].clone(),
        n2.stats_with_key(Some(API_KEY))["node"].clone(),
    ];
    // The first ask starts the fetching; the next heartbeats bring them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let v = get(&n1, "/api/overview");
        let nodes = v["nodes"].as_array().unwrap().clone();
        let counts: Vec<_> = nodes
            .iter()
            .map(|n| (n["node"].clone(), n["connections"].clone()))
            .collect();
        let want = [(ids[0].clone(), json!(1)), (ids[1].clone(), json!(2))];
        if want.iter().all(|w| counts.contains(w)) && counts.len() == 2 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "nodes: {nodes:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for n in &nodes {
        for field in [
            "users",
            "rooms",
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
            "uptime_seconds",
        ] {
            assert!(n[field].is_number(), "{field} in {n}");
        }
    }
    // A node shut down is gone from the list.
    n2.signal_and_wait(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&n1, "/api/overview")["nodes"].as_array().unwrap().len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the stopped node is still listed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
