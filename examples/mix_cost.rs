//! The throughput benchmark's mixed workload as a plain loop, for counting
//! what one operation costs under a simulator instead of timing it: 90% `get`
//! (insert on a miss), 10% `insert`, Zipf(1.0) over 1M keys, capacity 100k,
//! one thread, after a warm-up of 1M operations.
//!
//! Timings on a shared machine swing by half from run to run; instruction
//! and simulated cache-miss counts do not. `benches/mix_cost.sh` runs this
//! under `valgrind --tool=callgrind --cache-sim=yes` at two lengths and
//! prints the difference per operation, for larder and quick_cache.
//!
//! `cargo run --release --example mix_cost -- [larder|quick_cache] [OPERATIONS] [SHARDS]`
//!
//! `SHARDS` sets larder's shard count (default: the builder's, which depends
//! on the cores), to see what the count costs one thread.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{zipf_keys, SAMPLES};

const CAPACITY: u64 = 100_000;
const WARM_UP: usize = 1 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let subject = args.next().unwrap_or_else(|| "larder".into());
    let operations: usize = match args.next().map(|n| n.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("OPERATIONS must be a count: {e}");
            std::process::exit(2);
        }
    };
    let shards: Option<usize> = match args.next().map(|n| n.parse()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("SHARDS must be a count: {e}");
            std::process::exit(2);
        }
    };
    let keys = zipf_keys(0xC0FFEE);
    let hits = match subject.as_str() {
        "larder" => {
            let mut builder = larder::Cache::builder().max_capacity(CAPACITY);
            if let Some(shards) = shards {
                builder = builder.shards(shards);
            }
            let cache: larder::Cache<u64, u64> = match builder.build() {
                Ok(cache) => cache,
                Err(e) => {
                    eprintln!("cannot build the cache: {e}");
                    std::process::exit(2);
                }
            };
            mix(&keys, operations, |k| cache.get(&k), |k| cache.insert(k, k))
        }
        "quick_cache" => {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(CAPACITY as usize);
            mix(&keys, operations, |k| cache.get(&k), |k| cache.insert(k, k))
        }
        other => {
            eprintln!("unknown subject {other:?}: larder or quick_cache");
            std::process::exit(2);
        }
    };
    println!("{subject}: {operations} operations after the warm-up, {hits} hits");
}

/// Runs the warm-up, then `operations` operations of the mix; returns the hits
/// among the latter.
fn mix(
    keys: &[u64],
    operations: usize,
    get: impl Fn(u64) -> Option<u64>,
    insert: impl Fn(u64),
) -> usize {
    let mut hits = 0;
    for i in 0..WARM_UP + operations {
        let key = keys[i & (SAMPLES - 1)];
        if i % 10 == 0 {
            insert(key);
        } else if get(key).is_some() {
            hits += usize::from(i >= WARM_UP);
        } else {
            insert(key);
        }
    }
    hits
}
