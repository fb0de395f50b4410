//! A restart through systemd's file descriptor store (`FDSTORE=1`): on
//! SIGTERM mailboxd stores its connections, listeners and a snapshot with
//! the service manager and exits; the next process gets them back by name
//! and carries on every connection.
//!
//! systemd cannot run as the service manager inside the test container, so
//! the test plays its part of the documented protocol (`sd_notify(3)`,
//! `sd_listen_fds(3)`, docs/FILE_DESCRIPTOR_STORE.md): it receives the
//! notification datagrams on `$NOTIFY_SOCKET`, keeps the descriptors, and
//! starts the next mailboxd with them in `LISTEN_FDS`/`LISTEN_FDNAMES`, in
//! another order than they were stored, as systemd may.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The service manager's end of `$NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
}

/// One notification: its text and the descriptors it carried.
struct Note {
    text: String,
    fds: Vec<OwnedFd>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Manager { socket }
    }

    fn receive(&self) -> Note {
        let mut text = vec![0u8; 4096];
        let mut control = vec![0u8; 8192];
        let mut iov = libc::iovec {
            iov_base: text.as_mut_ptr().cast(),
            iov_len: text.len(),
        };
        // SAFETY: msghdr is plain data; every pointer below outlives recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: a datagram socket we own and the buffers above.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert!(
            n >= 0,
            "no notification: {}",
            std::io::Error::last_os_error()
        );
        let mut fds = Vec::new();
        // SAFETY: walking the control messages the kernel wrote.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Note {
            text: String::from_utf8_lossy(&text[..n as usize]).into_owned(),
            fds,
        }
    }

    /// Receives until a notification containing `line` arrives.
    fn until(&self, line: &str) -> Vec<Note> {
        let mut notes = Vec::new();
        loop {
            let note = self.receive();
            let done = note.text.lines().any(|l| l == line);
            notes.push(note);
            if done {
                return notes;
            }
        }
    }
}

fn fdname(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("FDNAME="))
}

/// Sends SIGTERM and receives what mailboxd stores, until it has exited.
fn into_store(manager: &Manager, srv: &mut Mailboxd) -> Vec<(String, OwnedFd)> {
    signal(srv.child.id(), "TERM");
    let notes = manager.until("FDNAME=conn");
    let status = wait_for(Duration::from_secs(10), || srv.child.try_wait().unwrap());
    assert!(status.success(), "{}", srv.log());
    wait_for(Duration::from_secs(5), || {
        srv.log()
            .contains("with the service manager; exiting")
            .then_some(())
    });
    let mut stored = Vec::new();
    for note in notes {
        assert!(note.text.contains("FDSTORE=1"), "{}", note.text);
        let name = fdname(&note.text).unwrap().to_string();
        for fd in note.fds {
            stored.push((name.clone(), fd));
        }
    }
    stored
}

/// The names a new process removed from the store, until it said it is ready.
fn removed_until_ready(manager: &Manager) -> Vec<String> {
    manager
        .until("READY=1")
        .iter()
        .filter(|n| n.text.contains("FDSTOREREMOVE=1"))
        .filter_map(|n| fdname(&n.text).map(str::to_string))
        .collect()
}

#[test]
fn a_restart_through_the_file_descriptor_store_keeps_every_connection() {
    let dir = TempDir::new("fdstore");
    let notify = dir.path().join("notify.sock");
    let manager = Manager::bind(&notify);
    let notify_env = notify.to_str().unwrap().to_string();
    let state = dir.path().join("state");
    let env = [("NOTIFY_SOCKET", notify_env.as_str()), ("FDSTORE", "1000")];
    let args = ["--state-dir", state.to_str().unwrap(), "--heartbeat", "30"];
    let mut first = Mailboxd::start_env(&[&["--http", "127.0.0.1:0"], &args[..]].concat(), &env);
    manager.until("READY=1");

    let mut sse = HttpStream::open(first.port, "/alice", &[]);
    let mut ctl = first.ctl();
    let (before, _) = ctl.send("alice", "before");
    assert_eq!(sse.next_event().id, Some(before));
    let mut half = first.ctl();
    half.write(b"SEND alice 6\nacr");
    std::thread::sleep(Duration::from_millis(100));

    let mut stored = into_store(&manager, &mut first);
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["handover", "http", "control"] {
        assert_eq!(names.iter().filter(|n| **n == want).count(), 1, "{names:?}");
    }
    // The SSE client and both backends.
    assert_eq!(
        names.iter().filter(|n| **n == "conn").count(),
        3,
        "{names:?}"
    );

    // Down a moment; meanwhile the stored connections and listeners are
    // held by the manager alone, and a new backend waits in the queue.
    let mut late = std::os::unix::net::UnixStream::connect(&first.control).unwrap();
    late.write_all(b"SEND alice 4\nlate\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The next process gets them in reverse order.
    stored.reverse();
    let sockets: Vec<(RawFd, &str)> = stored
        .iter()
        .map(|(n, fd)| (fd.as_raw_fd(), n.as_str()))
        .collect();
    let second = start_activated(&sockets, &args, &env, &first.control, 2);
    assert_eq!(removed_until_ready(&manager), vec!["conn", "handover"]);
    drop(stored);
    // (The log is read on another thread: wait for the line.)
    wait_for(Duration::from_secs(5), || {
        second
            .log()
            .contains("took over from the file descriptor store")
            .then_some(())
    });

    // The half-written command completes; the queued one is served; the
    // stream never closed and gets both, then a message after, once each.
    half.write(b"oss\n");
    let (across, live) = parse_ok2(&half.line());
    assert_eq!(live, 1);
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&late).read_line(&mut line).unwrap();
    let (late_id, _) = parse_ok2(line.trim_end());
    let (after, live) = ctl.send("alice", "after");
    assert_eq!(live, 1);
    let mut got = vec![sse.next_event(), sse.next_event(), sse.next_event()];
    got.sort_by_key(|e| e.id);
    let mut want = vec![
        (Some(across), "across".to_string()),
        (Some(late_id), "late".to_string()),
        (Some(after), "after".to_string()),
    ];
    want.sort();
    assert_eq!(
        got.into_iter().map(|e| (e.id, e.data)).collect::<Vec<_>>(),
        want
    );
    let stats = second.ctl().cmd("STATS");
    assert_eq!(field(&stats, "subscribers"), Some(1), "{stats}");
}

#[test]
fn without_room_in_the_store_sigterm_stops_cleanly() {
    let dir = TempDir::new("fdstore-small");
    let notify = dir.path().join("notify.sock");
    let manager = Manager::bind(&notify);
    let notify_env = notify.to_str().unwrap().to_string();
    let mut srv = Mailboxd::start_env(
        &["--http", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", notify_env.as_str()), ("FDSTORE", "2")],
    );
    manager.until("READY=1");
    let mut sse = HttpStream::open(srv.port, "/alice", &[]);
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    assert_eq!(srv.terminate(), Some(0));
    assert!(sse.closed(), "the stream was ended, as at any clean stop");
    wait_for(Duration::from_secs(5), || {
        srv.log()
            .contains("raise FileDescriptorStoreMax")
            .then_some(())
    });
}

/// A stored snapshot that cannot be read (damaged, another version) does
/// not keep the service from starting: the process logs it, closes the
/// stored connections (their clients reconnect) and removes them from the
/// store.
#[test]
fn a_damaged_stored_snapshot_starts_afresh() {
    let dir = TempDir::new("fdstore-damaged");
    let notify = dir.path().join("notify.sock");
    let manager = Manager::bind(&notify);
    let notify_env = notify.to_str().unwrap().to_string();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"MBXHAND\x01 and then nonsense").unwrap();
    let garbage = std::fs::File::open(&garbage).unwrap();
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(peer.local_addr().unwrap()).unwrap();
    let (stored, _) = peer.accept().unwrap();
    let control = dir.path().join("control.sock");
    let sockets = [
        (http.as_raw_fd(), "http"),
        (garbage.as_raw_fd(), "handover"),
        (stored.as_raw_fd(), "conn"),
    ];
    let env = [("NOTIFY_SOCKET", notify_env.as_str()), ("FDSTORE", "100")];
    let control_arg = control.to_str().unwrap();
    let srv = start_activated(&sockets, &["--control", control_arg], &env, &control, 2);
    drop(stored);
    assert_eq!(removed_until_ready(&manager), vec!["conn", "handover"]);
    wait_for(Duration::from_secs(5), || {
        srv.log().contains("starting afresh").then_some(())
    });
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        std::io::Read::read(&mut client, &mut buf).unwrap(),
        0,
        "the stored connection was closed"
    );
    // It serves.
    let (id, _) = srv.ctl().send("alice", "fresh");
    let mut sse = HttpStream::open(port, "/alice", &[]);
    assert_eq!(sse.next_event().id, Some(id));
}

/// A client that leaves while systemd holds its connection: systemd drops
/// the socket (it watches stored ones for hang-ups, as this test does with
/// `POLLRDHUP`), and the next process skips its record and serves the rest.
#[test]
fn a_client_that_left_while_stored_is_skipped() {
    let dir = TempDir::new("fdstore-left");
    let notify = dir.path().join("notify.sock");
    let manager = Manager::bind(&notify);
    let notify_env = notify.to_str().unwrap().to_string();
    let env = [("NOTIFY_SOCKET", notify_env.as_str()), ("FDSTORE", "1000")];
    let mut first = Mailboxd::start_env(&["--http", "127.0.0.1:0"], &env);
    manager.until("READY=1");
    let mut stays = HttpStream::open(first.port, "/alice", &[]);
    let leaves = request(first.port, "/bob", &[]);
    first.wait_info("bob", |r| r.contains("subscribers=1"));
    let stored = into_store(&manager, &mut first);
    drop(leaves);
    std::thread::sleep(Duration::from_millis(100));
    let kept: Vec<(String, OwnedFd)> = stored
        .into_iter()
        .filter(|(name, fd)| {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: polling one descriptor we hold, without waiting.
            unsafe { libc::poll(&mut p, 1, 0) };
            name != "conn" || p.revents & (libc::POLLRDHUP | libc::POLLHUP) == 0
        })
        .collect();
    assert_eq!(kept.iter().filter(|(n, _)| n == "conn").count(), 1);
    let sockets: Vec<(RawFd, &str)> = kept
        .iter()
        .map(|(n, fd)| (fd.as_raw_fd(), n.as_str()))
        .collect();
    let second = start_activated(&sockets, &[], &env, &first.control, 2);
    removed_until_ready(&manager);
    wait_for(Duration::from_secs(5), || {
        second
            .log()
            .contains("1 connections handed over had closed meanwhile")
            .then_some(())
    });
    let (id, live) = second.ctl().send("alice", "still here");
    assert_eq!(live, 1);
    assert_eq!(stays.next_event().id, Some(id));
}

/// A service manager that cannot be reached (a notify socket nobody reads,
/// or a name that is not a socket address): SIGTERM stops cleanly, as it
/// does without one; nothing is left half stored.
#[test]
fn an_unreachable_service_manager_means_a_clean_stop() {
    let dir = TempDir::new("fdstore-gone");
    let gone = dir.path().join("gone.sock");
    drop(Manager::bind(&gone));
    let gone = gone.to_str().unwrap().to_string();
    for (socket, says) in [
        (
            gone.as_str(),
            "cannot store the connections with the service manager",
        ),
        (
            "relative/notify.sock",
            "NOTIFY_SOCKET is neither a path nor an abstract name",
        ),
    ] {
        let mut srv = Mailboxd::start_env(
            &["--http", "127.0.0.1:0"],
            &[("NOTIFY_SOCKET", socket), ("FDSTORE", "1000")],
        );
        let mut sse = HttpStream::open(srv.port, "/alice", &[]);
        srv.wait_info("alice", |r| r.contains("subscribers=1"));
        assert_eq!(srv.terminate(), Some(0), "{socket}");
        assert!(sse.closed(), "{socket}: the stream was ended cleanly");
        wait_for(Duration::from_secs(5), || {
            srv.log().contains(says).then_some(())
        });
    }
}
