//! The broker's configuration, its questions and answers, events, persistence records and
//! statistics.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use mqtt_proto::{PacketId, QoS, ReasonCode, SubscriptionOptions};

use super::message::{Message, Shared};
use crate::Instant;

/// A connection, as the broker names it (handed out by [`Broker::handle_open`](super::Broker)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Bounds on what queues may hold; what they drop is counted in [`Drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Limits {
    /// Messages one session may hold, queued and in flight.
    pub session_messages: usize,
    /// Bytes one session may hold (by [`Message::size`]), queued and in flight.
    pub session_bytes: usize,
    /// Bytes all sessions together may hold.
    pub total_bytes: usize,
    /// Control packets (acks, SUBACK, PINGRESP) one connection may owe before the broker
    /// stops reading from it until they are written.
    pub control_packets: usize,
    /// Subscriptions one session may hold (more are refused with 0x97, 0x80 before 5.0).
    pub subscriptions: usize,
    /// Bytes all retained messages together may hold; a retained publish past it is still
    /// delivered but not retained, and counted.
    pub retained_bytes: usize,
    /// Back-pressure, in milliseconds: a publisher whose message (of any QoS) leaves a
    /// connected subscriber's session more than half full (in messages or bytes) is not read from until
    /// that session drains below a quarter, for at most this long. A subscriber that makes no
    /// such room in time counts as stalled and holds no publisher until it has (what does not
    /// fit is then dropped at the limits and counted). So nothing is dropped for a subscriber
    /// that is slow but reading, and one that stopped costs publishers one wait. 0: never hold.
    pub backpressure_ms: u32,
    /// PUBLISH packets one connection may send per second, on average, with bursts of up to a
    /// second's worth (0: no limit). Past it the connection is not read from until the rate
    /// allows the next one: the client is slowed, nothing is dropped, and no other client
    /// waits.
    pub publish_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_messages: 1_000,
            session_bytes: 1 << 20,
            total_bytes: 256 << 20,
            control_packets: 256,
            subscriptions: 1_000,
            retained_bytes: 64 << 20,
            backpressure_ms: 1_000,
            publish_rate: 0,
        }
    }
}

/// Broker settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest packet accepted from clients (announced in CONNACK at MQTT 5).
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged towards us (0x93 past it).
    pub receive_maximum: u16,
    /// Highest topic alias accepted from clients (0x94 past it; 0: none).
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker uses towards an MQTT 5 client, at most (and at most the
    /// client's own Topic Alias Maximum; 0: none). The first topics sent get them, up to
    /// 16 KiB of topic per connection; a topic sent again then goes out as its alias alone.
    pub outgoing_topic_aliases: u16,
    /// Highest keep-alive allowed, in seconds (0: any); lower client values are kept, higher
    /// ones (and 0) are replaced by a Server Keep Alive at MQTT 5.
    pub max_keep_alive: u16,
    /// How long a connection may take to send CONNECT (and finish authentication).
    pub connect_timeout: Duration,
    /// Upper bound on session expiry, in seconds (3.x persistent sessions get this).
    pub max_session_expiry: u32,
    /// Ask [`Question::Connect`] for every CONNECT instead of accepting it.
    pub authenticate: bool,
    /// Hold PUBACK/PUBREC of received QoS 1/2 publishes until [`Broker::handle_durable`]
    /// covers the records they caused (for a store that must write before acknowledging).
    ///
    /// [`Broker::handle_durable`]: super::Broker::handle_durable
    pub hold_acks_until_durable: bool,
    /// Whether every change is reported for a store ([`Broker::poll_record`]). A runtime
    /// without one turns it off: a persistent session's per-message records (queued, sent,
    /// acknowledged, received) are then not made, and what `poll_record` gives is incomplete
    /// (only good for dropping). [`Config::hold_acks_until_durable`] keeps them on.
    ///
    /// [`Broker::poll_record`]: super::Broker::poll_record
    pub records: bool,
    /// Whether the records [`Broker::restore`] reads may miss the last ones made (a store
    /// that syncs in the background). A client may then hold, awaiting PUBREL, the packet id
    /// of a QoS 2 message whose record was lost, and would take a new message sent with that
    /// id for a duplicate: so a restored session with a QoS 2 subscription first releases
    /// (PUBREL) the next 8 192 ids its allocator would use (those the deliveries of the last
    /// moments before a crash may have used), before anything new goes out.
    ///
    /// [`Broker::restore`]: super::Broker::restore
    pub lossy_records: bool,
    /// Queue bounds.
    pub limits: Limits,
    /// Publish `$SYS/broker/...` counters (retained) at this interval.
    pub sys_interval: Option<Duration>,
    /// Whether clients may publish retained messages (announced at 5.0; a retained publish is
    /// a protocol error, 0x9A, when not).
    pub retain_available: bool,
    /// Whether subscriptions may use `+` and `#` (else SUBACK 0xA2 at 5.0, 0x80 at 3.x).
    pub wildcard_subscriptions: bool,
    /// Whether `$share/` subscriptions are allowed (else SUBACK 0x9E at 5.0, 0x80 at 3.x).
    pub shared_subscriptions: bool,
    /// QoS 1/2 messages the broker sends a client before it waits for acknowledgments, below
    /// the client's own Receive Maximum.
    pub max_inflight: u16,
    /// The highest QoS the broker accepts and grants (announced as Maximum QoS at 5.0).
    pub maximum_qos: QoS,
    /// Sent as Response Information to a 5.0 client that asks for it (the base of its
    /// response topics); `None`: not sent.
    pub response_information: Option<Box<str>>,
    /// Prefix of the client identifiers assigned to MQTT 5 clients that send an empty one.
    pub assigned_id_prefix: &'static str,
    /// This broker's place among siblings that split a server's connections (default:
    /// alone). See [`shard`](super::shard).
    pub shard: super::shard::Shard,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 1 << 20,
            receive_maximum: 64,
            topic_alias_maximum: 16,
            outgoing_topic_aliases: 0,
            max_keep_alive: 0,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: u32::MAX,
            authenticate: false,
            hold_acks_until_durable: false,
            records: true,
            lossy_records: false,
            limits: Limits::default(),
            sys_interval: None,
            // A 3.1.1 client cannot announce a Receive Maximum: a window this size keeps a
            // backlog from overrunning what common clients hold for QoS 2 (ours: 1 024).
            max_inflight: 512,
            maximum_qos: QoS::ExactlyOnce,
            response_information: None,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            assigned_id_prefix: "auto-",
            shard: super::shard::Shard::default(),
        }
    }
}

/// What a client wants to do with a topic, for [`Authorize::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Publish to a topic name (also checked for the will topic at CONNECT).
    Publish,
    /// Subscribe with a topic filter (the filter is passed, `$share/` prefix included).
    Subscribe,
    /// Receive a message on a topic name (checked per delivery).
    Receive,
}

/// Who is asking, for [`Authorize::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// User name from CONNECT.
    pub username: Option<&'a str>,
}

/// The runtime's authorization policy, asked synchronously per publish, subscribe, delivery.
///
/// It is synchronous because it sits on the hot path (a mosquitto ACL file answers from
/// memory); a policy behind a slow service caches its answers. Authentication, which happens
/// once per connection, is asked asynchronously ([`Question::Connect`]).
pub trait Authorize {
    /// Whether `client` may do `action` on `topic`.
    fn allow(&mut self, client: ClientInfo<'_>, topic: &str, action: Action) -> bool;
}

impl<F: FnMut(ClientInfo<'_>, &str, Action) -> bool> Authorize for F {
    fn allow(&mut self, client: ClientInfo<'_>, topic: &str, action: Action) -> bool {
        self(client, topic, action)
    }
}

/// A question the broker asks the runtime; answer with
/// [`Broker::handle_auth_answer`](super::Broker::handle_auth_answer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Question {
    /// May this CONNECT go on? The connection waits (within the connect timeout).
    Connect {
        /// The connection.
        conn: ConnId,
        /// Client identifier (assigned already if the client sent none).
        client_id: Box<str>,
        /// User name.
        username: Option<Box<str>>,
        /// Password.
        password: Option<Box<[u8]>>,
        /// MQTT 5 Authentication Method, for an extended exchange.
        method: Option<Box<str>>,
        /// MQTT 5 Authentication Data.
        data: Option<Box<[u8]>>,
    },
    /// An AUTH packet continues an extended exchange (or re-authenticates, MQTT 5).
    Auth {
        /// The connection.
        conn: ConnId,
        /// Authentication Method.
        method: Box<str>,
        /// Authentication Data.
        data: Option<Box<[u8]>>,
        /// Whether the client is already connected: a re-authentication (its AUTH 0x19, and
        /// the 0x18 steps after it).
        reauthenticate: bool,
    },
}

/// The runtime's answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Authenticated.
    Accept,
    /// Authenticated as this user name (e.g. a client certificate's common name), which
    /// replaces the one CONNECT gave for every later authorization question.
    AcceptAs(Box<str>),
    /// Refused with this CONNACK reason code (e.g. 0x86 or 0x87; 3.x gets the matching return
    /// code, or 0x05). A code below 0x80 is sent as 0x80.
    Refuse(ReasonCode),
    /// Continue an extended exchange: send AUTH 0x18 with this data. Only a CONNECT with an
    /// Authentication Method (MQTT 5) can continue; any other is refused with 0x87.
    Continue(Vec<u8>),
    /// Authenticated, ending an extended exchange with this Authentication Data (a SCRAM
    /// server signature, say), carried by the CONNACK or, on re-authentication, by AUTH 0x00.
    /// Without a method (no extended exchange) it is [`Answer::Accept`].
    Complete(Vec<u8>),
    /// [`Answer::Complete`] as this user name (the one the exchange proved, e.g. SCRAM's),
    /// which replaces the one CONNECT gave, as with [`Answer::AcceptAs`]. A re-authentication
    /// must prove the session's user again: another one ends the connection with 0x87.
    CompleteAs(Vec<u8>, Box<str>),
}

/// Why the broker ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect(ReasonCode),
    /// The client broke the protocol (the reason code sent, or that would be at 5.0).
    Violation(ReasonCode),
    /// CONNACK refused the connection.
    Refused(ReasonCode),
    /// Another connection took over the session (0x8E).
    TakenOver,
    /// No packet within 1.5 times the keep-alive (0x8D).
    KeepAliveTimeout,
    /// No CONNECT (or no authentication answer) within the connect timeout.
    ConnectTimeout,
    /// The runtime reported the transport closed.
    TransportClosed,
    /// The runtime ended it with [`Broker::handle_disconnect`](super::Broker::handle_disconnect).
    Server(ReasonCode),
}

/// Something the runtime must act on; drain [`Broker::poll_event`](super::Broker::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub enum Event {
    /// Answer this with `handle_auth_answer`.
    Ask(Question),
    /// Flush what `poll_transmit` still has for `conn`, then close the transport and call
    /// `handle_close`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// One change a durable store must record; see [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A persistent session (expiry above 0) was created.
    SessionCreated {
        /// Client identifier.
        client_id: Shared<str>,
        /// Session expiry interval in seconds (`u32::MAX`: never).
        expiry: u32,
    },
    /// A persistent session's client is connected (again) with this expiry interval (a
    /// reconnect), or changed it (DISCONNECT).
    SessionExpiry {
        /// Client identifier.
        client_id: Shared<str>,
        /// The new interval.
        expiry: u32,
    },
    /// The session's client disconnected at `at`: it expires at `at` + expiry.
    SessionDisconnected {
        /// Client identifier.
        client_id: Shared<str>,
        /// When.
        at: Instant,
    },
    /// The session ended (clean start, expiry, or expiry 0 at disconnect).
    SessionEnded {
        /// Client identifier.
        client_id: Shared<str>,
    },
    /// A subscription was added or replaced.
    Subscribed {
        /// Client identifier.
        client_id: Shared<str>,
        /// The filter, `$share/{group}/` prefix included.
        filter: Box<str>,
        /// Its options.
        options: SubscriptionOptions,
        /// Its subscription identifier.
        identifier: Option<u32>,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Client identifier.
        client_id: Shared<str>,
        /// The filter.
        filter: Box<str>,
    },
    /// A QoS 1/2 message was queued for a persistent session. The message body is shared by
    /// every record that names its id: a store writes it once and drops it once no queue or
    /// retained entry names it.
    Queued {
        /// Client identifier.
        client_id: Shared<str>,
        /// The message.
        message: Shared<Message>,
        /// The QoS it is delivered with.
        qos: QoS,
        /// The retain flag it is delivered with.
        retain: bool,
        /// Subscription identifiers it carries.
        identifiers: Vec<u32>,
    },
    /// The queued message `message_id` was sent with `packet_id` and awaits its ack.
    Sent {
        /// Client identifier.
        client_id: Shared<str>,
        /// The message.
        message_id: u64,
        /// The packet id it was sent with (kept for redelivery).
        packet_id: PacketId,
    },
    /// PUBREC arrived for `packet_id`: the message is delivered, PUBREL is owed.
    Received {
        /// Client identifier.
        client_id: Shared<str>,
        /// The packet id.
        packet_id: PacketId,
    },
    /// PUBACK or PUBCOMP (or a PUBREC refusal) completed `packet_id`.
    Acked {
        /// Client identifier.
        client_id: Shared<str>,
        /// The packet id.
        packet_id: PacketId,
    },
    /// A queued message was dropped before it was sent (expired, too large for the client).
    Dropped {
        /// Client identifier.
        client_id: Shared<str>,
        /// The message.
        message_id: u64,
    },
    /// A QoS 2 publish from the client was received: a resend is a duplicate until PUBREL.
    InboundQoS2 {
        /// Client identifier.
        client_id: Shared<str>,
        /// The client's packet id.
        packet_id: PacketId,
    },
    /// PUBREL released the client's QoS 2 packet id.
    InboundReleased {
        /// Client identifier.
        client_id: Shared<str>,
        /// The client's packet id.
        packet_id: PacketId,
    },
    /// A message was retained (replacing any for its topic).
    RetainedSet {
        /// The message.
        message: Shared<Message>,
    },
    /// The retained message of a topic was cleared (or expired).
    RetainedCleared {
        /// The topic.
        topic: Box<str>,
    },
    /// A will waits in a persistent session until `at` (will delay), after its connection
    /// ended.
    WillPending {
        /// Client identifier.
        client_id: Shared<str>,
        /// The will message.
        message: Shared<Message>,
        /// When it is published.
        at: Instant,
    },
    /// The pending will was published or cancelled.
    WillCleared {
        /// Client identifier.
        client_id: Shared<str>,
    },
    /// A QoS 2 message published here goes to sibling brokers: until each has stored it
    /// ([`Change::Forwarded`]), a restarted broker forwards it again.
    Forwarding {
        /// The message.
        message: Shared<Message>,
        /// Each sibling it goes to, with the share groups (full `$share/...` filters) it
        /// delivers it to there.
        targets: Vec<(u16, Box<[Box<str>]>)>,
        /// Every share group a sibling was picked for.
        known: Box<[Box<str>]>,
    },
    /// Every sibling stored the forwarded message.
    Forwarded {
        /// The message.
        message_id: u64,
    },
    /// A sibling's forwarded QoS 2 message was taken here: the same message forwarded again
    /// (after that sibling's restart) is not delivered twice.
    ForwardSeen {
        /// The message.
        message_id: u64,
    },
    /// The sibling that forwarded the message will not forward it again.
    ForwardForgotten {
        /// The message.
        message_id: u64,
    },
}

/// A [`Change`] with its sequence number: records are numbered 1, 2, 3, ... in the order a
/// store must apply them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the record stream.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

/// Messages dropped, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Drops {
    /// A session's message or byte limit was reached.
    pub session_full: u64,
    /// The broker-wide byte limit was reached.
    pub total_full: u64,
    /// Larger than the subscriber's Maximum Packet Size.
    pub too_large: u64,
    /// Expired while queued (or retained).
    pub expired: u64,
    /// A QoS 0 message for a session whose client is offline.
    pub offline_qos0: u64,
    /// The subscriber is not authorized to receive it.
    pub not_authorized: u64,
    /// Not retained: the retained store was at [`Limits::retained_bytes`].
    pub retained_full: u64,
    /// A share group's copy reached the sibling picked for it after that sibling's last
    /// member had left, before the others heard (see [`shard`](super::shard)).
    pub member_left: u64,
}

impl Drops {
    /// All drops together.
    pub fn total(&self) -> u64 {
        self.session_full
            + self.total_full
            + self.too_large
            + self.expired
            + self.offline_qos0
            + self.not_authorized
            + self.retained_full
            + self.member_left
    }
}

/// Broker counters (also published under `$SYS/broker/` when configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Open connections that completed CONNECT.
    pub clients_connected: usize,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Subscriptions in the index.
    pub subscriptions: usize,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Retained messages.
    pub retained: usize,
    /// Messages held by sessions (queued or in flight).
    pub queued_messages: usize,
    /// Bytes held by sessions.
    pub queued_bytes: usize,
    /// What was dropped.
    pub dropped: Drops,
    /// Times a publisher was held for a subscriber to make room ([`Limits::backpressure_ms`]).
    pub publishers_held: u64,
    /// Times a subscriber made no room in time and stopped holding publishers.
    pub subscribers_stalled: u64,
    /// Times a publisher went past [`Limits::publish_rate`] and was slowed.
    pub publishers_throttled: u64,
}

impl Stats {
    /// Adds a sibling's counters (see [`shard`](super::shard)): retained messages are kept by
    /// every sibling, so those are not added but the larger count kept.
    pub fn merge(&mut self, o: &Stats) {
        self.clients_connected += o.clients_connected;
        self.sessions += o.sessions;
        self.subscriptions += o.subscriptions;
        self.messages_received += o.messages_received;
        self.messages_sent += o.messages_sent;
        self.retained = self.retained.max(o.retained);
        self.queued_messages += o.queued_messages;
        self.queued_bytes += o.queued_bytes;
        let (d, e) = (&mut self.dropped, &o.dropped);
        d.session_full += e.session_full;
        d.total_full += e.total_full;
        d.too_large += e.too_large;
        d.expired += e.expired;
        d.offline_qos0 += e.offline_qos0;
        d.not_authorized += e.not_authorized;
        d.retained_full += e.retained_full;
        d.member_left += e.member_left;
        self.publishers_held += o.publishers_held;
        self.subscribers_stalled += o.subscribers_stalled;
        self.publishers_throttled += o.publishers_throttled;
    }
}

/// A local misuse of the broker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// No such connection (never opened, or already closed by `handle_close`).
    UnknownConnection,
    /// The buffer cannot hold the next packet: it needs this many bytes.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The connection asked no question this answers.
    NoQuestion,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownConnection => f.write_str("unknown connection"),
            Error::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
            Error::NoQuestion => f.write_str("no question is pending for this connection"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
