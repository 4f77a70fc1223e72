//! The MQTT broker server: the sans-IO [`mqtt_session::broker`] core on tokio.
//!
//! This module owns sockets, TLS, WebSocket, timers, tasks and files; every MQTT rule lives in
//! the core. One task per connection (never one per message), spread over tokio's worker
//! threads, and one timer task.
//!
//! # How the core is shared
//! One core [`Broker`](mqtt_session::broker::Broker) sits behind a `std::sync::Mutex` that is
//! held only for a `handle_read` (decode and route what one socket read brought) and the drain
//! of the wakes, events and the task's own `poll_transmit` that follows, never across I/O, a
//! TLS handshake or a password check. A delivery to another connection is a name from
//! `poll_wake` handed to that connection's task (a flag and a waker), which takes the lock
//! itself to pull its packets into its own write buffer, and writes them without the lock. A
//! client that does not read only stops its own task (its session queue is bounded by the
//! core's limits).
//!
//! With `shards` above 1 there is one such core per sibling, each behind its own lock: a
//! connection's CONNECT is read first and its client id picks the sibling, and what a core
//! forwards (`poll_forward`) is queued in the other siblings' inboxes, which a task per sibling
//! feeds to `handle_forward` (see [`mqtt_session::broker::shard`]). With a store, each sibling
//! has its own file, ledger and writer task.
//!
//! The records a durable store must keep (`poll_record`) are drained in one place
//! (`Core::dispatch`) and folded into the store's writes there; one writer task commits
//! them (see `store.rs`). Without a store they are dropped, and acks are not held.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mqtt_tokio::broker::{Broker, BrokerConfig};
//! let broker = Broker::start(BrokerConfig::new("mqtt://127.0.0.1:0")).await?;
//! println!("listening on {}", broker.local_addr());
//! broker.stop().await; // DISCONNECT 0x8B to MQTT 5 clients, then return
//! # Ok(()) }
//! ```

mod bridge;
mod config;
mod conn;
mod hooks;
mod http;
mod store;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::signal::Signal;
use mqtt_proto::ReasonCode;
use mqtt_session::Instant;
use mqtt_session::broker::acl::{Access, AclFile};
use mqtt_session::broker::password::PasswordFile;
use mqtt_session::broker::shard::{Relay, Shard};
use mqtt_session::broker::{Broker as Core0, CloseReason, ConnId, Event, Question, Stats};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bridge::{BridgeConfig, BridgeTopic, Direction};
pub use config::{BrokerConfig, ConfigError, Listen, ListenKind, TlsConfig};
pub use hooks::{AuthFuture, AuthRequest, AuthStep, Authenticate, Authorizer, Hooks};
pub use mqtt_session::broker::{Action, Answer, ClientInfo};
pub use store::{Durability, STORE_FILE, StoreReport};

/// Why the broker could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid, or a file it names cannot be read or parsed.
    Config(ConfigError),
    /// A listener could not be bound.
    Bind {
        /// The listener's URL.
        url: String,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "configuration: {e}"),
            StartError::Bind { url, source } => write!(f, "cannot listen on {url}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// Counters of the server (the core counts the MQTT side).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub refused_max_connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    lock_acquired: AtomicU64,
    lock_wait_ns: AtomicU64,
    lock_held_ns: AtomicU64,
}

/// How much the core's lock was used and waited for since the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockStats {
    /// Times the lock was taken.
    pub acquired: u64,
    /// Time spent waiting for it, summed over all tasks.
    pub waited: Duration,
    /// Time it was held.
    pub held: Duration,
}

/// What one connection's task is told by the others (through the core's lock).
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The core has work for the connection's task.
    pub woken: Signal,
    pub state: Mutex<SlotState>,
}

/// Work for a connection's task.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// The core ended the connection: flush and close.
    pub close: Option<CloseReason>,
    /// Authentication questions to answer.
    pub questions: Vec<Question>,
}

impl Slot {
    pub fn take(&self) -> SlotState {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn update(&self, f: impl FnOnce(&mut SlotState)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The core and the connections' slots, behind one lock.
pub(crate) struct Core {
    pub broker: Core0,
    pub slots: HashMap<ConnId, Arc<Slot>>,
    /// Set under the lock by `stop`, so no connection registers after it.
    pub stopping: bool,
    /// With a store: folds the records into its writes.
    pub ledger: Option<mqtt_session::broker::ledger::Ledger>,
    /// The last record folded into the ledger.
    pub fed: u64,
    /// Wakes the store's writer when there is something to write.
    pub store_wake: Option<Arc<Notify>>,
    /// With siblings: which one this is, and every sibling's inbox.
    pub me: u16,
    pub inboxes: Option<Arc<[Inbox]>>,
    /// The forwards of one `dispatch`, by sibling (kept for their room).
    pub outbox: Vec<Vec<(u16, Relay)>>,
}

/// What the other siblings forwarded to one, in the order they did.
#[derive(Default)]
pub(crate) struct Inbox {
    queue: Mutex<Vec<(u16, Relay)>>,
    wake: Notify,
}

impl Core {
    /// Hands the core's output to whom it concerns: wakes to the tasks named (not `me`, which
    /// drains its own afterwards), questions and closes to their connection's slot, records
    /// to the store (none yet: dropped, and acks are not held). Says whether it woke another
    /// connection's task.
    pub fn dispatch(&mut self, me: ConnId) -> bool {
        let mut woke = false;
        while let Some(id) = self.broker.poll_wake() {
            if id != me
                && let Some(s) = self.slots.get(&id)
            {
                s.woken.raise();
                woke = true;
            }
        }
        while let Some(event) = self.broker.poll_event() {
            let conn = match &event {
                Event::Ask(Question::Connect { conn, .. } | Question::Auth { conn, .. })
                | Event::Close { conn, .. } => *conn,
                _ => continue,
            };
            let Some(s) = self.slots.get(&conn) else {
                continue;
            };
            s.update(|state| match event {
                Event::Ask(q) => state.questions.push(q),
                Event::Close { reason, .. } => state.close = Some(reason),
                _ => {}
            });
            if conn != me {
                s.woken.raise();
            }
        }
        match self.ledger.as_mut() {
            Some(ledger) => {
                let fed = self.fed;
                while let Some(r) = self.broker.poll_record() {
                    ledger.apply(&r);
                    self.fed = r.seq;
                }
                if self.fed > fed
                    && let Some(w) = &self.store_wake
                {
                    w.notify_one();
                }
            }
            None => while self.broker.poll_record().is_some() {},
        }
        if let Some(inboxes) = &self.inboxes {
            // Sorted by sibling first, so each inbox is locked once per call, not per forward.
            self.outbox.resize_with(inboxes.len(), Vec::new);
            while let Some(f) = self.broker.poll_forward() {
                match f.to {
                    Some(to) => {
                        if let Some(b) = self.outbox.get_mut(usize::from(to)) {
                            b.push((self.me, f.relay));
                        }
                    }
                    None => {
                        for (to, b) in self.outbox.iter_mut().enumerate() {
                            if to != usize::from(self.me) {
                                b.push((self.me, f.relay.clone()));
                            }
                        }
                    }
                }
            }
            for (inbox, b) in inboxes.iter().zip(&mut self.outbox) {
                if !b.is_empty() {
                    let mut q = inbox.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    q.append(b);
                    drop(q);
                    inbox.wake.notify_one();
                }
            }
        }
        woke
    }
}

/// What every task of one broker shares.
pub(crate) struct Shared {
    /// The first (or only) core, and the other siblings' (`shards`).
    core: Mutex<Core>,
    siblings: Box<[Mutex<Core>]>,
    inboxes: Option<Arc<[Inbox]>>,
    /// Picks the sibling of a connection without a client id (round-robin).
    next_anonymous: AtomicU64,
    epoch: std::time::Instant,
    /// The core's clock at `epoch` (it goes on from the last run with a store).
    clock_base: u64,
    /// Each sibling's durable store, with `persistence_dir` (none without).
    pub durables: Vec<store::Durable>,
    pub cfg: BrokerConfig,
    pub passwords: Option<PasswordFile>,
    pub hooks: Hooks,
    pub counters: Counters,
    pub stopping: AtomicBool,
    /// Ends the accept loops, the HTTP endpoint and the timer.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub listeners: Vec<(Listen, SocketAddr)>,
    /// The bridges' clients, for the HTTP endpoint's numbers.
    pub bridges: Mutex<Vec<bridge::View>>,
}

/// The core's lock, counting how long it is held.
pub(crate) struct CoreGuard<'a> {
    guard: MutexGuard<'a, Core>,
    since: std::time::Instant,
    counters: &'a Counters,
}

impl Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.guard
    }
}

impl DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.guard
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters
            .lock_held_ns
            .fetch_add(held, Ordering::Relaxed);
    }
}

impl Shared {
    /// The core's clock: milliseconds since the broker started.
    pub fn now(&self) -> Instant {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Instant::from_millis(self.clock_base.saturating_add(ms))
    }

    /// How many sibling cores there are.
    pub fn shards(&self) -> usize {
        1 + self.siblings.len()
    }

    /// The sibling that serves `client_id`: the same for every connection of one session, so
    /// takeovers and resumes meet it. An id the broker assigned names its sibling.
    pub fn shard_of(&self, client_id: &str) -> usize {
        let n = self.shards();
        if n <= 1 {
            return 0;
        }
        if client_id.is_empty() {
            let k = self.next_anonymous.fetch_add(1, Ordering::Relaxed);
            return usize::try_from(k % n as u64).unwrap_or(0);
        }
        if let Some(k) = client_id
            .strip_prefix(ASSIGNED)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(k, _)| k.parse::<usize>().ok())
            .filter(|&k| k < n)
        {
            return k;
        }
        usize::from(
            Shard {
                index: 0,
                count: u16::try_from(n).unwrap_or(u16::MAX),
            }
            .owner(client_id),
        )
    }

    /// What the stores recovered and wrote, every sibling's together; `None` without a store.
    pub fn store_report(&self) -> Option<StoreReport> {
        let mut reports = self.durables.iter().map(store::Durable::report);
        let mut total = reports.next()?;
        for r in reports {
            total.merge(&r);
        }
        Some(total)
    }

    /// Every sibling's counters together.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for k in 0..self.shards() {
            total.merge(&self.lock_shard(k).broker.stats());
        }
        total
    }

    /// Takes sibling `k`'s lock (never held across an `.await`).
    pub fn lock_shard(&self, k: usize) -> CoreGuard<'_> {
        let t = std::time::Instant::now();
        let core = match k {
            0 => &self.core,
            k => self.siblings.get(k - 1).unwrap_or(&self.core),
        };
        let guard = core.lock().unwrap_or_else(PoisonError::into_inner);
        let since = std::time::Instant::now();
        let c = &self.counters;
        c.lock_acquired.fetch_add(1, Ordering::Relaxed);
        let waited = u64::try_from((since - t).as_nanos()).unwrap_or(u64::MAX);
        c.lock_wait_ns.fetch_add(waited, Ordering::Relaxed);
        CoreGuard {
            guard,
            since,
            counters: c,
        }
    }

    /// Ends every connection with DISCONNECT 0x8B (MQTT 5) and refuses new ones.
    fn disconnect_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
        let now = self.now();
        for k in 0..self.shards() {
            let mut core = self.lock_shard(k);
            core.stopping = true;
            let ids: Vec<ConnId> = core.slots.keys().copied().collect();
            for id in ids {
                let _ = core
                    .broker
                    .handle_disconnect(id, now, ReasonCode::ServerShuttingDown);
            }
            let _ = core.dispatch(ConnId(0));
        }
    }
}

/// A running broker; [`Broker::stop`] ends it gracefully (dropping it ends it too, without
/// waiting).
pub struct Broker {
    shared: Arc<Shared>,
    http: Option<SocketAddr>,
    /// The stores' writer tasks (one per sibling).
    writers: Vec<tokio::task::JoinHandle<()>>,
    bridges: Vec<bridge::Bridge>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("listeners", &self.urls())
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &std::path::Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("{key} {}: {e}", path.display())))
}

impl Broker {
    /// Binds the listeners, loads the password and ACL files and starts serving on the
    /// current tokio runtime (a multi-threaded one spreads connections over its workers).
    pub async fn start(cfg: BrokerConfig) -> Result<Broker, StartError> {
        Broker::start_with(cfg, Hooks::default()).await
    }

    /// [`Broker::start`], with the application's authentication and authorization hooks.
    pub async fn start_with(cfg: BrokerConfig, hooks: Hooks) -> Result<Broker, StartError> {
        cfg.validate()?;
        // A bridge's local half is a client of this broker like any other.
        let refused = !cfg.allow_anonymous && hooks.authenticate.is_none();
        if let Some(b) = cfg
            .bridges
            .iter()
            .find(|b| refused && b.local_username.is_none())
        {
            return Err(StartError::Config(ConfigError::new(format!(
                "bridge {}: this broker refuses anonymous clients, so the bridge needs \
                 local_username and local_password",
                b.name
            ))));
        }
        let passwords = match &cfg.password_file {
            Some(p) => Some(
                PasswordFile::parse(&read_file(p, "password_file")?)
                    .map_err(|e| ConfigError::new(format!("password_file {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let acl = match &cfg.acl_file {
            Some(p) => Some(
                AclFile::parse(&read_file(p, "acl_file")?)
                    .map_err(|e| ConfigError::new(format!("acl_file {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let needs_tls = cfg.listeners()?.iter().any(|l| l.kind.tls());
        let tls = if needs_tls {
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                &cfg.tls,
            )?))
        } else {
            None
        };
        let authenticate = passwords.is_some()
            || !cfg.allow_anonymous
            || cfg.tls.use_identity_as_username
            || hooks.authenticate.is_some();
        let mut core_cfg = cfg.core(authenticate);
        // Without a store the per-message records of persistent sessions would be dropped.
        core_cfg.records = false;
        let shards = cfg.shards.max(1);
        // Each sibling's own core config: its place, and assigned ids that name it.
        let sibling_cfg = |index: u16, base: &mqtt_session::broker::Config| {
            if shards == 1 {
                return base.clone();
            }
            mqtt_session::broker::Config {
                shard: Shard {
                    index,
                    count: shards,
                },
                // Leaked once per sibling: the core takes a `&'static str`.
                assigned_id_prefix: Box::leak(format!("{ASSIGNED}{index}-").into_boxed_str()),
                ..base.clone()
            }
        };
        let epoch = std::time::Instant::now();
        // Per sibling: its core, the ledger its records fold into, and its store.
        let mut cores: Vec<(Core0, Option<mqtt_session::broker::ledger::Ledger>)> = Vec::new();
        let mut durables = Vec::new();
        let mut clock_base = 0;
        match cfg.persistence_dir.as_ref() {
            Some(dir) => {
                let durability = cfg.durability.unwrap_or(Durability::Ack);
                let delay = Duration::from_millis(cfg.relaxed_delay_ms);
                for index in 0..shards {
                    let o = store::open(dir, index, shards, durability, delay)?;
                    let writable = o.durable.store.is_some();
                    let mut c = sibling_cfg(index, &core_cfg);
                    c.hold_acks_until_durable =
                        writable && o.durable.report.durability == Durability::Ack;
                    c.records = writable;
                    // A relaxed store may have lost its last writes before a crash.
                    c.lossy_records = o.durable.report.durability == Durability::Relaxed;
                    if index == 0 {
                        // The first store's clock is every sibling's.
                        clock_base = o.clock_ms;
                    }
                    let now = Instant::from_millis(clock_base);
                    cores.push((
                        Core0::restore(c, now, o.records),
                        writable.then_some(o.ledger),
                    ));
                    durables.push(o.durable);
                }
            }
            None => {
                for index in 0..shards {
                    cores.push((Core0::new(sibling_cfg(index, &core_cfg)), None));
                }
            }
        }
        // A store holds other siblings' messages too: no id any of them holds is given again.
        let top = cores
            .iter()
            .map(|(c, _)| c.next_message_id())
            .max()
            .unwrap_or(0);
        for (c, _) in &mut cores {
            c.skip_message_ids(top);
        }
        // What restored siblings announce (the retained messages each owns), handed over
        // before anyone connects.
        let now = Instant::from_millis(clock_base);
        for _ in 0..4 {
            let mut moved = false;
            for from in 0..cores.len() {
                let forwards: Vec<_> =
                    std::iter::from_fn(|| cores.get_mut(from)?.0.poll_forward()).collect();
                for f in forwards {
                    moved = true;
                    for (to, (core, _)) in cores.iter_mut().enumerate() {
                        if to != from && f.to.is_none_or(|t| usize::from(t) == to) {
                            let from = u16::try_from(from).unwrap_or(0);
                            core.handle_forward(now, from, f.relay.clone());
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
        let acl = acl.map(Arc::new);
        for (core, _) in &mut cores {
            let hook = hooks.authorize.clone();
            let acl = acl.clone();
            if acl.is_some() || hook.is_some() {
                // With `use_identity_as_username` the user name is the certificate's common
                // name (the connection answers `AcceptAs`), never the one the client claimed.
                core.set_authorizer(Box::new(
                    move |c: ClientInfo<'_>, topic: &str, action: Action| {
                        let access = match action {
                            Action::Publish => Access::Write,
                            Action::Subscribe => Access::Subscribe,
                            _ => Access::Read,
                        };
                        acl.as_ref()
                            .is_none_or(|acl| acl.check(c.client_id, c.username, topic, access))
                            && hook.as_ref().is_none_or(|h| h(c, topic, action))
                    },
                ));
            }
        }
        let inboxes: Option<Arc<[Inbox]>> =
            (shards > 1).then(|| (0..shards).map(|_| Inbox::default()).collect());
        let cores: Vec<Mutex<Core>> = (0u16..)
            .zip(cores)
            .map(|(me, (broker, ledger))| {
                let store_wake = ledger
                    .as_ref()
                    .and(durables.get(usize::from(me)))
                    .map(|d| d.wake.clone());
                Mutex::new(Core {
                    broker,
                    slots: HashMap::new(),
                    stopping: false,
                    store_wake,
                    ledger,
                    fed: 0,
                    me,
                    inboxes: inboxes.clone(),
                    outbox: Vec::new(),
                })
            })
            .collect();
        let mut rest = cores.into_iter();
        let Some(first) = rest.next() else {
            return Err(StartError::Config(ConfigError::new(
                "shards must be at least 1",
            )));
        };
        let mut bound = Vec::new();
        for l in cfg.listeners()? {
            let listener = listen(l.addr).map_err(|source| StartError::Bind {
                url: l.url(l.addr),
                source,
            })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                url: l.url(l.addr),
                source,
            })?;
            bound.push((l, addr, listener));
        }
        let http = match &cfg.http_listen {
            Some(h) => {
                let listener =
                    TcpListener::bind(h.as_str())
                        .await
                        .map_err(|source| StartError::Bind {
                            url: format!("http://{h}"),
                            source,
                        })?;
                let addr = listener.local_addr().map_err(|source| StartError::Bind {
                    url: format!("http://{h}"),
                    source,
                })?;
                Some((listener, addr))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            core: first,
            siblings: rest.collect(),
            inboxes,
            next_anonymous: AtomicU64::new(0),
            epoch,
            clock_base,
            durables,
            passwords,
            hooks,
            counters: Counters::default(),
            stopping: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            listeners: bound.iter().map(|(l, a, _)| (l.clone(), *a)).collect(),
            bridges: Mutex::new(Vec::new()),
            cfg,
        });
        for (l, addr, listener) in bound {
            tracing::info!(url = %l.url(addr), "listening");
            let ctx = Arc::new(conn::ListenerCtx {
                kind: l.kind,
                path: l.path.clone(),
                tls: if l.kind.tls() { tls.clone() } else { None },
            });
            tokio::spawn(accept_loop(shared.clone(), listener, ctx));
        }
        let http_addr = http.as_ref().map(|(_, a)| *a);
        if let Some((listener, addr)) = http {
            tracing::info!(url = %format!("http://{addr}"), "health endpoint listening");
            tokio::spawn(http::serve(shared.clone(), listener));
        }
        for k in 0..shared.shards() {
            tokio::spawn(timer(shared.clone(), k));
            if shared.shards() > 1 {
                tokio::spawn(relay(shared.clone(), k));
            }
        }
        let writers = (0..shared.durables.len())
            .filter(|&k| shared.durables.get(k).is_some_and(|d| d.store.is_some()))
            .map(|k| tokio::spawn(store::writer(shared.clone(), k)))
            .collect();
        let mut broker = Broker {
            shared,
            http: http_addr,
            writers,
            bridges: Vec::new(),
        };
        if let Some(local) = broker.addr_of(ListenKind::Tcp) {
            // Loopback, whatever the listener's address: the bridge is this machine's.
            let local = SocketAddr::new(loopback(local), local.port());
            for b in &broker.shared.cfg.bridges {
                let started = bridge::Bridge::start(b, local)?;
                let views = &broker.shared.bridges;
                views
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(started.view());
                broker.bridges.push(started);
            }
        }
        Ok(broker)
    }

    /// The bound address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .listeners
            .first()
            .map(|(_, a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound address of the first listener of this kind.
    pub fn addr_of(&self, kind: ListenKind) -> Option<SocketAddr> {
        self.shared
            .listeners
            .iter()
            .find(|(l, _)| l.kind == kind)
            .map(|(_, a)| *a)
    }

    /// The listeners' URLs with their bound ports.
    pub fn urls(&self) -> Vec<String> {
        self.shared
            .listeners
            .iter()
            .map(|(l, a)| l.url(*a))
            .collect()
    }

    /// The bound address of the HTTP endpoint.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The core's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// What the durable store recovered and wrote; `None` without `persistence_dir`.
    pub fn store_report(&self) -> Option<StoreReport> {
        self.shared.store_report()
    }

    /// Open connections (handshaking ones included).
    pub fn connections(&self) -> u64 {
        self.shared.counters.open.load(Ordering::Relaxed)
    }

    /// How much the core's lock was taken and waited for.
    pub fn lock_stats(&self) -> LockStats {
        let c = &self.shared.counters;
        LockStats {
            acquired: c.lock_acquired.load(Ordering::Relaxed),
            waited: Duration::from_nanos(c.lock_wait_ns.load(Ordering::Relaxed)),
            held: Duration::from_nanos(c.lock_held_ns.load(Ordering::Relaxed)),
        }
    }

    /// Stops gracefully: stops accepting, sends DISCONNECT 0x8B to MQTT 5 clients, flushes
    /// every connection and returns when they are closed (at most 5 s).
    pub async fn stop(mut self) {
        // The bridges first: their local half is one of the connections about to end.
        for b in self.bridges.drain(..) {
            b.stop().await;
        }
        self.shared.disconnect_all();
        self.shared.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open 5 s after the stop");
        }
        // The store's last commit: what the closed connections changed.
        for d in &self.shared.durables {
            d.stop.cancel();
        }
        for w in self.writers.drain(..) {
            let _ = w.await;
        }
        let lock = self.lock_stats();
        tracing::info!(
            lock_acquired = lock.acquired,
            lock_waited_ms = lock.waited.as_millis() as u64,
            lock_held_ms = lock.held.as_millis() as u64,
            "stopped"
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.shared.stopping.load(Ordering::SeqCst) {
            self.shared.disconnect_all();
        }
        for d in &self.shared.durables {
            d.stop.cancel();
        }
        // A bridge's clients would otherwise go on reconnecting to a broker that is gone.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for b in self.bridges.drain(..) {
                rt.spawn(async move { b.stop().await });
            }
        }
    }
}

/// Connections the kernel completes and holds for `accept` (Linux caps it at
/// `net.core.somaxconn`). The default of `TcpListener::bind`, 128, is less than a burst of
/// clients reconnecting at once: past it the kernel drops their handshakes' last step, and a
/// client that sends nothing first believes it is connected to a broker that never sees it
/// (the flood test lost one of 300 silent connections to this, once in about 20 runs).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr`, with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted broker binds its port again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until the shutdown; each gets its own task.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, ctx: Arc<conn::ListenerCtx>) {
    let max = shared.cfg.max_connections;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let c = &shared.counters;
                if max > 0 && c.open.load(Ordering::Relaxed) >= max as u64 {
                    c.refused_max_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, max, "refused: max_connections reached");
                    drop(sock);
                    continue;
                }
                c.accepted.fetch_add(1, Ordering::Relaxed);
                c.open.fetch_add(1, Ordering::Relaxed);
                let _ = sock.set_nodelay(true);
                shared
                    .tracker
                    .spawn(conn::serve(shared.clone(), sock, peer, ctx.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Calls the core's `handle_timeout` at its deadlines (checked at least every 250 ms, since
/// a read can move the deadline earlier: a new connection's connect timeout).
async fn timer(shared: Arc<Shared>, k: usize) {
    loop {
        let next = shared.lock_shard(k).broker.poll_timeout();
        let now = shared.now();
        let wait = next
            .map_or(Duration::MAX, |t| t.saturating_since(now))
            .min(Duration::from_millis(250));
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = shared.now();
        if next.is_some_and(|t| now >= t) {
            let mut core = shared.lock_shard(k);
            core.broker.handle_timeout(now);
            let _ = core.dispatch(ConnId(0));
        }
    }
}

/// Hands sibling `k` what the others forwarded to it, in order, a batch per lock.
async fn relay(shared: Arc<Shared>, k: usize) {
    let Some(inbox) = shared.inboxes.as_ref().and_then(|i| i.get(k)) else {
        return;
    };
    // Swapped with the inbox's queue, so both keep their room.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = inbox.wake.notified() => {}
        }
        std::mem::swap(
            &mut batch,
            &mut *inbox.queue.lock().unwrap_or_else(PoisonError::into_inner),
        );
        if batch.is_empty() {
            continue;
        }
        let now = shared.now();
        let mut core = shared.lock_shard(k);
        for (from, r) in batch.drain(..) {
            core.broker.handle_forward(now, from, r);
        }
        let _ = core.dispatch(ConnId(0));
    }
}

/// The prefix of the client ids siblings assign, before the sibling's number.
const ASSIGNED: &str = "auto-";

/// The loopback address of `addr`'s family (a listener on `0.0.0.0` is reached on
/// `127.0.0.1`).
fn loopback(addr: SocketAddr) -> std::net::IpAddr {
    match addr {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    }
}
