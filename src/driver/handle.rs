//! The embedding API's cross-thread side: a [`Handle`] (Clone + Send) that
//! other threads use to publish, send, broadcast, disconnect and shut down.
//! Commands go through a bounded channel and wake the loop with a
//! `mio::Waker`; the loop drains the whole channel per wake (wakes coalesce).

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::hub::{RoomView, UserView};

/// One request from another thread.
#[derive(Debug)]
pub(super) enum Command {
    Publish {
        room: String,
        data: Box<RawValue>,
    },
    PublishBinary {
        room: String,
        data: Vec<u8>,
    },
    Send {
        user: String,
        data: Box<RawValue>,
    },
    Broadcast {
        data: Box<RawValue>,
    },
    Disconnect {
        user: String,
        code: u16,
        reason: Option<String>,
    },
    /// Answered on `reply` (room for one answer: the loop never waits).
    QueryUser {
        user: String,
        reply: SyncSender<UserView>,
    },
    QueryRoom {
        room: String,
        limit: usize,
        reply: SyncSender<RoomView>,
    },
    Shutdown,
}

/// Why a [`Handle`] call did not reach the server.
#[derive(Debug)]
pub enum HandleError {
    /// The server has stopped.
    Stopped,
    /// `data` could not be serialized to JSON.
    Json(serde_json::Error),
    /// The command queue is full (`try_*` calls only).
    Full,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::Stopped => write!(f, "the switchboard server has stopped"),
            HandleError::Json(e) => write!(f, "data is not serializable as JSON: {e}"),
            HandleError::Full => write!(f, "the switchboard command queue is full"),
        }
    }
}

impl std::error::Error for HandleError {}

/// Talk to a running server from any thread. Cheap to clone.
///
/// Calls block only while the bounded command queue is full (the server is
/// behind); `try_publish` never blocks.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: SyncSender<Command>,
    pub(super) waker: Arc<mio::Waker>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handle")
    }
}

fn raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, HandleError> {
    serde_json::value::to_raw_value(data).map_err(HandleError::Json)
}

impl Handle {
    fn submit(&self, cmd: Command) -> Result<(), HandleError> {
        self.tx.send(cmd).map_err(|_| HandleError::Stopped)?;
        self.waker.wake().map_err(|_| HandleError::Stopped)
    }

    /// `{"type":"message","room":room,"from":null,"data":data}` to every member.
    pub fn publish<T: Serialize + ?Sized>(&self, room: &str, data: &T) -> Result<(), HandleError> {
        self.submit(Command::Publish {
            room: room.to_string(),
            data: raw(data)?,
        })
    }

    /// Like [`Handle::publish`] but never blocks: `Full` if the queue is full.
    pub fn try_publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
    ) -> Result<(), HandleError> {
        let cmd = Command::Publish {
            room: room.to_string(),
            data: raw(data)?,
        };
        match self.tx.try_send(cmd) {
            Ok(()) => self.waker.wake().map_err(|_| HandleError::Stopped),
            Err(TrySendError::Full(_)) => Err(HandleError::Full),
            Err(TrySendError::Disconnected(_)) => Err(HandleError::Stopped),
        }
    }

    /// A binary frame to every member of `room`.
    pub fn publish_binary(&self, room: &str, data: Vec<u8>) -> Result<(), HandleError> {
        self.submit(Command::PublishBinary {
            room: room.to_string(),
            data,
        })
    }

    /// `{"type":"private","from":null,"data":data}` to every connection of `user`.
    pub fn send<T: Serialize + ?Sized>(&self, user: &str, data: &T) -> Result<(), HandleError> {
        self.submit(Command::Send {
            user: user.to_string(),
            data: raw(data)?,
        })
    }

    /// `{"type":"broadcast","from":null,"data":data}` to every hub connection.
    pub fn broadcast<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), HandleError> {
        self.submit(Command::Broadcast { data: raw(data)? })
    }

    /// Close every connection of `user` with `code` and `reason`.
    pub fn disconnect(
        &self,
        user: &str,
        code: u16,
        reason: Option<&str>,
    ) -> Result<(), HandleError> {
        let reason = reason.map(|r| r.chars().take(60).collect());
        self.submit(Command::Disconnect {
            user: user.to_string(),
            code,
            reason,
        })
    }

    /// `user` and each of their connections (times, rooms, info, address,
    /// route), as `GET /api/users/<id>` answers. The answer arrives on the
    /// returned channel once the loop has taken the question; the loop never
    /// waits for the caller (and a `Handler` must not wait for the answer).
    pub fn user(&self, user: &str) -> Result<Receiver<UserView>, HandleError> {
        let (reply, answer) = sync_channel(1);
        self.submit(Command::QueryUser {
            user: user.to_string(),
            reply,
        })?;
        Ok(answer)
    }

    /// `room` and up to `limit` (at most 10,000) of its users with their
    /// info, connections there and arrival, as `GET /api/rooms/<room>?limit=`
    /// answers. Never wait for the answer on the server's own thread (in a
    /// `Handler` method): the loop answers only after the method returns.
    pub fn room(&self, room: &str, limit: usize) -> Result<Receiver<RoomView>, HandleError> {
        let (reply, answer) = sync_channel(1);
        self.submit(Command::QueryRoom {
            room: room.to_string(),
            limit,
            reply,
        })?;
        Ok(answer)
    }

    /// Graceful shutdown: stop accepting, close everyone with 1001, return from `run`.
    pub fn shutdown(&self) -> Result<(), HandleError> {
        self.submit(Command::Shutdown)
    }
}

/// The loop's end of the channel.
pub(super) type Commands = Receiver<Command>;
