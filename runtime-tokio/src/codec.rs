//! A `tokio_util` codec for those who frame MQTT themselves.

use bytes::{Bytes, BytesMut};
use mqtt_proto::{DecodeError, EncodeError, Packet, ProtocolVersion, Status, decode, frame};
use tokio_util::codec::{Decoder, Encoder};

/// Frames MQTT packets from a byte stream and encodes packets into it.
#[derive(Debug, Clone, Copy)]
pub struct MqttCodec {
    version: ProtocolVersion,
    max_packet_size: usize,
}

impl MqttCodec {
    /// A codec for `version` that refuses packets larger than `max_packet_size`.
    pub fn new(version: ProtocolVersion, max_packet_size: usize) -> Self {
        MqttCodec {
            version,
            max_packet_size,
        }
    }

    /// The protocol version (a server learns it from CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }
}

/// One whole, validated packet; [`Frame::packet`] views it without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    version: ProtocolVersion,
}

impl Frame {
    /// The packet's bytes, fixed header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The decoded packet, borrowing from the frame.
    pub fn packet(&self) -> Packet<'_> {
        match decode(&self.bytes, self.version, usize::MAX) {
            Ok(Status::Complete((p, _))) => p,
            // Unreachable: the decoder validated these bytes before making the frame.
            _ => Packet::PingResp,
        }
    }
}

/// Why the codec failed: malformed input, or an I/O error of the stream.
#[derive(Debug)]
pub enum CodecError {
    /// The peer sent bytes that are not a valid packet.
    Decode(DecodeError),
    /// The packet cannot be encoded.
    Encode(EncodeError),
    /// The stream failed.
    Io(std::io::Error),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Decode(e) => write!(f, "malformed packet: {e}"),
            CodecError::Encode(e) => write!(f, "cannot encode: {e}"),
            CodecError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e)
    }
}

impl Decoder for MqttCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match frame(src, self.max_packet_size).map_err(CodecError::Decode)? {
            Status::Incomplete(n) => {
                src.reserve(n);
                Ok(None)
            }
            Status::Complete(f) => {
                let total = f.len();
                if src.len() < total {
                    src.reserve(total - src.len());
                    return Ok(None);
                }
                // Validate the whole body now, so `Frame::packet` cannot fail later.
                match decode(&src[..total], self.version, self.max_packet_size) {
                    Ok(Status::Complete(_)) => {}
                    Ok(Status::Incomplete(_)) => return Ok(None),
                    Err(e) => return Err(CodecError::Decode(e)),
                }
                Ok(Some(Frame {
                    bytes: src.split_to(total).freeze(),
                    version: self.version,
                }))
            }
        }
    }
}

impl Encoder<Packet<'_>> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Packet<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode_buf(self.version, dst)
            .map_err(CodecError::Encode)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_proto::{Publish, QoS};

    #[test]
    fn frames_a_split_stream() {
        let mut codec = MqttCodec::new(ProtocolVersion::V311, 1 << 20);
        let mut out = BytesMut::new();
        let p = Publish {
            qos: QoS::AtMostOnce,
            ..Publish::new("a/b", b"hello")
        };
        codec.encode(Packet::Publish(p), &mut out).unwrap();
        codec.encode(Packet::PingReq, &mut out).unwrap();
        let bytes = out.freeze();
        let mut src = BytesMut::new();
        let mut frames = Vec::new();
        for b in bytes.iter() {
            src.extend_from_slice(&[*b]);
            while let Some(f) = codec.decode(&mut src).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].packet(), Packet::Publish(p));
        assert_eq!(frames[1].packet(), Packet::PingReq);
    }

    #[test]
    fn refuses_malformed_and_oversized() {
        let mut codec = MqttCodec::new(ProtocolVersion::V311, 16);
        let mut src = BytesMut::from(&[0x30, 0x7f][..]);
        assert!(matches!(codec.decode(&mut src), Err(CodecError::Decode(_))));
        let mut src = BytesMut::from(&[0xf0, 0x00][..]);
        assert!(matches!(codec.decode(&mut src), Err(CodecError::Decode(_))));
    }
}
