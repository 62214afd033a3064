//! The settings of the pure core (no I/O settings); `crate::config` fills
//! them from flags, environment and file.

use std::time::Duration;

use super::grants::RoomPatterns;

/// Settings the pure hub core needs (no I/O settings).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Send a protocol Ping after this much silence from a client.
    pub ping_interval: Duration,
    /// Close a client silent for `ping_interval + ping_timeout` (code 4100).
    pub ping_timeout: Duration,
    /// Connections one user may hold at once; the next is closed with 1008.
    pub max_connections_per_user: usize,
    /// Rooms one connection may be in at once (`too_many_rooms`).
    pub max_rooms_per_connection: usize,
    /// Longest room name in bytes (`room_name_too_long`).
    pub max_room_name_len: usize,
    /// Longest user id in bytes (refused at the handshake).
    pub max_user_id_len: usize,
    /// `user_joined` / `user_left` are announced only in rooms with at most
    /// this many distinct users, so big rooms do not turn joins quadratic.
    pub presence_announce_limit: usize,
    /// Longest user list in a `joined` or `presence` reply (`truncated: true` beyond).
    pub member_list_limit: usize,
    /// Largest message a hub client may send, in bytes (over it: close 1009).
    pub max_message_size: usize,
    /// Messages per second one hub connection may send on average (0: no limit).
    pub rate_limit: f64,
    /// Messages one hub connection may send at once above the average.
    pub rate_burst: u32,
    /// Refused messages in a row before the connection is closed (4102).
    pub rate_limit_close_after: u32,
    /// Close code sent when a connection's token expires.
    pub token_expired_code: u16,
    /// Largest connection `info` (a JSON object), in bytes as received.
    pub max_info_bytes: usize,
    /// Cluster mode: what crosses nodes leaves as outputs and comes back
    /// through `handle_cluster_*` (see `hub::cluster`).
    pub cluster: bool,
    /// Messages of history kept per room (0: no history).
    pub history_size: usize,
    /// A room's history is dropped this long after its last message.
    pub history_ttl: Duration,
    /// Rooms that keep history (names and `prefix*`).
    pub history_rooms: RoomPatterns,
    /// Bytes of history over all rooms; past it the oldest histories go.
    pub history_max_bytes: usize,
    /// Most messages one recovery (`join` with `since`) replays.
    pub max_recover: usize,
    /// Most bytes one recovery replays, or one `history` reply holds, so
    /// either fits in a connection's output queue (half its cap).
    pub max_replay_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            max_connections_per_user: 5,
            max_rooms_per_connection: 100,
            max_room_name_len: 128,
            max_user_id_len: 128,
            presence_announce_limit: 100,
            member_list_limit: 100,
            max_message_size: 64 * 1024,
            rate_limit: 1000.0,
            rate_burst: 2000,
            rate_limit_close_after: 100,
            token_expired_code: 4001,
            max_info_bytes: 1024,
            cluster: false,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            history_rooms: RoomPatterns::all(),
            history_max_bytes: 64 << 20,
            max_recover: 300,
            max_replay_bytes: 512 << 10,
        }
    }
}
