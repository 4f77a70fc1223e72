//! A `no_std`, allocation-free, zero-copy codec for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Every control packet of the three protocol levels can be decoded from a borrowed byte slice
//! and encoded into a caller's buffer. Nothing here does I/O, allocates or panics, whatever bytes
//! it is given: the crate denies `unwrap`, `expect`, `panic!` and slice indexing outside tests.
//!
//! # Decoding
//! Decoding is streaming and happens in two steps, so a runtime can read exactly as much as it
//! needs before it buffers a body:
//!
//! 1. [`frame`] reads the fixed header. Too few bytes is [`Status::Incomplete`]; a fifth
//!    length byte or a packet over the caller's maximum size is an error, decided before the
//!    body is read.
//! 2. [`decode`] (which frames first) parses the body from a slice bounded by the remaining
//!    length. A short read *inside* a complete frame is malformed, never incomplete.
//!
//! The decoded [`Packet`] borrows topic, payload, strings and properties from the input.
//! Properties and SUBSCRIBE filters are validated once and then iterated lazily.
//!
//! ```
//! use mqtt_proto::{decode, Packet, ProtocolVersion, Status};
//!
//! let bytes = [0x30, 0x0a, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o'];
//! let Status::Complete((packet, used)) = decode(&bytes, ProtocolVersion::V311, 1024)? else {
//!     unreachable!("the buffer holds the whole packet");
//! };
//! assert_eq!(used, bytes.len());
//! let Packet::Publish(publish) = packet else { unreachable!() };
//! assert_eq!(publish.topic, "a/b");
//! assert_eq!(publish.payload, b"hello");
//! # Ok::<(), mqtt_proto::DecodeError>(())
//! ```
//!
//! # Encoding
//! [`Packet::encoded_len`] gives the exact size up front and [`Packet::encode`] writes into a
//! `&mut [u8]`, failing with [`EncodeError::BufferTooSmall`] (which states the size needed)
//! instead of panicking. With the `bytes` feature, [`Packet::encode_buf`] writes into any
//! `bytes::BufMut`.
//!
//! # Features
//! - `std`: `std::error::Error` for the error types.
//! - `bytes`: encoding into `bytes::BufMut`.
//! - `defmt`: `defmt::Format` for the public types.
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
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "std")]
extern crate std;

mod error;
mod list;
mod packet;
mod property;
mod reason;
mod topic;
mod types;
mod wire;

pub use error::{DecodeError, EncodeError};
pub use list::{
    Filters, FiltersIter, ReasonCodes, ReasonCodesIter, Unsubscriptions, UnsubscriptionsIter,
};
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Frame, Packet, PacketType, Publish, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Will, decode, frame,
};
pub use property::{Properties, PropertiesIter, Property, PropertyContext, PropertyId};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use topic::{SharedSubscription, TopicError, TopicFilter, TopicName, matches};
pub use types::{
    MAX_REMAINING_LENGTH, PacketId, ProtocolVersion, QoS, RetainHandling, Status,
    SubscriptionOptions,
};
