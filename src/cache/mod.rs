//! The `Cache` handle: hashes once, routes each call to its shard, and delivers
//! removed entries to the listener once the shard lock is released.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::builder::CacheBuilder;
use crate::expiry::{EntryOptions, Expiration};
use crate::loader::{Flight, LoadStats};
use crate::policy::Eviction;
use crate::store::{Entry, Map, Refused, Removed, Shard, Token, WriteContext};
use crate::sync::{Ordering, Padded};
use crate::tags::Tag;
use crate::write::CacheAside;
use crate::DefaultHashBuilder;

mod compute;
mod inspect;
mod load;
mod maintenance;
pub use compute::{Compute, Computed};
pub use inspect::Iter;
pub use load::LoadedEntry;
pub(crate) use load::Mode;
pub(crate) use maintenance::spawn_sweeper;

pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;
pub(crate) type Listener<K, V> = Arc<dyn Fn(K, V, RemovalCause) + Send + Sync>;

/// Why an entry left the cache, as told to the eviction listener.
///
/// ```
/// use larder::{Cache, RemovalCause};
/// use std::sync::{Arc, Mutex};
///
/// let causes = Arc::new(Mutex::new(Vec::new()));
/// let log = causes.clone();
/// let cache: Cache<u32, u32> = Cache::builder()
///     .max_capacity(1)
///     .eviction_listener(move |_k, _v, cause| log.lock().unwrap().push(cause))
///     .build()
///     .unwrap();
/// cache.insert(1, 1);
/// cache.insert(1, 2); // Replaced
/// cache.insert(2, 2); // 1 or 2 leaves for Size
/// cache.invalidate_all(); // Explicit
/// assert_eq!(
///     *causes.lock().unwrap(),
///     vec![RemovalCause::Replaced, RemovalCause::Size, RemovalCause::Explicit]
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted to respect the capacity, or refused because it alone outweighs
    /// the per-entry limit: the smallest shard's capacity (the capacity over the
    /// shard count, rounded down), the same whichever shard its key maps to.
    Size,
    /// Removed by [`Cache::remove`] or [`Cache::invalidate_all`], by a write
    /// policy's `delete`, or dropped by a write policy as a copy that may be
    /// stale once a store call, the weigher or an [`Expiry`](crate::Expiry)
    /// panicked or an async store call was cancelled, or as the copy of a
    /// write-back write that failed, when `flush` or `close` reports it.
    Explicit,
    /// Its value was replaced by an insert under the same key.
    Replaced,
    /// Its time-to-live, time-to-idle or [`Expiry`](crate::Expiry) deadline
    /// passed (or was already past when it was inserted).
    Expired,
    /// Removed by [`Cache::invalidate_tag`], [`Cache::invalidate_tags`] or
    /// [`Cache::invalidate_entries_if`].
    Invalidated,
}

/// An entry refused by [`Cache::try_insert`], handed back whole.
///
/// ```
/// let cache: larder::Cache<u32, String> = larder::Cache::builder()
///     .max_capacity(100)
///     .shards(1)
///     .weigher(|_k, v: &String| v.len() as u32)
///     .build()
///     .unwrap();
/// let rejected = cache.try_insert(1, "x".repeat(101)).unwrap_err();
/// assert_eq!((rejected.key, rejected.weight, rejected.limit), (1, 101, 100));
/// assert_eq!(rejected.value.len(), 101); // handed back, not lost
/// assert!(cache.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<K, V> {
    /// The key that was not stored.
    pub key: K,
    /// The value that was not stored.
    pub value: V,
    /// Its weight, as the weigher gave it (clamped to `u32::MAX - 1`).
    pub weight: u32,
    /// The most one entry may weigh in this cache: the smallest shard's
    /// capacity (the capacity over the shard count, rounded down).
    pub limit: u64,
}

impl<K, V> fmt::Display for Rejected<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry of weight {} exceeds the per-entry limit of {}",
            self.weight, self.limit
        )
    }
}

impl<K: fmt::Debug, V: fmt::Debug> std::error::Error for Rejected<K, V> {}

pub(crate) struct Parts<K, V, S> {
    pub(crate) capacity: u64,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) eviction: Eviction,
    pub(crate) shards: usize,
    pub(crate) initial_capacity: usize,
    pub(crate) hasher: S,
    pub(crate) listener: Option<Listener<K, V>>,
    pub(crate) record_stats: bool,
    pub(crate) expiration: Expiration<K, V>,
    /// Whether the builder set any expiry (else shards get timers on their
    /// first insert with a per-entry time-to-live).
    pub(crate) timed: bool,
}

/// A load's write of what it loaded: it happens only if `flight` is not
/// stale and no tag of the new entry, nor of the entry it refreshes
/// (`refreshed`), was invalidated since the load started at tag epoch
/// `epoch`, all checked under the shard's lock.
#[derive(Clone, Copy)]
pub(crate) struct Landing<'a, K, V> {
    pub(crate) flight: &'a Flight<K, V>,
    pub(crate) epoch: u64,
    pub(crate) refreshed: &'a [Tag],
}

struct Inner<K, V, S> {
    shards: Box<[Padded<Shard<K, V>>]>,
    /// `shards.len() - 1`; shards are picked from hash bits 32.., clear of both the
    /// table's bucket bits (low) and its control-byte bits (top 7).
    shard_mask: u64,
    hasher: S,
    capacity: u64,
    /// The smallest shard capacity: the heaviest entry the cache accepts.
    max_entry_weight: u64,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    record_stats: bool,
    eviction: Eviction,
    expiration: Expiration<K, V>,
    loads: LoadStats,
    /// Bumped by every tag invalidation before it sweeps: a load that saw
    /// it move does not cache a tagged value (a load never caches over a newer
    /// state).
    tag_epoch: std::sync::atomic::AtomicU64,
    /// By a tag's hash bucket: the epoch of the last invalidation of a tag in
    /// that bucket. A tagged load is not cached if a mark of one of its tags
    /// passed the epoch it began at; tags sharing a bucket make that
    /// conservative, never wrong.
    tag_marks: Box<[std::sync::atomic::AtomicU64]>,
    /// Buckets tags for `tag_marks`: the crate's own hasher, not the keys'
    /// (which may be built for the key type alone).
    tag_hasher: foldhash::fast::RandomState,
    /// The background sweeper's thread, if one was started: woken as the
    /// cache is dropped, so that it ends then, however long its interval.
    sweeper: std::sync::OnceLock<std::thread::Thread>,
    /// Alive while the sweeper's thread runs (tests of its end).
    #[cfg(test)]
    sweeper_alive: std::sync::OnceLock<std::sync::Weak<()>>,
}

impl<K, V, S> Drop for Inner<K, V, S> {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.get() {
            sweeper.unpark();
        }
    }
}

/// Buckets of `Inner::tag_marks`: 512 bytes a cache.
const TAG_MARKS: usize = 64;

/// A concurrent, bounded, in-process cache.
///
/// `Cache` is a cheap handle: clones share one cache, and every method takes
/// `&self`, so a `Cache` can sit in a `static`, an `Arc`, or be cloned into
/// threads. Values are returned by clone; wrap large values in `Arc`.
///
/// # Consistency
///
/// Each key lives in one shard behind one lock, so operations on one key are
/// linearizable. Whole-cache views (`len`, `weighted_size`, `iter`, `stats`)
/// and whole-cache removals (`invalidate_all`, `invalidate_tag(s)`,
/// `invalidate_entries_if`) visit shards one at a time and are weakly
/// consistent under concurrent writes.
///
/// # Bound
///
/// After any call returns, the total weight is at most the capacity: each shard
/// evicts synchronously, under its lock, before the insert that would overfill
/// it returns.
///
/// ```
/// use larder::{Cache, Eviction};
///
/// let cache: Cache<&'static str, u32> = Cache::builder()
///     .max_capacity(2)
///     .eviction(Eviction::Lru)
///     .build()
///     .unwrap();
/// cache.insert("a", 1);
/// cache.insert("b", 2);
/// cache.get("a");                 // "a" is now the most recently used
/// cache.insert("c", 3);           // evicts "b", the least recently used
/// assert_eq!(cache.get("b"), None);
/// assert_eq!(cache.get("a"), Some(1));
/// assert_eq!(cache.len(), 2);
/// ```
pub struct Cache<K, V, S = DefaultHashBuilder, W = CacheAside> {
    inner: Arc<Inner<K, V, S>>,
    /// Where writes land: nowhere else ([`CacheAside`]), or a [`Store`](crate::Store)
    /// through one of the write policies.
    write: W,
}

impl<K, V, S, W: Clone> Clone for Cache<K, V, S, W> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            write: self.write.clone(),
        }
    }
}

impl<K, V, S, W> fmt::Debug for Cache<K, V, S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.inner.capacity)
            .field("shards", &self.inner.shards.len())
            .field("eviction", &self.inner.eviction)
            .finish_non_exhaustive()
    }
}

impl<K, V, S, W> Cache<K, V, S, W> {
    /// The write policy.
    pub(crate) fn policy(&self) -> &W {
        &self.write
    }
}

impl<K, V> Cache<K, V, DefaultHashBuilder>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts configuring a cache. See [`CacheBuilder`].
    ///
    /// ```
    /// let cache: larder::Cache<u64, String> =
    ///     larder::Cache::builder().max_capacity(10_000).build().unwrap();
    /// assert!(cache.is_empty());
    /// ```
    pub fn builder() -> CacheBuilder<K, V, DefaultHashBuilder> {
        CacheBuilder::new()
    }
}

impl<K, V, S> Cache<K, V, S, CacheAside>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// `None` when the initial capacity cannot be allocated.
    pub(crate) fn from_parts(parts: Parts<K, V, S>) -> Option<Self> {
        let n = parts.shards as u64;
        let base = parts.capacity / n;
        let extra = parts.capacity % n;
        let per_shard_initial = parts.initial_capacity.div_ceil(parts.shards);
        let shards = (0..n)
            .map(|i| {
                let capacity = base + u64::from(i < extra);
                Shard::new(
                    capacity,
                    base,
                    parts.eviction,
                    per_shard_initial,
                    parts.timed,
                    parts.expiration.refreshes(),
                    parts.weigher.is_some(),
                )
                .map(Padded)
            })
            .collect::<Option<_>>()?;
        Some(Self {
            inner: Arc::new(Inner {
                shards,
                shard_mask: n - 1,
                hasher: parts.hasher,
                capacity: parts.capacity,
                max_entry_weight: base,
                weigher: parts.weigher,
                listener: parts.listener,
                record_stats: parts.record_stats,
                eviction: parts.eviction,
                expiration: parts.expiration,
                loads: LoadStats::default(),
                tag_epoch: std::sync::atomic::AtomicU64::new(0),
                tag_hasher: foldhash::fast::RandomState::default(),
                tag_marks: (0..TAG_MARKS)
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect(),
                sweeper: std::sync::OnceLock::new(),
                #[cfg(test)]
                sweeper_alive: std::sync::OnceLock::new(),
            }),
            write: CacheAside,
        })
    }

    /// The same cache, its writes going where `write` sends them.
    pub(crate) fn with_write<W>(self, write: W) -> Cache<K, V, S, W> {
        Cache {
            inner: self.inner,
            write,
        }
    }

    /// The value under `key`, cloned, counting as a use for the eviction policy.
    ///
    /// A hit takes the shard's lock for reading only. An entry past its
    /// deadline is never returned (and counts as a miss), whether or not
    /// maintenance has reclaimed it yet.
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> =
    ///     larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert("k".to_string(), 7);
    /// assert_eq!(cache.get("k"), Some(7)); // borrowed form: &str for String keys
    /// assert_eq!(cache.get("x"), None);
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_cached(key)
    }

    /// Stores `value` under `key`, replacing any value there, and evicts as needed
    /// to stay within the capacity.
    ///
    /// An entry heavier than the per-entry limit ([`Rejected::limit`]) is not
    /// stored: the listener receives it with [`RemovalCause::Size`] (and any old
    /// value under the key with [`RemovalCause::Replaced`]). Use
    /// [`try_insert`](Self::try_insert) to get it back instead.
    ///
    /// Under [`Eviction::TinyLfu`], an entry heavier
    /// than the admission window (at first 1% of its shard's capacity) is its
    /// own first candidate for the main region: if main has no room for it,
    /// it contests each entry it would displace, as any candidate does (its
    /// count against theirs; a key's first sighting loses), and one that
    /// loses is evicted by this insert ([`RemovalCause::Size`]), as a later
    /// insert would have evicted a lighter newcomer once it left the window,
    /// instead of evicting entries read more often. Entries of one unit
    /// (every entry of a cache without a weigher) are never evicted by their
    /// own insert.
    ///
    /// # Panics
    ///
    /// Only if the weigher, the [`Expiry`](crate::Expiry), the listener or a
    /// key's `Hash` or `Eq` panics. The cache stays consistent either way. An
    /// `Expiry` that panics, or this key's `Hash` or `Eq`, leaves the cache's
    /// entries as they were (a load of the key in flight is still not
    /// cached, as after any write of the key). Another key's `Hash`, met before a new key's entry is placed
    /// (evicting; growing the shard's table; under W-TinyLFU, hashing the
    /// window's oldest entry, its next candidate for the main region, which
    /// it does for every new key once the shard is half full), undoes the
    /// write (the listener hears the entry as [`RemovalCause::Size`]); met
    /// in the step of expiry that follows a write that fitted, it leaves the
    /// write done.
    ///
    /// ```
    /// let cache: larder::Cache<u32, &str> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, "one");
    /// cache.insert(1, "uno");
    /// assert_eq!(cache.get(&1), Some("uno"));
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.write_notifying(key, value, None, &[]);
    }

    /// Like [`insert`](Self::insert), but an entry too heavy to store is handed
    /// back instead of going to the listener.
    ///
    /// # Errors
    ///
    /// [`Rejected`] with the key and value when the entry's weight exceeds the
    /// per-entry limit, the smallest shard's capacity ([`Rejected::limit`]). Any value previously under the key is removed all the
    /// same (the listener sees it as [`RemovalCause::Replaced`]), so a read never
    /// returns the value this call meant to replace.
    ///
    /// `Ok` means the entry was written; under W-TinyLfu one heavier than the
    /// admission window may lose its contest for room and leave at once (see
    /// [`insert`](Self::insert)).
    ///
    /// ```
    /// let cache: larder::Cache<u32, Vec<u8>> = larder::Cache::builder()
    ///     .max_capacity(100)
    ///     .shards(1)
    ///     .weigher(|_, v: &Vec<u8>| v.len() as u32)
    ///     .build()
    ///     .unwrap();
    /// let big = cache.try_insert(1, vec![0; 101]).unwrap_err();
    /// assert_eq!((big.weight, big.limit, big.value.len()), (101, 100, 101));
    /// assert!(cache.try_insert(2, vec![0; 100]).is_ok());
    /// ```
    pub fn try_insert(&self, key: K, value: V) -> Result<(), Rejected<K, V>> {
        self.write(key, value, None, &[], None)
    }

    /// Like [`insert`](Self::insert), with settings for this entry alone: a
    /// time-to-live that overrides the cache's, and tags (see
    /// [`EntryOptions`]). Works on
    /// a cache built without expiry too: its shards start keeping deadlines on
    /// their first such insert.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock, EntryOptions};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<&str, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// cache.insert("session", 1);
    /// cache.insert_with("token", 2, EntryOptions::new().ttl(Duration::from_secs(5)));
    /// time.advance(Duration::from_secs(5));
    /// assert_eq!(cache.get("token"), None);
    /// assert_eq!(cache.get("session"), Some(1));
    /// ```
    pub fn insert_with(&self, key: K, value: V, options: EntryOptions) {
        self.write_notifying(key, value, options.time_to_live(), options.tag_list());
    }

    /// An explicit write whose refused entry, if any, goes to the listener
    /// with what the write removed: a listener panicking on one of them
    /// still hears of the others.
    fn write_notifying(&self, key: K, value: V, ttl: Option<Duration>, tags: &[Tag]) {
        let mut removed = Removed::new();
        if let Err(rejected) = self.write_heard(key, value, ttl, tags, None, &mut removed) {
            removed.push((rejected.key, rejected.value, RemovalCause::Size));
        }
        self.notify(removed);
    }

    /// Removes `key`, returning its value. The listener sees it as
    /// [`RemovalCause::Explicit`]; an entry already past its deadline is
    /// removed as [`RemovalCause::Expired`] and `None` is returned. A load of
    /// the key in flight when the call returns (one the listener began too)
    /// hands its value to its callers but is not cached.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.remove(&1), Some(10));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = catch_unwind(AssertUnwindSafe(|| self.remove_heard(key)));
        // However the call ends (a listener's panic too), a load of the key
        // that began while it ran is not cached either.
        self.flights_stale(key);
        removed.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// [`remove`](Self::remove), but for the loads of the key that began
    /// while it ran.
    fn remove_heard<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, value, cause) = self.take(key)?;
        self.hand_back(key, value, cause)
    }

    /// An entry a removal took, to the listener and (cloned, if there is a
    /// listener) to the caller; `None` when it had expired.
    fn hand_back(&self, key: K, value: V, cause: RemovalCause) -> Option<V> {
        if cause == RemovalCause::Expired {
            self.notify_one(key, value, cause);
            return None;
        }
        match &self.inner.listener {
            Some(_) => {
                // A `Clone` that panics must not drop what was removed
                // without the listener hearing of it.
                let returned = match catch_unwind(AssertUnwindSafe(|| value.clone())) {
                    Ok(returned) => returned,
                    Err(panic) => {
                        // The clone's panic is the one the caller sees.
                        let _ = catch_unwind(AssertUnwindSafe(|| {
                            self.notify_one(key, value, cause);
                        }));
                        resume_unwind(panic);
                    }
                };
                self.notify_one(key, value, cause);
                Some(returned)
            }
            None => Some(value),
        }
    }
}

impl<K, V, S, W> Cache<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        crate::hash::spread(self.inner.hasher.hash_one(key))
    }

    /// The clock's time if `map` keeps deadlines (else it is never needed).
    #[inline]
    fn now_for(&self, map: &Map<K, V>) -> Option<u64> {
        map.timed().then(|| self.inner.expiration.clock.now())
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K, V> {
        &self.inner.shards[self.shard_at(hash)]
    }

    /// Which shard holds the keys with (mixed) hash `hash`: bits 32 and up.
    #[inline]
    fn shard_at(&self, hash: u64) -> usize {
        ((hash >> 32) & self.inner.shard_mask) as usize
    }

    /// A cache hit, as [`Cache::get`] counts and returns it.
    ///
    /// Always inlined: in a caller's loop the cache's own fields (the shard
    /// table, the hasher's seeds, the flags) are then loaded once, not per
    /// call. A standalone loop of Zipf lookups ran 24.0 → 21.1 ns each, the
    /// 90/10 mix 48.4 → 45.5 (20 alternating triplets); the criterion benches,
    /// which call every subject through a trait object, do not see it.
    #[inline(always)]
    pub(crate) fn get_cached<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hit(key, |_, _, _| ()).map(|(v, ())| v)
    }

    /// The lookup of the loading calls: `Ok` with the value to return, or
    /// `Err` to load, with the value to fall back on when the entry is there
    /// but due for a refresh (see
    /// [`refresh_after`](crate::CacheBuilder::refresh_after)).
    #[inline(always)]
    pub(crate) fn get_for_load<Q>(&self, key: &Q) -> Result<V, Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_for_load_hashed(self.hash(key), key)
    }

    /// [`get_for_load`](Self::get_for_load) of a key whose hash the caller
    /// has (see [`hash`](Self::hash)).
    #[inline(always)]
    pub(crate) fn get_for_load_hashed<Q>(&self, hash: u64, key: &Q) -> Result<V, Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.inner.expiration.refreshes() {
            return self
                .hit_hashed(hash, key, |_, _, _| ())
                .map(|(v, ())| v)
                .ok_or(None);
        }
        match self.hit_hashed(hash, key, |map, token, now| self.is_due(map, token, now)) {
            Some((v, false)) => Ok(v),
            Some((v, true)) => Err(Some(v)),
            None => Err(None),
        }
    }

    /// Whether the entry at `token` is due for a refresh at `now`.
    fn is_due(&self, map: &Map<K, V>, token: Token, now: Option<u64>) -> bool {
        match (map.written(token), now) {
            (Some(written), Some(now)) => self.inner.expiration.refresh_due(written, now),
            _ => false,
        }
    }

    /// [`get_cached`](Self::get_cached), with `also` of the entry found (under
    /// the shard's lock, with the time the lookup read) returned beside its
    /// value.
    #[inline(always)]
    fn hit<Q, R>(
        &self,
        key: &Q,
        also: impl FnOnce(&Map<K, V>, Token, Option<u64>) -> R,
    ) -> Option<(V, R)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.hit_hashed(self.hash(key), key, also)
    }

    /// [`hit`](Self::hit) of a key whose hash the caller has.
    #[inline(always)]
    fn hit_hashed<Q, R>(
        &self,
        hash: u64,
        key: &Q,
        also: impl FnOnce(&Map<K, V>, Token, Option<u64>) -> R,
    ) -> Option<(V, R)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(hash);
        // The clock is read under the lock: a time read before waiting for a
        // writer could find live an entry whose idle deadline passed while it
        // waited, and move that deadline on from the past.
        let map = shard.read();
        let now = self.now_for(&map);
        let found = map.find(hash, key).filter(|&(t, _)| map.is_live(t, now));
        let Some((token, entry)) = found else {
            map.prefetch_insert(hash);
            drop(map);
            if self.inner.record_stats {
                shard.misses.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        };
        let value = entry.value.clone();
        let also = also(&map, token, now);
        if let Some(now) = now {
            if self.inner.expiration.reads_move_deadlines() {
                self.after_read(&map, token, entry, now);
            }
        }
        shard.record_read(&map, token, entry, &|k| self.hash(k));
        drop(map);
        if self.inner.record_stats {
            shard.hits.fetch_add(1, Ordering::Relaxed);
        }
        Some((value, also))
    }

    /// A read that may move the entry's deadline (time-to-idle, or an [`Expiry`]
    /// with `expire_after_read`).
    ///
    /// [`Expiry`]: crate::Expiry
    #[cold]
    fn after_read(&self, map: &Map<K, V>, token: Token, entry: &Entry<K, V>, now: u64) {
        if let Some(d) = map.deadlines(token) {
            if let Some(at) = self
                .inner
                .expiration
                .on_read(&entry.key, &entry.value, now, d)
            {
                let later_only = self.inner.expiration.reads_only_extend();
                // The clock again: the value's `Clone` and the `Expiry` ran
                // since `now`, and the entry may have expired meanwhile.
                let now = self.inner.expiration.clock.now();
                map.move_deadline(token, at, later_only, now);
            }
        }
    }

    /// The value under `key`, cloned, without touching the eviction order, the
    /// statistics or the deadline.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// assert_eq!(cache.peek(&1), Some(10));
    /// ```
    #[inline]
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let map = self.shard(hash).read();
        let now = self.now_for(&map);
        map.find(hash, key)
            .filter(|&(t, _)| map.is_live(t, now))
            .map(|(_, e)| e.value.clone())
    }

    /// Whether `key` is present (and live), without touching the eviction
    /// order, the statistics or the deadline.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(10).build().unwrap();
    /// cache.insert(1, 10);
    /// assert!(cache.contains_key(&1));
    /// assert!(!cache.contains_key(&2));
    /// ```
    #[inline]
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let map = self.shard(hash).read();
        let now = self.now_for(&map);
        map.find(hash, key)
            .is_some_and(|(t, _)| map.is_live(t, now))
    }

    /// Stores an entry. An explicit write (`flight: None`) makes any load of
    /// the key in progress stale; a flight's own write happens only if the
    /// flight is not stale, checked under the shard lock.
    fn write(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        tags: &[Tag],
        flight: Option<Landing<'_, K, V>>,
    ) -> Result<(), Rejected<K, V>> {
        let mut removed = Removed::new();
        let result = self.write_heard(key, value, ttl, tags, flight, &mut removed);
        let Err(rejected) = result else {
            self.notify(removed);
            return Ok(());
        };
        // A listener panicking on what the write removed must not take the
        // rejected entry down with the unwinding: it goes to the listener as
        // `insert` would give it, and the first panic goes on.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.notify(removed))) {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                self.notify_one(rejected.key, rejected.value, RemovalCause::Size);
            }));
            resume_unwind(panic);
        }
        Err(rejected)
    }

    /// [`write_deferred`](Self::write_deferred) for a caller that hands
    /// `removed` to the listener next: should the write panic instead (a
    /// key's `Hash` while it evicts), the listener hears what it removed
    /// before the panic goes on (see [`HeardIfUnwinding`]).
    #[inline(always)]
    fn write_heard(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        tags: &[Tag],
        flight: Option<Landing<'_, K, V>>,
        removed: &mut Removed<K, V>,
    ) -> Result<(), Rejected<K, V>> {
        let guard = HeardIfUnwinding {
            cache: self,
            list: removed,
        };
        let result = self.write_deferred(key, value, ttl, tags, flight, guard.list);
        std::mem::forget(guard);
        result
    }

    /// [`write`](Self::write), leaving what it removed in `removed` for the
    /// caller to hand to the listener once its own locks are released.
    pub(crate) fn write_deferred(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        tags: &[Tag],
        flight: Option<Landing<'_, K, V>>,
        removed: &mut Removed<K, V>,
    ) -> Result<(), Rejected<K, V>> {
        let weight = match &self.inner.weigher {
            Some(weigher) => weigher(&key, &value),
            None => 1,
        };
        let hash = self.hash(&key);
        let shard = self.shard(hash);
        let expiration = &self.inner.expiration;
        let deadlines = |k: &K, v: &V, now: u64, current: Option<u64>| {
            expiration.on_write(k, v, now, current, ttl)
        };
        let hash_of = |k: &K| self.hash(k);
        let mut writer = shard.write(&hash_of);
        // Under the write lock: a load that looked for the key before this
        // write lands has joined its flight by then (it joins, then looks), so
        // it is marked stale here and will not cache over this value.
        if flight.is_none() {
            shard.flights.invalidate(hash, &key);
        }
        if let Some(Landing {
            flight,
            epoch,
            refreshed,
        }) = flight
        {
            if flight.is_stale() || !self.untagged_since(tags.iter().chain(refreshed), epoch) {
                return Ok(());
            }
            // Cached now: an older load of the key still running must not
            // land over it.
            flight.supersede_older();
        }
        let result = if ttl.is_none() && tags.is_empty() && writer.is_plain() {
            writer.insert_plain(hash, key, value, weight, removed)
        } else {
            writer.insert(
                hash,
                key,
                value,
                weight,
                WriteContext {
                    clock: &expiration.clock,
                    start: ttl.is_some(),
                    deadlines: &deadlines,
                    tags,
                    stamp: expiration.refreshes(),
                },
                removed,
            )
        };
        drop(writer);
        match result {
            Ok(()) => Ok(()),
            Err(Refused::Expired(key, value)) => {
                removed.push((key, value, RemovalCause::Expired));
                Ok(())
            }
            Err(Refused::TooHeavy(key, value)) => Err(Rejected {
                key,
                value,
                // As the store counted it (the weigher's docs).
                weight: weight.min(crate::store::MAX_WEIGHT),
                limit: self.inner.max_entry_weight,
            }),
        }
    }

    /// Whether none of `tags` was invalidated since tag epoch `epoch`.
    fn untagged_since<'t>(&self, mut tags: impl Iterator<Item = &'t Tag>, epoch: u64) -> bool {
        tags.all(|tag| self.tag_mark(tag).load(Ordering::SeqCst) <= epoch)
    }

    /// Removes `key`'s entry for a refresh whose loader found nothing, unless
    /// the refresh went stale (see [`Landing`]); returns it with why it left.
    pub(crate) fn take_landing(
        &self,
        key: &K,
        landing: Landing<'_, K, V>,
    ) -> Option<(K, V, RemovalCause)> {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let hash_of = |k: &K| self.hash(k);
        let mut writer = shard.write(&hash_of);
        if landing.flight.is_stale()
            || !self.untagged_since(landing.refreshed.iter(), landing.epoch)
        {
            return None;
        }
        landing.flight.supersede_older();
        writer.remove(hash, key, &self.inner.expiration.clock)
    }

    /// The invalidation mark of `tag`'s bucket.
    fn tag_mark(&self, tag: &Tag) -> &std::sync::atomic::AtomicU64 {
        let bucket = crate::hash::spread(self.inner.tag_hasher.hash_one(tag)) as usize % TAG_MARKS;
        &self.inner.tag_marks[bucket]
    }

    /// Removes `key`'s entry (making any load of it stale) and returns it with
    /// why it left, for the caller to hand to the listener.
    pub(crate) fn take<Q>(&self, key: &Q) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        let hash_of = |k: &K| self.hash(k);
        let mut writer = shard.write(&hash_of);
        // Under the write lock, as in `write_deferred`.
        shard.flights.invalidate(hash, key);
        writer.remove(hash, key, &self.inner.expiration.clock)
    }

    /// Makes a load of `key` in flight stale as a removal of it ends: one
    /// that began while the removal ran (from the listener, or on another
    /// thread once the entry was taken) is still in flight when the call
    /// returns, and is not cached. One atomic load when no load is in flight
    /// in the key's shard.
    fn flights_stale<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        if shard.flights.is_active() {
            let hash_of = |k: &K| self.hash(k);
            // Under the write lock, as in `write_deferred`.
            let _writer = shard.write(&hash_of);
            shard.flights.invalidate(hash, key);
        }
    }

    fn notify_one(&self, key: K, value: V, cause: RemovalCause) {
        self.notify(std::iter::once((key, value, cause)));
    }

    /// Hands removed entries to the listener (no lock is held here). Without a
    /// listener they are simply dropped, also outside the lock.
    pub(crate) fn notify(&self, removed: impl IntoIterator<Item = (K, V, RemovalCause)>) {
        let Some(listener) = &self.inner.listener else {
            return;
        };
        let mut first_panic = None;
        for (k, v, cause) in removed {
            deliver(listener, k, v, cause, &mut first_panic);
        }
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }
}

/// What a write or a sweep is removing, heard by the listener should it
/// panic (a key's `Hash` while it evicts or sweeps) before its caller hands
/// the list over: only unwinding drops the guard, which then gives the
/// listener the entries (any panic of the listener's own dropped); the way
/// through forgets it, so it costs a write nothing. Declared before the
/// shard's lock is taken, it is dropped after the lock is released.
struct HeardIfUnwinding<'a, K, V, S, W, L = Removed<K, V>>
where
    L: Default + IntoIterator<Item = (K, V, RemovalCause)>,
{
    cache: &'a Cache<K, V, S, W>,
    list: &'a mut L,
}

impl<K, V, S, W, L> Drop for HeardIfUnwinding<'_, K, V, S, W, L>
where
    L: Default + IntoIterator<Item = (K, V, RemovalCause)>,
{
    #[cold]
    fn drop(&mut self) {
        if let Some(listener) = &self.cache.inner.listener {
            let mut dropped = None;
            for (k, v, cause) in std::mem::take(self.list) {
                deliver(listener, k, v, cause, &mut dropped);
            }
        }
    }
}

fn deliver<K, V>(
    listener: &Listener<K, V>,
    key: K,
    value: V,
    cause: RemovalCause,
    first_panic: &mut Option<Box<dyn std::any::Any + Send>>,
) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener(key, value, cause))) {
        first_panic.get_or_insert(panic);
    }
}
