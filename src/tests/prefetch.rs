//! The paths that prefetch (`crate::prefetch`), which CI runs under miri: a
//! lookup that misses, and an insert of a new key, once the shard counts.

use crate::Cache;

#[test]
fn lookups_and_inserts_that_prefetch_read_what_was_written() {
    // A mock clock: the system one asks the processor (`cpuid`), which miri
    // cannot run.
    let (clock, _time) = crate::Clock::mock();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(64)
        .shards(1)
        .clock(clock)
        .build()
        .unwrap();
    // The shard counts from 32 entries on; every round after that prefetches
    // on the miss and on the insert.
    for k in 0..200u64 {
        assert_eq!(cache.get(&k), None, "key {k} was never written");
        cache.insert(k, k * 2);
        assert_eq!(cache.get(&k), Some(k * 2), "key {k} was just written");
    }
    assert_eq!(cache.len(), 64);
    cache.validate();
}
