//! The result of a run: counts, rates, latency percentiles, CPU cost; as text or JSON.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::conn::Ctx;
use super::stats::Counters;
use super::{BenchArgs, Scenario};

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// How the connections went.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectStats {
    /// Connections the run opens.
    pub attempted: u64,
    /// Connections established (CONNACK, and SUBACK for subscribers).
    pub connected: u64,
    /// Connections that could not be established.
    pub errors: u64,
    /// Connections lost after they were established.
    pub lost: u64,
    /// Connections established per second, from the first attempt to the last success.
    pub per_second: f64,
    /// Time from opening the socket to CONNACK (and SUBACK), in microseconds.
    pub latency_us: Option<Percentiles>,
}

/// The result of `mqtt bench`; [`fmt::Display`] renders the text summary, serde the JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// The scenario.
    pub scenario: Scenario,
    /// The broker URL.
    pub broker: String,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes per message.
    pub size: usize,
    /// Publishing connections.
    pub publishers: u64,
    /// Subscribing connections.
    pub subscribers: u64,
    /// Messages per publisher asked for (`None`: for a duration).
    pub count: Option<u64>,
    /// Messages per second per publisher (`None`: unpaced).
    pub rate_per_publisher: Option<f64>,
    /// Seconds from the start of publishing to its end (the drain not included).
    pub duration_s: f64,
    /// Messages published.
    pub sent: u64,
    /// Messages completed: QoS 0 written, QoS 1/2 acknowledged.
    pub acked: u64,
    /// Publishes the broker refused.
    pub refused: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages the subscribers should have received (`None` when the publishers are
    /// elsewhere).
    pub expected: Option<u64>,
    /// Expected but not received; for `sub`, the gaps in the sequences seen.
    pub lost: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Messages received after a later one of the same publisher.
    pub out_of_order: u64,
    /// Messages without a bench header (counted, not timed).
    pub foreign: u64,
    /// Messages published per second (after the warm-up).
    pub msg_per_s_out: f64,
    /// Messages received per second (after the warm-up).
    pub msg_per_s_in: f64,
    /// Payload bytes published per second.
    pub bytes_per_s_out: f64,
    /// Payload bytes received per second.
    pub bytes_per_s_in: f64,
    /// End-to-end latency (microseconds) of the messages due after the warm-up, counted from
    /// when each was due.
    pub latency_us: Option<Percentiles>,
    /// Connections.
    pub connect: ConnectStats,
    /// CPU time of this process (user + system), seconds.
    pub cpu_s: f64,
    /// CPU time per message sent or received, microseconds.
    pub cpu_us_per_message: Option<f64>,
    /// The open-files limit in force.
    pub file_limit: u64,
    /// Runtime worker threads.
    pub threads: usize,
    /// Ended by Ctrl-C.
    pub interrupted: bool,
    /// What went wrong (the first few distinct errors).
    pub errors: Vec<String>,
    /// No errors, nothing lost at QoS 1 and 2: the exit status is 0.
    pub ok: bool,
}

/// What [`build`] needs.
pub(super) struct Inputs<'a> {
    pub args: &'a BenchArgs,
    pub ctx: &'a Ctx,
    pub connections: u64,
    pub publishers: u64,
    pub subscribers: u64,
    pub expected: Option<u64>,
    pub count: Option<u64>,
    pub start_ns: u64,
    pub run_start_ns: u64,
    pub published_ns: u64,
    pub end_ns: u64,
    pub cpu: Duration,
    pub file_limit: u64,
    pub threads: usize,
    pub interrupted: bool,
}

fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

fn per_second(n: u64, s: f64) -> f64 {
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

pub(super) fn build(i: Inputs<'_>) -> Summary {
    let c = &i.ctx.counters;
    let g = Counters::get;
    let measure_from = i.ctx.measure_from_ns.load(Relaxed).min(i.end_ns);
    let sent = g(&c.published);
    let received = g(&c.received);
    let unique = g(&c.unique);
    let lost = match i.expected {
        Some(e) => e.saturating_sub(unique),
        None => g(&c.gaps),
    };
    let out_end = match g(&c.last_completed_ns) {
        0 => i.published_ns,
        t => t,
    };
    let out_s = secs(measure_from, out_end);
    let in_s = secs(measure_from, g(&c.last_received_ns));
    let size = i.ctx.size as f64;
    let msg_out = per_second(g(&c.published_measured), out_s);
    let msg_in = per_second(g(&c.received_measured), in_s);
    let connected = g(&c.connected);
    let mut errors = c.errors();
    let qos = i.args.qos;
    if qos > 0 && lost > 0 && errors.is_empty() && !i.interrupted {
        errors.push(format!("{lost} message(s) lost at QoS {qos}"));
    }
    if i.args.scenario != Scenario::Conn && connected < i.connections && errors.is_empty() {
        errors.push(format!(
            "only {connected} of {} connections were established",
            i.connections
        ));
    }
    let messages = sent + received;
    let cpu_s = i.cpu.as_secs_f64();
    let last_connected = g(&c.last_connected_ns).max(i.start_ns);
    Summary {
        scenario: i.args.scenario,
        broker: i.ctx.options.broker.to_string(),
        qos,
        size: i.ctx.size,
        publishers: i.publishers,
        subscribers: i.subscribers,
        count: i.count,
        rate_per_publisher: match i.args.scenario {
            Scenario::Conn | Scenario::Sub => None,
            _ => i.args.rate.map(|r| {
                if i.args.rate_total {
                    r / i.publishers.max(1) as f64
                } else {
                    r
                }
            }),
        },
        duration_s: secs(i.run_start_ns, i.published_ns.max(i.run_start_ns)),
        sent,
        acked: g(&c.completed),
        refused: g(&c.refused),
        received,
        unique,
        expected: i.expected,
        lost,
        duplicates: g(&c.duplicates),
        out_of_order: g(&c.out_of_order),
        foreign: g(&c.foreign),
        msg_per_s_out: msg_out,
        msg_per_s_in: msg_in,
        bytes_per_s_out: msg_out * size,
        bytes_per_s_in: msg_in * size,
        latency_us: Percentiles::of(&c.latency.snapshot()),
        connect: ConnectStats {
            attempted: i.connections,
            connected,
            errors: g(&c.connect_errors),
            lost: g(&c.lost_connections),
            per_second: per_second(connected, secs(i.start_ns, last_connected)),
            latency_us: Percentiles::of(&c.connect_latency.snapshot()),
        },
        cpu_s,
        cpu_us_per_message: (messages > 0).then(|| cpu_s * 1e6 / messages as f64),
        file_limit: i.file_limit,
        threads: i.threads,
        interrupted: i.interrupted,
        ok: errors.is_empty(),
        errors,
    }
}

/// Microseconds as a short human reading.
fn us(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1} s", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{v} µs")
    }
}

fn bytes(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} GB/s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} MB/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB/s", v / 1e3)
    } else {
        format!("{v:.0} B/s")
    }
}

fn percentiles(f: &mut fmt::Formatter<'_>, label: &str, p: &Percentiles) -> fmt::Result {
    writeln!(
        f,
        "  {label:<13} min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        us(p.min),
        us(p.p50),
        us(p.p90),
        us(p.p99),
        us(p.p999),
        us(p.max),
        p.count
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scenario = serde_json::to_value(self.scenario)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        write!(f, "mqtt bench {scenario} against {}: ", self.broker)?;
        if self.scenario == Scenario::Conn {
            writeln!(f, "{} connections", self.connect.attempted)?;
        } else {
            write!(
                f,
                "{} publisher(s), {} subscriber(s), QoS {}, {} B payloads",
                self.publishers, self.subscribers, self.qos, self.size
            )?;
            if let Some(r) = self.rate_per_publisher {
                write!(f, ", {r:.0} msg/s each")?;
            }
            writeln!(f)?;
        }
        let k = &self.connect;
        write!(
            f,
            "  connections   {} of {} up, {} failed, {} lost, {:.0} conn/s",
            k.connected, k.attempted, k.errors, k.lost, k.per_second
        )?;
        match &k.latency_us {
            Some(p) => writeln!(
                f,
                "; connect p50 {}  p99 {}  max {}",
                us(p.p50),
                us(p.p99),
                us(p.max)
            )?,
            None => writeln!(f)?,
        }
        if self.scenario != Scenario::Conn {
            if self.publishers > 0 {
                writeln!(
                    f,
                    "  sent          {} in {:.2} s ({} acknowledged), {:.0} msg/s, {}",
                    self.sent,
                    self.duration_s,
                    self.acked,
                    self.msg_per_s_out,
                    bytes(self.bytes_per_s_out)
                )?;
            }
            if self.subscribers > 0 {
                let of = self
                    .expected
                    .map(|e| format!(" of {e} expected"))
                    .unwrap_or_default();
                writeln!(
                    f,
                    "  received      {}{of}, {:.0} msg/s, {}",
                    self.unique,
                    self.msg_per_s_in,
                    bytes(self.bytes_per_s_in)
                )?;
                let lost = if self.expected.is_some() {
                    "lost"
                } else {
                    "lost (gaps)"
                };
                writeln!(
                    f,
                    "  {lost} {}, duplicates {}, out of order {}{}",
                    self.lost,
                    self.duplicates,
                    self.out_of_order,
                    if self.foreign > 0 {
                        format!(", without bench header {}", self.foreign)
                    } else {
                        String::new()
                    }
                )?;
            }
            if let Some(p) = &self.latency_us {
                percentiles(f, "latency", p)?;
            }
        }
        match self.cpu_us_per_message {
            Some(per) => writeln!(
                f,
                "  cpu           {:.2} s on {} thread(s), {per:.2} µs per message sent or received",
                self.cpu_s, self.threads
            )?,
            None => writeln!(
                f,
                "  cpu           {:.2} s on {} thread(s)",
                self.cpu_s, self.threads
            )?,
        }
        if self.interrupted {
            writeln!(
                f,
                "  interrupted (Ctrl-C): the numbers cover the run until then"
            )?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}
