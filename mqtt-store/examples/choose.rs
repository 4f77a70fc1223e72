//! Measures the two candidate databases for the store on the same work, in the same run:
//! redb (through `mqtt_store::Store`) and SQLite (rusqlite, WAL, `synchronous = FULL`).
//!
//! `cargo run --release -p mqtt-store --example choose [RECORDS_FOR_RECOVERY]`
//!
//! 1. durable records/s with 1 and with 16 concurrent writers, each waiting for its record to
//!    be synced (what a QoS 1 publish with `durability = ack` costs), and syncs per record;
//! 2. recovery: open a store of N queued 64-byte messages and read them all (default 1 000 000);
//! 3. the file size after all records are deleted and the file compacted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_store::{Mode, Op, Store};

const WRITES: u64 = 2_000;

fn payload(i: u64) -> Vec<u8> {
    let mut v = format!("msg {i:>12} sensors/7/temp ").into_bytes();
    v.resize(64, b'.');
    v
}

fn redb_writers(writers: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path().join("s.redb"), Mode::Sync).expect("open");
    let store = Arc::new(store);
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..WRITES / writers {
                    let key = t << 32 | i;
                    store
                        .submit(vec![Op::Put(key, payload(key))])
                        .wait()
                        .expect("commit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let secs = start.elapsed().as_secs_f64();
    let s = store.stats();
    (s.ops as f64 / secs, s.commits as f64 / s.ops as f64)
}

/// SQLite with the same group commit: writers hand records to one committing thread.
fn sqlite_writers(writers: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = sqlite(&dir.path().join("s.db"));
    type Pending = Vec<(u64, Vec<u8>, std::sync::mpsc::SyncSender<()>)>;
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let pending = pending.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut conn = conn;
            let (mut commits, mut records) = (0u64, 0u64);
            loop {
                let batch = std::mem::take(&mut *pending.lock().expect("lock"));
                if batch.is_empty() {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                let tx = conn.transaction().expect("begin");
                for (k, v, _) in &batch {
                    tx.execute(
                        "INSERT OR REPLACE INTO records (key, value) VALUES (?1, ?2)",
                        rusqlite::params![*k as i64, v],
                    )
                    .expect("insert");
                }
                tx.commit().expect("commit");
                commits += 1;
                records += batch.len() as u64;
                for (_, _, ack) in batch {
                    let _ = ack.send(());
                }
            }
            (commits, records)
        })
    };
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let pending = pending.clone();
            std::thread::spawn(move || {
                for i in 0..WRITES / writers {
                    let key = t << 32 | i;
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    pending.lock().expect("lock").push((key, payload(key), tx));
                    rx.recv().expect("ack");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let secs = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (commits, records) = committer.join().expect("committer");
    (records as f64 / secs, commits as f64 / records as f64)
}

fn sqlite(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.execute(
        "CREATE TABLE IF NOT EXISTS records (key INTEGER PRIMARY KEY, value BLOB NOT NULL)",
        [],
    )
    .expect("table");
    conn
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn redb_recovery(n: u64) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let (store, _) = Store::open(&path, Mode::Sync).expect("open");
    for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
        let ops = chunk.iter().map(|&i| Op::Put(i, payload(i))).collect();
        store.submit(ops).wait().expect("fill");
    }
    drop(store);
    let full = dir_size(dir.path());
    let start = Instant::now();
    let (store, rec) = Store::open(&path, Mode::Sync).expect("reopen");
    let elapsed = start.elapsed();
    assert_eq!(rec.records.len() as u64, n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
        store
            .submit(chunk.iter().map(|&i| Op::Delete(i)).collect())
            .wait()
            .expect("delete");
    }
    store.compact().wait().expect("compact");
    drop(store);
    (elapsed, full, dir_size(dir.path()))
}

fn sqlite_recovery(n: u64) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    {
        let mut conn = sqlite(&path);
        for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
            let tx = conn.transaction().expect("begin");
            for &i in chunk {
                tx.execute(
                    "INSERT INTO records (key, value) VALUES (?1, ?2)",
                    rusqlite::params![i as i64, payload(i)],
                )
                .expect("insert");
            }
            tx.commit().expect("commit");
        }
    }
    let full = dir_size(dir.path());
    let start = Instant::now();
    let conn = sqlite(&path);
    let mut read = 0u64;
    {
        let mut stmt = conn
            .prepare("SELECT key, value FROM records ORDER BY key")
            .expect("select");
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .expect("query");
        let mut all = Vec::new();
        for row in rows {
            all.push(row.expect("row"));
            read += 1;
        }
        assert_eq!(all.len() as u64, n);
    }
    let elapsed = start.elapsed();
    conn.execute("DELETE FROM records", []).expect("delete");
    conn.execute("VACUUM", []).expect("vacuum");
    drop(conn);
    assert_eq!(read, n);
    (elapsed, full, dir_size(dir.path()))
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!("durable writes ({WRITES} records of 64 B, each writer waits for its sync)");
    println!("| writers | redb rec/s | redb syncs/rec | SQLite rec/s | SQLite syncs/rec |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for writers in [1, 16] {
        let (r, rs) = redb_writers(writers);
        let (q, qs) = sqlite_writers(writers);
        println!("| {writers} | {r:.0} | {rs:.2} | {q:.0} | {qs:.2} |");
    }
    println!("\nrecovery of {n} queued 64 B messages, and the size once all are deleted");
    let (rt, rf, re) = redb_recovery(n);
    let (qt, qf, qe) = sqlite_recovery(n);
    println!(
        "| | open + read all | size full | size after deleting all and compacting (redb `compact`, SQLite `VACUUM`) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| redb | {:.2} s | {:.1} MiB | {:.1} MiB |",
        rt.as_secs_f64(),
        rf as f64 / 1048576.0,
        re as f64 / 1048576.0
    );
    println!(
        "| SQLite | {:.2} s | {:.1} MiB | {:.1} MiB |",
        qt.as_secs_f64(),
        qf as f64 / 1048576.0,
        qe as f64 / 1048576.0
    );
}
