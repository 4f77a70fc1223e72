//! Three sibling brokers (`Config::shard`) with connections spread over them, fed arbitrary
//! bytes, clock jumps and closes, their forwards handed over in order after every step, some
//! held back for a while; with acknowledgments held for the disk or not, their records made
//! durable at arbitrary steps (a QoS 2 message's forwards wait for that): nothing may panic, every packet written must decode for its
//! connection's version, the queues stay within their limits, and once everything has been
//! handed over every sibling keeps the same retained messages.
#![no_main]

use core::time::Duration;

#[path = "broker_common.rs"]
mod broker_common;

use broker_common::{LIMITS, drain};
use libfuzzer_sys::fuzz_target;
use mqtt_proto::{Connect, Packet, ProtocolVersion};
use mqtt_session::Instant;
use mqtt_session::broker::shard::{Forward, Shard};
use mqtt_session::broker::{Broker, Config, ConnId, Event};

const SIBLINGS: u16 = 3;

fn connect(sel: u8, out: &mut Vec<u8>) {
    let version = if sel & 1 == 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let ids = ["a", "b", "c", "d"];
    let packet = Packet::Connect(Connect {
        clean_start: sel & 2 != 0,
        ..Connect::new(version, ids[usize::from(sel >> 2) % ids.len()], 5)
    });
    let mut buf = [0u8; 128];
    if let Ok(n) = packet.encode(version, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

/// Moves every sibling's forwards into the others' inboxes (in order); hands the inboxes
/// over unless `hold`.
fn relay(brokers: &mut [Broker], inboxes: &mut [Vec<(u16, Forward)>], now: Instant, hold: bool) {
    for _ in 0..1000 {
        let mut moved = false;
        for from in 0..brokers.len() {
            while let Some(f) = brokers[from].poll_forward() {
                for (to, inbox) in inboxes.iter_mut().enumerate() {
                    if to != from && f.to.is_none_or(|t| usize::from(t) == to) {
                        inbox.push((from as u16, f.clone()));
                    }
                }
            }
        }
        if hold {
            return;
        }
        for (to, inbox) in inboxes.iter_mut().enumerate() {
            for (from, f) in inbox.drain(..) {
                moved = true;
                brokers[to].handle_forward(now, from, f.relay);
            }
        }
        if !moved {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let hold_acks = data.first().is_some_and(|b| b & 0x80 != 0);
    let mut brokers: Vec<Broker> = (0..SIBLINGS)
        .map(|index| {
            Broker::new(Config {
                max_packet_size: 2048,
                receive_maximum: 4,
                topic_alias_maximum: 4,
                limits: LIMITS,
                hold_acks_until_durable: hold_acks,
                shard: Shard {
                    index,
                    count: SIBLINGS,
                },
                ..Config::default()
            })
        })
        .collect();
    let mut inboxes: Vec<Vec<(u16, Forward)>> = vec![Vec::new(); usize::from(SIBLINGS)];
    let mut now = Instant::ZERO;
    // (sibling, connection, unread bytes)
    let mut conns: Vec<(usize, ConnId, Vec<u8>)> = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let k = usize::from(op >> 5);
        match op & 0x07 {
            0..=2 => {
                let take = usize::from(op >> 3).min(rest.len());
                let (chunk, tail) = rest.split_at(take);
                rest = tail;
                let n = conns.len().max(1);
                if let Some((s, conn, pending)) = conns.get_mut(k % n) {
                    pending.extend_from_slice(chunk);
                    if let Ok(used) = brokers[*s].handle_read(*conn, now, pending) {
                        pending.drain(..used.min(pending.len()));
                    }
                }
            }
            3 => now += Duration::from_millis(u64::from(op) * 40),
            4 if conns.len() < 6 => {
                let s = k % brokers.len();
                let conn = brokers[s].handle_open(now);
                let mut pending = Vec::new();
                connect(op ^ rest.first().copied().unwrap_or(0), &mut pending);
                if let Ok(used) = brokers[s].handle_read(conn, now, &pending) {
                    pending.drain(..used.min(pending.len()));
                }
                conns.push((s, conn, pending));
            }
            5 if !conns.is_empty() => {
                let (s, conn, _) = conns.remove(k % conns.len());
                let _ = brokers[s].handle_close(conn, now);
            }
            6 => {
                let b = &mut brokers[k % usize::from(SIBLINGS)];
                b.handle_durable(b.last_seq());
            }
            _ => {}
        }
        // Forwards sometimes wait a few steps, as they do in channels between cores.
        relay(&mut brokers, &mut inboxes, now, op & 0x40 != 0);
        for s in 0..brokers.len() {
            let b = &mut brokers[s];
            b.handle_timeout(now);
            while b.poll_record().is_some() {}
            while let Some(e) = b.poll_event() {
                if let Event::Close { conn, .. } = e {
                    drain(b, conn, now, false);
                    let _ = b.handle_close(conn, now);
                    conns.retain(|(o, c, _)| !(*o == s && *c == conn));
                }
            }
            while let Some(conn) = b.poll_wake() {
                drain(b, conn, now, false);
            }
            assert!(b.queued_bytes() <= LIMITS.total_bytes);
            assert!(b.retained_bytes() <= LIMITS.retained_bytes);
            let st = b.stats();
            assert!(st.queued_messages <= st.sessions * LIMITS.session_messages);
        }
    }
    // Everything durable and handed over (what a sibling takes makes records, whose
    // confirmation waits for them in turn).
    for _ in 0..4 {
        for b in &mut brokers {
            b.handle_durable(b.last_seq());
        }
        relay(&mut brokers, &mut inboxes, now, false);
    }
    let first = brokers[0].snapshot().retained;
    for b in &brokers[1..] {
        assert_eq!(
            b.snapshot().retained,
            first,
            "the siblings keep the same retained"
        );
    }
});
