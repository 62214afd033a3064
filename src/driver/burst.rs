//! A burst: the room frames one connection's input produces one after
//! another (a publisher's pipelined messages, typing), queued to the room's
//! members as one frame when the burst ends. A fan-out of k frames to n
//! members then costs n queue pushes and reference counts instead of k·n,
//! and each member's queue holds one contiguous buffer for its send
//! (instead of k frames gathered per member).
//!
//! Only frames for `Target::Room { except: Some(reader) }` join a burst,
//! where `reader` is the connection whose input is being handled. That
//! target's recipients are the room's members other than the reader, and
//! nothing a connection's own input does changes them: a client joins,
//! leaves and closes only itself. So a burst queued when the reader's input
//! ends reaches exactly whom each of its frames would have reached at once.
//! The driver ends a burst before it carries out any other output, before
//! any other input or timer reaches the hub, and before any write, so every
//! connection's frames keep the hub's order.

use bytes::Bytes;

use crate::hub::{ConnId, Target};

/// Frames at least this big are queued on their own (as today: no copy).
pub const FRAME_MAX: usize = 2 * 1024;
/// Most bytes in one burst (one send's worth; then another burst starts).
pub const BYTES_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub struct Burst {
    to: Target,
    /// The first frame, queued as it is when the burst has no second.
    first: Bytes,
    /// Every frame of the burst, once there is a second one.
    joined: Vec<u8>,
    frames: u64,
}

impl Burst {
    /// Whether a frame for `to` may join a burst while `reader`'s input is
    /// handled.
    pub fn fits(to: Target, frame: &[u8], reader: Option<ConnId>) -> bool {
        match to {
            Target::Room {
                except: Some(from), ..
            } => reader == Some(from) && frame.len() < FRAME_MAX,
            _ => false,
        }
    }

    pub fn new(to: Target, first: Bytes) -> Self {
        Burst {
            to,
            first,
            joined: Vec::new(),
            frames: 1,
        }
    }

    /// Add `frame` if it goes to the same target and the burst has room;
    /// otherwise give it back.
    pub fn add(&mut self, to: Target, frame: Bytes) -> Result<(), Bytes> {
        let len = if self.frames == 1 {
            self.first.len()
        } else {
            self.joined.len()
        };
        if to != self.to || len + frame.len() > BYTES_MAX {
            return Err(frame);
        }
        if self.frames == 1 {
            self.joined.reserve(4 * (self.first.len() + frame.len()));
            self.joined.extend_from_slice(&self.first);
        }
        self.joined.extend_from_slice(&frame);
        self.frames += 1;
        Ok(())
    }

    /// The target, the frame to queue to each of its recipients, and how
    /// many messages it carries.
    pub fn finish(self) -> (Target, Bytes, u64) {
        let frame = if self.frames == 1 {
            self.first
        } else {
            Bytes::from(self.joined)
        };
        (self.to, frame, self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RoomKey;

    fn room(key: RoomKey, except: Option<ConnId>) -> Target {
        Target::Room { room: key, except }
    }

    #[test]
    fn only_the_readers_own_room_frames_join() {
        let reader = ConnId::default();
        let key = RoomKey::default();
        let small = [0u8; 100];
        assert!(Burst::fits(room(key, Some(reader)), &small, Some(reader)));
        assert!(!Burst::fits(room(key, Some(reader)), &small, None));
        assert!(!Burst::fits(room(key, None), &small, Some(reader)));
        assert!(!Burst::fits(Target::Conn(reader), &small, Some(reader)));
        assert!(!Burst::fits(
            Target::All {
                except: Some(reader)
            },
            &small,
            Some(reader)
        ));
        assert!(!Burst::fits(
            room(key, Some(reader)),
            &[0u8; FRAME_MAX],
            Some(reader)
        ));
    }

    #[test]
    fn one_frame_is_queued_as_it_is_and_more_are_joined_in_order() {
        let to = room(RoomKey::default(), Some(ConnId::default()));
        let first = Bytes::from_static(b"one");
        let alone = Burst::new(to, first.clone());
        let (t, frame, n) = alone.finish();
        assert_eq!((t, n), (to, 1));
        assert_eq!(frame.as_ptr(), first.as_ptr(), "not copied");

        let mut burst = Burst::new(to, first);
        burst.add(to, Bytes::from_static(b"two")).unwrap();
        burst.add(to, Bytes::from_static(b"three")).unwrap();
        let (_, frame, n) = burst.finish();
        assert_eq!((&frame[..], n), (&b"onetwothree"[..], 3));
    }

    #[test]
    fn another_target_or_a_full_burst_is_refused() {
        let to = room(RoomKey::default(), Some(ConnId::default()));
        let mut burst = Burst::new(to, Bytes::from(vec![1u8; 1000]));
        let other = room(RoomKey::default(), None);
        assert!(burst.add(other, Bytes::from_static(b"x")).is_err());
        let mut added = 1;
        while burst.add(to, Bytes::from(vec![1u8; 1000])).is_ok() {
            added += 1;
        }
        assert_eq!(added, BYTES_MAX / 1000);
        let (_, frame, n) = burst.finish();
        assert_eq!((frame.len(), n), (added * 1000, added as u64));
    }
}
