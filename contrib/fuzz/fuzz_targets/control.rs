//! The control protocol: framing then validation over arbitrary input, as
//! the server consumes it (skipping oversize payloads), must never panic and
//! must always make progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailboxd::wire::control::{self, Frame, Status};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        match control::parse_frame(rest, 64) {
            Ok(Status::Partial) | Err(_) => break,
            Ok(Status::Complete((frame, used))) => {
                assert!(used > 0 && used <= rest.len());
                let mut skip = 0;
                match frame {
                    Frame::Blank => {}
                    Frame::Oversize { skip: s, .. } => skip = s,
                    Frame::Request { line, payload } => {
                        let _ = control::parse_command(line, payload);
                    }
                }
                rest = &rest[used..];
                rest = &rest[skip.min(rest.len())..];
            }
        }
    }
});
