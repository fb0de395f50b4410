//! `mailboxctl watch <mailbox>`: follows a mailbox from a terminal, the way
//! a browser's EventSource would: an SSE request to mailboxd's HTTP
//! listener, one line printed per message, and on a dropped stream a
//! reconnection with `Last-Event-ID` after the server's `retry:` hint, so
//! nothing is missed or shown twice. With a secret configured, the token
//! comes from the control socket (`TOKEN`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where and what to watch.
pub struct Watch {
    /// `host:port` of mailboxd's HTTP listener (or a web server in front).
    pub authority: String,
    /// Path prefix before the mailbox name.
    pub prefix: String,
    /// The mailbox.
    pub mailbox: String,
    /// The token, if the server wants one.
    pub token: Option<String>,
    /// Resume after this id; `None`: from what is retained.
    pub from: Option<u64>,
    /// Stop after this many messages (for scripts and tests).
    pub count: Option<u64>,
}

/// Splits `http://host:port[/prefix]` into the authority and path prefix.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url '{url}': only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/comet/"),
    };
    if authority.is_empty() {
        return Err(format!("--url '{url}': no host"));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut prefix = path.to_string();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((authority, prefix))
}

/// An SSE event as it arrives.
#[derive(Debug, Default)]
struct Event {
    id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
}

/// Why a stream ended for good.
pub enum Stop {
    /// The requested number of messages was shown.
    Done,
    /// The server refused (status and body); retrying would not help.
    Refused(u16, String),
}

/// Runs until `count` messages were shown or the server refuses; writes
/// messages to `out` and notices (reconnections, gaps) to standard error.
pub fn run(w: &mut Watch, out: &mut dyn Write) -> Result<Stop, String> {
    let mut shown = 0;
    let mut retry = Duration::from_secs(2);
    loop {
        match stream(w, out, &mut shown, &mut retry) {
            Ok(Some(stop)) => return Ok(stop),
            Ok(None) => eprintln!("mailboxctl: stream ended; reconnecting in {retry:?}"),
            Err(e) => eprintln!("mailboxctl: {e}; reconnecting in {retry:?}"),
        }
        std::thread::sleep(retry);
    }
}

/// One request: `Ok(None)` when the stream ended and should be resumed.
fn stream(
    w: &mut Watch,
    out: &mut dyn Write,
    shown: &mut u64,
    retry: &mut Duration,
) -> Result<Option<Stop>, String> {
    let addr = w
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", w.authority))?
        .next()
        .ok_or_else(|| format!("{}: no address", w.authority))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("{}: {e}", w.authority))?;
    let mut path = format!("{}{}", w.prefix, w.mailbox);
    if let Some(token) = &w.token {
        path.push_str(&format!("?token={token}"));
    }
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        w.authority
    );
    if let Some(id) = w.from {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))?;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
    }
    let body: Box<dyn BufRead> = if chunked {
        Box::new(BufReader::new(Chunked {
            inner: reader,
            left: 0,
        }))
    } else {
        Box::new(reader)
    };
    if status != 200 {
        let mut text = String::new();
        let _ = body.take(4096).read_to_string(&mut text);
        if status == 503 {
            return Err(format!("server busy (503): {}", text.trim()));
        }
        return Ok(Some(Stop::Refused(status, text.trim().to_string())));
    }
    let mut ev = Event::default();
    for line in body.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            let done = std::mem::take(&mut ev);
            if show(w, done, out, shown)? {
                return Ok(Some(Stop::Done));
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            ev.id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            ev.event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            ev.data.push(v.to_string());
        } else if let Some(Ok(ms)) = line.strip_prefix("retry: ").map(str::parse) {
            *retry = Duration::from_millis(ms);
        }
    }
    Ok(None)
}

/// Prints one event; true once `count` messages were shown.
fn show(w: &mut Watch, ev: Event, out: &mut dyn Write, shown: &mut u64) -> Result<bool, String> {
    if ev.event.as_deref() == Some("gap") {
        eprintln!(
            "mailboxctl: gap: messages after {} are no longer retained ({})",
            w.from.unwrap_or(0),
            ev.data.join(" ")
        );
        return Ok(false);
    }
    let Some(id) = ev.id else {
        return Ok(false);
    };
    w.from = Some(id);
    let data = ev.data.join("\n");
    let line = match &ev.event {
        Some(event) => format!("{id} {event} {data}\n"),
        None => format!("{id} {data}\n"),
    };
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    *shown += 1;
    Ok(w.count.is_some_and(|c| *shown >= c))
}

/// Decodes `Transfer-Encoding: chunked` (a web server in front).
struct Chunked<R> {
    inner: R,
    left: usize,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            if line.trim().is_empty() {
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if self.left == 0 {
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8420").unwrap(),
            ("127.0.0.1:8420".into(), "/comet/".into())
        );
        assert_eq!(
            parse_url("http://example.org/push").unwrap(),
            ("example.org:80".into(), "/push/".into())
        );
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
