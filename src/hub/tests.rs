//! Unit tests of the pure hub with a fake clock: no sockets, no sleeps.
//!
//! The harness [`T`] drives the hub like the driver does: after every input it
//! drains every output at once (targets are resolved against the registry as
//! it is right then), decodes the server frames, and checks the registry's
//! cross-links.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::HubConfig;
use super::*;
use crate::protocol::CloseReason;

const INTERVAL: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// One frame as a recipient would receive it.
#[derive(Debug, Clone)]
struct Frame {
    to: ConnId,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn text(&self) -> &str {
        assert_eq!(self.opcode, 0x1, "expected a text frame, got {self:?}");
        std::str::from_utf8(&self.payload).expect("text frames are UTF-8")
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.text()).expect("server frames are JSON")
    }
}

/// Split one server frame into (opcode, payload), checking the header.
fn decode_frame(bytes: &[u8]) -> (u8, Vec<u8>) {
    assert!(bytes.len() >= 2, "frame too short: {bytes:?}");
    let b0 = bytes[0];
    assert!(
        matches!(b0, 0x81 | 0x82 | 0x88),
        "unexpected first byte {b0:#x}"
    );
    let b1 = bytes[1];
    assert_eq!(b1 & 0x80, 0, "server frames are never masked");
    let (len, start) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (n as usize, 2),
    };
    assert_eq!(
        bytes.len() - start,
        len,
        "header length matches the payload"
    );
    (b0 & 0x0f, bytes[start..].to_vec())
}

/// The test harness: a hub, a fake clock and what came out of the hub.
struct T {
    hub: Hub,
    base: Instant,
    now: Instant,
    next: u32,
    frames: Vec<Frame>,
    pings: Vec<ConnId>,
    closes: Vec<(ConnId, CloseReason)>,
    /// Cluster mode's outputs, in order.
    cluster: Vec<Output>,
}

impl T {
    fn new() -> T {
        T::with(HubConfig {
            ping_interval: INTERVAL,
            ping_timeout: TIMEOUT,
            ..HubConfig::default()
        })
    }

    fn with(config: HubConfig) -> T {
        let now = Instant::now();
        T {
            hub: Hub::new(config, now),
            base: now,
            now,
            next: 0,
            frames: Vec::new(),
            pings: Vec::new(),
            closes: Vec::new(),
            cluster: Vec::new(),
        }
    }

    /// Drain every output right now (as the driver must before the next
    /// input), resolve recipients, and check the registry.
    fn step(&mut self) {
        loop {
            self.take_outputs();
            // As the driver: what waited for a gap, one at a time.
            if !self.hub.handle_next_waiting() {
                break;
            }
        }
        self.hub.registry().check_invariants();
    }

    fn take_outputs(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { to, frame } => {
                    let (opcode, payload) = decode_frame(&frame);
                    let mut recipients = Vec::new();
                    self.hub.for_each_recipient(to, |id| recipients.push(id));
                    for id in recipients {
                        self.frames.push(Frame {
                            to: id,
                            opcode,
                            payload: payload.clone(),
                        });
                    }
                }
                Output::Ping(id) => self.pings.push(id),
                Output::Close { conn, reason, .. } => {
                    assert!(
                        self.hub.registry().session(conn).is_none(),
                        "closed {conn} still open"
                    );
                    self.closes.push((conn, reason));
                }
                other => self.cluster.push(other),
            }
        }
    }

    fn fresh_id(&mut self) -> ConnId {
        let id = ConnId {
            index: self.next,
            generation: 0,
        };
        self.next += 1;
        id
    }

    fn try_open_at(
        &mut self,
        id: ConnId,
        user: Option<&str>,
        room: Option<&str>,
    ) -> Result<ConnId, CloseReason> {
        self.try_open_with(
            id,
            OpenRequest {
                user,
                room,
                kind: Kind::Hub,
                ..Default::default()
            },
        )
    }

    fn try_open_with(&mut self, id: ConnId, req: OpenRequest<'_>) -> Result<ConnId, CloseReason> {
        let r = self.hub.handle_open(self.now, id, req);
        self.step();
        r.map(|()| id)
    }

    fn try_open(&mut self, user: Option<&str>, room: Option<&str>) -> Result<ConnId, CloseReason> {
        let id = self.fresh_id();
        self.try_open_at(id, user, room)
    }

    /// Open a hub connection for `user` and discard its welcome.
    fn open(&mut self, user: &str) -> ConnId {
        let id = self.try_open(Some(user), None).expect("open");
        self.discard(id);
        id
    }

    /// Open `/ws/<room>` for `user`; discard only the opener's own replies.
    fn open_in(&mut self, user: &str, room: &str) -> ConnId {
        let id = self.try_open(Some(user), Some(room)).expect("open");
        self.discard(id);
        id
    }

    fn open_echo(&mut self) -> ConnId {
        let id = self.fresh_id();
        self.hub
            .handle_open(
                self.now,
                id,
                OpenRequest {
                    user: None,
                    room: None,
                    kind: Kind::Echo,
                    ..Default::default()
                },
            )
            .expect("echo open");
        self.step();
        id
    }

    fn text(&mut self, id: ConnId, json: &str) {
        self.hub.handle_text(self.now, id, json);
        self.step();
    }

    fn binary(&mut self, id: ConnId, data: &[u8]) {
        self.hub.handle_binary(self.now, id, data);
        self.step();
    }

    fn activity(&mut self, id: ConnId) {
        self.hub.handle_activity(self.now, id);
        self.step();
    }

    fn closed(&mut self, id: ConnId) {
        self.hub.handle_closed(id);
        self.step();
    }

    fn close(&mut self, id: ConnId, reason: CloseReason) {
        self.hub.close(id, reason);
        self.step();
    }

    /// Join and discard everything the join produced (for setup).
    fn join(&mut self, id: ConnId, room: &str) {
        self.text(id, &format!(r#"{{"type":"join","room":"{room}"}}"#));
        let out = self.drain();
        assert!(
            out.iter()
                .any(|(to, v)| *to == id && v["type"] == "joined" && v["room"] == room),
            "join of {room} by {id} failed: {out:?}"
        );
    }

    /// Move the fake clock to `base + secs` and run the heartbeats.
    fn at(&mut self, secs: u64) {
        self.now = self.base + Duration::from_secs(secs);
        self.hub.handle_timeout(self.now);
        self.step();
    }

    /// Every frame delivered since the last drain.
    fn drain_frames(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.frames)
    }

    /// Every (text, JSON) frame delivered since the last drain.
    fn drain(&mut self) -> Vec<(ConnId, Value)> {
        self.drain_frames()
            .iter()
            .map(|f| (f.to, f.json()))
            .collect()
    }

    /// Drop what `id` received so far, keep the rest.
    fn discard(&mut self, id: ConnId) {
        self.frames.retain(|f| f.to != id);
    }

    fn take_pings(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.pings)
    }

    fn take_closes(&mut self) -> Vec<(ConnId, CloseReason)> {
        std::mem::take(&mut self.closes)
    }

    /// The one frame `id` got; panics unless exactly one frame went anywhere.
    fn only(&mut self, id: ConnId) -> Value {
        let out = self.drain();
        assert_eq!(out.len(), 1, "expected one frame, got {out:?}");
        assert_eq!(out[0].0, id, "frame went to the wrong connection: {out:?}");
        out[0].1.clone()
    }

    /// Expect that nothing at all was delivered.
    fn silent(&mut self) {
        let out = self.drain_frames();
        assert!(out.is_empty(), "expected no frames, got {out:?}");
    }

    /// Expect exactly one error frame to `id` with this code; returns it.
    fn error(&mut self, id: ConnId, code: &str) -> Value {
        let v = self.only(id);
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

/// Recipients of the frames of a given type.
fn recipients(out: &[(ConnId, Value)], ty: &str) -> BTreeSet<ConnId> {
    out.iter()
        .filter(|(_, v)| v["type"] == ty)
        .map(|(id, _)| *id)
        .collect()
}

fn set(ids: &[ConnId]) -> BTreeSet<ConnId> {
    ids.iter().copied().collect()
}

fn users(v: &Value) -> BTreeSet<String> {
    v["users"]
        .as_array()
        .expect("users list")
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- open

#[test]
fn open_sends_welcome_with_connection_user_heartbeat_and_limits() {
    let mut t = T::new();
    let id = t.try_open(Some("alice"), None).unwrap();
    let v = t.only(id);
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["connection_id"], id.to_string());
    assert_eq!(v["user"], "alice");
    assert_eq!(
        v["heartbeat"],
        json!({"ping_interval": 30.0, "ping_timeout": 10.0})
    );
    let c = HubConfig::default();
    assert_eq!(
        v["limits"],
        json!({
            "max_message_size": c.max_message_size,
            "max_rooms": c.max_rooms_per_connection,
            "max_room_name_len": c.max_room_name_len,
        })
    );
    assert_eq!(t.hub.registry().len(), 1);
    assert_eq!(t.hub.registry().user_connections("alice"), 1);
    assert_eq!(t.hub.counters().connections_opened, 1);
}

#[test]
fn open_anonymous_gets_distinct_generated_ids() {
    let mut t = T::new();
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let id = t.try_open(None, None).unwrap();
        let v = t.only(id);
        let user = v["user"].as_str().unwrap().to_owned();
        assert!(!user.is_empty());
        assert!(seen.insert(user), "anonymous id reused");
    }
    assert_eq!(t.hub.registry().user_count(), 5);
}

#[test]
fn open_with_url_room_joins_and_replies_joined() {
    let mut t = T::new();
    let bob = t.open_in("bob", "lobby");
    let id = t.try_open(Some("alice"), Some("lobby")).unwrap();
    let out = t.drain();
    let mine: Vec<&Value> = out
        .iter()
        .filter(|(to, _)| *to == id)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(mine.len(), 2, "{out:?}");
    assert_eq!(mine[0]["type"], "welcome");
    assert_eq!(mine[1]["type"], "joined");
    assert_eq!(mine[1]["room"], "lobby");
    assert_eq!(mine[1]["members"], 2);
    assert_eq!(users(mine[1]), names(&["alice", "bob"]));
    let theirs: Vec<&Value> = out
        .iter()
        .filter(|(to, _)| *to == bob)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        theirs,
        vec![&json!({"type":"user_joined","room":"lobby","user":"alice","members":2})]
    );
    let key = t.hub.registry().room_key("lobby").unwrap();
    assert_eq!(t.hub.registry().home_room(id), Some(key));
}

#[test]
fn open_with_too_long_url_room_stays_open_with_an_error() {
    let mut t = T::with(HubConfig {
        max_room_name_len: 4,
        ..HubConfig::default()
    });
    let id = t.try_open(Some("alice"), Some("toolong")).unwrap();
    let out = t.drain();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1["type"], "welcome");
    assert_eq!(out[1].1["code"], "room_name_too_long");
    assert_eq!(t.hub.registry().room_count(), 0);
    t.text(id, r#"{"type":"ping"}"#);
    assert_eq!(t.only(id)["type"], "pong");
}

#[test]
fn open_echo_sends_no_welcome_and_is_no_user() {
    let mut t = T::new();
    let _e = t.open_echo();
    t.silent();
    assert_eq!(t.hub.registry().len(), 1);
    assert_eq!(t.hub.registry().user_count(), 0);
}

// ---------------------------------------------------------------- join / leave

#[test]
fn join_replies_joined_with_count_and_users() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.text(a, r#"{"type":"join","room":"r"}"#);
    assert_eq!(
        t.only(a),
        json!({"type":"joined","room":"r","members":1,"users":["alice"],"truncated":false})
    );
    t.text(b, r#"{"type":"join","room":"r","ref":"j1"}"#);
    let out = t.drain();
    assert_eq!(out.len(), 2, "{out:?}");
    let to_a: Vec<_> = out.iter().filter(|(to, _)| *to == a).collect();
    assert_eq!(
        to_a[0].1,
        json!({"type":"user_joined","room":"r","user":"bob","members":2})
    );
    let to_b: Vec<_> = out.iter().filter(|(to, _)| *to == b).collect();
    assert_eq!(to_b[0].1["type"], "joined");
    assert_eq!(to_b[0].1["members"], 2);
    assert_eq!(to_b[0].1["ref"], "j1");
    assert_eq!(to_b[0].1["truncated"], false);
    assert_eq!(users(&to_b[0].1), names(&["alice", "bob"]));
}

#[test]
fn join_twice_is_idempotent() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.text(b, r#"{"type":"join","room":"r","ref":2}"#);
    let v = t.only(b);
    assert_eq!(v["type"], "joined");
    assert_eq!(v["members"], 2);
    assert_eq!(v["ref"], 2);
    let s = t.hub.registry().session(b).unwrap();
    assert_eq!(s.rooms.len(), 1);
    let room = t
        .hub
        .registry()
        .room(t.hub.registry().room_key("r").unwrap())
        .unwrap();
    assert_eq!(room.members.len(), 2);
}

#[test]
fn join_twice_at_room_limit_still_answers_joined() {
    let mut t = T::with(HubConfig {
        max_rooms_per_connection: 1,
        ..HubConfig::default()
    });
    let a = t.open("alice");
    t.join(a, "r");
    t.text(a, r#"{"type":"join","room":"r"}"#);
    assert_eq!(t.only(a)["type"], "joined");
}

#[test]
fn leave_replies_left_and_announces_user_left() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.text(b, r#"{"type":"leave","room":"r","ref":"x"}"#);
    let out = t.drain();
    assert_eq!(
        out,
        vec![
            (
                a,
                json!({"type":"user_left","room":"r","user":"bob","members":1})
            ),
            (b, json!({"type":"left","room":"r","members":1,"ref":"x"})),
        ]
    );
    t.text(a, r#"{"type":"leave","room":"r"}"#);
    assert_eq!(t.only(a), json!({"type":"left","room":"r","members":0}));
    assert_eq!(t.hub.registry().room_count(), 0);
}

#[test]
fn leave_room_not_joined_is_not_in_room() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(b, "r");
    // The room exists (bob is in it) but alice is not a member.
    t.text(a, r#"{"type":"leave","room":"r","ref":9}"#);
    assert_eq!(t.error(a, "not_in_room")["ref"], 9);
    // The room does not exist at all.
    t.text(a, r#"{"type":"leave","room":"nowhere"}"#);
    let v = t.error(a, "not_in_room");
    assert!(v.get("ref").is_none());
    assert_eq!(t.hub.registry().room_count(), 1);
}

#[test]
fn join_after_leave_works_again() {
    let mut t = T::new();
    let a = t.open("alice");
    t.join(a, "r");
    t.text(a, r#"{"type":"leave","room":"r"}"#);
    t.drain();
    t.join(a, "r");
    assert_eq!(t.hub.registry().session(a).unwrap().rooms.len(), 1);
}

#[test]
fn ref_is_echoed_on_replies_and_errors() {
    let mut t = T::new();
    let a = t.open("alice");
    for r in [r#""s""#, "17", r#"{"k":[1]}"#] {
        let rv: Value = serde_json::from_str(r).unwrap();
        t.text(a, &format!(r#"{{"type":"join","room":"r","ref":{r}}}"#));
        assert_eq!(t.only(a)["ref"], rv);
        t.text(a, &format!(r#"{{"type":"presence","room":"r","ref":{r}}}"#));
        assert_eq!(t.only(a)["ref"], rv);
        t.text(a, &format!(r#"{{"type":"ping","ref":{r}}}"#));
        assert_eq!(t.only(a)["ref"], rv);
        t.text(a, &format!(r#"{{"type":"leave","room":"r","ref":{r}}}"#));
        assert_eq!(t.only(a)["ref"], rv);
        // Errors from the hub's rules, from decoding, and for unknown types.
        t.text(a, &format!(r#"{{"type":"leave","room":"r","ref":{r}}}"#));
        assert_eq!(t.error(a, "not_in_room")["ref"], rv);
        t.text(
            a,
            &format!(r#"{{"type":"message","room":"r","data":1,"ref":{r}}}"#),
        );
        assert_eq!(t.error(a, "not_in_room")["ref"], rv);
        t.text(
            a,
            &format!(r#"{{"type":"private","to":"ghost","data":1,"ref":{r}}}"#),
        );
        assert_eq!(t.error(a, "user_offline")["ref"], rv);
        t.text(a, &format!(r#"{{"type":"join","ref":{r}}}"#));
        assert_eq!(t.error(a, "bad_message")["ref"], rv);
        t.text(a, &format!(r#"{{"type":"join","room":"","ref":{r}}}"#));
        assert_eq!(t.error(a, "bad_message")["ref"], rv);
        t.text(a, &format!(r#"{{"type":"fly","ref":{r}}}"#));
        assert_eq!(t.error(a, "unknown_type")["ref"], rv);
        let long = "x".repeat(200);
        t.text(
            a,
            &format!(r#"{{"type":"typing","room":"{long}","ref":{r}}}"#),
        );
        assert_eq!(t.error(a, "room_name_too_long")["ref"], rv);
    }
}

#[test]
fn replies_without_ref_have_no_ref_field() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"join","room":"r"}"#);
    assert!(t.only(a).get("ref").is_none());
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a), json!({"type":"pong"}));
}

// ---------------------------------------------------------------- message

#[test]
fn message_goes_to_room_members_except_sender() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    let c = t.open("carol");
    let outsider = t.open("dave");
    for id in [a, b, c] {
        t.join(id, "r");
    }
    t.join(outsider, "other");
    t.text(a, r#"{"type":"message","room":"r","data":{"text":"hi"}}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "message"), set(&[b, c]));
    assert_eq!(out.len(), 2);
    for (_, v) in &out {
        assert_eq!(
            *v,
            json!({"type":"message","room":"r","from":"alice","data":{"text":"hi"}})
        );
    }
    assert_eq!(t.hub.counters().messages_in, 4 + 1);
}

#[test]
fn message_with_echo_includes_sender() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.text(a, r#"{"type":"message","room":"r","data":1,"echo":true}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "message"), set(&[a, b]));
    assert_eq!(out.len(), 2);
    t.text(a, r#"{"type":"message","room":"r","data":1,"echo":false}"#);
    assert_eq!(t.only(b)["data"], 1);
}

#[test]
fn message_alone_in_room_reaches_nobody() {
    let mut t = T::new();
    let a = t.open("alice");
    t.join(a, "r");
    t.text(a, r#"{"type":"message","room":"r","data":"x"}"#);
    t.silent();
}

#[test]
fn message_data_arrives_unchanged_byte_for_byte() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    let datas = [
        r#"{"a" : [1, 2.50, "\u00e9"]}"#,
        r#"[ 1e3 , -0.0 , "\ud83d\ude00" , null ]"#,
        r#""tab\there \"quoted\" \/ slash""#,
        r#"12345678901234567890123456789"#,
        "true",
        r#"{"nested":{"deep":[[[{}]]]},"z":"ä𝄞"}"#,
    ];
    for data in datas {
        t.text(
            a,
            &format!(r#"{{"type":"message","room":"r","data":{data}}}"#),
        );
        let frames = t.drain_frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].to, b);
        let expected = format!(r#"{{"type":"message","room":"r","from":"alice","data":{data}}}"#);
        assert_eq!(frames[0].text(), expected);
        // Private and broadcast pass data through unchanged too.
        t.text(
            a,
            &format!(r#"{{"type":"private","to":"bob","data":{data}}}"#),
        );
        let frames = t.drain_frames();
        assert_eq!(
            frames[0].text(),
            format!(r#"{{"type":"private","from":"alice","data":{data}}}"#)
        );
        t.text(a, &format!(r#"{{"type":"broadcast","data":{data}}}"#));
        let frames = t.drain_frames();
        assert_eq!(
            frames[0].text(),
            format!(r#"{{"type":"broadcast","from":"alice","data":{data}}}"#)
        );
    }
}

#[test]
fn message_with_null_data_is_delivered() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.text(a, r#"{"type":"message","room":"r","data":null}"#);
    assert_eq!(
        t.only(b),
        json!({"type":"message","room":"r","from":"alice","data":null})
    );
    t.text(a, r#"{"type":"private","to":"bob","data":null}"#);
    assert_eq!(
        t.only(b),
        json!({"type":"private","from":"alice","data":null})
    );
    t.text(a, r#"{"type":"broadcast","data":null}"#);
    assert_eq!(
        t.only(b),
        json!({"type":"broadcast","from":"alice","data":null})
    );
}

#[test]
fn large_message_frame_has_extended_length_header() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    for n in [100usize, 300, 70_000] {
        let data = format!(r#""{}""#, "y".repeat(n));
        t.text(
            a,
            &format!(r#"{{"type":"message","room":"r","data":{data}}}"#),
        );
        assert_eq!(t.only(b)["data"].as_str().unwrap().len(), n);
    }
}

#[test]
fn message_to_room_not_joined_is_not_in_room() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(b, "r");
    t.text(a, r#"{"type":"message","room":"r","data":1}"#);
    t.error(a, "not_in_room");
    t.text(a, r#"{"type":"message","room":"absent","data":1}"#);
    t.error(a, "not_in_room");
    assert_eq!(t.hub.counters().errors_sent, 2);
}

#[test]
fn message_with_too_long_room_name_is_room_name_too_long() {
    let mut t = T::with(HubConfig {
        max_room_name_len: 8,
        ..HubConfig::default()
    });
    let a = t.open("alice");
    t.join(a, "12345678");
    t.text(a, r#"{"type":"message","room":"123456789","data":1}"#);
    t.error(a, "room_name_too_long");
    t.text(a, r#"{"type":"join","room":"123456789"}"#);
    t.error(a, "room_name_too_long");
    t.text(a, r#"{"type":"presence","room":"123456789"}"#);
    t.error(a, "room_name_too_long");
    assert_eq!(t.hub.registry().room_count(), 1);
}

#[test]
fn empty_room_name_is_bad_message() {
    let mut t = T::new();
    let a = t.open("alice");
    for ty in ["join", "leave", "typing", "presence"] {
        t.text(a, &format!(r#"{{"type":"{ty}","room":""}}"#));
        t.error(a, "bad_message");
    }
    t.text(a, r#"{"type":"message","room":"","data":1}"#);
    t.error(a, "bad_message");
    assert_eq!(t.hub.registry().room_count(), 0);
}

// ---------------------------------------------------------------- private / broadcast

#[test]
fn private_goes_to_every_connection_of_the_user() {
    let mut t = T::new();
    let a = t.open("alice");
    let b1 = t.open("bob");
    let b2 = t.open("bob");
    let b3 = t.open("bob");
    let c = t.open("carol");
    t.text(a, r#"{"type":"private","to":"bob","data":{"n":1}}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "private"), set(&[b1, b2, b3]));
    assert_eq!(out.len(), 3);
    assert!(!out.iter().any(|(to, _)| *to == c || *to == a));
    assert_eq!(
        out[0].1,
        json!({"type":"private","from":"alice","data":{"n":1}})
    );
}

#[test]
fn private_to_self_reaches_all_own_devices() {
    let mut t = T::new();
    let a1 = t.open("alice");
    let a2 = t.open("alice");
    t.text(a1, r#"{"type":"private","to":"alice","data":0}"#);
    assert_eq!(recipients(&t.drain(), "private"), set(&[a1, a2]));
}

#[test]
fn private_to_offline_user_is_user_offline() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"private","to":"nobody","data":1}"#);
    t.error(a, "user_offline");
    let b = t.open("bob");
    t.closed(b);
    t.text(a, r#"{"type":"private","to":"bob","data":1}"#);
    t.error(a, "user_offline");
}

#[test]
fn broadcast_reaches_all_hub_connections_except_sender_and_never_echo() {
    let mut t = T::new();
    let a = t.open("alice");
    let a2 = t.open("alice");
    let b = t.open_in("bob", "r");
    let c = t.open("carol");
    let e = t.open_echo();
    t.text(a, r#"{"type":"broadcast","data":"hello"}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "broadcast"), set(&[a2, b, c]));
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0].1,
        json!({"type":"broadcast","from":"alice","data":"hello"})
    );
    t.text(a, r#"{"type":"broadcast","data":"hello","echo":true}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "broadcast"), set(&[a, a2, b, c]));
    assert!(!out.iter().any(|(to, _)| *to == e));
}

#[test]
fn typing_goes_to_room_except_sender() {
    let mut t = T::new();
    let a = t.open("alice");
    let a2 = t.open("alice");
    let b = t.open("bob");
    let c = t.open("carol");
    for id in [a, a2, b] {
        t.join(id, "r");
    }
    t.text(a, r#"{"type":"typing","room":"r"}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "typing"), set(&[a2, b]));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1, json!({"type":"typing","room":"r","user":"alice"}));
    t.text(c, r#"{"type":"typing","room":"r"}"#);
    t.error(c, "not_in_room");
}

#[test]
fn presence_replies_with_users_of_any_room() {
    let mut t = T::new();
    let a = t.open("alice");
    let a2 = t.open("alice");
    let b = t.open("bob");
    let c = t.open("carol");
    for id in [a, a2, b] {
        t.join(id, "r");
    }
    // Asked by a non-member: allowed, and only the asker gets the reply.
    t.text(c, r#"{"type":"presence","room":"r","ref":1}"#);
    let v = t.only(c);
    assert_eq!(v["type"], "presence");
    assert_eq!(v["room"], "r");
    assert_eq!(v["members"], 2, "members counts users, not sockets");
    assert_eq!(users(&v), names(&["alice", "bob"]));
    assert_eq!(v["truncated"], false);
    assert_eq!(v["ref"], 1);
    t.text(c, r#"{"type":"presence","room":"empty"}"#);
    assert_eq!(
        t.only(c),
        json!({"type":"presence","room":"empty","members":0,"users":[],"truncated":false})
    );
    assert_eq!(t.hub.registry().room_count(), 1, "presence creates no room");
}

#[test]
fn ping_gets_pong_with_ref() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"ping","ref":"p-1"}"#);
    assert_eq!(t.only(a), json!({"type":"pong","ref":"p-1"}));
}

#[test]
fn pong_is_accepted_silently() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"pong"}"#);
    t.text(a, r#"{"type":"pong","ref":5}"#);
    t.silent();
    assert_eq!(t.hub.counters().errors_sent, 0);
}

// ---------------------------------------------------------------- presence

#[test]
fn first_device_joining_announces_user_joined() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.text(b, r#"{"type":"join","room":"r"}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "user_joined"), set(&[a]));
}

#[test]
fn second_device_joining_does_not_announce() {
    let mut t = T::new();
    let a = t.open("alice");
    let b1 = t.open("bob");
    let b2 = t.open("bob");
    t.join(a, "r");
    t.join(b1, "r");
    t.text(b2, r#"{"type":"join","room":"r"}"#);
    let v = t.only(b2);
    assert_eq!(v["type"], "joined");
    assert_eq!(v["members"], 2);
    assert_eq!(users(&v), names(&["alice", "bob"]));
}

#[test]
fn non_last_device_leaving_does_not_announce() {
    let mut t = T::new();
    let a = t.open("alice");
    let b1 = t.open("bob");
    let b2 = t.open("bob");
    for id in [a, b1, b2] {
        t.join(id, "r");
    }
    t.text(b1, r#"{"type":"leave","room":"r"}"#);
    assert_eq!(t.only(b1), json!({"type":"left","room":"r","members":2}));
    t.closed(b2);
    let out = t.drain();
    assert_eq!(
        out,
        vec![(
            a,
            json!({"type":"user_left","room":"r","user":"bob","members":1})
        )]
    );
}

#[test]
fn last_device_leaving_announces_user_left() {
    let mut t = T::new();
    let a = t.open("alice");
    let b1 = t.open("bob");
    let b2 = t.open("bob");
    for id in [a, b1, b2] {
        t.join(id, "r");
    }
    t.closed(b1);
    t.silent();
    t.text(b2, r#"{"type":"leave","room":"r"}"#);
    let out = t.drain();
    assert_eq!(
        out,
        vec![
            (
                a,
                json!({"type":"user_left","room":"r","user":"bob","members":1})
            ),
            (b2, json!({"type":"left","room":"r","members":1})),
        ]
    );
}

#[test]
fn closed_connection_announces_user_left_in_every_room() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    let c = t.open("carol");
    t.join(a, "r1");
    t.join(a, "r2");
    t.join(b, "r1");
    t.join(c, "r2");
    t.join(c, "r3");
    t.closed(a);
    let out = t.drain();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.contains(&(
        b,
        json!({"type":"user_left","room":"r1","user":"alice","members":1})
    )));
    assert!(out.contains(&(
        c,
        json!({"type":"user_left","room":"r2","user":"alice","members":1})
    )));
}

#[test]
fn other_device_leaving_keeps_user_in_room_for_presence() {
    let mut t = T::new();
    let a1 = t.open("alice");
    let a2 = t.open("alice");
    let b = t.open("bob");
    t.join(a1, "r");
    t.join(a2, "r");
    t.join(b, "r");
    t.closed(a1);
    t.silent();
    t.text(b, r#"{"type":"presence","room":"r"}"#);
    let v = t.only(b);
    assert_eq!(v["members"], 2);
    assert_eq!(users(&v), names(&["alice", "bob"]));
}

#[test]
fn presence_announce_limit_silences_big_rooms_but_counts_stay_exact() {
    let mut t = T::with(HubConfig {
        presence_announce_limit: 2,
        ..HubConfig::default()
    });
    let a = t.open("a");
    let b = t.open("b");
    let c = t.open("c");
    let d = t.open("d");
    t.join(a, "r");
    t.text(b, r#"{"type":"join","room":"r"}"#);
    // Two users: still within the limit, announced.
    assert_eq!(recipients(&t.drain(), "user_joined"), set(&[a]));
    t.text(c, r#"{"type":"join","room":"r"}"#);
    // Three users: over the limit, only the joiner hears back, with the exact count.
    let v = t.only(c);
    assert_eq!(v["type"], "joined");
    assert_eq!(v["members"], 3);
    t.text(d, r#"{"type":"join","room":"r"}"#);
    let v = t.only(d);
    assert_eq!(v["members"], 4);
    assert_eq!(users(&v).len(), 4);
    // Four users, one leaves: three remain, over the limit, nothing announced.
    t.text(d, r#"{"type":"leave","room":"r"}"#);
    assert_eq!(t.only(d), json!({"type":"left","room":"r","members":3}));
    t.text(d, r#"{"type":"join","room":"r"}"#);
    t.drain();
    t.closed(d);
    t.silent();
    t.text(a, r#"{"type":"presence","room":"r"}"#);
    assert_eq!(t.only(a)["members"], 3);
}

#[test]
fn member_list_limit_bounds_users_and_sets_truncated() {
    let mut t = T::with(HubConfig {
        member_list_limit: 3,
        ..HubConfig::default()
    });
    let ids: Vec<ConnId> = (0..5).map(|i| t.open(&format!("u{i}"))).collect();
    for &id in &ids {
        t.join(id, "r");
    }
    let extra = t.open("u0");
    t.text(extra, r#"{"type":"join","room":"r"}"#);
    let v = t.only(extra);
    assert_eq!(v["members"], 5);
    assert_eq!(v["users"].as_array().unwrap().len(), 3);
    assert_eq!(v["truncated"], true);
    t.text(extra, r#"{"type":"presence","room":"r"}"#);
    let v = t.only(extra);
    assert_eq!(v["members"], 5);
    assert_eq!(v["users"].as_array().unwrap().len(), 3);
    assert_eq!(v["truncated"], true);
    let all: BTreeSet<String> = (0..5).map(|i| format!("u{i}")).collect();
    assert!(users(&v).is_subset(&all));
    // Exactly at the limit: not truncated.
    for &id in &ids[3..] {
        t.closed(id);
    }
    t.drain();
    t.text(extra, r#"{"type":"presence","room":"r"}"#);
    let v = t.only(extra);
    assert_eq!(v["members"], 3);
    assert_eq!(v["truncated"], false);
    assert_eq!(users(&v), names(&["u0", "u1", "u2"]));
}

// ---------------------------------------------------------------- limits

#[test]
fn max_connections_per_user_refuses_the_next_and_does_not_count_it() {
    let mut t = T::with(HubConfig {
        max_connections_per_user: 3,
        ..HubConfig::default()
    });
    let ids: Vec<ConnId> = (0..3).map(|_| t.open("alice")).collect();
    let opened = t.hub.counters().connections_opened;
    assert_eq!(
        t.try_open(Some("alice"), Some("r")),
        Err(CloseReason::UserConnectionLimit)
    );
    t.silent();
    assert_eq!(t.hub.registry().user_connections("alice"), 3);
    assert_eq!(t.hub.registry().len(), 3);
    assert_eq!(t.hub.registry().room_count(), 0);
    assert_eq!(t.hub.counters().connections_opened, opened);
    // Refused again: the refusal did not count toward the cap either way.
    assert_eq!(
        t.try_open(Some("alice"), None),
        Err(CloseReason::UserConnectionLimit)
    );
    // Other users are not affected.
    t.open("bob");
    // After one closes a new one is accepted, and then the cap holds again.
    t.closed(ids[0]);
    let again = t.try_open(Some("alice"), None).unwrap();
    assert_eq!(t.only(again)["type"], "welcome");
    assert_eq!(
        t.try_open(Some("alice"), None),
        Err(CloseReason::UserConnectionLimit)
    );
    assert_eq!(CloseReason::UserConnectionLimit.code(), 1008);
}

#[test]
fn refused_open_may_reuse_its_slot() {
    let mut t = T::with(HubConfig {
        max_connections_per_user: 1,
        ..HubConfig::default()
    });
    t.open("alice");
    let id = t.fresh_id();
    assert_eq!(
        t.try_open_at(id, Some("alice"), None),
        Err(CloseReason::UserConnectionLimit)
    );
    // The refused id was never inserted: the same slot can hold someone else.
    assert_eq!(t.try_open_at(id, Some("bob"), None), Ok(id));
}

#[test]
fn max_rooms_per_connection_gives_too_many_rooms() {
    let mut t = T::with(HubConfig {
        max_rooms_per_connection: 2,
        ..HubConfig::default()
    });
    let a = t.open("alice");
    let a2 = t.open("alice");
    t.join(a, "r1");
    t.join(a, "r2");
    t.text(a, r#"{"type":"join","room":"r3","ref":3}"#);
    assert_eq!(t.error(a, "too_many_rooms")["ref"], 3);
    assert_eq!(t.hub.registry().room_count(), 2);
    assert!(t.hub.registry().room_key("r3").is_none());
    // The limit is per connection, not per user.
    t.join(a2, "r3");
    // Leaving frees a slot.
    t.text(a, r#"{"type":"leave","room":"r1"}"#);
    t.drain();
    t.join(a, "r3");
}

// ---------------------------------------------------------------- bad input

#[test]
fn malformed_json_is_bad_json_and_connection_stays_usable() {
    let mut t = T::new();
    let a = t.open("alice");
    for bad in [
        "{",
        "not json",
        r#"{"type":"join","room":"r"} trailing"#,
        "",
        "{\"type\":\"join\",}",
    ] {
        t.text(a, bad);
        t.error(a, "bad_json");
    }
    t.text(a, r#"{"type":"join","room":"r"}"#);
    assert_eq!(t.only(a)["type"], "joined");
}

#[test]
fn non_object_is_bad_message() {
    let mut t = T::new();
    let a = t.open("alice");
    for bad in ["[1,2]", "42", r#""join""#, "null", "true"] {
        t.text(a, bad);
        t.error(a, "bad_message");
    }
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["type"], "pong");
}

#[test]
fn unknown_type_is_unknown_type() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"fly","ref":1}"#);
    assert_eq!(t.error(a, "unknown_type")["ref"], 1);
    t.text(a, r#"{"type":"JOIN","room":"r"}"#);
    t.error(a, "unknown_type");
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["type"], "pong");
}

#[test]
fn missing_or_mistyped_fields_are_bad_message() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    let bad = [
        r#"{}"#,
        r#"{"room":"r"}"#,
        r#"{"type":5}"#,
        r#"{"type":null}"#,
        r#"{"type":"join"}"#,
        r#"{"type":"join","room":7}"#,
        r#"{"type":"join","room":null}"#,
        r#"{"type":"leave"}"#,
        r#"{"type":"message","room":"r"}"#,
        r#"{"type":"message","data":1}"#,
        r#"{"type":"message","room":"r","data":1,"echo":"yes"}"#,
        r#"{"type":"private","data":1}"#,
        r#"{"type":"private","to":"bob"}"#,
        r#"{"type":"private","to":["bob"],"data":1}"#,
        r#"{"type":"broadcast"}"#,
        r#"{"type":"typing"}"#,
        r#"{"type":"presence"}"#,
        r#"{"type":"presence","room":{}}"#,
    ];
    for text in bad {
        t.text(a, text);
        let out = t.drain();
        assert_eq!(out.len(), 1, "{text}: {out:?}");
        assert_eq!(out[0].0, a, "{text}");
        assert_eq!(out[0].1["code"], "bad_message", "{text}: {out:?}");
    }
    assert_eq!(t.hub.counters().errors_sent, bad.len() as u64);
    // Still usable and still in its room.
    t.text(a, r#"{"type":"message","room":"r","data":"ok"}"#);
    assert_eq!(t.only(b)["data"], "ok");
}

#[test]
fn extra_unknown_fields_are_ignored() {
    let mut t = T::new();
    let a = t.open("alice");
    t.text(a, r#"{"type":"join","room":"r","colour":"blue","n":[1]}"#);
    assert_eq!(t.only(a)["type"], "joined");
}

#[test]
fn room_names_with_escapes_are_decoded() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "ré");
    t.text(b, r#"{"type":"join","room":"r\u00e9"}"#);
    let out = t.drain();
    assert_eq!(recipients(&out, "user_joined"), set(&[a]));
    assert_eq!(out.iter().find(|(to, _)| *to == b).unwrap().1["room"], "ré");
    assert_eq!(t.hub.registry().room_count(), 1);
}

// ---------------------------------------------------------------- binary / echo

#[test]
fn binary_goes_to_url_room_except_sender() {
    let mut t = T::new();
    let a = t.open_in("alice", "r");
    let b = t.open_in("bob", "r");
    let c = t.open("carol");
    t.join(c, "r");
    let d = t.open_in("dave", "other");
    t.drain();
    let data = [0u8, 1, 2, 0xff, 0x80, b'{'];
    t.binary(a, &data);
    let frames = t.drain_frames();
    let to: BTreeSet<ConnId> = frames.iter().map(|f| f.to).collect();
    assert_eq!(to, set(&[b, c]));
    for f in &frames {
        assert_eq!(f.opcode, 0x2);
        assert_eq!(f.payload, data);
    }
    assert!(!to.contains(&d));
    // A large binary payload uses the 64-bit length form.
    let big = vec![7u8; 70_000];
    t.binary(b, &big);
    let frames = t.drain_frames();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f.opcode == 0x2 && f.payload == big));
}

#[test]
fn binary_without_url_room_is_not_in_room() {
    let mut t = T::new();
    let a = t.open("alice");
    t.join(a, "r");
    t.binary(a, b"\x01\x02");
    t.error(a, "not_in_room");
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["type"], "pong");
}

#[test]
fn binary_after_leaving_url_room_is_not_in_room() {
    let mut t = T::new();
    let a = t.open_in("alice", "r");
    let _b = t.open_in("bob", "r");
    t.drain();
    t.text(a, r#"{"type":"leave","room":"r"}"#);
    t.drain();
    t.binary(a, b"x");
    t.error(a, "not_in_room");
}

#[test]
fn echo_session_gets_text_and_binary_back_unchanged() {
    let mut t = T::new();
    let e = t.open_echo();
    let _other = t.open_in("alice", "r");
    t.drain();
    for text in [
        r#"{"type":"join","room":"r"}"#,
        "not json at all",
        "  {\"a\" : 1.50} ",
        "",
    ] {
        t.text(e, text);
        let frames = t.drain_frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].to, e);
        assert_eq!(frames[0].text(), text);
    }
    let data = [0u8, 0xfe, 0xff, 10];
    t.binary(e, &data);
    let frames = t.drain_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].to, frames[0].opcode, &frames[0].payload[..]),
        (e, 0x2, &data[..])
    );
    // Echo sessions never enter rooms or the user table.
    assert!(t.hub.registry().session(e).unwrap().rooms.is_empty());
    assert_eq!(t.hub.registry().user_count(), 1);
}

// ---------------------------------------------------------------- heartbeats

#[test]
fn no_ping_before_the_interval() {
    let mut t = T::new();
    let _a = t.open("alice");
    assert_eq!(t.hub.poll_timeout(), Some(t.base + INTERVAL));
    t.at(0);
    t.at(29);
    assert!(t.take_pings().is_empty());
    assert!(t.take_closes().is_empty());
}

#[test]
fn silent_connection_is_pinged_once_then_closed_with_heartbeat_timeout() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    // bob stays active, alice goes silent from t=0.
    for s in [10, 20, 30] {
        t.now = t.base + Duration::from_secs(s);
        t.activity(b);
        t.at(s);
    }
    assert_eq!(t.take_pings(), vec![a]);
    assert_eq!(t.hub.poll_timeout(), Some(t.base + INTERVAL + TIMEOUT));
    for s in [31, 35, 39] {
        t.now = t.base + Duration::from_secs(s);
        t.activity(b);
        t.at(s);
    }
    assert!(t.take_pings().is_empty(), "exactly one ping");
    assert!(t.take_closes().is_empty());
    t.silent();
    t.at(40);
    assert_eq!(t.take_closes(), vec![(a, CloseReason::HeartbeatTimeout)]);
    assert_eq!(CloseReason::HeartbeatTimeout.code(), 4100);
    assert_eq!(
        t.drain(),
        vec![(
            b,
            json!({"type":"user_left","room":"r","user":"alice","members":1})
        )]
    );
    let reg = t.hub.registry();
    assert!(reg.session(a).is_none());
    assert_eq!(reg.user_connections("alice"), 0);
    assert!(reg.user_key("alice").is_none());
    let room = reg.room(reg.room_key("r").unwrap()).unwrap();
    assert_eq!(room.members, vec![b]);
    assert_eq!(t.hub.counters().heartbeat_timeouts, 1);
    // Later ticks do not close it again.
    t.at(100);
    assert!(t.take_closes().iter().all(|&(id, _)| id != a));
}

#[test]
fn silent_connection_jumping_past_the_deadline_is_closed_without_ping() {
    let mut t = T::new();
    let a = t.open("alice");
    t.at(45);
    assert!(t.take_pings().is_empty());
    assert_eq!(t.take_closes(), vec![(a, CloseReason::HeartbeatTimeout)]);
    assert!(t.hub.registry().is_empty());
}

#[test]
fn activity_after_ping_keeps_the_connection() {
    let mut t = T::new();
    let a = t.open("alice");
    t.at(30);
    assert_eq!(t.take_pings(), vec![a]);
    // The Pong arrives (a protocol frame: handle_activity).
    t.now = t.base + Duration::from_secs(33);
    t.activity(a);
    t.at(40);
    assert!(t.take_closes().is_empty());
    assert!(t.take_pings().is_empty());
    // The next check is one interval after the pong.
    assert_eq!(t.hub.poll_timeout(), Some(t.base + Duration::from_secs(63)));
    t.at(62);
    assert!(t.take_pings().is_empty());
    t.at(63);
    assert_eq!(t.take_pings(), vec![a]);
    t.at(73);
    assert_eq!(t.take_closes(), vec![(a, CloseReason::HeartbeatTimeout)]);
}

#[test]
fn connection_that_keeps_sending_is_never_closed() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    for s in (0..1000).step_by(7) {
        t.now = t.base + Duration::from_secs(s);
        t.text(a, r#"{"type":"message","room":"r","data":1}"#);
        t.activity(b);
        t.at(s);
        if s % 21 == 0 {
            t.text(b, r#"{"type":"pong"}"#);
        }
    }
    assert!(t.take_closes().is_empty());
    assert!(
        t.take_pings().is_empty(),
        "active connections are not pinged"
    );
    assert_eq!(t.hub.registry().len(), 2);
}

#[test]
fn binary_and_bad_input_count_as_activity() {
    let mut t = T::new();
    let a = t.open_in("alice", "r");
    let b = t.open("bob");
    t.now = t.base + Duration::from_secs(25);
    t.binary(a, b"x");
    t.text(b, "garbage");
    t.at(30);
    assert!(t.take_pings().is_empty());
    t.at(55);
    assert_eq!(t.take_pings().len(), 2);
    t.at(65);
    assert_eq!(t.take_closes().len(), 2);
}

#[test]
fn echo_sessions_have_heartbeats_too() {
    let mut t = T::new();
    let e = t.open_echo();
    t.at(30);
    assert_eq!(t.take_pings(), vec![e]);
    t.at(40);
    assert_eq!(t.take_closes(), vec![(e, CloseReason::HeartbeatTimeout)]);
    assert!(t.hub.registry().is_empty());
}

#[test]
fn poll_timeout_returns_the_next_deadline() {
    let mut t = T::new();
    assert_eq!(t.hub.poll_timeout(), None);
    let _a = t.open("alice");
    t.now = t.base + Duration::from_secs(5);
    let _b = t.open("bob");
    assert_eq!(t.hub.poll_timeout(), Some(t.base + Duration::from_secs(30)));
    t.at(30);
    // alice was pinged; bob is next due at 35, alice's deadline is 40.
    assert_eq!(t.hub.poll_timeout(), Some(t.base + Duration::from_secs(35)));
    t.at(35);
    assert_eq!(t.hub.poll_timeout(), Some(t.base + Duration::from_secs(40)));
    t.at(40);
    assert_eq!(t.hub.poll_timeout(), Some(t.base + Duration::from_secs(45)));
    t.at(45);
    assert_eq!(t.take_closes().len(), 2);
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn many_silent_connections_time_out_in_one_tick() {
    let mut t = T::new();
    let watcher = t.open("watcher");
    t.join(watcher, "r");
    let ids: Vec<ConnId> = (0..20).map(|i| t.open_in(&format!("u{i}"), "r")).collect();
    t.drain();
    t.now = t.base + Duration::from_secs(39);
    t.activity(watcher);
    t.at(40);
    let closed: BTreeSet<ConnId> = t.take_closes().into_iter().map(|(id, _)| id).collect();
    assert_eq!(closed, set(&ids));
    let out = t.drain();
    assert_eq!(out.len(), 20, "one user_left per user, to the watcher");
    assert!(out
        .iter()
        .all(|(to, v)| *to == watcher && v["type"] == "user_left"));
    let gone: BTreeSet<String> = out
        .iter()
        .map(|(_, v)| v["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(gone.len(), 20);
    assert_eq!(t.hub.registry().len(), 1);
    assert_eq!(t.hub.registry().room_count(), 1);
}

// ---------------------------------------------------------------- cleanup

#[test]
fn everything_is_cleaned_up_after_all_connections_close() {
    let mut t = T::new();
    let rooms = ["a", "b", "c", "d", "e"];
    let mut ids = Vec::new();
    for i in 0..30u32 {
        let user = format!("user{}", i % 7);
        let id = if i % 4 == 0 {
            t.open_in(&user, rooms[i as usize % 5])
        } else {
            t.open(&user)
        };
        for (k, room) in rooms.iter().enumerate() {
            if (i as usize + k) % 3 != 0 {
                t.text(id, &format!(r#"{{"type":"join","room":"{room}"}}"#));
            }
        }
        if i % 5 == 0 {
            t.text(id, r#"{"type":"leave","room":"b"}"#);
        }
        ids.push(id);
    }
    for _ in 0..3 {
        t.open_echo();
    }
    t.drain();
    assert!(t.hub.registry().room_count() > 0);
    // Some go silent; the rest stay active until they close.
    let silent: Vec<ConnId> = ids.iter().copied().filter(|id| id.index % 3 == 0).collect();
    let active: Vec<ConnId> = ids.iter().copied().filter(|id| id.index % 3 != 0).collect();
    for (n, &id) in active.iter().enumerate() {
        if n % 2 == 0 {
            t.closed(id);
        } else {
            t.text(id, r#"{"type":"leave","room":"a"}"#);
            t.close(id, CloseReason::SlowConsumer);
        }
    }
    t.at(100);
    let closed: BTreeSet<ConnId> = t.take_closes().into_iter().map(|(id, _)| id).collect();
    assert!(set(&silent).is_subset(&closed));
    assert_eq!(t.hub.registry().len(), 0);
    assert!(t.hub.registry().is_empty());
    assert_eq!(t.hub.registry().room_count(), 0);
    assert_eq!(t.hub.registry().user_count(), 0);
    assert_eq!(t.hub.registry().rooms().count(), 0);
    assert_eq!(t.hub.registry().users().count(), 0);
    assert_eq!(t.hub.registry().sessions().count(), 0);
}

#[test]
fn close_emits_close_once_and_removes() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.close(a, CloseReason::SlowConsumer);
    assert_eq!(t.take_closes(), vec![(a, CloseReason::SlowConsumer)]);
    assert_eq!(recipients(&t.drain(), "user_left"), set(&[b]));
    t.close(a, CloseReason::SlowConsumer);
    t.closed(a);
    assert!(t.take_closes().is_empty());
    t.silent();
}

#[test]
fn handle_closed_is_idempotent() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.closed(a);
    assert_eq!(t.drain().len(), 1);
    t.closed(a);
    t.closed(a);
    t.silent();
    assert!(t.take_closes().is_empty(), "handle_closed emits no Close");
    assert_eq!(t.hub.registry().len(), 1);
    t.closed(b);
    t.closed(b);
    assert!(t.hub.registry().is_empty());
    assert_eq!(t.hub.registry().room_count(), 0);
    // Closing an index that never existed is ignored as well.
    t.closed(ConnId {
        index: 999,
        generation: 0,
    });
}

#[test]
fn stale_conn_id_is_ignored_by_every_handle_call() {
    let mut t = T::new();
    let old = ConnId {
        index: 0,
        generation: 1,
    };
    let peer = ConnId {
        index: 1,
        generation: 0,
    };
    t.try_open_at(old, Some("ghost"), Some("r")).unwrap();
    t.try_open_at(peer, Some("bob"), Some("r")).unwrap();
    t.drain();
    t.closed(old);
    t.drain();
    // The slot is reused by a new connection of a newer generation.
    let new = ConnId {
        index: 0,
        generation: 2,
    };
    t.try_open_at(new, Some("alice"), Some("r")).unwrap();
    t.drain();
    let stale = [
        old,
        ConnId {
            index: 0,
            generation: 0,
        },
    ];
    for s in stale {
        t.text(s, r#"{"type":"message","room":"r","data":1}"#);
        t.text(s, r#"{"type":"leave","room":"r"}"#);
        t.text(s, r#"{"type":"broadcast","data":1}"#);
        t.text(s, "garbage");
        t.binary(s, b"x");
        t.activity(s);
        t.closed(s);
        t.close(s, CloseReason::GoingAway);
        t.silent();
        assert!(t.take_closes().is_empty());
    }
    // The live connection is untouched.
    let reg = t.hub.registry();
    assert!(reg.session(new).is_some());
    assert_eq!(reg.session(new).unwrap().rooms.len(), 1);
    assert_eq!(reg.len(), 2);
    assert!(reg.user_key("ghost").is_none());
    // Stale activity did not refresh the new connection's heartbeat.
    t.now = t.base + Duration::from_secs(20);
    t.activity(peer);
    t.activity(old);
    t.at(30);
    assert_eq!(t.take_pings(), vec![new]);
    t.at(40);
    assert_eq!(t.take_closes(), vec![(new, CloseReason::HeartbeatTimeout)]);
    assert_eq!(
        t.drain(),
        vec![(
            peer,
            json!({"type":"user_left","room":"r","user":"alice","members":1})
        )]
    );
}

#[test]
fn stale_heartbeat_entry_does_not_touch_reused_slot() {
    let mut t = T::new();
    let old = ConnId {
        index: 0,
        generation: 0,
    };
    t.try_open_at(old, Some("alice"), None).unwrap();
    t.closed(old);
    t.now = t.base + Duration::from_secs(25);
    let new = ConnId {
        index: 0,
        generation: 1,
    };
    t.try_open_at(new, Some("alice"), None).unwrap();
    t.at(30);
    t.at(40);
    assert!(t.take_pings().is_empty());
    assert!(t.take_closes().is_empty());
    t.at(55);
    assert_eq!(t.take_pings(), vec![new]);
}

#[test]
fn output_for_a_closed_connection_is_not_resolved_to_its_room() {
    let mut t = T::new();
    let a = t.open("alice");
    let b = t.open("bob");
    t.join(a, "r");
    t.join(b, "r");
    t.closed(b);
    t.drain();
    // A message to the room now reaches nobody: bob's slot is out of it.
    t.text(a, r#"{"type":"message","room":"r","data":1}"#);
    t.silent();
}

#[test]
fn close_all_emits_one_close_per_session_and_empties_the_registry() {
    let mut t = T::new();
    let mut ids = BTreeSet::new();
    for i in 0..6 {
        let id = t.open_in(
            &format!("u{}", i % 3),
            if i % 2 == 0 { "even" } else { "odd" },
        );
        ids.insert(id);
    }
    ids.insert(t.open_echo());
    t.drain();
    t.hub.close_all(CloseReason::GoingAway);
    t.step();
    let closes = t.take_closes();
    assert_eq!(closes.len(), ids.len());
    assert!(closes.iter().all(|&(_, r)| r == CloseReason::GoingAway));
    let closed: BTreeSet<ConnId> = closes.iter().map(|&(id, _)| id).collect();
    assert_eq!(closed, ids);
    assert_eq!(CloseReason::GoingAway.code(), 1001);
    assert!(t.hub.registry().is_empty());
    assert_eq!(t.hub.registry().room_count(), 0);
    assert_eq!(t.hub.registry().user_count(), 0);
    // Nobody is left to receive presence events.
    t.silent();
    t.hub.close_all(CloseReason::GoingAway);
    t.step();
    assert!(t.take_closes().is_empty());
}

#[test]
fn counters_track_messages_bytes_and_errors() {
    let mut t = T::new();
    let a = t.open("alice");
    let msg = r#"{"type":"ping"}"#;
    t.text(a, msg);
    t.text(a, "bad");
    t.binary(a, b"1234");
    let c = t.hub.counters();
    assert_eq!(c.messages_in, 3);
    assert_eq!(c.bytes_in, (msg.len() + 3 + 4) as u64);
    assert_eq!(c.errors_sent, 2);
    assert_eq!(c.connections_opened, 1);
    t.now = t.base + Duration::from_secs(12);
    assert_eq!(t.hub.uptime(t.now), Duration::from_secs(12));
}

#[test]
fn announce_limit_is_symmetric_at_the_boundary() {
    let mut t = T::with(HubConfig {
        presence_announce_limit: 2,
        ..HubConfig::default()
    });
    let a = t.open("a");
    let b = t.open("b");
    let c = t.open("c");
    t.join(a, "r");
    t.join(b, "r");
    t.drain();
    // c makes three users: over the limit, not announced on arrival...
    t.text(c, r#"{"type":"join","room":"r"}"#);
    assert_eq!(t.only(c)["type"], "joined");
    // ...so not on departure either.
    t.text(c, r#"{"type":"leave","room":"r"}"#);
    assert_eq!(t.only(c)["type"], "left");
    // b leaving a room of two was announced on arrival, and is on departure.
    t.text(b, r#"{"type":"leave","room":"r"}"#);
    assert_eq!(recipients(&t.drain(), "user_left"), set(&[a]));
}

#[test]
fn over_rate_limit_is_refused_then_closed_with_4102() {
    let mut t = T::with(HubConfig {
        rate_limit: 10.0,
        rate_burst: 3,
        rate_limit_close_after: 2,
        ..HubConfig::default()
    });
    let a = t.open("a");
    for _ in 0..3 {
        t.text(a, r#"{"type":"ping"}"#);
        assert_eq!(t.only(a)["type"], "pong");
    }
    for _ in 0..2 {
        t.text(a, r#"{"type":"ping","ref":1}"#);
        let e = t.only(a);
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_i64()),
            (Some("rate_limited"), None)
        );
    }
    t.text(a, r#"{"type":"ping"}"#);
    t.drain();
    assert_eq!(t.hub.registry().len(), 0, "closed after persisting");
    assert_eq!(t.hub.counters().rate_limit_closes, 1);
}

#[test]
fn rate_limit_refills_over_time_and_spares_echo() {
    let mut t = T::with(HubConfig {
        rate_limit: 10.0,
        rate_burst: 1,
        rate_limit_close_after: 1000,
        ..HubConfig::default()
    });
    let a = t.open("a");
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["type"], "pong");
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["code"], "rate_limited");
    t.now += std::time::Duration::from_millis(100);
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.only(a)["type"], "pong");
    let e = t.open_echo();
    for _ in 0..50 {
        t.text(e, "x");
    }
    assert_eq!(t.drain_frames().len(), 50, "echo is not rate limited");
}

// ------------------------------------------------- connection info and times

fn info(text: &str) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(text.to_string()).unwrap())
}

impl T {
    /// Open `user` (in `room` if given) with `info`; its welcome is returned.
    fn open_with_info(&mut self, user: &str, room: Option<&str>, info: &str) -> (ConnId, Value) {
        let id = self.fresh_id();
        let req = OpenRequest {
            user: Some(user),
            room,
            info: self::info(info),
            ..Default::default()
        };
        self.try_open_with(id, req).expect("open");
        // Take the opener's replies; leave what others got for the test.
        let (mine, others): (Vec<Frame>, Vec<Frame>) =
            self.frames.drain(..).partition(|f| f.to == id);
        self.frames = others;
        (id, mine[0].json())
    }

    /// The `details` of a `presence` reply to `asker` about `room`.
    fn details(&mut self, asker: ConnId, room: &str) -> Value {
        self.text(
            asker,
            &format!(r#"{{"type":"presence","room":"{room}","details":true}}"#),
        );
        let reply = self.only(asker);
        assert_eq!(
            reply["users"].as_array().unwrap().len(),
            reply["details"].as_array().unwrap().len()
        );
        reply["details"].clone()
    }
}

fn detail<'a>(details: &'a Value, user: &str) -> &'a Value {
    details
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["user"] == user)
        .unwrap_or_else(|| panic!("{user} not in {details}"))
}

#[test]
fn open_with_info_echoes_it_and_the_connection_time_in_welcome() {
    let mut t = T::new();
    t.hub.set_unix_time(t.now, 1_700_000_000_000);
    t.now += Duration::from_millis(1500);
    let (id, welcome) = t.open_with_info("ann", None, r#"{"name":"Ann"}"#);
    assert_eq!(welcome["info"], json!({"name":"Ann"}));
    assert_eq!(welcome["connected_at"], 1_700_000_001_500u64);
    assert_eq!(
        t.hub.registry().info(id).map(RawValue::get),
        Some(r#"{"name":"Ann"}"#)
    );
    let plain = t.try_open(Some("bob"), None).unwrap();
    let welcome = t.only(plain);
    assert!(welcome.get("info").is_none(), "{welcome}");
    t.closed(id);
    assert!(
        t.hub.registry().info(id).is_none(),
        "freed with its connection"
    );
}

#[test]
fn info_is_sent_as_the_bytes_received() {
    let mut t = T::new();
    let raw = r#"{"b": 1,  "a":[1.50, "x"]}"#;
    let (_, welcome) = t.open_with_info("ann", None, raw);
    assert_eq!(welcome["info"], json!({"b": 1, "a": [1.5, "x"]}));
    let (a, _) = t.open_with_info("cat", None, r#"{"n":0}"#);
    t.text(a, r#"{"type":"join","room":"r"}"#);
    t.drain();
    let (_, _) = t.open_with_info("ann", Some("r"), raw);
    let frames = t.drain_frames();
    let joined = frames
        .iter()
        .find(|f| f.to == a && f.json()["type"] == "user_joined")
        .expect("user_joined");
    assert!(joined.text().contains(raw), "verbatim: {}", joined.text());
}

#[test]
fn user_joined_carries_the_users_info_and_only_when_there_is_one() {
    let mut t = T::new();
    let a = t.open_in("a", "r");
    let _ = t.open_with_info("b", Some("r"), r#"{"name":"Bee"}"#);
    t.text(a, r#"{"type":"ping"}"#);
    let out = t.drain();
    let joined: Vec<&Value> = out
        .iter()
        .filter(|(to, v)| *to == a && v["type"] == "user_joined")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["info"], json!({"name":"Bee"}));
    let b2 = t.open_in("c", "r");
    let out = t.drain();
    let joined = out
        .iter()
        .find(|(to, v)| *to == a && v["type"] == "user_joined")
        .expect("user_joined for c");
    assert!(joined.1.get("info").is_none(), "{}", joined.1);
    t.closed(b2);
    let left = t.drain();
    assert!(
        left.iter().all(|(_, v)| v.get("info").is_none()),
        "user_left carries no info"
    );
}

#[test]
fn presence_details_give_info_connections_and_arrival() {
    let mut t = T::new();
    t.hub.set_unix_time(t.now, 1_000_000);
    let (a1, _) = t.open_with_info("ann", Some("r"), r#"{"v":1}"#);
    t.now += Duration::from_secs(2);
    let b = t.open_in("bob", "r");
    t.drain();
    let d = t.details(b, "r");
    assert_eq!(detail(&d, "ann")["info"], json!({"v":1}));
    assert_eq!(detail(&d, "ann")["connections"], 1);
    assert_eq!(detail(&d, "ann")["since"], 1_000_000);
    assert_eq!(detail(&d, "bob")["since"], 1_002_000);
    assert!(detail(&d, "bob").get("info").is_none());
    // A second device: counted, and arrival is the user's first.
    t.now += Duration::from_secs(1);
    let (a2, _) = t.open_with_info("ann", Some("r"), r#"{"v":2}"#);
    t.drain();
    let d = t.details(b, "r");
    assert_eq!(detail(&d, "ann")["connections"], 2);
    assert_eq!(detail(&d, "ann")["since"], 1_000_000);
    assert_eq!(
        detail(&d, "ann")["info"],
        json!({"v":2}),
        "the newest connection's"
    );
    t.closed(a2);
    t.drain();
    let d = t.details(b, "r");
    assert_eq!(
        detail(&d, "ann")["info"],
        json!({"v":1}),
        "back to the one still open"
    );
    assert_eq!(detail(&d, "ann")["connections"], 1);
    // The user's newest connection has no info: the user has none.
    let _a3 = t.open("ann");
    let d = t.details(b, "r");
    assert!(detail(&d, "ann").get("info").is_none());
    // Without details: the reply's shape is unchanged.
    t.text(b, r#"{"type":"presence","room":"r"}"#);
    assert!(t.only(b).get("details").is_none());
    t.closed(a1);
}

#[test]
fn details_in_joined_are_bounded_like_users() {
    let mut t = T::with(HubConfig {
        member_list_limit: 2,
        ..HubConfig::default()
    });
    for u in ["a", "b", "c"] {
        t.open_in(u, "r");
    }
    t.drain();
    let d = t.open("d");
    t.text(d, r#"{"type":"join","room":"r","details":true,"ref":1}"#);
    let joined = t
        .drain()
        .into_iter()
        .find(|(to, v)| *to == d && v["type"] == "joined")
        .unwrap()
        .1;
    assert_eq!(joined["members"], 4);
    assert_eq!(joined["truncated"], true);
    assert_eq!(joined["users"].as_array().unwrap().len(), 2);
    assert_eq!(joined["details"].as_array().unwrap().len(), 2);
    assert_eq!(joined["ref"], 1);
}

struct Directory;

impl Handler for Directory {
    fn connection_info(
        &mut self,
        user: &str,
        info: Option<Box<RawValue>>,
    ) -> Option<Box<RawValue>> {
        match user {
            "set" => self::info(r#"{"from":"directory"}"#),
            "drop" => None,
            "bad" => self::info("[1,2]"),
            "huge" => self::info(&format!(r#"{{"x":"{}"}}"#, "y".repeat(2000))),
            _ => info,
        }
    }
}

#[test]
fn the_handler_may_set_replace_or_drop_info_within_the_rules() {
    let mut t = T::new();
    t.hub.set_handler(Box::new(Directory));
    let (_, w) = t.open_with_info("set", None, r#"{"from":"token"}"#);
    assert_eq!(w["info"], json!({"from":"directory"}));
    let (_, w) = t.open_with_info("drop", None, r#"{"from":"token"}"#);
    assert!(w.get("info").is_none());
    let (_, w) = t.open_with_info("keep", None, r#"{"from":"token"}"#);
    assert_eq!(w["info"], json!({"from":"token"}));
    let (_, w) = t.open_with_info("bad", None, r#"{"k":1}"#);
    assert!(w.get("info").is_none(), "not an object: dropped");
    let (_, w) = t.open_with_info("huge", None, r#"{"k":1}"#);
    assert!(w.get("info").is_none(), "over max_info_bytes: dropped");
}

#[test]
fn views_list_connections_with_times_rooms_route_and_info() {
    let mut t = T::new();
    t.hub.set_unix_time(t.now, 5_000);
    let (a, _) = t.open_with_info("ann", Some("home"), r#"{"v":1}"#);
    t.now += Duration::from_millis(250);
    let b = t.open("ann");
    t.join(b, "other");
    t.now += Duration::from_millis(250);
    t.text(a, r#"{"type":"ping"}"#);
    t.drain();
    let v = t.hub.user_view("ann");
    assert!(v.online);
    assert_eq!(v.connections, 2);
    assert_eq!(v.rooms, ["home", "other"]);
    let ca = v.details.iter().find(|c| c.id == a).unwrap();
    assert_eq!((ca.connected_at, ca.last_seen), (5_000, 5_500));
    assert_eq!(ca.url_room.as_deref(), Some("home"));
    assert_eq!(ca.info.as_ref().map(|i| i.get()), Some(r#"{"v":1}"#));
    let cb = v.details.iter().find(|c| c.id == b).unwrap();
    assert_eq!(
        (cb.connected_at, cb.route.as_str(), cb.url_room.as_deref()),
        (5_250, "/ws", None)
    );
    assert!(cb.info.is_none());
    let r = t.hub.room_view("home", 10);
    assert_eq!((r.members, r.connections, r.truncated), (1, 1, false));
    assert_eq!(r.details[0].since, 5_000);
    assert!(!t.hub.user_view("nobody").online);
    assert_eq!(t.hub.room_view("nowhere", 10).members, 0);
}

#[test]
fn arrival_is_new_after_a_user_left_the_room_entirely() {
    let mut t = T::new();
    t.hub.set_unix_time(t.now, 0);
    let watcher = t.open_in("w", "r");
    let a = t.open_in("ann", "r");
    t.drain();
    t.now += Duration::from_secs(5);
    t.text(a, r#"{"type":"leave","room":"r"}"#);
    t.text(a, r#"{"type":"join","room":"r"}"#);
    t.drain();
    let d = t.details(watcher, "r");
    assert_eq!(detail(&d, "ann")["since"], 5_000);
}

#[test]
fn the_newest_connection_wins_even_when_opened_in_the_same_instant() {
    // Same clock reading for all three; closing the middle one reorders
    // nothing: the user's info stays that of the last opened.
    let mut t = T::new();
    let watcher = t.open_in("w", "r");
    let (_a1, _) = t.open_with_info("ann", Some("r"), r#"{"v":1}"#);
    let (a2, _) = t.open_with_info("ann", Some("r"), r#"{"v":2}"#);
    let (a3, _) = t.open_with_info("ann", Some("r"), r#"{"v":3}"#);
    t.drain();
    t.closed(a2);
    t.drain();
    assert_eq!(
        detail(&t.details(watcher, "r"), "ann")["info"],
        json!({"v":3})
    );
    t.closed(a3);
    t.drain();
    assert_eq!(
        detail(&t.details(watcher, "r"), "ann")["info"],
        json!({"v":1})
    );
}

#[test]
fn a_reused_slot_does_not_inherit_info() {
    let mut t = T::new();
    let (old, _) = t.open_with_info("ann", None, r#"{"v":1}"#);
    t.closed(old);
    let new = ConnId {
        index: old.index,
        generation: old.generation + 1,
    };
    t.try_open_at(new, Some("bob"), None).unwrap();
    assert!(t.hub.registry().info(new).is_none());
    assert!(t.hub.registry().info(old).is_none());
    let welcome = t.only(new);
    assert!(welcome.get("info").is_none(), "{welcome}");
}

#[path = "cluster_tests.rs"]
mod cluster_tests;

#[path = "history_tests.rs"]
mod history_tests;
