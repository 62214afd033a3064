//! Who is connecting. The seam where token auth plugs in: the driver asks
//! [`identify`] for every WebSocket request before the handshake completes,
//! and a refusal becomes an HTTP error response (never a 101).

use crate::driver::http::{query_param, RequestHead};
use crate::hub::ANONYMOUS_PREFIX;

/// The identity a connection will have in the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id; `None` means "give this connection an anonymous id".
    pub user: Option<String>,
}

/// A refused request: HTTP status and a short body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

/// Identify a WebSocket request. With auth off (the only mode so far) the
/// user comes from `?user=<id>`, bounded by `max_user_id_len`.
pub fn identify(head: &RequestHead, max_user_id_len: usize) -> Result<Identity, Rejection> {
    let bad = |message: String| {
        Err(Rejection {
            status: 400,
            message,
        })
    };
    match query_param(head.query.as_deref(), "user") {
        None => Ok(Identity { user: None }),
        Some(None) => bad("user id is not valid percent-encoded UTF-8".into()),
        Some(Some(user)) if user.is_empty() => bad("user id is empty".into()),
        Some(Some(user)) if user.len() > max_user_id_len => {
            bad(format!("user id longer than {max_user_id_len} bytes"))
        }
        Some(Some(user)) if user.starts_with(ANONYMOUS_PREFIX) => bad(format!(
            "user ids starting with `{ANONYMOUS_PREFIX}` are reserved for anonymous connections"
        )),
        Some(Some(user)) => Ok(Identity { user: Some(user) }),
    }
}
