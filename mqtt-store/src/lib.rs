//! A durable record store for the MQTT client and broker: records keyed by a sequence number
//! of the caller's own (never a packet id), checksummed, and written in group-committed
//! batches by a thread of their own, so a sync never stalls an async runtime.
//!
//! - [`Store::open`] opens (or creates) the file and returns what it held ([`Recovered`]);
//!   a file that cannot be opened, or records whose checksums fail, are set aside next to it
//!   and reported ([`SetAside`]), never a refusal to start.
//! - [`Store::submit`] queues a batch of [`Op`]s and returns a [`Commit`] that resolves once
//!   the batch is as durable as the [`Mode`] promises. Batches submitted while a commit runs
//!   share the next one: many writers, one sync.
//!
//! The database is [redb](https://docs.rs/redb): a pure-Rust, crash-safe B-tree file (copy on
//! write, checksummed pages, one sync per commit), chosen over SQLite on the measurements in
//! the README (`cargo run --release -p mqtt-store --example choose`).
//!
//! ```
//! use mqtt_store::{Mode, Op, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("client.redb");
//! let (store, recovered) = Store::open(&path, Mode::Sync)?;
//! assert!(recovered.records.is_empty());
//! store.submit(vec![Op::Put(1, b"queued: a/b hello".to_vec())]).wait()?;
//! store.close()?;
//!
//! let (_store, recovered) = Store::open(&path, Mode::Sync)?;
//! assert_eq!(recovered.records, vec![(1, b"queued: a/b hello".to_vec())]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");

/// The most batches one commit takes, so one commit's latency stays bounded under load.
const MAX_GROUP: usize = 4096;

/// How durable a submitted batch is when its [`Commit`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On disk (synced) before the commit resolves; concurrent batches share one sync.
    Sync,
    /// Resolved at once, written and synced in the background at most this long after.
    /// A crash loses at most the batches of that last interval.
    Relaxed(Duration),
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write (or replace) the record with this key.
    Put(u64, Vec<u8>),
    /// Remove the record with this key (nothing if absent).
    Delete(u64),
}

/// What was set aside while opening, instead of refusing to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetAside {
    /// The whole file could not be opened as a store; it was moved to `moved_to` and a new,
    /// empty store was created.
    File {
        /// Where the unreadable file now is.
        moved_to: PathBuf,
        /// Why it could not be opened.
        reason: String,
    },
    /// A record failed its checksum; its bytes were written to `moved_to` and it was removed.
    Record {
        /// The record's key.
        key: u64,
        /// Where its bytes now are.
        moved_to: PathBuf,
    },
}

impl fmt::Display for SetAside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetAside::File { moved_to, reason } => write!(
                f,
                "store file unreadable ({reason}); moved to {} and started empty",
                moved_to.display()
            ),
            SetAside::Record { key, moved_to } => write!(
                f,
                "record {key} failed its checksum; moved to {}",
                moved_to.display()
            ),
        }
    }
}

/// What the store held when opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The valid records, by key in ascending order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// What could not be read and was moved out of the way.
    pub set_aside: Vec<SetAside>,
    /// How long opening and reading took.
    pub elapsed: Duration,
}

/// A store failure: the file system or the database refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

fn err(context: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// Counters of the store's work, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commits (each one sync of the file).
    pub commits: u64,
    /// Batches written (a commit holds one or more).
    pub batches: u64,
    /// Operations written.
    pub ops: u64,
    /// How long the last commit took, in microseconds.
    pub last_commit_micros: u64,
    /// Commits that failed.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
    last_commit_micros: AtomicU64,
    failures: AtomicU64,
}

type Done = oneshot::Sender<Result<(), StoreError>>;

struct Job {
    ops: Vec<Op>,
    done: Option<Done>,
    /// Compact the file after this job's commit (see [`Store::compact`]).
    compact: bool,
}

/// A durable record store; see the [crate docs](crate).
pub struct Store {
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    mode: Mode,
    counters: Arc<Counters>,
    /// The writer's first failure: later submissions fail with it at once.
    failed: Arc<Mutex<Option<StoreError>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path` (creating it and its directory), reads what it holds and
    /// starts its writer thread.
    pub fn open(path: impl AsRef<Path>, mode: Mode) -> Result<(Store, Recovered), StoreError> {
        let path = path.as_ref();
        let started = Instant::now();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
        }
        let mut set_aside = Vec::new();
        // redb panics on some damaged files (an index out of range, an unwrap, an assertion)
        // instead of returning an error: a panic while opening or reading is damage too.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            try_open(path, &mut set_aside)
        }));
        let (db, records) = match attempt {
            Ok(Ok(Opened::Read(db, records))) => (db, records),
            Ok(Ok(Opened::Damaged(reason))) => {
                (start_over(path, reason, &mut set_aside)?, Vec::new())
            }
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let reason = format!("the database failed reading it: {what}");
                (start_over(path, reason, &mut set_aside)?, Vec::new())
            }
        };
        let counters = Arc::new(Counters::default());
        let failed = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel();
        let writer = {
            let counters = counters.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("mqtt-store".into())
                .spawn(move || write_loop(db, rx, mode, &counters, &failed))
                .map_err(|e| err("start the writer thread", e))?
        };
        let store = Store {
            jobs: Some(tx),
            writer: Some(writer),
            mode,
            counters,
            failed,
        };
        let recovered = Recovered {
            records,
            set_aside,
            elapsed: started.elapsed(),
        };
        Ok((store, recovered))
    }

    /// The durability mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Queues a batch; the [`Commit`] resolves when it is as durable as the mode promises.
    pub fn submit(&self, ops: Vec<Op>) -> Commit {
        if let Some(e) = self.failure() {
            return Commit::ready(Err(e));
        }
        let (done, rx) = match self.mode {
            Mode::Sync => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Mode::Relaxed(_) => (None, None),
        };
        let sent = self.jobs.as_ref().is_some_and(|jobs| {
            jobs.send(Job {
                ops,
                done,
                compact: false,
            })
            .is_ok()
        });
        match (sent, rx) {
            (false, _) => Commit::ready(Err(self
                .failure()
                .unwrap_or_else(|| StoreError("the store is closed".into())))),
            (true, Some(rx)) => Commit(State::Waiting(rx)),
            (true, None) => Commit::ready(Ok(())),
        }
    }

    /// Gives the space of deleted records back to the file system; resolves when done. Writes
    /// queued meanwhile wait for it, so call it when the store is quiet (the writer also
    /// compacts by itself after many deletions, when no write is waiting).
    pub fn compact(&self) -> Commit {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            ops: Vec::new(),
            done: Some(tx),
            compact: true,
        };
        match self.jobs.as_ref().map(|jobs| jobs.send(job)) {
            Some(Ok(())) => Commit(State::Waiting(rx)),
            _ => Commit::ready(Err(StoreError("the store is closed".into()))),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            last_commit_micros: c.last_commit_micros.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Writes and syncs everything submitted, then stops the writer.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown();
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    fn shutdown(&mut self) {
        self.jobs = None; // the writer drains what is queued, commits, and ends
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The completion of a submitted batch: a future, or [`Commit::wait`] from blocking code.
#[must_use = "a commit does nothing to wait for unless awaited or waited on"]
pub struct Commit(State);

enum State {
    Ready(Option<Result<(), StoreError>>),
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
}

impl Commit {
    fn ready(result: Result<(), StoreError>) -> Commit {
        Commit(State::Ready(Some(result)))
    }

    /// Blocks until the batch is durable (or failed).
    pub fn wait(self) -> Result<(), StoreError> {
        futures_executor::block_on(self)
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Ready(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            State::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(StoreError("the writer stopped".into())))),
        }
    }
}

/// What opening an existing file gave.
enum Opened {
    /// The database and its valid records.
    Read(Database, Vec<(u64, Vec<u8>)>),
    /// The file is damaged (why): it must be set aside.
    Damaged(String),
}

/// Whether an I/O error while opening says the file's content is wrong, not that the file
/// system refuses it (permissions, a read-only disk, a lock), where moving it would not help.
fn is_damage(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

fn try_open(path: &Path, set_aside: &mut Vec<SetAside>) -> Result<Opened, StoreError> {
    let db = match Database::create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) if is_damage(&e) => {
            return Ok(Opened::Damaged(e.to_string()));
        }
        Err(
            e @ (redb::DatabaseError::DatabaseAlreadyOpen
            | redb::DatabaseError::Storage(redb::StorageError::Io(_))),
        ) => {
            // Not a damaged file but a busy or unwritable one: moving it would not help.
            return Err(err(&format!("open {}", path.display()), e));
        }
        Err(e) => return Ok(Opened::Damaged(e.to_string())),
    };
    match read_all(&db, path, set_aside) {
        Ok(records) => Ok(Opened::Read(db, records)),
        // The file opened but its tree cannot be read through: set it aside as well.
        Err(e) => Ok(Opened::Damaged(e.0)),
    }
}

/// Moves the unreadable file at `path` aside (reported in `set_aside`) and creates an empty one.
fn start_over(
    path: &Path,
    reason: String,
    set_aside: &mut Vec<SetAside>,
) -> Result<Database, StoreError> {
    let moved_to = aside_path(path, "corrupt");
    fs::rename(path, &moved_to).map_err(|r| err(&format!("move aside {}", path.display()), r))?;
    set_aside.push(SetAside::File { moved_to, reason });
    Database::create(path).map_err(|e| err(&format!("create {}", path.display()), e))
}

/// A path next to `path` for something set aside: `NAME.WHAT-MILLIS`.
pub fn aside_path(path: &Path, what: &str) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{stamp}"));
    path.with_file_name(name)
}

/// A record on disk: CRC-32 of its key and value, then the value. The key is in the sum so
/// that damage to the tree that moves a value under another key is caught too.
fn seal(key: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(&checksum(key, value).to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn checksum(key: u64, value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(value);
    h.finalize()
}

fn unseal(key: u64, raw: &[u8]) -> Option<&[u8]> {
    let (sum, value) = raw.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*sum) == checksum(key, value)).then_some(value)
}

fn read_all(
    db: &Database,
    path: &Path,
    set_aside: &mut Vec<SetAside>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    {
        let read = db.begin_read().map_err(|e| err("read", e))?;
        let table = match read.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(records),
            Err(e) => return Err(err("open the records table", e)),
        };
        for entry in table.iter().map_err(|e| err("read", e))? {
            let (k, v) = entry.map_err(|e| err("read", e))?;
            match unseal(k.value(), v.value()) {
                Some(value) => records.push((k.value(), value.to_vec())),
                None => bad.push((k.value(), v.value().to_vec())),
            }
        }
    }
    if bad.is_empty() {
        return Ok(records);
    }
    let dir = aside_path(path, "set-aside");
    fs::create_dir_all(&dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
    let write = db.begin_write().map_err(|e| err("write", e))?;
    {
        let mut table = write.open_table(RECORDS).map_err(|e| err("write", e))?;
        for (key, raw) in bad {
            let moved_to = dir.join(format!("{key}.bin"));
            fs::write(&moved_to, &raw)
                .map_err(|e| err(&format!("write {}", moved_to.display()), e))?;
            table.remove(key).map_err(|e| err("remove", e))?;
            set_aside.push(SetAside::Record { key, moved_to });
        }
    }
    write.commit().map_err(|e| err("commit", e))?;
    Ok(records)
}

/// Deletions after which the writer compacts the file when it is idle.
const COMPACT_AFTER_DELETES: u64 = 100_000;

fn write_loop(
    mut db: Database,
    jobs: mpsc::Receiver<Job>,
    mode: Mode,
    counters: &Counters,
    failed: &Mutex<Option<StoreError>>,
) {
    let mut group: Vec<Job> = Vec::new();
    let mut deletes = 0u64;
    loop {
        // Block for the first batch, then take whatever else is waiting: one commit for all.
        let first = if deletes >= COMPACT_AFTER_DELETES {
            match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Idle after many deletions: give the space back while nobody waits.
                    let _ = db.compact();
                    deletes = 0;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        } else {
            jobs.recv().ok()
        };
        let Some(first) = first else { break };
        if let Mode::Relaxed(delay) = mode {
            // Let the interval's batches gather: one sync for all of them.
            std::thread::sleep(delay);
        }
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let mut result = commit(&db, &group);
        deletes += group
            .iter()
            .flat_map(|j| &j.ops)
            .filter(|op| matches!(op, Op::Delete(_)))
            .count() as u64;
        if result.is_ok() && group.iter().any(|j| j.compact) {
            result = db.compact().map(|_| ()).map_err(|e| err("compact", e));
            deletes = 0;
        }
        counters.last_commit_micros.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match &result {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .batches
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                let ops: usize = group.iter().map(|j| j.ops.len()).sum();
                counters.ops.fetch_add(ops as u64, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert_with(|| e.clone());
                }
            }
        }
        for job in group.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn commit(db: &Database, group: &[Job]) -> Result<(), StoreError> {
    let mut write = db.begin_write().map_err(|e| err("begin a write", e))?;
    write
        .set_durability(Durability::Immediate)
        .map_err(|e| err("durability", e))?;
    {
        let mut table = write.open_table(RECORDS).map_err(|e| err("open", e))?;
        for op in group.iter().flat_map(|j| &j.ops) {
            match op {
                Op::Put(key, value) => {
                    table
                        .insert(*key, seal(*key, value).as_slice())
                        .map_err(|e| err("insert", e))?;
                }
                Op::Delete(key) => {
                    table.remove(*key).map_err(|e| err("remove", e))?;
                }
            }
        }
    }
    write.commit().map_err(|e| err("commit", e))
}
