//! FastCGI connections: records in, requests (possibly several at once) out.
//!
//! Per request: `BEGIN_REQUEST` creates it, `PARAMS` accumulate until the
//! empty record that ends them, then the request is routed like any other.
//! `STDIN` and `DATA` are drained unread. `ABORT_REQUEST` ends the request at
//! once with `END_REQUEST`. Records for unknown request ids are ignored, as
//! the specification asks. A malformed record closes the connection with a
//! log line; other connections never notice.

use std::time::Instant;

use crate::conn::{Close, FcgiPhase, FcgiRequest, ReadEnd, Session, read_into, sub_id};
use crate::request::{HttpStatus, Rejection, route};
use crate::server::Server;
use crate::timer::TimerId;
use crate::wire::Status;
use crate::wire::{cgi, fcgi};

use super::PIPELINE_HIGH;

/// Concurrent requests on one connection (`FCGI_MAX_REQS`). Web servers send
/// one at a time; this only bounds a multiplexing peer.
pub const MAX_REQS: usize = 64;

/// `PARAMS` bytes per request: every client header is forwarded, and 32 KiB
/// is far above what browsers send.
const MAX_PARAMS: usize = 32 * 1024;

/// `PARAMS` bytes held for all unfinished requests of one connection: two
/// maximal heads. Without it a peer could open [`MAX_REQS`] requests and
/// drip parameters into each, holding 2 MiB per connection.
const MAX_CONN_PARAMS: usize = 2 * MAX_PARAMS;

impl Server {
    /// Reads records and handles each complete one. Like HTTP, reading goes
    /// on while the buffer fills and records are consumed, and stops while
    /// more than [`PIPELINE_HIGH`] bytes of output wait for the web server.
    pub(super) fn fcgi_readable(&mut self, key: usize, now: Instant) {
        loop {
            let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
                return;
            };
            let Session::Fcgi(f) = &mut conn.session else {
                return;
            };
            if conn.paused || conn.close == Close::Now {
                return;
            }
            let result = read_into(
                &mut conn.socket,
                &mut f.inbuf,
                2 * fcgi::MAX_RECORD,
                scratch,
            );
            let full = matches!(result, Ok(ReadEnd::Full));
            if self.read_ended(key, result) {
                return;
            }
            if !self.fcgi_process(key, now) || !full {
                return;
            }
        }
    }

    /// Handles every complete record buffered; false when the connection
    /// closed or paused before the buffer was used up.
    fn fcgi_process(&mut self, key: usize, now: Instant) -> bool {
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return false;
            };
            let Session::Fcgi(f) = &mut conn.session else {
                return false;
            };
            if conn.close == Close::Now {
                return false;
            }
            if conn.out.len() > PIPELINE_HIGH {
                conn.paused = true;
                return false;
            }
            let input = std::mem::take(&mut f.inbuf);
            let used = match fcgi::parse(&input) {
                Ok(Status::Partial) => {
                    f.inbuf = input;
                    if f.inbuf.is_empty() {
                        f.inbuf = Vec::new();
                    }
                    return true;
                }
                Ok(Status::Complete((record, used))) => {
                    self.fcgi_record(key, record, now);
                    used
                }
                Err(e) => {
                    self.fcgi_malformed(key, &e.to_string(), now);
                    return false;
                }
            };
            if let Some(Session::Fcgi(f)) = self.conns.slab.get_mut(key).map(|c| &mut c.session) {
                let mut input = input;
                input.drain(..used);
                f.inbuf = input;
            }
        }
    }

    fn fcgi_record(&mut self, key: usize, record: fcgi::FcgiRecord<'_>, now: Instant) {
        let rid = record.request_id;
        let max_conns = self.config.max_connections;
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let Session::Fcgi(f) = &mut conn.session else {
            return;
        };
        match record.kind {
            fcgi::BEGIN_REQUEST => {
                let (role, flags) = match fcgi::parse_begin(record.content) {
                    Ok(x) if rid != 0 && f.request_mut(rid).is_none() => x,
                    Ok(_) => {
                        return self.fcgi_malformed(
                            key,
                            "BEGIN_REQUEST for id 0 or an id already in use",
                            now,
                        );
                    }
                    Err(e) => return self.fcgi_malformed(key, &e.to_string(), now),
                };
                let keep_conn = flags & fcgi::KEEP_CONN != 0;
                let refusal = if role != fcgi::ROLE_RESPONDER {
                    Some(fcgi::UNKNOWN_ROLE)
                } else if f.requests.len() >= MAX_REQS {
                    Some(fcgi::OVERLOADED)
                } else {
                    None
                };
                match refusal {
                    None => {
                        let timer =
                            self.timers
                                .insert(now + self.config.request_timeout, key, rid as u32);
                        f.requests.push(FcgiRequest {
                            id: rid,
                            keep_conn,
                            phase: FcgiPhase::Params {
                                params: Vec::new(),
                                timer,
                            },
                        });
                        conn.timer = TimerId::NONE;
                    }
                    Some(status) => {
                        log::debug!(
                            "conn={key} fastcgi request {rid} refused (role {role}, status {status})"
                        );
                        conn.out.push_bytes(&fcgi::end_request(rid, status)[8..]);
                        if !keep_conn {
                            self.conns.close(key, Close::AfterFlush);
                        }
                        self.conns.schedule_flush(key);
                    }
                }
            }
            fcgi::PARAMS => {
                let held = f.params_bytes();
                let Some(FcgiRequest {
                    phase: FcgiPhase::Params { params, .. },
                    ..
                }) = f.request_mut(rid)
                else {
                    return;
                };
                if !record.content.is_empty() {
                    if held + record.content.len() > MAX_CONN_PARAMS {
                        return self.fcgi_malformed(
                            key,
                            "unfinished requests hold more than 64 KiB of PARAMS",
                            now,
                        );
                    }
                    if params.len() + record.content.len() > MAX_PARAMS {
                        let rejection = Rejection::new(
                            HttpStatus::BadRequest,
                            "request headers larger than 32 KiB",
                        );
                        self.start_routed(key, rid, Err(rejection), now);
                    } else {
                        params.extend_from_slice(record.content);
                    }
                    return;
                }
                let params = std::mem::take(params);
                // The exchange (or the rejection) replaces the params phase and its deadline.
                let routed = match fcgi::parse_pairs(&params) {
                    Ok(pairs) => {
                        let mut scratch = String::new();
                        cgi::request(&pairs, &mut scratch)
                            .map_err(|e| Rejection::new(HttpStatus::BadRequest, e))
                            .and_then(|req| route(&req))
                    }
                    Err(e) => return self.fcgi_malformed(key, &e.to_string(), now),
                };
                self.start_routed(key, rid, routed, now);
            }
            fcgi::STDIN | fcgi::DATA => {}
            fcgi::ABORT_REQUEST => {
                let Some(request) = f.request_mut(rid) else {
                    return;
                };
                if let FcgiPhase::Active(ex) = &request.phase {
                    let mailbox = ex.mailbox.clone();
                    self.unsubscribe(&mailbox, sub_id(key, rid), now);
                }
                log::debug!("conn={key} fastcgi request {rid} aborted by the web server");
                self.finish(key, rid, false, now);
            }
            fcgi::GET_VALUES if rid == 0 => {
                match fcgi::get_values_result(record.content, max_conns, MAX_REQS) {
                    Ok(answer) => {
                        conn.out.push_bytes(&answer);
                        self.conns.schedule_flush(key);
                    }
                    Err(e) => self.fcgi_malformed(key, &e.to_string(), now),
                }
            }
            other => {
                log::debug!("conn={key} fastcgi unknown record type {other}");
                conn.out.push_bytes(&fcgi::unknown_type(other));
                self.conns.schedule_flush(key);
            }
        }
    }

    fn fcgi_malformed(&mut self, key: usize, what: &str, now: Instant) {
        self.conns
            .warnings
            .malformed
            .note(now, || format!("conn={key} fastcgi {what}: closing"));
        self.conns.close(key, Close::Now);
    }
}
