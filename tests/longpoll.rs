//! The long-poll transport: immediate, held then answered, timed out, kept alive.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn immediate_answer_with_retained_messages() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let a = ctl.send_event("pat", "note", "one \"quoted\"\nline");
    let (b, _) = ctl.send("pat", "two");
    let (status, head, body) = get(srv.port, "/comet/pat?transport=poll");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: application/json"));
    assert_eq!(
        body,
        format!(
            r#"{{"messages":[{{"id":{a},"event":"note","data":"one \"quoted\"\nline"}},{{"id":{b},"event":null,"data":"two"}}],"last_id":{b},"gap":false}}"#
        )
    );
    let (_, _, body) = get(srv.port, &format!("/comet/pat?transport=poll&since={a}"));
    assert_eq!(poll_ids(&body), vec![b]);
}

#[test]
fn held_then_answered_by_a_delivery() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let poll = request(srv.port, "/comet/quinn?transport=poll", &[]);
    // The head only comes with the answer; wait for the hold to register.
    srv.wait_info("quinn", |r| r.contains("subscribers=1"));
    let (id, live) = ctl.send("quinn", "wake up");
    assert_eq!(live, 1);
    let body = HttpStream::from_stream(Box::new(poll)).body();
    assert_eq!(poll_ids(&body), vec![id]);
    assert_eq!(poll_last_id(&body), id);
    srv.wait_unsubscribed("quinn");
}

#[test]
fn timeout_answers_empty_and_keeps_alive() {
    let srv = Mailboxd::start(&["--poll-timeout", "0.3"]);
    let mut ctl = srv.ctl();
    let (seed, _) = ctl.send("rita", "old");
    let path = format!("/comet/rita?transport=poll&since={seed}");
    let start = Instant::now();
    let mut poll = HttpStream::open(srv.port, &path, &[]);
    let body = poll.body();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "answered too early"
    );
    assert_eq!(
        body,
        format!(r#"{{"messages":[],"last_id":{seed},"gap":false}}"#)
    );
    assert_eq!(poll.header("Connection").as_deref(), Some("keep-alive"));
}

#[test]
fn keep_alive_carries_successive_polls() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let mut sock = request(srv.port, "/comet/sam?transport=poll", &[]);
    srv.wait_info("sam", |r| r.contains("subscribers=1"));
    let (first, _) = ctl.send("sam", "1");
    let mut resp = HttpStream::from_stream(Box::new(sock.try_clone().unwrap()));
    assert_eq!(poll_ids(&resp.body()), vec![first]);
    // Second poll on the same connection, resuming from the first answer.
    let (second, _) = ctl.send("sam", "2");
    write!(
        sock,
        "GET /comet/sam?transport=poll&since={first} HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut resp2 = HttpStream::from_stream(Box::new(sock.try_clone().unwrap()));
    assert_eq!(poll_ids(&resp2.body()), vec![second]);
}

#[test]
fn poll_reports_gap_after_eviction() {
    let srv = Mailboxd::start(&["--retain", "2"]);
    let mut ctl = srv.ctl();
    let ids: Vec<u64> = (0..5).map(|i| ctl.send("tess", &i.to_string()).0).collect();
    let (_, _, body) = get(
        srv.port,
        &format!("/comet/tess?transport=poll&since={}", ids[0]),
    );
    assert!(body.ends_with(r#""gap":true}"#), "{body}");
    assert_eq!(poll_ids(&body), &ids[3..]);
}

#[test]
fn drop_answers_a_held_poll() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let poll = request(srv.port, "/comet/uma?transport=poll", &[]);
    srv.wait_info("uma", |r| r.contains("subscribers=1"));
    assert_eq!(ctl.cmd("DROP uma"), "OK");
    assert!(
        HttpStream::from_stream(Box::new(poll))
            .body()
            .starts_with(r#"{"messages":[]"#)
    );
}

/// A held poll woken and its mailbox dropped in the same turn is answered
/// once, and a keep-alive request pipelined behind it is not answered by
/// mistake with its messages.
#[test]
fn a_poll_woken_and_dropped_in_one_turn_is_answered_once() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(
        b"GET /comet/twice?transport=poll HTTP/1.1\r\nHost: x\r\n\r\nGET /comet/other?transport=poll HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    srv.wait_info("twice", |r| r.contains("subscribers=1"));
    // One write: both commands are handled in the same loop turn.
    ctl.write(b"SEND twice 5\nfirst\nDROP twice\n");
    assert!(ctl.line().starts_with("OK "));
    assert_eq!(ctl.line(), "OK");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(got.matches("HTTP/1.1 200").count(), 1, "{got}");
    assert!(got.contains("\"data\":\"first\""), "{got}");
    // The second request is still held on its own (empty) mailbox.
    assert!(srv.ctl().cmd("INFO other").contains("subscribers=1"));
}
