//! Messages and their shared payloads.
//!
//! A payload is delivered to many mailboxes (a group `PUBLISH`) and read by
//! many subscribers (browser tabs), but each mailbox gives it its own id. So a
//! [`Message`] is a small `(id, Rc<Payload>)` pair, and the payload caches its
//! wire encodings: the SSE body and the JSON-escaped string are built once, on
//! first use, and then shared by every subscriber that receives it.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;

use crate::wire::transport;

/// Heap bookkeeping of one payload beyond its bytes: the `Payload` itself
/// in its `Rc`, the headers of the three shared byte buffers, and allocator
/// rounding.
const PAYLOAD_OVERHEAD: usize = std::mem::size_of::<Payload>() + 16 + 3 * 16 + 32;

/// The immutable content of a delivery: optional event name and UTF-8 data.
#[derive(Debug)]
pub struct Payload {
    event: Option<Box<str>>,
    data: Rc<[u8]>,
    sse: OnceCell<Rc<[u8]>>,
    json: OnceCell<Rc<[u8]>>,
    /// Memory it takes once both encodings are built.
    cost: usize,
    /// How many mailboxes retain it.
    holders: Cell<u32>,
}

impl Payload {
    /// Builds a payload; `data` must already have been checked to be UTF-8.
    pub fn new(event: Option<&str>, data: &str) -> Rc<Payload> {
        let cost = PAYLOAD_OVERHEAD
            + data.len()
            + event.map_or(0, str::len)
            + transport::sse_body_len(event, data.as_bytes())
            + transport::json_tail_len(event, data);
        Rc::new(Payload {
            event: event.map(Box::from),
            data: Rc::from(data.as_bytes()),
            sse: OnceCell::new(),
            json: OnceCell::new(),
            cost,
            holders: Cell::new(0),
        })
    }

    /// Bytes this payload occupies with both encodings built: what
    /// retaining it costs, charged against `--retain-bytes` and `--max-memory`.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Records one more mailbox retaining it; true for the first.
    pub fn hold(&self) -> bool {
        let n = self.holders.get();
        self.holders.set(n + 1);
        n == 0
    }

    /// Records one mailbox fewer retaining it; true for the last.
    pub fn release(&self) -> bool {
        let n = self.holders.get();
        debug_assert!(n > 0, "released more often than held");
        self.holders.set(n.saturating_sub(1));
        n == 1
    }

    /// The event name given at delivery, if any.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The raw payload bytes (valid UTF-8).
    pub fn data(&self) -> &Rc<[u8]> {
        &self.data
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The cached SSE body (everything after the `id:` line), built on first use.
    pub fn sse_body(&self, encode: impl FnOnce(&Payload) -> Vec<u8>) -> &Rc<[u8]> {
        self.sse.get_or_init(|| Rc::from(encode(self)))
    }

    /// The cached JSON message tail (everything after `"id":N`), built on first use.
    pub fn json_tail(&self, encode: impl FnOnce(&Payload) -> Vec<u8>) -> &Rc<[u8]> {
        self.json.get_or_init(|| Rc::from(encode(self)))
    }
}

/// One message as retained by one mailbox: its server-wide id and the shared payload.
#[derive(Debug, Clone)]
pub struct Message {
    /// Unique and strictly increasing across the server.
    pub id: u64,
    /// Shared with every other mailbox the same `PUBLISH` reached.
    pub payload: Rc<Payload>,
}
