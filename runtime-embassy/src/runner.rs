//! The task that owns the connection and drives the session.

use core::fmt::Debug;
use core::future::{Future, pending, poll_fn};
use core::pin::pin;

use embassy_futures::select::{Either, Either4, select, select4};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_time::Timer;
use embedded_io_async::{Read, Write};
use heapless::{String, Vec};
use mqtt_proto::{Packet, PacketId, Publish, QoS, ReasonCode, Status, SubscriptionOptions};
use mqtt_proto::{TopicFilter, frame};
use mqtt_session::store::Backing;
use mqtt_session::{Backoff, ConnectOptions, Event, Notice, Read as Step, Session, State, Token};

use crate::handle::{Message, Outcome, Reply, Request, Resources};
use crate::{Error, now, to_embassy};

/// Opens the transport for each connection attempt.
///
/// Implemented for closures `FnMut() -> impl Future<Output = Result<T, E>>` whose transport
/// `T` is owned (a host socket, a TLS stream that owns its socket). A transport that borrows
/// from the connector, such as an `embassy_net::tcp::TcpSocket` kept between attempts,
/// implements the trait on a struct holding the socket and returns `&mut` to it.
pub trait Connector {
    /// The open connection.
    type Transport<'t>: Read + Write
    where
        Self: 't;
    /// Why opening failed.
    type Error: Debug;
    /// Opens a new connection (closing what the previous attempt left open).
    fn connect(&mut self) -> impl Future<Output = Result<Self::Transport<'_>, Self::Error>>;
}

impl<F, Fut, T, E> Connector for F
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Read + Write,
    E: Debug,
{
    type Transport<'t>
        = T
    where
        Self: 't;
    type Error = E;
    fn connect(&mut self) -> impl Future<Output = Result<T, E>> {
        self()
    }
}

/// Which request an answer from the session completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// A publish, by the session's token.
    Publish(Token),
    /// A SUBSCRIBE or UNSUBSCRIBE, by its packet id.
    Request(PacketId),
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Lost: reconnect after the back-off.
    Lost,
    /// Closed by `disconnect()`: stop.
    Closed,
}

/// Handles waiting for their requests to complete.
struct Waiters<'a, M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> {
    res: &'a Resources<M, TOPIC, PAYLOAD, DEPTH>,
    waiting: Vec<(Key, Reply), DEPTH>,
    /// The handle waiting for the client to close.
    closing: Option<Reply>,
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize>
    Waiters<'_, M, TOPIC, PAYLOAD, DEPTH>
{
    /// Remembers that `reply` waits for `key`.
    fn add(&mut self, key: Key, reply: Reply) {
        // A slot is held by one handle at a time: an older entry for it belongs to a handle
        // that stopped waiting.
        if let Some(w) = self.waiting.iter_mut().find(|(_, r)| r.slot == reply.slot) {
            *w = (key, reply);
        } else if let Err((_, reply)) = self.waiting.push((key, reply)) {
            self.res
                .answer(reply, Err(Error::Session(mqtt_session::Error::QueueFull)));
        }
    }

    /// Answers whoever waits for `key`.
    fn complete(&mut self, key: Key, outcome: Outcome) {
        if let Some(i) = self.waiting.iter().position(|(k, _)| *k == key) {
            let (_, reply) = self.waiting.swap_remove(i);
            self.res.answer(reply, outcome);
        }
    }

    /// Answers everyone: the client is closed.
    fn close_all(&mut self) {
        for (_, reply) in self.waiting.drain(..) {
            self.res.answer(reply, Err(Error::Closed));
        }
    }
}

/// Drives the connection: put [`run`](Runner::run) in a task of its own.
pub struct Runner<
    'a,
    M: RawMutex,
    B: Backing,
    const RX: usize,
    const TOPIC: usize,
    const PAYLOAD: usize,
    const DEPTH: usize,
    J: Journal = NoJournal,
> {
    session: &'a mut Session<B, RX>,
    options: ConnectOptions<'a>,
    backoff: Backoff,
    rx: &'a mut [u8],
    tx: &'a mut [u8],
    waiters: Waiters<'a, M, TOPIC, PAYLOAD, DEPTH>,
    journal: J,
}

/// Where the runner writes the session's journal records (see [`mqtt_session::journal`]).
///
/// The runner calls [`flush`](Journal::flush) before it transmits and after each request; an
/// implementation writes every record [`Session::poll_record`] gives, in order, then calls
/// [`Session::handle_durable`] with the last one written.
pub trait Journal {
    /// Writes the records due and reports them durable.
    fn flush<B: Backing, const RX: usize>(
        &mut self,
        session: &mut Session<B, RX>,
    ) -> impl Future<Output = ()>;
}

/// No journal: the session keeps its state in RAM only (its journal stays off).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    async fn flush<B: Backing, const RX: usize>(&mut self, _session: &mut Session<B, RX>) {}
}

impl<
    'a,
    M: RawMutex,
    B: Backing,
    const RX: usize,
    const TOPIC: usize,
    const PAYLOAD: usize,
    const DEPTH: usize,
> Runner<'a, M, B, RX, TOPIC, PAYLOAD, DEPTH>
{
    /// A runner over `session`; see [`Resources::split`].
    pub(crate) fn new(
        res: &'a Resources<M, TOPIC, PAYLOAD, DEPTH>,
        session: &'a mut Session<B, RX>,
        options: ConnectOptions<'a>,
        backoff: Backoff,
        rx: &'a mut [u8],
        tx: &'a mut [u8],
    ) -> Self {
        if u64::from(session.config().max_packet_size) > rx.len() as u64 {
            debug!("max_packet_size exceeds rx: larger packets are skipped");
        }
        Runner {
            session,
            options,
            backoff,
            rx,
            tx,
            waiters: Waiters {
                res,
                waiting: Vec::new(),
                closing: None,
            },
            journal: NoJournal,
        }
    }

    /// The runner writing the session's journal to `journal` (e.g. a
    /// `FlashJournal`, feature `flash-store`); restore the session from it first.
    pub fn with_journal<J: Journal>(
        self,
        journal: J,
    ) -> Runner<'a, M, B, RX, TOPIC, PAYLOAD, DEPTH, J> {
        Runner {
            session: self.session,
            options: self.options,
            backoff: self.backoff,
            rx: self.rx,
            tx: self.tx,
            waiters: self.waiters,
            journal,
        }
    }
}

impl<
    'a,
    M: RawMutex,
    B: Backing,
    const RX: usize,
    const TOPIC: usize,
    const PAYLOAD: usize,
    const DEPTH: usize,
    J: Journal,
> Runner<'a, M, B, RX, TOPIC, PAYLOAD, DEPTH, J>
{
    /// The session this runner drives (its state, what is pending, in flight, subscribed).
    pub fn session(&self) -> &Session<B, RX> {
        self.session
    }

    /// Connects, serves the session and reconnects after every loss with the back-off, until
    /// [`ClientHandle::disconnect`](crate::ClientHandle::disconnect).
    ///
    /// Requests from handles are served while connecting and while waiting to reconnect: they
    /// go into the session's offline queue.
    pub async fn run<C: Connector>(&mut self, mut connector: C) {
        loop {
            if self.session.state() == State::Closed {
                break;
            }
            debug!("mqtt: connecting");
            let Some(attempt) = self.serve_until(connector.connect()).await else {
                break;
            };
            let end = match attempt {
                Ok(mut transport) => {
                    let end = self.serve_connection(&mut transport).await;
                    self.waiters.res.update(|s| s.connected = false);
                    end
                }
                Err(_e) => {
                    warn!(
                        "mqtt: cannot open the transport: {}",
                        defmt::Debug2Format(&_e)
                    );
                    End::Lost
                }
            };
            self.session.handle_disconnect(now());
            self.drain_notices();
            if end == End::Closed || self.session.state() == State::Closed {
                break;
            }
            let delay = self.backoff.next_delay(now());
            info!("mqtt: reconnecting in {} ms", delay.as_millis() as u64);
            let delay = embassy_time::Duration::from_millis(
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            );
            if self.serve_until(Timer::after(delay)).await.is_none() {
                break;
            }
        }
        self.shut_down();
    }

    /// Serves requests until `fut` completes; `None` if a request closed the client.
    async fn serve_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        let res = self.waiters.res;
        loop {
            match select(&mut fut, res.requests.receive()).await {
                Either::First(out) => return Some(out),
                Either::Second(request) => {
                    self.on_request(request);
                    // An accepted message is on flash before anything else happens.
                    self.journal.flush(self.session).await;
                    self.drain_notices();
                    if self.session.state() == State::Closed {
                        return None;
                    }
                }
            }
        }
    }

    /// Marks the client closed and answers everything still waiting.
    fn shut_down(&mut self) {
        let res = self.waiters.res;
        res.update(|s| {
            s.closed = true;
            s.connected = false;
        });
        self.drain_notices();
        self.waiters.close_all();
        while let Ok(request) = res.requests.try_receive() {
            let reply = match request {
                Request::Publish { reply, .. } => reply,
                Request::Subscribe { reply, .. }
                | Request::Unsubscribe { reply, .. }
                | Request::Disconnect { reply } => Some(reply),
            };
            if let Some(reply) = reply {
                res.answer(reply, Err(Error::Closed));
            }
        }
        if let Some(reply) = self.waiters.closing.take() {
            res.answer(reply, Ok(ReasonCode::Success));
        }
        info!("mqtt: closed");
    }

    /// One connection: CONNECT, then packets both ways until it ends.
    async fn serve_connection<T: Read + Write>(&mut self, io: &mut T) -> End {
        let n = match self.session.connect(now(), &self.options, self.tx) {
            Ok(n) => n,
            Err(mqtt_session::Error::Closed) => return End::Closed,
            Err(_e) => {
                error!("mqtt: cannot encode CONNECT: {}", _e);
                return End::Lost;
            }
        };
        if write(io, self.tx.get(..n).unwrap_or_default())
            .await
            .is_err()
        {
            return End::Lost;
        }
        let res = self.waiters.res;
        // Bytes of `rx` holding received data not yet consumed.
        let mut filled = 0usize;
        // Bytes of an oversized packet still to be skipped on the wire.
        let mut skip = 0usize;
        loop {
            // 1. Consume every whole packet buffered, while received messages have room.
            let mut blocked = false;
            let mut ended = false;
            while filled > 0 {
                let buffered = self.rx.get(..filled).unwrap_or_default();
                if let Ok(Status::Complete(f)) = frame(buffered, usize::MAX)
                    && f.len() > self.rx.len()
                    && u64::try_from(f.len()).unwrap_or(u64::MAX)
                        <= u64::from(self.session.config().max_packet_size)
                {
                    warn!("mqtt: skipping a {} byte packet larger than rx", f.len());
                    res.update(|s| s.oversized = s.oversized.saturating_add(1));
                    skip = f.len() - filled;
                    filled = 0;
                    break;
                }
                if res.messages.is_full() {
                    blocked = true;
                    break;
                }
                match self.session.handle_read(now(), buffered) {
                    Step::Packet { used, event } => {
                        if let Some(event) = event {
                            on_event(&mut self.waiters, &mut self.backoff, event);
                        }
                        let used = used.min(filled);
                        self.rx.copy_within(used..filled, 0);
                        filled -= used;
                    }
                    Step::NeedMore(_) => break,
                    Step::TransmitFirst => {
                        self.drain_notices();
                        if self.transmit(io).await.is_err() {
                            return End::Lost;
                        }
                    }
                    Step::Closed => {
                        ended = true;
                        break;
                    }
                }
            }
            // 2. Notices, then everything the session has to send.
            self.drain_notices();
            if self.transmit(io).await.is_err() {
                return End::Lost;
            }
            self.drain_notices();
            match self.session.state() {
                State::Closed => {
                    let _ = io.flush().await;
                    return End::Closed;
                }
                State::Disconnected => return End::Lost,
                State::Connecting | State::Connected if ended => return End::Lost,
                State::Connecting | State::Connected => {}
            }
            // 3. Wait for bytes, a request, the deadline, or room for received messages.
            let deadline = self.session.poll_timeout();
            let space = filled < self.rx.len();
            let buf = self.rx.get_mut(filled..).unwrap_or_default();
            let read = async {
                if blocked || !space {
                    pending::<()>().await;
                }
                io.read(buf).await
            };
            let timer = async {
                match deadline {
                    Some(at) => Timer::at(to_embassy(at)).await,
                    None => pending().await,
                }
            };
            let room = async {
                if !blocked {
                    pending::<()>().await;
                }
                poll_fn(|cx| res.messages.poll_ready_to_send(cx)).await;
            };
            let woke = select4(read, res.requests.receive(), timer, room).await;
            match woke {
                Either4::First(Ok(0)) => {
                    info!("mqtt: the server closed the connection");
                    return End::Lost;
                }
                Either4::First(Err(_e)) => {
                    warn!("mqtt: read failed: {}", defmt::Debug2Format(&_e));
                    return End::Lost;
                }
                Either4::First(Ok(n)) => {
                    let dropped = n.min(skip);
                    skip -= dropped;
                    if dropped > 0 {
                        self.rx.copy_within(filled + dropped..filled + n, filled);
                    }
                    filled += n - dropped;
                }
                Either4::Second(request) => self.on_request(request),
                Either4::Third(()) => self.session.handle_timeout(now()),
                Either4::Fourth(()) => {}
            }
        }
    }

    /// Writes every packet the session has to send, then flushes.
    async fn transmit<T: Write>(&mut self, io: &mut T) -> Result<(), ()> {
        let mut wrote = false;
        // What the last packets changed is written first: sends wait for their records.
        self.journal.flush(self.session).await;
        loop {
            match self.session.poll_transmit(now(), self.tx) {
                Ok(Some(n)) => {
                    write(io, self.tx.get(..n).unwrap_or_default()).await?;
                    wrote = true;
                }
                Ok(None) if self.session.records_pending() => {
                    // Sending took ids or changed states: record them, then send what waited.
                    self.journal.flush(self.session).await;
                }
                Ok(None) => break,
                Err(_e) => {
                    // Requests are checked against `tx` before they reach the session, so
                    // this is a session filled before it was handed to the runner.
                    error!("mqtt: a packet does not fit tx: {}", _e);
                    return Err(());
                }
            }
        }
        if wrote {
            io.flush().await.map_err(drop)?;
        }
        Ok(())
    }

    /// Tells waiting handles what the session's notices mean.
    fn drain_notices(&mut self) {
        while let Some(notice) = self.session.poll_notice() {
            match notice {
                Notice::Sent { token } => self
                    .waiters
                    .complete(Key::Publish(token), Ok(ReasonCode::Success)),
                Notice::Dropped { token, reason_code } => {
                    warn!("mqtt: message dropped: {}", reason_code);
                    self.waiters
                        .complete(Key::Publish(token), Err(Error::Refused(reason_code)));
                }
                Notice::Evicted { token } => {
                    warn!("mqtt: message evicted from the queue");
                    self.waiters
                        .complete(Key::Publish(token), Err(Error::Evicted));
                }
                Notice::ConnectionLost(_e) => {
                    warn!("mqtt: connection lost: {}", _e);
                    self.waiters.res.update(|s| s.connected = false);
                }
                Notice::SubscriptionNotKept => {
                    warn!("mqtt: a subscription cannot be restored after a session loss");
                }
                _ => {}
            }
        }
    }

    /// Hands a request from a handle to the session.
    fn on_request(&mut self, request: Request<TOPIC, PAYLOAD>) {
        let version = self.session.config().version;
        let tx_len = self.tx.len();
        let at = now();
        match request {
            Request::Publish {
                topic,
                payload,
                qos,
                retain,
                reply,
            } => {
                let message = Publish {
                    qos,
                    retain,
                    ..Publish::new(&topic, &payload)
                };
                let sized = Publish {
                    packet_id: (qos != QoS::AtMostOnce).then_some(PacketId::MAX),
                    ..message
                };
                let fits = Packet::Publish(sized)
                    .encoded_len(version)
                    .is_ok_and(|n| n <= tx_len);
                let outcome = if fits {
                    self.session.publish(at, &message, 5).map_err(Error::from)
                } else {
                    Err(Error::TooLarge)
                };
                match (outcome, reply) {
                    (Ok(token), Some(reply)) => self.waiters.add(Key::Publish(token), reply),
                    (Ok(_), None) => {}
                    (Err(e), Some(reply)) => self.waiters.res.answer(reply, Err(e)),
                    (Err(_e), None) => warn!("mqtt: publish refused: {}", _e),
                }
            }
            Request::Subscribe { filter, qos, reply } => {
                let outcome = self.request(&filter, tx_len, |session, f| {
                    session.subscribe(at, &[(f, SubscriptionOptions::new(qos))], &[])
                });
                match outcome {
                    Ok(id) => self.waiters.add(Key::Request(id), reply),
                    Err(e) => self.waiters.res.answer(reply, Err(e)),
                }
            }
            Request::Unsubscribe { filter, reply } => {
                let outcome = self.request(&filter, tx_len, |session, f| {
                    session.unsubscribe(at, &[f], &[])
                });
                match outcome {
                    Ok(id) => self.waiters.add(Key::Request(id), reply),
                    Err(e) => self.waiters.res.answer(reply, Err(e)),
                }
            }
            Request::Disconnect { reply } => {
                info!("mqtt: disconnect requested");
                self.session.disconnect(ReasonCode::Success);
                if let Some(earlier) = self.waiters.closing.replace(reply) {
                    self.waiters.res.answer(earlier, Ok(ReasonCode::Success));
                }
            }
        }
    }

    /// A (UN)SUBSCRIBE for one filter, checked against `tx` first.
    fn request(
        &mut self,
        filter: &String<TOPIC>,
        tx_len: usize,
        queue: impl FnOnce(
            &mut Session<B, RX>,
            TopicFilter<'_>,
        ) -> Result<PacketId, mqtt_session::Error>,
    ) -> Result<PacketId, Error> {
        let f = TopicFilter::new(filter).map_err(|_| Error::InvalidTopic)?;
        // Packet id, one filter with its length and options, and MQTT 5 properties: 12 bytes
        // of fixed header and framing at most.
        if filter.len() + 12 > tx_len {
            return Err(Error::TooLarge);
        }
        Ok(queue(self.session, f)?)
    }
}

/// Acts on an event of a received packet.
fn on_event<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize>(
    waiters: &mut Waiters<'_, M, TOPIC, PAYLOAD, DEPTH>,
    backoff: &mut Backoff,
    event: Event<'_>,
) {
    match event {
        Event::Connected { session_present } => {
            info!("mqtt: connected (session present: {})", session_present);
            let _ = session_present;
            backoff.connected(now());
            waiters.res.update(|s| s.connected = true);
        }
        Event::Message(m) => {
            let copied = String::try_from(m.topic)
                .ok()
                .zip(Vec::from_slice(m.payload).ok());
            let Some((topic, payload)) = copied else {
                warn!("mqtt: received message larger than TOPIC/PAYLOAD dropped");
                waiters
                    .res
                    .update(|s| s.oversized = s.oversized.saturating_add(1));
                return;
            };
            let message = Message {
                topic,
                payload,
                qos: m.qos,
                retain: m.retain,
            };
            // The runner only reads packets while the channel has room, and it is the only
            // sender, so this does not fail.
            if waiters.res.messages.try_send(message).is_err() {
                waiters
                    .res
                    .update(|s| s.oversized = s.oversized.saturating_add(1));
            }
        }
        Event::Published { token, reason_code } => {
            let outcome = if reason_code.is_error() {
                Err(Error::Refused(reason_code))
            } else {
                Ok(reason_code)
            };
            waiters.complete(Key::Publish(token), outcome);
        }
        Event::Subscribed {
            packet_id,
            reason_codes,
        } => {
            let code = reason_codes
                .iter()
                .next()
                .unwrap_or(ReasonCode::UnspecifiedError);
            let outcome = if code.is_error() {
                Err(Error::Refused(code))
            } else {
                Ok(code)
            };
            waiters.complete(Key::Request(packet_id), outcome);
        }
        Event::Unsubscribed { packet_id, .. } => {
            waiters.complete(Key::Request(packet_id), Ok(ReasonCode::Success));
        }
        _ => debug!("mqtt: event not handled by this runtime"),
    }
}

/// Writes all of `bytes`.
async fn write<T: Write>(io: &mut T, bytes: &[u8]) -> Result<(), ()> {
    io.write_all(bytes).await.map_err(|_e| {
        warn!("mqtt: write failed: {}", defmt::Debug2Format(&_e));
    })
}

#[cfg(not(feature = "defmt"))]
mod defmt {
    //! Stands in for `defmt::Debug2Format` when logging is off.
    #[allow(non_snake_case, reason = "mirrors defmt's name")]
    pub(super) fn Debug2Format<T>(_: &T) {}
}
