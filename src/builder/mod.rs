//! `CacheBuilder`: every setting of a cache, validated once in `build`. The
//! write policies' constructors are in `write`, the refusals in `error`.

mod error;
mod write;

pub use error::BuildError;

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, Listener, Weigher};
use crate::expiry::Expiration;
use crate::{CacheAside, Clock, DefaultHashBuilder, Eviction, Expiry, RemovalCause, WritePolicy};

/// The most shards a cache may have.
///
/// ```
/// let err = larder::Cache::<u32, u32>::builder()
///     .max_capacity(1 << 20)
///     .shards(larder::MAX_SHARDS * 2)
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, larder::BuildError::InvalidShards { .. }));
/// ```
pub const MAX_SHARDS: usize = 1 << 16;

/// The least capacity the default shard count leaves each shard: small caches
/// get one shard, so their eviction order is the policy's exact order.
const MIN_DEFAULT_SHARD_CAPACITY: u64 = 1024;

/// Configures and builds a [`Cache`]. Obtain one from [`Cache::builder`].
///
/// ```
/// use larder::{Cache, Eviction};
///
/// let cache: Cache<String, Vec<u8>> = Cache::builder()
///     .max_capacity(64 * 1024 * 1024)           // bytes, because of the weigher
///     .weigher(|k: &String, v: &Vec<u8>| (k.len() + v.len()) as u32)
///     .eviction(Eviction::Lru)
///     .eviction_listener(|key, _value, cause| println!("{key} left: {cause:?}"))
///     .build()
///     .expect("valid settings");
/// cache.insert("a".to_string(), vec![0; 100]);
/// assert_eq!(cache.weighted_size(), 101);
/// ```
#[must_use = "a builder does nothing until `build`; each setting returns the builder to keep"]
pub struct CacheBuilder<K, V, S = DefaultHashBuilder, W = CacheAside> {
    settings: Settings<K, V>,
    hasher: S,
    sweeper: Option<(Duration, Spawner<K, V, S>)>,
    write: W,
    /// A write policy's invalid settings, reported by `build`.
    write_error: Option<BuildError>,
    _types: PhantomData<fn(K, V)>,
}

/// The settings that neither the hasher nor the write policy types: they
/// carry over unchanged when [`hasher`](CacheBuilder::hasher) or a write
/// policy's constructor gives the builder another type.
struct Settings<K, V> {
    max_capacity: Option<u64>,
    weigher: Option<Weigher<K, V>>,
    eviction: Eviction,
    shards: Option<usize>,
    entry_weight: Option<u64>,
    initial_capacity: usize,
    listener: Option<Listener<K, V>>,
    record_stats: bool,
    time_to_live: Option<Duration>,
    time_to_idle: Option<Duration>,
    expiry: Option<Arc<dyn Expiry<K, V>>>,
    clock: Option<Clock>,
    refresh_after: Option<Duration>,
}

/// Starts the background sweeper of a built cache (monomorphized where the
/// hasher is known to be `Send + Sync + 'static`).
type Spawner<K, V, S> = fn(&Cache<K, V, S>, Duration) -> std::io::Result<()>;

/// The shortest interval a background sweeper may have.
///
/// ```
/// use std::time::Duration;
/// let err = larder::Cache::<u32, u32>::builder()
///     .max_capacity(10)
///     .background_sweep(larder::MIN_SWEEP_INTERVAL / 2)
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, larder::BuildError::SweepIntervalTooShort { .. }));
/// ```
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(1);

impl<K, V, S, W> fmt::Debug for CacheBuilder<K, V, S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("max_capacity", &self.settings.max_capacity)
            .field("weigher", &self.settings.weigher.is_some())
            .field("eviction", &self.settings.eviction)
            .field("shards", &self.settings.shards)
            .field("max_entry_weight", &self.settings.entry_weight)
            .field("initial_capacity", &self.settings.initial_capacity)
            .field("eviction_listener", &self.settings.listener.is_some())
            .field("record_stats", &self.settings.record_stats)
            .field("time_to_live", &self.settings.time_to_live)
            .field("time_to_idle", &self.settings.time_to_idle)
            .field("expiry", &self.settings.expiry.is_some())
            .field("refresh_after", &self.settings.refresh_after)
            .finish_non_exhaustive()
    }
}

impl<K, V> CacheBuilder<K, V, DefaultHashBuilder> {
    pub(crate) fn new() -> Self {
        Self {
            settings: Settings {
                max_capacity: None,
                weigher: None,
                eviction: Eviction::default(),
                shards: None,
                entry_weight: None,
                initial_capacity: 0,
                listener: None,
                record_stats: false,
                time_to_live: None,
                time_to_idle: None,
                expiry: None,
                clock: None,
                refresh_after: None,
            },
            hasher: DefaultHashBuilder::default(),
            sweeper: None,
            write: CacheAside,
            write_error: None,
            _types: PhantomData,
        }
    }
}

impl<K, V, S, W> CacheBuilder<K, V, S, W>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The bound: a number of entries, or of weight units once a
    /// [`weigher`](Self::weigher) is set. Required; must be at least 1.
    ///
    /// The capacity is split evenly between shards and each shard keeps its own
    /// share exactly, so the cache never holds more than `max_capacity` after any
    /// call returns. An entry heavier than one shard's share is refused (see
    /// [`Cache::try_insert`]). Whatever the capacity, a shard holds at most
    /// `u32::MAX - 1` entries (see [`weigher`](Self::weigher)).
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> =
    ///     larder::Cache::builder().max_capacity(100).build().unwrap();
    /// for i in 0..1_000 {
    ///     cache.insert(i, i);
    /// }
    /// assert!(cache.len() <= 100);
    /// assert_eq!(cache.capacity(), 100);
    /// ```
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.settings.max_capacity = Some(max_capacity);
        self
    }

    /// Weighs each entry; the capacity then bounds the total weight instead of the
    /// count. Called once per insert, before any shard lock is taken: if it
    /// panics the panic reaches the caller of `insert` and the cache is
    /// unchanged. With write-through and write-back it runs while the key's
    /// stripe lock is held (writes of one key take turns), so a weigher that
    /// writes to the cache may wait on itself: it should only weigh.
    /// Weights above `u32::MAX - 1` are clamped to it. A weight of 0 is
    /// allowed; such entries take no capacity, so only memory bounds their
    /// number, up to `u32::MAX - 1` entries a shard (its tokens are `u32`s):
    /// beyond that a new key evicts one entry in policy order first. Making
    /// room for a write passes them over, as evicting them would free
    /// nothing: expiry, removal and invalidation still take them out, but
    /// weight does not (at most as many are passed over per write as the
    /// shard holds entries, after which they go in policy order). An entry
    /// heavier than one shard's share of the capacity is refused (see
    /// [`Cache::max_entry_weight`](crate::Cache::max_entry_weight)): the
    /// default shard count depends on the cores, so say how heavy entries
    /// may be with [`max_entry_weight`](Self::max_entry_weight).
    ///
    /// ```
    /// let cache: larder::Cache<u32, String> = larder::Cache::builder()
    ///     .max_capacity(1_000) // bytes of value
    ///     .weigher(|_k, v: &String| v.len() as u32)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, "x".repeat(300));
    /// cache.insert(2, "y".repeat(200));
    /// assert_eq!(cache.weighted_size(), 500);
    /// assert_eq!(cache.len(), 2);
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.settings.weigher = Some(Arc::new(weigher));
        self
    }

    /// The eviction policy. Defaults to [`Eviction::TinyLfu`].
    ///
    /// ```
    /// use larder::{Cache, Eviction};
    ///
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(2)
    ///     .eviction(Eviction::Lru)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// cache.insert(2, 2);
    /// cache.get(&1);
    /// cache.insert(3, 3); // 2 is the least recently used
    /// assert_eq!(cache.get(&2), None);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.settings.eviction = eviction;
        self
    }

    /// The number of shards: a power of two from 1 to [`MAX_SHARDS`], at most the
    /// capacity. The default is thirty-two per available core, rounded up to
    /// a power of two (four per core once a
    /// [`weigher`](Self::weigher) is set, since an entry heavier than one
    /// shard's share is refused), fewer when that would leave a shard below
    /// 1,024 units of capacity. More shards mean less contention; fewer mean
    /// eviction closer to the policy's global order.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(10_000)
    ///     .shards(4)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.shard_count(), 4);
    /// let err = larder::Cache::<u32, u32>::builder()
    ///     .max_capacity(10_000)
    ///     .shards(3)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, larder::BuildError::InvalidShards { shards: 3 });
    /// ```
    pub fn shards(mut self, shards: usize) -> Self {
        self.settings.shards = Some(shards);
        self
    }

    /// The heaviest entry the cache must take (see
    /// [`Cache::max_entry_weight`](crate::Cache::max_entry_weight): an entry
    /// heavier than one shard's share of the capacity is refused). Without
    /// [`shards`](Self::shards), the default shard count is halved until
    /// each shard's share is at least `weight`, so that the limit no longer
    /// depends on the machine's cores; with it, `build` refuses a count
    /// whose shares are smaller, as it refuses a `weight` above the
    /// capacity ([`BuildError::EntryTooHeavy`]). It needs a
    /// [`weigher`](Self::weigher): without one every entry weighs 1, and
    /// `build` refuses a `weight` above 1
    /// ([`BuildError::EntryWeightWithoutWeigher`]; 0 and 1 ask nothing).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use larder::{BuildError, Cache};
    ///
    /// let cache: Cache<String, Arc<[u8]>> = Cache::builder()
    ///     .max_capacity(64 << 20) // bytes
    ///     .weigher(|_, v: &Arc<[u8]>| v.len() as u32)
    ///     .max_entry_weight(16 << 20) // a report may take a quarter
    ///     .build()
    ///     .unwrap();
    /// assert!(cache.shard_count() <= 4);
    /// assert!(cache.max_entry_weight() >= 16 << 20);
    /// assert!(cache.try_insert("report".into(), vec![0; 16 << 20].into()).is_ok());
    ///
    /// let err = Cache::<u32, u32>::builder()
    ///     .max_capacity(1_000)
    ///     .weigher(|_, v| *v)
    ///     .shards(4)
    ///     .max_entry_weight(300)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, BuildError::EntryTooHeavy { weight: 300, capacity: 1_000, shards: 4 });
    /// assert_eq!(err.to_string(), "4 shards split a capacity of 1000 into shares below max_entry_weight 300: use at most 2 shards");
    ///
    /// let err = Cache::<u32, u32>::builder().max_capacity(1_000).max_entry_weight(300).build();
    /// assert_eq!(err.unwrap_err(), BuildError::EntryWeightWithoutWeigher { weight: 300 });
    /// ```
    pub fn max_entry_weight(mut self, weight: u64) -> Self {
        self.settings.entry_weight = Some(weight);
        self
    }

    /// Room reserved up front for this many entries (spread over the shards), to
    /// avoid growing the tables while the cache fills. At most the capacity
    /// is reserved. A shard that empties (its last entry removed, expired or
    /// invalidated, or `invalidate_all`) keeps its share of the room, and
    /// gives back only what it grew beyond it. An allocation that fails makes
    /// `build` return [`BuildError::InitialCapacityTooLarge`]; but on a system that
    /// overcommits memory, room it cannot back may instead get the process
    /// killed as it is first written, so ask for what the machine holds.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(10_000)
    ///     .initial_capacity(10_000)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn initial_capacity(mut self, entries: usize) -> Self {
        self.settings.initial_capacity = entries;
        self
    }

    /// Counts hits and misses for [`Cache::stats`]. Off by default: counting costs
    /// an atomic increment on every `get`.
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(10)
    ///     .record_stats()
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// cache.get(&1);
    /// cache.get(&2);
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses), (1, 1));
    /// assert_eq!(stats.hit_ratio(), 0.5);
    /// ```
    pub fn record_stats(mut self) -> Self {
        self.settings.record_stats = true;
        self
    }

    /// Called with each entry the cache lets go of, and why. It runs on the thread
    /// that caused the removal, after the shard lock is released, so it may call
    /// back into the cache. If it panics, the cache stays consistent, every other
    /// removed entry is still delivered, and the first panic then resumes in the
    /// caller of the operation that removed them. The entries still cached when
    /// the cache itself is dropped are dropped with it, unheard.
    ///
    /// A listener (or a value, a weigher, an `Expiry`, a store or a failure
    /// handler) that owns a handle of its own cache keeps the cache alive: the
    /// two are dropped only once that handle is let go of (a cycle of `Arc`s,
    /// as with any shared owner). Give it a handle it can
    /// drop, such as one in a `Mutex<Option<_>>` you empty, if the cache is
    /// to be dropped while the program runs.
    ///
    /// ```
    /// use larder::{Cache, RemovalCause};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let heard = Arc::new(Mutex::new(Vec::new()));
    /// let log = heard.clone();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .eviction_listener(move |k, v, cause| log.lock().unwrap().push((k, v, cause)))
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11);
    /// cache.remove(&1);
    /// assert_eq!(
    ///     *heard.lock().unwrap(),
    ///     vec![(1, 10, RemovalCause::Replaced), (1, 11, RemovalCause::Explicit)]
    /// );
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.settings.listener = Some(Arc::new(listener));
        self
    }

    /// Entries expire this long after they were last written (inserted or
    /// replaced). Zero means values are not cached at all (each insert goes
    /// straight to the listener as [`RemovalCause::Expired`]); `Duration::MAX`
    /// or any sum past the clock's range means never. Expired entries are never
    /// read; they are reclaimed a few at a time by writes to their shard, or by
    /// [`Cache::run_pending_tasks`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .time_to_live(Duration::from_secs(30))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// time.advance(Duration::from_secs(29));
    /// assert_eq!(cache.get(&1), Some(1)); // reads do not extend a time-to-live
    /// time.advance(Duration::from_secs(1));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.settings.time_to_live = Some(ttl);
        self
    }

    /// Entries expire this long after they were last read or written. With a
    /// [`time_to_live`](Self::time_to_live) too, an entry expires at whichever
    /// deadline comes first, and reads never extend it past its time-to-live.
    /// A read extends the deadline only when that moves it by a tick (about a
    /// millisecond) or by 1/1024 of the time-to-idle, whichever is less, so
    /// hot entries' reads write nothing: an entry may expire that much
    /// earlier than its last read plus the time-to-idle, never later. Zero
    /// and `Duration::MAX` mean what they mean for `time_to_live`.
    ///
    /// A read returns the entry if it was live when the read took the clock.
    /// Should the deadline pass before the read extends it (the value's
    /// `Clone`, or an [`Expiry`] answering the read, taking
    /// that long), the read still returns the value but leaves the deadline
    /// where it was: the entry stays expired, as any other read since found it.
    /// (It checks the clock once more just before it moves the deadline; a
    /// deadline passing in the few instructions between the two, should the
    /// thread be preempted there, is missed, and the entry lives on.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .time_to_idle(Duration::from_secs(10))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// for _ in 0..5 {
    ///     time.advance(Duration::from_secs(9));
    ///     assert_eq!(cache.get(&1), Some(1)); // each read buys ten more seconds
    /// }
    /// time.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.settings.time_to_idle = Some(tti);
        self
    }

    /// Entries become due for a refresh this long after they were written: the
    /// next loading call that hits one ([`get_or_load`](Cache::get_or_load)
    /// and its kin, sync or async) reloads it, so that a hot key's value is
    /// renewed before it grows old and no caller waits on a load that another
    /// caller runs.
    ///
    /// - **Who waits.** The caller that hits a due entry runs its own loader
    ///   and returns what it loaded. Every other caller of the key meanwhile
    ///   gets the cached value at once, as a plain hit (the entry counts as
    ///   written when its refresh began): hits never join a refresh. Callers
    ///   that miss (the entry expired or was removed meanwhile) join it as
    ///   they join any load.
    /// - **What lands.** The loaded value replaces the entry as the loader's
    ///   write (the listener hears [`RemovalCause::Replaced`]), with what the
    ///   loader gives it: the options of
    ///   [`get_or_load_with`](Cache::get_or_load_with), or none. It does not
    ///   land if the key was written or removed, the cache invalidated, or a
    ///   tag of the old entry or the new one invalidated while it ran.
    /// - **Failures.** A loader's error (the `try_` calls) leaves the entry as
    ///   it was; the caller gets the cached value, the statistics count the
    ///   failure, and the next loading call that hits the entry tries again.
    ///   An `optionally_` loader answering `None` removes the entry
    ///   ([`RemovalCause::Explicit`]). A panicking loader leaves the entry,
    ///   and the panic reaches its caller.
    /// - **What does not refresh.** [`get`](Cache::get), `peek` and
    ///   `compute` never load. An entry written more recently than this is
    ///   never reloaded.
    ///
    /// With expiry too, an entry still expires at its deadline: a refresh
    /// renews only entries read before then. `Duration::MAX` means never.
    /// The cache keeps each entry's write time (8 bytes an entry) and its
    /// shards' deadline wheels, as a cache with expiry does.
    ///
    /// Refused by [`build`](Self::build) ([`BuildError::InvalidRefresh`]) when
    /// zero, when not shorter than the `time_to_live`, or on a cache that
    /// loads through a [`Store`](crate::Store).
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<&str, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .refresh_after(Duration::from_secs(60))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get_or_load("rate", |_| 1), 1);
    /// time.advance(Duration::from_secs(61));
    /// assert_eq!(cache.get("rate"), Some(1)); // due, but `get` never loads
    /// assert_eq!(cache.get_or_load("rate", |_| 2), 2); // this caller reloads
    /// assert_eq!(cache.get_or_load("rate", |_| unreachable!("fresh")), 2);
    /// ```
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.settings.refresh_after = Some(after);
        self
    }

    /// Computes each entry's lifetime on create, update and read (see
    /// [`Expiry`]). Cannot be combined with `time_to_live` or `time_to_idle`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock, Expiry};
    ///
    /// /// Short keys live a second, long ones a minute.
    /// struct ByLength;
    /// impl Expiry<String, u32> for ByLength {
    ///     fn expire_after_create(&self, key: &String, _: &u32) -> Option<Duration> {
    ///         Some(Duration::from_secs(if key.len() < 4 { 1 } else { 60 }))
    ///     }
    /// }
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<String, u32> =
    ///     Cache::builder().max_capacity(10).expiry(ByLength).clock(clock).build().unwrap();
    /// cache.insert("ab".to_string(), 1);
    /// cache.insert("abcdef".to_string(), 2);
    /// time.advance(Duration::from_secs(2));
    /// assert_eq!(cache.get("ab"), None);
    /// assert_eq!(cache.get("abcdef"), Some(2));
    /// ```
    pub fn expiry(mut self, expiry: impl Expiry<K, V>) -> Self {
        self.settings.expiry = Some(Arc::new(expiry));
        self
    }

    /// The clock expiry reads. Defaults to [`Clock::system`]; tests pass
    /// [`Clock::mock`] to move time by hand.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::{Cache, Clock};
    ///
    /// let (clock, time) = Clock::mock();
    /// let cache: Cache<u32, u32> = Cache::builder()
    ///     .max_capacity(10)
    ///     .time_to_live(Duration::from_secs(5))
    ///     .clock(clock)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// time.advance(Duration::from_secs(5));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.settings.clock = Some(clock);
        self
    }

    /// Starts a background thread that calls [`Cache::run_pending_tasks`]
    /// every `interval`, so expired entries are reclaimed in a cache that no
    /// one writes to. Off by default: writes and explicit calls to
    /// `run_pending_tasks` suffice for most caches. The thread holds only a
    /// weak reference and ends when the last handle is dropped (once the
    /// sweep it may be running is done), however long the interval. A
    /// panicking listener does not stop it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .background_sweep(Duration::from_secs(1))
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn background_sweep(mut self, interval: Duration) -> Self
    where
        S: Send + Sync + 'static,
    {
        self.sweeper = Some((interval, crate::cache::spawn_sweeper::<K, V, S>));
        self
    }

    /// The hasher builder for keys. The default, [`DefaultHashBuilder`], is
    /// randomly seeded per cache, so keys chosen to collide in one process do not
    /// collide in another. Settings made before this call, a
    /// [`background_sweep`](Self::background_sweep) included, are kept.
    ///
    /// The hasher need not mix its bits well: the cache mixes each hash once
    /// more before choosing a shard, a table bucket or a lock stripe from it,
    /// so even an identity hasher for integer keys spreads them over every
    /// shard. Keys whose hashes are equal are told apart by `Eq`, at the cost
    /// of a longer lookup.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    ///
    /// let cache: larder::Cache<u32, u32, RandomState> = larder::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .hasher(RandomState::new())
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// assert_eq!(cache.get(&1), Some(1));
    /// ```
    pub fn hasher<S2>(self, hasher: S2) -> CacheBuilder<K, V, S2, W>
    where
        S2: BuildHasher + Send + Sync + 'static,
    {
        CacheBuilder {
            settings: self.settings,
            hasher,
            sweeper: self
                .sweeper
                .map(|(interval, _)| (interval, crate::cache::spawn_sweeper::<K, V, S2> as _)),
            write: self.write,
            write_error: self.write_error,
            _types: PhantomData,
        }
    }

    /// Validates the settings and builds the cache.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when a setting cannot work: the capacity is missing or
    /// zero; the shard count is not a power of two in `1..=MAX_SHARDS` or
    /// exceeds the capacity; an [`Expiry`] is combined with `time_to_live` or
    /// `time_to_idle`; a `refresh_after` is zero, not shorter than the
    /// `time_to_live`, or on a cache with a [`Store`](crate::Store); a
    /// `background_sweep` interval is below
    /// [`MIN_SWEEP_INTERVAL`]; the [`WriteBack`](crate::WriteBack) settings are invalid;
    /// `initial_capacity` asks for more room than can be allocated;
    /// `max_entry_weight` is above the capacity, above each shard's share of
    /// it when `shards` is set, or above 1 without a weigher; or the
    /// sweeper's or the write-back flusher's thread cannot be started.
    ///
    /// ```
    /// use larder::{BuildError, Cache};
    ///
    /// let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build()?;
    /// cache.insert(1, 1);
    /// assert_eq!(Cache::<u32, u32>::builder().build().unwrap_err(), BuildError::MissingCapacity);
    /// # Ok::<(), BuildError>(())
    /// ```
    pub fn build(self) -> Result<Cache<K, V, S, W>, BuildError>
    where
        W: WritePolicy,
    {
        if let Some(error) = self.write_error {
            return Err(error);
        }
        let capacity = self
            .settings
            .max_capacity
            .ok_or(BuildError::MissingCapacity)?;
        if capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        let shards = match self.settings.shards {
            Some(n) if n == 0 || !n.is_power_of_two() || n > MAX_SHARDS => {
                return Err(BuildError::InvalidShards { shards: n })
            }
            Some(n) if n as u64 > capacity => {
                return Err(BuildError::MoreShardsThanCapacity {
                    shards: n,
                    capacity,
                })
            }
            Some(n) => n,
            None => {
                let mut n = default_shards(capacity, self.settings.weigher.is_some());
                if let Some(weight) = self.settings.entry_weight {
                    while n > 1 && capacity / (n as u64) < weight {
                        n /= 2;
                    }
                }
                n
            }
        };
        if let (Some(weight @ 2..), None) = (self.settings.entry_weight, &self.settings.weigher) {
            return Err(BuildError::EntryWeightWithoutWeigher { weight });
        }
        if let Some(weight) = self.settings.entry_weight {
            if capacity / (shards as u64) < weight {
                return Err(BuildError::EntryTooHeavy {
                    weight,
                    capacity,
                    shards,
                });
            }
        }
        let fixed = self.settings.time_to_live.is_some() || self.settings.time_to_idle.is_some();
        if fixed && self.settings.expiry.is_some() {
            return Err(BuildError::ConflictingExpiry);
        }
        if let Some((interval, _)) = self.sweeper {
            if interval < MIN_SWEEP_INTERVAL {
                return Err(BuildError::SweepIntervalTooShort { interval });
            }
        }
        if let Some(after) = self.settings.refresh_after {
            let reason = if after.is_zero() {
                Some("it must be above zero (every hit would reload)")
            } else if self.settings.time_to_live.is_some_and(|ttl| after >= ttl) {
                Some("it must be shorter than the time_to_live, or entries expire before they are due")
            } else if !W::CACHE_ASIDE {
                Some("a cache with a Store loads through it, not through get_or_load")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(BuildError::InvalidRefresh { reason });
            }
        }
        let refresh = self.settings.refresh_after;
        let timed = fixed || self.settings.expiry.is_some() || refresh.is_some();
        let clock = self.settings.clock.unwrap_or_default();
        let expiration = match self.settings.expiry {
            Some(expiry) => Expiration::custom(clock, expiry),
            None => Expiration::fixed(
                clock,
                self.settings.time_to_live,
                self.settings.time_to_idle,
            ),
        }
        .refreshing(refresh);
        let initial_capacity = self.settings.initial_capacity.min(capacity as usize);
        let cache = Cache::from_parts(crate::cache::Parts {
            capacity,
            weigher: self.settings.weigher,
            eviction: self.settings.eviction,
            shards,
            initial_capacity,
            hasher: self.hasher,
            listener: self.settings.listener,
            record_stats: self.settings.record_stats,
            expiration,
            timed,
        })
        .ok_or(BuildError::InitialCapacityTooLarge {
            entries: initial_capacity,
        })?;
        if let Some((interval, spawn)) = self.sweeper {
            spawn(&cache, interval).map_err(|e| BuildError::SweeperNotStarted {
                reason: e.to_string(),
            })?;
        }
        self.write
            .start()
            .map_err(|e| BuildError::FlusherNotStarted {
                reason: e.to_string(),
            })?;
        Ok(cache.with_write(self.write))
    }
}

/// Shards per available core by default. Sixteen rather than four: with two
/// threads on the 90/10 Zipf mix (`cargo bench --bench interleaved`) the ratio
/// to quick_cache went from 0.79 / 0.83 / 0.81 to 0.96 / 1.05 / 1.03, as
/// writers hold a shard for the admission work; one thread and the hit ratios
/// on the traces did not move. Then thirty-two: on the same mix, two caches
/// in one process taking turns, 64 shards against 32 (two cores) took a
/// median of 7% off the time per operation on two threads (paired ratios
/// 0.91–0.95 over six runs; 8 shards against 32 had read 1.29) and added
/// about 1% on one (0.995–1.045); 128 against 64 read 0.97–0.99 on two, and
/// the trace means (46.44, two threads 46.35) and the bytes per entry (53.5)
/// held. A weighted cache keeps four, so that a shard's share of the capacity
/// (the heaviest entry it takes) stays large.
const SHARDS_PER_CORE: usize = 32;
const WEIGHTED_SHARDS_PER_CORE: usize = 4;

fn default_shards(capacity: u64, weighted: bool) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_core = if weighted {
        WEIGHTED_SHARDS_PER_CORE
    } else {
        SHARDS_PER_CORE
    };
    let mut shards = cores
        .saturating_mul(per_core)
        .next_power_of_two()
        .min(MAX_SHARDS);
    while shards > 1 && capacity / (shards as u64) < MIN_DEFAULT_SHARD_CAPACITY {
        shards /= 2;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shards_leave_weighted_caches_larger_shares() {
        let big = 1 << 40;
        let (plain, weighted) = (default_shards(big, false), default_shards(big, true));
        assert!(plain.is_power_of_two() && weighted.is_power_of_two());
        assert_eq!(
            plain,
            (weighted * SHARDS_PER_CORE / WEIGHTED_SHARDS_PER_CORE).min(MAX_SHARDS)
        );
        // Small caches keep at least 1,024 units per shard, down to one shard.
        for capacity in [1, 1023, 2048, 5000, 100_000] {
            for weighted in [false, true] {
                let shards = default_shards(capacity, weighted) as u64;
                assert!(shards == 1 || capacity / shards >= MIN_DEFAULT_SHARD_CAPACITY);
            }
        }
    }
}
