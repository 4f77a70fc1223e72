//! Outgoing messages kept by the session: queued, in flight, or awaiting PUBCOMP.
//!
//! Messages are stored as encoded PUBLISH packets in one fixed byte buffer, in the order they
//! were accepted, so they are resent in order and a zero-copy decode gives back a view of any
//! of them. Removing a message compacts the buffer: with the small counts an MQTT client keeps
//! in flight, one `copy_within` is cheaper than any free-list and never fragments.

use mqtt_proto::PacketId;

use crate::Instant;

/// Where an outgoing packet stands in its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutState {
    /// Accepted, not sent on this connection.
    Queued,
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP (the bytes are kept: without a session they are sent
    /// again as a new message).
    AwaitPubComp,
    /// SUBSCRIBE or UNSUBSCRIBE sent, waiting for its acknowledgment.
    AwaitAck,
    /// A granted subscription, kept to be restored when a server has lost the session.
    Active,
}

/// What kind of packet an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Kind {
    /// An application message.
    Publish,
    /// A SUBSCRIBE.
    Subscribe,
    /// An UNSUBSCRIBE.
    Unsubscribe,
    /// A granted subscription: a single-filter SUBSCRIBE to send again after a session loss.
    Subscription,
    /// The topic name the server gave an incoming topic alias (the token is the alias).
    Alias,
}

/// The bookkeeping of one stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Entry {
    /// The token the user got back from `publish`.
    pub token: u32,
    /// What the stored bytes are.
    pub kind: Kind,
    /// Whether the packet (or, past PUBREC, its PUBREL) must go out again on this connection.
    pub resend: bool,
    /// Packet identifier, once the message has been sent at QoS 1 or 2.
    pub packet_id: Option<PacketId>,
    /// Exchange state.
    pub state: OutState,
    /// Eviction priority, 1 (first to go) to 10.
    pub priority: u8,
    /// When the message was accepted.
    pub accepted_at: Instant,
    /// The key of its journal records (0: not journaled; see [`crate::journal`]).
    pub key: u64,
    /// The journal sequence number of its last record, which must be durable before it is
    /// (re)transmitted.
    pub(crate) lsn: u64,
    /// A change of its persistent state has not been reported as a record yet.
    pub(crate) dirty: bool,
    start: usize,
    len: usize,
}

impl Entry {
    /// Size of the stored bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are stored.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this is a QoS 1/2 message on the wire, counted against the inflight window.
    pub const fn in_flight(&self) -> bool {
        matches!(
            self.state,
            OutState::AwaitPubAck | OutState::AwaitPubRec | OutState::AwaitPubComp
        )
    }
}

/// Why a message could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StoreFull {
    /// Every slot is taken.
    Slots,
    /// Not enough free bytes.
    Bytes,
}

/// Where a [`Store`] keeps its entries and bytes.
///
/// [`Fixed`] uses arrays sized at compile time (no allocator: firmware); with the `alloc`
/// feature, [`Heap`] uses buffers sized at run time, so a server-side client can hold megabytes
/// without carrying them inline (or on the stack while it is built).
pub trait Backing {
    /// The entries, in order.
    fn entries(&self) -> &[Entry];
    /// The entries, mutable.
    fn entries_mut(&mut self) -> &mut [Entry];
    /// Appends an entry; gives it back when there is no slot for it.
    fn push_entry(&mut self, e: Entry) -> Result<(), Entry>;
    /// Removes the entry at `index` (which the caller checked), shifting the rest down.
    fn remove_entry(&mut self, index: usize) -> Option<Entry>;
    /// How many entries fit.
    fn max_entries(&self) -> usize;
    /// The packet bytes.
    fn data(&self) -> &[u8];
    /// The packet bytes, mutable.
    fn data_mut(&mut self) -> &mut [u8];
}

/// Storage in arrays: `SLOTS` entries and `BYTES` bytes, no allocator needed.
#[derive(Debug)]
pub struct Fixed<const SLOTS: usize, const BYTES: usize> {
    entries: heapless::Vec<Entry, SLOTS>,
    data: [u8; BYTES],
}

impl<const SLOTS: usize, const BYTES: usize> Default for Fixed<SLOTS, BYTES> {
    fn default() -> Self {
        Fixed {
            entries: heapless::Vec::new(),
            data: [0; BYTES],
        }
    }
}

impl<const SLOTS: usize, const BYTES: usize> Backing for Fixed<SLOTS, BYTES> {
    fn entries(&self) -> &[Entry] {
        &self.entries
    }
    fn entries_mut(&mut self) -> &mut [Entry] {
        &mut self.entries
    }
    fn push_entry(&mut self, e: Entry) -> Result<(), Entry> {
        self.entries.push(e)
    }
    fn remove_entry(&mut self, index: usize) -> Option<Entry> {
        (index < self.entries.len()).then(|| self.entries.remove(index))
    }
    fn max_entries(&self) -> usize {
        SLOTS
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// Storage on the heap, sized when the client is made.
///
/// Removing an entry moves whichever side of it is shorter, so acknowledging the oldest
/// messages of a long queue costs O(1), not O(queue).
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct Heap {
    /// Live entries are `entries[first..]`.
    entries: alloc::vec::Vec<Entry>,
    first: usize,
    max_entries: usize,
    data: alloc::boxed::Box<[u8]>,
}

#[cfg(feature = "alloc")]
impl Heap {
    /// Room for `max_entries` packets in `bytes` bytes.
    pub fn new(max_entries: usize, bytes: usize) -> Self {
        Heap {
            entries: alloc::vec::Vec::new(),
            first: 0,
            max_entries,
            data: alloc::vec![0; bytes].into_boxed_slice(),
        }
    }
}

#[cfg(feature = "alloc")]
impl Backing for Heap {
    fn entries(&self) -> &[Entry] {
        self.entries.get(self.first..).unwrap_or_default()
    }
    fn entries_mut(&mut self) -> &mut [Entry] {
        self.entries.get_mut(self.first..).unwrap_or_default()
    }
    fn push_entry(&mut self, e: Entry) -> Result<(), Entry> {
        if self.entries.len() - self.first >= self.max_entries {
            return Err(e);
        }
        self.entries.push(e);
        Ok(())
    }
    fn remove_entry(&mut self, index: usize) -> Option<Entry> {
        let live = self.entries.len() - self.first;
        let at = self.first + index;
        let e = *self.entries.get(at)?;
        if index < live / 2 {
            // Shift the entries before it up by one and drop the first slot.
            self.entries.copy_within(self.first..at, self.first + 1);
            self.first += 1;
            if self.first >= 64 && self.first * 2 >= self.entries.len() {
                self.entries.drain(..self.first);
                self.first = 0;
            }
        } else {
            self.entries.remove(at);
        }
        Some(e)
    }
    fn max_entries(&self) -> usize {
        self.max_entries
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// Ordered message storage over a [`Backing`].
#[derive(Debug, Default)]
pub struct Store<B> {
    backing: B,
    /// Live bytes are `data[head..used]`, in entry order.
    head: usize,
    used: usize,
}

impl<const SLOTS: usize, const BYTES: usize> Store<Fixed<SLOTS, BYTES>> {
    /// An empty store in arrays.
    pub fn new() -> Self {
        Store::with_backing(Fixed::default())
    }
}

impl<B: Backing> Store<B> {
    /// An empty store over `backing`.
    pub fn with_backing(backing: B) -> Self {
        Store {
            backing,
            head: 0,
            used: 0,
        }
    }

    /// How many entries fit.
    pub fn max_entries(&self) -> usize {
        self.backing.max_entries()
    }

    /// How many bytes fit.
    pub fn capacity(&self) -> usize {
        self.backing.data().len()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.backing.entries().len()
    }

    /// Whether there are no messages.
    pub fn is_empty(&self) -> bool {
        self.backing.entries().is_empty()
    }

    /// Bytes of packet data held.
    pub const fn bytes_used(&self) -> usize {
        self.used - self.head
    }

    /// Whether a message of `len` bytes fits without evicting anything.
    pub fn fits(&self, len: usize) -> Result<(), StoreFull> {
        if self.backing.entries().len() >= self.backing.max_entries() {
            Err(StoreFull::Slots)
        } else if self.capacity() - self.bytes_used() < len {
            Err(StoreFull::Bytes)
        } else {
            Ok(())
        }
    }

    /// The entries in acceptance order.
    pub fn entries(&self) -> &[Entry] {
        self.backing.entries()
    }

    /// The entry at `index`.
    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.backing.entries().get(index)
    }

    /// The entry at `index`, mutable (its bytes stay where they are).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Entry> {
        self.backing.entries_mut().get_mut(index)
    }

    /// The stored bytes of the entry at `index`.
    pub fn bytes(&self, index: usize) -> &[u8] {
        self.backing
            .entries()
            .get(index)
            .and_then(|e| self.backing.data().get(e.start..e.start + e.len))
            .unwrap_or_default()
    }

    /// Position of the entry holding `packet_id`.
    pub fn position_of(&self, packet_id: PacketId) -> Option<usize> {
        self.backing
            .entries()
            .iter()
            .position(|e| e.packet_id == Some(packet_id))
    }

    /// Appends a message of `len` bytes written by `write`, which returns the bytes it wrote.
    ///
    /// Fails without side effects if it does not fit, or if `write` fails.
    pub fn push<E>(
        &mut self,
        entry: NewEntry,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, PushError<E>> {
        self.fits(len).map_err(PushError::Full)?;
        if self.capacity() - self.used < len {
            self.compact();
        }
        let used = self.used;
        let dst = self
            .backing
            .data_mut()
            .get_mut(used..used + len)
            .ok_or(PushError::Full(StoreFull::Bytes))?;
        let written = write(dst).map_err(PushError::Write)?;
        self.record(entry, written.min(len))
    }

    /// Adds the entry for `len` bytes just written at the end of the data.
    fn record<E>(&mut self, entry: NewEntry, len: usize) -> Result<usize, PushError<E>> {
        self.backing
            .push_entry(Entry {
                token: entry.token,
                kind: entry.kind,
                resend: false,
                packet_id: None,
                state: OutState::Queued,
                priority: entry.priority,
                accepted_at: entry.accepted_at,
                key: 0,
                lsn: 0,
                dirty: false,
                start: self.used,
                len,
            })
            .map_err(|_| PushError::Full(StoreFull::Slots))?;
        self.used += len;
        Ok(self.backing.entries().len() - 1)
    }

    /// Appends an entry derived from the entry at `src`: `write` gets that entry's bytes and
    /// all the free space, and returns how much of it it filled.
    pub fn push_derived<E>(
        &mut self,
        src: usize,
        entry: NewEntry,
        write: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, PushError<E>> {
        if self.backing.entries().len() >= self.backing.max_entries() {
            return Err(PushError::Full(StoreFull::Slots));
        }
        self.compact();
        let Some(e) = self.backing.entries().get(src).copied() else {
            return Err(PushError::Full(StoreFull::Slots));
        };
        let at = self.used;
        let (used, free) = self.backing.data_mut().split_at_mut(at);
        let source = used.get(e.start..e.start + e.len).unwrap_or_default();
        let len = write(source, free)
            .map_err(PushError::Write)?
            .min(free.len());
        self.record(entry, len)
    }

    /// Removes the entry at `index`, closing the gap from whichever side is shorter.
    pub fn remove(&mut self, index: usize) -> Option<Entry> {
        let e = self.backing.remove_entry(index)?;
        let (start, len) = (e.start, e.len);
        // Entries lie in the data in their order, so only one side's offsets change.
        if start - self.head <= self.used - (start + len) {
            self.backing
                .data_mut()
                .copy_within(self.head..start, self.head + len);
            self.head += len;
            for other in self.backing.entries_mut().iter_mut().take(index) {
                other.start += len;
            }
        } else {
            let used = self.used;
            self.backing
                .data_mut()
                .copy_within(start + len..used, start);
            self.used -= len;
            for other in self.backing.entries_mut().iter_mut().skip(index) {
                other.start -= len;
            }
        }
        if self.backing.entries().is_empty() {
            self.head = 0;
            self.used = 0;
        }
        Some(e)
    }

    /// Moves the live data to the start of the buffer, so the free space is all at its end.
    fn compact(&mut self) {
        let head = self.head;
        if head == 0 {
            return;
        }
        let used = self.used;
        self.backing.data_mut().copy_within(head..used, 0);
        for e in self.backing.entries_mut() {
            e.start -= head;
        }
        self.used -= head;
        self.head = 0;
    }
}

/// What the caller decides about a new message.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry {
    /// Token handed back to the user.
    pub token: u32,
    /// What the bytes are.
    pub kind: Kind,
    /// Eviction priority.
    pub priority: u8,
    /// Acceptance time.
    pub accepted_at: Instant,
}

/// Why `push` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError<E> {
    /// The store is full.
    Full(StoreFull),
    /// The writer failed.
    Write(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(token: u32) -> NewEntry {
        NewEntry {
            token,
            kind: Kind::Publish,
            priority: 5,
            accepted_at: Instant::ZERO,
        }
    }

    fn push<B: Backing>(s: &mut Store<B>, token: u32, data: &[u8]) {
        s.push(new(token), data.len(), |dst: &mut [u8]| {
            dst.copy_from_slice(data);
            Ok::<_, ()>(data.len())
        })
        .unwrap();
    }

    #[test]
    fn keeps_order_and_compacts_on_removal() {
        let mut s: Store<Fixed<4, 16>> = Store::new();
        push(&mut s, 1, b"aaaa");
        push(&mut s, 2, b"bbb");
        push(&mut s, 3, b"cc");
        assert_eq!(s.bytes_used(), 9);
        let removed = s.remove(1).unwrap();
        assert_eq!(removed.token, 2);
        assert_eq!(s.bytes(0), b"aaaa");
        assert_eq!(s.bytes(1), b"cc");
        assert_eq!(s.bytes_used(), 6);
        push(&mut s, 4, b"dddddddddd");
        assert_eq!(s.bytes(2), b"dddddddddd");
        assert_eq!(s.fits(1), Err(StoreFull::Bytes));
    }

    #[test]
    fn full_store_refuses_without_side_effects() {
        let mut s: Store<Fixed<2, 8>> = Store::new();
        push(&mut s, 1, b"12");
        let r = s.push(new(9), 7, |_: &mut [u8]| Ok::<_, ()>(7));
        assert_eq!(r, Err(PushError::Full(StoreFull::Bytes)));
        push(&mut s, 2, b"34");
        let r = s.push(new(9), 1, |_: &mut [u8]| Ok::<_, ()>(1));
        assert_eq!(r, Err(PushError::Full(StoreFull::Slots)));
        let r = Store::<Fixed<2, 8>>::new().push(new(9), 2, |_: &mut [u8]| Err::<usize, _>("boom"));
        assert_eq!(r, Err(PushError::Write("boom")));
        assert_eq!((s.len(), s.bytes_used()), (2, 4));
    }

    #[test]
    fn finds_entries_by_packet_id() {
        let mut s: Store<Fixed<3, 12>> = Store::new();
        push(&mut s, 1, b"xxxx");
        push(&mut s, 2, b"yyyy");
        s.get_mut(1).unwrap().packet_id = PacketId::new(7);
        assert_eq!(s.position_of(PacketId::new(7).unwrap()), Some(1));
        assert_eq!(s.position_of(PacketId::new(8).unwrap()), None);
        s.remove(0);
        assert_eq!(s.position_of(PacketId::new(7).unwrap()), Some(0));
        assert_eq!(s.bytes(0), b"yyyy");
        assert_eq!(s.bytes_used(), 4);
        assert!(s.remove(5).is_none());
    }

    /// Random pushes and removals on both backings agree with a plain list of (token, bytes).
    #[cfg(feature = "alloc")]
    #[test]
    fn removal_from_either_side_matches_a_model() {
        use alloc::vec::Vec;
        use proptest::prelude::*;
        let ops = proptest::collection::vec((any::<bool>(), 0usize..40, 0usize..12), 1..400);
        proptest!(|(ops in ops)| {
            let mut heap: Store<Heap> = Store::with_backing(Heap::new(24, 96));
            let mut fixed: Store<Fixed<24, 96>> = Store::new();
            let mut model: Vec<(u32, Vec<u8>)> = Vec::new();
            for (n, (is_push, at, len)) in ops.into_iter().enumerate() {
                let token = n as u32;
                if is_push {
                    let data: Vec<u8> = (0..len).map(|i| (n + i) as u8).collect();
                    let fits = heap.fits(len).is_ok();
                    prop_assert_eq!(fits, fixed.fits(len).is_ok());
                    if fits {
                        push(&mut heap, token, &data);
                        push(&mut fixed, token, &data);
                        model.push((token, data));
                    }
                } else if !model.is_empty() {
                    let i = at % model.len();
                    let (t, _) = model.remove(i);
                    prop_assert_eq!(heap.remove(i).map(|e| e.token), Some(t));
                    prop_assert_eq!(fixed.remove(i).map(|e| e.token), Some(t));
                }
                prop_assert_eq!(heap.len(), model.len());
                let total: usize = model.iter().map(|(_, d)| d.len()).sum();
                prop_assert_eq!(heap.bytes_used(), total);
                prop_assert_eq!(fixed.bytes_used(), total);
                for (i, (t, d)) in model.iter().enumerate() {
                    prop_assert_eq!(heap.get(i).map(|e| e.token), Some(*t));
                    prop_assert_eq!(heap.bytes(i), &d[..]);
                    prop_assert_eq!(fixed.bytes(i), &d[..]);
                }
            }
        });
    }
}
