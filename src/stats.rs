//! A point-in-time snapshot of a cache's counters.

/// Counters summed over every shard at the moment [`Cache::stats`] ran.
///
/// `hits` and `misses` are counted only when the cache was built with
/// [`CacheBuilder::record_stats`] (counting reads costs an atomic increment on
/// every `get`); every other counter is always kept: the writes' under the
/// shard locks, the loads' cache-wide.
///
/// [`Cache::stats`]: crate::Cache::stats
/// [`CacheBuilder::record_stats`]: crate::CacheBuilder::record_stats
///
/// ```
/// use larder::Cache;
///
/// let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).record_stats().build().unwrap();
/// cache.insert(1, 1);
/// cache.get(&1);
/// cache.get(&2);
/// let stats = cache.stats();
/// assert_eq!((stats.hits, stats.misses, stats.inserts), (1, 1, 1));
/// assert_eq!(stats.hit_ratio(), 0.5);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups that found a live entry: one per call of `get`, of the
    /// `get_or_load` family and of a write policy's `get` / `get_async`
    /// (`peek`, `contains_key` and `iter` are not counted).
    pub hits: u64,
    /// Lookups that found no live entry, one per such call, even when a
    /// load (this caller's or another's) or a write-back queue then
    /// supplied the value.
    pub misses: u64,
    /// Entries added under a key that was absent. A write refused because its
    /// entry was already past its deadline (a zero TTL) adds none and counts
    /// only under `expirations`, so the counters of entries in and out need
    /// not balance against [`len`](crate::Cache::len).
    pub inserts: u64,
    /// Values replaced under a key that was present.
    pub updates: u64,
    /// Entries evicted to respect the capacity (cause [`RemovalCause::Size`]).
    ///
    /// [`RemovalCause::Size`]: crate::RemovalCause::Size
    pub evictions: u64,
    /// Total weight of the entries counted in `evictions` (saturating at
    /// `u64::MAX`: each may weigh up to `u32::MAX - 1`).
    pub evicted_weight: u64,
    /// Entries removed by `remove`, `invalidate_all` or a write policy's
    /// `delete`, or dropped by a write policy's write whose weigher, `Expiry`,
    /// or key `Clone`, `Hash` or `Eq` panicked after the store or the queue took it,
    /// by a write-through write whose store call panicked or whose async task
    /// was cancelled, or by a write-back `flush` or `close` reporting the
    /// key's failed write (cause [`RemovalCause::Explicit`]), or replaced by
    /// a write that was then refused (cause [`RemovalCause::Replaced`]).
    ///
    /// [`RemovalCause::Explicit`]: crate::RemovalCause::Explicit
    /// [`RemovalCause::Replaced`]: crate::RemovalCause::Replaced
    pub invalidations: u64,
    /// Inserts refused because the entry alone outweighs the per-entry limit
    /// (the smallest shard's capacity: see [`Rejected::limit`]),
    /// and writes undone because a key's `Hash` panicked while they evicted
    /// (their entries reach the listener as [`RemovalCause::Size`] too). An
    /// undone write counts under `inserts` or `updates` as well, whether the
    /// panic met it before or after its entry was placed.
    ///
    /// [`RemovalCause::Size`]: crate::RemovalCause::Size
    /// [`Rejected::limit`]: crate::Rejected::limit
    pub rejections: u64,
    /// Entries removed because their deadline passed (cause
    /// [`RemovalCause::Expired`]), including values inserted already expired
    /// and entries already past their deadline when an eviction or an
    /// invalidation took them.
    ///
    /// [`RemovalCause::Expired`]: crate::RemovalCause::Expired
    pub expirations: u64,
    /// Entries removed by `invalidate_tag` / `invalidate_tags` /
    /// `invalidate_entries_if` (cause [`RemovalCause::Invalidated`]).
    ///
    /// [`RemovalCause::Invalidated`]: crate::RemovalCause::Invalidated
    pub tag_invalidations: u64,
    /// Loads run by `get_or_load` and its kin, or by a write policy's `get`
    /// (one per flight, however many callers shared it), including failed
    /// and cancelled ones. Under write-back, a flight whose key was found
    /// written in the queue once it started (a write racing the read) counts
    /// too, though the store was not asked.
    pub loads: u64,
    /// Loads whose loader returned an error or panicked (not an async load
    /// whose future was dropped: that is a cancellation).
    pub load_failures: u64,
    /// Loads that refreshed a cached entry (counted under `loads` too): a
    /// loading call hitting an entry due under
    /// [`refresh_after`](crate::CacheBuilder::refresh_after), or
    /// [`Cache::refresh`](crate::Cache::refresh) and its kin finding the key
    /// cached. Each counts as it starts, whether or not its value lands.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// cache.refresh(1, |_| 11);
    /// cache.refresh(2, |_| 20); // not cached: a load, no refresh
    /// let stats = cache.stats();
    /// assert_eq!((stats.loads, stats.refreshes), (2, 1));
    /// ```
    pub refreshes: u64,
    /// Time spent in loaders, summed over `loads`.
    pub total_load_time: std::time::Duration,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0.0 before any recorded lookup.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(10).record_stats().build().unwrap();
    /// assert_eq!(cache.stats().hit_ratio(), 0.0);
    /// cache.insert(1, 1);
    /// for key in [1, 1, 1, 2] {
    ///     cache.get(&key);
    /// }
    /// assert_eq!(cache.stats().hit_ratio(), 0.75);
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        // Added as floats: counts set by hand may add up past `u64::MAX`.
        let lookups = self.hits as f64 + self.misses as f64;
        if lookups == 0.0 {
            0.0
        } else {
            self.hits as f64 / lookups
        }
    }
}
