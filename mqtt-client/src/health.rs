//! The client's HTTP health endpoint (feature `health`): `/health`, `/livez`, `/readyz` and
//! `/metrics` from [`Client::stats`], served beside the driver on the client's own runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use mqtt_health::client::Thresholds;
use mqtt_health::{Endpoint, Health};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{Core, Status};
use crate::client::Client;
use crate::runtime::{self, Runtime};

/// How long one health request may take before its connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the endpoint's questions from a client's state.
struct ClientEndpoint {
    core: Weak<Core>,
    thresholds: Thresholds,
}

impl ClientEndpoint {
    fn with<T>(&self, gone: T, f: impl FnOnce(&Core) -> T) -> T {
        self.core.upgrade().map_or(gone, |core| f(&core))
    }
}

impl Endpoint for ClientEndpoint {
    fn health(&self) -> Health {
        let gone = || {
            let mut h = Health::new(mqtt_health::Status::Fail);
            h.service_id = Some("mqtt-client".into());
            h
        };
        self.with(gone(), |core| {
            let stats = core.stats(core.now());
            let capacity = core.options().queue_messages;
            mqtt_health::client::health(&stats, capacity, &self.thresholds, SystemTime::now())
        })
    }

    fn metrics(&self) -> String {
        self.with(String::from("# EOF\n"), |core| {
            let stats = core.stats(core.now());
            mqtt_health::client::metrics(&stats, core.options().queue_messages)
        })
    }

    fn alive(&self) -> bool {
        self.with(false, |core| core.status() != Status::Closed)
    }

    fn ready(&self) -> bool {
        // Only the connection state: no walk over the held messages per probe.
        self.with(false, |core| core.lock().engine.is_connected())
    }
}

impl<R: Runtime> Client<R> {
    /// Serves `/health`, `/livez`, `/readyz` and `/metrics` on `addr` with the default
    /// thresholds; returns the bound address once it listens. It runs beside the driver until
    /// every handle of the client is dropped.
    pub async fn serve_health(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.serve_health_with(addr, Thresholds::default()).await
    }

    /// [`Client::serve_health`] with the thresholds at which `/health` says `warn`.
    pub async fn serve_health_with(
        &self,
        addr: SocketAddr,
        thresholds: Thresholds,
    ) -> io::Result<SocketAddr> {
        let (listener, bound) = R::bind_tcp(addr).await?;
        let o = self.core.options();
        let span = info_span!("mqtt", broker = %o.broker, client_id = %o.client_id);
        span.in_scope(|| info!(%bound, "health endpoint listening"));
        let endpoint = Arc::new(ClientEndpoint {
            core: Arc::downgrade(&self.core),
            thresholds,
        });
        let serve = async move {
            while endpoint.core.strong_count() > 0 {
                match R::accept(&listener).await {
                    Ok(stream) => {
                        let endpoint = endpoint.clone();
                        R::spawn(async move {
                            let served = runtime::timeout::<R, _>(
                                REQUEST_TIMEOUT,
                                mqtt_health::serve_connection(stream, &*endpoint),
                            );
                            if let Some(Err(e)) = served.await {
                                debug!(error = %e, "health request failed");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: wait instead of spinning.
                        warn!(error = %e, "health endpoint cannot accept");
                        let pause = std::future::pending::<()>();
                        runtime::timeout::<R, _>(Duration::from_millis(100), pause).await;
                    }
                }
            }
        };
        R::spawn(serve.instrument(span));
        Ok(bound)
    }
}
