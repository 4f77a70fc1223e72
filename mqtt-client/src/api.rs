//! The client API's types (errors, events, handler results) and the [`Core`] behind the
//! lock: the engine, the publish slots, the handler registry and the decisions that do not
//! depend on a runtime (filter parsing, connection status, handler outcomes).

use std::boxed::Box;
use std::collections::HashMap;
use std::fmt;
use std::format;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::vec::Vec;

use mqtt_proto::{PacketId, Publish, QoS, ReasonCode, SubscriptionOptions, TopicFilter};

use mqtt_session::engine::{Engine, Failure, Message, Stats};

use crate::persist::Persist;
use mqtt_session::{ConnectionError, Instant};

use crate::delivery::{Done, Slot, Slots};
use crate::options::{Options, OptionsError};

/// Priority of messages published without one (1 is dropped first from a full queue, 10 last).
pub const DEFAULT_PRIORITY: u8 = 5;

/// Why a client call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The queue is full (`try_publish` only; `publish` waits for room).
    QueueFull,
    /// The client is shutting down or was disconnected.
    Closed,
    /// The topic, filter or message is not valid MQTT.
    Invalid(String),
    /// The message is larger than the whole queue.
    TooLarge,
    /// The server does not support this (QoS above its maximum, retain).
    NotSupported(ReasonCode),
    /// The options are not valid.
    Options(OptionsError),
    /// The request completed with a failure.
    Failed(Failure),
    /// The store cannot be opened (another process holds it, or its directory is not
    /// writable).
    Store(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::QueueFull => f.write_str("the outgoing queue is full"),
            ClientError::Closed => f.write_str("the client is closed"),
            ClientError::Invalid(e) => write!(f, "invalid: {e}"),
            ClientError::TooLarge => f.write_str("message larger than the whole queue"),
            ClientError::NotSupported(rc) => write!(f, "not supported by the server: {rc}"),
            ClientError::Options(e) => write!(f, "bad options: {e}"),
            ClientError::Failed(e) => write!(f, "{e}"),
            ClientError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<mqtt_session::Error> for ClientError {
    fn from(e: mqtt_session::Error) -> Self {
        use mqtt_session::Error as E;
        match e {
            E::QueueFull | E::PacketIdsExhausted | E::WouldBlock => ClientError::QueueFull,
            E::Closed => ClientError::Closed,
            E::TooLarge => ClientError::TooLarge,
            E::NotSupported(rc) => ClientError::NotSupported(rc),
            other => ClientError::Invalid(other.to_string()),
        }
    }
}

/// Why the first connection attempt failed (see `Client::wait_connected`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The broker could not be reached (DNS, TCP, TLS or WebSocket set-up).
    Unreachable(String),
    /// The broker refused the connection (bad credentials, not authorized, ...).
    Refused(ConnectionError),
    /// The connection was lost before it was accepted.
    Lost(ConnectionError),
    /// No outcome in the time given.
    Timeout,
    /// The client was closed.
    Closed,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unreachable(e) => write!(f, "cannot reach the broker: {e}"),
            ConnectError::Refused(e) | ConnectError::Lost(e) => write!(f, "{e}"),
            ConnectError::Timeout => f.write_str("timed out waiting for the broker"),
            ConnectError::Closed => f.write_str("the client is closed"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Something that happened on the connection, for those who consume raw events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        /// Whether the broker resumed the session.
        session_present: bool,
    },
    /// The connection ended; the client reconnects unless it was closed.
    Disconnected(ConnectionError),
    /// An attempt to open the transport failed; the client tries again after the back-off.
    ConnectFailed(String),
    /// A message arrived.
    Message(Message),
}

/// Where the connection stands, as `Client::wait_connected` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The first (or current) attempt has no outcome yet.
    Connecting,
    /// The broker accepted the connection.
    Connected,
    /// The last attempt failed; the driver tries again.
    Failed(ConnectError),
    /// The driver finished.
    Closed,
}

impl Status {
    /// What `wait_connected` returns in this status; `None`: keep waiting.
    pub fn outcome(&self) -> Option<Result<(), ConnectError>> {
        match self {
            Status::Connecting => None,
            Status::Connected => Some(Ok(())),
            Status::Failed(e) => Some(Err(e.clone())),
            Status::Closed => Some(Err(ConnectError::Closed)),
        }
    }

    /// The status after the connection ended with `error` (`None`: unchanged): a refusal is
    /// always reported; another loss only before the connection was accepted.
    pub fn after_loss(&self, error: ConnectionError) -> Option<Status> {
        match error {
            ConnectionError::Refused(_) => Some(Status::Failed(ConnectError::Refused(error))),
            _ if *self != Status::Connected => Some(Status::Failed(ConnectError::Lost(error))),
            _ => None,
        }
    }
}

/// What a handler may return: nothing, or a `Result` whose error is logged.
pub trait HandlerResult {
    /// The error to log, if any.
    fn into_result(self) -> Result<(), String>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HandlerResult for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// The identifier of a route, to remove it with `Client::unroute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(u64);

/// The future a handler gives, boxed.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A message handler, type-erased.
pub type Handler = Arc<dyn Fn(Message) -> BoxFuture + Send + Sync>;

/// How a handler ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerFailure {
    /// It returned this error.
    Error(String),
    /// It panicked.
    Panicked,
}

/// Runs `handler` on `message`, catching a panic: the outcome is for the runtime to log.
pub fn run_handler(
    handler: Handler,
    message: Message,
) -> impl Future<Output = Result<(), HandlerFailure>> + Send {
    CatchUnwind(Some(handler(message)))
}

/// Polls a boxed handler future, turning a panic into [`HandlerFailure::Panicked`].
struct CatchUnwind(Option<BoxFuture>);

impl Future for CatchUnwind {
    type Output = Result<(), HandlerFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.0.as_mut() else {
            return Poll::Ready(Err(HandlerFailure::Panicked));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => {
                self.0 = None;
                Poll::Ready(r.map_err(HandlerFailure::Error))
            }
            Err(_) => {
                // A future that panicked is not polled again.
                self.0 = None;
                Poll::Ready(Err(HandlerFailure::Panicked))
            }
        }
    }
}

/// Parses a topic filter, with the error message every runtime gives.
pub fn parse_filter(filter: &str) -> Result<TopicFilter<'_>, ClientError> {
    TopicFilter::new(filter)
        .map_err(|e| ClientError::Invalid(format!("topic filter {filter:?}: {e}")))
}

/// A PUBLISH of `payload` to `topic`, without properties.
pub fn publish_of<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, retain: bool) -> Publish<'a> {
    Publish {
        qos,
        retain,
        ..Publish::new(topic, payload)
    }
}

/// A back-off jitter seed from the wall clock and the process id.
pub fn jitter_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// What is behind the client's lock: the engine and the publish slots, changed together.
pub(crate) struct Inner {
    /// The sans-IO engine: session, completions, routing, reconnect timing.
    pub(crate) engine: Engine<Done>,
    /// The slots of the publishes whose [`crate::Delivery`] is not finished.
    pub(crate) slots: Slots,
    /// The store, with [`Options::store`].
    pub(crate) persist: Option<Persist>,
}

impl Inner {
    /// Hands the records the last engine call made to the store; gives the commit to await
    /// (`Sync` mode) and the sequence number it makes durable.
    pub(crate) fn flush(&mut self) -> Option<(mqtt_store::Commit, u64)> {
        let persist = self.persist.as_mut()?;
        persist.flush(&mut self.engine)
    }
}

/// Everything the client handles, their deliveries, the handler tasks and the driver share.
///
/// Every method takes the current time from [`Core::now`] and never blocks beyond a short
/// lock; calls that queue packets wake the driver.
pub(crate) struct Core {
    inner: Mutex<Inner>,
    handlers: Mutex<HashMap<u64, Handler>>,
    running: AtomicUsize,
    options: Options,
    epoch: std::time::Instant,
    /// Wakes the driver: there is something to send, or the state changed.
    pub(crate) wake: Wake,
    /// Wakes publishers waiting for queue room, and `shutdown` waiting for completions.
    pub(crate) room: event_listener::Event,
    /// A handler finished and none runs any more.
    pub(crate) idle: event_listener::Event,
    status: Mutex<Status>,
    /// The status changed.
    pub(crate) status_changed: event_listener::Event,
    /// Bounds the handlers running at once.
    pub(crate) limit: Arc<async_lock::Semaphore>,
}

/// Locks a mutex, going on after a panic elsewhere: every holder leaves the data consistent
/// between calls.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    /// A core for valid `options`, its engine connecting at [`Instant::ZERO`].
    pub(crate) fn new(options: Options) -> Result<Self, ClientError> {
        options.validate().map_err(ClientError::Options)?;
        let mut engine = Engine::new(
            options.session_config(),
            options.identity(),
            options.backoff_policy(jitter_seed()),
            options.queue_messages,
            options.queue_bytes,
            Instant::ZERO,
        );
        let persist = Persist::open(&options, &mut engine)?;
        Ok(Core {
            inner: Mutex::new(Inner {
                engine,
                slots: Slots::new(),
                persist,
            }),
            handlers: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            limit: Arc::new(async_lock::Semaphore::new(options.handler_concurrency)),
            options,
            epoch: std::time::Instant::now(),
            wake: Wake::default(),
            room: event_listener::Event::new(),
            idle: event_listener::Event::new(),
            status: Mutex::new(Status::Connecting),
            status_changed: event_listener::Event::new(),
        })
    }

    /// The options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }

    /// The engine and slots, locked. Never hold it across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The time on the engine's clock (milliseconds since the client was made).
    pub(crate) fn now(&self) -> Instant {
        let ms = self.epoch.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The moment `at` on the runtime's clock.
    pub(crate) fn deadline(&self, at: Instant) -> std::time::Instant {
        self.epoch + std::time::Duration::from_millis(at.as_millis())
    }

    /// The current connection status.
    pub(crate) fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Sets the status and tells whoever waits for it.
    pub(crate) fn set_status(&self, status: Status) {
        *lock(&self.status) = status;
        self.status_changed.notify(usize::MAX);
    }

    /// Acknowledges a received message (manual-ack modes); the driver sends it.
    pub(crate) fn ack(&self, packet_id: PacketId, reason_code: ReasonCode) {
        self.lock().engine.ack(packet_id, reason_code);
        self.wake.wake();
    }

    /// The store commit up to `lsn` ended: releases what waited for it.
    pub(crate) fn committed(&self, lsn: u64, result: Result<(), mqtt_store::StoreError>) {
        crate::persist::committed(&mut self.lock().engine, lsn, result);
        self.wake.wake();
    }

    /// Waits until `done` gives a value, re-checking whenever `signal` fires.
    pub(crate) async fn until<T>(
        &self,
        signal: &event_listener::Event,
        mut done: impl FnMut() -> Option<T>,
    ) -> T {
        loop {
            let listener = signal.listen();
            if let Some(v) = done() {
                return v;
            }
            listener.await;
        }
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<u64, Handler>> {
        lock(&self.handlers)
    }

    /// Queues a publish; gives the key of its slot, and the store commit that makes it
    /// durable (with the sequence number to report after it) when the store syncs.
    pub(crate) fn publish(
        &self,
        now: Instant,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<(usize, Option<(mqtt_store::Commit, u64)>), ClientError> {
        let mut inner = self.lock();
        let key = inner.slots.insert(Slot::Pending);
        match inner.engine.publish(now, msg, priority, Done::Publish(key)) {
            Ok(()) => Ok((key, inner.flush())),
            Err((e, _)) => {
                inner.slots.remove(key);
                Err(ClientError::from(e))
            }
        }
    }

    /// Queues a SUBSCRIBE to `filters`, each at its QoS.
    pub(crate) fn subscribe(
        &self,
        now: Instant,
        filters: &[(&str, SubscriptionOptions)],
        completion: Done,
    ) -> Result<(), ClientError> {
        let parsed = filters
            .iter()
            .map(|(f, options)| parse_filter(f).map(|f| (f, *options)))
            .collect::<Result<Vec<_>, _>>()?;
        self.lock()
            .engine
            .subscribe(now, &parsed, Some(completion))?;
        Ok(())
    }

    /// Queues an UNSUBSCRIBE from `filters`.
    pub(crate) fn unsubscribe(
        &self,
        now: Instant,
        filters: &[&str],
        completion: Done,
    ) -> Result<(), ClientError> {
        let parsed = filters
            .iter()
            .map(|f| parse_filter(f))
            .collect::<Result<Vec<_>, _>>()?;
        self.lock()
            .engine
            .unsubscribe(now, &parsed, Some(completion))?;
        Ok(())
    }

    /// Routes messages matching `filter` to `handler` and subscribes at `qos`.
    pub(crate) fn route(
        &self,
        now: Instant,
        filter: &str,
        options: SubscriptionOptions,
        handler: Handler,
    ) -> Result<RouteId, ClientError> {
        let parsed = parse_filter(filter)?;
        // Lock order: handlers, then engine (the driver never holds both).
        let mut handlers = self.handlers();
        let key = self.lock().engine.route(now, parsed, options)?;
        handlers.insert(key, handler);
        Ok(RouteId(key))
    }

    /// Stops routing to a handler (the subscription stays).
    pub(crate) fn unroute(&self, id: RouteId) -> bool {
        let mut handlers = self.handlers();
        handlers.remove(&id.0);
        self.lock().engine.unroute(id.0)
    }

    /// The handlers of these route keys (from [`mqtt_session::engine::Output::Message`]),
    /// each counted as running until [`Core::handler_done`].
    pub(crate) fn handlers_for(&self, routes: &[u64]) -> Vec<Handler> {
        if routes.is_empty() {
            return Vec::new();
        }
        let found: Vec<Handler> = {
            let map = self.handlers();
            routes.iter().filter_map(|k| map.get(k).cloned()).collect()
        };
        self.running.fetch_add(found.len(), Ordering::AcqRel);
        found
    }

    /// A handler from [`Core::handlers_for`] finished; true when none runs any more.
    pub(crate) fn handler_done(&self) -> bool {
        self.running.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Handlers running now.
    pub(crate) fn running_handlers(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Whether no handler runs and every accepted message and request completed.
    pub(crate) fn is_idle(&self) -> bool {
        self.running_handlers() == 0 && self.lock().engine.is_drained()
    }

    /// A snapshot of the connection state, queue and counters.
    pub(crate) fn stats(&self, now: Instant) -> Stats {
        let inner = self.lock();
        let mut stats = inner.engine.stats(now);
        stats.store_commits = inner.persist.as_ref().map_or(0, Persist::commits);
        stats.store_latency = inner.persist.as_ref().map(Persist::latency);
        stats
    }
}

/// The driver's wake-up: set by the handles, taken by the driver. A wake-up sent while the
/// driver is busy is kept for its next wait, and only the first of many wakes the task.
#[derive(Default)]
pub(crate) struct Wake {
    pending: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Wake {
    /// Asks the driver to look at the engine again.
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Ready (and reset) when a wake-up came since the last one was taken.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_status() {
        let lost = ConnectionError::TransportClosed;
        assert_eq!(Status::Connected.after_loss(lost), None);
        assert_eq!(
            Status::Connecting.after_loss(lost),
            Some(Status::Failed(ConnectError::Lost(lost)))
        );
        let refused = ConnectionError::Refused(ReasonCode::NotAuthorized);
        assert_eq!(
            Status::Connected.after_loss(refused),
            Some(Status::Failed(ConnectError::Refused(refused)))
        );
    }

    #[test]
    fn filters_are_checked() {
        let e = parse_filter("a/#/b").unwrap_err();
        assert!(matches!(e, ClientError::Invalid(m) if m.starts_with("topic filter \"a/#/b\"")));
    }

    #[test]
    fn panics_are_caught() {
        let handler: Handler = Arc::new(|_| Box::pin(async { panic!("boom") }));
        let msg = Message {
            topic: "t".to_string(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            packet_id: None,
            acker: None,
            redelivered: false,
        };
        let mut fut = Box::pin(run_handler(handler, msg));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(
            fut.as_mut().poll(&mut cx),
            Poll::Ready(Err(HandlerFailure::Panicked))
        );
    }
}
