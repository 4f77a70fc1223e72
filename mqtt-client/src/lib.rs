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
//!
//! # Durability
//! With [`Options::store`] the session's journal (see `mqtt_session::journal`) is written to
//! an `mqtt-store` file: QoS 1/2 messages accepted, their packet ids, PUBRECs received, QoS 2
//! ids received, subscriptions. [`Durability::Sync`] syncs each publish before
//! `publish().await` returns (concurrent publishers share a sync); [`Durability::Relaxed`]
//! syncs in the background within its delay; [`Durability::Memory`] (the default) writes
//! nothing. A QoS 1/2 message is never sent before its record is written, nor a PUBREL before
//! the PUBREC record, nor a PUBREC before the record of the received id.
//!
//! Started again with the same client id and store, the client resends what was not
//! acknowledged: with its original packet id (and DUP) when the broker kept the session, as a
//! new message when it did not. A QoS 2 message whose exchange had begun can then arrive
//! twice (the broker may have delivered it already with the lost session): exactly-once holds
//! across restarts only while the broker keeps the session. QoS 0 messages are not stored.
//! Messages still queued at [`Client::disconnect`] stay in the store (their [`Delivery`]
//! reports `Closed`) and are sent by the next client on it. A store that cannot be read is set
//! aside next to it (logged, counted in [`Stats::set_aside`]) and the client starts empty; a
//! write that fails is logged and counted ([`Stats::store_failures`]) and the client goes on
//! in memory.
//!
//! [`AckMode`] chooses when received QoS 1/2 messages are acknowledged: on receipt, after
//! every matching handler, or by the application ([`Client::ack`]).

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
#[cfg(feature = "health")]
mod health;
pub mod options;
mod persist;
pub mod runtime;
pub mod tls;
pub mod transport;

pub use api::{ClientError, ConnectError, DEFAULT_PRIORITY, Event, HandlerResult, RouteId};
pub use client::{Client, Driver};
pub use delivery::Delivery;
pub use mqtt_proto::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
pub use mqtt_session::ConnectionError;
pub use mqtt_session::engine::{Failure, Message, MessageProperties, Stats};
#[cfg(feature = "config")]
pub use options::ENV_VARS;
pub use options::{
    AckMode, Broker, DEFAULT_URL, Durability, Options, OptionsError, Scheme, TlsOptions,
};
pub use runtime::{Runtime, Timer};
