//! One test per rule a received packet can break, each asserting the exact `DecodeError` and the
//! MQTT 5 reason code it maps to; the encoder's refusals; and a mutation sweep showing the
//! decoder never panics and never waits for bytes a complete frame already holds.
//!
//! Section numbers: "3.1.1 §x" is MQTT 3.1.1 (OASIS, 2014), "5.0 §x" is MQTT 5.0 (OASIS, 2019).

use mqtt_proto::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Filters, Packet, PacketId,
    Properties, Property, PropertyId, ProtocolVersion, Publish, QoS, ReasonCode, ReasonCodes,
    RetainHandling, Status, SubAck, Subscribe, SubscriptionOptions, TopicError, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, Unsubscriptions, Will, decode, frame,
};

use DecodeError as E;
use ProtocolVersion::{V5, V31, V311};
use ReasonCode as R;

const MAX: usize = usize::MAX;

// ------------------------------------------------------------------------------------ helpers

/// A packet: first byte, one-byte remaining length, body.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "helper only writes one-byte lengths");
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// Concatenates byte pieces.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A length-prefixed string or binary field.
fn s(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A property list with its (one-byte) length.
fn props(p: &[u8]) -> Vec<u8> {
    assert!(p.len() < 128);
    let mut v = vec![p.len() as u8];
    v.extend_from_slice(p);
    v
}

/// A 3.1.1 CONNECT with the given flags and payload (keep alive 60).
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    pkt(
        0x10,
        &cat(&[&s(b"MQTT"), &[0x04, flags, 0x00, 0x3C], payload]),
    )
}

/// A 5.0 CONNECT with the given flags, properties (without length) and payload.
fn connect_v5(flags: u8, p: &[u8], payload: &[u8]) -> Vec<u8> {
    pkt(
        0x10,
        &cat(&[&s(b"MQTT"), &[0x05, flags, 0x00, 0x3C], &props(p), payload]),
    )
}

/// A CONNECT with any protocol name and level, no flags but clean session, client id "a".
fn connect_named(name: &[u8], level: u8) -> Vec<u8> {
    let props: &[u8] = if level == 5 { &[0x00] } else { &[] };
    pkt(
        0x10,
        &cat(&[&s(name), &[level, 0x02, 0x00, 0x3C], props, &s(b"a")]),
    )
}

/// A 5.0 PUBLISH QoS 0 to topic "t" with the given properties and payload "x".
fn publish_v5(p: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&s(b"t"), &props(p), b"x"]))
}

/// A 5.0 SUBSCRIBE (id 1) with the given properties and payload.
fn subscribe_v5(p: &[u8], payload: &[u8]) -> Vec<u8> {
    pkt(0x82, &cat(&[&[0x00, 0x01], &props(p), payload]))
}

/// A 5.0 CONNACK (accepted) with the given properties.
fn connack_v5(p: &[u8]) -> Vec<u8> {
    pkt(0x20, &cat(&[&[0x00, 0x00], &props(p)]))
}

/// Decodes and expects an error, whatever follows the packet in the stream.
fn err(v: ProtocolVersion, bytes: &[u8]) -> DecodeError {
    let e = match decode(bytes, v, MAX) {
        Err(e) => e,
        other => panic!("{bytes:02x?} in {v}: expected an error, got {other:?}"),
    };
    // More input after the packet (or a longer buffer) must not change the verdict.
    let mut more = bytes.to_vec();
    more.extend_from_slice(&[0xC0, 0x00, 0xFF, 0xFF]);
    assert_eq!(
        decode(&more, v, MAX),
        Err(e),
        "{bytes:02x?}: verdict changed with more input"
    );
    e
}

/// Asserts the exact error and its reason code.
#[track_caller]
fn assert_err(v: ProtocolVersion, bytes: &[u8], expected: DecodeError, reason: ReasonCode) {
    let e = err(v, bytes);
    assert_eq!(e, expected, "{bytes:02x?} in {v}");
    assert_eq!(e.reason_code(), reason, "{e:?}");
}

/// Asserts the bytes decode completely.
#[track_caller]
fn assert_ok(v: ProtocolVersion, bytes: &[u8]) -> Packet<'_> {
    match decode(bytes, v, MAX) {
        Ok(Status::Complete((p, n))) if n == bytes.len() => p,
        other => panic!("{bytes:02x?} in {v}: expected a packet, got {other:?}"),
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

// ------------------------------------------------------------------------------ fixed header

/// 3.1.1 §2.2.3 / 5.0 §1.5.5: the remaining length is at most four bytes. The error is decided
/// as soon as four bytes with the continuation bit are seen, before any fifth byte arrives.
#[test]
fn remaining_length_fifth_byte() {
    for v in [V31, V311, V5] {
        assert_err(
            v,
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            E::RemainingLengthTooLong,
            R::MalformedPacket,
        );
        assert_err(
            v,
            &[0xC0, 0x80, 0x80, 0x80, 0x80],
            E::RemainingLengthTooLong,
            R::MalformedPacket,
        );
    }
    assert_eq!(
        frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], MAX),
        Err(E::RemainingLengthTooLong)
    );
    // Three continuation bytes: the fourth may still end it.
    assert!(matches!(
        frame(&[0x30, 0xFF, 0xFF, 0xFF], MAX),
        Ok(Status::Incomplete(_))
    ));
    // The largest four-byte length is fine.
    let Ok(Status::Complete(f)) = frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], MAX) else {
        panic!()
    };
    assert_eq!(f.remaining_len, 268_435_455);
    assert_eq!(f.header_len, 5);
}

/// 5.0 §3.1.2.11.4 / §3.2.2.3.6: the receiver's maximum packet size counts the whole packet, and
/// the check is made from the fixed header alone, before the body arrives.
#[test]
fn packet_too_large_from_header_alone() {
    // Remaining length 128 (80 01): 131 bytes in all; only the 3 header bytes are given.
    let header = [0x30, 0x80, 0x01];
    let expected = E::PacketTooLarge {
        size: 131,
        max: 100,
    };
    assert_eq!(frame(&header, 100), Err(expected));
    assert_eq!(decode(&header, V5, 100), Err(expected));
    assert_eq!(expected.reason_code(), R::PacketTooLarge);
    // Two header bytes.
    assert_eq!(
        decode(&[0x30, 0x7F], V311, 128),
        Err(E::PacketTooLarge {
            size: 129,
            max: 128
        })
    );
    assert!(matches!(
        decode(&[0x30, 0x7F], V311, 129),
        Ok(Status::Incomplete(127))
    ));
    // Five header bytes, the largest length.
    assert_eq!(
        decode(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], V5, 1 << 20),
        Err(E::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        })
    );
    // Exactly at the limit is fine; a PINGREQ is 2 bytes.
    assert!(matches!(
        decode(&[0xC0, 0x00], V5, 2),
        Ok(Status::Complete(_))
    ));
    assert_eq!(
        decode(&[0xC0, 0x00], V5, 1),
        Err(E::PacketTooLarge { size: 2, max: 1 })
    );
}

/// 5.0 §1.5.5: "The encoded value MUST use the minimum number of bytes necessary to represent
/// the value" [MQTT-1.5.5-1], for the remaining length and for integers inside the packet.
#[test]
fn non_minimal_variable_byte_integer() {
    // Remaining length 0 written in two bytes, 3 in three.
    assert_err(
        V311,
        &[0xC0, 0x80, 0x00],
        E::InvalidVarInt,
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &[0x30, 0x83, 0x80, 0x00],
        E::InvalidVarInt,
        R::MalformedPacket,
    );
    // A property length of 0 written as 80 00 in a v5 PUBACK.
    assert_err(
        V5,
        &pkt(0x40, &[0x00, 0x01, 0x00, 0x80, 0x00]),
        E::InvalidVarInt,
        R::MalformedPacket,
    );
    // Subscription identifier 1 written as 81 00.
    assert_err(
        V5,
        &subscribe_v5(&[0x0B, 0x81, 0x00], &cat(&[&s(b"a"), &[0x00]])),
        E::InvalidVarInt,
        R::MalformedPacket,
    );
    // A five-byte property length inside a body.
    assert_err(
        V5,
        &pkt(0x40, &[0x00, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        E::InvalidVarInt,
        R::MalformedPacket,
    );
}

/// 3.1.1 §2.2.1 / 5.0 §2.1.2: packet type 0 is reserved (forbidden).
#[test]
fn packet_type_zero() {
    for v in [V31, V311, V5] {
        assert_err(
            v,
            &[0x00, 0x00],
            E::InvalidPacketType(0),
            R::MalformedPacket,
        );
        // Decided from the first byte alone.
        assert_eq!(decode(&[0x00], v, MAX), Err(E::InvalidPacketType(0)));
    }
}

/// 3.1.1 §2.2.1: type 15 is reserved before MQTT 5 (AUTH is 5.0 §3.15).
#[test]
fn auth_before_v5() {
    for v in [V31, V311] {
        assert_err(
            v,
            &[0xF0, 0x00],
            E::InvalidPacketType(15),
            R::MalformedPacket,
        );
        assert_err(
            v,
            &[0xF0, 0x02, 0x18, 0x00],
            E::InvalidPacketType(15),
            R::MalformedPacket,
        );
    }
    assert_ok(V5, &[0xF0, 0x00]);
}

/// 3.1.1 §2.2.2 / 5.0 §2.1.3: reserved flag bits must be exactly as the table says (0b0010 for
/// PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the others) [MQTT-2.2.2-1]; otherwise malformed.
/// Decided from the first byte alone.
#[test]
fn reserved_header_flags() {
    let cases: &[(u8, &[u8])] = &[
        (0x11, &[]),                                   // CONNECT
        (0x18, &[]),                                   // CONNECT
        (0x22, &[]),                                   // CONNACK
        (0x41, &[0x00, 0x01]),                         // PUBACK
        (0x58, &[0x00, 0x01]),                         // PUBREC
        (0x60, &[0x00, 0x01]),                         // PUBREL with flags 0
        (0x63, &[0x00, 0x01]),                         // PUBREL with flags 0b0011
        (0x6A, &[0x00, 0x01]), // PUBREL with DUP (see `v31_dup_on_pubrel_subscribe_unsubscribe_is_refused`)
        (0x72, &[0x00, 0x01]), // PUBCOMP
        (0x80, &[0x00, 0x01, 0x00, 0x01, b'a', 0x00]), // SUBSCRIBE with flags 0
        (0x83, &[0x00, 0x01, 0x00, 0x01, b'a', 0x00]), // SUBSCRIBE with flags 0b0011
        (0x94, &[0x00, 0x01, 0x00]), // SUBACK
        (0xA0, &[0x00, 0x01, 0x00, 0x01, b'a']), // UNSUBSCRIBE with flags 0
        (0xA6, &[0x00, 0x01, 0x00, 0x01, b'a']), // UNSUBSCRIBE with flags 0b0110
        (0xB1, &[0x00, 0x01]), // UNSUBACK
        (0xC1, &[]),           // PINGREQ with flags 1
        (0xCF, &[]),           // PINGREQ
        (0xD2, &[]),           // PINGRESP
        (0xE8, &[]),           // DISCONNECT
        (0xF4, &[]),           // AUTH
    ];
    for &(first, body) in cases {
        for v in [V31, V311, V5] {
            assert_err(
                v,
                &pkt(first, body),
                E::InvalidHeaderFlags,
                R::MalformedPacket,
            );
            assert_eq!(
                decode(&[first], v, MAX),
                Err(E::InvalidHeaderFlags),
                "{first:#04x}"
            );
        }
    }
}

/// MQTT 3.1 (IBM spec, "Fixed header", DUP flag): "This flag is set when the client or server
/// attempts to re-deliver a PUBLISH, PUBREL, SUBSCRIBE or UNSUBSCRIBE message." A 3.1 peer that
/// retries a SUBSCRIBE sends 0x8A, which 3.1.1 [MQTT-2.2.2-2] makes malformed.
///
/// The codec keeps the 3.1.1 rule for 3.1 connections too: `frame` decides on the flags before
/// a version is known (a runtime frames with it alone), and one rule keeps `frame` and `decode`
/// in agreement. 3.1 support is for CONNECT interop; such a retry is refused as malformed.
#[test]
fn v31_dup_on_pubrel_subscribe_unsubscribe_is_refused() {
    let retries: [&[u8]; 3] = [
        &[0x6A, 0x02, 0x00, 0x01],
        &[0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        &[0xAA, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
    ];
    for bytes in retries {
        assert_err(V31, bytes, E::InvalidHeaderFlags, R::MalformedPacket);
        assert_eq!(mqtt_proto::frame(bytes, MAX), Err(E::InvalidHeaderFlags));
    }
}

/// 3.1.1 §3.3.1.2 / 5.0 §3.3.1.2: "A PUBLISH Packet MUST NOT have both QoS bits set to 1
/// [MQTT-3.3.1-4]. If a Server or Client receives a PUBLISH packet which has both QoS bits set
/// to 1 it is a Malformed Packet."
#[test]
fn publish_qos_3() {
    for first in [0x36, 0x37, 0x3E, 0x3F] {
        for v in [V31, V311, V5] {
            assert_err(
                v,
                &pkt(first, &[0x00, 0x01, b't', 0x00, 0x01]),
                E::InvalidQoS,
                R::MalformedPacket,
            );
            assert_eq!(decode(&[first], v, MAX), Err(E::InvalidQoS));
        }
    }
}

/// 3.1.1 §3.3.1.1 / 5.0 §3.3.1.1: "The DUP flag MUST be set to 0 for all QoS 0 messages
/// [MQTT-3.3.1-2]."
#[test]
fn publish_dup_on_qos_0() {
    for first in [0x38, 0x39] {
        for v in [V31, V311, V5] {
            assert_err(
                v,
                &pkt(first, &[0x00, 0x01, b't']),
                E::DupWithQoS0,
                R::MalformedPacket,
            );
        }
    }
}

/// 3.1.1 §2.3.1 / 5.0 §2.2.1: packets with an identifier must use a non-zero one
/// [MQTT-2.3.1-1] / [MQTT-2.2.1-3].
#[test]
fn zero_packet_id() {
    let cases: Vec<Vec<u8>> = vec![
        pkt(0x32, &[0x00, 0x01, b't', 0x00, 0x00, b'x']), // PUBLISH QoS 1
        pkt(0x34, &[0x00, 0x01, b't', 0x00, 0x00, b'x']), // PUBLISH QoS 2
        pkt(0x40, &[0x00, 0x00]),                         // PUBACK
        pkt(0x50, &[0x00, 0x00]),                         // PUBREC
        pkt(0x62, &[0x00, 0x00]),                         // PUBREL
        pkt(0x70, &[0x00, 0x00]),                         // PUBCOMP
        pkt(0x82, &[0x00, 0x00, 0x00, 0x01, b'a', 0x00]), // SUBSCRIBE
        pkt(0x90, &[0x00, 0x00, 0x00]),                   // SUBACK
        pkt(0xA2, &[0x00, 0x00, 0x00, 0x01, b'a']),       // UNSUBSCRIBE
        pkt(0xB0, &[0x00, 0x00]),                         // UNSUBACK
    ];
    for bytes in &cases {
        for v in [V31, V311] {
            assert_err(v, bytes, E::ZeroPacketId, R::MalformedPacket);
        }
    }
    // 5.0 forms (the packet id comes before the properties).
    for bytes in [
        pkt(0x32, &[0x00, 0x01, b't', 0x00, 0x00, 0x00]),
        pkt(0x40, &[0x00, 0x00]),
        pkt(0x82, &[0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00]),
        pkt(0x90, &[0x00, 0x00, 0x00, 0x00]),
        pkt(0xA2, &[0x00, 0x00, 0x00, 0x00, 0x01, b'a']),
        pkt(0xB0, &[0x00, 0x00, 0x00, 0x00]),
    ] {
        assert_err(V5, &bytes, E::ZeroPacketId, R::MalformedPacket);
    }
}

// ---------------------------------------------------------------------------------- strings

/// 3.1.1 §1.5.3 / 5.0 §1.5.4: strings must be well-formed UTF-8 and must not hold encodings of
/// the surrogates U+D800..U+DFFF [MQTT-1.5.4-1]; otherwise the packet is malformed.
#[test]
fn invalid_utf8() {
    let bad: [&[u8]; 5] = [
        &[0xC3, 0x28],       // a two-byte lead followed by ASCII
        &[0xED, 0xA0, 0x80], // the surrogate U+D800
        &[0xC0, 0x80],       // an overlong U+0000
        &[0xFF],             // never valid
        &[b'a', 0xE2, 0x82], // truncated three-byte sequence
    ];
    for b in bad {
        for v in [V31, V311, V5] {
            let props: &[u8] = if v == V5 { &[0x00] } else { &[] };
            // In the topic of a PUBLISH.
            assert_err(
                v,
                &pkt(0x30, &cat(&[&s(b), props, b"x"])),
                E::InvalidUtf8,
                R::MalformedPacket,
            );
            // In a SUBSCRIBE filter.
            let sub = pkt(0x82, &cat(&[&[0x00, 0x01], props, &s(b), &[0x00]]));
            assert_err(v, &sub, E::InvalidUtf8, R::MalformedPacket);
        }
        // In a client id, a user name and a property string.
        assert_err(
            V311,
            &connect_v311(0x02, &s(b)),
            E::InvalidUtf8,
            R::MalformedPacket,
        );
        assert_err(
            V311,
            &connect_v311(0x82, &cat(&[&s(b"c"), &s(b)])),
            E::InvalidUtf8,
            R::MalformedPacket,
        );
        let reason_string = cat(&[&[0x1F], &s(b)]);
        assert_err(
            V5,
            &pkt(0x40, &cat(&[&[0x00, 0x01, 0x80], &props(&reason_string)])),
            E::InvalidUtf8,
            R::MalformedPacket,
        );
    }
}

/// 3.1.1 §1.5.3 / 5.0 §1.5.4: "A UTF-8 Encoded String MUST NOT include an encoding of the null
/// character U+0000" [MQTT-1.5.4-2].
#[test]
fn null_character() {
    for v in [V31, V311, V5] {
        let props: &[u8] = if v == V5 { &[0x00] } else { &[] };
        assert_err(
            v,
            &pkt(0x30, &cat(&[&s(b"a\0b"), props])),
            E::NullCharacter,
            R::MalformedPacket,
        );
    }
    assert_err(
        V311,
        &connect_v311(0x02, &s(b"a\0")),
        E::NullCharacter,
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &connect_v5(0x02, &[], &s(b"\0")),
        E::NullCharacter,
        R::MalformedPacket,
    );
    let user = cat(&[&[0x26], &s(b"k"), &s(b"v\0")]);
    assert_err(
        V5,
        &connect_v5(0x02, &user, &s(b"c")),
        E::NullCharacter,
        R::MalformedPacket,
    );
    // U+0000 is fine in binary data (password, payload).
    assert_ok(V5, &connect_v5(0x42, &[], &cat(&[&s(b"c"), &s(b"\0")])));
}

// ----------------------------------------------------------------------------------- topics

/// 3.1.1 §3.3.2.1 / 5.0 §3.3.2.1: "The Topic Name in the PUBLISH packet MUST NOT contain
/// wildcard characters" [MQTT-3.3.2-2].
#[test]
fn wildcard_in_publish_topic() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"+", b"a+b"] {
        for v in [V31, V311, V5] {
            let props: &[u8] = if v == V5 { &[0x00] } else { &[] };
            assert_err(
                v,
                &pkt(0x30, &cat(&[&s(topic), props, b"x"])),
                E::InvalidTopicName(TopicError::WildcardInName),
                R::TopicNameInvalid,
            );
        }
    }
}

/// 3.1.1 §3.1.3.2 / 5.0 §3.1.3.3: the will topic is a topic name, so no wildcards.
#[test]
fn wildcard_in_will_topic() {
    let payload = cat(&[&s(b"c"), &s(b"a/#"), &s(b"")]);
    assert_err(
        V311,
        &connect_v311(0x06, &payload),
        E::InvalidTopicName(TopicError::WildcardInName),
        R::TopicNameInvalid,
    );
    let payload = cat(&[&s(b"c"), &[0x00], &s(b"+"), &s(b"")]);
    assert_err(
        V5,
        &connect_v5(0x06, &[], &payload),
        E::InvalidTopicName(TopicError::WildcardInName),
        R::TopicNameInvalid,
    );
    // An empty will topic is not a topic name either (§4.7.3: at least one character).
    let payload = cat(&[&s(b"c"), &s(b""), &s(b"")]);
    assert_err(
        V311,
        &connect_v311(0x06, &payload),
        E::InvalidTopicName(TopicError::Empty),
        R::TopicNameInvalid,
    );
}

/// 3.1.1 §4.7.1 / 5.0 §4.7.1: '#' only as the whole last level, '+' only as a whole level
/// [MQTT-4.7.1-1], [MQTT-4.7.1-2]; §4.7.3: at least one character [MQTT-4.7.3-1].
#[test]
fn malformed_topic_filters() {
    let cases: [(&[u8], TopicError); 5] = [
        (b"a/#/b", TopicError::InvalidWildcard),
        (b"a+", TopicError::InvalidWildcard),
        (b"#a", TopicError::InvalidWildcard),
        (b"a/b#", TopicError::InvalidWildcard),
        (b"", TopicError::Empty),
    ];
    for (f, te) in cases {
        for v in [V31, V311, V5] {
            let props: &[u8] = if v == V5 { &[0x00] } else { &[] };
            let sub = pkt(0x82, &cat(&[&[0x00, 0x01], props, &s(f), &[0x01]]));
            assert_err(v, &sub, E::InvalidTopicFilter(te), R::TopicFilterInvalid);
            let unsub = pkt(0xA2, &cat(&[&[0x00, 0x01], props, &s(f)]));
            assert_err(v, &unsub, E::InvalidTopicFilter(te), R::TopicFilterInvalid);
            // A bad filter after a good one.
            let sub = pkt(
                0x82,
                &cat(&[&[0x00, 0x01], props, &s(b"ok"), &[0x00], &s(f), &[0x00]]),
            );
            assert_err(v, &sub, E::InvalidTopicFilter(te), R::TopicFilterInvalid);
        }
    }
    // 5.0 §4.8.2: a shared subscription needs a non-empty group without wildcards and a filter.
    for f in [&b"$share//a"[..], b"$share/g", b"$share/+/a"] {
        let sub = subscribe_v5(&[], &cat(&[&s(f), &[0x00]]));
        assert_err(
            V5,
            &sub,
            E::InvalidTopicFilter(TopicError::InvalidSharedSubscription),
            R::TopicFilterInvalid,
        );
    }
}

/// 3.1.1 §3.8.3 / §3.10.3, 5.0 §3.8.3 / §3.10.3: at least one filter; "A SUBSCRIBE packet with
/// no Payload is a Protocol Error."
#[test]
fn no_topic_filters() {
    for v in [V31, V311] {
        assert_err(
            v,
            &[0x82, 0x02, 0x00, 0x01],
            E::NoTopicFilters,
            R::ProtocolError,
        );
        assert_err(
            v,
            &[0xA2, 0x02, 0x00, 0x01],
            E::NoTopicFilters,
            R::ProtocolError,
        );
    }
    assert_err(
        V5,
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        R::ProtocolError,
    );
    assert_err(
        V5,
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        E::NoTopicFilters,
        R::ProtocolError,
    );
}

// ------------------------------------------------------------------- subscription options

/// 3.1.1 §3.8.3.1: "The Server MUST treat a SUBSCRIBE packet as malformed ... if any of
/// Reserved bits in the payload are non-zero, or QoS is not 0, 1 or 2" [MQTT-3.8.3-4].
#[test]
fn subscription_options_reserved_bits_v3() {
    for b in [0x04u8, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFC, 0x2D] {
        for v in [V31, V311] {
            let sub = pkt(0x82, &cat(&[&[0x00, 0x01], &s(b"a"), &[b]]));
            assert_err(v, &sub, E::InvalidSubscriptionOptions, R::MalformedPacket);
        }
    }
    for v in [V31, V311] {
        let sub = pkt(0x82, &cat(&[&[0x00, 0x01], &s(b"a"), &[0x03]]));
        assert_err(v, &sub, E::InvalidQoS, R::MalformedPacket);
    }
}

/// 5.0 §3.8.3.1: "The Server MUST treat a SUBSCRIBE packet as malformed if any of Reserved bits
/// in the Payload are non-zero [MQTT-3.8.3-5]" (bits 6 and 7).
#[test]
fn subscription_options_reserved_bits_v5() {
    for b in [0x40u8, 0x80, 0xC0, 0x41] {
        let sub = subscribe_v5(&[], &cat(&[&s(b"a"), &[b]]));
        assert_err(V5, &sub, E::InvalidSubscriptionOptions, R::MalformedPacket);
    }
    // Every option bit that 5.0 defines is accepted.
    assert_ok(V5, &subscribe_v5(&[], &cat(&[&s(b"a"), &[0x2E]])));
}

/// 5.0 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
///
/// CODEC BUG: the decoder reports this as `InvalidSubscriptionOptions`, which maps to
/// Malformed Packet (0x81); the spec calls it a Protocol Error (0x82).
#[test]
fn subscription_retain_handling_3_is_protocol_error() {
    let sub = subscribe_v5(&[], &cat(&[&s(b"a"), &[0x30]]));
    let e = err(V5, &sub);
    assert_eq!(e.reason_code(), R::ProtocolError, "{e:?}");
}

/// 5.0 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
///
/// CODEC BUG: the decoder reports `InvalidQoS`, which maps to Malformed Packet (0x81) — right
/// for 3.1.1 [MQTT-3.8.3-4] but not for 5.0, where it is a Protocol Error (0x82).
#[test]
fn subscription_qos_3_is_protocol_error_in_v5() {
    let sub = subscribe_v5(&[], &cat(&[&s(b"a"), &[0x03]]));
    let e = err(V5, &sub);
    assert_eq!(e.reason_code(), R::ProtocolError, "{e:?}");
}

/// 5.0 §3.8.3.1: "It is a Protocol Error to set the No Local bit to 1 on a Shared
/// Subscription [MQTT-3.8.3-4]."
#[test]
fn shared_subscription_with_no_local() {
    let sub = subscribe_v5(&[], &cat(&[&s(b"$share/g/a"), &[0x04]]));
    assert_err(V5, &sub, E::SharedSubscriptionNoLocal, R::ProtocolError);
    // Without no local it is fine, and no local on an ordinary filter too.
    assert_ok(V5, &subscribe_v5(&[], &cat(&[&s(b"$share/g/a"), &[0x01]])));
    assert_ok(V5, &subscribe_v5(&[], &cat(&[&s(b"$sharex/a"), &[0x04]])));
}

// ------------------------------------------------------------------------------- properties

/// 5.0 §2.2.2.2 and each property's section: "It is a Protocol Error to include the ...
/// more than once."
#[test]
fn duplicate_property() {
    let twice = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    assert_err(
        V5,
        &connect_v5(0x02, &twice, &s(b"c")),
        E::DuplicateProperty(PropertyId::SessionExpiryInterval),
        R::ProtocolError,
    );
    // Two topic aliases in a PUBLISH.
    assert_err(
        V5,
        &publish_v5(&[0x23, 0x00, 0x01, 0x23, 0x00, 0x02]),
        E::DuplicateProperty(PropertyId::TopicAlias),
        R::ProtocolError,
    );
    // Two reason strings in a PUBACK.
    let rs = cat(&[&[0x1F], &s(b"a"), &[0x1F], &s(b"b")]);
    assert_err(
        V5,
        &pkt(0x40, &cat(&[&[0x00, 0x01, 0x80], &props(&rs)])),
        E::DuplicateProperty(PropertyId::ReasonString),
        R::ProtocolError,
    );
    // Two authentication methods in an AUTH.
    let am = cat(&[&[0x15], &s(b"a"), &[0x15], &s(b"a")]);
    assert_err(
        V5,
        &pkt(0xF0, &cat(&[&[0x18], &props(&am)])),
        E::DuplicateProperty(PropertyId::AuthenticationMethod),
        R::ProtocolError,
    );
    // Two content types in the will properties.
    let ct = cat(&[&[0x03], &s(b"a"), &[0x03], &s(b"b")]);
    let payload = cat(&[&s(b"c"), &props(&ct), &s(b"w"), &s(b"")]);
    assert_err(
        V5,
        &connect_v5(0x06, &[], &payload),
        E::DuplicateProperty(PropertyId::ContentType),
        R::ProtocolError,
    );
    // The same property once in CONNECT and once in the will is not a duplicate.
    let up = cat(&[&[0x26], &s(b"k"), &s(b"v")]);
    let payload = cat(&[&s(b"c"), &props(&up), &s(b"w"), &s(b"")]);
    assert_ok(V5, &connect_v5(0x06, &up, &payload));
}

/// 5.0 §3.1.2.11.8 and others: "The User Property is allowed to appear multiple times ...
/// The same name is allowed to appear more than once."
#[test]
fn repeated_user_property_is_allowed() {
    let up = cat(&[&[0x26], &s(b"k"), &s(b"v"), &[0x26], &s(b"k"), &s(b"v")]);
    let bytes = connect_v5(0x02, &up, &s(b"c"));
    let Packet::Connect(c) = assert_ok(V5, &bytes) else {
        panic!()
    };
    assert_eq!(c.properties.user_properties().count(), 2);
    assert_ok(V5, &publish_v5(&up));
    assert_ok(V5, &pkt(0xE0, &cat(&[&[0x00], &props(&up)])));
}

/// 5.0 §3.3.2.3.8: a PUBLISH may hold several subscription identifiers; 5.0 §3.8.2.1.2: "It is
/// a Protocol Error to include the Subscription Identifier more than once" in SUBSCRIBE.
#[test]
fn subscription_identifier_repeats_only_in_publish() {
    let two = [0x0B, 0x01, 0x0B, 0x02];
    let bytes = publish_v5(&two);
    let Packet::Publish(p) = assert_ok(V5, &bytes) else {
        panic!()
    };
    assert_eq!(
        p.properties.subscription_identifiers().collect::<Vec<_>>(),
        [1, 2]
    );
    assert_err(
        V5,
        &subscribe_v5(&two, &cat(&[&s(b"a"), &[0x00]])),
        E::DuplicateProperty(PropertyId::SubscriptionIdentifier),
        R::ProtocolError,
    );
}

/// 5.0 §2.2.2.2: "A Control Packet which contains an Identifier which is not valid for its
/// packet type ... is a Malformed Packet."
#[test]
fn property_not_allowed_in_packet() {
    // Topic alias in CONNECT.
    assert_err(
        V5,
        &connect_v5(0x02, &[0x23, 0x00, 0x01], &s(b"c")),
        E::PropertyNotAllowed(PropertyId::TopicAlias),
        R::MalformedPacket,
    );
    // Session expiry in PUBLISH.
    assert_err(
        V5,
        &publish_v5(&[0x11, 0, 0, 0, 1]),
        E::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
        R::MalformedPacket,
    );
    // Will delay among the CONNECT properties (it belongs in the will).
    assert_err(
        V5,
        &connect_v5(0x02, &[0x18, 0, 0, 0, 1], &s(b"c")),
        E::PropertyNotAllowed(PropertyId::WillDelayInterval),
        R::MalformedPacket,
    );
    // Session expiry in the will properties.
    let payload = cat(&[&s(b"c"), &props(&[0x11, 0, 0, 0, 1]), &s(b"w"), &s(b"")]);
    assert_err(
        V5,
        &connect_v5(0x06, &[], &payload),
        E::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
        R::MalformedPacket,
    );
    // Subscription identifier in CONNACK.
    assert_err(
        V5,
        &connack_v5(&[0x0B, 0x01]),
        E::PropertyNotAllowed(PropertyId::SubscriptionIdentifier),
        R::MalformedPacket,
    );
    // Reason string in PUBLISH; server reference in AUTH; authentication method in DISCONNECT.
    assert_err(
        V5,
        &publish_v5(&cat(&[&[0x1F], &s(b"r")])),
        E::PropertyNotAllowed(PropertyId::ReasonString),
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &pkt(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x1C], &s(b"s")]))])),
        E::PropertyNotAllowed(PropertyId::ServerReference),
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &pkt(0xE0, &cat(&[&[0x00], &props(&cat(&[&[0x15], &s(b"m")]))])),
        E::PropertyNotAllowed(PropertyId::AuthenticationMethod),
        R::MalformedPacket,
    );
    // Subscription identifier in UNSUBSCRIBE.
    assert_err(
        V5,
        &pkt(
            0xA2,
            &cat(&[&[0x00, 0x01], &props(&[0x0B, 0x01]), &s(b"a")]),
        ),
        E::PropertyNotAllowed(PropertyId::SubscriptionIdentifier),
        R::MalformedPacket,
    );
}

/// 5.0 §2.2.2.2: an identifier that names no property is not valid for any packet.
#[test]
fn unknown_property_id() {
    for id in [0x00u8, 0x7F, 0x04, 0x0A, 0x2B] {
        assert_err(
            V5,
            &publish_v5(&[id, 0x00]),
            E::UnknownProperty(id),
            R::MalformedPacket,
        );
    }
    // A two-byte identifier (128).
    assert_err(
        V5,
        &publish_v5(&[0x80, 0x01, 0x00]),
        E::UnknownProperty(128),
        R::MalformedPacket,
    );
}

/// 5.0: values each property's section forbids.
#[test]
fn invalid_property_values() {
    use PropertyId as P;
    // §3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value more than once
    // or for it to have the value 0."
    assert_err(
        V5,
        &connect_v5(0x02, &[0x21, 0x00, 0x00], &s(b"c")),
        E::InvalidPropertyValue(P::ReceiveMaximum),
        R::ProtocolError,
    );
    assert_err(
        V5,
        &connack_v5(&[0x21, 0x00, 0x00]),
        E::InvalidPropertyValue(P::ReceiveMaximum),
        R::ProtocolError,
    );
    // §3.3.2.3.4: "A Topic Alias of 0 is not permitted." (See the report on its reason code.)
    assert_err(
        V5,
        &publish_v5(&[0x23, 0x00, 0x00]),
        E::InvalidPropertyValue(P::TopicAlias),
        // MQTT 5 section 3.3.2.3.4: an alias of 0 is answered with Topic Alias invalid.
        R::TopicAliasInvalid,
    );
    // §3.1.2.11.4: "It is a Protocol Error to include the Maximum Packet Size more than once,
    // or for the value to be set to zero."
    assert_err(
        V5,
        &connect_v5(0x02, &[0x27, 0, 0, 0, 0], &s(b"c")),
        E::InvalidPropertyValue(P::MaximumPacketSize),
        R::ProtocolError,
    );
    assert_err(
        V5,
        &connack_v5(&[0x27, 0, 0, 0, 0]),
        E::InvalidPropertyValue(P::MaximumPacketSize),
        R::ProtocolError,
    );
    // §3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value of 0."
    assert_err(
        V5,
        &subscribe_v5(&[0x0B, 0x00], &cat(&[&s(b"a"), &[0x00]])),
        E::InvalidPropertyValue(P::SubscriptionIdentifier),
        R::ProtocolError,
    );
    assert_err(
        V5,
        &publish_v5(&[0x0B, 0x00]),
        E::InvalidPropertyValue(P::SubscriptionIdentifier),
        R::ProtocolError,
    );
    // §3.3.2.3.2: payload format indicator is 0 or 1.
    assert_err(
        V5,
        &publish_v5(&[0x01, 0x02]),
        E::InvalidPropertyValue(P::PayloadFormatIndicator),
        R::ProtocolError,
    );
    // §3.2.2.3.4: "It is a Protocol Error to include Maximum QoS more than once, or to have a
    // value other than 0 or 1."
    assert_err(
        V5,
        &connack_v5(&[0x24, 0x02]),
        E::InvalidPropertyValue(P::MaximumQoS),
        R::ProtocolError,
    );
    // §3.1.2.11.7: "It is a Protocol Error to include Request Problem Information more than
    // once, or to have a value other than 0 or 1." Same for §3.1.2.11.6 and §3.2.2.3.5.
    assert_err(
        V5,
        &connect_v5(0x02, &[0x17, 0x02], &s(b"c")),
        E::InvalidPropertyValue(P::RequestProblemInformation),
        R::ProtocolError,
    );
    assert_err(
        V5,
        &connect_v5(0x02, &[0x19, 0x02], &s(b"c")),
        E::InvalidPropertyValue(P::RequestResponseInformation),
        R::ProtocolError,
    );
    assert_err(
        V5,
        &connack_v5(&[0x25, 0x02]),
        E::InvalidPropertyValue(P::RetainAvailable),
        R::ProtocolError,
    );
    for id in [0x28u8, 0x29, 0x2A] {
        assert_err(
            V5,
            &connack_v5(&[id, 0xFF]),
            E::InvalidPropertyValue(PropertyId::from_u8(id).unwrap()),
            R::ProtocolError,
        );
    }
    // §3.3.2.3.5: "The Response Topic MUST NOT contain wildcard characters [MQTT-3.3.2-14]."
    assert_err(
        V5,
        &publish_v5(&cat(&[&[0x08], &s(b"a/#")])),
        E::InvalidPropertyValue(P::ResponseTopic),
        R::ProtocolError,
    );
    let payload = cat(&[
        &s(b"c"),
        &props(&cat(&[&[0x08], &s(b"+")])),
        &s(b"w"),
        &s(b""),
    ]);
    assert_err(
        V5,
        &connect_v5(0x06, &[], &payload),
        E::InvalidPropertyValue(P::ResponseTopic),
        R::ProtocolError,
    );
}

/// 5.0 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is no
/// Authentication Method."
///
/// CODEC BUG (missing check): the decoder accepts this CONNECT.
#[test]
fn connect_authentication_data_without_method() {
    let p = connect_v5(0x02, &[0x16, 0x00, 0x01, 0xAA], &s(b"c"));
    let e = err(V5, &p);
    assert_eq!(e.reason_code(), R::ProtocolError, "{e:?}");
}

// ---------------------------------------------------------------------------------- CONNECT

/// 3.1.1 §3.1.2.1: the protocol name is "MQTT" [MQTT-3.1.2-1]; 3.1 used "MQIsdp". 5.0
/// §3.1.2.2: an unsupported level may be answered with 0x84 Unsupported Protocol Version.
#[test]
fn connect_protocol_name_and_level() {
    for name in [&b"MQTX"[..], b"mqtt", b"MQTT\0", b"", b"MQIsdpX"] {
        assert_err(
            V5,
            &connect_named(name, 4),
            E::InvalidProtocolName,
            R::UnsupportedProtocolVersion,
        );
    }
    for level in [0u8, 1, 2, 6, 0x84, 0xFF] {
        assert_err(
            V311,
            &connect_named(b"MQTT", level),
            E::UnsupportedProtocolLevel(level),
            R::UnsupportedProtocolVersion,
        );
    }
    // The name must go with the level.
    for (name, level) in [(&b"MQIsdp"[..], 4u8), (b"MQIsdp", 5), (b"MQTT", 3)] {
        assert_err(
            V311,
            &connect_named(name, level),
            E::ProtocolNameLevelMismatch,
            R::UnsupportedProtocolVersion,
        );
    }
    // The CONNECT decides its own version, whatever the connection's version argument says.
    for v in [V31, V311, V5] {
        for (name, level, expected) in [
            (&b"MQIsdp"[..], 3u8, V31),
            (b"MQTT", 4, V311),
            (b"MQTT", 5, V5),
        ] {
            let bytes = connect_named(name, level);
            let Packet::Connect(c) = assert_ok(v, &bytes) else {
                panic!()
            };
            assert_eq!(c.protocol, expected);
        }
    }
}

/// 3.1.1 §3.1.2.3 / 5.0 §3.1.2.3: "The Server MUST validate that the reserved flag in the
/// CONNECT packet is set to 0 [MQTT-3.1.2-3]" — otherwise malformed.
#[test]
fn connect_reserved_flag() {
    assert_err(
        V311,
        &connect_v311(0x03, &s(b"c")),
        E::ConnectReservedFlag,
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &connect_v5(0x01, &[], &s(b"c")),
        E::ConnectReservedFlag,
        R::MalformedPacket,
    );
}

/// 3.1.1 §3.1.2.6 / §3.1.2.7 (5.0 same sections): "If the Will Flag is set to 0, then the Will
/// QoS MUST be set to 0" [MQTT-3.1.2-13], "... Will Retain MUST be set to 0" [MQTT-3.1.2-15];
/// "It MUST NOT be 3" [MQTT-3.1.2-14].
#[test]
fn connect_will_flags() {
    for flags in [0x0Au8, 0x12, 0x1A, 0x22, 0x3A] {
        assert_err(
            V311,
            &connect_v311(flags, &s(b"c")),
            E::InvalidWillFlags,
            R::MalformedPacket,
        );
        assert_err(
            V5,
            &connect_v5(flags, &[], &s(b"c")),
            E::InvalidWillFlags,
            R::MalformedPacket,
        );
    }
    // Will flag with QoS 3.
    let payload = cat(&[&s(b"c"), &s(b"w"), &s(b"")]);
    assert_err(
        V311,
        &connect_v311(0x1E, &payload),
        E::InvalidWillFlags,
        R::MalformedPacket,
    );
}

/// 3.1.1 §3.1.2.9: "If the User Name Flag is set to 0, the Password Flag MUST be set to 0
/// [MQTT-3.1.2-22]." 5.0 §3.1.2.9 drops that rule.
#[test]
fn connect_password_without_username() {
    let payload = cat(&[&s(b"c"), &s(b"pw")]);
    assert_err(
        V311,
        &connect_v311(0x42, &payload),
        E::PasswordWithoutUsername,
        R::MalformedPacket,
    );
    let bytes = connect_v5(0x42, &[], &payload);
    let Packet::Connect(c) = assert_ok(V5, &bytes) else {
        panic!()
    };
    assert_eq!((c.username, c.password), (None, Some(&b"pw"[..])));
}

/// The flags promise fields the payload does not have: a field runs past the end.
#[test]
fn connect_missing_payload_fields() {
    // User name flag without a user name.
    assert_err(
        V311,
        &connect_v311(0x82, &s(b"c")),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // Will flag without will topic and message.
    assert_err(
        V311,
        &connect_v311(0x06, &s(b"c")),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // No client id at all.
    assert_err(
        V311,
        &connect_v311(0x02, &[]),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // v5 without the property length.
    assert_err(
        V5,
        &pkt(0x10, &cat(&[&s(b"MQTT"), &[0x05, 0x02, 0x00, 0x3C]])),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
}

// ---------------------------------------------------------------------------------- CONNACK

/// 3.1.1 §3.2.2.1: "Bits 7-1 are reserved and MUST be set to 0." 5.0 §3.2.2.1 likewise
/// [MQTT-3.2.2-1].
#[test]
fn connack_reserved_flags() {
    for b in [0x02u8, 0x80, 0xFE, 0x03] {
        for v in [V31, V311] {
            assert_err(
                v,
                &[0x20, 0x02, b, 0x00],
                E::InvalidConnAckFlags,
                R::MalformedPacket,
            );
        }
        assert_err(
            V5,
            &[0x20, 0x03, b, 0x00, 0x00],
            E::InvalidConnAckFlags,
            R::MalformedPacket,
        );
    }
}

/// 3.1.1 §3.2.2.2: "If a server sends a CONNACK packet containing a non-zero return code it MUST
/// set Session Present to 0 [MQTT-3.2.2-4]." 5.0 §3.2.2.1.1 [MQTT-3.2.2-6] likewise.
#[test]
fn connack_session_present_with_refusal() {
    for code in 1..=5u8 {
        assert_err(
            V311,
            &[0x20, 0x02, 0x01, code],
            E::SessionPresentOnRefusal,
            R::ProtocolError,
        );
    }
    assert_err(
        V5,
        &[0x20, 0x03, 0x01, 0x87, 0x00],
        E::SessionPresentOnRefusal,
        R::ProtocolError,
    );
}

/// 3.1.1 §3.2.2.3: return codes 6-255 are reserved. 5.0 §3.2.2.2 lists the CONNACK codes.
#[test]
fn connack_unknown_return_code() {
    for code in [6u8, 0x80, 0xFF] {
        for v in [V31, V311] {
            assert_err(
                v,
                &[0x20, 0x02, 0x00, code],
                E::InvalidReasonCode(code),
                R::MalformedPacket,
            );
        }
    }
    for code in [
        0x01u8, 0x04, 0x10, 0x18, 0x8B, 0x8E, 0x8F, 0x91, 0x9E, 0xA2, 0xFF,
    ] {
        assert_err(
            V5,
            &[0x20, 0x03, 0x00, code, 0x00],
            E::InvalidReasonCode(code),
            R::MalformedPacket,
        );
    }
}

// ------------------------------------------------------------------------------ reason codes

/// 5.0 §3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1, §3.15.2.1: each
/// packet has its own list of reason codes.
#[test]
fn reason_code_not_valid_for_packet() {
    let cases: &[(u8, &[u8], u8)] = &[
        (0x40, &[0x00, 0x01], 0x04), // PUBACK: disconnect with will
        (0x40, &[0x00, 0x01], 0x92), // PUBACK: packet id not found (a PUBREL/PUBCOMP code)
        (0x40, &[0x00, 0x01], 0x03), // PUBACK: not a reason code at all
        (0x50, &[0x00, 0x01], 0x92), // PUBREC
        (0x50, &[0x00, 0x01], 0x81), // PUBREC: malformed packet
        (0x62, &[0x00, 0x01], 0x10), // PUBREL: no matching subscribers
        (0x62, &[0x00, 0x01], 0x80), // PUBREL: unspecified error
        (0x70, &[0x00, 0x01], 0x87), // PUBCOMP
        (0xE0, &[], 0x18),           // DISCONNECT: continue authentication
        (0xE0, &[], 0x01),           // DISCONNECT: granted QoS 1
        (0xE0, &[], 0x84),           // DISCONNECT: unsupported protocol version
        (0xE0, &[], 0x05),           // DISCONNECT: not a reason code
        (0xF0, &[], 0x80),           // AUTH: unspecified error
        (0xF0, &[], 0x04),           // AUTH
    ];
    for &(first, head, code) in cases {
        let bytes = pkt(first, &cat(&[head, &[code]]));
        assert_err(V5, &bytes, E::InvalidReasonCode(code), R::MalformedPacket);
        // Also with a property length after it.
        let bytes = pkt(first, &cat(&[head, &[code, 0x00]]));
        assert_err(V5, &bytes, E::InvalidReasonCode(code), R::MalformedPacket);
    }
    // UNSUBACK: granted QoS 1 is a SUBACK code; SUBACK: no subscription existed is an UNSUBACK
    // code.
    assert_err(
        V5,
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01],
        E::InvalidReasonCode(0x01),
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &[0xB0, 0x05, 0x00, 0x01, 0x00, 0x00, 0x02],
        E::InvalidReasonCode(0x02),
        R::MalformedPacket,
    );
    for code in [0x11u8, 0x03, 0x81] {
        assert_err(
            V5,
            &[0x90, 0x04, 0x00, 0x01, 0x00, code],
            E::InvalidReasonCode(code),
            R::MalformedPacket,
        );
    }
    // 0x92 is fine in PUBREL and PUBCOMP.
    assert_ok(V5, &[0x62, 0x03, 0x00, 0x01, 0x92]);
    assert_ok(V5, &[0x70, 0x03, 0x00, 0x01, 0x92]);
}

/// 3.1.1 §3.9.3: "SUBACK return codes other than 0x00, 0x01, 0x02 and 0x80 are reserved and
/// MUST NOT be used [MQTT-3.9.3-2]."
#[test]
fn suback_v3_return_codes() {
    for v in [V31, V311] {
        for code in [0x00u8, 0x01, 0x02, 0x80] {
            assert_ok(v, &[0x90, 0x03, 0x00, 0x01, code]);
        }
        for code in [0x03u8, 0x81, 0x83, 0x87, 0xFF] {
            assert_err(
                v,
                &[0x90, 0x03, 0x00, 0x01, code],
                E::InvalidReasonCode(code),
                R::MalformedPacket,
            );
        }
        // A bad code after good ones.
        assert_err(
            v,
            &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x03],
            E::InvalidReasonCode(0x03),
            R::MalformedPacket,
        );
    }
}

// ---------------------------------------------------------------------------------- PUBLISH

/// 5.0 §3.3.2.3.4: "It is a Protocol Error if the Topic Name is zero length and there is no
/// Topic Alias." 3.1.1 §4.7.3: "All Topic Names and Topic Filters MUST be at least one
/// character long [MQTT-4.7.3-1]."
#[test]
fn publish_empty_topic() {
    assert_err(
        V5,
        &pkt(0x30, &[0x00, 0x00, 0x00, b'x']),
        E::MissingTopic,
        R::ProtocolError,
    );
    // Other properties do not stand in for the alias.
    assert_err(
        V5,
        &pkt(0x30, &[0x00, 0x00, 0x02, 0x01, 0x01, b'x']),
        E::MissingTopic,
        R::ProtocolError,
    );
    for v in [V31, V311] {
        assert_err(
            v,
            &pkt(0x30, &[0x00, 0x00, b'x']),
            E::InvalidTopicName(TopicError::Empty),
            R::TopicNameInvalid,
        );
    }
}

// ------------------------------------------------------------------------- lengths and ends

/// A field longer than what the remaining length leaves is malformed — not incomplete, even
/// with more bytes (the next packet) in the buffer (ARCHITECTURE.md, the core's rule 6).
#[test]
fn field_past_end_of_frame() {
    // PUBLISH whose topic length says 10 while the frame holds 3 bytes of it.
    let bytes = [0x30, 0x05, 0x00, 0x0A, b'a', b'b', b'c'];
    for v in [V31, V311, V5] {
        assert_err(v, &bytes, E::UnexpectedEnd, R::MalformedPacket);
        // Even if the buffer holds the 7 missing bytes beyond the frame.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"defghij");
        assert_eq!(decode(&longer, v, MAX), Err(E::UnexpectedEnd));
    }
    // QoS 1 PUBLISH without room for its packet id.
    assert_err(
        V311,
        &[0x32, 0x04, 0x00, 0x01, b't', 0x00],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // SUBSCRIBE filter without its options byte.
    assert_err(
        V311,
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // One byte of packet id.
    assert_err(
        V311,
        &[0x40, 0x01, 0x00],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // CONNACK with one byte; v5 CONNACK without its property length.
    assert_err(
        V311,
        &[0x20, 0x01, 0x00],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &[0x20, 0x02, 0x00, 0x00],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // v5 PUBLISH without its property length.
    assert_err(
        V5,
        &[0x30, 0x03, 0x00, 0x01, b't'],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // SUBACK with no reason code.
    assert_err(
        V311,
        &[0x90, 0x02, 0x00, 0x01],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
}

/// Bytes left after the last field: the remaining length disagrees with the packet's layout.
#[test]
fn trailing_bytes() {
    for v in [V31, V311, V5] {
        assert_err(v, &[0xC0, 0x01, 0x00], E::TrailingBytes, R::MalformedPacket);
        assert_err(v, &[0xD0, 0x01, 0x00], E::TrailingBytes, R::MalformedPacket);
    }
    for v in [V31, V311] {
        // 3.1.1 §3.4.1: the PUBACK remaining length is 2; likewise PUBREL §3.6.1, UNSUBACK §3.11.1,
        // DISCONNECT §3.14.1 (0) and CONNACK §3.2.1 (2).
        assert_err(
            v,
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes,
            R::MalformedPacket,
        );
        assert_err(
            v,
            &[0x62, 0x03, 0x00, 0x01, 0x92],
            E::TrailingBytes,
            R::MalformedPacket,
        );
        assert_err(
            v,
            &[0xB0, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes,
            R::MalformedPacket,
        );
        assert_err(v, &[0xE0, 0x01, 0x00], E::TrailingBytes, R::MalformedPacket);
        assert_err(
            v,
            &[0x20, 0x03, 0x00, 0x00, 0x00],
            E::TrailingBytes,
            R::MalformedPacket,
        );
    }
    // A CONNECT with a byte after the client id.
    assert_err(
        V311,
        &connect_v311(0x02, &cat(&[&s(b"c"), &[0x00]])),
        E::TrailingBytes,
        R::MalformedPacket,
    );
    // v5 PUBACK whose property length stops short of the frame's end.
    assert_err(
        V5,
        &[0x40, 0x06, 0x00, 0x01, 0x00, 0x00, 0xFF, 0xFF],
        E::TrailingBytes,
        R::MalformedPacket,
    );
    // v5 DISCONNECT and AUTH likewise.
    assert_err(
        V5,
        &[0xE0, 0x03, 0x00, 0x00, 0x00],
        E::TrailingBytes,
        R::MalformedPacket,
    );
    assert_err(
        V5,
        &[0xF0, 0x03, 0x18, 0x00, 0x00],
        E::TrailingBytes,
        R::MalformedPacket,
    );
}

/// A property cut short inside the frame, or a property length running past the frame.
#[test]
fn truncated_property() {
    // Property length 3: reason string 1F, then a string length of 5 with no bytes.
    assert_err(
        V5,
        &[0x40, 0x07, 0x00, 0x01, 0x80, 0x03, 0x1F, 0x00, 0x05],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // Property length 3: session expiry needs 4 value bytes, has 2.
    assert_err(
        V5,
        &connect_v5(0x02, &[0x11, 0x00, 0x00], &s(b"c")),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // Property length 9 in a frame with 1 byte left.
    assert_err(
        V5,
        &[0x40, 0x05, 0x00, 0x01, 0x80, 0x09, 0x1F],
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // A user property with its name but no value.
    let up = cat(&[&[0x26], &s(b"k")]);
    assert_err(V5, &publish_v5(&up), E::UnexpectedEnd, R::MalformedPacket);
    // A subscription identifier whose variable byte integer is cut by the property length.
    assert_err(
        V5,
        &publish_v5(&[0x0B, 0x80]),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
    // Property id alone.
    assert_err(
        V5,
        &publish_v5(&[0x02]),
        E::UnexpectedEnd,
        R::MalformedPacket,
    );
}

/// Every decode error maps to the reason code the tests above expect, and prints something.
#[test]
fn display_is_not_empty() {
    let errors = [
        E::RemainingLengthTooLong,
        E::PacketTooLarge { size: 2, max: 1 },
        E::InvalidPacketType(0),
        E::InvalidHeaderFlags,
        E::InvalidQoS,
        E::DupWithQoS0,
        E::ZeroPacketId,
        E::UnexpectedEnd,
        E::TrailingBytes,
        E::InvalidUtf8,
        E::NullCharacter,
        E::InvalidVarInt,
        E::InvalidProtocolName,
        E::UnsupportedProtocolLevel(9),
        E::ProtocolNameLevelMismatch,
        E::ConnectReservedFlag,
        E::InvalidWillFlags,
        E::PasswordWithoutUsername,
        E::InvalidConnAckFlags,
        E::SessionPresentOnRefusal,
        E::InvalidReasonCode(3),
        E::UnknownProperty(0),
        E::PropertyNotAllowed(PropertyId::TopicAlias),
        E::DuplicateProperty(PropertyId::TopicAlias),
        E::InvalidPropertyValue(PropertyId::TopicAlias),
        E::InvalidTopicName(TopicError::Empty),
        E::InvalidTopicFilter(TopicError::Empty),
        E::MissingTopic,
        E::NoTopicFilters,
        E::InvalidSubscriptionOptions,
        E::SharedSubscriptionNoLocal,
    ];
    for e in errors {
        assert!(!e.to_string().is_empty());
        assert!(e.reason_code().is_error());
    }
}

// --------------------------------------------------------------------------------- encoding

/// Asserts `encoded_len` and `encode` both refuse the packet with `expected`.
#[track_caller]
fn assert_encode_err(packet: Packet<'_>, v: ProtocolVersion, expected: EncodeError) {
    assert_eq!(
        packet.encoded_len(v),
        Err(expected),
        "encoded_len {packet:?}"
    );
    let mut buf = [0u8; 512];
    assert_eq!(
        packet.encode(v, &mut buf),
        Err(expected),
        "encode {packet:?}"
    );
    assert!(buf.iter().all(|&b| b == 0), "wrote on failure");
}

#[test]
fn encode_packet_id_mismatch() {
    let p = Publish {
        qos: QoS::AtLeastOnce,
        ..Publish::new("t", b"")
    };
    for v in [V31, V311, V5] {
        assert_encode_err(Packet::Publish(p), v, EncodeError::PacketIdMismatch);
        let p0 = Publish {
            packet_id: Some(pid(1)),
            ..Publish::new("t", b"")
        };
        assert_encode_err(Packet::Publish(p0), v, EncodeError::PacketIdMismatch);
    }
}

#[test]
fn encode_dup_on_qos_0() {
    let p = Publish {
        dup: true,
        ..Publish::new("t", b"")
    };
    assert_encode_err(Packet::Publish(p), V311, EncodeError::DupWithQoS0);
}

#[test]
fn encode_property_rules() {
    let p = Publish {
        properties: Properties::new(&[Property::SessionExpiryInterval(1)]),
        ..Publish::new("t", b"")
    };
    assert_encode_err(
        Packet::Publish(p),
        V5,
        EncodeError::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
    );
    let c = Connect {
        properties: Properties::new(&[Property::ReceiveMaximum(1), Property::ReceiveMaximum(2)]),
        ..Connect::new(V5, "c", 0)
    };
    assert_encode_err(
        Packet::Connect(c),
        V5,
        EncodeError::DuplicateProperty(PropertyId::ReceiveMaximum),
    );
    let p = Publish {
        properties: Properties::new(&[Property::TopicAlias(0)]),
        ..Publish::new("t", b"")
    };
    assert_encode_err(
        Packet::Publish(p),
        V5,
        EncodeError::InvalidPropertyValue(PropertyId::TopicAlias),
    );
    let filters = [(
        TopicFilter::new("a").unwrap(),
        SubscriptionOptions::default(),
    )];
    let s = Subscribe {
        packet_id: pid(1),
        properties: Properties::new(&[Property::SubscriptionIdentifier(268_435_456)]),
        filters: Filters::new(&filters),
    };
    assert_encode_err(
        Packet::Subscribe(s),
        V5,
        EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier),
    );
    // The will has its own list.
    let c = Connect {
        will: Some(Will {
            topic: TopicName::new("w").unwrap(),
            payload: b"",
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::new(&[Property::SessionExpiryInterval(1)]),
        }),
        ..Connect::new(V5, "c", 0)
    };
    assert_encode_err(
        Packet::Connect(c),
        V5,
        EncodeError::PropertyNotAllowed(PropertyId::SessionExpiryInterval),
    );
}

#[test]
fn encode_reason_code_not_allowed() {
    use EncodeError::ReasonCodeNotAllowed as N;
    let ack = Ack::with_reason(pid(1), R::PacketIdentifierNotFound);
    assert_encode_err(Packet::PubAck(ack), V5, N(R::PacketIdentifierNotFound));
    assert_encode_err(Packet::PubRec(ack), V5, N(R::PacketIdentifierNotFound));
    let ack = Ack::with_reason(pid(1), R::NoMatchingSubscribers);
    assert_encode_err(Packet::PubRel(ack), V5, N(R::NoMatchingSubscribers));
    assert_encode_err(Packet::PubComp(ack), V5, N(R::NoMatchingSubscribers));
    // Before 5.0 acks have no reason code at all.
    assert_encode_err(Packet::PubAck(ack), V311, N(R::NoMatchingSubscribers));
    assert_encode_err(
        Packet::UnsubAck(UnsubAck::new(pid(1), &[R::GrantedQoS1])),
        V5,
        N(R::GrantedQoS1),
    );
    assert_encode_err(
        Packet::SubAck(SubAck::new(pid(1), &[R::NoSubscriptionExisted])),
        V5,
        N(R::NoSubscriptionExisted),
    );
    assert_encode_err(
        Packet::SubAck(SubAck::new(pid(1), &[R::TopicFilterInvalid])),
        V311,
        N(R::TopicFilterInvalid),
    );
    assert_encode_err(
        Packet::Disconnect(Disconnect::new(R::ContinueAuthentication)),
        V5,
        N(R::ContinueAuthentication),
    );
    assert_encode_err(
        Packet::Disconnect(Disconnect::new(R::DisconnectWithWill)),
        V311,
        N(R::DisconnectWithWill),
    );
    assert_encode_err(
        Packet::Auth(Auth::new(R::UnspecifiedError, Properties::EMPTY)),
        V5,
        N(R::UnspecifiedError),
    );
    assert_encode_err(
        Packet::ConnAck(ConnAck::new(false, R::GrantedQoS1)),
        V5,
        N(R::GrantedQoS1),
    );
    // A 5.0 refusal with no 3.x return code.
    assert_encode_err(
        Packet::ConnAck(ConnAck::new(false, R::ServerBusy)),
        V311,
        N(R::ServerBusy),
    );
}

#[test]
fn encode_not_in_version() {
    let with_props = Properties::new(&[Property::UserProperty("k", "v")]);
    for v in [V31, V311] {
        assert_encode_err(Packet::Auth(Auth::default()), v, EncodeError::NotInVersion);
        let p = Publish {
            properties: with_props,
            ..Publish::new("t", b"")
        };
        assert_encode_err(Packet::Publish(p), v, EncodeError::NotInVersion);
        let d = Disconnect {
            properties: with_props,
            ..Disconnect::default()
        };
        assert_encode_err(Packet::Disconnect(d), v, EncodeError::NotInVersion);
        let filters = [(
            TopicFilter::new("a").unwrap(),
            SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::default()
            },
        )];
        assert_encode_err(
            Packet::Subscribe(Subscribe::new(pid(1), &filters)),
            v,
            EncodeError::NotInVersion,
        );
        let filters = [(
            TopicFilter::new("a").unwrap(),
            SubscriptionOptions {
                retain_handling: RetainHandling::DoNotSend,
                ..SubscriptionOptions::default()
            },
        )];
        assert_encode_err(
            Packet::Subscribe(Subscribe::new(pid(1), &filters)),
            v,
            EncodeError::NotInVersion,
        );
        assert_encode_err(
            Packet::UnsubAck(UnsubAck::new(pid(1), &[R::Success])),
            v,
            EncodeError::NotInVersion,
        );
    }
    // CONNECT is encoded for the version it carries.
    let c = Connect {
        properties: with_props,
        ..Connect::new(V311, "c", 0)
    };
    assert_encode_err(Packet::Connect(c), V5, EncodeError::NotInVersion);
    let c = Connect {
        password: Some(b"pw"),
        ..Connect::new(V311, "c", 0)
    };
    assert_encode_err(Packet::Connect(c), V311, EncodeError::NotInVersion);
}

#[test]
fn encode_buffer_too_small() {
    let mut buf = [0u8; 1];
    assert_eq!(
        Packet::PingReq.encode(V311, &mut buf),
        Err(EncodeError::BufferTooSmall { needed: 2 })
    );
    let p = Packet::Publish(Publish::new("a", &[0u8; 200]));
    let mut buf = [0u8; 204];
    assert_eq!(
        p.encode(V311, &mut buf),
        Err(EncodeError::BufferTooSmall { needed: 206 })
    );
    let mut buf = [0u8; 206];
    assert_eq!(p.encode(V311, &mut buf), Ok(206));
}

#[test]
fn encode_invalid_topics_and_strings() {
    for t in ["a/+", "#", "a#"] {
        assert_encode_err(
            Packet::Publish(Publish::new(t, b"")),
            V311,
            EncodeError::InvalidTopicName(TopicError::WildcardInName),
        );
    }
    for v in [V311, V5] {
        assert_encode_err(
            Packet::Publish(Publish::new("", b"")),
            v,
            EncodeError::InvalidTopicName(TopicError::Empty),
        );
    }
    // An alias makes the empty topic fine in 5.0 only.
    let p = Publish {
        properties: Properties::new(&[Property::TopicAlias(1)]),
        ..Publish::new("", b"")
    };
    assert_encode_err(
        Packet::Publish(p),
        V311,
        EncodeError::InvalidTopicName(TopicError::Empty),
    );
    assert_encode_err(
        Packet::Publish(Publish::new("a\0", b"")),
        V311,
        EncodeError::InvalidTopicName(TopicError::NullCharacter),
    );
    assert_encode_err(
        Packet::Connect(Connect::new(V311, "a\0", 0)),
        V311,
        EncodeError::NullCharacter,
    );
    let c = Connect {
        username: Some("\0"),
        ..Connect::new(V5, "c", 0)
    };
    assert_encode_err(Packet::Connect(c), V5, EncodeError::NullCharacter);
    // A string field over 65535 bytes.
    let long = "a".repeat(70_000);
    let c = Connect {
        username: Some(&long),
        ..Connect::new(V5, "c", 0)
    };
    assert_encode_err(Packet::Connect(c), V5, EncodeError::FieldTooLong);
}

#[test]
fn encode_empty_lists() {
    for v in [V31, V311, V5] {
        assert_encode_err(
            Packet::Subscribe(Subscribe::new(pid(1), &[])),
            v,
            EncodeError::NoTopicFilters,
        );
        assert_encode_err(
            Packet::Unsubscribe(Unsubscribe::new(pid(1), &[])),
            v,
            EncodeError::NoTopicFilters,
        );
        assert_encode_err(
            Packet::SubAck(SubAck::new(pid(1), &[])),
            v,
            EncodeError::NoTopicFilters,
        );
    }
    assert_encode_err(
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(1),
            properties: Properties::EMPTY,
            reason_codes: ReasonCodes::new(&[]),
        }),
        V5,
        EncodeError::NoTopicFilters,
    );
    assert_encode_err(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            properties: Properties::EMPTY,
            filters: Unsubscriptions::new(&[]),
        }),
        V5,
        EncodeError::NoTopicFilters,
    );
}

// ------------------------------------------------------------------------------ mutations

/// Valid 5.0 packets (and a few 3.1.1 ones) to mutate, encoded by the codec itself.
fn seeds() -> Vec<(ProtocolVersion, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |v: ProtocolVersion, p: Packet<'_>| {
        let mut buf = vec![0u8; p.encoded_len(v).unwrap()];
        p.encode(v, &mut buf).unwrap();
        out.push((v, buf));
    };
    push(
        V5,
        Packet::Connect(Connect {
            properties: Properties::new(&[
                Property::SessionExpiryInterval(10),
                Property::ReceiveMaximum(5),
                Property::AuthenticationMethod("m"),
                Property::AuthenticationData(b"d"),
            ]),
            will: Some(Will {
                topic: TopicName::new("w/t").unwrap(),
                payload: b"x",
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::new(&[
                    Property::WillDelayInterval(1),
                    Property::ResponseTopic("r"),
                    Property::UserProperty("a", "b"),
                ]),
            }),
            username: Some("u"),
            password: Some(b"p"),
            ..Connect::new(V5, "cid", 30)
        }),
    );
    push(
        V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: R::Success,
            properties: Properties::new(&[
                Property::MaximumQoS(QoS::AtLeastOnce),
                Property::AssignedClientIdentifier("id"),
                Property::TopicAliasMaximum(4),
                Property::SharedSubscriptionAvailable(false),
            ]),
        }),
    );
    push(
        V5,
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(3)),
            properties: Properties::new(&[
                Property::TopicAlias(2),
                Property::SubscriptionIdentifier(300),
                Property::CorrelationData(b"cd"),
                Property::PayloadFormatIndicator(true),
            ]),
            ..Publish::new("a/b", b"payload")
        }),
    );
    push(
        V5,
        Packet::PubAck(Ack {
            packet_id: pid(1),
            reason_code: R::QuotaExceeded,
            properties: Properties::new(&[Property::ReasonString("q")]),
        }),
    );
    push(
        V5,
        Packet::PubRel(Ack::with_reason(pid(1), R::PacketIdentifierNotFound)),
    );
    let filters = [
        (
            TopicFilter::new("$share/g/a/+").unwrap(),
            SubscriptionOptions::new(QoS::AtLeastOnce),
        ),
        (
            TopicFilter::new("b/#").unwrap(),
            SubscriptionOptions {
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendIfNew,
                qos: QoS::ExactlyOnce,
            },
        ),
    ];
    push(
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: pid(9),
            properties: Properties::new(&[Property::SubscriptionIdentifier(1)]),
            filters: Filters::new(&filters),
        }),
    );
    push(
        V5,
        Packet::SubAck(SubAck::new(pid(9), &[R::GrantedQoS1, R::NotAuthorized])),
    );
    let unsub = [TopicFilter::new("a/+").unwrap()];
    push(V5, Packet::Unsubscribe(Unsubscribe::new(pid(2), &unsub)));
    push(
        V5,
        Packet::UnsubAck(UnsubAck::new(pid(2), &[R::NoSubscriptionExisted])),
    );
    push(
        V5,
        Packet::Disconnect(Disconnect {
            reason_code: R::ServerMoved,
            properties: Properties::new(&[Property::ServerReference("s")]),
        }),
    );
    push(
        V5,
        Packet::Auth(Auth::new(
            R::ContinueAuthentication,
            Properties::new(&[Property::AuthenticationMethod("m")]),
        )),
    );
    push(
        V311,
        Packet::Connect(Connect {
            username: Some("u"),
            password: Some(b"p"),
            ..Connect::new(V311, "c", 5)
        }),
    );
    push(
        V311,
        Packet::Subscribe(Subscribe::new(pid(1), &filters[..1])),
    );
    out
}

/// Checks one mutant: no panic; `Incomplete` only when the frame itself claims more bytes than
/// the input has (which only a changed remaining length can do); a decoded packet uses no
/// more than the input and survives an encode/decode round trip unchanged.
fn check_mutant(v: ProtocolVersion, m: &[u8], positions: &[usize]) {
    for max in [MAX, 64] {
        match decode(m, v, max) {
            Err(_) => {}
            Ok(Status::Incomplete(_)) => {
                let wants_more = match frame(m, max) {
                    Ok(Status::Incomplete(_)) => true,
                    Ok(Status::Complete(f)) => f.len() > m.len(),
                    Err(e) => panic!("{m:02x?}: decode incomplete but frame failed: {e:?}"),
                };
                assert!(wants_more, "{m:02x?}: incomplete inside a complete frame");
                assert!(
                    positions.iter().any(|&p| (1..=4).contains(&p)),
                    "{m:02x?}: incomplete without a changed length"
                );
            }
            Ok(Status::Complete((p, used))) => {
                assert!(used <= m.len() && used >= 2, "{m:02x?}: used {used}");
                assert!(used <= max);
                round_trip(v, p, &m[..used]);
            }
        }
    }
}

/// A decoded packet re-encodes to something that decodes to the same packet.
fn round_trip(v: ProtocolVersion, p: Packet<'_>, from: &[u8]) {
    let len = match p.encoded_len(v) {
        Ok(n) => n,
        Err(e) => panic!("{from:02x?}: decoded {p:?} but cannot encode it: {e:?}"),
    };
    let mut buf = vec![0u8; len];
    assert_eq!(p.encode(v, &mut buf), Ok(len), "{from:02x?}");
    match decode(&buf, v, MAX) {
        Ok(Status::Complete((q, n))) => {
            assert_eq!(n, len, "{from:02x?}");
            assert_eq!(q, p, "{from:02x?} re-encoded as {buf:02x?}");
        }
        other => panic!("{from:02x?} re-encoded as {buf:02x?} which decodes to {other:?}"),
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every single-byte mutation of every seed: each byte set to each of 0..=255.
#[test]
fn mutations_one_byte_exhaustive() {
    for (v, seed) in seeds() {
        assert!(matches!(decode(&seed, v, MAX), Ok(Status::Complete(_))));
        let mut m = seed.clone();
        for i in 0..seed.len() {
            for b in 0..=255u8 {
                m[i] = b;
                check_mutant(v, &m, &[i]);
            }
            m[i] = seed[i];
        }
    }
}

/// Every two-byte mutation of the short seeds, exhaustively.
#[test]
fn mutations_two_bytes_exhaustive_on_short_packets() {
    for (v, seed) in seeds().into_iter().filter(|(_, s)| s.len() <= 7) {
        let mut m = seed.clone();
        for i in 0..seed.len() {
            for j in i + 1..seed.len() {
                for a in 0..=255u8 {
                    m[i] = a;
                    for b in 0..=255u8 {
                        m[j] = b;
                        check_mutant(v, &m, &[i, j]);
                    }
                }
                m[i] = seed[i];
                m[j] = seed[j];
            }
        }
    }
}

/// Random two- and three-byte mutations of every seed.
#[test]
fn mutations_two_and_three_bytes_random() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (v, seed) in seeds() {
        for round in 0..40_000 {
            let mut m = seed.clone();
            let count = 2 + round % 2;
            let mut positions = Vec::with_capacity(count);
            for _ in 0..count {
                let i = rng.below(seed.len());
                m[i] = rng.next() as u8;
                positions.push(i);
            }
            check_mutant(v, &m, &positions);
        }
    }
}

/// Every prefix and every truncation of the remaining length of every seed.
#[test]
fn truncations() {
    for (v, seed) in seeds() {
        for i in 0..seed.len() {
            assert!(
                matches!(decode(&seed[..i], v, MAX), Ok(Status::Incomplete(_))),
                "{seed:02x?} prefix {i}"
            );
        }
        // Shrinking the remaining length (one-byte lengths only) makes a shorter frame over the
        // same bytes: an error or a shorter packet, never incomplete.
        if seed[1] < 0x80 {
            for rl in 0..seed[1] {
                let mut m = seed.clone();
                m[1] = rl;
                check_mutant(v, &m, &[]);
            }
        }
    }
}
