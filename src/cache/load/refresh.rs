//! Explicit refresh: a key reloaded now, on the caller's word (its source
//! changed), while other callers keep getting the cached value. It is the
//! refresh that [`refresh_after`](crate::CacheBuilder::refresh_after) runs
//! on a due entry, made to run whatever the entry's age, and made to load
//! afresh: a load of the key already in flight may have read the source
//! before the change, so it goes stale (its callers get its value, the
//! cache does not) and this one loads after it.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::{accept, LoadTimer, Mode, Refresh};
use crate::cache::Cache;
use crate::expiry::EntryOptions;
use crate::loader::{Leader, Outcome, Role};
use crate::sync::{OnDrop, Ordering};
use crate::write::CacheAside;

impl<K, V, S> Cache<K, V, S, CacheAside>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Loads `key` again now with `load`, and returns the value loaded:
    /// for when its source changed and the cached value should follow
    /// without waiting for it to expire.
    ///
    /// - Other callers of the key keep getting the cached value while
    ///   `load` runs (a hit, as ever), and the new value replaces it as a
    ///   write would (the listener hears `Replaced`). A key not cached is
    ///   loaded as [`get_or_load`](Self::get_or_load) loads it, callers
    ///   missing it meanwhile sharing this load.
    /// - The value returned was loaded after this call began: a load of the
    ///   key already running is not joined but goes stale (its callers get
    ///   its value, the cache does not keep it), nor is one of a caller's
    ///   waiting to start (it may yet take a value cached before this call),
    ///   and this call loads once they have ended (one loader of a key runs
    ///   at a time). Refreshes of the key arriving while another waits to
    ///   start share its load.
    /// - As for any load, the value is not cached if the key was written,
    ///   removed or invalidated (by tag too, for the entry's old tags)
    ///   while `load` ran; the call still returns it.
    /// - The refresh counts as a load in [`stats`](Self::stats), not as a
    ///   hit or a miss.
    ///
    /// It needs no [`refresh_after`](crate::CacheBuilder::refresh_after);
    /// in a cache built with one, the entry's write time moves to the
    /// refresh's start meanwhile, so that no caller refreshes it at the
    /// same time.
    ///
    /// # Panics
    ///
    /// As [`get_or_load`](Self::get_or_load): a `load` that panics leaves
    /// the cached value in place.
    ///
    /// ```
    /// let cache: larder::Cache<&str, u32> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// cache.insert("price", 10);
    /// // The source changed: load the new value, while readers keep
    /// // getting 10 until it is in.
    /// assert_eq!(cache.refresh("price", |_| 12), 12);
    /// assert_eq!(cache.get(&"price"), Some(12));
    /// ```
    pub fn refresh(&self, key: K, load: impl FnOnce(&K) -> V) -> V
    where
        K: Clone,
    {
        let loaded = self.refresh_with(key, Mode::Value, |k| {
            Ok::<_, std::convert::Infallible>(Some((load(k), EntryOptions::default())))
        });
        match loaded {
            Ok(v) => v.expect("a value loads as a value"),
            Err(e) => match *e {},
        }
    }

    /// [`refresh`](Self::refresh) with a loader that may fail: an error
    /// leaves the cached value (if any) in place, and is returned.
    ///
    /// # Errors
    ///
    /// The loader's error, shared with the callers that waited on this
    /// load.
    ///
    /// # Panics
    ///
    /// As [`refresh`](Self::refresh).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// cache.insert(1, 10);
    /// let failed = cache.try_refresh(1, |_| Err::<u32, _>("db down"));
    /// assert_eq!(*failed.unwrap_err(), "db down");
    /// assert_eq!(cache.get(&1), Some(10), "kept");
    /// assert_eq!(cache.try_refresh(1, |_| Ok::<_, &str>(11)), Ok(11));
    /// ```
    pub fn try_refresh<E>(&self, key: K, load: impl FnOnce(&K) -> Result<V, E>) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        let loaded = self.refresh_with(key, Mode::Fallible, |k| {
            load(k).map(|v| Some((v, EntryOptions::default())))
        });
        loaded.map(|v| v.expect("a value loads as a value"))
    }

    /// [`refresh`](Self::refresh) for async code: `load` is awaited, and
    /// waiting does not block the thread. Dropping the returned future
    /// while it loads (a cancelled task) leaves the cached value in place.
    ///
    /// # Panics
    ///
    /// As [`refresh`](Self::refresh).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.refresh_async(1, async { 11 }).await, 11);
    /// assert_eq!(cache.get(&1), Some(11));
    /// # });
    /// ```
    pub async fn refresh_async(&self, key: K, load: impl Future<Output = V>) -> V
    where
        K: Clone,
    {
        let loaded = self
            .refresh_with_async(key, Mode::Value, async {
                Ok::<_, std::convert::Infallible>(Some((load.await, EntryOptions::default())))
            })
            .await;
        match loaded {
            Ok(v) => v.expect("a value loads as a value"),
            Err(e) => match *e {},
        }
    }

    /// [`try_refresh`](Self::try_refresh) for async code, as
    /// [`refresh_async`](Self::refresh_async).
    ///
    /// # Errors
    ///
    /// As [`try_refresh`](Self::try_refresh).
    ///
    /// # Panics
    ///
    /// As [`refresh`](Self::refresh).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// let failed = cache.try_refresh_async(1, async { Err::<u32, _>("db down") }).await;
    /// assert_eq!(*failed.unwrap_err(), "db down");
    /// assert!(!cache.contains_key(&1));
    /// # });
    /// ```
    pub async fn try_refresh_async<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        let load = async { load.await.map(|v| Some((v, EntryOptions::default()))) };
        let loaded = self.refresh_with_async(key, Mode::Fallible, load).await;
        loaded.map(|v| v.expect("a value loads as a value"))
    }
}

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The refreshes' body: the key's loads in flight go stale, and this
    /// caller leads a load of its own once they have ended, or joins
    /// another refresh's load still waiting to start (see
    /// [`Flights::lead`](crate::loader::Flights::lead)). `load` gives a
    /// value with its options, or nothing (the key's entry is then taken
    /// out), or an error (the entry stays); `mode` says which of these a
    /// joined load may end in for this caller to take it.
    pub(crate) fn refresh_with<E: Send + Sync + 'static>(
        &self,
        key: K,
        mode: Mode,
        load: impl FnOnce(&K) -> Result<Option<(V, EntryOptions)>, E>,
    ) -> Result<Option<V>, Arc<E>>
    where
        K: Clone,
    {
        let hash = self.hash(&key);
        let flights = &self.shard(hash).flights;
        flights.invalidate(hash, &key);
        let leader = loop {
            let joined = self.inner.tag_epoch.load(Ordering::SeqCst);
            match flights.lead(hash, &key, true, joined) {
                Role::Leader(leader) => break leader,
                Role::Waiter(flight) => {
                    if let Some(result) = accept::<V, E>(flight.wait(), mode) {
                        return result;
                    }
                }
            }
        };
        // Waits for the loads made stale above.
        let epoch = leader.start(|| self.inner.tag_epoch.load(Ordering::SeqCst));
        let refresh = self.find_refreshed(hash, &key);
        let timer = LoadTimer::start(&self.inner.loads);
        // A panic here abandons the flight, books the load as failed, and
        // gives the entry its write time back.
        let mut unstamp = OnDrop(refresh.as_ref().map(|r| || self.unstamp(r)));
        let result = timer.run(|| load(&key));
        timer.stop();
        unstamp.0 = None;
        drop(unstamp);
        self.land_refresh(key, leader, epoch, result, refresh)
    }

    /// [`refresh_with`](Self::refresh_with) without blocking the thread.
    pub(crate) async fn refresh_with_async<E: Send + Sync + 'static>(
        &self,
        key: K,
        mode: Mode,
        load: impl Future<Output = Result<Option<(V, EntryOptions)>, E>>,
    ) -> Result<Option<V>, Arc<E>>
    where
        K: Clone,
    {
        let hash = self.hash(&key);
        let flights = &self.shard(hash).flights;
        flights.invalidate(hash, &key);
        let leader = loop {
            let joined = self.inner.tag_epoch.load(Ordering::SeqCst);
            match flights.lead(hash, &key, false, joined) {
                Role::Leader(leader) => break leader,
                Role::Waiter(flight) => {
                    if let Some(result) = accept::<V, E>(flight.wait_async().await, mode) {
                        return result;
                    }
                }
            }
        };
        let epoch = leader
            .start_async(|| self.inner.tag_epoch.load(Ordering::SeqCst))
            .await;
        let refresh = self.find_refreshed(hash, &key);
        let timer = LoadTimer::start(&self.inner.loads);
        let mut unstamp = OnDrop(refresh.as_ref().map(|r| || self.unstamp(r)));
        let timer_ref = &timer;
        let polled = async move {
            let mut load = std::pin::pin!(load);
            std::future::poll_fn(|cx| timer_ref.run(|| load.as_mut().poll(cx))).await
        };
        let result = crate::loader::lead(&[leader.flight()], polled).await;
        timer.stop();
        unstamp.0 = None;
        drop(unstamp);
        self.land_refresh(key, leader, epoch, result, refresh)
    }

    /// The entry a refresh replaces, if the key is cached: its value and
    /// tags for [`land`](Self::land), and, in a cache that refreshes by
    /// age, its write time moved to now until the refresh ends.
    fn find_refreshed(&self, hash: u64, key: &K) -> Option<Refresh<V>> {
        let map = self.shard(hash).read();
        let now = self.now_for(&map);
        let (token, entry) = map.find(hash, key).filter(|&(t, _)| map.is_live(t, now))?;
        // Without write times (no `refresh_after`), restamping does
        // nothing: these are never read.
        let (mut was, mut started) = (0, 0);
        if let (Some(written), Some(now)) = (map.written(token), now) {
            // An entry another refresh has marked goes back to that
            // refresh's start, should neither land.
            was = written & !crate::store::REFRESHING;
            started = map.start_refresh(token, written, now);
        }
        self.inner.loads.refreshes.fetch_add(1, Ordering::Relaxed);
        Some(Refresh {
            fallback: entry.value.clone(),
            tags: map.tags_of(token),
            hash,
            token,
            was,
            started,
        })
    }

    /// A refresh's result: a value lands as a load's does, and nothing
    /// takes the entry out (unless written meanwhile); an error leaves the
    /// entry (its write time given back) and is returned.
    fn land_refresh<E: Send + Sync + 'static>(
        &self,
        key: K,
        leader: Leader<'_, K, V>,
        epoch: u64,
        result: Result<Option<(V, EntryOptions)>, E>,
        refresh: Option<Refresh<V>>,
    ) -> Result<Option<V>, Arc<E>> {
        match result {
            Ok(loaded) => self.land::<E>(key, leader, epoch, Ok(loaded), refresh),
            Err(e) => {
                self.inner.loads.failures.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                // The entry's time back before the flight ends (see `land`).
                if let Some(refresh) = refresh {
                    self.unstamp(&refresh);
                }
                leader.finish(Outcome::Failed(e.clone()));
                Err(e)
            }
        }
    }
}
