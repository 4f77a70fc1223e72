//! [`broker_prop`](broker_prop.rs)'s random interleavings over two sibling brokers: the
//! clients alternate between them, and what one sibling forwards reaches the other only at
//! the `Pump` steps (as through channels between cores, late), so publishes, drops, stalls
//! and clock jumps fall between a forward and its hand-over. The same promises must hold:
//! - no QoS 1/2 message is lost to a subscriber with a persistent session,
//! - no message delivered at QoS 2 arrives twice,
//! - each publisher's messages arrive in the order it published them, per subscriber.

mod broker_common;

use std::collections::BTreeMap;

use broker_common::model::*;
use broker_common::*;
use mqtt_proto::{QoS, SubscriptionOptions};
use proptest::prelude::*;

const SIBLINGS: usize = 2;

fn run(subs: &[Vec<(usize, QoS)>], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut sib = Siblings::new(SIBLINGS as u16);
    // Client i is peer `i / SIBLINGS` of sibling `i % SIBLINGS`.
    let at = |i: usize| (i % SIBLINGS, i / SIBLINGS);
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (s, _) = at(i);
        let c = sib.nets[s].client(client_cfg(i));
        sib.nets[s].connect_id(c, id);
    }
    sib.settle();
    // Effective subscriptions: per client, filter → max QoS (the last one wins).
    let mut subscribed: Vec<BTreeMap<usize, QoS>> = vec![BTreeMap::new(); CLIENTS];
    for (i, list) in subs.iter().enumerate() {
        for &(f, q) in list {
            let (s, p) = at(i);
            subscribe(&mut sib.nets[s], p, FILTERS[f], SubscriptionOptions::new(q));
            subscribed[i].insert(f, q);
        }
    }
    sib.settle();
    let mut connected = [true; CLIENTS];
    // (publisher, seq) → (topic, QoS)
    let mut published: Vec<(usize, u32, usize, QoS)> = Vec::new();
    let mut seq = 0u32;
    for op in ops {
        match *op {
            Op::Drop(i) if connected[i] => {
                let (s, p) = at(i);
                sib.nets[s].drop_transport(p);
                connected[i] = false;
            }
            Op::Stall(i, up, down) if connected[i] => {
                let (s, p) = at(i);
                sib.nets[s].pause(p, up, down);
            }
            Op::Connect(i) if !connected[i] => {
                let (s, p) = at(i);
                sib.nets[s].connect_id(p, &ids[i]);
                connected[i] = true;
            }
            Op::Publish(i, t, q) => {
                // A QoS 0 message from an offline or stalled client may never reach the
                // broker: not part of the model.
                let (s, p) = at(i);
                if q == QoS::AtMostOnce && (!connected[i] || sib.nets[s].peers[p].paused) {
                    continue;
                }
                seq += 1;
                let payload = [i as u8, (seq >> 8) as u8, seq as u8];
                publish(&mut sib.nets[s], p, TOPICS[t], &payload, q, false);
                published.push((i, seq, t, q));
            }
            Op::Advance(ms) => {
                for net in &mut sib.nets {
                    net.advance_ms(ms);
                }
            }
            Op::Pump => {
                sib.pump();
            }
            _ => {}
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let (s, p) = at(i);
        if connected[i] {
            sib.nets[s].pause(p, false, false);
        } else {
            sib.nets[s].connect_id(p, id);
        }
    }
    sib.settle();
    for _ in 0..3 {
        for net in &mut sib.nets {
            net.advance_ms(1_000);
        }
        sib.settle();
    }
    for net in &sib.nets {
        let d = net.broker.stats().dropped;
        prop_assert_eq!(d.total() - d.offline_qos0, 0);
    }

    check_promises(&subscribed, &published, |s| {
        let (n, p) = at(s);
        sib.nets[n].messages(p)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_over_siblings_keep_qos_promises(subs in subs(), ops in proptest::collection::vec(op_or_pump(), 1..60)) {
        run(&subs, &ops)?;
    }
}
