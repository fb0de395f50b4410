//! `--metrics`: the Prometheus page under traffic, checked by the real
//! `promtool`, its figures against what was done, and who may fetch it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn promtool() -> &'static str {
    let p = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(p).exists(),
        "promtool is not installed: run tests/run-all.sh (Debian package prometheus)"
    );
    p
}

/// One sample's value, by its full name with labels.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not on the page:\n{page}"))
        .parse()
        .unwrap()
}

#[test]
fn the_page_passes_promtool_under_traffic_and_counts_what_happened() {
    let srv = Mailboxd::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = srv.port_of("metrics");
    let mut ctl = srv.ctl();
    let (first, _) = ctl.send("alice", "one");
    let mut a = HttpStream::open(
        srv.port,
        "/comet/alice",
        &[("Last-Event-ID", &first.to_string())],
    );
    let _b = HttpStream::open(srv.port, "/comet/bob?transport=stream", &[]);
    let _held = request(srv.port, "/comet/carol?transport=poll", &[]);
    srv.wait_info("carol", |r| r.contains("subscribers=1"));
    srv.wait_info("bob", |r| r.contains("subscribers=1"));
    srv.wait_info("alice", |r| r.contains("subscribers=1"));
    for i in 0..5 {
        ctl.send("alice", &format!("m{i}"));
    }
    for _ in 0..5 {
        a.next_event();
    }
    assert!(ctl.cmd("SEND").starts_with("ERR SYNTAX"));
    assert!(ctl.cmd("INFO nobody").starts_with("ERR NOTFOUND"));
    // A resume from before the server's first id is a gap.
    let (_, _, body) = get(srv.port, "/comet/alice?transport=poll&since=1");
    assert!(body.contains("\"gap\":true"));

    let (status, head, page) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{page}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sample(&page, "mailboxd_control_commands_total{verb=\"SEND\"}"),
        6.0
    );
    assert_eq!(
        sample(&page, "mailboxd_control_errors_total{code=\"SYNTAX\"}"),
        1.0
    );
    assert_eq!(
        sample(&page, "mailboxd_control_errors_total{code=\"NOTFOUND\"}"),
        1.0
    );
    assert_eq!(
        sample(&page, "mailboxd_transport_subscribers{transport=\"sse\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &page,
            "mailboxd_transport_subscribers{transport=\"stream\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&page, "mailboxd_transport_subscribers{transport=\"poll\"}"),
        1.0
    );
    assert_eq!(
        sample(&page, "mailboxd_gateway_connections{gateway=\"http\"}"),
        3.0
    );
    assert_eq!(sample(&page, "mailboxd_subscribers"), 3.0);
    assert_eq!(sample(&page, "mailboxd_messages_stored_total"), 6.0);
    assert!(sample(&page, "mailboxd_deliveries_total") >= 5.0);
    assert_eq!(sample(&page, "mailboxd_gap_notices_total"), 1.0);
    assert!(sample(&page, "mailboxd_loop_turn_seconds_count") > 10.0);
    assert!(
        sample(&page, "mailboxd_loop_turn_seconds_bucket{le=\"+Inf\"}")
            == sample(&page, "mailboxd_loop_turn_seconds_count")
    );
    // STATS and the page come from the same figures.
    let stats = ctl.cmd("STATS");
    assert_eq!(field(&stats, "delivered"), Some(6));
    assert_eq!(field(&stats, "subscribers"), Some(3));
    // The scrape itself is counted; other paths are not the page.
    let (_, _, again) = get(metrics, "/metrics");
    assert_eq!(sample(&again, "mailboxd_metrics_scrapes_total"), 2.0);
    let (status, _, _) = get(metrics, "/comet/alice");
    assert_eq!(status, 404);
}

#[test]
fn only_allowed_peers_may_fetch_metrics() {
    let srv = Mailboxd::start(&["--metrics", "127.0.0.1:0", "--metrics-allow", "10.0.0.0/8"]);
    let metrics = srv.port_of("metrics");
    let mut s = request(metrics, "/metrics", &[]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(
        buf.is_empty(),
        "refused without an answer: {}",
        String::from_utf8_lossy(&buf)
    );
    wait_for(Duration::from_secs(5), || {
        (field(&srv.ctl().cmd("STATS"), "denied") == Some(1)).then_some(())
    });
}

#[test]
fn the_shipped_dashboard_queries_parse_and_name_real_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/mailboxd.json");
    let json = std::fs::read_to_string(path).unwrap();
    let exprs: Vec<String> = json
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"expr\": \""))
        .map(|e| {
            e.trim_end_matches(',')
                .trim_end_matches('"')
                .replace("\\\"", "\"")
        })
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    // promtool parses every query, as alerting rules.
    let dir = TempDir::new("rules");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: '{e}'\n"
        ));
    }
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And every metric they name is on a live page.
    let srv = Mailboxd::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = srv.port_of("metrics");
    let (_, _, page) = get(metrics, "/metrics");
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mailboxd_"))
        {
            assert!(
                page.contains(&format!("\n{name}")),
                "{name} (in {e}) is not on the page"
            );
        }
    }
}

#[test]
fn scrapers_past_the_connection_cap_are_turned_away_and_the_rest_served() {
    let srv = Mailboxd::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = srv.port_of("metrics");
    let mut ctl = srv.ctl();
    let accepted = field(&ctl.cmd("STATS"), "accepted").unwrap();
    // 16 scrapers that never send their request hold every slot.
    let idle: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap())
        .collect();
    wait_for(Duration::from_secs(5), || {
        (field(&ctl.cmd("STATS"), "accepted") == Some(accepted + 16)).then_some(())
    });
    let mut extra = request(metrics, "/metrics", &[]);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut extra, &mut buf);
    assert!(buf.is_empty(), "the 17th is closed unanswered");
    assert_eq!(field(&ctl.cmd("STATS"), "refused"), Some(1));
    drop(idle);
    // Once the idle ones are gone, scrapes are served again (an attempt that
    // still meets a full table is closed, and retried).
    wait_for(Duration::from_secs(5), || {
        let mut s = request(metrics, "/metrics", &[("Connection", "close")]);
        let mut page = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut page);
        (page.starts_with("HTTP/1.1 200") && page.contains("mailboxd_metrics_scrapes_total"))
            .then_some(())
    });
}
