//! Recovery of the durable broker: how long a restart takes, and how much memory, with a
//! million messages queued for an offline persistent session.
//!
//! ```text
//! cargo run --release -p runtime-tokio --example recovery
//! cargo run --release -p runtime-tokio --example recovery -- --messages 200000 --durability ack
//! ```
//!
//! 1. Fill: an in-process broker with a `persistence_dir` (a temporary directory, or `--dir`);
//!    one persistent subscriber session subscribes at QoS 1 and goes offline; 4 publishers
//!    push `--messages` QoS 1 messages of `--size` bytes (64) into its queue, through the
//!    broker (`--durability relaxed` by default, to be quick); the broker stops.
//! 2. Recover, in a fresh process (this program runs itself with `--recover DIR`, so the
//!    memory numbers are not the fill's): RSS before, `Broker::start` (which replays the
//!    store), RSS and peak RSS after, the store's own report; then the subscriber reconnects
//!    and drains the queue (`--no-drain` skips that); the store file size is printed when
//!    drained and after `--idle-secs` (3) idle, when the store has compacted itself.
//!
//! Prints one Markdown table row per phase. Numbers, not assertions; it exits 1 when a message
//! count is not what it should be.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use mqtt_tokio::broker::{Broker, BrokerConfig, Durability};
use mqtt_tokio::{Client, Event, Options, QoS};

const TOPIC: &str = "recovery/queue";
const SUBSCRIBER: &str = "recovery-subscriber";
const PUBLISHERS: usize = 4;

#[derive(Debug, Clone)]
struct Args {
    messages: usize,
    size: usize,
    durability: Durability,
    dir: Option<PathBuf>,
    recover: Option<PathBuf>,
    drain: bool,
    idle_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 1_000_000,
        size: 64,
        durability: Durability::Relaxed,
        dir: None,
        recover: None,
        drain: true,
        idle_secs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = value()?.parse().map_err(|e| format!("{e}"))?,
            "--size" => a.size = value()?.parse().map_err(|e| format!("{e}"))?,
            "--durability" => {
                a.durability = match value()?.as_str() {
                    "ack" => Durability::Ack,
                    "relaxed" => Durability::Relaxed,
                    other => return Err(format!("--durability ack|relaxed, not {other}")),
                }
            }
            "--dir" => a.dir = Some(value()?.into()),
            "--recover" => a.recover = Some(value()?.into()),
            "--no-drain" => a.drain = false,
            "--idle-secs" => a.idle_secs = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A file size, in KiB below 1 MiB.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        mib(bytes / 1024)
    }
}

fn file_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("broker.redb"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn config(dir: &Path, args: &Args) -> BrokerConfig {
    let mut cfg = BrokerConfig::new("mqtt://127.0.0.1:0");
    cfg.persistence_dir = Some(dir.to_path_buf());
    cfg.durability = Some(args.durability);
    cfg.receive_maximum = 1000;
    cfg.max_queued_messages = args.messages + 1000;
    cfg.max_queued_bytes = (args.messages + 1000) * (args.size + 512);
    cfg.max_queued_bytes_total = cfg.max_queued_bytes;
    cfg
}

fn options(url: &str, id: &str) -> Options {
    Options::new(url)
        .expect("the broker's URL")
        .client_id(id)
        .queue(20_000, 64 << 20)
}

/// Phase 1: fills the store and stops the broker.
async fn fill(dir: &Path, args: &Args) -> Result<(), String> {
    let broker = Broker::start(config(dir, args))
        .await
        .map_err(|e| e.to_string())?;
    let url = broker.urls()[0].clone();
    let sub = Client::spawn(
        options(&url, SUBSCRIBER).persistent_session(Duration::from_secs(30 * 86_400)),
    )
    .map_err(|e| e.to_string())?;
    sub.wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    sub.subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    sub.disconnect().await;

    let started = Instant::now();
    let per = args.messages / PUBLISHERS;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let count = if p == 0 {
            args.messages - per * (PUBLISHERS - 1)
        } else {
            per
        };
        let client = Client::spawn(options(&url, &format!("recovery-publisher-{p}")))
            .map_err(|e| e.to_string())?;
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            client
                .wait_connected(Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let mut last = None;
            for i in 0..count {
                let mut payload = format!("{p}:{i}:").into_bytes();
                payload.resize(size, b'.');
                let d = client
                    .publish(TOPIC, payload, QoS::AtLeastOnce, false)
                    .await
                    .map_err(|e| e.to_string())?;
                // Only the last one is awaited; the others allocate nothing once dropped.
                if i + 1 == count {
                    last = Some(d);
                }
            }
            if let Some(d) = last {
                d.await.map_err(|e| format!("{e:?}"))?;
            }
            client.shutdown(Duration::from_secs(30)).await;
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // Every message is in the queue (the publishers' last PUBACKs came after the others').
    let deadline = Instant::now() + Duration::from_secs(60);
    while broker.stats().queued_messages < args.messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let filled = started.elapsed();
    let stats = broker.stats();
    let report = broker.store_report();
    let rss = status_kib("VmRSS");
    broker.stop().await;
    println!(
        "| fill ({:?}) | {} messages of {} B in {:.1} s ({:.0} msg/s) | RSS {} | file {} | store {:?} |",
        args.durability,
        stats.queued_messages,
        args.size,
        filled.as_secs_f64(),
        stats.queued_messages as f64 / filled.as_secs_f64(),
        mib(rss),
        size(file_size(dir)),
        report.map(|r| (r.commits, r.ops)),
    );
    if stats.queued_messages != args.messages {
        return Err(format!(
            "{} messages queued, {} published ({:?})",
            stats.queued_messages, args.messages, stats.dropped
        ));
    }
    Ok(())
}

/// Phase 2 (a fresh process): the restart, measured.
async fn recover(dir: &Path, args: &Args) -> Result<(), String> {
    let rss_before = status_kib("VmRSS");
    let size_before = file_size(dir);
    let started = Instant::now();
    let broker = Broker::start(config(dir, args))
        .await
        .map_err(|e| e.to_string())?;
    let start_time = started.elapsed();
    let rss_after = status_kib("VmRSS");
    let peak = status_kib("VmHWM");
    let report = broker
        .store_report()
        .ok_or("no store report: the broker runs without a store")?;
    let queued = broker.stats().queued_messages;
    println!(
        "| recovery | {queued} messages queued, {} records in {:.2} s (Broker::start {:.2} s) | RSS {} -> {} (peak {}) | file {} | set aside {:?} |",
        report.recovered_records,
        report.recovery.as_secs_f64(),
        start_time.as_secs_f64(),
        mib(rss_before),
        mib(rss_after),
        mib(peak),
        size(size_before),
        report.set_aside,
    );
    if queued != args.messages {
        return Err(format!(
            "{queued} messages recovered, {} queued",
            args.messages
        ));
    }
    if args.drain {
        let url = broker.urls()[0].clone();
        let started = Instant::now();
        let (sub, mut driver) = Client::new(
            options(&url, SUBSCRIBER).persistent_session(Duration::from_secs(30 * 86_400)),
        )
        .map_err(|e| e.to_string())?;
        let mut events = driver.events();
        tokio::spawn(driver.run());
        let mut got = 0usize;
        while got < args.messages {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Some(Event::Message(_))) => got += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let drained = started.elapsed();
        sub.disconnect().await;
        let size_drained = file_size(dir);
        // The store compacts by itself once it has been idle for a while after many deletions.
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let size_idle = file_size(dir);
        broker.stop().await;
        println!(
            "| drain | {got} messages delivered in {:.1} s ({:.0} msg/s) | RSS {} (peak {}) | file {} drained, {} after {} s idle | |",
            drained.as_secs_f64(),
            got as f64 / drained.as_secs_f64(),
            mib(status_kib("VmRSS")),
            mib(status_kib("VmHWM")),
            size(size_drained),
            size(size_idle),
            args.idle_secs,
        );
        if got != args.messages {
            return Err(format!("{got} of {} delivered", args.messages));
        }
    } else {
        broker.stop().await;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("recovery: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Some(dir) = &args.recover {
        return match rt.block_on(recover(dir, &args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("recovery: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    println!("| phase | messages | memory | store file | store |");
    println!("| --- | --- | --- | --- | --- |");
    if let Err(e) = rt.block_on(fill(&dir, &args)) {
        eprintln!("recovery: {e}");
        return ExitCode::FAILURE;
    }
    drop(rt);
    let mut child = Command::new(std::env::current_exe().expect("this program's path"));
    child
        .arg("--recover")
        .arg(&dir)
        .args(["--messages", &args.messages.to_string()])
        .args(["--size", &args.size.to_string()])
        .args([
            "--durability",
            match args.durability {
                Durability::Ack => "ack",
                _ => "relaxed",
            },
        ]);
    if !args.drain {
        child.arg("--no-drain");
    }
    child.args(["--idle-secs", &args.idle_secs.to_string()]);
    match child.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("recovery: cannot run the recovery phase: {e}");
            ExitCode::FAILURE
        }
    }
}
