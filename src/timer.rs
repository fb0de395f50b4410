//! Deadlines: heartbeats, long-poll holds, request-head, idle and drain timeouts.
//!
//! One binary heap of `(when, id, connection key, slot)`. Every deadline gets
//! a [`TimerId`] that is never reused, and its owner keeps the id of the one
//! deadline it currently honours. Entries are never removed early: when one
//! fires, the owner compares ids and ignores it if they differ. So a deadline
//! left over from an earlier phase of a connection (a head timeout armed
//! before a keep-alive request, a heartbeat of a finished stream) can never
//! cut a later phase short, even when both fall on the same instant, and
//! rescheduling stays O(log n) with no back-pointers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// The slot of a connection-level deadline (head, idle or drain);
/// request-level deadlines use the request id (0..=65535).
pub const CONN_SLOT: u32 = 1 << 16;

/// Names one scheduled deadline; unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimerId(u64);

impl TimerId {
    /// No deadline: matches no fired entry.
    pub const NONE: TimerId = TimerId(0);
}

/// A fired deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Which deadline it was.
    pub id: TimerId,
    /// The connection key.
    pub key: usize,
    /// [`CONN_SLOT`] or a request id.
    pub slot: u32,
}

/// Pending deadlines. Every parked subscriber has one or two entries, so an
/// entry is kept at 32 bytes: connection keys are stored as `u32` (a slab
/// of connections never nears four billion).
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerId, u32, u32)>>,
    last: u64,
}

impl Timers {
    /// Schedules a deadline and returns its id.
    pub fn insert(&mut self, at: Instant, key: usize, slot: u32) -> TimerId {
        self.last += 1;
        let id = TimerId(self.last);
        debug_assert!(u32::try_from(key).is_ok(), "connection key {key} over u32");
        self.heap.push(Reverse((at, id, key as u32, slot)));
        id
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Removes and returns one deadline that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse((at, ..))) if *at <= now => {
                let Reverse((_, id, key, slot)) = self.heap.pop()?;
                Some(Due {
                    id,
                    key: key as usize,
                    slot,
                })
            }
            _ => None,
        }
    }

    /// Every pending deadline by id, stale ones included (a handover
    /// looks up the deadlines its connections honour).
    pub fn deadlines(&self) -> std::collections::HashMap<TimerId, Instant> {
        self.heap
            .iter()
            .map(|Reverse((at, id, _, _))| (*id, *at))
            .collect()
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
        let late = timers.insert(t + Duration::from_secs(2), 1, 0);
        let early = timers.insert(t + Duration::from_secs(1), 2, CONN_SLOT);
        assert_eq!(timers.next_deadline(), Some(t + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t), None);
        let due = timers.pop_due(t + Duration::from_secs(5)).unwrap();
        assert_eq!((due.id, due.key, due.slot), (early, 2, CONN_SLOT));
        assert_eq!(timers.pop_due(t + Duration::from_secs(5)).unwrap().id, late);
        assert!(timers.is_empty());
    }

    #[test]
    fn an_entry_stays_at_32_bytes() {
        assert_eq!(
            std::mem::size_of::<Reverse<(Instant, TimerId, u32, u32)>>(),
            32
        );
    }

    #[test]
    fn deadlines_on_the_same_instant_stay_distinct() {
        let t = Instant::now();
        let mut timers = Timers::default();
        let old = timers.insert(t, 7, CONN_SLOT);
        let new = timers.insert(t, 7, CONN_SLOT);
        assert_ne!(old, new);
        assert_ne!(new, TimerId::NONE);
        let fired: Vec<TimerId> = std::iter::from_fn(|| timers.pop_due(t).map(|d| d.id)).collect();
        assert_eq!(fired, vec![old, new]);
    }
}
