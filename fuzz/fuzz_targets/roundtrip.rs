//! decode -> encode -> decode -> compare, for a version picked by the first byte (3.1, 3.1.1 or
//! 5.0): the packet decoded from the rest must encode to exactly `encoded_len` bytes, decode back
//! to an equal packet, re-encode to the same bytes, refuse a buffer one byte too small, and every
//! prefix of its encoding must be incomplete (see `mqtt_proto_fuzz::check_packet`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, rest)) = data.split_first() {
        mqtt_proto_fuzz::decode_one(rest, mqtt_proto_fuzz::version_from_byte(selector));
    }
});
