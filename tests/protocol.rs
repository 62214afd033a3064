//! End-to-end: every client message type over real loopback sockets.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const QUIET: Duration = Duration::from_millis(150);

#[test]
fn welcome_then_join_via_url() {
    let server = Server::start(&[]);
    let mut c = server.client("/ws/lobby?user=ann");
    let w = c.expect("welcome");
    assert_eq!(w["user"], "ann");
    assert!(w["connection_id"].is_string());
    assert_eq!(w["heartbeat"]["ping_interval"], 30.0);
    assert_eq!(w["limits"]["max_message_size"], 65536);
    let j = c.expect("joined");
    assert_eq!(j["room"], "lobby");
    assert_eq!(j["members"], 1);
    assert_eq!(j["users"], json!(["ann"]));
}

#[test]
fn anonymous_users_get_distinct_ids() {
    let server = Server::start(&[]);
    let mut a = server.client("/ws");
    let mut b = server.client("/ws");
    let (wa, wb) = (a.expect("welcome"), b.expect("welcome"));
    assert!(wa["user"].as_str().unwrap().starts_with("anon-"));
    assert_ne!(wa["user"], wb["user"]);
}

#[test]
fn room_message_reaches_others_not_sender_and_data_is_unchanged() {
    let server = Server::start(&[]);
    let mut ann = server.joined("/ws/r?user=ann");
    let mut bob = server.joined("/ws/r?user=bob");
    assert_eq!(ann.expect("user_joined")["user"], "bob");
    let raw = r#"{"type":"message","room":"r","data":{"a" : [1, 2.50, "\u00e9", null, 1.5E+300]}}"#;
    bob.send_text(raw);
    let got = ann.recv_text();
    assert!(
        got.contains(r#""data":{"a" : [1, 2.50, "\u00e9", null, 1.5E+300]}"#),
        "{got}"
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["from"], "bob");
    assert_eq!(v["room"], "r");
    bob.sync();
    bob.expect_silence(QUIET);
}

#[test]
fn echo_true_includes_sender() {
    let server = Server::start(&[]);
    let mut ann = server.joined("/ws/r?user=ann");
    ann.send_json(json!({"type":"message","room":"r","data":"hi","echo":true}));
    let m = ann.expect("message");
    assert_eq!(m["data"], "hi");
    assert_eq!(m["from"], "ann");
}

#[test]
fn join_leave_with_refs() {
    let server = Server::start(&[]);
    let mut c = server.joined("/ws?user=ann");
    c.send_json(json!({"type":"join","room":"a","ref":1}));
    let j = c.expect("joined");
    assert_eq!(j["ref"], 1);
    c.send_json(json!({"type":"join","room":"a","ref":"again"}));
    assert_eq!(c.expect("joined")["ref"], "again");
    c.send_json(json!({"type":"leave","room":"a","ref":2}));
    let l = c.expect("left");
    assert_eq!(
        (l["room"].as_str(), l["ref"].as_i64()),
        (Some("a"), Some(2))
    );
    let e = c.expect_error(json!({"type":"leave","room":"a","ref":3}), "not_in_room");
    assert_eq!(e["ref"], 3);
    server.wait_stats("room removed", |s| s["rooms"] == json!({}));
}

#[test]
fn private_reaches_every_device_of_the_user() {
    let server = Server::start(&[]);
    let mut phone = server.joined("/ws?user=bob");
    let mut laptop = server.joined("/ws?user=bob");
    let mut ann = server.joined("/ws?user=ann");
    ann.send_json(json!({"type":"private","to":"bob","data":{"n":1}}));
    for dev in [&mut phone, &mut laptop] {
        let p = dev.expect("private");
        assert_eq!(
            (p["from"].as_str(), p["data"]["n"].as_i64()),
            (Some("ann"), Some(1))
        );
    }
    let e = ann.expect_error(
        json!({"type":"private","to":"nobody","data":1,"ref":"p"}),
        "user_offline",
    );
    assert_eq!(e["ref"], "p");
}

#[test]
fn broadcast_reaches_everyone_but_sender() {
    let server = Server::start(&[]);
    let mut a = server.joined("/ws?user=a");
    let mut b = server.joined("/ws/x?user=b");
    let mut c = server.joined("/ws?user=c");
    let mut echo = server.client("/echo");
    a.send_json(json!({"type":"broadcast","data":"all"}));
    assert_eq!(b.expect("broadcast")["data"], "all");
    assert_eq!(c.expect("broadcast")["from"], "a");
    a.sync();
    a.expect_silence(QUIET);
    echo.send_text("e");
    assert_eq!(
        echo.recv_text(),
        "e",
        "echo connections do not get broadcasts"
    );
    a.send_json(json!({"type":"broadcast","data":2,"echo":true}));
    assert_eq!(a.expect("broadcast")["data"], 2);
}

#[test]
fn typing_and_presence() {
    let server = Server::start(&[]);
    let mut ann = server.joined("/ws/r?user=ann");
    let mut bob = server.joined("/ws/r?user=bob");
    ann.expect("user_joined");
    bob.send_json(json!({"type":"typing","room":"r"}));
    let t = ann.expect("typing");
    assert_eq!(
        (t["room"].as_str(), t["user"].as_str()),
        (Some("r"), Some("bob"))
    );
    bob.send_json(json!({"type":"presence","room":"r","ref":9}));
    let p = bob.expect("presence");
    let mut users: Vec<String> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().into())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    assert_eq!(
        (p["members"].as_i64(), p["ref"].as_i64()),
        (Some(2), Some(9))
    );
    bob.send_json(json!({"type":"presence","room":"empty"}));
    assert_eq!(bob.expect("presence")["members"], 0);
    bob.expect_error(json!({"type":"typing","room":"elsewhere"}), "not_in_room");
}

#[test]
fn app_ping_and_pong() {
    let server = Server::start(&[]);
    let mut c = server.joined("/ws");
    c.send_json(json!({"type":"ping","ref":"x"}));
    assert_eq!(c.expect("pong")["ref"], "x");
    c.send_json(json!({"type":"pong"}));
    c.sync();
}

#[test]
fn presence_is_per_user_across_devices() {
    let server = Server::start(&[]);
    let mut ann = server.joined("/ws/r?user=ann");
    let bob1 = server.joined("/ws/r?user=bob");
    assert_eq!(ann.expect("user_joined")["user"], "bob");
    let mut bob2 = server.joined("/ws/r?user=bob");
    ann.sync();
    ann.expect_silence(QUIET); // second device: no new user_joined
    bob1.close();
    ann.sync();
    ann.expect_silence(QUIET); // bob is still there on his other device
    bob2.send_json(json!({"type":"leave","room":"r"}));
    bob2.expect("left");
    let left = ann.expect("user_left");
    assert_eq!(
        (left["user"].as_str(), left["members"].as_i64()),
        (Some("bob"), Some(1))
    );
}

#[test]
fn disconnect_announces_user_left_and_cleans_up() {
    let server = Server::start(&[]);
    let mut ann = server.joined("/ws/r?user=ann");
    let bob = server.joined("/ws/r?user=bob");
    ann.expect("user_joined");
    drop(bob); // TCP close without a WebSocket close
    assert_eq!(ann.expect("user_left")["user"], "bob");
    ann.close();
    let s = server.wait_stats("everyone gone", |s| s["total_connections"] == 0);
    assert_eq!(s["total_users"], 0);
    assert_eq!(s["rooms"], json!({}));
    assert_eq!(s["connections_by_user"], json!({}));
}

#[test]
fn binary_goes_to_the_url_room() {
    let server = Server::start(&[]);
    let mut a = server.joined("/ws/bin?user=a");
    let mut b = server.joined("/ws/bin?user=b");
    a.expect("user_joined");
    b.ws.send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
        .unwrap();
    match a.recv() {
        tungstenite::Message::Binary(d) => assert_eq!(&d[..], &[0, 1, 2, 255]),
        other => panic!("{other:?}"),
    }
    let mut c = server.joined("/ws?user=c");
    c.ws.send(tungstenite::Message::binary(vec![1u8])).unwrap();
    assert_eq!(c.expect("error")["code"], "not_in_room");
}

#[test]
fn echo_route_echoes_text_and_binary() {
    let server = Server::start(&[]);
    let mut e = server.client("/echo");
    e.send_text("héllo");
    assert_eq!(e.recv_text(), "héllo");
    e.ws.send(tungstenite::Message::binary(vec![9u8; 70_000]))
        .unwrap();
    assert_eq!(e.close_code(), 1009, "over --echo-max-message-size");
    let mut e = server.client("/echo");
    e.ws.send(tungstenite::Message::binary(vec![9u8; 60_000]))
        .unwrap();
    match e.recv() {
        tungstenite::Message::Binary(d) => assert_eq!(d.len(), 60_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stats_report_connections_users_rooms_and_counters() {
    let server = Server::start(&[]);
    let mut a = server.joined("/ws/r1?user=ann");
    let _a2 = server.joined("/ws/r2?user=ann");
    let _b = server.joined("/ws/r1?user=bob");
    a.expect("user_joined");
    a.send_json(json!({"type":"message","room":"r1","data":1}));
    a.sync();
    let s = server.wait_stats("messages counted", |s| {
        s["messages_out"].as_u64() >= Some(1)
    });
    assert_eq!(s["total_connections"], 3);
    assert_eq!(s["total_users"], 2);
    assert_eq!(s["connections_by_user"], json!({"ann": 2, "bob": 1}));
    assert_eq!(s["rooms"], json!({"r1": 2, "r2": 1}));
    assert!(s["messages_in"].as_u64().unwrap() >= 2);
    assert!(s["bytes_out"].as_u64().unwrap() > 0);
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
}
