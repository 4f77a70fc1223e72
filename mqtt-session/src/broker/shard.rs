//! Sibling brokers that split one server's connections between them (one per core), and what
//! passes between them.
//!
//! Each sibling is a whole [`Broker`](super::Broker) that owns the connections and sessions
//! given to it (the runtime picks the sibling by a hash of the client id, so a session and its
//! takeovers always meet on one sibling) and shares nothing else. What crosses is a
//! [`Forward`]: a message published here, for the others' subscribers; a retained message set
//! or cleared by the sibling that owns its topic; the member count of a share group.
//!
//! - **Messages.** A message published on a sibling is routed to its own subscribers and
//!   forwarded to each sibling that subscribes to a matching filter, serves a share group of
//!   it, or owns its retained topic; that sibling routes it to its subscribers. Each sibling
//!   tells the others when its first subscription on a filter comes or its last goes
//!   ([`Relay::Interest`]), and a SUBACK waits until every sibling has applied that (answered
//!   [`Relay::Stored`] with the SUBSCRIBE's token), so a message published anywhere after the
//!   SUBACK reaches the new subscription. Order is kept per publisher as long as the runtime
//!   hands each sibling's forwards over in the order they come.
//! - **Retained messages.** Each topic has one owner sibling (a hash of the topic). Only the
//!   owner stores a retained publish first, then tells every other sibling to store the same,
//!   so every sibling applies the changes of a topic in the owner's order and none keeps an
//!   older one. A subscription made on another sibling meanwhile gets the previous one.
//! - **Share groups.** Each sibling tells the others how many members it has in each group.
//!   The sibling a message is published on picks the member: round-robin over every member of
//!   every sibling, its own first when it has one whose window is open. The forward to the
//!   chosen sibling names the group; the others skip it. A group the publisher's sibling has
//!   not heard of yet (its members joined a moment ago) is served by the lowest sibling that
//!   has members, so no message is lost to it while the counts travel. (Members that join on
//!   two siblings at the same moment may, until their counts have crossed, both be given one
//!   message.) A member whose window is full is passed over for one elsewhere. A sibling
//!   whose last member of a group left may still be picked until its new count arrives (one
//!   hand-over); such a copy is dropped and counted
//!   ([`Drops::member_left`](super::Drops::member_left)), as a message with no member is.
//!   (Handing it on would need its durability and exactly-once bookkeeping to follow it.)
//! - **Back-pressure.** A forwarded message that leaves a connected subscriber's session more
//!   than half full tells the publisher's sibling to hold the publisher ([`Relay::Press`]),
//!   as a local subscriber would; the session lets it go when it drains below a quarter
//!   ([`Relay::Relieve`]). The hold comes one hand-over late, so a publisher may send one more
//!   read's worth first. So a sibling also holds a publisher while more than [`WINDOW`] of
//!   its messages are on their way to another sibling and not yet taken ([`Relay::Took`]):
//!   what is in flight between two siblings is bounded, and a subscriber with less room left
//!   than that can still be overrun by many fast publishers elsewhere (what does not fit is
//!   dropped and counted).
//! - **`$SYS`.** At each tick a sibling sends its counters to the others and publishes its
//!   own added to theirs, so every sibling's `$SYS` topics count the whole server.
//! - **Persistence.** Each sibling records its own sessions and the retained messages it
//!   owns (after a restore it hands those to the others again). With acknowledgments held
//!   ([`Config::hold_acks_until_durable`](super::Config::hold_acks_until_durable)) a
//!   publisher's PUBACK or PUBREC waits until every sibling answered [`Relay::Stored`] for
//!   its message, that is until each one's records of its copies are durable. So nothing
//!   acknowledged is lost in a crash. Restored siblings must skip every message id any of
//!   them holds ([`Broker::skip_message_ids`](super::Broker::skip_message_ids)), and the
//!   siblings of one server crash and restart together.
//! - **QoS 2 exactly once across a crash.** One sibling's store cannot commit together with
//!   another's, so a persistent session's QoS 2 message (and its QoS 2 will, once recorded
//!   as pending) is made exact in three steps:
//!   1. its sibling records its inbound id and the message as forwarding
//!      ([`Change::Forwarding`](super::Change::Forwarding): the message, the siblings it goes
//!      to and the share groups each serves), and its forwards wait until those records are
//!      durable (what follows them waits too, to keep the order). A crash before then loses
//!      it everywhere, and the publisher's resend is a new message;
//!   2. each sibling that takes it records that ([`Change::ForwardSeen`](super::Change::ForwardSeen)),
//!      in the batch of its copies. A restarted publisher's sibling forwards again whatever
//!      is still recorded as forwarding, and a sibling that took it already only answers;
//!   3. once every sibling answered [`Relay::Stored`], the forwarding record goes
//!      ([`Change::Forwarded`](super::Change::Forwarded)); once that is durable, a
//!      [`Relay::Horizon`] tells the others they may forget what they took below its oldest
//!      message still forwarding (a restored sibling sends one too, for the records the
//!      crash took with the word).
//!
//!   The cost is one more sync of the publisher's sibling before the message crosses.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use mqtt_proto::TopicFilter;

use super::message::{Message, Shared};
use super::types::{ConnId, Stats};
use crate::Router;

/// This broker's place among its siblings (the default: alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which sibling this is, `0..count`.
    pub index: u16,
    /// How many siblings there are (1: alone, nothing is forwarded).
    pub count: u16,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// The sibling that orders the retained messages of `topic`.
    pub fn owner(&self, topic: &str) -> u16 {
        // FNV-1a: the same on every sibling and every build, unlike a seeded hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in topic.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        u16::try_from(h % u32::from(self.count.max(1))).unwrap_or(0)
    }
}

/// Something one sibling tells another, from [`Broker::poll_forward`](super::Broker::poll_forward).
#[derive(Debug, Clone)]
pub struct Forward {
    /// The sibling it is for; `None`: every other one.
    pub to: Option<u16>,
    /// What it says.
    pub relay: Relay,
}

/// The content of a [`Forward`], given to [`Broker::handle_forward`](super::Broker::handle_forward).
#[derive(Debug, Clone)]
pub enum Relay {
    /// A message published on the sender, for this sibling's subscribers.
    Publish {
        /// The message (its id is unique among the siblings).
        msg: Shared<Message>,
        /// The publisher's connection on the sender (none for a will), which a subscriber
        /// here that it fills may hold ([`Relay::Press`]).
        origin: Option<ConnId>,
        /// The sender holds the publisher's acknowledgment until this sibling's records of
        /// the message are durable: answer [`Relay::Stored`] then.
        confirm: bool,
        /// The share groups (full `$share/...` filters) this sibling delivers it to.
        groups: Box<[Box<str>]>,
        /// Every share group the sender picked a sibling for; a group of this sibling that is
        /// in neither list was unknown to the sender.
        known: Box<[Box<str>]>,
        /// A QoS 2 message the sender recorded as forwarding ([`Change::Forwarding`]): it may
        /// come again after the sender's restart, and is taken once.
        ///
        /// [`Change::Forwarding`]: super::Change::Forwarding
        exact: bool,
    },
    /// Of the messages the sender forwarded before this, it will not forward again any below
    /// this id: what this sibling remembers having taken of those is forgotten.
    Horizon {
        /// The lowest message id the sender may still forward again.
        below: u64,
    },
    /// A subscriber's session `session` on the sender is more than half full with what
    /// publisher `conn` (of this sibling) sends: hold it, as a local subscriber would.
    Press {
        /// The publisher here.
        conn: ConnId,
        /// The session on the sender.
        session: u32,
    },
    /// That session drained (or went): it holds publisher `conn` no longer.
    Relieve {
        /// The publisher here.
        conn: ConnId,
        /// The session on the sender.
        session: u32,
    },
    /// This sibling's records of message `id` (forwarded with `confirm`) are durable, or it
    /// applied what came with token `id`.
    Stored {
        /// The message or token.
        id: u64,
    },
    /// The sender handled this many more of the messages this sibling forwarded to it (its
    /// publishers are held while too many are on their way: see [`WINDOW`]).
    Took {
        /// How many since the last `Took`.
        n: u32,
    },
    /// The sender's counters, for the `$SYS` topics each sibling publishes for all (boxed:
    /// every forward is as large as the largest).
    Counters(Box<Stats>),
    /// Store this as the retained message of its topic (an empty payload clears it).
    Retain(Shared<Message>),
    /// The sender now has this many members in share group `filter`.
    Group {
        /// The full `$share/{group}/{filter}`.
        filter: Box<str>,
        /// Its members on the sender.
        members: u32,
        /// Answer [`Relay::Stored`] with it, unless 0 (a SUBACK waits for the answers).
        token: u64,
    },
    /// The sender has subscriptions on plain filter `filter` now (`on`), or none any more:
    /// messages matching it are forwarded to it.
    Interest {
        /// The filter.
        filter: Box<str>,
        /// Whether some session on the sender subscribes to it.
        on: bool,
        /// Answer [`Relay::Stored`] with it, unless 0 (a SUBACK waits for the answers).
        token: u64,
    },
}

/// A message published here whose copies on the siblings are not all stored yet.
#[derive(Debug)]
pub(crate) struct Unstored {
    /// Siblings yet to answer [`Relay::Stored`].
    pub(crate) left: u16,
    /// The publisher whose acknowledgment waits.
    pub(crate) publisher: Option<ConnId>,
    /// A message recorded as forwarding ([`Change::Forwarding`](super::Change::Forwarding)):
    /// once every copy is stored, the record goes.
    pub(crate) exact: bool,
}

/// A forward recorded as [`Change::Forwarding`](super::Change::Forwarding), restored.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) msg: Shared<Message>,
    pub(crate) targets: Vec<(u16, Box<[Box<str>]>)>,
    pub(crate) known: Box<[Box<str>]>,
}

/// Messages one sibling may have forwarded to another and not heard were handled
/// ([`Relay::Took`]) before the publishers sending them are held; they go on below half of
/// it. A sibling's subscriber holds a publisher elsewhere only once that word arrives
/// ([`Relay::Press`]), so what is on its way must fit in what the subscriber has left.
pub const WINDOW: u32 = 4096;

/// The hold key (with the sibling's index) of a publisher held for that sibling's window.
pub(crate) const WINDOW_KEY: u32 = u32::MAX;

/// Counts one more (`joined`) or one less subscription on `filter` in `counts`, forgetting
/// it at 0; returns the count before and after.
fn count(counts: &mut BTreeMap<Box<str>, u32>, filter: &str, joined: bool) -> (u32, u32) {
    let n = counts.entry(Box::from(filter)).or_insert(0);
    let before = *n;
    *n = if joined {
        n.saturating_add(1)
    } else {
        n.saturating_sub(1)
    };
    let after = *n;
    if after == 0 {
        counts.remove(filter);
    }
    (before, after)
}

/// A share group some sibling has members in.
#[derive(Debug)]
struct Group {
    filter: Box<str>,
    /// Members per sibling.
    members: Vec<u32>,
}

/// The sibling state of a broker that has siblings.
#[derive(Debug)]
pub(crate) struct Siblings {
    pub(crate) me: Shard,
    /// What to tell the siblings, each with the record that must be durable first (0: none);
    /// it goes out in order, so what follows a gated forward waits too.
    pub(crate) out: VecDeque<(u64, Forward)>,
    /// Answers and counts ([`Relay::Stored`], [`Relay::Took`], [`Relay::Press`],
    /// [`Relay::Relieve`], [`Relay::Counters`]), which no order with `out` binds: they go
    /// first, so a sibling's publisher never waits for this sibling's disk.
    pub(crate) answers: VecDeque<Forward>,
    /// The forwards of the QoS 2 message being published, until its records are made: they
    /// wait for them (see [`Siblings::publish`]).
    pub(crate) staged: Vec<Forward>,
    /// The other siblings' QoS 2 messages taken here, until their sender's [`Relay::Horizon`]
    /// passes them.
    pub(crate) seen: BTreeSet<u64>,
    /// The forwards restored from [`Change::Forwarding`](super::Change::Forwarding) records,
    /// to send again.
    pub(crate) restored: BTreeMap<u64, Pending>,
    /// Members of each local share group.
    local: BTreeMap<Box<str>, u32>,
    /// Local subscriptions per plain filter, and the siblings' filters by sibling.
    filters: BTreeMap<Box<str>, u32>,
    pub(crate) interest: Router<u16>,
    /// Share groups with members elsewhere, by slot, and their index by topic.
    groups: Vec<Group>,
    slots: BTreeMap<Box<str>, u32>,
    index: Router<u32>,
    /// Round-robin position per group, over every member of every sibling.
    cursor: BTreeMap<Box<str>, u32>,
    /// The last counters each sibling sent.
    pub(crate) counters: Vec<Stats>,
    /// Messages published here whose copies elsewhere are not stored yet.
    pub(crate) unstored: BTreeMap<u64, Unstored>,
    /// Messages forwarded here to answer [`Relay::Stored`] for once the records up to this
    /// seq are durable: (seq, sender, message).
    pub(crate) to_confirm: VecDeque<(u64, u16, u64)>,
    /// Per sibling: messages forwarded to it not yet taken, messages it forwarded here
    /// handled and not yet reported, and the publishers held for its window.
    in_flight: Vec<u32>,
    taken: Vec<u32>,
    window_waiters: Vec<Vec<ConnId>>,
}

/// Where a share group's copy of a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    Here,
    There(u16),
}

impl Siblings {
    pub(crate) fn new(me: Shard) -> Self {
        Siblings {
            me,
            out: VecDeque::new(),
            answers: VecDeque::new(),
            staged: Vec::new(),
            seen: BTreeSet::new(),
            restored: BTreeMap::new(),
            local: BTreeMap::new(),
            filters: BTreeMap::new(),
            interest: Router::new(),
            groups: Vec::new(),
            slots: BTreeMap::new(),
            index: Router::new(),
            cursor: BTreeMap::new(),
            counters: alloc::vec![Stats::default(); usize::from(me.count)],
            unstored: BTreeMap::new(),
            to_confirm: VecDeque::new(),
            in_flight: alloc::vec![0; usize::from(me.count)],
            taken: alloc::vec![0; usize::from(me.count)],
            window_waiters: alloc::vec![Vec::new(); usize::from(me.count)],
        }
    }

    /// A local member joined (`+1`) or left (`-1`) share group `filter`: the others are told.
    pub(crate) fn member(&mut self, filter: &str, joined: bool, token: u64) {
        let (_, members) = count(&mut self.local, filter, joined);
        self.send(Forward {
            to: None,
            relay: Relay::Group {
                filter: Box::from(filter),
                members,
                token,
            },
        });
    }

    /// A local subscription on plain `filter` came (`joined`) or went: the others are told
    /// when it is the first or the last. Returns whether they were.
    pub(crate) fn interest(&mut self, filter: &str, joined: bool, token: u64) -> bool {
        let (before, after) = count(&mut self.filters, filter, joined);
        if (before == 0) == (after == 0) {
            return false;
        }
        self.send(Forward {
            to: None,
            relay: Relay::Interest {
                filter: Box::from(filter),
                on: after > 0,
                token,
            },
        });
        true
    }

    /// Sibling `from` subscribes to `filter` now, or no more.
    pub(crate) fn remote_interest(&mut self, from: u16, filter: &str, on: bool) {
        let Ok(f) = TopicFilter::new(filter) else {
            return;
        };
        if on {
            self.interest.insert(f, from);
        } else {
            self.interest.remove(f, &from);
        }
    }

    /// Sibling `from` has `members` members in `filter` now.
    pub(crate) fn remote_members(&mut self, from: u16, filter: &str, members: u32) {
        let Ok(f) = TopicFilter::new(filter) else {
            return;
        };
        let count = usize::from(self.me.count);
        let slot = match self.slots.get(filter) {
            Some(&s) => s,
            None if members == 0 => return,
            None => {
                let s = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
                self.groups.push(Group {
                    filter: Box::from(filter),
                    members: alloc::vec![0; count],
                });
                self.slots.insert(Box::from(filter), s);
                self.index.insert(f, s);
                s
            }
        };
        if let Some(m) = self
            .groups
            .get_mut(slot as usize)
            .and_then(|g| g.members.get_mut(usize::from(from)))
        {
            *m = members;
        }
        // A group left empty everywhere keeps its slot (groups come back; slots stay few).
    }

    /// The share groups with members elsewhere that `topic` matches, with their counts.
    pub(crate) fn remote_groups(&self, topic: &str, out: &mut Vec<Box<str>>) {
        if self.groups.is_empty() {
            return;
        }
        self.index.for_each_match(topic, |&s| {
            if let Some(g) = self.groups.get(s as usize)
                && g.members.iter().any(|&m| m > 0)
            {
                out.push(g.filter.clone());
            }
        });
    }

    /// Where the next copy for group `filter` goes, `local` members being here.
    pub(crate) fn pick(&mut self, filter: &str, local: u32) -> Option<Pick> {
        let remote = self
            .slots
            .get(filter)
            .and_then(|&s| self.groups.get(s as usize));
        let me = usize::from(self.me.index);
        let elsewhere = |g: &Group| {
            g.members
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != me)
                .map(|(_, &m)| m)
                .sum::<u32>()
        };
        let total = local + remote.map_or(0, elsewhere);
        if total == 0 {
            return None;
        }
        let c = self.cursor.entry(Box::from(filter)).or_insert(0);
        let mut slot = *c % total;
        *c = c.wrapping_add(1);
        if slot < local {
            return Some(Pick::Here);
        }
        slot -= local;
        for (i, &m) in remote
            .map(|g| g.members.as_slice())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if i == me {
                continue;
            }
            if slot < m {
                return u16::try_from(i).ok().map(Pick::There);
            }
            slot -= m;
        }
        Some(Pick::Here)
    }

    /// Another sibling with members in `filter` than `not` (the first after this one).
    pub(crate) fn other_member(&self, filter: &str, not: u16) -> Option<u16> {
        let g = self.groups.get(*self.slots.get(filter)? as usize)?;
        let count = g.members.len();
        (1..count)
            .map(|k| (usize::from(self.me.index) + k) % count)
            .find(|&i| i != usize::from(not) && g.members.get(i).is_some_and(|&m| m > 0))
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Whether this sibling serves group `filter`, unknown to the publisher's sibling `from`:
    /// no sibling below it (but `from`) has members.
    pub(crate) fn serves_unknown(&self, filter: &str, from: u16) -> bool {
        let Some(g) = self
            .slots
            .get(filter)
            .and_then(|&s| self.groups.get(s as usize))
        else {
            return true;
        };
        g.members
            .iter()
            .take(usize::from(self.me.index))
            .enumerate()
            .all(|(i, &m)| m == 0 || i == usize::from(from))
    }

    /// A message sibling `from` forwarded was handled here.
    pub(crate) fn took_one(&mut self, from: u16) {
        if let Some(t) = self.taken.get_mut(usize::from(from)) {
            *t = t.saturating_add(1);
        }
    }

    /// Queues a [`Relay::Took`] for each sibling with a quarter of a window of its messages
    /// handled since the last (fewer would cost a hand-over back for every few messages; a
    /// quarter still lets a held publisher go, below half, once all its messages were taken).
    pub(crate) fn report_taken(&mut self) {
        for (to, n) in self.taken.iter_mut().enumerate() {
            if *n >= WINDOW / 4 {
                let relay = Relay::Took {
                    n: core::mem::take(n),
                };
                let to = u16::try_from(to).ok();
                self.answers.push_back(Forward { to, relay });
            }
        }
    }

    /// Sibling `from` took `n` of ours: the publishers held for its window, once it has room.
    pub(crate) fn took(&mut self, from: u16, n: u32) -> Vec<ConnId> {
        let i = usize::from(from);
        let Some(f) = self.in_flight.get_mut(i) else {
            return Vec::new();
        };
        *f = f.saturating_sub(n);
        if *f > WINDOW / 2 {
            return Vec::new();
        }
        self.window_waiters
            .get_mut(i)
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Counts one more message on its way to sibling `to`; whether its window is past.
    fn sent_to(&mut self, to: u16) -> bool {
        let Some(f) = self.in_flight.get_mut(usize::from(to)) else {
            return false;
        };
        *f = f.saturating_add(1);
        *f > WINDOW
    }

    /// Holds `conn` for the windows of the siblings in `full`; returns their hold keys.
    pub(crate) fn wait_for_windows(&mut self, conn: ConnId, full: u64) -> Vec<(u16, u32)> {
        let mut keys = Vec::new();
        for (i, w) in self.window_waiters.iter_mut().enumerate() {
            if full & (1 << (i % 64)) != 0 {
                if !w.contains(&conn) {
                    w.push(conn);
                }
                keys.push((u16::try_from(i).unwrap_or(u16::MAX), WINDOW_KEY));
            }
        }
        keys
    }

    /// The forwards of one message published here: one per sibling that wants it, each
    /// naming the groups it serves. Returns the siblings whose window it filled.
    ///
    /// An `exact` message's forwards are staged: they wait for its records, and for the
    /// [`Change::Forwarding`](super::Change::Forwarding) record the broker makes of them, to
    /// be durable, so that no sibling takes a message its sender could forget in a crash.
    pub(crate) fn publish(
        &mut self,
        msg: &Shared<Message>,
        origin: Option<ConnId>,
        confirm: bool,
        exact: bool,
        picked: &[(u16, Box<str>)],
    ) -> u64 {
        // To the siblings that subscribe to a matching filter, that serve a share group of
        // it, or that own its retained topic.
        let mut to_mask: u64 = 0;
        self.interest
            .for_each_match(&msg.topic, |&s| to_mask |= 1 << (s % 64));
        for (s, _) in picked {
            to_mask |= 1 << (s % 64);
        }
        if msg.retain {
            to_mask |= 1 << (self.me.owner(&msg.topic) % 64);
        }
        to_mask &= !(1 << (self.me.index % 64));
        if confirm && to_mask != 0 {
            let entry = Unstored {
                left: u16::try_from(to_mask.count_ones()).unwrap_or(u16::MAX),
                publisher: origin,
                exact,
            };
            self.unstored.insert(msg.id, entry);
        }
        let known: Box<[Box<str>]> = picked.iter().map(|(_, f)| f.clone()).collect();
        let mut full = 0u64;
        for to in 0..self.me.count {
            if to_mask & (1 << (to % 64)) == 0 {
                continue;
            }
            if self.sent_to(to) {
                full |= 1 << (to % 64);
            }
            let groups = picked
                .iter()
                .filter(|(s, _)| *s == to)
                .map(|(_, f)| f.clone())
                .collect();
            let f = Forward {
                to: Some(to),
                relay: Relay::Publish {
                    msg: msg.clone(),
                    origin,
                    confirm,
                    groups,
                    known: known.clone(),
                    exact,
                },
            };
            if exact {
                self.staged.push(f);
            } else {
                self.send(f);
            }
        }
        full
    }

    /// Sends the staged forwards once record `seq` is durable; returns what the
    /// [`Change::Forwarding`](super::Change::Forwarding) record says of them.
    pub(crate) fn unstage(&mut self, seq: u64) -> Option<Pending> {
        let mut msg = None;
        let mut known = Box::default();
        let mut targets = Vec::new();
        for f in core::mem::take(&mut self.staged) {
            if let (
                Some(to),
                Relay::Publish {
                    msg: m,
                    groups,
                    known: k,
                    ..
                },
            ) = (f.to, &f.relay)
            {
                targets.push((to, groups.clone()));
                known = k.clone();
                msg = Some(m.clone());
            }
            self.out.push_back((seq, f));
        }
        Some(Pending {
            msg: msg?,
            targets,
            known,
        })
    }

    /// Forwards again what was restored as forwarding: each sibling takes it once. The
    /// others forget having taken the rest (whose records here may be gone, with the word
    /// that would have told them).
    pub(crate) fn resend_restored(&mut self) {
        let below = self.restored.keys().next().copied().unwrap_or(u64::MAX);
        self.send(Forward {
            to: None,
            relay: Relay::Horizon { below },
        });
        for (id, p) in core::mem::take(&mut self.restored) {
            let entry = Unstored {
                left: u16::try_from(p.targets.len()).unwrap_or(u16::MAX),
                publisher: None,
                exact: true,
            };
            self.unstored.insert(id, entry);
            for (to, groups) in p.targets {
                self.sent_to(to);
                self.send(Forward {
                    to: Some(to),
                    relay: Relay::Publish {
                        msg: p.msg.clone(),
                        origin: None,
                        confirm: true,
                        groups,
                        known: p.known.clone(),
                        exact: true,
                    },
                });
            }
        }
    }

    /// Answers sibling `to`, ahead of the ordered forwards (see `answers`).
    pub(crate) fn answer(&mut self, to: u16, relay: Relay) {
        self.answers.push_back(Forward {
            to: Some(to),
            relay,
        });
    }

    /// Queues `f` for the siblings.
    pub(crate) fn send(&mut self, f: Forward) {
        self.out.push_back((0, f));
    }

    /// The origin sibling of message `id` (each sibling gives every `count`-th id).
    pub(crate) fn origin(&self, id: u64) -> u16 {
        let step = u64::from(self.me.count.max(1));
        u16::try_from(id.wrapping_sub(1) % step).unwrap_or(0)
    }

    /// Tells the others, once record `seq` is durable, what this sibling may still forward
    /// again of what it forwarded so far: from its oldest message recorded as forwarding on,
    /// else nothing. (Later forwards come after the [`Relay::Horizon`] that says so, and are
    /// not affected.) One still waiting at the end of the queue is moved on instead: a word
    /// per batch, not per message.
    pub(crate) fn advance_horizon(&mut self, seq: u64) {
        let oldest = self.unstored.iter().find(|(_, u)| u.exact);
        let below = oldest.map_or(u64::MAX, |(id, _)| *id);
        if let Some((gate, f)) = self.out.back_mut()
            && let Relay::Horizon { below: b } = &mut f.relay
        {
            *gate = seq;
            *b = below;
            return;
        }
        let f = Forward {
            to: None,
            relay: Relay::Horizon { below },
        };
        self.out.push_back((seq, f));
    }

    /// Every other sibling stores `msg` as its topic's retained message.
    pub(crate) fn retain(&mut self, msg: Shared<Message>) {
        self.send(Forward {
            to: None,
            relay: Relay::Retain(msg),
        });
    }
}
