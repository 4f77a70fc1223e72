//! Bridges: the broker as a client of another broker, forwarding matching messages each way.
//!
//! A bridge is two of our own clients: one connected to this broker (over its first plain
//! `mqtt://` listener, on loopback) and one to the remote broker. A topic forwarded `out` is
//! subscribed here and published there; `in` the other way round; `both` is the two (the
//! subscriptions are "no local" at MQTT 5, so what a bridge publishes does not come back to
//! it). Each client keeps a persistent session, and a message is acknowledged to the broker
//! it came from only once the other broker has acknowledged its copy ([`AckMode::Manual`]):
//! a QoS 1/2 message is forwarded at least once across a restart of either side, and in the
//! order it came.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqtt_client::{AckMode, Client, Options};
use mqtt_proto::{
    Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions,
};
use serde::Deserialize;

use super::config::ConfigError;
use crate::{DEFAULT_PRIORITY, Delivery, Message, Tokio};

/// Which way a bridge topic's messages go.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this broker to the remote one.
    #[default]
    Out,
    /// From the remote broker to this one.
    In,
    /// Both ways (MQTT 5 only: no local keeps a message from coming back).
    Both,
}

/// One forwarded topic filter of a bridge.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// The filter, without the prefixes.
    pub filter: String,
    /// Which way its messages go.
    #[serde(default)]
    pub direction: Direction,
    /// The highest QoS its messages are forwarded at (both subscriptions use it).
    #[serde(default = "one")]
    pub qos: u8,
    /// Prepended to the filter here, and replaced by `remote_prefix` on the way out.
    #[serde(default)]
    pub local_prefix: String,
    /// Prepended to the filter at the remote broker, and replaced by `local_prefix` on the
    /// way in.
    #[serde(default)]
    pub remote_prefix: String,
}

fn one() -> u8 {
    1
}

fn five() -> u8 {
    5
}

/// A bridge to one remote broker (the TOML file's `[[bridges]]` tables).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs and in its default client ids.
    pub name: String,
    /// The remote broker's URL (`mqtt://`, `mqtts://`, `ws://`, `wss://`; user name and
    /// password may be in it).
    pub remote: String,
    /// The client id at the remote broker (default `bridge-{name}`); here the bridge is
    /// `{client_id}-local`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The MQTT version spoken to the remote broker: 5 (default) or 4 (3.1.1).
    #[serde(default = "five")]
    pub protocol: u8,
    /// A CA certificate file for a TLS remote.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The user name and password of the bridge at this broker, when it needs them.
    #[serde(default)]
    pub local_username: Option<String>,
    /// See `local_username`.
    #[serde(default)]
    pub local_password: Option<String>,
    /// The topics it forwards.
    pub topics: Vec<BridgeTopic>,
}

impl BridgeConfig {
    /// The client id at the remote broker.
    pub fn remote_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("bridge-{}", self.name))
    }

    fn version(&self) -> ProtocolVersion {
        if self.protocol == 4 {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        }
    }

    /// Checks what the clients would only find out when they connect.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |what: String| Err(ConfigError::new(format!("bridge {}: {what}", self.name)));
        if self.protocol != 4 && self.protocol != 5 {
            return err("protocol must be 4 (3.1.1) or 5".into());
        }
        if let Err(e) = Options::new(&self.remote) {
            return err(format!("remote: {e}"));
        }
        if self.topics.is_empty() {
            return err("has no topics".into());
        }
        for t in &self.topics {
            if t.qos > 2 {
                return err(format!("{}: qos must be 0, 1 or 2", t.filter));
            }
            for prefix in [&t.local_prefix, &t.remote_prefix] {
                if prefix.contains(['+', '#']) {
                    return err(format!("{}: a prefix cannot hold a wildcard", t.filter));
                }
            }
            for f in [t.local_filter(), t.remote_filter()] {
                if mqtt_proto::TopicFilter::new(&f).is_err() {
                    return err(format!("{f} is not a topic filter"));
                }
            }
            // At 3.1.1 there is no "no local": what the bridge publishes there would come
            // back to it, and go round.
            if t.direction == Direction::Both && self.protocol == 4 {
                return err(format!("{}: direction both needs protocol 5", t.filter));
            }
        }
        Ok(())
    }
}

impl BridgeTopic {
    fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }

    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce)
    }
}

/// `topic` with `from` at its start replaced by `to` (a topic the filter matched starts
/// with the prefix).
fn retopic(topic: &str, from: &str, to: &str) -> String {
    format!("{to}{}", topic.strip_prefix(from).unwrap_or(topic))
}

/// A running bridge: its two clients.
pub(crate) struct Bridge {
    name: String,
    local: Client<Tokio>,
    remote: Client<Tokio>,
}

/// A bridge's clients, for its numbers.
pub(crate) struct View {
    name: String,
    local: Client<Tokio>,
    remote: Client<Tokio>,
}

impl View {
    /// Whether its connections are up, and what each client completed: the remote one
    /// publishes only what goes out, the local one only what comes in.
    pub(crate) fn numbers(&self) -> mqtt_health::broker::BridgeNumbers {
        let (here, there) = (self.local.stats(), self.remote.stats());
        mqtt_health::broker::BridgeNumbers {
            name: self.name.clone(),
            local_up: here.connected,
            remote_up: there.connected,
            forwarded_out: there.sent,
            forwarded_in: here.sent,
            reconnects: here.reconnects + there.reconnects,
        }
    }
}

/// How long a bridge's sessions outlive a lost connection.
const SESSION: Duration = Duration::from_secs(24 * 3600);

/// One way of a bridge's topics: a message matching `filter` (on the side it comes from, and
/// subscribed there at `qos`) has its `from` prefix replaced by `to`.
struct Rule {
    filter: String,
    qos: QoS,
    from: String,
    to: String,
}

impl Bridge {
    /// Starts the two clients, their subscriptions and the two forwarding tasks; `local` is
    /// this broker's plain listener.
    pub(crate) fn start(cfg: &BridgeConfig, local: SocketAddr) -> Result<Bridge, ConfigError> {
        let fail =
            |e: &dyn std::fmt::Display| ConfigError::new(format!("bridge {}: {e}", cfg.name));
        let id = cfg.remote_id();
        // Acknowledged by hand: a message is acknowledged where it came from once the other
        // side has acknowledged its copy.
        let mut here = Options::new(&format!("mqtt://{local}"))
            .map_err(|e| fail(&e))?
            .client_id(format!("{id}-local"))
            .version(ProtocolVersion::V5)
            .persistent_session(SESSION)
            .ack_mode(AckMode::Manual);
        if let (Some(u), Some(p)) = (&cfg.local_username, &cfg.local_password) {
            here = here.credentials(u, p);
        }
        let mut there = Options::new(&cfg.remote)
            .map_err(|e| fail(&e))?
            .client_id(id)
            .version(cfg.version())
            .persistent_session(SESSION)
            .ack_mode(AckMode::Manual);
        if let Some(ca) = &cfg.ca_file {
            there = there.ca_file(ca);
        }
        let (local, mut local_driver) = Client::<Tokio>::new(here).map_err(|e| fail(&e))?;
        let (remote, mut remote_driver) = Client::<Tokio>::new(there).map_err(|e| fail(&e))?;
        let from_local = local_driver.events();
        let from_remote = remote_driver.events();
        tokio::spawn(local_driver.run());
        tokio::spawn(remote_driver.run());

        let v5 = cfg.version().is_v5();
        let (mut out, mut inward) = (Vec::new(), Vec::new());
        for t in &cfg.topics {
            if matches!(t.direction, Direction::Out | Direction::Both) {
                out.push(Rule {
                    filter: t.local_filter(),
                    qos: t.qos(),
                    from: t.local_prefix.clone(),
                    to: t.remote_prefix.clone(),
                });
            }
            if matches!(t.direction, Direction::In | Direction::Both) {
                inward.push(Rule {
                    filter: t.remote_filter(),
                    qos: t.qos(),
                    from: t.remote_prefix.clone(),
                    to: t.local_prefix.clone(),
                });
            }
        }
        // This broker speaks 5.0 to its own client.
        let local_subs = subscriptions(&out, true);
        let remote_subs = subscriptions(&inward, v5);
        let name = Arc::<str>::from(cfg.name.as_str());
        for (client, subs) in [(&local, local_subs), (&remote, remote_subs)] {
            if subs.is_empty() {
                continue;
            }
            // Sent on connect, and again on a connection without the session.
            let (client, name) = (client.clone(), name.clone());
            tokio::spawn(async move {
                let filters: Vec<(&str, SubscriptionOptions)> =
                    subs.iter().map(|(f, o)| (f.as_str(), *o)).collect();
                match client.subscribe_with(&filters).await {
                    Ok(codes) if codes.iter().all(|c| !c.is_error()) => {}
                    Ok(codes) => {
                        tracing::warn!(bridge = %name, ?codes, "bridge subscriptions refused")
                    }
                    Err(e) => {
                        tracing::warn!(bridge = %name, error = %e, "bridge subscriptions failed")
                    }
                }
            });
        }
        tokio::spawn(pump(
            from_local,
            local.clone(),
            remote.clone(),
            out,
            name.clone(),
            v5,
        ));
        tokio::spawn(pump(
            from_remote,
            remote.clone(),
            local.clone(),
            inward,
            name,
            true,
        ));
        tracing::info!(bridge = %cfg.name, remote = %cfg.remote, "bridge started");
        Ok(Bridge {
            name: cfg.name.clone(),
            local,
            remote,
        })
    }

    /// What the HTTP endpoint reads of it.
    pub(crate) fn view(&self) -> View {
        View {
            name: self.name.clone(),
            local: self.local.clone(),
            remote: self.remote.clone(),
        }
    }

    /// Ends both connections (what is unacknowledged stays in the sessions).
    pub(crate) async fn stop(&self) {
        let wait = Duration::from_secs(2);
        tokio::join!(self.local.shutdown(wait), self.remote.shutdown(wait));
        tracing::info!(bridge = %self.name, "bridge stopped");
    }
}

/// The subscriptions of one side: no local and retain as published where the version has
/// them (so the bridge's own copies do not come back, and retained messages stay retained).
fn subscriptions(rules: &[Rule], v5: bool) -> Vec<(String, SubscriptionOptions)> {
    rules
        .iter()
        .map(|r| {
            let options = SubscriptionOptions {
                no_local: v5,
                retain_as_published: v5,
                ..SubscriptionOptions::new(r.qos)
            };
            (r.filter.clone(), options)
        })
        .collect()
}

/// Forwards what `source` receives to `target`, in the order it came: each message is
/// published there, and acknowledged here once `target`'s broker has acknowledged it (a
/// second task waits for those, so the stream does not wait a round trip per message).
/// `props`: whether `target` speaks 5.0 (the message's properties go with it).
async fn pump(
    mut events: tokio::sync::mpsc::UnboundedReceiver<crate::Event>,
    source: Client<Tokio>,
    target: Client<Tokio>,
    rules: Vec<Rule>,
    name: Arc<str>,
    props: bool,
) {
    let (acks, mut pending) = tokio::sync::mpsc::unbounded_channel::<(Message, Option<Delivery>)>();
    let acker = source.clone();
    let acker_name = name.clone();
    tokio::spawn(async move {
        while let Some((m, delivery)) = pending.recv().await {
            let rc = match delivery {
                None => ReasonCode::Success,
                Some(d) => match d.await {
                    Ok(rc) => rc,
                    Err(e) => {
                        // Not acknowledged: the source broker sends it again on the next
                        // connection of this session.
                        tracing::warn!(bridge = %acker_name, topic = %m.topic, error = ?e, "not forwarded");
                        continue;
                    }
                },
            };
            if rc.is_error() {
                tracing::warn!(bridge = %acker_name, topic = %m.topic, reason = %rc, "refused where it was forwarded");
            }
            acker.ack(&m);
        }
    });
    while let Some(event) = events.recv().await {
        let crate::Event::Message(m) = event else {
            continue;
        };
        let Some(rule) = rules
            .iter()
            .find(|r| mqtt_proto::matches(&r.filter, &m.topic))
        else {
            // Not one of ours (another subscription of the session): acknowledged, dropped.
            acks.send((m, None)).ok();
            continue;
        };
        let topic = retopic(&m.topic, &rule.from, &rule.to);
        if m.qos == QoS::AtMostOnce {
            // At most once: dropped when the other side's queue is full, rather than held
            // here (a QoS 0 stream faster than the other side would pile up without bound).
            if let Err(e) = publish_copy(&target, &m, &topic, props, false).await {
                tracing::debug!(bridge = %name, %topic, error = %e, "QoS 0 not forwarded");
            }
            continue;
        }
        let delivery = match publish_copy(&target, &m, &topic, props, true).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(bridge = %name, %topic, error = %e, "not forwarded");
                continue;
            }
        };
        // QoS 1/2: at most a Receive Maximum of these wait for the other side.
        if acks.send((m, Some(delivery))).is_err() {
            return;
        }
    }
}

/// Publishes a copy of `m` under `topic` through `target` (queued there, in order);
/// `wait`: for room in `target`'s queue, else an error when it is full.
async fn publish_copy(
    target: &Client<Tokio>,
    m: &Message,
    topic: &str,
    props: bool,
    wait: bool,
) -> Result<Delivery, crate::ClientError> {
    let mut list = Vec::new();
    if props && let Some(p) = m.properties.as_deref() {
        list.extend(p.user.iter().map(|(k, v)| Property::UserProperty(k, v)));
        if let Some(c) = &p.content_type {
            list.push(Property::ContentType(c));
        }
        if let Some(r) = &p.response_topic {
            list.push(Property::ResponseTopic(r));
        }
        if let Some(d) = &p.correlation_data {
            list.push(Property::CorrelationData(d));
        }
        if p.payload_is_utf8 {
            list.push(Property::PayloadFormatIndicator(true));
        }
        if let Some(e) = p.expiry {
            list.push(Property::MessageExpiryInterval(e));
        }
    }
    let msg = Publish {
        qos: m.qos,
        retain: m.retain,
        properties: Properties::new(&list),
        ..Publish::new(topic, &m.payload)
    };
    if wait {
        target.publish_with(&msg, DEFAULT_PRIORITY).await
    } else {
        target.try_publish_with(&msg, DEFAULT_PRIORITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(toml: &str) -> Result<BridgeConfig, String> {
        let c: BridgeConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn topics_are_renamed_by_their_prefixes() {
        assert_eq!(retopic("site/a/b", "site/", "hq/"), "hq/a/b");
        assert_eq!(retopic("a/b", "", "hq/"), "hq/a/b");
        assert_eq!(retopic("hq/a", "hq/", ""), "a");
    }

    #[test]
    fn a_bridge_is_checked_before_it_starts() {
        let ok = "name = \"b\"\nremote = \"mqtt://127.0.0.1:1\"\n\
                  [[topics]]\nfilter = \"a/#\"\ndirection = \"both\"\nqos = 2\n";
        let c = bridge(ok).unwrap();
        assert_eq!(c.remote_id(), "bridge-b");
        assert_eq!(c.topics[0].direction, Direction::Both);
        let v311 = ok.replace("[[topics]]", "protocol = 4\n[[topics]]");
        assert!(bridge(&v311).unwrap_err().contains("needs protocol 5"));
        let wild = ok.replace("filter = \"a/#\"", "filter = \"a\"\nlocal_prefix = \"+/\"");
        assert!(bridge(&wild).unwrap_err().contains("wildcard"));
        let qos = ok.replace("qos = 2", "qos = 3");
        assert!(bridge(&qos).unwrap_err().contains("qos"));
        let none = "name = \"b\"\nremote = \"mqtt://127.0.0.1:1\"\ntopics = []\n";
        assert!(bridge(none).unwrap_err().contains("no topics"));
        let url = ok.replace("mqtt://127.0.0.1:1", "gopher://x");
        assert!(bridge(&url).unwrap_err().contains("remote"));
    }
}
