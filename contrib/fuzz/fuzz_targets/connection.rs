//! Whole connections through the real event loop: one mailboxd server runs
//! on a thread for the life of the fuzzer, with HTTP, FastCGI and SCGI
//! listeners and a control socket on Unix sockets. Each input's first byte
//! picks the listener; the rest is written to a fresh connection, which is
//! then half-closed and read until the server closes it or 100 ms pass.
//! Every 64 inputs a control `PING` must still get `PONG`: a panic or a hang
//! in the server fails the run.
#![no_main]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailboxd::config::{self, Command};
use mailboxd::server::Server;
use mailboxd::store::MemoryStore;

fn server_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // As in the mailboxd binary (Rust's runtime does it there): a write
        // to a peer that left must fail with EPIPE, not kill the process.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("mbx-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let args = [
            "--control".to_string(),
            path("control.sock"),
            "--http".into(),
            format!("unix:{}", path("http.sock")),
            "--fastcgi".into(),
            format!("unix:{}", path("fcgi.sock")),
            "--scgi".into(),
            format!("unix:{}", path("scgi.sock")),
            "--request-timeout".into(),
            "0.5".into(),
            "--max-message".into(),
            "1024".into(),
        ];
        let Ok(Command::Run(config)) = config::parse_args(args.iter().map(Into::into)) else {
            panic!("fuzz server flags");
        };
        std::thread::spawn(move || {
            let store = MemoryStore::starting_now(config.store_limits());
            let mut server = Server::new(*config, Box::new(store)).expect("server starts");
            server.run().expect("server runs");
        });
        for _ in 0..500 {
            if UnixStream::connect(dir.join("scgi.sock")).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A parked subscriber and some retained messages make the inputs
        // meet a live mailbox.
        let mut ctl = UnixStream::connect(dir.join("control.sock")).unwrap();
        ctl.write_all(b"SEND m 5 event=e\nhello\nJOIN g m n\nSEND n 2\nhi\n").unwrap();
        dir
    })
}

fn ping(dir: &std::path::Path) {
    let mut ctl = UnixStream::connect(dir.join("control.sock")).expect("control socket");
    ctl.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ctl.write_all(b"PING\n").unwrap();
    let mut line = String::new();
    BufReader::new(ctl).read_line(&mut line).expect("PONG in time");
    assert_eq!(line, "PONG\n");
}

fuzz_target!(|data: &[u8]| {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let dir = server_dir();
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let socket = ["http.sock", "fcgi.sock", "scgi.sock", "control.sock"][which as usize % 4];
    let Ok(mut stream) = UnixStream::connect(dir.join(socket)) else {
        return;
    };
    stream.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let _ = stream.write_all(input);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    if RUNS.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
        ping(dir);
    }
});
