//! A publisher with a synced store, for the kill -9 tests (`tests/tests/durable_kill.rs`).
//!
//! `durable_pub URL CLIENT_ID STORE FROM TOTAL` publishes messages `FROM..TOTAL` to topic
//! `durable/kill`, payload `i`, at QoS 2 when `i % 7 < 2` and QoS 1 otherwise (so kills hit
//! both).
//! After each `publish().await` returns (the message is on disk) it prints `ok i`; at the end
//! it waits for every acknowledgment and prints `done`.

use std::io::Write;
use std::time::Duration;

use mqtt_tokio::{Client, Options, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, id, store, from, total] = args.as_slice() else {
        return Err("usage: durable_pub URL CLIENT_ID STORE FROM TOTAL".into());
    };
    let (from, total): (u32, u32) = (from.parse()?, total.parse()?);
    let options = Options::new(url)?
        .client_id(id.as_str())
        .persistent_session(Duration::from_secs(3600))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .store(store.as_str());
    let client = Client::spawn(options)?;
    let mut out = std::io::stdout().lock();
    for i in from..total {
        let qos = if i % 7 < 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        // Returned: the message is on disk. Its acknowledgment is not waited for here.
        drop(
            client
                .publish("durable/kill", i.to_string(), qos, false)
                .await?,
        );
        writeln!(out, "ok {i}")?;
        out.flush()?;
    }
    client.shutdown(Duration::from_secs(30)).await;
    let stats = client.stats();
    writeln!(
        out,
        "done in_flight={} pending={}",
        stats.in_flight,
        stats.queued_by_priority.iter().sum::<usize>()
    )?;
    Ok(())
}
