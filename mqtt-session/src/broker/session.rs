//! The state the broker keeps per session and per connection.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use mqtt_proto::{PacketId, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

use super::ConnId;
use super::message::{Message, Shared};
use crate::{Instant, PacketIds};

/// The router key of one subscription: its session's slot and its slot in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SubKey {
    pub(crate) session: u32,
    pub(crate) slot: u32,
}

/// One subscription of a session.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    /// The filter as subscribed, `$share/{group}/` included.
    pub(crate) filter: Box<str>,
    /// Whether it is a shared subscription.
    pub(crate) shared: bool,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// A message on its way to one session: how it goes out there.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) msg: Shared<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// The message's [`Message::size`], kept here: an acknowledgment then releases the bytes
    /// without reading the message (cold by then, and shared with other cores).
    size: u32,
    /// Its subscription identifiers (boxed: most have none, and in-flight entries are
    /// looked up once per acknowledgment, so their size is cache misses).
    pub(crate) ids: Box<[u32]>,
}

impl Outgoing {
    pub(crate) fn new(msg: Shared<Message>, qos: QoS, retain: bool, ids: Vec<u32>) -> Self {
        let size = u32::try_from(msg.size()).unwrap_or(u32::MAX);
        Outgoing {
            msg,
            qos,
            retain,
            size,
            ids: ids.into_boxed_slice(),
        }
    }

    /// The bytes it costs its session's limits.
    pub(crate) fn size(&self) -> usize {
        self.size as usize
    }
}

/// Where a sent QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// Waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREC received; PUBREL sent (or owed), waiting for PUBCOMP.
    AwaitComp,
}

/// A sent, unacknowledged message.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub(crate) out: Outgoing,
    pub(crate) state: OutState,
    /// Send order, for redelivery in the original order.
    pub(crate) order: u64,
    /// Sequence number of its `Sent` record (0: none). With acks held until durable, a QoS 2
    /// message is written only once that record is durable, so that a restart resends it
    /// with the same packet id (the subscriber's duplicate check) instead of a new one.
    pub(crate) seq: u64,
}

/// A will as CONNECT gave it: published (with its expiry counted from then) when due.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) msg: Message,
    pub(crate) delay: u32,
    pub(crate) expiry: Option<u32>,
}

/// A session's in-flight messages by packet id: looked up, added and removed once per message
/// (a B-tree's node moves of these entries were about a sixth of a QoS 1 fan-out's time).
/// The hash is fixed: the ids are the broker's own, not chosen by a client. Iteration order is
/// arbitrary; whoever needs one sorts.
pub(crate) type InflightMap = hashbrown::HashMap<PacketId, Inflight, foldhash::fast::FixedState>;

/// The session of one client identifier: what outlives its connections.
#[derive(Debug)]
pub(crate) struct Session {
    /// Shared with every record that names the session (a clone is a count, not a copy).
    pub(crate) client_id: Shared<str>,
    pub(crate) username: Option<Box<str>>,
    pub(crate) conn: Option<ConnId>,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub(crate) expiry: u32,
    /// Whether its changes are reported for persistence (created with an expiry above 0).
    pub(crate) persistent: bool,
    /// When it expires, while its client is offline.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) subs: Vec<Option<Sub>>,
    pub(crate) queue: VecDeque<Outgoing>,
    pub(crate) inflight: InflightMap,
    pub(crate) ids: PacketIds,
    /// The next packet id to release with a PUBREL before anything new goes out, and how
    /// many are left: set by a restore from records that may miss the last ones, to the ids
    /// the allocator hands out next (those a lost record may have used already).
    pub(crate) retire: u16,
    pub(crate) retire_left: u16,
    pub(crate) order: u64,
    /// Bytes of `queue` and `inflight`.
    pub(crate) bytes: usize,
    /// QoS 2 packet ids received and not yet released.
    pub(crate) rx_qos2: BTreeSet<PacketId>,
    /// The will of the current connection.
    pub(crate) will: Option<Box<Will>>,
    /// A will waiting for its delay after the connection ended.
    pub(crate) pending_will: Option<(Shared<Message>, Instant)>,
    /// Publishers held until this session drains (back-pressure): (sibling, connection) of
    /// each (its own sibling's index for one here).
    pub(crate) waiters: Vec<(u16, ConnId)>,
    /// It made no room in time: it holds no publisher until it has drained.
    pub(crate) stalled: bool,
}

impl Session {
    pub(crate) fn new(client_id: Shared<str>, expiry: u32) -> Self {
        Session {
            client_id,
            username: None,
            conn: None,
            expiry,
            persistent: expiry > 0,
            expires_at: None,
            subs: Vec::new(),
            queue: VecDeque::new(),
            inflight: InflightMap::default(),
            ids: PacketIds::new(),
            retire: 0,
            retire_left: 0,
            order: 0,
            bytes: 0,
            rx_qos2: BTreeSet::new(),
            will: None,
            pending_will: None,
            waiters: Vec::new(),
            stalled: false,
        }
    }

    /// Messages held (queued and in flight).
    /// Holds publisher `w` too; whether it was not held already.
    pub(crate) fn add_waiter(&mut self, w: (u16, ConnId)) -> bool {
        let new = !self.waiters.contains(&w);
        if new {
            self.waiters.push(w);
        }
        new
    }

    pub(crate) fn held(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Whether it holds more than `1 / share` of its limits, in messages or bytes.
    pub(crate) fn above(&self, share: usize, messages: usize, bytes: usize) -> bool {
        self.held() * share > messages || self.bytes * share > bytes
    }

    /// The slot of the subscription with exactly this filter.
    pub(crate) fn find_sub(&self, filter: &str) -> Option<usize> {
        self.subs
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| &*s.filter == filter))
    }

    /// Stores a subscription in a free slot, returning the slot.
    pub(crate) fn add_sub(&mut self, sub: Sub) -> usize {
        match self.subs.iter().position(Option::is_none) {
            Some(i) => {
                if let Some(s) = self.subs.get_mut(i) {
                    *s = Some(sub);
                }
                i
            }
            None => {
                self.subs.push(Some(sub));
                self.subs.len() - 1
            }
        }
    }

    /// The next send order number.
    pub(crate) fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }
}

/// The state of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Waiting for CONNECT.
    AwaitConnect,
    /// CONNECT received; the runtime is answering [`super::Question`]s.
    Authenticating,
    /// CONNACK accepted the connection.
    Open,
    /// Ended: only what `poll_transmit` still holds goes out.
    Closed,
}

/// An authentication method with optional data.
pub(crate) type AuthData = (Box<str>, Option<Box<[u8]>>);

/// A small packet the broker owes a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    ConnAck {
        present: bool,
        code: ReasonCode,
        assigned: Option<Box<str>>,
        keep_alive: Option<u16>,
        expiry: Option<u32>,
        auth: Option<AuthData>,
        /// The client asked for Response Information.
        response_info: bool,
    },
    PubAck(PacketId, ReasonCode),
    PubRec(PacketId, ReasonCode),
    PubRel(PacketId, ReasonCode),
    PubComp(PacketId, ReasonCode),
    SubAck(PacketId, Vec<ReasonCode>),
    UnsubAck(PacketId, Vec<ReasonCode>),
    PingResp,
    Disconnect(ReasonCode),
    Auth(ReasonCode, Box<str>, Option<Box<[u8]>>),
}

/// What CONNECT asked for, kept while the runtime authenticates.
#[derive(Debug, Clone)]
pub(crate) struct PendingConnect {
    pub(crate) client_id: Box<str>,
    pub(crate) assigned: bool,
    pub(crate) clean_start: bool,
    pub(crate) expiry: u32,
    pub(crate) expiry_capped: bool,
    pub(crate) server_keep_alive: Option<u16>,
    pub(crate) response_info: bool,
    pub(crate) will: Option<Box<Will>>,
    pub(crate) username: Option<Box<str>>,
}

/// One network connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) state: ConnState,
    pub(crate) version: ProtocolVersion,
    pub(crate) opened: Instant,
    pub(crate) last_rx: Instant,
    /// Keep-alive in milliseconds (0: none).
    pub(crate) keep_alive_ms: u64,
    pub(crate) session: Option<u32>,
    pub(crate) client_receive_max: u16,
    pub(crate) client_max_packet: usize,
    pub(crate) aliases: Vec<Option<Box<str>>>,
    /// The topic aliases we use towards the client (MQTT 5, when both sides allow some).
    pub(crate) out_aliases: Option<Box<OutAliases>>,
    pub(crate) control: VecDeque<Control>,
    /// Acks held until the records before them are durable: (record seq, ack).
    /// With the message id of a QoS 1 publish whose ack may go out before the records are
    /// durable, once every persistent subscriber has acknowledged it.
    /// (record seq, QoS 1 message whose delivery may release it, the ack, message whose
    /// copies on siblings must be stored first or 0).
    pub(crate) held: VecDeque<(u64, Option<u64>, Control, u64)>,
    pub(crate) pending: Option<Box<PendingConnect>>,
    pub(crate) resend: VecDeque<PacketId>,
    /// In-flight messages not written yet: their `Sent` record waits to be durable.
    pub(crate) unsent: VecDeque<PacketId>,
    /// `poll_transmit` stopped at a record that is not durable yet: wake on `handle_durable`.
    pub(crate) await_durable: bool,
    /// In the broker's list of connections that wait for the disk.
    pub(crate) listed: bool,
    pub(crate) qos1_unacked: usize,
    pub(crate) pubcomp_unsent: usize,
    pub(crate) auth_method: Option<Box<str>>,
    /// A [`super::Question`] waits for its answer.
    pub(crate) asked: bool,
    /// The session expiry CONNECT asked for was 0 (DISCONNECT may not raise it).
    pub(crate) connect_expiry_zero: bool,
    /// Queued in the broker's wake list.
    pub(crate) woken: bool,
    /// Held by back-pressure: not read from.
    pub(crate) hold: Option<Box<Hold>>,
    /// It has an entry in the broker's hold timers (one at most).
    pub(crate) hold_armed: bool,
    /// Its publish rate, with [`super::Limits::publish_rate`].
    pub(crate) rate: Option<Box<Throttle>>,
}

/// A connection's publish rate, as a virtual schedule (the generic cell rate algorithm): each
/// PUBLISH moves `due` one interval on; one that comes more than a second ahead of `due` waits.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// When the next PUBLISH is due, in microseconds of the broker's clock.
    pub(crate) due_us: u64,
    /// When a waiting connection may be read again (its timer is armed).
    pub(crate) wake_at: Option<crate::Instant>,
}

/// Topic bytes one connection's outgoing aliases may keep: what a client announcing a large
/// Topic Alias Maximum can make the broker hold.
const ALIAS_BYTES: usize = 16 * 1024;

/// The topic aliases the broker assigned on one connection, first come, never replaced.
#[derive(Debug, Default)]
pub(crate) struct OutAliases {
    /// Aliases 1..=max may be used.
    pub(crate) max: u16,
    pub(crate) by_topic: BTreeMap<Box<str>, u16>,
    /// Bytes of the topics in `by_topic`.
    pub(crate) bytes: usize,
}

/// How a PUBLISH names its topic towards a client that takes aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alias {
    /// The topic, no alias.
    None,
    /// The topic and its alias (a new one is assigned once the packet is written).
    Set(u16),
    /// The alias alone: the client has it.
    Known(u16),
}

impl OutAliases {
    /// How `topic` goes out at `qos`.
    pub(crate) fn alias(aliases: Option<&Self>, topic: &str, qos: QoS) -> Alias {
        let Some(a) = aliases else {
            return Alias::None;
        };
        if let Some(&n) = a.by_topic.get(topic) {
            // A QoS 2 message keeps its topic too: MQTT.js (5.x) keeps the packet it received
            // until PUBREL and hands it over with the topic it came with, empty for an alias.
            return if qos == QoS::ExactlyOnce {
                Alias::Set(n)
            } else {
                Alias::Known(n)
            };
        }
        match u16::try_from(a.by_topic.len() + 1) {
            Ok(n) if n <= a.max && a.bytes + topic.len() <= ALIAS_BYTES => Alias::Set(n),
            _ => Alias::None,
        }
    }

    /// `topic` went out with `alias`: a new alias is the client's from now on.
    pub(crate) fn assign(&mut self, topic: &str, alias: Alias) {
        if let Alias::Set(n) = alias
            && !self.by_topic.contains_key(topic)
        {
            self.bytes += topic.len();
            self.by_topic.insert(topic.into(), n);
        }
    }
}

/// A publisher held by back-pressure.
#[derive(Debug)]
pub(crate) struct Hold {
    pub(crate) since: Instant,
    /// The sessions it waits for to drain, as (sibling, session slot).
    pub(crate) sessions: Vec<(u16, u32)>,
}

impl Conn {
    pub(crate) fn new(now: Instant) -> Self {
        Conn {
            state: ConnState::AwaitConnect,
            version: ProtocolVersion::V311,
            opened: now,
            last_rx: now,
            keep_alive_ms: 0,
            session: None,
            client_receive_max: u16::MAX,
            client_max_packet: usize::MAX,
            aliases: Vec::new(),
            out_aliases: None,
            control: VecDeque::new(),
            held: VecDeque::new(),
            pending: None,
            resend: VecDeque::new(),
            unsent: VecDeque::new(),
            await_durable: false,
            listed: false,
            qos1_unacked: 0,
            pubcomp_unsent: 0,
            auth_method: None,
            asked: false,
            connect_expiry_zero: true,
            woken: false,
            hold: None,
            hold_armed: false,
            rate: None,
        }
    }
}

/// The connections, in slots: O(1) lookups on the hot path. An id carries its slot and a
/// generation, so an id of a closed connection never reaches the slot's next tenant.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    slots: Vec<Option<(ConnId, Conn)>>,
    free: Vec<u32>,
    len: usize,
    generation: u32,
}

impl Conns {
    fn slot(id: ConnId) -> usize {
        (id.0 & u64::from(u32::MAX)) as usize
    }

    pub(crate) fn insert(&mut self, conn: Conn) -> ConnId {
        self.generation = self.generation.wrapping_add(1);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let id = ConnId((u64::from(self.generation) << 32) | u64::from(slot));
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some((id, conn));
            self.len += 1;
        }
        id
    }

    pub(crate) fn get(&self, id: &ConnId) -> Option<&Conn> {
        match self.slots.get(Self::slot(*id)) {
            Some(Some((i, c))) if i == id => Some(c),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: &ConnId) -> Option<&mut Conn> {
        match self.slots.get_mut(Self::slot(*id)) {
            Some(Some((i, c))) if i == id => Some(c),
            _ => None,
        }
    }

    pub(crate) fn contains_key(&self, id: &ConnId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let slot = self.slots.get_mut(Self::slot(*id))?;
        if slot.as_ref().is_some_and(|(i, _)| i == id) {
            let (_, c) = slot.take()?;
            self.free
                .push(u32::try_from(Self::slot(*id)).unwrap_or(u32::MAX));
            self.len -= 1;
            return Some(c);
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Conn> {
        self.slots.iter().flatten().map(|(_, c)| c)
    }
}
