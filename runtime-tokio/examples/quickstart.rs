//! Quick start: publish and subscribe with wildcards.
//!
//! `cargo run -p runtime-tokio --example quickstart [URL]`
//!
//! Uses the broker at URL (or `MQTT_URL`); with neither, it starts our own broker in-process
//! on a free loopback port (`mqtt_tokio::broker::Broker`): nothing to install.

use std::time::Duration;

use mqtt_tokio::broker::{Broker, BrokerConfig};
use mqtt_tokio::{Client, Message, Options, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let given = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MQTT_URL").ok());
    let (broker, url) = match given {
        Some(url) => (None, url),
        None => {
            let broker = Broker::start(BrokerConfig::new("mqtt://127.0.0.1:0")).await?;
            let url = broker.urls()[0].clone();
            println!("started our broker on {url}");
            (Some(broker), url)
        }
    };

    let client = Client::spawn(Options::new(&url)?.client_id("quickstart"))?;
    client.wait_connected(Duration::from_secs(5)).await?;
    println!("connected to {url}");

    // Two handlers with wildcards: one per temperature reading, one for everything in `home/`.
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    client.route("home/+/temperature", move |m: Message| {
        let tx = tx.clone();
        async move {
            println!(
                "  temperature  {:<24} {}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
            let _ = tx.send(());
        }
    })?;
    client.route("home/#", |m: Message| async move {
        println!(
            "  everything   {:<24} {}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        );
    })?;
    // Routes subscribe on their own (at QoS 1); `client.subscribe` would wait for the SUBACK.

    let readings = [
        ("home/kitchen/temperature", "21.5", QoS::AtMostOnce),
        ("home/garage/temperature", "9.0", QoS::AtLeastOnce),
        ("home/garage/door", "open", QoS::ExactlyOnce),
        ("home/attic/temperature", "30.1", QoS::ExactlyOnce),
    ];
    for (topic, value, qos) in readings {
        let delivery = client.publish(topic, value, qos, false).await?;
        println!(
            "published {topic} = {value} at {qos:?}: {}",
            delivery.await?
        );
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await?
            .ok_or("handler gone")?;
    }
    let stats = client.stats();
    println!(
        "sent {}, received {}, subscriptions {}",
        stats.sent, stats.received, stats.subscriptions
    );
    client.shutdown(Duration::from_secs(5)).await;
    if let Some(broker) = broker {
        broker.stop().await;
    }
    Ok(())
}
