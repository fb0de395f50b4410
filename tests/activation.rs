//! Socket activation: the test holds the listening sockets, as systemd
//! would, and starts mailboxd with `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES`. While mailboxd is stopped, a browser's and a backend's
//! connections wait in the kernel's accept queue; the next mailboxd, on the
//! same state directory, serves them.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// mailboxd started on the held sockets, `http` at fd 3 and `control` at 4.
fn start(
    http: RawFd,
    control: RawFd,
    control_path: &std::path::Path,
    state: &std::path::Path,
) -> Mailboxd {
    let state = state.to_str().unwrap();
    start_activated(
        &[(http, "http"), (control, "control")],
        &["--heartbeat", "1", "--state-dir", state],
        &[],
        control_path,
        2,
    )
}

#[test]
fn connections_made_while_mailboxd_is_down_are_served_by_the_next_one() {
    let dir = TempDir::new("held");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    let control_path = dir.path().join("control.sock");
    let control = UnixListener::bind(&control_path).unwrap();

    let state = dir.path().join("state");
    let mut first = start(http.as_raw_fd(), control.as_raw_fd(), &control_path, &state);
    assert!(
        first.log().contains("http socket inherited"),
        "{}",
        first.log()
    );
    let (id, _) = first.ctl().send("alice", "before");
    let mut sse = HttpStream::open(port, "/comet/alice", &[]);
    assert_eq!(sse.next_event().id, Some(id));
    assert_eq!(first.terminate(), Some(0));
    assert!(sse.closed(), "the stream ends with the process");
    assert!(control_path.exists(), "the held socket's file stays");

    // Down: a backend's SEND and a browser's resume both get through to the
    // kernel and wait.
    let mut backend = UnixStream::connect(&control_path).expect("the socket still accepts");
    backend.write_all(b"SEND alice 6\nduring\n").unwrap();
    let resume = id.to_string();
    let waiting = std::thread::spawn(move || {
        let mut sse = HttpStream::open(port, "/comet/alice", &[("Last-Event-ID", &resume)]);
        (sse.status, sse.next_event())
    });
    std::thread::sleep(Duration::from_millis(500));

    let second = start(http.as_raw_fd(), control.as_raw_fd(), &control_path, &state);
    backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = [0u8; 64];
    let n = backend.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(
        reply.starts_with("OK "),
        "the queued SEND was served: {reply}"
    );
    let (status, ev) = waiting.join().unwrap();
    assert_eq!(status, 200, "no refused connection, no error page");
    assert_eq!(ev.data, "during");
    let (after, _) = second.ctl().send("alice", "after");
    assert!(after > ev.id.unwrap());
}

/// Starts mailboxd with `fds` passed as `LISTEN_FDNAMES=names` (and
/// `LISTEN_FDS=count`); it must refuse to start: returns its stderr.
fn refused(fds: Vec<RawFd>, names: &str, count: usize) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\""])
        .arg(bin("mailboxd"))
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names);
    pass_fds(&mut cmd, fds);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_socket_named_for_no_listener_kind_is_refused_at_start() {
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = refused(vec![http.as_raw_fd()], "websocket", 1);
    assert!(err.contains("'websocket' is not a listener kind"), "{err}");
}

#[test]
fn a_passed_descriptor_that_is_no_listening_socket_is_refused_at_start() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = refused(vec![file.as_raw_fd()], "http", 1);
    assert!(err.contains("inherited socket 3 (http)"), "{err}");
    // A stored connection that is no socket, a stored snapshot that is no
    // file.
    let err = refused(vec![file.as_raw_fd()], "conn", 1);
    assert!(err.contains("stored connection 3"), "{err}");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = refused(vec![http.as_raw_fd()], "handover", 1);
    assert!(err.contains("stored snapshot 3"), "{err}");
    // Named sockets must match the count.
    let err = refused(Vec::new(), "http", 2);
    assert!(
        err.contains("LISTEN_FDNAMES names 1 sockets, LISTEN_FDS passes 2"),
        "{err}"
    );
}
