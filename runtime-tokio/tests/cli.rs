//! The `mqtt` binary against a private mosquitto on a free loopback port.
//!
//! Without mosquitto installed the tests are skipped (with a note on stderr), except under
//! `CI=true`, where they fail.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");
/// Longest a single command may run before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE"))
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A mosquitto of the test's own, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker (requiring these users, if any); `None` skips the test outside CI.
    fn start(users: &[(&str, &str)]) -> Option<Mosquitto> {
        let Some(bin) = find("mosquitto") else {
            assert!(!in_ci(), "CI=true and mosquitto is not installed");
            eprintln!("SKIPPED: mosquitto is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conf = String::new();
        let is_root = fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if is_root {
            conf.push_str("user root\n");
        }
        conf.push_str(&format!(
            "log_dest file {}\nlog_type all\nper_listener_settings false\n",
            dir.path().join("log").display()
        ));
        if users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let file = dir.path().join("passwd");
            fs::write(&file, "").expect("password file");
            let passwd = find("mosquitto_passwd").expect("mosquitto_passwd (mosquitto package)");
            for (u, p) in users {
                let ok = Command::new(&passwd)
                    .arg("-b")
                    .arg(&file)
                    .args([u, p])
                    .status()
                    .expect("run mosquitto_passwd")
                    .success();
                assert!(ok, "mosquitto_passwd failed");
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            ));
        }
        for _ in 0..5 {
            let port = free_port();
            let cfg = dir.path().join("mosquitto.conf");
            fs::write(&cfg, format!("{conf}listener {port} 127.0.0.1\n")).expect("config");
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Some(Mosquitto {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // port taken in the meantime: try another
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start");
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ]
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a command ended.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Waits for `child` at most [`RUN_LIMIT`], killing it (and failing) past that.
fn finish(mut child: Child, what: &str) -> Outcome {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr).expect("stderr");
    }
    Outcome {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Runs `mqtt ARGS` with `stdin` and waits for it.
fn run(args: &[String], stdin: &str) -> Outcome {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqtt");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    finish(child, &format!("mqtt {args:?}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A running `mqtt sub`, returned once its subscriptions are granted.
struct Sub {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Sub {
    fn start(broker: &Mosquitto, args: &[&str]) -> Sub {
        let mut all = broker.args();
        all.push("-d".into());
        all.extend(strings(args));
        let mut child = Command::new(BIN)
            .arg("sub")
            .args(&all)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mqtt sub");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("mqtt: subscribed") => break,
                Ok(line) => seen.push(line),
                Err(_) if start.elapsed() > Duration::from_secs(10) => {
                    let _ = child.kill();
                    panic!("mqtt sub did not subscribe: {seen:#?}");
                }
                Err(_) => {}
            }
        }
        Sub { child, stderr: rx }
    }

    fn finish(self) -> Outcome {
        let mut out = finish(self.child, "mqtt sub");
        out.stderr = self.stderr.try_iter().collect::<Vec<_>>().join("\n");
        out
    }
}

fn pub_args(broker: &Mosquitto, args: &[&str]) -> Vec<String> {
    let mut all = vec!["pub".to_string()];
    all.extend(broker.args());
    all.extend(strings(args));
    all
}

#[track_caller]
fn assert_ok(out: &Outcome) {
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
}

#[test]
fn pub_sub_round_trip_verbose_count() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    for version in ["5", "311"] {
        let sub = Sub::start(
            &broker,
            &[
                "-t", "rt/#", "-t", "other", "-q", "1", "-v", "-C", "3", "-V", version,
            ],
        );
        for (topic, msg, qos) in [
            ("rt/a", "hello", "0"),
            ("rt/b/c", "two words", "1"),
            ("other", "x", "2"),
        ] {
            let out = run(
                &pub_args(&broker, &["-t", topic, "-m", msg, "-q", qos, "-V", version]),
                "",
            );
            assert_ok(&out);
        }
        let out = sub.finish();
        assert_ok(&out);
        assert_eq!(
            out.stdout, "rt/a hello\nrt/b/c two words\nother x\n",
            "v{version}"
        );
    }
}

#[test]
fn pub_lines_from_stdin_and_null_message() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    let sub = Sub::start(&broker, &["-t", "lines", "-q", "1", "-C", "4"]);
    let out = run(
        &pub_args(&broker, &["-t", "lines", "-l", "-q", "1"]),
        "one\n\ntwo\r\nthree\n",
    );
    assert_ok(&out);
    assert_ok(&run(
        &pub_args(&broker, &["-t", "lines", "-n", "-q", "1"]),
        "",
    ));
    let out = sub.finish();
    assert_ok(&out);
    assert_eq!(out.stdout, "one\ntwo\nthree\n\n");
}

#[test]
fn pub_count_and_rate() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    let sub = Sub::start(&broker, &["-t", "many", "-q", "1", "-C", "20"]);
    let start = Instant::now();
    let out = run(
        &pub_args(
            &broker,
            &[
                "-t", "many", "-m", "m", "-q", "1", "--count", "20", "--rate", "100/s",
            ],
        ),
        "",
    );
    let took = start.elapsed();
    assert_ok(&out);
    // 20 messages at 100/s: the last leaves 190 ms after the first.
    assert!(
        took >= Duration::from_millis(190),
        "too fast for the rate: {took:?}"
    );
    let out = sub.finish();
    assert_ok(&out);
    assert_eq!(out.stdout, "m\n".repeat(20));

    // Unpaced, QoS 2, many messages: all acknowledged before the tool exits.
    let sub = Sub::start(&broker, &["-t", "burst", "-q", "2", "-C", "500"]);
    let out = run(
        &pub_args(
            &broker,
            &["-t", "burst", "-m", "b", "-q", "2", "--count", "500"],
        ),
        "",
    );
    assert_ok(&out);
    let out = sub.finish();
    assert_ok(&out);
    assert_eq!(out.stdout.lines().count(), 500);
}

#[test]
fn wrong_password_is_refused_with_exit_5() {
    let Some(broker) = Mosquitto::start(&[("alice", "s3cret")]) else {
        return;
    };
    for version in ["5", "311"] {
        let out = run(
            &pub_args(
                &broker,
                &[
                    "-t", "t", "-m", "x", "-u", "alice", "-P", "wrong", "-V", version,
                ],
            ),
            "",
        );
        assert_eq!(out.code, Some(5), "v{version}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("connection refused: bad user name or password")
                || out.stderr.contains("connection refused: not authorized"),
            "v{version}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("wrong"),
            "password printed: {}",
            out.stderr
        );
        let out = run(
            &pub_args(
                &broker,
                &[
                    "-t", "t", "-m", "x", "-u", "alice", "-P", "s3cret", "-V", version,
                ],
            ),
            "",
        );
        assert_ok(&out);
    }
    // Without credentials at all: refused too.
    let out = run(&pub_args(&broker, &["-t", "t", "-m", "x"]), "");
    assert_eq!(out.code, Some(5), "{}", out.stderr);
}

#[test]
fn unreachable_broker_exits_1() {
    let port = free_port().to_string();
    for sub in ["pub", "sub"] {
        let mut args = strings(&[sub, "-h", "127.0.0.1", "-p", &port, "-t", "t"]);
        if sub == "pub" {
            args.extend(strings(&["-m", "x"]));
        }
        let start = Instant::now();
        let out = run(&args, "");
        assert_eq!(out.code, Some(1), "{sub}: {}", out.stderr);
        assert!(
            out.stderr.contains("cannot reach the broker"),
            "{sub}: {}",
            out.stderr
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        strings(&["pub", "-t", "t"]),              // nothing to publish
        strings(&["pub", "-t", "a/#", "-m", "x"]), // wildcard in a topic name
        strings(&["pub", "-t", "t", "-m", "x", "-q", "3"]),
        strings(&["sub", "-c", "-t", "t"]), // -c without -i
        strings(&["sub", "-q", "1"]),       // no filter
        strings(&["pub", "-t", "t", "-m", "x", "-V", "4.2"]),
        strings(&["pub", "--bogus"]),
    ] {
        let out = run(&args, "");
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn persistent_session_gets_messages_sent_while_away() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    for version in ["5", "311"] {
        let id = format!("cli-persistent-{version}");
        let filter = format!("away/{version}");
        let common = [
            "-c",
            "-i",
            id.as_str(),
            "-q",
            "1",
            "-t",
            filter.as_str(),
            "-V",
            version,
        ];
        // First run: creates the session and its subscription, then leaves.
        let mut first = common.to_vec();
        first.extend(["-C", "1"]);
        let sub = Sub::start(&broker, &first);
        assert_ok(&run(
            &pub_args(&broker, &["-t", &filter, "-m", "hello", "-q", "1"]),
            "",
        ));
        let out = sub.finish();
        assert_ok(&out);
        assert_eq!(out.stdout, "hello\n");
        // Published while nobody is connected.
        for m in ["away-1", "away-2"] {
            assert_ok(&run(
                &pub_args(&broker, &["-t", &filter, "-m", m, "-q", "1"]),
                "",
            ));
        }
        // Second run: the session resumes with what it missed.
        let mut args = vec!["sub".to_string()];
        args.extend(broker.args());
        args.extend(strings(&common));
        args.extend(strings(&["-C", "2", "-W", "10"]));
        let out = run(&args, "");
        assert_ok(&out);
        assert_eq!(out.stdout, "away-1\naway-2\n", "v{version}");
    }
}

#[test]
fn sub_timeout_exits_27() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    let mut args = vec!["sub".to_string()];
    args.extend(broker.args());
    args.extend(strings(&["-t", "quiet", "-W", "1"]));
    let out = run(&args, "");
    assert_eq!(out.code, Some(27), "{}", out.stderr);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
}

#[test]
fn config_file_and_environment() {
    let Some(broker) = Mosquitto::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        format!(
            "url = \"mqtt://127.0.0.1:{}\"\nclient_id = \"from-file\"\nversion = \"3.1.1\"\n",
            broker.port
        ),
    )
    .expect("write config");
    let sub = Sub::start(&broker, &["-t", "cfg/#", "-C", "2", "-v"]);
    let out = run(
        &strings(&[
            "pub",
            "--config",
            good.to_str().expect("utf-8"),
            "-t",
            "cfg/file",
            "-m",
            "f",
        ]),
        "",
    );
    assert_ok(&out);
    // The environment names the broker; -L would too.
    let out = {
        let mut child = Command::new(BIN)
            .args(["pub", "-t", "cfg/env", "-m", "e"])
            .env("MQTT_URL", format!("mqtt://127.0.0.1:{}", broker.port))
            .env("MQTT_VERSION", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdin.take());
        finish(child, "pub with MQTT_URL")
    };
    assert_ok(&out);
    let out = sub.finish();
    assert_ok(&out);
    assert_eq!(out.stdout, "cfg/file f\ncfg/env e\n");

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "url = \"mqtt://127.0.0.1:1\"\nkeepalive = 5\n").expect("write config");
    let out = run(
        &strings(&[
            "pub",
            "--config",
            bad.to_str().expect("utf-8"),
            "-t",
            "t",
            "-m",
            "x",
        ]),
        "",
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("keepalive"), "{}", out.stderr);

    let mut child = Command::new(BIN)
        .args(["pub", "-t", "t", "-m", "x"])
        .env("MQTT_KEEP_ALIVE", "soon")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdin.take());
    let out = finish(child, "pub with a bad MQTT_KEEP_ALIVE");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("MQTT_KEEP_ALIVE"), "{}", out.stderr);

    // mosquitto's URL form carries the topic.
    let sub = Sub::start(&broker, &["-t", "url/topic", "-C", "1"]);
    let url = format!("mqtt://127.0.0.1:{}/url/topic", broker.port);
    assert_ok(&run(&strings(&["pub", "-L", &url, "-m", "via-url"]), ""));
    assert_eq!(sub.finish().stdout, "via-url\n");
}
