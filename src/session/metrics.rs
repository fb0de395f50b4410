//! Metrics connections (`--metrics`): read one HTTP request head, answer
//! `GET /metrics` with the Prometheus page (anything else gets 404), close.
//! The head is bounded like any HTTP head and must arrive within
//! `--request-timeout`; the page is rendered from [`crate::metrics`].

use std::time::Instant;

use crate::conn::{Close, ReadEnd, Session, read_into};
use crate::metrics::{Figures, Gauges};
use crate::outbuf::Chunk;
use crate::request::{Head, HttpStatus};
use crate::server::Server;
use crate::wire::Status;
use crate::wire::http;
use crate::wire::transport::Transport;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Server {
    /// Reads a scraper's request; answers it once the head is complete.
    pub(super) fn metrics_readable(&mut self, key: usize, now: Instant) {
        let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
            return;
        };
        if conn.close != Close::No {
            return;
        }
        let Session::Metrics(inbuf) = &mut conn.session else {
            return;
        };
        let result = read_into(&mut conn.socket, inbuf, http::MAX_HEAD, scratch);
        let full = matches!(result, Ok(ReadEnd::Full));
        if self.read_ended(key, result) {
            return;
        }
        let Some(Session::Metrics(inbuf)) = self.conns.slab.get(key).map(|c| &c.session) else {
            return;
        };
        let status = match http::parse(inbuf) {
            Ok(Status::Partial) if full => HttpStatus::BadRequest,
            Ok(Status::Partial) => return,
            Ok(Status::Complete((head, _))) => {
                let r = &head.request;
                if r.method == "GET" && r.path == "/metrics" {
                    HttpStatus::Ok
                } else {
                    HttpStatus::NotFound
                }
            }
            Err(_) => HttpStatus::BadRequest,
        };
        let body = if status == HttpStatus::Ok {
            self.conns.counters.scrapes += 1;
            self.figures(now).prometheus().into_bytes()
        } else {
            format!("{}: GET /metrics\n", status.code_reason().1).into_bytes()
        };
        let content_type = if status == HttpStatus::Ok {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        };
        let conn = &mut self.conns.slab[key];
        conn.push_head(0, &Head::sized(status, content_type, body.len()));
        conn.push_body(0, &mut vec![Chunk::Owned(body)]);
        self.conns.schedule_flush(key);
        self.conns.close(key, Close::AfterFlush);
    }

    /// Every figure the server reports, now: what `STATS` and the metrics
    /// page are rendered from.
    pub(crate) fn figures(&self, now: Instant) -> Figures<'_> {
        let mut gauges = Gauges {
            clients: self.clients,
            subscribers: self.subscribers.total(),
            control: self.conns.control,
            uptime: now.saturating_duration_since(self.started).as_secs(),
            ..Gauges::default()
        };
        for (_, conn) in &self.conns.slab {
            let gateway = match &conn.session {
                Session::Http(_) => 0,
                Session::Fcgi(_) => 1,
                Session::Scgi(_) => 2,
                Session::Control(_) | Session::Metrics(_) => continue,
            };
            gauges.by_gateway[gateway] += 1;
            for (_, ex) in conn.exchanges() {
                let transport = match ex.transport {
                    Transport::Sse => 0,
                    Transport::Poll => 1,
                    Transport::Stream => 2,
                };
                gauges.by_transport[transport] += 1;
            }
        }
        Figures {
            counters: &self.conns.counters,
            gauges,
            store: self.store.stats(),
        }
    }
}
