//! `--state-dir`: what survives SIGTERM and `kill -9`, what a damaged
//! journal costs, and who may use a state directory. Real binary, real files.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Starts mailboxd on `state` with `extra` flags; its control socket and
/// port are fresh each time.
fn start(state: &Path, extra: &[&str]) -> Mailboxd {
    let mut args = vec![
        "--http",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Mailboxd::start_raw(&args)
}

/// The ids a long-poll from the start returns for `mailbox`.
fn retained_ids(srv: &Mailboxd, mailbox: &str) -> Vec<u64> {
    let (status, _, body) = get(
        srv.port,
        &format!("/comet/{mailbox}?transport=poll&since=1"),
    );
    assert_eq!(status, 200, "{body}");
    poll_ids(&body)
}

#[test]
fn every_acknowledged_send_survives_kill_9_in_a_pipelined_burst() {
    let state = TempDir::new("state");
    let srv = start(state.path(), &["--retain", "1000", "--fsync", "always"]);
    let mut burst = Vec::new();
    for i in 0..10_000 {
        let data = format!("m{i}");
        burst.extend_from_slice(format!("SEND box{} {}\n{data}\n", i % 20, data.len()).as_bytes());
    }
    let mut ctl = UnixStream::connect(&srv.control).unwrap();
    let writer = {
        let mut ctl = ctl.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = ctl.write_all(&burst);
        })
    };
    // Read replies until about a third are in, then kill -9 mid-burst.
    let mut acked: Vec<(usize, u64)> = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while acked.len() < 3_000 {
        let n = ctl.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8(buf.drain(..=nl).collect()).unwrap();
            let (id, _) = parse_ok2(line.trim_end());
            acked.push((acked.len(), id));
        }
    }
    let pid = srv.child.id();
    signal(pid, "KILL");
    let mut srv = srv;
    let _ = srv.child.wait();
    drop(writer);

    let srv = start(state.path(), &["--retain", "1000"]);
    let mut seen = 0;
    for b in 0..20 {
        let ids = retained_ids(&srv, &format!("box{b}"));
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "box{b}: in order, once each"
        );
        let expected: Vec<u64> = acked
            .iter()
            .filter(|(i, _)| i % 20 == b)
            .map(|&(_, id)| id)
            .collect();
        assert_eq!(
            &ids[..expected.len()],
            &expected[..],
            "box{b}: every OK is there, in order"
        );
        seen += ids.len();
    }
    assert!(seen >= acked.len());
    // A client resuming in the middle gets the rest exactly once.
    let (_, from) = acked[20];
    let mut sse = HttpStream::open(
        srv.port,
        "/comet/box0",
        &[("Last-Event-ID", &from.to_string())],
    );
    let next = sse.next_event();
    assert_eq!(next.id, Some(acked[40].1));
    // New ids keep increasing.
    let (id, _) = srv.ctl().send("box0", "after");
    assert!(id > acked.last().unwrap().1);
}

#[test]
fn sigterm_and_restart_keep_mailboxes_groups_and_resumes() {
    let state = TempDir::new("state");
    let srv = start(state.path(), &["--fsync", "everysec", "--retain", "10"]);
    let mut ctl = srv.ctl();
    let mut batch = String::new();
    for m in 0..1000 {
        for k in 0..3 {
            let data = format!("{m}-{k}");
            batch.push_str(&format!("SEND mb{m} {}\n{data}\n", data.len()));
        }
    }
    for g in 0..100 {
        let members: Vec<String> = (0..10).map(|i| format!("mb{}", g * 10 + i)).collect();
        batch.push_str(&format!("JOIN g{g} {}\n", members.join(" ")));
    }
    batch.push_str("PUBLISH g7 5 except=mb70\nhello\n");
    batch.push_str("LEAVE g8 mb80 mb81\nDROP mb999\n");
    ctl.write(batch.as_bytes());
    for _ in 0..(3000 + 100 + 3) {
        assert!(ctl.line().starts_with("OK"));
    }
    let snapshot = |srv: &Mailboxd| {
        let mut ctl = srv.ctl();
        let mut seen = Vec::new();
        for m in 0..1000 {
            let info = ctl.cmd(&format!("INFO mb{m}"));
            // Idle times go on across the restart; the rest is identical.
            seen.push(info.split(" idle=").next().unwrap().to_string());
        }
        for g in 0..100 {
            let mut members: Vec<String> = ctl
                .cmd(&format!("MEMBERS g{g}"))
                .split(' ')
                .map(String::from)
                .collect();
            members.sort();
            seen.push(members.join(" "));
        }
        for m in [0, 70, 71, 500] {
            seen.push(format!("{:?}", retained_ids(srv, &format!("mb{m}"))));
        }
        seen
    };
    let before = snapshot(&srv);
    let mut srv = srv;
    assert_eq!(srv.terminate(), Some(0));
    let srv = start(state.path(), &["--retain", "10"]);
    assert_eq!(snapshot(&srv), before);
    // A resume from the middle is exact, with no gap.
    let ids = retained_ids(&srv, "mb71");
    let (_, _, body) = get(
        srv.port,
        &format!("/comet/mb71?transport=poll&since={}", ids[1]),
    );
    assert_eq!(poll_ids(&body), ids[2..].to_vec());
    assert!(body.contains("\"gap\":false"), "{body}");
}

/// Writes some history into a fresh state dir and stops; returns the ids.
fn history(state: &Path) -> Vec<u64> {
    let srv = start(state, &[]);
    let mut ctl = srv.ctl();
    let ids: Vec<u64> = (0..50)
        .map(|i| ctl.send("hist", &format!("h{i}")).0)
        .collect();
    let mut srv = srv;
    srv.terminate();
    ids
}

fn journal_file(state: &Path) -> std::path::PathBuf {
    std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && !n.contains('.'))
        })
        .unwrap()
}

#[test]
fn a_torn_last_record_is_set_aside_and_the_rest_served() {
    let state = TempDir::new("state");
    let ids = history(state.path());
    let journal = journal_file(state.path());
    let len = std::fs::metadata(&journal).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let srv = start(state.path(), &["--retain", "100"]);
    let kept = retained_ids(&srv, "hist");
    assert_eq!(kept[..], ids[..49], "all but the torn last one");
    let log = srv.log();
    assert!(
        log.contains("a record cut short") && log.contains("set aside"),
        "{log}"
    );
    assert!(std::fs::read_dir(state.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".damaged-")
    }));
}

#[test]
fn flipped_bytes_in_the_middle_keep_the_valid_prefix() {
    let state = TempDir::new("state");
    let ids = history(state.path());
    let journal = journal_file(state.path());
    let mut bytes = std::fs::read(&journal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes[middle + 1] ^= 0x55;
    std::fs::write(&journal, &bytes).unwrap();
    let srv = start(state.path(), &["--retain", "100"]);
    let kept = retained_ids(&srv, "hist");
    assert!(
        !kept.is_empty() && kept.len() < ids.len(),
        "{} of {}",
        kept.len(),
        ids.len()
    );
    assert_eq!(kept[..], ids[..kept.len()], "a prefix, nothing invented");
    assert!(
        srv.log().contains("corrupt journal record"),
        "{}",
        srv.log()
    );
    // What followed the damage may be lost: resuming from before it is a gap.
    let (_, _, body) = get(
        srv.port,
        &format!("/comet/hist?transport=poll&since={}", ids[0]),
    );
    assert!(body.contains("\"gap\":true"), "{body}");
}

#[test]
fn one_state_dir_one_process_and_clear_errors() {
    let state = TempDir::new("state");
    let first = start(state.path(), &[]);
    let out = Command::new(bin("mailboxd"))
        .args(["--http", "127.0.0.1:0", "--control"])
        .arg(state.path().join("other.sock"))
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another mailboxd") && err.contains(&first.child.id().to_string()),
        "{err}"
    );

    // A directory this user cannot write: one clear line.
    let locked = TempDir::new("ro");
    std::fs::set_permissions(
        locked.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = TempDir::new("ctl");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("mailboxd"))
        .args(["--http", "127.0.0.1:0", "--control"])
        .arg(dir.path().join("c.sock"))
        .arg("--state-dir")
        .arg(locked.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot write to state dir"), "{err}");
}

#[test]
fn compaction_under_load_keeps_the_stream_and_the_state() {
    let state = TempDir::new("state");
    let srv = start(
        state.path(),
        &["--compact-after", "200000", "--retain", "50"],
    );
    let mut sse = HttpStream::open(srv.port, "/comet/steady", &[]);
    srv.wait_info("steady", |r| r.contains("subscribers=1"));
    let mut ctl = srv.ctl();
    let mut worst = Duration::ZERO;
    let mut last_id = 0;
    let started = Instant::now();
    for i in 0..3000 {
        let (id, live) = ctl.send("steady", &format!("{i:0>100}"));
        assert_eq!(live, 1);
        let sent = Instant::now();
        let event = sse.next_event();
        assert_eq!(event.id, Some(id), "every message, once, in order");
        worst = worst.max(sent.elapsed());
        last_id = id;
    }
    let log = srv.log();
    let compactions = log.matches("snapshot of").count();
    eprintln!(
        "3000 messages in {:?}, {compactions} compactions, longest delivery {worst:?}; {}",
        started.elapsed(),
        log.lines().rfind(|l| l.contains("forked in")).unwrap_or("")
    );
    assert!(compactions >= 1, "{log}");
    assert!(worst < Duration::from_secs(1), "a stall of {worst:?}");
    let mut srv = srv;
    srv.terminate();
    let srv = start(state.path(), &["--retain", "50"]);
    let ids = retained_ids(&srv, "steady");
    assert_eq!(ids.len(), 50);
    assert_eq!(*ids.last().unwrap(), last_id);
}

#[test]
fn kill_9_while_compactions_come_and_go_loses_no_acknowledged_message() {
    let state = TempDir::new("state");
    let flags = [
        "--compact-after",
        "50000",
        "--retain",
        "100000",
        "--retain-bytes",
        "100000000",
    ];
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..4 {
        let srv = start(state.path(), &flags);
        if round > 0 {
            assert_eq!(
                retained_ids(&srv, "crash"),
                acked,
                "round {round}: every OK so far, in order"
            );
        }
        let mut ctl = srv.ctl();
        // Kill at a different point of the compaction cycle each round.
        for i in 0..(700 + round * 333) {
            acked.push(ctl.send("crash", &format!("{round}-{i:0>40}")).0);
        }
        signal(srv.child.id(), "KILL");
        let mut srv = srv;
        let _ = srv.child.wait();
    }
    let srv = start(state.path(), &flags);
    assert_eq!(retained_ids(&srv, "crash"), acked);
    let compacted = std::fs::read_dir(state.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("snapshot-")
    });
    assert!(compacted, "the rounds crossed compactions");
}

#[test]
fn a_fresh_state_dir_vouches_for_nothing_before_it() {
    let state = TempDir::new("state");
    let srv = start(state.path(), &[]);
    // An id from a memory-only run before: the client is told of a gap.
    let (_, _, body) = get(srv.port, "/comet/new?transport=poll&since=1");
    assert!(body.contains("\"gap\":true"), "{body}");
}

#[test]
fn a_journal_that_cannot_be_written_answers_unavailable_never_ok() {
    let state = TempDir::new("state");
    let srv = start(state.path(), &[]);
    let mut ctl = srv.ctl();
    let kept: Vec<u64> = (0..5)
        .map(|i| ctl.send("disk", &format!("k{i}")).0)
        .collect();
    // The disk fills up: no file may grow past its size now (the soft
    // limit only, so that it can be lifted again).
    let size = field(&ctl.cmd("STATS"), "journal_bytes").unwrap();
    let limit = |bytes: &str| {
        let ok = Command::new("prlimit")
            .args([
                "--pid",
                &srv.child.id().to_string(),
                &format!("--fsize={bytes}:"),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    limit(&size.to_string());
    let first = ctl.cmd("SEND disk 4\nlost");
    assert!(first.starts_with("ERR UNAVAILABLE"), "{first}");
    for _ in 0..3 {
        let refused = ctl.cmd("SEND disk 7\nrefused");
        assert!(refused.starts_with("ERR UNAVAILABLE"), "{refused}");
    }
    assert!(ctl.cmd("INFO disk").starts_with("OK "), "reads still work");
    // The log is read by another thread: wait for the line.
    wait_for(Duration::from_secs(5), || {
        srv.log().contains("changes are refused").then_some(())
    });
    // Room again: changes are accepted, and nothing refused was kept.
    limit("unlimited");
    let (after, _) = ctl.send("disk", "after");
    let mut srv = srv;
    assert_eq!(srv.terminate(), Some(0));
    let srv = start(state.path(), &[]);
    let ids = retained_ids(&srv, "disk");
    assert_eq!(ids[..5], kept[..]);
    assert_eq!(*ids.last().unwrap(), after);
    assert!(
        ids.len() <= 7,
        "only the failing turn's own change may have been kept: {ids:?}"
    );
    assert!(!srv.log().contains("damaged"), "{}", srv.log());
}

#[test]
fn a_failed_compaction_leaves_the_journal_going_and_the_next_one_succeeds() {
    let state = TempDir::new("state");
    // The first snapshot's temporary file cannot be created: the child fails.
    std::fs::create_dir_all(state.path().join("snapshot-1.tmp")).unwrap();
    let flags = ["--compact-after", "2000", "--retain", "10000"];
    let srv = start(state.path(), &flags);
    let mut ctl = srv.ctl();
    let mut acked = Vec::new();
    let log_has = |srv: &Mailboxd, what: &str| srv.log().contains(what);
    while !log_has(&srv, "compaction 1 failed") {
        acked.push(ctl.send("kept", &format!("{:0>40}", acked.len())).0);
        assert!(acked.len() < 5000, "no compaction attempted: {}", srv.log());
    }
    while !log_has(&srv, "snapshot of") {
        acked.push(ctl.send("kept", &format!("{:0>40}", acked.len())).0);
        assert!(
            acked.len() < 10000,
            "no later compaction succeeded: {}",
            srv.log()
        );
    }
    let mut srv = srv;
    srv.terminate();
    let srv = start(state.path(), &flags);
    assert_eq!(retained_ids(&srv, "kept"), acked);
}
