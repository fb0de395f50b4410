//! What instances read from Redis: any bytes on an instance's channel or in a
//! retained entry must parse or be refused, never panic; an entry that parses
//! must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::notice;

fuzz_target!(|data: &[u8]| {
    let _ = notice::parse_notice(data);
    if let Ok(e) = notice::parse_entry(data) {
        let again = notice::encode_entry(e.id, e.event, e.data);
        // Ids with leading zeros parse to the same number but print shorter.
        if !data.starts_with(b"0") {
            assert_eq!(&again[..], data);
        }
    }
});
