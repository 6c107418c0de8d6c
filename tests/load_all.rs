//! `get_or_load_all` and its kin: one loader call for the missing keys,
//! each key still in a flight of its own shared with single-key and other
//! bulk callers; errors, panics, cancellation, racing writes, refreshes and
//! the statistics.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use larder::{Cache, Clock};

fn cache() -> Cache<u32, u64> {
    Cache::builder()
        .max_capacity(1_000)
        .record_stats()
        .build()
        .unwrap()
}

/// Answers each key with ten times itself, except the keys over 100.
fn found(ids: &[u32]) -> Vec<(u32, u64)> {
    ids.iter()
        .filter(|&&id| id <= 100)
        .map(|&id| (id, u64::from(id) * 10))
        .collect()
}

/// A cache refreshing entries a minute after their write, on a mock clock.
fn refreshing() -> (Cache<u32, u64>, larder::MockClock) {
    let (clock, time) = Clock::mock();
    let cache = Cache::builder()
        .max_capacity(100)
        .refresh_after(Duration::from_secs(60))
        .clock(clock)
        .record_stats()
        .build()
        .unwrap();
    (cache, time)
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn one_call_loads_the_missing_keys_in_order() {
    let cache = cache();
    cache.insert(1, 111);
    let mut calls = Vec::new();
    let values = cache.get_or_load_all([3, 1, 200, 2, 3], |ids| {
        calls.push(ids.to_vec());
        let mut answer = found(ids);
        answer.reverse(); // in any order
        answer.push((7, 70)); // not asked: dropped
        answer
    });
    assert_eq!(calls, [vec![3, 200, 2]]);
    assert_eq!(values, [Some(30), Some(111), None, Some(20), Some(30)]);
    assert_eq!(cache.get(&3), Some(30));
    assert_eq!(cache.get(&2), Some(20));
    assert!(!cache.contains_key(&200), "nothing found is not cached");
    assert!(!cache.contains_key(&7), "keys not asked for are not cached");
    // All cached now: the loader is not called.
    let values = cache.get_or_load_all([1, 2, 3], |_| -> Vec<(u32, u64)> {
        unreachable!("all cached")
    });
    assert_eq!(values, [Some(111), Some(20), Some(30)]);
    let none: Vec<u32> = Vec::new();
    let values = cache.get_or_load_all(none, |_| -> Vec<(u32, u64)> {
        unreachable!("nothing asked")
    });
    assert!(values.is_empty());
}

#[test]
fn many_keys_given_twice_are_asked_once() {
    let cache = cache();
    // Past the keys found by a scan: through a table.
    let keys: Vec<u32> = (0..40).chain((0..40).rev()).chain([7]).collect();
    let mut asked = Vec::new();
    let values = cache.get_or_load_all(keys.clone(), |ids| {
        asked.push(ids.to_vec());
        found(ids)
    });
    assert_eq!(asked, [(0..40).collect::<Vec<_>>()]);
    let expected: Vec<_> = keys.iter().map(|&k| Some(u64::from(k) * 10)).collect();
    assert_eq!(values, expected);
}

#[test]
fn the_first_answer_for_a_key_counts() {
    let cache = cache();
    let values = cache.get_or_load_all([1], |_| [(1, 10), (1, 11)]);
    assert_eq!(values, [Some(10)]);
    assert_eq!(cache.get(&1), Some(10));
}

#[test]
fn statistics_count_each_key_given_and_each_key_asked() {
    let cache = cache();
    cache.insert(1, 10);
    cache.get_or_load_all([1, 2, 3, 2, 1], found);
    let stats = cache.stats();
    // Key 2, given twice, missed twice but was asked once.
    assert_eq!((stats.hits, stats.misses), (2, 3));
    assert_eq!((stats.loads, stats.load_failures), (2, 0));
    let _ = cache.try_get_or_load_all([4, 5, 6], |_| Err::<Vec<(u32, u64)>, _>("down"));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (5, 3));
}

#[test]
fn single_key_callers_share_a_bulk_load() {
    let cache = cache();
    let mut waiter = None;
    let values = cache.get_or_load_all([1, 2], |ids| {
        // While the bulk load runs, an async caller of key 2 (on this very
        // thread) waits for it instead of loading.
        let mut joined = Box::pin(cache.get_or_load_async(2, async { unreachable!("shared") }));
        assert!(poll_once(joined.as_mut()).is_pending());
        waiter = Some(joined);
        found(ids)
    });
    assert_eq!(values, [Some(10), Some(20)]);
    let mut waiter = waiter.unwrap();
    assert_eq!(poll_once(waiter.as_mut()), Poll::Ready(20));
}

#[test]
fn a_bulk_call_waits_for_keys_another_caller_is_loading() {
    let cache = Arc::new(cache());
    let (loading, release) = common::loading_until_released(&cache, 1, 1_000);
    let mut calls = Vec::new();
    let values = cache.get_or_load_all([1, 2], |ids| {
        calls.push(ids.to_vec());
        // Asked only for the key no one loads, before waiting for the other.
        release.send(()).unwrap();
        found(ids)
    });
    assert_eq!(calls, [vec![2]]);
    assert_eq!(values, [Some(1_000), Some(20)]);
    assert_eq!(loading.join().unwrap(), 1_000);
}

#[test]
fn overlapping_bulk_calls_do_not_wait_for_each_other() {
    let cache = Arc::new(cache());
    let (started_tx, started) = mpsc::channel();
    let (loaded_tx, loaded) = mpsc::channel::<()>();
    let first = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_load_all([1, 3], |ids| {
                started_tx.send(()).unwrap();
                // The second call must load its own key 2 while this one
                // still leads key 1, which it waits for.
                let its_load = loaded.recv_timeout(Duration::from_secs(30));
                assert!(its_load.is_ok(), "the second bulk call waited first");
                found(ids)
            })
        })
    };
    started.recv().unwrap();
    let mut calls = Vec::new();
    let values = cache.get_or_load_all([2, 1], |ids| {
        calls.push(ids.to_vec());
        loaded_tx.send(()).unwrap();
        found(ids)
    });
    assert_eq!(calls, [vec![2]]);
    assert_eq!(values, [Some(20), Some(10)]);
    assert_eq!(first.join().unwrap(), [Some(10), Some(30)]);
}

#[test]
fn a_key_whose_stale_load_still_runs_is_loaded_once_it_ends() {
    let cache = Arc::new(cache());
    let (loading, release) = common::loading_until_released(&cache, 1, 1_000);
    // The removal makes the running load stale: its value will not be
    // cached, and no later caller may take it.
    cache.remove(&1);
    let mut calls = Vec::new();
    let values = cache.get_or_load_all([1, 2], |ids| {
        calls.push(ids.to_vec());
        if calls.len() == 1 {
            release.send(()).unwrap();
        }
        found(ids)
    });
    assert_eq!(calls, [vec![2], vec![1]]);
    assert_eq!(values, [Some(10), Some(20)]);
    assert_eq!(loading.join().unwrap(), 1_000);
    assert_eq!(cache.get(&1), Some(10));
}

#[test]
fn a_write_during_the_load_wins() {
    let cache = cache();
    let values = cache.get_or_load_all([1, 2], |ids| {
        cache.insert(1, 100);
        cache.remove(&2);
        found(ids)
    });
    assert_eq!(
        values,
        [Some(10), Some(20)],
        "the callers get what was loaded"
    );
    assert_eq!(cache.get(&1), Some(100));
    assert_eq!(cache.get(&2), None);
}

#[test]
fn a_failed_load_fails_every_key_and_caches_nothing() {
    let cache = cache();
    cache.insert(1, 10);
    let mut waiter = None;
    let failed = cache.try_get_or_load_all([1, 2, 3], |ids| {
        assert_eq!(ids, [2, 3]);
        let mut joined = Box::pin(cache.try_get_or_load_async(3, async { Ok::<u64, &str>(0) }));
        assert!(poll_once(joined.as_mut()).is_pending());
        waiter = Some(joined);
        Err::<Vec<(u32, u64)>, _>("db down")
    });
    let error = failed.unwrap_err();
    assert_eq!(*error, "db down");
    // The waiter of the same error type gets the same error.
    match poll_once(waiter.unwrap().as_mut()) {
        Poll::Ready(Err(shared)) => assert!(Arc::ptr_eq(&shared, &error)),
        other => panic!("expected the shared error, got {other:?}"),
    }
    assert!(!cache.contains_key(&2) && !cache.contains_key(&3));
    let loaded = cache.try_get_or_load_all([2, 3], |ids| Ok::<_, &str>(found(ids)));
    assert_eq!(loaded, Ok(vec![Some(20), Some(30)]));
}

#[test]
fn a_panicking_loader_hands_its_keys_to_their_waiters() {
    let cache = Arc::new(cache());
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let bulk = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            catch_unwind(AssertUnwindSafe(|| {
                cache.get_or_load_all([1, 2], |_| -> Vec<(u32, u64)> {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    panic!("loader panicked")
                })
            }))
        })
    };
    started.recv().unwrap();
    // An async caller of key 2 joins the bulk load, which then panics: the
    // caller loads the key itself.
    let mut joined = Box::pin(cache.get_or_load_async(2, async { 22 }));
    assert!(poll_once(joined.as_mut()).is_pending());
    release.send(()).unwrap();
    assert!(
        bulk.join().unwrap().is_err(),
        "the panic reaches the bulk caller"
    );
    assert_eq!(common::block_on(joined), 22);
    assert_eq!(cache.get(&2), Some(22));
    assert_eq!(cache.get_or_load_all([1], found), [Some(10)]);
    assert_eq!(cache.stats().load_failures, 2);
}

#[test]
fn a_loader_asking_for_its_own_key_panics() {
    let cache = cache();
    let asked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load_all([1, 2], |ids| {
            cache.get_or_load(2, |_| 0);
            found(ids)
        })
    }));
    assert!(asked.is_err());
    // The loads were abandoned, not left open.
    assert_eq!(cache.get_or_load_all([1, 2], found), [Some(10), Some(20)]);
    let asked = catch_unwind(AssertUnwindSafe(|| {
        common::block_on(cache.get_or_load_all_async([3, 4], |ids| {
            let cache = &cache;
            async move {
                cache.get_or_load_async(4, async { 0 }).await;
                found(&ids)
            }
        }))
    }));
    assert!(
        asked.is_err(),
        "an async loader asking for its key panics too"
    );
    assert_eq!(cache.get_or_load(4, |_| 44), 44);
}

/// An async bulk loader asking for one of its keys before it returns its
/// future (in the closure's body, not the future's) panics too, instead of
/// waiting for the load its own call leads. Run on a thread of its own, so
/// that a regression hangs that thread, not the test.
#[test]
fn an_async_bulk_loader_asking_for_its_own_key_before_its_future_panics() {
    let cache = cache();
    let (tx, rx) = mpsc::channel();
    let asker = cache.clone();
    std::thread::spawn(move || {
        let asked = catch_unwind(AssertUnwindSafe(|| {
            common::block_on(asker.get_or_load_all_async([1, 2], |ids| {
                asker.get_or_load(2, |_| 0);
                async move { found(&ids) }
            }))
        }));
        let message = asked.err().map(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let _ = tx.send(message);
    });
    let message = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the call waited for itself")
        .expect("the call panicked");
    assert!(message.contains("key it is loading"), "{message}");
    // The loads were abandoned, not left open.
    assert_eq!(cache.get_or_load_all([1, 2], found), [Some(10), Some(20)]);
}

/// A cache of room for one entry whose listener, on the first removal it
/// hears, loads key 2 through the cache, and records what it got.
fn listener_loading_2() -> (Cache<u32, u64>, Arc<Mutex<Option<u64>>>) {
    let cache_slot: Arc<std::sync::OnceLock<Cache<u32, u64>>> = Arc::default();
    let got: Arc<Mutex<Option<u64>>> = Arc::default();
    let (slot, seen) = (cache_slot.clone(), got.clone());
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(1)
        .shards(1)
        .eviction_listener(move |_, _, _| {
            let mut seen = seen.lock().unwrap();
            if seen.is_none() {
                let cache = slot.get().expect("set after the build");
                *seen = Some(cache.get_or_load(2, |_| 222));
            }
        })
        .build()
        .unwrap();
    assert!(cache_slot.set(cache.clone()).is_ok());
    cache.insert(0, 0);
    (cache, got)
}

/// A listener hearing of what a bulk load's landing removed may load a key
/// of the same batch landed after it, as it may for a single key's load:
/// it hears once every flight of the batch has ended. Before, it waited
/// for a flight its own thread led (async) or was taken for the loader
/// asking for its own key (sync). Each call runs on a thread of its own, so
/// that a regression hangs that thread, not the test.
#[test]
fn a_listener_may_load_a_key_landed_later_in_the_same_batch() {
    type Bulk = fn(&Cache<u32, u64>) -> Vec<Option<u64>>;
    let calls: [(&str, Bulk); 2] = [
        ("get_or_load_all", |cache| {
            cache.get_or_load_all([1, 2], found)
        }),
        ("get_or_load_all_async", |cache| {
            common::block_on(cache.get_or_load_all_async([1, 2], |ids| async move { found(&ids) }))
        }),
    ];
    for (name, call) in calls {
        let (cache, got) = listener_loading_2();
        let (tx, rx) = mpsc::channel();
        let caller = cache.clone();
        std::thread::spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| call(&caller))).is_ok());
        });
        let returned = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name}: the listener waited for the batch"));
        assert!(returned, "{name}: the call panicked");
        let got = got.lock().unwrap().expect("the listener heard a removal");
        assert!(
            got == 20 || got == 222,
            "{name}: the listener read key 2 as the batch loaded it, or loaded it \
             itself once it had gone: {got}"
        );
    }
}

#[test]
fn async_bulk_calls_load_and_share() {
    let cache = cache();
    cache.insert(1, 10);
    let values = common::block_on(cache.get_or_load_all_async([1, 2, 300], |ids| async move {
        assert_eq!(ids, [2, 300]);
        found(&ids)
    }));
    assert_eq!(values, [Some(10), Some(20), None]);
    let failed = common::block_on(
        cache.try_get_or_load_all_async([5], |_| async { Err::<Vec<(u32, u64)>, _>("down") }),
    );
    assert_eq!(*failed.unwrap_err(), "down");
    let loaded = common::block_on(
        cache.try_get_or_load_all_async([5], |ids| async move { Ok::<_, &str>(found(&ids)) }),
    );
    assert_eq!(loaded, Ok(vec![Some(50)]));
}

#[test]
fn a_cancelled_async_bulk_call_abandons_its_loads() {
    let cache = cache();
    {
        let pending = |_| std::future::pending::<Vec<(u32, u64)>>();
        let mut bulk = Box::pin(cache.get_or_load_all_async([1, 2], pending));
        assert!(poll_once(bulk.as_mut()).is_pending());
        // A caller arriving meanwhile waits for it.
        let mut joined = Box::pin(cache.get_or_load_async(1, async { 11 }));
        assert!(poll_once(joined.as_mut()).is_pending());
        // Dropped here: cancelled.
        drop(bulk);
        assert_eq!(poll_once(joined.as_mut()), Poll::Ready(11));
    }
    assert_eq!(cache.get_or_load(2, |_| 22), 22);
    let stats = cache.stats();
    assert_eq!(
        (stats.loads, stats.load_failures),
        (4, 0),
        "a cancellation is no failure"
    );
}

#[test]
fn due_entries_are_refreshed_in_the_bulk_load() {
    let (cache, time) = refreshing();
    cache.insert(1, 1);
    cache.insert(2, 2);
    time.advance(Duration::from_secs(30));
    cache.insert(3, 3);
    time.advance(Duration::from_secs(30));
    let calls = Mutex::new(Vec::new());
    let values = cache.get_or_load_all([1, 2, 3, 4], |ids| {
        calls.lock().unwrap().push(ids.to_vec());
        // While the refresh runs, other callers take the cached values.
        assert_eq!(cache.get_or_load(1, |_| unreachable!("refreshing")), 1);
        // Key 2 is found no more: it goes.
        found(ids)
            .into_iter()
            .filter(|&(id, _)| id != 2)
            .collect::<Vec<_>>()
    });
    assert_eq!(*calls.lock().unwrap(), [vec![1, 2, 4]]);
    assert_eq!(cache.stats().refreshes, 2);
    assert_eq!(values, [Some(10), None, Some(3), Some(40)]);
    assert_eq!(cache.get(&1), Some(10));
    assert!(!cache.contains_key(&2));
    // A failed refresh of due keys alone returns their cached values and
    // leaves them due.
    time.advance(Duration::from_secs(60));
    let failed = cache.try_get_or_load_all([1, 3], |_| Err::<Vec<(u32, u64)>, _>("down"));
    assert_eq!(failed, Ok(vec![Some(10), Some(3)]));
    let failed = cache.try_get_or_load_all([1, 5], |_| Err::<Vec<(u32, u64)>, _>("down"));
    assert_eq!(*failed.unwrap_err(), "down", "key 5 was no refresh");
    let values = cache.get_or_load_all([1, 3], found);
    assert_eq!(values, [Some(10), Some(30)], "still due: reloaded");
}

#[test]
fn a_panicking_bulk_refresh_leaves_its_entries_due() {
    let (cache, time) = refreshing();
    cache.insert(1, 1);
    time.advance(Duration::from_secs(60));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load_all([1, 2], |_| -> Vec<(u32, u64)> { panic!("loader panicked") })
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.get(&1), Some(1));
    // Still due: the next loading call reloads it.
    assert_eq!(cache.get_or_load(1, |_| 10), 10);
}

thread_local! {
    /// What the next use of key 13 panics in, if anything, on this thread.
    static TOUCHY: std::cell::Cell<Touch> = const { std::cell::Cell::new(Touch::None) };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Touch {
    None,
    Hash,
    Clone,
}

/// A key whose `Hash` or `Clone` panics once, for key 13, when armed.
#[derive(Debug, PartialEq, Eq)]
struct Touchy(u32);

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 13 && TOUCHY.with(|t| t.get()) == Touch::Hash {
            TOUCHY.with(|t| t.set(Touch::None));
            panic!("key 13's hash panics");
        }
        self.0.hash(state);
    }
}

impl Clone for Touchy {
    fn clone(&self) -> Self {
        if self.0 == 13 && TOUCHY.with(|t| t.get()) == Touch::Clone {
            TOUCHY.with(|t| t.set(Touch::None));
            panic!("key 13's clone panics");
        }
        Touchy(self.0)
    }
}

#[test]
fn a_panicking_key_leaves_no_load_open() {
    let cache: Cache<Touchy, u64> = Cache::builder().max_capacity(100).build().unwrap();
    let answer = |ids: &[Touchy]| ids.iter().map(|k| (k.clone(), 7)).collect::<Vec<_>>();
    // Key 13's clone, as its flight is made, after key 1's flight was.
    TOUCHY.with(|t| t.set(Touch::Clone));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load_all(
            [Touchy(1), Touchy(13), Touchy(2)],
            |_| -> Vec<(Touchy, u64)> { unreachable!("the keys' flights are not all made") },
        )
    }));
    assert!(panicked.is_err());
    // A key returned by the loader whose hash panics, after it ran.
    TOUCHY.with(|t| t.set(Touch::None));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load_all([Touchy(3), Touchy(4)], |ids| {
            TOUCHY.with(|t| t.set(Touch::Hash));
            let mut found = answer(ids);
            found.insert(0, (Touchy(13), 13));
            found
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(TOUCHY.with(|t| t.get()), Touch::None, "the hash panicked");
    // Every flight was abandoned: loading the keys again (on this thread,
    // where an open flight would be found its own) loads them.
    // (Key 13 too: the loader's pair for it, not asked, was not cached.)
    for k in [1, 2, 3, 4, 13] {
        let value = u64::from(k) + 100;
        assert_eq!(cache.get_or_load(Touchy(k), |_| value), value);
    }
    let values = cache.get_or_load_all((1..=5).map(Touchy), answer);
    assert_eq!(
        values,
        [Some(101), Some(102), Some(103), Some(104), Some(7)]
    );
    assert_eq!(cache.len(), 6);
}

#[test]
fn concurrent_bulk_and_single_callers_load_each_key_once() {
    const ROUNDS: u32 = 300;
    // Each round, the threads (in step) draw from the same 16 fresh keys.
    const KEYS: u32 = ROUNDS * 16;
    let step = Arc::new(std::sync::Barrier::new(4));
    let cache: Arc<Cache<u32, u64>> =
        Arc::new(Cache::builder().max_capacity(100_000).build().unwrap());
    let loads: Arc<Vec<std::sync::atomic::AtomicU32>> = Arc::new(
        (0..KEYS)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect(),
    );
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = cache.clone();
            let loads = loads.clone();
            let step = step.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9 + t;
                let mut drawn = Vec::new();
                for round in 0..ROUNDS {
                    let keys: Vec<u32> = (0..8)
                        .map(|_| round * 16 + (common::xorshift(&mut x) % 16) as u32)
                        .collect();
                    step.wait();
                    drawn.extend_from_slice(&keys);
                    let load = |k: u32| {
                        loads[k as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::thread::yield_now();
                        u64::from(k) * 3
                    };
                    if (round + t as u32) % 3 == 0 {
                        for &k in &keys {
                            assert_eq!(cache.get_or_load(k, |&k| load(k)), u64::from(k) * 3);
                        }
                    } else {
                        let values = cache.get_or_load_all(keys.iter().copied(), |ids| {
                            ids.iter().map(|&k| (k, load(k))).collect::<Vec<_>>()
                        });
                        let expected: Vec<_> =
                            keys.iter().map(|&k| Some(u64::from(k) * 3)).collect();
                        assert_eq!(values, expected);
                    }
                }
                drawn
            })
        })
        .collect();
    let mut drawn = std::collections::HashSet::new();
    for thread in threads {
        drawn.extend(thread.join().unwrap());
    }
    for (k, n) in loads.iter().enumerate() {
        let n = n.load(std::sync::atomic::Ordering::Relaxed);
        let expected = u32::from(drawn.contains(&(k as u32)));
        assert_eq!(
            n, expected,
            "key {k}: loaded once if asked, as nothing evicted or wrote it"
        );
    }
}

#[test]
fn answers_may_carry_their_options() {
    let (clock, time) = Clock::mock();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .build()
        .unwrap();
    let values = cache.get_or_load_all([1, 2, 3], |ids| {
        ids.iter()
            .map(|&id| {
                let options = larder::EntryOptions::new()
                    .tags([format!("parity:{}", id % 2)])
                    .ttl(Duration::from_secs(u64::from(id)));
                (id, u64::from(id), options)
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(values, [Some(1), Some(2), Some(3)]);
    cache.invalidate_tag("parity:0");
    assert_eq!(cache.get(&2), None, "tagged");
    time.advance(Duration::from_secs(2));
    assert_eq!(cache.get(&1), None, "its own time-to-live");
    assert_eq!(cache.get(&3), Some(3));
    // A tag invalidated while the loader ran: returned, not cached.
    let values = cache.get_or_load_all([4], |_| {
        cache.invalidate_tag("late");
        [(4, 4, larder::EntryOptions::new().tags(["late"]))]
    });
    assert_eq!(values, [Some(4)]);
    assert_eq!(cache.get(&4), None);
}

/// A store of squares below 100 that counts its bulk reads, and fails them
/// while `down`.
#[derive(Default)]
struct Squares {
    bulk_reads: std::sync::atomic::AtomicUsize,
    down: std::sync::atomic::AtomicBool,
    /// The keys of every bulk read, in turn.
    asked: Mutex<Vec<u32>>,
}

impl larder::Store<u32, u64> for Squares {
    type Error = &'static str;
    fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
        Ok((*k < 100).then(|| u64::from(*k) * u64::from(*k)))
    }
    fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u64)>, Self::Error> {
        self.bulk_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.asked.lock().unwrap().extend_from_slice(keys);
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("down");
        }
        Ok(keys
            .iter()
            .filter_map(|k| Some((*k, self.load(k).ok()??)))
            .collect())
    }
    fn write(&self, _: &larder::Op<u32, u64>) -> Result<(), Self::Error> {
        Ok(())
    }
    fn load_options(&self, k: &u32, _: &u64) -> larder::EntryOptions {
        larder::EntryOptions::new().tags([format!("parity:{}", k % 2)])
    }
}

#[test]
fn a_read_through_get_all_asks_the_store_once() {
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(Squares::default())
        .build()
        .unwrap();
    assert_eq!(cache.get(&2), Ok(Some(4)));
    let reads = || {
        cache
            .store()
            .bulk_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        cache.get_all([1, 2, 3, 700]),
        Ok(vec![Some(1), Some(4), Some(9), None])
    );
    assert_eq!(reads(), 1, "the misses in one call");
    assert_eq!(
        cache.get_all([1, 2, 3]),
        Ok(vec![Some(1), Some(4), Some(9)])
    );
    assert_eq!(reads(), 1, "all cached");
    // With the store's options: tags.
    cache.invalidate_tag("parity:1");
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, Some(4)));
    // The store's error, nothing cached.
    cache
        .store()
        .down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(*cache.get_all([1, 2, 5]).unwrap_err(), "down");
    assert_eq!(cache.peek(&5), None);
}

#[test]
fn a_write_through_get_all_uses_the_default_bulk_read() {
    /// Implements `load` alone: `load_all` is the default, one `load` per
    /// key.
    #[derive(Default)]
    struct Plain(Mutex<Vec<u32>>);
    impl larder::Store<u32, u64> for Plain {
        type Error = std::convert::Infallible;
        fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
            self.0.lock().unwrap().push(*k);
            Ok((*k != 0).then(|| u64::from(*k)))
        }
        fn write(&self, _: &larder::Op<u32, u64>) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Plain::default())
        .build()
        .unwrap();
    cache.put(1, 100).unwrap();
    assert_eq!(cache.get_all([0, 1, 2]), Ok(vec![None, Some(100), Some(2)]));
    assert_eq!(*cache.store().0.lock().unwrap(), [0, 2]);
    assert_eq!(cache.peek(&2), Some(2));
}

#[test]
fn an_async_get_all_uses_the_default_bulk_read_and_can_be_cancelled() {
    /// Implements `load` alone; pending until `open`, failing while `down`.
    #[derive(Default)]
    struct Remote {
        loads: Mutex<Vec<u32>>,
        open: std::sync::atomic::AtomicBool,
        down: std::sync::atomic::AtomicBool,
    }
    impl larder::AsyncStore<u32, u64> for Remote {
        type Error = &'static str;
        async fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
            std::future::poll_fn(|_| {
                if self.open.load(std::sync::atomic::Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            self.loads.lock().unwrap().push(*k);
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("down");
            }
            Ok((*k != 0).then(|| u64::from(*k)))
        }
        async fn write_batch(&self, _: &[larder::Op<u32, u64>]) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(Remote::default())
        .build()
        .unwrap();
    {
        // Cancelled while the store is pending: a caller waiting on one of
        // its keys then loads it itself.
        let mut bulk = Box::pin(cache.get_all_async([1, 2]));
        assert!(poll_once(bulk.as_mut()).is_pending());
        let mut joined = Box::pin(cache.get_async(&2));
        assert!(poll_once(joined.as_mut()).is_pending());
        drop(bulk);
        cache
            .store()
            .open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(poll_once(joined.as_mut()), Poll::Ready(Ok(Some(2))));
    }
    assert_eq!(
        common::block_on(cache.get_all_async([0, 1, 2])),
        Ok(vec![None, Some(1), Some(2)])
    );
    assert_eq!(*cache.store().loads.lock().unwrap(), [2, 0, 1]);
    cache
        .store()
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = common::block_on(cache.get_all_async([3, 4]));
    assert_eq!(*failed.unwrap_err(), "down");
    assert_eq!(
        *cache.store().loads.lock().unwrap(),
        [2, 0, 1, 3],
        "stops at the first error"
    );
}

#[test]
fn a_write_back_get_all_reads_the_queue_before_the_store() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Squares::default(),
            larder::WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    cache.put(5, 55).unwrap();
    cache.delete(&3).unwrap();
    cache.put(8, 88).unwrap();
    // The cache alone: the queue keeps the writes of 5, 3 and 8.
    cache.invalidate_all();
    assert_eq!(
        cache.get_all([1, 3, 5, 700, 8]),
        Ok(vec![Some(1), None, Some(55), None, Some(88)])
    );
    assert_eq!(
        *cache.store().asked.lock().unwrap(),
        [1, 700],
        "only the keys the queue has no write for, in one call"
    );
    // The queued values are cached as the store's would be, with its
    // options; the deleted key is not cached.
    assert_eq!((cache.peek(&5), cache.peek(&3)), (Some(55), None));
    cache.invalidate_tag("parity:1");
    assert_eq!((cache.peek(&5), cache.peek(&8)), (None, Some(88)));
    // With the store down, keys the queue answers still read.
    cache
        .store()
        .down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(cache.get_all([3, 5]), Ok(vec![None, Some(55)]));
    assert_eq!(cache.store().asked.lock().unwrap().len(), 2, "not asked");
    assert_eq!(*cache.get_all([5, 9]).unwrap_err(), "down");
    assert_eq!(cache.peek(&9), None);
    cache
        .store()
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(cache.get_all([9]), Ok(vec![Some(81)]));
}

#[test]
fn a_write_back_put_during_the_bulk_read_wins() {
    /// Squares, whose bulk read waits for a word from the test once it has
    /// said it started.
    struct Gated {
        started: Mutex<mpsc::Sender<()>>,
        go: Mutex<mpsc::Receiver<()>>,
    }
    impl larder::Store<u32, u64> for Gated {
        type Error = std::convert::Infallible;
        fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
            Ok(Some(u64::from(*k) * u64::from(*k)))
        }
        fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u64)>, Self::Error> {
            self.started.lock().unwrap().send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            Ok(keys
                .iter()
                .map(|k| (*k, u64::from(*k) * u64::from(*k)))
                .collect())
        }
        fn write(&self, _: &larder::Op<u32, u64>) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let (started, on_start) = mpsc::channel();
    let (go, on_go) = mpsc::channel();
    let store = Gated {
        started: Mutex::new(started),
        go: Mutex::new(on_go),
    };
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(store, larder::WriteBack::default().max_delay(Duration::MAX))
        .build()
        .unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| cache.get_all([6, 7]));
        on_start.recv().unwrap();
        cache.put(7, 700).unwrap();
        go.send(()).unwrap();
        // The read began before the write: it may answer the store's value.
        assert_eq!(reader.join().unwrap(), Ok(vec![Some(36), Some(49)]));
    });
    assert_eq!(cache.peek(&6), Some(36));
    assert_eq!(cache.peek(&7), Some(700), "the write, not the older read");
    assert_eq!(cache.get_all([7]), Ok(vec![Some(700)]));
}

#[test]
fn an_async_write_back_get_all_reads_the_queue_before_the_store() {
    /// Squares over an `AsyncStore`, recording the keys of its bulk reads.
    #[derive(Default)]
    struct Remote(Mutex<Vec<u32>>);
    impl larder::AsyncStore<u32, u64> for Remote {
        type Error = std::convert::Infallible;
        async fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
            Ok(Some(u64::from(*k) * u64::from(*k)))
        }
        async fn load_all(&self, keys: &[u32]) -> Result<Vec<(u32, u64)>, Self::Error> {
            self.0.lock().unwrap().extend_from_slice(keys);
            Ok(keys
                .iter()
                .map(|k| (*k, u64::from(*k) * u64::from(*k)))
                .collect())
        }
        async fn write_batch(&self, _: &[larder::Op<u32, u64>]) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let store = larder::Spawned::new(Remote::default(), |call| {
        std::thread::spawn(move || common::block_on(call));
    });
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(store, larder::WriteBack::default().max_delay(Duration::MAX))
        .build()
        .unwrap();
    common::block_on(async {
        cache.put_async(2, 20).await.unwrap();
        cache.delete_async(&3).await.unwrap();
        cache.invalidate_all();
        assert_eq!(
            cache.get_all_async([1, 2, 3, 4]).await,
            Ok(vec![Some(1), Some(20), None, Some(16)])
        );
        assert_eq!(cache.get_all_async([2, 3]).await, Ok(vec![Some(20), None]));
    });
    assert_eq!(*cache.store().store().0.lock().unwrap(), [1, 4]);
    assert_eq!(cache.peek(&2), Some(20));
}

#[test]
fn a_write_back_get_all_never_caches_a_store_row_over_a_queued_delete() {
    /// Answers every bulk read with all its rows, asked or not (a page).
    #[derive(Default)]
    struct Page(Mutex<std::collections::HashMap<u32, u64>>);
    impl larder::Store<u32, u64> for Page {
        type Error = std::convert::Infallible;
        fn load(&self, k: &u32) -> Result<Option<u64>, Self::Error> {
            Ok(self.0.lock().unwrap().get(k).copied())
        }
        fn load_all(&self, _: &[u32]) -> Result<Vec<(u32, u64)>, Self::Error> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect())
        }
        fn write(&self, op: &larder::Op<u32, u64>) -> Result<(), Self::Error> {
            let mut rows = self.0.lock().unwrap();
            match op {
                larder::Op::Put(k, v) => rows.insert(*k, *v),
                larder::Op::Delete(k) => rows.remove(k),
            };
            Ok(())
        }
    }
    let page = Page::default();
    page.0.lock().unwrap().extend([(1, 10), (2, 20), (3, 30)]);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(page, larder::WriteBack::default().max_delay(Duration::MAX))
        .build()
        .unwrap();
    cache.delete(&2).unwrap();
    cache.put(3, 33).unwrap();
    cache.invalidate_all();
    assert_eq!(cache.get_all([1, 2, 3]), Ok(vec![Some(10), None, Some(33)]));
    assert_eq!((cache.peek(&2), cache.peek(&3)), (None, Some(33)));
    cache.flush().unwrap();
    assert_eq!(cache.get(&2), Ok(None));
}
