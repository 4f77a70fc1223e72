//! The async MQTT 3.1.1 / 5.0 client of the `std` runtimes, written once.
//!
//! [`Client`] (a cloneable handle) and [`Driver`] (the task that owns the connection) drive
//! the sans-IO [`mqtt_session::engine`] and are generic over a small [`Runtime`]: spawn a
//! task, a resettable timer, open a TCP stream, and the channel type of raw events. TLS
//! (rustls) and WebSocket (async-tungstenite) are layered here over any futures-io stream, so
//! a runtime crate such as `runtime-tokio` or `runtime-smol` is only its [`Runtime`]
//! implementation and re-exports.
//!
//! - [`options`]: the broker URL, identity, limits and TLS files, from URLs, TOML and
//!   `MQTT_*` variables (feature `config`).
//! - [`tls`]: the rustls client configuration made from [`TlsOptions`].
//! - [`runtime`]: the [`Runtime`] and [`Timer`] traits a runtime implements.
//!
//! A publish costs no allocation when its [`Delivery`] is dropped: completions live in slots
//! beside the engine (see [`Delivery`]).

// Network input reaches this crate: no panics outside tests, as in the core crates.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod api;
mod client;
mod delivery;
pub mod options;
mod persist;
pub mod runtime;
pub mod tls;
mod transport;

pub use api::{ClientError, ConnectError, DEFAULT_PRIORITY, Event, HandlerResult, RouteId};
pub use client::{Client, Driver};
pub use delivery::Delivery;
pub use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
pub use mqtt_session::ConnectionError;
pub use mqtt_session::engine::{Failure, Message, MessageProperties, Stats};
#[cfg(feature = "config")]
pub use options::ENV_VARS;
pub use options::{
    AckMode, Broker, DEFAULT_URL, Durability, Options, OptionsError, Scheme, TlsOptions,
};
pub use runtime::{Runtime, Timer};
