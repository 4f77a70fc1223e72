//! A persistent subscriber that acknowledges after its handler, with a synced store, for the
//! kill -9 tests (`tests/tests/durable_kill.rs`).
//!
//! `durable_sub URL CLIENT_ID STORE OUTPUT` subscribes to `durable/sub` at QoS 2, appends
//! `start` to OUTPUT, prints `subscribed`, then for each message it handles appends
//! `got i qos` to OUTPUT (the handler's effect, one `write` each, so a kill leaves whole lines)
//! and prints the same line. A message the client marks as redelivered (it may have been
//! handled before the last kill) is looked up in OUTPUT first, and skipped if it is there,
//! with `skipped i` printed: what an application whose effect must happen once does.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_tokio::{AckMode, Client, Message, Options, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, id, store, output] = args.as_slice() else {
        return Err("usage: durable_sub URL CLIENT_ID STORE OUTPUT".into());
    };
    let mut file = OpenOptions::new().create(true).append(true).open(output)?;
    file.write_all(b"start\n")?;
    let file = Arc::new(Mutex::new(file));
    let output = output.clone();
    let options = Options::new(url)?
        .client_id(id.as_str())
        .persistent_session(Duration::from_secs(3600))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .ack_mode(AckMode::AfterHandlers)
        .store(store.as_str());
    let client = Client::spawn(options)?;
    client.route_with("durable/sub", QoS::ExactlyOnce, move |m: Message| {
        let (file, output) = (file.clone(), output.clone());
        async move {
            let payload = String::from_utf8_lossy(&m.payload);
            let line = format!("got {payload} {}\n", m.qos as u8);
            let mut file = file.lock().unwrap();
            if m.redelivered
                && std::fs::read_to_string(&output)
                    .is_ok_and(|s| s.lines().any(|l| l == line.trim_end()))
            {
                println!("skipped {payload}");
                return;
            }
            // A failed write shows in the test as a message never handled.
            let _ = file.write_all(line.as_bytes());
            print!("{line}");
            let _ = std::io::stdout().flush();
        }
    })?;
    client.subscribe("durable/sub", QoS::ExactlyOnce).await?;
    println!("subscribed");
    std::future::pending::<()>().await;
    Ok(())
}
