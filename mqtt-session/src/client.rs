//! The client state machine.

use core::fmt;
use core::time::Duration;

use mqtt_proto::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Filters, Packet, PacketId,
    Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode, ReasonCodes, Status,
    Subscribe, SubscriptionOptions, TopicFilter, Unsubscribe, Will, decode,
};

use crate::store::{Kind, NewEntry, OutState, PushError, Store, StoreFull};
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
}

/// Something the application should know, caused by a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
pub enum Notice {
    /// A queued message was dropped to make room for a more important one.
    Evicted {
        /// Token of the dropped message.
        token: Token,
    },
    /// A queued message could not be sent (it exceeds the server's maximum packet size).
    Dropped {
        /// Token of the dropped message.
        token: Token,
        /// Why.
        reason_code: ReasonCode,
    },
    /// The connection is lost; the runtime should close the socket and reconnect.
    ConnectionLost(ConnectionError),
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
    /// Acknowledgments are waiting: drain `poll_transmit` before reading more.
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
    /// PUBREC sent; a resend is a duplicate until PUBREL arrives.
    AwaitPubRel,
}

/// Limits the server announced in CONNACK.
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    receive_maximum: u16,
    max_packet_size: u32,
    keep_alive: u16,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            receive_maximum: u16::MAX,
            max_packet_size: u32::MAX,
            keep_alive: 0,
        }
    }
}

/// The MQTT client state machine.
///
/// `SLOTS` and `BYTES` bound the outgoing store (queued and in-flight publishes, pending
/// (un)subscribes); `RX` bounds the received QoS 2 (and manually acked) messages in progress.
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
pub struct Client<const SLOTS: usize, const BYTES: usize, const RX: usize> {
    cfg: Config,
    state: State,
    store: Store<SLOTS, BYTES>,
    ids: PacketIds,
    next_token: Token,
    rx: heapless::Vec<(PacketId, RxState), RX>,
    control: heapless::Deque<Control, 8>,
    notices: heapless::Deque<Notice, 8>,
    server: ServerLimits,
    last_sent: Instant,
    /// When the outstanding PINGREQ or CONNECT was sent.
    awaiting_response: Option<Instant>,
    ping_queued: bool,
}

impl<const SLOTS: usize, const BYTES: usize, const RX: usize> Client<SLOTS, BYTES, RX> {
    /// A disconnected client.
    pub fn new(cfg: Config) -> Self {
        Client {
            cfg,
            state: State::Disconnected,
            store: Store::new(),
            ids: PacketIds::new(),
            next_token: 1,
            rx: heapless::Vec::new(),
            control: heapless::Deque::new(),
            notices: heapless::Deque::new(),
            server: ServerLimits::default(),
            last_sent: Instant::ZERO,
            awaiting_response: None,
            ping_queued: false,
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
        self.store.len()
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
        let secs = if self.server.keep_alive != 0 {
            self.server.keep_alive
        } else {
            self.cfg.keep_alive
        };
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
                    .filter(|&n| n > 0 && n < u16::MAX)
                    .map(Property::ReceiveMaximum),
                (self.cfg.max_packet_size != u32::MAX)
                    .then_some(Property::MaximumPacketSize(self.cfg.max_packet_size)),
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
        if self.state == State::Closed {
            return Err(Error::Closed);
        }
        let packet = Packet::Publish(Publish {
            dup: false,
            // A placeholder id, overwritten when the message is sent.
            packet_id: (message.qos != QoS::AtMostOnce).then_some(PacketId::MAX),
            ..*message
        });
        self.push(now, Kind::Publish, &packet, priority.clamp(1, 10))
    }

    /// Queues a SUBSCRIBE; returns its packet id, which the `Subscribed` event carries.
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: &[(TopicFilter<'_>, SubscriptionOptions)],
        properties: &[Property<'_>],
    ) -> Result<PacketId, Error> {
        let id = self.allocate_id()?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::new(properties),
            filters: Filters::new(filters),
        });
        self.push_with_id(now, Kind::Subscribe, &packet, id)
    }

    /// Queues an UNSUBSCRIBE; returns its packet id, which the `Unsubscribed` event carries.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: &[TopicFilter<'_>],
        properties: &[Property<'_>],
    ) -> Result<PacketId, Error> {
        let id = self.allocate_id()?;
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Properties::new(properties),
            filters: mqtt_proto::Unsubscriptions::new(filters),
        });
        self.push_with_id(now, Kind::Unsubscribe, &packet, id)
    }

    /// Acknowledges a message received in manual-ack mode, with a reason code (MQTT 5).
    pub fn ack(&mut self, packet_id: PacketId, reason_code: ReasonCode) -> Result<(), Error> {
        let pos = self
            .rx
            .iter()
            .position(|(id, s)| *id == packet_id && matches!(s, RxState::AwaitUser(_)))
            .ok_or(Error::UnknownPacketId)?;
        let Some((_, RxState::AwaitUser(qos))) = self.rx.get(pos).copied() else {
            return Err(Error::UnknownPacketId);
        };
        let reason_code = if self.cfg.version.is_v5() {
            reason_code
        } else {
            ReasonCode::Success
        };
        if self.control.is_full() {
            return Err(Error::QueueFull);
        }
        match qos {
            QoS::ExactlyOnce if !reason_code.is_error() => {
                if let Some(e) = self.rx.get_mut(pos) {
                    e.1 = RxState::AwaitPubRel;
                }
                self.queue_control(Control::PubRec(packet_id, reason_code));
            }
            QoS::ExactlyOnce => {
                // A refused QoS 2 message ends its exchange at PUBREC.
                self.rx.swap_remove(pos);
                self.queue_control(Control::PubRec(packet_id, reason_code));
            }
            _ => {
                self.rx.swap_remove(pos);
                self.queue_control(Control::PubAck(packet_id, reason_code));
            }
        }
        Ok(())
    }

    /// Ends the session deliberately: queues DISCONNECT; the runtime must not reconnect.
    pub fn disconnect(&mut self, reason_code: ReasonCode) {
        if self.state == State::Connected {
            self.control.clear();
            self.queue_control(Control::Disconnect(reason_code));
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
    pub fn handle_read<'a>(&mut self, now: Instant, buf: &'a [u8]) -> Read<'a> {
        if !matches!(self.state, State::Connecting | State::Connected) {
            return Read::Closed;
        }
        // Each packet may owe one acknowledgment; keep room for it.
        if self.control.len() + 1 >= self.control.capacity() {
            return Read::TransmitFirst;
        }
        let max = usize::try_from(self.cfg.max_packet_size).unwrap_or(usize::MAX);
        match decode(buf, self.cfg.version, max) {
            Ok(Status::Incomplete(n)) => Read::NeedMore(n),
            Ok(Status::Complete((packet, used))) => match self.on_packet(now, packet) {
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
                let ping = (!ka.is_zero()).then(|| self.last_sent + ka);
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
        self.notices.pop_front()
    }

    /// Writes the next packet to send into `buf`; `Ok(None)` when there is nothing to send.
    ///
    /// If `buf` is too small the error says how much is needed and nothing is lost.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        if let Some(&c) = self.control.front() {
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
        let in_flight = self.in_flight();
        let max = usize::try_from(self.server.max_packet_size).unwrap_or(usize::MAX);
        let mut i = 0;
        while let Some(e) = self.store.get(i).copied() {
            let is_new = e.state == OutState::Queued;
            if !is_new && !e.resend {
                i += 1;
                continue;
            }
            let qos = publish_qos(self.store.bytes(i));
            if is_new && e.kind == Kind::Publish && qos != QoS::AtMostOnce && in_flight >= window {
                // Messages go out in order: nothing may overtake a message that waits.
                return Ok(None);
            }
            if e.state == OutState::AwaitPubComp {
                let Some(id) = e.packet_id else {
                    self.store.remove(i);
                    continue;
                };
                let n = Packet::PubRel(Ack::new(id)).encode(self.cfg.version, buf)?;
                if let Some(e) = self.store.get_mut(i) {
                    e.resend = false;
                }
                return Ok(Some(n));
            }
            let len = self.store.bytes(i).len();
            if len > max {
                self.store.remove(i);
                self.push_notice(Notice::Dropped {
                    token: e.token,
                    reason_code: ReasonCode::PacketTooLarge,
                });
                continue;
            }
            let dst = buf
                .get_mut(..len)
                .ok_or(Error::Encode(EncodeError::BufferTooSmall { needed: len }))?;
            let id = match (e.packet_id, e.kind, qos) {
                (Some(id), _, _) => Some(id),
                (None, Kind::Publish, QoS::AtMostOnce) => None,
                (None, _, _) => Some(self.allocate_id()?),
            };
            dst.copy_from_slice(self.store.bytes(i));
            if let Some(id) = id {
                set_packet_id(dst, e.kind, id);
            }
            if e.kind == Kind::Publish && !is_new {
                // A resend of a message the server may have seen.
                if let Some(b) = dst.first_mut() {
                    *b |= 0b1000;
                }
            }
            if e.kind == Kind::Publish && qos == QoS::AtMostOnce {
                self.store.remove(i);
                return Ok(Some(len));
            }
            if let Some(entry) = self.store.get_mut(i) {
                entry.packet_id = id;
                entry.resend = false;
                entry.state = match (e.kind, qos, entry.state) {
                    (Kind::Publish, QoS::AtLeastOnce, _) => OutState::AwaitPubAck,
                    (Kind::Publish, _, _) => OutState::AwaitPubRec,
                    _ => OutState::AwaitAck,
                };
            }
            return Ok(Some(len));
        }
        Ok(None)
    }

    fn on_packet<'a>(
        &mut self,
        now: Instant,
        packet: Packet<'a>,
    ) -> Result<Option<Event<'a>>, ReasonCode> {
        if self.state == State::Connecting {
            return match packet {
                Packet::ConnAck(ack) => self.on_connack(now, ack),
                _ => Err(ReasonCode::ProtocolError),
            };
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a).map(|()| None),
            Packet::PubRel(a) => self.on_pubrel(a).map(|()| None),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::SubAck(a) => {
                self.complete_ack(a.packet_id, Kind::Subscribe)?;
                Ok(Some(Event::Subscribed {
                    packet_id: a.packet_id,
                    reason_codes: a.reason_codes,
                }))
            }
            Packet::UnsubAck(a) => {
                self.complete_ack(a.packet_id, Kind::Unsubscribe)?;
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
        let mut limits = ServerLimits::default();
        for p in ack.properties.iter() {
            match p {
                Property::ReceiveMaximum(n) => limits.receive_maximum = n,
                Property::MaximumPacketSize(n) => limits.max_packet_size = n,
                Property::ServerKeepAlive(n) => limits.keep_alive = n,
                _ => {}
            }
        }
        self.server = limits;
        self.state = State::Connected;
        self.last_sent = now;
        let session_present = ack.session_present;
        if !session_present {
            // The server has no state for us: earlier messages go again as new ones.
            self.rx.clear();
        }
        let mut i = 0;
        while let Some(e) = self.store.get_mut(i) {
            if e.state != OutState::Queued {
                if session_present {
                    e.resend = true;
                } else {
                    e.state = OutState::Queued;
                    e.packet_id = None;
                    e.resend = false;
                }
            }
            i += 1;
        }
        Ok(Some(Event::Connected { session_present }))
    }

    fn on_publish<'a>(&mut self, p: Publish<'a>) -> Result<Option<Event<'a>>, ReasonCode> {
        if p.topic.is_empty() {
            // No incoming topic aliases were offered, so none may be used.
            return Err(ReasonCode::TopicAliasInvalid);
        }
        let message = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            packet_id: p.packet_id,
        };
        let Some(id) = p.packet_id else {
            return Ok(Some(Event::Message(message)));
        };
        let known = self.rx.iter().find(|(rid, _)| *rid == id).map(|e| e.1);
        match (p.qos, known) {
            (QoS::ExactlyOnce, Some(RxState::AwaitPubRel)) => {
                // A resend of a message already delivered: acknowledge it again, do not deliver.
                self.queue_control(Control::PubRec(id, ReasonCode::Success));
                Ok(None)
            }
            (_, Some(RxState::AwaitUser(_))) => Ok(None),
            (QoS::ExactlyOnce, None) | (QoS::AtLeastOnce, None) if self.cfg.manual_acks => {
                self.rx
                    .push((id, RxState::AwaitUser(p.qos)))
                    .map_err(|_| ReasonCode::ReceiveMaximumExceeded)?;
                Ok(Some(Event::Message(message)))
            }
            (QoS::ExactlyOnce, None) => {
                self.rx
                    .push((id, RxState::AwaitPubRel))
                    .map_err(|_| ReasonCode::ReceiveMaximumExceeded)?;
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
            .position(|(id, s)| *id == a.packet_id && *s == RxState::AwaitPubRel);
        let rc = match pos {
            Some(pos) => {
                self.rx.swap_remove(pos);
                ReasonCode::Success
            }
            None if self.cfg.version.is_v5() => ReasonCode::PacketIdentifierNotFound,
            None => ReasonCode::Success,
        };
        self.queue_control(Control::PubComp(a.packet_id, rc));
        Ok(())
    }

    fn on_puback<'a>(&mut self, a: Ack<'_>) -> Result<Option<Event<'a>>, ReasonCode> {
        let pos = self.find(a.packet_id, OutState::AwaitPubAck)?;
        let token = self.store.remove(pos).map_or(0, |e| e.token);
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
            let token = self.store.remove(pos).map_or(0, |e| e.token);
            self.push_notice(Notice::Dropped {
                token,
                reason_code: a.reason_code,
            });
            return Ok(());
        }
        if let Some(e) = self.store.get_mut(pos) {
            e.state = OutState::AwaitPubComp;
            e.resend = true;
        }
        Ok(())
    }

    fn on_pubcomp<'a>(&mut self, a: Ack<'_>) -> Result<Option<Event<'a>>, ReasonCode> {
        let pos = self.find(a.packet_id, OutState::AwaitPubComp)?;
        let token = self.store.remove(pos).map_or(0, |e| e.token);
        Ok(Some(Event::Published {
            token,
            reason_code: a.reason_code,
        }))
    }

    fn complete_ack(&mut self, id: PacketId, kind: Kind) -> Result<(), ReasonCode> {
        let pos = self.find(id, OutState::AwaitAck)?;
        if self.store.get(pos).map(|e| e.kind) != Some(kind) {
            return Err(ReasonCode::ProtocolError);
        }
        self.store.remove(pos);
        Ok(())
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
        let busy = store
            .entries()
            .iter()
            .filter(|e| e.packet_id.is_some())
            .count();
        self.ids
            .allocate(busy, |id| store.position_of(id).is_some())
            .ok_or(Error::PacketIdsExhausted)
    }

    fn push(
        &mut self,
        now: Instant,
        kind: Kind,
        packet: &Packet<'_>,
        priority: u8,
    ) -> Result<Token, Error> {
        let len = packet.encoded_len(self.cfg.version)?;
        if len > BYTES {
            return Err(Error::TooLarge);
        }
        while let Err(full) = self.store.fits(len) {
            self.evict_for(priority, full)?;
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
            Ok(_) => {}
            Err(PushError::Write(e)) => return Err(Error::Encode(e)),
            Err(PushError::Full(_)) => return Err(Error::QueueFull),
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        Ok(token)
    }

    fn push_with_id(
        &mut self,
        now: Instant,
        kind: Kind,
        packet: &Packet<'_>,
        id: PacketId,
    ) -> Result<PacketId, Error> {
        self.push(now, kind, packet, 10)?;
        let last = self.store.len().saturating_sub(1);
        if let Some(e) = self.store.get_mut(last) {
            e.packet_id = Some(id);
        }
        Ok(id)
    }

    /// Drops the lowest-priority, oldest queued message, unless the new one ranks below it.
    fn evict_for(&mut self, priority: u8, _full: StoreFull) -> Result<(), Error> {
        let victim = self
            .store
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state == OutState::Queued && e.kind == Kind::Publish)
            .min_by_key(|(i, e)| (e.priority, *i))
            .map(|(i, e)| (i, *e));
        match victim {
            Some((i, e)) if e.priority <= priority => {
                self.store.remove(i);
                self.push_notice(Notice::Evicted { token: e.token });
                Ok(())
            }
            _ => Err(Error::QueueFull),
        }
    }

    fn queue_control(&mut self, c: Control) {
        // handle_read keeps a free slot, so this only fails on misuse; a lost ack would be
        // resent by the server after reconnect, so failing here never loses a message.
        let _ = self.control.push_back(c);
    }

    fn push_notice(&mut self, n: Notice) {
        if self.notices.is_full() {
            self.notices.pop_front();
        }
        let _ = self.notices.push_back(n);
    }

    /// Queues a DISCONNECT with `rc` (MQTT 5 only: 3.x has no reason codes to send).
    fn close_with(&mut self, rc: ReasonCode) {
        self.control.clear();
        if self.cfg.version.is_v5() && self.state == State::Connected {
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
        self.awaiting_response = None;
        self.ping_queued = false;
        self.push_notice(Notice::ConnectionLost(e));
    }
}

/// QoS of a stored PUBLISH (0 for other packets).
fn publish_qos(bytes: &[u8]) -> QoS {
    match bytes.first() {
        Some(b) if b >> 4 == 3 => QoS::from_u8((b >> 1) & 0b11).unwrap_or_default(),
        _ => QoS::AtMostOnce,
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
