//! What instances sharing a Redis store exchange: the notifications the
//! mailboxd function library (`src/store/redis/mailboxd.lua`) publishes on
//! an instance's channel, and the retained entries it keeps per mailbox.
//! The Redis protocol itself (RESP3) is the `redis-protocol` crate's; these
//! are the payloads inside it. They come from Redis, which anyone with its
//! password can write to, so they are parsed like any other input.
//!
//! ```text
//! entry:     <id> SP [event] LF data
//! delivery:  "D" SP <count> SP [event] LF ( <id> SP <mailbox> LF ){count} data
//! group:     "G" SP <group> SP <first-id> SP [event] SP ( <mailbox> *( "," <mailbox> ) / "-" ) LF data
//! joined:    "J" SP <group> SP <mailbox> SP <slot> SP <joined-after-id>
//! left:      "L" SP <group> SP <mailbox>
//! drop:      "X" SP <mailbox>
//! ```
//!
//! A group message is published once per instance: each member's id is
//! the first id plus the member's slot in the group, unless the member is
//! excepted or joined after it; the instance knows the slots of the
//! mailboxes it watches (from their opening and from `J` and `L`).

use std::fmt;

/// A notification on an instance's channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// One payload stored in one or more mailboxes watched by the instance.
    Deliver {
        /// The SSE event name, if any.
        event: Option<&'a str>,
        /// The payload.
        data: &'a str,
        /// Each mailbox and the id the payload got there, in id order.
        targets: Vec<(u64, &'a str)>,
    },
    /// A message published to a group.
    Group {
        /// The group.
        group: &'a str,
        /// The id of the member in slot 0.
        first: u64,
        /// The SSE event name, if any.
        event: Option<&'a str>,
        /// Members that do not get it, comma-separated (empty: none).
        except: &'a str,
        /// The payload.
        data: &'a str,
    },
    /// A mailbox the instance watches joined a group.
    Joined {
        /// The group.
        group: &'a str,
        /// The mailbox.
        mailbox: &'a str,
        /// Its slot there.
        slot: u64,
        /// It gets the group's messages with ids above this.
        after: u64,
    },
    /// A mailbox the instance watches left a group.
    Left {
        /// The group.
        group: &'a str,
        /// The mailbox.
        mailbox: &'a str,
    },
    /// The mailbox was dropped: its streams end.
    Dropped(&'a str),
}

/// Whether `name` is in a comma-separated `except` list.
pub fn excepts(except: &str, name: &str) -> bool {
    except.split(',').any(|m| m == name)
}

/// A retained message as Redis keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Its id.
    pub id: u64,
    /// The SSE event name, if any.
    pub event: Option<&'a str>,
    /// The payload.
    pub data: &'a str,
}

/// Why a notice or entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeError {
    /// Not one of the shapes above.
    Malformed,
    /// Names or data are not UTF-8.
    NotUtf8,
}

impl fmt::Display for NoticeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoticeError::Malformed => "malformed notice",
            NoticeError::NotUtf8 => "notice is not UTF-8",
        })
    }
}

fn text(b: &[u8]) -> Result<&str, NoticeError> {
    std::str::from_utf8(b).map_err(|_| NoticeError::NotUtf8)
}

fn id(b: &[u8]) -> Result<u64, NoticeError> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return Err(NoticeError::Malformed);
    }
    text(b)?.parse().map_err(|_| NoticeError::Malformed)
}

/// Splits at the first `byte`: (before, after).
fn split(b: &[u8], byte: u8) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == byte)?;
    Some((&b[..i], &b[i + 1..]))
}

fn event(b: &[u8]) -> Result<Option<&str>, NoticeError> {
    Ok(if b.is_empty() { None } else { Some(text(b)?) })
}

/// Parses a retained entry.
pub fn parse_entry(b: &[u8]) -> Result<Entry<'_>, NoticeError> {
    let (head, data) = split(b, b'\n').ok_or(NoticeError::Malformed)?;
    let (n, ev) = split(head, b' ').ok_or(NoticeError::Malformed)?;
    Ok(Entry {
        id: id(n)?,
        event: event(ev)?,
        data: text(data)?,
    })
}

/// Encodes a retained entry (what the function library writes; for tests
/// and tools).
pub fn encode_entry(id: u64, event: Option<&str>, data: &str) -> Vec<u8> {
    format!("{id} {}\n{data}", event.unwrap_or("")).into_bytes()
}

/// Parses a notification.
pub fn parse_notice(b: &[u8]) -> Result<Notice<'_>, NoticeError> {
    if let Some(name) = b.strip_prefix(b"X ") {
        return Ok(Notice::Dropped(text(name)?));
    }
    if let Some(rest) = b.strip_prefix(b"G ") {
        let (head, data) = split(rest, b'\n').ok_or(NoticeError::Malformed)?;
        let mut f = text(head)?.split(' ');
        let (Some(group), Some(first), Some(ev), Some(except), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(NoticeError::Malformed);
        };
        return Ok(Notice::Group {
            group,
            first: id(first.as_bytes())?,
            event: event(ev.as_bytes())?,
            except: if except == "-" { "" } else { except },
            data: text(data)?,
        });
    }
    if let Some(rest) = b.strip_prefix(b"J ") {
        let mut f = text(rest)?.split(' ');
        let (Some(group), Some(mailbox), Some(slot), Some(after), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(NoticeError::Malformed);
        };
        return Ok(Notice::Joined {
            group,
            mailbox,
            slot: id(slot.as_bytes())?,
            after: id(after.as_bytes())?,
        });
    }
    if let Some(rest) = b.strip_prefix(b"L ") {
        let (group, mailbox) = text(rest)?.split_once(' ').ok_or(NoticeError::Malformed)?;
        return Ok(Notice::Left { group, mailbox });
    }
    let rest = b.strip_prefix(b"D ").ok_or(NoticeError::Malformed)?;
    let (head, mut rest) = split(rest, b'\n').ok_or(NoticeError::Malformed)?;
    let (count, ev) = split(head, b' ').ok_or(NoticeError::Malformed)?;
    let count = id(count)?;
    let mut targets = Vec::new();
    for _ in 0..count {
        let (line, after) = split(rest, b'\n').ok_or(NoticeError::Malformed)?;
        let (n, name) = split(line, b' ').ok_or(NoticeError::Malformed)?;
        targets.push((id(n)?, text(name)?));
        rest = after;
    }
    Ok(Notice::Deliver {
        event: event(ev)?,
        data: text(rest)?,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(
            parse_entry(b"17 chat\nhello\nworld"),
            Ok(Entry {
                id: 17,
                event: Some("chat"),
                data: "hello\nworld"
            })
        );
        assert_eq!(
            parse_entry(&encode_entry(1796640000000001, None, "")),
            Ok(Entry {
                id: 1796640000000001,
                event: None,
                data: ""
            })
        );
        for bad in [
            &b"17chat\nx"[..],
            b"x y\nz",
            b"17 chat",
            b"",
            b"99999999999999999999999 \n",
        ] {
            assert_eq!(parse_entry(bad), Err(NoticeError::Malformed), "{bad:?}");
        }
        assert_eq!(parse_entry(b"1 \n\xff"), Err(NoticeError::NotUtf8));
    }

    #[test]
    fn notices() {
        assert_eq!(
            parse_notice(b"D 2 \n5 alice\n6 bob\nhi"),
            Ok(Notice::Deliver {
                event: None,
                data: "hi",
                targets: vec![(5, "alice"), (6, "bob")]
            })
        );
        assert_eq!(
            parse_notice(b"D 1 ev\n5 alice\n"),
            Ok(Notice::Deliver {
                event: Some("ev"),
                data: "",
                targets: vec![(5, "alice")]
            })
        );
        assert_eq!(parse_notice(b"X alice"), Ok(Notice::Dropped("alice")));
        assert_eq!(
            parse_notice(b"G room 100 chat alice,bob\nhi\nthere"),
            Ok(Notice::Group {
                group: "room",
                first: 100,
                event: Some("chat"),
                except: "alice,bob",
                data: "hi\nthere"
            })
        );
        assert_eq!(
            parse_notice(b"G room 100  -\n"),
            Ok(Notice::Group {
                group: "room",
                first: 100,
                event: None,
                except: "",
                data: ""
            })
        );
        assert!(excepts("alice,bob", "bob") && !excepts("alice,bob", "bo") && !excepts("", "x"));
        assert_eq!(
            parse_notice(b"J room carol 7 99"),
            Ok(Notice::Joined {
                group: "room",
                mailbox: "carol",
                slot: 7,
                after: 99
            })
        );
        assert_eq!(
            parse_notice(b"L room carol"),
            Ok(Notice::Left {
                group: "room",
                mailbox: "carol"
            })
        );
        for bad in [
            &b"D 3 \n5 alice\n"[..],
            b"D x \n",
            b"Y alice",
            b"D 1\n5 a\n",
            b"D 18446744073709551616 \n",
            b"G room x  -\n",
            b"G room 1 -\n",
            b"J room carol 7",
            b"J room carol 7 8 9",
            b"L room",
        ] {
            assert_eq!(parse_notice(bad), Err(NoticeError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn random_input_never_panics() {
        for input in crate::wire::random_inputs(7, b"DGJLX -,0123456789\nab\xff", 48, 2000) {
            let _ = parse_notice(&input);
            let _ = parse_entry(&input);
        }
    }
}
