//! Shared test harness: start the real `mailboxd`, talk to it over real sockets.
//!
//! Every server gets its own temp directory and port 0; the actual port is
//! read from the server's own `listening http=` log line, so tests never race
//! for ports. Waits poll with deadlines; nothing sleeps a fixed time to
//! "let things settle".
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("mbx-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `mailboxd`.
pub struct Mailboxd {
    pub child: Child,
    pub dir: TempDir,
    pub control: PathBuf,
    /// The first TCP HTTP port.
    pub port: u16,
    /// Every `listening role=addr` line, in order.
    pub listening: Vec<(String, String)>,
    pub log: Arc<Mutex<String>>,
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "mailboxd" => PathBuf::from(env!("CARGO_BIN_EXE_mailboxd")),
        "mailboxctl" => PathBuf::from(env!("CARGO_BIN_EXE_mailboxctl")),
        _ => panic!("unknown binary {name}"),
    }
}

impl Mailboxd {
    /// Starts with an HTTP listener on a free port plus `extra` flags.
    pub fn start(extra: &[&str]) -> Mailboxd {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_raw(&args)
    }

    /// Starts with exactly `args` (plus the control socket in a temp dir).
    pub fn start_raw(args: &[&str]) -> Mailboxd {
        let dir = TempDir::new("srv");
        let control = dir.path().join("control.sock");
        let mut cmd = Command::new(bin("mailboxd"));
        cmd.arg("--control").arg(&control).args(args);
        Self::spawn(cmd, dir, control, 2)
    }

    /// Spawns a prepared command and waits until `listeners` listening lines appeared.
    pub fn spawn(mut cmd: Command, dir: TempDir, control: PathBuf, listeners: usize) -> Mailboxd {
        cmd.env(
            "RUST_LOG",
            std::env::var("MAILBOXD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mailboxd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening ").nth(1)
                    && let Some((role, addr)) = rest.split_once('=')
                {
                    let _ = tx.send((role.to_string(), addr.to_string()));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut listening = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening.len() < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => listening.push(l),
                Err(_) => {
                    let _ = child.kill();
                    panic!("mailboxd did not start; log:\n{}", log.lock().unwrap());
                }
            }
        }
        let port = listening
            .iter()
            .find(|(role, addr)| role != "control" && !addr.starts_with("unix:"))
            .map_or(0, |(_, addr)| {
                addr.rsplit(':').next().unwrap().parse().unwrap()
            });
        Mailboxd {
            child,
            dir,
            control,
            port,
            listening,
            log,
        }
    }

    pub fn ctl(&self) -> Ctl {
        Ctl::connect(&self.control)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "mailboxd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `INFO` until `pred` holds for its reply.
    pub fn wait_info(&self, mailbox: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut ctl = self.ctl();
        wait_for(Duration::from_secs(5), || {
            let r = ctl.cmd(&format!("INFO {mailbox}"));
            pred(&r).then_some(r)
        })
    }
}

impl Drop for Mailboxd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Retries `f` until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A control-socket client.
pub struct Ctl {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Ctl {
    pub fn connect(path: &Path) -> Ctl {
        let stream = UnixStream::connect(path).expect("connect control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Ctl { stream, reader }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("reply line");
        line.trim_end_matches('\n').to_string()
    }

    /// Sends one request line, returns the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.write(format!("{line}\n").as_bytes());
        self.line()
    }

    pub fn send(&mut self, mailbox: &str, data: &str) -> (u64, usize) {
        let reply = self.cmd(&format!("SEND {mailbox} {}\n{data}", data.len()));
        parse_ok2(&reply)
    }

    pub fn send_event(&mut self, mailbox: &str, event: &str, data: &str) -> u64 {
        let reply = self.cmd(&format!(
            "SEND {mailbox} {} event={event}\n{data}",
            data.len()
        ));
        parse_ok2(&reply).0
    }

    pub fn publish(&mut self, group: &str, data: &str, except: &str) -> (u64, usize) {
        let ex = if except.is_empty() {
            String::new()
        } else {
            format!(" except={except}")
        };
        let reply = self.cmd(&format!("PUBLISH {group} {}{ex}\n{data}", data.len()));
        parse_ok2(&reply)
    }

    /// Reads until EOF (the server closed).
    pub fn read_to_end(&mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

pub fn parse_ok2(reply: &str) -> (u64, usize) {
    let parts: Vec<&str> = reply.split(' ').collect();
    assert_eq!(parts.len(), 3, "unexpected reply {reply:?}");
    assert_eq!(parts[0], "OK", "unexpected reply {reply:?}");
    (parts[1].parse().unwrap(), parts[2].parse().unwrap())
}

/// One SSE event (or comment) as a client sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: String,
    pub comment: bool,
    pub retry: bool,
}

/// A streaming HTTP response read over a raw socket.
pub struct HttpStream {
    pub status: u16,
    pub head: String,
    reader: BufReader<Box<dyn ReadTimeout>>,
}

pub trait ReadTimeout: Read + Send {
    fn set_timeout(&self, d: Duration);
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}

impl ReadTimeout for UnixStream {
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}

pub fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s
}

impl HttpStream {
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpStream {
        Self::from_stream(Box::new(request(port, path, headers)))
    }

    pub fn from_stream(stream: Box<dyn ReadTimeout>) -> HttpStream {
        stream.set_timeout(Duration::from_secs(10));
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("response head");
            assert!(n > 0, "connection closed before the head ended: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        HttpStream {
            status,
            head,
            reader,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.reader.get_ref().set_timeout(d);
    }

    /// Next raw line without its `\n`; `None` on EOF.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_string()),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Next SSE block (event, comment or retry hint); `None` on EOF.
    pub fn next_block(&mut self) -> Option<Event> {
        let mut ev = Event::default();
        let mut data: Vec<String> = Vec::new();
        let mut any = false;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                if any {
                    ev.data = data.join("\n");
                    return Some(ev);
                }
                continue;
            }
            any = true;
            if line.starts_with(':') {
                ev.comment = true;
            } else if let Some(v) = line.strip_prefix("id: ") {
                ev.id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                ev.event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_string());
            } else if line.starts_with("retry: ") {
                ev.retry = true;
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
    }

    /// Next SSE event, skipping comments and the retry hint.
    pub fn next_event(&mut self) -> Event {
        loop {
            let ev = self.next_block().expect("stream ended");
            if !ev.comment && !ev.retry {
                return ev;
            }
        }
    }

    /// True if the server closes the stream within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Reads a sized body (Content-Length).
    pub fn body(&mut self) -> String {
        let len: usize = self
            .header("Content-Length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }
}

/// One whole GET with a sized answer: (status, head, body).
pub fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut r = HttpStream::open(port, path, &[("Connection", "close")]);
    let body = r.body();
    (r.status, r.head.clone(), body)
}

/// Minimal JSON field extraction for long-poll bodies (ids and data strings).
pub fn poll_ids(body: &str) -> Vec<u64> {
    body.match_indices("{\"id\":")
        .map(|(i, _)| {
            let rest = &body[i + 6..];
            rest[..rest.find(',').unwrap()].parse().unwrap()
        })
        .collect()
}

pub fn poll_last_id(body: &str) -> u64 {
    let rest = &body[body.find("\"last_id\":").unwrap() + 10..];
    rest[..rest.find(',').unwrap()].parse().unwrap()
}
