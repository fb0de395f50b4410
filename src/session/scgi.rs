//! SCGI connections: one request each. The header netstring is parsed, the
//! body (if any) is drained unread, and the connection closes when the
//! response ends.

use std::time::Instant;

use crate::conn::{Close, ScgiPhase, Session, discard_input, read_into};
use crate::request::{HttpStatus, Rejection, route};
use crate::server::Server;
use crate::wire::Status;
use crate::wire::{cgi, scgi};

impl Server {
    pub(super) fn scgi_readable(&mut self, key: usize, now: Instant) {
        let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
            return;
        };
        let Session::Scgi(s) = &mut conn.session else {
            return;
        };
        let result = match s.phase {
            ScgiPhase::Head => read_into(
                &mut conn.socket,
                &mut s.inbuf,
                scgi::MAX_HEADERS + 16,
                scratch,
            ),
            // The body is drained unread; reading also notices the web server hanging up.
            ScgiPhase::Opening(_) | ScgiPhase::Active(_) | ScgiPhase::Done => {
                discard_input(&mut conn.socket, scratch)
            }
        };
        if !self.read_ended(key, result) {
            self.scgi_process(key, now);
        }
    }

    fn scgi_process(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let Session::Scgi(s) = &mut conn.session else {
            return;
        };
        if conn.close != Close::No || !matches!(s.phase, ScgiPhase::Head) {
            return;
        }
        let input = std::mem::take(&mut s.inbuf);
        let routed = match scgi::parse(&input) {
            Ok(Status::Partial) => {
                s.inbuf = input;
                return;
            }
            Ok(Status::Complete((head, _))) => {
                let mut scratch = String::new();
                cgi::request(&head.pairs, &mut scratch)
                    .map_err(|e| Rejection::new(HttpStatus::BadRequest, e))
                    .and_then(|req| route(&req))
            }
            Err(e) => {
                self.conns
                    .warnings
                    .malformed
                    .note(now, || format!("conn={key} scgi {e}: closing"));
                self.conns.close(key, Close::Now);
                return;
            }
        };
        // The head's buffer was taken above, so a parked connection holds none;
        // the exchange (or the rejection) replaces this phase.
        s.phase = ScgiPhase::Done;
        self.start_routed(key, 0, routed, now);
    }
}
