//! The naming rule shared by mailboxes, groups and event names.
//!
//! Names travel unescaped in URLs, control lines, SSE `event:` lines and
//! JSON, so they are restricted to RFC 3986 unreserved characters: nothing in
//! them ever needs quoting anywhere.

/// Longest name accepted; long enough for a UUID plus a prefix, short enough
/// that a `JOIN` line of hundreds of names stays small.
pub const MAX_NAME: usize = 128;

/// True for 1–128 bytes of `[A-Za-z0-9._~-]`.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unreserved_only() {
        assert!(is_valid("alice"));
        assert!(is_valid("room-1.chat_x~y"));
        assert!(is_valid(&"a".repeat(MAX_NAME)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(MAX_NAME + 1)));
        for bad in ["a b", "a/b", "a%20", "é", "a\n", "a:b", "a,b", "a=b"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
