//! The mosquitto command-line clients (`mosquitto_pub`, `mosquitto_sub`, Debian package
//! `mosquitto-clients`) as reference peers, to cross-check our client against them.
//!
//! Every run is bounded in time: `mosquitto_pub` is killed after [`Pub::timeout`] (10 s by
//! default), `mosquitto_sub` exits after `-W` seconds and is killed 5 s after that at the latest.
//! These helpers block (they wait for processes); from async code on tokio, use
//! [`SubHandle::wait_async`] or `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use tests::mosquitto::Broker;
//! use tests::peers::{mosquitto_pub, mosquitto_sub};
//!
//! let Some(broker) = Broker::start_or_skip() else { return };
//! // Returns once the broker has sent the SUBACK, so nothing published afterwards is missed.
//! let sub = mosquitto_sub(&broker, "a/#", 1, 1, 5);
//! mosquitto_pub(&broker, "a/b", "hello", 1, false);
//! let got = sub.wait();
//! assert_eq!(got[0].topic, "a/b");
//! assert_eq!(got[0].payload, b"hello");
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::certs::Certs;
use crate::mosquitto::{Broker, find_program};

/// The MQTT protocol version a tool speaks (`-V`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttVersion {
    /// `-V mqttv31`.
    V31,
    /// `-V mqttv311` (the tools' default).
    #[default]
    V311,
    /// `-V mqttv5`.
    V5,
}

impl MqttVersion {
    /// The `-V` argument.
    pub fn arg(self) -> &'static str {
        match self {
            MqttVersion::V31 => "mqttv31",
            MqttVersion::V311 => "mqttv311",
            MqttVersion::V5 => "mqttv5",
        }
    }
}

/// One message printed by `mosquitto_sub`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The topic name.
    pub topic: String,
    /// The payload, byte-exact (transferred as hex).
    pub payload: Vec<u8>,
    /// The QoS it was delivered with.
    pub qos: u8,
    /// Whether the retain flag was set (a retained message sent on subscription).
    pub retain: bool,
}

impl Message {
    /// The payload as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Parses one line of `-F '%q %r %x %t'`.
    fn parse(line: &str) -> Option<Message> {
        let mut parts = line.splitn(4, ' ');
        let qos = parts.next()?.parse().ok()?;
        let retain = parts.next()? == "1";
        let payload = hex::decode(parts.next()?).ok()?;
        let topic = parts.next()?.to_owned();
        Some(Message {
            topic,
            payload,
            qos,
            retain,
        })
    }
}

/// How a finished tool exited.
#[derive(Debug)]
pub struct ToolOutput {
    /// The exit status (`None` if it was killed on timeout).
    pub status: Option<ExitStatus>,
    /// Whether it was killed because it ran over its time limit.
    pub timed_out: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl ToolOutput {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The exit code (for a refused connection: the CONNACK return / reason code).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Connection options shared by [`Pub`] and [`Sub`].
#[derive(Clone, Debug)]
struct Conn {
    host: String,
    port: u16,
    version: MqttVersion,
    auth: Option<(String, String)>,
    cafile: Option<PathBuf>,
    cert: Option<(PathBuf, PathBuf)>,
    client_id: Option<String>,
    extra: Vec<OsString>,
    tls_port: Option<u16>,
}

impl Conn {
    fn new(broker: &Broker) -> Conn {
        Conn {
            host: broker.host().to_owned(),
            port: broker.port(),
            version: MqttVersion::default(),
            auth: None,
            cafile: None,
            cert: None,
            client_id: None,
            extra: Vec::new(),
            tls_port: None,
        }
    }

    fn args(&self, cmd: &mut Command) {
        cmd.arg("-h").arg(&self.host);
        cmd.arg("-p").arg(self.port.to_string());
        cmd.arg("-V").arg(self.version.arg());
        if let Some((user, pass)) = &self.auth {
            cmd.arg("-u").arg(user).arg("-P").arg(pass);
        }
        if let Some(ca) = &self.cafile {
            cmd.arg("--cafile").arg(ca);
        }
        if let Some((cert, key)) = &self.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(id) = &self.client_id {
            cmd.arg("-i").arg(id);
        }
        cmd.args(&self.extra);
    }
}

/// A program of `mosquitto-clients`, or the reason it is missing.
fn tool(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("{name} is not installed (apt-get install mosquitto-clients); see tools_or_skip")
    })
}

/// Whether `mosquitto_pub` and `mosquitto_sub` are installed.
pub fn tools_available() -> bool {
    find_program("mosquitto_pub").is_some() && find_program("mosquitto_sub").is_some()
}

/// `true` if the tools are installed; otherwise skips the test via [`crate::skip_or_fail`]
/// (fails under CI) and returns `false`: `if !tools_or_skip() { return }`.
#[track_caller]
pub fn tools_or_skip() -> bool {
    if tools_available() {
        return true;
    }
    crate::skip_or_fail(
        "mosquitto_pub / mosquitto_sub are not installed (package mosquitto-clients)",
    );
    false
}

macro_rules! conn_setters {
    () => {
        /// The MQTT version to speak (`-V`).
        pub fn version(mut self, version: MqttVersion) -> Self {
            self.conn.version = version;
            self
        }

        /// User name and password (`-u`, `-P`).
        pub fn auth(mut self, user: &str, pass: &str) -> Self {
            self.conn.auth = Some((user.to_owned(), pass.to_owned()));
            self
        }

        /// Connects to another port on 127.0.0.1 (e.g. a [`Proxy`](crate::proxy::Proxy)).
        pub fn port(mut self, port: u16) -> Self {
            self.conn.port = port;
            self
        }

        /// Connects to another host name (e.g. `localhost`, to check certificate names).
        pub fn host(mut self, host: &str) -> Self {
            self.conn.host = host.to_owned();
            self
        }

        /// Uses the broker's TLS listener and trusts the CA of `certs` (`--cafile`).
        #[track_caller]
        pub fn tls(mut self, certs: &Certs) -> Self {
            self.conn.port = self
                .conn
                .tls_port
                .expect("the broker has no TLS listener: build it with .tls(&certs)");
            self.conn.cafile = Some(certs.ca_pem());
            self
        }

        /// Presents the client certificate of `certs` (`--cert`, `--key`), for mutual TLS.
        pub fn client_cert(mut self, certs: &Certs) -> Self {
            self.conn.cert = Some((certs.client_cert(), certs.client_key()));
            self
        }

        /// The client identifier (`-i`).
        pub fn client_id(mut self, id: &str) -> Self {
            self.conn.client_id = Some(id.to_owned());
            self
        }

        /// Any further argument, passed as is.
        pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
            self.conn.extra.push(arg.into());
            self
        }
    };
}

/// A `mosquitto_pub` run; made by [`Pub::new`], executed by [`Pub::run`] or [`Pub::run_ok`].
#[derive(Clone, Debug)]
#[must_use]
pub struct Pub {
    conn: Conn,
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    timeout: Duration,
}

impl Pub {
    /// Publishes `payload` (any bytes, sent through stdin with `-s`; empty means `-n`) to `topic`
    /// on `broker`'s plain listener, QoS 0, not retained.
    pub fn new(broker: &Broker, topic: &str, payload: impl AsRef<[u8]>) -> Pub {
        let mut conn = Conn::new(broker);
        conn.tls_port = broker.tls_port_opt();
        Pub {
            conn,
            topic: topic.to_owned(),
            payload: payload.as_ref().to_vec(),
            qos: 0,
            retain: false,
            timeout: Duration::from_secs(10),
        }
    }

    conn_setters!();

    /// The QoS (`-q`).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Whether the message is retained (`-r`).
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// How long it may run before it is killed (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs it to the end (or the time limit) and reports how it exited.
    pub fn run(self) -> ToolOutput {
        let mut cmd = Command::new(tool("mosquitto_pub"));
        self.conn.args(&mut cmd);
        cmd.arg("-t").arg(&self.topic);
        cmd.arg("-q").arg(self.qos.to_string());
        if self.retain {
            cmd.arg("-r");
        }
        if self.payload.is_empty() {
            cmd.arg("-n");
        } else {
            cmd.arg("-s");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_pub: {e}"));
        let stdin = child.stdin.take();
        let payload = self.payload;
        let writer = thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&payload);
            }
        });
        let out = finish(child, self.timeout);
        let _ = writer.join();
        out
    }

    /// Runs it and panics unless it exited with status 0.
    #[track_caller]
    pub fn run_ok(self) -> ToolOutput {
        let topic = self.topic.clone();
        let out = self.run();
        assert!(out.success(), "mosquitto_pub -t {topic} failed: {out:?}");
        out
    }
}

/// `mosquitto_pub -t topic -m payload -q qos [-r]` on `broker`'s plain listener; panics if it
/// fails. Use [`Pub`] for other options and to check a failure.
#[track_caller]
pub fn mosquitto_pub(
    broker: &Broker,
    topic: &str,
    payload: impl AsRef<[u8]>,
    qos: u8,
    retain: bool,
) -> ToolOutput {
    Pub::new(broker, topic, payload)
        .qos(qos)
        .retain(retain)
        .run_ok()
}

/// A `mosquitto_sub` run; made by [`Sub::new`], started by [`Sub::spawn`].
#[derive(Clone, Debug)]
#[must_use]
pub struct Sub {
    conn: Conn,
    log_file: PathBuf,
    filters: Vec<String>,
    qos: u8,
    count: Option<usize>,
    timeout_secs: u64,
    wait_subscribed: bool,
}

static SUB_IDS: AtomicUsize = AtomicUsize::new(0);

impl Sub {
    /// Subscribes to `filter` on `broker`'s plain listener, QoS 0, for at most 10 s.
    pub fn new(broker: &Broker, filter: &str) -> Sub {
        let mut conn = Conn::new(broker);
        conn.tls_port = broker.tls_port_opt();
        Sub {
            conn,
            log_file: broker.log_file(),
            filters: vec![filter.to_owned()],
            qos: 0,
            count: None,
            timeout_secs: 10,
            wait_subscribed: true,
        }
    }

    conn_setters!();

    /// Subscribes to one more filter (another `-t`).
    pub fn filter(mut self, filter: &str) -> Self {
        self.filters.push(filter.to_owned());
        self
    }

    /// The maximum QoS of the subscription (`-q`).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Exits after this many messages (`-C`).
    pub fn count(mut self, count: usize) -> Self {
        self.count = Some(count);
        self
    }

    /// Exits this many seconds after connecting (`-W`; default 10, at least 1).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs.max(1);
        self
    }

    /// Whether [`spawn`](Self::spawn) waits for the broker's SUBACK (default `true`; turn it off
    /// when the connection is expected to fail).
    pub fn wait_subscribed(mut self, wait: bool) -> Self {
        self.wait_subscribed = wait;
        self
    }

    /// Starts `mosquitto_sub` and (by default) returns once the broker logged its SUBACK, so
    /// whatever is published afterwards reaches it. Panics, with the broker log, if it exits
    /// first or the SUBACK does not come within 10 s.
    #[track_caller]
    pub fn spawn(mut self) -> SubHandle {
        let id = self.conn.client_id.clone().unwrap_or_else(|| {
            format!(
                "harness-sub-{}-{}",
                std::process::id(),
                SUB_IDS.fetch_add(1, Ordering::Relaxed)
            )
        });
        self.conn.client_id = Some(id.clone());
        let mut cmd = Command::new(tool("mosquitto_sub"));
        self.conn.args(&mut cmd);
        for f in &self.filters {
            cmd.arg("-t").arg(f);
        }
        cmd.arg("-q").arg(self.qos.to_string());
        if let Some(n) = self.count {
            cmd.arg("-C").arg(n.to_string());
        }
        cmd.arg("-W").arg(self.timeout_secs.to_string());
        cmd.arg("-F").arg("%q %r %x %t");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_sub: {e}"));

        let messages = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().map(|out| {
            let messages = Arc::clone(&messages);
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    match Message::parse(&line) {
                        Some(m) => messages.lock().unwrap_or_else(|e| e.into_inner()).push(m),
                        None => eprintln!("mosquitto_sub printed an unexpected line: {line:?}"),
                    }
                }
            })
        });
        let stderr = child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        let mut handle = SubHandle {
            child: Some(child),
            client_id: id,
            messages,
            stdout,
            stderr,
            deadline: Instant::now() + Duration::from_secs(self.timeout_secs + 5),
            log_file: self.log_file.clone(),
        };
        if self.wait_subscribed {
            handle.wait_for_subacks(1, Duration::from_secs(10));
        }
        handle
    }
}

/// `mosquitto_sub -t filter -q qos -C count -W timeout_secs` on `broker`'s plain listener,
/// returned once it is subscribed. Use [`Sub`] for other options.
#[track_caller]
pub fn mosquitto_sub(
    broker: &Broker,
    filter: &str,
    qos: u8,
    count: usize,
    timeout_secs: u64,
) -> SubHandle {
    Sub::new(broker, filter)
        .qos(qos)
        .count(count)
        .timeout_secs(timeout_secs)
        .spawn()
}

/// A running `mosquitto_sub`; killed on drop.
#[derive(Debug)]
pub struct SubHandle {
    child: Option<Child>,
    client_id: String,
    messages: Arc<Mutex<Vec<Message>>>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
    log_file: PathBuf,
}

impl SubHandle {
    /// Its client identifier (`harness-sub-PID-N` unless set), as it appears in the broker log.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The messages received so far.
    pub fn received(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many SUBACKs the broker has sent to this client so far (one per (re)connection).
    pub fn subacks(&self) -> usize {
        let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let needle = format!("Sending SUBACK to {}", self.client_id);
        log.lines().filter(|l| l.ends_with(&needle)).count()
    }

    /// Waits until the broker has sent `n` SUBACKs to this client (e.g. 2 after a reconnect).
    /// Panics, with the broker log, if it exits first or `timeout` passes.
    #[track_caller]
    pub fn wait_for_subacks(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.subacks() >= n {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
                let out = self.finish_now();
                panic!(
                    "mosquitto_sub {} got no SUBACK #{n} ({}): {out:?}\n--- broker log ---\n{log}",
                    self.client_id,
                    if exited.is_some() {
                        "it exited"
                    } else {
                        "timed out"
                    },
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; returns those received.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until it exits (after `-C` messages or `-W` seconds; killed 5 s after that at the
    /// latest) and returns every message it printed.
    pub fn wait(self) -> Vec<Message> {
        self.wait_output().0
    }

    /// Like [`wait`](Self::wait), also returning how it exited (and its stderr).
    pub fn wait_output(mut self) -> (Vec<Message>, ToolOutput) {
        let out = match self.child.take() {
            Some(child) => {
                let timeout = self.deadline.saturating_duration_since(Instant::now());
                finish_with(child, timeout, self.stderr.take())
            }
            None => ToolOutput {
                status: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
            },
        };
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        (self.received(), out)
    }

    /// [`wait`](Self::wait) on tokio's blocking pool, for async tests on a tokio runtime.
    pub async fn wait_async(self) -> Vec<Message> {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .expect("mosquitto_sub waiter panicked")
    }

    /// Kills it now and returns what it has received.
    pub fn kill(mut self) -> Vec<Message> {
        let _ = self.finish_now();
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        self.received()
    }

    fn finish_now(&mut self) -> ToolOutput {
        match self.child.take() {
            Some(child) => finish_with(child, Duration::ZERO, self.stderr.take()),
            None => ToolOutput {
                status: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }
}

impl Drop for SubHandle {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` (killing it after `timeout`), collecting stdout and stderr.
fn finish(mut child: Child, timeout: Duration) -> ToolOutput {
    let stdout = child.stdout.take().map(|mut out| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
    });
    let stderr = child.stderr.take().map(|mut err| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    let mut out = finish_with(child, timeout, stderr);
    out.stdout = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    out
}

fn finish_with(
    mut child: Child,
    timeout: Duration,
    stderr: Option<JoinHandle<String>>,
) -> ToolOutput {
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                // Over time (or asked to stop now): kill it; it has no exit status of its own.
                timed_out = !timeout.is_zero();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    ToolOutput {
        status,
        timed_out,
        stdout: String::new(),
        stderr: stderr.and_then(|t| t.join().ok()).unwrap_or_default(),
    }
}
