//! What a connection's token allows: rooms (names or `prefix*` patterns) and
//! broadcasting. Connections without grants (auth off) may do everything.

/// Permissions carried by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Allowed rooms; `None` means any room.
    rooms: Option<Vec<RoomPattern>>,
    broadcast: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomPattern {
    Exact(String),
    Prefix(String),
}

impl Grants {
    /// From a token's optional `rooms` claim (names, or prefixes ending in
    /// `*` such as `chat:*`; a lone `*` allows every room) and `broadcast`.
    pub fn new(rooms: Option<Vec<String>>, broadcast: bool) -> Grants {
        let rooms = rooms.map(|list| {
            list.into_iter()
                .map(|r| match r.strip_suffix('*') {
                    Some(prefix) => RoomPattern::Prefix(prefix.to_string()),
                    None => RoomPattern::Exact(r),
                })
                .collect()
        });
        Grants { rooms, broadcast }
    }

    /// Whether `room` may be joined (and its presence asked for).
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p {
                RoomPattern::Exact(name) => name == room,
                RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
            }),
        }
    }

    /// Whether `broadcast` to everyone is allowed.
    pub fn may_broadcast(&self) -> bool {
        self.broadcast
    }
}
