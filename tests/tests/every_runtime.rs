//! The same client code on every `std` runtime: each scenario here is one generic function
//! over `mqtt_client::Client<R>`, instantiated for tokio (`mqtt_tokio::Tokio`) and smol
//! (`mqtt_smol::Smol`). Only the test's executor differs.
//!
//! Each test starts its own mosquitto on free loopback ports (skipped when mosquitto is
//! missing, failed under `CI=true`), is bounded in time, and asserts exact counts.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_client::{
    Client, ConnectError, Delivery, Message, Options, ProtocolVersion, QoS, Runtime,
};
use mqtt_smol::Smol;
use mqtt_tokio::Tokio;
use tests::certs::Certs;
use tests::mosquitto::{Broker, BrokerBuilder};
use tests::proxy::Proxy;
use tests::runtimes::{self, TestRuntime, eventually, sleep, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a wait for messages or a connection may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);
/// How long to keep listening after the expected count, to catch extra copies.
const GRACE: Duration = Duration::from_millis(300);
const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

/// Runs a scenario with the time limit.
async fn bounded<R: Runtime>(body: impl Future<Output = ()>) {
    runtimes::bounded::<R>(TEST_TIMEOUT, body).await;
}

fn start<R: TestRuntime>(builder: BrokerBuilder) -> Option<Broker> {
    R::blocking(|| builder.start_or_skip())
}

fn options(url: &str, id: &str, version: ProtocolVersion) -> Options {
    Options::new(url)
        .expect("a valid URL")
        .client_id(id)
        .version(version)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
}

async fn connect<R: Runtime>(options: Options) -> Client<R> {
    let id = options.client_id.clone();
    let client = Client::<R>::spawn(options).expect("valid options");
    client
        .wait_connected(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{id} did not connect: {e}"));
    client
}

/// Messages collected by a handler.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Message>>>);

impl Inbox {
    fn all(&self) -> Vec<Message> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Routes `filter` (subscribed at `qos`) of `client` into this inbox.
    fn route<R: Runtime>(&self, client: &Client<R>, filter: &str, qos: QoS) {
        let inbox = self.clone();
        client
            .route_with(filter, qos, move |m: Message| {
                let inbox = inbox.clone();
                async move { inbox.0.lock().unwrap_or_else(|e| e.into_inner()).push(m) }
            })
            .expect("a valid filter");
    }

    /// Waits until at least `n` messages arrived, then a little longer for extra copies.
    async fn wait_for<R: Runtime>(&self, n: usize) -> Vec<Message> {
        eventually::<R>(WAIT, || self.len() >= n).await;
        sleep::<R>(GRACE).await;
        self.all()
    }
}

/// How many copies of each payload arrived on `topic`.
fn counts(messages: &[Message], topic: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for m in messages.iter().filter(|m| m.topic == topic) {
        *seen
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
    }
    seen
}

async fn all_acknowledged<R: Runtime>(deliveries: Vec<Delivery>) {
    for (i, d) in deliveries.into_iter().enumerate() {
        let rc = within::<R, _>(WAIT, d)
            .await
            .unwrap_or_else(|| panic!("delivery {i} not acknowledged within {WAIT:?}"));
        assert!(rc.is_ok(), "delivery {i} failed: {rc:?}");
    }
}

async fn publish_all<R: Runtime>(
    client: &Client<R>,
    topic: &str,
    qos: QoS,
    payloads: impl IntoIterator<Item = String>,
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for p in payloads {
        deliveries.push(client.publish(topic, p, qos, false).await.unwrap());
    }
    deliveries
}

/// QoS 0, 1 and 2 both ways, wildcard routing, and a reconnect that loses nothing.
async fn qos_routing_and_reconnect<R: TestRuntime>() {
    const N: usize = 20;
    let Some(broker) = start::<R>(Broker::builder()) else {
        return;
    };
    let proxy = R::blocking(|| Proxy::start(broker.addr()));
    let name = R::NAME;
    bounded::<R>(async {
        let sub = connect::<R>(options(
            &broker.url(),
            &format!("{name}-sub"),
            ProtocolVersion::V5,
        ))
        .await;
        // Messages come back at the QoS they were published with (the subscription allows 2).
        let inbox = Inbox::default();
        inbox.route(&sub, &format!("{name}/q/+"), QoS::ExactlyOnce);
        let (narrow, wide) = (Inbox::default(), Inbox::default());
        narrow.route(&sub, &format!("{name}/r/+/t"), QoS::AtLeastOnce);
        wide.route(&sub, &format!("{name}/r/#"), QoS::AtLeastOnce);
        assert!(eventually::<R>(WAIT, || sub.stats().subscriptions == 3).await);

        let publ = connect::<R>(
            options(&proxy.url(), &format!("{name}-pub"), ProtocolVersion::V5)
                .persistent_session(Duration::from_secs(300)),
        )
        .await;
        for (q, qos) in QOS.into_iter().enumerate() {
            let payloads = (0..N).map(|i| format!("{q}-{i}"));
            let deliveries = publish_all(&publ, &format!("{name}/q/{q}"), qos, payloads).await;
            all_acknowledged::<R>(deliveries).await;
        }
        let got = inbox.wait_for::<R>(3 * N).await;
        for (q, qos) in QOS.into_iter().enumerate() {
            let topic = format!("{name}/q/{q}");
            let seen = counts(&got, &topic);
            assert_eq!(seen.len(), N, "{topic}: {seen:?}");
            assert!(seen.values().all(|&c| c == 1), "{topic}: {seen:?}");
            assert!(
                got.iter()
                    .filter(|m| m.topic == topic)
                    .all(|m| m.qos == qos)
            );
        }
        assert_eq!(got.len(), 3 * N);

        // Routing: one message matches both filters, one only the wide one; once each.
        let deliveries = vec![
            publ.publish(&format!("{name}/r/a/t"), "both", QoS::AtLeastOnce, false)
                .await
                .unwrap(),
            publ.publish(&format!("{name}/r/a/x"), "wide", QoS::AtLeastOnce, false)
                .await
                .unwrap(),
        ];
        all_acknowledged::<R>(deliveries).await;
        let wide_got = wide.wait_for::<R>(2).await;
        let narrow_got = narrow.all();
        assert_eq!(narrow_got.len(), 1, "{narrow_got:?}");
        assert_eq!(narrow_got[0].payload, "both");
        assert_eq!(wide_got.len(), 2, "{wide_got:?}");

        // Reconnect: the connection is cut; what is published meanwhile arrives exactly once.
        R::blocking(|| proxy.cut_all());
        let payloads = (0..N).map(|i| format!("after-{i}"));
        let deliveries =
            publish_all(&publ, &format!("{name}/q/2"), QoS::ExactlyOnce, payloads).await;
        all_acknowledged::<R>(deliveries).await;
        assert!(eventually::<R>(WAIT, || publ.stats().connected).await);
        assert_eq!(publ.stats().reconnects, 1);
        let got = inbox.wait_for::<R>(4 * N).await;
        let after = counts(&got, &format!("{name}/q/2"));
        assert_eq!(after.len(), 2 * N, "{after:?}");
        assert!(after.values().all(|&c| c == 1), "{after:?}");
        assert_eq!(publ.stats().sent, 3 * N as u64 + 2 + N as u64);
        assert_eq!(sub.stats().reconnects, 0);
        publ.disconnect().await;
        sub.disconnect().await;
        assert!(!publ.stats().connected);
    })
    .await;
}

/// Publishes 3 QoS 1 messages to itself and expects each back once.
async fn self_round_trip<R: Runtime>(client: &Client<R>, topic: &str) {
    let inbox = Inbox::default();
    inbox.route(client, topic, QoS::AtLeastOnce);
    assert!(eventually::<R>(WAIT, || client.stats().subscriptions >= 1).await);
    let deliveries = publish_all(
        client,
        topic,
        QoS::AtLeastOnce,
        (0..3).map(|i| i.to_string()),
    )
    .await;
    all_acknowledged::<R>(deliveries).await;
    let got = inbox.wait_for::<R>(3).await;
    let seen = counts(&got, topic);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("0".into(), 1), ("1".into(), 1), ("2".into(), 1)]
    );
}

/// TLS with our CA (refused without it), mutual TLS (refused without the client
/// certificate), WebSocket and WebSocket over TLS: the transports written once, on each
/// runtime.
async fn tls_mutual_tls_and_websocket<R: TestRuntime>() {
    let certs = Certs::generate();
    let Some(tls) = start::<R>(Broker::builder().tls(&certs)) else {
        return;
    };
    let Some(mtls) = start::<R>(Broker::builder().tls(&certs).require_certificate(true)) else {
        return;
    };
    let Some(ws) = start::<R>(Broker::builder().websockets(true)) else {
        return;
    };
    let Some(wss) = start::<R>(Broker::builder().tls(&certs).websockets(true)) else {
        return;
    };
    let name = R::NAME;
    bounded::<R>(async {
        let url = format!("mqtts://127.0.0.1:{}", tls.tls_port());
        let c = connect::<R>(
            options(&url, &format!("{name}-tls"), ProtocolVersion::V5).ca_file(certs.ca_pem()),
        )
        .await;
        self_round_trip(&c, &format!("{name}/tls")).await;
        c.disconnect().await;

        let untrusted = Client::<R>::spawn(options(
            &url,
            &format!("{name}-untrusted"),
            ProtocolVersion::V5,
        ))
        .unwrap();
        let err = untrusted.wait_connected(WAIT).await.unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable(_)), "{err:?}");
        untrusted.disconnect().await;

        let url = format!("mqtts://127.0.0.1:{}", mtls.tls_port());
        let c = connect::<R>(
            options(&url, &format!("{name}-mtls"), ProtocolVersion::V311)
                .ca_file(certs.ca_pem())
                .client_cert(certs.client_cert(), certs.client_key()),
        )
        .await;
        self_round_trip(&c, &format!("{name}/mtls")).await;
        c.disconnect().await;

        let without = Client::<R>::spawn(
            options(&url, &format!("{name}-mtls-without"), ProtocolVersion::V311)
                .ca_file(certs.ca_pem()),
        )
        .unwrap();
        let err = without.wait_connected(WAIT).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Unreachable(_) | ConnectError::Lost(_)),
            "without a client certificate: {err:?}"
        );
        without.disconnect().await;

        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let v = u8::from(version.is_v5());
            let c = connect::<R>(options(&ws.ws_url(), &format!("{name}-ws-{v}"), version)).await;
            self_round_trip(&c, &format!("{name}/ws/{v}")).await;
            c.disconnect().await;
        }
        let url = wss.ws_url();
        assert!(url.starts_with("wss://"), "{url}");
        let c = connect::<R>(
            options(&url, &format!("{name}-wss"), ProtocolVersion::V5).ca_file(certs.ca_pem()),
        )
        .await;
        self_round_trip(&c, &format!("{name}/wss")).await;
        c.disconnect().await;
    })
    .await;
}

/// An idle connection stays up on the driver's timer alone: with a 1 s keep-alive mosquitto
/// drops a client silent for 1.5 s, so 3.5 s idle needs the pings.
async fn keep_alive_holds_an_idle_connection<R: TestRuntime>() {
    let Some(broker) = start::<R>(Broker::builder()) else {
        return;
    };
    let name = R::NAME;
    bounded::<R>(async {
        let c = connect::<R>(
            options(
                &broker.url(),
                &format!("{name}-idle"),
                ProtocolVersion::V311,
            )
            .keep_alive(Duration::from_secs(1)),
        )
        .await;
        sleep::<R>(Duration::from_millis(3500)).await;
        let stats = c.stats();
        assert!(stats.connected, "{stats:?}\n{}", broker.log());
        assert_eq!(stats.reconnects, 0, "{stats:?}\n{}", broker.log());
        self_round_trip(&c, &format!("{name}/idle")).await;
        c.disconnect().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_keep_alive_holds_an_idle_connection() {
    keep_alive_holds_an_idle_connection::<Tokio>().await;
}

#[test]
fn smol_keep_alive_holds_an_idle_connection() {
    smol::block_on(keep_alive_holds_an_idle_connection::<Smol>());
}

/// A driver dropped without running releases `wait_connected` and `disconnect` at once.
async fn a_dropped_driver_releases_waiters<R: Runtime>() {
    let (client, driver) = Client::<R>::new(options(
        "mqtt://127.0.0.1:1",
        "dropped",
        ProtocolVersion::V5,
    ))
    .unwrap();
    drop(driver);
    let outcome = within::<R, _>(WAIT, client.wait_connected(WAIT)).await;
    assert_eq!(outcome, Some(Err(ConnectError::Closed)));
    assert_eq!(within::<R, _>(WAIT, client.disconnect()).await, Some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_a_dropped_driver_releases_waiters() {
    a_dropped_driver_releases_waiters::<Tokio>().await;
}

#[test]
fn smol_a_dropped_driver_releases_waiters() {
    smol::block_on(a_dropped_driver_releases_waiters::<Smol>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_qos_routing_and_reconnect() {
    qos_routing_and_reconnect::<Tokio>().await;
}

#[test]
fn smol_qos_routing_and_reconnect() {
    smol::block_on(qos_routing_and_reconnect::<Smol>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tls_mutual_tls_and_websocket() {
    tls_mutual_tls_and_websocket::<Tokio>().await;
}

#[test]
fn smol_tls_mutual_tls_and_websocket() {
    smol::block_on(tls_mutual_tls_and_websocket::<Smol>());
}
