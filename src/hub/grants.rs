//! What a connection's token allows: rooms (names or `prefix*` patterns) and
//! broadcasting. Connections without grants (auth off) may do everything.

/// Permissions carried by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Allowed rooms; `None` means any room.
    rooms: Option<RoomPatterns>,
    broadcast: bool,
}

/// A list of room names and `prefix*` patterns (a lone `*` is every room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPatterns(Vec<RoomPattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomPattern {
    Exact(String),
    Prefix(String),
}

impl RoomPatterns {
    /// From names and patterns ending in `*`.
    pub fn new(list: impl IntoIterator<Item = String>) -> RoomPatterns {
        RoomPatterns(
            list.into_iter()
                .map(|r| match r.strip_suffix('*') {
                    Some(prefix) => RoomPattern::Prefix(prefix.to_string()),
                    None => RoomPattern::Exact(r),
                })
                .collect(),
        )
    }

    /// Every room (`*`).
    pub fn all() -> RoomPatterns {
        RoomPatterns(vec![RoomPattern::Prefix(String::new())])
    }

    /// Whether `room` is named or matches a pattern.
    pub fn matches(&self, room: &str) -> bool {
        self.0.iter().any(|p| match p {
            RoomPattern::Exact(name) => name == room,
            RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        })
    }
}

impl Default for RoomPatterns {
    fn default() -> Self {
        RoomPatterns::all()
    }
}

impl Grants {
    /// From a token's optional `rooms` claim (names, or prefixes ending in
    /// `*` such as `chat:*`; a lone `*` allows every room) and `broadcast`.
    pub fn new(rooms: Option<Vec<String>>, broadcast: bool) -> Grants {
        Grants {
            rooms: rooms.map(RoomPatterns::new),
            broadcast,
        }
    }

    /// Whether `room` may be joined (and its presence asked for).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|p| p.matches(room))
    }

    /// Whether `broadcast` to everyone is allowed.
    pub fn may_broadcast(&self) -> bool {
        self.broadcast
    }
}
