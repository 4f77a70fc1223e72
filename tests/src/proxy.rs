//! A loopback TCP proxy that a test can cut: every connection it accepts is relayed to one
//! upstream address (the broker) until [`Proxy::cut_all`] resets it.
//!
//! The proxy runs as tokio tasks on a runtime of its own, in a thread of its own. So it works the
//! same from a plain `#[test]`, a current-thread or a multi-thread `#[tokio::test]`, or a smol
//! test, and a test that blocks its own thread (waiting for `mosquitto_sub`, say) cannot starve it.
//!
//! ```no_run
//! use tests::mosquitto::Broker;
//! use tests::proxy::Proxy;
//!
//! let Some(broker) = Broker::start_or_skip() else { return };
//! let proxy = Proxy::start(broker.addr());
//! // ... connect the client under test to proxy.addr() and publish ...
//! proxy.cut_all(); // both sides see the connection reset, mid-stream
//! // ... the client reconnects through the proxy, which still accepts ...
//! assert_eq!(proxy.connections(), 2);
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Counters shared between the proxy handle and its tasks.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    cuts: AtomicUsize,
    /// The cut generation each open connection was accepted in, by connection number.
    live: Mutex<BTreeMap<usize, u64>>,
}

impl Counters {
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, u64>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy from `127.0.0.1:port()` to one upstream address; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    /// Bumped by `cut_all`: every connection accepted before resets itself.
    cut: watch::Sender<u64>,
    /// While `true`, no bytes are relayed in either direction (connections stay open).
    stall: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and relays each accepted connection to `upstream`.
    ///
    /// Callable from sync or async code: it starts its own thread and tokio runtime.
    /// Panics if the listener cannot be bound.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("proxy: cannot bind a loopback port: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("proxy: cannot make the listener non-blocking: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: no local address: {e}"))
            .port();
        let counters = Arc::new(Counters::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let (stall, stall_rx) = watch::channel(false);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task_counters = Arc::clone(&counters);
        let thread = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("proxy: cannot build a tokio runtime: {e}"));
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .unwrap_or_else(|e| panic!("proxy: cannot register the listener: {e}"));
                    tokio::select! {
                        _ = shutdown_rx => {}
                        () = accept_loop(listener, upstream, task_counters, cut_rx, stall_rx) => {}
                    }
                });
                // Dropping the runtime cancels every relay task, closing their sockets.
            })
            .unwrap_or_else(|e| panic!("proxy: cannot spawn its thread: {e}"));
        Proxy {
            port,
            upstream,
            counters,
            cut,
            stall,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on: `127.0.0.1:port()`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `mqtt://127.0.0.1:port()`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Where it relays to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// How many connections were reset by [`cut_all`](Self::cut_all) so far.
    pub fn cut_connections(&self) -> usize {
        self.counters.cuts.load(Ordering::SeqCst)
    }

    /// Abruptly closes every current connection, on both sides, with a TCP reset (`SO_LINGER` 0),
    /// dropping whatever is in flight. New connections are still accepted and relayed.
    ///
    /// Returns once every connection accepted before the call is closed (at most 5 s).
    pub fn cut_all(&self) {
        let mut generation = 0;
        self.cut.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counters.live().values().any(|&g| g < generation) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// While `true`, relays nothing in either direction but keeps the connections open: a link
    /// that went silent (for keep-alive timeouts). Bytes already read are held, not dropped.
    pub fn stall(&self, on: bool) {
        self.stall.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    cut: watch::Receiver<u64>,
    stall: watch::Receiver<bool>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let mut cut = cut.clone();
        let generation = *cut.borrow_and_update();
        counters.live().insert(id, generation);
        let stall = stall.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let was_cut = relay(client, upstream, cut, stall).await;
            if was_cut {
                counters.cuts.fetch_add(1, Ordering::SeqCst);
            }
            counters.live().remove(&id);
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Relays one connection until both directions ended, an error, or a cut. Returns whether it
/// was cut.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut cut: watch::Receiver<u64>,
    stall: watch::Receiver<bool>,
) -> bool {
    let _ = client.set_nodelay(true);
    let mut server = tokio::select! {
        s = TcpStream::connect(upstream) => match s {
            Ok(s) => s,
            Err(_) => {
                // Upstream is down: the client sees a reset, as if the broker were unreachable.
                let _ = client.set_zero_linger();
                return false;
            }
        },
        _ = cut.changed() => {
            let _ = client.set_zero_linger();
            return true;
        }
    };
    let _ = server.set_nodelay(true);
    let was_cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::try_join!(
                pump(client_read, server_write, stall.clone()),
                pump(server_read, client_write, stall),
            )
        };
        tokio::select! {
            _ = cut.changed() => true,
            _ = both => false,
        }
    };
    if was_cut {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    was_cut
}

/// Copies `from` to `to` until end of stream (then half-closes `to`), pausing while stalled.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut stall: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let _ = stall.wait_for(|stalled| !*stalled).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let _ = stall.wait_for(|stalled| !*stalled).await;
        to.write_all(&buf[..n]).await?;
    }
}
