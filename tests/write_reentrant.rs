//! Write-back lets go of keys and values outside its queue lock: a value whose
//! `Drop` reads its own cache (whose reads of a key not cached ask that queue)
//! must not hang a `put` that replaces it, the flusher that stores it, or a
//! `flush` that reports it, nor a `put` or `delete` whose dropped value
//! writes its own key — nor the flusher's death when a key's `Hash` panics,
//! nor a report put back after a listener's panic.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use larder::{Cache, DefaultHashBuilder, Op, Store, WriteBack, WriteBehind};

/// Write-back settings that send only when asked (`flush`), with `retries`.
fn manual(retries: u32) -> WriteBack {
    WriteBack::default()
        .max_delay(Duration::MAX)
        .retries(retries, Duration::ZERO)
}

/// Runs `f` on a thread of its own; fails if it has not returned in `secs`.
fn within(secs: u64, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(secs)).is_ok(),
        "{what} did not return within {secs} s"
    );
}

thread_local! {
    static IN_DROP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// A key the next value dropped on this thread writes, instead of reading.
    static WRITE_ON_DROP: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// A store that refuses every write when `down`, and the writes of
/// `down_for` if set.
#[derive(Clone, Default)]
struct Db {
    down: bool,
    down_for: Option<u32>,
    /// Refuses the first write of `down_for` only.
    once: bool,
    refused: Arc<std::sync::atomic::AtomicBool>,
    rows: Arc<Mutex<HashMap<u32, u32>>>,
}

impl Store<u32, Val> for Db {
    type Error = &'static str;
    fn load(&self, _: &u32) -> Result<Option<Val>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<u32, Val>) -> Result<(), Self::Error> {
        let refused = || self.refused.swap(true, std::sync::atomic::Ordering::SeqCst);
        if self.down || (self.down_for == Some(*op.key()) && !(self.once && refused())) {
            return Err("down");
        }
        let mut rows = self.rows.lock().unwrap();
        match op {
            Op::Put(k, v) => rows.insert(*k, v.0),
            Op::Delete(k) => rows.remove(k),
        };
        Ok(())
    }
}

type Wb = Cache<u32, Val, DefaultHashBuilder, WriteBehind<u32, Val, Db>>;

/// A value whose `Drop` reads a key its cache does not hold (a plain cache
/// drops values outside its locks, so this is allowed there too). Drops
/// within that read do not read again.
#[derive(Clone)]
struct Val(u32, Arc<OnceLock<Wb>>);

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Val({})", self.0)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        if IN_DROP.with(|d| d.replace(true)) {
            return;
        }
        if let Some(cache) = self.1.get() {
            match WRITE_ON_DROP.with(std::cell::Cell::take) {
                Some(key) => cache.put(key, Val(999, self.1.clone())).unwrap(),
                None => drop(cache.get(&999_999)),
            }
        }
        IN_DROP.with(|d| d.set(false));
    }
}

/// A write-back cache whose values hold a handle to it, and that handle.
fn cache(db: Db, retries: u32) -> (Wb, Arc<OnceLock<Wb>>) {
    let cache: Wb = Cache::builder()
        .max_capacity(100)
        .write_back(db, manual(retries))
        .build()
        .unwrap();
    let hook = Arc::new(OnceLock::new());
    let _ = hook.set(cache.clone());
    (cache, hook)
}

#[test]
fn a_put_drops_the_write_it_replaces_outside_the_queue_lock() {
    let (cache, hook) = cache(Db::default(), 5);
    within(10, "a put replacing a waiting write", move || {
        cache.put(1, Val(1, hook.clone())).unwrap();
        cache.put(1, Val(2, hook.clone())).unwrap();
        assert_eq!(cache.get(&1).unwrap().map(|v| v.0), Some(2));
    });
}

/// Nor inside the key's stripe, which `put` and `delete` hold until the cache has
/// the write: a value whose `Drop` writes the same key (or another of its
/// stripe) would wait for that stripe for good.
#[test]
fn a_write_drops_the_write_it_replaces_outside_the_keys_stripe() {
    let (cache, hook) = cache(Db::default(), 5);
    within(
        10,
        "a put whose replaced write's drop writes the key",
        move || {
            cache.put(1, Val(1, hook.clone())).unwrap();
            WRITE_ON_DROP.with(|k| k.set(Some(1)));
            cache.put(1, Val(2, hook.clone())).unwrap();
            assert_eq!(
                WRITE_ON_DROP.with(std::cell::Cell::get),
                None,
                "a dropped value wrote"
            );
            assert_eq!(cache.get(&1).unwrap().map(|v| v.0), Some(999));
            // A delete replacing a waiting write, whose value writes the
            // key again as it goes: that write comes after the delete.
            cache.put(1, Val(3, hook.clone())).unwrap();
            WRITE_ON_DROP.with(|k| k.set(Some(1)));
            cache.delete(&1).unwrap();
            assert_eq!(WRITE_ON_DROP.with(std::cell::Cell::get), None);
            assert_eq!(cache.get(&1).unwrap().map(|v| v.0), Some(999));
            assert!(cache.flush().is_ok());
        },
    );
}

#[test]
fn the_flusher_drops_stored_writes_outside_the_queue_lock() {
    let db = Db::default();
    let rows = db.rows.clone();
    let (cache, hook) = cache(db, 5);
    cache.put(1, Val(1, hook)).unwrap();
    within(10, "flush", move || {
        assert!(cache.flush().is_ok());
        cache.put(2, Val(2, cache_hook(&cache))).unwrap();
        assert!(cache.flush().is_ok());
    });
    assert_eq!(rows.lock().unwrap().get(&1), Some(&1));
    assert_eq!(rows.lock().unwrap().get(&2), Some(&2));
}

/// A handle to the cache for a value, as `cache` gives.
fn cache_hook(cache: &Wb) -> Arc<OnceLock<Wb>> {
    let hook = Arc::new(OnceLock::new());
    let _ = hook.set(cache.clone());
    hook
}

#[test]
fn a_flush_reporting_a_failure_drops_it_outside_the_queue_lock() {
    let (cache, hook) = cache(
        Db {
            down: true,
            ..Db::default()
        },
        0,
    );
    cache.put(1, Val(1, hook)).unwrap();
    within(10, "flush reporting a failed write", move || {
        let report = cache.flush().unwrap_err();
        assert_eq!(report.failed.len(), 1);
    });
}

#[test]
fn the_failure_handler_path_drops_writes_outside_the_queue_lock() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cache: Wb = Cache::builder()
        .max_capacity(100)
        .write_back(
            Db {
                down: true,
                ..Db::default()
            },
            manual(0),
        )
        .on_write_failure(move |failed| {
            let _ = tx.lock().unwrap().send(*failed.op.key());
        })
        .build()
        .unwrap();
    cache.put(1, Val(1, cache_hook(&cache))).unwrap();
    within(10, "flush with a failure handler", move || {
        assert!(cache.flush().is_ok());
        cache.put(2, Val(2, cache_hook(&cache))).unwrap();
        assert!(cache.flush().is_ok());
    });
    let mut heard: Vec<u32> = rx.try_iter().collect();
    heard.sort_unstable();
    assert_eq!(heard, vec![1, 2]);
}

/// A write-back cache over `db` whose listener, the first time it hears of
/// key 1, runs `on_key_1` with the cache and a handle for values.
fn listening_cache(
    db: Db,
    on_key_1: impl Fn(&Wb, &Arc<OnceLock<Wb>>) + Send + Sync + 'static,
) -> (Wb, Arc<OnceLock<Wb>>) {
    let hook: Arc<OnceLock<Wb>> = Arc::new(OnceLock::new());
    let in_listener = hook.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    let cache: Wb = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k: u32, _: Val, _| {
            if k == 1 && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let cache = in_listener.get().expect("set before the first write");
                on_key_1(cache, &in_listener);
            }
        })
        .write_back(db, manual(0))
        .build()
        .unwrap();
    let _ = hook.set(cache.clone());
    (cache, hook)
}

/// A write stored while a `flush`'s report is out (its listener, hearing the
/// failed write dropped, writes another key and flushes it) is booked as
/// stored meanwhile; its value used to go down with it under the queue lock.
#[test]
fn a_write_stored_while_a_report_is_out_drops_its_value_outside_the_queue_lock() {
    let nested = Arc::new(Mutex::new(None));
    let nested_out = nested.clone();
    let db = Db {
        down_for: Some(1),
        ..Db::default()
    };
    let (cache, hook) = listening_cache(db, move |cache, hook| {
        cache.put(2, Val(2, hook.clone())).unwrap();
        *nested_out.lock().unwrap() = Some(cache.flush().is_ok());
    });
    let rows = cache.store().rows.clone();
    cache.put(1, Val(1, hook.clone())).unwrap();
    within(
        10,
        "a flush whose listener flushes a write of another key",
        move || {
            assert_eq!(cache.flush().unwrap_err().failed.len(), 1);
        },
    );
    assert_eq!(*nested.lock().unwrap(), Some(true));
    assert_eq!(rows.lock().unwrap().get(&2), Some(&2));
}

/// Tens of keys (each test writes keys of its own tens) whose next hash
/// panics, once: armed by the store once it has a batch, for the flusher's
/// booking of that batch, or by a test.
static ARMED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Makes the next hash of a key of `tens` panic.
fn arm(tens: u32) {
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    if !armed.contains(&tens) {
        armed.push(tens);
    }
}

/// Whether a hash of a key of `tens` is still to panic.
fn armed(tens: u32) -> bool {
    ARMED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&tens)
}

/// Keys and values whose next `Clone` panics (once each).
static CLONE_PANICS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Whether `id`'s clone is one that panics.
fn clone_panics(id: u32) -> bool {
    let mut armed = CLONE_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let at = armed.iter().position(|&a| a == id);
    at.map(|at| armed.swap_remove(at)).is_some()
}

/// Makes `id`'s next `Clone` panic.
fn arm_clone(id: u32) {
    CLONE_PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(id);
}

/// A key whose `Hash` panics once when its tens are `ARMED`, and whose
/// `Clone` panics once when `CLONE_PANICS` names it.
#[derive(PartialEq, Eq, Debug)]
struct Touchy(u32);

impl Clone for Touchy {
    fn clone(&self) -> Self {
        if clone_panics(self.0) {
            panic!("the key's clone panics");
        }
        Touchy(self.0)
    }
}

thread_local! {
    /// Hashes of keys to let through on this thread before one panics.
    static HASH_COUNTDOWN: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(left) = HASH_COUNTDOWN.with(|c| c.get()) {
            HASH_COUNTDOWN.with(|c| c.set(left.checked_sub(1)));
            if left == 0 {
                panic!("the key's hash panics");
            }
        }
        let tens = self.0 / 10;
        let fire = self.0 < 100 && {
            let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
            let at = armed.iter().position(|&a| a == tens);
            at.map(|at| armed.swap_remove(at)).is_some()
        };
        if fire {
            panic!("the key's hash panics");
        }
        self.0.hash(state);
    }
}

type Tb = Cache<Touchy, TVal, DefaultHashBuilder, WriteBehind<Touchy, TVal, TouchyDb>>;

/// A value whose `Drop` reads a key its cache does not hold, as `Val`, and
/// whose `Clone` panics once when `CLONE_PANICS` names it (plus 1,000,000).
struct TVal(u32, Arc<OnceLock<Tb>>);

impl Clone for TVal {
    fn clone(&self) -> Self {
        if clone_panics(self.0 + 1_000_000) {
            panic!("the value's clone panics");
        }
        TVal(self.0, self.1.clone())
    }
}

impl Drop for TVal {
    fn drop(&mut self) {
        if IN_DROP.with(|d| d.replace(true)) {
            return;
        }
        if let Some(cache) = self.1.get() {
            let _ = cache.get(&Touchy(999_999));
        }
        IN_DROP.with(|d| d.set(false));
    }
}

/// A store that takes every write (or refuses all, when `down`) and arms
/// the keys' hash to panic once it has the batch.
#[derive(Clone, Default)]
struct TouchyDb {
    down: bool,
    /// Refuses this key's writes only (none while 0).
    refuse: Arc<std::sync::atomic::AtomicU32>,
    writes: Arc<Mutex<Vec<u32>>>,
    /// Writes each key sent again, while it is being sent.
    rewrite: Option<Arc<OnceLock<Tb>>>,
}

impl Store<Touchy, TVal> for TouchyDb {
    type Error = &'static str;
    fn load(&self, _: &Touchy) -> Result<Option<TVal>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<Touchy, TVal>) -> Result<(), Self::Error> {
        self.writes.lock().unwrap().push(op.key().0);
        if let Some(cache) = self.rewrite.as_ref().and_then(|hook| hook.get()) {
            let key = op.key().clone();
            let value = TVal(key.0 + 1000, self.rewrite.clone().unwrap_or_default());
            cache.put(key, value).unwrap();
        }
        // Armed by the batch's last write (the first refused one ends it).
        if op.key().0 % 10 == 2 || self.down {
            arm(op.key().0 / 10);
        }
        let refused = self.refuse.load(std::sync::atomic::Ordering::SeqCst);
        if self.down || (refused != 0 && refused == op.key().0) {
            return Err("down");
        }
        Ok(())
    }
}

/// The flusher books a batch the store took (or refused), and a key's
/// `Hash` panics on the way: the flusher dies, and what it held, the rest
/// of the batch among it, goes down once the queue lock is released. It
/// used to go down with the unwinding, under the lock, where a value
/// reading its own cache hung the flusher's death and every later call.
/// The next flush reports both writes as failed because the flusher
/// stopped, as `Failure::FlusherStopped` documents.
fn a_hash_panic_in_the_flushers_booking_drops_the_batch_outside_the_queue_lock(
    tens: u32,
    down: bool,
    handler: bool,
    rewrite: bool,
) {
    let hook: Arc<OnceLock<Tb>> = Arc::new(OnceLock::new());
    let db = TouchyDb {
        down,
        rewrite: rewrite.then(|| hook.clone()),
        ..TouchyDb::default()
    };
    let writes = db.writes.clone();
    let handed = Arc::new(Mutex::new(Vec::new()));
    let heard = handed.clone();
    let builder = Cache::builder().max_capacity(100).write_back(db, manual(0));
    let builder = if handler {
        builder.on_write_failure(move |failed| heard.lock().unwrap().push(failed.op.key().0))
    } else {
        builder
    };
    let cache: Tb = builder.build().unwrap();
    let _ = hook.set(cache.clone());
    let (one, two) = (tens * 10 + 1, tens * 10 + 2);
    cache.put(Touchy(one), TVal(one, hook.clone())).unwrap();
    cache.put(Touchy(two), TVal(two, hook.clone())).unwrap();
    // The flush that sends the batch: it may come back before or after the
    // flusher died, reporting nothing or both writes.
    let first = Arc::new(Mutex::new(None));
    let first_out = first.clone();
    let flushing = cache.clone();
    within(10, "the flush that sends the batch", move || {
        *first_out.lock().unwrap() = Some(flushing.flush().err().map(|r| r.failed.len()));
    });
    let reported = Arc::new(Mutex::new(None));
    let reported_out = reported.clone();
    within(10, "a flush after the flusher died", move || {
        let mut failed: Vec<(u32, Option<u32>, bool)> = match cache.flush() {
            Ok(()) => Vec::new(),
            Err(report) => report
                .failed
                .iter()
                .map(|f| {
                    let stopped = matches!(f.failure, larder::Failure::FlusherStopped(_));
                    let value = match &f.op {
                        Op::Put(_, value) => Some(value.0),
                        Op::Delete(_) => None,
                    };
                    (f.op.key().0, value, stopped)
                })
                .collect(),
        };
        failed.sort_unstable();
        *reported_out.lock().unwrap() = Some(failed);
    });
    // A batch stops at the first refused write.
    let sent = if down { vec![one] } else { vec![one, two] };
    assert_eq!(*writes.lock().unwrap(), sent, "the store had the batch");
    assert!(!armed(tens), "the hash panicked");
    let first = first
        .lock()
        .unwrap()
        .take()
        .expect("the first flush returned");
    let second = reported
        .lock()
        .unwrap()
        .take()
        .expect("the second flush returned");
    // Reported once, by one of the two flushes, as stopped by the panic.
    match first {
        Some(n) => {
            assert_eq!(n, 2);
            assert!(second.is_empty());
        }
        None => {
            // Each key's latest write.
            let latest = |key: u32| Some(if rewrite { key + 1000 } else { key });
            assert_eq!(
                second,
                vec![(one, latest(one), true), (two, latest(two), true)]
            );
        }
    }
    assert!(handed.lock().unwrap().is_empty(), "the handler got nothing");
}

#[test]
fn a_hash_panic_booking_a_stored_batch_drops_it_outside_the_queue_lock() {
    a_hash_panic_in_the_flushers_booking_drops_the_batch_outside_the_queue_lock(
        1, false, false, false,
    );
}

#[test]
fn a_hash_panic_booking_a_failed_batch_for_the_handler_drops_it_outside_the_queue_lock() {
    a_hash_panic_in_the_flushers_booking_drops_the_batch_outside_the_queue_lock(
        2, true, true, false,
    );
}

/// The same, with each key written again while the store had it: the flusher
/// dies holding the sent write and a newer one of each key, the newer one is
/// reported, and the older one goes down after the lock.
#[test]
fn a_hash_panic_booking_a_batch_written_again_drops_it_outside_the_queue_lock() {
    a_hash_panic_in_the_flushers_booking_drops_the_batch_outside_the_queue_lock(
        3, false, false, true,
    );
}

/// A `flush` whose listener, hearing a failed write's cached copy dropped,
/// writes the key again, stores it with a flush of its own, and panics: the
/// report goes back, less the failed write the newer one superseded, which
/// goes down once the queue lock is released. It used to go down under it.
#[test]
fn a_report_put_back_drops_what_was_superseded_outside_the_queue_lock() {
    let db = Db {
        down_for: Some(1),
        once: true,
        ..Db::default()
    };
    let (cache, hook) = listening_cache(db, |cache, hook| {
        cache.put(1, Val(2, hook.clone())).unwrap();
        assert!(cache.flush().is_ok(), "the store takes the newer write");
        panic!("the listener panics");
    });
    let rows = cache.store().rows.clone();
    cache.put(1, Val(1, hook.clone())).unwrap();
    let checked = cache.clone();
    within(10, "a flush whose listener panics", move || {
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.flush()));
        assert!(flushed.is_err(), "the listener's panic reaches the caller");
    });
    // The put-back report held only the superseded write: nothing is left
    // to report, and the key reads as the newer value the store has.
    within(10, "the flush after it", move || {
        assert!(checked.flush().is_ok());
        assert_eq!(checked.get(&1).unwrap().map(|v| v.0), Some(2));
        assert_eq!(checked.write_stats().superseded, 1);
    });
    assert_eq!(rows.lock().unwrap().get(&1), Some(&2));
}

/// The keys a store was sent, in order.
type Sent = Arc<Mutex<Vec<u32>>>;

/// A write-back cache of `Touchy` keys and `TVal` values that hold a handle
/// to it, over a store that takes every write.
fn touchy_cache() -> (Tb, Arc<OnceLock<Tb>>, Sent) {
    let db = TouchyDb::default();
    let writes = db.writes.clone();
    let cache: Tb = Cache::builder()
        .max_capacity(100)
        .write_back(db, manual(0))
        .build()
        .unwrap();
    let hook = Arc::new(OnceLock::new());
    let _ = hook.set(cache.clone());
    (cache, hook, writes)
}

/// The flusher copies a batch's values under the queue lock; one copy
/// panics: the copies taken before it go down after the lock, the flusher
/// dies, and the next flush reports both writes as stopped.
#[test]
fn a_clone_panic_taking_a_batch_drops_its_copies_outside_the_queue_lock() {
    let (cache, hook, writes) = touchy_cache();
    cache.put(Touchy(401), TVal(401, hook.clone())).unwrap();
    cache.put(Touchy(402), TVal(402, hook)).unwrap();
    arm_clone(1_000_402);
    within(10, "flushes after the flusher died copying", move || {
        let mut failed = Vec::new();
        for _ in 0..2 {
            if let Err(report) = cache.flush() {
                for f in report.failed {
                    assert!(matches!(f.failure, larder::Failure::FlusherStopped(_)));
                    failed.push(f.op.key().0);
                }
            }
        }
        failed.sort_unstable();
        assert_eq!(failed, vec![401, 402]);
    });
    assert!(writes.lock().unwrap().is_empty(), "nothing was sent");
}

/// A write whose key's `Clone` panics as the queue files it: the value goes
/// down after the lock, the caller sees the panic, and the cache takes
/// writes as before.
#[test]
fn a_key_clone_panic_queueing_a_write_drops_its_value_outside_the_queue_lock() {
    let (cache, hook, writes) = touchy_cache();
    within(
        10,
        "a put whose key's clone panics, and the writes after it",
        move || {
            arm_clone(501);
            let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cache.put(Touchy(501), TVal(501, hook.clone()))
            }));
            assert!(put.is_err(), "the clone's panic reaches the caller");
            cache.put(Touchy(502), TVal(502, hook.clone())).unwrap();
            cache.put(Touchy(501), TVal(5010, hook.clone())).unwrap();
            assert!(cache.flush().is_ok());
            assert_eq!(cache.get(&Touchy(501)).unwrap().map(|v| v.0), Some(5010));
        },
    );
    let mut sent = writes.lock().unwrap().clone();
    sent.sort_unstable();
    assert_eq!(sent, vec![501, 502]);
}

/// A `flush` reports key 71's refused write; its listener, hearing of the
/// cached copy dropped, lets the store take key 71 again, stores a newer
/// write of it, arms key 71's `Hash` and panics; the report goes back, and
/// looking key 71 up among the writes stored meanwhile panics. The write
/// goes back unchecked (reported again, not lost), and nothing is dropped
/// under the queue lock: a value dropped there used to hang the call.
#[test]
fn a_hash_panic_putting_a_report_back_loses_nothing_and_drops_nothing_under_the_lock() {
    let hook: Arc<OnceLock<Tb>> = Arc::new(OnceLock::new());
    let in_listener = hook.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    let cache: Tb = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k: Touchy, _: TVal, _| {
            if k.0 == 71 && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let cache = in_listener.get().expect("set before the first write");
                cache
                    .store()
                    .refuse
                    .store(0, std::sync::atomic::Ordering::SeqCst);
                cache
                    .put(Touchy(71), TVal(710, in_listener.clone()))
                    .unwrap();
                assert!(cache.flush().is_ok(), "the store takes the newer write");
                arm(7);
                panic!("the listener panics");
            }
        })
        .write_back(
            TouchyDb {
                refuse: Arc::new(71.into()),
                ..TouchyDb::default()
            },
            manual(0),
        )
        .build()
        .unwrap();
    let _ = hook.set(cache.clone());
    cache.put(Touchy(71), TVal(71, hook.clone())).unwrap();
    let reported = Arc::new(Mutex::new(None));
    let reported_out = reported.clone();
    within(
        10,
        "a flush whose report goes back with a panic",
        move || {
            let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.flush()));
            assert!(flushed.is_err(), "a panic reaches the caller");
            let report = cache.flush().expect_err("key 71's write is reported again");
            let keys: Vec<u32> = report.failed.iter().map(|f| f.op.key().0).collect();
            *reported_out.lock().unwrap() = Some(keys);
            assert!(cache.flush().is_ok(), "reported once more only");
        },
    );
    assert_eq!(*reported.lock().unwrap(), Some(vec![71]));
    assert!(!armed(7), "the hash panicked");
}

/// A put whose key's `Hash` panics, at each of the hashes a put runs in
/// turn: a write is counted as accepted only if it was queued, and every
/// write queued reaches the store — those acknowledged with `Ok`, and those
/// whose put panicked after queueing them (documented on `put`).
#[test]
fn a_put_whose_keys_hash_panics_is_counted_accepted_only_if_queued() {
    let (cache, hook, writes) = touchy_cache();
    let mut acknowledged = Vec::new();
    for k in 0..30u32 {
        let key = 200 + k;
        HASH_COUNTDOWN.with(|c| c.set(Some(k)));
        let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.put(Touchy(key), TVal(key, hook.clone()))
        }));
        HASH_COUNTDOWN.with(|c| c.set(None));
        if let Ok(Ok(())) = put {
            acknowledged.push(key);
        }
    }
    assert!(acknowledged.len() < 30, "some hash panicked");
    assert!(!acknowledged.is_empty(), "some put got through");
    let accepted = cache.write_stats().accepted;
    within(10, "flush", move || assert!(cache.flush().is_ok()));
    let sent = writes.lock().unwrap().clone();
    assert_eq!(
        sent.len() as u64,
        accepted,
        "accepted {accepted}, sent {sent:?}"
    );
    assert!(
        acknowledged.iter().all(|k| sent.contains(k)),
        "{acknowledged:?} {sent:?}"
    );
}
