//! `mqtt bench`: a load generator for any MQTT broker, with live progress and latency
//! percentiles.
//!
//! Every message carries a [`payload::Header`]: the run, the publisher, a sequence number and
//! the time it was due. Receivers count what arrives against what was sent (lost,
//! duplicates, out of order) and time it end to end. At a fixed rate the schedule does not
//! wait for the broker, and a late message is timed from when it should have been sent, so
//! a stalling broker shows in the percentiles instead of slowing the generator down.
//!
//! Each connection is one task driving the sans-IO session core straight over the transport
//! (no client handle, no channels), so one process holds 10 000 connections.
//!
//! [`run`] takes the broker options (the `mqtt` tool builds them from its connection flags)
//! and the [`BenchArgs`], and returns the [`Summary`] with its exit status.

mod conn;
mod pacer;
pub mod payload;
mod progress;
pub mod report;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use clap::{Args, ValueEnum};
use mqtt_client::Options;
use mqtt_proto::QoS;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use conn::{Ctx, Plan, PubPlan};
pub use report::Summary;
use stats::Counters;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers, each on its own topic (`bench/%i`).
    Pub,
    /// N subscribers that count and time what arrives (from another `mqtt bench`).
    Sub,
    /// N pairs: each publisher to its own subscriber.
    P2p,
    /// N publishers to one subscriber.
    FanIn,
    /// One publisher to N subscribers.
    FanOut,
    /// N clients, each publishing to and subscribing from all.
    Mesh,
    /// Open N connections (at --rate per second), hold them for --duration.
    Conn,
}

/// The flags of `mqtt bench` (besides the connection flags).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Clients: publishers (pub, fan-in), subscribers (sub, fan-out), pairs (p2p), nodes
    /// (mesh) or connections (conn).
    #[arg(short = 'c', long = "clients", default_value_t = 1)]
    pub clients: usize,
    /// Messages per publisher [default: 1000 without --duration].
    #[arg(long = "count")]
    pub count: Option<u64>,
    /// Publish for this long (10s, 500ms, 2m) instead of a count; `conn`: how long to hold
    /// the connections [default: 1s]; `sub`: how long to listen.
    #[arg(long = "duration", value_parser = parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Messages per second per publisher (1000 or 1000/s); unpaced without it. `conn`:
    /// connections opened per second.
    #[arg(long = "rate", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// --rate is the total of all publishers, split evenly.
    #[arg(long = "rate-total", requires = "rate")]
    pub rate_total: bool,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 24: the header).
    #[arg(short = 's', long = "size", default_value_t = 64)]
    pub size: usize,
    /// Topic; %i becomes the client's index [default: bench/%i; fan-out: bench/fan-out;
    /// sub: bench/#].
    #[arg(short = 't', long = "topic")]
    pub topic: Option<String>,
    /// Messages a publisher has unacknowledged at most (QoS 1/2), or writes in one go (QoS 0).
    #[arg(long = "inflight", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Persistent sessions (clean start off; session expiry one hour at MQTT 5), so that a
    /// durable broker stores what it queues for the subscribers.
    #[arg(long = "persistent")]
    pub persistent: bool,
    /// Leave messages due in this first stretch out of the rates and latencies (they are
    /// still counted as sent and received).
    #[arg(long = "warmup", value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// After the last publish, how long to wait for messages still on their way.
    #[arg(long = "drain", value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Connection attempts in progress at once.
    #[arg(long = "connect-concurrency", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Worker threads [default: the number of CPUs].
    #[arg(long = "threads")]
    pub threads: Option<usize>,
    /// Print the result as one JSON object instead of text.
    #[arg(long = "json")]
    pub json: bool,
    /// Also write the JSON result to FILE.
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// No progress display.
    #[arg(long = "quiet")]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>()
        && secs >= 0.0
        && secs.is_finite()
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (10s, 500ms, 2m): {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (per second, e.g. 1000 or 1000/s)"
        )),
    }
}

/// Why a run could not start.
#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// The connections of a run and how many messages each publisher's copies reach.
struct Layout {
    plans: Vec<Plan>,
    publishers: usize,
    subscribers: usize,
    /// Subscribers each message reaches; `None` when the publishers are elsewhere (`sub`).
    fan: Option<u64>,
    /// Messages per publisher, when counted.
    count: Option<u64>,
}

/// Replaces `%i` with the index.
fn topic_for(pattern: &str, i: usize) -> String {
    pattern.replace("%i", &i.to_string())
}

/// The filter matching every publisher's topic: a level that is `%i` becomes `+`.
fn filter_for_all(pattern: &str) -> Result<String, BenchError> {
    if !pattern.contains("%i") {
        return Ok(pattern.to_string());
    }
    let levels: Vec<&str> = pattern
        .split('/')
        .map(|l| if l == "%i" { "+" } else { l })
        .collect();
    if levels.iter().any(|l| l.contains("%i")) {
        return Err(BenchError(format!(
            "topic {pattern:?}: for one subscription to match every publisher, %i must be a \
             whole level (bench/%i/data)"
        )));
    }
    Ok(levels.join("/"))
}

fn layout(args: &BenchArgs, prefix: &str) -> Result<Layout, BenchError> {
    let n = args.clients;
    let default_topic = match args.scenario {
        Scenario::FanOut => "bench/fan-out",
        Scenario::Sub => "bench/#",
        _ => "bench/%i",
    };
    let topic = args.topic.as_deref().unwrap_or(default_topic);
    let count = match (args.count, args.duration) {
        (Some(c), _) => Some(c),
        (None, Some(_)) => None,
        (None, None) if args.scenario == Scenario::Sub => None,
        (None, None) => Some(1000),
    };
    let per_client = args.rate.map(|r| {
        let publishers = match args.scenario {
            Scenario::FanOut => 1,
            _ => n,
        };
        if args.rate_total {
            r / publishers.max(1) as f64
        } else {
            r
        }
    });
    let interval_ns = per_client.map(|r| (1e9 / r).max(1.0) as u64);
    let publisher = |i: usize, count: Option<u64>| PubPlan {
        topic: topic_for(topic, i),
        publisher: u32::try_from(i).unwrap_or(u32::MAX),
        count,
        interval_ns,
        offset_ns: interval_ns.map_or(0, |iv| iv / n.max(1) as u64 * i as u64),
    };
    let plan = |id: String, order: usize| Plan {
        client_id: id,
        order: order as u64,
        publish: None,
        subscribe: None,
    };
    let mut plans = Vec::new();
    let (mut publishers, mut subscribers, mut fan) = (0, 0, Some(1));
    match args.scenario {
        Scenario::Pub => {
            for i in 0..n {
                plans.push(Plan {
                    publish: Some(publisher(i, count)),
                    ..plan(format!("{prefix}-p{i}"), i)
                });
            }
            publishers = n;
            fan = Some(0);
        }
        Scenario::Sub => {
            for i in 0..n {
                plans.push(Plan {
                    subscribe: Some(topic_for(topic, i)),
                    ..plan(format!("{prefix}-s{i}"), i)
                });
            }
            subscribers = n;
            fan = None;
        }
        Scenario::P2p => {
            if !topic.contains("%i") {
                return Err(BenchError(format!(
                    "p2p needs %i in the topic, so each pair has its own (got {topic:?})"
                )));
            }
            for i in 0..n {
                plans.push(Plan {
                    subscribe: Some(topic_for(topic, i)),
                    ..plan(format!("{prefix}-s{i}"), 2 * i)
                });
                plans.push(Plan {
                    publish: Some(publisher(i, count)),
                    ..plan(format!("{prefix}-p{i}"), 2 * i + 1)
                });
            }
            (publishers, subscribers) = (n, n);
        }
        Scenario::FanIn => {
            plans.push(Plan {
                subscribe: Some(filter_for_all(topic)?),
                ..plan(format!("{prefix}-s0"), 0)
            });
            for i in 0..n {
                plans.push(Plan {
                    publish: Some(publisher(i, count)),
                    ..plan(format!("{prefix}-p{i}"), i + 1)
                });
            }
            (publishers, subscribers) = (n, 1);
        }
        Scenario::FanOut => {
            let t = topic_for(topic, 0);
            for i in 0..n {
                plans.push(Plan {
                    subscribe: Some(t.clone()),
                    ..plan(format!("{prefix}-s{i}"), i)
                });
            }
            plans.push(Plan {
                publish: Some(PubPlan {
                    offset_ns: 0,
                    ..publisher(0, count)
                }),
                ..plan(format!("{prefix}-p0"), n)
            });
            (publishers, subscribers) = (1, n);
            fan = Some(n as u64);
        }
        Scenario::Mesh => {
            let all = filter_for_all(topic)?;
            for i in 0..n {
                plans.push(Plan {
                    publish: Some(publisher(i, count)),
                    subscribe: Some(all.clone()),
                    ..plan(format!("{prefix}-m{i}"), i)
                });
            }
            (publishers, subscribers) = (n, n);
            fan = Some(n as u64);
        }
        Scenario::Conn => {
            for i in 0..n {
                plans.push(plan(format!("{prefix}-c{i}"), i));
            }
            fan = Some(0);
        }
    }
    Ok(Layout {
        plans,
        publishers,
        subscribers,
        fan,
        count,
    })
}

/// Raises the soft limit on open files as far as needed (and allowed) for `connections`.
/// Returns the limit in force, or why the run cannot have that many.
fn raise_file_limit(connections: usize) -> Result<u64, BenchError> {
    // Sockets, plus stdio, the runtime's own descriptors and files (TLS certificates).
    let needed = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(64);
    let limit = rlimit::increase_nofile_limit(needed).unwrap_or(0);
    if limit >= needed {
        return Ok(limit);
    }
    // Past the hard limit only a process with CAP_SYS_RESOURCE gets further; try once.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, needed, needed).is_ok() {
        return Ok(needed);
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((limit, limit));
    Err(BenchError(format!(
        "{connections} connections need about {needed} open files, but the limit is {soft} \
         (hard limit {hard}, which this process may not raise: it takes CAP_SYS_RESOURCE, \
         e.g. root outside a container, or a higher ulimit -Hn / LimitNOFILE= / \
         /etc/security/limits.conf for the user)"
    )))
}

/// Runs a benchmark to the end on a runtime of its own: connects, publishes and counts,
/// prints progress on stderr (when it is a terminal and not `--quiet`), and returns the
/// summary. `Err` only when the run could not start (bad arguments, file limit).
pub fn run(options: Options, args: &BenchArgs) -> Result<Summary, BenchError> {
    if args.clients == 0 {
        return Err(BenchError("-c/--clients must be at least 1".into()));
    }
    if args.size < payload::HEADER_LEN && args.scenario != Scenario::Conn {
        return Err(BenchError(format!(
            "-s/--size must be at least {} (the bench header: publisher, sequence, send time)",
            payload::HEADER_LEN
        )));
    }
    let prefix = if options.client_id.is_empty() {
        format!("mqtt-bench-{}", std::process::id())
    } else {
        options.client_id.clone()
    };
    let layout = layout(args, &prefix)?;
    let file_limit = raise_file_limit(layout.plans.len())?;
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| BenchError(format!("cannot start the runtime: {e}")))?;
    // Only paced publishers wait for a due time.
    let pacer = match args.rate {
        Some(_) if args.scenario != Scenario::Conn => Some(
            pacer::Pacer::start()
                .map_err(|e| BenchError(format!("cannot start the pacer thread: {e}")))?,
        ),
        _ => None,
    };
    let summary = runtime.block_on(coordinate(options, args, layout, file_limit, pacer));
    // Connections still closing are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(summary)
}

async fn coordinate(
    options: Options,
    args: &BenchArgs,
    layout: Layout,
    file_limit: u64,
    pacer: Option<pacer::Pacer>,
) -> Summary {
    let clock = payload::Clock::new();
    let start_ns = clock.now_ns();
    let mut config = options.session_config();
    config.inflight = args.inflight;
    config.clean_start = !args.persistent;
    if args.persistent {
        config.session_expiry = 3_600;
    }
    let run = (start_ns as u32) ^ std::process::id().rotate_left(16);
    let ctx = Arc::new(Ctx {
        config,
        qos: QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce),
        size: args.size.max(payload::HEADER_LEN),
        run,
        clock,
        counters: Counters::new(),
        gate: Semaphore::new(args.connect_concurrency as usize),
        connect_interval_ns: match args.scenario {
            Scenario::Conn => args.rate.map(|r| (1e9 / r).max(1.0) as u64),
            _ => None,
        },
        start_ns,
        window: usize::from(args.inflight),
        run_start_ns: AtomicU64::new(u64::MAX),
        measure_from_ns: AtomicU64::new(u64::MAX),
        publish_for: match args.scenario {
            Scenario::Conn | Scenario::Sub => None,
            _ => args.duration,
        },
        sub_count: match args.scenario {
            Scenario::Sub => args.count,
            _ => None,
        },
        abort_on_error: args.scenario != Scenario::Conn,
        aborted: AtomicBool::new(false),
        abort_notify: Notify::new(),
        pacer,
        started: CancellationToken::new(),
        stopped: CancellationToken::new(),
        options,
    });
    let cpu_start = cpu_time::ProcessTime::try_now().ok();
    let total = layout.plans.len();
    let mut tasks = tokio::task::JoinSet::new();
    for plan in layout.plans {
        tasks.spawn(conn::run(ctx.clone(), plan));
    }
    let total_messages = layout
        .count
        .filter(|_| layout.publishers > 0)
        .map(|n| n.saturating_mul(layout.publishers as u64));
    let progress = progress::Progress::start(&ctx, args.quiet, total as u64, total_messages);
    let c = &ctx.counters;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let settled = |c: &Counters| {
        Counters::get(&c.connected) + Counters::get(&c.connect_errors) >= total as u64
    };

    // 1. Every connection up (and subscribed).
    while !settled(c) && !ctx.aborted.load(Relaxed) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = ctx.abort_notify.notified() => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
    }

    // 2. Publish (or hold, or listen).
    let run_start = ctx.clock.now_ns();
    let warmup_ns = args.warmup.map_or(0, |d| d.as_nanos() as u64);
    ctx.measure_from_ns.store(run_start + warmup_ns, Relaxed);
    ctx.run_start_ns.store(run_start, Relaxed);
    let running = !interrupted && !ctx.aborted.load(Relaxed);
    if running {
        ctx.started.cancel();
        progress.running();
        if args.scenario == Scenario::Sub {
            // Another process (or script) waits for this line before it starts publishing.
            eprintln!("mqtt bench: {} subscribers ready", layout.subscribers);
        }
    }
    let until = |d: Duration| tokio::time::Instant::now() + d;
    let hold_until = match args.scenario {
        Scenario::Conn => Some(until(args.duration.unwrap_or(Duration::from_secs(1)))),
        Scenario::Sub => args.duration.map(until),
        _ => None,
    };
    let publishers = layout.publishers as u64;
    let subscribers = layout.subscribers as u64;
    let publishing_done = |c: &Counters| match args.scenario {
        Scenario::Conn => false,
        Scenario::Sub => args.count.is_some() && Counters::get(&c.subscribers_done) >= subscribers,
        _ => Counters::get(&c.publishers_done) >= publishers,
    };
    while running && !publishing_done(c) && !ctx.aborted.load(Relaxed) {
        if hold_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = ctx.abort_notify.notified() => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
    }
    let published_ns = ctx.clock.now_ns();

    // 3. Drain: wait for what is still on its way.
    let expected = layout
        .fan
        .map(|fan| Counters::get(&c.published).saturating_mul(fan));
    if let Some(expected) = expected
        && expected > 0
        && running
        && !interrupted
    {
        let deadline = until(args.drain);
        while Counters::get(&c.unique) < expected
            && !ctx.aborted.load(Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = ctx.abort_notify.notified() => {}
                _ = &mut ctrl_c => { interrupted = true; break; }
            }
        }
    }
    let end_ns = ctx.clock.now_ns();

    // 4. Stop: every connection disconnects and flushes its counts.
    ctx.stopped.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    progress.finish();
    let cpu = cpu_start.map_or(Duration::ZERO, |t| t.elapsed());
    report::build(report::Inputs {
        args,
        ctx: &ctx,
        connections: total as u64,
        publishers,
        subscribers,
        expected,
        count: layout.count,
        start_ns,
        run_start_ns: run_start,
        published_ns,
        end_ns,
        cpu,
        file_limit,
        threads: tokio::runtime::Handle::current().metrics().num_workers(),
        interrupted,
    })
}
