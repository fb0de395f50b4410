//! `contrib/js/mailbox.js` in a real browser: headless Chromium driven
//! through chromedriver (WebDriver), pages served by nginx from the same
//! origin as `/comet/`. One connection for several tabs (SharedWorker, and
//! the leader-tab fallback), hand-over when a tab closes, long-poll where
//! EventSource is missing, gap notices, named events.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

/// A page that opens the mailbox named in its query with the client and
/// records what it gets in `window.got`, `window.gaps`, `window.states`.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>mailbox.js test</title>
<script type="module">
const q = new URLSearchParams(location.search);
if (q.get("noes")) window.EventSource = undefined;
if (q.get("nosw")) window.SharedWorker = undefined;
const { Mailbox } = await import("/mailbox.js");
window.got = []; window.gaps = []; window.states = [];
window.box = new Mailbox("/comet/" + q.get("mb"), {
  share: q.get("share") !== "0",
  events: ["chat"],
  onMessage: (m) => window.got.push([m.id, m.event, m.data]),
  onGap: (g) => window.gaps.push(g),
  onState: (s) => window.states.push(s),
});
</script>
"#;

struct Driver {
    child: Child,
    port: u16,
    session: String,
    /// The window the session started with, kept open.
    home: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut len = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    let mut text = String::new();
    match len {
        Some(n) => {
            let mut buf = vec![0; n];
            reader.read_exact(&mut buf).unwrap();
            text = String::from_utf8(buf).unwrap();
        }
        None => {
            reader.read_to_string(&mut text).unwrap();
        }
    }
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

impl Driver {
    fn start() -> Driver {
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromedriver is not installed: run tests/run-all.sh (Debian chromium-driver)");
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        let profile = TempDir::new("chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r = http(port, "POST", "/session", Some(&caps));
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        std::mem::forget(profile);
        let mut d = Driver {
            child,
            port,
            session,
            home: String::new(),
        };
        d.home = d.cmd("GET", "window", None).as_str().unwrap().to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        http(self.port, method, path, body)["value"].clone()
    }

    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        self.call(
            method,
            &format!("/session/{}/{what}", self.session),
            body.as_ref(),
        )
    }

    /// Opens `url` in a new tab; returns its handle.
    fn tab(&self, url: &str) -> String {
        self.switch(&self.home.clone());
        let r = self.cmd("POST", "window/new", Some(json!({"type": "tab"})));
        let handle = r["handle"]
            .as_str()
            .unwrap_or_else(|| panic!("no new tab: {r}"))
            .to_string();
        self.switch(&handle);
        self.cmd("POST", "url", Some(json!({ "url": url })));
        handle
    }

    fn switch(&self, handle: &str) {
        self.cmd("POST", "window", Some(json!({ "handle": handle })));
    }

    fn close(&self, handle: &str) {
        self.switch(handle);
        self.cmd("DELETE", "window", None);
    }

    fn eval(&self, handle: &str, script: &str) -> Value {
        self.switch(handle);
        self.cmd(
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The `[id, event, data]` triples a tab's page has received.
    fn got(&self, handle: &str) -> Vec<(u64, String, String)> {
        let v = self.eval(handle, "return window.got || []");
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m[0].as_u64().unwrap(),
                            m[1].as_str().unwrap().to_string(),
                            m[2].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait_got(&self, handle: &str, n: usize) -> Vec<(u64, String, String)> {
        wait_for(Duration::from_secs(15), || {
            let got = self.got(handle);
            (got.len() >= n).then_some(got)
        })
    }
}

/// mailboxd, and nginx serving the test page and mailbox.js beside `/comet/`.
fn site() -> (Mailboxd, WebServer) {
    let srv = Mailboxd::start(&["--retain", "3", "--retry-ms", "500", "--heartbeat", "2"]);
    let upstream = srv.addr("http");
    let www = TempDir::new("www");
    std::fs::write(www.path().join("test.html"), PAGE).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/js/mailbox.js"),
        www.path().join("mailbox.js"),
    )
    .unwrap();
    let web = WebServer::nginx_with_root("http", &upstream, www.path());
    std::mem::forget(www);
    (srv, web)
}

fn subscribers(srv: &Mailboxd, mailbox: &str) -> Option<u64> {
    field(&srv.ctl().cmd(&format!("INFO {mailbox}")), "subscribers")
}

#[test]
fn tabs_share_one_connection_and_hand_it_over() {
    let (srv, web) = site();
    let driver = Driver::start();
    for (mode, mailbox) in [("", "alice"), ("&nosw=1", "bob")] {
        let url = format!("http://127.0.0.1:{}/test.html?mb={mailbox}{mode}", web.port);
        let a = driver.tab(&url);
        srv.wait_info(mailbox, |r| r.contains("subscribers=1"));
        let b = driver.tab(&url);
        let c = driver.tab(&url);
        let mut ctl = srv.ctl();
        let (one, live) = ctl.send(mailbox, "one");
        assert_eq!(live, 1, "{mode}: three tabs, one connection");
        let two = ctl.send_event(mailbox, "chat", "two");
        for tab in [&a, &b, &c] {
            let got = driver.wait_got(tab, 2);
            assert_eq!(
                got,
                vec![
                    (one, "message".to_string(), "one".to_string()),
                    (two, "chat".to_string(), "two".to_string())
                ],
                "{mode}: every tab, each message once"
            );
        }
        // The first tab (the one holding the connection in leader mode)
        // goes: another takes over, nothing lost or repeated.
        driver.close(&a);
        std::thread::sleep(Duration::from_millis(300));
        let (three, _) = ctl.send(mailbox, "three");
        for tab in [&b, &c] {
            let got = driver.wait_got(tab, 3);
            assert_eq!(got.len(), 3, "{mode}: {got:?}");
            assert_eq!(got[2].0, three, "{mode}");
        }
        assert_eq!(subscribers(&srv, mailbox), Some(1), "{mode}");
        driver.close(&b);
        driver.close(&c);
    }
}

#[test]
fn long_poll_where_eventsource_is_missing_and_gaps_reported() {
    let (srv, web) = site();
    let driver = Driver::start();
    let url = format!(
        "http://127.0.0.1:{}/test.html?mb=carol&noes=1&share=0",
        web.port
    );
    let tab = driver.tab(&url);
    srv.wait_info("carol", |r| r.contains("subscribers=1"));
    let mut ctl = srv.ctl();
    let ids: Vec<u64> = (0..3)
        .map(|i| ctl.send("carol", &format!("p{i}")).0)
        .collect();
    let got = driver.wait_got(&tab, 3);
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), ids);
    let states = driver.eval(&tab, "return window.states").to_string();
    assert!(states.contains("open"), "{states}");

    // A stream that ends while messages are evicted: the reconnection is
    // told of the gap, then gets what is retained.
    let url = format!("http://127.0.0.1:{}/test.html?mb=dave&share=0", web.port);
    let tab = driver.tab(&url);
    srv.wait_info("dave", |r| r.contains("subscribers=1"));
    let (first, _) = ctl.send("dave", "d0");
    driver.wait_got(&tab, 1);
    assert_eq!(ctl.cmd("DROP dave"), "OK");
    let later: Vec<u64> = (1..=5)
        .map(|i| ctl.send("dave", &format!("d{i}")).0)
        .collect();
    let got = driver.wait_got(&tab, 4);
    assert_eq!(got[0].0, first);
    assert_eq!(got[1..].iter().map(|m| m.0).collect::<Vec<_>>(), later[2..]);
    let gaps = driver.eval(&tab, "return window.gaps.length");
    assert_eq!(gaps, json!(1), "one gap notice");
}
