//! Loading: the calls that fill a miss from a loader, sync or async, with one
//! load per key in flight (see [`crate::loader`] for the flights themselves),
//! and what they share: joining or leading a key's flight, landing the loaded
//! value unless a write made it stale, and booking each load in the
//! statistics.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::{Cache, HeardIfUnwinding, Landing, RemovalCause};
use crate::expiry::EntryOptions;
use crate::loader::{LoadStats, Outcome, Role};
use crate::store::{Removed, Token};
use crate::sync::OnDrop;
use crate::sync::Ordering;
use crate::write::CacheAside;

mod all;
pub use all::LoadedEntry;
mod refresh;

impl<K, V, S> Cache<K, V, S, CacheAside>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The value under `key`, or the one `load` makes for it on a miss, which
    /// is then cached as [`insert`](Self::insert) would cache it. Concurrent callers for one absent key share one load:
    /// the first runs `load`, the others wait for its value. No shard lock is
    /// held while `load` runs, so it may use the cache for other keys (but
    /// not its own: see Panics). Not
    /// detected: a `load` that blocks on a future awaiting its own key
    /// through an `_async` call (`block_on(cache.get_or_load_async(key, ..))`)
    /// waits forever, as that wait cannot be told from another task's.
    ///
    /// A hit costs what [`get`](Self::get) costs. In a cache built with
    /// [`refresh_after`](crate::CacheBuilder::refresh_after), a hit on an
    /// entry due for a refresh runs `load` and returns its value, while other
    /// callers of the key keep getting the cached one meanwhile (see there).
    /// If the key is written, removed or the
    /// cache invalidated while the load runs, the loaded value is returned to
    /// the callers already waiting for it but not cached over the newer
    /// state. A caller arriving after that write (or after an invalidation of
    /// one of the cache's tags) does not take a value read before it: it
    /// waits for that load to end, then loads afresh unless the cache has a
    /// value it may take. One loader of a key runs at a time.
    ///
    /// A waiting caller blocks its thread. In async code use
    /// [`get_or_load_async`](Self::get_or_load_async): blocking a thread whose
    /// runtime is also running the leading task (a single-threaded runtime)
    /// waits for ever. So does a cycle through other threads: a `load` that
    /// waits for a thread which itself waits on this key's load is not
    /// detected (only a loader asking on its own thread is), as with any
    /// cycle of locks.
    ///
    /// # Panics
    ///
    /// - If `load` asks the cache for its own key (through any loading
    ///   call): it would wait for itself forever.
    /// - If `load` panics: the panic reaches this caller, and one of the
    ///   waiting callers runs its own loader instead; nobody waits forever.
    /// - If the weigher, the [`Expiry`](crate::Expiry), the listener or a
    ///   key's `Hash` or `Eq` panics, as for [`insert`](Self::insert).
    /// - The caller that ends a load wakes the async callers waiting for it
    ///   (their tasks' wakers). Should a waker panic (an executor's bug), the
    ///   others are woken all the same and the first panic then reaches that
    ///   caller, its value cached.
    ///
    /// ```
    /// let cache: larder::Cache<u32, String> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache.get_or_load(7, |k| format!("user {k}"));
    /// assert_eq!(v, "user 7");
    /// assert_eq!(cache.get_or_load(7, |_| unreachable!("cached")), "user 7");
    /// ```
    pub fn get_or_load(&self, key: K, load: impl FnOnce(&K) -> V) -> V
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => v,
            Err(stale) => self.load_value(key, stale, load),
        }
    }

    /// [`get_or_load`](Self::get_or_load) with the key borrowed: an owned
    /// key is made (`to_owned`) only on a miss, so a hit on a `String`-keyed
    /// cache allocates nothing. The borrowed form must own to `K` (`str` to
    /// `String`, `[T]` to `Vec<T>`, a `K` to itself): for a key such as
    /// `Arc<str>`, pass a `&Arc<str>` or call `get_or_load`.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// let cache: larder::Cache<String, usize> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(cache.get_or_load_by_ref("larder", |k| k.len()), 6);
    /// // A hit: no `String` is built for the lookup.
    /// assert_eq!(cache.get_or_load_by_ref("larder", |_| unreachable!("cached")), 6);
    /// assert_eq!(cache.get("larder"), Some(6));
    /// ```
    pub fn get_or_load_by_ref<Q>(&self, key: &Q, load: impl FnOnce(&K) -> V) -> V
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.hit_or(key, |v| v, |key, stale| self.load_value(key, stale, load))
    }

    /// What a `_by_ref` call returns: `hit` of the cached value, or `miss`
    /// of the owned key made from `key` (the lookup counted once).
    fn hit_or<Q, R>(
        &self,
        key: &Q,
        hit: impl FnOnce(V) -> R,
        miss: impl FnOnce(K, Option<V>) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.get_for_load(key) {
            Ok(v) => hit(v),
            Err(stale) => miss(key.to_owned(), stale),
        }
    }

    /// [`hit_or`](Self::hit_or) for the async calls: `miss` is awaited.
    async fn hit_or_async<Q, R, F>(
        &self,
        key: &Q,
        hit: impl FnOnce(V) -> R,
        miss: impl FnOnce(K, Option<V>) -> F,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = R>,
    {
        match self.get_for_load(key) {
            Ok(v) => hit(v),
            Err(stale) => miss(key.to_owned(), stale).await,
        }
    }

    /// The miss path of [`get_or_load`](Self::get_or_load).
    fn load_value(&self, key: K, stale: Option<V>, load: impl FnOnce(&K) -> V) -> V
    where
        K: Clone,
    {
        let loaded = self.load(key, stale, Mode::Value, |k| {
            Ok::<_, std::convert::Infallible>(Some((load(k), EntryOptions::default())))
        });
        match loaded {
            Ok(Some(v)) => v,
            _ => unreachable!("an infallible loader always yields a value"),
        }
    }

    /// Like [`get_or_load`](Self::get_or_load), with a loader that also says
    /// how to store what it loaded: a time-to-live and tags. A load during
    /// which one of its tags was invalidated hands its value to its callers
    /// but does not cache it, so an invalidation that began before the load
    /// ends is never undone by it. (Invalidations are remembered per bucket
    /// of tag hashes, so one of an unrelated tag in the same bucket, one in
    /// 64, does the same.)
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<u64, String> = Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache.get_or_load_with(7, |id| {
    ///     let options = EntryOptions::new().ttl(Duration::from_secs(60)).tags([format!("user:{id}")]);
    ///     (format!("profile {id}"), options)
    /// });
    /// assert_eq!(v, "profile 7");
    /// cache.invalidate_tag("user:7");
    /// assert!(!cache.contains_key(&7));
    /// ```
    pub fn get_or_load_with(&self, key: K, load: impl FnOnce(&K) -> (V, EntryOptions)) -> V
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => v,
            Err(stale) => self.load_value_with(key, stale, load),
        }
    }

    /// [`get_or_load_with`](Self::get_or_load_with) with the key borrowed:
    /// an owned key is made only on a miss.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<String, usize> = Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache.get_or_load_with_by_ref("shelf", |k| (k.len(), EntryOptions::new().tags(["s"])));
    /// assert_eq!(v, 5);
    /// cache.invalidate_tag("s");
    /// assert!(!cache.contains_key("shelf"));
    /// ```
    pub fn get_or_load_with_by_ref<Q>(
        &self,
        key: &Q,
        load: impl FnOnce(&K) -> (V, EntryOptions),
    ) -> V
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.hit_or(
            key,
            |v| v,
            |key, stale| self.load_value_with(key, stale, load),
        )
    }

    /// The miss path of [`get_or_load_with`](Self::get_or_load_with).
    fn load_value_with(
        &self,
        key: K,
        stale: Option<V>,
        load: impl FnOnce(&K) -> (V, EntryOptions),
    ) -> V
    where
        K: Clone,
    {
        let loaded = self.load(key, stale, Mode::Value, |k| {
            Ok::<_, std::convert::Infallible>(Some(load(k)))
        });
        match loaded {
            Ok(Some(v)) => v,
            _ => unreachable!("an infallible loader always yields a value"),
        }
    }

    /// [`get_or_load_with`](Self::get_or_load_with) for async code.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<u64, String> = Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache
    ///     .get_or_load_with_async(7, async { ("profile 7".to_string(), EntryOptions::new().tags(["user:7"])) })
    ///     .await;
    /// assert_eq!(v, "profile 7");
    /// cache.invalidate_tag("user:7");
    /// assert!(!cache.contains_key(&7));
    /// # });
    /// ```
    pub async fn get_or_load_with_async(
        &self,
        key: K,
        load: impl Future<Output = (V, EntryOptions)>,
    ) -> V
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => v,
            Err(stale) => self.load_value_with_async(key, stale, load).await,
        }
    }

    /// [`get_or_load_with_async`](Self::get_or_load_with_async) with the key
    /// borrowed: an owned key is made only on a miss.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use larder::{Cache, EntryOptions};
    ///
    /// let cache: Cache<String, usize> = Cache::builder().max_capacity(100).build().unwrap();
    /// let load = async { (5, EntryOptions::new().tags(["s"])) };
    /// assert_eq!(cache.get_or_load_with_by_ref_async("shelf", load).await, 5);
    /// cache.invalidate_tag("s");
    /// assert!(!cache.contains_key("shelf"));
    /// # });
    /// ```
    pub async fn get_or_load_with_by_ref_async<Q>(
        &self,
        key: &Q,
        load: impl Future<Output = (V, EntryOptions)>,
    ) -> V
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let miss = |key, stale| self.load_value_with_async(key, stale, load);
        self.hit_or_async(key, |v| v, miss).await
    }

    /// The miss path of [`get_or_load_with_async`](Self::get_or_load_with_async).
    async fn load_value_with_async(
        &self,
        key: K,
        stale: Option<V>,
        load: impl Future<Output = (V, EntryOptions)>,
    ) -> V
    where
        K: Clone,
    {
        let loaded = self
            .load_async(key, stale, Mode::Value, async {
                Ok::<_, std::convert::Infallible>(Some(load.await))
            })
            .await;
        match loaded {
            Ok(Some(v)) => v,
            _ => unreachable!("an infallible loader always yields a value"),
        }
    }

    /// Like [`get_or_load`](Self::get_or_load) with a loader that may fail.
    /// An error is shared, as the same `Arc`, with every caller waiting on the
    /// same load, and is not cached: the next call loads again. (A waiter whose
    /// error type differs from the leader's loads for itself instead.)
    ///
    /// # Errors
    ///
    /// The loader's error, shared.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let err = cache.try_get_or_load(1, |_| Err::<u32, _>("db down")).unwrap_err();
    /// assert_eq!(*err, "db down");
    /// assert_eq!(cache.try_get_or_load(1, |_| Ok::<_, &str>(10)), Ok(10));
    /// ```
    pub fn try_get_or_load<E>(
        &self,
        key: K,
        load: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        match self.get_for_load(&key) {
            Ok(v) => Ok(v),
            Err(stale) => self.try_load_value(key, stale, load),
        }
    }

    /// [`try_get_or_load`](Self::try_get_or_load) with the key borrowed: an
    /// owned key is made only on a miss.
    ///
    /// # Errors
    ///
    /// The loader's error, shared.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// let cache: larder::Cache<String, usize> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let err = cache.try_get_or_load_by_ref("k", |_| Err::<usize, _>("db down"));
    /// assert_eq!(*err.unwrap_err(), "db down");
    /// assert_eq!(cache.try_get_or_load_by_ref("k", |k| Ok::<_, &str>(k.len())), Ok(1));
    /// ```
    pub fn try_get_or_load_by_ref<Q, E>(
        &self,
        key: &Q,
        load: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        E: Send + Sync + 'static,
    {
        self.hit_or(key, Ok, |key, stale| self.try_load_value(key, stale, load))
    }

    /// The miss path of [`try_get_or_load`](Self::try_get_or_load).
    fn try_load_value<E>(
        &self,
        key: K,
        stale: Option<V>,
        load: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        match self.load(key, stale, Mode::Fallible, |k| {
            load(k).map(|v| Some((v, EntryOptions::default())))
        }) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => unreachable!("a fallible loader yields a value or an error"),
            Err(e) => Err(e),
        }
    }

    /// Like [`get_or_load`](Self::get_or_load) with a loader that may find
    /// nothing: `None` is returned to every caller of the load and not cached.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(cache.optionally_get_or_load(1, |_| None), None);
    /// assert!(!cache.contains_key(&1));
    /// assert_eq!(cache.optionally_get_or_load(1, |k| Some(k * 10)), Some(10));
    /// ```
    pub fn optionally_get_or_load(&self, key: K, load: impl FnOnce(&K) -> Option<V>) -> Option<V>
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => Some(v),
            Err(stale) => self.optionally_load_value(key, stale, load),
        }
    }

    /// [`optionally_get_or_load`](Self::optionally_get_or_load) with the key
    /// borrowed: an owned key is made only on a miss.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// let cache: larder::Cache<String, usize> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(cache.optionally_get_or_load_by_ref("k", |_| None), None);
    /// assert!(!cache.contains_key("k"));
    /// assert_eq!(cache.optionally_get_or_load_by_ref("k", |k| Some(k.len())), Some(1));
    /// ```
    pub fn optionally_get_or_load_by_ref<Q>(
        &self,
        key: &Q,
        load: impl FnOnce(&K) -> Option<V>,
    ) -> Option<V>
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.hit_or(key, Some, |key, stale| {
            self.optionally_load_value(key, stale, load)
        })
    }

    /// The miss path of [`optionally_get_or_load`](Self::optionally_get_or_load).
    fn optionally_load_value(
        &self,
        key: K,
        stale: Option<V>,
        load: impl FnOnce(&K) -> Option<V>,
    ) -> Option<V>
    where
        K: Clone,
    {
        match self.load(key, stale, Mode::Optional, |k| {
            Ok::<_, std::convert::Infallible>(load(k).map(|v| (v, EntryOptions::default())))
        }) {
            Ok(v) => v,
            Err(e) => match *e {},
        }
    }

    /// Like [`get_or_load`](Self::get_or_load), for async code: `load` is a
    /// future, awaited only if this call leads the load. Any executor will do.
    /// Sync and async callers of one key share one load. If this call's task
    /// is cancelled while it leads, a waiting caller takes the load over.
    ///
    /// The load is this call's future: cancelling the leader (a timeout, a
    /// lost `select!` branch) drops it, and the caller that takes over starts
    /// its own from the beginning. So callers that all time out before a
    /// load can finish never cache its value, however many of them there
    /// are, and each takeover may send the backend another request. Where
    /// loads can outlast the callers' patience, spawn the load as a task of
    /// its own that inserts its value (or pass a future that awaits such a
    /// task's handle), so that it finishes whoever is still waiting.
    ///
    /// The leader's future is the load's only driver: one kept alive but no
    /// longer polled (the losing branch of `futures::future::select`, kept
    /// for later; a future leaked or parked) holds the load open, and every
    /// caller of the key, present or to come, waits until it is polled to the
    /// end or dropped. Drop a leader you will not poll.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<u32, String> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache.get_or_load_async(7, async { "seven".to_string() }).await;
    /// assert_eq!(v, "seven");
    /// # });
    /// ```
    pub async fn get_or_load_async(&self, key: K, load: impl Future<Output = V>) -> V
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => v,
            Err(stale) => self.load_value_async(key, stale, load).await,
        }
    }

    /// [`get_or_load_async`](Self::get_or_load_async) with the key borrowed:
    /// an owned key is made only on a miss.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<String, String> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let v = cache.get_or_load_by_ref_async("k", async { "v".to_string() }).await;
    /// assert_eq!(v, "v");
    /// let hit = cache.get_or_load_by_ref_async("k", async { unreachable!("cached") });
    /// assert_eq!(hit.await, "v");
    /// # });
    /// ```
    pub async fn get_or_load_by_ref_async<Q>(&self, key: &Q, load: impl Future<Output = V>) -> V
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let miss = |key, stale| self.load_value_async(key, stale, load);
        self.hit_or_async(key, |v| v, miss).await
    }

    /// The miss path of [`get_or_load_async`](Self::get_or_load_async).
    async fn load_value_async(&self, key: K, stale: Option<V>, load: impl Future<Output = V>) -> V
    where
        K: Clone,
    {
        let loaded = self
            .load_async(key, stale, Mode::Value, async {
                Ok::<_, std::convert::Infallible>(Some((load.await, EntryOptions::default())))
            })
            .await;
        match loaded {
            Ok(Some(v)) => v,
            _ => unreachable!("an infallible loader always yields a value"),
        }
    }

    /// Like [`try_get_or_load`](Self::try_get_or_load), for async code.
    ///
    /// # Errors
    ///
    /// The loader's error, shared with every caller of the same load.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: larder::Cache<u32, String> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let failed = cache.try_get_or_load_async(1, async { Err::<String, _>("timeout") }).await;
    /// assert_eq!(*failed.unwrap_err(), "timeout");
    /// assert!(!cache.contains_key(&1)); // errors are not cached
    /// let ok = cache.try_get_or_load_async(1, async { Ok::<_, &str>("one".to_string()) }).await;
    /// assert_eq!(ok.unwrap(), "one");
    /// # });
    /// ```
    pub async fn try_get_or_load_async<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        match self.get_for_load(&key) {
            Ok(v) => Ok(v),
            Err(stale) => self.try_load_value_async(key, stale, load).await,
        }
    }

    /// [`try_get_or_load_async`](Self::try_get_or_load_async) with the key
    /// borrowed: an owned key is made only on a miss.
    ///
    /// # Errors
    ///
    /// The loader's error, shared with every caller of the same load.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: larder::Cache<String, String> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let failed = cache.try_get_or_load_by_ref_async("k", async { Err::<String, _>("timeout") }).await;
    /// assert_eq!(*failed.unwrap_err(), "timeout");
    /// let ok = cache.try_get_or_load_by_ref_async("k", async { Ok::<_, &str>("v".to_string()) });
    /// assert_eq!(ok.await.unwrap(), "v");
    /// # });
    /// ```
    pub async fn try_get_or_load_by_ref_async<Q, E>(
        &self,
        key: &Q,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        E: Send + Sync + 'static,
    {
        let miss = |key, stale| self.try_load_value_async(key, stale, load);
        self.hit_or_async(key, Ok, miss).await
    }

    /// The miss path of [`try_get_or_load_async`](Self::try_get_or_load_async).
    async fn try_load_value_async<E>(
        &self,
        key: K,
        stale: Option<V>,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        match self
            .load_async(key, stale, Mode::Fallible, async {
                load.await.map(|v| Some((v, EntryOptions::default())))
            })
            .await
        {
            Ok(Some(v)) => Ok(v),
            Ok(None) => unreachable!("a fallible loader yields a value or an error"),
            Err(e) => Err(e),
        }
    }

    /// Like [`optionally_get_or_load`](Self::optionally_get_or_load), for
    /// async code.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: larder::Cache<u32, String> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(cache.optionally_get_or_load_async(1, async { None }).await, None);
    /// assert!(!cache.contains_key(&1)); // a None is not cached
    /// let v = cache.optionally_get_or_load_async(1, async { Some("one".to_string()) }).await;
    /// assert_eq!(v.as_deref(), Some("one"));
    /// assert!(cache.contains_key(&1));
    /// # });
    /// ```
    pub async fn optionally_get_or_load_async(
        &self,
        key: K,
        load: impl Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: Clone,
    {
        match self.get_for_load(&key) {
            Ok(v) => Some(v),
            Err(stale) => self.optionally_load_value_async(key, stale, load).await,
        }
    }

    /// [`optionally_get_or_load_async`](Self::optionally_get_or_load_async)
    /// with the key borrowed: an owned key is made only on a miss.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: larder::Cache<String, usize> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(cache.optionally_get_or_load_by_ref_async("k", async { None }).await, None);
    /// assert!(!cache.contains_key("k")); // a None is not cached
    /// let v = cache.optionally_get_or_load_by_ref_async("k", async { Some(1) }).await;
    /// assert_eq!(v, Some(1));
    /// # });
    /// ```
    pub async fn optionally_get_or_load_by_ref_async<Q>(
        &self,
        key: &Q,
        load: impl Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: Clone + Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let miss = |key, stale| self.optionally_load_value_async(key, stale, load);
        self.hit_or_async(key, Some, miss).await
    }

    /// The miss path of
    /// [`optionally_get_or_load_async`](Self::optionally_get_or_load_async).
    async fn optionally_load_value_async(
        &self,
        key: K,
        stale: Option<V>,
        load: impl Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: Clone,
    {
        match self
            .load_async(key, stale, Mode::Optional, async {
                Ok::<_, std::convert::Infallible>(load.await.map(|v| (v, EntryOptions::default())))
            })
            .await
        {
            Ok(v) => v,
            Err(e) => match *e {},
        }
    }
}

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The miss path shared by the loading calls: join the key's flight, or
    /// lead it and run `load`.
    ///
    /// `stale`: the value of an entry due for a refresh, which this caller
    /// hit. It is returned at once if the key's load is already in flight
    /// (another caller refreshing it); else this caller refreshes the entry,
    /// and returns `stale` should its loader fail.
    #[cold]
    pub(crate) fn load<E: Send + Sync + 'static>(
        &self,
        key: K,
        stale: Option<V>,
        mode: Mode,
        load: impl FnOnce(&K) -> Result<Option<(V, EntryOptions)>, E>,
    ) -> Result<Option<V>, Arc<E>>
    where
        K: Clone,
    {
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        let mut load = Some(load);
        // Being refreshed (or loaded, should the entry have gone since):
        // a hit takes the value cached meanwhile, without waiting.
        if stale.is_some() && shard.flights.loading(hash, &key) {
            return Ok(stale);
        }
        loop {
            let joined = self.inner.tag_epoch.load(Ordering::SeqCst);
            let mut leader = match shard.flights.join(hash, &key, true, joined) {
                Role::Leader(leader) => leader,
                Role::Waiter(_) if stale.is_some() => return Ok(stale),
                Role::Waiter(flight) => match accept::<V, E>(flight.wait(), mode) {
                    Some(result) => return result,
                    None => continue,
                },
            };
            // A panic here (this thread leads an older load of the key)
            // abandons the flight, as one in `load` below does.
            let epoch = leader.start(|| self.inner.tag_epoch.load(Ordering::SeqCst));
            let refresh = match self.find_leaving(&key, &mut leader, stale.is_some()) {
                Found::Fresh(v) => {
                    leader.finish(Outcome::Loaded(v.clone()));
                    return Ok(Some(v));
                }
                Found::Due(refresh) => Some(refresh),
                Found::Nothing => None,
            };
            let Some(load) = load.take() else {
                unreachable!("a caller leads at most one flight to the end")
            };
            let timer = LoadTimer::start(&self.inner.loads);
            // A panic here drops `leader`, abandoning the flight to a waiter,
            // `timer`, booking the load as failed, and `unstamp`, leaving a
            // refreshed entry due again.
            let mut unstamp = OnDrop(refresh.as_ref().map(|r| || self.unstamp(r)));
            let result = timer.run(|| load(&key));
            timer.stop();
            unstamp.0 = None;
            drop(unstamp);
            return self.land(key, leader, epoch, result, refresh);
        }
    }

    /// The async miss path: as [`load`](Self::load), awaiting instead of
    /// blocking. Dropping the returned future while it leads (a cancelled
    /// task) abandons the flight, so that a waiter takes the load over.
    pub(crate) async fn load_async<E: Send + Sync + 'static>(
        &self,
        key: K,
        stale: Option<V>,
        mode: Mode,
        load: impl Future<Output = Result<Option<(V, EntryOptions)>, E>>,
    ) -> Result<Option<V>, Arc<E>>
    where
        K: Clone,
    {
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        let mut load = Some(load);
        // Being refreshed (or loaded, should the entry have gone since):
        // a hit takes the value cached meanwhile, without waiting.
        if stale.is_some() && shard.flights.loading(hash, &key) {
            return Ok(stale);
        }
        loop {
            let joined = self.inner.tag_epoch.load(Ordering::SeqCst);
            let mut leader = match shard.flights.join(hash, &key, false, joined) {
                Role::Leader(leader) => leader,
                Role::Waiter(_) if stale.is_some() => return Ok(stale),
                Role::Waiter(flight) => match accept::<V, E>(flight.wait_async().await, mode) {
                    Some(result) => return result,
                    None => continue,
                },
            };
            let epoch = leader
                .start_async(|| self.inner.tag_epoch.load(Ordering::SeqCst))
                .await;
            let refresh = match self.find_leaving(&key, &mut leader, stale.is_some()) {
                Found::Fresh(v) => {
                    leader.finish(Outcome::Loaded(v.clone()));
                    return Ok(Some(v));
                }
                Found::Due(refresh) => Some(refresh),
                Found::Nothing => None,
            };
            let Some(load) = load.take() else {
                unreachable!("a caller leads at most one flight to the end")
            };
            let timer = LoadTimer::start(&self.inner.loads);
            // Should the task be cancelled (or the loader panic), a
            // refreshed entry is due again.
            let mut unstamp = OnDrop(refresh.as_ref().map(|r| || self.unstamp(r)));
            // Each poll runs under `timer`, so that a panic of the loader's
            // own books a failure and a cancellation does not. The loader
            // moves into what `lead` holds, which drops it as the flight's
            // own (see `lead`).
            let timer_ref = &timer;
            let polled = async move {
                let mut load = std::pin::pin!(load);
                std::future::poll_fn(|cx| timer_ref.run(|| load.as_mut().poll(cx))).await
            };
            let result = crate::loader::lead(&[leader.flight()], polled).await;
            timer.stop();
            unstamp.0 = None;
            drop(unstamp);
            return self.land(key, leader, epoch, result, refresh);
        }
    }

    /// A leader's result: cache a value unless the flight went stale, then
    /// hand the outcome to the waiters. A refresh's loader finding nothing
    /// removes the entry (unless the flight went stale); one failing leaves
    /// it, and its caller gets the value it hit. The listener hears what
    /// the landing removed once the flight has ended: it may call back into
    /// the cache, for this key too.
    fn land<E: Send + Sync + 'static>(
        &self,
        key: K,
        leader: crate::loader::Leader<'_, K, V>,
        epoch: u64,
        result: Result<Option<(V, EntryOptions)>, E>,
        refresh: Option<Refresh<V>>,
    ) -> Result<Option<V>, Arc<E>> {
        let mut removed = Removed::new();
        // Should the write panic (a key's `Hash` as it evicts), the listener
        // hears what it removed, as `write_heard` has it do, but only once
        // the flight has ended (the leader, moved into `land_into`, is
        // dropped before this guard): the listener may load this key too,
        // and would wait for itself.
        let heard = HeardIfUnwinding {
            cache: self,
            list: &mut removed,
        };
        let landed = self.land_into(key, leader, epoch, result, refresh, heard.list);
        std::mem::forget(heard);
        self.notify(removed);
        landed
    }

    /// [`land`](Self::land), the flight ended, but what the landing removed
    /// added to `removed` for the caller to tell the listener of (also
    /// should this panic), once every flight it leads has ended.
    fn land_into<E: Send + Sync + 'static>(
        &self,
        key: K,
        leader: crate::loader::Leader<'_, K, V>,
        epoch: u64,
        result: Result<Option<(V, EntryOptions)>, E>,
        refresh: Option<Refresh<V>>,
        removed: &mut Removed<K, V>,
    ) -> Result<Option<V>, Arc<E>> {
        let refreshed = refresh.as_ref().map_or(&[][..], |r| &r.tags[..]);
        match result {
            Ok(Some((v, options))) => {
                // Cloned before the write: a `Clone` that panics after it
                // would drop what it removed without calling the listener.
                let outcome = Outcome::Loaded(v.clone());
                // A refreshed entry the landing did not replace (the write
                // panicked, or was refused: the flight went stale, a tag was
                // invalidated, the value too heavy) is due again; one it
                // replaced has a time of its own, which this leaves.
                let unstamp = OnDrop(refresh.as_ref().map(|r| || self.unstamp(r)));
                let written = self.write_deferred(
                    key,
                    v.clone(),
                    options.time_to_live(),
                    options.tag_list(),
                    Some(Landing {
                        flight: leader.flight(),
                        epoch,
                        refreshed,
                    }),
                    removed,
                );
                drop(unstamp);
                if let Err(rejected) = written {
                    removed.push((rejected.key, rejected.value, RemovalCause::Size));
                }
                leader.finish(outcome);
                Ok(Some(v))
            }
            Ok(None) => {
                let gone = refresh.as_ref().and_then(|_| {
                    let landing = Landing {
                        flight: leader.flight(),
                        epoch,
                        refreshed,
                    };
                    self.take_landing(&key, landing)
                });
                // An entry the landing did not take out (the flight went
                // stale) is due again.
                if let Some(refresh) = &refresh {
                    self.unstamp(refresh);
                }
                leader.finish(Outcome::Absent);
                removed.extend(gone);
                Ok(None)
            }
            Err(e) => {
                self.inner.loads.failures.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                // The entry's time back before the flight ends: a refresh
                // that waited for it would otherwise take the time this one
                // marked for its own entry's.
                if let Some(refresh) = &refresh {
                    self.unstamp(refresh);
                }
                leader.finish(Outcome::Failed(e.clone()));
                match refresh {
                    Some(refresh) => Ok(Some(refresh.fallback)),
                    None => Err(e),
                }
            }
        }
    }

    /// A leader that has started looks for a value cached since its caller's
    /// lookup missed (by a write, or a load it waited out). One found is read
    /// as [`get`](Self::get) reads it (its time-to-idle deadline moves, the
    /// policy hears of the read) but not counted as a hit, the caller's
    /// lookup having counted its miss; and the flight leaves the table before
    /// the shard's lock is released (see
    /// [`Leader::leave`](crate::loader::Leader::leave)).
    ///
    /// `refreshing`: the caller hit an entry due for a refresh. If it is
    /// still there and due, the flight stays to refresh it, and the entry's
    /// value and tags come back for [`land`](Self::land).
    fn find_leaving(
        &self,
        key: &K,
        leader: &mut crate::loader::Leader<'_, K, V>,
        refreshing: bool,
    ) -> Found<V> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let map = shard.read();
        let now = self.now_for(&map);
        let Some((token, entry)) = map.find(hash, key).filter(|&(t, _)| map.is_live(t, now)) else {
            return Found::Nothing;
        };
        if let (true, Some(was), Some(now)) = (refreshing, map.written(token), now) {
            if self.inner.expiration.refresh_due(was, now) {
                let refresh = Refresh {
                    fallback: entry.value.clone(),
                    tags: map.tags_of(token),
                    hash,
                    token,
                    was,
                    // From now on hits find the entry fresh, and take it
                    // without asking the flights.
                    started: map.start_refresh(token, was, now),
                };
                self.inner.loads.refreshes.fetch_add(1, Ordering::Relaxed);
                return Found::Due(refresh);
            }
        }
        let v = entry.value.clone();
        if let Some(now) = now {
            if self.inner.expiration.reads_move_deadlines() {
                self.after_read(&map, token, entry, now);
            }
        }
        shard.record_read(&map, token, entry, &|k| self.hash(k));
        leader.leave();
        Found::Fresh(v)
    }

    /// Gives an entry whose refresh failed, panicked, was cancelled or did
    /// not land its write time back, so that the next hit finds it due and
    /// tries again (unless a write since gave it a time of its own: see
    /// [`Map::start_refresh`](crate::store::Map::start_refresh)). By its
    /// token, not its key: no user code (a key's `Hash` or `Eq`) runs here,
    /// which may be while a panic unwinds.
    fn unstamp(&self, refresh: &Refresh<V>) {
        let map = self.shard(refresh.hash).read();
        map.restamp(refresh.token, refresh.started, refresh.was);
    }
}

/// What a leader that has started finds cached (see
/// [`Cache::find_leaving`]).
enum Found<V> {
    /// A value to take: the flight has left the table.
    Fresh(V),
    /// The entry the caller hit, still due for a refresh.
    Due(Refresh<V>),
    /// No entry: load.
    Nothing,
}

/// A refresh under way: the value it replaces, for its caller should the
/// loader fail, and that value's tags, whose invalidation while it runs
/// keeps it from landing.
struct Refresh<V> {
    fallback: V,
    tags: Vec<crate::tags::Tag>,
    /// Where the entry is (its key's hash and its token), its write time,
    /// and the refresh's start, marked, its write time while the refresh
    /// runs (see [`Map::start_refresh`](crate::store::Map::start_refresh)).
    hash: u64,
    token: Token,
    was: u64,
    started: u64,
}

/// Books a load in the statistics: its time when stopped or dropped, and a
/// failure if the loader itself unwound (see [`run`](Self::run)). Dropped
/// unstopped otherwise, its async load was cancelled: not a failure, even
/// when the future is dropped while the thread unwinds from a panic elsewhere
/// (a sibling in `join!`, or a runtime dropping a panicked task's future).
struct LoadTimer<'a> {
    stats: &'a LoadStats,
    /// The flights the loader serves: one, or a bulk load's keys.
    flights: u64,
    start: std::time::Instant,
    stopped: bool,
    /// Set when a step of the loader unwound.
    unwound: std::sync::atomic::AtomicBool,
}

impl<'a> LoadTimer<'a> {
    fn start(stats: &'a LoadStats) -> Self {
        Self::start_many(stats, 1)
    }

    /// A timer for one loader serving `flights` flights, each booked as a
    /// load (and as a failure, should it fail).
    fn start_many(stats: &'a LoadStats, flights: u64) -> Self {
        stats.loads.fetch_add(flights, Ordering::Relaxed);
        Self {
            stats,
            flights,
            start: std::time::Instant::now(),
            stopped: false,
            unwound: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs the loader, or one poll of an async loader, noting whether it
    /// unwinds (a panic of the loader's own).
    fn run<R>(&self, step: impl FnOnce() -> R) -> R {
        struct Unwinding<'b>(&'b std::sync::atomic::AtomicBool);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let unwinding = Unwinding(&self.unwound);
        let out = step();
        std::mem::forget(unwinding);
        out
    }

    fn stop(mut self) {
        self.stopped = true;
    }
}

impl Drop for LoadTimer<'_> {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.nanos.fetch_add(nanos, Ordering::Relaxed);
        if !self.stopped && self.unwound.load(std::sync::atomic::Ordering::Relaxed) {
            self.stats
                .failures
                .fetch_add(self.flights, Ordering::Relaxed);
        }
    }
}

/// What a waiter makes of a flight's outcome in `mode`: its result, or `None`
/// to try again (the leader panicked or was cancelled, or the outcome is one
/// this kind of call cannot return).
fn accept<V, E: Send + Sync + 'static>(
    outcome: Outcome<V>,
    mode: Mode,
) -> Option<Result<Option<V>, Arc<E>>> {
    match outcome {
        Outcome::Loaded(v) => Some(Ok(Some(v))),
        Outcome::Absent if matches!(mode, Mode::Optional | Mode::Store) => Some(Ok(None)),
        Outcome::Failed(e) if matches!(mode, Mode::Fallible | Mode::Store) => {
            e.downcast::<E>().ok().map(Err)
        }
        _ => None,
    }
}

/// What a loading call accepts from a flight it waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Only a value (`get_or_load`).
    Value,
    /// A value or an error of its own type (`try_get_or_load`).
    Fallible,
    /// A value or nothing (`optionally_get_or_load`).
    Optional,
    /// A value, nothing, or an error of its own type (a store's `load`).
    Store,
}
