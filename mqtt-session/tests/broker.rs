//! Broker scenarios on the deterministic harness: the broker core and our own client state
//! machines joined in memory on a fake clock. Each test asserts bytes or events.

mod broker_common;

use broker_common::*;
use mqtt_proto::{
    Connect, Packet, PacketId, Property, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions,
};
use mqtt_session::broker::{Config, Drops, Limits};
use mqtt_session::{ConnectOptions, Instant};

/// Publisher and subscriber at `version`, subscriber on `filter` at `sub_qos`.
fn pair(version: ProtocolVersion, filter: &str, sub_qos: QoS) -> Net {
    let mut net = Net::new(Config::default());
    let s = net.client(ccfg(version));
    let p = net.client(ccfg(version));
    net.connect_id(s, "sub");
    net.connect_id(p, "pub");
    subscribe(&mut net, s, filter, opts(sub_qos));
    assert_eq!(
        net.peers[s].got,
        [
            Got::Connected { present: false },
            Got::Subscribed {
                codes: vec![match sub_qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }]
            }
        ]
    );
    net.peers[s].got.clear();
    net.peers[p].got.clear();
    net
}

#[test]
fn qos_0_1_2_both_ways_at_31_311_and_5() {
    for version in [ProtocolVersion::V31, V311, V5] {
        for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut net = pair(version, "t/#", sub_qos);
                let token = publish(&mut net, 1, "t/a", b"hi", pub_qos, false);
                let msgs = net.messages(0);
                assert_eq!(msgs.len(), 1, "{version} {pub_qos:?} {sub_qos:?}");
                assert_eq!(msgs[0].topic, "t/a");
                assert_eq!(msgs[0].payload, b"hi");
                assert_eq!(msgs[0].qos, pub_qos.min(sub_qos));
                assert!(!msgs[0].retain);
                if pub_qos != QoS::AtMostOnce {
                    assert_eq!(
                        net.peers[1].got,
                        [Got::Published {
                            token,
                            rc: ReasonCode::Success
                        }]
                    );
                }
                // Every handshake completed: nothing is left in flight on either side.
                assert_eq!(net.broker.stats().queued_messages, 0);
                assert_eq!(net.cl(1).in_flight(), 0);
                let st = net.broker.stats();
                assert_eq!((st.messages_received, st.messages_sent), (1, 1));
            }
        }
    }
}

#[test]
fn no_matching_subscribers_at_5() {
    let mut net = pair(V5, "other", QoS::AtLeastOnce);
    let token = publish(&mut net, 1, "t/a", b"x", QoS::AtLeastOnce, false);
    assert_eq!(
        net.peers[1].got,
        [Got::Published {
            token,
            rc: ReasonCode::NoMatchingSubscribers
        }]
    );
}

#[test]
fn retained_set_replace_clear_and_wildcard_delivery() {
    let mut net = Net::new(Config::default());
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "r/a", b"1", QoS::AtLeastOnce, true);
    publish(&mut net, p, "r/a", b"2", QoS::AtLeastOnce, true);
    publish(&mut net, p, "r/b", b"3", QoS::AtMostOnce, true);
    assert_eq!(net.broker.stats().retained, 2);
    assert_eq!(&*net.broker.retained("r/a").unwrap().payload, b"2");
    let s = net.client(ccfg(V5));
    net.connect_id(s, "sub");
    subscribe(&mut net, s, "r/+", opts(QoS::AtLeastOnce));
    let mut got: Vec<_> = net
        .messages(s)
        .into_iter()
        .map(|m| (m.topic, m.payload, m.qos, m.retain))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("r/a".into(), b"2".to_vec(), QoS::AtLeastOnce, true),
            ("r/b".into(), b"3".to_vec(), QoS::AtMostOnce, true)
        ]
    );
    // Clear with an empty payload; a new subscriber gets only r/b.
    publish(&mut net, p, "r/a", b"", QoS::AtMostOnce, true);
    assert_eq!(net.broker.stats().retained, 1);
    let s2 = net.client(ccfg(V5));
    net.connect_id(s2, "sub2");
    subscribe(&mut net, s2, "r/#", opts(QoS::AtMostOnce));
    let got: Vec<_> = net.messages(s2).into_iter().map(|m| m.topic).collect();
    assert_eq!(got, ["r/b"]);
}

#[test]
fn a_wildcard_subscription_gets_all_10000_retained() {
    let cfg = Config {
        limits: Limits {
            session_messages: 20_000,
            session_bytes: 64 << 20,
            ..Limits::default()
        },
        ..Config::default()
    };
    let mut net = Net::new(cfg);
    let p = net.client(ccfg(V311));
    net.connect_id(p, "pub");
    for i in 0..10_000 {
        publish(
            &mut net,
            p,
            &format!("fleet/{}/{}", i / 100, i % 100),
            b"v",
            QoS::AtMostOnce,
            true,
        );
    }
    assert_eq!(net.broker.stats().retained, 10_000);
    let s = net.client(ccfg(V311));
    net.connect_id(s, "sub");
    subscribe(&mut net, s, "fleet/#", opts(QoS::AtMostOnce));
    let got = net.messages(s);
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().all(|m| m.retain));
    let mut topics: Vec<_> = got.into_iter().map(|m| m.topic).collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 10_000);
}

#[test]
fn retained_message_expires() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "pub", 0)));
    let props = [Property::MessageExpiryInterval(10)];
    net.send(
        r,
        &Packet::Publish(Publish {
            retain: true,
            properties: mqtt_proto::Properties::new(&props),
            ..Publish::new("e/t", b"soon gone")
        }),
    );
    assert_eq!(net.broker.stats().retained, 1);
    net.advance_ms(4_000);
    // A subscriber 4 s later sees 6 s left.
    let s = net.client(ccfg(V5));
    net.connect_id(s, "s1");
    subscribe(&mut net, s, "e/#", opts(QoS::AtMostOnce));
    let got = net.messages(s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].expiry, Some(6));
    net.advance_ms(7_000);
    let s2 = net.client(ccfg(V5));
    net.connect_id(s2, "s2");
    subscribe(&mut net, s2, "e/#", opts(QoS::AtMostOnce));
    assert!(net.messages(s2).is_empty());
    assert_eq!(net.broker.stats().retained, 0);
    assert_eq!(net.broker.stats().dropped.expired, 1);
}

/// A watcher subscribed to `w/#` and a client "dying" with a will on `w/dying`.
fn will_setup(version: ProtocolVersion, cfg: ClientConfig, props: &[Property<'_>]) -> Net {
    let mut net = Net::new(Config::default());
    let w = net.client(ccfg(V5));
    net.connect_id(w, "watcher");
    subscribe(&mut net, w, "w/#", opts(QoS::AtLeastOnce));
    net.peers[w].got.clear();
    let d = net.client(ClientConfig { version, ..cfg });
    net.connect(
        d,
        &ConnectOptions {
            client_id: "dying",
            will: Some(will("w/dying", b"gone", props)),
            ..Default::default()
        },
    );
    net
}

#[test]
fn will_on_abrupt_drop_not_on_disconnect() {
    for version in [V311, V5] {
        let mut net = will_setup(version, ccfg(version), &[]);
        net.drop_transport(1);
        let got = net.messages(0);
        assert_eq!(got.len(), 1, "{version}");
        assert_eq!(
            (got[0].topic.as_str(), &got[0].payload[..]),
            ("w/dying", &b"gone"[..])
        );

        let mut net = will_setup(version, ccfg(version), &[]);
        net.cl(1).disconnect(ReasonCode::Success);
        net.run();
        assert!(
            net.messages(0).is_empty(),
            "normal DISCONNECT discards the will"
        );
        assert!(!net.broker.has_session("dying"));
    }
}

#[test]
fn disconnect_with_will_message_publishes_it() {
    let mut net = will_setup(V5, ccfg(V5), &[]);
    net.cl(1).disconnect(ReasonCode::DisconnectWithWill);
    net.run();
    assert_eq!(net.messages(0).len(), 1);
}

#[test]
fn will_delay_and_its_cancellation_by_reconnect() {
    let cfg = ClientConfig {
        session_expiry: 100,
        clean_start: false,
        ..ccfg(V5)
    };
    let props = [Property::WillDelayInterval(5)];
    let mut net = will_setup(V5, cfg, &props);
    net.drop_transport(1);
    assert!(net.messages(0).is_empty());
    net.advance_ms(4_999);
    assert!(net.messages(0).is_empty());
    net.advance_ms(1);
    assert_eq!(net.messages(0).len(), 1, "published once the delay passed");

    // Reconnecting within the delay cancels it.
    let mut net = will_setup(V5, cfg, &props);
    net.drop_transport(1);
    net.advance_ms(2_000);
    net.connect_id(1, "dying");
    net.advance_ms(10_000);
    assert!(net.messages(0).is_empty());
    assert_eq!(
        net.peers[1].got.last(),
        Some(&Got::Connected { present: true })
    );
}

#[test]
fn will_delay_is_cut_short_by_session_expiry() {
    let cfg = ClientConfig {
        session_expiry: 2,
        ..ccfg(V5)
    };
    let props = [Property::WillDelayInterval(60)];
    let mut net = will_setup(V5, cfg, &props);
    net.drop_transport(1);
    net.advance_ms(1_999);
    assert!(net.messages(0).is_empty());
    net.advance_ms(1);
    assert_eq!(net.messages(0).len(), 1);
    assert!(!net.broker.has_session("dying"));
}

#[test]
fn takeover_ends_the_first_connection_with_0x8e_and_its_will() {
    let mut net = will_setup(V5, ccfg(V5), &[]);
    let second = net.client(ccfg(V5));
    net.connect_id(second, "dying");
    let frames = net.take_frames(1);
    let last = frames.last().unwrap();
    assert_eq!(
        last,
        &[0xE0, 0x01, 0x8E],
        "DISCONNECT 0x8E to the first connection"
    );
    assert!(net.peers[1].closed);
    assert_eq!(
        net.messages(0).len(),
        1,
        "the will of the taken-over connection"
    );
    assert_eq!(net.peers[second].got, [Got::Connected { present: false }]);
    // At 3.1.1 the old connection is just closed.
    let mut net = will_setup(V311, ccfg(V311), &[]);
    let second = net.client(ccfg(V311));
    net.connect_id(second, "dying");
    assert!(net.peers[1].closed);
    assert!(net.take_frames(1).iter().all(|f| f[0] != 0xE0));
}

#[test]
fn session_expiry_and_resumption() {
    let mut net = Net::new(Config::default());
    let cfg = ClientConfig {
        session_expiry: 10,
        clean_start: false,
        ..ccfg(V5)
    };
    let c = net.client(cfg);
    net.connect_id(c, "persist");
    subscribe(&mut net, c, "a/#", opts(QoS::AtLeastOnce));
    net.drop_transport(c);
    net.advance_ms(9_000);
    assert!(net.broker.has_session("persist"));
    net.connect_id(c, "persist");
    assert_eq!(
        net.peers[c].got.last(),
        Some(&Got::Connected { present: true })
    );
    net.drop_transport(c);
    net.advance_ms(10_000);
    assert!(
        !net.broker.has_session("persist"),
        "expired 10 s after the second drop"
    );
    net.peers[c].got.clear();
    net.connect_id(c, "persist");
    assert_eq!(net.peers[c].got, [Got::Connected { present: false }]);
    // The session is new; our client made its subscription again because of that.
    assert_eq!(net.broker.stats().subscriptions, 1);
}

#[test]
fn clean_start_discards_the_session() {
    let mut net = Net::new(Config::default());
    let c = net.client(ClientConfig {
        clean_start: false,
        session_expiry: 100,
        ..ccfg(V5)
    });
    net.connect_id(c, "x");
    subscribe(&mut net, c, "a", opts(QoS::AtLeastOnce));
    net.drop_transport(c);
    let c2 = net.client(ClientConfig {
        clean_start: true,
        session_expiry: 100,
        ..ccfg(V5)
    });
    net.connect_id(c2, "x");
    assert_eq!(net.peers[c2].got, [Got::Connected { present: false }]);
    assert_eq!(net.broker.stats().subscriptions, 0);
}

#[test]
fn offline_queue_and_redelivery_with_original_ids_and_dup() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(300)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("sub", true, &props));
    net.send(
        s,
        &raw_subscribe(1, &[(filter("q/#"), opts(QoS::AtLeastOnce))], &[]),
    );
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "q/1", b"one", QoS::AtLeastOnce, false);
    net.take_frames(s);
    // Not acked; the transport drops; two more arrive while offline (and a QoS 0, not kept).
    net.drop_transport(s);
    publish(&mut net, p, "q/2", b"two", QoS::AtLeastOnce, false);
    publish(&mut net, p, "q/3", b"three", QoS::ExactlyOnce, false);
    publish(&mut net, p, "q/4", b"zero", QoS::AtMostOnce, false);
    assert_eq!(net.broker.stats().dropped.offline_qos0, 1);
    let s2 = net.raw(V5);
    net.send(s2, &connect_v5("sub", false, &props));
    let frames = net.take_frames(s2);
    match packet(&frames[0], V5) {
        Packet::ConnAck(a) => assert!(a.session_present),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        publishes(&frames, V5),
        [
            (
                true,
                QoS::AtLeastOnce,
                Some(1),
                "q/1".into(),
                b"one".to_vec()
            ),
            (
                false,
                QoS::AtLeastOnce,
                Some(2),
                "q/2".into(),
                b"two".to_vec()
            ),
            (
                false,
                QoS::AtLeastOnce,
                Some(3),
                "q/3".into(),
                b"three".to_vec()
            ),
        ]
    );
}

#[test]
fn qos2_redelivery_resends_pubrel_after_pubrec() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(300)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("sub", true, &props));
    net.send(
        s,
        &raw_subscribe(1, &[(filter("q"), opts(QoS::ExactlyOnce))], &[]),
    );
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "q", b"x", QoS::ExactlyOnce, false);
    net.take_frames(s);
    net.send(s, &Packet::PubRec(mqtt_proto::Ack::new(pid(1))));
    assert_eq!(net.take_frames(s), [vec![0x62, 0x02, 0x00, 0x01]], "PUBREL");
    net.drop_transport(s);
    let s2 = net.raw(V5);
    net.send(s2, &connect_v5("sub", false, &props));
    let frames = net.take_frames(s2);
    assert_eq!(
        frames[1],
        [0x62, 0x02, 0x00, 0x01],
        "PUBREL again, not the PUBLISH"
    );
    net.send(s2, &Packet::PubComp(mqtt_proto::Ack::new(pid(1))));
    assert_eq!(net.broker.stats().queued_messages, 0);
}

#[test]
fn inbound_qos2_duplicate_is_not_delivered_twice() {
    let mut net = pair(V5, "d", QoS::ExactlyOnce);
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "raw", 0)));
    let p = Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(7)),
        ..Publish::new("d", b"once")
    });
    net.send(r, &p);
    let dup = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(7)),
        ..Publish::new("d", b"once")
    });
    net.send(r, &dup);
    let frames = net.take_frames(r);
    assert_eq!(
        &frames[1..],
        [vec![0x50, 0x02, 0x00, 0x07], vec![0x50, 0x02, 0x00, 0x07]]
    );
    net.send(r, &Packet::PubRel(mqtt_proto::Ack::new(pid(7))));
    assert_eq!(net.take_frames(r), [vec![0x70, 0x02, 0x00, 0x07]]);
    assert_eq!(net.messages(0).len(), 1);
}

#[test]
fn shared_subscription_round_robin_is_fair() {
    let mut net = Net::new(Config::default());
    let members: Vec<usize> = (0..3).map(|_| net.client(ccfg(V5))).collect();
    for (n, &m) in members.iter().enumerate() {
        net.connect_id(m, &format!("m{n}"));
        subscribe(&mut net, m, "$share/g/jobs/+", opts(QoS::AtLeastOnce));
    }
    let plain = net.client(ccfg(V5));
    net.connect_id(plain, "plain");
    subscribe(&mut net, plain, "jobs/#", opts(QoS::AtMostOnce));
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    for i in 0..30 {
        publish(
            &mut net,
            p,
            &format!("jobs/{i}"),
            b"j",
            QoS::AtLeastOnce,
            false,
        );
    }
    let counts: Vec<usize> = members.iter().map(|&m| net.messages(m).len()).collect();
    assert_eq!(counts, [10, 10, 10]);
    assert_eq!(
        net.messages(plain).len(),
        30,
        "a plain subscription gets every message"
    );
}

#[test]
fn shared_subscription_skips_a_member_whose_window_is_full() {
    let mut net = Net::new(Config::default());
    // A raw member with Receive Maximum 1 that never acks.
    let slow = net.raw(V5);
    let props = [Property::ReceiveMaximum(1)];
    net.send(slow, &connect_v5("slow", true, &props));
    net.send(
        slow,
        &raw_subscribe(1, &[(filter("$share/g/t"), opts(QoS::AtLeastOnce))], &[]),
    );
    let fast = net.client(ccfg(V5));
    net.connect_id(fast, "fast");
    subscribe(&mut net, fast, "$share/g/t", opts(QoS::AtLeastOnce));
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    for _ in 0..10 {
        publish(&mut net, p, "t", b"x", QoS::AtLeastOnce, false);
    }
    let slow_got = publishes(&net.take_frames(slow), V5).len();
    assert_eq!(slow_got, 1, "one in flight, then skipped");
    assert_eq!(net.messages(fast).len(), 9);
    assert_eq!(net.broker.stats().dropped.total(), 0);
}

#[test]
fn no_local_and_retain_as_published() {
    let mut net = Net::new(Config::default());
    let c = net.client(ccfg(V5));
    net.connect_id(c, "self");
    let nl = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    subscribe(&mut net, c, "own/#", nl);
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtLeastOnce)
    };
    subscribe(&mut net, c, "rap/#", rap);
    subscribe(&mut net, c, "plain/#", opts(QoS::AtLeastOnce));
    publish(&mut net, c, "own/x", b"1", QoS::AtLeastOnce, false);
    assert!(
        net.messages(c).is_empty(),
        "no-local: not sent back to its publisher"
    );
    let o = net.client(ccfg(V5));
    net.connect_id(o, "other");
    publish(&mut net, o, "own/x", b"2", QoS::AtLeastOnce, false);
    publish(&mut net, o, "rap/x", b"3", QoS::AtLeastOnce, true);
    publish(&mut net, o, "plain/x", b"4", QoS::AtLeastOnce, true);
    let got: Vec<_> = net
        .messages(c)
        .into_iter()
        .map(|m| (m.topic, m.retain))
        .collect();
    assert_eq!(
        got,
        [
            ("own/x".into(), false),
            ("rap/x".into(), true),
            ("plain/x".into(), false)
        ]
    );
}

#[test]
fn retain_handling_0_1_2() {
    let mut net = Net::new(Config::default());
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "rh", b"kept", QoS::AtMostOnce, true);
    let s = net.client(ccfg(V5));
    net.connect_id(s, "s");
    for (rh, first, again) in [
        (RetainHandling::SendAtSubscribe, 1, 1),
        (RetainHandling::SendIfNew, 1, 0),
        (RetainHandling::DoNotSend, 0, 0),
    ] {
        let o = SubscriptionOptions {
            retain_handling: rh,
            ..opts(QoS::AtMostOnce)
        };
        subscribe(&mut net, s, "rh", o);
        assert_eq!(net.messages(s).len(), first, "{rh:?} first");
        subscribe(&mut net, s, "rh", o);
        assert_eq!(net.messages(s).len(), again, "{rh:?} again");
        let now = net.now;
        net.cl(s).unsubscribe(now, &[filter("rh")], &[]).unwrap();
        net.run();
    }
}

#[test]
fn subscription_identifiers_and_overlapping_subscriptions() {
    let mut net = Net::new(Config::default());
    let s = net.client(ccfg(V5));
    net.connect_id(s, "s");
    let now = net.now;
    net.cl(s)
        .subscribe(
            now,
            &[(filter("a/+"), opts(QoS::AtMostOnce))],
            &[Property::SubscriptionIdentifier(7)],
        )
        .unwrap();
    net.cl(s)
        .subscribe(
            now,
            &[(filter("a/#"), opts(QoS::ExactlyOnce))],
            &[Property::SubscriptionIdentifier(9)],
        )
        .unwrap();
    net.run();
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    publish(&mut net, p, "a/b", b"x", QoS::ExactlyOnce, false);
    let got = net.messages(s);
    assert_eq!(got.len(), 1, "one copy for overlapping subscriptions");
    assert_eq!(got[0].qos, QoS::ExactlyOnce, "at the highest QoS");
    let mut ids = got[0].sub_ids.clone();
    ids.sort();
    assert_eq!(ids, [7, 9]);
    // At 3.1.1 likewise one copy at the highest QoS.
    let mut net = Net::new(Config::default());
    let s = net.client(ccfg(V311));
    net.connect_id(s, "s");
    subscribe(&mut net, s, "a/+", opts(QoS::AtLeastOnce));
    subscribe(&mut net, s, "#", opts(QoS::AtMostOnce));
    let p = net.client(ccfg(V311));
    net.connect_id(p, "p");
    publish(&mut net, p, "a/b", b"x", QoS::AtLeastOnce, false);
    let got = net.messages(s);
    assert_eq!((got.len(), got[0].qos), (1, QoS::AtLeastOnce));
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let mut net = Net::new(Config::default());
    let s = net.client(ccfg(V5));
    net.connect_id(s, "s");
    subscribe(&mut net, s, "#", opts(QoS::AtMostOnce));
    subscribe(&mut net, s, "+/x", opts(QoS::AtMostOnce));
    let d = net.client(ccfg(V5));
    net.connect_id(d, "d");
    subscribe(&mut net, d, "$app/#", opts(QoS::AtMostOnce));
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    publish(&mut net, p, "$app/x", b"1", QoS::AtMostOnce, false);
    assert!(net.messages(s).is_empty());
    assert_eq!(net.messages(d).len(), 1);
}

#[test]
fn request_response_user_properties_content_type_pass_through() {
    let mut net = pair(V5, "req", QoS::AtLeastOnce);
    let props = [
        Property::ResponseTopic("resp/1"),
        Property::CorrelationData(b"abc"),
        Property::ContentType("text/plain"),
        Property::PayloadFormatIndicator(true),
        Property::UserProperty("k", "v"),
        Property::UserProperty("k", "w"),
    ];
    let msg = Publish {
        qos: QoS::AtLeastOnce,
        properties: mqtt_proto::Properties::new(&props),
        ..Publish::new("req", b"ask")
    };
    let now = net.now;
    net.cl(1).publish(now, &msg, 5).unwrap();
    net.run();
    let got = net.messages(0);
    assert_eq!(got[0].response_topic.as_deref(), Some("resp/1"));
    assert_eq!(got[0].correlation.as_deref(), Some(&b"abc"[..]));
    assert_eq!(got[0].content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got[0].user,
        [("k".into(), "v".into()), ("k".into(), "w".into())]
    );
    let raw_props = net.take_frames(0);
    let last = raw_props.iter().rev().find(|f| f[0] >> 4 == 3).unwrap();
    let Packet::Publish(p) = packet(last, V5) else {
        panic!()
    };
    assert_eq!(
        p.properties
            .get(mqtt_proto::PropertyId::PayloadFormatIndicator),
        Some(Property::PayloadFormatIndicator(true))
    );
}

#[test]
fn topic_aliases_from_the_client() {
    let mut net = pair(V5, "al/#", QoS::AtMostOnce);
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "aliaser", 0)));
    let ack = net.take_frames(r);
    assert_eq!(
        connack(&ack[0], V5)
            .properties
            .get(mqtt_proto::PropertyId::TopicAliasMaximum),
        Some(Property::TopicAliasMaximum(16))
    );
    let set = [Property::TopicAlias(3)];
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: mqtt_proto::Properties::new(&set),
            ..Publish::new("al/long/topic", b"1")
        }),
    );
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: mqtt_proto::Properties::new(&set),
            ..Publish::new("", b"2")
        }),
    );
    let got: Vec<_> = net
        .messages(0)
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    assert_eq!(
        got,
        [
            ("al/long/topic".into(), b"1".to_vec()),
            ("al/long/topic".into(), b"2".to_vec())
        ]
    );
    // Above the maximum: DISCONNECT 0x94.
    let bad = [Property::TopicAlias(17)];
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: mqtt_proto::Properties::new(&bad),
            ..Publish::new("al/x", b"3")
        }),
    );
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x94]]);
    assert!(net.peers[r].closed);
}

#[test]
fn topic_aliases_towards_the_client_within_both_maximums() {
    let cfg = Config {
        outgoing_topic_aliases: 8,
        ..Config::default()
    };
    let mut net = Net::new(cfg);
    // A raw subscriber that takes two aliases, and our client (which takes 16).
    let r = net.raw(V5);
    net.send(
        r,
        &connect_v5("raw", true, &[Property::TopicAliasMaximum(2)]),
    );
    net.send(
        r,
        &raw_subscribe(1, &[(filter("t/#"), opts(QoS::ExactlyOnce))], &[]),
    );
    let s = net.client(ccfg(V5));
    net.connect_id(s, "lib");
    subscribe(&mut net, s, "t/#", opts(QoS::AtLeastOnce));
    // A 3.1.1 subscriber never gets an alias.
    let old = net.raw(V311);
    net.send(old, &Packet::Connect(Connect::new(V311, "old", 0)));
    net.send(
        old,
        &raw_subscribe(1, &[(filter("t/#"), opts(QoS::AtMostOnce))], &[]),
    );
    net.take_frames(r);
    net.take_frames(old);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    let topics = ["t/a", "t/a", "t/b", "t/c", "t/a", "t/c", "t/a"];
    for (i, t) in topics.iter().enumerate() {
        // The last at QoS 2.
        let qos = if i == 6 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        publish(&mut net, p, t, &[b'0' + i as u8], qos, false);
    }
    let sent: Vec<(String, Option<u16>)> = net
        .take_frames(r)
        .iter()
        .filter_map(|f| match packet(f, V5) {
            Packet::Publish(p) => {
                let alias = p.properties.iter().find_map(|q| match q {
                    Property::TopicAlias(a) => Some(a),
                    _ => None,
                });
                Some((p.topic.to_string(), alias))
            }
            _ => None,
        })
        .collect();
    // First come, first aliased; past the client's two, a topic goes out whole. A QoS 2
    // message keeps its topic beside its alias (for MQTT.js: see `OutAliases::alias`).
    let expected = [
        ("t/a", Some(1)),
        ("", Some(1)),
        ("t/b", Some(2)),
        ("t/c", None),
        ("", Some(1)),
        ("t/c", None),
        ("t/a", Some(1)),
    ];
    let expected: Vec<(String, Option<u16>)> =
        expected.iter().map(|(t, a)| ((*t).into(), *a)).collect();
    assert_eq!(sent, expected);
    // Our client resolves them: every message arrives with its topic.
    let got: Vec<String> = net.messages(s).into_iter().map(|m| m.topic).collect();
    assert_eq!(got, topics);
    let plain = publishes(&net.take_frames(old), V311);
    let plain: Vec<&str> = plain.iter().map(|p| p.3.as_str()).collect();
    assert_eq!(plain, topics);
}

#[test]
fn without_outgoing_aliases_configured_none_are_used() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(
        r,
        &connect_v5("raw", true, &[Property::TopicAliasMaximum(10)]),
    );
    net.send(
        r,
        &raw_subscribe(1, &[(filter("t/#"), opts(QoS::AtMostOnce))], &[]),
    );
    net.take_frames(r);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "t/a", b"1", QoS::AtMostOnce, false);
    publish(&mut net, p, "t/a", b"2", QoS::AtMostOnce, false);
    let frames = net.take_frames(r);
    assert_eq!(frames.len(), 2);
    for f in &frames {
        let Packet::Publish(p) = packet(f, V5) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.topic, "t/a");
        assert!(
            p.properties
                .iter()
                .all(|q| !matches!(q, Property::TopicAlias(_)))
        );
    }
}

#[test]
fn keep_alive_expires_at_one_and_a_half_times() {
    let mut net = Net::new(Config::default());
    let w = net.client(ccfg(V5));
    net.connect_id(w, "watcher");
    subscribe(&mut net, w, "w/#", opts(QoS::AtMostOnce));
    let r = net.raw(V5);
    let wl = will("w/ka", b"silent", &[]);
    net.send(
        r,
        &Packet::Connect(Connect {
            will: Some(wl),
            ..Connect::new(V5, "quiet", 10)
        }),
    );
    net.take_frames(r);
    net.advance_to(Instant::from_millis(14_999));
    assert!(!net.peers[r].closed);
    net.send(r, &Packet::PingReq);
    assert_eq!(net.take_frames(r), [vec![0xD0, 0x00]], "PINGRESP");
    // The ping at 14.999 s restarts the 15 s.
    net.advance_to(Instant::from_millis(29_998));
    assert!(!net.peers[r].closed);
    net.advance_to(Instant::from_millis(29_999));
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x8D]]);
    assert!(net.peers[r].closed);
    assert_eq!(net.messages(w).len(), 1, "the will of a timed-out client");
}

#[test]
fn server_keep_alive_when_the_maximum_is_lower() {
    let mut net = Net::new(Config {
        max_keep_alive: 30,
        ..Config::default()
    });
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "ka", 100)));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(mqtt_proto::PropertyId::ServerKeepAlive),
        Some(Property::ServerKeepAlive(30))
    );
    net.advance_to(Instant::from_millis(44_999));
    assert!(!net.peers[r].closed);
    net.advance_to(Instant::from_millis(45_000));
    assert!(net.peers[r].closed, "enforced at 1.5 x 30 s");
}

#[test]
fn client_receive_maximum_is_honoured() {
    let mut net = Net::new(Config::default());
    let s = net.raw(V5);
    let props = [Property::ReceiveMaximum(2)];
    net.send(s, &connect_v5("s", true, &props));
    net.send(
        s,
        &raw_subscribe(1, &[(filter("f"), opts(QoS::AtLeastOnce))], &[]),
    );
    net.take_frames(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    for i in 0..5u8 {
        publish(&mut net, p, "f", &[i], QoS::AtLeastOnce, false);
    }
    let first = publishes(&net.take_frames(s), V5);
    assert_eq!(first.len(), 2, "two in flight at most");
    net.send(s, &Packet::PubAck(mqtt_proto::Ack::new(pid(1))));
    let next = publishes(&net.take_frames(s), V5);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].4, [2]);
}

#[test]
fn a_retained_will_is_refused_where_retain_is_off() {
    let cfg = Config {
        retain_available: false,
        ..Config::default()
    };
    for (version, code) in [
        (V5, ReasonCode::RetainNotSupported),
        // 3.1.1 has no such code: "server unavailable" (return code 3) is the nearest.
        (V311, ReasonCode::ServerUnavailable),
    ] {
        let mut net = Net::new(cfg.clone());
        let s = net.raw(version);
        let mut w = will("w/t", b"bye", &[]);
        w.retain = true;
        net.send(
            s,
            &Packet::Connect(mqtt_proto::Connect {
                will: Some(w),
                ..mqtt_proto::Connect::new(version, "s", 0)
            }),
        );
        let frames = net.take_frames(s);
        let ack = connack(&frames[0], version);
        assert_eq!(ack.reason_code, code, "{version:?}");
        // Without retain, the same will is accepted.
        let mut net = Net::new(cfg.clone());
        let s = net.raw(version);
        net.send(
            s,
            &Packet::Connect(mqtt_proto::Connect {
                will: Some(will("w/t", b"bye", &[])),
                ..mqtt_proto::Connect::new(version, "s", 0)
            }),
        );
        let frames = net.take_frames(s);
        let ack = connack(&frames[0], version);
        assert_eq!(ack.reason_code, ReasonCode::Success, "{version:?}");
    }
}

#[test]
fn retain_wildcard_and_shared_availability() {
    let cfg = Config {
        retain_available: false,
        wildcard_subscriptions: false,
        shared_subscriptions: false,
        ..Config::default()
    };
    for version in [V311, V5] {
        let mut net = Net::new(cfg.clone());
        let s = net.raw(version);
        if version.is_v5() {
            net.send(s, &connect_v5("s", true, &[]));
        } else {
            net.send(
                s,
                &Packet::Connect(mqtt_proto::Connect::new(version, "s", 0)),
            );
        }
        let frames = net.take_frames(s);
        let ack = connack(&frames[0], version);
        if version.is_v5() {
            let props: Vec<Property<'_>> = ack.properties.iter().collect();
            for p in [
                Property::RetainAvailable(false),
                Property::WildcardSubscriptionAvailable(false),
                Property::SharedSubscriptionAvailable(false),
            ] {
                assert!(props.contains(&p), "{p:?} in {props:?}");
            }
        }
        net.send(
            s,
            &raw_subscribe(
                1,
                &[
                    (filter("a/+"), opts(QoS::AtMostOnce)),
                    (filter("$share/g/a"), opts(QoS::AtMostOnce)),
                    (filter("a/b"), opts(QoS::AtMostOnce)),
                ],
                &[],
            ),
        );
        let frames = net.take_frames(s);
        let Packet::SubAck(sa) = packet(&frames[0], version) else {
            panic!("no SUBACK")
        };
        let codes: Vec<ReasonCode> = sa.reason_codes.iter().collect();
        let want = if version.is_v5() {
            [
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::SharedSubscriptionsNotSupported,
                ReasonCode::Success,
            ]
        } else {
            [
                ReasonCode::UnspecifiedError,
                ReasonCode::UnspecifiedError,
                ReasonCode::Success,
            ]
        };
        assert_eq!(codes, want, "{version:?}");
        // A retained publish ends the connection (DISCONNECT 0x9A at 5.0).
        let retained = Packet::Publish(mqtt_proto::Publish {
            retain: true,
            ..mqtt_proto::Publish::new("a/b", b"x")
        });
        net.send(s, &retained);
        let frames = net.take_frames(s);
        if version.is_v5() {
            let Packet::Disconnect(d) = packet(&frames[0], version) else {
                panic!("no DISCONNECT")
            };
            assert_eq!(d.reason_code, ReasonCode::RetainNotSupported);
        }
        assert!(net.broker.stats().retained == 0);
    }
}

#[test]
fn max_inflight_caps_what_is_sent_unacknowledged() {
    let mut net = Net::new(Config {
        max_inflight: 3,
        ..Config::default()
    });
    // The client allows 10; the broker's bound (3) is lower and wins.
    let s = net.raw(V5);
    let props = [Property::ReceiveMaximum(10)];
    net.send(s, &connect_v5("s", true, &props));
    net.send(
        s,
        &raw_subscribe(1, &[(filter("f"), opts(QoS::AtLeastOnce))], &[]),
    );
    net.take_frames(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    for i in 0..6u8 {
        publish(&mut net, p, "f", &[i], QoS::AtLeastOnce, false);
    }
    assert_eq!(publishes(&net.take_frames(s), V5).len(), 3);
    net.send(s, &Packet::PubAck(mqtt_proto::Ack::new(pid(1))));
    let next = publishes(&net.take_frames(s), V5);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].4, [3]);
}

#[test]
fn our_receive_maximum_is_enforced_with_0x93() {
    let mut net = Net::new(Config {
        receive_maximum: 2,
        ..Config::default()
    });
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "flood", 0)));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(mqtt_proto::PropertyId::ReceiveMaximum),
        Some(Property::ReceiveMaximum(2))
    );
    for id in 1..=3 {
        net.send(
            r,
            &Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                packet_id: Some(pid(id)),
                ..Publish::new("x", b"")
            }),
        );
    }
    let f = net.take_frames(r);
    assert_eq!(f.last().unwrap(), &[0xE0, 0x01, 0x93]);
    assert!(net.peers[r].closed);
}

#[test]
fn maximum_packet_size_both_ways() {
    let mut net = Net::new(Config {
        max_packet_size: 200,
        ..Config::default()
    });
    let s = net.raw(V5);
    let props = [Property::MaximumPacketSize(64)];
    net.send(s, &connect_v5("small", true, &props));
    net.send(
        s,
        &raw_subscribe(1, &[(filter("m"), opts(QoS::AtMostOnce))], &[]),
    );
    net.take_frames(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    publish(&mut net, p, "m", &[0u8; 100], QoS::AtMostOnce, false);
    publish(&mut net, p, "m", &[1u8; 10], QoS::AtMostOnce, false);
    let got = publishes(&net.take_frames(s), V5);
    assert_eq!(got.len(), 1, "the large one is not sent");
    assert_eq!(got[0].4, [1u8; 10]);
    assert_eq!(net.broker.stats().dropped.too_large, 1);
    // Inbound: over our 200 bytes is DISCONNECT 0x95.
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "big", 0)));
    net.take_frames(r);
    net.send(r, &Packet::Publish(Publish::new("m", &[0u8; 300])));
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x95]]);
}

#[test]
fn authentication_question_and_answers() {
    let mut net = asking();
    // A password check as a password file would answer it.
    net.answer = Some(Box::new(|q| match q {
        mqtt_session::broker::Question::Connect {
            username, password, ..
        } => Some(
            if username.as_deref() == Some("alice") && password.as_deref() == Some(&b"secret"[..]) {
                mqtt_session::broker::Answer::Accept
            } else {
                mqtt_session::broker::Answer::Refuse(ReasonCode::BadUserNameOrPassword)
            },
        ),
        _ => None,
    }));
    for (version, pass, code) in [
        (V5, &b"secret"[..], 0x00u8),
        (V5, &b"wrong"[..], 0x86),
        (V311, &b"secret"[..], 0x00),
        (V311, &b"wrong"[..], 0x04),
    ] {
        let r = net.raw(version);
        net.send(
            r,
            &Packet::Connect(Connect {
                username: Some("alice"),
                password: Some(pass),
                ..Connect::new(version, "c", 0)
            }),
        );
        let f = net.take_frames(r);
        assert_eq!(f[0][3], code, "{version} {pass:?}");
        assert_eq!(net.peers[r].closed, code != 0);
    }
    assert_eq!(net.questions.len(), 4);
}

#[test]
fn a_pending_authentication_holds_the_connection() {
    let mut net = asking();
    let r = net.raw(V311);
    net.send(r, &Packet::Connect(Connect::new(V311, "slow", 0)));
    net.send(r, &Packet::PingReq);
    assert!(net.take_frames(r).is_empty(), "nothing before the answer");
    assert_eq!(net.peers[r].up.len(), 2, "the PINGREQ waits unread");
    let conn = net.peers[r].conn.unwrap();
    let now = net.now;
    net.broker
        .handle_auth_answer(conn, now, mqtt_session::broker::Answer::Accept)
        .unwrap();
    net.send_bytes(r, &[]);
    assert_eq!(
        net.take_frames(r),
        [vec![0x20, 0x02, 0x00, 0x00], vec![0xD0, 0x00]]
    );
    // No answer within the connect timeout: closed.
    let r2 = net.raw(V311);
    net.send(r2, &Packet::Connect(Connect::new(V311, "never", 0)));
    net.advance_ms(10_000);
    assert!(net.peers[r2].closed);
    assert!(net.take_frames(r2).is_empty());
}

#[test]
fn authorization_decides_publish_subscribe_and_receive() {
    let mut net = Net::new(Config::default());
    // An ACL: "bob" may publish and receive on "bob/#" only; nobody may subscribe to
    // "secret/#".
    net.broker.set_authorizer(Box::new(
        |c: mqtt_session::broker::ClientInfo<'_>, topic: &str, a: mqtt_session::broker::Action| {
            if a == mqtt_session::broker::Action::Subscribe {
                return !topic.starts_with("secret");
            }
            c.client_id != "bob" || topic.starts_with("bob/")
        },
    ));
    let bob = net.client(ccfg(V5));
    net.connect_id(bob, "bob");
    subscribe(&mut net, bob, "secret/#", opts(QoS::AtMostOnce));
    subscribe(&mut net, bob, "#", opts(QoS::AtMostOnce));
    assert_eq!(
        net.peers[bob].got[1..],
        [
            Got::Subscribed {
                codes: vec![ReasonCode::NotAuthorized]
            },
            Got::Subscribed {
                codes: vec![ReasonCode::Success]
            }
        ]
    );
    let t = publish(&mut net, bob, "alice/x", b"no", QoS::AtLeastOnce, false);
    assert!(net.peers[bob].got.contains(&Got::Published {
        token: t,
        rc: ReasonCode::NotAuthorized
    }));
    let alice = net.client(ccfg(V5));
    net.connect_id(alice, "alice");
    publish(
        &mut net,
        alice,
        "alice/x",
        b"not for bob",
        QoS::AtMostOnce,
        false,
    );
    publish(&mut net, alice, "bob/x", b"for bob", QoS::AtMostOnce, false);
    let got: Vec<_> = net.messages(bob).into_iter().map(|m| m.topic).collect();
    assert_eq!(got, ["bob/x"]);
    assert_eq!(net.broker.stats().dropped.not_authorized, 1);
}

#[test]
fn queue_limits_drop_and_count() {
    let mut net = Net::new(Config {
        limits: Limits {
            session_messages: 5,
            ..Limits::default()
        },
        ..Config::default()
    });
    let s = persistent_client(&mut net, "offline");
    subscribe(&mut net, s, "l", opts(QoS::AtLeastOnce));
    net.drop_transport(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "p");
    for i in 0..8u8 {
        publish(&mut net, p, "l", &[i], QoS::AtLeastOnce, false);
    }
    let st = net.broker.stats();
    assert_eq!((st.queued_messages, st.dropped.session_full), (5, 3));
    net.connect_id(s, "offline");
    let got: Vec<_> = net.messages(s).into_iter().map(|m| m.payload[0]).collect();
    assert_eq!(got, [0, 1, 2, 3, 4], "the first five, in order");

    // The broker-wide byte limit: room for three messages of 75 bytes in all.
    let mut net = Net::new(Config {
        limits: Limits {
            total_bytes: 3 * (64 + 1 + 10),
            ..Limits::default()
        },
        ..Config::default()
    });
    let raw = net.raw(V311);
    net.send(
        raw,
        &Packet::Connect(Connect {
            clean_start: false,
            ..Connect::new(V311, "slow", 0)
        }),
    );
    net.send(
        raw,
        &raw_subscribe(1, &[(filter("g"), opts(QoS::AtLeastOnce))], &[]),
    );
    net.drop_transport(raw);
    let p = net.client(ccfg(V311));
    net.connect_id(p, "p");
    for _ in 0..5 {
        publish(&mut net, p, "g", &[0u8; 10], QoS::AtLeastOnce, false);
    }
    let st = net.broker.stats();
    assert_eq!(
        st.dropped.total_full, 2,
        "the offline session holds 3, then the limit"
    );
    assert_eq!(net.broker.queued_bytes(), 3 * 75);
}

#[test]
fn connect_rules_for_client_identifiers() {
    let mut net = Net::new(Config::default());
    // 5.0: assigned.
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "", 0)));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(mqtt_proto::PropertyId::AssignedClientIdentifier),
        Some(Property::AssignedClientIdentifier("auto-1"))
    );
    // 3.1.1 with clean session off: refused with 0x02.
    let r = net.raw(V311);
    net.send(
        r,
        &Packet::Connect(Connect {
            clean_start: false,
            ..Connect::new(V311, "", 0)
        }),
    );
    assert_eq!(net.take_frames(r), [vec![0x20, 0x02, 0x00, 0x02]]);
    assert!(net.peers[r].closed);
    // A first packet other than CONNECT: closed without an answer.
    let r = net.raw(V311);
    net.send(r, &Packet::PingReq);
    assert!(net.peers[r].closed);
    assert!(net.take_frames(r).is_empty());
    // Protocol level 6: CONNACK 0x01 in 3.1.1 form.
    let r = net.raw(V311);
    net.send_bytes(
        r,
        &[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 0, 0, 0],
    );
    assert_eq!(net.take_frames(r), [vec![0x20, 0x02, 0x00, 0x01]]);
    // No CONNECT within the timeout.
    let r = net.raw(V5);
    net.advance_ms(10_000);
    assert!(net.peers[r].closed);
}

/// A broker that holds acknowledgments until their records are durable, which only the test
/// says (`handle_durable`).
fn held_for_the_disk(cfg: Config) -> Net {
    let mut net = Net::new(Config {
        hold_acks_until_durable: true,
        ..cfg
    });
    net.auto_durable = false;
    net
}

/// A 5.0 client with a session that outlives its connection, connected as `id`.
fn persistent_client(net: &mut Net, id: &str) -> usize {
    let s = net.client(ClientConfig {
        clean_start: false,
        session_expiry: 100,
        ..ccfg(V5)
    });
    net.connect_id(s, id);
    s
}

#[test]
fn without_records_a_persistent_session_makes_no_per_message_records() {
    use mqtt_session::broker::Change;
    let per_message = |c: &Change| {
        matches!(
            c,
            Change::Queued { .. } | Change::Sent { .. } | Change::Acked { .. }
        )
    };
    for records in [true, false] {
        let mut net = Net::new(Config {
            records,
            ..Config::default()
        });
        let s = persistent_client(&mut net, "sub");
        subscribe(&mut net, s, "r", opts(QoS::AtLeastOnce));
        let p = net.client(ccfg(V5));
        net.connect_id(p, "pub");
        let now = net.now;
        for i in 0..5u8 {
            let msg = Publish {
                qos: QoS::AtLeastOnce,
                ..Publish::new("r", std::slice::from_ref(&i))
            };
            net.cl(p).publish(now, &msg, 5).expect("publish");
        }
        net.run();
        assert_eq!(net.messages(s).len(), 5, "records {records}");
        let made = net
            .records
            .iter()
            .filter(|r| per_message(&r.change))
            .count();
        // Queued, sent and acknowledged, per message; none without records.
        assert_eq!(made, if records { 15 } else { 0 }, "records {records}");
        assert_eq!(net.broker.stats().queued_messages, 0);
    }
}

#[test]
fn acks_wait_until_the_records_are_durable() {
    let mut net = held_for_the_disk(Config::default());
    let s = persistent_client(&mut net, "durable-sub");
    subscribe(&mut net, s, "d", opts(QoS::AtLeastOnce));
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "pub", 0)));
    net.take_frames(r);
    let publish = |id: u16| {
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(id)),
            ..Publish::new("d", b"x")
        })
    };
    // The subscriber's PUBACK does not reach the broker: only the disk can release it.
    net.pause(s, true, false);
    net.send(r, &publish(1));
    assert!(net.take_frames(r).is_empty(), "PUBACK held");
    let queued = net
        .records
        .iter()
        .rev()
        .find(|r| matches!(r.change, mqtt_session::broker::Change::Queued { .. }))
        .unwrap()
        .seq;
    net.broker.handle_durable(queued);
    net.run();
    assert_eq!(net.take_frames(r), [vec![0x40, 0x02, 0x00, 0x01]]);
    // Once the only persistent subscriber has acknowledged a message it is delivered: its
    // publisher's PUBACK goes out without waiting for the disk.
    net.pause(s, false, false);
    net.run();
    let durable_before = net.broker.last_seq();
    net.send(r, &publish(2));
    assert!(
        net.broker.last_seq() > durable_before,
        "records are pending"
    );
    assert_eq!(net.take_frames(r), [vec![0x40, 0x02, 0x00, 0x02]]);
}

#[test]
fn a_3_1_1_publisher_past_our_receive_maximum_is_read_later_not_cut_off() {
    // Before 5.0 nothing tells a client our Receive Maximum. With acks held for the disk a
    // publisher soon has that many unacknowledged, and sending more is no violation then.
    let mut net = held_for_the_disk(Config {
        receive_maximum: 2,
        ..Config::default()
    });
    let s = persistent_client(&mut net, "durable-sub");
    subscribe(&mut net, s, "d", opts(QoS::AtLeastOnce));
    // Its PUBACKs do not come back: only the disk releases the publisher's.
    net.pause(s, true, false);
    let r = net.raw(V311);
    net.send(r, &Packet::Connect(Connect::new(V311, "pub", 0)));
    net.take_frames(r);
    let mut burst = Vec::new();
    for id in 1..=5u16 {
        let p = Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(id)),
            ..Publish::new("d", b"x")
        });
        let at = burst.len();
        burst.resize(at + p.encoded_len(V311).unwrap(), 0);
        p.encode(V311, &mut burst[at..]).unwrap();
    }
    net.send_bytes(r, &burst);
    let queued = |net: &Net| {
        net.records
            .iter()
            .filter(|r| matches!(r.change, mqtt_session::broker::Change::Queued { .. }))
            .count()
    };
    assert!(net.take_frames(r).is_empty(), "PUBACKs held");
    assert!(!net.peers[r].closed);
    assert_eq!(queued(&net), 2, "read up to the window, no further");
    let mut acks = Vec::new();
    for _ in 0..10 {
        let seq = net.broker.last_seq();
        net.broker.handle_durable(seq);
        net.run();
        acks.extend(net.take_frames(r));
        if acks.len() == 5 {
            break;
        }
    }
    let expected: Vec<Vec<u8>> = (1..=5u8).map(|id| vec![0x40, 0x02, 0x00, id]).collect();
    assert_eq!(acks, expected);
    assert!(!net.peers[r].closed);
    assert_eq!(queued(&net), 5);
}

#[test]
fn the_broker_says_when_an_ack_waits_on_the_disk_alone() {
    let mut net = held_for_the_disk(Config::default());
    let mut subs = Vec::new();
    for id in ["one", "two"] {
        let s = persistent_client(&mut net, id);
        subscribe(&mut net, s, &format!("{id}/x"), opts(QoS::ExactlyOnce));
        // Their acks do not come back: only the disk can release the publisher's.
        net.pause(s, true, false);
        subs.push(s);
    }
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "pub", 0)));
    net.take_frames(r);
    let mut id = 0;
    let mut publish = |net: &mut Net, topic: &str, qos: QoS| {
        id += 1;
        net.send(
            r,
            &Packet::Publish(Publish {
                qos,
                packet_id: Some(pid(id)),
                ..Publish::new(topic, b"x")
            }),
        );
    };
    let flush = |net: &mut Net| {
        let seq = net.broker.last_seq();
        net.broker.handle_durable(seq);
        net.run();
        assert!(!net.broker.waits_on_disk(), "nothing held");
    };
    assert!(!net.broker.waits_on_disk());
    // QoS 1 to one online subscriber: its ack, not the disk, usually releases the PUBACK.
    publish(&mut net, "one/x", QoS::AtLeastOnce);
    assert!(!net.broker.waits_on_disk());
    flush(&mut net);
    // QoS 2: the PUBREC waits for the disk alone.
    publish(&mut net, "one/x", QoS::ExactlyOnce);
    assert!(net.broker.waits_on_disk());
    flush(&mut net);
    // QoS 1 to an offline subscriber.
    net.drop_transport(subs[1]);
    publish(&mut net, "two/x", QoS::AtLeastOnce);
    assert!(net.broker.waits_on_disk());
    flush(&mut net);
    // QoS 1 to two subscribers: the last ack may be far off.
    let s = persistent_client(&mut net, "three");
    subscribe(&mut net, s, "one/x", opts(QoS::AtLeastOnce));
    net.pause(s, true, false);
    flush(&mut net);
    publish(&mut net, "one/x", QoS::AtLeastOnce);
    assert!(net.broker.waits_on_disk());
    flush(&mut net);
}

#[test]
fn an_ack_waits_for_the_disk_while_any_persistent_subscriber_has_not_acknowledged() {
    let mut net = held_for_the_disk(Config::default());
    let mut subs = Vec::new();
    for id in ["online", "offline"] {
        let s = persistent_client(&mut net, id);
        subscribe(&mut net, s, "d", opts(QoS::AtLeastOnce));
        subs.push(s);
    }
    net.drop_transport(subs[1]);
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "pub", 0)));
    net.take_frames(r);
    net.send(
        r,
        &Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(7)),
            ..Publish::new("d", b"x")
        }),
    );
    assert_eq!(
        net.messages(subs[0]).len(),
        1,
        "the online one has it and acked"
    );
    assert!(
        net.take_frames(r).is_empty(),
        "the offline one has only the disk"
    );
    net.broker.handle_durable(net.broker.last_seq());
    net.run();
    assert_eq!(net.take_frames(r), [vec![0x40, 0x02, 0x00, 0x07]]);
}

#[test]
fn sys_counters_are_published() {
    let mut net = Net::new(Config {
        sys_interval: Some(core::time::Duration::from_secs(10)),
        ..Config::default()
    });
    let s = net.client(ccfg(V5));
    net.connect_id(s, "s");
    subscribe(
        &mut net,
        s,
        "$SYS/broker/clients/connected",
        opts(QoS::AtMostOnce),
    );
    net.messages(s);
    net.advance_ms(10_000);
    // Published at the first timeout (0 s) and again 10 s later.
    let got = net.messages(s);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.payload == b"1"));
    assert_eq!(
        &*net
            .broker
            .retained("$SYS/broker/clients/connected")
            .unwrap()
            .payload,
        b"1"
    );
}

#[test]
fn extended_authentication_exchange() {
    let mut net = asking();
    let mut round = 0;
    net.answer = Some(Box::new(move |q| {
        round += 1;
        Some(match (round, q) {
            (1, mqtt_session::broker::Question::Connect { method, .. }) => {
                assert_eq!(method.as_deref(), Some("CHALLENGE"));
                mqtt_session::broker::Answer::Continue(b"nonce".to_vec())
            }
            (2, mqtt_session::broker::Question::Auth { data, .. }) => {
                if data.as_deref() == Some(&b"response"[..]) {
                    mqtt_session::broker::Answer::Accept
                } else {
                    mqtt_session::broker::Answer::Refuse(ReasonCode::NotAuthorized)
                }
            }
            _ => mqtt_session::broker::Answer::Refuse(ReasonCode::ProtocolError),
        })
    }));
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("CHALLENGE")];
    net.send(r, &connect_v5("x", true, &props));
    expect_auth(&mut net, r, ReasonCode::ContinueAuthentication, b"nonce");
    let props = [
        Property::AuthenticationMethod("CHALLENGE"),
        Property::AuthenticationData(b"response"),
    ];
    send_auth(&mut net, r, ReasonCode::ContinueAuthentication, &props);
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        ack.properties
            .get(mqtt_proto::PropertyId::AuthenticationMethod),
        Some(Property::AuthenticationMethod("CHALLENGE"))
    );
    // Without authenticate configured, a method is refused with 0x8C.
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("SCRAM")];
    net.send(r, &connect_v5("y", true, &props));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5).reason_code,
        ReasonCode::BadAuthenticationMethod
    );
}

/// Sends AUTH with `code` and `props` from `r`.
fn send_auth(net: &mut Net, r: usize, code: ReasonCode, props: &[Property<'_>]) {
    net.send(
        r,
        &Packet::Auth(mqtt_proto::Auth::new(
            code,
            mqtt_proto::Properties::new(props),
        )),
    );
}

/// Takes the CONNACK the broker wrote to `r`: a success, with this Authentication Data.
fn expect_connack(net: &mut Net, r: usize, data: Option<&[u8]>) {
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        ack.properties
            .get(mqtt_proto::PropertyId::AuthenticationData),
        data.map(Property::AuthenticationData)
    );
}

/// A broker that asks the test's `answer` about every CONNECT.
fn asking() -> Net {
    Net::new(Config {
        authenticate: true,
        ..Config::default()
    })
}

/// Takes the one AUTH packet the broker wrote to `r` and checks its reason code and data.
fn expect_auth(net: &mut Net, r: usize, code: ReasonCode, data: &[u8]) {
    let f = net.take_frames(r);
    let Packet::Auth(a) = packet(&f[0], V5) else {
        panic!("{f:?}")
    };
    assert_eq!(a.reason_code, code);
    assert_eq!(
        a.properties.get(mqtt_proto::PropertyId::AuthenticationData),
        Some(Property::AuthenticationData(data))
    );
}

#[test]
fn an_exchange_can_end_with_server_data_in_connack_and_in_auth() {
    use mqtt_session::broker::Answer;
    let mut net = asking();
    net.answer = Some(Box::new(|q| {
        Some(match q {
            mqtt_session::broker::Question::Connect { .. } => Answer::Complete(b"signed".to_vec()),
            _ => Answer::Complete(b"again".to_vec()),
        })
    }));
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("SCRAM-SHA-256")];
    net.send(r, &connect_v5("x", true, &props));
    expect_connack(&mut net, r, Some(b"signed"));
    // Re-authentication ends with AUTH 0x00 carrying the data.
    send_auth(&mut net, r, ReasonCode::ReAuthenticate, &props);
    expect_auth(&mut net, r, ReasonCode::Success, b"again");
    // Without a method there is no exchange to end: the CONNACK carries no data.
    let r = net.raw(V5);
    net.send(r, &connect_v5("y", true, &[]));
    expect_connack(&mut net, r, None);
}

#[test]
fn an_exchange_can_end_as_the_user_it_proved() {
    use mqtt_session::broker::{Action, Answer, ClientInfo};
    let mut net = asking();
    net.answer = Some(Box::new(|_| {
        Some(Answer::CompleteAs(b"v=ok".to_vec(), "proved".into()))
    }));
    // Only the proved user may publish: the CONNECT named another one.
    net.broker
        .set_authorizer(Box::new(|c: ClientInfo<'_>, _: &str, a: Action| {
            a != Action::Publish || c.username == Some("proved")
        }));
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("SCRAM-SHA-512")];
    net.send(
        r,
        &Packet::Connect(Connect {
            username: Some("claimed"),
            properties: mqtt_proto::Properties::new(&props),
            ..Connect::new(V5, "x", 0)
        }),
    );
    expect_connack(&mut net, r, Some(b"v=ok"));
    let msg = Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid(1)),
        ..Publish::new("t", b"1")
    };
    net.send(r, &Packet::Publish(msg));
    let f = net.take_frames(r);
    let got = packet(&f[0], V5);
    // 0x10 (no subscribers) is a success; as "claimed" it would be 0x87.
    assert!(
        matches!(got, Packet::PubAck(a) if !a.reason_code.is_error()),
        "{got:?}"
    );
    // Re-authentication proving the same user succeeds; proving another ends the connection.
    send_auth(&mut net, r, ReasonCode::ReAuthenticate, &props);
    expect_auth(&mut net, r, ReasonCode::Success, b"v=ok");
    net.answer = Some(Box::new(|_| {
        Some(Answer::CompleteAs(b"v=ok".to_vec(), "someone else".into()))
    }));
    send_auth(&mut net, r, ReasonCode::ReAuthenticate, &props);
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x87]]);
    assert!(net.peers[r].closed);
}

#[test]
fn continuing_an_exchange_without_a_method_refuses() {
    for version in [V311, V5] {
        let mut net = asking();
        net.answer = Some(Box::new(|_| {
            Some(mqtt_session::broker::Answer::Continue(b"more".to_vec()))
        }));
        let r = net.raw(version);
        net.send(r, &Packet::Connect(Connect::new(version, "x", 0)));
        let f = net.take_frames(r);
        assert_eq!(f.len(), 1, "{version}");
        assert_eq!(
            connack(&f[0], version).reason_code,
            ReasonCode::NotAuthorized
        );
        assert!(net.peers[r].closed);
    }
}

#[test]
fn the_broker_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<mqtt_session::broker::Broker>();
    // And it does: a broker built here is driven on another thread.
    let mut b = mqtt_session::broker::Broker::new(Config::default());
    let conn = b.handle_open(Instant::ZERO);
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let n = Packet::Connect(Connect::new(V311, "t", 0))
            .encode(V311, &mut buf)
            .unwrap();
        b.handle_read(conn, Instant::ZERO, &buf[..n]).unwrap();
        b.stats().clients_connected
    });
    assert_eq!(handle.join().unwrap(), 1);
}

/// Encodes a packet at 3.1.1.
fn wire(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.encoded_len(V311).unwrap()];
    p.encode(V311, &mut b).unwrap();
    b
}

#[test]
fn a_client_that_stops_reading_costs_at_most_its_limits() {
    use mqtt_session::broker::Broker;
    let now = Instant::ZERO;
    let mut b = Broker::new(Config {
        limits: Limits {
            session_messages: 100,
            session_bytes: 1 << 20,
            total_bytes: 1 << 20,
            control_packets: 16,
            // What the limits alone do (back-pressure has tests of its own).
            backpressure_ms: 0,
            ..Limits::default()
        },
        ..Config::default()
    });
    let mut buf = vec![0u8; 4096];
    let slow = b.handle_open(now);
    b.handle_read(
        slow,
        now,
        &wire(&Packet::Connect(Connect::new(V311, "slow", 0))),
    )
    .unwrap();
    // Its requests pile up unanswered: the broker stops reading at 16 owed packets.
    let mut requests = Vec::new();
    for id in 1..=40u16 {
        requests.extend(wire(&raw_subscribe(
            id,
            &[(filter("s/#"), opts(QoS::AtLeastOnce))],
            &[],
        )));
    }
    let used = b.handle_read(slow, now, &requests).unwrap();
    let one = requests.len() / 40;
    assert_eq!(used, 15 * one, "CONNACK and 15 SUBACKs owed, then it waits");
    let mut written = 0;
    while let Some(_n) = b.poll_transmit(slow, now, &mut buf).unwrap() {
        written += 1;
    }
    assert_eq!(written, 16);
    let used2 = b.handle_read(slow, now, &requests[used..]).unwrap();
    assert_eq!(used2, 16 * one, "reading resumes once they are written");

    // Messages for it pile up only to its session limit while it does not read.
    let p = b.handle_open(now);
    b.handle_read(
        p,
        now,
        &wire(&Packet::Connect(Connect::new(V311, "pub", 0))),
    )
    .unwrap();
    for i in 0..250u16 {
        let publish = Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(PacketId::new(i % 60 + 1).unwrap()),
            ..Publish::new("s/x", b"payload")
        });
        b.handle_read(p, now, &wire(&publish)).unwrap();
        while b.poll_transmit(p, now, &mut buf).unwrap().is_some() {}
    }
    let st = b.stats();
    assert_eq!(st.queued_messages, 100);
    assert_eq!(st.dropped.session_full, 150);
    assert!(b.queued_bytes() <= 100 * (64 + 3 + 7));
}

#[test]
fn subscriptions_and_retained_bytes_are_bounded() {
    let mut net = Net::new(Config {
        limits: Limits {
            subscriptions: 2,
            retained_bytes: 2 * (64 + 3 + 4),
            ..Limits::default()
        },
        ..Config::default()
    });
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "many", 0)));
    net.take_frames(r);
    net.send(
        r,
        &raw_subscribe(
            1,
            &[
                (filter("a"), opts(QoS::AtMostOnce)),
                (filter("b"), opts(QoS::AtMostOnce)),
                (filter("c"), opts(QoS::AtMostOnce)),
                (filter("a"), opts(QoS::AtLeastOnce)),
            ],
            &[],
        ),
    );
    // The third is over the quota; replacing an existing one is not.
    assert_eq!(
        net.take_frames(r),
        [vec![0x90, 0x07, 0x00, 0x01, 0x00, 0x00, 0x00, 0x97, 0x01]]
    );
    for (t, payload) in [
        ("r/1", b"xxxx"),
        ("r/2", b"yyyy"),
        ("r/3", b"zzzz"),
        ("r/1", b"wwww"),
    ] {
        net.send(
            r,
            &Packet::Publish(Publish {
                retain: true,
                ..Publish::new(t, payload)
            }),
        );
    }
    assert_eq!(net.broker.stats().retained, 2);
    assert!(
        net.broker.retained("r/3").is_none(),
        "over the retained limit"
    );
    assert_eq!(
        &*net.broker.retained("r/1").unwrap().payload,
        b"wwww",
        "a replacement fits"
    );
    assert_eq!(net.broker.stats().dropped.retained_full, 1);
    assert!(net.broker.retained_bytes() <= 2 * 71);
}

#[test]
fn shrinking_a_connections_queues_between_packets_loses_nothing() {
    let mut net = pair(V5, "t/#", QoS::ExactlyOnce);
    net.pause(0, false, true); // the subscriber's packets wait, half its exchanges open
    let mut tokens = Vec::new();
    for i in 0..5u8 {
        tokens.push(publish(&mut net, 1, "t/a", &[i], QoS::ExactlyOnce, false));
        for c in net.peers.iter().filter_map(|p| p.conn).collect::<Vec<_>>() {
            net.broker.shrink(c);
        }
    }
    net.pause(0, false, false);
    net.run();
    let payloads: Vec<Vec<u8>> = net.messages(0).into_iter().map(|m| m.payload).collect();
    assert_eq!(payloads, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    let done = net.peers[1]
        .got
        .iter()
        .filter(|g| {
            matches!(
                g,
                Got::Published {
                    rc: ReasonCode::Success,
                    ..
                }
            )
        })
        .count();
    assert_eq!(done, tokens.len(), "every publish completed");
}

/// A broker whose sessions hold 8 messages, publishers held for up to `backpressure_ms`;
/// subscribers (`bp`, QoS 1) by name, the first of them paused (it reads nothing, so nothing is
/// acknowledged), then a publisher that queued 30 QoS 1 messages at once. Gives the peers'
/// indices, the publisher last.
fn held(backpressure_ms: u32, subscribers: &[&str]) -> (Net, Vec<usize>) {
    held_at(backpressure_ms, subscribers, QoS::AtLeastOnce)
}

/// [`held`], with the subscriptions and the messages at `qos`.
fn held_at(backpressure_ms: u32, subscribers: &[&str], qos: QoS) -> (Net, Vec<usize>) {
    let mut net = Net::new(Config {
        limits: Limits {
            session_messages: 8,
            backpressure_ms,
            ..Limits::default()
        },
        ..Config::default()
    });
    let mut peers = Vec::new();
    for name in subscribers {
        let s = net.client(ccfg(V311));
        net.connect_id(s, name);
        subscribe(&mut net, s, "bp", opts(qos));
        peers.push(s);
    }
    let p = net.client(ccfg(V311));
    net.connect_id(p, "pub");
    net.pause(peers[0], false, true);
    let now = net.now;
    for i in 0..30u8 {
        let msg = Publish {
            qos,
            ..Publish::new("bp", std::slice::from_ref(&i))
        };
        net.cl(p).publish(now, &msg, 5).expect("publish");
    }
    net.run();
    peers.push(p);
    (net, peers)
}

/// Publishes peer `p` has had acknowledged.
fn acknowledged(net: &Net, p: usize) -> usize {
    net.peers[p]
        .got
        .iter()
        .filter(|g| matches!(g, Got::Published { .. }))
        .count()
}

#[test]
fn a_slow_subscriber_holds_its_publisher_instead_of_dropping() {
    let (mut net, peers) = held(500, &["slow"]);
    let (s, p) = (peers[0], peers[1]);
    let st = net.broker.stats();
    assert_eq!(st.publishers_held, 1);
    assert_eq!(
        st.queued_messages, 5,
        "held once the session is more than half full"
    );
    assert!(!net.peers[p].up.is_empty(), "the rest waits, unread");
    net.advance_ms(400);
    assert_eq!(net.broker.stats().queued_messages, 5, "still held");
    net.pause(s, false, false); // it reads and acknowledges again
    let got: Vec<u8> = net.messages(s).into_iter().map(|m| m.payload[0]).collect();
    assert_eq!(got, (0..30).collect::<Vec<u8>>(), "every message, in order");
    let st = net.broker.stats();
    assert_eq!(st.dropped, Drops::default(), "nothing dropped");
    assert_eq!(st.subscribers_stalled, 0);
    assert!(st.publishers_held >= 2, "held again each time it filled up");

    // Without back-pressure the same run drops what does not fit.
    let (net, _) = held(0, &["slow"]);
    assert_eq!(net.broker.stats().dropped.session_full, 22);
    assert_eq!(net.broker.stats().publishers_held, 0);
}

#[test]
fn a_qos_0_publisher_is_held_until_what_went_out_makes_room() {
    // Routing the burst fills the session before anything is written: the publisher waits,
    // and each QoS 0 message written (no acknowledgment to wait for) makes the room.
    let (mut net, peers) = held_at(500, &["s"], QoS::AtMostOnce);
    let (s, p) = (peers[0], peers[1]);
    assert!(
        net.peers[p].up.is_empty(),
        "read to the end, with no time passing"
    );
    net.pause(s, false, false);
    let got: Vec<u8> = net.messages(s).into_iter().map(|m| m.payload[0]).collect();
    assert_eq!(got, (0..30).collect::<Vec<u8>>(), "every message, in order");
    let st = net.broker.stats();
    assert_eq!(st.dropped, Drops::default());
    assert!(st.publishers_held >= 1, "{st:?}");
    // Without back-pressure what does not fit is dropped (fewer than at QoS 1: the writes
    // between the publisher's reads make room).
    let (net, _) = held_at(0, &["s"], QoS::AtMostOnce);
    let dropped = net.broker.stats().dropped.session_full;
    assert!(dropped > 0 && dropped < 22, "{dropped}");
}

#[test]
fn a_stalled_subscriber_holds_publishers_once_and_others_get_everything() {
    let (mut net, peers) = held(500, &["stuck", "fine"]);
    let (fine, p) = (peers[1], peers[2]);
    assert_eq!(net.broker.stats().publishers_held, 1);
    assert_eq!(net.messages(fine).len(), 5, "held at the fifth");
    net.advance_ms(499);
    assert_eq!(net.messages(fine).len(), 0, "not before the wait is over");
    net.advance_ms(1);
    let st = net.broker.stats();
    assert_eq!(st.subscribers_stalled, 1);
    // The rest flows at once: the stalled one holds no one again (the one that reads may,
    // for as long as it takes to acknowledge).
    let got: Vec<u8> = net
        .messages(fine)
        .into_iter()
        .map(|m| m.payload[0])
        .collect();
    assert_eq!(got, (5..30).collect::<Vec<u8>>());
    assert_eq!(
        st.dropped.session_full, 22,
        "the stalled one drops at its limit"
    );
    assert_eq!(acknowledged(&net, p), 30, "every publish acknowledged");
}

#[test]
fn a_subscriber_that_goes_away_lets_its_publisher_go() {
    let (mut net, peers) = held(500, &["slow"]);
    let (s, p) = (peers[0], peers[1]);
    assert!(!net.peers[p].up.is_empty(), "held");
    net.drop_transport(s);
    assert!(net.peers[p].up.is_empty(), "read on at once");
    assert_eq!(acknowledged(&net, p), 30);
}

#[test]
fn a_held_publisher_is_still_read_up_to_its_next_publish() {
    let (mut net, _) = held(500, &["slow"]);
    let r = net.raw(V311);
    net.send(r, &Packet::Connect(Connect::new(V311, "raw-pub", 0)));
    let publish = |id: u16| {
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: PacketId::new(id),
            ..Publish::new("bp", b"r")
        })
    };
    net.send(r, &publish(1)); // the slow session is past half: this holds it
    net.send(r, &Packet::PingReq);
    net.send(r, &publish(2));
    net.send(r, &Packet::PingReq);
    let kinds: Vec<String> = net
        .take_frames(r)
        .iter()
        .map(|f| format!("{:?}", packet(f, V311).packet_type()))
        .collect();
    assert_eq!(
        kinds,
        ["ConnAck", "PubAck", "PingResp"],
        "read up to the second PUBLISH, which waits with what follows it"
    );
    assert!(!net.peers[r].up.is_empty());
}

#[test]
fn a_publisher_past_its_rate_is_read_more_slowly_and_loses_nothing() {
    use mqtt_session::broker::Broker;
    let mut broker = Broker::new(Config {
        limits: Limits {
            publish_rate: 5,
            ..Limits::default()
        },
        ..Config::default()
    });
    let mut now = Instant::ZERO;
    let conn = broker.handle_open(now);
    let mut input = Vec::new();
    let mut buf = [0u8; 256];
    let n = connect_v5("fast", true, &[]).encode(V5, &mut buf).unwrap();
    input.extend_from_slice(&buf[..n]);
    for i in 0..12u8 {
        let n = Packet::Publish(Publish::new("t", &[i]))
            .encode(V5, &mut buf)
            .unwrap();
        input.extend_from_slice(&buf[..n]);
    }
    // Everything arrives at once; a second's worth (5) is read, the rest waits.
    let used = broker.handle_read(conn, now, &input).unwrap();
    input.drain(..used);
    assert_eq!(broker.stats().messages_received, 5);
    assert_eq!(broker.stats().publishers_throttled, 1);
    // Then one every 200 ms: the broker names the connection when it may be read again.
    let mut received_at = Vec::new();
    while !input.is_empty() {
        let due = broker
            .poll_timeout()
            .expect("a timer for the throttled publisher");
        assert!(due > now, "{due:?}");
        now = due;
        broker.handle_timeout(now);
        while let Some(c) = broker.poll_wake() {
            if c == conn {
                let used = broker.handle_read(conn, now, &input).unwrap();
                input.drain(..used);
                while broker.poll_transmit(conn, now, &mut buf).unwrap().is_some() {}
            }
        }
        received_at.push((now.as_millis(), broker.stats().messages_received));
    }
    let expected: Vec<(u64, u64)> = (1..=7).map(|k| (200 * k, 5 + k)).collect();
    assert_eq!(received_at, expected);
    // Slowed at the burst's end and after each of the next six (the last one waited for
    // nothing after it).
    assert_eq!(broker.stats().publishers_throttled, 7);
}
