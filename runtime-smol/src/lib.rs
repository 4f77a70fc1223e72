//! An async MQTT 3.1.1 / 5.0 client on smol.
//!
//! A thin adapter over the sans-IO [`mqtt_session`] core: this crate owns the socket (TCP, or
//! TLS with rustls), the clock (`async_io::Timer`) and the tasks; every protocol rule, and the
//! client API's types and decisions ([`mqtt_session::runtime`]), live in the core, so this
//! client behaves exactly like the tokio one. WebSocket URLs are refused.
//!
//! - [`Client`]: a cloneable handle. `publish` queues a message and gives back a [`Delivery`]
//!   to await its acknowledgment; `route` sends matching messages to async handlers;
//!   `subscribe`, `unsubscribe`, `stats`, `shutdown`, `disconnect`.
//! - [`Driver`]: the task that owns the connection, reconnects with back-off and jitter,
//!   restores subscriptions and resends what was not acknowledged.
//!
//! ```no_run
//! use mqtt_smol::{Client, Options, QoS};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
//!     client.route("sensors/+/temperature", |msg: mqtt_smol::Message| async move {
//!         println!("{}: {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//!     })?;
//!     let delivery = client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?;
//!     delivery.await?; // PUBACK
//!     client.shutdown(std::time::Duration::from_secs(5)).await;
//!     Ok(())
//! })
//! # }
//! ```

mod client;
mod transport;

pub use client::{Client, Driver};
pub use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
pub use mqtt_session::ConnectionError;
pub use mqtt_session::engine::{Failure, Message, MessageProperties, Stats};
pub use mqtt_session::options::{Broker, Options, OptionsError, Scheme, TlsOptions};
pub use mqtt_session::runtime::{
    ClientError, ConnectError, DEFAULT_PRIORITY, Delivery, Event, HandlerResult, RouteId,
};
