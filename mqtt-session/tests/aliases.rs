//! MQTT 5 topic aliases, both ways.

use mqtt_proto::{
    ConnAck, Packet, Properties, Property, PropertyId, ProtocolVersion, Publish, QoS, ReasonCode,
    Status, decode,
};
use mqtt_session::{Client, Config, ConnectOptions, ConnectionError, Event, Instant, Notice, Read};

const V: ProtocolVersion = ProtocolVersion::V5;

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len(V).unwrap()];
    p.encode(V, &mut b).unwrap();
    b
}

/// A connected client whose CONNACK carried `props`.
fn connected(cfg: Config, props: &[Property<'_>]) -> Client<16, 4096, 4> {
    let mut c = Client::new(cfg);
    let mut buf = [0u8; 256];
    let n = c
        .connect(Instant::ZERO, &ConnectOptions::default(), &mut buf)
        .unwrap();
    let Ok(Status::Complete((Packet::Connect(connect), _))) = decode(&buf[..n], V, usize::MAX)
    else {
        panic!("no CONNECT");
    };
    // The client offers the incoming aliases it can keep.
    assert_eq!(
        connect.properties.get(PropertyId::TopicAliasMaximum),
        Some(Property::TopicAliasMaximum(cfg.topic_alias_maximum.min(16)))
    );
    let ack = encode(&Packet::ConnAck(ConnAck {
        properties: Properties::new(props),
        ..ConnAck::new(false, ReasonCode::Success)
    }));
    assert!(matches!(
        c.handle_read(Instant::ZERO, &ack),
        Read::Packet {
            event: Some(Event::Connected { .. }),
            ..
        }
    ));
    c
}

#[test]
fn outgoing_aliases_stay_within_the_server_maximum() {
    let mut c = connected(Config::default(), &[Property::TopicAliasMaximum(2)]);
    for topic in ["a/b", "a/b", "c", "a/b", "d", "c"] {
        c.publish(Instant::ZERO, &Publish::new(topic, b"x"), 5)
            .unwrap();
    }
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    while let Some(n) = c.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
        let Ok(Status::Complete((Packet::Publish(p), _))) = decode(&buf[..n], V, usize::MAX) else {
            panic!("expected PUBLISH");
        };
        let alias = match p.properties.get(PropertyId::TopicAlias) {
            Some(Property::TopicAlias(a)) => Some(a),
            _ => None,
        };
        seen.push((p.topic.to_owned(), alias));
    }
    let expected = [
        ("a/b", Some(1)), // first use: topic and the new alias
        ("", Some(1)),    // then the alias alone
        ("c", Some(2)),
        ("", Some(1)),
        ("d", None), // the server allows two aliases: the third topic goes in full
        ("", Some(2)),
    ];
    let expected: Vec<_> = expected.iter().map(|(t, a)| (t.to_string(), *a)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn no_outgoing_aliases_unless_the_server_accepts_them() {
    let mut c = connected(Config::default(), &[]);
    c.publish(Instant::ZERO, &Publish::new("a/b", b"x"), 5)
        .unwrap();
    c.publish(Instant::ZERO, &Publish::new("a/b", b"y"), 5)
        .unwrap();
    let mut buf = [0u8; 256];
    while let Some(n) = c.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
        let Ok(Status::Complete((Packet::Publish(p), _))) = decode(&buf[..n], V, usize::MAX) else {
            panic!("expected PUBLISH");
        };
        assert_eq!(p.topic, "a/b");
        assert!(p.properties.is_empty());
    }
}

fn incoming(topic: &str, alias: u16) -> Vec<u8> {
    let props = [Property::TopicAlias(alias)];
    encode(&Packet::Publish(Publish {
        qos: QoS::AtMostOnce,
        properties: Properties::new(&props),
        ..Publish::new(topic, b"payload")
    }))
}

#[test]
fn incoming_aliases_are_resolved() {
    let cfg = Config {
        topic_alias_maximum: 2,
        ..Config::default()
    };
    let mut c = connected(cfg, &[]);
    let topic_of =
        |c: &mut Client<16, 4096, 4>, bytes: &[u8]| match c.handle_read(Instant::ZERO, bytes) {
            Read::Packet {
                event: Some(Event::Message(m)),
                ..
            } => m.topic.to_owned(),
            other => panic!("{other:?}"),
        };
    assert_eq!(topic_of(&mut c, &incoming("x/y", 1)), "x/y");
    assert_eq!(topic_of(&mut c, &incoming("", 1)), "x/y");
    // A mapping can be replaced.
    assert_eq!(topic_of(&mut c, &incoming("z", 1)), "z");
    assert_eq!(topic_of(&mut c, &incoming("", 1)), "z");
    // Above the maximum the client offered: the connection ends with Topic Alias invalid.
    assert_eq!(
        c.handle_read(Instant::ZERO, &incoming("w", 3)),
        Read::Closed
    );
    assert_eq!(
        c.poll_notice(),
        Some(Notice::ConnectionLost(ConnectionError::ProtocolViolation(
            ReasonCode::TopicAliasInvalid
        )))
    );
}

#[test]
fn an_unknown_incoming_alias_is_a_violation() {
    let mut c = connected(Config::default(), &[]);
    assert_eq!(c.handle_read(Instant::ZERO, &incoming("", 5)), Read::Closed);
    let mut buf = [0u8; 64];
    let n = c.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    let Ok(Status::Complete((Packet::Disconnect(d), _))) = decode(&buf[..n], V, usize::MAX) else {
        panic!("expected DISCONNECT");
    };
    assert_eq!(d.reason_code, ReasonCode::TopicAliasInvalid);
}
