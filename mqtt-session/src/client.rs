//! The client state machine.

use core::fmt;
use core::time::Duration;

use mqtt_proto::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Filters, Packet, PacketId,
    Properties, Property, PropertyId, ProtocolVersion, Publish, QoS, ReasonCode, ReasonCodes,
    Status, Subscribe, SubscriptionOptions, TopicFilter, Unsubscribe, Will, decode,
};

use crate::journal::{
    Change, Journal, OUT_HEADER, RX_HANDLING, Record, RestoreError, TAG_OUT, TAG_RX,
};
use crate::store::{Backing, Fixed, Kind, NewEntry, OutState, PushError, Store};
use crate::{Instant, PacketIds};

/// Settings that stay the same across reconnects.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Protocol version to speak.
    pub version: ProtocolVersion,
    /// Keep-alive in seconds (0 disables it); the server's value from CONNACK wins.
    pub keep_alive: u16,
    /// Start a new session on every connect instead of resuming one.
    pub clean_start: bool,
    /// MQTT 5 session expiry in seconds (0: the session ends with the connection).
    pub session_expiry: u32,
    /// Most QoS 1/2 messages this client sends before waiting for acknowledgments.
    pub inflight: u16,
    /// Largest packet this client accepts (advertised to MQTT 5 servers).
    pub max_packet_size: u32,
    /// How long to wait for PINGRESP (or CONNACK) before the connection counts as lost.
    pub response_timeout: Duration,
    /// Send PUBACK/PUBREC only when the application calls [`Client::ack`].
    pub manual_acks: bool,
    /// Highest incoming topic alias accepted (MQTT 5; 0 refuses aliases). At most 16: their
    /// topic names share a 1 KiB table of their own.
    pub topic_alias_maximum: u16,
    /// The Receive Maximum announced to MQTT 5 servers (0: the `RX` capacity). Announcing less
    /// than `RX` leaves room for servers that count their quota loosely (mosquitto 2.0 frees
    /// it at PUBREC, not PUBCOMP), instead of closing the connection with 0x93.
    pub receive_maximum: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: ProtocolVersion::V5,
            keep_alive: 60,
            clean_start: true,
            session_expiry: 0,
            inflight: 32,
            max_packet_size: 1024 * 1024,
            response_timeout: Duration::from_secs(10),
            manual_acks: false,
            topic_alias_maximum: 16,
            receive_maximum: 0,
        }
    }
}

/// What a connect attempt sends besides the [`Config`]: identity, credentials, will.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions<'a> {
    /// Client identifier; empty lets the server assign one (needs clean start before MQTT 5).
    pub client_id: &'a str,
    /// User name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
    /// Will message.
    pub will: Option<Will<'a>>,
    /// Extra MQTT 5 CONNECT properties (user properties, authentication method and data, ...).
    pub properties: &'a [Property<'a>],
}

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// No connection; publishes are queued.
    Disconnected,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// Connected: packets flow.
    Connected,
    /// Ended by [`Client::disconnect`]: the runtime must not reconnect.
    Closed,
}

/// The token `publish` returns; completion events carry it.
pub type Token = u32;

/// A message received from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Message<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS it was delivered with.
    pub qos: QoS,
    /// Whether it is a retained message.
    pub retain: bool,
    /// MQTT 5 properties.
    pub properties: Properties<'a>,
    /// The id to pass to [`Client::ack`] in manual-ack mode (QoS 1 and 2).
    pub packet_id: Option<PacketId>,
    /// This client may have handled it already: it was delivered, not yet acknowledged, when
    /// the client last stopped (QoS 2, manual acks, journal on). An application whose effect
    /// must happen once checks its own records for it; every other QoS 2 message is new.
    pub redelivered: bool,
}

/// Something the application should know, caused by a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event<'a> {
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
    },
    /// An application message.
    Message(Message<'a>),
    /// A QoS 1/2 publish is complete (PUBACK or PUBCOMP), or was refused by the server.
    Published {
        /// The token from `publish`.
        token: Token,
        /// `Success`, `NoMatchingSubscribers`, or the server's refusal.
        reason_code: ReasonCode,
    },
    /// SUBACK: one result per filter.
    Subscribed {
        /// The id `subscribe` returned.
        packet_id: PacketId,
        /// Granted QoS or failure per filter.
        reason_codes: ReasonCodes<'a>,
    },
    /// AUTH from the server (MQTT 5 extended authentication): answer with [`Client::auth`].
    Auth {
        /// `ContinueAuthentication`, `ReAuthenticate` or `Success`.
        reason_code: ReasonCode,
        /// Authentication method and data, reason string, user properties.
        properties: Properties<'a>,
    },
    /// UNSUBACK (results only in MQTT 5).
    Unsubscribed {
        /// The id `unsubscribe` returned.
        packet_id: PacketId,
        /// Result per filter (empty before MQTT 5).
        reason_codes: ReasonCodes<'a>,
    },
}

/// Something the application should know that no packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Notice {
    /// A queued message was dropped to make room for a more important one.
    Evicted {
        /// Token of the dropped message.
        token: Token,
    },
    /// A QoS 0 message was written to the transport: it is complete.
    Sent {
        /// Token of the message.
        token: Token,
    },
    /// A message will not be delivered: the server refused it (PUBREC with an error), or it
    /// exceeds what the server supports (maximum packet size, QoS, retain).
    Dropped {
        /// Token of the dropped message.
        token: Token,
        /// Why.
        reason_code: ReasonCode,
    },
    /// The connection is lost; the runtime should close the socket and reconnect.
    ConnectionLost(ConnectionError),
    /// A granted subscription could not be kept for restoring (the store is full): it holds
    /// on this session but will not be made again if the server loses the session.
    SubscriptionNotKept,
}

/// Why a connection ended, from the protocol's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConnectionError {
    /// CONNACK refused the connection.
    Refused(ReasonCode),
    /// The server sent DISCONNECT.
    ServerDisconnect(ReasonCode),
    /// The server sent bytes that are not a valid packet.
    Malformed(DecodeError),
    /// The server broke the protocol (the reason code we closed with).
    ProtocolViolation(ReasonCode),
    /// No PINGRESP or CONNACK in time.
    Timeout,
    /// The transport closed.
    TransportClosed,
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Refused(rc) => write!(f, "connection refused: {}", refusal_text(*rc)),
            ConnectionError::ServerDisconnect(rc) => write!(f, "server disconnected: {rc}"),
            ConnectionError::Malformed(e) => write!(f, "malformed packet from server: {e}"),
            ConnectionError::ProtocolViolation(rc) => write!(f, "server broke the protocol: {rc}"),
            ConnectionError::Timeout => f.write_str("server did not answer in time"),
            ConnectionError::TransportClosed => f.write_str("connection closed"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConnectionError {}

/// A sentence a user understands for a CONNACK refusal.
fn refusal_text(rc: ReasonCode) -> &'static str {
    match rc {
        ReasonCode::BadUserNameOrPassword => "bad user name or password",
        ReasonCode::NotAuthorized => "not authorized",
        ReasonCode::ClientIdentifierNotValid => "the client identifier was rejected",
        ReasonCode::UnsupportedProtocolVersion => "the server does not speak this MQTT version",
        ReasonCode::ServerUnavailable | ReasonCode::ServerBusy => "the server is unavailable",
        ReasonCode::Banned => "this client is banned",
        other => other.description(),
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The queue is full and the message is not more important than anything in it.
    QueueFull,
    /// Every packet identifier is in flight.
    PacketIdsExhausted,
    /// The packet cannot be encoded (invalid topic, property, ...).
    Encode(EncodeError),
    /// The message is larger than the whole queue.
    TooLarge,
    /// [`Client::disconnect`] was called.
    Closed,
    /// The operation needs a connection.
    NotConnected,
    /// `ack` named a message that is not waiting for one.
    UnknownPacketId,
    /// The server does not support this (QoS above its maximum, retain).
    NotSupported(ReasonCode),
    /// Packets wait to be written: drain `poll_transmit` (and `poll_notice`) first.
    WouldBlock,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::QueueFull => f.write_str("queue full"),
            Error::PacketIdsExhausted => f.write_str("all packet identifiers are in use"),
            Error::Encode(e) => write!(f, "cannot encode: {e}"),
            Error::TooLarge => f.write_str("message larger than the queue"),
            Error::Closed => f.write_str("client closed by disconnect()"),
            Error::NotConnected => f.write_str("not connected"),
            Error::UnknownPacketId => f.write_str("no message waits for an ack with that id"),
            Error::NotSupported(rc) => write!(f, "not supported by the server: {rc}"),
            Error::WouldBlock => f.write_str("drain poll_transmit first"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Error::Encode(e)
    }
}

/// What [`Client::handle_read`] did with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Read<'a> {
    /// One packet was consumed (`used` bytes); it may carry an event.
    Packet {
        /// Bytes consumed.
        used: usize,
        /// What the packet means for the application.
        event: Option<Event<'a>>,
    },
    /// The input does not hold a whole packet yet.
    NeedMore(usize),
    /// Acknowledgments or notices are waiting: drain `poll_transmit` and `poll_notice`
    /// before reading more.
    TransmitFirst,
    /// The connection is over (see [`Notice::ConnectionLost`]); close the transport after
    /// flushing `poll_transmit` (it may hold a DISCONNECT).
    Closed,
}

/// A small packet the client owes the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    PubAck(PacketId, ReasonCode),
    PubRec(PacketId, ReasonCode),
    PubComp(PacketId, ReasonCode),
    PingReq,
    Disconnect(ReasonCode),
}

/// Where a received QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    /// Delivered in manual-ack mode; the application has not acked yet.
    AwaitUser(QoS),
    /// Restored from a record of a QoS 2 message delivered in manual-ack mode and never
    /// acknowledged: the server's resend is delivered again, marked as redelivered.
    Interrupted,
    /// PUBREC sent; a resend is a duplicate until PUBREL arrives.
    AwaitPubRel,
}

/// A received QoS 1/2 message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rx {
    id: PacketId,
    state: RxState,
    /// Journal key (0: not journaled), the sequence number of its record, and whether its
    /// record is still to be reported.
    key: u64,
    lsn: u64,
    dirty: bool,
}

impl Rx {
    const fn new(id: PacketId, state: RxState) -> Self {
        Rx {
            id,
            state,
            key: 0,
            lsn: 0,
            dirty: false,
        }
    }
}

/// Limits the server announced in CONNACK.
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    receive_maximum: u16,
    max_packet_size: u32,
    /// The server's keep-alive, which replaces ours (0 turns pings off).
    keep_alive: Option<u16>,
    max_qos: QoS,
    retain_available: bool,
    /// Highest topic alias the server accepts from us.
    topic_alias_maximum: u16,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            receive_maximum: u16::MAX,
            max_packet_size: u32::MAX,
            keep_alive: None,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            topic_alias_maximum: 0,
        }
    }
}

impl ServerLimits {
    /// Why the server would refuse a PUBLISH with these flags, if it would.
    fn refuses(&self, qos: QoS, retain: bool) -> Option<ReasonCode> {
        if qos > self.max_qos {
            Some(ReasonCode::QoSNotSupported)
        } else if retain && !self.retain_available {
            Some(ReasonCode::RetainNotSupported)
        } else {
            None
        }
    }
}

/// Room kept for the topics of incoming aliases (MQTT 5), apart from the outgoing store.
const ALIAS_SLOTS: usize = 16;
const ALIAS_BYTES: usize = 1024;

/// The MQTT client state machine, with its outgoing store in arrays (no allocator).
///
/// `SLOTS` and `BYTES` bound the outgoing store (queued and in-flight publishes, pending
/// (un)subscribes, kept subscriptions); `RX` bounds the received QoS 2 (and manually acked)
/// messages in progress. With the `alloc` feature, [`HeapClient`] sizes the store at run time.
pub type Client<const SLOTS: usize, const BYTES: usize, const RX: usize> =
    Session<Fixed<SLOTS, BYTES>, RX>;

/// The MQTT client state machine with its outgoing store on the heap, sized at run time.
#[cfg(feature = "alloc")]
pub type HeapClient<const RX: usize> = Session<crate::store::Heap, RX>;

/// The MQTT client state machine over any store [`Backing`]; see [`Client`].
///
/// # Driving it
/// 1. [`connect`](Client::connect) writes CONNECT into a buffer: send it.
/// 2. Feed received bytes to [`handle_read`](Client::handle_read) until it needs more; act on
///    each event.
/// 3. Drain [`poll_transmit`](Client::poll_transmit) until it returns `None`, writing each packet.
/// 4. Sleep until [`poll_timeout`](Client::poll_timeout) (or input, or a user call), then call
///    [`handle_timeout`](Client::handle_timeout).
/// 5. Drain [`poll_notice`](Client::poll_notice). On [`Notice::ConnectionLost`] or a closed
///    transport ([`handle_disconnect`](Client::handle_disconnect)), reconnect after the
///    back-off unless the state is [`State::Closed`].
pub struct Session<B, const RX: usize> {
    cfg: Config,
    state: State,
    store: Store<B>,
    ids: PacketIds,
    next_token: Token,
    rx: heapless::Vec<Rx, RX>,
    journal: Journal,
    control: heapless::Deque<Control, 8>,
    notices: heapless::Deque<Notice, 16>,
    /// The end of the connection, reported before any other notice and never crowded out.
    lost: Option<ConnectionError>,
    aliases: Store<Fixed<ALIAS_SLOTS, ALIAS_BYTES>>,
    /// Topics this client gave an alias on this connection (the token is the alias).
    out_aliases: Store<Fixed<ALIAS_SLOTS, ALIAS_BYTES>>,
    server: ServerLimits,
    last_sent: Instant,
    /// When the outstanding PINGREQ or CONNECT was sent.
    awaiting_response: Option<Instant>,
    ping_queued: bool,
    /// Entries before this index need no transmission: `poll_transmit` starts here.
    scan_from: usize,
    /// QoS 1/2 PUBLISHes sent on this connection and not completed (the server's quota).
    quota_used: usize,
    /// (UN)SUBSCRIBEs waiting to be sent: they may pass publishes held by the window.
    requests_waiting: usize,
    /// How many stored entries hold a packet id.
    ids_held: usize,
    /// Which ids they hold, as 65 536 bits, where an allocator can spare 8 KiB for it: id
    /// allocation then costs O(1) instead of a scan of the store.
    #[cfg(feature = "alloc")]
    id_bits: Option<alloc::boxed::Box<[u64; 1024]>>,
}

impl<const SLOTS: usize, const BYTES: usize, const RX: usize> Session<Fixed<SLOTS, BYTES>, RX> {
    /// A disconnected client.
    pub fn new(cfg: Config) -> Self {
        Session::with_backing(cfg, Fixed::default())
    }
}

#[cfg(feature = "alloc")]
impl<const RX: usize> Session<crate::store::Heap, RX> {
    /// A disconnected client whose store holds up to `max_packets` packets in `bytes` bytes.
    pub fn with_capacity(cfg: Config, max_packets: usize, bytes: usize) -> Self {
        let mut s = Session::with_backing(cfg, crate::store::Heap::new(max_packets, bytes));
        s.id_bits = Some(alloc::boxed::Box::new([0; 1024]));
        s
    }
}

impl<B: Backing, const RX: usize> Session<B, RX> {
    /// A disconnected client over the given store backing.
    pub fn with_backing(cfg: Config, backing: B) -> Self {
        Session {
            cfg,
            state: State::Disconnected,
            store: Store::with_backing(backing),
            ids: PacketIds::new(),
            next_token: 1,
            rx: heapless::Vec::new(),
            journal: Journal::default(),
            control: heapless::Deque::new(),
            notices: heapless::Deque::new(),
            lost: None,
            aliases: Store::new(),
            out_aliases: Store::new(),
            server: ServerLimits::default(),
            last_sent: Instant::ZERO,
            awaiting_response: None,
            ping_queued: false,
            scan_from: 0,
            quota_used: 0,
            requests_waiting: 0,
            ids_held: 0,
            #[cfg(feature = "alloc")]
            id_bits: None,
        }
    }

    /// The connection state.
    pub const fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub const fn config(&self) -> &Config {
        &self.cfg
    }

    /// Messages and (un)subscribes held: queued or in flight.
    pub fn pending(&self) -> usize {
        self.store
            .entries()
            .iter()
            .filter(|e| e.state != OutState::Active)
            .count()
    }

    /// Subscriptions granted and kept for restoring after a session loss.
    pub fn subscriptions(&self) -> usize {
        self.store
            .entries()
            .iter()
            .filter(|e| e.kind == Kind::Subscription)
            .count()
    }

    /// The publishes held (queued or in flight): priority and when each was accepted.
    pub fn held(&self) -> impl Iterator<Item = (u8, Instant)> + '_ {
        self.store
            .entries()
            .iter()
            .filter(|e| e.kind == Kind::Publish)
            .map(|e| (e.priority, e.accepted_at))
    }

    /// QoS 1/2 messages sent and not yet completely acknowledged.
    pub fn in_flight(&self) -> usize {
        self.store
            .entries()
            .iter()
            .filter(|e| e.in_flight())
            .count()
    }

    /// The keep-alive in force: the server's, if it set one.
    pub fn keep_alive(&self) -> Duration {
        let secs = self.server.keep_alive.unwrap_or(self.cfg.keep_alive);
        Duration::from_secs(u64::from(secs))
    }

    /// Starts a connection attempt: writes CONNECT into `buf` and returns its length.
    pub fn connect(
        &mut self,
        now: Instant,
        opts: &ConnectOptions<'_>,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        if self.state == State::Closed {
            return Err(Error::Closed);
        }
        let v5 = self.cfg.version.is_v5();
        let mut props: heapless::Vec<Property<'_>, 24> = heapless::Vec::new();
        if v5 {
            let own = [
                (self.cfg.session_expiry != 0)
                    .then_some(Property::SessionExpiryInterval(self.cfg.session_expiry)),
                u16::try_from(RX)
                    .ok()
                    .map(|rx| match self.cfg.receive_maximum {
                        0 => rx,
                        n => n.min(rx),
                    })
                    .filter(|&n| n > 0 && n < u16::MAX)
                    .map(Property::ReceiveMaximum),
                (self.cfg.max_packet_size != u32::MAX)
                    .then_some(Property::MaximumPacketSize(self.cfg.max_packet_size)),
                (self.alias_maximum() != 0)
                    .then_some(Property::TopicAliasMaximum(self.alias_maximum())),
            ];
            for p in own
                .into_iter()
                .flatten()
                .chain(opts.properties.iter().copied())
            {
                props
                    .push(p)
                    .map_err(|_| Error::Encode(EncodeError::PacketTooLarge))?;
            }
        }
        let connect = Connect {
            protocol: self.cfg.version,
            clean_start: self.cfg.clean_start,
            keep_alive: self.cfg.keep_alive,
            properties: Properties::new(&props),
            client_id: opts.client_id,
            will: opts.will,
            username: opts.username,
            password: opts.password,
        };
        let n = Packet::Connect(connect).encode(self.cfg.version, buf)?;
        // Topic aliases live as long as one connection.
        self.aliases = Store::new();
        self.out_aliases = Store::new();
        self.control.clear();
        self.ping_queued = false;
        self.server = ServerLimits::default();
        self.state = State::Connecting;
        self.last_sent = now;
        self.awaiting_response = Some(now);
        Ok(n)
    }

    /// Queues a publish; returns the token its completion event will carry.
    ///
    /// The message's `packet_id` and `dup` are ignored: the client chooses the id when the
    /// message is first sent, so queued messages hold none. `priority` (1 to 10) decides which
    /// queued message is dropped first when the queue is full. QoS 0 messages are kept only
    /// until they are written.
    pub fn publish(
        &mut self,
        now: Instant,
        message: &Publish<'_>,
        priority: u8,
    ) -> Result<Token, Error> {
        self.publish_evicting(now, message, priority, priority)
    }

    /// Like [`publish`](Client::publish), but evicts only messages of lower priority: a queue
    /// full of equally important messages refuses with [`Error::QueueFull`], so the
    /// application can wait for room (back-pressure) instead of dropping the oldest.
    pub fn try_publish(
        &mut self,
        now: Instant,
        message: &Publish<'_>,
        priority: u8,
    ) -> Result<Token, Error> {
        let below = priority.clamp(1, 10) - 1;
        self.publish_evicting(now, message, priority, below)
    }

    /// Queues a publish, evicting queued messages of priority up to `evict` if needed.
    fn publish_evicting(
        &mut self,
        now: Instant,
        message: &Publish<'_>,
        priority: u8,
        evict: u8,
    ) -> Result<Token, Error> {
        if self.state == State::Closed {
            return Err(Error::Closed);
        }
        if self.state == State::Connected
            && let Some(rc) = self.server.refuses(message.qos, message.retain)
        {
            return Err(Error::NotSupported(rc));
        }
        let packet = Packet::Publish(Publish {
            dup: false,
            // A placeholder id, overwritten when the message is sent.
            packet_id: (message.qos != QoS::AtMostOnce).then_some(PacketId::MAX),
            ..*message
        });
        let token = self.push(now, Kind::Publish, &packet, priority.clamp(1, 10), evict)?;
        if message.qos != QoS::AtMostOnce {
            self.journal_new(self.store.len().saturating_sub(1));
        }
        Ok(token)
    }

    /// Queues a SUBSCRIBE; returns its packet id, which the `Subscribed` event carries.
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: &[(TopicFilter<'_>, SubscriptionOptions)],
        properties: &[Property<'_>],
    ) -> Result<PacketId, Error> {
        self.request(now, Kind::Subscribe, |packet_id| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties::new(properties),
                filters: Filters::new(filters),
            })
        })
    }

    /// Queues an UNSUBSCRIBE; returns its packet id, which the `Unsubscribed` event carries.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: &[TopicFilter<'_>],
        properties: &[Property<'_>],
    ) -> Result<PacketId, Error> {
        self.request(now, Kind::Unsubscribe, |packet_id| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Properties::new(properties),
                filters: mqtt_proto::Unsubscriptions::new(filters),
            })
        })
    }

    /// Acknowledges a message received in manual-ack mode, with a reason code (MQTT 5).
    pub fn ack(&mut self, packet_id: PacketId, reason_code: ReasonCode) -> Result<(), Error> {
        let pos = self
            .rx
            .iter()
            .position(|r| r.id == packet_id && matches!(r.state, RxState::AwaitUser(_)))
            .ok_or(Error::UnknownPacketId)?;
        let Some(RxState::AwaitUser(qos)) = self.rx.get(pos).map(|r| r.state) else {
            return Err(Error::UnknownPacketId);
        };
        let reason_code = if self.cfg.version.is_v5() {
            reason_code
        } else {
            ReasonCode::Success
        };
        if self.control.is_full() {
            return Err(Error::WouldBlock);
        }
        match qos {
            QoS::ExactlyOnce if !reason_code.is_error() => {
                if let Some(e) = self.rx.get_mut(pos) {
                    e.state = RxState::AwaitPubRel;
                }
                self.journal_rx(pos);
                self.queue_control(Control::PubRec(packet_id, reason_code));
            }
            QoS::ExactlyOnce => {
                // A refused QoS 2 message ends its exchange at PUBREC.
                self.remove_rx(pos);
                self.queue_control(Control::PubRec(packet_id, reason_code));
            }
            _ => {
                self.remove_rx(pos);
                self.queue_control(Control::PubAck(packet_id, reason_code));
            }
        }
        Ok(())
    }

    /// Writes an AUTH packet into `buf` (MQTT 5 extended authentication): the answer to an
    /// [`Event::Auth`], or `ReAuthenticate` to start a re-authentication.
    pub fn auth(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        properties: &[Property<'_>],
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        if !self.cfg.version.is_v5() {
            return Err(Error::Encode(EncodeError::NotInVersion));
        }
        if !matches!(self.state, State::Connecting | State::Connected) {
            return Err(Error::NotConnected);
        }
        let packet = Packet::Auth(mqtt_proto::Auth::new(
            reason_code,
            Properties::new(properties),
        ));
        let n = packet.encode(self.cfg.version, buf)?;
        self.last_sent = now;
        Ok(n)
    }

    /// Ends the session deliberately: queues DISCONNECT; the runtime must not reconnect.
    pub fn disconnect(&mut self, reason_code: ReasonCode) {
        if self.state == State::Connected {
            self.control.clear();
            // 3.x DISCONNECT carries no reason.
            let rc = if self.cfg.version.is_v5() {
                reason_code
            } else {
                ReasonCode::Success
            };
            self.queue_control(Control::Disconnect(rc));
        }
        self.state = State::Closed;
    }

    /// Tells the client the transport closed (or could not be opened).
    pub fn handle_disconnect(&mut self, _now: Instant) {
        if self.state != State::Closed {
            if matches!(self.state, State::Connected | State::Connecting) {
                self.lose(ConnectionError::TransportClosed);
            }
            self.state = State::Disconnected;
        }
        self.control.clear();
        self.ping_queued = false;
        self.awaiting_response = None;
    }

    /// Processes the packet at the start of `buf`.
    ///
    /// The event borrows from `buf` and, for a message sent with a topic alias, from the client.
    pub fn handle_read<'a>(&'a mut self, now: Instant, buf: &'a [u8]) -> Read<'a> {
        if !matches!(self.state, State::Connecting | State::Connected) {
            return Read::Closed;
        }
        // Each packet may owe one acknowledgment or one notice; keep room for them.
        if self.control.len() + 1 >= self.control.capacity()
            || self.notices.is_full()
            || (self.journal.on && !self.journal.can_delete(8))
        {
            return Read::TransmitFirst;
        }
        let max = usize::try_from(self.cfg.max_packet_size).unwrap_or(usize::MAX);
        match decode(buf, self.cfg.version, max) {
            Ok(Status::Incomplete(n)) => Read::NeedMore(n),
            Ok(Status::Complete((packet, used))) => match self.on_packet(now, packet) {
                Ok(Some(Event::Message(mut m))) if m.topic.is_empty() => {
                    // A message sent with a known alias: its topic name is kept here.
                    m.topic = self.alias_topic(&m.properties).unwrap_or_default();
                    Read::Packet {
                        used,
                        event: Some(Event::Message(m)),
                    }
                }
                Ok(_) if !matches!(self.state, State::Connecting | State::Connected) => {
                    Read::Closed
                }
                Ok(event) => Read::Packet { used, event },
                Err(rc) => {
                    self.violation(rc);
                    Read::Closed
                }
            },
            Err(e) => {
                self.close_with(e.reason_code());
                self.lose(ConnectionError::Malformed(e));
                Read::Closed
            }
        }
    }

    /// The next moment `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connecting => self
                .awaiting_response
                .map(|t| t + self.cfg.response_timeout),
            State::Connected => {
                let ka = self.keep_alive();
                // While a PINGREQ is out, only its answer's deadline matters.
                let ping = (!ka.is_zero() && self.awaiting_response.is_none())
                    .then(|| self.last_sent + ka);
                let answer = self
                    .awaiting_response
                    .map(|t| t + self.cfg.response_timeout);
                match (ping, answer) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        }
    }

    /// Does what time demands: pings, and declares the connection lost when the server is silent.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !matches!(self.state, State::Connecting | State::Connected) {
            return;
        }
        if let Some(sent) = self.awaiting_response
            && now >= sent + self.cfg.response_timeout
        {
            if self.state == State::Connected {
                self.close_with(ReasonCode::KeepAliveTimeout);
            }
            self.lose(ConnectionError::Timeout);
            return;
        }
        let ka = self.keep_alive();
        if self.state == State::Connected
            && !ka.is_zero()
            && now >= self.last_sent + ka
            && self.awaiting_response.is_none()
            && !self.ping_queued
        {
            self.ping_queued = true;
            self.queue_control(Control::PingReq);
        }
    }

    /// A notice for the application, if any.
    #[must_use]
    pub fn poll_notice(&mut self) -> Option<Notice> {
        if let Some(e) = self.lost.take() {
            return Some(Notice::ConnectionLost(e));
        }
        self.notices.pop_front()
    }

    /// Writes the next packet to send into `buf`; `Ok(None)` when there is nothing to send.
    ///
    /// If `buf` is too small the error says how much is needed and nothing is lost.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        if let Some(&c) = self.control.front() {
            let wait = match c {
                // The record of the received id must be durable first, or a restart would
                // deliver the server's resend again.
                Control::PubRec(id, _) => self.rx_record_pending(id),
                // Its delete must be durable first, or a restart would still hold the id and
                // take the next message the server sends with it for a resend.
                Control::PubComp(..) => {
                    self.journal.on && self.journal.release > self.journal.durable
                }
                _ => false,
            };
            if wait {
                return Ok(None);
            }
            let n = self.encode_control(c, buf)?;
            self.control.pop_front();
            match c {
                Control::PingReq => {
                    self.ping_queued = false;
                    self.awaiting_response = Some(now);
                }
                Control::Disconnect(_) => {
                    // Nothing follows a DISCONNECT.
                    self.control.clear();
                    self.state = match self.state {
                        State::Closed => State::Closed,
                        _ => State::Disconnected,
                    };
                }
                _ => {}
            }
            self.last_sent = now;
            return Ok(Some(n));
        }
        if self.state != State::Connected {
            return Ok(None);
        }
        match self.transmit_store(buf)? {
            Some(n) => {
                self.last_sent = now;
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    fn encode_control(&self, c: Control, buf: &mut [u8]) -> Result<usize, Error> {
        let v = self.cfg.version;
        let packet = match c {
            Control::PubAck(id, rc) => Packet::PubAck(Ack::with_reason(id, rc)),
            Control::PubRec(id, rc) => Packet::PubRec(Ack::with_reason(id, rc)),
            Control::PubComp(id, rc) => Packet::PubComp(Ack::with_reason(id, rc)),
            Control::PingReq => Packet::PingReq,
            Control::Disconnect(rc) => Packet::Disconnect(Disconnect::new(rc)),
        };
        Ok(packet.encode(v, buf)?)
    }

    /// Writes the first stored packet that must go out now.
    fn transmit_store(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let window = usize::from(self.cfg.inflight.min(self.server.receive_maximum).max(1));
        // The server's quota counts QoS 1/2 PUBLISHes sent on this connection (MQTT 5 4.9).
        let sent = self.quota_used;
        let max = usize::try_from(self.server.max_packet_size).unwrap_or(usize::MAX);
        if self.journal.barrier {
            if self.records_pending() || self.journal.durable < self.journal.lsn {
                return Ok(None);
            }
            self.journal.barrier = false;
        }
        let mut i = self.scan_from;
        let mut publish_blocked = false;
        // Journal: QoS 2 messages given their id ahead of being sent, and entries passed
        // because their record is not durable yet.
        let (mut reserved, mut held) = (0, 0);
        while let Some(mut e) = self.store.get(i).copied() {
            let is_new = e.state == OutState::Queued;
            if !needs_send(&e) {
                if i == self.scan_from {
                    self.scan_from += 1;
                }
                i += 1;
                continue;
            }
            if self.journal.on && e.key != 0 {
                if e.kind == Kind::Publish
                    && is_new
                    && e.packet_id.is_none()
                    && sent + reserved < window
                    && publish_flags(self.store.bytes(i)).0 == QoS::ExactlyOnce
                {
                    // A QoS 2 message takes its id before it is first sent, and the record of
                    // that id is made durable first: after a restart it goes out again with
                    // the same id, which the server knows, and is not delivered twice.
                    let id = self.allocate_id()?;
                    self.update(i, |entry| entry.packet_id = Some(id));
                    e.packet_id = Some(id);
                    e.dirty = true;
                }
                if e.dirty || e.lsn > self.journal.durable {
                    if e.kind == Kind::Publish {
                        // Nothing overtakes it; later QoS 2 messages may still take ids.
                        publish_blocked = true;
                        reserved += usize::from(is_new && e.packet_id.is_some());
                        held += 1;
                        if self.requests_waiting == 0
                            && (held >= window || sent + reserved >= window)
                        {
                            return Ok(None);
                        }
                    }
                    i += 1;
                    continue;
                }
            }
            if e.state == OutState::AwaitPubComp {
                // PUBREL does not count against the quota.
                let Some(id) = e.packet_id else {
                    self.remove_at(i);
                    continue;
                };
                let n = Packet::PubRel(Ack::new(id)).encode(self.cfg.version, buf)?;
                self.update(i, |e| e.resend = false);
                return Ok(Some(n));
            }
            let bytes = self.store.bytes(i);
            let (qos, retain) = publish_flags(bytes);
            let len = bytes.len();
            if e.kind == Kind::Publish {
                let needs_quota = qos != QoS::AtMostOnce;
                if publish_blocked || (needs_quota && sent >= window) {
                    // Messages go out in order: none overtakes one that waits for the window.
                    // (Subscriptions do: they do not count against it.)
                    if self.requests_waiting == 0 {
                        return Ok(None);
                    }
                    publish_blocked = true;
                    i += 1;
                    continue;
                }
                let refusal = self
                    .server
                    .refuses(qos, retain)
                    .or((len > max).then_some(ReasonCode::PacketTooLarge));
                if let Some(reason_code) = refusal {
                    if self.notices.is_full() || !self.journal.can_delete(1) {
                        // Drain notices first: a message is never dropped unreported.
                        return Ok(None);
                    }
                    self.remove_at(i);
                    self.push_notice(Notice::Dropped {
                        token: e.token,
                        reason_code,
                    });
                    continue;
                }
                if !needs_quota && self.notices.is_full() {
                    return Ok(None);
                }
            }
            if buf.len() < len {
                return Err(Error::Encode(EncodeError::BufferTooSmall { needed: len }));
            }
            let id = match (e.packet_id, e.kind, qos) {
                (Some(id), _, _) => Some(id),
                (None, Kind::Publish, QoS::AtMostOnce) => None,
                (None, _, _) => Some(self.allocate_id()?),
            };
            // A resend of a message the server may have seen carries DUP.
            let dup = e.kind == Kind::Publish && !is_new;
            let aliased = if e.kind == Kind::Publish {
                self.encode_with_alias(i, id, dup, buf)
            } else {
                None
            };
            let len = match aliased {
                Some(n) => n,
                None => {
                    let dst = buf.get_mut(..len).unwrap_or_default();
                    dst.copy_from_slice(self.store.bytes(i));
                    if let Some(id) = id {
                        set_packet_id(dst, e.kind, id);
                    }
                    if dup && let Some(b) = dst.first_mut() {
                        *b |= 0b1000;
                    }
                    len
                }
            };
            if e.kind == Kind::Publish && qos == QoS::AtMostOnce {
                // QoS 0 is done once written: the notice lets a runtime resolve its future.
                self.remove_at(i);
                self.push_notice(Notice::Sent { token: e.token });
                return Ok(Some(len));
            }
            self.update(i, |entry| {
                entry.packet_id = id;
                entry.resend = false;
                entry.state = match (e.kind, qos) {
                    (Kind::Publish, QoS::AtLeastOnce) => OutState::AwaitPubAck,
                    (Kind::Publish, _) => OutState::AwaitPubRec,
                    _ => OutState::AwaitAck,
                };
            });
            return Ok(Some(len));
        }
        Ok(None)
    }

    /// Writes the stored PUBLISH at `i` with an outgoing topic alias (MQTT 5), if the server
    /// accepts aliases and one is free or already stands for its topic. `None`: send it as is.
    fn encode_with_alias(
        &mut self,
        i: usize,
        id: Option<PacketId>,
        dup: bool,
        buf: &mut [u8],
    ) -> Option<usize> {
        let v = self.cfg.version;
        let limit = usize::from(self.server.topic_alias_maximum).min(ALIAS_SLOTS);
        if !v.is_v5() || limit == 0 {
            return None;
        }
        let Ok(Status::Complete((Packet::Publish(p), _))) =
            decode(self.store.bytes(i), v, usize::MAX)
        else {
            return None;
        };
        if p.properties.get(PropertyId::TopicAlias).is_some() {
            // The application chose its own alias.
            return None;
        }
        let known = self
            .out_aliases
            .entries()
            .iter()
            .enumerate()
            .find(|(n, _)| self.out_aliases.bytes(*n) == p.topic.as_bytes())
            .map(|(_, e)| e.token);
        let (alias, new) = match known {
            Some(a) => (u16::try_from(a).ok()?, false),
            None if self.out_aliases.len() < limit
                && self.out_aliases.fits(p.topic.len()).is_ok() =>
            {
                (u16::try_from(self.out_aliases.len() + 1).ok()?, true)
            }
            None => return None,
        };
        let mut props: heapless::Vec<Property<'_>, 16> = heapless::Vec::new();
        for prop in p.properties.iter().chain([Property::TopicAlias(alias)]) {
            props.push(prop).ok()?;
        }
        let packet = Packet::Publish(Publish {
            dup,
            packet_id: id,
            topic: if new { p.topic } else { "" },
            properties: Properties::new(&props),
            ..p
        });
        let max = usize::try_from(self.server.max_packet_size).unwrap_or(usize::MAX);
        if packet.encoded_len(v).ok()? > max {
            return None;
        }
        let n = packet.encode(v, buf).ok()?;
        if new {
            let topic = p.topic.as_bytes();
            let entry = NewEntry {
                token: u32::from(alias),
                kind: Kind::Alias,
                priority: 10,
                accepted_at: Instant::ZERO,
            };
            let _ = self.out_aliases.push(entry, topic.len(), |dst| {
                dst.copy_from_slice(topic);
                Ok::<_, ()>(topic.len())
            });
        }
        Some(n)
    }

    fn on_packet<'a>(
        &mut self,
        now: Instant,
        packet: Packet<'a>,
    ) -> Result<Option<Event<'a>>, ReasonCode> {
        if let Packet::Auth(a) = packet {
            // Extended authentication: before CONNACK, or a re-authentication after it.
            if !self.cfg.version.is_v5() {
                return Err(ReasonCode::ProtocolError);
            }
            if self.state == State::Connecting {
                // The exchange is progressing: the CONNACK deadline starts over.
                self.awaiting_response = Some(now);
            }
            return Ok(Some(Event::Auth {
                reason_code: a.reason_code,
                properties: a.properties,
            }));
        }
        if self.state == State::Connecting {
            return match packet {
                Packet::ConnAck(ack) => self.on_connack(now, ack),
                _ => Err(ReasonCode::ProtocolError),
            };
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => self.complete_publish(a, OutState::AwaitPubAck),
            Packet::PubRec(a) => self.on_pubrec(a).map(|()| None),
            Packet::PubRel(a) => self.on_pubrel(a).map(|()| None),
            Packet::PubComp(a) => self.complete_publish(a, OutState::AwaitPubComp),
            Packet::SubAck(a) => {
                let asked = self.complete_ack(a.packet_id, Kind::Subscribe, &a.reason_codes)?;
                Ok(asked.then_some(Event::Subscribed {
                    packet_id: a.packet_id,
                    reason_codes: a.reason_codes,
                }))
            }
            Packet::UnsubAck(a) => {
                self.complete_ack(a.packet_id, Kind::Unsubscribe, &a.reason_codes)?;
                Ok(Some(Event::Unsubscribed {
                    packet_id: a.packet_id,
                    reason_codes: a.reason_codes,
                }))
            }
            Packet::PingResp => {
                self.awaiting_response = None;
                Ok(None)
            }
            Packet::Disconnect(d) => {
                self.lose(ConnectionError::ServerDisconnect(d.reason_code));
                Ok(None)
            }
            _ => Err(ReasonCode::ProtocolError),
        }
    }

    fn on_connack<'a>(
        &mut self,
        now: Instant,
        ack: ConnAck<'_>,
    ) -> Result<Option<Event<'a>>, ReasonCode> {
        self.awaiting_response = None;
        if ack.reason_code != ReasonCode::Success {
            self.lose(ConnectionError::Refused(ack.reason_code));
            return Ok(None);
        }
        if ack.session_present && self.cfg.clean_start {
            // A clean start cannot resume a session [MQTT-3.2.2-2].
            return Err(ReasonCode::ProtocolError);
        }
        let mut limits = ServerLimits::default();
        for p in ack.properties.iter() {
            match p {
                Property::ReceiveMaximum(n) => limits.receive_maximum = n,
                Property::MaximumPacketSize(n) => limits.max_packet_size = n,
                Property::ServerKeepAlive(n) => limits.keep_alive = Some(n),
                Property::MaximumQoS(q) => limits.max_qos = q,
                Property::RetainAvailable(r) => limits.retain_available = r,
                Property::TopicAliasMaximum(n) => limits.topic_alias_maximum = n,
                _ => {}
            }
        }
        self.server = limits;
        self.state = State::Connected;
        self.last_sent = now;
        let session_present = ack.session_present;
        if !session_present {
            // The server has no state for us: earlier messages go again as new ones.
            self.clear_rx();
        }
        let mut i = 0;
        while let Some(e) = self.store.get_mut(i) {
            let mut reset = false;
            match e.state {
                OutState::Queued => {}
                // The server kept our subscriptions along with the session.
                OutState::Active if session_present => {}
                _ if session_present && e.kind != Kind::Subscription => e.resend = true,
                _ => {
                    // Without a session, earlier messages go again as new ones, and the
                    // subscriptions are made again. A pending (UN)SUBSCRIBE keeps the id the
                    // application was given; publishes and restores take fresh ones.
                    e.state = OutState::Queued;
                    if matches!(e.kind, Kind::Publish | Kind::Subscription) {
                        e.packet_id = None;
                    }
                    e.resend = false;
                    reset = e.key != 0;
                }
            }
            if reset && self.journal.on {
                // The journal must forget the ids before any is given to another message:
                // two records with one id could not be told apart after a restart.
                self.mark_dirty(i);
                self.journal.barrier = true;
            }
            i += 1;
        }
        self.recount();
        Ok(Some(Event::Connected { session_present }))
    }

    /// The highest incoming alias accepted: the configured one, within the alias table.
    fn alias_maximum(&self) -> u16 {
        self.cfg
            .topic_alias_maximum
            .min(u16::try_from(ALIAS_SLOTS).unwrap_or(u16::MAX))
    }

    /// The topic name kept for the alias in `props`.
    fn alias_topic(&self, props: &Properties<'_>) -> Option<&str> {
        let Some(Property::TopicAlias(alias)) = props.get(PropertyId::TopicAlias) else {
            return None;
        };
        let i = self
            .aliases
            .entries()
            .iter()
            .position(|e| e.kind == Kind::Alias && e.token == u32::from(alias))?;
        core::str::from_utf8(self.aliases.bytes(i)).ok()
    }

    /// Checks a PUBLISH's topic alias, remembering a new mapping.
    fn resolve_alias(&mut self, p: &Publish<'_>) -> Result<(), ReasonCode> {
        let alias = match p.properties.get(PropertyId::TopicAlias) {
            Some(Property::TopicAlias(a)) => a,
            // The decoder refuses an empty topic without an alias.
            _ => return Ok(()),
        };
        if alias == 0 || alias > self.alias_maximum() {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        let known = self
            .aliases
            .entries()
            .iter()
            .position(|e| e.kind == Kind::Alias && e.token == u32::from(alias));
        if p.topic.is_empty() {
            return known.map(|_| ()).ok_or(ReasonCode::TopicAliasInvalid);
        }
        if let Some(i) = known {
            self.aliases.remove(i);
        }
        let entry = NewEntry {
            token: u32::from(alias),
            kind: Kind::Alias,
            priority: 10,
            accepted_at: Instant::ZERO,
        };
        let topic = p.topic.as_bytes();
        self.aliases
            .push(entry, topic.len(), |dst| {
                dst.copy_from_slice(topic);
                Ok::<_, ()>(topic.len())
            })
            // Without room for the name the alias could not be resolved later.
            .map_err(|_| ReasonCode::ImplementationSpecificError)?;
        Ok(())
    }

    fn on_publish<'a>(&mut self, p: Publish<'a>) -> Result<Option<Event<'a>>, ReasonCode> {
        self.resolve_alias(&p)?;
        let message = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            packet_id: p.packet_id,
            redelivered: false,
        };
        let Some(id) = p.packet_id else {
            return Ok(Some(Event::Message(message)));
        };
        let mut known = self.rx.iter().position(|r| r.id == id);
        let mut state = known.and_then(|i| self.rx.get(i)).map(|r| r.state);
        if let Some(i) = known
            && state == Some(RxState::Interrupted)
            && p.qos != QoS::ExactlyOnce
        {
            // The server let that QoS 2 exchange go and reused the id: a new message.
            self.remove_rx(i);
            (known, state) = (None, None);
        }
        match (p.qos, state) {
            (QoS::ExactlyOnce, Some(RxState::AwaitPubRel)) => {
                // A resend of a message already delivered: acknowledge it again, do not deliver.
                self.queue_control(Control::PubRec(id, ReasonCode::Success));
                Ok(None)
            }
            (_, Some(RxState::AwaitUser(_))) => Ok(None),
            (QoS::ExactlyOnce, Some(RxState::Interrupted)) => {
                // Its record already says "delivered, not acknowledged": it stays.
                if let Some(r) = known.and_then(|i| self.rx.get_mut(i)) {
                    r.state = RxState::AwaitUser(QoS::ExactlyOnce);
                }
                Ok(Some(Event::Message(Message {
                    redelivered: true,
                    ..message
                })))
            }
            (QoS::ExactlyOnce, None) | (QoS::AtLeastOnce, None) if self.cfg.manual_acks => {
                self.rx
                    .push(Rx::new(id, RxState::AwaitUser(p.qos)))
                    .map_err(|_| ReasonCode::ReceiveMaximumExceeded)?;
                if p.qos == QoS::ExactlyOnce {
                    // Recorded before the application sees it (the runtime holds the message
                    // until the record is durable), so a restart knows it may have been handled.
                    self.journal_rx(self.rx.len() - 1);
                }
                Ok(Some(Event::Message(message)))
            }
            (QoS::ExactlyOnce, None) => {
                self.rx
                    .push(Rx::new(id, RxState::AwaitPubRel))
                    .map_err(|_| ReasonCode::ReceiveMaximumExceeded)?;
                self.journal_rx(self.rx.len() - 1);
                self.queue_control(Control::PubRec(id, ReasonCode::Success));
                Ok(Some(Event::Message(message)))
            }
            _ => {
                self.queue_control(Control::PubAck(id, ReasonCode::Success));
                Ok(Some(Event::Message(message)))
            }
        }
    }

    fn on_pubrel(&mut self, a: Ack<'_>) -> Result<(), ReasonCode> {
        let pos = self
            .rx
            .iter()
            .position(|r| r.id == a.packet_id && r.state == RxState::AwaitPubRel);
        let rc = match pos {
            Some(pos) => {
                if let Some(lsn) = self.remove_rx(pos) {
                    self.journal.release = self.journal.release.max(lsn);
                }
                ReasonCode::Success
            }
            None if self.cfg.version.is_v5() => ReasonCode::PacketIdentifierNotFound,
            None => ReasonCode::Success,
        };
        self.queue_control(Control::PubComp(a.packet_id, rc));
        Ok(())
    }

    /// PUBACK (QoS 1, waiting in `AwaitPubAck`) or PUBCOMP (QoS 2, in `AwaitPubComp`): the
    /// exchange is over.
    fn complete_publish<'a>(
        &mut self,
        a: Ack<'_>,
        state: OutState,
    ) -> Result<Option<Event<'a>>, ReasonCode> {
        let pos = self.find(a.packet_id, state)?;
        let token = self.remove_at(pos).map_or(0, |e| e.token);
        Ok(Some(Event::Published {
            token,
            reason_code: a.reason_code,
        }))
    }

    fn on_pubrec(&mut self, a: Ack<'_>) -> Result<(), ReasonCode> {
        let pos = match self.find(a.packet_id, OutState::AwaitPubRec) {
            Ok(pos) => pos,
            // A PUBREC repeated after we moved on is answered with PUBREL again.
            Err(_) => self.find(a.packet_id, OutState::AwaitPubComp)?,
        };
        if a.reason_code.is_error() {
            let token = self.remove_at(pos).map_or(0, |e| e.token);
            self.push_notice(Notice::Dropped {
                token,
                reason_code: a.reason_code,
            });
            return Ok(());
        }
        self.update(pos, |e| {
            e.state = OutState::AwaitPubComp;
            e.resend = true;
        });
        Ok(())
    }

    /// Completes a SUBSCRIBE or UNSUBSCRIBE and updates the subscriptions to restore.
    ///
    /// Returns whether the application asked for it (restores are the client's own).
    fn complete_ack(
        &mut self,
        id: PacketId,
        kind: Kind,
        codes: &ReasonCodes<'_>,
    ) -> Result<bool, ReasonCode> {
        let pos = self.find(id, OutState::AwaitAck)?;
        let found = self.store.get(pos).map(|e| e.kind);
        match (kind, found) {
            (Kind::Subscribe, Some(Kind::Subscription)) => {
                // A restored subscription: keep it unless the server now refuses it.
                let granted = codes.iter().next().is_some_and(|c| !c.is_error());
                if granted {
                    self.update(pos, |e| {
                        e.state = OutState::Active;
                        e.packet_id = None;
                    });
                } else {
                    self.remove_at(pos);
                }
                return Ok(false);
            }
            (Kind::Subscribe, Some(Kind::Subscribe)) => self.remember_subscriptions(pos, codes),
            (Kind::Unsubscribe, Some(Kind::Unsubscribe)) => self.forget_subscriptions(pos),
            _ => return Err(ReasonCode::ProtocolError),
        }
        if let Some(pos) = self.store.position_of(id) {
            self.remove_at(pos);
        }
        Ok(true)
    }

    /// Keeps each granted filter of the SUBSCRIBE at `pos` as a subscription to restore.
    fn remember_subscriptions(&mut self, mut pos: usize, codes: &ReasonCodes<'_>) {
        let v = self.cfg.version;
        // A filter subscribed again replaces the one kept before (its options may differ).
        pos = self.forget_kept(pos, |kept, request| {
            codes
                .iter()
                .enumerate()
                .any(|(n, c)| !c.is_error() && nth_filter(request, v, n) == Some(kept))
        });
        for (k, code) in codes.iter().enumerate() {
            if code.is_error() {
                continue;
            }
            let entry = NewEntry {
                token: 0,
                kind: Kind::Subscription,
                priority: 10,
                accepted_at: Instant::ZERO,
            };
            // Each granted filter becomes a one-filter SUBSCRIBE of its own, written from the
            // stored request straight into the store.
            let pushed = self.store.push_derived(pos, entry, |src, dst| {
                let Ok(Status::Complete((Packet::Subscribe(sub), _))) = decode(src, v, usize::MAX)
                else {
                    return Err(EncodeError::NoTopicFilters);
                };
                let one = sub
                    .filters
                    .iter()
                    .nth(k)
                    .ok_or(EncodeError::NoTopicFilters)?;
                let one = [one];
                Packet::Subscribe(Subscribe {
                    packet_id: PacketId::MAX,
                    properties: sub.properties,
                    filters: Filters::new(&one),
                })
                .encode(v, dst)
            });
            match pushed {
                Ok(i) => {
                    self.note_pushed(i);
                    self.update(i, |e| e.state = OutState::Active);
                    self.journal_new(i);
                }
                // No room: the subscription holds now but cannot be restored after a
                // session loss; say so rather than drop it silently.
                Err(_) => self.push_notice(Notice::SubscriptionNotKept),
            }
        }
    }

    /// Drops the kept subscriptions the UNSUBSCRIBE at `pos` names.
    fn forget_subscriptions(&mut self, pos: usize) {
        let v = self.cfg.version;
        self.forget_kept(pos, |kept, request| match decode(request, v, usize::MAX) {
            Ok(Status::Complete((Packet::Unsubscribe(u), _))) => {
                u.filters.iter().any(|f| f.as_str() == kept)
            }
            _ => false,
        });
    }

    /// Drops each kept subscription whose filter `named` picks, given the stored request at
    /// `pos`; returns where that request is afterwards.
    fn forget_kept(&mut self, mut pos: usize, named: impl Fn(&str, &[u8]) -> bool) -> usize {
        let v = self.cfg.version;
        // Going backwards, a removal never moves an index still to be looked at.
        for i in (0..self.store.len()).rev() {
            if self.store.get(i).map(|e| e.kind) != Some(Kind::Subscription) {
                continue;
            }
            let kept = nth_filter(self.store.bytes(i), v, 0);
            if kept.is_some_and(|k| named(k, self.store.bytes(pos))) {
                self.remove_at(i);
                if i < pos {
                    pos -= 1;
                }
            }
        }
        pos
    }

    /// Changes the entry at `i`, keeping the transmit bookkeeping in step.
    fn update(&mut self, i: usize, change: impl FnOnce(&mut crate::store::Entry)) {
        let Some(e) = self.store.get_mut(i) else {
            return;
        };
        let before = tally(e);
        let (id_before, state_before) = (e.packet_id, e.state);
        change(e);
        let after = tally(e);
        let id_after = e.packet_id;
        let send = needs_send(e);
        // Persistent state is the exchange state and the packet id; `resend` is not.
        let changed = e.key != 0 && (e.state != state_before || id_after != id_before);
        self.untally(before);
        self.add_tally(after);
        if id_before != id_after {
            self.hold_id(id_before, false);
            self.hold_id(id_after, true);
        }
        if send {
            self.scan_from = self.scan_from.min(i);
        }
        if changed {
            self.mark_dirty(i);
        }
    }

    /// Counts a just-stored entry in the transmit bookkeeping.
    fn note_pushed(&mut self, i: usize) {
        if let Some(e) = self.store.get(i) {
            let (t, id) = (tally(e), e.packet_id);
            self.add_tally(t);
            self.hold_id(id, true);
        }
    }

    /// Removes the entry at `i`, keeping the transmit bookkeeping in step.
    fn remove_at(&mut self, i: usize) -> Option<crate::store::Entry> {
        let e = self.store.remove(i)?;
        self.untally(tally(&e));
        self.hold_id(e.packet_id, false);
        if i < self.scan_from {
            self.scan_from -= 1;
        }
        if e.dirty {
            self.journal.dirty = self.journal.dirty.saturating_sub(1);
        }
        if i < self.journal.dirty_from && self.journal.dirty_from != usize::MAX {
            self.journal.dirty_from = self.journal.dirty_from.saturating_sub(1);
        }
        self.journal.delete(e.key);
        Some(e)
    }

    fn add_tally(&mut self, (quota, request): (bool, bool)) {
        self.quota_used = self.quota_used.saturating_add(usize::from(quota));
        self.requests_waiting = self.requests_waiting.saturating_add(usize::from(request));
    }

    fn untally(&mut self, (quota, request): (bool, bool)) {
        self.quota_used = self.quota_used.saturating_sub(usize::from(quota));
        self.requests_waiting = self.requests_waiting.saturating_sub(usize::from(request));
    }

    /// Recomputes the transmit bookkeeping after a reconnect reset the entries.
    fn recount(&mut self) {
        let (mut quota, mut requests) = (0, 0);
        for e in self.store.entries() {
            let (q, r) = tally(e);
            quota += usize::from(q);
            requests += usize::from(r);
        }
        self.quota_used = quota;
        self.requests_waiting = requests;
        self.scan_from = 0;
        #[cfg(feature = "alloc")]
        if let Some(bits) = &mut self.id_bits {
            bits.fill(0);
        }
        self.ids_held = 0;
        for i in 0..self.store.len() {
            let id = self.store.get(i).and_then(|e| e.packet_id);
            self.hold_id(id, true);
        }
    }

    /// Position of the stored packet with `id` in `state`; an unknown id is a violation.
    fn find(&self, id: PacketId, state: OutState) -> Result<usize, ReasonCode> {
        self.store
            .entries()
            .iter()
            .position(|e| e.packet_id == Some(id) && e.state == state)
            .ok_or(ReasonCode::ProtocolError)
    }

    fn allocate_id(&mut self) -> Result<PacketId, Error> {
        let store = &self.store;
        #[cfg(feature = "alloc")]
        if let Some(bits) = &self.id_bits {
            return self
                .ids
                .allocate(self.ids_held, |id| bit(bits, id))
                .ok_or(Error::PacketIdsExhausted);
        }
        self.ids
            .allocate(self.ids_held, |id| store.position_of(id).is_some())
            .ok_or(Error::PacketIdsExhausted)
    }

    /// Records that a stored entry holds (`true`) or gave up (`false`) packet id `id`.
    fn hold_id(&mut self, id: Option<PacketId>, held: bool) {
        if id.is_none() {
            return;
        }
        self.ids_held = if held {
            self.ids_held.saturating_add(1)
        } else {
            self.ids_held.saturating_sub(1)
        };
        #[cfg(feature = "alloc")]
        if let (Some(bits), Some(id)) = (&mut self.id_bits, id)
            && let Some(word) = bits.get_mut(usize::from(id.get() / 64))
        {
            let mask = 1u64 << (id.get() % 64);
            if held {
                *word |= mask;
            } else {
                *word &= !mask;
            }
        }
    }

    fn push(
        &mut self,
        now: Instant,
        kind: Kind,
        packet: &Packet<'_>,
        priority: u8,
        evict: u8,
    ) -> Result<Token, Error> {
        let len = packet.encoded_len(self.cfg.version)?;
        if len > self.store.capacity() {
            return Err(Error::TooLarge);
        }
        if self.store.fits(len).is_err() {
            self.make_room(len, evict)?;
        }
        let token = self.next_token;
        let entry = NewEntry {
            token,
            kind,
            priority,
            accepted_at: now,
        };
        let v = self.cfg.version;
        match self.store.push(entry, len, |dst| packet.encode(v, dst)) {
            Ok(i) => self.note_pushed(i),
            Err(PushError::Write(e)) => return Err(Error::Encode(e)),
            Err(PushError::Full(_)) => return Err(Error::QueueFull),
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        Ok(token)
    }

    /// Queues a SUBSCRIBE or UNSUBSCRIBE built for a fresh packet id.
    fn request<'p>(
        &mut self,
        now: Instant,
        kind: Kind,
        build: impl FnOnce(PacketId) -> Packet<'p>,
    ) -> Result<PacketId, Error> {
        if self.state == State::Closed {
            return Err(Error::Closed);
        }
        let id = self.allocate_id()?;
        self.push(now, kind, &build(id), 10, 10)?;
        let last = self.store.len().saturating_sub(1);
        self.update(last, |e| e.packet_id = Some(id));
        Ok(id)
    }

    /// Makes room for `len` bytes by dropping queued messages of priority up to `priority`,
    /// lowest priority and oldest first, but only if that can make enough room: otherwise
    /// nothing is dropped and the new message is refused.
    fn make_room(&mut self, len: usize, priority: u8) -> Result<(), Error> {
        if priority == 0 {
            return Err(Error::QueueFull);
        }
        let evictable = |e: &&crate::store::Entry| {
            e.state == OutState::Queued && e.kind == Kind::Publish && e.priority <= priority
        };
        let entries = self.store.entries();
        let (count, bytes) = entries
            .iter()
            .filter(evictable)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.len()));
        let free_slots = self.store.max_entries() - entries.len() + count;
        let free_bytes = self.store.capacity() - self.store.bytes_used() + bytes;
        if free_slots == 0 || free_bytes < len {
            return Err(Error::QueueFull);
        }
        while self.store.fits(len).is_err() {
            if self.notices.is_full() || !self.journal.can_delete(1) {
                // Every eviction is reported; with no room to say so, refuse instead.
                return Err(Error::QueueFull);
            }
            let victim = self
                .store
                .entries()
                .iter()
                .enumerate()
                .filter(|(_, e)| evictable(e))
                .min_by_key(|(i, e)| (e.priority, *i))
                .map(|(i, e)| (i, e.token));
            let Some((i, token)) = victim else {
                return Err(Error::QueueFull);
            };
            self.remove_at(i);
            self.push_notice(Notice::Evicted { token });
        }
        Ok(())
    }

    fn queue_control(&mut self, c: Control) {
        // handle_read keeps a free slot, so this only fails on misuse; a lost ack would be
        // resent by the server after reconnect, so failing here never loses a message.
        let _ = self.control.push_back(c);
    }

    /// Records a notice; callers check `notices.is_full()` first, so none is ever lost.
    fn push_notice(&mut self, n: Notice) {
        let _ = self.notices.push_back(n);
    }

    /// Queues a DISCONNECT with `rc` (MQTT 5 only: 3.x has no reason codes to send).
    fn close_with(&mut self, rc: ReasonCode) {
        self.control.clear();
        if self.cfg.version.is_v5() && matches!(self.state, State::Connected | State::Connecting) {
            self.queue_control(Control::Disconnect(rc));
        }
    }

    fn violation(&mut self, rc: ReasonCode) {
        self.close_with(rc);
        self.lose(ConnectionError::ProtocolViolation(rc));
    }

    fn lose(&mut self, e: ConnectionError) {
        if self.state != State::Closed {
            self.state = State::Disconnected;
        }
        // Nothing but our own DISCONNECT may follow the end of a connection: acks still queued
        // would answer a server that has gone (it resends those messages with the session).
        let closing = self
            .control
            .iter()
            .find(|c| matches!(c, Control::Disconnect(_)))
            .copied();
        self.control.clear();
        if let Some(c) = closing {
            self.queue_control(c);
        }
        self.awaiting_response = None;
        self.ping_queued = false;
        self.lost = Some(e);
    }
}

/// The journal of persistent state (see [`crate::journal`]).
impl<B: Backing, const RX: usize> Session<B, RX> {
    /// Turns the journal on: from now on every change of persistent state is reported by
    /// [`poll_record`](Session::poll_record), and transmissions wait for
    /// [`handle_durable`](Session::handle_durable). Call it after [`restore`](Session::restore)
    /// and before the first publish; without it the session keeps everything in memory only.
    pub fn enable_journal(&mut self) {
        self.journal.on = true;
        self.journal.next_key = self.journal.next_key.max(1);
        self.journal.dirty_from = usize::MAX;
    }

    /// Whether the journal is on.
    pub const fn journal_enabled(&self) -> bool {
        self.journal.on
    }

    /// Whether [`poll_record`](Session::poll_record) has records to give.
    pub fn records_pending(&self) -> bool {
        self.journal.on
            && (!self.journal.deleted.is_empty()
                || self.journal.dirty > 0
                || self.journal.rx_dirty > 0)
    }

    /// The sequence number of the last record reported (0: none yet).
    pub const fn last_record(&self) -> u64 {
        self.journal.lsn
    }

    /// The highest sequence number known to be durable.
    pub const fn durable(&self) -> u64 {
        self.journal.durable
    }

    /// Deletes that could not be held for reporting (only without `alloc`); their records
    /// outlive their items and are restored.
    pub const fn lost_deletes(&self) -> u32 {
        self.journal.lost_deletes
    }

    /// Every record up to `lsn` is durable: what waited for them may go out (drain
    /// `poll_transmit` again).
    pub fn handle_durable(&mut self, lsn: u64) {
        let lsn = lsn.min(self.journal.lsn);
        if lsn > self.journal.durable {
            self.journal.durable = lsn;
            // Entries passed over while their records were written are looked at again.
            self.scan_from = 0;
        }
    }

    /// Writes the next record into `buf`: `Ok(None)` when every change is reported. Records
    /// must reach the store in the order they come (their `lsn`).
    pub fn poll_record(&mut self, buf: &mut [u8]) -> Result<Option<Record>, Error> {
        if !self.journal.on {
            return Ok(None);
        }
        if let Some(key) = self.journal.deleted.pop_front() {
            let lsn = self.journal.next_lsn();
            return Ok(Some(Record {
                lsn,
                key,
                change: Change::Delete,
            }));
        }
        if self.journal.dirty > 0 {
            let mut i = self.journal.dirty_from.min(self.store.len());
            if i == self.store.len() {
                i = 0;
            }
            while let Some(e) = self.store.get(i).copied() {
                if !e.dirty {
                    i += 1;
                    continue;
                }
                let bytes = self.store.bytes(i);
                let n = OUT_HEADER + bytes.len();
                let dst = buf
                    .get_mut(..n)
                    .ok_or(Error::Encode(EncodeError::BufferTooSmall { needed: n }))?;
                let (head, rest) = dst.split_at_mut(OUT_HEADER);
                let [hi, lo] = e.packet_id.map_or(0, PacketId::get).to_be_bytes();
                head.copy_from_slice(&[
                    TAG_OUT,
                    kind_code(e.kind),
                    state_code(e.state),
                    e.priority,
                    hi,
                    lo,
                ]);
                rest.copy_from_slice(bytes);
                let lsn = self.journal.next_lsn();
                if let Some(e) = self.store.get_mut(i) {
                    e.dirty = false;
                    e.lsn = lsn;
                }
                self.journal.dirty = self.journal.dirty.saturating_sub(1);
                self.journal.dirty_from = if self.journal.dirty == 0 {
                    usize::MAX
                } else {
                    i + 1
                };
                return Ok(Some(Record {
                    lsn,
                    key: e.key,
                    change: Change::Put(n),
                }));
            }
            // The count ran ahead of the entries (cannot happen); start over.
            self.journal.dirty = self.store.entries().iter().filter(|e| e.dirty).count();
            self.journal.dirty_from = if self.journal.dirty == 0 {
                usize::MAX
            } else {
                0
            };
        }
        if self.journal.rx_dirty > 0 {
            let Some(pos) = self.rx.iter().position(|r| r.dirty) else {
                self.journal.rx_dirty = 0;
                return Ok(None);
            };
            // A message delivered for a manual ack carries a fourth byte: it may be handled.
            let handling = self
                .rx
                .get(pos)
                .is_some_and(|r| r.state != RxState::AwaitPubRel);
            let len = 3 + usize::from(handling);
            let dst = buf
                .get_mut(..len)
                .ok_or(Error::Encode(EncodeError::BufferTooSmall { needed: len }))?;
            let lsn = self.journal.next_lsn();
            let Some(r) = self.rx.get_mut(pos) else {
                return Ok(None);
            };
            let [hi, lo] = r.id.get().to_be_bytes();
            let record = [TAG_RX, hi, lo, RX_HANDLING];
            dst.copy_from_slice(record.get(..len).unwrap_or_default());
            r.dirty = false;
            r.lsn = lsn;
            self.journal.rx_dirty = self.journal.rx_dirty.saturating_sub(1);
            return Ok(Some(Record {
                lsn,
                key: r.key,
                change: Change::Put(len),
            }));
        }
        Ok(None)
    }

    /// Rebuilds one item from its record (as [`poll_record`](Session::poll_record) wrote it),
    /// before the journal is enabled and before connecting. Restore records in key order, so
    /// messages keep their order.
    ///
    /// A message that was sent (or may have been) is resent with its packet id and DUP if the
    /// server kept the session, and as a new message if it did not; a queued one is sent; a
    /// received QoS 2 id stays known, so the server's resend is not delivered again.
    pub fn restore(&mut self, key: u64, record: &[u8]) -> Result<(), RestoreError> {
        if self.journal.on {
            return Err(RestoreError::TooLate);
        }
        if key == 0 {
            return Err(RestoreError::Malformed);
        }
        match record.first().copied() {
            Some(TAG_OUT) => self.restore_out(key, record)?,
            Some(TAG_RX) => {
                let state = match record {
                    [_, _, _] => RxState::AwaitPubRel,
                    [_, _, _, RX_HANDLING] => RxState::Interrupted,
                    _ => return Err(RestoreError::Malformed),
                };
                let Some(&[_, hi, lo]) = record.first_chunk::<3>() else {
                    return Err(RestoreError::Malformed);
                };
                let id =
                    PacketId::new(u16::from_be_bytes([hi, lo])).ok_or(RestoreError::Malformed)?;
                if self.rx.iter().any(|r| r.id == id) {
                    return Err(RestoreError::Malformed);
                }
                let rx = Rx {
                    key,
                    ..Rx::new(id, state)
                };
                self.rx.push(rx).map_err(|_| RestoreError::Full)?;
            }
            _ => return Err(RestoreError::Malformed),
        }
        self.journal.next_key = self.journal.next_key.max(key.saturating_add(1));
        Ok(())
    }

    fn restore_out(&mut self, key: u64, record: &[u8]) -> Result<(), RestoreError> {
        let Some((&[_, kind, state, priority, hi, lo], packet)) =
            record.split_first_chunk::<OUT_HEADER>()
        else {
            return Err(RestoreError::Malformed);
        };
        let kind = match kind {
            0 => Kind::Publish,
            3 => Kind::Subscription,
            _ => return Err(RestoreError::Malformed),
        };
        let state = state_from_code(state).ok_or(RestoreError::Malformed)?;
        let id = PacketId::new(u16::from_be_bytes([hi, lo]));
        // The packet must be what the kind says, whole.
        let whole = match decode(packet, self.cfg.version, usize::MAX) {
            Ok(Status::Complete((Packet::Publish(p), used))) => {
                kind == Kind::Publish && used == packet.len() && p.qos != QoS::AtMostOnce
            }
            Ok(Status::Complete((Packet::Subscribe(_), used))) => {
                kind == Kind::Subscription && used == packet.len()
            }
            _ => false,
        };
        if !whole || !(1..=10).contains(&priority) {
            return Err(RestoreError::Malformed);
        }
        let state = match (kind, state, id) {
            (Kind::Subscription, _, _) => OutState::Active,
            // It took its id to be sent: it may have gone out.
            (_, OutState::Queued, Some(_)) => OutState::AwaitPubRec,
            (_, OutState::Queued, None) => OutState::Queued,
            (
                _,
                OutState::AwaitPubAck | OutState::AwaitPubRec | OutState::AwaitPubComp,
                Some(_),
            ) => state,
            _ => return Err(RestoreError::Malformed),
        };
        let id = if kind == Kind::Subscription { None } else { id };
        if id.is_some_and(|id| self.store.position_of(id).is_some()) {
            return Err(RestoreError::Malformed);
        }
        let entry = NewEntry {
            token: self.next_token,
            kind,
            priority,
            accepted_at: Instant::ZERO,
        };
        let i = self
            .store
            .push(entry, packet.len(), |dst| {
                dst.copy_from_slice(packet);
                Ok::<_, ()>(packet.len())
            })
            .map_err(|_| RestoreError::Full)?;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        if let Some(e) = self.store.get_mut(i) {
            e.key = key;
            e.packet_id = id;
            e.state = state;
        }
        self.note_pushed(i);
        Ok(())
    }

    /// Gives the just stored persistent entry at `i` a key and reports it.
    fn journal_new(&mut self, i: usize) {
        if !self.journal.on {
            return;
        }
        let key = self.journal.key();
        if let Some(e) = self.store.get_mut(i) {
            e.key = key;
        }
        self.mark_dirty(i);
    }

    /// Marks the journaled entry at `i` as changed: a record is due.
    fn mark_dirty(&mut self, i: usize) {
        if !self.journal.on {
            return;
        }
        let Some(e) = self.store.get_mut(i) else {
            return;
        };
        if e.key == 0 || e.dirty {
            return;
        }
        e.dirty = true;
        self.journal.dirty += 1;
        self.journal.dirty_from = self.journal.dirty_from.min(i);
    }

    /// The received message at `pos` changed state (delivered for a manual ack, or awaiting
    /// PUBREL): its record is (re)written.
    fn journal_rx(&mut self, pos: usize) {
        if !self.journal.on {
            return;
        }
        let Some(r) = self.rx.get_mut(pos) else {
            return;
        };
        // A record rewritten keeps its key.
        if r.key == 0 {
            r.key = self.journal.key();
        }
        if !r.dirty {
            r.dirty = true;
            self.journal.rx_dirty += 1;
        }
    }

    /// Forgets the received message at `pos`; returns the sequence number its delete will have.
    fn remove_rx(&mut self, pos: usize) -> Option<u64> {
        if pos >= self.rx.len() {
            return None;
        }
        let r = self.rx.swap_remove(pos);
        if r.dirty {
            self.journal.rx_dirty = self.journal.rx_dirty.saturating_sub(1);
        }
        self.journal.delete(r.key)
    }

    /// Forgets every received message (the server lost the session).
    fn clear_rx(&mut self) {
        for r in &self.rx {
            self.journal.delete(r.key);
        }
        self.rx.clear();
        self.journal.rx_dirty = 0;
    }

    /// Whether the record of received message `id` is not durable yet: its PUBREC waits for
    /// it, and so does the delivery of a QoS 2 message acknowledged by hand (the runtime holds
    /// it), so that a restart knows the message may have been handled.
    pub fn rx_record_pending(&self, id: PacketId) -> bool {
        self.journal.on
            && self
                .rx
                .iter()
                .any(|r| r.id == id && r.key != 0 && (r.dirty || r.lsn > self.journal.durable))
    }
}

/// The record code of an entry kind (only publishes and subscriptions are journaled).
const fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Publish => 0,
        Kind::Subscribe => 1,
        Kind::Unsubscribe => 2,
        Kind::Subscription => 3,
        Kind::Alias => 4,
    }
}

/// The record code of an exchange state.
const fn state_code(s: OutState) -> u8 {
    match s {
        OutState::Queued => 0,
        OutState::AwaitPubAck => 1,
        OutState::AwaitPubRec => 2,
        OutState::AwaitPubComp => 3,
        OutState::AwaitAck => 4,
        OutState::Active => 5,
    }
}

const fn state_from_code(c: u8) -> Option<OutState> {
    Some(match c {
        0 => OutState::Queued,
        1 => OutState::AwaitPubAck,
        2 => OutState::AwaitPubRec,
        3 => OutState::AwaitPubComp,
        4 => OutState::AwaitAck,
        5 => OutState::Active,
        _ => return None,
    })
}

/// Whether bit `id` is set.
#[cfg(feature = "alloc")]
fn bit(bits: &[u64; 1024], id: PacketId) -> bool {
    bits.get(usize::from(id.get() / 64))
        .is_some_and(|w| w & (1u64 << (id.get() % 64)) != 0)
}

/// Whether the entry must (again) go out on this connection.
fn needs_send(e: &crate::store::Entry) -> bool {
    e.state == OutState::Queued || e.resend
}

/// What an entry counts towards: the server's quota, and the requests waiting to be sent.
fn tally(e: &crate::store::Entry) -> (bool, bool) {
    (
        e.in_flight() && !e.resend,
        e.kind != Kind::Publish && needs_send(e),
    )
}

/// The `k`-th topic filter of an encoded SUBSCRIBE.
fn nth_filter(bytes: &[u8], v: ProtocolVersion, k: usize) -> Option<&str> {
    match decode(bytes, v, usize::MAX) {
        Ok(Status::Complete((Packet::Subscribe(s), _))) => {
            s.filters.iter().nth(k).map(|(f, _)| f.as_str())
        }
        _ => None,
    }
}

/// QoS and retain flag of a stored PUBLISH (QoS 0, no retain for other packets).
fn publish_flags(bytes: &[u8]) -> (QoS, bool) {
    match bytes.first() {
        Some(b) if b >> 4 == 3 => (
            QoS::from_u8((b >> 1) & 0b11).unwrap_or_default(),
            b & 1 != 0,
        ),
        _ => (QoS::AtMostOnce, false),
    }
}

/// Writes `id` into an encoded PUBLISH, SUBSCRIBE or UNSUBSCRIBE.
fn set_packet_id(packet: &mut [u8], kind: Kind, id: PacketId) {
    // The id follows the fixed header, and for PUBLISH the topic.
    let header = 1 + packet
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(1, |p| p + 1);
    let at = match kind {
        Kind::Publish => {
            let topic_len = packet
                .get(header..)
                .and_then(|b| b.first_chunk::<2>())
                .map_or(0, |b| usize::from(u16::from_be_bytes(*b)));
            header + 2 + topic_len
        }
        _ => header,
    };
    if let Some(dst) = packet.get_mut(at..at + 2) {
        dst.copy_from_slice(&id.get().to_be_bytes());
    }
}
