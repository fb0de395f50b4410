//! SSE and stream delivery over the HTTP listener: queued, live, resumed, gapped, fanned out.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn delivery_before_first_connect_then_live() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let (first, live) = ctl.send("alice", "queued one");
    assert_eq!(live, 0, "nobody listening yet");
    let second = ctl.send_event("alice", "chat", "queued\ntwo");

    let mut sse = HttpStream::open(srv.port, "/comet/alice", &[("Accept", "text/event-stream")]);
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("Content-Type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(sse.header("Cache-Control").as_deref(), Some("no-cache"));
    assert_eq!(sse.header("X-Accel-Buffering").as_deref(), Some("no"));
    let e1 = sse.next_event();
    assert_eq!(
        (e1.id, e1.data.as_str(), e1.event),
        (Some(first), "queued one", None)
    );
    let e2 = sse.next_event();
    assert_eq!(
        (e2.id, e2.data.as_str(), e2.event.as_deref()),
        (Some(second), "queued\ntwo", Some("chat"))
    );

    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let (third, live) = ctl.send("alice", "live");
    assert_eq!(live, 1);
    assert!(third > second && second > first, "ids strictly increase");
    let e3 = sse.next_event();
    assert_eq!((e3.id, e3.data.as_str()), (Some(third), "live"));
}

#[test]
fn resume_with_last_event_id_gets_exactly_the_missed_messages() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let mut sse = HttpStream::open(srv.port, "/comet/bob", &[]);
    srv.wait_info("bob", |r| r.contains("subscribers=1"));
    let seen: Vec<u64> = (0..3)
        .map(|i| ctl.send("bob", &format!("m{i}")).0)
        .collect();
    let got: Vec<u64> = (0..3).map(|_| sse.next_event().id.unwrap()).collect();
    assert_eq!(got, seen);
    drop(sse);
    srv.wait_unsubscribed("bob");

    let missed: Vec<u64> = (3..7)
        .map(|i| ctl.send("bob", &format!("m{i}")).0)
        .collect();
    let last = seen[2].to_string();
    let mut sse = HttpStream::open(srv.port, "/comet/bob", &[("Last-Event-ID", &last)]);
    let got: Vec<(u64, String)> = (0..4)
        .map(|_| sse.next_event())
        .map(|e| (e.id.unwrap(), e.data))
        .collect();
    let want: Vec<(u64, String)> = missed
        .iter()
        .zip(3..7)
        .map(|(id, i)| (*id, format!("m{i}")))
        .collect();
    assert_eq!(got, want);
    // Nothing else is pending: the next event is a new live one.
    let (next, _) = ctl.send("bob", "after");
    assert_eq!(sse.next_event().id, Some(next));

    // The query forms resume the same way.
    let q = format!("/comet/bob?last_id={}", missed[2]);
    let mut sse2 = HttpStream::open(srv.port, &q, &[]);
    assert_eq!(sse2.next_event().id, Some(missed[3]));
}

#[test]
fn gap_notice_after_eviction_has_no_id() {
    let srv = Mailboxd::start(&["--retain", "3"]);
    let mut ctl = srv.ctl();
    let ids: Vec<u64> = (0..6)
        .map(|i| ctl.send("carol", &format!("m{i}")).0)
        .collect();
    let resume = ids[0].to_string();
    let mut sse = HttpStream::open(srv.port, "/comet/carol", &[("Last-Event-ID", &resume)]);
    let gap = sse.next_event();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.id, None, "a gap notice must not move Last-Event-ID");
    assert!(
        gap.data.contains(&format!("\"oldest\":{}", ids[3])),
        "{}",
        gap.data
    );
    let got: Vec<u64> = (0..3).map(|_| sse.next_event().id.unwrap()).collect();
    assert_eq!(got, &ids[3..]);

    // Resuming from a point that is still covered gives no gap.
    let resume = ids[2].to_string();
    let mut sse = HttpStream::open(srv.port, "/comet/carol", &[("Last-Event-ID", &resume)]);
    assert_eq!(sse.next_event().id, Some(ids[3]));
}

#[test]
fn two_subscribers_on_one_mailbox_each_get_everything() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let mut a = HttpStream::open(srv.port, "/comet/tabs", &[]);
    let mut b = HttpStream::open(srv.port, "/x/y/tabs", &[]);
    srv.wait_info("tabs", |r| r.contains("subscribers=2"));
    let (id, live) = ctl.send("tabs", "both");
    assert_eq!(live, 2);
    assert_eq!(a.next_event().id, Some(id));
    assert_eq!(b.next_event().id, Some(id));
}

#[test]
fn group_publish_with_except() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    assert_eq!(ctl.cmd("JOIN room ann ben cat"), "OK 3");
    let mut streams: Vec<HttpStream> = ["ann", "ben", "cat"]
        .iter()
        .map(|m| HttpStream::open(srv.port, &format!("/comet/{m}"), &[]))
        .collect();
    for m in ["ann", "ben", "cat"] {
        srv.wait_info(m, |r| r.contains("subscribers=1"));
    }
    let (delivered, live) = ctl.publish("room", "hello room", "ann");
    assert_eq!((delivered, live), (2, 2));
    let ben = streams[1].next_event();
    let cat = streams[2].next_event();
    assert_eq!(
        (ben.data.as_str(), cat.data.as_str()),
        ("hello room", "hello room")
    );
    assert_ne!(ben.id, cat.id, "each member gets its own id");
    // ann got nothing: the next thing she sees is a direct message.
    let (direct, _) = ctl.send("ann", "direct");
    assert_eq!(streams[0].next_event().id, Some(direct));
    assert_eq!(ctl.cmd("PUBLISH nobody 1\nx"), "OK 0 0");
}

#[test]
fn stream_transport_writes_payload_lines() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    ctl.send("dave", "first");
    let mut s = HttpStream::open(srv.port, "/comet/dave?transport=stream", &[]);
    assert_eq!(
        s.header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        s.line().as_deref(),
        Some(""),
        "the stream opens with a heartbeat"
    );
    assert_eq!(s.line().as_deref(), Some("first"));
    srv.wait_info("dave", |r| r.contains("subscribers=1"));
    ctl.send("dave", "second");
    assert_eq!(s.data_line().as_deref(), Some("second"));
}

#[test]
fn heartbeat_on_an_idle_stream() {
    let srv = Mailboxd::start(&["--heartbeat", "0.2"]);
    let mut sse = HttpStream::open(srv.port, "/comet/idle", &[]);
    let start = Instant::now();
    let mut beats = 0;
    while beats < 2 {
        let block = sse.next_block().expect("stream open");
        if block.comment {
            assert_eq!(block.id, None, "heartbeats carry no id");
            beats += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn slow_reader_is_cut_at_the_cap_while_others_keep_receiving() {
    let srv = Mailboxd::start(&[
        "--max-output",
        "70000",
        "--retain",
        "1000",
        "--retain-bytes",
        "10000000",
    ]);
    let mut ctl = srv.ctl();
    // The slow client opens the stream and never reads again.
    let slow = request(srv.port, "/comet/shared", &[]);
    let mut fast = HttpStream::open(srv.port, "/comet/shared", &[]);
    srv.wait_info("shared", |r| r.contains("subscribers=2"));
    let payload = "x".repeat(16 * 1024);
    let mut last = 0;
    let mut received = 0;
    // Keep delivering until the server gives up on the slow reader; the fast
    // one reads everything meanwhile (kernel buffers absorb the first few MiB).
    for _ in 0..2000 {
        let (id, live) = ctl.send("shared", &payload);
        last = id;
        let ev = fast.next_event();
        assert_eq!(ev.id, Some(id));
        received += 1;
        if live == 1 {
            break;
        }
    }
    assert!(
        ctl.cmd("STATS").contains("slow_closed=1"),
        "slow reader was never cut"
    );
    srv.wait_info("shared", |r| r.contains("subscribers=1"));
    let (id, live) = ctl.send("shared", "still flowing");
    assert_eq!(live, 1);
    assert_eq!(fast.next_event().id, Some(id));
    assert!(id > last && received > 1);
    drop(slow);
    // The log is read by another thread: wait for the line rather than race it.
    wait_for(Duration::from_secs(5), || {
        srv.log().contains("closing slow client").then_some(())
    });
}

#[test]
fn drop_ends_streams_and_forgets_the_mailbox() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    ctl.send("erin", "x");
    let mut sse = HttpStream::open(srv.port, "/comet/erin", &[]);
    sse.next_event();
    srv.wait_info("erin", |r| r.contains("subscribers=1"));
    assert_eq!(ctl.cmd("DROP erin"), "OK");
    assert!(sse.closed(), "the stream ends");
    assert!(ctl.cmd("INFO erin").starts_with("ERR NOTFOUND"));
    assert!(ctl.cmd("DROP erin").starts_with("ERR NOTFOUND"));
}

#[test]
fn curl_receives_sse() {
    let srv = Mailboxd::start(&[]);
    let mut ctl = srv.ctl();
    let (id, _) = ctl.send("curly", "hello curl");
    let mut child = Command::new("curl")
        .args(["-sN", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/comet/curly", srv.port))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let mut out = child.stdout.take().unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while !text.contains("hello curl\n\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "curl output ended: {text:?}");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains(&format!("id: {id}\ndata: hello curl\n\n")),
        "{text}"
    );
}

#[test]
fn unix_socket_http_listener() {
    let dir = TempDir::new("unixhttp");
    let sock = dir.path().join("http.sock");
    let spec = format!("unix:{}", sock.display());
    let srv = Mailboxd::start(&["--http", &spec]);
    let mut ctl = srv.ctl();
    let (id, _) = ctl.send("unixy", "over unix");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut s, b"GET /comet/unixy HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut sse = HttpStream::from_stream(Box::new(s));
    let ev = sse.next_event();
    assert_eq!((ev.id, ev.data.as_str()), (Some(id), "over unix"));
}
