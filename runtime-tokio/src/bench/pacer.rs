//! A timer for paced publishers that is finer than tokio's.
//!
//! tokio's timer fires on whole milliseconds, rounded up: a message due at 10.2 ms goes out at
//! 11 ms or later, and since latency counts from when a message was due (so that a late
//! generator cannot hide a slow broker), a run at 1 000 messages per second would report about
//! half a millisecond of its own lateness for every broker alike. One thread here sleeps on a
//! condition variable (a futex with a high-resolution timeout) until the earliest due time
//! and wakes the publishers that are due, tens of microseconds late instead.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

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
    /// (due, entry): an entry whose due time changed since it was pushed is stale, skipped.
    due: BinaryHeap<Reverse<(Instant, u64, Arc<Entry>)>>,
    next: u64,
    stop: bool,
}

/// One waiting task: when it is due, and who to wake.
struct Entry {
    /// Nanoseconds after `base` (0: nothing armed).
    at_ns: AtomicU64,
    fired: AtomicBool,
    waker: AtomicWaker,
    base: Instant,
}

// The heap orders by (due, sequence); the entry itself never decides.
impl PartialEq for Entry {
    fn eq(&self, _: &Entry) -> bool {
        true
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, _: &Entry) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Pacer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Pacer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
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
                at_ns: AtomicU64::new(0),
                fired: AtomicBool::new(false),
                waker: AtomicWaker::new(),
                base: Instant::now(),
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
            while let Some(Reverse((at, _, _))) = state.due.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((at, _, entry))) = state.due.pop() else {
                    break;
                };
                let armed = entry.at_ns.load(Ordering::Acquire);
                if armed != 0 && entry.base + Duration::from_nanos(armed) == at {
                    entry.fired.store(true, Ordering::Release);
                    entry.waker.wake();
                }
            }
            state = match state.due.peek() {
                Some(Reverse((at, _, _))) => {
                    let wait = at.saturating_duration_since(now);
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
        let e = &self.entry;
        // 0 means "not armed": a deadline at the base itself is a nanosecond later.
        let ns = u64::try_from(at.saturating_duration_since(e.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let at = e.base + Duration::from_nanos(ns);
        e.fired.store(false, Ordering::Release);
        e.at_ns.store(ns, Ordering::Release);
        let mut state = self.shared.lock();
        let earliest = state
            .due
            .peek()
            .is_none_or(|Reverse((first, _, _))| at < *first);
        let seq = state.next;
        state.next += 1;
        state.due.push(Reverse((at, seq, e.clone())));
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let e = &self.entry;
        if e.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        e.waker.register(cx.waker());
        if e.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
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
