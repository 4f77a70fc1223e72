//! Decode and encode errors: one variant per rule, each mapped to an MQTT 5 reason code.

use core::fmt;

use crate::{PropertyId, ReasonCode, TopicError};

/// Why received bytes are not a valid packet. Each variant names the rule that was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// The remaining length used a fifth byte.
    RemainingLengthTooLong,
    /// The packet is larger than the maximum packet size the receiver accepts.
    PacketTooLarge {
        /// Size of the whole packet, fixed header included.
        size: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// Packet type 0, or AUTH (15) before MQTT 5.
    InvalidPacketType(u8),
    /// Reserved bits of the fixed header flags do not have their required value.
    InvalidHeaderFlags,
    /// A QoS field held the value 3.
    InvalidQoS,
    /// A QoS 0 PUBLISH had its DUP flag set.
    DupWithQoS0,
    /// A packet identifier was 0.
    ZeroPacketId,
    /// A field ran past the end of the packet's remaining length.
    UnexpectedEnd,
    /// Bytes were left after the last field of the packet.
    TrailingBytes,
    /// A string was not well-formed UTF-8 (this includes encoded surrogates).
    InvalidUtf8,
    /// A string contained the null character U+0000.
    NullCharacter,
    /// A variable byte integer inside the packet was not minimal or ran over four bytes.
    InvalidVarInt,
    /// CONNECT's protocol name was neither `MQTT` nor `MQIsdp`.
    InvalidProtocolName,
    /// CONNECT's protocol level is not 3, 4 or 5.
    UnsupportedProtocolLevel(u8),
    /// CONNECT's protocol name does not go with its level (`MQIsdp` is level 3 only).
    ProtocolNameLevelMismatch,
    /// CONNECT's reserved flag bit was set.
    ConnectReservedFlag,
    /// Will QoS or Will Retain was set without the Will flag, or Will QoS was 3.
    InvalidWillFlags,
    /// A password was present without a user name (before MQTT 5).
    PasswordWithoutUsername,
    /// CONNACK's reserved acknowledge flag bits were set.
    InvalidConnAckFlags,
    /// CONNACK had session present set with a refusal code.
    SessionPresentOnRefusal,
    /// A reason code (or 3.x return code) that is not valid for this packet type.
    InvalidReasonCode(u8),
    /// A property identifier that does not exist.
    UnknownProperty(u8),
    /// A property that is not allowed in this packet.
    PropertyNotAllowed(PropertyId),
    /// A property that may appear once appeared twice.
    DuplicateProperty(PropertyId),
    /// A property held a value the protocol forbids (0 where it must be positive, a flag over 1).
    InvalidPropertyValue(PropertyId),
    /// The topic name is invalid.
    InvalidTopicName(TopicError),
    /// A topic filter is invalid.
    InvalidTopicFilter(TopicError),
    /// A v5 PUBLISH had an empty topic name and no topic alias.
    MissingTopic,
    /// SUBSCRIBE or UNSUBSCRIBE listed no topic filter.
    NoTopicFilters,
    /// Reserved bits of subscription options were set.
    InvalidSubscriptionOptions,
    /// A v5 subscription asked for retain handling 3.
    InvalidRetainHandling,
    /// A v5 subscription asked for maximum QoS 3 (malformed before v5, see `InvalidQoS`).
    InvalidSubscriptionQoS,
    /// Authentication data was sent without an authentication method.
    AuthenticationDataWithoutMethod,
    /// No Local was set on a shared subscription.
    SharedSubscriptionNoLocal,
}

impl DecodeError {
    /// The error for an invalid topic name: U+0000 makes the string malformed, whatever it is.
    pub(crate) const fn topic_name(e: TopicError) -> Self {
        match e {
            TopicError::NullCharacter => DecodeError::NullCharacter,
            e => DecodeError::InvalidTopicName(e),
        }
    }

    /// The error for an invalid topic filter.
    pub(crate) const fn topic_filter(e: TopicError) -> Self {
        match e {
            TopicError::NullCharacter => DecodeError::NullCharacter,
            e => DecodeError::InvalidTopicFilter(e),
        }
    }

    /// The MQTT 5 reason code to close the connection with.
    pub const fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolLevel(_) | ProtocolNameLevelMismatch => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidPropertyValue(PropertyId::TopicAlias) => ReasonCode::TopicAliasInvalid,
            DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | MissingTopic
            | NoTopicFilters
            | SharedSubscriptionNoLocal
            | InvalidRetainHandling
            | InvalidSubscriptionQoS
            | AuthenticationDataWithoutMethod
            | SessionPresentOnRefusal => ReasonCode::ProtocolError,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            RemainingLengthTooLong => f.write_str("remaining length is longer than four bytes"),
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            InvalidPacketType(t) => write!(f, "invalid packet type {t}"),
            InvalidHeaderFlags => f.write_str("reserved fixed-header flag bits are wrong"),
            InvalidQoS => f.write_str("QoS 3 is not a valid QoS"),
            DupWithQoS0 => f.write_str("DUP flag set on a QoS 0 PUBLISH"),
            ZeroPacketId => f.write_str("packet identifier 0 is not allowed"),
            UnexpectedEnd => f.write_str("a field runs past the end of the packet"),
            TrailingBytes => f.write_str("unexpected bytes after the last field of the packet"),
            InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            NullCharacter => f.write_str("string contains U+0000"),
            InvalidVarInt => f.write_str("malformed variable byte integer"),
            InvalidProtocolName => f.write_str("protocol name is neither MQTT nor MQIsdp"),
            UnsupportedProtocolLevel(l) => write!(f, "unsupported protocol level {l}"),
            ProtocolNameLevelMismatch => f.write_str("protocol name does not match its level"),
            ConnectReservedFlag => f.write_str("CONNECT reserved flag is set"),
            InvalidWillFlags => f.write_str("will QoS/retain set without a will, or will QoS 3"),
            PasswordWithoutUsername => f.write_str("password present without a user name"),
            InvalidConnAckFlags => f.write_str("CONNACK reserved flag bits are set"),
            SessionPresentOnRefusal => f.write_str("session present set on a refused CONNACK"),
            InvalidReasonCode(c) => write!(f, "reason code 0x{c:02x} is not valid here"),
            UnknownProperty(p) => write!(f, "unknown property identifier 0x{p:02x}"),
            PropertyNotAllowed(p) => write!(f, "property {p:?} is not allowed in this packet"),
            DuplicateProperty(p) => write!(f, "property {p:?} appears more than once"),
            InvalidPropertyValue(p) => write!(f, "property {p:?} has an invalid value"),
            InvalidTopicName(e) => write!(f, "invalid topic name: {e}"),
            InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
            MissingTopic => f.write_str("empty topic name without a topic alias"),
            NoTopicFilters => f.write_str("no topic filter in (UN)SUBSCRIBE"),
            InvalidSubscriptionOptions => f.write_str("reserved subscription option bits set"),
            InvalidRetainHandling => f.write_str("retain handling 3 is not valid"),
            InvalidSubscriptionQoS => f.write_str("subscription maximum QoS 3 is not valid"),
            AuthenticationDataWithoutMethod => {
                f.write_str("authentication data without an authentication method")
            }
            SharedSubscriptionNoLocal => f.write_str("No Local set on a shared subscription"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; `needed` is the whole packet's size.
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
    },
    /// The packet's remaining length is over 268 435 455 bytes.
    PacketTooLarge,
    /// A string or binary field is longer than 65 535 bytes.
    FieldTooLong,
    /// A string contains U+0000.
    NullCharacter,
    /// A property is not allowed in this packet.
    PropertyNotAllowed(PropertyId),
    /// A property that may appear once is listed twice.
    DuplicateProperty(PropertyId),
    /// A property's value is outside what the protocol allows.
    InvalidPropertyValue(PropertyId),
    /// The reason code is not valid for this packet (or cannot be expressed before MQTT 5).
    ReasonCodeNotAllowed(ReasonCode),
    /// QoS 0 PUBLISH with a packet id, or QoS 1/2 without one.
    PacketIdMismatch,
    /// DUP set on a QoS 0 PUBLISH.
    DupWithQoS0,
    /// The topic name is invalid.
    InvalidTopicName(TopicError),
    /// A topic filter is invalid.
    InvalidTopicFilter(TopicError),
    /// SUBSCRIBE or UNSUBSCRIBE without any filter.
    NoTopicFilters,
    /// The packet or one of its fields does not exist in this protocol version.
    NotInVersion,
    /// CONNACK with session present and a refusal code.
    SessionPresentOnRefusal,
    /// No Local set on a shared subscription.
    SharedSubscriptionNoLocal,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EncodeError::*;
        match self {
            BufferTooSmall { needed } => write!(f, "buffer too small: {needed} bytes needed"),
            PacketTooLarge => f.write_str("packet exceeds the 256 MiB protocol limit"),
            FieldTooLong => f.write_str("string or binary field longer than 65535 bytes"),
            NullCharacter => f.write_str("string contains U+0000"),
            PropertyNotAllowed(p) => write!(f, "property {p:?} is not allowed in this packet"),
            DuplicateProperty(p) => write!(f, "property {p:?} may appear only once"),
            InvalidPropertyValue(p) => write!(f, "property {p:?} has an invalid value"),
            ReasonCodeNotAllowed(c) => write!(f, "reason code {c:?} is not valid here"),
            PacketIdMismatch => f.write_str("packet id must be present exactly when QoS > 0"),
            DupWithQoS0 => f.write_str("DUP must not be set on a QoS 0 PUBLISH"),
            InvalidTopicName(e) => write!(f, "invalid topic name: {e}"),
            InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
            NoTopicFilters => f.write_str("(UN)SUBSCRIBE needs at least one topic filter"),
            NotInVersion => f.write_str("not available in this protocol version"),
            SessionPresentOnRefusal => f.write_str("session present set on a refused CONNACK"),
            SharedSubscriptionNoLocal => f.write_str("No Local set on a shared subscription"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}
