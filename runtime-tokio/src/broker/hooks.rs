//! Application code the broker asks: who may connect (answered asynchronously, MQTT 5
//! extended authentication included) and what a connected client may do.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use mqtt_session::broker::{Action, Answer, ClientInfo};

/// Which step of an authentication an [`AuthRequest`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// The CONNECT.
    Connect,
    /// An AUTH packet continuing the exchange the CONNECT started (0x18).
    Continue,
    /// An AUTH packet of a connected client that authenticates again (0x19, or 0x18 after
    /// the broker continued a re-authentication).
    Reauthenticate,
}

/// What a connection presents for authentication, kept by its task from the CONNECT to the
/// end of the connection, so one exchange's steps (and a later re-authentication) see the same
/// value and its [`state`](AuthRequest::state).
#[non_exhaustive]
pub struct AuthRequest {
    /// The step being answered.
    pub step: AuthStep,
    /// The client's address.
    pub peer: SocketAddr,
    /// The common name of the client's TLS certificate, if it presented one.
    pub certificate_name: Option<String>,
    /// The client identifier (assigned by the broker if the client sent none).
    pub client_id: Box<str>,
    /// The CONNECT's user name.
    pub username: Option<Box<str>>,
    /// The CONNECT's password.
    pub password: Option<Box<[u8]>>,
    /// The MQTT 5 Authentication Method of an extended exchange.
    pub method: Option<Box<str>>,
    /// The Authentication Data of this step (of the CONNECT, then of each AUTH packet).
    pub data: Option<Box<[u8]>>,
    /// Whatever the authenticator kept from an earlier step of this connection (a SCRAM
    /// nonce, say); `None` at the CONNECT.
    pub state: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for AuthRequest {
    // By hand: the password and the exchange's data never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("step", &self.step)
            .field("peer", &self.peer)
            .field("certificate_name", &self.certificate_name)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("method", &self.method)
            .field("data", &self.data.as_ref().map(|d| d.len()))
            .finish_non_exhaustive()
    }
}

/// What [`Authenticate::authenticate`] returns: a boxed future of its answer.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Option<Answer>> + Send + 'a>>;

/// Answers authentication questions in place of (or before) the configuration's rules.
///
/// It runs on the connection's own task, outside the broker's lock, so it may take its time
/// (an HTTP call, a database); the connection waits within the connect timeout.
pub trait Authenticate: Send + Sync + 'static {
    /// Answers one step. `None` leaves the decision to the configuration (the password file,
    /// `allow_anonymous`, the certificate's name), which knows no extended method and refuses
    /// one with 0x8C.
    fn authenticate<'a>(&'a self, request: &'a mut AuthRequest) -> AuthFuture<'a>;
}

/// Decides whether a client may publish to, subscribe to or receive from a topic, after the
/// ACL file (if any) allowed it. It is asked per message under the broker's lock: keep it quick.
pub type Authorizer = Arc<dyn Fn(ClientInfo<'_>, &str, Action) -> bool + Send + Sync>;

/// The application's hooks for [`Broker::start_with`](super::Broker::start_with).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Authentication; without it the configuration decides.
    pub authenticate: Option<Arc<dyn Authenticate>>,
    /// Authorization; without it the ACL file (or nothing) decides.
    pub authorize: Option<Authorizer>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("authenticate", &self.authenticate.is_some())
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}
