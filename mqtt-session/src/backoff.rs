//! Reconnect back-off: exponential growth between bounds, full jitter, reset after stability.

use core::time::Duration;

use crate::Instant;

/// Computes the delay before each reconnect attempt.
///
/// Delays grow exponentially from `min` to `max`; each one is drawn uniformly from
/// `[0, ceiling]` ("full jitter") so that many clients cut off together do not reconnect
/// together. Randomness comes from a seed the runtime passes in, so a run can be replayed.
/// Once a connection has stayed up for `stable_after`, the next failure starts from `min` again.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    attempt: u32,
    rng: u64,
    connected_at: Option<Instant>,
}

impl Backoff {
    /// A policy growing from `min` to `max`, with a random seed for the jitter.
    pub const fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            min,
            max,
            stable_after: Duration::from_secs(30),
            attempt: 0,
            rng: seed,
            connected_at: None,
        }
    }

    /// Sets how long a connection must last before the back-off starts over.
    pub const fn with_stable_after(mut self, d: Duration) -> Self {
        self.stable_after = d;
        self
    }

    /// Failed attempts since the last stable connection.
    pub const fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
            .max(self.min)
    }

    /// Records that a connection was established at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// Records that the connection was lost (or an attempt failed) at `now`, and returns how
    /// long to wait before the next attempt.
    pub fn next_delay(&mut self, now: Instant) -> Duration {
        if let Some(at) = self.connected_at.take()
            && now.saturating_since(at) >= self.stable_after
        {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        // Full jitter, but never below `min`: a zero delay would hammer a broker in a loop.
        let floor = u64::try_from(self.min.as_millis()).unwrap_or(u64::MAX);
        let jittered = if span > floor {
            floor + self.next_random() % (span - floor + 1)
        } else {
            span
        };
        Duration::from_millis(jittered)
    }

    /// Forgets past failures: the next delay starts from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.connected_at = None;
    }

    /// SplitMix64: tiny, fast and good enough to spread reconnects.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(60), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn grows_exponentially_within_bounds() {
        let mut b = Backoff::new(ms(100), ms(1_000), 7);
        let now = Instant::ZERO;
        let ceilings: [u64; 6] = [100, 200, 400, 800, 1_000, 1_000];
        for c in ceilings {
            assert_eq!(b.ceiling(), ms(c));
            let d = b.next_delay(now);
            assert!(d >= ms(100) && d <= ms(c), "{d:?} not in [100, {c}]");
        }
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn jitter_is_seeded_and_spread() {
        let delays = |seed| {
            let mut b = Backoff::new(ms(10), ms(100_000), seed);
            (0..12)
                .map(|_| b.next_delay(Instant::ZERO))
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1), "same seed, same delays");
        assert_ne!(delays(1), delays(2), "different seeds differ");
        // With a ceiling of 100 s the draws must not all collapse onto one value.
        let mut b = Backoff::new(ms(1), ms(100_000), 3);
        b.attempt = 20;
        let draws: Vec<_> = (0..32)
            .map(|_| {
                b.attempt = 20;
                b.next_delay(Instant::ZERO)
            })
            .collect();
        let distinct = draws
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(distinct > 28, "only {distinct} distinct delays");
    }

    #[test]
    fn resets_after_a_stable_connection_only() {
        let mut b = Backoff::new(ms(100), ms(10_000), 1).with_stable_after(ms(5_000));
        for _ in 0..4 {
            b.next_delay(Instant::ZERO);
        }
        b.connected(Instant::from_millis(10_000));
        b.next_delay(Instant::from_millis(11_000)); // up for 1 s: not stable
        assert_eq!(b.attempts(), 5);
        b.connected(Instant::from_millis(20_000));
        let d = b.next_delay(Instant::from_millis(26_000)); // up for 6 s: stable
        assert_eq!(b.attempts(), 1);
        assert!(d <= ms(100));
        b.next_delay(Instant::ZERO);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), ms(100));
    }

    #[test]
    fn degenerate_bounds_do_not_panic() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 0);
        assert_eq!(b.next_delay(Instant::ZERO), Duration::ZERO);
        let mut b = Backoff::new(Duration::MAX, Duration::MAX, 0);
        for _ in 0..40 {
            assert!(b.next_delay(Instant::ZERO) > Duration::ZERO);
        }
        let mut b = Backoff::new(ms(500), ms(100), 0); // max below min: min wins
        assert_eq!(b.next_delay(Instant::ZERO), ms(500));
    }
}
