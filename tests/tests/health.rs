//! The client's health endpoint on both runtimes: `/health` passes while connected, warns
//! when the queue passes its threshold (the broker paused with SIGSTOP, so messages stay in
//! flight), fails with 503 while the broker is down and passes again once it is back;
//! `/livez` stays 200 throughout; `/metrics` parses as Prometheus text and its counters equal
//! `stats()`.
//!
//! Each test starts its own mosquitto on free loopback ports (failed under `CI=true` when it
//! is missing) and is bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use mqtt_client::{Client, Options, ProtocolVersion, QoS};
use mqtt_health::client::Thresholds;
use mqtt_smol::Smol;
use mqtt_tokio::Tokio;
use serde_json::Value;
use tests::mosquitto::Broker;
use tests::runtimes::{TestRuntime, bounded, eventually, within};

const WAIT: Duration = Duration::from_secs(15);

/// One GET: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    tests::http::get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `/health`: its HTTP status and the report's `status`.
fn health(addr: SocketAddr) -> (u16, String) {
    let (code, body) = get(addr, "/health");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, v["status"].as_str().unwrap_or_default().to_string())
}

/// Waits until `/health` answers `want` (with the matching HTTP status).
async fn health_becomes<R: TestRuntime>(addr: SocketAddr, want: &str) -> bool {
    let code = if want == "fail" { 503 } else { 200 };
    eventually::<R>(WAIT, || {
        R::blocking(|| health(addr)) == (code, want.to_string())
    })
    .await
}

fn signal(broker: &Broker, sig: &str) {
    let pid = broker.pid().expect("mosquitto runs").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

async fn pass_warn_fail_recover<R: TestRuntime>() {
    let Some(mut broker) = R::blocking(|| Broker::builder().persistence(true).start_or_skip())
    else {
        return;
    };
    bounded::<R>(Duration::from_secs(90), async {
        let options = Options::new(&broker.url())
            .expect("url")
            .client_id(format!("{}-health", R::NAME))
            .version(ProtocolVersion::V5)
            .backoff(Duration::from_millis(20), Duration::from_millis(200));
        let client = Client::<R>::spawn(options).expect("options");
        within::<R, _>(WAIT, client.wait_connected(WAIT))
            .await
            .expect("in time")
            .expect("connected");
        let thresholds = Thresholds {
            queue_depth: 5,
            ..Thresholds::default()
        };
        let addr = client
            .serve_health_with("127.0.0.1:0".parse().expect("addr"), thresholds)
            .await
            .expect("listening");
        assert_eq!(R::blocking(|| health(addr)), (200, "pass".into()));
        assert_eq!(R::blocking(|| get(addr, "/readyz")).0, 200);
        assert_eq!(R::blocking(|| get(addr, "/livez")).0, 200);
        assert_eq!(R::blocking(|| get(addr, "/nothing")).0, 404);

        // A paused broker takes the messages but acknowledges none: they stay held.
        R::blocking(|| signal(&broker, "-STOP"));
        let mut deliveries = Vec::new();
        for i in 0..10 {
            let d = client
                .try_publish("health/q", format!("m{i}"), QoS::AtLeastOnce, false)
                .expect("queued");
            deliveries.push(d);
        }
        assert!(eventually::<R>(WAIT, || client.stats().in_flight >= 5).await);
        let (code, body) = R::blocking(|| get(addr, "/health"));
        assert_eq!(code, 200, "warn still answers 200: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "warn", "{body}");
        assert_eq!(v["checks"]["queue:depth"][0]["status"], "warn", "{body}");
        assert_eq!(v["checks"]["queue:depth"][0]["observedValue"], 10, "{body}");
        R::blocking(|| signal(&broker, "-CONT"));
        for d in deliveries {
            within::<R, _>(WAIT, d)
                .await
                .expect("acknowledged in time")
                .expect("acknowledged");
        }
        assert!(
            health_becomes::<R>(addr, "pass").await,
            "back to pass once drained"
        );

        // The broker goes away: fail (503), not ready, still alive.
        R::blocking(|| broker.kill());
        assert!(
            health_becomes::<R>(addr, "fail").await,
            "fail while the broker is down"
        );
        let (_, body) = R::blocking(|| get(addr, "/health"));
        assert!(body.contains("not connected to the broker"), "{body}");
        assert_eq!(R::blocking(|| get(addr, "/readyz")).0, 503);
        assert_eq!(
            R::blocking(|| get(addr, "/livez")).0,
            200,
            "a broker outage is not death"
        );

        R::blocking(|| broker.restart());
        assert!(
            health_becomes::<R>(addr, "pass").await,
            "pass again after the broker returns"
        );
        assert_eq!(R::blocking(|| get(addr, "/readyz")).0, 200);
        assert_eq!(R::blocking(|| get(addr, "/livez")).0, 200);

        // After disconnect() the driver is gone: not alive any more.
        client.disconnect().await;
        assert!(eventually::<R>(WAIT, || R::blocking(|| get(addr, "/livez")).0 == 503).await);
    })
    .await;
}

/// A sample of a scrape, by name (and one label, when given).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("{name} {label:?} missing"))
}

async fn metrics_match_stats<R: TestRuntime>() {
    const N: usize = 25;
    let Some(broker) = R::blocking(|| Broker::builder().start_or_skip()) else {
        return;
    };
    bounded::<R>(Duration::from_secs(60), async {
        let options = Options::new(&broker.url())
            .expect("url")
            .client_id(format!("{}-metrics", R::NAME));
        let client = Client::<R>::spawn(options).expect("options");
        within::<R, _>(WAIT, client.wait_connected(WAIT))
            .await
            .expect("in time")
            .expect("connected");
        client
            .subscribe("metrics/#", QoS::AtLeastOnce)
            .await
            .expect("subscribed");
        for i in 0..N {
            client
                .publish("metrics/a", format!("{i}"), QoS::AtLeastOnce, false)
                .await
                .expect("queued")
                .await
                .expect("acknowledged");
        }
        assert!(eventually::<R>(WAIT, || client.stats().received == N as u64).await);
        let addr = client
            .serve_health("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listening");
        let (code, text) = R::blocking(|| get(addr, "/metrics"));
        assert_eq!(code, 200);
        let stats = client.stats();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
        assert_eq!(stats.sent, N as u64);
        let count = |name| sample(&scrape, name, None);
        assert_eq!(count("mqtt_client_messages_sent_total"), stats.sent as f64);
        assert_eq!(
            count("mqtt_client_messages_received_total"),
            stats.received as f64
        );
        assert_eq!(count("mqtt_client_messages_dropped_total"), 0.0);
        assert_eq!(count("mqtt_client_connected"), 1.0);
        assert_eq!(
            count("mqtt_client_subscriptions"),
            stats.subscriptions as f64
        );
        let p5 = sample(
            &scrape,
            "mqtt_client_queued_messages",
            Some(("priority", "5")),
        );
        assert_eq!(p5, 0.0);
        assert!(text.ends_with("# EOF\n"));
        client.disconnect().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_health_passes_warns_fails_and_recovers() {
    pass_warn_fail_recover::<Tokio>().await;
}

#[test]
fn smol_health_passes_warns_fails_and_recovers() {
    smol::block_on(pass_warn_fail_recover::<Smol>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_metrics_match_stats() {
    metrics_match_stats::<Tokio>().await;
}

#[test]
fn smol_metrics_match_stats() {
    smol::block_on(metrics_match_stats::<Smol>());
}
