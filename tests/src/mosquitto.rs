//! A private mosquitto broker per test, on free loopback ports, killed when dropped.
//!
//! Each [`Broker`] gets a temp dir holding its generated config, its log (`log_type all`, written
//! to a file so it never mixes with test output; see [`Broker::log`]), its password file, TLS
//! files and persistence database. The temp dir outlives [`Broker::kill`] so that
//! [`Broker::restart`] finds the persisted state again, on the same ports.
//!
//! ```no_run
//! use tests::mosquitto::Broker;
//!
//! // Skips the test (or fails it under CI=true) when mosquitto is not installed.
//! let Some(broker) = Broker::start_or_skip() else { return };
//! println!("connect to {}", broker.url());
//!
//! let certs = tests::certs::Certs::generate();
//! let Some(mut secure) = Broker::builder()
//!     .password("user", "secret")
//!     .persistence(true)
//!     .tls(&certs)
//!     .require_certificate(true)
//!     .start_or_skip()
//! else {
//!     return;
//! };
//! secure.kill(); // SIGKILL: a crash
//! secure.restart(); // same ports, same config, persisted state
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::certs::Certs;

/// How long [`BrokerBuilder::start`] and [`Broker::restart`] wait for the ports to accept.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a start is retried when a picked port was taken in the meantime.
const START_ATTEMPTS: usize = 5;

/// Finds a program on the `PATH`, then in `/usr/sbin`, `/usr/local/sbin` and `/sbin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The mosquitto binary (`$MOSQUITTO` if set, else `mosquitto` on the `PATH` or in `/usr/sbin`).
pub fn mosquitto_binary() -> Option<PathBuf> {
    match std::env::var_os("MOSQUITTO") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => find_program("mosquitto"),
    }
}

/// Why a broker did not start.
#[derive(Debug)]
pub enum StartError {
    /// A program is not installed (`mosquitto`, or `mosquitto_passwd` for a password broker).
    Missing(String),
    /// mosquitto is installed but did not come up; the text includes its log and stderr.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing(why) => write!(f, "missing prerequisite: {why}"),
            StartError::Failed(why) => write!(f, "mosquitto did not start: {why}"),
        }
    }
}

impl std::error::Error for StartError {}

/// TLS files for the broker, copied out of a [`Certs`].
#[derive(Clone, Debug)]
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

/// Options of a [`Broker`]; made by [`Broker::builder`], finished by [`BrokerBuilder::start`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct BrokerBuilder {
    users: Vec<(String, String)>,
    persistence: bool,
    tls: Option<TlsFiles>,
    require_certificate: bool,
    websockets: bool,
    extra: Vec<String>,
}

impl BrokerBuilder {
    /// Requires a user name and password (`allow_anonymous false`); call again for more users.
    pub fn password(mut self, user: &str, pass: &str) -> Self {
        self.users.push((user.to_owned(), pass.to_owned()));
        self
    }

    /// Keeps sessions, subscriptions and retained messages in a database in the temp dir, saved
    /// after every change (`autosave_on_changes`), so they survive [`Broker::kill`].
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Adds a TLS listener ([`Broker::tls_port`]) with the server certificate of `certs`.
    pub fn tls(mut self, certs: &Certs) -> Self {
        let pem = certs.pem();
        self.tls = Some(TlsFiles {
            ca: pem.ca.clone(),
            cert: pem.server_cert.clone(),
            key: pem.server_key.clone(),
        });
        self
    }

    /// On the TLS listener, require a client certificate signed by the CA (mutual TLS).
    pub fn require_certificate(mut self, on: bool) -> Self {
        self.require_certificate = on;
        self
    }

    /// Adds a `protocol websockets` listener ([`Broker::ws_port`], [`Broker::ws_url`]). With
    /// [`BrokerBuilder::tls`] it is encrypted too, with the same certificate (`wss://`).
    pub fn websockets(mut self, on: bool) -> Self {
        self.websockets = on;
        self
    }

    /// Appends a raw line to the config, right after the plain TCP listener: global options
    /// (e.g. `max_inflight_messages 5`, `max_keepalive 10`) and options of that listener.
    pub fn config(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    /// Starts the broker and waits until every listener accepts TCP connections.
    ///
    /// Panics if mosquitto is missing or does not come up (with its log in the message).
    #[track_caller]
    pub fn start(self) -> Broker {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start`](Self::start), but a missing mosquitto skips the test instead: it calls
    /// [`crate::skip_or_fail`] (which fails under CI) and returns `None`.
    #[track_caller]
    pub fn start_or_skip(self) -> Option<Broker> {
        match self.try_start() {
            Ok(broker) => Some(broker),
            Err(StartError::Missing(why)) => {
                crate::skip_or_fail(&why);
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts the broker, returning why it did not start instead of panicking.
    pub fn try_start(self) -> Result<Broker, StartError> {
        let binary = mosquitto_binary().ok_or_else(|| {
            StartError::Missing(
                "mosquitto is not installed (apt-get install mosquitto; looked on the PATH and \
                 in /usr/sbin)"
                    .to_owned(),
            )
        })?;
        let io = |what: &str, e: std::io::Error| StartError::Failed(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("mqtt-mosquitto-")
            .tempdir()
            .map_err(|e| io("cannot create a temp dir", e))?;
        let d = dir.path();

        if !self.users.is_empty() {
            let passwd = find_program("mosquitto_passwd").ok_or_else(|| {
                StartError::Missing(
                    "mosquitto_passwd is not installed (it is in the mosquitto package)".to_owned(),
                )
            })?;
            let file = d.join("passwd");
            File::create(&file).map_err(|e| io("cannot create the password file", e))?;
            for (user, pass) in &self.users {
                let out = Command::new(&passwd)
                    .arg("-b")
                    .arg(&file)
                    .arg(user)
                    .arg(pass)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| io("cannot run mosquitto_passwd", e))?;
                if !out.status.success() {
                    return Err(StartError::Failed(format!(
                        "mosquitto_passwd -b failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (name, text) in [
                ("ca.pem", &tls.ca),
                ("server.crt", &tls.cert),
                ("server.key", &tls.key),
            ] {
                fs::write(d.join(name), text).map_err(|e| io("cannot write TLS files", e))?;
            }
        }
        if self.persistence {
            fs::create_dir(d.join("persist"))
                .map_err(|e| io("cannot create the persistence dir", e))?;
        }

        let mut broker = Broker {
            binary,
            config: d.join("mosquitto.conf"),
            log_file: d.join("mosquitto.log"),
            stderr_file: d.join("stderr.log"),
            dir,
            child: None,
            port: 0,
            tls_port: None,
            ws_port: None,
            users: self.users.clone(),
            persistence: self.persistence,
        };
        let listeners = 1 + usize::from(self.tls.is_some()) + usize::from(self.websockets);
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports =
                crate::free_ports(listeners).map_err(|e| io("cannot pick free ports", e))?;
            let mut ports = ports.into_iter();
            broker.port = ports.next().unwrap_or_default();
            broker.tls_port = self.tls.as_ref().and_then(|_| ports.next());
            broker.ws_port = if self.websockets { ports.next() } else { None };
            fs::write(&broker.config, self.config_text(&broker))
                .map_err(|e| io("cannot write mosquitto.conf", e))?;
            match broker.launch() {
                Ok(()) => return Ok(broker),
                Err(e) => {
                    let retry = e.contains("Address already in use");
                    last_error = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(StartError::Failed(last_error))
    }

    fn config_text(&self, broker: &Broker) -> String {
        let d = broker.dir.path();
        let mut c = String::from("# generated by tests::mosquitto\n");
        if running_as_root() {
            // mosquitto drops to the user `mosquitto` when started as root, and that user could
            // not write the log or the database in our temp dir.
            c.push_str("user root\n");
        }
        c.push_str(&format!("log_dest file {}\n", broker.log_file.display()));
        c.push_str("log_type all\nlog_timestamp true\nconnection_messages true\n");
        c.push_str("per_listener_settings false\n");
        if self.users.is_empty() {
            c.push_str("allow_anonymous true\n");
        } else {
            c.push_str("allow_anonymous false\n");
            c.push_str(&format!("password_file {}\n", d.join("passwd").display()));
        }
        if self.persistence {
            c.push_str("persistence true\n");
            c.push_str(&format!(
                "persistence_location {}/\n",
                d.join("persist").display()
            ));
            c.push_str("autosave_on_changes true\nautosave_interval 1\n");
        }
        c.push_str(&format!("\nlistener {} 127.0.0.1\n", broker.port));
        for line in &self.extra {
            c.push_str(line);
            c.push('\n');
        }
        if let Some(port) = broker.tls_port {
            c.push_str(&format!("\nlistener {port} 127.0.0.1\n"));
            c.push_str(&format!("cafile {}\n", d.join("ca.pem").display()));
            c.push_str(&format!("certfile {}\n", d.join("server.crt").display()));
            c.push_str(&format!("keyfile {}\n", d.join("server.key").display()));
            c.push_str(&format!(
                "require_certificate {}\n",
                self.require_certificate
            ));
        }
        if let Some(port) = broker.ws_port {
            // mosquitto 2.0.11 binds a websockets listener to every interface unless the socket
            // domain is set too; with it, the bind address is honoured.
            c.push_str(&format!(
                "\nlistener {port} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n"
            ));
            if self.tls.is_some() {
                c.push_str(&format!("cafile {}\n", d.join("ca.pem").display()));
                c.push_str(&format!("certfile {}\n", d.join("server.crt").display()));
                c.push_str(&format!("keyfile {}\n", d.join("server.key").display()));
            }
        }
        c
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A running mosquitto on loopback, with its own temp dir; killed on drop.
#[derive(Debug)]
pub struct Broker {
    dir: TempDir,
    binary: PathBuf,
    config: PathBuf,
    log_file: PathBuf,
    stderr_file: PathBuf,
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    ws_port: Option<u16>,
    users: Vec<(String, String)>,
    persistence: bool,
}

impl Broker {
    /// The options of a broker to start.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Starts a plain broker (anonymous access, one TCP listener, no persistence).
    ///
    /// Panics if mosquitto is missing or does not start.
    #[track_caller]
    pub fn start() -> Broker {
        Broker::builder().start()
    }

    /// Starts a plain broker, or skips the test when mosquitto is missing (fails under CI).
    ///
    /// `let Some(broker) = Broker::start_or_skip() else { return };`
    #[track_caller]
    pub fn start_or_skip() -> Option<Broker> {
        Broker::builder().start_or_skip()
    }

    /// Whether mosquitto is installed (see [`mosquitto_binary`]).
    pub fn available() -> bool {
        mosquitto_binary().is_some()
    }

    /// The plain MQTT port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port; panics if the broker was built without [`BrokerBuilder::tls`].
    #[track_caller]
    pub fn tls_port(&self) -> u16 {
        self.tls_port
            .expect("this broker has no TLS listener: build it with .tls(&certs)")
    }

    /// The TLS port, `None` without a TLS listener.
    pub fn tls_port_opt(&self) -> Option<u16> {
        self.tls_port
    }

    /// The websockets port; panics if the broker was built without [`BrokerBuilder::websockets`].
    #[track_caller]
    pub fn ws_port(&self) -> u16 {
        self.ws_port
            .expect("this broker has no websockets listener: build it with .websockets(true)")
    }

    /// The host to connect to: `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The plain MQTT listener's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The TLS listener's address; panics without a TLS listener.
    #[track_caller]
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.tls_port()))
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:TLS_PORT`; panics without a TLS listener.
    #[track_caller]
    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port())
    }

    /// `ws://127.0.0.1:WS_PORT/mqtt` (`wss://` for a broker with TLS); panics without a
    /// websockets listener.
    #[track_caller]
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls_port.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/mqtt", self.ws_port())
    }

    /// The first user configured with [`BrokerBuilder::password`], as `(user, password)`.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.users.first().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The broker's temp dir (config, log, password file, TLS files, `persist/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The persistence database (`persist/mosquitto.db`; it exists once something was saved).
    /// `None` without [`BrokerBuilder::persistence`].
    pub fn persistence_file(&self) -> Option<PathBuf> {
        self.persistence
            .then(|| self.dir.path().join("persist").join("mosquitto.db"))
    }

    /// The path of the broker's log file (see [`log`](Self::log)).
    pub fn log_file(&self) -> PathBuf {
        self.log_file.clone()
    }

    /// The generated config text.
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// The broker's log so far (all runs, including after restarts), then anything mosquitto
    /// wrote to stderr. For assertion messages: `assert!(ok, "{}", broker.log())`.
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(&self.log_file).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_file).unwrap_or_default();
        if !stderr.trim().is_empty() {
            text.push_str("\n--- mosquitto stderr ---\n");
            text.push_str(&stderr);
        }
        text
    }

    /// Whether the mosquitto process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id of the running mosquitto.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills mosquitto with SIGKILL (a crash: nothing is saved on the way out) and waits for it.
    /// The temp dir stays, so [`restart`](Self::restart) finds the persisted state.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops mosquitto gracefully with SIGTERM (it saves its database on the way out), waiting
    /// up to 5 s before it falls back to SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts mosquitto again on the same ports with the same config and temp dir, and waits
    /// until it accepts. A still running broker is killed first (SIGKILL).
    ///
    /// Panics (with the log) if it does not come up, retrying for a while when a port is still
    /// held by someone else.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS * 4 {
            match self.launch() {
                Ok(()) => return,
                Err(e) if e.contains("Address already in use") => {
                    last = e;
                    thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("mosquitto did not restart: {e}"),
            }
        }
        panic!("mosquitto did not restart (its ports stayed taken): {last}");
    }

    fn ports(&self) -> Vec<u16> {
        [Some(self.port), self.tls_port, self.ws_port]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Spawns mosquitto with the config file and waits until it runs and every port accepts.
    /// On failure the process is gone and the error holds the log.
    fn launch(&mut self) -> Result<(), String> {
        let log_start = fs::metadata(&self.log_file).map_or(0, |m| m.len() as usize);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_file)
            .map_err(|e| format!("cannot open {}: {e}", self.stderr_file.display()))?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| format!("cannot clone a file handle: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let ports = self.ports();
        loop {
            let exited = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(self.failure(&format!("mosquitto exited ({status})")));
            }
            let log = fs::read(&self.log_file).unwrap_or_default();
            let running = log
                .get(log_start..)
                .is_some_and(|new| String::from_utf8_lossy(new).contains(" running"));
            if running && ports.iter().all(|&p| accepts(p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(self.failure(&format!(
                    "ports {ports:?} did not accept within {START_TIMEOUT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\n--- config {} ---\n{}\n--- log ---\n{}",
            self.config.display(),
            self.config_text(),
            self.log()
        )
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` is accepted.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
