//! Binary upgrade on SIGUSR2: the running mailboxd starts its binary again
//! and hands it every listener and connection. Clients, direct or behind
//! nginx over FastCGI, and backends on the control socket keep their
//! connections; nothing is lost or sent twice; a new binary that fails
//! leaves the old process serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends SIGUSR2 and waits for the old process to exit and the new one to
/// write its pid; returns the new pid.
fn upgrade(srv: &mut Mailboxd, pid_file: &Path) -> Orphan {
    let old = srv.child.id();
    signal(old, "USR2");
    let status = wait_for(Duration::from_secs(20), || srv.child.try_wait().unwrap());
    assert!(
        status.success(),
        "old process: {status}; log:\n{}",
        srv.log()
    );
    let new = wait_for(Duration::from_secs(5), || {
        read_pid(pid_file).filter(|&p| p != old)
    });
    Orphan(new)
}

/// The figures the old process logged as it handed over.
fn handed(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("took over") && l.contains("connections ("))
        .unwrap_or_else(|| panic!("no handover line in:\n{log}"));
    let number_before = |word: &str| -> u64 {
        let at = line.find(word).unwrap();
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        number_before(" connections ("),
        line[line.find("connections (").unwrap() + 13..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

/// A client socket with a tiny receive buffer, so that what it does not
/// read piles up in mailboxd's output queue instead of the kernel's.
fn slow_client(port: u16, path: &str) -> HttpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = socket.into();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    HttpStream::from_stream(Box::new(s))
}

/// A payload of `len` bytes that says which message it is.
fn big(n: usize, len: usize) -> String {
    let head = format!("big-{n}-");
    let mut s = head.clone();
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

fn stats(srv_control: &Path) -> String {
    Ctl::connect(srv_control).cmd("STATS")
}

#[test]
fn sigusr2_moves_every_connection_to_the_new_binary() {
    const DIRECT: usize = 1000;
    const NGINX: usize = 200;
    const BIG: usize = 60_000;
    const BIGS: usize = 160;
    let dir = TempDir::new("upgrade");
    let fcgi = dir.path().join("fastcgi.sock");
    let pid_file = dir.path().join("mailboxd.pid");
    let fcgi_addr = format!("unix:{}", fcgi.display());
    let mut srv = Mailboxd::start(&[
        "--fastcgi",
        &fcgi_addr,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--socket-mode",
        "0666",
        "--max-output",
        "16777216",
        "--retain",
        "100",
        "--retain-bytes",
        "4194304",
    ]);
    let web = WebServer::nginx("fastcgi", &fcgi_addr);
    let control = srv.control.clone();

    // 1,000 clients direct and 200 through nginx, all in one group.
    let mut clients: Vec<HttpStream> = (0..DIRECT)
        .map(|i| HttpStream::open(srv.port, &format!("/m{i}"), &[]))
        .chain(
            (DIRECT..DIRECT + NGINX)
                .map(|i| HttpStream::open(web.port, &format!("/comet/m{i}"), &[])),
        )
        .collect();
    let mut ctl = srv.ctl();
    let names: Vec<String> = (0..DIRECT + NGINX).map(|i| format!("m{i}")).collect();
    for chunk in names.chunks(200) {
        let reply = ctl.cmd(&format!("JOIN all {}", chunk.join(" ")));
        assert!(reply.starts_with("OK"), "{reply}");
    }
    wait_for(Duration::from_secs(10), || {
        let s = stats(&control);
        (field(&s, "subscribers") == Some((DIRECT + NGINX) as u64)).then_some(())
    });
    let (_, live) = ctl.publish("all", "before", "");
    assert_eq!(live, DIRECT + NGINX);
    for c in &mut clients {
        assert_eq!(c.next_event().data, "before");
    }

    // Four clients that do not read while 9.6 MB each is sent to them (more
    // than the kernel buffers hold, so some waits in mailboxd):
    // two direct, two through nginx (whose 512-byte buffer stops reading
    // from mailboxd when its client does not read).
    let mut slow = [
        slow_client(srv.port, "/s0"),
        slow_client(srv.port, "/s1"),
        slow_client(web.port, "/comet/s2"),
        slow_client(web.port, "/comet/s3"),
    ];
    wait_for(Duration::from_secs(10), || {
        (field(&stats(&control), "subscribers") == Some((DIRECT + NGINX + 4) as u64)).then_some(())
    });
    let mut big_ids = vec![Vec::new(); 4];
    for n in 0..BIGS {
        for (s, ids) in big_ids.iter_mut().enumerate() {
            let (id, live) = ctl.send(&format!("s{s}"), &big(n, BIG));
            assert_eq!(live, 1);
            ids.push(id);
        }
    }

    // A backend with half a command written, and one sending every 2 ms
    // throughout the upgrade to a client that reads as it goes.
    let mut half = srv.ctl();
    half.write(b"SEND p0 5\nhel");
    let mut seq_client = HttpStream::open(srv.port, "/q0", &[]);
    let mut p0 = HttpStream::open(srv.port, "/p0", &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let mut seq_ctl = srv.ctl();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (id, _) = seq_ctl.send("q0", &format!("seq-{n}"));
                sent.push(id);
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let accepted_before = field(&stats(&control), "accepted").unwrap();
    let new_pid = upgrade(&mut srv, &pid_file);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let log = wait_for(Duration::from_secs(5), || {
        let log = srv.log();
        log.contains("connections (").then_some(log)
    });
    let (moved, pending) = handed(&log);
    assert!(moved >= (DIRECT + NGINX + 4 + 2) as u64, "{log}");
    assert!(pending > 0, "some output was waiting in mailboxd: {log}");
    assert!(accepted_before > 0);

    // The half-written command completes on the same connection.
    half.write(b"lo\n");
    let (hello_id, live) = parse_ok2(&half.line());
    assert_eq!(live, 1);
    let ev = p0.next_event();
    assert_eq!((ev.id, ev.data.as_str()), (Some(hello_id), "hello"));

    // Every message sent during the upgrade, once, in order.
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let ev = seq_client.next_event();
        assert_eq!(ev.data, format!("seq-{}", got.len()));
        got.push(ev.id.unwrap());
    }
    assert_eq!(got, sent);

    // A group message after the upgrade reaches all 1,200, exactly once:
    // the next thing on each stream, which was never closed.
    let mut ctl = Ctl::connect(&control);
    let (_, live) = ctl.publish("all", "after", "");
    assert_eq!(live, DIRECT + NGINX);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.next_event().data, "after", "client {i}");
    }
    // The slow clients read everything now, intact and in order.
    for (s, c) in slow.iter_mut().enumerate() {
        for (n, id) in big_ids[s].iter().enumerate() {
            let ev = c.next_event();
            assert_eq!(ev.id, Some(*id), "slow client {s} message {n}");
            assert!(
                ev.data == big(n, BIG),
                "slow client {s} message {n} damaged"
            );
        }
    }
    // Nobody reconnected: the new process accepted only the control
    // connections made since.
    let after = stats(&control);
    assert_eq!(field(&after, "accepted"), Some(2), "{after}");
    assert_eq!(
        field(&after, "subscribers"),
        Some((DIRECT + NGINX + 6) as u64)
    );
    drop(new_pid);
}

/// mailboxd run from a copy of its binary in `dir`, so the test can
/// replace that file as an administrator would.
fn start_copy(dir: &Path, extra: &[&str]) -> (Mailboxd, PathBuf, PathBuf) {
    let exe = dir.join("mailboxd");
    std::fs::copy(bin("mailboxd"), &exe).unwrap();
    let pid_file = dir.join("mailboxd.pid");
    let control = dir.join("control.sock");
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--control")
        .arg(&control)
        .args(["--http", "127.0.0.1:0", "--pid-file"])
        .arg(&pid_file)
        .args(extra);
    let srv = Mailboxd::spawn(cmd, TempDir::new("copy"), control, 2);
    (srv, exe, pid_file)
}

/// Replaces the binary at `exe` by a shell script, as a rename would.
fn replace_with_script(exe: &Path, script: &str) {
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

fn wait_log(srv: &Mailboxd, text: &str, times: usize) {
    wait_for(Duration::from_secs(20), || {
        (srv.log().matches(text).count() >= times).then_some(())
    });
}

#[test]
fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let dir = TempDir::new("rollback");
    let (mut srv, exe, pid_file) = start_copy(dir.path(), &["--heartbeat", "1"]);
    let real = dir.path().join("mailboxd.real");
    std::fs::copy(&exe, &real).unwrap();
    let mut sse = HttpStream::open(srv.port, "/alice", &[]);
    let mut ctl = srv.ctl();
    let (first, _) = ctl.send("alice", "one");
    assert_eq!(sse.next_event().id, Some(first));
    let old = srv.child.id();

    // Exits at once; says why (the new binary refuses this state); never
    // answers. Each time the old process goes on, with every connection.
    let cases = [
        ("exit 3", "exited before it was ready"),
        (
            // The real binary, on another store than the running one.
            &format!("exec {} --store redis://127.0.0.1:1 \"$@\"", real.display()) as &str,
            "the store changed",
        ),
        ("exec sleep 60", "not ready within 10 s"),
        (
            // Says it is ready, then never confirms it took over.
            "exec python3 -c 'import os, time; os.write(int(os.environ[\"MAILBOXD_HANDOVER\"].split(\":\")[1]), b\"R\"); time.sleep(60)'",
            "did not confirm it took over",
        ),
    ];
    for (n, (script, why)) in cases.iter().enumerate() {
        replace_with_script(&exe, script);
        let t = Instant::now();
        signal(old, "USR2");
        wait_log(&srv, "upgrade abandoned", n + 1);
        assert!(srv.log().contains(why), "{why}:\n{}", srv.log());
        assert!(t.elapsed() < Duration::from_secs(15));
        assert!(
            srv.child.try_wait().unwrap().is_none(),
            "the old process stays"
        );
        let (id, live) = ctl.send("alice", &format!("after failure {n}"));
        assert_eq!(live, 1);
        let ev = sse.next_event();
        assert_eq!((ev.id, ev.data), (Some(id), format!("after failure {n}")));
        assert_eq!(read_pid(&pid_file), Some(old));
    }
    // New connections are served too (the listeners were not lost).
    let mut other = HttpStream::open(srv.port, "/bob", &[]);
    let (id, _) = Ctl::connect(&srv.control).send("bob", "hi");
    assert_eq!(other.next_event().id, Some(id));

    // With the real binary back, the upgrade goes through.
    std::fs::rename(&real, &exe).unwrap();
    let _new = upgrade(&mut srv, &pid_file);
    let (id, live) = ctl.send("alice", "upgraded");
    assert_eq!(live, 1);
    assert_eq!(sse.next_event().id, Some(id));
}

#[test]
fn state_dir_and_long_polls_move_too() {
    let dir = TempDir::new("upgrade-state");
    let state = dir.path().join("state");
    let pid_file = dir.path().join("pid");
    let mut srv = Mailboxd::start(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let mut ctl = srv.ctl();
    let (kept, _) = ctl.send("waiting", "kept across the upgrade");
    // A long-poll held on an empty mailbox, its head not yet written.
    let mut poll = request(srv.port, "/polled?transport=poll", &[]);
    srv.wait_info("polled", |r| r.contains("subscribers=1"));
    let _new = upgrade(&mut srv, &pid_file);
    let lock = std::fs::read_to_string(state.join("LOCK")).unwrap();
    assert_eq!(lock.trim().parse::<u32>().ok(), read_pid(&pid_file));
    let (id, live) = ctl.send("polled", "answer");
    assert_eq!(live, 1, "the long-poll is still held");
    let mut answer = String::new();
    poll.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !answer.contains("\"last_id\"") {
        let n = poll.read(&mut buf).unwrap();
        assert!(n > 0, "{answer}");
        answer.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(poll_ids(&answer), vec![id]);
    // What was retained before is still there.
    let mut sse = HttpStream::open(srv.port, "/waiting", &[]);
    assert_eq!(sse.next_event().id, Some(kept));
}

/// Runs mailboxd with `MAILBOXD_HANDOVER` naming `snapshot` at fd 3 and one
/// end of a socket pair at 4 (plus `extra` at 5, 6, ...), as a predecessor
/// would; returns its exit status, its stderr, and what it told the
/// predecessor's end.
fn inherit(snapshot: &[u8], extra: &[std::os::fd::RawFd]) -> (Option<i32>, String, String) {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("inherit");
    let file = dir.path().join("snapshot");
    std::fs::write(&file, snapshot).unwrap();
    let snapshot = std::fs::File::open(&file).unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut fds = vec![snapshot.as_raw_fd(), theirs.as_raw_fd()];
    fds.extend_from_slice(extra);
    let mut cmd = std::process::Command::new(bin("mailboxd"));
    cmd.args(["--http", "127.0.0.1:0", "--control"])
        .arg(dir.path().join("control.sock"))
        .env("MAILBOXD_HANDOVER", "3:4");
    pass_fds(&mut cmd, fds);
    let out = cmd.output().unwrap();
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut told = String::new();
    let _ = (&ours).read_to_string(&mut told);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        told,
    )
}

/// What a process inherits comes from whoever starts it: garbage, a damaged
/// snapshot, or descriptors that are not what the snapshot says are refused
/// with a clear line (and told to the predecessor, which keeps serving),
/// never used.
#[test]
fn a_hostile_inheritance_is_refused_before_anything_is_touched() {
    use mailboxd::wire::handover::{self, ConnRecord, SessionRecord, Snapshot, StoreState};
    use std::os::fd::AsRawFd;
    // Not two descriptor numbers.
    let out = std::process::Command::new(bin("mailboxd"))
        .env("MAILBOXD_HANDOVER", "three:four")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not two descriptor numbers"));
    // Descriptors that are not open.
    let out = std::process::Command::new(bin("mailboxd"))
        .env("MAILBOXD_HANDOVER", "900:901")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("snapshot descriptor 900"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Garbage, and a snapshot cut short.
    let (code, err, told) = inherit(b"not a snapshot at all", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a handover snapshot"), "{err}");
    assert!(told.starts_with("Enot a handover snapshot"), "{told:?}");
    let conn = |fd| ConnRecord {
        fd,
        ino: 1,
        unix: false,
        close_after_flush: false,
        paused: false,
        deadline_ms: 0,
        out: Vec::new(),
        input: Vec::new(),
        session: SessionRecord::Http {
            keep_alive: false,
            exchange: None,
        },
    };
    let valid = |conns| {
        handover::encode(&Snapshot {
            taken_ms: 1,
            store: StoreState::Memory(Vec::new()),
            listeners: Vec::new(),
            conns,
        })
    };
    let bytes = valid(vec![conn(5)]);
    let (code, err, _) = inherit(&bytes[..bytes.len() - 3], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("damaged"), "{err}");

    // A connection record naming a file that is no socket, and one naming
    // a socket that is not the one recorded (its inode differs).
    let file = std::fs::File::open("/dev/null").unwrap();
    let (code, err, told) = inherit(&valid(vec![conn(5)]), &[file.as_raw_fd()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("connection descriptor 5"), "{err}");
    assert!(told.starts_with('E'), "{told:?}");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(socket.local_addr().unwrap()).unwrap();
    let (code, err, _) = inherit(&valid(vec![conn(5)]), &[client.as_raw_fd()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not the connection recorded"), "{err}");
    // The same descriptor named twice.
    let (code, err, _) = inherit(&valid(vec![conn(5), conn(5)]), &[client.as_raw_fd()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not the connection recorded") || err.contains("twice"),
        "{err}"
    );
}

/// A link planted where the pid file's temporary copy goes is not written
/// through (mailboxd often runs as root): the victim stays as it was.
#[test]
fn the_pid_file_is_never_written_through_a_planted_link() {
    let dir = TempDir::new("pidfile");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.path().join("mailboxd.pid");
    std::os::unix::fs::symlink(&victim, dir.path().join("mailboxd.pid.tmp")).unwrap();
    let mut srv = Mailboxd::start(&["--pid-file", pid_file.to_str().unwrap()]);
    let pid = wait_for(Duration::from_secs(5), || read_pid(&pid_file));
    assert_eq!(pid, srv.child.id());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(srv.terminate(), Some(0));
    assert!(!pid_file.exists(), "removed at a clean stop");
}

/// Sockets systemd passed (socket activation) move in an upgrade like any
/// listener, and stay systemd's: after the new process stops, the held
/// socket's file is still there and still accepts.
#[test]
fn socket_activated_listeners_move_and_stay_the_service_managers() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("upgrade-activated");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    let control_path = dir.path().join("control.sock");
    let control = std::os::unix::net::UnixListener::bind(&control_path).unwrap();
    let pid_file = dir.path().join("pid");
    let mut srv = start_activated(
        &[(http.as_raw_fd(), "http"), (control.as_raw_fd(), "control")],
        &["--pid-file", pid_file.to_str().unwrap()],
        &[],
        &control_path,
        2,
    );
    let mut sse = HttpStream::open(port, "/alice", &[]);
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let new = upgrade(&mut srv, &pid_file);
    let (id, live) = Ctl::connect(&control_path).send("alice", "after");
    assert_eq!(live, 1);
    assert_eq!(sse.next_event().id, Some(id));
    drop(new);
    assert!(
        control_path.exists(),
        "the held socket's file is not removed"
    );
    std::os::unix::net::UnixStream::connect(&control_path).expect("still accepting (queued)");
}
