//! The client handle, its driver task and handler routing, on smol.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use async_io::Timer;
use bytes::BytesMut;
use event_listener::Event as Signal;
use futures_lite::future;
use mqtt_proto::{Publish, QoS, ReasonCode};
use mqtt_session::engine::{Failure, Message, Output, ReadStatus, Stats};
use mqtt_session::options::{Options, OptionsError, Scheme};
use mqtt_session::runtime::{
    self, ClientError, ConnectError, Core, DEFAULT_PRIORITY, Delivery, Done, Event, HandlerFailure,
    HandlerResult, RouteId, Status, publish_of, run_handler,
};
use mqtt_session::{ConnectionError, Instant};
use smol::lock::Semaphore;
use tracing::{Instrument, debug, info, trace, warn};

use crate::transport::Transport;

struct Shared {
    core: Core<Done>,
    epoch: StdInstant,
    /// Wakes the driver: there is something to send, or the state changed. Capacity 1, so a
    /// wake-up sent while the driver is busy is kept for its next wait.
    wake: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// Wakes publishers waiting for queue room, and `shutdown` waiting for completions.
    room: Signal,
    /// A handler finished and none runs any more.
    idle: Signal,
    limit: Arc<Semaphore>,
    status: Mutex<Status>,
    status_changed: Signal,
}

impl Shared {
    fn now(&self) -> Instant {
        let ms = self.epoch.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> StdInstant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    fn wake(&self) {
        let _ = self.wake.0.try_send(());
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(&self, status: Status) {
        *self.status() = status;
        self.status_changed.notify(usize::MAX);
    }

    /// Waits until `done` holds, re-checking whenever `signal` fires.
    async fn until<T>(&self, signal: &Signal, mut done: impl FnMut() -> Option<T>) -> T {
        loop {
            let listener = signal.listen();
            if let Some(v) = done() {
                return v;
            }
            listener.await;
        }
    }
}

/// Resolves `fut`, or gives `None` after `timeout`.
async fn timeout<T>(timeout: Duration, fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        Timer::after(timeout).await;
        None
    })
    .await
}

/// A cloneable handle to an MQTT client. Its connection runs in a [`Driver`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtt_smol::{Client, Options, QoS};
/// smol::block_on(async {
///     let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
///     client.route("sensors/+/temperature", |msg: mqtt_smol::Message| async move {
///         println!("{} = {:?}", msg.topic, msg.payload);
///     })?;
///     client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?.await?;
///     client.shutdown(std::time::Duration::from_secs(5)).await;
///     Ok(())
/// })
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.shared.core.options();
        f.debug_struct("Client")
            .field("broker", &o.broker)
            .field("client_id", &o.client_id)
            .finish_non_exhaustive()
    }
}

/// The task that owns the connection: run it with `smol::spawn(driver.run()).detach()`.
pub struct Driver {
    shared: Arc<Shared>,
    events: Option<async_channel::Sender<Event>>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl Client {
    /// A client and its driver; nothing connects until the driver runs.
    pub fn new(options: Options) -> Result<(Client, Driver), ClientError> {
        if matches!(options.broker.scheme, Scheme::Ws | Scheme::Wss) {
            return Err(ClientError::Options(OptionsError(
                "runtime-smol does not speak WebSocket: use mqtt:// or mqtts://".into(),
            )));
        }
        let limit = Arc::new(Semaphore::new(options.handler_concurrency));
        let shared = Arc::new(Shared {
            core: Core::new(options)?,
            epoch: StdInstant::now(),
            wake: async_channel::bounded(1),
            room: Signal::new(),
            idle: Signal::new(),
            limit,
            status: Mutex::new(Status::Connecting),
            status_changed: Signal::new(),
        });
        let driver = Driver {
            shared: shared.clone(),
            events: None,
        };
        Ok((Client { shared }, driver))
    }

    /// A client whose driver runs on a detached `smol::spawn` task.
    pub fn spawn(options: Options) -> Result<Client, ClientError> {
        let (client, driver) = Client::new(options)?;
        smol::spawn(driver.run()).detach();
        Ok(client)
    }

    /// The options the client was made with.
    pub fn options(&self) -> &Options {
        self.shared.core.options()
    }

    /// Waits for the outcome of the current connection attempt: connected, refused or
    /// unreachable (the driver keeps retrying after an error).
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), ConnectError> {
        let sh = &self.shared;
        let wait = sh.until(&sh.status_changed, || sh.status().outcome());
        timeout(limit, wait)
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
        let sh = &self.shared;
        sh.until(&sh.room, || match self.try_publish_with(msg, priority) {
            Err(ClientError::QueueFull) => None,
            other => Some(other),
        })
        .await
    }

    /// [`Client::try_publish`] for a full PUBLISH with an eviction priority.
    pub fn try_publish_with(
        &self,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<Delivery, ClientError> {
        let (done, rx) = Done::publish();
        let sh = &self.shared;
        sh.core.publish(sh.now(), msg, priority, done)?;
        trace!(topic = msg.topic, qos = ?msg.qos, bytes = msg.payload.len(), "queued");
        sh.wake();
        Ok(rx)
    }

    /// Subscribes to filters and waits for the broker's answer: one reason code per filter
    /// (the granted QoS, or why it was refused). Offline, the SUBSCRIBE goes out on connect.
    pub async fn subscribe_many(
        &self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let (done, rx) = Done::request();
        let sh = &self.shared;
        sh.core.subscribe(sh.now(), filters, done)?;
        sh.wake();
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
        let sh = &self.shared;
        sh.core.unsubscribe(sh.now(), filters, done)?;
        sh.wake();
        rx.await
    }

    /// Routes every message matching `filter` to `handler` (with every other matching handler)
    /// and subscribes at QoS 1, now or on connect.
    ///
    /// Handlers run concurrently on smol tasks, at most `handler_concurrency` at once; an
    /// error they return, or a panic, is logged and the client goes on. A handler may publish.
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
        let sh = &self.shared;
        let id = sh.core.route(sh.now(), filter, qos, handler)?;
        sh.wake();
        Ok(id)
    }

    /// Stops routing to a handler (the subscription stays).
    pub fn unroute(&self, id: RouteId) -> bool {
        self.shared.core.unroute(id)
    }

    /// A snapshot of the connection state, queue and counters.
    pub fn stats(&self) -> Stats {
        self.shared.core.stats(self.shared.now())
    }

    /// Handlers running now.
    pub fn running_handlers(&self) -> usize {
        self.shared.core.running_handlers()
    }

    /// Ends the session at once: DISCONNECT (if connected), no reconnect; queued messages
    /// fail with [`Failure::Closed`]. Waits for the driver to finish.
    pub async fn disconnect(&self) {
        let sh = &self.shared;
        let mut outs = Vec::new();
        sh.core.engine().disconnect(&mut outs);
        complete(sh, outs);
        sh.wake();
        sh.until(&sh.status_changed, || {
            (*sh.status() == Status::Closed).then_some(())
        })
        .await;
    }

    /// Graceful shutdown: takes no new work, waits up to `timeout` for running handlers and
    /// unacknowledged messages, then disconnects.
    pub async fn shutdown(&self, limit: Duration) {
        let sh = &self.shared;
        sh.core.engine().stop_accepting();
        let drained = async {
            loop {
                let idle = sh.idle.listen();
                let room = sh.room.listen();
                if sh.core.is_idle() {
                    return;
                }
                future::or(idle, room).await;
            }
        };
        if timeout(limit, drained).await.is_none() {
            warn!("shutdown: timed out waiting for handlers and acknowledgments");
        }
        self.disconnect().await;
    }
}

/// Resolves the completions among `outs` and wakes whoever waits for queue room.
fn complete(shared: &Shared, outs: Vec<Output<Done>>) {
    if runtime::complete(outs) {
        shared.room.notify(usize::MAX);
    }
}

impl Driver {
    /// A stream of raw events. Unbounded, so a slow reader never stalls the connection; take it
    /// only if you read it.
    pub fn events(&mut self) -> async_channel::Receiver<Event> {
        let (tx, rx) = async_channel::unbounded();
        self.events = Some(tx);
        rx
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.try_send(event);
        }
    }

    /// Runs the connection until [`Client::disconnect`]: connects, reconnects with back-off,
    /// moves messages.
    pub async fn run(self) {
        let o = self.shared.core.options();
        let span = tracing::info_span!("mqtt", broker = %o.broker, client_id = %o.client_id);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(self) {
        let sh = self.shared.clone();
        let mut rx = BytesMut::with_capacity(64 * 1024);
        let mut tx = vec![0u8; 64 * 1024];
        loop {
            let at = {
                let e = sh.core.engine();
                if e.is_closed() {
                    break;
                }
                e.reconnect_at()
            };
            if let Some(at) = at {
                // Until the attempt is due, or a disconnect() while waiting.
                let due = async {
                    Timer::at(sh.deadline(at)).await;
                };
                future::or(due, async {
                    let _ = sh.wake.1.recv().await;
                })
                .await;
                let e = sh.core.engine();
                if e.is_closed() || e.reconnect_at().is_some_and(|t| t > sh.now()) {
                    continue;
                }
            }
            debug!("connecting");
            let limit = sh.core.options().connect_timeout;
            let mut transport = match timeout(limit, Transport::connect(sh.core.options())).await {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    self.failed(ConnectError::Unreachable(e.to_string()));
                    continue;
                }
                None => {
                    let why = format!("no connection within {limit:?}");
                    self.failed(ConnectError::Unreachable(why));
                    continue;
                }
            };
            let start = sh.core.engine().start(sh.now(), &mut tx);
            if let Err(e) = start {
                warn!(error = %e, "cannot encode CONNECT");
                self.failed(ConnectError::Unreachable(e.to_string()));
                continue;
            }
            let written = transport.write_all(&tx).await;
            // CONNECT is written: the transmit buffer goes back to its working size.
            tx.resize(tx.capacity().max(64 * 1024), 0);
            if let Err(e) = written {
                self.failed(ConnectError::Unreachable(e.to_string()));
                continue;
            }
            let error = self.connection(&mut transport, &mut rx, &mut tx).await;
            let _ = timeout(Duration::from_secs(1), transport.shutdown()).await;
            rx.clear();
            let mut outs = Vec::new();
            let delay = sh.core.engine().transport_closed(sh.now(), &mut outs);
            self.dispatch(outs);
            if let Some(e) = error {
                if !sh.core.engine().is_closed() {
                    info!(error = %e, retry_in = ?delay, "connection lost");
                }
                self.emit(Event::Disconnected(e));
            }
        }
        info!("client closed");
        let mut outs = Vec::new();
        sh.core.engine().transport_closed(sh.now(), &mut outs);
        self.dispatch(outs);
        sh.set_status(Status::Closed);
    }

    /// An attempt failed before CONNACK: report it and schedule the next.
    fn failed(&self, error: ConnectError) {
        let sh = &self.shared;
        let mut outs = Vec::new();
        let delay = sh.core.engine().transport_closed(sh.now(), &mut outs);
        self.dispatch(outs);
        warn!(error = %error, retry_in = ?delay, "connect failed");
        self.emit(Event::ConnectFailed(error.to_string()));
        sh.set_status(Status::Failed(error));
    }

    /// Writes everything the engine has due, in as few writes as the buffer allows; gives the
    /// connection's end if one came up, or `Err` if the transport failed.
    async fn flush(
        &self,
        t: &mut Transport,
        tx: &mut Vec<u8>,
        lost: &mut Option<ConnectionError>,
    ) -> Result<(), ()> {
        let sh = &self.shared;
        loop {
            let mut outs = Vec::new();
            let n = sh.core.engine().transmit(sh.now(), tx, &mut outs);
            *lost = lost.or(self.dispatch(outs));
            if n == 0 {
                return Ok(());
            }
            t.write_all(&tx[..n]).await.map_err(|_| ())?;
        }
    }

    /// Moves packets until the connection ends; returns why it ended.
    async fn connection(
        &self,
        t: &mut Transport,
        rx: &mut BytesMut,
        tx: &mut Vec<u8>,
    ) -> Option<ConnectionError> {
        let sh = &self.shared;
        let mut lost = None;
        loop {
            if self.flush(t, tx, &mut lost).await.is_err() {
                return Some(lost.unwrap_or(ConnectionError::TransportClosed));
            }
            if lost.is_some() || sh.core.engine().is_closed() {
                return lost;
            }
            let deadline = sh.core.engine().poll_timeout().map(|at| sh.deadline(at));
            let woken = async {
                let _ = sh.wake.1.recv().await;
                Wait::Woken
            };
            let timer = async {
                match deadline {
                    Some(at) => {
                        Timer::at(at).await;
                    }
                    None => future::pending::<()>().await,
                }
                Wait::Timeout
            };
            let read = async { Wait::Read(t.read(rx).await) };
            let waited = future::or(read, future::or(woken, timer)).await;
            match waited {
                Wait::Read(Ok(0) | Err(_)) => return Some(ConnectionError::TransportClosed),
                Wait::Read(Ok(_)) => loop {
                    let mut outs = Vec::new();
                    let status = sh.core.engine().handle_read(sh.now(), rx, &mut outs);
                    lost = lost.or(self.dispatch(outs));
                    match status {
                        ReadStatus::NeedMore(n) => {
                            rx.reserve(n.max(4096));
                            break;
                        }
                        ReadStatus::Closed => break,
                        ReadStatus::TransmitFirst => {
                            if self.flush(t, tx, &mut lost).await.is_err() {
                                return Some(ConnectionError::TransportClosed);
                            }
                        }
                    }
                },
                Wait::Woken => {}
                Wait::Timeout => {
                    let mut outs = Vec::new();
                    sh.core.engine().handle_timeout(sh.now(), &mut outs);
                    lost = lost.or(self.dispatch(outs));
                }
            }
        }
    }

    /// Acts on outputs outside the engine lock; returns the connection's end, if one is among
    /// them.
    fn dispatch(&self, outs: Vec<Output<Done>>) -> Option<ConnectionError> {
        if outs.is_empty() {
            return None;
        }
        let sh = &self.shared;
        let mut lost = None;
        let mut rest = Vec::new();
        for out in outs {
            match out {
                Output::Connected { session_present } => {
                    info!(session_present, "connected");
                    sh.set_status(Status::Connected);
                    self.emit(Event::Connected { session_present });
                }
                Output::Message { message, routes } => {
                    trace!(topic = %message.topic, bytes = message.payload.len(), "received");
                    self.deliver(&message, &routes);
                    self.emit(Event::Message(message));
                }
                Output::ConnectionLost(e) => {
                    if let ConnectionError::Refused(_) = e {
                        warn!(error = %e, "connection refused");
                    }
                    let next = sh.status().after_loss(e);
                    if let Some(status) = next {
                        sh.set_status(status);
                    }
                    lost = Some(e);
                }
                Output::SubscriptionNotKept => {
                    warn!("a subscription could not be kept for restoring: the queue is full");
                }
                other => rest.push(other),
            }
        }
        complete(sh, rest);
        lost
    }

    /// Starts a task per matching handler.
    fn deliver(&self, message: &Message, routes: &[u64]) {
        for handler in self.shared.core.handlers_for(routes) {
            let shared = self.shared.clone();
            let message = message.clone();
            smol::spawn(async move {
                // Acquired in the task, not the driver: the driver never waits on handlers,
                // so a handler that publishes cannot deadlock it.
                let permit = shared.limit.acquire_arc().await;
                let topic = message.topic.clone();
                match run_handler(handler, message).await {
                    Ok(()) => {}
                    Err(HandlerFailure::Error(e)) => warn!(topic, error = %e, "handler failed"),
                    Err(HandlerFailure::Panicked) => warn!(topic, "handler panicked"),
                }
                drop(permit);
                if shared.core.handler_done() {
                    shared.idle.notify(usize::MAX);
                }
            })
            .detach();
        }
    }
}

/// What ended a wait of the connection loop.
enum Wait {
    Read(std::io::Result<usize>),
    Woken,
    Timeout,
}
