//! Control connections: backends' requests applied to the store.
//!
//! Input is framed by [`control::parse_frame`] and each request answered in
//! order. Replies accumulate in the connection's output; above
//! [`CONTROL_OUT_HIGH`] bytes the connection stops reading until they drain,
//! so a backend that pipelines without reading replies is slowed down, never
//! cut off and never able to grow our memory. An oversize payload is skipped
//! byte by byte as it arrives rather than buffered.

use std::time::Instant;

use crate::conn::{Close, Proto, ReadEnd, read_into, split_sub};
use crate::control::{self, ControlError, ErrorCode, Frame, Reply, Request};
use crate::message::Payload;
use crate::server::Server;
use crate::store::StoreError;

/// Replies queued for one backend before its input is paused: enough for
/// ~10,000 pipelined `SEND` replies in flight.
const CONTROL_OUT_HIGH: usize = 256 * 1024;

impl Server {
    /// Reads and handles what a backend sent.
    pub(crate) fn control_readable(&mut self, key: usize, now: Instant) {
        // A request line plus the largest payload and its newline always fits,
        // so a complete frame can never be stuck behind a full buffer.
        let limit = control::MAX_LINE + self.config.max_message + 4;
        loop {
            let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
                return;
            };
            let Proto::Control(c) = &mut conn.proto else {
                return;
            };
            if conn.paused || conn.close != Close::No {
                return;
            }
            c.last_active = now;
            let end = match read_into(&mut conn.socket, &mut c.inbuf, limit, scratch) {
                Ok(end) => end,
                Err(e) => {
                    log::debug!("conn={key} control read failed: {e}");
                    self.conns.close(key, Close::Now);
                    return;
                }
            };
            self.control_process(key, now);
            match end {
                ReadEnd::Full => continue,
                ReadEnd::Blocked => return,
                ReadEnd::Eof => {
                    // Replies to what was pipelined before the close still go out.
                    self.conns.close(key, Close::AfterFlush);
                    return;
                }
            }
        }
    }

    /// Continues a backend whose replies have drained.
    pub(crate) fn control_resume(&mut self, key: usize, now: Instant) {
        self.control_process(key, now);
        self.control_readable(key, now);
    }

    /// Handles every complete request buffered on a control connection.
    fn control_process(&mut self, key: usize, now: Instant) {
        let max_message = self.config.max_message;
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let queued = conn.out.len();
        let Proto::Control(c) = &mut conn.proto else {
            return;
        };
        let input = std::mem::take(&mut c.inbuf);
        let mut skip = c.skip;
        let mut replies = Vec::new();
        let mut consumed = 0;
        let (mut paused, mut close) = (false, false);
        loop {
            if skip > 0 {
                let n = skip.min(input.len() - consumed);
                consumed += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            if queued + replies.len() > CONTROL_OUT_HIGH {
                paused = true;
                break;
            }
            let (frame, used) = match control::parse_frame(&input[consumed..], max_message) {
                Ok(control::Status::Partial) => break,
                Ok(control::Status::Complete(x)) => x,
                Err(e) => {
                    log::warn!("conn={key} control {:?}: closing", e);
                    control::render(&mut replies, &Err(e.reply()));
                    close = true;
                    break;
                }
            };
            consumed += used;
            let reply = match frame {
                Frame::Blank => continue,
                Frame::Oversize { len, skip: s } => {
                    skip = s;
                    Err(ControlError::new(
                        ErrorCode::TooBig,
                        format!("payload of {len} bytes exceeds max-message ({max_message})"),
                    ))
                }
                Frame::Request { line, payload } => match control::parse_request(line, payload) {
                    Ok(Request::Quit) => {
                        close = true;
                        break;
                    }
                    Ok(request) => self.execute(request, now),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = &reply {
                log::debug!("conn={key} control {e}");
            }
            control::render(&mut replies, &reply);
        }
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        if let Proto::Control(c) = &mut conn.proto {
            let mut input = input;
            input.drain(..consumed);
            c.inbuf = input;
            c.skip = skip;
        }
        conn.paused = paused;
        if !replies.is_empty() {
            conn.out.push_bytes(&replies);
            self.conns.schedule_flush(key);
        }
        if close {
            self.conns.close(key, Close::AfterFlush);
        }
    }

    /// Applies one request to the store and delivers what it produced.
    fn execute(&mut self, request: Request<'_>, now: Instant) -> Result<Reply, ControlError> {
        let max_output = self.config.max_output;
        let Server { store, conns, .. } = self;
        match request {
            Request::Ping => Ok(Reply::Pong),
            Request::Send {
                mailbox,
                event,
                data,
            } => {
                let payload = Payload::new(event, data);
                let (id, live) = store
                    .send(mailbox, &payload, now, &mut |sub, msg| {
                        conns.deliver(sub, msg, max_output, now)
                    })
                    .map_err(full)?;
                Ok(Reply::Ok(format!("{id} {live}")))
            }
            Request::Publish {
                group,
                event,
                except,
                data,
            } => {
                let payload = Payload::new(event, data);
                let (delivered, live) =
                    store.publish(group, &payload, &except, now, &mut |sub, msg| {
                        conns.deliver(sub, msg, max_output, now)
                    });
                Ok(Reply::Ok(format!("{delivered} {live}")))
            }
            Request::Join { group, mailboxes } => store
                .join(group, &mailboxes, now)
                .map(|n| Reply::Ok(n.to_string()))
                .map_err(full),
            Request::Leave { group, mailboxes } => {
                Ok(Reply::Ok(store.leave(group, &mailboxes).to_string()))
            }
            Request::Members { group } => {
                let members = store.members(group);
                let mut fields = members.len().to_string();
                for m in members {
                    fields.push(' ');
                    fields.push_str(m);
                }
                Ok(Reply::Ok(fields))
            }
            Request::Drop { mailbox } => {
                let subscribers = store
                    .drop_mailbox(mailbox)
                    .map_err(|_| not_found(mailbox))?;
                for sub in subscribers {
                    let (key, rid) = split_sub(sub);
                    if let Some(ex) = self
                        .conns
                        .slab
                        .get_mut(key)
                        .and_then(|c| c.exchange_mut(rid))
                    {
                        ex.subscribed = false;
                    }
                    self.end_exchange(key, rid, now);
                }
                Ok(Reply::Ok(String::new()))
            }
            Request::Info { mailbox } => {
                let info = store.info(mailbox, now).ok_or_else(|| not_found(mailbox))?;
                Ok(Reply::Ok(format!(
                    "subscribers={} retained={} last_id={} groups={} idle={}",
                    info.subscribers, info.retained, info.last_id, info.groups, info.idle_secs
                )))
            }
            Request::Stats => Ok(Reply::Ok(self.stats_line(now))),
            Request::Token { mailbox, ttl } => {
                let secret = self.secret.as_ref().ok_or_else(|| {
                    ControlError::new(
                        ErrorCode::NoSecret,
                        "mailboxd runs without --secret-file; no token is needed".into(),
                    )
                })?;
                let unix_now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Ok(Reply::Ok(secret.mint(mailbox, unix_now + ttl)))
            }
            Request::Quit => Ok(Reply::None),
        }
    }

    fn stats_line(&self, now: Instant) -> String {
        let s = self.store.stats();
        let c = &self.conns.counters;
        format!(
            "connections={} subscribers={} mailboxes={} groups={} delivered={} written={} retained={} evicted={} expired={} slow_closed={} accepted={} refused={} control={} uptime={} denied={} accept_errors={} control_evicted={} retained_bytes={}",
            self.clients,
            s.subscribers,
            s.mailboxes,
            s.groups,
            s.messages,
            c.written,
            s.retained,
            s.evicted,
            s.expired,
            c.slow_closed,
            c.accepted,
            c.refused,
            self.conns.control,
            now.saturating_duration_since(self.started).as_secs(),
            c.denied,
            c.accept_errors,
            c.control_evicted,
            s.retained_bytes,
        )
    }
}

fn full(e: StoreError) -> ControlError {
    ControlError::new(ErrorCode::Full, e.to_string())
}

fn not_found(mailbox: &str) -> ControlError {
    ControlError::new(ErrorCode::NotFound, format!("no mailbox '{mailbox}'"))
}
