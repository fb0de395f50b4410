//! Messages and their shared payloads.
//!
//! A payload is delivered to many mailboxes (a group `PUBLISH`) and read by
//! many subscribers (browser tabs), but each mailbox gives it its own id. So a
//! [`Message`] is a small `(id, Rc<Payload>)` pair, and the payload caches its
//! wire encodings: the SSE body and the JSON-escaped string are built once, on
//! first use, and then shared by every subscriber that receives it.

use std::cell::OnceCell;
use std::rc::Rc;

/// The immutable content of a delivery: optional event name and UTF-8 data.
#[derive(Debug)]
pub struct Payload {
    event: Option<Box<str>>,
    data: Rc<[u8]>,
    sse: OnceCell<Rc<[u8]>>,
    json: OnceCell<Rc<[u8]>>,
}

impl Payload {
    /// Builds a payload; `data` must already have been checked to be UTF-8.
    pub fn new(event: Option<&str>, data: &str) -> Rc<Payload> {
        Rc::new(Payload {
            event: event.map(Box::from),
            data: Rc::from(data.as_bytes()),
            sse: OnceCell::new(),
            json: OnceCell::new(),
        })
    }

    /// The event name given at delivery, if any.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The raw payload bytes (valid UTF-8).
    pub fn data(&self) -> &Rc<[u8]> {
        &self.data
    }

    /// Size charged against a mailbox's `retain-bytes` budget.
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
