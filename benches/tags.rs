//! What tags cost.
//!
//! * `invalidate_tag`: one call on a tag carried by m entries of a 1M-entry
//!   cache, m = 1k, 10k, 100k (time should grow linearly with m), right after
//!   the m entries were written (`invalidate_tag`) and with the CPU caches
//!   flushed in between (`invalidate_tag_cold`).
//! * `get_untagged`: reads of untagged entries, in a cache where other entries
//!   carry tags, beside the same reads in a cache with no tags at all.
//! * `insert_tags`: inserts of fresh keys into a full cache, plain and with two
//!   tags.

mod common;

use std::time::{Duration, Instant};

use common::{zipf_keys, Rng, SAMPLES};
use criterion::{BenchmarkId, Criterion, Throughput};
use larder::{Cache, EntryOptions};

const CAPACITY: u64 = 100_000;

/// Reads one word per cache line of a buffer twice the size of the last-level
/// cache, so that what the setup touched is no longer cached (reads, so that
/// no dirty lines are left to be written back during the measurement).
fn evict_cpu_caches(buffer: &[u64]) {
    let sum = buffer
        .iter()
        .step_by(8)
        .fold(0u64, |a, &w| a.wrapping_add(w));
    std::hint::black_box(sum);
}

fn invalidate_tag(c: &mut Criterion) {
    invalidate_tag_group(c, "invalidate_tag", false);
    invalidate_tag_group(c, "invalidate_tag_cold", true);
}

/// `cold`: the CPU caches are flushed between inserting the tagged entries
/// and invalidating them, so every size pays the misses a tag invalidated
/// long after its entries were written pays.
fn invalidate_tag_group(c: &mut Criterion, name: &str, cold: bool) {
    let flush: Vec<u64> = (0..if cold { 8u64 << 20 } else { 0 }).collect();
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(2_000_000)
        .initial_capacity(1_100_000)
        .build()
        .unwrap();
    // 1M entries, each with a tag of its own group of 1,000.
    for k in 0..1_000_000u64 {
        cache.insert_with(k, k, EntryOptions::new().tags([k / 1_000]));
    }
    for m in [1_000u64, 10_000, 100_000] {
        group.throughput(Throughput::Elements(m));
        group.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // m entries (outside the 1M) carry the tag "hot".
                    for k in 0..m {
                        let key = 10_000_000 + k;
                        cache.insert_with(key, key, EntryOptions::new().tags(["hot"]));
                    }
                    evict_cpu_caches(&flush);
                    let start = Instant::now();
                    cache.invalidate_tag("hot");
                    total += start.elapsed();
                }
                total
            })
        });
    }
    assert_eq!(cache.len(), 1_000_000);
    group.finish();
}

fn get_untagged(c: &mut Criterion) {
    let keys = zipf_keys(0xBEEF);
    let plain: Cache<u64, u64> = Cache::builder().max_capacity(2 * CAPACITY).build().unwrap();
    let mixed: Cache<u64, u64> = Cache::builder().max_capacity(2 * CAPACITY).build().unwrap();
    for k in (0..CAPACITY).rev() {
        plain.insert(k, k);
        mixed.insert(k, k);
        // As many neighbours in the same shards: untagged in one cache,
        // tagged in the other.
        let other = 1 << 40 | k;
        plain.insert(other, k);
        mixed.insert_with(other, k, EntryOptions::new().tags([k % 100, 7]));
    }
    let mut group = c.benchmark_group("get_untagged");
    group.throughput(Throughput::Elements(1));
    for (name, cache) in [("no_tags", &plain), ("tags_elsewhere", &mixed)] {
        group.bench_function(name, |b| {
            let mut at = 0;
            b.iter(|| {
                at = (at + 1) & (SAMPLES - 1);
                std::hint::black_box(cache.get(&(keys[at] % CAPACITY)))
            })
        });
    }
    group.finish();
}

fn insert_tags(c: &mut Criterion) {
    let mut rng = Rng(99);
    let fresh: Vec<u64> = (0..SAMPLES).map(|_| rng.next()).collect();
    let plain: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let tagged: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    for k in 0..CAPACITY {
        plain.insert(k, k);
        tagged.insert_with(k, k, EntryOptions::new().tags([k % 1_000, 1_000_000]));
    }
    let mut group = c.benchmark_group("insert_tags");
    group.throughput(Throughput::Elements(1));
    group.bench_function("plain", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) & (SAMPLES - 1);
            plain.insert(fresh[at], 0)
        })
    });
    group.bench_function("two_tags", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) & (SAMPLES - 1);
            let k = fresh[at];
            tagged.insert_with(k, 0, EntryOptions::new().tags([k % 1_000, 1_000_000]))
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    invalidate_tag(&mut c);
    get_untagged(&mut c);
    insert_tags(&mut c);
    c.final_summary();
}
