//! `Cache::compute`: read-modify-writes that lose no update, outcomes and
//! listener causes, expiry, weights, loads in flight, panics, and a closure
//! that calls back into its cache.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use larder::{Cache, Clock, Compute, Computed, EntryOptions, RemovalCause};

type Heard<K, V> = Arc<Mutex<Vec<(K, V, RemovalCause)>>>;

fn listened(capacity: u64, shards: usize) -> (Cache<u32, u64>, Heard<u32, u64>) {
    let heard = Heard::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(capacity)
        .shards(shards)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, heard)
}

fn bump(n: Option<&u64>) -> Compute<u64> {
    Compute::Put(n.map_or(1, |n| n + 1))
}

#[test]
fn concurrent_computes_lose_no_update() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 2_000;
    const KEYS: u32 = 8;
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(1_000)
        .shards(4)
        .build()
        .unwrap();
    let start = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, start) = (&cache, &start);
            s.spawn(move || {
                start.wait();
                for i in 0..ROUNDS {
                    let key = ((i + t) % u64::from(KEYS)) as u32;
                    match cache.compute(key, bump).unwrap() {
                        Computed::Inserted(n) | Computed::Replaced(n) => assert!(n >= 1),
                        other => panic!("a put reported {other:?}"),
                    }
                    // Plain writes of other keys meanwhile.
                    cache.insert(100 + key, i);
                }
            });
        }
    });
    let total: u64 = (0..KEYS).map(|k| cache.get(&k).unwrap()).sum();
    assert_eq!(total, THREADS * ROUNDS);
}

#[test]
fn outcomes_and_what_the_listener_hears() {
    let (cache, heard) = listened(10, 1);
    assert_eq!(
        cache.compute(1, |_| Compute::Keep).unwrap(),
        Computed::Absent
    );
    assert_eq!(cache.compute(1, bump).unwrap(), Computed::Inserted(1));
    assert_eq!(cache.compute(1, bump).unwrap(), Computed::Replaced(2));
    assert_eq!(
        cache.compute(1, |_| Compute::Keep).unwrap(),
        Computed::Unchanged(2)
    );
    assert_eq!(cache.get(&1), Some(2));
    assert_eq!(*heard.lock().unwrap(), vec![(1, 1, RemovalCause::Replaced)]);
    assert_eq!(
        cache.compute(1, |_| Compute::Remove).unwrap(),
        Computed::Removed(2)
    );
    assert_eq!(
        cache.compute(1, |_| Compute::Remove).unwrap(),
        Computed::Absent
    );
    assert_eq!(cache.get(&1), None);
    assert_eq!(
        *heard.lock().unwrap(),
        vec![
            (1, 1, RemovalCause::Replaced),
            (1, 2, RemovalCause::Explicit)
        ]
    );
    // Evictions a compute's write makes are heard as any write's.
    for k in 10..21 {
        cache.compute(k, bump).unwrap();
    }
    assert_eq!(cache.len(), 10);
    let sizes = heard
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.2 == RemovalCause::Size)
        .count();
    assert_eq!(sizes, 1);
}

#[test]
fn an_expired_entry_is_absent_to_the_closure_and_replaced_as_expired() {
    let (clock, time) = Clock::mock();
    let heard = Heard::default();
    let sink = heard.clone();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(10)
        .time_to_live(Duration::from_secs(1))
        .clock(clock)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    cache.insert(1, 7);
    cache.insert(2, 8);
    time.advance(Duration::from_secs(2));
    let mut found = Some(0);
    assert_eq!(
        cache.compute(1, |v| {
            found = v.copied();
            Compute::Put(9)
        }),
        Ok(Computed::Inserted(9))
    );
    assert_eq!(found, None);
    assert_eq!(cache.get(&1), Some(9));
    assert!(heard
        .lock()
        .unwrap()
        .contains(&(1, 7, RemovalCause::Expired)));
    // Removing what expired removes nothing live.
    assert_eq!(cache.compute(2, |_| Compute::Remove), Ok(Computed::Absent));
    assert!(!heard
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.2 == RemovalCause::Explicit));
    // But takes the expired entry out, as `remove` does.
    assert!(heard
        .lock()
        .unwrap()
        .contains(&(2, 8, RemovalCause::Expired)));
    assert_eq!(cache.len(), 1);
}

#[test]
fn per_entry_settings_apply_to_a_computed_write() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(10)
        .clock(clock)
        .build()
        .unwrap();
    let options = || EntryOptions::new().ttl(Duration::from_secs(5)).tags(["t"]);
    cache
        .compute(1, |_| Compute::PutWith(1, options()))
        .unwrap();
    cache
        .compute(2, |_| Compute::PutWith(2, options()))
        .unwrap();
    cache.compute(3, |_| Compute::Put(3)).unwrap();
    cache.invalidate_tag("t");
    assert_eq!(
        (cache.get(&1), cache.get(&2), cache.get(&3)),
        (None, None, Some(3))
    );
    cache
        .compute(1, |_| Compute::PutWith(1, options()))
        .unwrap();
    time.advance(Duration::from_secs(5));
    assert_eq!((cache.get(&1), cache.get(&3)), (None, Some(3)));
    // No time at all: written, and gone at once.
    let zero = EntryOptions::new().ttl(Duration::ZERO);
    assert_eq!(
        cache.compute(4, |_| Compute::PutWith(4, zero)),
        Ok(Computed::Inserted(4))
    );
    assert_eq!(cache.get(&4), None);
}

#[test]
fn a_value_too_heavy_comes_back_and_the_old_one_is_gone() {
    let heard: Heard<u32, Vec<u8>> = Heard::default();
    let sink = heard.clone();
    let cache: Cache<u32, Vec<u8>> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v: &Vec<u8>| v.len() as u32)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    cache.insert(1, vec![1; 5]);
    let rejected = cache.compute(1, |_| Compute::Put(vec![2; 11])).unwrap_err();
    assert_eq!((rejected.key, rejected.weight, rejected.limit), (1, 11, 10));
    assert_eq!(rejected.value, vec![2; 11]);
    assert_eq!(cache.get(&1), None);
    assert_eq!(
        *heard.lock().unwrap(),
        vec![(1, vec![1; 5], RemovalCause::Replaced)]
    );
    assert_eq!(cache.weighted_size(), 0);
}

#[test]
fn a_panicking_closure_or_weigher_changes_nothing() {
    let heard = Heard::default();
    let sink = heard.clone();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(10)
        .weigher(|_, v: &u64| {
            assert!(*v != 666, "the weigher refuses 666");
            1
        })
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    cache.insert(1, 1);
    let closure = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(1, |_| -> Compute<u64> { panic!("the closure fails") })
    }));
    assert!(closure.is_err());
    let weigher = catch_unwind(AssertUnwindSafe(|| cache.compute(1, |_| Compute::Put(666))));
    assert!(weigher.is_err());
    assert_eq!(cache.get(&1), Some(1));
    assert!(heard.lock().unwrap().is_empty());
    // The shard's lock was released on the way out.
    assert_eq!(cache.compute(1, bump), Ok(Computed::Replaced(2)));
}

#[test]
fn a_closure_calling_into_its_own_shard_panics_instead_of_deadlocking() {
    let cache: Cache<u32, u64> = Cache::builder().max_capacity(10).shards(1).build().unwrap();
    cache.insert(2, 2);
    let reentered = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(1, |_| Compute::Put(cache.get(&2).unwrap_or(0)))
    }));
    let message = reentered.unwrap_err();
    let message = message.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(message.contains("compute"), "{message}");
    let nested = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(1, |_| {
            let _ = cache.compute(3, bump);
            Compute::Keep
        })
    }));
    assert!(nested.is_err());
    // Nothing was written, and the lock is free.
    assert_eq!((cache.get(&1), cache.get(&3)), (None, None));
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn a_closure_may_use_another_shard() {
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .shards(2)
        .build()
        .unwrap();
    let a = 0;
    let b = (1..100)
        .find(|k| cache.shard_index(k) != cache.shard_index(&a))
        .unwrap();
    let out = cache.compute(a, |_| {
        cache.insert(b, 5);
        Compute::Put(cache.get(&b).unwrap() + 1)
    });
    assert_eq!(out, Ok(Computed::Inserted(6)));
    assert_eq!((cache.get(&a), cache.get(&b)), (Some(6), Some(5)));
    // A compute nested in another keeps the outer one's shard marked.
    let nested = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(a, |_| {
            let _ = cache.compute(b, |_| Compute::Put(cache.peek(&a).unwrap_or(0)));
            Compute::Keep
        })
    }));
    assert!(nested.is_err(), "the inner closure reached the outer shard");
    assert_eq!((cache.get(&a), cache.get(&b)), (Some(6), Some(5)));
    // And the marks are gone once the computes end.
    cache
        .compute(b, |_| Compute::Put(cache.get(&a).unwrap()))
        .unwrap();
    assert_eq!(cache.get(&b), Some(6));
}

/// Runs `during` while a load of `key` (yielding `loaded`) is in flight on
/// another thread, and checks that its caller gets what it loaded.
fn while_loading(cache: &Cache<u32, u64>, key: u32, loaded: u64, during: impl FnOnce()) {
    let (started, wait_started) = mpsc::channel();
    let (release, wait_release) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let loader = s.spawn(move || {
            cache.get_or_load(key, |_| {
                started.send(()).unwrap();
                wait_release.recv().unwrap();
                loaded
            })
        });
        wait_started.recv().unwrap();
        during();
        release.send(()).unwrap();
        assert_eq!(loader.join().unwrap(), loaded);
    });
}

#[test]
fn a_load_in_flight_does_not_cache_over_a_compute() {
    let cache: Cache<u32, u64> = Cache::builder().max_capacity(10).build().unwrap();
    while_loading(&cache, 1, 100, || {
        assert_eq!(cache.compute(1, bump), Ok(Computed::Inserted(1)));
    });
    assert_eq!(cache.get(&1), Some(1));
    // A removal by compute makes a load stale too.
    while_loading(&cache, 2, 200, || {
        assert_eq!(cache.compute(2, |_| Compute::Remove), Ok(Computed::Absent));
    });
    assert_eq!(cache.get(&2), None);
    // Keeping writes nothing: the load lands.
    while_loading(&cache, 3, 300, || {
        assert_eq!(cache.compute(3, |_| Compute::Keep), Ok(Computed::Absent));
    });
    assert_eq!(cache.get(&3), Some(300));
}

/// A key that counts its clones.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Counted(u32);

static CLONES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Clone for Counted {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(self.0)
    }
}

#[test]
fn compute_by_ref_owns_its_key_only_to_put() {
    let clones = || CLONES.load(std::sync::atomic::Ordering::SeqCst);
    let cache: Cache<Counted, u64> = Cache::builder().max_capacity(10).build().unwrap();
    let key = Counted(1);
    let bump_ref = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
    assert_eq!(
        cache.compute_by_ref(&key, |_| Compute::Keep),
        Ok(Computed::Absent)
    );
    assert_eq!(
        cache.compute_by_ref(&key, |_| Compute::Remove),
        Ok(Computed::Absent)
    );
    assert_eq!(clones(), 0, "keeping and removing own no key");
    assert_eq!(
        cache.compute_by_ref(&key, bump_ref),
        Ok(Computed::Inserted(1))
    );
    assert_eq!(
        cache.compute_by_ref(&key, bump_ref),
        Ok(Computed::Replaced(2))
    );
    assert_eq!(clones(), 2, "each put owns the key once");
    assert_eq!(
        cache.compute_by_ref(&key, |_| Compute::Keep),
        Ok(Computed::Unchanged(2))
    );
    assert_eq!(
        cache.compute_by_ref(&key, |_| Compute::Remove),
        Ok(Computed::Removed(2))
    );
    assert_eq!(clones(), 2);
    assert_eq!(cache.get(&key), None);
    // A borrowed `str` for `String` keys.
    let paths: Cache<String, u64> = Cache::builder().max_capacity(10).build().unwrap();
    for _ in 0..3 {
        paths.compute_by_ref("/home", bump).unwrap();
    }
    assert_eq!(paths.get("/home"), Some(3));
}
