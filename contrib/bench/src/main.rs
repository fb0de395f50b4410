//! mbx-bench: load generator for mailboxd and, for comparison, Nchan.
//!
//! Subcommands (each prints `key=value` result lines a script can parse):
//!
//! * `pipeline`: pipelined `SEND`s on one control connection; accepted commands/s.
//! * `hold`: open N idle SSE subscribers, report the connect rate and failures,
//!   print `ready`, then keep them open until stdin closes.
//! * `fanout`: N subscribers of one group (mailboxd) or channel (Nchan); M
//!   timestamped messages published `interval` apart; per-message time to the
//!   last subscriber, latency percentiles over all deliveries, and a check
//!   that every subscriber got every message exactly once, in order.
//! * `throughput`: N subscribers on N mailboxes/channels; messages spread over
//!   them as fast as the publisher can; delivered messages/s end to end.
//! * `upgrade`: N subscribers in one group and a few probes receiving a
//!   message every millisecond while mailboxd is upgraded (SIGUSR2): the time
//!   from the signal to the new process serving, the longest pause a probe
//!   saw, and that every subscriber got a message sent before and one sent
//!   after, exactly once, on the connection it opened.
//! * `subscribe`: the child process `fanout` and `throughput` spawn; one
//!   process drives at most a few thousand sockets, so the load spreads over
//!   cores and stays under the per-process descriptor limit.

mod sse;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sse::Target;

fn usage() -> ! {
    eprintln!(
        "usage:
  mbx-bench pipeline --control PATH [--count N] [--mailboxes M] [--size BYTES] [--depth D]
                     [--connections C] [--first I]
  mbx-bench token [--count N]
  mbx-bench hold --addr HOST:PORT --prefix /comet/ [--first K] [--n N] [--timeout SECS]
  mbx-bench fanout --target mailboxd|nchan --addr HOST:PORT --prefix PATH
                   [--control PATH | --pub-addr HOST:PORT --pub-prefix /pub/]
                   [--subs N] [--msgs M] [--interval-ms MS] [--procs P] [--server-pids PID,PID]
                   [--store-pids PID]
  mbx-bench throughput --target mailboxd|nchan --addr HOST:PORT --prefix PATH
                   [--control PATH | --pub-addr HOST:PORT --pub-prefix /pub/]
                   [--subs N] [--msgs M] [--procs P] [--publishers K] [--server-pids PID,PID]
  mbx-bench upgrade --addr HOST:PORT --prefix PATH --control PATH --pid-file PATH
                   [--subs N] [--procs P] [--probes K] [--probe-ms MS]"
    );
    std::process::exit(2)
}

/// `--key value` pairs.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                usage()
            };
            let Some(v) = it.next() else { usage() };
            map.insert(key.to_string(), v.clone());
        }
        Args(map)
    }

    fn str(&self, k: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| {
            eprintln!("missing --{k}");
            usage()
        })
    }

    fn opt(&self, k: &str) -> Option<String> {
        self.0.get(k).cloned()
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        self.0
            .get(k)
            .map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = raw.split_first() else {
        usage()
    };
    let args = Args::parse(rest);
    match cmd.as_str() {
        "pipeline" => pipeline(&args),
        "hold" => hold(&args),
        "subscribe" => subscribe(&args),
        "fanout" => fanout(&args),
        "throughput" => throughput(&args),
        "upgrade" => upgrade(&args),
        "token" => token_cost(&args),
        _ => usage(),
    }
}

/// What checking a client's token costs the event loop: `--count N`
/// verifications each of a valid token and of a forged one (the same work
/// up to the constant-time comparison), in microseconds per check.
fn token_cost(args: &Args) {
    use mailboxd::auth::Secret;
    let n = args.num("count", 200_000);
    let secret = Secret::from_key(b"benchmark-key-0123456789abcdef00").unwrap();
    let good = secret.mint("benchmark-mailbox", u64::MAX / 2);
    // The same token with one MAC character changed: full work, then a mismatch.
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for (label, token) in [("valid", &good), ("forged", &forged)] {
        let started = std::time::Instant::now();
        let mut ok = 0u64;
        for i in 0..n {
            ok += u64::from(
                secret
                    .verify(std::hint::black_box(token), "benchmark-mailbox", i)
                    .is_ok(),
            );
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("token_check_{label}_us={us:.3} accepted={ok}/{n}");
    }
}

/// Nanoseconds since the epoch: publisher and subscribers share the machine's clock.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Pipelined SENDs: a writer thread streams requests, this thread counts replies.
fn pipeline(args: &Args) {
    let path = args.str("control");
    let count = args.num("count", 200_000) as usize;
    let mailboxes = args.num("mailboxes", 1000) as usize;
    let size = args.num("size", 32) as usize;
    let depth = args.num("depth", 0) as usize;
    let first = args.num("first", 0) as usize;
    let payload = "x".repeat(size);
    let start = Instant::now();
    let connections = args.num("connections", 1) as usize;
    let make = move |i: usize| (format!("p{}", (first + i) % mailboxes), payload.clone());
    let errors = if depth == 0 && connections == 1 {
        send_pipelined(&path, count, make)
    } else {
        send_on_many(&path, count, connections, depth.max(1), make)
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pipeline sends={count} errors={errors} secs={secs:.3} rate={:.0}",
        count as f64 / secs
    );
}

/// Sends `count` pipelined SENDs (`make(i)` gives mailbox and payload); returns ERR replies.
fn send_pipelined(
    path: &str,
    count: usize,
    make: impl Fn(usize) -> (String, String) + Send + 'static,
) -> usize {
    let stream = UnixStream::connect(path).expect("connect control socket");
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(1 << 20);
        for i in 0..count {
            let (mailbox, payload) = make(i);
            batch.extend_from_slice(
                format!("SEND {mailbox} {}\n{payload}\n", payload.len()).as_bytes(),
            );
            if batch.len() > (1 << 20) - 512 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    let mut errors = 0;
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if !line.starts_with("OK ") {
            errors += 1;
        }
    }
    sender.join().unwrap();
    errors
}

/// Sends `count` SENDs over `connections` control connections (one or
/// more) from one thread, `depth` in flight on each (what
/// `redis-benchmark -c N -P depth` does): a connection writes its next
/// window once the last is answered.
fn send_on_many(
    path: &str,
    count: usize,
    connections: usize,
    depth: usize,
    make: impl Fn(usize) -> (String, String),
) -> usize {
    use mio::net::UnixStream as MioUnix;
    use mio::{Events, Interest, Poll, Token};
    struct Conn {
        stream: MioUnix,
        waiting: usize,
        partial: Vec<u8>,
    }
    let mut poll = Poll::new().unwrap();
    let mut conns: Vec<Conn> = (0..connections)
        .map(|i| {
            let std = UnixStream::connect(path).expect("connect control socket");
            std.set_nonblocking(true).unwrap();
            let mut stream = MioUnix::from_std(std);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .unwrap();
            Conn {
                stream,
                waiting: 0,
                partial: Vec::new(),
            }
        })
        .collect();
    let (mut next, mut answered, mut errors) = (0, 0, 0);
    let send_window = |c: &mut Conn, next: &mut usize| {
        let window = depth.min(count - *next);
        let mut batch = Vec::with_capacity(window * 48);
        for i in *next..*next + window {
            let (mailbox, payload) = make(i);
            batch.extend_from_slice(
                format!("SEND {mailbox} {}\n{payload}\n", payload.len()).as_bytes(),
            );
        }
        *next += window;
        c.waiting = window;
        // Blocking semantics for the write: a window is small.
        let mut written = 0;
        while written < batch.len() {
            match c.stream.write(&batch[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("write: {e}"),
            }
        }
    };
    for c in conns.iter_mut() {
        if next < count {
            send_window(c, &mut next);
        }
    }
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 1 << 16];
    while answered < count {
        poll.poll(&mut events, Some(Duration::from_secs(30)))
            .unwrap();
        assert!(!events.is_empty(), "no reply within 30 s");
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => panic!("server closed a control connection"),
                    Ok(n) => {
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                if !c.partial.starts_with(b"OK ") {
                                    errors += 1;
                                }
                                c.partial.clear();
                                c.waiting -= 1;
                                answered += 1;
                            } else if c.partial.len() < 3 {
                                c.partial.push(b);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            if c.waiting == 0 && next < count {
                send_window(c, &mut next);
            }
        }
    }
    errors
}

/// Opens `n` SSE subscribers and keeps them until stdin closes.
fn hold(args: &Args) {
    let addr: SocketAddr = args.str("addr").parse().expect("--addr HOST:PORT");
    let prefix = args.str("prefix");
    let first = args.num("first", 0);
    let n = args.num("n", 1000) as usize;
    let timeout = Duration::from_secs(args.num("timeout", 60));
    let start = Instant::now();
    let paths: Vec<String> = (0..n)
        .map(|i| format!("{prefix}{}", first + i as u64))
        .collect();
    let mut conns = sse::connect_all(addr, &paths, Target::Mailboxd, timeout);
    let connected = conns.iter().filter(|c| c.is_open()).count();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "hold connected={connected} failed={} secs={secs:.3} rate={:.0}",
        n - connected,
        connected as f64 / secs
    );
    println!("ready");
    io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    conns.clear();
}

/// Child process: `n` subscribers that record every delivery.
///
/// Prints `ready` once all are connected, then reads until every connection
/// has `expect` messages or `timeout` passes, and prints `result ...` lines.
fn subscribe(args: &Args) {
    let addr: SocketAddr = args.str("addr").parse().expect("--addr");
    let target = Target::parse(&args.str("target"));
    let prefix = args.str("prefix");
    let names: Vec<String> = args
        .str("names")
        .split(',')
        .map(|s| s.to_string())
        .collect();
    let expect = args.num("expect", 1) as usize;
    let timeout = Duration::from_secs(args.num("timeout", 120));
    let lat_file = args.opt("latencies");
    let paths: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
    let mut conns = sse::connect_all(addr, &paths, target, Duration::from_secs(60));
    let failed = conns.iter().filter(|c| !c.is_open()).count();
    println!("ready failed={failed}");
    io::stdout().flush().unwrap();
    let stats = sse::receive_until(&mut conns, expect, timeout);
    if let Some(path) = lat_file {
        let mut bytes = Vec::with_capacity(stats.latencies_us.len() * 4);
        for l in &stats.latencies_us {
            bytes.extend_from_slice(&l.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }
    let seq_max: Vec<String> = stats
        .seq_max_us
        .iter()
        .map(|(s, l)| format!("{s}:{l}"))
        .collect();
    println!(
        "result received={} lost={} duplicates={} reordered={} closed={} first_ns={} last_ns={} seqmax={}",
        stats.received,
        stats.lost,
        stats.duplicates,
        stats.reordered,
        stats.closed,
        stats.first_ns,
        stats.last_ns,
        seq_max.join(",")
    );
}

/// Spawns `procs` subscriber processes over `names`; waits until all are connected.
fn spawn_subscribers(
    args: &Args,
    names: &[String],
    expect: usize,
    tmp: &str,
    procs: usize,
) -> Vec<(Child, BufReader<std::process::ChildStdout>)> {
    let per = names.len().div_ceil(procs.max(1));
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "subscribe",
                "--addr",
                &args.str("addr"),
                "--target",
                &args.str("target"),
            ])
            .args(["--prefix", &args.str("prefix"), "--names", &chunk.join(",")])
            .args([
                "--expect",
                &expect.to_string(),
                "--timeout",
                &args.num("timeout", 120).to_string(),
            ])
            .args(["--latencies", &format!("{tmp}/lat{}-{i}", names[0])])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        children.push((child, out));
    }
    let mut failed = 0;
    for (_, out) in children.iter_mut() {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let f: usize = line
            .trim()
            .strip_prefix("ready failed=")
            .unwrap_or_else(|| panic!("child said {line:?}"))
            .parse()
            .unwrap();
        failed += f;
    }
    println!(
        "subscribers connected={} failed={failed}",
        names.len() - failed
    );
    children
}

/// Totals merged from all subscriber processes.
#[derive(Default)]
struct Merged {
    received: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    closed: u64,
    first_ns: u64,
    last_ns: u64,
    seq_max: HashMap<u64, u64>,
    latencies: Vec<u32>,
}

fn collect(
    children: Vec<(Child, BufReader<std::process::ChildStdout>)>,
    tmp: &str,
    first: &str,
) -> Merged {
    let mut m = Merged {
        first_ns: u64::MAX,
        ..Merged::default()
    };
    for (i, (mut child, mut out)) in children.into_iter().enumerate() {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        child.wait().unwrap();
        for field in line
            .trim()
            .strip_prefix("result ")
            .expect("result line")
            .split(' ')
        {
            let (k, v) = field.split_once('=').unwrap();
            match k {
                "received" => m.received += v.parse::<u64>().unwrap(),
                "lost" => m.lost += v.parse::<u64>().unwrap(),
                "duplicates" => m.duplicates += v.parse::<u64>().unwrap(),
                "reordered" => m.reordered += v.parse::<u64>().unwrap(),
                "closed" => m.closed += v.parse::<u64>().unwrap(),
                "first_ns" => m.first_ns = m.first_ns.min(v.parse().unwrap()),
                "last_ns" => m.last_ns = m.last_ns.max(v.parse().unwrap()),
                "seqmax" => {
                    for pair in v.split(',').filter(|p| !p.is_empty()) {
                        let (s, l) = pair.split_once(':').unwrap();
                        let e = m.seq_max.entry(s.parse().unwrap()).or_default();
                        *e = (*e).max(l.parse().unwrap());
                    }
                }
                _ => {}
            }
        }
        let bytes = std::fs::read(format!("{tmp}/lat{first}-{i}")).unwrap_or_default();
        m.latencies.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
        );
    }
    m.latencies.sort_unstable();
    m
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// CPU time (ns) the given processes have used, from /proc/PID/schedstat.
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn server_pids(args: &Args) -> Vec<u32> {
    pid_list(args, "server-pids")
}

/// Processes measured apart from the servers (a shared Redis), over the
/// same window: `--store-pids`.
fn store_pids(args: &Args) -> Vec<u32> {
    pid_list(args, "store-pids")
}

fn pid_list(args: &Args, key: &str) -> Vec<u32> {
    args.opt(key)
        .map(|s| {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn tmpdir() -> String {
    let dir = std::env::temp_dir().join(format!("mbx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

/// The payload of message `seq`: sequence, send time, padding to `size` bytes.
fn payload(seq: u64, size: usize) -> String {
    let mut p = format!("{seq} {}", now_ns());
    if p.len() + 1 < size {
        p.push(' ');
        p.push_str(&"x".repeat(size - p.len()));
    }
    p
}

/// One publisher over HTTP POST (Nchan), keep-alive.
struct HttpPublisher {
    stream: BufReader<StdTcpStream>,
    addr: String,
}

impl HttpPublisher {
    fn connect(addr: &str) -> HttpPublisher {
        let s = StdTcpStream::connect(addr).expect("connect publisher");
        s.set_nodelay(true).unwrap();
        HttpPublisher {
            stream: BufReader::new(s),
            addr: addr.to_string(),
        }
    }

    /// POSTs `body` to `path` and waits for the response (status must be 2xx).
    fn post(&mut self, path: &str, body: &str) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut len = 0usize;
        let mut status = String::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).unwrap() == 0 {
                panic!("publisher connection closed by the server");
            }
            if status.is_empty() {
                status = line.clone();
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        assert!(status.contains(" 20"), "publish answered {status:?}");
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).unwrap();
    }
}

fn control_cmd(path: &str, line: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    reply
}

/// Group fan-out: one message reaches every subscriber.
fn fanout(args: &Args) {
    let target = Target::parse(&args.str("target"));
    let subs = args.num("subs", 1000) as usize;
    let msgs = args.num("msgs", 20);
    let interval = Duration::from_millis(args.num("interval-ms", 500));
    let size = args.num("size", 64) as usize;
    let tmp = tmpdir();
    let names: Vec<String> = match target {
        Target::Mailboxd => (0..subs).map(|i| format!("f{i}")).collect(),
        // Nchan: one shared channel.
        Target::Nchan => vec!["room".to_string(); subs],
    };
    if target == Target::Mailboxd {
        let control = args.str("control");
        for chunk in names.chunks(500) {
            let reply = control_cmd(&control, &format!("JOIN room {}\n", chunk.join(" ")));
            assert!(reply.starts_with("OK"), "{reply}");
        }
    }
    let procs = args.num("procs", 2) as usize;
    let children = spawn_subscribers(args, &names, msgs as usize, &tmp, procs);
    std::thread::sleep(Duration::from_millis(300));
    let pids = server_pids(args);
    let cpu_before = cpu_ns(&pids);
    let store = store_pids(args);
    let store_before = cpu_ns(&store);
    let mut publisher = match target {
        Target::Nchan => Some(HttpPublisher::connect(&args.str("pub-addr"))),
        Target::Mailboxd => None,
    };
    let mut control = match target {
        Target::Mailboxd => {
            let s = UnixStream::connect(args.str("control")).unwrap();
            Some((s.try_clone().unwrap(), BufReader::new(s)))
        }
        Target::Nchan => None,
    };
    for seq in 1..=msgs {
        let body = payload(seq, size);
        match (&mut publisher, &mut control) {
            (Some(p), _) => p.post(&format!("{}room", args.str("pub-prefix")), &body),
            (_, Some((w, r))) => {
                w.write_all(format!("PUBLISH room {}\n{body}\n", body.len()).as_bytes())
                    .unwrap();
                let mut reply = String::new();
                r.read_line(&mut reply).unwrap();
                assert!(reply.starts_with("OK"), "{reply}");
            }
            _ => unreachable!(),
        }
        if seq < msgs {
            std::thread::sleep(interval);
        }
    }
    let m = collect(children, &tmp, &names[0]);
    let cpu = cpu_ns(&pids).saturating_sub(cpu_before);
    let store_cpu = cpu_ns(&store).saturating_sub(store_before);
    let mut to_last: Vec<u32> = m.seq_max.values().map(|&v| v as u32).collect();
    to_last.sort_unstable();
    let expected = subs as u64 * msgs;
    println!(
        "fanout subs={subs} msgs={msgs} expected={expected} received={} lost={} duplicates={} reordered={} \
         last_median_us={} last_p99_us={} last_max_us={} p50_us={} p99_us={} max_us={} server_cpu_ms={:.1} cpu_per_delivery_us={:.3} \
         store_cpu_ms={:.1} store_cpu_per_delivery_us={:.3}",
        m.received,
        expected.saturating_sub(m.received).max(m.lost),
        m.duplicates,
        m.reordered,
        percentile(&to_last, 0.5),
        percentile(&to_last, 0.99),
        to_last.last().copied().unwrap_or(0),
        percentile(&m.latencies, 0.5),
        percentile(&m.latencies, 0.99),
        m.latencies.last().copied().unwrap_or(0),
        cpu as f64 / 1e6,
        cpu as f64 / 1e3 / m.received.max(1) as f64,
        store_cpu as f64 / 1e6,
        store_cpu as f64 / 1e3 / m.received.max(1) as f64,
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Many mailboxes, messages spread over them as fast as the publisher goes.
fn throughput(args: &Args) {
    let target = Target::parse(&args.str("target"));
    let subs = args.num("subs", 1000) as usize;
    let msgs = args.num("msgs", 200_000) as usize;
    let size = args.num("size", 64) as usize;
    let per = msgs / subs;
    let msgs = per * subs;
    let tmp = tmpdir();
    let names: Vec<String> = (0..subs).map(|i| format!("t{i}")).collect();
    let procs = args.num("procs", 2) as usize;
    let children = spawn_subscribers(args, &names, per, &tmp, procs);
    std::thread::sleep(Duration::from_millis(300));
    let pids = server_pids(args);
    let cpu_before = cpu_ns(&pids);
    let store = store_pids(args);
    let store_before = cpu_ns(&store);
    let start = Instant::now();
    let start_ns = now_ns();
    match target {
        Target::Mailboxd => {
            // Message i goes to mailbox i % subs, so each gets seq 1..=per in order.
            let errors = send_pipelined(&args.str("control"), msgs, move |i| {
                (
                    format!("t{}", i % subs),
                    payload((i / subs) as u64 + 1, size),
                )
            });
            assert_eq!(errors, 0, "control errors");
        }
        Target::Nchan => {
            let publishers = args.num("publishers", 16) as usize;
            let pub_addr = args.str("pub-addr");
            let pub_prefix = args.str("pub-prefix");
            let threads: Vec<_> = (0..publishers)
                .map(|p| {
                    let (addr, prefix) = (pub_addr.clone(), pub_prefix.clone());
                    // Publisher p owns the channels i with i % publishers == p, keeping per-channel order.
                    std::thread::spawn(move || {
                        let mut publisher = HttpPublisher::connect(&addr);
                        for seq in 1..=per {
                            for ch in (p..subs).step_by(publishers) {
                                publisher
                                    .post(&format!("{prefix}t{ch}"), &payload(seq as u64, size));
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
    }
    let published = start.elapsed().as_secs_f64();
    let m = collect(children, &tmp, &names[0]);
    let cpu = cpu_ns(&pids).saturating_sub(cpu_before);
    let store_cpu = cpu_ns(&store).saturating_sub(store_before);
    let secs = (m.last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    println!(
        "throughput subs={subs} msgs={msgs} received={} lost={} duplicates={} reordered={} publish_secs={published:.3} \
         end_to_end_secs={secs:.3} delivered_per_sec={:.0} server_cpu_ms={:.1} \
         store_cpu_ms={:.1} store_cpu_per_delivery_us={:.3}",
        m.received,
        (msgs as u64).saturating_sub(m.received).max(m.lost),
        m.duplicates,
        m.reordered,
        m.received as f64 / secs.max(1e-9),
        cpu as f64 / 1e6,
        store_cpu as f64 / 1e6,
        store_cpu as f64 / 1e3 / m.received.max(1) as f64,
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A binary upgrade under load (see the module comment).
fn upgrade(args: &Args) {
    let subs = args.num("subs", 10_000) as usize;
    let probes = args.num("probes", 10) as usize;
    let probe_msgs = args.num("probe-ms", 3000);
    let control = args.str("control");
    let pid_file = args.str("pid-file");
    let tmp = tmpdir();
    let names: Vec<String> = (0..subs).map(|i| format!("u{i}")).collect();
    let probe_names: Vec<String> = (0..probes).map(|i| format!("p{i}")).collect();
    for (group, list) in [("all", &names), ("probe", &probe_names)] {
        for chunk in list.chunks(500) {
            let reply = control_cmd(&control, &format!("JOIN {group} {}\n", chunk.join(" ")));
            assert!(reply.starts_with("OK"), "{reply}");
        }
    }
    let procs = subs.div_ceil(4000).max(1);
    let children = spawn_subscribers(args, &names, 2, &tmp, procs);
    let probe_children = spawn_subscribers(args, &probe_names, probe_msgs as usize, &tmp, 1);
    let publish = |group: &str, seq: u64| {
        let body = payload(seq, 32);
        let reply = control_cmd(&control, &format!("PUBLISH {group} {}\n{body}\n", body.len()));
        assert!(reply.starts_with("OK"), "{reply}");
    };
    publish("all", 1);
    // Probes: a message every millisecond, on one control connection that
    // moves to the new process with everything else.
    let prober = {
        let control = control.clone();
        std::thread::spawn(move || {
            let s = UnixStream::connect(&control).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            for seq in 1..=probe_msgs {
                let body = payload(seq, 32);
                w.write_all(format!("PUBLISH probe {}\n{body}\n", body.len()).as_bytes())
                    .unwrap();
                let mut reply = String::new();
                r.read_line(&mut reply).unwrap();
                assert!(reply.starts_with("OK"), "{reply}");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let read_pid = || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    let old = read_pid().expect("--pid-file names the running mailboxd");
    let signalled = Instant::now();
    let sent = Command::new("kill").args(["-USR2", &old.to_string()]).status().unwrap();
    assert!(sent.success());
    let new = loop {
        if let Some(p) = read_pid().filter(|&p| p != old) {
            break p;
        }
        assert!(signalled.elapsed() < Duration::from_secs(30), "no new process");
        std::thread::sleep(Duration::from_micros(200));
    };
    let serving = signalled.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    publish("all", 2);
    prober.join().unwrap();
    let m = collect(children, &tmp, &names[0]);
    let p = collect(probe_children, &tmp, &probe_names[0]);
    let pause_us = p.seq_max.values().copied().max().unwrap_or(0);
    let expected = 2 * subs as u64;
    println!(
        "upgrade subs={subs} old_pid={old} new_pid={new} serving_ms={:.1} probe_pause_ms={:.1} \
         probe_received={} probe_expected={} probe_lost={} probe_duplicates={} probe_closed={} \
         received={} expected={expected} lost={} duplicates={} reordered={} closed={}",
        serving.as_secs_f64() * 1e3,
        pause_us as f64 / 1e3,
        p.received,
        probe_msgs * probes as u64,
        p.lost,
        p.duplicates,
        p.closed,
        m.received,
        expected.saturating_sub(m.received).max(m.lost),
        m.duplicates,
        m.reordered,
        m.closed,
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
