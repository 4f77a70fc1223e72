//! Bridges: our broker (in-process, port 0) bridged to a mosquitto it did not write (a private
//! one on a free loopback port), forwarding out, in and both ways with prefixes, exact counts
//! each way, no message coming back, and the messages of a remote that was down forwarded
//! once it is up.
//!
//! mosquitto missing skips the tests (a failure under `CI=true`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_proto::QoS;
use mqtt_tokio::broker::{BridgeConfig, BridgeTopic, Broker, BrokerConfig, Direction};
use mqtt_tokio::{Client, Event, Options};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

fn topic(filter: &str, direction: Direction, local: &str, remote: &str) -> BridgeTopic {
    BridgeTopic {
        filter: filter.into(),
        direction,
        qos: 1,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    }
}

/// A client of `url` that records (topic, payload, retain) of what matches `filter`.
async fn listener(url: &str, id: &str, filter: &str) -> (Client, Seen) {
    listener_with(Options::new(url).unwrap().client_id(id), filter).await
}

async fn listener_with(options: Options, filter: &str) -> (Client, Seen) {
    // Recorded from the event stream, in the order the messages came (handlers run
    // concurrently and would not keep it).
    let (c, mut driver) = Client::new(options).unwrap();
    let mut events = driver.events();
    tokio::spawn(driver.run());
    c.wait_connected(WAIT).await.unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Event::Message(m) = e {
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                s.lock().unwrap().push((m.topic, payload, m.retain));
            }
        }
    });
    // The SUBACK: a message published now reaches it.
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    (c, seen)
}

async fn client(url: &str, id: &str) -> Client {
    let c = Client::spawn(Options::new(url).unwrap().client_id(id)).unwrap();
    c.wait_connected(WAIT).await.unwrap();
    c
}

async fn publish(c: &Client, topic: &str, payload: &str, retain: bool) {
    c.publish(topic, payload, QoS::AtLeastOnce, retain)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits until `seen` holds `n` messages (or the wait ends), then a little longer, so that
/// one too many would show.
async fn settle(seen: &Seen, n: usize) -> Vec<(String, String, bool)> {
    let until = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().len() < n && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.lock().unwrap().clone()
}

/// Publishes probes on `from` until `seen` has one (the bridge's subscriptions are in place),
/// then forgets them.
async fn until_bridged(from: &Client, topic: &str, seen: &Seen) {
    let until = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < until,
            "the bridge never forwarded {topic}"
        );
        publish(from, topic, "probe", false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    seen.lock().unwrap().clear();
}

fn payloads(seen: &[(String, String, bool)], topic: &str) -> Vec<String> {
    seen.iter()
        .filter(|(t, ..)| t == topic)
        .map(|(_, p, _)| p.clone())
        .collect()
}

/// Our broker on a free port, with one bridge to `remote` speaking `protocol`.
async fn bridged(
    remote: &tests::mosquitto::Broker,
    client_id: Option<&str>,
    protocol: u8,
    topics: Vec<BridgeTopic>,
) -> Broker {
    let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
    cfg.http_listen = Some("127.0.0.1:0".into());
    cfg.bridges.push(BridgeConfig {
        name: "b".into(),
        remote: remote.url(),
        client_id: client_id.map(str::to_owned),
        protocol,
        ca_file: None,
        local_username: None,
        local_password: None,
        topics,
    });
    Broker::start(cfg).await.expect("the broker starts")
}

/// The bridge's numbers in `/metrics`: up, forwarded out, forwarded in.
async fn bridge_metrics(broker: &Broker) -> (u64, u64, u64) {
    let addr = broker.http_addr().expect("an HTTP endpoint");
    let (code, body) = tokio::task::spawn_blocking(move || tests::http::get(addr, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    let value = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {body}"))
    };
    (
        value("mqtt_broker_bridge_up{bridge=\"b\"} "),
        value("mqtt_broker_bridge_forwarded_total{bridge=\"b\",direction=\"out\"} "),
        value("mqtt_broker_bridge_forwarded_total{bridge=\"b\",direction=\"in\"} "),
    )
}

/// Waits until the bridge's counters are `out` and `in` more than `before`'s (acknowledged
/// copies: a little after their arrival), or the wait ends; gives them.
async fn forwarded_since(
    broker: &Broker,
    before: (u64, u64, u64),
    out: u64,
    inward: u64,
) -> (u64, u64) {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let now = bridge_metrics(broker).await;
        let delta = (now.1 - before.1, now.2 - before.2);
        if delta == (out, inward) || tokio::time::Instant::now() > until {
            return delta;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_forwards_out_in_and_both_ways_exactly_once_each() {
    let Some(remote) = tests::mosquitto::Broker::start_or_skip() else {
        return;
    };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let topics = vec![
            topic("up/#", Direction::Out, "", "site/"),
            topic("down/#", Direction::In, "hq/", ""),
            topic("both/#", Direction::Both, "", ""),
        ];
        let broker = bridged(&remote, None, 5, topics).await;
        let ours = broker.urls()[0].clone();
        let (_ro, there) = listener(&remote.url(), "remote-listener", "#").await;
        let (_lo, here) = listener(&ours, "local-listener", "#").await;
        let rp = client(&remote.url(), "remote-publisher").await;
        let lp = client(&ours, "local-publisher").await;
        until_bridged(&lp, "up/probe", &there).await;
        until_bridged(&rp, "down/probe", &here).await;
        here.lock().unwrap().clear();
        there.lock().unwrap().clear();
        let before = bridge_metrics(&broker).await;
        assert_eq!(before.0, 1, "both connections of the bridge are up");

        // Out: renamed by the prefixes, every one, in order.
        for p in numbered("u", 50) {
            publish(&lp, "up/a", &p, false).await;
        }
        // In: the other way.
        for p in numbered("d", 40) {
            publish(&rp, "down/b", &p, false).await;
        }
        // Both: from either side to the other, and never back.
        for i in 0..20 {
            publish(&lp, "both/c", &format!("l{i}"), false).await;
            publish(&rp, "both/c", &format!("r{i}"), false).await;
        }
        let there = settle(&there, 50 + 40 + 40).await;
        let here = settle(&here, 50 + 40 + 40).await;
        assert_eq!(payloads(&there, "site/up/a"), numbered("u", 50));
        assert_eq!(payloads(&here, "hq/down/b"), numbered("d", 40));
        // What the remote published itself is there too, and only once.
        assert_eq!(payloads(&there, "down/b"), numbered("d", 40));
        assert_eq!(payloads(&here, "up/a"), numbered("u", 50));
        for seen in [&here, &there] {
            let both = payloads(seen, "both/c");
            let (l, r): (Vec<_>, Vec<_>) = both.iter().cloned().partition(|p| p.starts_with('l'));
            assert_eq!(l, numbered("l", 20));
            assert_eq!(r, numbered("r", 20));
        }
        assert_eq!(there.len(), 50 + 40 + 40, "nothing else reached the remote");
        assert_eq!(here.len(), 50 + 40 + 40, "nothing else reached us");
        // The metrics count each forwarded message once: 50 + 20 out, 40 + 20 in.
        assert_eq!(forwarded_since(&broker, before, 70, 60).await, (70, 60));

        // A retained message stays retained across the bridge.
        publish(&lp, "up/kept", "r", true).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_late, late) = listener(&remote.url(), "late", "site/up/kept").await;
        let late = settle(&late, 1).await;
        assert_eq!(late, [("site/up/kept".to_string(), "r".to_string(), true)]);
        broker.stop().await;
    })
    .await
    .expect("the test ran over its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_while_the_remote_is_down_is_forwarded_once_it_is_up() {
    // Its sessions survive a kill (saved after every change), the listener's among them.
    let Some(mut remote) = tests::mosquitto::Broker::builder()
        .persistence(true)
        .start_or_skip()
    else {
        return;
    };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let topics = vec![topic("up/#", Direction::Out, "", "")];
        let broker = bridged(&remote, Some("hq-bridge"), 4, topics).await;
        let ours = broker.urls()[0].clone();
        // The listener's session there outlives its connection: it gets what the bridge
        // forwards while it reconnects.
        let opts = Options::new(&remote.url())
            .unwrap()
            .client_id("remote-listener")
            .persistent_session(Duration::from_secs(600));
        let (_ro, there) = listener_with(opts, "up/#").await;
        let lp = client(&ours, "local-publisher").await;
        until_bridged(&lp, "up/probe", &there).await;

        // The remote goes down; our publishers carry on, and the bridge's session here holds
        // what it could not forward yet.
        remote.kill();
        for p in numbered("m", 30) {
            publish(&lp, "up/x", &p, false).await;
        }
        remote.restart();
        let there = settle(&there, 30).await;
        let got = payloads(&there, "up/x");
        // At least once: every message, in order; a repeat only of one in flight at the kill.
        let mut distinct = got.clone();
        distinct.dedup();
        assert_eq!(distinct, numbered("m", 30), "{got:?}");
        assert!(got.len() <= 31, "{got:?}");
        broker.stop().await;
    })
    .await
    .expect("the test ran over its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_into_a_broker_that_refuses_anonymous_clients_needs_credentials() {
    let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
    cfg.allow_anonymous = false;
    cfg.bridges.push(BridgeConfig {
        name: "b".into(),
        remote: "mqtt://127.0.0.1:1".into(),
        client_id: None,
        protocol: 5,
        ca_file: None,
        local_username: None,
        local_password: None,
        topics: vec![topic("up/#", Direction::Out, "", "")],
    });
    let e = Broker::start(cfg).await.unwrap_err();
    assert!(e.to_string().contains("local_username"), "{e}");
}
