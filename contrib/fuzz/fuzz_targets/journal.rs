//! Journal records: whatever bytes a state directory holds (a torn write, a
//! flipped bit, a file from elsewhere) must decode to records, `Partial` or
//! `Corrupt`, and a decoded record must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::Status;
use mailboxd::wire::journal;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Status::Complete((record, used))) = journal::decode(rest) {
        let mut again = Vec::new();
        journal::encode(&record, &mut again);
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});
