//! Property tests of the codec: every valid packet of every type and protocol version round-trips
//! byte for byte, every strict prefix is `Incomplete`, concatenated packets stream back one by
//! one, `frame` agrees with the encoder, and arbitrary or mutated bytes never panic the decoder
//! (and whatever it accepts re-encodes to something it accepts again).
//!
//! Packets borrow their data, so the strategies generate an owned description ([`Desc`]) and the
//! test bodies build the borrowed [`Packet`] from it with [`with_packet`].

use std::num::NonZeroU16;

use mqtt_proto::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Filters,
    MAX_REMAINING_LENGTH, Packet, PacketId, PacketType, Properties, Property, PropertyContext,
    PropertyId, ProtocolVersion, Publish, QoS, ReasonCode, ReasonCodes, RetainHandling, Status,
    SubAck, Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe,
    Unsubscriptions, Will, decode, frame,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use ProtocolVersion::{V5, V31, V311};

// ---------------------------------------------------------------------------------------------
// Reason code tables, written out from the MQTT 5 specification (independently of the codec).
// ---------------------------------------------------------------------------------------------

const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// The reason codes that have a 3.x CONNACK return code (0 to 5).
const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_V5: &[u8] = &[0x00, 0x92];
const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];

fn codes(table: &[u8]) -> Vec<ReasonCode> {
    table
        .iter()
        .map(|&b| ReasonCode::from_u8(b).unwrap())
        .collect()
}

fn reason(table: &[u8]) -> BoxedStrategy<ReasonCode> {
    select(codes(table)).boxed()
}

/// Every reason code the crate defines.
fn any_reason() -> BoxedStrategy<ReasonCode> {
    select(
        (0..=255u8)
            .filter_map(ReasonCode::from_u8)
            .collect::<Vec<_>>(),
    )
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Owned descriptions of packets.
// ---------------------------------------------------------------------------------------------

/// A property value, owned.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    U16(u16),
    U32(u32),
    QoS(QoS),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// A property, owned.
#[derive(Debug, Clone, PartialEq)]
struct OProp(PropertyId, Val);

impl OProp {
    fn borrow(&self) -> Property<'_> {
        use PropertyId as P;
        match (self.0, &self.1) {
            (P::PayloadFormatIndicator, Val::Bool(b)) => Property::PayloadFormatIndicator(*b),
            (P::MessageExpiryInterval, Val::U32(v)) => Property::MessageExpiryInterval(*v),
            (P::ContentType, Val::Str(s)) => Property::ContentType(s),
            (P::ResponseTopic, Val::Str(s)) => Property::ResponseTopic(s),
            (P::CorrelationData, Val::Bin(b)) => Property::CorrelationData(b),
            (P::SubscriptionIdentifier, Val::U32(v)) => Property::SubscriptionIdentifier(*v),
            (P::SessionExpiryInterval, Val::U32(v)) => Property::SessionExpiryInterval(*v),
            (P::AssignedClientIdentifier, Val::Str(s)) => Property::AssignedClientIdentifier(s),
            (P::ServerKeepAlive, Val::U16(v)) => Property::ServerKeepAlive(*v),
            (P::AuthenticationMethod, Val::Str(s)) => Property::AuthenticationMethod(s),
            (P::AuthenticationData, Val::Bin(b)) => Property::AuthenticationData(b),
            (P::RequestProblemInformation, Val::Bool(b)) => Property::RequestProblemInformation(*b),
            (P::WillDelayInterval, Val::U32(v)) => Property::WillDelayInterval(*v),
            (P::RequestResponseInformation, Val::Bool(b)) => {
                Property::RequestResponseInformation(*b)
            }
            (P::ResponseInformation, Val::Str(s)) => Property::ResponseInformation(s),
            (P::ServerReference, Val::Str(s)) => Property::ServerReference(s),
            (P::ReasonString, Val::Str(s)) => Property::ReasonString(s),
            (P::ReceiveMaximum, Val::U16(v)) => Property::ReceiveMaximum(*v),
            (P::TopicAliasMaximum, Val::U16(v)) => Property::TopicAliasMaximum(*v),
            (P::TopicAlias, Val::U16(v)) => Property::TopicAlias(*v),
            (P::MaximumQoS, Val::QoS(q)) => Property::MaximumQoS(*q),
            (P::RetainAvailable, Val::Bool(b)) => Property::RetainAvailable(*b),
            (P::UserProperty, Val::Pair(k, v)) => Property::UserProperty(k, v),
            (P::MaximumPacketSize, Val::U32(v)) => Property::MaximumPacketSize(*v),
            (P::WildcardSubscriptionAvailable, Val::Bool(b)) => {
                Property::WildcardSubscriptionAvailable(*b)
            }
            (P::SubscriptionIdentifierAvailable, Val::Bool(b)) => {
                Property::SubscriptionIdentifierAvailable(*b)
            }
            (P::SharedSubscriptionAvailable, Val::Bool(b)) => {
                Property::SharedSubscriptionAvailable(*b)
            }
            (id, val) => unreachable!("value {val:?} does not fit property {id:?}"),
        }
    }
}

fn borrow_all(props: &[OProp]) -> Vec<Property<'_>> {
    props.iter().map(OProp::borrow).collect()
}

#[derive(Debug, Clone)]
struct OWill {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    props: Vec<OProp>,
}

#[derive(Debug, Clone)]
struct OConnect {
    protocol: ProtocolVersion,
    clean_start: bool,
    keep_alive: u16,
    props: Vec<OProp>,
    client_id: String,
    will: Option<OWill>,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct OPublish {
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: String,
    packet_id: Option<PacketId>,
    props: Vec<OProp>,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct OAck {
    packet_id: PacketId,
    reason: ReasonCode,
    props: Vec<OProp>,
}

/// An owned description of one packet.
#[derive(Debug, Clone)]
enum Desc {
    Connect(OConnect),
    ConnAck {
        session_present: bool,
        reason: ReasonCode,
        props: Vec<OProp>,
    },
    Publish(OPublish),
    PubAck(OAck),
    PubRec(OAck),
    PubRel(OAck),
    PubComp(OAck),
    Subscribe {
        packet_id: PacketId,
        props: Vec<OProp>,
        filters: Vec<(String, SubscriptionOptions)>,
    },
    SubAck {
        packet_id: PacketId,
        props: Vec<OProp>,
        codes: Vec<ReasonCode>,
    },
    Unsubscribe {
        packet_id: PacketId,
        props: Vec<OProp>,
        filters: Vec<String>,
    },
    UnsubAck {
        packet_id: PacketId,
        props: Vec<OProp>,
        codes: Vec<ReasonCode>,
    },
    PingReq,
    PingResp,
    Disconnect {
        reason: ReasonCode,
        props: Vec<OProp>,
    },
    Auth {
        reason: ReasonCode,
        props: Vec<OProp>,
    },
}

/// Builds the borrowed packet described by `d` and hands it to `f`.
fn with_packet<R>(d: &Desc, f: impl FnOnce(Packet<'_>) -> R) -> R {
    match d {
        Desc::Connect(c) => {
            let props = borrow_all(&c.props);
            let will_props = c
                .will
                .as_ref()
                .map(|w| borrow_all(&w.props))
                .unwrap_or_default();
            let will = c.will.as_ref().map(|w| Will {
                topic: TopicName::new(&w.topic).unwrap(),
                payload: &w.payload,
                qos: w.qos,
                retain: w.retain,
                properties: Properties::new(&will_props),
            });
            f(Packet::Connect(Connect {
                protocol: c.protocol,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                properties: Properties::new(&props),
                client_id: &c.client_id,
                will,
                username: c.username.as_deref(),
                password: c.password.as_deref(),
            }))
        }
        Desc::ConnAck {
            session_present,
            reason,
            props,
        } => {
            let props = borrow_all(props);
            f(Packet::ConnAck(ConnAck {
                session_present: *session_present,
                reason_code: *reason,
                properties: Properties::new(&props),
            }))
        }
        Desc::Publish(p) => {
            let props = borrow_all(&p.props);
            f(Packet::Publish(Publish {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: &p.topic,
                packet_id: p.packet_id,
                properties: Properties::new(&props),
                payload: &p.payload,
            }))
        }
        Desc::PubAck(a) | Desc::PubRec(a) | Desc::PubRel(a) | Desc::PubComp(a) => {
            let props = borrow_all(&a.props);
            let ack = Ack {
                packet_id: a.packet_id,
                reason_code: a.reason,
                properties: Properties::new(&props),
            };
            f(match d {
                Desc::PubAck(_) => Packet::PubAck(ack),
                Desc::PubRec(_) => Packet::PubRec(ack),
                Desc::PubRel(_) => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            })
        }
        Desc::Subscribe {
            packet_id,
            props,
            filters,
        } => {
            let props = borrow_all(props);
            let filters: Vec<_> = filters
                .iter()
                .map(|(f, o)| (TopicFilter::new(f).unwrap(), *o))
                .collect();
            f(Packet::Subscribe(Subscribe {
                packet_id: *packet_id,
                properties: Properties::new(&props),
                filters: Filters::new(&filters),
            }))
        }
        Desc::SubAck {
            packet_id,
            props,
            codes,
        } => {
            let props = borrow_all(props);
            f(Packet::SubAck(SubAck {
                packet_id: *packet_id,
                properties: Properties::new(&props),
                reason_codes: ReasonCodes::new(codes),
            }))
        }
        Desc::Unsubscribe {
            packet_id,
            props,
            filters,
        } => {
            let props = borrow_all(props);
            let filters: Vec<_> = filters
                .iter()
                .map(|f| TopicFilter::new(f).unwrap())
                .collect();
            f(Packet::Unsubscribe(Unsubscribe {
                packet_id: *packet_id,
                properties: Properties::new(&props),
                filters: Unsubscriptions::new(&filters),
            }))
        }
        Desc::UnsubAck {
            packet_id,
            props,
            codes,
        } => {
            let props = borrow_all(props);
            f(Packet::UnsubAck(UnsubAck {
                packet_id: *packet_id,
                properties: Properties::new(&props),
                reason_codes: ReasonCodes::new(codes),
            }))
        }
        Desc::PingReq => f(Packet::PingReq),
        Desc::PingResp => f(Packet::PingResp),
        Desc::Disconnect { reason, props } => {
            let props = borrow_all(props);
            f(Packet::Disconnect(Disconnect {
                reason_code: *reason,
                properties: Properties::new(&props),
            }))
        }
        Desc::Auth { reason, props } => {
            let props = borrow_all(props);
            f(Packet::Auth(Auth {
                reason_code: *reason,
                properties: Properties::new(&props),
            }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for valid packets.
// ---------------------------------------------------------------------------------------------

fn version() -> BoxedStrategy<ProtocolVersion> {
    select(vec![V31, V311, V5]).boxed()
}

fn qos() -> BoxedStrategy<QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]).boxed()
}

fn packet_id() -> BoxedStrategy<PacketId> {
    prop_oneof![
        1 => Just(1u16),
        1 => Just(u16::MAX),
        6 => 1..=u16::MAX,
    ]
    .prop_map(|n| NonZeroU16::new(n).unwrap())
    .boxed()
}

/// Any character an MQTT string may hold (everything but U+0000).
fn mqtt_char() -> BoxedStrategy<char> {
    any::<char>()
        .prop_filter("no U+0000", |c| *c != '\0')
        .boxed()
}

/// A UTF-8 string field: any characters but U+0000, mostly short.
fn mqtt_string() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[a-zA-Z0-9 /+#$_-]{1,12}",
        3 => vec(mqtt_char(), 1..6).prop_map(String::from_iter),
        1 => "[a-z]{200,400}",
    ]
    .boxed()
}

fn binary() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        6 => vec(any::<u8>(), 1..16),
        1 => vec(any::<u8>(), 200..400),
    ]
    .boxed()
}

fn payload() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        12 => vec(any::<u8>(), 1..40),
        2 => vec(any::<u8>(), 100..300),
        // Long enough for a three-byte remaining length.
        1 => (16_380..17_000usize, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
    .boxed()
}

/// One level of a topic name: no '/', '+', '#' or U+0000; may be empty.
fn level() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        6 => "[a-z0-9$ ]{1,5}",
        2 => vec(
            mqtt_char().prop_filter("not a separator or wildcard", |c| !matches!(c, '/' | '+' | '#')),
            1..4,
        )
        .prop_map(String::from_iter),
        1 => Just("$SYS".to_string()),
    ]
    .boxed()
}

fn topic_name() -> BoxedStrategy<String> {
    prop_oneof![
        12 => vec(level(), 1..5).prop_map(|l| l.join("/")),
        1 => "[a-z/]{300,600}",
    ]
    .prop_map(|s| if s.is_empty() { "t".to_string() } else { s })
    .boxed()
}

/// A filter without a `$share/` prefix: levels, '+' as whole levels, maybe a final '#'.
fn plain_filter() -> BoxedStrategy<String> {
    (
        vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 0..5),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_string());
            }
            let s = levels.join("/");
            if s.is_empty() { "f".to_string() } else { s }
        })
        .boxed()
}

fn shared_filter() -> BoxedStrategy<String> {
    (
        prop_oneof![
            3 => "[a-z0-9$ ]{1,6}",
            1 => vec(
                mqtt_char().prop_filter("group", |c| !matches!(c, '/' | '+' | '#')),
                1..4,
            )
            .prop_map(String::from_iter),
        ],
        plain_filter(),
    )
        .prop_map(|(group, filter)| format!("$share/{group}/{filter}"))
        .boxed()
}

fn topic_filter() -> BoxedStrategy<String> {
    prop_oneof![4 => plain_filter(), 1 => shared_filter()].boxed()
}

fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

fn subscription_id() -> BoxedStrategy<u32> {
    prop_oneof![
        1 => select(vec![1u32, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455]),
        3 => 1..=268_435_455u32,
    ]
    .boxed()
}

/// A valid value for the property `id`.
fn prop_value(id: PropertyId) -> BoxedStrategy<OProp> {
    use PropertyId as P;
    let val = match id {
        P::PayloadFormatIndicator
        | P::RequestProblemInformation
        | P::RequestResponseInformation
        | P::RetainAvailable
        | P::WildcardSubscriptionAvailable
        | P::SubscriptionIdentifierAvailable
        | P::SharedSubscriptionAvailable => any::<bool>().prop_map(Val::Bool).boxed(),
        P::MessageExpiryInterval | P::SessionExpiryInterval | P::WillDelayInterval => {
            prop_oneof![select(vec![0, 1, u32::MAX]), any::<u32>()]
                .prop_map(Val::U32)
                .boxed()
        }
        P::MaximumPacketSize => prop_oneof![select(vec![1, u32::MAX]), 1..=u32::MAX]
            .prop_map(Val::U32)
            .boxed(),
        P::SubscriptionIdentifier => subscription_id().prop_map(Val::U32).boxed(),
        P::ServerKeepAlive | P::TopicAliasMaximum => any::<u16>().prop_map(Val::U16).boxed(),
        P::ReceiveMaximum | P::TopicAlias => prop_oneof![select(vec![1, u16::MAX]), 1..=u16::MAX]
            .prop_map(Val::U16)
            .boxed(),
        P::MaximumQoS => select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])
            .prop_map(Val::QoS)
            .boxed(),
        P::ContentType
        | P::AssignedClientIdentifier
        | P::AuthenticationMethod
        | P::ResponseInformation
        | P::ServerReference
        | P::ReasonString => mqtt_string().prop_map(Val::Str).boxed(),
        P::ResponseTopic => topic_name().prop_map(Val::Str).boxed(),
        P::CorrelationData | P::AuthenticationData => binary().prop_map(Val::Bin).boxed(),
        P::UserProperty => (mqtt_string(), mqtt_string())
            .prop_map(|(k, v)| Val::Pair(k, v))
            .boxed(),
    };
    val.prop_map(move |v| OProp(id, v)).boxed()
}

fn all_property_ids() -> Vec<PropertyId> {
    (0..=255u8).filter_map(PropertyId::from_u8).collect()
}

/// Drops the repeats of properties that may appear only once in `ctx`.
fn dedupe(props: Vec<OProp>, ctx: PropertyContext) -> Vec<OProp> {
    let mut seen = Vec::new();
    let props: Vec<OProp> = props
        .into_iter()
        .filter(|p| {
            if p.0.repeatable_in(ctx) {
                return true;
            }
            if seen.contains(&p.0) {
                return false;
            }
            seen.push(p.0);
            true
        })
        .collect();
    // Authentication data without a method is a protocol error (MQTT 5 section 3.1.2.11.10).
    if seen.contains(&PropertyId::AuthenticationMethod) {
        props
    } else {
        props
            .into_iter()
            .filter(|p| p.0 != PropertyId::AuthenticationData)
            .collect()
    }
}

/// A valid property list for `ctx`: allowed identifiers, no forbidden repeats, valid values.
fn props(ctx: PropertyContext) -> BoxedStrategy<Vec<OProp>> {
    let ids: Vec<PropertyId> = all_property_ids()
        .into_iter()
        .filter(|id| id.allowed_in(ctx))
        .collect();
    prop_oneof![
        1 => Just(Vec::new()),
        3 => vec(select(ids).prop_flat_map(prop_value), 1..8)
            .prop_map(move |v| dedupe(v, ctx)),
    ]
    .boxed()
}

/// Properties for `ctx` in MQTT 5, none before it.
fn props_for(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Vec<OProp>> {
    if v.is_v5() {
        props(ctx)
    } else {
        Just(Vec::new()).boxed()
    }
}

fn will(v: ProtocolVersion) -> BoxedStrategy<OWill> {
    (
        topic_name(),
        payload(),
        qos(),
        any::<bool>(),
        props_for(v, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, props)| OWill {
            topic,
            payload,
            qos,
            retain,
            props,
        })
        .boxed()
}

fn connect(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    (
        any::<bool>(),
        any::<u16>(),
        props_for(v, PropertyContext::Connect),
        mqtt_string(),
        proptest::option::of(will(v)),
        proptest::option::of(mqtt_string()),
        proptest::option::of(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, props, client_id, will, username, mut password)| {
                // Before MQTT 5 a password needs a user name.
                if !v.is_v5() && username.is_none() {
                    password = None;
                }
                Desc::Connect(OConnect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    props,
                    client_id,
                    will,
                    username,
                    password,
                })
            },
        )
        .boxed()
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    let table = if v.is_v5() { CONNACK_V5 } else { CONNACK_V3 };
    (
        any::<bool>(),
        prop_oneof![1 => Just(ReasonCode::Success), 2 => reason(table)],
        props_for(v, PropertyContext::ConnAck),
    )
        .prop_map(|(session_present, reason, props)| Desc::ConnAck {
            // A refusal never has a session.
            session_present: session_present && reason == ReasonCode::Success,
            reason,
            props,
        })
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![8 => topic_name(), 1 => Just(String::new())],
        packet_id(),
        props_for(v, PropertyContext::Publish),
        1..=u16::MAX,
        payload(),
    )
        .prop_map(
            move |(qos, dup, retain, mut topic, id, mut props, alias, payload)| {
                if topic.is_empty() {
                    if !v.is_v5() {
                        topic = "t".to_string();
                    } else if !props.iter().any(|p| p.0 == PropertyId::TopicAlias) {
                        // An empty topic needs a topic alias.
                        props.push(OProp(PropertyId::TopicAlias, Val::U16(alias)));
                    }
                }
                let with_id = qos != QoS::AtMostOnce;
                Desc::Publish(OPublish {
                    dup: dup && with_id,
                    qos,
                    retain,
                    topic,
                    packet_id: with_id.then_some(id),
                    props,
                    payload,
                })
            },
        )
        .boxed()
}

fn ack(v: ProtocolVersion, table: &[u8]) -> BoxedStrategy<OAck> {
    let reason = if v.is_v5() {
        prop_oneof![1 => Just(ReasonCode::Success), 2 => reason(table)].boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), reason, props_for(v, PropertyContext::PubAck))
        .prop_map(|(packet_id, reason, props)| OAck {
            packet_id,
            reason,
            props,
        })
        .boxed()
}

fn subscription(v: ProtocolVersion) -> BoxedStrategy<(String, SubscriptionOptions)> {
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(move |(filter, qos, no_local, rap, rh)| {
            let options = if v.is_v5() {
                SubscriptionOptions {
                    qos,
                    // No Local is a protocol error on a shared subscription.
                    no_local: no_local && !is_shared(&filter),
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::new(qos)
            };
            (filter, options)
        })
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    (
        packet_id(),
        props_for(v, PropertyContext::Subscribe),
        vec(subscription(v), 1..6),
    )
        .prop_map(|(packet_id, props, filters)| Desc::Subscribe {
            packet_id,
            props,
            filters,
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    let table = if v.is_v5() { SUBACK_V5 } else { SUBACK_V3 };
    (
        packet_id(),
        props_for(v, PropertyContext::SubAck),
        vec(reason(table), 1..8),
    )
        .prop_map(|(packet_id, props, codes)| Desc::SubAck {
            packet_id,
            props,
            codes,
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    (
        packet_id(),
        props_for(v, PropertyContext::Unsubscribe),
        vec(topic_filter(), 1..6),
    )
        .prop_map(|(packet_id, props, filters)| Desc::Unsubscribe {
            packet_id,
            props,
            filters,
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    let codes = if v.is_v5() {
        vec(reason(UNSUBACK_V5), 1..8).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), props_for(v, PropertyContext::UnsubAck), codes)
        .prop_map(|(packet_id, props, codes)| Desc::UnsubAck {
            packet_id,
            props,
            codes,
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    let reason = if v.is_v5() {
        prop_oneof![1 => Just(ReasonCode::Success), 2 => reason(DISCONNECT_V5)].boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (reason, props_for(v, PropertyContext::Disconnect))
        .prop_map(|(reason, props)| Desc::Disconnect { reason, props })
        .boxed()
}

fn auth() -> BoxedStrategy<Desc> {
    (reason(AUTH_V5), props(PropertyContext::Auth))
        .prop_map(|(reason, props)| Desc::Auth { reason, props })
        .boxed()
}

/// Any valid packet of version `v`.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Desc> {
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        ack(v, PUBACK_V5).prop_map(Desc::PubAck),
        ack(v, PUBACK_V5).prop_map(Desc::PubRec),
        ack(v, PUBREL_V5).prop_map(Desc::PubRel),
        ack(v, PUBREL_V5).prop_map(Desc::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Desc::PingReq),
        Just(Desc::PingResp),
        disconnect(v),
    ];
    if v.is_v5() {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

/// A version and a valid packet of that version.
fn versioned_packet() -> BoxedStrategy<(ProtocolVersion, Desc)> {
    version().prop_flat_map(|v| (Just(v), packet(v))).boxed()
}

/// A version and several valid packets of that version.
fn versioned_packets() -> BoxedStrategy<(ProtocolVersion, Vec<Desc>)> {
    version()
        .prop_flat_map(|v| (Just(v), vec(packet(v), 1..6)))
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Perturbations: valid packets pushed just past the rules, for "what the encoder accepts, the
// decoder accepts".
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Perturb {
    SessionPresent,
    Reason(ReasonCode),
    NoLocal,
    PasswordOnly(Vec<u8>),
    AddProp(OProp),
    WillProp(OProp),
    DupProp,
    Topic(String),
    TogglePacketId(PacketId),
    Dup,
    ClearList,
    Options(SubscriptionOptions),
    AddCode(ReasonCode),
    Protocol(ProtocolVersion),
}

/// A value for `id` that is out of the protocol's range where the type allows one.
fn bad_value(id: PropertyId) -> BoxedStrategy<OProp> {
    use PropertyId as P;
    let val = match id {
        P::ReceiveMaximum | P::TopicAlias => Just(Val::U16(0)).boxed(),
        P::MaximumPacketSize => Just(Val::U32(0)).boxed(),
        P::SubscriptionIdentifier => select(vec![0, 268_435_456, u32::MAX])
            .prop_map(Val::U32)
            .boxed(),
        P::MaximumQoS => Just(Val::QoS(QoS::ExactlyOnce)).boxed(),
        P::ResponseTopic => select(vec!["", "a/+", "#", "a\0b"])
            .prop_map(|s| Val::Str(s.to_string()))
            .boxed(),
        P::ContentType
        | P::AssignedClientIdentifier
        | P::AuthenticationMethod
        | P::ResponseInformation
        | P::ServerReference
        | P::ReasonString => Just(Val::Str("a\0".to_string())).boxed(),
        P::UserProperty => Just(Val::Pair("k".to_string(), "\0".to_string())).boxed(),
        _ => return prop_value(id),
    };
    val.prop_map(move |v| OProp(id, v)).boxed()
}

fn any_prop() -> BoxedStrategy<OProp> {
    select(all_property_ids())
        .prop_flat_map(|id| prop_oneof![3 => prop_value(id), 1 => bad_value(id)])
        .boxed()
}

fn perturb() -> BoxedStrategy<Perturb> {
    prop_oneof![
        Just(Perturb::SessionPresent),
        any_reason().prop_map(Perturb::Reason),
        Just(Perturb::NoLocal),
        binary().prop_map(Perturb::PasswordOnly),
        any_prop().prop_map(Perturb::AddProp),
        any_prop().prop_map(Perturb::WillProp),
        Just(Perturb::DupProp),
        prop_oneof![
            topic_name(),
            topic_filter(),
            Just(String::new()),
            Just("a\0".to_string()),
        ]
        .prop_map(Perturb::Topic),
        packet_id().prop_map(Perturb::TogglePacketId),
        Just(Perturb::Dup),
        Just(Perturb::ClearList),
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ])
        )
            .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
                Perturb::Options(SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                })
            }),
        any_reason().prop_map(Perturb::AddCode),
        version().prop_map(Perturb::Protocol),
    ]
    .boxed()
}

fn props_mut(d: &mut Desc) -> Option<&mut Vec<OProp>> {
    match d {
        Desc::Connect(c) => Some(&mut c.props),
        Desc::Publish(p) => Some(&mut p.props),
        Desc::PubAck(a) | Desc::PubRec(a) | Desc::PubRel(a) | Desc::PubComp(a) => {
            Some(&mut a.props)
        }
        Desc::ConnAck { props, .. }
        | Desc::Subscribe { props, .. }
        | Desc::SubAck { props, .. }
        | Desc::Unsubscribe { props, .. }
        | Desc::UnsubAck { props, .. }
        | Desc::Disconnect { props, .. }
        | Desc::Auth { props, .. } => Some(props),
        Desc::PingReq | Desc::PingResp => None,
    }
}

fn apply(d: &mut Desc, p: &Perturb) {
    match (p, &mut *d) {
        (
            Perturb::SessionPresent,
            Desc::ConnAck {
                session_present, ..
            },
        ) => *session_present = true,
        (Perturb::Reason(r), Desc::ConnAck { reason, .. })
        | (Perturb::Reason(r), Desc::Disconnect { reason, .. })
        | (Perturb::Reason(r), Desc::Auth { reason, .. }) => *reason = *r,
        (
            Perturb::Reason(r),
            Desc::PubAck(a) | Desc::PubRec(a) | Desc::PubRel(a) | Desc::PubComp(a),
        ) => a.reason = *r,
        (Perturb::NoLocal, Desc::Subscribe { filters, .. }) => {
            for (_, o) in filters {
                o.no_local = true;
            }
        }
        (Perturb::PasswordOnly(pw), Desc::Connect(c)) => {
            c.username = None;
            c.password = Some(pw.clone());
        }
        (Perturb::AddProp(prop), _) => {
            if let Some(props) = props_mut(d) {
                props.push(prop.clone());
            }
        }
        (Perturb::WillProp(prop), Desc::Connect(c)) => {
            if let Some(w) = &mut c.will {
                w.props.push(prop.clone());
            }
        }
        (Perturb::DupProp, _) => {
            if let Some(props) = props_mut(d)
                && let Some(first) = props.first().cloned()
            {
                props.push(first);
            }
        }
        (Perturb::Topic(t), Desc::Publish(p)) => p.topic = t.clone(),
        (Perturb::TogglePacketId(id), Desc::Publish(p)) => {
            p.packet_id = match p.packet_id {
                Some(_) => None,
                None => Some(*id),
            }
        }
        (Perturb::Dup, Desc::Publish(p)) => p.dup = true,
        (Perturb::ClearList, Desc::Subscribe { filters, .. }) => filters.clear(),
        (Perturb::ClearList, Desc::Unsubscribe { filters, .. }) => filters.clear(),
        (Perturb::ClearList, Desc::SubAck { codes, .. })
        | (Perturb::ClearList, Desc::UnsubAck { codes, .. }) => codes.clear(),
        (Perturb::Options(o), Desc::Subscribe { filters, .. }) => {
            if let Some(first) = filters.first_mut() {
                first.1 = *o;
            }
        }
        (Perturb::AddCode(c), Desc::SubAck { codes, .. })
        | (Perturb::AddCode(c), Desc::UnsubAck { codes, .. }) => codes.push(*c),
        (Perturb::Protocol(v), Desc::Connect(c)) => c.protocol = *v,
        _ => {}
    }
}

/// A packet of one version, maybe perturbed, and the version to encode it for.
fn loose_packet() -> BoxedStrategy<(ProtocolVersion, Desc, Vec<Perturb>)> {
    version()
        .prop_flat_map(|v| {
            (
                prop_oneof![3 => Just(v), 1 => version()],
                packet(v),
                vec(perturb(), 0..3),
            )
        })
        .prop_map(|(v, mut d, ps)| {
            for p in &ps {
                apply(&mut d, p);
            }
            (v, d, ps)
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

/// The size of a variable byte integer, computed here rather than by the codec.
fn varint_size(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the variable byte integer for `n`, written here rather than by the codec.
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Encodes `p` for `v`, checking `encoded_len` against what was written.
fn encode_vec(p: &Packet<'_>, v: ProtocolVersion) -> Vec<u8> {
    let len = p
        .encoded_len(v)
        .unwrap_or_else(|e| panic!("encoded_len({v:?}) of {p:?}: {e:?}"));
    let mut buf = vec![0u8; len];
    let n = p
        .encode(v, &mut buf)
        .unwrap_or_else(|e| panic!("encode({v:?}) of {p:?}: {e:?}"));
    assert_eq!(n, len, "encode wrote a different length than encoded_len");
    buf
}

/// Decodes exactly one whole packet from `bytes`.
fn decode_one(bytes: &[u8], v: ProtocolVersion) -> Packet<'_> {
    match decode(bytes, v, usize::MAX) {
        Ok(Status::Complete((q, used))) => {
            assert_eq!(used, bytes.len(), "decode consumed a different length");
            q
        }
        other => panic!("decode({v:?}) of {bytes:02x?}: {other:?}"),
    }
}

/// Property 1: encode, decode, compare, re-encode.
fn check_roundtrip(p: &Packet<'_>, v: ProtocolVersion) {
    let bytes = encode_vec(p, v);
    let q = decode_one(&bytes, v);
    assert_eq!(&q, p, "decoded packet differs; bytes {bytes:02x?}");
    assert_eq!(q.packet_type(), p.packet_type());
    assert_eq!(
        encode_vec(&q, v),
        bytes,
        "re-encoding the decoded packet differs"
    );

    // The size limit is inclusive and checked on the whole packet.
    assert!(matches!(
        decode(&bytes, v, bytes.len()),
        Ok(Status::Complete(_))
    ));
    assert_eq!(
        decode(&bytes, v, bytes.len() - 1).err(),
        Some(DecodeError::PacketTooLarge {
            size: bytes.len(),
            max: bytes.len() - 1,
        })
    );

    // A short buffer says how much is needed; a long one is written only as far as needed.
    let mut short = vec![0u8; bytes.len() - 1];
    assert_eq!(
        p.encode(v, &mut short),
        Err(EncodeError::BufferTooSmall {
            needed: bytes.len()
        })
    );
    let mut long = vec![0xEEu8; bytes.len() + 7];
    assert_eq!(p.encode(v, &mut long), Ok(bytes.len()));
    assert_eq!(&long[..bytes.len()], &bytes[..]);
    assert!(long[bytes.len()..].iter().all(|&b| b == 0xEE));

    // MQTT 3.1 and 3.1.1 differ only in CONNECT.
    if !v.is_v5() && p.packet_type() != PacketType::Connect {
        let other = if v == V31 { V311 } else { V31 };
        assert_eq!(
            encode_vec(p, other),
            bytes,
            "3.1 and 3.1.1 encodings differ"
        );
        assert_eq!(&decode_one(&bytes, other), p);
    }
}

/// Property 2: every strict prefix in `lens` is `Incomplete` with a sound byte count.
fn check_prefixes(bytes: &[u8], v: ProtocolVersion, lens: impl IntoIterator<Item = usize>) {
    let header_len = match frame(bytes, usize::MAX) {
        Ok(Status::Complete(f)) => f.header_len,
        other => panic!("frame of a valid packet: {other:?}"),
    };
    for k in lens {
        let prefix = &bytes[..k];
        for max in [usize::MAX, bytes.len()] {
            match decode(prefix, v, max) {
                Ok(Status::Incomplete(n)) => {
                    assert!(n > 0, "Incomplete(0) for prefix {k} of {bytes:02x?}");
                    assert!(
                        k + n <= bytes.len(),
                        "prefix {k} asks for {n} more bytes but the packet is {} long",
                        bytes.len()
                    );
                }
                other => panic!(
                    "prefix {k} of {} (max {max}) of {bytes:02x?}: {other:?}",
                    bytes.len()
                ),
            }
        }
        // The frame is known as soon as the fixed header is there.
        match frame(prefix, usize::MAX) {
            Ok(Status::Incomplete(n)) if k < header_len => assert!(n > 0 && k + n <= header_len),
            Ok(Status::Complete(f)) if k >= header_len => assert_eq!(f.len(), bytes.len()),
            other => panic!("frame of prefix {k} of {bytes:02x?}: {other:?}"),
        }
    }
}

/// The prefix lengths to try: all of them for small packets, a sample for large ones.
fn prefix_lengths(len: usize, sample: &[usize]) -> Vec<usize> {
    if len <= 1024 {
        (0..len).collect()
    } else {
        let mut l: Vec<usize> = (0..32).chain(len - 32..len).collect();
        l.extend(sample.iter().map(|s| s % len));
        l
    }
}

/// Property 4: `frame` agrees with the encoding.
fn check_frame(p: &Packet<'_>, v: ProtocolVersion) {
    let bytes = encode_vec(p, v);
    let Ok(Status::Complete(f)) = frame(&bytes, usize::MAX) else {
        panic!("frame of {bytes:02x?}");
    };
    assert_eq!(f.len(), bytes.len());
    assert_eq!(f.header_len + f.remaining_len, bytes.len());
    assert_eq!(f.header_len, 1 + varint_size(f.remaining_len));
    assert_eq!(f.packet_type, p.packet_type());
    assert_eq!(f.flags, bytes[0] & 0x0f);
    assert!(!f.is_empty());
    // The header alone is enough, and the size limit is inclusive.
    assert_eq!(
        frame(&bytes[..f.header_len], usize::MAX),
        Ok(Status::Complete(f))
    );
    assert_eq!(frame(&bytes, bytes.len()), Ok(Status::Complete(f)));
    assert_eq!(
        frame(&bytes[..f.header_len], bytes.len() - 1),
        Err(DecodeError::PacketTooLarge {
            size: bytes.len(),
            max: bytes.len() - 1
        })
    );
    // The second phase alone gives the same packet.
    let q = Packet::decode_body(f, &bytes[f.header_len..], v).unwrap();
    assert_eq!(&q, p);
}

/// Property 5: whatever the decoder accepts re-encodes, and the re-encoding decodes back equal.
fn check_arbitrary(bytes: &[u8], v: ProtocolVersion, max: usize) {
    let framed = frame(bytes, max);
    match decode(bytes, v, max) {
        Ok(Status::Complete((q, n))) => {
            assert!(n <= bytes.len() && n <= max);
            match framed {
                Ok(Status::Complete(f)) => assert_eq!(f.len(), n),
                other => panic!("decode is complete but frame says {other:?}"),
            }
            let re = encode_vec(&q, v);
            let q2 = decode_one(&re, v);
            assert_eq!(q2, q, "re-encoded {re:02x?} decodes differently");
            assert_eq!(encode_vec(&q2, v), re, "encoding is not a fixed point");
        }
        Ok(Status::Incomplete(n)) => {
            assert!(n > 0);
            assert!(framed.is_ok(), "frame failed but decode is incomplete");
        }
        Err(e) => {
            if let Err(fe) = framed {
                assert_eq!(fe, e, "frame and decode disagree on the error");
            }
            // The error is usable.
            let _ = e.reason_code();
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Property 3: packets concatenated and fed in arbitrary chunks decode one after another.
fn check_stream(descs: &[Desc], v: ProtocolVersion, chunks: &[usize]) {
    let encoded: Vec<Vec<u8>> = descs
        .iter()
        .map(|d| with_packet(d, |p| encode_vec(&p, v)))
        .collect();
    let all: Vec<u8> = encoded.concat();

    // All at once.
    let mut offset = 0;
    for (d, e) in descs.iter().zip(&encoded) {
        match decode(&all[offset..], v, usize::MAX) {
            Ok(Status::Complete((q, n))) => {
                assert_eq!(n, e.len());
                with_packet(d, |p| assert_eq!(q, p));
            }
            other => panic!("packet at offset {offset}: {other:?}"),
        }
        offset += e.len();
    }
    assert_eq!(offset, all.len());
    assert_eq!(
        decode(&all[offset..], v, usize::MAX),
        Ok(Status::Incomplete(2))
    );

    // Streamed in chunks, with a buffer that is drained as packets complete.
    let mut buf: Vec<u8> = Vec::new();
    let mut next = 0;
    let mut fed = 0;
    let mut sizes = chunks.iter().cycle();
    while fed < all.len() {
        let step = (sizes.next().copied().unwrap_or(1) % 64 + 1).min(all.len() - fed);
        buf.extend_from_slice(&all[fed..fed + step]);
        fed += step;
        loop {
            match decode(&buf, v, usize::MAX) {
                Ok(Status::Complete((q, n))) => {
                    assert_eq!(n, encoded[next].len());
                    with_packet(&descs[next], |p| assert_eq!(q, p));
                    next += 1;
                    buf.drain(..n);
                }
                Ok(Status::Incomplete(n)) => {
                    assert!(n > 0);
                    break;
                }
                Err(e) => panic!("stream error after {fed} bytes: {e:?}"),
            }
        }
    }
    assert_eq!(next, descs.len());
    assert!(buf.is_empty());
}

/// Whatever the encoder accepts, the decoder accepts and gives back equal.
fn check_encoder_decoder_agree(p: &Packet<'_>, v: ProtocolVersion) {
    let len = p.encoded_len(v);
    let mut buf = vec![0u8; *len.as_ref().unwrap_or(&0)];
    match (len, p.encode(v, &mut buf)) {
        (Ok(l), Ok(n)) => {
            assert_eq!(l, n);
            match decode(&buf, v, usize::MAX) {
                Ok(Status::Complete((q, used))) => {
                    assert_eq!(used, n);
                    assert_eq!(&q, p, "bytes {buf:02x?}");
                }
                other => {
                    panic!("encoder accepted {p:?} for {v:?} as {buf:02x?}, decoder says {other:?}")
                }
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "encoded_len and encode disagree"),
        (a, b) => panic!("encoded_len says {a:?} but encode says {b:?}"),
    }
}

/// The property lists of a packet: its own, then its will's.
fn property_lists<'a>(p: &Packet<'a>) -> Vec<Properties<'a>> {
    match p {
        Packet::Connect(c) => [Some(c.properties), c.will.map(|w| w.properties)]
            .into_iter()
            .flatten()
            .collect(),
        Packet::ConnAck(c) => vec![c.properties],
        Packet::Publish(x) => vec![x.properties],
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            vec![a.properties]
        }
        Packet::Subscribe(x) => vec![x.properties],
        Packet::SubAck(x) => vec![x.properties],
        Packet::Unsubscribe(x) => vec![x.properties],
        Packet::UnsubAck(x) => vec![x.properties],
        Packet::Disconnect(x) => vec![x.properties],
        Packet::Auth(x) => vec![x.properties],
        Packet::PingReq | Packet::PingResp => vec![],
    }
}

/// `p` with its own property list (or, with `will`, its will's) replaced by `props`.
fn replace_properties<'a>(p: Packet<'a>, props: Properties<'a>, will: bool) -> Packet<'a> {
    let mut p = p;
    match &mut p {
        Packet::Connect(c) => match &mut c.will {
            Some(w) if will => w.properties = props,
            _ => c.properties = props,
        },
        Packet::ConnAck(c) => c.properties = props,
        Packet::Publish(x) => x.properties = props,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties = props
        }
        Packet::Subscribe(x) => x.properties = props,
        Packet::SubAck(x) => x.properties = props,
        Packet::Unsubscribe(x) => x.properties = props,
        Packet::UnsubAck(x) => x.properties = props,
        Packet::Disconnect(x) => x.properties = props,
        Packet::Auth(x) => x.properties = props,
        Packet::PingReq | Packet::PingResp => {}
    }
    p
}

/// Properties decoded from one packet and encoded in another: the encoder must either refuse
/// them or write something the decoder accepts.
fn check_foreign_properties(source: &Desc, target: &Desc, will: bool) {
    let bytes = with_packet(source, |p| encode_vec(&p, V5));
    let decoded = decode_one(&bytes, V5);
    for props in property_lists(&decoded) {
        with_packet(target, |t| {
            // The encoder must refuse properties that do not belong in the target.
            let Some(ctx) = target_context(&t, will) else {
                return;
            };
            let t = replace_properties(t, props, will);
            if !props_fit(&props, ctx) {
                let len = t.encoded_len(V5);
                assert!(
                    len.is_err(),
                    "foreign properties accepted: {props:?} in {ctx:?}"
                );
            }
            check_encoder_decoder_agree(&t, V5);
        });
    }
}

/// The context of the property list `replace_properties` would replace.
fn target_context(p: &Packet<'_>, will: bool) -> Option<PropertyContext> {
    use PropertyContext as C;
    Some(match p {
        Packet::Connect(c) if will && c.will.is_some() => C::Will,
        Packet::Connect(_) => C::Connect,
        Packet::ConnAck(_) => C::ConnAck,
        Packet::Publish(_) => C::Publish,
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => C::PubAck,
        Packet::Subscribe(_) => C::Subscribe,
        Packet::SubAck(_) => C::SubAck,
        Packet::Unsubscribe(_) => C::Unsubscribe,
        Packet::UnsubAck(_) => C::UnsubAck,
        Packet::Disconnect(_) => C::Disconnect,
        Packet::Auth(_) => C::Auth,
        Packet::PingReq | Packet::PingResp => return None,
    })
}

/// Whether every property is allowed in `ctx`, with no forbidden repeats.
fn props_fit(props: &Properties<'_>, ctx: PropertyContext) -> bool {
    let mut seen = Vec::new();
    props.iter().all(|p| {
        let id = p.id();
        let ok = id.allowed_in(ctx) && (!seen.contains(&id) || id.repeatable_in(ctx));
        seen.push(id);
        ok
    }) && (!seen.contains(&PropertyId::AuthenticationData)
        || seen.contains(&PropertyId::AuthenticationMethod))
}

/// A mutation of encoded bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
    .boxed()
}

/// Applies `muts` to a packet; with `reframe` the body is mutated and the fixed header rebuilt
/// with the right remaining length, which lets the mutation reach the body parsers.
fn mutate(bytes: &[u8], muts: &[Mutation], reframe: bool) -> Vec<u8> {
    let header_len = if reframe {
        match frame(bytes, usize::MAX) {
            Ok(Status::Complete(f)) => f.header_len,
            _ => 0,
        }
    } else {
        0
    };
    let mut body = bytes[header_len..].to_vec();
    for m in muts {
        let n = body.len();
        match *m {
            Mutation::Set(i, b) if n > 0 => body[i % n] = b,
            Mutation::Insert(i, b) => body.insert(i % (n + 1), b),
            Mutation::Delete(i) if n > 0 => {
                body.remove(i % n);
            }
            Mutation::Truncate(i) => body.truncate(i % (n + 1)),
            _ => {}
        }
    }
    if !reframe || header_len == 0 {
        return body;
    }
    let mut out = vec![bytes[0]];
    put_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Bytes that look like an MQTT string: a two-byte length and that many (mostly ASCII) bytes.
fn string_token() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => "[a-z/+#$]{0,6}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..4),
    ]
    .prop_map(|s| {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&s);
        out
    })
    .boxed()
}

/// One property: a defined identifier followed by a value of roughly the right shape.
fn property_token() -> BoxedStrategy<Vec<u8>> {
    (
        select(all_property_ids()),
        prop_oneof![
            3 => vec(0..3u8, 1),
            2 => vec(any::<u8>(), 2),
            2 => vec(any::<u8>(), 4),
            2 => string_token(),
            1 => (string_token(), string_token()).prop_map(|(a, b)| [a, b].concat()),
        ],
    )
        .prop_map(|(id, value)| [vec![id as u8], value].concat())
        .boxed()
}

/// Pieces a packet body is made of, so that arbitrary bodies get past the first fields.
fn body_token() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => any::<u8>().prop_map(|b| vec![b]),
        3 => (0..3u8).prop_map(|b| vec![b]),
        2 => (0..3u8).prop_map(|b| vec![0, b]),
        3 => string_token(),
        1 => select(vec![
            b"\x00\x04MQTT\x04".to_vec(),
            b"\x00\x04MQTT\x05".to_vec(),
            b"\x00\x06MQIsdp\x03".to_vec(),
        ]),
        3 => vec(property_token(), 0..4).prop_map(|props| {
            let body = props.concat();
            [vec![body.len().min(127) as u8], body].concat()
        }),
    ]
    .boxed()
}

/// A fixed header that passes the type and flag checks, followed by a body of the stated length.
fn framed_garbage() -> BoxedStrategy<Vec<u8>> {
    (
        1..=15u8,
        0..3u8,
        any::<bool>(),
        any::<bool>(),
        vec(body_token(), 0..8),
    )
        .prop_map(|(t, qos, dup, retain, tokens)| {
            let flags = match t {
                3 => (u8::from(dup && qos > 0) << 3) | (qos << 1) | u8::from(retain),
                6 | 8 | 10 => 0b0010,
                _ => 0,
            };
            let body = tokens.concat();
            let mut out = vec![(t << 4) | flags];
            put_varint(&mut out, body.len());
            out.extend_from_slice(&body);
            out
        })
        .boxed()
}

fn max_size() -> BoxedStrategy<usize> {
    prop_oneof![3 => Just(usize::MAX), 1 => 0..256usize].boxed()
}

// ---------------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------------

/// `cases` cases, and no regression files written into the source tree: failures found are
/// kept as plain `#[test]`s at the end of this file instead.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Every valid packet encodes to `encoded_len` bytes and decodes back equal and whole.
    #[test]
    fn roundtrip((v, d) in versioned_packet()) {
        with_packet(&d, |p| check_roundtrip(&p, v));
    }

    /// `frame` reads the fixed header the encoder wrote.
    #[test]
    fn frame_matches_encoding((v, d) in versioned_packet()) {
        with_packet(&d, |p| check_frame(&p, v));
    }

    /// Decoded properties moved into another packet are refused or encoded validly.
    #[test]
    fn foreign_decoded_properties(
        source in packet(V5),
        target in packet(V5),
        will in any::<bool>(),
    ) {
        check_foreign_properties(&source, &target, will);
    }

    /// Whatever the encoder accepts, even from packets pushed past the rules, decodes back equal.
    #[test]
    fn encoder_output_always_decodes((v, d, _perturbs) in loose_packet()) {
        with_packet(&d, |p| check_encoder_decoder_agree(&p, v));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Every strict prefix of a valid packet is `Incomplete`, never an error.
    #[test]
    fn truncation_is_incomplete(
        (v, d) in versioned_packet(),
        sample in vec(any::<usize>(), 48),
    ) {
        with_packet(&d, |p| {
            let bytes = encode_vec(&p, v);
            check_prefixes(&bytes, v, prefix_lengths(bytes.len(), &sample));
        });
    }

    /// Concatenated packets decode one after another, all at once or fed in chunks.
    #[test]
    fn concatenated_packets_stream(
        (v, descs) in versioned_packets(),
        chunks in vec(any::<usize>(), 1..8),
    ) {
        check_stream(&descs, v, &chunks);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Mutated valid packets never panic the decoder; what it accepts round-trips.
    #[test]
    fn mutated_packets_never_panic(
        (v, d, decode_as) in versioned_packet()
            .prop_flat_map(|(v, d)| (Just(v), Just(d), prop_oneof![3 => Just(v), 1 => version()])),
        muts in vec(mutation(), 1..4),
        reframe in any::<bool>(),
        max in max_size(),
    ) {
        with_packet(&d, |p| {
            let bytes = mutate(&encode_vec(&p, v), &muts, reframe);
            check_arbitrary(&bytes, decode_as, max);
        });
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Arbitrary bytes never panic the decoder; what it accepts round-trips.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..64),
        v in version(),
        max in max_size(),
    ) {
        check_arbitrary(&bytes, v, max);
    }

    /// A plausible fixed header over arbitrary body bytes reaches every body parser.
    #[test]
    fn framed_garbage_never_panics(
        bytes in framed_garbage(),
        v in version(),
        max in max_size(),
    ) {
        check_arbitrary(&bytes, v, max);
    }
}

#[cfg(feature = "bytes")]
proptest! {
    #![proptest_config(config(256))]

    /// `encode_buf` into a `BytesMut` writes the same bytes as `encode`.
    #[test]
    fn encode_buf_matches_encode((v, d) in versioned_packet(), prefix in vec(any::<u8>(), 0..8)) {
        with_packet(&d, |p| {
            let bytes = encode_vec(&p, v);
            let mut buf = bytes::BytesMut::new();
            buf.extend_from_slice(&prefix);
            assert_eq!(p.encode_buf(v, &mut buf), Ok(bytes.len()));
            assert_eq!(&buf[..prefix.len()], &prefix[..]);
            assert_eq!(&buf[prefix.len()..], &bytes[..]);

            // A `BufMut` without room gets nothing at all.
            let mut short = vec![0xEEu8; bytes.len() - 1];
            let mut slice = &mut short[..];
            assert_eq!(
                p.encode_buf(v, &mut slice),
                Err(EncodeError::BufferTooSmall { needed: bytes.len() })
            );
            assert!(short.iter().all(|&b| b == 0xEE));
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases.
// ---------------------------------------------------------------------------------------------

/// PUBLISH bodies that put the remaining length on each side of every varint width.
#[test]
fn remaining_length_boundaries() {
    // Topic "a" (3 bytes) + payload = remaining length, for QoS 0 in 3.1.1.
    for remaining in [3usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let payload = vec![0x5Au8; remaining - 3];
        let p = Packet::Publish(Publish::new("a", &payload));
        let bytes = encode_vec(&p, V311);
        let body = 3 + payload.len();
        assert_eq!(bytes.len(), 1 + varint_size(body) + body);
        let q = decode_one(&bytes, V311);
        assert_eq!(q, p);
        let Ok(Status::Complete(f)) = frame(&bytes, usize::MAX) else {
            panic!()
        };
        assert_eq!(f.remaining_len, body);
        check_prefixes(
            &bytes,
            V311,
            (0..8)
                .chain([bytes.len() / 2, bytes.len() - 1])
                .filter(|&k| k < bytes.len()),
        );
    }
}

/// The largest remaining length is accepted and one more is refused, without writing anything.
#[test]
fn maximum_remaining_length() {
    // Zeroed allocations are lazily mapped, and `encoded_len` never reads the payload.
    let payload = vec![0u8; MAX_REMAINING_LENGTH - 3 + 1];
    let over = Packet::Publish(Publish::new("a", &payload));
    assert_eq!(over.encoded_len(V311), Err(EncodeError::PacketTooLarge));
    assert_eq!(over.encode(V311, &mut []), Err(EncodeError::PacketTooLarge));
    let at = Packet::Publish(Publish::new("a", &payload[1..]));
    assert_eq!(at.encoded_len(V311), Ok(MAX_REMAINING_LENGTH + 5));
    assert_eq!(
        at.encode(V311, &mut []),
        Err(EncodeError::BufferTooSmall {
            needed: MAX_REMAINING_LENGTH + 5
        })
    );
    // The largest frame header is accepted, a fifth length byte is not.
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    assert_eq!(
        frame(&header, usize::MAX),
        Ok(Status::Complete(mqtt_proto::Frame {
            packet_type: PacketType::Publish,
            flags: 0,
            header_len: 5,
            remaining_len: MAX_REMAINING_LENGTH,
        }))
    );
    assert_eq!(
        frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
        Err(DecodeError::RemainingLengthTooLong)
    );
}

/// An empty input and the smallest packets.
#[test]
fn smallest_inputs() {
    assert_eq!(decode(&[], V5, usize::MAX), Ok(Status::Incomplete(2)));
    assert_eq!(frame(&[], usize::MAX), Ok(Status::Incomplete(2)));
    for v in [V31, V311, V5] {
        assert_eq!(decode_one(&[0xC0, 0x00], v), Packet::PingReq);
        assert_eq!(decode_one(&[0xD0, 0x00], v), Packet::PingResp);
        assert_eq!(
            decode_one(&[0xE0, 0x00], v),
            Packet::Disconnect(Disconnect::new(ReasonCode::Success))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: codec bugs found by the properties above, as minimal failing inputs. They fail
// until the codec is fixed; each passes whether the fix is in the encoder (refuse) or in the
// decoder (accept), as long as both sides agree.
// ---------------------------------------------------------------------------------------------

/// Found by `encoder_output_always_decodes`: the encoder writes session present on a refused
/// CONNACK, which the decoder rejects with `SessionPresentOnRefusal`.
#[test]
fn regression_connack_session_present_on_refusal() {
    for (v, code) in [
        (V311, ReasonCode::UnsupportedProtocolVersion), // 20 02 01 01
        (V31, ReasonCode::NotAuthorized),               // 20 02 01 05
        (V5, ReasonCode::NotAuthorized),                // 20 03 01 87 00
    ] {
        let p = Packet::ConnAck(ConnAck::new(true, code));
        check_encoder_decoder_agree(&p, v);
    }
}

/// Found by `encoder_output_always_decodes`: the encoder writes No Local on a shared
/// subscription, which the decoder rejects with `SharedSubscriptionNoLocal`.
#[test]
fn regression_subscribe_no_local_on_shared_subscription() {
    let mut options = SubscriptionOptions::new(QoS::AtMostOnce);
    options.no_local = true;
    let filters = [(TopicFilter::new("$share/g/a").unwrap(), options)];
    let p = Packet::Subscribe(Subscribe::new(PacketId::MIN, &filters));
    // Encoded as 82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 04.
    check_encoder_decoder_agree(&p, V5);
}

/// Found by `foreign_decoded_properties`: a decoded property list is written back without being
/// checked against the packet it is now in, so properties the decoder refuses there get out.
#[test]
fn regression_decoded_properties_are_not_checked_for_their_new_packet() {
    // The shrunk case: CONNECT properties [SessionExpiryInterval(0)] moved into a PUBLISH.
    let session = [Property::SessionExpiryInterval(0)];
    let connect = Packet::Connect(Connect {
        properties: Properties::new(&session),
        ..Connect::new(V5, "", 0)
    });
    let bytes = encode_vec(&connect, V5);
    let Packet::Connect(decoded) = decode_one(&bytes, V5) else {
        unreachable!()
    };
    let publish = Packet::Publish(Publish {
        properties: decoded.properties,
        ..Publish::new("t", b"")
    });
    check_encoder_decoder_agree(&publish, V5);

    // The way a broker meets it: publishing a will with the will's own properties, which may
    // hold a Will Delay Interval that PUBLISH does not allow.
    let will_props = [Property::WillDelayInterval(5)];
    let connect = Packet::Connect(Connect {
        will: Some(Will {
            topic: TopicName::new("w").unwrap(),
            payload: b"bye",
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::new(&will_props),
        }),
        ..Connect::new(V5, "c", 0)
    });
    let bytes = encode_vec(&connect, V5);
    let Packet::Connect(Connect {
        will: Some(will), ..
    }) = decode_one(&bytes, V5)
    else {
        unreachable!()
    };
    let publish = Packet::Publish(Publish {
        properties: will.properties,
        ..Publish::new(will.topic.as_str(), will.payload)
    });
    check_encoder_decoder_agree(&publish, V5);
}
