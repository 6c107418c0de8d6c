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
mod policies;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use back::WriteBehind;

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

    /// The key written, taken out of the write.
    pub(crate) fn into_key(self) -> K {
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
/// blocking `put`, `flush` or `close` would wait for.
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
}

/// The async twin of [`Store`], for async database clients: the same
/// contract, with futures. A cache over an `AsyncStore` is used through the
/// `_async` calls (`get_async`, `put_async`, `delete_async`). For write-back,
/// wrap it in [`Spawned`] with your runtime's spawn function.
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

    /// Applies writes in order, at most one per key, idempotently (see
    /// [`Store`]).
    fn write_batch(&self, ops: &[Op<K, V>])
        -> impl Future<Output = Result<(), Self::Error>> + Send;
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
/// to [`WriteBack::drop_wait`]).
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
/// at a time; `put` and `delete` change the cache alone (the application
/// writes the store itself and tells the cache). Built with
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
/// never end up holding different values. `get` reads through. Built with
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

/// Striped per-key locks: a writer holds its key's stripe across the store
/// call and the cache update, so two writes to one key land in the same order
/// in both. Keys sharing a stripe wait for each other, which costs time, not
/// correctness. A stripe can be taken by blocking (sync calls) or by awaiting
/// (async calls), and the two exclude each other.
pub(crate) struct KeyLocks {
    stripes: Box<[Stripe]>,
}

struct Stripe {
    state: parking_lot::Mutex<StripeState>,
    released: parking_lot::Condvar,
}

#[derive(Default)]
struct StripeState {
    held: bool,
    /// Async callers waiting for the stripe; all are woken on release.
    wakers: Wakers,
}

/// A held stripe; released on drop.
pub(crate) struct KeyGuard<'a> {
    stripe: &'a Stripe,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.stripe.state.lock();
        state.held = false;
        let wakers: Vec<_> = state.wakers.take().collect();
        drop(state);
        self.stripe.released.notify_one();
        for waker in wakers {
            waker.wake();
        }
    }
}

impl fmt::Debug for KeyLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLocks")
            .field("stripes", &self.stripes.len())
            .finish()
    }
}

/// The wakers of async callers waiting for something (a stripe, room in the
/// queue, a flush), each under the id of its waiter: a waiter polled again
/// and again (in a `select!` loop) keeps one entry, and one dropped while it
/// waits (a timeout, a lost `select!` branch) takes its entry away with it
/// ([`Waiter`]), so the list never grows past the callers waiting now.
#[derive(Default)]
pub(crate) struct Wakers {
    next: u64,
    waiting: Vec<(u64, std::task::Waker)>,
}

impl Wakers {
    /// Files `cx`'s waker under `waiter`'s id (given one on its first call),
    /// replacing the one it filed before.
    pub(crate) fn register(&mut self, waiter: &Waiter, cx: &std::task::Context<'_>) {
        let mut id = waiter.0.load(std::sync::atomic::Ordering::Relaxed);
        if id == NO_WAITER {
            id = self.next;
            self.next += 1;
            waiter.0.store(id, std::sync::atomic::Ordering::Relaxed);
        }
        match self.waiting.iter_mut().find(|(i, _)| *i == id) {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => self.waiting.push((id, cx.waker().clone())),
        }
    }

    /// Takes `waiter`'s waker away, if it filed one.
    pub(crate) fn forget(&mut self, waiter: &Waiter) {
        let id = waiter.0.load(std::sync::atomic::Ordering::Relaxed);
        if id != NO_WAITER {
            self.waiting.retain(|(i, _)| *i != id);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes every waker, to wake them (their waiters file again if they
    /// still have to wait).
    pub(crate) fn take(&mut self) -> impl Iterator<Item = std::task::Waker> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(_, w)| w)
    }
}

const NO_WAITER: u64 = u64::MAX;

/// One async caller's place among [`Wakers`]: an id, given on its first wait.
/// Atomic only so that the futures holding it stay `Send` and `Sync`.
pub(crate) struct Waiter(std::sync::atomic::AtomicU64);

impl Waiter {
    pub(crate) fn new() -> Self {
        Self(std::sync::atomic::AtomicU64::new(NO_WAITER))
    }

    /// Whether it ever filed a waker.
    pub(crate) fn filed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) != NO_WAITER
    }
}

/// Runs its closure when dropped: a waiter's future, completed or dropped
/// while it waits, takes its waker away with this.
pub(crate) struct Forget<F: FnMut()>(pub(crate) F);

impl<F: FnMut()> Drop for Forget<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Stripes per cache: enough that unrelated keys rarely share one.
const STRIPES: usize = 1024;

impl KeyLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    state: parking_lot::Mutex::new(StripeState::default()),
                    released: parking_lot::Condvar::new(),
                })
                .collect(),
        }
    }

    /// The stripe of a key's hash (its low bits; shards use bits 32 and up).
    fn stripe(&self, hash: u64) -> &Stripe {
        &self.stripes[(hash as usize) & (STRIPES - 1)]
    }

    /// Takes a key's stripe, blocking.
    pub(crate) fn lock(&self, hash: u64) -> KeyGuard<'_> {
        let stripe = self.stripe(hash);
        let mut state = stripe.state.lock();
        while state.held {
            stripe.released.wait(&mut state);
        }
        state.held = true;
        KeyGuard { stripe }
    }

    /// Takes a key's stripe, awaiting. Dropping the future while it waits
    /// gives up nothing (it held nothing yet) and leaves no waker behind.
    pub(crate) async fn lock_async(&self, hash: u64) -> KeyGuard<'_> {
        let stripe = self.stripe(hash);
        let waiter = Waiter::new();
        let _forget = Forget(|| {
            if waiter.filed() {
                stripe.state.lock().wakers.forget(&waiter);
            }
        });
        std::future::poll_fn(|cx| {
            let mut state = stripe.state.lock();
            if state.held {
                state.wakers.register(&waiter, cx);
                std::task::Poll::Pending
            } else {
                state.held = true;
                std::task::Poll::Ready(())
            }
        })
        .await;
        KeyGuard { stripe }
    }
}

/// Settings of a write-back cache's queue and flusher, for
/// [`CacheBuilder::write_back`](crate::CacheBuilder::write_back).
///
/// ```
/// use std::time::Duration;
/// use larder::{Backpressure, WriteBack};
///
/// let settings = WriteBack::default()
///     .max_delay(Duration::from_millis(50))
///     .batch(256)
///     .queue_capacity(10_000)
///     .backpressure(Backpressure::Fail)
///     .retries(5, Duration::from_millis(10));
/// assert_eq!(settings.batch_size(), 256);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBack {
    pub(crate) max_delay: Duration,
    pub(crate) batch: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) backpressure: Backpressure,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) drop_wait: Duration,
}

impl Default for WriteBack {
    /// 50 ms delay, batches of 256, room for 65,536 dirty keys, writers block
    /// when it is full, 5 retries from 10 ms doubling up to 1 s, and a drop
    /// that waits up to 5 s for the queue to drain.
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(50),
            batch: 256,
            queue_capacity: 65_536,
            backpressure: Backpressure::Block,
            retries: 5,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            drop_wait: Duration::from_secs(5),
        }
    }
}

impl WriteBack {
    /// How long a write may wait in the queue before its batch is sent, even
    /// if the batch is not full. Zero sends every write as soon as the flusher
    /// is free; `Duration::MAX` waits for a full batch, a `flush` or `close`,
    /// or a writer waiting for room.
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
    /// assert_eq!(cache.store().get(1), None); // waiting for a full batch
    /// cache.flush().unwrap();
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The most writes per [`Store::write_batch`] call; a batch is sent as soon
    /// as this many keys are waiting. Must be at least 1.
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
    /// let settings = WriteBack::default().batch(3).max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// for k in 0..5 {
    ///     cache.put(k, k).unwrap();
    /// }
    /// cache.flush().unwrap();
    /// assert_eq!(cache.write_stats().store_calls, 2); // 3 writes, then the last 2
    /// ```
    pub fn batch(mut self, size: usize) -> Self {
        self.batch = size;
        self
    }

    /// The configured batch size.
    ///
    /// ```
    /// use larder::WriteBack;
    ///
    /// assert_eq!(WriteBack::default().batch_size(), 256);
    /// assert_eq!(WriteBack::default().batch(64).batch_size(), 64);
    /// ```
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The most dirty keys held at once: waiting, being written, or failed and
    /// not yet reported. Repeated writes to a dirty key take no more room. Must
    /// be at least 1.
    ///
    /// Failed writes keep their room until `flush` or `close` reports them,
    /// so that a store that is down cannot make memory grow. An application
    /// whose store can fail for long should set a failure handler
    /// ([`CacheBuilder::on_write_failure`](crate::CacheBuilder::on_write_failure)),
    /// which frees the room as each failure is handed over, or call `flush`
    /// now and then: otherwise, with [`Backpressure::Block`], a full queue of
    /// unreported failures keeps writers waiting.
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
    /// use larder::{Backpressure, Cache, WriteBack, WriteError};
    ///
    /// let settings = WriteBack::default()
    ///     .queue_capacity(1)
    ///     .backpressure(Backpressure::Fail)
    ///     .max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(1, 11).unwrap(); // key 1 is dirty already: no more room needed
    /// assert_eq!(cache.write_stats().dirty, 1);
    /// assert_eq!(cache.put(2, 20), Err(WriteError::QueueFull));
    /// cache.flush().unwrap(); // key 1 is stored: its room is free
    /// cache.put(2, 20).unwrap();
    /// ```
    pub fn queue_capacity(mut self, keys: usize) -> Self {
        self.queue_capacity = keys;
        self
    }

    /// What a write does when the queue is full.
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
    /// use larder::{Backpressure, Cache, WriteBack};
    ///
    /// let settings = WriteBack::default()
    ///     .backpressure(Backpressure::Block) // the default
    ///     .queue_capacity(1)
    ///     .max_delay(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Db::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.put(2, 20).unwrap(); // waits while the flusher sends key 1
    /// assert_eq!(cache.store().get(1), Some(10));
    /// ```
    pub fn backpressure(mut self, mode: Backpressure) -> Self {
        self.backpressure = mode;
        self
    }

    /// Retries of a failed batch, the first after `backoff`, each later one
    /// after twice the previous wait (at most [`max_backoff`](Self::max_backoff)).
    /// A write still failing after them is given up on: it is reported by the
    /// next `flush` or `close` or, if the cache has a failure handler
    /// ([`CacheBuilder::on_write_failure`](crate::CacheBuilder::on_write_failure)),
    /// handed to the handler instead, as soon as it is given up.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use larder::{Cache, Op, Store, WriteBack};
    ///
    /// #[derive(Default)]
    /// struct Flaky(AtomicU32); // fails twice, then works
    /// impl Store<u32, u32> for Flaky {
    ///     type Error = &'static str;
    ///     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
    ///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> {
    ///         if self.0.fetch_add(1, Ordering::SeqCst) < 2 { Err("busy") } else { Ok(()) }
    ///     }
    /// }
    /// let settings = WriteBack::default().retries(2, Duration::from_millis(1));
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Flaky::default(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// cache.flush().unwrap(); // the third attempt succeeded
    /// let stats = cache.write_stats();
    /// assert_eq!((stats.store_calls, stats.retries, stats.stored), (3, 2, 1));
    /// ```
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// The longest wait between two retries: at most a day (`build` refuses
    /// more with [`BuildError::InvalidWriteBack`](crate::BuildError::InvalidWriteBack)),
    /// since `flush`, `close` and the cache's drop wait out every backoff of
    /// a failing write.
    ///
    /// ```
    /// # use larder::{Op, Store};
    /// # struct Down; // a store that refuses every write
    /// # impl Store<u32, u32> for Down {
    /// #     type Error = &'static str;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
    /// #     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
    /// # }
    /// use std::time::Duration;
    /// use larder::{Cache, WriteBack};
    ///
    /// let settings = WriteBack::default()
    ///     .retries(3, Duration::from_secs(3600))
    ///     .max_backoff(Duration::from_millis(1)); // the hour is capped at 1 ms
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(Down, settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// let report = cache.flush().unwrap_err(); // three retries, 1 ms apart
    /// assert_eq!(report.failed[0].attempts, 4);
    ///
    /// // A flush or close waits out every backoff: more than a day is refused.
    /// let forever = WriteBack::default().max_backoff(Duration::MAX);
    /// let refused = Cache::<u32, u32>::builder().max_capacity(100).write_back(Down, forever).build();
    /// assert!(matches!(refused, Err(larder::BuildError::InvalidWriteBack { .. })));
    /// ```
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// How long dropping the last handle of a write-back cache waits for its
    /// queue to drain. Writes still queued after it are written by the flusher
    /// thread for as long as the process lives. `Duration::MAX` waits until
    /// the queue drains, however long the store takes (for ever, if it hangs).
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
    /// let db = Db::default(); // an in-memory `Store`, shared with the cache
    /// let settings = WriteBack::default()
    ///     .max_delay(Duration::MAX)
    ///     .drop_wait(Duration::MAX);
    /// let cache = Cache::builder()
    ///     .max_capacity(100)
    ///     .write_back(db.clone(), settings)
    ///     .build()
    ///     .unwrap();
    /// cache.put(1, 10).unwrap();
    /// drop(cache); // waits until the queue is drained
    /// assert_eq!(db.get(1), Some(10));
    /// ```
    pub fn drop_wait(mut self, wait: Duration) -> Self {
        self.drop_wait = wait;
        self
    }

    /// The settings' first problem, if any.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.batch == 0 {
            return Err("the batch size must be at least 1");
        }
        if self.queue_capacity == 0 {
            return Err("the queue capacity must be at least 1");
        }
        if self.max_backoff > MAX_BACKOFF {
            return Err(
                "max_backoff must be at most a day: flush and close wait out every backoff",
            );
        }
        Ok(())
    }
}

/// The longest `max_backoff` a [`WriteBack`] may have.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// What a write-back `put` or `delete` does when the queue is full (see
/// [`WriteBack::queue_capacity`]).
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
/// use larder::{Backpressure, Cache, WriteBack, WriteError};
///
/// assert_eq!(Backpressure::default(), Backpressure::Block);
/// let settings = WriteBack::default()
///     .backpressure(Backpressure::Fail)
///     .queue_capacity(1)
///     .max_delay(Duration::MAX);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Db::default(), settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// assert_eq!(cache.put(2, 20), Err(WriteError::QueueFull));
/// assert_eq!(cache.get(&2), Ok(None)); // nothing was changed
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait until the flusher makes room (the default).
    #[default]
    Block,
    /// Return [`WriteError::QueueFull`] at once; nothing is changed.
    Fail,
}

/// Why a `put` or `delete` was not accepted. Nothing was changed.
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
/// match cache.put(1, 500) {
///     Err(WriteError::Store(e)) => assert_eq!(e, "too large"),
///     Err(WriteError::QueueFull | WriteError::Closed) => unreachable!("write-back only"),
///     Ok(()) => unreachable!("refused"),
/// }
/// let closed = WriteError::<&str>::Closed;
/// assert_eq!(closed.to_string(), "the write-back cache is closed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError<E> {
    /// The store refused a write-through write.
    Store(E),
    /// A write-back queue is full and the cache was built with
    /// [`Backpressure::Fail`].
    QueueFull,
    /// The write-back cache was closed.
    Closed,
}

impl<E: fmt::Display> fmt::Display for WriteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Store(e) => write!(f, "the store refused the write: {e}"),
            WriteError::QueueFull => f.write_str("the write-back queue is full"),
            WriteError::Closed => f.write_str("the write-back cache is closed"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for WriteError<E> {}

/// Why a write-back write was given up on.
///
/// ```
/// use std::time::Duration;
/// use larder::{Cache, Failure, Op, Store, WriteBack};
///
/// struct Down; // a store that refuses every write
/// impl Store<u32, u32> for Down {
///     type Error = &'static str;
///     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
///     fn write(&self, _: &Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
/// }
/// let settings = WriteBack::default().retries(0, Duration::ZERO);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Down, settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// let report = cache.flush().unwrap_err();
/// match &report.failed[0].failure {
///     Failure::Store(e) => assert_eq!(**e, "down"),
///     other => unreachable!("{other}"),
/// }
/// let panicked = Failure::<&str>::Panicked("boom".into());
/// assert_eq!(panicked.to_string(), "the store panicked: boom");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure<E> {
    /// The store's error on the last attempt (shared by the batch).
    Store(Arc<E>),
    /// The store panicked on the last attempt, with this message.
    Panicked(String),
    /// The write was never sent: the flusher thread stopped first, with
    /// this reason ("the flusher thread panicked" when a panic in a key's or
    /// value's `Clone`, `Hash` or `Eq` killed it). Its
    /// [`attempts`](FailedWrite::attempts) is 0.
    FlusherStopped(&'static str),
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Store(e) => Failure::Store(Arc::clone(e)),
            Failure::Panicked(m) => Failure::Panicked(m.clone()),
            Failure::FlusherStopped(m) => Failure::FlusherStopped(m),
        }
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Panicked(m) => write!(f, "the store panicked: {m}"),
            Failure::FlusherStopped(m) => write!(f, "not sent: {m}"),
        }
    }
}

/// An acknowledged write-back write that the store did not take after every
/// retry. Until it is reported, a read of its key returns its value.
///
/// ```
/// # use larder::Store;
/// # struct Down; // a store that refuses every write
/// # impl Store<u32, u32> for Down {
/// #     type Error = &'static str;
/// #     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
/// #     fn write(&self, _: &larder::Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
/// # }
/// use std::time::Duration;
/// use larder::{Cache, Failure, Op, WriteBack};
///
/// let settings = WriteBack::default().retries(1, Duration::ZERO);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Down, settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// let report = cache.flush().unwrap_err();
/// let failed = &report.failed[0];
/// assert_eq!(failed.op, Op::Put(1, 10));
/// assert_eq!(failed.attempts, 2); // the first try and one retry
/// assert!(matches!(failed.failure, Failure::Store(_)));
/// ```
#[derive(Debug, Clone)]
pub struct FailedWrite<K, V, E> {
    /// The write.
    pub op: Op<K, V>,
    /// Why the last attempt failed.
    pub failure: Failure<E>,
    /// How many times it was sent; 0 when the flusher thread died before
    /// booking it (see [`Failure::FlusherStopped`]).
    pub attempts: u32,
}

/// Writes the store did not take, reported by `flush` or `close`.
///
/// ```
/// # use larder::Store;
/// # struct Down; // a store that refuses every write
/// # impl Store<u32, u32> for Down {
/// #     type Error = &'static str;
/// #     fn load(&self, _: &u32) -> Result<Option<u32>, Self::Error> { Ok(None) }
/// #     fn write(&self, _: &larder::Op<u32, u32>) -> Result<(), Self::Error> { Err("down") }
/// # }
/// use std::time::Duration;
/// use larder::{Cache, Op, WriteBack};
///
/// let settings = WriteBack::default().retries(0, Duration::ZERO);
/// let cache = Cache::builder()
///     .max_capacity(100)
///     .write_back(Down, settings)
///     .build()
///     .unwrap();
/// cache.put(1, 10).unwrap();
/// cache.delete(&2).unwrap();
/// let report = cache.flush().unwrap_err();
/// let ops: Vec<_> = report.failed.iter().map(|f| f.op.clone()).collect();
/// assert_eq!(ops, [Op::Put(1, 10), Op::Delete(2)]);
/// assert_eq!(report.to_string(), "2 write(s) failed after every retry; first: down");
/// assert!(cache.flush().is_ok()); // each failure is reported once
/// ```
#[derive(Debug)]
pub struct FlushError<K, V, E> {
    /// Each given-up write, in the order they were given up.
    pub failed: Vec<FailedWrite<K, V, E>>,
}

impl<K, V, E: fmt::Display> fmt::Display for FlushError<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} write(s) failed after every retry", self.failed.len())?;
        if let Some(first) = self.failed.first() {
            write!(f, "; first: {}", first.failure)?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug, V: fmt::Debug, E: fmt::Debug + fmt::Display> std::error::Error
    for FlushError<K, V, E>
{
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
/// assert_eq!(cache.write_stats().dirty, 2);
/// cache.flush().unwrap();
/// let stats = cache.write_stats();
/// assert_eq!((stats.accepted, stats.coalesced, stats.stored), (3, 1, 2));
/// assert_eq!((stats.store_calls, stats.dirty), (1, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Writes accepted by `put` and `delete`.
    pub accepted: u64,
    /// Accepted writes replaced by a later write to the same key before being sent.
    pub coalesced: u64,
    /// Calls to [`Store::write_batch`], retries included.
    pub store_calls: u64,
    /// Writes the store took.
    pub stored: u64,
    /// Attempts after a batch's first: a batch sent three times in all
    /// counts 2.
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
    }

    impl Sealed for super::CacheAside {}
    impl<St> Sealed for super::ReadThrough<St> {}
    impl<St> Sealed for super::WriteThrough<St> {}
}
