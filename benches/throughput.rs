//! `get` and `insert` throughput of larder beside quick_cache and moka (and
//! `compute` beside moka's `and_compute_with`), measured in the same run so
//! that ratios are meaningful on a noisy machine.
//!
//! Workload: u64 keys and values, Zipf(1.0) over 1M keys, capacity
//! 100k. Multi-threaded groups report the time per operation of the whole cache
//! (wall time divided by the number of threads' operations), so 1 and 2 threads
//! are directly comparable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use larder::{Cache, Eviction};

mod common;

use common::{zipf_keys, Rng, SAMPLES};

const CAPACITY: u64 = 100_000;

trait Subject: Sync {
    fn get(&self, key: u64) -> Option<u64>;
    fn insert(&self, key: u64, value: u64);
}

struct Larder(Cache<u64, u64>, bool);
impl Subject for Larder {
    fn get(&self, key: u64) -> Option<u64> {
        if self.1 {
            self.0.peek(&key)
        } else {
            self.0.get(&key)
        }
    }
    fn insert(&self, key: u64, value: u64) {
        self.0.insert(key, value)
    }
}

struct Quick(quick_cache::sync::Cache<u64, u64>);
impl Subject for Quick {
    fn get(&self, key: u64) -> Option<u64> {
        self.0.get(&key)
    }
    fn insert(&self, key: u64, value: u64) {
        self.0.insert(key, value)
    }
}

struct Moka(moka::sync::Cache<u64, u64>);
impl Subject for Moka {
    fn get(&self, key: u64) -> Option<u64> {
        self.0.get(&key)
    }
    fn insert(&self, key: u64, value: u64) {
        self.0.insert(key, value)
    }
}

fn larder(eviction: Eviction, peek: bool) -> Box<dyn Subject> {
    let cache = Cache::builder()
        .max_capacity(CAPACITY)
        .eviction(eviction)
        .build()
        .unwrap();
    Box::new(Larder(cache, peek))
}

fn subjects(with_peek: bool) -> Vec<(&'static str, Box<dyn Subject>)> {
    let mut v: Vec<(&'static str, Box<dyn Subject>)> = Vec::new();
    if with_peek {
        v.push(("larder_peek", larder(Eviction::Lru, true)));
    }
    v.push(("larder_tinylfu", larder(Eviction::TinyLfu, false)));
    v.push(("larder_lru", larder(Eviction::Lru, false)));
    v.push(("larder_lfu", larder(Eviction::Lfu, false)));
    v.push((
        "quick_cache",
        Box::new(Quick(quick_cache::sync::Cache::new(CAPACITY as usize))),
    ));
    v.push(("moka", Box::new(Moka(moka::sync::Cache::new(CAPACITY)))));
    v
}

/// One operation of a workload, on a key, the `i`th of its thread.
type Step<'a> = dyn Fn(u64, usize) + Sync + 'a;

/// Runs `op` over the key stream on `threads` threads, `iters` operations each;
/// returns the wall time per operation of the whole cache.
fn run(threads: usize, iters: u64, keys: &[u64], op: &Step<'_>) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let mut at = (t * SAMPLES / threads) % SAMPLES;
                barrier.wait();
                for i in 0..iters {
                    op(keys[at], i as usize);
                    at = (at + 1) & (SAMPLES - 1);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed() / threads as u32
    })
}

/// Read-only Zipf lookups over a cache preloaded with the 100k most popular keys.
fn read_only(c: &mut Criterion) {
    let keys = zipf_keys(0x5EED);
    let mut group = c.benchmark_group("read_only_zipf");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        for (name, cache) in subjects(true) {
            // Hottest first: inserted coldest first, W-TinyLfu turned some
            // of the hottest keys away once its first shards were full (938
            // of the top 1,000 resident, 80.7% of lookups hitting, against
            // 83–84% for the others), so the subjects timed different mixes
            // of hits and misses.
            for k in 0..CAPACITY {
                cache.insert(k, k);
            }
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &keys, &|k, _| {
                        std::hint::black_box(cache.get(k));
                    })
                })
            });
        }
    }
    group.finish();
}

/// 90% get (insert on miss), 10% insert, Zipf keys, capacity 10% of the keys.
fn mixed(c: &mut Criterion) {
    let keys = zipf_keys(0xC0FFEE);
    let mut group = c.benchmark_group("mixed_zipf_90_10");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        for (name, cache) in subjects(false) {
            let op = |k: u64, i: usize| {
                if i % 10 == 0 || cache.get(k).is_none() {
                    cache.insert(k, k);
                }
            };
            // Warm up to a steady state before measuring.
            run(1, SAMPLES as u64, &keys, &op);
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| run(threads, iters, &keys, &op))
            });
        }
    }
    group.finish();
}

/// Read-modify-writes: every operation counts its Zipf key up by one,
/// atomically (larder's `compute`, moka's `entry().and_compute_with`), and,
/// for scale, larder's `get` then `insert`, which loses updates under
/// contention. Same keys and capacity as the mix: a key not resident is
/// inserted at 1, evicting. quick_cache has no atomic read-modify-write.
fn compute(c: &mut Criterion) {
    use larder::Compute;
    use moka::ops::compute::Op;
    let keys = zipf_keys(0xC0DE);
    let mut group = c.benchmark_group("compute_zipf");
    group.throughput(Throughput::Elements(1));
    let larder: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let moka: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(CAPACITY);
    let plain: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
    let subjects: [(&str, &Step<'_>); 3] = [
        ("larder_compute", &|k, _| {
            let out = larder.compute(k, |n| Compute::Put(n.map_or(1, |n| n + 1)));
            std::hint::black_box(out.is_ok());
        }),
        ("moka_and_compute_with", &|k, _| {
            let out = moka
                .entry(k)
                .and_compute_with(|e| Op::Put(e.map_or(1, |e| e.into_value() + 1)));
            std::hint::black_box(out);
        }),
        ("larder_get_then_insert", &|k, _| {
            plain.insert(k, plain.get(&k).map_or(1, |n| n + 1));
        }),
    ];
    for threads in [1, 2] {
        for (name, op) in subjects {
            // Warm up to a steady state before measuring.
            run(1, SAMPLES as u64, &keys, op);
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| run(threads, iters, &keys, op))
            });
        }
    }
    group.finish();
}

/// A bijection on `u64` (splitmix64's finalizer): distinct counts, distinct
/// scattered keys.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Single-thread micro operations: a hit (all but about 1% of them for
/// larder, whose shards split the capacity), a guaranteed miss, and an
/// insert of a new key that evicts.
fn micro(c: &mut Criterion) {
    let mut rng = Rng(42);
    let present: Vec<u64> = (0..SAMPLES).map(|_| rng.next() % CAPACITY).collect();
    let absent: Vec<u64> = present.iter().map(|k| k + (1 << 40)).collect();
    for (group_name, keys, insert) in [
        ("get_hit", &present, false),
        ("get_miss", &absent, false),
        // Its keys are made as it goes (below); `present` only paces it.
        ("insert_evicting", &present, true),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        for (name, cache) in subjects(false) {
            for k in 0..CAPACITY {
                cache.insert(k, k);
            }
            // New keys for every insert, across criterion's calls: replaying
            // a stream of random keys from its start at each call made about
            // one insert in ten an update of a key still resident. A plain load and store
            // (one thread), not an atomic add, so the count costs little.
            let next = AtomicU64::new(0);
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    run(1, iters, keys, &|k, _| {
                        if insert {
                            let n = next.load(Ordering::Relaxed);
                            next.store(n + 1, Ordering::Relaxed);
                            let k = mix(n) | 1 << 63;
                            cache.insert(k, k);
                        } else {
                            std::hint::black_box(cache.get(k));
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = read_only, mixed, micro, compute
}
criterion_main!(benches);
