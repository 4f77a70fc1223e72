//! A timer for paced publishers that is finer than tokio's.
//!
//! tokio's timer fires on whole milliseconds, rounded up: a message due at 10.2 ms goes out at
//! 11 ms or later, and since latency counts from when a message was due (so that a late
//! generator cannot hide a slow broker), a run at 1 000 messages per second would report about
//! half a millisecond of its own lateness for every broker alike. One thread here sleeps on a
//! condition variable (a futex with a high-resolution timeout) until the earliest due time
//! and wakes the publishers that are due, tens of microseconds late instead.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{self, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::signal::Signal;

/// The timer thread's handle; the thread ends when the last handle is dropped.
pub struct Pacer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Earliest first; an entry replaced by a later reset of its sleep is stale, skipped.
    due: BinaryHeap<Reverse<Due>>,
    /// The number of the next reset (from 1: 0 is "never armed").
    next: u64,
    stop: bool,
}

/// A sleep's due time, from one of its resets.
struct Due {
    at: Instant,
    /// The reset it comes from; it orders entries due at the same time too.
    seq: u64,
    entry: Arc<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Due) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One waiting task: its latest reset, and the signal that wakes it.
struct Entry {
    armed: AtomicU64,
    fired: Signal,
}

impl Pacer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Pacer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next: 1,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || s.run())?;
        Ok(Pacer { shared })
    }

    /// A sleep that this thread wakes; arm it with [`Sleep::reset`].
    pub fn sleep(&self) -> Sleep {
        Sleep {
            shared: self.shared.clone(),
            entry: Arc::new(Entry {
                armed: AtomicU64::new(0),
                fired: Signal::default(),
            }),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread: wakes what is due, then waits for the next due time or a new one.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            if state.stop {
                return;
            }
            let now = Instant::now();
            while let Some(Reverse(due)) = state.due.peek() {
                if due.at > now {
                    break;
                }
                let Some(Reverse(due)) = state.due.pop() else {
                    break;
                };
                // Resets happen under the lock, so this is the latest one or stale.
                if due.entry.armed.load(atomic::Ordering::Relaxed) == due.seq {
                    due.entry.fired.raise();
                }
            }
            state = match state.due.peek() {
                Some(Reverse(due)) => {
                    let wait = due.at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

/// A resettable sleep woken by the [`Pacer`]'s thread.
pub struct Sleep {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
}

impl Sleep {
    /// Arms it for `at` (replacing what it was armed for).
    pub fn reset(&mut self, at: Instant) {
        let mut state = self.shared.lock();
        let seq = state.next;
        state.next += 1;
        self.entry.armed.store(seq, atomic::Ordering::Relaxed);
        self.entry.fired.clear();
        let earliest = state.due.peek().is_none_or(|Reverse(first)| at < first.at);
        let entry = self.entry.clone();
        state.due.push(Reverse(Due { at, seq, entry }));
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.entry.fired.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_sleep_fires_at_or_after_its_time_and_a_reset_replaces_the_old_time() {
        let pacer = Pacer::start().unwrap();
        let start = Instant::now();
        let mut sleeps: Vec<(Sleep, Instant)> = (0..20u64)
            .map(|i| {
                let mut s = pacer.sleep();
                // Out of order, so later ones are armed before earlier ones.
                let at = start + Duration::from_micros(200 * ((i * 7) % 20) + 100);
                s.reset(at);
                (s, at)
            })
            .collect();
        for (s, at) in &mut sleeps {
            s.await;
            assert!(Instant::now() >= *at, "fired before its time");
        }
        // A sleep moved later does not fire at its first time.
        let mut s = pacer.sleep();
        s.reset(Instant::now() + Duration::from_millis(1));
        let later = Instant::now() + Duration::from_millis(30);
        s.reset(later);
        (&mut s).await;
        assert!(Instant::now() >= later);
    }
}
