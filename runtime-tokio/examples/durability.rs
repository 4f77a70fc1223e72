//! Publish throughput per durability mode: messages/s until `publish().await` returns and
//! until every message is acknowledged, and store syncs per message.
//!
//! `cargo run --release -p runtime-tokio --example durability` starts a private mosquitto
//! (from the `tests` harness) and prints a Markdown table.

use std::time::{Duration, Instant};

use mqtt_tokio::{Client, Durability, Options, QoS};
use tests::mosquitto::Broker;

async fn run(
    url: &str,
    durability: Durability,
    publishers: usize,
    total: usize,
) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options::new(url)
        .expect("url")
        .client_id(format!("durability-{publishers}"))
        .store(dir.path().join("bench.redb"))
        .store_durability(durability);
    let client = Client::spawn(options).expect("client");
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    let start = Instant::now();
    let per = total / publishers;
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut deliveries = Vec::with_capacity(per);
                for i in 0..per {
                    let payload = format!("{p}-{i}-0123456789abcdef0123456789abcdef");
                    deliveries.push(
                        c.publish("bench/durable", payload, QoS::AtLeastOnce, false)
                            .await
                            .expect("publish"),
                    );
                }
                deliveries
            })
        })
        .collect();
    let mut deliveries = Vec::new();
    for t in tasks {
        deliveries.extend(t.await.expect("task"));
    }
    let returned = start.elapsed();
    for d in deliveries {
        d.await.expect("acknowledged");
    }
    let acked = start.elapsed();
    let n = (per * publishers) as f64;
    let syncs = client.stats().store_commits as f64 / n;
    client.disconnect().await;
    (n / returned.as_secs_f64(), n / acked.as_secs_f64(), syncs)
}

#[tokio::main]
async fn main() {
    let broker = Broker::start();
    let url = broker.url();
    println!("QoS 1, 48-byte payloads, one client, mosquitto on loopback");
    println!("| mode | publishers | messages | returned msg/s | acked msg/s | syncs/msg |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let modes = [
        ("Memory", Durability::Memory),
        (
            "Relaxed(10 ms)",
            Durability::Relaxed(Duration::from_millis(10)),
        ),
        ("Sync", Durability::Sync),
    ];
    for (name, mode) in modes {
        for publishers in [1, 32] {
            let total = match (mode, publishers) {
                (Durability::Sync, 1) => 1_000,
                _ => 20_000,
            };
            let (returned, acked, syncs) = run(&url, mode, publishers, total).await;
            println!(
                "| {name} | {publishers} | {total} | {returned:.0} | {acked:.0} | {syncs:.3} |"
            );
        }
    }
}
