//! The sans-IO MQTT client state machine.
//!
//! This crate never does I/O, never reads a clock and never spawns: a runtime feeds it received
//! bytes and the current time and pulls out bytes to send, events and the next deadline. It is
//! `#![no_std]` and works without `alloc`; capacities are const generics.
//!
//! # Driving it
//! A runtime's loop is short: write what [`Client::connect`] returns, then repeatedly feed
//! received bytes to [`Client::handle_read`], drain [`Client::poll_transmit`] and
//! [`Client::poll_notice`] until they return `None`, and sleep until [`Client::poll_timeout`]
//! (then call [`Client::handle_timeout`]). Here the "socket" is a byte vector and the broker's
//! answers are written by hand:
//!
//! ```
//! use mqtt_proto::{ProtocolVersion, Publish, QoS, SubscriptionOptions, TopicFilter};
//! use mqtt_session::{Client, Config, ConnectOptions, Event, Instant, Notice, Read};
//!
//! // Room for 16 outgoing packets in 4 KiB, and 4 incoming QoS 2 messages in progress.
//! let mut client: Client<16, 4096, 4> = Client::new(Config {
//!     version: ProtocolVersion::V311,
//!     keep_alive: 30,
//!     ..Config::default()
//! });
//! let mut out = [0u8; 1024];
//! let now = Instant::from_millis(0);
//! let opts = ConnectOptions { client_id: "sensor-7", ..ConnectOptions::default() };
//! let n = client.connect(now, &opts, &mut out)?;
//! assert_eq!(out[0], 0x10); // CONNECT, ready for the socket
//! # let _ = n;
//!
//! // The broker accepts: CONNACK, session not present.
//! let Read::Packet { event, .. } = client.handle_read(now, &[0x20, 0x02, 0x00, 0x00]) else {
//!     unreachable!()
//! };
//! assert!(matches!(event, Some(Event::Connected { session_present: false })));
//!
//! // Subscribe and publish at QoS 1; both go out on the next poll_transmit calls.
//! let filter = TopicFilter::new("cmd/sensor-7/#")?;
//! client.subscribe(now, &[(filter, SubscriptionOptions::new(QoS::AtLeastOnce))], &[])?;
//! let msg = Publish { qos: QoS::AtLeastOnce, ..Publish::new("sensors/7/temp", b"21.5") };
//! let token = client.publish(now, &msg, 5)?;
//! let mut written = 0;
//! while let Some(n) = client.poll_transmit(now, &mut out)? {
//!     written += 1; // socket.write_all(&out[..n])
//! #   let _ = n;
//! }
//! assert_eq!(written, 2);
//!
//! // PUBACK for packet id 2 (the SUBSCRIBE took id 1) completes the publish.
//! let Read::Packet { event, .. } = client.handle_read(now, &[0x40, 0x02, 0x00, 0x02]) else {
//!     unreachable!()
//! };
//! assert!(matches!(event, Some(Event::Published { token: t, .. }) if t == token));
//!
//! // Nothing to do until the keep-alive is due.
//! assert_eq!(client.poll_timeout(), Some(Instant::from_millis(30_000)));
//! assert_eq!(client.poll_notice(), None::<Notice>);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules:
//! - [`client`]: the client state machine ([`Client`]) and how to drive it.
//! - [`time`]: the millisecond [`Instant`] that every deadline is expressed in.
//! - [`backoff`]: the reconnect delay policy (exponential, bounded, full jitter from a seed).
//! - [`packet_id`]: the packet identifier allocator shared by PUBLISH, SUBSCRIBE, UNSUBSCRIBE.
//! - [`journal`]: records of the persistent state for a durable store, and restoring from them.
//! - [`store`]: ordered, compacting storage of outgoing messages as encoded packets.
//! - [`engine`] (feature `alloc`): what an allocating client keeps around the session
//!   (completions, routing, reconnect timing, statistics), still sans-IO; the async client of
//!   the `std` runtimes (`mqtt-client`) drives it.
//! - [`router`] (feature `alloc` or `broker`): maps topic filters to handler keys with a trie on
//!   levels.
//! - [`broker`] (feature `broker`): the sans-IO MQTT 3.1 / 3.1.1 / 5.0 broker core.
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

#[cfg(any(feature = "alloc", feature = "broker"))]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backoff;
#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
#[cfg(feature = "alloc")]
pub mod engine;
pub mod journal;
pub mod packet_id;
#[cfg(any(feature = "alloc", feature = "broker"))]
pub mod router;
pub mod store;
pub mod time;

pub use backoff::Backoff;
#[cfg(feature = "alloc")]
pub use client::HeapClient;
pub use client::{
    Client, Config, ConnectOptions, ConnectionError, Error, Event, Message, Notice, Read, Session,
    State, Token,
};
pub use packet_id::PacketIds;
#[cfg(any(feature = "alloc", feature = "broker"))]
pub use router::Router;
pub use time::Instant;
