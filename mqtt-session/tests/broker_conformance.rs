//! One test per normative statement of the server side that the broker core implements, named
//! by its tag (`mqtt_3_1_0_1` is `[MQTT-3.1.0-1]` of MQTT 5.0; a `_v311` suffix is the MQTT
//! 3.1.1 statement of that number). `CONFORMANCE.md` lists them with what is not covered.

mod broker_common;

use broker_common::*;
use mqtt_proto::{
    Ack, Connect, Disconnect, Packet, Properties, Property, PropertyId, Publish, QoS, ReasonCode,
    RetainHandling, SubscriptionOptions, Unsubscribe, Will,
};
use mqtt_session::Instant;
use mqtt_session::broker::{Answer, CloseReason, Config, Question};

/// A raw v5 connection that completed CONNECT with these properties.
fn raw_v5(net: &mut Net, id: &str, props: &[Property<'_>]) -> usize {
    let r = net.raw(V5);
    net.send(r, &connect_v5(id, true, props));
    let f = net.take_frames(r);
    assert_eq!(connack(&f[0], V5).reason_code, ReasonCode::Success);
    r
}

fn raw_v311(net: &mut Net, id: &str, clean: bool) -> usize {
    let r = net.raw(V311);
    net.send(
        r,
        &Packet::Connect(Connect {
            clean_start: clean,
            ..Connect::new(V311, id, 0)
        }),
    );
    net.take_frames(r);
    r
}

fn pub_qos<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, id: u16) -> Packet<'a> {
    Packet::Publish(Publish {
        qos,
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        ..Publish::new(topic, payload)
    })
}

fn sub(net: &mut Net, r: usize, f: &str, o: SubscriptionOptions) {
    net.send(r, &raw_subscribe(1, &[(filter(f), o)], &[]));
    net.take_frames(r);
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(r, &pub_qos("t", b"x", QoS::AtMostOnce, 0));
    assert!(net.peers[r].closed);
    assert!(net.take_frames(r).is_empty());
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "c", &[]);
    net.send(r, &connect_v5("c", true, &[]));
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x82]]);
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_version() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V311);
    net.send_bytes(
        r,
        &[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 7, 2, 0, 0, 0, 0],
    );
    assert_eq!(net.take_frames(r), [vec![0x20, 0x02, 0x00, 0x01]]);
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V311);
    net.send_bytes(
        r,
        &[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 0, 0, 0],
    );
    assert!(net.peers[r].closed);
    assert!(net.take_frames(r).is_empty());
}

#[test]
fn mqtt_3_1_2_4_clean_start_discards_the_session() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("c", false, &props));
    sub(&mut net, r, "a", opts(QoS::AtLeastOnce));
    net.drop_transport(r);
    let r = net.raw(V5);
    net.send(r, &connect_v5("c", true, &props));
    assert!(!connack(&net.take_frames(r)[0], V5).session_present);
    assert_eq!(net.broker.stats().subscriptions, 0);
}

#[test]
fn mqtt_3_1_2_5_and_3_2_2_3_resume_with_session_present() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("c", false, &props));
    assert!(
        !connack(&net.take_frames(r)[0], V5).session_present,
        "new session"
    );
    sub(&mut net, r, "a", opts(QoS::AtLeastOnce));
    net.drop_transport(r);
    let r = net.raw(V5);
    net.send(r, &connect_v5("c", false, &props));
    assert!(connack(&net.take_frames(r)[0], V5).session_present);
    assert_eq!(net.broker.stats().subscriptions, 1);
}

#[test]
fn mqtt_3_1_2_6_clean_start_0_without_session_creates_one() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("fresh", false, &props));
    assert!(!connack(&net.take_frames(r)[0], V5).session_present);
    assert!(net.broker.has_session("fresh"));
}

/// Watcher on `w/#`, then a raw v5 client with a will and these will properties.
fn with_will(net: &mut Net, retain: bool, props: &[Property<'_>], expiry: u32) -> usize {
    let w = net.client(ccfg(V5));
    net.connect_id(w, "watcher");
    subscribe(net, w, "w/#", opts(QoS::AtLeastOnce));
    net.peers[w].got.clear();
    let r = net.raw(V5);
    let cprops = [Property::SessionExpiryInterval(expiry)];
    net.send(
        r,
        &Packet::Connect(Connect {
            will: Some(mqtt_proto::Will {
                retain,
                ..will("w/x", b"bye", props)
            }),
            properties: Properties::new(&cprops),
            ..Connect::new(V5, "willer", 0)
        }),
    );
    net.take_frames(r);
    r
}

#[test]
fn mqtt_3_1_2_8_will_published_when_the_connection_closes() {
    let mut net = Net::new(Config::default());
    let r = with_will(&mut net, false, &[], 0);
    net.drop_transport(r);
    let got = net.messages(0);
    assert_eq!((got.len(), got[0].payload.as_slice()), (1, &b"bye"[..]));
}

#[test]
fn mqtt_3_1_2_10_and_3_14_4_3_normal_disconnect_discards_the_will() {
    let mut net = Net::new(Config::default());
    let r = with_will(&mut net, false, &[], 0);
    net.send(r, &Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    assert!(net.peers[r].closed);
    assert!(net.messages(0).is_empty());
}

#[test]
fn mqtt_3_1_2_8_an_error_disconnect_keeps_the_will() {
    for rc in [ReasonCode::DisconnectWithWill, ReasonCode::UnspecifiedError] {
        let mut net = Net::new(Config::default());
        let r = with_will(&mut net, false, &[], 0);
        net.send(r, &Packet::Disconnect(Disconnect::new(rc)));
        assert_eq!(net.messages(0).len(), 1, "{rc:?}");
    }
}

#[test]
fn mqtt_3_1_2_16_and_17_will_retain() {
    for retain in [false, true] {
        let mut net = Net::new(Config::default());
        let r = with_will(&mut net, retain, &[], 0);
        net.drop_transport(r);
        assert_eq!(net.broker.retained("w/x").is_some(), retain);
    }
}

#[test]
fn mqtt_3_1_2_24_keep_alive_one_and_a_half_times() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V311);
    net.send(r, &Packet::Connect(Connect::new(V311, "k", 4)));
    net.advance_to(Instant::from_millis(5_999));
    assert!(!net.peers[r].closed);
    net.advance_to(Instant::from_millis(6_000));
    assert!(net.peers[r].closed);
    assert_eq!(net.closes.last().unwrap().1, CloseReason::KeepAliveTimeout);
}

#[test]
fn mqtt_3_1_2_25_session_state_kept_after_close_when_expiry_above_0() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(30)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("keep", true, &props));
    net.drop_transport(r);
    assert!(net.broker.has_session("keep"));
    let r = net.raw(V5);
    net.send(r, &connect_v5("gone", true, &[]));
    net.drop_transport(r);
    assert!(
        !net.broker.has_session("gone"),
        "expiry 0 ends with the connection"
    );
}

#[test]
fn mqtt_3_1_2_26_reconnect_within_the_will_delay_cancels_the_will() {
    let mut net = Net::new(Config::default());
    let props = [Property::WillDelayInterval(10)];
    let r = with_will(&mut net, false, &props, 100);
    net.drop_transport(r);
    net.advance_ms(5_000);
    let cprops = [Property::SessionExpiryInterval(100)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("willer", false, &cprops));
    net.advance_ms(20_000);
    assert!(net.messages(0).is_empty());
}

#[test]
fn mqtt_3_1_2_27_and_28_packets_over_the_clients_maximum_are_discarded() {
    let mut net = Net::new(Config::default());
    let props = [Property::MaximumPacketSize(30)];
    let s = raw_v5(&mut net, "small", &props);
    sub(&mut net, s, "m", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("m", &[7; 40], QoS::AtLeastOnce, 1));
    net.send(p, &pub_qos("m", b"ok", QoS::AtLeastOnce, 2));
    let got = publishes(&net.take_frames(s), V5);
    // Discarded as if sent: the next message takes the first packet id.
    assert_eq!(
        got,
        [(false, QoS::AtLeastOnce, Some(1), "m".into(), b"ok".to_vec())]
    );
    assert_eq!(net.broker.stats().dropped.too_large, 1);
}

#[test]
fn mqtt_3_1_3_6_and_7_and_3_2_2_16_assigned_client_identifier() {
    let mut net = Net::new(Config::default());
    // A client already uses the first name the broker would assign.
    raw_v5(&mut net, "auto-1", &[]);
    let r = net.raw(V5);
    net.send(r, &connect_v5("", true, &[]));
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert_eq!(
        ack.properties.get(PropertyId::AssignedClientIdentifier),
        Some(Property::AssignedClientIdentifier("auto-2"))
    );
    assert!(net.broker.has_session("auto-1") && net.broker.has_session("auto-2"));
}

#[test]
fn mqtt_3_1_3_8_v311_empty_client_id_without_clean_session() {
    let mut net = Net::new(Config::default());
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
}

#[test]
fn mqtt_3_1_4_3_takeover_sends_0x8e_and_closes_the_old_connection() {
    let mut net = Net::new(Config::default());
    let old = raw_v5(&mut net, "dup", &[]);
    let new = raw_v5(&mut net, "dup", &[]);
    assert_eq!(net.take_frames(old), [vec![0xE0, 0x01, 0x8E]]);
    assert!(net.peers[old].closed && !net.peers[new].closed);
}

#[test]
fn mqtt_3_1_4_2_v311_takeover_disconnects_the_existing_client() {
    let mut net = Net::new(Config::default());
    let old = raw_v311(&mut net, "dup", true);
    let new = raw_v311(&mut net, "dup", true);
    assert!(net.peers[old].closed && !net.peers[new].closed);
    assert!(
        net.take_frames(old).is_empty(),
        "3.1.1 has no DISCONNECT from the server"
    );
}

#[test]
fn mqtt_3_1_4_6_nothing_is_processed_after_a_rejected_connect() {
    let mut net = Net::new(Config {
        authenticate: true,
        ..Config::default()
    });
    net.answer = Some(Box::new(|_| {
        Some(Answer::Refuse(ReasonCode::NotAuthorized))
    }));
    let r = net.raw(V5);
    let mut bytes = vec![];
    for p in [
        connect_v5("no", true, &[]),
        Packet::Subscribe(mqtt_proto::Subscribe {
            packet_id: pid(1),
            properties: Properties::EMPTY,
            filters: mqtt_proto::Filters::new(&[(filter("#"), opts(QoS::AtMostOnce))]),
        }),
    ] {
        let mut b = vec![0u8; 64];
        let n = p.encode(V5, &mut b).unwrap();
        bytes.extend_from_slice(&b[..n]);
    }
    net.send_bytes(r, &bytes);
    let f = net.take_frames(r);
    assert_eq!(f.len(), 1, "only the CONNACK");
    assert_eq!(connack(&f[0], V5).reason_code, ReasonCode::NotAuthorized);
    assert_eq!(net.broker.stats().subscriptions, 0);
}

#[test]
fn mqtt_3_2_0_2_and_3_1_4_5_one_connack() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(r, &connect_v5("c", true, &[]));
    net.send(r, &Packet::PingReq);
    let f = net.take_frames(r);
    assert_eq!(connack(&f[0], V5).reason_code, ReasonCode::Success);
    assert_eq!(f.iter().filter(|f| f[0] == 0x20).count(), 1);
}

#[test]
fn mqtt_3_2_2_2_v311_and_v5_clean_start_gives_session_present_0() {
    for v in [V311, V5] {
        let mut net = Net::new(Config::default());
        let r = net.raw(v);
        net.send(r, &Packet::Connect(Connect::new(v, "c", 0)));
        assert!(!connack(&net.take_frames(r)[0], v).session_present);
    }
}

#[test]
fn mqtt_3_2_2_6_and_7_refusal_has_session_present_0_and_closes() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("s", false, &props));
    net.drop_transport(r);
    let mut net2 = Net::with_broker(std::mem::replace(
        &mut net.broker,
        mqtt_session::broker::Broker::new(Config::default()),
    ));
    let r = net2.raw(V5);
    // An authentication method the broker does not support, on an existing session.
    let props = [
        Property::SessionExpiryInterval(60),
        Property::AuthenticationMethod("X"),
    ];
    net2.send(r, &connect_v5("s", false, &props));
    let f = net2.take_frames(r);
    let ack = connack(&f[0], V5);
    assert_eq!(
        (ack.reason_code, ack.session_present),
        (ReasonCode::BadAuthenticationMethod, false)
    );
    assert!(net2.peers[r].closed);
}

#[test]
fn mqtt_3_2_2_22_the_clients_keep_alive_without_server_keep_alive() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(r, &Packet::Connect(Connect::new(V5, "k", 10)));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(PropertyId::ServerKeepAlive),
        None
    );
    net.advance_to(Instant::from_millis(14_999));
    assert!(!net.peers[r].closed);
    net.advance_to(Instant::from_millis(15_000));
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_3_3_1_1_dup_on_redelivery_and_3_3_1_3_not_copied_from_incoming() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", true, &props));
    sub(&mut net, s, "d", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    // The publisher's DUP=1 does not reach the subscriber's first delivery.
    net.send(
        p,
        &Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(9)),
            ..Publish::new("d", b"x")
        }),
    );
    assert!(!publishes(&net.take_frames(s), V5)[0].0);
    net.drop_transport(s);
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", false, &props));
    let again = publishes(&net.take_frames(s), V5);
    assert_eq!(
        again,
        [(true, QoS::AtLeastOnce, Some(1), "d".into(), b"x".to_vec())]
    );
}

#[test]
fn mqtt_3_3_1_5_retained_replaced() {
    let mut net = Net::new(Config::default());
    let p = raw_v5(&mut net, "p", &[]);
    for payload in [&b"1"[..], b"2"] {
        net.send(
            p,
            &Packet::Publish(Publish {
                retain: true,
                ..Publish::new("r", payload)
            }),
        );
    }
    assert_eq!(&*net.broker.retained("r").unwrap().payload, b"2");
    assert_eq!(net.broker.stats().retained, 1);
}

#[test]
fn mqtt_3_3_1_6_and_7_empty_retained_payload_clears_and_is_not_stored() {
    let mut net = Net::new(Config::default());
    let p = raw_v5(&mut net, "p", &[]);
    let r = |payload| {
        Packet::Publish(Publish {
            retain: true,
            ..Publish::new("r", payload)
        })
    };
    net.send(p, &r(b"x"));
    net.send(p, &r(b""));
    assert!(net.broker.retained("r").is_none());
    net.send(p, &r(b""));
    assert_eq!(net.broker.stats().retained, 0);
}

#[test]
fn mqtt_3_3_1_8_retain_0_neither_stores_nor_replaces() {
    let mut net = Net::new(Config::default());
    let p = raw_v5(&mut net, "p", &[]);
    net.send(
        p,
        &Packet::Publish(Publish {
            retain: true,
            ..Publish::new("r", b"kept")
        }),
    );
    net.send(p, &Packet::Publish(Publish::new("r", b"not kept")));
    net.send(p, &Packet::Publish(Publish::new("other", b"not kept")));
    assert_eq!(&*net.broker.retained("r").unwrap().payload, b"kept");
    assert_eq!(net.broker.stats().retained, 1);
}

fn retained_after_subscribe(rh: RetainHandling, twice: bool) -> usize {
    let mut net = Net::new(Config::default());
    let p = raw_v5(&mut net, "p", &[]);
    net.send(
        p,
        &Packet::Publish(Publish {
            retain: true,
            ..Publish::new("r", b"x")
        }),
    );
    let s = raw_v5(&mut net, "s", &[]);
    let o = SubscriptionOptions {
        retain_handling: rh,
        ..opts(QoS::AtMostOnce)
    };
    if twice {
        sub(&mut net, s, "r", o);
    }
    net.send(s, &raw_subscribe(2, &[(filter("r"), o)], &[]));
    publishes(&net.take_frames(s), V5).len()
}

#[test]
fn mqtt_3_3_1_9_retain_handling_0_sends_retained() {
    assert_eq!(
        retained_after_subscribe(RetainHandling::SendAtSubscribe, false),
        1
    );
    assert_eq!(
        retained_after_subscribe(RetainHandling::SendAtSubscribe, true),
        1
    );
}

#[test]
fn mqtt_3_3_1_10_retain_handling_1_only_for_a_new_subscription() {
    assert_eq!(
        retained_after_subscribe(RetainHandling::SendIfNew, false),
        1
    );
    assert_eq!(retained_after_subscribe(RetainHandling::SendIfNew, true), 0);
}

#[test]
fn mqtt_3_3_1_11_retain_handling_2_sends_none() {
    assert_eq!(
        retained_after_subscribe(RetainHandling::DoNotSend, false),
        0
    );
}

fn retain_flag_forwarded(rap: bool, version: mqtt_proto::ProtocolVersion) -> (bool, bool) {
    let mut net = Net::new(Config::default());
    let s = net.raw(version);
    net.send(s, &Packet::Connect(Connect::new(version, "s", 0)));
    let o = SubscriptionOptions {
        retain_as_published: rap,
        ..opts(QoS::AtMostOnce)
    };
    net.send(s, &raw_subscribe(1, &[(filter("r"), o)], &[]));
    net.take_frames(s);
    let p = net.raw(version);
    net.send(p, &Packet::Connect(Connect::new(version, "p", 0)));
    net.send(
        p,
        &Packet::Publish(Publish {
            retain: true,
            ..Publish::new("r", b"x")
        }),
    );
    let live = match packet(&net.take_frames(s)[0], version) {
        Packet::Publish(p) => p.retain,
        other => panic!("{other:?}"),
    };
    // A new subscription gets the retained message with RETAIN 1.
    let s2 = net.raw(version);
    net.send(s2, &Packet::Connect(Connect::new(version, "s2", 0)));
    net.send(s2, &raw_subscribe(1, &[(filter("r"), o)], &[]));
    let f = net.take_frames(s2);
    let on_subscribe = match packet(f.last().unwrap(), version) {
        Packet::Publish(p) => p.retain,
        other => panic!("{other:?}"),
    };
    (live, on_subscribe)
}

#[test]
fn mqtt_3_3_1_12_retain_as_published_0_clears_the_flag() {
    assert_eq!(retain_flag_forwarded(false, V5), (false, true));
}

#[test]
fn mqtt_3_3_1_13_retain_as_published_1_keeps_the_flag() {
    assert_eq!(retain_flag_forwarded(true, V5), (true, true));
}

#[test]
fn mqtt_3_3_1_8_and_9_v311_retain_flag_to_subscribers() {
    // 3.1.1: RETAIN 1 only for messages sent because of a new subscription.
    assert_eq!(retain_flag_forwarded(false, V311), (false, true));
}

#[test]
fn mqtt_3_3_2_3_topic_matches_the_filter_and_4_7_2_1_dollar_topics() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "+/b/#", opts(QoS::AtMostOnce));
    let p = raw_v5(&mut net, "p", &[]);
    for t in ["a/b", "a/b/c/d", "a/c", "$x/b", "b"] {
        net.send(p, &Packet::Publish(Publish::new(t, b"")));
    }
    let topics: Vec<String> = publishes(&net.take_frames(s), V5)
        .into_iter()
        .map(|p| p.3)
        .collect();
    assert_eq!(topics, ["a/b", "a/b/c/d"]);
}

fn forwarded_properties(props: &[Property<'_>]) -> Vec<u8> {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "t", opts(QoS::AtMostOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(
        p,
        &Packet::Publish(Publish {
            properties: Properties::new(props),
            ..Publish::new("t", b"x")
        }),
    );
    net.take_frames(s).remove(0)
}

#[test]
fn mqtt_3_3_2_4_15_16_17_18_20_properties_forwarded_unaltered_in_order() {
    let props = [
        Property::PayloadFormatIndicator(true),
        Property::ContentType("application/json"),
        Property::ResponseTopic("re/1"),
        Property::CorrelationData(&[0, 1, 2]),
        Property::UserProperty("b", "2"),
        Property::UserProperty("a", "1"),
        Property::UserProperty("b", "3"),
    ];
    let frame = forwarded_properties(&props);
    let Packet::Publish(out) = packet(&frame, V5) else {
        panic!()
    };
    let got: Vec<Property<'_>> = out.properties.iter().collect();
    assert_eq!(got, props);
}

#[test]
fn mqtt_3_3_2_5_and_6_message_expiry_counted_down_and_expired_deleted() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(600)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", true, &props));
    sub(&mut net, s, "e", opts(QoS::AtLeastOnce));
    net.drop_transport(s);
    let p = raw_v5(&mut net, "p", &[]);
    let short = [Property::MessageExpiryInterval(5)];
    let long = [Property::MessageExpiryInterval(100)];
    for (payload, e) in [(&b"short"[..], &short), (b"long", &long)] {
        net.send(
            p,
            &Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                packet_id: Some(pid(1)),
                properties: Properties::new(e),
                ..Publish::new("e", payload)
            }),
        );
    }
    net.advance_ms(30_000);
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", false, &props));
    let frames = net.take_frames(s);
    let pubs: Vec<_> = frames
        .iter()
        .filter_map(|f| match packet(f, V5) {
            Packet::Publish(p) => Some((
                p.payload.to_vec(),
                p.properties.get(PropertyId::MessageExpiryInterval),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        pubs,
        [(b"long".to_vec(), Some(Property::MessageExpiryInterval(70)))]
    );
    assert_eq!(net.broker.stats().dropped.expired, 1);
}

#[test]
fn mqtt_3_3_2_7_aliases_are_not_carried_to_another_connection() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "a", &[]);
    let set = [Property::TopicAlias(1)];
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: Properties::new(&set),
            ..Publish::new("t", b"")
        }),
    );
    net.drop_transport(r);
    let r = raw_v5(&mut net, "a", &[]);
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: Properties::new(&set),
            ..Publish::new("", b"")
        }),
    );
    assert_eq!(
        net.take_frames(r),
        [vec![0xE0, 0x01, 0x82]],
        "an unknown alias"
    );
}

#[test]
fn mqtt_3_3_2_8_alias_0_is_refused() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "a", &[]);
    // Alias 0 fails decoding as an invalid property value: 0x94.
    net.send_bytes(r, &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00]);
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x94]]);
}

#[test]
fn mqtt_3_3_2_12_aliases_up_to_the_maximum_are_accepted() {
    let mut net = Net::new(Config {
        topic_alias_maximum: 2,
        ..Config::default()
    });
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "#", opts(QoS::AtMostOnce));
    let r = raw_v5(&mut net, "a", &[]);
    for (alias, topic) in [(1, "one"), (2, "two"), (1, ""), (2, "")] {
        let set = [Property::TopicAlias(alias)];
        net.send(
            r,
            &Packet::Publish(Publish {
                properties: Properties::new(&set),
                ..Publish::new(topic, b"")
            }),
        );
    }
    let topics: Vec<String> = publishes(&net.take_frames(s), V5)
        .into_iter()
        .map(|p| p.3)
        .collect();
    assert_eq!(topics, ["one", "two", "one", "two"]);
    let set = [Property::TopicAlias(3)];
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: Properties::new(&set),
            ..Publish::new("three", b"")
        }),
    );
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x94]]);
}

#[test]
fn mqtt_3_3_4_1_responses_by_qos() {
    let mut net = Net::new(Config::default());
    let r = raw_v311(&mut net, "q", true);
    net.send(r, &pub_qos("t", b"", QoS::AtMostOnce, 0));
    net.send(r, &pub_qos("t", b"", QoS::AtLeastOnce, 3));
    net.send(r, &pub_qos("t", b"", QoS::ExactlyOnce, 4));
    net.send(r, &Packet::PubRel(Ack::new(pid(4))));
    assert_eq!(
        net.take_frames(r),
        [
            vec![0x40, 0x02, 0x00, 0x03],
            vec![0x50, 0x02, 0x00, 0x04],
            vec![0x70, 0x02, 0x00, 0x04]
        ]
    );
}

#[test]
fn mqtt_3_3_4_2_to_4_overlapping_subscriptions_one_copy_max_qos_all_ids() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    for (id, f, q) in [(1, "a/#", QoS::AtMostOnce), (2, "a/+", QoS::AtLeastOnce)] {
        let props = [Property::SubscriptionIdentifier(id)];
        net.send(
            s,
            &raw_subscribe(id as u16, &[(filter(f), opts(q))], &props),
        );
    }
    net.take_frames(s);
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("a/b", b"x", QoS::ExactlyOnce, 1));
    let f = net.take_frames(s);
    assert_eq!(f.len(), 1);
    let Packet::Publish(out) = packet(&f[0], V5) else {
        panic!()
    };
    assert_eq!(out.qos, QoS::AtLeastOnce);
    let mut ids: Vec<u32> = out.properties.subscription_identifiers().collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn mqtt_3_3_4_6_a_client_may_not_send_a_subscription_identifier() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "a", &[]);
    let props = [Property::SubscriptionIdentifier(1)];
    net.send(
        r,
        &Packet::Publish(Publish {
            properties: Properties::new(&props),
            ..Publish::new("t", b"")
        }),
    );
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x82]]);
}

#[test]
fn mqtt_3_3_4_9_and_10_receive_maximum_of_the_client() {
    let mut net = Net::new(Config::default());
    let props = [Property::ReceiveMaximum(1)];
    let s = raw_v5(&mut net, "s", &props);
    sub(&mut net, s, "t", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("t", b"1", QoS::AtLeastOnce, 1));
    net.send(p, &pub_qos("t", b"2", QoS::AtLeastOnce, 2));
    assert_eq!(publishes(&net.take_frames(s), V5).len(), 1);
    // Other packets are not held back by the full window.
    net.send(s, &Packet::PingReq);
    assert_eq!(net.take_frames(s), [vec![0xD0, 0x00]]);
    net.send(s, &Packet::PubAck(Ack::new(pid(1))));
    assert_eq!(publishes(&net.take_frames(s), V5)[0].4, b"2");
}

#[test]
fn mqtt_3_8_3_3_no_local() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "self", &[]);
    let o = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    sub(&mut net, s, "t", o);
    net.send(s, &Packet::Publish(Publish::new("t", b"own")));
    assert!(net.take_frames(s).is_empty());
}

#[test]
fn mqtt_3_8_4_1_2_suback_with_the_same_packet_id() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    net.send(
        s,
        &raw_subscribe(0x1234, &[(filter("t"), opts(QoS::AtLeastOnce))], &[]),
    );
    assert_eq!(
        net.take_frames(s),
        [vec![0x90, 0x04, 0x12, 0x34, 0x00, 0x01]]
    );
}

#[test]
fn mqtt_3_8_4_3_same_filter_replaces_the_subscription() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "t", opts(QoS::AtMostOnce));
    sub(&mut net, s, "t", opts(QoS::ExactlyOnce));
    assert_eq!(net.broker.stats().subscriptions, 1);
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("t", b"x", QoS::ExactlyOnce, 1));
    assert_eq!(publishes(&net.take_frames(s), V5)[0].1, QoS::ExactlyOnce);
}

#[test]
fn mqtt_3_8_4_5_to_8_and_3_9_3_1_one_suback_code_per_filter_in_order() {
    let mut net = Net::new(Config::default());
    net.broker.set_authorizer(Box::new(
        |_: mqtt_session::broker::ClientInfo<'_>, t: &str, _| t != "no",
    ));
    let s = raw_v5(&mut net, "s", &[]);
    net.send(
        s,
        &raw_subscribe(
            5,
            &[
                (filter("a"), opts(QoS::ExactlyOnce)),
                (filter("no"), opts(QoS::AtMostOnce)),
                (filter("b"), opts(QoS::AtLeastOnce)),
            ],
            &[],
        ),
    );
    assert_eq!(
        net.take_frames(s),
        [vec![0x90, 0x06, 0x00, 0x05, 0x00, 0x02, 0x87, 0x01]]
    );
}

#[test]
fn mqtt_3_10_4_1_to_6_unsubscribe_and_unsuback() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "a/+", opts(QoS::AtMostOnce));
    let filters = [filter("a/+"), filter("a/b")];
    net.send(s, &Packet::Unsubscribe(Unsubscribe::new(pid(9), &filters)));
    // One UNSUBACK, same id, 0x00 for the removed filter, 0x11 for the unknown one.
    assert_eq!(
        net.take_frames(s),
        [vec![0xB0, 0x05, 0x00, 0x09, 0x00, 0x00, 0x11]]
    );
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &Packet::Publish(Publish::new("a/b", b"")));
    assert!(
        net.take_frames(s).is_empty(),
        "no new messages after UNSUBSCRIBE"
    );
}

#[test]
fn mqtt_3_12_4_1_pingresp() {
    let mut net = Net::new(Config::default());
    let r = raw_v311(&mut net, "p", true);
    net.send(r, &Packet::PingReq);
    assert_eq!(net.take_frames(r), [vec![0xD0, 0x00]]);
}

#[test]
fn mqtt_3_14_0_1_no_disconnect_before_connack() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    // Malformed CONNECT (reserved flag): closed without DISCONNECT.
    net.send_bytes(
        r,
        &[
            0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 3, 0, 0, 0, 0, 0,
        ],
    );
    assert!(net.peers[r].closed);
    assert!(net.take_frames(r).is_empty());
}

#[test]
fn mqtt_3_14_2_2_no_expiry_from_the_server_and_no_raise_from_zero() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "z", &[]);
    let props = [Property::SessionExpiryInterval(30)];
    net.send(
        r,
        &Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::Success,
            properties: Properties::new(&props),
        }),
    );
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x82]]);
    assert!(!net.broker.has_session("z"));
}

#[test]
fn mqtt_4_1_0_2_session_discarded_after_expiry() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(3)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("x", true, &props));
    net.drop_transport(r);
    net.advance_ms(2_999);
    assert!(net.broker.has_session("x"));
    net.advance_ms(1);
    assert!(!net.broker.has_session("x"));
}

#[test]
fn mqtt_4_3_3_10_qos2_resend_acknowledged_not_delivered_again() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "t", opts(QoS::ExactlyOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("t", b"x", QoS::ExactlyOnce, 5));
    net.send(p, &pub_qos("t", b"x", QoS::ExactlyOnce, 5));
    assert_eq!(net.take_frames(p).len(), 2, "PUBREC twice");
    assert_eq!(publishes(&net.take_frames(s), V5).len(), 1);
}

#[test]
fn mqtt_4_3_3_12_after_pubcomp_the_id_is_a_new_publication() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "t", opts(QoS::AtMostOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("t", b"1", QoS::ExactlyOnce, 5));
    net.send(p, &Packet::PubRel(Ack::new(pid(5))));
    net.send(p, &pub_qos("t", b"2", QoS::ExactlyOnce, 5));
    assert_eq!(publishes(&net.take_frames(s), V5).len(), 2);
}

#[test]
fn mqtt_4_4_0_1_resend_unacknowledged_with_original_ids_in_order() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(60)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", true, &props));
    sub(&mut net, s, "t", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    for i in 1..=3u16 {
        net.send(p, &pub_qos("t", &[i as u8], QoS::AtLeastOnce, i));
    }
    net.take_frames(s);
    net.send(s, &Packet::PubAck(Ack::new(pid(2))));
    net.drop_transport(s);
    let s = net.raw(V5);
    net.send(s, &connect_v5("s", false, &props));
    let again: Vec<_> = publishes(&net.take_frames(s), V5)
        .into_iter()
        .map(|p| (p.0, p.2))
        .collect();
    assert_eq!(again, [(true, Some(1)), (true, Some(3))]);
}

#[test]
fn mqtt_4_6_0_5_and_6_order_kept_per_publisher() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "o/#", opts(QoS::ExactlyOnce));
    let p = raw_v5(&mut net, "p", &[]);
    for i in 1..=20u16 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
        net.send(p, &pub_qos("o/x", &[i as u8], qos, i));
        if qos == QoS::ExactlyOnce {
            net.send(p, &Packet::PubRel(Ack::new(pid(i))));
        }
    }
    let order: Vec<u8> = publishes(&net.take_frames(s), V5)
        .into_iter()
        .map(|p| p.4[0])
        .collect();
    assert_eq!(order, (1..=20).collect::<Vec<u8>>());
}

#[test]
fn mqtt_4_8_2_6_error_puback_discards_the_message() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "$share/g/t", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    net.send(p, &pub_qos("t", b"x", QoS::AtLeastOnce, 1));
    net.take_frames(s);
    net.send(
        s,
        &Packet::PubAck(Ack::with_reason(pid(1), ReasonCode::UnspecifiedError)),
    );
    assert_eq!(net.broker.stats().queued_messages, 0);
}

#[test]
fn mqtt_4_12_0_1_unsupported_authentication_method() {
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("KERBEROS")];
    net.send(r, &connect_v5("a", true, &props));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5).reason_code,
        ReasonCode::BadAuthenticationMethod
    );
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_4_12_0_5_and_6_authentication_method_echoed_only_when_sent() {
    let mut net = Net::new(Config {
        authenticate: true,
        ..Config::default()
    });
    net.answer = Some(Box::new(|_| Some(Answer::Accept)));
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("M")];
    net.send(r, &connect_v5("a", true, &props));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(PropertyId::AuthenticationMethod),
        Some(Property::AuthenticationMethod("M"))
    );
    let r = net.raw(V5);
    net.send(r, &connect_v5("b", true, &[]));
    let f = net.take_frames(r);
    assert_eq!(
        connack(&f[0], V5)
            .properties
            .get(PropertyId::AuthenticationMethod),
        None
    );
    assert!(matches!(
        net.questions.last(),
        Some(Question::Connect { method: None, .. })
    ));
}

#[test]
fn mqtt_4_12_1_2_failed_reauthentication_disconnects() {
    let mut net = Net::new(Config {
        authenticate: true,
        ..Config::default()
    });
    let mut first = true;
    net.answer = Some(Box::new(move |_| {
        let a = if first {
            Answer::Accept
        } else {
            Answer::Refuse(ReasonCode::NotAuthorized)
        };
        first = false;
        Some(a)
    }));
    let r = net.raw(V5);
    let props = [Property::AuthenticationMethod("M")];
    net.send(r, &connect_v5("a", true, &props));
    net.take_frames(r);
    net.send(
        r,
        &Packet::Auth(mqtt_proto::Auth::new(
            ReasonCode::ReAuthenticate,
            Properties::new(&props),
        )),
    );
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x87]]);
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_4_13_1_1_malformed_packet_closes_with_0x81() {
    let mut net = Net::new(Config::default());
    let r = raw_v5(&mut net, "m", &[]);
    // PUBLISH with a topic length running past the packet.
    net.send_bytes(r, &[0x30, 0x03, 0x00, 0x09, b'a']);
    assert_eq!(net.take_frames(r), [vec![0xE0, 0x01, 0x81]]);
    assert!(net.peers[r].closed);
}

#[test]
fn mqtt_3_10_4_4_and_5_v311_unsuback() {
    let mut net = Net::new(Config::default());
    let r = raw_v311(&mut net, "u", true);
    net.send(
        r,
        &raw_subscribe(3, &[(filter("a/#"), opts(QoS::AtLeastOnce))], &[]),
    );
    assert_eq!(net.take_frames(r), [vec![0x90, 0x03, 0x00, 0x03, 0x01]]);
    let filters = [filter("a/#"), filter("never")];
    net.send(r, &Packet::Unsubscribe(Unsubscribe::new(pid(4), &filters)));
    assert_eq!(net.take_frames(r), [vec![0xB0, 0x02, 0x00, 0x04]]);
    assert_eq!(net.broker.stats().subscriptions, 0);
}

fn max_qos1() -> Config {
    Config {
        maximum_qos: QoS::AtLeastOnce,
        ..Config::default()
    }
}

#[test]
fn mqtt_3_2_2_9_and_11_maximum_qos_announced_and_a_publish_above_it_disconnected() {
    let mut net = Net::new(max_qos1());
    let r = net.raw(V5);
    net.send(r, &connect_v5("p", true, &[]));
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(
        ack.properties
            .iter()
            .any(|p| p == Property::MaximumQoS(QoS::AtLeastOnce))
    );
    net.send(r, &pub_qos("t", b"x", QoS::ExactlyOnce, 1));
    let f = net.take_frames(r);
    assert!(
        matches!(packet(&f[0], V5), Packet::Disconnect(d) if d.reason_code == ReasonCode::QoSNotSupported),
        "{f:?}"
    );
    assert!(net.peers[r].closed);
    // With the default (QoS 2 supported) no Maximum QoS is sent [MQTT-3.2.2-9].
    let mut net = Net::new(Config::default());
    let r = net.raw(V5);
    net.send(r, &connect_v5("p", true, &[]));
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert!(
        ack.properties
            .iter()
            .all(|p| p.id() != PropertyId::MaximumQoS)
    );
}

#[test]
fn mqtt_3_2_2_12_a_will_above_the_maximum_qos_is_refused_with_0x9b() {
    let mut net = Net::new(max_qos1());
    let r = net.raw(V5);
    let w = Will {
        qos: QoS::ExactlyOnce,
        ..will("w", b"bye", &[])
    };
    net.send(
        r,
        &Packet::Connect(Connect {
            will: Some(w),
            ..Connect::new(V5, "w", 0)
        }),
    );
    let f = net.take_frames(r);
    assert_eq!(connack(&f[0], V5).reason_code, ReasonCode::QoSNotSupported);
    assert!(net.peers[r].closed);
}

#[test]
fn maximum_qos_caps_what_is_granted_and_delivered() {
    let mut net = Net::new(max_qos1());
    let s = raw_v5(&mut net, "s", &[]);
    net.send(
        s,
        &raw_subscribe(1, &[(filter("q"), opts(QoS::ExactlyOnce))], &[]),
    );
    let f = net.take_frames(s);
    let Packet::SubAck(ack) = packet(&f[0], V5) else {
        panic!("{f:?}")
    };
    assert_eq!(
        ack.reason_codes.iter().collect::<Vec<_>>(),
        [ReasonCode::GrantedQoS1]
    );
    // A 3.1.1 client cannot be told the maximum: its QoS 2 handshake completes and the
    // message goes on at QoS 1.
    let p = raw_v311(&mut net, "p", true);
    net.send(p, &pub_qos("q", b"two", QoS::ExactlyOnce, 9));
    let f = net.take_frames(p);
    assert!(matches!(packet(&f[0], V311), Packet::PubRec(a) if a.packet_id.get() == 9));
    let pubs = publishes(&net.take_frames(s), V5);
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].1, QoS::AtLeastOnce);
}

#[test]
fn response_information_only_when_asked() {
    let cfg = Config {
        response_information: Some("responses/".into()),
        ..Config::default()
    };
    let mut net = Net::new(cfg);
    let asks = [Property::RequestResponseInformation(true)];
    let r = net.raw(V5);
    net.send(r, &connect_v5("a", true, &asks));
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert!(
        ack.properties
            .iter()
            .any(|p| p == Property::ResponseInformation("responses/"))
    );
    let r = net.raw(V5);
    net.send(r, &connect_v5("b", true, &[]));
    let f = net.take_frames(r);
    let ack = connack(&f[0], V5);
    assert!(
        ack.properties
            .iter()
            .all(|p| p.id() != PropertyId::ResponseInformation)
    );
}

#[test]
fn a_payload_that_is_not_the_utf8_it_claims_is_refused_with_0x99() {
    let mut net = Net::new(Config::default());
    let s = raw_v5(&mut net, "s", &[]);
    sub(&mut net, s, "f", opts(QoS::AtLeastOnce));
    let p = raw_v5(&mut net, "p", &[]);
    let utf8 = [Property::PayloadFormatIndicator(true)];
    for (id, payload) in [(1, &[0xFF, 0xFE][..]), (2, "ok ✓".as_bytes())] {
        net.send(
            p,
            &Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                packet_id: Some(pid(id)),
                properties: Properties::new(&utf8),
                ..Publish::new("f", payload)
            }),
        );
    }
    let f = net.take_frames(p);
    let codes: Vec<ReasonCode> = f
        .iter()
        .map(|fr| match packet(fr, V5) {
            Packet::PubAck(a) => a.reason_code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [ReasonCode::PayloadFormatInvalid, ReasonCode::Success]
    );
    let pubs = publishes(&net.take_frames(s), V5);
    assert_eq!(pubs.len(), 1, "only the valid one is delivered");
    assert_eq!(pubs[0].4, "ok ✓".as_bytes());
}
