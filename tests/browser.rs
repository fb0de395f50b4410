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
        // Module scripts may still be running after the load event.
        wait_for(Duration::from_secs(15), || {
            (self.eval(&handle, "return !!window.box") == json!(true)).then_some(())
        });
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
        // The closed tab's connection goes; one stays for the others.
        srv.wait_info(mailbox, |r| r.contains("subscribers=1"));
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

/// The lines a chat page shows.
fn chat_lines(driver: &Driver, tab: &str) -> Vec<String> {
    driver
        .eval(
            tab,
            "return [...document.querySelectorAll('#log li')].map(li => li.textContent)",
        )
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn chat_open(driver: &Driver, url: &str) -> String {
    let tab = driver.tab(url);
    wait_for(Duration::from_secs(15), || {
        let state = driver.eval(&tab, "return document.getElementById('state').textContent");
        (state == json!("open")).then_some(())
    });
    tab
}

fn say(driver: &Driver, tab: &str, text: &str) {
    driver.eval(
        tab,
        &format!(
            "document.getElementById('text').value = {}; document.getElementById('say').requestSubmit();",
            json!(text)
        ),
    );
}

fn wait_line(driver: &Driver, tab: &str, line: &str) -> Vec<String> {
    wait_for(Duration::from_secs(15), || {
        let lines = chat_lines(driver, tab);
        lines.iter().any(|l| l == line).then_some(lines)
    })
}

/// Processes the test started, stopped with SIGTERM (nginx's master then
/// stops its workers; SIGKILL would orphan them), killed if they linger.
struct Stopped(Vec<Child>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            signal(c.id(), "TERM");
        }
        for c in &mut self.0 {
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_chat_demo_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let srv = Mailboxd::start(&["--mailbox-ttl", "3600"]);
    let backend = free_port();
    let chat = Command::new("python3")
        .arg(root.join("contrib/demo/chat.py"))
        .args(["--listen", &format!("127.0.0.1:{backend}")])
        .arg("--control")
        .arg(&srv.control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut children = Stopped(vec![chat]);
    let dir = TempDir::new("demo");
    let port = free_port();
    let mbx = srv.port_of("http").to_string();
    let conf = contrib_config(
        "demo/nginx.conf",
        &[
            ("@DIR@", dir.path().display().to_string()),
            ("@PORT@", port.to_string()),
            ("@MAILBOXD@", mbx),
            ("@BACKEND@", backend.to_string()),
        ],
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    children.0.push(nginx);
    for p in [backend, port] {
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", p)).ok().map(|_| ())
        });
    }
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{port}/?room=lobby");
    let alice = chat_open(&driver, &format!("{base}&name=alice"));
    let bob = chat_open(&driver, &format!("{base}&name=bob"));

    // A's line reaches B, and shows once in A's page (its own echo, no
    // copy from the server).
    say(&driver, &alice, "hello bob");
    let lines = wait_line(&driver, &bob, "alicehello bob");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("hello bob")).count(),
        1,
        "{lines:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mine = chat_lines(&driver, &alice);
    assert_eq!(
        mine.iter().filter(|l| l.ends_with("hello bob")).count(),
        1,
        "{mine:?}"
    );

    // B goes away; what A says meanwhile is there when B comes back.
    driver.close(&bob);
    srv.wait_unsubscribed("u-bob");
    say(&driver, &alice, "while you were away");
    wait_for(Duration::from_secs(10), || {
        field(&srv.ctl().cmd("INFO u-bob"), "retained")
            .filter(|&n| n >= 2)
            .map(|_| ())
    });
    let bob = chat_open(&driver, &format!("{base}&name=bob"));
    wait_line(&driver, &bob, "alicewhile you were away");

    // A second tab for A: still one connection for A.
    let alice2 = chat_open(&driver, &format!("{base}&name=alice"));
    say(&driver, &bob, "hi both tabs");
    wait_line(&driver, &alice, "bobhi both tabs");
    wait_line(&driver, &alice2, "bobhi both tabs");
    assert_eq!(
        field(&srv.ctl().cmd("INFO u-alice"), "subscribers"),
        Some(1),
        "two tabs of alice, one subscriber"
    );

    // A picture of the page, kept as a test artifact.
    driver.switch(&bob);
    let shot = driver.cmd("GET", "screenshot", None);
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot.as_str().expect("a screenshot"),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("chat-demo.png"), png).unwrap();
}

/// A page with a plain `EventSource` (no client library): what it gets
/// goes to `window.got` as `[lastEventId, data]`, and every `readyState`
/// seen on an error to `window.errors` (0: reconnecting, 2: given up).
const PLAIN: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>plain EventSource</title>
<script>
window.got = []; window.errors = [];
const es = new EventSource("/comet/" + new URLSearchParams(location.search).get("mb"));
es.onmessage = (e) => window.got.push([e.lastEventId, e.data]);
es.onerror = () => window.errors.push(es.readyState);
window.box = es;
</script>
"#;

/// What a plain page received, as `(id, data)`.
fn plain_got(driver: &Driver, tab: &str) -> Vec<(u64, String)> {
    let v = driver.eval(tab, "return window.got");
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().parse().unwrap(),
                m[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_plain(driver: &Driver, tab: &str, n: usize) -> Vec<(u64, String)> {
    wait_for(Duration::from_secs(20), || {
        let got = plain_got(driver, tab);
        (got.len() >= n).then_some(got)
    })
}

/// A directory serving the plain page, readable by nginx's workers.
fn plain_site() -> TempDir {
    let www = TempDir::new("www");
    std::fs::write(www.path().join("plain.html"), PLAIN).unwrap();
    www
}

fn world_accessible(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// mailboxd socket-activated behind nginx FastCGI: the test holds the
/// FastCGI and control sockets as systemd would. SIGTERM, 5 s down, start
/// again: the page's EventSource never gives up, and gets every message
/// sent before, during (a backend's SENDs wait in the control socket's
/// queue) and after, in order, exactly once.
#[test]
fn a_plain_eventsource_sees_nothing_of_a_socket_activated_restart() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    let held = TempDir::new("held");
    world_accessible(held.path(), 0o755);
    let fcgi_path = held.path().join("fastcgi.sock");
    let fcgi = UnixListener::bind(&fcgi_path).unwrap();
    world_accessible(&fcgi_path, 0o666);
    let control_path = held.path().join("control.sock");
    let control = UnixListener::bind(&control_path).unwrap();
    let state = held.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap(), "--heartbeat", "2"];
    let sockets = [
        (fcgi.as_raw_fd(), "fastcgi"),
        (control.as_raw_fd(), "control"),
    ];
    let mut first = start_activated(&sockets, &args, &[], &control_path, 2);
    let www = plain_site();
    let web = WebServer::nginx_with_root(
        "fastcgi",
        &format!("unix:{}", fcgi_path.display()),
        www.path(),
    );
    let driver = Driver::start();
    let tab = driver.tab(&format!("http://127.0.0.1:{}/plain.html?mb=room", web.port));
    first.wait_info("room", |r| r.contains("subscribers=1"));

    let mut want = Vec::new();
    let mut ctl = first.ctl();
    for i in 0..3 {
        want.push((
            ctl.send("room", &format!("before {i}")).0,
            format!("before {i}"),
        ));
    }
    assert_eq!(wait_plain(&driver, &tab, 3), want);

    assert_eq!(first.terminate(), Some(0));
    // Down for 5 s: a backend connects and sends; it waits in the queue.
    let mut backend = UnixStream::connect(&control_path).unwrap();
    for i in 0..3 {
        let data = format!("during {i}");
        write!(backend, "SEND room {}\n{data}\n", data.len()).unwrap();
    }
    std::thread::sleep(Duration::from_secs(5));
    let second = start_activated(&sockets, &args, &[], &control_path, 2);
    backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut replies = BufReader::new(backend);
    for i in 0..3 {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        let (id, _) = parse_ok2(line.trim_end());
        want.push((id, format!("during {i}")));
    }
    second.wait_info("room", |r| r.contains("subscribers=1"));
    let mut ctl = second.ctl();
    for i in 0..3 {
        want.push((
            ctl.send("room", &format!("after {i}")).0,
            format!("after {i}"),
        ));
    }
    let got = wait_plain(&driver, &tab, want.len());
    assert_eq!(got, want, "every message once, in order");
    let errors = driver.eval(&tab, "return window.errors");
    assert!(
        errors.as_array().unwrap().iter().all(|s| s == 0),
        "the EventSource only ever reconnected: {errors}"
    );
    drop(www);
}

/// The same without socket activation: mailboxd's own socket disappears
/// for 5 s, and the shipped nginx config answers the EventSource's retries
/// with a retry hint instead of a 502 that would end it for good.
#[test]
fn a_plain_eventsource_survives_an_outage_behind_the_shipped_nginx_config() {
    let dir = TempDir::new("outage");
    world_accessible(dir.path(), 0o755);
    let fcgi = format!("unix:{}", dir.path().join("fastcgi.sock").display());
    let state = dir.path().join("state");
    let args = [
        "--fastcgi",
        fcgi.as_str(),
        "--socket-mode",
        "0666",
        "--state-dir",
        state.to_str().unwrap(),
        "--heartbeat",
        "2",
    ];
    let mut first = Mailboxd::start_raw(&args);
    let www = plain_site();
    let web = WebServer::nginx_with_root("fastcgi", &fcgi, www.path());
    let driver = Driver::start();
    let tab = driver.tab(&format!("http://127.0.0.1:{}/plain.html?mb=room", web.port));
    first.wait_info("room", |r| r.contains("subscribers=1"));
    let (before, _) = first.ctl().send("room", "before");
    assert_eq!(
        wait_plain(&driver, &tab, 1),
        vec![(before, "before".to_string())]
    );

    assert_eq!(first.terminate(), Some(0));
    std::thread::sleep(Duration::from_secs(5));
    let second = Mailboxd::start_raw(&args);
    second.wait_info("room", |r| r.contains("subscribers=1"));
    let (after, _) = second.ctl().send("room", "after");
    let got = wait_plain(&driver, &tab, 2);
    assert_eq!(
        got,
        vec![(before, "before".to_string()), (after, "after".to_string())]
    );
    let errors = driver.eval(&tab, "return window.errors");
    let errors = errors.as_array().unwrap();
    assert!(
        errors.len() >= 2,
        "it retried during the outage: {errors:?}"
    );
    assert!(errors.iter().all(|s| s == 0), "never gave up: {errors:?}");
    drop(www);
}
