//! Room history on one node: the last messages of each room that keeps
//! history, as the very frames that were sent (shared, not copied), so a
//! client that rejoins with `since` gets exactly what it missed.
//!
//! Each room's history has an epoch and a sequence number. `seq` counts the
//! room's messages from 1; the epoch names one unbroken run of them. A room
//! whose history is dropped (TTL, byte cap) and made again gets a new epoch,
//! and so does every room when the node starts: a client holding an older
//! epoch may have missed messages that are gone, and is told so.
//!
//! Bounds: `history_size` messages per room, `history_max_bytes` over all
//! rooms (each room and message also counts a fixed overhead, so many tiny
//! rooms are bounded too), and `history_ttl` after a room's last message
//! (or, for a room without messages, after its last member left).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::HubConfig;
use crate::protocol::{SharedFrame, Since};

/// Bytes counted for each room's history besides its messages: its table
/// entry, name, epoch and queue slot (an estimate of what it holds).
pub const ROOM_COST: usize = 160;

/// Bytes counted for each message besides its frame: its ring slot and the
/// frame's shared header.
pub const MESSAGE_COST: usize = 64;

/// A room's history state as clients see it.
#[derive(Debug, Clone)]
pub struct Position {
    pub epoch: Arc<str>,
    /// The room's latest message (0: none yet in this epoch).
    pub seq: u64,
}

struct RoomHistory {
    /// Unique among this start's histories: tells its queue entries from
    /// ones left by an earlier history of the same room.
    id: u64,
    /// Whether it has had a message: then it is in `History::queue`,
    /// before that in `History::fresh`.
    queued: bool,
    epoch: Arc<str>,
    /// The latest message's seq; `frames[i]` has `seq - frames.len() + 1 + i`.
    seq: u64,
    frames: VecDeque<SharedFrame>,
    /// Counted bytes: `ROOM_COST + name` plus each message's frame and
    /// `MESSAGE_COST`.
    bytes: usize,
    last_write: Instant,
    /// When its room last lost its last member.
    emptied: Option<Instant>,
}

impl RoomHistory {
    /// Whether it should still be kept at `now` although its messages are
    /// gone: its room has members, or lost them less than `ttl` ago. Then
    /// when to look again.
    fn keep(&self, now: Instant, ttl: Duration, has_members: bool) -> Option<Instant> {
        match self.emptied {
            _ if has_members => Some(now),
            Some(at) if at + ttl > now => Some(at),
            _ => None,
        }
    }

    fn first_held(&self) -> u64 {
        self.seq + 1 - self.frames.len() as u64
    }

    fn pop_oldest(&mut self) -> usize {
        let freed = self
            .frames
            .pop_front()
            .map_or(0, |f| f.len() + MESSAGE_COST);
        self.bytes -= freed;
        freed
    }
}

/// A queue entry: when it was queued (or the room last written), the
/// history's id, the room.
type Entry = (Instant, u64, Arc<str>);

/// Every room's history; see the module docs.
pub struct History {
    /// This start's part of every epoch (the driver gives a random one).
    base: Arc<str>,
    /// Histories made since start: the rest of a new epoch.
    made: u64,
    rooms: HashMap<Arc<str>, RoomHistory>,
    bytes: usize,
    /// One live entry per history that has had a message, mostly in time
    /// order. A room written after its entry was queued is queued again
    /// when the entry comes up (for expiry or eviction), so a message costs
    /// no queue work. Entries whose room is gone or whose id is not the
    /// room's are stale and skipped.
    queue: VecDeque<Entry>,
    /// One entry per history made by a `join` that has had no message
    /// yet. It stays while the room has members and a TTL after (so a
    /// client that joined an empty room and lost its connection recovers
    /// what came meanwhile). Over the byte cap these go first: they hold
    /// nothing, and all it costs is `recovered: false` for such a client.
    fresh: VecDeque<Entry>,
}

impl History {
    pub fn new(base: Arc<str>) -> History {
        History {
            base,
            made: 0,
            rooms: HashMap::new(),
            bytes: 0,
            queue: VecDeque::new(),
            fresh: VecDeque::new(),
        }
    }

    /// Give this start's epoch part (before any history is made).
    pub fn set_base(&mut self, base: Arc<str>) {
        self.base = base;
    }

    /// Whether `room` keeps history under `config`.
    pub fn keeps(config: &HubConfig, room: &str) -> bool {
        config.history_size > 0 && config.history_rooms.matches(room)
    }

    /// Rooms with a history, and the bytes counted for them all.
    pub fn usage(&self) -> (usize, usize) {
        (self.rooms.len(), self.bytes)
    }

    /// Messages held over all rooms.
    pub fn messages(&self) -> usize {
        self.rooms.values().map(|h| h.frames.len()).sum()
    }

    /// The room's position, if it has a history.
    pub fn position(&self, room: &str) -> Option<Position> {
        self.rooms.get(room).map(|h| Position {
            epoch: h.epoch.clone(),
            seq: h.seq,
        })
    }

    /// The room's position, making its history (a new epoch, seq 0) if it
    /// has none.
    pub fn open(
        &mut self,
        config: &HubConfig,
        now: Instant,
        room: &str,
        has_members: impl Fn(&str) -> bool,
    ) -> Position {
        self.entry(config, now, room, has_members);
        let h = &self.rooms[room];
        Position {
            epoch: h.epoch.clone(),
            seq: h.seq,
        }
    }

    fn entry(
        &mut self,
        config: &HubConfig,
        now: Instant,
        room: &str,
        has_members: impl Fn(&str) -> bool,
    ) {
        if self.rooms.contains_key(room) {
            return;
        }
        self.made += 1;
        let name: Arc<str> = Arc::from(room);
        let epoch: Arc<str> = Arc::from(format!("{}-{:x}", self.base, self.made));
        let bytes = ROOM_COST + room.len();
        self.bytes += bytes;
        self.fresh.push_back((now, self.made, name.clone()));
        self.rooms.insert(
            name,
            RoomHistory {
                id: self.made,
                queued: false,
                epoch,
                seq: 0,
                frames: VecDeque::new(),
                bytes,
                last_write: now,
                emptied: None,
            },
        );
        if self.bytes > config.history_max_bytes {
            self.evict(config.history_max_bytes, room, has_members);
        }
    }

    /// Record the room's next message: `build` encodes it with its seq.
    /// Returns the frame, to be sent.
    pub fn append(
        &mut self,
        config: &HubConfig,
        now: Instant,
        room: &str,
        has_members: impl Fn(&str) -> bool,
        build: impl FnOnce(u64) -> SharedFrame,
    ) -> SharedFrame {
        self.entry(config, now, room, &has_members);
        let h = self.rooms.get_mut(room).expect("just made");
        h.seq += 1;
        let frame = build(h.seq);
        let cost = frame.len() + MESSAGE_COST;
        h.bytes += cost;
        h.frames.push_back(frame.clone());
        h.last_write = now;
        let first = !h.queued;
        h.queued = true;
        let id = h.id;
        let mut freed = 0;
        while h.frames.len() > config.history_size {
            freed += h.pop_oldest();
        }
        self.bytes = self.bytes + cost - freed;
        if first {
            let (name, _) = self.rooms.get_key_value(room).expect("just made");
            self.queue.push_back((now, id, name.clone()));
        }
        if self.bytes > config.history_max_bytes {
            self.evict(config.history_max_bytes, room, has_members);
        }
        frame
    }

    /// Over the byte cap: drop histories without messages, then whole
    /// histories, oldest written first (approximately: the queue's order,
    /// with a second chance for rooms written since they were queued),
    /// never `keep`'s; if `keep` alone is over the cap, its oldest messages.
    /// A room with members keeps its epoch and seq (only its messages go):
    /// its members' places stay meaningful, and a new epoch never starts
    /// under a connected client.
    fn evict(&mut self, max: usize, keep: &str, has_members: impl Fn(&str) -> bool) {
        let mut looked = 0;
        let rounds = self.fresh.len();
        while self.bytes > max && looked < rounds {
            looked += 1;
            let Some((when, id, name)) = self.fresh.pop_front() else {
                break;
            };
            match self.rooms.get(&name) {
                Some(h) if h.id == id && !h.queued => {
                    if &*name == keep || has_members(&name) {
                        self.fresh.push_back((when, id, name));
                    } else {
                        self.drop_room(&name);
                    }
                }
                _ => {} // stale
            }
        }
        let mut looked = 0;
        let rounds = 2 * self.queue.len();
        while self.bytes > max && looked < rounds {
            looked += 1;
            let Some((when, id, name)) = self.queue.pop_front() else {
                break;
            };
            let Some(h) = self.rooms.get(&name).filter(|h| h.id == id) else {
                continue; // stale
            };
            if &*name == keep || h.last_write > when {
                let again = h.last_write.max(when);
                self.queue.push_back((again, id, name));
                continue;
            }
            if has_members(&name) {
                let h = self.rooms.get_mut(&name).expect("looked up");
                while !h.frames.is_empty() {
                    self.bytes -= h.pop_oldest();
                }
                self.queue.push_back((when, id, name));
                continue;
            }
            self.drop_room(&name);
        }
        if self.bytes > max {
            if let Some(h) = self.rooms.get_mut(keep) {
                while self.bytes > max && !h.frames.is_empty() {
                    self.bytes -= h.pop_oldest();
                }
            }
        }
    }

    fn drop_room(&mut self, name: &str) {
        if let Some(h) = self.rooms.remove(name) {
            self.bytes -= h.bytes;
        }
    }

    /// The frames a client at `since` missed, oldest first, or `None` when
    /// they cannot all be given (another epoch, no longer held, more than
    /// `max` messages or `max_bytes` bytes, or a seq this room never
    /// reached): never a part of them.
    pub fn missed(
        &self,
        room: &str,
        since: &Since<'_>,
        max: usize,
        max_bytes: usize,
    ) -> Option<impl Iterator<Item = &SharedFrame>> {
        let h = self.rooms.get(room)?;
        if *h.epoch != *since.epoch || since.seq > h.seq {
            return None;
        }
        let missed = h.seq - since.seq;
        if missed > max as u64 || (missed > 0 && since.seq + 1 < h.first_held()) {
            return None;
        }
        let skip = h.frames.len() - missed as usize;
        let bytes: usize = h.frames.iter().skip(skip).map(|f| f.len()).sum();
        (bytes <= max_bytes).then(|| h.frames.iter().skip(skip))
    }

    /// The room's latest messages after `since` (all held ones without it),
    /// oldest first, at most `limit` of them and `max_bytes` of frames; and
    /// whether older ones after `since` are missing from them (over a
    /// limit, no longer held, or `since` from another epoch).
    pub fn latest(
        &self,
        room: &str,
        since: Option<&Since<'_>>,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<&SharedFrame>, bool) {
        let Some(h) = self.rooms.get(room) else {
            return (Vec::new(), false);
        };
        let foreign = since.is_some_and(|s| *s.epoch != *h.epoch);
        let after = match since {
            Some(s) if !foreign => s.seq.min(h.seq),
            Some(_) => 0,
            None => h.first_held() - 1,
        };
        let wanted = (h.seq - after) as usize;
        let mut given = Vec::new();
        let mut bytes = 0;
        for frame in h.frames.iter().rev().take(wanted.min(limit)) {
            bytes += frame.len();
            if bytes > max_bytes {
                break;
            }
            given.push(frame);
        }
        given.reverse();
        let truncated = given.len() < wanted || foreign;
        (given, truncated)
    }

    /// The room lost its last member: its history stays at least `ttl`
    /// longer (a member coming back recovers), even one without messages.
    pub fn room_emptied(&mut self, room: &str, now: Instant) {
        if let Some(h) = self.rooms.get_mut(room) {
            h.emptied = Some(now);
        }
    }

    /// When [`History::expire`] is next due.
    pub fn next_deadline(&self, ttl: Duration) -> Option<Instant> {
        [self.queue.front(), self.fresh.front()]
            .into_iter()
            .flatten()
            .map(|&(when, _, _)| when + ttl)
            .min()
    }

    /// Drop the messages of rooms silent for `ttl`. A room that has members,
    /// or lost them less than `ttl` ago, keeps its epoch and seq (a member
    /// that rejoins having missed nothing is told `recovered: true`);
    /// another is forgotten. Rooms are looked at in the queues' order,
    /// which a room written or emptied since it was queued can make late:
    /// a history may outlive its TTL, by at most another TTL.
    pub fn expire(&mut self, now: Instant, ttl: Duration, has_members: impl Fn(&str) -> bool) {
        while let Some(&(when, _, _)) = self.queue.front() {
            if when + ttl > now {
                break;
            }
            let (when, id, name) = self.queue.pop_front().expect("front");
            let Some(h) = self.rooms.get_mut(&name).filter(|h| h.id == id) else {
                continue; // stale
            };
            if h.last_write > when {
                self.queue.push_back((h.last_write, id, name));
                continue;
            }
            match h.keep(now, ttl, has_members(&name)) {
                Some(again) => {
                    let mut freed = 0;
                    while !h.frames.is_empty() {
                        freed += h.pop_oldest();
                    }
                    self.bytes -= freed;
                    self.queue.push_back((again, id, name));
                }
                None => self.drop_room(&name),
            }
        }
        while let Some(&(when, _, _)) = self.fresh.front() {
            if when + ttl > now {
                break;
            }
            let (_, id, name) = self.fresh.pop_front().expect("front");
            match self.rooms.get(&name) {
                Some(h) if h.id == id && !h.queued => match h.keep(now, ttl, has_members(&name)) {
                    Some(again) => self.fresh.push_back((again, id, name)),
                    None => self.drop_room(&name),
                },
                _ => {} // stale: had a message since, or gone
            }
        }
    }

    /// Give back memory grown for histories that are gone.
    pub fn shrink_to_fit(&mut self) {
        let rooms = &self.rooms;
        let live = |queued: bool| {
            move |(_, id, name): &Entry| {
                rooms
                    .get(name)
                    .is_some_and(|h| h.id == *id && h.queued == queued)
            }
        };
        self.queue.retain(live(true));
        self.fresh.retain(live(false));
        self.rooms.shrink_to_fit();
        self.queue.shrink_to_fit();
        self.fresh.shrink_to_fit();
    }
}
