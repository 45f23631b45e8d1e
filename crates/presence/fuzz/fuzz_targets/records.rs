//! Fuzzes the decoders of what the etcd store reads back: any key and
//! value, as a counter, a being, a tombstone or a slot record, must decode
//! or give a typed error, never panic; and a slot record that decodes must
//! encode back to an equal one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8])| {
    let (key, value) = input;
    flotilla_presence::decode_any_record(key, value);
});
