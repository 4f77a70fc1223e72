//! Checks shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target feeds arbitrary bytes to `mqtt_proto::decode`; the decoder must never panic, and
//! every packet it accepts must survive a round trip through the encoder:
//!
//! - `encoded_len` succeeds and equals what `encode` returns;
//! - `encode` into a buffer one byte too small fails with `BufferTooSmall`, and nothing is written
//!   past the packet into a larger buffer;
//! - the encoded bytes decode (consuming exactly them) to a packet equal to the first one, and
//!   re-encoding that gives the same bytes again;
//! - every strict prefix of the encoded bytes is `Incomplete`, never an error or a packet.

use mqtt_proto::{EncodeError, Packet, ProtocolVersion, Status, decode};

/// Maximum packet size passed to the decoder: larger than any fuzz input.
pub const MAX_PACKET_SIZE: usize = 1 << 20;

/// Most packets decoded from one input, to bound the time per input.
const MAX_PACKETS_PER_INPUT: usize = 256;

/// Sentinel written after the packet to check that `encode` stays within it.
const SENTINEL: u8 = 0xa5;

/// The three protocol versions, indexed by a fuzz byte.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// The version picked by a fuzz input's selector byte.
pub fn version_from_byte(b: u8) -> ProtocolVersion {
    match b % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    }
}

/// The version a decoded packet is re-encoded for: CONNECT carries its own.
pub fn encode_version(packet: &Packet<'_>, decoded_as: ProtocolVersion) -> ProtocolVersion {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => decoded_as,
    }
}

/// Decodes packets one after another from `data` as `version`, checking each (see
/// [`check_packet`]); stops at the first `Incomplete` or error.
pub fn decode_stream(data: &[u8], version: ProtocolVersion) {
    let mut rest = data;
    for _ in 0..MAX_PACKETS_PER_INPUT {
        if rest.is_empty() {
            return;
        }
        match decode(rest, version, MAX_PACKET_SIZE) {
            Ok(Status::Complete((packet, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "decode consumed {used} of {} bytes",
                    rest.len()
                );
                check_packet(&packet, version);
                rest = &rest[used..];
            }
            Ok(Status::Incomplete(more)) => {
                assert!(more > 0, "Incomplete(0) for {} bytes", rest.len());
                return;
            }
            Err(_) => return,
        }
    }
}

/// Decodes one packet from `data` as `version` and, if it decodes, checks it.
pub fn decode_one(data: &[u8], version: ProtocolVersion) {
    if let Ok(Status::Complete((packet, used))) = decode(data, version, MAX_PACKET_SIZE) {
        assert!(used > 0 && used <= data.len());
        check_packet(&packet, version);
    }
}

/// Encodes `packet` (decoded as `decoded_as`) and checks the round-trip properties listed in the
/// crate docs. Returns the encoded bytes.
pub fn check_packet(packet: &Packet<'_>, decoded_as: ProtocolVersion) -> Vec<u8> {
    let v = encode_version(packet, decoded_as);
    let len = match packet.encoded_len(v) {
        Ok(len) => len,
        Err(e) => {
            panic!("a decoded packet must encode, but encoded_len({v:?}) failed: {e:?}\n{packet:?}")
        }
    };
    assert!(len >= 2, "encoded_len {len} is shorter than a fixed header");

    // Room for the packet plus a sentinel tail that must stay untouched.
    let mut buf = vec![SENTINEL; len + 16];
    let written = match packet.encode(v, &mut buf) {
        Ok(n) => n,
        Err(e) => panic!("encoded_len said {len} but encode({v:?}) failed: {e:?}\n{packet:?}"),
    };
    assert_eq!(
        written, len,
        "encode wrote {written} bytes, encoded_len said {len}"
    );
    assert!(
        buf[len..].iter().all(|&b| b == SENTINEL),
        "encode wrote past the {len} bytes of the packet"
    );
    buf.truncate(len);

    // One byte too small: an error that states the size, never a panic.
    let mut small = vec![0u8; len - 1];
    match packet.encode(v, &mut small) {
        Err(EncodeError::BufferTooSmall { needed }) => {
            assert_eq!(
                needed, len,
                "BufferTooSmall states {needed}, the packet is {len}"
            )
        }
        other => panic!(
            "encode into {} bytes for a {len}-byte packet gave {other:?}",
            len - 1
        ),
    }

    // Decode the encoding: the same packet, consuming exactly the encoded bytes.
    let again = match decode(&buf, v, MAX_PACKET_SIZE) {
        Ok(Status::Complete((p, used))) => {
            assert_eq!(used, len, "re-decode consumed {used} of {len} bytes");
            p
        }
        other => panic!(
            "our own encoding does not decode: {other:?}\npacket: {packet:?}\nbytes: {buf:02x?}"
        ),
    };
    assert_eq!(&again, packet, "decode(encode(p)) != p; bytes: {buf:02x?}");

    // And encodes to the same bytes again.
    let mut buf2 = vec![0u8; len];
    match again.encode(encode_version(&again, v), &mut buf2) {
        Ok(n) => assert_eq!(n, len),
        Err(e) => panic!("re-encode failed: {e:?}\n{again:?}"),
    }
    assert_eq!(buf2, buf, "encode(decode(encode(p))) != encode(p)");

    check_prefixes(&buf, v);

    // Encoding for another version may fail, but must not panic, and when it works it agrees
    // with encoded_len.
    for other in VERSIONS {
        let mut out = vec![0u8; len + 64];
        let n = packet.encoded_len(other);
        let w = packet.encode(other, &mut out);
        match (n, w) {
            (Ok(n), Ok(w)) => assert_eq!(n, w, "encoded_len/encode disagree for {other:?}"),
            (Ok(n), Err(EncodeError::BufferTooSmall { needed })) => assert_eq!(n, needed),
            (Err(a), Err(b)) => assert_eq!(a, b, "encoded_len/encode fail differently"),
            (n, w) => panic!("encoded_len {n:?} but encode {w:?} for {other:?}\n{packet:?}"),
        }
    }
    buf
}

/// Every strict prefix of a whole encoded packet must be `Incomplete`, asking for no more bytes
/// than the packet has. (Cheap: a prefix stops at the frame, before the body is parsed.)
pub fn check_prefixes(bytes: &[u8], version: ProtocolVersion) {
    let len = bytes.len();
    for cut in 0..len {
        match decode(&bytes[..cut], version, MAX_PACKET_SIZE) {
            Ok(Status::Incomplete(more)) => assert!(
                more > 0 && cut + more <= len,
                "prefix of {cut}/{len} bytes asks for {more} more"
            ),
            other => panic!("prefix of {cut}/{len} bytes gave {other:?}; bytes: {bytes:02x?}"),
        }
    }
}
