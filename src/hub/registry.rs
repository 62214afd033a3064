//! Who is connected, who they are, and which rooms they are in.
//!
//! Three tables with reverse links: sessions (indexed by the caller's
//! [`ConnId`]), rooms and users (interned in slabs, found by name through a
//! `HashMap`). [`Registry::remove`] is the only way out, so cleanup is complete:
//! a room or user entry exists exactly while it has a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use slab::Slab;

/// A connection: an index chosen by the caller (the driver's socket slot) plus
/// a generation, so a reused slot never receives what was meant for an old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnId {
    pub index: u32,
    pub generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// An interned room: a slab key into the room table.
pub type RoomKey = usize;
/// An interned user: a slab key into the user table.
pub type UserKey = usize;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A hub client: rooms, users, presence.
    #[default]
    Hub,
    /// `/echo`: every message comes back unchanged; in no room and no user set.
    Echo,
}

/// One open connection as the hub sees it.
#[derive(Debug)]
pub struct Session {
    pub id: ConnId,
    pub kind: Kind,
    /// The user (always set for hub sessions; echo sessions have none).
    pub user: Option<UserKey>,
    /// Rooms this connection is in, with its position in each room's member list.
    pub rooms: Vec<(RoomKey, u32)>,
    /// The room named in the connection URL, while joined: where binary
    /// frames go (a `u32`, so the session did not grow with `connected_at`).
    home_room: Option<u32>,
    /// When the connection opened, Unix milliseconds.
    pub connected_at: u64,
    /// The last frame received.
    pub last_seen: Instant,
    /// The message rate limit's bucket.
    pub rate: super::RateBucket,
    /// What the token allows (`None`: everything).
    pub grants: Option<std::sync::Arc<super::Grants>>,
}

/// A room: members in a dense list (fan-out walks it), and each user's
/// presence in it (presence is per user, not per socket).
#[derive(Debug)]
pub struct Room {
    pub name: Arc<str>,
    pub members: Vec<ConnId>,
    /// Keyed by `UserKey` as `u32`, so an entry with its arrival time takes
    /// the 16 bytes the bare count took before (`(usize, u32)` padded).
    users: HashMap<u32, Presence>,
}

impl Session {
    /// The room named in the connection URL, while the connection is in it:
    /// where binary frames go.
    pub fn home_room(&self) -> Option<RoomKey> {
        self.home_room.map(|k| k as RoomKey)
    }
}

impl Room {
    /// Distinct users in the room.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Each user in the room with their presence there.
    pub fn presences(&self) -> impl Iterator<Item = (UserKey, Presence)> + '_ {
        self.users.iter().map(|(&u, &p)| (u as UserKey, p))
    }

    /// One user's presence in the room, if they are in it.
    pub fn presence_of(&self, user: UserKey) -> Option<Presence> {
        self.users.get(&(user as u32)).copied()
    }
}

/// One user in one room: twelve bytes, four-aligned (packed: its fields are
/// read through the methods, by value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Presence {
    connections: u32,
    since: u64,
}

impl Presence {
    /// The user's connections in the room.
    pub fn connections(self) -> u32 {
        self.connections
    }

    /// When the first of them joined, Unix milliseconds.
    pub fn since(self) -> u64 {
        self.since
    }
}

/// A user: every connection they hold (all their devices), oldest first.
#[derive(Debug)]
pub struct User {
    pub name: Arc<str>,
    pub conns: Vec<ConnId>,
}

/// Result of adding a connection to a room.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// Already a member: nothing changed.
    Already(RoomKey),
    /// Added; `first_of_user` if no other connection of the user was there.
    Added { key: RoomKey, first_of_user: bool },
    /// At the per-connection room limit.
    TooManyRooms,
}

/// The registry: sessions, rooms and users with reverse links.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Vec<Option<Session>>,
    live: usize,
    rooms: Slab<Room>,
    room_index: HashMap<Arc<str>, RoomKey>,
    users: Slab<User>,
    user_index: HashMap<Arc<str>, UserKey>,
    /// The `info` of the connections that have one (most have none, and pay
    /// nothing), as the bytes received.
    infos: HashMap<ConnId, Box<RawValue>>,
}

impl Registry {
    /// Number of open sessions (hub and echo).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of users with at least one connection.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The session for `id`, if it is open and of the same generation.
    pub fn session(&self, id: ConnId) -> Option<&Session> {
        self.sessions
            .get(id.index as usize)?
            .as_ref()
            .filter(|s| s.id == id)
    }

    pub(crate) fn session_mut(&mut self, id: ConnId) -> Option<&mut Session> {
        self.sessions
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|s| s.id == id)
    }

    /// Every open session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter().flatten()
    }

    pub fn room(&self, key: RoomKey) -> Option<&Room> {
        self.rooms.get(key)
    }

    pub fn room_key(&self, name: &str) -> Option<RoomKey> {
        self.room_index.get(name).copied()
    }

    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter().map(|(_, r)| r)
    }

    pub fn user(&self, key: UserKey) -> Option<&User> {
        self.users.get(key)
    }

    pub fn user_key(&self, name: &str) -> Option<UserKey> {
        self.user_index.get(name).copied()
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.iter().map(|(_, u)| u)
    }

    /// How many connections `name` holds.
    pub fn user_connections(&self, name: &str) -> usize {
        self.user_key(name).map_or(0, |k| self.users[k].conns.len())
    }

    /// The `info` of connection `id`, if it has one.
    pub fn info(&self, id: ConnId) -> Option<&RawValue> {
        self.infos.get(&id).map(|b| &**b)
    }

    /// A user's info: that of their most recently opened connection still
    /// open (none if that one has none). O(1) when nobody has info.
    pub fn user_info(&self, key: UserKey) -> Option<&RawValue> {
        if self.infos.is_empty() {
            return None;
        }
        self.info(*self.users.get(key)?.conns.last()?)
    }

    /// The room named in the connection URL, while the connection is in it.
    pub fn home_room(&self, id: ConnId) -> Option<RoomKey> {
        self.session(id)?.home_room()
    }

    /// Make `key` (a room `id` is in) its URL room.
    pub(crate) fn set_home_room(&mut self, id: ConnId, key: RoomKey) {
        let Ok(key) = u32::try_from(key) else { return };
        if let Some(s) = self.session_mut(id) {
            s.home_room = Some(key);
        }
    }

    /// Add a session, opened at `now` (Unix milliseconds `connected_at`).
    /// The caller has checked that `id.index` is free and the per-user cap.
    pub fn insert(
        &mut self,
        id: ConnId,
        kind: Kind,
        user: Option<&str>,
        info: Option<Box<RawValue>>,
        now: Instant,
        connected_at: u64,
    ) {
        let user = user.map(|user| {
            let key = match self.user_index.get(user) {
                Some(&k) => k,
                None => {
                    let name: Arc<str> = Arc::from(user);
                    let k = self.users.insert(User {
                        name: name.clone(),
                        conns: Vec::new(),
                    });
                    self.user_index.insert(name, k);
                    k
                }
            };
            self.users[key].conns.push(id);
            key
        });
        let index = id.index as usize;
        if self.sessions.len() <= index {
            self.sessions.resize_with(index + 1, || None);
        }
        debug_assert!(
            self.sessions[index].is_none(),
            "slot {index} reused while open"
        );
        self.sessions[index] = Some(Session {
            id,
            kind,
            user,
            rooms: Vec::new(),
            home_room: None,
            connected_at,
            last_seen: now,
            rate: super::RateBucket::new(now),
            grants: None,
        });
        if let Some(info) = info {
            self.infos.insert(id, info);
        }
        self.live += 1;
    }

    /// Put `id` in the room `name`, creating the room if needed; `now_ms`
    /// is the Unix time in milliseconds (a user's arrival in the room).
    pub fn join(&mut self, id: ConnId, name: &str, max_rooms: usize, now_ms: u64) -> Joined {
        let existing = self.room_index.get(name).copied();
        let Some(session) = self.sessions[id.index as usize].as_ref() else {
            unreachable!("join on a closed session")
        };
        if let Some(key) = existing {
            if session.rooms.iter().any(|&(r, _)| r == key) {
                return Joined::Already(key);
            }
        }
        if session.rooms.len() >= max_rooms {
            return Joined::TooManyRooms;
        }
        let Some(user) = session.user else {
            unreachable!("echo sessions join no room")
        };
        let key = existing.unwrap_or_else(|| {
            let name: Arc<str> = Arc::from(name);
            let key = self.rooms.insert(Room {
                name: name.clone(),
                members: Vec::new(),
                users: HashMap::new(),
            });
            self.room_index.insert(name, key);
            key
        });
        let room = &mut self.rooms[key];
        let pos = room.members.len() as u32;
        room.members.push(id);
        let presence = room.users.entry(user as u32).or_insert(Presence {
            connections: 0,
            since: now_ms,
        });
        presence.connections += 1;
        let first_of_user = { presence.connections } == 1;
        let session = self.sessions[id.index as usize]
            .as_mut()
            .expect("checked above");
        session.rooms.push((key, pos));
        Joined::Added { key, first_of_user }
    }

    /// Take `id` out of room `key`. Returns `Some(last_of_user)` if it was a
    /// member. A room left empty is removed from the index at once.
    pub fn leave(&mut self, id: ConnId, key: RoomKey) -> Option<bool> {
        let session = self.sessions[id.index as usize].as_mut()?;
        let at = session.rooms.iter().position(|&(r, _)| r == key)?;
        let (_, pos) = session.rooms.swap_remove(at);
        let user = session.user.expect("room members have a user");
        if session.home_room.map(|k| k as RoomKey) == Some(key) {
            session.home_room = None;
        }
        let room = &mut self.rooms[key];
        room.members.swap_remove(pos as usize);
        if let Some(&moved) = room.members.get(pos as usize) {
            // The last member moved into `pos`: fix its back-link.
            let other = self.sessions[moved.index as usize]
                .as_mut()
                .expect("members are open");
            let link = other
                .rooms
                .iter_mut()
                .find(|(r, _)| *r == key)
                .expect("back-link");
            link.1 = pos;
        }
        let presence = room
            .users
            .get_mut(&(user as u32))
            .expect("member's user is counted");
        presence.connections -= 1;
        let last_of_user = { presence.connections } == 0;
        if last_of_user {
            room.users.remove(&(user as u32));
        }
        if room.members.is_empty() {
            let room = self.rooms.remove(key);
            self.room_index.remove(&room.name);
        }
        Some(last_of_user)
    }

    /// Remove a session from every index. Calls `left(room, last_of_user)` for
    /// each room it was in, before the room may disappear.
    pub fn remove(&mut self, id: ConnId, mut left: impl FnMut(&Self, RoomKey, bool)) -> bool {
        let Some(session) = self.session(id) else {
            return false;
        };
        let user = session.user;
        while let Some(&(key, _)) = self.session(id).and_then(|s| s.rooms.last()) {
            let last = self.leave(id, key).expect("member of its own room");
            left(self, key, last);
        }
        if let Some(user) = user {
            let conns = &mut self.users[user].conns;
            let at = conns
                .iter()
                .position(|&c| c == id)
                .expect("session in its user's set");
            // Keep the order of opening: the newest is last (`user_info`).
            conns.remove(at);
            if conns.is_empty() {
                let u = self.users.remove(user);
                self.user_index.remove(&u.name);
            }
        }
        self.infos.remove(&id);
        self.sessions[id.index as usize] = None;
        self.live -= 1;
        true
    }

    /// Release capacity the tables grew for connections that have gone.
    pub fn shrink_to_fit(&mut self) {
        while matches!(self.sessions.last(), Some(None)) {
            self.sessions.pop();
        }
        self.sessions.shrink_to_fit();
        self.rooms.shrink_to_fit();
        self.room_index.shrink_to_fit();
        self.users.shrink_to_fit();
        self.user_index.shrink_to_fit();
        self.infos.shrink_to_fit();
    }

    /// Check every cross-link; panics with a description on the first broken one.
    /// Used by tests and fuzzing after each step.
    pub fn check_invariants(&self) {
        let mut seen = 0;
        for s in self.sessions() {
            seen += 1;
            match (s.kind, s.user) {
                (Kind::Hub, Some(u)) => {
                    let user = self.users.get(u).expect("session's user exists");
                    assert!(user.conns.contains(&s.id), "user set lacks {}", s.id);
                }
                (Kind::Echo, None) => assert!(s.rooms.is_empty(), "echo session in a room"),
                other => panic!("session {} has kind/user {other:?}", s.id),
            }
            for &(key, pos) in &s.rooms {
                let room = self.rooms.get(key).expect("session's room exists");
                assert_eq!(room.members[pos as usize], s.id, "back-link of {}", s.id);
            }
            if let Some(home) = s.home_room {
                assert!(
                    s.rooms.iter().any(|&(r, _)| r == home as RoomKey),
                    "home room not joined"
                );
            }
        }
        assert_eq!(seen, self.live, "live count");
        for (key, room) in &self.rooms {
            assert!(!room.members.is_empty(), "empty room {} kept", room.name);
            assert_eq!(self.room_index.get(&room.name), Some(&key));
            let mut per_user: HashMap<UserKey, u32> = HashMap::new();
            for m in &room.members {
                let s = self.session(*m).expect("member is open");
                assert!(s.rooms.iter().any(|&(r, _)| r == key));
                *per_user
                    .entry(s.user.expect("member has a user"))
                    .or_default() += 1;
            }
            let counted: HashMap<UserKey, u32> =
                room.presences().map(|(u, p)| (u, p.connections)).collect();
            assert_eq!(per_user, counted, "user counts of room {}", room.name);
        }
        assert_eq!(self.room_index.len(), self.rooms.len());
        for (key, user) in &self.users {
            assert!(
                !user.conns.is_empty(),
                "user {} kept with no connection",
                user.name
            );
            assert_eq!(self.user_index.get(&user.name), Some(&key));
            for c in &user.conns {
                assert_eq!(self.session(*c).map(|s| s.user), Some(Some(key)));
            }
        }
        assert_eq!(self.user_index.len(), self.users.len());
        for id in self.infos.keys() {
            assert!(self.session(*id).is_some(), "info kept for closed {id}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_info_and_times_cost_an_idle_connection_nothing() {
        // 120 bytes a session, and 16 a user's entry in a room, as before
        // `connected_at`, `since` and `info` existed (info lives in a side
        // table: only connections that have one pay for it).
        assert!(std::mem::size_of::<Session>() <= 120);
        assert_eq!(std::mem::size_of::<(u32, Presence)>(), 16);
    }
}
