//! The blocking Rust client (`switchboard::client`) against the real
//! daemon: join, messages, a refused request, the daemon killed and
//! restarted on the same port (reconnect and rejoin unaided), a final close
//! code, `close()`.

mod support;

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::json;
use support::Server;
use switchboard::client::{Client, ClientConfig, ClientError, Event, State};

/// The next event matching `pred`, skipping others.
fn until(events: &Receiver<Event>, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(_) => {}
            Err(e) => panic!("no {what}: {e}"),
        }
    }
}

fn message_with(events: &Receiver<Event>, data: &str) {
    until(
        events,
        data,
        |e| matches!(e, Event::Message(m) if m["type"] == "message" && m["data"] == data),
    );
}

#[test]
fn rust_client_reconnects_rejoins_and_stops() {
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let flags = ["--listen", listen.as_str()];
    let mut server = Server::start(&flags);
    let config = |user: &str| {
        let mut c = ClientConfig::new(format!("ws://{listen}/ws?user={user}"));
        c.min_delay = Duration::from_millis(100);
        c.max_delay = Duration::from_millis(1000);
        c
    };
    let (ann, ann_events) = Client::connect(config("ann"));
    let (bob, bob_events) = Client::connect(config("bob"));
    for events in [&ann_events, &bob_events] {
        until(events, "welcome", |e| matches!(e, Event::Connected(_)));
    }
    let joined = ann.join("lobby").unwrap();
    assert_eq!(joined["type"], "joined");
    bob.join("lobby").unwrap();
    bob.send("lobby", &json!("hi")).unwrap();
    message_with(&ann_events, "hi");
    let refused = ann.request(json!({"type": "message", "room": "nope", "data": 1}));
    assert!(
        matches!(refused, Err(ClientError::Refused { ref code, .. }) if code == "not_in_room"),
        "{refused:?}"
    );

    // Killed and back on the same port: both reconnect and rejoin.
    server.signal_and_wait(libc::SIGKILL);
    until(&ann_events, "disconnected", |e| {
        matches!(
            e,
            Event::Disconnected {
                will_reconnect: true,
                ..
            }
        )
    });
    assert_eq!(ann.send("lobby", &json!(1)), Ok(()), "fire and forget");
    assert_eq!(
        ann.request(json!({"type": "ping"})),
        Err(ClientError::NotConnected)
    );
    std::thread::sleep(Duration::from_millis(500));
    server = Server::start(&flags);
    for events in [&ann_events, &bob_events] {
        until(events, "welcome again", |e| {
            matches!(e, Event::Connected(_))
        });
        until(
            events,
            "rejoined",
            |e| matches!(e, Event::Message(m) if m["type"] == "joined" && m["room"] == "lobby"),
        );
    }
    bob.send("lobby", &json!("after")).unwrap();
    message_with(&ann_events, "after");

    // A final close code: no reconnect.
    let req = "POST /api/disconnect HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nConnection: close\r\n\r\n{\"user\":\"ann\",\"code\":4003}    ";
    assert_eq!(server.http(req).0, 200);
    until(&ann_events, "final close", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: 4003,
                will_reconnect: false,
                ..
            }
        )
    });
    // close(): the event channel ends.
    bob.close();
    until(&bob_events, "stopped", |e| {
        matches!(e, Event::State(State::Disconnected))
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while bob_events.recv_timeout(Duration::from_millis(100)).is_ok() {
        assert!(Instant::now() < deadline, "events after close");
    }
    ann.close();
}

#[test]
fn rust_client_finds_a_stopped_daemon_dead_by_its_own_timer() {
    let server = Server::start(&["--ping-interval", "1", "--ping-timeout", "1"]);
    let mut config = ClientConfig::new(format!("ws://{}/ws?user=ann", server.addr));
    config.min_delay = Duration::from_millis(100);
    config.max_delay = Duration::from_millis(500);
    let (client, events) = Client::connect(config);
    until(&events, "welcome", |e| matches!(e, Event::Connected(_)));
    let stopped = Instant::now();
    unsafe { libc::kill(server.child.id() as i32, libc::SIGSTOP) };
    until(&events, "dead", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: 4190,
                will_reconnect: true,
                ..
            }
        )
    });
    // interval + timeout is 2 s: found within that and a tick or two.
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopped.elapsed()
    );
    unsafe { libc::kill(server.child.id() as i32, libc::SIGCONT) };
    until(&events, "welcome again", |e| {
        matches!(e, Event::Connected(_))
    });
    client.close();
}

/// 4001 (token expired) with a token source: a new token, a reconnect, the
/// rooms joined again; a token refused at the handshake (401: it expired
/// while disconnected) the same. Without a source, both are final.
#[test]
fn rust_client_refreshes_an_expired_token() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchboard::auth::sign_hs256;
    use switchboard::client::TokenSource;
    const SECRET: &str = "rust-client-secret-0123456789abcdef";
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let token = move |secs: i64| {
        let exp = now() as i64 + secs;
        sign_hs256(&json!({"sub": "ann", "exp": exp}), None, SECRET.as_bytes())
    };
    let server = Server::start(&["--auth", "jwt", "--jwt-secret", SECRET, "--jwt-leeway", "0"]);
    let asked = Arc::new(AtomicUsize::new(0));
    // A client starting with `first`, whose token source hands out fresh
    // ones and counts the asks.
    let start = |first: String| {
        let mut config = ClientConfig::new(format!("ws://{}/ws?token={first}", server.addr));
        config.min_delay = Duration::from_millis(50);
        let counter = asked.clone();
        config.get_token = Some(TokenSource(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(token(60))
        })));
        Client::connect(config)
    };
    let (client, events) = start(token(4));
    until(&events, "welcome", |e| matches!(e, Event::Connected(_)));
    client.join("r").unwrap();
    expect_4001(&events, true);
    until(&events, "welcome again", |e| {
        matches!(e, Event::Connected(_))
    });
    until(
        &events,
        "rejoined",
        |e| matches!(e, Event::Message(m) if m["type"] == "joined" && m["room"] == "r"),
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    client.close();

    // Expired before connecting: refused with 401 at the handshake.
    let (client, events) = start(token(-60));
    expect_4001(&events, true);
    until(&events, "welcome with the new token", |e| {
        matches!(e, Event::Connected(_))
    });
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    client.close();

    // No token source: a 401 is final, and so is 4001.
    for first in [token(-60), token(4)] {
        let config = ClientConfig::new(format!("ws://{}/ws?token={first}", server.addr));
        let (client, events) = Client::connect(config);
        expect_4001(&events, false);
        client.close();
    }
}

/// The next `Disconnected` is a 4001 that does (or does not) reconnect.
fn expect_4001(events: &Receiver<Event>, will: bool) {
    let ended = until(events, "4001", |e| matches!(e, Event::Disconnected { .. }));
    assert!(
        matches!(ended, Event::Disconnected { code: 4001, will_reconnect, .. } if will_reconnect == will),
        "{ended:?}"
    );
}
