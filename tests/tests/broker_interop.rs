//! Our broker with clients written elsewhere: MQTT.js over TCP and WebSocket (3.1.1 and 5.0),
//! the Python paho-mqtt client (installed with pip into a venv), and a real browser (headless
//! Debian chromium driven by playwright-core) using MQTT.js's browser build over `ws://`.
//!
//! Missing node packages, python/pip or chromium skip the test, and fail it under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mqtt_tokio::broker::{Broker, BrokerConfig, ListenKind};
use serde_json::Value;
use tests::node::interop_dir;
use tests::skip_or_fail;

async fn broker() -> Broker {
    let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
    cfg.listen.push("ws://127.0.0.1:0/mqtt".into());
    // Clients that take topic aliases get them (MQTT.js's subscriber at 5.0).
    cfg.outgoing_topic_aliases = 4;
    Broker::start(cfg).await.expect("the broker starts")
}

/// Runs a program (bounded to 30 s) and parses the JSON line it prints last.
async fn run_json(mut cmd: Command) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output().expect("the program runs")),
    )
    .await
    .expect("it ends within 30 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The payloads of `got[qos]` as (payload, qos) pairs.
fn pairs(v: &Value) -> Vec<(String, u64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| match m {
                    Value::Array(x) => (
                        x[0].as_str().unwrap_or_default().to_owned(),
                        x[1].as_u64().unwrap_or(9),
                    ),
                    m => (
                        m["payload"].as_str().unwrap_or_default().to_owned(),
                        m["qos"].as_u64().unwrap_or(9),
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn want(n: usize, qos: u64) -> Vec<(String, u64)> {
    (0..n).map(|i| (i.to_string(), qos)).collect()
}

fn node_packages(names: &[&str]) -> bool {
    let dir = interop_dir();
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| {
            !dir.join("node_modules")
                .join(n)
                .join("package.json")
                .is_file()
        })
        .collect();
    if missing.is_empty() && Command::new("node").arg("-v").output().is_ok() {
        return true;
    }
    skip_or_fail(&format!(
        "node or the npm packages {missing:?} (npm ci --prefix tests/interop)"
    ));
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_tcp_and_websocket_at_311_and_5() {
    if !node_packages(&["mqtt"]) {
        return;
    }
    let broker = broker().await;
    let tcp = format!("mqtt://{}", broker.addr_of(ListenKind::Tcp).unwrap());
    let ws = format!("ws://{}/mqtt", broker.addr_of(ListenKind::Ws).unwrap());
    for url in [&tcp, &ws] {
        for version in ["4", "5"] {
            let mut cmd = Command::new("node");
            cmd.arg(interop_dir().join("mqttjs_broker.js"))
                .arg(url)
                .arg(version);
            let v = run_json(cmd).await;
            assert!(v.get("error").is_none(), "{url} v{version}: {v}");
            for q in 0..3u64 {
                assert_eq!(
                    pairs(&v["got"][q.to_string()]),
                    want(20, q),
                    "{url} v{version}"
                );
            }
            // The subscriber's three topics each get an alias; all but their first message
            // carry it alone, which MQTT.js resolves (the topics above are what it resolved).
            let aliased = if version == "5" { 3 * 20 } else { 0 };
            assert_eq!(v["aliased"], aliased, "{url} v{version}: {v}");
            assert_eq!(v["retained"]["payload"], "kept", "{url} v{version}: {v}");
            assert_eq!(v["retained"]["retain"], true);
        }
    }
    assert_eq!(broker.stats().messages_received, 4 * 61);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_qos_0_1_2_at_311_and_5() {
    let Some(python) =
        tokio::task::spawn_blocking(|| tests::paho::python(Path::new(env!("CARGO_TARGET_TMPDIR"))))
            .await
            .unwrap()
    else {
        return;
    };
    let broker = broker().await;
    let port = broker.local_addr().port();
    for version in ["4", "5"] {
        let mut cmd = Command::new(&python);
        cmd.arg(interop_dir().join("paho_broker.py")).args([
            "127.0.0.1",
            &port.to_string(),
            version,
        ]);
        let v = run_json(cmd).await;
        assert!(v.get("error").is_none(), "v{version}: {v}");
        for q in 0..3u64 {
            assert_eq!(pairs(&v["got"][q.to_string()]), want(20, q), "v{version}");
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_publishes_and_subscribes_over_websocket() {
    if !node_packages(&["mqtt", "playwright-core"]) {
        return;
    }
    if !Path::new("/usr/bin/chromium").is_file() {
        skip_or_fail("chromium (apt-get install chromium)");
        return;
    }
    let broker = broker().await;
    let ws = format!("ws://{}/mqtt", broker.addr_of(ListenKind::Ws).unwrap());
    let mut cmd = Command::new("node");
    cmd.arg(interop_dir().join("browser_broker.js")).arg(&ws);
    let v = run_json(cmd).await;
    assert!(v.get("error").is_none(), "{v}");
    let got: Vec<(String, String, u64)> = v["got"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().to_owned(),
                m[1].as_str().unwrap().to_owned(),
                m[2].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = (0..10)
        .map(|i| ("browser/t".to_owned(), format!("m{i}"), 1))
        .collect();
    assert_eq!(got, want);
    assert_eq!(broker.stats().messages_received, 10);
    broker.stop().await;
}
