//! The sans-IO MQTT client state machine.
//!
//! This crate never does I/O, never reads a clock and never spawns: a runtime feeds it received
//! bytes and the current time and pulls out bytes to send, events and the next deadline. It is
//! `#![no_std]` and works without `alloc`; capacities are const generics.
//!
//! Modules:
//! - [`client`]: the client state machine ([`Client`]) and how to drive it.
//! - [`time`]: the millisecond [`Instant`] that every deadline is expressed in.
//! - [`backoff`]: the reconnect delay policy (exponential, bounded, full jitter from a seed).
//! - [`packet_id`]: the packet identifier allocator shared by PUBLISH, SUBSCRIBE, UNSUBSCRIBE.
//! - [`store`]: ordered, compacting storage of outgoing messages as encoded packets.
//! - [`router`] (feature `alloc`): maps topic filters to handler keys with a trie on levels.
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

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backoff;
pub mod client;
pub mod packet_id;
#[cfg(feature = "alloc")]
pub mod router;
pub mod store;
pub mod time;

pub use backoff::Backoff;
pub use client::{
    Client, Config, ConnectOptions, ConnectionError, Error, Event, Message, Notice, Read, State,
    Token,
};
pub use packet_id::PacketIds;
#[cfg(feature = "alloc")]
pub use router::Router;
pub use time::Instant;
