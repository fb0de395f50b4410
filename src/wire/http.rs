//! HTTP/1.x: request heads in (via `httparse`), response heads out.
//!
//! This is what `proxy_pass` (nginx) and `mod_proxy` (lighttpd) speak. A
//! streaming response has no `Content-Length` and ends when the connection
//! closes, which works for HTTP/1.0 and 1.1 peers alike without chunked
//! encoding. Long-poll answers are sized and keep the connection alive when
//! the client asked for it.

use crate::request::{Head, Request};
use crate::wire::Status;

/// Largest request head accepted. Browsers send 1–2 KiB; nginx's default
/// `large_client_header_buffers` is 8 KiB, so nothing legitimate is larger.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines accepted in one head.
const MAX_HEADERS: usize = 64;

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct ParsedHead<'a> {
    /// The routing facts.
    pub request: Request<'a>,
    /// Whether the connection may carry another request after the answer.
    pub keep_alive: bool,
    /// True when the request announces a body (`Content-Length` > 0 or
    /// `Transfer-Encoding`): mailboxd never reads one, so it will close after answering.
    pub has_body: bool,
}

/// Why a request head was refused; the connection is answered 400 and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax.
    Malformed(String),
    /// Larger than [`MAX_HEAD`] or more than 64 header lines.
    TooLarge,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(e) => write!(f, "malformed request head: {e}"),
            HeadError::TooLarge => write!(
                f,
                "request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} headers"
            ),
        }
    }
}

/// Parses one request head from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Status<(ParsedHead<'_>, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let mut keep_alive = version == 1;
    let mut has_body = false;
    let (mut last_event_id, mut accept, mut authorization) = (None, None, None);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed(format!("header {} is not UTF-8", h.name)))?;
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = Some(value);
        } else if h.name.eq_ignore_ascii_case("accept") {
            accept = Some(value);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            has_body |= value.trim() != "0";
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head = ParsedHead {
        request: Request {
            method,
            path,
            query,
            last_event_id,
            accept,
            authorization,
        },
        keep_alive: keep_alive && !has_body,
        has_body,
    };
    Ok(Status::Complete((head, used)))
}

/// Appends an HTTP/1.1 response head.
pub fn encode_head(head: &Head, keep_alive: bool, out: &mut Vec<u8>) {
    let (code, reason) = head.status.code_reason();
    out.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
    head.write_fields(out);
    // A response without a length ends with the connection, so say so.
    let keep = keep_alive && head.content_length.is_some();
    out.extend_from_slice(if keep {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::HttpStatus;

    fn complete(buf: &[u8]) -> (ParsedHead<'_>, usize) {
        match parse(buf).unwrap() {
            Status::Complete(x) => x,
            Status::Partial => panic!("partial"),
        }
    }

    #[test]
    fn parses_routing_fields() {
        let raw = b"GET /comet/alice?transport=poll&since=3 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 42\r\nAccept: text/event-stream\r\n\r\nGET /next";
        let (h, used) = complete(raw);
        assert_eq!(used, raw.len() - 9);
        assert_eq!(h.request.path, "/comet/alice");
        assert_eq!(h.request.query, "transport=poll&since=3");
        assert_eq!(h.request.last_event_id, Some("42"));
        assert_eq!(h.request.accept, Some("text/event-stream"));
        assert!(h.keep_alive && !h.has_body);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        let (h, _) = complete(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert!(h.has_body && !h.keep_alive);
    }

    #[test]
    fn every_split_point_is_partial_until_complete() {
        let raw = b"GET /c/m HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..raw.len() {
            assert!(
                matches!(parse(&raw[..cut]), Ok(Status::Partial)),
                "cut {cut}"
            );
        }
        assert!(matches!(parse(raw), Ok(Status::Complete(_))));
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/9.9\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..70 {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet = b"GET /a?b=c HTTP/1.1\r\n: Last-Event-ID\xff";
        for buf in crate::wire::random_inputs(0x9E3779B97F4A7C15, alphabet, 64, 20000) {
            let _ = parse(&buf);
        }
    }

    #[test]
    fn encodes_heads() {
        let mut out = vec![];
        encode_head(
            &Head::stream(crate::wire::transport::Transport::Sse),
            true,
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(s.ends_with("Connection: close\r\n\r\n"));
        let mut out = vec![];
        encode_head(
            &Head::sized(HttpStatus::Ok, "application/json", 2),
            true,
            &mut out,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("Content-Length: 2\r\nConnection: keep-alive\r\n\r\n")
        );
    }
}
