//! Fuzzes `Command::parse` with structured requests: libFuzzer's bytes
//! choose an API operation, then mutations of its example body
//! (`cairn_schema::fuzzing`). The property: decoding never panics, whatever
//! the body, and an error is always a structured `ApiError`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0usize;
    let mut choose = |n: usize| {
        // Two bytes per choice; past the end, always the first option.
        let pick = match data.get(at..at + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]) as usize,
            None => 0,
        };
        at += 2;
        if n == 0 { 0 } else { pick % n }
    };
    let (kind, verb, body) = cairn_schema::fuzzing::request(&mut choose);
    if let Err(e) = cairn_schema::Command::parse(kind, verb, &body) {
        assert!(!e.code.as_str().is_empty());
    }
});
