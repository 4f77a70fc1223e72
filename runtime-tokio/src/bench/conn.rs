//! One benchmark connection: the sans-IO session core driven straight over the transport, one
//! task per connection, no handle, no channels, small buffers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mqtt_client::Options;
use mqtt_proto::{EncodeError, Publish, QoS, SubscriptionOptions, TopicFilter};
use mqtt_session::store::Heap;
use mqtt_session::{Config, ConnectOptions, Error, Event, Notice, Read, Session};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::payload::{Clock, Header};
use super::stats::{Counters, Receiver};
/// The transport of one bench connection: TCP, TLS or WebSocket on tokio.
type Transport =
    mqtt_client::transport::Transport<tokio_util::compat::Compat<tokio::net::TcpStream>>;

/// Received QoS 2 messages a connection tracks at once; the CONNECT announces fewer (the
/// options' Receive Maximum), leaving room for brokers that overshoot it.
const RX: usize = 256;

/// The session core of one benchmark connection.
type Core = Session<Heap, RX>;

/// What one publishing connection sends.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// Topic name.
    pub topic: String,
    /// Index in the header.
    pub publisher: u32,
    /// Messages to send; `None`: until the run's duration is over.
    pub count: Option<u64>,
    /// Time between messages (fixed rate); `None`: as fast as the window allows.
    pub interval_ns: Option<u64>,
    /// Where in the interval this publisher's schedule starts, so publishers do not fire
    /// together.
    pub offset_ns: u64,
}

/// One connection of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Client identifier.
    pub client_id: String,
    /// The connection's place in the start order (for `conn` pacing).
    pub order: u64,
    /// What it publishes.
    pub publish: Option<PubPlan>,
    /// The filter it subscribes to.
    pub subscribe: Option<String>,
}

/// What every connection shares.
pub struct Ctx {
    /// Broker, TLS and credentials.
    pub options: Options,
    /// The session configuration (inflight window, keep-alive, version).
    pub config: Config,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size (at least the header).
    pub size: usize,
    /// This run's random id, in every header.
    pub run: u32,
    /// The clock of every timestamp.
    pub clock: Clock,
    /// The counters.
    pub counters: Counters,
    /// Limits connection attempts in progress at once.
    pub gate: Semaphore,
    /// Time between connection starts (`conn --rate`), from `start_ns`.
    pub connect_interval_ns: Option<u64>,
    /// When connecting started.
    pub start_ns: u64,
    /// Messages a publisher has outstanding at most (queued in its core or in flight).
    pub window: usize,
    /// When publishing started (set before the phase turns to running).
    pub run_start_ns: AtomicU64,
    /// Latencies of messages due before this are not recorded (the warm-up).
    pub measure_from_ns: AtomicU64,
    /// How long publishers publish when they have no count.
    pub publish_for: Option<Duration>,
    /// Messages each subscriber waits for (scenario `sub`).
    pub sub_count: Option<u64>,
    /// Whether a failed connection stops the run (all but `conn`).
    pub abort_on_error: bool,
    /// Set when a connection failed and the run must stop.
    pub aborted: AtomicBool,
    /// Wakes the coordinator on abort.
    pub abort_notify: Notify,
    /// Wakes paced publishers when a message is due (finer than tokio's timer).
    pub pacer: Option<super::pacer::Pacer>,
    /// Cancelled when every connection is up: publishers start.
    pub started: CancellationToken,
    /// Cancelled when the run ends: every connection disconnects.
    pub stopped: CancellationToken,
}

impl Ctx {
    fn fail(&self, msg: String) {
        self.counters.error(msg);
        if self.abort_on_error {
            self.aborted.store(true, Relaxed);
            self.abort_notify.notify_one();
        }
    }
}

/// Why a connection ended early.
enum Failure {
    /// It was never established.
    Connect(String),
    /// It was lost after being established.
    Lost(String),
}

/// Runs one connection until the run stops (or it fails), accounting into the counters.
pub async fn run(ctx: Arc<Ctx>, plan: Plan) {
    match connection(&ctx, &plan).await {
        Ok(()) => {}
        Err(Failure::Connect(e)) => {
            ctx.counters.connect_errors.fetch_add(1, Relaxed);
            ctx.fail(format!("{}: {e}", plan.client_id));
        }
        Err(Failure::Lost(e)) => {
            ctx.counters.lost_connections.fetch_add(1, Relaxed);
            ctx.fail(format!("{}: connection lost: {e}", plan.client_id));
        }
    }
}

/// The socket, the core and their buffers.
struct Link {
    t: Transport,
    s: Core,
    rx: BytesMut,
    tx: Vec<u8>,
    /// Bytes of `tx` encoded and not written yet.
    staged: usize,
}

/// A publisher's progress.
struct Publishing<'a> {
    plan: &'a PubPlan,
    payload: Vec<u8>,
    next: u64,
    outstanding: usize,
    exhausted: bool,
    reported: bool,
    /// Completions not yet added to the shared counters (added once per loop round, not
    /// once per message: the counters are shared by every thread).
    completed: u64,
}

impl Publishing<'_> {
    /// Adds what this publisher completed since the last call to the shared counters.
    fn commit(&mut self, ctx: &Ctx) {
        if self.completed > 0 {
            let c = &ctx.counters;
            c.completed.fetch_add(self.completed, Relaxed);
            c.last_completed_ns.fetch_max(ctx.clock.now_ns(), Relaxed);
            self.completed = 0;
        }
    }
}

async fn connection(ctx: &Ctx, plan: &Plan) -> Result<(), Failure> {
    if let Some(iv) = ctx.connect_interval_ns {
        let at = ctx.start_ns + plan.order.saturating_mul(iv);
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.clock.at_ns(at)) => {}
            _ = ctx.stopped.cancelled() => return Ok(()),
        }
    }
    let started;
    let mut link = {
        let _permit = ctx.gate.acquire().await;
        // Waiting for the gate is the generator's own queue, not the broker's latency.
        started = ctx.clock.now_ns();
        tokio::select! {
            link = open(ctx, plan) => link?,
            _ = ctx.stopped.cancelled() => return Ok(()),
        }
    };
    let connected = ctx.clock.now_ns();
    let c = &ctx.counters;
    c.connect_latency
        .record(&[connected.saturating_sub(started) / 1000]);
    c.connected.fetch_add(1, Relaxed);
    c.last_connected_ns.fetch_max(connected, Relaxed);

    let mut receiver = plan.subscribe.as_ref().map(|_| Receiver::default());
    let mut publishing = plan.publish.as_ref().map(|p| {
        let mut payload = vec![0u8; ctx.size];
        // A recognisable filler after the header, different per publisher.
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(p.publisher as u8);
        }
        Publishing {
            plan: p,
            payload,
            next: 0,
            outstanding: 0,
            exhausted: false,
            reported: false,
            completed: 0,
        }
    });
    let result = drive(ctx, &mut link, &mut publishing, &mut receiver).await;
    if let Some(r) = &mut receiver {
        r.finish(c);
    }
    if let Some(p) = &mut publishing {
        p.commit(ctx);
    }
    if result.is_ok() {
        link.s.disconnect(mqtt_proto::ReasonCode::Success);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = link.flush(ctx, &mut publishing).await;
            link.t.shutdown().await;
        })
        .await;
    }
    result
}

/// Opens the transport, sends CONNECT, waits for CONNACK and, for a subscriber, SUBACK.
/// The link is boxed: the core is 5 KB, and every state of the connection's future that held
/// it inline would carry its own room for it (a 14 KB task instead of 1.3 KB).
async fn open(ctx: &Ctx, plan: &Plan) -> Result<Box<Link>, Failure> {
    let o = &ctx.options;
    let fail = |e: String| Failure::Connect(e);
    // Boxed: the TLS and WebSocket handshakes are large futures, only needed while connecting.
    let t = match tokio::time::timeout(
        o.connect_timeout,
        Box::pin(Transport::connect::<crate::Tokio>(o)),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(fail(format!("cannot reach {}: {e}", o.broker))),
        Err(_) => {
            return Err(fail(format!(
                "cannot reach {}: no connection within {:?}",
                o.broker, o.connect_timeout
            )));
        }
    };
    // The store holds the window's messages, the SUBSCRIBE and the kept subscription.
    let packet = ctx.size + plan.publish.as_ref().map_or(0, |p| p.topic.len()) + 32;
    let filter = plan.subscribe.as_ref().map_or(0, |f| f.len() + 32);
    // A connection that only subscribes (or only holds) needs no room for publishes: at
    // 10 000 connections every kilobyte here is 10 MB.
    let (slots, publishes) = match plan.publish {
        Some(_) => (ctx.window + 4, ctx.window + 1),
        None => (4, 0),
    };
    let bytes = publishes * packet + 2 * filter + 64;
    let mut link = Box::new(Link {
        t,
        s: Core::with_backing(ctx.config, Heap::new(slots, bytes)),
        rx: BytesMut::with_capacity(256),
        staged: 0,
        tx: vec![
            0u8;
            if plan.publish.is_some() {
                (packet * 8).clamp(512, 64 * 1024)
            } else {
                512
            }
        ],
    });
    let password = o.effective_password().map(str::as_bytes);
    let opts = ConnectOptions {
        client_id: &plan.client_id,
        username: o.effective_username(),
        password,
        ..ConnectOptions::default()
    };
    let now = ctx.clock.session_now();
    let n = loop {
        match link.s.connect(now, &opts, &mut link.tx) {
            Ok(n) => break n,
            Err(Error::Encode(EncodeError::BufferTooSmall { needed }))
                if needed > link.tx.len() =>
            {
                link.tx.resize(needed, 0);
            }
            Err(e) => return Err(fail(format!("cannot encode CONNECT: {e}"))),
        }
    };
    let write = link.t.write_all(link.tx.get(..n).unwrap_or_default()).await;
    write.map_err(|e| fail(format!("cannot send CONNECT: {e}")))?;

    let mut subscribed = plan.subscribe.is_none();
    let mut connected = false;
    let deadline = tokio::time::Instant::now() + o.connect_timeout + o.response_timeout;
    while !(connected && subscribed) {
        let read = tokio::time::timeout_at(deadline, link.t.read(&mut link.rx)).await;
        match read {
            Ok(Ok(0)) => {
                // mosquitto closes without CONNACK for some refusals; the core may know why.
                link.s.handle_disconnect(ctx.clock.session_now());
                return Err(fail(lost_reason(
                    &mut link.s,
                    "the broker closed the connection",
                )));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(fail(format!("connection failed: {e}"))),
            Err(_) => {
                return Err(fail(format!(
                    "no answer from {} within {:?}",
                    o.broker,
                    o.connect_timeout + o.response_timeout
                )));
            }
        }
        loop {
            let now = ctx.clock.session_now();
            let (used, ev) = match link.s.handle_read(now, &link.rx) {
                Read::Packet { used, event } => (used, event.and_then(Early::of)),
                Read::NeedMore(n) => {
                    link.rx.reserve(n);
                    break;
                }
                Read::TransmitFirst => {
                    link.flush(ctx, &mut None)
                        .await
                        .map_err(|f| fail(f.text()))?;
                    continue;
                }
                Read::Closed => {
                    return Err(fail(lost_reason(&mut link.s, "connection closed")));
                }
            };
            link.rx.advance(used);
            match ev {
                Some(Early::Connected) => {
                    connected = true;
                    if let Some(f) = &plan.subscribe {
                        let filter = TopicFilter::new(f)
                            .map_err(|e| fail(format!("topic filter {f:?}: {e}")))?;
                        let sub = [(filter, SubscriptionOptions::new(ctx.qos))];
                        link.s
                            .subscribe(now, &sub, &[])
                            .map_err(|e| fail(format!("cannot subscribe: {e}")))?;
                        link.flush(ctx, &mut None)
                            .await
                            .map_err(|f| fail(f.text()))?;
                    }
                }
                Some(Early::Subscribed(Some(code))) => {
                    return Err(fail(format!(
                        "subscription to {:?} refused: {code}",
                        plan.subscribe.as_deref().unwrap_or_default()
                    )));
                }
                Some(Early::Subscribed(None)) => subscribed = true,
                None => {}
            }
        }
    }
    Ok(link)
}

/// What the opening handshake cares about, copied out of the core's borrow.
enum Early {
    Connected,
    /// SUBACK: the first refusal among its codes, if any.
    Subscribed(Option<mqtt_proto::ReasonCode>),
}

impl Early {
    fn of(e: Event<'_>) -> Option<Early> {
        match e {
            Event::Connected { .. } => Some(Early::Connected),
            Event::Subscribed { reason_codes, .. } => Some(Early::Subscribed(
                reason_codes.iter().find(|c| c.is_error()),
            )),
            _ => None,
        }
    }
}

/// Why the core says the connection ended, or `default`.
fn lost_reason(s: &mut Core, default: &str) -> String {
    while let Some(n) = s.poll_notice() {
        if let Notice::ConnectionLost(e) = n
            && e != mqtt_session::ConnectionError::TransportClosed
        {
            return e.to_string();
        }
    }
    default.to_string()
}

impl Failure {
    fn text(self) -> String {
        match self {
            Failure::Connect(e) | Failure::Lost(e) => e,
        }
    }
}

/// The steady state: publish what is due, read what arrives, keep the connection alive,
/// until the run stops.
async fn drive(
    ctx: &Ctx,
    link: &mut Link,
    publishing: &mut Option<Publishing<'_>>,
    receiver: &mut Option<Receiver>,
) -> Result<(), Failure> {
    let c = &ctx.counters;
    let mut sub_reported = false;
    // The futures of the loop live across its rounds: made once, not once per message (at
    // low rates per connection, each round is one message, and their setup showed in
    // profiles).
    let stopped = ctx.stopped.clone().cancelled_owned();
    let started = ctx.started.clone().cancelled_owned();
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(stopped, started, sleep);
    let mut armed = None;
    // With a pacer, it wakes the publisher when a message is due; tokio's timer only for
    // the keep-alive.
    let mut pace = ctx.pacer.as_ref().map(super::pacer::Pacer::sleep);
    let mut pace_armed = None;
    loop {
        if ctx.stopped.is_cancelled() {
            return Ok(());
        }
        let running = ctx.started.is_cancelled();
        let mut next_due = None;
        if running && let Some(p) = publishing.as_mut() {
            next_due = publish_due(ctx, &mut link.s, p)?;
        }
        link.flush(ctx, publishing).await?;
        if let Some(p) = publishing.as_mut() {
            p.commit(ctx);
        }
        if let Some(r) = receiver.as_mut() {
            r.commit(c);
        }
        if let Some(p) = publishing.as_mut()
            && p.exhausted
            && p.outstanding == 0
            && !p.reported
        {
            p.reported = true;
            c.publishers_done.fetch_add(1, Relaxed);
        }
        if let (Some(r), Some(want)) = (receiver.as_ref(), ctx.sub_count)
            && !sub_reported
            && r.unique >= want
        {
            sub_reported = true;
            c.subscribers_done.fetch_add(1, Relaxed);
        }
        // Room in the window and nothing scheduled later: go round again at once (QoS 0
        // publishes complete when written, so the flush may just have made room).
        let room = running
            && publishing
                .as_ref()
                .is_some_and(|p| !p.exhausted && p.outstanding < ctx.window);
        let due_now = room && matches!(next_due, None | Some(0));
        let timeout = link.s.poll_timeout();
        let mut due = next_due.filter(|&d| d > 0).map(|d| ctx.clock.at_ns(d));
        if let Some(pace) = pace.as_mut() {
            let at = due.take().filter(|_| !due_now);
            if at != pace_armed {
                if let Some(at) = at {
                    pace.reset(at.into_std());
                }
                pace_armed = at;
            }
        }
        let wake = match (due, timeout.map(|at| ctx.clock.at_session(at))) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if wake != armed {
            if let Some(at) = wake {
                sleep.as_mut().reset(at);
            }
            armed = wake;
        }
        tokio::select! {
            biased;
            read = link.t.read(&mut link.rx) => match read {
                Ok(0) => return Err(Failure::Lost("the broker closed the connection".into())),
                Err(e) => return Err(Failure::Lost(e.to_string())),
                Ok(_) => link.read_packets(ctx, publishing, receiver).await?,
            },
            _ = &mut stopped => return Ok(()),
            _ = &mut started, if !running => {}
            _ = std::future::ready(()), if due_now => {}
            _ = &mut sleep, if armed.is_some() && !due_now => armed = None,
            () = std::future::poll_fn(|cx| match pace.as_mut() {
                Some(p) => std::pin::Pin::new(p).poll(cx),
                None => std::task::Poll::Pending,
            }), if pace_armed.is_some() && !due_now => pace_armed = None,
        }
        if let Some(at) = timeout {
            let now = ctx.clock.session_now();
            if at <= now {
                link.s.handle_timeout(now);
            }
        }
    }
}

/// Hands the core every message that is due and fits the window. Returns when the next one
/// is due: `Some(0)` for "now" (the window has room and the publisher is unpaced), `None`
/// when nothing is due until acknowledgments arrive or the publisher is done.
fn publish_due(ctx: &Ctx, s: &mut Core, p: &mut Publishing<'_>) -> Result<Option<u64>, Failure> {
    let c = &ctx.counters;
    let run_start = ctx.run_start_ns.load(Relaxed);
    let measure_from = ctx.measure_from_ns.load(Relaxed);
    let end = ctx
        .publish_for
        .map(|d| run_start.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    let now_ns = ctx.clock.now_ns();
    let now = ctx.clock.session_now();
    let size = u64::try_from(p.payload.len()).unwrap_or(0);
    // A burst is bounded so that reading goes on between them.
    let mut burst = ctx.window.min(256);
    let first = p.next;
    let mut measured = 0;
    let result = loop {
        if p.exhausted || p.outstanding >= ctx.window {
            break Ok(None);
        }
        if p.plan.count.is_some_and(|n| p.next >= n) {
            p.exhausted = true;
            break Ok(None);
        }
        let scheduled = match p.plan.interval_ns {
            Some(iv) => run_start + p.plan.offset_ns + p.next.saturating_mul(iv),
            None => now_ns,
        };
        if end.is_some_and(|end| scheduled >= end) {
            p.exhausted = true;
            break Ok(None);
        }
        if scheduled > now_ns {
            break Ok(Some(scheduled));
        }
        if burst == 0 {
            break Ok(Some(0));
        }
        Header {
            run: ctx.run,
            publisher: p.plan.publisher,
            seq: p.next,
            scheduled_ns: scheduled,
        }
        .write(&mut p.payload);
        let msg = Publish {
            qos: ctx.qos,
            ..Publish::new(&p.plan.topic, &p.payload)
        };
        if let Err(e) = s.publish(now, &msg, 5) {
            break Err(Failure::Lost(format!(
                "cannot publish to {:?}: {e}",
                p.plan.topic
            )));
        }
        p.next += 1;
        p.outstanding += 1;
        burst -= 1;
        if scheduled >= measure_from {
            measured += 1;
        }
    };
    let n = p.next - first;
    if n > 0 {
        c.published.fetch_add(n, Relaxed);
        c.bytes_out.fetch_add(n * size, Relaxed);
        c.published_measured.fetch_add(measured, Relaxed);
    }
    result
}

/// Bytes encoded before they are written even in the middle of a read batch.
const STAGE_MAX: usize = 64 * 1024;

impl Link {
    /// Encodes what the core has to send after what waits in `tx`, and acts on its notices;
    /// gives whether anything was added.
    fn stage(
        &mut self,
        ctx: &Ctx,
        publishing: &mut Option<Publishing<'_>>,
    ) -> Result<bool, Failure> {
        let now = ctx.clock.session_now();
        let before = self.staged;
        // Round again while notices were taken: a full notice queue stops the core's output.
        let mut noticed = true;
        while noticed {
            loop {
                let dst = self.tx.get_mut(self.staged..).unwrap_or_default();
                match self.s.poll_transmit(now, dst) {
                    Ok(Some(n)) => self.staged += n,
                    Ok(None) => break,
                    Err(Error::Encode(EncodeError::BufferTooSmall { needed })) => {
                        let len = (self.staged + needed).max(self.tx.len() * 2);
                        self.tx.resize(len, 0);
                    }
                    Err(e) => return Err(Failure::Lost(format!("cannot encode: {e}"))),
                }
            }
            noticed = false;
            while let Some(n) = self.s.poll_notice() {
                noticed = true;
                match n {
                    Notice::Sent { .. } => completed(publishing, true),
                    Notice::Dropped { reason_code, .. } => {
                        ctx.counters.refused.fetch_add(1, Relaxed);
                        completed(publishing, false);
                        ctx.fail(format!("a publish was refused: {reason_code}"));
                    }
                    Notice::Evicted { .. } => completed(publishing, false),
                    Notice::ConnectionLost(e) => return Err(Failure::Lost(e.to_string())),
                    _ => {}
                }
            }
        }
        Ok(self.staged > before)
    }

    /// Writes everything the core has to send, and acts on its notices.
    async fn flush(
        &mut self,
        ctx: &Ctx,
        publishing: &mut Option<Publishing<'_>>,
    ) -> Result<(), Failure> {
        self.stage(ctx, publishing)?;
        if self.staged == 0 {
            return Ok(());
        }
        let data = self.tx.get(..self.staged).unwrap_or_default();
        if let Err(e) = self.t.write_all(data).await {
            return Err(Failure::Lost(e.to_string()));
        }
        self.staged = 0;
        Ok(())
    }

    /// Consumes every whole packet read.
    async fn read_packets(
        &mut self,
        ctx: &Ctx,
        publishing: &mut Option<Publishing<'_>>,
        receiver: &mut Option<Receiver>,
    ) -> Result<(), Failure> {
        let c = &ctx.counters;
        let measure_from = ctx.measure_from_ns.load(Relaxed);
        // One reading for the whole batch: the core's clock counts milliseconds.
        let now = ctx.clock.session_now();
        loop {
            let used = match self.s.handle_read(now, &self.rx) {
                Read::Packet { used, event } => {
                    match event {
                        Some(Event::Message(m)) => {
                            if let Some(r) = receiver.as_mut() {
                                r.receive(m.payload, ctx.clock.now_ns(), measure_from, c);
                            }
                        }
                        Some(Event::Published { reason_code, .. }) => {
                            let ok = !reason_code.is_error();
                            if !ok {
                                c.refused.fetch_add(1, Relaxed);
                                ctx.fail(format!("a publish was refused: {reason_code}"));
                            }
                            completed(publishing, ok);
                        }
                        _ => {}
                    }
                    used
                }
                Read::NeedMore(n) => {
                    self.rx.reserve(n);
                    return Ok(());
                }
                Read::TransmitFirst => {
                    // The acknowledgments of a batch go out together after it (one write,
                    // not one per few packets), unless they pile up or nothing moved.
                    if !self.stage(ctx, publishing)? || self.staged >= STAGE_MAX {
                        self.flush(ctx, publishing).await?;
                    }
                    continue;
                }
                Read::Closed => {
                    let why = lost_reason(&mut self.s, "the broker closed the connection");
                    return Err(Failure::Lost(why));
                }
            };
            self.rx.advance(used);
        }
    }
}

/// A publish completed (`ok`: written at QoS 0, acknowledged at QoS 1 and 2).
fn completed(publishing: &mut Option<Publishing<'_>>, ok: bool) {
    if let Some(p) = publishing.as_mut() {
        p.outstanding = p.outstanding.saturating_sub(1);
        if ok {
            p.completed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<Ctx>, Plan) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task stays small: the core and the handshakes live in boxes, so 10 000
    /// connections do not carry 10 000 copies of their largest states.
    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(run);
        assert!(size <= 2048, "the connection future is {size} bytes");
    }
}
