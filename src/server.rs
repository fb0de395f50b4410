//! The event loop: one thread, one `Poll`, every connection in one slab.
//!
//! Each turn reads top to bottom:
//!
//! 1. poll, with the nearest deadline (timer, mailbox expiry, shutdown) as timeout;
//! 2. dispatch each event by token: the signal pipe, a listener, or a connection;
//! 3. fire due timers (heartbeats, long-poll holds, head timeouts) and expire mailboxes;
//! 4. answer the long-polls that messages woke during this turn;
//! 5. flush every connection that has output, once (only a short write arms WRITABLE);
//! 6. reap the connections marked for closing, unsubscribing their requests.
//!
//! Handlers never free a connection: they mark it, and step 6 frees it, so a
//! delivery can walk a mailbox's subscribers without any of them vanishing.
//! Tokens: [`SIGNAL`], then one per listener, then `FIRST_CONN + slab key`;
//! an event for a key no longer in the slab is ignored.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, ListenAddr};
use crate::conn::{
    Close, Conn, Conns, ControlState, FcgiState, HttpPhase, HttpState, Proto, ScgiPhase, ScgiState,
    Socket, sub_id,
};
use crate::limits;
use crate::outbuf::OutQueue;
use crate::store::{MailboxStore, MemoryStore};
use crate::timer::{CONN_SLOT, TimerId, Timers};

/// Token of the signal pipe.
pub const SIGNAL: Token = Token(0);
/// Token of the first listener; listener `i` is `LISTENER_BASE + i`.
const LISTENER_BASE: usize = 1;
/// Connection tokens start here, above any plausible number of listeners.
pub const FIRST_CONN: usize = 1 << 16;
/// Backends rarely need more than a handful; this only guards against leaks.
const MAX_CONTROL_CONNS: usize = 1024;
/// Accept queue length asked of the kernel (capped by net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How long shutdown waits for final output to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Backends' control protocol.
    Control,
    /// Clients over HTTP.
    Http,
    /// A web server over FastCGI.
    Fcgi,
    /// A web server over SCGI.
    Scgi,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Http => "http",
            Role::Fcgi => "fastcgi",
            Role::Scgi => "scgi",
        }
    }
}

#[derive(Debug)]
enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

#[derive(Debug)]
struct Listener {
    role: Role,
    socket: ListenSocket,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenSocket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The whole server: listeners, connections, store, timers.
pub struct Server {
    pub(crate) poll: Poll,
    listeners: Vec<Listener>,
    pub(crate) conns: Conns,
    pub(crate) store: Box<dyn MailboxStore>,
    pub(crate) timers: Timers,
    pub(crate) config: Config,
    signals: Signals,
    pub(crate) started: Instant,
    pub(crate) shutdown: Option<Instant>,
    /// Client (non-control) connections open.
    pub(crate) clients: usize,
}

impl Server {
    /// Binds every listener and the signal handlers.
    pub fn new(config: Config) -> Result<Server, String> {
        match limits::raise_nofile() {
            Ok(fds) if limits::clients_allowed(fds) < config.max_connections as u64 => log::warn!(
                "max-connections is {} but the descriptor limit ({fds}) allows about {} clients; \
                 raise the hard limit (systemd: LimitNOFILE) or lower max-connections",
                config.max_connections,
                limits::clients_allowed(fds)
            ),
            Ok(fds) => log::debug!("descriptor limit {fds}"),
            Err(e) => log::warn!("cannot read or raise the descriptor limit: {e}"),
        }
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let mut signals = Signals::new([SIGTERM, SIGINT])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        let mut listeners = Vec::new();
        let control = ListenAddr::Unix(config.control.clone());
        let wanted = std::iter::once((Role::Control, &control))
            .chain(config.http.iter().map(|a| (Role::Http, a)))
            .chain(config.fastcgi.iter().map(|a| (Role::Fcgi, a)))
            .chain(config.scgi.iter().map(|a| (Role::Scgi, a)));
        for (i, (role, addr)) in wanted.enumerate() {
            let mut socket = bind(addr, config.socket_mode)
                .map_err(|e| format!("cannot listen on {addr} ({}): {e}", role.name()))?;
            let token = Token(LISTENER_BASE + i);
            let registered = match &mut socket {
                ListenSocket::Tcp(l) => poll.registry().register(l, token, Interest::READABLE),
                ListenSocket::Unix(l, _) => poll.registry().register(l, token, Interest::READABLE),
            };
            registered.map_err(|e| format!("cannot watch {addr}: {e}"))?;
            log::info!("listening {}={}", role.name(), local_name(&socket));
            listeners.push(Listener { role, socket });
        }
        let first_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ok(Server {
            poll,
            listeners,
            conns: Conns::default(),
            store: Box::new(MemoryStore::new(config.store_limits(), first_id)),
            timers: Timers::default(),
            config,
            signals,
            started: Instant::now(),
            shutdown: None,
            clients: 0,
        })
    }

    /// Runs until SIGTERM/SIGINT and a clean drain.
    pub fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if self
                .shutdown
                .is_some_and(|deadline| self.conns.slab.is_empty() || now >= deadline)
            {
                log::info!("shut down ({} connections left)", self.conns.slab.len());
                return Ok(());
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll failed: {e}")),
            }
            let now = Instant::now();
            for event in events.iter() {
                self.dispatch(event, now);
            }
            self.fire_timers(now);
            self.answer_polls(now);
            self.flush(now);
            self.reap(now);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.store.next_deadline(),
            self.conns.warnings.next_deadline(),
            self.shutdown,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn dispatch(&mut self, event: &mio::event::Event, now: Instant) {
        match event.token() {
            SIGNAL => {
                if self.signals.pending().next().is_some() {
                    self.begin_shutdown(now);
                }
            }
            Token(t) if t < FIRST_CONN => self.accept(t - LISTENER_BASE, now),
            Token(t) => {
                let key = t - FIRST_CONN;
                let Some(conn) = self.conns.slab.get(key) else {
                    return;
                };
                let control = matches!(conn.proto, Proto::Control(_));
                if event.is_writable() {
                    self.conns.schedule_flush(key);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    if control {
                        self.control_readable(key, now);
                    } else {
                        self.client_readable(key, now);
                    }
                }
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let role = listener.role;
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let accepted = match &listener.socket {
                ListenSocket::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Socket::Tcp(s)
                }),
                ListenSocket::Unix(l, _) => l.accept().map(|(s, _)| Socket::Unix(s)),
            };
            let mut socket = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on {} listener failed: {e}", role.name());
                    return;
                }
            };
            let full = match role {
                Role::Control => self.conns.control >= MAX_CONTROL_CONNS,
                Role::Http | Role::Fcgi | Role::Scgi => self.clients >= self.config.max_connections,
            };
            if full {
                self.conns.counters.refused += 1;
                self.conns.warnings.refused.note(now, || {
                    format!("{} connection refused: limit reached", role.name())
                });
                if role == Role::Http {
                    // Best effort: a web-server gateway just sees the connection close.
                    let _ = socket.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\nmax-connections reached; retry.\r\n");
                }
                continue;
            }
            let entry = self.conns.slab.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(FIRST_CONN + key),
                Interest::READABLE,
            ) {
                log::warn!("cannot register connection: {e}");
                continue;
            }
            let (proto, timer) = match role {
                Role::Control => {
                    self.conns.control += 1;
                    (Proto::Control(ControlState::default()), TimerId::NONE)
                }
                Role::Http | Role::Fcgi | Role::Scgi => {
                    self.clients += 1;
                    let timer =
                        self.timers
                            .insert(now + self.config.request_timeout, key, CONN_SLOT);
                    let proto = match role {
                        Role::Fcgi => Proto::Fcgi(FcgiState {
                            inbuf: Vec::new(),
                            requests: Vec::new(),
                        }),
                        Role::Scgi => Proto::Scgi(ScgiState {
                            inbuf: Vec::new(),
                            phase: ScgiPhase::Head,
                        }),
                        _ => Proto::Http(HttpState {
                            inbuf: Vec::new(),
                            phase: HttpPhase::Head,
                            keep_alive: false,
                        }),
                    };
                    (proto, timer)
                }
            };
            entry.insert(Conn {
                socket,
                proto,
                out: OutQueue::default(),
                writable: false,
                pending: false,
                paused: false,
                close: Close::No,
                timer,
            });
            self.conns.counters.accepted += 1;
            log::debug!("conn={key} {} accepted", role.name());
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(due) = self.timers.pop_due(now) {
            if due.slot == CONN_SLOT {
                self.conn_timeout(due.key, due.id);
            } else {
                self.request_timer(due.key, due.slot as u16, due.id, now);
            }
        }
        self.conns.warnings.flush(now);
        let expired = self.store.expire(now);
        if expired > 0 {
            log::debug!("expired {expired} idle mailboxes");
        }
    }

    /// A connection-level deadline came due: the head was not complete, a
    /// pooled FastCGI connection stayed idle, or finished output did not drain.
    fn conn_timeout(&mut self, key: usize, id: TimerId) {
        let Some(conn) = self.conns.slab.get(key) else {
            return;
        };
        if conn.timer == id {
            log::debug!("conn={key} {} timed out", conn.proto.name());
            self.conns.close(key, Close::Now);
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some(key) = self.conns.pending.pop() {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                continue;
            };
            conn.pending = false;
            if conn.close == Close::Now {
                continue;
            }
            match conn.out.write_to(&mut conn.socket) {
                Ok(true) => {
                    if conn.writable {
                        conn.writable = false;
                        let _ = self.poll.registry().reregister(
                            &mut conn.socket,
                            Token(FIRST_CONN + key),
                            Interest::READABLE,
                        );
                    }
                    if conn.close == Close::AfterFlush {
                        self.conns.close(key, Close::Now);
                    } else if conn.paused {
                        conn.paused = false;
                        if matches!(conn.proto, Proto::Control(_)) {
                            self.control_resume(key, now);
                        } else {
                            self.client_readable(key, now);
                        }
                    }
                }
                Ok(false) => {
                    if !conn.writable {
                        conn.writable = true;
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        let _ = self.poll.registry().reregister(
                            &mut conn.socket,
                            Token(FIRST_CONN + key),
                            interest,
                        );
                    }
                }
                Err(e) => {
                    log::debug!("conn={key} {} write failed: {e}", conn.proto.name());
                    self.conns.close(key, Close::Now);
                }
            }
        }
    }

    fn reap(&mut self, now: Instant) {
        while let Some(key) = self.conns.closing.pop() {
            if self
                .conns
                .slab
                .get(key)
                .is_none_or(|c| c.close != Close::Now)
            {
                continue;
            }
            let mut conn = self.conns.slab.remove(key);
            for (rid, ex) in conn.exchanges() {
                if ex.subscribed {
                    self.store.unsubscribe(ex.mailbox, sub_id(key, rid), now);
                }
            }
            let _ = self.poll.registry().deregister(&mut conn.socket);
            match conn.proto {
                Proto::Control(_) => self.conns.control -= 1,
                _ => self.clients -= 1,
            }
            log::debug!("conn={key} {} closed", conn.proto.name());
        }
    }

    /// Stops accepting, ends every stream cleanly, answers held polls, and
    /// gives the output [`SHUTDOWN_GRACE`] to drain.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        log::info!(
            "shutting down: closing listeners and ending {} connections",
            self.conns.slab.len()
        );
        for mut listener in self.listeners.drain(..) {
            let _ = match &mut listener.socket {
                ListenSocket::Tcp(l) => self.poll.registry().deregister(l),
                ListenSocket::Unix(l, _) => self.poll.registry().deregister(l),
            };
        }
        self.shutdown = Some(now + SHUTDOWN_GRACE);
        let keys: Vec<usize> = self.conns.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Proto::Http(h) = &mut self.conns.slab[key].proto {
                h.keep_alive = false;
            }
            let active: Vec<u16> = self.conns.slab[key]
                .exchanges()
                .iter()
                .map(|(rid, _)| *rid)
                .collect();
            match &self.conns.slab[key].proto {
                Proto::Control(_) => self.conns.close(key, Close::AfterFlush),
                _ if active.is_empty() => self.conns.close(key, Close::Now),
                _ => {
                    for rid in active {
                        self.end_exchange(key, rid, now);
                    }
                }
            }
        }
    }
}

/// Binds a listener; a leftover Unix socket file from a crashed run is
/// replaced, but one that a live process still answers on is an error.
fn bind(addr: &ListenAddr, mode: Option<u32>) -> io::Result<ListenSocket> {
    let socket = match addr {
        ListenAddr::Tcp(a) => ListenSocket::Tcp(TcpListener::bind(*a)?),
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = ListenSocket::Unix(UnixListener::bind(path)?, path.clone());
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            listener
        }
    };
    let fd = match &socket {
        ListenSocket::Tcp(l) => l.as_raw_fd(),
        ListenSocket::Unix(l, _) => l.as_raw_fd(),
    };
    // A reconnect storm (a web server restarting, thousands of browsers
    // coming back) overflows a small accept queue and costs each dropped
    // SYN a one-second retransmit; calling listen again only raises the
    // backlog, which the kernel caps at net.core.somaxconn.
    // SAFETY: listen(2) on a socket we own; it touches no memory.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening there",
        )),
        Err(_) => {
            log::warn!("removing stale socket {}", path.display());
            std::fs::remove_file(path)
        }
    }
}

fn local_name(socket: &ListenSocket) -> String {
    match socket {
        ListenSocket::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string()),
        ListenSocket::Unix(_, path) => format!("unix:{}", path.display()),
    }
}
