//! Wire formats: pure codecs, bytes in and values out, no sockets, clocks
//! or mailboxes.
//!
//! | module | format |
//! |---|---|
//! | [`handover`] | the snapshot a process hands its successor in a binary upgrade |
//! | [`http`] | HTTP/1.x request heads in (httparse), response heads out |
//! | [`fcgi`] | FastCGI records, name-value pairs, response records |
//! | [`scgi`] | SCGI header netstrings |
//! | [`cgi`] | CGI variables (FastCGI, SCGI) to a request; CGI response heads |
//! | [`control`] | the backends' control protocol: frames, commands, replies |
//! | [`journal`] | the records `--state-dir` appends to disk and snapshots are made of |
//! | [`notice`] | what instances sharing Redis publish to each other, and the entries they retain there |
//! | [`transport`] | messages to clients: SSE, long-poll JSON, raw stream |
//!
//! Every parser returns a [`Status`]: a whole item and the bytes it used,
//! or a request for more input. Partial input is never an error.

pub mod cgi;
pub mod control;
pub mod fcgi;
pub mod handover;
pub mod http;
pub mod journal;
pub mod notice;
pub mod scgi;
pub mod transport;

/// Whether a parser found a whole item.
#[derive(Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The item (and, by convention, the number of bytes it used).
    Complete(T),
    /// More bytes are needed.
    Partial,
}

/// Deterministic pseudo-random inputs for the codecs' never-panic tests:
/// `count` buffers of up to `max_len` bytes drawn from `alphabet` (xorshift,
/// so a failure reproduces exactly).
#[cfg(test)]
pub fn random_inputs(
    mut seed: u64,
    alphabet: &[u8],
    max_len: u64,
    count: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let alphabet = alphabet.to_vec();
    (0..count).map(move |_| {
        let len = seed % (max_len + 1);
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect()
    })
}
