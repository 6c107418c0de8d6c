//! What a shard's slab and table hold: a full shard evicts without growing
//! them past its capacity, and an emptied shard keeps the room
//! `initial_capacity` reserved.

use std::time::Duration;

use crate::{Cache, Clock, Eviction};

const EVICTIONS: [Eviction; 3] = [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu];

/// Slots and buckets of a one-shard cache, after filling it to `capacity`
/// and then writing as many new keys again (each evicting one).
fn storage_after_churn(capacity: u64, eviction: Eviction, initial: usize) -> (usize, usize) {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(capacity)
        .shards(1)
        .eviction(eviction)
        .initial_capacity(initial)
        .build()
        .expect("valid settings");
    for k in 0..2 * capacity {
        cache.insert(k, k);
        assert!(cache.len() as u64 <= capacity);
    }
    assert_eq!(cache.len() as u64, capacity);
    cache.validate();
    cache.storage()[0]
}

/// A new key holds one entry over the capacity until its eviction: a slab of
/// a power-of-two capacity grew to twice that for it, a table of ten times a
/// power of two doubled its buckets.
#[test]
fn a_full_shard_evicts_without_doubling_its_slab_or_table() {
    for eviction in EVICTIONS {
        for capacity in [1024u64, 1280, 1000] {
            for initial in [0, capacity as usize] {
                let (slots, buckets) = storage_after_churn(capacity, eviction, initial);
                let case = format!("{eviction:?}, capacity {capacity}, initial {initial}");
                assert_eq!(slots, capacity as usize + 1, "{case}: slots");
                let expected = crate::store::table::Table::buckets_for(capacity as usize);
                assert_eq!(buckets, expected, "{case}: buckets");
            }
        }
    }
}

/// Weighted entries may weigh 0, so their count has no ceiling: the slab
/// still grows as far as they need.
#[test]
fn a_weighted_shard_grows_past_its_capacity_in_entries() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .weigher(|_: &u64, v: &u64| u32::from(*v != 0))
        .build()
        .expect("valid settings");
    for k in 0..1000 {
        cache.insert(k, 0);
    }
    assert_eq!(cache.len(), 1000);
    assert!(cache.storage()[0].0 >= 1000);
    cache.validate();
}

/// The room `initial_capacity` reserves survives the shard emptying, by a
/// removal, `invalidate_all` or expiry; room grown past it is given back.
#[test]
fn an_emptied_shard_keeps_the_room_initial_capacity_reserved() {
    let (clock, time) = Clock::mock();
    for eviction in EVICTIONS {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(10_000)
            .shards(1)
            .eviction(eviction)
            .initial_capacity(1_000)
            .clock(clock.clone())
            .build()
            .expect("valid settings");
        let reserved = cache.storage()[0];
        assert!(
            reserved.0 >= 1_000 && reserved.1 > 0,
            "{eviction:?}: {reserved:?}"
        );
        cache.insert(1, 1);
        cache.remove(&1);
        assert_eq!(
            cache.storage()[0],
            reserved,
            "{eviction:?}: after a removal"
        );
        for k in 0..500 {
            cache.insert(k, k);
        }
        cache.invalidate_all();
        assert_eq!(cache.len(), 0);
        assert_eq!(
            cache.storage()[0],
            reserved,
            "{eviction:?}: after invalidate_all"
        );
        for k in 0..500 {
            cache.insert_with(k, k, crate::EntryOptions::new().ttl(Duration::from_secs(1)));
        }
        time.advance(Duration::from_secs(2));
        cache.run_pending_tasks();
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.storage()[0], reserved, "{eviction:?}: after expiry");
        // Grown past the reservation, then emptied: back to it.
        for k in 0..5_000 {
            cache.insert(k, k);
        }
        assert!(cache.storage()[0].0 >= 5_000);
        cache.invalidate_entries_if(|_, _| true);
        assert_eq!(
            cache.storage()[0],
            reserved,
            "{eviction:?}: after shrinking"
        );
        cache.insert(7, 7);
        assert_eq!(cache.get(&7), Some(7));
        cache.validate();
    }
}

/// Without a reservation an emptied shard gives all its room back.
#[test]
fn an_emptied_shard_without_a_reservation_holds_nothing() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(10_000)
        .shards(1)
        .build()
        .expect("valid settings");
    for k in 0..500 {
        cache.insert(k, k);
    }
    assert!(cache.storage()[0].0 >= 500);
    for k in 0..500 {
        cache.remove(&k);
    }
    assert_eq!(cache.storage()[0], (0, 0));
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}
