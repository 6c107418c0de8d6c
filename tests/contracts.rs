//! Black-box tests of the contracts in the crate docs: validation, the bound,
//! weights, listeners, statistics, and panic safety of user callbacks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use larder::{BuildError, Cache, Eviction, RemovalCause};

fn assert_send_sync<T: Send + Sync + Clone>() {}

#[test]
fn cache_is_a_shared_send_sync_handle() {
    assert_send_sync::<Cache<String, Vec<u8>>>();
    let a: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
    let b = a.clone();
    a.insert(1, 1);
    assert_eq!(b.get(&1), Some(1));
}

#[test]
fn builder_rejects_nonsense_with_clear_errors() {
    let missing = Cache::<u32, u32>::builder().build().unwrap_err();
    assert_eq!(missing, BuildError::MissingCapacity);
    assert!(missing.to_string().contains("max_capacity"));

    let zero = Cache::<u32, u32>::builder()
        .max_capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(zero, BuildError::ZeroCapacity);

    for shards in [0, 3, 6, larder::MAX_SHARDS * 2] {
        let err = Cache::<u32, u32>::builder()
            .max_capacity(1 << 20)
            .shards(shards)
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::InvalidShards { shards });
        assert!(err.to_string().contains("power of two"));
    }

    let err = Cache::<u32, u32>::builder()
        .max_capacity(4)
        .shards(8)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::MoreShardsThanCapacity {
            shards: 8,
            capacity: 4
        }
    );
}

/// The message for too many shards names a count that builds: the largest
/// power of two within the capacity, not the capacity itself.
#[test]
fn too_many_shards_suggests_a_count_that_builds() {
    for (capacity, most) in [(5u64, 4usize), (4, 4), (1, 1), (1000, 512)] {
        let err = Cache::<u32, u32>::builder()
            .max_capacity(capacity)
            .shards(1024)
            .build()
            .unwrap_err();
        let message = err.to_string();
        let noun = if most == 1 { "shard" } else { "shards" };
        assert!(
            message.ends_with(&format!("at most {most} {noun}")),
            "capacity {capacity}: {message}"
        );
        Cache::<u32, u32>::builder()
            .max_capacity(capacity)
            .shards(most)
            .build()
            .expect("the suggested count builds");
    }
}

#[test]
fn huge_settings_build_without_panicking() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(u64::MAX)
        .initial_capacity(16)
        .build()
        .unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.capacity(), u64::MAX);

    // Room for more entries than memory can hold is an error, not an abort.
    let err = Cache::<u64, u64>::builder()
        .max_capacity(u64::MAX)
        .initial_capacity(usize::MAX)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::InitialCapacityTooLarge {
            entries: usize::MAX
        }
    );
    assert!(err.to_string().contains("initial_capacity"));
}

#[test]
fn default_shards_respect_small_capacities() {
    let small: Cache<u32, u32> = Cache::builder().max_capacity(100).build().unwrap();
    assert_eq!(small.shard_count(), 1);
    let large: Cache<u32, u32> = Cache::builder().max_capacity(1 << 24).build().unwrap();
    assert!(large.shard_count().is_power_of_two());
    assert!(large.shard_count() >= 4);
}

#[test]
fn count_bound_holds_after_every_insert() {
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(1000)
            .eviction(eviction)
            .build()
            .unwrap();
        for i in 0..10_000 {
            cache.insert(i, i);
            assert!(cache.len() <= 1000);
        }
        assert_eq!(cache.stats().evictions, 9000);
    }
}

/// An entry of weight 0 takes no capacity, and evicting it would free
/// nothing: making room passes over such entries under every policy, even
/// where they come first in its order (the oldest, the least frequent).
#[test]
fn entries_of_weight_zero_are_not_evicted_to_make_room() {
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(100)
            .shards(1)
            .eviction(eviction)
            .weigher(|_, v| *v)
            .build()
            .unwrap();
        for k in 0..50 {
            cache.insert(k, 0);
        }
        for k in 1000..1100 {
            cache.insert(k, 1);
        }
        // The weighed entries read more often than the weightless ones,
        // and new keys that come back (warm candidates under W-TinyLfu).
        for _ in 0..3 {
            for k in 1000..1100 {
                cache.get(&k);
            }
        }
        for _ in 0..5 {
            for k in 2000..2030 {
                cache.insert(k, 1);
            }
        }
        let stats = cache.stats();
        assert!(stats.evictions > 0, "{eviction:?}");
        assert_eq!(
            stats.evicted_weight, stats.evictions,
            "{eviction:?}: each eviction freed a unit"
        );
        assert!(cache.weighted_size() <= 100, "{eviction:?}");
        assert!(
            (0..50).all(|k| cache.peek(&k) == Some(0)),
            "{eviction:?}: a weightless entry was evicted"
        );
    }
}

/// However far ahead of the weighed entries in the policy's order the
/// weightless ones stand (the least frequent under LFU, read less than the
/// victim), and whichever way their weight changes, only weighed entries
/// make room.
#[test]
fn weightless_entries_stay_out_of_the_way_of_every_eviction() {
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let sink = evicted.clone();
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(10)
            .shards(1)
            .eviction(eviction)
            .weigher(|_, v| *v)
            .eviction_listener(move |k, v, cause| {
                if cause == RemovalCause::Size {
                    sink.lock().unwrap().push((k, v));
                }
            })
            .build()
            .unwrap();
        cache.insert(100, 5);
        for _ in 0..6 {
            cache.get(&100);
        }
        for k in 0..10 {
            cache.insert(k, 0);
        }
        for f in 1..6 {
            cache.insert(10 + f, 0);
            for _ in 0..f {
                cache.get(&(10 + f));
            }
        }
        cache.insert(200, 6);
        for k in (0..16).filter(|&k| k != 10) {
            assert_eq!(cache.peek(&k), Some(0), "{eviction:?}: {k} was evicted");
        }
        // Weighed at last, 3 joins the eviction order; 400 leaves it.
        cache.insert(400, 2);
        cache.insert(3, 1);
        cache.insert(400, 0);
        for k in 500..510 {
            cache.insert(k, 4);
        }
        for k in (0..16).filter(|&k| k != 3 && k != 10).chain([400]) {
            assert_eq!(cache.peek(&k), Some(0), "{eviction:?}: {k} was evicted");
        }
        let evicted = evicted.lock().unwrap();
        assert!(!evicted.is_empty(), "{eviction:?}");
        assert!(
            evicted.iter().all(|&(_, v)| v != 0),
            "{eviction:?}: {evicted:?}"
        );
        assert!(cache.weighted_size() <= 10, "{eviction:?}");
    }
}

#[test]
fn weight_bound_holds_and_heavy_entries_are_refused() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let cache: Cache<u32, String> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .eviction(Eviction::Lru)
        .weigher(|_, v: &String| v.len() as u32)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v.len(), cause)))
        .build()
        .unwrap();
    cache.insert(1, "x".repeat(60));
    cache.insert(2, "x".repeat(30));
    assert_eq!(cache.weighted_size(), 90);
    cache.insert(3, "x".repeat(20)); // evicts 1 (LRU)
    assert_eq!(cache.weighted_size(), 50);
    assert!(cache.get(&1).is_none());
    cache.insert(4, "x".repeat(101)); // heavier than the whole cache
    assert!(cache.get(&4).is_none());
    assert_eq!(cache.weighted_size(), 50);
    cache.insert(2, "x".repeat(500)); // a too-heavy replacement removes the old value
    assert!(cache.get(&2).is_none());
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, 60, RemovalCause::Size),
            (4, 101, RemovalCause::Size),
            (2, 30, RemovalCause::Replaced),
            (2, 500, RemovalCause::Size),
        ]
    );
    assert_eq!(cache.stats().rejections, 2);
}

/// The per-entry limit is the same for a write that brings a TTL or tags
/// (which takes the store's general path) as for a plain one: an entry
/// weighing exactly the limit is taken, one unit more is refused.
#[test]
fn the_per_entry_limit_holds_for_writes_with_ttl_or_tags() {
    use larder::EntryOptions;
    use std::time::Duration;
    let options = [
        EntryOptions::new(),
        EntryOptions::new().ttl(Duration::from_secs(60)),
        EntryOptions::new().tags(["t"]),
    ];
    for (i, options) in options.into_iter().enumerate() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let cache: Cache<u32, String> = Cache::builder()
            .max_capacity(100)
            .shards(1)
            .weigher(|_, v: &String| v.len() as u32)
            .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v.len(), cause)))
            .build()
            .unwrap();
        let limit = cache.max_entry_weight() as usize;
        assert_eq!(limit, 100);
        cache.insert_with(1, "x".repeat(limit), options.clone());
        assert_eq!(cache.peek(&1).map(|v| v.len()), Some(limit), "options {i}");
        cache.insert_with(2, "x".repeat(limit + 1), options);
        assert_eq!(cache.peek(&2), None, "options {i}");
        assert_eq!(
            *log.lock().unwrap(),
            vec![(2, limit + 1, RemovalCause::Size)],
            "options {i}"
        );
    }
}

#[test]
fn weights_above_the_largest_are_clamped_not_refused() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(u64::MAX)
        .shards(1)
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    assert!(cache.try_insert(1, u32::MAX).is_ok());
    assert_eq!(cache.get(&1), Some(u32::MAX));
    assert_eq!(cache.weighted_size(), u64::from(u32::MAX - 1));
    assert_eq!(cache.stats().rejections, 0);
}

#[test]
fn a_refused_entry_reaches_the_listener_when_the_listener_panics_first() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = heard.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v| *v)
        .eviction_listener(move |k, v, cause| {
            log.lock().unwrap().push((k, v, cause));
            panic!("listener failure");
        })
        .build()
        .unwrap();
    cache.insert(7, 1);
    // Too heavy: the old value leaves as replaced, the listener panics on
    // it, and the refused entry cannot be handed back through the panic.
    let outcome = catch_unwind(AssertUnwindSafe(|| cache.try_insert(7, 99)));
    assert!(outcome.is_err(), "the listener's panic reaches the caller");
    assert_eq!(
        *heard.lock().unwrap(),
        vec![(7, 1, RemovalCause::Replaced), (7, 99, RemovalCause::Size)],
        "nothing the write touched is lost"
    );
    assert_eq!(cache.get(&7), None);
    assert_eq!(cache.try_insert(7, 99).map_err(|r| r.value), Err(99));
}

#[test]
fn a_rejected_weight_is_reported_as_counted() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    let refused = cache.try_insert(1, u32::MAX).unwrap_err();
    assert_eq!(refused.weight, u32::MAX - 1);
    assert_eq!(refused.value, u32::MAX);
}

#[test]
fn the_heaviest_entry_taken_is_the_same_for_every_key() {
    // 10 over 4 shards: shares of 3, 3, 2, 2. The limit is the smallest.
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(4)
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    for k in 0..64 {
        let refused = cache.try_insert(k, 3).unwrap_err();
        assert_eq!((refused.weight, refused.limit), (3, 2), "key {k}");
        assert!(cache.try_insert(k, 2).is_ok());
    }
}

#[test]
fn a_refused_replacement_counts_the_entry_it_removed() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v| *v)
        .record_stats()
        .build()
        .unwrap();
    cache.insert(1, 5);
    cache.insert(1, 50); // too heavy: refused, and the old value goes
    assert_eq!(cache.get(&1), None);
    let stats = cache.stats();
    assert_eq!(
        (stats.inserts, stats.invalidations, stats.rejections),
        (1, 1, 1)
    );
    assert_eq!(
        stats.inserts - stats.invalidations,
        cache.len() as u64,
        "what came in, less what left, is what is there"
    );
}

/// A refused write over a resident key hands the caller back its own key
/// and value, and the listener hears the resident's own key and value as
/// replaced: a key type whose `Eq` ignores some fields tells them apart (the
/// two keys were swapped).
#[test]
fn a_refused_replacement_hands_back_the_callers_key_and_the_listener_the_residents() {
    #[derive(Debug, Clone)]
    struct Labelled(u32, &'static str);
    impl PartialEq for Labelled {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for Labelled {}
    impl std::hash::Hash for Labelled {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }
    type Heard = Vec<(&'static str, u32, RemovalCause)>;
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let sink = heard.clone();
    let cache: Cache<Labelled, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v| *v)
        .eviction_listener(move |k: Labelled, v, cause| sink.lock().unwrap().push((k.1, v, cause)))
        .build()
        .unwrap();
    cache.insert(Labelled(1, "resident"), 5);
    let refused = cache.try_insert(Labelled(1, "caller's"), 50).unwrap_err();
    assert_eq!((refused.key.1, refused.value), ("caller's", 50));
    assert_eq!(
        *heard.lock().unwrap(),
        vec![("resident", 5, RemovalCause::Replaced)]
    );
}

#[test]
fn zero_weight_entries_are_kept_without_counting() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(2)
        .shards(1)
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, 0);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.weighted_size(), 0);
    cache.insert(1000, 2);
    assert_eq!(cache.weighted_size(), 2);
    assert_eq!(cache.get(&1000), Some(2));
}

#[test]
fn replacing_grows_weight_and_evicts_others_not_itself() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .eviction(Eviction::Lfu)
        .weigher(|_, v| *v)
        .build()
        .unwrap();
    cache.insert(1, 3);
    cache.insert(2, 3);
    cache.get(&2);
    cache.insert(3, 3);
    cache.insert(1, 9); // 1 is least frequent, but it is the one being written
    assert_eq!(cache.get(&1), Some(9));
    assert_eq!(cache.weighted_size(), 9);
    assert_eq!(cache.len(), 1);
}

/// A cache hashing with fixed keys: its sketch's collisions are the same
/// from run to run.
type Fixed =
    Cache<u32, u32, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

/// A weighted W-TinyLfu cache whose shard of 1,000 units holds 1,000 unit
/// entries: keys `0..cold` never read, the rest read five times each. The
/// second value is what the listener heard evicted for size. The hasher is
/// fixed: with a random one, about one run in a hundred had a never-read
/// key's four sketch counters all shared with keys read five times, so
/// that it held its place against a read key, as a count-min sketch may.
fn read_set(cold: u32) -> (Fixed, Arc<Mutex<Vec<u32>>>) {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let sink = evicted.clone();
    let cache: Fixed = Cache::builder()
        .hasher(Default::default())
        .max_capacity(1000)
        .shards(1)
        .weigher(|_, v| *v)
        .eviction_listener(move |k, _, cause| {
            if cause == RemovalCause::Size {
                sink.lock().unwrap().push(k);
            }
        })
        .build()
        .unwrap();
    for k in 0..1000 {
        cache.insert(k, 1);
    }
    for _ in 0..5 {
        for k in cold..1000 {
            assert_eq!(cache.get(&k), Some(1));
        }
    }
    (cache, evicted)
}

/// Under W-TinyLfu a new entry heavier than the admission window (1% of the
/// shard's capacity here) contests for room at once, as the window's
/// candidates do: one seen once is turned away by its own insert, not let
/// in to sweep out the entries read most. (The first such insert pushes the
/// window's ten entries, as hot as main's, into contests they lose on ties.)
#[test]
fn a_heavy_newcomer_contests_admission_instead_of_sweeping_the_cache() {
    let (cache, evicted) = read_set(0);
    cache.insert(5000, 900);
    assert_eq!(cache.peek(&5000), None);
    assert_eq!(evicted.lock().unwrap().last(), Some(&5000));
    for k in 6000..6010 {
        evicted.lock().unwrap().clear();
        cache.insert(k, 500);
        assert_eq!(cache.peek(&k), None);
        assert_eq!(*evicted.lock().unwrap(), [k], "only itself");
    }
    // Turned away and asked for again at once, a key finds its ghost; the
    // ghost buys the room one victim frees, not a sweep of main. (A third
    // sighting would outrank these entries, whose reads count once each.)
    for _ in 0..2 {
        evicted.lock().unwrap().clear();
        cache.insert(7000, 900);
        assert_eq!(cache.peek(&7000), None);
        assert_eq!(*evicted.lock().unwrap(), [7000], "only itself");
    }
    let kept = (0..1000).filter(|k| cache.peek(k) == Some(1)).count();
    assert!(kept >= 990, "{kept} of the 1,000 entries read kept");
    assert_eq!(cache.weighted_size(), kept as u64);
}

/// A heavy candidate that beats its first victim still needs more room: it
/// contests each victim in turn, so it takes the entries it outranks and
/// loses to the first one it does not, leaving the entries read most.
#[test]
fn a_heavy_candidate_contests_every_victim_it_needs() {
    let (cache, evicted) = read_set(20);
    // Seen once before (its sketch count is 1), so it outranks the entries
    // never read, counted before the shard was half full; then removed, so
    // that no ghost of a turned-away key lets it in either.
    cache.insert(5000, 1);
    cache.remove(&5000);
    evicted.lock().unwrap().clear();
    cache.insert(5000, 100);
    assert_eq!(cache.peek(&5000), None);
    let evicted = evicted.lock().unwrap();
    assert_eq!(evicted.last(), Some(&5000), "{evicted:?}");
    assert!(
        evicted[..evicted.len() - 1].iter().all(|&k| k < 20),
        "{evicted:?}"
    );
    assert!((20..1000).all(|k| cache.peek(&k) == Some(1)));
}

#[test]
fn listener_sees_every_cause_and_runs_outside_the_lock() {
    let causes = Arc::new(Mutex::new(Vec::new()));
    let sink = causes.clone();
    let slot: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
    let reentrant = slot.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(1)
        .eviction(Eviction::Lru)
        .eviction_listener(move |k, v, cause| {
            // Calling back into the cache would deadlock if a shard lock were held.
            if let Some(c) = reentrant.lock().unwrap().as_ref() {
                assert!(c.len() <= 1);
                let _ = c.get(&k);
            }
            sink.lock().unwrap().push((k, v, cause));
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(cache.clone());
    cache.insert(1, 10);
    cache.insert(1, 11);
    cache.insert(2, 20);
    assert_eq!(cache.remove(&2), Some(20));
    cache.insert(3, 30);
    cache.invalidate_all();
    slot.lock().unwrap().take();
    assert_eq!(
        *causes.lock().unwrap(),
        vec![
            (1, 10, RemovalCause::Replaced),
            (1, 11, RemovalCause::Size),
            (2, 20, RemovalCause::Explicit),
            (3, 30, RemovalCause::Explicit),
        ]
    );
}

/// The listener runs outside every shard lock on each path that removes
/// entries, not only on inserts and removes: tag invalidation, predicate
/// invalidation, expiry met by a read, by `iter` and by maintenance, and the
/// evictions of loads. It calls back into the cache, reading and writing
/// the very keys it hears of; a path that held a lock would deadlock, which
/// the watchdog turns into a failure.
#[test]
fn a_listener_may_call_back_into_the_cache_on_every_removal_path() {
    use larder::{Clock, EntryOptions};
    use std::time::Duration;
    let (done, watchdog) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (clock, time) = Clock::mock();
        let slot: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
        let reentrant = slot.clone();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(4)
            .shards(1)
            .clock(clock)
            .time_to_live(Duration::from_secs(10))
            .eviction_listener(move |k, _, cause| {
                let cache = reentrant.lock().unwrap().clone();
                if let Some(c) = cache {
                    let _ = c.get(&k);
                    let _ = (c.contains_key(&(k ^ 1)), c.len(), c.stats());
                    if k < 1000 {
                        c.insert(k + 1000, 0);
                    }
                }
                sink.lock().unwrap().push(cause);
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(cache.clone());
        let causes = || std::mem::take(&mut *heard.lock().unwrap());
        cache.insert_with(1, 1, EntryOptions::new().tags(["t"]));
        cache.invalidate_tag("t");
        assert!(causes().contains(&RemovalCause::Invalidated));
        cache.insert(2, 2);
        cache.invalidate_entries_if(|k, _| *k == 2);
        assert!(causes().contains(&RemovalCause::Invalidated));
        cache.insert(2, 2);
        assert_eq!(cache.remove(&2), Some(2));
        assert!(causes().contains(&RemovalCause::Explicit));
        for (k, step) in [(3, "get"), (4, "iter"), (5, "maintenance")] {
            cache.invalidate_all();
            cache.insert(k, k);
            time.advance(Duration::from_secs(11));
            causes();
            match step {
                "get" => assert_eq!(cache.get(&k), None),
                "iter" => assert_eq!(cache.iter().count(), 0),
                _ => cache.run_pending_tasks(),
            }
            cache.run_pending_tasks();
            assert!(causes().contains(&RemovalCause::Expired), "{step}");
        }
        for k in 20..30 {
            assert_eq!(cache.get_or_load(k, |k| *k), k);
        }
        assert!(causes().contains(&RemovalCause::Size));
        slot.lock().unwrap().take();
        let _ = done.send(());
    });
    watchdog
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a removal path called the listener under a lock (or a step failed)");
}

#[test]
fn panicking_weigher_leaves_the_cache_unchanged_and_usable() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, v| {
            assert!(*v != 13, "unlucky value");
            1
        })
        .build()
        .unwrap();
    cache.insert(1, 1);
    let result = catch_unwind(AssertUnwindSafe(|| cache.insert(2, 13)));
    assert!(result.is_err());
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.len(), 1);
    cache.insert(2, 2);
    assert_eq!(cache.get(&2), Some(2));
    assert_eq!(cache.weighted_size(), 2);
}

#[test]
fn panicking_listener_delivers_the_rest_and_leaves_the_cache_consistent() {
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .eviction_listener(move |k, _, _| {
            count.fetch_add(1, Ordering::SeqCst);
            assert!(k % 2 == 1, "listener rejects even keys");
        })
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, k);
    }
    // invalidate_all removes ten entries; five panics must not stop the other deliveries.
    let result = catch_unwind(AssertUnwindSafe(|| cache.invalidate_all()));
    assert!(
        result.is_err(),
        "the first listener panic reaches the caller"
    );
    assert_eq!(delivered.load(Ordering::SeqCst), 10);
    assert!(cache.is_empty());
    assert_eq!(cache.weighted_size(), 0);

    // An eviction whose listener panics: the insert itself happened.
    let small: Cache<u32, u32> = Cache::builder()
        .max_capacity(1)
        .eviction_listener(|_, _, _| panic!("listener failure"))
        .build()
        .unwrap();
    small.insert(1, 1);
    assert!(catch_unwind(AssertUnwindSafe(|| small.insert(2, 2))).is_err());
    assert_eq!(small.get(&2), Some(2));
    assert_eq!(small.len(), 1);
    small.remove(&3);
    assert_eq!(small.peek(&2), Some(2));
}

#[test]
fn evicted_weight_adds_up_the_weights_of_the_entries_evicted() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .eviction(Eviction::Lru)
        .weigher(|_, v: &u32| *v)
        .build()
        .unwrap();
    cache.insert(1, 2);
    cache.insert(2, 3);
    cache.insert(3, 4);
    assert_eq!(cache.stats().evicted_weight, 0);
    // 9 + 5 > 10: the least recent entries go, weights 2 and 3.
    cache.insert(4, 5);
    let s = cache.stats();
    assert_eq!((s.evictions, s.evicted_weight), (2, 5));
    assert_eq!(cache.weighted_size(), 9);
}

#[test]
fn stats_count_what_happened() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(2)
        .record_stats()
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(2, 3);
    cache.get(&1);
    cache.get(&9);
    cache.peek(&1); // peek counts nothing
    cache.insert(3, 3);
    cache.remove(&3);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (1, 1));
    assert_eq!(
        (s.inserts, s.updates, s.evictions, s.invalidations),
        (3, 1, 1, 1)
    );
    assert_eq!(s.evicted_weight, 1);

    let silent: Cache<u32, u32> = Cache::builder().max_capacity(2).build().unwrap();
    silent.get(&1);
    assert_eq!(silent.stats().misses, 0, "hit/miss counting is opt-in");
}

#[test]
fn peek_and_contains_do_not_change_eviction_order() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(2)
        .eviction(Eviction::Lru)
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    assert_eq!(cache.peek(&1), Some(1));
    assert!(cache.contains_key(&1));
    cache.insert(3, 3);
    assert!(!cache.contains_key(&1), "1 stayed least recently used");
    assert!(cache.contains_key(&2));
}

#[test]
fn iter_yields_each_resident_entry_once() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10_000)
        .shards(8)
        .build()
        .unwrap();
    for k in 0..5000 {
        cache.insert(k, k * 2);
    }
    for k in (0..5000).step_by(3) {
        cache.remove(&k);
    }
    let mut seen: Vec<(u32, u32)> = cache.iter().collect();
    seen.sort_unstable();
    let expected: Vec<(u32, u32)> = (0..5000)
        .filter(|k| k % 3 != 0)
        .map(|k| (k, k * 2))
        .collect();
    if seen != expected {
        // Say what differs, and what the cache says of itself, rather than
        // print two lists of thousands.
        let missing: Vec<_> = expected.iter().filter(|e| !seen.contains(e)).collect();
        let extra: Vec<_> = seen.iter().filter(|e| !expected.contains(e)).collect();
        let absent = missing
            .iter()
            .filter(|(k, _)| !cache.contains_key(k))
            .count();
        panic!(
            "iter yielded {} entries, {} expected: {} missing (first {:?}, {absent} of them \
             absent to contains_key too), {} extra (first {:?}); len {}, {:?}",
            seen.len(),
            expected.len(),
            missing.len(),
            &missing[..missing.len().min(8)],
            extra.len(),
            &extra[..extra.len().min(8)],
            cache.len(),
            cache.stats(),
        );
    }
}

/// Hashes an integer key to itself: what a hasher "for integers" often does.
#[derive(Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0 << 8 | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A hasher whose bits barely vary must not put every key in one shard, which
/// would leave the cache one shard's share of its capacity: here the identity,
/// on small keys (bits 32 and up, which pick the shard, are all zero) and on
/// keys whose information sits in bits 40 and up only.
#[test]
fn a_hasher_with_idle_bits_still_fills_every_shard() {
    for shift in [0, 40] {
        let cache: Cache<u64, u32, std::hash::BuildHasherDefault<IdentityHasher>> =
            Cache::builder()
                .max_capacity(10_000)
                .shards(8)
                .record_stats()
                .hasher(Default::default())
                .build()
                .unwrap();
        for k in 0..5000u64 {
            cache.insert(k << shift, k as u32);
        }
        assert_eq!(
            (cache.len(), cache.stats().evictions),
            (5000, 0),
            "keys shifted by {shift}: the cache holds every key below its capacity"
        );
        assert!((0..5000u64).all(|k| cache.get(&(k << shift)) == Some(k as u32)));
    }
}

#[test]
fn string_keys_are_looked_up_by_str() {
    let cache: Cache<String, usize> = Cache::builder().max_capacity(10).build().unwrap();
    cache.insert("alpha".to_owned(), 1);
    assert_eq!(cache.get("alpha"), Some(1));
    assert!(cache.contains_key("alpha"));
    assert_eq!(cache.remove("alpha"), Some(1));
}

#[test]
fn custom_hasher_is_used() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::BuildHasherDefault;
    let cache: Cache<u32, u32, BuildHasherDefault<DefaultHasher>> = Cache::builder()
        .max_capacity(10)
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .build()
        .unwrap();
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}

/// Each cache built with the default hasher draws a seed of its own, so an
/// attacker who learns one cache's layout (or a key set that floods its
/// shards) learns nothing of another's, on this thread or any other.
#[test]
fn each_cache_hashes_with_a_seed_of_its_own() {
    let layout = || {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(1 << 20)
            .shards(64)
            .build()
            .unwrap();
        (0..256u64)
            .map(|k| cache.shard_index(&k))
            .collect::<Vec<_>>()
    };
    let first = layout();
    // 256 keys over 64 shards: a chance of 64^-256 that two seeds agree.
    assert_ne!(first, layout(), "two caches of one thread share a seed");
    let elsewhere = std::thread::spawn(layout).join().unwrap();
    assert_ne!(first, elsewhere, "caches of two threads share a seed");
}

#[test]
fn a_value_clone_panicking_in_remove_loses_no_removal() {
    use std::cell::Cell;
    thread_local! {
        /// Set: the next clone of a value on this thread panics.
        static REFUSE_NEXT_CLONE: Cell<bool> = const { Cell::new(false) };
    }
    #[derive(Debug, PartialEq)]
    struct Value(u32);
    impl Clone for Value {
        fn clone(&self) -> Self {
            assert!(
                !REFUSE_NEXT_CLONE.with(|refuse| refuse.replace(false)),
                "the value refuses to be cloned"
            );
            Value(self.0)
        }
    }
    let seen: Arc<Mutex<Vec<(u32, u32, RemovalCause)>>> = Arc::default();
    let log = seen.clone();
    let cache: Cache<u32, Value> = Cache::builder()
        .max_capacity(10)
        .eviction_listener(move |k, v: Value, cause| log.lock().unwrap().push((k, v.0, cause)))
        .build()
        .unwrap();
    cache.insert(1, Value(10));
    REFUSE_NEXT_CLONE.with(|refuse| refuse.set(true));
    assert!(catch_unwind(AssertUnwindSafe(|| cache.remove(&1))).is_err());
    REFUSE_NEXT_CLONE.with(|refuse| refuse.set(false));
    assert!(cache.is_empty());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, 10, RemovalCause::Explicit)],
        "the removed entry reaches the listener"
    );
    assert_eq!(cache.stats().invalidations, 1);
}

/// An insert too heavy to store removes the value it meant to replace and
/// hands itself to the listener as `Size`. A listener that panics on the
/// replaced value must not cost the refused entry its delivery.
#[test]
fn a_listener_panicking_on_the_replaced_value_still_hears_of_the_refused_one() {
    let seen: Arc<Mutex<Vec<(u32, u32, RemovalCause)>>> = Arc::default();
    let log = seen.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v| *v)
        .eviction_listener(move |k, v, cause| {
            log.lock().unwrap().push((k, v, cause));
            assert!(
                cause != RemovalCause::Replaced,
                "listener fails on Replaced"
            );
        })
        .build()
        .unwrap();
    for insert in [
        (|c: &Cache<u32, u32>, k, v| c.insert(k, v)) as fn(&Cache<u32, u32>, u32, u32),
        |c, k, v| c.insert_with(k, v, larder::EntryOptions::new()),
    ] {
        seen.lock().unwrap().clear();
        cache.insert(1, 5);
        let result = catch_unwind(AssertUnwindSafe(|| insert(&cache, 1, 50)));
        assert!(result.is_err(), "the listener's panic reaches the caller");
        assert!(cache.is_empty());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, 5, RemovalCause::Replaced), (1, 50, RemovalCause::Size)],
            "both entries the insert let go of reach the listener"
        );
    }
}

/// A value whose `Clone` panics as `iter` is about to yield it: the panic
/// reaches the caller, and an iteration carried on afterwards still yields
/// each resident entry once.
#[test]
fn iter_resumed_after_a_clone_panic_yields_each_entry_once() {
    use std::cell::Cell;
    thread_local! {
        /// Clones left before the next one panics (`usize::MAX`: none panics).
        static CLONES_BEFORE_PANIC: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Value(u32);
    impl Clone for Value {
        fn clone(&self) -> Self {
            CLONES_BEFORE_PANIC.with(|left| {
                let n = left.get();
                if n != usize::MAX {
                    left.set(n.saturating_sub(1));
                    assert!(n != 0, "the value refuses to be cloned");
                }
            });
            Value(self.0)
        }
    }
    let cache: Cache<u32, Value> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, Value(k));
    }
    let mut iter = cache.iter();
    let first = iter.next().expect("ten entries");
    CLONES_BEFORE_PANIC.with(|left| left.set(0));
    assert!(catch_unwind(AssertUnwindSafe(|| iter.next())).is_err());
    CLONES_BEFORE_PANIC.with(|left| left.set(usize::MAX));
    let mut seen: Vec<(u32, Value)> = iter.collect();
    seen.push(first);
    seen.sort_unstable();
    let expected: Vec<(u32, Value)> = (0..10).map(|k| (k, Value(k))).collect();
    assert_eq!(seen, expected);
}

/// A key whose `Clone` panics halfway through the batch `iter` takes from
/// a shard: the keys cloned before it must not stay behind in the iterator
/// to be yielded again when the iteration carries on and takes the batch
/// anew (fails when the batch is collected straight into the iterator's own).
#[test]
fn iter_resumed_after_a_key_clone_panic_yields_each_entry_once() {
    use std::cell::Cell;
    thread_local! {
        /// Key clones left before the next one panics (`usize::MAX`: none does).
        static KEY_CLONES_BEFORE_PANIC: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    struct Key(u32);
    impl Clone for Key {
        fn clone(&self) -> Self {
            KEY_CLONES_BEFORE_PANIC.with(|left| {
                let n = left.get();
                if n != usize::MAX {
                    left.set(n.saturating_sub(1));
                    assert!(n != 0, "the key refuses to be cloned");
                }
            });
            Key(self.0)
        }
    }
    let cache: Cache<Key, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(Key(k), k * 10);
    }
    let mut iter = cache.iter();
    // The first `next` clones the shard's batch (all ten keys); the fourth
    // clone panics.
    KEY_CLONES_BEFORE_PANIC.with(|left| left.set(3));
    assert!(catch_unwind(AssertUnwindSafe(|| iter.next())).is_err());
    KEY_CLONES_BEFORE_PANIC.with(|left| left.set(usize::MAX));
    let mut seen: Vec<(Key, u32)> = iter.collect();
    seen.sort_unstable();
    let expected: Vec<(Key, u32)> = (0..10).map(|k| (Key(k), k * 10)).collect();
    assert_eq!(seen, expected);
}

/// Counts the keys hashed.
#[derive(Clone, Default)]
struct CountingHasher(Arc<AtomicUsize>);

impl std::hash::BuildHasher for CountingHasher {
    type Hasher = std::collections::hash_map::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::collections::hash_map::DefaultHasher::new()
    }
}

/// A key's hash costs what the user's hasher costs: a new key that evicts
/// hashes itself and the entry it pushes out of the window once each (that
/// entry's ghost, its contest and its removal share one hash), and the main
/// region's victim when the two contest.
#[test]
fn a_new_key_that_evicts_hashes_few_keys() {
    let hashed = CountingHasher::default();
    let cache: Cache<u64, u64, _> = Cache::builder()
        .max_capacity(1_000)
        .shards(1)
        .hasher(hashed.clone())
        .build()
        .unwrap();
    for k in 0..5_000 {
        cache.insert(k, k);
    }
    hashed.0.store(0, Ordering::Relaxed);
    let n = 1_000;
    for k in 10_000..10_000 + n {
        cache.insert(k, k);
    }
    assert_eq!(cache.len(), 1_000);
    let per_insert = hashed.0.load(Ordering::Relaxed) as f64 / n as f64;
    assert!(per_insert <= 2.5, "{per_insert} keys hashed per insert");
}

/// The per-entry limit is the smallest shard's capacity whichever shard a
/// key maps to: with a capacity of 5 over two shards (3 and 2 units), an
/// entry of 3 is refused even in the shard of 3, and one of 2 fits in either.
#[test]
fn the_per_entry_limit_is_the_smallest_shards_capacity_for_every_key() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(5)
        .shards(2)
        .weigher(|_, v: &u32| *v)
        .build()
        .unwrap();
    for shard in 0..2 {
        let key = (0..1000).find(|k| cache.shard_index(k) == shard).unwrap();
        let refused = cache.try_insert(key, 3).unwrap_err();
        assert_eq!((refused.weight, refused.limit), (3, 2), "shard {shard}");
        assert!(cache.try_insert(key, 2).is_ok(), "shard {shard}");
    }
    assert_eq!(cache.weighted_size(), 4);
    assert_eq!(cache.max_entry_weight(), 2);
}

/// `max_entry_weight` names the limit whatever shard count the default
/// chose, on either side of the capacities where that count doubles.
#[test]
fn max_entry_weight_is_the_limit_try_insert_applies() {
    for capacity in [
        1u64,
        100,
        2_047,
        2_048,
        8_191,
        8_192,
        1 << 20,
        (1 << 20) + 3,
    ] {
        let cache: Cache<u32, u32> = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_, v: &u32| *v)
            .build()
            .unwrap();
        let limit = cache.max_entry_weight();
        assert_eq!(
            limit,
            capacity / cache.shard_count() as u64,
            "capacity {capacity}"
        );
        let limit = u32::try_from(limit).unwrap();
        assert!(cache.try_insert(1, limit).is_ok(), "capacity {capacity}");
        let refused = cache.try_insert(2, limit + 1).unwrap_err();
        assert_eq!(refused.limit, u64::from(limit), "capacity {capacity}");
    }
}

/// `max_entry_weight` on the builder lowers the default shard count until
/// an entry of that weight fits one shard's share, whatever the cores, and
/// refuses what cannot hold it.
#[test]
fn max_entry_weight_sets_the_heaviest_entry_the_cache_takes() {
    for capacity in [1u64, 1_000, 1 << 20, 64 << 20, (1 << 40) + 7] {
        for weight in [0, 1, capacity / 3, capacity / 2, capacity] {
            let cache: Cache<u32, u64> = Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, v: &u64| u32::try_from(*v).unwrap_or(u32::MAX))
                .max_entry_weight(weight)
                .build()
                .unwrap();
            let case = format!("capacity {capacity}, weight {weight}");
            assert!(cache.max_entry_weight() >= weight, "{case}");
            let default: Cache<u32, u64> = Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, v: &u64| u32::try_from(*v).unwrap_or(u32::MAX))
                .build()
                .unwrap();
            assert!(cache.shard_count() <= default.shard_count(), "{case}");
            // Lowered no further than needed: twice the shards would not hold it.
            if cache.shard_count() < default.shard_count() {
                assert!(
                    capacity / (2 * cache.shard_count() as u64) < weight,
                    "{case}"
                );
            }
            if weight <= u64::from(u32::MAX - 1) {
                assert!(cache.try_insert(1, weight).is_ok(), "{case}");
            }
        }
    }
    let err = Cache::<u32, u32>::builder()
        .max_capacity(100)
        .weigher(|_, v| *v)
        .max_entry_weight(101)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::EntryTooHeavy {
            weight: 101,
            capacity: 100,
            shards: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "max_entry_weight 101 is above the capacity 100"
    );
    // An explicit shard count is kept, or refused.
    let build = |shards: usize| {
        Cache::<u32, u32>::builder()
            .max_capacity(4_096)
            .weigher(|_, v| *v)
            .shards(shards)
            .max_entry_weight(1_024)
            .build()
    };
    assert_eq!(build(4).unwrap().max_entry_weight(), 1_024);
    let err = build(8).unwrap_err();
    assert_eq!(
        err,
        BuildError::EntryTooHeavy {
            weight: 1_024,
            capacity: 4_096,
            shards: 8
        }
    );
    assert!(err.to_string().ends_with("use at most 4 shards"), "{err}");
    // Without a weigher every entry weighs 1: a heavier limit is refused
    // (it only dropped the cache to one shard), 0 and 1 ask nothing.
    let unweighed = |weight: u64| {
        Cache::<u32, u32>::builder()
            .max_capacity(1 << 20)
            .max_entry_weight(weight)
            .build()
    };
    let plain = Cache::<u32, u32>::builder()
        .max_capacity(1 << 20)
        .build()
        .unwrap();
    for weight in [0, 1] {
        assert_eq!(
            unweighed(weight).unwrap().shard_count(),
            plain.shard_count()
        );
    }
    for weight in [2, 1 << 20, u64::MAX] {
        let err = unweighed(weight).unwrap_err();
        assert_eq!(err, BuildError::EntryWeightWithoutWeigher { weight });
        assert!(err.to_string().contains("without a weigher"), "{err}");
    }
    // Settings refused before that check still are, as they were.
    let err = Cache::<u32, u32>::builder()
        .max_capacity(100)
        .shards(3)
        .max_entry_weight(10)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::InvalidShards { shards: 3 });
}

/// Every `BuildError` prints, including values no builder makes: its fields
/// are public, and printing one a caller made (a zero capacity, a zero
/// weight) used to panic taking the logarithm of zero.
#[test]
fn hand_made_build_errors_print_without_panicking() {
    let edges = [0, 1, 2, 3, u64::MAX - 1, u64::MAX];
    for weight in edges {
        for capacity in edges {
            for shards in [0, 1, 3, usize::MAX] {
                let err = BuildError::EntryTooHeavy {
                    weight,
                    capacity,
                    shards,
                };
                let text = err.to_string();
                assert!(
                    text.contains(&format!("max_entry_weight {weight}")),
                    "{text}"
                );
            }
        }
        let err = BuildError::MoreShardsThanCapacity {
            shards: 4,
            capacity: weight,
        };
        assert!(err.to_string().contains("use at most"), "{err}");
    }
    for shards in [0, 3, usize::MAX] {
        let err = BuildError::InvalidShards { shards };
        assert!(err.to_string().contains(&shards.to_string()), "{err}");
    }
    let err = BuildError::InitialCapacityTooLarge { entries: 0 };
    assert!(!err.to_string().is_empty());
}

/// Statistics set by hand to counts that add up past `u64::MAX` give a
/// ratio instead of overflowing; a write-back failure goes through `?` into
/// a boxed error like the crate's other errors.
#[test]
fn hand_made_stats_and_write_failures_behave() {
    let mut stats = larder::CacheStats::default();
    stats.hits = u64::MAX;
    stats.misses = u64::MAX;
    assert_eq!(stats.hit_ratio(), 0.5);
    stats.misses = 0;
    assert_eq!(stats.hit_ratio(), 1.0);
    fn boxed(f: larder::Failure<std::io::Error>) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(f)
    }
    let err = boxed(larder::Failure::Store(std::sync::Arc::new(
        std::io::Error::other("down"),
    )));
    assert_eq!(err.to_string(), "down");
}

/// A key whose `Hash` panics while `POISON_ARMED` is set, if it is at or
/// above `POISON_FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PoisonKey(u64);

static POISON_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const POISON_FROM: u64 = 1_000_000;

impl std::hash::Hash for PoisonKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        assert!(
            !(self.0 >= POISON_FROM && POISON_ARMED.load(Ordering::SeqCst)),
            "the hash of key {} panics",
            self.0
        );
        self.0.hash(state);
    }
}

/// Another key's `Hash` panicking as a write of a new key makes room (the
/// policy hashing its next candidate, an eviction, the table growing)
/// undoes the write, and the listener hears its entry as refused for size:
/// the written value is never lost, and nothing else is. It was dropped
/// silently when the panic came before the entry was placed (hashing the
/// candidate for a full shard, growing the table).
#[test]
fn another_keys_panicking_hash_undoes_a_new_keys_write_for_the_listener() {
    let mut undone = 0;
    for eviction in [Eviction::TinyLfu, Eviction::Lru, Eviction::Lfu] {
        for capacity in [4u64, 8, 16, 64] {
            for fill in 0..capacity + 2 {
                let heard: Arc<Mutex<Vec<(u64, u64, RemovalCause)>>> = Arc::default();
                let log = heard.clone();
                let cache: Cache<PoisonKey, u64> = Cache::builder()
                    .max_capacity(capacity)
                    .shards(1)
                    .eviction(eviction)
                    .record_stats()
                    .eviction_listener(move |k: PoisonKey, v, cause| {
                        log.lock().unwrap().push((k.0, v, cause))
                    })
                    .build()
                    .unwrap();
                for k in 0..fill {
                    cache.insert(PoisonKey(k), k);
                }
                cache.insert(PoisonKey(POISON_FROM), 999);
                POISON_ARMED.store(true, Ordering::SeqCst);
                let value = 12_345;
                let write = catch_unwind(AssertUnwindSafe(|| {
                    cache.insert(PoisonKey(500), value);
                }));
                POISON_ARMED.store(false, Ordering::SeqCst);
                let case = format!("{eviction:?}, capacity {capacity}, {fill} resident");
                let heard = heard.lock().unwrap().clone();
                let resident = cache.peek(&PoisonKey(500)) == Some(value);
                if write.is_err() {
                    undone += 1;
                    assert!(!resident, "{case}");
                    assert!(
                        heard.contains(&(500, value, RemovalCause::Size)),
                        "{case}: the undone write reaches the listener: {heard:?}"
                    );
                }
                // Every value written is resident or heard, once.
                let mut seen = std::collections::HashMap::<u64, usize>::new();
                for (_, v, _) in &heard {
                    *seen.entry(*v).or_default() += 1;
                }
                for (_, v) in cache.iter() {
                    *seen.entry(v).or_default() += 1;
                }
                for v in (0..fill).chain([999, value]) {
                    assert_eq!(seen.get(&v), Some(&1), "{case}: value {v}: {heard:?}");
                }
                let sized = heard
                    .iter()
                    .filter(|(_, _, c)| *c == RemovalCause::Size)
                    .count() as u64;
                let stats = cache.stats();
                assert_eq!(stats.evictions + stats.rejections, sized, "{case}");
                // An undone write counts as an insert too, wherever the
                // panic met it (the `rejections` docs).
                assert_eq!(stats.inserts, fill + 2, "{case}");
            }
        }
    }
    assert!(undone > 20, "the poisoned hash met {undone} writes");
}

thread_local! {
    /// Whether the `Eq` of `TouchyKey`s divisible by 5 panics on this thread.
    static EQ_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A key whose `Eq` panics, while armed on this thread, when either side is
/// divisible by 5.
#[derive(Clone, Debug)]
struct TouchyKey(u64);

impl std::hash::Hash for TouchyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for TouchyKey {
    fn eq(&self, other: &Self) -> bool {
        let touchy = self.0 % 5 == 0 || other.0 % 5 == 0;
        assert!(!(touchy && EQ_ARMED.get()), "the Eq of a touchy key panics");
        self.0 == other.0
    }
}
impl Eq for TouchyKey {}

/// A call on a key whose `Eq` panics leaves the cache as it was: the same
/// entries, nothing heard, and the same policy state — a twin cache that
/// never saw the calls goes on to evict exactly the same entries in the
/// same order. (A key's `Eq` runs as its lookup finds it, before anything
/// changes.)
#[test]
fn a_keys_panicking_eq_leaves_the_cache_as_it_was() {
    type Heard = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;
    let build = |eviction: Eviction| {
        let heard: Heard = Arc::default();
        let log = heard.clone();
        let cache: Cache<TouchyKey, u64, _> = Cache::builder()
            .max_capacity(20)
            .shards(1)
            .eviction(eviction)
            .hasher(std::hash::BuildHasherDefault::<
                std::collections::hash_map::DefaultHasher,
            >::default())
            .eviction_listener(move |k: TouchyKey, v, cause| {
                log.lock().unwrap().push((k.0, v, cause))
            })
            .build()
            .unwrap();
        (cache, heard)
    };
    for eviction in [Eviction::Lru, Eviction::Lfu, Eviction::TinyLfu] {
        let (a, heard_a) = build(eviction);
        let (b, heard_b) = build(eviction);
        let mut panicked = 0;
        for i in 0..200u64 {
            let k = (i * 7) % 40;
            for cache in [&a, &b] {
                if cache.get(&TouchyKey(k)).is_none() {
                    cache.insert(TouchyKey(k), i);
                }
            }
            // A resident touchy key of `a`, and a call on it that panics.
            let Some(t) = (0..40)
                .map(|t| t * 5 % 40)
                .find(|&t| a.contains_key(&TouchyKey(t)))
            else {
                continue;
            };
            let heard_before = heard_a.lock().unwrap().len();
            let key = TouchyKey(t);
            EQ_ARMED.set(true);
            let call = catch_unwind(AssertUnwindSafe(|| match i % 9 {
                0 => drop(a.get(&key)),
                1 => drop(a.peek(&key)),
                2 => drop(a.contains_key(&key)),
                3 => a.insert(key.clone(), 999),
                4 => drop(a.try_insert(key.clone(), 999)),
                5 => drop(a.remove(&key)),
                6 => drop(a.get_or_load(key.clone(), |_| unreachable!("resident"))),
                7 => drop(a.get_or_load_by_ref(&key, |_| unreachable!("resident"))),
                _ => {
                    let tagged = larder::EntryOptions::new().tags(["t"]);
                    a.insert_with(key.clone(), 999, tagged);
                }
            }));
            EQ_ARMED.set(false);
            assert!(
                call.is_err(),
                "{eviction:?}: call {} on {t} did not panic",
                i % 9
            );
            panicked += 1;
            assert_eq!(
                heard_a.lock().unwrap().len(),
                heard_before,
                "{eviction:?}: heard"
            );
        }
        assert!(panicked > 100, "{eviction:?}: {panicked} panicking calls");
        let entries = |c: &Cache<TouchyKey, u64, _>| {
            let mut e: Vec<(u64, u64)> = c.iter().map(|(k, v)| (k.0, v)).collect();
            e.sort_unstable();
            e
        };
        assert_eq!(entries(&a), entries(&b), "{eviction:?}: entries");
        // The same policy state: the same victims, in the same order.
        for k in 100..300 {
            a.insert(TouchyKey(k), k);
            b.insert(TouchyKey(k), k);
        }
        assert_eq!(
            *heard_a.lock().unwrap(),
            *heard_b.lock().unwrap(),
            "{eviction:?}: heard"
        );
        assert_eq!(entries(&a), entries(&b), "{eviction:?}: entries");
    }
}

/// A value whose `Drop` panics for 13.
#[derive(Clone, Debug)]
struct Brittle(u32);

impl Drop for Brittle {
    fn drop(&mut self) {
        if self.0 == 13 && !std::thread::panicking() {
            panic!("13 will not be dropped quietly");
        }
    }
}

/// Without a listener the cache drops what a sweep removes itself: a value's
/// panicking `Drop` reaches the caller once every shard is swept, as a
/// listener's panic does (the shards after the value's were left as they
/// were).
#[test]
fn a_values_panicking_drop_in_a_sweep_does_not_stop_it() {
    let (clock, time) = larder::Clock::mock();
    let cache: Cache<u32, Brittle> = Cache::builder()
        .max_capacity(1000)
        .shards(8)
        .clock(clock)
        .build()
        .unwrap();
    let fill = |tagged: bool| {
        for k in 0..200 {
            let options = larder::EntryOptions::new().ttl(std::time::Duration::from_secs(1));
            let options = if tagged { options.tags(["t"]) } else { options };
            cache.insert_with(k, Brittle(k), options);
        }
        assert_eq!(cache.len(), 200);
    };
    fill(false);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.invalidate_all())).is_err());
    assert_eq!(cache.len(), 0, "every shard cleared");
    fill(true);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.invalidate_tag("t"))).is_err());
    assert_eq!(cache.len(), 0, "every shard's tagged entries removed");
    fill(false);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.invalidate_entries_if(|_, _| true))).is_err());
    assert_eq!(cache.len(), 0, "every shard visited");
    fill(false);
    time.advance(std::time::Duration::from_secs(2));
    assert!(catch_unwind(AssertUnwindSafe(|| cache.run_pending_tasks())).is_err());
    assert_eq!(cache.len(), 0, "every shard's expired entries reclaimed");
}
