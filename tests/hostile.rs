//! Hostile clients and backends: each test reproduces one attack against the
//! real binary and checks that it is bounded, while a well-behaved
//! subscriber keeps receiving within a second.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The server's resident memory in KiB.
fn rss_kib(srv: &Mailboxd) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A subscriber that must keep getting messages within a second while an
/// attack runs: one `SEND`, one event, timed.
struct Witness {
    stream: HttpStream,
}

impl Witness {
    fn open(srv: &Mailboxd, mailbox: &str) -> Witness {
        let stream = HttpStream::open(srv.port, &format!("/comet/{mailbox}"), &[]);
        srv.wait_info(mailbox, |r| r.contains("subscribers=1"));
        Witness { stream }
    }

    fn check(&mut self, ctl: &mut Ctl, mailbox: &str) {
        let sent = Instant::now();
        let (id, live) = ctl.send(mailbox, "still here");
        assert_eq!(live, 1, "the witness is still subscribed");
        let event = self.stream.next_event();
        assert_eq!(event.id, Some(id));
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "delivery took {:?}",
            sent.elapsed()
        );
    }
}

#[test]
fn pipelined_long_polls_that_are_never_read_stay_bounded() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    for i in 0..20 {
        ctl.send("loaded", &format!("{i:0>1000}"));
    }
    let mut witness = Witness::open(&srv, "witness");
    let before = rss_kib(&srv);
    let request = b"GET /comet/loaded?transport=poll HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    let stop = Instant::now() + Duration::from_secs(3);
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let port = srv.port;
            let request = request.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut written = 0usize;
                while Instant::now() < stop {
                    match s.write(&request) {
                        Ok(n) => written += n,
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                written
            })
        })
        .collect();
    while Instant::now() < stop {
        witness.check(&mut ctl, "witness");
        std::thread::sleep(Duration::from_millis(200));
    }
    for a in attackers {
        a.join().unwrap();
    }
    let grown = rss_kib(&srv).saturating_sub(before);
    // Each connection holds at most 64 KiB of answers plus one answer and
    // its read buffer: a few MiB for eight, where unbounded growth was
    // about 1 GB in this time.
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    witness.check(&mut ctl, "witness");
}

#[test]
fn two_hundred_pipelined_polls_in_one_write_are_all_answered() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    ctl.send("many", "x");
    let one = b"GET /comet/many?transport=poll HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(&one.repeat(200)).unwrap();
    assert!(one.len() * 200 > 8 * 1024, "more than one read buffer");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |b: &[u8]| String::from_utf8_lossy(b).matches("HTTP/1.1 200").count();
    while count(&got) < 200 && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(count(&got), 200);
}

#[test]
fn refused_connections_log_one_line_per_interval() {
    let srv = Mailboxd::start(&["--max-connections", "4"]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| request(srv.port, "/comet/held", &[]))
        .collect();
    srv.wait_info("held", |r| r.contains("subscribers=4"));
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        let _ = s.read(&mut [0u8; 256]);
    }
    let stats = srv.ctl().cmd("STATS");
    assert!(stats.contains("refused=300"), "{stats}");
    let lines = srv.log().matches("connection refused").count();
    assert_eq!(lines, 1, "{}", srv.log());
    drop(held);
}
