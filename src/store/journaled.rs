//! A store kept on disk (`--state-dir`): the in-memory store, plus an
//! append-only journal of what changed and snapshots that bound it.
//!
//! Files in the state directory:
//!
//! * `LOCK`: held with `flock` for the life of the process (and naming its
//!   pid), so a second mailboxd on the same directory is refused;
//! * `snapshot-G`: the whole state at compaction `G` ([`crate::wire::journal`]
//!   records, written by [`MemoryStore::snapshot`]);
//! * `journal-G`: every change since `snapshot-G` was taken.
//!
//! The state is the newest complete `snapshot-G` followed by every
//! `journal-H` with `H >= G`, in order (no snapshot: `G = 0`, from nothing).
//!
//! **Writing.** Each change appends its record to a buffer; once per loop
//! turn ([`MailboxStore::commit`]) the buffer is written to the journal and,
//! under `--fsync always`, `fdatasync`ed before any result of that turn is
//! released: one sync covers every command of the turn (group commit), and
//! a backend's `OK` is never written before its record is on disk. Under
//! `everysec` the sync happens at most once a second; under `never`, when
//! the kernel likes. A failed write or sync (a full disk) answers the
//! turn's changes `StoreError::Unavailable`, never a false `OK`; from then
//! on changes are refused without being applied, and each turn retries the
//! unwritten records until they are on disk. (The failing turn's own
//! changes are already in memory: they are kept and written by the retry,
//! so a backend that sends them again may store them twice.)
//!
//! **Compaction.** When the current journal passes `--compact-after` bytes
//! and is larger than the last snapshot, appends switch to `journal-(G+1)`
//! and a forked child writes `snapshot-(G+1)` from its copy of memory
//! (temporary name, `fsync`, rename), then exits. The loop only pays for
//! the `fork`; when the child is done the older files are removed. A crash
//! at any point leaves files that recover to the same state.
//!
//! **Recovery.** Records are replayed in order ([`Replay`]). A torn or
//! damaged record ends its file: the valid prefix is kept, the rest is
//! moved aside to `<file>.damaged-<unix time>` with a log line saying what
//! was dropped, and clients resuming from before that point are told of a
//! gap. Garbage is never loaded.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::replay::Replay;
use super::{
    Done, Handover, MailboxStore, MemoryStore, Op, StoreError, StoreEvent, StoreLimits, StoreState,
    StoreStats, Ticket,
};
use crate::wire::Status;
use crate::wire::journal::{self, Record};

/// When the journal is made durable (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before any result of the turn that wrote it is released.
    Always,
    /// At most once a second.
    EverySec,
    /// When the kernel writes its page cache back.
    Never,
}

impl Fsync {
    /// Parses `always`, `everysec` or `never`.
    pub fn parse(s: &str) -> Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "everysec" => Ok(Fsync::EverySec),
            "never" => Ok(Fsync::Never),
            _ => Err(format!("fsync '{s}' is not always, everysec or never")),
        }
    }
}

/// How a state directory is used.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory.
    pub dir: PathBuf,
    /// When to sync.
    pub fsync: Fsync,
    /// Journal size past which a snapshot is taken.
    pub compact_after: u64,
}

/// A compaction in progress: the child writing `snapshot-<generation>`.
#[derive(Debug)]
struct Compaction {
    pid: libc::pid_t,
    generation: u64,
    started: Instant,
}

/// The in-memory store, journaled to a state directory.
#[derive(Debug)]
pub struct JournaledStore {
    inner: MemoryStore,
    config: JournalConfig,
    /// Held (locked) for the life of the process.
    lock: File,
    /// The journal being appended to, and its generation.
    file: File,
    generation: u64,
    /// Bytes in the current journal, and in the last snapshot.
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Records of this turn, not yet written.
    pending: Vec<u8>,
    /// The time of the records in `pending` (a `Clock` record opens them).
    clock: SystemTime,
    /// Results of this turn, released once their records are committed.
    held: VecDeque<StoreEvent>,
    /// Whether a held result acknowledges a change (its record must be on
    /// disk first); results that changed nothing need no sync.
    held_changes: bool,
    /// Results ready to be taken.
    ready: VecDeque<StoreEvent>,
    /// Written but not yet synced.
    unsynced: bool,
    last_sync: Instant,
    compaction: Option<Compaction>,
    /// The last write failed: changes are refused, not applied, until a
    /// retry of the unwritten records succeeds.
    failing: bool,
    /// For `STATS`: syncs, bytes written and snapshots since start.
    syncs: u64,
    bytes_written: u64,
    snapshots: u64,
}

fn name(dir: &Path, kind: &str, generation: u64) -> PathBuf {
    dir.join(format!("{kind}-{generation}"))
}

/// Generations of the files named `<kind>-<n>` in `dir`.
fn generations(dir: &Path, kind: &str) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(kind)?.strip_prefix('-'))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        found.push(n);
    }
    found.sort_unstable();
    Ok(found)
}

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, String> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot write to state dir {}: {e}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(format!(
            "state dir {} is in use by another mailboxd (pid {}); one directory, one process",
            dir.display(),
            holder.trim()
        ));
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| format!("cannot write to state dir {}: {e}", dir.display()))?;
    Ok(file)
}

/// Takes over the lock a predecessor held (a binary upgrade): the
/// descriptor must be the directory's `LOCK` file, already locked by the
/// open file both processes share.
fn inherit_lock(dir: &Path, mut file: File) -> Result<File, String> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join("LOCK");
    let same = match (file.metadata(), std::fs::metadata(&path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    // SAFETY: flock on a descriptor we own; on the shared open file that
    // already holds the lock it succeeds at once.
    if !same || unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "the lock handed over is not {}'s, or not held",
            dir.display()
        ));
    }
    // The open file is shared with the predecessor: its offset too.
    file.set_len(0)
        .and_then(|()| io::Seek::rewind(&mut file))
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| format!("cannot write to state dir {}: {e}", dir.display()))?;
    Ok(file)
}

/// Syncs a directory, so that renames and new files in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What recovering one file found.
struct Loaded {
    records: usize,
    damaged: bool,
}

/// Replays one file into `store`; a damaged or torn tail is moved aside.
fn load(path: &Path, store: &mut MemoryStore, replay: &mut Replay) -> Result<Loaded, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                records: 0,
                damaged: false,
            });
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut at = 0;
    let mut records = 0;
    let problem = loop {
        if at == bytes.len() {
            break None;
        }
        match journal::decode(&bytes[at..]) {
            Ok(Status::Complete((record, used))) => {
                if let Err(e) = replay.apply(store, &record) {
                    break Some(e.to_string());
                }
                at += used;
                records += 1;
            }
            Ok(Status::Partial) => break Some("a record cut short (torn write)".to_string()),
            Err(e) => break Some(e.to_string()),
        }
    };
    let Some(problem) = problem else {
        return Ok(Loaded {
            records,
            damaged: false,
        });
    };
    let stamp = journal::to_ms(SystemTime::now()) / 1000;
    let aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    std::fs::write(&aside, &bytes[at..])
        .and_then(|()| {
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(at as u64)
        })
        .map_err(|e| {
            format!(
                "cannot set aside the damaged end of {}: {e}",
                path.display()
            )
        })?;
    log::warn!(
        "{}: {problem} at byte {at}: kept {records} records ({at} bytes), set aside the last {} bytes as {}",
        path.display(),
        bytes.len() - at,
        aside.display()
    );
    Ok(Loaded {
        records,
        damaged: true,
    })
}

impl JournaledStore {
    /// Opens (creating if needed) a state directory, recovers its state and
    /// takes its lock. Ids continue above both the recovered ones and
    /// `first_id`. A successor in a binary upgrade passes the lock it
    /// inherited (`handed_lock`); its mailboxes then stay watched until the
    /// requests handed over have opened them again ([`MailboxStore::restored`]).
    pub fn open(
        limits: StoreLimits,
        config: JournalConfig,
        first_id: u64,
        handed_lock: Option<File>,
    ) -> Result<JournaledStore, String> {
        let dir = &config.dir;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
        }
        let handed = handed_lock.is_some();
        let lock = match handed_lock {
            Some(file) => inherit_lock(dir, file)?,
            None => lock(dir)?,
        };
        let started = Instant::now();
        let now = SystemTime::now();
        let mut inner = MemoryStore::new(limits, 1);
        let mut replay = Replay::new(now);
        let snapshots =
            generations(dir, "snapshot").map_err(|e| format!("{}: {e}", dir.display()))?;
        let generation = snapshots.last().copied().unwrap_or(0);
        let mut damaged = false;
        let mut records = 0;
        let mut snapshot_bytes = 0;
        if generation > 0 {
            let path = name(dir, "snapshot", generation);
            snapshot_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            let loaded = load(&path, &mut inner, &mut replay)?;
            damaged |= loaded.damaged;
            records += loaded.records;
        }
        let journals: Vec<u64> = generations(dir, "journal")
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .into_iter()
            .filter(|&g| g >= generation)
            .collect();
        for &g in &journals {
            if damaged {
                // Records after a damaged one cannot be trusted to follow it.
                let path = name(dir, "journal", g);
                let aside = PathBuf::from(format!("{}.after-damage", path.display()));
                std::fs::rename(&path, &aside).map_err(|e| format!("{}: {e}", path.display()))?;
                log::warn!(
                    "{}: follows a damaged file; set aside as {}",
                    path.display(),
                    aside.display()
                );
                continue;
            }
            let loaded = load(&name(dir, "journal", g), &mut inner, &mut replay)?;
            damaged |= loaded.damaged;
            records += loaded.records;
        }
        if !handed {
            inner.finish_recovery(now);
        }
        inner.resume_ids(first_id, records == 0, damaged);
        // Older generations are leftovers of a compaction that finished.
        for kind in ["snapshot", "journal"] {
            for g in generations(dir, kind).unwrap_or_default() {
                if g < generation {
                    let _ = std::fs::remove_file(name(dir, kind, g));
                }
            }
            let _ = std::fs::remove_file(dir.join(format!("{kind}-{}.tmp", generation + 1)));
        }
        let current = journals.last().copied().unwrap_or(generation);
        let path = name(dir, "journal", current);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot write to state dir {}: {e}", dir.display()))?;
        let journal_bytes = file.metadata().map_or(0, |m| m.len());
        sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let stats = inner.stats();
        log::info!(
            "state dir {}: {records} records replayed in {} ms: {} mailboxes, {} groups, {} retained messages",
            dir.display(),
            started.elapsed().as_millis(),
            stats.mailboxes,
            stats.groups,
            stats.retained
        );
        Ok(JournaledStore {
            inner,
            config,
            lock,
            file,
            generation: current,
            journal_bytes,
            snapshot_bytes,
            pending: Vec::new(),
            clock: now,
            held: VecDeque::new(),
            held_changes: false,
            ready: VecDeque::new(),
            unsynced: false,
            last_sync: Instant::now(),
            compaction: None,
            failing: false,
            syncs: 0,
            bytes_written: 0,
            snapshots: 0,
        })
    }

    /// Appends a record to this turn's batch, opened by the batch's time.
    fn record(&mut self, record: &Record<'_>) {
        if self.pending.is_empty() {
            let now_ms = journal::to_ms(self.clock);
            journal::encode(&Record::Clock { now_ms }, &mut self.pending);
        }
        journal::encode(record, &mut self.pending);
    }

    /// Writes the turn's records, and syncs them as `--fsync` asks.
    fn write_out(&mut self, must_sync: bool) -> io::Result<()> {
        if !self.pending.is_empty() {
            if let Err(e) = self.file.write_all(&self.pending) {
                // Cut back to the last whole record, so that the retry does
                // not land behind a torn one.
                let _ = self.file.set_len(self.journal_bytes);
                return Err(e);
            }
            self.journal_bytes += self.pending.len() as u64;
            self.bytes_written += self.pending.len() as u64;
            self.pending.clear();
            self.unsynced = true;
        }
        let sync = match self.config.fsync {
            Fsync::Always => must_sync,
            Fsync::EverySec => self.last_sync.elapsed() >= Duration::from_secs(1),
            Fsync::Never => false,
        };
        if sync && self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.last_sync = Instant::now();
            self.syncs += 1;
        }
        Ok(())
    }

    /// Starts a compaction when the journal has grown enough, and finishes
    /// one whose child is done.
    fn compact(&mut self) {
        if let Some(c) = self.compaction.take() {
            let mut status = 0;
            // SAFETY: waitpid on our own child, without blocking.
            let done = unsafe { libc::waitpid(c.pid, &mut status, libc::WNOHANG) };
            if done == 0 {
                self.compaction = Some(c);
                return;
            }
            let ok = done == c.pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let snapshot = name(&self.config.dir, "snapshot", c.generation);
            if ok && snapshot.exists() {
                self.snapshots += 1;
                self.snapshot_bytes = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
                for kind in ["snapshot", "journal"] {
                    for g in generations(&self.config.dir, kind).unwrap_or_default() {
                        if g < c.generation {
                            let _ = std::fs::remove_file(name(&self.config.dir, kind, g));
                        }
                    }
                }
                log::info!(
                    "compaction {}: snapshot of {} bytes written in {} ms",
                    c.generation,
                    self.snapshot_bytes,
                    c.started.elapsed().as_millis()
                );
            } else {
                log::error!(
                    "compaction {} failed (wait status {status}); the journal goes on and it will be tried again",
                    c.generation
                );
            }
            return;
        }
        if self.journal_bytes < self.config.compact_after
            || self.journal_bytes < self.snapshot_bytes
        {
            return;
        }
        self.start_compaction();
    }

    fn start_compaction(&mut self) {
        let dir = self.config.dir.clone();
        let generation = self.generation + 1;
        let next = match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(name(&dir, "journal", generation))
        {
            Ok(f) => f,
            Err(e) => {
                log::error!("compaction: cannot create the next journal: {e}");
                return;
            }
        };
        if let Err(e) = self.file.sync_data().and_then(|()| sync_dir(&dir)) {
            log::error!("compaction: cannot sync the journal: {e}");
            return;
        }
        let started = Instant::now();
        // SAFETY: mailboxd runs one thread; the child only serialises its
        // copy of the store, writes one file and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            log::error!("compaction: fork failed: {}", io::Error::last_os_error());
            return;
        }
        if pid == 0 {
            // The child needs none of the parent's descriptors: holding the
            // listeners, the clients or the state lock would keep a
            // restarted mailboxd from binding or locking while it writes.
            // SAFETY: close_range only closes descriptors of this process.
            if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
                for fd in 3..4096 {
                    // SAFETY: as above, one descriptor at a time.
                    unsafe { libc::close(fd) };
                }
            }
            let code = match self.write_snapshot(&dir, generation) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            // SAFETY: leaves the child at once, running no destructors (they
            // would remove the parent's sockets).
            unsafe { libc::_exit(code) };
        }
        log::info!(
            "compaction {generation}: forked in {} us; journal-{} has {} bytes",
            started.elapsed().as_micros(),
            self.generation,
            self.journal_bytes
        );
        self.file = next;
        self.generation = generation;
        self.journal_bytes = 0;
        self.unsynced = false;
        self.compaction = Some(Compaction {
            pid,
            generation,
            started,
        });
    }

    /// The child's work: the snapshot, under a temporary name, then renamed.
    fn write_snapshot(&self, dir: &Path, generation: u64) -> io::Result<()> {
        let mut bytes = Vec::new();
        self.inner.snapshot(&mut bytes);
        let tmp = dir.join(format!("snapshot-{generation}.tmp"));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, name(dir, "snapshot", generation))?;
        sync_dir(dir)
    }
}

impl MailboxStore for JournaledStore {
    fn handover(&mut self) -> Handover {
        if self.compaction.is_some() {
            // Only finishes one under way; never starts one now.
            self.compact();
        }
        if self.compaction.is_some() || !self.held.is_empty() || !self.ready.is_empty() {
            return Handover::Busy;
        }
        if self.failing {
            return Handover::Refused("the journal cannot be written".into());
        }
        if let Err(e) = self.write_out(true) {
            return Handover::Refused(format!("the journal cannot be written: {e}"));
        }
        Handover::Ready(StoreState::Journal {
            lock_fd: self.lock.as_raw_fd(),
        })
    }

    fn restored(&mut self, now: SystemTime) {
        self.inner.finish_recovery(now);
    }

    fn submit(&mut self, ticket: Ticket, op: Op, now: SystemTime) {
        self.clock = now;
        let changes = !matches!(op, Op::Members { .. } | Op::Info { .. } | Op::Open { .. });
        if self.failing && changes && self.write_out(true).is_ok() {
            log::warn!("journal writable again: changes are accepted");
            self.failing = false;
        }
        if self.failing && changes {
            // Nothing is applied that could not be kept.
            self.held
                .push_back(StoreEvent::Done(ticket, Err(StoreError::Unavailable)));
            return;
        }
        // What the record needs of the command, before the store takes it.
        let publish = match &op {
            Op::Publish { group, except, .. } => Some((group.clone(), except.clone())),
            _ => None,
        };
        let join = match &op {
            Op::Join { group, mailboxes } | Op::Leave { group, mailboxes } => Some((
                group.clone(),
                mailboxes.clone(),
                matches!(op, Op::Join { .. }),
            )),
            _ => None,
        };
        self.inner.submit(ticket, op, now);
        let mut first_delivery = true;
        while let Some(event) = self.inner.next_event() {
            match &event {
                StoreEvent::Deliver(d) if publish.is_none() => self.record(&Record::Message {
                    mailbox: &d.mailbox,
                    id: d.message.id,
                    event: d.message.payload.event(),
                    data: std::str::from_utf8(d.message.payload.data()).unwrap_or_default(),
                }),
                StoreEvent::Deliver(d) => {
                    // One record for the whole PUBLISH, at its first id.
                    if std::mem::take(&mut first_delivery) {
                        let (group, except) = publish.clone().unwrap_or_default();
                        let except: Vec<&str> = except.iter().map(String::as_str).collect();
                        let payload = &d.message.payload;
                        self.record(&Record::Publish {
                            group: &group,
                            first_id: d.message.id,
                            except,
                            event: payload.event(),
                            data: std::str::from_utf8(payload.data()).unwrap_or_default(),
                        });
                    }
                }
                StoreEvent::Ended(_) => {}
                StoreEvent::Done(_, result) => {
                    self.held_changes |= matches!(
                        result,
                        Ok(Done::Sent { .. }
                            | Done::Published { .. }
                            | Done::GroupSize(_)
                            | Done::Dropped(_))
                    );
                    match result {
                        Ok(Done::GroupSize(_)) => {
                            if let Some((group, mailboxes, is_join)) = &join {
                                let mailboxes: Vec<&str> =
                                    mailboxes.iter().map(String::as_str).collect();
                                self.record(&if *is_join {
                                    Record::Join { group, mailboxes }
                                } else {
                                    Record::Leave { group, mailboxes }
                                });
                            }
                        }
                        Ok(Done::Dropped(mailbox)) => self.record(&Record::Remove {
                            mailbox,
                            expired: false,
                        }),
                        _ => {}
                    }
                }
            }
            // A result that changed nothing (an error, a read, an opening)
            // needs no sync, but keeps its place behind those that do.
            self.held.push_back(event);
        }
    }

    fn next_event(&mut self) -> Option<StoreEvent> {
        self.ready.pop_front()
    }

    fn release(&mut self, name: &str) {
        self.inner.release(name);
    }

    fn subscribers(&mut self, name: &str, count: usize, now: SystemTime) {
        self.clock = now;
        let was = self.inner.is_watched(name);
        self.inner.subscribers(name, count, now);
        if count > 0 && !was {
            self.record(&Record::Watched { mailbox: name });
        } else if count == 0 && was {
            self.record(&Record::Idle {
                mailbox: name,
                since_ms: journal::to_ms(now),
            });
        }
    }

    fn expire(&mut self, now: SystemTime) -> usize {
        self.clock = now;
        let expired = self.inner.expire_names(now);
        for mailbox in &expired {
            self.record(&Record::Remove {
                mailbox,
                expired: true,
            });
        }
        expired.len()
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        let sync = (self.config.fsync == Fsync::EverySec && self.unsynced).then(|| {
            SystemTime::now() + Duration::from_secs(1).saturating_sub(self.last_sync.elapsed())
        });
        // A child writing a snapshot is looked after about every 100 ms.
        let compaction = self
            .compaction
            .as_ref()
            .map(|_| SystemTime::now() + Duration::from_millis(100));
        [self.inner.next_deadline(), sync, compaction]
            .into_iter()
            .flatten()
            .min()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            journal_syncs: self.syncs,
            journal_bytes: self.bytes_written,
            snapshots: self.snapshots,
            ..self.inner.stats()
        }
    }

    fn commit(&mut self) -> bool {
        let must_sync = std::mem::take(&mut self.held_changes) || self.failing;
        match self.write_out(must_sync) {
            Ok(()) => {
                if self.failing {
                    log::warn!("journal writable again: changes are accepted");
                    self.failing = false;
                }
                self.ready.extend(self.held.drain(..));
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "journal {}: {e}: changes are refused (ERR UNAVAILABLE) until it can be written",
                        name(&self.config.dir, "journal", self.generation).display()
                    );
                }
                self.failing = true;
                // This turn's changes are in memory already and will be
                // written with the next successful commit; their backends
                // were not told OK, so they may send them again.
                // Nothing they stored is handed to subscribers either.
                self.ready
                    .extend(self.held.drain(..).filter_map(|event| match event {
                        StoreEvent::Done(
                            t,
                            Ok(
                                Done::Sent { .. }
                                | Done::Published { .. }
                                | Done::GroupSize(_)
                                | Done::Dropped(_),
                            ),
                        ) => Some(StoreEvent::Done(t, Err(StoreError::Unavailable))),
                        StoreEvent::Deliver(_) | StoreEvent::Ended(_) => None,
                        done => Some(done),
                    }));
            }
        }
        self.compact();
        !self.ready.is_empty()
    }
}

impl Drop for JournaledStore {
    fn drop(&mut self) {
        // A clean stop leaves everything on disk whatever --fsync says.
        let _ = self.write_out(true).and_then(|()| self.file.sync_data());
    }
}
