//! Bytes per entry, measured with a counting global allocator: 1M u64 → u64
//! entries in a cache of capacity 1M, for larder, quick_cache and moka; then
//! larder with expiry (and with `refresh_after`, which keeps each entry's
//! write time): what 1M entries with TTLs cost, and what is left once
//! they have all expired and been reclaimed; then the three caches in a steady
//! state, after 3M distinct keys went through them (full and evicting: what a
//! cache holds beside its entries, such as quick_cache's ghosts, is there).
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
    measure_inserts(N, build, fill, len)
}

/// [`measure`] with `inserts` distinct keys.
fn measure_inserts<C>(
    inserts: u64,
    build: impl FnOnce() -> C,
    fill: impl Fn(&C, u64),
    len: impl Fn(&C) -> u64,
) -> (u64, i64) {
    let region = Region::new(GLOBAL);
    let cache = build();
    for k in 0..inserts {
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
    rows.push((
        "larder (TinyLfu, time_to_live)",
        measure(
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .time_to_live(std::time::Duration::from_secs(3600))
                    .build()
                    .unwrap()
            },
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    ));
    rows.push((
        "larder (TinyLfu, time_to_live, refresh_after)",
        measure(
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .time_to_live(std::time::Duration::from_secs(3600))
                    .refresh_after(std::time::Duration::from_secs(600))
                    .build()
                    .unwrap()
            },
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    ));
    rows.push((
        "larder (TinyLfu, refresh_after)",
        measure(
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .refresh_after(std::time::Duration::from_secs(600))
                    .build()
                    .unwrap()
            },
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    ));
    rows.push((
        "larder (TinyLfu), every entry with 2 tags",
        measure(
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .build()
                    .unwrap()
            },
            |c, k| {
                c.insert_with(
                    k,
                    k,
                    larder::EntryOptions::new().tags([k % 1_000, 1_000_000]),
                )
            },
            |c| c.len() as u64,
        ),
    ));
    rows.push((
        "larder (TinyLfu), every entry with a tag of its own",
        measure(
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .build()
                    .unwrap()
            },
            |c, k| c.insert_with(k, k, larder::EntryOptions::new().tags([k])),
            |c| c.len() as u64,
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
    expired_memory();
    steady_state();
}

/// The three default caches after 3M distinct inserts into capacity 1M: every
/// later insert evicts, so whatever a policy keeps about evicted keys is held.
fn steady_state() {
    const INSERTS: u64 = 3 * N;
    println!();
    println!("Steady state: 3M distinct keys inserted into capacity 1M:");
    println!("| cache | entries | bytes held | bytes per entry |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, (entries, bytes): (u64, i64)| {
        println!(
            "| {name} | {entries} | {bytes} | {:.1} |",
            bytes as f64 / entries.max(1) as f64
        );
    };
    row(
        "larder (TinyLfu)",
        measure_inserts(
            INSERTS,
            || {
                larder::Cache::<u64, u64>::builder()
                    .max_capacity(N)
                    .build()
                    .unwrap()
            },
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    );
    row(
        "quick_cache",
        measure_inserts(
            INSERTS,
            || quick_cache::sync::Cache::<u64, u64>::new(N as usize),
            |c, k| c.insert(k, k),
            |c| c.len() as u64,
        ),
    );
    row(
        "moka",
        measure_inserts(
            INSERTS,
            || moka::sync::Cache::<u64, u64>::new(N),
            |c, k| c.insert(k, k),
            |c| {
                c.run_pending_tasks();
                c.entry_count()
            },
        ),
    );
}

/// 1M entries with TTLs of 1–60 s on a mock clock; the clock moves 61 s and
/// maintenance runs: the cache should hold what an empty one holds.
fn expired_memory() {
    use std::time::Duration;
    let region = Region::new(GLOBAL);
    let (clock, time) = larder::Clock::mock();
    let cache = larder::Cache::<u64, u64>::builder()
        .max_capacity(N)
        .time_to_live(Duration::from_secs(3600))
        .clock(clock)
        .build()
        .unwrap();
    let net = |r: &Region<System>| {
        let s = r.change();
        s.bytes_allocated as i64 - s.bytes_deallocated as i64
    };
    let empty = net(&region);
    let mut x = 7u64;
    for k in 0..N {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ttl = Duration::from_millis(1_000 + x % 59_000);
        cache.insert_with(k, k, larder::EntryOptions::new().ttl(ttl));
    }
    let full = net(&region);
    time.advance(Duration::from_secs(61));
    cache.run_pending_tasks();
    let after = net(&region);
    println!();
    println!("larder with expiry, 1M entries with TTLs of 1-60 s:");
    println!("| state | entries | bytes held |");
    println!("|---|---:|---:|");
    println!("| empty, just built | 0 | {empty} |");
    println!("| filled | {N} | {full} |");
    println!(
        "| 61 s later, after run_pending_tasks | {} | {after} |",
        cache.len()
    );
}
