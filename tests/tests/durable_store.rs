//! The client's store: queued messages survive a restart, and a damaged store (truncated,
//! garbage appended, a record's checksum broken) is reported and set aside while the client
//! starts and carries on.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_tokio::{Client, Durability, Message, Options, QoS};
use tests::mosquitto::Broker;

const N: u32 = 20;

fn payload(i: u32) -> String {
    format!("queued-message-{i:05}-payload")
}

/// Queues `N` QoS 1 messages with no broker to send them to (the driver never runs), each
/// on disk when `publish()` returns, then ends the process's client.
async fn queue_offline(store: &Path, durability: Durability) {
    let options = Options::new("mqtt://127.0.0.1:1")
        .unwrap()
        .client_id("store-test")
        .persistent_session(Duration::from_secs(600))
        .store(store)
        .store_durability(durability);
    let (client, driver) = Client::new(options).unwrap();
    for i in 0..N {
        drop(
            client
                .publish("durable/store", payload(i), QoS::AtLeastOnce, false)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        client.stats().queued_by_priority.iter().sum::<usize>(),
        N as usize
    );
    // Dropping both closes the store (its writer finishes what was submitted).
    drop((client, driver));
}

/// Starts a client on `store` against `broker` and a subscriber; returns the payloads the
/// subscriber got within a short wait, and the client's stats.
async fn resume(broker: &Broker, store: &Path, expect: usize) -> (Vec<String>, mqtt_tokio::Stats) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sub = Client::spawn(Options::new(&broker.url()).unwrap().client_id("store-sub")).unwrap();
    let g = got.clone();
    sub.route("durable/store", move |m: Message| {
        let g = g.clone();
        async move {
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&m.payload).into_owned())
        }
    })
    .unwrap();
    sub.subscribe("durable/store", QoS::AtLeastOnce)
        .await
        .unwrap();
    let options = Options::new(&broker.url())
        .unwrap()
        .client_id("store-test")
        .persistent_session(Duration::from_secs(600))
        .store(store);
    let client = Client::spawn(options).unwrap();
    // It carries on: a new message goes through.
    client
        .publish("durable/store", "after", QoS::AtLeastOnce, false)
        .await
        .unwrap()
        .await
        .unwrap();
    let wait = Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < expect + 1 && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = client.stats();
    client.disconnect().await;
    sub.disconnect().await;
    let mut got = got.lock().unwrap().clone();
    got.sort();
    (got, stats)
}

fn all_but(skip: Option<u32>) -> Vec<String> {
    let mut v: Vec<String> = (0..N).filter(|i| Some(*i) != skip).map(payload).collect();
    v.push("after".into());
    v.sort();
    v
}

fn start() -> Option<Broker> {
    tokio::task::block_in_place(|| Broker::builder().start_or_skip())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_sent_after_a_restart() {
    for durability in [
        Durability::Sync,
        Durability::Relaxed(Duration::from_millis(50)),
    ] {
        let Some(broker) = start() else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("c.redb");
        queue_offline(&store, durability).await;
        let (got, stats) = resume(&broker, &store, N as usize).await;
        assert_eq!(got, all_but(None), "{durability:?}");
        assert_eq!((stats.restored, stats.set_aside), (u64::from(N), 0));
    }
}

#[tokio::test]
async fn memory_durability_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb");
    queue_offline(&store, Durability::Memory).await;
    assert!(!store.exists(), "memory mode writes no store");
}

/// Damages the store after queueing, restarts, and checks what was set aside.
async fn damaged(damage: impl FnOnce(&Path), survivors: Option<u32>) {
    let Some(broker) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb");
    queue_offline(&store, Durability::Sync).await;
    damage(&store);
    let (got, stats) = resume(&broker, &store, survivors.map_or(0, |_| N as usize - 1)).await;
    assert!(stats.set_aside >= 1, "the damage is reported: {stats:?}");
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "c.redb")
        .collect();
    assert!(
        !aside.is_empty(),
        "the damaged part is kept next to the store"
    );
    match survivors {
        // The file as a whole was unreadable: it starts empty, and carries on.
        None => assert_eq!(got, vec!["after".to_string()]),
        Some(lost) => {
            assert_eq!(got, all_but(Some(lost)), "every other message is resumed");
            assert_eq!(stats.restored, u64::from(N) - 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_is_set_aside() {
    damaged(
        |p| {
            let len = fs::metadata(p).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len / 3)
                .unwrap();
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_appended_to_the_store_is_set_aside() {
    damaged(
        |p| {
            let mut bytes = fs::read(p).unwrap();
            // Not a whole number of pages: not a layout redb writes.
            bytes.extend(std::iter::repeat_n(0x5Au8, 10_000));
            fs::write(p, bytes).unwrap();
        },
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_broken_checksum_is_set_aside_and_the_rest_resumed() {
    damaged(
        |p| {
            let mut bytes = fs::read(p).unwrap();
            let needle = payload(7).into_bytes();
            // Every copy: redb keeps superseded pages until they are reused.
            let at: Vec<usize> = bytes
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle.as_slice())
                .map(|(i, _)| i)
                .collect();
            assert!(!at.is_empty(), "message 7 is in the file");
            for i in at {
                bytes[i + 3] ^= 0xFF;
            }
            fs::write(p, bytes).unwrap();
        },
        Some(7),
    )
    .await;
}

#[tokio::test]
async fn evictions_are_counted_and_their_records_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb");
    let options = || {
        Options::new("mqtt://127.0.0.1:1")
            .unwrap()
            .client_id("evict-test")
            .queue(4, 1 << 20)
            .store(&store)
    };
    let (client, driver) = Client::new(options()).unwrap();
    for i in 0..4 {
        let body = payload(i);
        let msg = mqtt_proto::Publish {
            qos: QoS::AtLeastOnce,
            ..mqtt_proto::Publish::new("durable/evict", body.as_bytes())
        };
        drop(client.publish_with(&msg, 1).await.unwrap());
    }
    let urgent = mqtt_proto::Publish {
        qos: QoS::AtLeastOnce,
        ..mqtt_proto::Publish::new("durable/evict", b"urgent")
    };
    drop(client.publish_with(&urgent, 9).await.unwrap());
    // The driver reports the eviction (here between failed connection attempts).
    let running = tokio::spawn(driver.run());
    let end = Instant::now() + Duration::from_secs(5);
    while client.stats().evicted == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = client.stats();
    assert_eq!((stats.evicted, stats.dropped), (1, 1));
    assert_eq!(stats.queued_by_priority[0], 3);
    client.disconnect().await;
    running.await.unwrap();
    drop(client);
    // The evicted message's record is gone with it: four come back.
    let (client, driver) = Client::new(options()).unwrap();
    assert_eq!(client.stats().restored, 4);
    assert_eq!(
        client.stats().queued_by_priority[8],
        1,
        "the urgent one is kept"
    );
    drop((client, driver));
}

#[test]
fn the_store_works_the_same_on_smol() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("c.redb");
    smol::block_on(async {
        let options = mqtt_smol::Options::new("mqtt://127.0.0.1:1")
            .unwrap()
            .client_id("smol-store")
            .store(&store);
        let (client, driver) = mqtt_smol::Client::new(options).unwrap();
        for i in 0..5 {
            // On disk when it returns, with smol driving nothing but the commit.
            drop(
                client
                    .publish("durable/smol", payload(i), QoS::ExactlyOnce, false)
                    .await
                    .unwrap(),
            );
        }
        assert!(client.stats().store_commits >= 1);
        drop((client, driver));
    });
    let options = Options::new("mqtt://127.0.0.1:1")
        .unwrap()
        .client_id("smol-store")
        .store(&store);
    let (client, driver) = Client::new(options).unwrap();
    assert_eq!(client.stats().restored, 5);
    drop((client, driver));
}
