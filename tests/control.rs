//! The control socket: pipelining, groups, expiry, and every kind of bad input.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

#[test]
fn ten_thousand_pipelined_sends_are_answered_in_order() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let mut batch = Vec::new();
    for i in 0..10_000 {
        let data = format!("message {i}");
        batch.extend_from_slice(format!("SEND m{} {}\n{data}\n", i % 100, data.len()).as_bytes());
    }
    let mut writer = ctl.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    let mut last = 0;
    for i in 0..10_000 {
        let (id, live) = parse_ok2(&ctl.line());
        assert!(id > last, "reply {i}: id {id} not above {last}");
        assert_eq!(live, 0);
        last = id;
    }
    sender.join().unwrap();
    assert_eq!(ctl.cmd("PING"), "PONG");
    let stats = ctl.cmd("STATS");
    assert!(
        stats.contains("mailboxes=100") && stats.contains("delivered=10000"),
        "{stats}"
    );
}

#[test]
fn join_leave_members() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    assert_eq!(ctl.cmd("MEMBERS g"), "OK 0");
    assert_eq!(ctl.cmd("JOIN g a b c"), "OK 3");
    assert_eq!(ctl.cmd("JOIN g c d"), "OK 4");
    let reply = ctl.cmd("MEMBERS g");
    let mut names: Vec<&str> = reply.split(' ').skip(2).collect();
    names.sort();
    assert!(reply.starts_with("OK 4 "));
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert_eq!(ctl.cmd("LEAVE g a zz"), "OK 3");
    assert_eq!(ctl.cmd("LEAVE g b c d"), "OK 0");
    assert_eq!(ctl.cmd("MEMBERS g"), "OK 0");
    assert_eq!(ctl.cmd("LEAVE nosuch a"), "OK 0");
    assert!(ctl.cmd("INFO a").contains("groups=0"));
    assert_eq!(ctl.cmd("JOIN g a"), "OK 1");
    assert!(ctl.cmd("INFO a").contains("groups=1"));
}

#[test]
fn idle_mailboxes_expire_and_leave_their_groups() {
    let srv = Mailboxd::start(&["--mailbox-ttl", "0.5"]);
    let mut ctl = srv.ctl();
    assert_eq!(ctl.cmd("JOIN g gone kept"), "OK 2");
    ctl.send("gone", "will be dropped");
    let mut sse = HttpStream::open(srv.port, "/comet/kept", &[]);
    srv.wait_info("kept", |r| r.contains("subscribers=1"));
    wait_for(Duration::from_secs(5), || {
        ctl.cmd("INFO gone")
            .starts_with("ERR NOTFOUND")
            .then_some(())
    });
    assert_eq!(ctl.cmd("MEMBERS g"), "OK 1 kept");
    assert!(ctl.cmd("STATS").contains("expired=1"));
    // The subscribed mailbox lives on, then expires once its client leaves.
    let (id, _) = ctl.send("kept", "still here");
    assert_eq!(sse.next_event().id, Some(id));
    drop(sse);
    wait_for(Duration::from_secs(5), || {
        ctl.cmd("INFO kept")
            .starts_with("ERR NOTFOUND")
            .then_some(())
    });
    assert_eq!(ctl.cmd("MEMBERS g"), "OK 0");
    assert!(ctl.cmd("STATS").contains("groups=0"));
}

#[test]
fn info_and_stats_fields() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let (id, _) = ctl.send("ivy", "x");
    assert_eq!(
        ctl.cmd("INFO ivy"),
        format!("OK subscribers=0 retained=1 last_id={id} groups=0 idle=0")
    );
    let stats = ctl.cmd("STATS");
    for field in [
        "connections=",
        "subscribers=",
        "mailboxes=1",
        "groups=0",
        "delivered=1",
        "written=0",
        "uptime=",
    ] {
        assert!(stats.contains(field), "{field} missing in {stats}");
    }
}

/// Sends raw bytes, expects the reply line to start with `want`, then checks
/// the connection still answers PING.
fn expect_err_then_pong(ctl: &mut Ctl, raw: &[u8], want: &str) {
    ctl.write(raw);
    let reply = ctl.line();
    assert!(
        reply.starts_with(want),
        "sent {:?}: got {reply:?}, want {want}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        ctl.cmd("PING"),
        "PONG",
        "after {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays_usable() {
    let srv = Mailboxd::start(&["--max-message", "16"]);
    let mut ctl = srv.ctl();
    let cases: &[(&[u8], &str)] = &[
        (b"FROB\n", "ERR UNKNOWN"),
        (b"frob a b c\r\n", "ERR UNKNOWN"),
        (b"PING extra\n", "ERR SYNTAX"),
        (b"SEND\n", "ERR SYNTAX"),
        (b"SEND onlyname\n", "ERR SYNTAX"),
        (b"INFO\n", "ERR SYNTAX"),
        (b"JOIN g\n", "ERR SYNTAX"),
        (b"SEND bad/name 2\nhi\n", "ERR NAME"),
        (b"SEND a 2 event=no:colon\nhi\n", "ERR NAME"),
        (b"JOIN g ok not/ok\n", "ERR NAME"),
        (b"SEND a 2 colour=red\nhi\n", "ERR OPTION"),
        (b"PUBLISH g 2 except=a except=b\nhi\n", "ERR OPTION"),
        (b"SEND a 2\n\xff\xfe\n", "ERR UTF8"),
        (b"SEND a 17\n01234567890123456\n", "ERR TOOBIG"),
        (b"SEND a 1000000\n", "ERR TOOBIG"),
        (b"INFO nobody\n", "ERR NOTFOUND"),
        (b"DROP nobody\n", "ERR NOTFOUND"),
        (b"SEND a 9 event=x event=y\nnine byte\n", "ERR SYNTAX"),
    ];
    for (raw, want) in cases {
        if raw.starts_with(b"SEND a 1000000") {
            // The announced payload arrives after the error; it must be skipped, not parsed.
            ctl.write(raw);
            assert!(ctl.line().starts_with(want));
            let mut junk = vec![b'Q'; 1_000_000];
            junk.extend_from_slice(b"\nPING\n");
            ctl.write(&junk);
            assert_eq!(ctl.line(), "PONG");
            continue;
        }
        expect_err_then_pong(&mut ctl, raw, want);
    }
    // Blank lines are ignored, and an exact-limit payload is accepted.
    ctl.write(b"\n\r\n");
    assert!(ctl.cmd("SEND a 16\n0123456789abcdef").starts_with("OK "));
}

#[test]
fn desynchronising_errors_close_after_an_err_line() {
    let srv = Mailboxd::start(&[]);
    for (raw, want) in [
        (&b"SEND a x\nhello\n"[..], "ERR LENGTH"),
        (b"SEND a 2\nhello\n", "ERR FRAME"),
    ] {
        let mut ctl = srv.ctl();
        ctl.write(raw);
        assert!(ctl.line().starts_with(want));
        assert_eq!(ctl.read_to_end(), "", "connection closed after the error");
    }
    let mut ctl = srv.ctl();
    let long = vec![b'A'; 70 * 1024];
    ctl.write(&long);
    assert!(ctl.line().starts_with("ERR LINE"));
    // Other connections are unaffected.
    assert_eq!(srv.ctl().cmd("PING"), "PONG");
}

#[test]
fn quit_closes() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    ctl.write(b"PING\nQUIT\nPING\n");
    assert_eq!(ctl.line(), "PONG");
    assert_eq!(ctl.read_to_end(), "");
}

#[test]
fn byte_at_a_time_requests() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    for b in b"SEND slow 5 event=e\nab\ncd\r\nPING\n" {
        ctl.write(&[*b]);
    }
    assert!(ctl.line().starts_with("OK "));
    assert_eq!(ctl.line(), "PONG");
}

#[test]
fn bad_http_requests_get_clear_statuses() {
    let srv = Mailboxd::start(&["--max-subscribers", "1", "--max-connections", "4"]);
    let raw = |bytes: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(
        raw(b"POST /comet/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405")
    );
    assert!(raw(b"GET /comet/bad%20name HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(b"GET /comet/ HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(
        raw(b"GET /comet/a?transport=carrier-pigeon HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400")
    );
    assert!(raw(b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut huge = b"GET /comet/a HTTP/1.1\r\nX: ".to_vec();
    huge.resize(20_000, b'a');
    assert!(raw(&huge).starts_with("HTTP/1.1 400"));

    let _holder = HttpStream::open(srv.port, "/comet/solo", &[]);
    srv.wait_info("solo", |r| r.contains("subscribers=1"));
    assert!(raw(b"GET /comet/solo HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 429"));

    let _others: Vec<_> = (0..3)
        .map(|i| HttpStream::open(srv.port, &format!("/comet/o{i}"), &[]))
        .collect();
    let refused = raw(b"GET /comet/late HTTP/1.1\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // The good clients were not disturbed.
    let mut ctl = srv.ctl();
    assert_eq!(ctl.send("solo", "fine").1, 1);
}

#[test]
fn silent_clients_are_timed_out() {
    let srv = Mailboxd::start(&["--request-timeout", "0.3"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /comet/a HTTP/1.1\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "closed after the head timeout"
    );
}
