//! The client handle, its driver and handler routing, generic over the [`Runtime`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use mqtt_proto::{PacketId, Publish, QoS, ReasonCode, SubscriptionOptions};
use mqtt_session::engine::Engine;
use mqtt_session::engine::{Acker, Failure, Message, Output, ReadStatus, Stats};
use mqtt_session::{ConnectionError, Instant};
use tracing::{Instrument, debug, info, trace, warn};

use crate::api::{
    ClientError, ConnectError, Core, DEFAULT_PRIORITY, Event, Handler, HandlerFailure,
    HandlerResult, RouteId, Status, publish_of, run_handler,
};
use crate::delivery::{Acks, Delivery, Done, settle};
use crate::options::{AckMode, Options};
use crate::runtime::{self, Runtime, Timer};
use crate::transport::Transport;

/// The size of the read scratch and of the transmit buffer.
const BUFFER: usize = 64 * 1024;

/// A cloneable handle to an MQTT client on the runtime `R`. Its connection runs in a
/// [`Driver`]; a runtime crate names it, e.g. `mqtt_tokio::Client`.
pub struct Client<R> {
    pub(crate) core: Arc<Core>,
    runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            core: self.core.clone(),
            runtime: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.core.options();
        f.debug_struct("Client")
            .field("broker", &o.broker)
            .field("client_id", &o.client_id)
            .finish_non_exhaustive()
    }
}

/// The task that owns the connection: spawn [`Driver::run`] on the runtime.
pub struct Driver<R: Runtime> {
    core: Arc<Core>,
    events: Option<R::EventSender>,
}

impl<R: Runtime> fmt::Debug for Driver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl<R: Runtime> Drop for Driver<R> {
    fn drop(&mut self) {
        // A driver that ends, or is dropped without running, releases whoever waits for it.
        if self.core.status() != Status::Closed {
            self.core.set_status(Status::Closed);
        }
    }
}

impl<R: Runtime> Client<R> {
    /// A client and its driver; nothing connects until the driver runs.
    pub fn new(options: Options) -> Result<(Client<R>, Driver<R>), ClientError> {
        let core = Arc::new(Core::new(options)?);
        let driver = Driver {
            core: core.clone(),
            events: None,
        };
        let client = Client {
            core,
            runtime: PhantomData,
        };
        Ok((client, driver))
    }

    /// A client whose driver runs on a spawned task.
    pub fn spawn(options: Options) -> Result<Client<R>, ClientError> {
        let (client, driver) = Client::new(options)?;
        R::spawn(driver.run());
        Ok(client)
    }

    /// The options the client was made with.
    pub fn options(&self) -> &Options {
        self.core.options()
    }

    /// Waits for the outcome of the current connection attempt: connected, refused or
    /// unreachable (the driver keeps retrying after an error).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ConnectError> {
        let core = &self.core;
        let wait = core.until(&core.status_changed, || core.status().outcome());
        runtime::timeout::<R, _>(timeout, wait)
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    /// Queues a message if there is room, at once; the returned [`Delivery`] resolves when
    /// the broker has it.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        qos: QoS,
        retain: bool,
    ) -> Result<Delivery, ClientError> {
        let msg = publish_of(topic, payload.as_ref(), qos, retain);
        self.try_publish_with(&msg, DEFAULT_PRIORITY)
    }

    /// Queues a message, waiting for room in the queue; the returned [`Delivery`] resolves
    /// when the broker has it.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        qos: QoS,
        retain: bool,
    ) -> Result<Delivery, ClientError> {
        let msg = publish_of(topic, payload.as_ref(), qos, retain);
        self.publish_with(&msg, DEFAULT_PRIORITY).await
    }

    /// [`Client::publish`] for a full PUBLISH (MQTT 5 properties) with an eviction priority
    /// (1 is dropped first from a full queue, 10 last).
    pub async fn publish_with(
        &self,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<Delivery, ClientError> {
        // The common case takes no listener: it costs nothing when there is room.
        let (delivery, commit) = match self.queue(msg, priority) {
            Err(ClientError::QueueFull) => loop {
                let room = self.core.room.listen();
                match self.queue(msg, priority) {
                    Err(ClientError::QueueFull) => room.await,
                    other => break other?,
                }
            },
            other => other?,
        };
        if let Some((commit, lsn)) = commit {
            // With a synced store: on disk before this returns (concurrent publishers share
            // the sync).
            let result = commit.await;
            self.core.committed(lsn, result);
        }
        Ok(delivery)
    }

    /// Queues a message; gives its delivery and the store commit to wait for, if any.
    #[allow(clippy::type_complexity)]
    fn queue(
        &self,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<(Delivery, Option<(mqtt_store::Commit, u64)>), ClientError> {
        let (key, commit) = self.core.publish(self.core.now(), msg, priority)?;
        trace!(topic = msg.topic, qos = ?msg.qos, bytes = msg.payload.len(), "queued");
        self.core.wake.wake();
        Ok((Delivery::new(self.core.clone(), key), commit))
    }

    /// [`Client::try_publish`] for a full PUBLISH with an eviction priority. With a synced
    /// store it returns before the message is on disk (it is not sent before).
    pub fn try_publish_with(
        &self,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<Delivery, ClientError> {
        let (delivery, commit) = self.queue(msg, priority)?;
        if let Some((commit, lsn)) = commit {
            spawn_commit::<R>(self.core.clone(), commit, lsn);
        }
        Ok(delivery)
    }

    /// Subscribes to filters and waits for the broker's answer: one reason code per filter
    /// (the granted QoS, or why it was refused). Offline, the SUBSCRIBE goes out on connect.
    pub async fn subscribe_many(
        &self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let filters: Vec<(&str, SubscriptionOptions)> = filters
            .iter()
            .map(|(f, qos)| (*f, SubscriptionOptions::new(*qos)))
            .collect();
        self.subscribe_with(&filters).await
    }

    /// [`Client::subscribe_many`] with every subscription option (MQTT 5: no local, retain
    /// as published, retain handling).
    pub async fn subscribe_with(
        &self,
        filters: &[(&str, SubscriptionOptions)],
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let (done, rx): (Done, Acks) = Done::request();
        self.core.subscribe(self.core.now(), filters, done)?;
        self.core.wake.wake();
        rx.await
    }

    /// Subscribes to one filter; returns the broker's reason code (granted QoS or refusal).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, ClientError> {
        let codes = self.subscribe_many(&[(filter, qos)]).await?;
        codes
            .first()
            .copied()
            .ok_or(ClientError::Failed(Failure::Refused(
                ReasonCode::ProtocolError,
            )))
    }

    /// Unsubscribes from filters and waits for UNSUBACK (reason codes from MQTT 5 on).
    pub async fn unsubscribe(&self, filters: &[&str]) -> Result<Vec<ReasonCode>, ClientError> {
        let (done, rx) = Done::request();
        self.core.unsubscribe(self.core.now(), filters, done)?;
        self.core.wake.wake();
        rx.await
    }

    /// Routes every message matching `filter` to `handler` (with every other matching handler)
    /// and subscribes at QoS 1, now or on connect.
    ///
    /// Handlers run concurrently, at most `handler_concurrency` at once; an error they return,
    /// or a panic, is logged and the client goes on. A handler may publish.
    pub fn route<F, Fut>(&self, filter: &str, handler: F) -> Result<RouteId, ClientError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.route_with(filter, QoS::AtLeastOnce, handler)
    }

    /// [`Client::route`] with the subscription's QoS.
    pub fn route_with<F, Fut>(
        &self,
        filter: &str,
        qos: QoS,
        handler: F,
    ) -> Result<RouteId, ClientError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.route_with_options(filter, SubscriptionOptions::new(qos), handler)
    }

    /// [`Client::route`] with every subscription option (MQTT 5: no local, retain as
    /// published, retain handling).
    pub fn route_with_options<F, Fut>(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        handler: F,
    ) -> Result<RouteId, ClientError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let handler: Handler = Arc::new(move |m| {
            let fut = handler(m);
            Box::pin(async move { fut.await.into_result() })
        });
        let id = self.core.route(self.core.now(), filter, options, handler)?;
        self.core.wake.wake();
        Ok(id)
    }

    /// Acknowledges a message received with [`AckMode::Manual`](crate::AckMode::Manual)
    /// (QoS 0 messages need none).
    pub fn ack(&self, message: &Message) {
        self.ack_with(message, ReasonCode::Success);
    }

    /// [`Client::ack`] with a reason code (sent to MQTT 5 brokers; an error code refuses the
    /// message, which the broker then does not send again).
    pub fn ack_with(&self, message: &Message, reason_code: ReasonCode) {
        if let Some(id) = message.packet_id {
            self.core.ack(id, reason_code);
        }
    }

    /// Stops routing to a handler (the subscription stays).
    pub fn unroute(&self, id: RouteId) -> bool {
        self.core.unroute(id)
    }

    /// A snapshot of the connection state, queue and counters.
    pub fn stats(&self) -> Stats {
        self.core.stats(self.core.now())
    }

    /// Handlers running now.
    pub fn running_handlers(&self) -> usize {
        self.core.running_handlers()
    }

    /// Ends the session at once: DISCONNECT (if connected), no reconnect; queued messages
    /// fail with [`Failure::Closed`]. Waits for the driver to finish.
    pub async fn disconnect(&self) {
        let mut outs = Vec::new();
        let mut wake = Vec::new();
        {
            let mut inner = self.core.lock();
            inner.engine.disconnect(&mut outs);
            let inner = &mut *inner;
            settle(&mut inner.slots, &mut outs, &mut wake);
        }
        wake.into_iter().for_each(Waker::wake);
        answer(&self.core, outs);
        self.core.room.notify(usize::MAX);
        self.core.wake.wake();
        let core = &self.core;
        core.until(&core.status_changed, || {
            matches!(core.status(), Status::Closed).then_some(())
        })
        .await;
    }

    /// Graceful shutdown: takes no new work, waits up to `timeout` for running handlers and
    /// unacknowledged messages, then disconnects.
    pub async fn shutdown(&self, timeout: Duration) {
        self.core.lock().engine.stop_accepting();
        let core = &self.core;
        let drained = async {
            loop {
                let idle = core.idle.listen();
                let room = core.room.listen();
                if core.is_idle() {
                    return;
                }
                futures_util::future::select(idle, room).await;
            }
        };
        if runtime::timeout::<R, _>(timeout, drained).await.is_none() {
            warn!("shutdown: timed out waiting for handlers and acknowledgments");
        }
        self.disconnect().await;
    }
}

/// The handlers of one received message still running, when it is acknowledged after them.
struct AckGroup {
    id: PacketId,
    left: AtomicUsize,
    failed: AtomicBool,
}

/// Waits for a store commit in a task of its own, then releases what waited for it.
fn spawn_commit<R: Runtime>(core: Arc<Core>, commit: mqtt_store::Commit, lsn: u64) {
    R::spawn(async move {
        let result = commit.await;
        core.committed(lsn, result);
    });
}

/// Answers the SUBSCRIBE and UNSUBSCRIBE completions among `outs` (without the lock held).
fn answer(core: &Core, outs: Vec<Output<Done>>) {
    let mut answered = false;
    for out in outs {
        if let Output::Acknowledged {
            completion: Done::Request(tx),
            result,
        } = out
        {
            answered = true;
            let _ = tx.send(result);
        }
    }
    if answered {
        core.room.notify(usize::MAX);
    }
}

/// What woke the connection loop.
enum Woken {
    Read(std::io::Result<usize>),
    Wake,
    Timeout,
}

/// The driver's buffers and reusable vectors, kept across connections.
struct Buffers {
    rx: BytesMut,
    scratch: Vec<u8>,
    tx: Vec<u8>,
    /// Bytes of `tx` encoded and not written yet.
    staged: usize,
    out: Outs,
}

/// What the engine gave and the tasks to wake, acted on by [`Driver::dispatch`].
#[derive(Default)]
struct Outs {
    outs: Vec<Output<Done>>,
    wake: Vec<Waker>,
}

impl<R: Runtime> Driver<R> {
    /// A stream of raw events. Unbounded, so a slow reader never stalls the connection; take it
    /// only if you read it.
    pub fn events(&mut self) -> R::Events {
        let (tx, rx) = R::event_channel();
        self.events = Some(tx);
        rx
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            R::send_event(tx, event);
        }
    }

    /// Runs the connection until [`Client::disconnect`]: connects, reconnects with back-off,
    /// moves messages.
    pub async fn run(self) {
        let span = tracing::info_span!(
            "mqtt",
            broker = %self.core.options().broker,
            client_id = %self.core.options().client_id
        );
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let core = self.core.clone();
        let mut b = Buffers {
            rx: BytesMut::with_capacity(BUFFER),
            scratch: vec![0; BUFFER],
            tx: vec![0; BUFFER],
            staged: 0,
            out: Outs::default(),
        };
        loop {
            let at = {
                let inner = core.lock();
                if inner.engine.is_closed() {
                    break;
                }
                inner.engine.reconnect_at()
            };
            if let Some(at) = at {
                let mut timer = R::timer(core.deadline(at));
                // A disconnect() while waiting wakes us too.
                std::future::poll_fn(|cx| {
                    if core.wake.poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    timer.poll_fire(cx)
                })
                .await;
                let now = core.now();
                if core.lock().engine.reconnect_at().is_some_and(|t| t > now) {
                    continue;
                }
            }
            debug!("connecting");
            let limit = core.options().connect_timeout;
            let connect = Transport::connect::<R>(core.options());
            let mut transport = match runtime::timeout::<R, _>(limit, connect).await {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    self.failed(ConnectError::Unreachable(e.to_string()), &mut b);
                    continue;
                }
                None => {
                    let e = format!("no connection within {limit:?}");
                    self.failed(ConnectError::Unreachable(e), &mut b);
                    continue;
                }
            };
            let start = core.lock().engine.start(core.now(), &mut b.tx);
            if let Err(e) = start {
                warn!(error = %e, "cannot encode CONNECT");
                self.failed(ConnectError::Unreachable(e.to_string()), &mut b);
                continue;
            }
            let written = transport.write_all(&b.tx).await;
            // CONNECT is written: the transmit buffer goes back to its working size.
            b.tx.resize(b.tx.capacity().max(BUFFER), 0);
            if let Err(e) = written {
                self.failed(ConnectError::Unreachable(e.to_string()), &mut b);
                continue;
            }
            let error = self.connection(&mut transport, &mut b).await;
            let _ = runtime::timeout::<R, _>(Duration::from_secs(1), transport.shutdown()).await;
            b.rx.clear();
            // What was staged for the lost connection: the session resends what matters.
            b.staged = 0;
            let delay = self.closed(&mut b);
            if let Some(e) = error {
                if !core.lock().engine.is_closed() {
                    info!(error = %e, retry_in = ?delay, "connection lost");
                }
                self.emit(Event::Disconnected(e));
            }
        }
        info!("client closed");
        self.closed(&mut b);
        core.set_status(Status::Closed);
        // Drop the event sender so that a reader sees the end.
        self.events = None;
    }

    /// The transport is closed (or never opened): tells the engine, acts on what it says and
    /// returns the wait before the next attempt.
    fn closed(&self, b: &mut Buffers) -> Duration {
        let delay = self.engine(&mut b.out, |e, now, outs| e.transport_closed(now, outs));
        self.dispatch(&mut b.out);
        delay
    }

    /// An attempt failed before CONNACK: report it and schedule the next.
    fn failed(&self, error: ConnectError, b: &mut Buffers) {
        let delay = self.closed(b);
        warn!(error = %error, retry_in = ?delay, "connect failed");
        self.emit(Event::ConnectFailed(error.to_string()));
        self.core.set_status(Status::Failed(error));
    }

    /// Calls the engine under the lock with the time and the output list, then settles the
    /// publish completions it gave (their tasks are woken by [`Driver::dispatch`]).
    fn engine<T>(
        &self,
        out: &mut Outs,
        f: impl FnOnce(&mut Engine<Done>, Instant, &mut Vec<Output<Done>>) -> T,
    ) -> T {
        let core = &self.core;
        let mut inner = core.lock();
        let inner = &mut *inner;
        let value = f(&mut inner.engine, core.now(), &mut out.outs);
        if let Some((commit, lsn)) = inner.flush() {
            spawn_commit::<R>(core.clone(), commit, lsn);
        }
        if settle(&mut inner.slots, &mut out.outs, &mut out.wake) {
            core.room.notify(usize::MAX);
        }
        value
    }

    /// Encodes what is due into the transmit buffer, after the bytes staged there, and acts on
    /// what that gives; returns where the bytes to write end and the connection's end, if it
    /// came.
    fn transmit(&self, b: &mut Buffers) -> (usize, Option<ConnectionError>) {
        let from = b.staged;
        let n = self.engine(&mut b.out, |e, now, outs| {
            e.transmit_after(now, &mut b.tx, from, outs)
        });
        (n, self.dispatch(&mut b.out))
    }

    /// Moves packets until the connection ends; returns why it ended.
    async fn connection(
        &self,
        t: &mut Transport<R::Tcp>,
        b: &mut Buffers,
    ) -> Option<ConnectionError> {
        let core = &self.core;
        let mut lost = None;
        let mut timer: Option<(std::time::Instant, R::Timer)> = None;
        let mut fired = false;
        loop {
            // Everything due goes out first, in as few writes as the buffer allows. No wait
            // for more: while we write, publishers queue the next batch.
            loop {
                let (n, end) = self.transmit(b);
                lost = lost.or(end);
                if n == 0 {
                    break;
                }
                b.staged = 0;
                if t.write_all(b.tx.get(..n).unwrap_or_default())
                    .await
                    .is_err()
                {
                    return Some(lost.unwrap_or(ConnectionError::TransportClosed));
                }
            }
            let deadline = {
                let inner = core.lock();
                if lost.is_some() || inner.engine.is_closed() {
                    return lost;
                }
                inner.engine.poll_timeout().map(|at| core.deadline(at))
            };
            // One timer per connection. It moves earlier with the deadline but not later
            // until it fires: most moves are later (each acknowledgment pushes the deadline
            // on), and firing early is harmless (`handle_timeout` does what is due, nothing
            // else), so this saves a timer update per packet.
            match (deadline, &mut timer) {
                (Some(at), Some((set, timer))) if at < *set || fired => {
                    timer.reset(at);
                    *set = at;
                    fired = false;
                }
                (Some(at), None) => timer = Some((at, R::timer(at))),
                _ => {}
            }
            let (rx, scratch) = (&mut b.rx, &mut b.scratch);
            let woken = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = t.poll_read(cx, rx, scratch) {
                    return Poll::Ready(Woken::Read(r));
                }
                if core.wake.poll(cx).is_ready() {
                    return Poll::Ready(Woken::Wake);
                }
                match (&mut timer, deadline) {
                    (Some((_, timer)), Some(_)) => timer.poll_fire(cx).map(|()| Woken::Timeout),
                    _ => Poll::Pending,
                }
            })
            .await;
            let read = match woken {
                Woken::Read(Ok(0) | Err(_)) => return Some(ConnectionError::TransportClosed),
                Woken::Read(Ok(_)) => true,
                // Bytes left unread while acknowledgments waited for the store.
                Woken::Wake => !b.rx.is_empty(),
                Woken::Timeout => {
                    fired = true;
                    self.engine(&mut b.out, |e, now, outs| e.handle_timeout(now, outs));
                    lost = lost.or(self.dispatch(&mut b.out));
                    false
                }
            };
            if read {
                let mut stalled = false;
                loop {
                    let rx = &mut b.rx;
                    let status =
                        self.engine(&mut b.out, |e, now, outs| e.handle_read(now, rx, outs));
                    lost = lost.or(self.dispatch(&mut b.out));
                    match status {
                        ReadStatus::NeedMore(n) => {
                            b.rx.reserve(n.max(4096));
                            break;
                        }
                        ReadStatus::Closed => break,
                        ReadStatus::TransmitFirst => {
                            // The acknowledgments of a read go out together after it (one
                            // write, not one per few packets), unless they pile up.
                            let before = b.staged;
                            let (n, end) = self.transmit(b);
                            lost = lost.or(end);
                            if n == before {
                                // Twice nothing new: what is owed waits for the store; read
                                // on once a commit wakes us (what is staged goes out first).
                                if stalled {
                                    break;
                                }
                                stalled = true;
                                continue;
                            }
                            stalled = false;
                            b.staged = n;
                            if n >= BUFFER / 2 {
                                b.staged = 0;
                                if t.write_all(b.tx.get(..n).unwrap_or_default())
                                    .await
                                    .is_err()
                                {
                                    return Some(ConnectionError::TransportClosed);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Wakes the deliveries settled under the lock and acts on the other outputs; returns the
    /// connection's end, if one is among them.
    fn dispatch(&self, out: &mut Outs) -> Option<ConnectionError> {
        out.wake.drain(..).for_each(Waker::wake);
        if out.outs.is_empty() {
            return None;
        }
        let mut lost = None;
        let mut answered = false;
        for out in out.outs.drain(..) {
            match out {
                Output::Connected { session_present } => {
                    info!(session_present, "connected");
                    self.core.set_status(Status::Connected);
                    self.emit(Event::Connected { session_present });
                }
                Output::Message {
                    mut message,
                    routes,
                } => {
                    if self.core.options().ack == AckMode::Manual && message.packet_id.is_some() {
                        // Weak: a message kept after the client is gone acknowledges nothing.
                        let core = Arc::downgrade(&self.core);
                        message.acker = Some(Acker::new(move |id, rc| {
                            if let Some(core) = core.upgrade() {
                                core.ack(id, rc);
                            }
                        }));
                    }
                    trace!(topic = %message.topic, payload = ?message.payload, "received");
                    self.deliver(&message, &routes);
                    self.emit(Event::Message(message));
                }
                Output::ConnectionLost(e) => {
                    if let ConnectionError::Refused(_) = e {
                        warn!(error = %e, "connection refused");
                    }
                    if let Some(status) = self.core.status().after_loss(e) {
                        self.core.set_status(status);
                    }
                    lost = Some(e);
                }
                Output::SubscriptionNotKept => {
                    warn!("a subscription could not be kept for restoring: the queue is full");
                }
                Output::Acknowledged {
                    completion: Done::Request(tx),
                    result,
                } => {
                    answered = true;
                    let _ = tx.send(result);
                }
                _ => {}
            }
        }
        if answered {
            self.core.room.notify(usize::MAX);
        }
        lost
    }

    /// Starts a task per matching handler.
    fn deliver(&self, message: &Message, routes: &[u64]) {
        let handlers = self.core.handlers_for(routes);
        // With acknowledgments after handlers, the last handler to finish sends it.
        let group = match (self.core.options().ack, message.packet_id) {
            (AckMode::AfterHandlers, Some(id)) if handlers.is_empty() => {
                self.core.ack(id, ReasonCode::Success);
                None
            }
            (AckMode::AfterHandlers, Some(id)) => Some(Arc::new(AckGroup {
                id,
                left: AtomicUsize::new(handlers.len()),
                failed: AtomicBool::new(false),
            })),
            _ => None,
        };
        for handler in handlers {
            let core = self.core.clone();
            let message = message.clone();
            let group = group.clone();
            R::spawn(async move {
                // Acquired in the task, not the driver: the driver never waits on handlers,
                // so a handler that publishes cannot deadlock it.
                let permit = core.limit.acquire_arc().await;
                let topic = message.topic.clone();
                let ok = match run_handler(handler, message).await {
                    Ok(()) => true,
                    Err(HandlerFailure::Error(e)) => {
                        warn!(topic, error = %e, "handler failed");
                        false
                    }
                    Err(HandlerFailure::Panicked) => {
                        warn!(topic, "handler panicked");
                        false
                    }
                };
                if let Some(g) = group {
                    if !ok {
                        g.failed.store(true, Ordering::Relaxed);
                    }
                    if g.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        let rc = if g.failed.load(Ordering::Relaxed) {
                            ReasonCode::UnspecifiedError
                        } else {
                            ReasonCode::Success
                        };
                        core.ack(g.id, rc);
                    }
                }
                drop(permit);
                if core.handler_done() {
                    core.idle.notify(usize::MAX);
                }
            });
        }
    }
}
