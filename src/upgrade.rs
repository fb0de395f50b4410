//! Binary upgrade (`SIGUSR2`): a running mailboxd starts its own binary
//! again (the file may have been replaced by a newer version) and hands the
//! new process every listener and connection, without closing any.
//!
//! The two processes talk over a socket pair, one byte per step:
//!
//! ```text
//! old: freeze (no more reads or writes) → snapshot in a memfd → spawn new
//! new: load the store, adopt every descriptor           → 'R' (ready) or 'E'+why
//! old: on 'R' within CONFIRM_TIMEOUT                     → 'G' (go)
//! new: on 'G'                                            → 'A' (serving), then the loop
//! old: on 'A'                                            → exit, closing only its copies
//! ```
//!
//! Until the new process has read `G` it touches no socket, and until the
//! old one has written it, the old one may still change its mind: if the new
//! process fails, exits, says why or stays silent, the old one kills it
//! (its own child, by pid), and carries on serving as if nothing happened.
//! Sockets are never shut down, only closed, so whichever process keeps
//! them, the peers see nothing.
//!
//! Descriptors keep their numbers across `exec` (close-on-exec is cleared
//! in the child alone), so even 19,000 connections are passed without one
//! extra descriptor. The environment names the snapshot and the channel:
//! [`ENV`]`=<snapshot fd>:<channel fd>`.
//!
//! Under systemd with a file descriptor store, SIGTERM does the same
//! through the service manager: the frozen process stores its connections
//! (`conn`), listeners it bound itself (by kind) and the snapshot
//! (`handover`, a memfd) with `FDSTORE=1`, and exits; the next process gets
//! them back by name, finds each connection by its socket's inode, and
//! removes them from the store once it serves.
//!
//! This file holds both ends: the old process's (freezing at the end of a
//! loop turn, [`Server::try_upgrade`], starting the new one and waiting for
//! it, or storing everything with systemd) and the new process's
//! ([`Inheritance`]: what it was handed, and its confirmation). Turning
//! connections into records and back is [`crate::session`]'s; the snapshot's
//! bytes are [`crate::wire::handover`]'s.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::activation::{Inherited, Passed};
use crate::conn::Session;
use crate::server::{ListenSocket, Server};
use crate::store::{Handover, StoreState};
use crate::wire::handover::{self, ConnRecord, ListenerRecord, MAX_SNAPSHOT, Snapshot};

/// What a starting process takes over besides its store: the listeners
/// passed to it, and the listeners and connections a predecessor handed
/// over.
#[derive(Debug, Default)]
pub struct Succession {
    /// Listening sockets passed by name (socket activation, or a store).
    pub listeners: Vec<Inherited>,
    /// A direct predecessor's listeners, at their descriptor numbers.
    pub handed_listeners: Vec<ListenerRecord>,
    /// A predecessor's connections.
    pub conns: Vec<ConnRecord>,
    /// Through systemd: the stored connection sockets, by inode.
    pub stored: Option<HashMap<u64, OwnedFd>>,
    /// systemd passed stored descriptors: once this process serves, they
    /// are removed from its store, so that a connection this process
    /// closes is closed for good.
    pub unstore: bool,
    /// A direct predecessor (`SIGUSR2`) tells systemd our pid (`MAINPID=`);
    /// until then systemd would not take our `READY=1`, and needs none.
    pub direct: bool,
}

/// The variable naming the inherited snapshot and channel.
pub const ENV: &str = "MAILBOXD_HANDOVER";

/// How long the new process may take to start, load the state and adopt
/// every connection: a journal replays in well under a second, and 19,000
/// connections are adopted in about 100 ms (docs/upgrade.md).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long each side waits for the other's next step once both are up.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// The predecessor's side: a started successor not yet in charge.
#[derive(Debug)]
pub struct Successor {
    child: Child,
    channel: UnixStream,
}

/// Starts `exe` with `args`, passing `fds` at their numbers and the
/// snapshot in a memfd.
pub fn spawn(
    exe: &Path,
    args: &[OsString],
    snapshot: &[u8],
    fds: &[RawFd],
) -> io::Result<Successor> {
    let memfd = memfd(snapshot)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut keep: Vec<RawFd> = fds.to_vec();
    keep.push(memfd.as_raw_fd());
    keep.push(theirs.as_raw_fd());
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(ENV, format!("{}:{}", memfd.as_raw_fd(), theirs.as_raw_fd()));
    // SAFETY: between fork and exec the child only calls fcntl, which is
    // async-signal-safe, on descriptors it inherited; `keep` was allocated
    // before the fork and is only read.
    unsafe {
        command.pre_exec(move || {
            // FD_CLOEXEC is the only descriptor flag: cleared outright.
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    drop(memfd);
    ours.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
    Ok(Successor {
        child,
        channel: ours,
    })
}

impl Successor {
    /// The new process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the successor to be ready and lets it take over. `Ok`: it
    /// serves, and this process must exit without touching any socket.
    /// `Err`: it was stopped (killed if need be, and reaped), and this
    /// process still owns everything.
    pub fn hand_over(mut self) -> Result<(), String> {
        self.converse().map_err(|why| {
            let status = self.stop();
            format!("{why} ({status})")
        })
    }

    fn converse(&mut self) -> Result<(), String> {
        match read_step(&mut self.channel) {
            Ok(Step::Ready) => {}
            Ok(Step::Refused(why)) => return Err(format!("the new process refused: {why}")),
            Ok(Step::Ended) => return Err("the new process exited before it was ready".into()),
            Ok(_) => return Err("the new process said something unexpected".into()),
            Err(e) if timed_out(&e) => {
                return Err(format!(
                    "the new process was not ready within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("lost the new process: {e}")),
        }
        self.channel
            .write_all(b"G")
            .map_err(|e| format!("cannot tell the new process to go: {e}"))?;
        let _ = self.channel.set_read_timeout(Some(STEP_TIMEOUT));
        match read_step(&mut self.channel) {
            Ok(Step::Serving) => Ok(()),
            _ => Err("the new process did not confirm it took over".into()),
        }
    }

    /// Stops the new process and says how it ended.
    fn stop(&mut self) -> String {
        // Our own child, by pid: a new process that stalls or misbehaves
        // must not linger holding copies of every socket.
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.to_string();
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => format!("stopped: {status}"),
            Err(e) => format!("cannot reap it: {e}"),
        }
    }
}

/// The successor's side: what it inherited, from its predecessor directly
/// (`SIGUSR2`) or through systemd's file descriptor store (a restart).
#[derive(Debug)]
pub struct Inheritance {
    /// The predecessor's state. Through systemd, its listener records are
    /// dropped: the listeners come by name, as in socket activation.
    pub snapshot: Snapshot,
    /// The channel to a waiting predecessor; `None` through systemd (the
    /// predecessor is gone, and a failure here is retried by systemd with
    /// the same stored descriptors).
    channel: Option<UnixStream>,
    /// Through systemd: the stored connections, by socket inode (systemd
    /// renumbers descriptors and may reorder them).
    pub stored: Option<HashMap<u64, OwnedFd>>,
}

impl Inheritance {
    /// What this process inherited, if it is a successor: the snapshot and
    /// channel named by [`ENV`] (the variable is removed so no child of ours
    /// sees it), or the snapshot and connections `passed` by systemd. A
    /// stored snapshot that cannot be read is logged and its connections
    /// closed: this process then starts afresh rather than not at all.
    pub fn take(passed: &mut Passed) -> Result<Option<Inheritance>, String> {
        let Some(value) = std::env::var_os(ENV) else {
            return Ok(Self::from_store(passed));
        };
        // SAFETY: single-threaded at start; nothing else reads the environment.
        unsafe { std::env::remove_var(ENV) };
        let value = value.to_string_lossy();
        let (snapshot_fd, channel_fd) = value
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<RawFd>().ok()?, b.parse::<RawFd>().ok()?)))
            .filter(|&(a, b)| a > 2 && b > 2 && a != b)
            .ok_or_else(|| format!("{ENV}: '{value}' is not two descriptor numbers"))?;
        let snapshot_file = adopt_fd(snapshot_fd, libc::S_IFREG)
            .map_err(|e| format!("{ENV}: snapshot descriptor {snapshot_fd}: {e}"))?;
        let channel = adopt_fd(channel_fd, libc::S_IFSOCK)
            .map_err(|e| format!("{ENV}: channel descriptor {channel_fd}: {e}"))?;
        let mut inheritance = Inheritance {
            snapshot: Snapshot::default(),
            channel: Some(UnixStream::from(channel)),
            stored: None,
        };
        match read_snapshot(File::from(snapshot_file)) {
            Ok(snapshot) => inheritance.snapshot = snapshot,
            Err(e) => {
                inheritance.refuse(&e);
                return Err(e);
            }
        }
        Ok(Some(inheritance))
    }

    fn from_store(passed: &mut Passed) -> Option<Inheritance> {
        let conns = std::mem::take(&mut passed.conns);
        let Some(memfd) = passed.handover.take() else {
            if !conns.is_empty() {
                log::warn!(
                    "{} stored connections came without a snapshot: closing them",
                    conns.len()
                );
            }
            return None;
        };
        let mut snapshot = match read_snapshot(File::from(memfd)) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "stored snapshot: {e}; closing the {} stored connections and starting afresh",
                    conns.len()
                );
                return None;
            }
        };
        snapshot.listeners.clear();
        let mut stored = HashMap::with_capacity(conns.len());
        for fd in conns {
            match inode(fd.as_raw_fd()) {
                Ok(ino) => {
                    stored.insert(ino, fd);
                }
                Err(e) => log::warn!("a stored connection cannot be examined: {e}"),
            }
        }
        Some(Inheritance {
            snapshot,
            channel: None,
            stored: Some(stored),
        })
    }

    /// Tells the predecessor why this process cannot take over; it keeps
    /// serving. The caller exits without touching any inherited socket.
    pub fn refuse(&mut self, why: &str) {
        let Some(channel) = &mut self.channel else {
            return;
        };
        let mut line = b"E".to_vec();
        line.extend_from_slice(why.as_bytes().get(..200).unwrap_or(why.as_bytes()));
        line.push(b'\n');
        let _ = channel.write_all(&line);
    }

    /// Says this process is ready and waits for the predecessor to let go.
    /// `Ok`: every inherited socket is ours now. `Err`: the predecessor
    /// kept them (or is gone without saying); exit without touching any.
    pub fn confirm(self) -> Result<(), String> {
        let Some(mut channel) = self.channel else {
            return Ok(());
        };
        channel
            .write_all(b"R")
            .map_err(|e| format!("cannot reach the old process: {e}"))?;
        let _ = channel.set_read_timeout(Some(CONFIRM_TIMEOUT + STEP_TIMEOUT));
        match read_step(&mut channel) {
            Ok(Step::Go) => {}
            _ => return Err("the old process did not hand over".into()),
        }
        channel
            .write_all(b"A")
            .map_err(|e| format!("cannot confirm to the old process: {e}"))
    }

    /// Whether the predecessor waits for this process (`SIGUSR2`), rather
    /// than having stored everything with systemd.
    pub fn direct(&self) -> bool {
        self.channel.is_some()
    }
}

/// One step of the conversation.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Ready,
    Go,
    Serving,
    Refused(String),
    Ended,
}

fn read_step(channel: &mut UnixStream) -> io::Result<Step> {
    let mut byte = [0u8; 1];
    loop {
        match channel.read(&mut byte) {
            Ok(0) => return Ok(Step::Ended),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(match byte[0] {
        b'R' => Step::Ready,
        b'G' => Step::Go,
        b'A' => Step::Serving,
        b'E' => {
            // The reason, up to a newline, bounded.
            let mut why = Vec::new();
            let _ = channel.set_read_timeout(Some(STEP_TIMEOUT));
            while why.len() < 256 && channel.read(&mut byte).is_ok_and(|n| n == 1) {
                if byte[0] == b'\n' {
                    break;
                }
                why.push(byte[0]);
            }
            Step::Refused(String::from_utf8_lossy(&why).into_owned())
        }
        _ => Step::Ended,
    })
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The inode of the file (socket) behind `fd`: it identifies a socket
/// whatever its descriptor number.
pub fn inode(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat writes into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Reads a whole snapshot from its memfd, bounded by [`MAX_SNAPSHOT`].
fn read_snapshot(mut file: File) -> Result<Snapshot, String> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_SNAPSHOT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the handover snapshot: {e}"))?;
    if bytes.len() > MAX_SNAPSHOT {
        return Err(format!(
            "the handover snapshot is over {MAX_SNAPSHOT} bytes"
        ));
    }
    handover::decode(&bytes).map_err(|e| e.to_string())
}

/// Takes ownership of an inherited descriptor after checking its file type,
/// and marks it close-on-exec again.
pub fn adopt_fd(fd: RawFd, file_type: libc::mode_t) -> io::Result<OwnedFd> {
    adopt(fd, file_type).map(|(fd, _)| fd)
}

/// [`adopt_fd`], also returning the file's inode (which identifies a socket).
pub fn adopt(fd: RawFd, file_type: libc::mode_t) -> io::Result<(OwnedFd, u64)> {
    // SAFETY: fstat writes into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != file_type {
        return Err(io::Error::other("not the kind of file expected"));
    }
    // SAFETY: fcntl on a descriptor that exists (fstat succeeded);
    // FD_CLOEXEC is the only descriptor flag, so it is set outright.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fd), st.st_ino))
    }
}

/// An anonymous in-memory file holding `bytes`, positioned at its start:
/// how a snapshot travels.
fn memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"mailboxd-handover".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nobody else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    // SAFETY: lseek on our own descriptor.
    if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

// The loop's side: freezing, handing over, and carrying on if that fails.

/// How long an upgrade waits for work in flight (commands sent to Redis, a
/// compaction being written) before it is abandoned.
const UPGRADE_PREPARE: Duration = Duration::from_secs(5);

/// Where a handover goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A new process started from our binary (`SIGUSR2`).
    Successor,
    /// systemd's file descriptor store, for the next process it starts.
    ServiceManager,
}

impl Server {
    /// SIGUSR2: starts a binary upgrade. From now on nothing new is read or
    /// accepted; at the end of each turn [`Server::try_upgrade`] checks
    /// whether work in flight has finished, and hands everything over.
    pub(crate) fn begin_upgrade(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            log::warn!("SIGUSR2 ignored: shutting down");
        } else if self.upgrade.is_some() {
            log::warn!("SIGUSR2 ignored: an upgrade is already under way");
        } else if self.exe.is_none() {
            log::error!("SIGUSR2 ignored: this process cannot tell which binary it runs");
        } else {
            log::info!(
                "SIGUSR2: upgrading: starting {} and handing it {} connections",
                self.exe.as_deref().unwrap_or(Path::new("?")).display(),
                self.conns.slab.len()
            );
            self.begin_handover(now, Target::Successor);
        }
    }

    /// Whether SIGTERM should store everything with systemd: it keeps a file
    /// descriptor store (`$FDSTORE`) large enough for every connection,
    /// listener and the snapshot.
    pub(crate) fn fdstore_fits(&self) -> bool {
        let Some(n) = &self.notifier else {
            return false;
        };
        if n.fdstore == 0 {
            return false;
        }
        let needed = self.conns.slab.len() + self.listeners.len() + 1;
        if n.fdstore < needed {
            log::warn!(
                "SIGTERM: the file descriptor store holds {} descriptors and {needed} are \
                 needed: stopping cleanly instead (raise FileDescriptorStoreMax)",
                n.fdstore
            );
            return false;
        }
        true
    }

    /// Freezes: nothing new is read or accepted from now on, and each turn
    /// ends with an attempt to hand everything to `target`.
    pub(crate) fn begin_handover(&mut self, now: Instant, target: Target) {
        if target == Target::ServiceManager {
            log::info!(
                "SIGTERM: storing {} connections with the service manager for the next process",
                self.conns.slab.len()
            );
        }
        self.upgrade = Some((now + UPGRADE_PREPARE, target));
    }

    /// Hands every listener and connection to a new process once the store
    /// and every connection can be frozen; exits when the new process has
    /// taken over, and carries on serving when it has not.
    pub(crate) fn try_upgrade(&mut self, now: Instant) {
        let Some((deadline, target)) = self.upgrade else {
            return;
        };
        let started = Instant::now();
        let store = match self.store.handover() {
            // The lock goes with this process; the next one takes it anew.
            Handover::Ready(StoreState::Journal { .. }) if target == Target::ServiceManager => {
                StoreState::Journal { lock_fd: -1 }
            }
            Handover::Ready(state) => state,
            Handover::Busy if now < deadline => return,
            Handover::Busy => {
                return self.abandon_upgrade("the store's work in flight did not finish in time");
            }
            Handover::Refused(why) => return self.abandon_upgrade(&why),
        };
        let Some(conns) = self.freeze_conns() else {
            if now >= deadline {
                self.abandon_upgrade("requests still waiting for the store");
            }
            return;
        };
        let mut fds: Vec<i32> = conns.iter().map(|c| c.fd).collect();
        let listeners: Vec<ListenerRecord> = self
            .listeners
            .iter()
            .map(|l| {
                let (fd, path) = match &l.socket {
                    ListenSocket::Tcp(t) => (t.as_raw_fd(), Vec::new()),
                    ListenSocket::Unix(u, path) => (
                        u.as_raw_fd(),
                        std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec(),
                    ),
                };
                ListenerRecord {
                    name: l.kind.name().to_string(),
                    fd,
                    path,
                    held: l.held,
                }
            })
            .collect();
        fds.extend(listeners.iter().map(|l| l.fd));
        if let StoreState::Journal { lock_fd } = &store {
            fds.push(*lock_fd);
        }
        let count = conns.len();
        let pending: usize = conns.iter().map(|c| c.out.len()).sum();
        let frozen = Snapshot {
            taken_ms: crate::wire::journal::to_ms(self.wall(now)),
            store,
            listeners,
            conns,
        };
        let snapshot = crate::wire::handover::encode(&frozen);
        if target == Target::ServiceManager {
            return self.store_with_service_manager(&snapshot, &frozen, pending);
        }
        log::debug!(
            "upgrade: {count} connections frozen into {} bytes in {} ms",
            snapshot.len(),
            started.elapsed().as_millis()
        );
        let exe = self.exe.clone().unwrap_or_default();
        let successor = match spawn(&exe, &self.args, &snapshot, &fds) {
            Ok(s) => s,
            Err(e) => return self.abandon_upgrade(&format!("cannot start {}: {e}", exe.display())),
        };
        let pid = successor.pid();
        match successor.hand_over() {
            Ok(()) => {
                log::info!(
                    "upgrade: pid {pid} took over {count} connections ({pending} bytes of \
                     output not yet written, {} bytes of snapshot) {} ms after they were \
                     frozen; exiting",
                    snapshot.len(),
                    started.elapsed().as_millis()
                );
                if let Some(n) = &self.notifier
                    && let Err(e) = n.send(&format!("MAINPID={pid}\n"), &[])
                {
                    log::warn!("cannot tell the service manager the new main pid: {e}");
                }
                // No destructor runs: the sockets, their files and the
                // state directory are the new process's now.
                std::process::exit(0);
            }
            Err(why) => self.abandon_upgrade(&format!("new process (pid {pid}): {why}")),
        }
    }

    /// Stores the snapshot, the listeners systemd does not hold yet and
    /// every connection in systemd's file descriptor store, then exits; the
    /// next process systemd starts gets them back. If storing fails, what
    /// was stored is removed again and the server stops cleanly instead.
    fn store_with_service_manager(&mut self, snapshot: &[u8], frozen: &Snapshot, pending: usize) {
        let Some(n) = self.notifier.clone() else {
            return self.abandon_upgrade("no service manager");
        };
        let count = frozen.conns.len();
        let conns: Vec<i32> = frozen.conns.iter().map(|c| c.fd).collect();
        let stored = memfd(snapshot).and_then(|memfd| {
            n.store("handover", &[memfd.as_raw_fd()])?;
            for l in frozen.listeners.iter().filter(|l| !l.held) {
                n.store(&l.name, &[l.fd])?;
            }
            n.store("conn", &conns)
        });
        match stored {
            Ok(()) => {
                log::info!(
                    "stored {count} connections ({pending} bytes of output not yet written, \
                     {} bytes of snapshot) with the service manager; exiting",
                    snapshot.len()
                );
                // No destructor runs: nothing is shut down or removed.
                std::process::exit(0);
            }
            Err(e) => {
                let _ = n.unstore("conn");
                let _ = n.unstore("handover");
                self.abandon_upgrade(&e.to_string());
            }
        }
    }

    /// Gives up an upgrade: everything stays with this process, which reads
    /// what arrived meanwhile on the next turn.
    /// For a SIGTERM that was to store everything with systemd, the server
    /// stops cleanly instead.
    fn abandon_upgrade(&mut self, why: &str) {
        if let Some((_, Target::ServiceManager)) = self.upgrade.take() {
            log::error!(
                "cannot store the connections with the service manager ({why}): stopping cleanly instead"
            );
            self.begin_shutdown(Instant::now());
            return;
        }
        log::error!("upgrade abandoned: {why}; this process keeps serving");
        self.kick = true;
    }

    /// Accepts on every listener and reads every connection: readiness
    /// reported while an upgrade was prepared was not acted on.
    pub(crate) fn read_everything(&mut self, now: Instant) {
        for index in 0..self.listeners.len() {
            self.accept(index, now);
        }
        let keys: Vec<(usize, bool)> = self
            .conns
            .slab
            .iter()
            .map(|(k, c)| (k, matches!(c.session, Session::Control(_))))
            .collect();
        for (key, control) in keys {
            if control {
                self.control_readable(key, now);
            } else {
                self.client_readable(key, now);
            }
        }
    }
}

/// Takes a listening socket a predecessor handed over, as socket
/// activation would: checked, close-on-exec, non-blocking.
pub(crate) fn adopt_listener(l: ListenerRecord) -> Result<crate::activation::Inherited, String> {
    let kinds = ["http", "fastcgi", "scgi", "control", "metrics"];
    if !kinds.contains(&l.name.as_str()) {
        return Err(format!(
            "handed-over listener '{}' is of no known kind",
            l.name
        ));
    }
    let fd = crate::upgrade::adopt_fd(l.fd, libc::S_IFSOCK)
        .map_err(|e| format!("handed-over {} listener {}: {e}", l.name, l.fd))?;
    let unix = crate::activation::check(fd.as_raw_fd())
        .map_err(|e| format!("handed-over {} listener {}: {e}", l.name, l.fd))?;
    Ok(crate::activation::Inherited {
        name: l.name,
        fd,
        unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_back() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"RGAEno room here\n").unwrap();
        drop(a);
        assert_eq!(read_step(&mut b).unwrap(), Step::Ready);
        assert_eq!(read_step(&mut b).unwrap(), Step::Go);
        assert_eq!(read_step(&mut b).unwrap(), Step::Serving);
        assert_eq!(
            read_step(&mut b).unwrap(),
            Step::Refused("no room here".into())
        );
        assert_eq!(read_step(&mut b).unwrap(), Step::Ended);
    }

    #[test]
    fn a_snapshot_goes_through_a_memfd() {
        let snapshot = Snapshot {
            taken_ms: 42,
            store: handover::StoreState::Redis {
                instance: "00112233aabbccdd".into(),
            },
            listeners: Vec::new(),
            conns: Vec::new(),
        };
        let fd = memfd(&handover::encode(&snapshot)).unwrap();
        assert_eq!(read_snapshot(File::from(fd)).unwrap(), snapshot);
    }
}
