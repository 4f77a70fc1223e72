//! The state shared between tasks and the handle they use.

use core::cell::Cell;
use core::future::poll_fn;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::channel::{Channel, TrySendError};
use embassy_sync::signal::Signal;
use heapless::{String, Vec};
use mqtt_proto::{QoS, ReasonCode, TopicFilter, TopicName};
use mqtt_session::store::Backing;
use mqtt_session::{Backoff, ConnectOptions, Session};

use crate::Error;
use crate::runner::Runner;

/// A message received from the server, copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Message<const TOPIC: usize, const PAYLOAD: usize> {
    /// Topic name.
    pub topic: String<TOPIC>,
    /// Payload.
    pub payload: Vec<u8, PAYLOAD>,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// Whether it is a retained message.
    pub retain: bool,
}

/// Where a handle waits for the answer to its request: a slot and the ticket it holds it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) slot: u8,
    pub(crate) ticket: u32,
}

/// What a handle asks the runner to do.
pub(crate) enum Request<const TOPIC: usize, const PAYLOAD: usize> {
    Publish {
        topic: String<TOPIC>,
        payload: Vec<u8, PAYLOAD>,
        qos: QoS,
        retain: bool,
        reply: Option<Reply>,
    },
    Subscribe {
        filter: String<TOPIC>,
        qos: QoS,
        reply: Reply,
    },
    Unsubscribe {
        filter: String<TOPIC>,
        reply: Reply,
    },
    Disconnect {
        reply: Reply,
    },
}

/// The outcome sent back to a waiting handle.
pub(crate) type Outcome = Result<ReasonCode, Error>;

/// Flags and counters shared by the runner and the handles.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Shared {
    pub(crate) next_ticket: u32,
    pub(crate) connected: bool,
    pub(crate) closed: bool,
    pub(crate) oversized: u32,
    pub(crate) slots_filled: bool,
}

/// The channels and completion slots shared by the [`Runner`] and its [`ClientHandle`]s.
///
/// `M` is the mutex kind (`CriticalSectionRawMutex` when tasks run on several executors or
/// interrupt priorities, `NoopRawMutex` on one executor). `TOPIC` and `PAYLOAD` bound the topic
/// (or filter) and payload of each request and received message; `DEPTH` is the number of
/// requests queued for the runner, of received messages queued for [`ClientHandle::receive`],
/// and of requests that can wait for their completion at once. Memory: about
/// `2 * DEPTH * (TOPIC + PAYLOAD + 16)` bytes. `DEPTH` is 1 to 255 (checked at compile time).
pub struct Resources<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> {
    pub(crate) requests: Channel<M, Request<TOPIC, PAYLOAD>, DEPTH>,
    pub(crate) messages: Channel<M, Message<TOPIC, PAYLOAD>, DEPTH>,
    pub(crate) replies: [Signal<M, (u32, Outcome)>; DEPTH],
    free: Channel<M, u8, DEPTH>,
    pub(crate) shared: Mutex<M, Cell<Shared>>,
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> Default
    for Resources<M, TOPIC, PAYLOAD, DEPTH>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize>
    Resources<M, TOPIC, PAYLOAD, DEPTH>
{
    /// Empty channels (usable in a `static`).
    pub const fn new() -> Self {
        const { assert!(DEPTH > 0 && DEPTH <= 255, "DEPTH must be 1 to 255") };
        Resources {
            requests: Channel::new(),
            messages: Channel::new(),
            replies: [const { Signal::new() }; DEPTH],
            free: Channel::new(),
            shared: Mutex::new(Cell::new(Shared {
                next_ticket: 0,
                connected: false,
                closed: false,
                oversized: 0,
                slots_filled: false,
            })),
        }
    }

    /// Creates the runner over `session` and the handle for the application tasks.
    ///
    /// `rx` receives packets (its length is the largest packet taken in), `tx` holds each
    /// packet written. The session is reused for every reconnect: set its `Config::clean_start`
    /// to `false` (and `session_expiry` for MQTT 5) to resume the session, so unacknowledged
    /// QoS 1/2 messages are resent.
    pub fn split<'a, B: Backing, const RX: usize>(
        &'a self,
        session: &'a mut Session<B, RX>,
        options: ConnectOptions<'a>,
        backoff: Backoff,
        rx: &'a mut [u8],
        tx: &'a mut [u8],
    ) -> (
        ClientHandle<'a, M, TOPIC, PAYLOAD, DEPTH>,
        Runner<'a, M, B, RX, TOPIC, PAYLOAD, DEPTH>,
    ) {
        let fill = self.update(|s| !core::mem::replace(&mut s.slots_filled, true));
        if fill {
            for slot in (0..DEPTH).filter_map(|s| u8::try_from(s).ok()) {
                let _ = self.free.try_send(slot);
            }
        }
        (
            ClientHandle { res: self },
            Runner::new(self, session, options, backoff, rx, tx),
        )
    }

    /// Changes the shared flags under the mutex and returns what `f` returns.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        self.shared.lock(|c| {
            let mut s = c.get();
            let r = f(&mut s);
            c.set(s);
            r
        })
    }

    /// Answers the handle waiting in `reply`.
    pub(crate) fn answer(&self, reply: Reply, outcome: Outcome) {
        if let Some(signal) = self.replies.get(usize::from(reply.slot)) {
            signal.signal((reply.ticket, outcome));
        }
    }
}

/// Holds a completion slot; gives it back when dropped (also when the waiting future is).
struct SlotGuard<'a, M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> {
    res: &'a Resources<M, TOPIC, PAYLOAD, DEPTH>,
    reply: Reply,
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize>
    SlotGuard<'_, M, TOPIC, PAYLOAD, DEPTH>
{
    /// Waits for the answer to this ticket; answers to earlier holders of the slot are ignored.
    async fn wait(&self) -> Outcome {
        let Some(signal) = self.res.replies.get(usize::from(self.reply.slot)) else {
            return Err(Error::Closed);
        };
        loop {
            let (ticket, outcome) = signal.wait().await;
            if ticket == self.reply.ticket {
                return outcome;
            }
        }
    }
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> Drop
    for SlotGuard<'_, M, TOPIC, PAYLOAD, DEPTH>
{
    fn drop(&mut self) {
        let _ = self.res.free.try_send(self.reply.slot);
    }
}

/// The application's side of the client: `Copy`, usable from many tasks at once.
pub struct ClientHandle<
    'a,
    M: RawMutex,
    const TOPIC: usize,
    const PAYLOAD: usize,
    const DEPTH: usize,
> {
    res: &'a Resources<M, TOPIC, PAYLOAD, DEPTH>,
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> Clone
    for ClientHandle<'_, M, TOPIC, PAYLOAD, DEPTH>
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize> Copy
    for ClientHandle<'_, M, TOPIC, PAYLOAD, DEPTH>
{
}

impl<'a, M: RawMutex, const TOPIC: usize, const PAYLOAD: usize, const DEPTH: usize>
    ClientHandle<'a, M, TOPIC, PAYLOAD, DEPTH>
{
    /// Publishes and waits until the message is complete: PUBACK (QoS 1), PUBCOMP (QoS 2), or
    /// written (QoS 0).
    ///
    /// While the connection is down the message waits in the session's offline queue and is
    /// sent after the reconnect. Dropping this future does not withdraw the message; it is
    /// still delivered, only the completion is not reported.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<(), Error> {
        let (topic, payload) = Self::copy_message(topic, payload)?;
        let guard = self.acquire().await;
        let request = Request::Publish {
            topic,
            payload,
            qos,
            retain,
            reply: Some(guard.reply),
        };
        self.send(request).await?;
        guard.wait().await.map(drop)
    }

    /// Hands a publish to the runner and returns without waiting for its completion.
    ///
    /// Waits only for room in the request queue; errors the session reports later (queue
    /// full, refused by the server) are logged, not returned.
    pub async fn publish_nowait(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<(), Error> {
        let (topic, payload) = Self::copy_message(topic, payload)?;
        let request = Request::Publish {
            topic,
            payload,
            qos,
            retain,
            reply: None,
        };
        self.send(request).await
    }

    /// Subscribes to `filter` and waits for the SUBACK; returns the granted QoS.
    ///
    /// The subscription is restored by the session if the server loses it.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<QoS, Error> {
        TopicFilter::new(filter).map_err(|_| Error::InvalidTopic)?;
        let filter = String::try_from(filter).map_err(|_| Error::TooLarge)?;
        let guard = self.acquire().await;
        self.send(Request::Subscribe {
            filter,
            qos,
            reply: guard.reply,
        })
        .await?;
        match guard.wait().await? {
            ReasonCode::GrantedQoS2 => Ok(QoS::ExactlyOnce),
            ReasonCode::GrantedQoS1 => Ok(QoS::AtLeastOnce),
            _ => Ok(QoS::AtMostOnce),
        }
    }

    /// Unsubscribes from `filter` and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), Error> {
        TopicFilter::new(filter).map_err(|_| Error::InvalidTopic)?;
        let filter = String::try_from(filter).map_err(|_| Error::TooLarge)?;
        let guard = self.acquire().await;
        self.send(Request::Unsubscribe {
            filter,
            reply: guard.reply,
        })
        .await?;
        guard.wait().await.map(drop)
    }

    /// Waits for the next received message. Cancel-safe: a message is taken only when this
    /// future completes, so it can wait in a `select` with a timer or another channel.
    pub async fn receive(&self) -> Message<TOPIC, PAYLOAD> {
        self.res.messages.receive().await
    }

    /// A received message, if one is waiting.
    pub fn try_receive(&self) -> Option<Message<TOPIC, PAYLOAD>> {
        self.res.messages.try_receive().ok()
    }

    /// Ends the session: sends DISCONNECT (when connected) and stops the runner, which does
    /// not reconnect. Waits until the runner has done so.
    pub async fn disconnect(&self) -> Result<(), Error> {
        let guard = self.acquire().await;
        self.send(Request::Disconnect { reply: guard.reply })
            .await?;
        guard.wait().await.map(drop)
    }

    /// Whether the client is connected (CONNACK accepted, connection not lost).
    pub fn is_connected(&self) -> bool {
        self.res.update(|s| s.connected)
    }

    /// Whether [`disconnect`](Self::disconnect) ended the client.
    pub fn is_closed(&self) -> bool {
        self.res.update(|s| s.closed)
    }

    /// Incoming messages skipped because they did not fit `rx`, `TOPIC` or `PAYLOAD`.
    pub fn oversized(&self) -> u32 {
        self.res.update(|s| s.oversized)
    }

    /// Copies a topic and payload into request buffers, refusing what does not fit.
    fn copy_message(
        topic: &str,
        payload: &[u8],
    ) -> Result<(String<TOPIC>, Vec<u8, PAYLOAD>), Error> {
        TopicName::new(topic).map_err(|_| Error::InvalidTopic)?;
        let topic = String::try_from(topic).map_err(|_| Error::TooLarge)?;
        let payload = Vec::from_slice(payload).map_err(|_| Error::TooLarge)?;
        Ok((topic, payload))
    }

    /// Takes a free completion slot, waiting for one if all are in use.
    async fn acquire(&self) -> SlotGuard<'a, M, TOPIC, PAYLOAD, DEPTH> {
        let slot = self.res.free.receive().await;
        let ticket = self.res.update(|s| {
            s.next_ticket = s.next_ticket.wrapping_add(1);
            s.next_ticket
        });
        if let Some(signal) = self.res.replies.get(usize::from(slot)) {
            signal.reset();
        }
        SlotGuard {
            res: self.res,
            reply: Reply { slot, ticket },
        }
    }

    /// Puts a request in the runner's queue, waiting for room; fails once the client is closed.
    async fn send(&self, mut request: Request<TOPIC, PAYLOAD>) -> Result<(), Error> {
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            match self.res.requests.try_send(request) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(r)) => request = r,
            }
            poll_fn(|cx| self.res.requests.poll_ready_to_send(cx)).await;
        }
    }
}
