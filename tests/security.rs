//! Signed access and local trust, against the real binary: tokens on every
//! gateway (directly and through nginx), the secret file's checks and
//! rotation, the control socket's directory, mode and allow-list, and the
//! gateway allow-list.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use mailboxd::auth::Secret;

const KEY: &str = "integration-test-key-0123456789abcdef";

fn write_secret(dir: &Path, key: &str, mode: u32) -> String {
    let path = dir.join("secret");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_string_lossy().into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(mailbox: &str, ttl: i64) -> String {
    let expiry = (unix_now() as i64 + ttl) as u64;
    Secret::from_key(KEY.as_bytes())
        .unwrap()
        .mint(mailbox, expiry)
}

/// Checks the token rules through `port` (mailboxd itself or a web server).
fn tokens_enforced(srv: &Mailboxd, port: u16, label: &str) {
    let mut ctl = srv.ctl();
    let forbidden = |path: &str, headers: &[(&str, &str)]| {
        let mut headers = headers.to_vec();
        headers.push(("Connection", "close"));
        let mut s = request(port, path, &headers);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.contains(" 403 "), "{label} {path}: {out}");
        assert!(
            out.ends_with("forbidden\n"),
            "{label}: no detail leaked: {out}"
        );
    };
    forbidden("/comet/alice", &[]);
    forbidden("/comet/alice?token=garbage", &[]);
    forbidden(&format!("/comet/alice?token={}", token("bob", 60)), &[]);
    forbidden(&format!("/comet/alice?token={}", token("alice", -5)), &[]);
    let wrong = format!("Bearer {}", token("bob", 60));
    forbidden("/comet/alice", &[("Authorization", &wrong)]);
    forbidden(
        &format!("/comet/alice?transport=poll&token={}", token("bob", 60)),
        &[],
    );
    assert!(
        ctl.cmd("INFO alice").starts_with("ERR NOTFOUND"),
        "{label}: refused requests create nothing"
    );

    let mut by_query = HttpStream::open(
        port,
        &format!("/comet/alice?token={}", token("alice", 60)),
        &[],
    );
    assert_eq!(by_query.status, 200, "{label}");
    let bearer = format!("Bearer {}", token("alice", 60));
    let mut by_header = HttpStream::open(port, "/comet/alice", &[("Authorization", &bearer)]);
    assert_eq!(by_header.status, 200, "{label}");
    srv.wait_info("alice", |r| r.contains("subscribers=2"));
    let (id, live) = ctl.send("alice", "signed");
    assert_eq!(live, 2, "{label}");
    assert_eq!(by_query.next_event().id, Some(id));
    assert_eq!(by_header.next_event().id, Some(id));
}

#[test]
fn tokens_guard_every_gateway() {
    let dir = TempDir::new("sec");
    let secret = write_secret(dir.path(), KEY, 0o600);
    let srv = Mailboxd::start_raw(&[
        "--http",
        "127.0.0.1:0",
        "--fastcgi",
        "127.0.0.1:0",
        "--scgi",
        "127.0.0.1:0",
        "--secret-file",
        &secret,
    ]);
    assert!(!srv.log().contains("no --secret-file"));
    tokens_enforced(&srv, srv.port, "http");
    srv.ctl().cmd("DROP alice");
    let fcgi = WebServer::nginx("fastcgi", &srv.addr("fastcgi"));
    tokens_enforced(&srv, fcgi.port, &fcgi.name);
    srv.ctl().cmd("DROP alice");
    let scgi = WebServer::nginx("scgi", &srv.addr("scgi"));
    tokens_enforced(&srv, scgi.port, &scgi.name);
}

#[test]
fn without_a_token_nobody_locks_the_real_user_out() {
    let dir = TempDir::new("sec");
    let secret = write_secret(dir.path(), KEY, 0o600);
    let srv = Mailboxd::start(&["--secret-file", &secret, "--max-subscribers", "16"]);
    let squatters: Vec<TcpStream> = (0..16)
        .map(|_| request(srv.port, "/comet/bob", &[]))
        .collect();
    for mut s in squatters {
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    }
    let mut bob = HttpStream::open(
        srv.port,
        &format!("/comet/bob?token={}", token("bob", 60)),
        &[],
    );
    assert_eq!(bob.status, 200);
    let (id, live) = srv.ctl().send("bob", "only for bob");
    assert_eq!(live, 1);
    assert_eq!(bob.next_event().id, Some(id));
}

#[test]
fn token_command_mints_what_the_gateways_accept() {
    let dir = TempDir::new("sec");
    let secret = write_secret(dir.path(), KEY, 0o600);
    let srv = Mailboxd::start(&["--secret-file", &secret]);
    let reply = srv.ctl().cmd("TOKEN carol 60");
    let minted = reply.strip_prefix("OK ").expect(&reply);
    let expiry: u64 = minted.split('.').nth(1).unwrap().parse().unwrap();
    assert!(
        (unix_now() + 55..=unix_now() + 60).contains(&expiry),
        "{minted}"
    );
    assert_eq!(minted, token("carol", expiry as i64 - unix_now() as i64));
    let s = HttpStream::open(srv.port, &format!("/comet/carol?token={minted}"), &[]);
    assert_eq!(s.status, 200);
    assert!(srv.ctl().cmd("TOKEN carol 0").starts_with("ERR SYNTAX"));
    // mailboxctl has the command too.
    let out = Command::new(bin("mailboxctl"))
        .args(["-s", srv.control.to_str().unwrap(), "token", "carol", "30"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK v1."));
}

#[test]
fn running_open_says_so_and_token_needs_a_secret() {
    let srv = Mailboxd::start(&[]);
    assert!(
        srv.log()
            .contains("no --secret-file: any client may open any mailbox")
    );
    assert!(srv.ctl().cmd("TOKEN x 60").starts_with("ERR NOSECRET"));
}

#[test]
fn a_secret_others_can_read_or_a_short_one_is_refused_at_start() {
    let dir = TempDir::new("sec");
    for (key, mode, expected) in [
        (KEY, 0o644, "chmod 600"),
        (KEY, 0o660, "chmod 600"),
        ("short", 0o600, "at least 16"),
    ] {
        let secret = write_secret(dir.path(), key, mode);
        let out = Command::new(bin("mailboxd"))
            .args(["--control", dir.path().join("c.sock").to_str().unwrap()])
            .args(["--http", "127.0.0.1:0", "--secret-file", &secret])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected) && err.contains("secret file"),
            "{err}"
        );
    }
}

#[test]
fn sighup_rotates_the_key_and_never_stops_the_daemon() {
    let open = Mailboxd::start(&[]);
    signal(open.child.id(), "HUP");
    wait_for(Duration::from_secs(5), || {
        open.log()
            .contains("SIGHUP: no --secret-file")
            .then_some(())
    });
    assert_eq!(open.ctl().cmd("PING"), "PONG");

    let dir = TempDir::new("sec");
    let secret = write_secret(dir.path(), KEY, 0o600);
    let srv = Mailboxd::start(&["--secret-file", &secret]);
    let old = token("dave", 60);
    write_secret(dir.path(), "a-brand-new-key-for-rotation-000", 0o600);
    signal(srv.child.id(), "HUP");
    wait_for(Duration::from_secs(5), || {
        srv.log()
            .contains("SIGHUP: secret file reloaded")
            .then_some(())
    });
    let (status, _, _) = get(srv.port, &format!("/comet/dave?token={old}"));
    assert_eq!(status, 403, "the old key no longer signs");
    let fresh = srv.ctl().cmd("TOKEN dave 60");
    let s = HttpStream::open(srv.port, &format!("/comet/dave?token={}", &fresh[3..]), &[]);
    assert_eq!(s.status, 200);
    // A broken file on the next HUP keeps the current key.
    write_secret(dir.path(), KEY, 0o644);
    signal(srv.child.id(), "HUP");
    wait_for(Duration::from_secs(5), || {
        srv.log()
            .contains("keeping the current secret")
            .then_some(())
    });
    assert_eq!(srv.ctl().cmd("PING"), "PONG");
}

#[test]
fn control_on_tcp_is_refused() {
    for addr in ["127.0.0.1:9000", "localhost:9000", "[::1]:9000"] {
        let out = Command::new(bin("mailboxd"))
            .args(["--control", addr])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{addr}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("only served on a Unix socket"));
    }
}

#[test]
fn control_socket_is_private_whatever_the_umask() {
    let dir = TempDir::new("sec");
    let control = dir.path().join("c.sock");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "umask 000; exec {} --control {} --http 127.0.0.1:0",
        bin("mailboxd").display(),
        control.display()
    ));
    let srv = Mailboxd::spawn(cmd, TempDir::new("unused"), control.clone(), 2);
    assert_eq!(std::fs::metadata(&control).unwrap().mode() & 0o777, 0o600);
    drop(srv);
    let srv = Mailboxd::start(&["--control-mode", "0660"]);
    assert_eq!(
        std::fs::metadata(&srv.control).unwrap().mode() & 0o777,
        0o660
    );
}

/// Runs `mailboxctl ping` as user nobody; returns (exit code, stdout+stderr).
fn ping_as_nobody(socket: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("mailboxctl"));
    if !socket.as_os_str().is_empty() {
        cmd.arg("-s").arg(socket);
    }
    let out = cmd
        .args(["--timeout", "3", "ping"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn control_allow_checks_the_peer_user() {
    let srv = Mailboxd::start(&["--control-mode", "0666", "--control-allow", "uid:0"]);
    // The temp dir must let nobody reach the socket.
    std::fs::set_permissions(srv.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, text) = ping_as_nobody(&srv.control, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        srv.ctl().cmd("PING"),
        "PONG",
        "mailboxd's own user always gets in"
    );
    wait_for(Duration::from_secs(5), || {
        srv.log()
            .contains("control connection from uid=65534 gid=65534 refused")
            .then_some(())
    });
    assert!(srv.ctl().cmd("STATS").contains(" denied=1"));

    let open = Mailboxd::start(&["--control-mode", "0666"]);
    std::fs::set_permissions(open.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        ping_as_nobody(&open.control, &[]),
        (Some(0), "PONG\n".into())
    );
}

#[test]
fn default_control_socket_lives_in_a_private_directory() {
    let dir = TempDir::new("xdg");
    // The runtime directory of user nobody, as a login would create it.
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let xdg = runtime.to_str().unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("mailboxd"))
        .args(["--http", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", xdg);
    let control = runtime.join("mailboxd/control.sock");
    let srv = Mailboxd::spawn(cmd, TempDir::new("unused"), control.clone(), 2);
    let meta = std::fs::metadata(runtime.join("mailboxd")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o700));
    assert_eq!(std::fs::metadata(&control).unwrap().mode() & 0o777, 0o600);
    // mailboxctl finds the same default.
    assert_eq!(
        ping_as_nobody(Path::new(""), &[("XDG_RUNTIME_DIR", xdg)]),
        (Some(0), "PONG\n".into())
    );
    drop(srv);

    // A directory someone else could write is refused.
    std::fs::set_permissions(
        runtime.join("mailboxd"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("mailboxd"))
        .args(["--http", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", xdg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by other users"));
}

#[test]
fn gateways_on_tcp_accept_only_allowed_peers() {
    let srv = Mailboxd::start_raw(&[
        "--fastcgi",
        "127.0.0.1:0",
        "--scgi",
        "127.0.0.1:0",
        "--gateway-allow",
        "10.0.0.0/8",
    ]);
    for role in ["fastcgi", "scgi"] {
        let mut s = TcpStream::connect(srv.addr(role)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"anything");
        assert_eq!(
            s.read(&mut [0u8; 16]).unwrap_or(0),
            0,
            "{role}: closed at once"
        );
    }
    let stats = srv.ctl().cmd("STATS");
    assert!(stats.contains(" denied=2"), "{stats}");
    assert!(srv.log().contains("refused: not in gateway-allow"));
    // By default, loopback is allowed.
    let ok = Mailboxd::start_raw(&["--scgi", "127.0.0.1:0"]);
    let mut s = TcpStream::connect(ok.addr("scgi")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    assert!(
        s.read(&mut [0u8; 16]).is_err(),
        "held open, waiting for a head"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}
