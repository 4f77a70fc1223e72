//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use super::connect::{read_properties, write_properties};
use super::read_packet_id;
use crate::reason::ReasonContext;
use crate::wire::{Reader, Sink};
use crate::{
    DecodeError, EncodeError, Filters, PacketId, Properties, PropertyContext, ProtocolVersion, QoS,
    ReasonCode, ReasonCodes, SubscriptionOptions, TopicFilter, Unsubscriptions,
};

/// Checks a received options byte for `v`.
fn check_options(b: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    // MQTT 5 calls QoS 3 and retain handling 3 protocol errors; 3.1.1 calls QoS 3 malformed.
    if b & 0b11 == 3 {
        return Err(if v.is_v5() {
            DecodeError::InvalidSubscriptionQoS
        } else {
            DecodeError::InvalidQoS
        });
    }
    let reserved = if v.is_v5() { 0b1100_0000 } else { 0b1111_1100 };
    if b & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    if (b >> 4) & 0b11 == 3 {
        return Err(DecodeError::InvalidRetainHandling);
    }
    Ok(SubscriptionOptions::from_checked_byte(b))
}

/// Reads and checks one topic filter.
fn read_filter<'a>(r: &mut Reader<'a>) -> Result<TopicFilter<'a>, DecodeError> {
    TopicFilter::new(r.utf8()?).map_err(DecodeError::topic_filter)
}

/// Writes one topic filter: a `TopicFilter` is valid by construction (U+0000 included).
fn write_filter<S: Sink>(s: &mut S, f: &TopicFilter<'_>) -> Result<(), EncodeError> {
    s.binary(f.as_str().as_bytes())
}

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Subscribe<'a> {
    /// Packet identifier echoed by SUBACK.
    pub packet_id: PacketId,
    /// SUBSCRIBE properties (MQTT 5): subscription identifier and user properties.
    pub properties: Properties<'a>,
    /// The filters and their options, at least one.
    pub filters: Filters<'a>,
}

impl<'a> Subscribe<'a> {
    /// A SUBSCRIBE without properties.
    pub const fn new(
        packet_id: PacketId,
        filters: &'a [(TopicFilter<'a>, SubscriptionOptions)],
    ) -> Self {
        Subscribe {
            packet_id,
            properties: Properties::EMPTY,
            filters: Filters::new(filters),
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, v, PropertyContext::Subscribe)?;
        let raw = r.rest();
        let mut entries = Reader::new(raw);
        if entries.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        while !entries.is_empty() {
            let filter = read_filter(&mut entries)?;
            let options = check_options(entries.u8()?, v)?;
            if options.no_local && filter.shared().is_some() {
                return Err(DecodeError::SharedSubscriptionNoLocal);
            }
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters: Filters::from_raw(raw),
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::NoTopicFilters);
        }
        s.u16(self.packet_id.get())?;
        write_properties(s, v, &self.properties, PropertyContext::Subscribe)?;
        for (filter, options) in self.filters.iter() {
            if !v.is_v5() && options.has_v5_options() {
                return Err(EncodeError::NotInVersion);
            }
            if S::CHECK && options.no_local && filter.shared().is_some() {
                return Err(EncodeError::SharedSubscriptionNoLocal);
            }
            write_filter(s, &filter)?;
            s.u8(options.to_byte())?;
        }
        Ok(())
    }
}

/// Reads a list of reason codes, each allowed in `ctx` (3.x SUBACK codes are a subset).
fn read_codes<'a>(r: &mut Reader<'a>, ctx: ReasonContext) -> Result<ReasonCodes<'a>, DecodeError> {
    let raw = r.rest();
    if raw.is_empty() {
        return Err(DecodeError::UnexpectedEnd);
    }
    for &b in raw {
        if !ReasonCode::from_u8(b).is_some_and(|c| c.allowed_in(ctx)) {
            return Err(DecodeError::InvalidReasonCode(b));
        }
    }
    Ok(ReasonCodes::from_raw(raw))
}

/// Writes reason codes, each allowed in `ctx`.
fn write_codes<S: Sink>(
    s: &mut S,
    codes: &ReasonCodes<'_>,
    ctx: ReasonContext,
) -> Result<(), EncodeError> {
    for c in codes.iter() {
        if !c.allowed_in(ctx) {
            return Err(EncodeError::ReasonCodeNotAllowed(c));
        }
        s.u8(c as u8)?;
    }
    Ok(())
}

/// SUBACK: one result per filter of the SUBSCRIBE, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SubAck<'a> {
    /// The SUBSCRIBE this answers.
    pub packet_id: PacketId,
    /// SUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// Granted QoS or failure per filter; 3.x allows only granted QoS 0-2 and `UnspecifiedError`.
    pub reason_codes: ReasonCodes<'a>,
}

impl<'a> SubAck<'a> {
    /// A SUBACK without properties.
    pub const fn new(packet_id: PacketId, reason_codes: &'a [ReasonCode]) -> Self {
        SubAck {
            packet_id,
            properties: Properties::EMPTY,
            reason_codes: ReasonCodes::new(reason_codes),
        }
    }

    /// The granted QoS for a SUBACK reason code, `None` for a failure.
    pub const fn granted_qos(code: ReasonCode) -> Option<QoS> {
        match code {
            ReasonCode::Success => Some(QoS::AtMostOnce),
            ReasonCode::GrantedQoS1 => Some(QoS::AtLeastOnce),
            ReasonCode::GrantedQoS2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    fn context(v: ProtocolVersion) -> ReasonContext {
        if v.is_v5() {
            ReasonContext::SubAck
        } else {
            ReasonContext::SubAckV3
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, v, PropertyContext::SubAck)?;
        let reason_codes = read_codes(r, Self::context(v))?;
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.reason_codes.is_empty() {
            return Err(EncodeError::NoTopicFilters);
        }
        s.u16(self.packet_id.get())?;
        write_properties(s, v, &self.properties, PropertyContext::SubAck)?;
        write_codes(s, &self.reason_codes, Self::context(v))
    }
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Unsubscribe<'a> {
    /// Packet identifier echoed by UNSUBACK.
    pub packet_id: PacketId,
    /// UNSUBSCRIBE properties (MQTT 5): user properties.
    pub properties: Properties<'a>,
    /// The filters, at least one.
    pub filters: Unsubscriptions<'a>,
}

impl<'a> Unsubscribe<'a> {
    /// An UNSUBSCRIBE without properties.
    pub const fn new(packet_id: PacketId, filters: &'a [TopicFilter<'a>]) -> Self {
        Unsubscribe {
            packet_id,
            properties: Properties::EMPTY,
            filters: Unsubscriptions::new(filters),
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        let properties = read_properties(r, v, PropertyContext::Unsubscribe)?;
        let raw = r.rest();
        let mut entries = Reader::new(raw);
        if entries.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        while !entries.is_empty() {
            read_filter(&mut entries)?;
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters: Unsubscriptions::from_raw(raw),
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::NoTopicFilters);
        }
        s.u16(self.packet_id.get())?;
        write_properties(s, v, &self.properties, PropertyContext::Unsubscribe)?;
        for filter in self.filters.iter() {
            write_filter(s, &filter)?;
        }
        Ok(())
    }
}

/// UNSUBACK: confirms an UNSUBSCRIBE (MQTT 5: with one result per filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnsubAck<'a> {
    /// The UNSUBSCRIBE this answers.
    pub packet_id: PacketId,
    /// UNSUBACK properties (MQTT 5).
    pub properties: Properties<'a>,
    /// One result per filter (MQTT 5); empty before MQTT 5.
    pub reason_codes: ReasonCodes<'a>,
}

impl<'a> UnsubAck<'a> {
    /// An UNSUBACK without properties.
    pub const fn new(packet_id: PacketId, reason_codes: &'a [ReasonCode]) -> Self {
        UnsubAck {
            packet_id,
            properties: Properties::EMPTY,
            reason_codes: ReasonCodes::new(reason_codes),
        }
    }

    pub(crate) fn read(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(r)?;
        if !v.is_v5() {
            return Ok(UnsubAck::new(packet_id, &[]));
        }
        let properties = Properties::read(r, PropertyContext::UnsubAck)?;
        let reason_codes = read_codes(r, ReasonContext::UnsubAck)?;
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S, v: ProtocolVersion) -> Result<(), EncodeError> {
        s.u16(self.packet_id.get())?;
        if !v.is_v5() {
            if self.properties.is_empty() && self.reason_codes.is_empty() {
                return Ok(());
            }
            return Err(EncodeError::NotInVersion);
        }
        if self.reason_codes.is_empty() {
            return Err(EncodeError::NoTopicFilters);
        }
        self.properties.write(s, PropertyContext::UnsubAck)?;
        write_codes(s, &self.reason_codes, ReasonContext::UnsubAck)
    }
}
