//! The sans-IO MQTT 3.1 / 3.1.1 / 5.0 broker core.
//!
//! Every MQTT decision of the server side lives here: what a CONNECT may contain, who gets a
//! publish, what is retained, when a will fires, what is queued for an offline session and what
//! is dropped at a limit. It does no I/O and reads no clock: a runtime feeds it bytes and the
//! time, and pulls out bytes, events, persistence records and the next deadline.
//!
//! # Driving it
//! 1. For each accepted socket call [`Broker::handle_open`]; it names the connection.
//! 2. Feed received bytes to [`Broker::handle_read`]. It consumes whole packets and returns how
//!    many bytes it used; keep the rest for the next read. If it used less than a whole packet
//!    it is waiting for bytes; if the connection owes many packets it stops early until they
//!    are written (so a client that does not read cannot make it buffer without bound).
//! 3. Drain [`Broker::poll_wake`]: each connection it names has packets to write, or may be
//!    read from again (a publisher held by back-pressure or by its rate): feed it the bytes
//!    it left, and drain [`Broker::poll_transmit`] for it until `None`, writing each packet
//!    (what goes out may wake a held publisher: drain `poll_wake` again after).
//! 4. Drain [`Broker::poll_event`]: answer [`Event::Ask`] with [`Broker::handle_auth_answer`]
//!    (now or later, from another task); on [`Event::Close`] flush the connection, close the
//!    socket and call [`Broker::handle_close`].
//! 5. Drain [`Broker::poll_record`] into the store; when a batch is durable, call
//!    [`Broker::handle_durable`] (this releases held acknowledgments when
//!    [`Config::hold_acks_until_durable`] is set).
//! 6. Sleep until [`Broker::poll_timeout`], then call [`Broker::handle_timeout`] (harmless if
//!    early). A closed socket is [`Broker::handle_close`].
//!
//! Every `poll_*` is drained until it returns `None`.
//!
//! ```
//! use mqtt_proto::{Connect, Packet, ProtocolVersion, Status, decode};
//! use mqtt_session::broker::{Broker, Config};
//! use mqtt_session::Instant;
//!
//! let mut broker = Broker::new(Config::default());
//! let now = Instant::ZERO;
//! let conn = broker.handle_open(now);
//! let mut buf = [0u8; 256];
//! let n = Packet::Connect(Connect::new(ProtocolVersion::V311, "sensor-7", 30))
//!     .encode(ProtocolVersion::V311, &mut buf)?;
//! assert_eq!(broker.handle_read(conn, now, &buf[..n])?, n);
//! assert_eq!(broker.poll_wake(), Some(conn));
//! let n = broker.poll_transmit(conn, now, &mut buf)?.expect("CONNACK");
//! let Status::Complete((Packet::ConnAck(ack), _)) = decode(&buf[..n], ProtocolVersion::V311, n)?
//! else { unreachable!() };
//! assert!(!ack.session_present);
//! // The keep-alive is enforced at 1.5 times 30 s.
//! assert_eq!(broker.poll_timeout(), Some(Instant::from_millis(45_000)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # State, and how a runtime uses several cores
//! The state splits in two:
//! - **Per connection** (one `Conn` per [`ConnId`], never read by another connection): the
//!   input decoder's state, the CONNECT handshake and pending authentication, keep-alive and
//!   connect deadlines, the client's topic aliases, its Receive Maximum and Maximum Packet Size,
//!   the acknowledgments and control packets owed to it (and those held until durable), and
//!   the order of redelivery after a resume.
//! - **Shared**: sessions by client id (subscriptions, queued and in-flight messages with their
//!   packet ids, inbound QoS 2 ids, pending wills, expiry), the subscription index (a
//!   [`Router`] trie whose keys are (session slot, subscription slot) pairs, so
//!   a match is a few array lookups away from its options), the retained index (a trie walked
//!   by the filter, never scanned whole), share-group cursors, the broker-wide byte counter
//!   and the statistics.
//!
//! **What exists today** is [`Broker`]: one value that owns both halves and is driven with
//! connection ids. It is `Send` (messages are `Arc`s, the policy is `Authorize + Send`), so a
//! runtime on N threads drives it like this:
//! - Each connection task owns its socket, TLS and read buffer. It cuts whole packets out of
//!   its buffer itself (with [`mqtt_proto::frame`], outside any lock), then takes the broker's
//!   lock for one [`Broker::handle_read`] call with those bytes. Nothing slow ever happens
//!   under the lock: no I/O, no TLS, no store write, no authentication (a CONNECT becomes a
//!   [`Question`] that another task answers later with [`Broker::handle_auth_answer`]).
//! - Under the same lock it drains [`Broker::poll_wake`]. For each connection named it either
//!   drains [`Broker::poll_transmit`] into that connection's write buffer (a per-connection
//!   `Vec<u8>` behind its own small lock) and wakes its task, or (cheaper under contention)
//!   only sends the id to that connection's task, which takes the broker lock itself to pull
//!   its packets. Deliveries move between connections only as shared pointers in the target
//!   session's queue; a subscriber's copy is encoded when its own connection pulls it.
//!   (`tests/broker_threads.rs` drives one broker from four threads this way.)
//! - One store task drains [`Broker::poll_record`] in batches and calls
//!   [`Broker::handle_durable`] after each write; one timer task sleeps until
//!   [`Broker::poll_timeout`] and calls [`Broker::handle_timeout`].
//!
//! So with one broker **one lock is held per packet read and per packet written**, for the time the
//! bench measures (about 0.3 to 0.7 µs to route a publish to one subscriber, through 1 to
//! 100 000 filters, and about 0.1 µs per subscriber in a fan-out to 1 000; encoding the same
//! packet costs about 30 ns): the network, TLS and the store run on every core, the MQTT state
//! machine on one at a time.
//!
//! **Sibling brokers** ([`shard`]) are the second way, and the one that takes the lock away:
//! N brokers, each with [`Config::shard`] set, each behind its own lock (or on its own thread),
//! share nothing. The runtime reads a connection's CONNECT first and gives the connection to
//! the sibling its client id hashes to ([`shard::Shard::owner`]; an id a sibling assigned
//! names it), so a session, its takeovers and its resumes always meet on one sibling. After
//! each call it drains [`Broker::poll_forward`] into the other siblings' inboxes (in order)
//! and a task per sibling feeds its inbox to [`Broker::handle_forward`]. What crosses is a
//! shared pointer to the message (to the siblings that subscribe to it), a retained change
//! ordered by its topic's owner, which filters and share groups each sibling subscribes to;
//! and back, a subscriber's sibling holding a publisher
//! ([`shard::Relay::Press`]), the siblings' counters for `$SYS`, and with acknowledgments
//! held, [`shard::Relay::Stored`] once a sibling's copies are durable. All siblings must be
//! given the same clock. Each keeps a store of its own, and QoS 2 stays exactly once across
//! a crash of all of them (see [`shard`]); they restart together.
//!
//! The lock split this section used to plan instead (the subscription index behind an
//! `RwLock`, sessions in shards each behind its own mutex) was not taken: siblings keep every
//! handler single-threaded and `no_std`, and what they forward is what a cluster of servers
//! would forward too.
//!
//! # Authentication and authorization
//! Authentication is a question ([`Question::Connect`], [`Question::Auth`]) the runtime answers
//! whenever it likes ([`Broker::handle_auth_answer`]); the connection waits, within the connect
//! timeout, and nothing it sends after CONNECT except AUTH is read until then. Authorization is
//! the runtime's [`Authorize`] policy, asked synchronously per publish, subscribe and delivery.
//! A password file or a mosquitto ACL file plugs in as an answer and an `Authorize` closure:
//! answer [`Question::Connect`] with `Accept` when the file verifies the user name and
//! password (else `Refuse(0x86)`), and set an authorizer that maps [`Action::Publish`],
//! [`Action::Subscribe`] and [`Action::Receive`] to the ACL's write, subscribe and read access
//! for the [`ClientInfo`]'s client id and user name. The same file answers an MQTT 5
//! SCRAM-SHA-512 exchange ([`scram`]): [`Answer::Continue`] with
//! [`PasswordFile::scram_start`](password::PasswordFile::scram_start)'s server-first message,
//! then [`Answer::CompleteAs`] with [`scram::ScramServer::finish`]'s signature and the user.
//!
//! # Persistence
//! Every change a store must keep is a [`Record`] (a numbered [`Change`]): sessions created,
//! disconnected and ended, subscriptions, messages queued, sent, acknowledged and dropped,
//! inbound QoS 2 ids, retained messages, pending wills. Only sessions with an expiry above 0
//! are recorded. [`Broker::restore`] rebuilds a broker from the records; offline sessions keep
//! their subscriptions and queues, and resend their in-flight messages with the original packet
//! ids and DUP when their client returns. With [`Config::hold_acks_until_durable`], PUBACK,
//! PUBREC and PUBCOMP of a received publish wait until [`Broker::handle_durable`] reports the
//! records up to it durable, and a QoS 2 message goes to a persistent session only once the
//! record of the packet id it goes out with is durable (so that a restart resends it with that
//! id, which the subscriber recognises, and exactly once holds). A QoS 1 PUBACK also goes
//! out, in order, once every persistent subscriber has acknowledged the message: it is
//! delivered, which is what its records were for. Without it, a restore may read records
//! that miss the last ones made: [`Config::lossy_records`] then has each restored session
//! with a QoS 2 subscription release (PUBREL) the next 8 192 packet ids its allocator would
//! use, which a delivery whose record was lost may have used, before it sends anything new.
//! [`ledger::Ledger`] folds the records into the live entries of a key/value store and loads
//! them back.
//!
//! # Limits
//! Each session holds at most [`Limits::session_messages`] messages and
//! [`Limits::session_bytes`] bytes (queued and in flight together), all sessions at most
//! [`Limits::total_bytes`]; a message that does not fit is dropped for that subscriber and
//! counted in [`Drops`]. So a subscriber that stops reading costs at most its limits. A
//! connection that owes [`Limits::control_packets`] acknowledgments is not read from until
//! they are written; a session holds at most [`Limits::subscriptions`] subscriptions; the
//! retained store at most [`Limits::retained_bytes`] (a retained publish past it is delivered
//! but not retained). What the runtime does not drain (`poll_event`, `poll_record`) is its own
//! to bound.
//!
//! Before a limit drops anything, back-pressure ([`Limits::backpressure_ms`]): a publish whose
//! copy leaves a connected subscriber's session more than half full holds its publisher (its
//! connection is not read from) until that session drains below a quarter (as QoS 1/2
//! messages are acknowledged and QoS 0 ones written: so drain [`Broker::poll_wake`] after
//! [`Broker::poll_transmit`] too). QoS 0 is held as well: a publisher faster than its
//! subscriber otherwise has most of its messages dropped, work spent for nothing. A
//! subscriber that makes no such room within the time counts as stalled and holds no one
//! until it has drained, so a subscriber that stopped reading costs each publisher one wait,
//! while one that is merely slower than its publishers loses nothing. Offline sessions never
//! hold publishers. [`Limits::publish_rate`] holds a publisher to a rate the same way: past
//! it, its connection is not read from until a timer names it in `poll_wake` again.

pub mod acl;
pub mod ledger;
mod message;
pub mod password;
mod persist;
mod retained;
pub mod scram;
mod session;
pub mod shard;
mod types;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;
use core::time::Duration;

use mqtt_proto::{
    Ack, Auth, ConnAck, Connect, ConnectReturnCode, DecodeError, Disconnect, Packet, PacketId,
    Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Status,
    SubAck, Subscribe, TopicFilter, UnsubAck, Unsubscribe, decode,
};

pub use message::{Message, MessageProperties, Shared};
pub use persist::{SessionSnapshot, Snapshot};
pub use types::{
    Action, Answer, Authorize, Change, ClientInfo, CloseReason, Config, ConnId, Drops, Error,
    Event, Limits, Question, Record, Stats,
};

use retained::Retained;
use session::{
    Alias, Conn, ConnState, Conns, Control, Inflight, OutAliases, OutState, Outgoing,
    PendingConnect, Sub, SubKey, Will,
};
use shard::{Pick, Relay, Siblings};

use crate::{Instant, Router};

/// How a connection ends.
#[derive(Debug, Clone, Copy)]
struct End {
    /// Publish the will.
    will: bool,
    /// The DISCONNECT reason to send (MQTT 5, after CONNACK).
    send: Option<ReasonCode>,
    reason: CloseReason,
}

/// The broker core: connections, sessions, subscription and retained indexes. See the
/// [module docs](self) for how to drive it.
pub struct Broker {
    cfg: Config,
    conns: Conns,
    sessions: Vec<Option<session::Session>>,
    free: Vec<u32>,
    by_id: BTreeMap<Shared<str>, u32>,
    index: Router<SubKey>,
    share_cursor: BTreeMap<Box<str>, usize>,
    retained: Retained,
    events: VecDeque<Event>,
    records: VecDeque<Record>,
    /// With acks held: QoS 1 messages whose publisher's ack waits, with the deliveries to
    /// persistent sessions not yet acknowledged, the publisher's connection, and whether a
    /// delivery went to an offline session (then only the disk releases the ack soon).
    outstanding: BTreeMap<u64, Outstanding>,
    /// The message being routed, if its deliveries are counted in `outstanding`.
    tracking: Option<u64>,
    /// Connections that may hold acknowledgments or deliveries for the disk: what
    /// `handle_durable` visits, rather than every connection.
    waiting: Vec<ConnId>,
    seq: u64,
    durable: u64,
    woken: VecDeque<ConnId>,
    next_msg: u64,
    next_assigned: u64,
    queued_bytes: usize,
    stats: Stats,
    authorizer: Option<Box<dyn Authorize + Send>>,
    next_sys: Option<Instant>,
    /// Deadlines of connections and sessions, earliest first (lower bounds, see
    /// [`Broker::poll_timeout`]).
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    scratch: Vec<SubKey>,
    /// Sessions the publish being routed left more than half full (back-pressure).
    pressing: Vec<u32>,
    /// When held publishers stop waiting, earliest first: one entry per connection at most,
    /// at or before its hold's end (it moves when it comes up early).
    holds: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// With siblings ([`Config::shard`]): what they know of each other.
    siblings: Option<Box<Siblings>>,
    /// The share groups a message being routed here goes to elsewhere, by sibling.
    picked: Vec<(u16, Box<str>)>,
    /// During a SUBSCRIBE with siblings: the token of what it tells them (0: none), and how
    /// many answers its SUBACK waits for from each.
    sub_token: u64,
    sub_token_relays: u16,
}

/// Whose message is being routed, and so which share groups it goes to here.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// The broker's own (`$SYS`): local subscribers only.
    Local,
    /// Published here (by `conn`, if not a will): every group, and to the siblings; `exact`:
    /// a persistent session's (its QoS 2 message goes to them exactly once, across restarts
    /// too: see `Siblings::publish`).
    Origin { conn: Option<ConnId>, exact: bool },
    /// Published on sibling `from`: the groups it names for this one, and those it did not
    /// know of that this one serves.
    Relayed {
        from: u16,
        groups: &'a [Box<str>],
        known: &'a [Box<str>],
    },
}

impl core::fmt::Debug for Broker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Broker")
            .field("connections", &self.conns.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The 3.x CONNACK return code closest to a refusal reason.
fn refusal_for(version: ProtocolVersion, rc: ReasonCode) -> ReasonCode {
    if version.is_v5() || ConnectReturnCode::from_reason_code(rc).is_some() {
        rc
    } else {
        ReasonCode::NotAuthorized
    }
}

/// Seconds as a duration added to an instant, `None` for "never".
fn after_secs(now: Instant, secs: u32) -> Option<Instant> {
    (secs != u32::MAX).then(|| now + Duration::from_secs(u64::from(secs)))
}

impl Broker {
    /// An empty broker.
    pub fn new(mut cfg: Config) -> Self {
        // Held acknowledgments wait for the records: they are made.
        cfg.records |= cfg.hold_acks_until_durable;
        let siblings = (cfg.shard.count > 1).then(|| Box::new(Siblings::new(cfg.shard)));
        let next_msg = u64::from(cfg.shard.index) + 1;
        Broker {
            siblings,
            picked: Vec::new(),
            sub_token: 0,
            sub_token_relays: 0,
            next_sys: cfg.sys_interval.map(|_| Instant::ZERO),
            cfg,
            conns: Conns::default(),
            sessions: Vec::new(),
            free: Vec::new(),
            by_id: BTreeMap::new(),
            index: Router::new(),
            share_cursor: BTreeMap::new(),
            retained: Retained::default(),
            events: VecDeque::new(),
            records: VecDeque::new(),
            seq: 0,
            durable: 0,
            outstanding: BTreeMap::new(),
            waiting: Vec::new(),
            tracking: None,
            woken: VecDeque::new(),
            next_msg,
            next_assigned: 1,
            queued_bytes: 0,
            stats: Stats::default(),
            authorizer: None,
            timers: BinaryHeap::new(),
            scratch: Vec::new(),
            pressing: Vec::new(),
            holds: BinaryHeap::new(),
        }
    }

    /// Sets the authorization policy (without one, everything is allowed).
    pub fn set_authorizer(&mut self, policy: Box<dyn Authorize + Send>) {
        self.authorizer = Some(policy);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters, as of now.
    pub fn stats(&self) -> Stats {
        Stats {
            clients_connected: self
                .conns
                .values()
                .filter(|c| c.state == ConnState::Open)
                .count(),
            sessions: self.by_id.len(),
            subscriptions: self.index.len(),
            retained: self.retained.len(),
            queued_messages: self.sessions.iter().flatten().map(|s| s.held()).sum(),
            queued_bytes: self.queued_bytes,
            ..self.stats
        }
    }

    /// Bytes held by all session queues (never above [`Limits::total_bytes`]).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes held by the retained messages.
    pub fn retained_bytes(&self) -> usize {
        self.retained.bytes()
    }

    /// The message retained for exactly `topic`.
    pub fn retained(&self, topic: &str) -> Option<&Message> {
        self.retained.get(topic).map(|m| &**m)
    }

    /// The protocol version `conn` speaks (3.1.1 until its CONNECT is read).
    pub fn protocol_version(&self, conn: ConnId) -> Option<ProtocolVersion> {
        self.conns.get(&conn).map(|c| c.version)
    }

    /// Whether a session exists for this client identifier.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.by_id.contains_key(client_id)
    }

    /// A new connection, accepted at `now` (which may be before a TLS or WebSocket handshake
    /// that the runtime did first); its CONNECT must arrive within [`Config::connect_timeout`]
    /// of it.
    pub fn handle_open(&mut self, now: Instant) -> ConnId {
        let id = self.conns.insert(Conn::new(now));
        self.timers
            .push(Reverse((now + self.cfg.connect_timeout, Timer::Conn(id))));
        id
    }

    /// The transport of `conn` closed (or the runtime is done flushing it): forgets it.
    ///
    /// A connection that had not ended yet ends abruptly: its will is published.
    pub fn handle_close(&mut self, conn: ConnId, now: Instant) -> Result<(), Error> {
        if !self.conns.contains_key(&conn) {
            return Err(Error::UnknownConnection);
        }
        self.end_conn(
            conn,
            now,
            End {
                will: true,
                send: None,
                reason: CloseReason::TransportClosed,
            },
        );
        self.conns.remove(&conn);
        // The Close event of a connection the runtime already closed is of no use.
        self.events
            .retain(|e| !matches!(e, Event::Close { conn: c, .. } if *c == conn));
        self.settle_timers();
        Ok(())
    }

    /// The server ends `conn` (e.g. 0x8B when it shuts down): DISCONNECT with `reason` at
    /// MQTT 5, the will is published, and [`Event::Close`] follows.
    pub fn handle_disconnect(
        &mut self,
        conn: ConnId,
        now: Instant,
        reason: ReasonCode,
    ) -> Result<(), Error> {
        if !self.conns.contains_key(&conn) {
            return Err(Error::UnknownConnection);
        }
        self.end_conn(
            conn,
            now,
            End {
                will: true,
                send: Some(reason),
                reason: CloseReason::Server(reason),
            },
        );
        Ok(())
    }

    /// Feeds bytes received on `conn`; returns how many it consumed (whole packets only).
    pub fn handle_read(
        &mut self,
        conn: ConnId,
        now: Instant,
        bytes: &[u8],
    ) -> Result<usize, Error> {
        let result = self.read_packets(conn, now, bytes);
        self.settle_timers();
        result
    }

    fn read_packets(&mut self, conn: ConnId, now: Instant, bytes: &[u8]) -> Result<usize, Error> {
        let max = usize::try_from(self.cfg.max_packet_size).unwrap_or(usize::MAX);
        let mut used = 0;
        loop {
            let Some(c) = self.conns.get(&conn) else {
                return Err(Error::UnknownConnection);
            };
            if c.state == ConnState::Closed {
                // Nothing more is read from an ended connection.
                return Ok(bytes.len());
            }
            if c.control.len() + c.held.len() >= self.cfg.limits.control_packets {
                return Ok(used);
            }
            // Held by back-pressure: its next PUBLISH waits, what comes before it (its own
            // acknowledgments, which drain its session) does not.
            let held = c.hold.is_some();
            let version = c.version;
            // Before 5.0 a client is told no Receive Maximum, so going past ours is no
            // violation: it is not read from until its acknowledgments go out (held for the
            // disk, say). PUBRELs are what release QoS 2 ids, so those are not counted.
            let window = usize::from(self.cfg.receive_maximum);
            if !version.is_v5()
                && (c.qos1_unacked + c.pubcomp_unsent >= window || c.held.len() >= window)
            {
                return Ok(used);
            }
            let authenticating = c.state == ConnState::Authenticating;
            let rest = bytes.get(used..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(used);
            }
            match decode(rest, version, max) {
                Ok(Status::Incomplete(_)) => return Ok(used),
                Ok(Status::Complete((packet, n))) => {
                    // Until CONNACK only AUTH is read [MQTT-3.1.4-5]: the rest waits.
                    if authenticating && !matches!(packet, Packet::Auth(_)) {
                        return Ok(used);
                    }
                    // Held by back-pressure, or past its publish rate: the PUBLISH waits.
                    if matches!(packet, Packet::Publish(_)) && (held || self.throttled(conn, now)) {
                        return Ok(used);
                    }
                    used += n;
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.last_rx = now;
                    }
                    self.on_packet(conn, now, packet);
                }
                Err(e) => {
                    self.on_decode_error(conn, now, e);
                    return Ok(bytes.len());
                }
            }
        }
    }

    /// Answers the [`Question`] `conn` waits on.
    pub fn handle_auth_answer(
        &mut self,
        conn: ConnId,
        now: Instant,
        answer: Answer,
    ) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::UnknownConnection)?;
        if !c.asked {
            return Err(Error::NoQuestion);
        }
        c.asked = false;
        let state = c.state;
        let method = c.auth_method.clone();
        match (state, answer) {
            (ConnState::Authenticating, Answer::Accept) => self.finish_connect(conn, now, None),
            (ConnState::Authenticating, Answer::AcceptAs(user)) => {
                if let Some(p) = c.pending.as_mut() {
                    p.username = Some(user);
                }
                self.finish_connect(conn, now, None);
            }
            (ConnState::Authenticating, Answer::Complete(data)) => {
                let data = method.is_some().then(|| data.into_boxed_slice());
                self.finish_connect(conn, now, data);
            }
            (ConnState::Authenticating, Answer::CompleteAs(data, user)) => {
                if let Some(p) = c.pending.as_mut() {
                    p.username = Some(user);
                }
                let data = method.is_some().then(|| data.into_boxed_slice());
                self.finish_connect(conn, now, data);
            }
            (ConnState::Authenticating, Answer::Refuse(rc)) => self.refuse(conn, rc),
            (ConnState::Open, Answer::Accept | Answer::AcceptAs(_)) => {
                let method = method.unwrap_or_default();
                self.push_control(conn, Control::Auth(ReasonCode::Success, method, None));
            }
            (ConnState::Open, Answer::CompleteAs(_, user))
                if c.session
                    .and_then(|sid| self.session(sid))
                    .is_some_and(|s| s.username.as_deref() != Some(&*user)) =>
            {
                // Re-authentication proves the session's user again; it cannot change it.
                let rc = ReasonCode::NotAuthorized;
                let end = End {
                    will: true,
                    send: Some(rc),
                    reason: CloseReason::Refused(rc),
                };
                self.end_conn(conn, now, end);
            }
            (ConnState::Open, Answer::Complete(data) | Answer::CompleteAs(data, _)) => {
                let method = method.unwrap_or_default();
                let data = Some(data.into_boxed_slice());
                self.push_control(conn, Control::Auth(ReasonCode::Success, method, data));
            }
            (ConnState::Open, Answer::Refuse(rc)) => self.end_conn(
                conn,
                now,
                End {
                    will: true,
                    send: Some(rc),
                    reason: CloseReason::Refused(rc),
                },
            ),
            (ConnState::Authenticating, Answer::Continue(_)) if method.is_none() => {
                // Only an extended exchange (MQTT 5, with a method) can continue.
                self.refuse(conn, ReasonCode::NotAuthorized);
            }
            (ConnState::Authenticating | ConnState::Open, Answer::Continue(data)) => {
                let method = method.unwrap_or_default();
                self.push_control(
                    conn,
                    Control::Auth(
                        ReasonCode::ContinueAuthentication,
                        method,
                        Some(data.into_boxed_slice()),
                    ),
                );
            }
            _ => {}
        }
        self.settle_timers();
        Ok(())
    }

    /// The records up to `seq` are durable: held acknowledgments before it go out.
    pub fn handle_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        let durable = self.durable;
        if let Some(sib) = self.siblings.as_mut() {
            while let Some(&(at, from, id)) = sib.to_confirm.front() {
                if at > durable {
                    break;
                }
                sib.to_confirm.pop_front();
                sib.answer(from, Relay::Stored { id });
            }
        }
        let unstored = self.siblings.as_ref().map(|s| &s.unstored);
        for id in core::mem::take(&mut self.waiting) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let waited = core::mem::take(&mut c.await_durable);
            let moved = release_held(c, durable, &mut self.outstanding, unstored) || waited;
            if c.held.is_empty() {
                c.listed = false;
            } else {
                self.waiting.push(id);
            }
            if moved && !c.woken {
                c.woken = true;
                self.woken.push_back(id);
            }
        }
    }

    /// Whether something waits for the records to be durable and for nothing else: a held
    /// QoS 2 or retained acknowledgment, a QoS 2 delivery to stage, or a QoS 1 one whose
    /// message went to an offline session or to several (the last ack may be far off). While
    /// not, every held acknowledgment is one online subscriber's ack away, usually sooner than
    /// a sync, and a runtime may sync less often.
    #[must_use]
    pub fn waits_on_disk(&self) -> bool {
        if self.siblings.as_ref().is_some_and(|s| {
            !s.to_confirm.is_empty() || s.out.front().is_some_and(|f| f.0 > self.durable)
        }) {
            // A sibling's publisher waits for our records, or our forwards do.
            return true;
        }
        let mut conns = self.waiting.iter().filter_map(|id| self.conns.get(id));
        conns.any(|c| {
            c.await_durable
                || !c.unsent.is_empty()
                || c.held.iter().any(|(seq, through, _, _)| {
                    *seq > self.durable
                        && through.is_none_or(|m| {
                            self.outstanding.get(&m).is_some_and(|o| o.0 > 1 || o.2)
                        })
                })
        })
    }

    /// The next connection with packets to write, or that may be read from again.
    #[must_use]
    pub fn poll_wake(&mut self) -> Option<ConnId> {
        while let Some(id) = self.woken.pop_front() {
            if let Some(c) = self.conns.get_mut(&id) {
                c.woken = false;
                return Some(id);
            }
        }
        None
    }

    /// The next event for the runtime.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next persistence record.
    #[must_use]
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// Sequence number of the last record produced.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Gives back the spare room of a connection's queues and of its session's. A runtime
    /// calls it when the connection goes quiet, so that an idle connection holds no buffers
    /// (a busy one keeps them: this costs an allocation when they are needed again).
    pub fn shrink(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.control.shrink_to_fit();
        c.held.shrink_to_fit();
        c.resend.shrink_to_fit();
        c.unsent.shrink_to_fit();
        if let Some(s) = c
            .session
            .and_then(|sid| self.sessions.get_mut(sid as usize))
            .and_then(Option::as_mut)
        {
            s.queue.shrink_to_fit();
            // The in-flight table too: a hash table keeps its size after a burst.
            s.inflight.shrink_to_fit();
        }
    }

    /// The next moment [`Broker::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The heap holds a lower bound per timer (a keep-alive entry stays at its first
        // deadline while packets push the real one later). Every `handle_*` call brings the
        // earliest entries up to date, so the top is exact; deeper ones are fixed when they
        // come up.
        let timers = self.timers.peek().map(|Reverse((at, _))| *at);
        let holds = self.holds.peek().map(|Reverse((at, _))| *at);
        timers.into_iter().chain(holds).chain(self.next_sys).min()
    }

    /// Acts on every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, conn))) = self.holds.peek() {
            if at > now {
                break;
            }
            self.holds.pop();
            let wait = self.backpressure_wait();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            c.hold_armed = false;
            let Some(due) = c.hold.as_ref().map(|h| h.since + wait) else {
                continue;
            };
            if due > now {
                // Let go and held again since: its entry moves to the new hold's end.
                self.holds.push(Reverse((due, conn)));
                c.hold_armed = true;
                continue;
            }
            // The subscribers made no room in time: they hold no one until they have.
            let sessions = c.hold.as_mut().map(|h| core::mem::take(&mut h.sessions));
            let me = self.cfg.shard.index;
            // (A session on a sibling keeps its waiter: it holds this publisher no more
            // until it has drained and told so, as a stalled one here.)
            for (_, sid) in sessions
                .unwrap_or_default()
                .into_iter()
                .filter(|k| k.0 == me)
            {
                if let Some(s) = self.session_mut(sid) {
                    s.waiters.retain(|w| *w != (me, conn));
                    s.stalled = true;
                    self.stats.subscribers_stalled += 1;
                }
            }
            self.unhold(conn, now);
        }
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn(id) => {
                    let Some(c) = self.conns.get(&id) else {
                        continue;
                    };
                    let Some(deadline) = conn_deadline(c, self.cfg.connect_timeout) else {
                        continue;
                    };
                    if deadline > now {
                        self.timers.push(Reverse((deadline, timer)));
                        continue;
                    }
                    let end = if c.state == ConnState::Open {
                        End {
                            will: true,
                            send: Some(ReasonCode::KeepAliveTimeout),
                            reason: CloseReason::KeepAliveTimeout,
                        }
                    } else {
                        End {
                            will: false,
                            send: None,
                            reason: CloseReason::ConnectTimeout,
                        }
                    };
                    self.end_conn(id, now, end);
                }
                Timer::Throttle(id) => {
                    // Due: it is read again (the rate decides how much of what waits).
                    let due = self.conns.get_mut(&id).and_then(|c| c.rate.as_mut());
                    if let Some(t) = due
                        && t.wake_at.take().is_some()
                    {
                        self.wake(id);
                    }
                }
                Timer::Session(sid) => {
                    let Some(s) = self.session(sid) else {
                        continue;
                    };
                    if s.pending_will.as_ref().is_some_and(|(_, at)| now >= *at) {
                        self.fire_pending_will(now, sid as usize);
                    }
                    let expired = self.session(sid).is_some_and(|s| {
                        s.conn.is_none() && s.expires_at.is_some_and(|at| now >= at)
                    });
                    if expired {
                        self.delete_session(now, sid as usize);
                    } else if let Some(next) = self.session(sid).and_then(session_deadline) {
                        self.timers.push(Reverse((next, timer)));
                    }
                }
            }
        }
        if let (Some(at), Some(every)) = (self.next_sys, self.cfg.sys_interval)
            && now >= at
        {
            self.publish_sys(now);
            self.next_sys = Some(now + every);
        }
        self.settle_timers();
    }

    /// Writes the next packet for `conn` into `buf`; `None` when nothing is due.
    pub fn poll_transmit(
        &mut self,
        conn: ConnId,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::UnknownConnection)?;
        while let Some(ctl) = c.control.front() {
            let result = encode_control(ctl, c.version, &self.cfg, buf);
            if let Err(Enc::Small(needed)) = result {
                return Err(Error::BufferTooSmall { needed });
            }
            match c.control.pop_front() {
                Some(Control::PubAck(..)) => c.qos1_unacked = c.qos1_unacked.saturating_sub(1),
                Some(Control::PubComp(..)) => {
                    c.pubcomp_unsent = c.pubcomp_unsent.saturating_sub(1);
                }
                _ => {}
            }
            // A packet this connection's version cannot express is skipped.
            if let Ok(n) = result {
                return Ok(Some(n));
            }
        }
        if c.state != ConnState::Open {
            return Ok(None);
        }
        let Some(sid) = c.session else {
            return Ok(None);
        };
        let version = c.version;
        let Some(Some(s)) = self.sessions.get_mut(sid as usize) else {
            return Ok(None);
        };
        let hold = self.cfg.hold_acks_until_durable;
        let durable = self.durable;
        // Redelivery first, in the original order, with the original ids.
        while let Some(&pid) = c.resend.front() {
            let Some(inf) = s.inflight.get(&pid) else {
                c.resend.pop_front();
                continue;
            };
            if hold && inf.seq > durable {
                c.await_durable = true;
                list(&mut self.waiting, c, conn);
                return Ok(None);
            }
            let result = match inf.state {
                OutState::AwaitAck => {
                    let alias = OutAliases::alias(
                        c.out_aliases.as_deref(),
                        &inf.out.msg.topic,
                        inf.out.qos,
                    );
                    let r = encode_publish(&inf.out, version, Some(pid), true, alias, now, buf);
                    if r.is_ok() {
                        assign(c, alias, &inf.out.msg.topic);
                    }
                    r
                }
                OutState::AwaitComp => encode_pubrel(pid, version, &self.cfg, buf),
            };
            if let Err(Enc::Small(needed)) = result {
                return Err(Error::BufferTooSmall { needed });
            }
            c.resend.pop_front();
            if let Ok(n) = result {
                if inf.state == OutState::AwaitAck {
                    self.stats.messages_sent += 1;
                }
                return Ok(Some(n));
            }
        }
        // After a restore that may have lost records: the ids a lost delivery may have gone
        // out with are released, before a new message could reuse one the client still holds
        // (it would take that message for a duplicate). Ids in flight are the resend's.
        while s.retire_left > 0 {
            let id = PacketId::new(s.retire);
            s.retire = s.retire.checked_add(1).unwrap_or(1);
            let Some(pid) = id.filter(|pid| !s.inflight.contains_key(pid)) else {
                s.retire_left -= u16::from(id.is_some());
                continue;
            };
            let result = encode_pubrel(pid, version, &self.cfg, buf);
            if let Err(Enc::Small(needed)) = result {
                // Not released yet: the same id again with more room.
                s.retire = pid.get();
                return Err(Error::BufferTooSmall { needed });
            }
            s.retire_left -= 1;
            if let Ok(n) = result {
                return Ok(Some(n));
            }
        }
        // Then what waited for its `Sent` record to be durable, in order.
        while let Some(&pid) = c.unsent.front() {
            let Some(inf) = s
                .inflight
                .get(&pid)
                .filter(|i| i.state == OutState::AwaitAck)
            else {
                c.unsent.pop_front();
                continue;
            };
            if inf.seq > durable {
                c.await_durable = true;
                list(&mut self.waiting, c, conn);
                return Ok(None);
            }
            let alias =
                OutAliases::alias(c.out_aliases.as_deref(), &inf.out.msg.topic, inf.out.qos);
            let result = encode_publish(&inf.out, version, Some(pid), false, alias, now, buf);
            if let Err(Enc::Small(needed)) = result {
                return Err(Error::BufferTooSmall { needed });
            }
            if result.is_ok() {
                assign(c, alias, &inf.out.msg.topic);
            }
            c.unsent.pop_front();
            if let Ok(n) = result {
                return Ok(Some(n));
            }
        }
        loop {
            if s.inflight.len() >= usize::from(c.client_receive_max) {
                return Ok(None);
            }
            let Some(out) = s.queue.front() else {
                return Ok(None);
            };
            let size = out.size();
            let persisted = self.cfg.records && s.persistent && out.qos != QoS::AtMostOnce;
            if out.msg.expired(now) {
                self.stats.dropped.expired += 1;
                drop_front(s, &mut self.records, &mut self.seq, &mut self.queued_bytes);
                continue;
            }
            // The id is committed only once the packet is written: a message dropped as too
            // large, or a buffer too small, leaves the allocator as it was.
            let mut ids = s.ids;
            let packet_id = if out.qos == QoS::AtMostOnce {
                None
            } else {
                let inflight = &s.inflight;
                match ids.allocate(inflight.len(), |id| inflight.contains_key(&id)) {
                    Some(id) => Some(id),
                    None => return Ok(None),
                }
            };
            let alias = OutAliases::alias(c.out_aliases.as_deref(), &out.msg.topic, out.qos);
            let result = encode_publish(out, version, packet_id, false, alias, now, buf);
            let max = c.client_max_packet;
            let n = match result {
                Ok(n) if n <= max => n,
                Err(Enc::Small(needed)) if needed <= max => {
                    return Err(Error::BufferTooSmall { needed });
                }
                _ => {
                    // Too large for this client [MQTT-3.1.2-27, -28] (or not expressible in
                    // its version): dropped and counted, as if sent.
                    self.stats.dropped.too_large += 1;
                    drop_front(s, &mut self.records, &mut self.seq, &mut self.queued_bytes);
                    continue;
                }
            };
            s.ids = ids;
            assign(c, alias, &out.msg.topic);
            self.stats.messages_sent += 1;
            let Some(out) = s.queue.pop_front() else {
                return Ok(Some(n));
            };
            match packet_id {
                None => release(&mut s.bytes, &mut self.queued_bytes, size),
                Some(pid) => {
                    if persisted {
                        let change = Change::Sent {
                            client_id: s.client_id.clone(),
                            message_id: out.msg.id,
                            packet_id: pid,
                        };
                        push_record(&mut self.records, &mut self.seq, change);
                    }
                    // Exactly once across a restart: a QoS 2 message (and, to keep the
                    // order, whatever follows it) is written only once the packet id it
                    // went out with is durable. QoS 1 goes at once: a restart may repeat
                    // it, which QoS 1 allows, and a fast subscriber's ack then cancels the
                    // records before they reach the disk.
                    let stage =
                        hold && persisted && (out.qos == QoS::ExactlyOnce || !c.unsent.is_empty());
                    let order = s.next_order();
                    s.inflight.insert(
                        pid,
                        Inflight {
                            out,
                            state: OutState::AwaitAck,
                            order,
                            seq: if stage { self.seq } else { 0 },
                        },
                    );
                    if stage {
                        c.unsent.push_back(pid);
                        c.await_durable = true;
                        list(&mut self.waiting, c, conn);
                        continue;
                    }
                }
            }
            // A QoS 0 message leaves the session once written: that may be the room a held
            // publisher waits for.
            if packet_id.is_none() && (s.stalled || !s.waiters.is_empty()) {
                self.relieve(sid, now);
            }
            return Ok(Some(n));
        }
    }

    // ----- input -----

    fn on_decode_error(&mut self, conn: ConnId, now: Instant, e: DecodeError) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state == ConnState::AwaitConnect {
            // An unsupported protocol level gets CONNACK 0x01 (3.1.1 encoding) [MQTT-3.1.2-2];
            // anything else malformed in CONNECT closes without CONNACK.
            if matches!(e, DecodeError::UnsupportedProtocolLevel(_)) {
                c.version = ProtocolVersion::V311;
                self.refuse(conn, ReasonCode::UnsupportedProtocolVersion);
                return;
            }
            self.end_conn(
                conn,
                now,
                End {
                    will: false,
                    send: None,
                    reason: CloseReason::Violation(e.reason_code()),
                },
            );
            return;
        }
        self.violation(conn, now, e.reason_code());
    }

    fn violation(&mut self, conn: ConnId, now: Instant, rc: ReasonCode) {
        self.end_conn(
            conn,
            now,
            End {
                will: true,
                send: Some(rc),
                reason: CloseReason::Violation(rc),
            },
        );
    }

    fn on_packet(&mut self, conn: ConnId, now: Instant, packet: Packet<'_>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match (c.state, packet) {
            (ConnState::AwaitConnect, Packet::Connect(p)) => self.on_connect(conn, now, &p),
            (ConnState::AwaitConnect, _) => {
                // The first packet must be CONNECT [MQTT-3.1.0-1].
                self.end_conn(
                    conn,
                    now,
                    End {
                        will: false,
                        send: None,
                        reason: CloseReason::Violation(ReasonCode::ProtocolError),
                    },
                );
            }
            (ConnState::Authenticating, Packet::Auth(a)) => self.on_auth(conn, now, &a),
            (ConnState::Open, Packet::Publish(p)) => self.on_publish(conn, now, &p),
            (ConnState::Open, Packet::PubAck(a)) => self.on_puback(conn, now, a.packet_id),
            (ConnState::Open, Packet::PubRec(a)) => self.on_pubrec(conn, now, &a),
            (ConnState::Open, Packet::PubRel(a)) => self.on_pubrel(conn, a.packet_id),
            (ConnState::Open, Packet::PubComp(a)) => self.on_pubcomp(conn, now, a.packet_id),
            (ConnState::Open, Packet::Subscribe(s)) => self.on_subscribe(conn, now, &s),
            (ConnState::Open, Packet::Unsubscribe(u)) => self.on_unsubscribe(conn, &u),
            (ConnState::Open, Packet::PingReq) => {
                if !c.control.contains(&Control::PingResp) {
                    self.push_control(conn, Control::PingResp);
                }
            }
            (ConnState::Open, Packet::Disconnect(d)) => self.on_disconnect(conn, now, &d),
            (ConnState::Open, Packet::Auth(a)) => self.on_auth(conn, now, &a),
            // A second CONNECT [MQTT-3.1.0-2], or a packet only a server sends.
            _ => self.violation(conn, now, ReasonCode::ProtocolError),
        }
    }

    fn on_connect(&mut self, conn: ConnId, now: Instant, p: &Connect<'_>) {
        let v = p.protocol;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.version = v;
        }
        let mut client_id: Box<str> = Box::from(p.client_id);
        let mut assigned = false;
        if client_id.is_empty() {
            // 5.0 and 3.1.1 with a clean session get an assigned identifier [MQTT-3.1.3-6];
            // 3.1.1 without one is refused with 0x02 [MQTT-3.1.3-8]; 3.1 needs one.
            if v == ProtocolVersion::V5 || (v == ProtocolVersion::V311 && p.clean_start) {
                // Not used by any other session [MQTT-3.2.2-16].
                loop {
                    client_id =
                        format!("{}{}", self.cfg.assigned_id_prefix, self.next_assigned).into();
                    self.next_assigned += 1;
                    if !self.by_id.contains_key(&*client_id) {
                        break;
                    }
                }
                assigned = true;
            } else {
                self.refuse(conn, ReasonCode::ClientIdentifierNotValid);
                return;
            }
        } else if v == ProtocolVersion::V31 && client_id.len() > 23 {
            self.refuse(conn, ReasonCode::ClientIdentifierNotValid);
            return;
        }
        // 3.x: a session without clean session never expires (up to the configured cap).
        let mut expiry = if v.is_v5() || p.clean_start {
            0
        } else {
            u32::MAX
        };
        let mut receive_max = u16::MAX;
        let mut max_packet = u32::MAX;
        let mut client_aliases = 0;
        let mut method = None;
        let mut data = None;
        let mut response_info = false;
        for prop in p.properties.iter() {
            match prop {
                Property::SessionExpiryInterval(e) => expiry = e,
                Property::ReceiveMaximum(r) => receive_max = r,
                Property::MaximumPacketSize(m) => max_packet = m,
                Property::TopicAliasMaximum(t) => client_aliases = t,
                Property::AuthenticationMethod(m) => method = Some(Box::<str>::from(m)),
                Property::AuthenticationData(d) => data = Some(Box::<[u8]>::from(d)),
                Property::RequestResponseInformation(r) => response_info = r,
                _ => {}
            }
        }
        let connect_expiry_zero = expiry == 0;
        let expiry_capped = expiry > self.cfg.max_session_expiry;
        if expiry_capped {
            expiry = self.cfg.max_session_expiry;
        }
        let mut keep_alive = p.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.cfg.max_keep_alive;
        if v.is_v5() && max_ka > 0 && (keep_alive == 0 || keep_alive > max_ka) {
            keep_alive = max_ka;
            server_keep_alive = Some(max_ka);
        }
        let username: Option<Box<str>> = p.username.map(Box::from);
        let will = match &p.will {
            Some(w) => {
                // A retained will where retain is off: refused with 0x9A [MQTT-3.2.2-13]; 3.x
                // has no such code, "server unavailable" is the nearest.
                if w.retain && !self.cfg.retain_available {
                    let rc = if v.is_v5() {
                        ReasonCode::RetainNotSupported
                    } else {
                        ReasonCode::ServerUnavailable
                    };
                    self.refuse(conn, rc);
                    return;
                }
                // A will above the Maximum QoS: refused with 0x9B [MQTT-3.2.2-12].
                if w.qos > self.cfg.maximum_qos {
                    let rc = if v.is_v5() {
                        ReasonCode::QoSNotSupported
                    } else {
                        ReasonCode::ServerUnavailable
                    };
                    self.refuse(conn, rc);
                    return;
                }
                let mut delay = 0;
                let mut expiry = None;
                for prop in w.properties.iter() {
                    match prop {
                        Property::WillDelayInterval(d) => delay = d,
                        Property::MessageExpiryInterval(e) => expiry = Some(e),
                        _ => {}
                    }
                }
                Some(Box::new(Will {
                    msg: Message {
                        id: 0,
                        topic: Box::from(w.topic.as_str()),
                        payload: Box::from(w.payload),
                        qos: w.qos,
                        retain: w.retain,
                        properties: MessageProperties::from_properties(&w.properties),
                        expires_at: None,
                    },
                    delay,
                    expiry,
                }))
            }
            None => None,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.keep_alive_ms = u64::from(keep_alive) * 1500;
        c.client_receive_max = receive_max.min(self.cfg.max_inflight.max(1));
        c.client_max_packet = usize::try_from(max_packet).unwrap_or(usize::MAX);
        let aliases = client_aliases.min(self.cfg.outgoing_topic_aliases);
        c.out_aliases = (v.is_v5() && aliases > 0).then(|| {
            Box::new(OutAliases {
                max: aliases,
                ..OutAliases::default()
            })
        });
        c.connect_expiry_zero = connect_expiry_zero;
        c.auth_method = method.clone();
        c.pending = Some(Box::new(PendingConnect {
            client_id: client_id.clone(),
            assigned,
            clean_start: p.clean_start,
            expiry,
            expiry_capped,
            server_keep_alive,
            response_info,
            will,
            username: username.clone(),
        }));
        if !self.cfg.authenticate {
            if method.is_some() {
                self.refuse(conn, ReasonCode::BadAuthenticationMethod);
                return;
            }
            self.finish_connect(conn, now, None);
            return;
        }
        c.state = ConnState::Authenticating;
        c.asked = true;
        self.events.push_back(Event::Ask(Question::Connect {
            conn,
            client_id,
            username,
            password: p.password.map(Box::from),
            method,
            data,
        }));
    }

    fn on_auth(&mut self, conn: ConnId, now: Instant, a: &Auth<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut method = None;
        let mut data = None;
        for p in a.properties.iter() {
            match p {
                Property::AuthenticationMethod(m) => method = Some(m),
                Property::AuthenticationData(d) => data = Some(Box::<[u8]>::from(d)),
                _ => {}
            }
        }
        let expected = matches!(
            (c.state, a.reason_code),
            (
                ConnState::Authenticating,
                ReasonCode::ContinueAuthentication
            ) | (
                ConnState::Open,
                ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication
            )
        );
        // The method must be the one CONNECT named [MQTT-4.12.0-5].
        let same = method.is_some() && method == c.auth_method.as_deref();
        if !expected || !same || c.asked {
            self.violation(conn, now, ReasonCode::ProtocolError);
            return;
        }
        c.asked = true;
        let reauthenticate = c.state == ConnState::Open;
        self.events.push_back(Event::Ask(Question::Auth {
            conn,
            method: Box::from(method.unwrap_or_default()),
            data,
            reauthenticate,
        }));
    }

    fn refuse(&mut self, conn: ConnId, rc: ReasonCode) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // A refusal carries an error code; a success code here would accept.
        let rc = if rc.is_error() {
            rc
        } else {
            ReasonCode::UnspecifiedError
        };
        let code = refusal_for(c.version, rc);
        c.control.push_back(Control::ConnAck {
            present: false,
            code,
            assigned: None,
            keep_alive: None,
            expiry: None,
            auth: None,
            response_info: false,
        });
        c.state = ConnState::Closed;
        c.pending = None;
        self.wake(conn);
        self.events.push_back(Event::Close {
            conn,
            reason: CloseReason::Refused(code),
        });
    }

    /// Accepts the CONNECT `conn` waits with; `auth_data` goes in the CONNACK beside the
    /// method of an extended exchange.
    fn finish_connect(&mut self, conn: ConnId, now: Instant, auth_data: Option<Box<[u8]>>) {
        let Some(pending) = self.conns.get_mut(&conn).and_then(|c| c.pending.take()) else {
            return;
        };
        // The will is authorized once the user is known (an answer may have named another).
        if let (Some(w), Some(a)) = (&pending.will, self.authorizer.as_mut()) {
            let info = ClientInfo {
                client_id: &pending.client_id,
                username: pending.username.as_deref(),
            };
            if !a.allow(info, &w.msg.topic, Action::Publish) {
                self.refuse(conn, ReasonCode::NotAuthorized);
                return;
            }
        }
        // Takeover: the session's current connection ends first [MQTT-3.1.4-3].
        if let Some(&sid) = self.by_id.get(&*pending.client_id) {
            let old = self.session(sid).and_then(|s| s.conn);
            if let Some(old) = old.filter(|o| *o != conn) {
                self.end_conn(
                    old,
                    now,
                    End {
                        will: true,
                        send: Some(ReasonCode::SessionTakenOver),
                        reason: CloseReason::TakenOver,
                    },
                );
            }
        }
        let existing = self.by_id.get(&*pending.client_id).copied();
        let (sid, present) = match existing {
            Some(sid) if !pending.clean_start => (sid, true),
            Some(sid) => {
                // Clean start discards the old session [MQTT-3.1.2-4]; a delayed will of it
                // is not sent, as a new connection arrived in time [MQTT-3.1.3-9].
                if let Some(s) = self.session_mut(sid) {
                    s.pending_will = None;
                }
                self.delete_session(now, sid as usize);
                (
                    self.create_session(&pending.client_id, pending.expiry),
                    false,
                )
            }
            None => (
                self.create_session(&pending.client_id, pending.expiry),
                false,
            ),
        };
        let mut records = Vec::new();
        let version = self
            .conns
            .get(&conn)
            .map_or(ProtocolVersion::V311, |c| c.version);
        let mut resend = VecDeque::new();
        if let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) {
            if s.pending_will.take().is_some() && s.persistent {
                records.push(Change::WillCleared {
                    client_id: s.client_id.clone(),
                });
            }
            // Recorded at every resume, changed or not: it also says the session is
            // connected again, so a restore does not count its expiry from an old disconnect.
            if present && s.persistent {
                records.push(Change::SessionExpiry {
                    client_id: s.client_id.clone(),
                    expiry: pending.expiry,
                });
            }
            s.expiry = pending.expiry;
            s.conn = Some(conn);
            s.expires_at = None;
            s.username = pending.username.clone();
            s.will = pending.will;
            let mut order: Vec<(u64, PacketId)> =
                s.inflight.iter().map(|(id, i)| (i.order, *id)).collect();
            order.sort_unstable();
            resend = order.into_iter().map(|(_, id)| id).collect();
        }
        for r in records {
            self.record(r);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::Open;
        c.session = Some(sid);
        c.resend = resend;
        if let Some(deadline) = conn_deadline(c, self.cfg.connect_timeout) {
            self.timers.push(Reverse((deadline, Timer::Conn(conn))));
        }
        let v5 = version.is_v5();
        c.control.push_back(Control::ConnAck {
            present,
            code: ReasonCode::Success,
            assigned: (v5 && pending.assigned).then(|| pending.client_id.clone()),
            keep_alive: pending.server_keep_alive,
            expiry: (v5 && pending.expiry_capped).then_some(pending.expiry),
            auth: c.auth_method.clone().map(|m| (m, auth_data)),
            response_info: pending.response_info,
        });
        self.wake(conn);
    }

    fn on_publish(&mut self, conn: ConnId, now: Instant, p: &Publish<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(sid) = c.session else { return };
        if p.retain && !self.cfg.retain_available {
            // Retain Available was announced as 0 [MQTT-3.2.2-14].
            self.violation(conn, now, ReasonCode::RetainNotSupported);
            return;
        }
        let mut topic: Option<Box<str>> = (!p.topic.is_empty()).then(|| Box::from(p.topic));
        let mut expiry = None;
        for prop in p.properties.iter() {
            match prop {
                Property::TopicAlias(a) => {
                    if a == 0 || a > self.cfg.topic_alias_maximum {
                        // 0 or above our maximum [MQTT-3.3.2-9, -10].
                        self.violation(conn, now, ReasonCode::TopicAliasInvalid);
                        return;
                    }
                    // The table grows to the highest alias used (most clients use none).
                    let i = usize::from(a) - 1;
                    if c.aliases.len() <= i {
                        c.aliases.resize(i + 1, None);
                    }
                    let Some(slot) = c.aliases.get_mut(i) else {
                        return;
                    };
                    match &topic {
                        Some(t) => *slot = Some(t.clone()),
                        None => topic = slot.clone(),
                    }
                }
                Property::MessageExpiryInterval(e) => expiry = Some(e),
                Property::SubscriptionIdentifier(_) => {
                    // A client may not send one [MQTT-3.3.4-6].
                    self.violation(conn, now, ReasonCode::ProtocolError);
                    return;
                }
                _ => {}
            }
        }
        let Some(topic) = topic else {
            // An alias that was never set.
            self.violation(conn, now, ReasonCode::ProtocolError);
            return;
        };
        self.stats.messages_received += 1;
        let (version, in_use) = (c.version, c.qos1_unacked + c.pubcomp_unsent);
        let Some(s) = self.sessions.get(sid as usize).and_then(Option::as_ref) else {
            return;
        };
        let pid = p.packet_id;
        if let (QoS::ExactlyOnce, Some(pid)) = (p.qos, pid)
            && s.rx_qos2.contains(&pid)
        {
            // A resend of a QoS 2 message not yet released: not delivered again.
            self.ack(conn, Control::PubRec(pid, ReasonCode::Success));
            return;
        }
        if p.qos != QoS::AtMostOnce
            && version.is_v5()
            && in_use + s.rx_qos2.len() >= usize::from(self.cfg.receive_maximum)
        {
            self.violation(conn, now, ReasonCode::ReceiveMaximumExceeded);
            return;
        }
        if p.qos > self.cfg.maximum_qos && version.is_v5() {
            // Above the Maximum QoS of CONNACK [MQTT-3.2.2-11]: DISCONNECT 0x9B. A 3.1.1
            // client knows no maximum: its handshake is kept, the message capped.
            self.violation(conn, now, ReasonCode::QoSNotSupported);
            return;
        }
        // A payload that says it is UTF-8 and is not: refused with 0x99 (a receiver may check
        // the format it is told [MQTT-3.3.2-4]).
        let bad_format = version.is_v5()
            && p.properties
                .iter()
                .any(|pr| matches!(pr, Property::PayloadFormatIndicator(true)))
            && core::str::from_utf8(p.payload).is_err();
        let info = ClientInfo {
            client_id: &s.client_id,
            username: s.username.as_deref(),
        };
        let allowed = match self.authorizer.as_mut() {
            Some(a) => a.allow(info, &topic, Action::Publish),
            None => true,
        };
        let persistent = s.persistent;
        let client_id = s.client_id.clone();
        let mut matched = 0;
        let mut through = None;
        // The message whose copies on siblings may have to be stored before the ack (0: none;
        // `ack_message` looks).
        let mut unstored = 0;
        if allowed && !bad_format {
            let id = self.new_msg_id();
            let msg = Shared::new(Message {
                id,
                topic,
                payload: Box::from(p.payload),
                qos: p.qos.min(self.cfg.maximum_qos),
                retain: p.retain,
                properties: MessageProperties::from_properties(&p.properties),
                expires_at: expiry.map(|e| now + Duration::from_secs(u64::from(e))),
            });
            if p.retain {
                self.publish_retained(&msg);
            }
            let counted = self.cfg.hold_acks_until_durable
                && p.qos == QoS::AtLeastOnce
                && !p.retain
                && pid.is_some();
            self.tracking = counted.then_some(id);
            self.pressing.clear();
            let scope = Scope::Origin {
                conn: Some(conn),
                exact: persistent,
            };
            matched = self.route(now, &msg, Some(sid), scope);
            self.tracking = None;
            unstored = id;
            self.hold(conn, now);
            if counted {
                through = Some(id);
                if let Some(e) = self.outstanding.get_mut(&id) {
                    e.1 = Some(conn);
                }
            }
        }
        let rc = if !allowed && version.is_v5() {
            ReasonCode::NotAuthorized
        } else if bad_format {
            ReasonCode::PayloadFormatInvalid
        } else if matched == 0 && version.is_v5() && self.siblings.is_none() {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        match (p.qos, pid) {
            (QoS::AtLeastOnce, Some(pid)) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.qos1_unacked += 1;
                }
                self.ack_message(conn, Control::PubAck(pid, rc), through, unstored);
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                if rc.is_error() {
                    // A refused QoS 2 message is finished with its PUBREC.
                    self.ack(conn, Control::PubRec(pid, rc));
                    return;
                }
                if let Some(s) = self.session_mut(sid) {
                    s.rx_qos2.insert(pid);
                }
                if persistent {
                    self.record(Change::InboundQoS2 {
                        client_id,
                        packet_id: pid,
                    });
                }
                self.unstage();
                self.ack_message(conn, Control::PubRec(pid, rc), None, unstored);
            }
            _ => {}
        }
    }

    fn on_puback(&mut self, conn: ConnId, now: Instant, pid: PacketId) {
        self.complete(conn, now, pid, |i| {
            i.state == OutState::AwaitAck && i.out.qos == QoS::AtLeastOnce
        });
    }

    fn on_pubcomp(&mut self, conn: ConnId, now: Instant, pid: PacketId) {
        self.complete(conn, now, pid, |i| i.state == OutState::AwaitComp);
    }

    /// Removes an in-flight message that `done` says is complete.
    fn complete(
        &mut self,
        conn: ConnId,
        now: Instant,
        pid: PacketId,
        done: impl Fn(&Inflight) -> bool,
    ) {
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return;
        };
        // An ack for nothing in flight is ignored (a late duplicate).
        let hashbrown::hash_map::Entry::Occupied(entry) = s.inflight.entry(pid) else {
            return;
        };
        if !done(entry.get()) {
            return;
        }
        let i = entry.remove();
        release(&mut s.bytes, &mut self.queued_bytes, i.out.size());
        if self.cfg.records && s.persistent {
            let change = Change::Acked {
                client_id: s.client_id.clone(),
                packet_id: pid,
            };
            push_record(&mut self.records, &mut self.seq, change);
            self.settle(i.out.msg.id);
        }
        // The window opened: more may go out.
        self.wake(conn);
        self.relieve(sid, now);
    }

    fn on_pubrec(&mut self, conn: ConnId, now: Instant, a: &Ack<'_>) {
        let pid = a.packet_id;
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        let version = self
            .conns
            .get(&conn)
            .map_or(ProtocolVersion::V311, |c| c.version);
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return;
        };
        let state = s
            .inflight
            .get(&pid)
            .filter(|i| i.out.qos == QoS::ExactlyOnce)
            .map(|i| i.state);
        match state {
            Some(OutState::AwaitAck) if a.reason_code.is_error() => {
                self.complete(conn, now, pid, |_| true);
            }
            Some(OutState::AwaitAck) => {
                if self.cfg.records && s.persistent {
                    let change = Change::Received {
                        client_id: s.client_id.clone(),
                        packet_id: pid,
                    };
                    push_record(&mut self.records, &mut self.seq, change);
                }
                let hold = self.cfg.hold_acks_until_durable && s.persistent;
                if let Some(i) = s.inflight.get_mut(&pid) {
                    i.state = OutState::AwaitComp;
                    if hold {
                        // A resend after a reconnect waits for the record too.
                        i.seq = self.seq;
                    }
                }
                // The subscriber forgets the packet id at PUBREL: sent before the broker
                // has recorded the PUBREC, a restart would deliver the message again under
                // that id as a new one. So PUBREL waits like an acknowledgment.
                self.ack(conn, Control::PubRel(pid, ReasonCode::Success));
            }
            Some(OutState::AwaitComp) => {
                self.ack(conn, Control::PubRel(pid, ReasonCode::Success));
            }
            None => {
                let rc = if version.is_v5() {
                    ReasonCode::PacketIdentifierNotFound
                } else {
                    ReasonCode::Success
                };
                self.push_control(conn, Control::PubRel(pid, rc));
            }
        }
    }

    fn on_pubrel(&mut self, conn: ConnId, pid: PacketId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(sid) = c.session else { return };
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return;
        };
        let known = s.rx_qos2.remove(&pid);
        if known && s.persistent {
            let change = Change::InboundReleased {
                client_id: s.client_id.clone(),
                packet_id: pid,
            };
            push_record(&mut self.records, &mut self.seq, change);
        }
        // An unknown id is a PUBREL resent after a reconnect whose PUBCOMP was lost: the
        // message was released already, so it is complete (as mosquitto answers; clients
        // that treat 0x92 as a failure would report a delivered message as refused).
        c.pubcomp_unsent += 1;
        self.ack(conn, Control::PubComp(pid, ReasonCode::Success));
    }

    fn on_subscribe(&mut self, conn: ConnId, now: Instant, p: &Subscribe<'_>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(sid) = c.session else { return };
        let version = c.version;
        let identifier = p.properties.subscription_identifiers().next();
        let mut codes = Vec::new();
        let mut retained: Vec<(Shared<Message>, QoS)> = Vec::new();
        if self.siblings.is_some() {
            self.sub_token = self.new_msg_id();
            self.sub_token_relays = 0;
        }
        for (filter, options) in p.filters.iter() {
            let Some(s) = self.sessions.get(sid as usize).and_then(Option::as_ref) else {
                return;
            };
            let info = ClientInfo {
                client_id: &s.client_id,
                username: s.username.as_deref(),
            };
            let allowed = match self.authorizer.as_mut() {
                Some(a) => a.allow(info, filter.as_str(), Action::Subscribe),
                None => true,
            };
            if !allowed {
                codes.push(if version.is_v5() {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let unsupported = if filter.shared().is_some() && !self.cfg.shared_subscriptions {
                Some(ReasonCode::SharedSubscriptionsNotSupported)
            } else if filter.as_str().contains(['+', '#']) && !self.cfg.wildcard_subscriptions {
                Some(ReasonCode::WildcardSubscriptionsNotSupported)
            } else {
                None
            };
            if let Some(rc) = unsupported {
                codes.push(if version.is_v5() {
                    rc
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let full = s.find_sub(filter.as_str()).is_none()
                && s.subs.iter().flatten().count() >= self.cfg.limits.subscriptions;
            if full {
                codes.push(if version.is_v5() {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            // Granted at most the Maximum QoS.
            let options = mqtt_proto::SubscriptionOptions {
                qos: options.qos.min(self.cfg.maximum_qos),
                ..options
            };
            let is_new = self.add_subscription(sid, filter, options, identifier);
            codes.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // Retained messages: never for shared subscriptions [MQTT-3.8.4-?], else by the
            // retain handling option [MQTT-3.3.1-9, -10, -11].
            let send = filter.shared().is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => is_new,
                    RetainHandling::DoNotSend => false,
                };
            if send {
                self.retained.for_each_match(filter.as_str(), |m| {
                    retained.push((m.clone(), options.qos));
                });
            }
        }
        let token = core::mem::take(&mut self.sub_token);
        let relays = core::mem::take(&mut self.sub_token_relays);
        match self.siblings.as_mut() {
            Some(sib) if relays > 0 => {
                // Once every sibling knows the new subscriptions, a message published
                // anywhere after the SUBACK reaches them. (Retained messages may go out
                // first: MQTT 5 lets a server send matching PUBLISH packets before SUBACK.)
                let left = relays.saturating_mul(sib.me.count.saturating_sub(1));
                let entry = shard::Unstored {
                    left,
                    publisher: Some(conn),
                    exact: false,
                };
                sib.unstored.insert(token, entry);
                self.ack_message(conn, Control::SubAck(p.packet_id, codes), None, token);
            }
            _ => self.push_control(conn, Control::SubAck(p.packet_id, codes)),
        }
        let ids: Vec<u32> = identifier.into_iter().collect();
        for (m, max_qos) in retained {
            if m.expired(now) {
                self.stats.dropped.expired += 1;
                self.retained.clear(&m.topic);
                self.record(Change::RetainedCleared {
                    topic: m.topic.clone(),
                });
                continue;
            }
            let qos = m.qos.min(max_qos);
            let out = Outgoing::new(m, qos, true, ids.clone());
            self.deliver(sid, out);
        }
    }

    /// Adds or replaces a subscription; returns whether it is new.
    fn add_subscription(
        &mut self,
        sid: u32,
        filter: TopicFilter<'_>,
        options: mqtt_proto::SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return false;
        };
        let sub = Sub {
            filter: Box::from(filter.as_str()),
            shared: filter.shared().is_some(),
            options,
            id: identifier,
        };
        let is_new = match s.find_sub(filter.as_str()) {
            Some(slot) => {
                // The same filter replaces the subscription's options [MQTT-3.8.4-3].
                if let Some(old) = s.subs.get_mut(slot) {
                    *old = Some(sub);
                }
                false
            }
            None => {
                let slot = s.add_sub(sub);
                let key = SubKey {
                    session: sid,
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                };
                self.index.insert(filter, key);
                true
            }
        };
        if s.persistent {
            let change = Change::Subscribed {
                client_id: s.client_id.clone(),
                filter: Box::from(filter.as_str()),
                options,
                identifier,
            };
            push_record(&mut self.records, &mut self.seq, change);
        }
        if is_new {
            self.count_filter(filter.as_str(), filter.shared().is_some(), true);
        }
        is_new
    }

    fn on_unsubscribe(&mut self, conn: ConnId, p: &Unsubscribe<'_>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(sid) = c.session else { return };
        let version = c.version;
        let mut codes = Vec::new();
        for filter in p.filters.iter() {
            let removed = self.remove_subscription(sid, filter);
            if version.is_v5() {
                codes.push(if removed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        self.push_control(conn, Control::UnsubAck(p.packet_id, codes));
    }

    fn remove_subscription(&mut self, sid: u32, filter: TopicFilter<'_>) -> bool {
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return false;
        };
        let Some(slot) = s.find_sub(filter.as_str()) else {
            return false;
        };
        if let Some(sub) = s.subs.get_mut(slot) {
            *sub = None;
        }
        let key = SubKey {
            session: sid,
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
        };
        self.index.remove(filter, &key);
        if s.persistent {
            let change = Change::Unsubscribed {
                client_id: s.client_id.clone(),
                filter: Box::from(filter.as_str()),
            };
            push_record(&mut self.records, &mut self.seq, change);
        }
        self.count_filter(filter.as_str(), filter.shared().is_some(), false);
        true
    }

    fn on_disconnect(&mut self, conn: ConnId, now: Instant, d: &Disconnect<'_>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let zero = c.connect_expiry_zero;
        let sid = c.session;
        for p in d.properties.iter() {
            if let Property::SessionExpiryInterval(e) = p {
                // Not from 0 to more [MQTT-3.14.2-2].
                if zero && e != 0 {
                    self.violation(conn, now, ReasonCode::ProtocolError);
                    return;
                }
                let e = e.min(self.cfg.max_session_expiry);
                if let Some(s) = sid.and_then(|sid| self.session_mut(sid)) {
                    let changed = s.expiry != e;
                    s.expiry = e;
                    if changed && s.persistent {
                        let change = Change::SessionExpiry {
                            client_id: s.client_id.clone(),
                            expiry: e,
                        };
                        self.record(change);
                    }
                }
            }
        }
        // Only 0x00 discards the will [MQTT-3.14.4-3, 3.1.2-8]: 0x04 asks for it, and an
        // error code is an abnormal end. 3.x DISCONNECT always reads as 0x00.
        let will = d.reason_code != ReasonCode::Success;
        self.end_conn(
            conn,
            now,
            End {
                will,
                send: None,
                reason: CloseReason::ClientDisconnect(d.reason_code),
            },
        );
    }

    // ----- state changes -----

    fn session(&self, sid: u32) -> Option<&session::Session> {
        self.sessions.get(sid as usize).and_then(Option::as_ref)
    }

    fn session_mut(&mut self, sid: u32) -> Option<&mut session::Session> {
        self.sessions.get_mut(sid as usize).and_then(Option::as_mut)
    }

    /// The real deadline of a timer entry now (`None`: nothing left to do).
    fn timer_deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::Conn(id) => self
                .conns
                .get(&id)
                .and_then(|c| conn_deadline(c, self.cfg.connect_timeout)),
            Timer::Session(sid) => self.session(sid).and_then(session_deadline),
            Timer::Throttle(id) => self.conns.get(&id).and_then(|c| c.rate.as_ref()?.wake_at),
        }
    }

    /// Whether `conn` must wait before its next PUBLISH ([`Limits::publish_rate`]); if not,
    /// the PUBLISH is counted against the rate.
    fn throttled(&mut self, conn: ConnId, now: Instant) -> bool {
        let rate = u64::from(self.cfg.limits.publish_rate);
        if rate == 0 {
            return false;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let t = c.rate.get_or_insert_with(Box::default);
        // One interval per PUBLISH, and a second's worth of them in a burst.
        let interval = (1_000_000 / rate).max(1);
        let burst = 1_000_000u64.saturating_sub(interval);
        let now_us = now.as_millis().saturating_mul(1000);
        if t.due_us > now_us.saturating_add(burst) {
            if t.wake_at.is_none() {
                let at = Instant::from_millis((t.due_us - burst).div_ceil(1000));
                t.wake_at = Some(at);
                self.timers.push(Reverse((at, Timer::Throttle(conn))));
                self.stats.publishers_throttled += 1;
            }
            return true;
        }
        t.due_us = t.due_us.max(now_us).saturating_add(interval);
        false
    }

    /// Brings the earliest timer entries up to date (dropping those with nothing left to do,
    /// moving those whose deadline moved later), so that `poll_timeout` is exact.
    fn settle_timers(&mut self) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            match self.timer_deadline(timer) {
                Some(real) if real == at => return,
                // Due already: `handle_timeout` acts on it.
                Some(real) if real < at => return,
                Some(real) => {
                    self.timers.pop();
                    self.timers.push(Reverse((real, timer)));
                }
                None => {
                    self.timers.pop();
                }
            }
        }
    }

    /// Puts a connection on the wake list (once).
    fn wake(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.woken
        {
            c.woken = true;
            self.woken.push_back(conn);
        }
    }

    fn record(&mut self, change: Change) {
        push_record(&mut self.records, &mut self.seq, change);
    }

    fn push_control(&mut self, conn: ConnId, ctl: Control) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.control.push_back(ctl);
            self.wake(conn);
        }
    }

    /// Queues an acknowledgment of a received publish, held if records before it are not
    /// durable yet.
    fn ack(&mut self, conn: ConnId, ctl: Control) {
        self.ack_message(conn, ctl, None, 0);
    }

    /// [`Broker::ack`] for the QoS 1 message `through`, whose ack may also go out once every
    /// persistent subscriber has acknowledged it: then it is delivered, which is what the
    /// durable record was for.
    fn ack_message(&mut self, conn: ConnId, ctl: Control, through: Option<u64>, unstored: u64) {
        let elsewhere = unstored != 0
            && self
                .siblings
                .as_ref()
                .is_some_and(|s| s.unstored.contains_key(&unstored));
        let disk = self.cfg.hold_acks_until_durable && self.seq > self.durable;
        if disk || elsewhere {
            // (Waiting only for the siblings, it needs no record: seq 0.)
            let seq = if disk { self.seq } else { 0 };
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held.push_back((seq, through, ctl, unstored));
                list(&mut self.waiting, c, conn);
            }
            self.release(conn);
        } else {
            if let Some(m) = through {
                self.outstanding.remove(&m);
            }
            self.push_control(conn, ctl);
        }
    }

    /// Moves `conn`'s held acks that may go out to its control queue.
    fn release(&mut self, conn: ConnId) {
        let durable = self.durable;
        let unstored = self.siblings.as_ref().map(|s| &s.unstored);
        let moved = self
            .conns
            .get_mut(&conn)
            .is_some_and(|c| release_held(c, durable, &mut self.outstanding, unstored));
        if moved {
            self.wake(conn);
        }
    }

    /// A delivery of message `id` to a persistent session was acknowledged.
    fn settle(&mut self, id: u64) {
        let Some(entry) = self.outstanding.get_mut(&id) else {
            return;
        };
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 == 0 {
            let publisher = entry.1;
            self.outstanding.remove(&id);
            if let Some(p) = publisher {
                self.release(p);
            }
        }
    }

    fn create_session(&mut self, client_id: &str, expiry: u32) -> u32 {
        let s = session::Session::new(Shared::from(client_id), expiry);
        if s.persistent {
            self.record(Change::SessionCreated {
                client_id: s.client_id.clone(),
                expiry,
            });
        }
        self.insert_session(s)
    }

    fn insert_session(&mut self, s: session::Session) -> u32 {
        let client_id = s.client_id.clone();
        let sid = match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.sessions.get_mut(i as usize) {
                    *slot = Some(s);
                }
                i
            }
            None => {
                self.sessions.push(Some(s));
                u32::try_from(self.sessions.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(client_id, sid);
        sid
    }

    /// Ends a session: its subscriptions and queues go; a pending will is published.
    fn delete_session(&mut self, now: Instant, sid: usize) {
        let Some(s) = self.sessions.get_mut(sid).and_then(Option::take) else {
            return;
        };
        self.free.push(u32::try_from(sid).unwrap_or(u32::MAX));
        self.by_id.remove(&s.client_id);
        let session = u32::try_from(sid).unwrap_or(u32::MAX);
        for &w in &s.waiters {
            self.let_go_waiter(w, session, now);
        }
        for (slot, sub) in s.subs.iter().enumerate() {
            let Some(sub) = sub else { continue };
            if let Ok(filter) = TopicFilter::new(&sub.filter) {
                let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                self.index.remove(filter, &SubKey { session, slot });
                self.count_filter(&sub.filter, sub.shared, false);
            }
        }
        self.queued_bytes = self.queued_bytes.saturating_sub(s.bytes);
        if s.persistent {
            self.record(Change::SessionEnded {
                client_id: s.client_id.clone(),
            });
        }
        // The session ends before the will delay passed: the will goes now.
        if let Some((msg, _)) = s.pending_will {
            self.publish_will(now, msg, s.persistent);
        }
    }

    fn fire_pending_will(&mut self, now: Instant, sid: usize) {
        let Some(s) = self.sessions.get_mut(sid).and_then(Option::as_mut) else {
            return;
        };
        let Some((msg, _)) = s.pending_will.take() else {
            return;
        };
        let recorded = s.persistent;
        if recorded {
            let change = Change::WillCleared {
                client_id: s.client_id.clone(),
            };
            self.record(change);
        }
        self.publish_will(now, msg, recorded);
    }

    /// Publishes a will; `recorded`: it was recorded as pending, and its removal with it.
    fn publish_will(&mut self, now: Instant, msg: Shared<Message>, recorded: bool) {
        if msg.retain {
            self.publish_retained(&msg);
        }
        // A will recorded as pending goes to the siblings exactly once: after a crash it is
        // either still pending (and not forwarded yet) or forwarding.
        let scope = Scope::Origin {
            conn: None,
            exact: recorded,
        };
        self.route(now, &msg, None, scope);
        self.unstage();
    }

    /// Sets or clears (empty payload) the retained message of a topic [MQTT-3.3.1-5, -6, -7];
    /// returns false if the retained store had no room for it.
    fn retain(&mut self, msg: Shared<Message>) -> bool {
        // A sibling records only the topics it owns: it announces them again after a restore
        // (`Broker::restore`), so the others need no records of their own.
        let unrecorded = msg.topic.starts_with('$') || !self.owns(&msg.topic);
        if msg.payload.is_empty() {
            if self.retained.clear(&msg.topic).is_some() && !unrecorded {
                self.record(Change::RetainedCleared {
                    topic: msg.topic.clone(),
                });
            }
        } else {
            let replaced = self.retained.get(&msg.topic).map_or(0, |m| m.size());
            let after = self.retained.bytes() - replaced.min(self.retained.bytes()) + msg.size();
            if after > self.cfg.limits.retained_bytes {
                self.stats.dropped.retained_full += 1;
                return false;
            }
            self.retained.set(msg.clone());
            if !unrecorded {
                self.record(Change::RetainedSet { message: msg });
            }
        }
        true
    }

    /// Ends a connection: queues its DISCONNECT, reports the close, detaches its session.
    fn end_conn(&mut self, conn: ConnId, now: Instant, end: End) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        if let (Some(rc), true) = (end.send, c.version.is_v5() && c.state == ConnState::Open) {
            c.control.push_back(Control::Disconnect(rc));
        }
        c.state = ConnState::Closed;
        for (_, through, _, _) in c.held.drain(..) {
            if let Some(m) = through {
                self.outstanding.remove(&m);
            }
        }
        c.resend.clear();
        c.pending = None;
        c.asked = false;
        let sid = c.session.take();
        self.wake(conn);
        self.events.push_back(Event::Close {
            conn,
            reason: end.reason,
        });
        if let Some(sid) = sid {
            self.detach_session(now, sid, end.will);
        }
    }

    /// The session's connection ended: publish or schedule its will, start its expiry.
    fn detach_session(&mut self, now: Instant, sid: u32, will: bool) {
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        s.conn = None;
        // Offline, it holds no publisher (its queue fills, then drops at the limits).
        self.relieve(sid, now);
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        let w = s.will.take().filter(|_| will);
        let expiry = s.expiry;
        let client_id = s.client_id.clone();
        let persistent = s.persistent;
        let will_msg = w.map(|w| {
            let delay = w.delay.min(expiry);
            let at = now + Duration::from_secs(u64::from(delay));
            let mut msg = w.msg;
            msg.id = self.new_msg_id();
            msg.expires_at = w.expiry.map(|e| at + Duration::from_secs(u64::from(e)));
            (Shared::new(msg), delay, at)
        });
        if expiry == 0 {
            self.delete_session(now, sid as usize);
            if let Some((msg, _, _)) = will_msg {
                self.publish_will(now, msg, false);
            }
            return;
        }
        if persistent {
            self.record(Change::SessionDisconnected {
                client_id: client_id.clone(),
                at: now,
            });
        }
        if let Some(s) = self.session_mut(sid) {
            s.expires_at = after_secs(now, expiry);
        }
        if let Some(at) = after_secs(now, expiry) {
            self.timers.push(Reverse((at, Timer::Session(sid))));
        }
        match will_msg {
            Some((msg, 0, _)) => self.publish_will(now, msg, false),
            Some((msg, _, at)) => {
                if persistent {
                    self.record(Change::WillPending {
                        client_id,
                        message: msg.clone(),
                        at,
                    });
                }
                if let Some(s) = self.session_mut(sid) {
                    s.pending_will = Some((msg, at));
                }
                self.timers.push(Reverse((at, Timer::Session(sid))));
            }
            None => {}
        }
    }

    /// Routes a message to every matching subscription; returns how many sessions got it
    /// here. Published here (`Scope::Origin`), it is forwarded to the siblings too.
    fn route(
        &mut self,
        now: Instant,
        msg: &Shared<Message>,
        origin: Option<u32>,
        scope: Scope<'_>,
    ) -> usize {
        let _ = now;
        let mut keys = core::mem::take(&mut self.scratch);
        keys.clear();
        self.index.for_each_match(&msg.topic, |k| keys.push(*k));
        keys.sort_unstable();
        let mut delivered = 0;
        let mut shared: Vec<(Box<str>, SubKey)> = Vec::new();
        let mut i = 0;
        while let Some(first) = keys.get(i) {
            let sid = first.session;
            let mut out: Option<Outgoing> = None;
            while let Some(k) = keys.get(i).filter(|k| k.session == sid) {
                i += 1;
                let Some(sub) = self.sub(*k) else { continue };
                if sub.shared {
                    shared.push((sub.filter.clone(), *k));
                    continue;
                }
                // No Local [MQTT-3.8.3-3].
                if sub.options.no_local && origin == Some(sid) {
                    continue;
                }
                let qos = msg.qos.min(sub.options.qos);
                // Retain As Published, else the flag is cleared [MQTT-3.3.1-12, -13].
                let retain = sub.options.retain_as_published && msg.retain;
                // Overlapping subscriptions: one copy at the highest QoS, with every
                // identifier [MQTT-3.3.4-2, -3].
                match &mut out {
                    Some(o) => {
                        o.qos = o.qos.max(qos);
                        o.retain |= retain;
                        if let Some(id) = sub.id {
                            let mut ids = core::mem::take(&mut o.ids).into_vec();
                            ids.push(id);
                            o.ids = ids.into_boxed_slice();
                        }
                    }
                    None => {
                        out = Some(Outgoing::new(
                            msg.clone(),
                            qos,
                            retain,
                            sub.id.into_iter().collect(),
                        ));
                    }
                }
            }
            if let Some(out) = out
                && self.deliver(sid, out)
            {
                delivered += 1;
            }
        }
        self.scratch = keys;
        shared.sort();
        if let Scope::Relayed { groups, .. } = scope {
            // Picked for a group that has no member here any more: the picker had not heard.
            let gone = groups
                .iter()
                .filter(|g| !shared.iter().any(|(f, _)| f == *g))
                .count();
            self.stats.dropped.member_left += u64::try_from(gone).unwrap_or(u64::MAX);
        }
        let mut start = 0;
        while let Some((filter, _)) = shared.get(start) {
            let end = shared
                .iter()
                .skip(start)
                .position(|(f, _)| f != filter)
                .map_or(shared.len(), |n| start + n);
            let members: Vec<SubKey> = shared
                .get(start..end)
                .unwrap_or_default()
                .iter()
                .map(|(_, k)| *k)
                .collect();
            let filter = filter.clone();
            if self.share_here(&filter, &members, msg, scope) {
                delivered += 1;
            }
            start = end;
        }
        if let (Scope::Origin { conn, exact }, Some(sib)) = (scope, self.siblings.as_mut()) {
            // Groups with members only elsewhere.
            let mut remote = Vec::new();
            sib.remote_groups(&msg.topic, &mut remote);
            for filter in remote {
                if shared.iter().any(|(f, _)| *f == filter) {
                    continue;
                }
                if let Some(Pick::There(to)) = sib.pick(&filter, 0) {
                    self.picked.push((to, filter));
                }
            }
            let picked = core::mem::take(&mut self.picked);
            // With acks held, the publisher's waits for every sibling's copy to be stored, and a
            // persistent session's QoS 2 message (its will too) is made exact.
            let held = self.cfg.hold_acks_until_durable;
            let exact = held && exact && msg.qos == QoS::ExactlyOnce;
            let confirm = held && msg.qos != QoS::AtMostOnce && (conn.is_some() || exact);
            let full = sib.publish(msg, conn, confirm, exact, &picked);
            // A sibling with too much of ours on its way holds the publisher until it took
            // some (its subscribers' back-pressure reaches here only that late).
            if let (Some(conn), true) = (conn, full != 0) {
                let keys = sib.wait_for_windows(conn, full);
                self.hold_for(conn, now, &keys);
            }
            self.picked = picked;
            self.picked.clear();
        }
        delivered
    }

    /// Whether a share group with `members` here gets this copy of the message here, and
    /// delivers it if so; published here with siblings, the group may be picked elsewhere.
    fn share_here(
        &mut self,
        filter: &str,
        members: &[SubKey],
        msg: &Shared<Message>,
        scope: Scope<'_>,
    ) -> bool {
        let Some(sib) = self.siblings.as_mut() else {
            return self.deliver_shared(filter, members, msg);
        };
        match scope {
            Scope::Local => self.deliver_shared(filter, members, msg),
            Scope::Relayed {
                from,
                groups,
                known,
            } => {
                let named = groups.iter().any(|g| &**g == filter);
                let unknown = !known.iter().any(|g| &**g == filter);
                (named || (unknown && sib.serves_unknown(filter, from)))
                    && self.deliver_shared(filter, members, msg)
            }
            Scope::Origin { .. } => {
                let local = u32::try_from(members.len()).unwrap_or(u32::MAX);
                let me = sib.me.index;
                match sib.pick(filter, local) {
                    Some(Pick::There(to)) => {
                        self.picked.push((to, Box::from(filter)));
                        false
                    }
                    _ => {
                        // A member here with an open window, else one elsewhere, else any
                        // member here that can queue it.
                        let other = sib.other_member(filter, me);
                        let strict = other.is_some();
                        if self.deliver_shared_within(filter, members, msg, strict) {
                            self.picked.push((me, Box::from(filter)));
                            return true;
                        }
                        if let Some(to) = other {
                            self.picked.push((to, Box::from(filter)));
                        } else {
                            self.picked.push((me, Box::from(filter)));
                        }
                        false
                    }
                }
            }
        }
    }

    /// Gives a message to one member of a share group: round-robin, skipping members whose
    /// window is full, then those offline, before dropping it.
    fn deliver_shared(&mut self, filter: &str, members: &[SubKey], msg: &Shared<Message>) -> bool {
        self.deliver_shared_within(filter, members, msg, false)
    }

    /// [`Broker::deliver_shared`]; `open_only`: only to a member whose window is open (and
    /// nothing is counted as dropped when none is).
    fn deliver_shared_within(
        &mut self,
        filter: &str,
        members: &[SubKey],
        msg: &Shared<Message>,
        open_only: bool,
    ) -> bool {
        let n = members.len();
        if n == 0 {
            return false;
        }
        let cursor = self.share_cursor.get(filter).copied().unwrap_or(0) % n;
        let size = msg.size();
        let passes = if open_only { 1 } else { 3 };
        for pass in 0..passes {
            for j in 0..n {
                let idx = (cursor + j) % n;
                let Some(&k) = members.get(idx) else { continue };
                let Some(s) = self.session(k.session) else {
                    continue;
                };
                let online = s.conn.and_then(|c| self.conns.get(&c));
                let fits = self.fits(s, size);
                let ok = match pass {
                    0 => online.is_some_and(|c| s.held() < usize::from(c.client_receive_max)),
                    1 => online.is_some(),
                    _ => msg.qos != QoS::AtMostOnce,
                } && fits;
                if !ok {
                    continue;
                }
                let Some(sub) = self.sub(k) else { continue };
                let out = Outgoing::new(
                    msg.clone(),
                    msg.qos.min(sub.options.qos),
                    sub.options.retain_as_published && msg.retain,
                    sub.id.into_iter().collect(),
                );
                self.share_cursor.insert(Box::from(filter), idx + 1);
                return self.deliver(k.session, out);
            }
        }
        if !open_only {
            self.stats.dropped.session_full += 1;
        }
        false
    }

    fn fits(&self, s: &session::Session, size: usize) -> bool {
        let l = &self.cfg.limits;
        s.held() < l.session_messages
            && s.bytes + size <= l.session_bytes
            && self.queued_bytes + size <= l.total_bytes
    }

    fn sub(&self, k: SubKey) -> Option<&Sub> {
        self.session(k.session)?.subs.get(k.slot as usize)?.as_ref()
    }

    /// Queues a message for one session, within the limits; returns whether it was queued.
    fn deliver(&mut self, sid: u32, out: Outgoing) -> bool {
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
            return false;
        };
        if let Some(a) = self.authorizer.as_mut() {
            let info = ClientInfo {
                client_id: &s.client_id,
                username: s.username.as_deref(),
            };
            if !a.allow(info, &out.msg.topic, Action::Receive) {
                self.stats.dropped.not_authorized += 1;
                return false;
            }
        }
        if s.conn.is_none() && out.qos == QoS::AtMostOnce {
            self.stats.dropped.offline_qos0 += 1;
            return false;
        }
        let size = out.size();
        let l = &self.cfg.limits;
        if s.held() >= l.session_messages || s.bytes + size > l.session_bytes {
            self.stats.dropped.session_full += 1;
            return false;
        }
        if self.queued_bytes + size > l.total_bytes {
            self.stats.dropped.total_full += 1;
            return false;
        }
        s.bytes += size;
        self.queued_bytes += size;
        if self.cfg.records && s.persistent && out.qos != QoS::AtMostOnce {
            if self.tracking == Some(out.msg.id) {
                let e = self
                    .outstanding
                    .entry(out.msg.id)
                    .or_insert((0, None, false));
                e.0 += 1;
                e.2 |= s.conn.is_none();
            }
            let change = Change::Queued {
                client_id: s.client_id.clone(),
                message: out.msg.clone(),
                qos: out.qos,
                retain: out.retain,
                identifiers: out.ids.to_vec(),
            };
            push_record(&mut self.records, &mut self.seq, change);
        }
        s.queue.push_back(out);
        if l.backpressure_ms > 0
            && s.conn.is_some()
            && !s.stalled
            && s.above(2, l.session_messages, l.session_bytes)
            && !self.pressing.contains(&sid)
        {
            self.pressing.push(sid);
        }
        if let Some(c) = s.conn {
            self.wake(c);
        }
        true
    }

    /// Holds the publisher `conn` if its publish pressed a session (see
    /// [`Limits::backpressure_ms`]): it is not read from until one of them drains.
    fn hold(&mut self, conn: ConnId, now: Instant) {
        if self.pressing.is_empty() {
            return;
        }
        let me = self.cfg.shard.index;
        let mut pressing = core::mem::take(&mut self.pressing);
        let keys: Vec<(u16, u32)> = pressing.iter().map(|&sid| (me, sid)).collect();
        for &sid in &pressing {
            if let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) {
                s.add_waiter((me, conn));
            }
        }
        self.hold_for(conn, now, &keys);
        // The vector goes back, emptied, so that routing does not allocate one per publish.
        pressing.clear();
        self.pressing = pressing;
    }

    /// Holds publisher `conn` until every session named (sibling, slot) lets it go, or the
    /// back-pressure wait ends.
    fn hold_for(&mut self, conn: ConnId, now: Instant, keys: &[(u16, u32)]) {
        let end = now + self.backpressure_wait();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.hold.is_none() {
            self.stats.publishers_held += 1;
            // One entry per connection at most: an earlier one still queued comes up first
            // and moves itself to this hold's end.
            if !c.hold_armed {
                self.holds.push(Reverse((end, conn)));
                c.hold_armed = true;
            }
        }
        let hold = c.hold.get_or_insert_with(|| {
            Box::new(session::Hold {
                since: now,
                sessions: Vec::new(),
            })
        });
        for key in keys {
            if !hold.sessions.contains(key) {
                hold.sessions.push(*key);
            }
        }
    }

    /// How long back-pressure holds a publisher at most.
    fn backpressure_wait(&self) -> Duration {
        Duration::from_millis(u64::from(self.cfg.limits.backpressure_ms))
    }

    /// Lets the publishers that session `sid` holds go, once it drained below a quarter of its
    /// limits or went offline.
    fn relieve(&mut self, sid: u32, now: Instant) {
        let l = &self.cfg.limits;
        let (messages, bytes) = (l.session_messages, l.session_bytes);
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        // (Called for every acknowledgment: most sessions hold no one and never stalled.)
        if (s.waiters.is_empty() && !s.stalled) || (s.conn.is_some() && s.above(4, messages, bytes))
        {
            return;
        }
        s.stalled = false;
        for w in core::mem::take(&mut s.waiters) {
            self.let_go_waiter(w, sid, now);
        }
    }

    /// Session `sid` here holds publisher `w` no longer: let it go here, or tell its sibling.
    fn let_go_waiter(&mut self, (from, conn): (u16, ConnId), sid: u32, now: Instant) {
        let me = self.cfg.shard.index;
        if from == me {
            self.let_go(conn, (me, sid), now);
        } else if let Some(sib) = self.siblings.as_mut() {
            sib.answer(from, Relay::Relieve { conn, session: sid });
        }
    }

    /// Session `key` (sibling, slot) no longer holds publisher `conn`; it goes on when no
    /// session does.
    fn let_go(&mut self, conn: ConnId, key: (u16, u32), now: Instant) {
        let Some(h) = self.conns.get_mut(&conn).and_then(|c| c.hold.as_mut()) else {
            return;
        };
        h.sessions.retain(|s| *s != key);
        if h.sessions.is_empty() {
            self.unhold(conn, now);
        }
    }

    /// A held publisher goes on: what it sent meanwhile is read when its runtime is woken.
    fn unhold(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.hold.take().is_some() {
            // Its packets waited in our buffers, not on the network: not a silence.
            c.last_rx = c.last_rx.max(now);
            self.wake(conn);
        }
    }

    /// Publishes the `$SYS/broker/...` counters as retained QoS 0 messages.
    fn publish_sys(&mut self, now: Instant) {
        let mut st = self.stats();
        if let Some(sib) = self.siblings.as_mut() {
            // The counters of the whole server: ours now, the others' as they last sent them.
            sib.answers.push_back(shard::Forward {
                to: None,
                relay: Relay::Counters(Box::new(st)),
            });
            let me = usize::from(sib.me.index);
            for (i, other) in sib.counters.iter().enumerate() {
                if i != me {
                    st.merge(other);
                }
            }
        }
        let values: [(&str, u64); 9] = [
            ("clients/connected", st.clients_connected as u64),
            ("sessions", st.sessions as u64),
            ("subscriptions/count", st.subscriptions as u64),
            ("messages/received", st.messages_received),
            ("messages/sent", st.messages_sent),
            ("messages/dropped", st.dropped.total()),
            ("retained messages/count", st.retained as u64),
            ("store/messages/count", st.queued_messages as u64),
            ("store/messages/bytes", st.queued_bytes as u64),
        ];
        for (name, value) in values {
            let mut topic = String::from("$SYS/broker/");
            topic.push_str(name);
            let payload = format!("{value}");
            let id = self.new_msg_id();
            let msg = Shared::new(Message {
                id,
                topic: topic.into_boxed_str(),
                payload: payload.into_bytes().into_boxed_slice(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                expires_at: None,
            });
            self.retain(msg.clone());
            self.route(now, &msg, None, Scope::Local);
        }
    }

    /// Whether this broker orders the retained messages of `topic` (alone: every topic).
    fn owns(&self, topic: &str) -> bool {
        self.siblings
            .as_ref()
            .is_none_or(|s| s.me.owner(topic) == s.me.index)
    }

    /// A new message id, unique among the siblings (each takes every `count`-th).
    fn new_msg_id(&mut self) -> u64 {
        let id = self.next_msg;
        self.next_msg += u64::from(self.cfg.shard.count.max(1));
        id
    }

    /// The next message id this broker would give.
    pub fn next_message_id(&self) -> u64 {
        self.next_msg
    }

    /// Gives no message an id at or below `id` from now on. Restored siblings call it with
    /// the highest [`Broker::next_message_id`] among them: a sibling's store keeps other
    /// siblings' messages too, and an id one of them still holds must not name a new message.
    pub fn skip_message_ids(&mut self, id: u64) {
        self.restored_msg_id(id);
    }

    /// The next message id after one restored, among this sibling's.
    fn restored_msg_id(&mut self, id: u64) {
        let step = u64::from(self.cfg.shard.count.max(1));
        let mine = u64::from(self.cfg.shard.index) + 1;
        // The first of this sibling's ids (`mine + k * step`) above `id`.
        let next = if id < mine {
            mine
        } else {
            mine + ((id - mine) / step + 1) * step
        };
        self.next_msg = self.next_msg.max(next);
    }

    /// A retained publish: stored here alone, else by its topic's owner, which tells the
    /// others (so all apply a topic's changes in one order).
    fn publish_retained(&mut self, msg: &Shared<Message>) {
        let owner = match &self.siblings {
            None => true,
            Some(s) => s.me.owner(&msg.topic) == s.me.index,
        };
        if owner
            && self.retain(msg.clone())
            && let Some(s) = self.siblings.as_mut()
        {
            s.retain(msg.clone());
        }
    }

    /// Routes a message sibling `from` forwarded to the subscribers here.
    fn take_forward(
        &mut self,
        now: Instant,
        from: u16,
        msg: &Shared<Message>,
        origin: Option<ConnId>,
        groups: &[Box<str>],
        known: &[Box<str>],
    ) {
        if msg.retain {
            self.publish_retained(msg);
        }
        let scope = Scope::Relayed {
            from,
            groups,
            known,
        };
        self.route(now, msg, None, scope);
        // The sessions it pressed hold its publisher on its own sibling, once each.
        let pressing = core::mem::take(&mut self.pressing);
        for &sid in &pressing {
            let (Some(conn), Some(s)) = (origin, self.session_mut(sid)) else {
                continue;
            };
            if !s.add_waiter((from, conn)) {
                continue;
            }
            if let Some(sib) = self.siblings.as_mut() {
                sib.answer(from, Relay::Press { conn, session: sid });
            }
        }
        self.pressing = pressing;
        self.pressing.clear();
    }

    /// Records the staged forwards of the QoS 2 message just published, which go out once
    /// that record (and every one before it) is durable.
    fn unstage(&mut self) {
        let Some(sib) = self.siblings.as_mut().filter(|s| !s.staged.is_empty()) else {
            return;
        };
        // The record made next.
        if let Some(p) = sib.unstage(self.seq + 1) {
            self.record(Change::Forwarding {
                message: p.msg,
                targets: p.targets,
                known: p.known,
            });
        }
    }

    /// Something a sibling forwarded ([`Broker::poll_forward`] on sibling `from`); drain
    /// [`Broker::poll_wake`] after it.
    pub fn handle_forward(&mut self, now: Instant, from: u16, relay: Relay) {
        match relay {
            Relay::Publish {
                msg,
                origin,
                confirm,
                groups,
                known,
                exact,
            } => {
                let Some(sib) = self.siblings.as_mut() else {
                    return;
                };
                sib.took_one(from);
                // Forwarded again after the sender's restart: taken already.
                let again = exact && sib.seen.contains(&msg.id);
                if !again {
                    self.take_forward(now, from, &msg, origin, &groups, &known);
                }
                if exact
                    && !again
                    && let Some(sib) = self.siblings.as_mut()
                {
                    // After its copies: in a torn record stream, a copy twice, never none.
                    sib.seen.insert(msg.id);
                    self.record(Change::ForwardSeen { message_id: msg.id });
                }
                if confirm && let Some(sib) = self.siblings.as_mut() {
                    if self.seq > self.durable {
                        sib.to_confirm.push_back((self.seq, from, msg.id));
                    } else {
                        sib.answer(from, Relay::Stored { id: msg.id });
                    }
                }
            }
            Relay::Horizon { below } => {
                let Some(sib) = self.siblings.as_mut() else {
                    return;
                };
                let gone: Vec<u64> = sib
                    .seen
                    .range(..below)
                    .copied()
                    .filter(|&id| sib.origin(id) == from)
                    .collect();
                for id in &gone {
                    sib.seen.remove(id);
                }
                for message_id in gone {
                    self.record(Change::ForwardForgotten { message_id });
                }
            }
            Relay::Stored { id } => {
                let done = self.siblings.as_mut().and_then(|sib| {
                    let e = sib.unstored.get_mut(&id)?;
                    e.left = e.left.saturating_sub(1);
                    if e.left > 0 {
                        return None;
                    }
                    sib.unstored.remove(&id)
                });
                let Some(done) = done else { return };
                if done.exact {
                    self.record(Change::Forwarded { message_id: id });
                    // Once that is durable, the siblings may forget having taken it (and
                    // every older one).
                    let seq = self.seq;
                    if let Some(sib) = self.siblings.as_mut() {
                        sib.advance_horizon(seq);
                    }
                }
                if let Some(conn) = done.publisher {
                    self.release(conn);
                }
            }
            Relay::Took { n } => {
                let waiters = self.siblings.as_mut().map(|s| s.took(from, n));
                for conn in waiters.unwrap_or_default() {
                    self.let_go(conn, (from, shard::WINDOW_KEY), now);
                }
            }
            Relay::Press { conn, session } => self.hold_for(conn, now, &[(from, session)]),
            Relay::Relieve { conn, session } => self.let_go(conn, (from, session), now),
            Relay::Retain(msg) => {
                self.retain(msg);
            }
            Relay::Counters(st) => {
                let slot = self
                    .siblings
                    .as_mut()
                    .and_then(|s| s.counters.get_mut(usize::from(from)));
                if let Some(slot) = slot {
                    *slot = *st;
                }
            }
            Relay::Group {
                filter,
                members,
                token,
            } => {
                if let Some(s) = self.siblings.as_mut() {
                    s.remote_members(from, &filter, members);
                    if token != 0 {
                        s.answer(from, Relay::Stored { id: token });
                    }
                }
            }
            Relay::Interest { filter, on, token } => {
                if let Some(s) = self.siblings.as_mut() {
                    s.remote_interest(from, &filter, on);
                    if token != 0 {
                        s.answer(from, Relay::Stored { id: token });
                    }
                }
            }
        }
    }

    /// The next thing to tell the siblings (none without them). Hand each to its sibling's
    /// [`Broker::handle_forward`] in the order they come.
    pub fn poll_forward(&mut self) -> Option<shard::Forward> {
        let sib = self.siblings.as_mut()?;
        sib.report_taken();
        if let Some(f) = sib.answers.pop_front() {
            return Some(f);
        }
        // A QoS 2 message's forwards wait for its records (see `Siblings::publish`), and what
        // follows them waits too, to keep the order.
        if sib.out.front()?.0 > self.durable {
            return None;
        }
        sib.out.pop_front().map(|(_, f)| f)
    }

    /// Counts a local subscription on `filter` in or out, for the siblings (a member of a
    /// share group, or interest in a plain filter). During a SUBSCRIBE, what it tells them is
    /// answered, and the SUBACK waits for the answers.
    fn count_filter(&mut self, filter: &str, shared: bool, joined: bool) {
        let Some(s) = self.siblings.as_mut() else {
            return;
        };
        let token = if joined { self.sub_token } else { 0 };
        let told = if shared {
            s.member(filter, joined, token);
            true
        } else {
            s.interest(filter, joined, token)
        };
        if told && token != 0 {
            self.sub_token_relays += 1;
        }
    }
}

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A connection's connect timeout or keep-alive.
    Conn(ConnId),
    /// A throttled connection may be read again.
    Throttle(ConnId),
    /// A session's will delay or expiry.
    Session(u32),
}

/// When a connection must have sent something.
fn conn_deadline(c: &Conn, connect_timeout: Duration) -> Option<Instant> {
    match c.state {
        ConnState::AwaitConnect | ConnState::Authenticating => Some(c.opened + connect_timeout),
        ConnState::Open if c.keep_alive_ms > 0 => {
            Some(c.last_rx + Duration::from_millis(c.keep_alive_ms))
        }
        _ => None,
    }
}

/// The next moment a session's will or expiry is due.
fn session_deadline(s: &session::Session) -> Option<Instant> {
    let will = s.pending_will.as_ref().map(|(_, at)| *at);
    let expiry = s.expires_at.filter(|_| s.conn.is_none());
    will.into_iter().chain(expiry).min()
}

/// Drops the message at the head of a session's queue unsent, recording it if persisted.
fn drop_front(
    s: &mut session::Session,
    records: &mut VecDeque<Record>,
    seq: &mut u64,
    queued_bytes: &mut usize,
) {
    let Some(out) = s.queue.pop_front() else {
        return;
    };
    release(&mut s.bytes, queued_bytes, out.size());
    if s.persistent && out.qos != QoS::AtMostOnce {
        let change = Change::Dropped {
            client_id: s.client_id.clone(),
            message_id: out.msg.id,
        };
        push_record(records, seq, change);
    }
}

/// Puts connection `id` in the list of those that wait for the disk, once.
fn list(waiting: &mut Vec<ConnId>, c: &mut Conn, id: ConnId) {
    if !c.listed {
        c.listed = true;
        waiting.push(id);
    }
}

/// A QoS 1 message's deliveries to persistent sessions not yet acknowledged, its publisher's
/// connection, and whether one went to an offline session.
type Outstanding = (u32, Option<ConnId>, bool);

/// Moves a connection's held acks that may go out, in order, to its control queue: those
/// whose records are durable, and those of QoS 1 messages that every persistent subscriber
/// has acknowledged; with siblings, only once each sibling stored its copies (`unstored`).
/// Whether any moved.
fn release_held(
    c: &mut Conn,
    durable: u64,
    outstanding: &mut BTreeMap<u64, Outstanding>,
    unstored: Option<&BTreeMap<u64, shard::Unstored>>,
) -> bool {
    let mut moved = false;
    while let Some((seq, through, _, m)) = c.held.front() {
        let delivered = through.is_some_and(|m| !outstanding.contains_key(&m));
        if *seq > durable && !delivered {
            break;
        }
        if *m != 0 && unstored.is_some_and(|u| u.contains_key(m)) {
            break;
        }
        if let Some((_, through, ack, _)) = c.held.pop_front() {
            if let Some(m) = through {
                outstanding.remove(&m);
            }
            c.control.push_back(ack);
            moved = true;
        }
    }
    moved
}

fn push_record(records: &mut VecDeque<Record>, seq: &mut u64, change: Change) {
    *seq += 1;
    records.push_back(Record { seq: *seq, change });
}

fn release(session_bytes: &mut usize, total: &mut usize, size: usize) {
    *session_bytes = session_bytes.saturating_sub(size);
    *total = total.saturating_sub(size);
}

/// The properties of a PUBLISH to a subscriber: the pass-through ones, the remaining expiry
/// [MQTT-3.3.2-6] and the subscription identifiers.
fn publish_properties<'a>(out: &'a Outgoing, now: Instant) -> Vec<Property<'a>> {
    let mut props = Vec::new();
    out.msg.properties.push_into(&mut props);
    if let Some(secs) = out.msg.remaining_secs(now) {
        props.push(Property::MessageExpiryInterval(secs));
    }
    props.extend(
        out.ids
            .iter()
            .map(|id| Property::SubscriptionIdentifier(*id)),
    );
    props
}

fn publish_packet<'a>(
    out: &'a Outgoing,
    version: ProtocolVersion,
    packet_id: Option<PacketId>,
    dup: bool,
    alias: Alias,
    props: &'a [Property<'a>],
) -> Packet<'a> {
    Packet::Publish(Publish {
        dup,
        qos: out.qos,
        retain: out.retain,
        // An alias the client has stands for the topic: the name is left empty.
        topic: if matches!(alias, Alias::Known(_)) {
            ""
        } else {
            &out.msg.topic
        },
        packet_id,
        properties: if version.is_v5() {
            Properties::new(props)
        } else {
            Properties::EMPTY
        },
        payload: &out.msg.payload,
    })
}

fn encode_publish(
    out: &Outgoing,
    version: ProtocolVersion,
    packet_id: Option<PacketId>,
    dup: bool,
    alias: Alias,
    now: Instant,
    buf: &mut [u8],
) -> Result<usize, Enc> {
    // Before 5.0 a PUBLISH has no properties: the message's are not even read (they sit on
    // cache lines of their own, and a fan-out reads each message once per subscriber).
    let mut props = if version.is_v5() {
        publish_properties(out, now)
    } else {
        Vec::new()
    };
    if let Alias::Set(n) | Alias::Known(n) = alias {
        props.push(Property::TopicAlias(n));
    }
    encode(
        &publish_packet(out, version, packet_id, dup, alias, &props),
        version,
        buf,
    )
}

/// A PUBLISH of `topic` went out with `alias`.
fn assign(c: &mut Conn, alias: Alias, topic: &str) {
    if let Some(a) = c.out_aliases.as_deref_mut() {
        a.assign(topic, alias);
    }
}

/// Why a packet was not encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    /// The buffer needs this many bytes.
    Small(usize),
    /// The packet cannot be expressed in the connection's protocol version.
    Invalid,
}

fn encode(packet: &Packet<'_>, version: ProtocolVersion, buf: &mut [u8]) -> Result<usize, Enc> {
    packet.encode(version, buf).map_err(|e| match e {
        mqtt_proto::EncodeError::BufferTooSmall { needed } => Enc::Small(needed),
        _ => Enc::Invalid,
    })
}

/// A PUBREL (success) for `pid`.
fn encode_pubrel(
    pid: PacketId,
    version: ProtocolVersion,
    cfg: &Config,
    buf: &mut [u8],
) -> Result<usize, Enc> {
    encode_control(
        &Control::PubRel(pid, ReasonCode::Success),
        version,
        cfg,
        buf,
    )
}

fn encode_control(
    ctl: &Control,
    version: ProtocolVersion,
    cfg: &Config,
    buf: &mut [u8],
) -> Result<usize, Enc> {
    let v5 = version.is_v5();
    let mut props: Vec<Property<'_>> = Vec::new();
    let code_for = |rc: ReasonCode| if v5 { rc } else { ReasonCode::Success };
    let packet = match ctl {
        Control::ConnAck {
            present,
            code,
            assigned,
            keep_alive,
            expiry,
            auth,
            response_info,
        } => {
            if v5 && *code == ReasonCode::Success {
                if cfg.maximum_qos != QoS::ExactlyOnce {
                    props.push(Property::MaximumQoS(cfg.maximum_qos));
                }
                if let (true, Some(info)) = (*response_info, &cfg.response_information) {
                    props.push(Property::ResponseInformation(info));
                }
                if cfg.receive_maximum != u16::MAX {
                    props.push(Property::ReceiveMaximum(cfg.receive_maximum.max(1)));
                }
                if cfg.topic_alias_maximum > 0 {
                    props.push(Property::TopicAliasMaximum(cfg.topic_alias_maximum));
                }
                props.push(Property::MaximumPacketSize(cfg.max_packet_size.max(1)));
                if !cfg.retain_available {
                    props.push(Property::RetainAvailable(false));
                }
                if !cfg.wildcard_subscriptions {
                    props.push(Property::WildcardSubscriptionAvailable(false));
                }
                if !cfg.shared_subscriptions {
                    props.push(Property::SharedSubscriptionAvailable(false));
                }
                if let Some(id) = assigned {
                    props.push(Property::AssignedClientIdentifier(id));
                }
                if let Some(ka) = keep_alive {
                    props.push(Property::ServerKeepAlive(*ka));
                }
                if let Some(e) = expiry {
                    props.push(Property::SessionExpiryInterval(*e));
                }
                if let Some((method, data)) = auth {
                    props.push(Property::AuthenticationMethod(method));
                    if let Some(d) = data {
                        props.push(Property::AuthenticationData(d));
                    }
                }
            }
            Packet::ConnAck(ConnAck {
                session_present: *present,
                reason_code: *code,
                properties: Properties::new(&props),
            })
        }
        Control::PubAck(id, rc) => Packet::PubAck(Ack::with_reason(*id, code_for(*rc))),
        Control::PubRec(id, rc) => Packet::PubRec(Ack::with_reason(*id, code_for(*rc))),
        Control::PubRel(id, rc) => Packet::PubRel(Ack::with_reason(*id, code_for(*rc))),
        Control::PubComp(id, rc) => Packet::PubComp(Ack::with_reason(*id, code_for(*rc))),
        Control::SubAck(id, codes) => Packet::SubAck(SubAck::new(*id, codes)),
        Control::UnsubAck(id, codes) => Packet::UnsubAck(UnsubAck::new(*id, codes)),
        Control::PingResp => Packet::PingResp,
        Control::Disconnect(rc) => Packet::Disconnect(Disconnect::new(*rc)),
        Control::Auth(rc, method, data) => {
            props.push(Property::AuthenticationMethod(method));
            if let Some(d) = data {
                props.push(Property::AuthenticationData(d));
            }
            Packet::Auth(Auth::new(*rc, Properties::new(&props)))
        }
    };
    encode(&packet, version, buf)
}

/// A rejected configuration file: the 1-based line number and what is wrong there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineError<K> {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with that line.
    pub kind: K,
}

impl<K: fmt::Display> fmt::Display for LineError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl<K: fmt::Display + fmt::Debug> core::error::Error for LineError<K> {}

/// The lines of a mosquitto-style file that hold something: 1-based number and trimmed text,
/// without blank lines and `#` comments.
fn statements(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| (index + 1, line))
}
