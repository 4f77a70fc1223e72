//! The broker core's hot path: one PUBLISH read, routed through the subscription index and
//! encoded for its subscribers, with 1, 1 000 and 100 000 filters in the index and with a
//! fan-out to 1 000 sessions; next to the cost of only encoding the same packets, which any
//! server pays anyway. And the cost of sibling brokers (`Config::shard`): the same publish
//! routed from the publisher's sibling to a subscriber on another, through `poll_forward` and
//! `handle_forward`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mqtt_proto::{
    Connect, Filters, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter,
};
use mqtt_session::Instant;
use mqtt_session::broker::shard::Shard;
use mqtt_session::broker::{Broker, Config, ConnId, Limits};

const V: ProtocolVersion = ProtocolVersion::V311;

fn bytes(p: &Packet<'_>) -> Vec<u8> {
    let mut b = vec![0u8; p.encoded_len(V).expect("encodable")];
    p.encode(V, &mut b).expect("encode");
    b
}

fn open(b: &mut Broker, id: &str) -> ConnId {
    let c = b.handle_open(Instant::ZERO);
    let n = b
        .handle_read(
            c,
            Instant::ZERO,
            &bytes(&Packet::Connect(Connect::new(V, id, 0))),
        )
        .expect("open");
    assert!(n > 0);
    c
}

fn drain(b: &mut Broker, buf: &mut [u8]) -> usize {
    let mut packets = 0;
    while let Some(c) = b.poll_wake() {
        while let Some(n) = b.poll_transmit(c, Instant::ZERO, buf).expect("transmit") {
            packets += 1;
            black_box(&buf[..n]);
        }
    }
    packets
}

fn config(shard: Shard) -> Config {
    Config {
        limits: Limits {
            total_bytes: 1 << 30,
            ..Limits::default()
        },
        shard,
        ..Config::default()
    }
}

/// Hands every forward of `from` to `to`; how many.
fn hand_over(from: &mut Broker, to: &mut Broker, index: u16) -> usize {
    let mut n = 0;
    while let Some(f) = from.poll_forward() {
        to.handle_forward(Instant::ZERO, index, f.relay);
        n += 1;
    }
    n
}

/// Two siblings: a subscriber to `site/+/device/+/temperature` on sibling 1, and a publisher
/// on sibling 0, whose connection is returned.
fn siblings() -> ([Broker; 2], ConnId) {
    let mut b = [0u16, 1].map(|index| Broker::new(config(Shard { index, count: 2 })));
    let mut buf = vec![0u8; 4096];
    let s = open(&mut b[1], "sub");
    let f = [(
        TopicFilter::new("site/+/device/+/temperature").expect("filter"),
        SubscriptionOptions::new(QoS::AtMostOnce),
    )];
    let sub = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("non-zero"),
        properties: Properties::EMPTY,
        filters: Filters::new(&f),
    });
    b[1].handle_read(s, Instant::ZERO, &bytes(&sub))
        .expect("subscribe");
    let p = open(&mut b[0], "publisher");
    // The interest, its answer, and the SUBACK it held.
    for _ in 0..2 {
        let [b0, b1] = &mut b;
        hand_over(b1, b0, 1);
        hand_over(b0, b1, 0);
    }
    drain(&mut b[0], &mut buf);
    assert!(drain(&mut b[1], &mut buf) > 0, "SUBACK");
    (b, p)
}

/// A broker with `filters` distinct filters over up to 1 000 sessions, `fanout` of which also
/// subscribe to the benchmark topic; returns it with the publisher's connection.
fn setup(filters: usize, fanout: usize) -> (Broker, ConnId) {
    let mut b = Broker::new(config(Shard::default()));
    let sessions = filters.clamp(1, 1_000).max(fanout);
    let per = filters.div_ceil(sessions);
    let mut made = 0;
    for s in 0..sessions {
        let c = open(&mut b, &format!("sub{s}"));
        let mut strings: Vec<String> = Vec::new();
        for _ in 0..per {
            if made < filters {
                strings.push(match made % 3 {
                    0 => format!("site/{made}/device/+/temperature"),
                    1 => format!("site/{made}/device/7/#"),
                    _ => format!("site/{made}/meter/power"),
                });
                made += 1;
            }
        }
        if s < fanout {
            strings.push("fleet/+/status".to_string());
        }
        if strings.is_empty() {
            continue;
        }
        let list: Vec<(TopicFilter<'_>, SubscriptionOptions)> = strings
            .iter()
            .map(|f| {
                (
                    TopicFilter::new(f).expect("filter"),
                    SubscriptionOptions::new(QoS::AtMostOnce),
                )
            })
            .collect();
        let sub = Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            properties: Properties::EMPTY,
            filters: Filters::new(&list),
        });
        b.handle_read(c, Instant::ZERO, &bytes(&sub))
            .expect("subscribe");
    }
    let p = open(&mut b, "publisher");
    let mut buf = vec![0u8; 4096];
    drain(&mut b, &mut buf);
    assert_eq!(b.stats().subscriptions, filters + fanout);
    (b, p)
}

fn bench(c: &mut Criterion) {
    let mut buf = vec![0u8; 4096];
    let payload = [0x5au8; 64];
    let mut group = c.benchmark_group("broker");
    for filters in [1usize, 1_000, 100_000] {
        let (mut b, p) = setup(filters, 0);
        // Hits exactly one filter, "site/0/device/+/temperature".
        let publish = bytes(&Packet::Publish(Publish::new(
            "site/0/device/3/temperature",
            &payload,
        )));
        b.handle_read(p, Instant::ZERO, &publish).expect("publish");
        assert_eq!(drain(&mut b, &mut buf), 1, "one subscriber gets it");
        group.bench_function(format!("route one publish, {filters} filters"), |bn| {
            bn.iter(|| {
                b.handle_read(p, Instant::ZERO, black_box(&publish))
                    .expect("publish");
                drain(&mut b, &mut buf)
            });
        });
    }
    let ([mut b0, mut b1], p) = siblings();
    let publish = bytes(&Packet::Publish(Publish::new(
        "site/0/device/3/temperature",
        &payload,
    )));
    b0.handle_read(p, Instant::ZERO, &publish).expect("publish");
    assert_eq!(hand_over(&mut b0, &mut b1, 0), 1, "one forward");
    assert_eq!(
        drain(&mut b1, &mut buf),
        1,
        "the subscriber on sibling 1 gets it"
    );
    group.bench_function("route one publish to a subscriber on a sibling", |bn| {
        bn.iter(|| {
            b0.handle_read(p, Instant::ZERO, black_box(&publish))
                .expect("publish");
            hand_over(&mut b0, &mut b1, 0);
            // What the subscriber's sibling reports back (`Took`, every 1 024).
            hand_over(&mut b1, &mut b0, 1);
            drain(&mut b0, &mut buf) + drain(&mut b1, &mut buf)
        });
    });
    let out = Packet::Publish(Publish::new("site/0/device/3/temperature", &payload));
    group.bench_function("encode the same publish once", |bn| {
        bn.iter(|| black_box(&out).encode(V, &mut buf).expect("encode"));
    });

    let (mut b, p) = setup(0, 1_000);
    let publish = bytes(&Packet::Publish(Publish::new("fleet/42/status", &payload)));
    b.handle_read(p, Instant::ZERO, &publish).expect("publish");
    assert_eq!(drain(&mut b, &mut buf), 1_000);
    group.bench_function("fan-out one publish to 1000 sessions", |bn| {
        bn.iter(|| {
            b.handle_read(p, Instant::ZERO, black_box(&publish))
                .expect("publish");
            drain(&mut b, &mut buf)
        });
    });
    let out = Packet::Publish(Publish::new("fleet/42/status", &payload));
    group.bench_function("encode the same publish 1000 times", |bn| {
        bn.iter(|| {
            for _ in 0..1_000 {
                black_box(&out).encode(V, &mut buf).expect("encode");
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
