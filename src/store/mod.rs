//! Mailboxes, groups, retention, expiry and message ids: pure logic.
//!
//! The store knows nothing of sockets, nor of who is subscribed: that is the
//! local registry's ([`crate::subscribers`]). A delivery returns the message
//! each mailbox got ([`Delivery`]) and the event loop hands it to the
//! mailbox's subscribers; the store only hears that a mailbox gained its
//! first or lost its last subscriber ([`MailboxStore::watch`],
//! [`MailboxStore::unwatch`]), which starts and stops its expiry clock. It
//! stays testable with a fake clock (`now` is always passed in). Results are
//! owned and times are on the wall clock, so that a store kept on disk or in
//! another process fits behind the same interface.
//!
//! Mailboxes and groups live in slabs, indexed by name once. A group keeps its
//! members as mailbox keys and every mailbox remembers its slot in each group
//! it belongs to, so join, leave and expiry are O(1) per membership and a
//! `PUBLISH` walks a plain vector without hashing member names.
//!
//! Gap detection rests on the *horizon*: every message with an id above a
//! mailbox's horizon that was delivered to it is still retained. A new mailbox
//! starts with the horizon at the last id issued (it cannot know what an
//! earlier incarnation held); evicting a message moves the horizon up to it.
//! A client resuming from an id below the horizon may have missed something,
//! and is told so.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use slab::Slab;

use crate::message::{Message, Payload};

mod journaled;
mod redis;
mod replay;

pub use crate::wire::handover::StoreState;
pub use journaled::{Fsync, JournalConfig, JournaledStore};
pub use redis::{RedisAddr, RedisSocket, RedisStore};
pub use replay::{Replay, ReplayError};

/// Names who waits for a store result; the store hands it back untouched.
/// The loop puts the waiting connection's key in the upper 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub u64);

/// A command for the store, owned so that it can be carried out on a later
/// turn (a journal's fsync, a shared store's round trip).
#[derive(Debug)]
pub enum Op {
    /// `SEND`: store one message in a mailbox.
    Send {
        /// The mailbox (created if missing).
        mailbox: String,
        /// The payload.
        payload: Rc<Payload>,
    },
    /// `PUBLISH`: store one payload in every member not excepted.
    Publish {
        /// The group.
        group: String,
        /// The payload.
        payload: Rc<Payload>,
        /// Members that get nothing.
        except: Vec<String>,
    },
    /// `JOIN`.
    Join {
        /// The group.
        group: String,
        /// The mailboxes to add.
        mailboxes: Vec<String>,
    },
    /// `LEAVE`.
    Leave {
        /// The group.
        group: String,
        /// The mailboxes to remove.
        mailboxes: Vec<String>,
    },
    /// `MEMBERS`.
    Members {
        /// The group.
        group: String,
    },
    /// `DROP`.
    Drop {
        /// The mailbox.
        mailbox: String,
    },
    /// `INFO`.
    Info {
        /// The mailbox.
        mailbox: String,
    },
    /// A client opens a mailbox (created if missing, within the clients'
    /// share of the table) and wants what it missed after `resume`.
    Open {
        /// The mailbox.
        mailbox: String,
        /// The client's resume point; `None`: everything retained.
        resume: Option<u64>,
    },
}

/// What a command did. The messages it stored reach this process's
/// subscribers separately, as [`StoreEvent::Deliver`].
#[derive(Debug)]
pub enum Done {
    /// `SEND`: the message's id, and the subscribers on the mailbox (of
    /// every process sharing the store) when it was stored.
    Sent {
        /// The id it got.
        id: u64,
        /// Subscribers it was handed to.
        live: usize,
    },
    /// `PUBLISH`: members reached, and their subscribers in all.
    Published {
        /// Members that got the message.
        reached: usize,
        /// Subscribers over those members.
        live: usize,
    },
    /// `JOIN` or `LEAVE`: the group's size afterwards.
    GroupSize(usize),
    /// `MEMBERS`.
    Members(Vec<Rc<str>>),
    /// `DROP`: the mailbox is gone (its subscribers are the loop's to end).
    Dropped(String),
    /// `INFO`.
    Info(MailboxInfo),
    /// A client's mailbox is open: its name as the store keeps it, and
    /// what the client must be sent before live messages.
    Opened {
        /// The mailbox.
        mailbox: Rc<str>,
        /// The retained messages after the resume point, and any gap.
        backlog: Backlog,
    },
}

/// What the store has for the event loop, in the order it happened.
#[derive(Debug)]
pub enum StoreEvent {
    /// A command finished: its ticket and its result.
    Done(Ticket, Result<Done, StoreError>),
    /// A message stored in a mailbox this process has subscribers on (or
    /// is opening): hand it to them. Ids only increase per mailbox.
    Deliver(Delivery),
    /// The streams of this mailbox's subscribers here must end: it was
    /// dropped, or the store can no longer vouch that they missed nothing
    /// (they resume with `Last-Event-ID` and learn of any gap).
    Ended(Rc<str>),
}

/// One message as one mailbox got it, for the loop to hand to that
/// mailbox's subscribers.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The mailbox.
    pub mailbox: Rc<str>,
    /// Its id there, and the shared payload.
    pub message: Message,
}

/// Bounds that keep the store's memory finite.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Messages kept per mailbox for clients that come back.
    pub retain: usize,
    /// Payload bytes kept per mailbox.
    pub retain_bytes: usize,
    /// How long a mailbox with no subscriber lives.
    pub mailbox_ttl: Duration,
    /// Mailboxes in the whole store.
    pub max_mailboxes: usize,
    /// Groups in the whole store.
    pub max_groups: usize,
    /// What all retained messages together may cost, in bytes.
    pub max_memory: usize,
}

/// Per retained message and mailbox, beyond the payload: the `Message` in
/// the mailbox's queue and its entry in the server-wide eviction order.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 24;

/// The share of `max_mailboxes` that clients cannot take: past the rest, a
/// client opening an unknown mailbox gets 503, while backends can still
/// create mailboxes (a `SEND`, a `JOIN`) up to the full limit.
pub const BACKEND_RESERVE_PERCENT: usize = 10;

/// Why the store refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No mailbox of that name.
    NotFound,
    /// `max_mailboxes` reached.
    TooManyMailboxes,
    /// `max_groups` reached.
    TooManyGroups,
    /// The store cannot keep anything right now (the journal cannot be
    /// written, Redis cannot be reached): the command is not acknowledged.
    Unavailable,
    /// The connection to a shared store was lost while the command was in
    /// flight: it may or may not have been carried out.
    Unknown,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::NotFound => "no such mailbox",
            StoreError::Unavailable => "storage unavailable: nothing was stored",
            StoreError::Unknown => {
                "storage connection lost during the command: it may have been carried out"
            }
            StoreError::TooManyMailboxes => "mailbox limit reached (max-mailboxes)",
            StoreError::TooManyGroups => "group limit reached (max-groups)",
        })
    }
}

/// The answer to `INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Its name.
    pub mailbox: Rc<str>,
    /// Messages retained.
    pub retained: usize,
    /// Highest id delivered to it, or its horizon when it has none.
    pub last_id: u64,
    /// Groups it belongs to.
    pub groups: usize,
    /// Whole seconds without a subscriber (0 while subscribed).
    pub idle_secs: u64,
    /// Its subscribers (over every instance sharing the store).
    pub subscribers: usize,
}

/// Totals for `STATS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live mailboxes.
    pub mailboxes: usize,
    /// Live groups.
    pub groups: usize,
    /// Messages retained over all mailboxes.
    pub retained: usize,
    /// Messages accepted into mailboxes (ids issued) since start.
    pub messages: u64,
    /// Messages evicted by retention limits since start.
    pub evicted: u64,
    /// Mailboxes expired since start.
    pub expired: u64,
    /// What the retained messages cost, in bytes (see [`Payload::cost`]).
    pub retained_bytes: usize,
    /// Journal syncs since start (0 without a state dir).
    pub journal_syncs: u64,
    /// Journal bytes written since start.
    pub journal_bytes: u64,
    /// Snapshots written since start.
    pub snapshots: u64,
}

/// What a (re)connecting client should be sent before live messages.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// True when messages newer than the resume point were evicted or predate the mailbox.
    pub gap: bool,
    /// Oldest retained id, for the gap notice.
    pub oldest: Option<u64>,
    /// The retained messages newer than the resume point, oldest first
    /// (each shares its payload with the store).
    pub messages: Vec<Message>,
    /// Id of the newest message in the mailbox (or its horizon).
    pub last_id: u64,
}

#[derive(Debug)]
struct Membership {
    group: usize,
    slot: usize,
}

#[derive(Debug)]
struct Mailbox {
    name: Rc<str>,
    uid: u64,
    messages: VecDeque<Message>,
    bytes: usize,
    horizon: u64,
    memberships: Vec<Membership>,
    /// Set while nobody is subscribed; the expiry clock runs from here.
    /// `None`: watched (this process has subscribers on it).
    idle_since: Option<SystemTime>,
    /// Bumped on every idle transition so stale expiry entries are ignored.
    idle_gen: u64,
    /// Local subscribers, as the loop last reported them.
    subscribers: u32,
}

impl Mailbox {
    fn last_id(&self) -> u64 {
        self.messages.back().map_or(self.horizon, |m| m.id)
    }

    /// Nothing keeps it: no message, no group, no subscriber.
    fn is_unused(&self) -> bool {
        self.holds_nothing() && !self.watched()
    }

    /// No message and no group (whether watched or not).
    fn holds_nothing(&self) -> bool {
        self.messages.is_empty() && self.memberships.is_empty()
    }

    /// This process has subscribers on it (no idle clock runs).
    fn watched(&self) -> bool {
        self.idle_since.is_none()
    }
}

#[derive(Debug)]
struct Group {
    name: Rc<str>,
    members: Vec<usize>,
}

/// What the server needs from a mailbox store. [`MemoryStore`] keeps
/// everything in this process, [`JournaledStore`] also on disk, and
/// [`RedisStore`] in Redis, shared by several processes.
///
/// Every client opening a mailbox is followed, once its opening has
/// completed, by exactly one of: a [`MailboxStore::subscribers`] call
/// that raises the mailbox's local count (it subscribed), or a
/// [`MailboxStore::release`] (it did not).
pub trait MailboxStore {
    /// Starts a command. Its result comes out of [`MailboxStore::next_event`],
    /// on this turn or a later one; commands complete in the order they were
    /// submitted.
    fn submit(&mut self, ticket: Ticket, op: Op, now: SystemTime);
    /// The next result, message or ended mailbox, if any.
    fn next_event(&mut self) -> Option<StoreEvent>;
    /// The client that opened `name` is done with it without subscribing
    /// (an answered long-poll): a mailbox that holds nothing, belongs to no
    /// group and is not watched disappears.
    fn release(&mut self, name: &str);
    /// The mailbox now has `count` local subscribers. From none to some, it
    /// stops expiring; back to none, its expiry clock starts, and if it
    /// holds no message and belongs to no group it disappears.
    fn subscribers(&mut self, name: &str, count: usize, now: SystemTime);
    /// Does what is due by `now`: removes every mailbox whose idle time has
    /// reached the TTL (returns how many), and a shared store's heartbeat,
    /// sweep or reconnection.
    fn expire(&mut self, now: SystemTime) -> usize;
    /// The earliest instant at which [`MailboxStore::expire`] has work.
    fn next_deadline(&self) -> Option<SystemTime>;
    /// Totals for `STATS`.
    fn stats(&self) -> StoreStats;
    /// Makes everything done since the last call durable or shared; the loop
    /// calls it once per turn, before any reply or message is written (and
    /// again while it returns true: results it held until now are ready to
    /// be taken). The in-memory store has nothing to do.
    fn commit(&mut self) -> bool {
        false
    }
    /// Registers the store's own sockets (a shared store's connection)
    /// with the loop's `Poll`, under `token`.
    fn attach(&mut self, _registry: &mio::Registry, _token: mio::Token) {}
    /// The store's socket is ready: reads what arrived (results, messages).
    fn ready(&mut self, _now: SystemTime) {}
    /// Whether commands can be taken now (a shared store is connected);
    /// requests handed over by a predecessor wait for it.
    fn available(&self) -> bool {
        true
    }
    /// Prepares to hand everything to a successor process (a binary
    /// upgrade): says what the successor needs, or that work in flight must
    /// finish first. Nothing is changed; if the upgrade is rolled back this
    /// store simply carries on.
    fn handover(&mut self) -> Handover;
    /// In a successor: every request handed over has opened its mailbox
    /// again. A mailbox watched before the handover that no request watches
    /// now starts to idle (or goes, if it holds nothing).
    fn restored(&mut self, _now: SystemTime) {}
}

/// A store's answer when asked to hand its state to a successor process.
#[derive(Debug)]
pub enum Handover {
    /// Work is in flight (a command sent to Redis, a compaction being
    /// written): ask again on a later turn.
    Busy,
    /// Ready: this is what the successor needs.
    Ready(StoreState),
    /// Not possible now, for this reason; the upgrade is abandoned.
    Refused(String),
}

/// All mailboxes and groups of one server, in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    limits: StoreLimits,
    mailboxes: Slab<Mailbox>,
    mailbox_index: HashMap<Rc<str>, usize>,
    groups: Slab<Group>,
    group_index: HashMap<Rc<str>, usize>,
    last_id: u64,
    next_gen: u64,
    expiry: BinaryHeap<Reverse<(SystemTime, usize, u64)>>,
    retained: usize,
    messages: u64,
    evicted: u64,
    expired: u64,
    /// What retained messages cost: each payload once, plus per-message overhead.
    memory: usize,
    /// Every retained message in id order as `(id, mailbox key, mailbox
    /// uid)`, oldest first, for server-wide eviction past `max_memory`;
    /// entries of messages already gone are skipped when met.
    order: VecDeque<(u64, usize, u64)>,
    /// Results not yet taken by the loop.
    events: VecDeque<StoreEvent>,
    /// The highest id that left the server with a mailbox (expired or
    /// dropped while holding messages), or the last id before start: a new
    /// mailbox cannot vouch for anything up to it.
    discarded: u64,
}

impl MemoryStore {
    /// An empty store whose ids start at the wall clock in microseconds.
    pub fn starting_now(limits: StoreLimits) -> MemoryStore {
        MemoryStore::new(limits, MemoryStore::clock_id())
    }

    /// After recovery: ids continue above both the recovered ones and
    /// `first_id`. A state directory with nothing in it vouches for nothing
    /// before this start (ids a memory-only run gave out), as the in-memory
    /// store does. When the journal was damaged, what followed the damage
    /// may be lost, so every mailbox's horizon (and a new one's) is raised
    /// to the last id recovered: clients resuming from before it get a gap.
    pub fn resume_ids(&mut self, first_id: u64, fresh: bool, damaged: bool) {
        if fresh {
            self.discarded = self.discarded.max(first_id.saturating_sub(1));
        }
        if damaged {
            let last = self.last_id;
            self.discarded = self.discarded.max(last);
            for (_, mb) in self.mailboxes.iter_mut() {
                mb.horizon = mb.horizon.max(last.min(mb.last_id()));
            }
        }
        self.last_id = self.last_id.max(first_id.saturating_sub(1));
    }

    /// The wall clock in microseconds: where ids start when nothing is known.
    pub fn clock_id() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
    }

    /// An empty store whose first message id will be `first_id`.
    ///
    /// The server seeds it from the wall clock (microseconds), so ids keep
    /// increasing across restarts and a client resuming with an id from an
    /// earlier run is told of the gap instead of silently skipping messages.
    pub fn new(limits: StoreLimits, first_id: u64) -> MemoryStore {
        MemoryStore {
            limits,
            mailboxes: Slab::new(),
            mailbox_index: HashMap::new(),
            groups: Slab::new(),
            group_index: HashMap::new(),
            last_id: first_id.saturating_sub(1),
            next_gen: 1,
            expiry: BinaryHeap::new(),
            retained: 0,
            messages: 0,
            evicted: 0,
            expired: 0,
            memory: 0,
            order: VecDeque::new(),
            discarded: first_id.saturating_sub(1),
            events: VecDeque::new(),
        }
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The last message id issued.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }
}

/// The commands, carried out at once (what [`MailboxStore::submit`] runs).
impl MemoryStore {
    /// The mailbox gained its first local subscriber: it does not expire.
    pub fn watch(&mut self, name: &str) {
        if let Some(&key) = self.mailbox_index.get(name) {
            self.stop_idle(key);
        }
    }

    /// The mailbox's expiry clock stops (stale heap entries are ignored).
    fn stop_idle(&mut self, key: usize) {
        let mb = &mut self.mailboxes[key];
        mb.idle_since = None;
        mb.idle_gen = 0;
    }

    /// The mailbox lost its last local subscriber: its expiry clock starts,
    /// and if it holds no message and belongs to no group it disappears.
    pub fn unwatch(&mut self, name: &str, now: SystemTime) {
        let Some(&key) = self.mailbox_index.get(name) else {
            return;
        };
        self.mailboxes[key].subscribers = 0;
        if self.mailboxes[key].holds_nothing() {
            self.remove(key);
        } else {
            self.start_idle(key, now);
        }
    }

    /// Whether this process has subscribers on the mailbox.
    pub fn is_watched(&self, name: &str) -> bool {
        self.mailbox_index
            .get(name)
            .is_some_and(|&k| self.mailboxes[k].watched())
    }

    fn live(&self, name: &str) -> usize {
        self.mailbox_index
            .get(name)
            .map_or(0, |&k| self.mailboxes[k].subscribers as usize)
    }

    /// What a client resuming after `resume` (or from the start, for `None`)
    /// must be sent; `None` when the mailbox is gone.
    pub fn backlog(&self, name: &str, resume: Option<u64>) -> Option<Backlog> {
        let mb = &self.mailboxes[*self.mailbox_index.get(name)?];
        let (gap, start) = match resume {
            None => (false, 0),
            Some(after) => (
                after < mb.horizon,
                mb.messages.partition_point(|m| m.id <= after),
            ),
        };
        Some(Backlog {
            gap,
            oldest: mb.messages.front().map(|m| m.id),
            messages: mb.messages.range(start..).cloned().collect(),
            last_id: mb.last_id(),
        })
    }
    /// Removes every mailbox whose idle time has reached the TTL; returns their names.
    pub fn expire_names(&mut self, now: SystemTime) -> Vec<Rc<str>> {
        let mut expired = Vec::new();
        while let Some(&Reverse((at, key, generation))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            let current = self
                .mailboxes
                .get(key)
                .is_some_and(|m| m.idle_gen == generation && !m.watched());
            if current {
                expired.push(self.mailboxes[key].name.clone());
                self.remove(key);
                self.expired += 1;
            }
        }
        expired
    }

    /// Finds or creates a mailbox for a client that is opening it, and
    /// returns its name as the store keeps it. Clients may create mailboxes
    /// only while the table is below [`BACKEND_RESERVE_PERCENT`] of its limit.
    pub fn open(&mut self, name: &str, now: SystemTime) -> Result<Rc<str>, StoreError> {
        let client_limit =
            self.limits.max_mailboxes - self.limits.max_mailboxes * BACKEND_RESERVE_PERCENT / 100;
        if !self.mailbox_index.contains_key(name) && self.mailboxes.len() >= client_limit {
            return Err(StoreError::TooManyMailboxes);
        }
        let key = self.get_or_create(name, now)?;
        Ok(self.mailboxes[key].name.clone())
    }

    /// `SEND`: stores one message in a mailbox, creating it if needed.
    pub fn send(
        &mut self,
        name: &str,
        payload: &Rc<Payload>,
        now: SystemTime,
    ) -> Result<Delivery, StoreError> {
        let key = self.get_or_create(name, now)?;
        Ok(self.store_in(key, payload))
    }

    /// `PUBLISH`: stores one payload in every member not in `except`, each with its own id.
    pub fn publish(
        &mut self,
        group: &str,
        payload: &Rc<Payload>,
        except: &[&str],
        _now: SystemTime,
    ) -> Vec<Delivery> {
        let Some(&gkey) = self.group_index.get(group) else {
            return Vec::new();
        };
        // Sorted so that excluding many members stays O(log n) per member.
        let mut excluded: Vec<usize> = except
            .iter()
            .filter_map(|name| self.mailbox_index.get(*name).copied())
            .collect();
        excluded.sort_unstable();
        // Members are taken out while storing, which never changes
        // membership but needs the store mutably.
        let members = std::mem::take(&mut self.groups[gkey].members);
        let mut deliveries = Vec::with_capacity(members.len() - excluded.len().min(members.len()));
        for &key in &members {
            if excluded.binary_search(&key).is_err() {
                deliveries.push(self.store_in(key, payload));
            }
        }
        self.groups[gkey].members = members;
        deliveries
    }

    /// `JOIN`: adds mailboxes (created if needed) to a group (created if needed); returns its size.
    pub fn join(
        &mut self,
        group: &str,
        names: &[&str],
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        let missing = names
            .iter()
            .filter(|n| !self.mailbox_index.contains_key(**n))
            .count();
        if self.mailboxes.len() + missing > self.limits.max_mailboxes {
            return Err(StoreError::TooManyMailboxes);
        }
        let gkey = match self.group_index.get(group) {
            Some(&k) => k,
            None => {
                if self.groups.len() >= self.limits.max_groups {
                    return Err(StoreError::TooManyGroups);
                }
                let name: Rc<str> = Rc::from(group);
                let k = self.groups.insert(Group {
                    name: name.clone(),
                    members: Vec::new(),
                });
                self.group_index.insert(name, k);
                k
            }
        };
        for name in names {
            let key = self.get_or_create(name, now)?;
            let mailbox = &mut self.mailboxes[key];
            if mailbox.memberships.iter().any(|m| m.group == gkey) {
                continue;
            }
            let members = &mut self.groups[gkey].members;
            mailbox.memberships.push(Membership {
                group: gkey,
                slot: members.len(),
            });
            members.push(key);
        }
        Ok(self.groups[gkey].members.len())
    }

    /// `LEAVE`: removes mailboxes from a group, ignoring unknown names; returns its size.
    pub fn leave(&mut self, group: &str, names: &[&str]) -> usize {
        let Some(&gkey) = self.group_index.get(group) else {
            return 0;
        };
        for name in names {
            if let Some(&key) = self.mailbox_index.get(*name) {
                let mailbox = &mut self.mailboxes[key];
                if let Some(i) = mailbox.memberships.iter().position(|m| m.group == gkey) {
                    let membership = mailbox.memberships.swap_remove(i);
                    self.unlink(membership);
                }
            }
        }
        self.groups.get(gkey).map_or(0, |g| g.members.len())
    }

    /// `MEMBERS`: the members of a group, in no particular order.
    pub fn members(&self, group: &str) -> Vec<Rc<str>> {
        self.group_index.get(group).map_or_else(Vec::new, |&g| {
            self.groups[g]
                .members
                .iter()
                .map(|&k| self.mailboxes[k].name.clone())
                .collect()
        })
    }

    /// `DROP`: removes a mailbox at once.
    pub fn drop_mailbox(&mut self, name: &str) -> Result<(), StoreError> {
        let key = *self.mailbox_index.get(name).ok_or(StoreError::NotFound)?;
        self.remove(key);
        Ok(())
    }

    /// `INFO`: facts about one mailbox.
    pub fn info(&self, name: &str, now: SystemTime) -> Option<MailboxInfo> {
        let mailbox = &self.mailboxes[*self.mailbox_index.get(name)?];
        Some(MailboxInfo {
            mailbox: mailbox.name.clone(),
            retained: mailbox.messages.len(),
            last_id: mailbox.last_id(),
            groups: mailbox.memberships.len(),
            idle_secs: mailbox
                .idle_since
                .map_or(0, |t| now.duration_since(t).map_or(0, |d| d.as_secs())),
            subscribers: mailbox.subscribers as usize,
        })
    }
}

// The contract of each method is documented on the trait.
impl MailboxStore for MemoryStore {
    fn submit(&mut self, ticket: Ticket, op: Op, now: SystemTime) {
        let result = match op {
            Op::Send { mailbox, payload } => self.send(&mailbox, &payload, now).map(|d| {
                let (id, live) = (d.message.id, self.live(&d.mailbox));
                self.events.push_back(StoreEvent::Deliver(d));
                Done::Sent { id, live }
            }),
            Op::Publish {
                group,
                payload,
                except,
            } => {
                let except: Vec<&str> = except.iter().map(String::as_str).collect();
                let deliveries = self.publish(&group, &payload, &except, now);
                let reached = deliveries.len();
                let mut live = 0;
                for d in deliveries {
                    live += self.live(&d.mailbox);
                    self.events.push_back(StoreEvent::Deliver(d));
                }
                Ok(Done::Published { reached, live })
            }
            Op::Join { group, mailboxes } => {
                let names: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
                self.join(&group, &names, now).map(Done::GroupSize)
            }
            Op::Leave { group, mailboxes } => {
                let names: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
                Ok(Done::GroupSize(self.leave(&group, &names)))
            }
            Op::Members { group } => Ok(Done::Members(self.members(&group))),
            Op::Drop { mailbox } => self.drop_mailbox(&mailbox).map(|()| {
                self.events
                    .push_back(StoreEvent::Ended(Rc::from(mailbox.as_str())));
                Done::Dropped(mailbox)
            }),
            Op::Info { mailbox } => self
                .info(&mailbox, now)
                .map(Done::Info)
                .ok_or(StoreError::NotFound),
            Op::Open { mailbox, resume } => self.open(&mailbox, now).map(|mailbox| {
                let backlog = self.backlog(&mailbox, resume).expect("opened just now");
                Done::Opened { mailbox, backlog }
            }),
        };
        self.events.push_back(StoreEvent::Done(ticket, result));
    }

    fn next_event(&mut self) -> Option<StoreEvent> {
        self.events.pop_front()
    }

    fn release(&mut self, name: &str) {
        if let Some(&key) = self.mailbox_index.get(name)
            && self.mailboxes[key].is_unused()
        {
            self.remove(key);
        }
    }

    fn subscribers(&mut self, name: &str, count: usize, now: SystemTime) {
        if count == 0 {
            self.unwatch(name, now);
        } else if let Some(&key) = self.mailbox_index.get(name) {
            self.stop_idle(key);
            self.mailboxes[key].subscribers = count.min(u32::MAX as usize) as u32;
        }
    }

    fn expire(&mut self, now: SystemTime) -> usize {
        self.expire_names(now).len()
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.expiry.peek().map(|Reverse((at, _, _))| *at)
    }

    fn handover(&mut self) -> Handover {
        let mut records = Vec::with_capacity(self.memory + 64 * self.mailboxes.len());
        self.snapshot(&mut records);
        Handover::Ready(StoreState::Memory(records))
    }

    fn restored(&mut self, now: SystemTime) {
        self.finish_recovery(now);
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            mailboxes: self.mailboxes.len(),
            groups: self.groups.len(),
            retained: self.retained,
            messages: self.messages,
            evicted: self.evicted,
            expired: self.expired,
            retained_bytes: self.memory,
            ..StoreStats::default()
        }
    }
}

impl MemoryStore {
    fn get_or_create(&mut self, name: &str, now: SystemTime) -> Result<usize, StoreError> {
        if let Some(&key) = self.mailbox_index.get(name) {
            return Ok(key);
        }
        if self.mailboxes.len() >= self.limits.max_mailboxes {
            return Err(StoreError::TooManyMailboxes);
        }
        let name: Rc<str> = Rc::from(name);
        let uid = self.bump_gen();
        let key = self.mailboxes.insert(Mailbox {
            name: name.clone(),
            uid,
            messages: VecDeque::new(),
            bytes: 0,
            horizon: self.discarded,
            memberships: Vec::new(),
            idle_since: None,
            subscribers: 0,
            idle_gen: 0,
        });
        self.mailbox_index.insert(name, key);
        self.start_idle(key, now);
        Ok(key)
    }

    /// Gives a payload the next id in mailbox `key` and retains it.
    fn store_in(&mut self, key: usize, payload: &Rc<Payload>) -> Delivery {
        self.last_id += 1;
        self.messages += 1;
        let message = Message {
            id: self.last_id,
            payload: payload.clone(),
        };
        let mailbox = self.mailboxes[key].name.clone();
        self.retain(key, message.clone());
        Delivery { mailbox, message }
    }

    /// Starts the expiry clock of a mailbox (new, or just left by its last
    /// subscriber) at `now`.
    fn start_idle(&mut self, key: usize, now: SystemTime) {
        let generation = self.bump_gen();
        let mailbox = &mut self.mailboxes[key];
        mailbox.idle_since = Some(now);
        mailbox.idle_gen = generation;
        self.expiry
            .push(Reverse((now + self.limits.mailbox_ttl, key, generation)));
        // Clients that come and go leave stale entries behind until their TTL
        // passes; past twice the live mailboxes, rebuild from the live ones so
        // the heap stays bounded by the store, not by the reconnect rate.
        if self.expiry.len() > 2 * self.mailboxes.len() + 1024 {
            let ttl = self.limits.mailbox_ttl;
            self.expiry = self
                .mailboxes
                .iter()
                .filter_map(|(k, m)| m.idle_since.map(|t| Reverse((t + ttl, k, m.idle_gen))))
                .collect();
        }
    }

    fn bump_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    /// Appends a message to a mailbox's retention and evicts down to the
    /// mailbox's limits, then down to `max_memory` server-wide, oldest first.
    fn retain(&mut self, key: usize, msg: Message) {
        let mb = &mut self.mailboxes[key];
        self.order.push_back((msg.id, key, mb.uid));
        mb.bytes += msg.payload.cost() + MESSAGE_OVERHEAD;
        if msg.payload.hold() {
            self.memory += msg.payload.cost();
        }
        self.memory += MESSAGE_OVERHEAD;
        mb.messages.push_back(msg);
        self.retained += 1;
        loop {
            let mb = &self.mailboxes[key];
            let over = mb.messages.len() > self.limits.retain
                || (mb.bytes > self.limits.retain_bytes && mb.messages.len() > 1);
            if !over {
                break;
            }
            self.evict_front(key);
        }
        while self.memory > self.limits.max_memory {
            let Some((id, key, uid)) = self.order.pop_front() else {
                break;
            };
            let current = self
                .mailboxes
                .get(key)
                .is_some_and(|m| m.uid == uid && m.messages.front().is_some_and(|f| f.id == id));
            if current {
                self.evict_front(key);
            }
        }
        // Messages evicted per mailbox leave their entries behind; past twice
        // the retained messages, keep only the live ones, so the order stays
        // bounded by what is retained, not by the delivery rate.
        if self.order.len() > 2 * self.retained + 1024 {
            let mailboxes = &self.mailboxes;
            self.order.retain(|&(id, key, uid)| {
                mailboxes.get(key).is_some_and(|m| {
                    m.uid == uid && m.messages.binary_search_by_key(&id, |m| m.id).is_ok()
                })
            });
        }
    }

    /// Evicts a mailbox's oldest message; its id becomes the horizon.
    fn evict_front(&mut self, key: usize) {
        let mb = &mut self.mailboxes[key];
        let Some(old) = mb.messages.pop_front() else {
            return;
        };
        mb.bytes -= old.payload.cost() + MESSAGE_OVERHEAD;
        mb.horizon = old.id;
        self.unhold(&old);
        self.retained -= 1;
        self.evicted += 1;
    }

    /// Takes a message that leaves retention out of the memory count.
    fn unhold(&mut self, msg: &Message) {
        if msg.payload.release() {
            self.memory -= msg.payload.cost();
        }
        self.memory -= MESSAGE_OVERHEAD;
    }

    /// Removes a mailbox from its groups and the store.
    fn remove(&mut self, key: usize) {
        let mailbox = self.mailboxes.remove(key);
        self.mailbox_index.remove(&mailbox.name);
        if !mailbox.messages.is_empty() {
            self.discarded = self.discarded.max(mailbox.last_id());
        }
        for msg in &mailbox.messages {
            self.unhold(msg);
        }
        self.retained -= mailbox.messages.len();
        for membership in mailbox.memberships {
            self.unlink(membership);
        }
    }

    /// Takes one mailbox out of one group's member vector, fixing the slot of
    /// the member moved into its place, and removes the group when empty.
    fn unlink(&mut self, membership: Membership) {
        let Membership { group, slot } = membership;
        let members = &mut self.groups[group].members;
        members.swap_remove(slot);
        if let Some(&moved) = members.get(slot)
            && let Some(m) = self.mailboxes[moved]
                .memberships
                .iter_mut()
                .find(|m| m.group == group)
        {
            m.slot = slot;
        }
        if self.groups[group].members.is_empty() {
            let removed = self.groups.remove(group);
            self.group_index.remove(&removed.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StoreLimits {
        StoreLimits {
            retain: 3,
            retain_bytes: 1 << 20,
            mailbox_ttl: Duration::from_secs(10),
            max_mailboxes: 100,
            max_groups: 10,
            max_memory: 1 << 30,
        }
    }

    fn payload(s: &str) -> Rc<Payload> {
        Payload::new(None, s)
    }

    fn ids(b: &mut Backlog) -> Vec<u64> {
        b.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn ids_increase_across_mailboxes_and_start_at_seed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1000);
        let a = s.send("a", &payload("1"), now).unwrap().message.id;
        let b = s.send("b", &payload("2"), now).unwrap().message.id;
        assert_eq!((a, b), (1000, 1001));
    }

    #[test]
    fn retention_evicts_and_backlog_reports_gap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        for i in 0..5 {
            s.send("a", &payload(&i.to_string()), now).unwrap();
        }
        let r = s.open("a", now).unwrap();
        let mut b = s.backlog(&r, None).unwrap();
        assert_eq!(ids(&mut b), vec![3, 4, 5]);
        assert!(!b.gap);
        let mut b = s.backlog(&r, Some(1)).unwrap();
        assert!(b.gap, "ids 2 was evicted");
        assert_eq!(ids(&mut b), vec![3, 4, 5]);
        let mut b = s.backlog(&r, Some(2)).unwrap();
        assert!(!b.gap, "nothing after 2 was lost");
        assert_eq!(ids(&mut b), vec![3, 4, 5]);
        let mut b = s.backlog(&r, Some(4)).unwrap();
        assert_eq!(ids(&mut b), vec![5]);
        assert_eq!(s.stats().evicted, 2);
        assert_eq!(s.stats().retained, 3);
    }

    #[test]
    fn retain_bytes_evicts_but_keeps_newest() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut l = limits();
        l.retain_bytes = 4;
        let mut s = MemoryStore::new(l, 1);
        s.send("a", &payload("abc"), now).unwrap();
        s.send("a", &payload("defgh"), now).unwrap();
        let r = s.open("a", now).unwrap();
        assert_eq!(ids(&mut s.backlog(&r, None).unwrap()), vec![2]);
    }

    #[test]
    fn resume_from_before_the_server_or_a_discarded_mailbox_is_a_gap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1000);
        let r = s.open("fresh", now).unwrap();
        assert!(
            s.backlog(&r, Some(500)).unwrap().gap,
            "from before the start"
        );
        assert!(!s.backlog(&r, Some(999)).unwrap().gap);
        let id = s.send("other", &payload("x"), now).unwrap().message.id;
        assert!(
            !s.backlog(&r, Some(999)).unwrap().gap,
            "other mailboxes lose nothing"
        );
        s.drop_mailbox("other").unwrap();
        let r = s.open("later", now).unwrap();
        assert!(
            s.backlog(&r, Some(999)).unwrap().gap,
            "it may have been 'later'"
        );
        assert!(!s.backlog(&r, Some(id)).unwrap().gap);
    }

    #[test]
    fn a_client_mailbox_that_holds_nothing_goes_with_its_last_subscriber() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1000);
        let r = s.open("ghost", now).unwrap();
        s.watch(&r);
        s.unwatch(&r, now);
        assert!(s.info("ghost", now).is_none());
        // An answered long-poll that never subscribed leaves nothing either.
        let r = s.open("ghost", now).unwrap();
        s.release(&r);
        assert_eq!(s.stats().mailboxes, 0);
        // Coming back later: no false gap, since nothing was lost.
        let r = s.open("ghost", now).unwrap();
        assert!(!s.backlog(&r, Some(999)).unwrap().gap);
        // In a group, or holding a message, it stays.
        s.join("g", &["member"], now).unwrap();
        let r = s.open("member", now).unwrap();
        s.release(&r);
        assert!(s.info("member", now).is_some());
        s.send("kept", &payload("x"), now).unwrap();
        let r = s.open("kept", now).unwrap();
        s.watch(&r);
        s.unwatch(&r, now);
        assert!(s.info("kept", now).is_some());
    }

    #[test]
    fn clients_cannot_take_the_backends_share_of_the_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        for i in 0..90 {
            s.open(&format!("c{i}"), now).unwrap();
        }
        assert_eq!(s.open("c90", now), Err(StoreError::TooManyMailboxes));
        assert!(s.open("c5", now).is_ok(), "existing ones still open");
        for i in 0..10 {
            s.send(&format!("b{i}"), &payload("x"), now).unwrap();
        }
        assert_eq!(
            s.send("b10", &payload("x"), now).unwrap_err(),
            StoreError::TooManyMailboxes
        );
    }

    #[test]
    fn retention_counts_encodings_and_shared_payloads_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        let p = payload(&"x".repeat(1000));
        s.join("g", &["a", "b", "c"], now).unwrap();
        s.publish("g", &p, &[], now);
        assert!(p.cost() > 3000, "data, SSE and JSON: {}", p.cost());
        assert_eq!(s.stats().retained_bytes, p.cost() + 3 * MESSAGE_OVERHEAD);
        s.drop_mailbox("a").unwrap();
        s.drop_mailbox("b").unwrap();
        assert_eq!(s.stats().retained_bytes, p.cost() + MESSAGE_OVERHEAD);
        s.drop_mailbox("c").unwrap();
        assert_eq!(s.stats().retained_bytes, 0);
    }

    #[test]
    fn max_memory_evicts_the_oldest_server_wide() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut l = limits();
        l.retain = 100;
        let one = payload(&"y".repeat(1000)).cost() + MESSAGE_OVERHEAD;
        l.max_memory = 10 * one;
        let mut s = MemoryStore::new(l, 1);
        let mut ids = vec![];
        for i in 0..30 {
            let name = ["a", "b", "c"][i % 3];
            let id = s
                .send(name, &payload(&"y".repeat(1000)), now)
                .unwrap()
                .message
                .id;
            ids.push(id);
        }
        let st = s.stats();
        assert_eq!((st.retained, st.evicted), (10, 20));
        assert!(st.retained_bytes <= 10 * one);
        // "a" kept its newest messages; resuming before them is a gap.
        let r = s.open("a", now).unwrap();
        let (gap, oldest) = {
            let b = s.backlog(&r, Some(ids[0])).unwrap();
            (b.gap, b.oldest)
        };
        assert!(gap);
        assert!(oldest.unwrap() >= ids[20]);
        // The eviction order stays bounded by what is retained.
        for _ in 0..5000 {
            s.send("a", &payload("z"), now).unwrap();
        }
        assert!(s.order.len() <= 2 * s.stats().retained + 1024 + 1);
    }

    #[test]
    fn a_delivery_names_its_mailbox_and_message() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 7);
        let d = s.send("a", &payload("hi"), now).unwrap();
        assert_eq!((&*d.mailbox, d.message.id), ("a", 7));
        assert_eq!(&**d.message.payload.data(), b"hi");
        assert_eq!(s.info("a", now).unwrap().retained, 1);
    }

    #[test]
    fn groups_publish_with_except_and_fresh_ids() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        assert_eq!(s.join("g", &["a", "b", "c"], now).unwrap(), 3);
        assert_eq!(s.join("g", &["a"], now).unwrap(), 3);
        let mut got: Vec<(String, u64)> = s
            .publish("g", &payload("p"), &["b", "nobody"], now)
            .into_iter()
            .map(|d| (d.mailbox.to_string(), d.message.id))
            .collect();
        got.sort();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("a", "c"));
        assert_ne!(got[0].1, got[1].1, "each member gets its own id");
        assert!(s.publish("nope", &payload("p"), &[], now).is_empty());
    }

    #[test]
    fn leave_fixes_slots_and_removes_empty_group() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        s.join("g", &["a", "b", "c", "d"], now).unwrap();
        s.join("h", &["b", "d"], now).unwrap();
        assert_eq!(s.leave("g", &["a", "zzz"]), 3);
        assert_eq!(s.leave("g", &["c"]), 2);
        let mut m = s.members("g");
        m.sort();
        assert_eq!(m, vec![Rc::from("b"), Rc::from("d")]);
        assert_eq!(s.leave("g", &["d", "b"]), 0);
        assert!(s.members("g").is_empty());
        assert_eq!(s.stats().groups, 1);
        assert_eq!(s.members("h").len(), 2);
    }

    #[test]
    fn idle_mailboxes_expire_and_leave_groups() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ttl = limits().mailbox_ttl;
        let mut s = MemoryStore::new(limits(), 1);
        s.join("g", &["a", "b"], t0).unwrap();
        let rb = s.open("b", t0).unwrap();
        s.watch(&rb);
        assert_eq!(s.next_deadline(), Some(t0 + ttl));
        assert_eq!(s.expire(t0 + ttl - Duration::from_millis(1)), 0);
        assert_eq!(s.expire(t0 + ttl), 1);
        assert!(s.info("a", t0).is_none());
        assert_eq!(s.members("g"), vec![Rc::<str>::from("b")]);
        // b goes idle later and expires a TTL after that, taking the group with it.
        let t1 = t0 + Duration::from_secs(5);
        s.unwatch(&rb, t1);
        assert_eq!(
            s.info("b", t1 + Duration::from_secs(3)).unwrap().idle_secs,
            3
        );
        assert_eq!(s.expire(t1 + ttl - Duration::from_millis(1)), 0);
        assert_eq!(s.expire(t1 + ttl), 1);
        assert_eq!(s.stats().groups, 0);
        assert_eq!(s.stats().mailboxes, 0);
    }

    #[test]
    fn expiry_heap_stays_bounded_under_churn() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        s.send("a", &payload("kept"), t0).unwrap();
        let r = s.open("a", t0).unwrap();
        for _ in 0..10_000 {
            s.watch(&r);
            s.unwatch(&r, t0);
        }
        // One live mailbox: at most 2 + 1024 entries, plus the one just pushed.
        assert!(s.expiry.len() <= 2 + 1024 + 1, "{}", s.expiry.len());
        assert_eq!(
            s.expire(t0 + limits().mailbox_ttl),
            1,
            "the live entry survived the rebuild"
        );
    }

    #[test]
    fn resubscribing_cancels_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        let r = s.open("a", t0).unwrap();
        s.watch(&r);
        assert_eq!(s.expire(t0 + Duration::from_secs(100)), 0);
        assert!(s.info("a", t0).is_some());
    }

    #[test]
    fn a_dropped_mailbox_is_gone_for_everyone() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = MemoryStore::new(limits(), 1);
        let r = s.open("a", now).unwrap();
        s.watch(&r);
        assert_eq!(s.drop_mailbox("a"), Ok(()));
        assert_eq!(s.drop_mailbox("a"), Err(StoreError::NotFound));
        assert!(s.backlog(&r, None).is_none());
        s.unwatch(&r, now);
        assert_eq!(
            s.stats().mailboxes,
            0,
            "unwatching a dropped mailbox is harmless"
        );
    }

    #[test]
    fn mailbox_limit_is_enforced_atomically_for_join() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut l = limits();
        l.max_mailboxes = 2;
        let mut s = MemoryStore::new(l, 1);
        assert_eq!(
            s.join("g", &["a", "b", "c"], now),
            Err(StoreError::TooManyMailboxes)
        );
        assert_eq!(s.stats().mailboxes, 0);
        s.send("a", &payload("x"), now).unwrap();
        s.send("b", &payload("x"), now).unwrap();
        assert_eq!(
            s.send("c", &payload("x"), now).unwrap_err(),
            StoreError::TooManyMailboxes
        );
    }
}
