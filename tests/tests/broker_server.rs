//! The broker server (`mqtt_tokio::broker::Broker`, in-process on port 0) against clients no
//! one here wrote (`mosquitto_pub` / `mosquitto_sub`), our tokio client, and raw packets for
//! the exact reason codes.
//!
//! Every test starts its own broker, is bounded in time and asserts exact counts. The
//! mosquitto tools are skipped when missing (a failure under `CI=true`).

use std::future::Future;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_proto::{Connect, ProtocolVersion, QoS, ReasonCode};
use mqtt_session::broker::password::{DEFAULT_ITERATIONS, hash_entry};
use mqtt_tokio::broker::{Broker, BrokerConfig};
use mqtt_tokio::{Client, Options};
use tests::certs::Certs;
use tests::peers::tools_or_skip;
use tests::raw::{Got, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_TIMEOUT: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(10);
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

async fn bounded(body: impl Future<Output = ()>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test ran over its time limit");
}

async fn start(cfg: BrokerConfig) -> Broker {
    Broker::start(cfg).await.expect("the broker starts")
}

fn local() -> BrokerConfig {
    BrokerConfig::new("mqtt://127.0.0.1:0")
}

/// Waits until `cond` holds (polling every 5 ms); false when [`WAIT`] passed first.
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

/// Waits until the broker holds `n` subscriptions.
async fn subscriptions(broker: &Broker, n: usize) {
    assert!(
        eventually(|| broker.stats().subscriptions >= n).await,
        "{n} subscriptions expected: {:?}",
        broker.stats()
    );
}

fn version_arg(v: ProtocolVersion) -> &'static str {
    if v.is_v5() { "mqttv5" } else { "mqttv311" }
}

/// `mosquitto_sub -v` (topic and payload per line) as a child process.
struct MosqSub(std::process::Child);

impl MosqSub {
    fn spawn(broker: &Broker, v: ProtocolVersion, args: &[&str]) -> MosqSub {
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(broker.local_addr().port().to_string())
            .args(["-V", version_arg(v), "-v", "-W", "20"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs");
        MosqSub(child)
    }

    /// Waits for it to exit (it exits after `-C` messages) and returns its output lines.
    async fn lines(self) -> (Option<i32>, Vec<String>, String) {
        let out = tokio::task::spawn_blocking(move || self.0.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        (
            out.status.code(),
            stdout.lines().map(str::to_owned).collect(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Runs `mosquitto_pub` with `args`; the lines of `stdin` (with `-l`) are the messages.
async fn mosq_pub(
    broker: &Broker,
    v: ProtocolVersion,
    args: &[&str],
    stdin: &str,
) -> (Option<i32>, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p"])
        .arg(broker.local_addr().port().to_string())
        .args(["-V", version_arg(v)])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("mosquitto_pub runs");
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn numbered(n: usize, tag: &str) -> (String, Vec<String>) {
    let msgs: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    (msgs.join("\n") + "\n", msgs)
}

/// mosquitto_pub → broker → mosquitto_sub, QoS 0/1/2 at 3.1.1 and 5.0, exact counts in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_qos_0_1_2_at_311_and_5() {
    if !tools_or_skip() {
        return;
    }
    bounded(async {
        let broker = start(local()).await;
        let mut subs = 0;
        for v in [V311, V5] {
            for qos in ["0", "1", "2"] {
                let topic = format!("q/{}/{qos}", version_arg(v));
                let (input, want) = numbered(50, &topic);
                let sub = MosqSub::spawn(&broker, v, &["-t", &topic, "-q", qos, "-C", "50"]);
                subs += 1;
                subscriptions(&broker, subs).await;
                let (code, err) =
                    mosq_pub(&broker, v, &["-t", &topic, "-q", qos, "-l"], &input).await;
                assert_eq!(code, Some(0), "{err}");
                let (code, lines, err) = sub.lines().await;
                assert_eq!(code, Some(0), "{err}");
                let got: Vec<String> = lines
                    .iter()
                    .map(|l| l.strip_prefix(&format!("{topic} ")).unwrap().to_owned())
                    .collect();
                assert_eq!(got, want, "{topic}");
                // The subscription ended with its clean session.
                subs -= 1;
                assert!(eventually(|| broker.stats().subscriptions == subs).await);
            }
        }
        let stats = broker.stats();
        assert_eq!(stats.messages_received, 300);
        assert_eq!(stats.messages_sent, 300);
        broker.stop().await;
    })
    .await;
}

/// Retained messages reach later subscribers; an abrupt drop publishes the will; a persistent
/// session queues QoS 1 messages while its client is away; a shared subscription splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_offline_queue_and_shared_subscriptions() {
    retained_will_offline_queue_shared(local()).await;
}

/// The same over three sibling cores: the mosquitto clients' random ids spread them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_offline_queue_and_shared_subscriptions_over_three_shards() {
    let mut cfg = local();
    cfg.shards = 3;
    retained_will_offline_queue_shared(cfg).await;
}

async fn retained_will_offline_queue_shared(cfg: BrokerConfig) {
    if !tools_or_skip() {
        return;
    }
    bounded(async {
        let broker = start(cfg).await;
        // Retained: set, replace, a wildcard subscriber gets the latest of each topic.
        for (t, m) in [("r/a", "1"), ("r/b", "2"), ("r/a", "3")] {
            let (code, err) = mosq_pub(&broker, V5, &["-t", t, "-m", m, "-r", "-q", "1"], "").await;
            assert_eq!(code, Some(0), "{err}");
        }
        let (_, mut lines, _) = MosqSub::spawn(&broker, V311, &["-t", "r/#", "-C", "2"])
            .lines()
            .await;
        lines.sort();
        assert_eq!(lines, ["r/a 3", "r/b 2"]);
        assert_eq!(broker.stats().retained, 2);

        // Will: a client with a will is killed; the watcher gets the will once.
        assert!(eventually(|| broker.stats().clients_connected == 0).await);
        let watcher = MosqSub::spawn(&broker, V5, &["-t", "will/t", "-C", "1"]);
        subscriptions(&broker, 1).await;
        let mut doomed = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(broker.local_addr().port().to_string())
            .args([
                "-t",
                "x",
                "--will-topic",
                "will/t",
                "--will-payload",
                "gone",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        subscriptions(&broker, 2).await;
        doomed.kill().unwrap();
        doomed.wait().unwrap();
        let (code, lines, err) = watcher.lines().await;
        assert_eq!(
            (code, lines),
            (Some(0), vec!["will/t gone".to_owned()]),
            "{err}"
        );

        // Offline queue: subscribe with a persistent session, leave, 20 QoS 1 messages, return.
        // Earlier clients are gone (their clean sessions' subscriptions with them).
        assert!(eventually(|| broker.stats().clients_connected == 0).await);
        let base = broker.stats().subscriptions;
        let sub = MosqSub::spawn(
            &broker,
            V311,
            &["-t", "off/t", "-q", "1", "-c", "-i", "offline-1", "-C", "1"],
        );
        subscriptions(&broker, base + 1).await;
        let (code, _) = mosq_pub(
            &broker,
            V311,
            &["-t", "off/t", "-q", "1", "-m", "first"],
            "",
        )
        .await;
        assert_eq!(code, Some(0));
        assert_eq!(sub.lines().await.1, ["off/t first"]);
        let (input, want) = numbered(20, "off");
        mosq_pub(&broker, V311, &["-t", "off/t", "-q", "1", "-l"], &input).await;
        assert_eq!(broker.stats().queued_messages, 20);
        let (code, lines, err) = MosqSub::spawn(
            &broker,
            V311,
            &[
                "-t",
                "off/t",
                "-q",
                "1",
                "-c",
                "-i",
                "offline-1",
                "-C",
                "20",
            ],
        )
        .lines()
        .await;
        assert_eq!(code, Some(0), "{err}");
        let got: Vec<String> = lines
            .iter()
            .map(|l| l["off/t ".len()..].to_owned())
            .collect();
        assert_eq!(got, want);

        // Shared subscription: 2 members of one group get 40 messages between them, once each.
        // Earlier clients are gone (their clean sessions' subscriptions with them).
        assert!(eventually(|| broker.stats().clients_connected == 0).await);
        let base = broker.stats().subscriptions;
        let a = MosqSub::spawn(&broker, V5, &["-t", "$share/g/sh/t", "-q", "1", "-W", "3"]);
        let b = MosqSub::spawn(&broker, V5, &["-t", "$share/g/sh/t", "-q", "1", "-W", "3"]);
        subscriptions(&broker, base + 2).await;
        let (input, want) = numbered(40, "sh");
        mosq_pub(&broker, V5, &["-t", "sh/t", "-q", "1", "-l"], &input).await;
        let (_, la, _) = a.lines().await;
        let (_, lb, _) = b.lines().await;
        assert!(!la.is_empty() && !lb.is_empty(), "{la:?} {lb:?}");
        let mut all: Vec<String> = la
            .iter()
            .chain(&lb)
            .map(|l| l["sh/t ".len()..].to_owned())
            .collect();
        all.sort();
        let mut want = want;
        want.sort();
        assert_eq!(all, want);
        broker.stop().await;
    })
    .await;
}

/// A broker configuration that refuses anonymous clients: users alice (password "wonder")
/// and bob ("builder") in a password file written with our `hash_entry` (the format
/// mosquitto_passwd writes), and `acl` as its mosquitto ACL file, both in `dir`.
fn with_users(dir: &std::path::Path, acl: &str) -> BrokerConfig {
    let pw = dir.join("passwd");
    let mut text = String::new();
    for (u, p) in [("alice", "wonder"), ("bob", "builder")] {
        text += &hash_entry(u, p.as_bytes(), b"salt-salt-12", DEFAULT_ITERATIONS).unwrap();
        text.push('\n');
    }
    std::fs::write(&pw, text).unwrap();
    let acl_file = dir.join("acl");
    std::fs::write(&acl_file, acl).unwrap();
    let mut cfg = local();
    cfg.allow_anonymous = false;
    cfg.password_file = Some(pw);
    cfg.acl_file = Some(acl_file);
    cfg
}

/// A password file (written with our `hash_entry`, the format mosquitto_passwd writes) and a
/// mosquitto ACL file: a bad password is refused with the right code, denied subscriptions get
/// 0x80 / 0x87, a denied publish gets PUBACK 0x87 at 5.0 and is dropped silently at 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_acl() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let acl =
            "user alice\ntopic readwrite a/#\ntopic read pub/#\nuser bob\ntopic readwrite #\n";
        let broker = start(with_users(dir.path(), acl)).await;

        for (v, bad, anon) in [
            (
                V311,
                ReasonCode::BadUserNameOrPassword,
                ReasonCode::NotAuthorized,
            ),
            (
                V5,
                ReasonCode::BadUserNameOrPassword,
                ReasonCode::NotAuthorized,
            ),
        ] {
            for (user, pass, want) in [
                (Some("alice"), &b"wrong"[..], bad),
                (Some("nobody"), b"wonder", bad),
                (None, b"", anon),
                (Some("alice"), b"wonder", ReasonCode::Success),
            ] {
                let mut raw = Raw::open(broker.local_addr(), v).await;
                let mut c = Connect::new(v, "pw", 60);
                c.username = user;
                c.password = user.map(|_| pass);
                match raw.connect_with(c).await {
                    Some(Got::ConnAck { code, .. }) => assert_eq!(code, want, "{v:?} {user:?}"),
                    other => panic!("{v:?} {user:?}: {other:?}"),
                }
            }
        }

        for v in [V311, V5] {
            let login = |id: &'static str, user: &'static str, pass: &'static [u8]| {
                let broker = &broker;
                async move {
                    let mut raw = Raw::open(broker.local_addr(), v).await;
                    let mut c = Connect::new(v, id, 60);
                    c.username = Some(user);
                    c.password = Some(pass);
                    let got = raw.connect_with(c).await;
                    assert!(matches!(
                        got,
                        Some(Got::ConnAck {
                            code: ReasonCode::Success,
                            ..
                        })
                    ));
                    raw
                }
            };
            let mut alice = login("alice-1", "alice", b"wonder").await;
            let mut bob = login("bob-1", "bob", b"builder").await;
            let denied = if v.is_v5() {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::UnspecifiedError
            };
            assert_eq!(
                alice.subscribe("secret/#", QoS::AtLeastOnce).await,
                [denied]
            );
            assert_eq!(
                alice.subscribe("a/#", QoS::AtLeastOnce).await,
                [ReasonCode::GrantedQoS1]
            );
            assert_eq!(
                bob.subscribe("#", QoS::AtLeastOnce).await,
                [ReasonCode::GrantedQoS1]
            );
            // Alice may not write pub/x: PUBACK 0x87 at 5.0, PUBACK success at 3.1.1; bob
            // gets nothing either way.
            alice.publish("pub/x", b"no", QoS::AtLeastOnce, 7).await;
            match alice.recv().await {
                Some(Got::PubAck(_, code)) => assert_eq!(
                    code,
                    if v.is_v5() {
                        ReasonCode::NotAuthorized
                    } else {
                        ReasonCode::Success
                    }
                ),
                other => panic!("{other:?}"),
            }
            // Then an allowed one, which bob and alice both get: the denied one never came.
            alice.publish("a/ok", b"yes", QoS::AtLeastOnce, 8).await;
            assert_eq!(
                alice.recv().await,
                Some(Got::PubAck(8, ReasonCode::Success))
            );
            match bob.recv().await {
                Some(Got::Publish { topic, payload, .. }) => {
                    assert_eq!((topic.as_str(), &payload[..]), ("a/ok", &b"yes"[..]))
                }
                other => panic!("{other:?}"),
            }
            match alice.recv().await {
                Some(Got::Publish { topic, payload, .. }) => {
                    assert_eq!((topic.as_str(), &payload[..]), ("a/ok", &b"yes"[..]))
                }
                other => panic!("{other:?}"),
            }
            // Bob publishes on pub/x (allowed for him); alice may read it.
            assert_eq!(
                alice.subscribe("pub/#", QoS::AtMostOnce).await,
                [ReasonCode::Success]
            );
            bob.publish("pub/x", b"news", QoS::AtMostOnce, 0).await;
            match alice.recv().await {
                Some(Got::Publish { topic, payload, .. }) => {
                    assert_eq!((topic.as_str(), &payload[..]), ("pub/x", &b"news"[..]))
                }
                other => panic!("{other:?}"),
            }
        }
        broker.stop().await;
    })
    .await;
}

/// `stop()` sends DISCONNECT 0x8B to MQTT 5 clients and closes 3.1.1 ones; our tokio client
/// works through TCP, TLS, mutual TLS and WebSocket listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_over_tcp_tls_mtls_ws_and_graceful_stop() {
    bounded(async {
        let certs = Certs::generate();
        let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
        cfg.listen = vec![
            "mqtt://127.0.0.1:0".into(),
            "mqtts://127.0.0.1:0".into(),
            "ws://127.0.0.1:0/mqtt".into(),
        ];
        cfg.tls.cert_file = Some(certs.server_cert());
        cfg.tls.key_file = Some(certs.server_key());
        let broker = start(cfg).await;
        let mut mcfg = BrokerConfig::new("mqtts://127.0.0.1:0");
        mcfg.tls.cert_file = Some(certs.server_cert());
        mcfg.tls.key_file = Some(certs.server_key());
        mcfg.tls.client_ca_file = Some(certs.ca_pem());
        mcfg.tls.require_certificate = true;
        let mtls = start(mcfg).await;

        let urls = broker.urls();
        assert_eq!(urls.len(), 3);
        let mut clients = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let mut opts = Options::new(url).unwrap().client_id(format!("c{i}"));
            if url.starts_with("mqtts") {
                opts = opts.ca_file(certs.ca_pem());
            }
            clients.push(Client::spawn(opts).unwrap());
        }
        let mtls_url = mtls.urls()[0].clone();
        let opts = Options::new(&mtls_url)
            .unwrap()
            .client_id("m")
            .ca_file(certs.ca_pem())
            .client_cert(certs.client_cert(), certs.client_key());
        let m = Client::spawn(opts).unwrap();
        for c in clients.iter().chain([&m]) {
            c.wait_connected(WAIT).await.unwrap();
        }
        // Each publishes QoS 1 to a topic every other one (on the same broker) subscribes to.
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for c in &clients {
            let got = got.clone();
            c.route_with("all/#", QoS::AtLeastOnce, move |_m: mqtt_tokio::Message| {
                let got = got.clone();
                async move {
                    got.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .unwrap();
        }
        subscriptions(&broker, 3).await;
        for (i, c) in clients.iter().enumerate() {
            c.publish(&format!("all/{i}"), "x", QoS::AtLeastOnce, false)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        assert!(eventually(|| got.load(std::sync::atomic::Ordering::SeqCst) == 9).await);
        m.publish("m/t", "x", QoS::AtLeastOnce, false)
            .await
            .unwrap()
            .await
            .unwrap();

        // mTLS without a client certificate: refused in the handshake.
        let opts = Options::new(&mtls_url)
            .unwrap()
            .client_id("m2")
            .ca_file(certs.ca_pem());
        let without = Client::spawn(opts).unwrap();
        assert!(
            without
                .wait_connected(Duration::from_secs(2))
                .await
                .is_err()
        );
        without.disconnect().await;

        // Graceful stop: a raw 5.0 client gets DISCONNECT 0x8B, a 3.1.1 one a clean close.
        let mut v5 = Raw::connect(broker.local_addr(), V5, "raw5").await;
        let mut v3 = Raw::connect(broker.local_addr(), V311, "raw3").await;
        for c in clients {
            c.disconnect().await;
        }
        m.disconnect().await;
        broker.stop().await;
        match v5.recv().await {
            Some(Got::Disconnect(code)) => assert_eq!(code, ReasonCode::ServerShuttingDown),
            other => panic!("{other:?}"),
        }
        assert!(v5.recv().await.is_none());
        assert!(v3.recv().await.is_none());
        mtls.stop().await;
    })
    .await;
}

/// A subscriber that never reads costs at most its queue limit: what does not fit is dropped
/// and counted (also in /metrics), and another subscriber gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_hits_its_limit_and_nobody_else_notices() {
    bounded(async {
        let mut cfg = local();
        cfg.max_queued_messages = LIMIT;
        cfg.http_listen = Some("127.0.0.1:0".into());
        let broker = start(cfg).await;
        // The stalled one: subscribes at QoS 1, then never reads nor acks.
        let mut stalled = Raw::connect(broker.local_addr(), V311, "stalled").await;
        assert_eq!(
            stalled.subscribe("flood/#", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        let mut good = Raw::connect(broker.local_addr(), V311, "good").await;
        assert_eq!(
            good.subscribe("flood/#", QoS::AtMostOnce).await,
            [ReasonCode::Success]
        );
        let mut publisher = Raw::connect(broker.local_addr(), V311, "pub").await;
        let payload = vec![7u8; 1024];
        const N: usize = 500;
        const BATCH: usize = 20;
        const LIMIT: usize = 50;
        let mut received = 0;
        for batch in 0..N / BATCH {
            for i in 0..BATCH {
                let id = (batch * BATCH + i + 1) as u16;
                publisher
                    .publish("flood/t", &payload, QoS::AtLeastOnce, id)
                    .await;
            }
            for _ in 0..BATCH {
                assert!(matches!(publisher.recv().await, Some(Got::PubAck(..))));
            }
            while received < (batch + 1) * BATCH {
                match good.recv().await {
                    Some(Got::Publish { payload, .. }) => {
                        assert_eq!(payload.len(), 1024);
                        received += 1;
                    }
                    other => panic!("after {received}: {other:?}"),
                }
            }
        }
        assert_eq!(received, N);
        let dropped = (N - LIMIT) as u64;
        assert!(
            eventually(|| broker.stats().dropped.session_full == dropped).await,
            "{:?}",
            broker.stats()
        );
        assert_eq!(broker.stats().queued_messages, LIMIT);
        // The drops show in /metrics.
        let mut http = TcpStream::connect(broker.http_addr().unwrap())
            .await
            .unwrap();
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        http.read_to_string(&mut body).await.unwrap();
        assert!(
            body.contains(&format!(
                "mqtt_broker_messages_dropped_total{{reason=\"queue_full\"}} {dropped}"
            )),
            "{body}"
        );
        drop(stalled.s);
        broker.stop().await;
    })
    .await;
}

/// Malformed packets close that connection with 0x81 (5.0) or without a word (3.1.1), and the
/// others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_their_connection() {
    bounded(async {
        let broker = start(local()).await;
        let mut good = Raw::connect(broker.local_addr(), V5, "good").await;
        good.subscribe("t", QoS::AtMostOnce).await;
        // A bad packet type after CONNECT at 5.0: DISCONNECT 0x81, then the close.
        let mut bad = Raw::connect(broker.local_addr(), V5, "bad5").await;
        bad.s.write_all(&[0xF1, 0x00]).await.unwrap();
        match bad.recv().await {
            Some(Got::Disconnect(code)) => assert_eq!(code, ReasonCode::MalformedPacket),
            other => panic!("{other:?}"),
        }
        assert!(bad.recv().await.is_none());
        // Garbage instead of CONNECT: closed.
        let mut junk = Raw::open(broker.local_addr(), V311).await;
        junk.s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(junk.recv().await.is_none());
        // A half-open connection that never sends CONNECT is closed at the connect timeout
        // (not waited for here); the good one still works.
        let _half = Raw::open(broker.local_addr(), V311).await;
        let mut p = Raw::connect(broker.local_addr(), V5, "p").await;
        p.publish("t", b"still", QoS::AtMostOnce, 0).await;
        match good.recv().await {
            Some(Got::Publish { payload, .. }) => assert_eq!(payload, b"still"),
            other => panic!("{other:?}"),
        }
        broker.stop().await;
    })
    .await;
}

/// With `use_identity_as_username`, the client certificate's common name is the user name the
/// ACL sees: the CN's topics are allowed, others are not (SUBACK 0x87), whatever user name
/// the CONNECT carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_common_name_is_the_acl_user() {
    bounded(async {
        let certs = Certs::generate();
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(
            &acl,
            format!(
                "user {}\ntopic readwrite cn/#\nuser impostor\ntopic readwrite #\n",
                tests::certs::CLIENT_NAME
            ),
        )
        .unwrap();
        let mut cfg = BrokerConfig::new("mqtts://127.0.0.1:0");
        cfg.tls.cert_file = Some(certs.server_cert());
        cfg.tls.key_file = Some(certs.server_key());
        cfg.tls.client_ca_file = Some(certs.ca_pem());
        cfg.tls.require_certificate = true;
        cfg.tls.use_identity_as_username = true;
        cfg.acl_file = Some(acl);
        let broker = start(cfg).await;
        let opts = Options::new(&broker.urls()[0])
            .unwrap()
            .client_id("cn")
            .version(V5)
            .credentials("impostor", "whatever")
            .ca_file(certs.ca_pem())
            .client_cert(certs.client_cert(), certs.client_key());
        let c = Client::spawn(opts).unwrap();
        c.wait_connected(WAIT).await.unwrap();
        assert_eq!(
            c.subscribe("cn/t", QoS::AtLeastOnce).await.unwrap(),
            ReasonCode::GrantedQoS1
        );
        assert_eq!(
            c.subscribe("other/t", QoS::AtLeastOnce).await.unwrap(),
            ReasonCode::NotAuthorized
        );
        c.disconnect().await;
        // The will is authorized for the certificate's name too, not the claimed one.
        let opts = Options::new(&broker.urls()[0])
            .unwrap()
            .client_id("cn-will")
            .version(V5)
            .credentials("impostor", "whatever")
            .will("other/will", "bye", QoS::AtLeastOnce, false)
            .ca_file(certs.ca_pem())
            .client_cert(certs.client_cert(), certs.client_key());
        let w = Client::spawn(opts).unwrap();
        let refused = w.wait_connected(WAIT).await;
        assert!(
            matches!(refused, Err(mqtt_tokio::ConnectError::Refused(_))),
            "{refused:?}"
        );
        drop(w);
        broker.stop().await;
    })
    .await;
}

/// `sys_interval` publishes `$SYS/broker/...` counters that a subscriber to `$SYS/#` gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published() {
    bounded(async {
        let mut cfg = local();
        cfg.sys_interval = 1;
        let broker = start(cfg).await;
        let mut raw = Raw::connect(broker.local_addr(), V311, "sys").await;
        assert_eq!(
            raw.subscribe("$SYS/broker/#", QoS::AtMostOnce).await,
            [ReasonCode::Success]
        );
        let mut topics = std::collections::BTreeSet::new();
        while topics.len() < 3 {
            match raw.recv().await {
                Some(Got::Publish { topic, .. }) => {
                    assert!(topic.starts_with("$SYS/broker/"), "{topic}");
                    topics.insert(topic);
                }
                other => panic!("{other:?} after {topics:?}"),
            }
        }
        broker.stop().await;
    })
    .await;
}

/// A publish larger than the read-ahead buffer (300 KB, under the 1 MB packet limit) goes
/// through whole, and one over the limit closes only its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_packets_pass_and_oversized_ones_are_refused() {
    bounded(async {
        let broker = start(local()).await;
        let mut sub = Raw::connect(broker.local_addr(), V5, "big-sub").await;
        assert_eq!(
            sub.subscribe("big", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        let mut p = Raw::connect(broker.local_addr(), V5, "big-pub").await;
        let payload = vec![42u8; 300_000];
        p.publish("big", &payload, QoS::AtLeastOnce, 1).await;
        assert_eq!(p.recv().await, Some(Got::PubAck(1, ReasonCode::Success)));
        match sub.recv().await {
            Some(Got::Publish { payload: got, .. }) => assert_eq!(got, payload),
            other => panic!("{other:?}"),
        }
        let huge = vec![1u8; 1_100_000];
        p.publish("big", &huge, QoS::AtMostOnce, 0).await;
        assert_eq!(
            p.recv().await,
            Some(Got::Disconnect(ReasonCode::PacketTooLarge))
        );
        sub.publish("big", b"after", QoS::AtMostOnce, 0).await;
        assert!(
            matches!(sub.recv().await, Some(Got::Publish { payload, .. }) if payload == b"after")
        );
        broker.stop().await;
    })
    .await;
}

/// Manual acks with `Message::ack`: what the application has not acknowledged stays in flight
/// at the broker (and goes out again to the persistent session), what it acknowledged is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acknowledged_by_the_application_with_message_ack() {
    bounded(async {
        let broker = start(local()).await;
        let url = broker.urls()[0].clone();
        let opts = Options::new(&url)
            .unwrap()
            .client_id("manual")
            .version(ProtocolVersion::V5)
            .persistent_session(Duration::from_secs(600))
            .ack_mode(mqtt_tokio::AckMode::Manual);
        let sub = Client::spawn(opts).unwrap();
        sub.wait_connected(WAIT).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        sub.route("manual/#", move |m: mqtt_tokio::Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(m);
            }
        })
        .unwrap();
        subscriptions(&broker, 1).await;
        let p = Client::spawn(Options::new(&url).unwrap().client_id("manual-pub")).unwrap();
        for i in 0..3 {
            p.publish("manual/t", format!("{i}"), QoS::AtLeastOnce, false)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                tokio::time::timeout(WAIT, rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            got.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
            [b"0", b"1", b"2"]
        );
        got[0].ack();
        got[1].ack();
        // Two acknowledged; the third is still the broker's, in flight.
        assert!(
            eventually(|| broker.stats().queued_messages == 1).await,
            "{:?}",
            broker.stats()
        );
        got[2].ack_with(ReasonCode::Success);
        assert!(
            eventually(|| broker.stats().queued_messages == 0).await,
            "{:?}",
            broker.stats()
        );
        sub.disconnect().await;
        p.disconnect().await;
        broker.stop().await;
    })
    .await;
}

/// The test's extended method `REVERSE`: the broker sends a nonce, the client answers with it
/// reversed. Without a method, the user `hooked` is accepted and anyone else is left to the
/// configuration.
struct Reverse {
    asked: std::sync::atomic::AtomicUsize,
}

impl mqtt_tokio::broker::Authenticate for Reverse {
    fn authenticate<'a>(
        &'a self,
        r: &'a mut mqtt_tokio::broker::AuthRequest,
    ) -> mqtt_tokio::broker::AuthFuture<'a> {
        use mqtt_tokio::broker::{Answer, AuthStep};
        Box::pin(async move {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // A slow answer (an HTTP call, say) only delays this connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            match r.method.as_deref() {
                None if r.username.as_deref() == Some("hooked") => Some(Answer::Accept),
                Some("REVERSE") => match r.state.take() {
                    // A CONNECT, or a connected client that starts again.
                    None => {
                        assert_ne!(r.step, AuthStep::Continue, "{r:?}");
                        let nonce = format!("nonce-{}-{:?}", r.client_id, r.step).into_bytes();
                        r.state = Some(Box::new(nonce.clone()));
                        Some(Answer::Continue(nonce))
                    }
                    Some(nonce) => {
                        let nonce = nonce.downcast::<Vec<u8>>().expect("our state");
                        let want: Vec<u8> = nonce.iter().rev().copied().collect();
                        Some(if r.data.as_deref() == Some(&want[..]) {
                            Answer::Complete(format!("welcome {:?}", r.step).into_bytes())
                        } else {
                            Answer::Refuse(ReasonCode::NotAuthorized)
                        })
                    }
                },
                _ => None,
            }
        })
    }
}

/// Sends AUTH with the `REVERSE` method and `data`.
async fn send_auth(raw: &mut Raw, code: ReasonCode, data: Option<&[u8]>) {
    use mqtt_proto::{Auth, Packet, Properties, Property};
    let mut props = vec![Property::AuthenticationMethod("REVERSE")];
    props.extend(data.map(Property::AuthenticationData));
    raw.send(&Packet::Auth(Auth::new(code, Properties::new(&props))))
        .await;
}

/// `max_publish_rate`: a publisher sending 40 QoS 1 messages as fast as it can at 20 a second
/// gets a second's worth at once and the rest at the rate: all 40 arrive, each once, and the
/// last is acknowledged no sooner than about a second in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_past_max_publish_rate_is_slowed_and_loses_nothing() {
    bounded(async {
        let mut cfg = local();
        cfg.max_publish_rate = 20;
        let broker = start(cfg).await;
        let url = broker.urls()[0].clone();
        let sub = Client::spawn(Options::new(&url).unwrap().client_id("slow-sub")).unwrap();
        sub.wait_connected(WAIT).await.unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        sub.route_with("rate/#", QoS::AtLeastOnce, move |m: mqtt_tokio::Message| {
            let g = g.clone();
            async move { g.lock().unwrap().push(m.payload.to_vec()) }
        })
        .unwrap();
        sub.subscribe("rate/#", QoS::AtLeastOnce).await.unwrap();
        let publisher = Client::spawn(Options::new(&url).unwrap().client_id("fast-pub")).unwrap();
        publisher.wait_connected(WAIT).await.unwrap();
        let started = std::time::Instant::now();
        let mut deliveries = Vec::new();
        for i in 0..40u8 {
            let d = publisher
                .publish("rate/x", [i], QoS::AtLeastOnce, false)
                .await
                .unwrap();
            deliveries.push(d);
        }
        for d in deliveries {
            d.await.unwrap();
        }
        let took = started.elapsed();
        assert!(eventually(|| got.lock().unwrap().len() == 40).await);
        let mut payloads: Vec<u8> = got.lock().unwrap().iter().map(|p| p[0]).collect();
        payloads.sort_unstable();
        assert_eq!(payloads, (0..40).collect::<Vec<u8>>());
        // 20 at once, then 20 more at 20 a second.
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(broker.stats().publishers_throttled >= 1);
        broker.stop().await;
    })
    .await;
}

/// SCRAM-SHA-512's client side (RFC 5802): the client-final message for `server_first` and
/// the server signature it must then get.
fn scram_client(password: &str, first_bare: &str, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha512};
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let first = std::str::from_utf8(server_first).unwrap();
    let f: Vec<&str> = first.split(',').collect();
    let nonce = f[0].strip_prefix("r=").unwrap();
    let salt = B64.decode(f[1].strip_prefix("s=").unwrap()).unwrap();
    let iterations: u32 = f[2].strip_prefix("i=").unwrap().parse().unwrap();
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password.as_bytes(), &salt, iterations);
    let without = format!("c=biws,r={nonce}");
    let auth = format!("{first_bare},{first},{without}");
    let client_key = mac(&salted, b"Client Key");
    let signature = mac(&Sha512::digest(&client_key), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let verifier = mac(&mac(&salted, b"Server Key"), auth.as_bytes());
    (
        format!("{without},p={}", B64.encode(proof)).into_bytes(),
        format!("v={}", B64.encode(verifier)).into_bytes(),
    )
}

async fn send_scram(raw: &mut Raw, code: ReasonCode, data: &[u8]) {
    use mqtt_proto::{Auth, Packet, Properties, Property};
    let props = [
        Property::AuthenticationMethod("SCRAM-SHA-512"),
        Property::AuthenticationData(data),
    ];
    raw.send(&Packet::Auth(Auth::new(code, Properties::new(&props))))
        .await;
}

/// A SCRAM-SHA-512 re-authentication as `user`: what the broker answers the client-final
/// message with, and the signature a success must carry.
async fn reauthenticate(raw: &mut Raw, user: &str, password: &str) -> (Option<Got>, Vec<u8>) {
    let bare = format!("n={user},r=again-{user}");
    send_scram(
        raw,
        ReasonCode::ReAuthenticate,
        format!("n,,{bare}").as_bytes(),
    )
    .await;
    let server_first = match raw.recv().await {
        Some(Got::Auth(ReasonCode::ContinueAuthentication, Some(d))) => d,
        other => panic!("no server-first: {other:?}"),
    };
    let (last, verifier) = scram_client(password, &bare, &server_first);
    send_scram(raw, ReasonCode::ContinueAuthentication, &last).await;
    (raw.recv().await, verifier)
}

/// The built-in SCRAM-SHA-512 over the password file: the client proves its password without
/// sending it, the broker proves it holds the entry, the ACL sees the proved user; a wrong
/// password, and a user the file does not have, are refused with 0x87 after a first answer
/// of the same shape; re-authentication runs the exchange again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_over_the_password_file() {
    use mqtt_proto::{Properties, Property};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let broker = start(with_users(
            dir.path(),
            "user alice\ntopic readwrite alice/#\n",
        ))
        .await;
        let addr = broker.local_addr();

        // Returns the raw connection, CONNACK's code and data, and the expected signature.
        let exchange = |user: &'static str, password: &'static str, id: &'static str| async move {
            let bare = format!("n={user},r=client-nonce-{id}");
            let first = format!("n,,{bare}");
            let props = [
                Property::AuthenticationMethod("SCRAM-SHA-512"),
                Property::AuthenticationData(first.as_bytes()),
            ];
            let mut raw = Raw::open(addr, V5).await;
            let connect = Connect {
                properties: Properties::new(&props),
                ..Connect::new(V5, id, 60)
            };
            let server_first = match raw.connect_with(connect).await {
                Some(Got::Auth(ReasonCode::ContinueAuthentication, Some(d))) => d,
                other => panic!("no server-first: {other:?}"),
            };
            let prefix = format!("r=client-nonce-{id}");
            assert!(server_first.starts_with(prefix.as_bytes()));
            assert!(server_first.ends_with(format!(",i={DEFAULT_ITERATIONS}").as_bytes()));
            let (last, verifier) = scram_client(password, &bare, &server_first);
            send_scram(&mut raw, ReasonCode::ContinueAuthentication, &last).await;
            let got = raw.recv().await;
            (raw, got, verifier)
        };

        let (mut ok, got, verifier) = exchange("alice", "wonder", "s1").await;
        assert_eq!(
            got,
            Some(Got::ConnAck {
                present: false,
                code: ReasonCode::Success,
                auth_data: Some(verifier),
            })
        );
        // The ACL sees the proved user (the CONNECT named none).
        assert_eq!(
            ok.subscribe("alice/#", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        assert_eq!(
            ok.subscribe("bob/#", QoS::AtLeastOnce).await,
            [ReasonCode::NotAuthorized]
        );

        // Re-authentication: the exchange again, ending in AUTH 0x00 with the signature.
        let (got, verifier) = reauthenticate(&mut ok, "alice", "wonder").await;
        assert_eq!(got, Some(Got::Auth(ReasonCode::Success, Some(verifier))));
        // Re-authenticating as another user, even with its password, ends the connection.
        let (got, _) = reauthenticate(&mut ok, "bob", "builder").await;
        assert_eq!(got, Some(Got::Disconnect(ReasonCode::NotAuthorized)));

        for (user, password, id) in [("alice", "wrong", "s2"), ("mallory", "wonder", "s3")] {
            let (_raw, got, _) = exchange(user, password, id).await;
            assert!(
                matches!(
                    got,
                    Some(Got::ConnAck {
                        code: ReasonCode::NotAuthorized,
                        ..
                    })
                ),
                "{user}: {got:?}"
            );
        }
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_hooks_authenticate_with_an_extended_exchange_and_authorize() {
    use mqtt_proto::{Properties, Property};
    use mqtt_tokio::broker::{Action, Hooks};
    use std::sync::Arc;
    bounded(async {
        let hook = Arc::new(Reverse {
            asked: Default::default(),
        });
        let hooks = Hooks {
            authenticate: Some(hook.clone()),
            authorize: Some(Arc::new(|_, topic: &str, action| {
                !(action == Action::Subscribe && topic.starts_with("private/")
                    || action == Action::Publish && topic.starts_with("ro/"))
            })),
        };
        let cfg = BrokerConfig {
            allow_anonymous: false,
            ..local()
        };
        let broker = Broker::start_with(cfg, hooks).await.expect("starts");
        let addr = broker.local_addr();
        let method = [Property::AuthenticationMethod("REVERSE")];
        let reversed = |nonce: &[u8]| nonce.iter().rev().copied().collect::<Vec<u8>>();

        // The exchange: a nonce in AUTH 0x18, the answer, CONNACK with the server's data.
        let mut a = Raw::open(addr, V5).await;
        let connect = Connect {
            properties: Properties::new(&method),
            ..Connect::new(V5, "ext", 60)
        };
        let nonce = match a.connect_with(connect).await {
            Some(Got::Auth(ReasonCode::ContinueAuthentication, Some(n))) => n,
            other => panic!("no challenge: {other:?}"),
        };
        assert_eq!(nonce, b"nonce-ext-Connect");
        send_auth(&mut a, ReasonCode::ContinueAuthentication, Some(&reversed(&nonce))).await;
        assert_eq!(
            a.recv().await,
            Some(Got::ConnAck {
                present: false,
                code: ReasonCode::Success,
                auth_data: Some(b"welcome Continue".to_vec()),
            })
        );
        // Re-authentication: a new round, ended by AUTH 0x00 with the server's data.
        send_auth(&mut a, ReasonCode::ReAuthenticate, None).await;
        let nonce = match a.recv().await {
            Some(Got::Auth(ReasonCode::ContinueAuthentication, Some(n))) => n,
            other => panic!("no challenge: {other:?}"),
        };
        assert_eq!(nonce, b"nonce-ext-Reauthenticate");
        send_auth(&mut a, ReasonCode::ContinueAuthentication, Some(&reversed(&nonce))).await;
        assert_eq!(
            a.recv().await,
            Some(Got::Auth(
                ReasonCode::Success,
                Some(b"welcome Reauthenticate".to_vec())
            ))
        );

        // A wrong answer is refused.
        let mut b = Raw::open(addr, V5).await;
        let connect = Connect {
            properties: Properties::new(&method),
            ..Connect::new(V5, "wrong", 60)
        };
        assert!(matches!(
            b.connect_with(connect).await,
            Some(Got::Auth(ReasonCode::ContinueAuthentication, Some(_)))
        ));
        send_auth(&mut b, ReasonCode::ContinueAuthentication, Some(b"guess")).await;
        assert!(matches!(
            b.recv().await,
            Some(Got::ConnAck {
                code: ReasonCode::NotAuthorized,
                ..
            })
        ));

        // The hook leaves these to the configuration: anonymous clients are refused, and an
        // unknown method is 0x8C.
        for (id, props, want) in [
            ("anon", &[][..], ReasonCode::NotAuthorized),
            (
                "scram",
                &[Property::AuthenticationMethod("SCRAM-SHA-256")][..],
                ReasonCode::BadAuthenticationMethod,
            ),
        ] {
            let mut c = Raw::open(addr, V5).await;
            let connect = Connect {
                properties: Properties::new(props),
                ..Connect::new(V5, id, 60)
            };
            match c.connect_with(connect).await {
                Some(Got::ConnAck { code, .. }) => assert_eq!(code, want, "{id}"),
                other => panic!("{id}: {other:?}"),
            }
        }

        // The user the hook accepts, and the authorization hook's decisions.
        let mut d = Raw::open(addr, V5).await;
        let connect = Connect {
            username: Some("hooked"),
            ..Connect::new(V5, "plain", 60)
        };
        assert!(matches!(
            d.connect_with(connect).await,
            Some(Got::ConnAck {
                code: ReasonCode::Success,
                auth_data: None,
                ..
            })
        ));
        assert_eq!(
            d.subscribe("private/x", QoS::AtLeastOnce).await,
            [ReasonCode::NotAuthorized]
        );
        assert_eq!(
            d.subscribe("open/#", QoS::AtLeastOnce).await,
            [ReasonCode::GrantedQoS1]
        );
        d.publish("ro/x", b"no", QoS::AtLeastOnce, 7).await;
        assert_eq!(
            d.recv().await,
            Some(Got::PubAck(7, ReasonCode::NotAuthorized))
        );
        d.publish("open/a", b"yes", QoS::AtLeastOnce, 8).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(d.recv().await);
        }
        assert!(got.contains(&Some(Got::PubAck(8, ReasonCode::Success))), "{got:?}");
        assert!(
            got.iter().any(|g| matches!(g,
                Some(Got::Publish { topic, payload, .. }) if topic == "open/a" && payload == b"yes")),
            "{got:?}"
        );
        // CONNECT, AUTH, re-auth AUTH 0x19, AUTH; CONNECT, AUTH; anon, scram; hooked.
        assert_eq!(hook.asked.load(std::sync::atomic::Ordering::SeqCst), 9);
        broker.stop().await;
    })
    .await;
}

/// Sibling cores: publishers and subscribers on different siblings (their ids spread them),
/// every message to every subscriber once and in each publisher's order, a share group served
/// once per message, and a takeover that meets its session's sibling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_deliver_across_siblings_in_order_and_takeovers_meet_their_session() {
    bounded(async {
        // The ids used here fall on both siblings, subscribers and publishers alike.
        let two = mqtt_session::broker::shard::Shard { index: 0, count: 2 };
        for who in ["sub", "pub"] {
            let on: std::collections::BTreeSet<u16> =
                (0..4).map(|n| two.owner(&format!("{who}-{n}"))).collect();
            assert_eq!(on.len(), 2, "{who}s on both siblings");
        }
        let mut cfg = local();
        cfg.shards = 2;
        let broker = start(cfg).await;
        let url = broker.urls()[0].clone();
        type Got = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
        let mut subs = Vec::new();
        let mut gots: Vec<Got> = Vec::new();
        for (n, filter) in [
            (0, "sh/#"),
            (1, "sh/#"),
            (2, "$share/g/sh/#"),
            (3, "$share/g/sh/#"),
        ] {
            // Recorded from the event stream, in arrival order (handlers run concurrently).
            let options = Options::new(&url).unwrap().client_id(format!("sub-{n}"));
            let (c, mut driver) = Client::new(options).unwrap();
            let mut events = driver.events();
            tokio::spawn(driver.run());
            c.wait_connected(WAIT).await.unwrap();
            let got: Got = Default::default();
            let g = got.clone();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    if let mqtt_tokio::Event::Message(m) = e {
                        let text = String::from_utf8(m.payload.to_vec()).unwrap();
                        g.lock().unwrap().push(text);
                    }
                }
            });
            c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            subs.push(c);
            gots.push(got);
        }
        subscriptions(&broker, 4).await;
        let mut pubs = Vec::new();
        for n in 0..4 {
            let p =
                Client::spawn(Options::new(&url).unwrap().client_id(format!("pub-{n}"))).unwrap();
            p.wait_connected(WAIT).await.unwrap();
            pubs.push(p);
        }
        let mut acks = Vec::new();
        for i in 0..100 {
            for (n, p) in pubs.iter().enumerate() {
                let d = p
                    .publish(
                        &format!("sh/{n}"),
                        format!("{n}:{i}"),
                        QoS::AtLeastOnce,
                        false,
                    )
                    .await
                    .unwrap();
                acks.push(d);
            }
        }
        for d in acks {
            d.await.unwrap();
        }
        let total = |g: &Got| g.lock().unwrap().len();
        assert!(
            eventually(|| total(&gots[0]) == 400
                && total(&gots[1]) == 400
                && total(&gots[2]) + total(&gots[3]) == 400)
            .await,
            "{} {} {} {}",
            total(&gots[0]),
            total(&gots[1]),
            total(&gots[2]),
            total(&gots[3])
        );
        for g in &gots[..2] {
            let got = g.lock().unwrap();
            for n in 0..4 {
                let mine: Vec<&String> = got
                    .iter()
                    .filter(|m| m.starts_with(&format!("{n}:")))
                    .collect();
                let want: Vec<String> = (0..100).map(|i| format!("{n}:{i}")).collect();
                assert_eq!(
                    mine,
                    want.iter().collect::<Vec<_>>(),
                    "publisher {n}'s order"
                );
            }
        }
        let mut shared: Vec<String> = gots[2]
            .lock()
            .unwrap()
            .iter()
            .chain(gots[3].lock().unwrap().iter())
            .cloned()
            .collect();
        shared.sort();
        shared.dedup();
        assert_eq!(shared.len(), 400, "the group got each message once");
        // A second connection with sub-0's id takes its session over (0x8E at 5.0).
        let again = Client::spawn(Options::new(&url).unwrap().client_id("sub-0")).unwrap();
        again.wait_connected(WAIT).await.unwrap();
        assert!(
            eventually(|| broker.stats().clients_connected == 8).await,
            "{:?}",
            broker.stats()
        );
        assert_eq!(broker.stats().sessions, 8, "one session per client id");
        broker.stop().await;
    })
    .await;
}

/// With sibling cores, an id the broker assigns names its sibling: the client that comes back
/// with it finds its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_an_assigned_client_id_finds_its_session_again() {
    bounded(async {
        let mut cfg = local();
        cfg.shards = 3;
        let broker = start(cfg).await;
        let addr = broker.local_addr();
        let mut ids = Vec::new();
        let mut open = Vec::new();
        // Round-robin over the siblings for an empty id: three clients, three siblings.
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let props = [mqtt_proto::Property::SessionExpiryInterval(300)];
            let c = mqtt_proto::Packet::Connect(Connect {
                clean_start: false,
                properties: mqtt_proto::Properties::new(&props),
                ..Connect::new(V5, "", 60)
            });
            let mut b = vec![0u8; 64];
            let n = c.encode(V5, &mut b).unwrap();
            s.write_all(&b[..n]).await.unwrap();
            let mut got = Vec::new();
            let id = loop {
                let mut chunk = [0u8; 256];
                let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed before CONNACK");
                got.extend_from_slice(&chunk[..n]);
                if let Ok(mqtt_proto::Status::Complete((mqtt_proto::Packet::ConnAck(a), _))) =
                    mqtt_proto::decode(&got, V5, usize::MAX)
                {
                    let id = a.properties.iter().find_map(|p| match p {
                        mqtt_proto::Property::AssignedClientIdentifier(id) => Some(id.to_owned()),
                        _ => None,
                    });
                    break id.expect("an assigned client id");
                }
            };
            ids.push(id);
            open.push(s);
        }
        let mut prefixes: Vec<&str> = ids.iter().map(|i| &i[.."auto-0-".len()]).collect();
        prefixes.sort();
        assert_eq!(prefixes, ["auto-0-", "auto-1-", "auto-2-"], "{ids:?}");
        assert!(eventually(|| broker.stats().clients_connected == 3).await);
        for id in &ids {
            let (_raw, present) = Raw::connect_persistent(addr, V5, id).await;
            assert!(present, "{id}: the session is on the sibling its id names");
        }
        assert_eq!(broker.stats().sessions, 3, "taken over, not created again");
        broker.stop().await;
    })
    .await;
}
