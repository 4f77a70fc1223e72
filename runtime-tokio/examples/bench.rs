//! Throughput and latency of this client next to `rumqttc`, against a private mosquitto.
//!
//! `cargo run --release -p runtime-tokio --example bench` (needs `mosquitto` installed; set
//! `BENCH_SCALE=0.2` for a quicker, noisier run, `BENCH_REPEAT` for more repetitions).
//! `BENCH_PROFILE=ours` (or `rumqttc`) runs one client alone, 300 000 messages of 64 B at
//! `BENCH_Q` (default 1), for `perf stat` / `perf record`.
//!
//! Both clients speak MQTT 3.1.1 with the same settings (inflight 100, 1 MiB maximum packet,
//! TCP_NODELAY, keep-alive 30 s) on a 2-worker tokio runtime:
//! - throughput, QoS 0: N publishes as fast as the API takes them; the clock stops when a
//!   subscriber of the same kind on another connection has received all N;
//! - throughput, QoS 1: the clock stops at the last PUBACK;
//! - latency: 2000 messages paced at 2000/s, each carrying its send time; a subscriber of the
//!   same kind on another connection notes the delay; p50 and p99.
//!
//! Each throughput figure is the best of `BENCH_REPEAT` (default 3) runs, alternating clients.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mqtt_tokio::{Client, Event, Options, ProtocolVersion, QoS};
use tokio::sync::mpsc;

const INFLIGHT: u16 = 100;
const MAX_PACKET: u32 = 1 << 20;
const RUN_LIMIT: Duration = Duration::from_secs(30);
const LATENCY_MESSAGES: usize = 2000;
const LATENCY_RATE: u64 = 2000;

type Res<T> = Result<T, String>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of `size` bytes starting with the send time.
fn stamped(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    p[..8].copy_from_slice(&now_ns().to_be_bytes());
    p
}

fn latency_of(payload: &[u8]) -> u64 {
    let sent = payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes);
    now_ns().saturating_sub(sent)
}

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Res<Mosquitto> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/bin/mosquitto",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("mosquitto is not installed (apt-get install mosquitto)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let conf = format!(
            "{}log_dest none\nallow_anonymous true\nmax_inflight_messages 0\n\
             max_queued_messages 0\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\n",
            if root { "user root\n" } else { "" }
        );
        let cfg = dir.path().join("mosquitto.conf");
        std::fs::write(&cfg, conf).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let m = Mosquitto {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("mosquitto did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ours,
    Rumqttc,
}

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn rqos(q: u8) -> rumqttc::QoS {
    if q == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

// ---- ours -----------------------------------------------------------------------------------

async fn ours_client(port: u16, id: &str) -> Res<(Client, mpsc::UnboundedReceiver<Event>)> {
    let mut o = Options::new(&format!("mqtt://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .client_id(id)
        .version(ProtocolVersion::V311)
        .keep_alive(Duration::from_secs(30));
    o.inflight = INFLIGHT;
    o.max_packet_size = MAX_PACKET;
    let (c, mut d) = Client::new(o).map_err(|e| e.to_string())?;
    let events = d.events();
    tokio::spawn(d.run());
    c.wait_connected(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok((c, events))
}

/// A subscriber that reports when it has `n` messages (with each one's latency if `stamp`).
async fn ours_subscriber(
    port: u16,
    topic: &str,
    q: u8,
    n: usize,
) -> Res<(Client, tokio::task::JoinHandle<(Instant, Vec<u64>)>)> {
    let (c, mut events) = ours_client(port, &format!("ours-sub-{topic}")).await?;
    c.subscribe(topic, qos_of(q))
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while let Some(e) = events.recv().await {
            if let Event::Message(m) = e {
                lat.push(latency_of(&m.payload));
                if lat.len() == n {
                    break;
                }
            }
        }
        (Instant::now(), lat)
    });
    Ok((c, task))
}

async fn ours_throughput(port: u16, q: u8, size: usize, n: usize, run: usize) -> Res<Duration> {
    let topic = format!("bench/ours/{q}/{size}/{run}");
    let sub = if q == 0 {
        Some(ours_subscriber(port, &topic, q, n).await?)
    } else {
        None
    };
    let (c, _events) = ours_client(port, &format!("ours-pub-{topic}")).await?;
    let payload = vec![b'x'; size];
    let qos = qos_of(q);
    let start = Instant::now();
    let mut last = None;
    for _ in 0..n {
        last = Some(
            c.publish(&topic, &payload, qos, false)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let end = match sub {
        Some((sc, task)) => {
            let (end, got) = task.await.map_err(|e| e.to_string())?;
            sc.disconnect().await;
            if got.len() < n {
                return Err(format!("subscriber got {} of {n}", got.len()));
            }
            end
        }
        None => {
            // PUBACKs come in order: the last one completes last.
            if let Some(d) = last {
                d.await.map_err(|e| e.to_string())?;
            }
            Instant::now()
        }
    };
    c.disconnect().await;
    Ok(end - start)
}

async fn ours_latency(port: u16, q: u8, run: usize) -> Res<Vec<u64>> {
    let topic = format!("bench/ours/lat/{q}/{run}");
    let (sc, task) = ours_subscriber(port, &topic, q, LATENCY_MESSAGES).await?;
    let (c, _events) = ours_client(port, &format!("ours-lpub-{topic}")).await?;
    let start = tokio::time::Instant::now();
    for i in 0..LATENCY_MESSAGES as u64 {
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / LATENCY_RATE)).await;
        // The delivery is not awaited: the subscriber measures.
        drop(
            c.publish(&topic, stamped(64), qos_of(q), false)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let (_, lat) = task.await.map_err(|e| e.to_string())?;
    c.disconnect().await;
    sc.disconnect().await;
    Ok(lat)
}

// ---- rumqttc --------------------------------------------------------------------------------

fn rumqttc_client(port: u16, id: &str) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(INFLIGHT);
    o.set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
    let (c, mut el) = rumqttc::AsyncClient::new(o, 1024);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (c, el)
}

async fn rumqttc_subscriber(
    port: u16,
    topic: &str,
    q: u8,
    n: usize,
) -> Res<(
    rumqttc::AsyncClient,
    tokio::task::JoinHandle<(Instant, Vec<u64>)>,
)> {
    let (c, mut el) = rumqttc_client(port, &format!("rumq-sub-{topic}"));
    c.subscribe(topic, rqos(q))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match el.poll().await.map_err(|e| e.to_string())? {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    let task = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                lat.push(latency_of(&p.payload));
                if lat.len() == n {
                    break;
                }
            }
        }
        let end = Instant::now();
        // Keep the connection serviced until the disconnect goes out.
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        (end, lat)
    });
    Ok((c, task))
}

/// Polls a publisher's event loop; reports when `n` PUBACKs (QoS 1) or `n` written publishes
/// (QoS 0) were seen.
fn rumqttc_driver(mut el: rumqttc::EventLoop, q: u8, n: usize) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok(ev) = el.poll().await {
            let hit = match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => q == 1,
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)) => q == 0,
                _ => false,
            };
            if hit {
                count += 1;
                if count == n {
                    break;
                }
            }
        }
        let end = Instant::now();
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        end
    })
}

async fn rumqttc_throughput(port: u16, q: u8, size: usize, n: usize, run: usize) -> Res<Duration> {
    let topic = format!("bench/rumq/{q}/{size}/{run}");
    let sub = if q == 0 {
        Some(rumqttc_subscriber(port, &topic, q, n).await?)
    } else {
        None
    };
    let (c, el) = rumqttc_client(port, &format!("rumq-pub-{topic}"));
    let driver = rumqttc_driver(el, q, n);
    let payload = vec![b'x'; size];
    let start = Instant::now();
    for _ in 0..n {
        c.publish(topic.as_str(), rqos(q), false, payload.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    let sent = driver.await.map_err(|e| e.to_string())?;
    let end = match sub {
        Some((sc, task)) => {
            let (end, got) = task.await.map_err(|e| e.to_string())?;
            let _ = sc.disconnect().await;
            if got.len() < n {
                return Err(format!("subscriber got {} of {n}", got.len()));
            }
            end.max(sent)
        }
        None => sent,
    };
    let _ = c.disconnect().await;
    Ok(end - start)
}

async fn rumqttc_latency(port: u16, q: u8, run: usize) -> Res<Vec<u64>> {
    let topic = format!("bench/rumq/lat/{q}/{run}");
    let (sc, task) = rumqttc_subscriber(port, &topic, q, LATENCY_MESSAGES).await?;
    let (c, el) = rumqttc_client(port, &format!("rumq-lpub-{topic}"));
    let _driver = rumqttc_driver(el, q, LATENCY_MESSAGES);
    let start = tokio::time::Instant::now();
    for i in 0..LATENCY_MESSAGES as u64 {
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / LATENCY_RATE)).await;
        c.publish(topic.as_str(), rqos(q), false, stamped(64))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (_, lat) = task.await.map_err(|e| e.to_string())?;
    let _ = c.disconnect().await;
    let _ = sc.disconnect().await;
    Ok(lat)
}

/// The pid of the mosquitto the bench started, to read its CPU time.
static BROKER_PID: OnceLock<u32> = OnceLock::new();

/// CPU time this process has used (user + system), from `/proc/self/stat` (10 ms ticks).
fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time the broker has used so far.
fn broker_cpu_time() -> Duration {
    BROKER_PID
        .get()
        .map_or(Duration::ZERO, |pid| cpu_time_of(&pid.to_string()))
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat` (10 ms ticks).
fn cpu_time_of(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(f.get(11)? + f.get(12)?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

// ---- the table ------------------------------------------------------------------------------

/// Messages per second, the client process's CPU microseconds per message, and the share of
/// one core the broker used during the run.
async fn throughput(
    kind: Kind,
    port: u16,
    q: u8,
    size: usize,
    n: usize,
    run: usize,
) -> Res<(f64, f64, f64)> {
    let cpu = cpu_time();
    let broker_cpu = broker_cpu_time();
    let fut = async {
        match kind {
            Kind::Ours => ours_throughput(port, q, size, n, run).await,
            Kind::Rumqttc => rumqttc_throughput(port, q, size, n, run).await,
        }
    };
    let took = tokio::time::timeout(RUN_LIMIT, fut)
        .await
        .map_err(|_| format!("{kind:?}: no result within {RUN_LIMIT:?}"))??;
    let cpu = (cpu_time() - cpu).as_secs_f64() * 1e6 / n as f64;
    let broker = (broker_cpu_time() - broker_cpu).as_secs_f64() / took.as_secs_f64();
    Ok((n as f64 / took.as_secs_f64(), cpu, broker))
}

async fn latency(kind: Kind, port: u16, q: u8, run: usize) -> Res<(f64, f64)> {
    let fut = async {
        match kind {
            Kind::Ours => ours_latency(port, q, run).await,
            Kind::Rumqttc => rumqttc_latency(port, q, run).await,
        }
    };
    let mut lat = tokio::time::timeout(RUN_LIMIT, fut)
        .await
        .map_err(|_| format!("{kind:?}: no result within {RUN_LIMIT:?}"))??;
    if lat.is_empty() {
        return Err("no messages".into());
    }
    lat.sort_unstable();
    let at = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)] as f64 / 1000.0;
    Ok((at(50), at(99)))
}

fn grouped(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Res<()> {
    let broker = Mosquitto::start()?;
    let port = broker.port;
    let _ = BROKER_PID.set(broker.child.id());
    let scale = env_f64("BENCH_SCALE", 1.0);
    let repeat = env_f64("BENCH_REPEAT", 3.0).max(1.0) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    rt.block_on(async move {
        // Warm-up: connections, allocator, broker.
        throughput(Kind::Ours, port, 1, 64, 2000, 0).await?;
        throughput(Kind::Rumqttc, port, 1, 64, 2000, 0).await?;

        if let Ok(k) = std::env::var("BENCH_PROFILE") {
            let kind = if k == "ours" { Kind::Ours } else { Kind::Rumqttc };
            let q = env_f64("BENCH_Q", 1.0) as u8;
            let (rate, cpu, broker) = throughput(kind, port, q, 64, 300_000, 99).await?;
            println!(
                "{kind:?} qos{q} 64B: {} msg/s, {cpu:.2} us/msg, broker {:.0}%",
                grouped(rate),
                broker * 100.0
            );
            return Ok(());
        }
        println!(
            "mosquitto on 127.0.0.1:{port}; best of {repeat} runs; MQTT 3.1.1, inflight {INFLIGHT}"
        );
        println!(
            "(client CPU µs/msg ours / rumqttc; broker: mosquitto's share of one core in the best run)"
        );
        println!(
            "{:<12} {:>18} {:>18} {:>8}",
            "throughput", "ours", "rumqttc", "ratio"
        );
        let cases: [(u8, usize, usize); 4] = [
            (0, 64, 200_000),
            (0, 1024, 100_000),
            (1, 64, 100_000),
            (1, 1024, 60_000),
        ];
        let mut run = 1;
        for (q, size, n) in cases {
            let n = ((n as f64 * scale) as usize).max(1000);
            let (mut ours, mut theirs) = (0f64, 0f64);
            let (mut ours_cpu, mut theirs_cpu) = (f64::MAX, f64::MAX);
            let (mut ours_broker, mut theirs_broker) = (0f64, 0f64);
            for _ in 0..repeat {
                let (rate, cpu, broker) = throughput(Kind::Ours, port, q, size, n, run).await?;
                if rate > ours {
                    ours_broker = broker;
                }
                ours = ours.max(rate);
                ours_cpu = ours_cpu.min(cpu);
                let (rate, cpu, broker) =
                    throughput(Kind::Rumqttc, port, q, size, n, run).await?;
                if rate > theirs {
                    theirs_broker = broker;
                }
                theirs = theirs.max(rate);
                theirs_cpu = theirs_cpu.min(cpu);
                run += 1;
            }
            let label = if size >= 1024 {
                format!("qos{q} {}KiB", size / 1024)
            } else {
                format!("qos{q} {size}B")
            };
            println!(
                "{label:<12} {:>12} msg/s {:>12} msg/s {:>7.2}x   {:>5.2} / {:>5.2} us   \
                 broker {:>3.0}% / {:>3.0}%",
                grouped(ours),
                grouped(theirs),
                ours / theirs,
                ours_cpu,
                theirs_cpu,
                ours_broker * 100.0,
                theirs_broker * 100.0
            );
        }
        println!(
            "\n{:<12} {:>18} {:>18} {:>8}",
            "latency", "ours p50 / p99", "rumqttc p50 / p99", "p99 ratio"
        );
        for q in [0u8, 1] {
            let (o50, o99) = latency(Kind::Ours, port, q, run).await?;
            let (r50, r99) = latency(Kind::Rumqttc, port, q, run).await?;
            run += 1;
            println!(
                "{:<12} {:>7.0} / {:>6.0} us {:>7.0} / {:>6.0} us {:>7.2}x",
                format!("qos{q} 64B"),
                o50,
                o99,
                r50,
                r99,
                o99 / r99
            );
        }
        println!(
            "\n({LATENCY_MESSAGES} messages at {LATENCY_RATE}/s; ratio < 1 means ours is lower)"
        );
        Ok::<(), String>(())
    })?;
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(broker);
    Ok(())
}
