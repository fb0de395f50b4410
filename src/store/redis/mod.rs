//! The Redis store: mailboxes, groups, retention, ids and expiry kept in
//! Redis, shared by every mailboxd instance that names the same Redis.
//!
//! Every command is one call of the mailboxd function library
//! (`mailboxd.lua`, loaded on each connection), so it is atomic in Redis
//! and costs one round trip. One non-blocking RESP3 connection ([`link`])
//! carries commands, replies and this instance's pub/sub channel, so
//! everything arrives in the order Redis did it: the answer to an opening
//! comes after every notification for ids it covers and before every
//! later one. That order is what makes delivery exactly-once without any
//! reconciliation on the happy path.
//!
//! Who waits where stays local: Redis only knows, per mailbox, how many
//! subscribers each instance has (for `<live>` and expiry). A message is
//! stored by whichever instance received the command and published once
//! to each instance with subscribers on the mailbox; the instance hands it
//! to its subscribers as a [`StoreEvent::Deliver`]. A group message is
//! stored once, in the group's log, and published once per instance with
//! subscribers on any member; each member's id is the message's first id
//! plus the member's slot in the group, which this instance knows for the
//! mailboxes it watches (`Local::groups`, from their opening and from join
//! and leave notices), so it computes the deliveries itself.
//!
//! Losing Redis: commands in flight complete as [`StoreError::Unknown`],
//! new ones as [`StoreError::Unavailable`], parked clients stay parked.
//! The link reconnects with backoff; then the instance registers its
//! mailboxes again and reads back everything stored after the last id it
//! handed out for each (its position), re-feeding subscribers. Where that
//! is no longer retained, or the mailbox is gone, or Redis lost its data
//! (a new epoch), the mailbox's streams end: clients resume with
//! `Last-Event-ID` and are told of the gap.

mod link;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use redis_protocol::resp3::types::OwnedFrame;

use link::{Incoming, Link};
pub use link::{LinkState, RedisAddr, RedisSocket};

use super::{
    BACKEND_RESERVE_PERCENT, Backlog, Delivery, Done, Handover, MailboxInfo, MailboxStore, Op,
    StoreError, StoreEvent, StoreLimits, StoreState, StoreStats, Ticket,
};
use crate::message::{Message, Payload};
use crate::wire::notice::{self, Notice};

/// The function library, loaded with `FUNCTION LOAD REPLACE`.
const LIBRARY: &str = include_str!("mailboxd.lua");
/// Heartbeat, sweep and statistics, from every instance.
const TICK: Duration = Duration::from_secs(1);
/// An instance silent this long is taken for dead: its mailboxes start to
/// idle. Well above any pause of a healthy instance.
const DEAD_INSTANCE: Duration = Duration::from_secs(15);
/// A command unanswered this long means Redis is stuck or unreachable: the
/// connection is dropped and made again.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Mailboxes re-registered per call after a reconnection, so no call
/// blocks Redis for long.
const RESYNC_BATCH: usize = 256;

/// What a reply in the queue is for.
#[derive(Debug)]
enum Pending {
    Command(Ticket, Expect),
    /// `HELLO`, `SELECT`, `FUNCTION LOAD`: a failure ends the connection.
    Setup(&'static str),
    /// The heartbeat; `first` after each connection.
    Tick {
        first: bool,
    },
    /// Subscriber counts reported (nothing to do with the reply).
    Watch,
    /// Mailboxes re-registered, with their positions.
    Resync(Vec<Rc<str>>),
}

/// What a command's reply is turned into.
#[derive(Debug)]
enum Expect {
    Send,
    Publish,
    Open(Rc<str>, Option<u64>),
    Join,
    Leave,
    Members,
    Drop(String),
    Info(Rc<str>),
}

/// This instance's interest in one mailbox.
#[derive(Debug)]
struct Local {
    /// The mailbox's name, shared with its key in the map (one lookup
    /// finds both the state and the name deliveries carry).
    name: Rc<str>,
    /// Openings not yet followed by a subscription or a release.
    opens: u32,
    /// Local subscribers.
    subs: u32,
    /// Highest id handed out here: the position to resume from.
    seen: u64,
    /// Its count must be reported.
    dirty: bool,
    /// Re-registration in flight: notifications are covered by its reply.
    resyncing: bool,
    /// Its groups: name, slot, and the id after which it gets their messages.
    groups: Vec<(Rc<str>, u64, u64)>,
}

impl Local {
    fn new(name: Rc<str>) -> Local {
        Local {
            name,
            opens: 0,
            subs: 0,
            seen: 0,
            dirty: false,
            resyncing: false,
            groups: Vec::new(),
        }
    }

    fn interested(&self) -> bool {
        self.opens > 0 || self.subs > 0
    }
}

/// Mailboxes in Redis, shared with other instances.
#[derive(Debug)]
pub struct RedisStore {
    link: Link,
    limits: StoreLimits,
    instance: String,
    pending: VecDeque<(Pending, SystemTime)>,
    events: VecDeque<StoreEvent>,
    local: HashMap<Rc<str>, Local>,
    /// For each group, the mailboxes of `local` in it.
    by_group: HashMap<Rc<str>, Vec<Rc<str>>>,
    dirty: Vec<Rc<str>>,
    epoch: Option<Vec<u8>>,
    next_tick: SystemTime,
    retry_at: SystemTime,
    backoff: Duration,
    down_since: Option<SystemTime>,
    /// This outage (or the failure to connect at start) was logged.
    outage_logged: bool,
    stats: StoreStats,
}

impl RedisStore {
    /// A store on the Redis at `addr`; it connects once attached to the loop.
    /// A successor in a binary upgrade passes its predecessor's instance
    /// name, and takes its place in Redis.
    pub fn new(addr: RedisAddr, limits: StoreLimits, instance: Option<String>) -> RedisStore {
        // Every reply our functions give is bounded by the retention limits.
        let max_frame = 64 * 1024 * 1024 + RESYNC_BATCH * limits.retain_bytes.saturating_mul(2);
        RedisStore {
            link: Link::new(addr, max_frame),
            limits,
            instance: instance
                .filter(|i| i.len() == 16 && i.bytes().all(|b| b.is_ascii_hexdigit()))
                .unwrap_or_else(instance_id),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            local: HashMap::new(),
            by_group: HashMap::new(),
            dirty: Vec::new(),
            epoch: None,
            next_tick: SystemTime::UNIX_EPOCH,
            retry_at: SystemTime::UNIX_EPOCH,
            backoff: BACKOFF_MIN,
            down_since: Some(SystemTime::now()),
            outage_logged: false,
            stats: StoreStats::default(),
        }
    }

    /// This instance's name in Redis.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn up(&self) -> bool {
        self.link.state() == LinkState::Up
    }

    fn call(&mut self, function: &str, args: &[&[u8]], pending: Pending, now: SystemTime) {
        let mut all: Vec<&[u8]> = Vec::with_capacity(args.len() + 3);
        all.extend([b"FCALL".as_slice(), function.as_bytes(), b"0"]);
        all.extend_from_slice(args);
        self.link.command(&all);
        self.pending.push_back((pending, now));
    }

    fn connect(&mut self, now: SystemTime) {
        if let Err(e) = self.link.connect() {
            self.fail(&format!("cannot connect: {e}"), now);
            return;
        }
        // Pipelined behind the connection: nothing waits for a reply.
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        let user = self.link.addr.user.clone();
        let password = self.link.addr.password.clone();
        if let Some(password) = &password {
            hello.extend([
                b"AUTH".as_slice(),
                user.as_deref().unwrap_or("default").as_bytes(),
                password.as_bytes(),
            ]);
        }
        self.link.command(&hello);
        self.pending.push_back((Pending::Setup("HELLO 3"), now));
        if self.link.addr.db != 0 {
            let db = self.link.addr.db.to_string();
            self.link.command(&[b"SELECT", db.as_bytes()]);
            self.pending.push_back((Pending::Setup("SELECT"), now));
        }
        self.link
            .command(&[b"FUNCTION", b"LOAD", b"REPLACE", LIBRARY.as_bytes()]);
        self.pending
            .push_back((Pending::Setup("FUNCTION LOAD"), now));
        // In RESP3 the confirmation is a push message, not a reply.
        let channel = format!("mbx:c:{}", self.instance);
        self.link.command(&[b"SUBSCRIBE", channel.as_bytes()]);
        self.tick(true, now);
        self.resync(now);
    }

    /// Forgets this instance's old registrations and registers every
    /// mailbox it still has interest in, reading back what it missed.
    fn resync(&mut self, now: SystemTime) {
        let instance = self.instance.clone();
        self.call("mbx_reset", &[instance.as_bytes()], Pending::Watch, now);
        let names: Vec<Rc<str>> = self
            .local
            .iter()
            .filter(|(_, l)| l.interested())
            .map(|(n, _)| n.clone())
            .collect();
        for batch in names.chunks(RESYNC_BATCH) {
            let mut owned: Vec<Vec<u8>> = vec![
                instance.clone().into_bytes(),
                self.limits.retain.to_string().into_bytes(),
                self.limits.retain_bytes.to_string().into_bytes(),
            ];
            for name in batch {
                let l = self.local.get_mut(name).expect("listed just now");
                l.resyncing = true;
                l.dirty = false;
                owned.push(name.as_bytes().to_vec());
                owned.push(l.subs.to_string().into_bytes());
            }
            let args: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            self.call("mbx_resync", &args, Pending::Resync(batch.to_vec()), now);
        }
        self.dirty
            .retain(|n| self.local.get(n).is_some_and(|l| l.dirty));
    }

    fn tick(&mut self, first: bool, now: SystemTime) {
        let ttl = self.limits.mailbox_ttl.as_millis().to_string();
        let dead = DEAD_INSTANCE.as_millis().to_string();
        let instance = self.instance.clone();
        self.call(
            "mbx_tick",
            &[
                instance.as_bytes(),
                ttl.as_bytes(),
                dead.as_bytes(),
                instance.as_bytes(),
            ],
            Pending::Tick { first },
            now,
        );
        self.next_tick = now + TICK;
    }

    /// The connection is lost: commands in flight may or may not have been
    /// carried out; openings in flight are over; retry later.
    fn fail(&mut self, why: &str, now: SystemTime) {
        if !self.outage_logged {
            log::error!(
                "redis {}: {why}; commands get ERR UNAVAILABLE until it is back",
                self.link.addr
            );
            self.outage_logged = true;
        } else {
            log::debug!("redis {}: {why}", self.link.addr);
        }
        self.down_since.get_or_insert(now);
        self.link.close();
        for (pending, _) in std::mem::take(&mut self.pending) {
            if let Pending::Command(ticket, expect) = pending {
                if let Expect::Open(name, _) = &expect {
                    self.opening_over(name);
                }
                self.events
                    .push_back(StoreEvent::Done(ticket, Err(StoreError::Unknown)));
            }
        }
        for l in self.local.values_mut() {
            l.resyncing = false;
        }
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// An opening ended without a subscriber (an error, a lost link).
    fn opening_over(&mut self, name: &str) {
        if let Some(l) = self.mark(name) {
            l.opens = l.opens.saturating_sub(1);
        }
    }

    fn mark(&mut self, name: &str) -> Option<&mut Local> {
        let l = self.local.get_mut(name)?;
        if !l.dirty {
            l.dirty = true;
            self.dirty.push(l.name.clone());
        }
        Some(l)
    }

    /// Reports changed subscriber counts, and forgets mailboxes this
    /// instance lost interest in.
    fn report(&mut self, now: SystemTime) {
        if self.dirty.is_empty() {
            return;
        }
        let mut owned: Vec<Vec<u8>> = vec![self.instance.clone().into_bytes()];
        for name in std::mem::take(&mut self.dirty) {
            let Some(l) = self.local.get_mut(&name) else {
                continue;
            };
            l.dirty = false;
            let keep = l.interested();
            owned.push(name.as_bytes().to_vec());
            owned.push(l.subs.to_string().into_bytes());
            owned.push(if keep { b"1".to_vec() } else { b"0".to_vec() });
            if !keep && let Some(gone) = self.local.remove(&name) {
                for (group, _, _) in gone.groups {
                    self.unindex(&group, &name);
                }
            }
        }
        if self.up() && owned.len() > 1 {
            let args: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            self.call("mbx_watch", &args, Pending::Watch, now);
        }
    }

    fn handle(&mut self, incoming: Incoming, now: SystemTime) {
        match incoming {
            Incoming::Push(parts) => self.push(parts),
            Incoming::Reply(frame) => {
                let Some((pending, _)) = self.pending.pop_front() else {
                    self.fail("a reply nobody asked for", now);
                    return;
                };
                self.reply(pending, frame, now);
            }
        }
    }

    /// A pub/sub message on this instance's channel.
    fn push(&mut self, parts: Vec<OwnedFrame>) {
        let [kind, _channel, body] = &parts[..] else {
            return;
        };
        if bytes(kind) != Some(b"message".as_slice()) {
            return; // subscribe confirmations
        }
        let Some(body) = bytes(body) else {
            return;
        };
        match notice::parse_notice(body) {
            Ok(Notice::Deliver {
                event,
                data,
                targets,
            }) => {
                let payload = Payload::new(event, data);
                for (id, name) in targets {
                    let Some(l) = self.local.get_mut(name) else {
                        continue;
                    };
                    if l.resyncing || id <= l.seen {
                        continue;
                    }
                    l.seen = id;
                    self.events.push_back(StoreEvent::Deliver(Delivery {
                        mailbox: l.name.clone(),
                        message: Message {
                            id,
                            payload: payload.clone(),
                        },
                    }));
                }
            }
            Ok(Notice::Group {
                group,
                first,
                event,
                except,
                data,
            }) => {
                let Some(members) = self.by_group.get(group) else {
                    log::debug!("redis: group {group} has no mailbox watched here");
                    return;
                };
                let payload = Payload::new(event, data);
                for name in members {
                    let Some(l) = self.local.get_mut(name) else {
                        continue;
                    };
                    let Some(&(_, slot, after)) = l.groups.iter().find(|g| &*g.0 == group) else {
                        continue;
                    };
                    let id = first + slot;
                    if l.resyncing
                        || first <= after
                        || id <= l.seen
                        || notice::excepts(except, name)
                    {
                        continue;
                    }
                    l.seen = id;
                    self.events.push_back(StoreEvent::Deliver(Delivery {
                        mailbox: name.clone(),
                        message: Message {
                            id,
                            payload: payload.clone(),
                        },
                    }));
                }
            }
            Ok(Notice::Joined {
                group,
                mailbox,
                slot,
                after,
            }) => {
                if let Some(name) = self.local.get(mailbox).map(|l| l.name.clone()) {
                    self.join_local(&name, Rc::from(group), slot, after);
                }
            }
            Ok(Notice::Left { group, mailbox }) => {
                if let Some(l) = self.local.get_mut(mailbox) {
                    l.groups.retain(|g| &*g.0 != group);
                    self.unindex(group, mailbox);
                }
            }
            Ok(Notice::Dropped(name)) => {
                if let Some(l) = self.local.get(name) {
                    self.events.push_back(StoreEvent::Ended(l.name.clone()));
                }
            }
            Err(e) => log::warn!("redis {}: {e} on channel: ignored", self.link.addr),
        }
    }

    fn reply(&mut self, pending: Pending, frame: OwnedFrame, now: SystemTime) {
        match pending {
            Pending::Setup(what) => {
                if let Some(e) = error(&frame) {
                    log::error!("redis {}: {what} refused: {e}", self.link.addr);
                    self.fail(&format!("{what} refused"), now);
                }
            }
            Pending::Watch => {
                if let Some(e) = error(&frame) {
                    log::warn!("redis {}: reporting subscribers: {e}", self.link.addr);
                }
            }
            Pending::Tick { first } => self.ticked(first, frame, now),
            Pending::Resync(names) => self.resynced(names, frame),
            Pending::Command(ticket, expect) => {
                let result = self.result(expect, frame);
                self.events.push_back(StoreEvent::Done(ticket, result));
            }
        }
    }

    fn ticked(&mut self, first: bool, frame: OwnedFrame, now: SystemTime) {
        if let Some(e) = error(&frame) {
            log::warn!("redis {}: heartbeat: {e}", self.link.addr);
            return;
        }
        let f = array(frame);
        let num = |i: usize| f.get(i).and_then(number).unwrap_or(0);
        self.outage_logged = false;
        if let Some(since) = self.down_since.take() {
            let outage = match self.epoch {
                Some(_) => format!(
                    " after {:.1} s without it",
                    now.duration_since(since).unwrap_or_default().as_secs_f64()
                ),
                None => String::new(),
            };
            log::info!(
                "redis {}: connected as instance {}{outage}",
                self.link.addr,
                self.instance
            );
        }
        self.backoff = BACKOFF_MIN;
        let epoch = f.get(1).and_then(bytes).map(<[u8]>::to_vec);
        if epoch.is_some() && self.epoch.is_some() && epoch != self.epoch {
            log::warn!(
                "redis {}: its data is new (epoch changed): every stream here ends, and clients resume",
                self.link.addr
            );
            for name in self.local.keys() {
                self.events.push_back(StoreEvent::Ended(name.clone()));
            }
        }
        self.epoch = epoch;
        if num(0) == 0 && !first {
            log::warn!(
                "redis {}: this instance was taken for dead: registering again",
                self.link.addr
            );
            self.resync(now);
        }
        self.stats.mailboxes = num(3) as usize;
        self.stats.groups = num(4) as usize;
        self.stats.retained = num(5) as usize;
        self.stats.retained_bytes = num(6) as usize;
        self.stats.messages = num(7);
        self.stats.evicted = num(8);
        self.stats.expired = num(9);
    }

    fn resynced(&mut self, names: Vec<Rc<str>>, frame: OwnedFrame) {
        if let Some(e) = error(&frame) {
            log::warn!("redis {}: re-registering: {e}", self.link.addr);
        }
        let mut results = array(frame).into_iter();
        for name in names {
            let found = results.next().map(array).unwrap_or_default();
            let Some(l) = self.local.get_mut(&name) else {
                continue;
            };
            l.resyncing = false;
            let seen = l.seen;
            let exists = found.first().and_then(number) == Some(1);
            let horizon = found.get(1).and_then(number).unwrap_or(0);
            if !exists || horizon > seen {
                // Gone, or what it missed is no longer all there.
                self.events.push_back(StoreEvent::Ended(name));
                continue;
            }
            let mut parts = found.into_iter().skip(2);
            let entries = parts.next().map(array).unwrap_or_default();
            let groups = parts.next().map(array).unwrap_or_default();
            self.set_groups(&name, &groups);
            let mut last = seen;
            for entry in entries {
                let Some(m) = bytes(&entry).and_then(|b| message(b).ok()) else {
                    continue;
                };
                if m.id > last {
                    last = m.id;
                    self.events.push_back(StoreEvent::Deliver(Delivery {
                        mailbox: name.clone(),
                        message: m,
                    }));
                }
            }
            if let Some(l) = self.local.get_mut(&name) {
                l.seen = last;
            }
        }
    }

    /// Replaces what this instance knows of a mailbox's groups with a
    /// flat `group, slot, after, …` list from Redis.
    fn set_groups(&mut self, name: &Rc<str>, flat: &[OwnedFrame]) {
        let old = match self.local.get_mut(name) {
            Some(l) => std::mem::take(&mut l.groups),
            None => return,
        };
        for (group, _, _) in old {
            self.unindex(&group, name);
        }
        for g in flat.chunks_exact(3) {
            let (Some(group), Some(slot), Some(after)) = (
                bytes(&g[0]).and_then(|b| std::str::from_utf8(b).ok()),
                number(&g[1]),
                number(&g[2]),
            ) else {
                continue;
            };
            self.join_local(name, Rc::from(group), slot, after);
        }
    }

    fn join_local(&mut self, name: &Rc<str>, group: Rc<str>, slot: u64, after: u64) {
        let Some(l) = self.local.get_mut(name) else {
            return;
        };
        l.groups.retain(|g| g.0 != group);
        l.groups.push((group.clone(), slot, after));
        let members = self.by_group.entry(group).or_default();
        if !members.contains(name) {
            members.push(name.clone());
        }
    }

    fn unindex(&mut self, group: &str, name: &str) {
        if let Some(members) = self.by_group.get_mut(group) {
            members.retain(|m| &**m != name);
            if members.is_empty() {
                self.by_group.remove(group);
            }
        }
    }

    /// A command's reply as the loop wants it.
    fn result(&mut self, expect: Expect, frame: OwnedFrame) -> Result<Done, StoreError> {
        if let Some(e) = error(&frame) {
            if let Expect::Open(name, _) = &expect {
                self.opening_over(name);
            }
            return Err(refusal(&e, &self.link.addr));
        }
        Ok(match expect {
            Expect::Send => {
                let f = array(frame);
                Done::Sent {
                    id: f.first().and_then(number).unwrap_or(0),
                    live: f.get(1).and_then(number).unwrap_or(0) as usize,
                }
            }
            Expect::Publish => {
                let f = array(frame);
                Done::Published {
                    reached: f.first().and_then(number).unwrap_or(0) as usize,
                    live: f.get(1).and_then(number).unwrap_or(0) as usize,
                }
            }
            Expect::Join | Expect::Leave => Done::GroupSize(number(&frame).unwrap_or(0) as usize),
            Expect::Members => Done::Members(
                array(frame)
                    .iter()
                    .filter_map(bytes)
                    .filter_map(|b| std::str::from_utf8(b).ok())
                    .map(Rc::from)
                    .collect(),
            ),
            Expect::Drop(name) => match number(&frame) {
                Some(1) => Done::Dropped(name),
                _ => return Err(StoreError::NotFound),
            },
            Expect::Info(name) => {
                if matches!(frame, OwnedFrame::Null) {
                    return Err(StoreError::NotFound);
                }
                let f = array(frame);
                let num = |i: usize| f.get(i).and_then(number).unwrap_or(0);
                Done::Info(MailboxInfo {
                    mailbox: name,
                    retained: num(0) as usize,
                    last_id: num(1),
                    groups: num(2) as usize,
                    idle_secs: num(3) / 1000,
                    subscribers: num(4) as usize,
                })
            }
            Expect::Open(name, resume) => {
                let f = array(frame);
                let horizon = f.first().and_then(number).unwrap_or(0);
                let last_id = f.get(1).and_then(number).unwrap_or(0);
                let mut parts = f.into_iter().skip(2);
                let entries = parts.next().map(array).unwrap_or_default();
                let groups = parts.next().map(array).unwrap_or_default();
                self.set_groups(&name, &groups);
                let entries: Vec<Message> = entries
                    .iter()
                    .filter_map(bytes)
                    .filter_map(|b| message(b).ok())
                    .collect();
                if let Some(l) = self.local.get_mut(&name) {
                    l.seen = l.seen.max(last_id);
                }
                let after = resume.unwrap_or(0);
                Done::Opened {
                    mailbox: name,
                    backlog: Backlog {
                        gap: resume.is_some_and(|r| r < horizon),
                        oldest: entries.first().map(|m| m.id),
                        messages: entries.into_iter().filter(|m| m.id > after).collect(),
                        last_id,
                    },
                }
            }
        })
    }
}

impl MailboxStore for RedisStore {
    fn available(&self) -> bool {
        self.up()
    }

    fn handover(&mut self) -> Handover {
        if !self.up() {
            return Handover::Refused("Redis is unreachable".into());
        }
        if !self.pending.is_empty() || !self.events.is_empty() {
            return Handover::Busy;
        }
        Handover::Ready(StoreState::Redis {
            instance: self.instance.clone(),
        })
    }

    fn submit(&mut self, ticket: Ticket, op: Op, now: SystemTime) {
        if !self.up() {
            self.events
                .push_back(StoreEvent::Done(ticket, Err(StoreError::Unavailable)));
            return;
        }
        let retain = self.limits.retain.to_string();
        let retain_bytes = self.limits.retain_bytes.to_string();
        let max_mailboxes = self.limits.max_mailboxes.to_string();
        match op {
            Op::Send { mailbox, payload } => {
                let data = payload.data().clone();
                self.call(
                    "mbx_send",
                    &[
                        mailbox.as_bytes(),
                        payload.event().unwrap_or("").as_bytes(),
                        &data,
                        retain.as_bytes(),
                        retain_bytes.as_bytes(),
                        max_mailboxes.as_bytes(),
                    ],
                    Pending::Command(ticket, Expect::Send),
                    now,
                );
            }
            Op::Publish {
                group,
                payload,
                except,
            } => {
                let data = payload.data().clone();
                let mut args: Vec<&[u8]> = vec![
                    group.as_bytes(),
                    payload.event().unwrap_or("").as_bytes(),
                    &data,
                    retain.as_bytes(),
                    retain_bytes.as_bytes(),
                ];
                args.extend(except.iter().map(|m| m.as_bytes()));
                self.call(
                    "mbx_publish",
                    &args,
                    Pending::Command(ticket, Expect::Publish),
                    now,
                );
            }
            Op::Join { group, mailboxes } => {
                let max_groups = self.limits.max_groups.to_string();
                let mut args: Vec<&[u8]> = vec![
                    group.as_bytes(),
                    max_mailboxes.as_bytes(),
                    max_groups.as_bytes(),
                ];
                args.extend(mailboxes.iter().map(|m| m.as_bytes()));
                self.call(
                    "mbx_join",
                    &args,
                    Pending::Command(ticket, Expect::Join),
                    now,
                );
            }
            Op::Leave { group, mailboxes } => {
                let mut args: Vec<&[u8]> =
                    vec![group.as_bytes(), retain.as_bytes(), retain_bytes.as_bytes()];
                args.extend(mailboxes.iter().map(|m| m.as_bytes()));
                self.call(
                    "mbx_leave",
                    &args,
                    Pending::Command(ticket, Expect::Leave),
                    now,
                );
            }
            Op::Members { group } => self.call(
                "mbx_members",
                &[group.as_bytes()],
                Pending::Command(ticket, Expect::Members),
                now,
            ),
            Op::Drop { mailbox } => self.call(
                "mbx_drop",
                &[mailbox.as_bytes()],
                Pending::Command(ticket, Expect::Drop(mailbox.clone())),
                now,
            ),
            Op::Info { mailbox } => self.call(
                "mbx_info",
                &[
                    mailbox.as_bytes(),
                    retain.as_bytes(),
                    retain_bytes.as_bytes(),
                ],
                Pending::Command(ticket, Expect::Info(Rc::from(mailbox.as_str()))),
                now,
            ),
            Op::Open { mailbox, resume } => {
                let l = self
                    .local
                    .entry(Rc::from(mailbox.as_str()))
                    .or_insert_with_key(|k| Local::new(k.clone()));
                l.opens += 1;
                let key = l.name.clone();
                let client_limit = self.limits.max_mailboxes
                    - self.limits.max_mailboxes * BACKEND_RESERVE_PERCENT / 100;
                let instance = self.instance.clone();
                self.call(
                    "mbx_open",
                    &[
                        mailbox.as_bytes(),
                        instance.as_bytes(),
                        client_limit.to_string().as_bytes(),
                        retain.as_bytes(),
                        retain_bytes.as_bytes(),
                    ],
                    Pending::Command(ticket, Expect::Open(key, resume)),
                    now,
                );
            }
        }
    }

    fn next_event(&mut self) -> Option<StoreEvent> {
        self.events.pop_front()
    }

    fn release(&mut self, name: &str) {
        if let Some(l) = self.mark(name) {
            l.opens = l.opens.saturating_sub(1);
        }
    }

    fn subscribers(&mut self, name: &str, count: usize, _now: SystemTime) {
        let count = count.min(u32::MAX as usize) as u32;
        if let Some(l) = self.mark(name) {
            if count > l.subs {
                // Each new subscriber came from an opening.
                l.opens = l.opens.saturating_sub(count - l.subs);
            }
            l.subs = count;
        }
    }

    fn expire(&mut self, now: SystemTime) -> usize {
        match self.link.state() {
            LinkState::Down if now >= self.retry_at => self.connect(now),
            LinkState::Up if now >= self.next_tick => self.tick(false, now),
            _ => {}
        }
        if let Some((_, sent)) = self.pending.front()
            && now.duration_since(*sent).unwrap_or_default() >= COMMAND_TIMEOUT
        {
            self.fail(
                &format!("no reply within {} s", COMMAND_TIMEOUT.as_secs()),
                now,
            );
        }
        0
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        let link = match self.link.state() {
            LinkState::Down => self.retry_at,
            LinkState::Connecting => self.retry_at.max(SystemTime::now()) + COMMAND_TIMEOUT,
            LinkState::Up => self.next_tick,
        };
        let timeout = self
            .pending
            .front()
            .map(|(_, sent)| *sent + COMMAND_TIMEOUT);
        [Some(link), timeout].into_iter().flatten().min()
    }

    fn stats(&self) -> StoreStats {
        self.stats.clone()
    }

    fn commit(&mut self) -> bool {
        let now = SystemTime::now();
        self.report(now);
        if let Err(e) = self.link.flush() {
            self.fail(&format!("write failed: {e}"), now);
        }
        !self.events.is_empty()
    }

    fn attach(&mut self, registry: &mio::Registry, token: mio::Token) {
        self.link.attach(registry, token);
        self.connect(SystemTime::now());
    }

    fn ready(&mut self, now: SystemTime) {
        if self.link.state() == LinkState::Connecting {
            match self.link.finish_connect() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.fail(&format!("cannot connect: {e}"), now);
                    return;
                }
            }
        }
        if let Err(e) = self.link.flush() {
            self.fail(&format!("write failed: {e}"), now);
            return;
        }
        let mut frames = Vec::new();
        let read = self.link.read(&mut frames);
        for frame in frames {
            if self.link.state() != LinkState::Up {
                break;
            }
            self.handle(frame, now);
        }
        if let Err(e) = read {
            self.fail(&e.to_string(), now);
        }
    }
}

/// A random name for this instance (its channel, its registrations).
fn instance_id() -> String {
    let mut seed = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let n = match random {
        Ok(()) => u64::from_le_bytes(seed),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)
        }
    };
    format!("{n:016x}")
}

fn message(b: &[u8]) -> Result<Message, notice::NoticeError> {
    let e = notice::parse_entry(b)?;
    Ok(Message {
        id: e.id,
        payload: Payload::new(e.event, e.data),
    })
}

/// The store error for a refusal from Redis.
fn refusal(e: &str, addr: &RedisAddr) -> StoreError {
    if e.starts_with("FULL groups") {
        StoreError::TooManyGroups
    } else if e.starts_with("FULL") {
        StoreError::TooManyMailboxes
    } else {
        log::warn!("redis {addr}: {e}");
        StoreError::Unavailable
    }
}

fn error(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::SimpleError { data, .. } => Some(data.clone()),
        OwnedFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

fn array(f: OwnedFrame) -> Vec<OwnedFrame> {
    match f {
        OwnedFrame::Array { data, .. } | OwnedFrame::Push { data, .. } => data,
        OwnedFrame::Set { data, .. } => data.into_iter().collect(),
        _ => Vec::new(),
    }
}

fn bytes(f: &OwnedFrame) -> Option<&[u8]> {
    match f {
        OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

fn number(f: &OwnedFrame) -> Option<u64> {
    match f {
        OwnedFrame::Number { data, .. } => u64::try_from(*data).ok(),
        OwnedFrame::Double { data, .. } if *data >= 0.0 => Some(*data as u64),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}
