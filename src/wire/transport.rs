//! How messages look on the wire to a client: SSE, long-poll JSON, or a raw stream.
//!
//! Encoders append [`Chunk`]s to a caller's vector; the gateway then wraps
//! them in its own framing (nothing for HTTP and SCGI, `STDOUT` records for
//! FastCGI). The expensive part of a message (its SSE body or its JSON-escaped
//! data) is built once per payload and shared; only the `id` differs per
//! mailbox.

use std::fmt::Write as _;

use crate::message::{Message, Payload};
use crate::outbuf::Chunk;

/// How a client wants its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events: a never-ending `text/event-stream`.
    Sse,
    /// Long-poll: one JSON answer per request.
    Poll,
    /// Raw stream: each payload followed by `\n`.
    Stream,
}

impl Transport {
    /// The `Content-Type` of a response in this transport.
    pub fn content_type(self) -> &'static str {
        match self {
            Transport::Sse => "text/event-stream",
            Transport::Poll => "application/json",
            Transport::Stream => "text/plain; charset=utf-8",
        }
    }

    /// The bytes that open a streaming response. Besides the SSE `retry:`
    /// hint, they make every proxy flush the response head at once (nginx's
    /// FastCGI module holds a head until body bytes follow), so the stream
    /// transport opens with a heartbeat.
    pub fn preamble(self, retry_ms: u64) -> Option<Chunk> {
        match self {
            Transport::Sse => Some(Chunk::copy(format!("retry: {retry_ms}\n\n").as_bytes())),
            Transport::Stream => self.heartbeat(),
            Transport::Poll => None,
        }
    }

    /// The keep-alive written every heartbeat interval. SSE uses a comment,
    /// which browsers ignore; the stream transport uses an empty line.
    pub fn heartbeat(self) -> Option<Chunk> {
        match self {
            Transport::Sse => Some(Chunk::Static(b": keepalive\n\n")),
            Transport::Stream => Some(Chunk::Static(b"\n")),
            Transport::Poll => None,
        }
    }

    /// Appends one message in this (streaming) transport.
    pub fn message(self, msg: &Message, out: &mut Vec<Chunk>) {
        match self {
            Transport::Sse => {
                let mut id = [0u8; 32];
                let len = write_id_line(&mut id, msg.id);
                out.push(Chunk::copy(&id[..len]));
                out.push(Chunk::Shared(msg.payload.sse_body(sse_body).clone()));
            }
            Transport::Stream => {
                out.push(Chunk::Shared(msg.payload.data().clone()));
                out.push(Chunk::Static(b"\n"));
            }
            Transport::Poll => debug_assert!(false, "long-poll answers are built by poll_body"),
        }
    }

    /// Appends the notice that messages after `since` were lost. No `id:` line,
    /// so the browser's `Last-Event-ID` is untouched; the stream transport has
    /// no way to say it and stays silent.
    pub fn gap(self, since: u64, oldest: Option<u64>, out: &mut Vec<Chunk>) {
        if self == Transport::Sse {
            let oldest = oldest.map_or_else(|| "null".to_string(), |o| o.to_string());
            out.push(Chunk::Owned(
                format!("event: gap\ndata: {{\"since\":{since},\"oldest\":{oldest}}}\n\n")
                    .into_bytes(),
            ));
        }
    }
}

/// Writes `id: <id>\n` into `buf` and returns its length.
fn write_id_line(buf: &mut [u8; 32], id: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = id;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[i..];
    buf[..4].copy_from_slice(b"id: ");
    buf[4..4 + digits.len()].copy_from_slice(digits);
    buf[4 + digits.len()] = b'\n';
    5 + digits.len()
}

/// The SSE body of a payload: optional `event:`, one `data:` per line, blank line.
/// SSE treats `\r\n`, `\r` and `\n` alike as line ends, so all three split lines.
pub fn sse_body(payload: &Payload) -> Vec<u8> {
    let data = payload.data();
    let mut out = Vec::with_capacity(data.len() + 16);
    if let Some(event) = payload.event() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    let mut rest: &[u8] = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end.unwrap_or(rest.len())]);
        out.push(b'\n');
        match end {
            None => break,
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.push(b'\n');
    out
}

/// The exact length of [`sse_body`] for this event and data, without building it.
pub fn sse_body_len(event: Option<&str>, data: &[u8]) -> usize {
    let mut lines = 1;
    let mut terminators = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                lines += 1;
                terminators += 2;
                i += 1;
            }
            b'\r' | b'\n' => {
                lines += 1;
                terminators += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let event = event.map_or(0, |e| "event: ".len() + e.len() + 1);
    event + lines * ("data: ".len() + 1) + (data.len() - terminators) + 1
}

/// The length of `s` as a JSON string literal, quotes included.
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The exact length of a payload's cached long-poll JSON tail.
pub fn json_tail_len(event: Option<&str>, data: &str) -> usize {
    let event = event.map_or(4, json_string_len);
    "\"event\":".len() + event + ",\"data\":".len() + json_string_len(data) + 1
}

/// Appends `s` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => {
                let mut u = String::new();
                let _ = write!(u, "\\u{b:04x}");
                out.extend_from_slice(u.as_bytes());
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `"event":…,"data":…}`: the cached part of a message in a long-poll answer.
fn json_tail(payload: &Payload) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(b"\"event\":");
    match payload.event() {
        Some(e) => json_string(&mut out, e),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"data\":");
    // Payloads are checked to be UTF-8 when they enter the server.
    json_string(
        &mut out,
        std::str::from_utf8(payload.data()).unwrap_or_default(),
    );
    out.push(b'}');
    out
}

/// The whole JSON body of a long-poll answer. Messages are included in
/// order while the body stays within `limit` bytes (always at least one);
/// `last_id` then names the last one included, so the client's next poll
/// picks up the rest.
pub fn poll_body<'a>(
    messages: impl Iterator<Item = &'a Message>,
    last_id: u64,
    gap: bool,
    limit: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"messages\":[");
    let mut included: Option<u64> = None;
    let mut truncated = false;
    for msg in messages {
        let tail = msg.payload.json_tail(json_tail);
        if included.is_some() {
            // 64: the `{"id":<u64>,` prefix and the closing fields.
            if out.len() + tail.len() + 64 > limit {
                truncated = true;
                break;
            }
            out.push(b',');
        }
        let _ = write!(Utf8Vec(&mut out), "{{\"id\":{},", msg.id);
        out.extend_from_slice(tail);
        included = Some(msg.id);
    }
    let last = match included {
        Some(id) if truncated => id,
        Some(id) => id.max(last_id),
        None => last_id,
    };
    let _ = write!(Utf8Vec(&mut out), "],\"last_id\":{last},\"gap\":{gap}}}");
    out
}

/// Lets `write!` append to a byte vector.
struct Utf8Vec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Vec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, event: Option<&str>, data: &str) -> Message {
        Message {
            id,
            payload: Payload::new(event, data),
        }
    }

    fn concat(chunks: &[Chunk]) -> String {
        String::from_utf8(chunks.iter().flat_map(|c| c.bytes().to_vec()).collect()).unwrap()
    }

    #[test]
    fn sse_frames_lines_and_events() {
        let mut out = vec![];
        Transport::Sse.message(&msg(7, Some("chat"), "a\nb\r\nc\rd"), &mut out);
        assert_eq!(
            concat(&out),
            "id: 7\nevent: chat\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        out.clear();
        Transport::Sse.message(&msg(18446744073709551615, None, ""), &mut out);
        assert_eq!(concat(&out), "id: 18446744073709551615\ndata: \n\n");
        out.clear();
        Transport::Sse.message(&msg(1, None, "x\n"), &mut out);
        assert_eq!(concat(&out), "id: 1\ndata: x\ndata: \n\n");
    }

    #[test]
    fn sse_gap_has_no_id() {
        let mut out = vec![];
        Transport::Sse.gap(3, Some(9), &mut out);
        assert_eq!(
            concat(&out),
            "event: gap\ndata: {\"since\":3,\"oldest\":9}\n\n"
        );
        out.clear();
        Transport::Stream.gap(3, None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn stream_is_payload_and_newline() {
        let mut out = vec![];
        Transport::Stream.message(&msg(1, Some("e"), "hello"), &mut out);
        assert_eq!(concat(&out), "hello\n");
    }

    #[test]
    fn encoded_lengths_are_known_in_advance() {
        let alphabet = b"ab\r\n\t\"\\\x01\x7f";
        for data in crate::wire::random_inputs(7, alphabet, 40, 2000) {
            let data = String::from_utf8(data).unwrap();
            for event in [None, Some("chat")] {
                let p = Payload::new(event, &data);
                assert_eq!(
                    sse_body_len(event, data.as_bytes()),
                    sse_body(&p).len(),
                    "{data:?}"
                );
                assert_eq!(json_tail_len(event, &data), json_tail(&p).len(), "{data:?}");
                assert!(p.cost() > sse_body(&p).len() + json_tail(&p).len() + data.len());
            }
        }
    }

    #[test]
    fn json_escapes_everything_needed() {
        let mut out = vec![];
        json_string(&mut out, "q\"b\\n\n\t\u{1}é😀\u{7f}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"q\\\"b\\\\n\\n\\t\\u0001é😀\u{7f}\""
        );
    }

    #[test]
    fn poll_body_lists_messages() {
        let m = [msg(4, Some("x"), "a\"b"), msg(9, None, "c")];
        let body = String::from_utf8(poll_body(m.iter(), 2, false, 1 << 20)).unwrap();
        assert_eq!(
            body,
            r#"{"messages":[{"id":4,"event":"x","data":"a\"b"},{"id":9,"event":null,"data":"c"}],"last_id":9,"gap":false}"#
        );
        let empty = String::from_utf8(poll_body([].iter(), 5, true, 1 << 20)).unwrap();
        assert_eq!(empty, r#"{"messages":[],"last_id":5,"gap":true}"#);
    }

    #[test]
    fn poll_body_stops_at_its_limit_and_names_the_last_included() {
        let m: Vec<Message> = (1..=10).map(|i| msg(i, None, &"x".repeat(100))).collect();
        let body = String::from_utf8(poll_body(m.iter(), 10, false, 400)).unwrap();
        assert!(body.len() <= 400, "{}", body.len());
        assert!(body.ends_with(r#"],"last_id":2,"gap":false}"#), "{body}");
        // One message always goes out, however small the limit.
        let one = String::from_utf8(poll_body(m.iter(), 10, false, 1)).unwrap();
        assert!(one.ends_with(r#"],"last_id":1,"gap":false}"#), "{one}");
    }
}
