//! Connection options of the `std` runtimes: the broker URL, identity, limits and TLS files.
//!
//! Pure data and parsing: the runtimes read files and the environment and open sockets.
//!
//! With the `config` feature, `Options::from_toml_str` reads a TOML document and
//! `Options::apply_env` applies `MQTT_*` variables (see `ENV_VARS`).

use std::fmt;
use std::format;
use std::path::PathBuf;
use std::string::{String, ToString};
use std::time::Duration;
use std::vec::Vec;

use bytes::Bytes;
use mqtt_proto::{ProtocolVersion, QoS, TopicName};

use mqtt_session::engine::{Identity, LastWill};
use mqtt_session::{Backoff, Config};

/// How to reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP (`mqtt://`, `tcp://`).
    Tcp,
    /// TLS over TCP (`mqtts://`, `ssl://`, `tls://`).
    Tls,
    /// WebSocket (`ws://`).
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

impl Scheme {
    /// Whether the connection is encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 1883,
            Scheme::Tls => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// A broker address parsed from a URL such as `mqtt://user:pass@host:1883`.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// WebSocket path (`/mqtt` by default).
    pub path: String,
    /// User name from the URL.
    pub username: Option<String>,
    /// Password from the URL.
    pub password: Option<String>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Display for Broker {
    /// The URL without credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Tcp => "mqtt",
            Scheme::Tls => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}", self.port)?;
        if matches!(self.scheme, Scheme::Ws | Scheme::Wss) {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// Why options are not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError(pub String);

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionsError {}

fn bad(msg: impl Into<String>) -> OptionsError {
    OptionsError(msg.into())
}

/// Decodes `%XX` escapes in a URL's user or password.
fn percent_decode(s: &str) -> Result<String, OptionsError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let v = std::str::from_utf8(&hex)
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent escape in URL credentials: {s:?}")))?;
            out.push(v);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| bad("URL credentials are not UTF-8"))
}

impl std::str::FromStr for Broker {
    type Err = OptionsError;

    fn from_str(url: &str) -> Result<Self, OptionsError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(format!(
                "broker URL {url:?} has no scheme (mqtt://, mqtts://, ws://, wss://)"
            ))
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Tcp,
            "mqtts" | "ssl" | "tls" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            other => {
                return Err(bad(format!(
                    "unknown URL scheme {other:?} (use mqtt, mqtts, ws or wss)"
                )));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decode(user)?), Some(percent_decode(pass)?)),
                None => (Some(percent_decode(u)?), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(format!("unclosed '[' in broker URL {url:?}")))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad(format!("broker URL {url:?} has no host")));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(format!("bad port {p:?} in broker URL {url:?}")))?,
            None => scheme.default_port(),
        };
        let path = if path.is_empty() { "/mqtt" } else { path };
        Ok(Broker {
            scheme,
            host: host.to_string(),
            port,
            path: path.to_string(),
            username,
            password,
        })
    }
}

/// TLS settings: which roots to trust and the client certificate for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust instead of the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Name to verify in the server's certificate, when it differs from the URL's host.
    pub server_name: Option<String>,
}

/// Everything needed to run a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    /// The broker.
    pub broker: Broker,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Client identifier (empty: the server assigns one; needs clean start before MQTT 5).
    pub client_id: String,
    /// User name (overrides the URL's).
    pub username: Option<String>,
    /// Password (overrides the URL's); never logged.
    pub password: Option<String>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Start a new session on every connect.
    pub clean_start: bool,
    /// MQTT 5 session expiry (zero: ends with the connection).
    pub session_expiry: Duration,
    /// Most unacknowledged QoS 1/2 publishes in flight (default 20). At MQTT 5 the broker's
    /// Receive Maximum lowers it further; MQTT 3.1.1 has no way to announce a limit, and
    /// mosquitto 2.0 (default `max_inflight_messages 20`) acknowledges but drops QoS 2
    /// messages beyond it, so the default stays within it.
    pub inflight: u16,
    /// Largest packet accepted from the server.
    pub max_packet_size: u32,
    /// Queue capacity: messages and bytes held while offline or in flight.
    pub queue_messages: usize,
    /// Queue capacity in bytes (encoded packets).
    pub queue_bytes: usize,
    /// Time allowed for TCP, TLS and WebSocket set-up.
    pub connect_timeout: Duration,
    /// How long to wait for a PINGRESP or CONNACK.
    pub response_timeout: Duration,
    /// Shortest reconnect back-off.
    pub backoff_min: Duration,
    /// Longest reconnect back-off.
    pub backoff_max: Duration,
    /// Handlers running at once.
    pub handler_concurrency: usize,
    /// Last will.
    pub will: Option<LastWill>,
    /// TLS settings (used by `mqtts://` and `wss://`).
    pub tls: TlsOptions,
    /// The file that keeps unacknowledged and queued messages and received QoS 2 ids across
    /// restarts (see [`Durability`]); `None` keeps them in memory only.
    pub store: Option<PathBuf>,
    /// How durable a publish is when `publish().await` returns, with a store.
    pub durability: Durability,
    /// When received QoS 1/2 messages are acknowledged.
    pub ack: AckMode,
}

/// When the client acknowledges a received QoS 1/2 message (PUBACK or PUBREC).
///
/// Acknowledging later never reorders delivery (handlers start as messages arrive), but an
/// unacknowledged message holds one of the Receive Maximum slots the client announces (128):
/// a broker sends at most that many before it waits for acknowledgments, so slow handlers
/// slow the stream instead of piling up messages in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// On arrival, before any handler runs (the broker's resend is needed only if the
    /// connection drops before the acknowledgment is written).
    #[default]
    OnReceipt,
    /// Once every matching handler has finished: successfully, with success; if one failed
    /// (error or panic), with "unspecified error" (MQTT 5; 3.1.1 has no negative
    /// acknowledgment). If the process dies first, a broker keeping the session sends the
    /// message again on the next connection: handlers see it at least once. With a store in
    /// [`Durability::Sync`], a QoS 2 message that was being handled comes again with
    /// `Message::redelivered` set, and no other QoS 2 message comes twice.
    AfterHandlers,
    /// Only when the application calls `Client::ack` / `Client::ack_with` for the message.
    Manual,
}

/// How durable the client's state is (with [`Options::store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every QoS 1/2 publish is synced to the store before `publish().await` returns;
    /// concurrent publishers share one sync (group commit). A crash loses nothing that
    /// `publish()` returned for.
    Sync,
    /// Records are written and synced in the background within this delay; a crash loses at
    /// most the messages of that last interval (and never sends one it has not recorded).
    Relaxed(Duration),
    /// Nothing is written: a restart loses every queued and unacknowledged message.
    #[default]
    Memory,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("broker", &self.broker)
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("inflight", &self.inflight)
            .field("max_packet_size", &self.max_packet_size)
            .field("queue_messages", &self.queue_messages)
            .field("queue_bytes", &self.queue_bytes)
            .field("tls", &self.tls)
            .field("store", &self.store)
            .field("durability", &self.durability)
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Options for the broker at `url` (e.g. `mqtt://localhost:1883`), with defaults.
    pub fn new(url: &str) -> Result<Self, OptionsError> {
        let broker: Broker = url.parse()?;
        Ok(Options {
            broker,
            version: ProtocolVersion::V5,
            client_id: String::new(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            clean_start: true,
            session_expiry: Duration::ZERO,
            inflight: 20,
            max_packet_size: 1024 * 1024,
            queue_messages: 65_536,
            queue_bytes: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            handler_concurrency: 64,
            will: None,
            tls: TlsOptions::default(),
            store: None,
            durability: Durability::Memory,
            ack: AckMode::OnReceipt,
        })
    }

    /// Keeps the client's state in the store file at `path` (created if missing), synced on
    /// every publish unless [`Options::store_durability`] says otherwise. Resuming after a
    /// restart needs the same client id (and a persistent session to resend with the same
    /// packet ids).
    pub fn store(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(path.into());
        if self.durability == Durability::Memory {
            self.durability = Durability::Sync;
        }
        self
    }

    /// Sets when received QoS 1/2 messages are acknowledged.
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.ack = mode;
        self
    }

    /// Sets how durable the store is ([`Durability::Memory`] ignores the store).
    pub fn store_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the client identifier.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets the protocol version.
    pub fn version(mut self, v: ProtocolVersion) -> Self {
        self.version = v;
        self
    }

    /// Sets user name and password.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the keep-alive interval.
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    /// Keeps the session across connections (clean start off) for `expiry` (MQTT 5).
    pub fn persistent_session(mut self, expiry: Duration) -> Self {
        self.clean_start = false;
        self.session_expiry = expiry;
        self
    }

    /// Sets the last will.
    pub fn will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        self.will = Some(LastWill {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
        });
        self
    }

    /// Trusts the CA certificates in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (mutual TLS).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.cert_file = Some(cert.into());
        self.tls.key_file = Some(key.into());
        self
    }

    /// Sets the reconnect back-off bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Sets the queue capacity.
    pub fn queue(mut self, messages: usize, bytes: usize) -> Self {
        self.queue_messages = messages;
        self.queue_bytes = bytes;
        self
    }

    /// Checks the options for mistakes a connection attempt would only find later.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.client_id.is_empty() && !self.clean_start && !self.version.is_v5() {
            return Err(bad(
                "a persistent session (clean start off) needs a client id before MQTT 5",
            ));
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return Err(bad("keep-alive is at most 65535 s"));
        }
        if self.session_expiry.as_secs() > u64::from(u32::MAX) {
            return Err(bad("session expiry is at most 4294967295 s"));
        }
        if self.inflight == 0 {
            return Err(bad("inflight must be at least 1"));
        }
        if self.max_packet_size < 128 {
            return Err(bad("max packet size must be at least 128 bytes"));
        }
        if self.queue_messages == 0 || self.queue_bytes < 1024 {
            return Err(bad("the queue needs at least 1 message and 1 KiB"));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(bad("back-off needs 0 < min <= max"));
        }
        if self.handler_concurrency == 0 {
            return Err(bad("handler concurrency must be at least 1"));
        }
        if let Some(w) = &self.will {
            TopicName::new(&w.topic).map_err(|e| bad(format!("will topic {:?}: {e}", w.topic)))?;
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(bad(
                "a client certificate needs both the certificate and the key file",
            ));
        }
        if !self.broker.scheme.is_tls()
            && (self.tls.ca_file.is_some() || self.tls.cert_file.is_some())
        {
            return Err(bad(format!(
                "TLS files given but the broker URL {} is not encrypted: use mqtts:// or wss://",
                self.broker
            )));
        }
        Ok(())
    }

    /// The user name in force: the explicit one, else the URL's.
    pub fn effective_username(&self) -> Option<&str> {
        self.username.as_deref().or(self.broker.username.as_deref())
    }

    /// The password in force: the explicit one, else the URL's.
    pub fn effective_password(&self) -> Option<&str> {
        self.password.as_deref().or(self.broker.password.as_deref())
    }

    /// The session configuration these options give.
    pub fn session_config(&self) -> Config {
        Config {
            version: self.version,
            keep_alive: u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX),
            clean_start: self.clean_start,
            session_expiry: u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX),
            inflight: self.inflight,
            max_packet_size: self.max_packet_size,
            response_timeout: self.response_timeout,
            // The session tracks 1024; announcing 128 tolerates brokers that overshoot.
            receive_maximum: 128,
            manual_acks: self.ack != AckMode::OnReceipt,
            ..Config::default()
        }
    }

    /// The identity sent with every CONNECT.
    pub fn identity(&self) -> Identity {
        Identity {
            client_id: self.client_id.clone(),
            username: self.effective_username().map(str::to_string),
            password: self.effective_password().map(|p| p.as_bytes().to_vec()),
            will: self.will.clone(),
        }
    }

    /// The reconnect back-off, with jitter from `seed`.
    pub fn backoff_policy(&self, seed: u64) -> Backoff {
        Backoff::new(self.backoff_min, self.backoff_max, seed)
    }
}

/// The broker URL used when neither a file nor the environment names one.
pub const DEFAULT_URL: &str = "mqtt://localhost:1883";

/// The environment variables [`Options::apply_env`] reads, with what they set.
#[cfg(feature = "config")]
pub const ENV_VARS: &[(&str, &str)] = &[
    ("MQTT_URL", "broker URL (mqtt://, mqtts://, ws://, wss://)"),
    ("MQTT_CLIENT_ID", "client identifier"),
    ("MQTT_USERNAME", "user name"),
    ("MQTT_PASSWORD", "password"),
    ("MQTT_VERSION", "protocol version: 3.1.1 or 5"),
    ("MQTT_KEEP_ALIVE", "keep-alive in seconds"),
    ("MQTT_CLEAN_START", "true or false"),
    ("MQTT_SESSION_EXPIRY", "session expiry in seconds (MQTT 5)"),
    ("MQTT_INFLIGHT", "most unacknowledged QoS 1/2 messages"),
    ("MQTT_MAX_PACKET_SIZE", "largest packet accepted, in bytes"),
    ("MQTT_QUEUE_MESSAGES", "queue capacity in messages"),
    ("MQTT_QUEUE_BYTES", "queue capacity in bytes"),
    (
        "MQTT_CONNECT_TIMEOUT",
        "transport set-up timeout in seconds",
    ),
    ("MQTT_BACKOFF_MIN_MS", "shortest reconnect back-off in ms"),
    ("MQTT_BACKOFF_MAX_MS", "longest reconnect back-off in ms"),
    ("MQTT_HANDLER_CONCURRENCY", "handlers running at once"),
    ("MQTT_CA_FILE", "PEM file of CA certificates to trust"),
    ("MQTT_CERT_FILE", "PEM client certificate (mutual TLS)"),
    ("MQTT_KEY_FILE", "PEM client key (mutual TLS)"),
    (
        "MQTT_SERVER_NAME",
        "name to verify in the server certificate",
    ),
];

/// Parses a protocol version as users write it: `3.1.1` (or `311`, `4`) and `5` (or `5.0`).
pub fn parse_version(s: &str) -> Result<ProtocolVersion, OptionsError> {
    let t = s.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    match t {
        "3.1.1" | "311" | "4" => Ok(ProtocolVersion::V311),
        "5" | "5.0" | "50" => Ok(ProtocolVersion::V5),
        _ => Err(bad(format!(
            "unknown protocol version {s:?} (use 3.1.1 or 5)"
        ))),
    }
}

#[cfg(feature = "config")]
mod file {
    use std::string::String;

    use serde::Deserialize;

    /// A version written as a string (`"3.1.1"`) or a number (`5`, `311`).
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Version {
        Text(String),
        Number(i64),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Tls {
        pub ca_file: Option<String>,
        pub cert_file: Option<String>,
        pub key_file: Option<String>,
        pub server_name: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Will {
        pub topic: String,
        #[serde(default)]
        pub payload: String,
        #[serde(default)]
        pub qos: u8,
        #[serde(default)]
        pub retain: bool,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        pub url: Option<String>,
        pub client_id: Option<String>,
        pub version: Option<Version>,
        pub username: Option<String>,
        pub password: Option<String>,
        pub keep_alive_secs: Option<u64>,
        pub clean_start: Option<bool>,
        pub session_expiry_secs: Option<u64>,
        pub inflight: Option<u16>,
        pub max_packet_size: Option<u32>,
        pub queue_messages: Option<usize>,
        pub queue_bytes: Option<usize>,
        pub connect_timeout_secs: Option<u64>,
        pub backoff_min_ms: Option<u64>,
        pub backoff_max_ms: Option<u64>,
        pub handler_concurrency: Option<usize>,
        pub tls: Option<Tls>,
        pub will: Option<Will>,
    }
}

#[cfg(feature = "config")]
fn parse_env<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T, OptionsError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(format!("{name}={value:?}: expected {what}")))
}

#[cfg(feature = "config")]
fn parse_bool(name: &str, value: &str) -> Result<bool, OptionsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(format!("{name}={value:?}: expected true or false"))),
    }
}

#[cfg(feature = "config")]
impl Options {
    /// Options from a TOML document, over the defaults, validated.
    ///
    /// Keys (all optional): `url` (default [`DEFAULT_URL`]), `client_id`, `version` (`"3.1.1"`
    /// or `"5"`), `username`, `password`, `keep_alive_secs`, `clean_start`,
    /// `session_expiry_secs`, `inflight`, `max_packet_size`, `queue_messages`, `queue_bytes`,
    /// `connect_timeout_secs`, `backoff_min_ms`, `backoff_max_ms`, `handler_concurrency`; a
    /// `[tls]` table with `ca_file`, `cert_file`, `key_file`, `server_name`; a `[will]` table
    /// with `topic`, `payload`, `qos`, `retain`. An unknown key is an error that names it.
    ///
    /// ```
    /// use mqtt_client::options::Options;
    /// let o = Options::from_toml_str("url = \"mqtts://broker:8883\"\nclient_id = \"a\"\n[tls]\nca_file = \"/ca.pem\"")?;
    /// assert_eq!(o.broker.port, 8883);
    /// # Ok::<(), mqtt_client::options::OptionsError>(())
    /// ```
    pub fn from_toml_str(toml: &str) -> Result<Options, OptionsError> {
        let o = Options::new(DEFAULT_URL)?.merge_toml_str(toml)?;
        o.validate()?;
        Ok(o)
    }

    /// Applies the keys of a TOML document (see [`Options::from_toml_str`]) without
    /// validating the result, for layering file, environment and command line.
    pub fn merge_toml_str(mut self, toml: &str) -> Result<Options, OptionsError> {
        let f: file::File =
            toml::from_str(toml).map_err(|e| bad(format!("config: {}", e.to_string().trim())))?;
        if let Some(url) = f.url {
            self.broker = url.parse()?;
        }
        if let Some(v) = f.client_id {
            self.client_id = v;
        }
        if let Some(v) = f.version {
            self.version = match v {
                file::Version::Text(s) => parse_version(&s),
                file::Version::Number(n) => parse_version(&n.to_string()),
            }
            .map_err(|e| bad(format!("config key `version`: {e}")))?;
        }
        if let Some(v) = f.username {
            self.username = Some(v);
        }
        if let Some(v) = f.password {
            self.password = Some(v);
        }
        if let Some(v) = f.keep_alive_secs {
            self.keep_alive = Duration::from_secs(v);
        }
        if let Some(v) = f.clean_start {
            self.clean_start = v;
        }
        if let Some(v) = f.session_expiry_secs {
            self.session_expiry = Duration::from_secs(v);
        }
        if let Some(v) = f.inflight {
            self.inflight = v;
        }
        if let Some(v) = f.max_packet_size {
            self.max_packet_size = v;
        }
        if let Some(v) = f.queue_messages {
            self.queue_messages = v;
        }
        if let Some(v) = f.queue_bytes {
            self.queue_bytes = v;
        }
        if let Some(v) = f.connect_timeout_secs {
            self.connect_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.backoff_min_ms {
            self.backoff_min = Duration::from_millis(v);
        }
        if let Some(v) = f.backoff_max_ms {
            self.backoff_max = Duration::from_millis(v);
        }
        if let Some(v) = f.handler_concurrency {
            self.handler_concurrency = v;
        }
        if let Some(t) = f.tls {
            if let Some(v) = t.ca_file {
                self.tls.ca_file = Some(v.into());
            }
            if let Some(v) = t.cert_file {
                self.tls.cert_file = Some(v.into());
            }
            if let Some(v) = t.key_file {
                self.tls.key_file = Some(v.into());
            }
            if let Some(v) = t.server_name {
                self.tls.server_name = Some(v);
            }
        }
        if let Some(w) = f.will {
            let qos = QoS::from_u8(w.qos).ok_or_else(|| {
                bad(format!(
                    "config key `will.qos`: {} is not a QoS (0, 1 or 2)",
                    w.qos
                ))
            })?;
            self = self.will(w.topic, w.payload.into_bytes(), qos, w.retain);
        }
        Ok(self)
    }

    /// Applies the `MQTT_*` variables among `vars` (see [`ENV_VARS`]), then validates.
    ///
    /// Pass `std::env::vars()`; other variables are ignored, and so are empty values. A value
    /// that does not parse is an error naming the variable.
    pub fn apply_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Options, OptionsError> {
        let o = self.merge_env(vars)?;
        o.validate()?;
        Ok(o)
    }

    /// [`Options::apply_env`] without validating the result, for layering.
    pub fn merge_env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Options, OptionsError> {
        let secs = |n: &str, v: &str| parse_env::<u64>(n, v, "a number of seconds");
        let ms = |n: &str, v: &str| parse_env::<u64>(n, v, "a number of milliseconds");
        for (name, value) in vars {
            if !name.starts_with("MQTT_") || value.is_empty() {
                continue;
            }
            let (n, v) = (name.as_str(), value.as_str());
            match n {
                "MQTT_URL" => {
                    self.broker = v.parse().map_err(|e| bad(format!("{n}: {e}")))?;
                }
                "MQTT_CLIENT_ID" => self.client_id = value,
                "MQTT_USERNAME" => self.username = Some(value),
                "MQTT_PASSWORD" => self.password = Some(value),
                "MQTT_VERSION" => {
                    self.version = parse_version(v).map_err(|e| bad(format!("{n}: {e}")))?;
                }
                "MQTT_KEEP_ALIVE" => self.keep_alive = Duration::from_secs(secs(n, v)?),
                "MQTT_CLEAN_START" => self.clean_start = parse_bool(n, v)?,
                "MQTT_SESSION_EXPIRY" => self.session_expiry = Duration::from_secs(secs(n, v)?),
                "MQTT_INFLIGHT" => self.inflight = parse_env(n, v, "a number from 1 to 65535")?,
                "MQTT_MAX_PACKET_SIZE" => {
                    self.max_packet_size = parse_env(n, v, "a number of bytes")?;
                }
                "MQTT_QUEUE_MESSAGES" => {
                    self.queue_messages = parse_env(n, v, "a number of messages")?;
                }
                "MQTT_QUEUE_BYTES" => self.queue_bytes = parse_env(n, v, "a number of bytes")?,
                "MQTT_CONNECT_TIMEOUT" => {
                    self.connect_timeout = Duration::from_secs(secs(n, v)?);
                }
                "MQTT_BACKOFF_MIN_MS" => self.backoff_min = Duration::from_millis(ms(n, v)?),
                "MQTT_BACKOFF_MAX_MS" => self.backoff_max = Duration::from_millis(ms(n, v)?),
                "MQTT_HANDLER_CONCURRENCY" => {
                    self.handler_concurrency = parse_env(n, v, "a number")?;
                }
                "MQTT_CA_FILE" => self.tls.ca_file = Some(value.into()),
                "MQTT_CERT_FILE" => self.tls.cert_file = Some(value.into()),
                "MQTT_KEY_FILE" => self.tls.key_file = Some(value.into()),
                "MQTT_SERVER_NAME" => self.tls.server_name = Some(value),
                // Other tools use the prefix too: not ours to refuse.
                _ => {}
            }
        }
        Ok(self)
    }
}

/// Options from a TOML file (when given) and the process's `MQTT_*` environment variables,
/// over the defaults, validated. See [`Options::from_toml_str`] for the keys and [`ENV_VARS`]
/// for the variables; the environment wins over the file.
#[cfg(feature = "config")]
pub fn load_options(path: Option<&std::path::Path>) -> Result<Options, OptionsError> {
    let options = load_options_unvalidated(path)?;
    options.validate()?;
    Ok(options)
}

/// [`load_options`] without the final validation, for callers that layer more settings (such
/// as command-line flags) on top and validate at the end.
#[cfg(feature = "config")]
pub fn load_options_unvalidated(path: Option<&std::path::Path>) -> Result<Options, OptionsError> {
    let mut options = Options::new(DEFAULT_URL)?;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| {
            OptionsError(format!("cannot read config file {}: {e}", path.display()))
        })?;
        options = options
            .merge_toml_str(&text)
            .map_err(|e| OptionsError(format!("{}: {e}", path.display())))?;
    }
    options.merge_env(std::env::vars())
}

#[cfg(all(test, feature = "config"))]
mod config_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_every_toml_key() {
        let o = Options::from_toml_str(
            r#"
            url = "mqtts://broker.example:8884"
            client_id = "dev-1"
            version = "3.1.1"
            username = "u"
            password = "p"
            keep_alive_secs = 15
            clean_start = false
            session_expiry_secs = 3600
            inflight = 10
            max_packet_size = 65536
            queue_messages = 100
            queue_bytes = 100000
            connect_timeout_secs = 3
            backoff_min_ms = 50
            backoff_max_ms = 5000
            handler_concurrency = 4
            [tls]
            ca_file = "/etc/ca.pem"
            cert_file = "/etc/c.pem"
            key_file = "/etc/k.pem"
            server_name = "broker"
            [will]
            topic = "dev/1/status"
            payload = "offline"
            qos = 1
            retain = true
            "#,
        )
        .unwrap();
        assert_eq!(o.broker.scheme, Scheme::Tls);
        assert_eq!(o.broker.port, 8884);
        assert_eq!(o.client_id, "dev-1");
        assert_eq!(o.version, ProtocolVersion::V311);
        assert_eq!(o.effective_username(), Some("u"));
        assert_eq!(o.effective_password(), Some("p"));
        assert_eq!(o.keep_alive, Duration::from_secs(15));
        assert!(!o.clean_start);
        assert_eq!(o.session_expiry, Duration::from_secs(3600));
        assert_eq!((o.inflight, o.max_packet_size), (10, 65536));
        assert_eq!((o.queue_messages, o.queue_bytes), (100, 100_000));
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.backoff_min, Duration::from_millis(50));
        assert_eq!(o.backoff_max, Duration::from_millis(5000));
        assert_eq!(o.handler_concurrency, 4);
        assert_eq!(o.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(o.tls.server_name.as_deref(), Some("broker"));
        let w = o.will.unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
            ("dev/1/status", &b"offline"[..], QoS::AtLeastOnce, true)
        );
    }

    #[test]
    fn empty_toml_gives_defaults() {
        let o = Options::from_toml_str("").unwrap();
        assert_eq!(o, Options::new(DEFAULT_URL).unwrap());
        let o = Options::from_toml_str("version = 5").unwrap();
        assert_eq!(o.version, ProtocolVersion::V5);
    }

    #[test]
    fn toml_errors_name_the_problem() {
        let cases = [
            ("colour = \"red\"", "colour"),
            ("[tls]\ncafile = \"x\"", "cafile"),
            ("[will]\ntopic = \"t\"\nqos = 3", "will.qos"),
            ("[will]\ntopic = \"a/#\"", "will topic"),
            ("version = \"4.0\"", "version"),
            ("inflight = \"many\"", "inflight"),
            ("inflight = 0", "inflight"),
            ("url = \"http://x\"", "scheme"),
            (
                "url = \"mqtt://h\"\n[tls]\nca_file = \"/ca\"",
                "not encrypted",
            ),
            ("backoff_min_ms = 10\nbackoff_max_ms = 1", "back-off"),
            ("keep_alive_secs = 70000", "keep-alive"),
            ("url = ", "config"),
        ];
        for (toml, needle) in cases {
            let e = Options::from_toml_str(toml).unwrap_err().0;
            assert!(e.contains(needle), "{toml:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn env_overrides_and_validates() {
        let o = Options::from_toml_str("client_id = \"file\"\nkeep_alive_secs = 5")
            .unwrap()
            .apply_env(env(&[
                ("MQTT_URL", "mqtts://h:9999"),
                ("MQTT_CLIENT_ID", "env"),
                ("MQTT_USERNAME", "user"),
                ("MQTT_PASSWORD", "pw"),
                ("MQTT_VERSION", "3.1.1"),
                ("MQTT_KEEP_ALIVE", "60"),
                ("MQTT_CLEAN_START", "false"),
                ("MQTT_INFLIGHT", "7"),
                ("MQTT_CA_FILE", "/ca.pem"),
                ("MQTT_CERT_FILE", "/c.pem"),
                ("MQTT_KEY_FILE", "/k.pem"),
                ("MQTT_SERVER_NAME", "srv"),
                ("MQTT_SOMETHING_ELSE", "ignored"),
                ("MQTT_QUEUE_BYTES", ""),
                ("HOME", "/root"),
            ]))
            .unwrap();
        assert_eq!((o.broker.host.as_str(), o.broker.port), ("h", 9999));
        assert_eq!(o.client_id, "env");
        assert_eq!(o.effective_username(), Some("user"));
        assert_eq!(o.effective_password(), Some("pw"));
        assert_eq!(o.version, ProtocolVersion::V311);
        assert_eq!(o.keep_alive, Duration::from_secs(60));
        assert!(!o.clean_start);
        assert_eq!(o.inflight, 7);
        assert_eq!(o.tls.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(o.tls.server_name.as_deref(), Some("srv"));
        assert_eq!(
            o.queue_bytes,
            Options::new(DEFAULT_URL).unwrap().queue_bytes
        );
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let base = Options::new(DEFAULT_URL).unwrap();
        let cases = [
            ("MQTT_KEEP_ALIVE", "soon"),
            ("MQTT_KEEP_ALIVE", "-1"),
            ("MQTT_VERSION", "6"),
            ("MQTT_URL", "localhost:1883"),
            ("MQTT_INFLIGHT", "70000"),
            ("MQTT_CLEAN_START", "maybe"),
            ("MQTT_BACKOFF_MIN_MS", "1.5"),
        ];
        for (k, v) in cases {
            let e = base.clone().apply_env(env(&[(k, v)])).unwrap_err().0;
            assert!(e.contains(k), "{k}={v}: {e:?}");
        }
        // Valid values, invalid combination: validation says why.
        let e = base
            .apply_env(env(&[("MQTT_CA_FILE", "/ca.pem")]))
            .unwrap_err()
            .0;
        assert!(e.contains("not encrypted"), "{e}");
    }

    #[test]
    fn versions_parse() {
        for (s, v) in [
            ("3.1.1", ProtocolVersion::V311),
            ("311", ProtocolVersion::V311),
            ("v5", ProtocolVersion::V5),
            ("5.0", ProtocolVersion::V5),
        ] {
            assert_eq!(parse_version(s).unwrap(), v);
        }
        assert!(parse_version("3").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let b: Broker = "mqtt://user:p%40ss@example.com:1884".parse().unwrap();
        assert_eq!(b.scheme, Scheme::Tcp);
        assert_eq!(b.host, "example.com");
        assert_eq!(b.port, 1884);
        assert_eq!(b.username.as_deref(), Some("user"));
        assert_eq!(b.password.as_deref(), Some("p@ss"));
        let b: Broker = "mqtts://[::1]".parse().unwrap();
        assert_eq!(
            (b.scheme, b.host.as_str(), b.port),
            (Scheme::Tls, "::1", 8883)
        );
        let b: Broker = "wss://h/ws".parse().unwrap();
        assert_eq!(
            (b.scheme, b.port, b.path.as_str()),
            (Scheme::Wss, 443, "/ws")
        );
        let b: Broker = "ws://h:9001".parse().unwrap();
        assert_eq!((b.port, b.path.as_str()), (9001, "/mqtt"));
        assert_eq!(b.to_string(), "ws://h:9001/mqtt");
    }

    #[test]
    fn refuses_bad_urls() {
        for url in [
            "localhost:1883",
            "http://h",
            "mqtt://:1883",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://[::1",
        ] {
            assert!(url.parse::<Broker>().is_err(), "{url}");
        }
    }

    #[test]
    fn password_is_not_printed() {
        let o = Options::new("mqtt://u:secret@h")
            .unwrap()
            .credentials("u", "hunter2");
        let s = format!("{o:?}");
        assert!(!s.contains("secret") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn validation_catches_plaintext_with_tls_files() {
        let o = Options::new("mqtt://h").unwrap().ca_file("/ca.pem");
        assert!(o.validate().unwrap_err().0.contains("not encrypted"));
        assert!(
            Options::new("mqtts://h")
                .unwrap()
                .ca_file("/ca.pem")
                .validate()
                .is_ok()
        );
    }
}
