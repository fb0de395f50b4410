//! A peer that vanishes without FIN or RST (a pulled cable): mailboxd runs
//! in one network namespace, the client in another, joined by a veth pair;
//! taking the client's link down leaves mailboxd's side with a connection
//! nobody will ever answer on. It must be freed within the heartbeat plus
//! `--dead-peer-timeout`, not the kernel's ~15 minutes of retransmissions.
//! Both namespaces are made by this test and removed when it ends.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop (which removes
/// the veth pair with them).
struct Hosts {
    server: String,
    client: String,
    client_if: String,
    server_ip: String,
}

impl Hosts {
    fn new() -> Hosts {
        let n = std::process::id() % 100_000;
        let hosts = Hosts {
            server: format!("mbxdp{n}s"),
            client: format!("mbxdp{n}c"),
            client_if: format!("mbx{n}c"),
            server_ip: "10.213.77.1".into(),
        };
        let server_if = format!("mbx{n}s");
        ip(&["netns", "add", &hosts.server]);
        ip(&["netns", "add", &hosts.client]);
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            &hosts.server,
            "type",
            "veth",
            "peer",
            "name",
            &hosts.client_if,
            "netns",
            &hosts.client,
        ]);
        for (ns, dev, addr) in [
            (&hosts.server, &server_if, "10.213.77.1/24"),
            (&hosts.client, &hosts.client_if, "10.213.77.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_vanished_peer_is_freed_within_heartbeat_plus_dead_peer_timeout() {
    let hosts = Hosts::new();
    let dir = TempDir::new("deadpeer");
    let control = dir.path().join("control.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &hosts.server])
        .arg(bin("mailboxd"))
        .arg("--control")
        .arg(&control)
        .args(["--http", &format!("{}:0", hosts.server_ip)])
        .args(["--heartbeat", "1", "--dead-peer-timeout", "3"]);
    let srv = Mailboxd::spawn(cmd, dir, control, 2);
    let url = format!("http://{}:{}/comet/far", hosts.server_ip, srv.port);
    let _client = Killed(
        Command::new("ip")
            .args(["netns", "exec", &hosts.client, "curl", "-sN", &url])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    srv.wait_info("far", |r| r.contains("subscribers=1"));
    // The heartbeats are acknowledged while the link is up.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(srv.ctl().cmd("INFO far").contains("subscribers=1"));

    ip(&["-n", &hosts.client, "link", "set", &hosts.client_if, "down"]);
    let cut = Instant::now();
    let mut ctl = srv.ctl();
    wait_for(Duration::from_secs(15), || {
        let r = ctl.cmd("INFO far");
        (r.starts_with("ERR NOTFOUND") || r.contains("subscribers=0")).then_some(())
    });
    let freed = cut.elapsed();
    eprintln!("vanished peer freed after {} ms", freed.as_millis());
    // Heartbeat 1 s + dead-peer-timeout 3 s, plus the kernel's timer slack.
    assert!(freed < Duration::from_secs(8), "{freed:?}");
}
