//! The client's state on disk: the session's journal written to an `mqtt-store` file.
//!
//! Every engine call that may change persistent state is followed, under the same lock, by
//! [`Persist::flush`], which hands the records to the store's writer in their order. In
//! `Sync` mode the caller (a publisher, or a task the driver spawns) awaits the commit and
//! then tells the engine which records are durable; until then the session holds back what
//! depends on them.

use std::fs;

use mqtt_session::engine::{Engine, StoreOp};
use mqtt_store::{Commit, Mode, Op, Store, StoreError, aside_path};
use tracing::{info, warn};

use crate::api::ClientError;
use crate::options::{Durability, Options};

/// The open store and what the client needs to write to it.
pub(crate) struct Persist {
    store: Store,
    sync: bool,
    ops: Vec<StoreOp>,
}

impl Persist {
    /// Opens the store named by the options (if any, and not in memory mode), rebuilds the
    /// engine's state from it and turns the journal on. Unreadable files and records are set
    /// aside and counted, never a refusal to start.
    pub(crate) fn open<C>(
        options: &Options,
        engine: &mut Engine<C>,
    ) -> Result<Option<Persist>, ClientError> {
        let (Some(path), mode) = (&options.store, options.durability) else {
            return Ok(None);
        };
        let mode = match mode {
            Durability::Memory => return Ok(None),
            Durability::Sync => Mode::Sync,
            Durability::Relaxed(d) => Mode::Relaxed(d),
        };
        let mut set_aside = 0;
        // A damaged file or record is set aside by the store itself; an error here is a busy
        // or unwritable place, where starting over would not help.
        let (store, recovered) =
            Store::open(path, mode).map_err(|e| ClientError::Store(e.to_string()))?;
        for s in &recovered.set_aside {
            warn!(store = %path.display(), "{s}");
        }
        set_aside += recovered.set_aside.len() as u64;
        let mut dropped = Vec::new();
        for (key, record) in &recovered.records {
            if let Err(e) = engine.restore(*key, record) {
                let moved = aside_path(path, &format!("record-{key}"));
                warn!(store = %path.display(), key, error = %e, moved_to = %moved.display(), "store record not restored; set aside");
                if let Err(w) = fs::write(&moved, record) {
                    warn!(error = %w, "cannot write the set-aside record");
                }
                dropped.push(Op::Delete(*key));
                set_aside += 1;
            }
        }
        if !dropped.is_empty() {
            store
                .submit(dropped)
                .wait()
                .map_err(|e| ClientError::Store(e.to_string()))?;
        }
        engine.count_store(set_aside, 0, 0);
        engine.enable_journal();
        info!(
            store = %path.display(),
            records = recovered.records.len(),
            set_aside,
            elapsed = ?recovered.elapsed,
            "store opened"
        );
        Ok(Some(Persist {
            store,
            sync: mode == Mode::Sync,
            ops: Vec::new(),
        }))
    }

    /// Hands the engine's due records to the store. In `Sync` mode gives the commit to await
    /// and the sequence number to pass to [`Engine::handle_durable`] after it; otherwise
    /// marks them durable at once (the writer syncs them within the relaxed delay).
    pub(crate) fn flush<C>(&mut self, engine: &mut Engine<C>) -> Option<(Commit, u64)> {
        let lsn = engine.take_records(&mut self.ops)?;
        let ops = self
            .ops
            .drain(..)
            .map(|op| match op {
                StoreOp::Put(k, v) => Op::Put(k, v),
                StoreOp::Delete(k) => Op::Delete(k),
            })
            .collect();
        let commit = self.store.submit(ops);
        if self.sync {
            Some((commit, lsn))
        } else {
            engine.handle_durable(lsn);
            None
        }
    }

    /// Syncs performed by the store.
    pub(crate) fn commits(&self) -> u64 {
        self.store.stats().commits
    }

    /// How long the last commit took.
    pub(crate) fn latency(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.store.stats().last_commit_micros)
    }
}

/// After a commit: counts a failure (the client goes on in memory: holding messages back
/// forever would lose them too) and releases what waited for the records.
pub(crate) fn committed<C>(engine: &mut Engine<C>, lsn: u64, result: Result<(), StoreError>) {
    if let Err(e) = result {
        warn!(error = %e, "store write failed; going on in memory");
        engine.count_store(0, 0, 1);
    }
    engine.handle_durable(lsn);
}
