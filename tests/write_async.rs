//! The async twins of the write policies: an `AsyncStore` that really awaits
//! (tokio timers), used through `get_async` / `put_async` / `delete_async`,
//! and write-back over it with the flusher's calls spawned on tokio.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::{
    AsyncStore, Cache, Clock, Compute, Computed, EntryOptions, Op, Spawned, WriteBack, WriteError,
};

#[derive(Default)]
struct Db {
    data: Mutex<HashMap<u64, u64>>,
    loads: AtomicU64,
    write_calls: AtomicU64,
    fail: AtomicBool,
    /// Store calls take this long (milliseconds).
    delay_ms: AtomicU64,
    /// The next write call takes this much longer (milliseconds): a call
    /// that a test cancels, whatever the machine's pace, while the calls
    /// after it run at `delay_ms`.
    hold_next_ms: AtomicU64,
    /// Loaded values are tagged `parity:{key % 2}`.
    tag_loads: AtomicBool,
}

impl Db {
    fn value(&self, key: u64) -> Option<u64> {
        self.data.lock().unwrap().get(&key).copied()
    }
}

#[derive(Clone, Default)]
struct Remote(Arc<Db>);

impl AsyncStore<u64, u64> for Remote {
    type Error = String;

    async fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(
            self.0.delay_ms.load(Ordering::SeqCst),
        ))
        .await;
        Ok(self.0.value(*key))
    }

    async fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), String> {
        self.0.write_calls.fetch_add(1, Ordering::SeqCst);
        let hold = self.0.hold_next_ms.swap(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(
            self.0.delay_ms.load(Ordering::SeqCst) + hold,
        ))
        .await;
        if self.0.fail.load(Ordering::SeqCst) {
            return Err("remote down".into());
        }
        let mut data = self.0.data.lock().unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => data.insert(*k, *v),
                Op::Delete(k) => data.remove(k),
            };
        }
        Ok(())
    }

    fn load_options(&self, key: &u64, _value: &u64) -> larder::EntryOptions {
        if self.0.tag_loads.load(Ordering::SeqCst) {
            larder::EntryOptions::new().tags([format!("parity:{}", key % 2)])
        } else {
            larder::EntryOptions::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_read_through_loads_once_for_many_tasks() {
    let remote = Remote::default();
    remote.0.data.lock().unwrap().insert(1, 10);
    remote.0.delay_ms.store(20, Ordering::SeqCst);
    let cache = Arc::new(
        Cache::builder()
            .max_capacity(100)
            .read_through(remote.clone())
            .build()
            .unwrap(),
    );
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get_async(&1).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(Some(10)));
    }
    assert_eq!(
        remote.0.loads.load(Ordering::SeqCst),
        1,
        "one load for 100 tasks"
    );
    assert_eq!(cache.get_async(&2).await, Ok(None));
    cache.put_async(3, 30).await.unwrap();
    cache.delete_async(&1).await.unwrap();
    assert_eq!((cache.peek(&3), cache.peek(&1)), (Some(30), None));
    // Batches land in the cache alone, each key's last write.
    cache
        .write_all_async([Op::Delete(3), Op::Put(4, 40), Op::Put(4, 41)])
        .await
        .unwrap();
    cache.put_all_async([(5, 50)]).await.unwrap();
    assert_eq!(
        [3, 4, 5].map(|k| cache.peek(&k)),
        [None, Some(41), Some(50)]
    );
    assert_eq!(remote.0.write_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_through_stores_first_and_a_failure_changes_nothing() {
    let remote = Remote::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache.put_async(1, 10).await.unwrap();
    assert_eq!((remote.0.value(1), cache.peek(&1)), (Some(10), Some(10)));
    remote.0.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        cache.put_async(1, 11).await,
        Err(WriteError::Store("remote down".into()))
    );
    assert_eq!(
        cache.delete_async(&1).await,
        Err(WriteError::Store("remote down".into()))
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (Some(10), Some(10)));
    remote.0.fail.store(false, Ordering::SeqCst);
    cache.delete_async(&1).await.unwrap();
    assert_eq!((remote.0.value(1), cache.peek(&1)), (None, None));
}

/// `put_with_async` caches with the entry's time-to-live and tags under
/// every policy; the store (or the queue) gets the value alone, so when the
/// copy expires or its tag is invalidated the next read finds the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_async_gives_the_cached_copy_a_ttl_and_tags() {
    let minute = || EntryOptions::new().ttl(Duration::from_secs(60));
    let shelf = || EntryOptions::new().tags(["shelf"]);
    let zero = || EntryOptions::new().ttl(Duration::ZERO);

    // Write-through: stored first, then cached with the options.
    let remote = Remote::default();
    let (clock, time) = Clock::mock();
    let cache = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache.put_with_async(1, 10, minute()).await.unwrap();
    cache.put_with_async(2, 20, shelf()).await.unwrap();
    cache.put_with_async(3, 30, zero()).await.unwrap();
    assert_eq!(
        [1, 2, 3].map(|k| (remote.0.value(k), cache.peek(&k))),
        [(Some(10), Some(10)), (Some(20), Some(20)), (Some(30), None)],
        "stored, and cached unless refused (a zero time-to-live)"
    );
    time.advance(Duration::from_secs(59));
    cache.invalidate_tag("shelf");
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), None));
    time.advance(Duration::from_secs(1));
    assert_eq!(cache.peek(&1), None, "expired");
    let loads = remote.0.loads.load(Ordering::SeqCst);
    for (k, v) in [(1, 10), (2, 20), (3, 30)] {
        assert_eq!(cache.get_async(&k).await, Ok(Some(v)), "loaded again");
    }
    assert_eq!(remote.0.loads.load(Ordering::SeqCst), loads + 3);
    remote.0.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        cache.put_with_async(1, 11, shelf()).await,
        Err(WriteError::Store("remote down".into()))
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (Some(10), Some(10)));
    remote.0.fail.store(false, Ordering::SeqCst);

    // Read-through: the cache alone.
    let remote = Remote::default();
    let (clock, time) = Clock::mock();
    let cache = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .read_through(remote.clone())
        .build()
        .unwrap();
    cache.put_with_async(1, 10, minute()).await.unwrap();
    cache.put_with_async(2, 20, shelf()).await.unwrap();
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), Some(20)));
    assert_eq!(remote.0.write_calls.load(Ordering::SeqCst), 0);
    cache.invalidate_tag("shelf");
    time.advance(Duration::from_secs(60));
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, None));

    // Write-back: the queued write outlives the cached copy.
    let remote = Remote::default();
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let (clock, time) = Clock::mock();
    let cache = Cache::builder()
        .max_capacity(100)
        .clock(clock)
        .write_back(store, WriteBack::default().max_delay(Duration::MAX))
        .build()
        .unwrap();
    cache.put_with_async(1, 10, minute()).await.unwrap();
    cache.put_with_async(2, 20, shelf()).await.unwrap();
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(10), Some(20)));
    cache.invalidate_tag("shelf");
    time.advance(Duration::from_secs(60));
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, None));
    assert_eq!(cache.get_async(&1).await, Ok(Some(10)), "the queued write");
    assert_eq!(cache.get_async(&2).await, Ok(Some(20)), "the queued write");
    cache.close_async().await.unwrap();
    assert_eq!((remote.0.value(1), remote.0.value(2)), (Some(10), Some(20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_async_put_drops_the_cached_copy() {
    let remote = Remote::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache.put_async(1, 10).await.unwrap();
    remote.0.hold_next_ms.store(3_600_000, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), cache.put_async(1, 11)).await;
    assert!(cancelled.is_err(), "the put was cancelled mid-call");
    assert_eq!(cache.peek(&1), None, "the cache no longer claims 10");
    assert_eq!(cache.get_async(&1).await, Ok(Some(10)), "the store decides");
    cache.put_async(1, 12).await.unwrap();
    assert_eq!(cache.peek(&1), Some(12), "the key's stripe was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_through_batches_take_one_call_and_a_cancelled_one_drops_its_keys() {
    let remote = Remote::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache
        .put_all_async([(1, 10), (2, 20), (3, 30)])
        .await
        .unwrap();
    assert_eq!(remote.0.write_calls.load(Ordering::SeqCst), 1);
    cache
        .write_all_async([Op::Delete(3), Op::Put(1, 11), Op::Put(1, 12)])
        .await
        .unwrap();
    assert_eq!(remote.0.write_calls.load(Ordering::SeqCst), 2);
    assert_eq!((remote.0.value(1), remote.0.value(3)), (Some(12), None));
    assert_eq!((cache.peek(&1), cache.peek(&3)), (Some(12), None));
    // A failure drops the batch's keys: the store may have part of it.
    remote.0.fail.store(true, Ordering::SeqCst);
    let failed = cache.put_all_async([(1, 13), (2, 23)]).await;
    assert_eq!(failed, Err(WriteError::Store("remote down".into())));
    assert_eq!((cache.peek(&1), cache.peek(&2)), (None, None));
    remote.0.fail.store(false, Ordering::SeqCst);
    assert_eq!(cache.get_async(&2).await, Ok(Some(20)), "the store decides");
    // Cancelled during its store call: the same.
    remote.0.hold_next_ms.store(3_600_000, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        cache.put_all_async([(2, 24), (4, 40)]),
    )
    .await;
    assert!(cancelled.is_err(), "the batch was cancelled mid-call");
    assert_eq!(cache.peek(&2), None, "the cache no longer claims 20");
    cache.put_all_async([(2, 25), (4, 45)]).await.unwrap();
    assert_eq!(
        (cache.peek(&2), cache.peek(&4)),
        (Some(25), Some(45)),
        "the stripes were released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_async_put_tells_the_listener_after_releasing_the_key() {
    let remote = Remote::default();
    // The listener checks that the key's stripe is free: a lock-free look,
    // from another thread, at whether a write of the key could start.
    let stripe_free = Arc::new(Mutex::new(Vec::new()));
    let log = stripe_free.clone();
    type Through = Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteThrough<Remote>>;
    let cache: Arc<Mutex<Option<Through>>> = Arc::default();
    let handle = cache.clone();
    let built = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k: u64, _, _| {
            let cache = handle.lock().unwrap().clone().expect("built");
            // A sync write of the same key, on a plain thread: it needs the
            // stripe, so it finishes only if the stripe was released.
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let _ = done.send(rt.block_on(cache.delete_async(&k)).is_ok());
            });
            log.lock().unwrap().push(
                finished
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or(false),
            );
        })
        .write_through(remote.clone())
        .build()
        .unwrap();
    *cache.lock().unwrap() = Some(built.clone());
    built.put_async(1, 10).await.unwrap();
    // The listener's own delete runs at the usual pace.
    remote.0.hold_next_ms.store(3_600_000, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), built.put_async(1, 11)).await;
    assert!(cancelled.is_err(), "the put was cancelled mid-call");
    assert_eq!(
        *stripe_free.lock().unwrap(),
        [true],
        "the listener ran once, with the key's stripe free"
    );
    *cache.lock().unwrap() = None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_store_panic_keeps_its_message() {
    struct Panics;
    impl AsyncStore<u64, u64> for Panics {
        type Error = String;
        async fn load(&self, _: &u64) -> Result<Option<u64>, String> {
            Ok(None)
        }
        async fn write_batch(&self, _: &[Op<u64, u64>]) -> Result<(), String> {
            panic!("the remote store exploded");
        }
    }
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(Panics, move |call| {
        handle.spawn(call);
    });
    let cache = Cache::builder()
        .max_capacity(10)
        .write_back(
            store,
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(0, Duration::ZERO),
        )
        .build()
        .unwrap();
    cache.put(1, 1).unwrap();
    let report = tokio::task::spawn_blocking(move || cache.flush())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&report.failed[0].failure, larder::Failure::Panicked(m) if m.contains("exploded")),
        "{:?}",
        report.failed[0].failure
    );
}

#[test]
fn an_async_store_and_a_listener_both_panicking_do_not_abort() {
    struct Panics;
    impl AsyncStore<u64, u64> for Panics {
        type Error = String;
        async fn load(&self, _: &u64) -> Result<Option<u64>, String> {
            Ok(None)
        }
        async fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), String> {
            assert!(!matches!(ops, [Op::Put(_, 666)]), "the store refuses 666");
            Ok(())
        }
    }
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(|_: u64, _: u64, _| panic!("the listener panics"))
        .write_through(Panics)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(cache.put_async(1, 10)).unwrap();
    let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(cache.put_async(1, 666))
    }));
    let panic = put.unwrap_err();
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("refuses 666"),
        "the store's panic: {message}"
    );
    assert_eq!(cache.peek(&1), None, "the cached copy was dropped");
    assert!(
        rt.block_on(cache.put_async(1, 11)).is_ok(),
        "the key is usable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_write_through_puts_on_one_key_agree() {
    let remote = Remote::default();
    let cache = Arc::new(
        Cache::builder()
            .max_capacity(100)
            .write_through(remote.clone())
            .build()
            .unwrap(),
    );
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                for i in 0..200u64 {
                    cache.put_async(i % 2, t * 1_000 + i).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for key in 0..2 {
        assert_eq!(cache.peek(&key), remote.0.value(key));
        assert!(cache.peek(&key).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_back_reads_its_writes_and_flushes() {
    let remote = Remote::default();
    remote.0.delay_ms.store(5, Ordering::SeqCst);
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let cache = Cache::builder()
        .max_capacity(4)
        .write_back(
            store,
            WriteBack::default().max_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    for k in 0..100 {
        cache.put(k, k * 10).unwrap();
    }
    for k in 0..100 {
        assert_eq!(cache.get_async(&k).await, Ok(Some(k * 10)), "key {k}");
    }
    cache.delete(&5).unwrap();
    assert_eq!(cache.get_async(&5).await, Ok(None));
    cache.flush_async().await.unwrap();
    for k in 0..100 {
        assert_eq!(remote.0.value(k), (k != 5).then_some(k * 10));
    }
    assert!(remote.0.write_calls.load(Ordering::SeqCst) < 100, "batched");
    cache.put(200, 1).unwrap();
    cache.close_async().await.unwrap();
    assert_eq!(remote.0.value(200), Some(1));
    assert_eq!(cache.put(201, 1), Err(WriteError::Closed));
    assert_eq!(cache.get_async(&200).await, Ok(Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_stores_tag_what_they_load_read_through_and_write_back() {
    let remote = Remote::default();
    remote.0.tag_loads.store(true, Ordering::SeqCst);
    remote
        .0
        .data
        .lock()
        .unwrap()
        .extend([(1, 10), (2, 20), (3, 30)]);
    let through = Cache::builder()
        .max_capacity(100)
        .read_through(remote.clone())
        .build()
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let spawned = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let back = Cache::builder()
        .max_capacity(100)
        .write_back(spawned, WriteBack::default())
        .build()
        .unwrap();
    for k in [1, 2, 3] {
        assert_eq!(through.get_async(&k).await, Ok(Some(k * 10)));
        assert_eq!(back.get_async(&k).await, Ok(Some(k * 10)));
    }
    through.invalidate_tag("parity:1");
    back.invalidate_tag("parity:1");
    for cache in [
        &through.peek(&1),
        &through.peek(&3),
        &back.peek(&1),
        &back.peek(&3),
    ] {
        assert_eq!(*cache, None, "odd keys were tagged as loaded");
    }
    assert_eq!((through.peek(&2), back.peek(&2)), (Some(20), Some(20)));
    back.close_async().await.unwrap();
}

type SpawnedWriteBack =
    Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteBehind<u64, u64, Spawned<Remote>>>;

/// A write-back cache over a `Remote` whose calls take 2 ms, spawned on the
/// current runtime, with a queue of `queue_capacity` keys sent two at a time.
fn small_spawned_queue(queue_capacity: usize) -> (Remote, SpawnedWriteBack) {
    let remote = Remote::default();
    remote.0.delay_ms.store(2, Ordering::SeqCst);
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let settings = WriteBack::default()
        .max_delay(Duration::from_millis(1))
        .batch(2)
        .queue_capacity(queue_capacity);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_back(store, settings)
        .build()
        .unwrap();
    (remote, cache)
}

/// With `Fail`, `compute_async` of a dirty key holds no room, as `compute`
/// does: on a full queue it gets in whenever a put of the key would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_write_back_compute_of_a_dirty_key_gets_in_on_a_full_queue() {
    let remote = Remote::default();
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let settings = WriteBack::default()
        .max_delay(Duration::MAX)
        .queue_capacity(1)
        .backpressure(larder::Backpressure::Fail);
    let cache: SpawnedWriteBack = Cache::builder()
        .max_capacity(100)
        .write_back(store, settings)
        .build()
        .unwrap();
    cache.put_async(1, 1).await.unwrap();
    assert_eq!(cache.put_async(2, 2).await, Err(WriteError::QueueFull));
    assert_eq!(
        cache
            .compute_async(1, |v| Compute::Put(v.unwrap() + 1))
            .await,
        Ok(Computed::Replaced(2)),
        "coalesced, as a put of key 1 would"
    );
    assert_eq!(
        cache.compute_async(2, |_| Compute::Put(20)).await,
        Err(WriteError::QueueFull)
    );
    cache.close_async().await.unwrap();
    assert_eq!((remote.0.value(1), remote.0.value(2)), (Some(2), None));
}

/// On a single-threaded runtime, a writer that blocked its thread for room
/// would starve the spawned store calls that make room: `put_async` waits
/// as a pending task instead.
#[tokio::test(flavor = "current_thread")]
async fn async_write_back_waits_for_room_without_blocking_the_runtime() {
    let (remote, cache) = small_spawned_queue(2);
    for k in 0..20 {
        cache.put_async(k, k).await.unwrap();
    }
    cache.delete_async(&3).await.unwrap();
    cache.flush_async().await.unwrap();
    for k in 0..20 {
        assert_eq!(remote.0.value(k), (k != 3).then_some(k));
    }
    assert!(cache.write_stats().dirty == 0);
    cache.close_async().await.unwrap();
}

/// `write_all_async` waits for room as a pending task, as `put_async` does;
/// cancelled while it waits, none of its batch is queued or cached.
#[tokio::test(flavor = "current_thread")]
async fn async_write_back_batches_wait_for_room_and_a_cancelled_one_changes_nothing() {
    let (remote, cache) = small_spawned_queue(3);
    for k in (0..30).step_by(3) {
        let batch = [Op::Put(k, k), Op::Put(k + 1, k + 1), Op::Delete(k + 2)];
        cache.write_all_async(batch).await.unwrap();
    }
    cache.flush_async().await.unwrap();
    for k in 0..30 {
        assert_eq!(remote.0.value(k), (k % 3 != 2).then_some(k), "key {k}");
    }
    // Hold the store: key 100's write stays in flight, leaving room for two.
    remote.0.hold_next_ms.store(500, Ordering::SeqCst);
    cache.put_async(100, 1).await.unwrap();
    let accepted = cache.write_stats().accepted;
    let batch = cache.put_all_async([(101, 1), (102, 1), (103, 1)]);
    let cancelled = tokio::time::timeout(Duration::from_millis(50), batch).await;
    assert!(cancelled.is_err(), "the batch waited for room");
    assert_eq!(cache.write_stats().accepted, accepted, "none of it queued");
    assert_eq!((cache.peek(&101), cache.peek(&103)), (None, None));
    let smaller = cache.put_all_async([(101, 2), (102, 2)]);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), smaller)
            .await
            .ok(),
        Some(Ok(())),
        "room for two"
    );
    cache.close_async().await.unwrap();
    assert_eq!(
        (
            remote.0.value(100),
            remote.0.value(101),
            remote.0.value(103)
        ),
        (Some(1), Some(2), None)
    );
}

#[test]
fn a_spawn_function_panicking_after_spawning_leaves_no_store_call_behind() {
    /// Holds its first call until released (a second at most), and notes any
    /// call that starts while another is still running.
    #[derive(Default)]
    struct Held {
        data: Mutex<HashMap<u64, u64>>,
        released: AtomicBool,
        calls: AtomicU64,
        done: AtomicU64,
        in_flight: AtomicU64,
        overlapped: AtomicBool,
    }
    #[derive(Clone, Default)]
    struct Remote(Arc<Held>);
    impl AsyncStore<u64, u64> for Remote {
        type Error = String;
        async fn load(&self, key: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.data.lock().unwrap().get(key).copied())
        }
        async fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), String> {
            let held = &self.0;
            let first = held.calls.fetch_add(1, Ordering::SeqCst) == 0;
            if held.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                held.overlapped.store(true, Ordering::SeqCst);
            }
            for _ in 0..100 {
                if !first || held.released.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut data = held.data.lock().unwrap();
            for op in ops {
                match op {
                    Op::Put(k, v) => data.insert(*k, *v),
                    Op::Delete(k) => data.remove(k),
                };
            }
            held.in_flight.fetch_sub(1, Ordering::SeqCst);
            held.done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let spawns = AtomicU64::new(0);
    let remote = Remote::default();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
        let first = spawns.fetch_add(1, Ordering::SeqCst) == 0;
        assert!(!first, "the spawn function panics after its first spawn");
    });
    let cache = Cache::builder()
        .max_capacity(10)
        .write_back(
            store,
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .retries(1, Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    cache.put(1, 10).unwrap();
    let held = &remote.0;
    while held.calls.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The first call, spawned before the spawn function panicked, is still
    // running: a retry or a later batch must wait for it.
    cache.put(1, 11).unwrap();
    cache.flush().unwrap();
    held.released.store(true, Ordering::SeqCst);
    while held.done.load(Ordering::SeqCst) < held.calls.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let overlapped = held.overlapped.load(Ordering::SeqCst);
    let stored = held.data.lock().unwrap().get(&1).copied();
    assert_eq!(
        (overlapped, stored),
        (false, Some(11)),
        "one store call at a time, and the latest acknowledged write last"
    );
    drop(cache);
}

/// A client whose `load` sends its request when called, and returns a future
/// of the reply; counts the requests sent.
#[derive(Clone, Default)]
struct Eager {
    requests: Arc<AtomicU64>,
    data: Arc<Mutex<HashMap<u64, u64>>>,
}

impl AsyncStore<u64, u64> for Eager {
    type Error = String;

    fn load(
        &self,
        key: &u64,
    ) -> impl std::future::Future<Output = Result<Option<u64>, String>> + Send {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let reply = self.data.lock().unwrap().get(key).copied();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(reply)
        }
    }

    async fn write_batch(&self, _: &[Op<u64, u64>]) -> Result<(), String> {
        Ok(())
    }
}

/// Eight concurrent `get_async` calls of key 1 on `cache`, then ten more;
/// the requests `store` saw.
macro_rules! requests_for_18_gets {
    ($cache:expr, $store:expr) => {{
        let cache = $cache;
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_async(&1).await })
            })
            .collect();
        for g in gets {
            assert_eq!(g.await.unwrap(), Ok(Some(10)));
        }
        for _ in 0..10 {
            assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
        }
        $store.requests.load(Ordering::SeqCst)
    }};
}

/// Eight callers missing on one key together, then ten hits: one request
/// to a store that sends it as `load` is called, read-through and
/// write-through alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_async_asks_a_store_once_however_many_callers_miss_or_hit() {
    let store = Eager::default();
    store.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .read_through(store.clone());
    assert_eq!(requests_for_18_gets!(cache.build().unwrap(), store), 1);
    let store = Eager::default();
    store.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone());
    assert_eq!(requests_for_18_gets!(cache.build().unwrap(), store), 1);
}

/// The async calls' futures are `Send`, so a multi-threaded runtime can
/// spawn them: the loading calls (borrowed keys included), and every write
/// policy's calls, `compute_async` among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_can_be_spawned() {
    let aside: Cache<String, String> = Cache::builder().max_capacity(100).build().unwrap();
    let remote = Remote::default();
    let through = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    let behind = Cache::builder()
        .max_capacity(100)
        .write_back(
            Spawned::new(remote.clone(), move |call| {
                handle.spawn(call);
            }),
            WriteBack::default(),
        )
        .build()
        .unwrap();
    let (a, t, b) = (aside.clone(), through.clone(), behind.clone());
    let task = tokio::spawn(async move {
        let v = a.get_or_load_async("k".to_string(), async { "v".to_string() });
        assert_eq!(v.await, "v");
        let hit = a.get_or_load_by_ref_async("k", async { unreachable!("cached") });
        assert_eq!(hit.await, "v");
        let tried = a.try_get_or_load_by_ref_async("t", async { Ok::<_, ()>("t".to_string()) });
        assert_eq!(tried.await, Ok("t".to_string()));
        let none = a.optionally_get_or_load_by_ref_async("n", async { None });
        assert_eq!(none.await, None);
        let tagged = EntryOptions::new().tags(["shelf"]);
        t.put_with_async(1, 10, tagged.clone()).await.unwrap();
        t.put_async(2, 20).await.unwrap();
        assert_eq!(t.get_async(&1).await, Ok(Some(10)));
        t.delete_async(&2).await.unwrap();
        b.put_with_async(3, 30, tagged).await.unwrap();
        b.put_async(4, 40).await.unwrap();
        b.delete_async(&4).await.unwrap();
        assert_eq!(b.get_async(&3).await, Ok(Some(30)));
        let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
        assert_eq!(t.compute_async(5, count).await, Ok(Computed::Inserted(1)));
        assert_eq!(b.compute_async(6, count).await, Ok(Computed::Inserted(1)));
        b.flush_async().await.unwrap();
    });
    task.await.unwrap();
    assert_eq!(aside.get("k").as_deref(), Some("v"));
    assert_eq!(
        [1, 2, 3, 4, 5, 6].map(|k| remote.0.value(k)),
        [Some(10), None, Some(30), None, Some(1), Some(1)]
    );
    behind.close_async().await.unwrap();
}

/// A store may start a write when `write_batch` is called, before its
/// future is polled, and panic there: that is a store panic like any other,
/// and the key's cached copy goes (it stayed, holding the value the store
/// had just replaced).
#[test]
fn an_async_store_panicking_before_its_future_is_polled_drops_the_cached_copy() {
    #[derive(Clone, Default)]
    struct Eager(Arc<Mutex<HashMap<u64, u64>>>);
    impl AsyncStore<u64, u64> for Eager {
        type Error = String;
        async fn load(&self, key: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(key).copied())
        }
        #[allow(clippy::manual_async_fn)]
        fn write_batch(
            &self,
            ops: &[Op<u64, u64>],
        ) -> impl std::future::Future<Output = Result<(), String>> + Send {
            // Sent at once; then the client fails on the way back.
            let mut data = self.0.lock().unwrap();
            for op in ops {
                match op {
                    Op::Put(k, v) => data.insert(*k, *v),
                    Op::Delete(k) => data.remove(k),
                };
            }
            drop(data);
            assert!(
                !ops.iter().any(|op| matches!(op, Op::Put(_, 13))),
                "the client panics after sending 13"
            );
            async { Ok(()) }
        }
    }
    let store = Eager::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(cache.put_async(1, 10)).unwrap();
    let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(cache.put_async(1, 13))
    }));
    assert!(put.is_err(), "the store's panic goes on");
    assert_eq!(store.0.lock().unwrap().get(&1), Some(&13));
    assert_eq!(cache.peek(&1), None, "the replaced value is not kept");
    assert_eq!(rt.block_on(cache.get_async(&1)), Ok(Some(13)));
    assert!(
        rt.block_on(cache.put_async(1, 11)).is_ok(),
        "the key's stripe was released"
    );
}

/// A store's future may hold something whose `Drop` panics once the write
/// is done: that is a store panic like any other, and the key's cached copy
/// goes (it stayed, holding the value the store had just replaced).
#[test]
fn an_async_store_future_panicking_in_its_drop_drops_the_cached_copy() {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("the client panics as its finished call is dropped");
            }
        }
    }
    /// Writes on its first poll; holds a `PanicsOnDrop` for a put of 13.
    struct Call {
        data: Arc<Mutex<HashMap<u64, u64>>>,
        ops: Vec<Op<u64, u64>>,
        _trap: Option<PanicsOnDrop>,
    }
    impl std::future::Future for Call {
        type Output = Result<(), String>;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            let mut data = self.data.lock().unwrap();
            for op in &self.ops {
                match op {
                    Op::Put(k, v) => data.insert(*k, *v),
                    Op::Delete(k) => data.remove(k),
                };
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
    #[derive(Clone, Default)]
    struct Client(Arc<Mutex<HashMap<u64, u64>>>);
    impl AsyncStore<u64, u64> for Client {
        type Error = String;
        async fn load(&self, key: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(key).copied())
        }
        fn write_batch(
            &self,
            ops: &[Op<u64, u64>],
        ) -> impl std::future::Future<Output = Result<(), String>> + Send {
            let trap = if ops.iter().any(|op| matches!(op, Op::Put(_, 13))) {
                Some(PanicsOnDrop)
            } else {
                None
            };
            Call {
                data: self.0.clone(),
                ops: ops.to_vec(),
                _trap: trap,
            }
        }
    }
    let store = Client::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(cache.put_async(1, 10)).unwrap();
    let put = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(cache.put_async(1, 13))
    }));
    assert!(put.is_err(), "the future's panic goes on");
    assert_eq!(store.0.lock().unwrap().get(&1), Some(&13));
    assert_eq!(cache.peek(&1), None, "the replaced value is not kept");
    assert_eq!(rt.block_on(cache.get_async(&1)), Ok(Some(13)));
    assert!(
        rt.block_on(cache.put_async(1, 11)).is_ok(),
        "the key's stripe was released"
    );
    assert_eq!(cache.peek(&1), Some(11));
}

type AsyncEchoCache = Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteThrough<AsyncEcho>>;

/// A boxed `put_async` of the cache behind an [`AsyncEcho`].
type EchoPut = Box<
    dyn Fn(u64, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// An async write-through store that, against its docs, writes to the cache
/// it stands behind from within its write: each put of a value under 100
/// puts 100 more under the same key; and from within its load of key 42. The cache's `put_async` is reached
/// through a boxed function, set after the build (the store's future
/// cannot name the cache's, which holds it).
#[derive(Clone, Default)]
struct AsyncEcho {
    put: Arc<std::sync::OnceLock<EchoPut>>,
}

impl AsyncStore<u64, u64> for AsyncEcho {
    type Error = String;
    async fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        // Key 42's load writes it too.
        if *key == 42 {
            let put = self.put.get().expect("set after the build");
            if !put(42, 142).await {
                return Err("the echo failed".into());
            }
        }
        Ok(None)
    }
    async fn write_batch(&self, ops: &[Op<u64, u64>]) -> Result<(), String> {
        for op in ops {
            if let Op::Put(k, v) = op {
                if *v < 100 {
                    let put = self.put.get().expect("set after the build");
                    if !put(*k, v + 100).await {
                        return Err("the echo failed".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A write-through cache over an [`AsyncEcho`] of itself.
fn async_echo_cache() -> AsyncEchoCache {
    let store = AsyncEcho::default();
    let cache: AsyncEchoCache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone())
        .build()
        .unwrap();
    let echo = cache.clone();
    let put: EchoPut = Box::new(move |k, v| {
        let cache = echo.clone();
        Box::pin(async move { cache.put_async(k, v).await.is_ok() })
    });
    assert!(store.put.set(put).is_ok());
    cache
}

/// Runs `call` to its end on a single-threaded runtime of a thread of its
/// own (a regression hangs that thread, not the test) and returns the
/// message it panicked with.
fn panic_message<F>(call: F) -> String
where
    F: std::future::Future + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(call);
        }));
        let message = ended.err().map(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        let _ = tx.send(message);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the call hung"))
        .unwrap_or_else(|| panic!("the call did not panic"))
}

/// An async store writing its own key (or another of its lock stripe) to
/// the cache from within that key's write used to leave the write pending
/// for good: the stripe was held by the very call that waited for it. It
/// panics with a message instead, and the cache stays usable.
#[test]
fn an_async_store_writing_its_own_key_to_the_cache_panics_instead_of_hanging() {
    let cache = async_echo_cache();
    let writer = cache.clone();
    let message = panic_message(async move { writer.put_async(1, 1).await });
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!(cache.peek(&1), None, "no copy of an uncertain write");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(
        runtime.block_on(cache.put_async(1, 500)).is_ok(),
        "the key's stripe was released"
    );
    assert_eq!(cache.peek(&1), Some(500));
}

/// The same for a batch: its store writing a key of the batch (in the
/// stripe of whichever key it writes) panics instead of hanging.
#[test]
fn an_async_store_writing_a_key_of_its_batch_to_the_cache_panics_instead_of_hanging() {
    let cache = async_echo_cache();
    let writer = cache.clone();
    let message = panic_message(async move { writer.put_all_async([(7, 700), (8, 8)]).await });
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!((cache.peek(&7), cache.peek(&8)), (None, None));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(runtime
        .block_on(cache.put_all_async([(7, 500), (8, 600)]))
        .is_ok());
    assert_eq!(cache.peek(&8), Some(600));
}

type NestingCache = Cache<u64, u64, larder::DefaultHashBuilder, larder::WriteThrough<Nesting>>;

/// An async write-through store that, while it writes, polls once a future
/// of another task's (as an executor it runs would): a `put_async` of the
/// key being written.
/// A boxed future of another task's.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

#[derive(Clone, Default)]
struct Nesting {
    job: Arc<Mutex<Option<Job>>>,
    /// Whether the job was still pending after that poll.
    pending: Arc<AtomicBool>,
}

impl AsyncStore<u64, u64> for Nesting {
    type Error = String;
    async fn load(&self, _: &u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    async fn write_batch(&self, _: &[Op<u64, u64>]) -> Result<(), String> {
        if let Some(job) = self.job.lock().unwrap().as_mut() {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let pending = job.as_mut().poll(&mut cx).is_pending();
            self.pending.store(pending, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Another task's write of the stripe, polled on the store's thread while
/// the store writes, is no re-entry: it waits its turn, and lands after.
#[test]
fn another_tasks_write_polled_inside_a_store_call_waits_its_turn() {
    let store = Nesting::default();
    let cache: NestingCache = Cache::builder()
        .max_capacity(100)
        .write_through(store.clone())
        .build()
        .unwrap();
    let other = cache.clone();
    *store.job.lock().unwrap() = Some(Box::pin(async move { other.put_async(1, 7).await.is_ok() }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(cache.put_async(1, 1))
        .expect("the write is no re-entry");
    assert!(
        store.pending.load(Ordering::SeqCst),
        "the job waited for the stripe"
    );
    assert_eq!(cache.peek(&1), Some(1));
    let job = store.job.lock().unwrap().take().unwrap();
    assert!(runtime.block_on(job), "the job landed after");
    assert_eq!(cache.peek(&1), Some(7));
}

/// A write made as the thread ends, from a thread-local's `Drop` (after the
/// cache's own thread-locals may be gone), goes through like any other.
#[test]
fn an_async_write_from_a_thread_locals_drop_goes_through() {
    struct WritesOnDrop(NestingCache, Arc<AtomicBool>);
    impl Drop for WritesOnDrop {
        fn drop(&mut self) {
            let mut put = std::pin::pin!(self.0.put_async(2, 2));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            // Uncontended, against a store that is ready at once.
            let done = std::future::Future::poll(put.as_mut(), &mut cx);
            self.1.store(
                matches!(done, std::task::Poll::Ready(Ok(()))),
                Ordering::SeqCst,
            );
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<WritesOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let cache: NestingCache = Cache::builder()
        .max_capacity(100)
        .write_through(Nesting::default())
        .build()
        .unwrap();
    let written = Arc::new(AtomicBool::new(false));
    let (c, w) = (cache.clone(), written.clone());
    std::thread::spawn(move || {
        // Registered first, so dropped after the thread-locals the write
        // below registers.
        ON_EXIT.with(|slot| *slot.borrow_mut() = Some(WritesOnDrop(c.clone(), w)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(c.put_async(1, 1)).unwrap();
    })
    .join()
    .expect("the thread ended without a panic");
    assert!(
        written.load(Ordering::SeqCst),
        "the write from the drop went through"
    );
    assert_eq!((cache.peek(&1), cache.peek(&2)), (Some(1), Some(2)));
}

/// A compute whose store load or write puts its own key to the cache, from
/// the same task, panics instead of waiting for itself, and releases the
/// stripe.
#[test]
fn an_async_store_writing_its_own_key_under_compute_async_panics_instead_of_hanging() {
    let cache = async_echo_cache();
    let writer = cache.clone();
    let message =
        panic_message(async move { writer.compute_async(42, |_| Compute::<u64>::Keep).await });
    assert!(message.contains("would wait for itself"), "{message}");
    let writer = cache.clone();
    let message = panic_message(async move { writer.compute_async(1, |_| Compute::Put(1)).await });
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!((cache.peek(&42), cache.peek(&1)), (None, None));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = runtime.block_on(cache.compute_async(1, |v| Compute::Put(v.map_or(500, |v| v + 1))));
    assert_eq!(
        out,
        Ok(Computed::Inserted(500)),
        "the key's stripe was released"
    );
    assert_eq!(cache.peek(&1), Some(500));
}

/// A compute's closure writing its own key by blocking (a `put`, a batch)
/// panics instead of waiting for itself, however the compute took the key's
/// stripe: an async holder is no thread's, so the stripe alone could not
/// tell. Each time the stripe and the room are given back and the key is
/// left as it was.
#[test]
fn a_compute_closure_writing_its_own_key_panics_however_the_compute_took_the_stripe() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let remote = Remote::default();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let back: SpawnedWriteBack = Cache::builder()
        .max_capacity(100)
        .write_back(store, WriteBack::default().queue_capacity(4))
        .build()
        .unwrap();
    runtime.block_on(back.put_async(1, 10)).unwrap();
    /// A compute whose closure writes its key, run to its panic's message.
    type Reentry = Box<dyn FnOnce() -> String>;
    let reentries: [(&str, Reentry); 3] = [
        ("compute_async, put", {
            let back = back.clone();
            Box::new(move || {
                panic_message(async move {
                    let inner = back.clone();
                    back.compute_async(1, move |_| {
                        let _ = inner.put(1, 11);
                        Compute::Put(12)
                    })
                    .await
                })
            })
        }),
        ("compute_async, a batch of it", {
            let back = back.clone();
            Box::new(move || {
                panic_message(async move {
                    let inner = back.clone();
                    back.compute_async(1, move |_| {
                        let _ = inner.put_all([(1, 11), (3, 30)]);
                        Compute::Put(12)
                    })
                    .await
                })
            })
        }),
        ("compute, put", {
            let back = back.clone();
            Box::new(move || {
                panic_message(async move {
                    back.compute(1, |_| {
                        let _ = back.put(1, 11);
                        Compute::Put(12)
                    })
                })
            })
        }),
    ];
    for (case, reenter) in reentries {
        let message = reenter();
        assert!(
            message.contains("would wait for itself"),
            "{case}: {message}"
        );
        assert_eq!((back.peek(&1), back.peek(&3)), (Some(10), None), "{case}");
    }
    // The stripe and the room were given back.
    assert_eq!(runtime.block_on(back.put_async(1, 13)), Ok(()));
    runtime.block_on(back.flush_async()).unwrap();
    assert_eq!((remote.0.value(1), remote.0.value(3)), (Some(13), None));
}

/// Another task's async write of the key, polled by an executor that a
/// compute's closure runs, waits its turn and lands once the compute has:
/// only a blocking write from the closure is taken for one waiting for
/// itself.
#[test]
fn another_tasks_write_polled_inside_a_compute_closure_waits_its_turn() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let remote = Remote::default();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    let back: SpawnedWriteBack = Cache::builder()
        .max_capacity(100)
        .write_back(store, WriteBack::default())
        .build()
        .unwrap();
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let other = back.clone();
    let mut task = None;
    let computed = back.compute(1, |_| {
        task = local.block_on(async {
            let task = tokio::spawn(async move { other.put_async(1, 11).await });
            // The task is polled, and waits for the stripe.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            Some(task)
        });
        Compute::Put(10)
    });
    assert_eq!(computed, Ok(Computed::Inserted(10)));
    let written = local.block_on(task.expect("spawned"));
    assert_eq!(written.expect("the task did not panic"), Ok(()));
    assert_eq!(
        back.peek(&1),
        Some(11),
        "the task's write, after the compute's"
    );
    runtime.block_on(back.flush_async()).unwrap();
    assert_eq!(remote.0.value(1), Some(11));
}

/// Tasks counting up one key through an async store lose no update: each
/// compute holds the key's stripe from its read to its write, across the
/// store's awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_through_compute_counts_without_losing_updates() {
    let remote = Remote::default();
    remote.0.delay_ms.store(1, Ordering::SeqCst);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    if i % 5 == t {
                        // The next compute reads the store.
                        cache.invalidate_all();
                    }
                    let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
                    assert!(cache.compute_async(7, count).await.is_ok());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(remote.0.value(7), Some(100));
    assert_eq!(cache.get_async(&7).await, Ok(Some(100)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_through_compute_writes_through_and_a_failure_changes_nothing() {
    let remote = Remote::default();
    remote.0.data.lock().unwrap().insert(1, 10);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    let calls = || remote.0.write_calls.load(Ordering::SeqCst);
    assert_eq!(
        cache.compute_async(1, |_| Compute::Keep).await,
        Ok(Computed::Unchanged(10))
    );
    assert_eq!((cache.peek(&1), calls()), (None, 0), "read, not cached");
    assert_eq!(
        cache.compute_async(2, |_| Compute::Remove).await,
        Ok(Computed::Absent)
    );
    assert_eq!(calls(), 0, "nothing to remove: no store call");
    assert_eq!(
        cache
            .compute_async(1, |v| Compute::Put(v.unwrap() + 1))
            .await,
        Ok(Computed::Replaced(11))
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (Some(11), Some(11)));
    let tagged = EntryOptions::new().tags(["t"]);
    assert_eq!(
        cache
            .compute_async(2, |_| Compute::PutWith(20, tagged))
            .await,
        Ok(Computed::Inserted(20))
    );
    cache.invalidate_tag("t");
    assert_eq!((remote.0.value(2), cache.peek(&2)), (Some(20), None));
    remote.0.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        cache.compute_async(1, |_| Compute::Remove).await,
        Err(WriteError::Store("remote down".into()))
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (Some(11), Some(11)));
    remote.0.fail.store(false, Ordering::SeqCst);
    assert_eq!(
        cache.compute_async(1, |_| Compute::Remove).await,
        Ok(Computed::Removed(11))
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (None, None));
    assert_eq!(calls(), 4);
}

/// Cancelled in its load, a compute changes nothing; cancelled in its
/// write, it drops the key's cached copy, as `put_async` does; either way
/// the stripe is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_async_write_through_compute_releases_its_key() {
    let remote = Remote::default();
    remote.0.data.lock().unwrap().insert(2, 20);
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache.put_async(1, 10).await.unwrap();
    remote.0.delay_ms.store(3_600_000, Ordering::SeqCst);
    let ran = AtomicBool::new(false);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        cache.compute_async(2, |_| {
            ran.store(true, Ordering::SeqCst);
            Compute::Put(21)
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the compute was cancelled in its load");
    assert!(!ran.load(Ordering::SeqCst));
    remote.0.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!((remote.0.value(2), cache.peek(&2)), (Some(20), None));
    remote.0.hold_next_ms.store(3_600_000, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        cache.compute_async(1, |v| Compute::Put(v.unwrap() + 1)),
    )
    .await;
    assert!(cancelled.is_err(), "the compute was cancelled in its write");
    assert_eq!(cache.peek(&1), None, "the cache no longer claims 10");
    remote.0.hold_next_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        cache
            .compute_async(1, |v| Compute::Put(v.unwrap() + 1))
            .await,
        Ok(Computed::Replaced(11)),
        "the store decides, and the stripe is free"
    );
    assert_eq!(
        cache
            .compute_async(2, |v| Compute::Put(v.unwrap() + 1))
            .await,
        Ok(Computed::Replaced(21))
    );
    assert_eq!((remote.0.value(1), remote.0.value(2)), (Some(11), Some(21)));
}

/// Cancelled in the store's delete, a write-through `compute_async` that
/// decided to remove its key drops the key's cached copy (the store may or
/// may not have deleted it), so the next read asks the store; the stripe
/// is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_compute_cancelled_in_its_delete_drops_the_cached_copy() {
    let remote = Remote::default();
    let cache = Cache::builder()
        .max_capacity(100)
        .write_through(remote.clone())
        .build()
        .unwrap();
    cache.put_async(1, 10).await.unwrap();
    remote.0.hold_next_ms.store(3_600_000, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        cache.compute_async(1, |v| {
            assert_eq!(v, Some(&10), "read from the cache");
            Compute::Remove
        }),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the compute was cancelled in its delete"
    );
    assert_eq!(cache.peek(&1), None, "the cache no longer claims 10");
    // The delete never reached the store: a read finds its value there.
    assert_eq!(cache.get_async(&1).await, Ok(Some(10)));
    assert_eq!(
        cache.compute_async(1, |_| Compute::Remove).await,
        Ok(Computed::Removed(10)),
        "the stripe is free"
    );
    assert_eq!((remote.0.value(1), cache.peek(&1)), (None, None));
}

/// Tasks counting up keys through a write-back cache over an async store,
/// with a queue too small for all of them, lose no update, and wait for
/// room as pending tasks: on one thread, a compute blocking it would starve
/// the store calls that make room.
#[tokio::test(flavor = "current_thread")]
async fn async_write_back_compute_counts_and_waits_for_room_as_a_task() {
    let (remote, cache) = small_spawned_queue(2);
    remote.0.data.lock().unwrap().insert(0, 1_000);
    let tasks: Vec<_> = (0..3u64)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    if i % 4 == t {
                        // The next computes read the queue or the store.
                        cache.invalidate_all();
                    }
                    let count = |n: Option<&u64>| Compute::Put(n.map_or(1, |n| n + 1));
                    assert!(cache.compute_async(i % 3, count).await.is_ok());
                }
            })
        })
        .collect();
    // A task never woken for the room it waits for would hang the test.
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(120), all).await;
    assert!(ended.is_ok(), "every compute ends");
    cache.flush_async().await.unwrap();
    let stored: Vec<_> = (0..3).map(|k| remote.0.value(k)).collect();
    assert_eq!(stored, [Some(1_021), Some(21), Some(18)]);
    assert_eq!(cache.get_async(&0).await, Ok(Some(1_021)));
    cache.close_async().await.unwrap();
}

/// Cancelled while it waits for room, or during its load, a write-back
/// compute changes nothing and gives its room back.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_async_write_back_compute_changes_nothing() {
    let (remote, cache) = small_spawned_queue(1);
    remote.0.data.lock().unwrap().insert(5, 50);
    // Key 1's write stays in flight, and takes the queue's one unit.
    remote.0.hold_next_ms.store(200, Ordering::SeqCst);
    cache.put_async(1, 1).await.unwrap();
    let accepted = cache.write_stats().accepted;
    let waiting = cache.compute_async(2, |_| Compute::Put(2));
    let cancelled = tokio::time::timeout(Duration::from_millis(30), waiting).await;
    assert!(cancelled.is_err(), "the compute waited for room");
    assert_eq!(cache.write_stats().accepted, accepted);
    assert_eq!(cache.peek(&2), None);
    cache.flush_async().await.unwrap();
    // The load of key 5 takes an hour: cancelled in it.
    remote.0.delay_ms.store(3_600_000, Ordering::SeqCst);
    let ran = AtomicBool::new(false);
    let loading = cache.compute_async(5, |_| {
        ran.store(true, Ordering::SeqCst);
        Compute::Put(51)
    });
    let cancelled = tokio::time::timeout(Duration::from_millis(30), loading).await;
    assert!(cancelled.is_err(), "the compute was cancelled in its load");
    assert!(!ran.load(Ordering::SeqCst));
    remote.0.delay_ms.store(2, Ordering::SeqCst);
    // Had either kept its unit, the queue of one would have no room now.
    let put = tokio::time::timeout(Duration::from_secs(60), cache.put_async(6, 6)).await;
    assert_eq!(put.ok(), Some(Ok(())), "the room was given back");
    assert_eq!(
        cache
            .compute_async(5, |v| Compute::Put(v.unwrap() + 1))
            .await,
        Ok(Computed::Replaced(51))
    );
    cache.close_async().await.unwrap();
    let stored: Vec<_> = [1, 2, 5, 6].iter().map(|&k| remote.0.value(k)).collect();
    assert_eq!(stored, [Some(1), None, Some(51), Some(6)]);
}

/// A write-back `compute_async` waiting for room holds no lock stripe: a
/// write of another key of its stripe, which needs no room, goes through
/// meanwhile, on the compute's own thread.
#[tokio::test(flavor = "current_thread")]
async fn an_async_write_back_compute_waits_for_room_holding_no_stripe() {
    let remote = Remote::default();
    remote.0.delay_ms.store(2, Ordering::SeqCst);
    let handle = tokio::runtime::Handle::current();
    let store = Spawned::new(remote.clone(), move |call| {
        handle.spawn(call);
    });
    // Keys 1 and 1025 share a stripe.
    let cache: Cache<
        u64,
        u64,
        std::hash::BuildHasherDefault<common::KeyMod1024>,
        larder::WriteBehind<u64, u64, Spawned<Remote>>,
    > = Cache::builder()
        .max_capacity(100)
        .hasher(Default::default())
        .write_back(
            store,
            WriteBack::default()
                .max_delay(Duration::ZERO)
                .queue_capacity(1),
        )
        .build()
        .unwrap();
    // Key 1's write stays in flight a while, holding the queue's one unit.
    remote.0.hold_next_ms.store(1_500, Ordering::SeqCst);
    cache.put_async(1, 1).await.unwrap();
    while remote.0.write_calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let computing = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .compute_async(1025, |v| Compute::Put(v.map_or(10, |v| v + 1)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!computing.is_finished(), "the compute waits for room");
    // Waits behind the write in flight, taking no room: it needs only the
    // stripe, which the waiting compute must not hold.
    cache.put_async(1, 2).await.unwrap();
    assert!(
        !computing.is_finished(),
        "the put waited for the compute, so for the room"
    );
    assert_eq!(computing.await.unwrap(), Ok(Computed::Inserted(10)));
    cache.flush_async().await.unwrap();
    assert_eq!(
        (remote.0.value(1), remote.0.value(1025)),
        (Some(2), Some(10))
    );
    cache.close_async().await.unwrap();
}

/// A write-back compute whose async store load writes its own key to the
/// cache, from the same task, panics instead of waiting for itself, and
/// releases the stripe and the room.
#[test]
fn an_async_store_writing_its_own_key_under_write_back_compute_async_panics() {
    type EchoWriteBack = Cache<
        u64,
        u64,
        larder::DefaultHashBuilder,
        larder::WriteBehind<u64, u64, Spawned<AsyncEcho>>,
    >;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let store = AsyncEcho::default();
    let settings = WriteBack::default()
        .queue_capacity(1)
        .backpressure(larder::Backpressure::Fail);
    let cache: EchoWriteBack = Cache::builder()
        .max_capacity(100)
        .write_back(
            Spawned::new(store.clone(), move |call| {
                handle.spawn(call);
            }),
            settings,
        )
        .build()
        .unwrap();
    let echo = cache.clone();
    let put: EchoPut = Box::new(move |k, v| {
        let cache = echo.clone();
        Box::pin(async move { cache.put_async(k, v).await.is_ok() })
    });
    assert!(store.put.set(put).is_ok());
    let writer = cache.clone();
    let message =
        panic_message(async move { writer.compute_async(42, |_| Compute::<u64>::Keep).await });
    assert!(message.contains("would wait for itself"), "{message}");
    assert_eq!(cache.peek(&42), None);
    assert_eq!(
        runtime.block_on(cache.put_async(7, 7)),
        Ok(()),
        "the stripe and the room were given back"
    );
}
