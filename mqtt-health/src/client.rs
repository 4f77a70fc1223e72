//! The client's health checks and metrics, from its [`Stats`].

use std::time::{Duration, SystemTime};

use mqtt_session::engine::Stats;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{counter, encode, gauge, seconds};
use crate::{Check, Health, Status};

/// When the client's health turns from `pass` to `warn`.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Held messages (queued or in flight) from which the queue check warns.
    pub queue_depth: usize,
    /// Fill level of the queue, 0.0 to 1.0 of its capacity in messages, from which it warns.
    pub queue_fill: f64,
    /// Age of the oldest held message from which it warns.
    pub oldest_message: Duration,
}

impl Default for Thresholds {
    /// Warn at 80 % full or when a message waited a minute; no fixed depth.
    fn default() -> Self {
        Thresholds {
            queue_depth: usize::MAX,
            queue_fill: 0.8,
            oldest_message: Duration::from_secs(60),
        }
    }
}

/// The client's report: `fail` while disconnected, `warn` when its queue passes a threshold.
/// `queue_capacity` is the queue's size in messages; `now` stamps "connected since".
pub fn health(
    stats: &Stats,
    queue_capacity: usize,
    thresholds: &Thresholds,
    now: SystemTime,
) -> Health {
    let mut h = Health::new(Status::Pass);
    h.service_id = Some("mqtt-client".into());
    let connection = if stats.connected {
        let mut c = Check::new(Status::Pass, true).of_type("system");
        if let Some(since) = stats.connected_for.and_then(|d| now.checked_sub(d)) {
            c = c.since(since);
        }
        c
    } else {
        let retry = stats.backoff.map_or(String::new(), |d| {
            format!("; next attempt in {:.1} s", d.as_secs_f64())
        });
        Check::new(Status::Fail, false)
            .of_type("system")
            .output(format!(
                "not connected to the broker ({} failed attempts){retry}",
                stats.reconnect_attempts
            ))
    };
    h.check("broker:connection", connection);
    let backoff = stats.backoff.unwrap_or_default().as_secs_f64();
    h.check(
        "broker:backoff",
        Check::new(Status::Pass, backoff)
            .of_type("system")
            .unit("s"),
    );

    let depth: usize = stats.queued_by_priority.iter().sum();
    let fill = if queue_capacity == 0 {
        0.0
    } else {
        depth as f64 / queue_capacity as f64
    };
    let queue_status = if depth >= thresholds.queue_depth || fill >= thresholds.queue_fill {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut depth_check = Check::new(queue_status, depth).unit("messages");
    if queue_status == Status::Warn {
        depth_check = depth_check.output(format!(
            "{depth} messages held of {queue_capacity} ({:.0} %)",
            fill * 100.0
        ));
    }
    h.check("queue:depth", depth_check);
    h.check(
        "queue:fill",
        Check::new(queue_status, (fill * 1000.0).round() / 10.0).unit("percent"),
    );
    let oldest = stats.oldest_queued.unwrap_or_default();
    let oldest_status = if stats.oldest_queued.is_some() && oldest >= thresholds.oldest_message {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut oldest_check = Check::new(oldest_status, oldest.as_secs_f64()).unit("s");
    if oldest_status == Status::Warn {
        oldest_check = oldest_check.output("the oldest held message waits longer than allowed");
    }
    h.check("queue:oldest", oldest_check);
    h
}

/// The client's metrics in the Prometheus / OpenMetrics text format.
pub fn metrics(stats: &Stats, queue_capacity: usize) -> String {
    let mut r = Registry::with_prefix("mqtt_client");
    gauge(
        &mut r,
        "connected",
        "1 while connected to the broker",
        i64::from(stats.connected),
    );
    seconds(
        &mut r,
        "connected",
        "How long the current connection has been up",
        stats.connected_for.unwrap_or_default(),
    );
    seconds(
        &mut r,
        "backoff",
        "Wait before the next reconnect attempt (0 while connected)",
        stats.backoff.unwrap_or_default(),
    );
    gauge(
        &mut r,
        "reconnect_attempts",
        "Failed connection attempts since the last stable connection",
        i64::from(stats.reconnect_attempts),
    );
    let by_priority = Family::<Vec<(String, String)>, Gauge>::default();
    for (i, n) in stats.queued_by_priority.iter().enumerate() {
        by_priority
            .get_or_create(&vec![("priority".into(), (i + 1).to_string())])
            .set(clamp(*n));
    }
    r.register(
        "queued_messages",
        "Messages held (queued or in flight) by priority",
        by_priority,
    );
    gauge(
        &mut r,
        "queue_capacity_messages",
        "Messages the queue holds at most",
        clamp(queue_capacity),
    );
    seconds(
        &mut r,
        "oldest_queued",
        "Age of the oldest held message",
        stats.oldest_queued.unwrap_or_default(),
    );
    gauge(
        &mut r,
        "in_flight_messages",
        "QoS 1/2 messages sent and not yet acknowledged",
        clamp(stats.in_flight),
    );
    gauge(
        &mut r,
        "subscriptions",
        "Subscriptions granted and kept for restoring",
        clamp(stats.subscriptions),
    );
    counter(
        &mut r,
        "messages_sent",
        "Messages completed (QoS 0 written, QoS 1/2 acknowledged)",
        stats.sent,
    );
    counter(
        &mut r,
        "messages_received",
        "Messages received",
        stats.received,
    );
    counter(
        &mut r,
        "messages_dropped",
        "Messages that will not be delivered (refused, evicted, closed)",
        stats.dropped,
    );
    counter(
        &mut r,
        "reconnects",
        "Connections established after the first",
        stats.reconnects,
    );
    encode(&r)
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        Stats {
            connected: true,
            connected_for: Some(Duration::from_secs(90)),
            sent: 7,
            received: 3,
            ..Stats::default()
        }
    }

    #[test]
    fn pass_warn_fail() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Thresholds::default();
        let h = health(&stats(), 100, &t, now);
        assert_eq!(h.status, Status::Pass);
        let conn = &h.checks["broker:connection"][0];
        assert_eq!(conn.time.as_deref(), Some("1970-01-12T13:45:10Z"));

        let mut s = stats();
        s.queued_by_priority[4] = 80;
        let h = health(&s, 100, &t, now);
        assert_eq!(h.status, Status::Warn);
        assert_eq!(h.checks["queue:fill"][0].observed_value, 80.0);

        s.queued_by_priority[4] = 5;
        s.oldest_queued = Some(Duration::from_secs(61));
        assert_eq!(health(&s, 100, &t, now).status, Status::Warn);

        let down = Stats {
            connected: false,
            backoff: Some(Duration::from_millis(1500)),
            reconnect_attempts: 2,
            ..Stats::default()
        };
        let h = health(&down, 100, &t, now);
        assert_eq!(h.status, Status::Fail);
        let out = h.checks["broker:connection"][0]
            .output
            .clone()
            .unwrap_or_default();
        assert!(
            out.contains("2 failed attempts") && out.contains("1.5 s"),
            "{out}"
        );
    }

    #[test]
    fn metrics_parse_and_match_stats() {
        let mut s = stats();
        s.queued_by_priority[9] = 4;
        let text = metrics(&s, 100);
        let lines: Vec<_> = text.lines().map(|l| Ok(l.to_string())).collect();
        let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("parses");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(value("mqtt_client_messages_sent_total", None), Some(7.0));
        assert_eq!(
            value("mqtt_client_messages_received_total", None),
            Some(3.0)
        );
        assert_eq!(value("mqtt_client_connected", None), Some(1.0));
        assert_eq!(value("mqtt_client_connected_seconds", None), Some(90.0));
        assert_eq!(
            value("mqtt_client_queued_messages", Some(("priority", "10"))),
            Some(4.0)
        );
        assert_eq!(
            value("mqtt_client_queued_messages", Some(("priority", "1"))),
            Some(0.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
