//! Packet identifier allocation shared by PUBLISH, SUBSCRIBE and UNSUBSCRIBE.

use mqtt_proto::PacketId;

/// Hands out packet identifiers 1..=65535 in order, wrapping, skipping ids still in flight.
///
/// The allocator does not keep the in-flight set itself: the session owns that state (in its
/// inflight table), and the allocator asks about it through a predicate. Allocation is
/// deterministic, so a run can be replayed byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PacketIds {
    next: u16,
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds::new()
    }
}

impl PacketIds {
    /// An allocator whose first id is 1.
    pub const fn new() -> Self {
        PacketIds { next: 1 }
    }

    /// The next id for which `in_use` is false, or `None` if every id is taken.
    ///
    /// `in_flight` is how many ids are taken; the search gives up after that many collisions
    /// plus one, so it never spins over the whole id space.
    pub fn allocate(
        &mut self,
        in_flight: usize,
        mut in_use: impl FnMut(PacketId) -> bool,
    ) -> Option<PacketId> {
        let tries = in_flight.saturating_add(1).min(usize::from(u16::MAX));
        for _ in 0..tries {
            let candidate = PacketId::new(self.next);
            self.next = match self.next {
                u16::MAX => 1,
                n => n + 1,
            };
            if let Some(id) = candidate.filter(|id| !in_use(*id)) {
                return Some(id);
            }
        }
        None
    }

    /// The id the next allocation tries first.
    pub const fn peek(&self) -> u16 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn id(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    #[test]
    fn counts_up_and_wraps_past_zero() {
        let mut ids = PacketIds { next: 65_534 };
        let got: Vec<u16> = (0..4)
            .map(|_| ids.allocate(0, |_| false).unwrap().get())
            .collect();
        assert_eq!(got, [65_534, 65_535, 1, 2]);
    }

    #[test]
    fn skips_ids_in_flight() {
        let mut ids = PacketIds::new();
        let busy: BTreeSet<PacketId> = [id(1), id(2), id(4)].into();
        let a = ids.allocate(busy.len(), |i| busy.contains(&i)).unwrap();
        let b = ids.allocate(busy.len(), |i| busy.contains(&i)).unwrap();
        assert_eq!((a.get(), b.get()), (3, 5));
    }

    #[test]
    fn all_ids_taken_is_an_error_not_a_spin() {
        let mut ids = PacketIds::new();
        let mut calls = 0usize;
        let got = ids.allocate(65_535, |_| {
            calls += 1;
            true
        });
        assert_eq!(got, None);
        assert_eq!(
            calls, 65_535,
            "each id is asked about once, then it gives up"
        );
    }

    #[test]
    fn never_returns_an_id_in_flight() {
        let mut ids = PacketIds::new();
        let mut busy = BTreeSet::new();
        for round in 0..70_000u32 {
            let got = ids.allocate(busy.len(), |i| busy.contains(&i)).unwrap();
            assert!(busy.insert(got), "{got} handed out twice");
            // Keep about a thousand in flight, releasing the oldest-ish ones.
            if busy.len() > 1_000 {
                let victim = *busy.iter().nth((round as usize * 7) % busy.len()).unwrap();
                busy.remove(&victim);
            }
        }
    }
}
