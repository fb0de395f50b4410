//! SCGI request heads: a netstring of NUL-separated header pairs.
//!
//! `<len>:CONTENT_LENGTH\0<n>\0SCGI\01\0...,` then `<n>` body bytes. The spec
//! requires `CONTENT_LENGTH` first and `SCGI` = `1`; mailboxd insists on both
//! so that a misconfigured peer (HTTP sent to the SCGI port, say) gets a
//! clear error instead of a confusing 400.

use crate::wire::Status;

/// Largest header netstring accepted: web servers forward every client
/// header, and 32 KiB is well above what browsers send.
pub const MAX_HEADERS: usize = 32 * 1024;

/// A parsed SCGI head, borrowing from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct ScgiHead<'a> {
    /// Header pairs in order, `CONTENT_LENGTH` first.
    pub pairs: Vec<(&'a [u8], &'a [u8])>,
    /// Body bytes that follow (drained, never used).
    pub content_length: usize,
}

/// Why a head was refused; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScgiError {
    /// The netstring length is not a number.
    Length,
    /// The header block exceeds [`MAX_HEADERS`].
    TooLarge,
    /// The netstring does not end with `,`.
    Comma,
    /// A header block that is not NUL-terminated name/value pairs.
    Pairs,
    /// `CONTENT_LENGTH` missing, not first, or not a number.
    ContentLength,
    /// No `SCGI` = `1` header.
    NotScgi,
}

impl std::fmt::Display for ScgiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScgiError::Length => "SCGI netstring length is not a number",
            ScgiError::TooLarge => "SCGI header block larger than 32 KiB",
            ScgiError::Comma => "SCGI netstring not terminated by ','",
            ScgiError::Pairs => "SCGI headers are not NUL-terminated pairs",
            ScgiError::ContentLength => "SCGI CONTENT_LENGTH missing, not first, or not a number",
            ScgiError::NotScgi => "SCGI header SCGI=1 missing",
        })
    }
}

/// Parses the header netstring at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Status<(ScgiHead<'_>, usize)>, ScgiError> {
    let digits = buf
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_digit())
        .count();
    match buf.get(digits) {
        None if digits < 8 => return Ok(Status::Partial),
        Some(b':') if digits > 0 => {}
        _ => return Err(ScgiError::Length),
    }
    let len: usize = std::str::from_utf8(&buf[..digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ScgiError::Length)?;
    if len > MAX_HEADERS {
        return Err(ScgiError::TooLarge);
    }
    let start = digits + 1;
    let end = start + len;
    if buf.len() <= end {
        return Ok(Status::Partial);
    }
    if buf[end] != b',' {
        return Err(ScgiError::Comma);
    }
    let block = &buf[start..end];
    if !block.is_empty() && block.last() != Some(&0) {
        return Err(ScgiError::Pairs);
    }
    let fields: Vec<&[u8]> = block.split(|&b| b == 0).collect();
    // A terminated block splits into 2n fields plus one empty tail.
    let fields = &fields[..fields.len() - 1];
    if !fields.len().is_multiple_of(2) {
        return Err(ScgiError::Pairs);
    }
    let pairs: Vec<(&[u8], &[u8])> = fields.chunks(2).map(|p| (p[0], p[1])).collect();
    let content_length = match pairs.first() {
        Some((b"CONTENT_LENGTH", v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ScgiError::ContentLength)?,
        _ => return Err(ScgiError::ContentLength),
    };
    if !pairs.iter().any(|(k, v)| *k == b"SCGI" && *v == b"1") {
        return Err(ScgiError::NotScgi);
    }
    Ok(Status::Complete((
        ScgiHead {
            pairs,
            content_length,
        },
        end + 1,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netstring(block: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", block.len()).into_bytes();
        v.extend_from_slice(block);
        v.push(b',');
        v
    }

    const GOOD: &[u8] = b"CONTENT_LENGTH\x0027\x00SCGI\x001\x00REQUEST_METHOD\x00GET\x00REQUEST_URI\x00/comet/a\x00";

    #[test]
    fn parses_the_spec_example_shape() {
        let mut buf = netstring(GOOD);
        buf.extend_from_slice(b"body...");
        let Status::Complete((head, used)) = parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(used, buf.len() - 7);
        assert_eq!(head.content_length, 27);
        assert_eq!(head.pairs[3], (&b"REQUEST_URI"[..], &b"/comet/a"[..]));
    }

    #[test]
    fn every_split_point_is_partial() {
        let buf = netstring(GOOD);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(Status::Partial), "cut {cut}");
        }
    }

    #[test]
    fn rejects_malformed_heads() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ScgiError::Length));
        assert_eq!(parse(b":abc,"), Err(ScgiError::Length));
        assert_eq!(parse(b"99999999:"), Err(ScgiError::TooLarge));
        assert_eq!(parse(b"123456789:"), Err(ScgiError::Length));
        assert_eq!(parse(b"40000:"), Err(ScgiError::TooLarge));
        assert_eq!(parse(b"3:abcX"), Err(ScgiError::Comma));
        assert_eq!(
            parse(&netstring(b"CONTENT_LENGTH\x000")),
            Err(ScgiError::Pairs)
        );
        assert_eq!(
            parse(&netstring(b"CONTENT_LENGTH\x000\x00SCGI\x00")),
            Err(ScgiError::Pairs)
        );
        assert_eq!(
            parse(&netstring(b"SCGI\x001\x00CONTENT_LENGTH\x000\x00")),
            Err(ScgiError::ContentLength)
        );
        assert_eq!(
            parse(&netstring(b"CONTENT_LENGTH\x00x\x00SCGI\x001\x00")),
            Err(ScgiError::ContentLength)
        );
        assert_eq!(
            parse(&netstring(b"CONTENT_LENGTH\x000\x00")),
            Err(ScgiError::NotScgi)
        );
        assert_eq!(parse(&netstring(b"")), Err(ScgiError::ContentLength));
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet = b"0123:,\0SCGI1CONTENT_LENGTH";
        for buf in crate::wire::random_inputs(0x1234_5678_9ABC_DEF1, alphabet, 40, 20000) {
            let _ = parse(&buf);
        }
    }
}
