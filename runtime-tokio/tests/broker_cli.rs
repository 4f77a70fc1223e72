//! `mqtt broker` and `mqtt passwd` as commands: config errors name the key, SIGTERM stops the
//! broker with exit 0 after DISCONNECT 0x8B, `mqtt passwd` writes entries mosquitto accepts,
//! `--log-format json` logs JSON without passwords.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_proto::{Connect, Packet, ProtocolVersion, ReasonCode, Status, decode};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");

thread_local! {
    /// The log file of each broker a test started, by process id.
    static LOGS: std::cell::RefCell<std::collections::HashMap<u32, std::fs::File>> =
        Default::default();
}

/// Starts `mqtt broker ARGS` and returns it with the port of its first listener.
fn start(args: &[&str]) -> (Child, u16) {
    let (child, lines) = start_lines(args, 1);
    let port = lines[0]
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no listening line: {lines:?}"));
    (child, port)
}

/// Starts `mqtt broker ARGS` and returns it with the first `n` lines it printed.
fn start_lines(args: &[&str], n: usize) -> (Child, Vec<String>) {
    // The log goes to a file: a pipe nobody reads would fill and stall the broker.
    let log = tempfile::tempfile().unwrap();
    let mut child = Command::new(BIN)
        .arg("broker")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    LOGS.with(|l| l.borrow_mut().insert(child.id(), log));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let lines = (0..n)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line
        })
        .collect();
    (child, lines)
}

fn connect(port: u16, v: ProtocolVersion, user: Option<(&str, &[u8])>) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Connect::new(v, "cli-test", 30);
    if let Some((u, p)) = user {
        c.username = Some(u);
        c.password = Some(p);
    }
    let mut buf = [0u8; 256];
    let n = Packet::Connect(c).encode(v, &mut buf).unwrap();
    s.write_all(&buf[..n]).unwrap();
    let frame = next_frame(v, &mut Vec::new(), &mut s);
    (s, frame)
}

/// The next whole packet's bytes (empty at the end of the stream).
fn next_frame(v: ProtocolVersion, acc: &mut Vec<u8>, s: &mut TcpStream) -> Vec<u8> {
    loop {
        if let Ok(Status::Complete((_, n))) = decode(acc, v, 1 << 20) {
            let rest = acc.split_off(n);
            return std::mem::replace(acc, rest);
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => acc.extend_from_slice(&chunk[..n]),
        }
    }
}

fn reason(v: ProtocolVersion, frame: &[u8]) -> ReasonCode {
    match decode(frame, v, 1 << 20) {
        Ok(Status::Complete((Packet::ConnAck(a), _))) => a.reason_code,
        Ok(Status::Complete((Packet::Disconnect(d), _))) => d.reason_code,
        other => panic!("unexpected: {other:?}"),
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut log) = LOGS.with(|l| l.borrow_mut().remove(&child.id())) {
                use std::io::Seek;
                log.seek(std::io::SeekFrom::Start(0)).unwrap();
                log.read_to_string(&mut err).unwrap();
            }
            return (status.code(), err);
        }
        assert!(Instant::now() < deadline, "the broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "listen = [\"mqtt://127.0.0.1:0\"]\nmax_keepalive = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["broker", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_keepalive"), "{err}");
    let out = Command::new(BIN)
        .args(["broker", "--listen", "http://127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheme"));
}

#[test]
fn sigterm_sends_0x8b_and_exits_0() {
    let (child, port) = start(&["--listen", "mqtt://127.0.0.1:0"]);
    let v = ProtocolVersion::V5;
    let (mut s, connack) = connect(port, v, None);
    assert_eq!(reason(v, &connack), ReasonCode::Success);
    sigterm(&child);
    let frame = next_frame(v, &mut Vec::new(), &mut s);
    assert_eq!(reason(v, &frame), ReasonCode::ServerShuttingDown);
    let (code, err) = wait(child);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn passwd_entries_log_in_and_json_logs_hold_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    for (user, pass) in [
        ("alice", "s3cret-alice"),
        ("bob", "old"),
        ("bob", "s3cret-bob"),
    ] {
        let st = Command::new(BIN)
            .args(["passwd"])
            .arg(&file)
            .args([user, "-b", pass])
            .status()
            .unwrap();
        assert!(st.success());
    }
    // From standard input, as a prompt would read it.
    let mut child = Command::new(BIN)
        .arg("passwd")
        .arg(&file)
        .arg("carol")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-carol\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains(":$7$101$")), "{text}");

    let file_arg = file.to_str().unwrap();
    let (child, port) = start(&[
        "--listen",
        "mqtt://127.0.0.1:0",
        "--password-file",
        file_arg,
        "--allow-anonymous",
        "false",
        "--log-format",
        "json",
    ]);
    let v = ProtocolVersion::V311;
    for (user, pass, want) in [
        ("alice", &b"s3cret-alice"[..], ReasonCode::Success),
        ("bob", b"s3cret-bob", ReasonCode::Success),
        ("bob", b"old", ReasonCode::BadUserNameOrPassword),
        ("carol", b"s3cret-carol", ReasonCode::Success),
    ] {
        let (_s, connack) = connect(port, v, Some((user, pass)));
        assert_eq!(reason(v, &connack), want, "{user}");
    }
    sigterm(&child);
    let (code, err) = wait(child);
    assert_eq!(code, Some(0));
    assert!(!err.contains("s3cret"), "a password in the logs: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.iter().any(|l| l.contains("refused")), "{err}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
}

/// Metrics text from the broker's HTTP endpoint.
fn metrics(addr: &str) -> String {
    let addr = addr.parse().expect("the broker's HTTP address");
    tests::http::get(addr, "/metrics").expect("GET /metrics").1
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(-1.0)
}

/// 10 000 clients connected at once to `mqtt broker` (its own process, so that each side fits
/// in the file limit): all get CONNACK, /metrics counts them, a message still goes through, and
/// when they go the count returns to 0.
#[test]
fn ten_thousand_concurrent_connections() {
    const N: usize = 10_000;
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    assert!(
        hard >= N as u64 + 500,
        "the file limit {hard} is too low for {N} connections"
    );
    let (child, lines) = start_lines(
        &[
            "--listen",
            "mqtt://127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        2,
    );
    let port: u16 = lines[0].trim().rsplit(':').next().unwrap().parse().unwrap();
    let http = lines[1]
        .trim()
        .trim_start_matches("http on http://")
        .to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let v = ProtocolVersion::V311;
        let mut conns = Vec::with_capacity(N);
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in 0..N / 500 {
            for i in 0..500 {
                let id = format!("many-{}", chunk * 500 + i);
                tasks.spawn(async move { tests::raw::Raw::connect(addr, v, &id).await });
            }
            while let Some(r) = tasks.join_next().await {
                conns.push(r.unwrap());
            }
        }
        let mut first = conns.swap_remove(0);
        let mut last = conns.pop().unwrap();
        assert_eq!(
            first
                .subscribe("many/t", mqtt_proto::QoS::AtLeastOnce)
                .await,
            [ReasonCode::GrantedQoS1]
        );
        last.publish("many/t", b"hello", mqtt_proto::QoS::AtLeastOnce, 1)
            .await;
        assert_eq!(
            last.recv().await,
            Some(tests::raw::Got::PubAck(1, ReasonCode::Success))
        );
        let got = first.recv().await;
        assert!(
            matches!(&got, Some(tests::raw::Got::Publish { payload, .. }) if payload == b"hello"),
            "{got:?}"
        );
        let m = metrics(&http);
        assert_eq!(gauge(&m, "mqtt_broker_connections "), N as f64, "{m}");
        drop((first, last));
        let open = conns.len() + 2;
        drop(conns);
        // Every connection closes, and the broker counts none left.
        let deadline = Instant::now() + Duration::from_secs(20);
        while gauge(&metrics(&http), "mqtt_broker_connections ") != 0.0 {
            assert!(Instant::now() < deadline, "connections left open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        open
    });
    assert_eq!(result, N);
    drop(rt);
    sigterm(&child);
    let (code, err) = wait(child);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.matches("connection closed").count() >= N,
        "closes logged"
    );
}
