//! The Debian package (`cargo deb`): built, installed with dpkg, its
//! service started the way its unit says (by systemd where it runs, else
//! the unit's command line under its user and group), one message
//! delivered through the control socket and read back over FastCGI, then
//! purged. Its man pages are kept in step with `-h`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package (and stops what the test started) however the test ends.
struct Installed {
    service: Option<Child>,
    systemd: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut child) = self.service.take() {
            // SIGTERM: a clean stop removes its socket files.
            signal(child.id(), "TERM");
            if (0..100).all(|_| {
                std::thread::sleep(Duration::from_millis(50));
                child.try_wait().ok().flatten().is_none()
            }) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if self.systemd {
            let _ = Command::new("systemctl")
                .args(["stop", "mailboxd"])
                .status();
        }
        let _ = Command::new("dpkg").args(["--purge", "mailboxd"]).output();
    }
}

/// `Key=value` lines of the installed unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

#[test]
fn the_package_installs_starts_and_delivers() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo)
        .args(["deb", "--quiet"])
        .current_dir(ROOT));
    let deb = std::fs::read_dir(Path::new(ROOT).join("target/debian"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb made a .deb");
    let systemd = Path::new("/run/systemd/system").exists();
    let mut installed = Installed {
        service: None,
        systemd,
    };
    run(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    run(Command::new("getent").args(["passwd", "mailboxd"]));
    for f in [
        "/usr/bin/mailboxd",
        "/usr/bin/mailboxctl",
        "/etc/mailboxd/mailboxd.toml",
        "/usr/share/man/man8/mailboxd.8.gz",
        "/usr/share/man/man1/mailboxctl.1.gz",
        "/usr/share/bash-completion/completions/mailboxctl",
        "/usr/share/doc/mailboxd/protocol.md",
        "/usr/share/doc/mailboxd/examples/lighttpd/fastcgi.conf",
        "/usr/share/mailboxd/lighttpd/mailboxd-down.sh",
        "/usr/share/mailboxd/apache/mailboxd-down.asis",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/mailboxd.service").unwrap();
    run(Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/mailboxd.service"]));
    if systemd {
        run(Command::new("systemctl").args(["restart", "mailboxd"]));
    } else {
        // As systemd would: its runtime and state directories, its user and
        // group, its environment, its command line.
        let (user, group) = (unit_value(&unit, "User"), unit_value(&unit, "Group"));
        let runtime = format!("/run/{}", unit_value(&unit, "RuntimeDirectory"));
        // systemd makes the runtime directory afresh for each start.
        let _ = std::fs::remove_dir_all(&runtime);
        let state = format!("/var/lib/{}", unit_value(&unit, "StateDirectory"));
        for (dir, mode) in [
            (&runtime, unit_value(&unit, "RuntimeDirectoryMode")),
            (&state, unit_value(&unit, "StateDirectoryMode")),
        ] {
            run(Command::new("install").args(["-d", "-m", &mode, "-o", &user, "-g", &group, dir]));
        }
        let exec = unit_value(&unit, "ExecStart");
        let mut words = exec.split_whitespace();
        let program = words.next().unwrap();
        let (key, value) = unit_value(&unit, "Environment")
            .split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .unwrap();
        let child = Command::new("setpriv")
            .args(["--reuid", &user, "--regid", &group, "--clear-groups", "--"])
            .arg(program)
            .args(words)
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        installed.service = Some(child);
    }
    let control = "/run/mailboxd/control.sock";
    wait_for(Duration::from_secs(10), || {
        Path::new(control).exists().then_some(())
    });
    let reply = run(Command::new("/usr/bin/mailboxctl").args([
        "-s",
        control,
        "send",
        "alice",
        "hello from the package",
    ]));
    assert!(reply.starts_with("OK "), "{reply}");
    // The web server's way in: FastCGI on the unit's socket.
    let answer = run(Command::new("cgi-fcgi")
        .args(["-bind", "-connect", "/run/mailboxd/fastcgi.sock"])
        .env("REQUEST_METHOD", "GET")
        .env("REQUEST_URI", "/comet/alice?transport=poll")
        .env("QUERY_STRING", "transport=poll"));
    assert!(answer.contains("hello from the package"), "{answer}");
    drop(installed);
    assert!(!Path::new("/usr/bin/mailboxd").exists(), "purged");
}

#[test]
fn man_pages_document_every_command_and_flag() {
    let help = |b: &str| {
        let out = Command::new(bin(b)).arg("-h").output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    for (page, program) in [
        ("docs/man/mailboxd.8", "mailboxd"),
        ("docs/man/mailboxctl.1", "mailboxctl"),
    ] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(page))
            .unwrap()
            .replace("\\-", "-");
        let h = help(program);
        let flags = h
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()));
        for flag in flags {
            assert!(
                text.contains(&format!("\\fB{flag}\\fR")),
                "{page} lacks {flag}"
            );
        }
        if program == "mailboxctl" {
            for line in h.split("Commands:").nth(1).unwrap().lines() {
                if let Some(cmd) = line
                    .strip_prefix("  ")
                    .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
                {
                    let cmd = cmd.split_whitespace().next().unwrap();
                    assert!(
                        text.contains(&format!("\\fB{cmd}\\fR")),
                        "{page} lacks {cmd}"
                    );
                }
            }
        }
        // groff renders it without a warning.
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(Path::new(ROOT).join(page))
            .output()
            .expect("groff (Debian groff-base)");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
