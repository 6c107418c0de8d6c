//! Write-back lets go of keys and values outside its queue lock: a value whose
//! `Drop` reads its own cache (whose reads of a key not cached ask that queue)
//! must not hang a `put` that replaces it, the flusher that stores it, or a
//! `flush` that reports it.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use larder::{Cache, DefaultHashBuilder, Op, Store, WriteBack, WriteBehind};

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
}

/// A store that refuses every write when `down`, and the writes of
/// `down_for` if set.
#[derive(Clone, Default)]
struct Db {
    down: bool,
    down_for: Option<u32>,
    rows: Arc<Mutex<HashMap<u32, u32>>>,
}

impl Store<u32, Val> for Db {
    type Error = &'static str;
    fn load(&self, _: &u32) -> Result<Option<Val>, Self::Error> {
        Ok(None)
    }
    fn write(&self, op: &Op<u32, Val>) -> Result<(), Self::Error> {
        if self.down || self.down_for == Some(*op.key()) {
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
            let _ = cache.get(&999_999);
        }
        IN_DROP.with(|d| d.set(false));
    }
}

/// A write-back cache whose values hold a handle to it, and that handle.
fn cache(db: Db, retries: u32) -> (Wb, Arc<OnceLock<Wb>>) {
    let cache: Wb = Cache::builder()
        .max_capacity(100)
        .write_back(
            db,
            WriteBack::default()
                .max_delay(Duration::MAX)
                .retries(retries, Duration::ZERO),
        )
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
            WriteBack::default()
                .max_delay(Duration::MAX)
                .retries(0, Duration::ZERO),
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

/// A write stored while a `flush`'s report is out (its listener, hearing the
/// failed write dropped, writes another key and flushes it) is booked as
/// stored meanwhile; its value used to go down with it under the queue lock.
#[test]
fn a_write_stored_while_a_report_is_out_drops_its_value_outside_the_queue_lock() {
    let hook: Arc<OnceLock<Wb>> = Arc::new(OnceLock::new());
    let in_listener = hook.clone();
    let once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nested = Arc::new(Mutex::new(None));
    let nested_out = nested.clone();
    let cache: Wb = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k: u32, _: Val, _| {
            if k == 1 && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let cache = in_listener.get().expect("set before the first write");
                cache.put(2, Val(2, in_listener.clone())).unwrap();
                *nested_out.lock().unwrap() = Some(cache.flush().is_ok());
            }
        })
        .write_back(
            Db {
                down_for: Some(1),
                ..Db::default()
            },
            WriteBack::default()
                .max_delay(Duration::MAX)
                .retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    let _ = hook.set(cache.clone());
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
