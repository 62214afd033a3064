//! The embedding seam: a host program's [`Handler`] authorizes joins and
//! answers message types the hub does not know, without forking the crate.

use serde_json::value::RawValue;

use super::{ConnId, Hub};

/// Hooks a host program implements. Every method has a default, so a
/// handler overrides only what it needs. Called on the server's thread.
pub trait Handler: Send {
    /// May `user` join `room`? Refusals answer the client `forbidden`.
    /// Called after token grants (if any) allowed it.
    fn authorize_join(&mut self, user: &str, room: &str) -> bool {
        let _ = (user, room);
        true
    }

    /// A connection of `user` is opening with `info` (from its token or
    /// URL, already checked); return the info it should have: the same,
    /// another JSON object (e.g. looked up in the host's user database), or
    /// none. What is returned is held to the same rules (an object of at
    /// most `--max-info-bytes`); otherwise it is dropped with a warning.
    fn connection_info(
        &mut self,
        user: &str,
        info: Option<Box<RawValue>>,
    ) -> Option<Box<RawValue>> {
        let _ = user;
        info
    }

    /// A client message whose `type` the hub does not know. Return `true` if
    /// handled (use `ctx` to reply or publish); `false` answers `unknown_type`.
    fn on_message(&mut self, ctx: &mut Context<'_>, kind: &str, message: &RawValue) -> bool {
        let _ = (ctx, kind, message);
        false
    }
}

/// What a handler may do while handling a client message.
pub struct Context<'a> {
    pub(super) hub: &'a mut Hub,
    pub(super) conn: ConnId,
    pub(super) user: String,
}

impl Context<'_> {
    /// The sender's user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The sender's connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Reply to the sender with any JSON object (it should carry a `type`).
    pub fn reply(&mut self, message: &serde_json::Value) {
        self.hub.reply(self.conn, message);
    }

    /// Publish to a room, as the server API does (`from: null`).
    pub fn publish(&mut self, room: &str, data: &RawValue) -> usize {
        self.hub.publish(room, data)
    }

    /// Send to every connection of a user (`from: null`).
    pub fn send_to_user(&mut self, user: &str, data: &RawValue) -> usize {
        self.hub.send_to_user(user, data)
    }
}
