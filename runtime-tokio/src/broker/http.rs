//! The `http_listen` endpoint: `/health`, `/livez`, `/readyz`, `/metrics` from mqtt-health.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mqtt_health::broker::{BrokerNumbers, Listener, StoreNumbers, Thresholds, health, metrics};
use mqtt_health::{Endpoint, Health};
use tokio::net::TcpListener;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::Shared;

struct BrokerEndpoint(Arc<Shared>);

impl BrokerEndpoint {
    fn numbers(&self) -> BrokerNumbers {
        let s = &self.0;
        let stats = s.stats();
        let c = &s.counters;
        let up = !s.stopping.load(Ordering::Relaxed);
        let d = stats.dropped;
        let store = s.store_report();
        BrokerNumbers {
            listeners: s
                .listeners
                .iter()
                .map(|(l, a)| Listener { url: l.url(*a), up })
                .collect(),
            store_writable: store.as_ref().map(|r| r.writable),
            store_latency: store.as_ref().map(|r| r.last_commit),
            store: store.map(|r| StoreNumbers {
                recovered_records: r.recovered_records,
                recovery: r.recovery,
                set_aside: r.set_aside.len() as u64,
                commits: r.commits,
                ops: r.ops,
                failures: r.failures,
            }),
            connections: c.open.load(Ordering::Relaxed),
            connections_accepted: c.accepted.load(Ordering::Relaxed),
            sessions: stats.sessions as u64,
            messages_in: stats.messages_received,
            messages_out: stats.messages_sent,
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            queued_messages: stats.queued_messages as u64,
            queued_bytes: stats.queued_bytes as u64,
            queued_bytes_limit: s.cfg.max_queued_bytes_total as u64,
            dropped: vec![
                ("queue_full", d.session_full),
                ("total_full", d.total_full),
                ("too_large", d.too_large),
                ("expired", d.expired),
                ("offline_qos0", d.offline_qos0),
                ("not_authorized", d.not_authorized),
                ("retained_full", d.retained_full),
                ("member_left", d.member_left),
            ],
            publishers_held: stats.publishers_held,
            publishers_throttled: stats.publishers_throttled,
            subscribers_stalled: stats.subscribers_stalled,
            retained: stats.retained as u64,
            subscriptions: stats.subscriptions as u64,
            uptime: s.epoch.elapsed(),
            bridges: s
                .bridges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(super::bridge::View::numbers)
                .collect(),
        }
    }
}

impl Endpoint for BrokerEndpoint {
    fn health(&self) -> Health {
        health(&self.numbers(), &Thresholds::default())
    }
    fn metrics(&self) -> String {
        metrics(&self.numbers())
    }
    fn alive(&self) -> bool {
        true
    }
    fn ready(&self) -> bool {
        !self.0.stopping.load(Ordering::Relaxed)
    }
}

/// Serves HTTP requests until the shutdown, one task per connection (bounded in time).
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let endpoint = Arc::new(BrokerEndpoint(shared.clone()));
    loop {
        let sock = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let serve = mqtt_health::serve_connection(sock.compat(), &*endpoint);
            let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
        });
    }
}
