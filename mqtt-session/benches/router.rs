//! Routing one topic among 10 000 filters: the `Router` trie against a linear scan with
//! `mqtt_proto::matches`, measured in the same run.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mqtt_proto::{TopicFilter, matches};
use mqtt_session::Router;

/// 10 000 distinct filters shaped like a fleet: per site and device a mix of exact topics,
/// '+' on the metric or the device kind, and '#' below a device.
fn filters() -> Vec<String> {
    let mut filters = Vec::with_capacity(10_000);
    for site in 0..100 {
        for device in 0..100 {
            filters.push(match (site * 100 + device) % 5 {
                0 => format!("site/{site}/device/{device}/+"),
                1 => format!("site/{site}/device/{device}/temperature"),
                2 => format!("site/{site}/+/{device}/status"),
                3 => format!("site/{site}/device/{device}/#"),
                _ => format!("+/{site}/device/{device}/alarm/+"),
            });
        }
    }
    filters
}

fn bench(c: &mut Criterion) {
    let filters = filters();
    let mut router = Router::new();
    for (key, f) in filters.iter().enumerate() {
        assert!(router.insert(TopicFilter::new(f).expect("valid filter"), key));
    }
    assert_eq!(router.len(), 10_000);

    let mut group = c.benchmark_group("match one topic among 10000 filters");
    for topic in [
        // A hit on an exact filter, a hit through a last-level '+', one through a '+' in the
        // middle, and a miss at the first level.
        "site/42/device/16/temperature",
        "site/42/device/15/humidity",
        "site/42/lamp/17/status",
        "factory/1/line/2",
    ] {
        let linear = filters.iter().filter(|f| matches(f, topic)).count();
        let mut trie = 0;
        router.for_each_match(topic, |_| trie += 1);
        assert_eq!(trie, linear, "{topic}");
        eprintln!("{topic}: {trie} matching filters");

        group.bench_function(format!("router {topic}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                router.for_each_match(black_box(topic), |k| n += black_box(*k) & 1);
                n
            });
        });
        group.bench_function(format!("linear {topic}"), |b| {
            b.iter(|| {
                let topic = black_box(topic);
                filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| matches(f, topic))
                    .map(|(k, _)| black_box(k) & 1)
                    .sum::<usize>()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
