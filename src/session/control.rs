//! Control connections: backends' commands applied to the store.
//!
//! Input is framed by [`control::parse_frame`] and each request answered in
//! order. Replies accumulate in the connection's output; above
//! [`CONTROL_OUT_HIGH`] bytes the connection stops reading until they drain,
//! so a backend that pipelines without reading replies is slowed down, never
//! cut off and never able to grow our memory. An oversize payload is skipped
//! byte by byte as it arrives rather than buffered.

use std::time::Instant;

use crate::conn::{Close, ReadEnd, Session, read_into, split_sub};
use crate::message::Payload;
use crate::server::Server;
use crate::store::StoreError;
use crate::wire::control::{self, Command, ControlError, ErrorCode, Frame, Reply};

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
            let Session::Control(c) = &mut conn.session else {
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
        let Session::Control(c) = &mut conn.session else {
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
                Frame::Request { line, payload } => match control::parse_command(line, payload) {
                    Ok(Command::Quit) => {
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
        if let Session::Control(c) = &mut conn.session {
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

    /// Applies one command to the store and hands what it stored to the
    /// local subscribers.
    fn execute(&mut self, command: Command<'_>, now: Instant) -> Result<Reply, ControlError> {
        let wall = self.wall(now);
        let store = &mut self.store;
        match command {
            Command::Ping => Ok(Reply::Pong),
            Command::Send {
                mailbox,
                event,
                data,
            } => {
                let payload = Payload::new(event, data);
                let delivery = store.send(mailbox, &payload, wall).map_err(full)?;
                let live = self.fan_out(&delivery, now);
                Ok(Reply::Ok(format!("{} {live}", delivery.message.id)))
            }
            Command::Publish {
                group,
                event,
                except,
                data,
            } => {
                let payload = Payload::new(event, data);
                let deliveries = store.publish(group, &payload, &except, wall);
                let live: usize = deliveries.iter().map(|d| self.fan_out(d, now)).sum();
                Ok(Reply::Ok(format!("{} {live}", deliveries.len())))
            }
            Command::Join { group, mailboxes } => store
                .join(group, &mailboxes, wall)
                .map(|n| Reply::Ok(n.to_string()))
                .map_err(full),
            Command::Leave { group, mailboxes } => {
                Ok(Reply::Ok(store.leave(group, &mailboxes).to_string()))
            }
            Command::Members { group } => {
                let members = store.members(group);
                let mut fields = members.len().to_string();
                for m in members {
                    fields.push(' ');
                    fields.push_str(&m);
                }
                Ok(Reply::Ok(fields))
            }
            Command::Drop { mailbox } => {
                store
                    .drop_mailbox(mailbox)
                    .map_err(|_| not_found(mailbox))?;
                for sub in self.subscribers.take(mailbox) {
                    let (key, rid) = split_sub(sub);
                    self.end_exchange(key, rid, now);
                }
                Ok(Reply::Ok(String::new()))
            }
            Command::Info { mailbox } => {
                let info = store
                    .info(mailbox, wall)
                    .ok_or_else(|| not_found(mailbox))?;
                Ok(Reply::Ok(format!(
                    "subscribers={} retained={} last_id={} groups={} idle={}",
                    self.subscribers.count(mailbox),
                    info.retained,
                    info.last_id,
                    info.groups,
                    info.idle_secs
                )))
            }
            Command::Stats => Ok(Reply::Ok(self.stats_line(now))),
            Command::Token { mailbox, ttl } => {
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
            Command::Quit => Ok(Reply::None),
        }
    }

    fn stats_line(&self, now: Instant) -> String {
        let s = self.store.stats();
        let c = &self.conns.counters;
        format!(
            "connections={} subscribers={} mailboxes={} groups={} delivered={} written={} retained={} evicted={} expired={} slow_closed={} accepted={} refused={} control={} uptime={} denied={} accept_errors={} control_evicted={} retained_bytes={}",
            self.clients,
            self.subscribers.total(),
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
