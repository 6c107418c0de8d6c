//! Bytes per entry, measured with a counting global allocator: 1M u64 → u64
//! entries in a cache of capacity 1M, for larder, quick_cache and moka.
//!
//! `cargo run --release --example memory`

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: u64 = 1_000_000;

/// Builds a cache, fills it with `N` keys, and returns (resident entries, bytes held).
fn measure<C>(
    build: impl FnOnce() -> C,
    fill: impl Fn(&C, u64),
    len: impl Fn(&C) -> u64,
) -> (u64, i64) {
    let region = Region::new(GLOBAL);
    let cache = build();
    for k in 0..N {
        fill(&cache, k);
    }
    let resident = len(&cache);
    let stats = region.change();
    // stats_alloc books a growing realloc under bytes_allocated (and a shrinking
    // one under bytes_deallocated), so the net is just the difference.
    let held = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
    drop(cache);
    (resident, held)
}

fn main() {
    let mut rows = Vec::new();
    for (name, eviction) in [
        ("larder (TinyLfu)", larder::Eviction::TinyLfu),
        ("larder (Lru)", larder::Eviction::Lru),
        ("larder (Lfu)", larder::Eviction::Lfu),
    ] {
        rows.push((
            name,
            measure(
                || {
                    larder::Cache::<u64, u64>::builder()
                        .max_capacity(N)
                        .eviction(eviction)
                        .build()
                        .unwrap()
                },
                |c, k| c.insert(k, k),
                |c| c.len() as u64,
            ),
        ));
    }
    rows.push((
        "quick_cache",
        measure(
            || quick_cache::sync::Cache::<u64, u64>::new(N as usize),
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    ));
    rows.push((
        "moka",
        measure(
            || moka::sync::Cache::<u64, u64>::new(N),
            |c, k| c.insert(k, k),
            |c| {
                c.run_pending_tasks();
                c.entry_count()
            },
        ),
    ));
    println!("| cache | entries | bytes held | bytes per entry |");
    println!("|---|---:|---:|---:|");
    for (name, (entries, bytes)) in rows {
        println!(
            "| {name} | {entries} | {bytes} | {:.1} |",
            bytes as f64 / entries.max(1) as f64
        );
    }
}
