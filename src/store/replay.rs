//! Rebuilding a [`MemoryStore`] from journal records, and writing its whole
//! state as records (a snapshot).
//!
//! Replay is exact: a record that gave an id gives the same id again (the
//! counter is set just below it first), a `PUBLISH` is replayed against the
//! same groups in the same member order, and retention limits evict as they
//! did. A snapshot is a journal that recreates the state from nothing:
//! every mailbox with its horizon and idle clock, every retained message in
//! id order (a payload several mailboxes share once, then `Copy` records),
//! every group's members in order, and last the `Epoch` (the counters,
//! above every id before it).
//!
//! A record is applied at the time of the last `Clock` before it
//! ([`Replay`] keeps it), as the operation was.
//!
//! After the records, [`MemoryStore::finish_recovery`] treats every
//! mailbox as unwatched (no subscriber survives a restart): one that was
//! watched starts idling at the restart, one that was idle keeps its clock,
//! so a mailbox idle for 250 s of a 300 s TTL expires 50 s after it.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::SystemTime;

use super::{Mailbox, MemoryStore};
use crate::message::{Message, Payload};
use crate::wire::journal::{self, Record, from_ms, to_ms as ms};

/// Why a record could not be applied: the journal contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError(pub String);

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal does not replay: {}", self.0)
    }
}

impl MemoryStore {
    /// Sets the id counter so that the next id issued is `id`; ids only grow.
    fn next_id_is(&mut self, id: u64) -> Result<(), ReplayError> {
        if id <= self.last_id {
            return Err(ReplayError(format!(
                "id {id} is not above the last id {}",
                self.last_id
            )));
        }
        self.last_id = id - 1;
        Ok(())
    }

    /// Applies one record, as the operation that wrote it did at `now`.
    pub fn replay(&mut self, record: &Record<'_>, now: SystemTime) -> Result<(), ReplayError> {
        match record {
            Record::Clock { .. } => {}
            Record::Epoch { last_id, discarded } => {
                self.last_id = self.last_id.max(*last_id);
                self.discarded = self.discarded.max(*discarded);
            }
            Record::Message {
                mailbox,
                id,
                event,
                data,
            } => {
                self.next_id_is(*id)?;
                self.send(mailbox, &Payload::new(*event, data), now)
                    .map_err(|e| ReplayError(format!("message {id}: {e}")))?;
            }
            Record::Publish {
                group,
                first_id,
                except,
                event,
                data,
            } => {
                self.next_id_is(*first_id)?;
                self.publish(group, &Payload::new(*event, data), except, now);
            }
            Record::Join { group, mailboxes } => {
                self.join(group, mailboxes, now)
                    .map_err(|e| ReplayError(format!("join {group}: {e}")))?;
            }
            Record::Leave { group, mailboxes } => {
                self.leave(group, mailboxes);
            }
            Record::Remove { mailbox, expired } => {
                if let Some(&key) = self.mailbox_index.get(*mailbox) {
                    self.remove(key);
                    if *expired {
                        self.expired += 1;
                    }
                }
            }
            Record::Idle { mailbox, since_ms } => {
                if let Some(&key) = self.mailbox_index.get(*mailbox) {
                    if self.mailboxes[key].holds_nothing() {
                        self.remove(key);
                    } else {
                        self.start_idle(key, from_ms(*since_ms));
                    }
                }
            }
            Record::Watched { mailbox } => {
                let key = self
                    .get_or_create(mailbox, now)
                    .map_err(|e| ReplayError(format!("mailbox {mailbox}: {e}")))?;
                let mb = &mut self.mailboxes[key];
                mb.idle_since = None;
                mb.idle_gen = 0;
            }
            Record::Mailbox {
                mailbox,
                horizon,
                idle_since_ms,
            } => {
                let key = self
                    .get_or_create(mailbox, now)
                    .map_err(|e| ReplayError(format!("mailbox {mailbox}: {e}")))?;
                self.mailboxes[key].horizon = *horizon;
                if *idle_since_ms == 0 {
                    self.mailboxes[key].idle_since = None;
                } else {
                    self.start_idle(key, from_ms(*idle_since_ms));
                }
            }
            Record::Copy {
                mailbox,
                id,
                from,
                of,
            } => {
                let payload = self
                    .mailbox_index
                    .get(*from)
                    .and_then(|&k| {
                        let msgs = &self.mailboxes[k].messages;
                        let i = msgs.binary_search_by_key(of, |m| m.id).ok()?;
                        Some(msgs[i].payload.clone())
                    })
                    .ok_or_else(|| {
                        ReplayError(format!("copy of {of} in {from}: no such message"))
                    })?;
                self.next_id_is(*id)?;
                let key = self
                    .get_or_create(mailbox, now)
                    .map_err(|e| ReplayError(format!("mailbox {mailbox}: {e}")))?;
                self.store_in(key, &payload);
            }
        }
        Ok(())
    }

    /// A store rebuilt from a predecessor's snapshot (a binary upgrade):
    /// its mailboxes stay watched until the requests handed over have
    /// opened them again ([`super::MailboxStore::restored`]). Ids go on
    /// above the recovered ones and the clock.
    pub fn from_records(
        limits: super::StoreLimits,
        records: &[u8],
    ) -> Result<MemoryStore, ReplayError> {
        let mut store = MemoryStore::new(limits, 1);
        let mut replay = Replay::new(SystemTime::now());
        let mut at = 0;
        while at < records.len() {
            match journal::decode(&records[at..]) {
                Ok(crate::wire::Status::Complete((record, used))) => {
                    replay.apply(&mut store, &record)?;
                    at += used;
                }
                Ok(crate::wire::Status::Partial) => {
                    return Err(ReplayError("a record cut short".into()));
                }
                Err(e) => return Err(ReplayError(e.to_string())),
            }
        }
        store.resume_ids(MemoryStore::clock_id(), false, false);
        Ok(store)
    }

    /// After the last record: nobody is subscribed any more, except the
    /// requests a predecessor handed over, which have opened their
    /// mailboxes again by now. A mailbox that was watched and has no
    /// subscriber starts idling `now`; one that holds nothing and belongs
    /// to no group goes.
    pub fn finish_recovery(&mut self, now: SystemTime) {
        let watched: Vec<usize> = self
            .mailboxes
            .iter()
            .filter(|(_, m)| m.watched() && m.subscribers == 0)
            .map(|(k, _)| k)
            .collect();
        for key in watched {
            if self.mailboxes[key].holds_nothing() {
                self.remove(key);
            } else {
                self.start_idle(key, now);
            }
        }
    }

    /// Appends the whole state as records: replaying them into an empty
    /// store gives this one back.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        for (_, mb) in &self.mailboxes {
            journal::encode(
                &Record::Mailbox {
                    mailbox: &mb.name,
                    horizon: mb.horizon,
                    idle_since_ms: if mb.watched() {
                        0
                    } else {
                        mb.idle_since.map_or(1, ms).max(1)
                    },
                },
                out,
            );
        }
        // Messages in id order, as they were stored; the eviction order
        // has them so, with entries of evicted ones to skip.
        let mut first_holder: HashMap<*const Payload, (&Mailbox, u64)> = HashMap::new();
        for &(id, key, uid) in &self.order {
            let Some(mb) = self.mailboxes.get(key).filter(|m| m.uid == uid) else {
                continue;
            };
            let Ok(i) = mb.messages.binary_search_by_key(&id, |m| m.id) else {
                continue;
            };
            let Message { payload, .. } = &mb.messages[i];
            match first_holder.get(&Rc::as_ptr(payload)) {
                Some((from, of)) => journal::encode(
                    &Record::Copy {
                        mailbox: &mb.name,
                        id,
                        from: &from.name,
                        of: *of,
                    },
                    out,
                ),
                None => {
                    first_holder.insert(Rc::as_ptr(payload), (mb, id));
                    journal::encode(
                        &Record::Message {
                            mailbox: &mb.name,
                            id,
                            event: payload.event(),
                            data: std::str::from_utf8(payload.data()).unwrap_or_default(),
                        },
                        out,
                    );
                }
            }
        }
        for (_, group) in &self.groups {
            let members: Vec<&str> = group
                .members
                .iter()
                .map(|&k| &*self.mailboxes[k].name)
                .collect();
            for chunk in members.chunks(u16::MAX as usize) {
                journal::encode(
                    &Record::Join {
                        group: &group.name,
                        mailboxes: chunk.to_vec(),
                    },
                    out,
                );
            }
        }
        journal::encode(
            &Record::Epoch {
                last_id: self.last_id,
                discarded: self.discarded,
            },
            out,
        );
    }
}

/// Replays records in order, each at the time of the last `Clock` before it.
#[derive(Debug)]
pub struct Replay {
    now: SystemTime,
}

impl Replay {
    /// Starts a replay; records before any `Clock` apply at `start`.
    pub fn new(start: SystemTime) -> Replay {
        Replay { now: start }
    }

    /// Applies one record to `store`.
    pub fn apply(
        &mut self,
        store: &mut MemoryStore,
        record: &Record<'_>,
    ) -> Result<(), ReplayError> {
        if let Record::Clock { now_ms } = record {
            self.now = from_ms(*now_ms);
        }
        store.replay(record, self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MailboxStore, StoreLimits};
    use crate::wire::Status;
    use std::time::Duration;

    fn limits() -> StoreLimits {
        StoreLimits {
            retain: 5,
            retain_bytes: 1 << 20,
            mailbox_ttl: Duration::from_secs(300),
            max_mailboxes: 1000,
            max_groups: 100,
            max_memory: 1 << 30,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// Everything a client or backend can observe of a store.
    fn observe(s: &MemoryStore, now: SystemTime) -> Vec<String> {
        let mut seen: Vec<String> = s
            .mailbox_index
            .keys()
            .map(|name| {
                let b = s.backlog(name, Some(0)).unwrap();
                let ids: Vec<(u64, String)> = b
                    .messages
                    .iter()
                    .map(|m| (m.id, String::from_utf8_lossy(m.payload.data()).into_owned()))
                    .collect();
                format!(
                    "{name}: {:?} gap={} {:?} {ids:?}",
                    s.info(name, now),
                    b.gap,
                    b.oldest
                )
            })
            .collect();
        for name in s.group_index.keys() {
            seen.push(format!("group {name}: {:?}", s.members(name)));
        }
        seen.push(format!("last_id={} discarded={}", s.last_id, s.discarded));
        seen.push(format!("retained={} bytes={}", s.retained, s.memory));
        seen.sort();
        seen
    }

    fn replay_all(bytes: &[u8], now: SystemTime) -> MemoryStore {
        let mut s = MemoryStore::new(limits(), 1);
        let mut replay = Replay::new(now);
        let mut rest = bytes;
        while let Ok(Status::Complete((record, used))) = journal::decode(rest) {
            replay.apply(&mut s, &record).unwrap();
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        s
    }

    /// A store shaped by every kind of operation, and the journal records
    /// those operations write.
    fn busy_store() -> (MemoryStore, Vec<u8>) {
        let mut s = MemoryStore::new(limits(), 1000);
        let mut j = Vec::new();
        journal::encode(
            &Record::Epoch {
                last_id: 999,
                discarded: 999,
            },
            &mut j,
        );
        let clock = |j: &mut Vec<u8>, at| journal::encode(&Record::Clock { now_ms: ms(t(at)) }, j);
        let send = |s: &mut MemoryStore, j: &mut Vec<u8>, mb: &str, data: &str, at| {
            clock(j, at);
            let d = s.send(mb, &Payload::new(Some("e"), data), t(at)).unwrap();
            journal::encode(
                &Record::Message {
                    mailbox: mb,
                    id: d.message.id,
                    event: Some("e"),
                    data,
                },
                j,
            );
        };
        for i in 0..8 {
            send(&mut s, &mut j, "alice", &format!("a{i}"), i);
        }
        send(&mut s, &mut j, "bob", "b0", 8);
        s.join("room", &["alice", "bob", "carol"], t(9)).unwrap();
        clock(&mut j, 9);
        journal::encode(
            &Record::Join {
                group: "room",
                mailboxes: vec!["alice", "bob", "carol"],
            },
            &mut j,
        );
        let published = s.publish("room", &Payload::new(None, "hi room"), &["bob"], t(10));
        clock(&mut j, 10);
        journal::encode(
            &Record::Publish {
                group: "room",
                first_id: published[0].message.id,
                except: vec!["bob"],
                event: None,
                data: "hi room",
            },
            &mut j,
        );
        s.leave("room", &["carol"]);
        journal::encode(
            &Record::Leave {
                group: "room",
                mailboxes: vec!["carol"],
            },
            &mut j,
        );
        send(&mut s, &mut j, "dave", "d0", 11);
        s.drop_mailbox("dave").unwrap();
        journal::encode(
            &Record::Remove {
                mailbox: "dave",
                expired: false,
            },
            &mut j,
        );
        s.watch("bob");
        journal::encode(&Record::Watched { mailbox: "bob" }, &mut j);
        s.unwatch("alice", t(12));
        clock(&mut j, 12);
        journal::encode(
            &Record::Idle {
                mailbox: "alice",
                since_ms: ms(t(12)),
            },
            &mut j,
        );
        (s, j)
    }

    #[test]
    fn replaying_the_journal_gives_the_same_store() {
        let (live, journal) = busy_store();
        let replayed = replay_all(&journal, t(0));
        assert_eq!(observe(&replayed, t(20)), observe(&live, t(20)));
        assert!(replayed.info("dave", t(20)).is_none());
        assert_eq!(replayed.info("alice", t(20)).unwrap().idle_secs, 8);
    }

    #[test]
    fn a_snapshot_gives_the_same_store_and_keeps_payloads_shared() {
        let (live, _) = busy_store();
        let mut snap = Vec::new();
        live.snapshot(&mut snap);
        let restored = replay_all(&snap, t(0));
        assert_eq!(observe(&restored, t(20)), observe(&live, t(20)));
        let alice = restored.backlog("alice", None).unwrap();
        let carol = restored.backlog("carol", None).unwrap();
        let shared = |b: &crate::store::Backlog| b.messages.last().unwrap().payload.clone();
        assert!(
            Rc::ptr_eq(&shared(&alice), &shared(&carol)),
            "one payload, two mailboxes"
        );
        // And a snapshot of the restored store is byte for byte the same.
        let mut again = Vec::new();
        restored.snapshot(&mut again);
        assert_eq!(again.len(), snap.len());
    }

    #[test]
    fn after_recovery_idle_clocks_go_on_and_watched_mailboxes_start_idling() {
        let (live, journal) = busy_store();
        let mut restored = replay_all(&journal, t(0));
        restored.finish_recovery(t(100));
        // carol idled from its JOIN at 9 s and alice from 12 s: they
        // expire at 309 s and 312 s, as they would have without a restart.
        assert_eq!(restored.expire(t(308)), 0);
        assert!(restored.info("alice", t(308)).is_some());
        // bob was watched: it idles from the restart, so expires at 400 s.
        assert_eq!(restored.info("bob", t(150)).unwrap().idle_secs, 50);
        assert_eq!(restored.expire(t(312)), 2, "alice and carol");
        assert_eq!(restored.expire(t(399)), 0);
        assert_eq!(restored.expire(t(400)), 1);
        drop(live);
    }

    #[test]
    fn a_journal_that_contradicts_itself_is_refused() {
        let mut s = MemoryStore::new(limits(), 1);
        let ok = Record::Message {
            mailbox: "a",
            id: 10,
            event: None,
            data: "x",
        };
        s.replay(&ok, t(0)).unwrap();
        assert!(s.replay(&ok, t(0)).is_err(), "an id twice");
        let orphan = Record::Copy {
            mailbox: "b",
            id: 11,
            from: "a",
            of: 9,
        };
        assert!(s.replay(&orphan, t(0)).is_err());
    }
}
