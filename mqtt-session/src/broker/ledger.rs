//! The broker's records as the live entries of a key/value store, and back.
//!
//! A [`Record`] stream only grows; a store that appended it would grow with everything that
//! ever passed. The [`Ledger`] keeps one entry per live thing instead (a session, a
//! subscription, a message body, a message's queued and in-flight deliveries, an inbound
//! QoS 2 id, a retained topic, a pending will, a QoS 2 message on its way to sibling brokers
//! or taken from one), so the store's size follows what is live. It
//! folds each record into [`Write`]s on those entries, and a batch's writes cancel where they
//! can: a delivery queued, sent and acknowledged before its batch is written costs no write
//! at all. A message's deliveries share one entry, so a message sent to N subscribers makes
//! one write per batch, not N; its body goes in that entry too unless a retained message or a
//! will names it (then it has one of its own). [`Ledger::load`] turns a store's entries back
//! into records for [`Broker::restore`].
//!
//! Keys: the top byte is the kind of entry (kind 0 is left to the runtime), the rest a
//! number the ledger assigns (the message id, for message bodies and deliveries).
//! Deliveries are numbered in queue order, which the load restores.
//!
//! [`Broker::restore`]: super::Broker::restore

use alloc::boxed::Box;
use alloc::collections::btree_map::Entry;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use mqtt_proto::{PacketId, QoS, RetainHandling, SubscriptionOptions};

use super::{Change, Message, MessageProperties, Record, Shared};
use crate::Instant;

const SHIFT: u32 = 56;
const MASK: u64 = (1 << SHIFT) - 1;

/// The kinds of entries, the top byte of their keys.
mod kind {
    /// A body a retained message or a will names.
    pub const MESSAGE: u64 = 1;
    pub const SESSION: u64 = 2;
    pub const SUBSCRIPTION: u64 = 3;
    /// One delivery, and its sent state: written by older ledgers, read and moved into
    /// [`FAN`] entries at load.
    pub const DELIVERY: u64 = 4;
    pub const SENT: u64 = 5;
    pub const INBOUND: u64 = 6;
    pub const RETAINED: u64 = 7;
    pub const WILL: u64 = 8;
    /// A message's deliveries (and its body, when no retained message or will names it).
    pub const FAN: u64 = 9;
    /// A QoS 2 message forwarded to siblings and not yet stored by all, with its targets.
    pub const FORWARDING: u64 = 10;
    /// A sibling's forwarded QoS 2 message taken here.
    pub const SEEN: u64 = 11;
}

fn key(kind: u64, n: u64) -> u64 {
    (kind << SHIFT) | (n & MASK)
}

/// The first key of kind 0, which the ledger never uses: a runtime's own entries go here.
pub const RUNTIME_KEYS: core::ops::Range<u64> = 0..(1 << SHIFT);

/// One change to a key/value store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Write (or replace) the entry.
    Put(u64, Vec<u8>),
    /// Remove the entry.
    Delete(u64),
}

#[derive(Debug, Default)]
struct SessionEntry {
    n: u64,
    expiry: u32,
    disconnected_at: Option<u64>,
    subs: BTreeMap<Box<str>, u64>,
    /// Queued deliveries not sent yet: (message id, delivery number); a message may be
    /// queued twice, and is sent in number order.
    queued: BTreeSet<(u64, u64)>,
    /// Sent deliveries by packet id: (delivery number, message id).
    inflight: Fixed<u16, (u64, u64)>,
    inbound: BTreeMap<u16, u64>,
    will: Option<u64>,
}

/// A hash map keyed by the broker's own numbers (message and packet ids, never a client's
/// choice, so a fixed hash is safe): a record's look-ups were B-tree walks.
type Fixed<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;

/// Folds broker records into store writes; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Ledger {
    sessions: BTreeMap<Shared<str>, SessionEntry>,
    /// Message id to the number of entries that name it, and of those the retained
    /// messages and wills (which are never held back, nor then is the body they name).
    refs: Fixed<u64, (u32, u32)>,
    /// Retained topic to (entry number, message id).
    retained: BTreeMap<Box<str>, (u64, u64)>,
    /// Each message's queued and in-flight deliveries, by number, encoded; a message's
    /// deliveries share one entry, so a fan-out of N makes one write per batch, not N.
    fans: Fixed<u64, Fan>,
    next: u64,
    /// The writes not taken yet, by key.
    pending: BTreeMap<u64, Pending>,
    /// Whether first writes of deliveries and message bodies wait one batch; see
    /// [`Ledger::set_defer`].
    defer: bool,
    /// The last record applied.
    applied: u64,
    /// `applied` at the last [`Ledger::take_writes`].
    taken: u64,
    /// The will going out (its removal came first): its deliveries are written at once.
    will_out: Option<u64>,
    /// No write of a record up to this one waits (see [`Ledger::set_defer`]).
    flush: u64,
}

/// A key's write not taken yet.
#[derive(Debug)]
struct Pending {
    /// Whether the key is not in the store (then deleting it needs no write at all).
    fresh: bool,
    /// The value; `None`: delete.
    value: Option<Value>,
    /// The record that first wrote the key since it was last taken (0: it must not wait).
    seq: u64,
}

/// The writes of one batch, and how far the records are durable once they are.
#[derive(Debug, Default)]
pub struct Batch {
    /// One write per key, in key order.
    pub writes: Vec<Write>,
    /// Every record up to this one is durable once the writes are (for
    /// [`Broker::handle_durable`](super::Broker::handle_durable)).
    pub through: u64,
    /// Writes were held back for the next batch.
    pub deferred: bool,
}

/// A message's deliveries (and, while no retained message or will names it, its body).
#[derive(Debug)]
struct Fan {
    message: Shared<Message>,
    /// By delivery number, ascending; `None`: ended, the slot kept until half are (most
    /// messages have one delivery, a tree per message would cost a node each).
    deliveries: Vec<(u64, Option<FanDelivery>)>,
    /// Deliveries not ended.
    live: usize,
    /// A write of the entry is pending.
    dirty: bool,
}

impl Fan {
    fn new(message: Shared<Message>) -> Self {
        Fan {
            message,
            deliveries: Vec::new(),
            live: 0,
            dirty: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Marks the entry to be written; whether it was not yet (so its write must be queued).
    fn mark_dirty(&mut self) -> bool {
        !core::mem::replace(&mut self.dirty, true)
    }

    fn insert(&mut self, n: u64, d: FanDelivery) {
        // Numbers are handed out in order, so this is nearly always a push.
        let at = match self.deliveries.last() {
            Some((last, _)) if *last > n => self.deliveries.partition_point(|(m, _)| *m < n),
            _ => self.deliveries.len(),
        };
        self.deliveries.insert(at, (n, Some(d)));
        self.live += 1;
    }

    fn get_mut(&mut self, n: u64) -> Option<&mut FanDelivery> {
        let i = self.deliveries.binary_search_by_key(&n, |(m, _)| *m).ok()?;
        self.deliveries.get_mut(i)?.1.as_mut()
    }

    /// Ends delivery `n`; whether there was one.
    fn remove(&mut self, n: u64) -> bool {
        let Ok(i) = self.deliveries.binary_search_by_key(&n, |(m, _)| *m) else {
            return false;
        };
        if self
            .deliveries
            .get_mut(i)
            .and_then(|d| d.1.take())
            .is_none()
        {
            return false;
        }
        self.live -= 1;
        if self.live * 2 < self.deliveries.len() {
            self.deliveries.retain(|d| d.1.is_some());
        }
        true
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &FanDelivery)> {
        self.deliveries
            .iter()
            .filter_map(|(n, d)| Some((*n, d.as_ref()?)))
    }
}

/// One queued or in-flight delivery.
#[derive(Debug)]
struct FanDelivery {
    session: u64,
    qos: QoS,
    retain: bool,
    identifiers: Vec<u32>,
    sent: Option<(PacketId, bool)>,
}

/// What [`Ledger::load`] made of a store's entries.
#[derive(Debug)]
pub struct Loaded {
    /// The ledger, ready to fold the restored broker's next records.
    pub ledger: Ledger,
    /// Records that rebuild the state ([`Broker::restore`](super::Broker::restore)).
    pub records: Vec<Record>,
    /// Entries that did not decode, or name something absent; the runtime deletes them
    /// (or sets them aside).
    pub invalid: Vec<u64>,
    /// Message bodies nothing names any more, which a crash between two batches of a
    /// deferring ledger can leave ([`Ledger::set_defer`]); the runtime deletes them.
    pub unreferenced: Vec<u64>,
}

impl Ledger {
    /// An empty ledger (an empty store).
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Persistent sessions in the ledger.
    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn put(&mut self, k: u64, v: Vec<u8>, new: bool) {
        self.put_value(k, Value::Bytes(v), new);
    }

    fn put_value(&mut self, k: u64, v: Value, new: bool) {
        match self.pending.entry(k) {
            // A key deleted earlier in this batch may still be in the store: not fresh.
            Entry::Occupied(mut e) => e.get_mut().value = Some(v),
            Entry::Vacant(e) => {
                e.insert(Pending {
                    fresh: new,
                    value: Some(v),
                    seq: self.applied,
                });
            }
        }
    }

    fn delete(&mut self, k: u64) {
        match self.pending.entry(k) {
            Entry::Occupied(e) if e.get().fresh => {
                e.remove();
            }
            Entry::Occupied(mut e) => e.get_mut().value = None,
            Entry::Vacant(e) => {
                e.insert(Pending {
                    fresh: false,
                    value: None,
                    seq: self.applied,
                });
            }
        }
    }

    /// Counts a reference to `m`'s body; `anchored`: from a retained message or a will. An
    /// anchored body has an entry of its own; any other lives in its deliveries' entry, so a
    /// message sent to persistent sessions is one entry, not two.
    fn hold(&mut self, m: &Shared<Message>, anchored: bool) {
        let count = self.refs.entry(m.id).or_insert((0, 0));
        count.0 += 1;
        count.1 += u32::from(anchored);
        if anchored && count.1 == 1 {
            // Encoded only if still live when the batch is written.
            self.put_value(key(kind::MESSAGE, m.id), Value::Message(m.clone()), true);
            self.touch_fan(m.id, false);
        }
    }

    fn release(&mut self, id: u64, anchored: bool) {
        let Some(count) = self.refs.get_mut(&id) else {
            return;
        };
        count.0 = count.0.saturating_sub(1);
        count.1 = count.1.saturating_sub(u32::from(anchored));
        let (all, anchors) = *count;
        if all == 0 {
            self.refs.remove(&id);
        }
        if anchored && anchors == 0 {
            self.delete(key(kind::MESSAGE, id));
            // Deliveries left carry the body from now on.
            self.touch_fan(id, false);
        }
    }

    /// Whether a retained message or a will names message `id`.
    fn anchored(&self, id: u64) -> bool {
        self.refs.get(&id).is_some_and(|r| r.1 > 0)
    }

    /// Marks message `id`'s deliveries to be written (`new`: the entry is not in the store).
    fn touch_fan(&mut self, id: u64, new: bool) {
        if let Some(fan) = self.fans.get_mut(&id)
            && fan.mark_dirty()
        {
            self.put_value(key(kind::FAN, id), Value::Fan, new);
        }
    }

    /// Delivery `n` of message `id` ended (acknowledged, dropped, its session gone).
    fn remove_delivery(&mut self, id: u64, n: u64) {
        let Some(fan) = self.fans.get_mut(&id) else {
            return;
        };
        if !fan.remove(n) {
            return;
        }
        if fan.is_empty() {
            self.fans.remove(&id);
            self.delete(key(kind::FAN, id));
            self.release(id, false);
        } else if fan.mark_dirty() {
            self.put_value(key(kind::FAN, id), Value::Fan, false);
        }
    }

    /// Sets the sent state of delivery `n` of message `id`.
    fn set_sent(&mut self, id: u64, n: u64, packet_id: PacketId, received: bool) {
        let Some(fan) = self.fans.get_mut(&id) else {
            return;
        };
        let Some(d) = fan.get_mut(n) else {
            return;
        };
        d.sent = Some((packet_id, received));
        if fan.mark_dirty() {
            self.put_value(key(kind::FAN, id), Value::Fan, false);
        }
    }

    fn put_session(&mut self, client_id: &str, new: bool) {
        if let Some(s) = self.sessions.get(client_id) {
            let v = encode_session(client_id, s.expiry, s.disconnected_at);
            let k = key(kind::SESSION, s.n);
            self.put(k, v, new);
        }
    }

    fn end_session(&mut self, client_id: &str) {
        let Some(s) = self.sessions.remove(client_id) else {
            return;
        };
        self.delete(key(kind::SESSION, s.n));
        for n in s.subs.values() {
            self.delete(key(kind::SUBSCRIPTION, *n));
        }
        for (id, n) in &s.queued {
            self.remove_delivery(*id, *n);
        }
        for (n, id) in s.inflight.values() {
            self.remove_delivery(*id, *n);
        }
        for n in s.inbound.values() {
            self.delete(key(kind::INBOUND, *n));
        }
        if let Some(id) = s.will {
            self.delete(key(kind::WILL, s.n));
            self.release(id, true);
            self.will_out = Some(id);
        }
    }

    /// Folds one record into the pending writes.
    pub fn apply(&mut self, record: &Record) {
        self.applied = record.seq;
        match &record.change {
            Change::SessionCreated { client_id, expiry } => {
                self.end_session(client_id);
                let n = self.number();
                let s = SessionEntry {
                    n,
                    expiry: *expiry,
                    ..SessionEntry::default()
                };
                self.sessions.insert(client_id.clone(), s);
                self.put_session(client_id, true);
            }
            Change::SessionExpiry { client_id, expiry } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.expiry = *expiry;
                    s.disconnected_at = None;
                    self.put_session(client_id, false);
                }
            }
            Change::SessionDisconnected { client_id, at } => {
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.disconnected_at = Some(at.as_millis());
                    self.put_session(client_id, false);
                }
            }
            Change::SessionEnded { client_id } => self.end_session(client_id),
            Change::Subscribed {
                client_id,
                filter,
                options,
                identifier,
            } => {
                let Some(sn) = self.sessions.get(client_id).map(|s| s.n) else {
                    return;
                };
                let existing = self
                    .sessions
                    .get(client_id)
                    .and_then(|s| s.subs.get(filter).copied());
                let (n, new) = match existing {
                    Some(n) => (n, false),
                    None => (self.number(), true),
                };
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.subs.insert(filter.clone(), n);
                }
                let v = encode_subscription(sn, filter, *options, *identifier);
                self.put(key(kind::SUBSCRIPTION, n), v, new);
            }
            Change::Unsubscribed { client_id, filter } => {
                if let Some(n) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.subs.remove(filter))
                {
                    self.delete(key(kind::SUBSCRIPTION, n));
                }
            }
            Change::Queued {
                client_id,
                message,
                qos,
                retain,
                identifiers,
            } => {
                let Some(s) = self.sessions.get_mut(client_id) else {
                    return;
                };
                self.next += 1;
                let (sn, n) = (s.n, self.next);
                s.queued.insert((message.id, n));
                let d = FanDelivery {
                    session: sn,
                    qos: *qos,
                    retain: *retain,
                    identifiers: identifiers.clone(),
                    sent: None,
                };
                let fan = self
                    .fans
                    .entry(message.id)
                    .or_insert_with(|| Fan::new(message.clone()));
                let new = fan.is_empty();
                fan.insert(n, d);
                let touch = fan.mark_dirty();
                if new {
                    self.hold(message, false);
                }
                if touch {
                    self.put_value(key(kind::FAN, message.id), Value::Fan, new);
                }
                if self.will_out == Some(message.id) {
                    for k in [key(kind::FAN, message.id), key(kind::MESSAGE, message.id)] {
                        if let Some(p) = self.pending.get_mut(&k) {
                            p.seq = 0;
                        }
                    }
                }
            }
            Change::Sent {
                client_id,
                message_id,
                packet_id,
            } => {
                let Some(s) = self.sessions.get_mut(client_id) else {
                    return;
                };
                let Some(n) = take_queued(&mut s.queued, *message_id) else {
                    return;
                };
                s.inflight.insert(packet_id.get(), (n, *message_id));
                self.set_sent(*message_id, n, *packet_id, false);
            }
            Change::Received {
                client_id,
                packet_id,
            } => {
                let Some(&(n, id)) = self
                    .sessions
                    .get(client_id)
                    .and_then(|s| s.inflight.get(&packet_id.get()))
                else {
                    return;
                };
                self.set_sent(id, n, *packet_id, true);
            }
            Change::Acked {
                client_id,
                packet_id,
            } => {
                let Some((n, id)) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.inflight.remove(&packet_id.get()))
                else {
                    return;
                };
                self.remove_delivery(id, n);
            }
            Change::Dropped {
                client_id,
                message_id,
            } => {
                let Some(n) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| take_queued(&mut s.queued, *message_id))
                else {
                    return;
                };
                self.remove_delivery(*message_id, n);
            }
            Change::InboundQoS2 {
                client_id,
                packet_id,
            } => {
                let Some(sn) = self.sessions.get(client_id).map(|s| s.n) else {
                    return;
                };
                let n = self.number();
                if let Some(s) = self.sessions.get_mut(client_id)
                    && let Some(old) = s.inbound.insert(packet_id.get(), n)
                {
                    self.delete(key(kind::INBOUND, old));
                }
                self.put(key(kind::INBOUND, n), encode_inbound(sn, *packet_id), true);
            }
            Change::InboundReleased {
                client_id,
                packet_id,
            } => {
                if let Some(n) = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.inbound.remove(&packet_id.get()))
                {
                    self.delete(key(kind::INBOUND, n));
                }
            }
            Change::RetainedSet { message } => {
                self.hold(message, true);
                let (n, new) = match self.retained.get(&message.topic).copied() {
                    Some((n, old)) => {
                        self.release(old, true);
                        (n, false)
                    }
                    None => (self.number(), true),
                };
                self.retained.insert(message.topic.clone(), (n, message.id));
                self.put(
                    key(kind::RETAINED, n),
                    message.id.to_le_bytes().to_vec(),
                    new,
                );
            }
            Change::RetainedCleared { topic } => {
                if let Some((n, id)) = self.retained.remove(topic) {
                    self.delete(key(kind::RETAINED, n));
                    self.release(id, true);
                }
            }
            Change::WillPending {
                client_id,
                message,
                at,
            } => {
                let Some((sn, old)) = self.sessions.get(client_id).map(|s| (s.n, s.will)) else {
                    return;
                };
                self.hold(message, true);
                if let Some(old) = old {
                    self.release(old, true);
                }
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.will = Some(message.id);
                }
                let mut v = Vec::with_capacity(16);
                v.extend_from_slice(&message.id.to_le_bytes());
                v.extend_from_slice(&at.as_millis().to_le_bytes());
                self.put(key(kind::WILL, sn), v, old.is_none());
            }
            Change::WillCleared { client_id } => {
                let Some((sn, Some(id))) = self
                    .sessions
                    .get_mut(client_id)
                    .map(|s| (s.n, s.will.take()))
                else {
                    return;
                };
                self.delete(key(kind::WILL, sn));
                self.release(id, true);
                self.will_out = Some(id);
            }
            Change::Forwarding {
                message,
                targets,
                known,
            } => {
                let v = encode_forwarding(message, targets, known);
                self.put(key(kind::FORWARDING, message.id), v, true);
                // Nothing before it waits: its forwards wait for it, and no acknowledgment
                // that would cancel a write can come before they are taken (a will's
                // forwarding record goes with its removal, which never waits either).
                self.flush = record.seq;
            }
            Change::Forwarded { message_id } => self.delete(key(kind::FORWARDING, *message_id)),
            Change::ForwardSeen { message_id } => {
                self.put(key(kind::SEEN, *message_id), W::new().0, true);
                // Its sender waits for it, with the copies before it.
                self.flush = record.seq;
            }
            Change::ForwardForgotten { message_id } => self.delete(key(kind::SEEN, *message_id)),
        }
    }

    /// Holds back, for one batch, the first write of a delivery, of its sent state, of a
    /// message body and of a QoS 2 id received: a delivery acknowledged before the next
    /// batch then costs no write at all. (Not a will's deliveries: the will is forgotten as
    /// it goes out, and a crash must not lose both. Nor what comes before a QoS 2 message
    /// recorded as forwarding to siblings, or taken from one: a sibling waits for those.)
    /// The price is one more batch before those records are durable (see
    /// [`Batch::through`]). Off by default.
    pub fn set_defer(&mut self, on: bool) {
        self.defer = on;
    }

    /// The writes folded since the last call, but for those held back (see
    /// [`Ledger::set_defer`]).
    pub fn take_writes(&mut self) -> Batch {
        let taken = core::mem::replace(&mut self.taken, self.applied);
        let mut writes = Vec::with_capacity(self.pending.len());
        let mut kept = Vec::new();
        for (k, p) in core::mem::take(&mut self.pending) {
            // Only what was first written since the last batch waits, and only once.
            let waits = match k >> SHIFT {
                // A QoS 2 id received waits with the deliveries of its message: on disk
                // alone it would make the resend after a restart look delivered.
                kind::FAN | kind::INBOUND => p.fresh,
                _ => false,
            };
            if self.defer && waits && p.seq > taken && p.seq > self.flush {
                kept.push((k, p));
                continue;
            }
            writes.push(match p.value {
                Some(Value::Bytes(v)) => Write::Put(k, v),
                Some(Value::Message(m)) => Write::Put(k, encode_message(&m)),
                Some(Value::Fan) => {
                    let id = k & MASK;
                    let body = !self.anchored(id);
                    match self.fans.get_mut(&id) {
                        Some(fan) => {
                            fan.dirty = false;
                            Write::Put(k, encode_fan(id, fan, body))
                        }
                        None => Write::Delete(k),
                    }
                }
                None => Write::Delete(k),
            });
        }
        // Every record before the first one held back is in these writes, or cancelled.
        let through = kept
            .iter()
            .map(|(_, p)| p.seq - 1)
            .min()
            .unwrap_or(self.applied);
        let deferred = !kept.is_empty();
        self.pending = kept.into_iter().collect();
        Batch {
            writes,
            through,
            deferred,
        }
    }

    /// Rebuilds the records of a store's entries (in any order; the runtime's own kind-0
    /// entries are skipped), and a ledger that continues from them.
    pub fn load<'a>(entries: impl IntoIterator<Item = (u64, &'a [u8])>) -> Loaded {
        let mut by_kind: BTreeMap<u64, Vec<(u64, &'a [u8])>> = BTreeMap::new();
        for (k, v) in entries {
            by_kind.entry(k >> SHIFT).or_default().push((k & MASK, v));
        }
        for list in by_kind.values_mut() {
            list.sort_unstable_by_key(|(n, _)| *n);
        }
        let mut invalid = Vec::new();
        let mut next = 0u64;
        let mut take =
            |kind: u64| -> Vec<(u64, &'a [u8])> { by_kind.remove(&kind).unwrap_or_default() };

        let mut messages: BTreeMap<u64, Shared<Message>> = BTreeMap::new();
        for (id, v) in take(kind::MESSAGE) {
            match decode_message(id, v) {
                Some(m) => {
                    messages.insert(id, Shared::new(m));
                }
                None => invalid.push(key(kind::MESSAGE, id)),
            }
        }
        // Session number to client id, and the change lists per session in the order a
        // broker applies them.
        let mut names: BTreeMap<u64, Shared<str>> = BTreeMap::new();
        let mut ledger = Ledger::new();
        let mut changes = Vec::new();
        let mut disconnects = Vec::new();
        for (n, v) in take(kind::SESSION) {
            next = next.max(n);
            let Some((client_id, expiry, at)) = decode_session(v) else {
                invalid.push(key(kind::SESSION, n));
                continue;
            };
            let client_id = Shared::<str>::from(client_id);
            names.insert(n, client_id.clone());
            changes.push(Change::SessionCreated {
                client_id: client_id.clone(),
                expiry,
            });
            if let Some(at) = at {
                disconnects.push(Change::SessionDisconnected {
                    client_id: client_id.clone(),
                    at: Instant::from_millis(at),
                });
            }
            let s = SessionEntry {
                n,
                expiry,
                disconnected_at: at,
                ..SessionEntry::default()
            };
            ledger.sessions.insert(client_id, s);
        }
        let session_of = |sn: u64| -> Option<Shared<str>> { names.get(&sn).cloned() };
        for (n, v) in take(kind::SUBSCRIPTION) {
            next = next.max(n);
            let Some((sn, filter, options, identifier)) = decode_subscription(v) else {
                invalid.push(key(kind::SUBSCRIPTION, n));
                continue;
            };
            let Some(client_id) = session_of(sn) else {
                invalid.push(key(kind::SUBSCRIPTION, n));
                continue;
            };
            if let Some(s) = ledger.sessions.get_mut(&client_id) {
                s.subs.insert(filter.clone(), n);
            }
            changes.push(Change::Subscribed {
                client_id,
                filter,
                options,
                identifier,
            });
        }
        // Deliveries, from the message entries that hold them, and from the entries of
        // their own that an older ledger wrote (a sent state may have one of its own too,
        // newer than the delivery's); they are rewritten the current way.
        let mut sent: BTreeMap<u64, (PacketId, bool)> = BTreeMap::new();
        let mut legacy = Vec::new();
        for (n, v) in take(kind::SENT) {
            legacy.push(key(kind::SENT, n));
            match decode_sent(v) {
                Some(s) => {
                    sent.insert(n, s);
                }
                None => invalid.push(key(kind::SENT, n)),
            }
        }
        let mut deliveries: Vec<(u64, u64, &[u8])> = Vec::new();
        for (n, v) in take(kind::DELIVERY) {
            legacy.push(key(kind::DELIVERY, n));
            deliveries.push((n, key(kind::DELIVERY, n), v));
        }
        // Bodies with an entry of their own (the others come with their deliveries).
        let own: Vec<u64> = messages.keys().copied().collect();
        for (id, v) in take(kind::FAN) {
            let decoded = decode_fan(v).and_then(|(body, list)| {
                let body = match body {
                    Some(b) => Some(decode_message(id, b)?),
                    None => None,
                };
                Some((body, list))
            });
            let Some((body, list)) = decoded else {
                invalid.push(key(kind::FAN, id));
                continue;
            };
            if let Some(m) = body {
                messages.entry(id).or_insert_with(|| Shared::new(m));
            }
            deliveries.extend(list.into_iter().map(|(n, d)| (n, key(kind::FAN, id), d)));
        }
        // Numbered in queue order.
        deliveries.sort_unstable_by_key(|d| d.0);
        let mut rewrite = BTreeSet::new();
        let mut after = Vec::new();
        for (n, from, v) in deliveries {
            next = next.max(n);
            let decoded = decode_delivery(v).and_then(|d| {
                let client_id = session_of(d.0)?;
                let message = messages.get(&d.1)?.clone();
                Some((d.0, client_id, message, d.2, d.3, d.4, d.5))
            });
            let Some((sn, client_id, message, qos, retain, identifiers, inline)) = decoded else {
                // What names nothing is set aside; the rest of its message's entry is kept.
                if from >> SHIFT == kind::FAN {
                    rewrite.insert(from & MASK);
                }
                if !invalid.contains(&from) {
                    invalid.push(from);
                }
                continue;
            };
            let id = message.id;
            // An entry of its own is newer than the state in the delivery's.
            let state = sent.remove(&n).or(inline);
            let fan = ledger
                .fans
                .entry(id)
                .or_insert_with(|| Fan::new(message.clone()));
            if fan.is_empty() {
                ledger.refs.entry(id).or_insert((0, 0)).0 += 1;
            }
            let d = FanDelivery {
                session: sn,
                qos,
                retain,
                identifiers: identifiers.clone(),
                sent: state,
            };
            fan.insert(n, d);
            if from >> SHIFT != kind::FAN {
                rewrite.insert(id);
            }
            let s = ledger.sessions.get_mut(&client_id);
            match state {
                Some((packet_id, received)) => {
                    if let Some(s) = s {
                        s.inflight.insert(packet_id.get(), (n, id));
                    }
                    changes.push(Change::Queued {
                        client_id: client_id.clone(),
                        message,
                        qos,
                        retain,
                        identifiers,
                    });
                    // Sent in the order of the queue, so the packet ids are assigned as
                    // they were (the restore moves each to its flight in turn).
                    after.push(Change::Sent {
                        client_id: client_id.clone(),
                        message_id: id,
                        packet_id,
                    });
                    if received {
                        after.push(Change::Received {
                            client_id,
                            packet_id,
                        });
                    }
                }
                None => {
                    if let Some(s) = s {
                        s.queued.insert((id, n));
                    }
                    changes.push(Change::Queued {
                        client_id,
                        message,
                        qos,
                        retain,
                        identifiers,
                    });
                }
            }
        }
        // Sent states of deliveries that are gone.
        invalid.extend(sent.into_keys().map(|n| key(kind::SENT, n)));
        for k in legacy {
            if !invalid.contains(&k) {
                ledger.delete(k);
            }
        }
        for id in rewrite {
            if ledger.fans.contains_key(&id) {
                ledger.touch_fan(id, true);
            }
        }
        for (n, v) in take(kind::INBOUND) {
            next = next.max(n);
            let decoded = decode_inbound(v).and_then(|(sn, pid)| Some((session_of(sn)?, pid)));
            let Some((client_id, packet_id)) = decoded else {
                invalid.push(key(kind::INBOUND, n));
                continue;
            };
            if let Some(s) = ledger.sessions.get_mut(&client_id) {
                s.inbound.insert(packet_id.get(), n);
            }
            changes.push(Change::InboundQoS2 {
                client_id,
                packet_id,
            });
        }
        for (n, v) in take(kind::RETAINED) {
            next = next.max(n);
            let message = read_u64(v).and_then(|id| messages.get(&id).cloned());
            let Some(message) = message else {
                invalid.push(key(kind::RETAINED, n));
                continue;
            };
            let count = ledger.refs.entry(message.id).or_insert((0, 0));
            count.0 += 1;
            count.1 += 1;
            ledger
                .retained
                .insert(message.topic.clone(), (n, message.id));
            changes.push(Change::RetainedSet { message });
        }
        for (sn, v) in take(kind::WILL) {
            let decoded = v
                .split_at_checked(8)
                .and_then(|(id, at)| Some((read_u64(id)?, read_u64(at)?)))
                .and_then(|(id, at)| Some((session_of(sn)?, messages.get(&id)?.clone(), at)));
            let Some((client_id, message, at)) = decoded else {
                invalid.push(key(kind::WILL, sn));
                continue;
            };
            let count = ledger.refs.entry(message.id).or_insert((0, 0));
            count.0 += 1;
            count.1 += 1;
            if let Some(s) = ledger.sessions.get_mut(&client_id) {
                s.will = Some(message.id);
            }
            changes.push(Change::WillPending {
                client_id,
                message,
                at: Instant::from_millis(at),
            });
        }
        for (id, v) in take(kind::FORWARDING) {
            match decode_forwarding(id, v) {
                Some((message, (targets, known))) => changes.push(Change::Forwarding {
                    message: Shared::new(message),
                    targets,
                    known,
                }),
                None => invalid.push(key(kind::FORWARDING, id)),
            }
        }
        for (id, v) in take(kind::SEEN) {
            match R::new(v).and_then(|r| r.end(())) {
                Some(()) => changes.push(Change::ForwardSeen { message_id: id }),
                None => invalid.push(key(kind::SEEN, id)),
            }
        }
        // Unknown kinds.
        for (k, list) in by_kind {
            if k != 0 {
                invalid.extend(list.into_iter().map(|(n, _)| key(k, n)));
            }
        }
        // A body is kept where its anchors say (an older ledger kept every body apart).
        let moves: Vec<(u64, bool, bool)> = ledger
            .fans
            .keys()
            .map(|id| (*id, ledger.anchored(*id), own.binary_search(id).is_ok()))
            .collect();
        for (id, anchored, apart) in moves {
            if anchored == apart {
                continue;
            }
            if anchored {
                if let Some(m) = messages.get(&id) {
                    ledger.put_value(key(kind::MESSAGE, id), Value::Message(m.clone()), true);
                }
            } else {
                ledger.delete(key(kind::MESSAGE, id));
            }
            ledger.touch_fan(id, false);
        }
        let unreferenced = own
            .iter()
            .filter(|id| !ledger.refs.contains_key(*id))
            .map(|id| key(kind::MESSAGE, *id))
            .collect();
        changes.extend(after);
        changes.extend(disconnects);
        ledger.next = next;
        let records = changes
            .into_iter()
            .zip(1..)
            .map(|(change, seq)| Record { seq, change })
            .collect();
        Loaded {
            ledger,
            records,
            invalid,
            unreferenced,
        }
    }
}

/// A pending value: bytes, or a message body encoded when the batch is taken.
#[derive(Debug)]
enum Value {
    Bytes(Vec<u8>),
    Message(Shared<Message>),
    /// A message's deliveries, encoded from the ledger's when the batch is taken.
    Fan,
}

fn take_queued(queued: &mut BTreeSet<(u64, u64)>, id: u64) -> Option<u64> {
    let first = *queued.range((id, 0)..=(id, u64::MAX)).next()?;
    queued.remove(&first);
    Some(first.1)
}

// ----- encoding: little-endian, length-prefixed; a version byte leads each value -----

const VERSION: u8 = 1;

struct W(Vec<u8>);

impl W {
    fn new() -> Self {
        W::with_capacity(48)
    }
    fn with_capacity(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        v.push(VERSION);
        W(v)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).bytes(v),
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u64(v),
            None => self.u8(0),
        }
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn new(v: &'a [u8]) -> Option<Self> {
        let (&version, rest) = v.split_first()?;
        (version == VERSION).then_some(R(rest))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
    fn str(&mut self) -> Option<Box<str>> {
        Some(Box::from(core::str::from_utf8(self.bytes()?).ok()?))
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => f(self).map(Some),
            _ => None,
        }
    }
    /// The value ends here: trailing bytes mean it is not what it claims to be.
    fn end<T>(&self, v: T) -> Option<T> {
        self.0.is_empty().then_some(v)
    }
}

fn read_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

fn encode_message(m: &Message) -> Vec<u8> {
    let mut w = W::with_capacity(m.size());
    let p = &m.properties;
    w.bytes(m.topic.as_bytes())
        .bytes(&m.payload)
        .u8(m.qos as u8 | (u8::from(m.retain) << 2))
        .opt_u64(m.expires_at.map(Instant::as_millis))
        .u8(match p.payload_format_utf8 {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        })
        .opt_bytes(p.content_type.as_deref().map(str::as_bytes))
        .opt_bytes(p.response_topic.as_deref().map(str::as_bytes))
        .opt_bytes(p.correlation_data.as_deref())
        .u32(u32::try_from(p.user.len()).unwrap_or(u32::MAX));
    for (k, v) in &p.user {
        w.bytes(k.as_bytes()).bytes(v.as_bytes());
    }
    w.0
}

fn decode_message(id: u64, v: &[u8]) -> Option<Message> {
    let mut r = R::new(v)?;
    let topic = r.str()?;
    let payload = Box::from(r.bytes()?);
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & 3)?;
    let expires_at = r.opt(R::u64)?.map(Instant::from_millis);
    let payload_format_utf8 = match r.u8()? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        _ => return None,
    };
    let content_type = r.opt(R::str)?;
    let response_topic = r.opt(R::str)?;
    let correlation_data = r.opt(|r| r.bytes().map(Box::from))?;
    let count = r.u32()?;
    let mut user = Vec::new();
    for _ in 0..count {
        user.push((r.str()?, r.str()?));
    }
    r.end(Message {
        id,
        topic,
        payload,
        qos,
        retain: flags & 4 != 0,
        properties: MessageProperties {
            payload_format_utf8,
            content_type,
            response_topic,
            correlation_data,
            user,
        },
        expires_at,
    })
}

/// A [`Change::Forwarding`] record's targets and known groups, as it is stored.
type Targets = (Vec<(u16, Box<[Box<str>]>)>, Box<[Box<str>]>);

fn encode_forwarding(
    m: &Message,
    targets: &[(u16, Box<[Box<str>]>)],
    known: &[Box<str>],
) -> Vec<u8> {
    fn list(w: &mut W, l: &[Box<str>]) {
        w.u32(u32::try_from(l.len()).unwrap_or(u32::MAX));
        for s in l {
            w.bytes(s.as_bytes());
        }
    }
    let mut w = W::new();
    w.bytes(&encode_message(m))
        .u32(u32::try_from(targets.len()).unwrap_or(u32::MAX));
    for (to, groups) in targets {
        w.u16(*to);
        list(&mut w, groups);
    }
    list(&mut w, known);
    w.0
}

fn decode_forwarding(id: u64, v: &[u8]) -> Option<(Message, Targets)> {
    fn list(r: &mut R<'_>) -> Option<Box<[Box<str>]>> {
        let n = r.u32()?;
        // Bounded by what is left, not by a count the bytes claim.
        let mut l = Vec::with_capacity(usize::try_from(n).ok()?.min(r.0.len()));
        for _ in 0..n {
            l.push(r.str()?);
        }
        Some(l.into_boxed_slice())
    }
    let mut r = R::new(v)?;
    let message = decode_message(id, r.bytes()?)?;
    let n = r.u32()?;
    let mut targets = Vec::with_capacity(usize::try_from(n).ok()?.min(r.0.len()));
    for _ in 0..n {
        let to = r.u16()?;
        targets.push((to, list(&mut r)?));
    }
    let known = list(&mut r)?;
    r.end((message, (targets, known)))
}

fn encode_session(client_id: &str, expiry: u32, at: Option<u64>) -> Vec<u8> {
    let mut w = W::new();
    w.bytes(client_id.as_bytes()).u32(expiry).opt_u64(at);
    w.0
}

fn decode_session(v: &[u8]) -> Option<(Box<str>, u32, Option<u64>)> {
    let mut r = R::new(v)?;
    let id = r.str()?;
    let expiry = r.u32()?;
    let at = r.opt(R::u64)?;
    r.end((id, expiry, at))
}

fn encode_subscription(
    session: u64,
    filter: &str,
    o: SubscriptionOptions,
    identifier: Option<u32>,
) -> Vec<u8> {
    let flags = o.qos as u8
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4);
    let mut w = W::new();
    w.u64(session)
        .bytes(filter.as_bytes())
        .u8(flags)
        .opt_u64(identifier.map(u64::from));
    w.0
}

fn decode_subscription(v: &[u8]) -> Option<(u64, Box<str>, SubscriptionOptions, Option<u32>)> {
    let mut r = R::new(v)?;
    let session = r.u64()?;
    let filter = r.str()?;
    let flags = r.u8()?;
    let retain_handling = match flags >> 4 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return None,
    };
    let mut options = SubscriptionOptions::new(QoS::from_u8(flags & 3)?);
    options.no_local = flags & 4 != 0;
    options.retain_as_published = flags & 8 != 0;
    options.retain_handling = retain_handling;
    let identifier = match r.opt(R::u64)? {
        Some(id) => Some(u32::try_from(id).ok()?),
        None => None,
    };
    r.end((session, filter, options, identifier))
}

/// Appends delivery `d` of `message`, a record of its own (with the version byte).
fn write_delivery(w: &mut W, message: u64, d: &FanDelivery) {
    w.u8(VERSION)
        .u64(d.session)
        .u64(message)
        .u8(d.qos as u8 | (u8::from(d.retain) << 2))
        .u32(u32::try_from(d.identifiers.len()).unwrap_or(u32::MAX));
    for id in &d.identifiers {
        w.u32(*id);
    }
    match d.sent {
        Some((pid, received)) => w.u8(1 + u8::from(received)).u16(pid.get()),
        None => w.u8(0),
    };
}

/// The encoded length of [`write_delivery`]'s record.
fn delivery_len(d: &FanDelivery) -> usize {
    1 + 8 + 8 + 1 + 4 + 4 * d.identifiers.len() + if d.sent.is_some() { 3 } else { 1 }
}

type Delivery = (u64, u64, QoS, bool, Vec<u32>, Option<(PacketId, bool)>);

/// A message's deliveries: its body if `body` (length first), then for each delivery its
/// number and its record ([`write_delivery`]).
fn encode_fan(message: u64, fan: &Fan, body: bool) -> Vec<u8> {
    let len: usize = fan.iter().map(|(_, d)| 12 + delivery_len(d)).sum();
    let mut w = W::with_capacity(len + 6 + if body { fan.message.size() + 8 } else { 0 });
    if body {
        w.u8(1).bytes(&encode_message(&fan.message));
    } else {
        w.u8(0);
    }
    for (n, d) in fan.iter() {
        w.u64(n)
            .u32(u32::try_from(delivery_len(d)).unwrap_or(u32::MAX));
        write_delivery(&mut w, message, d);
    }
    w.0
}

/// A body (if the entry has one), and the deliveries.
type FanEntry<'a> = (Option<&'a [u8]>, Vec<(u64, &'a [u8])>);

fn decode_fan(v: &[u8]) -> Option<FanEntry<'_>> {
    let mut r = R::new(v)?;
    let body = match r.u8()? {
        0 => None,
        1 => Some(r.bytes()?),
        _ => return None,
    };
    let mut list = Vec::new();
    while !r.0.is_empty() {
        list.push((r.u64()?, r.bytes()?));
    }
    (!list.is_empty()).then_some((body, list))
}

fn decode_delivery(v: &[u8]) -> Option<Delivery> {
    let mut r = R::new(v)?;
    let session = r.u64()?;
    let message = r.u64()?;
    let flags = r.u8()?;
    let count = r.u32()?;
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(r.u32()?);
    }
    let sent = match r.u8()? {
        0 => None,
        s @ (1 | 2) => Some((PacketId::new(r.u16()?)?, s == 2)),
        _ => return None,
    };
    r.end((
        session,
        message,
        QoS::from_u8(flags & 3)?,
        flags & 4 != 0,
        ids,
        sent,
    ))
}

fn decode_sent(v: &[u8]) -> Option<(PacketId, bool)> {
    let mut r = R::new(v)?;
    let pid = PacketId::new(r.u16()?)?;
    let received = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    r.end((pid, received))
}

fn encode_inbound(session: u64, packet_id: PacketId) -> Vec<u8> {
    let mut w = W::new();
    w.u64(session).u16(packet_id.get());
    w.0
}

fn decode_inbound(v: &[u8]) -> Option<(u64, PacketId)> {
    let mut r = R::new(v)?;
    let session = r.u64()?;
    let pid = PacketId::new(r.u16()?)?;
    r.end((session, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64) -> Message {
        Message {
            id,
            topic: "t".into(),
            payload: Box::from(&b"x"[..]),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
        }
    }

    #[test]
    fn a_message_s_deliveries_stay_in_number_order_as_they_come_and_go() {
        let d = |session| FanDelivery {
            session,
            qos: QoS::AtLeastOnce,
            retain: false,
            identifiers: Vec::new(),
            sent: None,
        };
        let mut fan = Fan::new(Shared::new(message(1)));
        for n in [10, 30, 20, 40] {
            fan.insert(n, d(n));
        }
        let order = |fan: &Fan| fan.iter().map(|(n, d)| (n, d.session)).collect::<Vec<_>>();
        assert_eq!(order(&fan), [(10, 10), (20, 20), (30, 30), (40, 40)]);
        assert!(fan.remove(20));
        assert!(!fan.remove(20), "ended once");
        assert!(!fan.remove(25), "never there");
        assert!(fan.remove(10));
        // Half ended: the slots are given back, and the rest is still found.
        assert_eq!(fan.deliveries.len(), 4);
        assert!(fan.remove(40));
        assert_eq!(fan.deliveries.len(), 1);
        assert!(fan.get_mut(30).is_some());
        assert!(fan.get_mut(40).is_none());
        assert_eq!(order(&fan), [(30, 30)]);
        assert!(fan.remove(30));
        assert!(fan.is_empty());
    }

    #[test]
    fn deliveries_an_older_ledger_wrote_one_entry_each_load_and_move_into_their_message() {
        let message = message(7);
        let delivery = |sent| {
            let d = FanDelivery {
                session: 1,
                qos: QoS::ExactlyOnce,
                retain: false,
                identifiers: Vec::new(),
                sent,
            };
            let mut w = W(Vec::new());
            write_delivery(&mut w, 7, &d);
            w.0
        };
        let pid = PacketId::new(3).unwrap();
        // Delivery 2 is queued; delivery 3 was sent as id 3, and its PUBREC has an entry of
        // its own (state 1, received).
        let mut sent = W::new();
        sent.u16(3).u8(1);
        let entries = [
            (key(kind::SESSION, 1), encode_session("c", 60, Some(5))),
            (key(kind::MESSAGE, 7), encode_message(&message)),
            (key(kind::DELIVERY, 2), delivery(None)),
            (key(kind::DELIVERY, 3), delivery(Some((pid, false)))),
            (key(kind::SENT, 3), sent.0),
        ];
        let mut loaded = Ledger::load(entries.iter().map(|(k, v)| (*k, v.as_slice())));
        assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
        let queued = loaded
            .records
            .iter()
            .filter(|r| matches!(r.change, Change::Queued { .. }))
            .count();
        assert_eq!(queued, 2);
        assert!(
            loaded.records.iter().any(
                |r| matches!(r.change, Change::Received { packet_id, .. } if packet_id == pid)
            )
        );
        // The old entries go (the body too: no retained message names it), and one entry
        // holds the body and both deliveries.
        let writes = loaded.ledger.take_writes().writes;
        let deleted: Vec<u64> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete(k) => Some(*k),
                Write::Put(..) => None,
            })
            .collect();
        assert_eq!(
            deleted,
            [
                key(kind::MESSAGE, 7),
                key(kind::DELIVERY, 2),
                key(kind::DELIVERY, 3),
                key(kind::SENT, 3)
            ]
        );
        let fan = writes.iter().find_map(|w| match w {
            Write::Put(k, v) if *k == key(kind::FAN, 7) => Some(v.clone()),
            _ => None,
        });
        let fan = fan.expect("the message's deliveries are written");
        let (body, list) = decode_fan(&fan).unwrap();
        assert_eq!(decode_message(7, body.unwrap()).unwrap(), message);
        assert_eq!(list.iter().map(|d| d.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(decode_delivery(list[1].1).unwrap().5, Some((pid, true)));
    }
}
