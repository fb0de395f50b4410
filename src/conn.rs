//! Accepted connections: the socket, the protocol state, the output queue.
//!
//! A connection is one of a few kinds ([`Kind`]); its [`Session`] is an explicit state
//! machine:
//!
//! * control: `reading` ⇄ `paused` (replies above the high-water mark stop
//!   input until they drain) → closed on `QUIT`, EOF or a framing error;
//! * HTTP client: `Head` (reading a request head, under a deadline) →
//!   `Active` (an [`Exchange`]: parked on a mailbox) → back to `Head` after a
//!   sized long-poll answer on a keep-alive connection, or closed after flush
//!   (lingering first: see [`Close::Lingering`]).
//!
//! Closing is deferred: handlers only set [`Close`] and queue the key; the
//! loop reaps at the end of its turn, so nothing is freed while a delivery is
//! walking subscribers.

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Instant;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::message::Message;
use crate::outbuf::{Chunk, OutQueue};
use crate::request::{Head, Route};
use crate::store::Ticket;
use crate::subscribers::{Outcome, SubscriberId};
use crate::throttle::Warnings;
use crate::timer::TimerId;
use crate::wire::control::{ControlError, Reply};
use crate::wire::transport::Transport;
use crate::wire::{cgi, fcgi, http};

/// A connected stream socket, TCP or Unix.
#[derive(Debug)]
pub enum Socket {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain.
    Unix(UnixStream),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Socket {
    /// Shuts our sending side: the peer reads end-of-file after what was
    /// written.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write_vectored(bufs),
            Socket::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Socket {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.register(registry, token, interests),
            Socket::Unix(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.reregister(registry, token, interests),
            Socket::Unix(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.deregister(registry),
            Socket::Unix(s) => s.deregister(registry),
        }
    }
}

/// What a read loop found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket has no more data for now.
    Blocked,
    /// The buffer reached its limit with data possibly left in the socket.
    Full,
    /// The peer closed its side.
    Eof,
}

/// Size of the shared read buffer: one read takes at most this much.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads into `buf` until the socket would block, the peer closes, or `buf`
/// holds `limit` bytes. Reads go through `scratch` (the loop's one shared,
/// already-initialised buffer) so a connection's own buffer never has to be
/// zero-filled ahead of a read, and only bytes that arrived are copied.
pub fn read_into(
    socket: &mut Socket,
    buf: &mut Vec<u8>,
    limit: usize,
    scratch: &mut [u8],
) -> io::Result<ReadEnd> {
    loop {
        if buf.len() >= limit {
            return Ok(ReadEnd::Full);
        }
        let want = (limit - buf.len()).min(scratch.len());
        match socket.read(&mut scratch[..want]) {
            Ok(0) => return Ok(ReadEnd::Eof),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads and throws away whatever the peer sends; reports EOF.
pub fn discard_input(socket: &mut Socket, scratch: &mut [u8]) -> io::Result<ReadEnd> {
    loop {
        match socket.read(scratch) {
            Ok(0) => return Ok(ReadEnd::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// When a connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Open.
    No,
    /// Once its output has been written (a finished response).
    AfterFlush,
    /// Its output is written and our side shut: what the peer still sends
    /// is read and dropped until it closes too, for at most
    /// [`crate::server::LINGER`]. Closing with unread input would reset the
    /// connection, and a peer still writing (a web server's last FastCGI
    /// record, a pipelined request) would get an error in place of the
    /// answer it already has.
    Lingering,
    /// At the end of this turn, dropping unsent output.
    Now,
}

/// One client request parked on a mailbox, whatever gateway carried it.
#[derive(Debug)]
pub struct Exchange {
    /// The mailbox it reads.
    pub mailbox: Rc<str>,
    /// How messages are written.
    pub transport: Transport,
    /// Long-poll: answer with messages after this id. Streams: the id of
    /// the last message queued to the client (where a successor resumes).
    pub since: u64,
    /// The next heartbeat (streams) or the end of the hold (long-poll).
    pub timer: TimerId,
    /// Long-poll: it is on the answer list (a message reached it this turn,
    /// or its mailbox was dropped); nothing else answers it meanwhile.
    pub woken: bool,
}

/// A control command's reply, held in request order until it can be written.
#[derive(Debug)]
pub enum PendingReply {
    /// Known: written once every reply before it is.
    Ready(Result<Reply, ControlError>),
    /// Waiting for the store's result for this ticket.
    Waiting(Ticket),
    /// `QUIT` or a framing error: close once everything before it is written.
    Close,
}

/// The state of a control connection.
#[derive(Debug)]
pub struct ControlState {
    /// Bytes read but not yet framed.
    pub inbuf: Vec<u8>,
    /// Payload bytes of an oversize request still to discard (at most
    /// [`crate::wire::control::MAX_SKIP`] + 1).
    pub skip: u32,
    /// How many replies at the front of `pending` are known.
    pub resolved: u32,
    /// Replies not yet written, in request order. The store completes one
    /// connection's commands in order, so the next result is always for
    /// the first `Waiting` one, at `resolved` or after known replies. Boxed:
    /// control connections are few, and this keeps [`Session`] (the size of
    /// every client connection) at 72 bytes.
    #[allow(clippy::box_collection)]
    pub pending: Box<Vec<PendingReply>>,
    /// When the backend last sent something: the idle connection with the
    /// oldest is closed first when the control limit is reached.
    pub last_active: Instant,
}

impl ControlState {
    /// A fresh connection, active now.
    pub fn new(now: Instant) -> ControlState {
        ControlState {
            inbuf: Vec::new(),
            skip: 0,
            resolved: 0,
            pending: Box::default(),
            last_active: now,
        }
    }

    /// Records the result for `ticket`; false when nothing waits for it.
    pub fn resolve(&mut self, ticket: Ticket, reply: Result<Reply, ControlError>) -> bool {
        let start = self.resolved as usize;
        let Some(i) = self.pending[start..]
            .iter()
            .position(|p| matches!(p, PendingReply::Waiting(t) if *t == ticket))
        else {
            return false;
        };
        self.pending[start + i] = PendingReply::Ready(reply);
        self.advance();
        true
    }

    /// Moves `resolved` past every known reply.
    pub fn advance(&mut self) {
        while let Some(p) = self.pending.get(self.resolved as usize) {
            if matches!(p, PendingReply::Waiting(_)) {
                break;
            }
            self.resolved += 1;
        }
    }
}

/// A client request waiting for the store to open its mailbox.
#[derive(Debug)]
pub struct Opening {
    /// The store result it waits for.
    pub ticket: Ticket,
    /// What the client asked for.
    pub route: Route,
    /// Its deadline (FastCGI's request head deadline goes on; HTTP and SCGI
    /// keep the connection's).
    pub timer: TimerId,
    /// Handed over by the process this one replaced: the exchange goes on
    /// where it was (a stream's head is already out), and its next deadline
    /// is this one.
    pub continued: Option<Instant>,
}

/// Where an HTTP client connection is in its life.
#[derive(Debug)]
pub enum HttpPhase {
    /// Reading a request head; closed if it is not complete by the
    /// connection's deadline.
    Head,
    /// Waiting for the store to open the mailbox.
    Opening(Box<Opening>),
    /// Parked on a mailbox.
    Active(Exchange),
}

/// The state of an HTTP client connection.
#[derive(Debug)]
pub struct HttpState {
    /// Request bytes not yet parsed (empty, unallocated, while parked).
    pub inbuf: Vec<u8>,
    /// The phase.
    pub phase: HttpPhase,
    /// Whether the current request allows another one after it.
    pub keep_alive: bool,
}

/// Where an SCGI connection is in its life (one request per connection).
#[derive(Debug)]
pub enum ScgiPhase {
    /// Reading the header netstring, under the connection's deadline.
    Head,
    /// Waiting for the store to open the mailbox.
    Opening(Box<Opening>),
    /// Parked on a mailbox.
    Active(Exchange),
    /// The response is complete; waiting for output to drain.
    Done,
}

/// The state of an SCGI connection.
#[derive(Debug)]
pub struct ScgiState {
    /// Header bytes not yet parsed (released once parked).
    pub inbuf: Vec<u8>,
    /// The phase.
    pub phase: ScgiPhase,
}

/// Where one FastCGI request is in its life.
#[derive(Debug)]
pub enum FcgiPhase {
    /// Collecting `PARAMS` until the empty record that ends them; the
    /// request is cut if they are not complete by the deadline.
    Params {
        /// The parameter bytes so far.
        params: Vec<u8>,
        /// The head deadline of this request.
        timer: TimerId,
    },
    /// Waiting for the store to open the mailbox.
    Opening(Box<Opening>),
    /// Parked on a mailbox.
    Active(Exchange),
}

/// One FastCGI request on a connection.
#[derive(Debug)]
pub struct FcgiRequest {
    /// The request id the web server chose.
    pub id: u16,
    /// `FCGI_KEEP_CONN`: keep the connection after this request.
    pub keep_conn: bool,
    /// The phase.
    pub phase: FcgiPhase,
}

/// The state of a FastCGI connection: any number of concurrent requests.
#[derive(Debug)]
pub struct FcgiState {
    /// Record bytes not yet parsed.
    pub inbuf: Vec<u8>,
    /// Requests begun and not yet ended.
    pub requests: Vec<FcgiRequest>,
}

impl FcgiState {
    /// The request with id `rid`.
    pub fn request_mut(&mut self, rid: u16) -> Option<&mut FcgiRequest> {
        self.requests.iter_mut().find(|r| r.id == rid)
    }

    /// The head deadline of request `rid`, until its mailbox is open.
    pub fn head_timer(&self, rid: u16) -> Option<TimerId> {
        self.requests.iter().find_map(|r| match &r.phase {
            FcgiPhase::Params { timer, .. } if r.id == rid => Some(*timer),
            FcgiPhase::Opening(o) if r.id == rid => Some(o.timer),
            _ => None,
        })
    }

    /// Bytes held for requests whose `PARAMS` are not complete yet.
    pub fn params_bytes(&self) -> usize {
        self.requests
            .iter()
            .map(|r| match &r.phase {
                FcgiPhase::Params { params, .. } => params.capacity(),
                FcgiPhase::Opening(_) | FcgiPhase::Active(_) => 0,
            })
            .sum()
    }
}

/// The kinds of connection: what a listener accepts, and so what each
/// accepted connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A backend on the control socket.
    Control,
    /// A client (or web server) speaking HTTP.
    Http,
    /// A web server speaking FastCGI.
    Fcgi,
    /// A web server speaking SCGI.
    Scgi,
    /// A monitoring system fetching `/metrics`.
    Metrics,
}

impl Kind {
    /// Short name for log lines and listener names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Control => "control",
            Kind::Http => "http",
            Kind::Fcgi => "fastcgi",
            Kind::Scgi => "scgi",
            Kind::Metrics => "metrics",
        }
    }
}

/// A connection's session state: one variant per [`Kind`], each driven by
/// its module in [`crate::session`].
#[derive(Debug)]
pub enum Session {
    /// A backend on the control socket.
    Control(ControlState),
    /// A client (or web server) speaking HTTP.
    Http(HttpState),
    /// A web server speaking FastCGI.
    Fcgi(FcgiState),
    /// A web server speaking SCGI.
    Scgi(ScgiState),
    /// A `/metrics` request being read; it is answered and closed.
    Metrics(Vec<u8>),
}

impl Session {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Session::Control(_) => Kind::Control,
            Session::Http(_) => Kind::Http,
            Session::Fcgi(_) => Kind::Fcgi,
            Session::Scgi(_) => Kind::Scgi,
            Session::Metrics(_) => Kind::Metrics,
        }
    }

    /// Short name for log lines.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub socket: Socket,
    /// What it speaks, and where it is in its life.
    pub session: Session,
    /// Output not yet written.
    pub out: OutQueue,
    /// Whether WRITABLE is part of the registered interest.
    pub writable: bool,
    /// Whether the key is already in the flush list.
    pub pending: bool,
    /// Input is left unread until queued output drains: a backend's replies
    /// or a client's pipelined answers passed their high-water mark.
    pub paused: bool,
    /// Closing state.
    pub close: Close,
    /// Bytes this connection's unfinished requests hold (input buffer and
    /// FastCGI `PARAMS`), as last counted into [`Conns::head_bytes`].
    pub head_held: u32,
    /// The connection-level deadline in force: the head (HTTP, SCGI), idle
    /// between requests (FastCGI), or draining a finished response; `NONE`
    /// while requests are parked (they have deadlines of their own).
    pub timer: TimerId,
}

impl Conn {
    /// Bytes held now for requests not yet complete: buffered input and
    /// FastCGI parameters.
    pub fn head_bytes(&self) -> usize {
        match &self.session {
            Session::Http(h) => h.inbuf.capacity(),
            Session::Scgi(s) => s.inbuf.capacity(),
            Session::Fcgi(f) => f.inbuf.capacity() + f.params_bytes(),
            Session::Metrics(b) => b.capacity(),
            Session::Control(_) => 0,
        }
    }

    /// The exchange for request id `rid`, if one is active.
    pub fn exchange_mut(&mut self, rid: u16) -> Option<&mut Exchange> {
        match &mut self.session {
            Session::Http(HttpState {
                phase: HttpPhase::Active(ex),
                ..
            }) if rid == 0 => Some(ex),
            Session::Scgi(ScgiState {
                phase: ScgiPhase::Active(ex),
                ..
            }) if rid == 0 => Some(ex),
            Session::Fcgi(f) => match f.request_mut(rid) {
                Some(FcgiRequest {
                    phase: FcgiPhase::Active(ex),
                    ..
                }) => Some(ex),
                _ => None,
            },
            _ => None,
        }
    }

    /// Makes `exchange` the active exchange of request `rid`.
    pub fn set_exchange(&mut self, rid: u16, exchange: Exchange) {
        match &mut self.session {
            Session::Http(h) => h.phase = HttpPhase::Active(exchange),
            Session::Scgi(s) => s.phase = ScgiPhase::Active(exchange),
            Session::Fcgi(f) => {
                if let Some(r) = f.request_mut(rid) {
                    r.phase = FcgiPhase::Active(exchange);
                }
            }
            Session::Control(_) | Session::Metrics(_) => {
                debug_assert!(false, "control and metrics connections have no exchanges")
            }
        }
    }

    /// Puts request `rid` in the opening state; a FastCGI request keeps the
    /// deadline of its head.
    pub fn set_opening(&mut self, rid: u16, mut opening: Box<Opening>) {
        match &mut self.session {
            Session::Http(h) => h.phase = HttpPhase::Opening(opening),
            Session::Scgi(s) => s.phase = ScgiPhase::Opening(opening),
            Session::Fcgi(f) => {
                if let Some(r) = f.request_mut(rid) {
                    if let FcgiPhase::Params { timer, .. } = r.phase {
                        opening.timer = timer;
                    }
                    r.phase = FcgiPhase::Opening(opening);
                }
            }
            Session::Control(_) | Session::Metrics(_) => {
                debug_assert!(false, "control and metrics connections open nothing")
            }
        }
    }

    /// Takes the request waiting for `ticket` out of the opening state;
    /// `None` when nothing waits for it (the request or connection ended).
    pub fn take_opening(&mut self, ticket: Ticket) -> Option<(u16, Box<Opening>)> {
        let waits = |o: &Opening| o.ticket == ticket;
        match &mut self.session {
            Session::Http(h) if matches!(&h.phase, HttpPhase::Opening(o) if waits(o)) => {
                match std::mem::replace(&mut h.phase, HttpPhase::Head) {
                    HttpPhase::Opening(o) => Some((0, o)),
                    _ => None,
                }
            }
            Session::Scgi(s) if matches!(&s.phase, ScgiPhase::Opening(o) if waits(o)) => {
                match std::mem::replace(&mut s.phase, ScgiPhase::Done) {
                    ScgiPhase::Opening(o) => Some((0, o)),
                    _ => None,
                }
            }
            Session::Fcgi(f) => {
                let r = f
                    .requests
                    .iter_mut()
                    .find(|r| matches!(&r.phase, FcgiPhase::Opening(o) if waits(o)))?;
                let placeholder = FcgiPhase::Params {
                    params: Vec::new(),
                    timer: TimerId::NONE,
                };
                match std::mem::replace(&mut r.phase, placeholder) {
                    FcgiPhase::Opening(o) => Some((r.id, o)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Every active exchange, with its request id.
    pub fn exchanges(&self) -> Vec<(u16, &Exchange)> {
        match &self.session {
            Session::Http(HttpState {
                phase: HttpPhase::Active(ex),
                ..
            }) => vec![(0, ex)],
            Session::Scgi(ScgiState {
                phase: ScgiPhase::Active(ex),
                ..
            }) => vec![(0, ex)],
            Session::Fcgi(f) => f
                .requests
                .iter()
                .filter_map(|r| match &r.phase {
                    FcgiPhase::Active(ex) => Some((r.id, ex)),
                    FcgiPhase::Params { .. } | FcgiPhase::Opening(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Queues a response head for request `rid` in the gateway's syntax.
    pub fn push_head(&mut self, rid: u16, head: &Head) {
        let mut bytes = Vec::with_capacity(192);
        match &self.session {
            Session::Http(h) => http::encode_head(head, h.keep_alive, &mut bytes),
            Session::Metrics(_) => http::encode_head(head, false, &mut bytes),
            Session::Scgi(_) => cgi::encode_head(head, &mut bytes),
            Session::Fcgi(_) => {
                let mut cgi_head = Vec::with_capacity(160);
                cgi::encode_head(head, &mut cgi_head);
                fcgi::encode_stdout(&mut bytes, rid, &cgi_head);
            }
            Session::Control(_) => debug_assert!(false, "control connections have no responses"),
        }
        self.out.push(Chunk::Owned(bytes));
    }

    /// Queues body chunks for request `rid`, draining `chunks`. FastCGI wraps
    /// them in one `STDOUT` record when they fit (the usual case: the shared
    /// message bytes are not copied), else copies them into several.
    pub fn push_body(&mut self, rid: u16, chunks: &mut Vec<Chunk>) {
        if let Session::Fcgi(_) = self.session {
            let total: usize = chunks.iter().map(Chunk::len).sum();
            if total == 0 {
                chunks.clear();
                return;
            }
            if total <= fcgi::MAX_CONTENT {
                self.out
                    .push(Chunk::copy(&fcgi::header(fcgi::STDOUT, rid, total, 0)));
            } else {
                let joined: Vec<u8> = chunks.drain(..).flat_map(|c| c.bytes().to_vec()).collect();
                let mut records = Vec::with_capacity(joined.len() + 64);
                fcgi::encode_stdout(&mut records, rid, &joined);
                self.out.push(Chunk::Owned(records));
                return;
            }
        }
        for chunk in chunks.drain(..) {
            self.out.push(chunk);
        }
    }

    /// Ends request `rid`'s response: HTTP goes back to reading heads after a
    /// sized answer on a keep-alive connection; FastCGI writes `END_REQUEST`
    /// and keeps the connection if the web server asked for it; everything
    /// else closes once its output is written. Returns what the connection
    /// waits for next, so the caller can arm the matching deadline.
    pub fn finish(&mut self, rid: u16, sized: bool) -> Next {
        let keep = match &mut self.session {
            Session::Http(h) if sized && h.keep_alive => {
                h.phase = HttpPhase::Head;
                true
            }
            Session::Http(_) | Session::Metrics(_) => false,
            Session::Scgi(s) => {
                s.phase = ScgiPhase::Done;
                false
            }
            Session::Fcgi(f) => {
                let keep_conn = match f.requests.iter().position(|r| r.id == rid) {
                    Some(i) => f.requests.swap_remove(i).keep_conn,
                    None => false,
                };
                self.out
                    .push(Chunk::copy(&fcgi::end_request(rid, fcgi::REQUEST_COMPLETE)));
                if keep_conn && !f.requests.is_empty() {
                    return Next::Requests;
                }
                keep_conn
            }
            Session::Control(_) => false,
        };
        if !keep && self.close == Close::No {
            self.close = Close::AfterFlush;
        }
        match (&self.session, keep) {
            (_, false) => Next::Drain,
            (Session::Fcgi(_), true) => Next::Idle,
            _ => Next::Head,
        }
    }
}

/// What a connection waits for once a response is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another request head (HTTP keep-alive).
    Head,
    /// Another request from a web server pooling the connection (FastCGI).
    Idle,
    /// Other requests still in progress on the connection (FastCGI).
    Requests,
    /// Nothing: output drains, then the connection closes.
    Drain,
}

/// Splits a subscriber id into connection key and request id.
pub fn split_sub(sub: SubscriberId) -> (usize, u16) {
    ((sub.0 >> 16) as usize, sub.0 as u16)
}

/// Builds the subscriber id of request `rid` on connection `key`.
pub fn sub_id(key: usize, rid: u16) -> SubscriberId {
    SubscriberId(((key as u64) << 16) | rid as u64)
}

/// All connections, plus the per-turn work lists that refer to them.
#[derive(Debug, Default)]
pub struct Conns {
    /// The connections, keyed by token minus [`crate::server::FIRST_CONN`].
    pub slab: Slab<Conn>,
    /// Keys with output to flush this turn.
    pub pending: Vec<usize>,
    /// Keys to reap at the end of the turn.
    pub closing: Vec<usize>,
    /// Long-poll requests to answer at the end of the turn.
    pub answers: Vec<(usize, u16)>,
    /// The messages fanned out to held long-polls this turn, in order: their
    /// answers are made of them.
    pub woken: Vec<(usize, u16, Message)>,
    /// Reused encoding space.
    pub scratch: Vec<Chunk>,
    /// Counters.
    pub counters: crate::metrics::Counters,
    /// Warnings a peer can trigger at will, rate-limited.
    pub warnings: Warnings,
    /// Control connections open.
    pub control: usize,
    /// Metrics connections open.
    pub metrics: usize,
    /// The one buffer every read goes through ([`READ_CHUNK`] bytes once allocated).
    pub read_buf: Vec<u8>,
    /// What all unfinished client requests hold, summed from [`Conn::head_held`].
    pub head_bytes: usize,
    /// The serial of the last store ticket handed out.
    pub ticket_serial: u32,
}

impl Conns {
    /// A connection and the shared read buffer, borrowed together.
    pub fn with_read_buf(&mut self, key: usize) -> Option<(&mut Conn, &mut [u8])> {
        if self.read_buf.is_empty() {
            self.read_buf = vec![0; READ_CHUNK];
        }
        let conn = self.slab.get_mut(key)?;
        Some((conn, &mut self.read_buf))
    }

    /// The exchange `rid` of connection `key`, unless that connection is closing.
    pub fn open_exchange(&mut self, key: usize, rid: u16) -> Option<&mut Exchange> {
        self.slab
            .get_mut(key)
            .filter(|c| c.close == Close::No)?
            .exchange_mut(rid)
    }

    /// Counts a connection's unfinished-request bytes again; returns true
    /// when it grew and all connections together now hold more than `limit`.
    pub fn account_head(&mut self, key: usize, limit: usize) -> bool {
        let Some(conn) = self.slab.get_mut(key) else {
            return false;
        };
        let now_held = conn.head_bytes().min(u32::MAX as usize);
        let before = conn.head_held as usize;
        conn.head_held = now_held as u32;
        self.head_bytes = self.head_bytes + now_held - before;
        now_held > before && self.head_bytes > limit
    }

    /// A store ticket for connection `key`: its key in the upper 32 bits, a
    /// serial in the lower, so a result for a connection since closed (and
    /// its key reused) matches nothing that waits.
    pub fn ticket(&mut self, key: usize) -> Ticket {
        self.ticket_serial = self.ticket_serial.wrapping_add(1);
        Ticket(((key as u64) << 32) | u64::from(self.ticket_serial))
    }

    /// Puts a connection on the flush list (once).
    pub fn schedule_flush(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key)
            && !conn.pending
        {
            conn.pending = true;
            self.pending.push(key);
        }
    }

    /// Marks a connection for closing; `Close::Now` reaps it this turn.
    pub fn close(&mut self, key: usize, how: Close) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        match (conn.close, how) {
            (Close::Now, _) | (_, Close::No) => {}
            (_, Close::Now) => {
                conn.close = Close::Now;
                self.closing.push(key);
            }
            (Close::Lingering, _) => {}
            (_, Close::AfterFlush | Close::Lingering) => {
                conn.close = Close::AfterFlush;
                self.schedule_flush(key);
            }
        }
    }

    /// Checks a connection that just had output queued: past `max_output` it
    /// is closed as a slow client, else it goes on the flush list. Returns
    /// false when it was closed.
    pub fn commit_output(&mut self, key: usize, max_output: usize, now: Instant) -> bool {
        let Some(conn) = self.slab.get_mut(key) else {
            return false;
        };
        if conn.out.len() <= max_output {
            self.schedule_flush(key);
            return true;
        }
        let (proto, queued) = (conn.session.name(), conn.out.len());
        self.warnings.slow_clients.note(now, || {
            format!("conn={key} {proto} output over max-output ({queued} bytes queued): closing slow client")
        });
        conn.out.clear();
        self.counters.slow_closed += 1;
        self.close(key, Close::Now);
        false
    }

    /// The control connection idle longest (nothing buffered either way),
    /// if any: the one to close when the control limit is reached.
    pub fn oldest_idle_control(&self) -> Option<usize> {
        self.slab
            .iter()
            .filter_map(|(key, conn)| match &conn.session {
                Session::Control(c)
                    if conn.close == Close::No
                        && c.inbuf.is_empty()
                        && c.skip == 0
                        && c.pending.is_empty()
                        && conn.out.is_empty() =>
                {
                    Some((c.last_active, key))
                }
                _ => None,
            })
            .min()
            .map(|(_, key)| key)
    }

    /// Hands one message to one subscriber (the registry's fan-out callback).
    pub fn deliver(
        &mut self,
        sub: SubscriberId,
        msg: &Message,
        max_output: usize,
        now: Instant,
    ) -> Outcome {
        let (key, rid) = split_sub(sub);
        let Some(conn) = self.slab.get_mut(key) else {
            return Outcome::Failed;
        };
        if conn.close != Close::No {
            return Outcome::Failed;
        }
        let Some(ex) = conn.exchange_mut(rid) else {
            return Outcome::Failed;
        };
        if ex.transport == Transport::Poll {
            // It stays subscribed until the end of the turn, so that every
            // message of the turn goes into its one answer.
            if !ex.woken {
                ex.woken = true;
                self.answers.push((key, rid));
            }
            self.woken.push((key, rid, msg.clone()));
            return Outcome::Keep;
        }
        ex.since = ex.since.max(msg.id);
        ex.transport.message(msg, &mut self.scratch);
        conn.push_body(rid, &mut self.scratch);
        if !self.commit_output(key, max_output, now) {
            // The registry detaches it; the client resumes from retained messages.
            return Outcome::Failed;
        }
        self.counters.written += 1;
        Outcome::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parked client is one `Conn`: its size is the largest part of
    /// the idle cost per subscriber (docs/performance.md), so growing it
    /// must be a decision, not an accident.
    #[test]
    fn a_connection_stays_small() {
        assert_eq!(std::mem::size_of::<Session>(), 72);
        assert_eq!(std::mem::size_of::<Conn>(), 160);
    }
}
