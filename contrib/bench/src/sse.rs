//! Non-blocking SSE subscribers on one mio poll: connect in waves, read
//! response heads (plain or chunked), then parse events and check sequences.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::now_ns;

/// Which server the subscribers talk to (both speak SSE; only URLs differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// mailboxd, directly or through a web server.
    Mailboxd,
    /// nginx with the Nchan module.
    Nchan,
}

impl Target {
    pub fn parse(s: &str) -> Target {
        match s {
            "mailboxd" => Target::Mailboxd,
            "nchan" => Target::Nchan,
            _ => panic!("--target must be mailboxd or nchan"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunking {
    Off,
    Size,
    Data(usize),
    Crlf(usize),
}

/// One subscriber connection.
pub struct Conn {
    stream: Option<TcpStream>,
    request: Vec<u8>,
    written: usize,
    head_done: bool,
    chunking: Chunking,
    raw: Vec<u8>,
    body: Vec<u8>,
    last_seq: u64,
    count: usize,
}

impl Conn {
    pub fn is_open(&self) -> bool {
        self.stream.is_some() && self.head_done
    }
}

/// What a set of subscribers saw.
#[derive(Default)]
pub struct Stats {
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub closed: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub seq_max_us: HashMap<u64, u64>,
    pub latencies_us: Vec<u32>,
}

/// Subscribers plus the poll they are registered with.
pub struct Pool {
    poll: Poll,
    conns: Vec<Conn>,
}

impl Pool {
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.conns.iter()
    }

    pub fn clear(&mut self) {
        self.conns.clear();
    }
}

/// Opens one subscriber per path; returns once every head arrived, failed, or `timeout` passed.
pub fn connect_all(addr: SocketAddr, paths: &[String], target: Target, timeout: Duration) -> Pool {
    let _ = target;
    let poll = Poll::new().unwrap();
    let mut pool = Pool {
        poll,
        conns: Vec::with_capacity(paths.len()),
    };
    let start = Instant::now();
    let wave = 256;
    let mut opened = 0;
    let mut settled = 0;
    let mut events = Events::with_capacity(4096);
    while settled < paths.len() && start.elapsed() < timeout {
        while opened < paths.len() && opened - settled < wave {
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
                paths[opened]
            )
            .into_bytes();
            let mut conn = Conn {
                stream: None,
                request,
                written: 0,
                head_done: false,
                chunking: Chunking::Off,
                raw: Vec::new(),
                body: Vec::new(),
                last_seq: 0,
                count: 0,
            };
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    let _ = s.set_nodelay(true);
                    pool.poll
                        .registry()
                        .register(
                            &mut s,
                            Token(opened),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .unwrap();
                    conn.stream = Some(s);
                }
                Err(_) => settled += 1,
            }
            pool.conns.push(conn);
            opened += 1;
        }
        pool.poll
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let conn = &mut pool.conns[i];
            if conn.head_done || conn.stream.is_none() {
                continue;
            }
            let stream = conn.stream.as_mut().unwrap();
            if conn.written < conn.request.len() {
                match stream.write(&conn.request[conn.written..]) {
                    Ok(n) => conn.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(_) => {
                        conn.stream = None;
                        settled += 1;
                        continue;
                    }
                }
            }
            match read_some(conn) {
                Ok(()) => {}
                Err(()) => {
                    conn.stream = None;
                    settled += 1;
                    continue;
                }
            }
            if let Some(end) = conn.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&conn.raw[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
                    conn.stream = None;
                } else {
                    conn.head_done = true;
                    if head.contains("transfer-encoding: chunked") {
                        conn.chunking = Chunking::Size;
                    }
                    conn.raw.drain(..end + 4);
                }
                settled += 1;
            }
        }
    }
    for conn in pool.conns.iter_mut() {
        conn.request = Vec::new();
        if !conn.head_done {
            conn.stream = None;
        }
    }
    pool
}

/// Reads what is available into `conn.raw`; `Err` on EOF or error.
fn read_some(conn: &mut Conn) -> Result<(), ()> {
    let Some(stream) = conn.stream.as_mut() else {
        return Err(());
    };
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => conn.raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Moves decoded body bytes from `raw` to `body`.
fn dechunk(conn: &mut Conn) {
    if conn.chunking == Chunking::Off {
        conn.body.append(&mut conn.raw);
        return;
    }
    let mut at = 0;
    loop {
        match conn.chunking {
            Chunking::Off => unreachable!(),
            Chunking::Size => {
                let Some(nl) = conn.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let line = std::str::from_utf8(&conn.raw[at..at + nl]).unwrap_or("0");
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("0").trim(), 16)
                    .unwrap_or(0);
                at += nl + 2;
                conn.chunking = Chunking::Data(size);
            }
            Chunking::Data(left) => {
                let take = left.min(conn.raw.len() - at);
                conn.body.extend_from_slice(&conn.raw[at..at + take]);
                at += take;
                if take < left {
                    conn.chunking = Chunking::Data(left - take);
                    break;
                }
                conn.chunking = Chunking::Crlf(2);
            }
            Chunking::Crlf(left) => {
                let take = left.min(conn.raw.len() - at);
                at += take;
                if take < left {
                    conn.chunking = Chunking::Crlf(left - take);
                    break;
                }
                conn.chunking = Chunking::Size;
            }
        }
    }
    conn.raw.drain(..at);
}

/// Parses complete events in `conn.body`, recording sequence and latency.
fn parse_events(conn: &mut Conn, stats: &mut Stats, now: u64) {
    let mut at = 0;
    while let Some(end) = conn.body[at..].windows(2).position(|w| w == b"\n\n") {
        let block = &conn.body[at..at + end];
        at += end + 2;
        let Some(data) = block
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"data: "))
        else {
            continue;
        };
        let mut fields = data.split(|&b| b == b' ');
        let (Some(seq), Some(ts)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Some(seq), Some(ts)) = (parse_u64(seq), parse_u64(ts)) else {
            continue;
        };
        let latency_us = now.saturating_sub(ts) / 1000;
        stats.received += 1;
        conn.count += 1;
        stats
            .latencies_us
            .push(latency_us.min(u32::MAX as u64) as u32);
        let e = stats.seq_max_us.entry(seq).or_default();
        *e = (*e).max(latency_us);
        if stats.first_ns == 0 {
            stats.first_ns = now;
        }
        stats.last_ns = now;
        if seq == conn.last_seq {
            stats.duplicates += 1;
        } else if seq < conn.last_seq {
            stats.reordered += 1;
        } else {
            stats.lost += seq - conn.last_seq - 1;
            conn.last_seq = seq;
        }
    }
    conn.body.drain(..at);
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Reads events until every open connection has `expect` of them, or `timeout`.
pub fn receive_until(pool: &mut Pool, expect: usize, timeout: Duration) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let mut events = Events::with_capacity(4096);
    let mut pending = pool.conns.iter().filter(|c| c.is_open()).count();
    // Bytes that arrived with the head.
    for conn in pool.conns.iter_mut().filter(|c| c.is_open()) {
        dechunk(conn);
        parse_events(conn, &mut stats, now_ns());
        if conn.count >= expect {
            pending -= 1;
        }
    }
    while pending > 0 && start.elapsed() < timeout {
        pool.poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        let now = now_ns();
        for ev in events.iter() {
            let conn = &mut pool.conns[ev.token().0];
            if !conn.is_open() || conn.count >= expect {
                continue;
            }
            let result = read_some(conn);
            dechunk(conn);
            parse_events(conn, &mut stats, now);
            if conn.count >= expect {
                pending -= 1;
            } else if result.is_err() {
                stats.closed += 1;
                conn.stream = None;
                pending -= 1;
            }
        }
    }
    stats
}
