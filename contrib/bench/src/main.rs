//! mbx-bench: load generator for mailboxd and, for comparison, Nchan.
//!
//! Subcommands (each prints `key=value` result lines a script can parse):
//!
//! * `pipeline`: pipelined `SEND`s on one control connection; accepted commands/s.
//! * `hold`: open N idle SSE subscribers, report the connect rate and failures,
//!   print `ready`, then keep them open until stdin closes.
//!
//! One process drives at most ~19,000 sockets (the machine's per-process
//! descriptor limit), so scripts spread large loads over several processes.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

fn usage() -> ! {
    eprintln!(
        "usage:\n  mbx-bench pipeline --control PATH [--count N] [--mailboxes M] [--size BYTES]\n  mbx-bench hold --addr HOST:PORT --prefix /comet/ [--first K] [--n N] [--timeout SECS]"
    );
    std::process::exit(2)
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else { usage() };
            let Some(v) = it.next() else { usage() };
            map.insert(key.to_string(), v.clone());
        }
        Args(map)
    }

    fn str(&self, k: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| usage())
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        self.0.get(k).map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = raw.split_first() else { usage() };
    let args = Args::parse(rest);
    match cmd.as_str() {
        "pipeline" => pipeline(&args),
        "hold" => hold(&args),
        _ => usage(),
    }
}

/// Pipelined SENDs: a writer thread streams requests, this thread counts replies.
fn pipeline(args: &Args) {
    let path = args.str("control");
    let count = args.num("count", 200_000) as usize;
    let mailboxes = args.num("mailboxes", 1000) as usize;
    let size = args.num("size", 32) as usize;
    let stream = UnixStream::connect(&path).expect("connect control socket");
    let mut writer = stream.try_clone().unwrap();
    let payload = "x".repeat(size);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(1 << 20);
        for i in 0..count {
            batch.extend_from_slice(format!("SEND p{} {}\n{payload}\n", i % mailboxes, size).as_bytes());
            if batch.len() > (1 << 20) - 256 {
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
    let secs = start.elapsed().as_secs_f64();
    sender.join().unwrap();
    println!("pipeline sends={count} errors={errors} secs={secs:.3} rate={:.0}", count as f64 / secs);
}

/// One benchmark client connection.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    written: usize,
    head_seen: bool,
    buf: Vec<u8>,
}

/// Opens `n` SSE subscribers and keeps them until stdin closes.
fn hold(args: &Args) {
    let addr: SocketAddr = args.str("addr").parse().expect("--addr HOST:PORT");
    let prefix = args.str("prefix");
    let first = args.num("first", 0);
    let n = args.num("n", 1000) as usize;
    let timeout = Duration::from_secs(args.num("timeout", 60));
    let mut poll = Poll::new().unwrap();
    let mut clients: Vec<Option<Client>> = Vec::with_capacity(n);
    let start = Instant::now();
    let mut failed = 0;
    let mut connected = 0;
    // Open in waves so the listen backlog never overflows.
    let wave = 500;
    let mut opened = 0;
    let mut events = Events::with_capacity(4096);
    while connected + failed < n {
        while opened < n && opened - (connected + failed) < wave {
            let id = first + opened as u64;
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    poll.registry()
                        .register(&mut stream, Token(opened), Interest::READABLE | Interest::WRITABLE)
                        .unwrap();
                    let request = format!(
                        "GET {prefix}{id} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
                    )
                    .into_bytes();
                    clients.push(Some(Client { stream, request, written: 0, head_seen: false, buf: Vec::new() }));
                }
                Err(_) => {
                    clients.push(None);
                    failed += 1;
                }
            }
            opened += 1;
        }
        if start.elapsed() > timeout {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        for ev in events.iter() {
            let Some(Some(c)) = clients.get_mut(ev.token().0) else { continue };
            if c.head_seen {
                continue;
            }
            if ev.is_writable() && c.written < c.request.len() {
                match c.stream.write(&c.request[c.written..]) {
                    Ok(k) => c.written += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        clients[ev.token().0] = None;
                        failed += 1;
                        continue;
                    }
                }
            }
            let mut chunk = [0u8; 1024];
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        clients[ev.token().0] = None;
                        failed += 1;
                        break;
                    }
                    Ok(k) => {
                        c.buf.extend_from_slice(&chunk[..k]);
                        if c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            if c.buf.starts_with(b"HTTP/1.1 200") || c.buf.starts_with(b"HTTP/1.0 200") {
                                c.head_seen = true;
                                c.buf = Vec::new();
                                connected += 1;
                            } else {
                                clients[ev.token().0] = None;
                                failed += 1;
                            }
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        clients[ev.token().0] = None;
                        failed += 1;
                        break;
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = n - connected;
    println!("hold connected={connected} failed={failed} secs={secs:.3} rate={:.0}", connected as f64 / secs);
    println!("ready");
    io::stdout().flush().unwrap();
    // Hold until the driving script closes our stdin, then exit (closing all).
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    drop(clients);
}
