//! History in cluster mode, as the hub sees it: messages leave to be
//! numbered by Redis and come back as `H`; a join's answer carries the
//! room's place at its marker and what was missed; a gap is filled from
//! the room's stream before anything after it; a lost history closes the
//! room's members here with 4103 so they rejoin.

use super::*;
use crate::hub::cluster::{Gap, HistoryPage, ListedHistory};

fn history_cluster() -> T {
    let mut t = T::with(HubConfig {
        ping_interval: INTERVAL,
        ping_timeout: TIMEOUT,
        cluster: true,
        history_size: 100,
        ..HubConfig::default()
    });
    t.hub.set_node_id(Arc::from(NODE));
    t
}

/// `H` as the HPUB script publishes it.
fn h(from: &str, seq: u64, epoch: &str, text: &str) -> Vec<u8> {
    format!(
        "H {from} {seq} {epoch}\n{{\"type\":\"message\",\"room\":\"r\",\"from\":null,\"data\":\"{text}\"}}"
    )
    .into_bytes()
}

fn body(text: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"message\",\"room\":\"r\",\"from\":null,\"data\":\"{text}\"}}"
    ))
}

/// Join `r` with the cluster answering `history`; its marker comes first.
fn join_with(t: &mut T, id: ConnId, since: Option<(&str, u64)>, history: ListedHistory) {
    let since = since.map_or(String::new(), |(e, s)| {
        format!(r#","since":{{"epoch":"{e}","seq":{s}}}"#)
    });
    t.text(id, &format!(r#"{{"type":"join","room":"r"{since}}}"#));
    let mut pending = None;
    for o in t.take_cluster() {
        if let Output::Presence(c) = o {
            let ask = c
                .history
                .clone()
                .expect("a join of a room with history asks for it");
            assert_eq!(
                ask.since.as_ref().map(|(e, s)| (e.as_str(), *s)),
                since_of(&since)
            );
            marker_arrives(t, id, c.join);
            pending = c.reply;
        }
    }
    let listing = Listing {
        members: 1,
        users: Vec::new(),
        history: Some(history),
    };
    t.answer(
        pending.expect("a join's reply"),
        ClusterAnswer::Listing(listing),
    );
}

/// A plain join of `r` whose answer says the room's history (epoch `e1`)
/// is at `seq`.
fn join_at(t: &mut T, id: ConnId, seq: u64) {
    let history = ListedHistory {
        epoch: "e1".into(),
        seq,
        ..Default::default()
    };
    join_with(t, id, None, history);
}

/// A history cluster with `user` in room `r` at seq `seq` (epoch `e1`),
/// its outputs taken.
fn member_at(user: &str, seq: u64) -> (T, ConnId) {
    let mut t = history_cluster();
    let id = t.open_granted(user);
    join_at(&mut t, id, seq);
    t.drain();
    (t, id)
}

fn since_of(json: &str) -> Option<(&str, u64)> {
    (!json.is_empty()).then_some(("e1", 3))
}

fn seqs(out: &[(ConnId, Value)], to: ConnId) -> Vec<u64> {
    out.iter()
        .filter(|(c, v)| *c == to && v["type"] == "message")
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn messages_are_numbered_by_redis_and_delivered_with_their_seq() {
    let mut t = history_cluster();
    let (ann, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(ann, "r");
    t.join_cluster(bob, "r");
    t.text(ann, r#"{"type":"message","room":"r","data":"hi"}"#);
    let out = t.take_cluster();
    let [Output::HistoryPublish { room, except, body }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((&**room, *except), ("r", Some(ann)));
    assert!(body.starts_with(protocol::MESSAGE_PREFIX), "{body:?}");
    assert!(!String::from_utf8_lossy(body).contains("seq"));
    let data = serde_json::value::to_raw_value("from the API").unwrap();
    assert_eq!(t.hub.publish("r", &data), 2);
    t.step();
    assert!(matches!(
        &t.take_cluster()[..],
        [Output::HistoryPublish { except: None, .. }]
    ));
    // Back as H: to every member but the sender, with the seq Redis gave.
    t.arrive(
        ChannelName::Room("r"),
        &h(&format!("{NODE} {ann}"), 1, "e1", "hi"),
    );
    let got = t.drain();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1["seq"].as_u64()), (bob, Some(1)));
    assert_eq!(got[0].1["data"], "hi");
    t.arrive(ChannelName::Room("r"), &h("n2-0000beef -", 2, "e1", "x"));
    assert_eq!(t.drain().len(), 2);
    // What is not a room message is not sent on.
    t.arrive(ChannelName::Room("r"), b"H n2 - 3 e1\n{\"type\":\"close\"}");
    t.arrive(
        ChannelName::Room("r"),
        b"H n2 - 0 e1\n{\"type\":\"message\",}",
    );
    assert!(t.drain().is_empty());
}

#[test]
fn a_join_gets_the_missed_messages_then_only_what_came_after_its_marker() {
    let mut t = history_cluster();
    let bob = t.open_granted("bob");
    t.join_cluster(bob, "r");
    t.arrive(ChannelName::Room("r"), &h("n2 -", 3, "e1", "three"));
    t.drain();
    let ann = t.open_granted("ann");
    // Ann was at 3; Redis holds 4 and 5 at her marker.
    t.text(
        ann,
        r#"{"type":"join","room":"r","since":{"epoch":"e1","seq":3},"ref":9}"#,
    );
    let mut pending = None;
    for o in t.take_cluster() {
        if let Output::Presence(c) = o {
            let ask = c.history.clone().unwrap();
            assert_eq!(ask.since, Some(("e1".to_string(), 3)));
            // Frames before the marker are not hers; after it they wait.
            t.arrive(ChannelName::Room("r"), &h("n2 -", 4, "e1", "four"));
            marker_arrives(&mut t, ann, c.join);
            t.arrive(ChannelName::Room("r"), &h("n2 -", 6, "e1", "six"));
            pending = c.reply;
        }
    }
    // (bob missed 5: filling; answered below.)
    let fill = t.take_cluster();
    assert!(
        matches!(
            &fill[..],
            [Output::HistoryFill(Gap {
                after: 4,
                upto: 5,
                ..
            })]
        ),
        "{fill:?}"
    );
    let Some(Output::HistoryFill(gap)) = fill.into_iter().next() else {
        unreachable!()
    };
    t.hub
        .handle_history_fill(&gap, Some(vec![(Bytes::from("n2 -"), body("five"))]));
    t.step();
    let history = ListedHistory {
        epoch: "e1".into(),
        seq: 5,
        recovered: Some(true),
        replay: vec![body("four"), body("five")],
    };
    t.answer(
        pending.unwrap(),
        ClusterAnswer::Listing(Listing {
            members: 2,
            users: Vec::new(),
            history: Some(history),
        }),
    );
    let out = t.drain();
    let to_ann: Vec<&Value> = out
        .iter()
        .filter(|(c, _)| *c == ann)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_ann[0]["type"], "joined");
    assert_eq!(
        (to_ann[0]["epoch"].as_str(), to_ann[0]["seq"].as_u64()),
        (Some("e1"), Some(5))
    );
    assert_eq!(
        (to_ann[0]["recovered"].as_bool(), to_ann[0]["ref"].as_u64()),
        (Some(true), Some(9))
    );
    assert_eq!(seqs(&out, ann), [4, 5, 6], "the filled 5 is not sent twice");
    assert_eq!(seqs(&out, bob), [4, 5, 6]);
    assert_eq!(t.hub.counters().recovered, 1);
}

#[test]
fn a_join_that_cannot_recover_says_so_and_replays_nothing() {
    let mut t = history_cluster();
    let ann = t.open_granted("ann");
    let history = ListedHistory {
        epoch: "e2".into(),
        seq: 40,
        recovered: Some(false),
        replay: Vec::new(),
    };
    join_with(&mut t, ann, Some(("e1", 3)), history);
    let out = t.drain();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].1["recovered"].as_bool(), out[0].1["epoch"].as_str()),
        (Some(false), Some("e2"))
    );
    // Redis unreachable: joined from this node's view, not recovered.
    let bob = t.open_granted("bob");
    t.text(
        bob,
        r#"{"type":"join","room":"r","since":{"epoch":"e1","seq":3}}"#,
    );
    for o in t.take_cluster() {
        if let Output::Presence(PresenceChange { reply: Some(p), .. }) = o {
            t.answer(p, ClusterAnswer::Unavailable);
        }
    }
    let joined = t.only(bob);
    assert_eq!(joined["recovered"], false);
    assert!(joined.get("epoch").is_none());
}

#[test]
fn a_gap_is_filled_before_anything_after_it_or_the_members_rejoin() {
    let (mut t, ann) = member_at("ann", 2);
    // 3 and 4 were lost on the way here: 5 waits, and so does 6 and a
    // presence event, until the gap is filled.
    t.arrive(ChannelName::Room("r"), &h("n2 -", 5, "e1", "five"));
    t.arrive(ChannelName::Room("r"), &h("n2 -", 6, "e1", "six"));
    t.arrive(ChannelName::Room("r"), b"J n2 - 2 3\ncat");
    assert!(t.drain().is_empty());
    let out = t.take_cluster();
    let [Output::HistoryFill(gap)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (&*gap.room, &*gap.epoch, gap.after, gap.upto),
        ("r", "e1", 2, 4)
    );
    // An answer to another gap (an older one) is ignored.
    let stale = Gap {
        after: 1,
        ..gap.clone()
    };
    t.hub.handle_history_fill(&stale, None);
    t.step();
    assert!(t.drain().is_empty() && t.take_closes().is_empty());
    let mine = format!("{NODE} {ann}");
    t.hub.handle_history_fill(
        gap,
        Some(vec![
            (Bytes::from("n2 -"), body("three")),
            (Bytes::from(mine), body("four")),
        ]),
    );
    t.step();
    let out = t.drain();
    assert_eq!(
        seqs(&out, ann),
        [3, 5, 6],
        "4 was ann's own (sent without echo)"
    );
    assert_eq!(
        out.last().unwrap().1["type"],
        "user_joined",
        "in the channel's order"
    );
    // Another gap that Redis cannot fill: the members rejoin (4103).
    t.arrive(ChannelName::Room("r"), &h("n2 -", 9, "e1", "nine"));
    let Some(Output::HistoryFill(gap)) = t.take_cluster().into_iter().next() else {
        panic!("a fill")
    };
    t.hub.handle_history_fill(&gap, None);
    t.step();
    assert_eq!(t.take_closes(), [(ann, CloseReason::HistoryGap)]);
}

#[test]
fn a_new_epoch_under_members_closes_them_to_rejoin() {
    let (mut t, ann) = member_at("ann", 7);
    t.arrive(
        ChannelName::Room("r"),
        &h("n2 -", 1, "e9", "after a Redis restart"),
    );
    assert!(t.drain().is_empty());
    assert_eq!(t.take_closes(), [(ann, CloseReason::HistoryGap)]);
    assert_eq!(CloseReason::HistoryGap.code(), 4103);
}

#[test]
fn the_history_request_is_answered_from_redis() {
    let mut t = history_cluster();
    let ann = t.open_granted("ann");
    t.text(ann, r#"{"type":"history","room":"r","limit":2,"ref":4}"#);
    let out = t.take_cluster();
    let [Output::HistoryRead {
        room,
        since: None,
        limit: 2,
        ..
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(&**room, "r");
    let Some(Output::HistoryRead { reply, .. }) = out.into_iter().next() else {
        unreachable!()
    };
    let page = HistoryPage {
        epoch: Some("e1".into()),
        seq: 8,
        truncated: true,
        messages: vec![(7, body("seven")), (8, body("eight"))],
    };
    t.answer(reply, ClusterAnswer::History(page));
    let h = t.only(ann);
    assert_eq!(
        (h["type"].as_str(), h["ref"].as_u64(), h["seq"].as_u64()),
        (Some("history"), Some(4), Some(8))
    );
    assert_eq!(h["messages"][1]["seq"], 8);
    assert_eq!(h["messages"][1]["data"], "eight");
    assert_eq!(h["truncated"], true);
    t.text(ann, r#"{"type":"history","room":"r"}"#);
    let Some(Output::HistoryRead { reply, .. }) = t.take_cluster().into_iter().next() else {
        panic!()
    };
    t.answer(reply, ClusterAnswer::Unavailable);
    t.error(ann, "unavailable");
}

/// Join `r` as `id` (no `since`): the presence change's reply and join
/// number, the marker not delivered.
/// The join marker of `id`'s join `join` comes back on room `r`'s channel.
fn marker_arrives(t: &mut T, id: ConnId, join: Option<u64>) {
    let marker = format!("M {NODE} {}\n", cluster::conn_word(id, join));
    t.arrive(ChannelName::Room("r"), marker.as_bytes());
}

fn start_join(t: &mut T, id: ConnId, since: Option<(&str, u64)>) -> (Pending, Option<u64>) {
    let since = since.map_or(String::new(), |(e, s)| {
        format!(r#","since":{{"epoch":"{e}","seq":{s}}}"#)
    });
    t.text(id, &format!(r#"{{"type":"join","room":"r"{since}}}"#));
    for o in t.take_cluster() {
        if let Output::Presence(c) = o {
            return (c.reply.expect("a join's reply"), c.join);
        }
    }
    panic!("no presence change")
}

fn listing(seq: u64, recovered: Option<bool>, replay: &[&str]) -> ClusterAnswer {
    ClusterAnswer::Listing(Listing {
        members: 1,
        users: Vec::new(),
        history: Some(ListedHistory {
            epoch: "e1".into(),
            seq,
            recovered,
            replay: replay.iter().map(|r| body(r)).collect(),
        }),
    })
}

#[test]
fn a_marker_that_waited_behind_a_gap_still_gets_its_joined_first() {
    let (mut t, bob) = member_at("bob", 12);
    // 13 is lost; 14 starts a fill.
    t.arrive(ChannelName::Room("r"), &h("n2 -", 14, "e1", "14"));
    let Some(Output::HistoryFill(gap)) = t.take_cluster().into_iter().next() else {
        panic!("a fill")
    };
    // Ann rejoins from 10: Redis answers first (at her marker: 14), then
    // her marker arrives and waits behind the fill.
    let ann = t.open_granted("ann");
    let (reply, join) = start_join(&mut t, ann, Some(("e1", 10)));
    t.answer(reply, listing(14, Some(true), &["11", "12", "13", "14"]));
    marker_arrives(&mut t, ann, join);
    assert!(t.drain().is_empty());
    t.hub
        .handle_history_fill(&gap, Some(vec![(Bytes::from("n2 -"), body("13"))]));
    t.step();
    let out = t.drain();
    let to_ann: Vec<&Value> = out
        .iter()
        .filter(|(c, _)| *c == ann)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_ann[0]["type"], "joined", "{to_ann:?}");
    assert_eq!(seqs(&out, ann), [11, 12, 13, 14], "the replay only, once");
    assert_eq!(seqs(&out, bob), [13, 14]);
    t.arrive(ChannelName::Room("r"), &h("n2 -", 15, "e1", "15"));
    assert_eq!(seqs(&t.drain(), ann), [15]);
}

#[test]
fn a_join_with_a_hole_in_its_stream_is_closed_to_rejoin() {
    // In effect by its timeout (its marker lost): what was delivered
    // between the marker and then was not held for it.
    let (mut t, bob) = member_at("bob", 5);
    let ann = t.open_granted("ann");
    let (reply, _) = start_join(&mut t, ann, Some(("e1", 5)));
    t.answer(reply, listing(5, Some(true), &[]));
    t.arrive(ChannelName::Room("r"), &h("n2 -", 6, "e1", "6"));
    assert_eq!(seqs(&t.drain(), bob), [6]);
    t.at(JOIN_TIMEOUT.as_secs() + 1);
    assert_eq!(t.take_closes(), [(ann, CloseReason::HistoryGap)]);
    assert!(
        t.drain().iter().all(|(c, _)| *c != ann),
        "nothing before the close"
    );
    // Behind the join's place (this node lost 6 and 7, nothing showed it
    // yet): what it would deliver next the client had replayed.
    let mut t = history_cluster();
    let bob = t.open_granted("bob");
    join_at(&mut t, bob, 5);
    let ann = t.open_granted("ann");
    let (reply, join) = start_join(&mut t, ann, Some(("e1", 5)));
    marker_arrives(&mut t, ann, join);
    t.answer(reply, listing(7, Some(true), &["6", "7"]));
    assert_eq!(t.take_closes(), [(ann, CloseReason::HistoryGap)]);
    assert_eq!(t.hub.counters().history_gap_closes, 1);
}

#[test]
fn a_joiners_own_message_before_its_answer_is_no_hole() {
    let (mut t, bob) = member_at("bob", 5);
    // Ann joins and at once sends a message (after her join in Redis:
    // seq 6); her marker and her message come before her join's answer.
    let ann = t.open_granted("ann");
    let (reply, join) = start_join(&mut t, ann, Some(("e1", 5)));
    marker_arrives(&mut t, ann, join);
    t.arrive(
        ChannelName::Room("r"),
        &h(&format!("{NODE} {ann}"), 6, "e1", "mine"),
    );
    t.answer(reply, listing(5, Some(true), &[]));
    assert!(t.take_closes().is_empty());
    let out = t.drain();
    assert!(seqs(&out, ann).is_empty(), "not her own message");
    assert_eq!(seqs(&out, bob), [6]);
    t.arrive(ChannelName::Room("r"), &h("n2 -", 7, "e1", "7"));
    assert_eq!(seqs(&t.drain(), ann), [7]);
}

#[test]
fn a_first_join_with_a_hole_starts_where_the_node_is_and_a_repeated_join_says_so() {
    let (mut t, _bob) = member_at("bob", 5);
    let ann = t.open_granted("ann");
    let (reply, _) = start_join(&mut t, ann, None);
    t.answer(reply, listing(5, None, &[]));
    t.arrive(ChannelName::Room("r"), &h("n2 -", 6, "e1", "6"));
    t.drain();
    t.at(JOIN_TIMEOUT.as_secs() + 1);
    assert!(
        t.take_closes().is_empty(),
        "it asked for nothing before its join"
    );
    let joined = t.only(ann);
    assert_eq!(
        (joined["seq"].as_u64(), joined["epoch"].as_str()),
        (Some(6), Some("e1"))
    );
    // Joining again: answered with this node's place.
    t.arrive(ChannelName::Room("r"), &h("n2 -", 7, "e1", "7"));
    t.drain();
    t.text(ann, r#"{"type":"join","room":"r"}"#);
    let Some(Output::Query { reply, .. }) = t.take_cluster().into_iter().next() else {
        panic!("a query")
    };
    t.answer(reply, ClusterAnswer::Unavailable);
    let again = t.only(ann);
    assert_eq!(
        (again["seq"].as_u64(), again["epoch"].as_str()),
        (Some(7), Some("e1"))
    );
}
