//! Arbitrary bytes decoded as an MQTT 5.0 stream: no panic, and every packet accepted
//! round-trips through the encoder (see `mqtt_proto_fuzz::check_packet`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_proto::ProtocolVersion;

fuzz_target!(|data: &[u8]| {
    mqtt_proto_fuzz::decode_stream(data, ProtocolVersion::V5);
});
