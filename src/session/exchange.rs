//! The life of an [`Exchange`]: one client request parked on a mailbox,
//! whatever gateway carried it.
//!
//! An exchange starts when a request is routed: the mailbox is opened, the
//! subscriber registered, the head and the backlog (gap notice first, then
//! retained messages after the resume point) queued. From then on messages
//! arrive through [`Conns::deliver`](crate::conn::Conns::deliver); a stream
//! also gets a heartbeat every interval, and a long-poll is answered at the
//! end of the turn that woke it, or empty when its hold runs out. Nothing
//! here knows a wire format beyond asking the connection to frame a head or a
//! body, which is what lets every gateway share it.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use crate::conn::{Close, Exchange, Next, Opening, ReadEnd, Session, sub_id};
use crate::message::Message;
use crate::outbuf::Chunk;
use crate::request::{Head, HttpStatus, Rejection, Route};
use crate::server::Server;
use crate::store::{Backlog, Delivery, Op, StoreError, Ticket};
use crate::subscribers::{SubscriberId, TooManySubscribers};
use crate::timer::{CONN_SLOT, TimerId};
use crate::wire::transport::{Transport, poll_body};

use super::{FCGI_IDLE, MAX_HEAD_MEMORY};

impl Server {
    /// Reads what a client connection sent and acts on it, by gateway.
    /// Afterwards, the bytes its unfinished requests hold are counted again;
    /// a connection that grows them past [`MAX_HEAD_MEMORY`] in total is closed.
    pub(crate) fn client_readable(&mut self, key: usize, now: Instant) {
        match self.conns.slab.get(key).map(|c| &c.session) {
            Some(Session::Http(_)) => self.http_readable(key, now),
            Some(Session::Fcgi(_)) => self.fcgi_readable(key, now),
            Some(Session::Scgi(_)) => self.scgi_readable(key, now),
            Some(Session::Metrics(_)) => {
                self.metrics_readable(key, now);
                return;
            }
            Some(Session::Control(_)) | None => return,
        }
        if self.conns.account_head(key, MAX_HEAD_MEMORY) {
            let total = self.conns.head_bytes;
            self.conns.warnings.malformed.note(now, || {
                format!(
                    "conn={key} closed: unfinished requests hold {total} bytes in all, over {MAX_HEAD_MEMORY}"
                )
            });
            self.conns.close(key, Close::Now);
        }
    }

    /// Closes a connection whose peer left or whose read failed.
    pub(crate) fn read_ended(&mut self, key: usize, result: std::io::Result<ReadEnd>) -> bool {
        let proto = self.conns.slab.get(key).map_or("?", |c| c.session.name());
        match result {
            Ok(ReadEnd::Blocked | ReadEnd::Full) => return false,
            Ok(ReadEnd::Eof) => log::debug!("conn={key} {proto} peer went away"),
            Err(e) => log::debug!("conn={key} {proto} read failed: {e}"),
        }
        self.conns.close(key, Close::Now);
        true
    }

    /// Starts the exchange of a routed request, or answers its rejection
    /// (also 503 while shutting down); the same for every gateway.
    pub(crate) fn start_routed(
        &mut self,
        key: usize,
        rid: u16,
        routed: Result<Route, Rejection>,
        now: Instant,
    ) {
        let started = match routed {
            Ok(route) if self.shutdown.is_none() => self
                .authorize(key, &route)
                .and_then(|()| self.start_exchange(key, rid, route, now)),
            Ok(_) => Err(Rejection::new(
                HttpStatus::ServiceUnavailable,
                "shutting down",
            )),
            Err(rejection) => Err(rejection),
        };
        if let Err(rejection) = started {
            self.reject(key, rid, rejection, now);
        }
    }

    /// With a secret, a request must carry a valid token for its mailbox,
    /// checked before the mailbox is even looked up. The client learns
    /// nothing of why; the log says, at debug level.
    fn authorize(&self, key: usize, route: &Route) -> Result<(), Rejection> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let unix_now = crate::auth::unix_now();
        secret
            .verify(
                route.token.as_deref().unwrap_or(""),
                &route.mailbox,
                unix_now,
            )
            .map_err(|e| {
                log::debug!("conn={key} mailbox={} refused: {e}", route.mailbox);
                Rejection::new(HttpStatus::Forbidden, "forbidden")
            })
    }

    /// Answers a refused request with a short text body and closes after it.
    pub(crate) fn reject(&mut self, key: usize, rid: u16, rejection: Rejection, now: Instant) {
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        log::debug!(
            "conn={key} {} rejected: {} {}",
            conn.session.name(),
            rejection.status.code_reason().0,
            rejection.message
        );
        if let Session::Http(h) = &mut conn.session {
            h.keep_alive = false;
        }
        let body = format!("{}\n", rejection.message).into_bytes();
        conn.push_head(
            rid,
            &Head::sized(rejection.status, "text/plain; charset=utf-8", body.len()),
        );
        conn.push_body(rid, &mut vec![Chunk::Owned(body)]);
        self.finish(key, rid, true, now);
    }

    /// Asks the store to open the request's mailbox; the request waits in
    /// the opening state until [`Server::opened`] has the result.
    pub(crate) fn start_exchange(
        &mut self,
        key: usize,
        rid: u16,
        route: Route,
        now: Instant,
    ) -> Result<(), Rejection> {
        let ticket = self.conns.ticket(key);
        let op = Op::Open {
            mailbox: route.mailbox.clone(),
            resume: route.resume,
        };
        let opening = Box::new(Opening {
            ticket,
            route,
            timer: TimerId::NONE,
            continued: None,
        });
        if let Some(conn) = self.conns.slab.get_mut(key) {
            conn.set_opening(rid, opening);
        }
        let wall = self.wall(now);
        self.store.submit(ticket, op, wall);
        Ok(())
    }

    /// The store answered a client's opening: start the exchange, or
    /// refuse it. A result nobody waits for any more (the client left)
    /// releases the mailbox it may have created.
    pub(crate) fn opened(
        &mut self,
        key: usize,
        ticket: Ticket,
        result: Result<(Rc<str>, Backlog), StoreError>,
        now: Instant,
    ) {
        let waiting = self
            .conns
            .slab
            .get_mut(key)
            .filter(|c| c.close == Close::No)
            .and_then(|c| c.take_opening(ticket));
        let Some((rid, opening)) = waiting else {
            if let Ok((mailbox, _)) = result {
                self.store.release(&mailbox);
            }
            return;
        };
        let continued = opening.continued;
        // A handed-over stream's head went out before; a long-poll's head
        // is only written with its answer.
        let head_sent = continued.is_some() && opening.route.transport != Transport::Poll;
        let started = result.map_err(unavailable).and_then(|(mailbox, backlog)| {
            self.begin_exchange(key, rid, opening.route, continued, mailbox, backlog, now)
        });
        match started {
            // A stream whose head went out before the handover ends
            // cleanly; its client resumes from retained messages.
            Err(rejection) if head_sent => {
                log::info!(
                    "conn={key} stream handed over could not go on ({}): ending it",
                    rejection.message
                );
                self.finish(key, rid, false, now);
            }
            Err(rejection) => self.reject(key, rid, rejection, now),
            Ok(()) => {}
        }
        if matches!(
            self.conns.slab.get(key).map(|c| &c.session),
            Some(Session::Http(_))
        ) {
            // Requests the client pipelined meanwhile.
            self.http_process(key, now);
        }
    }

    /// With the mailbox open: answers a long-poll at once when there is
    /// something to say, else parks the request. An exchange `continued`
    /// from a predecessor keeps its deadline, and a stream's head and
    /// preamble are not written again.
    #[allow(clippy::too_many_arguments)]
    fn begin_exchange(
        &mut self,
        key: usize,
        rid: u16,
        route: Route,
        continued: Option<Instant>,
        mailbox: Rc<str>,
        backlog: Backlog,
        now: Instant,
    ) -> Result<(), Rejection> {
        let sub = sub_id(key, rid);
        if route.transport == Transport::Poll {
            if backlog.gap || !backlog.messages.is_empty() {
                self.conns.counters.gaps += u64::from(backlog.gap);
                // Something to say already: answer without parking. A
                // mailbox opened only to report a gap goes again at once.
                let body = poll_body(
                    backlog.messages.iter(),
                    backlog.last_id,
                    backlog.gap,
                    self.config.max_output / 2,
                );
                self.store.release(&mailbox);
                self.send_answer(key, rid, body, now);
                return Ok(());
            }
            let since = route.resume.unwrap_or(backlog.last_id);
            self.subscribe(&mailbox, sub, now)?;
            let hold = continued.unwrap_or(now + self.config.poll_timeout);
            self.park(
                key,
                rid,
                hold,
                Exchange {
                    mailbox,
                    transport: Transport::Poll,
                    since,
                    timer: TimerId::NONE,
                    woken: false,
                },
            );
            log::debug!(
                "conn={key} mailbox={} long-poll held since {since}",
                route.mailbox
            );
            return Ok(());
        }
        self.subscribe(&mailbox, sub, now)?;
        let transport = route.transport;
        let heartbeat = continued.unwrap_or(now + self.config.heartbeat);
        // Every message up to the mailbox's last id is queued below or was
        // evicted before: a successor resumes after it.
        let since = backlog
            .messages
            .last()
            .map_or(backlog.last_id, |m| m.id.max(backlog.last_id));
        self.park(
            key,
            rid,
            heartbeat,
            Exchange {
                mailbox: mailbox.clone(),
                transport,
                since,
                timer: TimerId::NONE,
                woken: false,
            },
        );
        let scratch = &mut self.conns.scratch;
        if continued.is_none() {
            scratch.extend(transport.preamble(self.config.retry_ms));
        }
        if backlog.gap {
            self.conns.counters.gaps += 1;
            transport.gap(route.resume.unwrap_or(0), backlog.oldest, scratch);
        }
        for msg in &backlog.messages {
            transport.message(msg, scratch);
        }
        let conn = &mut self.conns.slab[key];
        if continued.is_none() {
            conn.push_head(rid, &Head::stream(transport));
        }
        conn.push_body(rid, scratch);
        self.conns.schedule_flush(key);
        log::debug!(
            "conn={key} mailbox={} {transport:?} subscribed",
            route.mailbox
        );
        Ok(())
    }

    /// Parks an exchange with its first deadline; the connection-level
    /// deadline (the head's) no longer applies.
    fn park(&mut self, key: usize, rid: u16, deadline: Instant, mut exchange: Exchange) {
        exchange.timer = self.timers.insert(deadline, key, rid as u32);
        if let Some(conn) = self.conns.slab.get_mut(key) {
            conn.timer = TimerId::NONE;
            conn.set_exchange(rid, exchange);
        }
    }

    /// A request-level deadline came due: a heartbeat, the end of a
    /// long-poll hold, or a FastCGI request whose head is overdue.
    pub(crate) fn request_timer(&mut self, key: usize, rid: u16, id: TimerId, now: Instant) {
        let Some(conn) = self.conns.slab.get(key).filter(|c| c.close == Close::No) else {
            return;
        };
        if let Session::Fcgi(f) = &conn.session
            && f.head_timer(rid) == Some(id)
        {
            self.conns.warnings.head_timeouts.note(now, || {
                format!("conn={key} fastcgi request {rid} head not complete within request-timeout: closing")
            });
            self.conns.close(key, Close::Now);
            return;
        }
        let Some(ex) = self.conns.open_exchange(key, rid) else {
            return;
        };
        if ex.timer != id {
            return;
        }
        if ex.transport == Transport::Poll {
            // A poll already on the answer list is answered there, with
            // the messages that woke it.
            if !ex.woken {
                self.answer_poll(key, rid, &[], now);
            }
            return;
        }
        let transport = ex.transport;
        ex.timer = self
            .timers
            .insert(now + self.config.heartbeat, key, rid as u32);
        self.conns.scratch.extend(transport.heartbeat());
        self.conns.slab[key].push_body(rid, &mut self.conns.scratch);
        self.conns.commit_output(key, self.config.max_output, now);
    }

    /// Answers every long-poll that a delivery or a `DROP` woke this turn.
    pub(crate) fn answer_polls(&mut self, now: Instant) {
        let mut woken: HashMap<(usize, u16), Vec<Message>> = HashMap::new();
        for (key, rid, msg) in self.conns.woken.drain(..) {
            woken.entry((key, rid)).or_default().push(msg);
        }
        while let Some((key, rid)) = self.conns.answers.pop() {
            let messages = woken.remove(&(key, rid)).unwrap_or_default();
            // Only the poll that was put on the list: a keep-alive
            // connection may have moved on to its next request since.
            if self
                .conns
                .open_exchange(key, rid)
                .is_some_and(|ex| ex.woken)
            {
                self.answer_poll(key, rid, &messages, now);
            }
        }
    }

    /// Answers a held long-poll with the messages fanned out to it this turn
    /// (none, on a timeout or after a `DROP`). While it was held, every
    /// message its mailbox got reached it, so nothing else is missing and
    /// nothing is read back from the store; an answer that would be too
    /// large stops early, and the next poll gets the rest from retention.
    pub(crate) fn answer_poll(&mut self, key: usize, rid: u16, messages: &[Message], now: Instant) {
        let Some(ex) = self.conns.open_exchange(key, rid) else {
            return;
        };
        if ex.transport != Transport::Poll {
            return;
        }
        let (mailbox, since) = (ex.mailbox.clone(), ex.since);
        self.unsubscribe(&mailbox, sub_id(key, rid), now);
        let limit = self.config.max_output / 2;
        let body = poll_body(messages.iter(), since, false, limit);
        self.send_answer(key, rid, body, now);
        if matches!(
            self.conns.slab.get(key).map(|c| &c.session),
            Some(Session::Http(_))
        ) {
            // Requests the client pipelined meanwhile.
            self.http_process(key, now);
        }
    }

    fn send_answer(&mut self, key: usize, rid: u16, body: Vec<u8>, now: Instant) {
        let conn = &mut self.conns.slab[key];
        conn.push_head(
            rid,
            &Head::sized(HttpStatus::Ok, Transport::Poll.content_type(), body.len()),
        );
        conn.push_body(rid, &mut vec![Chunk::Owned(body)]);
        // Answers count against max-output like any other output, so a
        // client cannot grow its queue by asking and never reading.
        if self.conns.commit_output(key, self.config.max_output, now) {
            self.conns.counters.written += 1;
            self.finish(key, rid, true, now);
        }
    }

    /// Ends a request whose mailbox was dropped or whose server is stopping.
    pub(crate) fn end_exchange(&mut self, key: usize, rid: u16, now: Instant) {
        let Some(ex) = self
            .conns
            .slab
            .get_mut(key)
            .and_then(|c| c.exchange_mut(rid))
        else {
            return;
        };
        if ex.transport == Transport::Poll {
            if !ex.woken {
                ex.woken = true;
                self.conns.answers.push((key, rid));
            }
            return;
        }
        let mailbox = ex.mailbox.clone();
        self.unsubscribe(&mailbox, sub_id(key, rid), now);
        self.finish(key, rid, false, now);
    }

    /// Registers a parked request on a mailbox the client has opened; the
    /// store hears of the mailbox's first subscriber. At `--max-subscribers`
    /// the request is refused, and a mailbox it alone had opened goes again.
    fn subscribe(
        &mut self,
        mailbox: &Rc<str>,
        sub: SubscriberId,
        now: Instant,
    ) -> Result<(), Rejection> {
        match self.subscribers.add(mailbox, sub) {
            Ok(_) => {
                let wall = self.wall(now);
                let count = self.subscribers.count(mailbox);
                self.store.subscribers(mailbox, count, wall);
            }
            Err(TooManySubscribers) => {
                self.store.release(mailbox);
                return Err(Rejection::new(
                    HttpStatus::TooManyRequests,
                    "subscriber limit reached (max-subscribers)",
                ));
            }
        }
        Ok(())
    }

    /// Detaches a request from its mailbox, if it is still attached; the
    /// store hears of the mailbox's last subscriber leaving.
    pub(crate) fn unsubscribe(&mut self, mailbox: &str, sub: SubscriberId, now: Instant) {
        if let Some(left) = self.subscribers.remove(mailbox, sub) {
            let wall = self.wall(now);
            self.store.subscribers(mailbox, left, wall);
        }
    }

    /// Hands a stored message to its mailbox's local subscribers; returns
    /// how many it was written to.
    pub(crate) fn fan_out(&mut self, delivery: &Delivery, now: Instant) -> usize {
        let max_output = self.config.max_output;
        let wall = self.wall(now);
        let Server {
            subscribers,
            conns,
            store,
            ..
        } = self;
        let done = subscribers.fan_out(&delivery.mailbox, &delivery.message, &mut |sub, msg| {
            conns.deliver(sub, msg, max_output, now)
        });
        if done.detached > 0 {
            store.subscribers(
                &delivery.mailbox,
                subscribers.count(&delivery.mailbox),
                wall,
            );
        }
        done.live
    }

    /// Completes a response: the connection goes back to reading heads
    /// (keep-alive), waits idle for the web server's next request (pooled
    /// FastCGI), or closes once its output is written; each under its own
    /// deadline. Callers outside [`Server::http_process`] then run it for
    /// requests the client already pipelined.
    pub(crate) fn finish(&mut self, key: usize, rid: u16, sized: bool, now: Instant) {
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        let wait = match conn.finish(rid, sized) {
            Next::Head | Next::Drain => Some(self.config.request_timeout),
            Next::Idle => Some(FCGI_IDLE),
            Next::Requests => None,
        };
        if let Some(wait) = wait {
            conn.timer = self.timers.insert(now + wait, key, CONN_SLOT);
        }
        self.conns.schedule_flush(key);
    }
}

fn unavailable(e: StoreError) -> Rejection {
    Rejection::new(HttpStatus::ServiceUnavailable, e.to_string())
}
