//! A write over the capacity runs a bounded share of the timer wheel's work
//! before it evicts: the wheel owing a whole slot's cascade does not make one
//! insert run it all under the shard's write lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Cache, Clock, EntryOptions, Eviction, RemovalCause};

/// A one-shard cache of `capacity` entries on a mock clock, filled with
/// deadlines 600 s out (within 0.1 s of each other: one slot of a high
/// level), then the clock moved 590 s: nothing is due, but the slot's
/// deadlines are owed their move down the levels.
///
/// Weighted, each entry weighs 10,000 (bytes, say): a write's share of the
/// wheel's work grows with the entries it must displace, not with its
/// weight (two steps per unit of weight over ran the whole cascade).
#[test]
fn a_full_shard_writes_without_running_the_wheels_whole_cascade() {
    let evictions = [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu];
    for (eviction, weight) in evictions
        .into_iter()
        .flat_map(|e| [(e, None), (e, Some(10_000))])
    {
        let capacity = 20_000u32;
        let (clock, time) = Clock::mock();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        let builder = Cache::builder()
            .shards(1)
            .eviction(eviction)
            .clock(clock)
            .eviction_listener(move |k, _, cause| log.lock().unwrap().push((k, cause)));
        let builder = match weight {
            None => builder.max_capacity(u64::from(capacity)),
            Some(w) => builder
                .max_capacity(u64::from(capacity) * u64::from(w))
                .weigher(move |_: &u32, _: &u32| w),
        };
        let cache: Cache<u32, u32> = builder.build().expect("valid settings");
        for k in 0..capacity {
            let ttl = Duration::from_secs(600) + Duration::from_micros(u64::from(k) % 100_000);
            cache.insert_with(k, k, EntryOptions::new().ttl(ttl));
        }
        assert_eq!(cache.wheels_behind(), vec![false]);
        time.advance(Duration::from_secs(590));
        let later = EntryOptions::new().ttl(Duration::from_secs(3600));
        cache.insert_with(capacity, 0, later.clone());
        // The insert evicted one live entry by policy, and left the rest of
        // the cascade for later writes.
        let case = format!("{eviction:?}, weight {weight:?}");
        let evicted = std::mem::take(&mut *heard.lock().unwrap());
        assert_eq!(evicted.len(), 1, "{case}");
        assert_eq!(evicted[0].1, RemovalCause::Size, "{case}");
        assert_eq!(
            cache.wheels_behind(),
            vec![true],
            "{case}: the cascade was run whole"
        );
        // Later writes finish it, a few batches each.
        let mut writes = 0;
        while cache.wheels_behind()[0] {
            writes += 1;
            assert!(writes <= capacity, "{case}: the cascade never ends");
            cache.insert_with(capacity + writes, 0, later.clone());
        }
        assert!(writes > 1, "{case}: {writes} writes");
        cache.validate();
        // Past the deadlines, the entries written first are gone as expired,
        // and only the later ones are read.
        time.advance(Duration::from_secs(11));
        assert_eq!(cache.get(&(capacity / 2)), None, "{case}");
        assert_eq!(cache.get(&(capacity + writes)), Some(0), "{case}");
        cache.run_pending_tasks();
        let expired = heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| *c == RemovalCause::Expired)
            .count();
        assert!(expired > 0, "{case}");
        assert!(cache.len() <= capacity as usize, "{case}");
        cache.validate();
    }
}
