//! Smoke tests of the mosquitto harness (`tests::mosquitto`, `certs`, `proxy`, `peers`), with the
//! mosquitto command-line tools alone: if these fail, the harness is broken, not our client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::certs::Certs;
use tests::mosquitto::Broker;
use tests::peers::{MqttVersion, Pub, Sub, mosquitto_pub, mosquitto_sub, tools_or_skip};
use tests::proxy::Proxy;

/// A plain broker, or `None` (test skipped) when mosquitto or its clients are missing.
fn broker() -> Option<Broker> {
    if !tools_or_skip() {
        return None;
    }
    Broker::start_or_skip()
}

#[test]
fn round_trip_at_each_qos_and_version() {
    let Some(broker) = broker() else { return };
    for (qos, version) in [
        (0, MqttVersion::V311),
        (1, MqttVersion::V311),
        (2, MqttVersion::V311),
        (0, MqttVersion::V5),
        (1, MqttVersion::V5),
        (2, MqttVersion::V5),
    ] {
        let topic = format!("rt/{qos}/{version:?}");
        let sub = Sub::new(&broker, "rt/#")
            .version(version)
            .qos(qos)
            .count(5)
            .timeout_secs(10)
            .spawn();
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| match i {
                // Binary, a newline and an empty payload must come through byte-exact.
                3 => vec![0x00, 0xff, b'\n', b' ', qos],
                4 => Vec::new(),
                _ => format!("msg {i} at qos {qos}").into_bytes(),
            })
            .collect();
        for p in &payloads {
            Pub::new(&broker, &topic, p)
                .version(version)
                .qos(qos)
                .run_ok();
        }
        let got = sub.wait();
        assert_eq!(
            got.len(),
            5,
            "qos {qos} {version:?}: {got:?}\n{}",
            broker.log()
        );
        for (m, p) in got.iter().zip(&payloads) {
            assert_eq!(m.topic, topic);
            assert_eq!(&m.payload, p, "qos {qos} {version:?}");
            assert_eq!(m.qos, qos);
            assert!(!m.retain);
        }
    }
}

#[test]
fn topic_with_spaces_and_retained_flag_are_reported() {
    let Some(broker) = broker() else { return };
    mosquitto_pub(&broker, "a b/c", "kept", 1, true);
    let got = mosquitto_sub(&broker, "a b/#", 1, 1, 5).wait();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "a b/c");
    assert_eq!(got[0].text(), "kept");
    assert!(
        got[0].retain,
        "a retained message is delivered with retain set on subscription"
    );
}

#[test]
fn password_broker_refuses_wrong_password_and_accepts_the_right_one() {
    if !tools_or_skip() {
        return;
    }
    let Some(broker) = Broker::builder()
        .password("alice", "s3cret")
        .start_or_skip()
    else {
        return;
    };
    assert_eq!(broker.credentials(), Some(("alice", "s3cret")));

    let wrong = Pub::new(&broker, "pw/t", "x").auth("alice", "wrong").run();
    assert!(
        !wrong.success() && !wrong.timed_out,
        "wrong password accepted: {wrong:?}"
    );
    let anonymous = Pub::new(&broker, "pw/t", "x").run();
    assert!(!anonymous.success(), "anonymous accepted: {anonymous:?}");
    let unknown = Pub::new(&broker, "pw/t", "x").auth("bob", "s3cret").run();
    assert!(!unknown.success(), "unknown user accepted: {unknown:?}");

    let sub = Sub::new(&broker, "pw/#")
        .auth("alice", "s3cret")
        .count(1)
        .timeout_secs(5)
        .spawn();
    Pub::new(&broker, "pw/t", "right")
        .auth("alice", "s3cret")
        .version(MqttVersion::V5)
        .qos(1)
        .run_ok();
    let got = sub.wait();
    assert_eq!(got.len(), 1, "{got:?}\n{}", broker.log());
    assert_eq!(got[0].text(), "right");
}

#[test]
fn tls_listener_serves_clients_that_trust_the_ca() {
    if !tools_or_skip() {
        return;
    }
    let certs = Certs::generate();
    let Some(broker) = Broker::builder().tls(&certs).start_or_skip() else {
        return;
    };
    assert_ne!(broker.tls_port(), broker.port());

    let sub = mosquitto_sub(&broker, "tls/#", 1, 2, 5);
    Pub::new(&broker, "tls/ip", "over tls")
        .tls(&certs)
        .qos(1)
        .run_ok();
    // The certificate names localhost as well as 127.0.0.1.
    Pub::new(&broker, "tls/name", "by name")
        .tls(&certs)
        .host("localhost")
        .qos(1)
        .run_ok();
    let got = sub.wait();
    let texts: Vec<String> = got.iter().map(|m| m.text()).collect();
    assert_eq!(texts, ["over tls", "by name"], "{}", broker.log());

    // A client trusting another CA refuses the server; a plain client gets nothing from TLS.
    let other = Certs::generate();
    let untrusted = Pub::new(&broker, "tls/x", "x").tls(&other).run();
    assert!(
        !untrusted.success(),
        "a foreign CA was accepted: {untrusted:?}"
    );
    let plain = Pub::new(&broker, "tls/x", "x")
        .port(broker.tls_port())
        .timeout(Duration::from_secs(5))
        .run();
    assert!(
        !plain.success(),
        "plain MQTT on the TLS port succeeded: {plain:?}"
    );
    assert!(certs.pem().ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(certs.pem().client_key.contains("PRIVATE KEY"));
    assert!(!certs.ca_der().is_empty());
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    if !tools_or_skip() {
        return;
    }
    let certs = Certs::generate();
    let Some(broker) = Broker::builder()
        .tls(&certs)
        .require_certificate(true)
        .start_or_skip()
    else {
        return;
    };
    let sub = mosquitto_sub(&broker, "mtls/#", 1, 1, 5);
    let with_cert = Pub::new(&broker, "mtls/t", "with cert")
        .tls(&certs)
        .client_cert(&certs)
        .qos(1)
        .run();
    assert!(with_cert.success(), "{with_cert:?}\n{}", broker.log());
    let got = sub.wait();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].text(), "with cert");

    let without = Pub::new(&broker, "mtls/t", "x")
        .tls(&certs)
        .timeout(Duration::from_secs(5))
        .run();
    assert!(
        !without.success(),
        "accepted without a client certificate: {without:?}"
    );
    let other = Certs::generate();
    let foreign = Pub::new(&broker, "mtls/t", "x")
        .tls(&certs)
        .client_cert(&other)
        .timeout(Duration::from_secs(5))
        .run();
    assert!(
        !foreign.success(),
        "accepted a client certificate of another CA: {foreign:?}"
    );
}

#[test]
fn kill_and_restart_with_persistence_keeps_a_retained_message() {
    if !tools_or_skip() {
        return;
    }
    let Some(mut broker) = Broker::builder().persistence(true).start_or_skip() else {
        return;
    };
    let port = broker.port();
    mosquitto_pub(&broker, "persist/t", "survives", 1, true);
    let db = broker.persistence_file().expect("persistence is on");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !db.is_file() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        db.is_file(),
        "no database at {} after 5 s\n{}",
        db.display(),
        broker.log()
    );

    broker.kill();
    assert!(!broker.is_running());
    let refused = Pub::new(&broker, "persist/x", "x").run();
    assert!(!refused.success(), "a killed broker accepted: {refused:?}");

    broker.restart();
    assert!(broker.is_running());
    assert_eq!(broker.port(), port, "restart keeps the port");
    let got = mosquitto_sub(&broker, "persist/#", 1, 1, 5).wait();
    assert_eq!(
        got.len(),
        1,
        "retained message lost over kill + restart\n{}",
        broker.log()
    );
    assert_eq!(got[0].text(), "survives");
    assert!(got[0].retain);
    assert!(
        broker.log().matches(" running").count() >= 2,
        "{}",
        broker.log()
    );
}

#[test]
fn restart_without_persistence_forgets_retained_messages() {
    let Some(mut broker) = broker() else { return };
    mosquitto_pub(&broker, "gone/t", "forgotten", 1, true);
    broker.kill();
    broker.restart();
    let got = mosquitto_sub(&broker, "gone/#", 1, 1, 2).wait();
    assert!(
        got.is_empty(),
        "without persistence nothing survives: {got:?}"
    );
}

#[test]
fn proxy_relays_and_cut_all_breaks_a_subscriber_connection() {
    let Some(broker) = broker() else { return };
    let proxy = Proxy::start(broker.addr());
    let mut sub = Sub::new(&broker, "px/#")
        .port(proxy.port())
        .qos(1)
        .count(2)
        .timeout_secs(15)
        .spawn();
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.open_connections(), 1);

    mosquitto_pub(&broker, "px/t", "before the cut", 1, false);
    assert_eq!(
        sub.wait_for(1, Duration::from_secs(5)).len(),
        1,
        "{}",
        broker.log()
    );

    proxy.cut_all();
    assert_eq!(proxy.cut_connections(), 1);
    // The broker sees the connection die; mosquitto_sub reconnects through the proxy and
    // subscribes again.
    sub.wait_for_subacks(2, Duration::from_secs(10));
    assert_eq!(proxy.connections(), 2, "{}", broker.log());
    let id = sub.client_id().to_owned();
    let log = broker.log();
    assert!(
        log.lines().any(|l| l.contains(&id)
            && (l.contains("closed its connection") || l.contains("Socket error"))),
        "the broker did not see the cut:\n{log}"
    );

    mosquitto_pub(&broker, "px/t", "after the cut", 1, false);
    let got = sub.wait();
    let texts: Vec<String> = got.iter().map(|m| m.text()).collect();
    assert_eq!(texts, ["before the cut", "after the cut"]);
}

#[tokio::test(flavor = "current_thread")]
async fn proxy_works_inside_a_current_thread_tokio_test() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Upstream: an echo server on the test's own runtime, reporting how each connection ended.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let how = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break None,
                        Ok(n) => {
                            if let Err(e) = s.write_all(&buf[..n]).await {
                                break Some(e.kind());
                            }
                        }
                        Err(e) => break Some(e.kind()),
                    }
                };
                let _ = ended_tx.send(how);
            });
        }
    });
    let proxy = Proxy::start(upstream_addr);
    let bounded = Duration::from_secs(5);
    let ping = async |c: &mut tokio::net::TcpStream| {
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(bounded, c.read_exact(&mut buf))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(&buf, b"ping");
    };

    let mut first = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut first).await;
    proxy.cut_all();
    assert_eq!(proxy.cut_connections(), 1);
    let mut buf = [0u8; 4];
    let after = tokio::time::timeout(bounded, first.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(after, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client side is reset: {after:?}"
    );
    let upstream_end = tokio::time::timeout(bounded, ended.recv()).await.unwrap();
    assert_eq!(
        upstream_end,
        Some(Some(std::io::ErrorKind::ConnectionReset)),
        "the upstream side is reset too"
    );

    // Still accepting and relaying.
    let mut second = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut second).await;
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stall_holds_bytes_until_released() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let proxy = Proxy::start(addr);
    let mut c = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.stall(true);
    c.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    let stalled = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
    assert!(stalled.is_err(), "bytes passed a stalled proxy");
    proxy.stall(false);
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("released bytes arrive")
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[test]
fn websockets_listener_answers_an_mqtt_upgrade() {
    let Some(broker) = Broker::builder().websockets(true).start_or_skip() else {
        return;
    };
    let port = broker.ws_port();
    assert!(broker.ws_url().ends_with(&format!(":{port}/mqtt")));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 512];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("a response within 5 s");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}\n{}", broker.log());
    // RFC 6455's example key gives this accept value.
    assert!(text.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{text}");
    assert!(text.contains("sec-websocket-protocol: mqtt"), "{text}");
}

#[test]
fn missing_listeners_and_options_are_reported() {
    let Some(broker) = broker() else { return };
    assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
    assert_eq!(broker.addr().port(), broker.port());
    assert_eq!(broker.tls_port_opt(), None);
    assert!(broker.persistence_file().is_none());
    assert!(broker.config_text().contains("allow_anonymous true"));
    let no_tls = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| broker.tls_port()));
    assert!(no_tls.is_err());
}
