//! Write policies against an in-memory store that logs every write and can be
//! gated, slowed, made to fail or to panic: read-through single flight,
//! write-through atomicity per key, and write-back's guarantees (coalescing,
//! batching, order, read-your-writes after eviction, backpressure, failure
//! reporting, close and drop), ending with the fault-injection run.

mod common;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

use larder::{
    Backpressure, Cache, Compute, Computed, EntryOptions, Failure, Op, Store, WriteBack, WriteError,
};

/// Faults a store call may meet, in percent of calls.
#[derive(Default, Clone, Copy)]
struct Faults {
    fail: u64,
    panic: u64,
    /// Calls that sleep a little first.
    slow: u64,
}

/// An in-memory system of record. Batches apply atomically: a failing or
/// panicking call applies nothing.
#[derive(Default)]
struct Db {
    data: Mutex<HashMap<u64, u64>>,
    /// Every applied write, in order.
    log: Mutex<Vec<Op<u64, u64>>>,
    write_calls: AtomicU64,
    loads: AtomicU64,
    faults: Mutex<Faults>,
    rng: Mutex<u64>,
    /// While set, write calls wait.
    closed_gate: Mutex<bool>,
    gate_moved: Condvar,
    /// Write calls that reached the gate.
    arrived: AtomicU64,
}

impl Db {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(0x9E37_79B9_7F4A_7C15),
            ..Self::default()
        })
    }

    fn with_faults(faults: Faults) -> Arc<Self> {
        let db = Self::new();
        *db.faults.lock().unwrap() = faults;
        db
    }

    fn roll(&self) -> u64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % 100
    }

    fn close_gate(&self) {
        *self.closed_gate.lock().unwrap() = true;
    }

    fn open_gate(&self) {
        *self.closed_gate.lock().unwrap() = false;
        self.gate_moved.notify_all();
    }

    fn value(&self, key: u64) -> Option<u64> {
        self.data.lock().unwrap().get(&key).copied()
    }

    fn log(&self) -> Vec<Op<u64, u64>> {
        self.log.lock().unwrap().clone()
    }
}

/// The store handed to caches: a shared handle, so tests keep looking inside.
#[derive(Clone)]
struct Shared(Arc<Db>);

impl Store<u64, u64> for Shared {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.0.value(*key))
    }

    fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
        self.write_batch(std::slice::from_ref(op))
    }

    fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), String> {
        let db = &self.0;
        db.write_calls.fetch_add(1, Ordering::SeqCst);
        db.arrived.fetch_add(1, Ordering::SeqCst);
        let mut gate = db.closed_gate.lock().unwrap();
        while *gate {
            gate = db.gate_moved.wait(gate).unwrap();
        }
        drop(gate);
        let faults = *db.faults.lock().unwrap();
        if db.roll() < faults.slow {
            std::thread::sleep(Duration::from_micros(200));
        }
        if db.roll() < faults.fail {
            return Err("injected failure".into());
        }
        if db.roll() < faults.panic {
            panic!("injected panic");
        }
        let mut data = db.data.lock().unwrap();
        let mut log = db.log.lock().unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => data.insert(*k, *v),
                Op::Delete(k) => data.remove(k),
            };
            log.push(op.clone());
        }
        Ok(())
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out waiting for {what}");
}

/// The next message on `rx`, waited for as long as [`wait_until`] waits: a
/// test whose other thread never sends fails instead of hanging.
fn recv_within<T>(what: &str, rx: &std::sync::mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// A store of `String` keys that loads each key's length and counts its
/// loads.
#[derive(Clone, Default)]
struct Lengths(Arc<(AtomicU64, Mutex<HashMap<String, usize>>)>);

impl Store<String, usize> for Lengths {
    type Error = String;
    fn load(&self, key: &String) -> Result<Option<usize>, String> {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        Ok(Some(key.len()))
    }
    fn write(&self, op: &Op<String, usize>) -> Result<(), String> {
        let mut data = self.0 .1.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(k.clone(), *v),
            Op::Delete(k) => data.remove(k),
        };
        Ok(())
    }
}

/// Every policy's `get` and `delete` take the key borrowed (`&str` for
/// `String` keys),
/// and counts one lookup once: a miss that loads is one miss (write-back
/// counted two, looking the cache up again after its queue), a hit one hit.
#[test]
fn write_policy_gets_take_borrowed_keys_and_count_each_lookup_once() {
    let builder = || {
        Cache::<String, usize>::builder()
            .max_capacity(100)
            .record_stats()
    };
    let store = Lengths::default();
    let read_through = builder().read_through(store.clone()).build().unwrap();
    let write_through = builder().write_through(store.clone()).build().unwrap();
    let write_back = builder()
        .write_back(store.clone(), WriteBack::default())
        .build()
        .unwrap();
    type Get<'a> = &'a dyn Fn(&str) -> Result<Option<usize>, Arc<String>>;
    let gets: [Get; 3] = [&|k| read_through.get(k), &|k| write_through.get(k), &|k| {
        write_back.get(k)
    }];
    for (i, get) in gets.iter().enumerate() {
        let loads = store.0 .0.load(Ordering::SeqCst);
        assert_eq!(get("larder"), Ok(Some(6)), "policy {i}: a miss loads");
        assert_eq!(get("larder"), Ok(Some(6)), "policy {i}: then hits");
        assert_eq!(store.0 .0.load(Ordering::SeqCst), loads + 1, "policy {i}");
    }
    for (name, stats) in [
        ("read-through", read_through.stats()),
        ("write-through", write_through.stats()),
        ("write-back", write_back.stats()),
    ] {
        assert_eq!((stats.hits, stats.misses), (1, 1), "{name}");
    }
    // Deletes take the key borrowed too.
    write_through.put("gone".to_string(), 4).unwrap();
    write_back.put("gone".to_string(), 4).unwrap();
    assert_eq!(read_through.delete("larder"), Ok(()));
    assert_eq!(write_through.delete("gone"), Ok(()));
    assert_eq!(write_back.delete("gone"), Ok(()));
    assert_eq!(read_through.peek(&"larder".to_string()), None);
    assert_eq!(write_through.peek(&"gone".to_string()), None);
    assert_eq!(store.0 .1.lock().unwrap().get("gone"), None, "deleted");
    assert_eq!(write_back.get("gone"), Ok(None), "the queued delete");
    // A queued write answers a borrowed key too, and counts its miss once.
    write_back.put("queued".to_string(), 1).unwrap();
    write_back.invalidate_all();
    assert_eq!(write_back.get("queued"), Ok(Some(1)));
    assert_eq!(write_back.stats().misses, 3);
    assert!(write_back.close().is_ok());
}

// ---------------------------------------------------------------- read-through

#[test]
fn read_through_loads_once_per_key_and_caches_only_values() {
    let db = Db::new();
    db.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(Shared(db.clone()))
        .build()
        .unwrap();
    let start = Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                start.wait();
                assert_eq!(cache.get(&1), Ok(Some(10)));
            });
        }
    });
    assert!(db.loads.load(Ordering::SeqCst) <= 8);
    let loads = db.loads.load(Ordering::SeqCst);
    assert_eq!(cache.get(&1), Ok(Some(10)), "a hit");
    assert_eq!(db.loads.load(Ordering::SeqCst), loads, "no load on a hit");
    assert_eq!(cache.get(&2), Ok(None));
    assert_eq!(cache.get(&2), Ok(None));
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        loads + 2,
        "absent is not cached"
    );
    // put and delete touch the cache alone.
    cache.put(3, 30).unwrap();
    assert_eq!(cache.get(&3), Ok(Some(30)));
    assert_eq!(db.value(3), None);
    cache.delete(&1).unwrap();
    assert_eq!(db.value(1), Some(10));
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get(&1), Ok(Some(10)), "loaded again after delete");
    assert_eq!(db.write_calls.load(Ordering::SeqCst), 0);
    assert!(cache.flush().is_ok());
}

/// A store whose first load panics once `release` is set, after the
/// callers that are to wait on it have looked the cache up.
#[derive(Clone, Default)]
struct FirstLoadPanics(Arc<(AtomicU64, AtomicBool)>);

impl Store<u64, u64> for FirstLoadPanics {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        if self.0 .0.fetch_add(1, Ordering::SeqCst) == 0 {
            wait_until("the release", || self.0 .1.load(Ordering::SeqCst));
            panic!("load exploded");
        }
        Ok(Some(key * 10))
    }
    fn write(&self, _: &Op<u64, u64>) -> Result<(), String> {
        Ok(())
    }
}

/// Under every policy, a `get` whose store load panics raises the panic in
/// its own caller alone: the callers waiting on that load load for
/// themselves, once between them, and get the value.
#[test]
fn a_panicking_store_load_hands_the_load_to_a_waiter_under_every_policy() {
    fn check(
        policy: &str,
        store: &FirstLoadPanics,
        get: &(dyn Fn() -> Result<Option<u64>, Arc<String>> + Sync),
        misses: &(dyn Fn() -> u64 + Sync),
    ) {
        std::thread::scope(|s| {
            let leader = s.spawn(|| catch_unwind(AssertUnwindSafe(get)));
            wait_until("the leader's load", || {
                store.0 .0.load(Ordering::SeqCst) == 1
            });
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(get)).collect();
            // Each waiter has missed, and is waiting on the load or about
            // to.
            wait_until("the waiters' lookups", || misses() == 4);
            store.0 .1.store(true, Ordering::SeqCst);
            let panic = leader.join().unwrap().unwrap_err();
            assert_eq!(
                panic.downcast_ref::<&str>(),
                Some(&"load exploded"),
                "{policy}"
            );
            for w in waiters {
                assert_eq!(w.join().unwrap(), Ok(Some(10)), "{policy}");
            }
        });
        assert_eq!(
            store.0 .0.load(Ordering::SeqCst),
            2,
            "{policy}: the panicking load and one takeover"
        );
        assert_eq!(get(), Ok(Some(10)), "{policy}: cached");
        assert_eq!(store.0 .0.load(Ordering::SeqCst), 2, "{policy}: a hit");
    }
    let store = FirstLoadPanics::default();
    let cache = Cache::builder()
        .max_capacity(10)
        .record_stats()
        .read_through(store.clone())
        .build()
        .unwrap();
    check("read-through", &store, &|| cache.get(&1), &|| {
        cache.stats().misses
    });
    let store = FirstLoadPanics::default();
    let cache = Cache::builder()
        .max_capacity(10)
        .record_stats()
        .write_through(store.clone())
        .build()
        .unwrap();
    check("write-through", &store, &|| cache.get(&1), &|| {
        cache.stats().misses
    });
    let store = FirstLoadPanics::default();
    let cache = Cache::builder()
        .max_capacity(10)
        .record_stats()
        .write_back(store.clone(), WriteBack::default())
        .build()
        .unwrap();
    check("write-back", &store, &|| cache.get(&1), &|| {
        cache.stats().misses
    });
}

#[test]
fn read_through_shares_a_store_error_and_does_not_cache_it() {
    struct Down(AtomicBool);
    impl Store<u64, u64> for Down {
        type Error = &'static str;
        fn load(&self, k: &u64) -> Result<Option<u64>, &'static str> {
            if self.0.load(Ordering::SeqCst) {
                Err("down")
            } else {
                Ok(Some(k + 1))
            }
        }
        fn write(&self, _: &Op<u64, u64>) -> Result<(), &'static str> {
            Ok(())
        }
    }
    let cache = Cache::builder()
        .max_capacity(10)
        .read_through(Down(AtomicBool::new(true)))
        .build()
        .unwrap();
    assert_eq!(*cache.get(&1).unwrap_err(), "down");
    assert_eq!(cache.peek(&1), None);
    cache.store().0.store(false, Ordering::SeqCst);
    assert_eq!(cache.get(&1), Ok(Some(2)));
}

/// A store that tags each value it loads `group:{key / 10}` and gives it ten
/// seconds to live; a load can be held once it has read, and the tagging
/// made to panic.
#[derive(Default)]
struct Tagging {
    data: Mutex<HashMap<u64, u64>>,
    /// Taken by the next load, which waits at the first barrier once it has
    /// read the store, then at the second before it returns.
    hold: Mutex<Option<(Arc<Barrier>, Arc<Barrier>)>>,
    panic_in_options: AtomicBool,
    loads: AtomicU64,
}

impl Store<u64, u64> for Tagging {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let value = self.data.lock().unwrap().get(key).copied();
        let hold = self.hold.lock().unwrap().take();
        if let Some((read, release)) = hold {
            read.wait();
            release.wait();
        }
        Ok(value)
    }

    fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
        let mut data = self.data.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(*k, *v),
            Op::Delete(k) => data.remove(k),
        };
        Ok(())
    }

    fn load_options(&self, key: &u64, _value: &u64) -> larder::EntryOptions {
        assert!(
            !self.panic_in_options.load(Ordering::SeqCst),
            "options refused"
        );
        larder::EntryOptions::new()
            .tags([format!("group:{}", key / 10)])
            .ttl(Duration::from_secs(10))
    }
}

#[test]
fn read_through_caches_what_it_loads_with_the_stores_tags_and_ttl() {
    let (clock, time) = larder::Clock::mock();
    let store = Tagging::default();
    store
        .data
        .lock()
        .unwrap()
        .extend([(11, 110), (12, 120), (21, 210)]);
    let cache = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .read_through(store)
        .build()
        .unwrap();
    for k in [11, 12, 21] {
        assert_eq!(cache.get(&k), Ok(Some(k * 10)));
    }
    cache.invalidate_tag("group:1");
    assert_eq!((cache.peek(&11), cache.peek(&12)), (None, None));
    assert_eq!(cache.peek(&21), Some(210), "another group stays");
    time.advance(Duration::from_secs(10));
    assert_eq!(cache.peek(&21), None, "the store's ttl passed");
    assert_eq!(cache.get(&21), Ok(Some(210)), "loaded again");
    assert_eq!(cache.store().loads.load(Ordering::SeqCst), 4);
}

#[test]
fn a_tag_invalidation_stops_a_load_that_read_the_store_before_the_change() {
    let store = Tagging::default();
    store.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(store)
        .build()
        .unwrap();
    let (read, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    *cache.store().hold.lock().unwrap() = Some((read.clone(), release.clone()));
    std::thread::scope(|s| {
        let reader = s.spawn(|| cache.get(&1));
        read.wait(); // the load has read 10
        cache.store().data.lock().unwrap().insert(1, 11); // the row changes...
        cache.invalidate_tag("group:0"); // ...and the cache is told by its group
        release.wait();
        assert_eq!(reader.join().unwrap(), Ok(Some(10)), "its callers get it");
    });
    assert_eq!(cache.peek(&1), None, "but it is not cached");
    assert_eq!(cache.get(&1), Ok(Some(11)));
    assert_eq!(cache.store().loads.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_load_options_fails_the_load_and_caches_nothing() {
    let store = Tagging::default();
    store.data.lock().unwrap().insert(1, 10);
    store.panic_in_options.store(true, Ordering::SeqCst);
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(store)
        .build()
        .unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.get(&1)));
    assert!(panicked.is_err(), "the caller sees the panic");
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.stats().load_failures, 1);
    cache
        .store()
        .panic_in_options
        .store(false, Ordering::SeqCst);
    assert_eq!(cache.get(&1), Ok(Some(10)), "the next caller loads afresh");
    assert_eq!(cache.peek(&1), Some(10));
}

#[test]
fn write_through_and_write_back_reads_take_the_stores_options_too() {
    let through = Cache::builder()
        .max_capacity(100)
        .write_through(Tagging::default())
        .build()
        .unwrap();
    through.store().data.lock().unwrap().insert(5, 50);
    assert_eq!(through.get(&5), Ok(Some(50)));
    through.invalidate_tag("group:0");
    assert_eq!(through.peek(&5), None, "a loaded copy carries the tag");

    // Write-back: a miss that the queue does not answer loads the same way.
    let back = Cache::builder()
        .max_capacity(100)
        .write_back(
            Tagging::default(),
            WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    back.store().data.lock().unwrap().insert(7, 70);
    back.put(8, 80).unwrap();
    assert_eq!(back.get(&7), Ok(Some(70)));
    back.invalidate_tag("group:0");
    assert_eq!(back.peek(&7), None, "a loaded copy carries the tag");
    assert_eq!(back.peek(&8), Some(80), "a put without tags has none");
    assert_eq!(back.store().loads.load(Ordering::SeqCst), 1);
    back.flush().unwrap();
    assert_eq!(back.store().data.lock().unwrap().get(&8), Some(&80));
}

// --------------------------------------------------------------- write-through

#[test]
fn a_read_after_an_acknowledged_delete_does_not_take_an_older_load() {
    use std::sync::mpsc;
    /// A store whose loads say they started, then wait to be released.
    struct HeldLoads {
        data: Mutex<HashMap<u64, u64>>,
        started: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }
    impl Store<u64, u64> for HeldLoads {
        type Error = String;
        fn load(&self, k: &u64) -> Result<Option<u64>, String> {
            let v = self.data.lock().unwrap().get(k).copied();
            self.started.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            Ok(v)
        }
        fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
            let mut data = self.data.lock().unwrap();
            match op {
                Op::Put(k, v) => data.insert(*k, *v),
                Op::Delete(k) => data.remove(k),
            };
            Ok(())
        }
    }
    let (started, load_started) = mpsc::channel();
    let (release, released) = mpsc::channel();
    let store = HeldLoads {
        data: Mutex::new(HashMap::from([(1, 100)])),
        started: Mutex::new(started),
        release: Mutex::new(released),
    };
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(store, WriteBack::default().max_delay(Duration::MAX))
        .build()
        .unwrap();
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let release = release;
        let early = s.spawn(|| cache.get(&1));
        recv_within("the load to start", &load_started);
        cache.delete(&1).unwrap();
        // Begun after the delete returned: it must see the delete, not wait
        // for the load that began before it.
        let (answer, answered) = mpsc::channel();
        let cache = &cache;
        s.spawn(move || answer.send(cache.get(&1)).unwrap());
        let late = answered.recv_timeout(Duration::from_secs(30));
        release.send(()).unwrap();
        assert_eq!(late, Ok(Ok(None)), "the late read sees the delete");
        assert_eq!(
            early.join().unwrap(),
            Ok(Some(100)),
            "the early read's load"
        );
    });
    assert_eq!(cache.get(&1), Ok(None), "the older load was not cached");
    cache.flush().unwrap();
    assert_eq!(cache.store().data.lock().unwrap().get(&1), None);
}

#[test]
fn write_through_stores_before_caching_and_a_failure_changes_nothing() {
    let db = Db::new();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), Some(10)));

    db.faults.lock().unwrap().fail = 100;
    assert_eq!(
        cache.put(1, 11),
        Err(WriteError::Store("injected failure".into()))
    );
    assert_eq!(
        cache.delete(&1),
        Err(WriteError::Store("injected failure".into()))
    );
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), Some(10)));

    *db.faults.lock().unwrap() = Faults {
        panic: 100,
        ..Faults::default()
    };
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.put(1, 12)));
    assert!(panicked.is_err());
    // A panicking store may have taken the write: the cached copy is dropped
    // and the next read asks the store (which, here, did not take it).
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), None));
    *db.faults.lock().unwrap() = Faults::default();
    assert_eq!(cache.get(&1), Ok(Some(10)));

    *db.faults.lock().unwrap() = Faults::default();
    cache.put(1, 13).unwrap();
    cache.delete(&1).unwrap();
    assert_eq!((db.value(1), cache.peek(&1)), (None, None));
    assert_eq!(cache.get(&1), Ok(None));
}

/// While a write-through call waits in the store, readers see the value
/// before it: the cache is written only after the store took the write, and
/// never at all when the store fails it (not cached first and rolled back).
#[test]
fn readers_never_see_a_write_through_value_the_store_has_not_taken() {
    let db = Db::new();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    for (fail, delete) in [(100, false), (100, true), (0, false)] {
        db.faults.lock().unwrap().fail = fail;
        db.arrived.store(0, Ordering::SeqCst);
        db.close_gate();
        std::thread::scope(|s| {
            // Should an assertion fail, the writer still ends.
            let _open = GateOpener(&db);
            let writer = s.spawn(|| {
                if delete {
                    cache.delete(&1)
                } else {
                    cache.put(1, 11)
                }
            });
            wait_until("the write reaches the store", || {
                db.arrived.load(Ordering::SeqCst) == 1
            });
            assert_eq!(cache.peek(&1), Some(10), "fail {fail}, delete {delete}");
            assert_eq!(cache.get(&1), Ok(Some(10)), "fail {fail}, delete {delete}");
            db.open_gate();
            assert_eq!(writer.join().unwrap().is_ok(), fail == 0);
        });
        let now = if fail == 0 { Some(11) } else { Some(10) };
        assert_eq!((db.value(1), cache.peek(&1)), (now, now), "fail {fail}");
    }
}

#[test]
fn a_write_through_store_that_panics_after_taking_the_write_leaves_no_stale_copy() {
    /// Applies every write, then panics on the value 13 and on deletes of key 7.
    #[derive(Default)]
    struct TakesThenPanics(Mutex<HashMap<u64, u64>>);
    impl Store<u64, u64> for TakesThenPanics {
        type Error = String;
        fn load(&self, k: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(k).copied())
        }
        fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
            let mut data = self.0.lock().unwrap();
            match op {
                Op::Put(k, v) => data.insert(*k, *v),
                Op::Delete(k) => data.remove(k),
            };
            drop(data);
            match op {
                Op::Put(_, 13) | Op::Delete(7) => panic!("the store panics after the write"),
                _ => Ok(()),
            }
        }
    }
    let heard: Arc<Mutex<Vec<(u64, u64, larder::RemovalCause)>>> = Arc::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .write_through(TakesThenPanics::default())
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    cache.put(7, 70).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| cache.put(1, 13))).is_err());
    assert!(catch_unwind(AssertUnwindSafe(|| cache.delete(&7))).is_err());
    assert_eq!((cache.peek(&1), cache.peek(&7)), (None, None));
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (1, 10, larder::RemovalCause::Explicit),
            (7, 70, larder::RemovalCause::Explicit)
        ],
        "the copies dropped after the store's panics reach the listener"
    );
    // The store took both writes: the cache must not keep serving the old values.
    assert_eq!(cache.get(&1), Ok(Some(13)));
    assert_eq!(cache.get(&7), Ok(None));
    // The stripes were released: the keys can be written again.
    cache.put(1, 11).unwrap();
    cache.put(7, 71).unwrap();
    assert_eq!((cache.get(&1), cache.get(&7)), (Ok(Some(11)), Ok(Some(71))));
}

#[test]
fn write_through_put_with_gives_the_cached_copy_a_ttl_and_tags() {
    let db = Db::new();
    let (clock, time) = larder::Clock::mock();
    let cache = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    let options = larder::EntryOptions::new()
        .ttl(Duration::from_secs(10))
        .tags(["user:1"]);
    cache.put_with(1, 10, options.clone()).unwrap();
    cache.put_with(2, 20, options).unwrap();
    time.advance(Duration::from_secs(10));
    assert_eq!(cache.peek(&1), None, "the cached copy expired");
    assert_eq!(cache.get(&1), Ok(Some(10)), "the store still has it");
    assert_eq!(db.loads.load(Ordering::SeqCst), 1);
    cache
        .put_with(3, 30, larder::EntryOptions::new().tags(["user:1"]))
        .unwrap();
    cache.invalidate_tag("user:1");
    assert_eq!(cache.peek(&3), None);
    assert_eq!(
        db.value(3),
        Some(30),
        "a tag drops cached copies, not store rows"
    );
}

#[test]
fn concurrent_write_through_puts_leave_cache_and_store_agreeing() {
    let db = Db::with_faults(Faults {
        slow: 30,
        ..Faults::default()
    });
    let cache = Cache::builder()
        .max_capacity(1_000)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let cache = &cache;
            s.spawn(move || {
                for i in 0..500u64 {
                    cache.put(i % 4, t * 1_000_000 + i).unwrap();
                }
            });
        }
    });
    for key in 0..4 {
        assert_eq!(cache.peek(&key), db.value(key), "key {key}");
        assert!(cache.peek(&key).is_some());
    }
}

/// A listener's record of what it heard.
type Heard = Arc<Mutex<Vec<(u64, u64, larder::RemovalCause)>>>;

#[test]
fn a_write_through_batch_is_one_store_call_of_each_keys_last_write() {
    let db = Db::new();
    let heard = Heard::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put(3, 30).unwrap();
    cache.put(4, 40).unwrap();
    let calls = db.write_calls.load(Ordering::SeqCst);
    cache
        .write_all([
            Op::Put(1, 10),
            Op::Delete(3),
            Op::Put(2, 20),
            Op::Put(1, 11),
            Op::Put(4, 41),
            Op::Delete(4),
        ])
        .unwrap();
    assert_eq!(db.write_calls.load(Ordering::SeqCst), calls + 1, "one call");
    assert_eq!(
        db.log()[2..],
        [Op::Delete(3), Op::Put(2, 20), Op::Put(1, 11), Op::Delete(4)],
        "each key's last write, in their order"
    );
    for key in 1..=4 {
        assert_eq!(cache.peek(&key), db.value(key), "key {key}");
    }
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (3, 30, larder::RemovalCause::Explicit),
            (4, 40, larder::RemovalCause::Explicit)
        ]
    );
    // Puts alone; an empty batch calls nothing.
    cache.put_all((10..20).map(|k| (k, k * 10))).unwrap();
    cache.put_all([]).unwrap();
    assert_eq!(db.write_calls.load(Ordering::SeqCst), calls + 2);
    assert_eq!(cache.get(&15), Ok(Some(150)));
    assert_eq!(db.value(19), Some(190));
}

/// A read-through batch lands each key's last write in the cache, in their
/// order, and never calls the store: the listener hears the copies it
/// replaced and dropped.
#[test]
fn a_read_through_batch_lands_each_keys_last_write_in_the_cache_alone() {
    let db = Db::new();
    db.data.lock().unwrap().insert(5, 50);
    let heard = Heard::default();
    let sink = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k, v, cause| sink.lock().unwrap().push((k, v, cause)))
        .read_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put(3, 30).unwrap();
    cache.put(4, 40).unwrap();
    cache
        .write_all([
            Op::Put(1, 10),
            Op::Delete(3),
            Op::Put(2, 20),
            Op::Put(1, 11),
            Op::Put(4, 41),
            Op::Delete(5),
        ])
        .unwrap();
    let cached: Vec<_> = (1..=5).map(|k| cache.peek(&k)).collect();
    assert_eq!(cached, [Some(11), Some(20), None, Some(41), None]);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (3, 30, larder::RemovalCause::Explicit),
            (4, 40, larder::RemovalCause::Replaced)
        ],
        "key 1's first write never landed"
    );
    assert_eq!(db.write_calls.load(Ordering::SeqCst), 0, "no store call");
    assert_eq!(cache.get(&5), Ok(Some(50)), "a delete drops the copy only");
    cache.put_all((10..20).map(|k| (k, k * 10))).unwrap();
    cache.put_all([]).unwrap();
    let loads = db.loads.load(Ordering::SeqCst);
    assert_eq!(cache.get(&15), Ok(Some(150)));
    assert_eq!(db.loads.load(Ordering::SeqCst), loads, "a hit");
    assert_eq!(db.write_calls.load(Ordering::SeqCst), 0);
}

/// A load of a key that a read-through batch writes while it is in flight
/// hands its value to its caller but is not cached over the batch's.
#[test]
fn a_load_in_flight_is_not_cached_over_a_read_through_batch() {
    let (loading, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let db = Db::new();
    db.data.lock().unwrap().insert(1, 10);
    let store = Gated {
        inner: Shared(db.clone()),
        loading: loading.clone(),
        release: release.clone(),
    };
    let cache = Arc::new(
        Cache::builder()
            .max_capacity(100)
            .read_through(store)
            .build()
            .unwrap(),
    );
    for batch in [
        vec![Op::Put(1, 11), Op::Put(2, 20)],
        vec![Op::Delete(1), Op::Put(2, 21)],
    ] {
        cache.delete(&1).unwrap();
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get(&1))
        };
        loading.wait();
        let expected = match &batch[0] {
            Op::Put(_, v) => Some(*v),
            Op::Delete(_) => None,
        };
        cache.write_all(batch).unwrap();
        release.wait();
        assert_eq!(reader.join().unwrap(), Ok(Some(10)), "the load's own value");
        assert_eq!(cache.peek(&1), expected, "the batch's write stands");
    }
}

/// A store whose loads wait at two barriers: one as they start, one before
/// they read.
struct Gated {
    inner: Shared,
    loading: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl Store<u64, u64> for Gated {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.loading.wait();
        self.release.wait();
        self.inner.load(key)
    }

    fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
        self.inner.write(op)
    }
}

/// A weigher that panics partway through a read-through batch: the writes
/// before it have landed, and the keys after it have no cached copy left
/// (the caller may have stored newer values), so reads load them.
#[test]
fn a_panic_midway_through_a_read_through_batch_drops_the_keys_not_landed() {
    let db = Db::new();
    db.data.lock().unwrap().extend([(2, 200), (3, 300)]);
    let cache = Cache::builder()
        .max_capacity(100)
        .weigher(|_, v: &u64| {
            assert_ne!(*v, 666, "the weigher refuses 666");
            1
        })
        .read_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put_all([(2, 20), (3, 30)]).unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.put_all([(1, 10), (2, 666), (3, 31)])
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.peek(&1), Some(10), "landed before the panic");
    assert_eq!((cache.peek(&2), cache.peek(&3)), (None, None));
    assert_eq!(cache.get(&3), Ok(Some(300)), "loaded from the store");
}

#[test]
fn a_failed_or_panicking_write_through_batch_drops_its_keys_from_the_cache() {
    let db = Db::new();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put_all([(1, 10), (2, 20), (3, 30)]).unwrap();
    db.faults.lock().unwrap().fail = 100;
    assert_eq!(
        cache.write_all([Op::Put(1, 11), Op::Delete(2)]),
        Err(WriteError::Store("injected failure".into()))
    );
    // The store may have taken part of a batch: its keys are dropped, the
    // others stay.
    assert_eq!(
        (cache.peek(&1), cache.peek(&2), cache.peek(&3)),
        (None, None, Some(30))
    );
    *db.faults.lock().unwrap() = Faults {
        panic: 100,
        ..Faults::default()
    };
    assert!(catch_unwind(AssertUnwindSafe(|| cache.put_all([(3, 31), (4, 40)]))).is_err());
    assert_eq!((cache.peek(&3), cache.peek(&4)), (None, None));
    *db.faults.lock().unwrap() = Faults::default();
    // Reads load what the store holds; the stripes were released.
    assert_eq!(cache.get(&1), Ok(Some(10)));
    assert_eq!(cache.get(&3), Ok(Some(30)));
    cache.put_all([(1, 12), (3, 32)]).unwrap();
    assert_eq!((cache.peek(&1), cache.peek(&3)), (Some(12), Some(32)));
}

/// Runs `write(t)` on `threads` threads at once, `t` from 0, and returns
/// once all have ended; a wait in a cycle would never end, so a writer still
/// running after two minutes fails the test instead of hanging it.
fn race_writers<W: Fn(u64) + Send + Sync + 'static>(threads: u64, write: W) {
    let write = Arc::new(write);
    let (done, finished) = std::sync::mpsc::channel();
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let (write, done) = (write.clone(), done.clone());
            std::thread::spawn(move || {
                write(t);
                done.send(()).unwrap();
            })
        })
        .collect();
    for _ in 0..threads {
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("every writer ends");
    }
    writers.into_iter().for_each(|w| w.join().unwrap());
}

type WriteThroughCache = Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteThrough<Shared>>;

/// A shared write-through cache of `capacity` over a store whose calls are
/// slow `slow` percent of the time.
fn slow_write_through(slow: u64, capacity: u64) -> (Arc<Db>, Arc<WriteThroughCache>) {
    let db = Db::with_faults(Faults {
        slow,
        ..Faults::default()
    });
    let cache = Cache::builder()
        .max_capacity(capacity)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    (db, Arc::new(cache))
}

/// Batches over overlapping keys, given in opposite orders, and single puts
/// of the same keys, all at once: none waits for another in a cycle, and
/// each key ends as the store holds it.
#[test]
fn concurrent_write_through_batches_never_deadlock_and_leave_cache_and_store_agreeing() {
    let (db, cache) = slow_write_through(30, 1_000);
    let writer = cache.clone();
    race_writers(4, move |t| {
        for i in 0..200u64 {
            let value = t * 1_000_000 + i;
            let mut batch: Vec<(u64, u64)> = (0..8).map(|k| (k, value)).collect();
            if t % 2 == 1 {
                batch.reverse();
            }
            match t {
                3 => writer.put(i % 8, value).unwrap(),
                _ => writer.put_all(batch).unwrap(),
            }
        }
    });
    for key in 0..8 {
        assert_eq!(cache.peek(&key), db.value(key), "key {key}");
        assert!(cache.peek(&key).is_some());
    }
}

/// Counting up one key in the store from four threads at once loses no
/// update: each compute holds the key's stripe from its read to its write.
#[test]
fn write_through_compute_counts_in_the_store_without_losing_updates() {
    let (db, cache) = slow_write_through(20, 100);
    let writer = cache.clone();
    race_writers(4, move |t| {
        for i in 0..100 {
            if i % 10 == t {
                // Now and then the cached copy goes: the next compute reads
                // the store.
                writer.invalidate_entries_if(|k, _| *k == 7);
            }
            let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
            assert!(writer.compute(7, count).is_ok());
        }
    });
    assert_eq!(db.value(7), Some(400));
    assert_eq!(cache.get(&7), Ok(Some(400)));
}

#[test]
fn write_through_compute_keeps_puts_and_removes_through_the_store() {
    let db = Db::new();
    db.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    let calls = || db.write_calls.load(Ordering::SeqCst);
    // A miss reads the store, and a keep writes nothing nor caches.
    assert_eq!(
        cache.compute(1, |_| Compute::Keep),
        Ok(Computed::Unchanged(10))
    );
    assert_eq!((cache.peek(&1), calls()), (None, 0));
    assert_eq!(cache.compute(2, |_| Compute::Keep), Ok(Computed::Absent));
    assert_eq!(cache.compute(2, |_| Compute::Remove), Ok(Computed::Absent));
    assert_eq!(calls(), 0, "nothing to remove: no store call");
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(11))
    );
    assert_eq!((db.value(1), cache.peek(&1)), (Some(11), Some(11)));
    assert_eq!(
        cache.compute(2, |_| Compute::PutWith(20, EntryOptions::new().tags(["t"]))),
        Ok(Computed::Inserted(20))
    );
    cache.invalidate_tag("t");
    assert_eq!((db.value(2), cache.peek(&2)), (Some(20), None));
    assert_eq!(
        cache.compute(1, |_| Compute::Remove),
        Ok(Computed::Removed(11))
    );
    assert_eq!((db.value(1), cache.peek(&1)), (None, None));
    assert_eq!(calls(), 3);
}

#[test]
fn a_failing_or_panicking_write_through_compute_leaves_no_stale_copy() {
    let db = Db::new();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    *db.faults.lock().unwrap() = Faults {
        fail: 100,
        ..Faults::default()
    };
    assert_eq!(
        cache.compute(1, |_| Compute::Put(11)),
        Err(WriteError::Store("injected failure".into()))
    );
    assert_eq!(
        cache.compute(1, |_| Compute::Remove),
        Err(WriteError::Store("injected failure".into()))
    );
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), Some(10)));
    *db.faults.lock().unwrap() = Faults::default();
    // A store that panics on the write may have taken it: the cached copy
    // goes, and reads find the store.
    *db.faults.lock().unwrap() = Faults {
        panic: 100,
        ..Faults::default()
    };
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.compute(1, |_| Compute::Put(11))));
    assert!(panicked.is_err());
    *db.faults.lock().unwrap() = Faults::default();
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), None));
    assert_eq!(cache.get(&1), Ok(Some(10)));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(1, |_| -> Compute<u64> { panic!("the closure fails") })
    }));
    assert!(panicked.is_err());
    assert_eq!((db.value(1), cache.peek(&1)), (Some(10), Some(10)));
    // The closure writing its own key would wait for itself: it panics, and
    // the stripe is released.
    let reentered = catch_unwind(AssertUnwindSafe(|| {
        cache.compute(1, |_| {
            let _ = cache.put(1, 12);
            Compute::Keep
        })
    }));
    assert!(reentered.is_err());
    assert_eq!(cache.put(1, 13), Ok(()));
    assert_eq!(db.value(1), Some(13));
}

/// While a batch waits in the store, readers see the values before it.
#[test]
fn readers_never_see_a_write_through_batch_the_store_has_not_taken() {
    let db = Db::new();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    cache.put_all([(1, 10), (2, 20)]).unwrap();
    db.arrived.store(0, Ordering::SeqCst);
    db.close_gate();
    std::thread::scope(|s| {
        // Should an assertion fail, the writer still ends.
        let _open = GateOpener(&db);
        let writer = s.spawn(|| cache.write_all([Op::Put(1, 11), Op::Delete(2)]));
        wait_until("the batch reaches the store", || {
            db.arrived.load(Ordering::SeqCst) == 1
        });
        assert_eq!((cache.peek(&1), cache.get(&2)), (Some(10), Ok(Some(20))));
        db.open_gate();
        assert!(writer.join().unwrap().is_ok());
    });
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(11), None));
}

// ------------------------------------------------------------------ write-back

/// Write-back caches over a [`Db`], on stripes fixed across runs: many
/// tests hold one key's stripe while they write others.
type WriteBackCache = Cache<u64, u64, common::FixedStripes, larder::WriteBehind<u64, u64, Shared>>;

fn write_back(db: &Arc<Db>, settings: WriteBack, capacity: u64) -> WriteBackCache {
    Cache::builder()
        .max_capacity(capacity)
        .hasher(Default::default())
        .write_back(Shared(db.clone()), settings)
        .build()
        .unwrap()
}

#[test]
fn repeated_writes_coalesce_and_flush_sends_the_latest() {
    let db = Db::new();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::MAX), 100);
    for v in 0..1_000 {
        cache.put(7, v).unwrap();
    }
    cache.put(8, 1).unwrap();
    assert_eq!(cache.get(&7), Ok(Some(999)));
    assert_eq!(db.value(7), None, "nothing is sent before a batch is due");
    cache.flush().unwrap();
    assert_eq!(db.value(7), Some(999));
    assert_eq!(db.log(), vec![Op::Put(7, 999), Op::Put(8, 1)]);
    let stats = cache.write_stats();
    assert_eq!(
        (stats.accepted, stats.coalesced, stats.stored),
        (1_001, 999, 2)
    );
    assert_eq!((stats.store_calls, stats.dirty), (1, 0));
}

#[test]
fn a_full_batch_is_sent_without_a_flush_and_a_late_one_after_the_delay() {
    let db = Db::new();
    let cache = write_back(
        &db,
        WriteBack::default().max_delay(Duration::MAX).batch(4),
        100,
    );
    for k in 0..4 {
        cache.put(k, k).unwrap();
    }
    wait_until("a full batch", || db.log().len() == 4);
    assert_eq!(db.write_calls.load(Ordering::SeqCst), 1);

    let cache = write_back(
        &db,
        WriteBack::default().max_delay(Duration::from_millis(5)),
        100,
    );
    cache.put(100, 1).unwrap();
    wait_until("a delayed write", || db.value(100) == Some(1));
}

#[test]
fn a_delete_after_a_put_reaches_the_store_after_it() {
    let db = Db::new();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::ZERO), 100);
    db.close_gate();
    cache.put(1, 10).unwrap();
    wait_until("the put in flight", || {
        db.arrived.load(Ordering::SeqCst) == 1
    });
    cache.delete(&1).unwrap();
    assert_eq!(
        cache.get(&1),
        Ok(None),
        "the pending delete reads as absent"
    );
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        0,
        "never loaded behind a pending write"
    );
    cache.put(2, 20).unwrap();
    cache.delete(&2).unwrap();
    cache.put(2, 21).unwrap();
    db.open_gate();
    cache.flush().unwrap();
    let log = db.log();
    let key1: Vec<_> = log.iter().filter(|op| *op.key() == 1).cloned().collect();
    assert_eq!(key1, vec![Op::Put(1, 10), Op::Delete(1)]);
    assert_eq!((db.value(1), db.value(2)), (None, Some(21)));
}

#[test]
fn an_evicted_dirty_entry_reads_as_its_pending_value() {
    let db = Db::new();
    db.close_gate();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::ZERO), 4);
    for k in 0..100 {
        cache.put(k, k * 10).unwrap();
    }
    assert!(cache.len() <= 4, "the cache stays bounded");
    for k in 0..100 {
        assert_eq!(cache.get(&k), Ok(Some(k * 10)), "key {k}");
    }
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        0,
        "no stale load from the store"
    );
    db.open_gate();
    cache.flush().unwrap();
    for k in 0..100 {
        assert_eq!(db.value(k), Some(k * 10));
    }
}

#[test]
fn an_expired_dirty_entry_reads_as_its_pending_value() {
    let db = Db::new();
    db.close_gate();
    let (clock, time) = larder::Clock::mock();
    let cache = Cache::builder()
        .max_capacity(10)
        .time_to_live(Duration::from_secs(1))
        .clock(clock)
        .write_back(Shared(db.clone()), WriteBack::default())
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    time.advance(Duration::from_secs(2));
    assert_eq!(cache.peek(&1), None, "expired from the cache");
    assert_eq!(cache.get(&1), Ok(Some(10)), "still pending");
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!(db.value(1), Some(10));
}

#[test]
fn write_back_put_with_tags_the_cached_copy_and_the_queue_keeps_the_write() {
    let db = Db::new();
    db.close_gate();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::ZERO), 100);
    cache
        .put_with(1, 10, larder::EntryOptions::new().tags(["order:1"]))
        .unwrap();
    cache.invalidate_tag("order:1");
    assert_eq!(cache.peek(&1), None, "the cached copy is gone");
    assert_eq!(
        cache.get(&1),
        Ok(Some(10)),
        "the pending write is still read"
    );
    assert_eq!(db.loads.load(Ordering::SeqCst), 0);
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!(db.value(1), Some(10));
}

/// A write-back cache sending each write at once to a store whose gate is
/// closed (its calls wait), with a queue of `queue_capacity`.
fn behind_a_closed_gate(
    queue_capacity: usize,
    backpressure: Backpressure,
) -> (Arc<Db>, WriteBackCache) {
    let db = Db::new();
    db.close_gate();
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .queue_capacity(queue_capacity)
        .backpressure(backpressure);
    let cache = write_back(&db, settings, 100);
    (db, cache)
}

/// Opens a store's gate when dropped: a test's writers waiting behind it
/// end even when an assertion fails first.
struct GateOpener<'a>(&'a Db);
impl Drop for GateOpener<'_> {
    fn drop(&mut self) {
        self.0.open_gate();
    }
}

#[test]
fn a_full_queue_blocks_writers_until_there_is_room() {
    let (db, cache) = behind_a_closed_gate(2, Backpressure::Block);
    cache.put(1, 1).unwrap();
    cache.put(2, 2).unwrap();
    cache.put(2, 3).unwrap(); // a dirty key takes no more room
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Should an assertion fail, the writer still ends.
        let _open = GateOpener(&db);
        s.spawn(|| {
            cache.put(3, 3).unwrap();
            returned.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !returned.load(Ordering::SeqCst),
            "the writer waits for room"
        );
        db.open_gate();
    });
    assert!(returned.load(Ordering::SeqCst));
    cache.flush().unwrap();
    assert_eq!(
        (db.value(1), db.value(2), db.value(3)),
        (Some(1), Some(3), Some(3))
    );
}

#[test]
fn a_flush_finishes_while_writers_wait_for_the_room_it_frees() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let cache = Cache::builder()
        .max_capacity(100)
        .hasher(std::hash::BuildHasherDefault::<common::KeyMod1024>::default())
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .queue_capacity(1)
                .backpressure(Backpressure::Block)
                .retries(0, Duration::ZERO)
                .max_delay(Duration::ZERO),
        )
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    wait_until("the first write given up", || {
        cache.write_stats().failed == 1
    });
    // Key 1's unreported failure holds the queue's one slot. Two writers
    // wait for room, one of them on key 1's lock stripe (1025 = 1 + 1024).
    let writers: Vec<_> = [2, 1025]
        .into_iter()
        .map(|k| {
            let cache = cache.clone();
            let writer = std::thread::spawn(move || cache.put(k, k));
            std::thread::sleep(Duration::from_millis(20));
            writer
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // The report frees the slot, another writer may fill it and fail, and
    // the flush must still finish: it drops key 1's cached copy under key
    // 1's stripe, which no writer may hold while it waits.
    let (done, flushed) = std::sync::mpsc::channel();
    let flusher = cache.clone();
    std::thread::spawn(move || done.send(flusher.flush().map_err(|e| e.failed.len())));
    let report = flushed
        .recv_timeout(Duration::from_secs(20))
        .expect("the flush finished");
    assert_eq!(report, Err(1), "key 1's failure, reported once");
    // Each further report frees room for the next writer.
    let mut reported = 1;
    for _ in 0..20_000 {
        if writers.iter().all(|w| w.is_finished()) && reported >= 3 {
            break;
        }
        if let Err(e) = cache.flush() {
            reported += e.failed.len();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        writers.iter().all(|w| w.is_finished()),
        "the writers got room"
    );
    for writer in writers {
        assert_eq!(writer.join().unwrap(), Ok(()));
    }
    assert_eq!(reported, 3);
    assert_eq!(cache.write_stats().dirty, 0);
}

#[test]
fn a_full_queue_fails_writers_when_configured_and_changes_nothing() {
    let db = Db::new();
    db.close_gate();
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .queue_capacity(2)
        .backpressure(Backpressure::Fail);
    let cache = write_back(&db, settings, 100);
    cache.put(1, 1).unwrap();
    cache.put(2, 2).unwrap();
    assert_eq!(cache.put(3, 3), Err(WriteError::QueueFull));
    assert_eq!(cache.delete(&3), Err(WriteError::QueueFull));
    assert_eq!(cache.peek(&3), None);
    assert_eq!(cache.put(1, 5), Ok(()), "a dirty key still takes writes");
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!(cache.put(3, 3), Ok(()));
    cache.flush().unwrap();
    assert_eq!((db.value(1), db.value(3)), (Some(5), Some(3)));
}

#[test]
fn a_write_back_batch_queues_each_keys_last_write_in_its_place() {
    let db = Db::new();
    db.data.lock().unwrap().insert(3, 30);
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::MAX), 100);
    cache.put(9, 90).unwrap();
    let batch = [
        Op::Put(1, 10),
        Op::Put(2, 20),
        Op::Delete(3),
        Op::Put(1, 11),
        Op::Put(9, 91),
    ];
    cache.write_all(batch).unwrap();
    assert_eq!(
        (cache.peek(&1), cache.peek(&2), cache.peek(&9)),
        (Some(11), Some(20), Some(91))
    );
    assert_eq!(cache.get(&3), Ok(None), "the queued delete");
    let stats = cache.write_stats();
    assert_eq!((stats.accepted, stats.coalesced, stats.dirty), (5, 1, 4));
    assert_eq!(db.write_calls.load(Ordering::SeqCst), 0, "nothing due yet");
    cache.write_all(Vec::new()).unwrap();
    assert_eq!(
        cache.write_stats().accepted,
        5,
        "an empty batch queues nothing"
    );
    cache.flush().unwrap();
    assert_eq!(
        db.log(),
        vec![
            Op::Put(9, 91),
            Op::Put(2, 20),
            Op::Delete(3),
            Op::Put(1, 11)
        ],
        "key 9 keeps its place in the queue; the batch follows in its order"
    );
}

#[test]
fn a_write_back_batch_is_queued_whole_or_not_at_all() {
    let (db, cache) = behind_a_closed_gate(3, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    // Key 1 is in flight: one key dirty, room for two more.
    let full = cache.put_all([(2, 2), (3, 3), (4, 4)]);
    assert_eq!(
        full,
        Err(WriteError::QueueFull),
        "three new keys, room for two"
    );
    assert_eq!(
        (cache.peek(&2), cache.peek(&3), cache.peek(&4)),
        (None, None, None)
    );
    assert_eq!(
        cache.write_stats().accepted,
        1,
        "none of the batch was queued"
    );
    assert_eq!(
        cache.put_all([(4, 4), (5, 5), (6, 6), (7, 7)]),
        Err(WriteError::BatchTooLarge {
            keys: 4,
            queue_capacity: 3
        }),
        "more keys than the queue holds"
    );
    // Key 1 behind its own write in flight takes no room.
    cache
        .write_all([Op::Put(1, 11), Op::Put(2, 2), Op::Delete(3)])
        .unwrap();
    assert_eq!(
        cache.put_all([(2, 22), (3, 33)]),
        Ok(()),
        "all dirty: coalesced"
    );
    assert_eq!(cache.put(4, 4), Err(WriteError::QueueFull));
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!(
        (db.value(1), db.value(2), db.value(3), db.value(4)),
        (Some(11), Some(22), Some(33), None)
    );
    cache.close().unwrap();
    assert_eq!(cache.put_all([(5, 5)]), Err(WriteError::Closed));
    assert_eq!(cache.write_all([]), Err(WriteError::Closed), "even empty");
    assert_eq!(cache.peek(&5), None);
}

/// A batch takes the room its writes would take one by one: against a store
/// that is down, a key's older unreported failures hold room of their own,
/// and a batch with a new key, or a key behind its failed write once those
/// failures fill the queue, is refused as a single write would be.
#[test]
fn a_write_back_batch_takes_the_room_its_writes_would_one_by_one() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .queue_capacity(2)
        .backpressure(Backpressure::Fail)
        .retries(0, Duration::ZERO);
    let cache = write_back(&db, settings, 100);
    cache.put(1, 1).unwrap();
    wait_until("key 1 given up", || cache.write_stats().failed == 1);
    // Behind its own failure, with no older failure held: it fits.
    cache.put_all([(1, 2)]).unwrap();
    wait_until("key 1 given up again", || cache.write_stats().failed == 2);
    assert_eq!(
        cache.write_stats().queued,
        2,
        "key 1, and its older failure"
    );
    assert_eq!(cache.put(3, 3), Err(WriteError::QueueFull));
    assert_eq!(
        cache.put_all([(1, 3), (3, 3)]),
        Err(WriteError::QueueFull),
        "the new key finds no room, so neither write is taken"
    );
    assert_eq!(cache.get(&1), Ok(Some(2)));
    // One older failure: key 1 still gets in behind its own.
    cache.put_all([(1, 3)]).unwrap();
    wait_until("key 1 given up a third time", || {
        cache.write_stats().failed == 3
    });
    // Two older failures fill the queue: not even key 1 gets in now.
    assert_eq!(cache.put(1, 4), Err(WriteError::QueueFull));
    assert_eq!(cache.put_all([(1, 4)]), Err(WriteError::QueueFull));
    assert_eq!(cache.get(&1), Ok(Some(3)));
    *db.faults.lock().unwrap() = Faults::default();
    assert_eq!(cache.flush().unwrap_err().failed.len(), 3);
    cache.put_all([(1, 5), (3, 5)]).unwrap();
    cache.flush().unwrap();
    assert_eq!((db.value(1), db.value(3)), (Some(5), Some(5)));
}

/// Replacing waiting writes takes no room, even with the queue over its
/// capacity (keys' older failures held beside their newer writes).
#[test]
fn a_write_back_batch_of_waiting_keys_always_fits() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    // A batch goes out once two keys wait.
    let settings = WriteBack::default()
        .max_delay(Duration::MAX)
        .batch(2)
        .queue_capacity(3)
        .backpressure(Backpressure::Fail)
        .retries(0, Duration::ZERO);
    let cache = write_back(&db, settings, 100);
    cache.put(1, 1).unwrap();
    cache.put(2, 2).unwrap();
    wait_until("both given up", || cache.write_stats().failed == 2);
    // Each behind its failure, which is held apart once this one fails too.
    cache.put(1, 3).unwrap();
    cache.put(2, 4).unwrap();
    wait_until("both given up again", || cache.write_stats().failed == 4);
    cache.put(1, 5).unwrap(); // waits: one key is not a batch
    assert_eq!(cache.write_stats().queued, 4, "over the capacity of 3");
    assert_eq!(cache.put_all([(1, 6)]), Ok(()), "a waiting write replaced");
    assert_eq!(cache.put_all([(1, 7), (3, 3)]), Err(WriteError::QueueFull));
    assert_eq!(cache.get(&1), Ok(Some(6)));
    *db.faults.lock().unwrap() = Faults::default();
    let report = cache.flush().unwrap_err();
    let failed: Vec<_> = report.failed.iter().map(|f| f.op.clone()).collect();
    assert_eq!(failed, vec![Op::Put(2, 2), Op::Put(2, 4)], "key 1's stored");
    assert_eq!((db.value(1), db.value(3)), (Some(6), None));
}

#[test]
fn a_write_back_batch_waits_for_room_for_all_its_keys() {
    let (db, cache) = behind_a_closed_gate(3, Backpressure::Block);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    cache.put(2, 2).unwrap();
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Should an assertion fail, the writer still ends.
        let _open = GateOpener(&db);
        let batch = s.spawn(|| {
            let queued = cache.put_all([(3, 3), (4, 4)]);
            returned.store(true, Ordering::SeqCst);
            queued
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !returned.load(Ordering::SeqCst),
            "room for one key is not room for the batch"
        );
        assert_eq!((cache.peek(&3), cache.peek(&4)), (None, None));
        // A single key fits meanwhile; the batch then waits for more room.
        cache.put(5, 5).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!returned.load(Ordering::SeqCst));
        assert_eq!((cache.peek(&3), cache.peek(&4)), (None, None));
        db.open_gate();
        assert_eq!(batch.join().unwrap(), Ok(()));
    });
    cache.flush().unwrap();
    assert_eq!(
        (db.value(3), db.value(4), db.value(5)),
        (Some(3), Some(4), Some(5))
    );
}

/// A single writer that fits goes in while a batch waits for more room
/// than there is, whatever the store waits on: here the store's write
/// waits for a gate that the writer opens once its `put` returns. (Room kept
/// for the waiting batch would hold the writer back, and the store, the
/// batch and the writer would wait on each other for good.)
#[test]
fn a_writer_that_fits_goes_in_while_a_batch_waits() {
    let (db, cache) = behind_a_closed_gate(2, Backpressure::Block);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    let batch = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.put_all([(3, 3), (4, 4)]))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!batch.is_finished(), "the batch waits for room");
    let (done, ended) = std::sync::mpsc::channel();
    {
        let (cache, db) = (cache.clone(), db.clone());
        std::thread::spawn(move || {
            let _open = GateOpener(&db);
            let _ = done.send(cache.put(5, 5));
        });
    }
    assert_eq!(
        ended.recv_timeout(Duration::from_secs(20)),
        Ok(Ok(())),
        "the single write went in"
    );
    assert_eq!(batch.join().unwrap(), Ok(()));
    cache.flush().unwrap();
    let stored: Vec<_> = [1, 3, 4, 5].iter().map(|&k| db.value(k)).collect();
    assert_eq!(stored, [Some(1), Some(3), Some(4), Some(5)]);
}

/// Computes whose `f` writes another key, and batches of two keys (one on
/// a compute's stripe), on a queue of three: every call ends. Kept since
/// room kept for a waiting batch made this hang within seconds (a batch
/// with its room waiting for a compute's stripe, the write inside that
/// compute held back for the batch).
#[test]
fn computes_writing_inside_f_and_batches_all_end_on_a_small_queue() {
    let db = Db::new();
    let cache: Cache<
        u64,
        u64,
        std::hash::BuildHasherDefault<common::KeyMod1024>,
        larder::WriteBehind<u64, u64, Shared>,
    > = Cache::builder()
        .max_capacity(100)
        .hasher(Default::default())
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .batch(2)
                .queue_capacity(3),
        )
        .build()
        .unwrap();
    const CALLS: u64 = 2_000;
    let (done, ended) = std::sync::mpsc::channel();
    for t in 0..4u64 {
        let (cache, done) = (cache.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..CALLS {
                if t < 2 {
                    let out = cache.compute(i % 4, |_| {
                        cache.put(2_000 + i % 8, i).unwrap();
                        Compute::Put(i)
                    });
                    assert!(out.is_ok());
                } else {
                    // Key 1,024 + k shares key k's stripe.
                    cache
                        .put_all([(1_024 + i % 4, i), (3_000 + i % 16, i)])
                        .unwrap();
                }
            }
            done.send(t).unwrap();
        });
    }
    drop(done);
    for _ in 0..4 {
        let thread = ended.recv_timeout(Duration::from_secs(60));
        assert!(thread.is_ok(), "a writer stalled: {thread:?}");
    }
    cache.flush().unwrap();
    assert_eq!(cache.write_stats().dirty, 0);
    // Each key's last write reached the store.
    let keys = (0..4)
        .chain(2_000..2_008)
        .chain(1_024..1_028)
        .chain(3_000..3_016);
    for k in keys {
        let stored = db.value(k);
        assert!(stored.is_some(), "key {k} never stored");
        assert_eq!(cache.get(&k), Ok(stored), "key {k}");
    }
}

/// While set, key 2 of `ShyKey` refuses to be cloned.
static SHY: AtomicBool = AtomicBool::new(false);

/// A key whose `Clone` panics for key 2 while `SHY` is set.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ShyKey(u64);
impl Clone for ShyKey {
    fn clone(&self) -> Self {
        assert!(
            !(self.0 == 2 && SHY.load(Ordering::SeqCst)),
            "key 2 will not be cloned"
        );
        ShyKey(self.0)
    }
}

#[derive(Default)]
struct ShyKeyDb(Mutex<HashMap<u64, u64>>);
impl Store<ShyKey, u64> for ShyKeyDb {
    type Error = String;
    fn load(&self, k: &ShyKey) -> Result<Option<u64>, String> {
        Ok(self.0.lock().unwrap().get(&k.0).copied())
    }
    fn write(&self, op: &Op<ShyKey, u64>) -> Result<(), String> {
        let mut data = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(k.0, *v),
            Op::Delete(k) => data.remove(&k.0),
        };
        Ok(())
    }
}

#[test]
fn a_key_panicking_as_a_write_back_batch_is_queued_leaves_no_stale_copy() {
    let key = ShyKey;
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            ShyKeyDb::default(),
            WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    cache.put_all([(key(1), 1), (key(2), 2)]).unwrap();
    cache.flush().unwrap();
    // Key 2 is clean: queueing it again clones it, and that panics before
    // anything of the batch is queued.
    SHY.store(true, Ordering::SeqCst);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.put_all([(key(1), 10), (key(2), 20)])
    }));
    assert!(panicked.is_err());
    assert_eq!(
        cache.write_stats().accepted,
        2,
        "nothing of the batch queued"
    );
    assert_eq!(
        (cache.peek(&key(1)), cache.peek(&key(2))),
        (None, None),
        "the batch's cached copies go, whatever was queued"
    );
    SHY.store(false, Ordering::SeqCst);
    assert_eq!(
        (cache.get(&key(1)), cache.get(&key(2))),
        (Ok(Some(1)), Ok(Some(2)))
    );
    // Both dirty: queueing clones nothing, and the batch is queued; landing
    // it in the cache clones key 2 and panics. No cached copy may hide the
    // queued writes.
    cache.put_all([(key(1), 3), (key(2), 4)]).unwrap();
    SHY.store(true, Ordering::SeqCst);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cache.put_all([(key(1), 10), (key(2), 20)])
    }));
    assert!(panicked.is_err());
    assert_eq!(cache.write_stats().accepted, 6, "the batch was queued");
    SHY.store(false, Ordering::SeqCst);
    assert_eq!(
        (cache.get(&key(1)), cache.get(&key(2))),
        (Ok(Some(10)), Ok(Some(20)))
    );
    cache.close().unwrap();
    let stored = cache.store().0.lock().unwrap().clone();
    assert_eq!(stored, HashMap::from([(1, 10), (2, 20)]));
}

/// While armed, `MidBatchKey(2)` panics on its third hash by the write-back
/// queue's own hasher (foldhash; the cache here hashes with std's): the
/// queue hashes a key to find room, to copy it, then to file it, so the
/// panic comes as key 2 is filed, after key 1.
static MID_BATCH_ARMED: AtomicBool = AtomicBool::new(false);
static MID_BATCH_HASHES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, PartialEq, Eq)]
struct MidBatchKey(u64);
impl std::hash::Hash for MidBatchKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let by_queue = std::any::type_name::<H>().contains("foldhash");
        if self.0 == 2 && by_queue && MID_BATCH_ARMED.load(Ordering::SeqCst) {
            let n = MID_BATCH_HASHES.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(n != 3, "key 2 fails as it is filed");
        }
        state.write_u64(self.0);
    }
}

type MidBatchCache = Cache<
    MidBatchKey,
    Watched,
    std::hash::RandomState,
    larder::WriteBehind<MidBatchKey, Watched, MidBatchDb>,
>;

/// The cache whose queue lock `Watched(111)`'s drop checks.
static MID_BATCH_CACHE: std::sync::OnceLock<Arc<MidBatchCache>> = std::sync::OnceLock::new();
/// Drops of `Watched(111)` that found the queue lock free, and held.
static LOCK_FREE: AtomicU64 = AtomicU64::new(0);
static LOCK_HELD: AtomicU64 = AtomicU64::new(0);

/// A value whose drop (of 111) checks, from another thread, that the queue
/// lock is free: a value's `Drop` may call into the cache.
#[derive(Debug, Clone, PartialEq)]
struct Watched(u64);
impl Drop for Watched {
    fn drop(&mut self) {
        let Some(cache) = MID_BATCH_CACHE.get().filter(|_| self.0 == 111) else {
            return;
        };
        let cache = cache.clone();
        let (done, stats) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(cache.write_stats()));
        match stats.recv_timeout(Duration::from_secs(2)) {
            Ok(_) => LOCK_FREE.fetch_add(1, Ordering::SeqCst),
            Err(_) => LOCK_HELD.fetch_add(1, Ordering::SeqCst),
        };
    }
}

#[derive(Default)]
struct MidBatchDb(Mutex<HashMap<u64, u64>>);
impl Store<MidBatchKey, Watched> for MidBatchDb {
    type Error = String;
    fn load(&self, k: &MidBatchKey) -> Result<Option<Watched>, String> {
        Ok(self.0.lock().unwrap().get(&k.0).map(|&v| Watched(v)))
    }
    fn write(&self, op: &Op<MidBatchKey, Watched>) -> Result<(), String> {
        let mut data = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(k.0, v.0),
            Op::Delete(k) => data.remove(&k.0),
        };
        Ok(())
    }
}

/// A key's `Hash` panicking as a batch is filed leaves the writes filed
/// before it queued, drops the batch's cached copies, and lets go of what
/// those writes replaced only once the queue lock is released.
#[test]
fn a_key_panicking_midway_through_a_write_back_batch_keeps_what_was_queued() {
    let cache: MidBatchCache = Cache::builder()
        .max_capacity(100)
        .hasher(std::hash::RandomState::new())
        .write_back(
            MidBatchDb::default(),
            WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    let cache = MID_BATCH_CACHE.get_or_init(|| Arc::new(cache));
    cache.put(MidBatchKey(1), Watched(111)).unwrap();
    let accepted = cache.write_stats().accepted;
    MID_BATCH_ARMED.store(true, Ordering::SeqCst);
    let batch = [(MidBatchKey(1), Watched(5)), (MidBatchKey(2), Watched(6))];
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.put_all(batch)));
    MID_BATCH_ARMED.store(false, Ordering::SeqCst);
    assert!(panicked.is_err());
    assert_eq!(
        cache.write_stats().accepted,
        accepted + 1,
        "key 1 was filed before key 2 panicked"
    );
    assert_eq!(
        (
            LOCK_FREE.load(Ordering::SeqCst),
            LOCK_HELD.load(Ordering::SeqCst)
        ),
        (2, 0),
        "the queued write key 1 replaced, and its cached copy, went once the queue lock was free"
    );
    assert_eq!(
        cache.peek(&MidBatchKey(1)),
        None,
        "no cached copy hides the queue"
    );
    assert_eq!(cache.get(&MidBatchKey(1)), Ok(Some(Watched(5))));
    assert_eq!(cache.get(&MidBatchKey(2)), Ok(None), "key 2 was not queued");
    cache.close().unwrap();
    let stored = cache.store().0.lock().unwrap().clone();
    assert_eq!(stored, HashMap::from([(1, 5)]));
}

/// Write-back batches over overlapping keys in opposite orders, single puts
/// and deletes, against a queue small enough that writers wait for room:
/// no writer waits for another in a cycle, and once flushed each key reads
/// as the store holds it.
#[test]
fn concurrent_write_back_batches_never_deadlock_and_leave_cache_and_store_agreeing() {
    let db = Db::with_faults(Faults {
        slow: 30,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .queue_capacity(12)
        .batch(4)
        .max_delay(Duration::ZERO);
    let cache = Arc::new(write_back(&db, settings, 1_000));
    let writer = cache.clone();
    race_writers(4, move |t| {
        for i in 0..300u64 {
            let value = t * 1_000_000 + i;
            let first = (i * 3 + t) % 16;
            let mut batch: Vec<Op<u64, u64>> = (first..first + 8)
                .map(|k| match (k + i) % 5 {
                    0 => Op::Delete(k % 16),
                    _ => Op::Put(k % 16, value),
                })
                .collect();
            if t % 2 == 1 {
                batch.reverse();
            }
            match t {
                3 => writer.put(i % 16, value).unwrap(),
                _ => writer.write_all(batch).unwrap(),
            }
        }
    });
    cache.flush().unwrap();
    for key in 0..16 {
        assert_eq!(cache.get(&key), Ok(db.value(key)), "key {key}");
    }
    assert_eq!(cache.write_stats().dirty, 0);
}

/// Counting up keys from four threads at once, against a slow store and a
/// queue too small for every writer at once, loses no update: each compute
/// holds its key's stripe from its read (the cache, the queue or the store)
/// to its write, and waits for room before it reads.
#[test]
fn write_back_compute_counts_without_losing_updates() {
    let db = Db::with_faults(Faults {
        slow: 30,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .queue_capacity(3)
        .batch(2)
        .max_delay(Duration::ZERO);
    let cache = Arc::new(write_back(&db, settings, 1_000));
    let writer = cache.clone();
    race_writers(4, move |t| {
        for i in 0..150 {
            if i % 10 == t {
                // Now and then the cached copies go: the next computes read
                // the queue or the store.
                writer.invalidate_entries_if(|_, _| true);
            }
            let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
            assert!(writer.compute(i % 5, count).is_ok());
            if i % 7 == 0 {
                writer.put(100 + t, i).unwrap();
            }
        }
    });
    cache.flush().unwrap();
    for key in 0..5 {
        assert_eq!(db.value(key), Some(120), "key {key}");
        assert_eq!(cache.get(&key), Ok(Some(120)));
    }
    assert_eq!(cache.write_stats().dirty, 0);
}

#[test]
fn write_back_compute_reads_the_cache_then_the_queue_then_the_store() {
    let db = Db::new();
    db.data.lock().unwrap().extend([(1, 10), (3, 30), (4, 40)]);
    let settings = WriteBack::default().max_delay(Duration::MAX);
    let cache = write_back(&db, settings, 100);
    let accepted = || cache.write_stats().accepted;
    // A miss reads the store, and a keep queues nothing nor caches.
    assert_eq!(
        cache.compute(1, |_| Compute::Keep),
        Ok(Computed::Unchanged(10))
    );
    assert_eq!((cache.peek(&1), accepted()), (None, 0));
    assert_eq!(cache.compute(2, |_| Compute::Keep), Ok(Computed::Absent));
    assert_eq!(cache.compute(2, |_| Compute::Remove), Ok(Computed::Absent));
    assert_eq!(accepted(), 0, "nothing to remove: nothing queued");
    assert_eq!(db.loads.load(Ordering::SeqCst), 3);
    // A queued write answers before the store, the cached copy gone.
    cache.put(2, 20).unwrap();
    cache.invalidate_entries_if(|k, _| *k == 2);
    assert_eq!(
        cache.compute(2, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(21))
    );
    assert_eq!(cache.peek(&2), Some(21));
    // A queued delete reads as no value, though the store has one.
    cache.delete(&3).unwrap();
    assert_eq!(
        cache.compute(3, |v| {
            assert_eq!(v, None);
            Compute::Keep
        }),
        Ok(Computed::Absent)
    );
    assert_eq!(db.loads.load(Ordering::SeqCst), 3, "the queue answered");
    // A cached copy answers first; the write is queued, not sent.
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(11))
    );
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(12))
    );
    assert_eq!(db.loads.load(Ordering::SeqCst), 4);
    assert_eq!(
        cache.compute(5, |_| Compute::PutWith(50, EntryOptions::new().tags(["t"]))),
        Ok(Computed::Inserted(50))
    );
    cache.invalidate_tag("t");
    assert_eq!((cache.peek(&5), cache.get(&5)), (None, Ok(Some(50))));
    assert_eq!(
        cache.compute(4, |_| Compute::Remove),
        Ok(Computed::Removed(40))
    );
    assert_eq!((cache.peek(&4), cache.get(&4)), (None, Ok(None)));
    assert_eq!(db.value(4), Some(40), "not sent yet");
    let stats = cache.write_stats();
    assert_eq!(
        (stats.accepted, stats.coalesced),
        (7, 2),
        "key 2 twice, key 1 twice"
    );
    cache.flush().unwrap();
    let stored: Vec<_> = (1..=5).map(|k| db.value(k)).collect();
    assert_eq!(stored, [Some(12), Some(21), None, None, Some(50)]);
}

/// A compute holds a unit of queue room from before its read until its
/// write is queued, and gives it back when it writes nothing, fails or
/// panics. With `Fail`, a compute of a dirty key holds none: it gets in
/// whenever a `put` of the key would.
#[test]
fn write_back_compute_holds_room_from_its_read_to_its_write() {
    let (db, cache) = behind_a_closed_gate(2, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    let (reading_tx, reading) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let computing = s.spawn(|| {
            cache.compute(5, move |v| {
                reading_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                Compute::Put(v.map_or(50, |v| v + 1))
            })
        });
        // Dropped should an assertion fail, so that the compute ends.
        let go = go;
        recv_within("the compute to read", &reading);
        // Key 1 and the compute's room fill the queue.
        assert_eq!(cache.put(3, 3), Err(WriteError::QueueFull));
        let ran = AtomicBool::new(false);
        assert_eq!(
            cache.compute(6, |_| {
                ran.store(true, Ordering::SeqCst);
                Compute::Keep
            }),
            Err(WriteError::QueueFull)
        );
        assert!(!ran.load(Ordering::SeqCst), "refused before its read");
        go.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Ok(Computed::Inserted(50)));
    });
    // The queue is full (key 1 in flight, key 5 waiting), yet computes of
    // those keys get in, as puts of them would: 5 coalesces, 1 waits
    // behind its write in flight.
    assert_eq!(cache.put(3, 3), Err(WriteError::QueueFull));
    assert_eq!(
        cache.compute(5, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(51))
    );
    assert_eq!(
        cache.compute(1, |_| Compute::Keep),
        Ok(Computed::Unchanged(1))
    );
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(2))
    );
    assert_eq!(cache.put(3, 3), Err(WriteError::QueueFull), "still full");
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!((db.value(5), db.value(1)), (Some(51), Some(2)));
    db.close_gate();
    // Room given back: had any of these kept its unit, the two puts after
    // them would not both fit.
    for key in 10..14 {
        assert_eq!(cache.compute(key, |_| Compute::Keep), Ok(Computed::Absent));
        assert_eq!(
            cache.compute(key, |_| Compute::Remove),
            Ok(Computed::Absent)
        );
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            cache.compute(key, |_| -> Compute<u64> { panic!("the closure fails") })
        }));
        assert!(panicked.is_err());
        // The closure writing its own key would wait for itself: it panics.
        let reentered = catch_unwind(AssertUnwindSafe(|| {
            cache.compute(key, |_| {
                let _ = cache.put(key, 1);
                Compute::Put(2)
            })
        }));
        assert!(reentered.is_err());
    }
    assert_eq!(cache.put(20, 20), Ok(()));
    assert_eq!(cache.put(21, 21), Ok(()));
    assert_eq!(
        (10..14).map(|k| cache.peek(&k)).collect::<Vec<_>>(),
        [None; 4]
    );
    db.open_gate();
    cache.close().unwrap();
    let ran = AtomicBool::new(false);
    assert_eq!(
        cache.compute(1, |_| {
            ran.store(true, Ordering::SeqCst);
            Compute::Keep
        }),
        Err(WriteError::Closed)
    );
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(
        (db.value(20), db.value(21), db.value(10)),
        (Some(20), Some(21), None)
    );
}

/// With `Fail`, a compute of a dirty key holds no room. Should the flusher
/// store the key's writes while `f` runs (its slot goes), and other keys
/// fill the queue meanwhile, the write `f` decided on is refused after it,
/// and nothing changes.
#[test]
fn a_write_back_compute_of_a_dirty_key_refused_after_f_changes_nothing() {
    let (db, cache) = behind_a_closed_gate(2, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    // Key 2 waits behind the batch in flight: the queue is full.
    cache.put(2, 2).unwrap();
    assert_eq!(cache.put(5, 5), Err(WriteError::QueueFull));
    std::thread::scope(|s| {
        // Should an assertion fail, the flusher still ends.
        let _open = GateOpener(&db);
        let (computing, go) = compute_held(s, &cache, 2, |v| Compute::Put(v.unwrap() + 10));
        db.open_gate();
        wait_until("keys 1 and 2 stored", || cache.write_stats().dirty == 0);
        db.close_gate();
        cache.put(3, 3).unwrap();
        wait_until("key 3 in flight", || db.arrived.load(Ordering::SeqCst) == 3);
        cache.put(4, 4).unwrap();
        go.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Err(WriteError::QueueFull));
    });
    assert_eq!(cache.peek(&2), Some(2), "the cached copy as it was");
    assert_eq!(cache.write_stats().accepted, 4, "keys 1 to 4 only");
    cache.flush().unwrap();
    let stored: Vec<_> = (1..=4).map(|k| db.value(k)).collect();
    assert_eq!(stored, [Some(1), Some(2), Some(3), Some(4)]);
}

/// With `Fail` and a unit free, a compute of a dirty key holds it, as any
/// compute does: whatever the queue does while `f` runs, its write gets in.
#[test]
fn a_write_back_compute_of_a_dirty_key_with_room_free_holds_a_unit() {
    let (db, cache) = behind_a_closed_gate(3, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    std::thread::scope(|s| {
        let _open = GateOpener(&db);
        let (computing, go) = compute_held(s, &cache, 1, |v| Compute::Put(v.unwrap() + 10));
        // Key 1 stored: its slot goes, and its write will need room.
        db.open_gate();
        wait_until("key 1 stored", || cache.write_stats().dirty == 0);
        db.close_gate();
        cache.put(3, 3).unwrap();
        wait_until("key 3 in flight", || db.arrived.load(Ordering::SeqCst) == 2);
        cache.put(4, 4).unwrap();
        assert_eq!(
            cache.put(5, 5),
            Err(WriteError::QueueFull),
            "keys 3 and 4, and the compute's unit"
        );
        go.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Ok(Computed::Replaced(11)));
    });
    cache.flush().unwrap();
    let stored: Vec<_> = (1..=5).map(|k| db.value(k)).collect();
    assert_eq!(stored, [Some(11), None, Some(3), Some(4), None]);
}

/// A compute that went on without room (`Fail`, the queue full) and whose
/// write needs room by the time it is filed takes it from the queue, as a
/// `put` would: the queue stays within its capacity.
#[test]
fn a_write_back_compute_going_on_without_room_takes_the_room_its_write_needs() {
    let (db, cache) = behind_a_closed_gate(2, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    wait_until("key 1 in flight", || db.arrived.load(Ordering::SeqCst) == 1);
    cache.put(2, 2).unwrap();
    std::thread::scope(|s| {
        let _open = GateOpener(&db);
        let (computing, go) = compute_held(s, &cache, 2, |v| Compute::Put(v.unwrap() + 10));
        db.open_gate();
        wait_until("keys 1 and 2 stored", || cache.write_stats().dirty == 0);
        db.close_gate();
        go.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Ok(Computed::Replaced(12)));
        // Before the gate opens again (as the scope ends): key 2 stays in
        // flight.
        wait_until("key 2 in flight", || db.arrived.load(Ordering::SeqCst) == 3);
        cache.put(3, 3).unwrap();
        assert_eq!(
            cache.put(4, 4),
            Err(WriteError::QueueFull),
            "keys 2 and 3 fill the queue"
        );
    });
    cache.flush().unwrap();
    let stored: Vec<_> = (1..=4).map(|k| db.value(k)).collect();
    assert_eq!(stored, [Some(1), Some(12), Some(3), None]);
}

/// With `Fail`, a compute of a key behind unreported failures that fill
/// the queue is refused before its read, as a `put` of the key would be.
#[test]
fn a_write_back_compute_behind_failures_filling_the_queue_is_refused_before_f() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .queue_capacity(1)
        .backpressure(Backpressure::Fail)
        .retries(0, Duration::ZERO);
    let cache = write_back(&db, settings, 100);
    cache.put(1, 1).unwrap();
    wait_until("the first write given up", || {
        cache.write_stats().failed == 1
    });
    // Behind its failure, the slot's: in, as no failure is held by no slot.
    cache.put(1, 2).unwrap();
    wait_until("the second given up", || cache.write_stats().failed == 2);
    // The first failure is held by no slot now, and fills the queue.
    assert_eq!(cache.put(1, 3), Err(WriteError::QueueFull));
    let ran = AtomicBool::new(false);
    assert_eq!(
        cache.compute(1, |_| {
            ran.store(true, Ordering::SeqCst);
            Compute::Keep
        }),
        Err(WriteError::QueueFull)
    );
    assert!(!ran.load(Ordering::SeqCst), "refused before its read");
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed.len(), 2);
    db.faults.lock().unwrap().fail = 0;
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.map_or(30, |v| v + 1))),
        Ok(Computed::Inserted(30)),
        "room again once reported; the failed writes never stored"
    );
    cache.flush().unwrap();
    assert_eq!(db.value(1), Some(30));
}

/// With `Block`, a compute waits for room before its read, holding no
/// stripe: a writer of another key of its stripe is not held up.
#[test]
fn a_write_back_compute_waits_for_room_holding_no_stripe() {
    let (db, cache) = behind_a_closed_gate(1, Backpressure::Block);
    cache.put(1, 1).unwrap();
    let (returned, written) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        // Should an assertion fail, the compute and the writer still end.
        let _open = GateOpener(&db);
        s.spawn(|| {
            // Key 1,025 shares key 1's stripe.
            let out = cache.compute(1025, |v| Compute::Put(v.map_or(20, |v| v + 1)));
            assert_eq!(out, Ok(Computed::Inserted(20)));
            returned.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!returned.load(Ordering::SeqCst), "it waits for room");
        // Key 1 coalesces, though the compute waits on the same queue.
        s.spawn(|| {
            cache.put(1, 2).unwrap();
            written.store(true, Ordering::SeqCst);
        });
        wait_until("the write of key 1", || written.load(Ordering::SeqCst));
        assert!(!returned.load(Ordering::SeqCst), "still waiting for room");
        db.open_gate();
    });
    assert!(returned.load(Ordering::SeqCst));
    cache.flush().unwrap();
    assert_eq!((db.value(1), db.value(1025)), (Some(2), Some(20)));
}

/// Runs `compute(key, f)` on a thread of its own, `f` held until `go`:
/// returns once `f` has read, with the thread and the sender that lets
/// `f` go on.
#[allow(clippy::type_complexity)]
fn compute_held<'s, 'c: 's>(
    s: &'s std::thread::Scope<'s, 'c>,
    cache: &'c WriteBackCache,
    key: u64,
    f: impl FnOnce(Option<&u64>) -> Compute<u64> + Send + 'c,
) -> (
    std::thread::ScopedJoinHandle<'s, Result<Computed<u64>, WriteError<String>>>,
    std::sync::mpsc::Sender<()>,
) {
    let (reading_tx, reading) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let computing = s.spawn(move || {
        cache.compute(key, move |v| {
            reading_tx.send(()).unwrap();
            // An assertion failing meanwhile drops the sender: go on.
            let _ = go_rx.recv();
            f(v)
        })
    });
    recv_within("the compute to read", &reading);
    (computing, go)
}

/// A compute that ends up taking no new room (it keeps, or its write
/// coalesces with a waiting one) gives its unit back and wakes the writers
/// waiting for it at once, not when the flusher next makes progress.
#[test]
fn a_write_back_compute_taking_no_room_wakes_blocked_writers() {
    let keep = |_: Option<&u64>| Compute::Keep;
    let coalesce = |v: Option<&u64>| Compute::Put(v.unwrap() + 1);
    for (key, f) in [(5, keep as fn(Option<&u64>) -> Compute<u64>), (1, coalesce)] {
        let (db, cache) = behind_a_closed_gate(3, Backpressure::Block);
        cache.put(10, 10).unwrap();
        wait_until("key 10 in flight", || {
            db.arrived.load(Ordering::SeqCst) == 1
        });
        cache.put(1, 1).unwrap();
        let written = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Should an assertion fail, the writers still end.
            let _open = GateOpener(&db);
            // Keys 10 and 1, and the compute's unit: the queue is full.
            let (computing, go) = compute_held(s, &cache, key, f);
            s.spawn(|| {
                cache.put(2, 2).unwrap();
                written.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!written.load(Ordering::SeqCst), "the writer waits for room");
            go.send(()).unwrap();
            assert!(computing.join().unwrap().is_ok());
            // The store is still stuck on key 10: only the compute's unit,
            // given back, lets the writer in.
            wait_until("the writer woken", || written.load(Ordering::SeqCst));
            assert_eq!(db.arrived.load(Ordering::SeqCst), 1, "still stuck");
        });
        cache.flush().unwrap();
        let want = if key == 1 { Some(2) } else { Some(1) };
        assert_eq!(
            (db.value(1), db.value(2), db.value(5)),
            (want, Some(2), None)
        );
    }
}

/// A compute called from `f` of a key of its stripe panics, instead of
/// waiting for room its own caller holds; a queue closed while `f` runs
/// refuses the write, and nothing is queued; a remove of a cached key
/// drops the cached copy.
#[test]
fn a_write_back_compute_refuses_re_entry_and_a_closed_queue() {
    for backpressure in [Backpressure::Block, Backpressure::Fail] {
        // The outer compute's unit fills a queue of one.
        let (db, cache) = behind_a_closed_gate(1, backpressure);
        let nested = catch_unwind(AssertUnwindSafe(|| {
            cache.compute(1, |_| {
                let _ = cache.compute(1, |_| Compute::Put(5));
                Compute::Put(1)
            })
        }));
        assert!(
            nested.is_err(),
            "{backpressure:?}: the nested compute panics"
        );
        assert_eq!(cache.write_stats().accepted, 0);
        db.open_gate();
        cache.put(6, 60).unwrap();
        cache.flush().unwrap(); // room for the compute's unit
        assert_eq!(
            cache.compute(6, |_| Compute::Remove),
            Ok(Computed::Removed(60))
        );
        assert_eq!((cache.peek(&6), cache.get(&6)), (None, Ok(None)));
    }
    let db = Db::new();
    let cache = write_back(&db, WriteBack::default(), 100);
    std::thread::scope(|s| {
        let (computing, go) = compute_held(s, &cache, 5, |_| Compute::Put(50));
        cache.close().unwrap();
        go.send(()).unwrap();
        assert_eq!(computing.join().unwrap(), Err(WriteError::Closed));
    });
    assert_eq!(
        (cache.peek(&5), cache.get(&5), db.value(5)),
        (None, Ok(None), None)
    );
    assert_eq!(cache.write_stats().accepted, 0);
}

/// A key whose `Hash` panics once armed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Jumpy(u64);

static JUMPY_ARMED: AtomicBool = AtomicBool::new(false);

impl std::hash::Hash for Jumpy {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        if self.0 == 7 && JUMPY_ARMED.load(Ordering::SeqCst) {
            panic!("a key's hash panics");
        }
        self.0.hash(h);
    }
}

#[derive(Default)]
struct JumpyDb(Mutex<HashMap<u64, u64>>);

impl Store<Jumpy, u64> for JumpyDb {
    type Error = String;
    fn load(&self, k: &Jumpy) -> Result<Option<u64>, String> {
        Ok(self.0.lock().unwrap().get(&k.0).copied())
    }
    fn write(&self, op: &Op<Jumpy, u64>) -> Result<(), String> {
        let mut db = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => db.insert(k.0, *v),
            Op::Delete(k) => db.remove(&k.0),
        };
        Ok(())
    }
}

/// A compute whose key's `Hash` panics as its write is queued queues
/// nothing, and gives its unit of room back to the writer waiting for it.
#[test]
fn a_write_back_compute_whose_key_panics_as_it_is_queued_gives_its_room_back() {
    let settings = WriteBack::default()
        .queue_capacity(1)
        .max_delay(Duration::ZERO);
    // Keys 7 and 1 on stripes of their own: the writer waits for room,
    // not for the compute's stripe.
    let cache = Cache::builder()
        .max_capacity(100)
        .hasher(common::FixedStripes::default())
        .write_back(JumpyDb::default(), settings)
        .build()
        .unwrap();
    let written = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (reading_tx, reading) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let computing = s.spawn(|| {
            catch_unwind(AssertUnwindSafe(|| {
                cache.compute(Jumpy(7), move |_| {
                    reading_tx.send(()).unwrap();
                    let _ = go_rx.recv();
                    JUMPY_ARMED.store(true, Ordering::SeqCst);
                    Compute::Put(1)
                })
            }))
        });
        recv_within("the compute to read", &reading);
        let writer = s.spawn(|| {
            cache.put(Jumpy(1), 1).unwrap();
            written.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!written.load(Ordering::SeqCst), "the writer waits for room");
        go.send(()).unwrap();
        assert!(
            computing.join().unwrap().is_err(),
            "the key's hash panicked"
        );
        JUMPY_ARMED.store(false, Ordering::SeqCst);
        wait_until("the writer woken", || written.load(Ordering::SeqCst));
        writer.join().unwrap();
    });
    assert_eq!(cache.write_stats().accepted, 1);
    cache.flush().unwrap();
    assert_eq!(
        cache.store().0.lock().unwrap().clone(),
        HashMap::from([(1, 1)])
    );
}

/// A store load that panics under a compute gives its room back.
#[test]
fn a_write_back_compute_whose_load_panics_gives_its_room_back() {
    let store = FirstLoadPanics::default();
    store.0 .1.store(true, Ordering::SeqCst);
    let settings = WriteBack::default()
        .queue_capacity(1)
        .backpressure(Backpressure::Fail)
        .max_delay(Duration::MAX);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(store, settings)
        .build()
        .unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.compute(1, |_| Compute::Put(1))));
    assert!(panicked.is_err());
    assert_eq!(cache.peek(&1), None);
    assert_eq!(
        cache.compute(1, |v| Compute::Put(v.unwrap() + 1)),
        Ok(Computed::Replaced(11))
    );
    assert_eq!(cache.write_stats().queued, 1);
}

#[test]
fn writes_that_exhaust_retries_are_reported_once_and_readable_until_then() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(2, Duration::from_millis(1));
    let cache = write_back(&db, settings, 1);
    cache.put(1, 10).unwrap();
    cache.put(2, 20).unwrap(); // evicts key 1 from the one-entry cache
    wait_until("both given up", || cache.write_stats().failed == 2);
    assert_eq!(cache.get(&1), Ok(Some(10)), "readable until reported");
    let report = cache.flush().unwrap_err();
    let mut ops: Vec<_> = report.failed.iter().map(|f| f.op.clone()).collect();
    ops.sort_by_key(|op| *op.key());
    assert_eq!(ops, vec![Op::Put(1, 10), Op::Put(2, 20)]);
    for failed in &report.failed {
        assert_eq!(failed.attempts, 3);
        assert!(matches!(&failed.failure, Failure::Store(e) if **e == "injected failure"));
    }
    assert!(cache.flush().is_ok(), "each failure is reported once");
    assert_eq!(cache.write_stats().dirty, 0);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(
        cache.get(&1),
        Ok(None),
        "after the report, reads go to the store"
    );
}

#[test]
fn a_failure_superseded_by_a_stored_write_is_not_reported() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(0, Duration::ZERO);
    let cache = write_back(&db, settings, 10);
    cache.put(1, 10).unwrap();
    cache.put(2, 20).unwrap();
    wait_until("both given up", || cache.write_stats().failed == 2);
    *db.faults.lock().unwrap() = Faults::default();
    cache.put(1, 11).unwrap();
    let report = cache.flush().unwrap_err();
    let ops: Vec<_> = report.failed.iter().map(|f| f.op.clone()).collect();
    assert_eq!(ops, [Op::Put(2, 20)], "key 1's failure was superseded");
    let stats = cache.write_stats();
    assert_eq!((stats.failed, stats.superseded), (2, 1));
    assert_eq!((db.value(1), db.value(2)), (Some(11), None));
    assert_eq!(stats.dirty, 0, "nothing is pending any more");
    // Out of the cache, key 1 reads as the store has it, not as the write
    // that failed before it.
    cache.invalidate_all();
    assert_eq!(cache.get(&1), Ok(Some(11)));
}

#[test]
fn a_failure_handler_takes_given_up_writes_and_frees_their_room() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let handed = Arc::new(Mutex::new(Vec::new()));
    let log = handed.clone();
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .queue_capacity(2)
        .retries(1, Duration::from_micros(10));
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(Shared(db.clone()), settings)
        .on_write_failure(move |failed| {
            log.lock().unwrap().push(failed.op);
            panic!("a handler's panic does not stop the flusher");
        })
        .build()
        .unwrap();
    // Ten keys through a queue of two, with the store down: writers would
    // wait forever if failures kept their room until a flush.
    for k in 0..10 {
        cache.put(k, k).unwrap();
    }
    assert!(cache.flush().is_ok(), "handed over, nothing left to report");
    let mut ops = handed.lock().unwrap().clone();
    ops.sort_by_key(|op| *op.key());
    assert_eq!(ops, (0..10).map(|k| Op::Put(k, k)).collect::<Vec<_>>());
    let stats = cache.write_stats();
    assert_eq!((stats.failed, stats.dirty), (10, 0));
}

/// Between the flusher giving a write up and the handler being called with
/// it, the key must not read as the store's older value: nobody has been
/// told of the failure yet.
#[test]
fn a_write_on_its_way_to_the_failure_handler_still_reads_as_itself() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    db.data.lock().unwrap().insert(1, 1);
    // The handler holds the flusher until the test lets it go.
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let in_handler = gate.clone();
    let cache = Cache::builder()
        .max_capacity(1)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |failed| {
            assert_eq!(failed.op, Op::Put(1, 10));
            let (state, moved) = &*in_handler;
            let mut state = state.lock().unwrap();
            state.0 = true; // entered
            moved.notify_all();
            while !state.1 {
                state = moved.wait(state).unwrap();
            }
        })
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    let (state, moved) = &*gate;
    let (entered, _) = moved
        .wait_timeout_while(state.lock().unwrap(), Duration::from_secs(20), |s| !s.0)
        .unwrap();
    assert!(entered.0, "the handler was called");
    drop(entered);
    // Evict key 1's copy with a write the store will take: a read of key 1
    // now goes past the cache.
    *db.faults.lock().unwrap() = Faults::default();
    cache.put(2, 20).unwrap();
    assert!(!cache.contains_key(&1));
    assert_eq!(
        cache.get(&1),
        Ok(Some(10)),
        "given up on, but the handler has not been told yet"
    );
    state.lock().unwrap().1 = true; // released
    moved.notify_all();
    assert!(cache.flush().is_ok(), "handed over, not reported");
    assert_eq!(
        cache.get(&1),
        Ok(Some(1)),
        "once the handler has it, the key reads as the store has it"
    );
    assert_eq!(cache.write_stats().dirty, 0);
}

/// A panic payload whose drop panics too: the flusher catches a handler's
/// panic, and dropping this payload then kills it.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("a panic payload whose drop panics");
    }
}

/// A flusher killed while handing a batch's failures over reports the
/// writes the handler never got, and only those: the ones it got are not
/// delivered a second time in a report.
#[test]
fn a_flusher_dying_mid_hand_over_reports_only_what_the_handler_did_not_get() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let handed = Arc::new(Mutex::new(Vec::new()));
    let log = handed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::from_secs(60))
                .batch(3)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |failed| {
            let key = *failed.op.key();
            log.lock().unwrap().push(key);
            if key == 2 {
                std::panic::panic_any(Bomb);
            }
        })
        .build()
        .unwrap();
    // One batch of three, which fails: the handler gets key 1, then key 2,
    // whose payload kills the flusher before key 3 is handed over.
    for k in 1..=3 {
        cache.put(k, k * 10).unwrap();
    }
    let report = cache.flush().unwrap_err();
    assert_eq!(*handed.lock().unwrap(), [1, 2]);
    let reported: Vec<Op<u64, u64>> = report.failed.iter().map(|f| f.op.clone()).collect();
    assert_eq!(
        reported,
        [Op::Put(3, 30)],
        "each failure reaches someone once"
    );
    let stats = cache.write_stats();
    assert_eq!((stats.failed, stats.dirty), (3, 0));
    assert_eq!(cache.put(4, 40), Err(WriteError::Closed));
    assert!(cache.close().is_ok(), "nothing left to report");
}

/// As above, with key 3 written again while the failing batch was at the
/// store: its older write was never marked as being handed over (its key
/// had a newer one waiting) and never reached the handler. It is counted as
/// superseded; the newer write is reported in its place.
#[test]
fn a_flusher_dying_mid_hand_over_counts_an_overtaken_write_as_superseded() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    db.close_gate();
    let handed = Arc::new(Mutex::new(Vec::new()));
    let log = handed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::from_secs(60))
                .batch(3)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |failed| {
            let key = *failed.op.key();
            log.lock().unwrap().push(failed.op.clone());
            if key == 2 {
                std::panic::panic_any(Bomb);
            }
        })
        .build()
        .unwrap();
    for k in 1..=3 {
        cache.put(k, k * 10).unwrap();
    }
    wait_until("the batch at the store", || {
        db.arrived.load(Ordering::SeqCst) == 1
    });
    cache.put(3, 31).unwrap();
    db.open_gate();
    let report = cache.flush().unwrap_err();
    let reported: Vec<Op<u64, u64>> = report.failed.iter().map(|f| f.op.clone()).collect();
    assert_eq!(*handed.lock().unwrap(), [Op::Put(1, 10), Op::Put(2, 20)]);
    assert_eq!(reported, [Op::Put(3, 31)]);
    let stats = cache.write_stats();
    assert_eq!(
        (stats.failed, stats.superseded, stats.dirty),
        (4, 1, 0),
        "two handed over, one reported, one superseded"
    );
}

/// A key whose `Hash` panics on the flusher thread, once, when armed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Touchy(u64);

static TOUCHY_ARMED: AtomicBool = AtomicBool::new(false);

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        if self.0 == 99
            && std::thread::current().name() == Some("larder-flusher")
            && TOUCHY_ARMED.swap(false, Ordering::SeqCst)
        {
            panic!("a key's hash panics");
        }
        self.0.hash(h);
    }
}

/// Refuses every batch; arms `Touchy` on its second call.
struct Refusing(AtomicU64);

impl Store<Touchy, u64> for Refusing {
    type Error = String;
    fn load(&self, _: &Touchy) -> Result<Option<u64>, String> {
        Ok(None)
    }
    fn write(&self, op: &Op<Touchy, u64>) -> Result<(), String> {
        self.write_batch(std::slice::from_ref(op))
    }
    fn write_batch(&self, _: &[Op<Touchy, u64>]) -> Result<(), String> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 1 {
            TOUCHY_ARMED.store(true, Ordering::SeqCst);
        }
        Err("refused".into())
    }
}

/// A flusher that dies booking a failed batch (a key's `Hash` panics) after
/// marking some of its writes for the handler reports those writes: the
/// previous batch's hand-over, which reached the handler whole, does not
/// count for them.
#[test]
fn a_flusher_dying_as_it_books_a_batch_reports_the_writes_it_marked_for_the_handler() {
    let handed = Arc::new(Mutex::new(Vec::new()));
    let log = handed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Refusing(AtomicU64::new(0)),
            WriteBack::default()
                .max_delay(Duration::from_secs(60))
                .batch(3)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |failed| log.lock().unwrap().push(failed.op.key().0))
        .build()
        .unwrap();
    for k in 1..=3 {
        cache.put(Touchy(k), k).unwrap();
    }
    assert!(cache.flush().is_ok(), "handed over");
    assert_eq!(*handed.lock().unwrap(), [1, 2, 3]);
    // Booking this batch marks key 4 for the handler, then dies on key 99.
    for k in [4, 99, 5] {
        cache.put(Touchy(k), k).unwrap();
    }
    let report = cache.flush().unwrap_err();
    let mut keys: Vec<u64> = report.failed.iter().map(|f| f.op.key().0).collect();
    keys.sort_unstable();
    assert_eq!(keys, [4, 5, 99], "every write of the dead batch reported");
    assert_eq!(*handed.lock().unwrap(), [1, 2, 3]);
    assert_eq!(cache.write_stats().dirty, 0);
}

/// Writes on their way to the failure handler take no queue room, and their
/// keys are not dirty: a new write of such a key needs room like any other.
#[test]
fn writes_being_handed_over_neither_take_nor_give_queue_room() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let in_handler = gate.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::from_secs(3600))
                .batch(2)
                .queue_capacity(2)
                .backpressure(Backpressure::Fail)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |_| {
            let (state, moved) = &*in_handler;
            let mut state = state.lock().unwrap();
            state.0 = true;
            moved.notify_all();
            while !state.1 {
                state = moved.wait(state).unwrap();
            }
        })
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    cache.put(2, 20).unwrap(); // a full batch: sent, refused, handed over
    let (state, moved) = &*gate;
    let (entered, _) = moved
        .wait_timeout_while(state.lock().unwrap(), Duration::from_secs(20), |s| !s.0)
        .unwrap();
    assert!(entered.0, "the handler was called");
    drop(entered);
    *db.faults.lock().unwrap() = Faults::default();
    assert_eq!(cache.write_stats().dirty, 0);
    cache.put(3, 30).unwrap();
    cache.put(4, 40).unwrap();
    assert_eq!(cache.write_stats().dirty, 2);
    assert_eq!(cache.put(5, 50), Err(WriteError::QueueFull));
    assert_eq!(
        cache.put(1, 11),
        Err(WriteError::QueueFull),
        "a key only being handed over is not dirty: no room for it"
    );
    assert_eq!(cache.write_stats().dirty, 2);
    state.lock().unwrap().1 = true;
    moved.notify_all();
    assert!(cache.flush().is_ok());
    assert_eq!((db.value(3), db.value(4)), (Some(30), Some(40)));
    cache.put(1, 11).unwrap();
    cache.flush().unwrap();
    assert_eq!(db.value(1), Some(11));
    let stats = cache.write_stats();
    assert_eq!((stats.dirty, stats.failed), (0, 2));
}

#[test]
fn a_panicking_store_is_retried_and_the_flusher_survives() {
    let db = Db::with_faults(Faults {
        panic: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(1, Duration::from_millis(1));
    let cache = write_back(&db, settings, 10);
    cache.put(1, 10).unwrap();
    let report = cache.flush().unwrap_err();
    assert!(matches!(&report.failed[0].failure, Failure::Panicked(m) if m == "injected panic"));
    *db.faults.lock().unwrap() = Faults::default();
    cache.put(1, 11).unwrap();
    cache.flush().unwrap();
    assert_eq!(db.value(1), Some(11));
}

#[test]
fn close_flushes_refuses_writes_and_is_idempotent() {
    let db = Db::new();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::MAX), 10);
    cache.put(1, 10).unwrap();
    cache.close().unwrap();
    assert_eq!(db.value(1), Some(10));
    assert_eq!(cache.put(2, 20), Err(WriteError::Closed));
    assert_eq!(cache.delete(&1), Err(WriteError::Closed));
    assert_eq!(cache.get(&1), Ok(Some(10)), "reads keep working");
    cache.close().unwrap();
    cache.flush().unwrap();
}

#[test]
fn dropping_the_last_handle_flushes() {
    let db = Db::new();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::MAX), 10);
    let clone = cache.clone();
    cache.put(1, 10).unwrap();
    drop(cache);
    assert_eq!(db.value(1), None, "a clone is still alive");
    clone.put(2, 20).unwrap();
    drop(clone);
    assert_eq!((db.value(1), db.value(2)), (Some(10), Some(20)));
}

/// A value whose `Clone` panics on the flusher thread (user code the flusher
/// runs outside the store's calls).
#[derive(Debug, PartialEq)]
struct Brittle(u64);
impl Clone for Brittle {
    fn clone(&self) -> Self {
        let on_flusher = std::thread::current().name() == Some("larder-flusher");
        assert!(!(self.0 == 13 && on_flusher), "13 will not be cloned there");
        Brittle(self.0)
    }
}

#[derive(Default)]
struct BrittleDb(Mutex<HashMap<u64, u64>>);
impl Store<u64, Brittle> for BrittleDb {
    type Error = String;
    fn load(&self, k: &u64) -> Result<Option<Brittle>, String> {
        Ok(self.0.lock().unwrap().get(k).map(|&v| Brittle(v)))
    }
    fn write(&self, op: &Op<u64, Brittle>) -> Result<(), String> {
        let mut data = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(*k, v.0),
            Op::Delete(k) => data.remove(k),
        };
        Ok(())
    }
}

#[test]
fn writes_a_dead_flusher_leaves_are_reported_and_later_ones_refused() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            BrittleDb::default(),
            // The batch is due once both keys wait, not on a delay that a
            // slow machine could let pass between the two puts.
            WriteBack::default().max_delay(Duration::MAX).batch(2),
        )
        .build()
        .unwrap();
    cache.put(1, Brittle(13)).unwrap();
    cache.put(2, Brittle(20)).unwrap();
    // The flusher dies cloning key 1's value for its batch; until then
    // writes of key 3 are accepted.
    let accepted_3 = AtomicBool::new(false);
    wait_until("the flusher gone", || match cache.put(3, Brittle(3)) {
        Ok(()) => {
            accepted_3.store(true, Ordering::SeqCst);
            false
        }
        Err(e) => e == WriteError::Closed,
    });
    assert_eq!(cache.put(4, Brittle(4)), Err(WriteError::Closed));
    // Until reported, the keys read their acknowledged writes, cached copies
    // gone or not: the store never got them.
    cache.invalidate_all();
    assert_eq!(cache.get(&1).unwrap().map(|b| b.0), Some(13));
    assert_eq!(cache.get(&2).unwrap().map(|b| b.0), Some(20));
    assert_eq!(
        cache.write_stats().dirty,
        if accepted_3.load(Ordering::SeqCst) {
            3
        } else {
            2
        }
    );
    let report = cache.flush().unwrap_err();
    let mut keys: Vec<u64> = report.failed.iter().map(|f| *f.op.key()).collect();
    keys.sort_unstable();
    let expected: &[u64] = if accepted_3.load(Ordering::SeqCst) {
        &[1, 2, 3]
    } else {
        &[1, 2]
    };
    assert_eq!(keys, expected, "every acknowledged write reported");
    assert!(report.failed.iter().all(|f| f.attempts == 0
        && matches!(&f.failure, Failure::FlusherStopped(m) if m.contains("panicked"))));
    assert!(cache.store().0.lock().unwrap().is_empty());
    // Reported: from now on the key reads as the store has it.
    assert_eq!(cache.get(&1).unwrap().map(|b| b.0), None);
    assert_eq!(cache.write_stats().dirty, 0);
    assert!(cache.close().is_ok(), "each failure is reported once");
}

/// A key with a failure still unreported when the flusher dies holds two
/// units of `queued` (its failure and its latest write, failed in its
/// place), as it did before the flusher died, and the report has both.
#[test]
fn queued_counts_a_keys_older_failure_after_the_flusher_died() {
    /// Refuses a put of 1.
    struct Picky(BrittleDb);
    impl Store<u64, Brittle> for Picky {
        type Error = String;
        fn load(&self, k: &u64) -> Result<Option<Brittle>, String> {
            self.0.load(k)
        }
        fn write(&self, op: &Op<u64, Brittle>) -> Result<(), String> {
            match op {
                Op::Put(_, Brittle(1)) => Err("refused".into()),
                _ => self.0.write(op),
            }
        }
    }
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(0, Duration::ZERO);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(Picky(BrittleDb::default()), settings)
        .build()
        .unwrap();
    cache.put(5, Brittle(1)).unwrap();
    wait_until("the refusal", || cache.write_stats().failed == 1);
    let stats = cache.write_stats();
    assert_eq!((stats.dirty, stats.queued), (1, 1));
    cache.put(5, Brittle(13)).unwrap(); // the flusher dies cloning it
    wait_until("the flusher gone", || cache.put(6, Brittle(6)).is_err());
    let stats = cache.write_stats();
    let report = cache.flush().unwrap_err();
    let reported = |key| report.failed.iter().filter(|f| *f.op.key() == key).count();
    assert_eq!(reported(5), 2, "the refused write and the one after it");
    assert_eq!(
        stats.queued,
        stats.dirty + 1,
        "key 5's older failure holds room too: {stats:?}"
    );
    assert_eq!(stats.queued as usize, report.failed.len());
}

/// The last handle of a cache whose flusher died, dropped with nobody having
/// called `flush`: the writes it left unsent must be mentioned on stderr.
/// Runs itself again as a child process, whose stderr it reads.
#[test]
fn dropping_a_cache_whose_flusher_died_says_what_was_lost() {
    if std::env::var_os("LARDER_TEST_CHILD").is_some() {
        let cache = Cache::builder()
            .max_capacity(100)
            .write_back(
                BrittleDb::default(),
                WriteBack::default().max_delay(Duration::from_millis(50)),
            )
            .build()
            .unwrap();
        cache.put(1, Brittle(13)).unwrap();
        // Refused if the flusher already died on 13 (a very slow machine):
        // 13 alone is then what the drop must mention.
        let _ = cache.put(2, Brittle(20));
        wait_until("the flusher gone", || cache.put(99, Brittle(99)).is_err());
        eprintln!("CHILD: dropping");
        drop(cache);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dropping_a_cache_whose_flusher_died_says_what_was_lost",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("LARDER_TEST_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{stderr}");
    let after_drop = stderr.split("CHILD: dropping").nth(1).unwrap_or("");
    assert!(
        after_drop.contains("larder: a write-back cache was dropped with")
            && !after_drop.contains("dropped with 0 write(s) its store refused and 0"),
        "the acknowledged writes left unsent went unmentioned:\n{stderr}"
    );
}

#[test]
fn a_second_close_waits_for_the_flusher_too() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    db.close_gate();
    let cache = write_back(&db, WriteBack::default().retries(0, Duration::ZERO), 10);
    cache.put(1, 1).unwrap();
    std::thread::scope(|s| {
        let first = s.spawn(|| cache.close().map_err(|e| e.failed.len()));
        let second = s.spawn(|| cache.close().map_err(|e| e.failed.len()));
        std::thread::sleep(Duration::from_millis(50));
        let returned_early = first.is_finished() || second.is_finished();
        db.open_gate();
        assert!(
            !returned_early,
            "neither returns while the write is being sent"
        );
        let mut outcomes = [first.join().unwrap(), second.join().unwrap()];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [Ok(()), Err(1)],
            "the failure goes to one of them"
        );
    });
}

#[test]
fn the_first_retry_waits_no_longer_than_max_backoff() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(1, Duration::MAX)
        .max_backoff(Duration::from_millis(1));
    let cache = write_back(&db, settings, 10);
    cache.put(1, 1).unwrap();
    // With the first wait uncapped this flush would never return.
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed[0].attempts, 2);
}

#[test]
fn a_panicking_weigher_leaves_reads_on_the_write_the_store_took() {
    // Panics once, weighing 666.
    let weigher = || {
        let armed = AtomicBool::new(true);
        move |_: &u64, v: &u64| {
            let refuse = *v == 666 && armed.swap(false, Ordering::SeqCst);
            assert!(!refuse, "the weigher refuses 666 once");
            1
        }
    };
    // Write-through: the store has the write before the weigher runs.
    let db = Db::new();
    let through = Cache::builder()
        .max_capacity(100)
        .weigher(weigher())
        .write_through(Shared(db.clone()))
        .build()
        .unwrap();
    through.put(1, 10).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| through.put(1, 666))).is_err());
    assert_eq!(db.value(1), Some(666));
    assert_eq!(through.peek(&1), None, "the replaced value is not cached");
    assert_eq!(through.get(&1), Ok(Some(666)));
    // Write-back: the queue has it.
    let db = Db::new();
    let back = Cache::builder()
        .max_capacity(100)
        .weigher(weigher())
        .write_back(Shared(db.clone()), WriteBack::default())
        .build()
        .unwrap();
    back.put(1, 10).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| back.put(1, 666))).is_err());
    assert_eq!(back.get(&1), Ok(Some(666)));
    back.flush().unwrap();
    assert_eq!(db.value(1), Some(666));
}

#[test]
fn a_listener_panicking_in_a_flush_keeps_the_report_for_the_next() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let cache = Cache::builder()
        .max_capacity(10)
        .eviction_listener(|k: u64, _, _| assert!(k != 1, "the listener refuses key 1"))
        .write_back(
            Shared(db.clone()),
            WriteBack::default().retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    cache.put(2, 20).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
    // The other key was still forgotten, and the report comes next time.
    assert_eq!(cache.peek(&2), None);
    let report = catch_unwind(AssertUnwindSafe(|| cache.flush()))
        .expect("key 1 is no longer cached: nothing to tell the listener")
        .unwrap_err();
    let mut keys: Vec<u64> = report.failed.iter().map(|f| *f.op.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2]);
    assert!(cache.close().is_ok());
}

#[test]
fn a_report_put_back_after_a_listener_panic_drops_what_a_stored_write_superseded() {
    /// Refuses puts of the value 1.
    #[derive(Default)]
    struct NoOnes(Mutex<HashMap<u64, u64>>);
    impl Store<u64, u64> for NoOnes {
        type Error = String;
        fn load(&self, k: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(k).copied())
        }
        fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
            match op {
                Op::Put(_, 1) => return Err("no ones".into()),
                Op::Put(k, v) => self.0.lock().unwrap().insert(*k, *v),
                Op::Delete(k) => self.0.lock().unwrap().remove(k),
            };
            Ok(())
        }
    }
    let (in_listener, listening) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (in_listener, released) = (Mutex::new(in_listener), Mutex::new(released));
    let armed = Arc::new(AtomicBool::new(false));
    let trap = armed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |_, _, _| {
            if trap.swap(false, Ordering::SeqCst) {
                in_listener.lock().unwrap().send(()).unwrap();
                released.lock().unwrap().recv().unwrap();
                panic!("the listener panics");
            }
        })
        .write_back(
            NoOnes::default(),
            WriteBack::default()
                .retries(0, Duration::ZERO)
                .max_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    cache.put(7, 1).unwrap();
    armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let release = release;
        let first = s.spawn(|| catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
        recv_within("the listener", &listening);
        // While the first flush's listener runs, a newer write of key 7 is stored.
        cache.put(7, 2).unwrap();
        cache.flush().unwrap();
        release.send(()).unwrap();
        assert!(
            first.join().unwrap(),
            "the listener's panic reached the caller"
        );
    });
    assert!(cache.flush().is_ok(), "the put-back failure was superseded");
    assert_eq!(cache.store().0.lock().unwrap().get(&7), Some(&2));
    let stats = cache.write_stats();
    assert_eq!((stats.failed, stats.superseded), (1, 1));
}

#[test]
fn a_report_put_back_keeps_the_order_writes_were_given_up_in() {
    /// Refuses puts of odd values.
    #[derive(Default)]
    struct NoOdds;
    impl Store<u64, u64> for NoOdds {
        type Error = String;
        fn load(&self, _: &u64) -> Result<Option<u64>, String> {
            Ok(None)
        }
        fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
            match op {
                Op::Put(_, v) if v % 2 == 1 => Err("no odd values".into()),
                _ => Ok(()),
            }
        }
    }
    let (in_listener, listening) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (in_listener, released) = (Mutex::new(in_listener), Mutex::new(released));
    let armed = Arc::new(AtomicBool::new(false));
    let trap = armed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |_, _, _| {
            if trap.swap(false, Ordering::SeqCst) {
                in_listener.lock().unwrap().send(()).unwrap();
                released.lock().unwrap().recv().unwrap();
                panic!("the listener panics");
            }
        })
        .write_back(
            NoOdds,
            WriteBack::default()
                .retries(0, Duration::ZERO)
                .max_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    cache.put(7, 1).unwrap();
    wait_until("the first failure", || cache.write_stats().failed == 1);
    armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let release = release;
        let first = s.spawn(|| catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
        recv_within("the listener", &listening);
        // While the first report is out, a newer write of key 7 fails too.
        cache.put(7, 3).unwrap();
        wait_until("the second failure", || cache.write_stats().failed == 2);
        release.send(()).unwrap();
        assert!(
            first.join().unwrap(),
            "the listener's panic reached the caller"
        );
    });
    let report = cache.flush().unwrap_err();
    let ops: Vec<Op<u64, u64>> = report.failed.into_iter().map(|f| f.op).collect();
    assert_eq!(
        ops,
        [Op::Put(7, 1), Op::Put(7, 3)],
        "the put-back first: a caller replaying the report in order ends on the newer write"
    );
}

#[test]
fn a_failure_handler_may_flush_without_hanging_the_flusher() {
    type Backed =
        Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteBehind<u64, u64, Shared>>;
    // A handle the handler can reach without owning one.
    static CACHE: std::sync::OnceLock<Backed> = std::sync::OnceLock::new();
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let cache: Backed = Cache::builder()
        .max_capacity(10)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            if let Some(cache) = CACHE.get() {
                let _ = cache.flush();
            }
        })
        .build()
        .unwrap();
    assert!(CACHE.set(cache.clone()).is_ok());
    cache.put(1, 1).unwrap();
    wait_until("the handler ran", || handled.load(Ordering::SeqCst) == 1);
    // The flusher came back from the handler and sends the next write.
    *db.faults.lock().unwrap() = Faults::default();
    cache.put(2, 2).unwrap();
    cache.flush().unwrap();
    assert_eq!(db.value(2), Some(2));
}

#[test]
fn a_failure_handler_may_flush_or_close_async_without_hanging_the_flusher() {
    // The handler runs on the flusher, outside any runtime.
    use common::block_on;
    type Backed =
        Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteBehind<u64, u64, Shared>>;
    static CACHE: std::sync::OnceLock<Backed> = std::sync::OnceLock::new();
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let cache: Backed = Cache::builder()
        .max_capacity(10)
        .write_back(
            Shared(db.clone()),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .on_write_failure(move |_| {
            if let Some(cache) = CACHE.get() {
                // The first failure flushes, the second closes; both return
                // at once on the flusher, as their blocking twins do.
                if count.load(Ordering::SeqCst) == 0 {
                    let _ = block_on(cache.flush_async());
                } else {
                    let _ = block_on(cache.close_async());
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    assert!(CACHE.set(cache.clone()).is_ok());
    cache.put(1, 1).unwrap();
    wait_until("flush_async in the handler returned", || {
        handled.load(Ordering::SeqCst) == 1
    });
    cache.put(2, 2).unwrap();
    wait_until("close_async in the handler returned", || {
        handled.load(Ordering::SeqCst) == 2
    });
    assert_eq!(cache.put(3, 3), Err(WriteError::Closed));
    assert!(cache.close().is_ok(), "both failures went to the handler");
}

/// A waker that panics (a broken executor) must not kill the flusher, nor
/// leave the other waiters unwoken: the flusher wakes them all, drops the
/// panic, and goes on flushing.
#[test]
fn a_panicking_waker_neither_stops_the_flusher_nor_strands_other_waiters() {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};
    struct Task {
        wakes: AtomicU64,
        panics: bool,
    }
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panics, "a waker that panics");
        }
    }
    let (db, cache) = behind_a_closed_gate(100, Backpressure::Block);
    cache.put(1, 1).unwrap();
    wait_until("the batch reached the store", || {
        db.arrived.load(Ordering::SeqCst) == 1
    });
    let tasks: Vec<Arc<Task>> = [true, false, true, false]
        .into_iter()
        .map(|panics| {
            Arc::new(Task {
                wakes: AtomicU64::new(0),
                panics,
            })
        })
        .collect();
    let mut flushes: Vec<_> = tasks
        .iter()
        .map(|task| (Box::pin(cache.flush_async()), Waker::from(task.clone())))
        .collect();
    for (flush, waker) in &mut flushes {
        let polled = flush.as_mut().poll(&mut Context::from_waker(waker));
        assert!(polled.is_pending(), "the batch is at the gate");
    }
    db.open_gate();
    wait_until("every waiter woken", || {
        tasks.iter().all(|t| t.wakes.load(Ordering::SeqCst) >= 1)
    });
    for (mut flush, waker) in flushes {
        let polled = flush.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Ok(()))), "the flush ended");
    }
    // The flusher lives on.
    cache.put(2, 2).unwrap();
    cache.flush().unwrap();
    assert_eq!(db.value(2), Some(2));
    assert!(cache.close().is_ok());
}

/// Async writers that give up while they wait (a timeout, a lost `select!`
/// branch) must not leave their wakers behind: with a queue that cannot move
/// (full of unreported failures), the list would grow with every one.
#[test]
fn async_waiters_that_give_up_leave_no_waker_behind() {
    use std::future::Future;
    use std::task::{Context, Wake, Waker};
    struct Task;
    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }
    fn poll_once<F: Future>(future: F, waker: &Waker) -> bool {
        let mut future = std::pin::pin!(future);
        future
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    }
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    db.close_gate();
    let cache = write_back(
        &db,
        WriteBack::default()
            .retries(0, Duration::ZERO)
            .queue_capacity(1),
        1,
    );
    cache.put(1, 1).unwrap();
    let tasks: Vec<Arc<Task>> = (0..100).map(|_| Arc::new(Task)).collect();
    for (k, task) in (100..).zip(&tasks) {
        let waker = Waker::from(task.clone());
        // Each waits (for room, for the flush, for the stripe) and is dropped.
        assert!(poll_once(cache.put_async(k, k), &waker));
        assert!(poll_once(cache.delete_async(&k), &waker));
        assert!(poll_once(cache.flush_async(), &waker));
    }
    let held = tasks.iter().filter(|t| Arc::strong_count(t) > 1).count();
    db.open_gate();
    assert_eq!(
        held, 0,
        "{held} wakers of writers that gave up are still held"
    );
    let report = cache.close().unwrap_err();
    assert_eq!(report.failed.len(), 1, "only the first put was accepted");
}

/// A flush takes the failed writes to report, then wakes the writers
/// waiting for room: a waker that panics there must not take the report
/// down with it. The panic reaches the caller, and the failure waits for the
/// next `flush` or `close` to report it, its cached copy kept until then.
#[test]
fn a_wakers_panic_during_a_flush_leaves_its_report_for_the_next_one() {
    use std::future::Future;
    use std::task::{Context, Wake, Waker};
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("waker panics");
        }
    }
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let cache = write_back(
        &db,
        WriteBack::default()
            .retries(0, Duration::ZERO)
            .queue_capacity(1),
        100,
    );
    cache.put(1, 10).unwrap();
    wait_until("the write failed", || cache.write_stats().failed == 1);
    // A writer waiting for room in the queue the failure holds.
    let waker = Waker::from(Arc::new(Panics));
    let mut blocked = Box::pin(cache.put_async(2, 20));
    assert!(blocked
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let flushed = catch_unwind(AssertUnwindSafe(|| cache.flush()));
    assert!(flushed.is_err(), "the waker's panic reaches the caller");
    drop(blocked);
    assert_eq!(
        cache.get(&1),
        Ok(Some(10)),
        "the unreported write's cached copy is kept"
    );
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed.len(), 1, "the next flush reports the failure");
    assert_eq!(report.failed[0].op, Op::Put(1, 10));
    assert_eq!(db.value(1), None);
    assert_eq!(
        cache.get(&1),
        Ok(None),
        "reported: its cached copy is dropped"
    );
    assert!(cache.close().is_ok(), "reported once");
}

thread_local! {
    /// Makes the next comparison of a `Moody` key on this thread panic.
    static MOODY_EQ: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A key whose `Eq` panics once when asked to (`MOODY_EQ`).
#[derive(Clone, Debug)]
struct Moody(u64);

impl std::hash::Hash for Moody {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Moody {
    fn eq(&self, other: &Self) -> bool {
        assert!(!MOODY_EQ.with(|m| m.replace(false)), "Eq panics once");
        self.0 == other.0
    }
}

impl Eq for Moody {}

/// A store that arms `MOODY_EQ` once it has taken a write: the cache's own
/// comparison of the key, after the store, panics.
#[derive(Clone, Default)]
struct MoodyDb(Arc<Mutex<HashMap<u64, u64>>>);

impl Store<Moody, u64> for MoodyDb {
    type Error = String;
    fn load(&self, key: &Moody) -> Result<Option<u64>, String> {
        Ok(self.0.lock().unwrap().get(&key.0).copied())
    }
    fn write(&self, op: &Op<Moody, u64>) -> Result<(), String> {
        match op {
            Op::Put(k, v) => self.0.lock().unwrap().insert(k.0, *v),
            Op::Delete(k) => self.0.lock().unwrap().remove(&k.0),
        };
        MOODY_EQ.with(|m| m.set(true));
        Ok(())
    }
}

/// The store has a write-through write when the key's `Eq` panics in the
/// cache: the cached copy goes, so reads find the store's value, not the
/// one it replaced (with no weigher or `Expiry` it used to stay).
#[test]
fn a_key_eq_panicking_after_the_store_took_the_write_drops_the_cached_copy() {
    let db = MoodyDb::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(db.clone())
        .build()
        .unwrap();
    cache.put(Moody(1), 10).unwrap();
    MOODY_EQ.with(|m| m.set(false));
    let put = catch_unwind(AssertUnwindSafe(|| cache.put(Moody(1), 13)));
    assert!(put.is_err(), "the key's panic goes on");
    assert_eq!(db.0.lock().unwrap().get(&1), Some(&13));
    assert_eq!(
        cache.peek(&Moody(1)),
        None,
        "the replaced value is not kept"
    );
    assert_eq!(cache.get(&Moody(1)), Ok(Some(13)));
    // A delete: the store has it, and the cached copy goes too.
    MOODY_EQ.with(|m| m.set(false));
    let delete = catch_unwind(AssertUnwindSafe(|| cache.delete(&Moody(1))));
    assert!(delete.is_err(), "the key's panic goes on");
    assert_eq!(db.0.lock().unwrap().get(&1), None);
    assert_eq!(cache.peek(&Moody(1)), None, "the deleted value is not kept");
    assert!(
        cache.put(Moody(1), 14).is_ok(),
        "the key's stripe was released"
    );
    // A new key is placed without a comparison: the store's arming stands.
    MOODY_EQ.with(|m| m.set(false));
    assert_eq!(cache.get(&Moody(1)), Ok(Some(14)));
}

type EchoCache = Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteThrough<Echo>>;

/// A write-through store that, against its docs, writes to the cache it
/// stands behind: each put of a value under 100 puts 100 more.
#[derive(Clone, Default)]
struct Echo {
    cache: Arc<std::sync::OnceLock<EchoCache>>,
    data: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Store<u64, u64> for Echo {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        Ok(self.data.lock().unwrap().get(key).copied())
    }
    fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
        if let Op::Put(k, v) = op {
            self.data.lock().unwrap().insert(*k, *v);
            if *v < 100 {
                let cache = self.cache.get().expect("set after the build");
                cache.put(*k, v + 100).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// A write-through cache over an [`Echo`] of itself.
fn echo_cache() -> EchoCache {
    let store = Echo::default();
    let cache: EchoCache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone())
        .build()
        .unwrap();
    assert!(store.cache.set(cache.clone()).is_ok());
    cache
}

/// Runs `call` on a thread of its own (a regression hangs that thread, not
/// the test) and returns the message it panicked with.
fn panic_message(call: impl FnOnce() + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let message = catch_unwind(AssertUnwindSafe(call)).err().map(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let _ = tx.send(message);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the call returned")
        .expect("the call panicked")
}

/// A store writing its own key to the cache from within that key's write
/// used to wait for the key's lock, which its own thread held, for good.
/// It panics with a message instead, and the cache stays usable.
#[test]
fn a_store_writing_its_own_key_to_the_cache_panics_instead_of_hanging() {
    let cache = echo_cache();
    let writer = cache.clone();
    let message = panic_message(move || drop(writer.put(1, 1)));
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!(cache.peek(&1), None, "no copy of an uncertain write");
    assert!(cache.put(1, 500).is_ok(), "the key's lock was released");
    assert_eq!(cache.get(&1), Ok(Some(500)));
}

/// A batch whose store writes one of the batch's keys to the cache panics
/// instead of waiting for the stripe its own thread holds.
#[test]
fn a_store_writing_a_key_of_its_batch_to_the_cache_panics_instead_of_hanging() {
    let cache = echo_cache();
    let writer = cache.clone();
    let message = panic_message(move || drop(writer.put_all([(7, 700), (8, 8)])));
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!((cache.peek(&7), cache.peek(&8)), (None, None));
    assert!(
        cache.put_all([(7, 500), (8, 600)]).is_ok(),
        "the stripes were released"
    );
    assert_eq!(cache.get(&8), Ok(Some(600)));
}

#[test]
fn invalid_write_back_settings_are_refused() {
    let db = Db::new();
    for settings in [
        WriteBack::default().batch(0),
        WriteBack::default().queue_capacity(0),
        // flush and close wait out every backoff: this one would never end.
        WriteBack::default()
            .retries(3, Duration::MAX)
            .max_backoff(Duration::MAX),
        WriteBack::default().max_backoff(Duration::from_secs(24 * 60 * 60 + 1)),
    ] {
        let err = Cache::<u64, u64>::builder()
            .max_capacity(10)
            .write_back(Shared(db.clone()), settings)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, larder::BuildError::InvalidWriteBack { .. }),
            "{err}"
        );
    }
    // A day is the most, and it builds.
    assert!(Cache::<u64, u64>::builder()
        .max_capacity(10)
        .write_back(
            Shared(db.clone()),
            WriteBack::default().max_backoff(Duration::from_secs(24 * 60 * 60))
        )
        .build()
        .is_ok());
}

/// Four threads put and delete over 1k keys (each thread owns a quarter, so
/// each key's order of acknowledgement is known) through a 50-entry cache:
/// dirty entries are evicted constantly. The store fails 20% of calls, panics
/// on 2% and is slow on 10%. Afterwards every key's last acknowledged write
/// is in the store or was reported failed, and each key's writes reached the
/// store in acknowledgement order.
#[test]
fn fault_injection_loses_no_acknowledged_write() {
    const THREADS: u64 = 4;
    const OPS: u64 = 25_000;
    const KEYS: u64 = 1_000;
    let db = Db::with_faults(Faults {
        fail: 20,
        panic: 2,
        slow: 10,
    });
    let settings = WriteBack::default()
        .max_delay(Duration::from_millis(1))
        .batch(64)
        .queue_capacity(512)
        .retries(2, Duration::from_micros(100));
    let cache = write_back(&db, settings, 50);
    // Per key: every acknowledged write, in order (`None` = delete).
    let acked: Vec<Mutex<Vec<Option<u64>>>> = (0..KEYS).map(|_| Mutex::new(Vec::new())).collect();
    let version = AtomicU64::new(1);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, acked, version) = (&cache, &acked, &version);
            s.spawn(move || {
                let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1);
                for _ in 0..OPS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = (x % (KEYS / THREADS)) * THREADS + t;
                    let write = if x % 10 == 0 {
                        cache.delete(&key).unwrap();
                        None
                    } else {
                        let v = version.fetch_add(1, Ordering::Relaxed);
                        cache.put(key, v).unwrap();
                        Some(v)
                    };
                    acked[key as usize].lock().unwrap().push(write);
                    if x % 3 == 0 {
                        assert_eq!(cache.get(&key), Ok(write), "read-your-writes of {key}");
                    }
                }
            });
        }
    });
    let report = match cache.flush() {
        Ok(()) => Vec::new(),
        Err(e) => e.failed,
    };
    let failed: std::collections::HashSet<(u64, Option<u64>)> = report
        .iter()
        .map(|f| match &f.op {
            Op::Put(k, v) => (*k, Some(*v)),
            Op::Delete(k) => (*k, None),
        })
        .collect();
    let log = db.log();
    let mut lost = 0;
    let mut in_order = 0;
    for key in 0..KEYS {
        let acked = acked[key as usize].lock().unwrap();
        let Some(&last) = acked.last() else { continue };
        if db.value(key) != last && !failed.contains(&(key, last)) {
            lost += 1;
        }
        // The store's writes of this key are a subsequence of its acks.
        let stored = log.iter().filter(|op| *op.key() == key).map(|op| match op {
            Op::Put(_, v) => Some(*v),
            Op::Delete(_) => None,
        });
        let mut at = 0;
        for w in stored {
            match acked[at..].iter().position(|a| *a == w) {
                Some(i) => at += i + 1,
                None => panic!("key {key}: {w:?} stored out of order or never acknowledged"),
            }
        }
        in_order += 1;
    }
    let stats = cache.write_stats();
    let attempted = THREADS * OPS;
    println!(
        "fault injection: attempted {attempted}, acknowledged {}, coalesced {}, stored {}, \
         reported failed {}, lost {lost}; store calls {} (retries {}), keys checked {in_order}",
        stats.accepted,
        stats.coalesced,
        stats.stored,
        report.len(),
        stats.store_calls,
        stats.retries,
    );
    assert_eq!(lost, 0);
    assert_eq!(
        stats.accepted, attempted,
        "Block mode acknowledges every write"
    );
    assert_eq!(
        stats.failed,
        report.len() as u64 + stats.superseded,
        "every given-up write was reported, unless a later stored write superseded it"
    );
    assert_eq!(
        stats.accepted,
        stats.coalesced + stats.stored + stats.failed,
        "every acknowledged write was coalesced, stored or reported"
    );
    assert_eq!(stats.dirty, 0);
    assert!(stats.retries > 0, "the faults were exercised");
}

#[test]
fn a_report_put_back_after_a_listener_panic_reads_as_its_writes_until_the_next() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let armed = Arc::new(AtomicBool::new(false));
    let trap = armed.clone();
    let cache = Cache::builder()
        .max_capacity(10)
        .eviction_listener(move |_: u64, _, _| {
            assert!(
                !trap.swap(false, Ordering::SeqCst),
                "the listener panics once"
            );
        })
        .write_back(
            Shared(db.clone()),
            WriteBack::default().retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    cache.put(2, 20).unwrap();
    armed.store(true, Ordering::SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
    // The cached copies are gone and the store never took the writes: until
    // the report is delivered, the queue still answers for them.
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, None));
    assert_eq!(cache.get(&1), Ok(Some(10)), "unreported: reads its write");
    assert_eq!(cache.get(&2), Ok(Some(20)), "unreported: reads its write");
    let report = cache.flush().unwrap_err();
    let mut keys: Vec<u64> = report.failed.iter().map(|f| *f.op.key()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2]);
    assert_eq!(cache.get(&1), Ok(None), "reported: reads go to the store");
    assert!(cache.close().is_ok());
}

#[test]
fn a_key_clone_panicking_while_a_report_is_out_fails_no_stored_write() {
    /// A key whose second clone on the flusher thread, of key 2, panics: the
    /// first is allowed, the second is refused.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Key(u64);
    static FLUSHER_CLONES_OF_2: AtomicU64 = AtomicU64::new(0);
    impl Clone for Key {
        fn clone(&self) -> Self {
            let on_flusher = std::thread::current().name() == Some("larder-flusher");
            if self.0 == 2 && on_flusher {
                let n = FLUSHER_CLONES_OF_2.fetch_add(1, Ordering::SeqCst);
                assert!(n == 0, "key 2 is cloned once on the flusher");
            }
            Key(self.0)
        }
    }
    /// Refuses puts of the value 1.
    #[derive(Default)]
    struct NoOnes(Mutex<HashMap<u64, u64>>);
    impl Store<Key, u64> for NoOnes {
        type Error = String;
        fn load(&self, k: &Key) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(&k.0).copied())
        }
        fn write(&self, op: &Op<Key, u64>) -> Result<(), String> {
            match op {
                Op::Put(_, 1) => return Err("no ones".into()),
                Op::Put(k, v) => self.0.lock().unwrap().insert(k.0, *v),
                Op::Delete(k) => self.0.lock().unwrap().remove(&k.0),
            };
            Ok(())
        }
    }
    let (in_listener, listening) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (in_listener, released) = (Mutex::new(in_listener), Mutex::new(released));
    let armed = Arc::new(AtomicBool::new(false));
    let trap = armed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |_: Key, _: u64, _| {
            if trap.swap(false, Ordering::SeqCst) {
                in_listener.lock().unwrap().send(()).unwrap();
                released.lock().unwrap().recv().unwrap();
                panic!("the listener panics");
            }
        })
        .write_back(
            NoOnes::default(),
            WriteBack::default()
                .retries(0, Duration::ZERO)
                .max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    cache.put(Key(1), 1).unwrap();
    armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let release = release;
        let first = s.spawn(|| catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
        recv_within("the listener", &listening);
        // Key 1's report is out; keys 2 and 3 go in one batch, which the
        // store takes.
        cache.put(Key(2), 20).unwrap();
        cache.put(Key(3), 30).unwrap();
        let flushed = cache
            .flush()
            .map_err(|e| e.failed.into_iter().map(|f| f.op).collect::<Vec<_>>());
        release.send(()).unwrap();
        assert!(
            first.join().unwrap(),
            "the listener's panic reached the caller"
        );
        assert_eq!(flushed, Ok(()), "the store took both writes");
    });
    let stored = cache.store().0.lock().unwrap().clone();
    assert_eq!((stored.get(&2), stored.get(&3)), (Some(&20), Some(&30)));
    let stats = cache.write_stats();
    assert_eq!((stats.stored, stats.failed), (2, 1));
    let report = cache.close().unwrap_err();
    let ops: Vec<_> = report.failed.into_iter().map(|f| f.op).collect();
    assert_eq!(ops, [Op::Put(Key(1), 1)], "only the refused write");
    assert_eq!(cache.write_stats().dirty, 0);
}

#[test]
fn a_key_clone_panicking_after_the_store_took_a_write_leaves_no_stale_copy() {
    thread_local! {
        /// Set: the next clone of a key on this thread panics.
        static REFUSE_NEXT_CLONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Key(u64);
    impl Clone for Key {
        fn clone(&self) -> Self {
            assert!(
                !REFUSE_NEXT_CLONE.with(|refuse| refuse.replace(false)),
                "the key refuses to be cloned"
            );
            Key(self.0)
        }
    }
    #[derive(Default)]
    struct Memory(Mutex<HashMap<u64, u64>>);
    impl Store<Key, u64> for Memory {
        type Error = String;
        fn load(&self, k: &Key) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(&k.0).copied())
        }
        fn write(&self, op: &Op<Key, u64>) -> Result<(), String> {
            match op {
                Op::Put(k, v) => self.0.lock().unwrap().insert(k.0, *v),
                Op::Delete(k) => self.0.lock().unwrap().remove(&k.0),
            };
            Ok(())
        }
    }
    let refuse_next_clone = || REFUSE_NEXT_CLONE.with(|refuse| refuse.set(true));

    // Write-through (a weigher makes the write keep a copy of the key).
    let through = Cache::builder()
        .max_capacity(100)
        .weigher(|_: &Key, _: &u64| 1)
        .write_through(Memory::default())
        .build()
        .unwrap();
    through.put(Key(1), 10).unwrap();
    refuse_next_clone();
    assert!(catch_unwind(AssertUnwindSafe(|| through.put(Key(1), 20))).is_err());
    REFUSE_NEXT_CLONE.with(|refuse| refuse.set(false));
    assert_eq!(through.store().0.lock().unwrap().get(&1), Some(&20));
    assert_eq!(
        through.peek(&Key(1)),
        None,
        "the replaced value is not cached"
    );
    assert_eq!(through.get(&Key(1)), Ok(Some(20)));

    // Write-back: the second write of a waiting key joins it in the queue.
    let back = Cache::builder()
        .max_capacity(100)
        .weigher(|_: &Key, _: &u64| 1)
        .write_back(
            Memory::default(),
            WriteBack::default().max_delay(Duration::MAX),
        )
        .build()
        .unwrap();
    back.put(Key(1), 10).unwrap();
    refuse_next_clone();
    assert!(catch_unwind(AssertUnwindSafe(|| back.put(Key(1), 20))).is_err());
    REFUSE_NEXT_CLONE.with(|refuse| refuse.set(false));
    assert_eq!(
        back.get(&Key(1)),
        Ok(Some(20)),
        "reads find the queued write"
    );
    back.flush().unwrap();
    assert_eq!(back.store().0.lock().unwrap().get(&1), Some(&20));
    assert_eq!(back.get(&Key(1)), Ok(Some(20)));
}

/// A key whose `Clone` panics while the queue takes its write leaves the
/// queue as it was: the put fails whole, no write is left that would never
/// be sent, and its key holds no room.
#[test]
fn a_key_clone_panicking_while_a_write_is_queued_leaves_the_queue_unchanged() {
    thread_local! {
        /// Clones of a key this thread may still make before one panics.
        static CLONES_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
    }
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Key(u64);
    impl Clone for Key {
        fn clone(&self) -> Self {
            let left = CLONES_LEFT.with(|left| left.get());
            assert!(left > 0, "the key refuses to be cloned");
            CLONES_LEFT.with(|l| l.set(left - 1));
            Key(self.0)
        }
    }
    #[derive(Default)]
    struct Memory(Mutex<HashMap<u64, u64>>);
    impl Store<Key, u64> for Memory {
        type Error = String;
        fn load(&self, k: &Key) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(&k.0).copied())
        }
        fn write(&self, op: &Op<Key, u64>) -> Result<(), String> {
            match op {
                Op::Put(k, v) => self.0.lock().unwrap().insert(k.0, *v),
                Op::Delete(k) => self.0.lock().unwrap().remove(&k.0),
            };
            Ok(())
        }
    }
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            Memory::default(),
            WriteBack::default()
                .max_delay(Duration::MAX)
                .queue_capacity(1)
                .backpressure(Backpressure::Fail),
        )
        .build()
        .unwrap();
    // A new key's write clones it twice on its way into the queue: the
    // second clone panics.
    CLONES_LEFT.with(|left| left.set(1));
    assert!(catch_unwind(AssertUnwindSafe(|| cache.put(Key(1), 10))).is_err());
    CLONES_LEFT.with(|left| left.set(u32::MAX));
    assert_eq!(cache.write_stats().dirty, 0, "no room held");
    assert_eq!(
        cache.get(&Key(1)),
        Ok(None),
        "the failed put changed nothing"
    );
    cache.put(Key(2), 20).unwrap();
    cache.flush().unwrap();
    assert_eq!(cache.store().0.lock().unwrap().get(&2), Some(&20));
    assert_eq!(cache.write_stats().accepted, 1);
}

// ------------------------------------------- write-back: reports put back twice

/// A store that refuses puts of odd values, or every write while `down`.
struct OddRefused<K = u64> {
    data: Mutex<HashMap<K, u64>>,
    down: bool,
}

impl<K> Default for OddRefused<K> {
    fn default() -> Self {
        Self {
            data: Mutex::default(),
            down: false,
        }
    }
}

impl<K> OddRefused<K> {
    /// One that refuses every write.
    fn down() -> Self {
        Self {
            down: true,
            ..Self::default()
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static> Store<K, u64> for OddRefused<K> {
    type Error = String;

    fn load(&self, key: &K) -> Result<Option<u64>, String> {
        Ok(self.data.lock().unwrap().get(key).copied())
    }

    fn write(&self, op: &Op<K, u64>) -> Result<(), String> {
        match op {
            _ if self.down => return Err("down".into()),
            Op::Put(_, v) if v % 2 == 1 => return Err("odd values are refused".into()),
            Op::Put(k, v) => self.data.lock().unwrap().insert(k.clone(), *v),
            Op::Delete(k) => self.data.lock().unwrap().remove(k),
        };
        Ok(())
    }
}

type OddCache =
    Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteBehind<u64, u64, OddRefused>>;

/// A cache whose listener runs `listener` on each value dropped, after a
/// write of 7 = 1 that the store refused.
fn with_7_failed(listener: impl Fn(u64) + Send + Sync + 'static) -> OddCache {
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |_k: u64, v: u64, _| listener(v))
        .write_back(OddRefused::default(), given_up_at_once())
        .build()
        .unwrap();
    cache.put(7, 1).unwrap();
    wait_until("7 = 1 to fail", || cache.write_stats().failed == 1);
    cache
}

/// Key 7 reads as its latest acknowledged write, 3, which the store does not
/// hold; the next `flush` reports `expected`, in that order.
fn reads_7_as_3_and_reports(cache: &OddCache, expected: &[Op<u64, u64>]) {
    assert_eq!(
        cache.get(&7),
        Ok(Some(3)),
        "a read went back to an older write"
    );
    let report = cache.flush().unwrap_err();
    let ops: Vec<_> = report.failed.into_iter().map(|f| f.op).collect();
    assert_eq!(
        ops, expected,
        "a failed write dropped, or reported out of order"
    );
}

fn given_up_at_once() -> WriteBack {
    WriteBack::default()
        .retries(0, Duration::ZERO)
        .max_delay(Duration::from_millis(1))
}

/// Two reports of one key out at once, both put back (the listener panics
/// as each `flush` drops the key's copy), the older first: the key still
/// reads as its newest write, and the next report lists the two in the
/// order they were accepted.
#[test]
fn reports_put_back_in_either_order_keep_the_newest_write_last() {
    let (entered_tx, entered) = std::sync::mpsc::channel::<u64>();
    let (go1_tx, go1) = std::sync::mpsc::channel::<()>();
    let (go3_tx, go3) = std::sync::mpsc::channel::<()>();
    let (entered_tx, go1, go3) = (Mutex::new(entered_tx), Mutex::new(go1), Mutex::new(go3));
    let cache = with_7_failed(move |v| {
        let gate = match v {
            1 => &go1,
            3 => &go3,
            _ => return,
        };
        entered_tx.lock().unwrap().send(v).unwrap();
        gate.lock().unwrap().recv().unwrap();
        panic!("the listener panics on {v}");
    });
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let (go1_tx, go3_tx) = (go1_tx, go3_tx);
        let first = s.spawn(|| catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
        assert_eq!(
            recv_within("the listener", &entered),
            1,
            "the report of 7 = 1 is out"
        );
        cache.put(7, 3).unwrap();
        wait_until("7 = 3 to fail", || cache.write_stats().failed == 2);
        let second = s.spawn(|| catch_unwind(AssertUnwindSafe(|| cache.flush())).is_err());
        assert_eq!(
            recv_within("the listener", &entered),
            3,
            "the report of 7 = 3 is out"
        );
        go1_tx.send(()).unwrap();
        assert!(first.join().unwrap(), "the older report is put back first");
        go3_tx.send(()).unwrap();
        assert!(second.join().unwrap(), "then the newer one");
    });
    reads_7_as_3_and_reports(&cache, &[Op::Put(7, 1), Op::Put(7, 3)]);
}

/// While a report of a key is out, a newer write of it is stored and a
/// newer one still fails; that one's report, put back, is not taken for
/// superseded by the stored write, which is older.
#[test]
fn a_put_back_failure_newer_than_a_write_stored_meanwhile_is_still_reported() {
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (entered_tx, go) = (Mutex::new(entered_tx), Mutex::new(go));
    let cache = with_7_failed(move |v| match v {
        1 => {
            // Slow, so that this report stays out.
            entered_tx.lock().unwrap().send(()).unwrap();
            go.lock().unwrap().recv().unwrap();
        }
        3 => panic!("the listener panics on 3"),
        _ => {}
    });
    std::thread::scope(|s| {
        // Dropped should an assertion fail, so that the thread it holds ends.
        let go_tx = go_tx;
        let first = s.spawn(|| cache.flush().unwrap_err().failed.len());
        recv_within("the listener", &entered);
        cache.put(7, 2).unwrap();
        wait_until("7 = 2 to be stored", || cache.write_stats().stored == 1);
        cache.put(7, 3).unwrap();
        wait_until("7 = 3 to fail", || cache.write_stats().failed == 2);
        let put_back = catch_unwind(AssertUnwindSafe(|| cache.flush()));
        assert!(put_back.is_err(), "the listener's panic reached the caller");
        go_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), 1);
    });
    reads_7_as_3_and_reports(&cache, &[Op::Put(7, 3)]);
}

/// One key written again and again while the store is down: each failed
/// write is held for its report and takes room, so the queue fills and
/// refuses writes instead of holding ever more failures.
#[test]
fn a_key_written_again_and_again_while_the_store_is_down_fills_the_queue() {
    let settings = given_up_at_once()
        .queue_capacity(2)
        .backpressure(Backpressure::Fail)
        .max_delay(Duration::ZERO);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(OddRefused::down(), settings)
        .build()
        .unwrap();
    let mut accepted = 0;
    for i in 0..400u64 {
        if cache.put(1, i).is_ok() {
            accepted += 1;
        }
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    wait_until("the queue to settle", || {
        let stats = cache.write_stats();
        stats.failed + stats.coalesced == stats.accepted
    });
    let held = cache.flush().unwrap_err().failed.len();
    assert!(accepted > 0);
    assert!(held <= 4, "{held} failed writes held for a queue of 2");
    assert!(cache.put(1, 1000).is_ok(), "the report freed the room");
}

/// A key whose `Hash` panics on the thread that armed it, once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flaky(u64);

thread_local! {
    static FLAKY_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl std::hash::Hash for Flaky {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        if FLAKY_ARMED.with(|armed| armed.replace(false)) {
            panic!("a key's hash panics");
        }
        self.0.hash(h);
    }
}

/// A key's `Hash` panicking as `flush` takes its report: the panic reaches
/// the caller and the report waits, whole, for the next `flush`.
#[test]
fn a_hash_panicking_as_flush_takes_its_report_loses_nothing() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(OddRefused::down(), given_up_at_once())
        .build()
        .unwrap();
    cache.put(Flaky(1), 10).unwrap();
    cache.put(Flaky(2), 20).unwrap();
    wait_until("both to fail", || cache.write_stats().failed == 2);
    FLAKY_ARMED.with(|armed| armed.set(true));
    let panicked = catch_unwind(AssertUnwindSafe(|| cache.flush()));
    assert!(panicked.is_err(), "the hash's panic reached the caller");
    assert!(
        !FLAKY_ARMED.with(std::cell::Cell::get),
        "the armed hash ran"
    );
    assert_eq!(cache.get(&Flaky(1)), Ok(Some(10)), "still pending");
    let mut ops: Vec<_> = cache
        .flush()
        .unwrap_err()
        .failed
        .into_iter()
        .map(|f| f.op)
        .collect();
    ops.sort_by_key(|op| op.key().0);
    assert_eq!(ops, [Op::Put(Flaky(1), 10), Op::Put(Flaky(2), 20)]);
    assert!(cache.flush().is_ok(), "reported once");
    assert_eq!(cache.write_stats().dirty, 0);
}

/// `on_write_failure` called twice: the later handler is the one used.
#[test]
fn a_second_failure_handler_replaces_the_first() {
    let (first, second) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (one, two) = (first.clone(), second.clone());
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(OddRefused::down(), given_up_at_once())
        .on_write_failure(move |_| {
            one.fetch_add(1, Ordering::SeqCst);
        })
        .on_write_failure(move |_| {
            two.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    cache.put(1, 2).unwrap();
    wait_until("the failure to be handed over", || {
        second.load(Ordering::SeqCst) == 1
    });
    assert!(cache.flush().is_ok(), "handed over, not reported");
    assert_eq!(first.load(Ordering::SeqCst), 0);
}

/// A write behind its key's write in flight takes no more room: with the
/// queue full, it is accepted, not refused.
#[test]
fn a_write_behind_its_keys_write_in_flight_takes_no_more_room() {
    let (db, cache) = behind_a_closed_gate(1, Backpressure::Fail);
    cache.put(1, 1).unwrap();
    wait_until("1 = 1 to be in flight", || {
        db.arrived.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        cache.put(2, 2),
        Err(WriteError::QueueFull),
        "the queue is full"
    );
    assert_eq!(cache.put(1, 2), Ok(()), "key 1 is dirty already");
    db.open_gate();
    cache.flush().unwrap();
    assert_eq!(db.log(), [Op::Put(1, 1), Op::Put(1, 2)]);
}

/// Key comparisons, counted by `Counted`'s `Eq`: of keys below
/// `REWRITTEN`, and of keys from it on (two tests run side by side).
static EQ_CALLS: AtomicU64 = AtomicU64::new(0);
static EQ_CALLS_REWRITTEN: AtomicU64 = AtomicU64::new(0);
const REWRITTEN: u64 = 10_000_000;

/// A key that counts its comparisons.
#[derive(Clone, Debug)]
struct Counted(u64);
impl std::hash::Hash for Counted {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}
impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        let calls = if self.0 < REWRITTEN {
            &EQ_CALLS
        } else {
            &EQ_CALLS_REWRITTEN
        };
        calls.fetch_add(1, Ordering::Relaxed);
        self.0 == other.0
    }
}
impl Eq for Counted {}

/// A store that refuses every write while `down`, and logs what it took.
#[derive(Default)]
struct Outage {
    down: AtomicBool,
    took: Mutex<Vec<u64>>,
}
impl Store<Counted, u64> for Arc<Outage> {
    type Error = &'static str;
    fn load(&self, _: &Counted) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<Counted, u64>) -> Result<(), Self::Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err("down");
        }
        self.took.lock().unwrap().push(op.key().0);
        Ok(())
    }
}

type OutageCache =
    Cache<Counted, u64, larder::DefaultHashBuilder, larder::WriteBehind<Counted, u64, Arc<Outage>>>;

/// A write-back cache that sends at once and gives up at the first refusal,
/// over a store that is down.
fn cache_over_a_store_that_is_down() -> (OutageCache, Arc<Outage>) {
    let store = Arc::new(Outage::default());
    store.down.store(true, Ordering::SeqCst);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            store.clone(),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    (cache, store)
}

/// With the store down and thousands of failures left unreported (no
/// failure handler, no `flush` yet), a read of a clean key and the storing
/// of a new key's write compare a handful of keys, not every unreported
/// failure's: both did, under the queue lock (1,000 reads took 0.3–0.4 s
/// instead of under 1 ms with 60,000 failures).
#[test]
fn unreported_failures_are_not_scanned_by_reads_and_stored_writes() {
    let (cache, store) = cache_over_a_store_that_is_down();
    let failures = 5_000u64;
    for k in 0..failures {
        cache.put(Counted(k), k).unwrap();
    }
    wait_until("the failures", || cache.write_stats().failed == failures);
    EQ_CALLS.store(0, Ordering::SeqCst);
    for k in 0..100 {
        assert_eq!(cache.get(&Counted(1_000_000 + k)), Ok(None));
    }
    let reads = EQ_CALLS.swap(0, Ordering::SeqCst);
    assert!(reads < 100 * 10, "100 reads compared {reads} keys");
    store.down.store(false, Ordering::SeqCst);
    for k in 0..100 {
        cache.put(Counted(2_000_000 + k), k).unwrap();
    }
    wait_until("the new writes", || store.took.lock().unwrap().len() == 100);
    let writes = EQ_CALLS.swap(0, Ordering::SeqCst);
    assert!(writes < 100 * 20, "100 writes compared {writes} keys");
    // The failures are still reported, once.
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed.len() as u64, failures);
    assert!(cache.flush().is_ok());
}

/// Once the store is back, the keys whose writes failed are written again:
/// each stored write drops its key's own unreported failure without
/// comparing the key with every other unreported failure's (it did: 2,000
/// rewrites compared 2,011,170 keys), and the failures it superseded
/// are no longer reported.
#[test]
fn writing_failed_keys_again_does_not_scan_every_unreported_failure() {
    let (cache, store) = cache_over_a_store_that_is_down();
    let failures = 2_000u64;
    let base = REWRITTEN;
    for k in 0..failures {
        cache.put(Counted(base + k), k).unwrap();
    }
    wait_until("the failures", || cache.write_stats().failed == failures);
    store.down.store(false, Ordering::SeqCst);
    let before = EQ_CALLS_REWRITTEN.load(Ordering::SeqCst);
    for k in 0..failures {
        cache.put(Counted(base + k), k + 1).unwrap();
    }
    // The flusher counts a failure superseded after the store has taken the
    // write that supersedes it: wait for both.
    wait_until("the rewrites", || {
        store.took.lock().unwrap().len() as u64 == failures
            && cache.write_stats().superseded >= failures
    });
    let compared = EQ_CALLS_REWRITTEN.load(Ordering::SeqCst) - before;
    assert!(
        compared < failures * 20,
        "{failures} rewrites compared {compared} keys"
    );
    assert_eq!(cache.write_stats().superseded, failures);
    assert!(cache.flush().is_ok(), "nothing left to report");
}

thread_local! {
    /// Hashes of `Fickle` keys to let through on this thread before one panics.
    static FICKLE_COUNTDOWN: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// A key whose `Hash` panics on this thread once `FICKLE_COUNTDOWN` runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fickle(u64);

impl std::hash::Hash for Fickle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(left) = FICKLE_COUNTDOWN.with(|c| c.get()) {
            FICKLE_COUNTDOWN.with(|c| c.set(left.checked_sub(1)));
            assert!(left != 0, "the key's hash panics");
        }
        self.0.hash(state);
    }
}

/// Refuses every write.
struct Refuses;

impl Store<Fickle, u64> for Refuses {
    type Error = &'static str;
    fn load(&self, _: &Fickle) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, _: &Op<Fickle, u64>) -> Result<(), Self::Error> {
        Err("down")
    }
}

/// A `flush` whose report meets a key's panicking `Hash` puts the report
/// back whole: the writes their slots still hold take their keys' queue
/// room once, as before the flush. Counting each as held by no slot as well
/// took it twice until the next report: a queue of four holding three
/// failed keys refused a fourth. Every hash the report runs is tried.
#[test]
fn a_report_put_back_by_a_panicking_hash_takes_its_keys_room_once() {
    for countdown in 0..12 {
        let cache = Cache::builder()
            .max_capacity(100)
            .write_back(
                Refuses,
                WriteBack::default()
                    .retries(0, Duration::ZERO)
                    .max_delay(Duration::ZERO)
                    .queue_capacity(4)
                    .backpressure(Backpressure::Fail),
            )
            .build()
            .unwrap();
        for k in 1..=3 {
            cache.put(Fickle(k), 10 * k).unwrap();
        }
        wait_until("the failures", || cache.write_stats().failed == 3);
        FICKLE_COUNTDOWN.with(|c| c.set(Some(countdown)));
        let flushed = catch_unwind(AssertUnwindSafe(|| cache.flush()));
        FICKLE_COUNTDOWN.with(|c| c.set(None));
        let mut reported: Vec<u64> = match flushed {
            Ok(Err(report)) => report.failed.iter().map(|f| f.op.key().0).collect(),
            Ok(Ok(())) => panic!("three writes failed"),
            Err(_) => Vec::new(),
        };
        for k in 1..=3 {
            if !reported.contains(&k) {
                assert_eq!(
                    cache.get(&Fickle(k)),
                    Ok(Some(10 * k)),
                    "countdown {countdown}"
                );
            }
        }
        // One key more fits (three failed keys, or none once reported, in a
        // queue of four).
        assert_eq!(cache.put(Fickle(10), 100), Ok(()), "countdown {countdown}");
        wait_until("the fourth failure", || cache.write_stats().failed == 4);
        // And every failure is reported once, in order.
        match cache.flush() {
            Ok(()) => {}
            Err(report) => reported.extend(report.failed.iter().map(|f| f.op.key().0)),
        }
        assert_eq!(reported, vec![1, 2, 3, 10], "countdown {countdown}");
    }
}

/// Refuses odd values; holds each call while the gate is shut.
#[derive(Clone, Default)]
struct GatedOdd(Arc<(Mutex<bool>, Condvar, AtomicU64)>);

impl GatedOdd {
    fn shut(&self, shut: bool) {
        *self.0 .0.lock().unwrap() = shut;
        self.0 .1.notify_all();
    }

    fn arrived(&self) -> u64 {
        self.0 .2.load(Ordering::SeqCst)
    }
}

impl Store<u64, u64> for GatedOdd {
    type Error = &'static str;
    fn load(&self, _: &u64) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<u64, u64>) -> Result<(), Self::Error> {
        let (gate, moved, arrived) = &*self.0;
        arrived.fetch_add(1, Ordering::SeqCst);
        let mut shut = gate.lock().unwrap();
        while *shut {
            shut = moved.wait(shut).unwrap();
        }
        match op {
            Op::Put(_, v) if v % 2 == 1 => Err("odd"),
            _ => Ok(()),
        }
    }
}

type GatedOddCache =
    Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteBehind<u64, u64, GatedOdd>>;

fn gated_odd_cache(queue: usize) -> (GatedOddCache, GatedOdd) {
    let store = GatedOdd::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            store.clone(),
            WriteBack::default()
                .retries(0, Duration::ZERO)
                .max_delay(Duration::ZERO)
                .queue_capacity(queue)
                .backpressure(Backpressure::Fail),
        )
        .build()
        .unwrap();
    (cache, store)
}

/// A key's writes failing one after another: each failure its slot lets go
/// of for the next is held by no slot and takes room, so that a store that
/// is down cannot make them pile up. While those leave room, the key's next
/// write is let in; once they fill the queue, it is refused.
#[test]
fn one_keys_failures_fill_the_queue_then_refuse_its_writes() {
    let (cache, _store) = gated_odd_cache(4);
    for (n, v) in (1..=5u64).map(|n| (n, 2 * n + 1)) {
        cache.put(7, v).unwrap();
        wait_until("the failure", || cache.write_stats().failed == n);
    }
    // Four failures held by no slot, the latest by the key's slot.
    assert_eq!(cache.put(7, 13), Err(WriteError::QueueFull));
    let report = cache.flush().unwrap_err();
    let values: Vec<u64> = report
        .failed
        .iter()
        .map(|f| match f.op {
            Op::Put(_, v) => v,
            Op::Delete(_) => 0,
        })
        .collect();
    assert_eq!(values, vec![3, 5, 7, 9, 11]);
    assert_eq!(cache.put(7, 13), Ok(()), "room again once reported");
}

/// A failure held by no slot (its key's next write was waiting when it
/// failed) and superseded by that write, stored, gives its room back: were
/// it to stay taken, every such outage would cost the queue a key's room.
#[test]
fn a_superseded_failure_held_by_no_slot_gives_its_room_back() {
    let (cache, store) = gated_odd_cache(2);
    for round in 0..3u64 {
        store.shut(true);
        let arrived = store.arrived();
        cache.put(7, 2 * round + 1).unwrap(); // refused, once let through
        wait_until("the write in flight", || store.arrived() == arrived + 1);
        cache.put(7, 2 * round + 2).unwrap(); // waits behind it, then stored
        store.shut(false);
        wait_until("the stored write", || {
            let stats = cache.write_stats();
            stats.stored == round + 1 && stats.superseded == round + 1
        });
    }
    // Two keys fit a queue of two: nothing is left taking room.
    cache.put(1, 1).unwrap();
    wait_until("the first failure", || cache.write_stats().failed == 4);
    assert_eq!(cache.put(2, 1), Ok(()));
    wait_until("the second failure", || cache.write_stats().failed == 5);
    let report = cache.flush().unwrap_err();
    let keys: Vec<u64> = report.failed.iter().map(|f| *f.op.key()).collect();
    assert_eq!(keys, vec![1, 2], "the superseded failures are not reported");
}

/// Refuses every write and notes when each call came.
#[derive(Clone, Default)]
struct Stamps(Arc<Mutex<Vec<std::time::Instant>>>);

impl Store<u64, u64> for Stamps {
    type Error = &'static str;
    fn load(&self, _: &u64) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }
    fn write(&self, _: &Op<u64, u64>) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(std::time::Instant::now());
        Err("down")
    }
}

/// Retries back off exponentially: each wait at least twice the one
/// before, from the first backoff, up to `max_backoff` (lower bounds only:
/// a sleep never ends early).
#[test]
fn retries_back_off_doubling_each_time() {
    let store = Stamps::default();
    let backoff = Duration::from_millis(20);
    let cache = Cache::builder()
        .max_capacity(10)
        .write_back(
            store.clone(),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(3, backoff)
                .max_backoff(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    cache.put(1, 1).unwrap();
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed[0].attempts, 4);
    let stamps = store.0.lock().unwrap().clone();
    assert_eq!(stamps.len(), 4);
    for (i, pair) in stamps.windows(2).enumerate() {
        let least = backoff * (1 << i);
        assert!(
            pair[1] - pair[0] >= least,
            "wait {i} was {:?}, under {least:?}",
            pair[1] - pair[0]
        );
    }
}

/// A store that says when it is dropped, and whose writes fail when `fail`
/// is set (but `spared`); every write but the first waits while `held` is
/// set.
#[derive(Default)]
struct Telling {
    /// Dropped with the store, which is what it tells.
    _dropped: Told,
    fail: bool,
    spared: Option<Op<u64, u64>>,
    held: Arc<AtomicBool>,
    calls: AtomicU64,
}

impl Store<u64, u64> for Telling {
    type Error = String;
    fn load(&self, _: &u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    fn write(&self, op: &Op<u64, u64>) -> Result<(), String> {
        if self.calls.fetch_add(1, Ordering::SeqCst) > 0 {
            while self.held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.fail && self.spared.as_ref() != Some(op) {
            Err("down".into())
        } else {
            Ok(())
        }
    }
}

/// Sets its flag when dropped.
#[derive(Default)]
struct Told(Arc<AtomicBool>);

impl Drop for Told {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Dropping the last handle does what `close` does, the store's own drop
/// included (a buffer it flushes, a connection it shuts): it ran on the
/// flusher thread, after the drop had returned.
#[test]
fn dropping_the_last_handle_drops_the_store_before_returning() {
    for round in 0..20 {
        let dropped = Arc::new(AtomicBool::new(false));
        let store = Telling {
            _dropped: Told(dropped.clone()),
            ..Telling::default()
        };
        let cache = Cache::builder()
            .max_capacity(10)
            .write_back(store, WriteBack::default().drop_wait(Duration::MAX))
            .build()
            .unwrap();
        for k in 0..10 {
            cache.put(k, k).unwrap();
        }
        drop(cache);
        assert!(dropped.load(Ordering::SeqCst), "round {round}");
    }
}

/// What a dropped write-back cache says on stderr must not panic when
/// stderr is gone (a closed pipe): the drop may run while its thread
/// unwinds, and a second panic aborts. Runs itself again as a child process
/// whose stderr is a pipe the parent has closed.
#[test]
fn a_dropped_write_back_cache_with_stderr_closed_does_not_panic() {
    if std::env::var_os("LARDER_TEST_CHILD_EPIPE").is_some() {
        let cache = Cache::builder()
            .max_capacity(10)
            .write_back(
                Telling {
                    fail: true,
                    ..Telling::default()
                },
                WriteBack::default()
                    .retries(0, Duration::ZERO)
                    .max_delay(Duration::ZERO),
            )
            .build()
            .unwrap();
        cache.put(1, 1).unwrap();
        wait_until("the write refused", || cache.write_stats().failed == 1);
        // The parent has closed its end of stderr once stdin ends.
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
        // Dropped while unwinding: a panic there would abort.
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _cache = cache;
            std::panic::resume_unwind(Box::new("unwinding"));
        }));
        assert!(unwound.is_err());
        println!("CHILD: dropped");
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_dropped_write_back_cache_with_stderr_closed_does_not_panic",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("LARDER_TEST_CHILD_EPIPE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD: dropped"),
        "the child failed ({:?}):\n{stdout}",
        out.status
    );
}

/// A write-back cache dropped while its flusher still sends says on stderr
/// what its store had refused and what was unsent; the flusher then says
/// what it went on to lose, counting no write twice. Runs itself again as
/// a child process, whose stderr it reads.
#[test]
fn a_dropped_write_back_cache_counts_each_lost_write_once_on_stderr() {
    if std::env::var_os("LARDER_TEST_CHILD_COUNT").is_some() {
        let dropped = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(true));
        let cache = Cache::builder()
            .max_capacity(10)
            .write_back(
                Telling {
                    _dropped: Told(dropped.clone()),
                    fail: true,
                    held: held.clone(),
                    ..Telling::default()
                },
                WriteBack::default()
                    .batch(1)
                    .max_delay(Duration::ZERO)
                    .retries(0, Duration::ZERO)
                    .drop_wait(Duration::from_millis(30)),
            )
            .build()
            .unwrap();
        for k in 0..5 {
            cache.put(k, k).unwrap();
        }
        // The first write is refused before the drop and the second held in
        // the store until after it: the drop gives up waiting for four.
        wait_until("a write refused", || cache.write_stats().failed == 1);
        drop(cache);
        held.store(false, Ordering::SeqCst);
        // The flusher drops the store as its thread ends, after its line.
        wait_until("the store dropped", || dropped.load(Ordering::SeqCst));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_dropped_write_back_cache_counts_each_lost_write_once_on_stderr",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("LARDER_TEST_CHILD_COUNT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{stderr}");
    // The number before `word` on the line holding `line`.
    let count = |line: &str, word: &str| -> usize {
        let line = stderr.lines().find(|l| l.contains(line)).unwrap_or("");
        let before = line.split(word).next().unwrap_or("");
        before
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {word:?} in:\n{stderr}"))
    };
    let refused = count("was dropped with", " write(s) its store refused");
    let unsent = count("was dropped with", " not yet stored");
    assert_eq!((refused, unsent), (1, 4), "{stderr}");
    let later = count(
        "after its last handle was dropped",
        " write(s) of a write-back",
    );
    assert_eq!(later, unsent, "refused writes counted twice:\n{stderr}");
}

/// A value whose `Drop` panics for 13 on the flusher thread.
#[derive(Clone, Debug, PartialEq)]
struct Fragile(u64);

impl Drop for Fragile {
    fn drop(&mut self) {
        let on_flusher = std::thread::current().name() == Some("larder-flusher");
        if self.0 == 13 && on_flusher && !std::thread::panicking() {
            panic!("13 will not be dropped quietly there");
        }
    }
}

#[derive(Default)]
struct FragileDb(Mutex<HashMap<u64, u64>>);

impl Store<u64, Fragile> for FragileDb {
    type Error = String;
    fn load(&self, k: &u64) -> Result<Option<Fragile>, String> {
        Ok(self.0.lock().unwrap().get(k).map(|&v| Fragile(v)))
    }
    fn write(&self, op: &Op<u64, Fragile>) -> Result<(), String> {
        let mut data = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(*k, v.0),
            Op::Delete(k) => data.remove(k),
        };
        Ok(())
    }
}

/// The flusher drops each write once it is stored or given up on: a value
/// whose `Drop` panics there is the value's business, and the flusher goes
/// on (it died, and every later write was refused as `Closed`).
#[test]
fn a_values_panicking_drop_on_the_flusher_does_not_stop_it() {
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            FragileDb::default(),
            WriteBack::default().max_delay(Duration::ZERO),
        )
        .build()
        .unwrap();
    cache.put(1, Fragile(13)).unwrap();
    cache.flush().unwrap();
    assert_eq!(cache.store().0.lock().unwrap().get(&1), Some(&13));
    cache.put(2, Fragile(20)).unwrap();
    cache.flush().unwrap();
    assert_eq!(cache.store().0.lock().unwrap().get(&2), Some(&20));
    cache.close().unwrap();
}

/// A store call is counted as it starts: `write_stats` shows a batch in
/// the store's hands (or retried through an outage) before it is settled.
#[test]
fn store_calls_are_counted_as_they_start() {
    let db = Db::new();
    db.close_gate();
    let cache = write_back(&db, WriteBack::default().max_delay(Duration::ZERO), 10);
    cache.put(1, 10).unwrap();
    wait_until("the call at the gate", || {
        db.arrived.load(Ordering::SeqCst) == 1
    });
    let stats = cache.write_stats();
    assert_eq!((stats.store_calls, stats.retries, stats.stored), (1, 0, 0));
    db.open_gate();
    cache.flush().unwrap();
    let stats = cache.write_stats();
    assert_eq!(
        (stats.store_calls, stats.retries, stats.stored),
        (1, 0, 1),
        "counted once"
    );
}

/// `queued` is the room the backpressure weighs: a key written again while
/// the store is down holds a unit per failure, though it is one dirty key.
#[test]
fn queued_counts_the_room_a_keys_failures_hold() {
    let db = Db::with_faults(Faults {
        fail: 100,
        ..Faults::default()
    });
    let settings = WriteBack::default()
        .max_delay(Duration::ZERO)
        .retries(0, Duration::ZERO)
        .queue_capacity(2)
        .backpressure(Backpressure::Fail);
    let cache = write_back(&db, settings, 10);
    cache.put(1, 1).unwrap();
    wait_until("the first write failed", || cache.write_stats().failed == 1);
    cache.put(1, 2).unwrap();
    wait_until("the second write failed", || {
        cache.write_stats().failed == 2
    });
    let stats = cache.write_stats();
    assert_eq!((stats.dirty, stats.queued), (1, 2));
    assert_eq!(cache.put(2, 2), Err(WriteError::QueueFull));
    let report = cache.flush().unwrap_err();
    assert_eq!(report.failed.len(), 2);
    let stats = cache.write_stats();
    assert_eq!((stats.dirty, stats.queued), (0, 0));
    assert_eq!(cache.put(2, 2), Ok(()), "the report freed the room");
}

thread_local! {
    /// Whether dropping a `Prickly(7)` panics on this thread.
    static DROP_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A key whose `Drop` panics for 7 while armed on this thread.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Prickly(u64);

impl Drop for Prickly {
    fn drop(&mut self) {
        if self.0 == 7 && DROP_ARMED.get() && !std::thread::panicking() {
            panic!("7 will not be dropped quietly");
        }
    }
}

/// Refuses writes while `down`.
#[derive(Default)]
struct FlakyDb {
    down: AtomicBool,
    data: Mutex<HashMap<u64, u64>>,
}

impl Store<Prickly, u64> for Arc<FlakyDb> {
    type Error = String;
    fn load(&self, k: &Prickly) -> Result<Option<u64>, String> {
        Ok(self.data.lock().unwrap().get(&k.0).copied())
    }
    fn write(&self, op: &Op<Prickly, u64>) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("down".into());
        }
        let mut data = self.data.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(k.0, *v),
            Op::Delete(k) => data.remove(&k.0),
        };
        Ok(())
    }
}

/// The queue keeps a copy of each reported key stored while its report is
/// out (the key's own, not a clone), and lets go of it as `flush` hands the
/// report over: a panic of that key's `Drop` must not cost the caller the
/// report (it was lost: the failure never reported, its cached copy gone).
#[test]
fn a_keys_panicking_drop_as_a_flush_ends_does_not_lose_the_report() {
    type C = Cache<
        Prickly,
        u64,
        larder::DefaultHashBuilder,
        larder::WriteBehind<Prickly, u64, Arc<FlakyDb>>,
    >;
    let db = Arc::new(FlakyDb::default());
    db.down.store(true, Ordering::SeqCst);
    let handle: Arc<Mutex<Option<C>>> = Arc::default();
    let in_listener = handle.clone();
    let db_in_listener = db.clone();
    let cache: C = Cache::builder()
        .max_capacity(10)
        .eviction_listener(move |k: Prickly, _, cause| {
            if k.0 != 7 || cause != larder::RemovalCause::Explicit {
                return;
            }
            drop(k);
            // While the report is out, the key is written again and stored.
            let cache = in_listener.lock().unwrap().take().unwrap();
            db_in_listener.down.store(false, Ordering::SeqCst);
            cache.put(Prickly(7), 2).unwrap();
            wait_until("the new write stored", || {
                db_in_listener.data.lock().unwrap().get(&7) == Some(&2)
            });
            drop(cache);
            DROP_ARMED.set(true);
        })
        .write_back(
            db.clone(),
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    *handle.lock().unwrap() = Some(cache.clone());
    cache.put(Prickly(7), 1).unwrap();
    wait_until("the write refused", || cache.write_stats().failed == 1);
    let flushed = catch_unwind(AssertUnwindSafe(|| cache.flush()));
    DROP_ARMED.set(false);
    let report = match flushed {
        Ok(Err(report)) => report,
        Ok(Ok(())) => panic!("the failure went unreported"),
        Err(_) => cache.flush().expect_err("the report lost with the panic"),
    };
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].op, Op::Put(Prickly(7), 1));
    assert_eq!(cache.get(&Prickly(7)), Ok(Some(2)));
    cache.close().unwrap();
}

/// What a `Locky` key's `Drop` on the flusher waits for, while armed.
static LOCKY_GATE: Mutex<()> = Mutex::new(());
static LOCKY_ARMED: AtomicBool = AtomicBool::new(false);

/// A key whose `Drop` on the flusher takes `LOCKY_GATE` while armed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Locky(u64);

impl Drop for Locky {
    fn drop(&mut self) {
        let on_flusher = std::thread::current().name() == Some("larder-flusher");
        if on_flusher && LOCKY_ARMED.load(Ordering::SeqCst) {
            drop(LOCKY_GATE.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

#[derive(Default)]
struct LockyDb;

impl Store<Locky, Brittle> for LockyDb {
    type Error = String;
    fn load(&self, _: &Locky) -> Result<Option<Brittle>, String> {
        Ok(None)
    }
    fn write(&self, _: &Op<Locky, Brittle>) -> Result<(), String> {
        Ok(())
    }
}

/// A flusher that has stopped may still run user code (the `Drop` of what
/// it let go of), and that code may wait for the thread dropping the
/// cache: the drop waits for the flusher's end no longer than `drop_wait`
/// (it waited for ever).
#[test]
fn a_flusher_stuck_in_a_drop_holds_the_caches_drop_no_longer_than_drop_wait() {
    let held = LOCKY_GATE.lock().unwrap();
    LOCKY_ARMED.store(true, Ordering::SeqCst);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(
            LockyDb,
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .drop_wait(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    // The flusher dies cloning 13 for its batch, then waits for the gate
    // as it drops the key it left queued.
    cache.put(Locky(1), Brittle(13)).unwrap();
    wait_until("the flusher gone", || {
        cache.put(Locky(99), Brittle(99)).is_err()
    });
    let (returned, wait) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(cache);
        returned.send(()).unwrap();
    });
    let in_time = wait.recv_timeout(Duration::from_secs(10)).is_ok();
    drop(held);
    dropper.join().unwrap();
    LOCKY_ARMED.store(false, Ordering::SeqCst);
    assert!(in_time, "the drop waited for the flusher past drop_wait");
}

/// As above, when a write stored after the drop supersedes a failure the
/// drop's line counted: the flusher's line still counts the write it went
/// on to lose (a count of failures took the superseded one off against it,
/// and the line went unsaid).
#[test]
fn a_dropped_write_back_cache_tells_of_a_loss_after_a_superseded_failure() {
    if std::env::var_os("LARDER_TEST_CHILD_SUPERSEDED").is_some() {
        let dropped = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(true));
        let cache = Cache::builder()
            .max_capacity(10)
            .write_back(
                Telling {
                    _dropped: Told(dropped.clone()),
                    fail: true,
                    spared: Some(Op::Put(1, 2)),
                    held: held.clone(),
                    ..Telling::default()
                },
                WriteBack::default()
                    .batch(1)
                    .max_delay(Duration::ZERO)
                    .retries(0, Duration::ZERO)
                    .drop_wait(Duration::from_millis(30)),
            )
            .build()
            .unwrap();
        cache.put(1, 1).unwrap();
        wait_until("the first write refused", || {
            cache.write_stats().failed == 1
        });
        // Held until after the drop: (1, 2) is stored, superseding (1, 1)'s
        // failure, and (2, 2) is refused.
        cache.put(1, 2).unwrap();
        cache.put(2, 2).unwrap();
        drop(cache);
        held.store(false, Ordering::SeqCst);
        wait_until("the store dropped", || dropped.load(Ordering::SeqCst));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_dropped_write_back_cache_tells_of_a_loss_after_a_superseded_failure",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("LARDER_TEST_CHILD_SUPERSEDED", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{stderr}");
    assert!(
        stderr.contains("dropped with 1 write(s) its store refused and 2 not yet stored"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the store refused 1 write(s) of a write-back cache after its last"),
        "the write lost after the drop went unmentioned:\n{stderr}"
    );
}

static LOUD_ARMED: AtomicBool = AtomicBool::new(false);

/// A value whose `Drop` panics from 13 up while armed, even while its
/// thread unwinds already (so that two of them in one drop would abort).
#[derive(Clone, Debug, PartialEq)]
struct Loud(u64);

impl Drop for Loud {
    fn drop(&mut self) {
        if self.0 >= 13 && LOUD_ARMED.load(Ordering::SeqCst) {
            panic!("{} will not be dropped quietly", self.0);
        }
    }
}

#[derive(Default)]
struct LoudDb(Mutex<HashMap<u64, u64>>);

impl Store<u64, Loud> for LoudDb {
    type Error = String;
    fn load(&self, k: &u64) -> Result<Option<Loud>, String> {
        Ok(self.0.lock().unwrap().get(k).map(|&v| Loud(v)))
    }
    fn write(&self, op: &Op<u64, Loud>) -> Result<(), String> {
        let mut data = self.0.lock().unwrap();
        match op {
            Op::Put(k, v) => data.insert(*k, v.0),
            Op::Delete(k) => data.remove(k),
        };
        Ok(())
    }
}

/// Where the cache drops several keys or values at once (what the
/// flusher's batch let go of, what a sweep removed with no listener), each
/// `Drop` panic is caught alone: two in one drop aborted the process. Runs
/// itself again as a child process, which would abort.
#[test]
fn several_panicking_drops_at_once_do_not_abort() {
    if std::env::var_os("LARDER_TEST_CHILD_LOUD").is_some() {
        // The flusher drops the slot's copy of a stored write and the
        // batch's: both panic.
        let cache = Cache::builder()
            .max_capacity(100)
            .write_back(
                LoudDb::default(),
                WriteBack::default().max_delay(Duration::ZERO),
            )
            .build()
            .unwrap();
        let _ = cache.put(1, Loud(1));
        LOUD_ARMED.store(true, Ordering::SeqCst);
        cache.put(13, Loud(13)).unwrap();
        cache.flush().unwrap();
        cache.put(2, Loud(2)).unwrap();
        cache.flush().unwrap();
        assert_eq!(cache.store().0.lock().unwrap().get(&2), Some(&2));
        LOUD_ARMED.store(false, Ordering::SeqCst);
        drop(cache);
        // A sweep without a listener drops two such values.
        let plain: Cache<u64, Loud> = Cache::builder()
            .max_capacity(100)
            .shards(1)
            .build()
            .unwrap();
        for k in 10..20 {
            plain.insert(k, Loud(k));
        }
        LOUD_ARMED.store(true, Ordering::SeqCst);
        let swept = catch_unwind(AssertUnwindSafe(|| plain.invalidate_all()));
        LOUD_ARMED.store(false, Ordering::SeqCst);
        assert!(swept.is_err(), "the first panic reaches the caller");
        assert!(plain.is_empty());
        println!("CHILD: done");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "several_panicking_drops_at_once_do_not_abort"])
        .args(["--nocapture", "--test-threads=1"])
        .env("LARDER_TEST_CHILD_LOUD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD: done"),
        "the child failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
