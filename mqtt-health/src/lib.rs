//! The HTTP endpoint that operators watch a client or a broker through: `GET /health`
//! (`application/health+json`, the IETF health-check draft's shape), `GET /livez`,
//! `GET /readyz` and `GET /metrics` (Prometheus / OpenMetrics text).
//!
//! It is one piece for the client and the broker, and for every async runtime:
//! - [`client`] and [`broker`] turn their numbers into a [`Health`] report and a metrics text;
//! - an [`Endpoint`] answers the four questions (health, metrics, alive, ready);
//! - [`serve_connection`] answers one HTTP request on any `futures-io` stream, so a runtime
//!   only accepts connections and spawns it (tokio through `tokio-util`'s compat layer, smol
//!   directly).
//!
//! ```
//! use mqtt_health::{respond, Endpoint, Health, Status};
//!
//! struct Up;
//! impl Endpoint for Up {
//!     fn health(&self) -> Health { Health::new(Status::Pass) }
//!     fn metrics(&self) -> String { "# EOF\n".into() }
//!     fn alive(&self) -> bool { true }
//!     fn ready(&self) -> bool { true }
//! }
//! let response = respond(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", &Up);
//! assert_eq!(response.status, 200);
//! ```

pub mod broker;
pub mod client;
mod http;
mod metrics;
mod report;

pub use http::{MAX_REQUEST_HEAD, Response, respond, serve_connection};
pub use report::{Check, Health, Status};

/// What the HTTP endpoint asks the client or broker it serves.
pub trait Endpoint: Send + Sync {
    /// The health report of `GET /health`.
    fn health(&self) -> Health;
    /// The exposition text of `GET /metrics`.
    fn metrics(&self) -> String;
    /// Whether the process and its driver run (`GET /livez`): no check of the peers, so an
    /// outage of the broker does not get a healthy client restarted.
    fn alive(&self) -> bool;
    /// Whether it can do its work (`GET /readyz`): the client is connected, the broker listens.
    fn ready(&self) -> bool;
}
