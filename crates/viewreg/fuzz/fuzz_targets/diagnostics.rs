//! Fuzzes the diagnostics protocol's decoders: any bytes, as a request or
//! an answer body, must decode or give a typed error, never panic; and an
//! answer that decodes must encode (it is within the limits) to a body that
//! decodes to the same answer.
#![no_main]

use flotilla_viewreg::diagnostics::wire::{decode_answer, decode_request, encode_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = decode_request(body);
    if let Ok(answer) = decode_answer(body) {
        let again = encode_answer(&answer).expect("a decoded answer is within the limits");
        assert_eq!(decode_answer(&again).expect("what we encode decodes"), answer);
    }
});
