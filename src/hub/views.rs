//! Who is connected, for backends and operators: owned snapshots of a user's
//! connections and of a room's users, answered by `GET /api/users/<id>`,
//! `GET /api/rooms/<room>` and the embedding `Handle` alike.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ConnId, Hub, Kind};

/// A user and each of their connections.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub user: String,
    pub online: bool,
    /// How many connections the user holds.
    pub connections: usize,
    /// Every room any of them is in, sorted.
    pub rooms: Vec<String>,
    pub details: Vec<ConnectionView>,
}

/// One connection of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionView {
    /// As in its `welcome`.
    pub connection_id: String,
    /// The node holding it (its `welcome`'s `node`).
    pub node: String,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// The last frame received, Unix milliseconds.
    pub last_seen: u64,
    pub rooms: Vec<String>,
    /// `/ws` or `/echo`.
    pub route: String,
    /// The room named in the URL (`/ws/<room>`), while the connection is in it.
    pub url_room: Option<String>,
    /// The peer's address (the driver fills it in; the hub knows no sockets).
    pub remote_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// The connection, for the driver (of this node's connections).
    #[serde(skip)]
    pub id: ConnId,
}

/// A room and its users.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub room: String,
    /// Distinct users.
    pub members: usize,
    pub connections: usize,
    /// At most the limit asked for.
    pub users: Vec<String>,
    pub truncated: bool,
    /// One per entry of `users`.
    pub details: Vec<MemberView>,
}

/// One user of a room.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub user: String,
    /// The user's connections in the room.
    pub connections: u32,
    /// When the user entered the room, Unix milliseconds.
    pub since: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

impl Hub {
    /// `user` and each of their connections. O(their connections × rooms).
    pub fn user_view(&self, user: &str) -> UserView {
        let reg = self.registry();
        let Some(u) = reg.user_key(user).and_then(|k| reg.user(k)) else {
            return UserView {
                user: user.to_string(),
                online: false,
                connections: 0,
                rooms: Vec::new(),
                details: Vec::new(),
            };
        };
        let room_name = |key| reg.room(key).map(|r| r.name.to_string());
        let details: Vec<ConnectionView> = u
            .conns
            .iter()
            .filter_map(|&id| reg.session(id))
            .map(|s| ConnectionView {
                connection_id: s.id.to_string(),
                node: self.node_id().to_string(),
                connected_at: s.connected_at,
                last_seen: self.unix_ms(s.last_seen),
                rooms: s.rooms.iter().filter_map(|&(r, _)| room_name(r)).collect(),
                route: match s.kind {
                    Kind::Hub => "/ws",
                    Kind::Echo => "/echo",
                }
                .to_string(),
                url_room: reg.home_room(s.id).and_then(room_name),
                remote_addr: None,
                info: reg.info(s.id).map(ToOwned::to_owned),
                id: s.id,
            })
            .collect();
        let mut rooms: Vec<String> = details.iter().flat_map(|d| d.rooms.clone()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        UserView {
            user: user.to_string(),
            online: true,
            connections: u.conns.len(),
            rooms,
            details,
        }
    }

    /// `room` and up to `limit` of its users with their info, connections
    /// there and arrival. O(listed users × their connections).
    pub fn room_view(&self, room: &str, limit: usize) -> RoomView {
        let reg = self.registry();
        let Some(r) = reg.room_key(room).and_then(|k| reg.room(k)) else {
            return RoomView {
                room: room.to_string(),
                members: 0,
                connections: 0,
                users: Vec::new(),
                truncated: false,
                details: Vec::new(),
            };
        };
        let details: Vec<MemberView> = self
            .member_details(r, limit, true)
            .into_iter()
            .map(|d| MemberView {
                user: d.user.to_string(),
                connections: d.connections,
                since: d.since,
                info: d.info.map(ToOwned::to_owned),
            })
            .collect();
        RoomView {
            room: room.to_string(),
            members: r.user_count(),
            connections: r.members.len(),
            users: details.iter().map(|d| d.user.clone()).collect(),
            truncated: details.len() < r.user_count(),
            details,
        }
    }
}
