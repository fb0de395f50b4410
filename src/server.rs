//! The event loop: one thread, one `Poll`, every connection in one slab.
//!
//! Each turn reads top to bottom:
//!
//! 1. poll, with the nearest deadline (timer, accept retry, mailbox expiry,
//!    warning summary, shutdown) as timeout;
//! 2. dispatch each event by token: the signal pipe, a listener, or a connection;
//! 3. fire due timers (heartbeats, long-poll holds, head timeouts) and expire mailboxes;
//! 4. settle: take the store's finished results (fan out, reply in order,
//!    start the exchanges of opened mailboxes) and answer the long-polls
//!    they woke, until neither has more;
//! 5. commit the store (make this turn's changes durable or shared), before
//!    anything is written, as Redis does before it sleeps;
//! 6. flush every connection that has output, once (only a short write arms WRITABLE);
//! 7. reap the connections marked for closing, unsubscribing their requests,
//!    and accept again if descriptors had run out;
//! 8. while a handover (SIGUSR2, or SIGTERM under a file descriptor store)
//!    is under way, try to complete it ([`crate::upgrade`]): nothing new is
//!    read or accepted until it is done or abandoned.
//!
//! Handlers never free a connection: they mark it, and step 7 frees it, so a
//! delivery can walk a mailbox's subscribers without any of them vanishing.
//! Tokens: [`SIGNAL`], then one per listener, the store's socket just
//! below `FIRST_CONN`, then `FIRST_CONN + slab key`;
//! an event for a key no longer in the slab is ignored.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::auth::Secret;
use crate::config::{Config, ListenAddr};
use crate::conn::{
    Close, Conn, Conns, ControlState, FcgiState, HttpPhase, HttpState, Kind, ScgiPhase, ScgiState,
    Session, Socket, sub_id,
};
use crate::limits;
use crate::notify::Notifier;
use crate::outbuf::OutQueue;
use crate::peer;
use crate::session::{MAX_METRICS_CONNS, Restore};
use crate::store::MailboxStore;
use crate::subscribers::Subscribers;
use crate::timer::{CONN_SLOT, TimerId, Timers};
use crate::upgrade::{Succession, Target, adopt_listener};

/// Token of the signal pipe.
pub const SIGNAL: Token = Token(0);
/// Token of the store's own socket (a shared store's connection).
const STORE: Token = Token(FIRST_CONN - 1);
/// Token of the first listener; listener `i` is `LISTENER_BASE + i`.
const LISTENER_BASE: usize = 1;
/// Connection tokens start here, above any plausible number of listeners.
pub const FIRST_CONN: usize = 1 << 16;
/// Accept queue length asked of the kernel (capped by net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How long a finished connection waits for its peer to close after our
/// side was shut ([`Close::Lingering`]): a peer that was still writing has
/// sent it by then (Apache lingers 2 s too).
pub const LINGER: Duration = Duration::from_secs(2);
/// How long shutdown waits for final output to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) kind: Kind,
    pub(crate) socket: ListenSocket,
    /// The service manager holds it too (socket activation, or a file
    /// descriptor store): a restart need not store it.
    pub(crate) held: bool,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // An inherited socket (no path here) belongs to whoever passed it.
        if let ListenSocket::Unix(_, path) = &self.socket
            && !path.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The whole server: listeners, connections, store, timers.
pub struct Server {
    pub(crate) poll: Poll,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) conns: Conns,
    pub(crate) store: Box<dyn MailboxStore>,
    /// Which parked requests of this process wait on which mailbox.
    pub(crate) subscribers: Subscribers,
    pub(crate) timers: Timers,
    pub(crate) config: Config,
    signals: Signals,
    pub(crate) started: Instant,
    /// The wall-clock time at `started`: the store's clock is derived from
    /// the loop's monotonic one, so it never jumps during a run.
    started_wall: SystemTime,
    pub(crate) shutdown: Option<Instant>,
    /// Client (non-control) connections open.
    pub(crate) clients: usize,
    /// The token-signing secret; `None` runs open (any client, any mailbox).
    pub(crate) secret: Option<Secret>,
    /// A descriptor held in reserve: when accepting on the control socket
    /// fails for lack of descriptors, it is given up so a backend still gets
    /// in, and taken again once descriptors free up.
    spare_fd: Option<std::fs::File>,
    /// Set when accepting failed for lack of descriptors: every listener is
    /// tried again at this instant, or as soon as a connection closes.
    accept_retry: Option<Instant>,
    /// A handover is under way: a binary upgrade (`SIGUSR2`), or a restart
    /// through systemd's file descriptor store (`SIGTERM`). Nothing new is
    /// read or accepted until it completes or is abandoned at the deadline.
    pub(crate) upgrade: Option<(Instant, Target)>,
    /// After an abandoned upgrade: readiness that arrived meanwhile was not
    /// acted on, so every listener and connection is read on the next turn.
    pub(crate) kick: bool,
    /// Requests a predecessor handed over, waiting to open their mailboxes.
    pub(crate) restores: Vec<Restore>,
    /// Unix socket files a predecessor handed over: ours to remove at exit
    /// once the handover is confirmed (until then they are its).
    handed_paths: Vec<(usize, PathBuf)>,
    /// The service manager (systemd), when one started us.
    pub(crate) notifier: Option<Notifier>,
    /// systemd passed descriptors from its store: they leave it once we serve.
    unstore: bool,
    /// A direct successor (`SIGUSR2`): systemd learns of us through
    /// `MAINPID=` from our predecessor, so no `READY=1` is sent.
    direct_successor: bool,
    /// The binary and arguments this process was started with: what an
    /// upgrade starts again.
    pub(crate) exe: Option<PathBuf>,
    pub(crate) args: Vec<std::ffi::OsString>,
}

/// How long to wait before accepting again after running out of
/// descriptors, unless a connection closes first.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Server {
    /// Binds every listener and the signal handlers, and loads the secret;
    /// `store` keeps the mailboxes (the caller chooses which store). A
    /// successor in a binary upgrade passes what it was `handed`: its
    /// listeners stand in for those of their kind, and its connections are
    /// adopted.
    pub fn new(
        mut config: Config,
        store: Box<dyn MailboxStore>,
        succession: Succession,
    ) -> Result<Server, String> {
        match limits::raise_nofile() {
            Ok(fds) if limits::clients_allowed(fds) < config.max_connections as u64 => {
                let allowed = limits::clients_allowed(fds).max(1) as usize;
                log::warn!(
                    "max-connections lowered from {} to {allowed}: the descriptor limit is {fds} \
                     and {} are kept for control connections and listeners; raise the hard \
                     limit (systemd: LimitNOFILE) to allow more",
                    config.max_connections,
                    limits::RESERVED_FDS
                );
                config.max_connections = allowed;
            }
            Ok(fds) => log::debug!("descriptor limit {fds}"),
            Err(e) => log::warn!("cannot read or raise the descriptor limit: {e}"),
        }
        let secret = match &config.secret_file {
            Some(path) => Some(Secret::load(path)?),
            None => {
                log::warn!(
                    "no --secret-file: any client may open any mailbox; set one before \
                     exposing mailboxd beyond a trusted network (docs/security.md)"
                );
                None
            }
        };
        let Succession {
            listeners: mut inherited,
            handed_listeners,
            conns: handed_conns,
            stored,
            unstore,
            direct: successor,
        } = succession;
        let mut held: Vec<bool> = vec![true; inherited.len()];
        let mut handed_paths = Vec::new();
        for l in handed_listeners {
            held.push(l.held);
            let path =
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(l.path.clone());
            handed_paths.push((inherited.len(), PathBuf::from(path)));
            inherited.push(adopt_listener(l)?);
        }
        let names: Vec<String> = inherited.iter().map(|i| i.name.clone()).collect();
        let passed = |kind: Kind| names.iter().any(|n| n == kind.name());
        if !passed(Kind::Control) {
            prepare_control_dir(&config)?;
        }
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        let mut listeners = Vec::new();
        let control = ListenAddr::Unix(config.control.clone());
        let wanted = std::iter::once((Kind::Control, &control, Some(config.control_mode)))
            .chain(
                config
                    .http
                    .iter()
                    .map(|a| (Kind::Http, a, config.socket_mode)),
            )
            .chain(
                config
                    .fastcgi
                    .iter()
                    .map(|a| (Kind::Fcgi, a, config.socket_mode)),
            )
            .chain(
                config
                    .scgi
                    .iter()
                    .map(|a| (Kind::Scgi, a, config.socket_mode)),
            )
            .chain(config.metrics.iter().map(|a| (Kind::Metrics, a, None)));
        // Sockets passed in (socket activation) stand in for the flags'
        // listeners of their kind.
        let kinds = [
            Kind::Control,
            Kind::Http,
            Kind::Fcgi,
            Kind::Scgi,
            Kind::Metrics,
        ];
        let direct = !handed_paths.is_empty();
        let mut sockets = Vec::new();
        for (inh, held) in inherited.into_iter().zip(held) {
            let kind = kinds
                .into_iter()
                .find(|k| k.name() == inh.name)
                .expect("names checked by activation::take");
            let socket = if inh.unix {
                ListenSocket::Unix(UnixListener::from_std(inh.fd.into()), PathBuf::new())
            } else {
                ListenSocket::Tcp(TcpListener::from_std(inh.fd.into()))
            };
            sockets.push((kind, socket, true, held));
        }
        for (kind, addr, mode) in wanted.filter(|(kind, _, _)| !passed(*kind)) {
            let reuse_port = config.reuse_port && !matches!(kind, Kind::Control | Kind::Metrics);
            let socket = bind(addr, mode, reuse_port)
                .map_err(|e| format!("cannot listen on {addr} ({}): {e}", kind.name()))?;
            sockets.push((kind, socket, false, false));
        }
        for (i, (kind, mut socket, inherited, held)) in sockets.into_iter().enumerate() {
            let token = Token(LISTENER_BASE + i);
            let registered = match &mut socket {
                ListenSocket::Tcp(l) => poll.registry().register(l, token, Interest::READABLE),
                ListenSocket::Unix(l, _) => poll.registry().register(l, token, Interest::READABLE),
            };
            registered.map_err(|e| format!("cannot watch {}: {e}", local_name(&socket)))?;
            if inherited && !direct {
                log::info!("{} socket inherited (socket activation)", kind.name());
            }
            log::info!("listening {}={}", kind.name(), local_name(&socket));
            listeners.push(Listener { kind, socket, held });
        }
        let mut server = Server {
            poll,
            listeners,
            conns: Conns::default(),
            store,
            subscribers: Subscribers::new(config.max_subscribers),
            timers: Timers::default(),
            config,
            signals,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            shutdown: None,
            clients: 0,
            secret,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            accept_retry: None,
            upgrade: None,
            kick: false,
            restores: Vec::new(),
            handed_paths,
            exe: std::env::current_exe().ok(),
            notifier: crate::notify::Notifier::from_env(),
            unstore: false,
            direct_successor: false,
            args: std::env::args_os().skip(1).collect(),
        };
        server.unstore = unstore;
        server.direct_successor = successor;
        server.thaw_conns(handed_conns, stored)?;
        Ok(server)
    }

    /// Runs until SIGTERM/SIGINT and a clean drain (or until a successor
    /// takes over). The store connects now, not before: a successor must
    /// not touch a shared store until its predecessor has let go.
    pub fn run(&mut self) -> Result<(), String> {
        self.store.attach(self.poll.registry(), STORE);
        for (index, path) in std::mem::take(&mut self.handed_paths) {
            if let Some(Listener {
                socket: ListenSocket::Unix(_, own),
                ..
            }) = self.listeners.get_mut(index)
            {
                *own = path;
            }
        }
        self.write_pid_file();
        if let Some(n) = &self.notifier {
            if self.unstore {
                // Our copies are the only ones now: a connection we close
                // must close for good.
                for name in ["conn", "handover"] {
                    if let Err(e) = n.unstore(name) {
                        log::warn!("cannot remove the stored {name} descriptors: {e}");
                    }
                }
            }
            if !self.direct_successor
                && let Err(e) = n.send("READY=1\n", &[])
            {
                log::warn!("cannot notify the service manager: {e}");
            }
        }
        // Handed-over requests subscribe before anything is read, so the
        // first command's `<live>` counts them.
        self.reopen_handed(Instant::now());
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if self
                .shutdown
                .is_some_and(|deadline| self.conns.slab.is_empty() || now >= deadline)
            {
                log::info!("shut down ({} connections left)", self.conns.slab.len());
                self.remove_pid_file();
                return Ok(());
            }
            let timeout = if self.kick {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll failed: {e}")),
            }
            let now = Instant::now();
            for event in events.iter() {
                self.dispatch(event, now);
            }
            if std::mem::take(&mut self.kick) {
                self.read_everything(now);
            }
            self.reopen_handed(now);
            let turn = now;
            self.fire_timers(now);
            self.settle(now);
            // Results a store held for its commit (a journal's fsync) are
            // ready after it, and settling them may store more.
            while self.store.commit() {
                self.settle(now);
            }
            self.flush(now);
            let closed = self.reap(now);
            self.retry_accepts(now, closed > 0);
            if self.upgrade.is_some() {
                self.try_upgrade(now);
            }
            let spent = turn.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.conns.counters.turns.observe(spent);
        }
    }

    /// Opens again the mailboxes of requests a predecessor handed over, once
    /// the store can take commands, and settles what completes at once;
    /// then the store hears that every request handed over is back.
    fn reopen_handed(&mut self, now: Instant) {
        if !self.submit_restores(now) {
            return;
        }
        self.settle(now);
        while self.store.commit() {
            self.settle(now);
        }
        let wall = self.wall(now);
        self.store.restored(wall);
    }

    /// Takes the store's finished results and answers the long-polls they
    /// (or this turn's events) woke, until neither has more: an answer can
    /// start a pipelined request whose opening completes at once.
    fn settle(&mut self, now: Instant) {
        loop {
            self.complete(now);
            if self.conns.answers.is_empty() {
                return;
            }
            self.answer_polls(now);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.accept_retry,
            self.store.next_deadline().map(|at| self.mono(at)),
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
                let pending: Vec<i32> = self.signals.pending().collect();
                for signal in pending {
                    match signal {
                        SIGHUP => self.reload_secret(),
                        SIGUSR2 => self.begin_upgrade(now),
                        _ => {
                            if self.upgrade.take().is_some() {
                                log::info!("upgrade cancelled: stopping instead");
                            }
                            if signal == SIGTERM && self.fdstore_fits() {
                                self.begin_handover(now, Target::ServiceManager);
                            } else {
                                self.begin_shutdown(now);
                            }
                        }
                    }
                }
            }
            STORE => {
                let wall = self.wall(now);
                self.store.ready(wall);
            }
            // While an upgrade is prepared nothing new is read or accepted.
            Token(t) if t < FIRST_CONN => {
                if self.upgrade.is_none() {
                    self.accept(t - LISTENER_BASE, now);
                }
            }
            Token(t) => {
                let key = t - FIRST_CONN;
                let Some(conn) = self.conns.slab.get(key) else {
                    return;
                };
                let control = matches!(conn.session, Session::Control(_));
                if event.is_writable() {
                    self.conns.schedule_flush(key);
                }
                if self.upgrade.is_some() {
                    return;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    if self.conns.slab[key].close == Close::Lingering {
                        self.drain_lingering(key);
                    } else if control {
                        self.control_readable(key, now);
                    } else {
                        self.client_readable(key, now);
                    }
                }
            }
        }
    }

    pub(crate) fn accept(&mut self, index: usize, now: Instant) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let kind = listener.kind;
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let accepted = match &listener.socket {
                ListenSocket::Tcp(l) => l.accept().map(|(s, a)| (Socket::Tcp(s), Some(a))),
                ListenSocket::Unix(l, _) => l.accept().map(|(s, _)| (Socket::Unix(s), None)),
            };
            let (mut socket, peer) = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let exhausted = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if exhausted && kind == Kind::Control && self.spare_fd.take().is_some() {
                        continue;
                    }
                    self.conns.counters.accept_errors += 1;
                    self.conns.warnings.accept_errors.note(now, || {
                        format!("accept on {} listener failed: {e}", kind.name())
                    });
                    if exhausted {
                        // The pending connection stays queued in the kernel;
                        // no new readiness event will say so.
                        self.accept_retry = Some(now + ACCEPT_RETRY);
                    }
                    return;
                }
            };
            if !self.admit(kind, &socket, peer, now) {
                continue;
            }
            let full = match kind {
                Kind::Control => {
                    self.conns.control >= limits::MAX_CONTROL_CONNS && !self.close_idle_control()
                }
                Kind::Metrics => self.conns.metrics >= MAX_METRICS_CONNS,
                Kind::Http | Kind::Fcgi | Kind::Scgi => self.clients >= self.config.max_connections,
            };
            if full {
                self.conns.counters.refused += 1;
                self.conns.warnings.refused.note(now, || {
                    format!("{} connection refused: limit reached", kind.name())
                });
                if kind == Kind::Http {
                    // Best effort: a web-server gateway just sees the connection close.
                    let _ = socket.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\nmax-connections reached; retry.\r\n");
                }
                continue;
            }
            if let Socket::Tcp(s) = &socket {
                let _ = s.set_nodelay(true);
                if let Err(e) = peer::detect_dead_peer(s.as_raw_fd(), self.config.dead_peer_timeout)
                {
                    log::debug!("cannot arm dead-peer detection: {e}");
                }
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
            let (session, timer) = match kind {
                Kind::Control => {
                    self.conns.control += 1;
                    (Session::Control(ControlState::new(now)), TimerId::NONE)
                }
                Kind::Metrics => {
                    self.conns.metrics += 1;
                    let timer =
                        self.timers
                            .insert(now + self.config.request_timeout, key, CONN_SLOT);
                    (Session::Metrics(Vec::new()), timer)
                }
                Kind::Http | Kind::Fcgi | Kind::Scgi => {
                    self.clients += 1;
                    let timer =
                        self.timers
                            .insert(now + self.config.request_timeout, key, CONN_SLOT);
                    let session = match kind {
                        Kind::Fcgi => Session::Fcgi(FcgiState {
                            inbuf: Vec::new(),
                            requests: Vec::new(),
                        }),
                        Kind::Scgi => Session::Scgi(ScgiState {
                            inbuf: Vec::new(),
                            phase: ScgiPhase::Head,
                        }),
                        _ => Session::Http(HttpState {
                            inbuf: Vec::new(),
                            phase: HttpPhase::Head,
                            keep_alive: false,
                        }),
                    };
                    (session, timer)
                }
            };
            entry.insert(Conn {
                socket,
                session,
                out: OutQueue::default(),
                writable: false,
                pending: false,
                paused: false,
                close: Close::No,
                head_held: 0,
                timer,
            });
            self.conns.counters.accepted += 1;
            log::debug!("conn={key} {} accepted", kind.name());
        }
    }

    /// The store's (wall-clock) time for the loop's instant `now`.
    pub(crate) fn wall(&self, now: Instant) -> SystemTime {
        self.started_wall + now.saturating_duration_since(self.started)
    }

    /// The loop's instant for the store's time `at`.
    fn mono(&self, at: SystemTime) -> Instant {
        self.started + at.duration_since(self.started_wall).unwrap_or_default()
    }

    /// Whether a freshly accepted peer may stay: FastCGI and SCGI over TCP
    /// only from `--gateway-allow`, the control socket only for our own user
    /// and `--control-allow`.
    fn admit(
        &mut self,
        kind: Kind,
        socket: &Socket,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> bool {
        let refusal = match (kind, socket, peer) {
            (Kind::Fcgi | Kind::Scgi, _, Some(addr))
                if !self
                    .config
                    .gateway_allow
                    .iter()
                    .any(|c| c.contains(addr.ip())) =>
            {
                Some(format!(
                    "{} connection from {addr} refused: not in gateway-allow",
                    kind.name()
                ))
            }
            (Kind::Metrics, _, Some(addr))
                if !self
                    .config
                    .metrics_allow
                    .iter()
                    .any(|c| c.contains(addr.ip())) =>
            {
                Some(format!(
                    "metrics connection from {addr} refused: not in metrics-allow"
                ))
            }
            (Kind::Control, Socket::Unix(s), _) if !self.config.control_allow.is_empty() => {
                match peer::peer_ids(s.as_raw_fd()) {
                    Ok((uid, gid))
                        if uid == peer::own_uid()
                            || self
                                .config
                                .control_allow
                                .iter()
                                .any(|c| c.matches(uid, gid)) =>
                    {
                        None
                    }
                    Ok((uid, gid)) => Some(format!(
                        "control connection from uid={uid} gid={gid} refused: not in control-allow"
                    )),
                    Err(e) => Some(format!(
                        "control connection refused: no peer credentials: {e}"
                    )),
                }
            }
            _ => None,
        };
        let Some(line) = refusal else {
            return true;
        };
        self.conns.counters.denied += 1;
        self.conns.warnings.denied.note(now, || line);
        false
    }

    /// Makes room for a backend at the control limit by closing the control
    /// connection idle longest; false when every one is busy.
    fn close_idle_control(&mut self) -> bool {
        let Some(key) = self.conns.oldest_idle_control() else {
            return false;
        };
        log::info!("conn={key} control closed: idle longest, and the control limit was reached");
        // Until the reap at the end of the turn it still counts, so each
        // further backend accepted this turn makes room for itself too.
        self.conns.close(key, Close::Now);
        self.conns.counters.control_evicted += 1;
        true
    }

    /// Takes the spare descriptor back, and accepts on every listener again
    /// after descriptors ran out, once the retry time came or a connection closed.
    fn retry_accepts(&mut self, now: Instant, closed: bool) {
        if self.spare_fd.is_none() {
            self.spare_fd = std::fs::File::open("/dev/null").ok();
        }
        if self.shutdown.is_some() {
            return;
        }
        if let Some(at) = self.accept_retry
            && (closed || now >= at)
        {
            self.accept_retry = None;
            for index in 0..self.listeners.len() {
                self.accept(index, now);
            }
        }
    }

    /// SIGHUP: reads the secret file again (key rotation); without a secret,
    /// or when the new file is unusable, nothing changes. Never stops the server.
    fn reload_secret(&mut self) {
        let Some(secret) = &self.secret else {
            log::info!("SIGHUP: no --secret-file to reload; nothing to do");
            return;
        };
        match secret.reload() {
            Ok(fresh) => {
                self.secret = Some(fresh);
                log::info!("SIGHUP: secret file reloaded");
            }
            Err(e) => log::error!("SIGHUP: keeping the current secret: {e}"),
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
        let expired = self.store.expire(self.wall(now));
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
            log::debug!("conn={key} {} timed out", conn.session.name());
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
                        self.linger(key, now);
                    } else if conn.paused {
                        conn.paused = false;
                        if matches!(conn.session, Session::Control(_)) {
                            self.control_resume(key, now);
                        } else {
                            self.client_readable(key, now);
                        }
                        // What resuming started finishes this turn; any
                        // connection it gives output joins this flush.
                        self.settle(now);
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
                    log::debug!("conn={key} {} write failed: {e}", conn.session.name());
                    self.conns.close(key, Close::Now);
                }
            }
        }
    }

    /// A connection whose last output is written: our side is shut and it
    /// lingers ([`Close::Lingering`]) until its peer closes, or [`LINGER`].
    fn linger(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        if conn.socket.shutdown_write().is_err() {
            self.conns.close(key, Close::Now);
            return;
        }
        conn.close = Close::Lingering;
        conn.paused = false;
        conn.timer = self.timers.insert(now + LINGER, key, CONN_SLOT);
        self.drain_lingering(key);
    }

    /// Reads and drops what a lingering connection's peer sends; closes it
    /// once the peer has closed.
    fn drain_lingering(&mut self, key: usize) {
        let Some((conn, scratch)) = self.conns.with_read_buf(key) else {
            return;
        };
        if !matches!(
            crate::conn::discard_input(&mut conn.socket, scratch),
            Ok(crate::conn::ReadEnd::Blocked)
        ) {
            self.conns.close(key, Close::Now);
        }
    }

    /// Frees the connections marked for closing; returns how many.
    fn reap(&mut self, now: Instant) -> usize {
        let mut closed = 0;
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
            self.conns.head_bytes -= conn.head_held as usize;
            for (rid, ex) in conn.exchanges() {
                self.unsubscribe(&ex.mailbox, sub_id(key, rid), now);
            }
            let _ = self.poll.registry().deregister(&mut conn.socket);
            match &conn.session {
                Session::Control(_) => self.conns.control -= 1,
                Session::Metrics(_) => self.conns.metrics -= 1,
                _ => self.clients -= 1,
            }
            closed += 1;
            log::debug!("conn={key} {} closed", conn.session.name());
        }
        closed
    }

    /// Writes our pid to `--pid-file` (a successor rewrites it), through a
    /// temporary file so a reader never sees it half written.
    fn write_pid_file(&self) {
        let Some(path) = &self.config.pid_file else {
            return;
        };
        // The temporary file is created anew, never opened through a link
        // someone left there (a root daemon would write through it).
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| writeln!(f, "{}", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            log::error!("cannot write pid file {}: {e}", path.display());
        }
    }

    /// Removes `--pid-file` at a clean stop, unless another process wrote it.
    fn remove_pid_file(&self) {
        let Some(path) = &self.config.pid_file else {
            return;
        };
        let ours =
            std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Stops accepting, ends every stream cleanly, answers held polls, and
    /// gives the output [`SHUTDOWN_GRACE`] to drain.
    pub(crate) fn begin_shutdown(&mut self, now: Instant) {
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
            if let Session::Http(h) = &mut self.conns.slab[key].session {
                h.keep_alive = false;
            }
            let active: Vec<u16> = self.conns.slab[key]
                .exchanges()
                .iter()
                .map(|(rid, _)| *rid)
                .collect();
            match &self.conns.slab[key].session {
                Session::Control(_) => self.conns.close(key, Close::AfterFlush),
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
/// replaced, but one that a live process still answers on is an error. A
/// Unix socket with a `mode` is created under a umask that lets nobody else
/// in, then given its mode, so it is never more open than asked, whatever
/// the process umask. With `reuse_port`, a TCP listener sets `SO_REUSEPORT`
/// before binding, so other mailboxd processes can bind the same port and
/// the kernel spreads new connections over them.
fn bind(addr: &ListenAddr, mode: Option<u32>, reuse_port: bool) -> io::Result<ListenSocket> {
    let socket = match addr {
        ListenAddr::Tcp(a) if reuse_port => {
            use socket2::{Domain, Socket as RawSocket, Type};
            let raw = RawSocket::new(Domain::for_address(*a), Type::STREAM, None)?;
            raw.set_reuse_address(true)?;
            raw.set_reuse_port(true)?;
            raw.set_nonblocking(true)?;
            raw.bind(&(*a).into())?;
            raw.listen(LISTEN_BACKLOG)?;
            ListenSocket::Tcp(TcpListener::from_std(raw.into()))
        }
        ListenAddr::Tcp(a) => ListenSocket::Tcp(TcpListener::bind(*a)?),
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            // SAFETY: umask only swaps the process's file-creation mask; we
            // are single-threaded while binding.
            let old = mode.map(|_| unsafe { libc::umask(0o177) });
            let bound = UnixListener::bind(path);
            if let Some(old) = old {
                // SAFETY: as above.
                unsafe { libc::umask(old) };
            }
            let listener = ListenSocket::Unix(bound?, path.clone());
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

/// Makes sure nobody but us can create the control socket's path first.
/// The default directory is created (0700, or 0711 when `--control-mode`
/// lets others connect) and must belong to us and be writable by nobody
/// else; for a path given explicitly, a directory others can write is only
/// warned about, since the administrator chose it.
fn prepare_control_dir(config: &Config) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = config
        .control
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return Ok(());
    };
    if config.control_is_default && !dir.exists() {
        let mode = if config.control_mode & 0o077 == 0 {
            0o700
        } else {
            0o711
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let others_write = meta.mode() & 0o022 != 0;
    let foreign = meta.uid() != peer::own_uid() && meta.uid() != 0;
    if config.control_is_default && (others_write || foreign) {
        return Err(format!(
            "{} is writable by other users or owned by another user: another user could \
             take the control socket's path; fix its ownership and mode or give --control",
            dir.display()
        ));
    }
    if others_write {
        log::warn!(
            "the control socket's directory {} is writable by other users: one of them could \
             create the path while mailboxd is down and receive the backends' messages; \
             prefer a private directory such as /run/mailboxd",
            dir.display()
        );
    }
    Ok(())
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
        ListenSocket::Unix(l, path) if path.as_os_str().is_empty() => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_else(|| "unix:?".into()),
        ListenSocket::Unix(_, path) => format!("unix:{}", path.display()),
    }
}
