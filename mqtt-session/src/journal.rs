//! The journal: how a session reports every change of its persistent state as records, and
//! how it is rebuilt from them after a restart.
//!
//! A session with the journal on ([`Session::enable_journal`](crate::Session::enable_journal))
//! keys each persistent item — an accepted QoS 1/2 message, a granted subscription, a received
//! QoS 2 id awaiting PUBREL — by a number of its own (never a packet id, which is reused), and
//! reports its state whenever it changes: accepted, sent with packet id N, PUBREC received,
//! completed or dropped (a delete). Each record has a journal sequence number (`lsn`); the
//! runtime writes records in that order and calls
//! [`handle_durable`](crate::Session::handle_durable) with the highest one on disk. Until then
//! the session holds back what depends on it: a QoS 1/2 PUBLISH is not sent before its record
//! is durable, a QoS 2 message not before the record of its packet id (so a restart can resend
//! it with the same id), a PUBREL not before the PUBREC record, a PUBREC for a received QoS 2
//! message not before the record of its id, and its PUBCOMP not before the delete of that
//! record (else a restart would keep the released id and drop the next message reusing it).
//! With manual acks, a received QoS 2 message is
//! recorded as delivered before the application may see it
//! ([`rx_record_pending`](crate::Session::rx_record_pending)), so that after a restart the
//! server's resend of one never acknowledged is delivered again marked
//! [`redelivered`](crate::Message::redelivered), and no other one is.
//!
//! After a restart, [`restore`](crate::Session::restore) each record (in key order) into a new
//! session, then enable the journal and connect. QoS 0 messages are not journaled (at most once
//! allows their loss) and neither are (UN)SUBSCRIBEs still waiting for their acknowledgment.

use core::fmt;

/// Tag of an outgoing item's record: `[1, kind, state, priority, id_hi, id_lo, packet...]`.
pub(crate) const TAG_OUT: u8 = 1;
/// Tag of a received QoS 2 id's record: `[2, id_hi, id_lo]` once acknowledged (awaiting
/// PUBREL), `[2, id_hi, id_lo, RX_HANDLING]` while delivered for a manual ack.
pub(crate) const TAG_RX: u8 = 2;
/// Last byte of the record of a QoS 2 message delivered and not yet acknowledged.
pub(crate) const RX_HANDLING: u8 = 1;
/// Bytes before the packet in an outgoing record.
pub(crate) const OUT_HEADER: usize = 6;

/// What a record does to the item with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Change {
    /// Write (or replace) the item's record with the first this many bytes of the buffer.
    Put(usize),
    /// The item is gone (completed, evicted, dropped, released): remove its record.
    Delete,
}

/// One change of the persistent state, from [`poll_record`](crate::Session::poll_record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use]
pub struct Record {
    /// Journal sequence number: records must become durable in this order.
    pub lsn: u64,
    /// The item's key (the store's key for the record).
    pub key: u64,
    /// What to do with it.
    pub change: Change,
}

/// Why a record could not be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RestoreError {
    /// The bytes are not a record this version writes.
    Malformed,
    /// The session has no room for it (a smaller queue than the one that wrote it).
    Full,
    /// The journal is already on: restore before [`enable_journal`](crate::Session::enable_journal).
    TooLate,
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestoreError::Malformed => "not a session record",
            RestoreError::Full => "no room in the session for the record",
            RestoreError::TooLate => "records must be restored before the journal is enabled",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RestoreError {}

/// Keys of removed items whose delete is not reported yet.
#[cfg(feature = "alloc")]
pub(crate) type Deleted = alloc::collections::VecDeque<u64>;
/// Keys of removed items whose delete is not reported yet (`handle_read` asks for a drain
/// before this fills).
#[cfg(not(feature = "alloc"))]
pub(crate) type Deleted = heapless::Deque<u64, 16>;

/// The journal's bookkeeping inside a session.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// Whether records are kept and transmissions wait for them.
    pub(crate) on: bool,
    /// The key the next persistent item gets (keys start at 1; 0 means not journaled).
    pub(crate) next_key: u64,
    /// The sequence number of the last record reported.
    pub(crate) lsn: u64,
    /// The highest sequence number the runtime said is durable.
    pub(crate) durable: u64,
    pub(crate) deleted: Deleted,
    /// Outgoing entries with an unreported change, and the first index that may hold one.
    pub(crate) dirty: usize,
    pub(crate) dirty_from: usize,
    /// Received ids with an unreported change.
    pub(crate) rx_dirty: usize,
    /// After a session-less reconnect: nothing is sent (and no id given) until the records
    /// of the ids it dropped are durable.
    pub(crate) barrier: bool,
    /// Deletes that found no room (only without `alloc`): their records outlive the items.
    pub(crate) lost_deletes: u32,
    /// The sequence number of the last delete that a queued PUBCOMP waits for.
    pub(crate) release: u64,
}

impl Journal {
    /// Whether another delete can be held.
    pub(crate) fn can_delete(&self, n: usize) -> bool {
        #[cfg(feature = "alloc")]
        {
            let _ = n;
            true
        }
        #[cfg(not(feature = "alloc"))]
        {
            self.deleted.capacity() - self.deleted.len() >= n
        }
    }

    /// Holds the delete of `key` until it is reported; returns the sequence number it will
    /// have (deletes are reported before anything else, in order).
    pub(crate) fn delete(&mut self, key: u64) -> Option<u64> {
        if key == 0 || !self.on {
            return None;
        }
        #[cfg(feature = "alloc")]
        self.deleted.push_back(key);
        #[cfg(not(feature = "alloc"))]
        if self.deleted.push_back(key).is_err() {
            self.lost_deletes = self.lost_deletes.saturating_add(1);
            return None;
        }
        Some(self.lsn.saturating_add(self.deleted.len() as u64))
    }

    /// A new key for a persistent item.
    pub(crate) fn key(&mut self) -> u64 {
        self.next_key = self.next_key.max(1);
        let k = self.next_key;
        self.next_key = self.next_key.saturating_add(1);
        k
    }

    /// Numbers the next record.
    pub(crate) fn next_lsn(&mut self) -> u64 {
        self.lsn = self.lsn.saturating_add(1);
        self.lsn
    }
}
