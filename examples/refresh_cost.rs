//! What `refresh_after` adds to a hit: `get_or_load` hits on uniformly random
//! keys among 1M `u64` entries of a cache with a time-to-live (and room for
//! twice as many, so that every key stays), with and without
//! `refresh_after` (no entry comes due, so every call is a plain hit).
//! Prints the nanoseconds per hit of the loop.
//!
//! Run it under callgrind at two lengths and divide the difference by the
//! hits between them, as `benches/mix_cost.sh` does for the mix, or time it
//! (runs of the two alternating, on a noisy machine):
//!
//! ```text
//! cargo run --release --example refresh_cost -- [ttl|refresh] [HITS]
//! ```
use std::time::{Duration, Instant};

const ENTRIES: u64 = 1_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let refresh = match args.next().as_deref() {
        Some("refresh") => true,
        Some("ttl") | None => false,
        Some(other) => panic!("ttl or refresh, not {other}"),
    };
    let hits: u64 = args
        .next()
        .map_or(10_000_000, |n| n.parse().expect("a count"));
    let mut builder = larder::Cache::<u64, u64>::builder()
        .max_capacity(2 * ENTRIES)
        .time_to_live(Duration::from_secs(3_600));
    if refresh {
        builder = builder.refresh_after(Duration::from_secs(600));
    }
    let cache = builder.build().expect("valid settings");
    for k in 0..ENTRIES {
        cache.insert(k, k);
    }
    let start = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut sum = 0u64;
    for _ in 0..hits {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % ENTRIES;
        sum = sum.wrapping_add(cache.get_or_load(k, |k| *k));
    }
    let per_hit = start.elapsed().as_nanos() as f64 / hits.max(1) as f64;
    println!("{per_hit:.1} ns per hit (checksum {sum})");
}
