//! Fixtures shared by the `codec` (criterion) and `ratio` (plain timer) benchmarks.
//!
//! Each [`Case`] holds the same packet built with both codecs and the wire bytes both agree on.
//! [`Case::check`] asserts that agreement before anything is timed.

use std::hint::black_box;

use bytes::BytesMut;
use mqtt_proto::{
    Connect, Packet, PacketId, Properties, Property, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, Will, decode,
};
use rumqttc::mqttbytes::v4 as r4;
use rumqttc::v5::mqttbytes::v5 as r5;

/// Largest packet either decoder is told to accept.
pub const MAX: usize = 1 << 20;

const TOPIC: &str = "sensors/kitchen/temperature";
const PAYLOAD_SMALL: &[u8; 16] = b"{\"t\":21.5,\"u\":1}";
static PAYLOAD_1K: [u8; 1024] = payload_1k();
const CLIENT_ID: &str = "bench-client-0001";
const WILL_TOPIC: &str = "clients/bench-client-0001/status";
const WILL_PAYLOAD: &[u8] = b"offline";
const USERNAME: &str = "bench-user";
const PASSWORD: &str = "correct horse battery staple";
const FILTERS: [(&str, QoS); 3] = [
    ("sensors/+/temperature", QoS::AtLeastOnce),
    ("home/#", QoS::AtMostOnce),
    ("$SYS/broker/clients/connected", QoS::ExactlyOnce),
];
/// MQTT 5 PUBLISH properties, in the order rumqttc writes them.
static V5_PROPS: [Property<'static>; 4] = [
    Property::PayloadFormatIndicator(true),
    Property::MessageExpiryInterval(3600),
    Property::UserProperty("source", "bench"),
    Property::ContentType("application/json"),
];

const fn payload_1k() -> [u8; 1024] {
    let mut p = [0u8; 1024];
    let mut i = 0;
    while i < p.len() {
        p[i] = (i * 31 % 251) as u8;
        i += 1;
    }
    p
}

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id")
}

/// The same packet for rumqttc's 3.1.1 or 5.0 codec.
#[allow(
    clippy::large_enum_variant,
    reason = "five fixtures; boxing would add an indirection"
)]
pub enum Theirs {
    V4(r4::Packet),
    V5(r5::Packet),
}

/// One benchmark case: a packet in both codecs and its agreed encoding.
pub struct Case {
    /// Short id for criterion's group names.
    #[allow(dead_code, reason = "only the criterion bench uses it")]
    pub id: &'static str,
    /// Row label for the ratio table.
    pub name: &'static str,
    pub version: ProtocolVersion,
    pub ours: Packet<'static>,
    pub theirs: Theirs,
    pub bytes: Vec<u8>,
}

fn our_publish(payload: &'static [u8], props: Properties<'static>) -> Packet<'static> {
    Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid(10)),
        properties: props,
        ..Publish::new(TOPIC, payload)
    })
}

fn their_publish(payload: &[u8]) -> r4::Packet {
    let mut p = r4::Publish::new(
        TOPIC,
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        payload.to_vec(),
    );
    p.pkid = 10;
    r4::Packet::Publish(p)
}

fn rqos(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// All cases, in table order. Every case is checked with [`Case::check`].
pub fn cases() -> Vec<Case> {
    let v = ProtocolVersion::V311;
    // Filters can only be built checked, so at run time; leaked once to get 'static fixtures.
    let our_filters: &'static [(TopicFilter<'static>, SubscriptionOptions)] = FILTERS
        .iter()
        .map(|&(f, q)| {
            let f = TopicFilter::new(f).expect("valid filter");
            (f, SubscriptionOptions::new(q))
        })
        .collect::<Vec<_>>()
        .leak();
    let mut out = vec![
        Case {
            id: "publish_16B_v311",
            name: "PUBLISH QoS 1, 16 B payload (3.1.1)",
            version: v,
            ours: our_publish(PAYLOAD_SMALL, Properties::EMPTY),
            theirs: Theirs::V4(their_publish(PAYLOAD_SMALL)),
            bytes: Vec::new(),
        },
        Case {
            id: "publish_1KiB_v311",
            name: "PUBLISH QoS 1, 1 KiB payload (3.1.1)",
            version: v,
            ours: our_publish(&PAYLOAD_1K, Properties::EMPTY),
            theirs: Theirs::V4(their_publish(&PAYLOAD_1K)),
            bytes: Vec::new(),
        },
        Case {
            id: "connect_v311",
            name: "CONNECT with will and login (3.1.1)",
            version: v,
            ours: Packet::Connect(Connect {
                will: Some(Will {
                    topic: TopicName::new(WILL_TOPIC).expect("valid will topic"),
                    payload: WILL_PAYLOAD,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties::EMPTY,
                }),
                username: Some(USERNAME),
                password: Some(PASSWORD.as_bytes()),
                ..Connect::new(v, CLIENT_ID, 30)
            }),
            theirs: Theirs::V4(r4::Packet::Connect(r4::Connect {
                protocol: rumqttc::mqttbytes::Protocol::V4,
                keep_alive: 30,
                client_id: CLIENT_ID.into(),
                clean_session: true,
                last_will: Some(r4::LastWill::new(
                    WILL_TOPIC,
                    WILL_PAYLOAD,
                    rumqttc::mqttbytes::QoS::AtLeastOnce,
                    true,
                )),
                login: Some(r4::Login::new(USERNAME, PASSWORD)),
            })),
            bytes: Vec::new(),
        },
        Case {
            id: "subscribe3_v311",
            name: "SUBSCRIBE, 3 filters (3.1.1)",
            version: v,
            ours: Packet::Subscribe(Subscribe::new(pid(7), our_filters)),
            theirs: Theirs::V4(r4::Packet::Subscribe(r4::Subscribe {
                pkid: 7,
                filters: FILTERS
                    .iter()
                    .map(|&(f, q)| r4::SubscribeFilter::new(f.into(), rqos(q)))
                    .collect(),
            })),
            bytes: Vec::new(),
        },
        Case {
            id: "publish_16B_props_v5",
            name: "PUBLISH QoS 1, 16 B payload, 4 properties (5.0)",
            version: ProtocolVersion::V5,
            ours: our_publish(PAYLOAD_SMALL, Properties::new(&V5_PROPS)),
            theirs: Theirs::V5(r5::Packet::Publish(r5::Publish {
                dup: false,
                qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                retain: false,
                topic: TOPIC.as_bytes().to_vec().into(),
                pkid: 10,
                payload: PAYLOAD_SMALL.to_vec().into(),
                properties: Some(r5::PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    user_properties: vec![("source".into(), "bench".into())],
                    content_type: Some("application/json".into()),
                    ..Default::default()
                }),
            })),
            bytes: Vec::new(),
        },
    ];
    for case in &mut out {
        case.check();
    }
    out
}

impl Case {
    /// Asserts both codecs encode to the same bytes and decode each other's; stores the bytes.
    fn check(&mut self) {
        let mut buf = [0u8; 4096];
        let n = self
            .ours
            .encode(self.version, &mut buf)
            .expect("ours encodes");
        let ours = buf[..n].to_vec();
        let mut bm = BytesMut::new();
        self.theirs_encode(&mut bm);
        assert_eq!(ours, &bm[..], "{}: encodings differ", self.name);

        // Ours decodes rumqttc's bytes back to the same packet...
        let Ok(mqtt_proto::Status::Complete((p, used))) = decode(&bm, self.version, MAX) else {
            panic!("{}: ours failed to decode rumqttc's bytes", self.name);
        };
        assert_eq!(used, bm.len());
        assert_eq!(p, self.ours, "{}: ours decoded something else", self.name);
        // ... and rumqttc decodes ours back to the same packet.
        let mut input = BytesMut::from(&ours[..]);
        match &self.theirs {
            Theirs::V4(want) => {
                let got = r4::Packet::read(&mut input, MAX).expect("rumqttc decodes ours");
                assert_eq!(&got, want, "{}: rumqttc decoded something else", self.name);
            }
            Theirs::V5(want) => {
                let got =
                    r5::Packet::read(&mut input, Some(MAX as u32)).expect("rumqttc decodes ours");
                assert_eq!(&got, want, "{}: rumqttc decoded something else", self.name);
            }
        }
        assert!(input.is_empty());
        // And decoding touches the same amount of data on both sides.
        assert_eq!(
            self.ours_decode(&ours),
            self.theirs_decode(&mut BytesMut::from(&ours[..])),
            "{}: touch functions disagree",
            self.name
        );
        self.bytes = ours;
    }

    /// A fresh copy of the wire bytes, as a read buffer would hold them.
    pub fn input(&self) -> BytesMut {
        BytesMut::from(&self.bytes[..])
    }

    /// Decodes with our codec and reads every field.
    #[inline]
    pub fn ours_decode(&self, buf: &[u8]) -> usize {
        match decode(buf, self.version, MAX) {
            Ok(mqtt_proto::Status::Complete((p, used))) => used + touch_ours(&p),
            _ => unreachable!("checked at start"),
        }
    }

    /// Decodes with rumqttc (consuming from `buf`) and reads every field.
    #[inline]
    pub fn theirs_decode(&self, buf: &mut BytesMut) -> usize {
        let len = buf.len();
        match self.theirs {
            Theirs::V4(_) => match r4::Packet::read(buf, MAX) {
                Ok(p) => len + touch_v4(&p),
                Err(_) => unreachable!("checked at start"),
            },
            Theirs::V5(_) => match r5::Packet::read(buf, Some(MAX as u32)) {
                Ok(p) => len + touch_v5(&p),
                Err(_) => unreachable!("checked at start"),
            },
        }
    }

    /// Encodes with our codec into `buf`.
    #[inline]
    pub fn ours_encode(&self, buf: &mut [u8]) -> usize {
        match black_box(&self.ours).encode(self.version, buf) {
            Ok(n) => n,
            Err(_) => unreachable!("checked at start"),
        }
    }

    /// Encodes with rumqttc into the cleared `buf`.
    #[inline]
    pub fn theirs_encode(&self, buf: &mut BytesMut) -> usize {
        buf.clear();
        let r = match black_box(&self.theirs) {
            Theirs::V4(p) => p.write(buf, MAX).ok(),
            Theirs::V5(p) => p.write(buf, Some(MAX as u32)).ok(),
        };
        match r {
            Some(n) => n,
            None => unreachable!("checked at start"),
        }
    }
}

fn qos_n(q: QoS) -> usize {
    q as usize
}

/// Reads every field of one of our decoded packets (lazy lists are iterated).
fn touch_ours(p: &Packet<'_>) -> usize {
    match p {
        Packet::Publish(p) => {
            let props: usize = p
                .properties
                .iter()
                .map(|prop| match prop {
                    Property::PayloadFormatIndicator(b) => usize::from(b),
                    Property::MessageExpiryInterval(v) => v as usize,
                    Property::UserProperty(k, v) => k.len() + v.len(),
                    Property::ContentType(t) => t.len(),
                    _ => unreachable!("only these are benchmarked"),
                })
                .sum();
            black_box(p.topic).len()
                + black_box(p.payload).len()
                + qos_n(p.qos)
                + p.packet_id.map_or(0, |id| usize::from(id.get()))
                + props
        }
        Packet::Connect(c) => {
            let will = c.will.as_ref().map_or(0, |w| {
                black_box(w.topic.as_str()).len() + black_box(w.payload).len() + qos_n(w.qos)
            });
            black_box(c.client_id).len()
                + usize::from(c.keep_alive)
                + usize::from(c.clean_start)
                + will
                + c.username.map_or(0, |u| black_box(u).len())
                + c.password.map_or(0, |p| black_box(p).len())
        }
        Packet::Subscribe(s) => {
            usize::from(s.packet_id.get())
                + s.filters
                    .iter()
                    .map(|(f, o)| black_box(f.as_str()).len() + qos_n(o.qos))
                    .sum::<usize>()
        }
        _ => unreachable!("not benchmarked"),
    }
}

fn touch_v4(p: &r4::Packet) -> usize {
    match p {
        r4::Packet::Publish(p) => {
            black_box(&p.topic).len()
                + black_box(&p.payload).len()
                + p.qos as usize
                + usize::from(p.pkid)
        }
        r4::Packet::Connect(c) => {
            let will = c.last_will.as_ref().map_or(0, |w| {
                black_box(&w.topic).len() + black_box(&w.message).len() + w.qos as usize
            });
            let login = c.login.as_ref().map_or(0, |l| {
                black_box(&l.username).len() + black_box(&l.password).len()
            });
            black_box(&c.client_id).len()
                + usize::from(c.keep_alive)
                + usize::from(c.clean_session)
                + will
                + login
        }
        r4::Packet::Subscribe(s) => {
            usize::from(s.pkid)
                + s.filters
                    .iter()
                    .map(|f| black_box(&f.path).len() + f.qos as usize)
                    .sum::<usize>()
        }
        _ => unreachable!("not benchmarked"),
    }
}

fn touch_v5(p: &r5::Packet) -> usize {
    match p {
        r5::Packet::Publish(p) => {
            let props = p.properties.as_ref().map_or(0, |pr| {
                pr.payload_format_indicator.map_or(0, usize::from)
                    + pr.message_expiry_interval.map_or(0, |v| v as usize)
                    + pr.user_properties
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                    + pr.content_type.as_ref().map_or(0, String::len)
            });
            black_box(&p.topic).len()
                + black_box(&p.payload).len()
                + p.qos as usize
                + usize::from(p.pkid)
                + props
        }
        _ => unreachable!("not benchmarked"),
    }
}
