//! A publish whose `Delivery` is dropped allocates nothing: its completion is a slot that the
//! client reuses, not a channel. Counted with a global allocator around a burst of publishes
//! to a real mosquitto (started on a free loopback port; skipped when it is missing, failed
//! under `CI=true`).

use std::alloc::System;
use std::time::Duration;

use mqtt_tokio::{Client, Options, ProtocolVersion, QoS};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tests::mosquitto::Broker;

/// Counts every allocation of the process.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations so far.
fn allocations() -> usize {
    let s = GLOBAL.stats();
    s.allocations + s.reallocations
}

/// Publishes `n` messages at `qos` dropping each delivery but the last, awaited.
async fn burst(client: &Client, qos: QoS, n: usize) {
    for _ in 1..n {
        drop(
            client
                .publish("alloc/t", b"0123456789abcdef", qos, false)
                .await
                .unwrap(),
        );
    }
    let last = client
        .publish("alloc/t", b"last", qos, false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), last)
        .await
        .expect("the last publish completes")
        .expect("acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_delivery_costs_no_allocation() {
    const N: usize = 20_000;
    let Some(broker) = tokio::task::block_in_place(Broker::start_or_skip) else {
        return;
    };
    let options = Options::new(&broker.url())
        .unwrap()
        .client_id("alloc")
        .version(ProtocolVersion::V311);
    let client = Client::spawn(options).unwrap();
    client
        .wait_connected(Duration::from_secs(15))
        .await
        .unwrap();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        // Warm-up: buffers, slots and queues reach their working size.
        burst(&client, qos, N).await;
        let before = allocations();
        burst(&client, qos, N).await;
        let allocations = allocations() - before;
        // A channel per publish would be N; what is left is the runtime's own (timers, the
        // last delivery's waker) and buffers that grow now and then.
        assert!(
            allocations < N / 100,
            "{qos:?}: {allocations} allocations for {N} publishes"
        );
        eprintln!("{qos:?}: {allocations} allocations for {N} publishes");
    }
    assert_eq!(client.stats().sent, 4 * N as u64);
    client.disconnect().await;
}
