//! Control connections: backends' commands applied to the store.
//!
//! Input is framed by [`control::parse_frame`]. Commands the store carries
//! out are submitted with a [`Ticket`](crate::store::Ticket) naming this connection; their results
//! come back through [`Server::complete`], on this turn (the in-memory
//! store) or a later one, and only then are the messages fanned out and the
//! replies known. Replies are written strictly in request order: each
//! connection keeps them in a queue ([`PendingReply`]), local answers
//! (`PING`, `STATS`, `TOKEN`) waiting behind store results. Above
//! [`CONTROL_OUT_HIGH`] bytes of replies, written or waiting, the connection
//! stops reading until they drain, so a backend that pipelines without
//! reading replies is slowed down, never cut off and never able to grow our
//! memory. An oversize payload is skipped byte by byte as it arrives rather
//! than buffered.

use std::time::Instant;

use crate::conn::{Close, Kind, PendingReply, ReadEnd, Session, read_into, split_sub};
use crate::message::Payload;
use crate::server::Server;
use crate::store::{Done, Op, StoreError, StoreEvent};
use crate::wire::control::{self, Command, ControlError, ErrorCode, Frame, Reply};

/// Replies queued for one backend before its input is paused: enough for
/// ~10,000 pipelined `SEND` replies in flight.
const CONTROL_OUT_HIGH: usize = 256 * 1024;

/// What a reply still waiting in the queue is counted as against
/// [`CONTROL_OUT_HIGH`]: about the length of an `OK <id> <live>` line.
const REPLY_ESTIMATE: usize = 24;

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

    /// Handles every complete command buffered on a control connection.
    fn control_process(&mut self, key: usize, now: Instant) {
        let max_message = self.config.max_message;
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let Session::Control(c) = &mut conn.session else {
            return;
        };
        let input = std::mem::take(&mut c.inbuf);
        let mut skip = c.skip as usize;
        let mut consumed = 0;
        let mut paused = false;
        loop {
            if skip > 0 {
                let n = skip.min(input.len() - consumed);
                consumed += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return;
            };
            let Session::Control(c) = &conn.session else {
                return;
            };
            if conn.out.len() + c.pending.len() * REPLY_ESTIMATE > CONTROL_OUT_HIGH {
                paused = true;
                break;
            }
            let (frame, used) = match control::parse_frame(&input[consumed..], max_message) {
                Ok(control::Status::Partial) => break,
                Ok(control::Status::Complete(x)) => x,
                Err(e) => {
                    log::warn!("conn={key} control {:?}: closing", e);
                    self.queue_reply(key, PendingReply::Ready(Err(e.reply())));
                    self.queue_reply(key, PendingReply::Close);
                    break;
                }
            };
            consumed += used;
            let reply = match frame {
                Frame::Blank => continue,
                Frame::Oversize { len, skip: s } => {
                    skip = s;
                    PendingReply::Ready(Err(ControlError::new(
                        ErrorCode::TooBig,
                        format!("payload of {len} bytes exceeds max-message ({max_message})"),
                    )))
                }
                Frame::Request { line, payload } => {
                    let parsed = control::parse_command(line, payload);
                    if let Ok(command) = &parsed {
                        self.conns.counters.commands[command.verb_index()] += 1;
                    }
                    match parsed {
                        Ok(Command::Quit) => {
                            self.queue_reply(key, PendingReply::Close);
                            break;
                        }
                        Ok(command) => self.execute(key, command, now),
                        Err(e) => PendingReply::Ready(Err(e)),
                    }
                }
            };
            if let PendingReply::Ready(Err(e)) = &reply {
                log::debug!("conn={key} control {e}");
            }
            self.queue_reply(key, reply);
        }
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        if let Session::Control(c) = &mut conn.session {
            let mut input = input;
            input.drain(..consumed);
            c.inbuf = input;
            c.skip = skip as u32;
        }
        conn.paused = paused;
        self.complete(now);
        self.write_replies(key);
    }

    /// Adds a reply (known or awaited) behind the connection's others.
    fn queue_reply(&mut self, key: usize, reply: PendingReply) {
        if let Some(Session::Control(c)) = self.conns.slab.get_mut(key).map(|c| &mut c.session) {
            c.pending.push(reply);
            c.advance();
        }
    }

    /// Writes every known reply at the front of the queue, in order, and
    /// closes the connection once a `QUIT` (or a framing error) is reached.
    fn write_replies(&mut self, key: usize) {
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let Session::Control(c) = &mut conn.session else {
            return;
        };
        if c.resolved == 0 {
            return;
        }
        let mut bytes = Vec::new();
        let mut close = false;
        let errors = &mut self.conns.counters.errors;
        for reply in c.pending.drain(..c.resolved as usize) {
            match reply {
                PendingReply::Ready(r) => {
                    if let Err(e) = &r {
                        errors[e.code.index()] += 1;
                    }
                    control::render(&mut bytes, &r)
                }
                PendingReply::Close => {
                    close = true;
                    break;
                }
                PendingReply::Waiting(_) => debug_assert!(false, "resolved replies only"),
            }
        }
        c.resolved = 0;
        c.advance();
        if close {
            // Nothing after a QUIT or a lost frame is answered.
            c.pending.clear();
            c.resolved = 0;
        }
        if !bytes.is_empty() {
            conn.out.push_bytes(&bytes);
            self.conns.schedule_flush(key);
        }
        if close {
            self.conns.close(key, Close::AfterFlush);
        }
    }

    /// Takes everything the store has for the loop, in order: hands stored
    /// messages to the local subscribers, ends the requests of dropped
    /// mailboxes, writes
    /// the replies that are now known, and starts the exchanges of clients
    /// whose mailbox is open. Runs after each batch of commands or client
    /// requests, and once per loop turn for results that completed later.
    pub(crate) fn complete(&mut self, now: Instant) {
        let mut touched = Vec::new();
        while let Some(event) = self.store.next_event() {
            let (ticket, result) = match event {
                StoreEvent::Done(ticket, result) => (ticket, result),
                StoreEvent::Deliver(delivery) => {
                    self.fan_out(&delivery, now);
                    continue;
                }
                StoreEvent::Ended(mailbox) => {
                    let subs = self.subscribers.take(&mailbox);
                    if !subs.is_empty() {
                        let wall = self.wall(now);
                        self.store.subscribers(&mailbox, 0, wall);
                    }
                    for sub in subs {
                        let (key, rid) = split_sub(sub);
                        self.end_exchange(key, rid, now);
                    }
                    continue;
                }
            };
            let key = (ticket.0 >> 32) as usize;
            let client = self
                .conns
                .slab
                .get(key)
                .is_some_and(|c| c.session.kind() != Kind::Control);
            let reply = match result {
                Ok(Done::Opened { mailbox, backlog }) => {
                    self.opened(key, ticket, Ok((mailbox, backlog)), now);
                    continue;
                }
                Err(e) if client => {
                    self.opened(key, ticket, Err(e), now);
                    continue;
                }
                Ok(done) => Ok(self.apply(done)),
                Err(e) => Err(store_error(e)),
            };
            let waiting = match self.conns.slab.get_mut(key).map(|c| &mut c.session) {
                Some(Session::Control(c)) => c.resolve(ticket, reply),
                _ => false,
            };
            if waiting {
                touched.push(key);
            }
        }
        touched.dedup();
        for key in touched {
            self.write_replies(key);
        }
    }

    /// The reply to a finished command. Its messages were fanned out
    /// already, as the store's events, even if the backend is gone.
    fn apply(&mut self, done: Done) -> Reply {
        match done {
            Done::Sent { id, live } => Reply::Ok(format!("{id} {live}")),
            Done::Published { reached, live } => Reply::Ok(format!("{reached} {live}")),
            Done::GroupSize(n) => Reply::Ok(n.to_string()),
            Done::Members(members) => {
                let mut fields = members.len().to_string();
                for m in members {
                    fields.push(' ');
                    fields.push_str(&m);
                }
                Reply::Ok(fields)
            }
            Done::Dropped(_) => Reply::Ok(String::new()),
            Done::Opened { .. } => {
                debug_assert!(false, "openings are clients' results");
                Reply::None
            }
            Done::Info(info) => Reply::Ok(format!(
                "subscribers={} retained={} last_id={} groups={} idle={}",
                info.subscribers, info.retained, info.last_id, info.groups, info.idle_secs
            )),
        }
    }

    /// Answers a command at once, or submits it to the store and returns
    /// the ticket its reply waits for.
    fn execute(&mut self, key: usize, command: Command<'_>, now: Instant) -> PendingReply {
        let op = match command {
            Command::Ping => return PendingReply::Ready(Ok(Reply::Pong)),
            Command::Stats => return PendingReply::Ready(Ok(Reply::Ok(self.stats_line(now)))),
            Command::Token { mailbox, ttl } => {
                return PendingReply::Ready(self.token(mailbox, ttl));
            }
            Command::Quit => return PendingReply::Close,
            Command::Send {
                mailbox,
                event,
                data,
            } => Op::Send {
                mailbox: mailbox.to_string(),
                payload: Payload::new(event, data),
            },
            Command::Publish {
                group,
                event,
                except,
                data,
            } => Op::Publish {
                group: group.to_string(),
                payload: Payload::new(event, data),
                except: except.iter().map(|m| m.to_string()).collect(),
            },
            Command::Join { group, mailboxes } => Op::Join {
                group: group.to_string(),
                mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
            },
            Command::Leave { group, mailboxes } => Op::Leave {
                group: group.to_string(),
                mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
            },
            Command::Members { group } => Op::Members {
                group: group.to_string(),
            },
            Command::Drop { mailbox } => Op::Drop {
                mailbox: mailbox.to_string(),
            },
            Command::Info { mailbox } => Op::Info {
                mailbox: mailbox.to_string(),
            },
        };
        let ticket = self.conns.ticket(key);
        let wall = self.wall(now);
        self.store.submit(ticket, op, wall);
        PendingReply::Waiting(ticket)
    }

    /// `TOKEN`: a token opening `mailbox` for `ttl` seconds.
    fn token(&self, mailbox: &str, ttl: u64) -> Result<Reply, ControlError> {
        let secret = self.secret.as_ref().ok_or_else(|| {
            ControlError::new(
                ErrorCode::NoSecret,
                "mailboxd runs without --secret-file; no token is needed".into(),
            )
        })?;
        Ok(Reply::Ok(
            secret.mint(mailbox, crate::auth::unix_now() + ttl),
        ))
    }

    fn stats_line(&self, now: Instant) -> String {
        self.figures(now).stats_line()
    }
}

/// The `ERR` reply for a store's refusal.
fn store_error(e: StoreError) -> ControlError {
    let code = match e {
        StoreError::NotFound => ErrorCode::NotFound,
        StoreError::TooManyMailboxes | StoreError::TooManyGroups => ErrorCode::Full,
        StoreError::Unavailable | StoreError::Unknown => ErrorCode::Unavailable,
    };
    ControlError::new(code, e.to_string())
}
