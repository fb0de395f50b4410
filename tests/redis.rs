//! `--store redis://…`: several instances sharing mailboxes and groups
//! through a real `redis-server` (started here on a free port), one nginx
//! upstream round-robin over their FastCGI listeners, and what a Redis
//! outage or a `kill -9` of an instance costs clients.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A `redis-server` on a free port, persisting to its own directory (AOF),
/// so it can be stopped and started again with its data.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = TempDir::new("redis");
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let server = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("redis-server is not installed: run tests/run-all.sh");
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
    }

    /// SIGTERM, and wait for it to exit (it writes its AOF first).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Runs a command with redis-cli; its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` instances on `redis`, each with HTTP and FastCGI on free ports; the
/// second reaches Redis over its Unix socket.
fn instances(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Mailboxd> {
    let tcp = redis.url();
    let unix = format!("unix:{}", redis.socket().display());
    (0..n)
        .map(|i| {
            let url = if i == 1 { &unix } else { &tcp };
            let mut args = vec![
                "--store",
                url.as_str(),
                "--http",
                "127.0.0.1:0",
                "--fastcgi",
                "127.0.0.1:0",
            ];
            args.extend_from_slice(extra);
            let m = Mailboxd::start_raw(&args);
            wait_connected(&m);
            m
        })
        .collect()
}

/// Until the instance has reached Redis.
fn wait_connected(m: &Mailboxd) {
    wait_for(Duration::from_secs(10), || {
        m.log().contains("connected as instance").then_some(())
    });
}

/// Local subscribers of an instance (its STATS).
fn local_subscribers(m: &Mailboxd) -> u64 {
    field(&m.ctl().cmd("STATS"), "subscribers").unwrap()
}

/// An SSE stream that has been registered (its instance counts it).
fn subscribe(m: &Mailboxd, path: &str, headers: &[(&str, &str)]) -> HttpStream {
    let before = local_subscribers(m);
    let s = HttpStream::open(m.port, path, headers);
    wait_for(Duration::from_secs(5), || {
        (local_subscribers(m) > before).then_some(())
    });
    s
}

/// nginx with one upstream round-robin over every instance's FastCGI.
fn nginx_over(all: &[Mailboxd]) -> WebServer {
    let servers: Vec<String> = all.iter().map(|m| m.addr("fastcgi")).collect();
    WebServer::nginx("fastcgi", &servers.join("; server "))
}

#[test]
fn a_delivery_through_any_instance_reaches_subscribers_on_every_other() {
    let redis = Redis::start();
    let all = instances(&redis, 3, &[]);
    let mut streams: Vec<HttpStream> = all
        .iter()
        .map(|m| subscribe(m, "/comet/alice", &[]))
        .collect();
    let web = nginx_over(&all);
    let mut via_nginx = HttpStream::open(web.port, "/comet/alice", &[]);
    wait_for(Duration::from_secs(5), || {
        (all.iter().map(local_subscribers).sum::<u64>() == 4).then_some(())
    });
    let mut sent = Vec::new();
    for (i, m) in all.iter().enumerate() {
        let (id, live) = m.ctl().send("alice", &format!("from {i}"));
        assert_eq!(live, 4, "<live> counts every instance's subscribers");
        sent.push(id);
    }
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {sent:?}"
    );
    streams.push(via_nginx);
    for s in &mut streams {
        let got: Vec<(u64, String)> = (0..3)
            .map(|_| {
                let e = s.next_event();
                (e.id.unwrap(), e.data)
            })
            .collect();
        let want: Vec<(u64, String)> = sent
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, format!("from {i}")))
            .collect();
        assert_eq!(got, want, "in id order, exactly once");
    }
    via_nginx = streams.pop().unwrap();
    drop(via_nginx);
    let info = all[2].ctl().cmd("INFO alice");
    assert_eq!(field(&info, "retained"), Some(3), "{info}");
    assert_eq!(field(&info, "last_id"), Some(sent[2]), "{info}");
}

#[test]
fn a_client_resumes_exactly_on_whichever_instance_nginx_picks() {
    let redis = Redis::start();
    let all = instances(&redis, 3, &[]);
    let web = nginx_over(&all);
    let mut ctl = all[0].ctl();
    let (first, _) = ctl.send("bob", "m0");
    let mut last = first;
    let mut served_by = BTreeSet::new();
    for round in 1..=6 {
        // Away: two messages through different instances.
        let a = all[round % 3].ctl().send("bob", &format!("m{round}a")).0;
        let b = all[(round + 1) % 3]
            .ctl()
            .send("bob", &format!("m{round}b"))
            .0;
        let resume = last.to_string();
        let before: Vec<u64> = all.iter().map(local_subscribers).collect();
        let mut s = HttpStream::open(web.port, "/comet/bob", &[("Last-Event-ID", &resume)]);
        let e1 = s.next_event();
        let e2 = s.next_event();
        assert_eq!(
            (e1.id, e1.data.as_str(), e2.id, e2.data.as_str()),
            (
                Some(a),
                format!("m{round}a").as_str(),
                Some(b),
                format!("m{round}b").as_str()
            ),
            "exactly what it missed, no gap"
        );
        let now: Vec<u64> = all.iter().map(local_subscribers).collect();
        let idx = (0..3)
            .find(|&i| now[i] > before[i])
            .expect("one instance serves it");
        served_by.insert(idx);
        // Live from here on, whichever instance it is on.
        let c = all[(idx + 1) % 3]
            .ctl()
            .send("bob", &format!("m{round}c"))
            .0;
        let e3 = s.next_event();
        assert_eq!((e3.id, e3.data), (Some(c), format!("m{round}c")));
        last = c;
        drop(s);
        wait_for(Duration::from_secs(5), || {
            (local_subscribers(&all[idx]) == before[idx]).then_some(())
        });
    }
    assert!(
        served_by.len() >= 2,
        "nginx spread reconnections: {served_by:?}"
    );
}

#[test]
fn publish_except_spans_instances_in_one_notification_each() {
    let redis = Redis::start();
    let all = instances(&redis, 3, &[]);
    let names = ["alice", "bob", "carol"];
    let mut streams: Vec<HttpStream> = all
        .iter()
        .zip(names)
        .map(|(m, n)| subscribe(m, &format!("/comet/{n}"), &[]))
        .collect();
    assert_eq!(all[0].ctl().cmd("JOIN room alice bob carol"), "OK 3");
    let members = all[1].ctl().cmd("MEMBERS room");
    for n in names {
        assert!(members.contains(n), "{members}");
    }
    let (reached, live) = all[1].ctl().publish("room", "hi all", "alice");
    assert_eq!((reached, live), (2, 2));
    for s in &mut streams[1..] {
        assert_eq!(s.next_event().data, "hi all");
    }
    // Alice's next message is the one sent to her alone: no echo came first.
    let (id, _) = all[2].ctl().send("alice", "only alice");
    let e = streams[0].next_event();
    assert_eq!((e.id, e.data.as_str()), (Some(id), "only alice"));
    assert_eq!(all[2].ctl().cmd("LEAVE room bob"), "OK 2");
    assert_eq!(all[0].ctl().publish("room", "no bob", "").0, 2);
    assert_eq!(streams[0].next_event().data, "no bob");
    assert_eq!(streams[2].next_event().data, "no bob");
}

#[test]
fn a_mailbox_expires_only_when_no_instance_has_watched_it_for_the_ttl() {
    let redis = Redis::start();
    let all = instances(&redis, 3, &["--mailbox-ttl", "2"]);
    all[0].ctl().send("dave", "kept while watched");
    assert_eq!(all[0].ctl().cmd("JOIN club dave"), "OK 1");
    let mut s = subscribe(&all[1], "/comet/dave", &[]);
    s.next_event();
    // Watched on instance 1 for longer than the TTL: it stays.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        all[2].ctl().cmd("INFO dave").starts_with("OK"),
        "watched elsewhere"
    );
    drop(s);
    all[1].wait_unsubscribed("dave");
    let gone = Instant::now();
    wait_for(Duration::from_secs(8), || {
        all[2]
            .ctl()
            .cmd("INFO dave")
            .starts_with("ERR NOTFOUND")
            .then_some(())
    });
    assert!(
        gone.elapsed() >= Duration::from_millis(1500),
        "not before the TTL"
    );
    assert_eq!(
        all[0].ctl().cmd("MEMBERS club"),
        "OK 0",
        "it left its groups everywhere"
    );
}

#[test]
fn drop_ends_the_streams_on_every_instance() {
    let redis = Redis::start();
    let all = instances(&redis, 3, &[]);
    let mut a = subscribe(&all[0], "/comet/erin", &[]);
    let mut b = subscribe(&all[1], "/comet/erin", &[]);
    assert_eq!(all[2].ctl().cmd("DROP erin"), "OK");
    assert!(a.closed(), "instance 0 ended its stream");
    assert!(b.closed(), "instance 1 ended its stream");
    assert!(all[0].ctl().cmd("INFO erin").starts_with("ERR NOTFOUND"));
    assert!(all[2].ctl().cmd("DROP erin").starts_with("ERR NOTFOUND"));
}

#[test]
fn a_redis_outage_gets_err_unavailable_and_loses_no_acknowledged_message() {
    let mut redis = Redis::start();
    let all = instances(&redis, 2, &["--retain", "1000"]);
    let mut s = subscribe(&all[1], "/comet/frank", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let sender = {
        let (stop, replies) = (stop.clone(), replies.clone());
        let mut ctl = all[0].ctl();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = ctl.cmd(&format!("SEND frank {}\nn{i}", format!("n{i}").len()));
                replies.lock().unwrap().push((Instant::now(), r));
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let down = Instant::now();
    redis.stop();
    std::thread::sleep(Duration::from_secs(5));
    let up = Instant::now();
    redis.run();
    // Both instances reconnect on their own.
    wait_for(Duration::from_secs(10), || {
        all.iter()
            .all(|m| m.log().matches("connected as instance").count() >= 2)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let replies = replies.lock().unwrap().clone();
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for (at, r) in &replies {
        if r.starts_with("OK ") {
            assert!(
                *at < down + Duration::from_millis(200) || *at > up,
                "no OK while Redis was down: {r}"
            );
            acked.push(parse_ok2(r).0);
        } else {
            assert!(r.starts_with("ERR UNAVAILABLE"), "{r}");
            unavailable += 1;
        }
    }
    assert!(unavailable >= 100, "about 5 s of refusals: {unavailable}");
    assert!(acked.len() >= 150, "{} acknowledged", acked.len());
    // The subscriber (re-connecting if its stream was ended) gets every
    // acknowledged message once, in order, or a gap notice covering it.
    let (last, _) = all[0].ctl().send("frank", "last");
    let mut got = Vec::new();
    let mut gap = false;
    loop {
        match s.next_block() {
            Some(e) if e.event.as_deref() == Some("gap") => gap = true,
            Some(e) if e.comment || e.retry => {}
            Some(e) => {
                let id = e.id.unwrap();
                assert!(
                    got.last().is_none_or(|&l| l < id),
                    "in order, once: {id} after {got:?}"
                );
                got.push(id);
                if id == last {
                    break;
                }
            }
            None => {
                let resume = got.last().copied().unwrap_or(0).to_string();
                s = HttpStream::open(all[1].port, "/comet/frank", &[("Last-Event-ID", &resume)]);
            }
        }
    }
    let got: BTreeSet<u64> = got.into_iter().collect();
    let missing: Vec<u64> = acked
        .iter()
        .filter(|id| !got.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty() || gap,
        "acknowledged but neither delivered nor announced: {missing:?}"
    );
    assert!(!gap, "retention covers the outage: no gap expected");
}

#[test]
fn clients_of_an_instance_killed_with_sigkill_resume_on_the_others() {
    let redis = Redis::start();
    let mut all = instances(&redis, 3, &[]);
    let web = nginx_over(&all);
    let (first, _) = all[0].ctl().send("gina", "before");
    let mut s = HttpStream::open(
        web.port,
        "/comet/gina",
        &[("Last-Event-ID", &(first - 1).to_string())],
    );
    assert_eq!(s.next_event().id, Some(first));
    let victim = wait_for(Duration::from_secs(5), || {
        (0..3).find(|&i| local_subscribers(&all[i]) == 1)
    });
    all[victim].child.kill().unwrap();
    all[victim].child.wait().unwrap();
    assert!(
        s.closed(),
        "the stream through nginx ends with its instance"
    );
    let other = (victim + 1) % 3;
    let missed: Vec<u64> = (0..3)
        .map(|i| all[other].ctl().send("gina", &format!("while away {i}")).0)
        .collect();
    let mut s = HttpStream::open(
        web.port,
        "/comet/gina",
        &[("Last-Event-ID", &first.to_string())],
    );
    assert_eq!(s.status, 200);
    let got: Vec<u64> = (0..3).map(|_| s.next_event().id.unwrap()).collect();
    assert_eq!(got, missed, "exactly what it missed, from Redis");
    let (live, _) = all[(victim + 2) % 3].ctl().send("gina", "live");
    assert_eq!(s.next_event().id, Some(live));
}

#[test]
fn an_instance_cut_off_from_redis_re_feeds_what_it_missed_or_ends_the_stream() {
    let redis = Redis::start();
    // Instance 0 logs in as user `a`, whom the test can lock out.
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "a", "on", ">pw", "~*", "&*", "+@all"]),
        "OK"
    );
    let url = format!("redis://a:pw@127.0.0.1:{}", redis.port);
    let cut = Mailboxd::start_raw(&["--store", &url, "--http", "127.0.0.1:0", "--retain", "3"]);
    wait_connected(&cut);
    let other = instances(&redis, 1, &["--retain", "3"]).pop().unwrap();
    let mut hank = subscribe(&cut, "/comet/hank", &[]);
    let mut ivy = subscribe(&cut, "/comet/ivy", &[]);
    let (h0, _) = other.ctl().send("hank", "h0");
    let (i0, _) = other.ctl().send("ivy", "i0");
    assert_eq!(hank.next_event().id, Some(h0));
    assert_eq!(ivy.next_event().id, Some(i0));
    // Locked out: its connection is killed and it cannot log in again.
    redis.cli(&["ACL", "SETUSER", "a", "off"]);
    redis.cli(&["CLIENT", "KILL", "USER", "a"]);
    wait_for(Duration::from_secs(5), || {
        cut.ctl()
            .cmd("SEND probe 1\nx")
            .starts_with("ERR UNAVAILABLE")
            .then_some(())
    });
    // Meanwhile, through the other instance: two for hank (retained), five
    // for ivy (more than --retain 3 keeps).
    let missed_h: Vec<u64> = (1..=2)
        .map(|i| other.ctl().send("hank", &format!("h{i}")).0)
        .collect();
    let missed_i: Vec<u64> = (1..=5)
        .map(|i| other.ctl().send("ivy", &format!("i{i}")).0)
        .collect();
    redis.cli(&["ACL", "SETUSER", "a", "on"]);
    wait_for(Duration::from_secs(10), || {
        cut.log().contains("without it").then_some(())
    });
    // Hank is re-fed exactly what it missed, once, then goes on live.
    let got: Vec<u64> = (0..2).map(|_| hank.next_event().id.unwrap()).collect();
    assert_eq!(got, missed_h);
    let (h3, _) = other.ctl().send("hank", "h3");
    assert_eq!(hank.next_event().id, Some(h3));
    // Ivy's missed messages are no longer all retained: the stream ends and
    // the resuming client is told of the gap, then gets what is retained.
    assert!(ivy.closed(), "the stream ends rather than skip messages");
    let mut ivy = HttpStream::open(
        cut.port,
        "/comet/ivy",
        &[("Last-Event-ID", &i0.to_string())],
    );
    let gap = ivy.next_event();
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    let got: Vec<u64> = (0..3).map(|_| ivy.next_event().id.unwrap()).collect();
    assert_eq!(got, missed_i[2..]);
}

#[test]
fn garbage_from_the_store_is_refused_and_the_instance_keeps_serving() {
    // Not Redis: answers every connection with bytes that are no RESP3 (and
    // then with a bulk string that claims 4 GiB).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { return };
            count.fetch_add(1, Ordering::Relaxed);
            let reply: &[u8] = if i % 2 == 0 {
                b"\x00\xffnot resp\r\n"
            } else {
                b"$4294967296\r\nabc"
            };
            let _ = std::io::Write::write_all(&mut s, reply);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let m = Mailboxd::start_raw(&["--store", &url, "--http", "127.0.0.1:0"]);
    wait_for(Duration::from_secs(5), || {
        (connections.load(Ordering::Relaxed) >= 3).then_some(())
    });
    let r = m.ctl().cmd("SEND x 1\ny");
    assert!(r.starts_with("ERR UNAVAILABLE"), "{r}");
    assert_eq!(m.ctl().cmd("PING"), "PONG");
    let (status, _, _) = get(m.port, "/comet/x?transport=poll");
    assert_eq!(status, 503);
    assert!(
        m.log().contains("bad RESP3") || m.log().contains("redis"),
        "{}",
        m.log()
    );
}

/// Every SSE event the mailbox holds after `resume`, as a client gets it
/// (the gap notice included), read until `last` arrives.
fn backlog(m: &Mailboxd, mailbox: &str, resume: u64, last: u64) -> Vec<(Option<u64>, String)> {
    let mut s = HttpStream::open(
        m.port,
        &format!("/comet/{mailbox}"),
        &[("Last-Event-ID", &resume.to_string())],
    );
    let mut got = Vec::new();
    loop {
        let e = s.next_event();
        let id = e.id;
        got.push((
            id,
            e.event
                .filter(|ev| ev == "gap")
                .map_or(e.data, |_| "GAP".into()),
        ));
        if id == Some(last) {
            return got;
        }
    }
}

#[test]
fn group_messages_are_kept_per_member_with_their_own_ids_across_join_and_leave() {
    let redis = Redis::start();
    let all = instances(&redis, 2, &["--retain", "4"]);
    let (a, b) = (&all[0], &all[1]);
    let mut ctl = a.ctl();
    let (start, _) = ctl.send("kim", "own 1");
    assert_eq!(ctl.cmd("JOIN team kim lee"), "OK 2");
    let (p1, live) = b.ctl().publish("team", "team 1", "");
    assert_eq!((p1, live), (2, 0), "both reached, nobody connected");
    let (own2, _) = ctl.send("kim", "own 2");
    b.ctl().publish("team", "team 2", "lee");
    // Kim, offline all along, resumes through the other instance: its own
    // and its group's messages, merged in id order, no gap.
    let info = b.ctl().cmd("INFO kim");
    let last = field(&info, "last_id").unwrap();
    assert_eq!(field(&info, "retained"), Some(4), "{info}");
    let got = backlog(b, "kim", start - 1, last);
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["own 1", "team 1", "own 2", "team 2"]);
    let ids: Vec<u64> = got.iter().map(|(id, _)| id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids[2] == own2);
    // Lee was excepted from the second: one message, its own id.
    let lee_last = field(&a.ctl().cmd("INFO lee"), "last_id").unwrap();
    let lee = backlog(a, "lee", 0, lee_last);
    assert_eq!(
        lee.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["team 1"]
    );
    assert_ne!(lee[0].0, got[1].0, "each member its own id");
    // A member joining later does not get what was published before.
    assert_eq!(ctl.cmd("JOIN team max"), "OK 3");
    assert!(field(&a.ctl().cmd("INFO max"), "retained") == Some(0));
    // Live, on both instances, through the group log.
    let mut kim = subscribe(a, "/comet/kim", &[("Last-Event-ID", &last.to_string())]);
    let mut max = subscribe(b, "/comet/max", &[]);
    let (_, live) = a.ctl().publish("team", "team 3", "");
    assert_eq!(live, 2);
    let k3 = kim.next_event();
    let m3 = max.next_event();
    assert_eq!((k3.data.as_str(), m3.data.as_str()), ("team 3", "team 3"));
    assert_ne!(k3.id, m3.id);
    // Leaving keeps what it was sent; what comes after is not for it.
    assert_eq!(ctl.cmd("LEAVE team kim"), "OK 2");
    b.ctl().publish("team", "team 4", "");
    let (own3, _) = ctl.send("kim", "own 3");
    assert_eq!(kim.next_event().id, Some(own3), "team 4 did not reach kim");
    let got = backlog(b, "kim", start - 1, own3);
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    // --retain 4: the oldest went, and a client from the start is told so.
    assert_eq!(texts, ["GAP", "own 2", "team 2", "team 3", "own 3"]);
    // Its slot is free again: a newcomer takes it, with fresh ids.
    assert_eq!(ctl.cmd("JOIN team ned"), "OK 3");
    let (_, live) = a.ctl().publish("team", "team 5", "");
    assert_eq!(live, 1, "max only");
    assert_eq!(max.next_event().data, "team 4");
    assert_eq!(max.next_event().data, "team 5");
    let ned_last = field(&a.ctl().cmd("INFO ned"), "last_id").unwrap();
    let ned = backlog(b, "ned", 0, ned_last);
    assert_eq!(
        ned.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["team 5"]
    );
    let members = a.ctl().cmd("MEMBERS team");
    assert!(
        members.starts_with("OK 3 ") && members.contains("ned") && !members.contains("kim"),
        "{members}"
    );
}

#[test]
fn a_store_that_never_answers_is_given_up_after_the_command_timeout() {
    // Accepts, reads everything, answers nothing (a Redis stopped with
    // SIGSTOP, a black hole on the way).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(std::io::Read::read(&mut s, &mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let m = Mailboxd::start_raw(&["--store", &url, "--http", "127.0.0.1:0"]);
    let started = Instant::now();
    let r = m.ctl().cmd("SEND x 1\ny");
    let waited = started.elapsed();
    assert!(r.starts_with("ERR UNAVAILABLE"), "{r}");
    assert!(
        waited < Duration::from_secs(8),
        "given up within the timeout: {waited:?}"
    );
    wait_for(Duration::from_secs(5), || {
        m.log().contains("no reply within 3 s").then_some(())
    });
    assert_eq!(m.ctl().cmd("PING"), "PONG");
}

#[test]
fn an_upgraded_instance_keeps_its_name_and_its_streams() {
    let redis = Redis::start();
    let dir = TempDir::new("redis-upgrade");
    let pid_file = dir.path().join("a.pid");
    let url = redis.url();
    let mut a = Mailboxd::start_raw(&[
        "--store",
        &url,
        "--http",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    wait_connected(&a);
    let b = instances(&redis, 1, &[]).pop().unwrap();
    let name = |log: &str| -> String {
        let at = log.find("connected as instance ").unwrap() + 22;
        log[at..at + 16].to_string()
    };
    let before = name(&a.log());
    let mut sse = subscribe(&a, "/alice", &[]);

    // Another instance stores a message every 2 ms while A upgrades.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let mut ctl = b.ctl();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (id, _) = ctl.send("alice", &format!("n{}", sent.len()));
                sent.push(id);
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let old = a.child.id();
    signal(old, "USR2");
    let status = wait_for(Duration::from_secs(20), || a.child.try_wait().unwrap());
    assert!(status.success(), "{}", a.log());
    let _new = Orphan(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|&p| p != old)
    }));
    wait_for(Duration::from_secs(10), || {
        (a.log().matches("connected as instance").count() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();

    let after = a.log();
    let second = &after[after.find("took over from the previous process").unwrap()..];
    assert_eq!(name(second), before, "the new process is the same instance");
    let got: Vec<(u64, String)> = (0..sent.len())
        .map(|_| {
            let e = sse.next_event();
            (e.id.unwrap(), e.data)
        })
        .collect();
    let want: Vec<(u64, String)> = sent
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, format!("n{i}")))
        .collect();
    assert_eq!(
        got, want,
        "every message once, in order, on the same stream"
    );
    let (_, live) = b.ctl().send("alice", "after");
    assert_eq!(live, 1, "counted once, under the instance's one name");
    assert_eq!(sse.next_event().data, "after");
}

/// While Redis is unreachable an upgrade is refused (the new process could
/// reopen nothing): the old process keeps every connection and serves on
/// once Redis is back.
#[test]
fn an_upgrade_while_redis_is_down_is_refused() {
    let mut redis = Redis::start();
    let mut a = instances(&redis, 1, &[]).pop().unwrap();
    let mut sse = subscribe(&a, "/comet/alice", &[]);
    redis.stop();
    wait_for(Duration::from_secs(10), || {
        a.ctl()
            .cmd("SEND alice 1\nx")
            .starts_with("ERR UNAVAILABLE")
            .then_some(())
    });
    signal(a.child.id(), "USR2");
    wait_for(Duration::from_secs(10), || {
        a.log()
            .contains("upgrade abandoned: Redis is unreachable")
            .then_some(())
    });
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "the old process stays"
    );
    redis.run();
    let (id, live) = wait_for(Duration::from_secs(15), || {
        let r = a.ctl().cmd("SEND alice 4\nback");
        r.starts_with("OK").then(|| parse_ok2(&r))
    });
    assert_eq!(live, 1, "the stream was kept");
    assert_eq!(sse.next_event().id, Some(id));
    assert_eq!(a.terminate(), Some(0));
}
