//! An async MQTT 3.1.1 / 5.0 client on tokio.
//!
//! A thin adapter over the sans-IO [`mqtt_session`] core: this crate owns the socket (TCP, TLS
//! with rustls, WebSocket), the clock and the tasks; every protocol rule lives in the core, so
//! this client behaves exactly like the smol and embassy ones.
//!
//! - [`Client`]: a cloneable handle. `publish` queues a message and gives back a [`Delivery`]
//!   to await its acknowledgment; `route` sends matching messages to async handlers;
//!   `subscribe`, `unsubscribe`, `stats`, `shutdown`, `disconnect`.
//! - [`Driver`]: the task that owns the connection, reconnects with back-off and jitter,
//!   restores subscriptions and resends what was not acknowledged.
//! - [`MqttCodec`]: a `tokio_util` codec for those who frame MQTT themselves.
//! - [`load_options`]: [`Options`] from a TOML file and `MQTT_*` environment variables.
//!
//! The package also builds the `mqtt` command-line tool (`mqtt pub`, `mqtt sub`), whose flags
//! follow `mosquitto_pub` and `mosquitto_sub`; `mqtt --help` lists them and its exit codes.
//! `mqtt bench` (module [`bench`](mod@bench), feature `bench`) is a load generator for any broker.
//!
//! ```no_run
//! use mqtt_tokio::{Client, Options, QoS};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
//! client.route("sensors/+/temperature", |msg: mqtt_tokio::Message| async move {
//!     println!("{}: {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//! })?;
//! let delivery = client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?;
//! delivery.await?; // PUBACK
//! client.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "websocket")]
pub mod broker;
mod client;
pub mod codec;
mod transport;

pub use client::{
    Client, ClientError, ConnectError, DEFAULT_PRIORITY, Delivery, Driver, Event, HandlerResult,
    Message, RouteId,
};
pub use codec::MqttCodec;
pub use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
pub use mqtt_session::ConnectionError;
pub use mqtt_session::engine::{Failure, MessageProperties, Stats};
pub use mqtt_session::options::{
    Broker, DEFAULT_URL, ENV_VARS, Options, OptionsError, Scheme, TlsOptions,
};

use std::path::Path;

/// Options from a TOML file (when given) and the process's `MQTT_*` environment variables,
/// over the defaults, validated. See [`Options::from_toml_str`] for the keys and [`ENV_VARS`]
/// for the variables; the environment wins over the file.
pub fn load_options(path: Option<&Path>) -> Result<Options, OptionsError> {
    let options = load_options_unvalidated(path)?;
    options.validate()?;
    Ok(options)
}

/// [`load_options`] without the final validation, for callers that layer more settings (such
/// as command-line flags) on top and validate at the end.
pub fn load_options_unvalidated(path: Option<&Path>) -> Result<Options, OptionsError> {
    let mut options = Options::new(DEFAULT_URL)?;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| {
            OptionsError(format!("cannot read config file {}: {e}", path.display()))
        })?;
        options = options
            .merge_toml_str(&text)
            .map_err(|e| OptionsError(format!("{}: {e}", path.display())))?;
    }
    options.merge_env(std::env::vars())
}
