//! Publish completions without an allocation per publish.
//!
//! Each publish takes a slot in a [`Slab`] kept beside the engine (under the same lock); the
//! engine's completion value is the slot's key. The [`Delivery`] the caller gets names the slot.
//! The driver writes the result into the slot and wakes the waiting task; a dropped
//! [`Delivery`] marks its slot abandoned, so the driver frees it when the result comes. Insert,
//! completion and removal are O(1), and a steady stream of publishes reuses the same slots.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::vec::Vec;

use futures_channel::oneshot;
use mqtt_proto::ReasonCode;
use mqtt_session::engine::{Failure, Output};
use slab::Slab;

use crate::api::{ClientError, Core};

/// The completion the client gives the engine with each publish and request.
#[derive(Debug)]
pub enum Done {
    /// A publish: the key of its slot.
    Publish(usize),
    /// A SUBSCRIBE or UNSUBSCRIBE: resolves its [`Acks`].
    Request(oneshot::Sender<Result<Vec<ReasonCode>, Failure>>),
}

impl Done {
    /// The completion of a request and the future it resolves.
    pub fn request() -> (Done, Acks) {
        let (tx, rx) = oneshot::channel();
        (Done::Request(tx), Acks(rx))
    }
}

/// Where a publish's completion stands.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Not complete; nobody waits yet.
    Pending,
    /// Not complete; this task waits.
    Waiting(Waker),
    /// Complete; the [`Delivery`] has not taken the result yet.
    Ready(Result<ReasonCode, Failure>),
    /// The [`Delivery`] was dropped: free the slot at completion.
    Abandoned,
}

/// The slots of the publishes not yet completed and taken.
pub(crate) type Slots = Slab<Slot>;

/// Resolves the completions among `outs` and keeps the rest in it; the wakers of the tasks to
/// wake go to `wake` (wake them after releasing the lock). Returns whether any completed (so
/// queue room may have been freed).
pub(crate) fn settle(
    slots: &mut Slots,
    outs: &mut Vec<Output<Done>>,
    wake: &mut Vec<Waker>,
) -> bool {
    let mut freed = false;
    outs.retain_mut(|out| {
        let (key, result) = match out {
            Output::Published {
                completion: Done::Publish(key),
                result,
            } => (*key, *result),
            Output::Acknowledged {
                completion: Done::Request(_),
                ..
            }
            | Output::Published {
                completion: Done::Request(_),
                ..
            } => {
                freed = true;
                return true;
            }
            _ => return true,
        };
        freed = true;
        if let Some(slot) = slots.get_mut(key) {
            match std::mem::replace(slot, Slot::Ready(result)) {
                Slot::Abandoned => {
                    slots.remove(key);
                }
                Slot::Waiting(waker) => wake.push(waker),
                Slot::Pending | Slot::Ready(_) => {}
            }
        }
        false
    });
    freed
}

/// The completion of a publish: a future of the broker's acknowledgment.
///
/// QoS 0 completes once written; QoS 1 at PUBACK; QoS 2 at PUBCOMP. Dropping it does not
/// cancel the publish.
#[must_use = "await it to learn whether the broker acknowledged the message, or drop it"]
pub struct Delivery {
    /// The client and the slot; `None` once the result was taken.
    slot: Option<(Arc<Core>, usize)>,
}

impl Delivery {
    pub(crate) fn new(core: Arc<Core>, key: usize) -> Delivery {
        Delivery {
            slot: Some((core, key)),
        }
    }
}

impl Future for Delivery {
    type Output = Result<ReasonCode, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((core, key)) = &self.slot else {
            return Poll::Ready(Err(Failure::Closed));
        };
        let key = *key;
        let result = {
            let mut inner = core.lock();
            let Some(slot) = inner.slots.get_mut(key) else {
                return Poll::Ready(Err(Failure::Closed));
            };
            match slot {
                Slot::Ready(result) => {
                    let result = *result;
                    inner.slots.remove(key);
                    result
                }
                Slot::Waiting(w) if w.will_wake(cx.waker()) => return Poll::Pending,
                _ => {
                    *slot = Slot::Waiting(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        self.slot = None;
        Poll::Ready(result)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some((core, key)) = self.slot.take() {
            let mut inner = core.lock();
            if let Some(slot) = inner.slots.get_mut(key) {
                if matches!(slot, Slot::Ready(_)) {
                    inner.slots.remove(key);
                } else {
                    *slot = Slot::Abandoned;
                }
            }
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

/// The broker's answer to a SUBSCRIBE or UNSUBSCRIBE: one reason code per filter.
#[must_use = "await it for the broker's answer"]
pub struct Acks(oneshot::Receiver<Result<Vec<ReasonCode>, Failure>>);

impl Future for Acks {
    type Output = Result<Vec<ReasonCode>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or(Err(Failure::Closed))
                .map_err(ClientError::Failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn published(key: usize, result: Result<ReasonCode, Failure>) -> Output<Done> {
        Output::Published {
            completion: Done::Publish(key),
            result,
        }
    }

    #[test]
    fn settle_fills_wakes_and_frees_abandoned_slots() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut slots = Slots::new();
        let pending = slots.insert(Slot::Pending);
        let waiting = slots.insert(Slot::Waiting(Waker::from(count.clone())));
        let abandoned = slots.insert(Slot::Abandoned);
        let (request, _acks) = Done::request();
        let mut outs = vec![
            published(pending, Ok(ReasonCode::Success)),
            Output::Connected {
                session_present: false,
            },
            published(waiting, Err(Failure::Evicted)),
            published(abandoned, Ok(ReasonCode::Success)),
            Output::Acknowledged {
                completion: request,
                result: Ok(vec![]),
            },
        ];
        let mut wake = Vec::new();
        assert!(settle(&mut slots, &mut outs, &mut wake));
        // What is not a publish completion stays for the driver.
        assert!(matches!(
            outs.as_slice(),
            [Output::Connected { .. }, Output::Acknowledged { .. }]
        ));
        assert!(matches!(
            slots.get(pending),
            Some(Slot::Ready(Ok(ReasonCode::Success)))
        ));
        assert!(matches!(
            slots.get(waiting),
            Some(Slot::Ready(Err(Failure::Evicted)))
        ));
        assert!(!slots.contains(abandoned));
        assert_eq!(slots.len(), 2);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "woken only after the lock"
        );
        wake.into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn nothing_to_settle_frees_nothing() {
        let mut slots = Slots::new();
        let mut outs = vec![Output::Connected {
            session_present: true,
        }];
        assert!(!settle(&mut slots, &mut outs, &mut Vec::new()));
        assert_eq!(outs.len(), 1);
    }

    fn core() -> Arc<Core> {
        let options = crate::options::Options::new("mqtt://127.0.0.1:1").unwrap();
        Arc::new(Core::new(options).unwrap())
    }

    fn complete(core: &Core, key: usize, result: Result<ReasonCode, Failure>) {
        let mut wake = Vec::new();
        let mut inner = core.lock();
        settle(
            &mut inner.slots,
            &mut vec![published(key, result)],
            &mut wake,
        );
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
    }

    #[test]
    fn a_delivery_waits_then_takes_its_result_and_frees_the_slot() {
        let core = core();
        let key = core.lock().slots.insert(Slot::Pending);
        let mut delivery = Delivery::new(core.clone(), key);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut delivery).poll(&mut cx).is_pending());
        assert!(matches!(core.lock().slots.get(key), Some(Slot::Waiting(_))));
        complete(&core, key, Ok(ReasonCode::NoMatchingSubscribers));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            Pin::new(&mut delivery).poll(&mut cx),
            Poll::Ready(Ok(ReasonCode::NoMatchingSubscribers))
        );
        assert!(core.lock().slots.is_empty());
        drop(delivery);
        assert!(core.lock().slots.is_empty());
    }

    #[test]
    fn a_dropped_delivery_frees_its_slot_before_or_after_completion() {
        let core = core();
        let early = core.lock().slots.insert(Slot::Pending);
        drop(Delivery::new(core.clone(), early));
        assert!(matches!(
            core.lock().slots.get(early),
            Some(Slot::Abandoned)
        ));
        complete(&core, early, Ok(ReasonCode::Success));
        assert!(core.lock().slots.is_empty());

        let late = core.lock().slots.insert(Slot::Pending);
        let delivery = Delivery::new(core.clone(), late);
        complete(&core, late, Err(Failure::Closed));
        assert!(matches!(core.lock().slots.get(late), Some(Slot::Ready(_))));
        drop(delivery);
        assert!(core.lock().slots.is_empty());
    }
}
