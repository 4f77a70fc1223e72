//! Persistence as data: the records the broker reports rebuild a broker with the same durable
//! state (sessions, subscriptions, queued and in-flight messages, inbound QoS 2 ids, retained
//! messages, pending wills) at any point of a run, and the rebuilt broker carries on.

mod broker_common;

use broker_common::model::qos;
use broker_common::*;
use mqtt_proto::{Packet, Property, QoS, SubscriptionOptions, TopicFilter};
use mqtt_session::ConnectOptions;
use mqtt_session::broker::ledger::{Ledger, Write};
use mqtt_session::broker::{Broker, Change, Config};
use proptest::prelude::*;
use std::collections::BTreeMap;

const CLIENTS: usize = 3;
const TOPICS: [&str; 3] = ["r/a", "r/b", "s/c"];
const FILTERS: [&str; 4] = ["r/+", "#", "s/c", "$share/g/r/#"];

#[derive(Debug, Clone)]
enum Op {
    Drop(usize),
    Connect(usize, bool),
    Stall(usize, bool, bool),
    Subscribe(usize, usize, QoS),
    Unsubscribe(usize, usize),
    Publish(usize, usize, QoS, bool, bool),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..CLIENTS).prop_map(Op::Drop),
        1 => (0..CLIENTS, any::<bool>()).prop_map(|(c, clean)| Op::Connect(c, clean)),
        1 => (0..CLIENTS, any::<bool>(), any::<bool>()).prop_map(|(c, u, d)| Op::Stall(c, u, d)),
        1 => (0..CLIENTS, 0..FILTERS.len(), qos()).prop_map(|(c, f, q)| Op::Subscribe(c, f, q)),
        1 => (0..CLIENTS, 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsubscribe(c, f)),
        3 => (0..CLIENTS, 0..TOPICS.len(), qos(), any::<bool>(), any::<bool>())
            .prop_map(|(c, t, q, r, e)| Op::Publish(c, t, q, r, e)),
        1 => (1u64..20_000).prop_map(Op::Advance),
    ]
}

fn client_cfg(i: usize, clean: bool) -> ClientConfig {
    ClientConfig {
        clean_start: clean,
        // Client 2 has a short session: expiry happens within a run.
        session_expiry: if i == 2 { 30 } else { 100_000 },
        ..ccfg(if i == 0 { V311 } else { V5 })
    }
}

fn connect(net: &mut Net, i: usize) {
    let id = format!("c{i}");
    let props = [Property::WillDelayInterval(5)];
    let w = will("r/will", b"w", &props);
    net.connect(
        i,
        &ConnectOptions {
            client_id: &id,
            // 3.1.1 has no will properties.
            will: (i != 0).then_some(w),
            ..Default::default()
        },
    );
}

fn rebuilt(net: &Net) -> Broker {
    Broker::restore(Config::default(), net.now, net.records.iter().cloned())
}

/// A key/value store fed through a [`Ledger`], as a durable broker writes it.
#[derive(Default)]
struct Store {
    ledger: Ledger,
    entries: BTreeMap<u64, Vec<u8>>,
    fed: usize,
}

/// The kinds of entry (a key's top byte) the ledger writes for a message's deliveries,
/// QoS 2 ids received, and wills.
const DELIVERIES: u64 = 9;
const INBOUND: u64 = 6;
const WILL: u64 = 8;

impl Store {
    /// The kinds of the entries in the store.
    fn kinds(&self) -> Vec<u64> {
        self.entries.keys().map(|k| k >> 56).collect()
    }

    /// A store whose ledger holds first writes back for a batch ([`Ledger::set_defer`]).
    fn deferring() -> Store {
        let mut store = Store::default();
        store.ledger.set_defer(true);
        store
    }

    /// Folds the records not fed yet and writes them as one batch; gives how far the
    /// records are durable, and whether writes were held back.
    fn write(&mut self, net: &Net) -> (u64, bool) {
        for r in &net.records[self.fed..] {
            self.ledger.apply(r);
        }
        self.fed = net.records.len();
        let batch = self.ledger.take_writes();
        let done = (batch.through, batch.deferred);
        for w in batch.writes {
            match w {
                Write::Put(k, v) => {
                    self.entries.insert(k, v);
                }
                Write::Delete(k) => {
                    self.entries.remove(&k);
                }
            }
        }
        done
    }

    /// A broker restored from the store's entries alone.
    fn rebuilt(&self, net: &Net) -> Broker {
        let loaded = Ledger::load(self.entries.iter().map(|(k, v)| (*k, v.as_slice())));
        assert_eq!(
            loaded.invalid,
            Vec::<u64>::new(),
            "entries the ledger wrote do not load"
        );
        Broker::restore(Config::default(), net.now, loaded.records)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn records_rebuild_the_durable_state_at_every_point(ops in proptest::collection::vec(op(), 1..50)) {
        let mut net = Net::new(Config::default());
        for i in 0..CLIENTS {
            net.client(client_cfg(i, false));
            connect(&mut net, i);
        }
        let mut connected = [true; CLIENTS];
        let mut seq = 0u8;
        let mut store = Store::default();
        let mut deferring = Store::deferring();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Drop(i) if connected[i] => {
                    net.drop_transport(i);
                    connected[i] = false;
                }
                Op::Connect(i, clean) if !connected[i] => {
                    *net.cl(i) = mqtt_session::HeapClient::with_capacity(client_cfg(i, clean), 4096, 4 << 20);
                    connect(&mut net, i);
                    connected[i] = true;
                }
                Op::Stall(i, up, down) if connected[i] => net.pause(i, up, down),
                Op::Subscribe(i, f, q) if connected[i] && !net.peers[i].paused => {
                    subscribe(&mut net, i, FILTERS[f], SubscriptionOptions::new(q));
                }
                Op::Unsubscribe(i, f) if connected[i] && !net.peers[i].paused => {
                    let now = net.now;
                    let filter = TopicFilter::new(FILTERS[f]).unwrap();
                    net.cl(i).unsubscribe(now, &[filter], &[]).unwrap();
                    net.run();
                }
                Op::Publish(i, t, q, retain, expiring) if connected[i] => {
                    seq = seq.wrapping_add(1);
                    let payload = [seq];
                    let props = [Property::MessageExpiryInterval(10)];
                    let msg = mqtt_proto::Publish {
                        qos: q,
                        retain,
                        properties: mqtt_proto::Properties::new(if expiring && i != 0 { &props } else { &[] }),
                        ..mqtt_proto::Publish::new(TOPICS[t], &payload)
                    };
                    let now = net.now;
                    net.cl(i).publish(now, &msg, 5).unwrap();
                    net.run();
                }
                Op::Advance(ms) => net.advance_ms(ms),
                _ => continue,
            }
            let snapshot = net.broker.snapshot();
            prop_assert_eq!(rebuilt(&net).snapshot(), snapshot.clone(), "after {:?}", op);
            // Batches of one to three steps: writes that cancel inside a batch must leave
            // the same state as the records one by one.
            if step % 3 != 1 {
                let (through, deferred) = store.write(&net);
                prop_assert!(!deferred);
                prop_assert_eq!(through, net.broker.last_seq());
                prop_assert_eq!(store.rebuilt(&net).snapshot(), snapshot.clone(), "ledger, after {:?}", op);
            }
            // Held back, deliveries may cancel across batches; what is written always loads
            // (`rebuilt` checks that no entry is invalid), and a batch with nothing new
            // writes what was held back, after which the state is whole again.
            if step % 2 == 0 {
                let (through, deferred) = deferring.write(&net);
                prop_assert!(through <= net.broker.last_seq());
                prop_assert_eq!(deferred, through < net.broker.last_seq());
                let written = deferring.rebuilt(&net).snapshot();
                // What the records up to `through` hold, and is still live, is written.
                let upto = net.records.iter().take_while(|r| r.seq <= through).cloned();
                let then = Broker::restore(Config::default(), net.now, upto).snapshot();
                for old in &then.sessions {
                    let Some(live) = snapshot.sessions.iter().find(|s| s.client_id == old.client_id) else { continue };
                    let ids = |s: &mqtt_session::broker::SessionSnapshot| -> Vec<u64> {
                        s.queued.iter().map(|q| q.0).chain(s.inflight.iter().map(|i| i.1)).collect()
                    };
                    let disk = written.sessions.iter().find(|s| s.client_id == old.client_id);
                    prop_assert!(disk.is_some(), "session {} not written", old.client_id);
                    let disk = ids(disk.unwrap());
                    let live = ids(live);
                    for id in ids(old) {
                        if live.contains(&id) {
                            prop_assert!(disk.contains(&id), "message {} of {} durable through {} but not written, after {:?}", id, old.client_id, through, op);
                        }
                    }
                }
                if step % 4 == 0 {
                    let (through, deferred) = deferring.write(&net);
                    prop_assert!(!deferred);
                    prop_assert_eq!(through, net.broker.last_seq());
                    prop_assert_eq!(deferring.rebuilt(&net).snapshot(), snapshot, "deferring ledger, after {:?}", op);
                }
            }
        }
    }
}

#[test]
fn a_rebuilt_broker_carries_on_with_queues_ids_and_retained() {
    let mut net = Net::new(Config::default());
    let props = [Property::SessionExpiryInterval(3_600)];
    let s = persistent_sub(&mut net, QoS::ExactlyOnce);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    // Sent and unacked (id 1), sent and PUBREC'd (id 2), then queued while offline (3, 4).
    publish(&mut net, p, "q/1", b"one", QoS::AtLeastOnce, false);
    publish(&mut net, p, "q/2", b"two", QoS::ExactlyOnce, false);
    net.send(s, &Packet::PubRec(mqtt_proto::Ack::new(pid(2))));
    net.drop_transport(s);
    publish(&mut net, p, "q/3", b"three", QoS::AtLeastOnce, true);
    publish(&mut net, p, "q/4", b"four", QoS::ExactlyOnce, false);
    let before = net.broker.snapshot();
    assert_eq!(before.sessions.len(), 1);
    assert_eq!(before.sessions[0].queued.len(), 2);
    assert_eq!(before.sessions[0].inflight.len(), 2);
    let last_seq = net.records.last().unwrap().seq;

    // The broker "restarts": every connection is gone, the state comes from the records.
    let broker = rebuilt(&net);
    assert_eq!(broker.snapshot(), before);
    assert_eq!(broker.last_seq(), last_seq);
    let mut net = Net::with_broker(broker);
    let s = net.raw(V5);
    net.send(s, &connect_v5("sub", false, &props));
    let frames = net.take_frames(s);
    assert!(connack(&frames[0], V5).session_present);
    // PUBLISH with DUP and QoS 1 in its first byte.
    assert_eq!(frames[1][0], 0x3A);
    let pubs = publishes(&frames, V5);
    assert_eq!(
        pubs,
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
                Some(3),
                "q/3".into(),
                b"three".to_vec()
            ),
            (
                false,
                QoS::ExactlyOnce,
                Some(4),
                "q/4".into(),
                b"four".to_vec()
            ),
        ]
    );
    // The PUBREL for id 2 goes out again, between the resent PUBLISH and the queue.
    assert_eq!(frames[2], [0x62, 0x02, 0x00, 0x02]);
    // The retained message survived; records continue after the old numbering.
    assert_eq!(&*net.broker.retained("q/3").unwrap().payload, b"three");
    net.send(s, &Packet::PubAck(mqtt_proto::Ack::new(pid(1))));
    assert!(net.records.iter().all(|r| r.seq > last_seq));
    assert!(matches!(
        net.records.last().map(|r| &r.change),
        Some(Change::Acked { packet_id, .. }) if packet_id.get() == 1
    ));
}

#[test]
fn a_rebuilt_broker_keeps_session_expiry_and_will_delays() {
    let mut net = Net::new(Config::default());
    let w = net.client(ccfg(V5));
    net.connect_id(w, "watcher");
    subscribe(&mut net, w, "w/#", opts(QoS::AtLeastOnce));
    let r = net.raw(V5);
    let props = [Property::SessionExpiryInterval(20)];
    let will_props = [Property::WillDelayInterval(10)];
    net.send(
        r,
        &Packet::Connect(mqtt_proto::Connect {
            will: Some(will("w/gone", b"bye", &will_props)),
            properties: mqtt_proto::Properties::new(&props),
            ..mqtt_proto::Connect::new(V5, "mortal", 0)
        }),
    );
    net.drop_transport(r);
    assert!(
        net.records
            .iter()
            .any(|r| matches!(r.change, Change::WillPending { .. }))
    );
    net.advance_ms(4_000);
    // Restart 4 s after the drop: the will is due at 10 s, the session ends at 20 s.
    let mut restarted = Net::with_broker(rebuilt(&net));
    restarted.now = net.now;
    let w = restarted.client(ccfg(V5));
    restarted.connect_id(w, "watcher2");
    subscribe(&mut restarted, w, "w/#", opts(QoS::AtLeastOnce));
    restarted.advance_to(mqtt_session::Instant::from_millis(9_999));
    assert!(restarted.messages(w).is_empty());
    restarted.advance_to(mqtt_session::Instant::from_millis(10_000));
    assert_eq!(restarted.messages(w).len(), 1, "the will, after its delay");
    assert!(restarted.broker.has_session("mortal"));
    restarted.advance_to(mqtt_session::Instant::from_millis(20_000));
    assert!(!restarted.broker.has_session("mortal"), "expired on time");
}

/// The subscriber `sub` holds the QoS 2 packet id 1 (PUBREC sent, no PUBREL yet), and the
/// broker is rebuilt from the records made before it sent that message (a store that lost
/// its last writes), with `cfg`. The subscriber resumes; a publisher sends `q/2` at QoS 2.
/// Gives what the subscriber receives.
fn resume_after_lost_records(cfg: Config) -> Vec<Vec<u8>> {
    let mut net = Net::new(Config::default());
    let s = persistent_sub(&mut net, QoS::ExactlyOnce);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    net.take_frames(s);
    let written = net.records.len();
    publish(&mut net, p, "q/1", b"lost", QoS::ExactlyOnce, false);
    let pubs = publishes(&net.take_frames(s), V5);
    assert_eq!(
        pubs,
        [(
            false,
            QoS::ExactlyOnce,
            Some(1),
            "q/1".into(),
            b"lost".to_vec()
        )]
    );
    net.send(s, &Packet::PubRec(mqtt_proto::Ack::new(pid(1))));
    assert!(net.records.len() > written, "the delivery made records");

    let broker = Broker::restore(cfg, net.now, net.records[..written].iter().cloned());
    let mut net = Net::with_broker(broker);
    let s = net.raw(V5);
    let props = [Property::SessionExpiryInterval(3_600)];
    net.send(s, &connect_v5("sub", false, &props));
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "q/2", b"new", QoS::ExactlyOnce, false);
    let frames = net.take_frames(s);
    assert!(connack(&frames[0], V5).session_present);
    frames
}

/// The new message as it reaches the subscriber: with the packet id 1 of the lost one.
fn new_with_id_1() -> Pub {
    (
        false,
        QoS::ExactlyOnce,
        Some(1),
        "q/2".into(),
        b"new".to_vec(),
    )
}

#[test]
fn after_a_restore_that_may_have_lost_records_every_qos2_id_is_released_before_reuse() {
    let cfg = Config {
        lossy_records: true,
        ..Config::default()
    };
    let frames = resume_after_lost_records(cfg);
    // The 8 192 ids the allocator hands out next (from 1: the lost delivery's record is all
    // it had) are released first (the client answers PUBCOMP, 0x92 for those it does not
    // hold), and only then does the new message reuse id 1.
    let released: Vec<u16> = frames[1..]
        .iter()
        .map_while(|f| match packet(f, V5) {
            Packet::PubRel(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect();
    assert_eq!(released, (1..=8192).collect::<Vec<_>>());
    let rest = &frames[1 + released.len()..];
    let pubs = publishes(rest, V5);
    assert_eq!(pubs, [new_with_id_1()]);
    assert_eq!(pubs.len(), rest.len());
}

#[test]
fn after_a_lossless_restore_nothing_is_released_and_the_id_is_reused_at_once() {
    // What the release prevents: the new message goes out with id 1, which this client
    // still holds, so it would drop it as a duplicate.
    let frames = resume_after_lost_records(Config::default());
    let pubs = publishes(&frames[1..], V5);
    assert_eq!(pubs, [new_with_id_1()]);
    assert_eq!(frames.len(), 2, "CONNACK and the PUBLISH, no PUBREL");
}

/// A raw MQTT 5 subscriber `sub` with an hour's session, subscribed to `q/#` at `qos`.
fn persistent_sub(net: &mut Net, qos: QoS) -> usize {
    let props = [Property::SessionExpiryInterval(3_600)];
    let s = net.raw(V5);
    net.send(s, &connect_v5("sub", true, &props));
    net.send(s, &raw_subscribe(1, &[(filter("q/#"), opts(qos))], &[]));
    s
}

/// A durable broker's view: acks and QoS 2 deliveries wait for `handle_durable`.
fn durable_cfg() -> Config {
    Config {
        hold_acks_until_durable: true,
        ..Config::default()
    }
}

#[test]
fn with_acks_held_a_qos2_delivery_waits_for_its_packet_id_to_be_durable() {
    let mut net = Net::new(durable_cfg());
    let s = persistent_sub(&mut net, QoS::ExactlyOnce);
    let p = net.raw(V5);
    net.send(p, &connect_v5("pub", true, &[]));
    net.take_frames(s);
    net.take_frames(p);
    // From here the test says what is durable.
    net.auto_durable = false;
    let msg = mqtt_proto::Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(pid(7)),
        ..mqtt_proto::Publish::new("q/1", b"once")
    };
    net.send(p, &Packet::Publish(msg));
    // Neither the PUBREC nor the delivery goes out before the records are durable.
    assert!(net.take_frames(p).is_empty());
    assert!(net.take_frames(s).is_empty());
    let sent = net.records.iter().rev().find_map(|r| match &r.change {
        Change::Sent { packet_id, .. } => Some((r.seq, packet_id.get())),
        _ => None,
    });
    let (sent_seq, sent_pid) = sent.expect("a Sent record before the PUBLISH is written");
    net.broker.handle_durable(sent_seq - 1);
    net.run();
    assert!(
        net.take_frames(s).is_empty(),
        "its Sent record is not durable yet"
    );
    net.broker.handle_durable(net.broker.last_seq());
    net.run();
    let pubs = publishes(&net.take_frames(s), V5);
    assert_eq!(
        pubs,
        [(
            false,
            QoS::ExactlyOnce,
            Some(sent_pid),
            "q/1".into(),
            b"once".to_vec()
        )]
    );
    let frames = net.take_frames(p);
    assert_eq!(frames.len(), 1);
    assert!(matches!(packet(&frames[0], V5), Packet::PubRec(a) if a.packet_id.get() == 7));
}

#[test]
fn a_delivery_acked_within_its_batch_costs_no_store_write() {
    let mut net = Net::new(Config::default());
    let s = persistent_sub(&mut net, QoS::AtLeastOnce);
    let mut store = Store::default();
    store.write(&net);
    // The session and its subscription.
    assert_eq!(store.entries.len(), 2);
    net.take_frames(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    publish(&mut net, p, "q/1", b"one", QoS::AtLeastOnce, false);
    let pubs = publishes(&net.take_frames(s), V5);
    assert_eq!(pubs.len(), 1);
    // Queued, sent and acknowledged in one batch: the writes cancel.
    net.send(s, &Packet::PubAck(mqtt_proto::Ack::new(pid(1))));
    for r in &net.records[store.fed..] {
        store.ledger.apply(r);
    }
    store.fed = net.records.len();
    let writes = store.ledger.take_writes().writes;
    // Only the session's entry is rewritten (a resume is recorded); nothing of the message.
    assert!(
        writes
            .iter()
            .all(|w| !matches!(w, Write::Put(_, v) if v.windows(3).any(|x| x == b"one"))),
        "{writes:?}"
    );
    assert!(writes.len() <= 1, "{writes:?}");
    // Queued while offline, it is written.
    net.drop_transport(s);
    publish(&mut net, p, "q/2", b"two", QoS::AtLeastOnce, false);
    let before = store.entries.len();
    store.write(&net);
    // One entry: the body, with its delivery.
    assert_eq!(store.entries.len(), before + 1);
    assert_eq!(store.rebuilt(&net).snapshot(), net.broker.snapshot());
}

#[test]
fn a_deferring_ledger_writes_a_delivery_one_batch_late_unless_it_was_acknowledged() {
    let mut net = Net::new(Config::default());
    let s = persistent_sub(&mut net, QoS::AtLeastOnce);
    let mut store = Store::deferring();
    // Sessions and subscriptions never wait.
    assert_eq!(store.write(&net), (net.broker.last_seq(), false));
    assert_eq!(store.entries.len(), 2);
    net.take_frames(s);
    let p = net.client(ccfg(V5));
    net.connect_id(p, "pub");
    let queued_seq = |net: &Net| {
        net.records
            .iter()
            .rev()
            .find(|r| matches!(r.change, mqtt_session::broker::Change::Queued { .. }))
            .map(|r| r.seq)
            .unwrap()
    };
    let holds = |entries: &BTreeMap<u64, Vec<u8>>, payload: &[u8]| {
        entries
            .values()
            .any(|v| v.windows(payload.len()).any(|x| x == payload))
    };

    // Acknowledged in the batch after the one it was queued in: never written.
    publish(&mut net, p, "q/1", b"first", QoS::AtLeastOnce, false);
    assert_eq!(publishes(&net.take_frames(s), V5).len(), 1);
    let (through, deferred) = store.write(&net);
    assert!(deferred);
    assert_eq!(
        through,
        queued_seq(&net) - 1,
        "durable up to the delivery held back"
    );
    assert!(!holds(&store.entries, b"first"));
    net.send(s, &Packet::PubAck(mqtt_proto::Ack::new(pid(1))));
    assert_eq!(store.write(&net), (net.broker.last_seq(), false));
    assert!(!holds(&store.entries, b"first"));

    // Not acknowledged: written by the next batch.
    net.pause(s, true, false);
    publish(&mut net, p, "q/2", b"second", QoS::AtLeastOnce, false);
    let before = store.entries.len();
    assert!(store.write(&net).1);
    assert!(!holds(&store.entries, b"second"));
    assert_eq!(store.write(&net), (net.broker.last_seq(), false));
    assert!(holds(&store.entries, b"second"));
    // One entry: the body, with its delivery.
    assert_eq!(store.entries.len(), before + 1);
    assert_eq!(store.rebuilt(&net).snapshot(), net.broker.snapshot());
}

#[test]
fn a_deferring_ledger_writes_a_qos2_id_received_with_the_deliveries_of_its_message() {
    // On disk alone, the id would make the publisher's resend after a restart look like a
    // message already delivered, and the held-back deliveries would be lost.
    let mut net = Net::new(Config::default());
    let s = persistent_sub(&mut net, QoS::ExactlyOnce);
    let mut store = Store::deferring();
    store.write(&net);
    net.pause(s, true, true);
    let p = net.raw(V5);
    // The publisher's session is persistent too: its QoS 2 ids are recorded.
    let props = [Property::SessionExpiryInterval(3_600)];
    net.send(p, &connect_v5("pub", true, &props));
    net.send(
        p,
        &Packet::Publish(mqtt_proto::Publish {
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(9)),
            ..mqtt_proto::Publish::new("q/2", b"exactly")
        }),
    );
    assert!(store.write(&net).1);
    assert!(!store.kinds().contains(&INBOUND));
    assert!(!store.kinds().contains(&DELIVERIES));
    assert_eq!(store.write(&net), (net.broker.last_seq(), false));
    assert!(store.kinds().contains(&INBOUND));
    assert!(store.kinds().contains(&DELIVERIES));
    assert_eq!(store.rebuilt(&net).snapshot(), net.broker.snapshot());
}

#[test]
fn a_deferring_ledger_forgets_a_will_that_went_out_with_the_deliveries_it_made() {
    let mut net = Net::new(Config::default());
    let s = persistent_sub(&mut net, QoS::AtLeastOnce);
    let c = net.client(ClientConfig {
        clean_start: false,
        session_expiry: 3_600,
        ..ccfg(V5)
    });
    let props = [Property::WillDelayInterval(1)];
    net.connect(
        c,
        &ConnectOptions {
            client_id: "willing",
            will: Some(will("q/will", b"gone", &props)),
            ..Default::default()
        },
    );
    let mut store = Store::deferring();
    net.pause(s, true, true);
    net.drop_transport(c);
    store.write(&net);
    assert!(
        store.kinds().contains(&WILL),
        "the will waits for its delay"
    );
    net.advance_ms(1_500);
    assert!(
        net.records[store.fed..]
            .iter()
            .any(|r| matches!(r.change, Change::WillCleared { .. })),
        "the will went out"
    );
    // Its delivery is not held back: the batch that forgets the will holds what it made.
    assert_eq!(store.write(&net), (net.broker.last_seq(), false));
    assert!(!store.kinds().contains(&WILL));
    assert!(store.kinds().contains(&DELIVERIES));
    assert_eq!(store.rebuilt(&net).snapshot(), net.broker.snapshot());
}
