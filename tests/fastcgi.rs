//! FastCGI and SCGI at the record level, with a hand-written client (and the
//! independent `cgi-fcgi` from libfcgi-bin): keep-conn reuse, multiplexing,
//! abort, management records, and malformed input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BEGIN: u8 = 1;
const ABORT: u8 = 2;
const END: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;
const UNKNOWN_TYPE: u8 = 11;

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut r = vec![
        1,
        kind,
        (id >> 8) as u8,
        id as u8,
        (content.len() >> 8) as u8,
        content.len() as u8,
        3,
        0,
    ];
    r.extend_from_slice(content);
    r.extend_from_slice(&[0, 0, 0]);
    r
}

fn pairs(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![];
    for (k, v) in vars {
        for len in [k.len(), v.len()] {
            if len < 128 {
                out.push(len as u8);
            } else {
                out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// BEGIN_REQUEST + PARAMS (+ empty PARAMS) + empty STDIN for a GET of `uri`.
fn get_request(id: u16, keep_conn: bool, uri: &str) -> Vec<u8> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let _ = path;
    let mut out = record(BEGIN, id, &[0, 1, keep_conn as u8, 0, 0, 0, 0, 0]);
    let params = pairs(&[
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
    ]);
    out.extend(record(PARAMS, id, &params));
    out.extend(record(PARAMS, id, b""));
    out.extend(record(STDIN, id, b""));
    out
}

struct Record {
    kind: u8,
    id: u16,
    content: Vec<u8>,
}

struct FcgiClient {
    stream: TcpStream,
}

impl FcgiClient {
    fn connect(srv: &Mailboxd) -> FcgiClient {
        let stream = TcpStream::connect(srv.addr("fastcgi")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        FcgiClient { stream }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Next record, or `None` on EOF.
    fn record(&mut self) -> Option<Record> {
        let mut head = [0u8; 8];
        if self.stream.read_exact(&mut head).is_err() {
            return None;
        }
        assert_eq!(head[0], 1, "version");
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        let mut content = vec![0; len + head[6] as usize];
        self.stream.read_exact(&mut content).unwrap();
        content.truncate(len);
        Some(Record {
            kind: head[1],
            id: u16::from_be_bytes([head[2], head[3]]),
            content,
        })
    }

    /// Reads STDOUT for request `id` until END_REQUEST; returns (stdout, protocol status).
    fn response(&mut self, id: u16) -> (String, u8) {
        let mut out = Vec::new();
        loop {
            let r = self.record().expect("record before END_REQUEST");
            assert_eq!(r.id, id, "multiplexed record for another request");
            match r.kind {
                STDOUT => out.extend_from_slice(&r.content),
                END => return (String::from_utf8(out).unwrap(), r.content[4]),
                k => panic!("unexpected record type {k}"),
            }
        }
    }

    /// Reads STDOUT records (any request) until `needle` appears in request `id`'s output.
    fn stdout_until(
        &mut self,
        id: u16,
        needle: &str,
        seen: &mut std::collections::HashMap<u16, String>,
    ) {
        while !seen.get(&id).is_some_and(|s| s.contains(needle)) {
            let r = self.record().expect("stream open");
            assert_eq!(r.kind, STDOUT);
            seen.entry(r.id)
                .or_default()
                .push_str(std::str::from_utf8(&r.content).unwrap());
        }
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}

fn fcgi_server() -> Mailboxd {
    Mailboxd::start(&["--fastcgi", "127.0.0.1:0", "--max-connections", "777"])
}

#[test]
fn cgi_fcgi_gets_a_long_poll_answer() {
    let srv = fcgi_server();
    let mut ctl = srv.ctl();
    let run = |query: &str| {
        Command::new("cgi-fcgi")
            .args(["-bind", "-connect", &srv.addr("fastcgi")])
            .env("REQUEST_METHOD", "GET")
            .env("REQUEST_URI", format!("/comet/fred?{query}"))
            .env("QUERY_STRING", query)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cgi-fcgi is installed (libfcgi-bin)")
    };
    let (id, _) = ctl.send("fred", "for cgi-fcgi");
    let out = run("transport=poll").wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("Status: 200 OK\r\nContent-Type: application/json\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            r#""data":"for cgi-fcgi"}}],"last_id":{id},"gap":false}}"#
        )),
        "{text}"
    );

    // Held, then answered by a delivery.
    let child = run(&format!("transport=poll&since={id}"));
    srv.wait_info("fred", |r| r.contains("subscribers=1"));
    let (next, live) = ctl.send("fred", "later");
    assert_eq!(live, 1);
    let text = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        text.contains(&format!(r#"{{"id":{next},"event":null,"data":"later"}}"#)),
        "{text}"
    );
}

#[test]
fn keep_conn_serves_the_next_request_and_its_absence_closes() {
    let srv = fcgi_server();
    let mut ctl = srv.ctl();
    ctl.send("gina", "one");
    let mut c = FcgiClient::connect(&srv);
    for round in 0..3 {
        c.send(&get_request(1, true, "/comet/gina?transport=poll"));
        let (out, status) = c.response(1);
        assert_eq!(status, 0, "FCGI_REQUEST_COMPLETE");
        assert!(out.contains(r#""data":"one""#), "round {round}: {out}");
    }
    c.send(&get_request(1, false, "/comet/gina?transport=poll"));
    c.response(1);
    assert!(c.closed(), "no KEEP_CONN: closed after the request");
}

#[test]
fn multiplexed_requests_on_one_connection() {
    let srv = fcgi_server();
    let mut ctl = srv.ctl();
    let mut c = FcgiClient::connect(&srv);
    let mut both = get_request(7, true, "/comet/hank");
    both.extend(get_request(9, true, "/comet/iris?transport=stream"));
    c.send(&both);
    srv.wait_info("hank", |r| r.contains("subscribers=1"));
    srv.wait_info("iris", |r| r.contains("subscribers=1"));
    ctl.send("iris", "to iris");
    ctl.send("hank", "to hank");
    let mut seen = std::collections::HashMap::new();
    c.stdout_until(7, "data: to hank\n\n", &mut seen);
    c.stdout_until(9, "to iris\n", &mut seen);
    assert!(seen[&7].starts_with("Status: 200 OK\r\nContent-Type: text/event-stream"));
    assert!(!seen[&7].contains("to iris") && !seen[&9].contains("to hank"));
}

#[test]
fn abort_request_ends_the_request_at_once() {
    let srv = fcgi_server();
    let mut ctl = srv.ctl();
    let mut c = FcgiClient::connect(&srv);
    c.send(&get_request(3, true, "/comet/jack"));
    srv.wait_info("jack", |r| r.contains("subscribers=1"));
    c.send(&record(ABORT, 3, b""));
    let mut out = String::new();
    loop {
        let r = c.record().unwrap();
        if r.kind == END {
            assert_eq!(r.id, 3);
            break;
        }
        out.push_str(std::str::from_utf8(&r.content).unwrap());
    }
    srv.wait_unsubscribed("jack");
    // The connection (KEEP_CONN) still serves requests.
    ctl.send("jack", "after abort");
    c.send(&get_request(4, true, "/comet/jack?transport=poll"));
    assert!(c.response(4).0.contains("after abort"));
}

#[test]
fn management_records_and_refusals() {
    let srv = fcgi_server();
    let mut c = FcgiClient::connect(&srv);
    c.send(&record(
        GET_VALUES,
        0,
        &pairs(&[
            ("FCGI_MAX_CONNS", ""),
            ("FCGI_MAX_REQS", ""),
            ("FCGI_MPXS_CONNS", ""),
        ]),
    ));
    let r = c.record().unwrap();
    assert_eq!((r.kind, r.id), (GET_VALUES_RESULT, 0));
    let text = String::from_utf8_lossy(&r.content).into_owned();
    for want in ["FCGI_MAX_CONNS777", "FCGI_MAX_REQS64", "FCGI_MPXS_CONNS1"] {
        assert!(text.contains(want), "{text:?} lacks {want}");
    }
    c.send(&record(42, 0, b"whatever"));
    let r = c.record().unwrap();
    assert_eq!((r.kind, r.content[0]), (UNKNOWN_TYPE, 42));
    // Authorizer role: refused with FCGI_UNKNOWN_ROLE.
    c.send(&record(BEGIN, 5, &[0, 2, 1, 0, 0, 0, 0, 0]));
    let r = c.record().unwrap();
    assert_eq!((r.kind, r.id, r.content[4]), (END, 5, 3));
    // Records for an id that is not active are ignored; the connection lives on.
    c.send(&record(STDIN, 99, b"stray"));
    c.send(&get_request(6, true, "/comet/kim?transport=poll&since=1"));
    let (out, _) = c.response(6);
    assert!(out.contains(r#""gap":true"#), "{out}");
}

#[test]
fn bad_requests_become_http_statuses() {
    let srv = fcgi_server();
    let mut c = FcgiClient::connect(&srv);
    c.send(&get_request(1, true, "/comet/not%20ok"));
    assert!(c.response(1).0.starts_with("Status: 400 Bad Request\r\n"));
    let mut post = record(BEGIN, 2, &[0, 1, 1, 0, 0, 0, 0, 0]);
    post.extend(record(
        PARAMS,
        2,
        &pairs(&[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/comet/x")]),
    ));
    post.extend(record(PARAMS, 2, b""));
    post.extend(record(STDIN, 2, b"body bytes are drained"));
    post.extend(record(STDIN, 2, b""));
    c.send(&post);
    assert!(
        c.response(2)
            .0
            .starts_with("Status: 405 Method Not Allowed\r\n")
    );
    // Oversize PARAMS (over 32 KiB in several records).
    c.send(&record(BEGIN, 3, &[0, 1, 1, 0, 0, 0, 0, 0]));
    let big = pairs(&[("HTTP_COOKIE", &"c".repeat(20_000))]);
    c.send(&record(PARAMS, 3, &big));
    c.send(&record(PARAMS, 3, &big));
    assert!(c.response(3).0.starts_with("Status: 400 Bad Request\r\n"));
}

#[test]
fn malformed_and_truncated_records_close_only_their_connection() {
    let srv = Mailboxd::start_debug(&["--fastcgi", "127.0.0.1:0"]);
    let mut ctl = srv.ctl();
    let mut bystander = HttpStream::open(srv.port, "/comet/bystander", &[]);
    srv.wait_info("bystander", |r| r.contains("subscribers=1"));

    let mut bad_version = FcgiClient::connect(&srv);
    bad_version.send(&[2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert!(bad_version.closed());

    let mut bad_begin = FcgiClient::connect(&srv);
    bad_begin.send(&record(BEGIN, 1, &[0, 1]));
    assert!(bad_begin.closed());

    let mut bad_pairs = FcgiClient::connect(&srv);
    bad_pairs.send(&record(BEGIN, 1, &[0, 1, 0, 0, 0, 0, 0, 0]));
    bad_pairs.send(&record(PARAMS, 1, &[50, 1, b'x']));
    bad_pairs.send(&record(PARAMS, 1, b""));
    assert!(bad_pairs.closed());

    let mut truncated = FcgiClient::connect(&srv);
    truncated.send(&[1, BEGIN, 0, 1, 0, 8, 0]);
    drop(truncated);

    let log = wait_for(Duration::from_secs(5), || {
        let log = srv.log();
        (log.contains("version 2")
            && log.contains("BEGIN_REQUEST body")
            && log.contains("name-value"))
        .then_some(log)
    });
    assert!(log.contains("fastcgi"));
    let (id, live) = ctl.send("bystander", "unaffected");
    assert_eq!(live, 1);
    assert_eq!(bystander.next_event().id, Some(id));
    assert_eq!(ctl.cmd("PING"), "PONG");
}

fn scgi_request(vars: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut block = format!("CONTENT_LENGTH\0{}\0SCGI\01\0", body.len()).into_bytes();
    for (k, v) in vars {
        block.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    let mut out = format!("{}:", block.len()).into_bytes();
    out.extend(block);
    out.push(b',');
    out.extend_from_slice(body);
    out
}

fn scgi_exchange(srv: &Mailboxd, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(srv.addr("scgi")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn scgi_requests_and_malformed_heads() {
    let srv = Mailboxd::start_debug(&["--scgi", "127.0.0.1:0"]);
    let mut ctl = srv.ctl();
    ctl.send("lena", "via scgi");
    let vars = [
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/comet/lena?transport=poll"),
        ("QUERY_STRING", "transport=poll"),
    ];
    let out = scgi_exchange(&srv, &scgi_request(&vars, b""));
    assert!(
        out.starts_with("Status: 200 OK\r\n") && out.contains(r#""data":"via scgi""#),
        "{out}"
    );
    let post = [("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/comet/lena")];
    assert!(scgi_exchange(&srv, &scgi_request(&post, b"drained body")).starts_with("Status: 405"));
    assert_eq!(
        scgi_exchange(&srv, b"GET /comet/lena HTTP/1.1\r\n\r\n"),
        "",
        "HTTP on the SCGI port: closed"
    );
    let block = b"SCGI\x001\x00CONTENT_LENGTH\x000\x00";
    let mut wrong_order = format!("{}:", block.len()).into_bytes();
    wrong_order.extend_from_slice(block);
    wrong_order.push(b',');
    assert_eq!(scgi_exchange(&srv, &wrong_order), "");
    wait_for(Duration::from_secs(5), || {
        let log = srv.log();
        (log.contains("SCGI netstring length") && log.contains("CONTENT_LENGTH missing"))
            .then_some(())
    });
    assert_eq!(ctl.cmd("PING"), "PONG");
}

/// `BEGIN_REQUEST` then `PARAMS` dripped one byte at a time: every request
/// must complete its head within `--request-timeout`.
#[test]
fn dripped_params_are_cut_at_the_request_timeout() {
    let srv = Mailboxd::start_raw(&["--fastcgi", "127.0.0.1:0", "--request-timeout", "2"]);
    let mut drippers: Vec<FcgiClient> = (0..50)
        .map(|_| {
            let mut c = FcgiClient::connect(&srv);
            c.send(&record(BEGIN, 1, &[0, 1, 0, 0, 0, 0, 0, 0]));
            c
        })
        .collect();
    let started = Instant::now();
    let mut open = drippers.len();
    while open > 0 && started.elapsed() < Duration::from_secs(6) {
        open = 0;
        for c in drippers.iter_mut() {
            if c.stream.write_all(&record(PARAMS, 1, b"x")).is_ok() {
                open += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = started.elapsed();
    assert_eq!(open, 0, "every dripping connection was closed");
    eprintln!(
        "50 dripping FastCGI heads closed after {} ms",
        elapsed.as_millis()
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    wait_for(Duration::from_secs(5), || {
        srv.ctl()
            .cmd("STATS")
            .contains("connections=0 ")
            .then_some(())
    });
}

/// Many unfinished requests on one connection cannot hold more than 64 KiB
/// of parameters between them.
#[test]
fn unfinished_params_are_capped_per_connection() {
    let srv = fcgi_server();
    let mut c = FcgiClient::connect(&srv);
    let chunk = vec![b'p'; 30_000];
    let mut closed_after = None;
    for id in 1..=64u16 {
        let mut begin_and_params = record(BEGIN, id, &[0, 1, 0, 0, 0, 0, 0, 0]);
        begin_and_params.extend(record(PARAMS, id, &chunk));
        if c.stream.write_all(&begin_and_params).is_err() {
            closed_after = Some(id);
            break;
        }
    }
    // Closed with our unread records pending: a reset, or an end of stream.
    let mut b = [0u8; 64];
    let closed = match c.stream.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed,
        "closed once past the cap (after request {closed_after:?})"
    );
    wait_for(Duration::from_secs(5), || {
        srv.log().contains("64 KiB of PARAMS").then_some(())
    });
}

/// A web server may still be writing a request's last records (the empty
/// `STDIN`) when the answer has come and the connection is finished: the
/// connection lingers, reading and dropping them, instead of resetting
/// and failing that write (as `cgi-fcgi` saw, `EPIPE`, now and then). A
/// peer that never closes is closed after the linger time.
#[test]
fn a_finished_connection_lingers_for_the_peers_last_records() {
    let srv = fcgi_server();
    srv.ctl().send("lena", "answered at once");
    let connections = || field(&srv.ctl().cmd("STATS"), "connections").unwrap();
    let mut c = FcgiClient::connect(&srv);
    let mut request = get_request(1, false, "/comet/lena?transport=poll");
    let stdin = request.split_off(request.len() - record(STDIN, 1, b"").len());
    c.send(&request);
    let (out, status) = c.response(1);
    assert_eq!(status, 0);
    assert!(out.contains("answered at once"), "{out}");
    assert!(c.closed(), "end of file after the answer");
    // Still open on mailboxd's side: late records are taken, twice over.
    c.stream.write_all(&stdin).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.stream.write_all(&stdin).unwrap();
    drop(c);
    wait_for(Duration::from_secs(1), || {
        (connections() == 0).then_some(())
    });

    // A peer that keeps its side open is let go after the linger time.
    let mut idle = FcgiClient::connect(&srv);
    idle.send(&request);
    idle.response(1);
    assert!(idle.closed());
    let t = Instant::now();
    wait_for(Duration::from_secs(5), || {
        (connections() == 0).then_some(())
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}
