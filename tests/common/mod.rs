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
        Self::start_env(args, &[])
    }

    /// Like [`Mailboxd::start`], logging at debug level: every throttled
    /// warning then shows in the log.
    pub fn start_debug(extra: &[&str]) -> Mailboxd {
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_env(&args, &[("RUST_LOG", "debug")])
    }

    /// Starts with exactly `args` and extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Mailboxd {
        let dir = TempDir::new("srv");
        let control = dir.path().join("control.sock");
        let mut cmd = Command::new(bin("mailboxd"));
        cmd.arg("--control").arg(&control).args(args);
        cmd.envs(env.iter().copied());
        let listeners = args
            .iter()
            .filter(|a| ["--http", "--fastcgi", "--scgi", "--metrics"].contains(a))
            .count();
        Self::spawn(cmd, dir, control, 1 + listeners.max(1))
    }

    /// Spawns a prepared command and waits until `listeners` listening lines appeared.
    pub fn spawn(mut cmd: Command, dir: TempDir, control: PathBuf, listeners: usize) -> Mailboxd {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("MAILBOXD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
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

    /// The address of the first listener of `role` (`http`, `fastcgi`, `scgi`).
    pub fn addr(&self, role: &str) -> String {
        self.listening
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, a)| a.clone())
            .expect("listener")
    }

    /// The TCP port of the first listener of `role`.
    pub fn port_of(&self, role: &str) -> u16 {
        let addr = self.addr(role);
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{role} listens on {addr}, not a TCP port"))
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
    /// Waits until `mailbox` has no subscriber: INFO says so, or the mailbox
    /// is gone (one that holds nothing disappears with its last subscriber).
    pub fn wait_unsubscribed(&self, mailbox: &str) {
        self.wait_info(mailbox, |r| {
            r.contains("subscribers=0") || r.starts_with("ERR NOTFOUND")
        });
    }

    /// (Up to 10 s: some web servers notice a vanished client only at the
    /// second or third heartbeat written to it.)
    pub fn wait_info(&self, mailbox: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut ctl = self.ctl();
        wait_for(Duration::from_secs(10), || {
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

/// mailboxd started on sockets the test holds, as systemd's socket
/// activation would: each `(fd, name)` is passed at 3, 4, ... with
/// `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`; `listeners` is how many
/// listening lines to wait for.
pub fn start_activated(
    sockets: &[(std::os::fd::RawFd, &str)],
    args: &[&str],
    env: &[(&str, &str)],
    control: &Path,
    listeners: usize,
) -> Mailboxd {
    let fds: Vec<std::os::fd::RawFd> = sockets.iter().map(|s| s.0).collect();
    let names: Vec<&str> = sockets.iter().map(|s| s.1).collect();
    let mut cmd = Command::new("sh");
    // LISTEN_PID names the process that is to use the sockets: the shell
    // execs mailboxd, which keeps its pid.
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("mailboxd"))
        .args(args)
        .envs(env.iter().copied())
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    pass_fds(&mut cmd, fds);
    Mailboxd::spawn(cmd, TempDir::new("act"), control.to_path_buf(), listeners)
}

/// Makes `cmd`'s process find `fds` at 3, 4, ... (as systemd or a
/// predecessor passes them); the originals here keep close-on-exec.
pub fn pass_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only fcntl and dup2, which are
    // async-signal-safe. Each descriptor is first copied above every target
    // number, so that placing one never overwrites another.
    unsafe {
        cmd.pre_exec(move || {
            let above = 3 + fds.len() as i32 + 16;
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(copy);
            }
            for (i, &copy) in high.iter().enumerate() {
                if libc::dup2(copy, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A process the test did not start itself (the new mailboxd after an
/// upgrade, a child of the old one), stopped with SIGTERM by pid at the end.
pub struct Orphan(pub u32);

impl Orphan {
    /// Whether it still runs (a zombie nobody reaps does not).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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

/// The value of `name=<n>` in an `INFO` or `STATS` reply.
pub fn field(reply: &str, name: &str) -> Option<u64> {
    reply
        .split(' ')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
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

/// A streaming HTTP response read over a raw socket (chunked bodies, as web
/// servers send them to HTTP/1.1 clients, are decoded).
pub struct HttpStream {
    pub status: u16,
    pub head: String,
    reader: Box<dyn BufRead + Send>,
}

/// Decodes `Transfer-Encoding: chunked`.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(0);
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
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
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let reader: Box<dyn BufRead + Send> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(reader)
        };
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

    /// Next raw line without its `\n`; `None` on EOF.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_string()),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Next non-empty line of the stream transport (empty lines are heartbeats).
    pub fn data_line(&mut self) -> Option<String> {
        loop {
            let line = self.line()?;
            if !line.is_empty() {
                return Some(line);
            }
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

    /// Reads a whole body: sized (Content-Length), or chunked (some web
    /// servers re-frame a gateway's sized answer) to its last chunk.
    pub fn body(&mut self) -> String {
        let Some(len) = self.header("Content-Length") else {
            let mut text = String::new();
            self.reader.read_to_string(&mut text).unwrap();
            return text;
        };
        let len: usize = len.parse().unwrap();
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

/// A free TCP port on loopback, for servers that cannot report one they chose.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A web server (nginx or lighttpd) started from a shipped contrib config.
pub struct WebServer {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
    pub name: String,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

/// Reads `contrib/<path>` and applies literal replacements, insisting that
/// each literal is present, so the shipped configs and the tests cannot drift.
pub fn contrib_config(path: &str, replacements: &[(&str, String)]) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path);
    let mut text =
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{path} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// The absolute path of `contrib/<path>` in the source tree.
pub fn contrib_path(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
        .display()
        .to_string()
}

fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run tests/run-all.sh, which installs the test dependencies");
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    wait_for(Duration::from_secs(10), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "web server exited ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

impl WebServer {
    /// nginx from `contrib/nginx/<gateway>.conf`, its upstream replaced by `upstream`
    /// (`127.0.0.1:PORT` or `unix:PATH`).
    pub fn nginx(gateway: &str, upstream: &str) -> WebServer {
        Self::nginx_serving(gateway, upstream, None)
    }

    /// The same, also serving the files of `root` beside `/comet/` (pages
    /// that use mailboxd from the same origin).
    pub fn nginx_with_root(gateway: &str, upstream: &str, root: &Path) -> WebServer {
        Self::nginx_serving(gateway, upstream, Some(root))
    }

    fn nginx_serving(gateway: &str, upstream: &str, root: Option<&Path>) -> WebServer {
        let nginx = require("nginx");
        let dir = TempDir::new("nginx");
        let port = free_port();
        let default_upstream = match gateway {
            "fastcgi" => "server 127.0.0.1:8421;",
            "scgi" => "server 127.0.0.1:8422;",
            _ => "server 127.0.0.1:8420;",
        };
        let d = dir.path().display();
        let conf = contrib_config(
            &format!("nginx/{gateway}.conf"),
            &[
                ("listen 8080;", format!("listen 127.0.0.1:{port};")),
                (default_upstream, format!("server {upstream};")),
                (
                    "pid /run/nginx-mailboxd.pid;",
                    format!("pid {d}/nginx.pid;"),
                ),
                (
                    "/var/log/nginx/mailboxd-error.log",
                    format!("{d}/error.log"),
                ),
            ],
        );
        let conf = match root {
            Some(root) => conf.replacen(
                "location /comet/ {",
                &format!(
                    "location / {{ root {}; types {{ text/html html; text/javascript js; }} }}\n        location /comet/ {{",
                    root.display()
                ),
                1,
            ),
            None => conf,
        };
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("error.log");
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_listening(port, &mut child, &log);
        WebServer {
            child,
            port,
            dir,
            name: format!("nginx {gateway}"),
        }
    }

    /// lighttpd from `contrib/lighttpd/<file>.conf`, pointed at `upstream`:
    /// a TCP port, or the socket path for the `-unix` config.
    pub fn lighttpd(file: &str, upstream: &str) -> WebServer {
        let lighttpd = require("lighttpd");
        let dir = TempDir::new("lighttpd");
        let port = free_port();
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        let mut replacements = vec![
            (
                "server.port = 8080",
                format!("server.bind = \"127.0.0.1\"\nserver.port = {port}"),
            ),
            ("/run/lighttpd-mailboxd.pid", format!("{d}/lighttpd.pid")),
            (
                "/var/log/lighttpd/mailboxd-error.log",
                format!("{d}/error.log"),
            ),
            ("/var/www/html", format!("{d}/www")),
            (
                "/usr/share/mailboxd/lighttpd/mailboxd-down.sh",
                contrib_path("lighttpd/mailboxd-down.sh"),
            ),
        ];
        let upstream_literal = match file {
            "fastcgi" => "\"port\" => 8421",
            "scgi" => "\"port\" => 8422",
            "http" => "\"port\" => 8420",
            _ => "\"/run/mailboxd/fastcgi.sock\"",
        };
        let upstream_value = if file.ends_with("-unix") {
            format!("\"{upstream}\"")
        } else {
            format!("\"port\" => {upstream}")
        };
        replacements.push((upstream_literal, upstream_value));
        let conf = contrib_config(&format!("lighttpd/{file}.conf"), &replacements);
        let conf_path = dir.path().join("lighttpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("error.log");
        let mut child = Command::new(lighttpd)
            .arg("-D")
            .arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lighttpd");
        wait_listening(port, &mut child, &log);
        WebServer {
            child,
            port,
            dir,
            name: format!("lighttpd {file}"),
        }
    }

    /// Apache httpd from `contrib/apache/<gateway>.conf`, proxying to
    /// mailboxd on 127.0.0.1:`upstream`.
    pub fn apache(gateway: &str, upstream: u16) -> WebServer {
        let apache = require("apache2");
        let dir = TempDir::new("apache");
        let port = free_port();
        let d = dir.path().display().to_string();
        let default_port = match gateway {
            "fastcgi" => "127.0.0.1:8421",
            "scgi" => "127.0.0.1:8422",
            _ => "127.0.0.1:8420",
        };
        let conf = contrib_config(
            &format!("apache/{gateway}.conf"),
            &[
                ("Listen 8080", format!("Listen 127.0.0.1:{port}")),
                (default_port, format!("127.0.0.1:{upstream}")),
                ("/run/apache2-mailboxd.pid", format!("{d}/apache.pid")),
                (
                    "DefaultRuntimeDir /run/apache2",
                    format!("DefaultRuntimeDir {d}"),
                ),
                (
                    "/var/log/apache2/mailboxd-error.log",
                    format!("{d}/error.log"),
                ),
                (
                    "/usr/share/mailboxd/apache/mailboxd-down.asis",
                    contrib_path("apache/mailboxd-down.asis"),
                ),
            ],
        );
        let conf_path = dir.path().join("apache.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("error.log");
        let mut child = Command::new(apache)
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2");
        wait_listening(port, &mut child, &log);
        WebServer {
            child,
            port,
            dir,
            name: format!("apache {gateway}"),
        }
    }

    /// Caddy from `contrib/caddy/<gateway>.Caddyfile`, proxying to
    /// mailboxd on 127.0.0.1:`upstream`.
    pub fn caddy(gateway: &str, upstream: u16) -> WebServer {
        let caddy = require("caddy");
        let dir = TempDir::new("caddy");
        let port = free_port();
        let default_port = match gateway {
            "fastcgi" => "127.0.0.1:8421",
            _ => "127.0.0.1:8420",
        };
        let conf = contrib_config(
            &format!("caddy/{gateway}.Caddyfile"),
            &[
                (":8080 {", format!(":{port} {{\n\tbind 127.0.0.1")),
                (default_port, format!("127.0.0.1:{upstream}")),
            ],
        );
        let conf_path = dir.path().join("Caddyfile");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("caddy.log");
        let mut child = Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start caddy");
        wait_listening(port, &mut child, &log);
        WebServer {
            child,
            port,
            dir,
            name: format!("caddy {gateway}"),
        }
    }
}
