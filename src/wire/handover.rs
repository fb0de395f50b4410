//! The handover snapshot: what a running mailboxd passes to the process
//! that replaces it (a binary upgrade), so that every listener and parked
//! connection carries on in the new process as if nothing happened.
//!
//! ```text
//! snapshot = magic:"MBXHAND" version:u8 crc:u32le length:u32le body
//! body     = taken_ms:u64 store listeners conns
//! store    = 0                        (memory, no state passed: empty)
//!          | 1 records:bytes          (memory: a journal snapshot, see [`super::journal`])
//!          | 2 lock_fd:i32            (a state directory: its LOCK descriptor)
//!          | 3 instance:str            (Redis: the state is there; the successor keeps the instance name)
//! listener = name:str fd:i32 path:bytes held:u8   (path: the Unix socket file to remove at exit, or empty;
//!                                                held: the service manager holds it too)
//! conn     = fd:i32 ino:u64 unix:u8 flags:u8 deadline:u64 out:bytes input:bytes session
//! session  = 0 skip:u32                                        control
//!          | 1 keep_alive:u8 exchange?                          HTTP
//!          | 2 done:u8 exchange?                                SCGI
//!          | 3 count:u16 (id:u16 keep_conn:u8 request)*         FastCGI
//!          | 4                                                  metrics
//! request  = 0 deadline:u64 params:bytes | 1 exchange
//! exchange?= 0 | 1 exchange
//! exchange = mailbox:str transport:u8 since:u64 deadline:u64
//! bytes    = length:u32le octets; str = length:u8 UTF-8; lists: count:u32le
//! ```
//!
//! Deadlines are wall-clock milliseconds since the Unix epoch (0: none).
//! `out` is the connection's unwritten output, verbatim: half a FastCGI
//! record or SSE event is finished by the new process exactly where the old
//! one stopped. `input` is what was read and not yet parsed. The version is
//! bumped whenever the layout changes; a process refuses a version it does
//! not know, and the upgrade is then rolled back.

use std::fmt;

use super::transport::Transport;

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 7] = b"MBXHAND";

/// The layout written by this build.
pub const VERSION: u8 = 1;

/// Bytes before the body: magic, version, CRC and length.
const HEADER: usize = 16;

/// Largest snapshot read back: 1 GiB covers the memory store's default
/// `--max-memory` plus 100,000 connections each holding a full output cap.
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// Connections in one snapshot: far above any descriptor limit.
const MAX_CONNS: u32 = 1 << 22;

/// How the store's state reaches the new process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// In memory, as journal records replayed by the new process (none:
    /// an empty store).
    Memory(Vec<u8>),
    /// On disk in the state directory; the new process inherits its lock.
    Journal {
        /// The descriptor holding the directory's lock.
        lock_fd: i32,
    },
    /// In Redis, which the new process connects to itself, as the same
    /// instance (its subscribers stay counted, its channel the same).
    Redis {
        /// The instance name.
        instance: String,
    },
}

impl Default for StoreState {
    fn default() -> StoreState {
        StoreState::Memory(Vec::new())
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRecord {
    /// Its kind, as named in `LISTEN_FDNAMES` (`http`, `fastcgi`, ...).
    pub name: String,
    /// The descriptor, inherited at this number.
    pub fd: i32,
    /// The Unix socket file the process removes when it stops (empty: not
    /// its own, e.g. passed by systemd).
    pub path: Vec<u8>,
    /// The service manager holds it too (socket activation): it need not
    /// be stored again on a restart.
    pub held: bool,
}

/// A request parked on a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// The mailbox.
    pub mailbox: String,
    /// SSE, long-poll or raw stream.
    pub transport: Transport,
    /// Streams: the id of the last message queued to the client; long-poll:
    /// the id it waits after.
    pub since: u64,
    /// The next heartbeat, or the end of a long-poll's hold.
    pub deadline_ms: u64,
}

/// One FastCGI request on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcgiRecord {
    /// Its `PARAMS` are still arriving.
    Params {
        /// The request id.
        id: u16,
        /// `FCGI_KEEP_CONN`.
        keep_conn: bool,
        /// The head deadline.
        deadline_ms: u64,
        /// Parameter bytes so far.
        params: Vec<u8>,
    },
    /// Parked on a mailbox.
    Active {
        /// The request id.
        id: u16,
        /// `FCGI_KEEP_CONN`.
        keep_conn: bool,
        /// The exchange.
        exchange: ExchangeRecord,
    },
}

/// What a connection speaks and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRecord {
    /// A backend on the control socket.
    Control {
        /// Payload bytes of an oversize request still to discard.
        skip: u32,
    },
    /// HTTP: reading a head, or parked.
    Http {
        /// Whether the current request allows another after it.
        keep_alive: bool,
        /// The parked request, if any.
        exchange: Option<ExchangeRecord>,
    },
    /// SCGI: reading its head, parked, or done and draining.
    Scgi {
        /// The response is complete.
        done: bool,
        /// The parked request, if any.
        exchange: Option<ExchangeRecord>,
    },
    /// FastCGI: any number of requests.
    Fcgi {
        /// Requests begun and not ended.
        requests: Vec<FcgiRecord>,
    },
    /// A `/metrics` request being read or answered.
    Metrics,
}

/// One accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    /// The descriptor, inherited at this number (a binary upgrade).
    pub fd: i32,
    /// The socket's inode: what identifies it whatever its descriptor
    /// number (systemd's file descriptor store renumbers them).
    pub ino: u64,
    /// A Unix socket (else TCP).
    pub unix: bool,
    /// Close once `out` is written.
    pub close_after_flush: bool,
    /// Input is left unread until `out` drains.
    pub paused: bool,
    /// The connection-level deadline (0: none).
    pub deadline_ms: u64,
    /// Unwritten output, verbatim.
    pub out: Vec<u8>,
    /// Input read and not yet parsed.
    pub input: Vec<u8>,
    /// The session.
    pub session: SessionRecord,
}

/// Everything the new process needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was taken (wall clock, ms).
    pub taken_ms: u64,
    /// The store's state.
    pub store: StoreState,
    /// Listening sockets.
    pub listeners: Vec<ListenerRecord>,
    /// Accepted connections.
    pub conns: Vec<ConnRecord>,
}

/// Why a snapshot cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot at all.
    NotASnapshot,
    /// A layout this build does not know.
    Version(u8),
    /// Cut short, damaged, or inconsistent.
    Corrupt(&'static str),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NotASnapshot => write!(f, "not a handover snapshot"),
            SnapshotError::Version(v) => write!(
                f,
                "handover snapshot version {v}, this build reads version {VERSION}"
            ),
            SnapshotError::Corrupt(what) => write!(f, "handover snapshot damaged: {what}"),
        }
    }
}

/// Encodes a snapshot.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + snapshot.conns.len() * 48);
    body.extend_from_slice(&snapshot.taken_ms.to_le_bytes());
    match &snapshot.store {
        StoreState::Memory(records) if records.is_empty() => body.push(0),
        StoreState::Memory(records) => {
            body.push(1);
            put_bytes(&mut body, records);
        }
        StoreState::Journal { lock_fd } => {
            body.push(2);
            body.extend_from_slice(&lock_fd.to_le_bytes());
        }
        StoreState::Redis { instance } => {
            body.push(3);
            put_str(&mut body, instance);
        }
    }
    body.extend_from_slice(&(snapshot.listeners.len() as u32).to_le_bytes());
    for l in &snapshot.listeners {
        put_str(&mut body, &l.name);
        body.extend_from_slice(&l.fd.to_le_bytes());
        put_bytes(&mut body, &l.path);
        body.push(u8::from(l.held));
    }
    body.extend_from_slice(&(snapshot.conns.len() as u32).to_le_bytes());
    for c in &snapshot.conns {
        body.extend_from_slice(&c.fd.to_le_bytes());
        body.extend_from_slice(&c.ino.to_le_bytes());
        body.push(u8::from(c.unix));
        body.push(u8::from(c.close_after_flush) | (u8::from(c.paused) << 1));
        body.extend_from_slice(&c.deadline_ms.to_le_bytes());
        put_bytes(&mut body, &c.out);
        put_bytes(&mut body, &c.input);
        match &c.session {
            SessionRecord::Control { skip } => {
                body.push(0);
                body.extend_from_slice(&skip.to_le_bytes());
            }
            SessionRecord::Http {
                keep_alive,
                exchange,
            } => {
                body.push(1);
                body.push(u8::from(*keep_alive));
                put_opt_exchange(&mut body, exchange.as_ref());
            }
            SessionRecord::Scgi { done, exchange } => {
                body.push(2);
                body.push(u8::from(*done));
                put_opt_exchange(&mut body, exchange.as_ref());
            }
            SessionRecord::Fcgi { requests } => {
                body.push(3);
                body.extend_from_slice(&(requests.len() as u16).to_le_bytes());
                for r in requests {
                    match r {
                        FcgiRecord::Params {
                            id,
                            keep_conn,
                            deadline_ms,
                            params,
                        } => {
                            body.extend_from_slice(&id.to_le_bytes());
                            body.push(u8::from(*keep_conn));
                            body.push(0);
                            body.extend_from_slice(&deadline_ms.to_le_bytes());
                            put_bytes(&mut body, params);
                        }
                        FcgiRecord::Active {
                            id,
                            keep_conn,
                            exchange,
                        } => {
                            body.extend_from_slice(&id.to_le_bytes());
                            body.push(u8::from(*keep_conn));
                            body.push(1);
                            put_exchange(&mut body, exchange);
                        }
                    }
                }
            }
            SessionRecord::Metrics => body.push(4),
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a whole snapshot; anything short, damaged or of another version
/// is an error.
pub fn decode(buf: &[u8]) -> Result<Snapshot, SnapshotError> {
    if buf.len() < HEADER || &buf[..7] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if buf[7] != VERSION {
        return Err(SnapshotError::Version(buf[7]));
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
    let body = &buf[HEADER..];
    if body.len() != len {
        return Err(SnapshotError::Corrupt("length does not match"));
    }
    if crc32fast::hash(body) != crc {
        return Err(SnapshotError::Corrupt("checksum does not match"));
    }
    let mut r = Reader { buf: body, at: 0 };
    let taken_ms = r.u64()?;
    let store = match r.u8()? {
        0 => StoreState::Memory(Vec::new()),
        1 => StoreState::Memory(r.bytes()?.to_vec()),
        2 => StoreState::Journal { lock_fd: r.i32()? },
        3 => StoreState::Redis {
            instance: r.str()?.to_string(),
        },
        _ => return Err(SnapshotError::Corrupt("unknown store kind")),
    };
    let count = r.count()?;
    let mut listeners = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        listeners.push(ListenerRecord {
            name: r.str()?.to_string(),
            fd: r.i32()?,
            path: r.bytes()?.to_vec(),
            held: r.flag()?,
        });
    }
    let count = r.count()?;
    let mut conns = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let fd = r.i32()?;
        let ino = r.u64()?;
        let unix = r.flag()?;
        let flags = r.u8()?;
        if flags > 3 {
            return Err(SnapshotError::Corrupt("unknown connection flags"));
        }
        let deadline_ms = r.u64()?;
        let out = r.bytes()?.to_vec();
        let input = r.bytes()?.to_vec();
        let session = match r.u8()? {
            0 => SessionRecord::Control { skip: r.u32()? },
            1 => SessionRecord::Http {
                keep_alive: r.flag()?,
                exchange: r.opt_exchange()?,
            },
            2 => SessionRecord::Scgi {
                done: r.flag()?,
                exchange: r.opt_exchange()?,
            },
            3 => {
                let n = r.u16()?;
                let mut requests = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    let id = r.u16()?;
                    let keep_conn = r.flag()?;
                    requests.push(match r.u8()? {
                        0 => FcgiRecord::Params {
                            id,
                            keep_conn,
                            deadline_ms: r.u64()?,
                            params: r.bytes()?.to_vec(),
                        },
                        1 => FcgiRecord::Active {
                            id,
                            keep_conn,
                            exchange: r.exchange()?,
                        },
                        _ => return Err(SnapshotError::Corrupt("unknown FastCGI request phase")),
                    });
                }
                SessionRecord::Fcgi { requests }
            }
            4 => SessionRecord::Metrics,
            _ => return Err(SnapshotError::Corrupt("unknown session kind")),
        };
        conns.push(ConnRecord {
            fd,
            ino,
            unix,
            close_after_flush: flags & 1 != 0,
            paused: flags & 2 != 0,
            deadline_ms,
            out,
            input,
            session,
        });
    }
    if r.at != body.len() {
        return Err(SnapshotError::Corrupt("bytes after the last connection"));
    }
    Ok(Snapshot {
        taken_ms,
        store,
        listeners,
        conns,
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= u8::MAX as usize, "names are at most 255 bytes");
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn put_exchange(out: &mut Vec<u8>, ex: &ExchangeRecord) {
    put_str(out, &ex.mailbox);
    out.push(match ex.transport {
        Transport::Sse => 0,
        Transport::Poll => 1,
        Transport::Stream => 2,
    });
    out.extend_from_slice(&ex.since.to_le_bytes());
    out.extend_from_slice(&ex.deadline_ms.to_le_bytes());
}

fn put_opt_exchange(out: &mut Vec<u8>, ex: Option<&ExchangeRecord>) {
    match ex {
        None => out.push(0),
        Some(ex) => {
            out.push(1);
            put_exchange(out, ex);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(SnapshotError::Corrupt("a field runs past the end"))?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(SnapshotError::Corrupt("a flag is neither 0 nor 1")),
        }
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn count(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u32()?;
        if n > MAX_CONNS {
            return Err(SnapshotError::Corrupt("implausible count"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| SnapshotError::Corrupt("text not UTF-8"))
    }

    fn exchange(&mut self) -> Result<ExchangeRecord, SnapshotError> {
        let mailbox = self.str()?.to_string();
        if !crate::name::is_valid(&mailbox) {
            return Err(SnapshotError::Corrupt("invalid mailbox name"));
        }
        let transport = match self.u8()? {
            0 => Transport::Sse,
            1 => Transport::Poll,
            2 => Transport::Stream,
            _ => return Err(SnapshotError::Corrupt("unknown transport")),
        };
        Ok(ExchangeRecord {
            mailbox,
            transport,
            since: self.u64()?,
            deadline_ms: self.u64()?,
        })
    }

    fn opt_exchange(&mut self) -> Result<Option<ExchangeRecord>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.exchange().map(Some),
            _ => Err(SnapshotError::Corrupt("a flag is neither 0 nor 1")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let ex = |mailbox: &str, transport| ExchangeRecord {
            mailbox: mailbox.into(),
            transport,
            since: 1_795_000_000_000_123,
            deadline_ms: 1_795_000_000_456,
        };
        Snapshot {
            taken_ms: 1_795_000_000_000,
            store: StoreState::Memory(b"\x01\x02records".to_vec()),
            listeners: vec![
                ListenerRecord {
                    name: "control".into(),
                    fd: 4,
                    path: b"/run/mailboxd/control.sock".to_vec(),
                    held: false,
                },
                ListenerRecord {
                    name: "http".into(),
                    fd: 5,
                    path: Vec::new(),
                    held: true,
                },
            ],
            conns: vec![
                ConnRecord {
                    fd: 9,
                    ino: 1001,
                    unix: true,
                    close_after_flush: false,
                    paused: true,
                    deadline_ms: 0,
                    out: b"OK 1 1\r\n".to_vec(),
                    input: b"SEND ali".to_vec(),
                    session: SessionRecord::Control { skip: 7 },
                },
                ConnRecord {
                    fd: 10,
                    ino: 1002,
                    unix: false,
                    close_after_flush: false,
                    paused: false,
                    deadline_ms: 0,
                    out: b"id: 5\ndata: half an ev".to_vec(),
                    input: Vec::new(),
                    session: SessionRecord::Http {
                        keep_alive: true,
                        exchange: Some(ex("alice", Transport::Sse)),
                    },
                },
                ConnRecord {
                    fd: 11,
                    ino: 1003,
                    unix: false,
                    close_after_flush: true,
                    paused: false,
                    deadline_ms: 1_795_000_010_000,
                    out: Vec::new(),
                    input: b"GET / HT".to_vec(),
                    session: SessionRecord::Http {
                        keep_alive: false,
                        exchange: None,
                    },
                },
                ConnRecord {
                    fd: 12,
                    ino: 1004,
                    unix: true,
                    close_after_flush: false,
                    paused: false,
                    deadline_ms: 0,
                    out: vec![1, 6, 0, 1, 0, 3],
                    input: vec![1, 4],
                    session: SessionRecord::Fcgi {
                        requests: vec![
                            FcgiRecord::Active {
                                id: 1,
                                keep_conn: true,
                                exchange: ex("bob", Transport::Poll),
                            },
                            FcgiRecord::Params {
                                id: 2,
                                keep_conn: false,
                                deadline_ms: 1_795_000_009_000,
                                params: vec![0x0b, 0x02],
                            },
                        ],
                    },
                },
                ConnRecord {
                    fd: 13,
                    ino: 1005,
                    unix: false,
                    close_after_flush: false,
                    paused: false,
                    deadline_ms: 0,
                    out: Vec::new(),
                    input: Vec::new(),
                    session: SessionRecord::Scgi {
                        done: false,
                        exchange: Some(ex("carol", Transport::Stream)),
                    },
                },
                ConnRecord {
                    fd: 14,
                    ino: 1006,
                    unix: false,
                    close_after_flush: false,
                    paused: false,
                    deadline_ms: 5,
                    out: Vec::new(),
                    input: b"GET /met".to_vec(),
                    session: SessionRecord::Metrics,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        for store in [
            StoreState::Memory(Vec::new()),
            StoreState::Journal { lock_fd: 3 },
            StoreState::Redis {
                instance: "0123456789abcdef".into(),
            },
        ] {
            let s = Snapshot { store, ..sample() };
            assert_eq!(decode(&encode(&s)).unwrap(), s);
        }
    }

    #[test]
    fn refuses_other_versions_and_foreign_bytes() {
        let mut bytes = encode(&sample());
        assert_eq!(decode(b"hello"), Err(SnapshotError::NotASnapshot));
        assert_eq!(decode(&bytes[1..]), Err(SnapshotError::NotASnapshot));
        bytes[7] = VERSION + 1;
        assert_eq!(decode(&bytes), Err(SnapshotError::Version(VERSION + 1)));
        assert!(SnapshotError::Version(2).to_string().contains("version 2"));
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_an_error() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in HEADER..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flip at {i}");
        }
    }

    /// A body with a correct checksum but nonsense inside (as a newer or
    /// hostile writer could produce) is refused, never a panic.
    #[test]
    fn nonsense_with_a_valid_checksum_is_refused_not_a_panic() {
        for body in crate::wire::random_inputs(7, &[0, 1, 2, 3, 4, 255], 200, 3000) {
            let mut buf = MAGIC.to_vec();
            buf.push(VERSION);
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&body);
            let _ = decode(&buf);
        }
    }
}
