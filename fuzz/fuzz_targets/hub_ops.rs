//! Random operation sequences on the pure hub core, with a fake clock and a
//! small configuration, so that limits, collisions and stale ids are common.
//!
//! After every operation all outputs are drained the way the driver does
//! (resolving `Send` targets with `for_each_recipient`) and checked:
//! every recipient is an open session (a hub session unless the target is
//! one connection), every frame is a well-formed unmasked server frame, every
//! text frame to a hub session is a JSON object with a `type` (an `error` with
//! a documented code), `Ping` goes to an open session (or one closed later in
//! the same batch), `Close` to one that the hub has removed and that this
//! harness had open. Then
//! `Registry::check_invariants`, the configured caps, agreement between this
//! harness's idea of which connections are open and the registry, and after
//! `handle_timeout` that nobody silent past ping interval + timeout is still
//! open. At the end every connection is closed and the registry, and the
//! heartbeat heap, must be empty.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchboard::hub::{ConnId, Grants, Hub, Kind, OpenRequest, Output, Target};
use switchboard::protocol::CloseReason;
use switchboard::HubConfig;

const SLOTS: usize = 16;
const USERS: &[&str] = &["alice", "bob", "carol", "dave"];
const ROOMS: &[&str] = &[
    "lobby",
    "a",
    "b",
    "c",
    "r\u{e9}",
    "",
    "a-room-name-longer-than-the-limit",
    "x\"y\\z",
];
const DATA: &[&str] = &[
    "1",
    "null",
    "\"hi\"",
    "{\"x\":[1,2]}",
    "[]",
    "1e999",
    "-0.5e-3",
];
const REFS: &[&str] = &[
    "",
    ",\"ref\":1",
    ",\"ref\":\"r1\"",
    ",\"ref\":null",
    ",\"ref\":{\"a\":[]}",
];
const GARBAGE: &[&str] = &[
    "",
    "{",
    "[]",
    "null",
    "42",
    "not json",
    "{\"type\":\"fly\",\"ref\":3}",
    "{\"type\":5}",
    "{\"type\":\"join\"}",
    "{\"type\":\"join\",\"room\":7,\"ref\":4}",
    "{\"type\":\"message\",\"room\":\"a\"}",
    "{\"type\":\"private\",\"to\":\"alice\"}",
    "{\"type\":\"private\",\"data\":1}",
    "{\"type\":\"broadcast\"}",
    "{\"type\":\"message\",\"room\":\"a\",\"data\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    "{\"type\":\"join\",\"room\":\"a\",\"type\":\"leave\"}",
    "{\"type\":\"message\",\"room\":\"a\",\"data\":1,\"echo\":\"yes\"}",
    "  {\"type\":\"ping\"}  ",
];
const DOCUMENTED: &[&str] = &[
    "bad_json",
    "bad_message",
    "unknown_type",
    "not_in_room",
    "room_name_too_long",
    "too_many_rooms",
    "user_offline",
    "forbidden",
    "rate_limited",
    "payload_too_large",
    "unavailable",
];
const CLOSE_REASONS: &[CloseReason] = &[
    CloseReason::GoingAway,
    CloseReason::ProtocolError,
    CloseReason::InvalidUtf8,
    CloseReason::MessageTooBig,
    CloseReason::SlowConsumer,
];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

/// A connection as an operation names it.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Conn {
    /// Slot (index); `SLOTS` and above name an index that is never opened.
    slot: u8,
    /// Use the previous generation of the slot: an id that is closed.
    stale: bool,
}

#[derive(Arbitrary, Debug)]
enum Msg {
    Join {
        room: u8,
        reference: u8,
        details: bool,
    },
    Leave {
        room: u8,
        reference: u8,
    },
    Message {
        room: u8,
        echo: Option<bool>,
        data: u8,
        reference: u8,
    },
    Private {
        to: u8,
        data: u8,
    },
    Broadcast {
        echo: Option<bool>,
        data: u8,
    },
    Typing {
        room: u8,
    },
    Presence {
        room: u8,
        reference: u8,
        details: bool,
    },
    Ping {
        reference: u8,
    },
    Pong,
    Garbage(u8),
}

impl Msg {
    fn text(&self) -> String {
        let room = |r: u8| serde_json::to_string(pick(ROOMS, r)).unwrap();
        let user = |u: u8| serde_json::to_string(pick(USERS, u)).unwrap();
        let details = |d: bool| if d { ",\"details\":true" } else { "" };
        let echo = |e: &Option<bool>| match e {
            None => String::new(),
            Some(e) => format!(",\"echo\":{e}"),
        };
        match self {
            Msg::Join {
                room: r,
                reference,
                details: d,
            } => {
                format!(
                    "{{\"type\":\"join\",\"room\":{}{}{}}}",
                    room(*r),
                    pick(REFS, *reference),
                    details(*d)
                )
            }
            Msg::Leave { room: r, reference } => {
                format!(
                    "{{\"type\":\"leave\",\"room\":{}{}}}",
                    room(*r),
                    pick(REFS, *reference)
                )
            }
            Msg::Message {
                room: r,
                echo: e,
                data,
                reference,
            } => format!(
                "{{\"type\":\"message\",\"room\":{},\"data\":{}{}{}}}",
                room(*r),
                pick(DATA, *data),
                echo(e),
                pick(REFS, *reference)
            ),
            Msg::Private { to, data } => format!(
                "{{\"data\":{},\"type\":\"private\",\"to\":{}}}",
                pick(DATA, *data),
                user(*to)
            ),
            Msg::Broadcast { echo: e, data } => {
                format!(
                    "{{\"type\":\"broadcast\",\"data\":{}{}}}",
                    pick(DATA, *data),
                    echo(e)
                )
            }
            Msg::Typing { room: r } => format!("{{\"type\":\"typing\",\"room\":{}}}", room(*r)),
            Msg::Presence {
                room: r,
                reference,
                details: d,
            } => {
                format!(
                    "{{\"type\":\"presence\",\"room\":{}{}{}}}",
                    room(*r),
                    pick(REFS, *reference),
                    details(*d)
                )
            }
            Msg::Ping { reference } => format!("{{\"type\":\"ping\"{}}}", pick(REFS, *reference)),
            Msg::Pong => "{\"type\":\"pong\"}".to_owned(),
            Msg::Garbage(g) => pick(GARBAGE, *g).to_owned(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        slot: u8,
        echo: bool,
        user: Option<u8>,
        room: Option<u8>,
        /// Token grants: room patterns and broadcast (`None`: auth off).
        grants: Option<u8>,
        /// Token expiry, in milliseconds from now.
        expires: Option<u16>,
        /// Connection info: one of a few small objects.
        info: Option<u8>,
    },
    Text {
        conn: Conn,
        msg: Msg,
    },
    RawText {
        conn: Conn,
        text: String,
    },
    Binary {
        conn: Conn,
        len: u8,
    },
    Activity {
        conn: Conn,
    },
    Closed {
        conn: Conn,
    },
    Close {
        conn: Conn,
        reason: u8,
    },
    Advance {
        millis: u16,
    },
    Timeout,
    CloseAll,
    // The server-side API (HTTP publish API, embedding).
    Publish {
        room: u8,
        data: u8,
    },
    PublishBinary {
        room: u8,
        len: u8,
    },
    SendToUser {
        user: u8,
        data: u8,
    },
    ServerBroadcast {
        data: u8,
    },
    Disconnect {
        user: u8,
        code: u16,
        text: bool,
    },
    /// Give back memory (drops stale heartbeat and expiry entries).
    Shrink,
}

/// Room patterns a token may carry.
const GRANT_ROOMS: &[Option<&[&str]>] = &[
    None,
    Some(&["lobby"]),
    Some(&["a*"]),
    Some(&[]),
    Some(&["*"]),
    Some(&["b", "c", "r*"]),
];

fn grants(g: u8) -> Grants {
    let rooms = GRANT_ROOMS[(g >> 1) as usize % GRANT_ROOMS.len()];
    Grants::new(
        rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
        g & 1 == 1,
    )
}

/// Data for the server-side API, which checks it (`check_json_limits`) before
/// it reaches the hub: DATA without the out-of-range number.
fn raw(i: u8) -> Box<RawValue> {
    const SERVER_DATA: &[&str] = &["1", "null", "\"hi\"", "{\"x\":[1,2]}", "[]", "-0.5e-3"];
    RawValue::from_string(pick(SERVER_DATA, i).to_owned()).unwrap()
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    generation: u32,
    /// The harness (as the driver) holds this slot open in the hub.
    open: bool,
}

struct Harness {
    hub: Hub,
    slots: [Slot; SLOTS],
    now: Instant,
}

fn config() -> HubConfig {
    HubConfig {
        ping_interval: Duration::from_millis(1000),
        ping_timeout: Duration::from_millis(500),
        max_connections_per_user: 2,
        max_rooms_per_connection: 3,
        max_room_name_len: 16,
        max_user_id_len: 16,
        presence_announce_limit: 2,
        member_list_limit: 2,
        max_message_size: 1024,
        rate_limit: 5.0,
        rate_burst: 4,
        rate_limit_close_after: 2,
        ..HubConfig::default()
    }
}

/// Checks a pre-encoded server frame; returns (opcode, payload).
fn parse_frame(frame: &[u8]) -> (u8, &[u8]) {
    assert!(frame.len() >= 2, "frame of {} bytes", frame.len());
    assert_eq!(frame[0] & 0xF0, 0x80, "FIN, no RSV bits: {:#x}", frame[0]);
    let opcode = frame[0] & 0x0F;
    assert!(opcode == 1 || opcode == 2, "opcode {opcode}");
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    let (len, head) = match frame[1] & 0x7F {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert_eq!(head + len, frame.len(), "frame length");
    (opcode, &frame[head..])
}

impl Harness {
    fn id(&self, conn: Conn) -> ConnId {
        let index = conn.slot as usize;
        if index >= SLOTS {
            return ConnId {
                index: 1000 + index as u32,
                generation: 1,
            };
        }
        let g = self.slots[index].generation;
        ConnId {
            index: index as u32,
            generation: if conn.stale { g.wrapping_sub(1) } else { g },
        }
    }

    fn slot_of(&mut self, id: ConnId) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(id.index as usize)?;
        (slot.generation == id.generation).then_some(slot)
    }

    /// Carry out and check every pending output. Returns the closed ids.
    fn drain(&mut self, welcome: Option<ConnId>) -> Vec<(ConnId, CloseReason)> {
        let mut closed = Vec::new();
        let mut pinged_closed = Vec::new();
        let mut first = true;
        while let Some(output) = self.hub.poll_output() {
            let registry = self.hub.registry();
            match output {
                Output::Send { to, frame } => {
                    let (opcode, payload) = parse_frame(&frame);
                    if first {
                        if let Some(w) = welcome {
                            assert_eq!(to, Target::Conn(w), "welcome first");
                            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
                            assert_eq!(v["type"], "welcome");
                        }
                    }
                    let mut recipients = Vec::new();
                    self.hub.for_each_recipient(to, |id| recipients.push(id));
                    let mut json = false;
                    for &id in &recipients {
                        let Some(s) = registry.session(id) else {
                            panic!("{to:?} resolves to {id}, not an open session");
                        };
                        if !matches!(to, Target::Conn(_)) {
                            assert_eq!(s.kind, Kind::Hub, "{to:?} reaches echo session {id}");
                        }
                        json |= s.kind == Kind::Hub;
                    }
                    if let Target::Room {
                        except: Some(x), ..
                    }
                    | Target::All { except: Some(x) } = to
                    {
                        assert!(!recipients.contains(&x), "{to:?} reaches the excepted {x}");
                    }
                    if opcode == 1 {
                        let text = std::str::from_utf8(payload).expect("text frame is UTF-8");
                        if json {
                            let v: serde_json::Value = serde_json::from_str(text)
                                .unwrap_or_else(|e| panic!("server frame {text:?}: {e}"));
                            let ty = v["type"]
                                .as_str()
                                .unwrap_or_else(|| panic!("no type: {text}"));
                            if ty == "error" {
                                let code = v["code"].as_str().expect("error code");
                                assert!(DOCUMENTED.contains(&code), "undocumented code {code}");
                            }
                        }
                    }
                }
                Output::Ping(id) => {
                    // A Ping may precede, in the same batch, the Close of a
                    // connection whose token expires in the same
                    // handle_timeout (harmless: the driver sends both).
                    if registry.session(id).is_none() {
                        pinged_closed.push(id);
                    }
                }
                Output::Close { conn, reason, .. } => {
                    assert!(
                        registry.session(conn).is_none(),
                        "Close of {conn}, still registered"
                    );
                    let slot = self
                        .slot_of(conn)
                        .unwrap_or_else(|| panic!("Close of unknown {conn}"));
                    assert!(slot.open, "second Close of {conn}");
                    slot.open = false;
                    closed.push((conn, reason));
                }
                other => panic!("a single-node hub emitted {other:?}"),
            }
            first = false;
        }
        for id in pinged_closed {
            assert!(
                closed.iter().any(|&(c, _)| c == id),
                "Ping to {id}, closed before this batch"
            );
        }
        closed
    }

    fn check(&self) {
        let registry = self.hub.registry();
        registry.check_invariants();
        let config = self.hub.config();
        let mut open = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let id = ConnId {
                index: index as u32,
                generation: slot.generation,
            };
            assert_eq!(
                registry.session(id).is_some(),
                slot.open,
                "harness and registry disagree on {id}"
            );
            open += slot.open as usize;
        }
        assert_eq!(registry.len(), open, "sessions outside the harness's slots");
        for user in registry.users() {
            assert!(
                user.conns.len() <= config.max_connections_per_user,
                "{} holds {} connections",
                user.name,
                user.conns.len()
            );
        }
        for s in registry.sessions() {
            assert!(
                s.rooms.len() <= config.max_rooms_per_connection,
                "{} in {} rooms",
                s.id,
                s.rooms.len()
            );
            assert!(s.last_seen <= self.now, "last_seen in the future");
        }
        for room in registry.rooms() {
            assert!(
                !room.name.is_empty() && room.name.len() <= config.max_room_name_len,
                "room {:?}",
                room.name
            );
            for &m in &room.members {
                if let Some(g) = &registry.session(m).unwrap().grants {
                    assert!(
                        g.may_join(&room.name),
                        "{m} in {:?}, which its grants do not allow",
                        room.name
                    );
                }
            }
        }
        if !registry.is_empty() {
            assert!(
                self.hub.poll_timeout().is_some(),
                "open sessions but no deadline"
            );
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Open {
                slot,
                echo,
                user,
                room,
                grants: g,
                expires,
                info,
            } => {
                let index = slot as usize % SLOTS;
                if self.slots[index].open {
                    return; // the driver never reuses an open slot
                }
                self.slots[index].generation = self.slots[index].generation.wrapping_add(1);
                let id = ConnId {
                    index: index as u32,
                    generation: self.slots[index].generation,
                };
                let req = OpenRequest {
                    user: user.map(|u| pick(USERS, u)),
                    room: room.map(|r| pick(ROOMS, r)),
                    kind: if echo { Kind::Echo } else { Kind::Hub },
                    grants: g.map(|g| Arc::new(grants(g))),
                    expires_at: expires.map(|ms| self.now + Duration::from_millis(ms as u64)),
                    info: info.map(|i| {
                        serde_json::value::RawValue::from_string(format!(r#"{{"n":{}}}"#, i % 4))
                            .expect("valid JSON")
                    }),
                };
                let before = self.hub.registry().len();
                match self.hub.handle_open(self.now, id, req) {
                    Ok(()) => {
                        self.slots[index].open = true;
                        assert!(self.hub.registry().session(id).is_some());
                        self.drain((!echo).then_some(id));
                    }
                    Err(reason) => {
                        assert!(!echo, "echo refused");
                        assert_eq!(reason, CloseReason::UserConnectionLimit);
                        assert_eq!(self.hub.registry().len(), before, "refused but counted");
                        assert!(self.hub.registry().session(id).is_none());
                        assert!(
                            self.hub.poll_output().is_none(),
                            "output for a refused connection"
                        );
                    }
                }
            }
            Op::Text { conn, ref msg } => {
                let id = self.id(conn);
                self.hub.handle_text(self.now, id, &msg.text());
                self.drain(None);
            }
            Op::RawText { conn, ref text } => {
                let id = self.id(conn);
                self.hub.handle_text(self.now, id, text);
                self.drain(None);
            }
            Op::Binary { conn, len } => {
                let id = self.id(conn);
                let data: Vec<u8> = (0..len).collect();
                self.hub.handle_binary(self.now, id, &data);
                self.drain(None);
            }
            Op::Activity { conn } => {
                let id = self.id(conn);
                self.hub.handle_activity(self.now, id);
                assert!(self.hub.poll_output().is_none(), "output for activity");
            }
            Op::Closed { conn } => {
                let id = self.id(conn);
                self.hub.handle_closed(id);
                if let Some(slot) = self.slot_of(id) {
                    slot.open = false;
                }
                let closed = self.drain(None);
                assert!(
                    closed.is_empty(),
                    "Close output for a closed connection: {closed:?}"
                );
            }
            Op::Close { conn, reason } => {
                let id = self.id(conn);
                let reason = CLOSE_REASONS[reason as usize % CLOSE_REASONS.len()];
                let was_open = self.slot_of(id).is_some_and(|s| s.open);
                self.hub.close(id, reason);
                let closed = self.drain(None);
                let expect = if was_open {
                    vec![(id, reason)]
                } else {
                    Vec::new()
                };
                assert_eq!(closed, expect);
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(millis as u64);
            }
            Op::Timeout => {
                self.hub.handle_timeout(self.now);
                let closed = self.drain(None);
                let expired = CloseReason::Server(self.hub.config().token_expired_code);
                for (id, reason) in closed {
                    assert!(
                        reason == CloseReason::HeartbeatTimeout || reason == expired,
                        "{id} closed by a timeout with {reason:?}"
                    );
                }
                let config = self.hub.config();
                let dead_after = config.ping_interval + config.ping_timeout;
                for s in self.hub.registry().sessions() {
                    let silent = self.now - s.last_seen;
                    assert!(
                        silent < dead_after,
                        "{} silent for {silent:?} and still open",
                        s.id
                    );
                }
                if let Some(next) = self.hub.poll_timeout() {
                    assert!(next > self.now, "a deadline left due");
                }
            }
            Op::CloseAll => {
                let open = self.hub.registry().len();
                self.hub.close_all(CloseReason::GoingAway);
                let closed = self.drain(None);
                assert_eq!(closed.len(), open);
                assert!(self.hub.registry().is_empty());
            }
            Op::Publish { room, data } => {
                let room = pick(ROOMS, room);
                let members = self
                    .hub
                    .registry()
                    .room_key(room)
                    .map_or(0, |k| self.hub.registry().room(k).unwrap().members.len());
                assert_eq!(self.hub.publish(room, &raw(data)), members);
                self.drain(None);
            }
            Op::PublishBinary { room, len } => {
                let room = pick(ROOMS, room);
                let data: Vec<u8> = (0..len).rev().collect();
                let members = self
                    .hub
                    .registry()
                    .room_key(room)
                    .map_or(0, |k| self.hub.registry().room(k).unwrap().members.len());
                assert_eq!(self.hub.publish_binary(room, &data), members);
                self.drain(None);
            }
            Op::SendToUser { user, data } => {
                let user = pick(USERS, user);
                let conns = self.hub.registry().user_connections(user);
                assert_eq!(self.hub.send_to_user(user, &raw(data)), conns);
                self.drain(None);
            }
            Op::ServerBroadcast { data } => {
                let hubs = self
                    .hub
                    .registry()
                    .sessions()
                    .filter(|s| s.kind == Kind::Hub)
                    .count();
                assert_eq!(self.hub.broadcast(&raw(data)), hubs);
                self.drain(None);
            }
            Op::Disconnect { user, code, text } => {
                let user = pick(USERS, user);
                let conns = self.hub.registry().user_connections(user);
                let text = text.then_some("bye");
                assert_eq!(self.hub.disconnect_user(user, code, text), conns);
                let closed = self.drain(None);
                assert_eq!(closed.len(), conns, "one Close per connection of {user}");
                for (id, reason) in closed {
                    assert_eq!(reason, CloseReason::Server(code), "{id}");
                }
                assert_eq!(self.hub.registry().user_connections(user), 0);
            }
            Op::Shrink => {
                self.hub.shrink_to_fit();
                assert!(
                    self.hub.poll_output().is_none(),
                    "output from shrink_to_fit"
                );
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut h = Harness {
        hub: Hub::new(config(), start),
        slots: [Slot::default(); SLOTS],
        now: start,
    };
    for op in ops.iter().take(1000) {
        h.run(op);
        h.check();
    }
    // Close everything, both ways the driver can.
    for index in 0..SLOTS {
        if !h.slots[index].open {
            continue;
        }
        let id = ConnId {
            index: index as u32,
            generation: h.slots[index].generation,
        };
        if index % 2 == 0 {
            h.hub.close(id, CloseReason::GoingAway);
            assert_eq!(h.drain(None), vec![(id, CloseReason::GoingAway)]);
        } else {
            h.hub.handle_closed(id);
            h.slots[index].open = false;
            assert!(h.drain(None).is_empty());
        }
        h.check();
    }
    let registry = h.hub.registry();
    assert_eq!(registry.len(), 0);
    assert_eq!(registry.room_count(), 0);
    assert_eq!(registry.user_count(), 0);
    // Every heartbeat entry left is stale: it goes without a word.
    h.hub.handle_timeout(h.now + Duration::from_secs(86_400));
    assert!(h.hub.poll_output().is_none(), "output after everyone left");
    assert_eq!(h.hub.poll_timeout(), None, "heartbeat entries left behind");
});
