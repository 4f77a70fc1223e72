//! Prints a markdown table of ns/op for our codec and rumqttc's, and their ratio.
//!
//! `cargo bench -p mqtt-proto --bench ratio`. No criterion: each measurement is a warm-up and
//! then five runs of about 60 ms (so about 0.3 s), alternating ours and rumqttc so that load on
//! the machine hits both alike; the best run counts. As in the `codec` bench, decoding reads a
//! fresh `BytesMut` copy per operation on both sides, made and freed outside the timed loop.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;

/// Operations per timed batch; inputs for a batch are prepared before its clock starts.
const BATCH: usize = 1000;
const RUNS: usize = 5;
const RUN_TIME: Duration = Duration::from_millis(60);
const WARM_UP: Duration = Duration::from_millis(50);

/// Times `op` over batches of inputs from `setup` for about `time`; returns ns per operation.
fn run<I>(
    time: Duration,
    setup: &mut impl FnMut() -> I,
    op: &mut impl FnMut(&mut I) -> usize,
) -> f64 {
    let mut timed = Duration::ZERO;
    let mut ops = 0u64;
    while timed < time {
        let mut inputs: Vec<I> = (0..BATCH).map(|_| setup()).collect();
        let start = Instant::now();
        let mut acc = 0usize;
        for input in &mut inputs {
            acc = acc.wrapping_add(op(input));
        }
        timed += start.elapsed();
        black_box(acc);
        drop(inputs);
        ops += BATCH as u64;
    }
    timed.as_nanos() as f64 / ops as f64
}

/// Best ns/op of ours and of rumqttc, runs interleaved.
fn compare<I, J>(
    mut ours_setup: impl FnMut() -> I,
    mut ours: impl FnMut(&mut I) -> usize,
    mut theirs_setup: impl FnMut() -> J,
    mut theirs: impl FnMut(&mut J) -> usize,
) -> (f64, f64) {
    run(WARM_UP, &mut ours_setup, &mut ours);
    run(WARM_UP, &mut theirs_setup, &mut theirs);
    let (mut best_ours, mut best_theirs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..RUNS {
        best_ours = best_ours.min(run(RUN_TIME, &mut ours_setup, &mut ours));
        best_theirs = best_theirs.min(run(RUN_TIME, &mut theirs_setup, &mut theirs));
    }
    (best_ours, best_theirs)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by substring.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cases = common::cases();
    println!("| case | ours ns/op | rumqttc ns/op | ratio (rumqttc/ours) |");
    println!("| --- | ---: | ---: | ---: |");
    for case in &cases {
        if filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        let mut rows = Vec::new();
        let decode = compare(
            || case.input(),
            |input| case.ours_decode(black_box(&input[..])),
            || case.input(),
            |input| case.theirs_decode(black_box(input)),
        );
        rows.push(("decode", decode));

        let mut ours_buf = [0u8; 2048];
        let mut their_buf = BytesMut::with_capacity(2048);
        let encode = compare(
            || (),
            |_: &mut ()| {
                let n = case.ours_encode(&mut ours_buf);
                black_box(&ours_buf);
                n
            },
            || (),
            |_: &mut ()| {
                let n = case.theirs_encode(&mut their_buf);
                black_box(&their_buf);
                n
            },
        );
        rows.push(("encode", encode));

        for (what, (ours, theirs)) in rows {
            let label = format!("{what} {} ({} B)", case.name, case.bytes.len());
            println!(
                "| {label} | {ours:.1} | {theirs:.1} | {:.2}× |",
                theirs / ours
            );
        }
    }
}
