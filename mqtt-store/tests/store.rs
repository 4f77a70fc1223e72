//! The store keeps what was committed across reopening, shares syncs between writers, and
//! sets aside what it cannot read instead of failing.

use std::fs;
use std::sync::Arc;

use mqtt_store::{Mode, Op, SetAside, Store};

fn value(i: u64) -> Vec<u8> {
    format!("record {i} {}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[test]
fn puts_replaces_and_deletes_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let (store, rec) = Store::open(&path, Mode::Sync).expect("open");
    assert!(rec.records.is_empty() && rec.set_aside.is_empty());
    let ops = (1..=100).map(|i| Op::Put(i, value(i))).collect();
    store.submit(ops).wait().expect("commit");
    store
        .submit(vec![
            Op::Put(7, b"seven".to_vec()),
            Op::Delete(8),
            Op::Delete(1000),
        ])
        .wait()
        .expect("commit");
    assert_eq!(store.stats().commits, 2);
    drop(store);

    let (_store, rec) = Store::open(&path, Mode::Sync).expect("reopen");
    assert_eq!(rec.records.len(), 99);
    assert!(rec.set_aside.is_empty());
    let keys: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending keys");
    assert!(!keys.contains(&8));
    let seven = rec.records.iter().find(|r| r.0 == 7).expect("7");
    assert_eq!(seven.1, b"seven");
    let nine = rec.records.iter().find(|r| r.0 == 9).expect("9");
    assert_eq!(nine.1, value(9));
}

#[test]
fn concurrent_writers_share_syncs_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let (store, _) = Store::open(&path, Mode::Sync).expect("open");
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let key = t * 1000 + i;
                    store
                        .submit(vec![Op::Put(key, value(key))])
                        .wait()
                        .expect("commit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let stats = store.stats();
    assert_eq!(stats.batches, 800);
    assert_eq!(stats.ops, 800);
    assert!(stats.commits <= 800 && stats.commits > 0);
    drop(store);
    let (_s, rec) = Store::open(&path, Mode::Sync).expect("reopen");
    assert_eq!(rec.records.len(), 800);
}

#[test]
fn relaxed_resolves_at_once_and_writes_by_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let (store, _) =
        Store::open(&path, Mode::Relaxed(std::time::Duration::from_millis(20))).expect("open");
    for i in 0..500 {
        store
            .submit(vec![Op::Put(i, value(i))])
            .wait()
            .expect("queued");
    }
    let stats = store.stats();
    assert!(stats.ops <= 500);
    store.close().expect("close");
    let (_s, rec) = Store::open(&path, Mode::Sync).expect("reopen");
    assert_eq!(rec.records.len(), 500);
}

fn filled(path: &std::path::Path, n: u64) {
    let (store, _) = Store::open(path, Mode::Sync).expect("open");
    store
        .submit((0..n).map(|i| Op::Put(i, value(i))).collect())
        .wait()
        .expect("commit");
    store.close().expect("close");
}

/// Opening a damaged file never fails: it is moved aside (reported) or read as far as valid.
fn reopen_after_damage(damage: impl FnOnce(&std::path::Path)) -> (Store, mqtt_store::Recovered) {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let path = dir.join("s.redb");
    filled(&path, 200);
    damage(&path);
    let (store, rec) = Store::open(&path, Mode::Sync).expect("a damaged store still opens");
    // And it serves: a new write commits and reads back.
    store
        .submit(vec![Op::Put(10_000, b"after".to_vec())])
        .wait()
        .expect("write after damage");
    (store, rec)
}

#[test]
fn a_truncated_file_is_set_aside() {
    let (_s, rec) = reopen_after_damage(|p| {
        let len = fs::metadata(p).expect("meta").len();
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open")
            .set_len(len / 3)
            .expect("truncate");
    });
    assert!(
        matches!(rec.set_aside.as_slice(), [SetAside::File { moved_to, reason }]
            if moved_to.exists() && reason.contains("truncated")),
        "{:?}",
        rec.set_aside
    );
    assert!(rec.records.is_empty());
}

#[test]
fn garbage_appended_sets_the_file_aside() {
    let (_s, rec) = reopen_after_damage(|p| {
        let mut bytes = fs::read(p).expect("read");
        bytes.extend(std::iter::repeat_n(0xA5u8, 10_000));
        fs::write(p, bytes).expect("write");
    });
    // redb never writes past its layout, so a longer file is not one it wrote: moved aside
    // whole (kept for inspection), and the store starts empty.
    assert!(
        matches!(rec.set_aside.as_slice(), [SetAside::File { moved_to, .. }] if moved_to.exists()),
        "{:?}",
        rec.set_aside
    );
}

#[test]
fn a_flipped_record_is_set_aside_and_the_rest_kept() {
    let (_s, rec) = reopen_after_damage(|p| {
        let mut bytes = fs::read(p).expect("read");
        let needle = value(123);
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .expect("record 123 is in the file");
        bytes[at + 7] ^= 0xFF;
        fs::write(p, bytes).expect("write");
    });
    let records = rec.records.len();
    match rec.set_aside.as_slice() {
        [SetAside::Record { key: 123, moved_to }] => {
            let raw = fs::read(moved_to).expect("the set-aside bytes");
            assert_eq!(raw.len(), value(123).len() + 4, "checksum and value");
            assert_eq!(records, 199);
        }
        other => panic!("expected record 123 set aside, got {other:?} with {records} records"),
    }
}

#[test]
fn an_unwritable_place_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    fs::write(&file, b"not a directory").expect("write");
    let e = Store::open(file.join("s.redb"), Mode::Sync).expect_err("cannot create under a file");
    assert!(e.to_string().contains("plain-file"), "{e}");
}

#[test]
fn compaction_gives_deleted_space_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let (store, _) = Store::open(&path, Mode::Sync).expect("open");
    store
        .submit((0..20_000).map(|i| Op::Put(i, value(i))).collect())
        .wait()
        .expect("fill");
    store
        .submit((0..20_000).map(Op::Delete).collect())
        .wait()
        .expect("delete");
    let before = fs::metadata(&path).expect("meta").len();
    store.compact().wait().expect("compact");
    let after = fs::metadata(&path).expect("meta").len();
    assert!(after * 4 < before, "{before} -> {after} bytes");
    store
        .submit(vec![Op::Put(1, b"still works".to_vec())])
        .wait()
        .expect("write");
    drop(store);
    let (_s, rec) = Store::open(&path, Mode::Sync).expect("reopen");
    assert_eq!(rec.records, vec![(1, b"still works".to_vec())]);
}

#[test]
fn a_damaged_header_is_set_aside_not_taken_for_an_unwritable_file() {
    let (_s, rec) = reopen_after_damage(|p| {
        let mut bytes = fs::read(p).expect("read");
        for b in &mut bytes[..8] {
            *b ^= 0xFF;
        }
        fs::write(p, &bytes).expect("write");
    });
    assert!(
        matches!(rec.set_aside.as_slice(), [SetAside::File { moved_to, .. }] if moved_to.exists()),
        "{:?}",
        rec.set_aside
    );
    assert!(rec.records.is_empty());
}

/// Damage anywhere (redb panics on some of it rather than returning an error): the store
/// still opens, says what it set aside when it lost records, and takes writes.
#[test]
fn random_damage_never_stops_opening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean_path = dir.path().join("clean.redb");
    filled(&clean_path, 500);
    let clean = fs::read(&clean_path).expect("read");
    for seed in 1..=40u32 {
        let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize
        };
        let mut bytes = clean.clone();
        for _ in 0..[1, 4, 16, 64][next() % 4] {
            let at = next() % bytes.len();
            let len = [1, 8, 64][next() % 3];
            let end = (at + len).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b ^= (next() % 255 + 1) as u8;
            }
        }
        let path = dir.path().join(format!("seed-{seed}.redb"));
        fs::write(&path, &bytes).expect("write");
        let (store, rec) = Store::open(&path, Mode::Sync)
            .unwrap_or_else(|e| panic!("seed {seed}: a damaged store must open: {e}"));
        let intact = rec.records.iter().all(|(k, v)| *k < 500 && *v == value(*k));
        assert!(intact, "seed {seed}: a record came back altered");
        if rec.records.len() < 500 {
            assert!(
                !rec.set_aside.is_empty(),
                "seed {seed}: {} records lost without a word",
                500 - rec.records.len()
            );
        }
        store
            .submit(vec![Op::Put(10_000, b"after".to_vec())])
            .wait()
            .unwrap_or_else(|e| panic!("seed {seed}: write after damage: {e}"));
        store.close().expect("close");
    }
}
