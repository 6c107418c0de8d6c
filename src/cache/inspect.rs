//! Looking at a cache without changing it: its size and capacity, its
//! statistics, which shard a key lives in, an iterator over clones of its
//! entries, and (for tests and fuzzing) its invariants.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use super::Cache;
use crate::sync::Ordering;
use crate::write::CacheAside;
use crate::CacheStats;

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Alive while the background sweeper's thread runs, if one was started.
    #[cfg(test)]
    pub(crate) fn sweeper_alive(&self) -> Option<std::sync::Weak<()>> {
        self.inner.sweeper_alive.get().cloned()
    }

    /// Entries in the shards' tag indexes (they hold only tagged entries alive).
    #[cfg(test)]
    pub(crate) fn tagged_entries(&self) -> usize {
        self.inner.shards.iter().map(|s| s.read().tagged()).sum()
    }

    /// The number of entries (weakly consistent under concurrent writes). With
    /// expiry this includes entries past their deadline that maintenance has
    /// not reclaimed yet (they are never returned by reads); call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for a count of live
    /// entries.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// (0..10).for_each(|i| cache.insert(i, i));
    /// cache.remove(&0);
    /// assert_eq!(cache.len(), 9);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether the cache holds no entries.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert!(cache.is_empty());
    /// cache.insert(1, 1);
    /// assert!(!cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The total weight of the entries (their count when no weigher is set),
    /// weakly consistent as [`len`](Self::len) is. Like it, this includes
    /// entries past their deadline that maintenance has not reclaimed yet.
    ///
    /// ```
    /// let cache: larder::Cache<u32, Vec<u8>> = larder::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .weigher(|_k, v: &Vec<u8>| v.len() as u32)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, vec![0; 10]);
    /// cache.insert(2, vec![0; 20]);
    /// assert_eq!(cache.weighted_size(), 30);
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.inner.shards.iter().map(|s| s.read().weight()).sum()
    }

    /// The capacity the cache was built with.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(500).build().unwrap();
    /// assert_eq!(cache.capacity(), 500);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The number of shards.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(1 << 20).shards(8).build().unwrap();
    /// assert_eq!(cache.shard_count(), 8);
    /// // Small caches get one shard by default, for the policy's exact order.
    /// let small: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// assert_eq!(small.shard_count(), 1);
    /// ```
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The heaviest entry the cache takes: the smallest shard's share of the
    /// capacity, whichever shard a key maps to. A heavier one is refused
    /// ([`try_insert`](crate::Cache::try_insert) hands it back; `insert`
    /// passes it to the listener as
    /// [`RemovalCause::Size`](crate::RemovalCause::Size)). The default shard
    /// count grows with the capacity and the cores, so this limit steps down
    /// where it doubles; a weighted cache whose entries may be heavy should
    /// say how heavy with the builder's
    /// [`max_entry_weight`](crate::CacheBuilder::max_entry_weight) (or set
    /// [`shards`](crate::CacheBuilder::shards) itself).
    ///
    /// ```
    /// let cache: larder::Cache<u32, Vec<u8>> = larder::Cache::builder()
    ///     .max_capacity(1 << 20)
    ///     .weigher(|_, v: &Vec<u8>| v.len() as u32)
    ///     .shards(4)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.max_entry_weight(), 1 << 18);
    /// assert!(cache.try_insert(1, vec![0; 1 << 18]).is_ok());
    /// let refused = cache.try_insert(2, vec![0; (1 << 18) + 1]).unwrap_err();
    /// assert_eq!(refused.limit, cache.max_entry_weight());
    /// ```
    pub fn max_entry_weight(&self) -> u64 {
        self.inner.max_entry_weight
    }

    /// A snapshot of the counters. See [`CacheStats`].
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(1).record_stats().build().unwrap();
    /// cache.insert(1, 1);
    /// cache.insert(2, 2); // evicts one of them
    /// cache.get(&1);
    /// let stats = cache.stats();
    /// assert_eq!(stats.inserts, 2);
    /// assert_eq!(stats.evictions, 1);
    /// assert_eq!(stats.hits + stats.misses, 1);
    /// ```
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in self.inner.shards.iter() {
            stats.hits += shard.hits.load(Ordering::Relaxed);
            stats.misses += shard.misses.load(Ordering::Relaxed);
            let c = shard.read().counters;
            stats.inserts += c.inserts;
            stats.updates += c.updates;
            stats.evictions += c.evictions;
            stats.evicted_weight = stats.evicted_weight.saturating_add(c.evicted_weight);
            stats.invalidations += c.invalidations;
            stats.rejections += c.rejections;
            stats.expirations += c.expirations;
            stats.tag_invalidations += c.tag_invalidations;
        }
        stats.loads = self.inner.loads.loads.load(Ordering::Relaxed);
        stats.load_failures = self.inner.loads.failures.load(Ordering::Relaxed);
        stats.refreshes = self.inner.loads.refreshes.load(Ordering::Relaxed);
        stats.total_load_time =
            Duration::from_nanos(self.inner.loads.nanos.load(Ordering::Relaxed));
        stats
    }

    /// Clones of the entries, shard by shard, a few at a time. Weakly consistent:
    /// each entry present for the whole iteration is yielded once, with the
    /// value it holds when it is yielded; entries added or removed meanwhile
    /// may or may not be, and a key removed and written again meanwhile may be
    /// yielded twice (the iterator walks each shard's slots in order, and the
    /// new entry may take a slot it has yet to reach). An entry whose deadline
    /// has passed by the time it would be yielded is not, as `get` would not
    /// return it. Does not touch the eviction order, the statistics or the
    /// deadlines.
    ///
    /// Each entry costs a lookup as it is yielded, as [`peek`](Self::peek)
    /// does: the keys are cloned a batch at a time, their values one by one.
    /// Both clones run under the shard's read lock (as `get`'s clone of a
    /// value does): a `Clone` that writes to this cache would wait for itself.
    /// No lock is held between calls to `next`.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// cache.insert(2, 20);
    /// let mut all: Vec<_> = cache.iter().collect();
    /// all.sort();
    /// assert_eq!(all, vec![(1, 10), (2, 20)]);
    /// let mut sum = 0;
    /// for (_, v) in &cache {
    ///     sum += v;
    /// }
    /// assert_eq!(sum, 30);
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V, S, W>
    where
        K: Clone,
    {
        Iter {
            cache: self,
            shard: 0,
            slot: Some(0),
            batch: Vec::new(),
        }
    }

    /// The index of the shard that holds `key`, below
    /// [`shard_count`](Self::shard_count): for finding hot shards (keys whose
    /// reads and writes contend for one lock) or keys that share one, as
    /// tests do. The cache mixes the hasher's output before picking a shard,
    /// so the hash alone does not tell. Each shard holds its share of the
    /// capacity, so keys crowded into one shard evict each other sooner.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(100).shards(4).build().unwrap();
    /// let shard = cache.shard_index(&7);
    /// assert!(shard < cache.shard_count());
    /// assert_eq!(shard, cache.shard_index(&7), "a key stays in its shard");
    /// ```
    pub fn shard_index<Q: Hash + ?Sized>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        self.shard_at(self.hash(key))
    }

    /// Checks every shard's invariants.
    #[doc(hidden)]
    #[cfg(any(test, feature = "__fuzz"))]
    pub fn validate(&self) {
        for shard in self.inner.shards.iter() {
            shard.write(&|k| self.hash(k)).validate();
        }
        assert!(self.weighted_size() <= self.inner.capacity);
    }

    /// Per shard, whether its timer wheel has work owed left undone.
    #[cfg(test)]
    pub(crate) fn wheels_behind(&self) -> Vec<bool> {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().wheel_behind())
            .collect()
    }

    /// Per shard, the slots its slab holds and the buckets its table holds.
    #[cfg(test)]
    pub(crate) fn storage(&self) -> Vec<(usize, usize)> {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().storage())
            .collect()
    }

    /// Keys in eviction order (next victim first) for each shard.
    #[cfg(test)]
    pub(crate) fn eviction_order(&self) -> Vec<Vec<K>>
    where
        K: Clone,
    {
        self.inner
            .shards
            .iter()
            .map(|s| {
                s.write(&|k| self.hash(k))
                    .eviction_order()
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .collect()
    }
}

/// Iterator over clones of a cache's entries. See [`Cache::iter`].
///
/// ```
/// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(100).build().unwrap();
/// (0..5).for_each(|i| cache.insert(i, i * 10));
/// let mut entries: Vec<(u32, u32)> = cache.iter().collect();
/// entries.sort();
/// assert_eq!(entries, vec![(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]);
/// ```
pub struct Iter<'a, K, V, S, W = CacheAside> {
    cache: &'a Cache<K, V, S, W>,
    shard: usize,
    /// The next slab slot to read in the current shard; `None` once it is done.
    slot: Option<usize>,
    /// Keys cloned from the current shard, yet to be looked up.
    batch: Vec<K>,
}

impl<K, V, S, W> fmt::Debug for Iter<'_, K, V, S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// Keys cloned per lock acquisition while iterating (each value is then
/// looked up on its own).
const ITER_BATCH: usize = 64;

impl<K, V, S, W> Iterator for Iter<'_, K, V, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(key) = self.batch.last() {
                // Looked up again, not cloned with the key: since the batch was
                // taken, the key may have been removed or written again, or its
                // deadline moved (earlier by a write or an `Expiry`, later by a
                // read) and passed. Taken off the batch only once looked up: a
                // `Hash` or `Clone` panicking leaves it there for an iteration
                // carried on after the panic.
                let value = self.cache.peek(key);
                let key = self.batch.pop()?;
                match value {
                    Some(value) => return Some((key, value)),
                    None => continue,
                }
            }
            let shards = &self.cache.inner.shards;
            let shard = shards.get(self.shard)?;
            match self.slot {
                Some(from) => {
                    // Filled aside: a `Clone` panicking halfway leaves no
                    // partial batch behind to be yielded again on resuming.
                    let mut batch = std::mem::take(&mut self.batch);
                    let map = shard.read();
                    let now = self.cache.now_for(&map);
                    self.slot = map.collect(from, ITER_BATCH, now, &mut batch);
                    drop(map);
                    batch.reverse();
                    self.batch = batch;
                }
                None => {
                    self.shard += 1;
                    self.slot = Some(0);
                }
            }
        }
    }
}

/// Once done, the iterator stays done: it has passed the last shard.
impl<K, V, S, W> std::iter::FusedIterator for Iter<'_, K, V, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
}

impl<'a, K, V, S, W> IntoIterator for &'a Cache<K, V, S, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    type Item = (K, V);
    type IntoIter = Iter<'a, K, V, S, W>;

    /// [`Cache::iter`].
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
