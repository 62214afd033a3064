//! Cluster mode as the hub sees it (DESIGN.md §6): values only.
//!
//! With [`super::HubConfig::cluster`] on, what crosses nodes leaves the hub
//! as outputs — a [`Channel`] to publish on, subscribe to or leave; a
//! user's absolute connection count in a room ([`PresenceChange`]) or on
//! this node ([`super::Output::UserConns`]) — and comes back through
//! `Hub::handle_cluster_*` calls: what a channel delivered (an
//! [`Envelope`]), a room's cluster-wide [`Listing`], a granted or refused
//! connection. The driver owns the Redis links; the hub never learns that
//! Redis exists.
//!
//! Envelopes are what travels on a channel: one ASCII header line, then the
//! body. The header names the node that sent it (so the sender's own
//! connection can be skipped there) and the body of `F` is the WebSocket
//! frame itself, encoded once by the sender and delivered by every node
//! without decoding it again:
//!
//! ```text
//! F <node> <conn|->\n<frame>                       a frame for the channel's members
//! J <node> <conn|-> <members> <user len>\n<user><info>   user_joined (from a script)
//! L <node> <members> <user len>\n<user>                  user_left (from a script)
//! D <code>\n<text>                                       close every connection of the user
//! M <node> <conn>\n                                       where a join took effect (from a script)
//! H <node> <conn|-> <seq> <epoch>\n<message>            a room message with history (from a script)
//! ```
//!
//! `H` carries a room message's JSON without its `seq`: Redis numbers it
//! (one script keeps the room's stream, its epoch and seq, and publishes),
//! and every node puts the `seq` in once (see
//! [`crate::protocol::sequenced_message`]).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::ConnId;

/// Where a cluster message goes: one channel per room, per user, and one
/// for everyone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(Arc<str>),
    User(Arc<str>),
    All,
}

/// A request whose answer the hub waits for (it then replies to `conn`).
#[derive(Debug)]
pub struct Pending {
    pub conn: ConnId,
    pub kind: PendingKind,
    /// The client's `ref`, echoed in the reply.
    pub reference: Option<Box<RawValue>>,
}

/// What the hub answers once the cluster has.
#[derive(Debug, Clone)]
pub enum PendingKind {
    /// `joined` (with `details` if asked): of the join numbered `join`
    /// (whose marker it waits for), or `None` for a room already joined.
    Joined {
        room: Arc<str>,
        details: bool,
        join: Option<u64>,
    },
    /// `left`.
    Left { room: Arc<str> },
    /// `presence`.
    Presence { room: Arc<str>, details: bool },
    /// A `private` to a user with no connection here: `user_offline` if no
    /// node holds one either.
    Private,
    /// `history`: the room's latest messages.
    History { room: Arc<str> },
}

/// A join of a room with history asks Redis for the room's place at the
/// join's marker and, with `since`, for what the client missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryAsk {
    /// The client's place, from its `join`.
    pub since: Option<(String, u64)>,
}

/// This node's connections of `user` in `room` are now `connections`
/// (absolute, so re-asserting it is harmless). The cluster announces
/// `user_joined` / `user_left` when the user's count over all nodes
/// leaves or reaches 0.
#[derive(Debug)]
pub struct PresenceChange {
    pub room: Arc<str>,
    pub user: Arc<str>,
    pub connections: u32,
    /// When the user's first connection here joined, Unix milliseconds.
    pub since: u64,
    /// The user's info (kept with their presence in the room).
    pub info: Option<Box<RawValue>>,
    /// The connection that changed it (skipped by its own `user_joined`).
    pub conn: ConnId,
    /// A join: its number, so its marker is told from another join's.
    pub join: Option<u64>,
    /// Answer with the room's listing afterwards.
    pub reply: Option<Pending>,
    /// A join of a room with history: its place (and what was missed)
    /// comes with the listing.
    pub history: Option<HistoryAsk>,
}

/// A room's users over the whole cluster.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Distinct users in the room.
    pub members: usize,
    /// Some of them (up to the member list limit).
    pub users: Vec<ListedUser>,
    /// Asked for with a join (or query) of a room with history.
    pub history: Option<ListedHistory>,
}

/// A room's history as a join found it in Redis, in the same step as its
/// marker: every message after `seq` comes live after the marker.
#[derive(Debug, Clone, Default)]
pub struct ListedHistory {
    pub epoch: String,
    pub seq: u64,
    /// With `since`: whether every missed message is in `replay`.
    pub recovered: Option<bool>,
    /// The missed messages (JSON without `seq`), oldest first: seqs
    /// `seq - replay.len() + 1 ..= seq`.
    pub replay: Vec<Bytes>,
}

/// Messages `after + 1 ..= upto` of a room's history `epoch` that this
/// node missed (its subscriber link lost them), to be filled from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub room: Arc<str>,
    pub epoch: Arc<str>,
    pub after: u64,
    pub upto: u64,
}

/// The latest messages of a room's history (a `history` request).
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// `None` when the room has no history in Redis.
    pub epoch: Option<String>,
    pub seq: u64,
    pub truncated: bool,
    /// Oldest first, each with its seq.
    pub messages: Vec<(u64, Bytes)>,
}

/// One user in a [`Listing`].
#[derive(Debug, Clone)]
pub struct ListedUser {
    pub user: String,
    pub connections: u32,
    pub since: u64,
    pub info: Option<Box<RawValue>>,
}

/// A parsed envelope (see the module docs).
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    Frame {
        origin: &'a str,
        except: Option<ConnId>,
        frame: Bytes,
    },
    Joined {
        origin: &'a str,
        except: Option<ConnId>,
        /// The number of the join it marks.
        join: Option<u64>,
        members: usize,
        user: &'a str,
        info: Option<&'a str>,
    },
    Left {
        members: usize,
        user: &'a str,
    },
    Disconnect {
        code: u16,
        text: &'a str,
    },
    /// Where connection `conn` of node `origin` joined, in the channel's
    /// order (a `Joined` marks it too).
    Marker {
        origin: &'a str,
        conn: ConnId,
        join: Option<u64>,
    },
    /// A room message with history, numbered by Redis.
    History {
        origin: &'a str,
        except: Option<ConnId>,
        seq: u64,
        epoch: &'a str,
        /// The message's JSON without `seq`.
        body: Bytes,
    },
}

/// The longest envelope header line read.
const MAX_HEADER: usize = 512;

impl<'a> Envelope<'a> {
    /// Parse `payload`; `None` if it is not an envelope (another program
    /// publishing on our channels): ignored, never trusted.
    pub fn parse(payload: &'a Bytes) -> Option<Envelope<'a>> {
        let end = payload.iter().take(MAX_HEADER).position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&payload[..end]).ok()?;
        let body = &payload[end + 1..];
        let mut words = header.split(' ');
        let kind = words.next()?;
        let envelope = match kind {
            "F" => Envelope::Frame {
                origin: words.next()?,
                except: conn(words.next()?)?,
                frame: is_data_frame(body).then(|| payload.slice(end + 1..))?,
            },
            "J" => {
                let origin = words.next()?;
                let (except, join) = conn_join(words.next()?)?;
                let members = words.next()?.parse().ok()?;
                let len: usize = words.next()?.parse().ok()?;
                let user = std::str::from_utf8(body.get(..len)?).ok()?;
                let info = std::str::from_utf8(&body[len..]).ok()?;
                Envelope::Joined {
                    origin,
                    except,
                    join,
                    members,
                    user,
                    info: (!info.is_empty()).then_some(info),
                }
            }
            "L" => {
                let _origin = words.next()?;
                let members = words.next()?.parse().ok()?;
                let len: usize = words.next()?.parse().ok()?;
                if body.len() != len {
                    return None;
                }
                Envelope::Left {
                    members,
                    user: std::str::from_utf8(body).ok()?,
                }
            }
            "M" if body.is_empty() => {
                let origin = words.next()?;
                let (conn, join) = conn_join(words.next()?)?;
                Envelope::Marker {
                    origin,
                    conn: conn?,
                    join,
                }
            }
            "H" => Envelope::History {
                origin: words.next()?,
                except: conn(words.next()?)?,
                seq: words.next()?.parse().ok().filter(|&s| s > 0)?,
                epoch: words.next()?,
                body: payload.slice(end + 1..),
            },
            "D" => Envelope::Disconnect {
                code: words.next()?.parse().ok()?,
                text: std::str::from_utf8(body).ok()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(envelope)
    }
}

/// Whether `bytes` is exactly one complete, unmasked, final text or binary
/// frame — all a node ever publishes, so nothing else published on our
/// channels (a close, a fragment, a bad length) reaches a client.
fn is_data_frame(bytes: &[u8]) -> bool {
    let [b0, b1, rest @ ..] = bytes else {
        return false;
    };
    if !matches!(b0, 0x81 | 0x82) || b1 & 0x80 != 0 {
        return false;
    }
    let (len, rest) = match b1 & 0x7f {
        126 => match rest {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as u64, rest),
            _ => return false,
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((n, rest)) => (u64::from_be_bytes(*n), rest),
            None => return false,
        },
        n => (n as u64, rest),
    };
    len == rest.len() as u64
}

/// `"index.generation"`, `"index.generation.join"` or `-`.
fn conn_join(word: &str) -> Option<(Option<ConnId>, Option<u64>)> {
    match word.rsplit_once('.') {
        Some((id, join)) if id.contains('.') => Some((conn(id)?, Some(join.parse().ok()?))),
        _ => Some((conn(word)?, None)),
    }
}

/// A connection and, for a join, its number, as scripts publish it.
pub fn conn_word(id: ConnId, join: Option<u64>) -> String {
    match join {
        Some(n) => format!("{id}.{n}"),
        None => id.to_string(),
    }
}

/// A connection as envelopes name it (`"index.generation"`); `None` for
/// `-` or anything else.
pub fn parse_conn(word: &str) -> Option<ConnId> {
    conn(word).flatten()
}

/// `"index.generation"` or `-`.
fn conn(word: &str) -> Option<Option<ConnId>> {
    if word == "-" {
        return Some(None);
    }
    let (index, generation) = word.split_once('.')?;
    Some(Some(ConnId {
        index: index.parse().ok()?,
        generation: generation.parse().ok()?,
    }))
}

/// An `F` envelope: header and `frame`, in one buffer.
pub fn frame_envelope(origin: &str, except: Option<ConnId>, frame: &[u8]) -> Bytes {
    use std::io::Write;
    let mut out = Vec::with_capacity(origin.len() + 24 + frame.len());
    let _ = match except {
        Some(id) => writeln!(out, "F {origin} {id}"),
        None => writeln!(out, "F {origin} -"),
    };
    out.extend_from_slice(frame);
    Bytes::from(out)
}

/// A `D` envelope.
pub fn disconnect_envelope(code: u16, text: &str) -> Bytes {
    Bytes::from(format!("D {code}\n{text}"))
}

/// A node name fit for envelope headers and key names: 1 to 64 bytes of
/// letters, digits and `.` `_` `:` `-`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_strangers_are_ignored() {
        let id = ConnId {
            index: 7,
            generation: 42,
        };
        let e = frame_envelope("a:1-00ff", Some(id), b"\x81\x02hi");
        assert_eq!(
            Envelope::parse(&e),
            Some(Envelope::Frame {
                origin: "a:1-00ff",
                except: Some(id),
                frame: Bytes::from_static(b"\x81\x02hi"),
            })
        );
        let j = Bytes::from_static(b"J n1 3.4 2 5\nalice{\"a\":1}");
        assert_eq!(
            Envelope::parse(&j),
            Some(Envelope::Joined {
                origin: "n1",
                except: Some(ConnId {
                    index: 3,
                    generation: 4
                }),
                join: None,
                members: 2,
                user: "alice",
                info: Some("{\"a\":1}"),
            })
        );
        let l = Bytes::from_static(b"L n1 0 3\nbob");
        assert_eq!(
            Envelope::parse(&l),
            Some(Envelope::Left {
                members: 0,
                user: "bob"
            })
        );
        let d = disconnect_envelope(4000, "bye");
        assert_eq!(
            Envelope::parse(&d),
            Some(Envelope::Disconnect {
                code: 4000,
                text: "bye"
            })
        );
        for junk in [
            &b""[..],
            b"hello",
            b"F n1\nx",
            b"F n1 1.2 extra\nx",
            b"J n1 - 1 9\nbob",
            b"L n1 1 2\nbob",
            b"X a b\n",
            b"F n1 1\n",
            b"F n1 -\n\x88\x00",
            b"F n1 -\n\x81\x05hi",
            b"F n1 -\n\x01\x02hi",
            b"F n1 -\n\x81\x82hi",
        ] {
            assert_eq!(
                Envelope::parse(&Bytes::copy_from_slice(junk)),
                None,
                "{junk:?}"
            );
        }
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("host-1.example:8080"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a b"));
        assert!(!valid_node_name("a\nb"));
        assert!(!valid_node_name(&"x".repeat(65)));
    }
}
