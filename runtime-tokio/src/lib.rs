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
pub use mqtt_session::options::{Broker, Options, OptionsError, Scheme, TlsOptions};
