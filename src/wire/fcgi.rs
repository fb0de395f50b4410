//! FastCGI 1.0 records: parsing, name-value pairs, and the records mailboxd writes.
//!
//! A record is an 8-byte header (version, type, request id, content length,
//! padding length, reserved), then content, then padding. Name-value pairs
//! (in `PARAMS` and `GET_VALUES`) use 1-byte lengths below 128 and 4-byte
//! lengths (high bit set) above. mailboxd is a responder: it reads
//! `BEGIN_REQUEST`, `PARAMS`, `STDIN`, `ABORT_REQUEST` and `GET_VALUES`, and
//! writes `STDOUT`, `END_REQUEST`, `GET_VALUES_RESULT` and `UNKNOWN_TYPE`.
//! Pure functions only; the connection state lives in `clients::fcgi`.

use crate::wire::Status;

/// Record header length.
pub const HEADER_LEN: usize = 8;
/// Largest content of one record.
pub const MAX_CONTENT: usize = 0xffff;
/// Largest whole record (header, content, padding).
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CONTENT + 0xff;

/// `FCGI_BEGIN_REQUEST`
pub const BEGIN_REQUEST: u8 = 1;
/// `FCGI_ABORT_REQUEST`
pub const ABORT_REQUEST: u8 = 2;
/// `FCGI_END_REQUEST`
pub const END_REQUEST: u8 = 3;
/// `FCGI_PARAMS`
pub const PARAMS: u8 = 4;
/// `FCGI_STDIN`
pub const STDIN: u8 = 5;
/// `FCGI_STDOUT`
pub const STDOUT: u8 = 6;
/// `FCGI_STDERR`
pub const STDERR: u8 = 7;
/// `FCGI_DATA`
pub const DATA: u8 = 8;
/// `FCGI_GET_VALUES`
pub const GET_VALUES: u8 = 9;
/// `FCGI_GET_VALUES_RESULT`
pub const GET_VALUES_RESULT: u8 = 10;
/// `FCGI_UNKNOWN_TYPE`
pub const UNKNOWN_TYPE: u8 = 11;

/// `FCGI_RESPONDER`, the only role mailboxd plays.
pub const ROLE_RESPONDER: u16 = 1;
/// `FCGI_KEEP_CONN` flag of `BEGIN_REQUEST`.
pub const KEEP_CONN: u8 = 1;

/// `END_REQUEST` protocol status: `FCGI_REQUEST_COMPLETE`.
pub const REQUEST_COMPLETE: u8 = 0;
/// `END_REQUEST` protocol status: `FCGI_OVERLOADED`.
pub const OVERLOADED: u8 = 2;
/// `END_REQUEST` protocol status: `FCGI_UNKNOWN_ROLE`.
pub const UNKNOWN_ROLE: u8 = 3;

/// One record, borrowing its content from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FcgiRecord<'a> {
    /// Record type.
    pub kind: u8,
    /// Request id (0 for management records).
    pub request_id: u16,
    /// Content, without padding.
    pub content: &'a [u8],
}

/// A malformed record: the connection cannot be trusted and is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcgiError {
    /// Version byte other than 1.
    Version(u8),
    /// A `BEGIN_REQUEST` body that is not 8 bytes.
    BeginLength(usize),
    /// Name-value pairs whose lengths run past the data.
    Pairs,
}

impl std::fmt::Display for FcgiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FcgiError::Version(v) => write!(f, "FastCGI record with version {v} (only 1 exists)"),
            FcgiError::BeginLength(n) => write!(f, "BEGIN_REQUEST body of {n} bytes (must be 8)"),
            FcgiError::Pairs => write!(f, "truncated FastCGI name-value pair"),
        }
    }
}

/// Parses one record from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Status<(FcgiRecord<'_>, usize)>, FcgiError> {
    if buf.len() < HEADER_LEN {
        return Ok(Status::Partial);
    }
    if buf[0] != 1 {
        return Err(FcgiError::Version(buf[0]));
    }
    let content_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let total = HEADER_LEN + content_len + buf[6] as usize;
    if buf.len() < total {
        return Ok(Status::Partial);
    }
    let record = FcgiRecord {
        kind: buf[1],
        request_id: u16::from_be_bytes([buf[2], buf[3]]),
        content: &buf[HEADER_LEN..HEADER_LEN + content_len],
    };
    Ok(Status::Complete((record, total)))
}

/// The body of a `BEGIN_REQUEST`: (role, flags).
pub fn parse_begin(content: &[u8]) -> Result<(u16, u8), FcgiError> {
    if content.len() != 8 {
        return Err(FcgiError::BeginLength(content.len()));
    }
    Ok((u16::from_be_bytes([content[0], content[1]]), content[2]))
}

/// One CGI variable as `(name, value)` bytes.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a block of name-value pairs.
pub fn parse_pairs(mut buf: &[u8]) -> Result<Vec<Pair<'_>>, FcgiError> {
    fn length(buf: &mut &[u8]) -> Result<usize, FcgiError> {
        let first = *buf.first().ok_or(FcgiError::Pairs)?;
        if first < 0x80 {
            *buf = &buf[1..];
            return Ok(first as usize);
        }
        if buf.len() < 4 {
            return Err(FcgiError::Pairs);
        }
        let n = u32::from_be_bytes([first & 0x7f, buf[1], buf[2], buf[3]]) as usize;
        *buf = &buf[4..];
        Ok(n)
    }
    let mut pairs = Vec::new();
    while !buf.is_empty() {
        let name_len = length(&mut buf)?;
        let value_len = length(&mut buf)?;
        if buf.len() < name_len.saturating_add(value_len) {
            return Err(FcgiError::Pairs);
        }
        pairs.push((&buf[..name_len], &buf[name_len..name_len + value_len]));
        buf = &buf[name_len + value_len..];
    }
    Ok(pairs)
}

/// Appends one name-value pair.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for len in [name.len(), value.len()] {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// A record header for `len` content bytes followed by `padding` bytes.
pub fn header(kind: u8, request_id: u16, len: usize, padding: u8) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_CONTENT);
    let id = request_id.to_be_bytes();
    let len = (len as u16).to_be_bytes();
    [1, kind, id[0], id[1], len[0], len[1], padding, 0]
}

/// Appends a whole record (content must fit in one record), padded to 8 bytes
/// as the specification recommends.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    let padding = (8 - content.len() % 8) % 8;
    out.extend_from_slice(&header(kind, request_id, content.len(), padding as u8));
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// Appends `data` as as many `STDOUT` records as it needs.
pub fn encode_stdout(out: &mut Vec<u8>, request_id: u16, data: &[u8]) {
    for piece in data.chunks(MAX_CONTENT) {
        encode_record(out, STDOUT, request_id, piece);
    }
}

/// The empty `STDOUT` that closes the stream, then `END_REQUEST`.
pub fn end_request(request_id: u16, protocol_status: u8) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&header(STDOUT, request_id, 0, 0));
    out[8..16].copy_from_slice(&header(END_REQUEST, request_id, 8, 0));
    // appStatus (4 bytes) = 0, then protocolStatus, then 3 reserved bytes.
    out[20] = protocol_status;
    out
}

/// `UNKNOWN_TYPE` for a record type mailboxd does not know.
pub fn unknown_type(kind: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&header(UNKNOWN_TYPE, 0, 8, 0));
    out[8] = kind;
    out
}

/// `GET_VALUES_RESULT` answering the asked-for variables that mailboxd knows.
pub fn get_values_result(
    query: &[u8],
    max_conns: usize,
    max_reqs: usize,
) -> Result<Vec<u8>, FcgiError> {
    let mut body = Vec::new();
    for (name, _) in parse_pairs(query)? {
        let value = match name {
            b"FCGI_MAX_CONNS" => max_conns.to_string(),
            b"FCGI_MAX_REQS" => max_reqs.to_string(),
            b"FCGI_MPXS_CONNS" => "1".to_string(),
            _ => continue,
        };
        encode_pair(&mut body, name, value.as_bytes());
    }
    let mut out = Vec::new();
    encode_record(&mut out, GET_VALUES_RESULT, 0, &body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let mut v = header(kind, id, content.len(), padding).to_vec();
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0xAA, padding as usize));
        v
    }

    #[test]
    fn parses_records_with_padding() {
        let mut buf = record(BEGIN_REQUEST, 7, &[0, 1, KEEP_CONN, 0, 0, 0, 0, 0], 0);
        buf.extend(record(PARAMS, 7, b"abc", 5));
        buf.extend(record(STDIN, 7, b"", 0));
        let mut at = 0;
        let mut kinds = vec![];
        while let Status::Complete((rec, used)) = parse(&buf[at..]).unwrap() {
            assert_eq!(rec.request_id, 7);
            kinds.push((rec.kind, rec.content.to_vec()));
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(kinds[1], (PARAMS, b"abc".to_vec()));
        assert_eq!(
            parse_begin(&kinds[0].1).unwrap(),
            (ROLE_RESPONDER, KEEP_CONN)
        );
    }

    #[test]
    fn every_split_point_is_partial() {
        let buf = record(PARAMS, 1, &[9; 300], 4);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(Status::Partial), "cut {cut}");
        }
        assert!(matches!(parse(&buf), Ok(Status::Complete((_, n))) if n == buf.len()));
    }

    #[test]
    fn largest_record() {
        let buf = record(STDIN, 1, &vec![1; MAX_CONTENT], 255);
        assert_eq!(buf.len(), MAX_RECORD);
        let Status::Complete((rec, used)) = parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!((rec.content.len(), used), (MAX_CONTENT, MAX_RECORD));
    }

    #[test]
    fn malformed_records() {
        assert_eq!(parse(&[2, 1, 0, 1, 0, 0, 0, 0]), Err(FcgiError::Version(2)));
        assert_eq!(parse_begin(&[0, 1, 0]), Err(FcgiError::BeginLength(3)));
        assert_eq!(parse_pairs(&[5, 1, b'a']), Err(FcgiError::Pairs));
        assert_eq!(parse_pairs(&[0x80, 0]), Err(FcgiError::Pairs));
        assert_eq!(
            parse_pairs(&[0xff, 0xff, 0xff, 0xff, 0]),
            Err(FcgiError::Pairs)
        );
    }

    #[test]
    fn pairs_round_trip_with_short_and_long_lengths() {
        let long = vec![b'v'; 300];
        let mut buf = vec![];
        encode_pair(&mut buf, b"REQUEST_URI", b"/comet/a");
        encode_pair(&mut buf, b"HTTP_COOKIE", &long);
        encode_pair(&mut buf, b"EMPTY", b"");
        assert_eq!(buf[0], 11);
        assert_eq!(buf[1 + 1 + 11 + 8 + 1], 0x80, "300 needs a 4-byte length");
        let pairs = parse_pairs(&buf).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], (&b"REQUEST_URI"[..], &b"/comet/a"[..]));
        assert_eq!(pairs[1].1.len(), 300);
        assert_eq!(pairs[2], (&b"EMPTY"[..], &b""[..]));
    }

    #[test]
    fn writes_responses() {
        let mut out = vec![];
        encode_stdout(&mut out, 3, &vec![b'x'; MAX_CONTENT + 10]);
        let Status::Complete((first, used)) = parse(&out).unwrap() else {
            panic!()
        };
        assert_eq!(
            (first.kind, first.request_id, first.content.len()),
            (STDOUT, 3, MAX_CONTENT)
        );
        let Status::Complete((second, _)) = parse(&out[used..]).unwrap() else {
            panic!()
        };
        assert_eq!(second.content.len(), 10);
        assert_eq!(used % 8, 0, "padded to 8 bytes");

        let end = end_request(3, UNKNOWN_ROLE);
        let Status::Complete((stdout, n)) = parse(&end).unwrap() else {
            panic!()
        };
        assert_eq!((stdout.kind, stdout.content.len()), (STDOUT, 0));
        let Status::Complete((er, _)) = parse(&end[n..]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (er.kind, er.request_id, er.content),
            (END_REQUEST, 3, &[0, 0, 0, 0, UNKNOWN_ROLE, 0, 0, 0][..])
        );

        let unknown = unknown_type(42);
        let Status::Complete((u, _)) = parse(&unknown).unwrap() else {
            panic!()
        };
        assert_eq!((u.kind, u.request_id, u.content[0]), (UNKNOWN_TYPE, 0, 42));
    }

    #[test]
    fn get_values_answers_known_names() {
        let mut q = vec![];
        for name in [
            &b"FCGI_MAX_CONNS"[..],
            b"FCGI_MAX_REQS",
            b"FCGI_MPXS_CONNS",
            b"OTHER",
        ] {
            encode_pair(&mut q, name, b"");
        }
        let out = get_values_result(&q, 100, 16).unwrap();
        let Status::Complete((rec, _)) = parse(&out).unwrap() else {
            panic!()
        };
        assert_eq!(rec.kind, GET_VALUES_RESULT);
        let pairs = parse_pairs(rec.content).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b"FCGI_MAX_CONNS"[..], &b"100"[..]),
                (&b"FCGI_MAX_REQS"[..], &b"16"[..]),
                (&b"FCGI_MPXS_CONNS"[..], &b"1"[..])
            ]
        );
    }

    #[test]
    fn random_input_never_panics() {
        // Version byte 1 is common so that many inputs get past the header check.
        let alphabet = [
            1, 1, 1, 1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ];
        for buf in crate::wire::random_inputs(0xDEADBEEFCAFEF00D, &alphabet, 48, 20000) {
            if let Ok(Status::Complete((rec, used))) = parse(&buf) {
                assert!(used <= buf.len());
                let _ = parse_pairs(rec.content);
                let _ = parse_begin(rec.content);
            }
            let _ = parse_pairs(&buf);
        }
    }
}
