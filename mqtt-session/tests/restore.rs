//! Subscriptions are made again after the server lost the session, and only then.

use mqtt_proto::{
    ConnAck, Packet, PacketId, ProtocolVersion, QoS, ReasonCode, Status, SubAck,
    SubscriptionOptions, TopicFilter, UnsubAck, decode,
};
use mqtt_session::{Client, Config, ConnectOptions, Event, Instant, Read};

const V: ProtocolVersion = ProtocolVersion::V311;

struct Peer {
    client: Client<16, 4096, 4>,
    now: Instant,
    buf: [u8; 1024],
}

impl Peer {
    fn new() -> Self {
        let cfg = Config {
            version: V,
            // Resuming a session needs clean start off.
            clean_start: false,
            ..Config::default()
        };
        Peer {
            client: Client::new(cfg),
            now: Instant::ZERO,
            buf: [0; 1024],
        }
    }

    /// Connects; the broker answers with `session_present`.
    fn connect(&mut self, session_present: bool) {
        self.client
            .connect(self.now, &ConnectOptions::default(), &mut self.buf)
            .unwrap();
        let ack = encode(&Packet::ConnAck(ConnAck::new(
            session_present,
            ReasonCode::Success,
        )));
        assert!(matches!(
            self.client.handle_read(self.now, &ack),
            Read::Packet {
                event: Some(Event::Connected { .. }),
                ..
            }
        ));
    }

    /// Every packet the client writes now, as (type, SUBSCRIBE filters, packet id).
    fn sent(&mut self) -> Vec<(String, Vec<String>, Option<u16>)> {
        let mut out = Vec::new();
        while let Some(n) = self.client.poll_transmit(self.now, &mut self.buf).unwrap() {
            let Ok(Status::Complete((p, _))) = decode(&self.buf[..n], V, usize::MAX) else {
                panic!("client wrote an invalid packet");
            };
            let (filters, id) = match p {
                Packet::Subscribe(s) => (
                    s.filters
                        .iter()
                        .map(|(f, _)| f.as_str().to_owned())
                        .collect(),
                    Some(s.packet_id.get()),
                ),
                Packet::Unsubscribe(u) => (
                    u.filters.iter().map(|f| f.as_str().to_owned()).collect(),
                    Some(u.packet_id.get()),
                ),
                _ => (Vec::new(), None),
            };
            out.push((format!("{:?}", p.packet_type()), filters, id));
        }
        out
    }

    fn feed(&mut self, p: &Packet<'_>) -> Option<String> {
        let bytes = encode(p);
        match self.client.handle_read(self.now, &bytes) {
            Read::Packet { used, event } => {
                assert_eq!(used, bytes.len());
                event.map(|e| format!("{e:?}"))
            }
            other => panic!("{other:?}"),
        }
    }
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len(V).unwrap()];
    p.encode(V, &mut b).unwrap();
    b
}

fn filter(s: &str) -> TopicFilter<'_> {
    TopicFilter::new(s).unwrap()
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

#[test]
fn granted_filters_are_restored_only_without_a_session() {
    let mut p = Peer::new();
    p.connect(false);
    let q1 = SubscriptionOptions::new(QoS::AtLeastOnce);
    let sub = p
        .client
        .subscribe(
            p.now,
            &[(filter("a/+"), q1), (filter("b/#"), q1), (filter("c"), q1)],
            &[],
        )
        .unwrap();
    let sent = p.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, ["a/+", "b/#", "c"]);
    // The broker grants two of the three.
    let codes = [
        ReasonCode::GrantedQoS1,
        ReasonCode::UnspecifiedError,
        ReasonCode::Success,
    ];
    let ev = p.feed(&Packet::SubAck(SubAck::new(sub, &codes))).unwrap();
    assert!(ev.starts_with("Subscribed"), "{ev}");
    assert_eq!(p.client.subscriptions(), 2);
    assert_eq!(p.client.pending(), 0);

    // Reconnect with the session kept: nothing is subscribed again.
    p.client.handle_disconnect(p.now);
    p.connect(true);
    assert!(p.sent().is_empty());

    // Reconnect after the broker lost the session: each granted filter is subscribed again.
    p.client.handle_disconnect(p.now);
    p.connect(false);
    let again = p.sent();
    let filters: Vec<_> = again.iter().flat_map(|s| s.1.clone()).collect();
    assert_eq!(filters, ["a/+", "c"]);
    // Their SUBACKs are the client's own business: no event for the application.
    for (_, _, pid) in &again {
        let ack = Packet::SubAck(SubAck::new(id(pid.unwrap()), &[ReasonCode::GrantedQoS1]));
        assert_eq!(p.feed(&ack), None);
    }
    assert_eq!(p.client.subscriptions(), 2);
    assert_eq!(p.client.pending(), 0);

    // Unsubscribing forgets the filter: the next restore only has the other one.
    let unsub = p.client.unsubscribe(p.now, &[filter("a/+")], &[]).unwrap();
    assert_eq!(p.sent()[0].1, ["a/+"]);
    let ev = p
        .feed(&Packet::UnsubAck(UnsubAck::new(unsub, &[])))
        .unwrap();
    assert!(ev.starts_with("Unsubscribed"), "{ev}");
    assert_eq!(p.client.subscriptions(), 1);
    p.client.handle_disconnect(p.now);
    p.connect(false);
    let filters: Vec<_> = p.sent().iter().flat_map(|s| s.1.clone()).collect();
    assert_eq!(filters, ["c"]);
}

#[test]
fn subscribing_again_replaces_the_kept_subscription() {
    let mut p = Peer::new();
    p.connect(false);
    for qos in [QoS::AtMostOnce, QoS::ExactlyOnce] {
        let opts = SubscriptionOptions::new(qos);
        let sub = p
            .client
            .subscribe(p.now, &[(filter("x/y"), opts)], &[])
            .unwrap();
        p.sent();
        p.feed(&Packet::SubAck(SubAck::new(sub, &[ReasonCode::Success])));
    }
    assert_eq!(p.client.subscriptions(), 1);
    p.client.handle_disconnect(p.now);
    p.connect(false);
    let n = p.client.poll_transmit(p.now, &mut p.buf).unwrap().unwrap();
    let Ok(Status::Complete((Packet::Subscribe(s), _))) = decode(&p.buf[..n], V, usize::MAX) else {
        panic!("expected a SUBSCRIBE");
    };
    let (f, o) = s.filters.iter().next().unwrap();
    assert_eq!((f.as_str(), o.qos), ("x/y", QoS::ExactlyOnce));
}

#[test]
fn nothing_is_written_after_the_server_disconnects_but_a_closing_disconnect() {
    let mut p = Peer::new();
    p.connect(false);
    // A QoS 1 message arrives: its PUBACK is owed...
    let publish = encode(&Packet::Publish(mqtt_proto::Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(id(9)),
        ..mqtt_proto::Publish::new("t", b"x")
    }));
    assert!(matches!(
        p.client.handle_read(p.now, &publish),
        Read::Packet {
            event: Some(Event::Message(_)),
            ..
        }
    ));
    // ...but the server disconnects before it is written: the connection is over.
    assert_eq!(p.client.handle_read(p.now, &[0xE0, 0x00]), Read::Closed);
    assert!(p.sent().is_empty(), "no ack to a server that has gone");
}
