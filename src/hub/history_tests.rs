//! Room history and recovery, with the fake clock: numbering, the `joined`
//! mark, replay-or-nothing, the bounds (count, bytes, TTL, `max_recover`)
//! and the `history` request.

use super::*;

const TTL: Duration = Duration::from_secs(300);

/// Heartbeats slower than any TTL here: the fake clock jumps.
const QUIET: Duration = Duration::from_secs(86_400);

fn history(size: usize) -> T {
    let mut t = T::with(HubConfig {
        ping_interval: QUIET,
        ping_timeout: TIMEOUT,
        history_size: size,
        history_ttl: TTL,
        ..HubConfig::default()
    });
    t.hub.set_history_epoch("e1");
    t
}

fn with(config: HubConfig) -> T {
    let mut t = T::with(HubConfig {
        ping_interval: QUIET,
        ping_timeout: TIMEOUT,
        ..config
    });
    t.hub.set_history_epoch("e1");
    t
}

/// `join` (with `since` if given); returns the `joined` and what followed
/// it to `id`, in order.
fn join_since(
    t: &mut T,
    id: ConnId,
    room: &str,
    since: Option<(&str, u64)>,
) -> (Value, Vec<Value>) {
    let since = since.map_or(String::new(), |(e, s)| {
        format!(r#","since":{{"epoch":"{e}","seq":{s}}}"#)
    });
    t.text(id, &format!(r#"{{"type":"join","room":"{room}"{since}}}"#));
    let mine: Vec<Value> = t
        .drain()
        .into_iter()
        .filter(|(to, _)| *to == id)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(mine[0]["type"], "joined", "{mine:?}");
    (mine[0].clone(), mine[1..].to_vec())
}

fn say(t: &mut T, id: ConnId, room: &str, text: &str) {
    t.text(
        id,
        &format!(r#"{{"type":"message","room":"{room}","data":"{text}"}}"#),
    );
}

fn publish(t: &mut T, room: &str, text: &str) {
    let data = serde_json::value::to_raw_value(text).unwrap();
    t.hub.publish(room, &data);
    t.step();
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "message", "{m}");
            m["seq"].as_u64().expect("a seq")
        })
        .collect()
}

#[test]
fn messages_are_numbered_per_room_and_joined_says_where_the_room_is() {
    let mut t = history(10);
    let ann = t.open("ann");
    let bob = t.open("bob");
    let (joined, after) = join_since(&mut t, ann, "r", None);
    assert_eq!(joined["epoch"], "e1-1");
    assert_eq!(joined["seq"], 0);
    assert!(joined.get("recovered").is_none(), "{joined}");
    assert!(after.is_empty());
    t.join(bob, "r");
    t.drain();
    say(&mut t, ann, "r", "one");
    publish(&mut t, "r", "two");
    say(&mut t, bob, "r", "three");
    let to_ann: Vec<Value> = t
        .drain()
        .into_iter()
        .filter(|(to, _)| *to == ann)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(seqs(&to_ann), [2, 3]);
    assert_eq!(to_ann[1]["from"], "bob");
    // Another room counts on its own, and has its own epoch.
    t.join(bob, "s");
    let (joined, _) = join_since(&mut t, ann, "s", None);
    assert_eq!(
        (joined["epoch"].as_str(), joined["seq"].as_u64()),
        (Some("e1-2"), Some(0))
    );
    say(&mut t, ann, "s", "x");
    assert_eq!(t.only(bob)["seq"], 1);
    let (joined, _) = join_since(&mut t, ann, "r", None);
    assert_eq!(
        joined["seq"], 3,
        "joining twice still says where the room is"
    );
}

#[test]
fn a_rejoin_with_since_gets_exactly_what_it_missed_before_anything_live() {
    let mut t = history(100);
    let bob = t.open("bob");
    t.join(bob, "r");
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "r", None);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    for i in 1..=3 {
        say(&mut t, bob, "r", &format!("m{i}"));
    }
    t.drain();
    t.closed(ann);
    say(&mut t, bob, "r", "m4");
    publish(&mut t, "r", "m5");
    t.drain();
    let ann = t.open("ann");
    let (joined, replay) = join_since(&mut t, ann, "r", Some((&epoch, 3)));
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["seq"], 5);
    assert_eq!(seqs(&replay), [4, 5]);
    assert_eq!(replay[0]["data"], "m4");
    assert_eq!(replay[0]["from"], "bob");
    assert!(replay[1]["from"].is_null());
    say(&mut t, bob, "r", "m6");
    assert_eq!(
        t.only(ann)["seq"],
        6,
        "live messages continue after the replay"
    );
    // Nothing missed: recovered, nothing replayed.
    t.closed(ann);
    let ann = t.open("ann");
    let (joined, replay) = join_since(&mut t, ann, "r", Some((&epoch, 6)));
    assert_eq!(joined["recovered"], true);
    assert!(replay.is_empty(), "{replay:?}");
    assert_eq!(t.hub.counters().recovered, 2);
}

#[test]
fn recovery_is_all_or_nothing() {
    let mut t = with(HubConfig {
        history_size: 5,
        max_recover: 3,
        ..HubConfig::default()
    });
    let bob = t.open("bob");
    t.join(bob, "r");
    let epoch = "e1-1";
    for i in 1..=8 {
        say(&mut t, bob, "r", &format!("m{i}"));
    }
    t.drain();
    let ann = t.open("ann");
    let recover = |t: &mut T, epoch: &str, seq: u64| {
        let (joined, replay) = join_since(t, ann, "r", Some((epoch, seq)));
        t.text(ann, r#"{"type":"leave","room":"r"}"#);
        t.drain();
        (joined["recovered"].as_bool().unwrap(), seqs(&replay))
    };
    // The ring holds 4..8; at most 3 replayed.
    assert_eq!(recover(&mut t, epoch, 5), (true, vec![6, 7, 8]));
    assert_eq!(
        recover(&mut t, epoch, 4),
        (false, vec![]),
        "over max_recover"
    );
    assert_eq!(recover(&mut t, epoch, 2), (false, vec![]), "no longer held");
    assert_eq!(recover(&mut t, epoch, 8), (true, vec![]));
    assert_eq!(
        recover(&mut t, epoch, 9),
        (false, vec![]),
        "a seq never reached"
    );
    assert_eq!(recover(&mut t, "e0-1", 8), (false, vec![]), "another epoch");
    assert_eq!(t.hub.counters().not_recovered, 4);
}

#[test]
fn a_restart_is_a_new_epoch() {
    let mut first = history(10);
    let ann = first.open("ann");
    let (a, _) = join_since(&mut first, ann, "r", None);
    let mut second = history(10);
    second.hub.set_history_epoch("e2");
    let ann = second.open("ann");
    let (b, _) = join_since(&mut second, ann, "r", None);
    assert_ne!(a["epoch"], b["epoch"]);
    let bob = second.open("bob");
    let epoch = a["epoch"].as_str().unwrap();
    let (joined, replay) = join_since(&mut second, bob, "r", Some((epoch, 0)));
    assert_eq!(joined["recovered"], false);
    assert!(replay.is_empty());
}

#[test]
fn a_recovery_larger_than_the_replay_budget_is_refused_whole() {
    let mut t = with(HubConfig {
        history_size: 100,
        max_replay_bytes: 1200,
        ..HubConfig::default()
    });
    let bob = t.open("bob");
    t.join(bob, "r");
    let big = "x".repeat(300);
    for _ in 0..4 {
        say(&mut t, bob, "r", &big);
    }
    t.drain();
    let ann = t.open("ann");
    let (joined, replay) = join_since(&mut t, ann, "r", Some(("e1-1", 0)));
    assert_eq!(
        joined["recovered"], false,
        "4 frames of ~360 bytes do not fit in 1200"
    );
    assert!(replay.is_empty());
    let (joined, replay) = join_since(&mut t, ann, "r", Some(("e1-1", 1)));
    assert_eq!(joined["recovered"], true);
    assert_eq!(seqs(&replay), [2, 3, 4]);
}

#[test]
fn history_outlives_membership_until_its_ttl() {
    let mut t = history(10);
    let ann = t.open("ann");
    t.join(ann, "r");
    say(&mut t, ann, "r", "alone");
    t.closed(ann);
    // No member: an API publish is still kept.
    publish(&mut t, "r", "while away");
    assert_eq!(t.hub.history_usage().2, 2);
    t.at(TTL.as_secs() - 1);
    let ann = t.open("ann");
    let (joined, replay) = join_since(&mut t, ann, "r", Some(("e1-1", 1)));
    assert_eq!(joined["recovered"], true);
    assert_eq!(seqs(&replay), [2]);
    t.closed(ann);
    // TTL after the last message (written at 0), and no member: forgotten.
    // The queue may look at a room up to one TTL late.
    t.at(2 * TTL.as_secs());
    assert_eq!(t.hub.history_usage(), (0, 0, 0));
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "r", Some(("e1-1", 2)));
    assert_eq!(joined["recovered"], false);
    assert_eq!(
        joined["epoch"], "e1-2",
        "a history made again is a new epoch"
    );
}

#[test]
fn a_room_silent_for_its_ttl_keeps_its_place_while_it_has_members() {
    let mut t = history(10);
    let ann = t.open("ann");
    let bob = t.open("bob");
    t.join(ann, "r");
    t.join(bob, "r");
    say(&mut t, ann, "r", "m1");
    say(&mut t, ann, "r", "m2");
    t.drain();
    t.at(TTL.as_secs() + 1);
    let (rooms, bytes, messages) = t.hub.history_usage();
    assert_eq!((rooms, messages), (1, 0), "the messages are dropped");
    assert!(bytes > 0 && bytes < 1000, "{bytes}");
    // Bob missed nothing: recovered. Missing m2 can no longer be given.
    t.closed(bob);
    let bob = t.open("bob");
    let (joined, _) = join_since(&mut t, bob, "r", Some(("e1-1", 2)));
    assert_eq!(
        (joined["recovered"].as_bool(), joined["seq"].as_u64()),
        (Some(true), Some(2))
    );
    t.text(bob, r#"{"type":"leave","room":"r"}"#);
    t.drain();
    let (joined, _) = join_since(&mut t, bob, "r", Some(("e1-1", 1)));
    assert_eq!(joined["recovered"], false);
    // Once everyone left and another TTL passed, it is forgotten.
    t.closed(ann);
    t.closed(bob);
    t.at(3 * TTL.as_secs() + 2);
    assert_eq!(t.hub.history_usage(), (0, 0, 0));
}

#[test]
fn the_ring_holds_the_last_history_size_messages() {
    let mut t = history(3);
    let ann = t.open("ann");
    t.join(ann, "r");
    for i in 1..=5 {
        publish(&mut t, "r", &format!("m{i}"));
    }
    t.drain();
    t.text(ann, r#"{"type":"history","room":"r"}"#);
    let h = t.only(ann);
    assert_eq!(
        (h["epoch"].as_str(), h["seq"].as_u64()),
        (Some("e1-1"), Some(5))
    );
    assert_eq!(seqs(h["messages"].as_array().unwrap()), [3, 4, 5]);
    assert_eq!(h["messages"][0]["data"], "m3");
    assert_eq!(
        h["truncated"], false,
        "nothing after `since` (none) is missing"
    );
    assert_eq!(t.hub.history_usage().2, 3);
}

#[test]
fn history_replies_take_since_and_limit_and_say_what_is_missing() {
    let mut t = history(10);
    let ann = t.open("ann");
    t.join(ann, "r");
    for i in 1..=6 {
        publish(&mut t, "r", &format!("m{i}"));
    }
    t.drain();
    let ask = |t: &mut T, extra: &str| {
        t.text(
            ann,
            &format!(r#"{{"type":"history","room":"r","ref":7{extra}}}"#),
        );
        let h = t.only(ann);
        assert_eq!(
            (h["type"].as_str(), h["ref"].as_u64()),
            (Some("history"), Some(7))
        );
        (
            seqs(h["messages"].as_array().unwrap()),
            h["truncated"].as_bool().unwrap(),
        )
    };
    assert_eq!(ask(&mut t, ""), (vec![1, 2, 3, 4, 5, 6], false));
    assert_eq!(ask(&mut t, r#","limit":2"#), (vec![5, 6], true));
    let since = r#","since":{"epoch":"e1-1","seq":4}"#;
    assert_eq!(ask(&mut t, since), (vec![5, 6], false));
    assert_eq!(
        ask(&mut t, &format!("{since},\"limit\":1")),
        (vec![6], true)
    );
    let foreign = r#","since":{"epoch":"old","seq":4}"#;
    assert_eq!(ask(&mut t, foreign), (vec![1, 2, 3, 4, 5, 6], true));
    // A room with no history yet: no epoch, nothing.
    t.text(ann, r#"{"type":"history","room":"empty"}"#);
    let h = t.only(ann);
    assert!(h["epoch"].is_null(), "{h}");
    assert_eq!(h["messages"], json!([]));
    assert_eq!(t.hub.history_usage().0, 1, "asking made no history");
    // Bad shapes.
    t.text(
        ann,
        r#"{"type":"history","room":"r","since":{"epoch":"e1-1"}}"#,
    );
    t.error(ann, "bad_message");
    t.text(ann, r#"{"type":"history","room":"r","limit":-1}"#);
    t.error(ann, "bad_message");
}

#[test]
fn only_configured_rooms_keep_history() {
    let mut t = with(HubConfig {
        history_size: 10,
        history_rooms: RoomPatterns::new(["chat:*".to_string(), "news".to_string()]),
        ..HubConfig::default()
    });
    let ann = t.open("ann");
    let bob = t.open("bob");
    for room in ["chat:1", "news", "other"] {
        t.join(bob, room);
        t.join(ann, room);
    }
    say(&mut t, ann, "chat:1", "a");
    assert_eq!(t.only(bob)["seq"], 1);
    say(&mut t, ann, "other", "b");
    assert!(t.only(bob).get("seq").is_none());
    t.text(ann, r#"{"type":"history","room":"other","ref":1}"#);
    let e = t.error(ann, "no_history");
    assert_eq!(e["ref"], 1);
    t.text(ann, r#"{"type":"leave","room":"other"}"#);
    t.drain();
    let (joined, _) = join_since(&mut t, ann, "other", Some(("e1-1", 0)));
    assert_eq!(
        joined["recovered"], false,
        "a room without history cannot recover"
    );
    assert!(joined.get("epoch").is_none());
    // Binary messages are not part of history.
    let carol = t.open_in("carol", "news");
    t.drain();
    t.binary(carol, b"raw");
    t.drain_frames();
    assert_eq!(t.hub.history_usage().2, 1);
}

#[test]
fn the_byte_cap_drops_the_oldest_rooms_first() {
    use super::history::{MESSAGE_COST, ROOM_COST};
    let frame = 40; // about: header + {"type":"message","room":"rN","from":null,"seq":N,"data":"..."}
    let per_room = ROOM_COST + 2 + 3 * (MESSAGE_COST + frame + 20);
    let mut t = with(HubConfig {
        history_size: 3,
        history_max_bytes: 3 * per_room,
        ..HubConfig::default()
    });
    for i in 1..=4 {
        for _ in 0..3 {
            publish(&mut t, &format!("r{i}"), "x");
        }
    }
    let (rooms, bytes, _) = t.hub.history_usage();
    assert!(bytes <= 3 * per_room, "{bytes}");
    assert!(rooms <= 3, "{rooms}");
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "r1", Some(("e1-1", 3)));
    assert_eq!(joined["recovered"], false, "the oldest room's history went");
    assert_ne!(joined["epoch"], "e1-1");
    let (joined, _) = join_since(&mut t, ann, "r4", Some(("e1-4", 3)));
    assert_eq!(joined["recovered"], true, "the newest stayed");
    // One room alone over the cap keeps its newest messages.
    let mut t = with(HubConfig {
        history_size: 100,
        history_max_bytes: 2000,
        ..HubConfig::default()
    });
    for i in 0..100 {
        publish(&mut t, "big", &format!("m{i}"));
    }
    let (rooms, bytes, messages) = t.hub.history_usage();
    assert_eq!(rooms, 1);
    assert!(
        bytes <= 2000 && messages > 5 && messages < 100,
        "{bytes} {messages}"
    );
    let ann = t.open("ann");
    t.join(ann, "big");
    t.text(ann, r#"{"type":"history","room":"big"}"#);
    let h = t.only(ann);
    let got = seqs(h["messages"].as_array().unwrap());
    assert_eq!(*got.last().unwrap(), 100);
    assert_eq!(got.len(), messages);
}

#[test]
fn a_client_that_joined_an_empty_room_recovers_what_came_while_it_was_away() {
    let mut t = history(10);
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "quiet", None);
    assert_eq!(joined["seq"], 0);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    t.closed(ann);
    publish(&mut t, "quiet", "first");
    let ann = t.open("ann");
    let (joined, replay) = join_since(&mut t, ann, "quiet", Some((&epoch, 0)));
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(seqs(&replay), [1]);
}

#[test]
fn histories_without_messages_last_a_ttl_after_their_room_empties_and_go_first() {
    let per_room = super::history::ROOM_COST + 3;
    let mut t = with(HubConfig {
        history_size: 10,
        history_max_bytes: 20 * per_room + 500,
        ..HubConfig::default()
    });
    let ann = t.open("ann");
    t.join(ann, "kept");
    say(&mut t, ann, "kept", "x");
    for i in 0..50 {
        let room = format!("r{i:02}");
        t.join(ann, &room);
        t.text(ann, &format!(r#"{{"type":"leave","room":"{room}"}}"#));
    }
    t.drain();
    let (rooms, bytes, messages) = t.hub.history_usage();
    assert!(
        rooms <= 22 && bytes <= 20 * per_room + 500,
        "{rooms} {bytes}"
    );
    assert_eq!(
        messages, 1,
        "the room with a message was not dropped for empty ones"
    );
    t.at(TTL.as_secs() / 2);
    let (rooms, _, _) = t.hub.history_usage();
    assert!(rooms > 1, "still within their TTL");
    t.closed(ann);
    t.at(3 * TTL.as_secs());
    assert_eq!(t.hub.history_usage(), (0, 0, 0));
    t.hub.shrink_to_fit();
}

#[test]
fn history_asks_the_same_permission_as_presence() {
    let mut t = history(10);
    let id = t.fresh_id();
    t.try_open_with(
        id,
        OpenRequest {
            user: Some("ann"),
            kind: Kind::Hub,
            grants: Some(Arc::new(Grants::new(Some(vec!["open:*".into()]), false))),
            ..Default::default()
        },
    )
    .unwrap();
    t.drain();
    publish(&mut t, "secret", "x");
    t.text(id, r#"{"type":"history","room":"secret"}"#);
    t.error(id, "forbidden");
    t.text(id, r#"{"type":"history","room":"open:1"}"#);
    assert_eq!(t.only(id)["type"], "history");
}

#[test]
fn a_history_lasts_a_ttl_after_its_room_empties() {
    let mut t = history(10);
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "r", None);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    say(&mut t, ann, "r", "m1");
    // Silent past its TTL with a member: the messages go, the place stays.
    t.at(TTL.as_secs() + 10);
    assert_eq!(t.hub.history_usage().2, 0);
    // The member's connection drops at 2 TTL, just before the next look
    // at the room (2 TTL + 10), and comes back 250 s later: it recovers
    // (nothing missed).
    t.at(2 * TTL.as_secs());
    t.closed(ann);
    t.at(2 * TTL.as_secs() + 11);
    t.at(2 * TTL.as_secs() + 250);
    let ann = t.open("ann");
    let (joined, _) = join_since(&mut t, ann, "r", Some((&epoch, 1)));
    assert_eq!(joined["recovered"], true, "{joined}");
    // Empty for a whole TTL: forgotten.
    t.closed(ann);
    t.at(5 * TTL.as_secs());
    assert_eq!(t.hub.history_usage(), (0, 0, 0));
}
