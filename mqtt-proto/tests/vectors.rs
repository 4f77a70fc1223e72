//! Byte-exact test vectors for every control packet in every protocol version, worked out by
//! hand from the MQTT 3.1, 3.1.1 and 5.0 specifications.
//!
//! Each vector is checked both ways: the value encodes to exactly the bytes (and `encoded_len`
//! agrees), and the bytes decode to exactly the value, using every byte. Every vector is also
//! fed to the decoder one byte at a time, re-encoded from its decoded (borrowed) form, checked
//! against a maximum packet size and encoded into too-small buffers.
//!
//! Section numbers: "3.1.1 §x" is MQTT 3.1.1 (OASIS, 2014), "5.0 §x" is MQTT 5.0 (OASIS, 2019),
//! "3.1" is the IBM MQTT V3.1 Protocol Specification.

use std::collections::BTreeSet;

use mqtt_proto::{
    Ack, Auth, ConnAck, Connect, ConnectReturnCode, Disconnect, EncodeError, Filters, Packet,
    PacketId, Properties, Property, PropertyId, ProtocolVersion, Publish, QoS, ReasonCode,
    ReasonCodes, RetainHandling, Status, SubAck, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, Unsubscriptions, Will, decode, frame,
};

use ProtocolVersion::{V5, V31, V311};

/// A maximum packet size that never gets in the way.
const MAX: usize = usize::MAX;

/// A packet value, the version it is encoded for and its exact bytes.
struct Vector {
    name: &'static str,
    version: ProtocolVersion,
    packet: Packet<'static>,
    bytes: Vec<u8>,
}

/// Concatenates byte pieces, so vectors can mix hex bytes with readable ASCII text.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn leak<T>(v: Vec<T>) -> &'static [T] {
    Vec::leak(v)
}

fn filter(s: &'static str) -> TopicFilter<'static> {
    TopicFilter::new(s).unwrap()
}

fn topic(s: &'static str) -> TopicName<'static> {
    TopicName::new(s).unwrap()
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::new(qos)
}

/// Bytes of the fixed header: the first byte plus the remaining-length bytes, counted from the
/// encoding itself (a byte without the continuation bit ends it).
fn header_len(bytes: &[u8]) -> usize {
    1 + bytes[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1
}

/// Every check that one vector must pass.
fn check(v: &Vector) {
    let Vector {
        name,
        version,
        packet,
        bytes,
    } = v;
    let (version, len) = (*version, bytes.len());

    // Encoding.
    assert_eq!(packet.encoded_len(version), Ok(len), "{name}: encoded_len");
    let mut buf = vec![0u8; len + 16];
    let n = packet.encode(version, &mut buf).unwrap();
    assert_eq!(&buf[..n], &bytes[..], "{name}: encode");
    assert!(
        buf[n..].iter().all(|&b| b == 0),
        "{name}: wrote past the packet"
    );
    let mut exact = vec![0u8; len];
    assert_eq!(packet.encode(version, &mut exact), Ok(len), "{name}: exact");
    assert_eq!(&exact, bytes, "{name}: exact buffer");

    // Too-small buffers: the error states the size needed and nothing is written.
    for short in [0, 1, len / 2, len - 1] {
        let mut small = vec![0u8; short];
        assert_eq!(
            packet.encode(version, &mut small),
            Err(EncodeError::BufferTooSmall { needed: len }),
            "{name}: buffer of {short}"
        );
        assert!(small.iter().all(|&b| b == 0), "{name}: wrote on failure");
    }

    #[cfg(feature = "bytes")]
    {
        let mut out: Vec<u8> = Vec::new();
        assert_eq!(packet.encode_buf(version, &mut out), Ok(len), "{name}");
        assert_eq!(&out, bytes, "{name}: encode_buf into Vec");
        let mut out = bytes::BytesMut::new();
        assert_eq!(packet.encode_buf(version, &mut out), Ok(len), "{name}");
        assert_eq!(&out[..], &bytes[..], "{name}: encode_buf into BytesMut");
        let mut small = vec![0u8; len - 1];
        let mut slice = &mut small[..];
        assert_eq!(
            packet.encode_buf(version, &mut slice),
            Err(EncodeError::BufferTooSmall { needed: len }),
            "{name}: encode_buf into a short slice"
        );
        assert!(small.iter().all(|&b| b == 0), "{name}: wrote on failure");
    }

    // Decoding.
    let decoded = decode(bytes, version, MAX);
    assert_eq!(
        decoded,
        Ok(Status::Complete((*packet, len))),
        "{name}: decode"
    );
    let Ok(Status::Complete((decoded, _))) = decoded else {
        unreachable!()
    };
    assert_eq!(decoded.packet_type(), packet.packet_type(), "{name}");

    // The decoded packet borrows its properties and lists as raw bytes; it must re-encode to
    // the same bytes.
    let mut again = vec![0u8; len];
    assert_eq!(
        decoded.encoded_len(version),
        Ok(len),
        "{name}: re-encode len"
    );
    assert_eq!(decoded.encode(version, &mut again), Ok(len), "{name}");
    assert_eq!(&again, bytes, "{name}: re-encode of the decoded packet");

    // The frame.
    let hl = header_len(bytes);
    let Ok(Status::Complete(f)) = frame(bytes, MAX) else {
        panic!("{name}: frame")
    };
    assert_eq!(f.packet_type, packet.packet_type(), "{name}");
    assert_eq!(f.flags, bytes[0] & 0x0f, "{name}");
    assert_eq!((f.header_len, f.remaining_len), (hl, len - hl), "{name}");
    assert_eq!(f.len(), len, "{name}");
    assert_eq!(
        Packet::decode_body(f, &bytes[hl..], version),
        Ok(*packet),
        "{name}: decode_body"
    );

    // Followed by another packet: only this one is consumed.
    let mut two = bytes.clone();
    two.extend_from_slice(&[0xC0, 0x00]);
    assert_eq!(
        decode(&two, version, MAX),
        Ok(Status::Complete((*packet, len))),
        "{name}: with a following packet"
    );

    // Maximum packet size: the whole packet counts, header included.
    assert!(
        matches!(decode(bytes, version, len), Ok(Status::Complete(_))),
        "{name}: max == size"
    );
    assert_eq!(
        decode(bytes, version, len - 1),
        Err(mqtt_proto::DecodeError::PacketTooLarge {
            size: len,
            max: len - 1
        }),
        "{name}: max == size - 1"
    );

    // Streaming: every proper prefix is incomplete, and once the header is known the decoder
    // says exactly how many bytes are missing.
    for i in 0..len {
        let prefix = &bytes[..i];
        match decode(prefix, version, MAX) {
            Ok(Status::Incomplete(missing)) => {
                assert!(missing >= 1, "{name}: prefix {i}");
                if i >= hl {
                    assert_eq!(missing, len - i, "{name}: prefix {i}");
                }
            }
            other => panic!("{name}: prefix of {i} bytes gave {other:?}"),
        }
        match frame(prefix, MAX) {
            Ok(Status::Complete(pf)) => {
                assert!(i >= hl, "{name}: frame of a {i}-byte prefix");
                assert_eq!(pf, f, "{name}");
            }
            Ok(Status::Incomplete(missing)) => {
                assert!(i < hl && missing >= 1, "{name}: frame prefix {i}");
            }
            Err(e) => panic!("{name}: frame of a {i}-byte prefix failed: {e:?}"),
        }
    }
}

macro_rules! vectors {
    ($($name:ident: $version:ident, $packet:expr, $bytes:expr;)*) => {
        fn all_vectors() -> Vec<Vector> {
            vec![$(Vector {
                name: stringify!($name),
                version: $version,
                packet: $packet,
                bytes: $bytes,
            }),*]
        }

        $(#[test]
        fn $name() {
            check(&Vector {
                name: stringify!($name),
                version: $version,
                packet: $packet,
                bytes: $bytes,
            });
        })*
    };
}

vectors! {
    // ---------------------------------------------------------------- CONNECT
    // 3.1.1 §3.1: name "MQTT", level 4, flags = clean session (bit 1), keep alive 60,
    // payload = client id. Remaining length 10 + 5 = 15.
    connect_v311_minimal: V311,
        Packet::Connect(Connect::new(V311, "abc", 60)),
        cat(&[&[0x10, 0x0F, 0x00, 0x04], b"MQTT", &[0x04, 0x02, 0x00, 0x3C, 0x00, 0x03], b"abc"]);

    // 3.1.1 §3.1.3.1: a zero-byte client id is allowed with clean session 1.
    connect_v311_empty_client_id: V311,
        Packet::Connect(Connect::new(V311, "", 0)),
        cat(&[&[0x10, 0x0C, 0x00, 0x04], b"MQTT", &[0x04, 0x02, 0x00, 0x00, 0x00, 0x00]]);

    // 3.1 "CONNECT": protocol name "MQIsdp", version 3. Remaining length 12 + 5 = 17.
    connect_v31_minimal: V31,
        Packet::Connect(Connect::new(V31, "abc", 60)),
        cat(&[&[0x10, 0x11, 0x00, 0x06], b"MQIsdp", &[0x03, 0x02, 0x00, 0x3C, 0x00, 0x03], b"abc"]);

    // 3.1.1 §3.1.2.3: flags 0xEC = user name (7) | password (6) | will retain (5) |
    // will QoS 1 (4-3 = 01) | will flag (2), clean session 0. §3.1.3: payload order is client
    // id, will topic, will message, user name, password. Remaining length 10 + 26 = 36.
    connect_v311_will_username_password: V311,
        Packet::Connect(Connect {
            protocol: V311,
            clean_start: false,
            keep_alive: 10,
            properties: Properties::EMPTY,
            client_id: "c1",
            will: Some(Will {
                topic: topic("w/t"),
                payload: b"bye",
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::EMPTY,
            }),
            username: Some("user"),
            password: Some(b"pass"),
        }),
        cat(&[
            &[0x10, 0x24, 0x00, 0x04], b"MQTT", &[0x04, 0xEC, 0x00, 0x0A],
            &[0x00, 0x02], b"c1",
            &[0x00, 0x03], b"w/t",
            &[0x00, 0x03], b"bye",
            &[0x00, 0x04], b"user",
            &[0x00, 0x04], b"pass",
        ]);

    // 3.1.1 §3.1.2.8/§3.1.2.9: a user name without a password is allowed (flags 0x82).
    connect_v311_username_only: V311,
        Packet::Connect(Connect { username: Some("u"), ..Connect::new(V311, "c", 5) }),
        cat(&[&[0x10, 0x10, 0x00, 0x04], b"MQTT", &[0x04, 0x82, 0x00, 0x05, 0x00, 0x01], b"c",
            &[0x00, 0x01], b"u"]);

    // 3.1 "CONNECT": same payload order as 3.1.1. Flags 0xD6 = user name | password |
    // will QoS 2 (bits 4-3 = 10) | will flag | clean session. Remaining length 12 + 26 = 38.
    connect_v31_will_username_password: V31,
        Packet::Connect(Connect {
            protocol: V31,
            clean_start: true,
            keep_alive: 10,
            properties: Properties::EMPTY,
            client_id: "c1",
            will: Some(Will {
                topic: topic("w/t"),
                payload: b"bye",
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: Properties::EMPTY,
            }),
            username: Some("user"),
            password: Some(b"pass"),
        }),
        cat(&[
            &[0x10, 0x26, 0x00, 0x06], b"MQIsdp", &[0x03, 0xD6, 0x00, 0x0A],
            &[0x00, 0x02], b"c1",
            &[0x00, 0x03], b"w/t",
            &[0x00, 0x03], b"bye",
            &[0x00, 0x04], b"user",
            &[0x00, 0x04], b"pass",
        ]);

    // 5.0 §3.1.2: level 5, then §3.1.2.11 a property length (0 here) after the keep alive.
    // Remaining length 11 + 5 = 16.
    connect_v5_minimal: V5,
        Packet::Connect(Connect::new(V5, "abc", 60)),
        cat(&[&[0x10, 0x10, 0x00, 0x04], b"MQTT", &[0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x03], b"abc"]);

    // 5.0 §3.1.2.9: "Password Flag ... this version of the protocol allows the sending of a
    // Password with no User Name". Flags 0x42 = password | clean start.
    connect_v5_password_without_username: V5,
        Packet::Connect(Connect { password: Some(b"pw"), ..Connect::new(V5, "a", 0) }),
        cat(&[&[0x10, 0x12, 0x00, 0x04], b"MQTT", &[0x05, 0x42, 0x00, 0x00, 0x00],
            &[0x00, 0x01], b"a", &[0x00, 0x02], b"pw"]);

    // 5.0 §3.1.2.11 CONNECT properties (all that CONNECT allows) and §3.1.3.2 will properties
    // (all that the will allows), which come before the will topic (§3.1.3.3).
    // Flags 0xCE = user name | password | will QoS 1 | will flag | clean start.
    // CONNECT properties (40 bytes):
    //   0x11 session expiry 120 (5), 0x21 receive maximum 10 (3), 0x27 maximum packet size 4096 (5),
    //   0x22 topic alias maximum 5 (3), 0x19 request response information 1 (2),
    //   0x17 request problem information 0 (2), 0x26 user property k=v (7),
    //   0x15 authentication method "SCRAM" (8), 0x16 authentication data 01 02 (5).
    // Will properties (45 bytes):
    //   0x18 will delay 5 (5), 0x01 payload format 1 (2), 0x02 message expiry 3600 (5),
    //   0x03 content type "text/plain" (13), 0x08 response topic "resp" (7),
    //   0x09 correlation data 01 02 03 (6), 0x26 user property a=b (7).
    // Variable header 10 + 1 + 40 = 51; payload 5 + 1 + 45 + 3 + 3 + 3 + 3 = 63; total 114.
    connect_v5_all_properties_with_will: V5,
        Packet::Connect(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::new(&[
                Property::SessionExpiryInterval(120),
                Property::ReceiveMaximum(10),
                Property::MaximumPacketSize(4096),
                Property::TopicAliasMaximum(5),
                Property::RequestResponseInformation(true),
                Property::RequestProblemInformation(false),
                Property::UserProperty("k", "v"),
                Property::AuthenticationMethod("SCRAM"),
                Property::AuthenticationData(&[1, 2]),
            ]),
            client_id: "cid",
            will: Some(Will {
                topic: topic("w"),
                payload: b"x",
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::new(&[
                    Property::WillDelayInterval(5),
                    Property::PayloadFormatIndicator(true),
                    Property::MessageExpiryInterval(3600),
                    Property::ContentType("text/plain"),
                    Property::ResponseTopic("resp"),
                    Property::CorrelationData(&[1, 2, 3]),
                    Property::UserProperty("a", "b"),
                ]),
            }),
            username: Some("u"),
            password: Some(b"p"),
        }),
        cat(&[
            &[0x10, 0x72, 0x00, 0x04], b"MQTT", &[0x05, 0xCE, 0x00, 0x1E],
            &[0x28],
            &[0x11, 0x00, 0x00, 0x00, 0x78],
            &[0x21, 0x00, 0x0A],
            &[0x27, 0x00, 0x00, 0x10, 0x00],
            &[0x22, 0x00, 0x05],
            &[0x19, 0x01],
            &[0x17, 0x00],
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
            &[0x15, 0x00, 0x05], b"SCRAM",
            &[0x16, 0x00, 0x02, 0x01, 0x02],
            &[0x00, 0x03], b"cid",
            &[0x2D],
            &[0x18, 0x00, 0x00, 0x00, 0x05],
            &[0x01, 0x01],
            &[0x02, 0x00, 0x00, 0x0E, 0x10],
            &[0x03, 0x00, 0x0A], b"text/plain",
            &[0x08, 0x00, 0x04], b"resp",
            &[0x09, 0x00, 0x03, 0x01, 0x02, 0x03],
            &[0x26, 0x00, 0x01], b"a", &[0x00, 0x01], b"b",
            &[0x00, 0x01], b"w",
            &[0x00, 0x01], b"x",
            &[0x00, 0x01], b"u",
            &[0x00, 0x01], b"p",
        ]);

    // ---------------------------------------------------------------- CONNACK
    // 3.1.1 §3.2: acknowledge flags (bit 0 session present), return code. Remaining length 2.
    connack_v311_accepted: V311,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
        vec![0x20, 0x02, 0x00, 0x00];
    connack_v311_session_present: V311,
        Packet::ConnAck(ConnAck::new(true, ReasonCode::Success)),
        vec![0x20, 0x02, 0x01, 0x00];
    // 3.1 "CONNACK": the first byte is reserved (topic name compression, not used).
    connack_v31_accepted: V31,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
        vec![0x20, 0x02, 0x00, 0x00];
    connack_v31_not_authorized: V31,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::NotAuthorized)),
        vec![0x20, 0x02, 0x00, 0x05];

    // 5.0 §3.2: flags, reason code, property length (always present in CONNACK).
    connack_v5_minimal: V5,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
        vec![0x20, 0x03, 0x00, 0x00, 0x00];
    // 5.0 §3.2.2.2: 0x87 Not authorized.
    connack_v5_refused: V5,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::NotAuthorized)),
        vec![0x20, 0x03, 0x00, 0x87, 0x00];
    // 5.0 §3.2.2.3: every CONNACK property (72 bytes):
    //   0x11 session expiry 300 (5), 0x21 receive maximum 20 (3), 0x24 maximum QoS 1 (2),
    //   0x25 retain available 0 (2), 0x27 maximum packet size 65536 (5),
    //   0x12 assigned client id "abc" (6), 0x22 topic alias maximum 10 (3),
    //   0x1F reason string "ok" (5), 0x26 user property x=y (7),
    //   0x28 wildcard subscription available 1 (2), 0x29 subscription ids available 0 (2),
    //   0x2A shared subscription available 1 (2), 0x13 server keep alive 60 (3),
    //   0x1A response information "info" (7), 0x1C server reference "srv" (6),
    //   0x15 authentication method "SCRAM" (8), 0x16 authentication data FF (4).
    // Remaining length 1 + 1 + 1 + 72 = 75.
    connack_v5_all_properties: V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::Success,
            properties: Properties::new(&[
                Property::SessionExpiryInterval(300),
                Property::ReceiveMaximum(20),
                Property::MaximumQoS(QoS::AtLeastOnce),
                Property::RetainAvailable(false),
                Property::MaximumPacketSize(65536),
                Property::AssignedClientIdentifier("abc"),
                Property::TopicAliasMaximum(10),
                Property::ReasonString("ok"),
                Property::UserProperty("x", "y"),
                Property::WildcardSubscriptionAvailable(true),
                Property::SubscriptionIdentifierAvailable(false),
                Property::SharedSubscriptionAvailable(true),
                Property::ServerKeepAlive(60),
                Property::ResponseInformation("info"),
                Property::ServerReference("srv"),
                Property::AuthenticationMethod("SCRAM"),
                Property::AuthenticationData(&[0xFF]),
            ]),
        }),
        cat(&[
            &[0x20, 0x4B, 0x01, 0x00, 0x48],
            &[0x11, 0x00, 0x00, 0x01, 0x2C],
            &[0x21, 0x00, 0x14],
            &[0x24, 0x01],
            &[0x25, 0x00],
            &[0x27, 0x00, 0x01, 0x00, 0x00],
            &[0x12, 0x00, 0x03], b"abc",
            &[0x22, 0x00, 0x0A],
            &[0x1F, 0x00, 0x02], b"ok",
            &[0x26, 0x00, 0x01], b"x", &[0x00, 0x01], b"y",
            &[0x28, 0x01],
            &[0x29, 0x00],
            &[0x2A, 0x01],
            &[0x13, 0x00, 0x3C],
            &[0x1A, 0x00, 0x04], b"info",
            &[0x1C, 0x00, 0x03], b"srv",
            &[0x15, 0x00, 0x05], b"SCRAM",
            &[0x16, 0x00, 0x01, 0xFF],
        ]);

    // ---------------------------------------------------------------- PUBLISH
    // 3.1.1 §3.3: QoS 0 has no packet id; the payload is the rest of the packet.
    publish_v311_qos0: V311,
        Packet::Publish(Publish::new("a/b", b"hello")),
        cat(&[&[0x30, 0x0A, 0x00, 0x03], b"a/b", b"hello"]);
    // 3.1.1 §3.3.1: flags 0b0011 = QoS 1 | retain; §3.3.2.2 packet id after the topic.
    publish_v311_qos1_retain: V311,
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            packet_id: Some(pid(10)),
            ..Publish::new("a/b", b"hi")
        }),
        cat(&[&[0x33, 0x09, 0x00, 0x03], b"a/b", &[0x00, 0x0A], b"hi"]);
    // 3.1.1 §3.3.1: flags 0b1100 = DUP | QoS 2; empty payload.
    publish_v311_qos2_dup_empty_payload: V311,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(0x1234)),
            ..Publish::new("t", b"")
        }),
        vec![0x3C, 0x05, 0x00, 0x01, b't', 0x12, 0x34];
    // 3.1.1 §2.2.3: remaining length 203 = 0xCB 0x01 (two bytes).
    publish_v311_two_byte_remaining_length: V311,
        Packet::Publish(Publish::new("a", &[0xAB; 200])),
        cat(&[&[0x30, 0xCB, 0x01, 0x00, 0x01], b"a", &[0xAB; 200]]);
    // 3.1 "PUBLISH": same layout as 3.1.1.
    publish_v31_qos1: V31,
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(1)),
            ..Publish::new("a/b", b"hi")
        }),
        cat(&[&[0x32, 0x09, 0x00, 0x03], b"a/b", &[0x00, 0x01], b"hi"]);
    publish_v31_qos0: V31,
        Packet::Publish(Publish::new("x", b"")),
        vec![0x30, 0x03, 0x00, 0x01, b'x'];

    // 5.0 §3.3.2.3: a property length (0) follows the topic (and packet id).
    publish_v5_qos0: V5,
        Packet::Publish(Publish::new("a/b", b"hello")),
        cat(&[&[0x30, 0x0B, 0x00, 0x03], b"a/b", &[0x00], b"hello"]);
    // 5.0 §3.3.2.3 PUBLISH properties (45 bytes):
    //   0x01 payload format 1 (2), 0x02 message expiry 60 (5), 0x23 topic alias 3 (3),
    //   0x08 response topic "r" (4), 0x09 correlation data C0 DE (5),
    //   0x26 a=1 (7), 0x26 a=2 (7) (user properties repeat, §3.3.2.3.7),
    //   0x0B subscription id 1 (2), 0x0B subscription id 200 = C8 01 (3) (repeat, §3.3.2.3.8),
    //   0x03 content type "json" (7).
    // Remaining length 5 + 2 + 1 + 45 + 2 = 55.
    publish_v5_qos1_all_properties: V5,
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(7)),
            properties: Properties::new(&[
                Property::PayloadFormatIndicator(true),
                Property::MessageExpiryInterval(60),
                Property::TopicAlias(3),
                Property::ResponseTopic("r"),
                Property::CorrelationData(&[0xC0, 0xDE]),
                Property::UserProperty("a", "1"),
                Property::UserProperty("a", "2"),
                Property::SubscriptionIdentifier(1),
                Property::SubscriptionIdentifier(200),
                Property::ContentType("json"),
            ]),
            ..Publish::new("a/b", b"{}")
        }),
        cat(&[
            &[0x32, 0x37, 0x00, 0x03], b"a/b", &[0x00, 0x07],
            &[0x2D],
            &[0x01, 0x01],
            &[0x02, 0x00, 0x00, 0x00, 0x3C],
            &[0x23, 0x00, 0x03],
            &[0x08, 0x00, 0x01], b"r",
            &[0x09, 0x00, 0x02, 0xC0, 0xDE],
            &[0x26, 0x00, 0x01], b"a", &[0x00, 0x01], b"1",
            &[0x26, 0x00, 0x01], b"a", &[0x00, 0x01], b"2",
            &[0x0B, 0x01],
            &[0x0B, 0xC8, 0x01],
            &[0x03, 0x00, 0x04], b"json",
            b"{}",
        ]);
    // 5.0 §3.3.2.3.4: a zero-length topic name with a topic alias. Remaining length 7.
    publish_v5_topic_alias_empty_topic: V5,
        Packet::Publish(Publish {
            properties: Properties::new(&[Property::TopicAlias(3)]),
            ..Publish::new("", b"x")
        }),
        vec![0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x03, b'x'];
    // 5.0 §3.3.1: QoS 2 with DUP and retain = 0x3D; properties empty; empty payload.
    publish_v5_qos2_dup_retain: V5,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            packet_id: Some(pid(0xFFFF)),
            ..Publish::new("$SYS/x", b"")
        }),
        cat(&[&[0x3D, 0x0B, 0x00, 0x06], b"$SYS/x", &[0xFF, 0xFF, 0x00]]);

    // ---------------------------------------------------------------- PUBACK / PUBREC / PUBREL / PUBCOMP
    // 3.1.1 §3.4-§3.7: packet id only; PUBREL has flags 0b0010 (§3.6.1).
    puback_v311: V311, Packet::PubAck(Ack::new(pid(1))), vec![0x40, 0x02, 0x00, 0x01];
    pubrec_v311: V311, Packet::PubRec(Ack::new(pid(2))), vec![0x50, 0x02, 0x00, 0x02];
    pubrel_v311: V311, Packet::PubRel(Ack::new(pid(3))), vec![0x62, 0x02, 0x00, 0x03];
    pubcomp_v311: V311, Packet::PubComp(Ack::new(pid(0x0102))), vec![0x70, 0x02, 0x01, 0x02];
    // 3.1: PUBREL carries QoS 1 in its header, as in 3.1.1.
    puback_v31: V31, Packet::PubAck(Ack::new(pid(1))), vec![0x40, 0x02, 0x00, 0x01];
    pubrec_v31: V31, Packet::PubRec(Ack::new(pid(1))), vec![0x50, 0x02, 0x00, 0x01];
    pubrel_v31: V31, Packet::PubRel(Ack::new(pid(1))), vec![0x62, 0x02, 0x00, 0x01];
    pubcomp_v31: V31, Packet::PubComp(Ack::new(pid(1))), vec![0x70, 0x02, 0x00, 0x01];

    // 5.0 §3.4.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is
    // 0x00 (Success) and there are no Properties. In this case the PUBACK has a Remaining
    // Length of 2."
    puback_v5_short: V5, Packet::PubAck(Ack::new(pid(1))), vec![0x40, 0x02, 0x00, 0x01];
    pubrec_v5_short: V5, Packet::PubRec(Ack::new(pid(1))), vec![0x50, 0x02, 0x00, 0x01];
    pubrel_v5_short: V5, Packet::PubRel(Ack::new(pid(1))), vec![0x62, 0x02, 0x00, 0x01];
    pubcomp_v5_short: V5, Packet::PubComp(Ack::new(pid(1))), vec![0x70, 0x02, 0x00, 0x01];
    // 5.0 §3.4.2.2.1: "If the Remaining Length is less than 4 there is no Property Length":
    // a reason code alone is remaining length 3.
    puback_v5_reason_only: V5,
        Packet::PubAck(Ack::with_reason(pid(1), ReasonCode::NoMatchingSubscribers)),
        vec![0x40, 0x03, 0x00, 0x01, 0x10];
    // 5.0 §3.5.2.1: 0x80 Unspecified error is a PUBREC code.
    pubrec_v5_reason_only: V5,
        Packet::PubRec(Ack::with_reason(pid(9), ReasonCode::UnspecifiedError)),
        vec![0x50, 0x03, 0x00, 0x09, 0x80];
    // 5.0 §3.6.2.1 / §3.7.2.1: 0x92 Packet Identifier not found.
    pubrel_v5_reason_only: V5,
        Packet::PubRel(Ack::with_reason(pid(1), ReasonCode::PacketIdentifierNotFound)),
        vec![0x62, 0x03, 0x00, 0x01, 0x92];
    pubcomp_v5_reason_only: V5,
        Packet::PubComp(Ack::with_reason(pid(1), ReasonCode::PacketIdentifierNotFound)),
        vec![0x70, 0x03, 0x00, 0x01, 0x92];
    // 5.0 §3.4.2.2: reason string and user property. Properties 5 + 7 = 12, remaining length 16.
    puback_v5_properties: V5,
        Packet::PubAck(Ack {
            packet_id: pid(1),
            reason_code: ReasonCode::NotAuthorized,
            properties: Properties::new(&[
                Property::ReasonString("no"),
                Property::UserProperty("k", "v"),
            ]),
        }),
        cat(&[
            &[0x40, 0x10, 0x00, 0x01, 0x87, 0x0C],
            &[0x1F, 0x00, 0x02], b"no",
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
        ]);
    // Success with properties: the reason code 0x00 must be written before the properties.
    pubcomp_v5_success_with_properties: V5,
        Packet::PubComp(Ack {
            packet_id: pid(1),
            reason_code: ReasonCode::Success,
            properties: Properties::new(&[Property::ReasonString("ok")]),
        }),
        cat(&[&[0x70, 0x09, 0x00, 0x01, 0x00, 0x05, 0x1F, 0x00, 0x02], b"ok"]);
    pubrec_v5_properties: V5,
        Packet::PubRec(Ack {
            packet_id: pid(5),
            reason_code: ReasonCode::QuotaExceeded,
            properties: Properties::new(&[Property::UserProperty("a", "b")]),
        }),
        cat(&[&[0x50, 0x0B, 0x00, 0x05, 0x97, 0x07, 0x26, 0x00, 0x01], b"a", &[0x00, 0x01], b"b"]);
    pubrel_v5_properties: V5,
        Packet::PubRel(Ack {
            packet_id: pid(5),
            reason_code: ReasonCode::Success,
            properties: Properties::new(&[Property::ReasonString("r")]),
        }),
        cat(&[&[0x62, 0x08, 0x00, 0x05, 0x00, 0x04, 0x1F, 0x00, 0x01], b"r"]);

    // ---------------------------------------------------------------- SUBSCRIBE
    // 3.1.1 §3.8: flags 0b0010, packet id, then (filter, requested QoS) pairs.
    // Remaining length 2 + 6 + 4 = 12.
    subscribe_v311: V311,
        Packet::Subscribe(Subscribe::new(
            pid(1),
            leak(vec![(filter("a/b"), opts(QoS::AtLeastOnce)), (filter("#"), opts(QoS::ExactlyOnce))]),
        )),
        cat(&[&[0x82, 0x0C, 0x00, 0x01, 0x00, 0x03], b"a/b", &[0x01, 0x00, 0x01], b"#", &[0x02]]);
    // 3.1 "SUBSCRIBE": same layout.
    subscribe_v31: V31,
        Packet::Subscribe(Subscribe::new(pid(2), leak(vec![(filter("a/+"), opts(QoS::AtMostOnce))]))),
        cat(&[&[0x82, 0x08, 0x00, 0x02, 0x00, 0x03], b"a/+", &[0x00]]);
    // 5.0 §3.8.2.1 properties: 0x0B subscription id 128 = 80 01 (3), user property k=v (7).
    // §3.8.3.1 options: "a/+" QoS 1 | no local (bit 2) | retain as published (bit 3) |
    // retain handling 2 (bits 5-4) = 0x2D; "$share/g/x" retain handling 1 = 0x10; "c" QoS 2.
    // Remaining length 2 + 1 + 10 + 6 + 13 + 4 = 36.
    subscribe_v5_options: V5,
        Packet::Subscribe(Subscribe {
            packet_id: pid(0x0102),
            properties: Properties::new(&[
                Property::SubscriptionIdentifier(128),
                Property::UserProperty("k", "v"),
            ]),
            filters: Filters::new(leak(vec![
                (
                    filter("a/+"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    filter("$share/g/x"),
                    SubscriptionOptions {
                        retain_handling: RetainHandling::SendIfNew,
                        ..opts(QoS::AtMostOnce)
                    },
                ),
                (filter("c"), opts(QoS::ExactlyOnce)),
            ])),
        }),
        cat(&[
            &[0x82, 0x24, 0x01, 0x02, 0x0A, 0x0B, 0x80, 0x01],
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
            &[0x00, 0x03], b"a/+", &[0x2D],
            &[0x00, 0x0A], b"$share/g/x", &[0x10],
            &[0x00, 0x01], b"c", &[0x02],
        ]);
    subscribe_v5_minimal: V5,
        Packet::Subscribe(Subscribe::new(pid(1), leak(vec![(filter("a"), opts(QoS::AtMostOnce))]))),
        vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00];

    // ---------------------------------------------------------------- SUBACK
    // 3.1.1 §3.9.3: return codes 0x00, 0x01, 0x02 (granted QoS) and 0x80 (failure).
    suback_v311: V311,
        Packet::SubAck(SubAck::new(pid(1), &[
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])),
        vec![0x90, 0x06, 0x00, 0x01, 0x00, 0x01, 0x02, 0x80];
    // 3.1 "SUBACK": granted QoS list.
    suback_v31: V31,
        Packet::SubAck(SubAck::new(pid(7), &[ReasonCode::GrantedQoS1])),
        vec![0x90, 0x03, 0x00, 0x07, 0x01];
    // 5.0 §3.9: property length then reason codes.
    suback_v5_minimal: V5,
        Packet::SubAck(SubAck::new(pid(1), &[ReasonCode::GrantedQoS1])),
        vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x01];
    // 5.0 §3.9.3: every SUBACK reason code. Properties: reason string "r" (4) + k=v (7) = 11.
    // Remaining length 2 + 1 + 11 + 12 = 26.
    suback_v5_all_codes: V5,
        Packet::SubAck(SubAck {
            packet_id: pid(0x0A0B),
            properties: Properties::new(&[
                Property::ReasonString("r"),
                Property::UserProperty("k", "v"),
            ]),
            reason_codes: ReasonCodes::new(&[
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
                ReasonCode::ImplementationSpecificError,
                ReasonCode::NotAuthorized,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::PacketIdentifierInUse,
                ReasonCode::QuotaExceeded,
                ReasonCode::SharedSubscriptionsNotSupported,
                ReasonCode::SubscriptionIdentifiersNotSupported,
                ReasonCode::WildcardSubscriptionsNotSupported,
            ]),
        }),
        cat(&[
            &[0x90, 0x1A, 0x0A, 0x0B, 0x0B],
            &[0x1F, 0x00, 0x01], b"r",
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
            &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2],
        ]);

    // ---------------------------------------------------------------- UNSUBSCRIBE
    // 3.1.1 §3.10: flags 0b0010, packet id, filters. Remaining length 2 + 5 + 3 = 10.
    unsubscribe_v311: V311,
        Packet::Unsubscribe(Unsubscribe::new(pid(2), leak(vec![filter("a/b"), filter("#")]))),
        cat(&[&[0xA2, 0x0A, 0x00, 0x02, 0x00, 0x03], b"a/b", &[0x00, 0x01], b"#"]);
    unsubscribe_v31: V31,
        Packet::Unsubscribe(Unsubscribe::new(pid(2), leak(vec![filter("a")]))),
        vec![0xA2, 0x05, 0x00, 0x02, 0x00, 0x01, b'a'];
    // 5.0 §3.10.2.1: user property (7). Remaining length 2 + 1 + 7 + 5 + 12 = 27.
    unsubscribe_v5: V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            properties: Properties::new(&[Property::UserProperty("k", "v")]),
            filters: Unsubscriptions::new(leak(vec![filter("a/b"), filter("$share/g/#")])),
        }),
        cat(&[
            &[0xA2, 0x1B, 0x00, 0x02, 0x07, 0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
            &[0x00, 0x03], b"a/b",
            &[0x00, 0x0A], b"$share/g/#",
        ]);

    // ---------------------------------------------------------------- UNSUBACK
    // 3.1.1 §3.11: packet id only.
    unsuback_v311: V311, Packet::UnsubAck(UnsubAck::new(pid(2), &[])), vec![0xB0, 0x02, 0x00, 0x02];
    unsuback_v31: V31, Packet::UnsubAck(UnsubAck::new(pid(2), &[])), vec![0xB0, 0x02, 0x00, 0x02];
    // 5.0 §3.11: property length and one reason code per filter.
    unsuback_v5_minimal: V5,
        Packet::UnsubAck(UnsubAck::new(pid(2), &[ReasonCode::Success])),
        vec![0xB0, 0x04, 0x00, 0x02, 0x00, 0x00];
    // 5.0 §3.11.3: every UNSUBACK reason code; reason string "r" (4). Remaining length 14.
    unsuback_v5_all_codes: V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(3),
            properties: Properties::new(&[Property::ReasonString("r")]),
            reason_codes: ReasonCodes::new(&[
                ReasonCode::Success,
                ReasonCode::NoSubscriptionExisted,
                ReasonCode::UnspecifiedError,
                ReasonCode::ImplementationSpecificError,
                ReasonCode::NotAuthorized,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::PacketIdentifierInUse,
            ]),
        }),
        cat(&[
            &[0xB0, 0x0E, 0x00, 0x03, 0x04, 0x1F, 0x00, 0x01], b"r",
            &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
        ]);

    // ---------------------------------------------------------------- PINGREQ / PINGRESP
    // 3.1.1 §3.12, §3.13; 5.0 §3.12, §3.13: fixed header only.
    pingreq_v31: V31, Packet::PingReq, vec![0xC0, 0x00];
    pingreq_v311: V311, Packet::PingReq, vec![0xC0, 0x00];
    pingreq_v5: V5, Packet::PingReq, vec![0xC0, 0x00];
    pingresp_v31: V31, Packet::PingResp, vec![0xD0, 0x00];
    pingresp_v311: V311, Packet::PingResp, vec![0xD0, 0x00];
    pingresp_v5: V5, Packet::PingResp, vec![0xD0, 0x00];

    // ---------------------------------------------------------------- DISCONNECT
    // 3.1.1 §3.14: no variable header, no payload.
    disconnect_v31: V31, Packet::Disconnect(Disconnect::default()), vec![0xE0, 0x00];
    disconnect_v311: V311, Packet::Disconnect(Disconnect::default()), vec![0xE0, 0x00];
    // 5.0 §3.14.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is
    // 0x00 (Normal disconnecton) and there are no Properties. In this case the DISCONNECT has a
    // Remaining Length of 0."
    disconnect_v5_no_body: V5, Packet::Disconnect(Disconnect::default()), vec![0xE0, 0x00];
    // 5.0 §3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is used."
    disconnect_v5_reason_only: V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
        vec![0xE0, 0x01, 0x04];
    // 5.0 §3.14.2.2: session expiry 0 (5), server reference "b" (4), reason string "bye" (6),
    // user property k=v (7) = 22. Remaining length 24.
    disconnect_v5_properties: V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::UseAnotherServer,
            properties: Properties::new(&[
                Property::SessionExpiryInterval(0),
                Property::ServerReference("b"),
                Property::ReasonString("bye"),
                Property::UserProperty("k", "v"),
            ]),
        }),
        cat(&[
            &[0xE0, 0x18, 0x9C, 0x16],
            &[0x11, 0x00, 0x00, 0x00, 0x00],
            &[0x1C, 0x00, 0x01], b"b",
            &[0x1F, 0x00, 0x03], b"bye",
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
        ]);
    disconnect_v5_success_with_properties: V5,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::Success,
            properties: Properties::new(&[Property::SessionExpiryInterval(10)]),
        }),
        vec![0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A];

    // ---------------------------------------------------------------- AUTH (5.0 only)
    // 5.0 §3.15.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is
    // 0x00 (Success) and there are no Properties. In this case the AUTH has a Remaining Length
    // of 0."
    auth_v5_empty: V5, Packet::Auth(Auth::default()), vec![0xF0, 0x00];
    // 5.0 §3.15.2.2: method "SCRAM" (8), data 01 02 03 (6), reason string "r" (4), k=v (7) = 25.
    // Remaining length 1 + 1 + 25 = 27.
    auth_v5_continue: V5,
        Packet::Auth(Auth::new(
            ReasonCode::ContinueAuthentication,
            Properties::new(&[
                Property::AuthenticationMethod("SCRAM"),
                Property::AuthenticationData(&[1, 2, 3]),
                Property::ReasonString("r"),
                Property::UserProperty("k", "v"),
            ]),
        )),
        cat(&[
            &[0xF0, 0x1B, 0x18, 0x19],
            &[0x15, 0x00, 0x05], b"SCRAM",
            &[0x16, 0x00, 0x03, 0x01, 0x02, 0x03],
            &[0x1F, 0x00, 0x01], b"r",
            &[0x26, 0x00, 0x01], b"k", &[0x00, 0x01], b"v",
        ]);
    auth_v5_reauthenticate: V5,
        Packet::Auth(Auth::new(
            ReasonCode::ReAuthenticate,
            Properties::new(&[Property::AuthenticationMethod("SCRAM")]),
        )),
        cat(&[&[0xF0, 0x0A, 0x19, 0x08, 0x15, 0x00, 0x05], b"SCRAM"]);
    // A non-success AUTH without properties keeps its property length (0).
    auth_v5_continue_no_properties: V5,
        Packet::Auth(Auth::new(ReasonCode::ContinueAuthentication, Properties::EMPTY)),
        vec![0xF0, 0x02, 0x18, 0x00];
}

/// 3.1.1 §3.2.2.3 (and 3.1 "CONNACK"): all six return codes, each carried as the MQTT 5
/// reason code `ConnectReturnCode` maps it to.
#[test]
fn connack_v3_all_return_codes() {
    let table = [
        (0u8, ConnectReturnCode::Accepted, ReasonCode::Success),
        (
            1,
            ConnectReturnCode::UnacceptableProtocolVersion,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            2,
            ConnectReturnCode::IdentifierRejected,
            ReasonCode::ClientIdentifierNotValid,
        ),
        (
            3,
            ConnectReturnCode::ServerUnavailable,
            ReasonCode::ServerUnavailable,
        ),
        (
            4,
            ConnectReturnCode::BadUserNameOrPassword,
            ReasonCode::BadUserNameOrPassword,
        ),
        (
            5,
            ConnectReturnCode::NotAuthorized,
            ReasonCode::NotAuthorized,
        ),
    ];
    for version in [V31, V311] {
        for (byte, rc, reason) in table {
            assert_eq!(ConnectReturnCode::from_u8(byte), Some(rc));
            assert_eq!(rc as u8, byte);
            assert_eq!(rc.to_reason_code(), reason);
            assert_eq!(ConnectReturnCode::from_reason_code(reason), Some(rc));
            let connack = ConnAck::new(false, reason);
            assert_eq!(connack.return_code(), Some(rc));
            check(&Vector {
                name: "connack_v3_return_code",
                version,
                packet: Packet::ConnAck(connack),
                bytes: vec![0x20, 0x02, 0x00, byte],
            });
        }
    }
    assert_eq!(ConnectReturnCode::from_u8(6), None);
}

/// 5.0 §3.2.2.2: every CONNACK reason code encodes as its byte and decodes back.
#[test]
fn connack_v5_all_reason_codes() {
    let codes = [
        0x00u8, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    for byte in codes {
        let reason = ReasonCode::from_u8(byte).unwrap();
        check(&Vector {
            name: "connack_v5_reason_code",
            version: V5,
            packet: Packet::ConnAck(ConnAck::new(false, reason)),
            bytes: vec![0x20, 0x03, 0x00, byte, 0x00],
        });
    }
}

/// 5.0 §3.14.2.1: every DISCONNECT reason code, in the reason-only short form.
#[test]
fn disconnect_v5_all_reason_codes() {
    let codes = [
        0x04u8, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
        0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    for byte in codes {
        let reason = ReasonCode::from_u8(byte).unwrap();
        check(&Vector {
            name: "disconnect_v5_reason_code",
            version: V5,
            packet: Packet::Disconnect(Disconnect::new(reason)),
            bytes: vec![0xE0, 0x01, byte],
        });
    }
}

/// 5.0 §3.4.2.1 / §3.5.2.1: every PUBACK and PUBREC reason code in the 3-byte form.
#[test]
fn puback_pubrec_v5_all_reason_codes() {
    for byte in [0x10u8, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99] {
        let reason = ReasonCode::from_u8(byte).unwrap();
        let ack = Ack::with_reason(pid(1), reason);
        for (packet, first) in [(Packet::PubAck(ack), 0x40), (Packet::PubRec(ack), 0x50)] {
            check(&Vector {
                name: "puback_pubrec_v5_reason_code",
                version: V5,
                packet,
                bytes: vec![first, 0x03, 0x00, 0x01, byte],
            });
        }
    }
}

/// Forms the decoder must accept although the encoder writes a shorter one (5.0 §3.4.2.1,
/// §3.14.2.1): a Success reason code written out, and a zero property length written out.
#[test]
fn v5_long_forms_decode_to_the_short_value() {
    let ack = Packet::PubAck(Ack::new(pid(1)));
    for bytes in [
        &[0x40, 0x03, 0x00, 0x01, 0x00][..],
        &[0x40, 0x04, 0x00, 0x01, 0x00, 0x00][..],
    ] {
        assert_eq!(
            decode(bytes, V5, MAX),
            Ok(Status::Complete((ack, bytes.len())))
        );
    }
    let rel = Packet::PubRel(Ack::with_reason(
        pid(1),
        ReasonCode::PacketIdentifierNotFound,
    ));
    let bytes = [0x62, 0x04, 0x00, 0x01, 0x92, 0x00];
    assert_eq!(decode(&bytes, V5, MAX), Ok(Status::Complete((rel, 6))));
    let disconnect = Packet::Disconnect(Disconnect::default());
    for bytes in [&[0xE0, 0x01, 0x00][..], &[0xE0, 0x02, 0x00, 0x00][..]] {
        assert_eq!(
            decode(bytes, V5, MAX),
            Ok(Status::Complete((disconnect, bytes.len())))
        );
    }
    let auth = Packet::Auth(Auth::default());
    let bytes = [0xF0, 0x02, 0x00, 0x00];
    assert_eq!(decode(&bytes, V5, MAX), Ok(Status::Complete((auth, 4))));
}

/// Every one of the 27 MQTT 5 properties appears in at least one vector, and each vector's
/// decoded properties read back as the list it was built from.
#[test]
fn every_property_is_covered() {
    let mut seen = BTreeSet::new();
    for v in all_vectors().into_iter().filter(|v| v.version == V5) {
        let Ok(Status::Complete((packet, _))) = decode(&v.bytes, V5, MAX) else {
            panic!("{}", v.name)
        };
        let mut lists = Vec::new();
        match packet {
            Packet::Connect(c) => {
                lists.push(c.properties);
                if let Some(w) = c.will {
                    lists.push(w.properties);
                }
            }
            Packet::ConnAck(p) => lists.push(p.properties),
            Packet::Publish(p) => lists.push(p.properties),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                lists.push(p.properties)
            }
            Packet::Subscribe(p) => lists.push(p.properties),
            Packet::SubAck(p) => lists.push(p.properties),
            Packet::Unsubscribe(p) => lists.push(p.properties),
            Packet::UnsubAck(p) => lists.push(p.properties),
            Packet::Disconnect(p) => lists.push(p.properties),
            Packet::Auth(p) => lists.push(p.properties),
            Packet::PingReq | Packet::PingResp => {}
        }
        for props in lists {
            for p in props.iter() {
                seen.insert(p.id());
            }
        }
    }
    let all: BTreeSet<PropertyId> = (0..=255u8).filter_map(PropertyId::from_u8).collect();
    assert_eq!(all.len(), 27);
    let missing: Vec<_> = all.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "properties without a vector: {missing:?}"
    );
}

/// Accessors on decoded (raw) values give what the vectors were built from.
#[test]
fn decoded_accessors() {
    let v = all_vectors()
        .into_iter()
        .find(|v| v.name == "publish_v5_qos1_all_properties")
        .unwrap();
    let Ok(Status::Complete((Packet::Publish(p), _))) = decode(&v.bytes, V5, MAX) else {
        panic!()
    };
    assert_eq!(
        p.properties.subscription_identifiers().collect::<Vec<_>>(),
        [1, 200]
    );
    assert_eq!(
        p.properties.user_properties().collect::<Vec<_>>(),
        [("a", "1"), ("a", "2")]
    );
    assert_eq!(
        p.properties.get(PropertyId::TopicAlias),
        Some(Property::TopicAlias(3))
    );
    assert_eq!(p.properties.get(PropertyId::SessionExpiryInterval), None);
    assert_eq!(p.properties.iter().count(), 10);

    let v = all_vectors()
        .into_iter()
        .find(|v| v.name == "subscribe_v5_options")
        .unwrap();
    let Ok(Status::Complete((Packet::Subscribe(s), _))) = decode(&v.bytes, V5, MAX) else {
        panic!()
    };
    assert_eq!(s.filters.len(), 3);
    assert!(!s.filters.is_empty());
    let (f, o) = s.filters.iter().nth(1).unwrap();
    assert_eq!(f, "$share/g/x");
    assert_eq!(f.shared().unwrap().group, "g");
    assert_eq!(o.retain_handling, RetainHandling::SendIfNew);

    let v = all_vectors()
        .into_iter()
        .find(|v| v.name == "suback_v5_all_codes")
        .unwrap();
    let Ok(Status::Complete((Packet::SubAck(s), _))) = decode(&v.bytes, V5, MAX) else {
        panic!()
    };
    assert_eq!(s.reason_codes.len(), 12);
    let granted: Vec<_> = s.reason_codes.iter().map(SubAck::granted_qos).collect();
    assert_eq!(
        &granted[..4],
        [
            Some(QoS::AtMostOnce),
            Some(QoS::AtLeastOnce),
            Some(QoS::ExactlyOnce),
            None
        ]
    );
}

/// Feeding the whole set as one stream, one byte at a time, yields every packet in order.
#[test]
fn byte_by_byte_stream_of_all_vectors() {
    for version in [V31, V311, V5] {
        let vectors: Vec<Vector> = all_vectors()
            .into_iter()
            .filter(|v| v.version == version)
            .collect();
        let stream: Vec<u8> = vectors.iter().flat_map(|v| v.bytes.clone()).collect();
        let mut start = 0;
        let mut end = 0;
        let mut next = 0;
        while start < stream.len() {
            end += 1;
            match decode(&stream[start..end], version, MAX).unwrap() {
                Status::Incomplete(_) => assert!(end < stream.len()),
                Status::Complete((packet, used)) => {
                    let v = &vectors[next];
                    assert_eq!(packet, v.packet, "{}", v.name);
                    assert_eq!(used, v.bytes.len(), "{}", v.name);
                    assert_eq!(start + used, end, "{}: completed early or late", v.name);
                    start = end;
                    next += 1;
                }
            }
        }
        assert_eq!(next, vectors.len());
    }
}

/// Every version has a vector for every packet type it defines (AUTH only in 5.0).
#[test]
fn every_packet_type_in_every_version() {
    let vectors = all_vectors();
    for version in [V31, V311, V5] {
        let types: BTreeSet<u8> = vectors
            .iter()
            .filter(|v| v.version == version)
            .map(|v| v.packet.packet_type() as u8)
            .collect();
        let expected: BTreeSet<u8> = if version == V5 { 1..=15 } else { 1..=14 }.collect();
        assert_eq!(types, expected, "{version}");
    }
}
