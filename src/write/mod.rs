//! Write policies: where a write lands besides the cache.
//!
//! The system of record (a database, a service) is a user type implementing
//! [`Store`]. The builder picks the policy, which becomes the last type
//! parameter of [`Cache`](crate::Cache):
//!
//! | policy | builder | `get` on a miss | `put` / `delete` | `flush` |
//! |---|---|---|---|---|
//! | [`CacheAside`] (default) | — | `None` | `insert` / `remove`: the cache only | — |
//! | [`ReadThrough`] | [`read_through`](crate::CacheBuilder::read_through) | loads from the store (single flight) | the cache only; the caller writes the store | `Ok` |
//! | [`WriteThrough`] | [`write_through`](crate::CacheBuilder::write_through) | loads from the store | the store first, then the cache | `Ok` |
//! | [`WriteBehind`] | [`write_back`](crate::CacheBuilder::write_back) | the pending write, else the store | the cache and a queue; a flusher thread writes batches | waits for the queue |

mod back;
mod error;
mod key_locks;
mod policies;
mod settings;

use crate::EntryOptions;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

pub use back::WriteBehind;
pub use error::{FailedWrite, Failure, FlushError, WriteError};
pub(crate) use key_locks::{Forget, KeyGuard, KeyLocks, Waiter, Wakers};
pub use settings::{Backpressure, WriteBack};

/// One write to the system of record.
///
/// ```
/// use larder::Op;
///
/// let ops = [Op::Put("a", 1), Op::Delete("b")];
/// let keys: Vec<&&str> = ops.iter().map(Op::key).collect();
/// assert_eq!(keys, [&"a", &"b"]);
/// assert!(matches!(ops[0], Op::Put(_, 1)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<K, V> {
    /// Store `value` under `key`.
    Put(K, V),
    /// Remove `key`.
    Delete(K),
}

impl<K, V> Op<K, V> {
    /// The key written.
    ///
    /// ```
    /// assert_eq!(larder::Op::<u32, u32>::Delete(7).key(), &7);
    /// ```
    pub fn key(&self) -> &K {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// The system of record behind a cache: loads single keys and applies writes.
///
/// Implement [`load`](Self::load) and [`write`](Self::write); override
/// [`write_batch`](Self::write_batch) when the store can apply many writes in
/// one call (a transaction, a multi-row statement). Errors are the store's own
/// type. Any method may panic: the cache stays consistent (a write-back
/// flusher treats a panic as a failed attempt and retries it).
///
/// Writes may be retried after a failure, including a batch that failed half
/// way, so they must be idempotent: applying a batch twice in a row must leave
/// what applying it once leaves. Puts and deletes of whole values are.
///
/// A store must not write to the cache it stands behind: a write-through
/// `write` runs under a lock of its key's stripe (shared with about one key in
/// 1,024), and a write-back `write_batch` runs on the flusher, which a
/// blocking `put`, `flush` or `close` would wait for. A write-through
/// `write` that does `put` or `delete` a key of its own stripe panics with a
/// message rather than wait for itself.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use larder::{Op, Store};
///
/// #[derive(Default)]
/// struct Memory(Mutex<HashMap<u32, String>>);
///
/// impl Store<u32, String> for Memory {
///     type Error = std::convert::Infallible;
///     fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///     fn write(&self, op: &Op<u32, String>) -> Result<(), Self::Error> {
///         let mut map = self.0.lock().unwrap();
///         match op {
///             Op::Put(k, v) => map.insert(*k, v.clone()),
///             Op::Delete(k) => map.remove(k),
///         };
///         Ok(())
///     }
/// }
/// ```
pub trait Store<K, V>: Send + Sync + 'static {
    /// What the store's calls fail with.
    type Error: Send + Sync + 'static;

    /// The value under `key`, or `Ok(None)` if the store has none.
    ///
    /// # Errors
    ///
    /// The store's error; it reaches every caller waiting on this load and is
    /// not cached.
    fn load(&self, key: &K) -> Result<Option<V>, Self::Error>;

    /// The values the store has under `keys`, as `(key, value)` pairs in
    /// any order: what a bulk `get_all` asks, in one call, for the keys it
    /// misses. The default calls [`load`](Self::load) for each and stops at
    /// the first error; override it when the store reads many keys at once
    /// (`WHERE id IN (...)`).
    ///
    /// # Errors
    ///
    /// The store's error; it reaches every caller waiting on these keys'
    /// loads and is not cached.
    fn load_all(&self, keys: &[K]) -> Result<Vec<(K, V)>, Self::Error>
    where
        K: Clone,
    {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.load(key)? {
                found.push((key.clone(), value));
            }
        }
        Ok(found)
    }

    /// Applies one write.
    ///
    /// # Errors
    ///
    /// The store's error: a write-through `put` returns it, a write-back
    /// flusher retries.
    fn write(&self, op: &Op<K, V>) -> Result<(), Self::Error>;

    /// Applies writes in order, at most one per key. The default calls
    /// [`write`](Self::write) for each and stops at the first error.
    ///
    /// # Errors
    ///
    /// The store's error; the whole batch is then retried.
    fn write_batch(&self, ops: &[Op<K, V>]) -> Result<(), Self::Error> {
        ops.iter().try_for_each(|op| self.write(op))
    }

    /// How a value read through this store is cached: its time to live and
    /// its tags. It is called for each value a `get` caches after a miss:
    /// one this store loaded or, with write-back, one the load found queued.
    /// The default caches it with neither.
    ///
    /// Tag loaded values here for [`invalidate_tag`](crate::Cache::invalidate_tag)
    /// to reach them, and to reach a load still in flight: a load whose tags
    /// include an invalidated tag hands its value to its callers but does not
    /// cache it, even if it read the store before the change the invalidation
    /// stands for. A load with no tags is not stopped by a tag invalidation;
    /// the cache's `delete` of a key (and `invalidate_all`) stops any load
    /// of it. A panic here fails the load as a panic in
    /// [`load`](Self::load) would.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, EntryOptions, Op, Store};
    ///
    /// /// Orders, keyed by id; order `id` belongs to customer `id / 100`.
    /// struct Orders;
    /// impl Store<u64, String> for Orders {
    ///     type Error = std::convert::Infallible;
    ///     fn load(&self, id: &u64) -> Result<Option<String>, Self::Error> {
    ///         Ok(Some(format!("order {id}")))
    ///     }
    ///     fn write(&self, _op: &Op<u64, String>) -> Result<(), Self::Error> {
    ///         Ok(())
    ///     }
    ///     fn load_options(&self, id: &u64, _order: &String) -> EntryOptions {
    ///         EntryOptions::new()
    ///             .tags([format!("customer:{}", id / 100)])
    ///             .ttl(Duration::from_secs(60))
    ///     }
    /// }
    ///
    /// let cache = Cache::builder().max_capacity(100).read_through(Orders).build().unwrap();
    /// cache.get(&701).unwrap();
    /// cache.get(&702).unwrap();
    /// cache.get(&801).unwrap();
    /// cache.invalidate_tag("customer:7"); // customer 7's orders changed
    /// assert_eq!(cache.len(), 1);
    /// assert!(cache.contains_key(&801));
    /// ```
    fn load_options(&self, key: &K, value: &V) -> EntryOptions {
        let _ = (key, value);
        EntryOptions::default()
    }
}

/// The async twin of [`Store`], for async database clients: the same
/// contract, with futures. A cache over an `AsyncStore` is used through the
/// `_async` calls (`get_async`, `put_async`, `delete_async`). For write-back,
/// wrap it in [`Spawned`] with your runtime's spawn function.
///
/// An `AsyncStore` must not write to the cache it stands behind either. A
/// write-through `write_batch` whose future awaits a `put_async` or
/// `delete_async` of a key of its own stripe panics with a message rather
/// than stay pending for good. It is caught when the store's future polls
/// that write itself, or through a combinator that hands it the task's own
/// waker (`join!`, `select!`); a write it leaves to another task (one it
/// spawns, or a combinator such as `FuturesUnordered` that gives each
/// future a waker of its own), or makes from its `Drop` when cancelled, is
/// not caught.
///
/// From async code, call only the `_async` methods. A blocking call (`put`,
/// `delete`, `flush`, `close`, `get_or_load`) parks its thread while it waits
/// for a key's stripe, a load or the queue; on a single-threaded runtime the
/// task it waits for (a `put_async` holding the stripe across its store call,
/// say) runs on that same thread and never finishes.
///
/// ```
/// use larder::{AsyncStore, Cache, Op};
///
/// struct Remote;
/// impl AsyncStore<u32, String> for Remote {
///     type Error = std::io::Error;
///     async fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
///         Ok(Some(format!("remote {key}"))) // an HTTP or database call here
///     }
///     async fn write_batch(&self, _ops: &[Op<u32, String>]) -> Result<(), Self::Error> {
///         Ok(())
///     }
/// }
/// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # runtime.block_on(async {
/// let cache = Cache::builder().max_capacity(100).write_through(Remote).build().unwrap();
/// assert_eq!(cache.get_async(&7).await.unwrap(), Some("remote 7".to_string()));
/// cache.put_async(7, "seven".to_string()).await.unwrap();
/// assert_eq!(cache.peek(&7), Some("seven".to_string()));
/// # });
/// ```
pub trait AsyncStore<K, V>: Send + Sync + 'static {
    /// What the store's calls fail with.
    type Error: Send + Sync + 'static;

    /// The value under `key`, or `Ok(None)` if the store has none.
    fn load(&self, key: &K) -> impl Future<Output = Result<Option<V>, Self::Error>> + Send;

    /// The values the store has under `keys`, as `(key, value)` pairs in
    /// any order: what a bulk `get_all_async` asks, in one call, for the
    /// keys it misses (see [`Store::load_all`]). The default awaits
    /// [`load`](Self::load) for each in turn and stops at the first error.
    fn load_all(&self, keys: &[K]) -> impl Future<Output = Result<Vec<(K, V)>, Self::Error>> + Send
    where
        K: Clone + Send + Sync,
        V: Send,
    {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(value) = self.load(key).await? {
                    found.push((key.clone(), value));
                }
            }
            Ok(found)
        }
    }

    /// Applies writes in order, at most one per key, idempotently (see
    /// [`Store`]).
    ///
    /// A write-through `put_async` whose caller is cancelled drops this
    /// future and lets the next write of the key go ahead. A store whose
    /// request, once sent, still lands after its future is dropped may then
    /// land after that later write, leaving the store an older value than
    /// the cache: such a store should finish its writes to a key in order
    /// (one connection per key, say, or a version check).
    fn write_batch(&self, ops: &[Op<K, V>])
        -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How a value read through this store is cached: its time to live and
    /// its tags (see [`Store::load_options`]). The default caches it with
    /// neither.
    ///
    /// ```
    /// use larder::{AsyncStore, Cache, EntryOptions, Op};
    ///
    /// struct Remote;
    /// impl AsyncStore<u32, String> for Remote {
    ///     type Error = std::io::Error;
    ///     async fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
    ///         Ok(Some(format!("remote {key}")))
    ///     }
    ///     async fn write_batch(&self, _ops: &[Op<u32, String>]) -> Result<(), Self::Error> {
    ///         Ok(())
    ///     }
    ///     fn load_options(&self, key: &u32, _value: &String) -> EntryOptions {
    ///         EntryOptions::new().tags([format!("shelf:{}", key / 10)])
    ///     }
    /// }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = Cache::builder().max_capacity(100).read_through(Remote).build().unwrap();
    /// cache.get_async(&31).await.unwrap();
    /// cache.get_async(&42).await.unwrap();
    /// cache.invalidate_tag("shelf:3");
    /// assert!(!cache.contains_key(&31) && cache.contains_key(&42));
    /// # });
    /// ```
    fn load_options(&self, key: &K, value: &V) -> EntryOptions {
        let _ = (key, value);
        EntryOptions::default()
    }
}

/// An [`AsyncStore`] made usable by a write-back cache's flusher thread: each
/// store call is handed, as a future, to `spawn` (your runtime's spawn
/// function), and the flusher waits for its result. The runtime stays yours;
/// larder needs none.
///
/// From async code, read with `get_async` and finish with `flush_async` /
/// `close_async`: the sync `get`, `flush` and `close` block their thread
/// until the spawned calls are done, which on a single-threaded runtime
/// never happens. For the same reason, write with `put_async` /
/// `delete_async` (a full queue suspends the task instead of blocking the
/// thread), and `close_async` a write-back cache before its last handle is
/// dropped on a runtime thread (dropping it waits for the queue to drain, up
/// to [`WriteBack::drop_wait`]). Close the cache before its runtime shuts
/// down, too: a `spawn` that panics (tokio's, on a runtime that is gone)
/// fails the call like a store that panics, so the queued writes are retried
/// and then reported, each attempt's panic reaching the panic hook.
///
/// ```
/// use std::time::Duration;
/// use larder::{AsyncStore, Cache, Op, Spawned, WriteBack};
///
/// struct Remote;
/// impl AsyncStore<u32, u32> for Remote {
///     type Error = std::io::Error;
///     async fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
///     async fn write_batch(&self, ops: &[Op<u32, u32>]) -> Result<(), Self::Error> {
///         Ok(()) // one round trip for the whole batch
///     }
/// }
/// # let runtime = tokio::runtime::Runtime::new().unwrap();
/// # runtime.block_on(async {
/// let handle = tokio::runtime::Handle::current();
/// let store = Spawned::new(Remote, move |call| {
///     handle.spawn(call);
/// });
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(store, WriteBack::default())
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// assert_eq!(cache.get_async(&1).await.unwrap(), Some(10));
/// cache.flush_async().await.unwrap();
/// # });
/// ```
pub struct Spawned<St> {
    store: Arc<St>,
    spawn: Spawner,
}

/// A runtime's spawn function, as [`Spawned`] takes it.
type Spawner = Box<dyn Fn(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

impl<St> fmt::Debug for Spawned<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawned").finish_non_exhaustive()
    }
}

impl<St> Spawned<St> {
    /// `store`, its calls run by `spawn`.
    ///
    /// The result is a blocking [`Store`]: each call is spawned as a future
    /// and the calling thread waits for its result (the write-back flusher
    /// is that thread). Do not call it from a runtime thread.
    ///
    /// ```
    /// use larder::{AsyncStore, Op, Spawned, Store};
    /// # struct Remote;
    /// # impl AsyncStore<u32, u32> for Remote {
    /// #     type Error = std::io::Error;
    /// #     async fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(Some(k + 1)) }
    /// #     async fn write_batch(&self, _: &[Op<u32, u32>]) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let handle = runtime.handle().clone();
    /// let store = Spawned::new(Remote, move |call| {
    ///     handle.spawn(call);
    /// });
    /// // Run on the runtime, waited for here:
    /// assert_eq!(store.load(&1).unwrap(), Some(2));
    /// assert!(store.write(&Op::Put(1, 10)).is_ok());
    /// ```
    pub fn new(
        store: St,
        spawn: impl Fn(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            store: Arc::new(store),
            spawn: Box::new(spawn),
        }
    }

    /// The async store inside.
    ///
    /// ```
    /// use larder::Spawned;
    ///
    /// struct Remote {
    ///     url: &'static str,
    /// }
    /// let store = Spawned::new(Remote { url: "db://orders" }, |_call| {});
    /// assert_eq!(store.store().url, "db://orders");
    /// ```
    pub fn store(&self) -> &St {
        &self.store
    }

    /// Runs `call` on the runtime and blocks this thread until it is done. A
    /// panic in the call is caught there and resumed here, message and all,
    /// as if the store were synchronous; so is one in `spawn`, once the call
    /// is done.
    fn run<T: Send + 'static>(&self, call: impl Future<Output = T> + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let call = Box::pin(async move {
            let mut call = std::pin::pin!(call);
            let outcome = std::future::poll_fn(|cx| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    call.as_mut().poll(cx)
                })) {
                    Ok(poll) => poll.map(Ok),
                    Err(panic) => std::task::Poll::Ready(Err(panic)),
                }
            })
            .await;
            let _ = done.send(outcome);
        });
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.spawn)(call)));
        if let Err(panic) = spawned {
            // `spawn` may have panicked after spawning the call: the call
            // then still runs, and a retry (or the next batch) must not
            // overlap it, or an older write could land after a newer one.
            // Wait for it to finish; a call never spawned was dropped with
            // its sender, and the wait ends at once.
            let _ = result.recv();
            std::panic::resume_unwind(panic);
        }
        match result.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the runtime dropped a store call: it shut down"),
        }
    }
}

impl<K, V, St> Store<K, V> for Spawned<St>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: AsyncStore<K, V>,
{
    type Error = St::Error;

    fn load(&self, key: &K) -> Result<Option<V>, Self::Error> {
        let (store, key) = (Arc::clone(&self.store), key.clone());
        self.run(async move { store.load(&key).await })
    }

    fn write(&self, op: &Op<K, V>) -> Result<(), Self::Error> {
        self.write_batch(std::slice::from_ref(op))
    }

    fn write_batch(&self, ops: &[Op<K, V>]) -> Result<(), Self::Error> {
        let (store, ops) = (Arc::clone(&self.store), ops.to_vec());
        self.run(async move { store.write_batch(&ops).await })
    }

    fn load_options(&self, key: &K, value: &V) -> EntryOptions {
        self.store.load_options(key, value)
    }
}

/// The default write policy: the cache knows no store. The application loads
/// on a miss (or uses [`get_or_load`](crate::Cache::get_or_load)) and writes
/// its source of truth itself, removing or replacing the cached copy.
///
/// ```
/// use larder::{Cache, CacheAside, DefaultHashBuilder};
///
/// let cache: Cache<u32, String, DefaultHashBuilder, CacheAside> =
///     Cache::builder().max_capacity(100).build().unwrap();
/// assert_eq!(cache.get(&1), None); // a miss: the application loads
/// assert_eq!(cache.get_or_load(1, |k| format!("row {k}")), "row 1");
/// // After the application changed row 1 in its database:
/// cache.remove(&1);
/// assert!(!cache.contains_key(&1));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheAside;

/// Read-through: `get` loads a missing key from the store, one load per key
/// at a time; `put` and `delete` (and the batches `put_all` and
/// `write_all`) change the cache alone (the application writes the store
/// itself and tells the cache). Built with
/// [`CacheBuilder::read_through`](crate::CacheBuilder::read_through).
///
/// ```
/// # use std::collections::HashMap;
/// # use std::sync::{Arc, Mutex};
/// # use larder::{Op, Store};
/// # #[derive(Clone, Default)]
/// # struct Db(Arc<Mutex<HashMap<u32, u32>>>);
/// # impl Db {
/// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
/// #     fn set(&self, k: u32, v: u32) { self.0.lock().unwrap().insert(k, v); }
/// # }
/// # impl Store<u32, u32> for Db {
/// #     type Error = &'static str;
/// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
/// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
/// #         match op {
/// #             Op::Put(_, v) if *v > 100 => return Err("too large"),
/// #             Op::Put(k, v) => self.set(*k, *v),
/// #             Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
/// #         }
/// #         Ok(())
/// #     }
/// # }
/// use larder::Cache;
///
/// let db = Db::default(); // an in-memory `Store`
/// db.set(1, 10);
/// let cache = Cache::builder().max_capacity(100).read_through(db).build().unwrap();
/// assert_eq!(cache.get(&1), Ok(Some(10))); // loaded, then cached
/// cache.store().set(1, 11); // the application writes the store...
/// cache.put(1, 11).unwrap(); // ...and tells the cache
/// assert_eq!(cache.get(&1), Ok(Some(11)));
/// ```
#[derive(Debug)]
pub struct ReadThrough<St> {
    store: Arc<St>,
}

impl<St> Clone for ReadThrough<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
        }
    }
}

/// Write-through: `put` and `delete` return only after the store accepted the
/// write, and then the cache holds it; a store error leaves the cache
/// unchanged. Writes to one key are serialized, so the cache and the store
/// never end up holding different values (over an [`AsyncStore`], provided
/// a write whose future was dropped does not land after it: see
/// [`AsyncStore::write_batch`]). `get` reads through. Built with
/// [`CacheBuilder::write_through`](crate::CacheBuilder::write_through).
///
/// ```
/// # use std::collections::HashMap;
/// # use std::sync::{Arc, Mutex};
/// # use larder::{Op, Store};
/// # #[derive(Clone, Default)]
/// # struct Db(Arc<Mutex<HashMap<u32, u32>>>);
/// # impl Db {
/// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
/// #     fn set(&self, k: u32, v: u32) { self.0.lock().unwrap().insert(k, v); }
/// # }
/// # impl Store<u32, u32> for Db {
/// #     type Error = &'static str;
/// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
/// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
/// #         match op {
/// #             Op::Put(_, v) if *v > 100 => return Err("too large"),
/// #             Op::Put(k, v) => self.set(*k, *v),
/// #             Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
/// #         }
/// #         Ok(())
/// #     }
/// # }
/// use larder::{Cache, WriteError};
///
/// let db = Db::default(); // an in-memory `Store`; it refuses values over 100
/// let cache = Cache::builder().max_capacity(100).write_through(db).build().unwrap();
/// cache.put(1, 10).unwrap();
/// assert_eq!((cache.store().get(1), cache.peek(&1)), (Some(10), Some(10)));
/// assert_eq!(cache.put(1, 500), Err(WriteError::Store("too large")));
/// assert_eq!((cache.store().get(1), cache.peek(&1)), (Some(10), Some(10)));
/// cache.delete(&1).unwrap();
/// assert_eq!((cache.store().get(1), cache.peek(&1)), (None, None));
/// ```
#[derive(Debug)]
pub struct WriteThrough<St> {
    store: Arc<St>,
    locks: Arc<KeyLocks>,
}

impl<St> Clone for WriteThrough<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            locks: Arc::clone(&self.locks),
        }
    }
}

impl<St> ReadThrough<St> {
    pub(crate) fn new(store: St) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

impl<St> WriteThrough<St> {
    pub(crate) fn new(store: St) -> Self {
        Self {
            store: Arc::new(store),
            locks: Arc::new(KeyLocks::new()),
        }
    }
}

/// Counters of a write-back cache, from [`Cache::write_stats`](crate::Cache::write_stats).
///
/// ```
/// # use std::collections::HashMap;
/// # use std::sync::{Arc, Mutex};
/// # use larder::{Op, Store};
/// # #[derive(Clone, Default)]
/// # struct Db(Arc<Mutex<HashMap<u32, u32>>>);
/// # impl Db {
/// #     fn get(&self, k: u32) -> Option<u32> { self.0.lock().unwrap().get(&k).copied() }
/// #     fn set(&self, k: u32, v: u32) { self.0.lock().unwrap().insert(k, v); }
/// # }
/// # impl Store<u32, u32> for Db {
/// #     type Error = &'static str;
/// #     fn load(&self, k: &u32) -> Result<Option<u32>, Self::Error> { Ok(self.get(*k)) }
/// #     fn write(&self, op: &Op<u32, u32>) -> Result<(), Self::Error> {
/// #         match op {
/// #             Op::Put(_, v) if *v > 100 => return Err("too large"),
/// #             Op::Put(k, v) => self.set(*k, *v),
/// #             Op::Delete(k) => { self.0.lock().unwrap().remove(k); }
/// #         }
/// #         Ok(())
/// #     }
/// # }
/// use std::time::Duration;
/// use larder::{Cache, WriteBack};
///
/// let settings = WriteBack::default().max_delay(Duration::MAX);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Db::default(), settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// cache.put(1, 11).unwrap(); // replaces the first while it waits
/// cache.put(2, 20).unwrap();
/// assert_eq!((cache.write_stats().dirty, cache.write_stats().queued), (2, 2));
/// cache.flush().unwrap();
/// let stats = cache.write_stats();
/// assert_eq!((stats.accepted, stats.coalesced, stats.stored), (3, 1, 2));
/// assert_eq!((stats.store_calls, stats.dirty, stats.queued), (1, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Writes accepted by `put` and `delete`.
    pub accepted: u64,
    /// Accepted writes replaced by a later write to the same key before being sent.
    pub coalesced: u64,
    /// Calls to [`Store::write_batch`], retries included, counted as each
    /// starts (so a batch retried through an outage shows its attempts as
    /// they are made).
    pub store_calls: u64,
    /// Writes the store took.
    pub stored: u64,
    /// Attempts after a batch's first, counted as each starts: a batch sent
    /// three times in all counts 2.
    pub retries: u64,
    /// Writes given up on after every retry, reported (by `flush`, `close` or
    /// to the failure handler) unless superseded.
    pub failed: u64,
    /// Of `failed`, writes not reported because a later write of the same
    /// key was stored before the report (replaying them would write the older
    /// value over the newer), or, when the flusher died, because the key's
    /// later write is reported in their place.
    pub superseded: u64,
    /// Dirty keys now held: waiting, being written, or failed and unreported.
    pub dirty: u64,
    /// Room of the queue in use, against
    /// [`queue_capacity`](crate::WriteBack::queue_capacity): each dirty key,
    /// plus each older failed write of a key still unreported (a key written
    /// again while the store is down holds one unit per failure). A new
    /// key's write meets the backpressure once this reaches the capacity.
    pub queued: u64,
}

/// The write policy of a [`Cache`](crate::Cache): [`CacheAside`],
/// [`ReadThrough`], [`WriteThrough`] or [`WriteBehind`]. Sealed: a bound
/// for code generic over the policy.
///
/// ```
/// use std::hash::{BuildHasher, Hash};
/// use larder::{Cache, WritePolicy};
///
/// /// How many entries a cache holds, whatever its write policy.
/// fn cached<K, V, S, W>(cache: &Cache<K, V, S, W>) -> usize
/// where
///     K: Hash + Eq + Send + Sync + 'static,
///     V: Clone + Send + Sync + 'static,
///     S: BuildHasher,
///     W: WritePolicy,
/// {
///     cache.len()
/// }
/// let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
/// cache.insert(1, 1);
/// assert_eq!(cached(&cache), 1);
/// ```
pub trait WritePolicy: Clone + Send + Sync + 'static + sealed::Sealed {}

impl WritePolicy for CacheAside {}
impl<St: Send + Sync + 'static> WritePolicy for ReadThrough<St> {}
impl<St: Send + Sync + 'static> WritePolicy for WriteThrough<St> {}

pub(crate) mod sealed {
    /// What the builder does with a policy once the cache exists.
    #[allow(unreachable_pub)]
    pub trait Sealed {
        /// Starts the policy's background work, if it has any.
        fn start(&self) -> std::io::Result<()> {
            Ok(())
        }

        /// Whether the cache's own loading calls fill it (no `Store`).
        const CACHE_ASIDE: bool = false;
    }

    impl Sealed for super::CacheAside {
        const CACHE_ASIDE: bool = true;
    }
    impl<St> Sealed for super::ReadThrough<St> {}
    impl<St> Sealed for super::WriteThrough<St> {}
}
