//! The cluster's side of the driver (DESIGN.md §6): Redis links in the same
//! mio loop as the clients, no runtime and no thread.
//!
//! Per shard (one Redis server each) two [`link::Link`]s: a command link,
//! pipelined (everything of one loop iteration leaves in one write, replies
//! matched in order), and a subscriber link (a subscribed RESP2 connection
//! may do nothing else). The hub's cluster outputs become commands here;
//! what Redis sends back becomes [`Event`]s the driver hands to the hub.
//!
//! * A room's or user's channel and keys live on the shard chosen by a jump
//!   consistent hash of its name; `P:all` on shard 0.
//! * A command whose effect is published on a channel this node is still
//!   subscribing to waits for the subscription's confirmation, so the node
//!   never misses what follows its own join.
//! * A shard that cannot be reached: publishes come back to the hub for
//!   this node's members (`Event::Message`), questions are answered
//!   `Unavailable`, presence changes are dropped — when the shard returns,
//!   the node re-subscribes and re-asserts all it holds as absolute state,
//!   then sweeps what it asserted before (a new generation per connection).
//! * Every second each shard gets the node's heartbeat (a script that also
//!   forgets nodes silent for [`NODE_TIMEOUT`]) and the node must hear its
//!   own heartbeat back on its subscriber link within [`DEAF_AFTER`], or the
//!   shard is reconnected: a node never stays deaf behind a green check.

mod link;
pub mod resp;
mod scripts;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::{Registry, Token};

use self::link::{Link, LinkState};
use self::resp::BytesFrame;
use self::scripts::Script;
use crate::config::RedisUrl;
use crate::hub::cluster::{
    Channel, Gap, HistoryPage, ListedHistory, ListedUser, Listing, Pending, PresenceChange,
};
use crate::hub::{ClusterAnswer, ConnId, ConnectionView, Hub, MemberView, RoomView, UserView};

/// A node silent this long is dead: the others forget it.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each shard gets the node's heartbeat.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A subscriber link that has not delivered the node's own heartbeat for
/// this long is deaf, and a command link that has not answered one is
/// stuck: the shard is reconnected.
pub const DEAF_AFTER: Duration = Duration::from_secs(4);
/// How long a connection attempt (TCP, then AUTH/SELECT/script loading)
/// may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after its start a node refuses WebSocket clients (503) while
/// its shards are not all up; after it, it serves them in any case (with
/// this node's view while Redis is down).
pub const STARTUP_GRACE: Duration = CONNECT_TIMEOUT;
/// Reconnect backoff: first delay and cap (with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Entries one heartbeat forgets of a dead node at most (the rest on the
/// next beat, of any node).
const REAP_STEPS: usize = 2000;
/// Channels per SUBSCRIBE command when re-subscribing.
const SUBSCRIBE_BATCH: usize = 512;
/// Users per SYNC script when re-asserting a room.
const SYNC_CHUNK: usize = 256;
/// A SUBSCRIBE not confirmed within this means a stuck subscriber link.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each shard's keys of this node get their expiry refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How long a user view waits for the nodes' answers.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);
/// User views gathering answers at once; beyond, this node's view answers.
const MAX_GATHERING: usize = 1024;
/// How long the other nodes' summaries are fetched with each heartbeat
/// after `/api/overview` asked for them (a dashboard asks every second or two).
const WATCH_NODES_FOR: Duration = Duration::from_secs(10);
/// Most node summaries one heartbeat fetches, and the largest one kept.
const MAX_NODE_SUMMARIES: usize = 64;
const MAX_SUMMARY_BYTES: usize = 4096;
/// Replies read from one link per readiness event (the rest next
/// iteration), so what the hub is handed at once stays bounded.
const READ_BUDGET: usize = 1024;
/// Tokens of the Redis links: two per shard, counting down from here.
pub const TOKEN_TOP: usize = usize::MAX - 16;

/// What Redis gave back, for the hub.
#[derive(Debug)]
pub enum Event {
    /// An envelope on a channel (or a publish that could not go out).
    Message { channel: Channel, payload: Bytes },
    /// The answer to a request the hub made.
    Answer(Pending, ClusterAnswer),
    /// A claimed connection was counted (true) or is over the cap.
    Claim(ConnId, bool),
    /// Re-assert what this node holds on a shard (`true`: subscribe to
    /// its channels first — the shard is up again).
    Resync(usize, bool),
    /// A view over the whole cluster, for whoever waits for it.
    View(Waiter, View),
    /// The cluster cannot be asked: answer with this node's view.
    LocalView(Waiter, Ask),
    /// The answer to the hub's `HistoryFill`: the missed messages (each
    /// with who sent it), or `None` when they could not be had.
    Filled(Gap, Option<Vec<(Bytes, Bytes)>>),
    /// Another node (`asker`) wants this node's connections of `user`:
    /// answer with [`Cluster::answer_view`].
    ViewQuery {
        shard: usize,
        user: String,
        asker: String,
        qid: u64,
    },
}

/// Who waits for a view: an HTTP request (`/api/users/…`, `/api/rooms/…`)
/// or a `Handle` call.
#[derive(Debug)]
pub enum Waiter {
    Http(ConnId),
    User(SyncSender<UserView>),
    Room(SyncSender<RoomView>),
}

/// A view asked for.
#[derive(Debug, Clone)]
pub enum Ask {
    User(String),
    /// A room, with at most this many users listed.
    Room(String, usize),
    /// A room's latest messages (after `since`, at most `limit`).
    History(String, Option<(String, u64)>, usize),
}

/// A view.
#[derive(Debug)]
pub enum View {
    User(UserView),
    Room(RoomView),
    /// A room's latest messages; `None` when Redis could not be asked.
    History(String, Option<HistoryPage>),
}

/// A user view being gathered from the nodes that hold the user.
struct Gathering {
    waiter: Waiter,
    user: String,
    /// How many nodes received the question (PUBLISH's answer).
    expect: Option<usize>,
    answered: usize,
    details: Vec<ConnectionView>,
    deadline: Instant,
}

/// Counters for `/stats` and `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct ClusterCounters {
    /// Envelopes published.
    pub publishes: u64,
    /// Publishes that could not go out (shard down or link over its cap),
    /// delivered to this node's members only.
    pub publishes_dropped: u64,
    /// Messages received on subscriber links.
    pub messages_received: u64,
    /// Shard connections made after the first.
    pub reconnects: u64,
    /// Subscriber links found deaf (own heartbeat not heard back).
    pub deaf: u64,
    /// Time the last re-subscription took (link up to all confirmed), µs.
    pub resubscribe_us: u64,
    /// Round-trip time of the last heartbeat, µs.
    pub rtt_us: u64,
    /// Live nodes as the last heartbeat on shard 0 counted them.
    pub nodes: u64,
    /// Error replies from Redis.
    pub errors: u64,
    /// Presence re-assertions not caused by a reconnect (an update that
    /// could not go out, or this node found taken for dead).
    pub reasserts: u64,
}

/// What to do with a command link's reply.
#[derive(Debug)]
enum Reply {
    /// A handshake step (AUTH, SELECT): an error drops the link.
    Handshake,
    /// A script was loaded: its SHA.
    Loaded(Script),
    Publish(Option<Pending>),
    Presence(Option<Pending>),
    Query(Pending),
    Claim(ConnId),
    /// A room view (the room and its user limit).
    RoomView(Waiter, String, usize),
    /// A user view's question went to this many nodes.
    Gather(u64),
    Beat(Instant),
    /// A presence or count update: an error means the state in Redis may
    /// be wrong, so the shard is re-asserted.
    Update,
    /// A re-assertion script of this generation.
    Sync(u64),
    /// A sweep step of this generation (0: shutdown).
    Sweep(u64),
    /// A step of refreshing key expiries.
    Refresh,
    /// A gap's messages.
    Fill(Gap),
    /// A `history` request's messages.
    Read(Pending),
    /// `GET /api/history/<room>`'s messages.
    HistoryView(Waiter, String),
    Ignore,
}

/// History in Redis (`--history-size` > 0).
#[derive(Debug, Clone, Copy)]
struct HistorySettings {
    size: usize,
    ttl_ms: u128,
    max_recover: usize,
    max_bytes: usize,
}

/// Which budget a command counts against: publishes get
/// `--cluster-max-pending`; presence and counts (which must not be lost:
/// they are re-asserted when they cannot go out) get twice that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Publish,
    Control,
}

/// A command waiting for a channel's subscription to be confirmed.
#[derive(Debug)]
struct Held {
    bytes: BytesMut,
    reply: Reply,
}

/// A re-assertion in progress (see [`Cluster::resync`]).
struct Reassert {
    generation: u64,
    /// What this node held on the shard when it began (looked up again as
    /// each is sent).
    rooms: Vec<Arc<str>>,
    users: Vec<Arc<str>>,
    next_room: usize,
    next_user: usize,
    /// Scripts sent and not answered yet.
    in_flight: usize,
    /// One could not be sent or was refused: no sweep, start again.
    failed: bool,
}

/// Re-assertion scripts in flight at once per shard, so a heartbeat never
/// waits behind more than a few of them.
const REASSERT_IN_FLIGHT: usize = 4;

/// A channel being subscribed: confirmations still due, commands waiting.
#[derive(Debug)]
struct Subscribing {
    due: u32,
    held: Vec<Held>,
    since: Instant,
}

struct Shard {
    url: RedisUrl,
    addr: SocketAddr,
    cmd: Link<Reply>,
    sub: Link<()>,
    shas: [Option<Bytes>; scripts::ALL.len()],
    /// Connections made to this shard (a generation for presence).
    generation: u64,
    /// Channels whose subscription is not confirmed yet.
    subscribing: HashMap<Bytes, Subscribing>,
    /// Set when both links are up: re-subscription and re-assertion done.
    ready: bool,
    up_since: Option<Instant>,
    retry_at: Option<Instant>,
    attempts: u32,
    /// Last time the node's heartbeat came back on the subscriber link.
    heard: Instant,
    /// A heartbeat sent and not answered yet.
    beat_sent: Option<Instant>,
    next_beat: Instant,
    /// Held bytes (counted against the link's cap).
    held_bytes: usize,
    /// An update could not go out: re-assert everything when there is room.
    resync_due: bool,
    /// Heartbeats answered on this connection.
    beats: u64,
    /// Connections made (the first is no reconnect).
    connects: u64,
    /// The re-assertion in progress, if any.
    reassert: Option<Reassert>,
    next_refresh: Instant,
}

/// Every shard of the cluster, as the driver holds them.
pub struct Cluster {
    prefix: String,
    node: Arc<str>,
    shards: Vec<Shard>,
    events: VecDeque<Event>,
    pub counters: ClusterCounters,
    max_pending: usize,
    announce_limit: usize,
    list_limit: usize,
    user_cap: usize,
    rng: u64,
    shutting_down: bool,
    gathering: HashMap<u64, Gathering>,
    next_qid: u64,
    /// Links that used their read budget and have more to read.
    again: Vec<Token>,
    /// This node's summary, written beside its heartbeat on shard 0.
    summary: Vec<u8>,
    /// Until then each heartbeat on shard 0 fetches every live node's.
    watch_until: Option<Instant>,
    /// Every live node's summary, as the last such heartbeat found them.
    summaries: Vec<serde_json::Value>,
    history: Option<HistorySettings>,
    /// Every shard has been up (once, since the start).
    started: bool,
}

impl Cluster {
    /// A cluster of `urls` (resolved now: a name that does not resolve
    /// stops the start, with the shard's position, never its URL).
    pub fn new(
        config: &crate::config::Config,
        node: Arc<str>,
        now: Instant,
    ) -> std::io::Result<Cluster> {
        use std::net::ToSocketAddrs;
        let mut shards = Vec::new();
        for (i, url) in config.cluster.iter().enumerate() {
            let addr = (url.host.as_str(), url.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    std::io::Error::other(format!(
                        "cluster shard {} ({}): the host does not resolve",
                        i + 1,
                        url
                    ))
                })?;
            // The longest message: an envelope around the largest frame a
            // client or the server API may send, twice for safety.
            let largest = config.hub.max_message_size.max(config.max_request_body);
            let reply_max = largest.saturating_mul(2).max(1 << 20) + 64 * 1024;
            // The longest reply to a command: a room listing of the most
            // users a view may ask for, each with the longest id and info.
            let listed = config
                .hub
                .member_list_limit
                .max(crate::driver::api::MAX_LISTED_USERS);
            let per_user = config.hub.max_user_id_len + config.hub.max_info_bytes + 96;
            // A join's answer also holds what its client missed (bounded
            // by the replay budget), as do a gap's and a `history`'s.
            let replay = match config.hub.history_size {
                0 => 0,
                _ => config.hub.max_replay_bytes.saturating_mul(2),
            };
            let cmd_max = reply_max.max(listed.saturating_mul(per_user) + 64 * 1024) + replay;
            shards.push(Shard {
                url: url.clone(),
                addr,
                cmd: Link::new(Token(TOKEN_TOP - 2 * i), cmd_max),
                sub: Link::new(Token(TOKEN_TOP - 2 * i - 1), reply_max),
                shas: Default::default(),
                generation: 0,
                subscribing: HashMap::new(),
                ready: false,
                up_since: None,
                retry_at: Some(now),
                attempts: 0,
                heard: now,
                beat_sent: None,
                next_beat: now,
                held_bytes: 0,
                resync_due: false,
                beats: 0,
                connects: 0,
                reassert: None,
                next_refresh: now + REFRESH_EVERY,
            });
        }
        let seed = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Ok(Cluster {
            prefix: config.cluster_prefix.clone(),
            node,
            shards,
            events: VecDeque::new(),
            counters: ClusterCounters::default(),
            max_pending: config.cluster_max_pending,
            announce_limit: config.hub.presence_announce_limit,
            list_limit: config.hub.member_list_limit,
            user_cap: config.hub.max_connections_per_user,
            rng: seed | 1,
            shutting_down: false,
            started: false,
            gathering: HashMap::new(),
            next_qid: 0,
            again: Vec::new(),
            summary: Vec::new(),
            watch_until: None,
            summaries: Vec::new(),
            history: (config.hub.history_size > 0).then_some(HistorySettings {
                size: config.hub.history_size,
                ttl_ms: config.hub.history_ttl.as_millis(),
                max_recover: config.hub.max_recover,
                max_bytes: config.hub.max_replay_bytes,
            }),
        })
    }

    /// Whether the node is still starting: not every shard has been up
    /// yet, and it started less than [`STARTUP_GRACE`] ago. Clients are
    /// asked to come back in a moment meanwhile (503), so the first ones
    /// after a start (a restart: everyone reconnecting) get the cluster's
    /// presence and history rather than this node's view alone.
    pub fn starting(&self, uptime: Duration) -> bool {
        !self.started && uptime < STARTUP_GRACE
    }

    /// Links to read again at once (their read budget ran out).
    pub fn take_again(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.again)
    }

    /// Whether some link has more to read now.
    pub fn has_again(&self) -> bool {
        !self.again.is_empty()
    }

    /// Whether `token` is one of the Redis links.
    pub fn owns(&self, token: Token) -> bool {
        token.0 <= TOKEN_TOP && token.0 > TOKEN_TOP - 2 * self.shards.len()
    }

    /// `"up"` when every shard is ready, else `"down"`.
    pub fn state(&self) -> &'static str {
        if self.shards.iter().all(|s| s.ready) {
            "up"
        } else {
            "down"
        }
    }

    /// Bytes waiting to be written to Redis, over all links.
    pub fn pending_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.cmd.out.len() + s.sub.out.len() + s.held_bytes)
            .sum()
    }

    /// The next thing Redis gave back, for the hub.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Cluster::on_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let views = self.gathering.values().map(|g| g.deadline).min();
        self.shards
            .iter()
            .filter_map(|s| {
                let beat = (s.cmd.state != LinkState::Down).then_some(s.next_beat);
                match (s.retry_at, beat) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .chain(views)
            .min()
    }

    // ----- outputs of the hub -------------------------------------------

    fn shard_of(&self, key: &[u8]) -> usize {
        let n = self.shards.len();
        if n <= 1 {
            return 0;
        }
        let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        jump_hash(hash, n)
    }

    /// The channel's Redis name and its shard.
    fn channel(&self, channel: &Channel) -> (Bytes, usize) {
        let p = &self.prefix;
        match channel {
            Channel::Room(room) => (
                Bytes::from(format!("{p}:r:{room}")),
                self.shard_of(format!("r:{room}").as_bytes()),
            ),
            Channel::User(user) => (
                Bytes::from(format!("{p}:u:{user}")),
                self.shard_of(format!("u:{user}").as_bytes()),
            ),
            Channel::All => (Bytes::from(format!("{p}:all")), 0),
        }
    }

    /// Publish an envelope; when it cannot go out, it comes back as an
    /// event for this node's members.
    pub fn publish(&mut self, channel: Channel, envelope: Bytes, reply: Option<Pending>) {
        let (name, shard) = self.channel(&channel);
        let mut bytes = BytesMut::new();
        resp::encode_command(&mut bytes, &[b"PUBLISH", &name, &envelope]);
        let ready = self.shards[shard].ready;
        match self.send(
            shard,
            Some(&name),
            bytes,
            Reply::Publish(reply),
            Class::Publish,
        ) {
            Ok(()) => self.counters.publishes += 1,
            Err(reply) => {
                self.counters.publishes_dropped += 1;
                if let Reply::Publish(Some(p)) = reply {
                    self.events
                        .push_back(Event::Answer(p, ClusterAnswer::Unavailable));
                }
                // Redis unreachable: this node's members still get it. Up
                // but over the budget: dropped (counted), as delivering it
                // here ahead of earlier ones still in flight would break
                // the room's one order.
                if !ready {
                    self.events.push_back(Event::Message {
                        channel,
                        payload: envelope,
                    });
                }
            }
        }
    }

    /// Subscribe to a channel whose first local member arrived.
    pub fn subscribe(&mut self, channel: &Channel) {
        let (name, shard) = self.channel(channel);
        self.subscribe_names(shard, &[name]);
    }

    /// Leave a channel whose last local member left.
    pub fn unsubscribe(&mut self, channel: &Channel) {
        let (name, shard) = self.channel(channel);
        let s = &mut self.shards[shard];
        if s.sub.state == LinkState::Up {
            resp::encode_command(&mut s.sub.out, &[b"UNSUBSCRIBE", &name]);
        }
    }

    fn subscribe_names(&mut self, shard: usize, names: &[Bytes]) {
        let s = &mut self.shards[shard];
        if s.sub.state != LinkState::Up || names.is_empty() {
            return;
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(names.len() + 1);
        args.push(b"SUBSCRIBE");
        let now = Instant::now();
        for name in names {
            args.push(name);
            s.subscribing
                .entry(name.clone())
                .or_insert_with(|| Subscribing {
                    due: 0,
                    held: Vec::new(),
                    since: now,
                })
                .due += 1;
        }
        resp::encode_command(&mut s.sub.out, &args);
    }

    /// A user's connections in a room on this node changed.
    pub fn presence(&mut self, change: PresenceChange) {
        if self.shutting_down {
            // The shutdown's sweep forgets all of this node at once: a
            // close after it would announce its user again.
            return self.unavailable(Reply::Presence(change.reply));
        }
        let (channel, shard) = self.channel(&Channel::Room(change.room.clone()));
        let list = match &change.reply {
            Some(Pending {
                kind: crate::hub::cluster::PendingKind::Joined { .. },
                ..
            }) => self.list_limit,
            _ => 0,
        };
        let gen = self.shards[shard].generation.to_string();
        let args = [
            self.prefix.as_bytes(),
            change.room.as_bytes(),
            self.node.as_bytes(),
            change.user.as_bytes(),
            change.connections.to_string().as_bytes(),
            change.since.to_string().as_bytes(),
            change
                .info
                .as_ref()
                .map_or(&b""[..], |i| i.get().as_bytes()),
            // Only a join is marked (a leave or count change needs no place).
            match change.join {
                Some(join) => crate::hub::cluster::conn_word(change.conn, Some(join)),
                None => "-".to_string(),
            }
            .as_bytes(),
            self.announce_limit.to_string().as_bytes(),
            list.to_string().as_bytes(),
            gen.as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let mut args = args.to_vec();
        if let (Some(ask), Some(h)) = (&change.history, self.history) {
            // '' without `since`, else '=' and its epoch (which may be '').
            let (epoch, seq) = match &ask.since {
                Some((epoch, seq)) => (format!("={epoch}"), *seq),
                None => (String::new(), 0),
            };
            args.extend([
                self.epoch_candidate().into_bytes(),
                h.ttl_ms.to_string().into_bytes(),
                epoch.into_bytes(),
                seq.to_string().into_bytes(),
                h.max_recover.to_string().into_bytes(),
                h.max_bytes.to_string().into_bytes(),
            ]);
        }
        let Some(bytes) = self.script(shard, Script::Set, &args) else {
            return self.unavailable(Reply::Presence(change.reply));
        };
        let reply = Reply::Presence(change.reply);
        if let Err(reply) = self.send(shard, Some(&channel), bytes, reply, Class::Control) {
            self.lost_update(shard);
            self.unavailable(reply);
        }
    }

    /// A new epoch, used by Redis only if it has none for the room.
    fn epoch_candidate(&mut self) -> String {
        format!("{:016x}", self.random())
    }

    /// A message of a room with history: numbered, kept and published by
    /// one script. When it cannot go out, this node's members get it
    /// without a seq (as an `F` envelope).
    pub fn history_publish(&mut self, room: Arc<str>, except: Option<ConnId>, body: Bytes) {
        let Some(h) = self.history else {
            return;
        };
        let channel = Channel::Room(room);
        let (name, shard) = self.channel(&channel);
        let Channel::Room(room) = &channel else {
            unreachable!("a room's channel")
        };
        let conn = except.map_or_else(|| "-".to_string(), |c| c.to_string());
        let candidate = self.epoch_candidate();
        let args = [
            self.prefix.as_bytes(),
            room.as_bytes(),
            self.node.as_bytes(),
            conn.as_bytes(),
            &body,
            candidate.as_bytes(),
            h.size.to_string().as_bytes(),
            h.ttl_ms.to_string().as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let ready = self.shards[shard].ready;
        let sent = match self.script(shard, Script::HistoryPublish, &args) {
            Some(bytes) => self
                .send(
                    shard,
                    Some(&name),
                    bytes,
                    Reply::Publish(None),
                    Class::Publish,
                )
                .is_ok(),
            None => false,
        };
        if sent {
            self.counters.publishes += 1;
            return;
        }
        self.counters.publishes_dropped += 1;
        // As for any publish: Redis unreachable, this node's members get
        // it (without a seq: it is in no history); over the budget, dropped.
        if !ready {
            let frame = crate::protocol::text_frame(&body);
            let payload = crate::hub::cluster::frame_envelope(&self.node, except, &frame);
            self.events.push_back(Event::Message { channel, payload });
        }
    }

    /// Messages `after + 1 ..= upto` of a room's history, for a gap.
    pub fn history_fill(&mut self, gap: Gap) {
        // More than a history holds cannot be filled.
        let size = gap.upto - gap.after;
        let Some(h) = self.history.filter(|h| size <= h.size as u64) else {
            self.events.push_back(Event::Filled(gap, None));
            return;
        };
        let (_, shard) = self.channel(&Channel::Room(gap.room.clone()));
        let args = [
            self.prefix.as_bytes(),
            gap.room.as_bytes(),
            gap.epoch.as_bytes(),
            gap.after.to_string().as_bytes(),
            gap.upto.to_string().as_bytes(),
            h.max_bytes.to_string().as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let Some(bytes) = self.script(shard, Script::HistoryFill, &args) else {
            return self.unavailable(Reply::Fill(gap));
        };
        if let Err(reply) = self.send(shard, None, bytes, Reply::Fill(gap), Class::Control) {
            self.unavailable(reply);
        }
    }

    /// A `history` request: the room's latest messages.
    pub fn history_read(
        &mut self,
        room: &str,
        since: Option<(String, u64)>,
        limit: usize,
        reply: Pending,
    ) {
        self.read(room, since, limit, Reply::Read(reply));
    }

    fn read(&mut self, room: &str, since: Option<(String, u64)>, limit: usize, reply: Reply) {
        let (max_bytes, size) = self.history.map_or((0, 0), |h| (h.max_bytes, h.size));
        let (_, shard) = self.channel(&Channel::Room(Arc::from(room)));
        // '' without `since`, else '=' and its epoch (which may be '').
        let (epoch, seq) = match since {
            Some((epoch, seq)) => (format!("={epoch}"), seq),
            None => (String::new(), 0),
        };
        let args = [
            self.prefix.as_bytes(),
            room.as_bytes(),
            epoch.as_bytes(),
            seq.to_string().as_bytes(),
            limit.to_string().as_bytes(),
            max_bytes.to_string().as_bytes(),
            size.to_string().as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let Some(bytes) = self.script(shard, Script::HistoryRead, &args) else {
            return self.unavailable(reply);
        };
        if let Err(reply) = self.send(shard, None, bytes, reply, Class::Control) {
            self.unavailable(reply);
        }
    }

    /// The listing of a room.
    pub fn query(&mut self, room: &str, reply: Pending) {
        let (_, shard) = self.channel(&Channel::Room(Arc::from(room)));
        let args = [
            self.prefix.as_bytes(),
            room.as_bytes(),
            self.list_limit.to_string().as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let Some(bytes) = self.script(shard, Script::Query, &args) else {
            return self.unavailable(Reply::Query(reply));
        };
        if let Err(reply) = self.send(shard, None, bytes, Reply::Query(reply), Class::Control) {
            self.unavailable(reply);
        }
    }

    /// This node holds `connections` of `user`; `claim` waits for the cap.
    pub fn user_conns(&mut self, user: &str, connections: u32, claim: Option<ConnId>) {
        if self.shutting_down {
            let reply = claim.map_or(Reply::Update, Reply::Claim);
            return self.unavailable(reply);
        }
        let (channel, shard) = self.channel(&Channel::User(Arc::from(user)));
        let cap = if claim.is_some() { self.user_cap } else { 0 };
        let gen = self.shards[shard].generation.to_string();
        let args = [
            self.prefix.as_bytes(),
            user.as_bytes(),
            self.node.as_bytes(),
            connections.to_string().as_bytes(),
            cap.to_string().as_bytes(),
            gen.as_bytes(),
        ]
        .map(<[u8]>::to_vec);
        let reply = match claim {
            Some(id) => Reply::Claim(id),
            None => Reply::Update,
        };
        let Some(bytes) = self.script(shard, Script::User, &args) else {
            return self.unavailable(reply);
        };
        // A claim waits for the user's channel: no `welcome` before this
        // node hears what is sent to the user.
        if let Err(reply) = self.send(shard, Some(&channel), bytes, reply, Class::Control) {
            self.lost_update(shard);
            self.unavailable(reply);
        }
    }

    /// An update could not be sent or was refused while the shard is up:
    /// Redis may be wrong about this node now, so re-assert everything once
    /// there is room (absolute values make that safe).
    fn lost_update(&mut self, shard: usize) {
        let s = &mut self.shards[shard];
        if s.ready && !s.resync_due {
            log::warn!(
                "cluster shard {}: a presence update could not go out; re-asserting this node's state",
                shard + 1
            );
            s.resync_due = true;
        }
    }

    /// Whether the heartbeat on shard 0, which carries this node's
    /// summary, goes out at `now` (so the driver builds it only then).
    pub fn summary_due(&self, now: Instant) -> bool {
        self.shards
            .first()
            .is_some_and(|s| s.ready && s.next_beat <= now && s.beat_sent.is_none())
    }

    /// This node's summary (JSON, from the driver) for the next heartbeat.
    pub fn set_summary(&mut self, summary: Vec<u8>) {
        self.summary = summary;
    }

    /// Every live node's summary as the last heartbeat found them; asking
    /// makes the next heartbeats fetch them for [`WATCH_NODES_FOR`] (so
    /// they cost Redis nothing while no dashboard looks).
    pub fn watch_nodes(&mut self, now: Instant) -> Vec<serde_json::Value> {
        self.watch_until = Some(now + WATCH_NODES_FOR);
        self.summaries.clone()
    }

    /// A view over the whole cluster. A room's comes from its shard; a
    /// user's is gathered: the question goes on the user's channel, every
    /// node holding a connection answers on this node's channel, and
    /// PUBLISH says how many will (answers that take longer than
    /// [`VIEW_TIMEOUT`] are left out).
    pub fn view(&mut self, waiter: Waiter, ask: Ask, now: Instant) {
        match ask {
            Ask::Room(room, limit) => {
                let (_, shard) = self.channel(&Channel::Room(Arc::from(room.as_str())));
                let args = [
                    self.prefix.as_bytes(),
                    room.as_bytes(),
                    limit.to_string().as_bytes(),
                    b"1",
                ]
                .map(<[u8]>::to_vec);
                let reply = Reply::RoomView(waiter, room, limit);
                let Some(bytes) = self.script(shard, Script::Query, &args) else {
                    return self.unavailable(reply);
                };
                if let Err(reply) = self.send(shard, None, bytes, reply, Class::Control) {
                    self.unavailable(reply);
                }
            }
            Ask::History(room, since, limit) => {
                let reply = Reply::HistoryView(waiter, room.clone());
                self.read(&room, since, limit, reply);
            }
            Ask::User(user) => {
                if self.gathering.len() >= MAX_GATHERING {
                    self.events
                        .push_back(Event::LocalView(waiter, Ask::User(user)));
                    return;
                }
                self.next_qid += 1;
                let qid = self.next_qid;
                let (name, shard) = self.channel(&Channel::User(Arc::from(user.as_str())));
                let question = format!("Q {} {qid}\n", self.node);
                let mut bytes = BytesMut::new();
                resp::encode_command(&mut bytes, &[b"PUBLISH", &name, question.as_bytes()]);
                self.gathering.insert(
                    qid,
                    Gathering {
                        waiter,
                        user,
                        expect: None,
                        answered: 0,
                        details: Vec::new(),
                        deadline: now + VIEW_TIMEOUT,
                    },
                );
                if let Err(reply) =
                    self.send(shard, None, bytes, Reply::Gather(qid), Class::Control)
                {
                    self.unavailable(reply);
                }
            }
        }
    }

    /// Answer another node's question about a user with this node's
    /// connections of them (`details`: a JSON array of connection views).
    pub fn answer_view(&mut self, shard: usize, asker: &str, qid: u64, details: &[u8]) {
        let name = format!("{}:n:{asker}", self.prefix);
        let mut answer = format!("A {qid}\n").into_bytes();
        answer.extend_from_slice(details);
        let mut bytes = BytesMut::new();
        resp::encode_command(&mut bytes, &[b"PUBLISH", name.as_bytes(), &answer]);
        let _ = self.send(shard, None, bytes, Reply::Ignore, Class::Control);
    }

    /// A node's answer to one of this node's user views.
    fn on_view_answer(&mut self, payload: &[u8]) {
        let Some(end) = payload.iter().position(|&b| b == b'\n') else {
            return;
        };
        let Some(qid) = std::str::from_utf8(&payload[..end])
            .ok()
            .and_then(|h| h.strip_prefix("A "))
            .and_then(|q| q.parse::<u64>().ok())
        else {
            return;
        };
        let Some(g) = self.gathering.get_mut(&qid) else {
            return;
        };
        g.answered += 1;
        match serde_json::from_slice::<Vec<ConnectionView>>(&payload[end + 1..]) {
            Ok(details) => g.details.extend(details),
            Err(e) => log::debug!("a user view answer that does not parse: {e}"),
        }
        self.maybe_gathered(qid);
    }

    /// Finish a user view once every node that got the question answered.
    fn maybe_gathered(&mut self, qid: u64) {
        let done = self
            .gathering
            .get(&qid)
            .is_some_and(|g| g.expect.is_some_and(|n| g.answered >= n));
        if done {
            self.finish_view(qid);
        }
    }

    fn finish_view(&mut self, qid: u64) {
        let Some(g) = self.gathering.remove(&qid) else {
            return;
        };
        let mut details = g.details;
        details.sort_by(|a, b| (a.connected_at, &a.node).cmp(&(b.connected_at, &b.node)));
        let mut rooms: Vec<String> = details.iter().flat_map(|d| d.rooms.clone()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let view = UserView {
            user: g.user,
            online: !details.is_empty(),
            connections: details.len(),
            rooms,
            details,
        };
        self.events
            .push_back(Event::View(g.waiter, View::User(view)));
    }

    /// A re-assertion script was answered (`ok`: without an error).
    fn sync_answered(&mut self, i: usize, gen: u64, ok: bool) {
        if let Some(r) = &mut self.shards[i].reassert {
            if r.generation == gen {
                r.in_flight = r.in_flight.saturating_sub(1);
                r.failed |= !ok;
            }
        }
    }

    /// A request that cannot reach Redis is answered at once.
    fn unavailable(&mut self, reply: Reply) {
        match reply {
            Reply::RoomView(waiter, room, limit) => self
                .events
                .push_back(Event::LocalView(waiter, Ask::Room(room, limit))),
            Reply::Gather(qid) => {
                if let Some(g) = self.gathering.remove(&qid) {
                    self.events
                        .push_back(Event::LocalView(g.waiter, Ask::User(g.user)));
                }
            }
            Reply::Presence(Some(p))
            | Reply::Query(p)
            | Reply::Publish(Some(p))
            | Reply::Read(p) => self
                .events
                .push_back(Event::Answer(p, ClusterAnswer::Unavailable)),
            Reply::Fill(gap) => self.events.push_back(Event::Filled(gap, None)),
            Reply::HistoryView(waiter, room) => self
                .events
                .push_back(Event::View(waiter, View::History(room, None))),
            // Without Redis only this node's cap is checked.
            Reply::Claim(id) => self.events.push_back(Event::Claim(id, true)),
            _ => {}
        }
    }

    /// An EVALSHA of `script`, if the shard has it loaded.
    fn script(&self, shard: usize, script: Script, args: &[Vec<u8>]) -> Option<BytesMut> {
        let sha = self.shards[shard].shas[script as usize].as_ref()?;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(args.len() + 3);
        parts.push(b"EVALSHA");
        parts.push(sha);
        parts.push(b"0");
        parts.extend(args.iter().map(Vec::as_slice));
        let mut bytes = BytesMut::new();
        resp::encode_command(&mut bytes, &parts);
        Some(bytes)
    }

    /// Queue a command on a shard's command link — held while `channel`
    /// is being subscribed. `Err` gives the reply back when the shard is
    /// down or the link over its cap.
    fn send(
        &mut self,
        shard: usize,
        channel: Option<&Bytes>,
        bytes: BytesMut,
        reply: Reply,
        class: Class,
    ) -> Result<(), Reply> {
        let max = match class {
            Class::Publish => self.max_pending,
            Class::Control => self.max_pending.saturating_mul(2),
        };
        let s = &mut self.shards[shard];
        if !s.ready || s.cmd.out.len() + s.held_bytes + bytes.len() > max {
            return Err(reply);
        }
        if let Some(sub) = channel.and_then(|c| s.subscribing.get_mut(c)) {
            s.held_bytes += bytes.len();
            sub.held.push(Held { bytes, reply });
            return Ok(());
        }
        s.cmd.out.extend_from_slice(&bytes);
        s.cmd.replies.push_back(reply);
        Ok(())
    }

    // ----- the event loop --------------------------------------------------

    /// A Redis link's socket is ready.
    pub fn on_ready(&mut self, registry: &Registry, token: Token, now: Instant) {
        let i = (TOKEN_TOP - token.0) / 2;
        let is_cmd = (TOKEN_TOP - token.0) % 2 == 0;
        let Some(shard) = self.shards.get_mut(i) else {
            return;
        };
        let result = if is_cmd {
            shard.cmd.on_ready().and_then(|()| self.read_cmd(i, now))
        } else {
            shard.sub.on_ready().and_then(|()| self.read_sub(i, now))
        };
        if let Err(why) = result {
            self.fail(registry, i, now, &why);
        } else {
            self.maybe_ready(i, now);
        }
    }

    fn read_cmd(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let Some(frame) = self.shards[i].cmd.next_frame()? else {
                break;
            };
            budget -= 1;
            if budget == 0 {
                self.again.push(self.shards[i].cmd.token());
            }
            let Some(reply) = self.shards[i].cmd.replies.pop_front() else {
                return Err("a reply to no command".into());
            };
            self.on_reply(i, reply, frame, now)?;
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        i: usize,
        reply: Reply,
        frame: BytesFrame,
        now: Instant,
    ) -> Result<(), String> {
        if let BytesFrame::Error(e) = &frame {
            self.counters.errors += 1;
            let e: &str = e;
            match reply {
                Reply::Handshake | Reply::Loaded(_) => {
                    return Err(format!("Redis refused the link's setup: {e}"))
                }
                other if e.starts_with("NOSCRIPT") => {
                    self.unavailable(other);
                    return Err("Redis lost our scripts".into());
                }
                other => {
                    log::warn!("cluster shard {}: Redis answered an error: {e}", i + 1);
                    match &other {
                        Reply::Beat(_) => self.shards[i].beat_sent = None,
                        Reply::Presence(_) | Reply::Claim(_) | Reply::Update => self.lost_update(i),
                        Reply::Sync(gen) => self.sync_answered(i, *gen, false),
                        Reply::Sweep(gen) if *gen != 0 => self.lost_update(i),
                        _ => {}
                    }
                    self.unavailable(other);
                    return Ok(());
                }
            }
        }
        match reply {
            Reply::Handshake | Reply::Ignore | Reply::Update => {}
            Reply::Sync(gen) => self.sync_answered(i, gen, true),
            Reply::Sweep(gen) => {
                // Go on with the next step while it is still this
                // generation's (or the shutdown's).
                if let Some((phase, cursor)) = step_of(&frame) {
                    if phase < 2 && (gen == 0 || gen == self.shards[i].generation) {
                        self.sweep_step(i, gen, phase, &cursor);
                    }
                }
            }
            Reply::Refresh => {
                if let Some((phase, cursor)) = step_of(&frame) {
                    if phase < 2 {
                        self.refresh_step(i, phase, &cursor);
                    }
                }
            }
            Reply::Loaded(script) => {
                let sha = match frame {
                    BytesFrame::BulkString(b) => b,
                    BytesFrame::SimpleString(b) => b,
                    other => return Err(format!("SCRIPT LOAD answered {other:?}")),
                };
                let s = &mut self.shards[i];
                s.shas[script as usize] = Some(sha);
                if s.shas.iter().all(Option::is_some) {
                    s.cmd.state = LinkState::Up;
                }
            }
            Reply::Publish(pending) => {
                if let (Some(p), BytesFrame::Integer(n)) = (pending, &frame) {
                    self.events
                        .push_back(Event::Answer(p, ClusterAnswer::Delivered(*n as usize)));
                }
            }
            Reply::Presence(pending) => {
                if let Some(p) = pending {
                    self.events
                        .push_back(Event::Answer(p, ClusterAnswer::Listing(listing(&frame))));
                }
            }
            Reply::Fill(gap) => {
                let missed = match &frame {
                    BytesFrame::Array(parts) => Some(
                        parts
                            .chunks_exact(2)
                            .filter_map(|c| Some((bulk(&c[0])?, bulk(&c[1])?)))
                            .collect(),
                    ),
                    _ => None,
                };
                self.events.push_back(Event::Filled(gap, missed));
            }
            Reply::Read(p) => self.events.push_back(Event::Answer(
                p,
                ClusterAnswer::History(history_page(&frame)),
            )),
            Reply::HistoryView(waiter, room) => {
                let page = Some(history_page(&frame));
                self.events
                    .push_back(Event::View(waiter, View::History(room, page)));
            }
            Reply::Query(p) => self
                .events
                .push_back(Event::Answer(p, ClusterAnswer::Listing(listing(&frame)))),
            Reply::Claim(id) => self
                .events
                .push_back(Event::Claim(id, frame != BytesFrame::Integer(0))),
            Reply::RoomView(waiter, room, limit) => {
                let view = room_view(&frame, room, limit);
                self.events.push_back(Event::View(waiter, View::Room(view)));
            }
            Reply::Gather(qid) => {
                if let (Some(g), BytesFrame::Integer(n)) = (self.gathering.get_mut(&qid), &frame) {
                    g.expect = Some((*n).max(0) as usize);
                    self.maybe_gathered(qid);
                }
            }
            Reply::Beat(sent) => {
                let s = &mut self.shards[i];
                s.beat_sent = None;
                s.beats += 1;
                let added = match &frame {
                    BytesFrame::Array(parts) => parts.get(2) == Some(&BytesFrame::Integer(1)),
                    _ => false,
                };
                if added && s.beats > 1 && !s.resync_due {
                    // The others took this node for dead and forgot it:
                    // say again what it holds.
                    log::warn!("cluster shard {}: this node had been taken for dead; re-asserting its state", i + 1);
                    s.resync_due = true;
                }
                self.counters.rtt_us = now.saturating_duration_since(sent).as_micros() as u64;
                if let (0, BytesFrame::Array(parts)) = (i, &frame) {
                    if let Some(BytesFrame::Integer(n)) = parts.first() {
                        self.counters.nodes = *n as u64;
                    }
                    if let Some(BytesFrame::Array(listed)) = parts.get(3) {
                        self.summaries = node_summaries(listed);
                    }
                }
                if let Some(BytesFrame::Integer(reaped)) = match &frame {
                    BytesFrame::Array(parts) => parts.get(1),
                    _ => None,
                } {
                    if *reaped > 0 {
                        log::warn!("cluster shard {}: forgot {reaped} dead node(s)", i + 1);
                    }
                }
            }
        }
        Ok(())
    }

    fn read_sub(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let mut budget = READ_BUDGET;
        let node_channel = self.node_channel();
        while budget > 0 {
            let Some(frame) = self.shards[i].sub.next_frame()? else {
                break;
            };
            budget -= 1;
            if budget == 0 {
                self.again.push(self.shards[i].sub.token());
            }
            let s = &mut self.shards[i];
            if s.sub.state == LinkState::Handshake {
                if let BytesFrame::Error(e) = &frame {
                    let e: &str = e;
                    return Err(format!("Redis refused the subscriber's setup: {e}"));
                }
                if s.sub.handshake_left == 0 {
                    return Err("a reply to no setup step".into());
                }
                s.sub.handshake_left -= 1;
                if s.sub.handshake_left == 0 {
                    s.sub.state = LinkState::Up;
                }
                continue;
            }
            let BytesFrame::Array(mut parts) = frame else {
                // Never log the frame: it may be a message's content.
                return Err(match frame {
                    BytesFrame::Error(e) => format!("Redis refused a subscription: {}", &*e),
                    _ => "the subscriber got a reply that is not a push".into(),
                });
            };
            let kind = match parts.first() {
                Some(BytesFrame::BulkString(k)) => k.clone(),
                _ => return Err("the subscriber got a push without a kind".into()),
            };
            match (&kind[..], parts.len()) {
                (b"message", 3) => {
                    let payload = match parts.pop() {
                        Some(BytesFrame::BulkString(p)) => p,
                        _ => continue,
                    };
                    let Some(BytesFrame::BulkString(name)) = parts.pop() else {
                        continue;
                    };
                    if name == node_channel {
                        if payload.starts_with(b"A ") {
                            self.on_view_answer(&payload);
                            continue;
                        }
                        s.heard = now;
                        // Both links work: the backoff starts afresh.
                        s.attempts = 0;
                        continue;
                    }
                    self.counters.messages_received += 1;
                    if let (Some(Channel::User(user)), true) =
                        (self.parse_channel(&name), payload.starts_with(b"Q "))
                    {
                        if let Some((asker, qid)) = question(&payload) {
                            self.events.push_back(Event::ViewQuery {
                                shard: i,
                                user: user.to_string(),
                                asker,
                                qid,
                            });
                        }
                        continue;
                    }
                    if let Some(channel) = self.parse_channel(&name) {
                        // Copied out of the read buffer, once: a slice would
                        // keep the whole buffer alive for as long as any
                        // recipient's queue holds the message.
                        let payload = Bytes::copy_from_slice(&payload);
                        self.events.push_back(Event::Message { channel, payload });
                    }
                }
                (b"subscribe", 3) => {
                    let Some(BytesFrame::BulkString(name)) = parts.get(1) else {
                        continue;
                    };
                    self.confirmed(i, name, now);
                }
                (b"unsubscribe", 3) | (b"pong", _) => {}
                _ => {
                    return Err(format!(
                        "the subscriber got a {:?} push",
                        String::from_utf8_lossy(&kind)
                    ))
                }
            }
        }
        Ok(())
    }

    /// A subscription is confirmed: release what waited for it.
    fn confirmed(&mut self, i: usize, name: &Bytes, now: Instant) {
        let node_channel = self.node_channel();
        let s = &mut self.shards[i];
        let Some(sub) = s.subscribing.get_mut(name) else {
            return;
        };
        sub.due -= 1;
        if sub.due > 0 {
            // Progress: the timeout counts from the latest confirmation, so
            // a channel joined and left over and over is not "stuck".
            sub.since = now;
            return;
        }
        let sub = s.subscribing.remove(name).expect("just seen");
        for held in sub.held {
            s.held_bytes -= held.bytes.len();
            s.cmd.out.extend_from_slice(&held.bytes);
            s.cmd.replies.push_back(held.reply);
        }
        if *name == node_channel {
            // Subscribed last when re-subscribing: everything before it is
            // confirmed too.
            s.heard = now;
            if let Some(up) = s.up_since {
                self.counters.resubscribe_us = now.saturating_duration_since(up).as_micros() as u64;
            }
        }
    }

    fn node_channel(&self) -> Bytes {
        Bytes::from(format!("{}:n:{}", self.prefix, self.node))
    }

    fn parse_channel(&self, name: &[u8]) -> Option<Channel> {
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":")?;
        let text = std::str::from_utf8(rest).ok()?;
        if text == "all" {
            return Some(Channel::All);
        }
        let (kind, name) = text.split_at_checked(2)?;
        match kind {
            "r:" => Some(Channel::Room(Arc::from(name))),
            "u:" => Some(Channel::User(Arc::from(name))),
            _ => None,
        }
    }

    /// When both links of a shard are up, it is ready: the driver
    /// re-subscribes and re-asserts (`Event::Resync`).
    fn maybe_ready(&mut self, i: usize, now: Instant) {
        let s = &mut self.shards[i];
        if s.ready || s.cmd.state != LinkState::Up || s.sub.state != LinkState::Up {
            return;
        }
        s.ready = true;
        s.up_since = Some(now);
        s.retry_at = None;
        s.heard = now;
        s.next_beat = now;
        s.beats = 0;
        s.resync_due = false;
        log::warn!("cluster shard {} up ({})", i + 1, s.url);
        self.events.push_back(Event::Resync(i, true));
        self.started |= self.shards.iter().all(|s| s.ready);
    }

    /// Re-assert everything this node holds on shard `i` in a new
    /// generation (after subscribing to its channels, with `subscribe`),
    /// then sweep what it asserted before. Paced by [`Cluster::pump`]: a
    /// few scripts in flight at a time, each built from the hub's state
    /// when it is sent (so it never undoes a later change), heartbeats
    /// never stuck behind a burst. The sweep goes out only once every
    /// re-assertion was answered without error; otherwise the whole is
    /// tried again later.
    pub fn resync(&mut self, i: usize, hub: &Hub, subscribe: bool) {
        if !self.shards[i].ready {
            return;
        }
        let registry = hub.registry();
        let mut rooms = Vec::new();
        for room in registry.rooms() {
            if self.channel(&Channel::Room(room.name.clone())).1 == i {
                rooms.push(room.name.clone());
            }
        }
        let mut users = Vec::new();
        for user in registry.users() {
            if self.channel(&Channel::User(user.name.clone())).1 == i {
                users.push(user.name.clone());
            }
        }
        if subscribe {
            let mut names = Vec::with_capacity(rooms.len() + users.len() + 2);
            if i == 0 {
                names.push(self.channel(&Channel::All).0);
            }
            names.extend(
                rooms
                    .iter()
                    .map(|r| self.channel(&Channel::Room(r.clone())).0),
            );
            names.extend(
                users
                    .iter()
                    .map(|u| self.channel(&Channel::User(u.clone())).0),
            );
            // The node's own channel last: its confirmation says all are.
            names.push(self.node_channel());
            for batch in names.chunks(SUBSCRIBE_BATCH) {
                self.subscribe_names(i, batch);
            }
        } else {
            self.counters.reasserts += 1;
        }
        let s = &mut self.shards[i];
        s.generation += 1;
        s.resync_due = false;
        s.reassert = Some(Reassert {
            generation: s.generation,
            rooms,
            users,
            next_room: 0,
            next_user: 0,
            in_flight: 0,
            failed: false,
        });
    }

    /// Send the next re-assertion scripts while few are in flight and the
    /// link has room (once per loop iteration).
    pub fn pump(&mut self, hub: &Hub) {
        for i in 0..self.shards.len() {
            while self.pump_one(i, hub) {}
        }
    }

    /// One step of shard `i`'s re-assertion; whether to go on.
    fn pump_one(&mut self, i: usize, hub: &Hub) -> bool {
        let max = self.max_pending;
        let s = &mut self.shards[i];
        let Some(r) = &mut s.reassert else {
            return false;
        };
        let busy = s.cmd.out.len() + s.held_bytes >= max;
        if r.in_flight >= REASSERT_IN_FLIGHT || (busy && r.in_flight > 0) {
            return false;
        }
        let gen = r.generation;
        let registry = hub.registry();
        if r.next_room < r.rooms.len() {
            let room = r.rooms[r.next_room].clone();
            r.next_room += 1;
            // The room as it is now (gone: its departures went out already).
            let Some(local) = registry.room_key(&room).and_then(|k| registry.room(k)) else {
                return true;
            };
            let mut entries: Vec<Vec<u8>> = Vec::new();
            for (u, presence) in local.presences() {
                let Some(user) = registry.user(u) else {
                    continue;
                };
                entries.push(user.name.as_bytes().to_vec());
                entries.push(presence.connections().to_string().into_bytes());
                entries.push(presence.since().to_string().into_bytes());
                entries.push(
                    registry
                        .user_info(u)
                        .map_or(Vec::new(), |i| i.get().as_bytes().to_vec()),
                );
            }
            let (channel, _) = self.channel(&Channel::Room(room.clone()));
            for chunk in entries.chunks(4 * SYNC_CHUNK) {
                let mut args = vec![
                    self.prefix.as_bytes().to_vec(),
                    room.as_bytes().to_vec(),
                    self.node.as_bytes().to_vec(),
                    self.announce_limit.to_string().into_bytes(),
                    gen.to_string().into_bytes(),
                ];
                args.extend_from_slice(chunk);
                self.send_sync(i, Some(&channel), Script::Sync, &args);
            }
            return true;
        }
        if r.next_user < r.users.len() {
            let user = r.users[r.next_user].clone();
            r.next_user += 1;
            let Some(local) = registry.user_key(&user).and_then(|k| registry.user(k)) else {
                return true;
            };
            let (channel, _) = self.channel(&Channel::User(user.clone()));
            let args = [
                self.prefix.as_bytes(),
                user.as_bytes(),
                self.node.as_bytes(),
                local.conns.len().to_string().as_bytes(),
                b"0",
                gen.to_string().as_bytes(),
            ]
            .map(<[u8]>::to_vec);
            self.send_sync(i, Some(&channel), Script::User, &args);
            return true;
        }
        if r.in_flight > 0 {
            return false;
        }
        let failed = r.failed;
        s.reassert = None;
        if failed {
            log::warn!(
                "cluster shard {}: re-asserting this node's state failed; trying again",
                i + 1
            );
            s.resync_due = true;
        } else {
            self.sweep_step(i, gen, 0, b"0");
        }
        false
    }

    /// Send one re-assertion script, counted in flight until answered.
    fn send_sync(&mut self, i: usize, channel: Option<&Bytes>, script: Script, args: &[Vec<u8>]) {
        let Some(gen) = self.shards[i].reassert.as_ref().map(|r| r.generation) else {
            return;
        };
        let sent = self.script(i, script, args).is_some_and(|bytes| {
            // Paced by the in-flight count, not the budget: it must go.
            let s = &mut self.shards[i];
            match channel.and_then(|c| s.subscribing.get_mut(c)) {
                Some(sub) => {
                    s.held_bytes += bytes.len();
                    sub.held.push(Held {
                        bytes,
                        reply: Reply::Sync(gen),
                    });
                }
                None => {
                    s.cmd.out.extend_from_slice(&bytes);
                    s.cmd.replies.push_back(Reply::Sync(gen));
                }
            }
            true
        });
        if let Some(r) = &mut self.shards[i].reassert {
            if sent {
                r.in_flight += 1;
            } else {
                r.failed = true;
            }
        }
    }

    /// One step of sweeping what this node asserted before `gen` (0: all
    /// of it and the node itself); the reply sends the next.
    fn sweep_step(&mut self, i: usize, gen: u64, phase: i64, cursor: &[u8]) {
        let args = [
            self.prefix.as_bytes().to_vec(),
            self.node.as_bytes().to_vec(),
            self.announce_limit.to_string().into_bytes(),
            gen.to_string().into_bytes(),
            phase.to_string().into_bytes(),
            cursor.to_vec(),
        ];
        if let Some(bytes) = self.script(i, Script::Sweep, &args) {
            let s = &mut self.shards[i];
            if s.ready {
                s.cmd.out.extend_from_slice(&bytes);
                s.cmd.replies.push_back(Reply::Sweep(gen));
            }
        }
    }

    /// One step of refreshing the expiry of this node's keys.
    fn refresh_step(&mut self, i: usize, phase: i64, cursor: &[u8]) {
        let args = [
            self.prefix.as_bytes().to_vec(),
            self.node.as_bytes().to_vec(),
            phase.to_string().into_bytes(),
            cursor.to_vec(),
        ];
        if let Some(bytes) = self.script(i, Script::Refresh, &args) {
            let _ = self.send(i, None, bytes, Reply::Refresh, Class::Control);
        }
    }

    /// Heartbeats, deafness, reconnects, views past their time.
    pub fn on_timeout(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<u64> = self
            .gathering
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(&q, _)| q)
            .collect();
        for qid in late {
            log::debug!("a user view went out without every node's answer");
            self.finish_view(qid);
        }
        for i in 0..self.shards.len() {
            let s = &self.shards[i];
            if s.retry_at.is_some_and(|t| t <= now) {
                self.connect(registry, i, now);
                continue;
            }
            if !s.ready {
                if s.cmd.state != LinkState::Down && s.up_since.is_none() && s.next_beat <= now {
                    self.fail(registry, i, now, "no answer within the connect timeout");
                }
                continue;
            }
            if s.next_beat > now {
                continue;
            }
            let subscribed = !s.subscribing.contains_key(&self.node_channel());
            if subscribed && now.saturating_duration_since(s.heard) > DEAF_AFTER {
                self.counters.deaf += 1;
                self.fail(
                    registry,
                    i,
                    now,
                    "the subscriber stopped hearing the node's own heartbeat (deaf)",
                );
                continue;
            }
            if s.beat_sent
                .is_some_and(|t| now.saturating_duration_since(t) > DEAF_AFTER)
            {
                self.fail(registry, i, now, "no answer to the heartbeat");
                continue;
            }
            if s.subscribing
                .values()
                .any(|sub| now.saturating_duration_since(sub.since) > SUBSCRIBE_TIMEOUT)
            {
                self.fail(registry, i, now, "a subscription was not confirmed in time");
                continue;
            }
            if s.resync_due
                && s.reassert.is_none()
                && s.cmd.out.len() + s.held_bytes < self.max_pending / 2
            {
                self.events.push_back(Event::Resync(i, false));
            }
            if s.next_refresh <= now && !self.shutting_down {
                self.shards[i].next_refresh = now + REFRESH_EVERY;
                self.refresh_step(i, 0, b"0");
            }
            self.shards[i].next_beat = now + BEAT_EVERY;
            if self.shards[i].beat_sent.is_none() && !self.shutting_down {
                // Summaries live on shard 0 only.
                let watching = i == 0 && self.watch_until.is_some_and(|t| t > now);
                if i == 0 && !watching {
                    self.summaries.clear();
                }
                let args = [
                    self.prefix.as_bytes().to_vec(),
                    self.node.as_bytes().to_vec(),
                    NODE_TIMEOUT.as_millis().to_string().into_bytes(),
                    self.announce_limit.to_string().into_bytes(),
                    REAP_STEPS.to_string().into_bytes(),
                    if i == 0 {
                        self.summary.clone()
                    } else {
                        Vec::new()
                    },
                    if watching { MAX_NODE_SUMMARIES } else { 0 }
                        .to_string()
                        .into_bytes(),
                ];
                if let Some(bytes) = self.script(i, Script::Beat, &args) {
                    if self
                        .send(i, None, bytes, Reply::Beat(now), Class::Control)
                        .is_ok()
                    {
                        self.shards[i].beat_sent = Some(now);
                    }
                }
            }
        }
    }

    /// Open both links of shard `i` and queue their setup.
    fn connect(&mut self, registry: &Registry, i: usize, now: Instant) {
        let s = &mut self.shards[i];
        s.retry_at = None;
        s.connects += 1;
        if s.connects > 1 {
            self.counters.reconnects += 1;
        }
        let mut setup = BytesMut::new();
        let mut steps = 0;
        if let Some(password) = &s.url.password {
            let pw = password.expose().as_bytes();
            match &s.url.user {
                Some(user) => resp::encode_command(&mut setup, &[b"AUTH", user.as_bytes(), pw]),
                None => resp::encode_command(&mut setup, &[b"AUTH", pw]),
            }
            steps += 1;
        }
        if s.url.db != 0 {
            resp::encode_command(&mut setup, &[b"SELECT", s.url.db.to_string().as_bytes()]);
            steps += 1;
        }
        let opened = s
            .cmd
            // Up only once the scripts are loaded (`Reply::Loaded`).
            .open(registry, s.addr, &setup, steps + 1)
            .and_then(|()| s.sub.open(registry, s.addr, &setup, steps));
        if let Err(e) = opened {
            self.fail(registry, i, now, &format!("cannot connect: {e}"));
            return;
        }
        for _ in 0..steps {
            s.cmd.replies.push_back(Reply::Handshake);
        }
        for n in 0..scripts::ALL.len() {
            let source = scripts::source(n);
            resp::encode_command(&mut s.cmd.out, &[b"SCRIPT", b"LOAD", source.as_bytes()]);
            s.cmd.replies.push_back(Reply::Loaded(Script::nth(n)));
        }
        s.shas = Default::default();
        s.up_since = None;
        // The connect timeout rides on the beat deadline until ready.
        s.next_beat = now + CONNECT_TIMEOUT;
    }

    /// Drop both links of shard `i`: answer what waited, retry later.
    fn fail(&mut self, registry: &Registry, i: usize, now: Instant, why: &str) {
        let jitter = self.random();
        let s = &mut self.shards[i];
        if s.ready || s.attempts == 0 {
            log::warn!("cluster shard {} ({}) down: {why}", i + 1, s.url);
        } else {
            log::debug!("cluster shard {} still down: {why}", i + 1);
        }
        s.ready = false;
        s.beat_sent = None;
        s.resync_due = false;
        if i == 0 {
            // Not refreshed while shard 0 is down: shown as unknown, not
            // as frozen figures.
            self.summaries.clear();
        }
        let s = &mut self.shards[i];
        let mut waiting: Vec<Reply> = s.cmd.close(registry);
        s.sub.close(registry);
        for (_, sub) in s.subscribing.drain() {
            waiting.extend(sub.held.into_iter().map(|h| h.reply));
        }
        s.reassert = None;
        s.held_bytes = 0;
        // Backoff: doubling from BACKOFF_MIN to BACKOFF_MAX, half of it
        // random, so nodes do not reconnect in step.
        let base = BACKOFF_MIN
            .saturating_mul(1 << s.attempts.min(6))
            .min(BACKOFF_MAX);
        let delay = base / 2 + base.mul_f64((jitter % 1000) as f64 / 2000.0);
        s.attempts += 1;
        // The attempt count resets only once the node hears its own
        // heartbeat, so a shard that fails right after connecting backs off.
        s.retry_at = Some(now + delay);
        for reply in waiting {
            self.unavailable(reply);
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Write what every link has queued (once per loop iteration).
    pub fn flush(&mut self, registry: &Registry, now: Instant) {
        for i in 0..self.shards.len() {
            let s = &mut self.shards[i];
            let result = s.cmd.flush(registry).and_then(|()| s.sub.flush(registry));
            if let Err(e) = result {
                self.fail(registry, i, now, &e);
            }
        }
    }

    /// Shutting down: forget this node everywhere (its users' `user_left`
    /// go out now, not after the dead-node timeout). Call before the hub
    /// closes its connections, so the sweep goes first.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for i in 0..self.shards.len() {
            self.shards[i].reassert = None;
            self.sweep_step(i, 0, 0, b"0");
        }
    }

    /// Nothing left to write or to hear back (shutdown may finish).
    pub fn settled(&self) -> bool {
        self.shards.iter().all(|s| {
            !s.ready || (s.cmd.out.is_empty() && s.cmd.replies.is_empty() && s.held_bytes == 0)
        })
    }
}

/// A bounded step's answer: `{phase, cursor}`.
fn step_of(frame: &BytesFrame) -> Option<(i64, Vec<u8>)> {
    let BytesFrame::Array(parts) = frame else {
        return None;
    };
    let phase = match parts.first()? {
        BytesFrame::Integer(n) => *n,
        _ => return None,
    };
    let cursor = match parts.get(1)? {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => b.to_vec(),
        BytesFrame::Integer(n) => n.to_string().into_bytes(),
        _ => return None,
    };
    Some((phase, cursor))
}

/// `Q <asker> <qid>\n`: who asks, and which question.
fn question(payload: &[u8]) -> Option<(String, u64)> {
    let line = std::str::from_utf8(payload.strip_suffix(b"\n")?).ok()?;
    let mut words = line.split(' ');
    let (_, asker, qid) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() || !crate::hub::cluster::valid_node_name(asker) {
        return None;
    }
    Some((asker.to_string(), qid.parse().ok()?))
}

/// A room view from the QUERY script's reply with totals:
/// `[members, connections, (user, connections, meta)*]`.
fn room_view(frame: &BytesFrame, room: String, limit: usize) -> RoomView {
    let (members, connections, rest) = match frame {
        BytesFrame::Array(parts) if parts.len() >= 2 => {
            let n = |f: &BytesFrame| match f {
                BytesFrame::Integer(n) => (*n).max(0) as usize,
                _ => 0,
            };
            (n(&parts[0]), n(&parts[1]), &parts[2..])
        }
        _ => (0, 0, &[][..]),
    };
    let mut with_members = vec![BytesFrame::Integer(members as i64)];
    with_members.extend(rest.iter().cloned());
    let listing = listing(&BytesFrame::Array(with_members));
    let details: Vec<MemberView> = listing
        .users
        .into_iter()
        .take(limit)
        .map(|u| MemberView {
            user: u.user,
            connections: u.connections,
            since: u.since,
            info: u.info,
        })
        .collect();
    RoomView {
        room,
        members,
        connections,
        users: details.iter().map(|d| d.user.clone()).collect(),
        truncated: details.len() < members,
        details,
    }
}

/// A listing script's reply: `[members, (user, connections, meta)*]`.
pub fn listing(frame: &BytesFrame) -> Listing {
    let BytesFrame::Array(parts) = frame else {
        return Listing::default();
    };
    // With a join's history part: {listing, history}.
    if let [inner @ BytesFrame::Array(_), BytesFrame::Array(history)] = &parts[..] {
        let mut l = listing(inner);
        l.history = listed_history(history);
        return l;
    }
    let members = match parts.first() {
        Some(BytesFrame::Integer(n)) => (*n).max(0) as usize,
        _ => 0,
    };
    let text = |f: &BytesFrame| match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => {
            std::str::from_utf8(b).ok().map(str::to_string)
        }
        BytesFrame::Integer(n) => Some(n.to_string()),
        _ => None,
    };
    let users = parts[1.min(parts.len())..]
        .chunks_exact(3)
        .filter_map(|c| {
            let user = text(&c[0])?;
            let connections = text(&c[1])?.parse().unwrap_or(0);
            let meta = text(&c[2])?;
            let (since, info) = meta.split_once('\n').unwrap_or((&meta, ""));
            let info = (!info.is_empty())
                .then(|| serde_json::value::RawValue::from_string(info.to_string()).ok())
                .flatten();
            Some(ListedUser {
                user,
                connections,
                since: since.parse().unwrap_or(0),
                info,
            })
        })
        .collect();
    Listing {
        members,
        users,
        history: None,
    }
}

/// A bulk string's bytes (an integer's digits).
fn bulk(frame: &BytesFrame) -> Option<Bytes> {
    match frame {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b.clone()),
        BytesFrame::Integer(n) => Some(Bytes::from(n.to_string())),
        _ => None,
    }
}

fn number(frame: &BytesFrame) -> Option<u64> {
    match frame {
        BytesFrame::Integer(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(&bulk(other)?).ok()?.parse().ok(),
    }
}

/// The history part of a join's answer: {epoch, seq, recovered (-1 not
/// asked, 0, 1), missed...}.
fn listed_history(parts: &[BytesFrame]) -> Option<ListedHistory> {
    let [epoch, seq, recovered, missed @ ..] = parts else {
        return None;
    };
    let epoch = String::from_utf8(bulk(epoch)?.to_vec()).ok()?;
    let recovered = match recovered {
        BytesFrame::Integer(1) => Some(true),
        BytesFrame::Integer(0) => Some(false),
        _ => None,
    };
    let replay: Vec<Bytes> = match recovered {
        Some(true) => missed.iter().filter_map(bulk).collect(),
        _ => Vec::new(),
    };
    let seq = number(seq)?;
    // Every missed message, or the answer is not a recovery.
    let whole = replay.len() == missed.len() && replay.len() as u64 <= seq;
    Some(ListedHistory {
        epoch,
        seq,
        recovered: recovered.map(|r| r && whole),
        replay: if whole { replay } else { Vec::new() },
    })
}

/// A `history` request's answer: {epoch or '', seq, truncated, seq1, b1, ...}.
fn history_page(frame: &BytesFrame) -> HistoryPage {
    let BytesFrame::Array(parts) = frame else {
        return HistoryPage::default();
    };
    let [epoch, seq, truncated, messages @ ..] = &parts[..] else {
        return HistoryPage::default();
    };
    let epoch = bulk(epoch)
        .and_then(|e| String::from_utf8(e.to_vec()).ok())
        .filter(|e| !e.is_empty());
    HistoryPage {
        epoch,
        seq: number(seq).unwrap_or(0),
        truncated: number(truncated) == Some(1),
        messages: messages
            .chunks_exact(2)
            .filter_map(|c| Some((number(&c[0])?, bulk(&c[1])?)))
            .collect(),
    }
}

/// The node summaries a heartbeat fetched: each a JSON object of at most
/// [`MAX_SUMMARY_BYTES`] (anything else is left out), sorted by node.
fn node_summaries(listed: &[BytesFrame]) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = listed
        .iter()
        .take(MAX_NODE_SUMMARIES)
        .filter_map(|f| match f {
            BytesFrame::BulkString(b) if b.len() <= MAX_SUMMARY_BYTES => {
                serde_json::from_slice::<serde_json::Value>(b).ok()
            }
            _ => None,
        })
        .filter(|v| v.is_object())
        .collect();
    out.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    out
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..n`
/// that moves for only 1/n of the keys when a bucket is added.
pub fn jump_hash(mut key: u64, n: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_stable_and_moves_few_keys() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &k in &keys {
            assert_eq!(jump_hash(k, 1), 0);
            assert!(jump_hash(k, 5) < 5);
        }
        let moved = keys
            .iter()
            .filter(|&&k| jump_hash(k, 4) != jump_hash(k, 5))
            .count();
        // A fifth of the keys move to the new bucket, none between old ones.
        assert!((1500..2500).contains(&moved), "{moved}");
        for &k in &keys {
            let (a, b) = (jump_hash(k, 4), jump_hash(k, 5));
            assert!(a == b || b == 4);
        }
        let mut per = [0usize; 3];
        for &k in &keys {
            per[jump_hash(k, 3)] += 1;
        }
        assert!(per.iter().all(|&c| (3000..3700).contains(&c)), "{per:?}");
    }

    #[test]
    fn listings_parse_and_junk_is_empty() {
        let frame = BytesFrame::Array(vec![
            BytesFrame::Integer(2),
            BytesFrame::BulkString("alice".into()),
            BytesFrame::BulkString("3".into()),
            BytesFrame::BulkString("1700000000000\n{\"a\":1}".into()),
            BytesFrame::BulkString("bob".into()),
            BytesFrame::BulkString("1".into()),
            BytesFrame::BulkString("5\n".into()),
        ]);
        let l = listing(&frame);
        assert_eq!(l.members, 2);
        assert_eq!(l.users.len(), 2);
        assert_eq!(
            (
                l.users[0].user.as_str(),
                l.users[0].connections,
                l.users[0].since
            ),
            ("alice", 3, 1_700_000_000_000)
        );
        assert_eq!(l.users[0].info.as_ref().map(|i| i.get()), Some("{\"a\":1}"));
        assert!(l.users[1].info.is_none());
        assert_eq!(listing(&BytesFrame::Null).members, 0);
    }
}
