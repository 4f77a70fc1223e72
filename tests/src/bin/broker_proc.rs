//! Our broker in a process of its own, for the SIGKILL tests (`tests/broker_durable_kill.rs`).
//!
//! `broker_proc PORT DIR DURABILITY` (DURABILITY `ack` or `relaxed`, or `ack/N` for N sibling
//! cores, `shards = N`) serves `mqtt://127.0.0.1:PORT`
//! with its store in `DIR`, prints `ready ADDRESS` once it listens, and runs until it is
//! killed. The session queues are unbounded in practice (a million messages, a gigabyte) so
//! that an offline subscriber loses nothing to a limit, and at most 256 messages are in flight
//! to one client. `RUST_LOG` sets the log filter (stderr; default `warn`).

use std::io::Write;
use std::time::Duration;

use mqtt_tokio::broker::{Broker, BrokerConfig, Durability, StartError};
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, dir, durability] = args.as_slice() else {
        return Err("usage: broker_proc PORT DIR ack|relaxed".into());
    };
    let port: u16 = port.parse()?;
    let mut cfg = BrokerConfig::new(&format!("mqtt://127.0.0.1:{port}"));
    cfg.persistence_dir = Some(dir.into());
    let (durability, shards) = durability.split_once('/').unwrap_or((durability, "1"));
    cfg.shards = shards.parse()?;
    cfg.durability = Some(match durability {
        "ack" => Durability::Ack,
        "relaxed" => Durability::Relaxed,
        other => return Err(format!("durability {other:?}: ack or relaxed").into()),
    });
    cfg.max_queued_messages = 1_000_000;
    cfg.max_queued_bytes = 1 << 30;
    cfg.max_queued_bytes_total = 1 << 30;
    // A 3.1.1 client announces no Receive Maximum, and by default the broker then has up to
    // 65 535 messages in flight to it: a backlog of thousands overruns our client's 1 024
    // slots for QoS 2 awaiting PUBREL, which drops the connection (0x93) and gets every QoS 1
    // message in flight resent. Not what these tests are about: keep the window below that.
    cfg.max_inflight = 256;
    // The port was free when the test picked it; a restart right after a kill may still find
    // it taken for a moment.
    let mut tries = 0;
    let broker = loop {
        match Broker::start(cfg.clone()).await {
            Err(StartError::Bind { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", broker.local_addr())?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    drop(broker);
    Ok(())
}
