//! A persistent subscriber that acknowledges after its handler, with a synced store, for the
//! kill -9 tests (`tests/tests/durable_kill.rs`).
//!
//! `durable_sub URL CLIENT_ID STORE` subscribes to `durable/sub` at QoS 2, prints
//! `subscribed`, then `got i` for each message it handles (the handler's effect).

use std::io::Write;
use std::time::Duration;

use mqtt_tokio::{AckMode, Client, Message, Options, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, id, store] = args.as_slice() else {
        return Err("usage: durable_sub URL CLIENT_ID STORE".into());
    };
    let options = Options::new(url)?
        .client_id(id.as_str())
        .persistent_session(Duration::from_secs(3600))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .ack_mode(AckMode::AfterHandlers)
        .store(store.as_str());
    let client = Client::spawn(options)?;
    client.route_with("durable/sub", QoS::ExactlyOnce, |m: Message| async move {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "got {} {}",
            String::from_utf8_lossy(&m.payload),
            m.qos as u8
        );
        let _ = out.flush();
    })?;
    client.subscribe("durable/sub", QoS::ExactlyOnce).await?;
    println!("subscribed");
    std::future::pending::<()>().await;
    Ok(())
}
