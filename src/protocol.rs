//! The wire protocol: client messages (decoded borrowing from the frame),
//! stable error codes, close codes, and pre-encoded server frames.
//!
//! `data` is kept as raw JSON text ([`RawValue`]) from decode to encode, so it
//! arrives at recipients byte for byte as the sender wrote it, and is never
//! parsed into a tree.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A decoded client message. Borrowed from the received text.
#[derive(Debug)]
pub enum ClientMsg<'a> {
    Join {
        room: Cow<'a, str>,
        /// Also answer each listed user's info, connections and arrival.
        details: bool,
        /// Where the client was in the room's history: replay what it
        /// missed, or say it cannot (`recovered`).
        since: Option<Since<'a>>,
    },
    Leave {
        room: Cow<'a, str>,
    },
    Message {
        room: Cow<'a, str>,
        data: &'a RawValue,
        echo: bool,
    },
    Private {
        to: Cow<'a, str>,
        data: &'a RawValue,
    },
    Broadcast {
        data: &'a RawValue,
        echo: bool,
    },
    Typing {
        room: Cow<'a, str>,
    },
    Presence {
        room: Cow<'a, str>,
        /// As for `Join`.
        details: bool,
    },
    /// A room's latest messages (after `since`, at most `limit`).
    History {
        room: Cow<'a, str>,
        since: Option<Since<'a>>,
        limit: Option<u64>,
    },
    Ping,
    Pong,
}

/// A client's place in a room's history: `{"epoch": E, "seq": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since<'a> {
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    pub seq: u64,
}

/// The raw shape every client message is first read into.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    details: Option<bool>,
    #[serde(borrow, default)]
    since: Option<Since<'a>>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(rename = "ref", borrow, default, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
}

/// A field that is present, even as `null`, is `Some` (serde maps `null` to `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RefOnly<'a> {
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
}

/// Why a client message was refused. `code()` is the stable `error.code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not valid JSON.
    BadJson,
    /// Valid JSON of the wrong shape: not an object, a missing or mistyped field.
    BadMessage,
    /// A `type` the server does not know.
    UnknownType,
    /// Sending to or leaving a room the connection has not joined.
    NotInRoom,
    /// A room name longer than the configured limit, or empty.
    RoomNameTooLong,
    /// Joining more rooms than the per-connection limit.
    TooManyRooms,
    /// A private message to a user with no open connection.
    UserOffline,
    /// Not allowed (a later issue's permissions).
    Forbidden,
    /// Over the per-connection rate limit.
    RateLimited,
    /// A payload over a size limit.
    PayloadTooLarge,
    /// Cluster mode: the cluster could not be asked (Redis unreachable
    /// or busy), so whether it was delivered is not known.
    Unavailable,
    /// `history` of a room that keeps none (`--history-size`, `--history-rooms`).
    NoHistory,
}

impl ErrorCode {
    /// The stable string clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RoomNameTooLong => "room_name_too_long",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::UserOffline => "user_offline",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoHistory => "no_history",
        }
    }
}

/// A refused message: the code, a human message, and the client's `ref` if any.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    pub reference: Option<&'a RawValue>,
}

impl<'a> Refusal<'a> {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
            reference: None,
        }
    }
}

/// Why a connection's `info` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInfo {
    /// Not JSON, or JSON nested too deep or with out-of-range numbers.
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// More than `--max-info-bytes` bytes.
    TooLong,
}

/// Check a connection's `info` as received: a JSON object of at most `max`
/// bytes that recipients' parsers can take (the limits of client messages).
/// It is stored and sent on as these very bytes.
pub fn check_info(text: &str, max: usize) -> Result<Box<RawValue>, BadInfo> {
    if text.len() > max {
        return Err(BadInfo::TooLong);
    }
    if check_json_limits(text).is_err() {
        return Err(BadInfo::NotJson);
    }
    let raw = RawValue::from_string(text.to_owned()).map_err(|_| BadInfo::NotJson)?;
    let json_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    if !raw.get().trim_start_matches(json_space).starts_with('{') {
        return Err(BadInfo::NotObject);
    }
    Ok(raw)
}

/// Deepest nesting of arrays and objects accepted in a client message.
pub const MAX_JSON_DEPTH: usize = 64;

/// One pass over the text, outside strings: nesting within [`MAX_JSON_DEPTH`]
/// and every number finite as an f64. `data` is passed on as raw text, so this
/// is what keeps recipients' parsers safe from stack-deep or infinite values.
pub fn check_json_limits(text: &str) -> Result<(), Refusal<'static>> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Refusal::new(
                        ErrorCode::BadJson,
                        format!("JSON nested deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &text[start..=i];
                let risky = number.len() > 15 || number.contains(['e', 'E']);
                if risky && !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(Refusal::new(
                        ErrorCode::BadMessage,
                        "number out of range for a 64-bit float",
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Decode one client text message. On success returns the message and its `ref`.
pub fn decode<'a>(text: &'a str) -> Result<(ClientMsg<'a>, Option<&'a RawValue>), Refusal<'a>> {
    check_json_limits(text)?;
    if !text.trim_start().starts_with('{') {
        let code = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ErrorCode::BadMessage,
            Err(_) => ErrorCode::BadJson,
        };
        let message = match code {
            ErrorCode::BadMessage => "a message must be a JSON object with a `type`",
            _ => "not valid JSON",
        };
        return Err(Refusal::new(code, message));
    }
    let env: Envelope = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            use serde_json::error::Category;
            let code = match e.classify() {
                Category::Data => ErrorCode::BadMessage,
                _ => ErrorCode::BadJson,
            };
            let reference = match code {
                ErrorCode::BadMessage => serde_json::from_str::<RefOnly>(text)
                    .ok()
                    .and_then(|r| r.reference),
                _ => None,
            };
            return Err(Refusal {
                code,
                message: e.to_string().into(),
                reference,
            });
        }
    };
    let reference = env.reference;
    let missing = |field: &'static str| Refusal {
        code: ErrorCode::BadMessage,
        message: format!("`{}` needs the field `{field}`", env.ty).into(),
        reference,
    };
    let room = |r: Option<Cow<'a, str>>| r.ok_or_else(|| missing("room"));
    let msg = match &*env.ty {
        "join" => ClientMsg::Join {
            room: room(env.room)?,
            details: env.details.unwrap_or(false),
            since: env.since,
        },
        "leave" => ClientMsg::Leave {
            room: room(env.room)?,
        },
        "message" => ClientMsg::Message {
            room: room(env.room)?,
            data: env.data.ok_or_else(|| missing("data"))?,
            echo: env.echo.unwrap_or(false),
        },
        "private" => ClientMsg::Private {
            to: env.to.ok_or_else(|| missing("to"))?,
            data: env.data.ok_or_else(|| missing("data"))?,
        },
        "broadcast" => ClientMsg::Broadcast {
            data: env.data.ok_or_else(|| missing("data"))?,
            echo: env.echo.unwrap_or(false),
        },
        "typing" => ClientMsg::Typing {
            room: room(env.room)?,
        },
        "presence" => ClientMsg::Presence {
            room: room(env.room)?,
            details: env.details.unwrap_or(false),
        },
        "history" => ClientMsg::History {
            room: room(env.room)?,
            since: env.since,
            limit: env.limit,
        },
        "ping" => ClientMsg::Ping,
        "pong" => ClientMsg::Pong,
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(Refusal {
                code: ErrorCode::UnknownType,
                message: format!("unknown message type `{shown}`").into(),
                reference,
            });
        }
    };
    Ok((msg, reference))
}

/// Why the server closes a connection: one table from reason to close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text frame was not valid UTF-8.
    InvalidUtf8,
    /// 1008: the user already has the maximum number of connections.
    UserConnectionLimit,
    /// 1009: a message over the size limit.
    MessageTooBig,
    /// 4100: no frame from the client within ping interval + timeout.
    HeartbeatTimeout,
    /// 4101: the output queue went over its byte cap.
    SlowConsumer,
    /// 4102: kept sending over the message rate limit.
    RateLimited,
    /// 4103: cluster mode: this node missed messages of a room with
    /// history that it could not fill in; reconnect and rejoin with `since`.
    HistoryGap,
    /// A code chosen by the server's operator (API or embedding; 4000 by default).
    Server(u16),
}

impl CloseReason {
    /// The close code sent on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::UserConnectionLimit => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::HeartbeatTimeout => 4100,
            CloseReason::SlowConsumer => 4101,
            CloseReason::RateLimited => 4102,
            CloseReason::HistoryGap => 4103,
            CloseReason::Server(code) => code,
        }
    }

    /// The close reason text sent on the wire.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "Server shutting down",
            CloseReason::ProtocolError => "Protocol error",
            CloseReason::InvalidUtf8 => "Invalid UTF-8",
            CloseReason::UserConnectionLimit => "Connection limit reached",
            CloseReason::MessageTooBig => "Message too big",
            CloseReason::HeartbeatTimeout => "Heartbeat timeout",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::HistoryGap => "missed room messages: rejoin to recover",
            CloseReason::Server(_) => "disconnected by the server",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.text())
    }
}

/// Largest WebSocket frame header a server writes (no mask).
const MAX_HEADER: usize = 10;

/// A complete, pre-encoded server WebSocket frame (header + payload). Cloning
/// is a reference-count increment, so one frame serves every recipient.
pub type SharedFrame = Bytes;

/// Builds one server text frame: the payload is written after a reserved
/// header gap, then the header is put in place — one allocation, no copy.
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    /// Start a text frame whose payload is expected to be about `hint` bytes.
    pub fn text(hint: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + hint);
        buf.resize(MAX_HEADER, 0);
        FrameWriter { buf }
    }

    /// The payload buffer to write JSON into.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Finish a FIN frame with the given opcode (1 = text, 2 = binary).
    pub fn finish_with_opcode(mut self, opcode: u8) -> SharedFrame {
        let len = self.buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | opcode;
        let n = if len < 126 {
            header[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = MAX_HEADER - n;
        self.buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
        Bytes::from(self.buf).slice(start..)
    }

    /// Finish a text frame.
    pub fn finish(self) -> SharedFrame {
        self.finish_with_opcode(0x1)
    }
}

/// A server message's JSON text (no frame), e.g. what travels through Redis.
pub fn json_body<T: serde::Serialize + ?Sized>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("server messages always serialize"))
}

/// How every room message's JSON starts; in cluster mode its `seq` (known
/// only once Redis numbered it) is put right after.
pub const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","#;

/// A room message's frame with its `seq`, from the message's JSON without
/// one (as it travels through Redis). `None` unless `body` is UTF-8 and
/// starts like a room message: whatever else is published is not sent on.
pub fn sequenced_message(body: &[u8], seq: u64) -> Option<SharedFrame> {
    use std::io::Write;
    let rest = body.strip_prefix(MESSAGE_PREFIX)?;
    std::str::from_utf8(rest).ok()?;
    let mut w = FrameWriter::text(body.len() + 24);
    let out = w.payload();
    out.extend_from_slice(MESSAGE_PREFIX);
    let _ = write!(out, "\"seq\":{seq},");
    out.extend_from_slice(rest);
    Some(w.finish())
}

/// The payload of a frame this server encoded (past its header).
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let start = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => frame.len(),
    };
    frame.get(start..).unwrap_or_default()
}

/// Encode a binary frame carrying `payload` (one copy into the frame buffer).
pub fn binary_frame(payload: &[u8]) -> SharedFrame {
    let mut w = FrameWriter::text(payload.len());
    w.payload().extend_from_slice(payload);
    w.finish_with_opcode(0x2)
}

/// Encode a text frame carrying `payload` verbatim.
pub fn text_frame(payload: &[u8]) -> SharedFrame {
    let mut w = FrameWriter::text(payload.len());
    w.payload().extend_from_slice(payload);
    w.finish()
}

/// Encode a JSON value as one text frame.
pub fn json_frame<T: serde::Serialize + ?Sized>(value: &T) -> SharedFrame {
    json_frame_sized(value, 128)
}

/// [`json_frame`] with room for about `hint` bytes of JSON: one allocation
/// of the right size (a frame kept in a room's history keeps it).
pub fn json_frame_sized<T: serde::Serialize + ?Sized>(value: &T, hint: usize) -> SharedFrame {
    let mut w = FrameWriter::text(hint);
    serde_json::to_writer(w.payload(), value).expect("server messages always serialize");
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        decode(text).err().unwrap().code.code()
    }

    #[test]
    fn decodes_every_type() {
        let (m, r) = decode(r#"{"type":"message","room":"a","data":{"x":[1,2]},"ref":7}"#).unwrap();
        match m {
            ClientMsg::Message { room, data, echo } => {
                assert_eq!(room, "a");
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert!(!echo);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.unwrap().get(), "7");
        assert!(matches!(
            decode(r#"{"type":"ping"}"#).unwrap().0,
            ClientMsg::Ping
        ));
        assert!(matches!(
            decode(r#"{"type":"pong"}"#).unwrap().0,
            ClientMsg::Pong
        ));
        assert!(matches!(
            decode(r#"{"type":"private","to":"bob","data":1}"#)
                .unwrap()
                .0,
            ClientMsg::Private { .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"broadcast","data":null,"echo":true}"#)
                .unwrap()
                .0,
            ClientMsg::Broadcast { echo: true, .. }
        ));
        assert!(matches!(
            decode(r#"{"type":"join","room":"r\u00e9"}"#).unwrap().0,
            ClientMsg::Join { room, .. } if room == "ré"
        ));
    }

    #[test]
    fn bad_inputs_get_stable_codes() {
        assert_eq!(code("{"), "bad_json");
        assert_eq!(code("not json"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_message");
        assert_eq!(code("42"), "bad_message");
        assert_eq!(code(r#"{"room":"a"}"#), "bad_message");
        assert_eq!(code(r#"{"type":5}"#), "bad_message");
        assert_eq!(code(r#"{"type":"join"}"#), "bad_message");
        assert_eq!(code(r#"{"type":"join","room":7}"#), "bad_message");
        assert_eq!(code(r#"{"type":"message","room":"a"}"#), "bad_message");
        assert_eq!(code(r#"{"type":"fly"}"#), "unknown_type");
        let deep = "[".repeat(100_000);
        assert_eq!(code(&deep), "bad_json");
        let deep_closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep_closed), "bad_json");
        assert_eq!(
            code(r#"{"type":"message","room":"a","data":1e999999}"#),
            "bad_message"
        );
        assert_eq!(
            code(r#"{"type":"message","room":"a","data":-1E400}"#),
            "bad_message"
        );
        let ok = r#"{"type":"message","room":"a","data":[1e300,"[[[[\"\\",{"x":-0.5e-3}]}"#;
        assert!(decode(ok).is_ok());
        let nested_ok = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert!(decode(&format!(
            r#"{{"type":"message","room":"a","data":{nested_ok}}}"#
        ))
        .is_ok());
        let nest = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_obj = format!(r#"{{"type":"message","room":"a","data":{nest}}}"#);
        assert_eq!(code(&deep_obj), "bad_json");
    }

    #[test]
    fn refusals_keep_the_ref() {
        let e = decode(r#"{"type":"fly","ref":"x1"}"#).err().unwrap();
        assert_eq!(e.reference.unwrap().get(), r#""x1""#);
        let e = decode(r#"{"type":"join","ref":3}"#).err().unwrap();
        assert_eq!(e.reference.unwrap().get(), "3");
        let e = decode(r#"{"type":"join","room":[],"ref":4}"#)
            .err()
            .unwrap();
        assert_eq!(e.reference.unwrap().get(), "4");
    }

    #[test]
    fn frames_have_minimal_headers() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70_000] {
            let payload = vec![b'a'; len];
            let f = text_frame(&payload);
            let mut expect = Vec::new();
            tungstenite::protocol::frame::Frame::message(
                payload.clone(),
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut expect)
            .unwrap();
            assert_eq!(&f[..], &expect[..], "len {len}");
        }
    }
}
