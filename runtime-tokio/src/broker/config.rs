//! The server's settings: a TOML file (`mqtt broker --config FILE`), command-line flags on top.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mqtt_proto::QoS;
use mqtt_session::broker::{Config as CoreConfig, Limits};
use serde::Deserialize;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    /// MQTT over TCP (`mqtt://`).
    Tcp,
    /// MQTT over TLS (`mqtts://`).
    Tls,
    /// MQTT over WebSocket (`ws://`).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`).
    Wss,
}

impl ListenKind {
    /// Whether the listener needs the TLS settings.
    pub fn tls(self) -> bool {
        matches!(self, ListenKind::Tls | ListenKind::Wss)
    }

    fn scheme(self) -> &'static str {
        match self {
            ListenKind::Tcp => "mqtt",
            ListenKind::Tls => "mqtts",
            ListenKind::Ws => "ws",
            ListenKind::Wss => "wss",
        }
    }
}

/// One `--listen URL`: `mqtt://host:port`, `mqtts://`, `ws://host:port/path`, `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The protocol.
    pub kind: ListenKind,
    /// The address to bind (port 0: any free port).
    pub addr: SocketAddr,
    /// The HTTP path of a WebSocket listener (`/mqtt` when the URL has none).
    pub path: String,
}

impl Listen {
    /// Parses a listener URL.
    pub fn parse(url: &str) -> Result<Listen, ConfigError> {
        let bad = |why: &str| ConfigError::new(format!("listen URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host:port"))?;
        let kind = match scheme {
            "mqtt" | "tcp" => ListenKind::Tcp,
            "mqtts" | "ssl" | "tls" => ListenKind::Tls,
            "ws" => ListenKind::Ws,
            "wss" => ListenKind::Wss,
            _ => return Err(bad("the scheme must be mqtt, mqtts, ws or wss")),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !path.is_empty() && !matches!(kind, ListenKind::Ws | ListenKind::Wss) {
            return Err(bad("only ws:// and wss:// listeners have a path"));
        }
        let addr = match host.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let (h, port) = host
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected host:port"))?;
                let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
                let ip = match h {
                    "localhost" => "127.0.0.1",
                    "" => "0.0.0.0",
                    other => other,
                };
                let ip = ip
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| bad("the host must be an IP address or localhost"))?;
                SocketAddr::new(ip, port)
            }
        };
        Ok(Listen {
            kind,
            addr,
            path: if path.is_empty() {
                "/mqtt".into()
            } else {
                path.into()
            },
        })
    }

    /// The listener's URL for `addr` (the bound address when the port was 0).
    pub fn url(&self, addr: SocketAddr) -> String {
        match self.kind {
            ListenKind::Ws | ListenKind::Wss => {
                format!("{}://{addr}{}", self.kind.scheme(), self.path)
            }
            _ => format!("{}://{addr}", self.kind.scheme()),
        }
    }
}

/// TLS settings of the `mqtts://` and `wss://` listeners.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates that client certificates are checked against (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca_file`.
    #[serde(default)]
    pub require_certificate: bool,
    /// Use the client certificate's common name as the user name (needs
    /// `require_certificate`); the CONNECT user name and password are then not checked.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// The broker server's settings (the TOML file's keys are these field names).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Listener URLs (`mqtt://0.0.0.0:1883`, `mqtts://...`, `ws://...:8080/mqtt`, `wss://...`).
    pub listen: Vec<String>,
    /// TLS settings of the TLS listeners.
    pub tls: TlsConfig,
    /// Accept clients that send no user name.
    pub allow_anonymous: bool,
    /// A mosquitto 2.0 password file.
    pub password_file: Option<PathBuf>,
    /// A mosquitto ACL file.
    pub acl_file: Option<PathBuf>,
    /// Highest keep-alive allowed, in seconds (0: any); announced as Server Keep Alive at 5.0.
    pub max_keep_alive: u16,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: u32,
    /// Open connections accepted at once (0: no limit); past it new sockets are closed.
    pub max_connections: usize,
    /// Seconds a connection has for its TLS / WebSocket handshake and its CONNECT.
    pub connect_timeout: u64,
    /// QoS 1/2 publishes a client may have unacknowledged towards the broker.
    pub receive_maximum: u16,
    /// QoS 1/2 messages sent to a client unacknowledged at most (below its Receive Maximum).
    pub max_inflight: u16,
    /// Messages one session may hold (queued and in flight).
    pub max_queued_messages: usize,
    /// Bytes one session may hold (queued and in flight).
    pub max_queued_bytes: usize,
    /// Bytes all sessions together may hold.
    pub max_queued_bytes_total: usize,
    /// How long a publisher is held, in milliseconds, while a connected subscriber it sends
    /// messages to is more than half full (0: never; drop at the limits instead).
    pub backpressure_ms: u32,
    /// PUBLISH packets one connection may send per second on average, in bursts of up to a
    /// second's worth (0: no limit); past it the connection is read more slowly.
    pub max_publish_rate: u32,
    /// Highest topic alias accepted from clients (0: none).
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker uses towards an MQTT 5 client, at most (within the client's
    /// Topic Alias Maximum; 0: none, the default).
    pub outgoing_topic_aliases: u16,
    /// Upper bound on session expiry, in seconds.
    pub max_session_expiry: u32,
    /// Whether clients may publish retained messages.
    pub retain_available: bool,
    /// Whether subscriptions may use `+` and `#`.
    pub wildcard_subscription_available: bool,
    /// Whether `$share/` subscriptions are allowed.
    pub shared_subscription_available: bool,
    /// Address of the HTTP endpoint (`/health`, `/livez`, `/readyz`, `/metrics`).
    pub http_listen: Option<String>,
    /// Seconds between `$SYS/broker/...` updates (0: none).
    pub sys_interval: u64,
    /// The highest QoS accepted and granted, 0 to 2 (announced as Maximum QoS at 5.0).
    pub maximum_qos: u8,
    /// Response Information for 5.0 clients that ask for it (the base of their response
    /// topics).
    pub response_information: Option<String>,
    /// Directory of the durable store (`broker.redb`); unset: memory only.
    pub persistence_dir: Option<PathBuf>,
    /// How durable an acknowledged message is, with `persistence_dir` (default `ack`).
    pub durability: Option<super::Durability>,
    /// With `durability = "relaxed"`: how far behind the disk may be, in milliseconds.
    pub relaxed_delay_ms: u64,
    /// Bridges to other brokers (`[[bridges]]`).
    pub bridges: Vec<super::BridgeConfig>,
    /// Sibling cores the connections are split over, by client id (1: one core state, the
    /// default; experimental). With `persistence_dir`, each sibling keeps a store of its own,
    /// and the number may not change across restarts.
    pub shards: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let core = CoreConfig::default();
        BrokerConfig {
            listen: Vec::new(),
            tls: TlsConfig::default(),
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            max_keep_alive: core.max_keep_alive,
            max_packet_size: core.max_packet_size,
            max_connections: 0,
            connect_timeout: core.connect_timeout.as_secs(),
            receive_maximum: core.receive_maximum,
            max_inflight: core.max_inflight,
            max_queued_messages: core.limits.session_messages,
            max_queued_bytes: core.limits.session_bytes,
            max_queued_bytes_total: core.limits.total_bytes,
            backpressure_ms: core.limits.backpressure_ms,
            max_publish_rate: core.limits.publish_rate,
            topic_alias_maximum: core.topic_alias_maximum,
            outgoing_topic_aliases: core.outgoing_topic_aliases,
            max_session_expiry: core.max_session_expiry,
            retain_available: core.retain_available,
            wildcard_subscription_available: core.wildcard_subscriptions,
            shared_subscription_available: core.shared_subscriptions,
            http_listen: None,
            bridges: Vec::new(),
            sys_interval: 0,
            maximum_qos: 2,
            response_information: None,
            persistence_dir: None,
            durability: None,
            relaxed_delay_ms: 100,
            shards: 1,
        }
    }
}

/// A configuration that cannot be used; the message names the key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl BrokerConfig {
    /// A broker on one `mqtt://` listener (`127.0.0.1:0` picks a free port).
    pub fn new(listen: &str) -> Self {
        BrokerConfig {
            listen: vec![listen.into()],
            ..BrokerConfig::default()
        }
    }

    /// Parses a TOML configuration; an unknown key is an error that names it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new(e.to_string().trim_end().to_owned()))
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        Self::from_toml_str(&text).map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))
    }

    /// The listeners, parsed (`mqtt://0.0.0.0:1883` when none is configured).
    pub fn listeners(&self) -> Result<Vec<Listen>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(vec![Listen::parse("mqtt://0.0.0.0:1883")?]);
        }
        let listeners: Vec<Listen> = self
            .listen
            .iter()
            .map(|u| Listen::parse(u))
            .collect::<Result<_, _>>()?;
        if listeners.iter().any(|l| l.kind.tls())
            && (self.tls.cert_file.is_none() || self.tls.key_file.is_none())
        {
            return Err(ConfigError::new(
                "a mqtts:// or wss:// listener needs tls.cert_file and tls.key_file",
            ));
        }
        Ok(listeners)
    }

    /// Checks the values the core would not catch.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listeners()?;
        if self.receive_maximum == 0 {
            return Err(ConfigError::new("receive_maximum must be at least 1"));
        }
        if self.max_packet_size < 16 {
            return Err(ConfigError::new("max_packet_size must be at least 16"));
        }
        if self.connect_timeout == 0 {
            return Err(ConfigError::new(
                "connect_timeout must be at least 1 second",
            ));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::new("max_inflight must be at least 1"));
        }
        if self.shards == 0 {
            return Err(ConfigError::new("shards must be at least 1"));
        }
        if self.max_queued_messages == 0 {
            return Err(ConfigError::new("max_queued_messages must be at least 1"));
        }
        if (self.tls.require_certificate || self.tls.use_identity_as_username)
            && self.tls.client_ca_file.is_none()
        {
            return Err(ConfigError::new(
                "tls.require_certificate and tls.use_identity_as_username need tls.client_ca_file",
            ));
        }
        if self.tls.use_identity_as_username && !self.tls.require_certificate {
            return Err(ConfigError::new(
                "tls.use_identity_as_username needs tls.require_certificate = true",
            ));
        }
        if self.maximum_qos > 2 {
            return Err(ConfigError::new("maximum_qos must be 0, 1 or 2"));
        }
        if self.durability.is_some() && self.persistence_dir.is_none() {
            return Err(ConfigError::new("durability needs persistence_dir"));
        }
        if self.relaxed_delay_ms == 0 {
            return Err(ConfigError::new("relaxed_delay_ms must be at least 1"));
        }
        for b in &self.bridges {
            b.validate()?;
        }
        if !self.bridges.is_empty() && !self.listeners()?.iter().any(|l| l.kind == ListenKind::Tcp)
        {
            return Err(ConfigError::new(
                "a bridge connects to this broker through a plain mqtt:// listener: add one",
            ));
        }
        if let Some(h) = &self.http_listen {
            h.parse::<SocketAddr>()
                .map_err(|_| ConfigError::new(format!("http_listen {h:?}: expected ip:port")))?;
        }
        Ok(())
    }

    /// The core's configuration.
    pub(crate) fn core(&self, authenticate: bool) -> CoreConfig {
        CoreConfig {
            max_packet_size: self.max_packet_size,
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: self.topic_alias_maximum,
            outgoing_topic_aliases: self.outgoing_topic_aliases,
            max_keep_alive: self.max_keep_alive,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            max_session_expiry: self.max_session_expiry,
            max_inflight: self.max_inflight,
            retain_available: self.retain_available,
            wildcard_subscriptions: self.wildcard_subscription_available,
            shared_subscriptions: self.shared_subscription_available,
            authenticate,
            maximum_qos: QoS::from_u8(self.maximum_qos.min(2)).unwrap_or(QoS::ExactlyOnce),
            response_information: self.response_information.as_deref().map(Box::from),
            sys_interval: (self.sys_interval > 0).then(|| Duration::from_secs(self.sys_interval)),
            limits: Limits {
                session_messages: self.max_queued_messages,
                session_bytes: self.max_queued_bytes,
                // Each sibling holds its share of the broker-wide bound.
                total_bytes: self.max_queued_bytes_total / usize::from(self.shards.max(1)),
                backpressure_ms: self.backpressure_ms,
                publish_rate: self.max_publish_rate,
                ..Limits::default()
            },
            ..CoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        let l = Listen::parse("ws://127.0.0.1:0/x").unwrap();
        assert_eq!((l.kind, l.path.as_str()), (ListenKind::Ws, "/x"));
        let l = Listen::parse("mqtt://localhost:1883").unwrap();
        assert_eq!(l.addr, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(Listen::parse("wss://[::1]:8").unwrap().path, "/mqtt");
        assert!(Listen::parse("http://1.2.3.4:1").is_err());
        assert!(Listen::parse("mqtt://1.2.3.4:1/p").is_err());
        assert!(Listen::parse("mqtt://host.example:1").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = BrokerConfig::from_toml_str("max_keepalive = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_keepalive"), "{e}");
        let e = BrokerConfig::from_toml_str("[tls]\ncert = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("cert"), "{e}");
        let c = BrokerConfig::from_toml_str(
            "listen = [\"mqtt://127.0.0.1:0\"]\nallow_anonymous = false\nmax_keep_alive = 60\n\
             retain_available = false\noutgoing_topic_aliases = 8\n",
        )
        .unwrap();
        assert_eq!(c.core(false).outgoing_topic_aliases, 8);
        assert_eq!(CoreConfig::default().outgoing_topic_aliases, 0);
        assert!(!c.allow_anonymous);
        assert!(!c.core(false).retain_available);
        assert!(c.core(false).shared_subscriptions);
        assert_eq!(c.max_keep_alive, 60);
        assert_eq!(c.receive_maximum, CoreConfig::default().receive_maximum);
    }

    #[test]
    fn durability_parses_and_needs_a_directory() {
        let c = BrokerConfig::from_toml_str(
            "persistence_dir = \"/var/lib/mqtt\"\ndurability = \"relaxed\"\nrelaxed_delay_ms = 50\n",
        )
        .unwrap();
        assert_eq!(c.durability, Some(super::super::Durability::Relaxed));
        assert_eq!(c.relaxed_delay_ms, 50);
        c.validate().unwrap();
        let e = BrokerConfig::from_toml_str("durability = \"sometimes\"\n").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let c = BrokerConfig::from_toml_str("durability = \"ack\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("persistence_dir"), "{e}");
    }

    #[test]
    fn bridges_parse_and_need_a_plain_listener() {
        let toml = "listen = [\"mqtt://127.0.0.1:0\"]\n\
                    [[bridges]]\nname = \"hq\"\nremote = \"mqtts://hq.example:8883\"\n\
                    [[bridges.topics]]\nfilter = \"sensors/#\"\nremote_prefix = \"site1/\"\n\
                    [[bridges.topics]]\nfilter = \"cmd/#\"\ndirection = \"in\"\nqos = 2\n";
        let c = BrokerConfig::from_toml_str(toml).unwrap();
        c.validate().unwrap();
        let b = &c.bridges[0];
        assert_eq!((b.name.as_str(), b.protocol, b.topics.len()), ("hq", 5, 2));
        assert_eq!(b.topics[0].direction, super::super::Direction::Out);
        assert_eq!(b.topics[0].qos, 1);
        assert_eq!(b.topics[1].direction, super::super::Direction::In);
        let ws_only = toml.replace("mqtt://127.0.0.1:0", "ws://127.0.0.1:0/mqtt");
        let e = BrokerConfig::from_toml_str(&ws_only)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("plain mqtt:// listener"), "{e}");
    }

    #[test]
    fn tls_listener_needs_files() {
        let c = BrokerConfig::new("mqtts://127.0.0.1:0");
        assert!(c.validate().unwrap_err().to_string().contains("cert_file"));
    }
}
