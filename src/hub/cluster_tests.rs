//! Cluster mode of the pure hub: its outputs and its `handle_cluster_*`
//! inputs, with a fake clock. The test plays the driver (and Redis): it
//! reads what the hub asks for and answers as the cluster would.

use super::*;
use crate::hub::cluster::{Channel, ListedUser, Listing, PendingKind};

const NODE: &str = "n1-00000001";

fn cluster() -> T {
    let mut t = T::with(HubConfig {
        ping_interval: INTERVAL,
        ping_timeout: TIMEOUT,
        cluster: true,
        ..HubConfig::default()
    });
    t.hub.set_node_id(Arc::from(NODE));
    t
}

impl T {
    fn take_cluster(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.cluster)
    }

    /// Open in cluster mode and grant the claim; discard the welcome and
    /// every cluster output.
    fn open_granted(&mut self, user: &str) -> ConnId {
        let id = self.try_open(Some(user), None).expect("open");
        self.hub.handle_cluster_claim(self.now, id, true);
        self.step();
        self.discard(id);
        self.take_cluster();
        id
    }

    /// Deliver `payload` as if it came back on `channel`.
    fn arrive(&mut self, channel: ChannelName<'_>, payload: &[u8]) {
        self.hub
            .handle_cluster_message(channel, &Bytes::copy_from_slice(payload));
        self.step();
    }

    fn answer(&mut self, pending: Pending, answer: ClusterAnswer) {
        self.hub.handle_cluster_answer(pending, answer);
        self.step();
    }
}

/// The `(room, user, connections)` of every presence change, and the
/// pending replies they carry.
fn presence_changes(out: Vec<Output>) -> (Vec<(String, String, u32)>, Vec<Pending>) {
    let mut changes = Vec::new();
    let mut replies = Vec::new();
    for o in out {
        if let Output::Presence(c) = o {
            changes.push((c.room.to_string(), c.user.to_string(), c.connections));
            replies.extend(c.reply);
        }
    }
    (changes, replies)
}

#[test]
fn the_welcome_waits_for_the_clusters_count_of_the_user() {
    let mut t = cluster();
    let id = t.try_open(Some("ann"), Some("lobby")).unwrap();
    assert!(t.drain().is_empty(), "no welcome before the claim");
    let out = t.take_cluster();
    assert!(matches!(&out[0], Output::Subscribe(Channel::User(u)) if &**u == "ann"));
    assert!(matches!(
        &out[1],
        Output::UserConns { user, connections: 1, claim: Some(c) } if &**user == "ann" && *c == id
    ));
    t.hub.handle_cluster_claim(t.now, id, true);
    t.step();
    assert_eq!(t.only(id)["type"], "welcome");
    // Then the room of the URL: subscribed, and asserted with a reply due.
    let out = t.take_cluster();
    assert!(matches!(&out[0], Output::Subscribe(Channel::Room(r)) if &**r == "lobby"));
    let (changes, replies) = presence_changes(out);
    assert_eq!(changes, [("lobby".into(), "ann".into(), 1)]);
    assert!(
        matches!(&replies[0].kind, PendingKind::Joined { room, details: false, join: Some(_) } if &**room == "lobby")
    );

    // Over the cap somewhere else: closed with 1008, and the count taken back.
    let second = t.try_open(Some("ann"), None).unwrap();
    t.take_cluster();
    t.hub.handle_cluster_claim(t.now, second, false);
    t.step();
    assert_eq!(
        t.take_closes(),
        [(second, CloseReason::UserConnectionLimit)]
    );
    let out = t.take_cluster();
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::UserConns {
                connections: 1,
                claim: None,
                ..
            }
        )),
        "{out:?}"
    );
    assert!(t.drain().is_empty());
    // A claim answered after its connection closed is ignored.
    t.hub.handle_cluster_claim(t.now, second, true);
    t.step();
    assert!(t.drain().is_empty());
}

#[test]
fn room_messages_go_out_once_and_are_delivered_when_they_come_back() {
    let mut t = cluster();
    let (ann, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(ann, "r");
    t.join_cluster(bob, "r");
    t.text(ann, r#"{"type":"message","room":"r","data":{"x":1}}"#);
    assert!(
        t.drain().is_empty(),
        "nothing delivered before Redis gives it back"
    );
    let out = t.take_cluster();
    let [Output::Publish {
        channel: Channel::Room(room),
        envelope,
        reply: None,
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(&**room, "r");
    assert!(envelope.starts_with(format!("F {NODE} {ann}\n").as_bytes()));
    // Back from Redis: to every member but the sender.
    t.arrive(ChannelName::Room("r"), envelope);
    let got = t.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, bob);
    assert_eq!(got[0].1["data"]["x"], 1);
    // The same envelope from another node skips nobody here.
    let foreign = [
        b"F n2-0000beef ".as_slice(),
        ann.to_string().as_bytes(),
        &envelope[envelope.iter().position(|&b| b == b'\n').unwrap()..],
    ]
    .concat();
    t.arrive(ChannelName::Room("r"), &foreign);
    assert_eq!(t.drain().len(), 2);
    // A room with no member here: nothing.
    t.arrive(ChannelName::Room("elsewhere"), envelope);
    assert!(t.drain().is_empty());
}

#[test]
fn presence_is_asserted_as_absolute_counts_and_channels_follow_members() {
    let mut t = cluster();
    let a1 = t.open_granted("ann");
    let a2 = t.open_granted("ann");
    t.join_cluster(a1, "r");
    t.text(a2, r#"{"type":"join","room":"r"}"#);
    let (changes, _) = presence_changes(t.take_cluster());
    assert_eq!(changes, [("r".into(), "ann".into(), 2)]);
    t.text(a1, r#"{"type":"leave","room":"r","ref":5}"#);
    let out = t.take_cluster();
    assert!(
        !out.iter().any(|o| matches!(o, Output::Unsubscribe(_))),
        "a2 is still in r"
    );
    let (changes, mut replies) = presence_changes(out);
    assert_eq!(changes, [("r".into(), "ann".into(), 1)]);
    // The left reply carries the cluster's member count.
    t.answer(
        replies.remove(0),
        ClusterAnswer::Listing(Listing {
            members: 7,
            users: Vec::new(),
            history: None,
        }),
    );
    let left = t.only(a1);
    assert_eq!(
        (
            left["type"].as_str(),
            left["members"].as_u64(),
            left["ref"].as_i64()
        ),
        (Some("left"), Some(7), Some(5))
    );
    // The last member's connection closes: count 0, then both channels left.
    t.closed(a1);
    t.take_cluster();
    t.closed(a2);
    let out = t.take_cluster();
    let kinds: Vec<String> = out
        .iter()
        .map(|o| match o {
            Output::Presence(c) => format!("presence {} {} {}", c.room, c.user, c.connections),
            Output::Unsubscribe(Channel::Room(r)) => format!("unsubscribe room {r}"),
            Output::Unsubscribe(Channel::User(u)) => format!("unsubscribe user {u}"),
            Output::UserConns {
                user, connections, ..
            } => format!("user {user} {connections}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "presence r ann 0",
            "unsubscribe room r",
            "user ann 0",
            "unsubscribe user ann"
        ]
    );
    assert_eq!(t.hub.registry().room_count(), 0);
}

#[test]
fn a_heartbeat_timeout_tells_the_cluster_too() {
    let mut t = cluster();
    let ann = t.open_granted("ann");
    t.join_cluster(ann, "r");
    t.at(INTERVAL.as_secs());
    t.at((INTERVAL + TIMEOUT).as_secs() + 1);
    assert_eq!(t.take_closes(), [(ann, CloseReason::HeartbeatTimeout)]);
    let (changes, _) = presence_changes(t.take_cluster());
    assert_eq!(changes, [("r".into(), "ann".into(), 0)]);
}

#[test]
fn joined_and_presence_answer_with_the_clusters_listing() {
    let mut t = cluster();
    let ann = t.open_granted("ann");
    t.text(
        ann,
        r#"{"type":"join","room":"r","details":true,"ref":"j"}"#,
    );
    let (_, mut replies) = presence_changes(t.take_cluster());
    let listing = Listing {
        members: 3,
        users: vec![
            ListedUser {
                user: "ann".into(),
                connections: 1,
                since: 5,
                info: None,
            },
            ListedUser {
                user: "zed".into(),
                connections: 2,
                since: 4,
                info: Some(RawValue::from_string(r#"{"n":"Z"}"#.into()).unwrap()),
            },
        ],
        history: None,
    };
    let join = join_of(&replies[0]);
    t.answer(replies.remove(0), ClusterAnswer::Listing(listing));
    // The join's marker comes back on the room's channel (its place in
    // the room's order): only then the joined goes out.
    assert!(t.drain().is_empty());
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{join}\n").as_bytes(),
    );
    let j = t.only(ann);
    assert_eq!(
        (j["type"].as_str(), j["members"].as_u64(), j["ref"].as_str()),
        (Some("joined"), Some(3), Some("j"))
    );
    assert_eq!(j["users"], json!(["ann", "zed"]));
    assert_eq!(j["truncated"], true);
    assert_eq!(j["details"][1]["info"]["n"], "Z");
    // Redis unreachable: this node's view.
    t.text(ann, r#"{"type":"presence","room":"r"}"#);
    let out = t.take_cluster();
    let Some(Output::Query { reply, .. }) = out.into_iter().next() else {
        panic!()
    };
    t.answer(reply, ClusterAnswer::Unavailable);
    let p = t.only(ann);
    assert_eq!(
        (p["type"].as_str(), p["members"].as_u64()),
        (Some("presence"), Some(1))
    );
    // An answer for a connection that has gone is dropped.
    t.text(ann, r#"{"type":"presence","room":"r"}"#);
    let Some(Output::Query { reply, .. }) = t.take_cluster().into_iter().next() else {
        panic!()
    };
    t.closed(ann);
    t.answer(reply, ClusterAnswer::Unavailable);
    assert!(t.drain().is_empty());
}

#[test]
fn presence_events_from_redis_skip_the_user_themself() {
    let mut t = cluster();
    let (a1, a2, bob) = (
        t.open_granted("ann"),
        t.open_granted("ann"),
        t.open_granted("bob"),
    );
    for id in [a1, a2, bob] {
        t.join_cluster(id, "r");
    }
    t.arrive(ChannelName::Room("r"), b"J n2-00000002 - 2 3\nann{\"k\":1}");
    let got = t.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, bob);
    assert_eq!(
        got[0].1,
        json!({"type":"user_joined","room":"r","user":"ann","members":2,"info":{"k":1}})
    );
    t.arrive(ChannelName::Room("r"), b"L n2-00000002 1 3\nzed");
    assert_eq!(t.drain().len(), 3);
    // Strangers on our channels are ignored.
    for junk in [
        &b"hello"[..],
        b"J n2 - x 3\nann",
        b"L n2 1 9\nann",
        b"\xff\xfe\n",
    ] {
        t.arrive(ChannelName::Room("r"), junk);
        assert!(t.drain().is_empty());
        assert!(t.take_cluster().is_empty());
    }
}

#[test]
fn privates_to_users_elsewhere_learn_whether_anyone_got_them() {
    let mut t = cluster();
    let ann = t.open_granted("ann");
    t.text(ann, r#"{"type":"private","to":"bob","data":1,"ref":9}"#);
    let out = t.take_cluster();
    let Some(Output::Publish {
        channel: Channel::User(u),
        reply: Some(reply),
        ..
    }) = out.into_iter().next()
    else {
        panic!()
    };
    assert_eq!(&*u, "bob");
    t.answer(reply, ClusterAnswer::Delivered(0));
    let e = t.only(ann);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_i64()),
        (Some("user_offline"), Some(9))
    );
    // Bob is online somewhere: nothing comes back to ann.
    t.text(ann, r#"{"type":"private","to":"bob","data":2}"#);
    let Some(Output::Publish {
        reply: Some(reply), ..
    }) = t.take_cluster().into_iter().next()
    else {
        panic!()
    };
    t.answer(reply, ClusterAnswer::Delivered(1));
    assert!(t.drain().is_empty());
    // A user with a connection here needs no answer (known online).
    let _bob = t.open_granted("bob");
    t.text(ann, r#"{"type":"private","to":"bob","data":3}"#);
    let out = t.take_cluster();
    assert!(
        matches!(&out[..], [Output::Publish { reply: None, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_disconnect_envelope_closes_the_users_connections_here() {
    let mut t = cluster();
    let (a1, a2, bob) = (
        t.open_granted("ann"),
        t.open_granted("ann"),
        t.open_granted("bob"),
    );
    assert_eq!(t.hub.disconnect_user("ann", 4005, Some("bye")), 2);
    t.step();
    assert!(
        t.take_closes().is_empty(),
        "closed when it comes back, like every node"
    );
    let Some(Output::Publish { envelope, .. }) = t.take_cluster().into_iter().next() else {
        panic!()
    };
    t.arrive(ChannelName::User("ann"), &envelope);
    let closes = t.take_closes();
    assert_eq!(
        closes,
        [
            (a1, CloseReason::Server(4005)),
            (a2, CloseReason::Server(4005))
        ]
    );
    // A code a client may not be sent becomes 4000.
    t.arrive(ChannelName::User("bob"), b"D 1006\n");
    assert_eq!(t.take_closes(), [(bob, CloseReason::Server(4000))]);
}

impl T {
    /// Join in cluster mode and answer the join with this node's view.
    fn join_cluster(&mut self, id: ConnId, room: &str) {
        self.text(id, &format!(r#"{{"type":"join","room":"{room}"}}"#));
        let out = self.take_cluster();
        for o in out {
            if let Output::Presence(PresenceChange { reply: Some(p), .. })
            | Output::Query { reply: p, .. } = o
            {
                self.answer(p, ClusterAnswer::Unavailable);
            }
        }
        self.discard(id);
    }
}

#[test]
fn what_a_client_sends_before_its_welcome_waits_for_the_claim() {
    let mut t = cluster();
    let id = t.try_open(Some("ann"), None).unwrap();
    t.take_cluster();
    t.text(id, r#"{"type":"join","room":"early","ref":1}"#);
    t.text(id, r#"{"type":"ping","ref":2}"#);
    assert!(t.drain().is_empty(), "nothing handled before the welcome");
    assert!(t.take_cluster().is_empty());
    t.hub.handle_cluster_claim(t.now, id, true);
    t.step();
    let out = t.take_cluster();
    let (changes, replies) = presence_changes(out);
    assert_eq!(changes, [("early".into(), "ann".into(), 1)]);
    for p in replies {
        t.answer(p, ClusterAnswer::Unavailable);
    }
    let got: Vec<String> = t
        .drain()
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        ["welcome", "pong", "joined"],
        "welcome first, then the early messages in order"
    );
    // Bounded: one past MAX_EARLY closes the connection (4102), with
    // nothing sent before a welcome.
    let id = t.try_open(Some("bob"), None).unwrap();
    for _ in 0..MAX_EARLY + 1 {
        t.text(id, r#"{"type":"ping"}"#);
    }
    assert!(t.drain().is_empty());
    assert_eq!(t.take_closes(), [(id, CloseReason::RateLimited)]);
    // A late answer to its claim finds nothing to do.
    t.hub.handle_cluster_claim(t.now, id, true);
    t.step();
    assert!(t.drain().is_empty());
    // Privates and broadcasts skip a connection still waiting.
    let ann = id_of_user(&t, "ann");
    let waiting = t.try_open(Some("ann"), None).unwrap();
    t.take_cluster();
    t.arrive(ChannelName::User("ann"), &frame_env(b"\x81\x02hi"));
    t.arrive(ChannelName::All, &frame_env(b"\x81\x02hi"));
    let got: Vec<ConnId> = t.drain_frames().iter().map(|f| f.to).collect();
    assert_eq!(got, [ann, ann], "not to {waiting}");
}

/// The number of the join a `joined` reply is for.
fn join_of(p: &Pending) -> u64 {
    match p.kind {
        PendingKind::Joined { join: Some(n), .. } => n,
        _ => panic!("not a join's reply: {p:?}"),
    }
}

fn id_of_user(t: &T, user: &str) -> ConnId {
    let reg = t.hub.registry();
    reg.user(reg.user_key(user).unwrap()).unwrap().conns[0]
}

fn frame_env(frame: &[u8]) -> Vec<u8> {
    let mut e = b"F n2-00000002 -\n".to_vec();
    e.extend_from_slice(frame);
    e
}

#[test]
fn anonymous_ids_are_unique_over_the_cluster() {
    let mut t = cluster();
    let id = t.try_open(None, None).unwrap();
    t.hub.handle_cluster_claim(t.now, id, true);
    t.step();
    let w = t.only(id);
    assert_eq!(w["user"], "anon-00000001-1", "{w}");
}

#[test]
fn user_left_skips_the_users_devices_that_joined_since() {
    let mut t = cluster();
    let (a1, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(a1, "r");
    t.join_cluster(bob, "r");
    // Redis still announces ann's earlier departure after a1 joined anew.
    t.arrive(ChannelName::Room("r"), b"L n2-00000002 1 3\nann");
    let got = t.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0, got[0].1["type"].as_str()),
        (bob, Some("user_left"))
    );
}

#[test]
fn a_join_takes_effect_where_its_marker_is_in_the_rooms_order() {
    let mut t = cluster();
    let (ann, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(bob, "r");
    t.text(ann, r#"{"type":"join","room":"r","ref":1}"#);
    let (_, mut replies) = presence_changes(t.take_cluster());
    // Published before ann's join took effect: bob's, not ann's.
    t.arrive(ChannelName::Room("r"), &frame_env(b"\x81\x06\"old\"\x20"));
    let got: Vec<ConnId> = t.drain_frames().iter().map(|f| f.to).collect();
    assert_eq!(got, [bob]);
    // Another join's marker (an earlier join of the room) changes nothing.
    let join = join_of(&replies[0]);
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{}\n", join - 1).as_bytes(),
    );
    t.arrive(ChannelName::Room("r"), &frame_env(b"\x81\x06\"old2\""));
    let got: Vec<ConnId> = t.drain_frames().iter().map(|f| f.to).collect();
    assert_eq!(got, [bob]);
    // The marker, then a message: it waits for ann's joined.
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{join}\n").as_bytes(),
    );
    t.arrive(ChannelName::Room("r"), &frame_env(b"\x81\x05\"new\""));
    let got: Vec<ConnId> = t.drain_frames().iter().map(|f| f.to).collect();
    assert_eq!(got, [bob]);
    t.answer(
        replies.remove(0),
        ClusterAnswer::Listing(Listing {
            members: 2,
            users: Vec::new(),
            history: None,
        }),
    );
    let got = t.drain_frames();
    let to_ann: Vec<String> = got
        .iter()
        .filter(|f| f.to == ann)
        .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
        .collect();
    assert_eq!(to_ann.len(), 2, "{to_ann:?}");
    assert!(to_ann[0].contains("\"joined\""), "joined first: {to_ann:?}");
    assert_eq!(to_ann[1], "\"new\"");
    // From now on, straight through.
    t.arrive(ChannelName::Room("r"), &frame_env(b"\x81\x05\"now\""));
    assert_eq!(t.drain_frames().len(), 2);
    // A marker of another node's connection with the same id changes nothing.
    t.arrive(
        ChannelName::Room("r"),
        format!("M n2-00000002 {ann}\n").as_bytes(),
    );
    assert!(t.drain_frames().is_empty());
}

#[test]
fn a_join_whose_marker_never_comes_takes_effect_after_a_while() {
    let mut t = cluster();
    let (ann, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(bob, "r");
    t.text(ann, r#"{"type":"join","room":"r"}"#);
    let (_, mut replies) = presence_changes(t.take_cluster());
    t.answer(
        replies.remove(0),
        ClusterAnswer::Listing(Listing {
            members: 2,
            users: Vec::new(),
            history: None,
        }),
    );
    assert!(t.drain().is_empty(), "joined waits for the marker");
    assert!(t.hub.poll_timeout().unwrap() <= t.now + JOIN_TIMEOUT);
    t.now += JOIN_TIMEOUT;
    t.hub.handle_timeout(t.now);
    t.step();
    assert_eq!(t.only(ann)["type"], "joined");
    t.arrive(ChannelName::Room("r"), &frame_env(b"\x81\x02hi"));
    assert_eq!(t.drain_frames().len(), 2);
}

#[test]
fn joins_and_leaves_in_a_row_answer_each_in_order() {
    let mut t = cluster();
    let (ann, bob) = (t.open_granted("ann"), t.open_granted("bob"));
    t.join_cluster(bob, "r");
    // join (ref 1), join again (ref 2: already), leave (ref 3), join (ref 4)
    // before the cluster answered anything.
    t.text(ann, r#"{"type":"join","room":"r","ref":1}"#);
    t.text(ann, r#"{"type":"join","room":"r","ref":2}"#);
    t.text(ann, r#"{"type":"leave","room":"r","ref":3}"#);
    t.text(ann, r#"{"type":"join","room":"r","ref":4}"#);
    let mut owed: Vec<Pending> = Vec::new();
    for o in t.take_cluster() {
        match o {
            Output::Presence(c) => owed.extend(c.reply),
            Output::Query { reply, .. } => owed.push(reply),
            _ => {}
        }
    }
    // Leaving answered the first join from this node's view, then the
    // already-joined, then left.
    let refs: Vec<(String, i64)> = t
        .drain()
        .iter()
        .map(|(_, v)| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["ref"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(refs, [("joined".into(), 1), ("joined".into(), 2)]);
    // The cluster answers all four in order, with the markers.
    let first = join_of(&owed[0]);
    for p in owed {
        t.answer(
            p,
            ClusterAnswer::Listing(Listing {
                members: 2,
                users: Vec::new(),
                history: None,
            }),
        );
    }
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{first}\n").as_bytes(),
    );
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{}\n", first + 1).as_bytes(),
    );
    let refs: Vec<(String, i64)> = t
        .drain()
        .iter()
        .map(|(_, v)| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["ref"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        refs,
        [("left".into(), 3), ("joined".into(), 4)],
        "each answered once, in order"
    );
}

#[test]
fn a_join_asked_again_after_the_answer_gets_the_clusters_listing() {
    let mut t = cluster();
    let ann = t.open_granted("ann");
    t.text(ann, r#"{"type":"join","room":"r","ref":1}"#);
    let (_, mut replies) = presence_changes(t.take_cluster());
    let join = join_of(&replies[0]);
    t.answer(
        replies.remove(0),
        ClusterAnswer::Listing(Listing {
            members: 9,
            users: Vec::new(),
            history: None,
        }),
    );
    // Asked again before the marker: answered with the same listing.
    t.text(ann, r#"{"type":"join","room":"r","ref":2}"#);
    assert!(
        t.take_cluster().is_empty(),
        "no second question to the cluster"
    );
    t.arrive(
        ChannelName::Room("r"),
        format!("M {NODE} {ann}.{join}\n").as_bytes(),
    );
    let got: Vec<(i64, u64)> = t
        .drain()
        .iter()
        .map(|(_, v)| (v["ref"].as_i64().unwrap(), v["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [(1, 9), (2, 9)]);
}

#[path = "cluster_history_tests.rs"]
mod cluster_history_tests;
