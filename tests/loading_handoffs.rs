//! Where a flight meets the cache: a leader that finds its key cached when it
//! starts, racing a tag invalidation, and the listener called by a leader's
//! write, which may call back into the cache.

mod common;

use common::block_on;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use larder::{Cache, EntryOptions, RemovalCause};

/// Clones to let through, then: tell `blocked`, wait for `release`.
type Gate = (usize, mpsc::Sender<()>, mpsc::Receiver<()>);

thread_local! {
    static GATE: RefCell<Option<Gate>> = const { RefCell::new(None) };
}

/// A value whose `Clone` can be made to stop on this thread.
#[derive(Debug, PartialEq)]
struct Val(&'static str);
impl Clone for Val {
    fn clone(&self) -> Self {
        let stop = GATE.with(|g| {
            let mut g = g.borrow_mut();
            match g.as_mut() {
                Some((0, ..)) => g.take(),
                Some((n, ..)) => {
                    *n -= 1;
                    None
                }
                None => None,
            }
        });
        if let Some((_, blocked, release)) = stop {
            blocked.send(()).unwrap();
            release.recv().unwrap();
        }
        Val(self.0)
    }
}

/// Stops this thread's clone number `skip + 1`; returns (blocked, release).
fn gate(skip: usize) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    GATE.with(|g| *g.borrow_mut() = Some((skip, blocked_tx, release_rx)));
    (blocked_rx, release_tx)
}

/// A leader that starts after `invalidate_tag` began (its flight stamped with
/// the new tag epoch) may find in the cache an entry the invalidation has not
/// swept yet. A caller arriving after `invalidate_tag` returned must not join
/// that flight and get the entry that carried the tag (README "Tags": "After
/// `invalidate_tag` returns, no read returns an entry that carried the tag
/// when the call began"): the leader's flight leaves the table under the
/// shard's lock as it finds the entry.
#[test]
fn a_caller_after_a_tag_invalidation_never_gets_an_entry_it_removed() {
    let cache: Cache<u32, Val> = Cache::builder()
        .max_capacity(100)
        .shards(2)
        .build()
        .unwrap();
    // Key `zero` in shard 0, swept before key `one` in shard 1.
    let zero = (0..).find(|k| cache.shard_index(k) == 0).unwrap();
    let one = (0..).find(|k| cache.shard_index(k) == 1).unwrap();
    let c = &cache;
    let tagged = || EntryOptions::new().tags(["t"]);
    std::thread::scope(|s| {
        // An early load of key `one`, made stale by a remove.
        let (a_started, a_started_rx) = mpsc::channel();
        let (a_release, a_released) = mpsc::channel::<()>();
        let early = s.spawn(move || {
            c.get_or_load(one, |_| {
                a_started.send(()).unwrap();
                a_released.recv().unwrap();
                Val("early")
            })
        });
        a_started_rx.recv().unwrap();
        let _ = cache.remove(&one);
        // A caller after the remove: its pending flight waits for the early
        // load (in `start_async`, cloning nothing of its outcome). Its second
        // clone of a value (after the look in the cache: the outcome it hands
        // its waiters) will stop.
        let (l_waiting, l_waiting_rx) = mpsc::channel();
        let (l_gate_tx, l_gate_rx) = mpsc::channel();
        let leader = s.spawn(move || {
            let (blocked, release) = gate(1);
            l_gate_tx.send((blocked, release)).unwrap();
            let mut call = std::pin::pin!(c.get_or_load_async(one, async { Val("leader") }));
            assert!(call
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending());
            l_waiting.send(()).unwrap();
            block_on(call)
        });
        let (l_blocked, l_release) = l_gate_rx.recv().unwrap();
        l_waiting_rx.recv().unwrap();
        // Key `one` is written meanwhile, tagged "t"; so is key `zero`.
        cache.insert_with(one, Val("tagged"), tagged());
        cache.insert_with(zero, Val("zero"), tagged());
        // Hold shard 0's read lock (a `get` whose clone stops), so that the
        // invalidation below stops at shard 0 before it sweeps shard 1.
        let (h_gate_tx, h_gate_rx) = mpsc::channel();
        let holder = s.spawn(move || {
            let (blocked, release) = gate(0);
            h_gate_tx.send((blocked, release)).unwrap();
            c.get(&zero)
        });
        let (h_blocked, h_release) = h_gate_rx.recv().unwrap();
        h_blocked.recv().unwrap();
        let invalidation = s.spawn(move || c.invalidate_tag("t"));
        // It waits for shard 0.
        std::thread::sleep(Duration::from_millis(300));
        // The early load ends; the leader starts at the new tag epoch, finds
        // "tagged" in shard 1 (not swept yet), and stops in the clone of it.
        a_release.send(()).unwrap();
        assert_eq!(early.join().unwrap(), Val("early"));
        l_blocked.recv().unwrap();
        // The invalidation completes.
        h_release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), Some(Val("zero")));
        invalidation.join().unwrap();
        assert_eq!(cache.get(&one), None, "swept");
        // A caller after `invalidate_tag` returned.
        let mut late = std::pin::pin!(cache.get_or_load_async(one, async { Val("fresh") }));
        let first = late.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        l_release.send(()).unwrap();
        let got = match first {
            Poll::Ready(v) => v,
            Poll::Pending => block_on(late),
        };
        assert_eq!(
            leader.join().unwrap(),
            Val("tagged"),
            "concurrent with the invalidation"
        );
        assert_eq!(
            got,
            Val("fresh"),
            "a caller arriving after invalidate_tag returned got the entry it removed"
        );
    });
}

/// The eviction listener "may call back into the cache". A leader's write
/// that removes the key it loaded (here: too heavy to keep) calls the
/// listener only once the flight has ended, so a listener loading that key
/// loads it rather than being taken for a loader asking for its own key.
#[test]
fn a_listener_called_by_a_leaders_write_may_load_the_key() {
    let slot: Arc<OnceLock<Cache<u32, String>>> = Arc::new(OnceLock::new());
    let s = slot.clone();
    let cache: Cache<u32, String> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, v: &String| v.len() as u32)
        .eviction_listener(move |k, _, cause| {
            if cause == RemovalCause::Size {
                let cache = s.get().unwrap();
                // Reload a key evicted for its size, smaller.
                assert_eq!(cache.get_or_load(k, |_| "small".to_string()), "small");
            }
        })
        .build()
        .unwrap();
    slot.set(cache.clone()).ok().unwrap();
    let got = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_load(1, |_| "x".repeat(100))
    }));
    let got = got.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    assert_eq!(got, Ok("x".repeat(100)));
    assert_eq!(cache.peek(&1).as_deref(), Some("small"));
}

/// A value whose clone panics once armed (by the weigher, i.e. inside the
/// leader's write): what that write removed must still reach the listener,
/// though the listener now runs after the flight ends.
#[test]
fn a_value_clone_panicking_after_a_leaders_write_loses_no_removal() {
    use std::cell::Cell;
    use std::sync::Mutex;
    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }
    #[derive(Debug)]
    struct Heavy;
    impl Clone for Heavy {
        fn clone(&self) -> Self {
            if ARMED.with(|a| a.replace(false)) {
                panic!("clone");
            }
            Heavy
        }
    }
    let seen: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
    let s = seen.clone();
    let cache: Cache<u32, Heavy> = Cache::builder()
        .max_capacity(10)
        .shards(1)
        .weigher(|_, _: &Heavy| {
            ARMED.with(|a| a.set(true));
            100
        })
        .eviction_listener(move |k, _, cause| s.lock().unwrap().push((k, cause)))
        .build()
        .unwrap();
    // Whether or not a clone is left to panic after the write, the value it
    // rejected goes to the listener.
    let _ = catch_unwind(AssertUnwindSafe(|| cache.get_or_load(1, |_| Heavy)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, RemovalCause::Size)],
        "the rejected value never reached the listener"
    );
    // The flight did not leave the key stuck.
    ARMED.with(|a| a.set(false));
    assert!(cache.peek(&1).is_none());
}

/// A cache whose listener, on the first removal it hears of, starts a load
/// of key 5 tagged "t" on another thread and returns once that load has
/// begun: the listener runs inside an invalidation, so the load begins while
/// the invalidation runs and is still in flight when it returns. Returns
/// the cache, the loading thread (once started) and the load's release.
#[allow(clippy::type_complexity)]
fn cache_starting_a_load_from_its_listener() -> (
    Cache<u32, u32>,
    Arc<std::sync::Mutex<Option<std::thread::JoinHandle<u32>>>>,
    mpsc::Sender<()>,
) {
    let slot: Arc<OnceLock<Cache<u32, u32>>> = Arc::default();
    let loading: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<u32>>>> = Arc::default();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let (cache_slot, handle) = (slot.clone(), loading.clone());
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .eviction_listener(move |_, _, _| {
            let mut handle = handle.lock().unwrap();
            if handle.is_some() {
                return;
            }
            let cache = cache_slot.get().unwrap().clone();
            let release = release_rx.clone();
            let (began_tx, began_rx) = mpsc::channel();
            *handle = Some(std::thread::spawn(move || {
                cache.get_or_load_with(5, |_| {
                    began_tx.send(()).unwrap();
                    release.lock().unwrap().recv().unwrap();
                    (50, EntryOptions::new().tags(["t"]))
                })
            }));
            began_rx.recv().unwrap();
        })
        .build()
        .unwrap();
    slot.set(cache.clone()).ok().unwrap();
    (cache, loading, release_tx)
}

/// Lets the load the listener of [`cache_starting_a_load_from_its_listener`]
/// began finish; returns what its caller got.
fn finish_the_listeners_load(
    loading: &std::sync::Mutex<Option<std::thread::JoinHandle<u32>>>,
    release: &mpsc::Sender<()>,
) -> u32 {
    let load = loading
        .lock()
        .unwrap()
        .take()
        .expect("the listener began a load");
    release.send(()).unwrap();
    load.join().unwrap()
}

/// DESIGN contract 3, for a load that begins while `invalidate_tag` runs:
/// the call returns while the load is in flight, so the load's value goes to
/// its caller but is not cached.
#[test]
fn a_tagged_load_in_flight_when_invalidate_tag_returns_is_not_cached() {
    let (cache, loading, release) = cache_starting_a_load_from_its_listener();
    cache.insert_with(1, 10, EntryOptions::new().tags(["t"]));
    cache.invalidate_tag("t");
    assert_eq!(
        finish_the_listeners_load(&loading, &release),
        50,
        "its caller has the value"
    );
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
    // Later loads are cached as usual.
    assert_eq!(
        cache.get_or_load_with(5, |_| (51, EntryOptions::new().tags(["t"]))),
        51
    );
    assert_eq!(cache.peek(&5), Some(51));
}

/// DESIGN contract 3, for a load that begins while `invalidate_all` runs
/// (after its key's shard was cleared): the call returns while the load is in
/// flight, so the load's value goes to its caller but is not cached.
#[test]
fn a_load_in_flight_when_invalidate_all_returns_is_not_cached() {
    let (cache, loading, release) = cache_starting_a_load_from_its_listener();
    cache.insert(1, 10);
    cache.invalidate_all();
    assert_eq!(
        finish_the_listeners_load(&loading, &release),
        50,
        "its caller has the value"
    );
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
    assert_eq!(cache.get_or_load(5, |_| 51), 51);
    assert_eq!(cache.peek(&5), Some(51));
}

/// As above, for `invalidate_entries_if`.
#[test]
fn a_load_in_flight_when_invalidate_entries_if_returns_is_not_cached() {
    let (cache, loading, release) = cache_starting_a_load_from_its_listener();
    cache.insert(1, 10);
    cache.invalidate_entries_if(|_, _| true);
    assert_eq!(
        finish_the_listeners_load(&loading, &release),
        50,
        "its caller has the value"
    );
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
}

/// A cache whose listener, on the first removal it hears of, lets a load of
/// key 5 (tagged "t") that began before that removal finish, and returns
/// once the load has returned: the listener runs inside an invalidation,
/// after its key's shard was swept, so the load lands while the invalidation
/// still runs. Returns the cache and the loading thread.
fn cache_landing_a_load_from_its_listener() -> (Cache<u32, u32>, std::thread::JoinHandle<u32>) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (landed_tx, landed_rx) = mpsc::channel::<()>();
    let hooks = std::sync::Mutex::new(Some((release_tx, landed_rx)));
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .shards(1)
        .eviction_listener(move |_, _, _| {
            if let Some((release, landed)) = hooks.lock().unwrap().take() {
                release.send(()).unwrap();
                landed.recv().unwrap();
            }
        })
        .build()
        .unwrap();
    let (began_tx, began_rx) = mpsc::channel();
    let c = cache.clone();
    let load = std::thread::spawn(move || {
        let v = c.get_or_load_with(5, |_| {
            began_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            (50, EntryOptions::new().tags(["t"]))
        });
        landed_tx.send(()).unwrap();
        v
    });
    began_rx.recv().unwrap();
    (cache, load)
}

/// A tagged load that began before `invalidate_tag` and lands while the call
/// runs, in a shard already swept, read its value before the invalidation:
/// its caller gets it, but it is not cached.
#[test]
fn a_tagged_load_landing_while_invalidate_tag_runs_is_not_cached() {
    let (cache, load) = cache_landing_a_load_from_its_listener();
    cache.insert_with(1, 10, EntryOptions::new().tags(["t"]));
    cache.invalidate_tag("t");
    assert_eq!(load.join().unwrap(), 50, "its caller has the value");
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
}

/// As above, for `invalidate_all`: a load that began before the call and
/// lands after its key's shard was cleared is not cached.
#[test]
fn a_load_landing_while_invalidate_all_runs_is_not_cached() {
    let (cache, load) = cache_landing_a_load_from_its_listener();
    cache.insert(1, 10);
    cache.invalidate_all();
    assert_eq!(load.join().unwrap(), 50, "its caller has the value");
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
}

/// As above, for `invalidate_entries_if`.
#[test]
fn a_load_landing_while_invalidate_entries_if_runs_is_not_cached() {
    let (cache, load) = cache_landing_a_load_from_its_listener();
    cache.insert(1, 10);
    cache.invalidate_entries_if(|_, _| true);
    assert_eq!(load.join().unwrap(), 50, "its caller has the value");
    assert_eq!(cache.peek(&5), None, "cached over the invalidation");
}

/// DESIGN contract 3, for `remove`: the listener, hearing of the removed
/// entry, begins a load of its key, so the call returns with that load in
/// flight; the load's value goes to its caller but is not cached.
#[test]
fn a_load_in_flight_when_remove_returns_is_not_cached() {
    let (cache, loading, release) = cache_starting_a_load_from_its_listener();
    cache.insert(5, 10);
    assert_eq!(cache.remove(&5), Some(10));
    assert_eq!(
        finish_the_listeners_load(&loading, &release),
        50,
        "its caller has the value"
    );
    assert_eq!(cache.peek(&5), None, "cached over the removal");
    assert_eq!(cache.get_or_load(5, |_| 51), 51);
    assert_eq!(cache.peek(&5), Some(51));
}

thread_local! {
    static HASH_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A key whose `Hash` panics once, for key 1, when armed on its thread.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PanicKey(u32);

impl std::hash::Hash for PanicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 1 && HASH_ARMED.with(|a| a.replace(false)) {
            panic!("key 1's hash panics");
        }
        self.0.hash(state);
    }
}

/// A leader's write evicts key 1, whose `Hash` panics: the write is undone,
/// and the listener hears of the loaded entry (refused, as `Size`) and loads
/// its key again. It used to hear of it while the flight was still open:
/// an async leader's listener waited for itself, a sync one's load was
/// taken for a loader asking for its own key. The flight now ends first.
fn a_listener_hearing_of_an_undone_leaders_write_loads_its_key(async_leader: bool) {
    let slot: Arc<OnceLock<Cache<PanicKey, u32>>> = Arc::default();
    let reloaded: Arc<std::sync::Mutex<Option<u32>>> = Arc::default();
    let (s, r) = (slot.clone(), reloaded.clone());
    let cache: Cache<PanicKey, u32> = Cache::builder()
        .max_capacity(1)
        .shards(1)
        .eviction(larder::Eviction::Lru)
        .eviction_listener(move |k: PanicKey, _, cause| {
            if k.0 == 2 && cause == RemovalCause::Size {
                let v = s.get().unwrap().get_or_load(PanicKey(2), |_| 22);
                *r.lock().unwrap() = Some(v);
            }
        })
        .build()
        .unwrap();
    slot.set(cache.clone()).ok().unwrap();
    cache.insert(PanicKey(1), 1);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let arm = || HASH_ARMED.with(|a| a.set(true));
        let led = catch_unwind(AssertUnwindSafe(|| {
            if async_leader {
                block_on(cache.get_or_load_async(PanicKey(2), async {
                    arm();
                    20
                }))
            } else {
                cache.get_or_load(PanicKey(2), |_| {
                    arm();
                    20
                })
            }
        }));
        let _ = done_tx.send(led.is_err());
    });
    let panicked = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the leader returned: its listener did not wait for its own flight");
    assert!(panicked, "the key's panic reaches the leader's caller");
    assert_eq!(
        *reloaded.lock().unwrap(),
        Some(22),
        "the listener loaded the key"
    );
    assert_eq!(slot.get().unwrap().peek(&PanicKey(2)), Some(22));
}

#[test]
fn a_listener_hearing_of_an_undone_sync_leaders_write_loads_its_key() {
    a_listener_hearing_of_an_undone_leaders_write_loads_its_key(false);
}

#[test]
fn a_listener_hearing_of_an_undone_async_leaders_write_loads_its_key() {
    a_listener_hearing_of_an_undone_leaders_write_loads_its_key(true);
}

type HeldLeader = RefCell<Option<std::pin::Pin<Box<dyn Future<Output = u32>>>>>;

thread_local! {
    /// A leader's future kept by its thread, dropped as the thread exits.
    static HELD_LEADER: HeldLeader = const { RefCell::new(None) };
    /// A value whose `Drop` loads through the cache as its thread exits.
    static LOADS_ON_EXIT: RefCell<Option<LoadsOnDrop>> = const { RefCell::new(None) };
}

/// Loads key 2 when dropped, and sends what it got.
struct LoadsOnDrop {
    cache: Cache<u32, u32>,
    got: mpsc::Sender<u32>,
}

impl Drop for LoadsOnDrop {
    fn drop(&mut self) {
        let _ = self.got.send(self.cache.get_or_load(2, |_| 99));
    }
}

/// A leader held in a thread-local is cancelled as its thread exits, after
/// the thread's own bookkeeping of what it leads is gone: the load is given
/// up like any cancelled one (this aborted the process: the bookkeeping's
/// access panicked inside a destructor).
#[test]
fn a_leader_cancelled_as_its_thread_exits_hands_the_load_on() {
    let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
    let c = cache.clone();
    std::thread::spawn(move || {
        // Registered first, so torn down after the cache's own locals.
        HELD_LEADER.with(|h| h.borrow_mut().take());
        let mut leader: std::pin::Pin<Box<dyn Future<Output = u32>>> =
            Box::pin(async move { c.get_or_load_async(1, std::future::pending::<u32>()).await });
        let polled = leader
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending());
        HELD_LEADER.with(|h| *h.borrow_mut() = Some(leader));
    })
    .join()
    .unwrap();
    assert_eq!(
        cache.get_or_load(1, |_| 5),
        5,
        "the next caller loads afresh"
    );
    assert_eq!(cache.get(&1), Some(5));
}

/// A thread-local's `Drop` that waits for another thread's load of its key,
/// as its thread exits after it led an async load: it gets that load's value.
#[test]
fn a_caller_waiting_as_its_thread_exits_gets_the_loaded_value() {
    let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
    let (started, loading) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let leader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_load(2, |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                7
            })
        })
    };
    loading.recv().unwrap();
    let (got, value) = mpsc::channel();
    let c = cache.clone();
    let exiting = std::thread::spawn(move || {
        // Registered first, so torn down after the cache's own locals.
        LOADS_ON_EXIT.with(|l| l.borrow_mut().take());
        // Leading an async load makes the cache keep its locals on this thread.
        assert_eq!(block_on(c.get_or_load_async(3, async { 3 })), 3);
        LOADS_ON_EXIT.with(|l| *l.borrow_mut() = Some(LoadsOnDrop { cache: c, got }));
    });
    // The exiting thread's wait begins while key 2 is loading, or after.
    std::thread::sleep(Duration::from_millis(50));
    release.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), 7);
    exiting.join().unwrap();
    assert_eq!(value.recv_timeout(Duration::from_secs(20)), Ok(7));
}

/// `invalidate_tags` with no tags removes nothing and lets a later caller
/// join the load in flight: it shares a failing load's error instead of
/// loading again once that load has failed (a new tag epoch kept it out).
#[test]
fn invalidating_no_tags_lets_later_callers_join_a_load() {
    let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
    cache.insert_with(7, 7, EntryOptions::new().tags(["kept"]));
    let loads = std::sync::atomic::AtomicUsize::new(0);
    let (started, loading) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (c, loads) = (&cache, &loads);
        let leader = s.spawn(move || {
            c.try_get_or_load(1, move |_| {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                started.send(()).unwrap();
                released.recv().unwrap();
                Err::<u32, _>("down")
            })
        });
        loading.recv().unwrap();
        cache.invalidate_tags(Vec::<larder::Tag>::new());
        let late = s.spawn(move || {
            c.try_get_or_load(1, |_| {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err::<u32, _>("down again")
            })
        });
        // The late caller has joined, or will: the load is still held.
        std::thread::sleep(Duration::from_millis(100));
        release.send(()).unwrap();
        assert_eq!(*leader.join().unwrap().unwrap_err(), "down");
        assert_eq!(*late.join().unwrap().unwrap_err(), "down");
    });
    assert_eq!(loads.into_inner(), 1, "the late caller loaded for itself");
    assert_eq!(cache.get(&7), Some(7));
}
