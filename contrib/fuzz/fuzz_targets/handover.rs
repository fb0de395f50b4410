//! What a new process reads from its predecessor (a binary upgrade, or
//! systemd's file descriptor store): any bytes must decode or be refused,
//! never panic; a snapshot that decodes must encode to bytes that decode to
//! the same snapshot (an empty memory state has two spellings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::handover;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = handover::decode(data) {
        assert_eq!(handover::decode(&handover::encode(&s)), Ok(s));
    }
    // Past the checksum: the same bytes as a body with a valid header, so
    // the fuzzer reaches the field decoding.
    let mut framed = handover::MAGIC.to_vec();
    framed.push(handover::VERSION);
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(s) = handover::decode(&framed) {
        assert_eq!(handover::decode(&handover::encode(&s)), Ok(s));
    }
});
