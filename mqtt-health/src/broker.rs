//! The broker's health checks and metrics, from the numbers its server supplies.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::{counter, encode, gauge, seconds};
use crate::{Check, Health, Status};

/// One listener of the broker and whether it accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Its URL (`mqtt://0.0.0.0:1883`, `ws://...`).
    pub url: String,
    /// Whether it is bound and accepting.
    pub up: bool,
}

/// What the broker server reports about itself, at the moment of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerNumbers {
    /// The listeners.
    pub listeners: Vec<Listener>,
    /// Whether the store accepts writes; `None` without a store.
    pub store_writable: Option<bool>,
    /// How long the last store write (with its sync) took.
    pub store_latency: Option<Duration>,
    /// The durable store's counters; `None` without a store.
    pub store: Option<StoreNumbers>,
    /// Open client connections.
    pub connections: u64,
    /// Connections accepted since the start.
    pub connections_accepted: u64,
    /// Sessions, connected or not.
    pub sessions: u64,
    /// PUBLISH packets received from clients.
    pub messages_in: u64,
    /// PUBLISH packets sent to clients.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Messages waiting in session queues.
    pub queued_messages: u64,
    /// Bytes waiting in session queues.
    pub queued_bytes: u64,
    /// The global limit on queued bytes (0: none).
    pub queued_bytes_limit: u64,
    /// Messages dropped, by reason (`"queue_full"`, `"too_large"`, `"expired"`, ...).
    pub dropped: Vec<(&'static str, u64)>,
    /// Times a publisher was held for a subscriber to make room (back-pressure).
    pub publishers_held: u64,
    /// Times a subscriber made no room in time and stopped holding publishers.
    pub subscribers_stalled: u64,
    /// Times a publisher went past its publish rate and was slowed.
    pub publishers_throttled: u64,
    /// Retained messages.
    pub retained: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Time since the broker started.
    pub uptime: Duration,
    /// The bridges to other brokers.
    pub bridges: Vec<BridgeNumbers>,
}

/// One bridge: whether both of its connections are up, and what it forwarded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeNumbers {
    /// The bridge's name.
    pub name: String,
    /// Whether its connection to this broker is up.
    pub local_up: bool,
    /// Whether its connection to the remote broker is up.
    pub remote_up: bool,
    /// Messages forwarded to the remote broker (acknowledged there, or written at QoS 0).
    pub forwarded_out: u64,
    /// Messages forwarded from the remote broker to this one.
    pub forwarded_in: u64,
    /// Times either connection was established again.
    pub reconnects: u64,
}

/// What the durable store did since the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreNumbers {
    /// Entries read back at the start.
    pub recovered_records: u64,
    /// How long reading them back and rebuilding the state took.
    pub recovery: Duration,
    /// Files and entries set aside as unreadable at the start.
    pub set_aside: u64,
    /// Commits (one sync each).
    pub commits: u64,
    /// Entries written or deleted.
    pub ops: u64,
    /// Commits that failed.
    pub failures: u64,
}

/// When the broker's health turns from `pass` to `warn`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Fill level of the global queued-bytes limit, 0.0 to 1.0, from which it warns.
    pub queued_bytes_fill: f64,
}

impl Default for Thresholds {
    /// Warn at 80 % of the global limit.
    fn default() -> Self {
        Thresholds {
            queued_bytes_fill: 0.8,
        }
    }
}

/// The broker's report: `fail` when a listener is down or the store cannot be written,
/// `warn` when the queued bytes near their global limit.
pub fn health(n: &BrokerNumbers, thresholds: &Thresholds) -> Health {
    let mut h = Health::new(Status::Pass);
    h.service_id = Some("mqtt-broker".into());
    for l in &n.listeners {
        let check = if l.up {
            Check::new(Status::Pass, true)
        } else {
            Check::new(Status::Fail, false).output("not accepting connections")
        };
        h.check("listener:up", check.of_type("system").id(l.url.clone()));
    }
    if let Some(writable) = n.store_writable {
        let check = if writable {
            Check::new(Status::Pass, true)
        } else {
            Check::new(Status::Fail, false).output("the store cannot be written")
        };
        h.check("store:writable", check.of_type("datastore"));
    }
    if let Some(latency) = n.store_latency {
        h.check(
            "store:latency",
            Check::new(Status::Pass, latency.as_secs_f64())
                .of_type("datastore")
                .unit("s"),
        );
    }
    let fill = if n.queued_bytes_limit == 0 {
        0.0
    } else {
        n.queued_bytes as f64 / n.queued_bytes_limit as f64
    };
    let status = if fill >= thresholds.queued_bytes_fill {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut check = Check::new(status, n.queued_bytes).unit("bytes");
    if status == Status::Warn {
        check = check.output(format!(
            "{} of {} queued bytes ({:.0} %)",
            n.queued_bytes,
            n.queued_bytes_limit,
            fill * 100.0
        ));
    }
    h.check("queue:bytes", check);
    h.check(
        "clients:connections",
        Check::new(Status::Pass, n.connections).unit("connections"),
    );
    // A bridge that is down holds back what it forwards, and the broker still serves.
    for b in &n.bridges {
        let check = match (b.local_up, b.remote_up) {
            (true, true) => Check::new(Status::Pass, true),
            (true, false) => {
                Check::new(Status::Warn, false).output("the remote broker is not connected")
            }
            (false, _) => Check::new(Status::Warn, false).output("not connected to this broker"),
        };
        h.check("bridge:up", check.of_type("component").id(b.name.clone()));
    }
    h
}

/// The broker's metrics in the Prometheus / OpenMetrics text format.
pub fn metrics(n: &BrokerNumbers) -> String {
    let mut r = Registry::with_prefix("mqtt_broker");
    let up = Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
    for l in &n.listeners {
        up.get_or_create(&vec![("listener".into(), l.url.clone())])
            .set(i64::from(l.up));
    }
    r.register(
        "listener_up",
        "1 while the listener accepts connections",
        up,
    );
    if let Some(w) = n.store_writable {
        gauge(
            &mut r,
            "store_writable",
            "1 while the store accepts writes",
            i64::from(w),
        );
    }
    if let Some(latency) = n.store_latency {
        seconds(
            &mut r,
            "store_write",
            "Duration of the last store write",
            latency,
        );
    }
    if let Some(st) = &n.store {
        gauge(
            &mut r,
            "store_recovered_records",
            "Store entries read back at the start",
            clamp(st.recovered_records),
        );
        seconds(
            &mut r,
            "store_recovery",
            "Time to read the store back and rebuild the state",
            st.recovery,
        );
        gauge(
            &mut r,
            "store_set_aside",
            "Store files and entries set aside as unreadable at the start",
            clamp(st.set_aside),
        );
        counter(
            &mut r,
            "store_commits",
            "Store commits (one sync each)",
            st.commits,
        );
        counter(
            &mut r,
            "store_ops",
            "Store entries written or deleted",
            st.ops,
        );
        counter(
            &mut r,
            "store_failures",
            "Store commits that failed",
            st.failures,
        );
    }
    gauge(
        &mut r,
        "connections",
        "Open client connections",
        clamp(n.connections),
    );
    counter(
        &mut r,
        "connections_accepted",
        "Connections accepted",
        n.connections_accepted,
    );
    counter(
        &mut r,
        "publishers_held",
        "Times a publisher was held for a subscriber to make room",
        n.publishers_held,
    );
    counter(
        &mut r,
        "publishers_throttled",
        "Times a publisher went past its publish rate and was slowed",
        n.publishers_throttled,
    );
    counter(
        &mut r,
        "subscribers_stalled",
        "Times a subscriber made no room in time and stopped holding publishers",
        n.subscribers_stalled,
    );
    gauge(
        &mut r,
        "sessions",
        "Sessions, connected or not",
        clamp(n.sessions),
    );
    counter(
        &mut r,
        "messages_received",
        "PUBLISH packets received",
        n.messages_in,
    );
    counter(
        &mut r,
        "messages_sent",
        "PUBLISH packets sent",
        n.messages_out,
    );
    counter(
        &mut r,
        "bytes_received",
        "Bytes received from clients",
        n.bytes_in,
    );
    counter(&mut r, "bytes_sent", "Bytes sent to clients", n.bytes_out);
    gauge(
        &mut r,
        "queued_messages",
        "Messages waiting in session queues",
        clamp(n.queued_messages),
    );
    gauge(
        &mut r,
        "queued_bytes",
        "Bytes waiting in session queues",
        clamp(n.queued_bytes),
    );
    gauge(
        &mut r,
        "queued_bytes_limit",
        "Global limit on queued bytes (0: none)",
        clamp(n.queued_bytes_limit),
    );
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, count) in &n.dropped {
        dropped
            .get_or_create(&vec![("reason".into(), (*reason).into())])
            .inc_by(*count);
    }
    r.register("messages_dropped", "Messages dropped, by reason", dropped);
    gauge(
        &mut r,
        "retained_messages",
        "Retained messages",
        clamp(n.retained),
    );
    gauge(
        &mut r,
        "subscriptions",
        "Subscriptions",
        clamp(n.subscriptions),
    );
    seconds(&mut r, "uptime", "Time since the broker started", n.uptime);
    if !n.bridges.is_empty() {
        let up =
            Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
        let forwarded = Family::<Vec<(String, String)>, Counter>::default();
        let reconnects = Family::<Vec<(String, String)>, Counter>::default();
        for b in &n.bridges {
            let name = ("bridge".to_string(), b.name.clone());
            up.get_or_create(&vec![name.clone()])
                .set(i64::from(b.local_up && b.remote_up));
            for (direction, count) in [("out", b.forwarded_out), ("in", b.forwarded_in)] {
                let labels = vec![name.clone(), ("direction".into(), direction.into())];
                forwarded.get_or_create(&labels).inc_by(count);
            }
            reconnects.get_or_create(&vec![name]).inc_by(b.reconnects);
        }
        r.register(
            "bridge_up",
            "1 while both connections of the bridge are up",
            up,
        );
        r.register(
            "bridge_forwarded",
            "Messages the bridge forwarded",
            forwarded,
        );
        r.register(
            "bridge_reconnects",
            "Times a connection of the bridge was made again",
            reconnects,
        );
    }
    encode(&r)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers() -> BrokerNumbers {
        BrokerNumbers {
            listeners: vec![
                Listener {
                    url: "mqtt://127.0.0.1:1883".into(),
                    up: true,
                },
                Listener {
                    url: "ws://127.0.0.1:8080/mqtt".into(),
                    up: true,
                },
            ],
            store_writable: Some(true),
            connections: 3,
            messages_in: 10,
            dropped: vec![("queue_full", 2), ("too_large", 1)],
            queued_bytes: 100,
            queued_bytes_limit: 1000,
            ..BrokerNumbers::default()
        }
    }

    #[test]
    fn listener_down_or_store_unwritable_fails_queue_near_limit_warns() {
        let t = Thresholds::default();
        assert_eq!(health(&numbers(), &t).status, Status::Pass);
        let mut n = numbers();
        n.queued_bytes = 900;
        assert_eq!(health(&n, &t).status, Status::Warn);
        let mut n = numbers();
        n.listeners[1].up = false;
        let h = health(&n, &t);
        assert_eq!(h.status, Status::Fail);
        assert_eq!(h.checks["listener:up"].len(), 2);
        let mut n = numbers();
        n.store_writable = Some(false);
        assert_eq!(health(&n, &t).status, Status::Fail);
    }

    #[test]
    fn a_bridge_down_warns_and_is_in_the_metrics() {
        let t = Thresholds::default();
        let mut n = numbers();
        n.bridges.push(BridgeNumbers {
            name: "hq".into(),
            local_up: true,
            remote_up: true,
            forwarded_out: 7,
            forwarded_in: 2,
            reconnects: 1,
        });
        assert_eq!(health(&n, &t).status, Status::Pass);
        let text = metrics(&n);
        assert!(
            text.contains("mqtt_broker_bridge_up{bridge=\"hq\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "mqtt_broker_bridge_forwarded_total{bridge=\"hq\",direction=\"out\"} 7\n"
            ),
            "{text}"
        );
        n.bridges[0].remote_up = false;
        let h = health(&n, &t);
        assert_eq!(h.status, Status::Warn);
        assert_eq!(h.checks["bridge:up"].len(), 1);
        assert!(metrics(&n).contains("mqtt_broker_bridge_up{bridge=\"hq\"} 0\n"));
    }

    #[test]
    fn metrics_have_labels_and_totals() {
        let text = metrics(&numbers());
        let lines: Vec<_> = text.lines().map(|l| Ok(l.to_string())).collect();
        let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("parses");
        let find = |name: &str, key: &str, val: &str| {
            scrape
                .samples
                .iter()
                .any(|s| s.metric == name && s.labels.get(key) == Some(val))
        };
        assert!(find(
            "mqtt_broker_messages_dropped_total",
            "reason",
            "queue_full"
        ));
        assert!(find(
            "mqtt_broker_listener_up",
            "listener",
            "ws://127.0.0.1:8080/mqtt"
        ));
        assert!(
            text.contains("mqtt_broker_messages_received_total 10\n"),
            "{text}"
        );
        assert!(text.contains("mqtt_broker_connections 3\n"), "{text}");
    }
}
