//! A fan-out under a steady stream, against the real daemon: while the
//! daemon writes message k to hundreds of subscribers, message k+1 arrives
//! and is taken in midway (the flush looks at the sockets every 16
//! writes). Whatever the timing, every subscriber gets every message
//! exactly once and in order, joins and leaves meanwhile change nothing for
//! the others, and the metrics show the long flushes took input in.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{Client, Server};

const SUBSCRIBERS: usize = 400;
const MESSAGES: u64 = 300;

#[test]
fn a_steady_stream_into_a_big_room_arrives_whole_and_in_order() {
    let server = Server::start(&["--rate-limit", "0", "--max-connections-per-user", "1000"]);
    let mut subs: Vec<Client> = (0..SUBSCRIBERS)
        .map(|i| server.joined(&format!("/ws/big?user=s{i}")))
        .collect();
    let mut publisher = server.joined("/ws/big?user=publisher");
    // Everyone's user_joined announcements out of the way (the room is
    // over --presence-announce-limit after 100, so only the first see them).
    settle(&mut publisher);
    for s in &mut subs {
        settle(s);
    }
    // A steady stream: one message every 2 ms (a debug build takes longer
    // than that to write 400 sockets), and someone joining and leaving.
    let mut churn = server.joined("/ws?user=churn");
    for k in 0..MESSAGES {
        publisher.send_json(json!({"type": "message", "room": "big", "data": k}));
        if k % 50 == 0 {
            churn.send_json(json!({"type": "join", "room": "big"}));
            churn.send_json(json!({"type": "leave", "room": "big"}));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let mut next = 0;
        while next < MESSAGES {
            let m: Value = s.recv_json();
            if m["type"] != "message" {
                continue;
            }
            assert_eq!(m["data"], next, "subscriber {i}: out of order or missing");
            next += 1;
        }
    }
    let (_, metrics) = server.get("/metrics");
    let take_ins: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_flush_take_ins_total "))
        .and_then(|v| v.parse().ok())
        .expect("flush_take_ins_total");
    assert!(take_ins > 0, "no flush took input midway:\n{metrics}");
    // Nothing more arrives (no message twice): the next is the pong.
    for s in subs.iter_mut().take(20) {
        s.sync();
    }
}

/// Everything sent to `c` so far read, up to the answer of a ping.
fn settle(c: &mut Client) {
    c.send_json(json!({"type": "ping", "ref": "settle"}));
    while c.recv_json()["type"] != "pong" {}
}
