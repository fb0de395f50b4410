//! Connections across a binary upgrade: each session frozen into a
//! [`ConnRecord`] by the old process, and thawed by the new one.
//!
//! Every kind moves: control connections (with unread input and unwritten
//! replies), HTTP, FastCGI and SCGI clients whether reading a head, parked
//! on a mailbox or draining a finished answer, and metrics requests. What
//! cannot be frozen is a request waiting for the store (an opening, a
//! command sent to Redis): the old process waits a turn or two for those
//! to complete, reading nothing new meanwhile.
//!
//! A parked request is thawed as an opening of its mailbox from its last
//! id: whatever the mailbox received after the old process froze (a message
//! another instance stored in Redis) is sent first, then the request is
//! parked again with its old deadline. A stream's head and preamble are not
//! written again; its unwritten bytes go out first, verbatim.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Instant, SystemTime};

use crate::conn::{
    Close, Conn, ControlState, Exchange, FcgiPhase, FcgiRequest, FcgiState, HttpPhase, HttpState,
    Opening, ScgiPhase, ScgiState, Session, Socket,
};
use crate::outbuf::{Chunk, OutQueue};
use crate::request::Route;
use crate::server::{FIRST_CONN, Server};
use crate::store::{Op, Ticket};
use crate::timer::{CONN_SLOT, TimerId};
use crate::wire::handover::{ConnRecord, ExchangeRecord, FcgiRecord, SessionRecord};
use crate::wire::journal::{from_ms, to_ms};

/// A thawed request whose mailbox is opened again once the store can be
/// reached (a shared store connects only after the handover).
#[derive(Debug)]
pub struct Restore {
    /// The ticket the opening waits for.
    pub ticket: Ticket,
    /// The opening to submit.
    pub op: Op,
}

impl Server {
    /// Every connection as a record. `None` when one is waiting for the
    /// store (an opening, a command's result): try again on a later turn.
    pub(crate) fn freeze_conns(&self) -> Option<Vec<ConnRecord>> {
        let deadlines = self.timers.deadlines();
        let ms = |id: TimerId| {
            deadlines
                .get(&id)
                .map_or(0, |&at| to_ms(self.wall(at)).max(1))
        };
        let exchange = |ex: &Exchange| ExchangeRecord {
            mailbox: ex.mailbox.to_string(),
            transport: ex.transport,
            since: ex.since,
            deadline_ms: ms(ex.timer),
        };
        let mut records = Vec::with_capacity(self.conns.slab.len());
        for (_, conn) in &self.conns.slab {
            // Finished: the old process's exit closes it, as it would have.
            if matches!(conn.close, Close::Now | Close::Lingering) {
                continue;
            }
            let session = match &conn.session {
                Session::Control(c) => {
                    if !c.pending.is_empty() {
                        return None;
                    }
                    SessionRecord::Control { skip: c.skip }
                }
                Session::Http(h) => SessionRecord::Http {
                    keep_alive: h.keep_alive,
                    exchange: match &h.phase {
                        HttpPhase::Head => None,
                        HttpPhase::Opening(_) => return None,
                        HttpPhase::Active(ex) => Some(exchange(ex)),
                    },
                },
                Session::Scgi(s) => {
                    let (done, ex) = match &s.phase {
                        ScgiPhase::Head => (false, None),
                        ScgiPhase::Opening(_) => return None,
                        ScgiPhase::Active(ex) => (false, Some(exchange(ex))),
                        ScgiPhase::Done => (true, None),
                    };
                    SessionRecord::Scgi { done, exchange: ex }
                }
                Session::Fcgi(f) => {
                    let mut requests = Vec::with_capacity(f.requests.len());
                    for r in &f.requests {
                        requests.push(match &r.phase {
                            FcgiPhase::Params { params, timer } => FcgiRecord::Params {
                                id: r.id,
                                keep_conn: r.keep_conn,
                                deadline_ms: ms(*timer),
                                params: params.clone(),
                            },
                            FcgiPhase::Opening(_) => return None,
                            FcgiPhase::Active(ex) => FcgiRecord::Active {
                                id: r.id,
                                keep_conn: r.keep_conn,
                                exchange: exchange(ex),
                            },
                        });
                    }
                    SessionRecord::Fcgi { requests }
                }
                Session::Metrics(_) => SessionRecord::Metrics,
            };
            let input = match &conn.session {
                Session::Control(c) => c.inbuf.clone(),
                Session::Http(h) => h.inbuf.clone(),
                Session::Scgi(s) => s.inbuf.clone(),
                Session::Fcgi(f) => f.inbuf.clone(),
                Session::Metrics(b) => b.clone(),
            };
            let (fd, unix) = match &conn.socket {
                Socket::Tcp(s) => (s.as_raw_fd(), false),
                Socket::Unix(s) => (s.as_raw_fd(), true),
            };
            let ino = crate::upgrade::inode(fd).ok()?;
            records.push(ConnRecord {
                fd,
                ino,
                unix,
                close_after_flush: conn.close == Close::AfterFlush,
                paused: conn.paused,
                deadline_ms: ms(conn.timer),
                out: conn.out.to_vec(),
                input,
                session,
            });
        }
        Some(records)
    }

    /// Adopts the connections a predecessor handed over: each socket is
    /// checked, registered and given back its session, output, input and
    /// deadlines. Parked requests wait in [`Server::restores`] to open their
    /// mailboxes again. From a direct predecessor, every socket is at the
    /// number recorded, and one that is not the socket its record says makes
    /// the whole handover fail, before anything is served. Through systemd
    /// (`stored`), sockets are found by inode; a record whose socket
    /// systemd dropped (its client left meanwhile) is skipped, and stored
    /// sockets no record names are closed.
    pub(crate) fn thaw_conns(
        &mut self,
        records: Vec<ConnRecord>,
        mut stored: Option<HashMap<u64, OwnedFd>>,
    ) -> Result<(), String> {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let mut seen: HashSet<RawFd> = HashSet::with_capacity(records.len());
        let mut skipped = 0;
        for record in records {
            let fd = match &mut stored {
                Some(by_inode) => {
                    let Some(fd) = by_inode.remove(&record.ino) else {
                        skipped += 1;
                        continue;
                    };
                    check_conn(fd, record.unix)
                        .map_err(|e| format!("stored connection {}: {e}", record.ino))?
                }
                None => {
                    if !seen.insert(record.fd) {
                        return Err(format!("descriptor {} handed over twice", record.fd));
                    }
                    let (fd, ino) = crate::upgrade::adopt(record.fd, libc::S_IFSOCK)
                        .map_err(|e| format!("connection descriptor {}: {e}", record.fd))?;
                    if ino != record.ino {
                        return Err(format!(
                            "descriptor {} is not the connection recorded",
                            record.fd
                        ));
                    }
                    check_conn(fd, record.unix)
                        .map_err(|e| format!("connection descriptor {}: {e}", record.fd))?
                }
            };
            let mut socket = if record.unix {
                Socket::Unix(mio::net::UnixStream::from_std(fd.into()))
            } else {
                Socket::Tcp(mio::net::TcpStream::from_std(fd.into()))
            };
            let key = self.conns.slab.vacant_key();
            self.poll
                .registry()
                .register(
                    &mut socket,
                    mio::Token(FIRST_CONN + key),
                    mio::Interest::READABLE,
                )
                .map_err(|e| format!("cannot watch a connection handed over: {e}"))?;
            // A deadline in the past fires on the first turn; one absurdly
            // far away (a clock that jumped) is brought back to a day.
            let at = |deadline_ms: u64| {
                let wall = from_ms(deadline_ms);
                let ahead = wall.duration_since(wall_now).unwrap_or_default();
                now + ahead.min(std::time::Duration::from_secs(86_400))
            };
            let mut timer = TimerId::NONE;
            if record.deadline_ms != 0 {
                timer = self.timers.insert(at(record.deadline_ms), key, CONN_SLOT);
            }
            let mut restores = Vec::new();
            let mut continued = |ex: ExchangeRecord, conns: &mut crate::conn::Conns| {
                let ticket = conns.ticket(key);
                let route = Route {
                    mailbox: ex.mailbox.clone(),
                    transport: ex.transport,
                    resume: Some(ex.since),
                    token: None,
                };
                restores.push(Restore {
                    ticket,
                    op: Op::Open {
                        mailbox: ex.mailbox,
                        resume: Some(ex.since),
                    },
                });
                let deadline = if ex.deadline_ms == 0 {
                    now
                } else {
                    at(ex.deadline_ms)
                };
                Box::new(Opening {
                    ticket,
                    route,
                    timer: TimerId::NONE,
                    continued: Some(deadline),
                })
            };
            let session = match record.session {
                SessionRecord::Control { skip } => {
                    self.conns.control += 1;
                    let mut c = ControlState::new(now);
                    c.inbuf = record.input;
                    c.skip = skip;
                    Session::Control(c)
                }
                SessionRecord::Http {
                    keep_alive,
                    exchange,
                } => {
                    self.clients += 1;
                    Session::Http(HttpState {
                        inbuf: record.input,
                        phase: match exchange {
                            None => HttpPhase::Head,
                            Some(ex) => HttpPhase::Opening(continued(ex, &mut self.conns)),
                        },
                        keep_alive,
                    })
                }
                SessionRecord::Scgi { done, exchange } => {
                    self.clients += 1;
                    Session::Scgi(ScgiState {
                        inbuf: record.input,
                        phase: match (done, exchange) {
                            (true, _) => ScgiPhase::Done,
                            (false, None) => ScgiPhase::Head,
                            (false, Some(ex)) => ScgiPhase::Opening(continued(ex, &mut self.conns)),
                        },
                    })
                }
                SessionRecord::Fcgi { requests } => {
                    self.clients += 1;
                    let mut f = FcgiState {
                        inbuf: record.input,
                        requests: Vec::with_capacity(requests.len()),
                    };
                    for r in requests {
                        f.requests.push(match r {
                            FcgiRecord::Params {
                                id,
                                keep_conn,
                                deadline_ms,
                                params,
                            } => FcgiRequest {
                                id,
                                keep_conn,
                                phase: FcgiPhase::Params {
                                    params,
                                    timer: self.timers.insert(at(deadline_ms), key, u32::from(id)),
                                },
                            },
                            FcgiRecord::Active {
                                id,
                                keep_conn,
                                exchange,
                            } => FcgiRequest {
                                id,
                                keep_conn,
                                phase: FcgiPhase::Opening(continued(exchange, &mut self.conns)),
                            },
                        });
                    }
                    Session::Fcgi(f)
                }
                SessionRecord::Metrics => {
                    self.conns.metrics += 1;
                    Session::Metrics(record.input)
                }
            };
            self.restores.append(&mut restores);
            let mut out = OutQueue::default();
            out.push(Chunk::Owned(record.out));
            let close = if record.close_after_flush {
                Close::AfterFlush
            } else {
                Close::No
            };
            let inserted = self.conns.slab.insert(Conn {
                socket,
                session,
                out,
                writable: false,
                pending: false,
                paused: record.paused,
                close,
                head_held: 0,
                timer,
            });
            debug_assert_eq!(inserted, key);
            self.conns.account_head(key, usize::MAX);
            if !self.conns.slab[key].out.is_empty() || close == Close::AfterFlush {
                self.conns.schedule_flush(key);
            }
        }
        if skipped > 0 {
            log::info!("{skipped} connections handed over had closed meanwhile");
        }
        if let Some(left) = stored.filter(|s| !s.is_empty()) {
            log::warn!(
                "{} stored connections are in no snapshot: closing them",
                left.len()
            );
        }
        Ok(())
    }

    /// Opens again the mailboxes of thawed requests, once the store can
    /// take commands; returns whether any were submitted.
    pub(crate) fn submit_restores(&mut self, now: Instant) -> bool {
        if self.restores.is_empty() || !self.store.available() {
            return false;
        }
        let wall = self.wall(now);
        for restore in std::mem::take(&mut self.restores) {
            self.store.submit(restore.ticket, restore.op, wall);
        }
        true
    }
}

/// Checks a socket is connected, of stream type and of the family recorded,
/// and makes it non-blocking.
fn check_conn(owned: OwnedFd, unix: bool) -> std::io::Result<OwnedFd> {
    let (kind, listening, family) = crate::activation::socket_facts(owned.as_raw_fd())?;
    let family_ok = if unix {
        family == libc::AF_UNIX
    } else {
        family == libc::AF_INET || family == libc::AF_INET6
    };
    if kind != libc::SOCK_STREAM || listening || !family_ok {
        return Err(std::io::Error::other(
            "not a connected stream socket of the family recorded",
        ));
    }
    crate::activation::set_nonblocking(owned.as_raw_fd())?;
    Ok(owned)
}
