//! A `no_std`, allocation-free MQTT 3.1.1 / 5.0 client for embassy.
//!
//! It drives the sans-IO [`mqtt_session`] state machine over any
//! [`embedded_io_async::Read`] + [`embedded_io_async::Write`] transport (an
//! `embassy_net::tcp::TcpSocket`, a TLS stream such as `embedded-tls`, or a host socket in
//! tests), with [`embassy_time`] for deadlines and [`embassy_sync`] channels between tasks.
//! Everything that is MQTT (QoS 1 and 2 both ways, keep-alive, resend after reconnect,
//! resubscribe when the server lost the session) happens in `mqtt-session`; this crate only
//! moves bytes, time and requests.
//!
//! # Shape
//! - [`Resources`]: the channels shared by the tasks; put it in a `StaticCell` (or any place
//!   that outlives the tasks).
//! - [`Resources::split`] gives a [`Runner`], which owns the connection, and a [`ClientHandle`],
//!   which is `Copy` and can be used from any number of tasks at the same time.
//! - [`Runner::run`] opens the transport through a [`Connector`], drives the session (waiting
//!   for whichever comes first: bytes from the transport, a request from a handle, the session's
//!   deadline), and after a loss sleeps the [`Backoff`] delay and reconnects with the same
//!   session, forever, until [`ClientHandle::disconnect`].
//!
//! # Sizing
//! Nothing is allocated; every capacity is chosen by the caller.
//!
//! | what | where | memory |
//! | --- | --- | --- |
//! | outgoing store (queued and in-flight messages, kept subscriptions) | `Client<SLOTS, BYTES, RX>` | about `BYTES + 24 * SLOTS` plus 2 KiB of topic alias tables |
//! | receive buffer | `rx` of [`Runner::new`] | its length: the largest packet the client takes in |
//! | transmit buffer | `tx` of [`Runner::new`] | its length: the largest packet the client writes |
//! | requests from handles, received messages, completion slots | `Resources<M, TOPIC, PAYLOAD, DEPTH>` | about `2 * DEPTH * (TOPIC + PAYLOAD + 16)` |
//!
//! `TOPIC` and `PAYLOAD` bound what a handle can publish and what [`ClientHandle::receive`]
//! returns. Make `tx` at least `TOPIC + PAYLOAD + 16` bytes (plus MQTT 5 properties) and `rx`
//! as large as the largest message you expect; set the session's `Config::max_packet_size` to
//! `rx.len()` so that an MQTT 5 server never sends anything larger.
//!
//! # Large payloads
//! Nothing panics on size. A publish larger than `PAYLOAD`/`TOPIC` or than `tx` is refused
//! with [`Error::TooLarge`]. An incoming packet larger than `rx` (but within
//! `Config::max_packet_size`) is skipped on the wire and counted by
//! [`ClientHandle::oversized`]; with MQTT 5 and `max_packet_size <= rx.len()` the server does
//! not send such packets. A received message whose topic or payload does not fit
//! `TOPIC`/`PAYLOAD` is acknowledged, dropped and counted the same way. Packets larger than the
//! TCP MTU are written with `write_all` and reassembled from the stream: TCP segments are not
//! packets.
//!
//! # Transport requirements
//! The runner waits on `read` together with the request channel and the timer and drops the
//! `read` future when another branch wins, so the transport's `read` must be cancel-safe (no
//! bytes lost when a pending read is dropped). `embassy_net::tcp::TcpSocket` and
//! `embedded_io_adapters::tokio_1::FromTokio` are; so is a TLS stream whose `read` only
//! decrypts into its own buffer before it returns.
//!
//! # Example
//! ```no_run
//! use core::time::Duration;
//! use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
//! use mqtt_embassy::{Backoff, Client, Config, ConnectOptions, QoS, Resources, Connector};
//!
//! // 64-byte topics, 128-byte payloads, 4 requests / messages / waiters in flight.
//! type Res = Resources<CriticalSectionRawMutex, 64, 128, 4>;
//!
//! async fn mqtt(transport: impl Connector) {
//!     let resources: Res = Resources::new();
//!     let mut session: Client<8, 2048, 4> = Client::new(Config {
//!         clean_start: false,
//!         session_expiry: 3600,
//!         max_packet_size: 512,
//!         ..Config::default()
//!     });
//!     let (mut rx, mut tx) = ([0u8; 512], [0u8; 256]);
//!     let options = ConnectOptions { client_id: "sensor-1", ..ConnectOptions::default() };
//!     let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 0x5eed);
//!     let (client, mut runner) =
//!         resources.split(&mut session, options, backoff, &mut rx, &mut tx);
//!     let app = async {
//!         client.subscribe("devices/1/cmd/#", QoS::AtLeastOnce).await.ok();
//!         client.publish("devices/1/temp", b"21.5", QoS::AtLeastOnce, false).await.ok();
//!         let command = client.receive().await; // cancel-safe: fine inside select
//!         let _ = (command.topic.as_str(), &command.payload[..]);
//!         client.disconnect().await.ok();
//!     };
//!     embassy_futures::join::join(runner.run(transport), app).await;
//! }
//! ```
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[macro_use]
mod fmt;
#[cfg(feature = "flash-store")]
pub mod flash;
mod handle;
mod runner;

use core::fmt as core_fmt;

pub use handle::{ClientHandle, Message, Resources};
pub use runner::{Connector, Journal, NoJournal, Runner};

pub use mqtt_proto::{ProtocolVersion, QoS, ReasonCode};
pub use mqtt_session::{Backoff, Client, Config, ConnectOptions, Session};

/// Why a request made through a [`ClientHandle`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The topic, filter or payload exceeds the buffers (`TOPIC`, `PAYLOAD` or `tx`).
    TooLarge,
    /// The topic name or filter is not valid MQTT.
    InvalidTopic,
    /// The session refused the request (queue full, not supported by the server, ...).
    Session(mqtt_session::Error),
    /// The server refused it (a PUBACK/PUBREC or SUBACK reason code, or it exceeds what the
    /// server supports).
    Refused(ReasonCode),
    /// The message was dropped from the offline queue to make room for a more important one.
    Evicted,
    /// The client was closed by [`ClientHandle::disconnect`].
    Closed,
}

impl core_fmt::Display for Error {
    fn fmt(&self, f: &mut core_fmt::Formatter<'_>) -> core_fmt::Result {
        match self {
            Error::TooLarge => f.write_str("topic or payload larger than the client's buffers"),
            Error::InvalidTopic => f.write_str("invalid topic name or filter"),
            Error::Session(e) => write!(f, "{e}"),
            Error::Refused(rc) => write!(f, "refused by the server: {rc}"),
            Error::Evicted => f.write_str("dropped from the queue for a more important message"),
            Error::Closed => f.write_str("client closed by disconnect()"),
        }
    }
}

impl From<mqtt_session::Error> for Error {
    fn from(e: mqtt_session::Error) -> Self {
        Error::Session(e)
    }
}

/// The session's clock: embassy time in milliseconds.
fn now() -> mqtt_session::Instant {
    mqtt_session::Instant::from_millis(embassy_time::Instant::now().as_millis())
}

/// An embassy instant for a session deadline (saturating far in the future).
fn to_embassy(t: mqtt_session::Instant) -> embassy_time::Instant {
    embassy_time::Instant::try_from_millis(t.as_millis()).unwrap_or(embassy_time::Instant::MAX)
}
