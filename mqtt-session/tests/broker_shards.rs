//! Sibling brokers (one per core of a server) joined in memory: each owns its own clients, and
//! what one forwards (`poll_forward`) is handed to the others (`handle_forward`) in order, as
//! a runtime's channels between cores would.

mod broker_common;

use broker_common::*;
use mqtt_proto::QoS;
use mqtt_session::ConnectOptions;
use mqtt_session::broker::shard::Shard;
use mqtt_session::broker::{Config, Limits, Stats};

impl Siblings {
    /// A connected client peer on sibling `s`; returns `(s, peer)`.
    fn client(&mut self, s: usize, id: &str) -> (usize, usize) {
        let net = &mut self.nets[s];
        let i = net.client(ccfg(V5));
        net.connect_id(i, id);
        self.settle();
        (s, i)
    }

    fn subscribe(&mut self, (s, i): (usize, usize), filter: &str, qos: QoS) {
        subscribe(&mut self.nets[s], i, filter, opts(qos));
        self.settle();
    }

    fn publish(
        &mut self,
        (s, i): (usize, usize),
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) {
        publish(&mut self.nets[s], i, topic, payload, qos, retain);
        self.settle();
    }

    fn messages(&mut self, (s, i): (usize, usize)) -> Vec<Msg> {
        self.nets[s].messages(i)
    }

    fn payloads(&mut self, peer: (usize, usize)) -> Vec<String> {
        self.messages(peer)
            .into_iter()
            .map(|m| String::from_utf8(m.payload).unwrap())
            .collect()
    }

    fn dropped(&self) -> u64 {
        self.nets
            .iter()
            .map(|n| n.broker.stats().dropped.total())
            .sum()
    }
}

#[test]
fn a_message_reaches_the_subscribers_of_every_sibling_once_in_each_publishers_order() {
    let mut sib = Siblings::new(3);
    let subs: Vec<_> = (0..3).map(|s| sib.client(s, &format!("sub{s}"))).collect();
    for &sub in &subs {
        sib.subscribe(sub, "t/#", QoS::ExactlyOnce);
    }
    let a = sib.client(0, "pub-a");
    let b = sib.client(2, "pub-b");
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for n in 0..60 {
        sib.publish(a, "t/a", format!("a{n}").as_bytes(), qos[n % 3], false);
        sib.publish(
            b,
            "t/b",
            format!("b{n}").as_bytes(),
            qos[(n + 1) % 3],
            false,
        );
    }
    for &sub in &subs {
        let got = sib.payloads(sub);
        assert_eq!(got.len(), 120, "sibling {}: {got:?}", sub.0);
        for p in ["a", "b"] {
            let mine: Vec<_> = got.iter().filter(|g| g.starts_with(p)).cloned().collect();
            let want: Vec<_> = (0..60).map(|n| format!("{p}{n}")).collect();
            assert_eq!(mine, want, "sibling {}: order of publisher {p}", sub.0);
        }
    }
    assert_eq!(sib.dropped(), 0);
}

#[test]
fn a_share_group_across_siblings_gets_each_message_once_round_robin_over_every_member() {
    let mut sib = Siblings::new(2);
    let members = [
        sib.client(0, "m0"),
        sib.client(0, "m1"),
        sib.client(1, "m2"),
    ];
    for &m in &members {
        sib.subscribe(m, "$share/g/jobs/+", QoS::AtLeastOnce);
    }
    let p0 = sib.client(0, "p0");
    let p1 = sib.client(1, "p1");
    for n in 0..90 {
        sib.publish(
            p0,
            &format!("jobs/{n}"),
            format!("x{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        );
        sib.publish(
            p1,
            &format!("jobs/{n}"),
            format!("y{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        );
    }
    let got: Vec<Vec<String>> = members.iter().map(|&m| sib.payloads(m)).collect();
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(counts, [60, 60, 60], "three members, 180 messages");
    let mut all: Vec<String> = got.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 180, "each message once");
}

#[test]
fn a_copy_picked_for_a_member_that_just_left_on_its_sibling_is_counted_as_dropped() {
    // The window the shard docs describe: the publisher's sibling picks a member's sibling
    // before it hears that the member left. What that costs is counted, never silent, and
    // ends with the hand-over.
    let mut sib = Siblings::new(2);
    let here = sib.client(0, "here");
    let there = sib.client(1, "there");
    for m in [here, there] {
        sib.subscribe(m, "$share/g/jobs", QoS::AtLeastOnce);
    }
    let p = sib.client(0, "pub");
    let now = sib.nets[1].now;
    sib.nets[1]
        .cl(there.1)
        .unsubscribe(now, &[filter("$share/g/jobs")], &[])
        .unwrap();
    sib.nets[1].run(); // not handed over yet
    for n in 0..4u8 {
        publish(&mut sib.nets[0], p.1, "jobs", &[n], QoS::AtLeastOnce, false);
    }
    sib.settle();
    assert_eq!(
        sib.payloads(here).len(),
        2,
        "round-robin: every other one stayed here"
    );
    assert_eq!(sib.nets[1].broker.stats().dropped.member_left, 2);
    assert_eq!(sib.dropped(), 2, "and nothing else");
    // Once the word has crossed, every copy goes to the member that is left.
    for n in 4..8u8 {
        sib.publish(p, "jobs", &[n], QoS::AtLeastOnce, false);
    }
    assert_eq!(sib.payloads(here).len(), 4, "all four new ones");
    assert_eq!(sib.dropped(), 2);
}

#[test]
fn a_suback_waits_until_every_sibling_knows_the_subscription() {
    let mut sib = Siblings::new(3);
    let p = sib.client(0, "pub");
    let plain = sib.client(1, "plain");
    let member = sib.client(2, "member");
    let subacks = |sib: &Siblings, (s, i): (usize, usize)| {
        let got = &sib.nets[s].peers[i].got;
        got.iter()
            .filter(|g| matches!(g, Got::Subscribed { .. }))
            .count()
    };
    subscribe(
        &mut sib.nets[plain.0],
        plain.1,
        "t/#",
        opts(QoS::AtLeastOnce),
    );
    subscribe(
        &mut sib.nets[member.0],
        member.1,
        "$share/g/t/#",
        opts(QoS::AtLeastOnce),
    );
    assert_eq!(
        (subacks(&sib, plain), subacks(&sib, member)),
        (0, 0),
        "no SUBACK while the others do not know"
    );
    sib.settle();
    assert_eq!((subacks(&sib, plain), subacks(&sib, member)), (1, 1));
    // Published right after the SUBACKs, from a third sibling: both get it.
    sib.publish(p, "t/1", b"now", QoS::AtLeastOnce, false);
    assert_eq!(sib.payloads(plain), ["now"]);
    assert_eq!(sib.payloads(member), ["now"]);
}

#[test]
fn a_message_is_forwarded_only_to_siblings_that_subscribe_to_it() {
    let mut sib = Siblings::new(3);
    let s = sib.client(2, "sub");
    sib.subscribe(s, "a/#", QoS::AtLeastOnce);
    let p = sib.client(0, "pub");
    // Publish without handing anything over, then count what sibling 0 forwards, and to whom.
    for topic in ["a/1", "b/1", "a/2"] {
        publish(
            &mut sib.nets[p.0],
            p.1,
            topic,
            b"x",
            QoS::AtLeastOnce,
            false,
        );
    }
    let mut to = Vec::new();
    while let Some(f) = sib.nets[0].broker.poll_forward() {
        if let mqtt_session::broker::shard::Relay::Publish { msg, .. } = &f.relay {
            to.push((msg.topic.to_string(), f.to));
        }
    }
    assert_eq!(
        to,
        [("a/1".to_owned(), Some(2)), ("a/2".to_owned(), Some(2))],
        "to sibling 2 alone, and nothing for b/1"
    );
}

#[test]
fn a_member_that_cannot_take_a_message_hands_it_to_one_on_another_sibling() {
    let mut sib = Siblings::new(2);
    // A raw member on sibling 0 with Receive Maximum 1 that never acknowledges, offline
    // once it holds one: only the member on sibling 1 can take the rest.
    let slow = sib.nets[0].raw(V5);
    let props = [mqtt_proto::Property::ReceiveMaximum(1)];
    sib.nets[0].send(slow, &connect_v5("slow", true, &props));
    sib.nets[0].send(
        slow,
        &raw_subscribe(1, &[(filter("$share/g/t"), opts(QoS::AtLeastOnce))], &[]),
    );
    sib.settle();
    let fast = sib.client(1, "fast");
    sib.subscribe(fast, "$share/g/t", QoS::AtLeastOnce);
    let p = sib.client(0, "pub");
    for _ in 0..10 {
        sib.publish(p, "t", b"x", QoS::AtLeastOnce, false);
    }
    let slow_got = publishes(&sib.nets[0].take_frames(slow), V5).len();
    assert_eq!(slow_got, 1, "one in flight");
    assert_eq!(sib.messages(fast).len(), 9, "the rest crossed");
    assert_eq!(sib.dropped(), 0);
}

#[test]
fn every_sibling_keeps_the_same_retained_message_when_two_publish_it_at_once() {
    let mut sib = Siblings::new(2);
    let a = sib.client(0, "a");
    let b = sib.client(1, "b");
    for round in 0..20 {
        // Both publish before either's forward is handed over.
        let (x, y) = (format!("a{round}"), format!("b{round}"));
        publish(
            &mut sib.nets[a.0],
            a.1,
            "r/1",
            x.as_bytes(),
            QoS::AtLeastOnce,
            true,
        );
        publish(
            &mut sib.nets[b.0],
            b.1,
            "r/1",
            y.as_bytes(),
            QoS::AtLeastOnce,
            true,
        );
        sib.settle();
        let kept: Vec<Option<Vec<u8>>> = sib
            .nets
            .iter()
            .map(|n| n.broker.retained("r/1").map(|m| m.payload.to_vec()))
            .collect();
        assert!(kept[0].is_some(), "round {round}");
        assert_eq!(kept[0], kept[1], "round {round}: the siblings agree");
    }
    // A new subscriber on either sibling gets it, and a clear reaches both.
    let s = sib.client(1, "late");
    sib.subscribe(s, "r/#", QoS::AtLeastOnce);
    let got = sib.messages(s);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    sib.publish(a, "r/1", b"", QoS::AtLeastOnce, true);
    assert!(sib.nets.iter().all(|n| n.broker.retained("r/1").is_none()));
}

#[test]
fn a_will_reaches_subscribers_on_other_siblings() {
    let mut sib = Siblings::new(2);
    let watcher = sib.client(1, "watcher");
    sib.subscribe(watcher, "wills/#", QoS::AtLeastOnce);
    let net = &mut sib.nets[0];
    let dying = net.client(ccfg(V5));
    net.connect(
        dying,
        &ConnectOptions {
            client_id: "dying",
            will: Some(will("wills/dying", b"gone", &[])),
            ..Default::default()
        },
    );
    sib.settle();
    sib.nets[0].drop_transport(dying);
    sib.settle();
    assert_eq!(sib.payloads(watcher), ["gone"]);
}

#[test]
fn message_ids_do_not_collide_between_siblings() {
    let mut sib = Siblings::new(2);
    let s = sib.client(1, "sub");
    sib.subscribe(s, "#", QoS::AtLeastOnce);
    let a = sib.client(0, "a");
    let b = sib.client(1, "b");
    for n in 0..5 {
        sib.publish(a, "x", format!("{n}").as_bytes(), QoS::AtLeastOnce, true);
        sib.publish(b, "y", format!("{n}").as_bytes(), QoS::AtLeastOnce, true);
    }
    let ids: Vec<u64> = ["x", "y"]
        .iter()
        .map(|t| sib.nets[1].broker.retained(t).unwrap().id)
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0] % 2, 1, "sibling 0 takes odd ids");
    assert_eq!(ids[1] % 2, 0, "sibling 1 takes even ids");
    let st: Stats = sib.nets[1].broker.stats();
    assert_eq!(st.retained, 2);
}

/// Sibling 1 has a subscriber (its session holds 32 messages) that reads nothing while a
/// publisher on sibling 0 sends 40 QoS 1 messages, 10 per read; then it reads again and the
/// publisher sends 60 more. Returns the siblings and both peers.
fn slow_subscriber_elsewhere(backpressure_ms: u32) -> (Siblings, (usize, usize), (usize, usize)) {
    let mut sib = Siblings::with(
        2,
        Config {
            limits: Limits {
                session_messages: 32,
                backpressure_ms,
                ..Limits::default()
            },
            ..Config::default()
        },
    );
    let s = sib.client(1, "slow");
    sib.subscribe(s, "bp", QoS::AtLeastOnce);
    let p = sib.client(0, "pub");
    sib.nets[s.0].pause(s.1, false, true);
    for chunk in 0..10u8 {
        if chunk == 4 {
            let p = &sib.nets[p.0].peers[p.1];
            let held = sib.nets[0].broker.stats().publishers_held;
            if backpressure_ms > 0 {
                assert_eq!(held, 1);
                assert!(!p.up.is_empty(), "the rest waits, unread");
                let queued = sib.nets[1].broker.stats().queued_messages;
                assert!((17..=32).contains(&queued), "held past half: {queued}");
            }
            sib.nets[s.0].pause(s.1, false, false);
            sib.settle();
        }
        let now = sib.nets[p.0].now;
        for i in 0..10u8 {
            let payload = [chunk * 10 + i];
            let msg = mqtt_proto::Publish {
                qos: QoS::AtLeastOnce,
                ..mqtt_proto::Publish::new("bp", &payload)
            };
            sib.nets[p.0]
                .cl(p.1)
                .publish(now, &msg, 5)
                .expect("publish");
        }
        sib.settle();
    }
    (sib, s, p)
}

#[test]
fn a_slow_subscriber_on_one_sibling_holds_a_publisher_on_another() {
    let (mut sib, s, _) = slow_subscriber_elsewhere(500);
    let got: Vec<u8> = sib.messages(s).into_iter().map(|m| m.payload[0]).collect();
    assert_eq!(
        got,
        (0..100).collect::<Vec<u8>>(),
        "every message, in order"
    );
    assert_eq!(sib.dropped(), 0, "nothing dropped");
    assert!(sib.nets[0].broker.stats().publishers_held >= 1);

    // Without back-pressure the same run drops what does not fit.
    let (sib, _, _) = slow_subscriber_elsewhere(0);
    assert_eq!(sib.dropped(), 8);
}

#[test]
fn sys_topics_count_every_siblings_clients() {
    let mut sib = Siblings::with(
        2,
        Config {
            sys_interval: Some(core::time::Duration::from_secs(10)),
            ..Config::default()
        },
    );
    let watcher = sib.client(1, "watcher");
    let _others = [sib.client(0, "a"), sib.client(0, "b"), sib.client(1, "c")];
    sib.subscribe(watcher, "$SYS/broker/clients/connected", QoS::AtMostOnce);
    // Two ticks: the first carries each sibling's counters to the other.
    for _ in 0..2 {
        for n in &mut sib.nets {
            n.advance_ms(10_000);
        }
        sib.settle();
    }
    let last = sib.payloads(watcher).pop();
    assert_eq!(last.as_deref(), Some("4"), "two clients on each sibling");
}

#[test]
fn with_acks_held_a_publishers_ack_waits_for_the_siblings_records() {
    let mut sib = Siblings::with(
        2,
        Config {
            hold_acks_until_durable: true,
            ..Config::default()
        },
    );
    // A persistent subscriber on sibling 1, whose store is slow: nothing is durable there
    // until the test says so.
    let net = &mut sib.nets[1];
    net.auto_durable = false;
    let s = net.client(ClientConfig {
        clean_start: false,
        ..ccfg(V311)
    });
    net.connect_id(s, "keeper");
    let last = net.broker.last_seq();
    net.broker.handle_durable(last);
    sib.subscribe((1, s), "d/#", QoS::AtLeastOnce);
    let last = sib.nets[1].broker.last_seq();
    sib.nets[1].broker.handle_durable(last);
    sib.nets[1].run();
    sib.nets[1].peers[s].paused_down = true; // it does not acknowledge either
    let p = sib.client(0, "pub");
    sib.publish(p, "d/1", b"x", QoS::AtLeastOnce, false);
    let acked = |sib: &Siblings| {
        sib.nets[0].peers[p.1]
            .got
            .iter()
            .filter(|g| matches!(g, Got::Published { .. }))
            .count()
    };
    assert_eq!(
        acked(&sib),
        0,
        "the copy on sibling 1 is not on its disk yet"
    );
    let last = sib.nets[1].broker.last_seq();
    sib.nets[1].broker.handle_durable(last);
    sib.settle();
    assert_eq!(acked(&sib), 1, "acknowledged once it is");
    // A message no one elsewhere keeps is acknowledged as soon as every sibling has answered.
    sib.publish(p, "other", b"y", QoS::AtLeastOnce, false);
    assert_eq!(acked(&sib), 2);
}

#[test]
fn restored_siblings_get_every_retained_message_back_from_its_owner() {
    let mut sib = Siblings::new(2);
    let p = sib.client(0, "pub");
    let topics: Vec<String> = (0..8).map(|i| format!("r/{i}")).collect();
    for t in &topics {
        sib.publish(p, t, t.as_bytes(), QoS::AtLeastOnce, true);
    }
    let two = Shard { index: 0, count: 2 };
    let owners: Vec<u16> = topics.iter().map(|t| two.owner(t)).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    // Each records only the topics it owns.
    let recorded = |n: &Net| {
        n.records
            .iter()
            .filter(|r| matches!(r.change, mqtt_session::broker::Change::RetainedSet { .. }))
            .count()
    };
    let mine = |s: u16| owners.iter().filter(|&&o| o == s).count();
    assert_eq!(
        (recorded(&sib.nets[0]), recorded(&sib.nets[1])),
        (mine(0), mine(1))
    );
    // Rebuilt from their records, they hand each other the rest.
    let nets: Vec<Net> = sib
        .nets
        .iter()
        .map(|n| {
            let cfg = n.broker.config().clone();
            let broker = mqtt_session::broker::Broker::restore(cfg, n.now, n.records.clone());
            Net::with_broker(broker)
        })
        .collect();
    let mut sib = Siblings { nets };
    sib.settle();
    for n in &sib.nets {
        for t in &topics {
            let kept = n.broker.retained(t).map(|m| m.payload.to_vec());
            assert_eq!(kept.as_deref(), Some(t.as_bytes()));
        }
    }
}

#[test]
fn a_publisher_waits_while_too_many_of_its_messages_are_on_their_way_to_a_sibling() {
    use mqtt_session::broker::shard::{Relay, WINDOW};
    let mut sib = Siblings::with(
        2,
        Config {
            limits: Limits {
                session_messages: 10_000,
                session_bytes: 1 << 24,
                ..Limits::default()
            },
            ..Config::default()
        },
    );
    let s = sib.client(1, "sub");
    sib.subscribe(s, "w", QoS::AtMostOnce);
    let p = sib.client(0, "pub");
    let total = WINDOW as usize + 500;
    let now = sib.nets[p.0].now;
    // In rounds that fit the client's queue (what it wrote waits on the wire).
    for round in (0..total).collect::<Vec<_>>().chunks(1000) {
        for &i in round {
            let payload = (i as u32).to_be_bytes();
            let msg = mqtt_proto::Publish::new("w", &payload);
            sib.nets[p.0]
                .cl(p.1)
                .publish(now, &msg, 5)
                .expect("publish");
        }
        sib.nets[p.0].run();
    }
    // Nothing handed over yet: sibling 0 stops reading once the window is past.
    let mut forwards = Vec::new();
    while let Some(f) = sib.nets[0].broker.poll_forward() {
        forwards.push(f);
    }
    let published = forwards
        .iter()
        .filter(|f| matches!(f.relay, Relay::Publish { .. }))
        .count();
    assert_eq!(published, WINDOW as usize + 1, "held past the window");
    assert!(
        !sib.nets[p.0].peers[p.1].up.is_empty(),
        "the rest waits, unread"
    );
    for f in forwards {
        let now = sib.nets[1].now;
        sib.nets[1].broker.handle_forward(now, 0, f.relay);
    }
    sib.settle();
    let got: Vec<u32> = sib
        .messages(s)
        .iter()
        .map(|m| u32::from_be_bytes(m.payload[..4].try_into().unwrap()))
        .collect();
    assert_eq!(
        got,
        (0..total as u32).collect::<Vec<_>>(),
        "all of it, in order"
    );
    assert!(sib.nets[0].broker.stats().publishers_held >= 1);
}
