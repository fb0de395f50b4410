//! SCGI header netstrings and the CGI variables they carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::Status;
use mailboxd::wire::{cgi, scgi};
use mailboxd::request::route;

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete((head, used))) = scgi::parse(data) {
        assert!(used <= data.len());
        let mut scratch = String::new();
        if let Ok(request) = cgi::request(&head.pairs, &mut scratch) {
            let _ = route(&request);
        }
    }
});
