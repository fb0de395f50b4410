//! The same client behaviour through every front: mailboxd's own HTTP
//! listener, and real nginx, lighttpd and Apache speaking FastCGI, SCGI and
//! HTTP to it, and Caddy speaking HTTP and FastCGI (TCP and Unix sockets),
//! each started from the shipped contrib config.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Flags every suite run uses: short enough timers to test them quickly.
const FLAGS: &[&str] = &[
    "--retain",
    "5",
    "--poll-timeout",
    "1",
    "--heartbeat",
    "2",
    "--socket-mode",
    "0666",
];

/// Starts mailboxd with one client listener, `--<gateway> <addr>`.
fn mailboxd(gateway: &str, addr: &str) -> Mailboxd {
    let flag = format!("--{gateway}");
    let mut args = vec![flag.as_str(), addr];
    args.extend_from_slice(FLAGS);
    Mailboxd::start_raw(&args)
}

/// Runs every client-visible behaviour through `port` (a web server in front
/// of `srv`, or `srv` itself). Returns the measured abort-detection delay.
fn suite(srv: &Mailboxd, port: u16, label: &str) -> Duration {
    let mut ctl = srv.ctl();

    // Queued before the first connect, then live within 1 s (no buffering on the way).
    let (queued, _) = ctl.send("alice", "queued");
    let mut sse = HttpStream::open(port, "/comet/alice", &[("Accept", "text/event-stream")]);
    assert_eq!(sse.status, 200, "{label}");
    assert!(
        sse.header("Content-Type")
            .unwrap()
            .starts_with("text/event-stream"),
        "{label}"
    );
    let ev = sse.next_event();
    assert_eq!(
        (ev.id, ev.data.as_str()),
        (Some(queued), "queued"),
        "{label}"
    );
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let sent = Instant::now();
    let live = ctl.send_event("alice", "chat", "line one\nline two");
    let ev = sse.next_event();
    let latency = sent.elapsed();
    assert_eq!(
        (ev.id, ev.event.as_deref(), ev.data.as_str()),
        (Some(live), Some("chat"), "line one\nline two")
    );
    assert!(
        latency < Duration::from_secs(1),
        "{label}: delivery took {latency:?}: something buffers"
    );

    // A large message crosses whatever buffers are on the way, whole.
    let big = "x".repeat(60_000);
    let (big_id, _) = ctl.send("alice", &big);
    let ev = sse.next_event();
    assert_eq!((ev.id, ev.data.len()), (Some(big_id), big.len()), "{label}");
    let live = big_id;

    // Resume after a disconnect: exactly the missed messages, in order.
    drop(sse);
    srv.wait_unsubscribed("alice");
    let missed: Vec<u64> = (0..3)
        .map(|i| ctl.send("alice", &format!("missed {i}")).0)
        .collect();
    let resume = live.to_string();
    let mut sse = HttpStream::open(port, "/comet/alice", &[("Last-Event-ID", &resume)]);
    let got: Vec<u64> = (0..3).map(|_| sse.next_event().id.unwrap()).collect();
    assert_eq!(got, missed, "{label}");
    let (after, _) = ctl.send("alice", "after");
    assert_eq!(
        sse.next_event().id,
        Some(after),
        "{label}: nothing extra was replayed"
    );
    drop(sse);

    // Gap after eviction (retain 5).
    let ids: Vec<u64> = (0..8)
        .map(|i| ctl.send("gappy", &i.to_string()).0)
        .collect();
    let mut sse = HttpStream::open(port, &format!("/comet/gappy?last_id={}", ids[0]), &[]);
    let gap = sse.next_event();
    assert_eq!(
        (gap.event.as_deref(), gap.id),
        (Some("gap"), None),
        "{label}"
    );
    assert_eq!(sse.next_event().id, Some(ids[3]), "{label}");
    drop(sse);

    // Long-poll: immediate, held then answered, timed out.
    let (_, _, body) = get(port, "/comet/gappy?transport=poll");
    assert_eq!(poll_ids(&body), &ids[3..], "{label}");
    let held = request(port, "/comet/poller?transport=poll", &[]);
    srv.wait_info("poller", |r| r.contains("subscribers=1"));
    let (answer, _) = ctl.send("poller", "wake");
    let body = HttpStream::from_stream(Box::new(held)).body();
    assert_eq!(poll_ids(&body), vec![answer], "{label}");
    let start = Instant::now();
    let (_, _, body) = get(
        port,
        &format!("/comet/poller?transport=poll&since={answer}"),
    );
    assert!(
        body.starts_with(r#"{"messages":[]"#) && start.elapsed() >= Duration::from_millis(900),
        "{label}"
    );

    // Stream transport.
    let mut stream = HttpStream::open(port, "/comet/streamer?transport=stream", &[]);
    srv.wait_info("streamer", |r| r.contains("subscribers=1"));
    ctl.send("streamer", "raw line");
    assert_eq!(stream.data_line().as_deref(), Some("raw line"), "{label}");
    drop(stream);

    // Two tabs on one mailbox.
    let mut a = HttpStream::open(port, "/comet/tabs", &[]);
    let mut b = HttpStream::open(port, "/comet/tabs", &[]);
    srv.wait_info("tabs", |r| r.contains("subscribers=2"));
    let (id, live) = ctl.send("tabs", "both");
    assert_eq!(live, 2, "{label}");
    assert_eq!(
        (a.next_event().id, b.next_event().id),
        (Some(id), Some(id)),
        "{label}"
    );
    drop((a, b));

    // 200 concurrent subscribers in a group each receive a PUBLISH (one excluded).
    let names: Vec<String> = (0..200).map(|i| format!("member{i}")).collect();
    let join = format!("JOIN crowd {}", names.join(" "));
    assert_eq!(ctl.cmd(&join), "OK 200");
    let mut crowd: Vec<HttpStream> = names
        .iter()
        .map(|n| HttpStream::open(port, &format!("/comet/{n}"), &[]))
        .collect();
    wait_for(Duration::from_secs(10), || {
        ctl.cmd("STATS").contains("subscribers=200").then_some(())
    });
    let (delivered, live) = ctl.publish("crowd", "to everyone", "member0");
    assert_eq!((delivered, live), (199, 199), "{label}");
    for s in crowd.iter_mut().skip(1) {
        assert_eq!(s.next_event().data, "to everyone", "{label}");
    }
    drop(crowd);

    // Bad requests keep their status through the gateway.
    assert_eq!(get(port, "/comet/bad%20name").0, 400, "{label}");
    assert_eq!(get(port, "/comet/x?transport=pigeon").0, 400, "{label}");

    // A killed client disappears from INFO; measure how soon.
    let sse = HttpStream::open(port, "/comet/victim", &[]);
    srv.wait_info("victim", |r| r.contains("subscribers=1"));
    let killed = Instant::now();
    drop(sse);
    srv.wait_unsubscribed("victim");
    let delay = killed.elapsed();
    eprintln!("abort detection {label}: {} ms", delay.as_millis());
    delay
}

/// mailboxd's listener address for a test: a socket path in `dir`, or a free TCP port.
fn listen_addr(dir: &TempDir, unix: bool) -> (String, std::path::PathBuf) {
    let sock = dir.path().join("gateway.sock");
    let addr = if unix {
        format!("unix:{}", sock.display())
    } else {
        "127.0.0.1:0".into()
    };
    (addr, sock)
}

fn through_nginx(gateway: &str, unix: bool) {
    let dir = TempDir::new("sock");
    let (addr, _) = listen_addr(&dir, unix);
    let srv = mailboxd(gateway, &addr);
    let upstream = if unix {
        addr.clone()
    } else {
        srv.addr(gateway)
    };
    let web = WebServer::nginx(gateway, &upstream);
    let delay = suite(&srv, web.port, &web.name);
    // nginx watches the client socket and closes the upstream at once.
    assert!(delay < Duration::from_secs(1), "{}: {delay:?}", web.name);
}

fn through_lighttpd(file: &str, gateway: &str) {
    let dir = TempDir::new("sock");
    let unix = file.ends_with("-unix");
    let (addr, sock) = listen_addr(&dir, unix);
    let srv = mailboxd(gateway, &addr);
    let upstream = if unix {
        sock.display().to_string()
    } else {
        srv.port_of(gateway).to_string()
    };
    let web = WebServer::lighttpd(file, &upstream);
    let delay = suite(&srv, web.port, &web.name);
    // lighttpd notices a vanished client when it next writes to it: at the
    // latest the next heartbeat (2 s here).
    assert!(delay < Duration::from_secs(4), "{}: {delay:?}", web.name);
}

#[test]
fn direct_http() {
    let srv = mailboxd("http", "127.0.0.1:0");
    suite(&srv, srv.port, "direct http");
}

#[test]
fn nginx_fastcgi() {
    through_nginx("fastcgi", false);
}

#[test]
fn nginx_scgi() {
    through_nginx("scgi", false);
}

#[test]
fn nginx_http() {
    through_nginx("http", false);
}

#[test]
fn nginx_fastcgi_unix() {
    through_nginx("fastcgi", true);
}

#[test]
fn nginx_scgi_unix() {
    through_nginx("scgi", true);
}

#[test]
fn nginx_http_unix() {
    through_nginx("http", true);
}

#[test]
fn lighttpd_fastcgi() {
    through_lighttpd("fastcgi", "fastcgi");
}

#[test]
fn lighttpd_scgi() {
    through_lighttpd("scgi", "scgi");
}

#[test]
fn lighttpd_http() {
    through_lighttpd("http", "http");
}

#[test]
fn lighttpd_fastcgi_unix() {
    through_lighttpd("fastcgi-unix", "fastcgi");
}

/// Apache and Caddy, from the shipped configs, over TCP.
fn through(server: &str, gateway: &str) -> Duration {
    let srv = mailboxd(gateway, "127.0.0.1:0");
    let upstream = srv.port_of(gateway);
    let web = match server {
        "apache" => WebServer::apache(gateway, upstream),
        _ => WebServer::caddy(gateway, upstream),
    };
    suite(&srv, web.port, &web.name)
}

// Apache notices a vanished client only when a write to it fails: the
// second heartbeat after it left (2 s apart here).
#[test]
fn apache_fastcgi() {
    let delay = through("apache", "fastcgi");
    assert!(delay < Duration::from_secs(6), "{delay:?}");
}

#[test]
fn apache_scgi() {
    let delay = through("apache", "scgi");
    assert!(delay < Duration::from_secs(6), "{delay:?}");
}

#[test]
fn apache_http() {
    let delay = through("apache", "http");
    assert!(delay < Duration::from_secs(6), "{delay:?}");
}

// Caddy closes the upstream only once writes to the vanished client have
// failed: measured at four heartbeats (2 s apart here), 8 s.
#[test]
fn caddy_http() {
    let delay = through("caddy", "http");
    assert!(delay < Duration::from_secs(10), "{delay:?}");
}

#[test]
fn caddy_fastcgi() {
    let delay = through("caddy", "fastcgi");
    assert!(delay < Duration::from_secs(10), "{delay:?}");
}

#[test]
fn nginx_keeps_eventsource_retrying_while_mailboxd_is_down() {
    retry_while_down("nginx", &["fastcgi", "scgi", "http"]);
}

#[test]
fn caddy_keeps_eventsource_retrying_while_mailboxd_is_down() {
    retry_while_down("caddy", &["fastcgi", "http"]);
}

#[test]
fn lighttpd_keeps_eventsource_retrying_while_mailboxd_is_down() {
    retry_while_down("lighttpd", &["fastcgi", "scgi", "http"]);
}

#[test]
fn apache_keeps_eventsource_retrying_while_mailboxd_is_down() {
    retry_while_down("apache", &["fastcgi", "scgi", "http"]);
}

/// While mailboxd is down, the shipped configs of `server` answer an SSE
/// request with an empty stream and a retry hint (an EventSource then
/// retries instead of giving up on a 502 or 503), and long-polls with an
/// error; once mailboxd is back, the same request streams again.
fn retry_while_down(server: &str, gateways: &[&str]) {
    for &gateway in gateways {
        let mut srv = mailboxd(gateway, "127.0.0.1:0");
        let upstream = srv.addr(gateway);
        let port = srv.port_of(gateway);
        let web = match server {
            "nginx" => WebServer::nginx(gateway, &upstream),
            "lighttpd" => WebServer::lighttpd(gateway, &port.to_string()),
            "apache" => WebServer::apache(gateway, port),
            _ => WebServer::caddy(gateway, port),
        };
        let gateway = format!("{server} {gateway}");
        let gateway = gateway.as_str();
        assert_eq!(srv.terminate(), Some(0));
        let mut down =
            HttpStream::open(web.port, "/comet/alice", &[("Accept", "text/event-stream")]);
        assert_eq!(down.status, 200, "{gateway}: {}", down.head);
        assert!(
            down.header("Content-Type")
                .unwrap()
                .starts_with("text/event-stream"),
            "{gateway}"
        );
        assert_eq!(down.line().as_deref(), Some("retry: 2000"), "{gateway}");
        let (status, _, _) = get(web.port, "/comet/alice?transport=poll");
        assert!(
            status >= 500,
            "{gateway}: long-polls see the outage ({status})"
        );
        // Back on the same address: the retry streams.
        let flag = format!("--{}", gateway.split(' ').nth(1).unwrap());
        let srv = Mailboxd::start_raw(&[flag.as_str(), upstream.as_str()]);
        let (id, _) = srv.ctl().send("alice", "back");
        // As an EventSource does: a retry answer means reconnecting later
        // (lighttpd, for one, shuns a failed backend for a second).
        let ev = wait_for(Duration::from_secs(10), || {
            let mut sse = HttpStream::open(web.port, "/comet/alice", &[]);
            loop {
                match sse.next_block() {
                    Some(e) if e.retry || e.comment => continue,
                    Some(e) => return Some(e),
                    None => {
                        std::thread::sleep(Duration::from_millis(200));
                        return None;
                    }
                }
            }
        });
        assert_eq!(ev.id, Some(id), "{gateway}");
    }
}
