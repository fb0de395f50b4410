//! Signed mailbox access: tokens that bind a mailbox name and an expiry.
//!
//! With `--secret-file`, opening a mailbox needs a token minted by the
//! backend (or by mailboxd's `TOKEN` command):
//!
//! ```text
//! token = "v1." expiry "." base64url(HMAC-SHA256(key, "mailboxd-token-v1\n" mailbox "\n" expiry))
//! ```
//!
//! `expiry` is decimal Unix seconds; base64url has no padding. The token
//! uses only `[A-Za-z0-9._-]`, so it travels unquoted in a URL. The key is
//! the secret file's content without trailing spaces, tabs, CR and LF. `docs/security.md`
//! is the normative description, with a test vector.
//!
//! Verification is pure (the caller passes the time) and compares MACs in
//! constant time; every failure looks the same to the client.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The only token version so far.
const PREFIX: &str = "v1.";

/// Domain separation: a MAC made with the same key for another purpose
/// can never pass as a token.
const CONTEXT: &[u8] = b"mailboxd-token-v1\n";

/// Shortest key accepted: 128 bits.
pub const MIN_KEY: usize = 16;

/// Longest key accepted; a secret file is a few dozen bytes, so anything
/// far larger is a mistake (a wrong path), not a key.
const MAX_KEY: usize = 4096;

/// Longest token looked at: `v1.` + 20 digits + `.` + 43 MAC characters
/// is 67; anything longer is refused before any work.
pub const MAX_TOKEN: usize = 80;

/// Longest TTL `TOKEN` mints: a year. Tokens are meant to be short-lived
/// and re-minted with each page.
pub const MAX_TTL: u64 = 365 * 24 * 3600;

/// The Unix time in seconds, as token expiries are written.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signing key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    /// Where it was read from, for SIGHUP's reload.
    path: PathBuf,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.path.display())
    }
}

/// Why a token was refused (logged at debug; the client only sees 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token was presented.
    Missing,
    /// Not of the `v1.<expiry>.<mac>` form.
    Malformed,
    /// The expiry has passed.
    Expired,
    /// The MAC does not match (wrong key, or a token for another mailbox).
    BadSignature,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "no token",
            TokenError::Malformed => "malformed token",
            TokenError::Expired => "expired token",
            TokenError::BadSignature => "token signature does not match this mailbox",
        })
    }
}

impl Secret {
    /// A secret from key bytes (at least [`MIN_KEY`]).
    pub fn from_key(key: &[u8]) -> Result<Secret, String> {
        if key.len() < MIN_KEY {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_KEY} are needed (e.g. openssl rand -hex 32)",
                key.len()
            ));
        }
        Ok(Secret {
            key: key.to_vec(),
            path: PathBuf::new(),
        })
    }

    /// Reads the secret file. It must be a regular file that neither group
    /// nor others can read or write: a key others can read signs their
    /// tokens too.
    pub fn load(path: &Path) -> Result<Secret, String> {
        use std::os::unix::fs::MetadataExt;
        let err = |e: String| format!("secret file {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:04o} lets group or others access it; chmod 600 it",
                meta.mode() & 0o777
            )));
        }
        if meta.len() > MAX_KEY as u64 {
            return Err(err(format!(
                "larger than {MAX_KEY} bytes; is this the key?"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let end = bytes
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .map_or(0, |i| i + 1);
        let key = &bytes[..end];
        let mut secret = Secret::from_key(key).map_err(err)?;
        secret.path = path.to_path_buf();
        Ok(secret)
    }

    /// Reads the file this secret came from again (key rotation on SIGHUP).
    pub fn reload(&self) -> Result<Secret, String> {
        Secret::load(&self.path)
    }

    fn mac(&self, mailbox: &str, expiry: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(CONTEXT);
        mac.update(mailbox.as_bytes());
        mac.update(b"\n");
        mac.update(expiry.to_string().as_bytes());
        mac
    }

    /// Mints the token for `mailbox` valid until `expiry` (Unix seconds).
    pub fn mint(&self, mailbox: &str, expiry: u64) -> String {
        let tag = self.mac(mailbox, expiry).finalize().into_bytes();
        format!("{PREFIX}{expiry}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a token for `mailbox` at Unix time `now`.
    pub fn verify(&self, token: &str, mailbox: &str, now: u64) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (expiry, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Malformed);
        }
        // The MAC covers the digits as written: a leading zero changes them.
        let expiry_value: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if expiry_value.to_string() != expiry {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(mailbox, expiry_value)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        if expiry_value < now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/security.md`.
    pub const VECTOR_KEY: &str = "mailboxd-test-vector-key-0123456789";
    pub const VECTOR_TOKEN: &str = "v1.1900000000.m8tfWhOZInZ_4Cxca7onm8CW_Mwrq9PYwCWi1ULYBdo";

    fn secret() -> Secret {
        Secret::from_key(VECTOR_KEY.as_bytes()).unwrap()
    }

    #[test]
    fn test_vector() {
        assert_eq!(secret().mint("alice", 1_900_000_000), VECTOR_TOKEN);
        assert_eq!(
            secret().verify(VECTOR_TOKEN, "alice", 1_800_000_000),
            Ok(())
        );
    }

    #[test]
    fn every_kind_of_bad_token_is_refused() {
        let s = secret();
        let good = s.mint("alice", 1000);
        assert_eq!(
            s.verify(&good, "alice", 1000),
            Ok(()),
            "valid through its second"
        );
        assert_eq!(s.verify(&good, "alice", 1001), Err(TokenError::Expired));
        assert_eq!(s.verify(&good, "bob", 10), Err(TokenError::BadSignature));
        let other = Secret::from_key(b"another key of enough length").unwrap();
        assert_eq!(
            other.verify(&good, "alice", 10),
            Err(TokenError::BadSignature)
        );
        // Extending the expiry breaks the signature.
        let forged = good.replace("v1.1000.", "v1.9999.");
        assert_eq!(
            s.verify(&forged, "alice", 10),
            Err(TokenError::BadSignature)
        );
        let padded = good.replace("v1.1000.", "v1.01000.");
        assert_eq!(s.verify(&padded, "alice", 10), Err(TokenError::Malformed));
        for bad in [
            "x",
            "v1.",
            "v1.1000",
            "v2.1000.abc",
            "v1.-5.abc",
            "v1.1000.!!!",
            "v1.99999999999999999999999.abc",
        ] {
            assert_eq!(
                s.verify(bad, "alice", 10),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(s.verify("", "alice", 10), Err(TokenError::Missing));
        let long = format!("{good}{}", "A".repeat(MAX_TOKEN));
        assert_eq!(s.verify(&long, "alice", 10), Err(TokenError::Malformed));
        let truncated = &good[..good.len() - 3];
        assert_eq!(
            s.verify(truncated, "alice", 10),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tokens_are_url_safe() {
        let t = secret().mint("room-1.x_y~z", u64::MAX);
        assert!(t.len() <= MAX_TOKEN);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{t}"
        );
    }

    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mbx-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{VECTOR_KEY}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Secret::load(&path).unwrap_err().contains("0640"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = Secret::load(&path).unwrap();
        assert_eq!(
            loaded.mint("alice", 1_900_000_000),
            VECTOR_TOKEN,
            "newline trimmed"
        );
        std::fs::write(&path, "short\n").unwrap();
        assert!(loaded.reload().unwrap_err().contains("at least 16"));
        std::fs::write(&path, "k".repeat(MAX_KEY + 1)).unwrap();
        assert!(Secret::load(&path).unwrap_err().contains("larger than"));
        assert!(Secret::load(&dir).unwrap_err().contains("regular file"));
        assert!(Secret::load(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
