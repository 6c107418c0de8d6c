//! Single flight at its edges: callers cancelled while they wait for an older
//! load, loaders asking for their own key behind a pending flight, and keys
//! whose `Clone` panics while a flight is replaced.

mod common;

use common::block_on;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use larder::Cache;

fn cache() -> Cache<u32, String> {
    Cache::builder().max_capacity(1_000).build().unwrap()
}

fn message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Polls a loading call once (it gets as far as waiting for the older load
/// in `start_async`), then drops it: a timeout.
fn cancel_while_waiting<F: Future>(call: F) {
    let mut call = std::pin::pin!(call);
    assert!(call
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending());
}

/// One loader at a time. A caller after a write replaces the stale flight
/// with a pending one and waits for the old load; cancelled there, its flight
/// stays in the table (ended) to keep the old load in reach. A second write
/// must leave it there, or the next caller would find nothing to wait for and
/// load alongside the old load.
#[test]
fn a_write_after_a_cancelled_waiting_caller_keeps_one_loader_at_a_time() {
    let cache = cache();
    let (started, load_started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let (late_loads, late_loaded) = mpsc::channel();
    let c = &cache;
    std::thread::scope(|s| {
        let early = s.spawn(move || {
            c.get_or_load(1, |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                "early".to_string()
            })
        });
        load_started.recv().unwrap();
        drop(cache.remove(&1)); // the early load is stale
        cancel_while_waiting(cache.get_or_load_async(1, async { "cancelled".to_string() }));
        drop(cache.remove(&1)); // a second write
        let late = s.spawn(move || {
            c.get_or_load(1, |_| {
                late_loads.send(()).unwrap();
                "late".to_string()
            })
        });
        let alongside = late_loaded.recv_timeout(Duration::from_millis(300)).is_ok();
        release.send(()).unwrap();
        assert_eq!(early.join().unwrap(), "early");
        assert_eq!(late.join().unwrap(), "late");
        assert!(!alongside, "two loaders of key 1 ran at once");
    });
}

/// A loader asking for its own key panics instead of deadlocking. After a
/// write, another caller puts a pending flight in front of the (stale) load,
/// which waits for the load; the loader then asking for its own key would
/// join that flight and wait for a flight that waits for it.
#[test]
fn a_loader_asking_for_its_own_key_behind_a_pending_flight_panics() {
    let mut failures = Vec::new();
    for asynchronous in [false, true] {
        let cache = Arc::new(cache());
        let (started, load_started) = mpsc::channel();
        let (go, gone) = mpsc::channel::<()>();
        let (outcome, outcome_rx) = mpsc::channel();
        let c = cache.clone();
        std::thread::spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(|| {
                if asynchronous {
                    block_on(c.get_or_load_async(1, async {
                        started.send(()).unwrap();
                        gone.recv().unwrap();
                        c.get_or_load_async(1, async { "inner".to_string() }).await
                    }))
                } else {
                    c.get_or_load(1, |_| {
                        started.send(()).unwrap();
                        gone.recv().unwrap();
                        c.get_or_load(1, |_| "inner".to_string())
                    })
                }
            }));
            let _ = outcome.send(result.map_err(message));
        });
        load_started.recv().unwrap();
        drop(cache.remove(&1));
        let c = cache.clone();
        std::thread::spawn(move || {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                c.get_or_load(1, |_| "other".to_string())
            }));
        });
        std::thread::sleep(Duration::from_millis(200)); // it waits in `start`
        go.send(()).unwrap();
        match outcome_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(m)) => assert!(m.contains("key it is loading"), "{m}"),
            Ok(Ok(v)) => failures.push(format!("async={asynchronous}: returned {v}")),
            Err(_) => failures.push(format!(
                "async={asynchronous}: deadlock: the loader waits on a flight that waits for it"
            )),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

static LIVE_KEYS: AtomicUsize = AtomicUsize::new(0);

/// A key that counts its live copies.
#[derive(Hash, PartialEq, Eq, Debug)]
struct Counted(u32);
impl Counted {
    fn new(n: u32) -> Self {
        LIVE_KEYS.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}
impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(self.0)
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        LIVE_KEYS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A caller after a tag invalidation that is cancelled while it waits for
/// the older load leaves its ended flight in the table for that load; when
/// the load ends, the flight goes too. Otherwise one flight (and a copy of
/// its key) would stay behind per key, for good.
#[test]
fn a_cancelled_waiting_caller_leaves_no_flight_behind() {
    let cache: Cache<Counted, String> = Cache::builder().max_capacity(1_000).build().unwrap();
    let c = &cache;
    for k in 0..100 {
        let (started, load_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let early = s.spawn(move || {
                c.get_or_load(Counted::new(k), |_| {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    "v".to_string()
                })
            });
            load_started.recv().unwrap();
            cache.invalidate_tag("other");
            cancel_while_waiting(cache.get_or_load_async(Counted::new(k), async { "x".into() }));
            release.send(()).unwrap();
            assert_eq!(early.join().unwrap(), "v");
        });
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(
        LIVE_KEYS.load(Ordering::SeqCst),
        100,
        "keys held beyond the cached entries"
    );
}

thread_local! {
    static CLONE_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[derive(Hash, PartialEq, Eq, Debug)]
struct Fragile(u32);
impl Clone for Fragile {
    fn clone(&self) -> Self {
        assert!(!CLONE_PANICS.get(), "clone failed");
        Fragile(self.0)
    }
}

/// A key whose `Clone` panics while a caller replaces an older flight leaves
/// the table as it was: were the older flight out of the table with no
/// replacement, a later write would not reach the older load, which would
/// then land over it.
#[test]
fn a_panicking_key_clone_while_replacing_a_flight_keeps_the_older_load_in_reach() {
    let cache: Cache<Fragile, String> = Cache::builder().max_capacity(100).build().unwrap();
    let (started, load_started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let c = &cache;
    std::thread::scope(|s| {
        let early = s.spawn(move || {
            c.get_or_load(Fragile(1), |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                "before".to_string()
            })
        });
        load_started.recv().unwrap();
        cache.invalidate_tag("unrelated");
        CLONE_PANICS.set(true);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            cache.get_or_load(Fragile(1), |_| "never".to_string())
        }));
        CLONE_PANICS.set(false);
        assert!(caught.is_err());
        cache.insert(Fragile(1), "written".to_string());
        release.send(()).unwrap();
        assert_eq!(early.join().unwrap(), "before");
    });
    assert_eq!(
        cache.peek(&Fragile(1)).as_deref(),
        Some("written"),
        "a load that began before the insert was cached over it"
    );
}

/// A value whose `Clone` panics for 1 on a thread that armed it.
#[derive(Debug, PartialEq)]
struct Brittle(u32);

thread_local! {
    static BRITTLE_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Clone for Brittle {
    fn clone(&self) -> Self {
        let armed = BRITTLE_ARMED.with(std::cell::Cell::get);
        assert!(
            !armed || self.0 != 1,
            "the older load's value's clone panics"
        );
        Brittle(self.0)
    }
}

/// A caller that waits for an older load of its key to end (the key was
/// removed while it ran) takes nothing of that load's value: a `Clone` that
/// would panic on its thread is never called there.
#[test]
fn a_caller_waiting_out_an_older_load_does_not_clone_its_value() {
    let cache: Arc<Cache<u32, Brittle>> =
        Arc::new(Cache::builder().max_capacity(10).build().unwrap());
    let (started_tx, started) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let older = {
        let cache = Arc::clone(&cache);
        std::thread::spawn(move || {
            cache.get_or_load(1, |_| {
                started_tx.send(()).unwrap();
                go.recv().unwrap();
                Brittle(1)
            })
        })
    };
    started.recv().unwrap();
    cache.remove(&1);
    let newer = {
        let cache = Arc::clone(&cache);
        std::thread::spawn(move || {
            BRITTLE_ARMED.with(|armed| armed.set(true));
            let value = cache.get_or_load(1, |_| Brittle(2));
            BRITTLE_ARMED.with(|armed| armed.set(false));
            value
        })
    };
    // Give the newer caller time to start waiting for the older load (were
    // it late, it would find that load ended and wait for nothing).
    std::thread::sleep(Duration::from_millis(100));
    go_tx.send(()).unwrap();
    assert_eq!(older.join().unwrap(), Brittle(1));
    assert_eq!(
        newer.join().expect("no clone on the newer caller's thread"),
        Brittle(2)
    );
}
