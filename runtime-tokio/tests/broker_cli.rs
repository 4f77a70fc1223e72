//! `mqtt broker` and `mqtt passwd` as commands: config errors name the key, SIGTERM stops the
//! broker with exit 0 after DISCONNECT 0x8B, `mqtt passwd` writes entries mosquitto accepts,
//! `--log-format json` logs JSON without passwords.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_proto::{Connect, Packet, ProtocolVersion, ReasonCode, Status, decode};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");

/// Starts `mqtt broker ARGS` and returns it with the port of its first listener.
fn start(args: &[&str]) -> (Child, u16) {
    let mut child = Command::new(BIN)
        .arg("broker")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no listening line: {line:?}"));
    (child, port)
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
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
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
