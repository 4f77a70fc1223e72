//! The model the random-interleaving tests (`broker_prop`, `broker_shards_prop`) check the
//! brokers against: clients, topics and filters, and the promises a run must keep.

use std::collections::BTreeMap;

use mqtt_proto::{QoS, matches};
use proptest::prelude::*;

use super::{ClientConfig, Msg, V5, V311, ccfg};

pub const CLIENTS: usize = 3;
pub const TOPICS: [&str; 4] = ["a/x", "a/y", "b/x", "b/y"];
pub const FILTERS: [&str; 5] = ["a/+", "+/x", "#", "b/y", "a/x"];

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// One step of a random interleaving.
#[derive(Debug, Clone)]
pub enum Op {
    Drop(usize),
    /// Stall the client's network (to its broker, from it): what is in flight waits, or is
    /// lost on a drop.
    Stall(usize, bool, bool),
    Connect(usize),
    Publish(usize, usize, QoS),
    Advance(u64),
    /// With siblings: hand every forward made so far to its sibling.
    Pump,
}

/// A step by one client, or of the clock.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..CLIENTS).prop_map(Op::Drop),
        2 => (0..CLIENTS, any::<bool>(), any::<bool>()).prop_map(|(c, u, d)| Op::Stall(c, u, d)),
        1 => (0..CLIENTS).prop_map(Op::Connect),
        4 => (0..CLIENTS, 0..TOPICS.len(), qos()).prop_map(|(c, t, q)| Op::Publish(c, t, q)),
        1 => (1u64..5_000).prop_map(Op::Advance),
    ]
}

/// [`op`], or a hand-over between siblings (2 in 11).
pub fn op_or_pump() -> impl Strategy<Value = Op> {
    prop_oneof![9 => op(), 2 => Just(Op::Pump)]
}

/// Each client's subscriptions: (filter index, max QoS).
pub fn subs() -> impl Strategy<Value = Vec<Vec<(usize, QoS)>>> {
    proptest::collection::vec(
        proptest::collection::vec((0..FILTERS.len(), qos()), 0..3),
        CLIENTS,
    )
}

/// Persistent sessions; one 3.1.1 client among the 5.0 ones.
pub fn client_cfg(i: usize) -> ClientConfig {
    ClientConfig {
        clean_start: false,
        session_expiry: 100_000,
        ..ccfg(if i == 0 { V311 } else { V5 })
    }
}

/// Checks what each subscriber got (`messages(s)`) against what was `published` as
/// (publisher, seq, topic index, QoS), given each client's effective subscriptions (filter
/// index → max QoS):
/// - no QoS 1/2 message is lost to a subscriber with a persistent session,
/// - no message delivered at QoS 2 arrives twice,
/// - each publisher's messages arrive in the order it published them, per subscriber.
pub fn check_promises(
    subscribed: &[BTreeMap<usize, QoS>],
    published: &[(usize, u32, usize, QoS)],
    mut messages: impl FnMut(usize) -> Vec<Msg>,
) -> Result<(), TestCaseError> {
    let published_qos: BTreeMap<(usize, u32), QoS> = published
        .iter()
        .map(|&(p, sq, _, q)| ((p, sq), q))
        .collect();
    for (s, subscribed) in subscribed.iter().enumerate() {
        let got = messages(s);
        // (publisher, seq) → how many times, and the QoS it came with.
        let mut count: BTreeMap<(usize, u32), (usize, QoS)> = BTreeMap::new();
        let mut last_seq: BTreeMap<usize, u32> = BTreeMap::new();
        for m in &got {
            let key = (
                usize::from(m.payload[0]),
                u32::from(m.payload[1]) << 8 | u32::from(m.payload[2]),
            );
            let e = count.entry(key).or_insert((0, m.qos));
            e.0 += 1;
            // A QoS 1/2 publish delivered at QoS 0 may lose its first copy and arrive as the
            // publisher's retransmission, later: only the others keep their first position.
            let resent_late = m.qos == QoS::AtMostOnce
                && published_qos
                    .get(&key)
                    .is_some_and(|q| *q != QoS::AtMostOnce);
            if e.0 == 1 && !resent_late {
                // First arrivals are in publish order per publisher.
                let last = last_seq.entry(key.0).or_insert(0);
                prop_assert!(
                    key.1 > *last,
                    "subscriber {} got {:?} after seq {}",
                    s,
                    key,
                    last
                );
                *last = key.1;
            }
        }
        for &(p, sq, t, q) in published {
            let best = subscribed
                .iter()
                .filter(|(f, _)| matches(FILTERS[**f], TOPICS[t]))
                .map(|(_, q)| *q)
                .max();
            let Some(best) = best else {
                prop_assert!(!count.contains_key(&(p, sq)), "unsubscribed delivery");
                continue;
            };
            let eff = q.min(best);
            let n = count.get(&(p, sq)).map_or(0, |e| e.0);
            match eff {
                // A QoS 1 publish may reach the broker twice (its PUBACK lost): then twice.
                QoS::AtMostOnce if q == QoS::AtMostOnce => prop_assert!(n <= 1),
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    prop_assert!(n >= 1, "QoS 1 message {:?} lost to {}", (p, sq), s)
                }
                QoS::ExactlyOnce => prop_assert_eq!(n, 1, "QoS 2 message {:?} to {}", (p, sq), s),
            }
            if n > 0 {
                prop_assert_eq!(count[&(p, sq)].1, eff);
            }
        }
    }
    Ok(())
}
