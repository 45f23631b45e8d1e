//! Fuzzes the wire decoder: any bytes, as a frame body, must decode to a
//! message or a typed error, never panic; and a message that decodes must
//! encode back to a body that decodes to the same message.
#![no_main]

use flotilla_gensync::wire::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(message) = decode(body) {
        let again = encode(&message).expect("a decoded message fits in a frame");
        assert_eq!(decode(&again).expect("what we encode decodes"), message);
    }
});
