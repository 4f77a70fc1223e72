//! The control packets, the two-phase decoder and the encoder.

mod connect;
mod control;
mod publish;
mod subscribe;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use publish::{Ack, Publish};
pub use subscribe::{SubAck, Subscribe, UnsubAck, Unsubscribe};

use core::fmt;

use crate::wire::{CountSink, Reader, Sink, SliceSink, decode_varint, varint_len};
use crate::{DecodeError, EncodeError, MAX_REMAINING_LENGTH, PacketId, ProtocolVersion, Status};

/// The kind of a control packet, from the high nibble of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum PacketType {
    /// Client request to connect.
    Connect = 1,
    /// Connect acknowledgment.
    ConnAck = 2,
    /// Application message.
    Publish = 3,
    /// QoS 1 publish acknowledgment.
    PubAck = 4,
    /// QoS 2 publish received (step 1).
    PubRec = 5,
    /// QoS 2 publish release (step 2).
    PubRel = 6,
    /// QoS 2 publish complete (step 3).
    PubComp = 7,
    /// Subscribe request.
    Subscribe = 8,
    /// Subscribe acknowledgment.
    SubAck = 9,
    /// Unsubscribe request.
    Unsubscribe = 10,
    /// Unsubscribe acknowledgment.
    UnsubAck = 11,
    /// Keep-alive ping.
    PingReq = 12,
    /// Keep-alive ping response.
    PingResp = 13,
    /// Disconnect notification.
    Disconnect = 14,
    /// Authentication exchange (MQTT 5).
    Auth = 15,
}

impl PacketType {
    /// The packet type for the high nibble of a fixed header, if valid.
    pub const fn from_u8(v: u8) -> Option<Self> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The flag bits this type requires, or `None` for PUBLISH, whose flags carry data.
    const fn fixed_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The fixed header of a packet: what it is and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frame {
    /// The packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte (already checked against the type's rules).
    pub flags: u8,
    /// Bytes of the fixed header: 2 to 5.
    pub header_len: usize,
    /// Bytes of the body that follows the fixed header.
    pub remaining_len: usize,
}

impl Frame {
    /// Total size of the packet, fixed header included.
    pub const fn len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// A frame is never empty: it has at least its two header bytes.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Reads the fixed header at the start of `buf`, without needing the body.
///
/// Fails as soon as the header is decided to be invalid: an unknown type, wrong flag bits, a
/// fifth remaining-length byte, or a packet over `max_packet_size` (the whole packet's size).
#[inline]
pub fn frame(buf: &[u8], max_packet_size: usize) -> Result<Status<Frame>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(Status::Incomplete(2));
    };
    let type_bits = first >> 4;
    let flags = first & 0x0f;
    let packet_type =
        PacketType::from_u8(type_bits).ok_or(DecodeError::InvalidPacketType(type_bits))?;
    match packet_type.fixed_flags() {
        Some(required) if flags != required => return Err(DecodeError::InvalidHeaderFlags),
        Some(_) => {}
        None => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
        }
    }
    let Some((remaining_len, len_bytes)) = decode_varint(rest)? else {
        return Ok(Status::Incomplete(1));
    };
    let remaining_len = remaining_len as usize;
    let header_len = 1 + len_bytes;
    let size = header_len + remaining_len;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Status::Complete(Frame {
        packet_type,
        flags,
        header_len,
        remaining_len,
    }))
}

/// Decodes one packet from the start of `buf`, borrowing from it.
///
/// `version` is the connection's protocol version (CONNECT carries its own and ignores it).
/// Returns the packet and the number of bytes it used, or how many more bytes are needed.
#[inline]
pub fn decode(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Status<(Packet<'_>, usize)>, DecodeError> {
    let f = match frame(buf, max_packet_size)? {
        Status::Complete(f) => f,
        Status::Incomplete(n) => return Ok(Status::Incomplete(n)),
    };
    let total = f.len();
    let Some(body) = buf.get(f.header_len..total) else {
        return Ok(Status::Incomplete(total - buf.len()));
    };
    let packet = Packet::decode_body(f, body, version)?;
    Ok(Status::Complete((packet, total)))
}

/// Reads a non-zero packet identifier.
pub(crate) fn read_packet_id(r: &mut Reader<'_>) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16()?).ok_or(DecodeError::ZeroPacketId)
}

/// An MQTT control packet of any version, borrowing its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Packet<'a> {
    /// CONNECT.
    Connect(Connect<'a>),
    /// CONNACK.
    ConnAck(ConnAck<'a>),
    /// PUBLISH.
    Publish(Publish<'a>),
    /// PUBACK.
    PubAck(Ack<'a>),
    /// PUBREC.
    PubRec(Ack<'a>),
    /// PUBREL.
    PubRel(Ack<'a>),
    /// PUBCOMP.
    PubComp(Ack<'a>),
    /// SUBSCRIBE.
    Subscribe(Subscribe<'a>),
    /// SUBACK.
    SubAck(SubAck<'a>),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe<'a>),
    /// UNSUBACK.
    UnsubAck(UnsubAck<'a>),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect<'a>),
    /// AUTH (MQTT 5 only).
    Auth(Auth<'a>),
}

impl<'a> Packet<'a> {
    /// This packet's type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Parses a body whose frame was already read; `body` is exactly `remaining_len` long.
    #[inline]
    pub fn decode_body(
        frame: Frame,
        body: &'a [u8],
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let v = version;
        let packet = match frame.packet_type {
            PacketType::Connect => Packet::Connect(Connect::read(&mut r)?),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::read(&mut r, v)?),
            PacketType::Publish => Packet::Publish(Publish::read(frame.flags, &mut r, v)?),
            PacketType::PubAck => Packet::PubAck(Ack::read(PacketType::PubAck, &mut r, v)?),
            PacketType::PubRec => Packet::PubRec(Ack::read(PacketType::PubRec, &mut r, v)?),
            PacketType::PubRel => Packet::PubRel(Ack::read(PacketType::PubRel, &mut r, v)?),
            PacketType::PubComp => Packet::PubComp(Ack::read(PacketType::PubComp, &mut r, v)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r, v)?),
            PacketType::SubAck => Packet::SubAck(SubAck::read(&mut r, v)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r, v)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(&mut r, v)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::read(&mut r, v)?),
            PacketType::Auth if v.is_v5() => Packet::Auth(Auth::read(&mut r)?),
            PacketType::Auth => return Err(DecodeError::InvalidPacketType(15)),
        };
        r.finish()?;
        Ok(packet)
    }

    /// The first byte of the fixed header.
    fn header_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.header_flags(),
            other => other.packet_type().fixed_flags().unwrap_or(0),
        };
        ((self.packet_type() as u8) << 4) | flags
    }

    /// Writes the variable header and payload.
    #[inline]
    fn write_body<S: Sink>(&self, v: ProtocolVersion, s: &mut S) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(p) => p.write(s),
            Packet::ConnAck(p) => p.write(s, v),
            Packet::Publish(p) => p.write(s, v),
            Packet::PubAck(p) | Packet::PubRec(p) => p.write(s, v, PacketType::PubAck),
            Packet::PubRel(p) | Packet::PubComp(p) => p.write(s, v, PacketType::PubRel),
            Packet::Subscribe(p) => p.write(s, v),
            Packet::SubAck(p) => p.write(s, v),
            Packet::Unsubscribe(p) => p.write(s, v),
            Packet::UnsubAck(p) => p.write(s, v),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(p) => p.write(s, v),
            Packet::Auth(p) if v.is_v5() => p.write(s),
            Packet::Auth(_) => Err(EncodeError::NotInVersion),
        }
    }

    /// Remaining length of the encoded packet, validating it on the way.
    #[inline]
    fn body_len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut count = CountSink::default();
        self.write_body(v, &mut count)?;
        if count.0 > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        Ok(count.0)
    }

    /// Exact size of the encoded packet for protocol `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        Ok(1 + varint_len(body) + body)
    }

    /// Encodes the packet for `version` into `buf`, returning the bytes written.
    ///
    /// CONNECT is encoded for the version it carries. Nothing is written past the packet; if
    /// `buf` is too small the error says how many bytes are needed. On any error nothing is
    /// written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut [u8]) -> Result<usize, EncodeError> {
        if let Packet::Publish(p) = self {
            return p.encode(version, buf);
        }
        let body = self.body_len(version)?;
        let needed = 1 + varint_len(body) + body;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let mut s = SliceSink::new(buf);
        self.write_to(version, body, &mut s)?;
        Ok(s.written())
    }

    /// Encodes the packet for `version` at the end of a `bytes::BufMut`.
    ///
    /// Nothing is written unless the whole packet fits.
    #[cfg(feature = "bytes")]
    pub fn encode_buf<B: bytes::BufMut + ?Sized>(
        &self,
        version: ProtocolVersion,
        buf: &mut B,
    ) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        let needed = 1 + varint_len(body) + body;
        if buf.remaining_mut() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        self.write_to(version, body, &mut crate::wire::BufSink(buf))?;
        Ok(needed)
    }

    #[inline]
    fn write_to<S: Sink>(
        &self,
        version: ProtocolVersion,
        body: usize,
        s: &mut S,
    ) -> Result<(), EncodeError> {
        s.u8(self.header_byte())?;
        s.varint(body)?;
        self.write_body(version, s)
    }
}

macro_rules! packet_from {
    ($($ty:ident => $variant:ident),*) => {
        $(impl<'a> From<$ty<'a>> for Packet<'a> {
            fn from(p: $ty<'a>) -> Self {
                Packet::$variant(p)
            }
        })*
    };
}

packet_from!(
    Connect => Connect,
    ConnAck => ConnAck,
    Publish => Publish,
    Subscribe => Subscribe,
    SubAck => SubAck,
    Unsubscribe => Unsubscribe,
    UnsubAck => UnsubAck,
    Disconnect => Disconnect,
    Auth => Auth
);
