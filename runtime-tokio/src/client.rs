//! The client handle, its driver task and handler routing.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use mqtt_proto::{Publish, QoS, ReasonCode};
use mqtt_session::engine::{Engine, Failure, Output, ReadStatus, Stats};
use mqtt_session::options::Options;
use mqtt_session::runtime::{self, Core, Done, HandlerFailure, Status, publish_of, run_handler};
use mqtt_session::{ConnectionError, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tracing::{Instrument, debug, info, trace, warn};

use crate::transport::Transport;

pub use mqtt_session::engine::Message;
pub use mqtt_session::runtime::{
    ClientError, ConnectError, DEFAULT_PRIORITY, Delivery, Event, HandlerResult, RouteId,
};

struct Shared {
    core: Core<Done>,
    epoch: tokio::time::Instant,
    /// Wakes the driver: there is something to send, or the state changed.
    wake: Notify,
    /// Wakes publishers waiting for queue room, and `shutdown` waiting for completions.
    room: Notify,
    limit: Arc<Semaphore>,
    idle: Notify,
    status: watch::Receiver<Status>,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine<Done>> {
        self.core.engine()
    }

    fn now(&self) -> Instant {
        let ms = self.epoch.elapsed().as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }
}

/// A cloneable handle to an MQTT client. Its connection runs in a [`Driver`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtt_tokio::{Client, Options, QoS};
/// let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
/// client.route("sensors/+/temperature", |msg: mqtt_tokio::Message| async move {
///     println!("{} = {:?}", msg.topic, msg.payload);
/// })?;
/// client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?.await?;
/// client.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.shared.core.options().broker)
            .field("client_id", &self.shared.core.options().client_id)
            .finish_non_exhaustive()
    }
}

/// The task that owns the connection: run it with `tokio::spawn(driver.run())`.
pub struct Driver {
    shared: Arc<Shared>,
    events: Option<mpsc::UnboundedSender<Event>>,
    status: watch::Sender<Status>,
}

impl Client {
    /// A client and its driver; nothing connects until the driver runs.
    pub fn new(options: Options) -> Result<(Client, Driver), ClientError> {
        let epoch = tokio::time::Instant::now();
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let limit = Arc::new(Semaphore::new(options.handler_concurrency));
        let shared = Arc::new(Shared {
            core: Core::new(options)?,
            limit,
            epoch,
            wake: Notify::new(),
            room: Notify::new(),
            idle: Notify::new(),
            status: status_rx,
        });
        let driver = Driver {
            shared: shared.clone(),
            events: None,
            status: status_tx,
        };
        Ok((Client { shared }, driver))
    }

    /// A client whose driver runs on a spawned tokio task.
    pub fn spawn(options: Options) -> Result<Client, ClientError> {
        let (client, driver) = Client::new(options)?;
        tokio::spawn(driver.run());
        Ok(client)
    }

    /// The options the client was made with.
    pub fn options(&self) -> &Options {
        self.shared.core.options()
    }

    /// Waits for the outcome of the current connection attempt: connected, refused or
    /// unreachable (the driver keeps retrying after an error).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ConnectError> {
        let mut status = self.shared.status.clone();
        let wait = async {
            loop {
                if let Some(outcome) = status.borrow_and_update().outcome() {
                    return outcome;
                }
                if status.changed().await.is_err() {
                    return Err(ConnectError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
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
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_publish_with(msg, priority) {
                Err(ClientError::QueueFull) => room.await,
                other => return other,
            }
        }
    }

    /// [`Client::try_publish`] for a full PUBLISH with an eviction priority.
    pub fn try_publish_with(
        &self,
        msg: &Publish<'_>,
        priority: u8,
    ) -> Result<Delivery, ClientError> {
        let (done, rx) = Done::publish();
        let now = self.shared.now();
        self.shared.core.publish(now, msg, priority, done)?;
        trace!(topic = msg.topic, qos = ?msg.qos, bytes = msg.payload.len(), "queued");
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Subscribes to filters and waits for the broker's answer: one reason code per filter
    /// (the granted QoS, or why it was refused). Offline, the SUBSCRIBE goes out on connect.
    pub async fn subscribe_many(
        &self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let (done, rx) = Done::request();
        let now = self.shared.now();
        self.shared.core.subscribe(now, filters, done)?;
        self.shared.wake.notify_one();
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
        let now = self.shared.now();
        self.shared.core.unsubscribe(now, filters, done)?;
        self.shared.wake.notify_one();
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
        let now = self.shared.now();
        let id = self.shared.core.route(now, filter, qos, handler)?;
        self.shared.wake.notify_one();
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
        let mut outs = Vec::new();
        self.shared.engine().disconnect(&mut outs);
        complete(&self.shared, outs);
        self.shared.wake.notify_one();
        let mut status = self.shared.status.clone();
        let _ = status.wait_for(|s| matches!(s, Status::Closed)).await;
    }

    /// Graceful shutdown: takes no new work, waits up to `timeout` for running handlers and
    /// unacknowledged messages, then disconnects.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shared.engine().stop_accepting();
        let drained = async {
            loop {
                let idle = self.shared.idle.notified();
                let room = self.shared.room.notified();
                tokio::pin!(idle, room);
                idle.as_mut().enable();
                room.as_mut().enable();
                if self.shared.core.is_idle() {
                    return;
                }
                tokio::select! {
                    _ = idle => {}
                    _ = room => {}
                }
            }
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            warn!("shutdown: timed out waiting for handlers and acknowledgments");
        }
        self.disconnect().await;
    }
}

/// Resolves the completions among `outs` and wakes whoever waits for queue room.
fn complete(shared: &Shared, outs: Vec<Output<Done>>) {
    if runtime::complete(outs) {
        shared.room.notify_waiters();
    }
}

impl Driver {
    /// A stream of raw events. Unbounded, so a slow reader never stalls the connection; take it
    /// only if you read it.
    pub fn events(&mut self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(tx);
        rx
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Runs the connection until [`Client::disconnect`]: connects, reconnects with back-off,
    /// moves messages.
    pub async fn run(self) {
        let span = tracing::info_span!(
            "mqtt",
            broker = %self.shared.core.options().broker,
            client_id = %self.shared.core.options().client_id
        );
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(self) {
        let sh = self.shared.clone();
        let mut rx = BytesMut::with_capacity(64 * 1024);
        let mut tx = vec![0u8; 64 * 1024];
        loop {
            let at = {
                let e = sh.engine();
                if e.is_closed() {
                    break;
                }
                e.reconnect_at()
            };
            if let Some(at) = at {
                tokio::select! {
                    _ = tokio::time::sleep_until(sh.deadline(at)) => {}
                    // A disconnect() while waiting.
                    _ = sh.wake.notified() => continue,
                }
                if sh.engine().reconnect_at().is_some_and(|t| t > sh.now()) {
                    continue;
                }
            }
            debug!("connecting");
            let connect = tokio::time::timeout(
                sh.core.options().connect_timeout,
                Transport::connect(sh.core.options()),
            );
            let mut transport = match connect.await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    self.failed(ConnectError::Unreachable(e.to_string()));
                    continue;
                }
                Err(_) => {
                    self.failed(ConnectError::Unreachable(format!(
                        "no connection within {:?}",
                        sh.core.options().connect_timeout
                    )));
                    continue;
                }
            };
            let start = sh.engine().start(sh.now(), &mut tx);
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
            let _ = tokio::time::timeout(Duration::from_secs(1), transport.shutdown()).await;
            rx.clear();
            let mut outs = Vec::new();
            let delay = sh.engine().transport_closed(sh.now(), &mut outs);
            self.dispatch(outs);
            if let Some(e) = error {
                if !sh.engine().is_closed() {
                    info!(error = %e, retry_in = ?delay, "connection lost");
                }
                self.emit(Event::Disconnected(e));
            }
        }
        info!("client closed");
        let mut outs = Vec::new();
        sh.engine().transport_closed(sh.now(), &mut outs);
        self.dispatch(outs);
        let _ = self.status.send(Status::Closed);
    }

    /// An attempt failed before CONNACK: report it and schedule the next.
    fn failed(&self, error: ConnectError) {
        let sh = &self.shared;
        let mut outs = Vec::new();
        let delay = sh.engine().transport_closed(sh.now(), &mut outs);
        self.dispatch(outs);
        warn!(error = %error, retry_in = ?delay, "connect failed");
        self.emit(Event::ConnectFailed(error.to_string()));
        let _ = self.status.send(Status::Failed(error));
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
            // Everything due goes out first, in as few writes as the buffer allows.
            loop {
                let mut outs = Vec::new();
                let n = sh.engine().transmit(sh.now(), tx, &mut outs);
                lost = lost.or(self.dispatch(outs));
                if n == 0 {
                    break;
                }
                if t.write_all(&tx[..n]).await.is_err() {
                    return Some(lost.unwrap_or(ConnectionError::TransportClosed));
                }
            }
            if lost.is_some() || sh.engine().is_closed() {
                return lost;
            }
            let deadline = sh.engine().poll_timeout().map(|at| sh.deadline(at));
            tokio::select! {
                read = t.read(rx) => match read {
                    Ok(0) | Err(_) => return Some(ConnectionError::TransportClosed),
                    Ok(_) => loop {
                        let mut outs = Vec::new();
                        let status = sh.engine().handle_read(sh.now(), rx, &mut outs);
                        lost = lost.or(self.dispatch(outs));
                        match status {
                            ReadStatus::NeedMore(n) => {
                                rx.reserve(n.max(4096));
                                break;
                            }
                            ReadStatus::Closed => break,
                            ReadStatus::TransmitFirst => {
                                let mut outs = Vec::new();
                                let n = sh.engine().transmit(sh.now(), tx, &mut outs);
                                lost = lost.or(self.dispatch(outs));
                                if n > 0 && t.write_all(&tx[..n]).await.is_err() {
                                    return Some(ConnectionError::TransportClosed);
                                }
                            }
                        }
                    },
                },
                _ = sh.wake.notified() => {
                    // Let publishers running beside us queue more, so one write carries many
                    // messages (fewer system calls here and at the broker).
                    tokio::task::yield_now().await;
                }
                _ = sleep_until(deadline) => {
                    let mut outs = Vec::new();
                    sh.engine().handle_timeout(sh.now(), &mut outs);
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
        let mut lost = None;
        let mut rest = Vec::new();
        for out in outs {
            match out {
                Output::Connected { session_present } => {
                    info!(session_present, "connected");
                    let _ = self.status.send(Status::Connected);
                    self.emit(Event::Connected { session_present });
                }
                Output::Message { message, routes } => {
                    trace!(topic = %message.topic, payload = ?message.payload, "received");
                    self.deliver(&message, &routes);
                    self.emit(Event::Message(message));
                }
                Output::ConnectionLost(e) => {
                    if let ConnectionError::Refused(_) = e {
                        warn!(error = %e, "connection refused");
                    }
                    let next = self.shared.status.borrow().after_loss(e);
                    if let Some(status) = next {
                        let _ = self.status.send(status);
                    }
                    lost = Some(e);
                }
                Output::SubscriptionNotKept => {
                    warn!("a subscription could not be kept for restoring: the queue is full");
                }
                other => rest.push(other),
            }
        }
        complete(&self.shared, rest);
        lost
    }

    /// Starts a task per matching handler.
    fn deliver(&self, message: &Message, routes: &[u64]) {
        let handlers = self.shared.core.handlers_for(routes);
        for handler in handlers {
            let shared = self.shared.clone();
            let message = message.clone();
            tokio::spawn(async move {
                // Acquired in the task, not the driver: the driver never waits on handlers,
                // so a handler that publishes cannot deadlock it.
                let permit = shared.limit.clone().acquire_owned().await;
                let topic = message.topic.clone();
                match run_handler(handler, message).await {
                    Ok(()) => {}
                    Err(HandlerFailure::Error(e)) => warn!(topic, error = %e, "handler failed"),
                    Err(HandlerFailure::Panicked) => warn!(topic, "handler panicked"),
                }
                drop(permit);
                if shared.core.handler_done() {
                    shared.idle.notify_waiters();
                }
            });
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
