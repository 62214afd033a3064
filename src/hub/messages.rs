//! Server -> client messages, serialized straight from borrowed fields.
//! `data` is raw JSON passed through unchanged.

use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
pub struct Welcome<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub connection_id: &'a str,
    pub user: &'a str,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// The node the connection is on.
    pub node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    pub heartbeat: HeartbeatInfo,
    pub limits: Limits,
}

#[derive(Serialize)]
pub struct HeartbeatInfo {
    pub ping_interval: f64,
    pub ping_timeout: f64,
}

#[derive(Serialize)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_rooms: usize,
    pub max_room_name_len: usize,
}

#[derive(Serialize)]
pub struct RoomMessage<'a> {
    /// Always `message`: a frame with history starts `{"type":"message",`
    /// then `"seq":N,` ([`crate::protocol::sequenced_message`] relies on it).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Rooms with history: the message's number in the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub room: &'a str,
    pub from: Option<&'a str>,
    pub data: &'a RawValue,
}

impl RoomMessage<'_> {
    /// Its frame, allocated once at about its size (escapes aside).
    pub fn frame(&self) -> crate::protocol::SharedFrame {
        let hint = self.room.len() + self.from.map_or(4, str::len) + self.data.get().len();
        crate::protocol::json_frame_sized(self, hint + 64)
    }
}

#[derive(Serialize)]
pub struct Private<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub from: Option<&'a str>,
    pub data: &'a RawValue,
}

#[derive(Serialize)]
pub struct Broadcast<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub from: Option<&'a str>,
    pub data: &'a RawValue,
}

#[derive(Serialize)]
pub struct Typing<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub user: &'a str,
}

/// `user_joined` / `user_left`.
#[derive(Serialize)]
pub struct PresenceEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub user: &'a str,
    pub members: usize,
    /// `user_joined`: the user's info, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// `joined` / `presence`: exact member count, bounded user list.
#[derive(Serialize)]
pub struct MemberList<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub members: usize,
    pub users: Vec<&'a str>,
    pub truncated: bool,
    /// Asked for with `"details": true`: one per entry of `users`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a [MemberDetail<'a>]>,
    /// `joined` in a room with history: its epoch and latest seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `joined` after a `join` with `since`: whether every missed message
    /// follows (true) or none does (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

/// The head of a `history` reply; its `messages` are written after it
/// from the stored frames.
#[derive(Serialize)]
pub struct HistoryHead<'a> {
    /// `history` (the API's body has none).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub room: &'a str,
    /// `null` when the room has no history (yet).
    pub epoch: Option<&'a str>,
    pub seq: u64,
    /// Messages after `since` are missing before the first one given (over
    /// the limit, no longer held, or `since` from another epoch).
    pub truncated: bool,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

/// One user of a room, in detail (`presence`/`joined` with `details`, the
/// room view of the server API).
#[derive(Serialize, Clone, Copy)]
pub struct MemberDetail<'a> {
    pub user: &'a str,
    /// The user's connections in the room.
    pub connections: u32,
    /// When the user entered the room (their first connection there
    /// joined), Unix milliseconds.
    pub since: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

#[derive(Serialize)]
pub struct Left<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub members: usize,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

#[derive(Serialize)]
pub struct Pong<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

#[derive(Serialize)]
pub struct Error<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    pub message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}
