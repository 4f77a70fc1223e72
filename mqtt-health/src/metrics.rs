//! Registering one-off metrics for a scrape: the numbers come from a snapshot, so each scrape
//! builds a fresh registry and encodes it.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Registers a gauge with this value.
pub(crate) fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    r.register(name, help, g);
}

/// Registers a counter (exposed as `NAME_total`) with this value.
pub(crate) fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    r.register(name, help, c);
}

/// Registers a gauge in seconds (exposed as `NAME_seconds`).
pub(crate) fn seconds(r: &mut Registry, name: &str, help: &str, value: Duration) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value.as_secs_f64());
    r.register_with_unit(name, help, Unit::Seconds, g);
}

/// The registry as exposition text.
pub(crate) fn encode(r: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode_text(&mut out, r);
    out
}
