//! The session's journal on NOR flash, through `sequential-storage`'s map (power-fail safe:
//! every item is checksummed and an interrupted write is repaired on the next access;
//! wear-levelled: pages are used in turn).
//!
//! Each journal record is one map item, keyed by the record's key; a delete removes the item.
//! Before handing the session to the runner, [`FlashJournal::restore`] rebuilds it from flash
//! and turns its journal on; then [`Runner::with_journal`](crate::Runner::with_journal) makes
//! the runner write every change before it sends what depends on it.

use core::ops::Range;

use embedded_storage_async::nor_flash::MultiwriteNorFlash;
use mqtt_session::Session;
use mqtt_session::journal::Change;
use mqtt_session::store::Backing;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};

use crate::runner::Journal;

/// What [`FlashJournal::restore`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Restored {
    /// Records rebuilt into the session.
    pub records: usize,
    /// Records the session refused (another version's, or no room): removed from flash.
    pub set_aside: usize,
}

/// Why the flash journal cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashError {
    /// The range is not whole erase pages, or fewer than two.
    BadRange,
    /// The flash (or the map on it) failed.
    Storage,
}

/// The journal of a session in a range of NOR flash. `N` is the largest record it holds plus
/// the map's item overhead: the largest stored packet plus 32 bytes is enough.
pub struct FlashJournal<S: MultiwriteNorFlash, const N: usize> {
    map: MapStorage<u64, S, Cache<Uncached, Uncached, Uncached, u64>>,
    buf: [u8; N],
    record: [u8; N],
    /// Writes that failed (the session then goes on as if they were durable).
    failures: u32,
}

impl<S: MultiwriteNorFlash, const N: usize> FlashJournal<S, N> {
    /// A journal in `range` of `flash` (whole erase pages, at least two).
    pub fn new(flash: S, range: Range<u32>) -> Result<Self, FlashError> {
        let config = MapConfig::try_new(range).map_err(|_| FlashError::BadRange)?;
        Ok(FlashJournal {
            map: MapStorage::new(flash, config, Cache::new_uncached()),
            buf: [0; N],
            record: [0; N],
            failures: 0,
        })
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> S {
        self.map.destroy().0
    }

    /// Writes that failed since start.
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// Rebuilds `session` from the records on flash, in key order (so messages keep their
    /// order), then turns its journal on. Records it refuses are removed and counted.
    ///
    /// Without an allocator the map is scanned once per record to find the next key, so
    /// restoring `n` records reads the map `n` times: fine for the tens of messages a device
    /// holds.
    pub async fn restore<B: Backing, const RX: usize>(
        &mut self,
        session: &mut Session<B, RX>,
    ) -> Result<Restored, FlashError> {
        let mut found = Restored::default();
        let mut after = 0u64;
        loop {
            let Some(key) = self.next_key(after).await? else {
                break;
            };
            after = key;
            let value: Option<&[u8]> = self
                .map
                .fetch_item(&mut self.buf, &key)
                .await
                .map_err(|_| FlashError::Storage)?;
            let Some(value) = value else { continue };
            if session.restore(key, value).is_ok() {
                found.records += 1;
            } else {
                warn!("mqtt: flash record {} not restored; removed", key);
                found.set_aside += 1;
                self.map
                    .remove_item(&mut self.buf, &key)
                    .await
                    .map_err(|_| FlashError::Storage)?;
            }
        }
        session.enable_journal();
        Ok(found)
    }

    /// The smallest key on flash above `after`.
    async fn next_key(&mut self, after: u64) -> Result<Option<u64>, FlashError> {
        let mut items = self
            .map
            .fetch_all_items(&mut self.buf)
            .await
            .map_err(|_| FlashError::Storage)?;
        let mut best: Option<u64> = None;
        while let Some((key, _)) = items
            .next::<&[u8]>(&mut self.record)
            .await
            .map_err(|_| FlashError::Storage)?
        {
            if key > after && best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        Ok(best)
    }

    /// Writes one record; `false` if the flash refused it.
    async fn write(&mut self, key: u64, change: Change) -> bool {
        let result = match change {
            Change::Put(n) => {
                let value: &[u8] = self.record.get(..n).unwrap_or_default();
                self.map.store_item(&mut self.buf, &key, &value).await
            }
            Change::Delete => self.map.remove_item(&mut self.buf, &key).await,
        };
        result.is_ok()
    }
}

impl<S: MultiwriteNorFlash, const N: usize> Journal for FlashJournal<S, N> {
    async fn flush<B: Backing, const RX: usize>(&mut self, session: &mut Session<B, RX>) {
        let mut last = None;
        loop {
            let record = match session.poll_record(&mut self.record) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => {
                    // A record larger than N: it cannot be kept; count it and go on.
                    warn!("mqtt: a journal record is larger than the flash journal's buffer");
                    self.failures = self.failures.saturating_add(1);
                    break;
                }
            };
            if !self.write(record.key, record.change).await {
                warn!("mqtt: flash write failed; going on in RAM");
                self.failures = self.failures.saturating_add(1);
            }
            last = Some(record.lsn);
        }
        if let Some(lsn) = last {
            session.handle_durable(lsn);
        }
    }
}
