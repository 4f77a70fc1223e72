//! Criterion benchmark: our codec against rumqttc's `mqttbytes` on the same bytes.
//!
//! Every case is first checked outside timing: both codecs encode it to identical bytes and
//! each decodes the other's. Decoding takes a fresh `BytesMut` copy of the bytes per iteration
//! on both sides (rumqttc consumes it); copying and freeing it happen outside the timed routine.
//! Encoding writes into a reused buffer: a `[u8; N]` for us, a cleared `BytesMut` for rumqttc.

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn codec(c: &mut Criterion) {
    for case in common::cases() {
        let throughput = Throughput::Bytes(case.bytes.len() as u64);

        let mut g = c.benchmark_group(format!("decode/{}", case.id));
        g.throughput(throughput.clone());
        g.bench_function("ours", |b| {
            b.iter_batched_ref(
                || case.input(),
                |input| case.ours_decode(black_box(&input[..])),
                BatchSize::SmallInput,
            );
        });
        g.bench_function("rumqttc", |b| {
            b.iter_batched_ref(
                || case.input(),
                |input| case.theirs_decode(black_box(input)),
                BatchSize::SmallInput,
            );
        });
        g.finish();

        let mut g = c.benchmark_group(format!("encode/{}", case.id));
        g.throughput(throughput);
        g.bench_function("ours", |b| {
            let mut buf = [0u8; 2048];
            b.iter(|| {
                let n = case.ours_encode(&mut buf);
                black_box(&buf);
                n
            });
        });
        g.bench_function("rumqttc", |b| {
            let mut buf = BytesMut::with_capacity(2048);
            b.iter(|| {
                let n = case.theirs_encode(&mut buf);
                black_box(&buf);
                n
            });
        });
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
