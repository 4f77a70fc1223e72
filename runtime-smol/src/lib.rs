//! An async MQTT 3.1.1 / 5.0 client on smol.
//!
//! The client of [`mqtt_client`] on smol: this crate supplies the tasks (`smol::spawn`), the
//! clock (`async_io::Timer`) and TCP (`async_net`); the client, TLS (rustls) and WebSocket
//! (`ws://`, `wss://`) are written once in `mqtt-client`, over the sans-IO core, so this
//! client behaves exactly like the tokio one.
//!
//! - [`Client`]: a cloneable handle. `publish` queues a message and gives back a [`Delivery`]
//!   to await its acknowledgment; `route` sends matching messages to async handlers;
//!   `subscribe`, `unsubscribe`, `stats`, `shutdown`, `disconnect`.
//! - [`Driver`]: the task that owns the connection, reconnects with back-off and jitter,
//!   restores subscriptions and resends what was not acknowledged.
//!
//! ```no_run
//! use mqtt_smol::{Client, Options, QoS};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
//!     client.route("sensors/+/temperature", |msg: mqtt_smol::Message| async move {
//!         println!("{}: {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//!     })?;
//!     let delivery = client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?;
//!     delivery.await?; // PUBACK
//!     client.shutdown(std::time::Duration::from_secs(5)).await;
//!     Ok(())
//! })
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use async_net::{TcpListener, TcpStream};

#[cfg(feature = "config")]
pub use mqtt_client::options::{ENV_VARS, load_options, load_options_unvalidated};
pub use mqtt_client::{
    AckMode, Broker, ClientError, ConnectError, ConnectionError, DEFAULT_PRIORITY, Delivery,
    Durability, Event, Failure, HandlerResult, Message, MessageProperties, Options, OptionsError,
    ProtocolVersion, QoS, ReasonCode, RouteId, Scheme, Stats, TlsOptions,
};

/// A cloneable handle to an MQTT client whose connection runs in a [`Driver`] on smol.
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
pub type Client = mqtt_client::Client<Smol>;

/// The task that owns the connection: run it with `smol::spawn(driver.run()).detach()`.
pub type Driver = mqtt_client::Driver<Smol>;

/// The smol side of the client: tasks on smol's global executor, `async_io` timers and
/// `async_net` TCP streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// An `async_io` timer, as the client's [`mqtt_client::Timer`].
#[derive(Debug)]
pub struct Timer(async_io::Timer);

impl mqtt_client::Timer for Timer {
    fn reset(&mut self, deadline: std::time::Instant) {
        self.0.set_at(deadline);
    }

    fn poll_fire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl mqtt_client::Runtime for Smol {
    type Tcp = TcpStream;
    type Timer = Timer;
    type EventSender = async_channel::Sender<Event>;
    type Events = async_channel::Receiver<Event>;
    type Listener = TcpListener;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    fn timer(deadline: std::time::Instant) -> Timer {
        Timer(async_io::Timer::at(deadline))
    }

    async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn bind_tcp(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
    }

    async fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
        Ok(listener.accept().await?.0)
    }

    fn event_channel() -> (Self::EventSender, Self::Events) {
        async_channel::unbounded()
    }

    fn send_event(sender: &Self::EventSender, event: Event) {
        let _ = sender.try_send(event);
    }
}
