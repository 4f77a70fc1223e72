//! Random interleavings of connects, drops, subscribes, publishes and clock jumps from several
//! clients (our own client state machines, which ack and resend by themselves), checked
//! against a simple model once everyone reconnects and the network settles:
//! - no QoS 1/2 message is lost to a subscriber with a persistent session,
//! - no message delivered at QoS 2 arrives twice,
//! - each publisher's messages arrive in the order it published them, per subscriber.

mod broker_common;

use std::collections::BTreeMap;

use broker_common::model::*;
use broker_common::*;
use mqtt_proto::{QoS, SubscriptionOptions};
use mqtt_session::broker::Config;
use proptest::prelude::*;

fn run(subs: &[Vec<(usize, QoS)>], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut net = Net::new(Config::default());
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let c = net.client(client_cfg(i));
        net.connect_id(c, id);
    }
    // Effective subscriptions: per client, filter → max QoS (the last one wins).
    let mut subscribed: Vec<BTreeMap<usize, QoS>> = vec![BTreeMap::new(); CLIENTS];
    for (i, list) in subs.iter().enumerate() {
        for &(f, q) in list {
            subscribe(&mut net, i, FILTERS[f], SubscriptionOptions::new(q));
            subscribed[i].insert(f, q);
        }
    }
    let mut connected = [true; CLIENTS];
    // (publisher, seq) → (topic, QoS)
    let mut published: Vec<(usize, u32, usize, QoS)> = Vec::new();
    let mut seq = 0u32;
    for op in ops {
        match *op {
            Op::Drop(i) if connected[i] => {
                net.drop_transport(i);
                connected[i] = false;
            }
            Op::Stall(i, up, down) if connected[i] => net.pause(i, up, down),
            Op::Connect(i) if !connected[i] => {
                net.connect_id(i, &ids[i]);
                connected[i] = true;
            }
            Op::Publish(i, t, q) => {
                // A QoS 0 message from an offline or stalled client may never reach the
                // broker: not part of the model.
                if q == QoS::AtMostOnce && (!connected[i] || net.peers[i].paused) {
                    continue;
                }
                seq += 1;
                let payload = [i as u8, (seq >> 8) as u8, seq as u8];
                publish(&mut net, i, TOPICS[t], &payload, q, false);
                published.push((i, seq, t, q));
            }
            Op::Advance(ms) => net.advance_ms(ms),
            _ => {}
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if connected[i] {
            net.pause(i, false, false);
        } else {
            net.connect_id(i, id);
        }
    }
    net.advance_ms(1_000);
    prop_assert_eq!(
        net.broker.stats().dropped.total() - net.broker.stats().dropped.offline_qos0,
        0
    );

    check_promises(&subscribed, &published, |s| net.messages(s))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_qos_promises(subs in subs(), ops in proptest::collection::vec(op(), 1..60)) {
        run(&subs, &ops)?;
    }
}
