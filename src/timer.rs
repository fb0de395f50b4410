//! Deadlines: heartbeats, long-poll holds and request-head timeouts.
//!
//! One binary heap of `(when, connection key, slot)`. Entries are never
//! removed early: when one fires, the owner compares it with the deadline it
//! currently holds and ignores it if they differ. That keeps rescheduling
//! O(log n) with no back-pointers, at the price of a few stale entries.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The slot of a connection-level deadline (reading the request head);
/// request-level deadlines use the request id (0..=65535).
pub const HEAD_SLOT: u32 = 1 << 16;

/// A fired deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The instant it was set for.
    pub at: Instant,
    /// The connection key.
    pub key: usize,
    /// [`HEAD_SLOT`] or a request id.
    pub slot: u32,
}

/// Pending deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Timers {
    /// Schedules a deadline.
    pub fn insert(&mut self, at: Instant, key: usize, slot: u32) {
        self.heap.push(Reverse((at, key, slot)));
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns one deadline that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((at, key, slot)) = self.heap.pop()?;
                Some(Due { at, key, slot })
            }
            _ => None,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_only_when_due() {
        let t = Instant::now();
        let mut timers = Timers::default();
        timers.insert(t + Duration::from_secs(2), 1, 0);
        timers.insert(t + Duration::from_secs(1), 2, HEAD_SLOT);
        assert_eq!(timers.next_deadline(), Some(t + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t), None);
        let due = timers.pop_due(t + Duration::from_secs(5)).unwrap();
        assert_eq!((due.key, due.slot), (2, HEAD_SLOT));
        assert_eq!(timers.pop_due(t + Duration::from_secs(5)).unwrap().key, 1);
        assert!(timers.is_empty());
    }
}
