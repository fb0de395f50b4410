//! Start-up, shutdown, sockets on disk, configuration, and the mailboxctl CLI.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn sigterm_ends_streams_answers_polls_and_removes_the_socket() {
    let mut srv = Mailboxd::start(&[]);
    let mut sse = HttpStream::open(srv.port, "/comet/a", &[]);
    let poll = request(srv.port, "/comet/b?transport=poll", &[]);
    srv.wait_info("a", |r| r.contains("subscribers=1"));
    srv.wait_info("b", |r| r.contains("subscribers=1"));
    assert!(srv.control.exists());
    assert_eq!(srv.terminate(), Some(0));
    assert!(sse.closed(), "SSE stream ended");
    assert!(
        HttpStream::from_stream(Box::new(poll))
            .body()
            .starts_with(r#"{"messages":[]"#),
        "held poll answered"
    );
    assert!(!srv.control.exists(), "control socket removed");
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_refused() {
    let dir = TempDir::new("stale");
    let path = dir.path().join("ctl.sock");
    // A socket file nobody listens on, as a crash leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut cmd = Command::new(bin("mailboxd"));
    cmd.arg("--control")
        .arg(&path)
        .args(["--http", "127.0.0.1:0"]);
    let srv = Mailboxd::spawn(cmd, TempDir::new("stale-srv"), path.clone(), 2);
    assert_eq!(srv.ctl().cmd("PING"), "PONG");

    let out = Command::new(bin("mailboxd"))
        .arg("--control")
        .arg(&path)
        .args(["--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is listening there"), "{err}");
    assert_eq!(
        srv.ctl().cmd("PING"),
        "PONG",
        "the first instance is untouched"
    );
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "retain = 10\nheartbaet = 5\n").unwrap();
    for (args, want) in [
        (
            vec!["--retain", "many"],
            "--retain: 'many' is not a whole number",
        ),
        (vec!["--bogus", "1"], "unknown option --bogus"),
        (vec!["--config", cfg.to_str().unwrap()], "heartbaet"),
        (
            vec!["--config", "/nonexistent/x.toml"],
            "/nonexistent/x.toml",
        ),
        (vec!["--http", "127.0.0.1:99999"], "HOST:PORT"),
    ] {
        let out = Command::new(bin("mailboxd")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let help = Command::new(bin("mailboxd")).arg("-h").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--http",
        "--control",
        "--config",
        "--retain",
        "--retain-bytes",
        "--max-subscribers",
        "--mailbox-ttl",
        "--heartbeat",
        "--poll-timeout",
        "--max-message",
        "--max-output",
        "--max-connections",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn config_file_settings_apply() {
    let dir = TempDir::new("cfg");
    let cfg = dir.path().join("mailboxd.toml");
    std::fs::write(&cfg, "http = [\"127.0.0.1:0\"]\nretain = 2\n").unwrap();
    let srv = Mailboxd::start_raw(&["--config", cfg.to_str().unwrap()]);
    let mut ctl = srv.ctl();
    for i in 0..5 {
        ctl.send("cfg", &i.to_string());
    }
    assert!(ctl.cmd("INFO cfg").contains("retained=2"));
}

fn ctl_cmd(srv: &Mailboxd, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut child = Command::new(bin("mailboxctl"))
        .arg("-s")
        .arg(&srv.control)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text.trim_end().to_string())
}

#[test]
fn mailboxctl_drives_the_protocol() {
    let srv = Mailboxd::start(&[]);
    assert_eq!(ctl_cmd(&srv, &["ping"], None), (0, "PONG".into()));
    assert_eq!(
        ctl_cmd(&srv, &["join", "chat", "alice", "bob"], None),
        (0, "OK 2".into())
    );
    let mut bob = HttpStream::open(srv.port, "/comet/bob", &[]);
    let mut alice = HttpStream::open(srv.port, "/comet/alice", &[]);
    srv.wait_info("bob", |r| r.contains("subscribers=1"));
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let (code, out) = ctl_cmd(
        &srv,
        &[
            "publish", "chat", "-", "--except", "alice", "--event", "msg",
        ],
        Some("hi\n"),
    );
    assert_eq!((code, out.as_str()), (0, "OK 1 1"));
    let ev = bob.next_event();
    assert_eq!((ev.data.as_str(), ev.event.as_deref()), ("hi", Some("msg")));
    let (code, out) = ctl_cmd(&srv, &["send", "alice", "hello alice"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("OK ") && out.ends_with(" 1"), "{out}");
    assert_eq!(alice.next_event().data, "hello alice");
    assert!(
        ctl_cmd(&srv, &["stats"], None)
            .1
            .starts_with("OK connections=")
    );
    assert!(
        ctl_cmd(&srv, &["info", "alice"], None)
            .1
            .starts_with("OK subscribers=1")
    );
    assert_eq!(ctl_cmd(&srv, &["members", "chat"], None).0, 0);
    let (code, out) = ctl_cmd(&srv, &["info", "nobody"], None);
    assert_eq!(code, 1);
    assert!(out.starts_with("ERR NOTFOUND"));
    assert_eq!(ctl_cmd(&srv, &["send", "bad/name", "x"], None).0, 1);
    assert_eq!(ctl_cmd(&srv, &["frobnicate"], None).0, 2);
    assert_eq!(ctl_cmd(&srv, &["drop", "alice"], None), (0, "OK".into()));
    assert_eq!(
        ctl_cmd(&srv, &["leave", "chat", "bob"], None),
        (0, "OK 0".into())
    );
    let missing = Command::new(bin("mailboxctl"))
        .args(["-s", "/nonexistent.sock", "ping"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}
