//! The durable broker: the core's records folded by a [`Ledger`] into live entries of an
//! [`mqtt_store::Store`] (redb), and read back at the start.
//!
//! One task writes. It takes every write folded since its last commit (from every
//! connection: one sync for all of them), submits them, and when they are durable tells the
//! core with `handle_durable`, which releases the acknowledgments held for them. Connections
//! never wait for the store under the core's lock, and the ones that hold nothing in it
//! never wait for it at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mqtt_session::broker::ledger::{Ledger, RUNTIME_KEYS, Write};
use mqtt_session::broker::{ConnId, Record};
use mqtt_store::{Mode, Op, Store, StoreStats};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// How durable an acknowledged message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// PUBACK / PUBREC / PUBCOMP go out once the message and its place in every persistent
    /// session are synced to disk; concurrent messages share one sync.
    Ack,
    /// Written in the background, at most `relaxed_delay_ms` behind: a crash loses at most
    /// what was acknowledged in that last interval.
    Relaxed,
}

/// With `ack`, how long the writer waits before the next commit while nothing waits on the
/// disk alone ([`Broker::waits_on_disk`](mqtt_session::broker::Broker::waits_on_disk)).
const ACK_GATHER: Duration = Duration::from_millis(1);

/// The store's file in the persistence directory (the first sibling's, with `shards`; the
/// others' are `broker-1.redb`, `broker-2.redb`, ...).
pub const STORE_FILE: &str = "broker.redb";

/// The store file of sibling `index`.
fn store_file(index: u16) -> String {
    match index {
        0 => STORE_FILE.to_owned(),
        k => format!("broker-{k}.redb"),
    }
}

/// The runtime's own entry: the broker clock's origin, in milliseconds since the Unix epoch,
/// so that the core's time (session expiry, will delays, message expiry) goes on across a
/// restart.
const CLOCK_KEY: u64 = RUNTIME_KEYS.start;

/// The runtime's entry in the first store: how many siblings wrote the stores (absent: one),
/// since a session's records are in the store of the sibling its client id picks.
const SHARDS_KEY: u64 = RUNTIME_KEYS.start + 1;

/// What the store did at the start and since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReport {
    /// The store file.
    pub path: PathBuf,
    /// How durable an acknowledgment is.
    pub durability: Durability,
    /// Entries read back at the start.
    pub recovered_records: u64,
    /// Time to read them and rebuild the state.
    pub recovery: Duration,
    /// What was set aside at the start (unreadable files and entries), and where it went.
    pub set_aside: Vec<String>,
    /// Whether the store accepts writes (if not, the broker serves from memory).
    pub writable: bool,
    /// Commits (one sync each).
    pub commits: u64,
    /// Entries written or deleted.
    pub ops: u64,
    /// Commits that failed.
    pub failures: u64,
    /// How long the last commit took.
    pub last_commit: Duration,
}

/// The store as the broker holds it.
pub(crate) struct Durable {
    pub store: Option<Store>,
    pub report: StoreReport,
    /// Set when the store fails: the broker goes on from memory.
    pub failed: AtomicBool,
    /// Wakes the writer task.
    pub wake: Arc<Notify>,
    /// Ends the writer, after its last commit.
    pub stop: CancellationToken,
    /// With `relaxed`, how long the writer gathers before it writes.
    pub gather: Option<Duration>,
}

impl StoreReport {
    /// Adds another sibling's store to this report.
    pub(crate) fn merge(&mut self, o: &StoreReport) {
        self.recovered_records += o.recovered_records;
        self.recovery = self.recovery.max(o.recovery);
        self.set_aside.extend(o.set_aside.iter().cloned());
        self.writable &= o.writable;
        self.commits += o.commits;
        self.ops += o.ops;
        self.failures += o.failures;
        self.last_commit = self.last_commit.max(o.last_commit);
    }
}

impl Durable {
    /// The report with the live counters.
    pub fn report(&self) -> StoreReport {
        let mut r = self.report.clone();
        if let Some(store) = &self.store {
            let StoreStats {
                commits,
                ops,
                last_commit_micros,
                failures,
                ..
            } = store.stats();
            r.commits = commits;
            r.ops = ops;
            r.failures = failures;
            r.last_commit = Duration::from_micros(last_commit_micros);
        }
        r.writable = self.store.is_some() && !self.failed.load(Ordering::Relaxed);
        r
    }
}

/// What opening the store gave: the records that rebuild the core, the ledger that goes on
/// from them, and the clock's offset.
pub(crate) struct Opened {
    pub durable: Durable,
    pub ledger: Ledger,
    pub records: Vec<Record>,
    /// Milliseconds from the clock's origin to now.
    pub clock_ms: u64,
}

/// Logged at error level when the store cannot be used.
const NOT_WRITABLE: &str = "store not writable; serving from memory: nothing survives a restart";

impl Durable {
    fn new(
        store: Option<Store>,
        report: StoreReport,
        failed: bool,
        gather: Option<Duration>,
    ) -> Self {
        Durable {
            store,
            report,
            failed: AtomicBool::new(failed),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            gather,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens (or creates) the store in `dir`. Never fails: what cannot be read is set aside and
/// reported, and a store that cannot be opened at all leaves the broker in memory, said
/// loudly in the log and in the report.
/// Opens sibling `index`'s store (of `shards`). Refused when the stores were written by a
/// different number of siblings: each session's records are in its sibling's store.
pub(crate) fn open(
    dir: &Path,
    index: u16,
    shards: u16,
    durability: Durability,
    relaxed_delay: Duration,
) -> Result<Opened, super::StartError> {
    let path = dir.join(store_file(index));
    let started = std::time::Instant::now();
    // With `relaxed`, the writer gathers for half the delay, the store syncs within the
    // other half.
    let gather = (durability == Durability::Relaxed).then_some(relaxed_delay / 2);
    let mode = gather.map_or(Mode::Sync, Mode::Relaxed);
    let mut report = StoreReport {
        path: path.clone(),
        durability,
        recovered_records: 0,
        recovery: Duration::ZERO,
        set_aside: Vec::new(),
        writable: false,
        commits: 0,
        ops: 0,
        failures: 0,
        last_commit: Duration::ZERO,
    };
    let now = unix_ms();
    let (store, recovered) = match Store::open(&path, mode) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "{NOT_WRITABLE}");
            report.recovery = started.elapsed();
            return Ok(Opened {
                durable: Durable::new(None, report, true, None),
                ledger: Ledger::new(),
                records: Vec::new(),
                clock_ms: 0,
            });
        }
    };
    for s in &recovered.set_aside {
        tracing::warn!(path = %path.display(), "store: set aside: {s}");
        report.set_aside.push(s.to_string());
    }
    let origin = recovered
        .records
        .iter()
        .find(|(k, _)| *k == CLOCK_KEY)
        .and_then(|(_, v)| Some(u64::from_le_bytes(v.as_slice().try_into().ok()?)));
    let mut fixes: Vec<Op> = Vec::new();
    if index == 0 {
        let written = recovered
            .records
            .iter()
            .find(|(k, _)| *k == SHARDS_KEY)
            .and_then(|(_, v)| Some(u16::from_le_bytes(v.as_slice().try_into().ok()?)));
        let used = recovered
            .records
            .iter()
            .any(|(k, _)| !RUNTIME_KEYS.contains(k));
        match written {
            Some(n) if n != shards => return Err(shards_changed(dir, n, shards)),
            None if used && shards != 1 => return Err(shards_changed(dir, 1, shards)),
            Some(_) => {}
            None => fixes.push(Op::Put(SHARDS_KEY, shards.to_le_bytes().to_vec())),
        }
    }
    let entries = recovered
        .records
        .iter()
        .filter(|(k, _)| !RUNTIME_KEYS.contains(k))
        .map(|(k, v)| (*k, v.as_slice()));
    let loaded = Ledger::load(entries);
    fixes.extend(loaded.unreferenced.iter().map(|k| Op::Delete(*k)));
    if !loaded.invalid.is_empty() {
        let aside = mqtt_store::aside_path(&path, "entries");
        let mut text = String::new();
        let records = &recovered.records;
        for k in &loaded.invalid {
            // The records come in key order.
            if let Ok(i) = records.binary_search_by_key(k, |(rk, _)| *rk)
                && let Some((_, v)) = records.get(i)
            {
                let _ = writeln!(text, "{k} {}", hex(v));
            }
            fixes.push(Op::Delete(*k));
        }
        let what = match std::fs::write(&aside, text) {
            Ok(()) => format!(
                "{} entries that do not decode or name nothing; moved to {}",
                loaded.invalid.len(),
                aside.display()
            ),
            Err(e) => format!(
                "{} entries that do not decode or name nothing; removed ({} not written: {e})",
                loaded.invalid.len(),
                aside.display()
            ),
        };
        tracing::warn!(path = %path.display(), "store: set aside: {what}");
        report.set_aside.push(what);
    }
    let origin = match origin {
        // A clock set back since the last run counts the downtime as zero.
        Some(o) if o <= now => o,
        _ => {
            fixes.push(Op::Put(CLOCK_KEY, now.to_le_bytes().to_vec()));
            now
        }
    };
    let mut failed = false;
    if !fixes.is_empty()
        && let Err(e) = store.submit(fixes).wait()
    {
        tracing::error!(path = %path.display(), error = %e, "{NOT_WRITABLE}");
        failed = true;
    }
    report.recovered_records = recovered.records.len() as u64;
    report.recovery = started.elapsed();
    tracing::info!(
        path = %path.display(),
        records = report.recovered_records,
        sessions = loaded.ledger.live_sessions(),
        elapsed_ms = report.recovery.as_millis() as u64,
        "store recovered"
    );
    let mut ledger = loaded.ledger;
    // With `relaxed` the writer's gathering already lets deliveries acknowledged meanwhile
    // cancel; with `ack` nothing waits between commits, so a delivery gets one commit's time.
    ledger.set_defer(durability == Durability::Ack);
    Ok(Opened {
        durable: Durable::new(Some(store), report, failed, gather),
        ledger,
        records: loaded.records,
        clock_ms: now - origin,
    })
}

fn shards_changed(dir: &Path, written: u16, shards: u16) -> super::StartError {
    super::StartError::Config(super::ConfigError::new(format!(
        "{} was written by a broker with shards = {written}; start with that (a session's \
         records are in the store of the sibling its client id picks), not {shards}",
        dir.display()
    )))
}

fn hex(v: &[u8]) -> String {
    v.iter()
        .fold(String::with_capacity(v.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Writes what the core recorded, one commit at a time (what comes in meanwhile shares the
/// next one), until [`Durable::stop`]; then what is left, once more.
pub(crate) async fn writer(shared: Arc<Shared>, k: usize) {
    let Some(durable) = shared.durables.get(k) else {
        return;
    };
    let Some(store) = durable.store.as_ref() else {
        return;
    };
    loop {
        let stopping = durable.stop.is_cancelled();
        let (batch, seq) = {
            let mut core = shared.lock_shard(k);
            let seq = core.fed;
            let batch = core.ledger.as_mut().map(|l| {
                // The last batch holds nothing back.
                if stopping {
                    l.set_defer(false);
                }
                l.take_writes()
            });
            (batch.unwrap_or_default(), seq)
        };
        if !batch.writes.is_empty() && !durable.failed.load(Ordering::Relaxed) {
            let ops = batch
                .writes
                .into_iter()
                .map(|w| match w {
                    Write::Put(k, v) => Op::Put(k, v),
                    Write::Delete(k) => Op::Delete(k),
                })
                .collect();
            if let Err(e) = store.submit(ops).await {
                // The promise cannot be kept any more: say so, and go on from memory rather
                // than hold every acknowledgment for ever.
                tracing::error!(error = %e, "store write failed; serving from memory");
                durable.failed.store(true, Ordering::Relaxed);
            }
        }
        let (more, urgent) = {
            let mut core = shared.lock_shard(k);
            // Failed: nothing is durable any more, and nothing waits for it.
            let through = if durable.failed.load(Ordering::Relaxed) {
                seq
            } else {
                batch.through
            };
            core.broker.handle_durable(through);
            let _ = core.dispatch(ConnId(0));
            (
                core.fed > seq || batch.deferred,
                core.broker.waits_on_disk(),
            )
        };
        if stopping && !more {
            return;
        }
        if let Some(gather) = durable.gather {
            tokio::select! {
                _ = tokio::time::sleep(gather) => {}
                _ = durable.stop.cancelled() => {}
            }
        } else if !more {
            tokio::select! {
                _ = durable.wake.notified() => {}
                _ = durable.stop.cancelled() => {}
            }
        } else if !urgent {
            // Every acknowledgment held is one online subscriber's ack away, which usually
            // comes sooner than a sync: sync less often, and leave the CPU to the broker.
            tokio::select! {
                _ = tokio::time::sleep(ACK_GATHER) => {}
                _ = durable.stop.cancelled() => {}
            }
        }
    }
}
