//! Micro benchmarks of the pure hub core: no sockets, a fixed clock.
//!
//! `cargo bench --bench hub`. Each prints divan's per-iteration times.

use std::time::{Duration, Instant};

use divan::Bencher;
use switchboard::hub::{ConnId, Hub, Kind, OpenRequest, Output, Target};
use switchboard::{protocol, HubConfig};

fn main() {
    divan::main();
}

fn config() -> HubConfig {
    HubConfig {
        max_connections_per_user: usize::MAX,
        ..HubConfig::default()
    }
}

fn id(i: usize) -> ConnId {
    ConnId {
        index: i as u32,
        generation: 1,
    }
}

/// Open one hub connection (and drop the welcome and joined replies).
fn open(hub: &mut Hub, now: Instant, index: usize, user: Option<&str>, room: Option<&str>) {
    let req = OpenRequest {
        user,
        room,
        kind: Kind::Hub,
        ..Default::default()
    };
    hub.handle_open(now, id(index), req).unwrap();
    while hub.poll_output().is_some() {}
}

/// A hub with `n` connections (users u0..un), all in room "r".
fn hub_with_room(n: usize, now: Instant) -> Hub {
    let mut hub = Hub::new(config(), now);
    for i in 0..n {
        open(&mut hub, now, i, Some(&format!("u{i}")), Some("r"));
    }
    hub
}

/// Decide one room message and resolve its recipients (what the driver does
/// per message, minus the socket writes).
#[divan::bench(args = [1_000, 10_000])]
fn fanout_decision(bencher: Bencher, members: usize) {
    let now = Instant::now();
    let mut hub = hub_with_room(members, now);
    let text = r#"{"type":"message","room":"r","data":{"seq":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    bencher.bench_local(|| {
        hub.handle_text(now, id(0), text);
        let mut recipients = 0usize;
        while let Some(out) = hub.poll_output() {
            if let Output::Send { to, frame } = out {
                hub.for_each_recipient(to, |_| recipients += 1);
                divan::black_box(&frame);
            }
        }
        assert_eq!(recipients, members - 1);
    });
}

/// Join and leave a room that already has 1,000 members (no announcements:
/// over the announce limit), as churn in a big room costs.
#[divan::bench]
fn join_leave_big_room(bencher: Bencher) {
    let now = Instant::now();
    let mut hub = hub_with_room(1_000, now);
    let user = "churn";
    open(&mut hub, now, 5_000, Some(user), None);
    while hub.poll_output().is_some() {}
    bencher.bench_local(|| {
        hub.handle_text(now, id(5_000), r#"{"type":"join","room":"r"}"#);
        hub.handle_text(now, id(5_000), r#"{"type":"leave","room":"r"}"#);
        while hub.poll_output().is_some() {}
    });
}

/// Presence changes in a small room: each join and leave is announced.
#[divan::bench]
fn presence_small_room(bencher: Bencher) {
    let now = Instant::now();
    let mut hub = hub_with_room(20, now);
    open(&mut hub, now, 100, Some("p"), None);
    while hub.poll_output().is_some() {}
    bencher.bench_local(|| {
        hub.handle_text(now, id(100), r#"{"type":"join","room":"r"}"#);
        hub.handle_text(now, id(100), r#"{"type":"leave","room":"r"}"#);
        let mut n = 0;
        while let Some(out) = hub.poll_output() {
            if let Output::Send {
                to: Target::Room { .. },
                ..
            } = out
            {
                n += 1;
            }
        }
        assert_eq!(n, 2);
    });
}

/// Decoding client messages (parse + validation), no routing.
#[divan::bench(args = ["message", "join", "private", "bad_json"])]
fn decode(kind: &str) {
    let text = match kind {
        "message" => {
            r#"{"type":"message","room":"lobby","data":{"text":"hello there","n":[1,2,3]},"ref":17}"#
        }
        "join" => r#"{"type":"join","room":"lobby"}"#,
        "private" => r#"{"type":"private","to":"bob","data":"psst"}"#,
        _ => r#"{"type":"message","room":"lobby","data":{"text":"#,
    };
    let _ = divan::black_box(protocol::decode(divan::black_box(text)));
}

/// One heartbeat tick in which all 100,000 sessions are due for a ping.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn heartbeat_tick_100k_due(bencher: Bencher) {
    let now = Instant::now();
    bencher
        .with_inputs(|| {
            let mut hub = Hub::new(config(), now);
            for i in 0..100_000 {
                open(&mut hub, now, i, None, None);
            }
            hub
        })
        .bench_local_values(|mut hub| {
            hub.handle_timeout(now + Duration::from_secs(31));
            let mut pings = 0;
            while let Some(out) = hub.poll_output() {
                pings += usize::from(matches!(out, Output::Ping(_)));
            }
            assert_eq!(pings, 100_000);
            hub
        });
}

/// A heartbeat tick with 100,000 sessions and nothing due: must not scan.
#[divan::bench]
fn heartbeat_tick_100k_idle(bencher: Bencher) {
    let now = Instant::now();
    let mut hub = Hub::new(config(), now);
    for i in 0..100_000 {
        open(&mut hub, now, i, None, None);
    }
    while hub.poll_output().is_some() {}
    bencher.bench_local(|| hub.handle_timeout(now + Duration::from_secs(1)));
}
