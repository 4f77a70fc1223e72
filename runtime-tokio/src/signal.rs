//! A one-bit wake-up: raised by one side (a task, a thread), awaited by one task. Waiting
//! needs no waiter node in the waiting task, unlike `tokio::sync::Notify` (which matters for
//! memory per idle connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A flag whose raising wakes the task polling it.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises it and wakes the task that polls it.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Lowers it without waking anyone.
    pub fn clear(&self) {
        self.raised.store(false, Ordering::Release);
    }

    /// Ready once raised since it was last ready (and lowers it).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A raise between the check and the registration would be missed otherwise.
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
