//! Counters shared by every connection, sequence tracking and latency histograms.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

use super::payload::Header;

/// Largest latency the histograms hold: an hour, in microseconds (larger values saturate).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Samples a connection collects before it takes the shared histogram's lock.
const BATCH: usize = 128;

/// A latency histogram in microseconds behind a lock, fed in batches.
pub struct Latencies(Mutex<Histogram<u64>>);

impl Latencies {
    fn new() -> Latencies {
        // Three significant digits from 1 µs to an hour: about 200 KiB, once per run.
        let h = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant, valid histogram bounds");
        Latencies(Mutex::new(h))
    }

    /// Adds samples (microseconds).
    pub fn record(&self, samples: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &us in samples {
            h.saturating_record(us.max(1));
        }
    }

    /// A copy of the histogram.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Samples waiting to go into a [`Latencies`].
#[derive(Default)]
pub struct Batch(Vec<u64>);

impl Batch {
    /// Adds a sample, flushing a full batch into `to`.
    pub fn push(&mut self, us: u64, to: &Latencies) {
        self.0.push(us);
        if self.0.len() >= BATCH {
            self.flush(to);
        }
    }

    /// Moves the samples into `to`.
    pub fn flush(&mut self, to: &Latencies) {
        if !self.0.is_empty() {
            to.record(&self.0);
            self.0.clear();
        }
    }
}

/// The run's counters, updated by every connection as it goes (read live by the progress
/// display and at the end by the summary).
pub struct Counters {
    /// Messages handed to the session core to publish.
    pub published: AtomicU64,
    /// Messages completed: QoS 0 written, QoS 1/2 acknowledged by the broker.
    pub completed: AtomicU64,
    /// Publishes the broker refused (an error reason code in PUBACK/PUBREC).
    pub refused: AtomicU64,
    /// Payload bytes published.
    pub bytes_out: AtomicU64,
    /// Publishes due after the warm-up.
    pub published_measured: AtomicU64,
    /// Messages received, duplicates included.
    pub received: AtomicU64,
    /// Distinct messages received (of this or another bench run).
    pub unique: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Messages received that were due after the warm-up.
    pub received_measured: AtomicU64,
    /// Messages received again.
    pub duplicates: AtomicU64,
    /// Messages that arrived after a later one of the same publisher.
    pub out_of_order: AtomicU64,
    /// Messages without a bench header (not timed).
    pub foreign: AtomicU64,
    /// Messages missing between the lowest and highest sequence seen (the loss estimate when
    /// the publishers are elsewhere).
    pub gaps: AtomicU64,
    /// Connections established (CONNACK accepted, subscriptions granted).
    pub connected: AtomicU64,
    /// Connections that could not be established.
    pub connect_errors: AtomicU64,
    /// Connections lost after they were established.
    pub lost_connections: AtomicU64,
    /// When the last message arrived (clock nanoseconds), 0 before any.
    pub last_received_ns: AtomicU64,
    /// When the last publish completed (clock nanoseconds), 0 before any.
    pub last_completed_ns: AtomicU64,
    /// When the last connection was established (clock nanoseconds).
    pub last_connected_ns: AtomicU64,
    /// Publishers that sent and completed everything.
    pub publishers_done: AtomicU64,
    /// Subscribers that received what `--count` asked for (scenario `sub`).
    pub subscribers_done: AtomicU64,
    /// End-to-end latency of messages due after the warm-up.
    pub latency: Latencies,
    /// Time from opening the socket to CONNACK (and SUBACK, for subscribers).
    pub connect_latency: Latencies,
    errors: Mutex<Vec<String>>,
}

impl Counters {
    /// Zeroed counters.
    pub fn new() -> Counters {
        let z = || AtomicU64::new(0);
        Counters {
            published: z(),
            completed: z(),
            refused: z(),
            bytes_out: z(),
            published_measured: z(),
            received: z(),
            unique: z(),
            bytes_in: z(),
            received_measured: z(),
            duplicates: z(),
            out_of_order: z(),
            foreign: z(),
            gaps: z(),
            connected: z(),
            connect_errors: z(),
            lost_connections: z(),
            last_received_ns: z(),
            last_completed_ns: z(),
            last_connected_ns: z(),
            publishers_done: z(),
            subscribers_done: z(),
            latency: Latencies::new(),
            connect_latency: Latencies::new(),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Notes an error; the first few distinct ones are kept for the summary.
    pub fn error(&self, msg: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < 8 && !errors.contains(&msg) {
            errors.push(msg);
        }
    }

    /// The errors kept.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// What a received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or one past a gap.
    InOrder,
    /// It fills a gap: a later message came first.
    OutOfOrder,
    /// It was seen before.
    Duplicate,
}

/// The sequence numbers seen from one publisher: everything below `next` except the gaps.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    next: u64,
    /// Missing ranges `[from, to)`, ascending.
    gaps: Vec<(u64, u64)>,
}

impl SeqTrack {
    /// Classifies `seq` and records it.
    pub fn see(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.gaps.push((self.next, seq));
            }
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let i = self.gaps.partition_point(|&(_, to)| to <= seq);
        match self.gaps.get(i).copied() {
            Some((from, to)) if from <= seq => {
                match (from == seq, seq + 1 == to) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq,
                    (false, false) => {
                        self.gaps[i].1 = seq;
                        self.gaps.insert(i + 1, (seq + 1, to));
                    }
                }
                Arrival::OutOfOrder
            }
            _ => Arrival::Duplicate,
        }
    }

    /// Messages missing below the highest seen.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|&(a, b)| b - a).sum()
    }
}

/// What one receiving connection tracks: a sequence per publisher, latencies to flush.
#[derive(Default)]
pub struct Receiver {
    tracks: HashMap<u64, SeqTrack>,
    batch: Batch,
    /// Distinct messages this connection received.
    pub unique: u64,
    /// Counts not yet added to the shared counters: received, bytes, distinct, measured.
    pending: [u64; 4],
    last_ns: u64,
}

impl Receiver {
    /// Accounts for one received payload at `now_ns`; latencies of messages due before
    /// `measure_from_ns` (the warm-up) are not recorded.
    pub fn receive(&mut self, payload: &[u8], now_ns: u64, measure_from_ns: u64, c: &Counters) {
        self.pending[0] += 1;
        self.pending[1] += u64::try_from(payload.len()).unwrap_or(0);
        self.last_ns = now_ns;
        let Some(h) = Header::read(payload) else {
            c.foreign.fetch_add(1, Relaxed);
            self.pending[2] += 1;
            self.unique += 1;
            return;
        };
        let key = (u64::from(h.run) << 32) | u64::from(h.publisher);
        match self.tracks.entry(key).or_default().see(h.seq) {
            Arrival::Duplicate => {
                c.duplicates.fetch_add(1, Relaxed);
                return;
            }
            Arrival::OutOfOrder => {
                c.out_of_order.fetch_add(1, Relaxed);
            }
            Arrival::InOrder => {}
        }
        self.unique += 1;
        self.pending[2] += 1;
        if h.scheduled_ns >= measure_from_ns {
            self.pending[3] += 1;
            let us = now_ns.saturating_sub(h.scheduled_ns) / 1000;
            self.batch.push(us, &c.latency);
        }
    }

    /// Adds the counts since the last call to the shared counters (once per batch of reads,
    /// not once per message: the counters are shared by every thread).
    pub fn commit(&mut self, c: &Counters) {
        if self.pending[0] == 0 {
            return;
        }
        let [received, bytes, unique, measured] = std::mem::take(&mut self.pending);
        c.received.fetch_add(received, Relaxed);
        c.bytes_in.fetch_add(bytes, Relaxed);
        c.unique.fetch_add(unique, Relaxed);
        c.received_measured.fetch_add(measured, Relaxed);
        c.last_received_ns.fetch_max(self.last_ns, Relaxed);
    }

    /// Flushes latencies and counts, and adds the gaps still open to the counters.
    pub fn finish(&mut self, c: &Counters) {
        self.commit(c);
        self.batch.flush(&c.latency);
        let gaps: u64 = self.tracks.values().map(SeqTrack::missing).sum();
        c.gaps.fetch_add(gaps, Relaxed);
        self.tracks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_classify_gaps_duplicates_and_late_arrivals() {
        let mut t = SeqTrack::default();
        assert_eq!(t.see(0), Arrival::InOrder);
        assert_eq!(t.see(1), Arrival::InOrder);
        assert_eq!(t.see(1), Arrival::Duplicate);
        assert_eq!(t.see(5), Arrival::InOrder);
        assert_eq!(t.missing(), 3);
        assert_eq!(t.see(3), Arrival::OutOfOrder);
        assert_eq!(t.see(3), Arrival::Duplicate);
        assert_eq!(t.see(2), Arrival::OutOfOrder);
        assert_eq!(t.see(4), Arrival::OutOfOrder);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.see(0), Arrival::Duplicate);
        assert_eq!(t.see(6), Arrival::InOrder);
    }

    #[test]
    fn receiver_counts_and_times() {
        let c = Counters::new();
        let mut r = Receiver::default();
        let mut p = vec![0u8; 32];
        for seq in [0u64, 1, 1, 3, 2] {
            Header {
                run: 1,
                publisher: 9,
                seq,
                scheduled_ns: 1_000_000,
            }
            .write(&mut p);
            r.receive(&p, 3_000_000, 0, &c);
        }
        r.receive(b"short", 3_000_000, 0, &c);
        r.finish(&c);
        assert_eq!(Counters::get(&c.received), 6);
        assert_eq!(Counters::get(&c.unique), 5);
        assert_eq!(Counters::get(&c.duplicates), 1);
        assert_eq!(Counters::get(&c.out_of_order), 1);
        assert_eq!(Counters::get(&c.foreign), 1);
        let h = c.latency.snapshot();
        assert_eq!(h.len(), 4);
        assert_eq!(h.value_at_quantile(0.5), 2000);
    }
}
