//! Everything shipped in contrib/ that is not a web-server config (those are
//! in gateways.rs): the systemd unit and the backend examples, run for real.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn systemd_unit_verifies_and_its_command_line_starts() {
    let unit = std::fs::read_to_string(contrib("systemd/mailboxd.service")).unwrap();
    let dir = TempDir::new("unit");
    let binary = bin("mailboxd");
    let local = unit.replace("/usr/local/bin/mailboxd", binary.to_str().unwrap());
    let unit_path = dir.path().join("mailboxd.service");
    std::fs::write(&unit_path, &local).unwrap();
    let (code, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path));
    assert_eq!(code, 0, "systemd-analyze verify: {out}{err}");

    // The ExecStart flags, with /run/mailboxd mapped into a temp dir.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let exec = exec.replace("/run/mailboxd", run_dir.to_str().unwrap());
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/mailboxd"));
    let args: Vec<&str> = words.collect();
    let control = run_dir.join("control.sock");
    let mut cmd = Command::new(&binary);
    cmd.args(&args);
    let srv = Mailboxd::spawn(cmd, TempDir::new("unit-srv"), control.clone(), 2);
    use std::os::unix::fs::PermissionsExt;
    for sock in ["control.sock", "fastcgi.sock"] {
        let mode = std::fs::metadata(run_dir.join(sock))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660, "{sock}");
    }
    assert_eq!(srv.ctl().cmd("PING"), "PONG");
}

#[test]
fn socket_units_verify_and_name_their_sockets_for_mailboxd() {
    let dir = TempDir::new("units");
    let service = std::fs::read_to_string(contrib("systemd/mailboxd.service"))
        .unwrap()
        .replace("/usr/local/bin/mailboxd", bin("mailboxd").to_str().unwrap());
    std::fs::write(dir.path().join("mailboxd.service"), service).unwrap();
    for (unit, name) in [
        ("mailboxd-control.socket", "control"),
        ("mailboxd.socket", "fastcgi"),
    ] {
        let text = std::fs::read_to_string(contrib(&format!("systemd/{unit}"))).unwrap();
        assert!(
            text.contains(&format!("FileDescriptorName={name}\n")),
            "{unit}"
        );
        assert!(text.contains("Service=mailboxd.service"), "{unit}");
        std::fs::write(dir.path().join(unit), &text).unwrap();
        let (code, out, err) = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(unit)));
        assert_eq!(code, 0, "systemd-analyze verify {unit}: {out}{err}");
    }
}

#[test]
fn python_backend_example() {
    let srv = Mailboxd::start(&[]);
    let mut sse = HttpStream::open(srv.port, "/comet/pyuser", &[]);
    srv.wait_info("pyuser", |r| r.contains("subscribers=1"));
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
from mailboxd import Mailboxd, MailboxdError
with Mailboxd(sys.argv[2]) as mb:
    assert mb.ping()
    msg_id, live = mb.send("pyuser", "from python", event="note")
    assert live == 1, live
    assert mb.join("pyroom", "pyuser", "other") == 2
    assert sorted(mb.members("pyroom")) == ["other", "pyuser"]
    assert mb.publish("pyroom", "room msg", except_=["other"]) == (1, 1)
    assert mb.info("pyuser")["subscribers"] == 1
    replies = mb.pipeline([Mailboxd.encode("SEND", "x", payload=str(i)) for i in range(100)] + [b"INFO nobody\n"])
    assert all(r.startswith("OK ") for r in replies[:100])
    assert isinstance(replies[100], MailboxdError) and replies[100].code == "NOTFOUND"
    try:
        mb.send("bad/name", "x")
        raise SystemExit("no error")
    except MailboxdError as e:
        assert e.code == "NAME", e.code
    assert mb.stats()["mailboxes"] >= 3
    print(msg_id)
"#;
    let (code, out, err) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(contrib("backends"))
        .arg(&srv.control));
    assert_eq!(code, 0, "{out}{err}");
    let ev = sse.next_event();
    assert_eq!(
        (ev.id, ev.event.as_deref(), ev.data.as_str()),
        (
            Some(out.trim().parse().unwrap()),
            Some("note"),
            "from python"
        )
    );
    assert_eq!(sse.next_event().data, "room msg");
    // The script's own CLI.
    let (code, out, _) = run(Command::new("python3")
        .arg(contrib("backends/mailboxd.py"))
        .arg("-s")
        .arg(&srv.control)
        .args(["send", "pyuser", "cli"]));
    assert_eq!(code, 0);
    assert!(out.trim().ends_with(" 1"), "{out}");
}

#[test]
fn php_backend_example() {
    let srv = Mailboxd::start(&[]);
    let mut sse = HttpStream::open(srv.port, "/comet/phpuser", &[]);
    srv.wait_info("phpuser", |r| r.contains("subscribers=1"));
    let script = r#"
require $argv[1];
$mb = new Mailboxd($argv[2]);
[$id, $live] = $mb->send('phpuser', "from php\nline 2", 'note');
if ($live !== 1) { fwrite(STDERR, "live=$live\n"); exit(1); }
if ($mb->join('phproom', ['phpuser', 'other']) !== 2) exit(2);
if ($mb->publish('phproom', 'room msg', null, ['other']) !== [1, 1]) exit(3);
if ($mb->info('phpuser')['subscribers'] !== 1) exit(4);
try { $mb->send('bad/name', 'x'); exit(5); } catch (MailboxdException $e) { if ($e->errorCode !== 'NAME') exit(6); }
if ($mb->leave('phproom', ['other']) !== 1) exit(7);
echo $id, "\n";
"#;
    let php = which("php");
    let (code, out, err) = run(Command::new(php)
        .arg("-r")
        .arg(script)
        .arg(contrib("backends/mailboxd.php"))
        .arg(&srv.control));
    assert_eq!(code, 0, "{out}{err}");
    let ev = sse.next_event();
    assert_eq!(
        (ev.id, ev.data.as_str()),
        (Some(out.trim().parse().unwrap()), "from php\nline 2")
    );
    assert_eq!(sse.next_event().data, "room msg");
}

#[test]
fn shell_chat_example() {
    let srv = Mailboxd::start(&[]);
    let chat = |args: &[&str]| {
        run(Command::new("sh")
            .arg(contrib("backends/chat.sh"))
            .args(args)
            .env("MAILBOXD_SOCKET", &srv.control)
            .env("MAILBOXCTL", bin("mailboxctl")))
    };
    assert_eq!(chat(&["join", "lobby", "ann"]).1.trim(), "OK 1");
    assert_eq!(chat(&["join", "lobby", "bob"]).1.trim(), "OK 2");
    let mut ann = HttpStream::open(srv.port, "/comet/ann", &[]);
    let mut bob = HttpStream::open(srv.port, "/comet/bob", &[]);
    srv.wait_info("ann", |r| r.contains("subscribers=1"));
    srv.wait_info("bob", |r| r.contains("subscribers=1"));
    let (code, out, err) = chat(&["say", "lobby", "bob", "hello 'world' $HOME"]);
    assert_eq!((code, out.trim()), (0, "OK 1 1"), "{err}");
    let ev = ann.next_event();
    assert_eq!(
        (ev.event.as_deref(), ev.data.as_str()),
        (Some("chat"), "bob: hello 'world' $HOME")
    );
    // bob got no echo: his next event is a direct message.
    let (direct, _) = srv.ctl().send("bob", "direct");
    assert_eq!(bob.next_event().id, Some(direct));
    assert_eq!(chat(&["leave", "lobby", "ann"]).1.trim(), "OK 1");
    assert_eq!(chat(&["bogus"]).0, 2);
}

fn which(tool: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} is not installed: run tests/run-all.sh, which installs the test dependencies"))
}

/// The token examples (Python, PHP, shell) reproduce the test vector of
/// docs/security.md, and their tokens open a mailbox on a live mailboxd.
#[test]
fn backend_token_examples_match_the_vector_and_the_server() {
    const VECTOR: &str = "v1.1900000000.m8tfWhOZInZ_4Cxca7onm8CW_Mwrq9PYwCWi1ULYBdo";
    let dir = TempDir::new("tok");
    let key = dir.path().join("secret");
    // Trailing whitespace is not part of the key.
    std::fs::write(&key, "mailboxd-test-vector-key-0123456789 \r\n\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key_s = key.to_str().unwrap();
    let backends = contrib("backends");
    let py = format!(
        "import sys; sys.path.insert(0, {:?}); import mailboxd as m; print(m.mint_token(m.load_key({key_s:?}), sys.argv[1], int(sys.argv[2]), now=int(sys.argv[3])))",
        backends.to_str().unwrap()
    );
    let php = format!(
        "require {:?}; echo mailboxd_token(mailboxd_key({key_s:?}), $argv[1], (int) $argv[2], (int) $argv[3]), \"\\n\";",
        backends.join("mailboxd.php").to_str().unwrap()
    );
    let mint = |lang: &str, mailbox: &str, ttl: u64, now: u64| -> String {
        let (ttl, now) = (ttl.to_string(), now.to_string());
        let (code, out, err) = match lang {
            "python" => run(Command::new("python3").args(["-c", &py, mailbox, &ttl, &now])),
            "php" => run(Command::new("php").args(["-r", &php, mailbox, &ttl, &now])),
            _ => run(Command::new("sh")
                .arg(backends.join("token.sh"))
                .args([key_s, mailbox, &ttl])
                .env("NOW", &now)),
        };
        assert_eq!(code, 0, "{lang}: {err}");
        out.trim().to_string()
    };
    let srv = Mailboxd::start(&["--secret-file", key_s]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for lang in ["python", "php", "shell"] {
        assert_eq!(mint(lang, "alice", 300, 1_899_999_700), VECTOR, "{lang}");
        let token = mint(lang, "erin", 60, now);
        let (status, _, _) = get(
            srv.port,
            &format!("/comet/erin?transport=poll&since=1&token={token}"),
        );
        assert_eq!(status, 200, "{lang}");
        let (status, _, _) = get(
            srv.port,
            &format!("/comet/frank?transport=poll&token={token}"),
        );
        assert_eq!(status, 403, "{lang}: bound to its mailbox");
    }
}

#[test]
fn mailboxctl_watch_follows_a_mailbox_with_a_token_and_resumes_after_a_dropped_stream() {
    let dir = TempDir::new("watch");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a watch test key of enough bytes").unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&secret, mode).unwrap();
    let srv = Mailboxd::start(&[
        "--secret-file",
        secret.to_str().unwrap(),
        "--retry-ms",
        "200",
    ]);
    let mut ctl = srv.ctl();
    let (first, _) = ctl.send("alice", "before");
    let watch = std::process::Command::new(bin("mailboxctl"))
        .args([
            "watch",
            "alice",
            "--count",
            "3",
            "--from",
            &first.to_string(),
        ])
        .args(["--url", &format!("http://127.0.0.1:{}", srv.port)])
        .env("MAILBOXD_SOCKET", &srv.control)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let (a, _) = ctl.send("alice", "one");
    // The stream ends (DROP); watch comes back with Last-Event-ID.
    assert_eq!(ctl.cmd("DROP alice"), "OK");
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    let b = ctl.send_event("alice", "chat", "two");
    let (c, _) = ctl.send("alice", "three");
    let out = watch.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, format!("{a} one\n{b} chat two\n{c} three\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reconnecting"));
}

#[test]
fn shell_completions_know_every_command_and_flag_the_binaries_do() {
    let help = |b: &str| {
        let out = Command::new(bin(b)).arg("-h").output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let flags = |text: &str| -> Vec<String> {
        text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_string()
            })
            .collect()
    };
    let ctl_help = help("mailboxctl");
    let commands: Vec<&str> = ctl_help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().starts_with('-'))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.len() >= 11, "{commands:?}");
    for (file, words) in [
        (
            "completions/mailboxctl.bash",
            commands
                .iter()
                .map(|c| c.to_string())
                .chain(flags(&ctl_help))
                .collect::<Vec<_>>(),
        ),
        (
            "completions/_mailboxctl",
            commands
                .iter()
                .map(|c| format!("'{c}:"))
                .chain(flags(&ctl_help))
                .collect(),
        ),
        ("completions/mailboxd.bash", flags(&help("mailboxd"))),
        ("completions/_mailboxd", flags(&help("mailboxd"))),
    ] {
        let text = std::fs::read_to_string(contrib(file)).unwrap();
        for w in words {
            assert!(text.contains(&w), "{file} lacks {w}");
        }
    }
    // bash really completes with them.
    let script = format!(
        "source {}; source {}; \
         COMP_WORDS=(mailboxctl s); COMP_CWORD=1; _mailboxctl; echo \"${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(mailboxctl --socket /tmp/x pu); COMP_CWORD=3; _mailboxctl; echo \"${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(mailboxctl send al); COMP_CWORD=2; _mailboxctl; echo \"[${{COMPREPLY[*]}}]\"; \
         COMP_WORDS=(mailboxd --fsync e); COMP_CWORD=2; _mailboxd; echo \"${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(mailboxd --max-m); COMP_CWORD=1; _mailboxd; echo \"${{COMPREPLY[*]}}\"",
        contrib("completions/mailboxctl.bash").display(),
        contrib("completions/mailboxd.bash").display()
    );
    let (code, out, err) = run(Command::new("bash").args(["-c", &script]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "send stats\npublish\n[]\neverysec\n--max-mailboxes --max-message --max-memory\n"
    );
    // zsh parses its completion files.
    let zsh = which("zsh");
    for file in ["completions/_mailboxctl", "completions/_mailboxd"] {
        let (code, _, err) = run(Command::new(&zsh).arg("-n").arg(contrib(file)));
        assert_eq!(code, 0, "{file}: {err}");
    }
}
