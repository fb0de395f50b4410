//! Connection sessions: the state machine that drives one socket of each
//! kind (see [`crate::conn::Kind`]), reading its wire format and acting on
//! what arrives.
//!
//! | module | drives |
//! |---|---|
//! | [`control`] | a backend on the control socket: commands applied, replies in order |
//! | [`http`] | a client (or web server) over HTTP: heads, keep-alive, pipelining |
//! | [`fcgi`] | a web server over FastCGI: records, concurrent requests, abort |
//! | [`scgi`] | a web server over SCGI: one request per connection |
//! | [`exchange`] | what every client gateway shares: a request parked on a mailbox |
//! | [`metrics`] | a monitoring system: one `GET /metrics`, answered, closed |
//! | [`handover`] | every kind, frozen for a binary upgrade and thawed by the new process |

mod control;
mod exchange;
mod fcgi;
mod handover;
mod http;
mod metrics;
mod scgi;

pub(crate) use handover::Restore;

/// How long a FastCGI connection that a web server keeps for reuse
/// (`FCGI_KEEP_CONN`) may sit idle between requests. Web servers pool
/// upstream connections for about a minute (nginx's `keepalive_timeout`
/// default is 60 s) and open a new one when a pooled one was closed.
pub const FCGI_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// What all clients' unfinished requests (partial heads, FastCGI `PARAMS`)
/// may hold together: 8,000 slow clients with a full 8 KiB HTTP head each.
/// Per connection it is already bounded (8 KiB HTTP, 32 KiB SCGI, 64 KiB
/// FastCGI `PARAMS` plus two records); this bounds their sum, whatever
/// `--max-connections` allows.
pub const MAX_HEAD_MEMORY: usize = 64 << 20;

/// Answers queued on one client connection above which its further
/// pipelined requests wait unread until the client reads: a well-behaved
/// client has one or two answers in flight, and a client that pipelines
/// without reading then holds at most this plus one answer.
pub const PIPELINE_HIGH: usize = 64 * 1024;

/// Metrics connections open at once; a scraper needs one, a few more cover
/// several scrapers and a person with curl.
pub const MAX_METRICS_CONNS: usize = 16;
