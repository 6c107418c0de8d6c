//! `refresh_after`: the caller that hits a due entry reloads it while the
//! others keep getting the cached value; what lands and what does not (a
//! write, a removal or a tag invalidation during the refresh); failures,
//! panics and cancellation; expiry; builder errors. Then `Cache::refresh`
//! and its kin: the same, on the caller's word, whatever the entry's age;
//! and `refresh` on store-backed caches, reading the store again.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use larder::{BuildError, Cache, Clock, EntryOptions, MockClock, RemovalCause, Store};

type Heard = Arc<Mutex<Vec<(u32, u64, RemovalCause)>>>;

const AFTER: Duration = Duration::from_secs(60);

/// A cache refreshing entries a minute after their write, on a mock clock,
/// with a listener.
fn refreshing() -> (Cache<u32, u64>, MockClock, Heard) {
    let (clock, time) = Clock::mock();
    let heard = Heard::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .refresh_after(AFTER)
        .clock(clock)
        .record_stats()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, time, heard)
}

#[test]
fn the_caller_hitting_a_due_entry_reloads_it() {
    let (cache, time, heard) = refreshing();
    assert_eq!(cache.get_or_load(1, |_| 10), 10);
    time.advance(AFTER - Duration::from_millis(1));
    assert_eq!(cache.get_or_load(1, |_| unreachable!("not due yet")), 10);
    time.advance(Duration::from_millis(1));
    // Due: `get` and `peek` never load.
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.peek(&1), Some(10));
    assert_eq!(cache.get_or_load(1, |_| 11), 11);
    assert_eq!(cache.get(&1), Some(11));
    // The refresh is a write: a minute from it before the next.
    time.advance(AFTER - Duration::from_millis(1));
    assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshed")), 11);
    time.advance(Duration::from_millis(1));
    assert_eq!(cache.get_or_load_by_ref(&1, |_| 12), 12);
    let stats = cache.stats();
    assert_eq!(
        (stats.loads, stats.refreshes),
        (3, 2),
        "the first load was none"
    );
    assert_eq!(
        *heard.lock().unwrap(),
        vec![
            (1, 10, RemovalCause::Replaced),
            (1, 11, RemovalCause::Replaced)
        ]
    );
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (3, 0));
    assert_eq!((stats.hits, stats.misses), (6, 1));
}

#[test]
fn a_write_restarts_the_wait_for_a_refresh() {
    let (cache, time, _) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER / 2);
    cache.insert(1, 20);
    time.advance(AFTER / 2);
    assert_eq!(cache.get_or_load(1, |_| unreachable!("written since")), 20);
    time.advance(AFTER / 2);
    assert_eq!(cache.get_or_load(1, |_| 30), 30);
}

#[test]
fn other_callers_take_the_cached_value_while_a_refresh_runs() {
    let (cache, time, _) = refreshing();
    let cache = Arc::new(cache);
    cache.insert(1, 10);
    time.advance(AFTER);
    let (refresher, release) = common::loading_until_released(&cache, 1, 11);
    // Hits, sync and async, by value and by reference: none waits or loads.
    for _ in 0..3 {
        assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshing")), 10);
        assert_eq!(cache.get_or_load_by_ref(&1, |_| unreachable!()), 10);
        let hit = cache.get_or_load_async(1, async { unreachable!("refreshing") });
        assert_eq!(common::block_on(hit), 10);
        assert_eq!(cache.try_get_or_load(1, |_| Err::<u64, ()>(())), Ok(10));
    }
    release.send(()).unwrap();
    assert_eq!(refresher.join().unwrap(), 11);
    assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshed")), 11);
    assert_eq!(cache.stats().loads, 1);
}

#[test]
fn callers_that_miss_during_a_refresh_join_it() {
    let (clock, time) = Clock::mock();
    let cache: Arc<Cache<u32, u64>> = Arc::new(
        Cache::builder()
            .max_capacity(100)
            .time_to_live(Duration::from_secs(90))
            .refresh_after(AFTER)
            .clock(clock)
            .build()
            .unwrap(),
    );
    cache.insert(1, 10);
    time.advance(AFTER);
    let (refresher, release) = common::loading_until_released(&cache, 1, 11);
    // The entry expires while the refresh runs: a caller now misses, and
    // waits for the refresh rather than loading again.
    time.advance(Duration::from_secs(30));
    assert_eq!(cache.get(&1), None);
    let waiter = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.get_or_load(1, |_| unreachable!("joins the refresh")))
    };
    std::thread::sleep(Duration::from_millis(50));
    release.send(()).unwrap();
    assert_eq!(refresher.join().unwrap(), 11);
    assert_eq!(waiter.join().unwrap(), 11);
    // Landed with a deadline of its own.
    assert_eq!(cache.get(&1), Some(11));
}

#[test]
fn a_failed_refresh_keeps_the_entry_and_tries_again() {
    let (cache, time, heard) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER);
    assert_eq!(cache.try_get_or_load(1, |_| Err::<u64, _>("down")), Ok(10));
    assert_eq!(cache.get(&1), Some(10));
    let async_try = cache.try_get_or_load_async(1, async { Err::<u64, _>("down") });
    assert_eq!(common::block_on(async_try), Ok(10));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (2, 2));
    // Still due: the next loading call tries again.
    assert_eq!(cache.try_get_or_load(1, |_| Ok::<_, &str>(11)), Ok(11));
    assert_eq!(
        *heard.lock().unwrap(),
        vec![(1, 10, RemovalCause::Replaced)]
    );
}

#[test]
fn a_refresh_finding_nothing_removes_the_entry() {
    let (cache, time, heard) = refreshing();
    cache.insert(1, 10);
    cache.insert(2, 20);
    time.advance(AFTER);
    assert_eq!(cache.optionally_get_or_load(1, |_| None), None);
    assert!(!cache.contains_key(&1));
    let gone = cache.optionally_get_or_load_async(2, async { None });
    assert_eq!(common::block_on(gone), None);
    assert!(!cache.contains_key(&2));
    assert_eq!(
        *heard.lock().unwrap(),
        vec![
            (1, 10, RemovalCause::Explicit),
            (2, 20, RemovalCause::Explicit)
        ]
    );
}

#[test]
fn a_panicking_refresh_leaves_the_entry() {
    let (cache, time, heard) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load(1, |_| panic!("loader"));
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.stats().load_failures, 1);
    assert_eq!(cache.get_or_load(1, |_| 11), 11);
    assert_eq!(
        *heard.lock().unwrap(),
        vec![(1, 10, RemovalCause::Replaced)]
    );
}

#[test]
fn a_refresh_whose_write_panics_leaves_the_entry_due() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .weigher(|_, v: &u64| if *v == 99 { panic!("weigher") } else { 1 })
        .refresh_after(AFTER)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert(1, 10);
    time.advance(AFTER);
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.get_or_load(1, |_| 99)));
    assert!(panicked.is_err());
    assert_eq!(cache.get(&1), Some(10));
    // Due still: the next hit refreshes.
    assert_eq!(cache.get_or_load(1, |_| 11), 11);
}

#[test]
fn a_cancelled_async_refresh_leaves_the_entry() {
    let (cache, time, _) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER);
    {
        let refresh = cache.get_or_load_async(1, std::future::pending());
        let mut refresh = std::pin::pin!(refresh);
        let waker = std::task::Waker::noop();
        let polled = refresh
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_pending());
        // While it is pending, a hit takes the cached value.
        assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshing")), 10);
    }
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.get_or_load(1, |_| 11), 11);
}

#[test]
fn a_write_or_removal_during_a_refresh_wins() {
    let (cache, time, _) = refreshing();
    cache.insert(1, 10);
    cache.insert(2, 20);
    time.advance(AFTER);
    // The refreshing caller gets what it loaded; the cache keeps the write.
    let loaded = cache.get_or_load(1, |_| {
        cache.insert(1, 100);
        11
    });
    assert_eq!(loaded, 11);
    assert_eq!(cache.get(&1), Some(100));
    let loaded = cache.get_or_load(2, |_| {
        cache.remove(&2);
        21
    });
    assert_eq!(loaded, 21);
    assert_eq!(cache.get(&2), None);
    // A refresh finding nothing removes nothing written since it began.
    cache.insert(3, 30);
    time.advance(AFTER);
    let found = cache.optionally_get_or_load(3, |_| {
        cache.insert(3, 300);
        None
    });
    assert_eq!(found, None);
    assert_eq!(cache.get(&3), Some(300));
}

#[test]
fn a_tag_invalidated_during_a_refresh_keeps_it_from_landing() {
    let (cache, time, _) = refreshing();
    cache.insert_with(1, 10, EntryOptions::new().tags(["team:1"]));
    cache.insert_with(2, 20, EntryOptions::new().tags(["team:2"]));
    time.advance(AFTER);
    // The old entry's tag, though the loader gives the new one none.
    let loaded = cache.get_or_load(1, |_| {
        cache.invalidate_tag("team:1");
        11
    });
    assert_eq!(loaded, 11);
    assert!(!cache.contains_key(&1));
    // An unrelated tag stops nothing.
    assert_eq!(
        cache.get_or_load(2, |_| {
            cache.invalidate_tag("team:9");
            21
        }),
        21
    );
    assert_eq!(cache.get(&2), Some(21));
}

/// A write made during a refresh that then fails is not reloaded at once,
/// even in the tick the refresh began (the clock here does not move): the
/// refresh gives back the entry's old write time only if nothing wrote it
/// since. Nor is another key's, written into the refreshed entry's slot.
#[test]
fn a_failed_refresh_never_sets_back_a_write_made_during_it() {
    let (cache, time, _) = refreshing();
    let loads = AtomicU64::new(0);
    let loads = &loads;
    let counted = |v| {
        move |_: &u32| {
            loads.fetch_add(1, Ordering::SeqCst);
            v
        }
    };
    cache.insert(1, 10);
    time.advance(AFTER);
    let refreshed = cache.try_get_or_load(1, |_| {
        cache.insert(1, 20);
        Err::<u64, _>("down")
    });
    assert_eq!(refreshed, Ok(10), "the caller gets the value it hit");
    assert_eq!(cache.get_or_load(1, counted(30)), 20);
    assert_eq!(loads.load(Ordering::SeqCst), 0, "written 0 s ago: not due");
    // The refreshed entry removed, and another key written into its slot
    // (one shard's slab reuses the slot freed last).
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .refresh_after(AFTER)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert(1, 10);
    time.advance(AFTER);
    let refreshed = cache.try_get_or_load(1, |_| {
        cache.remove(&1);
        cache.insert(2, 20);
        Err::<u64, _>("down")
    });
    assert_eq!(refreshed, Ok(10));
    assert_eq!(cache.get_or_load(2, counted(30)), 20);
    assert_eq!(loads.load(Ordering::SeqCst), 0, "key 2 written 0 s ago");
}

/// A refresh whose value does not land (a tag of its own invalidated
/// while it loaded) leaves the entry it would have replaced due, as a
/// failed one does: it is no fresher for the attempt.
#[test]
fn a_refresh_that_does_not_land_leaves_the_entry_due() {
    let (cache, time, _) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER);
    let loaded = cache.get_or_load_with(1, |_| {
        cache.invalidate_tag("new");
        (11, EntryOptions::new().tags(["new"]))
    });
    assert_eq!(loaded, 11, "the caller gets what it loaded");
    assert_eq!(cache.get(&1), Some(10), "not cached");
    assert_eq!(cache.get_or_load(1, |_| 12), 12, "still due");
    assert_eq!(cache.get(&1), Some(12));
    // Likewise a refresh finding nothing, whose removal an invalidation
    // that spared the entry kept from landing.
    time.advance(AFTER);
    let found = cache.optionally_get_or_load(1, |_| {
        cache.invalidate_entries_if(|_, _| false);
        None
    });
    assert_eq!(found, None);
    assert_eq!(cache.get(&1), Some(12), "not removed");
    assert_eq!(cache.get_or_load(1, |_| 13), 13, "still due");
}

#[test]
fn a_refresh_takes_the_loaders_options() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .refresh_after(AFTER)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert_with(1, 10, EntryOptions::new().tags(["old"]));
    time.advance(AFTER);
    let v = cache.get_or_load_with(1, |_| {
        let options = EntryOptions::new().tags(["new"]).ttl(AFTER * 2);
        (11, options)
    });
    assert_eq!(v, 11);
    cache.invalidate_tag("old");
    assert_eq!(cache.get(&1), Some(11));
    time.advance(AFTER);
    let v = cache.get_or_load_with_async(1, async { (12, EntryOptions::new().ttl(AFTER * 2)) });
    assert_eq!(common::block_on(v), 12);
    cache.invalidate_tag("new");
    assert_eq!(cache.get(&1), Some(12));
    // Its own time-to-live from its write.
    time.advance(AFTER * 2);
    assert_eq!(cache.get(&1), None);
}

#[test]
fn an_expired_entry_is_loaded_not_refreshed() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .time_to_live(AFTER * 2)
        .refresh_after(AFTER)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert(1, 10);
    time.advance(AFTER * 2);
    // Expired: a loader failing now fails the call, with nothing to fall back on.
    let failed = cache.try_get_or_load(1, |_| Err::<u64, _>("down"));
    assert_eq!(*failed.unwrap_err(), "down");
    assert_eq!(cache.get_or_load(1, |_| 11), 11);
}

#[test]
fn a_huge_interval_never_refreshes() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .refresh_after(Duration::MAX)
        .clock(clock)
        .build()
        .unwrap();
    cache.insert(1, 10);
    time.advance(Duration::from_secs(1 << 40));
    assert_eq!(cache.get_or_load(1, |_| unreachable!("never due")), 10);
}

#[test]
fn many_callers_refresh_once_per_interval_and_never_go_back() {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 2_000;
    let (cache, time, _) = refreshing();
    let loads = AtomicU64::new(0);
    let start = Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let mut last = 0;
                    for _ in 0..ROUNDS {
                        let v = cache.get_or_load(1, |_| loads.fetch_add(1, Ordering::SeqCst) + 1);
                        assert!(v >= last, "went back from {last} to {v}");
                        last = v;
                    }
                })
            })
            .collect();
        start.wait();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(2));
            time.advance(AFTER);
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    // The first load, then at most one refresh per interval that passed.
    let loads = loads.load(Ordering::SeqCst);
    assert!((1..=21).contains(&loads), "{loads} loads");
    assert_eq!(cache.stats().loads, loads);
}

#[test]
fn invalid_intervals_are_refused() {
    let build = |after: Duration, ttl: Option<Duration>| {
        let builder = Cache::<u32, u32>::builder()
            .max_capacity(10)
            .refresh_after(after);
        match ttl {
            Some(ttl) => builder.time_to_live(ttl).build(),
            None => builder.build(),
        }
    };
    let refused = |result: Result<Cache<u32, u32>, BuildError>| match result {
        Err(BuildError::InvalidRefresh { reason }) => reason,
        other => panic!("expected InvalidRefresh, got {:?}", other.map(|_| ())),
    };
    assert!(refused(build(Duration::ZERO, None)).contains("above zero"));
    let ttl = Some(Duration::from_secs(5));
    assert!(refused(build(Duration::from_secs(5), ttl)).contains("time_to_live"));
    assert!(build(Duration::from_secs(4), ttl).is_ok());
    // A time-to-idle shorter than the interval is fine: reads keep the entry.
    let idle = Cache::<u32, u32>::builder()
        .max_capacity(10)
        .time_to_idle(Duration::from_secs(1))
        .refresh_after(Duration::from_secs(5))
        .build();
    assert!(idle.is_ok());
    let message = build(Duration::ZERO, None).unwrap_err().to_string();
    assert!(message.starts_with("invalid refresh_after"), "{message}");
}

/// A store that holds nothing.
struct Nothing;

impl Store<u32, u32> for Nothing {
    type Error = std::convert::Infallible;
    fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> {
        Ok(None)
    }
    fn write(&self, _: &larder::Op<u32, u32>) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn a_cache_with_a_store_refuses_a_refresh() {
    let built = Cache::<u32, u32>::builder()
        .max_capacity(10)
        .refresh_after(AFTER)
        .read_through(Nothing)
        .build();
    assert!(matches!(built, Err(BuildError::InvalidRefresh { .. })));
}

/// A cache without `refresh_after`, with a listener and statistics.
fn plain() -> (Cache<u32, u64>, Heard) {
    let heard = Heard::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .record_stats()
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .build()
        .unwrap();
    (cache, heard)
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn refresh_replaces_the_value_while_readers_keep_the_old_one() {
    let (cache, heard) = plain();
    cache.insert(1, 10);
    let refreshed = cache.refresh(1, |_| {
        // Readers meanwhile: the cached value, at once.
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.get_or_load(1, |_| unreachable!("cached")), 10);
        11
    });
    assert_eq!(refreshed, 11);
    assert_eq!(cache.get(&1), Some(11));
    assert_eq!(*heard.lock().unwrap(), [(1, 10, RemovalCause::Replaced)]);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.hits, stats.misses), (1, 3, 0));
    assert_eq!(stats.refreshes, 1);
    // A key not cached is loaded, and callers missing it share the load.
    let mut waiter = None;
    let loaded = cache.refresh(2, |_| {
        let mut joined = Box::pin(cache.get_or_load_async(2, async { unreachable!("shared") }));
        assert!(poll_once(joined.as_mut()).is_pending());
        waiter = Some(joined);
        20
    });
    assert_eq!(loaded, 20);
    assert_eq!(
        poll_once(waiter.unwrap().as_mut()),
        std::task::Poll::Ready(20)
    );
    assert_eq!(cache.get(&2), Some(20));
    assert_eq!(cache.stats().refreshes, 1, "a key not cached is no refresh");
}

#[test]
fn refresh_does_not_take_a_load_begun_before_it() {
    let (cache, heard) = plain();
    let cache = Arc::new(cache);
    let (loading, release) = common::loading_until_released(&cache, 1, 1_000);
    let mut refresh = Box::pin(cache.refresh_async(1, async { 5 }));
    // It waits for the older load to end rather than join it.
    assert!(poll_once(refresh.as_mut()).is_pending());
    release.send(()).unwrap();
    assert_eq!(loading.join().unwrap(), 1_000, "its caller has its value");
    assert_eq!(common::block_on(refresh), 5);
    assert_eq!(cache.get(&1), Some(5));
    assert!(
        heard.lock().unwrap().is_empty(),
        "the older load's value was never cached"
    );
}

#[test]
fn a_failed_or_panicking_refresh_keeps_the_value() {
    let (cache, _) = plain();
    cache.insert(1, 10);
    let failed = cache.try_refresh(1, |_| Err::<u64, _>("down"));
    assert_eq!(*failed.unwrap_err(), "down");
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.stats().load_failures, 1);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.refresh(1, |_| panic!("loader panicked"))
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.get(&1), Some(10));
    {
        let mut cancelled = Box::pin(cache.refresh_async(1, std::future::pending()));
        assert!(poll_once(cancelled.as_mut()).is_pending());
    }
    assert_eq!(cache.get(&1), Some(10));
    // No load was left open.
    assert_eq!(cache.refresh(1, |_| 11), 11);
    assert_eq!(
        common::block_on(cache.try_refresh_async(1, async { Ok::<_, &str>(12) })),
        Ok(12)
    );
    let failed = common::block_on(cache.try_refresh_async(2, async { Err::<u64, _>("down") }));
    assert_eq!(*failed.unwrap_err(), "down");
    assert!(!cache.contains_key(&2));
}

#[test]
fn a_write_or_tag_invalidation_during_a_refresh_wins() {
    let (cache, _) = plain();
    cache.insert(1, 10);
    let refreshed = cache.refresh(1, |_| {
        cache.insert(1, 100);
        11
    });
    assert_eq!(refreshed, 11);
    assert_eq!(cache.get(&1), Some(100));
    cache.insert_with(2, 20, EntryOptions::new().tags(["team"]));
    let refreshed = cache.refresh(2, |_| {
        cache.invalidate_tag("team");
        21
    });
    assert_eq!(refreshed, 21);
    assert_eq!(cache.get(&2), None, "the old entry's tag was invalidated");
}

#[test]
fn an_explicit_refresh_in_a_refreshing_cache_keeps_its_timing() {
    let (cache, time, _) = refreshing();
    cache.insert(1, 10);
    time.advance(AFTER);
    // Due: while the explicit refresh runs, hits take the cached value and
    // start no refresh of their own.
    let refreshed = cache.refresh(1, |_| {
        assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshing")), 10);
        11
    });
    assert_eq!(refreshed, 11);
    assert_eq!(cache.get_or_load(1, |_| unreachable!("fresh")), 11);
    // A failed one gives the write time back: still due.
    time.advance(AFTER);
    let failed = cache.try_refresh(1, |_| Err::<u64, _>("down"));
    assert!(failed.is_err());
    assert_eq!(cache.get_or_load(1, |_| 12), 12, "due again");
}

/// A store of rows that counts its loads, can fail or panic them, can run
/// a hook (on another thread, as another caller) once a load has read its
/// row, and, as an `AsyncStore`, keeps its loads pending while `held`.
#[derive(Default)]
struct Shelf {
    rows: Mutex<std::collections::HashMap<u32, u64>>,
    loads: AtomicU64,
    /// 0: working; 1: loads fail; 2: loads panic.
    state: AtomicU64,
    during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    held: std::sync::atomic::AtomicBool,
}

impl Shelf {
    fn set(&self, k: u32, v: Option<u64>) {
        let mut rows = self.rows.lock().unwrap();
        match v {
            Some(v) => rows.insert(k, v),
            None => rows.remove(&k),
        };
    }

    fn read(&self, k: &u32) -> Result<Option<u64>, &'static str> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        match self.state.load(Ordering::SeqCst) {
            1 => return Err("down"),
            2 => panic!("the store panicked"),
            _ => {}
        }
        let row = self.rows.lock().unwrap().get(k).copied();
        let hook = self.during.lock().unwrap().take();
        if let Some(hook) = hook {
            std::thread::spawn(hook).join().unwrap();
        }
        Ok(row)
    }

    fn apply(&self, op: &larder::Op<u32, u64>) {
        match op {
            larder::Op::Put(k, v) => self.set(*k, Some(*v)),
            larder::Op::Delete(k) => self.set(*k, None),
        }
    }
}

impl Store<u32, u64> for Shelf {
    type Error = &'static str;
    fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
        self.read(k)
    }
    fn write(&self, op: &larder::Op<u32, u64>) -> Result<(), Self::Error> {
        self.apply(op);
        Ok(())
    }
    fn load_options(&self, _: &u32, _: &u64) -> EntryOptions {
        EntryOptions::new().tags(["shelf"])
    }
}

impl larder::AsyncStore<u32, u64> for Shelf {
    type Error = &'static str;
    async fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
        std::future::poll_fn(|_| {
            if self.held.load(Ordering::SeqCst) {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        self.read(k)
    }
    async fn write_batch(&self, ops: &[larder::Op<u32, u64>]) -> Result<(), Self::Error> {
        ops.iter().for_each(|op| self.apply(op));
        Ok(())
    }
}

/// A listener's sink and the listener.
fn listener() -> (
    Heard,
    impl Fn(u32, u64, RemovalCause) + Send + Sync + 'static,
) {
    let heard = Heard::default();
    let sink = heard.clone();
    (heard, move |k, v, cause| {
        sink.lock().unwrap().push((k, v, cause))
    })
}

#[test]
fn a_store_refresh_reads_the_store_again() {
    let (heard, listen) = listener();
    let cache = Cache::builder()
        .max_capacity(100)
        .record_stats()
        .eviction_listener(listen)
        .read_through(Shelf::default())
        .build()
        .unwrap();
    let shelf = cache.store();
    shelf.set(1, Some(10));
    assert_eq!(cache.get(&1), Ok(Some(10)));
    shelf.set(1, Some(11)); // behind the cache's back
    assert_eq!(cache.get(&1), Ok(Some(10)));
    assert_eq!(cache.refresh(1), Ok(Some(11)));
    assert_eq!(cache.peek(&1), Some(11));
    assert_eq!(*heard.lock().unwrap(), [(1, 10, RemovalCause::Replaced)]);
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes, stats.loads, stats.hits, stats.misses),
        (1, 2, 1, 1)
    );
    // Cached with the store's options.
    cache.invalidate_tag("shelf");
    assert_eq!(cache.peek(&1), None);
    // A key not cached is loaded and cached; not counted as a refresh.
    assert_eq!(cache.refresh(1), Ok(Some(11)));
    assert_eq!(cache.peek(&1), Some(11));
    assert_eq!(cache.stats().refreshes, 1);
    // Gone from the store: taken out of the cache.
    heard.lock().unwrap().clear();
    shelf.set(1, None);
    assert_eq!(cache.refresh(1), Ok(None));
    assert_eq!(cache.peek(&1), None);
    assert_eq!(*heard.lock().unwrap(), [(1, 11, RemovalCause::Explicit)]);
    assert_eq!(cache.refresh(2), Ok(None), "nothing to take out");
}

#[test]
fn a_failed_panicking_or_cancelled_store_refresh_keeps_the_value() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shelf::default())
        .build()
        .unwrap();
    let shelf = cache.store();
    cache.put(1, 10).unwrap();
    shelf.set(1, Some(11));
    shelf.state.store(1, Ordering::SeqCst);
    assert_eq!(*cache.refresh(1).unwrap_err(), "down");
    assert_eq!(cache.peek(&1), Some(10));
    shelf.state.store(2, Ordering::SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.refresh(1))).is_err());
    assert_eq!(cache.peek(&1), Some(10));
    shelf.state.store(0, Ordering::SeqCst);
    shelf.held.store(true, Ordering::SeqCst);
    {
        let mut cancelled = Box::pin(cache.refresh_async(1));
        assert!(poll_once(cancelled.as_mut()).is_pending());
    }
    assert_eq!(cache.peek(&1), Some(10));
    assert_eq!(
        shelf.loads.load(Ordering::SeqCst),
        2,
        "the cancelled load never read"
    );
    // No load was left open.
    shelf.held.store(false, Ordering::SeqCst);
    assert_eq!(common::block_on(cache.refresh_async(1)), Ok(Some(11)));
    assert_eq!(cache.peek(&1), Some(11));
}

#[test]
fn a_write_during_a_store_refresh_wins() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Shelf::default(),
            larder::WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    let shelf = cache.store();
    shelf.set(1, Some(10));
    assert_eq!(cache.get(&1), Ok(Some(10)));
    let writer = cache.clone();
    *shelf.during.lock().unwrap() = Some(Box::new(move || writer.put(1, 100).unwrap()));
    // The refresh read 10 before the write: it returns it, and does not
    // cache it over the write.
    assert_eq!(cache.refresh(1), Ok(Some(10)));
    assert_eq!(cache.peek(&1), Some(100));
    // Now the queued write answers, without the store.
    let loads = shelf.loads.load(Ordering::SeqCst);
    assert_eq!(cache.refresh(1), Ok(Some(100)));
    cache.delete(&1).unwrap();
    assert_eq!(cache.refresh(1), Ok(None), "the queued delete");
    assert_eq!(
        shelf.loads.load(Ordering::SeqCst),
        loads,
        "the store not read"
    );
    assert_eq!(cache.peek(&1), None);
}

/// A load waiting for an older one to end, when a refresh arrives, may yet
/// end with a value cached before the refresh (a write's): the refresh
/// does not join it, but loads after it.
#[test]
fn refresh_does_not_take_a_pending_load_that_finds_an_older_write() {
    let (cache, _) = plain();
    let cache = Arc::new(cache);
    let (loading, release) = common::loading_until_released(&cache, 1, 1_000);
    // A tag invalidation: the running load may carry an invalidated tag,
    // so the next caller does not join it but waits for it to end.
    cache.invalidate_tag("elsewhere");
    let mut pending = Box::pin(cache.get_or_load_async(1, async { 99 }));
    assert!(poll_once(pending.as_mut()).is_pending());
    cache.insert(1, 2);
    let mut refresh = Box::pin(cache.refresh_async(1, async { 3 }));
    assert!(poll_once(refresh.as_mut()).is_pending());
    release.send(()).unwrap();
    assert_eq!(loading.join().unwrap(), 1_000);
    // The pending load finds the write's value and takes it...
    assert_eq!(common::block_on(pending), 2);
    // ...but the refresh, begun after that write, loads.
    assert_eq!(common::block_on(refresh), 3);
    assert_eq!(cache.get(&1), Some(3));
}

/// Refreshes arriving while another waits to start share its load: it
/// reads the source after all of them began.
#[test]
fn refreshes_waiting_together_share_one_load() {
    let (cache, _) = plain();
    let cache = Arc::new(cache);
    let (loading, release) = common::loading_until_released(&cache, 1, 1_000);
    let mut first = Box::pin(cache.refresh_async(1, async { 5 }));
    assert!(poll_once(first.as_mut()).is_pending());
    let mut second = Box::pin(cache.refresh_async(1, async {
        panic!("the first refresh's load is shared");
    }));
    assert!(poll_once(second.as_mut()).is_pending());
    release.send(()).unwrap();
    assert_eq!(loading.join().unwrap(), 1_000);
    assert_eq!(common::block_on(first), 5);
    assert_eq!(common::block_on(second), 5);
    assert_eq!(cache.get(&1), Some(5));
    // Once a refresh's load runs, a newcomer loads after it.
    assert_eq!(cache.refresh(1, |_| 6), 6);
}
