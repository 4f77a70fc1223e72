//! Rebuilding a broker from its persistence records, and the durable state as a value that
//! tests compare.

use alloc::boxed::Box;
use alloc::vec::Vec;

use mqtt_proto::{PacketId, QoS, SubscriptionOptions, TopicFilter};

use super::session::{Inflight, OutState, Outgoing, Session, Sub, SubKey};
use super::shard::Pending;
use core::cmp::Reverse;

use super::{Broker, Change, Config, Record, Timer, after_secs};

/// Packet ids a session restored from possibly lost records releases before anything new:
/// those its allocator would hand out next, which a delivery whose record was lost may have
/// used (a client still holding one would take a new message with it for a duplicate). It
/// covers the deliveries of the last moments before a crash, up to this many.
pub(crate) const RETIRE_WINDOW: u16 = 8192;
use crate::Instant;

/// The durable state of one session, as [`Broker::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// Client identifier.
    pub client_id: Box<str>,
    /// Session expiry interval.
    pub expiry: u32,
    /// Subscriptions (filter, options, identifier), sorted by filter.
    pub subscriptions: Vec<(Box<str>, SubscriptionOptions, Option<u32>)>,
    /// Queued messages (message id, QoS), in order.
    pub queued: Vec<(u64, QoS)>,
    /// In-flight messages (packet id, message id, PUBREC received), by packet id.
    pub inflight: Vec<(u16, u64, bool)>,
    /// Inbound QoS 2 packet ids not yet released.
    pub inbound_qos2: Vec<u16>,
    /// The message id of a will waiting for its delay.
    pub pending_will: Option<u64>,
}

/// The durable state of a broker: persistent sessions and retained messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Persistent sessions, sorted by client id.
    pub sessions: Vec<SessionSnapshot>,
    /// Retained messages (topic, message id, payload), sorted by topic.
    pub retained: Vec<(Box<str>, u64, Box<[u8]>)>,
}

impl Broker {
    /// A broker rebuilt from the records a previous one reported, in order.
    ///
    /// Every session comes back offline; one whose client was connected when the records
    /// stopped counts as disconnected at `now`. In-flight messages go out again with their
    /// packet ids and DUP when the client reconnects.
    pub fn restore(cfg: Config, now: Instant, records: impl IntoIterator<Item = Record>) -> Self {
        let mut b = Broker::new(cfg);
        for r in records {
            b.apply(r.change);
            b.seq = r.seq;
        }
        b.durable = b.seq;
        let lossy = b.cfg.lossy_records;
        for s in b.sessions.iter_mut().flatten() {
            if s.expires_at.is_none() {
                s.expires_at = after_secs(now, s.expiry);
            }
            let qos2 = s.subs.iter().flatten();
            if lossy
                && qos2
                    .into_iter()
                    .any(|sub| sub.options.qos == QoS::ExactlyOnce)
            {
                s.retire = s.ids.peek();
                s.retire_left = RETIRE_WINDOW;
            }
        }
        let timers: Vec<_> = b
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let at = s.as_ref().and_then(super::session_deadline)?;
                Some(Reverse((at, Timer::Session(u32::try_from(i).ok()?))))
            })
            .collect();
        b.timers.extend(timers);
        if let Some(sib) = b.siblings.as_mut() {
            sib.resend_restored();
            // The retained messages this sibling owns, for the others (which keep no records
            // of them): hand them over with the first forwards.
            b.retained.for_each(|m| sib.retain(m.clone()));
        }
        b
    }

    fn sid_of(&self, client_id: &str) -> Option<u32> {
        self.by_id.get(client_id).copied()
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::SessionCreated { client_id, expiry } => {
                if let Some(sid) = self.sid_of(&client_id) {
                    self.drop_session_quietly(sid);
                }
                self.insert_session(Session::new(client_id, expiry));
            }
            Change::SessionExpiry { client_id, expiry } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.expiry = expiry;
                    s.expires_at = None;
                }
            }
            Change::SessionDisconnected { client_id, at } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.expires_at = after_secs(at, s.expiry);
                }
            }
            Change::SessionEnded { client_id } => {
                if let Some(sid) = self.sid_of(&client_id) {
                    self.drop_session_quietly(sid);
                }
            }
            Change::Subscribed {
                client_id,
                filter,
                options,
                identifier,
            } => {
                let (Some(sid), Ok(f)) = (self.sid_of(&client_id), TopicFilter::new(&filter))
                else {
                    return;
                };
                let Some(s) = self.session_mut(sid) else {
                    return;
                };
                let sub = Sub {
                    filter: filter.clone(),
                    shared: f.shared().is_some(),
                    options,
                    id: identifier,
                };
                match s.find_sub(&filter) {
                    Some(slot) => {
                        if let Some(old) = s.subs.get_mut(slot) {
                            *old = Some(sub);
                        }
                    }
                    None => {
                        let shared = sub.shared;
                        let slot = u32::try_from(s.add_sub(sub)).unwrap_or(u32::MAX);
                        self.index.insert(f, SubKey { session: sid, slot });
                        self.count_filter(&filter, shared, true);
                    }
                }
            }
            Change::Unsubscribed { client_id, filter } => {
                let (Some(sid), Ok(f)) = (self.sid_of(&client_id), TopicFilter::new(&filter))
                else {
                    return;
                };
                self.remove_subscription_quietly(sid, f);
            }
            Change::Queued {
                client_id,
                message,
                qos,
                retain,
                identifiers,
            } => {
                self.restored_msg_id(message.id);
                let size = message.size();
                let Some(sid) = self.sid_of(&client_id) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
                    return;
                };
                s.bytes += size;
                self.queued_bytes += size;
                s.queue
                    .push_back(Outgoing::new(message, qos, retain, identifiers));
            }
            Change::Sent {
                client_id,
                message_id,
                packet_id,
            } => {
                let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) else {
                    return;
                };
                let Some(pos) = s.queue.iter().position(|o| o.msg.id == message_id) else {
                    return;
                };
                let Some(out) = s.queue.remove(pos) else {
                    return;
                };
                let order = s.next_order();
                // The allocator continues after the ids already used, as the live one did.
                while s
                    .ids
                    .allocate(0, |_| false)
                    .is_some_and(|id| id != packet_id)
                {}
                s.inflight.insert(
                    packet_id,
                    Inflight {
                        out,
                        state: OutState::AwaitAck,
                        order,
                        seq: 0,
                    },
                );
            }
            Change::Received {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i))
                    && let Some(i) = s.inflight.get_mut(&packet_id)
                {
                    i.state = OutState::AwaitComp;
                }
            }
            Change::Acked {
                client_id,
                packet_id,
            } => {
                let Some(sid) = self.sid_of(&client_id) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
                    return;
                };
                if let Some(i) = s.inflight.remove(&packet_id) {
                    super::release(&mut s.bytes, &mut self.queued_bytes, i.out.size());
                }
            }
            Change::Dropped {
                client_id,
                message_id,
            } => {
                let Some(sid) = self.sid_of(&client_id) else {
                    return;
                };
                let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::as_mut) else {
                    return;
                };
                if let Some(pos) = s.queue.iter().position(|o| o.msg.id == message_id)
                    && let Some(o) = s.queue.remove(pos)
                {
                    super::release(&mut s.bytes, &mut self.queued_bytes, o.size());
                }
            }
            Change::InboundQoS2 {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.rx_qos2.insert(packet_id);
                }
            }
            Change::InboundReleased {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.rx_qos2.remove(&packet_id);
                }
            }
            Change::RetainedSet { message } => {
                self.restored_msg_id(message.id);
                // Another sibling's topic comes again from its owner.
                if self.owns(&message.topic) {
                    self.retained.set(message);
                }
            }
            Change::RetainedCleared { topic } => {
                self.retained.clear(&topic);
            }
            Change::WillPending {
                client_id,
                message,
                at,
            } => {
                self.restored_msg_id(message.id);
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.pending_will = Some((message, at));
                }
            }
            Change::WillCleared { client_id } => {
                if let Some(s) = self.sid_of(&client_id).and_then(|i| self.session_mut(i)) {
                    s.pending_will = None;
                }
            }
            Change::Forwarding {
                message,
                targets,
                known,
            } => {
                let id = message.id;
                self.restored_msg_id(id);
                if let Some(sib) = self.siblings.as_mut() {
                    let p = Pending {
                        msg: message,
                        targets,
                        known,
                    };
                    sib.restored.insert(id, p);
                }
            }
            Change::Forwarded { message_id } => {
                if let Some(sib) = self.siblings.as_mut() {
                    sib.restored.remove(&message_id);
                }
            }
            Change::ForwardSeen { message_id } => {
                self.restored_msg_id(message_id);
                if let Some(sib) = self.siblings.as_mut() {
                    sib.seen.insert(message_id);
                }
            }
            Change::ForwardForgotten { message_id } => {
                if let Some(sib) = self.siblings.as_mut() {
                    sib.seen.remove(&message_id);
                }
            }
        }
    }

    /// Removes a session without records or will (replaying an end that already happened).
    fn drop_session_quietly(&mut self, sid: u32) {
        let Some(s) = self.sessions.get_mut(sid as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(sid);
        self.by_id.remove(&s.client_id);
        self.queued_bytes = self.queued_bytes.saturating_sub(s.bytes);
        for (slot, sub) in s.subs.iter().enumerate() {
            let Some(sub) = sub else { continue };
            if let Ok(filter) = TopicFilter::new(&sub.filter) {
                let slot = u32::try_from(slot).unwrap_or(u32::MAX);
                self.index.remove(filter, &SubKey { session: sid, slot });
                self.count_filter(&sub.filter, sub.shared, false);
            }
        }
    }

    fn remove_subscription_quietly(&mut self, sid: u32, filter: TopicFilter<'_>) {
        let Some(s) = self.session_mut(sid) else {
            return;
        };
        let Some(slot) = s.find_sub(filter.as_str()) else {
            return;
        };
        if let Some(sub) = s.subs.get_mut(slot) {
            *sub = None;
        }
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        self.index.remove(filter, &SubKey { session: sid, slot });
        self.count_filter(filter.as_str(), filter.shared().is_some(), false);
    }

    /// The durable state: persistent sessions and retained messages (not `$SYS`).
    pub fn snapshot(&self) -> Snapshot {
        let mut sessions: Vec<SessionSnapshot> = self
            .sessions
            .iter()
            .flatten()
            .filter(|s| s.persistent)
            .map(|s| {
                let mut subscriptions: Vec<_> = s
                    .subs
                    .iter()
                    .flatten()
                    .map(|sub: &Sub| (sub.filter.clone(), sub.options, sub.id))
                    .collect();
                subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
                // By packet id: the map's own order is arbitrary.
                let mut inflight: Vec<(u16, u64, bool)> = s
                    .inflight
                    .iter()
                    .map(|(id, i)| (id.get(), i.out.msg.id, i.state == OutState::AwaitComp))
                    .collect();
                inflight.sort_unstable();
                SessionSnapshot {
                    client_id: Box::from(&*s.client_id),
                    expiry: s.expiry,
                    subscriptions,
                    queued: s
                        .queue
                        .iter()
                        .filter(|o| o.qos != QoS::AtMostOnce)
                        .map(|o| (o.msg.id, o.qos))
                        .collect(),
                    inflight,
                    inbound_qos2: s.rx_qos2.iter().map(|id: &PacketId| id.get()).collect(),
                    pending_will: s.pending_will.as_ref().map(|(m, _)| m.id),
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut retained = Vec::new();
        self.retained.for_each(|m| {
            if !m.topic.starts_with('$') {
                retained.push((m.topic.clone(), m.id, m.payload.clone()));
            }
        });
        retained.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot { sessions, retained }
    }
}
