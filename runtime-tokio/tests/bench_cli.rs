//! `mqtt bench` against a private mosquitto per test, on a free loopback port.
//!
//! Without mosquitto installed the tests are skipped (with a note on stderr), except under
//! `CI=true`, where they fail.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::mosquitto::Broker;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");
/// Longest a single run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A broker without a connection limit (mosquitto's own `max_connections`); the file limit
/// its process inherits is raised first, so 1 000 connections fit on both sides.
fn broker() -> Option<Broker> {
    let _ = rlimit::increase_nofile_limit(8192);
    Broker::builder()
        .config("max_connections -1")
        .start_or_skip()
}

/// How a run ended, with its output.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "--json output does not parse: {e}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A running `mqtt bench`, its output collected on threads so pipes never fill up.
struct Running {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: mpsc::Receiver<String>,
}

fn spawn(broker: &Broker, args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .arg("bench")
        .args([
            "-h",
            broker.host(),
            "-p",
            &broker.port().to_string(),
            "--quiet",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqtt bench");
    let mut out = child.stdout.take().expect("stdout");
    let stdout = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        stdout,
        stderr: rx,
    }
}

impl Running {
    /// Waits for a line on stderr containing `needle`.
    fn wait_for_line(&mut self, needle: &str) {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(15) {
            match self.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains(needle) => return,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        panic!("mqtt bench never printed {needle:?}; stderr: {seen:#?}");
    }

    /// Waits for the end (at most [`RUN_LIMIT`]).
    fn finish(mut self) -> Outcome {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > RUN_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("mqtt bench did not finish within {RUN_LIMIT:?}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr: Vec<String> = self.stderr.iter().collect();
        Outcome {
            code: status.code(),
            stdout,
            stderr: stderr.join("\n"),
        }
    }
}

fn bench(broker: &Broker, args: &[&str]) -> Outcome {
    spawn(broker, args).finish()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v:#}"))
}

#[track_caller]
fn assert_exact(v: &Value, sent: u64, expected: Option<u64>) {
    assert_eq!(v["ok"], Value::Bool(true), "{v:#}");
    assert_eq!(u(v, "sent"), sent, "{v:#}");
    assert_eq!(u(v, "acked"), sent, "{v:#}");
    match expected {
        Some(e) => {
            assert_eq!(u(v, "expected"), e, "{v:#}");
            assert_eq!(u(v, "received"), e, "{v:#}");
            assert_eq!(u(v, "unique"), e, "{v:#}");
            assert_eq!(
                v["latency_us"]["count"].as_u64(),
                Some(e),
                "every message is timed: {v:#}"
            );
        }
        None => assert_eq!(u(v, "received"), 0, "{v:#}"),
    }
    assert_eq!(u(v, "lost"), 0, "{v:#}");
    assert_eq!(u(v, "duplicates"), 0, "{v:#}");
    assert_eq!(u(v, "out_of_order"), 0, "{v:#}");
    assert_eq!(v["connect"]["errors"].as_u64(), Some(0), "{v:#}");
    assert!(v["errors"].as_array().is_some_and(Vec::is_empty), "{v:#}");
}

#[test]
fn every_scenario_counts_exactly() {
    let Some(broker) = broker() else { return };
    // (scenario, QoS, publishers, copies of each message)
    let n = 3u64;
    let count = 40u64;
    let cases: [(&str, &str, u64, u64); 6] = [
        ("pub", "1", n, 0),
        ("p2p", "1", n, 1),
        ("p2p", "2", n, 1),
        ("fan-in", "2", n, 1),
        ("fan-out", "1", 1, n),
        ("mesh", "1", n, n),
    ];
    for (scenario, qos, publishers, fan) in cases {
        let out = bench(
            &broker,
            &[scenario, "-c", "3", "--count", "40", "-q", qos, "--json"],
        );
        assert_eq!(out.code, Some(0), "{scenario}: {}", out.stderr);
        let v = out.json();
        assert_eq!(v["scenario"], Value::String(scenario.into()));
        let sent = publishers * count;
        let expected = (fan > 0).then_some(sent * fan);
        assert_exact(&v, sent, expected);
        assert!(
            v["msg_per_s_out"].as_f64().is_some_and(|r| r > 0.0),
            "{v:#}"
        );
    }
}

#[test]
fn text_summary_and_out_file_agree_at_qos0() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("result.json");
    let file_arg = file.display().to_string();
    let out = bench(
        &broker,
        &[
            "p2p", "-c", "2", "--count", "100", "-s", "200", "--out", &file_arg,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = &out.stdout;
    assert!(text.contains("received      200 of 200 expected"), "{text}");
    assert!(
        text.contains("lost 0, duplicates 0, out of order 0"),
        "{text}"
    );
    assert!(text.contains("latency") && text.contains("p99.9"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("--out file"))
        .expect("--out holds JSON");
    assert_exact(&v, 200, Some(200));
    assert_eq!(u(&v, "size"), 200);
    let per_byte =
        v["bytes_per_s_in"].as_f64().unwrap_or(0.0) / v["msg_per_s_in"].as_f64().unwrap_or(1.0);
    assert!(
        (per_byte - 200.0).abs() < 1e-6,
        "bytes/s = msg/s × size: {v:#}"
    );
}

#[test]
fn fixed_rate_duration_and_warmup_are_exact() {
    let Some(broker) = broker() else { return };
    // 200 msg/s for 1 s: messages due at 0, 5, ..., 995 ms; the first 300 ms are warm-up.
    let out = bench(
        &broker,
        &[
            "p2p",
            "-c",
            "1",
            "--rate",
            "200/s",
            "--duration",
            "1s",
            "--warmup",
            "300ms",
            "-q",
            "1",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = out.json();
    assert_eq!(u(&v, "sent"), 200, "{v:#}");
    assert_eq!(u(&v, "unique"), 200, "{v:#}");
    assert_eq!(v["latency_us"]["count"].as_u64(), Some(140), "{v:#}");
    let secs = v["duration_s"].as_f64().unwrap_or(0.0);
    assert!(
        (0.95..2.0).contains(&secs),
        "paced over about a second: {v:#}"
    );
    let rate = v["msg_per_s_out"].as_f64().unwrap_or(0.0);
    assert!((120.0..260.0).contains(&rate), "about 200 msg/s: {v:#}");

    // --rate-total splits the rate: 2 publishers at 100/s each for 0.5 s.
    let out = bench(
        &broker,
        &[
            "pub",
            "-c",
            "2",
            "--rate",
            "200",
            "--rate-total",
            "--duration",
            "0.5",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = out.json();
    assert_eq!(u(&v, "sent"), 100, "{v:#}");
    assert_eq!(v["rate_per_publisher"].as_f64(), Some(100.0), "{v:#}");
}

#[test]
fn sub_counts_what_another_bench_publishes() {
    let Some(broker) = broker() else { return };
    // Two subscribers to bench/#; two publishers of 50 each: each subscriber gets all 100.
    let mut sub = spawn(
        &broker,
        &["sub", "-c", "2", "--count", "100", "-q", "1", "--json"],
    );
    sub.wait_for_line("2 subscribers ready");
    let publ = bench(
        &broker,
        &["pub", "-c", "2", "--count", "50", "-q", "1", "--json"],
    );
    assert_eq!(publ.code, Some(0), "{}", publ.stderr);
    assert_exact(&publ.json(), 100, None);
    let out = sub.finish();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = out.json();
    assert_eq!(u(&v, "received"), 200, "{v:#}");
    assert_eq!(u(&v, "unique"), 200, "{v:#}");
    assert_eq!(u(&v, "lost"), 0, "no gaps: {v:#}");
    assert_eq!(u(&v, "duplicates"), 0, "{v:#}");
    assert_eq!(v["latency_us"]["count"].as_u64(), Some(200), "{v:#}");
}

#[test]
fn conn_opens_a_thousand_connections() {
    let Some(broker) = broker() else { return };
    let out = bench(
        &broker,
        &[
            "conn",
            "-c",
            "1000",
            "--rate",
            "5000/s",
            "--duration",
            "1s",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, out.stdout);
    let v = out.json();
    let k = &v["connect"];
    assert_eq!(k["attempted"].as_u64(), Some(1000), "{v:#}");
    assert_eq!(k["connected"].as_u64(), Some(1000), "{v:#}");
    assert_eq!(k["errors"].as_u64(), Some(0), "{v:#}");
    assert_eq!(k["lost"].as_u64(), Some(0), "held without loss: {v:#}");
    assert_eq!(k["latency_us"]["count"].as_u64(), Some(1000), "{v:#}");
    // Paced at 5000/s, the last connection starts about 200 ms in.
    let rate = k["per_second"].as_f64().unwrap_or(0.0);
    assert!(rate > 500.0 && rate < 6000.0, "{v:#}");
    assert!(u(&v, "file_limit") >= 1064, "{v:#}");
}

#[test]
fn bad_password_is_a_clear_error() {
    let Some(broker) = Broker::builder()
        .password("bench", "secret")
        .start_or_skip()
    else {
        return;
    };
    let out = bench(
        &broker,
        &[
            "p2p", "-c", "2", "--count", "10", "-u", "bench", "-P", "wrong",
        ],
    );
    assert_eq!(out.code, Some(5), "{}\n{}", out.stderr, out.stdout);
    // mosquitto 2.0 answers a bad password to an MQTT 5 client with "not authorized".
    assert!(
        out.stderr.contains("connection refused: not authorized")
            || out
                .stderr
                .contains("connection refused: bad user name or password"),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stdout.contains("failed"),
        "the summary is printed: {}",
        out.stdout
    );
    assert!(out.stdout.contains("error: "), "{}", out.stdout);

    // The right password works against the same broker.
    let out = bench(
        &broker,
        &[
            "p2p", "-c", "2", "--count", "10", "-u", "bench", "-P", "secret", "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exact(&out.json(), 20, Some(20));
}

#[test]
fn broker_killed_mid_run_is_an_error_with_a_summary() {
    let Some(mut broker) = broker() else { return };
    let run = spawn(
        &broker,
        &[
            "p2p",
            "-c",
            "2",
            "--rate",
            "100",
            "--duration",
            "20s",
            "-q",
            "1",
            "--json",
        ],
    );
    thread::sleep(Duration::from_millis(1500));
    broker.kill();
    let started = Instant::now();
    let out = run.finish();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run stops soon after the broker is gone"
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("connection lost"),
        "stderr: {}",
        out.stderr
    );
    let v = out.json();
    assert_eq!(v["ok"], Value::Bool(false));
    let sent = u(&v, "sent");
    assert!(
        sent >= 150,
        "what was measured before the kill is reported: {v:#}"
    );
    assert!(u(&v, "unique") >= 100, "{v:#}");
    assert!(
        v["connect"]["lost"].as_u64().is_some_and(|n| n >= 1),
        "{v:#}"
    );
}

#[test]
fn over_tls_with_a_client_certificate_and_over_websocket() {
    let certs = tests::certs::Certs::generate();
    let Some(broker) = Broker::builder()
        .tls(&certs)
        .require_certificate(true)
        .websockets(true)
        .start_or_skip()
    else {
        return;
    };
    let ca = certs.ca_pem().display().to_string();
    let cert = certs.client_cert().display().to_string();
    let key = certs.client_key().display().to_string();
    let tls_port = broker.tls_port().to_string();
    let url = broker.ws_url();
    let runs: [Vec<&str>; 2] = [
        vec![
            "-p", &tls_port, "--cafile", &ca, "--cert", &cert, "--key", &key,
        ],
        vec!["-L", &url],
    ];
    for conn in runs {
        let mut args = vec![
            "bench", "p2p", "-c", "2", "--count", "30", "-q", "1", "--json",
        ];
        // -L conflicts with -h/-p, so these runs give their own connection flags.
        if conn[0] == "-p" {
            args.extend(["-h", broker.host()]);
        }
        args.extend(conn.iter().copied());
        let out = Command::new(BIN)
            .args(&args)
            .arg("--quiet")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run mqtt bench");
        let outcome = Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(outcome.code, Some(0), "{conn:?}: {}", outcome.stderr);
        let v = outcome.json();
        assert_exact(&v, 60, Some(60));
        let scheme = if conn[0] == "-p" { "mqtts://" } else { "ws://" };
        assert!(
            v["broker"].as_str().is_some_and(|b| b.starts_with(scheme)),
            "{v:#}"
        );
    }
}

#[test]
fn a_file_limit_that_cannot_be_raised_is_named() {
    // `ulimit -n` in sh sets the hard limit too, so the bench cannot raise it back.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {BIN} bench conn -c 1000 -h 127.0.0.1 -p 9 --quiet"
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1000 connections need about 1064 open files, but the limit is 256"),
        "{stderr}"
    );
    assert!(stderr.contains("hard limit 256"), "{stderr}");
}

/// `kill -SIGNAL pid`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_stalled_broker_shows_in_the_latency_of_every_message_it_delayed() {
    let Some(broker) = broker() else { return };
    let pid = broker.pid().expect("broker pid");
    // 200 msg/s for 2 s; the broker stops for 500 ms in the middle. At a fixed rate the
    // schedule goes on, and each delayed message is timed from when it was due: about 100
    // messages wait between 0 and 500 ms, so a tenth of all samples exceed 100 ms. A
    // generator that waited for the broker would record one slow sample, not a hundred.
    let run = spawn(
        &broker,
        &[
            "p2p",
            "-c",
            "1",
            "--rate",
            "200",
            "--duration",
            "2s",
            "-q",
            "1",
            "--json",
        ],
    );
    thread::sleep(Duration::from_millis(800));
    signal(pid, "-STOP");
    thread::sleep(Duration::from_millis(500));
    signal(pid, "-CONT");
    let out = run.finish();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = out.json();
    assert_exact(&v, 400, Some(400));
    let lat = &v["latency_us"];
    let us = |k: &str| lat[k].as_u64().unwrap_or(0);
    assert!(
        us("max") >= 350_000,
        "the stall shows in the maximum: {v:#}"
    );
    assert!(
        us("p90") >= 100_000,
        "and in the p90, not only one sample: {v:#}"
    );
    assert!(us("p50") < 100_000, "most messages were not delayed: {v:#}");
}

#[test]
fn messages_the_broker_drops_are_reported_lost() {
    let Some(broker) = broker() else { return };
    // mosquitto 2.0 acknowledges but drops QoS 2 messages from an MQTT 3.1.1 client beyond
    // its max_inflight_messages (20) in flight; at --inflight 20 nothing is lost.
    let out = bench(
        &broker,
        &[
            "p2p",
            "-c",
            "1",
            "--count",
            "100",
            "-q",
            "2",
            "-V",
            "311",
            "--inflight",
            "64",
            "--drain",
            "1s",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let v = out.json();
    assert_eq!(u(&v, "sent"), 100, "{v:#}");
    assert_eq!(
        u(&v, "acked"),
        100,
        "the broker acknowledged them all: {v:#}"
    );
    let lost = u(&v, "lost");
    assert!(lost > 0, "{v:#}");
    assert_eq!(u(&v, "unique") + lost, 100, "{v:#}");
    assert!(out.stderr.contains("lost at QoS 2"), "{}", out.stderr);

    let out = bench(
        &broker,
        &[
            "p2p",
            "-c",
            "1",
            "--count",
            "100",
            "-q",
            "2",
            "-V",
            "311",
            "--inflight",
            "20",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exact(&out.json(), 100, Some(100));
}
