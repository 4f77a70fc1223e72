//! The broker server under faults: connections cut by the loopback proxy mid-stream, session
//! takeover while messages flow, a flood of malformed and half-open connections during a
//! stream. (10 000 concurrent connections: `runtime-tokio/tests/broker_cli.rs`, with the
//! broker in its own process, each side within its file limit.)

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
use mqtt_tokio::broker::{Broker, BrokerConfig};
use mqtt_tokio::{Client, Message, Options};
use tests::proxy::Proxy;
use tests::raw::{Got, Raw};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(15);

async fn bounded(body: impl Future<Output = ()>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test ran over its time limit");
}

async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Copies of each decimal payload received per topic.
type Seen = Arc<Mutex<BTreeMap<(String, u32), usize>>>;

fn count(seen: &Seen, topic: &str) -> usize {
    seen.lock()
        .unwrap()
        .keys()
        .filter(|(t, _)| t == topic)
        .count()
}

/// Publishes `0..n` (decimal payloads) to `topic` at QoS 1 from a raw connection, in
/// windows of 50 unacknowledged (the broker's Receive Maximum is 64), each window's PUBACKs
/// awaited before the next.
async fn publish_numbered(
    addr: std::net::SocketAddr,
    v: ProtocolVersion,
    id: &'static str,
    topic: &'static str,
    n: u32,
) {
    let mut p = Raw::connect(addr, v, id).await;
    for batch in 0..n / 50 {
        for i in batch * 50..(batch + 1) * 50 {
            let packet_id = (i % 60_000 + 1) as u16;
            p.publish(topic, i.to_string().as_bytes(), QoS::AtLeastOnce, packet_id)
                .await;
        }
        for _ in 0..50 {
            match p.recv().await {
                Some(Got::PubAck(..)) => {}
                other => panic!("publisher: {other:?}"),
            }
        }
    }
}

/// Two cuts of every connection while QoS 1 and QoS 2 streams flow between persistent
/// sessions: QoS 1 arrives at least once, QoS 2 exactly once, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing_in_persistent_sessions() {
    bounded(async {
        let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
        cfg.max_queued_messages = 100_000;
        cfg.max_queued_bytes = 64 << 20;
        let broker = Broker::start(cfg).await.unwrap();
        let proxy = Arc::new(tokio::task::block_in_place(|| {
            Proxy::start(broker.local_addr())
        }));
        const N: u32 = 1500;
        let persistent = |id: &str| {
            Options::new(&proxy.url())
                .unwrap()
                .client_id(id)
                .version(ProtocolVersion::V5)
                .backoff(Duration::from_millis(10), Duration::from_millis(200))
                .persistent_session(Duration::from_secs(300))
        };
        let sub = Client::spawn(persistent("cut-sub")).unwrap();
        sub.wait_connected(WAIT).await.unwrap();
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        sub.route_with("cut/#", QoS::ExactlyOnce, move |m: Message| {
            let seen = s2.clone();
            async move {
                let n: u32 = String::from_utf8_lossy(&m.payload).parse().unwrap();
                *seen
                    .lock()
                    .unwrap()
                    .entry((m.topic.clone(), n))
                    .or_default() += 1;
            }
        })
        .unwrap();
        assert!(eventually(|| broker.stats().subscriptions == 1).await);
        let publ = Client::spawn(persistent("cut-pub")).unwrap();
        publ.wait_connected(WAIT).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..N {
            for (topic, qos) in [("cut/1", QoS::AtLeastOnce), ("cut/2", QoS::ExactlyOnce)] {
                deliveries.push(
                    publ.publish(topic, i.to_string(), qos, false)
                        .await
                        .unwrap(),
                );
            }
            if i == 500 || i == 1000 {
                let want = i as usize / 2;
                assert!(eventually(|| count(&seen, "cut/1") >= want).await);
                assert!(eventually(|| proxy.open_connections() == 2).await);
                let p = proxy.clone();
                tokio::task::spawn_blocking(move || p.cut_all())
                    .await
                    .unwrap();
            }
        }
        for d in deliveries {
            tokio::time::timeout(WAIT, d).await.unwrap().unwrap();
        }
        assert!(
            eventually(
                || count(&seen, "cut/1") == N as usize && count(&seen, "cut/2") == N as usize
            )
            .await,
            "cut/1 {} cut/2 {}",
            count(&seen, "cut/1"),
            count(&seen, "cut/2")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let seen = seen.lock().unwrap().clone();
        let dup2: Vec<_> = seen
            .iter()
            .filter(|((t, _), c)| t == "cut/2" && **c != 1)
            .collect();
        assert!(dup2.is_empty(), "QoS 2 delivered more than once: {dup2:?}");
        assert_eq!(proxy.cut_connections(), 4);
        assert_eq!(publ.stats().reconnects, 2);
        assert_eq!(sub.stats().reconnects, 2);
        publ.disconnect().await;
        sub.disconnect().await;
        broker.stop().await;
    })
    .await;
}

/// A persistent session is taken over 10 times while a publisher streams QoS 1 into it: each
/// old connection gets DISCONNECT 0x8E, each new one finds its session, and every message
/// arrives (what was in flight is sent again, with DUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_under_load_loses_nothing() {
    bounded(async {
        let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
        cfg.max_queued_messages = 100_000;
        let broker = Broker::start(cfg).await.unwrap();
        let addr = broker.local_addr();
        let v = ProtocolVersion::V5;
        let (mut taker, present) = Raw::connect_persistent(addr, v, "taker").await;
        assert!(!present);
        assert_eq!(
            taker.subscribe("load/t", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        const N: u32 = 2000;
        let publisher = tokio::spawn(publish_numbered(addr, v, "loader", "load/t", N));
        let mut seen = BTreeMap::<u32, usize>::new();
        let mut dups = 0;
        for round in 0..=10 {
            // Read (and ack) some, then let a new connection take the session over.
            let quota = if round == 10 { usize::MAX } else { 100 };
            let mut got = 0;
            while got < quota && seen.len() < N as usize {
                match taker.recv().await {
                    Some(Got::Publish {
                        payload,
                        qos,
                        id,
                        dup,
                        ..
                    }) => {
                        let n: u32 = String::from_utf8_lossy(&payload).parse().unwrap();
                        *seen.entry(n).or_default() += 1;
                        dups += usize::from(dup);
                        got += 1;
                        taker.ack(qos, id.unwrap()).await;
                    }
                    other => panic!("round {round}: {other:?} after {}", seen.len()),
                }
            }
            if round < 10 {
                let (next, present) = Raw::connect_persistent(addr, v, "taker").await;
                assert!(present, "round {round}: the session is there");
                let mut old = std::mem::replace(&mut taker, next);
                // The old one gets 0x8E after whatever was already on its way.
                loop {
                    match old.recv().await {
                        Some(Got::Publish { .. }) => {}
                        Some(Got::Disconnect(code)) => {
                            assert_eq!(code, ReasonCode::SessionTakenOver);
                            break;
                        }
                        other => panic!("round {round}: {other:?}"),
                    }
                }
            }
        }
        publisher.await.unwrap();
        let missing: Vec<u32> = (0..N).filter(|i| !seen.contains_key(i)).collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        eprintln!("redelivered with DUP after 10 takeovers: {dups}");
        broker.stop().await;
    })
    .await;
}

/// While a publisher streams 3 000 QoS 1 messages to a subscriber, 100 connections send
/// garbage, 100 open and send nothing, 50 send a CONNECT that never ends and 50 connect and
/// then send a malformed packet: every message arrives exactly as sent, the bad connections
/// are closed (the silent ones within the connect timeout), and the broker still accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_and_half_open_connections_does_not_harm_the_good_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
        cfg.connect_timeout = 2;
        cfg.max_queued_messages = 100_000;
        let broker = Broker::start(cfg).await.unwrap();
        let addr = broker.local_addr();
        let v = ProtocolVersion::V5;
        let mut sub = Raw::connect(addr, v, "good-sub").await;
        assert_eq!(
            sub.subscribe("good/t", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        const N: u32 = 3000;
        let publisher = tokio::spawn(publish_numbered(addr, v, "good-pub", "good/t", N));
        // The bad ones, all at once, while the stream runs.
        let started = tokio::time::Instant::now();
        let mut bad = Vec::new();
        for i in 0..300u32 {
            bad.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                match i % 6 {
                    // Garbage first bytes (no CONNECT).
                    0 | 1 => {
                        let _ = s.write_all(&[0xFF, 0x7F, 1, 2, 3, 4, 5, 6, 7, 8]).await;
                    }
                    // Nothing at all.
                    2 | 3 => {}
                    // A CONNECT whose length says more than ever comes.
                    4 => {
                        let _ = s.write_all(&[0x10, 0x7F, 0x00, 0x04, b'M', b'Q']).await;
                    }
                    // A valid CONNECT, then a SUBSCRIBE with reserved flags wrong.
                    _ => {
                        let mut c = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30];
                        c.extend_from_slice(&[0, 1, b'x']);
                        c[12..].copy_from_slice(&[0, 1, b'0' + (i % 10) as u8]);
                        let _ = s.write_all(&c).await;
                        let _ = s.write_all(&[0x80, 6, 0, 1, 0, 1, b'a', 0]).await;
                    }
                }
                // The broker closes it: read until EOF (or an error). Bounded, so that one
                // never closed is named rather than running the whole test out of time.
                let mut buf = [0u8; 256];
                let closed = async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return started.elapsed(),
                            Ok(_) => {}
                        }
                    }
                };
                tokio::time::timeout(WAIT, closed).await.map_err(|_| i)
            }));
        }
        let mut seen = BTreeMap::<u32, usize>::new();
        while seen.len() < N as usize {
            match tokio::time::timeout(WAIT, sub.recv()).await {
                Ok(Some(Got::Publish {
                    payload, qos, id, ..
                })) => {
                    let n: u32 = String::from_utf8_lossy(&payload).parse().unwrap();
                    *seen.entry(n).or_default() += 1;
                    sub.ack(qos, id.unwrap()).await;
                }
                other => panic!("subscriber: {other:?} after {}", seen.len()),
            }
        }
        publisher.await.unwrap();
        assert_eq!(seen.len(), N as usize);
        assert!(
            seen.values().all(|&c| c == 1),
            "no duplicates on a clean stream"
        );
        let mut slowest = Duration::ZERO;
        for b in bad {
            let closed = b.await.unwrap().unwrap_or_else(|i| {
                // Whether the broker still counts it open tells a lost close from a
                // connection never accepted (which a listen backlog of 128 once caused).
                panic!(
                    "bad connection {i} (kind {}) was never closed; broker: {} open, {:?}",
                    i % 6,
                    broker.connections(),
                    broker.stats()
                )
            });
            slowest = slowest.max(closed);
        }
        // Closed within the connect timeout (2 s) and the timer's 250 ms granularity.
        assert!(
            slowest < Duration::from_millis(3_500),
            "slowest close {slowest:?}"
        );
        assert!(
            eventually(|| broker.connections() == 1).await,
            "{}",
            broker.connections()
        );
        // And it still accepts.
        let mut late = Raw::connect(addr, v, "late").await;
        assert_eq!(
            late.subscribe("good/t", QoS::AtMostOnce).await,
            [ReasonCode::Success]
        );
        broker.stop().await;
    })
    .await;
}

/// A subscriber slower than its publisher, acknowledging each message only after a handler
/// that takes a millisecond: with queues of 40 messages, the publisher is held instead of
/// its messages dropped, and all 1 000 arrive; with back-pressure off, some are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_its_publisher_and_loses_nothing() {
    bounded(async {
        for backpressure_ms in [1_000, 0] {
            let broker = Broker::start(BrokerConfig {
                max_queued_messages: 40,
                backpressure_ms,
                ..BrokerConfig::new("mqtt://127.0.0.1:0")
            })
            .await
            .unwrap();
            let url = broker.urls()[0].clone();
            let got = Arc::new(Mutex::new(Vec::new()));
            let mut options = Options::new(&url)
                .unwrap()
                .client_id("slow-sub")
                .ack_mode(mqtt_tokio::AckMode::AfterHandlers);
            options.handler_concurrency = 1;
            let sub = Client::spawn(options).unwrap();
            let g = got.clone();
            sub.route_with("bp/t", QoS::AtLeastOnce, move |m: Message| {
                let g = g.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    g.lock().unwrap().push(m.payload.clone());
                }
            })
            .unwrap();
            sub.subscribe("bp/t", QoS::AtLeastOnce).await.unwrap();
            let addr = broker.local_addr();
            publish_numbered(addr, ProtocolVersion::V311, "fast-pub", "bp/t", 1_000).await;
            let stats = broker.stats();
            if backpressure_ms > 0 {
                assert!(eventually(|| got.lock().unwrap().len() == 1_000).await);
                // (Handlers finish in any order: compared as a set, counted exactly.)
                let mut got: Vec<u32> = got
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| std::str::from_utf8(p).unwrap().parse().unwrap())
                    .collect();
                got.sort_unstable();
                assert_eq!(got, (0..1_000).collect::<Vec<u32>>(), "each once");
                assert_eq!(stats.dropped.session_full, 0);
                assert!(stats.publishers_held > 0, "{stats:?}");
                assert_eq!(stats.subscribers_stalled, 0, "{stats:?}");
            } else {
                assert!(stats.dropped.session_full > 0, "{stats:?}");
            }
            sub.disconnect().await;
            broker.stop().await;
        }
    })
    .await;
}
