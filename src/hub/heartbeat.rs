//! Heartbeat deadlines: one live entry per connection in a min-heap.
//!
//! Activity only updates `last_seen` on the session; the heap is touched when
//! an entry falls due (about once per ping interval per connection), and stale
//! entries (closed connections) are skipped when popped. Each tick is
//! O(due entries × log n) and never scans connections that are not due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::ConnId;

#[derive(Debug, Default)]
pub struct Heartbeats {
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
}

impl Heartbeats {
    /// Check `id` again at `at`.
    pub fn schedule(&mut self, at: Instant, id: ConnId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Take one entry whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<ConnId> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// Keep only entries for which `live` holds, and release spare capacity.
    pub fn retain(&mut self, mut live: impl FnMut(ConnId) -> bool) {
        self.heap.retain(|Reverse((_, id))| live(*id));
        self.heap.shrink_to_fit();
    }
}
