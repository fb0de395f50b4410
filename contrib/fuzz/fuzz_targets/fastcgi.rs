//! FastCGI records, BEGIN_REQUEST bodies, name-value pairs and the CGI
//! variables they carry, over arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::Status;
use mailboxd::wire::{cgi, fcgi};
use mailboxd::request::route;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Status::Complete((record, used))) = fcgi::parse(rest) {
        assert!(used > 0 && used <= rest.len());
        let _ = fcgi::parse_begin(record.content);
        let _ = fcgi::get_values_result(record.content, 100, 64);
        if let Ok(pairs) = fcgi::parse_pairs(record.content) {
            let mut scratch = String::new();
            if let Ok(request) = cgi::request(&pairs, &mut scratch) {
                let _ = route(&request);
            }
        }
        rest = &rest[used..];
    }
});
