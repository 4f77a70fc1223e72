//! The engine the `std` runtimes share, against a scripted broker on a fake clock.

use std::time::Duration;

use bytes::BytesMut;
use mqtt_proto::{
    Ack, ConnAck, Packet, PacketId, Properties, Property, ProtocolVersion, Publish, QoS,
    ReasonCode, ReasonCodes, Status, SubAck, SubscriptionOptions, TopicFilter, decode,
};
use mqtt_session::engine::{Engine, Failure, Identity, Output, ReadStatus};
use mqtt_session::{Backoff, Config, ConnectionError, Instant};

struct T {
    e: Engine<u32>,
    v: ProtocolVersion,
    now: Instant,
    tx: Vec<u8>,
    rx: BytesMut,
    outs: Vec<Output<u32>>,
}

impl T {
    fn new(v: ProtocolVersion, queue: usize) -> Self {
        let cfg = Config {
            version: v,
            ..Config::default()
        };
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        let id = Identity {
            client_id: "t".into(),
            ..Identity::default()
        };
        T {
            e: Engine::new(cfg, id, backoff, queue, 64 * 1024, Instant::ZERO),
            v,
            now: Instant::ZERO,
            tx: Vec::new(),
            rx: BytesMut::new(),
            outs: Vec::new(),
        }
    }

    fn connect(&mut self) {
        assert_eq!(self.e.reconnect_at(), Some(self.now));
        self.e.start(self.now, &mut self.tx).unwrap();
        assert_eq!(self.tx.first(), Some(&0x10), "CONNECT");
        assert_eq!(self.e.reconnect_at(), None);
        self.feed(&Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)));
        assert!(self.e.is_connected());
        assert!(matches!(
            self.take().as_slice(),
            [Output::Connected {
                session_present: false
            }]
        ));
    }

    fn feed(&mut self, p: &Packet<'_>) -> ReadStatus {
        let mut buf = vec![0; 4096];
        let n = p.encode(self.v, &mut buf).unwrap();
        self.rx.extend_from_slice(&buf[..n]);
        self.e.handle_read(self.now, &mut self.rx, &mut self.outs)
    }

    /// Every packet the engine writes now.
    fn sent(&mut self) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        loop {
            let n = self.e.transmit(self.now, &mut self.tx, &mut self.outs);
            if n == 0 {
                return packets;
            }
            let mut at = 0;
            while at < n {
                let Ok(Status::Complete((_, used))) = decode(&self.tx[at..n], self.v, usize::MAX)
                else {
                    panic!("engine wrote an invalid packet");
                };
                packets.push(self.tx[at..at + used].to_vec());
                at += used;
            }
        }
    }

    fn publish(&mut self, topic: &str, qos: QoS, token: u32) {
        let p = Publish {
            qos,
            ..Publish::new(topic, b"x")
        };
        self.e
            .publish(self.now, &p, 5, token)
            .map_err(|(e, _)| e)
            .unwrap();
    }

    fn take(&mut self) -> Vec<Output<u32>> {
        std::mem::take(&mut self.outs)
    }
}

fn packet_id(bytes: &[u8], v: ProtocolVersion) -> PacketId {
    match decode(bytes, v, usize::MAX).unwrap() {
        Status::Complete((Packet::Publish(p), _)) => p.packet_id.unwrap(),
        Status::Complete((Packet::Subscribe(s), _)) => s.packet_id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn completions_come_back_with_their_values() {
    let mut t = T::new(ProtocolVersion::V311, 64);
    t.connect();
    t.publish("a", QoS::AtMostOnce, 10);
    t.publish("b", QoS::AtLeastOnce, 11);
    let sent = t.sent();
    assert_eq!(sent.len(), 2);
    // QoS 0 completes once written.
    let outs = t.take();
    assert!(matches!(
        outs.as_slice(),
        [Output::Published {
            completion: 10,
            result: Ok(ReasonCode::Success)
        }]
    ));
    let id = packet_id(&sent[1], t.v);
    assert_eq!(
        t.feed(&Packet::PubAck(Ack::new(id))),
        ReadStatus::NeedMore(2)
    );
    assert!(matches!(
        t.take().as_slice(),
        [Output::Published {
            completion: 11,
            result: Ok(_)
        }]
    ));
    let stats = t.e.stats(t.now);
    assert_eq!((stats.sent, stats.dropped, stats.in_flight), (2, 0, 0));
}

#[test]
fn a_full_queue_refuses_instead_of_dropping_equal_priority() {
    let mut t = T::new(ProtocolVersion::V311, 3);
    for token in 0..3 {
        t.publish("q", QoS::AtLeastOnce, token);
    }
    let p = Publish {
        qos: QoS::AtLeastOnce,
        ..Publish::new("q", b"x")
    };
    let (err, back) = t.e.publish(t.now, &p, 5, 99).unwrap_err();
    assert_eq!((err, back), (mqtt_session::Error::QueueFull, 99));
    // A more important message evicts the oldest less important one, and says so.
    t.e.publish(t.now, &p, 9, 100).map_err(|(e, _)| e).unwrap();
    assert!(matches!(
        t.take().as_slice(),
        [] | [Output::Published {
            completion: 0,
            result: Err(Failure::Evicted)
        }]
    ));
    assert_eq!(t.e.stats(t.now).queued_by_priority[4], 2);
    assert_eq!(t.e.stats(t.now).queued_by_priority[8], 1);
}

#[test]
fn disconnect_fails_what_is_pending_and_never_reconnects() {
    let mut t = T::new(ProtocolVersion::V5, 64);
    t.publish("a", QoS::AtLeastOnce, 1);
    let f = TopicFilter::new("x/#").unwrap();
    t.e.subscribe(
        t.now,
        &[(f, SubscriptionOptions::new(QoS::AtMostOnce))],
        Some(2),
    )
    .unwrap();
    // Offline: nothing can complete, so both fail at once.
    t.e.disconnect(&mut t.outs);
    let outs = t.take();
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(outs.iter().all(|o| matches!(
        o,
        Output::Published {
            result: Err(Failure::Closed),
            ..
        } | Output::Acknowledged {
            result: Err(Failure::Closed),
            ..
        }
    )));
    assert!(t.e.is_closed());
    assert_eq!(t.e.reconnect_at(), None);
    assert_eq!(t.e.poll_timeout(), None);
    let p = Publish::new("a", b"x");
    assert_eq!(
        t.e.publish(t.now, &p, 5, 3).unwrap_err().0,
        mqtt_session::Error::Closed
    );
}

#[test]
fn a_lost_connection_schedules_a_reconnect_with_backoff() {
    let mut t = T::new(ProtocolVersion::V311, 64);
    t.connect();
    t.now = Instant::from_millis(1_000);
    let delay = t.e.transport_closed(t.now, &mut t.outs);
    assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_millis(200));
    let at = t.e.reconnect_at().unwrap();
    assert_eq!(at, t.now + delay);
    assert_eq!(t.e.poll_timeout(), Some(at));
    assert!(matches!(
        t.take().as_slice(),
        [Output::ConnectionLost(ConnectionError::TransportClosed)]
    ));
    let stats = t.e.stats(t.now);
    assert_eq!((stats.connected, stats.backoff), (false, Some(delay)));
    // The next connection counts as a reconnect.
    t.now = at;
    t.connect();
    assert_eq!(t.e.stats(t.now).reconnects, 1);
}

#[test]
fn v5_routes_use_subscription_identifiers_so_each_handler_gets_one_copy() {
    let v = ProtocolVersion::V5;
    let mut t = T::new(v, 64);
    t.connect();
    let opts = SubscriptionOptions::new(QoS::AtMostOnce);
    let wide =
        t.e.route(t.now, TopicFilter::new("a/#").unwrap(), opts)
            .unwrap();
    let narrow =
        t.e.route(t.now, TopicFilter::new("a/+").unwrap(), opts)
            .unwrap();
    let sent = t.sent();
    assert_eq!(sent.len(), 2);
    for (bytes, key) in sent.iter().zip([wide, narrow]) {
        let Ok(Status::Complete((Packet::Subscribe(s), _))) = decode(bytes, v, usize::MAX) else {
            panic!()
        };
        assert_eq!(
            s.properties.subscription_identifiers().collect::<Vec<_>>(),
            [u32::try_from(key).unwrap()]
        );
        let codes = [ReasonCode::Success];
        t.feed(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::new(&[]),
            reason_codes: ReasonCodes::new(&codes),
        }));
    }
    // The broker sends one copy per matching subscription, each with its identifier.
    for key in [wide, narrow] {
        let props = [Property::SubscriptionIdentifier(
            u32::try_from(key).unwrap(),
        )];
        t.feed(&Packet::Publish(Publish {
            properties: Properties::new(&props),
            ..Publish::new("a/b", b"hi")
        }));
    }
    let routes: Vec<Vec<u64>> = t
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Message { message, routes } => {
                assert_eq!(
                    (message.topic.as_str(), &message.payload[..]),
                    ("a/b", &b"hi"[..])
                );
                Some(routes)
            }
            _ => None,
        })
        .collect();
    assert_eq!(routes, [vec![wide], vec![narrow]]);
}

#[test]
fn v311_routes_match_by_filter() {
    let mut t = T::new(ProtocolVersion::V311, 64);
    t.connect();
    let opts = SubscriptionOptions::new(QoS::AtMostOnce);
    let wide =
        t.e.route(t.now, TopicFilter::new("a/#").unwrap(), opts)
            .unwrap();
    let other =
        t.e.route(t.now, TopicFilter::new("b/+").unwrap(), opts)
            .unwrap();
    let _ = t.sent();
    t.feed(&Packet::Publish(Publish::new("a/b", b"1")));
    t.feed(&Packet::Publish(Publish::new("b/c", b"2")));
    let routes: Vec<Vec<u64>> = t
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Message { routes, .. } => Some(routes),
            _ => None,
        })
        .collect();
    assert_eq!(routes, [vec![wide], vec![other]]);
    assert!(t.e.unroute(wide));
    t.feed(&Packet::Publish(Publish::new("a/b", b"3")));
    assert!(matches!(t.take().as_slice(), [Output::Message { routes, .. }] if routes.is_empty()));
    assert_eq!(t.e.stats(t.now).received, 3);
}

#[test]
fn payloads_share_the_read_buffer_and_split_packets_wait() {
    let mut t = T::new(ProtocolVersion::V311, 64);
    t.connect();
    let mut buf = vec![0; 64];
    let n = Packet::Publish(Publish::new("t", b"payload"))
        .encode(t.v, &mut buf)
        .unwrap();
    t.rx.extend_from_slice(&buf[..3]);
    assert!(matches!(
        t.e.handle_read(t.now, &mut t.rx, &mut t.outs),
        ReadStatus::NeedMore(_)
    ));
    assert!(t.take().is_empty());
    t.rx.extend_from_slice(&buf[3..n]);
    let _ = t.e.handle_read(t.now, &mut t.rx, &mut t.outs);
    assert!(t.rx.is_empty());
    assert!(matches!(
        t.take().as_slice(),
        [Output::Message { message, .. }] if &message.payload[..] == b"payload"
    ));
}

/// The engine announces a Receive Maximum below what it can track, so a broker that frees
/// its quota early (mosquitto 2.0 counts at PUBREC) does not make it close the connection.
#[test]
fn receive_maximum_leaves_room_for_brokers_that_overshoot() {
    let v = ProtocolVersion::V5;
    let cfg = Config {
        version: v,
        receive_maximum: 128,
        ..Config::default()
    };
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
    let mut t = T::new(v, 64);
    t.e = Engine::new(
        cfg,
        Identity::default(),
        backoff,
        64,
        64 * 1024,
        Instant::ZERO,
    );
    t.e.start(t.now, &mut t.tx).unwrap();
    let Ok(Status::Complete((Packet::Connect(c), _))) = decode(&t.tx, v, usize::MAX) else {
        panic!("not a CONNECT")
    };
    assert_eq!(
        c.properties.get(mqtt_proto::PropertyId::ReceiveMaximum),
        Some(Property::ReceiveMaximum(128))
    );
    t.feed(&Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)));
    // 200 QoS 2 messages whose PUBREL has not arrived yet: more than announced, all kept.
    for id in 1..=200u16 {
        let status = t.feed(&Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: PacketId::new(id),
            ..Publish::new("q2", b"x")
        }));
        if status == ReadStatus::TransmitFirst {
            let _ = t.sent();
            let _ = t.e.handle_read(t.now, &mut t.rx, &mut t.outs);
        }
        let _ = t.sent();
    }
    assert!(t.e.is_connected());
    let delivered = t
        .take()
        .iter()
        .filter(|o| matches!(o, Output::Message { .. }))
        .count();
    assert_eq!(delivered, 200);
}

#[test]
fn a_qos2_message_acked_by_hand_waits_for_its_record_and_keeps_its_place() {
    let mut t = T::new(ProtocolVersion::V311, 64);
    t.e = Engine::new(
        Config {
            version: t.v,
            manual_acks: true,
            ..Config::default()
        },
        Identity {
            client_id: "t".into(),
            ..Identity::default()
        },
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7),
        64,
        64 * 1024,
        Instant::ZERO,
    );
    t.e.enable_journal();
    t.connect();
    let publish = |qos, id: u16, payload: &'static [u8]| {
        Packet::Publish(Publish {
            qos,
            packet_id: PacketId::new(id),
            ..Publish::new("t", payload)
        })
    };
    t.feed(&publish(QoS::ExactlyOnce, 1, b"first"));
    t.feed(&publish(QoS::AtLeastOnce, 2, b"second"));
    assert!(t.take().is_empty(), "both wait for the first one's record");
    let mut ops = Vec::new();
    let lsn = t.e.take_records(&mut ops).expect("the record of id 1");
    assert_eq!(ops.len(), 1);
    assert!(
        t.sent().is_empty() && t.take().is_empty(),
        "not durable yet"
    );
    t.e.handle_durable(lsn);
    assert!(t.sent().is_empty(), "nothing acknowledged yet");
    let payloads: Vec<_> = t
        .take()
        .into_iter()
        .map(|o| match o {
            Output::Message { message, .. } => {
                assert!(!message.redelivered);
                message.payload
            }
            _ => panic!("only messages"),
        })
        .collect();
    assert_eq!(payloads, [&b"first"[..], &b"second"[..]], "in order");
}
