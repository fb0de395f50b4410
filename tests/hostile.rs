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
    eprintln!("pipelined unread polls, 8 connections, 3 s: RSS +{grown} KiB");
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

#[test]
fn a_length_too_large_to_skip_closes_instead_of_swallowing_commands() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    ctl.write(b"SEND x 9223372036854775808\nPING\n");
    let reply = ctl.line();
    assert!(
        reply.starts_with("ERR TOOBIG") && reply.contains("closing"),
        "{reply}"
    );
    assert_eq!(ctl.read_to_end(), "", "nothing after it is executed");
    // Lengths that can be skipped still are, and the connection goes on.
    let mut ctl = srv.ctl();
    ctl.write(b"SEND x 70000\n");
    ctl.write(&vec![b'a'; 70001]);
    assert!(ctl.line().starts_with("ERR TOOBIG"));
    assert_eq!(ctl.cmd("PING"), "PONG");
}

#[test]
fn idle_control_connections_never_lock_out_a_backend() {
    let srv = Mailboxd::start(&[]);
    let mut witness = Witness::open(&srv, "witness");
    let before = rss_kib(&srv);
    let mut idle: Vec<std::os::unix::net::UnixStream> = Vec::new();
    for _ in 0..1500 {
        idle.push(std::os::unix::net::UnixStream::connect(&srv.control).unwrap());
    }
    let mut backend = srv.ctl();
    assert_eq!(backend.cmd("PING"), "PONG");
    let stats = backend.cmd("STATS");
    let evicted = field(&stats, "control_evicted").unwrap();
    // Short-lived control connections of the harness may still count.
    assert!(evicted >= 1500 + 1 - 256 - 2, "{stats}");
    assert!(stats.contains(" refused=0"), "{stats}");
    witness.check(&mut backend, "witness");
    let grown = rss_kib(&srv).saturating_sub(before);
    eprintln!("1,500 idle control connections: RSS +{grown} KiB");
}

#[test]
fn mailboxctl_gives_up_on_a_server_that_never_answers() {
    let dir = TempDir::new("mute");
    let path = dir.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(bin("mailboxctl"))
        .args(["-s", path.to_str().unwrap(), "--timeout", "1", "ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply within"));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

#[test]
fn descriptor_exhaustion_spares_the_control_socket_and_recovers() {
    let srv = Mailboxd::start(&[]);
    let pid = srv.child.id().to_string();
    let mut witness = Witness::open(&srv, "witness");
    // Leave room for only a few dozen client descriptors.
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=48:48"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let clients: Vec<TcpStream> = (0..80)
        .map(|i| request(srv.port, &format!("/comet/crowd{i}"), &[]))
        .collect();
    let mut ctl = wait_for(Duration::from_secs(15), || {
        let mut ctl = srv.ctl();
        (ctl.cmd("PING") == "PONG").then_some(ctl)
    });
    let accept_errors = |ctl: &mut Ctl| field(&ctl.cmd("STATS"), "accept_errors").unwrap();
    wait_for(Duration::from_secs(15), || {
        (accept_errors(&mut ctl) > 0).then_some(())
    });
    witness.check(&mut ctl, "witness");
    // The witness is one of the subscribers.
    let parked = |ctl: &mut Ctl| field(&ctl.cmd("STATS"), "subscribers").unwrap() - 1;
    let accepted = |ctl: &mut Ctl| field(&ctl.cmd("STATS"), "accepted").unwrap();
    let before = (parked(&mut ctl), accepted(&mut ctl));
    assert!(before.0 < 80, "{before:?}");
    // Closing 30 clients frees descriptors: queued ones get in and park.
    let mut clients = clients;
    let still_open = clients.split_off(30);
    drop(clients);
    let after = wait_for(Duration::from_secs(15), || {
        let now = (parked(&mut ctl), accepted(&mut ctl));
        (now.1 >= before.1 + 10 && now.0 >= 10).then_some(now)
    });
    eprintln!("parked/accepted before {before:?}, after {after:?}");
    drop(still_open);
    assert!(srv.log().matches("accept on http listener failed").count() <= 2);
}

#[test]
fn clients_cannot_fill_the_mailbox_table() {
    let srv = Mailboxd::start(&["--max-mailboxes", "1000", "--max-connections", "2000"]);
    let mut ctl = srv.ctl();
    let mut witness = Witness::open(&srv, "witness");
    let before = rss_kib(&srv);
    // Fresh names answered at once (a gap from before the start) leave nothing.
    let mut flood = Vec::new();
    for i in 0..5000 {
        flood.extend_from_slice(
            format!("GET /comet/f{i}?transport=poll&since=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        );
    }
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let reader = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += String::from_utf8_lossy(&buf[..k])
                    .matches("\"gap\":true")
                    .count();
                if n >= 5000 {
                    break;
                }
            }
            n
        })
    };
    s.write_all(&flood).unwrap();
    assert_eq!(reader.join().unwrap(), 5000);
    let stats = ctl.cmd("STATS");
    assert!(
        stats.contains(" mailboxes=1 "),
        "only the witness's: {stats}"
    );
    witness.check(&mut ctl, "witness");
    // Clients parked on 950 names: those past 90% of the table get 503...
    let parked: Vec<TcpStream> = (0..950)
        .map(|i| request(srv.port, &format!("/comet/p{i}"), &[]))
        .collect();
    wait_for(Duration::from_secs(10), || {
        ctl.cmd("STATS").contains(" mailboxes=900 ").then_some(())
    });
    witness.check(&mut ctl, "witness");
    let grown = rss_kib(&srv).saturating_sub(before);
    eprintln!("5,000 fresh names polled, then 950 parked: RSS +{grown} KiB");
    // ...and backends can still create mailboxes.
    for i in 0..100 {
        assert!(ctl.cmd(&format!("SEND b{i} 1\nx")).starts_with("OK "));
    }
    assert!(ctl.cmd("SEND b100 1\nx").starts_with("ERR FULL"));
    drop(parked);
}

#[test]
fn retained_messages_stay_within_max_memory_whatever_their_encodings() {
    let srv = Mailboxd::start(&[
        "--max-memory",
        "33554432",
        "--retain-bytes",
        "8388608",
        "--retain",
        "1000",
    ]);
    let mut ctl = srv.ctl();
    let before = rss_kib(&srv);
    // Subscribers make every payload's SSE encoding exist; 100 MiB in all.
    let readers: Vec<_> = (0..20)
        .map(|i| {
            let mut s = request(srv.port, &format!("/comet/r{i}"), &[]);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            })
        })
        .collect();
    srv.wait_info("r19", |r| r.contains("subscribers=1"));
    let payload = "p".repeat(60_000);
    for round in 0..90 {
        let mut batch = Vec::new();
        for i in 0..20 {
            batch.extend_from_slice(format!("SEND r{i} {}\n{payload}\n", payload.len()).as_bytes());
        }
        ctl.write(&batch);
        for _ in 0..20 {
            assert!(ctl.line().starts_with("OK "), "round {round}");
        }
    }
    let stats = ctl.cmd("STATS");
    let retained_bytes = field(&stats, "retained_bytes").unwrap();
    assert!(retained_bytes <= 32 << 20, "{stats}");
    assert!(stats.contains(" evicted="), "{stats}");
    let grown = rss_kib(&srv).saturating_sub(before);
    // 32 MiB of retention plus allocator slack and queued output; 100 MiB
    // of payload went through.
    eprintln!(
        "100 MiB of payload through 20 subscribed mailboxes, --max-memory 32 MiB: RSS +{grown} KiB, {retained_bytes} retained bytes"
    );
    assert!(grown < 80 * 1024, "RSS grew by {grown} KiB; {stats}");
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn retain_bytes_counts_what_a_message_costs_in_memory() {
    let srv = Mailboxd::start(&["--retain-bytes", "200000", "--retain", "1000"]);
    let mut ctl = srv.ctl();
    // 20 KB of text costs three times that with its SSE and JSON
    // encodings: 200,000 bytes hold three of them, not ten.
    for _ in 0..10 {
        ctl.send("costly", &"t".repeat(20_000));
    }
    let info = ctl.cmd("INFO costly");
    assert!(info.contains("retained=3 "), "{info}");
}

#[test]
fn pipelined_polls_behind_a_held_one_are_read_once_it_is_answered() {
    let srv = Mailboxd::start(&[]);
    let one = b"GET /comet/later?transport=poll HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    // The first is held (nothing retained); more than a read buffer follows it.
    s.write_all(&one.repeat(200)).unwrap();
    srv.wait_info("later", |r| r.contains("subscribers=1"));
    srv.ctl().send("later", "now");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let count = |b: &[u8]| String::from_utf8_lossy(b).matches("HTTP/1.1 200").count();
    while count(&got) < 200 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(count(&got), 200);
}

#[test]
fn unfinished_heads_together_stay_within_their_total_cap() {
    let srv = Mailboxd::start(&["--max-connections", "12000", "--request-timeout", "60"]);
    let mut ctl = srv.ctl();
    let mut witness = Witness::open(&srv, "witness");
    let before = rss_kib(&srv);
    // 9,500 clients each stop 7,500 bytes into a head: 71 MB if all were kept.
    let partial = format!("GET /comet/x HTTP/1.1\r\nX-Pad: {}", "p".repeat(7_470));
    assert_eq!(partial.len(), 7_500);
    let mut slow = Vec::new();
    for _ in 0..9_500 {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.write_all(partial.as_bytes()).unwrap();
        slow.push(s);
    }
    // Once every head is read, the count stops moving below the total.
    let mut last = u64::MAX;
    let left = wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        let stats = ctl.cmd("STATS");
        let open = field(&stats, "connections").unwrap();
        let settled = field(&stats, "accepted").unwrap() >= 9_501 && open == last && open < 9_400;
        last = open;
        settled.then_some(open)
    });
    // The witness holds no head bytes.
    assert!((left - 1) * 7_500 <= 64 << 20, "{left} connections kept");
    witness.check(&mut ctl, "witness");
    let grown = rss_kib(&srv).saturating_sub(before);
    eprintln!("9,500 unfinished 7.5 KB heads: {left} kept, RSS +{grown} KiB");
    assert!(srv.log().contains("unfinished requests hold"));
    drop(slow);
}

#[test]
fn every_gateway_phase_has_a_deadline() {
    let srv = Mailboxd::start_raw(&[
        "--http",
        "127.0.0.1:0",
        "--scgi",
        "127.0.0.1:0",
        "--fastcgi",
        "127.0.0.1:0",
        "--request-timeout",
        "0.5",
    ]);
    let closed_within = |mut s: TcpStream, what: &str| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let end = s.read(&mut [0u8; 64]);
        // Closed (end of stream, or a reset for unread input), not timed out here.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: still open ({end:?})"
        );
        assert!(!matches!(end, Ok(n) if n > 0), "{what}: {end:?}");
    };
    // An SCGI head that never completes.
    let mut scgi = TcpStream::connect(srv.addr("scgi")).unwrap();
    scgi.write_all(b"70:CONTENT_LENGTH\x000\x00").unwrap();
    closed_within(scgi, "scgi head");
    // A FastCGI connection on which no request ever begins.
    closed_within(
        TcpStream::connect(srv.addr("fastcgi")).unwrap(),
        "fastcgi idle",
    );
    // An HTTP keep-alive connection after its answer, with no next request.
    srv.ctl().send("kept", "x");
    let mut http = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    http.write_all(b"GET /comet/kept?transport=poll HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 4096];
    assert!(http.read(&mut answer).unwrap() > 0);
    closed_within(http, "http keep-alive");
}

#[test]
fn max_connections_is_clamped_to_the_descriptor_limit() {
    let dir = TempDir::new("clamp");
    let control = dir.path().join("control.sock");
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=1000:1000")
        .arg(bin("mailboxd"))
        .arg("--control")
        .arg(&control)
        .args(["--http", "127.0.0.1:0", "--max-connections", "10000"]);
    let srv = Mailboxd::spawn(cmd, dir, control, 2);
    assert!(
        srv.log()
            .contains("max-connections lowered from 10000 to 680"),
        "{}",
        srv.log()
    );
    assert_eq!(srv.ctl().cmd("PING"), "PONG");
}
