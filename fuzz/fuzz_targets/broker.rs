//! The broker core with several connections fed arbitrary bytes, clock jumps, closes and new
//! connections: it must never panic, every packet it writes must decode for that connection's
//! protocol version, and what its queues hold must stay within the configured limits. Its
//! records, folded by a ledger into a key/value map in batches, must load back into a broker
//! with the same durable state.
#![no_main]

use core::time::Duration;

#[path = "broker_common.rs"]
mod broker_common;

use broker_common::{LIMITS, drain};
use libfuzzer_sys::fuzz_target;
use mqtt_proto::{Connect, Packet, Properties, Property, ProtocolVersion, QoS, TopicName, Will};
use mqtt_session::Instant;
use mqtt_session::broker::ledger::{Ledger, Write};
use mqtt_session::broker::{Answer, Broker, Config, ConnId, Event, Limits, Question};
use std::collections::BTreeMap;

/// A well-formed CONNECT chosen by one byte, so that most runs get past the handshake.
fn connect(sel: u8, out: &mut Vec<u8>) {
    let version = match sel % 3 {
        0 => ProtocolVersion::V311,
        1 => ProtocolVersion::V5,
        _ => ProtocolVersion::V31,
    };
    let ids = ["a", "b", "c", ""];
    let expiry = [
        Property::SessionExpiryInterval(60),
        Property::ReceiveMaximum(2),
    ];
    let will_props = [Property::WillDelayInterval(2)];
    let v5 = version.is_v5();
    let packet = Packet::Connect(Connect {
        clean_start: sel & 0x10 != 0,
        properties: if v5 {
            Properties::new(&expiry)
        } else {
            Properties::EMPTY
        },
        will: (sel & 0x20 != 0).then(|| Will {
            topic: TopicName::new("w/t").unwrap_or_else(|_| unreachable!()),
            payload: b"will",
            qos: QoS::AtLeastOnce,
            retain: sel & 0x40 != 0,
            properties: if v5 {
                Properties::new(&will_props)
            } else {
                Properties::EMPTY
            },
        }),
        ..Connect::new(version, ids[usize::from(sel >> 2) % ids.len()], 5)
    });
    let mut buf = [0u8; 256];
    if let Ok(n) = packet.encode(version, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg_byte, data)) = data.split_first() else {
        return;
    };
    let mut broker = Broker::new(Config {
        max_packet_size: 2048,
        receive_maximum: 4,
        topic_alias_maximum: 4,
        outgoing_topic_aliases: if cfg_byte & 32 != 0 { 2 } else { 0 },
        authenticate: cfg_byte & 1 != 0,
        hold_acks_until_durable: cfg_byte & 2 != 0,
        max_keep_alive: if cfg_byte & 4 != 0 { 3 } else { 0 },
        sys_interval: (cfg_byte & 8 != 0).then(|| Duration::from_secs(7)),
        limits: Limits {
            publish_rate: if cfg_byte & 64 != 0 { 3 } else { 0 },
            ..LIMITS
        },
        ..Config::default()
    });
    let mut now = Instant::ZERO;
    let mut conns: Vec<(ConnId, Vec<u8>)> = Vec::new();
    let mut ledger = Ledger::new();
    // Held back for a batch, deliveries may cancel across batches.
    ledger.set_defer(cfg_byte & 16 != 0);
    let mut store: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let write = |ledger: &mut Ledger, store: &mut BTreeMap<u64, Vec<u8>>| {
        for w in ledger.take_writes().writes {
            match w {
                Write::Put(k, v) => {
                    store.insert(k, v);
                }
                Write::Delete(k) => {
                    store.remove(&k);
                }
            }
        }
    };
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let k = usize::from(op >> 5);
        match op & 0x07 {
            0 | 1 | 2 => {
                // Bytes for connection k.
                let take = usize::from(op >> 3).min(rest.len());
                let (chunk, tail) = rest.split_at(take);
                rest = tail;
                let n = conns.len().max(1);
                if let Some((conn, pending)) = conns.get_mut(k % n) {
                    pending.extend_from_slice(chunk);
                    if let Ok(used) = broker.handle_read(*conn, now, pending) {
                        pending.drain(..used.min(pending.len()));
                    }
                }
            }
            3 => now += Duration::from_millis(u64::from(op) * 40),
            4 if conns.len() < 6 => {
                let conn = broker.handle_open(now);
                let mut pending = Vec::new();
                connect(op ^ rest.first().copied().unwrap_or(0), &mut pending);
                if let Ok(used) = broker.handle_read(conn, now, &pending) {
                    pending.drain(..used.min(pending.len()));
                }
                conns.push((conn, pending));
            }
            5 if !conns.is_empty() => {
                let (conn, _) = conns.remove(k % conns.len());
                let _ = broker.handle_close(conn, now);
            }
            6 => {
                write(&mut ledger, &mut store);
                broker.handle_durable(broker.last_seq());
            }
            _ => {}
        }
        broker.handle_timeout(now);
        while let Some(r) = broker.poll_record() {
            ledger.apply(&r);
        }
        while let Some(e) = broker.poll_event() {
            match e {
                Event::Ask(q) => {
                    let conn = match &q {
                        Question::Connect { conn, .. } | Question::Auth { conn, .. } => *conn,
                        _ => continue,
                    };
                    let answer = match op & 0x18 {
                        0 => Answer::Refuse(mqtt_proto::ReasonCode::NotAuthorized),
                        8 => Answer::Continue(vec![op]),
                        0x10 if op & 1 == 0 => Answer::Complete(vec![op]),
                        0x10 => Answer::CompleteAs(vec![op], "proved".into()),
                        _ => Answer::Accept,
                    };
                    let _ = broker.handle_auth_answer(conn, now, answer);
                }
                Event::Close { conn, .. } => {
                    drain(&mut broker, conn, now, false);
                    let _ = broker.handle_close(conn, now);
                    conns.retain(|(c, _)| *c != conn);
                }
                _ => {}
            }
        }
        while let Some(conn) = broker.poll_wake() {
            drain(&mut broker, conn, now, op & 0x80 != 0);
        }
        assert!(broker.queued_bytes() <= LIMITS.total_bytes);
        assert!(broker.retained_bytes() <= LIMITS.retained_bytes);
        let st = broker.stats();
        assert!(st.queued_messages <= st.sessions * LIMITS.session_messages);
        assert!(st.subscriptions <= st.sessions * LIMITS.subscriptions);
    }
    while let Some(r) = broker.poll_record() {
        ledger.apply(&r);
    }
    write(&mut ledger, &mut store);
    // A batch with nothing new writes what the last one held back.
    write(&mut ledger, &mut store);
    let loaded = Ledger::load(store.iter().map(|(k, v)| (*k, v.as_slice())));
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    assert!(loaded.unreferenced.is_empty(), "{:?}", loaded.unreferenced);
    let restored = Broker::restore(Config::default(), now, loaded.records);
    assert_eq!(restored.snapshot(), broker.snapshot());
});
