//! What operators watch the `mqtt` tool through: `--log-format json` (every line on stderr is
//! a JSON object naming the client id and the broker) and `--health ADDR` on `sub` and `pub`.
//! Each test starts its own mosquitto on free loopback ports (failed under `CI=true` when it is
//! missing).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::mosquitto::Broker;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mqtt")
}

/// Every stderr line as JSON; each must name `client_id` and `broker`.
fn json_lines(out: &Output, client_id: &str) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &lines {
        assert_eq!(v["span"]["client_id"], client_id, "{v}");
        assert!(
            v["span"]["broker"]
                .as_str()
                .is_some_and(|b| b.starts_with("mqtt://")),
            "{v}"
        );
    }
    lines
}

#[test]
fn json_logs_are_one_object_per_line_with_client_and_broker() {
    let Some(broker) = Broker::start_or_skip() else {
        return;
    };
    let port = broker.port().to_string();
    let out = run(&[
        "pub",
        "-h",
        broker.host(),
        "-p",
        &port,
        "-t",
        "logs/a",
        "-m",
        "x",
        "-q",
        "1",
        "-d",
        "-i",
        "json-pub",
        "--log-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&out, "json-pub");
    assert!(lines.len() >= 3, "connect, connected, delivered: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "1 message(s) delivered")
    );

    // Unreachable: the error the tool exits with is a JSON line too.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let dead = closed.local_addr().expect("addr").port().to_string();
    drop(closed);
    let out = run(&[
        "pub",
        "-h",
        "127.0.0.1",
        "-p",
        &dead,
        "-t",
        "x",
        "-m",
        "x",
        "-i",
        "json-dead",
        "--log-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out, "json-dead");
    let last = lines.last().expect("at least the error");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot reach"))
    );
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tests::http::get(addr, path).ok()
}

#[test]
fn sub_serves_health_while_it_runs() {
    let Some(broker) = Broker::start_or_skip() else {
        return;
    };
    let port = broker.port().to_string();
    let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let health = addr.to_string();
    let sub = Command::new(BIN)
        .args([
            "sub",
            "-h",
            broker.host(),
            "-p",
            &port,
            "-t",
            "h/#",
            "-C",
            "1",
            "-q",
            "1",
            "-W",
            "30",
            "--health",
            &health,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqtt sub");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = None;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(addr, "/health")
            && body.contains("\"status\":\"pass\"")
        {
            answer = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = answer.expect("/health passes while mqtt sub is connected");
    let v: Value = serde_json::from_str(&body).expect("health+json");
    assert_eq!(v["checks"]["broker:connection"][0]["observedValue"], true);
    assert_eq!(get(addr, "/livez").map(|r| r.0), Some(200));
    let (code, metrics) = get(addr, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("mqtt_client_connected 1\n"), "{metrics}");

    // Once the subscription is granted, one message (-C 1) ends it with exit 0.
    let subscribed = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        get(addr, "/metrics").is_some_and(|(_, m)| m.contains("mqtt_client_subscriptions 1\n"))
    });
    assert!(subscribed, "the subscription shows in /metrics");
    let out = run(&[
        "pub",
        "-h",
        broker.host(),
        "-p",
        &port,
        "-t",
        "h/x",
        "-m",
        "done",
        "-q",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let done = sub.wait_with_output().expect("mqtt sub ends");
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout), "done\n");
}
