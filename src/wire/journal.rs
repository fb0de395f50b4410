//! The journal's record format: what `--state-dir` appends to disk, and
//! what a snapshot is made of.
//!
//! ```text
//! record = length:u32le crc:u32le body        (length = bytes of body)
//! crc    = CRC-32 (IEEE 802.3) of body
//! body   = kind:u8 field*
//! u64    = 8 bytes little-endian
//! name   = len:u8 (1..=128) bytes             (the naming rule of crate::name)
//! opt    = len:u8 (0 = none, else a name)
//! data   = len:u32le bytes                    (UTF-8)
//! names  = count:u16le name*
//! ```
//!
//! | kind | record | fields |
//! |---|---|---|
//! | 1 | `Epoch` | last id issued (u64), discarded horizon (u64) |
//! | 2 | `Message` | mailbox, id (u64), event (opt), data |
//! | 3 | `Publish` | group, first id (u64), except (names), event (opt), data |
//! | 4 | `Join` | group, mailboxes (names) |
//! | 5 | `Leave` | group, mailboxes (names) |
//! | 6 | `Remove` | mailbox, expired (u8: 0 dropped, 1 expired) |
//! | 7 | `Idle` | mailbox, since (u64 ms since 1970) |
//! | 8 | `Watched` | mailbox |
//! | 9 | `Mailbox` | mailbox, horizon (u64), idle since (u64 ms, 0 while watched) |
//! | 10 | `Copy` | mailbox, id (u64), from mailbox, of id (u64) |
//! | 11 | `Clock` | the time of the records that follow (u64 ms since 1970) |
//!
//! A journal writes a `Clock` before each batch of records (one loop
//! turn), so recovery replays every operation at its own time: a mailbox
//! created then starts its idle clock then.
//! A snapshot writes a payload that several mailboxes share (one `PUBLISH`)
//! once, as a `Message`, and each other holder as a `Copy` of it, so a
//! restart keeps it shared.
//!
//! A `Publish` is one record however many members it reached: replaying it
//! against the same groups gives each member the same id (`first id` plus
//! its position among the members not excepted). Every field is checked on
//! decoding; a record whose CRC, length or content is wrong is [`Corrupt`],
//! and one cut short is `Partial` (a torn tail after a crash).
//!
//! [`Corrupt`]: JournalError::Corrupt

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::name;
use crate::wire::Status;

/// A time as the records carry it: milliseconds since 1970.
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time a record's milliseconds since 1970 stand for.
pub fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Bytes before a record's body: length and CRC.
pub const HEADER: usize = 8;

/// Largest body accepted: the largest payload a control line can state
/// (64 MiB) plus a line's worth of names. Anything larger is corruption.
pub const MAX_BODY: usize = (64 << 20) + (128 << 10);

/// One journal record, borrowing its strings from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// The counters at the start of a journal or snapshot.
    Epoch {
        /// The last message id issued.
        last_id: u64,
        /// The highest id discarded with a removed mailbox.
        discarded: u64,
    },
    /// A `SEND`: one message stored in one mailbox.
    Message {
        /// The mailbox (created if missing).
        mailbox: &'a str,
        /// The id it got.
        id: u64,
        /// Its event name.
        event: Option<&'a str>,
        /// Its data.
        data: &'a str,
    },
    /// A `PUBLISH`: one payload stored in every member not excepted.
    Publish {
        /// The group.
        group: &'a str,
        /// The id of the first member's copy; the others follow in order.
        first_id: u64,
        /// Members that got nothing.
        except: Vec<&'a str>,
        /// Its event name.
        event: Option<&'a str>,
        /// Its data.
        data: &'a str,
    },
    /// A `JOIN`.
    Join {
        /// The group.
        group: &'a str,
        /// The mailboxes added.
        mailboxes: Vec<&'a str>,
    },
    /// A `LEAVE`.
    Leave {
        /// The group.
        group: &'a str,
        /// The mailboxes removed.
        mailboxes: Vec<&'a str>,
    },
    /// A mailbox removed: dropped, or expired.
    Remove {
        /// The mailbox.
        mailbox: &'a str,
        /// True for an expiry, false for a `DROP`.
        expired: bool,
    },
    /// A mailbox lost its last subscriber: its idle clock runs from `since`.
    Idle {
        /// The mailbox.
        mailbox: &'a str,
        /// Milliseconds since 1970.
        since_ms: u64,
    },
    /// A mailbox gained a subscriber: its idle clock stops.
    Watched {
        /// The mailbox.
        mailbox: &'a str,
    },
    /// A snapshot's mailbox, before its messages: its horizon and idle clock.
    Mailbox {
        /// The mailbox.
        mailbox: &'a str,
        /// Its horizon.
        horizon: u64,
        /// Milliseconds since 1970 that it has been idle, 0 while watched.
        idle_since_ms: u64,
    },
    /// The time of the records that follow.
    Clock {
        /// Milliseconds since 1970.
        now_ms: u64,
    },
    /// A snapshot's message whose payload an earlier record already holds.
    Copy {
        /// The mailbox.
        mailbox: &'a str,
        /// Its id there.
        id: u64,
        /// The mailbox holding the first copy.
        from: &'a str,
        /// The first copy's id there.
        of: u64,
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalError {
    /// The length, CRC or content is wrong: everything from here on is suspect.
    Corrupt(String),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Corrupt(why) => write!(f, "corrupt journal record: {why}"),
        }
    }
}

fn corrupt(why: impl Into<String>) -> JournalError {
    JournalError::Corrupt(why.into())
}

/// Appends one record to `out`.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::Epoch { last_id, discarded } => {
            out.push(1);
            put_u64(out, *last_id);
            put_u64(out, *discarded);
        }
        Record::Message {
            mailbox,
            id,
            event,
            data,
        } => {
            out.push(2);
            put_name(out, mailbox);
            put_u64(out, *id);
            put_opt(out, *event);
            put_data(out, data);
        }
        Record::Publish {
            group,
            first_id,
            except,
            event,
            data,
        } => {
            out.push(3);
            put_name(out, group);
            put_u64(out, *first_id);
            put_names(out, except);
            put_opt(out, *event);
            put_data(out, data);
        }
        Record::Join { group, mailboxes } | Record::Leave { group, mailboxes } => {
            out.push(if matches!(record, Record::Join { .. }) {
                4
            } else {
                5
            });
            put_name(out, group);
            put_names(out, mailboxes);
        }
        Record::Remove { mailbox, expired } => {
            out.push(6);
            put_name(out, mailbox);
            out.push(u8::from(*expired));
        }
        Record::Idle { mailbox, since_ms } => {
            out.push(7);
            put_name(out, mailbox);
            put_u64(out, *since_ms);
        }
        Record::Watched { mailbox } => {
            out.push(8);
            put_name(out, mailbox);
        }
        Record::Mailbox {
            mailbox,
            horizon,
            idle_since_ms,
        } => {
            out.push(9);
            put_name(out, mailbox);
            put_u64(out, *horizon);
            put_u64(out, *idle_since_ms);
        }
        Record::Copy {
            mailbox,
            id,
            from,
            of,
        } => {
            out.push(10);
            put_name(out, mailbox);
            put_u64(out, *id);
            put_name(out, from);
            put_u64(out, *of);
        }
        Record::Clock { now_ms } => {
            out.push(11);
            put_u64(out, *now_ms);
        }
    }
    let body = &out[start + HEADER..];
    debug_assert!(body.len() <= MAX_BODY, "record of {} bytes", body.len());
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(name::is_valid(name), "{name:?}");
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, name: Option<&str>) {
    match name {
        Some(n) => put_name(out, n),
        None => out.push(0),
    }
}

fn put_names(out: &mut Vec<u8>, names: &[&str]) {
    debug_assert!(names.len() <= u16::MAX as usize);
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for n in names {
        put_name(out, n);
    }
}

fn put_data(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data.as_bytes());
}

/// Decodes the record at the start of `buf`: the record and the bytes it
/// used, `Partial` when `buf` ends inside it, or why it is corrupt.
pub fn decode(buf: &[u8]) -> Result<Status<(Record<'_>, usize)>, JournalError> {
    if buf.len() < HEADER {
        return Ok(Status::Partial);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..HEADER].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_BODY {
        return Err(corrupt(format!("length {len}")));
    }
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Ok(Status::Partial);
    };
    if crc32fast::hash(body) != crc {
        return Err(corrupt("CRC mismatch"));
    }
    let mut r = Reader { buf: body, at: 1 };
    let record = match body[0] {
        1 => Record::Epoch {
            last_id: r.u64()?,
            discarded: r.u64()?,
        },
        2 => Record::Message {
            mailbox: r.name()?,
            id: r.u64()?,
            event: r.opt()?,
            data: r.data()?,
        },
        3 => Record::Publish {
            group: r.name()?,
            first_id: r.u64()?,
            except: r.names()?,
            event: r.opt()?,
            data: r.data()?,
        },
        4 => Record::Join {
            group: r.name()?,
            mailboxes: r.names()?,
        },
        5 => Record::Leave {
            group: r.name()?,
            mailboxes: r.names()?,
        },
        6 => Record::Remove {
            mailbox: r.name()?,
            expired: match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(corrupt(format!("remove flag {other}"))),
            },
        },
        7 => Record::Idle {
            mailbox: r.name()?,
            since_ms: r.u64()?,
        },
        8 => Record::Watched { mailbox: r.name()? },
        9 => Record::Mailbox {
            mailbox: r.name()?,
            horizon: r.u64()?,
            idle_since_ms: r.u64()?,
        },
        10 => Record::Copy {
            mailbox: r.name()?,
            id: r.u64()?,
            from: r.name()?,
            of: r.u64()?,
        },
        11 => Record::Clock { now_ms: r.u64()? },
        kind => return Err(corrupt(format!("unknown kind {kind}"))),
    };
    if r.at != body.len() {
        return Err(corrupt(format!(
            "{} bytes after the fields",
            body.len() - r.at
        )));
    }
    Ok(Status::Complete((record, HEADER + len)))
}

/// Reads fields from a record body whose CRC already matched.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        let bytes = self
            .buf
            .get(self.at..self.at + n)
            .ok_or_else(|| corrupt("a field runs past the record"))?;
        self.at += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, JournalError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, JournalError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, JournalError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt("text is not UTF-8"))
    }

    fn name(&mut self) -> Result<&'a str, JournalError> {
        let n = self.u8()? as usize;
        let name = self.str(n)?;
        if !name::is_valid(name) {
            return Err(corrupt(format!("invalid name {name:?}")));
        }
        Ok(name)
    }

    fn opt(&mut self) -> Result<Option<&'a str>, JournalError> {
        if self.buf.get(self.at) == Some(&0) {
            self.at += 1;
            return Ok(None);
        }
        self.name().map(Some)
    }

    fn names(&mut self) -> Result<Vec<&'a str>, JournalError> {
        let count = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        (0..count).map(|_| self.name()).collect()
    }

    fn data(&mut self) -> Result<&'a str, JournalError> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.str(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record::Epoch {
                last_id: 1_795_000_000_000_000,
                discarded: 17,
            },
            Record::Message {
                mailbox: "alice",
                id: 42,
                event: Some("chat"),
                data: "héllo\nworld",
            },
            Record::Message {
                mailbox: "b",
                id: u64::MAX,
                event: None,
                data: "",
            },
            Record::Publish {
                group: "room",
                first_id: 43,
                except: vec!["alice", "bob"],
                event: None,
                data: "hi all",
            },
            Record::Join {
                group: "room",
                mailboxes: vec!["alice", "carol"],
            },
            Record::Leave {
                group: "room",
                mailboxes: vec![],
            },
            Record::Remove {
                mailbox: "carol",
                expired: true,
            },
            Record::Idle {
                mailbox: "alice",
                since_ms: 1_795_000_000_123,
            },
            Record::Watched { mailbox: "alice" },
            Record::Mailbox {
                mailbox: "dave",
                horizon: 9,
                idle_since_ms: 0,
            },
            Record::Copy {
                mailbox: "carol",
                id: 44,
                from: "alice",
                of: 43,
            },
            Record::Clock {
                now_ms: 1_795_000_000_456,
            },
        ]
    }

    fn encoded(records: &[Record<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(r, &mut out);
        }
        out
    }

    #[test]
    fn byte_layout_of_a_message() {
        let mut out = Vec::new();
        encode(
            &Record::Message {
                mailbox: "a",
                id: 1,
                event: None,
                data: "x",
            },
            &mut out,
        );
        let body = [2, 1, b'a', 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'x'];
        assert_eq!(&out[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&out[4..8], &crc32fast::hash(&body).to_le_bytes());
        assert_eq!(&out[8..], &body);
    }

    #[test]
    fn every_record_round_trips() {
        let records = samples();
        let bytes = encoded(&records);
        let mut rest = &bytes[..];
        for expected in &records {
            let Ok(Status::Complete((got, used))) = decode(rest) else {
                panic!("{expected:?}");
            };
            assert_eq!(&got, expected);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn every_split_point_is_partial_never_wrong() {
        let bytes = encoded(&samples());
        let first = match decode(&bytes) {
            Ok(Status::Complete((_, used))) => used,
            other => panic!("{other:?}"),
        };
        for cut in 0..first {
            assert_eq!(decode(&bytes[..cut]), Ok(Status::Partial), "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bits_are_caught_by_the_crc() {
        let bytes = encoded(&samples()[1..2]);
        for i in HEADER..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    matches!(decode(&bad), Err(JournalError::Corrupt(_))),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn lengths_and_content_are_checked() {
        assert!(decode(&[0; 8]).is_err(), "zero length");
        let mut huge = ((MAX_BODY + 1) as u32).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 4]);
        assert!(
            decode(&huge).is_err(),
            "over MAX_BODY, decided before reading it"
        );
        // A body whose CRC matches but whose content is wrong.
        let with_body = |body: &[u8]| {
            let mut out = (body.len() as u32).to_le_bytes().to_vec();
            out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            out.extend_from_slice(body);
            out
        };
        for body in [
            &[99u8][..],
            &[8, 3, b'a', b' ', b'b'],
            &[8, 0],
            &[8, 1, 0xff],
            &[8, 1, b'a', 0],
            &[6, 1, b'a', 2],
            &[2, 1, b'a', 1, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, b'x'],
            &[2, 1, b'a', 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xc3],
        ] {
            assert!(
                matches!(decode(&with_body(body)), Err(JournalError::Corrupt(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet: Vec<u8> = (0..=255).collect();
        let valid = encoded(&samples());
        for buf in crate::wire::random_inputs(0x5EED_0F10_6A5E, &alphabet, 64, 20000) {
            let _ = decode(&buf);
            let mut spliced = valid.clone();
            let at = buf.len() % valid.len();
            spliced.splice(at..at, buf.iter().copied());
            let mut rest = &spliced[..];
            while let Ok(Status::Complete((_, used))) = decode(rest) {
                rest = &rest[used..];
            }
        }
    }
}
