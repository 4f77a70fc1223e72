//! MQTT 5 properties: validated once when decoded, then iterated lazily from the borrowed bytes.

use core::fmt;

use crate::wire::{CountSink, Reader, Sink, varint_len};
use crate::{DecodeError, EncodeError, QoS, topic};

/// Largest value a variable byte integer (and so a subscription identifier) can hold.
const MAX_VARINT: u32 = 268_435_455;

macro_rules! property_ids {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        /// The identifier of an MQTT 5 property.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(u8)]
        pub enum PropertyId {
            $($(#[$doc])* $name = $value,)*
        }

        impl PropertyId {
            /// The property identifier for a byte, if it is defined.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some(PropertyId::$name),)*
                    _ => None,
                }
            }
        }
    };
}

property_ids! {
    /// Whether the payload is UTF-8.
    PayloadFormatIndicator = 0x01;
    /// Lifetime of the message in seconds.
    MessageExpiryInterval = 0x02;
    /// MIME type of the payload.
    ContentType = 0x03;
    /// Topic for a response message.
    ResponseTopic = 0x08;
    /// Data correlating a request with its response.
    CorrelationData = 0x09;
    /// Identifier of the subscription(s) a message matched.
    SubscriptionIdentifier = 0x0B;
    /// How long the session outlives the connection, in seconds.
    SessionExpiryInterval = 0x11;
    /// Client identifier chosen by the server.
    AssignedClientIdentifier = 0x12;
    /// Keep-alive imposed by the server.
    ServerKeepAlive = 0x13;
    /// Name of the extended authentication method.
    AuthenticationMethod = 0x15;
    /// Data of the extended authentication exchange.
    AuthenticationData = 0x16;
    /// Whether reason strings and user properties may be sent on failures.
    RequestProblemInformation = 0x17;
    /// Delay before the will message is published, in seconds.
    WillDelayInterval = 0x18;
    /// Whether the server should return response information.
    RequestResponseInformation = 0x19;
    /// Basis for response topics.
    ResponseInformation = 0x1A;
    /// Another server the client should use.
    ServerReference = 0x1C;
    /// Human-readable reason.
    ReasonString = 0x1F;
    /// How many QoS 1/2 publishes the sender accepts at once.
    ReceiveMaximum = 0x21;
    /// Highest topic alias the sender accepts.
    TopicAliasMaximum = 0x22;
    /// Short number standing for a topic name.
    TopicAlias = 0x23;
    /// Highest QoS the server supports.
    MaximumQoS = 0x24;
    /// Whether the server supports retained messages.
    RetainAvailable = 0x25;
    /// An application-defined name/value pair.
    UserProperty = 0x26;
    /// Largest packet the sender accepts.
    MaximumPacketSize = 0x27;
    /// Whether the server supports wildcard subscriptions.
    WildcardSubscriptionAvailable = 0x28;
    /// Whether the server supports subscription identifiers.
    SubscriptionIdentifierAvailable = 0x29;
    /// Whether the server supports shared subscriptions.
    SharedSubscriptionAvailable = 0x2A;
}

/// The packet (or part of one) a property list belongs to; each allows its own properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum PropertyContext {
    /// CONNECT.
    Connect = 0,
    /// The will properties inside CONNECT.
    Will = 1,
    /// CONNACK.
    ConnAck = 2,
    /// PUBLISH.
    Publish = 3,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubAck = 4,
    /// SUBSCRIBE.
    Subscribe = 5,
    /// SUBACK.
    SubAck = 6,
    /// UNSUBSCRIBE.
    Unsubscribe = 7,
    /// UNSUBACK.
    UnsubAck = 8,
    /// DISCONNECT.
    Disconnect = 9,
    /// AUTH.
    Auth = 10,
}

impl PropertyId {
    /// Whether the property may appear in the given packet.
    pub const fn allowed_in(self, ctx: PropertyContext) -> bool {
        use PropertyContext as C;
        const fn bits(mut ctxs: &[PropertyContext]) -> u16 {
            let mut m = 0;
            while let Some((first, rest)) = ctxs.split_first() {
                m |= 1 << *first as u8;
                ctxs = rest;
            }
            m
        }
        let mask = match self {
            PropertyId::PayloadFormatIndicator
            | PropertyId::MessageExpiryInterval
            | PropertyId::ContentType
            | PropertyId::ResponseTopic
            | PropertyId::CorrelationData => bits(&[C::Publish, C::Will]),
            PropertyId::SubscriptionIdentifier => bits(&[C::Publish, C::Subscribe]),
            PropertyId::SessionExpiryInterval => bits(&[C::Connect, C::ConnAck, C::Disconnect]),
            PropertyId::AssignedClientIdentifier
            | PropertyId::ServerKeepAlive
            | PropertyId::ResponseInformation
            | PropertyId::MaximumQoS
            | PropertyId::RetainAvailable
            | PropertyId::WildcardSubscriptionAvailable
            | PropertyId::SubscriptionIdentifierAvailable
            | PropertyId::SharedSubscriptionAvailable => bits(&[C::ConnAck]),
            PropertyId::AuthenticationMethod | PropertyId::AuthenticationData => {
                bits(&[C::Connect, C::ConnAck, C::Auth])
            }
            PropertyId::RequestProblemInformation | PropertyId::RequestResponseInformation => {
                bits(&[C::Connect])
            }
            PropertyId::WillDelayInterval => bits(&[C::Will]),
            PropertyId::ServerReference => bits(&[C::ConnAck, C::Disconnect]),
            PropertyId::ReasonString => bits(&[
                C::ConnAck,
                C::PubAck,
                C::SubAck,
                C::UnsubAck,
                C::Disconnect,
                C::Auth,
            ]),
            PropertyId::ReceiveMaximum
            | PropertyId::TopicAliasMaximum
            | PropertyId::MaximumPacketSize => bits(&[C::Connect, C::ConnAck]),
            PropertyId::TopicAlias => bits(&[C::Publish]),
            PropertyId::UserProperty => u16::MAX,
        };
        mask & (1 << ctx as u8) != 0
    }

    /// Whether the property may appear more than once in the given packet.
    pub const fn repeatable_in(self, ctx: PropertyContext) -> bool {
        match self {
            PropertyId::UserProperty => true,
            // A PUBLISH to a subscriber may carry one identifier per matching subscription.
            PropertyId::SubscriptionIdentifier => matches!(ctx, PropertyContext::Publish),
            _ => false,
        }
    }
}

/// One MQTT 5 property with its value, borrowing strings and binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Property<'a> {
    /// `true` if the payload is UTF-8, `false` for unspecified bytes.
    PayloadFormatIndicator(bool),
    /// Message lifetime in seconds.
    MessageExpiryInterval(u32),
    /// MIME type of the payload.
    ContentType(&'a str),
    /// Topic name for a response.
    ResponseTopic(&'a str),
    /// Correlation data for a response.
    CorrelationData(&'a [u8]),
    /// Subscription identifier, 1 to 268 435 455.
    SubscriptionIdentifier(u32),
    /// Session expiry in seconds.
    SessionExpiryInterval(u32),
    /// Client identifier assigned by the server.
    AssignedClientIdentifier(&'a str),
    /// Keep-alive imposed by the server, in seconds.
    ServerKeepAlive(u16),
    /// Authentication method name.
    AuthenticationMethod(&'a str),
    /// Authentication data.
    AuthenticationData(&'a [u8]),
    /// Whether problem information may be sent.
    RequestProblemInformation(bool),
    /// Will delay in seconds.
    WillDelayInterval(u32),
    /// Whether response information is requested.
    RequestResponseInformation(bool),
    /// Response information.
    ResponseInformation(&'a str),
    /// Another server to use.
    ServerReference(&'a str),
    /// Human-readable reason.
    ReasonString(&'a str),
    /// Receive maximum, at least 1.
    ReceiveMaximum(u16),
    /// Topic alias maximum.
    TopicAliasMaximum(u16),
    /// Topic alias, at least 1.
    TopicAlias(u16),
    /// Maximum QoS: 0 or 1 (its absence means 2).
    MaximumQoS(QoS),
    /// Whether retained messages are supported.
    RetainAvailable(bool),
    /// A user-defined name and value.
    UserProperty(&'a str, &'a str),
    /// Maximum packet size, at least 1.
    MaximumPacketSize(u32),
    /// Whether wildcard subscriptions are supported.
    WildcardSubscriptionAvailable(bool),
    /// Whether subscription identifiers are supported.
    SubscriptionIdentifierAvailable(bool),
    /// Whether shared subscriptions are supported.
    SharedSubscriptionAvailable(bool),
}

impl<'a> Property<'a> {
    /// This property's identifier.
    pub const fn id(&self) -> PropertyId {
        match self {
            Property::PayloadFormatIndicator(_) => PropertyId::PayloadFormatIndicator,
            Property::MessageExpiryInterval(_) => PropertyId::MessageExpiryInterval,
            Property::ContentType(_) => PropertyId::ContentType,
            Property::ResponseTopic(_) => PropertyId::ResponseTopic,
            Property::CorrelationData(_) => PropertyId::CorrelationData,
            Property::SubscriptionIdentifier(_) => PropertyId::SubscriptionIdentifier,
            Property::SessionExpiryInterval(_) => PropertyId::SessionExpiryInterval,
            Property::AssignedClientIdentifier(_) => PropertyId::AssignedClientIdentifier,
            Property::ServerKeepAlive(_) => PropertyId::ServerKeepAlive,
            Property::AuthenticationMethod(_) => PropertyId::AuthenticationMethod,
            Property::AuthenticationData(_) => PropertyId::AuthenticationData,
            Property::RequestProblemInformation(_) => PropertyId::RequestProblemInformation,
            Property::WillDelayInterval(_) => PropertyId::WillDelayInterval,
            Property::RequestResponseInformation(_) => PropertyId::RequestResponseInformation,
            Property::ResponseInformation(_) => PropertyId::ResponseInformation,
            Property::ServerReference(_) => PropertyId::ServerReference,
            Property::ReasonString(_) => PropertyId::ReasonString,
            Property::ReceiveMaximum(_) => PropertyId::ReceiveMaximum,
            Property::TopicAliasMaximum(_) => PropertyId::TopicAliasMaximum,
            Property::TopicAlias(_) => PropertyId::TopicAlias,
            Property::MaximumQoS(_) => PropertyId::MaximumQoS,
            Property::RetainAvailable(_) => PropertyId::RetainAvailable,
            Property::UserProperty(..) => PropertyId::UserProperty,
            Property::MaximumPacketSize(_) => PropertyId::MaximumPacketSize,
            Property::WildcardSubscriptionAvailable(_) => PropertyId::WildcardSubscriptionAvailable,
            Property::SubscriptionIdentifierAvailable(_) => {
                PropertyId::SubscriptionIdentifierAvailable
            }
            Property::SharedSubscriptionAvailable(_) => PropertyId::SharedSubscriptionAvailable,
        }
    }

    /// Whether the value is one the protocol allows (the type already bounds most of them).
    fn value_is_valid(&self) -> bool {
        match *self {
            Property::SubscriptionIdentifier(v) => (1..=MAX_VARINT).contains(&v),
            Property::ReceiveMaximum(v) | Property::TopicAlias(v) => v != 0,
            Property::MaximumPacketSize(v) => v != 0,
            Property::MaximumQoS(q) => q != QoS::ExactlyOnce,
            Property::ResponseTopic(t) => topic::validate_name(t).is_ok(),
            _ => true,
        }
    }

    /// Reads one property; the caller checks context, duplicates and values.
    ///
    /// With `CHECKED` false the bytes were validated before (a decoded list being iterated),
    /// so strings skip the U+0000 scan; UTF-8 is still proven, as `&str` requires.
    fn read<const CHECKED: bool>(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let string = |r: &mut Reader<'a>| if CHECKED { r.string() } else { r.utf8() };
        let raw_id = r.varint()?;
        let id = u8::try_from(raw_id)
            .ok()
            .and_then(PropertyId::from_u8)
            .ok_or(DecodeError::UnknownProperty(raw_id.min(255) as u8))?;
        let flag = |r: &mut Reader<'a>| match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        };
        Ok(match id {
            PropertyId::PayloadFormatIndicator => Property::PayloadFormatIndicator(flag(r)?),
            PropertyId::MessageExpiryInterval => Property::MessageExpiryInterval(r.u32()?),
            PropertyId::ContentType => Property::ContentType(string(r)?),
            PropertyId::ResponseTopic => Property::ResponseTopic(string(r)?),
            PropertyId::CorrelationData => Property::CorrelationData(r.binary()?),
            PropertyId::SubscriptionIdentifier => Property::SubscriptionIdentifier(r.varint()?),
            PropertyId::SessionExpiryInterval => Property::SessionExpiryInterval(r.u32()?),
            PropertyId::AssignedClientIdentifier => Property::AssignedClientIdentifier(string(r)?),
            PropertyId::ServerKeepAlive => Property::ServerKeepAlive(r.u16()?),
            PropertyId::AuthenticationMethod => Property::AuthenticationMethod(string(r)?),
            PropertyId::AuthenticationData => Property::AuthenticationData(r.binary()?),
            PropertyId::RequestProblemInformation => Property::RequestProblemInformation(flag(r)?),
            PropertyId::WillDelayInterval => Property::WillDelayInterval(r.u32()?),
            PropertyId::RequestResponseInformation => {
                Property::RequestResponseInformation(flag(r)?)
            }
            PropertyId::ResponseInformation => Property::ResponseInformation(string(r)?),
            PropertyId::ServerReference => Property::ServerReference(string(r)?),
            PropertyId::ReasonString => Property::ReasonString(string(r)?),
            PropertyId::ReceiveMaximum => Property::ReceiveMaximum(r.u16()?),
            PropertyId::TopicAliasMaximum => Property::TopicAliasMaximum(r.u16()?),
            PropertyId::TopicAlias => Property::TopicAlias(r.u16()?),
            PropertyId::MaximumQoS => Property::MaximumQoS(match r.u8()? {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => return Err(DecodeError::InvalidPropertyValue(id)),
            }),
            PropertyId::RetainAvailable => Property::RetainAvailable(flag(r)?),
            PropertyId::UserProperty => Property::UserProperty(string(r)?, string(r)?),
            PropertyId::MaximumPacketSize => Property::MaximumPacketSize(r.u32()?),
            PropertyId::WildcardSubscriptionAvailable => {
                Property::WildcardSubscriptionAvailable(flag(r)?)
            }
            PropertyId::SubscriptionIdentifierAvailable => {
                Property::SubscriptionIdentifierAvailable(flag(r)?)
            }
            PropertyId::SharedSubscriptionAvailable => {
                Property::SharedSubscriptionAvailable(flag(r)?)
            }
        })
    }

    /// Writes the identifier and value.
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        s.u8(self.id() as u8)?;
        match *self {
            Property::PayloadFormatIndicator(b)
            | Property::RequestProblemInformation(b)
            | Property::RequestResponseInformation(b)
            | Property::RetainAvailable(b)
            | Property::WildcardSubscriptionAvailable(b)
            | Property::SubscriptionIdentifierAvailable(b)
            | Property::SharedSubscriptionAvailable(b) => s.u8(u8::from(b)),
            Property::MaximumQoS(q) => s.u8(q as u8),
            Property::MessageExpiryInterval(v)
            | Property::SessionExpiryInterval(v)
            | Property::WillDelayInterval(v)
            | Property::MaximumPacketSize(v) => s.u32(v),
            Property::ServerKeepAlive(v)
            | Property::ReceiveMaximum(v)
            | Property::TopicAliasMaximum(v)
            | Property::TopicAlias(v) => s.u16(v),
            Property::SubscriptionIdentifier(v) => s.varint(v as usize),
            Property::ContentType(v)
            | Property::ResponseTopic(v)
            | Property::AssignedClientIdentifier(v)
            | Property::AuthenticationMethod(v)
            | Property::ResponseInformation(v)
            | Property::ServerReference(v)
            | Property::ReasonString(v) => s.string(v),
            Property::CorrelationData(v) | Property::AuthenticationData(v) => s.binary(v),
            Property::UserProperty(k, v) => {
                s.string(k)?;
                s.string(v)
            }
        }
    }

    /// Encoded size of identifier and value.
    fn encoded_len(&self) -> usize {
        1 + match *self {
            Property::PayloadFormatIndicator(_)
            | Property::RequestProblemInformation(_)
            | Property::RequestResponseInformation(_)
            | Property::RetainAvailable(_)
            | Property::WildcardSubscriptionAvailable(_)
            | Property::SubscriptionIdentifierAvailable(_)
            | Property::SharedSubscriptionAvailable(_)
            | Property::MaximumQoS(_) => 1,
            Property::MessageExpiryInterval(_)
            | Property::SessionExpiryInterval(_)
            | Property::WillDelayInterval(_)
            | Property::MaximumPacketSize(_) => 4,
            Property::ServerKeepAlive(_)
            | Property::ReceiveMaximum(_)
            | Property::TopicAliasMaximum(_)
            | Property::TopicAlias(_) => 2,
            Property::SubscriptionIdentifier(v) => varint_len(v as usize),
            Property::ContentType(v)
            | Property::ResponseTopic(v)
            | Property::AssignedClientIdentifier(v)
            | Property::AuthenticationMethod(v)
            | Property::ResponseInformation(v)
            | Property::ServerReference(v)
            | Property::ReasonString(v) => 2 + v.len(),
            Property::CorrelationData(v) | Property::AuthenticationData(v) => 2 + v.len(),
            Property::UserProperty(k, v) => 4 + k.len() + v.len(),
        }
    }
}

/// Tracks which once-only properties have been seen.
struct Seen(u64);

impl Seen {
    fn contains(&self, id: PropertyId) -> bool {
        self.0 & (1u64 << (id as u8)) != 0
    }

    /// Authentication data only means something with a method to interpret it.
    fn has_data_without_method(&self) -> bool {
        self.contains(PropertyId::AuthenticationData)
            && !self.contains(PropertyId::AuthenticationMethod)
    }

    /// Records `id`; fails if it may appear once and already did.
    fn insert(&mut self, id: PropertyId, ctx: PropertyContext) -> bool {
        let bit = 1u64 << (id as u8);
        if self.0 & bit != 0 && !id.repeatable_in(ctx) {
            return false;
        }
        self.0 |= bit;
        true
    }
}

/// Checks that `p` may appear in `ctx`, given the properties `seen` before it.
fn check_fits(p: &Property<'_>, ctx: PropertyContext, seen: &mut Seen) -> Result<(), EncodeError> {
    let id = p.id();
    if !id.allowed_in(ctx) {
        return Err(EncodeError::PropertyNotAllowed(id));
    }
    if !seen.insert(id, ctx) {
        return Err(EncodeError::DuplicateProperty(id));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// Wire bytes (without the length prefix), validated for the packet they were read in.
    Raw(&'a [u8], PropertyContext),
    /// A list given by the user, validated when encoded.
    List(&'a [Property<'a>]),
}

/// The property list of a packet: either decoded bytes or a caller's slice of [`Property`].
///
/// Decoded lists are validated once and iterated lazily, so they cost nothing until read.
#[derive(Clone, Copy)]
pub struct Properties<'a>(Repr<'a>);

impl<'a> Properties<'a> {
    /// No properties.
    pub const EMPTY: Properties<'static> = Properties(Repr::List(&[]));

    /// Properties to encode, given as a slice.
    pub const fn new(list: &'a [Property<'a>]) -> Self {
        Properties(Repr::List(list))
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        match self.0 {
            Repr::Raw(b, _) => b.is_empty(),
            Repr::List(l) => l.is_empty(),
        }
    }

    /// Iterates over the properties in wire order.
    pub fn iter(&self) -> PropertiesIter<'a> {
        PropertiesIter(match self.0 {
            Repr::Raw(b, _) => IterRepr::Raw(Reader::new(b)),
            Repr::List(l) => IterRepr::List(l.iter()),
        })
    }

    /// The first property with this identifier.
    pub fn get(&self, id: PropertyId) -> Option<Property<'a>> {
        self.iter().find(|p| p.id() == id)
    }

    /// All user properties as (name, value) pairs.
    pub fn user_properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        self.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k, v)),
            _ => None,
        })
    }

    /// All subscription identifiers (a PUBLISH may carry several).
    pub fn subscription_identifiers(&self) -> impl Iterator<Item = u32> + use<'a> {
        self.iter().filter_map(|p| match p {
            Property::SubscriptionIdentifier(v) => Some(v),
            _ => None,
        })
    }

    /// Reads a property list (length prefix included) and validates it for `ctx`.
    pub(crate) fn read(r: &mut Reader<'a>, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        let raw = r.bytes(len)?;
        let mut body = Reader::new(raw);
        let mut seen = Seen(0);
        while !body.is_empty() {
            let p = Property::read::<true>(&mut body)?;
            let id = p.id();
            if !id.allowed_in(ctx) {
                return Err(DecodeError::PropertyNotAllowed(id));
            }
            if !seen.insert(id, ctx) {
                return Err(DecodeError::DuplicateProperty(id));
            }
            if !p.value_is_valid() {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
        }
        if seen.has_data_without_method() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok(Properties(Repr::Raw(raw, ctx)))
    }

    /// Length of the property bytes (without the length prefix), checked against `ctx`.
    pub(crate) fn checked_len(&self, ctx: PropertyContext) -> Result<usize, EncodeError> {
        let mut count = CountSink::default();
        self.write(&mut count, ctx)?;
        Ok(self.body_len())
    }

    /// Length of the property bytes, without the length prefix.
    fn body_len(&self) -> usize {
        match self.0 {
            Repr::Raw(b, _) => b.len(),
            Repr::List(l) => l.iter().map(Property::encoded_len).sum(),
        }
    }

    /// Writes the length prefix and the properties, checking them against `ctx`.
    pub(crate) fn write<S: Sink>(
        &self,
        s: &mut S,
        ctx: PropertyContext,
    ) -> Result<(), EncodeError> {
        match self.0 {
            Repr::Raw(b, read_in) => {
                // Values were checked when decoded; a list moved into another kind of packet
                // (a will's properties into a PUBLISH, say) must still fit its new packet.
                if S::CHECK && read_in != ctx {
                    let mut seen = Seen(0);
                    for p in self.iter() {
                        check_fits(&p, ctx, &mut seen)?;
                    }
                }
                s.varint(b.len())?;
                s.put(b)
            }
            Repr::List(list) => {
                s.varint(self.body_len())?;
                let mut seen = Seen(0);
                for p in list {
                    if S::CHECK {
                        check_fits(p, ctx, &mut seen)?;
                        if !p.value_is_valid() {
                            return Err(EncodeError::InvalidPropertyValue(p.id()));
                        }
                    }
                    p.write(s)?;
                }
                if S::CHECK && seen.has_data_without_method() {
                    return Err(EncodeError::InvalidPropertyValue(
                        PropertyId::AuthenticationData,
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for Properties<'_> {
    fn default() -> Self {
        Properties::EMPTY
    }
}

impl PartialEq for Properties<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Properties<'_> {}

impl fmt::Debug for Properties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Properties<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "[");
        for p in self.iter() {
            defmt::write!(f, "{}, ", p);
        }
        defmt::write!(f, "]");
    }
}

impl<'a> IntoIterator for &Properties<'a> {
    type Item = Property<'a>;
    type IntoIter = PropertiesIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Clone)]
enum IterRepr<'a> {
    Raw(Reader<'a>),
    List(core::slice::Iter<'a, Property<'a>>),
}

/// Iterator over a [`Properties`] list.
#[derive(Clone)]
pub struct PropertiesIter<'a>(IterRepr<'a>);

impl<'a> Iterator for PropertiesIter<'a> {
    type Item = Property<'a>;

    fn next(&mut self) -> Option<Property<'a>> {
        match &mut self.0 {
            // Raw bytes were validated when decoded, so reading cannot fail here.
            IterRepr::Raw(r) if !r.is_empty() => Property::read::<false>(r).ok(),
            IterRepr::Raw(_) => None,
            IterRepr::List(it) => it.next().copied(),
        }
    }
}
