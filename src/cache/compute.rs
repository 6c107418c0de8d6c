//! [`Cache::compute`]: a read-modify-write of one key, atomic with every other
//! write of it.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::{Cache, HeardIfUnwinding, Rejected, RemovalCause};
use crate::expiry::EntryOptions;
use crate::store::{Refused, Removed, WriteContext};
use crate::write::CacheAside;

/// What a [`Cache::compute`] closure does with the key's entry.
///
/// ```
/// use larder::{Cache, Compute};
///
/// let cache: Cache<&str, u32> = Cache::builder().max_capacity(10).build().unwrap();
/// cache.compute("hits", |n| Compute::Put(n.map_or(1, |n| n + 1))).unwrap();
/// cache.compute("hits", |n| Compute::Put(n.map_or(1, |n| n + 1))).unwrap();
/// assert_eq!(cache.get("hits"), Some(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compute<V> {
    /// Leave the key as it is: its entry, or its absence.
    Keep,
    /// Store this value under the key, with the cache's own settings.
    Put(V),
    /// Store this value under the key with settings for this entry alone, as
    /// [`Cache::insert_with`] does.
    PutWith(V, EntryOptions),
    /// Remove the key's entry, if it has one.
    Remove,
}

/// What a [`Cache::compute`] call did, with the value it leaves under the key
/// (cloned) or the one it removed.
///
/// ```
/// use larder::{Cache, Compute, Computed};
///
/// let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
/// assert_eq!(cache.compute(1, |_| Compute::Keep).unwrap(), Computed::Absent);
/// assert_eq!(cache.compute(1, |_| Compute::Put(10)).unwrap(), Computed::Inserted(10));
/// assert_eq!(cache.compute(1, |_| Compute::Put(11)).unwrap(), Computed::Replaced(11));
/// assert_eq!(cache.compute(1, |_| Compute::Keep).unwrap(), Computed::Unchanged(11));
/// assert_eq!(cache.compute(1, |_| Compute::Remove).unwrap(), Computed::Removed(11));
/// assert_eq!(cache.compute(1, |_| Compute::Remove).unwrap(), Computed::Absent);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed<V> {
    /// The key had no live entry, and has none: the closure kept or removed
    /// nothing.
    Absent,
    /// The closure kept the live entry: its value.
    Unchanged(V),
    /// The key had no live entry; the closure's value was written.
    Inserted(V),
    /// The closure's value was written over the live entry's (which the
    /// listener hears of as [`RemovalCause::Replaced`]).
    Replaced(V),
    /// The closure removed the live entry: its value (which the listener
    /// hears of as [`RemovalCause::Explicit`]).
    Removed(V),
}

/// A compute's key: the caller's own, or borrowed, with the way to own it
/// should the closure put a value.
enum KeyArg<'a, K, Q: ?Sized> {
    Owned(K),
    Borrowed(&'a Q, fn(&Q) -> K),
}

impl<K: Borrow<Q>, Q: ?Sized> KeyArg<'_, K, Q> {
    fn get(&self) -> &Q {
        match self {
            Self::Owned(key) => key.borrow(),
            Self::Borrowed(key, _) => key,
        }
    }

    fn into_owned(self) -> K {
        match self {
            Self::Owned(key) => key,
            Self::Borrowed(key, to_owned) => to_owned(key),
        }
    }
}

/// What the shard's part of a compute leaves to do once its lock is released.
enum Done<K, V> {
    Computed(Computed<V>),
    /// The entry removed, for the listener and the caller.
    Removed(K, V, RemovalCause),
    Rejected(Rejected<K, V>),
}

impl<K, V, S> Cache<K, V, S, CacheAside>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Reads and rewrites `key`'s entry in one step: `f` gets the live value
    /// under `key` (or `None`) and says what to do with the entry (see
    /// [`Compute`]). No other write of the key (an insert, a removal, another
    /// compute, a load's result) lands between `f`'s read and its write, so
    /// counters and other read-modify-writes lose no update.
    ///
    /// A write is an explicit write as [`insert`](Self::insert) and
    /// [`insert_with`](Self::insert_with) make it, and a removal as
    /// [`remove`](Self::remove) makes it: a load of the key in flight hands
    /// its value to its callers but does not cache it. Keeping the entry
    /// changes nothing, not even its place in the eviction order, its
    /// deadline or the statistics. An entry whose deadline has passed is
    /// absent to `f`; a [`Put`](Compute::Put) or a [`Remove`](Compute::Remove)
    /// then takes it out, and the listener hears of it as
    /// [`RemovalCause::Expired`].
    ///
    /// `f` runs while the key's shard is locked for writing, as the
    /// weigher's and the [`Expiry`](crate::Expiry)'s calls for the write do: it
    /// should be short, and it must not call into this cache. A call that
    /// reaches the key's own shard panics (it would wait for the lock `f`
    /// runs under for ever); a call that reaches another shard may deadlock
    /// with a compute on another thread.
    ///
    /// # Errors
    ///
    /// [`Rejected`], with the key and the closure's value, when the value
    /// weighs more than the per-entry limit: as with
    /// [`try_insert`](Self::try_insert), any value under the key is removed
    /// all the same ([`RemovalCause::Replaced`]).
    ///
    /// Under [`Eviction::TinyLfu`](crate::Eviction::TinyLfu) a written entry
    /// heavier than the admission window may lose its contest for room and
    /// leave at once, and an entry given no time to live (by
    /// [`EntryOptions::ttl`] or the `Expiry`) leaves at once as expired, as
    /// with `insert`; the outcome still reports the write.
    ///
    /// # Panics
    ///
    /// If `f`, the weigher, the value's `Clone`, the `Expiry`, the listener
    /// or a key's `Hash` or `Eq` panics, or as above when `f` calls into the
    /// cache. A panic in `f`, the weigher or the `Clone` changes nothing;
    /// the others leave the cache as [`insert`](Self::insert) and
    /// [`remove`](Self::remove) describe.
    ///
    /// ```
    /// use larder::{Cache, Compute, Computed};
    ///
    /// let cache: Cache<&str, Vec<&str>> = Cache::builder().max_capacity(100).build().unwrap();
    /// let push = |item| {
    ///     move |list: Option<&Vec<&'static str>>| {
    ///         let mut list = list.cloned().unwrap_or_default();
    ///         list.push(item);
    ///         Compute::Put(list)
    ///     }
    /// };
    /// cache.compute("todo", push("milk")).unwrap();
    /// let out = cache.compute("todo", push("eggs")).unwrap();
    /// assert_eq!(out, Computed::Replaced(vec!["milk", "eggs"]));
    /// // Remove the list once it is empty: here it is not.
    /// let out = cache
    ///     .compute("todo", |l| if l.is_some_and(|l| l.is_empty()) { Compute::Remove } else { Compute::Keep })
    ///     .unwrap();
    /// assert_eq!(out, Computed::Unchanged(vec!["milk", "eggs"]));
    /// ```
    pub fn compute(
        &self,
        key: K,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, Rejected<K, V>> {
        self.compute_key(KeyArg::<K, K>::Owned(key), f)
    }

    /// [`compute`](Self::compute) with the key borrowed: an owned key is
    /// made (`to_owned`) only when the closure puts a value, so counting up
    /// a `String`-keyed entry that is there, keeping or removing allocates
    /// no key. The borrowed form must own to `K`, as with
    /// [`get_or_load_by_ref`](Self::get_or_load_by_ref).
    ///
    /// # Errors
    ///
    /// As [`compute`](Self::compute).
    ///
    /// # Panics
    ///
    /// As [`compute`](Self::compute), and if the key's `to_owned` (its
    /// `Clone`) panics, which changes nothing.
    ///
    /// ```
    /// use larder::{Cache, Compute, Computed};
    ///
    /// let hits: Cache<String, u64> = Cache::builder().max_capacity(100).build().unwrap();
    /// let count = |path: &str| hits.compute_by_ref(path, |n| Compute::Put(n.map_or(1, |n| n + 1)));
    /// assert_eq!(count("/home"), Ok(Computed::Inserted(1))); // the one `String` made
    /// assert_eq!(count("/home"), Ok(Computed::Replaced(2)));
    /// assert_eq!(hits.get("/home"), Some(2));
    /// ```
    pub fn compute_by_ref<Q>(
        &self,
        key: &Q,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, Rejected<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.compute_key(KeyArg::Borrowed(key, Q::to_owned), f)
    }

    fn compute_key<Q>(
        &self,
        key: KeyArg<'_, K, Q>,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
    ) -> Result<Computed<V>, Rejected<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut removed = Removed::new();
        let guard = HeardIfUnwinding {
            cache: self,
            list: &mut removed,
        };
        let done = self.compute_locked(key, f, guard.list);
        std::mem::forget(guard);
        match done {
            Done::Computed(computed) => {
                self.notify(removed);
                Ok(computed)
            }
            Done::Rejected(rejected) => {
                // As `write`: the listener's panic must not drop the rejected
                // entry, which goes to it then.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.notify(removed))) {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        self.notify_one(rejected.key, rejected.value, RemovalCause::Size);
                    }));
                    resume_unwind(panic);
                }
                Err(rejected)
            }
            Done::Removed(key, value, cause) => {
                // As `remove` does after its listener: a load of the key that
                // began since the lock was released is not cached either.
                self.flights_stale::<K>(&key);
                Ok(match self.hand_back(key, value, cause) {
                    Some(value) => Computed::Removed(value),
                    None => Computed::Absent,
                })
            }
        }
    }

    /// The part of [`compute`](Self::compute) under the shard's lock.
    fn compute_locked<Q>(
        &self,
        key: KeyArg<'_, K, Q>,
        f: impl FnOnce(Option<&V>) -> Compute<V>,
        removed: &mut Removed<K, V>,
    ) -> Done<K, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key.get());
        let shard = self.shard(hash);
        let expiration = &self.inner.expiration;
        let hash_of = |k: &K| self.hash(k);
        let mut writer = shard.write(&hash_of);
        // User code runs from here to the write: a call of it into this
        // shard panics instead of waiting for the lock for ever.
        let _mark = shard.mark_locked();
        let found = writer.live_value(hash, key.get(), &expiration.clock);
        let current = found.map(|(_, value)| value);
        let existing = found.map(|(token, _)| token);
        let present = current.is_some();
        let (value, options) = match f(current) {
            Compute::Keep => {
                return Done::Computed(match current {
                    Some(value) => Computed::Unchanged(value.clone()),
                    None => Computed::Absent,
                });
            }
            Compute::Remove => {
                // Under the write lock, as in `write_deferred`.
                shard.flights.invalidate(hash, key.get());
                // An entry past its deadline goes too, as `remove` takes it:
                // heard as expired, and the key reported absent.
                return match writer.remove(hash, key.get(), &expiration.clock) {
                    Some((key, value, cause)) => Done::Removed(key, value, cause),
                    None => Done::Computed(Computed::Absent),
                };
            }
            Compute::Put(value) => (value, None),
            Compute::PutWith(value, options) => (value, Some(options)),
        };
        let key = key.into_owned();
        let weight = match &self.inner.weigher {
            Some(weigher) => weigher(&key, &value),
            None => 1,
        };
        let returned = value.clone();
        // Nothing has changed yet; from here the write is an explicit one.
        shard.flights.invalidate::<K>(hash, &key);
        let ttl = options.as_ref().and_then(EntryOptions::time_to_live);
        let tags = options.as_ref().map_or(&[][..], EntryOptions::tag_list);
        let deadlines = |k: &K, v: &V, now: u64, current: Option<u64>| {
            expiration.on_write(k, v, now, current, ttl)
        };
        let context = WriteContext {
            clock: &expiration.clock,
            start: ttl.is_some(),
            deadlines: &deadlines,
            tags,
            stamp: expiration.refreshes(),
        };
        let written = if options.is_none() && writer.is_plain() {
            // No deadline, no tag, none kept: the shorter path, at the entry
            // found above (nothing has moved since, under this lock).
            writer.insert_plain_at(hash, key, value, weight, existing, removed)
        } else {
            writer.insert(hash, key, value, weight, context, removed)
        };
        match written {
            Ok(()) => {}
            Err(Refused::Expired(key, value)) => {
                removed.push((key, value, RemovalCause::Expired));
            }
            Err(Refused::TooHeavy(key, value)) => {
                return Done::Rejected(Rejected {
                    key,
                    value,
                    weight: weight.min(crate::store::MAX_WEIGHT),
                    limit: self.inner.max_entry_weight,
                });
            }
        }
        Done::Computed(if present {
            Computed::Replaced(returned)
        } else {
            Computed::Inserted(returned)
        })
    }
}
