//! Durable sibling brokers that crash. Three siblings, each with its own store (a [`Ledger`]
//! folding its records into a key/value map, synced at random moments, as the server's
//! writer does); QoS 2 publishers on siblings 0 and 2, a persistent QoS 2 subscriber on each
//! sibling, and a share group with a member on siblings 1 and 2. Random steps publish, sync
//! one sibling's store, hand the forwards over, or crash every sibling at once (each rebuilt
//! from what its store holds). Our own client state machines survive the crashes, reconnect
//! and resend what was not completed.
//!
//! The promise: every subscriber gets every message exactly once and in each publisher's
//! order, and the group each once between its members, although one store cannot commit
//! together with another (a message stored on the subscriber's sibling and not yet on the
//! publisher's must not be taken again when the publisher resends it); and once all is done,
//! no store keeps a record of a forward.

mod broker_common;

use std::collections::BTreeMap;

use broker_common::*;
use mqtt_proto::{Property, QoS, Will};
use mqtt_session::ConnectOptions;
use mqtt_session::broker::ledger::{Ledger, Write};
use mqtt_session::broker::{Broker, Change, Config};
use proptest::prelude::*;

const SIBLINGS: usize = 3;
/// Messages published at most per case (the publisher's window is larger).
const MESSAGES: u32 = 16;

/// The publishers: (sibling, client id).
const PUBLISHERS: [(usize, &str); 2] = [(0, "pub0"), (2, "pub2")];
/// The share group's members: (sibling, client id).
const MEMBERS: [(usize, &str); 2] = [(1, "member1"), (2, "member2")];

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Publisher k publishes its next message.
    Publish(usize),
    /// Write sibling k's records not yet written, and tell it.
    Sync(usize),
    /// Hand every forward made so far to its sibling.
    Pump,
    /// Every sibling stops at once and is rebuilt from its store.
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..PUBLISHERS.len()).prop_map(Step::Publish),
        4 => (0..SIBLINGS).prop_map(Step::Sync),
        3 => Just(Step::Pump),
        1 => Just(Step::Crash),
    ]
}

/// One sibling's durable store.
struct Store {
    ledger: Ledger,
    entries: BTreeMap<u64, Vec<u8>>,
    /// Records of the net folded so far.
    fed: usize,
    /// The last batch held writes back for the next.
    behind: bool,
}

impl Store {
    fn new(defer: bool) -> Self {
        let mut ledger = Ledger::new();
        ledger.set_defer(defer);
        Store {
            ledger,
            entries: BTreeMap::new(),
            fed: 0,
            behind: false,
        }
    }

    /// Writes one batch and tells the broker how far it is durable.
    fn sync(&mut self, net: &mut Net) {
        net.run();
        for r in &net.records[self.fed..] {
            self.ledger.apply(r);
        }
        self.fed = net.records.len();
        let batch = self.ledger.take_writes();
        self.behind = batch.deferred;
        for w in batch.writes {
            match w {
                Write::Put(k, v) => self.entries.insert(k, v),
                Write::Delete(k) => self.entries.remove(&k),
            };
        }
        net.broker.handle_durable(batch.through);
        net.run();
    }

    /// The records a broker is rebuilt from, and the ledger that goes on from them.
    fn load(&mut self, defer: bool) -> Vec<mqtt_session::broker::Record> {
        let loaded = Ledger::load(self.entries.iter().map(|(k, v)| (*k, v.as_slice())));
        assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
        self.ledger = loaded.ledger;
        self.ledger.set_defer(defer);
        self.fed = 0;
        loaded.records
    }
}

struct World {
    sib: Siblings,
    stores: Vec<Store>,
    cfg: Config,
    defer: bool,
    /// Peer indices: the publishers', each sibling's subscriber's, the members'.
    publishers: Vec<usize>,
    subscribers: Vec<usize>,
    members: Vec<usize>,
}

impl World {
    fn new(defer: bool) -> Self {
        let cfg = Config {
            hold_acks_until_durable: true,
            ..Config::default()
        };
        let mut sib = Siblings::with(SIBLINGS as u16, cfg.clone());
        let stores = (0..SIBLINGS).map(|_| Store::new(defer)).collect();
        for n in &mut sib.nets {
            n.auto_durable = false;
        }
        let persistent = || ClientConfig {
            clean_start: false,
            ..ccfg(V311)
        };
        let mut w = World {
            sib,
            stores,
            cfg,
            defer,
            publishers: Vec::new(),
            subscribers: Vec::new(),
            members: Vec::new(),
        };
        let join = |w: &mut World, s: usize, id: &str| {
            let net = &mut w.sib.nets[s];
            let i = net.client(persistent());
            net.connect_id(i, id);
            i
        };
        for s in 0..SIBLINGS {
            let i = join(&mut w, s, &format!("sub{s}"));
            w.subscribers.push(i);
        }
        for (s, id) in PUBLISHERS {
            let i = join(&mut w, s, id);
            w.publishers.push(i);
        }
        for (s, id) in MEMBERS {
            let i = join(&mut w, s, id);
            w.members.push(i);
        }
        w.flush();
        for s in 0..SIBLINGS {
            let i = w.subscribers[s];
            subscribe(&mut w.sib.nets[s], i, "t/#", opts(QoS::ExactlyOnce));
        }
        for (k, (s, _)) in MEMBERS.into_iter().enumerate() {
            let i = w.members[k];
            subscribe(
                &mut w.sib.nets[s],
                i,
                "$share/g/t/#",
                opts(QoS::ExactlyOnce),
            );
        }
        w.flush();
        w
    }

    /// Does a step that publishes nothing.
    fn act(&mut self, step: &Step) {
        match *step {
            Step::Publish(_) => {}
            Step::Sync(k) => self.sync(k),
            Step::Pump => {
                self.sib.pump();
            }
            Step::Crash => self.crash(),
        }
    }

    /// Moves every sibling's clock on by `ms`.
    fn advance_ms(&mut self, ms: u64) {
        for n in &mut self.sib.nets {
            n.advance_ms(ms);
        }
    }

    fn sync(&mut self, k: usize) {
        self.stores[k].sync(&mut self.sib.nets[k]);
    }

    /// Syncs and hands over until nothing moves.
    fn flush(&mut self) {
        for _ in 0..1000 {
            let before: usize = self.sib.nets.iter().map(|n| n.records.len()).sum();
            for k in 0..SIBLINGS {
                self.sync(k);
            }
            let moved = self.sib.pump();
            let after: usize = self.sib.nets.iter().map(|n| n.records.len()).sum();
            let behind = self.stores.iter().any(|s| s.behind);
            if !moved && before == after && !behind {
                return;
            }
        }
        panic!("the siblings did not settle");
    }

    fn crash(&mut self) {
        let nets = std::mem::take(&mut self.sib.nets);
        for (k, old) in nets.into_iter().enumerate() {
            let mut peers = old.peers;
            // The connections go with the process; the clients live on.
            for p in &mut peers {
                p.conn = None;
                p.up.clear();
                p.down.clear();
                if let Kind::Client(c) = &mut p.kind {
                    c.handle_disconnect(old.now);
                }
            }
            let records = self.stores[k].load(self.defer);
            let cfg = Config {
                shard: old.broker.config().shard,
                ..self.cfg.clone()
            };
            let mut net = Net::with_broker(Broker::restore(cfg, old.now, records));
            net.now = old.now;
            net.auto_durable = false;
            net.peers = peers;
            self.sib.nets.push(net);
        }
        // As the server does: no id any store holds names a new message.
        let top = self
            .sib
            .nets
            .iter()
            .map(|n| n.broker.next_message_id())
            .max()
            .unwrap_or(0);
        for n in &mut self.sib.nets {
            n.broker.skip_message_ids(top);
        }
        // And what they announce (subscriptions, retained messages, forwards made again) is
        // handed over before anyone connects.
        for _ in 0..8 {
            if !self.sib.pump() {
                break;
            }
        }
        for s in 0..SIBLINGS {
            let i = self.subscribers[s];
            self.reconnect(s, i, &format!("sub{s}"));
        }
        for (k, (s, id)) in PUBLISHERS.into_iter().enumerate() {
            self.reconnect(s, self.publishers[k], id);
        }
        for (k, (s, id)) in MEMBERS.into_iter().enumerate() {
            self.reconnect(s, self.members[k], id);
        }
    }

    fn reconnect(&mut self, s: usize, i: usize, id: &str) {
        let opts = ConnectOptions {
            client_id: id,
            ..Default::default()
        };
        self.sib.nets[s].connect(i, &opts);
    }

    /// Payloads peer `i` of sibling `s` got, in order.
    fn received(&self, s: usize, i: usize) -> Vec<u32> {
        let peer = &self.sib.nets[s].peers[i];
        peer.got
            .iter()
            .filter_map(|g| match g {
                Got::Message(m) => Some(u32::from_be_bytes(m.payload.as_slice().try_into().ok()?)),
                _ => None,
            })
            .collect()
    }

    /// Publishes publisher `k` saw completed.
    fn completed(&self, k: usize) -> usize {
        let peer = &self.sib.nets[PUBLISHERS[k].0].peers[self.publishers[k]];
        peer.got
            .iter()
            .filter(|g| matches!(g, Got::Published { .. }))
            .count()
    }
}

/// Whether each publisher's messages among `got` come in the order it published them.
fn in_order(got: &[u32]) -> bool {
    (0..PUBLISHERS.len() as u32).all(|k| {
        let theirs: Vec<u32> = got.iter().copied().filter(|p| p >> 16 == k).collect();
        theirs.is_sorted()
    })
}

fn run(defer: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut w = World::new(defer);
    let mut sent = [0u32; PUBLISHERS.len()];
    for s in steps {
        match *s {
            Step::Publish(k) if sent[k] < MESSAGES => {
                let (net, p) = (&mut w.sib.nets[PUBLISHERS[k].0], w.publishers[k]);
                let payload = (k as u32) << 16 | sent[k];
                let topic = format!("t/{k}");
                publish(
                    net,
                    p,
                    &topic,
                    &payload.to_be_bytes(),
                    QoS::ExactlyOnce,
                    false,
                );
                sent[k] += 1;
            }
            _ => w.act(s),
        }
    }
    w.flush();
    let mut want = Vec::new();
    for (k, &n) in sent.iter().enumerate() {
        prop_assert_eq!(
            w.completed(k),
            n as usize,
            "publisher {}: every publish completed",
            k
        );
        want.extend((0..n).map(|i| (k as u32) << 16 | i));
    }
    for s in 0..SIBLINGS {
        let mut got = w.received(s, w.subscribers[s]);
        prop_assert!(
            in_order(&got),
            "subscriber on sibling {}: out of order {:?}",
            s,
            got
        );
        got.sort_unstable();
        prop_assert_eq!(
            &got,
            &want,
            "subscriber on sibling {}: each message once",
            s
        );
    }
    let mut group = Vec::new();
    for (&(s, _), &i) in MEMBERS.iter().zip(&w.members) {
        let got = w.received(s, i);
        prop_assert!(
            in_order(&got),
            "member on sibling {}: out of order {:?}",
            s,
            got
        );
        group.extend(got);
    }
    group.sort_unstable();
    prop_assert_eq!(&group, &want, "the share group: each message once");
    // Nothing is on its way any more: no store remembers a forward.
    for (k, store) in w.stores.iter_mut().enumerate() {
        let left: Vec<_> = store
            .load(defer)
            .into_iter()
            .filter(|r| {
                matches!(
                    r.change,
                    Change::Forwarding { .. } | Change::ForwardSeen { .. }
                )
            })
            .map(|r| r.change)
            .collect();
        prop_assert!(left.is_empty(), "sibling {} keeps {:?}", k, left);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn qos2_across_durable_siblings_arrives_exactly_once_whenever_they_crash(
        defer in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        run(defer, &steps)?;
    }
}

#[test]
fn a_forward_made_again_after_a_crash_is_taken_once_and_a_lost_one_is_made_again() {
    // Both crash after the publisher's sibling recorded the message as forwarding and the
    // others took it: stored there (it is made again, and not taken twice) or not (it is made
    // again, and taken).
    let stored = [
        Step::Publish(0),
        Step::Sync(0),
        Step::Pump,
        Step::Sync(1),
        Step::Sync(2),
        Step::Crash,
    ];
    let lost = [Step::Publish(0), Step::Sync(0), Step::Pump, Step::Crash];
    for defer in [false, true] {
        run(defer, &stored).unwrap();
        run(defer, &lost).unwrap();
    }
}

#[test]
fn a_delayed_qos2_will_reaches_the_other_siblings_once_whenever_they_crash() {
    // From the will going out on sibling 0 to the end of its forwards, a crash after each step.
    let steps = [
        Step::Pump,
        Step::Sync(1),
        Step::Sync(2),
        Step::Sync(0),
        Step::Pump,
        Step::Sync(1),
        Step::Sync(2),
        Step::Pump,
        Step::Sync(0),
        Step::Pump,
    ];
    for defer in [false, true] {
        for crash_at in 0..=steps.len() {
            let mut w = World::new(defer);
            let props = [Property::WillDelayInterval(1)];
            let net = &mut w.sib.nets[0];
            let d = net.client(ClientConfig {
                session_expiry: 100,
                clean_start: false,
                ..ccfg(V5)
            });
            let opts = ConnectOptions {
                client_id: "dying",
                will: Some(Will {
                    qos: QoS::ExactlyOnce,
                    ..will("t/will", b"gone", &props)
                }),
                ..Default::default()
            };
            net.connect(d, &opts);
            w.flush();
            w.sib.nets[0].drop_transport(d);
            w.flush();
            w.advance_ms(1_000);
            for (k, step) in steps.iter().enumerate() {
                if k == crash_at {
                    w.crash();
                }
                w.act(step);
            }
            // A will still pending after the restart goes out again.
            w.advance_ms(1_000);
            w.flush();
            let wills = |s: usize, i: usize| {
                let got = &w.sib.nets[s].peers[i].got;
                got.iter()
                    .filter(|g| matches!(g, Got::Message(m) if m.topic == "t/will"))
                    .count()
            };
            for s in 0..SIBLINGS {
                let n = wills(s, w.subscribers[s]);
                assert_eq!(
                    n, 1,
                    "crash before step {crash_at}, defer {defer}: sibling {s}"
                );
            }
            let group: usize = MEMBERS
                .iter()
                .zip(&w.members)
                .map(|(&(s, _), &i)| wills(s, i))
                .sum();
            assert_eq!(
                group, 1,
                "crash before step {crash_at}, defer {defer}: the group"
            );
        }
    }
}
