//! The local subscriber registry: which parked requests of this process wait
//! on which mailbox, and the fan-out of a message to them.
//!
//! It is the one place that knows who is subscribed: synchronous, owned by
//! the event loop, never shared or persisted (a parked request is a socket of
//! this process). The mailbox log learns only that a mailbox gained its
//! first or lost its last local subscriber, which is what expiry needs.
//!
//! Most mailboxes have one subscriber (one browser tab), so it is stored
//! inline, and a table entry is 32 bytes (name and one id); a boxed vector
//! is allocated only for a second one. With the table's spare buckets that
//! is about 55 bytes per idle subscriber.

use std::collections::HashMap;
use std::rc::Rc;

use crate::message::Message;

/// Identifies one waiting request to the caller: connection key and request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberId(pub u64);

/// What the caller did with a message handed to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Taken (written, or kept for a long-poll's answer); it stays for more.
    Keep,
    /// Could not be written (the connection is over its output cap): detach it.
    Failed,
}

/// Why a subscriber was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySubscribers;

#[derive(Debug)]
enum Waiting {
    One(SubscriberId),
    #[allow(clippy::box_collection)] // boxed to keep the common entry at 16 bytes
    Many(Box<Vec<SubscriberId>>),
}

impl Waiting {
    fn as_slice(&self) -> &[SubscriberId] {
        match self {
            Waiting::One(s) => std::slice::from_ref(s),
            Waiting::Many(v) => v,
        }
    }
}

/// Every mailbox with at least one local subscriber, and its subscribers.
#[derive(Debug)]
pub struct Subscribers {
    by_mailbox: HashMap<Rc<str>, Waiting>,
    total: usize,
    max_per_mailbox: usize,
}

/// What [`Subscribers::fan_out`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Subscribers the message was written to.
    pub live: usize,
    /// The mailbox lost its last subscriber (all were detached).
    pub emptied: bool,
    /// Subscribers detached because they could not take it.
    pub detached: usize,
}

impl Subscribers {
    /// An empty registry allowing `max_per_mailbox` subscribers per mailbox.
    pub fn new(max_per_mailbox: usize) -> Subscribers {
        Subscribers {
            by_mailbox: HashMap::new(),
            total: 0,
            max_per_mailbox,
        }
    }

    /// Adds a subscriber; `Ok(true)` when it is the mailbox's first.
    pub fn add(
        &mut self,
        mailbox: &Rc<str>,
        sub: SubscriberId,
    ) -> Result<bool, TooManySubscribers> {
        let first = match self.by_mailbox.get_mut(&**mailbox) {
            None => {
                self.by_mailbox.insert(mailbox.clone(), Waiting::One(sub));
                true
            }
            Some(w) if w.as_slice().len() >= self.max_per_mailbox => {
                return Err(TooManySubscribers);
            }
            Some(w) => {
                match w {
                    Waiting::One(s) => *w = Waiting::Many(Box::new(vec![*s, sub])),
                    Waiting::Many(v) => v.push(sub),
                }
                false
            }
        };
        self.total += 1;
        Ok(first)
    }

    /// Removes a subscriber; harmless if it is not there. `Some(left)`,
    /// the mailbox's remaining subscribers, when it was there.
    pub fn remove(&mut self, mailbox: &str, sub: SubscriberId) -> Option<usize> {
        let w = self.by_mailbox.get_mut(mailbox)?;
        let left = match w {
            Waiting::One(s) if *s == sub => 0,
            Waiting::One(_) => return None,
            Waiting::Many(v) => {
                let i = v.iter().position(|&s| s == sub)?;
                v.swap_remove(i);
                let left = v.len();
                if let [only] = v[..] {
                    *w = Waiting::One(only);
                }
                left
            }
        };
        self.total -= 1;
        if left == 0 {
            self.by_mailbox.remove(mailbox);
        }
        Some(left)
    }

    /// Removes every subscriber of a mailbox (its `DROP`) and returns them.
    pub fn take(&mut self, mailbox: &str) -> Vec<SubscriberId> {
        let subs = self
            .by_mailbox
            .remove(mailbox)
            .map_or_else(Vec::new, |w| w.as_slice().to_vec());
        self.total -= subs.len();
        subs
    }

    /// Hands `msg` to each subscriber of `mailbox` through `deliver`, and
    /// detaches those for which it answers [`Outcome::Failed`].
    pub fn fan_out(
        &mut self,
        mailbox: &str,
        msg: &Message,
        deliver: &mut dyn FnMut(SubscriberId, &Message) -> Outcome,
    ) -> FanOut {
        let Some(w) = self.by_mailbox.get_mut(mailbox) else {
            return FanOut {
                live: 0,
                emptied: false,
                detached: 0,
            };
        };
        let mut live = 0;
        let mut keep = |sub: SubscriberId| match deliver(sub, msg) {
            Outcome::Keep => {
                live += 1;
                true
            }
            Outcome::Failed => false,
        };
        let (before, after) = match w {
            Waiting::One(s) => (1, usize::from(keep(*s))),
            Waiting::Many(v) => {
                let before = v.len();
                v.retain(|&s| keep(s));
                let after = v.len();
                if after == 1 {
                    *w = Waiting::One(v[0]);
                }
                (before, after)
            }
        };
        self.total -= before - after;
        let emptied = after == 0;
        if emptied {
            self.by_mailbox.remove(mailbox);
        }
        FanOut {
            live,
            emptied,
            detached: before - after,
        }
    }

    /// Local subscribers of one mailbox.
    pub fn count(&self, mailbox: &str) -> usize {
        self.by_mailbox
            .get(mailbox)
            .map_or(0, |w| w.as_slice().len())
    }

    /// Local subscribers in all.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;

    fn msg() -> Message {
        Message {
            id: 1,
            payload: Payload::new(None, "x"),
        }
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Waiting>(), 16);
        assert_eq!(std::mem::size_of::<(Rc<str>, Waiting)>(), 32);
    }

    #[test]
    fn first_and_last_subscriber_are_reported() {
        let mut r = Subscribers::new(3);
        let a: Rc<str> = Rc::from("a");
        assert_eq!(r.add(&a, SubscriberId(1)), Ok(true));
        assert_eq!(r.add(&a, SubscriberId(2)), Ok(false));
        assert_eq!(r.add(&a, SubscriberId(3)), Ok(false));
        assert_eq!(r.add(&a, SubscriberId(4)), Err(TooManySubscribers));
        assert_eq!((r.count("a"), r.total()), (3, 3));
        assert_eq!(r.remove("a", SubscriberId(9)), None, "absent: harmless");
        assert_eq!(r.remove("a", SubscriberId(1)), Some(2));
        assert_eq!(r.remove("a", SubscriberId(2)), Some(1));
        assert_eq!(r.remove("a", SubscriberId(3)), Some(0), "the last one");
        assert_eq!(r.remove("a", SubscriberId(3)), None, "twice: harmless");
        assert_eq!((r.count("a"), r.total()), (0, 0));
    }

    #[test]
    fn fan_out_detaches_the_failed() {
        let mut r = Subscribers::new(16);
        let a: Rc<str> = Rc::from("a");
        for i in 1..=4 {
            r.add(&a, SubscriberId(i)).unwrap();
        }
        let mut seen = vec![];
        let f = r.fan_out("a", &msg(), &mut |s, _| {
            seen.push(s.0);
            match s.0 {
                1 | 2 => Outcome::Failed,
                _ => Outcome::Keep,
            }
        });
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!(
            f,
            FanOut {
                live: 2,
                emptied: false,
                detached: 2
            }
        );
        assert_eq!((r.count("a"), r.total()), (2, 2));
        let f = r.fan_out("a", &msg(), &mut |_, _| Outcome::Failed);
        assert_eq!(
            f,
            FanOut {
                live: 0,
                emptied: true,
                detached: 2
            }
        );
        assert_eq!(r.total(), 0);
        let none = r.fan_out("a", &msg(), &mut |_, _| Outcome::Keep);
        assert_eq!(
            none,
            FanOut {
                live: 0,
                emptied: false,
                detached: 0
            }
        );
    }

    #[test]
    fn one_subscriber_stays_inline_and_take_empties() {
        let mut r = Subscribers::new(16);
        let a: Rc<str> = Rc::from("a");
        r.add(&a, SubscriberId(1)).unwrap();
        r.add(&a, SubscriberId(2)).unwrap();
        r.remove("a", SubscriberId(1));
        assert!(matches!(r.by_mailbox["a"], Waiting::One(SubscriberId(2))));
        let f = r.fan_out("a", &msg(), &mut |_, _| Outcome::Keep);
        assert_eq!(
            f,
            FanOut {
                live: 1,
                emptied: false,
                detached: 0
            }
        );
        r.add(&a, SubscriberId(3)).unwrap();
        let mut taken = r.take("a");
        taken.sort_by_key(|s| s.0);
        assert_eq!(taken, vec![SubscriberId(2), SubscriberId(3)]);
        assert_eq!(r.total(), 0);
    }
}
