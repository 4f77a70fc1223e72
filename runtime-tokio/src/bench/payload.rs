//! The header every benchmark message carries, and the clock its times come from.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Bytes of the header at the start of every payload.
pub const HEADER_LEN: usize = 24;

/// What a benchmark message says about itself: who sent it, which one it is, and when it was
/// due. Big-endian on the wire: run (4), publisher (4), sequence (8), scheduled time (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// A random number per `mqtt bench` process, so runs sharing a broker stay apart.
    pub run: u32,
    /// The publisher's index in its run.
    pub publisher: u32,
    /// The message's number at its publisher, from 0.
    pub seq: u64,
    /// When the message was due to be sent: nanoseconds since the Unix epoch. At a fixed rate
    /// this is the schedule's time, not the moment it went out, so a late message counts
    /// from when it should have been sent.
    pub scheduled_ns: u64,
}

impl Header {
    /// Writes the header over the start of `payload` (nothing if it is shorter than
    /// [`HEADER_LEN`]).
    pub fn write(&self, payload: &mut [u8]) {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&self.run.to_be_bytes());
        h[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        h[8..16].copy_from_slice(&self.seq.to_be_bytes());
        h[16..].copy_from_slice(&self.scheduled_ns.to_be_bytes());
        if let Some(dst) = payload.get_mut(..HEADER_LEN) {
            dst.copy_from_slice(&h);
        }
    }

    /// The header at the start of `payload`, if it is long enough to hold one.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(
                payload.get(at..at + 4)?.try_into().ok()?,
            ))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                payload.get(at..at + 8)?.try_into().ok()?,
            ))
        };
        Some(Header {
            run: u32_at(0)?,
            publisher: u32_at(4)?,
            seq: u64_at(8)?,
            scheduled_ns: u64_at(16)?,
        })
    }
}

/// A monotonic clock that reads as wall-clock nanoseconds, so that timestamps compare across
/// processes on one host (a `bench pub` feeding a `bench sub`) yet never jump within a run.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    tokio_start: tokio::time::Instant,
    wall_ns: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let start = Instant::now();
        Clock {
            start,
            tokio_start: tokio::time::Instant::from_std(start),
            wall_ns,
        }
    }

    /// Nanoseconds since the Unix epoch, monotonic.
    pub fn now_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wall_ns.saturating_add(elapsed)
    }

    /// The session core's time: milliseconds since the clock started.
    pub fn session_now(&self) -> mqtt_session::Instant {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        mqtt_session::Instant::from_millis(ms)
    }

    /// The tokio instant of a [`Clock::now_ns`] reading.
    pub fn at_ns(&self, ns: u64) -> tokio::time::Instant {
        self.tokio_start + std::time::Duration::from_nanos(ns.saturating_sub(self.wall_ns))
    }

    /// The tokio instant of a session time.
    pub fn at_session(&self, at: mqtt_session::Instant) -> tokio::time::Instant {
        self.tokio_start + std::time::Duration::from_millis(at.as_millis())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_short_payloads_have_none() {
        let h = Header {
            run: 0xdead_beef,
            publisher: 7,
            seq: 1 << 40,
            scheduled_ns: 1_700_000_000_123_456_789,
        };
        let mut p = vec![0xaa; 40];
        h.write(&mut p);
        assert_eq!(Header::read(&p), Some(h));
        assert_eq!(p[HEADER_LEN], 0xaa, "the rest of the payload is left alone");
        assert_eq!(Header::read(&p[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn clock_is_monotonic_and_maps_back() {
        let c = Clock::new();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert!(c.at_ns(b) >= c.at_ns(a));
    }
}
