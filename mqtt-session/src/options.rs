//! Connection options of the `std` runtimes: the broker URL, identity, limits and TLS files.
//!
//! Pure data and parsing: the runtimes read files and the environment and open sockets.

use std::fmt;
use std::format;
use std::path::PathBuf;
use std::string::{String, ToString};
use std::time::Duration;
use std::vec::Vec;

use bytes::Bytes;
use mqtt_proto::{ProtocolVersion, QoS, TopicName};

use crate::engine::{Identity, LastWill};
use crate::{Backoff, Config};

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
    /// Most unacknowledged QoS 1/2 publishes in flight.
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
            inflight: 64,
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
        })
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
