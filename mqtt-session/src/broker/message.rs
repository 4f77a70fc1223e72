//! Application messages as the broker keeps them: owned, shared by every queue that holds them.

use alloc::boxed::Box;
use alloc::vec::Vec;

use mqtt_proto::{Properties, Property, QoS};

use crate::Instant;

/// A pointer shared by every session queue and the retained index that hold one message.
///
/// `Arc` where the target has atomic pointers (so the broker state can be `Send`); `Rc` on
/// targets without them (thumbv6m), where the broker runs on one core anyway.
#[cfg(target_has_atomic = "ptr")]
pub type Shared<T> = alloc::sync::Arc<T>;
/// A pointer shared by every session queue and the retained index that hold one message.
#[cfg(not(target_has_atomic = "ptr"))]
pub type Shared<T> = alloc::rc::Rc<T>;

/// An application message accepted by the broker, with the properties it passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Broker-wide identifier: persistence records name messages by it.
    pub id: u64,
    /// Topic name.
    pub topic: Box<str>,
    /// Payload.
    pub payload: Box<[u8]>,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// The MQTT 5 properties passed through to subscribers unchanged.
    pub properties: MessageProperties,
    /// When the message expires (from its Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
}

/// The PUBLISH properties a broker forwards unchanged [MQTT-3.3.2-4, -15, -17, -18, -20].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    /// Payload Format Indicator (`true`: UTF-8).
    pub payload_format_utf8: Option<bool>,
    /// Content Type.
    pub content_type: Option<Box<str>>,
    /// Response Topic.
    pub response_topic: Option<Box<str>>,
    /// Correlation Data.
    pub correlation_data: Option<Box<[u8]>>,
    /// User properties, in order.
    pub user: Vec<(Box<str>, Box<str>)>,
}

impl MessageProperties {
    /// The pass-through properties of a received list (others are ignored here).
    pub fn from_properties(props: &Properties<'_>) -> Self {
        let mut out = MessageProperties::default();
        for p in props.iter() {
            match p {
                Property::PayloadFormatIndicator(b) => out.payload_format_utf8 = Some(b),
                Property::ContentType(s) => out.content_type = Some(Box::from(s)),
                Property::ResponseTopic(s) => out.response_topic = Some(Box::from(s)),
                Property::CorrelationData(d) => out.correlation_data = Some(Box::from(d)),
                Property::UserProperty(k, v) => out.user.push((Box::from(k), Box::from(v))),
                _ => {}
            }
        }
        out
    }

    /// Appends the properties, borrowing from `self`.
    pub(crate) fn push_into<'a>(&'a self, out: &mut Vec<Property<'a>>) {
        if let Some(b) = self.payload_format_utf8 {
            out.push(Property::PayloadFormatIndicator(b));
        }
        if let Some(s) = &self.content_type {
            out.push(Property::ContentType(s));
        }
        if let Some(s) = &self.response_topic {
            out.push(Property::ResponseTopic(s));
        }
        if let Some(d) = &self.correlation_data {
            out.push(Property::CorrelationData(d));
        }
        out.extend(self.user.iter().map(|(k, v)| Property::UserProperty(k, v)));
    }

    /// Bytes held on the heap.
    fn size(&self) -> usize {
        self.content_type.as_ref().map_or(0, |s| s.len())
            + self.response_topic.as_ref().map_or(0, |s| s.len())
            + self.correlation_data.as_ref().map_or(0, |d| d.len())
            + self
                .user
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl Message {
    /// The bytes this message costs a queue: topic, payload, properties and a fixed overhead.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.properties.size() + 64
    }

    /// Seconds left before expiry at `now` (rounded up), `Some(0)` once expired.
    pub fn remaining_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let ms = at.as_millis().saturating_sub(now.as_millis());
            u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    /// Whether the message expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}
