//! The mixed workload of `throughput` (90% `get`, insert on a miss, 10%
//! `insert`; Zipf(1.0) over 1M keys, capacity 100k) with larder and
//! quick_cache taking turns: short rounds in the order A B B A, so that a slow
//! spell of the shared machine lands on both subjects instead of on whichever
//! criterion happened to be measuring. Prints, per thread count, each
//! subject's median ns per operation and the median of the per-round ratios
//! (quick_cache's time / larder's; above 1.0× means larder is faster).
//!
//! ```text
//! cargo bench --bench interleaved [-- ROUNDS] [--quick-shards N]
//! ```
//!
//! `--quick-shards N` gives quick_cache `N` shards (a power of two) instead of
//! its default (four per core), to compare the two at larder's shard count.

use std::sync::Barrier;
use std::time::Instant;

use larder::Cache;

mod common;

use common::{zipf_keys, SAMPLES};

const CAPACITY: u64 = 100_000;
/// Operations per thread in one round (about 0.1 s).
const ROUND_OPS: u64 = 3_000_000;

trait Subject: Sync {
    fn get(&self, key: u64) -> Option<u64>;
    fn insert(&self, key: u64, value: u64);
}

impl Subject for Cache<u64, u64> {
    fn get(&self, key: u64) -> Option<u64> {
        <Cache<u64, u64>>::get(self, &key)
    }
    fn insert(&self, key: u64, value: u64) {
        <Cache<u64, u64>>::insert(self, key, value)
    }
}

impl Subject for quick_cache::sync::Cache<u64, u64> {
    fn get(&self, key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }
    fn insert(&self, key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value)
    }
}

/// Runs `ops` mixed operations on each of `threads` threads, thread `t`
/// starting at `cursor + t`-th share of the stream; ns per operation of the
/// whole cache.
fn round(cache: &dyn Subject, keys: &[u64], threads: usize, cursor: usize, ops: u64) -> f64 {
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let mut at = (cursor + t * SAMPLES / threads) % SAMPLES;
                barrier.wait();
                for i in 0..ops {
                    let k = keys[at];
                    if i % 10 == 0 || cache.get(k).is_none() {
                        cache.insert(k, k);
                    }
                    at = (at + 1) & (SAMPLES - 1);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    });
    elapsed.as_nanos() as f64 / (ops * threads as u64) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// quick_cache with its defaults, or with `shards` shards.
fn quick(shards: Option<usize>) -> quick_cache::sync::Cache<u64, u64> {
    let Some(shards) = shards else {
        return quick_cache::sync::Cache::new(CAPACITY as usize);
    };
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(CAPACITY as usize)
        .weight_capacity(CAPACITY)
        .shards(shards)
        .build()
        .unwrap_or_else(|e| panic!("quick_cache refused {shards} shards: {e:?}"));
    quick_cache::sync::Cache::with_options(
        options,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick_shards: Option<usize> = args.iter().position(|a| a == "--quick-shards").map(|i| {
        match args.get(i + 1).map(|n| n.parse()) {
            Some(Ok(n)) => n,
            _ => panic!("--quick-shards needs a count"),
        }
    });
    let rounds: usize = args
        .iter()
        .enumerate()
        .filter(|&(i, _)| i == 0 || args[i - 1] != "--quick-shards")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(15);
    if let Some(n) = quick_shards {
        println!("quick_cache with {n} shards");
    }
    let keys = zipf_keys(0xC0FFEE);
    println!("| threads | larder ns/op | quick_cache ns/op | ratio (median of {rounds} rounds) | ratio range |");
    println!("|---:|---:|---:|---:|---:|");
    for threads in [1, 2] {
        let larder: Cache<u64, u64> = Cache::builder().max_capacity(CAPACITY).build().unwrap();
        let quick = quick(quick_shards);
        let subjects: [&dyn Subject; 2] = [&larder, &quick];
        let mut cursor = [0usize; 2];
        // Warm both to a steady state.
        for (s, c) in subjects.iter().zip(&mut cursor) {
            round(*s, &keys, 1, *c, SAMPLES as u64);
            *c = (*c + SAMPLES / 2) % SAMPLES;
        }
        let (mut times, mut ratios) = ([Vec::new(), Vec::new()], Vec::new());
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [0, 1, 1, 0]
            } else {
                [1, 0, 0, 1]
            };
            let mut sum = [0.0; 2];
            for i in order {
                sum[i] += round(subjects[i], &keys, threads, cursor[i], ROUND_OPS / 2);
                cursor[i] = (cursor[i] + (ROUND_OPS / 2) as usize) % SAMPLES;
            }
            times[0].push(sum[0] / 2.0);
            times[1].push(sum[1] / 2.0);
            ratios.push(sum[1] / sum[0]);
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {threads} | {:.1} | {:.1} | {:.2}× | {lo:.2}–{hi:.2} |",
            median(times[0].clone()),
            median(times[1].clone()),
            median(ratios),
        );
    }
}
