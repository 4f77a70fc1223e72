//! An async MQTT 3.1.1 / 5.0 client and an MQTT broker on tokio.
//!
//! The client of [`mqtt_client`] on tokio: this crate supplies the tasks (`tokio::spawn`), the
//! clock (`tokio::time`) and TCP (`tokio::net`, through `tokio_util::compat`) as the [`Tokio`]
//! runtime; the client, TLS (rustls) and WebSocket are written once in `mqtt-client` over the
//! sans-IO core, so this client behaves exactly like the smol one (and, protocol-wise, the
//! embassy one).
//!
//! - [`Client`]: a cloneable handle. `publish` queues a message and gives back a [`Delivery`]
//!   to await its acknowledgment; `route` sends matching messages to async handlers;
//!   `subscribe`, `unsubscribe`, `stats`, `shutdown`, `disconnect`.
//! - [`Driver`]: the task that owns the connection, reconnects with back-off and jitter,
//!   restores subscriptions and resends what was not acknowledged.
//! - [`MqttCodec`]: a `tokio_util` codec for those who frame MQTT themselves.
//! - [`load_options`]: [`Options`] from a TOML file and `MQTT_*` environment variables.
//! - [`Broker`] (module [`broker`](mod@broker)): the MQTT broker server, in-process
//!   (`Broker::start(config)`), around the sans-IO broker core of `mqtt-session`. The client's
//!   broker address type is [`BrokerUrl`].
//!
//! The package also builds the `mqtt` command-line tool (`mqtt pub`, `mqtt sub`), whose flags
//! follow `mosquitto_pub` and `mosquitto_sub`; `mqtt --help` lists them and its exit codes.
//! `mqtt bench` (module [`bench`](mod@bench), feature `bench`) is a load generator for any broker.
//!
//! ```no_run
//! use mqtt_tokio::{Client, Options, QoS};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::spawn(Options::new("mqtt://localhost:1883")?.client_id("demo"))?;
//! client.route("sensors/+/temperature", |msg: mqtt_tokio::Message| async move {
//!     println!("{}: {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//! })?;
//! let delivery = client.publish("sensors/7/temperature", "21.5", QoS::AtLeastOnce, false).await?;
//! delivery.await?; // PUBACK
//! client.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod codec;
mod signal;

pub use broker::{Broker, BrokerConfig};
pub use codec::MqttCodec;
pub use mqtt_client::Broker as BrokerUrl;
pub use mqtt_client::options::{load_options, load_options_unvalidated};
pub use mqtt_client::{
    AckMode, ClientError, ConnectError, ConnectionError, DEFAULT_PRIORITY, DEFAULT_URL, Delivery,
    Durability, ENV_VARS, Event, Failure, HandlerResult, Message, MessageProperties, Options,
    OptionsError, ProtocolVersion, QoS, ReasonCode, RouteId, Scheme, Stats, TlsOptions,
};

/// A cloneable handle to an MQTT client whose connection runs in a [`Driver`] on tokio.
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
pub type Client = mqtt_client::Client<Tokio>;

/// The task that owns the connection: run it with `tokio::spawn(driver.run())`.
pub type Driver = mqtt_client::Driver<Tokio>;

/// The tokio side of the client: tasks, timers and TCP streams of the current tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A tokio sleep that can be moved.
#[derive(Debug)]
pub struct Timer(Pin<Box<tokio::time::Sleep>>);

impl mqtt_client::Timer for Timer {
    fn reset(&mut self, deadline: std::time::Instant) {
        self.0.as_mut().reset(deadline.into());
    }

    fn poll_fire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl mqtt_client::Runtime for Tokio {
    type Tcp = Compat<TcpStream>;
    type Timer = Timer;
    type EventSender = mpsc::UnboundedSender<Event>;
    type Events = mpsc::UnboundedReceiver<Event>;
    type Listener = TcpListener;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(task);
    }

    fn timer(deadline: std::time::Instant) -> Timer {
        Timer(Box::pin(tokio::time::sleep_until(deadline.into())))
    }

    async fn connect_tcp(host: &str, port: u16) -> io::Result<Compat<TcpStream>> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp.compat())
    }

    async fn bind_tcp(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
    }

    async fn accept(listener: &TcpListener) -> io::Result<Compat<TcpStream>> {
        Ok(listener.accept().await?.0.compat())
    }

    fn event_channel() -> (Self::EventSender, Self::Events) {
        mpsc::unbounded_channel()
    }

    fn send_event(sender: &Self::EventSender, event: Event) {
        let _ = sender.send(event);
    }
}

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
