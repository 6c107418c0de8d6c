//! Single-flight loading: one load per absent key however many callers, shared
//! errors, panic takeover, invalidation during a load, loaders that use the
//! cache, and the statistics.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use larder::Cache;

fn cache() -> Cache<u32, String> {
    Cache::builder().max_capacity(1_000).build().unwrap()
}

/// Waits until `n` callers have announced themselves, then gives the last of
/// them ample time to join the flight.
fn wait_for(arrived: &AtomicUsize, n: usize) {
    while arrived.load(Ordering::SeqCst) < n {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn sixty_four_threads_share_one_load() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    let start = Barrier::new(64);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                start.wait();
                let v = cache.get_or_load(1, |k| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    format!("value {k}")
                });
                assert_eq!(v, "value 1");
            });
        }
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&1).as_deref(), Some("value 1"));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (1, 0));
    assert!(stats.total_load_time >= Duration::from_millis(100));
}

/// Runs `callers` threads that each call `call` once for key 1 on a fresh
/// cache, the loader it passes calling `hook` first; returns the cache and
/// what the calls returned, from a trial in which the key loaded once. The
/// first load ends only once every caller is on its way, with time to join
/// (an outcome that is not cached would be loaded again by a caller
/// arriving after the flight ended). A caller that stalled for over 200 ms
/// between announcing itself and calling (a loaded machine) does arrive
/// late, and rightly loads again: such a trial is run again, up to ten
/// trials. A cache whose waiters did not take the flight's outcome would
/// load more than once in every trial. Loads of the key never overlap.
fn shared_flight<R: Send>(
    callers: usize,
    call: impl Fn(&Cache<u32, String>, &(dyn Fn() + Sync)) -> R + Sync,
) -> (Cache<u32, String>, Vec<R>) {
    const TRIALS: usize = 10;
    for _ in 0..TRIALS {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let loading = AtomicBool::new(false);
        let arrived = AtomicUsize::new(0);
        let results = Mutex::new(Vec::new());
        let hook = || {
            assert!(!loading.swap(true, Ordering::SeqCst), "loads overlap");
            if loads.fetch_add(1, Ordering::SeqCst) == 0 {
                wait_for(&arrived, callers);
            }
            loading.store(false, Ordering::SeqCst);
        };
        std::thread::scope(|s| {
            for _ in 0..callers {
                s.spawn(|| {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let result = call(&cache, &hook);
                    results.lock().unwrap().push(result);
                });
            }
        });
        if loads.load(Ordering::SeqCst) == 1 {
            return (cache, results.into_inner().unwrap());
        }
    }
    panic!("a caller missed the flight in each of {TRIALS} trials");
}

#[test]
fn errors_are_shared_and_not_cached() {
    let (cache, errors) = shared_flight(8, |cache, hook| {
        let result = cache.try_get_or_load(1, |_| {
            hook();
            Err::<String, _>(String::from("db down"))
        });
        result.unwrap_err()
    });
    assert_eq!(errors.len(), 8);
    assert!(
        errors
            .iter()
            .all(|e| Arc::ptr_eq(e, &errors[0]) && **e == "db down"),
        "one failed load, its error shared"
    );
    assert!(!cache.contains_key(&1), "an error is not cached");
    assert_eq!(
        cache.try_get_or_load(1, |_| Ok::<_, String>("up".into())),
        Ok("up".into())
    );
    assert_eq!(cache.stats().load_failures, 1);
}

/// Callers with a borrowed key (`_by_ref`, sync and async, plain, with
/// options, fallible and optional) share one flight with callers that hand the key over.
#[test]
fn borrowed_and_owned_keys_share_one_load() {
    let turn = AtomicUsize::new(0);
    let (cache, values) = shared_flight(8, |cache, hook| {
        let load = |k: &u32| {
            hook();
            format!("value {k}")
        };
        match turn.fetch_add(1, Ordering::SeqCst) % 6 {
            0 => cache.get_or_load(1, load),
            1 => cache.get_or_load_by_ref(&1, load),
            2 => cache
                .try_get_or_load_by_ref(&1, |k| Ok::<_, ()>(load(k)))
                .unwrap(),
            3 => cache
                .optionally_get_or_load_by_ref(&1, |k| Some(load(k)))
                .unwrap(),
            4 => cache.get_or_load_with_by_ref(&1, |k| (load(k), larder::EntryOptions::new())),
            _ => common::block_on(cache.get_or_load_by_ref_async(&1, async {
                hook();
                "value 1".to_string()
            })),
        }
    });
    assert_eq!(values.len(), 8);
    assert!(values.iter().all(|v| v == "value 1"), "{values:?}");
    assert_eq!(cache.get(&1).as_deref(), Some("value 1"));
    let failed = common::block_on(cache.try_get_or_load_by_ref_async(&2, async { Err("down") }));
    assert_eq!(*failed.unwrap_err(), "down");
    assert!(!cache.contains_key(&2), "an error is not cached");
}

#[test]
fn a_panicking_loader_hands_the_load_to_a_waiter() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    let leader_started = Barrier::new(2);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            catch_unwind(AssertUnwindSafe(|| {
                cache.get_or_load(1, |_| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    leader_started.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!("loader exploded");
                })
            }))
        });
        leader_started.wait();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    cache.get_or_load(1, |_| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        "recovered".to_string()
                    })
                })
            })
            .collect();
        let panic = leader.join().unwrap().unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"loader exploded"));
        for w in waiters {
            assert_eq!(w.join().unwrap(), "recovered");
        }
    });
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the panicking load and one takeover"
    );
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_failures), (2, 1));
}

#[test]
fn a_write_during_a_load_keeps_the_load_out_of_the_cache() {
    for write in [
        "remove",
        "insert",
        "invalidate_all",
        "invalidate_entries_if",
    ] {
        let cache = cache();
        cache.insert(1, "old".into());
        cache.remove(&1);
        let loading = Barrier::new(2);
        let written = Barrier::new(2);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                cache.get_or_load(1, |_| {
                    loading.wait();
                    written.wait();
                    "loaded".to_string()
                })
            });
            loading.wait();
            match write {
                "remove" => drop(cache.remove(&1)),
                "insert" => cache.insert(1, "written".into()),
                "invalidate_all" => cache.invalidate_all(),
                _ => cache.invalidate_entries_if(|_, _| true),
            }
            written.wait();
            assert_eq!(
                leader.join().unwrap(),
                "loaded",
                "{write}: the caller gets the load"
            );
        });
        let expected = (write == "insert").then(|| "written".to_string());
        assert_eq!(
            cache.get(&1),
            expected,
            "{write}: the load was not cached over it"
        );
    }
}

/// A caller that arrives after a write of the key, or after an invalidation
/// of a tag, must not take the value of a load that began before it: that
/// load may have read what the write replaced. Nor may it load alongside it
/// (one loader of a key at a time): it waits for that load to end, then loads
/// for itself, and its value is the one cached.
#[test]
fn a_caller_after_a_write_waits_for_the_older_load_then_loads_afresh() {
    use larder::EntryOptions;
    use std::sync::mpsc;
    for write in [
        "remove",
        "invalidate_all",
        "invalidate_entries_if",
        "invalidate_tag",
    ] {
        let cache = cache();
        let loading = Barrier::new(2);
        let (release, released) = mpsc::channel::<()>();
        let (late_loads, late_loaded) = mpsc::channel::<()>();
        let (cache, loading) = (&cache, &loading);
        std::thread::scope(|s| {
            let early = s.spawn(move || {
                cache.get_or_load_with(1, |_| {
                    loading.wait();
                    released.recv().unwrap();
                    ("before".to_string(), EntryOptions::new().tags(["t"]))
                })
            });
            loading.wait();
            match write {
                "remove" => drop(cache.remove(&1)),
                "invalidate_all" => cache.invalidate_all(),
                "invalidate_entries_if" => cache.invalidate_entries_if(|_, _| true),
                _ => cache.invalidate_tag("t"),
            }
            let late = s.spawn(move || {
                cache.get_or_load_with(1, |_| {
                    late_loads.send(()).unwrap();
                    ("after".to_string(), EntryOptions::new().tags(["t"]))
                })
            });
            // The early load is still running: a late caller that loaded
            // alongside it would have started by now.
            let loaded_alongside = late_loaded.recv_timeout(Duration::from_millis(300)).is_ok();
            release.send(()).unwrap();
            assert_eq!(early.join().unwrap(), "before", "{write}: the early caller");
            assert_eq!(late.join().unwrap(), "after", "{write}: the late caller");
            assert!(!loaded_alongside, "{write}: one loader at a time");
        });
        assert_eq!(
            cache.get(&1).as_deref(),
            Some("after"),
            "{write}: the older load was not cached over the newer"
        );
    }
}

/// A load replaced in the flight table by a caller after a tag invalidation
/// (of any tag) stays within reach of later writes: an insert or
/// `invalidate_all` during it must not be undone by its value.
#[test]
fn a_load_replaced_after_a_tag_invalidation_is_not_cached_over_a_later_write() {
    use std::sync::mpsc;
    for write in ["insert", "invalidate_all"] {
        let cache = cache();
        let (started, load_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let early = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load(1, |_| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    "old".to_string()
                })
            })
        };
        load_started.recv().unwrap();
        cache.invalidate_tag("unrelated");
        let second = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get_or_load(1, |_| "second".to_string()))
        };
        // Time for the second caller to replace the early flight and wait.
        std::thread::sleep(Duration::from_millis(100));
        match write {
            "insert" => cache.insert(1, "new".into()),
            _ => cache.invalidate_all(),
        }
        release.send(()).unwrap();
        assert_eq!(early.join().unwrap(), "old");
        let expected = if write == "insert" { "new" } else { "second" };
        assert_eq!(
            second.join().unwrap(),
            expected,
            "{write}: the second caller"
        );
        assert_eq!(
            cache.get(&1).as_deref(),
            Some(expected),
            "{write}: the early load stayed out"
        );
    }
}

/// A caller after a tag invalidation does not join a load that began before
/// it; it waits for it. When none of that load's own tags was invalidated,
/// its value is cached and the caller takes it without loading again (under
/// steady invalidations of other tags a hot key would otherwise never be
/// cached); when one was, the caller loads afresh.
#[test]
fn a_caller_after_a_tag_invalidation_takes_the_older_load_unless_its_tag_went() {
    use larder::EntryOptions;
    use std::sync::mpsc;
    /// The late caller's value, the loads it ran, and what is cached.
    fn overlap(invalidated: &str) -> (String, usize, Option<String>) {
        let cache = cache();
        let (started, load_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let early = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load_with(1, |_| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    ("old".to_string(), EntryOptions::new().tags(["t"]))
                })
            })
        };
        load_started.recv().unwrap();
        cache.invalidate_tag(invalidated);
        let loads = Arc::new(AtomicUsize::new(0));
        let late = {
            let (cache, loads) = (cache.clone(), loads.clone());
            std::thread::spawn(move || {
                cache.get_or_load(1, |_| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    "new".to_string()
                })
            })
        };
        // Time for the late caller to replace the early flight and wait.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(loads.load(Ordering::SeqCst), 0, "{invalidated}: it waits");
        release.send(()).unwrap();
        assert_eq!(early.join().unwrap(), "old");
        let late = late.join().unwrap();
        (late, loads.load(Ordering::SeqCst), cache.peek(&1))
    }
    let fresh = ("new".to_string(), 1, Some("new".to_string()));
    assert_eq!(overlap("t"), fresh, "the load's own tag went");
    // Invalidation marks are kept per hash bucket (64, randomly seeded per
    // cache): an unrelated tag shares "t"'s bucket one time in 64 and then
    // keeps the load out, conservatively, like its own tag. Of 8 caches, at
    // least one must show the older load taken (a false failure needs 8
    // collisions).
    let mut taken = 0;
    for _ in 0..8 {
        let outcome = overlap("unrelated");
        if outcome == ("old".to_string(), 0, Some("old".to_string())) {
            taken += 1;
        } else {
            assert_eq!(outcome, fresh, "an unrelated tag: taken, or kept out");
        }
    }
    assert!(taken >= 1, "the older load was never taken");
}

/// Loads of a hot key in a rolling overlap (each caller arrives after an
/// invalidation of the key's tag, while the previous load still runs) keep
/// no finished flight, and so no finished value, alive.
#[test]
fn a_rolling_overlap_of_loads_keeps_no_finished_value_alive() {
    use larder::EntryOptions;
    use std::sync::mpsc;
    type Running = (mpsc::Sender<()>, std::thread::JoinHandle<Arc<u64>>);
    let cache: Cache<u32, Arc<u64>> = Cache::builder().max_capacity(10).build().unwrap();
    let mut weaks = Vec::new();
    let mut running: Option<Running> = None;
    for k in 0..50u64 {
        cache.invalidate_tag("hot");
        let value = Arc::new(k);
        weaks.push(Arc::downgrade(&value));
        let (started, load_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let handle = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.get_or_load_with(1, move |_| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    (value, EntryOptions::new().tags(["hot"]))
                })
            })
        };
        // Time for the new caller to replace the running flight and wait.
        std::thread::sleep(Duration::from_millis(20));
        if let Some((release, previous)) = running.take() {
            release.send(()).unwrap();
            assert_eq!(*previous.join().unwrap(), k - 1);
        }
        load_started.recv().unwrap();
        running = Some((release, handle));
        // Every earlier value was handed out and not cached (its tag went
        // after its load began): none is alive any more.
        let alive = weaks[..weaks.len() - 1]
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count();
        assert_eq!(alive, 0, "after {k} finished loads");
    }
    let (release, last) = running.take().unwrap();
    release.send(()).unwrap();
    assert_eq!(*last.join().unwrap(), 49);
}

/// The race behind the test above, without the barriers inside the loader: an
/// `insert` and a `get_or_load` of one key start together, over and over,
/// while other writers keep the shard's lock busy. Whatever the interleaving,
/// the insert's value must be what stays: either the load saw it, or the load
/// looked before it landed and was marked stale by it (marking happens under
/// the shard's write lock, after which no load can look and miss).
#[test]
fn a_load_racing_an_insert_never_caches_over_it() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(1_000_000)
        .shards(1)
        .eviction(larder::Eviction::Lru)
        .build()
        .unwrap();
    const KEYS: u64 = 30_000;
    let stop = AtomicBool::new(false);
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for j in 0..2u64 {
            let (cache, stop) = (&cache, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    cache.insert(KEYS + j * 1_000 + i % 1_000, i);
                    i += 1;
                }
            });
        }
        let loader = s.spawn(|| {
            for k in 0..KEYS {
                start.wait();
                cache.get_or_load(k, |_| 0);
            }
        });
        for k in 0..KEYS {
            start.wait();
            cache.insert(k, 1);
        }
        loader.join().unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    let overwritten: Vec<u64> = (0..KEYS).filter(|k| cache.peek(k) != Some(1)).collect();
    assert!(
        overwritten.is_empty(),
        "{} of {KEYS} inserts lost to a racing load, e.g. key {:?}",
        overwritten.len(),
        overwritten.first()
    );
}

#[test]
fn loaders_may_use_the_cache_for_other_keys() {
    let cache = cache();
    let v = cache.get_or_load(1, |_| {
        let two = cache.get_or_load(2, |_| "two".to_string());
        format!("one and {two}")
    });
    assert_eq!(v, "one and two");
    assert_eq!(cache.get(&2).as_deref(), Some("two"));
}

#[test]
fn a_loader_asking_for_its_own_key_panics_instead_of_deadlocking() {
    let cache = cache();
    let result = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load(1, |_| cache.get_or_load(1, |_| "inner".to_string()))
    }));
    let panic = result.unwrap_err();
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("key it is loading"), "{message}");
    // The flight was abandoned, not left behind: the key loads normally.
    assert_eq!(cache.get_or_load(1, |_| "fine".to_string()), "fine");
}

#[test]
fn absent_results_are_shared_and_not_cached() {
    let (cache, results) = shared_flight(4, |cache, hook| {
        cache.optionally_get_or_load(1, |_| {
            hook();
            None
        })
    });
    assert_eq!(results, vec![None; 4]);
    assert!(!cache.contains_key(&1), "an absence is not cached");
    assert_eq!(cache.stats().loads, 1);
}

#[test]
fn waiters_of_another_kind_load_for_themselves() {
    // A `get_or_load` caller cannot take an error or an absence from a
    // flight it joined: it loads again itself.
    let cache = cache();
    let in_flight = Barrier::new(2);
    std::thread::scope(|s| {
        let failing = s.spawn(|| {
            cache.try_get_or_load(1, |_| {
                in_flight.wait();
                std::thread::sleep(Duration::from_millis(50));
                Err::<String, _>("nope")
            })
        });
        in_flight.wait();
        let v = cache.get_or_load(1, |_| "mine".to_string());
        assert_eq!(v, "mine");
        assert_eq!(*failing.join().unwrap().unwrap_err(), "nope");
    });
    assert_eq!(cache.get(&1).as_deref(), Some("mine"));
}

mod model {
    use std::collections::HashMap;

    use larder::Cache;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        GetOrLoad(u8, u16),
        TryLoad(u8, Option<u16>),
        Optionally(u8, Option<u16>),
        Insert(u8, u16),
        Remove(u8),
        Get(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, any::<u16>()).prop_map(|(k, v)| Op::GetOrLoad(k, v)),
            (0u8..16, any::<Option<u16>>()).prop_map(|(k, v)| Op::TryLoad(k, v)),
            (0u8..16, any::<Option<u16>>()).prop_map(|(k, v)| Op::Optionally(k, v)),
            (0u8..16, any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..16).prop_map(Op::Remove),
            (0u8..16).prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Loading calls mixed with writes agree with a map: a present key is
        /// returned without loading; an absent one is loaded and cached,
        /// except errors and absences.
        #[test]
        fn loading_calls_agree_with_a_map(ops in proptest::collection::vec(op(), 1..200)) {
            let cache: Cache<u8, u16> = Cache::builder().max_capacity(1_000).build().unwrap();
            let mut model: HashMap<u8, u16> = HashMap::new();
            let mut loads = 0u64;
            for op in ops {
                match op {
                    Op::GetOrLoad(k, v) => {
                        let was_present = model.contains_key(&k);
                        let mut ran = false;
                        let got = cache.get_or_load(k, |_| { ran = true; v });
                        let expected = *model.entry(k).or_insert(v);
                        prop_assert_eq!(got, expected);
                        prop_assert_eq!(ran, !was_present, "loaded exactly on a miss");
                        loads += u64::from(ran);
                    }
                    Op::TryLoad(k, v) => {
                        let mut ran = false;
                        let got = cache.try_get_or_load(k, |_| { ran = true; v.ok_or("no") });
                        match model.get(&k) {
                            Some(&present) => {
                                prop_assert!(!ran);
                                prop_assert_eq!(got, Ok(present));
                            }
                            None => {
                                prop_assert!(ran);
                                loads += 1;
                                match v {
                                    Some(v) => { prop_assert_eq!(got, Ok(v)); model.insert(k, v); }
                                    None => prop_assert_eq!(got.map_err(|e| *e), Err("no")),
                                }
                            }
                        }
                    }
                    Op::Optionally(k, v) => {
                        let got = cache.optionally_get_or_load(k, |_| v);
                        match model.get(&k) {
                            Some(&present) => prop_assert_eq!(got, Some(present)),
                            None => {
                                loads += 1;
                                prop_assert_eq!(got, v);
                                if let Some(v) = v { model.insert(k, v); }
                            }
                        }
                    }
                    Op::Insert(k, v) => { cache.insert(k, v); model.insert(k, v); }
                    Op::Remove(k) => prop_assert_eq!(cache.remove(&k), model.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(cache.get(&k), model.get(&k).copied()),
                }
            }
            prop_assert_eq!(cache.stats().loads, loads);
        }
    }
}

mod asynchronous {
    use super::common::block_on;
    use std::future::Future;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use larder::{Cache, EntryOptions};

    fn cache() -> Cache<u32, String> {
        Cache::builder().max_capacity(1_000).build().unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap()
    }

    /// A waker that counts how many of its kind are alive.
    struct Counted(Arc<AtomicUsize>);
    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    fn counted(live: &Arc<AtomicUsize>) -> Waker {
        live.fetch_add(1, Ordering::SeqCst);
        Waker::from(Arc::new(Counted(live.clone())))
    }

    #[test]
    fn waiters_dropped_while_the_load_runs_leave_nothing_behind() {
        let cache = cache();
        let live = Arc::new(AtomicUsize::new(0));
        let leader_waker = counted(&live);
        let mut leader =
            std::pin::pin!(cache.get_or_load_async(1, std::future::pending::<String>()));
        assert!(leader
            .as_mut()
            .poll(&mut Context::from_waker(&leader_waker))
            .is_pending());
        for _ in 0..1_000 {
            let waker = counted(&live);
            let mut waiter = Box::pin(cache.get_or_load_async(1, async { "mine".to_string() }));
            // Polled twice: the second poll must not register it again.
            for _ in 0..2 {
                assert!(waiter
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending());
            }
            drop(waiter); // a timeout, a lost select! branch
        }
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "only the leader's waker is still held"
        );
    }

    #[test]
    fn an_async_loader_asking_for_its_own_key_panics_instead_of_hanging() {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        let cache = cache();
        let message = |panic: Box<dyn std::any::Any + Send>| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        };
        // Through the async call...
        let nested_async = catch_unwind(AssertUnwindSafe(|| {
            block_on(cache.get_or_load_async(1, async {
                cache
                    .get_or_load_async(1, async { "inner".to_string() })
                    .await
            }))
        }));
        assert!(message(nested_async.unwrap_err()).contains("key it is loading"));
        // ...and through the blocking one.
        let nested_sync = catch_unwind(AssertUnwindSafe(|| {
            block_on(
                cache.get_or_load_async(2, async { cache.get_or_load(2, |_| "inner".to_string()) }),
            )
        }));
        assert!(message(nested_sync.unwrap_err()).contains("key it is loading"));
        // The flights were abandoned, not left behind.
        assert_eq!(
            block_on(cache.get_or_load_async(1, async { "fine".to_string() })),
            "fine"
        );
        assert_eq!(cache.get_or_load(2, |_| "fine".to_string()), "fine");
        // Other keys are fine inside a loader.
        let outer = block_on(cache.get_or_load_async(3, async {
            cache
                .get_or_load_async(4, async { "four".to_string() })
                .await
                + "+"
        }));
        assert_eq!(outer, "four+");
    }

    /// A leader cancelled mid-load drops its loader while the load is still
    /// its own: a loader whose `Drop` asks for its key then (through either
    /// call) panics, as it would asking during a poll, instead of waiting for
    /// itself, with every later caller of the key waiting behind it.
    #[test]
    fn a_cancelled_loader_whose_drop_asks_for_its_own_key_panics_instead_of_hanging() {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        use std::sync::mpsc;
        struct AsksOnDrop {
            cache: Arc<Cache<u32, String>>,
            via_async: bool,
        }
        impl Drop for AsksOnDrop {
            fn drop(&mut self) {
                if self.via_async {
                    block_on(
                        self.cache
                            .get_or_load_async(1, async { "drop".to_string() }),
                    );
                } else {
                    self.cache.get_or_load(1, |_| "drop".to_string());
                }
            }
        }
        for via_async in [false, true] {
            let cache = Arc::new(cache());
            let (tx, rx) = mpsc::channel();
            let c = cache.clone();
            // On a thread of its own: a regression hangs that thread, not the test.
            std::thread::spawn(move || {
                let asks = AsksOnDrop {
                    cache: c.clone(),
                    via_async,
                };
                let mut leader = Box::pin(c.get_or_load_async(1, async move {
                    let _asks = asks;
                    std::future::pending::<String>().await
                }));
                let pending = leader
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending();
                // Cancelled, as by a timeout.
                let dropped = catch_unwind(AssertUnwindSafe(|| drop(leader)));
                let message = dropped.err().map(|panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                });
                let _ = tx.send((pending, message));
            });
            let (pending, message) = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("dropping the leader hung (via async: {via_async})"));
            assert!(pending);
            assert!(
                message.is_some_and(|m| m.contains("key it is loading")),
                "via async: {via_async}"
            );
            // The load was given up: the next caller loads afresh.
            assert_eq!(cache.get_or_load(1, |_| "next".to_string()), "next");
        }
    }

    #[test]
    fn a_task_of_a_runtime_a_sync_loader_drives_waits_for_it_without_panicking() {
        let cache = Arc::new(cache());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Spawned first, polled only once the loader below drives the runtime:
        // on the leader's own thread, but another task, not the loader.
        let waiter = {
            let cache = cache.clone();
            rt.spawn(async move {
                cache
                    .get_or_load_async(1, async { "waiter's".to_string() })
                    .await
            })
        };
        let led = cache.get_or_load(1, |_| {
            rt.block_on(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                "leader's".to_string()
            })
        });
        assert_eq!(led, "leader's");
        assert_eq!(
            rt.block_on(waiter).expect("the waiter did not panic"),
            "leader's"
        );
    }

    #[test]
    fn a_thousand_tasks_share_one_load() {
        let cache = Arc::new(cache());
        let loads = Arc::new(AtomicUsize::new(0));
        runtime().block_on(async {
            let tasks: Vec<_> = (0..1_000)
                .map(|_| {
                    let (cache, loads) = (cache.clone(), loads.clone());
                    tokio::spawn(async move {
                        cache
                            .get_or_load_async(1, async {
                                loads.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                "one".to_string()
                            })
                            .await
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), "one");
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().loads, 1);
    }

    #[test]
    fn sync_and_async_callers_share_a_flight() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let leading = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                cache.get_or_load(1, |_| {
                    loads.fetch_add(1, Ordering::SeqCst);
                    leading.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    "sync".to_string()
                })
            });
            leading.wait();
            // Both executors wait on the sync leader's flight.
            let from_tokio = runtime().block_on(cache.get_or_load_async(1, async {
                loads.fetch_add(1, Ordering::SeqCst);
                "tokio".to_string()
            }));
            let from_block_on = block_on(cache.get_or_load_async(1, async {
                loads.fetch_add(1, Ordering::SeqCst);
                "block_on".to_string()
            }));
            assert_eq!(
                (from_tokio.as_str(), from_block_on.as_str()),
                ("sync", "sync")
            );
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_cancelled_leader_hands_the_load_to_a_waiter() {
        let cache = Arc::new(cache());
        let loads = Arc::new(AtomicUsize::new(0));
        runtime().block_on(async {
            let leader = {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load_async(1, async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            "never".to_string()
                        })
                        .await
                })
            };
            // The leader's load has begun: it leads the flight.
            while loads.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let (cache, loads) = (cache.clone(), loads.clone());
                    tokio::spawn(async move {
                        cache
                            .get_or_load_async(1, async {
                                loads.fetch_add(1, Ordering::SeqCst);
                                "takeover".to_string()
                            })
                            .await
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
            for w in waiters {
                let v = tokio::time::timeout(Duration::from_secs(10), w).await;
                assert_eq!(v.expect("a waiter hung").unwrap(), "takeover");
            }
        });
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "the cancelled load and one takeover"
        );
        let stats = cache.stats();
        assert_eq!(
            (stats.loads, stats.load_failures),
            (2, 0),
            "a cancellation is a load, not a failure"
        );
        assert_eq!(cache.get(&1).as_deref(), Some("takeover"));
    }

    /// A leader dropped while its task unwinds from a panic that is not its
    /// loader's (a sibling branch of `join!`; tokio drops a panicked task's
    /// future during the unwind) was cancelled: its load did not fail. A
    /// waiter takes the load over, and a loader that panics itself is still
    /// booked as failed.
    #[test]
    fn a_leader_dropped_by_a_panic_elsewhere_is_a_cancellation_not_a_failure() {
        let cache = Arc::new(cache());
        let leading = Arc::new(std::sync::Barrier::new(2));
        runtime().block_on(async {
            let leader = {
                let (cache, leading) = (cache.clone(), leading.clone());
                tokio::spawn(async move {
                    tokio::join!(
                        cache.get_or_load_async(1, async move {
                            leading.wait();
                            std::future::pending::<String>().await
                        }),
                        async {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            panic!("a sibling of the load panics");
                        }
                    )
                })
            };
            // The leader's loader has begun: the next caller waits for it.
            tokio::task::block_in_place(|| leading.wait());
            let waiter = {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_load_async(1, async { "takeover".to_string() })
                        .await
                })
            };
            assert!(leader.await.unwrap_err().is_panic());
            let v = tokio::time::timeout(Duration::from_secs(10), waiter).await;
            assert_eq!(v.expect("the waiter hung").unwrap(), "takeover");
        });
        let stats = cache.stats();
        assert_eq!(
            (stats.loads, stats.load_failures),
            (2, 0),
            "the cancelled load and the takeover"
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(cache.get_or_load_async(2, async { panic!("the loader panics") }))
        }));
        assert!(panicked.is_err());
        let stats = cache.stats();
        assert_eq!((stats.loads, stats.load_failures), (3, 1));
    }

    /// A loader that stays pending until `open` is set (it registers no
    /// waker: poll it again only once the gate is open).
    async fn gated(open: &AtomicBool) {
        std::future::poll_fn(|_| {
            if open.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Polls each of `calls` once, in order, with a waker that does nothing:
    /// the first becomes the leader, its loader pending, and the rest join
    /// its flight as waiters.
    fn join_in_order<F: Future>(calls: &mut [std::pin::Pin<Box<F>>]) {
        for call in calls.iter_mut() {
            assert!(call
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending());
        }
    }

    #[test]
    fn async_errors_are_shared_and_not_cached() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let open = AtomicBool::new(false);
        let mut calls: Vec<_> = (0..10)
            .map(|_| {
                Box::pin(cache.try_get_or_load_async(1, async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    gated(&open).await;
                    Err::<String, _>("timeout")
                }))
            })
            .collect();
        join_in_order(&mut calls);
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one caller loads");
        open.store(true, Ordering::SeqCst);
        let errors: Vec<_> = calls
            .into_iter()
            .map(|call| block_on(call).unwrap_err())
            .collect();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the waiters ran no load");
        assert!(
            errors
                .iter()
                .all(|e| Arc::ptr_eq(e, &errors[0]) && **e == "timeout"),
            "one failed load, its error shared"
        );
        let stats = cache.stats();
        assert_eq!((stats.loads, stats.load_failures), (1, 1));
        assert!(!cache.contains_key(&1));
        let v = block_on(cache.optionally_get_or_load_async(1, async { Some("back".to_string()) }));
        assert_eq!(v.as_deref(), Some("back"));
    }

    /// The async form of `a_panicking_loader_hands_the_load_to_a_waiter`:
    /// the leader's loader panics while three callers wait on its flight, and
    /// exactly one of them loads in its place.
    #[test]
    fn an_async_loader_panicking_hands_the_load_to_one_waiter() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let open = AtomicBool::new(false);
        let mut calls: Vec<_> = (0..4)
            .map(|i| {
                let (loads, open) = (&loads, &open);
                Box::pin(cache.get_or_load_async(1, async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    if i == 0 {
                        gated(open).await;
                        panic!("loader exploded");
                    }
                    "recovered".to_string()
                }))
            })
            .collect();
        join_in_order(&mut calls);
        open.store(true, Ordering::SeqCst);
        let mut calls = calls.into_iter();
        let leader = calls.next().unwrap();
        let panic = catch_unwind(AssertUnwindSafe(|| block_on(leader))).unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"loader exploded"));
        for waiter in calls {
            assert_eq!(block_on(waiter), "recovered");
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "the panicking load and one takeover"
        );
        let stats = cache.stats();
        assert_eq!((stats.loads, stats.load_failures), (2, 1));
        assert_eq!(cache.peek(&1).as_deref(), Some("recovered"));
    }

    /// An async load in flight when `remove` or `invalidate_tag` returns does
    /// not land in the cache (its callers still get its value).
    #[test]
    fn an_async_load_in_flight_when_an_invalidation_returns_is_not_cached() {
        for how in ["remove", "invalidate_tag", "invalidate_all"] {
            let cache = cache();
            let open = AtomicBool::new(false);
            let mut calls = vec![Box::pin(cache.get_or_load_with_async(1, async {
                gated(&open).await;
                ("stale".to_string(), EntryOptions::new().tags(["t"]))
            }))];
            join_in_order(&mut calls);
            match how {
                "remove" => assert_eq!(cache.remove(&1), None),
                "invalidate_tag" => cache.invalidate_tag("t"),
                _ => cache.invalidate_all(),
            }
            open.store(true, Ordering::SeqCst);
            assert_eq!(block_on(calls.pop().unwrap()), "stale", "{how}");
            assert_eq!(cache.peek(&1), None, "{how}");
            assert_eq!(
                cache.get_or_load(1, |_| "fresh".to_string()),
                "fresh",
                "{how}"
            );
        }
    }
}

#[test]
fn tags_work_with_a_key_hasher_built_for_integers_alone() {
    /// Hashes `u64` keys and nothing else.
    #[derive(Default)]
    struct U64Only(u64);
    impl std::hash::Hasher for U64Only {
        fn finish(&self) -> u64 {
            self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
        fn write(&mut self, _: &[u8]) {
            panic!("this hasher takes u64 keys only");
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let cache: Cache<u64, u64, std::hash::BuildHasherDefault<U64Only>> = Cache::builder()
        .max_capacity(100)
        .hasher(Default::default())
        .build()
        .unwrap();
    let loaded = cache.get_or_load_with(1, |_| (10, larder::EntryOptions::new().tags(["t"])));
    assert_eq!(loaded, 10);
    cache.invalidate_tag("t");
    assert_eq!(cache.get(&1), None);
}

#[test]
fn a_tagged_load_overlapping_an_invalidation_is_not_cached() {
    use larder::EntryOptions;
    let cache = cache();
    let loading = Barrier::new(2);
    let invalidated = Barrier::new(2);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_load_with(1, |_| {
                loading.wait();
                invalidated.wait();
                ("stale".to_string(), EntryOptions::new().tags(["user:1"]))
            })
        });
        loading.wait();
        cache.invalidate_tag("user:1");
        invalidated.wait();
        assert_eq!(
            leader.join().unwrap(),
            "stale",
            "the caller still gets its load"
        );
    });
    assert_eq!(
        cache.get(&1),
        None,
        "the load began before the invalidation"
    );
    // Without an invalidation in between, the tagged load is cached, with its TTL.
    let v = cache.get_or_load_with(1, |_| {
        let options = EntryOptions::new()
            .tags(["user:1"])
            .ttl(Duration::from_secs(3600));
        ("fresh".to_string(), options)
    });
    assert_eq!(v, "fresh");
    assert_eq!(cache.get(&1).as_deref(), Some("fresh"));
    cache.invalidate_tag("user:1");
    assert_eq!(cache.get(&1), None);
}

#[test]
fn a_tagged_load_overlapping_an_invalidation_of_other_tags_is_cached() {
    use larder::EntryOptions;
    let cache = cache();
    let loading = Barrier::new(2);
    let invalidated = Barrier::new(2);
    // Invalidation marks are kept per hash bucket (64, randomly seeded), so an
    // unrelated tag shares user:1's bucket with probability 1/64 and then
    // keeps the load out, conservatively. Of 8 loads each overlapping an
    // unrelated invalidation, at least 4 must be cached (a false failure needs
    // 5 collisions: about 5e-8).
    let mut cached = 0;
    for round in 0..8u32 {
        let key = round;
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                cache.get_or_load_with(key, |_| {
                    loading.wait();
                    invalidated.wait();
                    ("fresh".to_string(), EntryOptions::new().tags(["user:1"]))
                })
            });
            loading.wait();
            cache.invalidate_tag(format!("order:{round}"));
            invalidated.wait();
            assert_eq!(leader.join().unwrap(), "fresh");
        });
        cached += usize::from(cache.get(&key).is_some());
    }
    assert!(cached >= 4, "only {cached} of 8 loads cached");
}

/// A key whose next clone on a thread can be made to block: `join` clones the
/// key while it replaces a flight in the table, which holds that moment open
/// (a preemption there does the same).
#[derive(Hash, PartialEq, Eq, Debug)]
struct Key(u32);

type Hook = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

thread_local! {
    static CLONE_HOOK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

impl Clone for Key {
    fn clone(&self) -> Self {
        if let Some((entered, release)) = CLONE_HOOK.with(|h| h.borrow_mut().take()) {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        Key(self.0)
    }
}

#[test]
fn a_write_while_a_replaced_load_is_between_flights_is_not_undone() {
    use std::sync::mpsc::channel;
    use std::time::Duration;
    let cache: Cache<Key, String> = Cache::builder().max_capacity(100).build().unwrap();
    let ample = Duration::from_secs(1);
    std::thread::scope(|s| {
        // An old load of key 1, waiting in its loader.
        let (started, load_started) = channel();
        let (release_old, old_released) = channel::<()>();
        let (old_done, old_landed) = channel();
        let c = &cache;
        s.spawn(move || {
            let v = c.get_or_load(Key(1), |_| {
                started.send(()).unwrap();
                old_released.recv().unwrap();
                "old".to_string()
            });
            // The receiver may be gone: the test waits for it only so long.
            let _ = old_done.send(v);
        });
        load_started.recv().unwrap();
        cache.invalidate_tag("unrelated");
        // A caller after the invalidation replaces the old flight; held
        // between taking it out of the table and putting its own in.
        let (entered, join_entered) = channel();
        let (release_join, join_released) = channel();
        let (new_done, new_landed) = channel();
        s.spawn(move || {
            CLONE_HOOK.with(|h| *h.borrow_mut() = Some((entered, join_released)));
            new_done
                .send(c.get_or_load(Key(1), |_| "new".to_string()))
                .unwrap();
        });
        join_entered.recv().unwrap();
        // A write after the old load began.
        let (written, write_landed) = channel();
        s.spawn(move || {
            c.insert(Key(1), "written".to_string());
            let _ = written.send(());
        });
        let _ = write_landed.recv_timeout(ample);
        // The old load lands: it must not be cached over the write.
        release_old.send(()).unwrap();
        let _ = old_landed.recv_timeout(ample);
        release_join.send(()).unwrap();
        let _ = new_landed.recv().unwrap();
    });
    assert_eq!(
        cache.peek(&Key(1)).as_deref(),
        Some("written"),
        "a load that began before the insert was cached over it"
    );
}

thread_local! {
    /// Set on the threads whose clones of a `Meeting` wait for one another.
    static MEETS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clones that, on a thread that asked for it, wait (up to a few seconds)
/// until another such thread is cloning at the same time; each records
/// whether it met one.
#[derive(Debug)]
struct Meeting {
    cloning: Arc<AtomicUsize>,
    met: Arc<AtomicUsize>,
}

impl Clone for Meeting {
    fn clone(&self) -> Self {
        if MEETS.with(std::cell::Cell::get) {
            self.cloning.fetch_add(1, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while self.cloning.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            if self.cloning.load(Ordering::SeqCst) >= 2 {
                self.met.fetch_add(1, Ordering::SeqCst);
            }
        }
        Meeting {
            cloning: self.cloning.clone(),
            met: self.met.clone(),
        }
    }
}

/// Waiters woken by a load clone its value outside the flight's lock, so
/// that their clones (user code, of any cost) run side by side: one
/// waiter's clone waiting for the other's met it only once they did (each
/// cloned in turn, holding the lock, and each waited in vain).
#[test]
fn waiters_clone_the_loaded_value_side_by_side() {
    let cache: Cache<u32, Meeting> = Cache::builder().max_capacity(10).build().unwrap();
    let (cloning, met) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let arrived = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (started, loading) = std::sync::mpsc::channel();
        let (cache, arrived, cloning, met) = (&cache, &arrived, &cloning, &met);
        let leader = s.spawn(move || {
            cache.get_or_load(1, |_| {
                started.send(()).unwrap();
                wait_for(arrived, 2);
                Meeting {
                    cloning: cloning.clone(),
                    met: met.clone(),
                }
            })
        });
        loading.recv().unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    MEETS.with(|m| m.set(true));
                    arrived.fetch_add(1, Ordering::SeqCst);
                    cache.get_or_load(1, |_| unreachable!("one load"))
                })
            })
            .collect();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        leader.join().unwrap();
    });
    assert_eq!(cloning.load(Ordering::SeqCst), 2);
    assert_eq!(
        met.load(Ordering::SeqCst),
        2,
        "the waiters cloned one at a time"
    );
}
