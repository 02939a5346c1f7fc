//! Fuzzes the pure transmission-request parser: any 28 bytes parse to a
//! request or a bad-magic error without panicking, and a parsed request
//! writes back to exactly the bytes it came from.

#![no_main]

use cairn_blocks::nbd::{NBD_REQUEST_MAGIC, ProtocolError, REQUEST_LEN, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(header) = data.first_chunk::<REQUEST_LEN>() else {
        return;
    };
    match parse_request(header) {
        Ok(request) => assert_eq!(&request.to_bytes(), header),
        Err(ProtocolError::BadMagic(magic)) => {
            assert_ne!(magic, NBD_REQUEST_MAGIC);
            assert_eq!(magic.to_be_bytes(), header[..4]);
        }
    }
});
