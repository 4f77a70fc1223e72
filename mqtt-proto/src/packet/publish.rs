//! PUBLISH and its acknowledgments PUBACK, PUBREC, PUBREL, PUBCOMP.

use super::connect::{read_properties, write_properties};
use super::{PacketType, read_packet_id};
use crate::reason::ReasonContext;
use crate::wire::{Reader, Sink, SliceSink, varint_len};
use crate::{
    DecodeError, EncodeError, MAX_REMAINING_LENGTH, PacketId, Properties, PropertyContext,
    PropertyId, ProtocolVersion, QoS, ReasonCode, topic,
};

/// PUBLISH: an application message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Publish<'a> {
    /// Whether this is a redelivery of an earlier attempt.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether the server retains the message for future subscribers.
    pub retain: bool,
    /// Topic name; empty only in MQTT 5 with a topic alias property.
    pub topic: &'a str,
    /// Packet identifier: present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties<'a>,
    /// Application payload.
    pub payload: &'a [u8],
}

impl<'a> Publish<'a> {
    /// A QoS 0, non-retained PUBLISH without properties.
    pub const fn new(topic: &'a str, payload: &'a [u8]) -> Self {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: Properties::EMPTY,
            payload,
        }
    }

    pub(crate) fn header_flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    #[inline]
    pub(crate) fn read(
        flags: u8,
        r: &mut Reader<'a>,
        v: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        // The frame already rejected QoS 3 and DUP on QoS 0.
        let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
        // Topic validation below covers U+0000 (an empty topic has none).
        let topic = r.utf8()?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(read_packet_id(r)?),
        };
        let properties = read_properties(r, v, PropertyContext::Publish)?;
        if topic.is_empty() {
            if !v.is_v5() {
                return Err(DecodeError::InvalidTopicName(topic::TopicError::Empty));
            }
            if properties.get(PropertyId::TopicAlias).is_none() {
                return Err(DecodeError::MissingTopic);
            }
        } else {
            topic::validate_name(topic).map_err(DecodeError::topic_name)?;
        }
        Ok(Publish {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    /// Encodes the whole packet with one check pass and arithmetic lengths: PUBLISH is the
    /// packet a client sends most, so it skips the generic counting pass.
    pub(crate) fn encode(&self, v: ProtocolVersion, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.check(v)?;
        let props = if v.is_v5() {
            let n = self.properties.checked_len(PropertyContext::Publish)?;
            varint_len(n) + n
        } else if self.properties.is_empty() {
            0
        } else {
            return Err(EncodeError::NotInVersion);
        };
        let id = if self.packet_id.is_some() { 2 } else { 0 };
        let body = 2 + self.topic.len() + id + props + self.payload.len();
        if body > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        let needed = 1 + varint_len(body) + body;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let mut s = SliceSink::new(buf);
        s.u8((PacketType::Publish as u8) << 4 | self.header_flags())?;
        s.varint(body)?;
        self.write(&mut s, v)?;
        Ok(s.written())
    }

    /// The checks `write` makes on the counting pass.
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(EncodeError::DupWithQoS0);
        }
        if self.topic.len() > usize::from(u16::MAX) {
            return Err(EncodeError::FieldTooLong);
        }
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) | (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => {}
            _ => return Err(EncodeError::PacketIdMismatch),
        }
        if self.topic.is_empty() {
            if !v.is_v5() || self.properties.get(PropertyId::TopicAlias).is_none() {
                return Err(EncodeError::InvalidTopicName(topic::TopicError::Empty));
            }
            Ok(())
        } else {
            topic::validate_name(self.topic).map_err(EncodeError::InvalidTopicName)
        }
    }

    #[inline]
    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        if S::CHECK {
            self.check(v)?;
        }
        s.binary(self.topic.as_bytes())?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => s.u16(id.get())?,
            _ => return Err(EncodeError::PacketIdMismatch),
        }
        write_properties(s, v, &self.properties, PropertyContext::Publish)?;
        s.put(self.payload)
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: one step of a QoS 1 or QoS 2 exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ack<'a> {
    /// The PUBLISH this acknowledges.
    pub packet_id: PacketId,
    /// Outcome (MQTT 5; always `Success` before it).
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5): reason string and user properties.
    pub properties: Properties<'a>,
}

impl<'a> Ack<'a> {
    /// A successful acknowledgment without properties.
    pub const fn new(packet_id: PacketId) -> Self {
        Ack {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: Properties::EMPTY,
        }
    }

    /// An acknowledgment with a reason code.
    pub const fn with_reason(packet_id: PacketId, reason_code: ReasonCode) -> Self {
        Ack {
            packet_id,
            reason_code,
            properties: Properties::EMPTY,
        }
    }

    fn context(kind: PacketType) -> ReasonContext {
        match kind {
            PacketType::PubAck | PacketType::PubRec => ReasonContext::PubAck,
            _ => ReasonContext::PubRel,
        }
    }

    pub(crate) fn read(
        kind: PacketType,
        r: &mut Reader<'a>,
        v: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let (reason_code, properties) =
            read_reason_and_properties(r, v, Self::context(kind), PropertyContext::PubAck)?;
        Ok(Ack {
            packet_id,
            reason_code,
            properties,
        })
    }

    pub(crate) fn write<S: Sink>(
        &self,
        s: &mut S,
        v: ProtocolVersion,
        kind: PacketType,
    ) -> Result<(), EncodeError> {
        s.u16(self.packet_id.get())?;
        write_reason_and_properties(
            s,
            v,
            self.reason_code,
            &self.properties,
            Self::context(kind),
            PropertyContext::PubAck,
        )
    }
}

/// Reads the optional trailing reason code and properties of the ack-like packets.
///
/// In MQTT 5 the reason code may be left out (meaning success) when nothing follows it, and the
/// property length may be left out when no properties follow. Earlier versions have neither.
pub(crate) fn read_reason_and_properties<'a>(
    r: &mut Reader<'a>,
    v: ProtocolVersion,
    reasons: ReasonContext,
    props: PropertyContext,
) -> Result<(ReasonCode, Properties<'a>), DecodeError> {
    if !v.is_v5() || r.is_empty() {
        return Ok((ReasonCode::Success, Properties::EMPTY));
    }
    let code = r.u8()?;
    let reason_code = ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(reasons))
        .ok_or(DecodeError::InvalidReasonCode(code))?;
    let properties = if r.is_empty() {
        Properties::EMPTY
    } else {
        Properties::read(r, props)?
    };
    Ok((reason_code, properties))
}

/// Writes the shortest form of a trailing reason code and properties.
pub(crate) fn write_reason_and_properties<S: Sink>(
    s: &mut S,
    v: ProtocolVersion,
    reason_code: ReasonCode,
    properties: &Properties<'_>,
    reasons: ReasonContext,
    props: PropertyContext,
) -> Result<(), EncodeError> {
    if !v.is_v5() {
        if reason_code != ReasonCode::Success {
            return Err(EncodeError::ReasonCodeNotAllowed(reason_code));
        }
        return write_properties(s, v, properties, props);
    }
    if !reason_code.allowed_in(reasons) {
        return Err(EncodeError::ReasonCodeNotAllowed(reason_code));
    }
    if properties.is_empty() {
        if reason_code != ReasonCode::Success {
            s.u8(reason_code as u8)?;
        }
        return Ok(());
    }
    s.u8(reason_code as u8)?;
    properties.write(s, props)
}
