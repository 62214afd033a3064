//! The pure core: rooms, users, presence, routing, limits and heartbeats.
//!
//! The hub performs no I/O and reads no clock. Inputs are `handle_*` calls that
//! take `now`; outputs are drained with [`Hub::poll_output`], and
//! [`Hub::poll_timeout`] says when [`Hub::handle_timeout`] is next due. Drain
//! every output before the next `handle_*` call: targets name rooms and users by
//! key, resolved against the registry as it is then.

pub mod cluster;
mod config;
mod grants;
mod handler;
mod heartbeat;
pub mod history;
mod limits;
mod messages;
mod registry;
mod views;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;

use self::cluster::{
    Channel, Envelope, Gap, HistoryAsk, HistoryPage, Pending, PendingKind, PresenceChange,
};
pub use self::config::HubConfig;
pub use self::grants::{Grants, RoomPatterns};
pub use self::handler::{Context, Handler};
pub use self::heartbeat::Heartbeats;
use self::history::History;
pub use self::limits::{RateBucket, RateDecision};
use self::messages as m;
pub use self::registry::{
    ConnId, Joined, Kind, Presence, Registry, Room, RoomKey, Session, User, UserKey,
};
pub use self::views::{ConnectionView, MemberView, RoomView, UserView};
use crate::protocol::{self, ClientMsg, CloseReason, ErrorCode, Refusal, SharedFrame, Since};

/// Generated ids of connections without a user id start with this; the
/// handshake refuses it in a claimed id, so no one can impersonate them.
pub const ANONYMOUS_PREFIX: &str = "anon-";

/// Who receives a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One connection.
    Conn(ConnId),
    /// Every member of a room, except one connection (the sender) if given.
    Room {
        room: RoomKey,
        except: Option<ConnId>,
    },
    /// Every connection of a user (all devices).
    User(UserKey),
    /// Every hub connection, except one if given.
    All { except: Option<ConnId> },
    /// Every member of a room who is not this user (cluster presence).
    RoomExceptUser { room: RoomKey, user: UserKey },
}

/// What the hub asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Queue this pre-encoded frame to every connection of the target.
    Send { to: Target, frame: SharedFrame },
    /// Send a protocol Ping to this connection.
    Ping(ConnId),
    /// Close this connection with this reason (and, if given, this text
    /// instead of the reason's own). The hub has already removed it.
    Close {
        conn: ConnId,
        reason: CloseReason,
        text: Option<Arc<str>>,
    },
    /// Cluster mode: publish this envelope on `channel`. If it cannot go
    /// out, hand it to [`Hub::handle_cluster_message`] instead, so this
    /// node's own members still get it. With `reply`, answer with
    /// [`Hub::handle_cluster_answer`] (how many nodes received it).
    Publish {
        channel: Channel,
        envelope: Bytes,
        reply: Option<Pending>,
    },
    /// Cluster mode: the first local member of this channel arrived.
    Subscribe(Channel),
    /// Cluster mode: the last local member of this channel left.
    Unsubscribe(Channel),
    /// Cluster mode: a user's connections in a room on this node changed;
    /// with `reply`, answer with the room's listing.
    Presence(PresenceChange),
    /// Cluster mode: answer `reply` with the room's listing.
    Query { room: Arc<str>, reply: Pending },
    /// Cluster mode: a message of a room with history (its JSON without
    /// `seq`), for Redis to number, keep and publish. Like any publish: if
    /// its shard is unreachable, this node's members get it (without a
    /// `seq`: hand [`Hub::handle_cluster_message`] an `F` envelope of it);
    /// over the link's budget it is dropped and counted.
    HistoryPublish {
        room: Arc<str>,
        except: Option<ConnId>,
        body: Bytes,
    },
    /// Cluster mode: this node missed some of a room's messages (its
    /// subscriber link lost them): answer with [`Hub::handle_history_fill`].
    HistoryFill(Gap),
    /// Cluster mode: a `history` request; answer `reply` with
    /// [`ClusterAnswer::History`].
    HistoryRead {
        room: Arc<str>,
        since: Option<(String, u64)>,
        limit: usize,
        reply: Pending,
    },
    /// Cluster mode: this node now holds `connections` of `user`. With
    /// `claim`, that new connection waits for the cluster's per-user cap:
    /// answer with [`Hub::handle_cluster_claim`].
    UserConns {
        user: Arc<str>,
        connections: u32,
        claim: Option<ConnId>,
    },
}

/// Cluster mode: a connection waiting for the cluster's per-user count.
#[derive(Debug, Default)]
struct Claim {
    /// The room of its URL, joined once granted.
    room: Option<Arc<str>>,
    /// What the client sent meanwhile (clients may send before their
    /// `welcome`), handled in order once granted.
    early: Vec<Early>,
}

/// A message that arrived before the `welcome`.
#[derive(Debug)]
enum Early {
    Text(Box<str>),
    Binary(Box<[u8]>),
}

/// Cluster mode: a connection whose join has not taken effect in Redis
/// yet. Until its marker comes back on the room's channel it gets nothing
/// of the room (what arrives was published before it joined); between the
/// marker and the `joined` reply, the room's frames wait here, so `joined`
/// comes first and nothing after the join is missed.
#[derive(Debug)]
struct Joining {
    conn: ConnId,
    /// This join's number (a join, leave and join again are two joins).
    join: u64,
    /// When the join began: past [`JOIN_TIMEOUT`] without its marker, it
    /// is taken as in effect (a marker lost with a broken link) and the
    /// room's frames wait for the `joined` like after a marker.
    since: Instant,
    marker: bool,
    /// The cluster's answer (the room's listing), once it came.
    answer: Option<ClusterAnswer>,
    /// Joins of the same room asked while this one is pending (`details`,
    /// `ref`): answered with the same listing, right after it.
    more: Vec<(bool, Option<Box<RawValue>>)>,
    /// With the seq of room messages with history (0 for other frames):
    /// the history the join found in Redis may hold some of them already.
    /// `None`: a message with history that is not for this connection (its
    /// own, sent without `echo`), kept as a seq so its stream is whole.
    held: Vec<(u64, Option<SharedFrame>)>,
    /// The join asked to recover (`since`).
    recovering: bool,
    /// What a `joined` from this node's view needs, if the connection
    /// leaves before the cluster answered.
    details: bool,
    reference: Option<Box<RawValue>>,
}

/// See [`Joining::since`].
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Frames one joining connection may have waiting; one more closes it as
/// a slow consumer (it never happens unless Redis stalls mid-join).
const MAX_JOINING_HELD: usize = 4096;

/// Messages a connection may send before its claim is answered; one more
/// closes it (4102).
const MAX_EARLY: usize = 32;

/// A channel as named by a message that arrived on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelName<'a> {
    Room(&'a str),
    User(&'a str),
    All,
}

/// What the cluster answered to a [`Pending`] request.
#[derive(Debug)]
pub enum ClusterAnswer {
    /// The room's users over the cluster.
    Listing(cluster::Listing),
    /// How many nodes a publish reached.
    Delivered(usize),
    /// The cluster could not be asked: answer from this node's view.
    Unavailable,
    /// A room's latest messages.
    History(HistoryPage),
}

/// Cluster mode: where this node is in a room's history, from the `H`
/// envelopes it delivered (and joins' answers): a seq that jumps means
/// messages it missed (its subscriber link lost them).
#[derive(Debug)]
struct Tracked {
    epoch: Arc<str>,
    seq: u64,
    fill: Option<Fill>,
}

/// Cluster mode: a room filling a gap from Redis. Everything that arrives
/// on its channel meanwhile waits, and is handled after the missed
/// messages — one per round of the driver (see [`Hub::handle_next_waiting`]),
/// so each one's outputs are carried out before the next changes who is in
/// the room.
#[derive(Debug)]
struct Fill {
    /// The gap asked for (the room's epoch is [`Tracked::epoch`]).
    after: u64,
    upto: u64,
    /// The gap was filled: what waits is being handled.
    answered: bool,
    waiting: VecDeque<Bytes>,
    waiting_bytes: usize,
}

/// How a connection asks to join the hub.
#[derive(Debug, Clone, Default)]
pub struct OpenRequest<'a> {
    /// The verified or claimed user id; `None` gives an anonymous id.
    pub user: Option<&'a str>,
    /// A room to join at once (from `/ws/<room>`).
    pub room: Option<&'a str>,
    /// Hub client or `/echo`.
    pub kind: Kind,
    /// What the token allows (`None`: everything, auth off).
    pub grants: Option<Arc<Grants>>,
    /// When the token expires: the connection is closed then.
    pub expires_at: Option<Instant>,
    /// The connection's `info` (a JSON object, already checked against
    /// `max_info_bytes`), from the token or the URL.
    pub info: Option<Box<RawValue>>,
}

/// Counters kept by the hub.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubCounters {
    /// Data messages received from clients.
    pub messages_in: u64,
    /// Bytes of data messages received from clients.
    pub bytes_in: u64,
    /// Connections opened since start.
    pub connections_opened: u64,
    /// Connections closed by heartbeat timeout.
    pub heartbeat_timeouts: u64,
    /// Client messages refused with an `error` reply.
    pub errors_sent: u64,
    /// Messages refused for the rate limit.
    pub rate_limited: u64,
    /// Connections closed for flooding (4102).
    pub rate_limit_closes: u64,
    /// Joins with `since` answered `recovered: true`.
    pub recovered: u64,
    /// Joins with `since` answered `recovered: false`.
    pub not_recovered: u64,
    /// Cluster mode: gaps in a room's messages filled from Redis.
    pub history_fills: u64,
    /// Cluster mode: connections closed (4103) for messages this node
    /// missed and could not fill in.
    pub history_gap_closes: u64,
}

/// The hub: see the module docs.
pub struct Hub {
    config: HubConfig,
    registry: Registry,
    heartbeats: Heartbeats,
    /// Token expiry deadlines (connections with a token only).
    expiries: Heartbeats,
    handler: Option<Box<dyn Handler>>,
    outputs: VecDeque<Output>,
    counters: HubCounters,
    next_anonymous: u64,
    started: Instant,
    /// An instant and the Unix time (ms) it was, given by the driver: the
    /// hub reads no clock, yet answers `connected_at` and `since` in Unix time.
    unix: (Instant, u64),
    /// This run's node id, in every `welcome`.
    node_id: Arc<str>,
    /// Cluster mode: connections waiting for the cluster's per-user cap,
    /// with the room of their URL.
    claims: HashMap<ConnId, Claim>,
    /// Cluster mode: joins not in effect yet, by room.
    joining: HashMap<RoomKey, Vec<Joining>>,
    next_join: u64,
    /// Rooms' recent messages (`history_size` > 0; one node).
    history: History,
    /// Cluster mode: rooms with history and a member here.
    tracked: HashMap<Arc<str>, Tracked>,
    /// Cluster mode: rooms whose gap was filled and whose waiting messages
    /// are being handled.
    draining: VecDeque<Arc<str>>,
    /// Cluster mode: every Redis shard is reachable (the driver says).
    cluster_up: bool,
    /// The latest time the driver gave (inputs without `now`, such as
    /// [`Hub::publish`], are stamped with it).
    now: Instant,
}

/// What a `joined` says of the room's history.
#[derive(Debug, Clone, Copy, Default)]
struct Mark<'a> {
    epoch: Option<&'a str>,
    seq: Option<u64>,
    recovered: Option<bool>,
}

impl Hub {
    /// A hub with no connections. `now` marks its start (for uptime).
    pub fn new(config: HubConfig, now: Instant) -> Hub {
        Hub {
            config,
            registry: Registry::default(),
            heartbeats: Heartbeats::default(),
            expiries: Heartbeats::default(),
            handler: None,
            outputs: VecDeque::new(),
            counters: HubCounters::default(),
            next_anonymous: 0,
            started: now,
            unix: (now, 0),
            node_id: Arc::from(""),
            claims: HashMap::new(),
            joining: HashMap::new(),
            next_join: 0,
            history: History::new(Arc::from("0")),
            tracked: HashMap::new(),
            draining: VecDeque::new(),
            cluster_up: true,
            now,
        }
    }

    /// Tell the hub the time: the driver does after every wake-up. Server
    /// calls without a `now` of their own ([`Hub::publish`]) use it.
    pub fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Give this start's part of every history epoch (the driver gives a
    /// random one, so a restart is a new epoch). Call before any input.
    pub fn set_history_epoch(&mut self, base: &str) {
        self.history.set_base(Arc::from(base));
    }

    /// Cluster mode: whether every Redis shard is reachable (the driver
    /// tells the hub when it changes).
    pub fn set_cluster_up(&mut self, up: bool) {
        self.cluster_up = up;
    }

    /// Whether a server-side publish to `room` would miss its history: in
    /// cluster mode with Redis unreachable it would reach this node's
    /// members only, unnumbered (the server API answers 503 instead).
    pub fn history_unavailable(&self, room: &str) -> bool {
        self.config.cluster && !self.cluster_up && History::keeps(&self.config, room)
    }

    /// Rooms with a history, bytes counted for them, and messages held.
    pub fn history_usage(&self) -> (usize, usize, usize) {
        let (rooms, bytes) = self.history.usage();
        (rooms, bytes, self.history.messages())
    }

    /// Name this run's node (its id is in every `welcome`).
    pub fn set_node_id(&mut self, id: Arc<str>) {
        self.node_id = id;
    }

    /// This run's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Tell the hub that `now` is `unix_ms` milliseconds after the Unix
    /// epoch (the driver does at start; until then times count from 0).
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.unix = (now, unix_ms);
    }

    /// The Unix time of `at`, in milliseconds.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let (anchor, ms) = self.unix;
        match at.checked_duration_since(anchor) {
            Some(after) => ms.saturating_add(after.as_millis() as u64),
            None => ms.saturating_sub(anchor.duration_since(at).as_millis() as u64),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn counters(&self) -> HubCounters {
        self.counters
    }

    /// Time since the hub started.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Hub::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let joins = self
            .joining
            .values()
            .flatten()
            .filter(|j| !j.marker)
            .map(|j| j.since + JOIN_TIMEOUT)
            .min();
        let history = match self.config.history_size {
            0 => None,
            _ => self.history.next_deadline(self.config.history_ttl),
        };
        [
            self.heartbeats.next_deadline(),
            self.expiries.next_deadline(),
            joins,
            history,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Give back memory that tables grew for a crowd that has left.
    pub fn shrink_to_fit(&mut self) {
        let registry = &self.registry;
        self.heartbeats.retain(|id| registry.session(id).is_some());
        self.expiries.retain(|id| registry.session(id).is_some());
        self.registry.shrink_to_fit();
        self.outputs.shrink_to_fit();
        self.history.shrink_to_fit();
    }

    /// Install the host program's [`Handler`] (embedding).
    pub fn set_handler(&mut self, handler: Box<dyn Handler>) {
        self.handler = Some(handler);
    }

    /// Send any JSON object to one connection (handlers' replies).
    pub fn reply(&mut self, conn: ConnId, message: &serde_json::Value) {
        if self.registry.session(conn).is_some() {
            self.send(Target::Conn(conn), protocol::json_frame(message));
        }
    }

    /// Call `f` for every connection `target` names, as the registry is now.
    /// Guaranteed O(recipients) (O(connections) for `All`).
    pub fn for_each_recipient(&self, target: Target, mut f: impl FnMut(ConnId)) {
        match target {
            Target::Conn(id) => f(id),
            Target::Room { room: key, except } => {
                if let Some(room) = self.registry.room(key) {
                    match self.joining.get(&key) {
                        None => {
                            for &id in &room.members {
                                if Some(id) != except {
                                    f(id)
                                }
                            }
                        }
                        Some(joining) => {
                            for &id in &room.members {
                                if Some(id) != except && !joining.iter().any(|j| j.conn == id) {
                                    f(id)
                                }
                            }
                        }
                    }
                }
            }
            Target::User(user) => {
                if let Some(user) = self.registry.user(user) {
                    for &id in &user.conns {
                        // Nothing reaches a connection before its welcome.
                        if self.claims.is_empty() || !self.claims.contains_key(&id) {
                            f(id)
                        }
                    }
                }
            }
            Target::RoomExceptUser { room: key, user } => {
                if let Some(room) = self.registry.room(key) {
                    let joining = self.joining.get(&key);
                    for &id in &room.members {
                        if self.registry.session(id).and_then(|s| s.user) != Some(user)
                            && joining.is_none_or(|j| !j.iter().any(|j| j.conn == id))
                        {
                            f(id)
                        }
                    }
                }
            }
            Target::All { except } => {
                for s in self.registry.sessions() {
                    if s.kind == Kind::Hub
                        && Some(s.id) != except
                        && (self.claims.is_empty() || !self.claims.contains_key(&s.id))
                    {
                        f(s.id)
                    }
                }
            }
        }
    }

    /// A connection finished its handshake. `id.index` must not be open.
    /// Refused (and not counted) when the user is at the per-user cap.
    pub fn handle_open(
        &mut self,
        now: Instant,
        id: ConnId,
        req: OpenRequest<'_>,
    ) -> Result<(), CloseReason> {
        let connected_at = self.unix_ms(now);
        if req.kind == Kind::Echo {
            self.registry
                .insert(id, Kind::Echo, None, None, now, connected_at);
            self.heartbeats
                .schedule(now + self.config.ping_interval, id);
            self.counters.connections_opened += 1;
            return Ok(());
        }
        let anonymous;
        let user = match req.user {
            Some(user) => user,
            None => {
                self.next_anonymous += 1;
                anonymous = if self.config.cluster {
                    // Unique over the cluster: the node id's random part.
                    let node = self.node_id.rsplit('-').next().unwrap_or("");
                    format!("{ANONYMOUS_PREFIX}{node}-{}", self.next_anonymous)
                } else {
                    format!("{ANONYMOUS_PREFIX}{}", self.next_anonymous)
                };
                &anonymous
            }
        };
        if self.registry.user_connections(user) >= self.config.max_connections_per_user {
            return Err(CloseReason::UserConnectionLimit);
        }
        let info = match self.handler.as_mut() {
            Some(handler) => {
                let info = handler.connection_info(user, req.info);
                // The host's hook is trusted code, but what it returns goes
                // to other clients: held to the same rules as a token's.
                info.and_then(|raw| {
                    protocol::check_info(raw.get(), self.config.max_info_bytes)
                        .map_err(|e| {
                            log::warn!("{id}: Handler::connection_info gave {e:?} info; dropped")
                        })
                        .ok()
                })
            }
            None => req.info,
        };
        self.registry
            .insert(id, Kind::Hub, Some(user), info, now, connected_at);
        self.heartbeats
            .schedule(now + self.config.ping_interval, id);
        if let Some(at) = req.expires_at {
            self.expiries.schedule(at, id);
        }
        if let Some(session) = self.registry.session_mut(id) {
            session.grants = req.grants.clone();
        }
        self.counters.connections_opened += 1;
        if self.config.cluster {
            // The welcome waits for the cluster's per-user count.
            let user_key = self.registry.session(id).and_then(|s| s.user);
            let u = self
                .registry
                .user(user_key.expect("hub session"))
                .expect("its user");
            let (name, connections) = (u.name.clone(), u.conns.len() as u32);
            if connections == 1 {
                self.outputs
                    .push_back(Output::Subscribe(Channel::User(name.clone())));
            }
            self.claims.insert(
                id,
                Claim {
                    room: req.room.map(Arc::from),
                    early: Vec::new(),
                },
            );
            self.outputs.push_back(Output::UserConns {
                user: name,
                connections,
                claim: Some(id),
            });
            return Ok(());
        }
        self.welcome(now, id, req.room);
        Ok(())
    }

    /// Cluster mode: keep what a connection sends before its claim is
    /// answered (bounded). O(1) and nothing at all in single-node mode.
    #[inline]
    fn hold_early(&mut self, id: ConnId, early: impl FnOnce() -> Early) -> bool {
        if self.claims.is_empty() {
            return false;
        }
        let Some(claim) = self.claims.get_mut(&id) else {
            return false;
        };
        if claim.early.len() < MAX_EARLY {
            claim.early.push(early());
        } else {
            // Nothing may reach a connection before its welcome: close.
            log::info!("{id} closed: over {MAX_EARLY} messages before its welcome");
            self.counters.rate_limit_closes += 1;
            self.close(id, CloseReason::RateLimited);
        }
        true
    }

    /// Cluster mode: the cluster counted connection `id` against its
    /// user's cap (`granted`), or refused it (closed with 1008).
    pub fn handle_cluster_claim(&mut self, now: Instant, id: ConnId, granted: bool) {
        let Some(claim) = self.claims.remove(&id) else {
            return;
        };
        if granted {
            self.welcome(now, id, claim.room.as_deref());
            for early in claim.early {
                match early {
                    Early::Text(text) => self.handle_text(now, id, &text),
                    Early::Binary(data) => self.handle_binary(now, id, &data),
                }
            }
        } else {
            log::info!("{id} refused: the user has the most connections the cluster allows");
            self.close(id, CloseReason::UserConnectionLimit);
        }
    }

    /// Send `welcome` to a hub connection just opened, then join the room
    /// of its URL.
    fn welcome(&mut self, now: Instant, id: ConnId, room: Option<&str>) {
        let Some(session) = self.registry.session(id) else {
            return;
        };
        let connected_at = session.connected_at;
        let user = &self
            .registry
            .user(session.user.expect("hub session"))
            .expect("its user")
            .name;
        let welcome = m::Welcome {
            kind: "welcome",
            connection_id: &id.to_string(),
            user,
            connected_at,
            node: &self.node_id,
            info: self.registry.info(id),
            heartbeat: m::HeartbeatInfo {
                ping_interval: self.config.ping_interval.as_secs_f64(),
                ping_timeout: self.config.ping_timeout.as_secs_f64(),
            },
            limits: m::Limits {
                max_message_size: self.config.max_message_size,
                max_rooms: self.config.max_rooms_per_connection,
                max_room_name_len: self.config.max_room_name_len,
            },
        };
        let frame = protocol::json_frame(&welcome);
        self.send(Target::Conn(id), frame);
        if let Some(room) = room {
            match self.join(now, id, room, false, None, None) {
                Ok(key) => self.registry.set_home_room(id, key),
                Err(e) => self.refuse(id, e),
            }
        }
    }

    /// A text message arrived from `id`.
    pub fn handle_text(&mut self, now: Instant, id: ConnId, text: &str) {
        self.advance(now);
        if self.hold_early(id, || Early::Text(text.into())) {
            return;
        }
        let Some(session) = self.registry.session_mut(id) else {
            return;
        };
        session.last_seen = now;
        let kind = session.kind;
        self.counters.messages_in += 1;
        self.counters.bytes_in += text.len() as u64;
        if kind == Kind::Echo {
            self.send(Target::Conn(id), protocol::text_frame(text.as_bytes()));
            return;
        }
        if !self.within_rate(now, id) {
            return;
        }
        log::trace!("{id} text {} bytes", text.len());
        let result = match protocol::decode(text) {
            Ok((msg, reference)) => self.dispatch(now, id, msg, reference),
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = result {
            if refusal.code == ErrorCode::UnknownType && self.offer_to_handler(id, text) {
                return;
            }
            self.refuse(id, refusal);
        }
    }

    /// A binary message arrived from `id`: echoed on `/echo`, otherwise sent
    /// to the members of the room named in the connection's URL.
    pub fn handle_binary(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        self.advance(now);
        if self.hold_early(id, || Early::Binary(data.into())) {
            return;
        }
        let Some(session) = self.registry.session_mut(id) else {
            return;
        };
        session.last_seen = now;
        self.counters.messages_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let (kind, home) = (session.kind, session.home_room());
        if kind == Kind::Hub && !self.within_rate(now, id) {
            return;
        }
        match (kind, home) {
            (Kind::Echo, _) => self.send(Target::Conn(id), protocol::binary_frame(data)),
            (Kind::Hub, Some(room)) => self.send_to_room(room, Some(id), protocol::binary_frame(data)),
            (Kind::Hub, None) => self.refuse(
                id,
                Refusal::new(
                    ErrorCode::NotInRoom,
                    "binary messages go to the room in the URL (/ws/<room>), which this connection is not in",
                ),
            ),
        }
    }

    /// Any other frame (Ping, Pong) arrived from `id`: it is alive.
    pub fn handle_activity(&mut self, now: Instant, id: ConnId) {
        if let Some(s) = self.registry.session_mut(id) {
            s.last_seen = now;
        }
    }

    /// The connection is gone (closed by the peer, reset, or closed by the
    /// driver). Idempotent: a connection the hub already closed is ignored.
    pub fn handle_closed(&mut self, id: ConnId) {
        self.remove(id);
    }

    /// Heartbeats: ping the silent, close the dead (4100). O(due entries).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.config.history_size > 0 {
            let registry = &self.registry;
            self.history.expire(now, self.config.history_ttl, |room| {
                registry.room_key(room).is_some()
            });
        }
        if !self.joining.is_empty() {
            let late: Vec<(RoomKey, ConnId, u64)> = self
                .joining
                .iter()
                .flat_map(|(&k, list)| list.iter().map(move |j| (k, j)))
                .filter(|(_, j)| {
                    !j.marker && now.saturating_duration_since(j.since) >= JOIN_TIMEOUT
                })
                .map(|(k, j)| (k, j.conn, j.join))
                .collect();
            for (key, conn, join) in late {
                log::debug!("{conn}: the marker of its join never came; in effect now");
                self.join_in_effect(key, conn, Some(join));
            }
        }
        // Expired tokens first: a connection closed now needs no ping.
        while let Some(id) = self.expiries.pop_due(now) {
            if self.registry.session(id).is_some() {
                log::info!("{id} token expired");
                let code = self.config.token_expired_code;
                self.close_with(
                    id,
                    CloseReason::Server(code),
                    Some(Arc::from("token expired")),
                );
            }
        }
        let interval = self.config.ping_interval;
        let dead_after = interval + self.config.ping_timeout;
        while let Some(id) = self.heartbeats.pop_due(now) {
            let Some(session) = self.registry.session(id) else {
                continue;
            };
            let silent = now.saturating_duration_since(session.last_seen);
            if silent >= dead_after {
                let code = CloseReason::HeartbeatTimeout.code();
                log::info!(conn:% = id, code = code; "{id} heartbeat timeout after {silent:?} of silence");
                self.counters.heartbeat_timeouts += 1;
                self.close(id, CloseReason::HeartbeatTimeout);
            } else if silent >= interval {
                self.outputs.push_back(Output::Ping(id));
                self.heartbeats.schedule(session.last_seen + dead_after, id);
            } else {
                self.heartbeats.schedule(session.last_seen + interval, id);
            }
        }
    }

    /// Close every connection with `reason` (shutdown). Emits one `Close` each.
    pub fn close_all(&mut self, reason: CloseReason) {
        let ids: Vec<ConnId> = self.registry.sessions().map(|s| s.id).collect();
        for id in ids {
            self.close(id, reason);
        }
    }

    /// Close one connection with `reason`: removed now, `Output::Close` emitted.
    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        self.close_with(id, reason, None);
    }

    fn close_with(&mut self, id: ConnId, reason: CloseReason, text: Option<Arc<str>>) {
        if self.remove(id) {
            self.outputs.push_back(Output::Close {
                conn: id,
                reason,
                text,
            });
        }
    }

    /// Server-side publish (HTTP API, embedding): `{"type":"message","room",
    /// "from":null,"data"}` to every member. Returns the number of recipients.
    /// In cluster mode it goes to the room's members on every node, and
    /// the number returned counts this node's.
    /// A room that keeps history records it even with no member here.
    pub fn publish(&mut self, room: &str, data: &RawValue) -> usize {
        let key = self.registry.room_key(room);
        let keeps = History::keeps(&self.config, room);
        if key.is_none() && !self.config.cluster && !keeps {
            return 0;
        }
        if self.config.cluster && keeps {
            let body = protocol::json_body(&m::RoomMessage {
                kind: "message",
                room,
                from: None,
                seq: None,
                data,
            });
            self.outputs.push_back(Output::HistoryPublish {
                room: Arc::from(room),
                except: None,
                body,
            });
            return key
                .and_then(|k| self.registry.room(k))
                .map_or(0, |r| r.members.len());
        }
        let message = |seq| {
            m::RoomMessage {
                kind: "message",
                room,
                from: None,
                seq,
                data,
            }
            .frame()
        };
        let frame = match keeps {
            true => {
                let registry = &self.registry;
                let members = |r: &str| registry.room_key(r).is_some();
                self.history
                    .append(&self.config, self.now, room, members, |seq| {
                        message(Some(seq))
                    })
            }
            false => message(None),
        };
        self.room_frame(room, key, frame)
    }

    /// A server-side frame to a room: sent here, or published in cluster
    /// mode. Returns this node's recipients.
    fn room_frame(&mut self, room: &str, key: Option<RoomKey>, frame: SharedFrame) -> usize {
        let local = key
            .and_then(|k| self.registry.room(k))
            .map_or(0, |r| r.members.len());
        match key {
            Some(key) if !self.config.cluster => self.send(
                Target::Room {
                    room: key,
                    except: None,
                },
                frame,
            ),
            None if !self.config.cluster => {}
            _ => {
                let name = match key {
                    Some(k) => self.registry.room(k).expect("indexed room").name.clone(),
                    None => Arc::from(room),
                };
                self.publish_envelope(Channel::Room(name), None, &frame, None);
            }
        }
        local
    }

    /// Server-side publish of a binary frame to every member of `room`.
    pub fn publish_binary(&mut self, room: &str, data: &[u8]) -> usize {
        let key = self.registry.room_key(room);
        self.room_frame(room, key, protocol::binary_frame(data))
    }

    /// Server-side private message: `{"type":"private","from":null,"data"}` to
    /// every connection of `user`. Returns the number of connections (in
    /// cluster mode: on this node; it goes to every node's).
    pub fn send_to_user(&mut self, user: &str, data: &RawValue) -> usize {
        let key = self.registry.user_key(user);
        if key.is_none() && !self.config.cluster {
            return 0;
        }
        let frame = protocol::json_frame(&m::Private {
            kind: "private",
            from: None,
            data,
        });
        let local = key
            .and_then(|k| self.registry.user(k))
            .map_or(0, |u| u.conns.len());
        match key {
            Some(key) if !self.config.cluster => self.send(Target::User(key), frame),
            _ => self.publish_envelope(Channel::User(Arc::from(user)), None, &frame, None),
        }
        local
    }

    /// Server-side broadcast to every hub connection (`"from":null`).
    /// Returns the number here (cluster mode: it reaches every node's).
    pub fn broadcast(&mut self, data: &RawValue) -> usize {
        let frame = protocol::json_frame(&m::Broadcast {
            kind: "broadcast",
            from: None,
            data,
        });
        if self.config.cluster {
            self.publish_envelope(Channel::All, None, &frame, None);
        } else {
            self.send(Target::All { except: None }, frame);
        }
        self.registry
            .sessions()
            .filter(|s| s.kind == Kind::Hub)
            .count()
    }

    /// Close every connection of `user` with `code` (4000 by default) and
    /// `text`. Returns how many were closed (cluster mode: how many here;
    /// every node closes its own).
    pub fn disconnect_user(&mut self, user: &str, code: u16, text: Option<&str>) -> usize {
        if self.config.cluster {
            let envelope = cluster::disconnect_envelope(code, text.unwrap_or(""));
            self.outputs.push_back(Output::Publish {
                channel: Channel::User(Arc::from(user)),
                envelope,
                reply: None,
            });
            return self.registry.user_connections(user);
        }
        self.disconnect_local(user, code, text)
    }

    /// Close this node's connections of `user`.
    fn disconnect_local(&mut self, user: &str, code: u16, text: Option<&str>) -> usize {
        let Some(key) = self.registry.user_key(user) else {
            return 0;
        };
        let conns = self
            .registry
            .user(key)
            .map(|u| u.conns.clone())
            .unwrap_or_default();
        let text: Option<Arc<str>> = text.map(Arc::from);
        for &id in &conns {
            self.close_with(id, CloseReason::Server(code), text.clone());
        }
        conns.len()
    }

    /// Spend a rate-limit token for a message from `id`. Over the limit the
    /// message is refused with `rate_limited` (never dropped silently); a
    /// client that keeps flooding is closed with 4102.
    fn within_rate(&mut self, now: Instant, id: ConnId) -> bool {
        let c = &self.config;
        let (rate, burst, close_after) = (
            c.rate_limit as f32,
            c.rate_burst as f32,
            c.rate_limit_close_after,
        );
        let Some(session) = self.registry.session_mut(id) else {
            return false;
        };
        match session.rate.take(now, rate, burst, close_after) {
            RateDecision::Allow => true,
            RateDecision::Refuse => {
                self.counters.rate_limited += 1;
                let message = format!("over {} messages per second", self.config.rate_limit);
                self.refuse(id, Refusal::new(ErrorCode::RateLimited, message));
                false
            }
            RateDecision::Close => {
                log::info!("{id} closed: kept sending over the rate limit");
                self.counters.rate_limit_closes += 1;
                self.close(id, CloseReason::RateLimited);
                false
            }
        }
    }

    fn send(&mut self, to: Target, frame: SharedFrame) {
        self.outputs.push_back(Output::Send { to, frame });
    }

    fn refuse(&mut self, id: ConnId, refusal: Refusal<'_>) {
        self.counters.errors_sent += 1;
        log::debug!(
            "{id} refused: {} ({})",
            refusal.code.code(),
            refusal.message
        );
        let frame = protocol::json_frame(&m::Error {
            kind: "error",
            code: refusal.code.code(),
            message: &refusal.message,
            reference: refusal.reference,
        });
        self.send(Target::Conn(id), frame);
    }

    fn dispatch<'a>(
        &mut self,
        now: Instant,
        id: ConnId,
        msg: ClientMsg<'a>,
        reference: Option<&'a RawValue>,
    ) -> Result<(), Refusal<'a>> {
        let with_ref = |mut r: Refusal<'a>| {
            r.reference = reference;
            r
        };
        match msg {
            ClientMsg::Join {
                room,
                details,
                since,
            } => self
                .join(now, id, &room, details, since.as_ref(), reference)
                .map(drop)
                .map_err(with_ref),
            ClientMsg::Leave { room } => {
                let key = self.member_room(id, &room).map_err(with_ref)?;
                self.leave(id, key, reference);
                Ok(())
            }
            ClientMsg::Message { room, data, echo } => {
                let key = self.member_room(id, &room).map_err(with_ref)?;
                let except = if echo { None } else { Some(id) };
                if self.config.cluster && History::keeps(&self.config, &room) {
                    let body = protocol::json_body(&m::RoomMessage {
                        kind: "message",
                        room: &room,
                        from: Some(self.user_name_of(id)),
                        seq: None,
                        data,
                    });
                    let room = self.registry.room(key).expect("member's room").name.clone();
                    self.outputs
                        .push_back(Output::HistoryPublish { room, except, body });
                    return Ok(());
                }
                let frame = if History::keeps(&self.config, &room) {
                    let from = self.user_arc(id);
                    let registry = &self.registry;
                    let members = |r: &str| registry.room_key(r).is_some();
                    self.history
                        .append(&self.config, now, &room, members, |seq| {
                            m::RoomMessage {
                                kind: "message",
                                room: &room,
                                from: Some(&from),
                                seq: Some(seq),
                                data,
                            }
                            .frame()
                        })
                } else {
                    m::RoomMessage {
                        kind: "message",
                        room: &room,
                        from: Some(self.user_name_of(id)),
                        seq: None,
                        data,
                    }
                    .frame()
                };
                self.send_to_room(key, except, frame);
                Ok(())
            }
            ClientMsg::Private { to, data } => {
                let user = self.registry.user_key(&to);
                if user.is_none() && !self.config.cluster {
                    return Err(with_ref(Refusal::new(
                        ErrorCode::UserOffline,
                        "no connection for that user",
                    )));
                }
                let from = self.user_name_of(id);
                let frame = protocol::json_frame(&m::Private {
                    kind: "private",
                    from: Some(from),
                    data,
                });
                match user {
                    Some(user) if !self.config.cluster => self.send(Target::User(user), frame),
                    _ => {
                        // No connection here: another node may hold one;
                        // if none does, the sender hears `user_offline`.
                        let reply = user.is_none().then(|| Pending {
                            conn: id,
                            kind: PendingKind::Private,
                            reference: reference.map(ToOwned::to_owned),
                        });
                        let name = match user {
                            Some(u) => self.registry.user(u).expect("indexed user").name.clone(),
                            None => Arc::from(&*to),
                        };
                        self.publish_envelope(Channel::User(name), None, &frame, reply);
                    }
                }
                Ok(())
            }
            ClientMsg::Broadcast { data, echo } => {
                let allowed = self
                    .registry
                    .session(id)
                    .and_then(|s| s.grants.as_ref())
                    .is_none_or(|g| g.may_broadcast());
                if !allowed {
                    return Err(with_ref(Refusal::new(
                        ErrorCode::Forbidden,
                        "this token may not broadcast",
                    )));
                }
                let from = self.user_name_of(id);
                let frame = protocol::json_frame(&m::Broadcast {
                    kind: "broadcast",
                    from: Some(from),
                    data,
                });
                let except = if echo { None } else { Some(id) };
                if self.config.cluster {
                    self.publish_envelope(Channel::All, except, &frame, None);
                } else {
                    self.send(Target::All { except }, frame);
                }
                Ok(())
            }
            ClientMsg::Typing { room } => {
                let key = self.member_room(id, &room).map_err(with_ref)?;
                let user = self.user_name_of(id);
                let frame = protocol::json_frame(&m::Typing {
                    kind: "typing",
                    room: &room,
                    user,
                });
                self.send_to_room(key, Some(id), frame);
                Ok(())
            }
            ClientMsg::Presence { room, details } => {
                self.check_room_name(&room).map_err(with_ref)?;
                self.check_may_join(id, &room).map_err(with_ref)?;
                if self.config.cluster {
                    let reply = Pending {
                        conn: id,
                        kind: PendingKind::Presence {
                            room: Arc::from(&*room),
                            details,
                        },
                        reference: reference.map(ToOwned::to_owned),
                    };
                    self.outputs.push_back(Output::Query {
                        room: Arc::from(&*room),
                        reply,
                    });
                    return Ok(());
                }
                let frame =
                    self.member_list("presence", &room, details, reference, Mark::default());
                self.send(Target::Conn(id), frame);
                Ok(())
            }
            ClientMsg::History { room, since, limit } => {
                self.check_room_name(&room).map_err(with_ref)?;
                self.check_may_join(id, &room).map_err(with_ref)?;
                if !History::keeps(&self.config, &room) {
                    return Err(with_ref(Refusal::new(
                        ErrorCode::NoHistory,
                        "this room keeps no history",
                    )));
                }
                if self.config.cluster {
                    let size = self.config.history_size;
                    self.outputs.push_back(Output::HistoryRead {
                        room: Arc::from(&*room),
                        since: since.map(|s| (s.epoch.to_string(), s.seq)),
                        limit: limit.map_or(size, |l| l.min(size as u64) as usize),
                        reply: Pending {
                            conn: id,
                            kind: PendingKind::History {
                                room: Arc::from(&*room),
                            },
                            reference: reference.map(ToOwned::to_owned),
                        },
                    });
                    return Ok(());
                }
                let mut w = protocol::FrameWriter::text(256);
                let kind = Some("history");
                self.history_json(w.payload(), kind, &room, since.as_ref(), limit, reference);
                self.send(Target::Conn(id), w.finish());
                Ok(())
            }
            ClientMsg::Ping => {
                let frame = protocol::json_frame(&m::Pong {
                    kind: "pong",
                    reference,
                });
                self.send(Target::Conn(id), frame);
                Ok(())
            }
            ClientMsg::Pong => Ok(()),
        }
    }

    fn user_arc(&self, id: ConnId) -> Arc<str> {
        let s = self.registry.session(id).expect("an open session");
        let user = s.user.expect("hub sessions have a user");
        self.registry
            .user(user)
            .expect("session's user")
            .name
            .clone()
    }

    fn user_name_of(&self, id: ConnId) -> &str {
        let s = self
            .registry
            .session(id)
            .expect("dispatch on an open session");
        let user = s.user.expect("hub sessions have a user");
        &self.registry.user(user).expect("session's user").name
    }

    fn check_room_name(&self, room: &str) -> Result<(), Refusal<'static>> {
        if room.is_empty() {
            return Err(Refusal::new(ErrorCode::BadMessage, "room name is empty"));
        }
        if room.len() > self.config.max_room_name_len {
            return Err(Refusal::new(
                ErrorCode::RoomNameTooLong,
                format!(
                    "room name longer than {} bytes",
                    self.config.max_room_name_len
                ),
            ));
        }
        Ok(())
    }

    /// Token grants, then the host's handler, may refuse a room (`forbidden`).
    fn check_may_join(&mut self, id: ConnId, room: &str) -> Result<(), Refusal<'static>> {
        let forbidden = || Refusal::new(ErrorCode::Forbidden, "not allowed to join that room");
        let session = self.registry.session(id).expect("open session");
        if session.grants.as_ref().is_some_and(|g| !g.may_join(room)) {
            return Err(forbidden());
        }
        if let Some(handler) = self.handler.as_mut() {
            let user = session
                .user
                .and_then(|u| self.registry.user(u))
                .map_or("", |u| &*u.name);
            if !handler.authorize_join(user, room) {
                return Err(forbidden());
            }
        }
        Ok(())
    }

    /// Offer a message of unknown `type` to the host's handler.
    fn offer_to_handler(&mut self, id: ConnId, text: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct TypeOnly<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let Some(mut handler) = self.handler.take() else {
            return false;
        };
        let handled = match (
            serde_json::from_str::<TypeOnly>(text),
            serde_json::from_str::<&RawValue>(text),
        ) {
            (Ok(t), Ok(raw)) => {
                let user = self.user_name_of(id).to_string();
                let mut ctx = Context {
                    hub: self,
                    conn: id,
                    user,
                };
                handler.on_message(&mut ctx, &t.kind, raw)
            }
            _ => false,
        };
        self.handler = Some(handler);
        handled
    }

    /// The key of `room` if `id` is a member, else `not_in_room`.
    fn member_room(&self, id: ConnId, room: &str) -> Result<RoomKey, Refusal<'static>> {
        self.check_room_name(room)?;
        let not_in = || Refusal::new(ErrorCode::NotInRoom, "not a member of that room");
        let key = self.registry.room_key(room).ok_or_else(not_in)?;
        let session = self.registry.session(id).expect("open session");
        if session.rooms.iter().any(|&(r, _)| r == key) {
            Ok(key)
        } else {
            Err(not_in())
        }
    }

    /// Join `room` and answer `joined` (with `details` if asked); returns
    /// the room's key.
    fn join<'a>(
        &mut self,
        now: Instant,
        id: ConnId,
        room: &str,
        details: bool,
        since: Option<&Since<'_>>,
        reference: Option<&'a RawValue>,
    ) -> Result<RoomKey, Refusal<'a>> {
        self.check_room_name(room)?;
        self.check_may_join(id, room)?;
        let now_ms = self.unix_ms(now);
        let max_rooms = self.config.max_rooms_per_connection;
        let key = match self.registry.join(id, room, max_rooms, now_ms) {
            Joined::TooManyRooms => {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "a connection may be in at most {} rooms",
                        self.config.max_rooms_per_connection
                    ),
                ))
            }
            Joined::Added { key, .. } if self.config.cluster => {
                log::debug!("{id} joined {room}");
                let r = self.registry.room(key).expect("joined room");
                let name = r.name.clone();
                if r.members.len() == 1 {
                    self.outputs
                        .push_back(Output::Subscribe(Channel::Room(name.clone())));
                }
                self.next_join += 1;
                let join = self.next_join;
                let reply = Pending {
                    conn: id,
                    kind: PendingKind::Joined {
                        room: name.clone(),
                        details,
                        join: Some(join),
                    },
                    reference: reference.map(ToOwned::to_owned),
                };
                self.joining.entry(key).or_default().push(Joining {
                    conn: id,
                    join,
                    since: now,
                    marker: false,
                    answer: None,
                    more: Vec::new(),
                    held: Vec::new(),
                    recovering: since.is_some(),
                    details,
                    reference: reference.map(ToOwned::to_owned),
                });
                let user = self.user_arc(id);
                let history = History::keeps(&self.config, &name).then(|| HistoryAsk {
                    since: since.map(|s| (s.epoch.to_string(), s.seq)),
                });
                self.presence_change(id, user, key, name, Some(reply));
                if let Some(Output::Presence(change)) = self.outputs.back_mut() {
                    change.join = Some(join);
                    change.history = history;
                }
                return Ok(key);
            }
            Joined::Already(key) if self.config.cluster => {
                // Its join still pending: answered with it, right after.
                if let Some(j) = self
                    .joining
                    .get_mut(&key)
                    .and_then(|list| list.iter_mut().find(|j| j.conn == id))
                {
                    if j.more.len() < MAX_EARLY {
                        j.more.push((details, reference.map(ToOwned::to_owned)));
                    } else {
                        log::info!("{id} closed: over {MAX_EARLY} joins of a room still joining");
                        self.counters.rate_limit_closes += 1;
                        self.close(id, CloseReason::RateLimited);
                    }
                    return Ok(key);
                }
                let name = self.registry.room(key).expect("joined room").name.clone();
                let reply = Pending {
                    conn: id,
                    kind: PendingKind::Joined {
                        room: name.clone(),
                        details,
                        join: None,
                    },
                    reference: reference.map(ToOwned::to_owned),
                };
                self.outputs.push_back(Output::Query { room: name, reply });
                return Ok(key);
            }
            Joined::Added {
                key,
                first_of_user: true,
            } => {
                log::debug!("{id} joined {room}");
                self.announce("user_joined", key, id);
                key
            }
            Joined::Added {
                key,
                first_of_user: false,
            }
            | Joined::Already(key) => key,
        };
        if !History::keeps(&self.config, room) {
            let mark = Mark {
                recovered: since.map(|_| false),
                ..Mark::default()
            };
            if since.is_some() {
                self.counters.not_recovered += 1;
            }
            let frame = self.member_list("joined", room, details, reference, mark);
            self.send(Target::Conn(id), frame);
            return Ok(key);
        }
        // The missed messages follow the `joined` at once, before anything
        // sent to the room later: the loop is single-threaded and outputs
        // are carried out in order.
        let registry = &self.registry;
        let members = |r: &str| registry.room_key(r).is_some();
        let position = self.history.open(&self.config, now, room, members);
        let (max, max_bytes) = (self.config.max_recover, self.config.max_replay_bytes);
        // `Some(None)`: asked, and not recoverable (nothing is replayed).
        let replay: Option<Option<Vec<SharedFrame>>> = since.map(|since| {
            self.history
                .missed(room, since, max, max_bytes)
                .map(|frames| frames.cloned().collect())
        });
        let recovered = replay.as_ref().map(Option::is_some);
        match recovered {
            Some(true) => self.counters.recovered += 1,
            Some(false) => self.counters.not_recovered += 1,
            None => {}
        }
        let mark = Mark {
            epoch: Some(&position.epoch),
            seq: Some(position.seq),
            recovered,
        };
        let frame = self.member_list("joined", room, details, reference, mark);
        self.send(Target::Conn(id), frame);
        for frame in replay.flatten().into_iter().flatten() {
            self.send(Target::Conn(id), frame);
        }
        Ok(key)
    }

    /// `GET /api/history/<room>`'s body: as the `history` message's reply,
    /// without `type`; `None` when the room keeps no history.
    pub fn history_body(
        &self,
        room: &str,
        since: Option<&Since<'_>>,
        limit: Option<u64>,
    ) -> Option<Vec<u8>> {
        if !History::keeps(&self.config, room) {
            return None;
        }
        let mut out = Vec::with_capacity(256);
        self.history_json(&mut out, None, room, since, limit, None);
        Some(out)
    }

    /// A `history` reply (or the API's body) for `room` into `out`: the
    /// head, then the stored frames' payloads as the `messages` array.
    fn history_json(
        &self,
        out: &mut Vec<u8>,
        kind: Option<&'static str>,
        room: &str,
        since: Option<&Since<'_>>,
        limit: Option<u64>,
        reference: Option<&RawValue>,
    ) {
        let size = self.config.history_size;
        let limit = limit.map_or(size, |l| l.min(size as u64) as usize);
        let position = self.history.position(room);
        let (frames, truncated) =
            self.history
                .latest(room, since, limit, self.config.max_replay_bytes);
        let head = m::HistoryHead {
            kind,
            room,
            epoch: position.as_ref().map(|p| &*p.epoch),
            seq: position.as_ref().map_or(0, |p| p.seq),
            truncated,
            reference,
        };
        let payloads = frames.iter().map(|f| protocol::frame_payload(f));
        write_history(out, &head, payloads);
    }

    fn leave(&mut self, id: ConnId, key: RoomKey, reference: Option<&RawValue>) {
        self.end_join_by_leaving(id, key);
        let name = self.registry.room(key).expect("member's room").name.clone();
        let last = self.registry.leave(id, key).expect("checked membership");
        if self.config.cluster {
            let reply = Pending {
                conn: id,
                kind: PendingKind::Left { room: name.clone() },
                reference: reference.map(ToOwned::to_owned),
            };
            let gone = self.registry.room_key(&name).is_none();
            let user = self.user_arc(id);
            self.presence_change(id, user, key, name.clone(), Some(reply));
            if gone {
                self.tracked.remove(&name);
                self.outputs
                    .push_back(Output::Unsubscribe(Channel::Room(name)));
            }
            return;
        }
        if last {
            self.announce("user_left", key, id);
        }
        if self.config.history_size > 0 && self.registry.room_key(&name).is_none() {
            self.history.room_emptied(&name, self.now);
        }
        let members = self.registry.room(key).map_or(0, |r| r.user_count());
        let frame = protocol::json_frame(&m::Left {
            kind: "left",
            room: &name,
            members,
            reference,
        });
        self.send(Target::Conn(id), frame);
    }

    /// Tell the other members of `key` that `id`'s user arrived or went,
    /// unless the room is bigger than the announce limit (or now empty).
    fn announce(&mut self, kind: &'static str, key: RoomKey, id: ConnId) {
        let Some(room) = self.registry.room(key) else {
            return;
        };
        let members = room.user_count();
        // Judge by the room's size with the user in it, so a user announced
        // on arrival is announced on departure too (and vice versa).
        let with_user = if kind == "user_left" {
            members + 1
        } else {
            members
        };
        if with_user > self.config.presence_announce_limit {
            return;
        }
        let session = self.registry.session(id).expect("announced session");
        let user_key = session.user.expect("hub sessions have a user");
        let user = &*self.registry.user(user_key).expect("session's user").name;
        let info = match kind {
            "user_joined" => self.registry.user_info(user_key),
            _ => None,
        };
        let frame = protocol::json_frame(&m::PresenceEvent {
            kind,
            room: &room.name,
            user,
            members,
            info,
        });
        self.send(
            Target::Room {
                room: key,
                except: Some(id),
            },
            frame,
        );
    }

    /// A `joined` / `presence` reply: exact count, user list bounded, and
    /// with `details` each listed user's info, connections and arrival.
    fn member_list(
        &self,
        kind: &'static str,
        room: &str,
        details: bool,
        reference: Option<&RawValue>,
        mark: Mark<'_>,
    ) -> SharedFrame {
        let limit = self.config.member_list_limit;
        let (members, listed) = match self.registry.room_key(room) {
            Some(key) => {
                let r = self.registry.room(key).expect("indexed room");
                (r.user_count(), self.member_details(r, limit, details))
            }
            None => (0, Vec::new()),
        };
        protocol::json_frame(&m::MemberList {
            kind,
            room,
            members,
            truncated: members > listed.len(),
            users: listed.iter().map(|d| d.user).collect(),
            details: details.then_some(listed.as_slice()),
            epoch: mark.epoch,
            seq: mark.seq,
            recovered: mark.recovered,
            reference,
        })
    }

    /// Up to `limit` users of `room`, with their connections there and
    /// arrival, and (`with_info`) their info. O(listed users).
    fn member_details<'r>(
        &'r self,
        room: &'r Room,
        limit: usize,
        with_info: bool,
    ) -> Vec<m::MemberDetail<'r>> {
        room.presences()
            .take(limit)
            .map(|(u, presence)| m::MemberDetail {
                user: &self.registry.user(u).expect("counted user").name,
                connections: presence.connections(),
                since: presence.since(),
                info: with_info.then(|| self.registry.user_info(u)).flatten(),
            })
            .collect()
    }

    /// Remove `id` from every index, announcing `user_left` where it was the
    /// user's last connection. Returns whether it was open.
    fn remove(&mut self, id: ConnId) -> bool {
        if self.config.cluster {
            return self.remove_clustered(id);
        }
        let Some(session) = self.registry.session(id) else {
            return false;
        };
        let user = session
            .user
            .map(|u| self.registry.user(u).expect("session's user").name.clone());
        let limit = self.config.presence_announce_limit;
        // Rooms that keep history learn when they empty.
        let rooms: Vec<Arc<str>> = match self.config.history_size {
            0 => Vec::new(),
            _ => session
                .rooms
                .iter()
                .filter_map(|&(k, _)| self.registry.room(k).map(|r| r.name.clone()))
                .collect(),
        };
        let outputs = &mut self.outputs;
        let removed = self.registry.remove(id, |reg, key, last_of_user| {
            let Some(room) = reg.room(key) else { return };
            let members = room.user_count();
            let Some(user) = &user else { return };
            if last_of_user && members < limit {
                let frame = protocol::json_frame(&m::PresenceEvent {
                    kind: "user_left",
                    room: &room.name,
                    user,
                    members,
                    info: None,
                });
                outputs.push_back(Output::Send {
                    to: Target::Room {
                        room: key,
                        except: None,
                    },
                    frame,
                });
            }
        });
        for name in rooms {
            if self.registry.room_key(&name).is_none() {
                self.history.room_emptied(&name, self.now);
            }
        }
        if removed {
            log::debug!("{id} removed from the registry");
        }
        removed
    }

    /// Cluster mode's [`Hub::remove`]: the cluster learns the user's new
    /// counts in each room and on this node; channels left without a local
    /// member are unsubscribed.
    fn remove_clustered(&mut self, id: ConnId) -> bool {
        let Some(session) = self.registry.session(id) else {
            return false;
        };
        let Some(user_key) = session.user else {
            self.claims.remove(&id);
            return self.registry.remove(id, |_, _, _| {});
        };
        let user = self.registry.user(user_key).expect("its user").name.clone();
        let rooms: Vec<(RoomKey, Arc<str>)> = session
            .rooms
            .iter()
            .map(|&(k, _)| (k, self.registry.room(k).expect("its room").name.clone()))
            .collect();
        self.claims.remove(&id);
        self.forget_joining(id);
        self.registry.remove(id, |_, _, _| {});
        for (key, name) in rooms {
            let gone = self.registry.room_key(&name).is_none();
            self.presence_change(id, user.clone(), key, name.clone(), None);
            if gone {
                self.tracked.remove(&name);
                self.outputs
                    .push_back(Output::Unsubscribe(Channel::Room(name)));
            }
        }
        let connections = self.registry.user_connections(&user) as u32;
        self.outputs.push_back(Output::UserConns {
            user: user.clone(),
            connections,
            claim: None,
        });
        if connections == 0 {
            self.outputs
                .push_back(Output::Unsubscribe(Channel::User(user)));
        }
        log::debug!("{id} removed from the registry");
        true
    }

    /// Cluster mode: tell the cluster how many connections `user` now has
    /// in room `key` (`name`) on this node, after connection `id` came or
    /// went (the room, the user and `id` may be gone).
    fn presence_change(
        &mut self,
        id: ConnId,
        user: Arc<str>,
        key: RoomKey,
        name: Arc<str>,
        reply: Option<Pending>,
    ) {
        let (presence, info) = match self.registry.user_key(&user) {
            Some(u) => (
                self.registry
                    .room(key)
                    .filter(|r| r.name == name)
                    .and_then(|r| r.presence_of(u)),
                self.registry.user_info(u).map(ToOwned::to_owned),
            ),
            None => (None, None),
        };
        self.outputs.push_back(Output::Presence(PresenceChange {
            room: name,
            user,
            connections: presence.map_or(0, |p| p.connections()),
            since: presence.map_or(0, |p| p.since()),
            info: if presence.is_some() { info } else { None },
            conn: id,
            join: None,
            reply,
            history: None,
        }));
    }

    /// A frame for a room's members: sent here, or in cluster mode
    /// published on the room's channel (and delivered here when it comes
    /// back, in the channel's one order).
    fn send_to_room(&mut self, key: RoomKey, except: Option<ConnId>, frame: SharedFrame) {
        if self.config.cluster {
            let name = self.registry.room(key).expect("open room").name.clone();
            self.publish_envelope(Channel::Room(name), except, &frame, None);
        } else {
            self.send(Target::Room { room: key, except }, frame);
        }
    }

    /// Cluster mode: publish `frame` on `channel`, to be delivered to its
    /// members on every node except connection `except` (of this node).
    fn publish_envelope(
        &mut self,
        channel: Channel,
        except: Option<ConnId>,
        frame: &[u8],
        reply: Option<Pending>,
    ) {
        let envelope = cluster::frame_envelope(&self.node_id, except, frame);
        self.outputs.push_back(Output::Publish {
            channel,
            envelope,
            reply,
        });
    }

    /// Cluster mode: an envelope arrived on `channel` (or could not be
    /// published and comes back here): deliver it to this node's members.
    /// Anything that is not an envelope is ignored.
    pub fn handle_cluster_message(&mut self, channel: ChannelName<'_>, payload: &Bytes) {
        // A room filling a gap: all of its channel waits, in order.
        if let ChannelName::Room(room) = channel {
            let c = &self.config;
            let most = (c.max_replay_bytes.saturating_mul(8)).max(c.max_message_size * 4);
            if let Some(f) = self.tracked.get_mut(room).and_then(|t| t.fill.as_mut()) {
                if f.waiting.len() < MAX_JOINING_HELD && f.waiting_bytes + payload.len() <= most {
                    f.waiting_bytes += payload.len();
                    f.waiting.push_back(payload.clone());
                } else if let Some(key) = self.registry.room_key(room) {
                    self.history_lost(key, "too much arrived while filling a gap");
                }
                return;
            }
        }
        self.on_cluster_message(channel, payload);
    }

    /// Whether [`Hub::handle_next_waiting`] has anything to handle.
    pub fn has_waiting(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Cluster mode: handle the next message that waited on a room's
    /// channel while its gap was filled, if any (the driver calls this
    /// after carrying out every output, until it says there is none).
    pub fn handle_next_waiting(&mut self) -> bool {
        while let Some(room) = self.draining.front().cloned() {
            let Some(f) = self
                .tracked
                .get_mut(&room)
                .and_then(|t| t.fill.as_mut())
                .filter(|f| f.answered)
            else {
                self.draining.pop_front();
                continue;
            };
            let Some(payload) = f.waiting.pop_front() else {
                self.draining.pop_front();
                self.tracked.get_mut(&room).expect("looked up").fill = None;
                continue;
            };
            f.waiting_bytes -= payload.len();
            if f.waiting.is_empty() {
                self.draining.pop_front();
                self.tracked.get_mut(&room).expect("looked up").fill = None;
            }
            self.on_cluster_message(ChannelName::Room(&room), &payload);
            return true;
        }
        false
    }

    fn on_cluster_message(&mut self, channel: ChannelName<'_>, payload: &Bytes) {
        let Some(envelope) = Envelope::parse(payload) else {
            log::debug!("ignored a cluster message that is no envelope on {channel:?}");
            return;
        };
        let mine =
            |origin: &str, except: Option<ConnId>| except.filter(|_| origin == &*self.node_id);
        match (channel, envelope) {
            (
                ChannelName::Room(room),
                Envelope::Frame {
                    origin,
                    except,
                    frame,
                },
            ) => {
                if let Some(key) = self.registry.room_key(room) {
                    let except = mine(origin, except);
                    self.hold_for_joining(key, |c, _| Some(c) == except, &frame, 0);
                    self.send(Target::Room { room: key, except }, frame);
                }
            }
            (
                ChannelName::Room(room),
                Envelope::History {
                    origin,
                    except,
                    seq,
                    epoch,
                    body,
                },
            ) => {
                let Some(key) = self.registry.room_key(room) else {
                    return;
                };
                let except = mine(origin, except);
                match self.tracked.get_mut(room) {
                    Some(t) if *t.epoch == *epoch => {
                        if seq <= t.seq {
                            return; // delivered already (a gap was filled)
                        }
                        if seq > t.seq + 1 {
                            // This node missed some: fill the gap from the
                            // room's stream before anything else of it.
                            // (Met while handling what waited for an earlier
                            // gap: it goes first, the rest keep their order.)
                            let (after, upto) = (t.seq, seq - 1);
                            let epoch = t.epoch.clone();
                            let (mut waiting, bytes) = match t.fill.take() {
                                Some(f) => (f.waiting, f.waiting_bytes),
                                None => (VecDeque::new(), 0),
                            };
                            waiting.push_front(payload.clone());
                            t.fill = Some(Fill {
                                after,
                                upto,
                                answered: false,
                                waiting,
                                waiting_bytes: bytes + payload.len(),
                            });
                            self.counters.history_fills += 1;
                            let room = self.registry.room(key).expect("indexed").name.clone();
                            log::info!("room {room}: missed {} to {upto}; filling", after + 1);
                            self.outputs.push_back(Output::HistoryFill(Gap {
                                room,
                                epoch,
                                after,
                                upto,
                            }));
                            return;
                        }
                        t.seq = seq;
                    }
                    Some(t) => {
                        // Redis lost the room's history (a new epoch): the
                        // places its members hold are of the old one.
                        t.epoch = Arc::from(epoch);
                        t.seq = seq;
                        self.history_lost(key, "its history was lost in Redis (a new epoch)");
                        return;
                    }
                    None => {
                        let name = self.registry.room(key).expect("indexed").name.clone();
                        let epoch = Arc::from(epoch);
                        let fill = None;
                        self.tracked.insert(name, Tracked { epoch, seq, fill });
                    }
                }
                self.deliver_history(key, except, seq, &body);
            }
            (ChannelName::Room(room), Envelope::Marker { origin, conn, join }) => {
                if origin == &*self.node_id && join.is_some() {
                    if let Some(key) = self.registry.room_key(room) {
                        self.join_in_effect(key, conn, join);
                    }
                }
            }
            (ChannelName::User(user), Envelope::Frame { frame, .. }) => {
                if let Some(key) = self.registry.user_key(user) {
                    self.send(Target::User(key), frame);
                }
            }
            (
                ChannelName::All,
                Envelope::Frame {
                    origin,
                    except,
                    frame,
                },
            ) => {
                let except = mine(origin, except);
                self.send(Target::All { except }, frame);
            }
            (
                ChannelName::Room(room),
                Envelope::Joined {
                    origin,
                    except,
                    join,
                    members,
                    user,
                    info,
                },
            ) => {
                let Some(key) = self.registry.room_key(room) else {
                    return;
                };
                // Never to the user's own connections (a re-assertion
                // after Redis lost its state announces users again).
                let user_key = self.registry.user_key(user);
                let to = match user_key {
                    Some(u) => Target::RoomExceptUser { room: key, user: u },
                    None => Target::Room {
                        room: key,
                        except: None,
                    },
                };
                let info = info.and_then(|i| serde_json::from_str::<&RawValue>(i).ok());
                let frame = protocol::json_frame(&m::PresenceEvent {
                    kind: "user_joined",
                    room,
                    user,
                    members,
                    info,
                });
                self.hold_for_joining(key, |_, u| u.is_some() && u == user_key, &frame, 0);
                self.send(to, frame);
                // It marks where the joining connection came in, too.
                if let (Some(conn), Some(_), true) = (except, join, origin == &*self.node_id) {
                    self.join_in_effect(key, conn, join);
                }
            }
            (ChannelName::Room(room), Envelope::Left { members, user }) => {
                let Some(key) = self.registry.room_key(room) else {
                    return;
                };
                // A device of the user that joined here since is no audience.
                let to = match self.registry.user_key(user) {
                    Some(u) => Target::RoomExceptUser { room: key, user: u },
                    None => Target::Room {
                        room: key,
                        except: None,
                    },
                };
                let frame = protocol::json_frame(&m::PresenceEvent {
                    kind: "user_left",
                    room,
                    user,
                    members,
                    info: None,
                });
                let user_key = self.registry.user_key(user);
                self.hold_for_joining(key, |_, u| u.is_some() && u == user_key, &frame, 0);
                self.send(to, frame);
            }
            (ChannelName::User(user), Envelope::Disconnect { code, text }) => {
                let code = if code == 1000 || (3000..5000).contains(&code) {
                    code
                } else {
                    4000
                };
                self.disconnect_local(user, code, (!text.is_empty()).then_some(text));
            }
            (channel, envelope) => {
                log::debug!("ignored {envelope:?} on {channel:?}")
            }
        }
    }

    /// Cluster mode: a room message with history, numbered `seq`, to this
    /// node's members of room `key`.
    fn deliver_history(&mut self, key: RoomKey, except: Option<ConnId>, seq: u64, body: &[u8]) {
        let Some(frame) = protocol::sequenced_message(body, seq) else {
            log::debug!("ignored a room message that is not one");
            return;
        };
        self.hold_for_joining(key, |c, _| Some(c) == except, &frame, seq);
        self.send(Target::Room { room: key, except }, frame);
    }

    /// Cluster mode: the answer to [`Output::HistoryFill`]: the missed
    /// messages (each with the node and connection that sent it, as
    /// `"<node> <conn|->"`), oldest first, or `None` when they could not
    /// all be had. What waited on the room's channel is then handled by
    /// [`Hub::handle_next_waiting`]. An answer to another gap than the
    /// room's current one is ignored.
    pub fn handle_history_fill(&mut self, gap: &Gap, missed: Option<Vec<(Bytes, Bytes)>>) {
        let Some(t) = self.tracked.get_mut(&gap.room) else {
            return;
        };
        let current = t.fill.as_ref().is_some_and(|f| {
            !f.answered && f.after == gap.after && f.upto == gap.upto && t.epoch == gap.epoch
        });
        let Some(key) = self.registry.room_key(&gap.room).filter(|_| current) else {
            return;
        };
        let missed = missed.filter(|m| m.len() as u64 == gap.upto - gap.after);
        let Some(missed) = missed else {
            self.history_lost(key, "missed messages that Redis could not give");
            return;
        };
        for (i, (from, body)) in missed.iter().enumerate() {
            let except = std::str::from_utf8(from)
                .ok()
                .and_then(|w| w.split_once(' '))
                .filter(|(node, _)| *node == &*self.node_id)
                .and_then(|(_, conn)| cluster::parse_conn(conn));
            self.deliver_history(key, except, gap.after + 1 + i as u64, body);
        }
        let t = self.tracked.get_mut(&gap.room).expect("looked up");
        t.seq = gap.upto;
        if let Some(f) = t.fill.as_mut() {
            f.answered = true;
            if !self.draining.contains(&gap.room) {
                self.draining.push_back(gap.room.clone());
            }
        }
    }

    /// Cluster mode: this node's members of room `key` missed messages
    /// it cannot give them: each is closed with 4103, reconnects, and
    /// rejoins with `since` (recovered, or told it was not).
    fn history_lost(&mut self, key: RoomKey, why: &str) {
        let Some(room) = self.registry.room(key) else {
            return;
        };
        log::warn!("room {}: {why}; its members here rejoin", room.name);
        let name = room.name.clone();
        for id in room.members.clone() {
            self.counters.history_gap_closes += 1;
            self.close(id, CloseReason::HistoryGap);
        }
        if let Some(t) = self.tracked.get_mut(&name) {
            t.fill = None;
        }
    }

    /// Cluster mode: a frame for room `key` waits for each joining
    /// connection whose join is in effect but whose `joined` has not gone
    /// out (unless `skip(conn, its user)` says it is not for it).
    fn hold_for_joining(
        &mut self,
        key: RoomKey,
        skip: impl Fn(ConnId, Option<UserKey>) -> bool,
        frame: &SharedFrame,
        seq: u64,
    ) {
        let Some(list) = self.joining.get_mut(&key) else {
            return;
        };
        let mut overflow = Vec::new();
        for j in list.iter_mut() {
            if !j.marker || j.answer.is_some() {
                continue;
            }
            let user = self.registry.session(j.conn).and_then(|s| s.user);
            let frame = match skip(j.conn, user) {
                true if seq == 0 => continue,
                true => None,
                false => Some(frame.clone()),
            };
            if j.held.len() < MAX_JOINING_HELD {
                j.held.push((seq, frame));
            } else {
                overflow.push(j.conn);
            }
        }
        for id in overflow {
            log::info!("{id} closed: too many frames waiting for its joined");
            self.close(id, CloseReason::SlowConsumer);
        }
    }

    /// Cluster mode: connection `conn`'s join of room `key` took effect
    /// (its marker came back): it gets the room's frames from here on,
    /// after its `joined` (now, if that has come).
    fn join_in_effect(&mut self, key: RoomKey, conn: ConnId, join: Option<u64>) {
        let Some(j) = self.joining.get_mut(&key).and_then(|list| {
            list.iter_mut()
                .find(|j| j.conn == conn && Some(j.join) == join)
        }) else {
            return;
        };
        j.marker = true;
        if j.answer.is_some() {
            self.finish_join(key, conn);
        }
    }

    /// Cluster mode: end connection `conn`'s join of room `key`: its
    /// `joined`, then what waited for it.
    fn finish_join(&mut self, key: RoomKey, conn: ConnId) {
        let Some(mut j) = self.take_joining(key, conn) else {
            return;
        };
        // A room with history: what the client missed (as Redis held it at
        // the join's marker), then what came after. Anything of the
        // history before the marker is not sent twice.
        if let Some(ClusterAnswer::Listing(cluster::Listing {
            history: Some(h), ..
        })) = &mut j.answer
        {
            self.track(key, h);
            if !self.continues(key, h, &j.held) {
                if j.recovering {
                    // It asked for everything after its place: it rejoins
                    // and gets it, or is told it cannot.
                    log::info!("{conn}: its join of a room with history has a hole; it rejoins");
                    self.counters.history_gap_closes += 1;
                    self.close(conn, CloseReason::HistoryGap);
                    return;
                }
                // A first join asked for nothing before it: it starts at
                // what this node delivered last.
                let at = self.tracked_place(key).map_or(h.seq, |(_, seq)| seq);
                h.seq = h.seq.max(at);
            }
            match h.recovered {
                Some(true) => self.counters.recovered += 1,
                Some(false) => self.counters.not_recovered += 1,
                None if j.recovering => self.counters.not_recovered += 1,
                None => {}
            }
        }
        let found = match &j.answer {
            Some(ClusterAnswer::Listing(l)) => l.history.as_ref(),
            _ => None,
        };
        let mut replies = self.join_replies(key, &j, true).into_iter();
        if let Some(own) = replies.next() {
            self.send(Target::Conn(conn), own);
        }
        let mut upto = 0;
        if let Some(h) = found {
            upto = h.seq;
            if h.recovered == Some(true) {
                let first = h.seq + 1 - h.replay.len() as u64;
                for (i, body) in h.replay.iter().enumerate() {
                    if let Some(frame) = protocol::sequenced_message(body, first + i as u64) {
                        self.send(Target::Conn(conn), frame);
                    }
                }
            }
        }
        for frame in replies {
            self.send(Target::Conn(conn), frame);
        }
        for (seq, frame) in j.held {
            if let Some(frame) = frame.filter(|_| seq == 0 || seq > upto) {
                self.send(Target::Conn(conn), frame);
            }
        }
    }

    /// Cluster mode: whether a joining connection's stream has no hole: the
    /// frames held for it continue the history the join found (at `h.seq`)
    /// one by one, up to the last this node delivered. There is a hole when
    /// the join took effect by its timeout (frames delivered between its
    /// lost marker and then were not held), or when this node is behind
    /// the join's place (what it delivers next the client had replayed).
    fn continues(
        &self,
        key: RoomKey,
        h: &cluster::ListedHistory,
        held: &[(u64, Option<SharedFrame>)],
    ) -> bool {
        let Some(t) = self
            .registry
            .room(key)
            .and_then(|r| self.tracked.get(&r.name))
            .filter(|t| *t.epoch == *h.epoch)
        else {
            // Another epoch: its members are closed when it shows.
            return true;
        };
        let mut next = h.seq + 1;
        for &(seq, _) in held {
            if seq > h.seq {
                if seq != next {
                    return false;
                }
                next = seq + 1;
            }
        }
        t.seq + 1 == next
    }

    /// Cluster mode: where this node is in room `key`'s history (the last
    /// message it delivered), if it follows one.
    fn tracked_place(&self, key: RoomKey) -> Option<(&str, u64)> {
        let room = self.registry.room(key)?;
        self.tracked.get(&room.name).map(|t| (&*t.epoch, t.seq))
    }

    /// Cluster mode: a join's answer says where the room's history is; a
    /// room not tracked yet is tracked from there (what the node delivers
    /// after it continues it).
    fn track(&mut self, key: RoomKey, h: &cluster::ListedHistory) {
        let Some(room) = self.registry.room(key) else {
            return;
        };
        if !self.tracked.contains_key(&room.name) {
            self.tracked.insert(
                room.name.clone(),
                Tracked {
                    epoch: Arc::from(h.epoch.as_str()),
                    seq: h.seq,
                    fill: None,
                },
            );
        }
    }

    /// The `joined` replies of a pending join: its own, then those of the
    /// joins of the room asked meanwhile, all from the cluster's answer
    /// (this node's view without one).
    /// Without `replay` (the join ends by leaving) nothing is replayed, and
    /// the reply says so.
    fn join_replies(&self, key: RoomKey, j: &Joining, replay: bool) -> Vec<SharedFrame> {
        let Some(room) = self.registry.room(key) else {
            return Vec::new();
        };
        let unavailable = ClusterAnswer::Unavailable;
        let answer = j.answer.as_ref().unwrap_or(&unavailable);
        // The join's own reply says where the history is (the others are
        // joins of a room already joined).
        let found = match answer {
            ClusterAnswer::Listing(l) => l.history.as_ref(),
            _ => None,
        };
        let own = Mark {
            epoch: found.map(|h| h.epoch.as_str()),
            seq: found.map(|h| h.seq),
            recovered: match found {
                Some(h) => h.recovered.map(|r| r && replay),
                None => j.recovering.then_some(false),
            },
        };
        // Joins of the room asked meanwhile: the same place (they come
        // after the replay), nothing recovered.
        let same = Mark {
            recovered: None,
            ..own
        };
        std::iter::once((j.details, &j.reference, own))
            .chain(j.more.iter().map(|(d, r)| (*d, r, same)))
            .map(|(details, reference, mark)| {
                let reference = reference.as_deref();
                self.listing_frame("joined", &room.name, details, reference, answer, mark)
            })
            .collect()
    }

    /// Cluster mode: take `conn`'s pending join of room `key` out of the
    /// table.
    fn take_joining(&mut self, key: RoomKey, conn: ConnId) -> Option<Joining> {
        let list = self.joining.get_mut(&key)?;
        let at = list.iter().position(|j| j.conn == conn)?;
        let j = list.swap_remove(at);
        if list.is_empty() {
            self.joining.remove(&key);
        }
        Some(j)
    }

    /// Cluster mode: forget `conn`'s joins (all of them: it closed).
    fn forget_joining(&mut self, conn: ConnId) {
        if self.joining.is_empty() {
            return;
        }
        self.joining.retain(|_, list| {
            list.retain(|j| j.conn != conn);
            !list.is_empty()
        });
    }

    /// Cluster mode: `conn` leaves room `key` while its join is pending:
    /// its `joined` goes out first (the cluster's answer if it came, else
    /// this node's view), then its other replies; what the room sent
    /// meanwhile is not for it any more. A late answer finds nothing.
    fn end_join_by_leaving(&mut self, conn: ConnId, key: RoomKey) {
        let Some(j) = self.take_joining(key, conn) else {
            return;
        };
        let replies = self.join_replies(key, &j, false);
        for frame in replies {
            self.send(Target::Conn(conn), frame);
        }
    }

    /// Cluster mode: the answer to a request the hub made (`reply` of an
    /// output): reply to the connection that asked, if still open.
    pub fn handle_cluster_answer(&mut self, pending: Pending, answer: ClusterAnswer) {
        let id = pending.conn;
        if self.registry.session(id).is_none() {
            return;
        }
        let reference = pending.reference.as_deref();
        let frame = match (pending.kind, answer) {
            (PendingKind::Private, ClusterAnswer::Delivered(n)) if n > 0 => return,
            (PendingKind::Private, ClusterAnswer::Listing(_)) => return,
            (PendingKind::Private, ClusterAnswer::Unavailable) => {
                let mut refusal = Refusal::new(
                    ErrorCode::Unavailable,
                    "the cluster could not be reached: not sent to connections on other nodes",
                );
                refusal.reference = reference;
                self.refuse(id, refusal);
                return;
            }
            (PendingKind::Private, _) => {
                let mut refusal =
                    Refusal::new(ErrorCode::UserOffline, "no connection for that user");
                refusal.reference = reference;
                self.refuse(id, refusal);
                return;
            }
            (PendingKind::Left { room }, answer) => {
                let members = match answer {
                    ClusterAnswer::Listing(l) => l.members,
                    _ => self
                        .registry
                        .room_key(&room)
                        .and_then(|k| self.registry.room(k))
                        .map_or(0, |r| r.user_count()),
                };
                protocol::json_frame(&m::Left {
                    kind: "left",
                    room: &room,
                    members,
                    reference,
                })
            }
            (
                PendingKind::Joined {
                    room,
                    details,
                    join,
                },
                answer,
            ) => {
                let unavailable = matches!(answer, ClusterAnswer::Unavailable);
                let key = self.registry.room_key(&room);
                let pending = key.and_then(|k| {
                    let list = self.joining.get_mut(&k)?;
                    let j = list
                        .iter_mut()
                        .find(|j| j.conn == id && Some(j.join) == join)?;
                    Some((k, j))
                });
                match (join, pending) {
                    // The answer of this join (and of those asked while it
                    // was pending): in effect at its marker (without Redis
                    // no marker comes: now).
                    (Some(_), Some((key, j))) => {
                        j.answer = Some(answer);
                        if j.marker || unavailable {
                            self.finish_join(key, id);
                        }
                    }
                    // A join that ended by leaving, or a closed one.
                    (Some(_), None) => {}
                    (None, _) => {
                        // A room already joined: where this node is in its
                        // history (what the connection has had).
                        let at = key.and_then(|k| self.tracked_place(k));
                        let mark = Mark {
                            epoch: at.map(|(e, _)| e),
                            seq: at.map(|(_, s)| s),
                            recovered: None,
                        };
                        let frame =
                            self.listing_frame("joined", &room, details, reference, &answer, mark);
                        self.send(Target::Conn(id), frame);
                    }
                }
                return;
            }
            (PendingKind::Presence { room, details }, answer) => {
                let mark = Mark::default();
                self.listing_frame("presence", &room, details, reference, &answer, mark)
            }
            (PendingKind::History { room }, ClusterAnswer::History(page)) => {
                let frames: Vec<SharedFrame> = page
                    .messages
                    .iter()
                    .filter_map(|(seq, body)| protocol::sequenced_message(body, *seq))
                    .collect();
                let head = m::HistoryHead {
                    kind: Some("history"),
                    room: &room,
                    epoch: page.epoch.as_deref(),
                    seq: page.seq,
                    truncated: page.truncated,
                    reference,
                };
                let mut w = protocol::FrameWriter::text(256);
                let payloads = frames.iter().map(|f| protocol::frame_payload(f));
                write_history(w.payload(), &head, payloads);
                w.finish()
            }
            (PendingKind::History { .. }, _) => {
                let mut refusal = Refusal::new(
                    ErrorCode::Unavailable,
                    "the cluster could not be reached for the room's history",
                );
                refusal.reference = reference;
                self.refuse(id, refusal);
                return;
            }
        };
        self.send(Target::Conn(id), frame);
    }

    /// A `joined` / `presence` reply from the cluster's listing (or, when
    /// the cluster cannot be asked, from this node's view).
    fn listing_frame(
        &self,
        kind: &'static str,
        room: &str,
        details: bool,
        reference: Option<&RawValue>,
        answer: &ClusterAnswer,
        mark: Mark<'_>,
    ) -> SharedFrame {
        let ClusterAnswer::Listing(listing) = answer else {
            return self.member_list(kind, room, details, reference, mark);
        };
        let listed: Vec<m::MemberDetail<'_>> = listing
            .users
            .iter()
            .take(self.config.member_list_limit)
            .map(|u| m::MemberDetail {
                user: &u.user,
                connections: u.connections,
                since: u.since,
                info: if details { u.info.as_deref() } else { None },
            })
            .collect();
        protocol::json_frame(&m::MemberList {
            kind,
            room,
            members: listing.members,
            truncated: listing.members > listed.len(),
            users: listed.iter().map(|d| d.user).collect(),
            details: details.then_some(listed.as_slice()),
            epoch: mark.epoch,
            seq: mark.seq,
            recovered: mark.recovered,
            reference,
        })
    }

    /// Cluster mode: the rooms with a member here and the users with a
    /// connection here, each with what this node asserts about it — what
    /// the driver re-asserts after a Redis link comes back.
    pub fn local_presence(
        &self,
        mut f: impl FnMut(&Arc<str>, &Arc<str>, Presence, Option<&RawValue>),
    ) {
        for room in self.registry.rooms() {
            for (u, presence) in room.presences() {
                let user = self.registry.user(u).expect("counted user");
                f(&room.name, &user.name, presence, self.registry.user_info(u));
            }
        }
    }
}

/// `GET /api/history/<room>`'s body in cluster mode, from what Redis gave.
pub fn history_page_body(room: &str, page: &HistoryPage) -> Vec<u8> {
    let frames: Vec<SharedFrame> = page
        .messages
        .iter()
        .filter_map(|(seq, body)| protocol::sequenced_message(body, *seq))
        .collect();
    let head = m::HistoryHead {
        kind: None,
        room,
        epoch: page.epoch.as_deref(),
        seq: page.seq,
        truncated: page.truncated,
        reference: None,
    };
    let mut out = Vec::with_capacity(256);
    write_history(
        &mut out,
        &head,
        frames.iter().map(|f| protocol::frame_payload(f)),
    );
    out
}

/// A `history` reply: the head, then the messages (each a room message's
/// JSON, as sent) as its `messages` array.
fn write_history<'f>(
    out: &mut Vec<u8>,
    head: &m::HistoryHead<'_>,
    messages: impl Iterator<Item = &'f [u8]>,
) {
    serde_json::to_writer(&mut *out, head).expect("history heads serialize");
    out.pop(); // its closing brace
    out.extend_from_slice(b",\"messages\":[");
    for (i, message) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(b"]}");
}
