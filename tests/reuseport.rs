//! `--reuse-port`: several mailboxd processes on one host listen on the
//! same TCP port and the kernel spreads new connections over them.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn two_instances_share_a_port_and_its_clients() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let a = Mailboxd::start_raw(&["--http", &addr, "--reuse-port"]);
    let b = Mailboxd::start_raw(&["--http", &addr, "--reuse-port"]);
    let clients: Vec<TcpStream> = (0..64)
        .map(|i| request(port, &format!("/comet/spread{i}"), &[]))
        .collect();
    let count = |srv: &Mailboxd| field(&srv.ctl().cmd("STATS"), "subscribers").unwrap();
    let (on_a, on_b) = wait_for(Duration::from_secs(10), || {
        let (x, y) = (count(&a), count(&b));
        (x + y == 64).then_some((x, y))
    });
    assert!(on_a > 0 && on_b > 0, "spread over both: {on_a} and {on_b}");
    // Each instance serves its own clients.
    let mut reached = 0;
    for i in 0..64 {
        let data = format!("to {i}");
        let (_, live_a) = a.ctl().send(&format!("spread{i}"), &data);
        let (_, live_b) = b.ctl().send(&format!("spread{i}"), &data);
        reached += live_a + live_b;
    }
    assert_eq!(reached, 64);
    drop(clients);

    // Without the flag, the port is taken: a clear error.
    let out = Command::new(bin("mailboxd"))
        .args(["--http", &addr, "--control"])
        .arg(a.dir.path().join("third.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
