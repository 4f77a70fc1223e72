//! What an allocating client needs around the session: owned identity, completions, routing,
//! reconnect timing and statistics — still sans-IO.
//!
//! The async client of the `std` runtimes (`mqtt-client`) keeps one [`Engine`] behind a lock
//! shared by its client handles and its driver task. Handles call [`Engine::publish`],
//! [`Engine::subscribe`], [`Engine::route`] directly (no channel hop), passing a completion
//! value `C` (there, the key of a publish's slot, or a oneshot sender for a request); each
//! costs O(1) to store and to hand back. The driver task owns the socket and runs this loop:
//!
//! 1. Wait until [`Engine::reconnect_at`], open the transport, write what [`Engine::start`]
//!    gives (CONNECT). If the transport cannot be opened, call [`Engine::transport_closed`].
//! 2. Read into a `BytesMut` and call [`Engine::handle_read`], which consumes every whole
//!    packet and pushes [`Output`]s: deliver messages to [`Output::Message::routes`], resolve
//!    completions. Then [`Engine::transmit`] and write what it filled, until it fills nothing.
//! 3. Sleep until [`Engine::poll_timeout`], then [`Engine::handle_timeout`].
//! 4. When [`Engine::handle_read`] says [`ReadStatus::Closed`], or the transport fails, flush
//!    what [`Engine::transmit`] still has (a DISCONNECT), close the socket and call
//!    [`Engine::transport_closed`]; reconnect unless [`Engine::is_closed`].
//!
//! The lock is never held across an await, so handles (and handlers running inside the
//! driver's runtime) can always publish.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use mqtt_proto::{
    EncodeError, PacketId, Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode,
    SubscriptionOptions, TopicFilter, TopicName, Will,
};

use crate::{
    Backoff, Config, ConnectOptions, ConnectionError, Error, Event, HeapClient, Instant, Notice,
    Read, Router, State,
};

/// Received QoS 2 messages the session can track at once: eight times the Receive Maximum
/// the options announce by default, for brokers that overshoot it.
pub const RECEIVE_MAXIMUM: usize = 1024;

/// The session type an engine drives.
pub type EngineSession = HeapClient<RECEIVE_MAXIMUM>;

/// The last will, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the broker publishes the will to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
}

/// Identity and credentials sent with every CONNECT, owned.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Client identifier (empty: the server assigns one).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password; never printed by `Debug`.
    pub password: Option<Vec<u8>>,
    /// Last will.
    pub will: Option<LastWill>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will)
            .finish()
    }
}

/// MQTT 5 properties of a received message that applications use, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// User properties, in order.
    pub user: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Topic a request wants its response on.
    pub response_topic: Option<String>,
    /// Correlation data of a request or response.
    pub correlation_data: Option<Bytes>,
    /// Whether the payload is declared UTF-8.
    pub payload_is_utf8: bool,
    /// Message expiry interval in seconds.
    pub expiry: Option<u32>,
    /// Identifiers of the subscriptions that matched.
    pub subscription_ids: Vec<u32>,
}

impl MessageProperties {
    fn from_wire(props: &Properties<'_>) -> Self {
        let mut out = MessageProperties::default();
        for p in props {
            match p {
                Property::UserProperty(k, v) => out.user.push((k.to_string(), v.to_string())),
                Property::ContentType(s) => out.content_type = Some(s.to_string()),
                Property::ResponseTopic(s) => out.response_topic = Some(s.to_string()),
                Property::CorrelationData(d) => {
                    out.correlation_data = Some(Bytes::copy_from_slice(d));
                }
                Property::PayloadFormatIndicator(b) => out.payload_is_utf8 = b,
                Property::MessageExpiryInterval(s) => out.expiry = Some(s),
                Property::SubscriptionIdentifier(id) => out.subscription_ids.push(id),
                _ => {}
            }
        }
        out
    }
}

/// A received application message, owned; the payload shares the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// Whether it is a retained message.
    pub retain: bool,
    /// MQTT 5 properties, when the message has any.
    pub properties: Option<Box<MessageProperties>>,
    /// The id to acknowledge it with in manual-ack mode ([`Engine::ack`]; QoS 1 and 2).
    pub packet_id: Option<PacketId>,
    /// Set by the client that delivers it when the application acknowledges:
    /// [`Message::ack`].
    pub acker: Option<Acker>,
    /// This client may have handled it already: it was delivered and not acknowledged when
    /// the client last stopped (QoS 2 with a store, acknowledged after handlers or by hand).
    /// Every other QoS 2 message reaches the application once; a handler whose effect must
    /// happen once checks its own records for a redelivered one.
    pub redelivered: bool,
}

impl Message {
    /// Acknowledges the message (PUBACK / PUBREC, Success) where the application does
    /// (manual acks); nothing for QoS 0 or where the client acknowledges by itself.
    pub fn ack(&self) {
        self.ack_with(ReasonCode::Success);
    }

    /// [`Message::ack`] with a reason code (sent to MQTT 5 brokers; an error code refuses the
    /// message, which the broker then does not send again).
    pub fn ack_with(&self, reason_code: ReasonCode) {
        if let (Some(acker), Some(id)) = (&self.acker, self.packet_id) {
            (acker.0)(id, reason_code);
        }
    }
}

#[cfg(target_has_atomic = "ptr")]
type AckFn = alloc::sync::Arc<dyn Fn(PacketId, ReasonCode) + Send + Sync>;
#[cfg(not(target_has_atomic = "ptr"))]
type AckFn = alloc::rc::Rc<dyn Fn(PacketId, ReasonCode)>;

/// What acknowledges a received message on behalf of the client that delivered it.
#[derive(Clone)]
pub struct Acker(AckFn);

impl Acker {
    /// An acker that calls `f` with the packet id and reason code.
    #[cfg(target_has_atomic = "ptr")]
    pub fn new(f: impl Fn(PacketId, ReasonCode) + Send + Sync + 'static) -> Self {
        Acker(alloc::sync::Arc::new(f))
    }

    /// An acker that calls `f` with the packet id and reason code.
    #[cfg(not(target_has_atomic = "ptr"))]
    pub fn new(f: impl Fn(PacketId, ReasonCode) + 'static) -> Self {
        Acker(alloc::rc::Rc::new(f))
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acker")
    }
}

/// Not part of what a message is: any two compare equal.
impl PartialEq for Acker {
    fn eq(&self, _: &Acker) -> bool {
        true
    }
}

impl Eq for Acker {}

/// Why a publish (or request) will not complete successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The server refused it, or cannot take it (the reason code says why).
    Refused(ReasonCode),
    /// It was dropped from the full queue for a more important message.
    Evicted,
    /// The client was closed before it completed.
    Closed,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(rc) => write!(f, "refused by the server: {rc}"),
            Failure::Evicted => f.write_str("dropped from the full queue for a newer message"),
            Failure::Closed => f.write_str("the client was closed first"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Failure {}

/// Something the driver must act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<C> {
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
    },
    /// A message arrived; `routes` are the keys of every matching [`Engine::route`].
    Message {
        /// The message.
        message: Message,
        /// Matching route keys.
        routes: Vec<u64>,
    },
    /// A publish completed: `Ok` with the server's reason code (QoS 0: once written).
    Published {
        /// The value given to [`Engine::publish`].
        completion: C,
        /// How it ended.
        result: Result<ReasonCode, Failure>,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE completed: one reason code per filter.
    Acknowledged {
        /// The value given to [`Engine::subscribe`] / [`Engine::unsubscribe`].
        completion: C,
        /// SUBACK / UNSUBACK codes (UNSUBACK before MQTT 5: empty), or why it failed.
        result: Result<Vec<ReasonCode>, Failure>,
    },
    /// The connection ended; close the transport (after flushing [`Engine::transmit`]).
    ConnectionLost(ConnectionError),
    /// A granted subscription could not be kept for restoring after a session loss.
    SubscriptionNotKept,
}

/// What [`Engine::handle_read`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Every whole packet is consumed; read at least this many more bytes.
    NeedMore(usize),
    /// Call [`Engine::transmit`] (and write), then `handle_read` again.
    TransmitFirst,
    /// The connection is over: flush [`Engine::transmit`] and close the transport.
    Closed,
}

/// A snapshot of the client's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Whether the connection is up (CONNACK accepted).
    pub connected: bool,
    /// How long the current connection has been up (since its CONNACK), while connected.
    pub connected_for: Option<Duration>,
    /// The wait before the next reconnect attempt, while disconnected.
    pub backoff: Option<Duration>,
    /// Failed attempts since the last stable connection.
    pub reconnect_attempts: u32,
    /// Messages held (queued or in flight) by priority: index 0 is priority 1.
    pub queued_by_priority: [usize; 10],
    /// Age of the oldest held message.
    pub oldest_queued: Option<Duration>,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub in_flight: usize,
    /// Subscriptions granted and kept for restoring.
    pub subscriptions: usize,
    /// Messages completed (QoS 0 written, QoS 1/2 acknowledged).
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Messages that will not be delivered (refused, evicted, closed).
    pub dropped: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Queued messages dropped for more important ones (also counted in `dropped`).
    pub evicted: u64,
    /// Messages and received QoS 2 ids rebuilt from the store at start.
    pub restored: u64,
    /// What the store could not give back at start: unreadable files and records, set aside.
    pub set_aside: u64,
    /// Store commits (each one sync in `Sync` mode).
    pub store_commits: u64,
    /// Store writes that failed (the client then goes on in memory).
    pub store_failures: u64,
    /// How long the store's last commit (with its sync) took; `None` without a store.
    pub store_latency: Option<Duration>,
}

/// A change for the store, from [`Engine::take_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Write the record with this key.
    Put(u64, Vec<u8>),
    /// Remove the record with this key.
    Delete(u64),
}

/// Where the engine's connection stands (apart from the session's own state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Waiting to open the transport at this time.
    Waiting(Instant),
    /// The transport is open (CONNECT sent, or connected).
    Open,
}

/// A session plus everything a `std` runtime keeps around it; see the [module docs](self).
pub struct Engine<C> {
    session: EngineSession,
    identity: Identity,
    backoff: Backoff,
    link: Link,
    wait: Option<Duration>,
    router: Router<u64>,
    next_route: u64,
    publishes: ByToken<C>,
    requests: BTreeMap<u16, C>,
    /// Acknowledgments the application gave (manual-ack mode), fed to the session as it
    /// has room for them.
    acks: VecDeque<(PacketId, ReasonCode)>,
    /// Messages held until their record is durable (a QoS 2 message acknowledged by the
    /// application is recorded first, so a restart knows it may have been handled), with
    /// every message after them, in order.
    held: VecDeque<Output<C>>,
    accepting: bool,
    ever_connected: bool,
    connected_at: Option<Instant>,
    stats: Stats,
}

impl<C> Engine<C> {
    /// An engine that will connect at `now`; its queue holds `queue_packets` packets in
    /// `queue_bytes` bytes.
    pub fn new(
        cfg: Config,
        identity: Identity,
        backoff: Backoff,
        queue_packets: usize,
        queue_bytes: usize,
        now: Instant,
    ) -> Self {
        Engine {
            session: EngineSession::with_capacity(cfg, queue_packets, queue_bytes),
            identity,
            backoff,
            link: Link::Waiting(now),
            wait: None,
            router: Router::new(),
            next_route: 1,
            publishes: ByToken::new(),
            requests: BTreeMap::new(),
            acks: VecDeque::new(),
            held: VecDeque::new(),
            accepting: true,
            ever_connected: false,
            connected_at: None,
            stats: Stats::default(),
        }
    }

    /// The session.
    pub fn session(&self) -> &EngineSession {
        &self.session
    }

    /// Rebuilds one message or received id from its store record, before
    /// [`Engine::enable_journal`]; see [`crate::Session::restore`].
    pub fn restore(&mut self, key: u64, record: &[u8]) -> Result<(), crate::journal::RestoreError> {
        self.session.restore(key, record)?;
        self.stats.restored += 1;
        Ok(())
    }

    /// Turns the session's journal on: changes of persistent state come out of
    /// [`Engine::take_records`], and transmissions wait for [`Engine::handle_durable`].
    pub fn enable_journal(&mut self) {
        self.session.enable_journal();
    }

    /// Moves the records due into `ops` (in the order the store must apply them); returns
    /// the sequence number of the last, which [`Engine::handle_durable`] takes once they are
    /// durable, or `None` when there was none.
    pub fn take_records(&mut self, ops: &mut Vec<StoreOp>) -> Option<u64> {
        let mut buf = Vec::new();
        let mut last = None;
        loop {
            match self.session.poll_record(&mut buf) {
                Ok(Some(r)) => {
                    ops.push(match r.change {
                        crate::journal::Change::Put(n) => {
                            StoreOp::Put(r.key, buf.get(..n).unwrap_or_default().to_vec())
                        }
                        crate::journal::Change::Delete => StoreOp::Delete(r.key),
                    });
                    last = Some(r.lsn);
                }
                Ok(None) => return last,
                Err(Error::Encode(EncodeError::BufferTooSmall { needed })) => {
                    buf.resize(needed, 0);
                }
                // Unreachable: the buffer is the only reason poll_record fails.
                Err(_) => return last,
            }
        }
    }

    /// Records up to `lsn` are durable: what waited for them may be transmitted.
    pub fn handle_durable(&mut self, lsn: u64) {
        self.session.handle_durable(lsn);
    }

    /// Counts store work the runtime did (it owns the store).
    pub fn count_store(&mut self, set_aside: u64, commits: u64, failures: u64) {
        self.stats.set_aside += set_aside;
        self.stats.store_commits += commits;
        self.stats.store_failures += failures;
    }

    /// The protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.session.config().version
    }

    /// When to open the transport next; `None` while it is open or after [`Engine::disconnect`].
    pub fn reconnect_at(&self) -> Option<Instant> {
        match self.link {
            Link::Waiting(at) if !self.is_closed() => Some(at),
            _ => None,
        }
    }

    /// Whether the client was closed deliberately: do not reconnect.
    pub fn is_closed(&self) -> bool {
        self.session.state() == State::Closed
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.session.state() == State::Connected
    }

    /// The transport is open: writes CONNECT into `buf` (replacing its contents).
    pub fn start(&mut self, now: Instant, buf: &mut Vec<u8>) -> Result<(), Error> {
        let id = &self.identity;
        let will = match &id.will {
            Some(w) => Some(Will {
                topic: TopicName::new(&w.topic)
                    .map_err(|e| Error::Encode(EncodeError::InvalidTopicName(e)))?,
                payload: &w.payload,
                qos: w.qos,
                retain: w.retain,
                properties: Properties::new(&[]),
            }),
            None => None,
        };
        let opts = ConnectOptions {
            client_id: &id.client_id,
            username: id.username.as_deref(),
            password: id.password.as_deref(),
            will,
            properties: &[],
        };
        buf.clear();
        buf.resize(512, 0);
        let n = loop {
            match self.session.connect(now, &opts, buf) {
                Ok(n) => break n,
                Err(Error::Encode(EncodeError::BufferTooSmall { needed }))
                    if needed > buf.len() =>
                {
                    buf.resize(needed, 0);
                }
                Err(e) => return Err(e),
            }
        };
        buf.truncate(n);
        self.link = Link::Open;
        self.wait = None;
        Ok(())
    }

    /// The transport closed, or could not be opened: schedules the next attempt (unless
    /// closed) and returns the wait before it.
    pub fn transport_closed(&mut self, now: Instant, out: &mut Vec<Output<C>>) -> Duration {
        self.session.handle_disconnect(now);
        self.drain_notices(out);
        if self.is_closed() {
            self.fail_all(out);
            return Duration::ZERO;
        }
        let delay = self.backoff.next_delay(now);
        self.link = Link::Waiting(now + delay);
        self.wait = Some(delay);
        delay
    }

    /// Consumes every whole packet at the front of `rx`, pushing what the driver must act on.
    pub fn handle_read(
        &mut self,
        now: Instant,
        rx: &mut BytesMut,
        out: &mut Vec<Output<C>>,
    ) -> ReadStatus {
        let status = loop {
            let base = rx.as_ptr() as usize;
            let (used, event) = match self.session.handle_read(now, rx) {
                Read::NeedMore(n) => break ReadStatus::NeedMore(n),
                Read::TransmitFirst => break ReadStatus::TransmitFirst,
                Read::Closed => break ReadStatus::Closed,
                Read::Packet { used, event } => (used, event.map(|e| Owned::of(e, base))),
            };
            match event {
                Some(Owned::Message(message, at, len)) => {
                    let frame = rx.split_to(used).freeze();
                    let payload = match at.checked_add(len) {
                        Some(end) if end <= frame.len() => frame.slice(at..end),
                        // Unreachable: the payload is a slice of this frame.
                        _ => Bytes::new(),
                    };
                    let message = Message { payload, ..message };
                    self.stats.received += 1;
                    let mut routes = self.router.matches(&message.topic);
                    if let Some(p) = &message.properties
                        && !p.subscription_ids.is_empty()
                    {
                        // Each copy goes to the routes whose subscriptions it came through.
                        routes.retain(|k| p.subscription_ids.iter().any(|&id| u64::from(id) == *k));
                    }
                    // Without identifiers (MQTT 3.x, a plain subscribe, or a broker that lost
                    // them in a restart) every matching route gets it: better twice than never.
                    if self.waits_for_record(&message) || !self.held.is_empty() {
                        self.held.push_back(Output::Message { message, routes });
                    } else {
                        out.push(Output::Message { message, routes });
                    }
                }
                Some(event) => {
                    rx.advance(used);
                    self.on_event(now, event, out);
                }
                None => rx.advance(used),
            }
        };
        self.drain_notices(out);
        status
    }

    fn on_event(&mut self, now: Instant, event: Owned, out: &mut Vec<Output<C>>) {
        match event {
            Owned::Connected(session_present) => {
                self.backoff.connected(now);
                if self.ever_connected {
                    self.stats.reconnects += 1;
                }
                self.ever_connected = true;
                self.connected_at = Some(now);
                out.push(Output::Connected { session_present });
            }
            Owned::Published(token, rc) => {
                let result = if rc.is_error() {
                    Err(Failure::Refused(rc))
                } else {
                    Ok(rc)
                };
                self.complete_publish(token, result, out);
            }
            Owned::Acked(id, codes) => {
                if let Some(completion) = self.requests.remove(&id.get()) {
                    out.push(Output::Acknowledged {
                        completion,
                        result: Ok(codes),
                    });
                }
            }
            Owned::Message(..) | Owned::Other => {}
        }
    }

    fn complete_publish(
        &mut self,
        token: u32,
        result: Result<ReasonCode, Failure>,
        out: &mut Vec<Output<C>>,
    ) {
        match result {
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.dropped += 1,
        }
        if let Some(completion) = self.publishes.remove(token) {
            out.push(Output::Published { completion, result });
        }
    }

    /// Whether `message` may not reach the application yet: its record is not durable.
    fn waits_for_record(&self, message: &Message) -> bool {
        message
            .packet_id
            .is_some_and(|id| self.session.rx_record_pending(id))
    }

    fn drain_notices(&mut self, out: &mut Vec<Output<C>>) {
        while let Some(Output::Message { message, .. }) = self.held.front() {
            if self.waits_for_record(message) {
                break;
            }
            out.extend(self.held.pop_front());
        }
        while let Some(n) = self.session.poll_notice() {
            match n {
                Notice::Sent { token } => {
                    self.complete_publish(token, Ok(ReasonCode::Success), out);
                }
                Notice::Dropped { token, reason_code } => {
                    self.complete_publish(token, Err(Failure::Refused(reason_code)), out);
                }
                Notice::Evicted { token } => {
                    self.stats.evicted += 1;
                    self.complete_publish(token, Err(Failure::Evicted), out);
                }
                Notice::ConnectionLost(e) => out.push(Output::ConnectionLost(e)),
                Notice::SubscriptionNotKept => out.push(Output::SubscriptionNotKept),
            }
        }
    }

    /// Fails every pending completion (after [`Engine::disconnect`]).
    fn fail_all(&mut self, out: &mut Vec<Output<C>>) {
        for completion in core::mem::replace(&mut self.publishes, ByToken::new()).into_values() {
            self.stats.dropped += 1;
            out.push(Output::Published {
                completion,
                result: Err(Failure::Closed),
            });
        }
        for (_, completion) in core::mem::take(&mut self.requests) {
            out.push(Output::Acknowledged {
                completion,
                result: Err(Failure::Closed),
            });
        }
    }

    /// Writes the packets due into `buf` from its start, growing it for a packet larger than
    /// it; returns how many bytes to send (0: nothing).
    pub fn transmit(&mut self, now: Instant, buf: &mut Vec<u8>, out: &mut Vec<Output<C>>) -> usize {
        self.transmit_after(now, buf, 0, out)
    }

    /// [`Engine::transmit`] after the first `from` bytes of `buf` (encoded earlier and not
    /// written yet, so that one write carries both); returns where the bytes to send end.
    pub fn transmit_after(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        from: usize,
        out: &mut Vec<Output<C>>,
    ) -> usize {
        if buf.len() < from + 1024 {
            buf.resize(from + 1024, 0);
        }
        let mut filled = from;
        while let Some(dst) = buf.get_mut(filled..) {
            self.feed_acks();
            match self.session.poll_transmit(now, dst) {
                Ok(Some(n)) => filled += n,
                Ok(None) => break,
                Err(Error::Encode(EncodeError::BufferTooSmall { needed })) if filled == from => {
                    buf.resize(from + needed, 0);
                }
                // Send what is written; the next call starts with the larger packet.
                Err(_) => break,
            }
        }
        self.drain_notices(out);
        filled
    }

    /// Acknowledges a message received in manual-ack mode (sent with the next
    /// [`Engine::transmit`]); the reason code is sent to MQTT 5 servers only.
    pub fn ack(&mut self, packet_id: PacketId, reason_code: ReasonCode) {
        self.acks.push_back((packet_id, reason_code));
    }

    fn feed_acks(&mut self) {
        while let Some(&(id, rc)) = self.acks.front() {
            if self.session.ack(id, rc) == Err(Error::WouldBlock) {
                break;
            }
            // Done, or unknown: the server lost the session, and resends nothing.
            self.acks.pop_front();
        }
    }

    /// The next moment [`Engine::handle_timeout`] has work to do (including reconnecting).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.reconnect_at() {
            Some(at) => Some(at),
            None => self.session.poll_timeout(),
        }
    }

    /// Does what time demands (pings, response deadlines).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output<C>>) {
        self.session.handle_timeout(now);
        self.drain_notices(out);
    }

    /// Queues a publish; `completion` comes back in [`Output::Published`]. A full queue
    /// evicts only less important messages (see [`crate::Session::try_publish`]).
    pub fn publish(
        &mut self,
        now: Instant,
        message: &Publish<'_>,
        priority: u8,
        completion: C,
    ) -> Result<(), (Error, C)> {
        if !self.accepting {
            return Err((Error::Closed, completion));
        }
        match self.session.try_publish(now, message, priority) {
            Ok(token) => {
                self.publishes.insert(token, completion);
                Ok(())
            }
            Err(e) => Err((e, completion)),
        }
    }

    /// Queues a SUBSCRIBE; `completion` comes back in [`Output::Acknowledged`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: &[(TopicFilter<'_>, SubscriptionOptions)],
        completion: Option<C>,
    ) -> Result<PacketId, Error> {
        if !self.accepting {
            return Err(Error::Closed);
        }
        let id = self.session.subscribe(now, filters, &[])?;
        if let Some(c) = completion {
            self.requests.insert(id.get(), c);
        }
        Ok(id)
    }

    /// Queues an UNSUBSCRIBE; `completion` comes back in [`Output::Acknowledged`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: &[TopicFilter<'_>],
        completion: Option<C>,
    ) -> Result<PacketId, Error> {
        if !self.accepting {
            return Err(Error::Closed);
        }
        let id = self.session.unsubscribe(now, filters, &[])?;
        if let Some(c) = completion {
            self.requests.insert(id.get(), c);
        }
        Ok(id)
    }

    /// Routes messages matching `filter` to a new key (returned) and subscribes to it.
    pub fn route(
        &mut self,
        now: Instant,
        filter: TopicFilter<'_>,
        options: SubscriptionOptions,
    ) -> Result<u64, Error> {
        if !self.accepting {
            return Err(Error::Closed);
        }
        let key = self.next_route;
        // MQTT 5: the route's key is its subscription identifier, so a message the server
        // sends once per overlapping subscription reaches each handler once.
        let id = u32::try_from(key).unwrap_or(0);
        let props = [Property::SubscriptionIdentifier(id)];
        let props: &[Property<'_>] = if self.version().is_v5() && id != 0 && id < (1 << 28) {
            &props
        } else {
            &[]
        };
        self.session.subscribe(now, &[(filter, options)], props)?;
        self.next_route += 1;
        self.router.insert(filter, key);
        Ok(key)
    }

    /// Stops routing to `key` (the subscription stays).
    pub fn unroute(&mut self, key: u64) -> bool {
        self.router.remove_key(&key) > 0
    }

    /// Stops taking new publishes and requests (graceful shutdown).
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Whether every accepted message and request has completed.
    pub fn is_drained(&self) -> bool {
        // `pending` also counts messages restored from a store, which have no completion.
        self.publishes.is_empty()
            && self.requests.is_empty()
            && self.session.in_flight() == 0
            && self.session.pending() == 0
    }

    /// Ends the session: queues DISCONNECT and never reconnects. Flush [`Engine::transmit`],
    /// then close the transport and call [`Engine::transport_closed`].
    pub fn disconnect(&mut self, out: &mut Vec<Output<C>>) {
        self.accepting = false;
        self.session.disconnect(ReasonCode::Success);
        if self.link != Link::Open {
            self.fail_all(out);
        }
    }

    /// A snapshot of the state and counters.
    pub fn stats(&self, now: Instant) -> Stats {
        let mut s = self.stats.clone();
        s.connected = self.is_connected();
        s.connected_for = self
            .connected_at
            .filter(|_| s.connected)
            .map(|at| now.saturating_since(at));
        s.backoff = self.reconnect_at().and(self.wait);
        s.reconnect_attempts = self.backoff.attempts();
        s.in_flight = self.session.in_flight();
        s.subscriptions = self.session.subscriptions();
        let mut oldest: Option<Instant> = None;
        for (priority, at) in self.session.held() {
            let i = usize::from(priority.clamp(1, 10)) - 1;
            if let Some(n) = s.queued_by_priority.get_mut(i) {
                *n += 1;
            }
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        s.oldest_queued = oldest.map(|t| now.saturating_since(t));
        s
    }
}

/// Publish completions by session token. Tokens are handed out in increasing order and
/// mostly finish in order, so a ring starting at the oldest unfinished token costs O(1) per
/// insert and per removal (a `BTreeMap` costs a search and rebalancing for each).
struct ByToken<C> {
    /// The token of the ring's front.
    first: u32,
    /// `None`: finished, or a token never inserted (a wrap skips 0).
    ring: VecDeque<Option<C>>,
    /// Tokens too far from the ring to fit it (not produced by the session; kept for safety).
    outliers: BTreeMap<u32, C>,
}

/// How many never-inserted tokens the ring bridges before a token goes to the outliers.
const MAX_GAP: usize = 64;

impl<C> ByToken<C> {
    fn new() -> Self {
        ByToken {
            first: 0,
            ring: VecDeque::new(),
            outliers: BTreeMap::new(),
        }
    }

    fn insert(&mut self, token: u32, completion: C) {
        if self.ring.is_empty() {
            self.first = token;
        }
        let at = token.wrapping_sub(self.first) as usize;
        if at < self.ring.len() || at > self.ring.len() + MAX_GAP {
            self.outliers.insert(token, completion);
            return;
        }
        while self.ring.len() < at {
            self.ring.push_back(None);
        }
        self.ring.push_back(Some(completion));
    }

    fn remove(&mut self, token: u32) -> Option<C> {
        let at = token.wrapping_sub(self.first) as usize;
        let found = self.ring.get_mut(at).and_then(Option::take);
        if found.is_none() {
            return self.outliers.remove(&token);
        }
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.first = self.first.wrapping_add(1);
        }
        found
    }

    fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.outliers.is_empty()
    }

    /// Every completion, oldest token first.
    fn into_values(self) -> impl Iterator<Item = C> {
        self.ring
            .into_iter()
            .flatten()
            .chain(self.outliers.into_values())
    }
}

/// An event copied out of the session's borrow.
enum Owned {
    Connected(bool),
    /// The message (payload left empty) and its payload's offset and length in the frame.
    Message(Message, usize, usize),
    Published(u32, ReasonCode),
    Acked(PacketId, Vec<ReasonCode>),
    Other,
}

impl Owned {
    fn of(event: Event<'_>, base: usize) -> Owned {
        match event {
            Event::Connected { session_present } => Owned::Connected(session_present),
            Event::Message(m) => {
                let message = Message {
                    topic: m.topic.to_string(),
                    payload: Bytes::new(),
                    qos: m.qos,
                    retain: m.retain,
                    properties: (m.properties.iter().next().is_some())
                        .then(|| Box::new(MessageProperties::from_wire(&m.properties))),
                    packet_id: m.packet_id,
                    acker: None,
                    redelivered: m.redelivered,
                };
                // The payload is a slice of the read buffer: share it instead of copying.
                let at = (m.payload.as_ptr() as usize).wrapping_sub(base);
                Owned::Message(message, at, m.payload.len())
            }
            Event::Published { token, reason_code } => Owned::Published(token, reason_code),
            Event::Subscribed {
                packet_id,
                reason_codes,
            }
            | Event::Unsubscribed {
                packet_id,
                reason_codes,
            } => Owned::Acked(packet_id, reason_codes.iter().collect()),
            _ => Owned::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_token_removes_in_any_order_and_shrinks_from_the_front() {
        let mut t = ByToken::new();
        for token in 1..=5u32 {
            t.insert(token, token * 10);
        }
        assert_eq!(t.remove(3), Some(30));
        assert_eq!(t.remove(3), None);
        assert_eq!(t.remove(1), Some(10));
        assert_eq!((t.first, t.ring.len()), (2, 4));
        assert_eq!(t.remove(2), Some(20));
        // 3 was already gone: the front moves past it.
        assert_eq!((t.first, t.ring.len()), (4, 2));
        assert_eq!(t.into_values().collect::<Vec<_>>(), [40, 50]);
    }

    #[test]
    fn by_token_bridges_the_wrap_and_keeps_outliers() {
        let mut t = ByToken::new();
        t.insert(u32::MAX, 1);
        // The session skips token 0 when it wraps.
        t.insert(1, 2);
        assert_eq!(t.ring.len(), 3);
        // Far from the ring, or older than its front: kept aside, still found.
        t.insert(1_000_000, 3);
        t.insert(u32::MAX - 5, 4);
        assert_eq!(t.outliers.len(), 2);
        assert_eq!(t.remove(1), Some(2));
        assert_eq!(t.remove(u32::MAX), Some(1));
        assert!(t.ring.is_empty());
        assert!(!t.is_empty());
        assert_eq!(t.remove(1_000_000), Some(3));
        assert_eq!(t.remove(u32::MAX - 5), Some(4));
        assert!(t.is_empty());
    }
}
