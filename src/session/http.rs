//! HTTP client connections: reading request heads (with keep-alive and
//! pipelining) and handing routed requests to the exchange logic.

use std::time::Instant;

use crate::conn::{Close, HttpPhase, ReadEnd, Session, discard_input, read_into};
use crate::request::{HttpStatus, Rejection, route};
use crate::server::Server;
use crate::wire::Status;
use crate::wire::http;
use crate::wire::transport::Transport;

use super::PIPELINE_HIGH;

impl Server {
    /// Reads what an HTTP client sent, then acts on complete request heads.
    /// Reading goes on while the input buffer fills up and requests are
    /// consumed (a client may pipeline far more than one buffer in one
    /// write, and readiness will not be reported again for bytes already
    /// waiting), and stops while the connection is paused; whatever pauses
    /// it leaves bytes in the socket, and the flush that unpauses it reads
    /// them.
    pub(super) fn http_readable(&mut self, key: usize, now: Instant) {
        loop {
            let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
                return;
            };
            let Session::Http(h) = &mut conn.session else {
                return;
            };
            if conn.paused || conn.close == Close::Now {
                return;
            }
            let result = match &h.phase {
                HttpPhase::Head => {
                    read_into(&mut conn.socket, &mut h.inbuf, http::MAX_HEAD, scratch)
                }
                // A keep-alive client may pipeline its next request while
                // this one's mailbox opens or its long-poll is held.
                HttpPhase::Opening(_) if h.keep_alive => {
                    read_into(&mut conn.socket, &mut h.inbuf, http::MAX_HEAD, scratch)
                }
                HttpPhase::Active(ex) if ex.transport == Transport::Poll && h.keep_alive => {
                    read_into(&mut conn.socket, &mut h.inbuf, http::MAX_HEAD, scratch)
                }
                HttpPhase::Opening(_) | HttpPhase::Active(_) => {
                    discard_input(&mut conn.socket, scratch)
                }
            };
            let full = matches!(result, Ok(ReadEnd::Full));
            if self.read_ended(key, result) {
                return;
            }
            let before = self.http_buffered(key);
            self.http_process(key, now);
            if !full {
                return;
            }
            if self.http_buffered(key) >= before {
                // A full buffer behind a held long-poll: the rest stays in
                // the socket until the answer has gone out, and the flush
                // that sends it resumes reading.
                if let Some(conn) = self.conns.slab.get_mut(key) {
                    conn.paused = true;
                }
                return;
            }
        }
    }

    fn http_buffered(&self, key: usize) -> usize {
        match self.conns.slab.get(key).map(|c| &c.session) {
            Some(Session::Http(h)) => h.inbuf.len(),
            _ => 0,
        }
    }

    /// Handles every complete request head buffered on a connection in the
    /// head phase, one at a time: each is answered (or parked) before the
    /// next is parsed, and once [`PIPELINE_HIGH`] bytes of answers are
    /// queued the rest wait, unread, until the client has read them.
    pub(super) fn http_process(&mut self, key: usize, now: Instant) {
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return;
            };
            let Session::Http(h) = &mut conn.session else {
                return;
            };
            if conn.close != Close::No || !matches!(h.phase, HttpPhase::Head) {
                return;
            }
            if conn.out.len() > PIPELINE_HIGH {
                conn.paused = true;
                return;
            }
            let (routed, used, keep_alive) = match http::parse(&h.inbuf) {
                Ok(Status::Partial) => return,
                Ok(Status::Complete((head, used))) => (route(&head.request), used, head.keep_alive),
                Err(e) => {
                    log::debug!("conn={key} http {e}");
                    h.keep_alive = false;
                    let rejection = Rejection::new(HttpStatus::BadRequest, e.to_string());
                    self.reject(key, 0, rejection, now);
                    return;
                }
            };
            h.inbuf.drain(..used);
            if h.inbuf.is_empty() {
                h.inbuf = Vec::new();
            }
            h.keep_alive = keep_alive;
            self.start_routed(key, 0, routed, now);
        }
    }
}
