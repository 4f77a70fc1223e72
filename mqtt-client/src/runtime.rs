//! What an async runtime supplies to the client: tasks, a timer, TCP connections, and the
//! channel of raw events.
//!
//! Everything else (the client handle, the driver loop, TLS, WebSocket, completions, handler
//! routing) is written once in this crate over these few functions; `runtime-tokio` and
//! `runtime-smol` each implement [`Runtime`] on a unit type and name the client
//! `Client<TheirRuntime>`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

use crate::api::Event;

/// An async runtime's tasks, clock and sockets, as the client needs them.
pub trait Runtime: Send + Sync + 'static {
    /// A connected TCP stream, as a futures-io byte stream (TLS and WebSocket go on top).
    type Tcp: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A timer that can be moved to another deadline.
    type Timer: Timer;
    /// The sending half of the channel [`crate::Driver::events`] returns.
    type EventSender: Send + Sync + 'static;
    /// The receiving half: what [`crate::Driver::events`] returns.
    type Events;
    /// A listening TCP socket (for the health endpoint).
    type Listener: Send + Sync + 'static;

    /// Runs `task` to completion in the background.
    fn spawn(task: impl Future<Output = ()> + Send + 'static);

    /// A timer that fires at `deadline`.
    fn timer(deadline: Instant) -> Self::Timer;

    /// Opens a TCP connection to `host:port` with Nagle's algorithm off.
    fn connect_tcp(host: &str, port: u16) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// Listens on `addr`; gives the listener and the address it bound (port 0 picks one).
    fn bind_tcp(
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::Listener, SocketAddr)>> + Send;

    /// The next connection accepted on `listener`.
    fn accept(listener: &Self::Listener) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// An unbounded channel of raw events.
    fn event_channel() -> (Self::EventSender, Self::Events);

    /// Sends an event; a receiver that is gone is not an error.
    fn send_event(sender: &Self::EventSender, event: Event);
}

/// A resettable timer of a runtime.
pub trait Timer: Send + Unpin + 'static {
    /// Moves the deadline.
    fn reset(&mut self, deadline: Instant);

    /// Ready once the deadline has passed.
    fn poll_fire(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// Resolves `fut`, or gives `None` when `limit` passes first.
pub(crate) async fn timeout<R: Runtime, T>(
    limit: std::time::Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let deadline = Instant::now().checked_add(limit);
    let mut fut = std::pin::pin!(fut);
    let mut timer = deadline.map(R::timer);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match &mut timer {
            Some(t) => t.poll_fire(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}
