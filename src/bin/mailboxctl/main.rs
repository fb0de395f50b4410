//! `mailboxctl`: the control protocol from a shell.
//!
//! Builds one request line (and payload), sends it, prints the reply line.
//! Exit status: 0 for `OK`/`PONG`, 1 for `ERR`, 2 for usage or connection
//! errors, so scripts can branch on delivery failures.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use mailboxd::config::default_control;

mod watch;

const HELP: &str = "\
mailboxctl: talk to mailboxd's control socket.

Usage: mailboxctl [-s PATH] <command> [args]

Commands:
  ping
  send <mailbox> <data|-> [--event NAME]
  publish <group> <data|-> [--event NAME] [--except M1,M2,...]
  join <group> <mailbox>...
  leave <group> <mailbox>...
  members <group>
  drop <mailbox>
  info <mailbox>
  stats
  token <mailbox> <ttl-seconds>
  watch <mailbox> [--url URL] [--from ID] [--count N]
                      follow a mailbox as a browser would: one line per message
                      (\"<id> [<event>] <data>\"), resuming after a dropped stream;
                      URL is mailboxd's HTTP listener [default: http://127.0.0.1:8420];
                      a token comes from the control socket when one is needed

  -s, --socket PATH   control socket [default: $MAILBOXD_SOCKET, else mailboxd's default:
                      /run/mailboxd/control.sock for root,
                      $XDG_RUNTIME_DIR/mailboxd/control.sock otherwise]
  -t, --timeout SECS  give up when connecting, sending or waiting for the reply takes
                      longer [default: 10]
  --event NAME        SSE event name for send/publish
  --except LIST       comma-separated mailboxes that publish skips
  -h, --help          this help

Data '-' reads the payload from standard input; one trailing newline is
removed, so `echo hi | mailboxctl send alice -` delivers \"hi\".
Prints the server's reply. Exit status: 0 OK, 1 ERR, 2 usage or connection error.
";

struct Invocation {
    socket: PathBuf,
    timeout: Duration,
    words: Vec<String>,
    event: Option<String>,
    except: Option<String>,
    url: String,
    from: Option<u64>,
    count: Option<u64>,
}

fn parse_args() -> Result<Option<Invocation>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut inv = Invocation {
        socket: std::env::var_os("MAILBOXD_SOCKET").map_or_else(default_control, PathBuf::from),
        timeout: Duration::from_secs(10),
        words: Vec::new(),
        event: None,
        except: None,
        url: "http://127.0.0.1:8420".into(),
        from: None,
        count: None,
    };
    let text = |v: std::ffi::OsString| {
        v.into_string()
            .map_err(|_| "arguments must be UTF-8".to_string())
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('s') | Long("socket") => {
                inv.socket = parser.value().map_err(|e| e.to_string())?.into()
            }
            Short('t') | Long("timeout") => {
                let v = text(parser.value().map_err(|e| e.to_string())?)?;
                inv.timeout = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("--timeout: '{v}' is not a number of seconds > 0"))?;
            }
            Long("event") => inv.event = Some(text(parser.value().map_err(|e| e.to_string())?)?),
            Long("except") => inv.except = Some(text(parser.value().map_err(|e| e.to_string())?)?),
            Long("url") => inv.url = text(parser.value().map_err(|e| e.to_string())?)?,
            Long("from") | Long("count") => {
                let name = if matches!(arg, Long("from")) {
                    "from"
                } else {
                    "count"
                };
                let v = text(parser.value().map_err(|e| e.to_string())?)?;
                let n = v
                    .parse::<u64>()
                    .map_err(|_| format!("--{name}: '{v}' is not a whole number"))?;
                if name == "from" {
                    inv.from = Some(n);
                } else {
                    inv.count = Some(n);
                }
            }
            Value(v) => inv.words.push(text(v)?),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    Ok(Some(inv))
}

/// Builds the request bytes for one invocation.
fn build_request(inv: &Invocation) -> Result<Vec<u8>, String> {
    let Some((command, args)) = inv.words.split_first() else {
        return Err("no command given (see --help)".into());
    };
    let command = command.to_ascii_lowercase();
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{command} takes {n} argument(s)"))
        }
    };
    let simple = |verb: &str| -> Vec<u8> {
        let mut line = verb.to_string();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        line.push('\n');
        line.into_bytes()
    };
    match command.as_str() {
        "ping" | "stats" => arity(0).map(|_| simple(&command.to_ascii_uppercase())),
        "members" | "drop" | "info" => arity(1).map(|_| simple(&command.to_ascii_uppercase())),
        "token" => arity(2).map(|_| simple("TOKEN")),
        "join" | "leave" => {
            if args.len() < 2 {
                return Err(format!("{command} takes a group and at least one mailbox"));
            }
            Ok(simple(&command.to_ascii_uppercase()))
        }
        "send" | "publish" => {
            arity(2)?;
            let data = if args[1] == "-" {
                let mut buf = Vec::new();
                io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                if buf.ends_with(b"\n") {
                    buf.pop();
                }
                buf
            } else {
                args[1].clone().into_bytes()
            };
            let mut line = format!(
                "{} {} {}",
                command.to_ascii_uppercase(),
                args[0],
                data.len()
            );
            if let Some(event) = &inv.event {
                line.push_str(&format!(" event={event}"));
            }
            if let Some(except) = &inv.except {
                if command == "send" {
                    return Err("--except only applies to publish".into());
                }
                line.push_str(&format!(" except={except}"));
            }
            line.push('\n');
            let mut bytes = line.into_bytes();
            bytes.extend_from_slice(&data);
            bytes.push(b'\n');
            Ok(bytes)
        }
        other => Err(format!("unknown command '{other}' (see --help)")),
    }
}

/// Sends one request on the control socket and returns the reply line.
/// Connecting blocks while the server's accept queue is full, which no
/// socket timeout covers; the exchange runs on a helper thread and this
/// gives up on it at the deadline.
fn ask(socket: &std::path::Path, timeout: Duration, request: Vec<u8>) -> io::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let reply = UnixStream::connect(&socket).and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(&request)?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line)
        });
        let _ = tx.send(reply);
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// `watch`: a token if the server wants one, then the stream.
fn watch(inv: &Invocation) -> ExitCode {
    let [_, mailbox] = &inv.words[..] else {
        eprintln!("mailboxctl: watch takes one mailbox");
        return ExitCode::from(2);
    };
    let (authority, prefix) = match watch::parse_url(&inv.url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("mailboxctl: {e}");
            return ExitCode::from(2);
        }
    };
    // A day's token; without a secret the server answers ERR NOSECRET.
    let token = match ask(
        &inv.socket,
        inv.timeout,
        format!("TOKEN {mailbox} 86400\n").into_bytes(),
    ) {
        Ok(line) => line.strip_prefix("OK ").map(|t| t.trim().to_string()),
        Err(_) => None,
    };
    let mut w = watch::Watch {
        authority,
        prefix,
        mailbox: mailbox.clone(),
        token,
        from: inv.from,
        count: inv.count,
    };
    match watch::run(&mut w, &mut io::stdout()) {
        Ok(watch::Stop::Done) => ExitCode::SUCCESS,
        Ok(watch::Stop::Refused(status, text)) => {
            eprintln!(
                "mailboxctl: {} refused the stream: {status} {text}",
                inv.url
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mailboxctl: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let inv = match parse_args() {
        Ok(Some(inv)) => inv,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mailboxctl: {e}");
            return ExitCode::from(2);
        }
    };
    if inv
        .words
        .first()
        .is_some_and(|c| c.eq_ignore_ascii_case("watch"))
    {
        return watch(&inv);
    }
    let request = match build_request(&inv) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailboxctl: {e}");
            return ExitCode::from(2);
        }
    };
    match ask(&inv.socket, inv.timeout, request) {
        Ok(line) if line.is_empty() => {
            eprintln!("mailboxctl: the server closed the connection without a reply");
            ExitCode::from(2)
        }
        Ok(line) => {
            print!("{line}");
            if line.starts_with("ERR") {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            eprintln!(
                "mailboxctl: {}: no reply within {:?}",
                inv.socket.display(),
                inv.timeout
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("mailboxctl: {}: {e}", inv.socket.display());
            ExitCode::from(2)
        }
    }
}
