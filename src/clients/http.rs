//! HTTP client connections: reading request heads (with keep-alive and
//! pipelining) and handing routed requests to the exchange logic.

use std::time::Instant;

use crate::codec::Status;
use crate::conn::{Close, HttpPhase, Proto, discard_input, read_into};
use crate::gateway::http;
use crate::request::{Rejection, Status as HttpStatus, route};
use crate::server::Server;
use crate::transport::Transport;

impl Server {
    /// Reads what an HTTP client sent, then acts on complete request heads.
    pub(super) fn http_readable(&mut self, key: usize, now: Instant) {
        let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
            return;
        };
        let Proto::Http(h) = &mut conn.proto else {
            return;
        };
        let result = match &h.phase {
            HttpPhase::Head { .. } => {
                read_into(&mut conn.socket, &mut h.inbuf, http::MAX_HEAD, scratch)
            }
            // A keep-alive long-poll client may pipeline its next request.
            HttpPhase::Active(ex) if ex.transport == Transport::Poll && h.keep_alive => {
                read_into(&mut conn.socket, &mut h.inbuf, http::MAX_HEAD, scratch)
            }
            HttpPhase::Active(_) => discard_input(&mut conn.socket, scratch),
        };
        if !self.read_ended(key, result) {
            self.http_process(key, now);
        }
    }

    /// Handles every complete request head buffered on a connection in the head phase.
    pub(super) fn http_process(&mut self, key: usize, now: Instant) {
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return;
            };
            let Proto::Http(h) = &mut conn.proto else {
                return;
            };
            if conn.close != Close::No || !matches!(h.phase, HttpPhase::Head { .. }) {
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
