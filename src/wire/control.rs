//! The control protocol: framing, request parsing and reply rendering.
//!
//! Framing and validation are separate on purpose. [`parse_frame`] only finds
//! where a request ends: the line, and for `SEND`/`PUBLISH` the payload whose
//! length the line states. Once a frame is known the stream is in sync, so any
//! later complaint ([`parse_command`]: bad name, unknown option, invalid UTF-8)
//! is answered with `ERR` and the connection stays usable. Only errors that
//! lose the frame boundary ([`FrameError`]) close the connection, after an
//! `ERR` line. A payload over `max-message` is not buffered: the frame says
//! how many bytes to discard, and the caller skips them as they arrive.
//!
//! Nothing here does I/O; every function works on a byte slice.

use std::fmt;

use crate::name;
pub use crate::wire::Status;

/// Longest request line; room for a `JOIN` of ~500 maximal names. Longer
/// lines cannot be resynchronised (the payload length is unknown), so they
/// close the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest stated payload that is skipped to stay in sync. A stated length
/// beyond it (up to 19 digits parse) would swallow every later request on the
/// connection while its bytes were "skipped", so it is treated as a lost
/// frame boundary instead: `ERR TOOBIG`, then the connection closes.
pub const MAX_SKIP: usize = 64 << 20;

/// One framed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An empty line: ignored, no reply.
    Blank,
    /// A request line and, for payload commands, exactly its payload.
    Request {
        /// The line without its terminator.
        line: &'a [u8],
        /// The payload, for `SEND` and `PUBLISH`.
        payload: Option<&'a [u8]>,
    },
    /// A payload command whose length exceeds `max-message`: answer `ERR TOOBIG`
    /// and discard the next `skip` bytes (payload and its newline).
    Oversize {
        /// The stated payload length.
        len: usize,
        /// Bytes still to discard after the consumed line.
        skip: usize,
    },
}

/// A framing error: the request boundary is lost and the connection must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// No newline within [`MAX_LINE`] bytes.
    LineTooLong,
    /// A payload command's length is not a decimal number.
    BadLength(String),
    /// The payload is not followed by `\n`.
    Unterminated,
    /// A stated payload length over [`MAX_SKIP`].
    Unskippable(usize),
}

impl FrameError {
    /// The `ERR` reply sent before closing.
    pub fn reply(&self) -> ControlError {
        match self {
            FrameError::LineTooLong => ControlError::new(
                ErrorCode::Line,
                format!("request line longer than {MAX_LINE} bytes; closing"),
            ),
            FrameError::BadLength(s) => ControlError::new(
                ErrorCode::Length,
                format!("payload length '{s}' is not a number; closing"),
            ),
            FrameError::Unterminated => ControlError::new(
                ErrorCode::Frame,
                "payload not followed by a newline; closing".into(),
            ),
            FrameError::Unskippable(len) => ControlError::new(
                ErrorCode::TooBig,
                format!("payload of {len} bytes is over {MAX_SKIP}, too large to skip; closing"),
            ),
        }
    }
}

/// Finds the next request in `buf`.
pub fn parse_frame(
    buf: &[u8],
    max_message: usize,
) -> Result<Status<(Frame<'_>, usize)>, FrameError> {
    let Some(nl) = buf.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_LINE + 1 {
            Err(FrameError::LineTooLong)
        } else {
            Ok(Status::Partial)
        };
    };
    let line = strip_cr(&buf[..nl]);
    if line.len() > MAX_LINE {
        return Err(FrameError::LineTooLong);
    }
    let head = nl + 1;
    if line.iter().all(|&b| b == b' ') {
        return Ok(Status::Complete((Frame::Blank, head)));
    }
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let verb = tokens.next().unwrap_or_default();
    if !(verb.eq_ignore_ascii_case(b"SEND") || verb.eq_ignore_ascii_case(b"PUBLISH")) {
        return Ok(Status::Complete((
            Frame::Request {
                line,
                payload: None,
            },
            head,
        )));
    }
    let Some(len_token) = tokens.nth(1) else {
        // Too few arguments: no payload can be expected; parse_command reports it.
        return Ok(Status::Complete((
            Frame::Request {
                line,
                payload: None,
            },
            head,
        )));
    };
    let len = parse_decimal(len_token)
        .ok_or_else(|| FrameError::BadLength(String::from_utf8_lossy(len_token).into_owned()))?;
    if len > MAX_SKIP {
        return Err(FrameError::Unskippable(len));
    }
    if len > max_message {
        return Ok(Status::Complete((
            Frame::Oversize {
                len,
                skip: len.saturating_add(1),
            },
            head,
        )));
    }
    let rest = &buf[head..];
    if rest.len() < len + 1 {
        return Ok(Status::Partial);
    }
    let payload = &rest[..len];
    let end = match rest[len] {
        b'\n' => len + 1,
        b'\r' if rest.len() < len + 2 => return Ok(Status::Partial),
        b'\r' if rest[len + 1] == b'\n' => len + 2,
        _ => return Err(FrameError::Unterminated),
    };
    Ok(Status::Complete((
        Frame::Request {
            line,
            payload: Some(payload),
        },
        head + end,
    )))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses a plain decimal `usize`/`u64` (no sign, no spaces, no overflow).
fn parse_decimal(token: &[u8]) -> Option<usize> {
    if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// One validated control command, borrowing from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PING`
    Ping,
    /// `SEND <mailbox> <len> [event=<name>]`
    Send {
        /// Target mailbox.
        mailbox: &'a str,
        /// Optional SSE event name.
        event: Option<&'a str>,
        /// UTF-8 payload.
        data: &'a str,
    },
    /// `PUBLISH <group> <len> [event=<name>] [except=<m>[,<m>...]]`
    Publish {
        /// Target group.
        group: &'a str,
        /// Optional SSE event name.
        event: Option<&'a str>,
        /// Members that do not get the message.
        except: Vec<&'a str>,
        /// UTF-8 payload.
        data: &'a str,
    },
    /// `JOIN <group> <mailbox>...`
    Join {
        /// Group to add to.
        group: &'a str,
        /// Mailboxes to add.
        mailboxes: Vec<&'a str>,
    },
    /// `LEAVE <group> <mailbox>...`
    Leave {
        /// Group to remove from.
        group: &'a str,
        /// Mailboxes to remove.
        mailboxes: Vec<&'a str>,
    },
    /// `MEMBERS <group>`
    Members {
        /// Group to list.
        group: &'a str,
    },
    /// `DROP <mailbox>`
    Drop {
        /// Mailbox to remove.
        mailbox: &'a str,
    },
    /// `INFO <mailbox>`
    Info {
        /// Mailbox to describe.
        mailbox: &'a str,
    },
    /// `STATS`
    Stats,
    /// `TOKEN <mailbox> <ttl-seconds>`
    Token {
        /// The mailbox the token opens.
        mailbox: &'a str,
        /// Seconds from now until it expires (1 to [`crate::auth::MAX_TTL`]).
        ttl: u64,
    },
    /// `QUIT`
    Quit,
}

/// Stable error codes; the text after the code is for humans and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Unknown command.
    Unknown,
    /// Wrong number of arguments, or a malformed argument.
    Syntax,
    /// A mailbox, group or event name breaks the naming rule.
    Name,
    /// An option other than `event=` / `except=`, or one given twice.
    Option,
    /// Payload longer than `max-message`.
    TooBig,
    /// Payload is not UTF-8.
    Utf8,
    /// The mailbox does not exist.
    NotFound,
    /// A server limit (mailboxes, groups) is reached.
    Full,
    /// Payload length is not a number (closes the connection).
    Length,
    /// Request line over [`MAX_LINE`] (closes the connection).
    Line,
    /// Payload not followed by a newline (closes the connection).
    Frame,
    /// `TOKEN` without `--secret-file`.
    NoSecret,
    /// The store cannot keep anything right now; nothing was stored.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in a fixed order (for counting by code).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Unknown,
        ErrorCode::Syntax,
        ErrorCode::Name,
        ErrorCode::Option,
        ErrorCode::TooBig,
        ErrorCode::Utf8,
        ErrorCode::NotFound,
        ErrorCode::Full,
        ErrorCode::Length,
        ErrorCode::Line,
        ErrorCode::Frame,
        ErrorCode::NoSecret,
        ErrorCode::Unavailable,
    ];

    /// Its position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Syntax => "SYNTAX",
            ErrorCode::Name => "NAME",
            ErrorCode::Option => "OPTION",
            ErrorCode::TooBig => "TOOBIG",
            ErrorCode::Utf8 => "UTF8",
            ErrorCode::NotFound => "NOTFOUND",
            ErrorCode::Full => "FULL",
            ErrorCode::Length => "LENGTH",
            ErrorCode::Line => "LINE",
            ErrorCode::Frame => "FRAME",
            ErrorCode::NoSecret => "NOSECRET",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The verbs of [`Command`], in the order of [`Command::verb_index`].
pub const VERBS: [&str; 11] = [
    "PING", "STATS", "QUIT", "SEND", "PUBLISH", "JOIN", "LEAVE", "MEMBERS", "DROP", "TOKEN", "INFO",
];

impl Command<'_> {
    /// The command's verb, as its position in [`VERBS`].
    pub fn verb_index(&self) -> usize {
        match self {
            Command::Ping => 0,
            Command::Stats => 1,
            Command::Quit => 2,
            Command::Send { .. } => 3,
            Command::Publish { .. } => 4,
            Command::Join { .. } => 5,
            Command::Leave { .. } => 6,
            Command::Members { .. } => 7,
            Command::Drop { .. } => 8,
            Command::Token { .. } => 9,
            Command::Info { .. } => 10,
        }
    }
}

/// An `ERR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human-readable detail (one line).
    pub message: String,
}

impl ControlError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: String) -> ControlError {
        ControlError { code, message }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERR {} {}", self.code.as_str(), self.message)
    }
}

/// Validates a framed request.
pub fn parse_command<'a>(
    line: &'a [u8],
    payload: Option<&'a [u8]>,
) -> Result<Command<'a>, ControlError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| ControlError::new(ErrorCode::Syntax, "request line is not UTF-8".into()))?;
    let mut args = line.split(' ').filter(|t| !t.is_empty());
    let verb = args.next().unwrap_or_default();
    let args: Vec<&str> = args.collect();
    let upper = verb.to_ascii_uppercase();
    let arity = |min: usize, max: usize| {
        if args.len() < min || args.len() > max {
            Err(ControlError::new(
                ErrorCode::Syntax,
                format!("wrong number of arguments for {upper}"),
            ))
        } else {
            Ok(())
        }
    };
    match upper.as_str() {
        "PING" => arity(0, 0).map(|_| Command::Ping),
        "STATS" => arity(0, 0).map(|_| Command::Stats),
        "QUIT" => arity(0, 0).map(|_| Command::Quit),
        "SEND" => {
            arity(2, 3)?;
            let mailbox = checked_name(args[0], "mailbox")?;
            let options = Options::parse(&args[2..], false)?;
            Ok(Command::Send {
                mailbox,
                event: options.event,
                data: utf8_payload(payload)?,
            })
        }
        "PUBLISH" => {
            arity(2, 4)?;
            let group = checked_name(args[0], "group")?;
            let options = Options::parse(&args[2..], true)?;
            Ok(Command::Publish {
                group,
                event: options.event,
                except: options.except,
                data: utf8_payload(payload)?,
            })
        }
        "JOIN" | "LEAVE" => {
            if args.len() < 2 {
                arity(2, usize::MAX)?;
            }
            let group = checked_name(args[0], "group")?;
            let mailboxes = args[1..]
                .iter()
                .map(|m| checked_name(m, "mailbox"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if upper == "JOIN" {
                Command::Join { group, mailboxes }
            } else {
                Command::Leave { group, mailboxes }
            })
        }
        "MEMBERS" => {
            arity(1, 1)?;
            Ok(Command::Members {
                group: checked_name(args[0], "group")?,
            })
        }
        "DROP" => {
            arity(1, 1)?;
            Ok(Command::Drop {
                mailbox: checked_name(args[0], "mailbox")?,
            })
        }
        "TOKEN" => {
            arity(2, 2)?;
            let mailbox = checked_name(args[0], "mailbox")?;
            let ttl = args[1]
                .parse::<u64>()
                .ok()
                .filter(|t| (1..=crate::auth::MAX_TTL).contains(t))
                .ok_or_else(|| {
                    ControlError::new(
                        ErrorCode::Syntax,
                        format!("ttl must be 1 to {} seconds", crate::auth::MAX_TTL),
                    )
                })?;
            Ok(Command::Token { mailbox, ttl })
        }
        "INFO" => {
            arity(1, 1)?;
            Ok(Command::Info {
                mailbox: checked_name(args[0], "mailbox")?,
            })
        }
        _ => Err(ControlError::new(
            ErrorCode::Unknown,
            format!("unknown command '{}'", truncate(verb, 32)),
        )),
    }
}

struct Options<'a> {
    event: Option<&'a str>,
    except: Vec<&'a str>,
}

impl<'a> Options<'a> {
    fn parse(tokens: &[&'a str], allow_except: bool) -> Result<Options<'a>, ControlError> {
        let mut options = Options {
            event: None,
            except: Vec::new(),
        };
        let mut seen_except = false;
        for token in tokens {
            let dup = || {
                ControlError::new(
                    ErrorCode::Option,
                    format!("option given twice: '{}'", truncate(token, 32)),
                )
            };
            if let Some(event) = token.strip_prefix("event=") {
                if options.event.is_some() {
                    return Err(dup());
                }
                options.event = Some(checked_name(event, "event")?);
            } else if let (Some(list), true) = (token.strip_prefix("except="), allow_except) {
                if seen_except {
                    return Err(dup());
                }
                seen_except = true;
                for m in list.split(',').filter(|m| !m.is_empty()) {
                    options.except.push(checked_name(m, "mailbox")?);
                }
            } else {
                return Err(ControlError::new(
                    ErrorCode::Option,
                    format!("unknown option '{}'", truncate(token, 32)),
                ));
            }
        }
        Ok(options)
    }
}

fn checked_name<'a>(name: &'a str, what: &str) -> Result<&'a str, ControlError> {
    if name::is_valid(name) {
        Ok(name)
    } else {
        Err(ControlError::new(
            ErrorCode::Name,
            format!(
                "invalid {what} name '{}' (1-{} bytes of A-Z a-z 0-9 . _ ~ -)",
                truncate(name, 32),
                name::MAX_NAME
            ),
        ))
    }
}

fn utf8_payload(payload: Option<&[u8]>) -> Result<&str, ControlError> {
    std::str::from_utf8(payload.unwrap_or_default()).map_err(|e| {
        ControlError::new(
            ErrorCode::Utf8,
            format!("payload is not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// At most `max` bytes of `s`, cut at a character boundary, for error messages.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A successful reply, rendered by [`render`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `PONG`
    Pong,
    /// `OK` followed by the given fields (may be empty).
    Ok(String),
    /// Nothing (QUIT closes instead).
    None,
}

/// Appends one reply line.
pub fn render(out: &mut Vec<u8>, reply: &Result<Reply, ControlError>) {
    match reply {
        Ok(Reply::Pong) => out.extend_from_slice(b"PONG\n"),
        Ok(Reply::Ok(fields)) if fields.is_empty() => out.extend_from_slice(b"OK\n"),
        Ok(Reply::Ok(fields)) => {
            out.extend_from_slice(b"OK ");
            out.extend_from_slice(fields.as_bytes());
            out.push(b'\n');
        }
        Ok(Reply::None) => {}
        Err(e) => {
            let mut line = e.to_string();
            line.retain(|c| c != '\n' && c != '\r');
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    type Framed = (Vec<u8>, Option<Vec<u8>>);

    fn frames(mut input: &[u8]) -> Result<Vec<Framed>, FrameError> {
        let mut out = vec![];
        loop {
            match parse_frame(input, MAX)? {
                Status::Partial => return Ok(out),
                Status::Complete((frame, used)) => {
                    match frame {
                        Frame::Blank => {}
                        Frame::Request { line, payload } => {
                            out.push((line.to_vec(), payload.map(<[u8]>::to_vec)))
                        }
                        Frame::Oversize { .. } => panic!("oversize in table test"),
                    }
                    input = &input[used..];
                }
            }
        }
    }

    #[test]
    fn frames_lines_and_payloads() {
        let got = frames(b"PING\r\nSEND a 5 event=x\nhe\nlo\nPUBLISH g 0\n\nINFO a\n").unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (b"PING".to_vec(), None));
        assert_eq!(
            got[1],
            (b"SEND a 5 event=x".to_vec(), Some(b"he\nlo".to_vec()))
        );
        assert_eq!(got[2], (b"PUBLISH g 0".to_vec(), Some(vec![])));
        assert_eq!(got[3], (b"INFO a".to_vec(), None));
    }

    #[test]
    fn payload_may_end_with_crlf() {
        let got = frames(b"send a 2\r\nhi\r\nPING\n").unwrap();
        assert_eq!(got[0].1.as_deref(), Some(&b"hi"[..]));
        assert_eq!(got[1].0, b"PING");
    }

    #[test]
    fn every_split_point_parses_the_same() {
        let input: &[u8] = b"PING\nSEND alice 12 event=chat\nhello\r\nworld\nJOIN g a b\r\nPUBLISH g 3 except=a\nabc\r\nSTATS\n";
        let whole = frames(input).unwrap();
        assert_eq!(whole.len(), 5);
        for cut in 0..input.len() {
            // Feed the prefix, consume what completes, then append the rest.
            let mut buf = input[..cut].to_vec();
            let mut got = vec![];
            let mut fed_rest = false;
            loop {
                match parse_frame(&buf, MAX).unwrap() {
                    Status::Complete((frame, used)) => {
                        if let Frame::Request { line, payload } = frame {
                            got.push((line.to_vec(), payload.map(<[u8]>::to_vec)));
                        }
                        buf.drain(..used);
                    }
                    Status::Partial if !fed_rest => {
                        buf.extend_from_slice(&input[cut..]);
                        fed_rest = true;
                    }
                    Status::Partial => break,
                }
            }
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            parse_frame(b"SEND a x\n", MAX),
            Err(FrameError::BadLength("x".into()))
        );
        assert_eq!(
            parse_frame(b"SEND a -1\n", MAX),
            Err(FrameError::BadLength("-1".into()))
        );
        assert_eq!(
            parse_frame(b"SEND a 2\nabc", MAX),
            Err(FrameError::Unterminated)
        );
        assert_eq!(
            parse_frame(b"SEND a 2\nab\rX", MAX),
            Err(FrameError::Unterminated)
        );
        assert_eq!(parse_frame(b"SEND a 2\nab\r", MAX), Ok(Status::Partial));
        let long = vec![b'x'; MAX_LINE + 2];
        assert_eq!(parse_frame(&long, MAX), Err(FrameError::LineTooLong));
        let mut exact = vec![b'x'; MAX_LINE];
        assert_eq!(parse_frame(&exact, MAX), Ok(Status::Partial));
        exact.push(b'\n');
        assert!(matches!(parse_frame(&exact, MAX), Ok(Status::Complete(_))));
    }

    #[test]
    fn oversize_reports_bytes_to_skip() {
        assert_eq!(
            parse_frame(b"SEND a 65\nrest", MAX),
            Ok(Status::Complete((
                Frame::Oversize { len: 65, skip: 66 },
                10
            )))
        );
        let at_limit = format!("SEND a {MAX_SKIP}\n");
        assert_eq!(
            parse_frame(at_limit.as_bytes(), MAX),
            Ok(Status::Complete((
                Frame::Oversize {
                    len: MAX_SKIP,
                    skip: MAX_SKIP + 1
                },
                at_limit.len()
            )))
        );
    }

    #[test]
    fn lengths_too_large_to_skip_lose_the_frame() {
        for len in ["67108865", "9223372036854775808", "9999999999999999999"] {
            let line = format!("SEND x {len}\nPING\n");
            assert!(
                matches!(
                    parse_frame(line.as_bytes(), MAX),
                    Err(FrameError::Unskippable(_))
                ),
                "{len}"
            );
        }
        assert_eq!(
            FrameError::Unskippable(1 << 40).reply().code,
            ErrorCode::TooBig
        );
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet = b"SEND PUBLISH 0123456789\n\r ae=,";
        for buf in crate::wire::random_inputs(0x2545F4914F6CDD1D, alphabet, 40, 20000) {
            if let Ok(Status::Complete((Frame::Request { line, payload }, used))) =
                parse_frame(&buf, MAX)
            {
                assert!(used <= buf.len());
                let _ = parse_command(line, payload);
            }
        }
    }

    fn req(line: &str, payload: Option<&str>) -> Result<Command<'static>, ControlError> {
        let line: &'static str = Box::leak(line.to_string().into_boxed_str());
        let payload = payload.map(|p| &*Box::leak(p.as_bytes().to_vec().into_boxed_slice()));
        parse_command(line.as_bytes(), payload)
    }

    fn code(r: Result<Command<'_>, ControlError>) -> &'static str {
        r.unwrap_err().code.as_str()
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(req("ping", None).unwrap(), Command::Ping);
        assert_eq!(
            req("TOKEN alice 60", None).unwrap(),
            Command::Token {
                mailbox: "alice",
                ttl: 60
            }
        );
        for bad in [
            "TOKEN alice 0",
            "TOKEN alice -1",
            "TOKEN alice x",
            "TOKEN alice 99999999999",
        ] {
            assert_eq!(code(req(bad, None)), "SYNTAX", "{bad}");
        }
        assert_eq!(code(req("TOKEN a/b 60", None)), "NAME");
        assert_eq!(
            req("SEND alice 2 event=chat", Some("hi")).unwrap(),
            Command::Send {
                mailbox: "alice",
                event: Some("chat"),
                data: "hi"
            }
        );
        assert_eq!(
            req("PUBLISH room 1 except=a,b event=m", Some("x")).unwrap(),
            Command::Publish {
                group: "room",
                event: Some("m"),
                except: vec!["a", "b"],
                data: "x"
            }
        );
        assert_eq!(
            req("JOIN g a b", None).unwrap(),
            Command::Join {
                group: "g",
                mailboxes: vec!["a", "b"]
            }
        );
        assert_eq!(
            req("LEAVE g a", None).unwrap(),
            Command::Leave {
                group: "g",
                mailboxes: vec!["a"]
            }
        );
        assert_eq!(
            req("MEMBERS g", None).unwrap(),
            Command::Members { group: "g" }
        );
        assert_eq!(req("DROP a", None).unwrap(), Command::Drop { mailbox: "a" });
        for (i, verb) in VERBS.iter().enumerate() {
            let line = match *verb {
                "SEND" | "PUBLISH" => format!("{verb} a 0"),
                "JOIN" | "LEAVE" => format!("{verb} g a"),
                "MEMBERS" | "DROP" | "INFO" => format!("{verb} a"),
                "TOKEN" => format!("{verb} a 60"),
                _ => verb.to_string(),
            };
            let payload = line.ends_with(" 0").then_some("");
            assert_eq!(req(&line, payload).unwrap().verb_index(), i, "{verb}");
        }
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
        assert_eq!(req("INFO a", None).unwrap(), Command::Info { mailbox: "a" });
        assert_eq!(req("STATS", None).unwrap(), Command::Stats);
        assert_eq!(req("QUIT", None).unwrap(), Command::Quit);
    }

    #[test]
    fn rejects_bad_requests_with_stable_codes() {
        assert_eq!(code(req("FROB", None)), "UNKNOWN");
        assert_eq!(code(req("PING extra", None)), "SYNTAX");
        assert_eq!(code(req("SEND", None)), "SYNTAX");
        assert_eq!(code(req("SEND a/b 1", Some("x"))), "NAME");
        assert_eq!(code(req("SEND a 1 event=a:b", Some("x"))), "NAME");
        assert_eq!(code(req("SEND a 1 colour=red", Some("x"))), "OPTION");
        assert_eq!(code(req("SEND a 1 except=b", Some("x"))), "OPTION");
        assert_eq!(code(req("SEND a 1 event=x event=y", Some("x"))), "SYNTAX");
        assert_eq!(
            code(req("PUBLISH g 1 event=x event=y", Some("x"))),
            "OPTION"
        );
        assert_eq!(code(req("PUBLISH g 1 except=a,b/c", Some("x"))), "NAME");
        assert_eq!(code(req("JOIN g", None)), "SYNTAX");
        assert_eq!(code(req("JOIN g a b!", None)), "NAME");
        assert_eq!(code(req("INFO", None)), "SYNTAX");
        let bad_utf8 = parse_command(b"SEND a 2", Some(&[0xc3, 0x28]));
        assert_eq!(code(bad_utf8), "UTF8");
        assert_eq!(code(parse_command(b"SEND \xff 1", Some(b"x"))), "SYNTAX");
    }

    #[test]
    fn renders_replies() {
        let mut out = vec![];
        render(&mut out, &Ok(Reply::Pong));
        render(&mut out, &Ok(Reply::Ok("1 2".into())));
        render(&mut out, &Ok(Reply::Ok(String::new())));
        render(
            &mut out,
            &Err(ControlError::new(ErrorCode::NotFound, "no\nsuch".into())),
        );
        assert_eq!(out, b"PONG\nOK 1 2\nOK\nERR NOTFOUND nosuch\n");
    }
}
