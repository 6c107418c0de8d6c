//! What maintenance of an empty shard allocates: nothing, with or without the
//! room `initial_capacity` reserved. Counted with a global allocator that
//! counts every thread's allocations, so this binary runs one test, which
//! makes the checks one after another (the harness's own threads then stay
//! quiet while they count).

use std::alloc::System;
use std::time::Duration;

use larder::{Cache, Clock};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and bytes allocated while `f` runs.
fn counted(f: impl FnOnce()) -> (usize, usize) {
    let region = Region::new(GLOBAL);
    f();
    let change = region.change();
    (
        change.allocations + change.reallocations,
        change.bytes_allocated,
    )
}

#[test]
fn maintenance_and_refused_writes_on_empty_shards_allocate_nothing() {
    invalidate_all_on_an_empty_cache_allocates_nothing();
    maintenance_of_empty_shards_allocates_nothing();
    refused_writes_into_an_empty_shard_allocate_nothing();
}

fn invalidate_all_on_an_empty_cache_allocates_nothing() {
    for initial in [0, 1 << 16] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(1 << 16)
            .shards(4)
            .initial_capacity(initial)
            .build()
            .unwrap();
        for k in 0..1_000 {
            cache.insert(k, k);
        }
        cache.invalidate_all();
        let (allocations, bytes) = counted(|| {
            for _ in 0..20 {
                cache.invalidate_all();
            }
        });
        assert!(
            bytes < 4096,
            "initial_capacity {initial}: 20 calls allocated {allocations} times, {bytes} bytes"
        );
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), Some(1));
    }
}

fn maintenance_of_empty_shards_allocates_nothing() {
    for initial in [0, 4_000] {
        let (clock, _time) = Clock::mock();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(10_000)
            .shards(4)
            .initial_capacity(initial)
            .time_to_live(Duration::from_secs(60))
            .clock(clock)
            .build()
            .unwrap();
        cache.insert(1, 1);
        cache.remove(&1);
        cache.run_pending_tasks();
        let (allocations, _) = counted(|| {
            for _ in 0..1_000 {
                cache.run_pending_tasks();
            }
        });
        assert!(
            allocations < 10,
            "initial_capacity {initial}: 1000 passes over empty shards allocated {allocations} times"
        );
    }
}

fn refused_writes_into_an_empty_shard_allocate_nothing() {
    for initial in [0, 4_000] {
        let cache: Cache<u64, Vec<u8>> = Cache::builder()
            .max_capacity(1_000)
            .shards(1)
            .weigher(|_: &u64, v: &Vec<u8>| v.len() as u32)
            .initial_capacity(initial)
            .time_to_live(Duration::from_secs(60))
            .build()
            .unwrap();
        let heavy = vec![0u8; 2_000];
        assert!(cache.try_insert(1, heavy.clone()).is_err());
        let mut values: Vec<Vec<u8>> = (0..1_000).map(|_| heavy.clone()).collect();
        let (allocations, _) = counted(|| {
            for k in 0..1_000 {
                let value = values.pop().expect("one per write");
                assert!(cache.try_insert(k, value).is_err());
            }
        });
        assert!(
            allocations < 10,
            "initial_capacity {initial}: 1000 refused writes allocated {allocations} times"
        );
    }
}
