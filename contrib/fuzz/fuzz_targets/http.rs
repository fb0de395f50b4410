//! HTTP request heads: parsing, then routing (mailbox, transport, resume
//! point, token), over arbitrary bytes, including pipelined heads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::Status;
use mailboxd::wire::http;
use mailboxd::request::route;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Status::Complete((head, used))) = http::parse(rest) {
        assert!(used > 0 && used <= rest.len());
        let _ = route(&head.request);
        rest = &rest[used..];
    }
});
