//! Quick start: publish and subscribe with wildcards.
//!
//! `cargo run -p runtime-tokio --example quickstart [URL]`
//!
//! Uses the broker at URL (or `MQTT_URL`); with neither, it starts a private mosquitto on a
//! free loopback port (mosquitto must be installed: `scripts/quickstart` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mqtt_tokio::{Client, Message, Options, QoS};

/// A mosquitto started for this run, stopped on drop.
struct Mosquitto {
    child: Child,
    _dir: std::path::PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_mosquitto() -> Result<(Mosquitto, String), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("mqtt-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"),
    )?;
    let bin = ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok())
        .ok_or("mosquitto is not installed: run scripts/quickstart, or pass a broker URL")?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let broker = Mosquitto { child, _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            println!("started mosquitto on 127.0.0.1:{port}");
            return Ok((broker, format!("mqtt://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("mosquitto did not start".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let given = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MQTT_URL").ok());
    let (_broker, url) = match given {
        Some(url) => (None, url),
        None => {
            let (b, url) = start_mosquitto()?;
            (Some(b), url)
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
    Ok(())
}
