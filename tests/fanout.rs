//! A fan-out under a steady stream, against the real daemon: while the
//! daemon writes message k to hundreds of subscribers, message k+1 arrives
//! and is taken in midway (the flush looks at the sockets every 16
//! writes). Whatever the timing, every subscriber gets every message
//! exactly once and in order, joins and leaves meanwhile change nothing for
//! the others, and the metrics show the long flushes took input in. And
//! the room frames one client's input produces in a row, queued to each
//! member as one burst, reach everyone exactly as the same requests sent one
//! at a time would.

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

/// Room messages a client sends in one write are queued to the room's
/// members as one burst. Whatever else the same write holds — a private
/// message, typing, a message to another room, one with `echo`, a leave, a
/// join — reaches every member in the order it was sent, and each message
/// is counted once per recipient.
#[test]
fn a_burst_keeps_every_recipients_order() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut a = server.joined("/ws/r?user=a");
    let mut b = server.joined("/ws/r?user=b");
    b.send_json(json!({"type": "join", "room": "r2"}));
    b.expect("joined");
    let mut p = server.joined("/ws/r?user=p");
    p.send_json(json!({"type": "join", "room": "r2"}));
    p.expect("joined");
    settle(&mut a);
    settle(&mut b);
    let before = server.stats()["messages_out"].as_u64().unwrap();

    let message = |room: &str, data: &str| json!({"type": "message", "room": room, "data": data});
    let sent = [
        message("r", "m1"),
        message("r", "m2"),
        json!({"type": "private", "to": "a", "data": "p1"}),
        message("r", "m3"),
        json!({"type": "typing", "room": "r"}),
        message("r2", "x1"),
        json!({"type": "message", "room": "r", "data": "m4", "echo": true}),
        message("r", "m5"),
        json!({"type": "leave", "room": "r2"}),
        message("r", "m6"),
        json!({"type": "join", "room": "r3"}),
        message("r", "m7"),
        json!({"type": "ping", "ref": "end"}),
    ];
    p.send_in_one_write(&sent);

    // What each saw, up to the last message.
    let seen = |c: &mut Client| {
        let mut seen = Vec::new();
        loop {
            let m = c.recv_json();
            let what = match m["type"].as_str().unwrap() {
                "message" => format!(
                    "{}:{}",
                    m["room"].as_str().unwrap(),
                    m["data"].as_str().unwrap()
                ),
                "private" => format!("private:{}", m["data"].as_str().unwrap()),
                "typing" => format!("typing:{}", m["room"].as_str().unwrap()),
                "user_left" => format!("left:{}", m["room"].as_str().unwrap()),
                other => other.to_string(),
            };
            let last = what == "r:m7";
            seen.push(what);
            if last {
                return seen;
            }
        }
    };
    let r = |d: &str| format!("r:{d}");
    assert_eq!(
        seen(&mut a),
        [
            r("m1"),
            r("m2"),
            "private:p1".into(),
            r("m3"),
            "typing:r".into(),
            r("m4"),
            r("m5"),
            r("m6"),
            r("m7")
        ]
    );
    assert_eq!(
        seen(&mut b),
        [
            r("m1"),
            r("m2"),
            r("m3"),
            "typing:r".into(),
            "r2:x1".into(),
            r("m4"),
            r("m5"),
            "left:r2".into(),
            r("m6"),
            r("m7")
        ]
    );
    // The sender: its echo, then the answers to its leave, join and ping.
    let mut own = Vec::new();
    loop {
        let m = p.recv_json();
        let t = m["type"].as_str().unwrap().to_string();
        own.push(if t == "message" {
            format!("message:{}", m["data"].as_str().unwrap())
        } else {
            t
        });
        if own.last().unwrap() == "pong" {
            break;
        }
    }
    assert_eq!(own, ["message:m4", "left", "joined", "pong"]);
    a.sync();
    b.sync();
    // Counted per message and recipient: 7 room messages to a and b, the
    // echo to p, a private, typing to two, x1 to b, the presence event
    // and p's own answers (left, joined, pong) — not per burst.
    let after = server.wait_stats("messages_out", |s| s["messages_out"].as_u64().is_some());
    assert_eq!(
        after["messages_out"].as_u64().unwrap() - before,
        7 * 2 + 1 + 1 + 2 + 1 + 1 + 3 + 2
    );
}

/// Bursts change nothing anyone can see: random mixes of what a client may
/// send (room messages, echo, typing, private messages, joins and leaves,
/// messages to rooms it is not in), sent in one write, reach every member
/// and the sender exactly as the same requests sent one at a time, each
/// answered before the next is sent.
#[test]
fn a_burst_is_seen_as_the_same_requests_one_at_a_time() {
    for seed in 1..=12u64 {
        let ops = random_ops(seed, 40);
        let together = run_ops(&ops, true);
        let apart = run_ops(&ops, false);
        assert_eq!(together, apart, "seed {seed}: {ops:?}");
    }
}

fn random_ops(seed: u64, n: usize) -> Vec<Value> {
    let mut x = seed;
    let mut next = move |k: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % k
    };
    (0..n)
        .map(|i| {
            let room = ["r", "r2", "r3"][next(3) as usize];
            let data = format!("d{i}");
            match next(8) {
                0..=2 => json!({"type": "message", "room": room, "data": data}),
                3 => json!({"type": "message", "room": room, "data": data, "echo": true}),
                4 => json!({"type": "typing", "room": room}),
                5 => {
                    let to = ["a", "b", "c"][next(3) as usize];
                    json!({"type": "private", "to": to, "data": data})
                }
                6 => json!({"type": "join", "room": room}),
                _ => json!({"type": "leave", "room": room}),
            }
        })
        .collect()
}

/// What a (in r), b (in r and r2), c (in r2) and the sender p (in r and
/// r2) see when p sends `ops`, in one write or one at a time.
fn run_ops(ops: &[Value], together: bool) -> Vec<Vec<String>> {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut a = server.joined("/ws/r?user=a");
    let mut b = server.joined("/ws/r?user=b");
    b.send_json(json!({"type": "join", "room": "r2"}));
    b.expect("joined");
    let mut c = server.joined("/ws/r2?user=c");
    let mut p = server.joined("/ws/r?user=p");
    p.send_json(json!({"type": "join", "room": "r2"}));
    p.expect("joined");
    for m in [&mut a, &mut b, &mut c] {
        settle(m);
    }
    let mut own = Vec::new();
    if together {
        p.send_in_one_write(ops);
    } else {
        for op in ops {
            p.send_json(op.clone());
            own.extend(until_pong(&mut p));
        }
    }
    // The end: a private to each (p has no room left to guarantee), then
    // p's own pong.
    for to in ["a", "b", "c"] {
        p.send_json(json!({"type": "private", "to": to, "data": "end"}));
    }
    own.extend(until_pong(&mut p));
    let mut seen: Vec<Vec<String>> = [&mut a, &mut b, &mut c]
        .into_iter()
        .map(|m| {
            let mut seen = Vec::new();
            loop {
                let v = m.recv_json();
                if v["type"] == "private" && v["data"] == "end" {
                    return seen;
                }
                seen.push(brief(&v));
            }
        })
        .collect();
    seen.push(own);
    seen
}

/// Everything `c` gets up to the answer of a ping, briefly.
fn until_pong(c: &mut Client) -> Vec<String> {
    c.send_json(json!({"type": "ping", "ref": "step"}));
    let mut got = Vec::new();
    loop {
        let v = c.recv_json();
        if v["type"] == "pong" && v["ref"] == "step" {
            return got;
        }
        got.push(brief(&v));
    }
}

/// A frame's type, room, data, sender, user and error code (not its times).
fn brief(v: &Value) -> String {
    format!(
        "{} {} {} {} {} {}",
        v["type"], v["room"], v["data"], v["from"], v["user"], v["code"]
    )
}
